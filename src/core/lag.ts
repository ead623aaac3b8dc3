/**
 * A source group's lag as status and metrics report it: how far the target's image is behind the
 * source, in bytes and milliseconds. TESTING.md: the reported lag is never less than the true lag.
 * The source replicator (src/node/replication/source.ts) feeds it; it keeps no clock of its own.
 *
 *   journal append (a batch)    --> appended(lastSeq, bytes, arrivedMs)  one mark per batch
 *   target applied seq s        --> applied(s)                           marks up to s dropped
 *   write tracked in a bitmap   --> tracked(arrivedMs)                   behind since its first
 *   (suspended: no record)                                               such write
 *   in `pair`, resync applied   --> caughtUp()                           tracked writes forgotten
 *   status                      --> lag(nowMs, dirtyBytes)
 *
 * Journalled records: a batch counts whole until the target has applied all of it, and from the
 * arrival of its oldest write. Tracked writes have no seq; the target has them only once a resync
 * has copied their chunks and the target has applied the copies, when the pair is back in `pair`
 * (the caller says so: caughtUp()). Until then the lag runs from the first tracked write and
 * counts the dirty bytes (a chunk whose copy is journalled and not yet reported durable counts
 * twice: an upper bound). After a restart the caller passes bounds no later than the truth: when
 * the retained records and the first tracked write may have arrived.
 */
import { assert } from './assert.js';

/** A batch appended: its last seq, the bytes appended so far, when its oldest write arrived. */
interface Mark {
  readonly seq: number;
  readonly bytesTotal: number;
  readonly arrivedMs: number;
}

export interface Lag {
  readonly bytes: number;
  readonly ms: number;
}

export interface LagStart {
  /** The group's released seq: the target has applied everything up to it. */
  readonly releasedSeq: number;
  /**
   * Records retained past releasedSeq: the last one's seq, their bytes, and a time no later than
   * the oldest one's arrival.
   */
  readonly retained?: { readonly lastSeq: number; readonly bytes: number; readonly sinceMs: number };
  /** A time no later than the first write the target lacks that no record carries (tracked). */
  readonly behindSinceMs?: number;
}

export class LagTracker {
  private marks: Mark[] = [];
  private base: Mark;
  private bytesAppended = 0;
  /** The first tracked write the target may lack arrived no earlier than this. */
  private behindSince: number | undefined;

  constructor(start: LagStart) {
    this.base = { seq: start.releasedSeq, bytesTotal: 0, arrivedMs: 0 };
    const r = start.retained;
    if (r !== undefined && r.lastSeq > start.releasedSeq) {
      this.bytesAppended = r.bytes;
      this.marks.push({ seq: r.lastSeq, bytesTotal: r.bytes, arrivedMs: r.sinceMs });
    }
    this.behindSince = start.behindSinceMs;
  }

  /** A batch of the group's records was journalled; its oldest write arrived at `arrivedMs`. */
  appended(lastSeq: number, bytes: number, arrivedMs: number): void {
    const last = this.marks[this.marks.length - 1] ?? this.base;
    assert(lastSeq > last.seq, `lag: appended seq ${lastSeq} after ${last.seq}`);
    this.bytesAppended += bytes;
    this.marks.push({ seq: lastSeq, bytesTotal: this.bytesAppended, arrivedMs });
  }

  /** The target reports every record up to `seq` applied. */
  applied(seq: number): void {
    let i = 0;
    while (i < this.marks.length && this.marks[i]!.seq <= seq) this.base = this.marks[i++]!;
    if (i > 0) this.marks = this.marks.slice(i);
  }

  /** A write that arrived at `arrivedMs` went to the dirty bitmap instead of the journal. */
  tracked(arrivedMs: number): void {
    if (this.behindSince === undefined || arrivedMs < this.behindSince) this.behindSince = arrivedMs;
  }

  /** When the first tracked write the target may lack arrived; undefined when there is none. */
  get behindSinceMs(): number | undefined {
    return this.behindSince;
  }

  /** The pair is in `pair` with every resync applied: the target holds every tracked write. */
  caughtUp(): void {
    this.behindSince = undefined;
  }

  /** The lag at `nowMs`, with `dirtyBytes` the bytes the group's dirty bitmaps mark. */
  lag(nowMs: number, dirtyBytes: number): Lag {
    const first = this.marks[0];
    let since = first?.arrivedMs;
    if (this.behindSince !== undefined && (since === undefined || this.behindSince < since)) {
      since = this.behindSince;
    }
    const tracked = this.behindSince === undefined ? 0 : dirtyBytes;
    return {
      bytes: this.bytesAppended - this.base.bytesTotal + tracked,
      ms: since === undefined ? 0 : Math.max(0, nowMs - since),
    };
  }
}
