/**
 * The source side of one group's transfer over one link session (DESIGN.md §3.2, §3.5 push; patent
 * fig 6): what to send next, how much may be in flight, what the target's reports allow the source
 * to release, and when to tick.
 *
 * Owns, per group: the session state, the seq the target reported durable (`seqAcked`), the seq
 * sent in this session (`seqSent`), the bytes in flight, the epoch. Reads the journal's
 * `seqReleased` / `seqLast` as arguments; never touches the journal itself.
 *
 *   session up      --> connected()                        state 'resuming'
 *   RESUME(nextSeq) --> onResume(nextSeq, journal)         'streaming' from nextSeq, or an error
 *   pump            --> want(journal) --range--> read records --> onSent(lastSeq, bytes)
 *   ACK(durableSeq) --> onAck(durableSeq)                  window shrinks; seqAcked may be released
 *   idle            --> tickDue(journal, nowMs)            send TICK(seqLast, node's latest key)
 *   EPOCH(e)        --> onEpoch(e)                         a higher epoch fences the group
 *   session down    --> disconnected()                     unacked records are sent again later
 *
 * Safety contract: the source may release a record only when `seqAcked` covers it, i.e. after the
 * target reported it durable (fig 6 step 1105). `seqAcked` survives disconnects (the report was
 * true when made); only a RESUME moves it back, to what the target says it holds. A report of a
 * seq that was never sent, or a RESUME that asks for released records or for records that were
 * never written, is a peer error: the state is unchanged and the caller drops the session.
 */
import type { Seq } from './types.js';
import { seq } from './types.js';

export interface SenderLimits {
  /** Bytes of records sent and not yet reported durable, at most (one batch may exceed it). */
  readonly windowBytes: number;
  /** Bytes read from the journal for one RECORDS frame, at most (at least one record). */
  readonly batchBytes: number;
  /** An idle group sends a tick this often. */
  readonly tickMs: number;
}

export const SENDER_LIMITS_DEFAULT: SenderLimits = {
  windowBytes: 32 * 1024 * 1024,
  batchBytes: 1024 * 1024,
  tickMs: 100,
};

/** The journal's view of a group, as the sender needs it. */
export interface JournalSpan {
  /** Highest seq released (records up to it are gone). */
  readonly seqReleased: Seq;
  /** Highest seq written. */
  readonly seqLast: Seq;
}

export type SenderState =
  /** No session. */
  | 'down'
  /** Session up, waiting for the target's RESUME. */
  | 'resuming'
  | 'streaming'
  /** The target holds a higher epoch: this node no longer acts as source for the group. */
  | 'fenced';

export type SenderErrorKind =
  /** RESUME asks for records this source already released: only a resync can help. */
  | 'target-behind'
  /** RESUME names records this source never wrote: a different history (split brain?). */
  | 'target-ahead'
  /** An ACK for records not sent in this session, or a frame in the wrong state. */
  | 'protocol';

export type SenderResult =
  { readonly ok: true } | { readonly ok: false; readonly kind: SenderErrorKind; readonly detail: string };

const OK: SenderResult = { ok: true };
const fail = (kind: SenderErrorKind, detail: string): SenderResult => ({ ok: false, kind, detail });

interface InFlight {
  readonly seqLast: number;
  readonly bytes: number;
}

export class GroupSender {
  private stateNow: SenderState = 'down';
  private seqAckedNow: number;
  private seqSentNow: number;
  private bytesInFlightNow = 0;
  private readonly inFlight: InFlight[] = [];
  private lastSendMs = Number.NEGATIVE_INFINITY;
  private epochNow: number;

  constructor(
    readonly group: string,
    readonly limits: SenderLimits,
    /** The seq the target is known to hold durably (persisted release point, or 0). */
    seqAcked: Seq,
    epoch: number,
  ) {
    this.seqAckedNow = seqAcked;
    this.seqSentNow = seqAcked;
    this.epochNow = epoch;
  }

  get state(): SenderState {
    return this.stateNow;
  }
  get seqAcked(): Seq {
    return seq(this.seqAckedNow);
  }
  get seqSent(): Seq {
    return seq(this.seqSentNow);
  }
  get bytesInFlight(): number {
    return this.bytesInFlightNow;
  }
  get epoch(): number {
    return this.epochNow;
  }

  connected(): void {
    if (this.stateNow === 'fenced') return;
    this.stateNow = 'resuming';
    this.clearInFlight();
  }

  disconnected(): void {
    if (this.stateNow === 'fenced') return;
    this.stateNow = 'down';
    this.clearInFlight();
  }

  onResume(nextSeq: number, journal: JournalSpan): SenderResult {
    if (this.stateNow !== 'resuming' && this.stateNow !== 'streaming') {
      return fail('protocol', `RESUME for ${this.group} while ${this.stateNow}`);
    }
    if (!Number.isSafeInteger(nextSeq) || nextSeq < 1) return fail('protocol', `RESUME seq ${nextSeq}`);
    if (nextSeq <= journal.seqReleased) {
      return fail(
        'target-behind',
        `${this.group}: the target asks for seq ${nextSeq}, this node released up to ${journal.seqReleased}`,
      );
    }
    if (nextSeq > journal.seqLast + 1) {
      return fail(
        'target-ahead',
        `${this.group}: the target holds up to seq ${nextSeq - 1}, this node wrote only ${journal.seqLast}`,
      );
    }
    this.clearInFlight();
    // The target's word is what it holds now. Its durable prefix may be below what it reported
    // before (it lost its disk): the acked point goes down with it, so nothing more is released
    // until the resent records are reported again (those below nextSeq may be released already,
    // and the check above keeps them out of reach).
    this.seqAckedNow = nextSeq - 1;
    this.seqSentNow = nextSeq - 1;
    this.stateNow = 'streaming';
    return OK;
  }

  /** The records to read and send next, or undefined when there is nothing or no room. */
  want(journal: JournalSpan): { readonly fromSeq: Seq; readonly maxBytes: number } | undefined {
    if (this.stateNow !== 'streaming') return undefined;
    if (this.seqSentNow >= journal.seqLast) return undefined;
    const room = this.limits.windowBytes - this.bytesInFlightNow;
    if (room <= 0) return undefined;
    return { fromSeq: seq(this.seqSentNow + 1), maxBytes: Math.min(room, this.limits.batchBytes) };
  }

  onSent(seqLast: Seq, bytes: number, nowMs: number): void {
    if (this.stateNow !== 'streaming' || seqLast <= this.seqSentNow) return;
    this.seqSentNow = seqLast;
    this.bytesInFlightNow += bytes;
    this.inFlight.push({ seqLast, bytes });
    this.lastSendMs = nowMs;
  }

  /** The target's durability report. Returns whether seqAcked moved. */
  onAck(durableSeq: number): SenderResult & { readonly advanced?: boolean } {
    if (this.stateNow !== 'streaming')
      return fail('protocol', `ACK for ${this.group} while ${this.stateNow}`);
    if (!Number.isSafeInteger(durableSeq) || durableSeq > this.seqSentNow) {
      return fail('protocol', `${this.group}: ACK of seq ${durableSeq}, only ${this.seqSentNow} sent`);
    }
    if (durableSeq <= this.seqAckedNow) return { ok: true, advanced: false };
    this.seqAckedNow = durableSeq;
    while (this.inFlight.length > 0 && this.inFlight[0]!.seqLast <= durableSeq) {
      this.bytesInFlightNow -= this.inFlight.shift()!.bytes;
    }
    return { ok: true, advanced: true };
  }

  /** True when an idle, streaming group should send a tick now (call onTickSent after). */
  tickDue(journal: JournalSpan, nowMs: number): boolean {
    return (
      this.stateNow === 'streaming' &&
      this.seqSentNow >= journal.seqLast &&
      nowMs - this.lastSendMs >= this.limits.tickMs
    );
  }

  onTickSent(nowMs: number): void {
    this.lastSendMs = nowMs;
  }

  /** The peer's epoch for the group: a higher one fences this source. Returns true if fenced now. */
  onEpoch(epoch: number): boolean {
    if (epoch <= this.epochNow) return false;
    this.epochNow = epoch;
    this.stateNow = 'fenced';
    this.clearInFlight();
    return true;
  }

  private clearInFlight(): void {
    this.inFlight.length = 0;
    this.bytesInFlightNow = 0;
    this.seqSentNow = this.seqAckedNow;
  }
}
