/**
 * Markers across nodes with unrelated clocks (DESIGN.md §3.4, issue 5), in the deterministic
 * simulation of src/testing/sim/markers.ts (doc/simulator.md "Markers across nodes"): two source
 * nodes with their own clocks and write-time modes, two target nodes (in most seeds one of them
 * holds groups of both sources), a coordinator that freezes, marks and thaws with lost and late
 * requests, a link that loses, duplicates and reorders, target crashes with redo:
 * - every seed of RC_MARKERS_SEEDS (default 200) passes every checker, and the faults do happen;
 * - same seed, same run (trace hash); another seed, another run;
 * - each planted bug is caught by the checker named for it within MARKER_BUG_SEEDS_MAX seeds;
 * - the checkers no planted bug trips fail on made-up histories;
 * - the replay command exits 0 on a clean seed and 1 on a violation.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type {
  MarkerCheckerName,
  SimRecord,
  TargetEnd,
  WriteRec,
} from '../../src/testing/sim/markers-check.js';
import { checkMarkerCut, checkMonotonic, checkNoLoss } from '../../src/testing/sim/markers-check.js';
import type { MarkerBug, MarkerSimStats } from '../../src/testing/sim/markers.js';
import {
  describeMarkerFailure,
  MARKER_BUGS,
  markerReplayCommand,
  runMarkerSim,
} from '../../src/testing/sim/markers.js';
import { byteOffset, nodeIdOf, ordinal, RecordKind, seq, timeUs } from '../../src/core/types.js';

function envInt(name: string, fallback: number): number {
  const text = process.env[name];
  if (text === undefined || text === '') return fallback;
  const n = Number(text);
  assert.ok(Number.isSafeInteger(n) && n > 0, `${name} must be a positive whole number, got ${text}`);
  return n;
}

const SEEDS = envInt('RC_MARKERS_SEEDS', 200);
const MARKER_BUG_SEEDS_MAX = 200;

test(`markers: seeds 1..${SEEDS} pass every checker, with the faults happening`, () => {
  const totals: Record<string, number> = {};
  const failures: string[] = [];
  for (let seed = 1; seed <= SEEDS; seed++) {
    const r = runMarkerSim({ seed });
    for (const [k, v] of Object.entries(r.stats)) totals[k] = (totals[k] ?? 0) + v;
    if (r.violations.length > 0) failures.push(describeMarkerFailure(r));
  }
  console.log(`markers, ${SEEDS} seeds: ${JSON.stringify(totals)}`);
  assert.equal(failures.length, 0, `${failures.length} seeds failed:\n${failures.slice(0, 3).join('\n')}`);
  const must: (keyof MarkerSimStats)[] = [
    'pairs',
    'heldWrites',
    'checkpointsFailed',
    'boundPassed',
    'incomplete',
    'snapshots',
    'redo',
    'targetCrashes',
    'recordsLost',
    'recordsDuplicated',
    'mixedTargets',
  ];
  for (const k of must)
    assert.ok((totals[k] ?? 0) > 0, `no ${k} in ${SEEDS} seeds: the run tests less than it claims`);
});

test('markers: same seed, same run; another seed, another run', () => {
  const a = runMarkerSim({ seed: 7 });
  const b = runMarkerSim({ seed: 7 });
  const c = runMarkerSim({ seed: 8 });
  assert.equal(a.traceHash, b.traceHash);
  assert.deepEqual(a.stats, b.stats);
  assert.equal(a.endUs, b.endUs);
  assert.notEqual(a.traceHash, c.traceHash);
  console.log(`seed 7 trace ${a.traceHash}, seed 8 trace ${c.traceHash}`);
});

const CAUGHT_BY: Record<MarkerBug, MarkerCheckerName> = {
  'freeze-no-drain': 'freeze-point',
  'no-freeze': 'dependent-writes',
  'barrier-early': 'marker-cut',
  'global-key-cut': 'convergence',
};

for (const bug of MARKER_BUGS) {
  test(`markers: planted bug ${bug} is caught by ${CAUGHT_BY[bug]}`, () => {
    let caught: number | undefined;
    for (let seed = 1; seed <= MARKER_BUG_SEEDS_MAX && caught === undefined; seed++) {
      const r = runMarkerSim({ seed, bug });
      if (r.violationCounts.has(CAUGHT_BY[bug])) {
        caught = seed;
        console.log(`${bug}: first caught at seed ${seed}\n${describeMarkerFailure(r)}`);
      }
    }
    assert.ok(
      caught !== undefined,
      `${bug} not caught by ${CAUGHT_BY[bug]} in ${MARKER_BUG_SEEDS_MAX} seeds`,
    );
    assert.match(markerReplayCommand(caught, bug), new RegExp(`--seed ${caught} --bug ${bug}$`));
  });
}

const header = (
  group: string,
  s: number,
  kind: RecordKind,
  offset: number,
  markerNo = 0,
): SimRecord['h'] => ({
  kind,
  group,
  seq: seq(s),
  writeTimeUs: timeUs(s),
  hostTimeUs: timeUs(0),
  nodeId: nodeIdOf('S1'),
  ordinal: ordinal(s),
  epoch: 1,
  volume: kind === RecordKind.marker ? '' : 'g/v0',
  offset: byteOffset(offset),
  length: kind === RecordKind.marker ? 0 : 1,
  markerNo,
});

const targetEnd = (over: Partial<TargetEnd>): TargetEnd => ({
  name: 'T1',
  up: true,
  volumes: new Map(),
  snapshots: new Map(),
  outcomes: [],
  releasedTrace: [0],
  released: 0,
  ...over,
});

test('markers: the checkers fail on made-up histories', () => {
  // monotonic-markers: an outcome that goes back, and a released number that does.
  const back = checkMonotonic([
    targetEnd({
      outcomes: [
        { marker: 3, kind: 'snapshot' },
        { marker: 2, kind: 'snapshot' },
      ],
      releasedTrace: [0, 3, 2],
    }),
  ]);
  assert.deepEqual(
    back.map((v) => v.checker),
    ['monotonic-markers', 'monotonic-markers'],
  );
  assert.equal(
    checkMonotonic([targetEnd({ outcomes: [{ marker: 1, kind: 'incomplete' }], releasedTrace: [0, 1, 1] })])
      .length,
    0,
  );

  // no-loss: a held write never journalled, and one journalled but never acknowledged.
  const journals = new Map<string, SimRecord[]>([
    [
      'g',
      [
        { h: header('g', 1, RecordKind.data, 0), writeId: 1 },
        { h: header('g', 2, RecordKind.marker, 0, 1), writeId: 0 },
        { h: header('g', 3, RecordKind.data, 1), writeId: 2 },
      ],
    ],
  ]);
  const w = (
    writeId: number,
    s: number | undefined,
    ackUs: number | undefined,
    heldBy?: number,
  ): WriteRec => ({
    writeId,
    source: 'S1',
    group: 'g',
    volume: 'g/v0',
    block: 0,
    submitUs: 0,
    submitIdx: writeId,
    heldBy,
    seq: s,
    ackUs,
  });
  const lost = checkNoLoss(
    journals,
    new Map([
      [1, w(1, 1, 5)],
      [2, w(2, 3, undefined)],
      [3, w(3, undefined, undefined, 1)],
    ]),
  );
  assert.deepEqual(
    lost.map((v) => v.message),
    ['write 2 to g was never acknowledged', 'write 3 to g is not in its journal (held by freeze 1)'],
  );

  // marker-cut: a snapshot 1 that shows the write after marker 1, then one that is exact.
  const shape = [{ name: 'g', source: 'S1', target: 'T1', volumes: [{ name: 'g/v0', blocks: 2 }] }];
  const snap = (blocks: number[]): TargetEnd =>
    targetEnd({ snapshots: new Map([[1, new Map([['g/v0', blocks]])]]) });
  assert.equal(checkMarkerCut(shape, journals, [snap([1, 2])])[0]?.checker, 'marker-cut');
  assert.equal(checkMarkerCut(shape, journals, [snap([1, 0])]).length, 0);
});

test('markers: the replay command exits 0 on a clean seed, 1 on a violation', () => {
  const script = fileURLToPath(new URL('../../src/testing/sim/markers.js', import.meta.url));
  const clean = spawnSync(process.execPath, [script, '--seed', '1', '--quiet'], { encoding: 'utf8' });
  assert.equal(clean.status, 0, clean.stdout + clean.stderr);
  assert.match(clean.stdout, /seed 1: no violation/);
  const bad = spawnSync(process.execPath, [script, '--seed', '1', '--bug', 'barrier-early', '--quiet'], {
    encoding: 'utf8',
  });
  assert.equal(bad.status, 1, bad.stdout + bad.stderr);
  assert.match(bad.stdout, /\[marker-cut\]/);
  assert.match(bad.stdout, /replay: node dist\/src\/testing\/sim\/markers\.js --seed 1 --bug barrier-early/);
});
