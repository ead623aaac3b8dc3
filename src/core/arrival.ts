/**
 * Arrival tracking at the target, one instance per group (DESIGN.md §3.3; patent fig 8, para [0036]).
 *
 * Owns: which sequence numbers of the group the target holds, the contiguous prefix of them
 * (`seqContiguous`), bounded knowledge of records past a gap, ticks waiting for a gap to fill, and
 * the **arrived key**: the largest order key within the contiguous prefix, raised by ticks. Records
 * past a gap never count: a missing record is never skipped (para [0044]).
 *
 * Called by the link receiver's driver, read by the apply planner (apply-plan.ts):
 *
 *   frame(record) --> check(h)  --new--> journal append --durable--> onRecord(h)
 *                               --duplicate/stale--> re-acknowledge, journal nothing
 *                               --error--> refuse (count, log; back-pressure: the source resends)
 *   frame(tick)   --> onTick(afterSeq, key)
 *   planner       --> seqContiguous, keyArrived, heldAt(seq)   (the ArrivalView interface)
 *   cycle durable --> release(seqApplied)                      (forget applied records)
 *   restart       --> new GroupArrival(group, limits, { seqReleased, keyReleased }),
 *                     then onRecord for every record still in the target journal
 *
 * Ordering contract: `onRecord` is called only once the record is durable in the target journal,
 * so the arrived key never counts a record that a crash could lose (a redo must reach the cut).
 * Ticks are not journalled; the planner does not need them after a restart (see apply-plan.ts).
 *
 * Tick meaning, as this module reads it: tick(s, K) = "every record of this group after seq s has
 * a key strictly greater than K". The source builds K from its latest order key (any group), whose
 * successors all have a larger node-wide ordinal, so this holds. The cut applies keys <= T, so a
 * tick must exclude K itself, not only keys below it.
 *
 * Peer input never throws: a conflicting duplicate, keys out of order, or a contradicting tick is
 * a typed error, and the state is unchanged. Asserts guard only this module's own invariants.
 */
import { assert } from './assert.js';
import type { OrderKey, RecordHeader, Seq } from './types.js';
import { compareKeys, keyOf, markerPrev, RecordKind, seq } from './types.js';

/** Records held in memory between the last released seq and the newest arrival, per group. */
export const ARRIVAL_RECORDS_HELD_MAX = 65_536;
/** Records past a gap buffered per group; more get back-pressure instead of memory. */
export const ARRIVAL_RECORDS_PAST_GAP_MAX = 4_096;
/** Ticks waiting for a gap to fill, per group; more are refused (the source sends ticks again). */
export const ARRIVAL_TICKS_PENDING_MAX = 16;

export interface ArrivalLimits {
  readonly recordsHeldMax: number;
  readonly recordsPastGapMax: number;
  readonly ticksPendingMax: number;
}

export const ARRIVAL_LIMITS_DEFAULT: ArrivalLimits = {
  recordsHeldMax: ARRIVAL_RECORDS_HELD_MAX,
  recordsPastGapMax: ARRIVAL_RECORDS_PAST_GAP_MAX,
  ticksPendingMax: ARRIVAL_TICKS_PENDING_MAX,
};

/** What the target keeps in memory about one record: enough to plan, not the payload. */
export interface HeldRecord {
  readonly seq: Seq;
  readonly key: OrderKey;
  readonly kind: RecordKind;
  readonly markerNo: number;
  /** For a marker: the number of the marker before it in the group (0 if none); else 0. */
  readonly markerPrev: number;
}

/** What the apply planner reads from a group's arrival state. */
export interface ArrivalView {
  readonly group: string;
  /** Highest seq released after apply (0 if none); records up to it are no longer held. */
  readonly seqReleased: Seq;
  /** Highest seq s such that every record 1..s has arrived (held or released). */
  readonly seqContiguous: Seq;
  /** Largest key known complete: no record of the group with a key <= it is missing. */
  readonly keyArrived: OrderKey | undefined;
  /** A held record (seqReleased < seq), or undefined. */
  heldAt(s: Seq): HeldRecord | undefined;
}

export interface ArrivalResume {
  /** Highest seq applied and released before the restart (0 if none). */
  readonly seqReleased: Seq;
  /** Key of the record at `seqReleased` (undefined iff seqReleased is 0). */
  readonly keyReleased: OrderKey | undefined;
}

export type ArrivalErrorKind =
  /** Malformed: seq not a positive integer, or a kind that is not a sequenced record. */
  | 'invalid'
  /** This seq is held with a different key, kind or marker number. */
  | 'conflict'
  /** Keys do not increase with seq, or a record contradicts a tick (or a tick a record). */
  | 'order'
  /** A limit is reached: do not journal or acknowledge; the source sends it again later. */
  | 'backpressure';

export interface ArrivalError {
  readonly kind: ArrivalErrorKind;
  readonly detail: string;
}

/** new: not held before. duplicate: held with the same key. stale: already released. */
export type RecordOutcome = 'new' | 'duplicate' | 'stale';
/** advanced: raised the arrived key. pending: waits for a gap. stale: no effect. */
export type TickOutcome = 'advanced' | 'pending' | 'stale';

export type ArrivalResult<O> =
  { readonly ok: true; readonly outcome: O } | ({ readonly ok: false } & ArrivalError);

interface PendingTick {
  readonly afterSeq: number;
  readonly key: OrderKey;
}

const fail = (kind: ArrivalErrorKind, detail: string): { ok: false } & ArrivalError => ({
  ok: false,
  kind,
  detail,
});

/**
 * Whether `h` is the record `known` stands for (a duplicate, not a conflict): the same key, kind
 * and marker numbers. `known` may be a header or what arrival holds of one.
 */
export function sameRecord(known: RecordHeader | HeldRecord, h: RecordHeader): boolean {
  const knownKey = 'key' in known ? known.key : keyOf(known);
  const knownPrev = 'markerPrev' in known ? known.markerPrev : markerPrev(known);
  return (
    compareKeys(knownKey, keyOf(h)) === 0 &&
    known.kind === h.kind &&
    known.markerNo === h.markerNo &&
    knownPrev === markerPrev(h)
  );
}

const fmt = (k: OrderKey): string => `(${k.writeTimeUs},${k.nodeId},${k.ordinal})`;

const isSequencedKind = (k: RecordKind): boolean =>
  k === RecordKind.data || k === RecordKind.zero || k === RecordKind.copy || k === RecordKind.marker;

const maxKey = (a: OrderKey | undefined, b: OrderKey): OrderKey =>
  a === undefined || compareKeys(a, b) < 0 ? b : a;

export class GroupArrival implements ArrivalView {
  private seqReleasedNow: number;
  private keyReleasedNow: OrderKey | undefined;
  private seqContiguousNow: number;
  /** Key of the record at seqContiguous (held or released). */
  private keyContiguous: OrderKey | undefined;
  private keyArrivedNow: OrderKey | undefined;
  /** Records with seqReleased < seq <= seqContiguous. */
  private readonly held = new Map<number, HeldRecord>();
  /** Records with seq > seqContiguous + 1. */
  private readonly pastGap = new Map<number, HeldRecord>();
  /** Ticks with afterSeq > seqContiguous, waiting for the gap to fill. */
  private pending: PendingTick[] = [];

  constructor(
    readonly group: string,
    readonly limits: ArrivalLimits = ARRIVAL_LIMITS_DEFAULT,
    resume: ArrivalResume = { seqReleased: seq(0), keyReleased: undefined },
  ) {
    assert(Number.isSafeInteger(limits.recordsHeldMax) && limits.recordsHeldMax > 0, 'recordsHeldMax');
    assert(Number.isSafeInteger(limits.recordsPastGapMax) && limits.recordsPastGapMax > 0, 'pastGapMax');
    assert(limits.recordsPastGapMax <= limits.recordsHeldMax, 'past-gap records fit in the held window');
    assert(Number.isSafeInteger(limits.ticksPendingMax) && limits.ticksPendingMax > 0, 'ticksPendingMax');
    assert(Number.isSafeInteger(resume.seqReleased) && resume.seqReleased >= 0, 'resume seq');
    assert((resume.seqReleased === 0) === (resume.keyReleased === undefined), 'resume key iff seq');
    this.seqReleasedNow = resume.seqReleased;
    this.keyReleasedNow = resume.keyReleased;
    this.seqContiguousNow = resume.seqReleased;
    this.keyContiguous = resume.keyReleased;
    this.keyArrivedNow = resume.keyReleased;
  }

  get seqReleased(): Seq {
    return seq(this.seqReleasedNow);
  }
  get keyReleased(): OrderKey | undefined {
    return this.keyReleasedNow;
  }
  get seqContiguous(): Seq {
    return seq(this.seqContiguousNow);
  }
  get keyArrived(): OrderKey | undefined {
    return this.keyArrivedNow;
  }
  /** Highest seq held or released, gaps or not (for status: "arrived" vs "contiguous"). */
  get seqHeldMax(): Seq {
    let m = this.seqContiguousNow;
    for (const s of this.pastGap.keys()) m = Math.max(m, s);
    return seq(m);
  }
  /** Records known past the gap (0 when there is no gap). */
  get recordsPastGap(): number {
    return this.pastGap.size;
  }
  get ticksPending(): number {
    return this.pending.length;
  }

  heldAt(s: Seq): HeldRecord | undefined {
    return this.held.get(s) ?? this.pastGap.get(s);
  }

  /** Classifies a record without changing anything: call before journalling it. */
  check(h: RecordHeader): ArrivalResult<RecordOutcome> {
    const s: number = h.seq;
    if (!Number.isSafeInteger(s) || s < 1) return fail('invalid', `seq ${s} is not a positive integer`);
    if (!isSequencedKind(h.kind)) return fail('invalid', `kind ${h.kind} takes no seq`);
    const key = keyOf(h);
    const known = this.heldAt(h.seq);
    if (known !== undefined) return this.checkDuplicate(known, h);
    if (s <= this.seqContiguousNow) {
      // Released already; only the newest released key is still known.
      if (s === this.seqContiguousNow && compareKeys(key, this.keyContiguous!) !== 0) {
        return fail('conflict', `seq ${s} was released with key ${fmt(this.keyContiguous!)}`);
      }
      return { ok: true, outcome: 'stale' };
    }
    if (s - this.seqReleasedNow > this.limits.recordsHeldMax) {
      return fail('backpressure', `seq ${s} is beyond the window of ${this.limits.recordsHeldMax} records`);
    }
    if (s > this.seqContiguousNow + 1 && this.pastGap.size >= this.limits.recordsPastGapMax) {
      return fail('backpressure', `${this.pastGap.size} records already wait past a gap`);
    }
    return this.checkOrder(s, key);
  }

  /** Records a record that is now durable in the target journal. */
  onRecord(h: RecordHeader): ArrivalResult<RecordOutcome> {
    const checked = this.check(h);
    if (!checked.ok || checked.outcome !== 'new') return checked;
    const rec: HeldRecord = {
      seq: h.seq,
      key: keyOf(h),
      kind: h.kind,
      markerNo: h.markerNo,
      markerPrev: markerPrev(h),
    };
    if (h.seq === this.seqContiguousNow + 1) {
      this.held.set(h.seq, rec);
      this.extendContiguous(rec);
    } else {
      this.pastGap.set(h.seq, rec);
    }
    this.assertInvariants();
    return checked;
  }

  /**
   * A tick: every record after `afterSeq` has a key greater than `key`. Raises the arrived key
   * when afterSeq is the end of the contiguous prefix; waits when it lies past a gap.
   */
  onTick(afterSeq: Seq, key: OrderKey): ArrivalResult<TickOutcome> {
    const s: number = afterSeq;
    if (!Number.isSafeInteger(s) || s < 0) return fail('invalid', `tick seq ${s} is not an integer >= 0`);
    const contradiction = this.tickContradiction(s, key);
    if (contradiction !== undefined) return fail('order', contradiction);
    if (s < this.seqContiguousNow) return { ok: true, outcome: 'stale' };
    if (s === this.seqContiguousNow) {
      if (this.keyArrivedNow !== undefined && compareKeys(key, this.keyArrivedNow) <= 0) {
        return { ok: true, outcome: 'stale' };
      }
      this.keyArrivedNow = key;
      return { ok: true, outcome: 'advanced' };
    }
    const same = this.pending.findIndex((t) => t.afterSeq === s);
    if (same >= 0) {
      const t = this.pending[same]!;
      this.pending[same] = { afterSeq: s, key: maxKey(t.key, key) };
      return { ok: true, outcome: 'pending' };
    }
    if (this.pending.length >= this.limits.ticksPendingMax) {
      return fail('backpressure', `${this.pending.length} ticks already wait past a gap`);
    }
    this.pending.push({ afterSeq: s, key });
    return { ok: true, outcome: 'pending' };
  }

  /** Forgets records up to `seqUpTo` once they are applied and the volumes durable. */
  release(seqUpTo: Seq): void {
    assert(seqUpTo >= this.seqReleasedNow, `release ${seqUpTo} below ${this.seqReleasedNow}`);
    assert(seqUpTo <= this.seqContiguousNow, `release ${seqUpTo} past contiguous ${this.seqContiguousNow}`);
    if (seqUpTo === this.seqReleasedNow) return;
    const last = this.held.get(seqUpTo);
    assert(last !== undefined, `record ${seqUpTo} is held`);
    for (let s = this.seqReleasedNow + 1; s <= seqUpTo; s++) this.held.delete(s);
    this.seqReleasedNow = seqUpTo;
    this.keyReleasedNow = last.key;
    this.assertInvariants();
  }

  private checkDuplicate(known: HeldRecord, h: RecordHeader): ArrivalResult<RecordOutcome> {
    if (sameRecord(known, h)) return { ok: true, outcome: 'duplicate' };
    return fail('conflict', `seq ${h.seq} is held with key ${fmt(known.key)} kind ${known.kind}`);
  }

  /** Keys must increase with seq, exceed the arrived key, and respect every waiting tick. */
  private checkOrder(s: number, key: OrderKey): ArrivalResult<RecordOutcome> {
    if (this.keyArrivedNow !== undefined && compareKeys(key, this.keyArrivedNow) <= 0) {
      return fail(
        'order',
        `seq ${s} key ${fmt(key)} is not above the arrived key ${fmt(this.keyArrivedNow)}`,
      );
    }
    const before = this.pastGap.get(s - 1);
    if (before !== undefined && compareKeys(before.key, key) >= 0) {
      return fail('order', `seq ${s} key ${fmt(key)} is not above seq ${s - 1} key ${fmt(before.key)}`);
    }
    const after = this.pastGap.get(s + 1);
    if (after !== undefined && compareKeys(key, after.key) >= 0) {
      return fail('order', `seq ${s} key ${fmt(key)} is not below seq ${s + 1} key ${fmt(after.key)}`);
    }
    for (const t of this.pending) {
      if (t.afterSeq < s && compareKeys(key, t.key) <= 0) {
        return fail('order', `seq ${s} key ${fmt(key)} contradicts tick (${t.afterSeq}, ${fmt(t.key)})`);
      }
    }
    return { ok: true, outcome: 'new' };
  }

  /** Why tick (s, key) cannot be true given what is held, or undefined if it can. */
  private tickContradiction(s: number, key: OrderKey): string | undefined {
    if (s < this.seqContiguousNow) {
      // The record at s+1 is held or released; either way seqContiguous's key is not below it.
      const next = this.held.get(s + 1)?.key ?? this.keyContiguous!;
      if (compareKeys(key, next) >= 0)
        return `tick (${s}, ${fmt(key)}) is not below a later record ${fmt(next)}`;
    }
    for (const r of this.pastGap.values()) {
      if (r.seq > s && compareKeys(r.key, key) <= 0) {
        return `tick (${s}, ${fmt(key)}) is not below seq ${r.seq} key ${fmt(r.key)}`;
      }
    }
    return undefined;
  }

  /** Pulls records from past the gap into the prefix, then applies ticks the prefix reached. */
  private extendContiguous(first: HeldRecord): void {
    let last = first;
    for (;;) {
      const next = this.pastGap.get(last.seq + 1);
      if (next === undefined) break;
      this.pastGap.delete(next.seq);
      this.held.set(next.seq, next);
      last = next;
    }
    this.seqContiguousNow = last.seq;
    this.keyContiguous = last.key;
    this.keyArrivedNow = maxKey(this.keyArrivedNow, last.key);
    const waiting: PendingTick[] = [];
    for (const t of this.pending) {
      if (t.afterSeq > this.seqContiguousNow) waiting.push(t);
      else if (t.afterSeq === this.seqContiguousNow) this.keyArrivedNow = maxKey(this.keyArrivedNow, t.key);
      // afterSeq below: the records after it already carry larger keys (checked on arrival).
    }
    this.pending = waiting;
  }

  private assertInvariants(): void {
    assert(this.seqReleasedNow <= this.seqContiguousNow, 'released within the contiguous prefix');
    assert(this.held.size === this.seqContiguousNow - this.seqReleasedNow, 'prefix held without holes');
    assert(!this.pastGap.has(this.seqContiguousNow + 1), 'the record after the prefix is missing');
    assert(this.pastGap.size <= this.limits.recordsPastGapMax, 'past-gap bound');
    assert(
      this.keyArrivedNow === undefined ||
        this.keyContiguous === undefined ||
        compareKeys(this.keyContiguous, this.keyArrivedNow) <= 0,
      'arrived key covers the prefix',
    );
  }
}
