/**
 * A full journal that cannot suspend its group, with a real node process and qemu-io (README
 * "Journal full"). A group in its initial copy cannot be suspended (its target has no consistent
 * image yet), so under `throttle` its writes that do not fit wait at most `throttleMaxDelay`, then
 * fail with ENOSPC; nothing is lost or changed (the volume's data intact, the failed range
 * untouched, no seq consumed); the node keeps serving; once the target is up and reports the
 * records durable, they are released, the copy ends and the same write goes through. (A group past
 * its initial copy is suspended instead: test/replication/delta.test.ts.)
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { promisify } from 'node:util';
import { apiCall } from '../../src/node/api.js';
import { waitFor } from '../../src/testing/cluster.js';
import { startNodeProcess, writeTopology } from '../../src/testing/proc.js';

const run = promisify(execFile);
const dir = mkdtempSync(join(tmpdir(), 'rc-jfull-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const MiB = 1024 * 1024;

interface Status {
  groups: {
    name: string;
    state: string;
    seqWritten: number;
    copy?: { bytesDone: number; bytesTotal: number };
  }[];
  journal: { usedBytes: number; bytesMax: number; records: number };
  writePath: { rejectedJournalFull: number };
}

test('journal full during the initial copy: ENOSPC after the bounded delay, nothing changed, writes resume once the target has the records', async () => {
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
  // The source volume holds 128 MiB of data before its first start: more than the journal holds.
  // With the target away its initial copy stops at half the journal (the other half is left to
  // host writes), and a 32 MiB host write fills the rest.
  mkdirSync(join(dir, 'a', 'volumes'), { recursive: true });
  const image = Buffer.alloc(128 * MiB, 0x11);
  image.fill(0x22, 64 * MiB);
  writeFileSync(join(dir, 'a', 'volumes', 'vol.img'), image);
  const node = await startNodeProcess(topo.file, 'a');
  const p = topo.ports.get('a')!;
  const uri = `nbd://127.0.0.1:${p.nbd}/vol`;
  const api = { host: '127.0.0.1', port: p.api };
  const status = async () => (await apiCall(api, topo.secret, 'GET', '/v1/status')) as Status;
  const io = (...cmds: string[]) => run('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), uri]);
  const intact = async (what: string, ...reads: string[]) => {
    const { stdout } = await io('read -P 0x11 0 64M', 'read -P 0x33 64M 32M', ...reads);
    assert.doesNotMatch(stdout, /Pattern verification failed/, what);
  };
  let target: Awaited<ReturnType<typeof startNodeProcess>> | undefined;
  try {
    await waitFor('the initial copy to stop at half the journal', async () => {
      const st = await status();
      return st.groups[0]!.state === 'copy' && st.journal.usedBytes >= 32 * MiB ? st : undefined;
    });
    await io('write -P 0x33 64M 32M');
    const stalled = await status();
    assert.ok(stalled.journal.usedBytes > stalled.journal.bytesMax - 4 * MiB, 'the journal is full');
    const seqBefore = stalled.groups[0]!.seqWritten;
    const t0 = performance.now();
    const full = await io('write -P 0x44 96M 4M').then(
      (r) => r.stdout + r.stderr,
      (e: { stdout?: string; stderr?: string }) => `${e.stdout ?? ''}${e.stderr ?? ''}`,
    );
    const waitedMs = performance.now() - t0;
    assert.match(full, /No space left on device/i, 'the host sees ENOSPC');
    assert.ok(waitedMs >= 250, `the write waited (${waitedMs.toFixed(0)} ms) before failing`);
    const afterFull = await status();
    assert.equal(afterFull.groups[0]!.seqWritten, seqBefore, 'no seq consumed by the refused write');
    assert.equal(afterFull.groups[0]!.state, 'copy', 'not suspended: the group is in its initial copy');
    assert.ok(afterFull.writePath.rejectedJournalFull >= 1, 'counted');
    await intact('the data intact, the refused range untouched', 'read -P 0x22 96M 32M');
    // The target comes up: the copy goes on, the durable reports release the records, the copy ends.
    target = await startNodeProcess(topo.file, 'b');
    await waitFor('the copy to end and its records to be released', async () => {
      const st = await status();
      return st.groups[0]!.state === 'pair' && st.journal.records === 0 ? st : undefined;
    });
    const seqPaired = (await status()).groups[0]!.seqWritten;
    await io('write -P 0x44 96M 4M');
    await intact('the write went through', 'read -P 0x44 96M 4M', 'read -P 0x22 100M 28M');
    assert.equal((await status()).groups[0]!.seqWritten, seqPaired + 1);
  } finally {
    assert.equal(await node.stop(), 0);
    if (target) assert.equal(await target.stop(), 0);
  }
});
