/**
 * Proves the NBD server works with the real clients our users run, against an in-process server
 * over memory exports: nbdinfo sees the advertised flags, block sizes and base:allocation, and
 * lists every export; qemu-io pattern writes (plain, FUA, zeroes, discard, aio + flush) read back
 * and land in the backend; nbdcopy copies a sparse file that qemu-img compare finds identical;
 * fio's nbd engine runs QD32 4 KiB random writes with crc32c verification.
 *
 * Clients are spawned asynchronously (the server shares this event loop). A missing client fails
 * the test with the package to install; nothing is skipped.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import { NbdServer } from '../../src/frontend/nbd/server.js';
import { MemCatalog, MemExport } from '../../src/testing/mem-export.js';

const execFileP = promisify(execFile);
/** Every test fails (never hangs) if a client does not finish. */
const T = { timeout: 90_000 };
const MiB = 1024 * 1024;
const PACKAGES: Record<string, string> = {
  nbdinfo: 'libnbd-bin',
  nbdcopy: 'libnbd-bin',
  'qemu-io': 'qemu-utils',
  'qemu-img': 'qemu-utils',
  fio: 'fio',
};

/** Run a client; fail clearly if it is not installed or exits non-zero. */
async function run(cmd: string, args: string[]): Promise<string> {
  try {
    // cwd: fio and friends may leave state files behind; keep them out of the work tree.
    const { stdout } = await execFileP(cmd, args, { cwd: dir, timeout: 60_000, maxBuffer: 64 * MiB });
    return stdout;
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stdout?: string; stderr?: string };
    if (err.code === 'ENOENT') {
      throw new Error(`${cmd} is not installed: install Debian package ${PACKAGES[cmd] ?? cmd}`, {
        cause: e,
      });
    }
    throw new Error(
      `${cmd} ${args.join(' ')} failed: ${err.message}\n${err.stdout ?? ''}\n${err.stderr ?? ''}`,
      { cause: e },
    );
  }
}

const dir = mkdtempSync(join(tmpdir(), 'rc-nbd-clients-'));
const vol = new MemExport({ name: 'vol', sizeBytes: 64 * MiB, description: 'interop volume' });
const copy = new MemExport({ name: 'copy', sizeBytes: 32 * MiB });
const ro = new MemExport({ name: 'ro', sizeBytes: 4 * MiB, readOnly: true, description: 'read-only volume' });
const server = new NbdServer({ catalog: new MemCatalog([vol, copy, ro]) });
let port = 0;
const uri = (name: string) => `nbd://127.0.0.1:${port}/${name}`;

before(async () => {
  ({ port } = await server.listen('127.0.0.1', 0));
});
after(async () => {
  await server.close();
  rmSync(dir, { recursive: true, force: true });
});

test('nbdinfo --json reports every capability, block sizes and base:allocation', T, async () => {
  const info = JSON.parse(await run('nbdinfo', ['--json', uri('vol')]));
  assert.equal(info.protocol, 'newstyle-fixed');
  assert.equal(info.structured, true);
  const e = info.exports[0];
  assert.equal(e['export-name'], 'vol');
  assert.equal(e.description, 'interop volume');
  assert.equal(e['export-size'], 64 * MiB);
  for (const cap of [
    'can_flush',
    'can_fua',
    'can_trim',
    'can_zero',
    'can_fast_zero',
    'can_cache',
    'can_multi_conn',
  ]) {
    assert.equal(e[cap], true, cap);
  }
  assert.equal(e.is_read_only, false);
  assert.equal(e.can_df, false);
  assert.deepEqual(
    [e.block_size_minimum, e.block_size_preferred, e.block_size_maximum],
    [512, 4096, 32 * MiB],
  );
  assert.ok(e.contexts.includes('base:allocation'));
  const roInfo = JSON.parse(await run('nbdinfo', ['--json', uri('ro')])).exports[0];
  assert.equal(roInfo.is_read_only, true);
  assert.equal(roInfo.can_trim, false);
  assert.equal(roInfo.can_zero, false);
});

test('nbdinfo --list shows every export with its description', T, async () => {
  const out = await run('nbdinfo', ['--list', uri('')]);
  for (const name of ['vol', 'copy', 'ro']) assert.match(out, new RegExp(`export="${name}"`));
  assert.match(out, /description: read-only volume/);
});

test(
  'qemu-io writes (plain, FUA, zeroes, discard, aio + flush) read back and reach the backend',
  T,
  async () => {
    const out = await run('qemu-io', [
      '-f',
      'raw',
      uri('vol'),
      ...['-c', 'write -P 0xab 0 1M'],
      ...['-c', 'write -f -P 0xcd 1M 64k'],
      ...['-c', 'write -P 0x77 2M 1M'],
      ...['-c', 'write -z 2M 512k'],
      ...['-c', 'write -P 0x55 4M 1M'],
      ...['-c', 'discard 4M 1M'],
      ...['-c', 'aio_write -P 0x11 8M 128k'],
      ...['-c', 'aio_write -P 0x22 9M 128k'],
      ...['-c', 'aio_flush'],
      ...['-c', 'flush'],
      ...['-c', 'read -P 0xab 0 1M'],
      ...['-c', 'read -P 0xcd 1M 64k'],
      ...['-c', 'read -P 0 2M 512k'],
      ...['-c', 'read -P 0x77 2560k 512k'],
      ...['-c', 'read -P 0x11 8M 128k'],
      ...['-c', 'read -P 0x22 9M 128k'],
    ]);
    assert.doesNotMatch(out, /fail|error/i);
    assert.equal((out.match(/^read /gm) ?? []).length, 6, out);
    const at = (o: number, n: number) => vol.data.subarray(o, o + n);
    assert.ok(at(0, MiB).equals(Buffer.alloc(MiB, 0xab)));
    assert.ok(at(MiB, 65536).equals(Buffer.alloc(65536, 0xcd)));
    assert.ok(at(2 * MiB, 512 * 1024).equals(Buffer.alloc(512 * 1024)));
    assert.ok(at(9 * MiB, 131072).equals(Buffer.alloc(131072, 0x22)));
    assert.ok(vol.counts.fuaWrite >= 1, 'write -f arrived with FUA');
    assert.ok(vol.counts.flush >= 1);
    assert.ok(vol.counts.punch >= 1, 'discard arrived as a hole punch');
    // A pattern mismatch must be caught by the same command line.
    await assert.rejects(run('qemu-io', ['-f', 'raw', uri('vol'), '-c', 'read -P 0x99 0 4k']));
  },
);

test('nbdcopy copies a sparse file that qemu-img compare finds identical', T, async () => {
  const file = join(dir, 'src.img');
  const img = Buffer.alloc(32 * MiB);
  randomBytes(3 * MiB).copy(img, 0);
  randomBytes(MiB).copy(img, 20 * MiB);
  writeFileSync(file, img);
  copy.data.fill(0xff); // stale content must be overwritten or zeroed
  await run('nbdcopy', [file, uri('copy')]);
  const out = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', file, uri('copy')]);
  assert.match(out, /Images are identical/);
  assert.ok(copy.data.equals(img));
});

test('fio nbd engine: QD32 4 KiB random writes verify with crc32c', T, async () => {
  const out = await run('fio', [
    '--name=verify',
    '--ioengine=nbd',
    `--uri=${uri('vol')}`,
    '--rw=randwrite',
    '--bs=4k',
    '--iodepth=32',
    '--size=16M',
    '--verify=crc32c',
    '--do_verify=1',
    '--verify_state_save=0',
    '--output-format=json',
  ]);
  const job = JSON.parse(out.slice(out.indexOf('{'))).jobs[0];
  assert.equal(job.error, 0);
  assert.equal(job.write.io_bytes, 16 * MiB);
  assert.ok(job.read.io_bytes >= 16 * MiB, 'the verify pass read everything back');
});
