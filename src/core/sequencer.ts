/**
 * The sequencer: gives every record that enters a node's replication stream its order
 * (DESIGN.md §3.1). Pure and synchronous; the write path (src/node/write-path.ts) calls `next`
 * for each record of a batch, appends the batch to the journal, and rolls back with `restore` if
 * the append fails, so sequence numbers are never skipped.
 *
 *   host write --(group, hostTimeUs?, nowUs)--> next() --> { seq, writeTimeUs, hostTimeUs, ordinal }
 *
 * Rules:
 * - `seq` is per group: 1, 2, 3 ... no gaps, never reused.
 * - `ordinal` is node-wide: +1 on every record of every group (the order key's tie-breaker).
 * - the effective write time is the host's time when given, else by mode: `host-last` the latest
 *   host time recorded on this node, `clock` the node's clock, `counter` a node-wide counter + 1.
 *   It is clamped to never decrease on the node; the host's original time is kept beside it.
 * Together, (writeTimeUs, nodeId, ordinal) strictly increases on the node across all its groups.
 */
import { assert } from './assert.js';
import type { NodeId, OrderKey, Ordinal, Seq, TimeUs, WriteTimeMode } from './types.js';
import { ordinal, seq, timeUs } from './types.js';

export interface SequencedFields {
  readonly seq: Seq;
  readonly writeTimeUs: TimeUs;
  readonly hostTimeUs: TimeUs;
  readonly nodeId: NodeId;
  readonly ordinal: Ordinal;
}

export interface SequencerResume {
  readonly lastOrdinal: Ordinal;
  readonly lastWriteTimeUs: TimeUs;
  /** Highest seq ever given per group (0 when none). */
  readonly lastSeq: ReadonlyMap<string, Seq>;
}

export interface SequencerSnapshot {
  readonly lastOrdinal: number;
  readonly lastWriteTimeUs: number;
  readonly lastHostTimeUs: number;
  readonly lastSeq: ReadonlyMap<string, number>;
}

/** Largest integer a write time may take: times are doubles and must stay exact. */
export const WRITE_TIME_US_MAX = Number.MAX_SAFE_INTEGER;

export class Sequencer {
  private lastOrdinal: number;
  private lastWriteTimeUs: number;
  /** Latest host time recorded (host-last mode); starts at the recovered write time. */
  private lastHostTimeUs: number;
  private readonly lastSeq: Map<string, number>;

  constructor(
    readonly nodeId: NodeId,
    readonly mode: WriteTimeMode,
    resume: SequencerResume,
  ) {
    this.lastOrdinal = resume.lastOrdinal;
    this.lastWriteTimeUs = resume.lastWriteTimeUs;
    this.lastHostTimeUs = resume.lastWriteTimeUs;
    this.lastSeq = new Map(resume.lastSeq);
  }

  /**
   * Order the next record of `group`. `hostTimeUs` is the host's write time if the request
   * carried one; `nowUs` is the node's clock (used in `clock` mode only). Records that take no
   * seq (ticks) are not sequenced here.
   */
  next(group: string, hostTimeUs: TimeUs | undefined, nowUs: TimeUs): SequencedFields {
    assert(hostTimeUs === undefined || (Number.isSafeInteger(hostTimeUs) && hostTimeUs >= 0), 'host time');
    const candidate = this.candidateTime(hostTimeUs, nowUs);
    // Clamped to stay an exact integer: a host may send the largest time; ordinals still order.
    const writeTimeUs = Math.min(Math.max(candidate, this.lastWriteTimeUs), WRITE_TIME_US_MAX);
    const s = (this.lastSeq.get(group) ?? 0) + 1;
    const o = this.lastOrdinal + 1;
    assert(Number.isSafeInteger(o) && Number.isSafeInteger(s), 'sequence space exhausted');
    this.lastSeq.set(group, s);
    this.lastOrdinal = o;
    this.lastWriteTimeUs = writeTimeUs;
    if (hostTimeUs !== undefined) this.lastHostTimeUs = Math.max(this.lastHostTimeUs, hostTimeUs);
    return {
      seq: seq(s),
      writeTimeUs: timeUs(writeTimeUs),
      hostTimeUs: timeUs(hostTimeUs ?? 0),
      nodeId: this.nodeId,
      ordinal: ordinal(o),
    };
  }

  private candidateTime(hostTimeUs: TimeUs | undefined, nowUs: TimeUs): number {
    if (hostTimeUs !== undefined) return hostTimeUs;
    switch (this.mode) {
      case 'host-last':
        return this.lastHostTimeUs;
      case 'clock':
        return nowUs;
      case 'counter':
        return this.lastWriteTimeUs + 1;
    }
  }

  /**
   * The key of the latest record sequenced on this node (any group): every record sequenced after
   * this call has a larger key. A tick may carry it only once that record is durable: a crash that
   * loses it lets the restarted sequencer hand out the same key again.
   */
  lastKey(): OrderKey {
    return {
      writeTimeUs: timeUs(this.lastWriteTimeUs),
      nodeId: this.nodeId,
      ordinal: ordinal(this.lastOrdinal),
    };
  }

  /** `group`'s next seq follows `afterSeq` at least (a group whose source moved here: failback). */
  resumeGroup(group: string, afterSeq: Seq): void {
    this.lastSeq.set(group, Math.max(this.lastSeq.get(group) ?? 0, afterSeq));
  }

  seqOf(group: string): Seq {
    return seq(this.lastSeq.get(group) ?? 0);
  }

  /** Capture the state before a batch, to undo it if the journal refuses the batch. */
  snapshot(): SequencerSnapshot {
    return {
      lastOrdinal: this.lastOrdinal,
      lastWriteTimeUs: this.lastWriteTimeUs,
      lastHostTimeUs: this.lastHostTimeUs,
      lastSeq: new Map(this.lastSeq),
    };
  }

  restore(s: SequencerSnapshot): void {
    assert(s.lastOrdinal <= this.lastOrdinal, 'restore moves forward');
    this.lastOrdinal = s.lastOrdinal;
    this.lastWriteTimeUs = s.lastWriteTimeUs;
    this.lastHostTimeUs = s.lastHostTimeUs;
    this.lastSeq.clear();
    for (const [g, v] of s.lastSeq) this.lastSeq.set(g, v);
  }
}
