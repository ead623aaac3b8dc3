/**
 * The target side of one group's transfer (DESIGN.md §3.2, §3.3; patent fig 6 steps 1101-1105):
 * which records of a RECORDS batch to journal, which are duplicates, what to report durable, and
 * when a peer breaks the rules.
 *
 * Owns, per group: the epoch, the last seq and key appended to the target's journal, and the last
 * seq known durable there. The driver journals what `accept` says, syncs, then calls `onDurable`
 * and reports `seqDurable` in an ACK. GroupArrival (arrival.ts) is fed after durability.
 *
 *   RECORDS(epoch, headers) --> accept() --append [i, j)--> journal.append --sync--> onDurable(seq)
 *                                        --stale-epoch--> reply EPOCH, journal nothing
 *                                        --error--> drop the session, journal nothing
 *   session up              --> resumeSeq()  (RESUME: one past the durable prefix)
 *
 * Rules: records of a batch belong to the group; seqs only continue the appended prefix (a seq at
 * or below it is a duplicate, skipped; one past seqAppended + 1 is a gap, refused: the source
 * resends after RESUME); keys strictly increase with seq; no record's epoch is above the frame's;
 * a frame whose epoch is below this node's epoch for the group comes from a fenced source.
 * Nothing in a refused batch is journalled (all or nothing, so the prefix never has a hole).
 */
import type { OrderKey, RecordHeader, Seq } from './types.js';
import { compareKeys, keyOf, RecordKind, seq } from './types.js';

export interface ReceiverResume {
  readonly epoch: number;
  /** Last seq in the target journal for the group (durable: it was recovered or resumed). */
  readonly seqLast: Seq;
  /** Key of the record at seqLast, undefined when seqLast is 0 or the record is released. */
  readonly keyLast: OrderKey | undefined;
}

export type AcceptResult =
  | {
      readonly kind: 'append';
      /** Index of the first record to journal; every record from it on is journalled. */
      readonly from: number;
      readonly duplicates: number;
    }
  | { readonly kind: 'duplicates'; readonly duplicates: number }
  | { readonly kind: 'stale-epoch'; readonly epoch: number }
  | { readonly kind: 'error'; readonly detail: string };

const isSequenced = (k: RecordKind): boolean =>
  k === RecordKind.data || k === RecordKind.zero || k === RecordKind.copy || k === RecordKind.marker;

export class GroupReceiver {
  private epochNow: number;
  private seqAppendedNow: number;
  private keyAppended: OrderKey | undefined;
  private seqDurableNow: number;

  constructor(
    readonly group: string,
    resume: ReceiverResume,
  ) {
    this.epochNow = resume.epoch;
    this.seqAppendedNow = resume.seqLast;
    this.seqDurableNow = resume.seqLast;
    this.keyAppended = resume.keyLast;
  }

  get epoch(): number {
    return this.epochNow;
  }
  get seqAppended(): Seq {
    return seq(this.seqAppendedNow);
  }
  get seqDurable(): Seq {
    return seq(this.seqDurableNow);
  }
  /** The seq the source should send next (RESUME). */
  resumeSeq(): Seq {
    return seq(this.seqDurableNow + 1);
  }

  /** Raises the epoch (takeover at this node); frames of lower epochs are refused from now on. */
  setEpoch(epoch: number): void {
    if (epoch > this.epochNow) this.epochNow = epoch;
  }

  /**
   * Classifies a batch. On 'append', the caller must journal records[from..] in order and then
   * call appended(); nothing is changed here until then.
   */
  accept(frameEpoch: number, headers: readonly RecordHeader[]): AcceptResult {
    if (frameEpoch < this.epochNow) return { kind: 'stale-epoch', epoch: this.epochNow };
    let from = -1;
    let prevSeq = this.seqAppendedNow;
    let prevKey = this.keyAppended;
    let duplicates = 0;
    for (let i = 0; i < headers.length; i++) {
      const h = headers[i]!;
      if (h.group !== this.group) return err(`record of group ${h.group} in a frame of ${this.group}`);
      if (!isSequenced(h.kind)) return err(`record kind ${h.kind} takes no seq`);
      if (h.epoch > frameEpoch) return err(`record epoch ${h.epoch} above the frame's ${frameEpoch}`);
      if (from < 0 && h.seq <= this.seqAppendedNow) {
        duplicates++;
        continue;
      }
      if (h.seq !== prevSeq + 1) return err(`seq ${h.seq} does not follow ${prevSeq} (a gap)`);
      const key = keyOf(h);
      if (prevKey !== undefined && compareKeys(key, prevKey) <= 0) {
        return err(`seq ${h.seq}: its order key does not increase`);
      }
      if (from < 0) from = i;
      prevSeq = h.seq;
      prevKey = key;
    }
    if (from < 0) return { kind: 'duplicates', duplicates };
    return { kind: 'append', from, duplicates };
  }

  /** The records accepted last were journalled (not yet durable). */
  appended(last: RecordHeader): void {
    this.seqAppendedNow = last.seq;
    this.keyAppended = keyOf(last);
  }

  /** The journal is durable up to `s` (after a sync that began once `s` was appended). */
  onDurable(s: Seq): void {
    if (s > this.seqDurableNow && s <= this.seqAppendedNow) this.seqDurableNow = s;
  }
}

function err(detail: string): AcceptResult {
  return { kind: 'error', detail };
}
