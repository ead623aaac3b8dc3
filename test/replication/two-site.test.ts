/**
 * Asynchronous replication with real node processes on loopback (issue 3 "Show"):
 * - qemu-io and fio write to two volumes in two groups of one consistency set; `remcopy verify`
 *   passes for both groups, status and /metrics show the pairs; a byte changed behind the target's
 *   back is named by verify (exit 1).
 * - Ten rounds: a bank workload of dependent writes (debit through the native client with host
 *   write times, credit through libnbd without) while the target is read at live cuts; kill -9 of
 *   the source at a seeded random moment; `remcopy takeover --set`; the dependent-write check on
 *   the target's volumes passes, at every live cut and after the takeover. The old source, started
 *   again, learns the higher epoch and stops acting as source.
 * RC_KILL_SEED replays a run of the kill rounds.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import {
  closeSync,
  constants,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { promisify } from 'node:util';
import { NODE_PROCESS_V8_FLAGS, nodeProcessEnv } from '../../src/cli/node-process.js';
import { connect } from '../../src/client/index.js';
import { apiCall } from '../../src/node/api.js';
import type { BankLayout, BankProgress } from '../../src/testing/bank.js';
import { BANK_BLOCK_BYTES, checkBank, runBank } from '../../src/testing/bank.js';
import { apiOf, copyJournalled, groupStatus, waitFor } from '../../src/testing/cluster.js';
import { nbdWriter } from '../../src/testing/nbd-writer.js';
import { runCli, startNodeProcess, writeTopology } from '../../src/testing/proc.js';
import { mulberry32 } from '../../src/testing/random.js';
import { FileBlockDevice } from '../../src/storage/blockdev.js';
import { openDirect } from '../../src/storage/direct-io.js';

const run = promisify(execFile);
const root = mkdtempSync(join(tmpdir(), 'rc-repl-'));
after(() => rmSync(root, { recursive: true, force: true }));

const cli = runCli;

async function twoSites(dir: string) {
  const topo = await writeTopology(
    dir,
    {
      a: { volumes: { d: '8MiB', l: '8MiB' }, native: true, writeTime: 'host-last' },
      b: { volumes: { d: '8MiB', l: '8MiB' } },
    },
    { gd: ['a', 'b', 'd'], gl: ['a', 'b', 'l'] },
    { bank: ['gd', 'gl'] },
  );
  const [A, B] = await Promise.all([startNodeProcess(topo.file, 'a'), startNodeProcess(topo.file, 'b')]);
  const pa = topo.ports.get('a')!;
  const pb = topo.ports.get('b')!;
  // Both pairs through their initial copy: the target image is consistent from then on.
  for (const g of ['gd', 'gl']) {
    await copyJournalled(apiOf(pa.api), topo.secret, g);
    await waitFor(`${g} in state pair`, async () =>
      (await groupStatus(apiOf(pb.api), topo.secret, g)).state === 'pair' ? true : undefined,
    );
  }
  return { topo, A, B, pa, pb };
}

test('qemu-io and fio writes replicate; verify passes, then names a range changed behind its back', async () => {
  const dir = mkdtempSync(join(root, 'verify-'));
  const { topo, A, B, pa, pb } = await twoSites(dir);
  try {
    await run('qemu-io', [
      '-f',
      'raw',
      '-c',
      'write -P 0x5a 0 1M',
      '-c',
      'write -z 2M 1M',
      // Zeroes over data: the target zeroes them on the thread pool (apply.ts, zeroWhereNeeded).
      '-c',
      'write -z 512k 512k',
      `nbd://127.0.0.1:${pa.nbd}/d`,
    ]);
    await run('fio', [
      '--name=w',
      '--ioengine=nbd',
      `--uri=nbd://127.0.0.1:${pa.nbd}/l`,
      '--rw=randwrite',
      '--bs=4k',
      '--iodepth=16',
      '--size=8M',
      '--io_size=4M',
      '--verify=crc32c',
      '--do_verify=0',
      '--verify_state_save=0',
    ]);
    for (const g of ['gd', 'gl']) {
      const v = await cli('verify', '--config', topo.file, '--group', g);
      assert.equal(v.code, 0, v.out);
      assert.match(v.out, new RegExp(`verify ${g}: OK`));
    }
    const st = await cli('status', '--config', topo.file, '--json');
    assert.equal(st.code, 0, st.out);
    const metrics = await fetch(`http://127.0.0.1:${pa.api}/metrics`, {
      headers: { authorization: `Bearer ${topo.secret}` },
    }).then((r) => r.text());
    assert.match(metrics, /remcopy_lag_records\{group="gd"\} 0/);
    assert.match(metrics, /remcopy_group_seq\{group="gl",role="source",stage="applied"\} [1-9]/);
    // Started as `remcopy up` and the demo start nodes (nodeProcessArgs): with the V8 flags. Process figures too.
    const flags = NODE_PROCESS_V8_FLAGS.join(' ');
    const tunables = nodeProcessEnv({}).GLIBC_TUNABLES;
    assert.ok(
      metrics.includes(
        `remcopy_process_info{nodejs="${process.version}",v8_flags="${flags}",glibc_tunables="${tunables}"} 1`,
      ),
      metrics.split('\n').find((l) => l.startsWith('remcopy_process_info')),
    );
    assert.match(metrics, /remcopy_process_resident_memory_bytes [1-9]/);
    assert.match(metrics, /remcopy_nodejs_heap_size_used_bytes [1-9]/);
    assert.equal(
      (await fetch(`http://127.0.0.1:${pa.api}/metrics`)).status,
      401,
      '/metrics needs the secret',
    );

    // A byte changed in the target's file behind remcopy's back: verify names its chunk.
    const fd = openSync(join(dir, 'b', 'volumes', 'l.img'), 'r+');
    writeSync(fd, Buffer.from([0xff]), 0, 1, 5 * 1048576 + 17);
    closeSync(fd);
    const bad = await cli('verify', '--config', topo.file, '--group', 'gl');
    assert.equal(bad.code, 1, bad.out);
    assert.match(bad.out, /differs: bytes 5242880\.\.6291455/);
  } finally {
    assert.equal(await A.stop(), 0);
    assert.equal(await B.stop(), 0);
  }
  void pb;
});

test('a source volume that holds data before pairing: the initial copy carries it byte for byte, its I/O around the page cache', async () => {
  const dir = mkdtempSync(join(root, 'populated-'));
  const MiB = 1048576;
  const topo = await writeTopology(
    dir,
    { a: { volumes: { vol: '16MiB' } }, b: { volumes: { vol: '16MiB' } } },
    { g: ['a', 'b', 'vol'] },
  );
  // A hole first (a direct read of a hole passes any buffer address: the probe must not rely on
  // it), 6 MiB written around the page cache (not cached, as after a reboot), 3 MiB through it
  // (cached), a hole at the end.
  const image = Buffer.alloc(16 * MiB);
  for (let i = MiB; i < 10 * MiB; i += 4) image.writeUInt32LE((i * 2654435761) >>> 0, i);
  mkdirSync(join(dir, 'a', 'volumes'), { recursive: true });
  const file = join(dir, 'a', 'volumes', 'vol.img');
  const pre = FileBlockDevice.open(file, 16 * MiB);
  pre.writeForCopySync(MiB, image.subarray(MiB, 7 * MiB));
  pre.writeSync(7 * MiB, image.subarray(7 * MiB, 10 * MiB));
  await pre.close();
  const probe = openDirect(join(dir, 'probe'), constants.O_CREAT);
  if (probe !== null) closeSync(probe);
  const [A, B] = await Promise.all([startNodeProcess(topo.file, 'a'), startNodeProcess(topo.file, 'b')]);
  const pa = topo.ports.get('a')!;
  const pb = topo.ports.get('b')!;
  try {
    // A host write while the copy may still run: the target ends with it either way.
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x77 3M 64k', `nbd://127.0.0.1:${pa.nbd}/vol`]);
    image.fill(0x77, 3 * MiB, 3 * MiB + 65536);
    await copyJournalled(apiOf(pa.api), topo.secret, 'g');
    await waitFor('g in state pair', async () =>
      (await groupStatus(apiOf(pb.api), topo.secret, 'g')).state === 'pair' ? true : undefined,
    );
    const copyBytes = async (api: number, op: string): Promise<number> => {
      const text = await fetch(`http://127.0.0.1:${api}/metrics`, {
        headers: { authorization: `Bearer ${topo.secret}` },
      }).then((r) => r.text());
      const m = new RegExp(`remcopy_volume_copy_direct_bytes_total\\{volume="vol",op="${op}"\\} (\\d+)`).exec(
        text,
      );
      assert.ok(m, `metric for ${op}`);
      return Number(m[1]);
    };
    // O_DIRECT where this file system allows it (ext4 here): the copy read the volume with it (16
    // MiB, before verify reads it again), and the target wrote the 256 KiB copy records with it; on
    // tmpfs both stay buffered.
    const direct = probe !== null;
    assert.equal((await copyBytes(pa.api, 'read')) >= 16 * MiB, direct, 'source copy reads direct');
    assert.equal((await copyBytes(pb.api, 'write')) >= 8 * MiB, direct, 'target copy writes direct');
    // verify reads around the cache too, both ends; it finds the two volumes equal.
    const v = await cli('verify', '--config', topo.file, '--group', 'g');
    assert.equal(v.code, 0, v.out);
    assert.equal((await copyBytes(pa.api, 'read')) >= 32 * MiB, direct, 'verify reads direct');
    // Copy reads overtaken by a host write are counted (the qemu-io write above may or may not have
    // met one of them).
    const metrics = await fetch(`http://127.0.0.1:${pa.api}/metrics`, {
      headers: { authorization: `Bearer ${topo.secret}` },
    }).then((r) => r.text());
    assert.match(metrics, /^remcopy_copy_reads_retried_total \d+$/m);
  } finally {
    assert.equal(await A.stop(), 0);
    assert.equal(await B.stop(), 0);
  }
  assert.ok(readFileSync(join(dir, 'b', 'volumes', 'vol.img')).equals(image), 'the target holds the image');
  assert.ok(readFileSync(file).equals(image), 'the source too');
});

test('resyncRate paces an initial copy by the data it reads and ships; zero chunks are not held back', async () => {
  const dir = mkdtempSync(join(root, 'paced-'));
  const MiB = 1048576;
  const topo = await writeTopology(
    dir,
    { a: { volumes: { vol: '16MiB', empty: '64MiB' } }, b: { volumes: { vol: '16MiB', empty: '64MiB' } } },
    { g: ['a', 'b', 'vol', 'resyncRate: 4MiB'], ge: ['a', 'b', 'empty', 'resyncRate: 4MiB'] },
  );
  // 8 MiB of data in the first volume: at 4 MiB/s its copy takes about 2 s (the first chunk goes at
  // once, each later one when the rate allows). The second volume is all holes: 64 MiB of zero
  // records, which the rate does not count.
  const image = Buffer.alloc(16 * MiB);
  for (let i = 4 * MiB; i < 12 * MiB; i += 4) image.writeUInt32LE((i * 2246822519) >>> 0, i);
  mkdirSync(join(dir, 'a', 'volumes'), { recursive: true });
  const pre = FileBlockDevice.open(join(dir, 'a', 'volumes', 'vol.img'), 16 * MiB);
  pre.writeSync(4 * MiB, image.subarray(4 * MiB, 12 * MiB));
  await pre.close();
  const started = performance.now();
  // The source alone first: its copies are journalled whether or not the target is up, and the
  // empty group's is looked at as soon as the node is ready.
  const A = await startNodeProcess(topo.file, 'a');
  const pa = topo.ports.get('a')!;
  const pb = topo.ports.get('b')!;
  let B: Awaited<ReturnType<typeof startNodeProcess>> | undefined;
  try {
    const empty = await copyJournalled(apiOf(pa.api), topo.secret, 'ge');
    const during = await groupStatus(apiOf(pa.api), topo.secret, 'g');
    assert.equal(empty.copy!.bytesDone, 64 * MiB);
    B = await startNodeProcess(topo.file, 'b');
    await copyJournalled(apiOf(pa.api), topo.secret, 'g');
    const seconds = (performance.now() - started) / 1000;
    // A lower bound only: a slow machine makes the copy longer, never shorter.
    assert.ok(seconds >= 1.8, `8 MiB of data at 4 MiB/s took ${seconds.toFixed(2)} s`);
    // The groups copy side by side: the empty one, not paced, was done while the other still copied.
    assert.ok(
      during.copy!.bytesDone < 16 * MiB,
      `g had copied ${during.copy!.bytesDone} bytes when ge was done`,
    );
    for (const g of ['g', 'ge']) {
      await waitFor(`${g} in state pair`, async () =>
        (await groupStatus(apiOf(pb.api), topo.secret, g)).state === 'pair' ? true : undefined,
      );
      const v = await cli('verify', '--config', topo.file, '--group', g);
      assert.equal(v.code, 0, v.out);
    }
  } finally {
    assert.equal(await A.stop(), 0);
    if (B) assert.equal(await B.stop(), 0);
  }
  assert.ok(readFileSync(join(dir, 'b', 'volumes', 'vol.img')).equals(image), 'the target holds the image');
});

const seed = Number(process.env.RC_KILL_SEED ?? Math.floor(Math.random() * 2 ** 31));
const ROUNDS = 10;
const layout: BankLayout = { workers: 3, blocksPerWorker: 32 };
const bankBytes = layout.workers * layout.blocksPerWorker * BANK_BLOCK_BYTES;

test(`kill -9 of the source, then takeover: dependent writes hold at the target (seed ${seed})`, async () => {
  const random = mulberry32(seed);
  let creditsSeen = 0;
  let liveCuts = 0;
  for (let round = 1; round <= ROUNDS; round++) {
    const dir = mkdtempSync(join(root, `kill-${round}-`));
    const { topo, A, B, pa, pb } = await twoSites(dir);
    const client = await connect({ host: '127.0.0.1', port: pa.native! });
    const debitVol = await client.open('d');
    const writers = await Promise.all(
      Array.from({ length: layout.workers }, () => nbdWriter(`nbd://127.0.0.1:${pa.nbd}/l`)),
    );
    let hostTime = 1_800_000_000_000_000 + round * 1_000_000_000;
    const progress: BankProgress = { completed: 0, errors: [] };
    let stop = false;
    const bank = runBank(
      layout,
      (off, data) => debitVol.write(off, data, { writeTimeUs: (hostTime += 10) }),
      (off, data) => writers[Math.floor(off / BANK_BLOCK_BYTES / layout.blocksPerWorker)]!.write(off, data),
      () => stop,
      progress,
    );
    // The target read at live cuts while the workload runs.
    const sampling = (async () => {
      while (!stop) {
        const r = (await apiCall(apiOf(pb.api), topo.secret, 'POST', '/v1/sets/bank/read', {
          reads: [
            { volume: 'd', offset: 0, length: bankBytes },
            { volume: 'l', offset: 0, length: bankBytes },
          ],
        }).catch(() => undefined)) as { reads: { data: string }[] } | undefined;
        if (r) {
          const c = checkBank(
            layout,
            Buffer.from(r.reads[0]!.data, 'base64'),
            Buffer.from(r.reads[1]!.data, 'base64'),
          );
          assert.deepEqual(c.violations, [], `round ${round}: a live cut broke a dependent write`);
          liveCuts++;
        }
        await new Promise((res) => setTimeout(res, 50));
      }
    })();
    const killAfterMs = 300 + Math.floor(random() * 1200);
    await new Promise((res) => setTimeout(res, killAfterMs));
    await A.kill9();
    stop = true;
    await bank;
    await sampling;
    await Promise.all(writers.map((w) => w.close()));
    await client.close().catch(() => {});
    assert.ok(progress.completed > 0, `round ${round}: the workload ran before the kill`);

    const t = await cli('takeover', '--config', topo.file, '--set', 'bank');
    assert.equal(t.code, 0, t.out);
    assert.match(t.out, /takeover gd: b is now the source \(epoch 2\)/);
    // The promoted volumes are writable at once.
    await run('qemu-io', ['-f', 'raw', '-c', `write -P 0x77 ${bankBytes} 4k`, `nbd://127.0.0.1:${pb.nbd}/d`]);
    assert.equal(await B.stop(), 0);
    const c = checkBank(
      layout,
      readFileSync(join(dir, 'b', 'volumes', 'd.img')).subarray(0, bankBytes),
      readFileSync(join(dir, 'b', 'volumes', 'l.img')).subarray(0, bankBytes),
    );
    assert.deepEqual(
      c.violations,
      [],
      `round ${round} (seed ${seed}): the taken-over image breaks a dependent write`,
    );
    creditsSeen += c.credits;

    if (round === 1) {
      // The old source comes back: it learns the higher epoch from the new source and fences itself.
      const B2 = await startNodeProcess(topo.file, 'b');
      const A2 = await startNodeProcess(topo.file, 'a');
      try {
        const fenced = await waitFor('the old source to be fenced', async () => {
          const g = await groupStatus(apiOf(pa.api), topo.secret, 'gd');
          return g.state === 'fenced' ? g : undefined;
        });
        assert.equal(fenced.epoch, 2);
        await assert.rejects(
          run('qemu-io', ['-f', 'raw', '-c', 'write 0 4k', `nbd://127.0.0.1:${pa.nbd}/d`]),
          'a fenced source refuses host writes',
        );
      } finally {
        assert.equal(await A2.stop(), 0);
        assert.equal(await B2.stop(), 0);
      }
    }
  }
  assert.ok(creditsSeen > 0, 'some transfers reached the target before the kills');
  assert.ok(liveCuts > 0, 'live cuts were checked');
});

test('takeover of one group of a set: the others go on replicating', async () => {
  const dir = mkdtempSync(join(root, 'one-group-'));
  const { topo, A, B, pa, pb } = await twoSites(dir);
  try {
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 64k', `nbd://127.0.0.1:${pa.nbd}/d`]);
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x22 0 64k', `nbd://127.0.0.1:${pa.nbd}/l`]);
    const t = await cli('takeover', '--config', topo.file, '--group', 'gd');
    assert.equal(t.code, 0, t.out);
    const again = await cli('takeover', '--config', topo.file, '--group', 'gd');
    assert.equal(again.code, 1, 'a second takeover of the same group is refused');
    assert.match(again.out, /gd was taken over already: b is its source \(epoch 2\)/);
    // gd is writable at b, gl is still a read-only copy that keeps replicating.
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x33 64k 4k', `nbd://127.0.0.1:${pb.nbd}/d`]);
    await assert.rejects(run('qemu-io', ['-f', 'raw', '-c', 'write 0 4k', `nbd://127.0.0.1:${pb.nbd}/l`]));
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x44 64k 64k', `nbd://127.0.0.1:${pa.nbd}/l`]);
    const v = await cli('verify', '--config', topo.file, '--group', 'gl');
    assert.equal(v.code, 0, v.out);
    const gd = await groupStatus(apiOf(pb.api), topo.secret, 'gd');
    assert.equal(gd.state, 'takeover');
    assert.equal(gd.epoch, 2);
    assert.equal((await groupStatus(apiOf(pb.api), topo.secret, 'gl')).state, 'pair');
    // The old source of gd learns the higher epoch once it reconnects (the takeover closed its session).
    await waitFor('gd fenced at a', async () =>
      (await groupStatus(apiOf(pa.api), topo.secret, 'gd')).state === 'fenced' ? true : undefined,
    );
  } finally {
    assert.equal(await A.stop(), 0);
    assert.equal(await B.stop(), 0);
  }
});
