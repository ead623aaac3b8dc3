/**
 * Transmission-phase reply encoding with batching: the write side of the hot path.
 *
 * Replies are encoded into a connection-owned slab (no allocation per reply); READ data is queued
 * beside it without copying. Everything queued in one turn of the event loop goes out in one
 * flush, scheduled with setImmediate after the first reply: every completion of the same poll
 * phase (a pipelined batch, or several journal callbacks) shares one socket write. setImmediate
 * rather than nextTick, because backend completions arrive as separate I/O callbacks and nextTick
 * would flush after each; the check phase follows the poll phase, so no reply waits for new I/O.
 * A completion that itself comes in the check phase (the write path applies its batches from a
 * setImmediate) would schedule its flush for the next loop turn; expect() queues the flush when the
 * request is dispatched instead, behind the batch, so its reply leaves in the same phase.
 *
 * Slab regions handed to the socket are never written again: new replies go after them, and a
 * full slab is replaced, not reused.
 */
import {
  ERROR_MESSAGE_MAX_BYTES,
  REPLY_SLAB_BYTES,
  ReplyFlag,
  ReplyType,
  SIMPLE_REPLY_HEADER_BYTES,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_HEADER_BYTES,
  STRUCTURED_REPLY_MAGIC,
  truncateUtf8,
} from './protocol.js';
import type { ExtentOut } from './requests.js';

/** The part of a socket the writer uses. */
export interface ReplySink {
  readonly destroyed: boolean;
  readonly writableEnded: boolean;
  write(data: Buffer): boolean;
  cork(): void;
  uncork(): void;
}

const TWO_POW_32 = 2 ** 32;

export class ReplyWriter {
  private slab: Buffer = Buffer.allocUnsafeSlow(REPLY_SLAB_BYTES);
  private start = 0;
  private pos = 0;
  private queued: Buffer[] = [];
  private scheduled = false;
  private readonly flushBound = (): void => this.flush();

  constructor(private readonly sink: ReplySink) {}

  /** A simple reply: no data (or an error). */
  simple(handleHi: number, handleLo: number, error: number): void {
    const b = this.reserve(SIMPLE_REPLY_HEADER_BYTES);
    const p = this.pos;
    b.writeUInt32BE(SIMPLE_REPLY_MAGIC, p);
    b.writeUInt32BE(error, p + 4);
    b.writeUInt32BE(handleHi, p + 8);
    b.writeUInt32BE(handleLo, p + 12);
    this.pos = p + SIMPLE_REPLY_HEADER_BYTES;
    this.schedule();
  }

  /** A successful simple READ reply: header then the data. */
  simpleRead(handleHi: number, handleLo: number, data: Buffer): void {
    this.simple(handleHi, handleLo, 0);
    this.queueData(data);
  }

  /** A structured READ reply in one chunk: OFFSET_DATA with DONE, or NONE if there is no data. */
  structuredRead(handleHi: number, handleLo: number, offset: number, data: Buffer): void {
    if (data.length === 0) {
      this.structuredNone(handleHi, handleLo);
      return;
    }
    this.chunkHeader(ReplyFlag.DONE, ReplyType.OFFSET_DATA, handleHi, handleLo, 8 + data.length);
    const b = this.reserve(8);
    b.writeUInt32BE(Math.floor(offset / TWO_POW_32), this.pos);
    b.writeUInt32BE(offset >>> 0, this.pos + 4);
    this.pos += 8;
    this.queueData(data);
  }

  structuredNone(handleHi: number, handleLo: number): void {
    this.chunkHeader(ReplyFlag.DONE, ReplyType.NONE, handleHi, handleLo, 0);
  }

  /** An ERROR chunk with DONE, carrying a short human-readable message. */
  structuredError(handleHi: number, handleLo: number, error: number, message: string): void {
    const msg = Buffer.from(truncateUtf8(message, ERROR_MESSAGE_MAX_BYTES), 'utf8');
    this.chunkHeader(ReplyFlag.DONE, ReplyType.ERROR, handleHi, handleLo, 6 + msg.length);
    const b = this.reserve(6 + msg.length);
    b.writeUInt32BE(error, this.pos);
    b.writeUInt16BE(msg.length, this.pos + 4);
    msg.copy(b, this.pos + 6);
    this.pos += 6 + msg.length;
  }

  /** A BLOCK_STATUS chunk with DONE for one context. */
  blockStatus(handleHi: number, handleLo: number, contextId: number, extents: readonly ExtentOut[]): void {
    const len = 4 + 8 * extents.length;
    this.chunkHeader(ReplyFlag.DONE, ReplyType.BLOCK_STATUS, handleHi, handleLo, len);
    const b = this.reserve(len);
    let p = this.pos;
    b.writeUInt32BE(contextId, p);
    p += 4;
    for (const e of extents) {
      b.writeUInt32BE(e.length, p);
      b.writeUInt32BE(e.flags >>> 0, p + 4);
      p += 8;
    }
    this.pos = p;
  }

  /**
   * A request was just dispatched whose completion may come in this turn's check phase (a journalled
   * write, done in the write path's setImmediate batch): queue the flush now, behind that batch, so
   * the reply goes out in the same phase. Scheduled by the reply itself, from inside the check
   * phase, the flush would wait a whole loop turn (one more epoll_wait per reply; ~7% of a QD1
   * write's latency on the development machine). Costs one empty flush when the completion is later.
   */
  expect(): void {
    this.schedule();
  }

  /** Send everything queued now (also called by the scheduled tick). */
  flush(): void {
    this.scheduled = false;
    this.cut();
    const q = this.queued;
    if (q.length === 0) return;
    this.queued = [];
    if (this.sink.destroyed || this.sink.writableEnded) return;
    if (q.length === 1) {
      this.sink.write(q[0]!);
      return;
    }
    this.sink.cork();
    for (const b of q) this.sink.write(b);
    this.sink.uncork();
  }

  private chunkHeader(flags: number, type: number, hi: number, lo: number, length: number): void {
    const b = this.reserve(STRUCTURED_REPLY_HEADER_BYTES);
    const p = this.pos;
    b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, p);
    b.writeUInt16BE(flags, p + 4);
    b.writeUInt16BE(type, p + 6);
    b.writeUInt32BE(hi, p + 8);
    b.writeUInt32BE(lo, p + 12);
    b.writeUInt32BE(length, p + 16);
    this.pos = p + STRUCTURED_REPLY_HEADER_BYTES;
    this.schedule();
  }

  private queueData(data: Buffer): void {
    this.cut();
    this.queued.push(data);
  }

  /** Move the slab bytes written since the last cut into the queue. */
  private cut(): void {
    if (this.pos > this.start) {
      this.queued.push(this.slab.subarray(this.start, this.pos));
      this.start = this.pos;
    }
  }

  /** The slab, with room for `n` more bytes at `this.pos`. */
  private reserve(n: number): Buffer {
    if (this.slab.length - this.pos >= n) return this.slab;
    this.cut();
    this.slab = Buffer.allocUnsafeSlow(Math.max(REPLY_SLAB_BYTES, n));
    this.start = 0;
    this.pos = 0;
    return this.slab;
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(this.flushBound);
  }
}
