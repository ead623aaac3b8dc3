/**
 * Proves marker stops in apply planning (src/core/apply-plan.ts, DESIGN.md §3.4; patent figs 19,
 * 20): with `markersReleased`, a group applies up to and including its first marker above the
 * released number and waits there; a stopping marker is taken even when its key is above the cut
 * (the markers of one freeze are contiguous in the source's order); a marker that does not name
 * the group's last marker stops the group before it as an abnormal state; a number skipped by a
 * failed cycle is not abnormal when the marker names its real predecessor; a release lets the
 * group go on even when the cut did not move; while every group waits no cycle is planned, however
 * far the cut moves (the driver goes idle, which is when the snapshot is taken), unless a group
 * stopped at an abnormal marker; without `markersReleased` markers never stop.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { ArrivalView } from '../../src/core/arrival.js';
import { GroupArrival } from '../../src/core/arrival.js';
import type { ApplyState, PlanLimits } from '../../src/core/apply-plan.js';
import { completeCycle, initialApplyState, planCycle, waitingAtMarker } from '../../src/core/apply-plan.js';
import type { RecordHeader } from '../../src/core/types.js';
import { byteOffset, nodeIdOf, ordinal, RecordKind, seq, timeUs } from '../../src/core/types.js';

const NODE = nodeIdOf('siteA');

function rec(group: string, s: number, ord: number): RecordHeader {
  return {
    kind: RecordKind.data,
    group,
    seq: seq(s),
    writeTimeUs: timeUs(100),
    hostTimeUs: timeUs(0),
    nodeId: NODE,
    ordinal: ordinal(ord),
    epoch: 1,
    volume: `${group}-vol`,
    offset: byteOffset(0),
    length: 4096,
    markerNo: 0,
  };
}

function marker(group: string, s: number, ord: number, no: number, prev: number): RecordHeader {
  return {
    ...rec(group, s, ord),
    kind: RecordKind.marker,
    volume: '',
    offset: byteOffset(prev),
    length: 0,
    markerNo: no,
  };
}

function feed(a: GroupArrival, ...hs: RecordHeader[]): void {
  for (const h of hs) assert.ok(a.onRecord(h).ok, `record ${h.group}/${h.seq} accepted`);
}

/** Plans and completes one cycle; returns the new state and each group's plan. */
function run(state: ApplyState, arrivals: readonly ArrivalView[], limits: PlanLimits) {
  const r = planCycle(state, arrivals, limits);
  if (r.kind !== 'cycle') return { state, r, plans: undefined };
  return { state: completeCycle(r.state, r.plan), r, plans: r.plan.groups };
}

test('a group stops at its marker, the others catch up to theirs, then a release lets both go on', () => {
  const a = new GroupArrival('A');
  const b = new GroupArrival('B');
  // The source froze after A1 (o1) and B1 (o2), put marker 1 into A (o3) and B (o4), thawed: A2 (o5).
  feed(a, rec('A', 1, 1), marker('A', 2, 3, 1, 0), rec('A', 3, 5));
  feed(b, rec('B', 1, 2));
  assert.ok(b.onTick(seq(1), { writeTimeUs: timeUs(100), nodeId: NODE, ordinal: ordinal(2) }).ok);
  let s = initialApplyState(['A', 'B']);
  let step = run(s, [a, b], { markersReleased: 0 });
  s = step.state;
  assert.deepEqual(
    step.plans!.map((p) => [p.stop, Number(p.seqLast)]),
    [
      ['marker', 2],
      ['end-of-prefix', 1],
    ],
    'A reaches its marker (taking a marker changes no volume); B has nothing more',
  );
  assert.deepEqual(waitingAtMarker(s, 0), new Map([['A', 1]]));
  // B's marker arrives: B reaches it too; B3, after it, is not applied.
  feed(b, marker('B', 2, 4, 1, 0), rec('B', 3, 6));
  step = run(s, [a, b], { markersReleased: 0 });
  s = step.state;
  assert.deepEqual(
    step.plans!.map((p) => [p.stop, Number(p.seqLast)]),
    [
      ['marker', 2],
      ['marker', 2],
    ],
    'A waits; B stops with its marker applied',
  );
  assert.deepEqual(
    waitingAtMarker(s, 0),
    new Map([
      ['A', 1],
      ['B', 1],
    ]),
  );
  // While they wait, nothing moves however far the records go; and no cycle is planned although
  // the cut moved: an empty cycle per arrival would keep the driver from ever going idle, and the
  // snapshot at the marker is taken when it does.
  feed(a, rec('A', 4, 7));
  feed(b, rec('B', 4, 8));
  step = run(s, [a, b], { markersReleased: 0 });
  s = step.state;
  assert.equal(step.r.kind, 'idle', 'every group waits: nothing to apply, no cycle');
  assert.deepEqual([...s.seqApplied.values()], [2, 2]);
  // Released: both go on, although the cut may not move (it already passed their records).
  step = run(s, [a, b], { markersReleased: 1 });
  assert.equal(step.r.kind, 'cycle', 'a release makes a cycle even when the cut did not move');
  assert.deepEqual(
    step.plans!.map((p) => Number(p.seqLast)),
    [4, 3],
    'A runs to its prefix; B to the cut (A4 at o7 < B4 at o8)',
  );
});

test('a stopping marker is taken even when its key is above the cut', () => {
  const a = new GroupArrival('A');
  const b = new GroupArrival('B');
  // Markers of one freeze: A's at o3, B's at o4. A has nothing after its marker yet: arrived o3.
  feed(a, rec('A', 1, 1), marker('A', 2, 3, 1, 0));
  feed(b, rec('B', 1, 2), marker('B', 2, 4, 1, 0), rec('B', 3, 5));
  const { plans, state } = run(initialApplyState(['A', 'B']), [a, b], { markersReleased: 0 });
  assert.deepEqual(
    plans!.map((p) => [p.stop, Number(p.seqLast)]),
    [
      ['marker', 2],
      ['marker', 2],
    ],
    "B's marker (o4) is above the cut (o3) but is taken: nothing of the source lies between them",
  );
  assert.deepEqual(
    waitingAtMarker(state, 0),
    new Map([
      ['A', 1],
      ['B', 1],
    ]),
  );
  // Without markers stopping, B's marker would wait for the cut like any record.
  const free = run(initialApplyState(['A', 'B']), [a, b], {});
  assert.deepEqual(
    free.plans!.map((p) => Number(p.seqLast)),
    [2, 1],
  );
});

test('a marker that does not follow the last one stops its group as abnormal', () => {
  const a = new GroupArrival('A');
  // Marker 1 (prev 0), then marker 3 naming 2 as its predecessor: marker 2 was lost.
  feed(a, marker('A', 1, 1, 1, 0), rec('A', 2, 2), marker('A', 3, 3, 3, 2), rec('A', 4, 4));
  let s = initialApplyState(['A']);
  let step = run(s, [a], { markersReleased: 0 });
  s = step.state;
  assert.deepEqual([step.plans![0]!.stop, Number(step.plans![0]!.seqLast)], ['marker', 1]);
  step = run(s, [a], { markersReleased: 1 });
  const p = step.plans![0]!;
  assert.equal(p.stop, 'abnormal-marker');
  assert.equal(Number(p.seqLast), 2, 'the record before the bad marker is applied, the marker is not');
  assert.match(p.abnormal!, /marker 3 at seq 3 names marker 2 before it, but the group's last marker was 1/);
  s = step.state;
  step = run(s, [a], { markersReleased: 5 });
  assert.ok(step.plans === undefined || step.plans[0]!.stop === 'abnormal-marker', 'and it stays there');
  assert.equal(Number(step.state.seqApplied.get('A')), 2);
});

test('a group at an abnormal marker still gets its cycle while another waits at its marker', () => {
  const a = new GroupArrival('A');
  const b = new GroupArrival('B');
  // A reaches marker 1; B's first marker names 5 before it (a lost marker): abnormal.
  feed(a, rec('A', 1, 1), marker('A', 2, 3, 1, 0), rec('A', 3, 5));
  feed(b, rec('B', 1, 2), marker('B', 2, 4, 6, 5), rec('B', 3, 6));
  const first = run(initialApplyState(['A', 'B']), [a, b], { markersReleased: 0 });
  assert.deepEqual(
    first.plans!.map((p) => [p.stop, Number(p.seqLast)]),
    [
      ['marker', 2],
      ['abnormal-marker', 1],
    ],
  );
  // Nothing more can move, but the cycle that says why is still planned: the driver reports it.
  feed(a, rec('A', 4, 7));
  feed(b, rec('B', 4, 8));
  const again = planCycle(first.state, [a, b], { markersReleased: 0 });
  assert.equal(again.kind, 'cycle');
  if (again.kind !== 'cycle') return;
  assert.ok(again.plan.groups.every((g) => g.seqLast < g.seqFirst));
  assert.match(again.plan.groups[1]!.abnormal!, /marker 6 at seq 2 names marker 5/);
});

test('a number skipped by a failed cycle is not abnormal; an unknown last marker accepts any', () => {
  const a = new GroupArrival('A');
  // Cycle 2 failed before this source placed its marker: marker 3 names 1, its real predecessor.
  feed(a, marker('A', 1, 1, 1, 0), marker('A', 2, 2, 3, 1));
  let s = initialApplyState(['A']);
  s = run(s, [a], { markersReleased: 0 }).state;
  const step = run(s, [a], { markersReleased: 2 });
  assert.deepEqual([step.plans![0]!.stop, step.plans![0]!.markerReached], ['marker', 3]);
  // After a failback reset the last marker is unknown: the first one is taken as it is.
  const b = new GroupArrival('B');
  feed(b, marker('B', 1, 1, 7, 6));
  const reset: ApplyState = { ...initialApplyState(['B']), markerReached: new Map([['B', undefined]]) };
  const r = run(reset, [b], { markersReleased: 6 });
  assert.deepEqual([r.plans![0]!.stop, r.plans![0]!.markerReached], ['marker', 7]);
  // A marker whose number is not above the one it names is abnormal even then.
  const c = new GroupArrival('C');
  feed(c, marker('C', 1, 1, 4, 4));
  const bad = run({ ...initialApplyState(['C']), markerReached: new Map([['C', undefined]]) }, [c], {
    markersReleased: 0,
  });
  assert.equal(bad.plans?.[0]?.stop ?? 'abnormal-marker', 'abnormal-marker');
});

test('a redo after a crash re-plans the same stop at the marker', () => {
  const a = new GroupArrival('A');
  feed(a, rec('A', 1, 1), marker('A', 2, 2, 1, 0), rec('A', 3, 3));
  const r = planCycle(initialApplyState(['A']), [a], { markersReleased: 0 });
  assert.equal(r.kind, 'cycle');
  if (r.kind !== 'cycle') return;
  // Crash after persisting r.state (cutPlanned): the redo plans exactly the same range.
  const redo = planCycle(r.state, [a], { markersReleased: 0 });
  assert.equal(redo.kind, 'cycle');
  if (redo.kind !== 'cycle') return;
  assert.ok(redo.plan.redo);
  assert.deepEqual(
    redo.plan.groups.map((g) => [g.stop, Number(g.seqLast)]),
    r.plan.groups.map((g) => [g.stop, Number(g.seqLast)]),
  );
});
