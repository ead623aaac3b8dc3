/**
 * Proves markers, snapshots and consistency cycles with real node processes (DESIGN.md §3.4;
 * issue 5): two source nodes (a1, a2) and two target nodes (b1, b2), one consistency set over a
 * group on each.
 * - `remcopy checkpoint` prints marker N; every target volume then exports `VOLUME@N` read-only
 *   (nbdinfo --list shows it); a snapshot keeps its image while later writes are applied
 *   (copy-on-write); keepSnapshots drops the oldest; `remcopy snapshots --delete / --keep` work.
 * - A freeze that passes its bound thaws by itself: the writes it held complete, the mark is
 *   refused, nothing is lost; the next checkpoint takes the next number.
 * - Groups that wait at a marker for the coordinator's go (resume: coordinator) apply nothing and
 *   run no apply cycle while records keep arriving; the go lets them apply.
 * - Consistency cycles (cycleSeconds) while a bank workload runs across both source nodes (debit
 *   on a1, credit on a2): every snapshot taken passes the dependent-write check, so the two
 *   target nodes' snapshots together are one image the sources really had.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { promisify } from 'node:util';
import { apiCall } from '../../src/node/api.js';
import type { BankProgress } from '../../src/testing/bank.js';
import { BANK_BLOCK_BYTES, checkBank, runBank } from '../../src/testing/bank.js';
import { apiOf, copyJournalled, groupStatus, metricValue, waitFor } from '../../src/testing/cluster.js';
import { nbdWriter } from '../../src/testing/nbd-writer.js';
import type { NodeProcess } from '../../src/testing/proc.js';
import { runCli, startNodeProcess, writeTopology } from '../../src/testing/proc.js';
import { qemuIo, waitState } from '../../src/testing/sites.js';

const run = promisify(execFile);
const root = mkdtempSync(join(tmpdir(), 'remcopy-markers-'));
after(() => rmSync(root, { recursive: true, force: true }));

/** Two sources and two targets: g1 a1 -> b1 (v1), g2 a2 -> b2 (v2), one set over both. */
/** Two source and two target nodes, one group each way, in set `set`; `targetEnv` for b1 and b2. */
async function fourNodes(prefix: string, set: string, targetEnv: Record<string, string> = {}) {
  const topo = await writeTopology(
    mkdtempSync(join(root, prefix)),
    {
      a1: { volumes: { v1: '4MiB' } },
      a2: { volumes: { v2: '4MiB' } },
      b1: { volumes: { v1: '4MiB' } },
      b2: { volumes: { v2: '4MiB' } },
    },
    { g1: ['a1', 'b1', 'v1'], g2: ['a2', 'b2', 'v2'] },
    { bank: set },
  );
  const procs: NodeProcess[] = [];
  for (const n of ['b1', 'b2', 'a1', 'a2']) {
    procs.push(await startNodeProcess(topo.file, n, undefined, n.startsWith('b') ? targetEnv : {}));
  }
  const port = (n: string) => topo.ports.get(n)!;
  for (const [g, src, dst] of [
    ['g1', 'a1', 'b1'],
    ['g2', 'a2', 'b2'],
  ] as const) {
    await copyJournalled(apiOf(port(src).api), topo.secret, g);
    await waitState(apiOf(port(dst).api), topo.secret, g, 'pair');
  }
  const uri = (n: string, v: string) => `nbd://127.0.0.1:${port(n).nbd}/${v}`;
  const api = (n: string) => apiOf(port(n).api);
  const stop = async () => {
    for (const p of procs) assert.equal(await p.stop(), 0, 'the node stops cleanly');
  };
  return { topo, uri, api, stop, procs };
}

/** The whole content of an export, copied with nbdcopy. */
async function readExport(uri: string): Promise<Buffer> {
  const file = join(root, `copy-${process.hrtime.bigint()}`);
  await run('nbdcopy', [uri, file]);
  const data = readFileSync(file);
  rmSync(file);
  return data;
}

const pattern = (byte: number, n = 65536) => Buffer.alloc(n, byte);

/** The bank workload across both sources: debits through NBD on a1, credits on a2. */
async function bankAcross(
  s: Awaited<ReturnType<typeof fourNodes>>,
  layout: { workers: number; blocksPerWorker: number },
) {
  const debit = await nbdWriter(s.uri('a1', 'v1'));
  const credit = await nbdWriter(s.uri('a2', 'v2'));
  const progress: BankProgress = { completed: 0, errors: [] };
  let stopping = false;
  const running = runBank(
    layout,
    (off, data) => debit.write(off, data),
    (off, data) => credit.write(off, data),
    () => stopping,
    progress,
  );
  return {
    progress,
    /** Ends the workload once each worker's transfer in progress is done. */
    async stop() {
      stopping = true;
      await running;
    },
    async close() {
      stopping = true;
      await running.catch(() => {});
      await debit.close().catch(() => {});
      await credit.close().catch(() => {});
    },
  };
}

test('checkpoint: marker N across two source and two target nodes, VOLUME@N exports, copy-on-write, retention', async () => {
  const s = await fourNodes('ckpt-', '{ groups: [g1, g2], keepSnapshots: 2, freezeBound: 2s }');
  try {
    await qemuIo(s.uri('a1', 'v1'), ['write -P 0x11 0 64k']);
    await qemuIo(s.uri('a2', 'v2'), ['write -P 0x21 0 64k']);
    const first = await runCli('checkpoint', '--config', s.topo.file, '--set', 'bank');
    assert.equal(first.code, 0, first.out);
    assert.match(first.out, /^1\n/, 'the marker number is printed first');
    assert.match(
      first.out,
      /checkpoint 1 of bank: snapshots @1 on b1, b2; writes frozen a1 [\d.]+ ms \(answered in [\d.]+ ms\), a2 [\d.]+ ms \(answered in [\d.]+ ms\)/,
    );
    const list = await run('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${s.topo.ports.get('b1')!.nbd}`]);
    const names = (JSON.parse(list.stdout) as { exports: { 'export-name': string }[] }).exports.map(
      (e) => e['export-name'],
    );
    assert.deepEqual(names.sort(), ['v1', 'v1@1'], 'nbdinfo --list shows the snapshot export');
    // Later writes reach the target volumes; the snapshots keep the image at marker 1.
    await qemuIo(s.uri('a1', 'v1'), ['write -P 0x12 0 64k', 'write -P 0x13 1M 64k']);
    await qemuIo(s.uri('a2', 'v2'), ['write -P 0x22 0 64k']);
    const second = await runCli('checkpoint', '--config', s.topo.file, '--set', 'bank', '--json');
    assert.equal(second.code, 0, second.out);
    assert.equal((JSON.parse(second.out) as { marker: number }).marker, 2);
    const v1at1 = await readExport(s.uri('b1', 'v1@1'));
    const v1at2 = await readExport(s.uri('b1', 'v1@2'));
    const v2at1 = await readExport(s.uri('b2', 'v2@1'));
    assert.ok(v1at1.subarray(0, 65536).equals(pattern(0x11)), 'v1@1 keeps the first write');
    assert.ok(v1at1.subarray(1 << 20, (1 << 20) + 65536).equals(pattern(0)), 'v1@1 has no later write');
    assert.ok(v1at2.subarray(0, 65536).equals(pattern(0x12)));
    assert.ok(v1at2.subarray(1 << 20, (1 << 20) + 65536).equals(pattern(0x13)));
    assert.ok(v2at1.subarray(0, 65536).equals(pattern(0x21)));
    // Status shows the marker state and the space used.
    const st = (await apiCall(s.api('b1'), s.topo.secret, 'GET', '/v1/status')) as {
      markers: { sets: { set: string; reached: number; snapshots: { usedBytes: number }[] }[] };
    };
    assert.equal(st.markers.sets[0]!.reached, 2);
    assert.equal(
      st.markers.sets[0]!.snapshots[0]!.usedBytes,
      2 * 65536,
      'the two 64 KiB chunks written after marker 1 were copied into @1, nothing else',
    );
    // Snapshots are read-only.
    await assert.rejects(
      qemuIo(s.uri('b1', 'v1@1'), ['write -P 0x99 0 4k']),
      /Permission denied|read-only|Operation not permitted/i,
    );
    // keepSnapshots: 2 -- the third checkpoint drops @1.
    const third = await runCli('checkpoint', '--config', s.topo.file, '--set', 'bank');
    assert.equal(third.code, 0, third.out);
    const snaps = await runCli('snapshots', '--config', s.topo.file, '--set', 'bank', '--json');
    const vols = (JSON.parse(snaps.out) as { volumes: { volume: string; snapshots: { number: number }[] }[] })
      .volumes;
    assert.deepEqual(
      vols.map((v) => [v.volume, v.snapshots.map((x) => x.number)]),
      [
        ['v1', [2, 3]],
        ['v2', [2, 3]],
      ],
    );
    // Delete one number everywhere; --keep 1 keeps the newest only; deleting a missing one fails.
    assert.equal(
      (await runCli('snapshots', '--config', s.topo.file, '--set', 'bank', '--delete', '2')).code,
      0,
    );
    const gone = await runCli('snapshots', '--config', s.topo.file, '--set', 'bank', '--delete', '2');
    assert.equal(gone.code, 1, gone.out);
    assert.match(gone.out, /no target volume of bank has a snapshot @2/);
    await assert.rejects(readExport(s.uri('b1', 'v1@2')));
    const v1at3 = await readExport(s.uri('b1', 'v1@3'));
    assert.ok(v1at3.subarray(0, 65536).equals(pattern(0x12)), 'v1@3 reads right after @2 was deleted');
  } finally {
    await s.stop();
  }
});

test('a freeze past its bound thaws by itself; a marker on one source only is abandoned; the next number is taken', async () => {
  const s = await fourNodes('bound-', '{ groups: [g1, g2], freezeBound: 200ms }');
  try {
    const frozen = (await apiCall(s.api('a1'), s.topo.secret, 'POST', '/v1/sets/bank/freeze', {
      id: 'manual',
      boundMs: 200,
    })) as { groups: string[]; lastMarker: number };
    assert.deepEqual(frozen.groups, ['g1']);
    assert.equal(frozen.lastMarker, 0);
    // A write issued while frozen waits (it is not failed) and completes once the bound thaws it.
    await qemuIo(s.uri('a1', 'v1'), ['write -P 0x31 0 4k']);
    await assert.rejects(
      apiCall(s.api('a1'), s.topo.secret, 'POST', '/v1/sets/bank/mark', { id: 'manual', marker: 1 }),
      /passed its bound of 200 ms: writes thawed, no marker/,
    );
    const st = (await apiCall(s.api('a1'), s.topo.secret, 'GET', '/v1/sets/bank/markers')) as {
      source: { boundPassed: number; markers: number };
    };
    assert.equal(st.source.boundPassed, 1);
    assert.equal(st.source.markers, 0);
    // Bad requests change nothing.
    await assert.rejects(
      apiCall(s.api('a1'), s.topo.secret, 'POST', '/v1/sets/bank/freeze', { id: 'x', boundMs: 0 }),
      /HTTP 400/,
    );
    await assert.rejects(
      apiCall(s.api('b1'), s.topo.secret, 'POST', '/v1/sets/bank/freeze', { id: 'x', boundMs: 50 }),
      /HTTP 409.*source of no group of set bank/,
    );
    await assert.rejects(apiCall(s.api('a1'), s.topo.secret, 'POST', '/v1/sets/nope/freeze', {}), /HTTP 404/);
    // A cycle that failed half-way: marker 1 placed on a1 only (a2's freeze expires); the
    // coordinator abandons it, so b1 keeps no snapshot of part of the set.
    for (const n of ['a1', 'a2']) {
      await apiCall(s.api(n), s.topo.secret, 'POST', '/v1/sets/bank/freeze', { id: 'half', boundMs: 2000 });
    }
    await apiCall(s.api('a1'), s.topo.secret, 'POST', '/v1/sets/bank/mark', { id: 'half', marker: 1 });
    await apiCall(s.api('a2'), s.topo.secret, 'POST', '/v1/sets/bank/thaw', { id: 'half' });
    for (const n of ['b1', 'b2']) {
      await apiCall(s.api(n), s.topo.secret, 'POST', '/v1/sets/bank/abandon', { marker: 1 });
    }
    const b1 = (await apiCall(s.api('b1'), s.topo.secret, 'POST', '/v1/sets/bank/wait-marker', {
      marker: 1,
      timeoutMs: 20_000,
    })) as { outcome: string };
    assert.equal(b1.outcome, 'abandoned', 'b1 reached marker 1 and took no snapshot of it');
    // The next checkpoint works and takes marker 2: each marker names its predecessor, so b1 sees
    // 1 then 2 and b2 sees 2 after none, and neither is abnormal.
    const r = await runCli('checkpoint', '--config', s.topo.file, '--set', 'bank', '--json');
    assert.equal(r.code, 0, r.out);
    assert.equal((JSON.parse(r.out) as { marker: number }).marker, 2);
    await assert.rejects(readExport(s.uri('b1', 'v1@1')), /no export named/);
    const v1 = await readExport(s.uri('b1', 'v1@2'));
    assert.ok(v1.subarray(0, 4096).equals(pattern(0x31, 4096)), 'the held write is in the snapshot');
  } finally {
    await s.stop();
  }
});

const callOf = (s: { api: (n: string) => ReturnType<typeof apiOf>; topo: { secret: string } }) => {
  return (n: string, path: string, body: unknown) => apiCall(s.api(n), s.topo.secret, 'POST', path, body);
};

/** Marker 1 by hand, with no go afterwards (as `remcopy checkpoint` would send): b1 snapshots and waits. */
async function markerOneByHand(s: Parameters<typeof callOf>[0]): Promise<void> {
  const call = callOf(s);
  for (const n of ['a1', 'a2']) await call(n, '/v1/sets/bank/freeze', { id: 'w1', boundMs: 2000 });
  for (const n of ['a1', 'a2']) await call(n, '/v1/sets/bank/mark', { id: 'w1', marker: 1 });
  const reached = (await call('b1', '/v1/sets/bank/wait-marker', { marker: 1, timeoutMs: 30_000 })) as {
    outcome: string;
  };
  assert.equal(reached.outcome, 'snapshot');
}

test('groups waiting at a marker for the go: records keep arriving, no apply cycle runs until the go', async () => {
  const s = await fourNodes('wait-', '{ groups: [g1, g2], resume: coordinator, freezeBound: 2s }');
  try {
    const call = callOf(s);
    await markerOneByHand(s);
    const group = (n: string) => groupStatus(s.api(n), s.topo.secret, 'g1');
    const cycles = async () => {
      const n = await metricValue(s.api('b1'), s.topo.secret, 'remcopy_apply_cycles{set="bank"}');
      assert.ok(n !== undefined, 'the apply cycles metric of set bank');
      return n;
    };
    const atMarker = (await group('b1')).seqApplied;
    const before = await cycles();
    // Writes after the marker, in several batches, reach b1's journal while g1 waits.
    for (let i = 0; i < 4; i++) {
      await qemuIo(
        s.uri('a1', 'v1'),
        Array.from({ length: 8 }, (_, k) => `write -P 0x4${i} ${(i * 8 + k) * 65536} 4k`),
      );
    }
    const written = (await group('a1')).seqWritten;
    await waitFor('the writes to arrive at b1', async () =>
      (await group('b1')).seqArrived === written ? true : undefined,
    );
    // Nothing may be applied past the marker, and a cycle that applies nothing must not run: with
    // records arriving, each would move the cut, and the apply loop would never go idle.
    assert.equal((await group('b1')).seqApplied, atMarker, 'g1 stays at the marker');
    assert.equal(await cycles(), before, 'no apply cycle while every group waits at the marker');
    // The coordinator's go: the writes are applied.
    for (const n of ['b1', 'b2']) await call(n, '/v1/sets/bank/go', { marker: 1 });
    await waitFor('b1 to apply past the marker', async () =>
      (await group('b1')).seqApplied === written ? true : undefined,
    );
    assert.ok((await cycles()) > before);
    const v1 = await readExport(s.uri('b1', 'v1'));
    assert.ok(
      v1.subarray(31 * 65536, 31 * 65536 + 4096).equals(pattern(0x43, 4096)),
      'the last write is there',
    );
  } finally {
    await s.stop();
  }
});

test('a group held at a marker with its arrival window nearly full: the link pauses, nothing is refused, the go lets all through', async () => {
  const window = 1024;
  const s = await fourNodes('window-', '{ groups: [g1, g2], resume: coordinator, freezeBound: 2s }', {
    REMCOPY_ARRIVAL_WINDOW: String(window),
  });
  try {
    const b1 = s.procs[0]!;
    await markerOneByHand(s);
    const group = (n: string) => groupStatus(s.api(n), s.topo.secret, 'g1');
    const atMarker = (await group('b1')).seqApplied;
    const mark = b1.stderr.length;
    // More 4 KiB writes after the marker than b1's window holds (v1 has 1024 blocks: some twice).
    const writes = 1200;
    await qemuIo(
      s.uri('a1', 'v1'),
      Array.from({ length: writes }, (_, k) => `write -P ${k % 251} ${(k % 1024) * 4096} 4k`),
    );
    const written = (await group('a1')).seqWritten;
    assert.ok(written - atMarker >= writes);
    await waitFor('b1 to pause the link near the arrival window', async () =>
      b1.stderr.slice(mark).find((l) => /near the arrival window: pausing the link/.test(l)),
    );
    const held = await group('b1');
    assert.ok(held.seqArrived - atMarker <= window, `b1 holds ${held.seqArrived - atMarker} past the marker`);
    assert.ok(held.seqArrived < written, 'b1 stopped reading before the last records');
    assert.equal(held.seqApplied, atMarker, 'g1 waits at the marker');
    // The go: applied, released, the link resumes, and every record is applied.
    for (const n of ['b1', 'b2']) await callOf(s)(n, '/v1/sets/bank/go', { marker: 1 });
    await waitFor('b1 to apply every write', async () =>
      (await group('b1')).seqApplied === written ? true : undefined,
    );
    assert.ok((await readExport(s.uri('b1', 'v1'))).equals(await readExport(s.uri('a1', 'v1'))));
    const refused = b1.stderr.slice(mark).filter((l) => /refused|past the arrival window/.test(l));
    assert.deepEqual(refused, [], 'b1 refused nothing');
  } finally {
    await s.stop();
  }
});

test('consistency cycles under a bank workload across two source nodes: every snapshot is one image', async () => {
  const s = await fourNodes(
    'cycles-',
    '{ groups: [g1, g2], cycleSeconds: 1, keepSnapshots: 100, freezeBound: 2s }',
  );
  const layout = { workers: 8, blocksPerWorker: 8 };
  const bank = await bankAcross(s, layout);
  const progress = bank.progress;
  try {
    // Let cycles run for a while under load.
    const cycles = async () =>
      (
        (await apiCall(s.api('a1'), s.topo.secret, 'GET', '/v1/status')) as {
          cycles: {
            cycles: number;
            failures: number;
            lastMarker?: number;
            freezeMs: { p50: number; p99: number };
            nodes: Record<string, { freezeMs: { count: number }; freezeAnswerMs: { count: number } }>;
          }[];
        }
      ).cycles[0]!;
    await waitFor(
      '6 consistency cycles',
      async () => ((await cycles()).cycles >= 6 ? true : undefined),
      60_000,
    );
    await bank.stop();
    assert.deepEqual(progress.errors, [], 'no host write failed during the cycles');
    assert.ok(progress.completed > 0);
    const c = await cycles();
    assert.ok(c.freezeMs.p99 !== undefined && c.freezeMs.p50 <= c.freezeMs.p99);
    // Per source node: one freeze time and one freeze answer per completed cycle.
    assert.deepEqual(Object.keys(c.nodes).sort(), ['a1', 'a2']);
    for (const v of Object.values(c.nodes)) {
      assert.equal(v.freezeMs.count, c.cycles);
      assert.equal(v.freezeAnswerMs.count, c.cycles);
    }
    const status = await runCli('status', '--config', s.topo.file);
    assert.match(
      status.out,
      /cycles bank +every 1 s: \d+ done, \d+ failed, last marker \d+, cycle p50 [\d.]+ ms, freeze p50/,
    );
    assert.match(status.out, /\n {4}a2 +freeze p50 [\d.]+ ms p99 [\d.]+ ms, freeze answered p50 [\d.]+ ms/);
    assert.match(status.out, /set bank +snapshot @\d+/);
    // Every snapshot on both target nodes: the bank invariant holds across the two nodes. Cycles go
    // on meanwhile: a marker above the last one completed before the listing may be on one target
    // only, as its cycle is still running.
    const completed = (await cycles()).lastMarker ?? 0;
    const list = await runCli('snapshots', '--config', s.topo.file, '--set', 'bank', '--json');
    const vols = (JSON.parse(list.out) as { volumes: { volume: string; snapshots: { number: number }[] }[] })
      .volumes;
    const numbers = (v: string) =>
      vols
        .find((x) => x.volume === v)!
        .snapshots.map((x) => x.number)
        .filter((n) => n <= completed);
    const n1 = numbers('v1');
    const n2 = numbers('v2');
    assert.deepEqual(n1, n2, 'both targets snapshotted the same markers');
    assert.ok(n1.length >= 6, `${n1.length} snapshots`);
    let transfersSeen = 0;
    const bytes = layout.workers * layout.blocksPerWorker * BANK_BLOCK_BYTES;
    for (const n of n1) {
      const d = (await readExport(s.uri('b1', `v1@${n}`))).subarray(0, bytes);
      const k = (await readExport(s.uri('b2', `v2@${n}`))).subarray(0, bytes);
      const check = checkBank(layout, d, k);
      assert.ok(check.ok, `snapshot @${n}: ${check.violations.join('; ')}`);
      transfersSeen = Math.max(transfersSeen, check.transfers);
    }
    assert.ok(transfersSeen > 0, 'the snapshots saw transfers');
  } finally {
    await bank.close();
    await s.stop();
  }
});

test('takeover of a set across nodes: both targets go back to the newest common snapshot, a crash half-way is finished at restart', async () => {
  // A generous freeze bound: a checkpoint here sets the test up; CI load must not fail it.
  const s = await fourNodes('takeover-', '{ groups: [g1, g2], freezeBound: 2s }');
  const layout = { workers: 8, blocksPerWorker: 8 };
  const bytes = layout.workers * layout.blocksPerWorker * BANK_BLOCK_BYTES;
  const bank = await bankAcross(s, layout);
  const progress = bank.progress;
  try {
    // b2 will die right after it persists its takeover intent, before its volume is put back.
    await s.procs[1]!.stop();
    s.procs[1] = await startNodeProcess(s.topo.file, 'b2', 15000, {
      REMCOPY_FAILPOINT: 'takeover:rollback-intent',
    });
    await waitFor('g2 in pair again', async () => {
      const st = (await apiCall(s.api('b2'), s.topo.secret, 'GET', '/v1/status')) as {
        groups: { name: string; state: string; linkUp?: boolean }[];
      };
      return st.groups.find((g) => g.name === 'g2' && g.state === 'pair' && g.linkUp) ? true : undefined;
    });
    let marker = 0;
    for (let i = 0; i < 2; i++) {
      await waitFor('transfers', async () => (progress.completed > 20 * (i + 1) ? true : undefined));
      const cp = await runCli('checkpoint', '--config', s.topo.file, '--set', 'bank');
      assert.equal(cp.code, 0, cp.out);
      marker = Number(cp.out.split('\n')[0]);
    }
    // Both targets apply writes past the marker (resume: auto): the takeover has to undo them.
    const seqAt = async (node: string, group: string) => {
      const m = (await apiCall(s.api(node), s.topo.secret, 'GET', '/v1/sets/bank/markers')) as {
        target: { history: { marker: number; seqs?: Record<string, number> }[] };
      };
      const st = (await apiCall(s.api(node), s.topo.secret, 'GET', '/v1/status')) as {
        groups: { name: string; seqApplied: number }[];
      };
      const at = m.target.history.find((h) => h.marker === marker)!.seqs![group]!;
      return { at, applied: st.groups.find((g) => g.name === group)!.seqApplied };
    };
    for (const [node, group] of [
      ['b1', 'g1'],
      ['b2', 'g2'],
    ] as const) {
      await waitFor(`${node} applied past marker ${marker}`, async () => {
        const { at, applied } = await seqAt(node, group);
        return applied > at + 2 ? true : undefined;
      });
    }
    // Disaster: both sources die at once.
    await Promise.all([s.procs[2]!.kill9(), s.procs[3]!.kill9()]);
    await bank.stop();

    const first = await runCli('takeover', '--config', s.topo.file, '--set', 'bank', '--json');
    assert.notEqual(first.code, 0, 'b2 died during the takeover');
    assert.match(
      first.out,
      new RegExp(
        `promoted at snapshot ${marker} so far: b1 \\(run the takeover again: it goes on at snapshot ${marker}`,
      ),
    );
    assert.equal((await s.procs[1]!.exited).signal, 'SIGKILL', 'b2 died at its failpoint');
    s.procs[1] = await startNodeProcess(s.topo.file, 'b2'); // finishes the rollback before it serves
    const again = await runCli(
      'takeover',
      '--config',
      s.topo.file,
      '--set',
      'bank',
      '--snapshot',
      String(marker),
    );
    assert.notEqual(again.code, 0);
    assert.match(again.out, /every group of bank was taken over already/);

    const st1 = (await apiCall(s.api('b1'), s.topo.secret, 'GET', '/v1/status')) as {
      groups: {
        name: string;
        role: string;
        dirtyBytes: number;
        takeoverSeq: number;
        takeoverMarker?: number;
      }[];
    };
    const st2 = (await apiCall(s.api('b2'), s.topo.secret, 'GET', '/v1/status')) as typeof st1;
    for (const g of [st1.groups.find((x) => x.name === 'g1')!, st2.groups.find((x) => x.name === 'g2')!]) {
      assert.equal(g.role, 'promoted', `${g.name} promoted`);
      assert.equal(g.takeoverMarker, marker, `${g.name} reports the snapshot it was taken over at`);
      assert.ok(g.dirtyBytes > 0, `${g.name}: the writes undone are dirty (${g.dirtyBytes} bytes)`);
    }
    // The promoted volumes are the snapshot, and together they are one image of the bank.
    const d = (await readExport(s.uri('b1', 'v1'))).subarray(0, bytes);
    const k = (await readExport(s.uri('b2', 'v2'))).subarray(0, bytes);
    assert.ok(d.equals((await readExport(s.uri('b1', `v1@${marker}`))).subarray(0, bytes)), 'v1 is v1@N');
    assert.ok(k.equals((await readExport(s.uri('b2', `v2@${marker}`))).subarray(0, bytes)), 'v2 is v2@N');
    const check = checkBank(layout, d, k);
    assert.ok(check.ok, check.violations.join('; '));
    assert.ok(check.transfers > 0, 'the image has transfers');
    // Writable now; the snapshot keeps the image the takeover started from.
    await qemuIo(s.uri('b1', 'v1'), ['write -P 0x5a 0 64k']);
    assert.ok((await readExport(s.uri('b1', 'v1'))).subarray(0, 65536).equals(pattern(0x5a)));
    assert.ok((await readExport(s.uri('b1', `v1@${marker}`))).subarray(0, bytes).equals(d), 'v1@N unchanged');

    // Failback: the old sources come back and become targets of b1 and b2. What the takeover undid
    // at b (written at a, applied at b past the marker) is in the dirty set with b's own writes,
    // so the delta copy makes a's volumes equal to b's, though a still holds the undone writes.
    s.procs[2] = await startNodeProcess(s.topo.file, 'a1');
    s.procs[3] = await startNodeProcess(s.topo.file, 'a2');
    const fb = await runCli('failback', '--config', s.topo.file, '--set', 'bank');
    assert.equal(fb.code, 0, fb.out);
    for (const [from, to, v] of [
      ['b1', 'a1', 'v1'],
      ['b2', 'a2', 'v2'],
    ] as const) {
      const want = await readExport(s.uri(from, v));
      await waitFor(`${to}'s ${v} equal to ${from}'s after the failback`, async () =>
        (await readExport(s.uri(to, v))).equals(want) ? true : undefined,
      );
    }
    const back = (await apiCall(s.api('a1'), s.topo.secret, 'GET', '/v1/status')) as {
      groups: { name: string; role: string; state: string }[];
    };
    assert.deepEqual(
      back.groups.filter((g) => g.name === 'g1').map((g) => [g.role, g.state]),
      [['target', 'pair']],
    );
  } finally {
    await bank.close();
    for (const p of s.procs) await p.stop();
  }
});

test('planned takeover of a set across nodes: a last checkpoint, nothing acknowledged lost, the sources fenced', async () => {
  const s = await fourNodes('planned-', '{ groups: [g1, g2] }');
  try {
    await qemuIo(s.uri('a1', 'v1'), ['write -P 0x11 0 64k']);
    await qemuIo(s.uri('a2', 'v2'), ['write -P 0x22 64k 64k']);
    const r = await runCli('takeover', '--config', s.topo.file, '--set', 'bank', '--json');
    assert.equal(r.code, 0, r.out);
    const res = JSON.parse(r.out.trim().split('\n').at(-1)!) as {
      planned: boolean;
      snapshot: number;
      nodes: { node: string; groups: { group: string }[] }[];
    };
    assert.equal(res.planned, true, 'every source answered');
    assert.deepEqual(res.nodes.map((n) => n.node).sort(), ['b1', 'b2']);
    // Everything the sources acknowledged is on the promoted volumes and in the last snapshot.
    for (const [node, vol, at, byte] of [
      ['b1', 'v1', 0, 0x11],
      ['b2', 'v2', 65536, 0x22],
    ] as const) {
      for (const name of [vol, `${vol}@${res.snapshot}`]) {
        const data = (await readExport(s.uri(node, name))).subarray(at, at + 65536);
        assert.ok(data.equals(pattern(byte)), `${node} ${name} holds the write`);
      }
    }
    for (const [node, group] of [
      ['a1', 'g1'],
      ['a2', 'g2'],
    ] as const) {
      const st = (await apiCall(s.api(node), s.topo.secret, 'GET', '/v1/status')) as {
        groups: { name: string; state: string; reason?: string }[];
      };
      const g = st.groups.find((x) => x.name === group)!;
      assert.equal(g.state, 'fenced');
      // Fenced when the command returns: by its own fence call, or a moment before it by the link,
      // when the promoted target's higher epoch reached the source first (either is at once).
      assert.match(
        g.reason ?? '',
        new RegExp(`planned takeover of bank|holds epoch \\d+ of ${group} \\(taken over\\)`),
        `${node} fenced by the command or its link`,
      );
    }
    await assert.rejects(qemuIo(s.uri('a1', 'v1'), ['write 0 4k']), 'a1 is fenced');
    await assert.rejects(qemuIo(s.uri('a2', 'v2'), ['write 0 4k']), 'a2 is fenced');
    await qemuIo(s.uri('b2', 'v2'), ['write -P 0x33 0 4k']);
    const again = await runCli('takeover', '--config', s.topo.file, '--set', 'bank');
    assert.notEqual(again.code, 0);
    assert.match(again.out, /every group of bank was taken over already/);
  } finally {
    await s.stop();
  }
});
