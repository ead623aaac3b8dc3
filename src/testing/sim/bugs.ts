/**
 * Planted bugs on the target's planning path (test the tester: the checkers must catch each).
 * They wrap the real core (src/core/apply-plan.ts, arrival.ts) and never change it.
 *
 * - apply-past-gap: GapBlindView shows the planner every record held past a gap as if the prefix
 *   were contiguous; the missing records appear as markers (never written to a volume), keyed
 *   between their neighbours. What para [0036] and DESIGN.md §3.3 forbid.
 * - no-tiebreak: after the real plan, each group goes on through every held record whose write
 *   time is not above the cut's: "apply every record with time <= T", the comparison without the
 *   tie-breaker that DESIGN.md §3.1 warns about.
 * - resync-skip-chunk: the resync's next() passes over the last dirty chunk of each volume.
 * The other planted bugs are switches: release-before-durable, fua-before-sync,
 * tick-from-last-key, resync-clear-on-copy and suspend-ack-before-bit in source.ts,
 * cut-not-persisted and checkpoint-without-plan in apply.ts, resync-consistent-early in target.ts.
 */
import type { ArrivalView, GroupArrival, HeldRecord } from '../../core/arrival.js';
import type { ApplyState, CyclePlan, GroupPlan, PlanLimits, PlanResult } from '../../core/apply-plan.js';
import { planCycle } from '../../core/apply-plan.js';
import type { ResyncChunk, ResyncTracker } from '../../core/resync.js';
import type { OrderKey, Seq } from '../../core/types.js';
import { compareKeys, ordinal, RecordKind, seq, timeUs } from '../../core/types.js';
import type { BugName } from './config.js';

/** Plans a cycle of a set, with the planted planning bug if one is on. */
export function planWithBug(
  bug: BugName | undefined,
  state: ApplyState,
  arrivals: readonly GroupArrival[],
  limits: PlanLimits,
): PlanResult {
  if (bug === 'apply-past-gap') {
    return planCycle(
      state,
      arrivals.map((a) => new GapBlindView(a)),
      limits,
    );
  }
  const r = planCycle(state, arrivals, limits);
  if (bug === 'no-tiebreak' && r.kind === 'cycle') return { ...r, plan: extendToWriteTime(r.plan, arrivals) };
  return r;
}

/** How far a group's records may be released once `seqApplied` is applied. */
export function releasableSeq(bug: BugName | undefined, arrival: GroupArrival, seqApplied: Seq): Seq {
  // With apply-past-gap, seqApplied may lie past records that never arrived.
  return bug === 'apply-past-gap' ? seq(Math.min(seqApplied, arrival.seqContiguous)) : seqApplied;
}

/** The resync's next chunk, with the planted bug resync-skip-chunk if it is on. */
export function nextChunkWithBug(bug: BugName | undefined, tracker: ResyncTracker): ResyncChunk | undefined {
  const c = tracker.next();
  if (bug !== 'resync-skip-chunk' || c === undefined) return c;
  const bm = tracker.volumes.find((v) => v.volume === c.volume)!.bitmap;
  return bm.nextDirty(c.chunk + 1) < 0 ? tracker.next() : c;
}

class GapBlindView implements ArrivalView {
  constructor(private readonly real: GroupArrival) {}

  get group(): string {
    return this.real.group;
  }
  get seqReleased(): Seq {
    return this.real.seqReleased;
  }
  get seqContiguous(): Seq {
    return this.real.seqHeldMax;
  }
  get keyArrived(): OrderKey | undefined {
    const top = this.real.heldAt(this.real.seqHeldMax)?.key;
    const arrived = this.real.keyArrived;
    if (top === undefined) return arrived;
    return arrived === undefined || compareKeys(top, arrived) > 0 ? top : arrived;
  }

  heldAt(s: Seq): HeldRecord | undefined {
    const held = this.real.heldAt(s);
    if (held !== undefined || s <= this.real.seqReleased || s > this.real.seqHeldMax) return held;
    let p = s - 1;
    while (p > this.real.seqReleased && this.real.heldAt(seq(p)) === undefined) p--;
    let n = s + 1;
    while (this.real.heldAt(seq(n)) === undefined) n++;
    const next = this.real.heldAt(seq(n))!.key;
    const prev = (p > this.real.seqReleased ? this.real.heldAt(seq(p))!.key : this.real.keyReleased) ?? {
      ...next,
      writeTimeUs: timeUs(0),
      ordinal: ordinal(0),
    };
    const span = prev.writeTimeUs === next.writeTimeUs ? next.ordinal - prev.ordinal : 1;
    const key = { ...prev, ordinal: ordinal(prev.ordinal + (span * (s - p)) / (n - p)) };
    return { seq: s, key, kind: RecordKind.marker, markerNo: 0, markerPrev: 0 };
  }
}

function extendToWriteTime(plan: CyclePlan, arrivals: readonly ArrivalView[]): CyclePlan {
  const groups = plan.groups.map((g, i): GroupPlan => {
    const a = arrivals[i]!;
    if (g.stop !== 'above-cut') return g;
    const apply = [...g.apply];
    const markers = [...g.markers];
    let s = g.seqLast + 1;
    for (; s <= a.seqContiguous; s++) {
      const r = a.heldAt(seq(s))!;
      if (r.key.writeTimeUs > plan.cut.writeTimeUs) break;
      (r.kind === RecordKind.marker ? markers : apply).push(r);
    }
    const stop = s > a.seqContiguous ? 'end-of-prefix' : 'above-cut';
    return { ...g, apply, markers, seqLast: seq(s - 1), stop };
  });
  return { ...plan, groups };
}
