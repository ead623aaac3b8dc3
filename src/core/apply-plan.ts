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
  /** Why the range ends: the next record's key is above the cut, or the prefix ends there. */
  readonly stop: 'above-cut' | 'end-of-prefix';
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
  /** The cut equals the completed one: nothing new to apply. */
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
  };
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
  if (!redo && completed !== undefined && compareKeys(cut, completed) === 0) return { kind: 'idle', cut };
  const groups = arrivals.map((a) => planGroup(a, state.seqApplied.get(a.group)!, completed, cut));
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
  for (const g of plan.groups) {
    const before = seqApplied.get(g.group);
    assert(before !== undefined && g.seqFirst === before + 1, `plan of ${g.group} starts after seqApplied`);
    seqApplied.set(g.group, g.seqLast);
  }
  assert(seqApplied.size === state.seqApplied.size, 'the plan covers the set');
  return { cutCompleted: plan.cut, cutPlanned: undefined, seqApplied };
}

function assertSameGroups(state: ApplyState, arrivals: readonly ArrivalView[]): void {
  assert(arrivals.length === state.seqApplied.size, 'one arrival view per group of the set');
  for (const a of arrivals) assert(state.seqApplied.has(a.group), `group ${a.group} belongs to the set`);
}

/** Records of one group after seqApplied with key <= cut, in seq order, up to a gap. */
function planGroup(
  a: ArrivalView,
  seqApplied: Seq,
  cutCompleted: OrderKey | undefined,
  cut: OrderKey,
): GroupPlan {
  assert(a.seqReleased <= seqApplied, `${a.group}: released ${a.seqReleased} beyond applied ${seqApplied}`);
  assert(
    seqApplied <= a.seqContiguous,
    `${a.group}: applied ${seqApplied} past the prefix ${a.seqContiguous}`,
  );
  const apply: HeldRecord[] = [];
  const markers: HeldRecord[] = [];
  let prev: OrderKey | undefined = seqApplied > 0 ? a.heldAt(seqApplied)?.key : undefined;
  let s = seqApplied + 1;
  let stop: GroupPlan['stop'] = 'end-of-prefix';
  for (; s <= a.seqContiguous; s++) {
    const r = a.heldAt(seq(s));
    assert(r !== undefined && r.seq === s, `${a.group}: record ${s} of the prefix is held`);
    assert(prev === undefined || compareKeys(prev, r.key) < 0, `${a.group}: keys increase at seq ${s}`);
    assert(
      cutCompleted === undefined || compareKeys(r.key, cutCompleted) > 0,
      `${a.group}: record ${s} after seqApplied is above the completed cut`,
    );
    if (compareKeys(r.key, cut) > 0) {
      stop = 'above-cut';
      break;
    }
    (r.kind === RecordKind.marker ? markers : apply).push(r);
    prev = r.key;
  }
  return { group: a.group, seqFirst: seq(seqApplied + 1), seqLast: seq(s - 1), apply, markers, stop };
}
