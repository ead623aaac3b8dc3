/**
 * A rate limit for log lines that peers can cause (STYLE.md 4: a limit on everything, the log
 * included). The link server asks it before logging a refused or failed unauthenticated session
 * and a connection turned away at the cap, so a flood of bad peers costs a few lines per interval
 * instead of one per connection. Pure: the caller passes the time; the link server logs what it
 * returns and calls flush() on a timer.
 *
 *   admit(kind, now) --> log it (with how many of its kind went unlogged before) | drop it
 *   flush(now)       --> for each kind whose interval ended with lines dropped: how many
 *
 * Per kind, an interval starts with the first line; the first `burst` lines of the interval are
 * logged, later ones are only counted. So the first line of every kind is always seen, and the
 * count of the dropped ones is reported once the interval is over. Kinds are a closed set chosen
 * by the caller (never text a peer sends), so the table stays small.
 */
import { assert } from './assert.js';

export interface Admitted {
  /** Whether to log this line. */
  readonly log: boolean;
  /** Lines of this kind dropped in the interval that just ended (to report with this one); 0 if none. */
  readonly droppedBefore: number;
}

export interface Dropped<K> {
  readonly kind: K;
  readonly dropped: number;
  /** Length of the interval they were dropped in. */
  readonly intervalMs: number;
}

interface Interval {
  readonly startMs: number;
  logged: number;
  dropped: number;
}

export class LogLimiter<K extends string> {
  private readonly intervals = new Map<K, Interval>();

  constructor(
    readonly intervalMs: number,
    readonly burst: number,
  ) {
    assert(Number.isFinite(intervalMs) && intervalMs > 0, `log limit interval ${intervalMs} ms`);
    assert(Number.isInteger(burst) && burst >= 1, `log limit burst ${burst}`);
  }

  /** Whether a line of `kind` at `nowMs` is logged; counts it either way. */
  admit(kind: K, nowMs: number): Admitted {
    let droppedBefore = 0;
    let iv = this.intervals.get(kind);
    if (iv !== undefined && nowMs - iv.startMs >= this.intervalMs) {
      droppedBefore = iv.dropped;
      iv = undefined;
    }
    if (iv === undefined) {
      iv = { startMs: nowMs, logged: 0, dropped: 0 };
      this.intervals.set(kind, iv);
    }
    if (iv.logged < this.burst) {
      iv.logged++;
      return { log: true, droppedBefore };
    }
    iv.dropped++;
    return { log: false, droppedBefore };
  }

  /** Ends every interval that is over; returns those that dropped lines, to be reported. */
  flush(nowMs: number): Dropped<K>[] {
    const out: Dropped<K>[] = [];
    for (const [kind, iv] of this.intervals) {
      if (nowMs - iv.startMs < this.intervalMs) continue;
      this.intervals.delete(kind);
      if (iv.dropped > 0) out.push({ kind, dropped: iv.dropped, intervalMs: this.intervalMs });
    }
    return out;
  }
}
