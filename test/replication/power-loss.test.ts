/**
 * A power loss at the source with real node processes: the volume kept writes whose journal
 * records were lost (the kernel wrote the volume's pages back first), and the activity log
 * (src/storage/activity-log.ts) names their extents. After the restart the node sends their content
 * to the target, so source and target agree again (`remcopy verify`) and the target holds the
 * writes:
 * - when the extents fit in half the journal: as copy records before any host write (the pair
 *   stays `pair`, the target never goes through a resync);
 * - when they do not: the rest is marked in the dirty bitmap and the group resyncs.
 *
 * The power loss is built from files: the source's journal as it was before the lost writes (node b
 * is down meanwhile, so nothing of them was shipped), its volume and activity log as they were after
 * them, and the activity log rewritten as if from another boot of the machine (same boot: kill -9
 * keeps the page cache, and no recovery is needed).
 */
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, test } from 'node:test';
import { apiCall } from '../../src/node/api.js';
import { apiOf, groupStatus, metricValue, waitFor } from '../../src/testing/cluster.js';
import { runCli, startNodeProcess } from '../../src/testing/proc.js';
import { pairedSites, qemuIo } from '../../src/testing/sites.js';
import {
  ACTIVITY_LOG_FILE_NAME,
  readActivityLogSync,
  writeActivityLogSync,
} from '../../src/storage/activity-log.js';

const root = mkdtempSync(join(tmpdir(), 'rc-powerloss-'));
after(() => rmSync(root, { recursive: true, force: true }));

const MiB = 1024 * 1024;
const OTHER_BOOT = '00000000-0000-4000-8000-000000000000';

interface Outcome {
  journalledBytes: number;
  markedBytes: number;
  bStderr: string[];
}

/** Writes `lostLength` bytes at 8 MiB that a power loss takes from the journal but not the volume. */
async function powerLoss(prefix: string, lostLength: number): Promise<Outcome> {
  const sites = await pairedSites(
    root,
    prefix,
    {
      a: {
        volumes: { v: '64MiB' },
        journal: '{ size: 72MiB, segmentSize: 33MiB }',
        activityLog: '{ extents: 64 }',
      },
      b: { volumes: { v: '64MiB' } },
    },
    { g: ['a', 'b', 'v'] },
  );
  const { topo, pa, pb } = sites;
  let { A, B } = sites;
  const apiA = apiOf(pa.api);
  const apiB = apiOf(pb.api);
  const dirA = join(dirname(topo.file), 'a');
  const img = join(dirname(topo.file), 'image');
  const src = `nbd://127.0.0.1:${pa.nbd}/v`;
  try {
    await qemuIo(src, ['write -P 0x11 0 4M', 'flush']);
    // Everything applied at b and released at a: the redo at restart then writes nothing.
    await waitFor('b applied everything and a released it', async () => {
      const ga = await groupStatus(apiA, topo.secret, 'g');
      const gb = await groupStatus(apiB, topo.secret, 'g');
      const st = (await apiCall(apiA, topo.secret, 'GET', '/v1/status')) as { journal: { records: number } };
      return gb.seqApplied === ga.seqWritten && st.journal.records === 0 ? true : undefined;
    });
    const status = (await apiCall(apiA, topo.secret, 'GET', '/v1/status')) as {
      activityLog: { capacity: number; extents: number };
    };
    assert.equal(status.activityLog.capacity, 64, 'activityLog.extents of the config file');
    // b goes away: nothing written from now on is shipped, as for records that never got durable.
    await B.stop();
    // A clean stop persists the releases: the journal of the image holds no record the redo at
    // restart would put over the lost writes.
    assert.equal(await A.stop(), 0);
    cpSync(join(dirA, 'journal'), join(img, 'journal'), { recursive: true });
    A = await startNodeProcess(topo.file, 'a');
    await qemuIo(src, [`write -P 0x5a ${8 * MiB} ${lostLength}`]);
    const logged = readActivityLogSync(dirA);
    assert.equal(logged.state, 'ok');
    if (logged.state !== 'ok') return assert.fail('unreachable');
    const extents = logged.extents.filter((e) => e.volume === 'v').map((e) => e.extentNo);
    for (let x = (8 * MiB) / logged.extentBytes; x < (8 * MiB + lostLength) / logged.extentBytes; x++) {
      assert.ok(extents.includes(x), `extent ${x} of the lost writes is in the activity log`);
    }
    const inLog = await metricValue(apiA, topo.secret, 'remcopy_activity_log_extents');
    assert.ok(inLog !== undefined && inLog > 0, `the metric counts them (${inLog})`);
    cpSync(join(dirA, 'volumes'), join(img, 'volumes'), { recursive: true });
    cpSync(join(dirA, ACTIVITY_LOG_FILE_NAME), join(img, ACTIVITY_LOG_FILE_NAME));
    assert.equal(await A.stop(), 0);

    // The power-loss image in place; the log as written in the boot before this one.
    for (const part of ['journal', 'volumes', ACTIVITY_LOG_FILE_NAME]) {
      rmSync(join(dirA, part), { recursive: true, force: true });
      cpSync(join(img, part), join(dirA, part), { recursive: true });
    }
    writeActivityLogSync(dirA, {
      bootId: OTHER_BOOT,
      extentBytes: logged.extentBytes,
      extents: logged.extents,
    });

    B = await startNodeProcess(topo.file, 'b');
    A = await startNodeProcess(topo.file, 'a');
    const line = A.stderr.find((l) => l.includes('power-loss recovery done'));
    assert.ok(line, `a logged its recovery: ${A.stderr.join('\n')}`);
    const rec = JSON.parse(line) as { journalledBytes: number; markedBytes: number };

    await waitFor(
      'b applied everything a journalled, no dirty bits left',
      async () => {
        const ga = await groupStatus(apiA, topo.secret, 'g');
        const gb = await groupStatus(apiB, topo.secret, 'g');
        return ga.state === 'pair' &&
          ga.dirtyBytes === 0 &&
          gb.state === 'pair' &&
          gb.seqApplied === ga.seqWritten
          ? true
          : undefined;
      },
      90_000,
    );
    // The lost writes are at the target: the source's volume kept them.
    const read = await qemuIo(
      `nbd://127.0.0.1:${pb.nbd}/v`,
      [`read -P 0x5a ${8 * MiB} ${lostLength}`],
      true,
    ).catch((e: Error & { stdout?: string }) => `${e.message}\n${e.stdout ?? ''}`);
    assert.doesNotMatch(read, /Pattern verification failed|Command failed/, read);
    const v = await runCli('verify', '--config', topo.file, '--group', 'g');
    assert.equal(v.code, 0, v.out);
    return { journalledBytes: rec.journalledBytes, markedBytes: rec.markedBytes, bStderr: B.stderr };
  } finally {
    await Promise.all([A.stop(), B.stop()]);
  }
}

test('power loss: volume extents ahead of the journal go to the target as copy records before any host write', async () => {
  const r = await powerLoss('fits-', 4 * MiB);
  assert.equal(r.journalledBytes, 4 * MiB);
  assert.equal(r.markedBytes, 0);
  assert.ok(!r.bStderr.some((l) => l.includes('resync announced')), 'the target never went through a resync');
});

test('power loss: extents beyond half the journal are marked dirty and resync', async () => {
  const r = await powerLoss('resync-', 48 * MiB);
  assert.ok(r.journalledBytes > 0, `some journalled as copy records (${r.journalledBytes})`);
  assert.ok(r.markedBytes > 0, `the rest marked (${r.markedBytes})`);
  assert.ok(r.journalledBytes + r.markedBytes >= 48 * MiB);
  assert.ok(
    r.bStderr.some((l) => l.includes('resync announced')),
    'the target was told its image is not consistent until the resync is applied',
  );
});
