/**
 * Apply planning for one consistency set at the target (DESIGN.md §3.3; patent fig 9, paras
 * [0040], [0044], [0046]): the cut, and per group the records a cycle applies.
 *
 * Owns: the set's apply state (last completed cut, the cut being applied, per group the last seq
 * applied) and the pure functions that move it. The apply coordinator (a driver in the I/O layer)
 * calls them; each group's GroupArrival (arrival.ts) is read through ArrivalView.
 *
 *   planCycle(state, arrivals) --cycle--> persist result.state (the cut in progress) durably
 *                                         --> applier: per group, plan.apply in seq order (groups
 *                                             in parallel), skipping nothing; markers are never
 *                                             written to a volume, a later layer may stop at them
 *                                         --> volumes durable --> completeCycle(state, plan)
 *                                         --> persist; arrival.release(seqApplied of the group)
 *                              --no-cut / idle--> nothing to do yet
 *
 * Rules:
 * - The cut T = min over the set's groups of the group's arrived key. A group that has never
 *   received anything (no record, no tick) has no arrived key and holds the whole set at "no cut":
 *   nothing is known about what it may still receive. An empty idle group is advanced only by a
 *   tick from its source. Once a cut has completed, it is a floor for every group's arrived key:
 *   every record with a key <= it was held and applied, so nothing at or below it can follow the
 *   group's seqApplied. This keeps a restart (ticks are not journalled) from stalling or going back.
 * - Per group the plan takes every record after seqApplied with key <= T, in seq order, and stops at
 *   the first with key > T or at the end of the contiguous prefix: never past a gap, never skipping.
 *   Keys increase with seq within a group (asserted here), and arrival refuses a record past the
 *   prefix whose key is not above the arrived key, so nothing after the stop can be <= T.
 * - Cuts are monotonic: a new cut is never below the last completed one (asserted).
 * - Crash-safe redo: the plan is a pure function of (state, arrivals). The driver persists the
 *   returned state (with `cutPlanned`) before applying; after a crash it rebuilds the arrivals from
 *   its journal and calls planCycle again, which re-plans exactly that cut. Re-applying a record is
 *   idempotent, so the volumes reach the state at T. The cut must be pinned: recomputing it could
 *   give a lower one (ticks are lost), and re-applying cannot undo records applied beyond it.
 *
 * Markers (DESIGN.md §3.4; patent figs 19, 20), when the caller passes `markersReleased`: a group
 * stops at the first marker numbered above it, the marker included (it is never written to a
 * volume), and plans nothing more until the caller releases that number. The set's groups thus
 * line up at marker n, where the caller takes its snapshot. A marker names the marker before it
 * in its group (`markerPrev`); one whose predecessor is not the group's last marker stops the group
 * before it, as an abnormal state (a marker lost or out of place), and the group goes no further.
 * - A stopping marker is taken whatever its key: it writes nothing, so the image does not change,
 *   and a group must reach its marker n even when another group's marker n holds the cut below
 *   it (the markers of one freeze follow each other in the source's order).
 * - The image stays a cut of the source while some groups wait at n and others catch up: every
 *   group of a set here comes from one source node, which appends the markers of one freeze to all
 *   its groups in one step while host writes wait, so every data record before marker n in any
 *   group has a key below every marker n, and every record after it a key above.
 * - While a group waits at a marker, the set's cut may pass keys of records after its marker;
 *   they are applied once it is released. So with markers the cut is a bound, not an exact image
 *   boundary, and the rule "every record after seqApplied is above the completed cut" holds only
 *   for groups that did not wait.
 */
import { assert } from './assert.js';
import type { ArrivalView, HeldRecord } from './arrival.js';
import type { OrderKey, Seq } from './types.js';
import { compareKeys, RecordKind, seq } from './types.js';

export interface ApplyState {
  /** The last cut whose cycle completed (volumes durable), or undefined before the first. */
  readonly cutCompleted: OrderKey | undefined;
  /** The cut of the cycle in progress, persisted before applying; undefined between cycles. */
  readonly cutPlanned: OrderKey | undefined;
  /** Per group of the set: the last seq applied by completed cycles (0 if none). */
  readonly seqApplied: ReadonlyMap<string, Seq>;
  /**
   * Per group: the number of the last marker within its applied records (0 if none; undefined when
   * not known, after a failback reset: the next marker is then taken whatever it names before it).
   */
  readonly markerReached: ReadonlyMap<string, number | undefined>;
}

export interface GroupPlan {
  readonly group: string;
  /** First seq the cycle reaches: the group's seqApplied + 1. */
  readonly seqFirst: Seq;
  /** Last seq the cycle reaches (markers included); seqFirst - 1 when it reaches none. */
  readonly seqLast: Seq;
  /** Records to write to the volumes (data, zero, copy), in seq order. */
  readonly apply: readonly HeldRecord[];
  /** Marker records in the range: never written to a volume. */
  readonly markers: readonly HeldRecord[];
  /**
   * Why the range ends: the next record's key is above the cut; the prefix ends there; the range
   * ends with (or the group already waits at) a marker above `markersReleased`; or the next record
   * is a marker that does not follow the group's last one (`abnormal` says how).
   */
  readonly stop: 'above-cut' | 'end-of-prefix' | 'marker' | 'abnormal-marker';
  /** The group's last marker number once the range is applied (see ApplyState.markerReached). */
  readonly markerReached: number | undefined;
  readonly abnormal?: string;
}

export interface CyclePlan {
  readonly cut: OrderKey;
  /** True when this re-plans a cut that was already in progress (redo after a crash). */
  readonly redo: boolean;
  readonly groups: readonly GroupPlan[];
}

export type PlanResult =
  /** Some group has no arrived key and no cut completed: wait for a record or a tick. */
  | { readonly kind: 'no-cut'; readonly waitingFor: readonly string[] }
  /**
   * Nothing new to apply: the cut equals the completed one, or (with markers) no group reaches a
   * record and some group waits at a marker. `cut` is the cut computed now, not persisted.
   */
  | { readonly kind: 'idle'; readonly cut: OrderKey }
  /** Persist `state`, apply `plan`, then call completeCycle(state, plan). */
  | { readonly kind: 'cycle'; readonly state: ApplyState; readonly plan: CyclePlan };

export function initialApplyState(groups: readonly string[]): ApplyState {
  assert(new Set(groups).size === groups.length, 'groups of a set are distinct');
  assert(groups.length > 0, 'a consistency set has groups');
  return {
    cutCompleted: undefined,
    cutPlanned: undefined,
    seqApplied: new Map(groups.map((g) => [g, seq(0)])),
    markerReached: new Map(groups.map((g) => [g, 0])),
  };
}

/** Groups that wait at a marker above `released`, with its number. */
export function waitingAtMarker(state: ApplyState, released: number): Map<string, number> {
  const waiting = new Map<string, number>();
  for (const [g, m] of state.markerReached) if (m !== undefined && m > released) waiting.set(g, m);
  return waiting;
}

/**
 * The set's cut: the minimum of every group's arrived key, each floored at the last completed
 * cut. `waitingFor` names the groups that hold the set at "no cut".
 */
export function computeCut(
  state: ApplyState,
  arrivals: readonly ArrivalView[],
): { readonly cut: OrderKey | undefined; readonly waitingFor: readonly string[] } {
  const waitingFor: string[] = [];
  let cut: OrderKey | undefined;
  for (const a of arrivals) {
    const floor = state.cutCompleted;
    const arrived =
      a.keyArrived === undefined || (floor !== undefined && compareKeys(floor, a.keyArrived) > 0)
        ? floor
        : a.keyArrived;
    if (arrived === undefined) waitingFor.push(a.group);
    else if (cut === undefined || compareKeys(arrived, cut) < 0) cut = arrived;
  }
  return waitingFor.length > 0 ? { cut: undefined, waitingFor } : { cut, waitingFor };
}

/** Plans the next cycle, or re-plans the one in progress (see the file comment). */
export function planCycle(
  state: ApplyState,
  arrivals: readonly ArrivalView[],
  limits: PlanLimits = {},
): PlanResult {
  assertSameGroups(state, arrivals);
  const redo = state.cutPlanned !== undefined;
  let cut = state.cutPlanned;
  if (cut === undefined) {
    const computed = computeCut(state, arrivals);
    if (computed.cut === undefined) return { kind: 'no-cut', waitingFor: computed.waitingFor };
    cut = capCut(state, arrivals, computed.cut, limits.recordsPerGroupMax);
  }
  const completed = state.cutCompleted;
  assert(completed === undefined || compareKeys(cut, completed) >= 0, 'cuts never go back');
  const released = limits.markersReleased;
  const same = completed !== undefined && compareKeys(cut, completed) === 0;
  // Without markers nothing after seqApplied lies at or below the completed cut; with them a group
  // released from a marker may hold such records, so a cut that did not move can still apply.
  if (!redo && same && released === undefined) return { kind: 'idle', cut };
  const groups = arrivals.map((a) =>
    planGroup(a, state.seqApplied.get(a.group)!, state.markerReached.get(a.group), completed, cut, released),
  );
  // No group reaches a record and the cut did not move; or some group waits at a marker, where a
  // cycle would only persist a cut that moved: while records keep arriving it moves every time, so
  // the driver would never go idle to see that every group waits at the marker (its snapshot step
  // runs when cycles stop). An abnormal marker still gets its cycle: the driver reports it there.
  const waitsAtMarker =
    released !== undefined && groups.some((g) => g.stop === 'marker') && groups.every((g) => !g.abnormal);
  if (!redo && groups.every((g) => g.seqLast < g.seqFirst) && (same || waitsAtMarker)) {
    return { kind: 'idle', cut };
  }
  return {
    kind: 'cycle',
    state: { ...state, cutPlanned: cut },
    plan: { cut, redo, groups },
  };
}

export interface PlanLimits {
  /**
   * A new cycle reaches at most this many records past a group's seqApplied: the cut is lowered
   * to the key of that record when it is below the computed cut. Any key at or below the computed
   * cut is a valid cut, so cycles stay short (reads of the target wait for a cycle) and the next
   * cycle goes on from there. A redo keeps its planned cut.
   */
  readonly recordsPerGroupMax?: number;
  /**
   * Markers numbered up to this one are passed; a group stops at the first above it (see the file
   * comment). Undefined: markers never stop a group.
   */
  readonly markersReleased?: number;
}

function capCut(
  state: ApplyState,
  arrivals: readonly ArrivalView[],
  cut: OrderKey,
  recordsPerGroupMax: number | undefined,
): OrderKey {
  if (recordsPerGroupMax === undefined) return cut;
  assert(Number.isSafeInteger(recordsPerGroupMax) && recordsPerGroupMax > 0, 'recordsPerGroupMax');
  let capped = cut;
  for (const a of arrivals) {
    const s = seq(state.seqApplied.get(a.group)! + recordsPerGroupMax);
    if (s > a.seqContiguous) continue;
    const h = a.heldAt(s);
    if (h === undefined || compareKeys(h.key, capped) >= 0) continue;
    // Records at or below the completed cut were applied already, so h lies above it.
    if (state.cutCompleted !== undefined && compareKeys(h.key, state.cutCompleted) <= 0) continue;
    capped = h.key;
  }
  return capped;
}

/** The state once every record of `plan` is applied and the volumes are durable. */
export function completeCycle(state: ApplyState, plan: CyclePlan): ApplyState {
  assert(state.cutPlanned !== undefined, 'a cycle is in progress');
  assert(compareKeys(state.cutPlanned, plan.cut) === 0, 'completing the cycle that was planned');
  const seqApplied = new Map(state.seqApplied);
  const markerReached = new Map(state.markerReached);
  for (const g of plan.groups) {
    const before = seqApplied.get(g.group);
    assert(before !== undefined && g.seqFirst === before + 1, `plan of ${g.group} starts after seqApplied`);
    seqApplied.set(g.group, g.seqLast);
    markerReached.set(g.group, g.markerReached);
  }
  assert(seqApplied.size === state.seqApplied.size, 'the plan covers the set');
  return { cutCompleted: plan.cut, cutPlanned: undefined, seqApplied, markerReached };
}

function assertSameGroups(state: ApplyState, arrivals: readonly ArrivalView[]): void {
  assert(arrivals.length === state.seqApplied.size, 'one arrival view per group of the set');
  for (const a of arrivals) assert(state.seqApplied.has(a.group), `group ${a.group} belongs to the set`);
}

/**
 * Records of one group after seqApplied with key <= cut, in seq order, up to a gap; with
 * `released` defined, up to and including the first marker numbered above it.
 */
function planGroup(
  a: ArrivalView,
  seqApplied: Seq,
  markerBefore: number | undefined,
  cutCompleted: OrderKey | undefined,
  cut: OrderKey,
  released: number | undefined,
): GroupPlan {
  assert(a.seqReleased <= seqApplied, `${a.group}: released ${a.seqReleased} beyond applied ${seqApplied}`);
  assert(
    seqApplied <= a.seqContiguous,
    `${a.group}: applied ${seqApplied} past the prefix ${a.seqContiguous}`,
  );
  const apply: HeldRecord[] = [];
  const markers: HeldRecord[] = [];
  let markerReached = markerBefore;
  const result = (stop: GroupPlan['stop'], last: number, abnormal?: string): GroupPlan => ({
    group: a.group,
    seqFirst: seq(seqApplied + 1),
    seqLast: seq(last),
    apply,
    markers,
    stop,
    markerReached,
    ...(abnormal === undefined ? {} : { abnormal }),
  });
  if (released !== undefined && markerBefore !== undefined && markerBefore > released) {
    return result('marker', seqApplied);
  }
  let prev: OrderKey | undefined = seqApplied > 0 ? a.heldAt(seqApplied)?.key : undefined;
  for (let s = seqApplied + 1; s <= a.seqContiguous; s++) {
    const r = a.heldAt(seq(s));
    assert(r !== undefined && r.seq === s, `${a.group}: record ${s} of the prefix is held`);
    assert(prev === undefined || compareKeys(prev, r.key) < 0, `${a.group}: keys increase at seq ${s}`);
    assert(
      released !== undefined || cutCompleted === undefined || compareKeys(r.key, cutCompleted) > 0,
      `${a.group}: record ${s} after seqApplied is above the completed cut`,
    );
    const stopsHere = released !== undefined && r.kind === RecordKind.marker && r.markerNo > released;
    if (!stopsHere && compareKeys(r.key, cut) > 0) return result('above-cut', s - 1);
    if (r.kind === RecordKind.marker) {
      if (released !== undefined && !markerFollows(r, markerReached)) {
        return result(
          'abnormal-marker',
          s - 1,
          `${a.group}: marker ${r.markerNo} at seq ${s} names marker ${r.markerPrev} before it, ` +
            `but the group's last marker was ${markerReached}`,
        );
      }
      markers.push(r);
      markerReached = r.markerNo;
      if (stopsHere) return result('marker', s);
    } else {
      apply.push(r);
    }
    prev = r.key;
  }
  return result('end-of-prefix', a.seqContiguous);
}

/** A marker follows the group's last one: it names it, and its number is higher. */
function markerFollows(r: HeldRecord, last: number | undefined): boolean {
  if (r.markerNo <= r.markerPrev) return false;
  return last === undefined || r.markerPrev === last;
}
