/**
 * A full journal, with a real node process and qemu-io (README "Journal full"): writes that do not
 * fit wait at most `throttleMaxDelay`, then fail with ENOSPC; nothing is lost or changed (earlier
 * data intact, the failed range untouched, no seq consumed); the node keeps serving; once the
 * target is up and reports the records durable, they are released and the same write goes through.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { promisify } from 'node:util';
import { apiCall } from '../../src/node/api.js';
import { copyJournalled, waitFor } from '../../src/testing/cluster.js';
import { startNodeProcess, writeTopology } from '../../src/testing/proc.js';

const run = promisify(execFile);
const dir = mkdtempSync(join(tmpdir(), 'rc-jfull-'));
after(() => rmSync(dir, { recursive: true, force: true }));

interface Status {
  groups: { name: string; seqWritten: number }[];
  writePath: { rejectedJournalFull: number };
}

test('journal full: ENOSPC after the bounded delay, nothing changed, writes resume once the target has the records', async () => {
  const topo = await writeTopology(
    dir,
    {
      a: {
        volumes: { vol: '128MiB' },
        journal: '{ size: 66MiB, segmentSize: 33MiB, throttleMaxDelay: 300ms }',
      },
      b: { volumes: { vol: '128MiB' } },
    },
    { g: ['a', 'b', 'vol'] },
  );
  const node = await startNodeProcess(topo.file, 'a');
  const p = topo.ports.get('a')!;
  const uri = `nbd://127.0.0.1:${p.nbd}/vol`;
  const api = { host: '127.0.0.1', port: p.api };
  const status = async () => (await apiCall(api, topo.secret, 'GET', '/v1/status')) as Status;
  const io = (...cmds: string[]) => run('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), uri]);
  let target: Awaited<ReturnType<typeof startNodeProcess>> | undefined;
  try {
    // The initial copy of the new (zero) volume is a few zero records; then two 32 MiB records
    // fill the two 33 MiB segments.
    const base = (await copyJournalled(api, topo.secret, 'g')).seqWritten;
    await io('write -P 0x11 0 32M', 'write -P 0x22 32M 32M', 'flush');
    const before = await status();
    assert.equal(before.groups[0]!.seqWritten, base + 2);
    const t0 = performance.now();
    const full = await io('write -P 0x33 64M 32M').then(
      (r) => r.stdout + r.stderr,
      (e: { stdout?: string; stderr?: string }) => `${e.stdout ?? ''}${e.stderr ?? ''}`,
    );
    const waitedMs = performance.now() - t0;
    assert.match(full, /No space left on device/i, 'the host sees ENOSPC');
    assert.ok(waitedMs >= 250, `the write waited (${waitedMs.toFixed(0)} ms) before failing`);
    const afterFull = await status();
    assert.equal(afterFull.groups[0]!.seqWritten, base + 2, 'no seq consumed by the refused write');
    assert.ok(afterFull.writePath.rejectedJournalFull >= 1, 'counted');
    const { stdout } = await io('read -P 0x11 0 32M', 'read -P 0x22 32M 32M', 'read -P 0 64M 32M');
    assert.doesNotMatch(
      stdout,
      /Pattern verification failed/,
      'earlier data intact, the refused range untouched',
    );
    // The target comes up: its durable reports release the records, then the write goes through.
    target = await startNodeProcess(topo.file, 'b');
    await waitFor('the records to reach the target and be released', async () => {
      const st = (await apiCall(api, topo.secret, 'GET', '/v1/status')) as { journal: { records: number } };
      return st.journal.records === 0 ? true : undefined;
    });
    await io('write -P 0x33 64M 32M', 'read -P 0x33 64M 32M');
    assert.equal((await status()).groups[0]!.seqWritten, base + 3);
  } finally {
    assert.equal(await node.stop(), 0);
    if (target) assert.equal(await target.stop(), 0);
  }
});
