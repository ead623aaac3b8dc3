/**
 * The streaming side of the link codec: cuts the bytes of one connection into frames. A session
 * pushes each chunk its socket delivers and then calls next() until it says 'need-more'. Frames may
 * be split at any byte and a chunk may hold many frames. All parsing is frames.ts's; this file only
 * buffers.
 *
 *   socket 'data' --push(chunk)--> [chunk][chunk][chunk]... --next()--> frame | 'need-more' | error
 *                                   ^ head: start of the current frame
 *
 * Wire format (frames.ts has the payloads):
 *
 *    0       4       5      6        8               12              16
 *   +-------+-------+------+--------+---------------+---------------+-----------------+
 *   | "RCLK"|version| type | flags  | payloadLen u32| crc32c u32    | payload ...     |
 *   +-------+-------+------+--------+---------------+---------------+-----------------+
 *
 * Bounded buffering: the header is checked as soon as its bytes arrive, in push() as well as in
 * next(), so a bad magic or a declared length above the decoder's current limit is refused before
 * any payload is buffered. The limit (`payloadBytesMax`) is LINK_FRAME_PAYLOAD_BYTES_MAX unless
 * the owner lowers it: a session keeps it at LINK_HANDSHAKE_PAYLOAD_BYTES_MAX until the peer is
 * authenticated, then raises it. A frame's header is judged by the limit in force when next()
 * reaches it, so frames behind the one that raises it are read with the new limit. A caller that
 * drains next() after every push holds at most one frame plus one chunk. After an error the
 * stream is dead (it cannot be resynchronised): the buffer is released, further chunks are
 * dropped, and next() repeats the error. Frames are views of the pushed chunks (a frame that
 * spans chunks is copied once): do not reuse a chunk after pushing it.
 */
import { assert } from '../core/assert.js';
import type { Frame, FrameError } from './frames.js';
import {
  decodeFrame,
  isPayloadLimit,
  LINK_FRAME_HEADER_BYTES,
  LINK_FRAME_PAYLOAD_BYTES_MAX,
  peekFrameHeader,
} from './frames.js';

/**
 * Bytes a decoder may hold, at most: two largest frames. Only a caller that pushes without
 * draining next() gets near it, and that is a programmer error.
 */
export const LINK_DECODER_BUFFERED_BYTES_MAX = 2 * (LINK_FRAME_HEADER_BYTES + LINK_FRAME_PAYLOAD_BYTES_MAX);

export type DecoderStep =
  | { readonly ok: true; readonly frame: Frame }
  | { readonly ok: false; readonly error: FrameError }
  | 'need-more';

export class FrameDecoder {
  private chunks: Buffer[] = [];
  /** Offset of the current frame in chunks[0]. */
  private head = 0;
  private buffered = 0;
  private dead: FrameError | null = null;
  private limit: number;

  /** `payloadBytesMax`: the largest payload a frame may declare, at first (see the setter). */
  constructor(payloadBytesMax: number = LINK_FRAME_PAYLOAD_BYTES_MAX) {
    assert(isPayloadLimit(payloadBytesMax), `payload limit ${payloadBytesMax}`);
    this.limit = payloadBytesMax;
  }

  /** The largest payload a frame may declare now; a header declaring more ends the stream ('length'). */
  get payloadBytesMax(): number {
    return this.limit;
  }

  /** Applies from the frame next() reaches next on (the frames already returned are not rejudged). */
  set payloadBytesMax(n: number) {
    assert(isPayloadLimit(n), `payload limit ${n}`);
    this.limit = n;
  }

  /** Bytes held, not yet returned as frames. */
  get bufferedBytes(): number {
    return this.buffered;
  }

  /** The error that ended the stream, or null while it is alive. */
  get error(): FrameError | null {
    return this.dead;
  }

  push(chunk: Buffer): void {
    if (this.dead !== null || chunk.length === 0) return;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    assert(this.buffered <= LINK_DECODER_BUFFERED_BYTES_MAX, 'FrameDecoder.push without draining next()');
    const h = peekFrameHeader(this.peek(Math.min(this.buffered, LINK_FRAME_HEADER_BYTES)), this.limit);
    if (!h.ok && h.error.code !== 'short') this.die(h.error);
  }

  /** The next whole frame, 'need-more' when the buffer ends inside one, or the error that ended the stream. */
  next(): DecoderStep {
    if (this.dead !== null) return { ok: false, error: this.dead };
    const h = peekFrameHeader(this.peek(Math.min(this.buffered, LINK_FRAME_HEADER_BYTES)), this.limit);
    if (!h.ok) return h.error.code === 'short' ? 'need-more' : this.die(h.error);
    const bytes = LINK_FRAME_HEADER_BYTES + h.payloadBytes;
    if (this.buffered < bytes) return 'need-more';
    const r = decodeFrame(this.take(bytes));
    assert(r.ok || r.error.code !== 'short', 'a whole frame is never short');
    if (!r.ok) return this.die(r.error);
    assert(r.bytes === bytes, 'frame length as peeked');
    return { ok: true, frame: r.frame };
  }

  private die(error: FrameError): { ok: false; error: FrameError } {
    this.dead = error;
    this.chunks = [];
    this.head = 0;
    this.buffered = 0;
    return { ok: false, error };
  }

  /** The first `n` buffered bytes, without consuming them (copied only when they span chunks). */
  private peek(n: number): Buffer {
    assert(n <= this.buffered, 'peek within the buffer');
    const first = this.chunks[0];
    if (first === undefined) return Buffer.alloc(0);
    if (first.length - this.head >= n) return first.subarray(this.head, this.head + n);
    return this.gather(n, false);
  }

  /** Removes and returns the first `n` buffered bytes. */
  private take(n: number): Buffer {
    assert(n <= this.buffered, 'take within the buffer');
    const first = this.chunks[0]!;
    if (first.length - this.head >= n) {
      const out = first.subarray(this.head, this.head + n);
      this.head += n;
      this.buffered -= n;
      if (this.head === first.length) this.dropFirst();
      return out;
    }
    return this.gather(n, true);
  }

  /** Copies the first `n` bytes out of the chunks; consumes them when `consume`. */
  private gather(n: number, consume: boolean): Buffer {
    const out = Buffer.allocUnsafe(n);
    let copied = 0;
    let i = 0;
    let head = this.head;
    while (copied < n) {
      const c = this.chunks[i]!;
      const k = Math.min(c.length - head, n - copied);
      c.copy(out, copied, head, head + k);
      copied += k;
      head += k;
      if (head === c.length) {
        i++;
        head = 0;
      }
    }
    if (consume) {
      this.chunks.splice(0, i);
      this.head = head;
      this.buffered -= n;
    }
    return out;
  }

  private dropFirst(): void {
    this.chunks.shift();
    this.head = 0;
  }
}
