/**
 * The NBD transmission phase: request parsing, validation and dispatch (the hot path).
 *
 * Every complete request in a received chunk is parsed and dispatched at once, without waiting
 * for earlier ones; each is answered when its backend promise settles, so replies go out of
 * order. Headers are read in place from the chunk; a WRITE payload that lies inside the chunk is
 * passed on as a slice (no copy), one that spans chunks is gathered into its own buffer. Those
 * buffers are reused once their write has succeeded (PayloadPool): the backend may use a buffer
 * until its promise settles, not after (backend.ts), and a large sequential write stream would
 * otherwise allocate, fault in and collect a fresh buffer per request.
 *
 * Bounds: at most REQUESTS_IN_FLIGHT_MAX requests and BYTES_IN_FLIGHT_MAX payload bytes in
 * flight, and at most OUTPUT_QUEUED_MAX_BYTES of replies queued in the socket. At a bound, the
 * rest of the chunk is held and the socket paused; a completion (or 'drain') resumes parsing.
 *
 * Client input never throws: a bad request gets its NBD error; a request we cannot skip (bad
 * magic, an absurd WRITE length) ends the connection with a logged reason.
 *
 * The end of input (the client's FIN: onInputEnd) stops reading like DISC does: every request in
 * flight is answered, then the connection finishes. A request cut off by it is dropped, logged.
 */
import { assert } from '../../core/assert.js';
import type { Extent, VolumeExport, WriteOptions, ZeroOptions } from '../backend.js';
import { BackendError } from '../backend.js';
import type { Negotiated } from './handshake.js';
import type { NbdLogLevel } from './log.js';
import {
  BLOCK_STATUS_EXTENTS_MAX,
  BYTES_IN_FLIGHT_MAX,
  Cmd,
  CmdFlag,
  CONTEXT_ID_BASE_ALLOCATION,
  NbdErrno,
  nbdErrnoOf,
  OUTPUT_QUEUED_MAX_BYTES,
  PAYLOAD_POOL_BYTES_MAX,
  REQUEST_HEADER_BYTES,
  REQUEST_MAGIC,
  REQUESTS_IN_FLIGHT_MAX,
  WRITE_SKIP_MAX_BYTES,
} from './protocol.js';
import type { ReplyWriter } from './replies.js';
import {
  allowedFlagsFor,
  checkRequest,
  clampExtents,
  describeRefusal,
  type RequestRules,
} from './requests.js';

/** What the transmission phase needs from its connection. */
export interface TransmissionHost {
  pauseInput(): void;
  resumeInput(): void;
  /** Reply bytes accepted by the socket and not yet sent. */
  outputQueuedBytes(): number;
  /** End the connection after the replies queued so far. */
  finish(reason: string, level: NbdLogLevel): void;
  log(level: NbdLogLevel, msg: string, fields: Record<string, unknown>): void;
}

const TWO_POW_32 = 2 ** 32;
const EMPTY = Buffer.alloc(0);
const PARSE_HEADER = 0;
const PARSE_PAYLOAD = 1;
const PARSE_SKIP = 2;

/** Options for a WRITE, by [FUA][payload cut from the receive buffer (stable) or pooled]. */
const WRITE_OPTS: readonly (readonly WriteOptions[])[] = [
  [Object.freeze({ fua: false, payloadStable: false }), Object.freeze({ fua: false, payloadStable: true })],
  [Object.freeze({ fua: true, payloadStable: false }), Object.freeze({ fua: true, payloadStable: true })],
];
const ZERO_OPTS: readonly ZeroOptions[] = [
  Object.freeze({ fua: false, punchHole: false }),
  Object.freeze({ fua: true, punchHole: false }),
  Object.freeze({ fua: false, punchHole: true }),
  Object.freeze({ fua: true, punchHole: true }),
];

/**
 * Gathered WRITE payload buffers kept for reuse, by length, at most PAYLOAD_POOL_BYTES_MAX in
 * all. A buffer comes back only after a write that used it succeeded; a failed write's buffer is
 * dropped (a rejection may come before the backend is done with it).
 */
class PayloadPool {
  private readonly free = new Map<number, Buffer[]>();
  private bytes = 0;

  take(length: number): Buffer {
    const b = this.free.get(length)?.pop();
    if (b === undefined) return Buffer.allocUnsafeSlow(length);
    this.bytes -= length;
    return b;
  }

  give(b: Buffer): void {
    if (this.bytes + b.length > PAYLOAD_POOL_BYTES_MAX) return;
    let list = this.free.get(b.length);
    if (list === undefined) {
      list = [];
      this.free.set(b.length, list);
    }
    list.push(b);
    this.bytes += b.length;
  }
}

export class Transmission {
  private readonly exp: VolumeExport;
  private readonly sizeBytes: number;
  private readonly structured: boolean;
  private readonly rules: RequestRules;
  private readonly header = Buffer.alloc(REQUEST_HEADER_BYTES);
  private headerFill = 0;
  private parse = PARSE_HEADER;
  /** A WRITE whose payload spans chunks. */
  private payload: Buffer = EMPTY;
  private payloadFill = 0;
  private payloadFlags = 0;
  private payloadHi = 0;
  private payloadLo = 0;
  private payloadOffset = 0;
  private skipLeft = 0;
  private readonly pool = new PayloadPool();
  /** Unparsed input kept while a bound is reached (the socket is paused meanwhile). */
  private held: Buffer | undefined;
  private inFlight = 0;
  private inFlightBytes = 0;
  /** No more input is read: DISC, shutdown, or a protocol error. */
  private stopped = false;
  /** The client closed its side; held input is still parsed first. */
  private inputEnded = false;
  private finishing: { reason: string; level: NbdLogLevel } | undefined;

  constructor(
    negotiated: Negotiated,
    private readonly replies: ReplyWriter,
    private readonly host: TransmissionHost,
  ) {
    this.exp = negotiated.export;
    this.sizeBytes = negotiated.export.sizeBytes;
    this.structured = negotiated.structuredReplies;
    this.rules = {
      sizeBytes: this.sizeBytes,
      readOnly: negotiated.export.readOnly,
      baseAllocation: negotiated.baseAllocation,
      allowedFlags: allowedFlagsFor(negotiated.transmissionFlags),
    };
  }

  onData(chunk: Buffer): void {
    if (this.stopped) return;
    if (this.held) {
      this.held = Buffer.concat([this.held, chunk]);
      return;
    }
    this.consume(chunk);
  }

  /** Parse held input if the bounds allow it again (after a completion or 'drain'). */
  resume(): void {
    if (!this.held || this.stopped || this.isBlocked()) return;
    const held = this.held;
    this.held = undefined;
    this.consume(held);
    if (this.held || this.stopped) return;
    if (this.inputEnded) this.onInputEnd();
    else this.host.resumeInput();
  }

  /** The client closed its side: nothing more will come. Answer what is in flight, then finish. */
  onInputEnd(): void {
    this.inputEnded = true;
    // A paused socket emits no 'end' before its data, but held input would still come first.
    if (this.stopped || this.held) return;
    if (this.headerFill > 0 || this.parse !== PARSE_HEADER) {
      this.stop({ reason: 'client closed its side in the middle of a request', level: 'warn' });
    } else {
      this.stop({ reason: 'client closed its side without NBD_CMD_DISC', level: 'debug' });
    }
  }

  /** Server shutdown: read nothing more, answer what is in flight, then finish. */
  beginShutdown(): void {
    this.stop({ reason: 'server shutting down', level: 'info' });
  }

  private consume(b: Buffer): void {
    const end = b.length;
    let at = 0;
    while (at < end && !this.stopped) {
      if (this.parse === PARSE_PAYLOAD) {
        at = this.fillPayload(b, at);
      } else if (this.parse === PARSE_SKIP) {
        const n = Math.min(this.skipLeft, end - at);
        this.skipLeft -= n;
        at += n;
        if (this.skipLeft === 0) this.parse = PARSE_HEADER;
      } else if (this.headerFill === 0 && this.isBlocked()) {
        this.held = b.subarray(at);
        this.host.pauseInput();
        return;
      } else if (this.headerFill === 0 && end - at >= REQUEST_HEADER_BYTES) {
        at = this.onHeader(b, at, b, at + REQUEST_HEADER_BYTES);
      } else {
        const n = Math.min(REQUEST_HEADER_BYTES - this.headerFill, end - at);
        b.copy(this.header, this.headerFill, at, at + n);
        this.headerFill += n;
        at += n;
        if (this.headerFill === REQUEST_HEADER_BYTES) {
          this.headerFill = 0;
          at = this.onHeader(this.header, 0, b, at);
        }
      }
    }
  }

  /** Handle the request whose header is at h[ho..]; its payload (if any) starts at b[at]. */
  private onHeader(h: Buffer, ho: number, b: Buffer, at: number): number {
    const magic = h.readUInt32BE(ho);
    if (magic !== REQUEST_MAGIC) {
      this.protocolError(`bad request magic 0x${magic.toString(16)}`);
      return b.length;
    }
    const flags = h.readUInt16BE(ho + 4);
    const type = h.readUInt16BE(ho + 6);
    const hi = h.readUInt32BE(ho + 8);
    const lo = h.readUInt32BE(ho + 12);
    const offset = h.readUInt32BE(ho + 16) * TWO_POW_32 + h.readUInt32BE(ho + 20);
    const length = h.readUInt32BE(ho + 24);
    if (type === Cmd.WRITE) return this.onWrite(flags, hi, lo, offset, length, b, at);
    this.onCommand(type, flags, hi, lo, offset, length);
    return at;
  }

  private onWrite(
    flags: number,
    hi: number,
    lo: number,
    offset: number,
    length: number,
    b: Buffer,
    at: number,
  ) {
    const err = checkRequest(this.rules, Cmd.WRITE, flags, offset, length);
    if (err !== 0) {
      if (length > WRITE_SKIP_MAX_BYTES) {
        this.protocolError(`WRITE of ${length} bytes is too large to skip`);
        return b.length;
      }
      this.replyError(hi, lo, err, describeRefusal(Cmd.WRITE, err, offset, length, this.sizeBytes));
      this.skipLeft = length;
      if (length > 0) this.parse = PARSE_SKIP;
      return at;
    }
    if (length === 0) {
      this.replies.simple(hi, lo, 0);
      return at;
    }
    const avail = b.length - at;
    if (avail >= length) {
      this.dispatchWrite(flags, hi, lo, offset, b.subarray(at, at + length), false);
      return at + length;
    }
    this.payload = this.pool.take(length);
    b.copy(this.payload, 0, at);
    this.payloadFill = avail;
    this.payloadFlags = flags;
    this.payloadHi = hi;
    this.payloadLo = lo;
    this.payloadOffset = offset;
    this.parse = PARSE_PAYLOAD;
    return b.length;
  }

  private fillPayload(b: Buffer, at: number): number {
    const n = Math.min(this.payload.length - this.payloadFill, b.length - at);
    b.copy(this.payload, this.payloadFill, at, at + n);
    this.payloadFill += n;
    if (this.payloadFill === this.payload.length) {
      const data = this.payload;
      this.payload = EMPTY;
      this.parse = PARSE_HEADER;
      this.dispatchWrite(this.payloadFlags, this.payloadHi, this.payloadLo, this.payloadOffset, data, true);
    }
    return at + n;
  }

  private onCommand(
    type: number,
    flags: number,
    hi: number,
    lo: number,
    offset: number,
    length: number,
  ): void {
    if (type === Cmd.DISC) {
      this.stop({ reason: 'client sent NBD_CMD_DISC', level: 'debug' });
      return;
    }
    if (type > Cmd.BLOCK_STATUS) {
      this.replyError(hi, lo, NbdErrno.EINVAL, `unknown command ${type}`);
      return;
    }
    const err = checkRequest(this.rules, type, flags, offset, length);
    if (err !== 0) {
      this.replyError(hi, lo, err, describeRefusal(type, err, offset, length, this.sizeBytes));
      return;
    }
    if (length === 0 && type !== Cmd.FLUSH) {
      // Zero-length READ/TRIM/WRITE_ZEROES/CACHE: nothing to do (BLOCK_STATUS was refused).
      if (type === Cmd.READ) this.sendRead(hi, lo, offset, EMPTY);
      else this.replies.simple(hi, lo, 0);
      return;
    }
    switch (type) {
      case Cmd.READ:
        this.dispatchRead(hi, lo, offset, length);
        return;
      case Cmd.FLUSH:
        this.dispatchVoid(hi, lo, () => this.exp.flush());
        return;
      case Cmd.TRIM:
        this.dispatchVoid(hi, lo, () => this.exp.zero(offset, length, zeroOpts(flags, true)));
        this.replies.expect();
        return;
      case Cmd.WRITE_ZEROES: {
        const opts = zeroOpts(flags, (flags & CmdFlag.NO_HOLE) === 0);
        this.dispatchVoid(hi, lo, () => this.exp.zero(offset, length, opts));
        this.replies.expect();
        return;
      }
      case Cmd.CACHE:
        this.dispatchVoid(hi, lo, () => this.exp.cache(offset, length));
        return;
      default:
        this.dispatchBlockStatus(hi, lo, flags, offset, length);
        return;
    }
  }

  /** `pooled`: `data` is a gathered buffer of ours, to reuse once the write has succeeded. */
  private dispatchWrite(
    flags: number,
    hi: number,
    lo: number,
    offset: number,
    data: Buffer,
    pooled: boolean,
  ): void {
    const bytes = data.length;
    this.inFlight++;
    this.inFlightBytes += bytes;
    let p: Promise<void>;
    try {
      // A payload cut from the socket's chunk is never written to again; a pooled one is reused.
      p = this.exp.write(offset, data, WRITE_OPTS[(flags & CmdFlag.FUA) !== 0 ? 1 : 0]![pooled ? 0 : 1]!);
    } catch (e) {
      p = Promise.reject(e);
    }
    this.replies.expect();
    p.then(
      () => {
        if (pooled) this.pool.give(data);
        this.replies.simple(hi, lo, 0);
        this.completed(bytes);
      },
      (e: unknown) => this.failed(hi, lo, bytes, e),
    );
  }

  private dispatchRead(hi: number, lo: number, offset: number, length: number): void {
    this.inFlight++;
    this.inFlightBytes += length;
    let p: Promise<Buffer>;
    try {
      p = this.exp.read(offset, length);
    } catch (e) {
      p = Promise.reject(e);
    }
    p.then(
      (data) => {
        if (data.length !== length) {
          this.host.log('error', 'backend read returned the wrong length', { got: data.length, length });
          this.replyError(hi, lo, NbdErrno.EIO, 'internal read error');
        } else {
          this.sendRead(hi, lo, offset, data);
        }
        this.completed(length);
      },
      (e: unknown) => this.failed(hi, lo, length, e),
    );
  }

  private dispatchVoid(hi: number, lo: number, op: () => Promise<void>): void {
    this.inFlight++;
    let p: Promise<void>;
    try {
      p = op();
    } catch (e) {
      p = Promise.reject(e);
    }
    p.then(
      () => {
        this.replies.simple(hi, lo, 0);
        this.completed(0);
      },
      (e: unknown) => this.failed(hi, lo, 0, e),
    );
  }

  private dispatchBlockStatus(hi: number, lo: number, flags: number, offset: number, length: number): void {
    this.inFlight++;
    let p: Promise<Extent[]>;
    try {
      p = this.exp.blockStatus(offset, length);
    } catch (e) {
      p = Promise.reject(e);
    }
    const max = (flags & CmdFlag.REQ_ONE) !== 0 ? 1 : BLOCK_STATUS_EXTENTS_MAX;
    p.then(
      (extents) => {
        this.replies.blockStatus(hi, lo, CONTEXT_ID_BASE_ALLOCATION, clampExtents(extents, length, max));
        this.completed(0);
      },
      (e: unknown) => this.failed(hi, lo, 0, e),
    );
  }

  private sendRead(hi: number, lo: number, offset: number, data: Buffer): void {
    if (this.structured) this.replies.structuredRead(hi, lo, offset, data);
    else this.replies.simpleRead(hi, lo, data);
  }

  private failed(hi: number, lo: number, bytes: number, e: unknown): void {
    let errno: number = NbdErrno.EIO;
    let message = 'internal error';
    if (e instanceof BackendError) {
      errno = nbdErrnoOf(e.errno);
      message = e.message;
      this.host.log(e.errno === 'EIO' ? 'warn' : 'debug', 'request failed', { errno: e.errno, message });
    } else {
      this.host.log('error', 'backend threw a non-BackendError', { error: String(e) });
    }
    this.replyError(hi, lo, errno, message);
    this.completed(bytes);
  }

  private replyError(hi: number, lo: number, errno: number, message: string): void {
    // With structured replies an error chunk is preferred (it carries a message); for READ required.
    if (this.structured) this.replies.structuredError(hi, lo, errno, message);
    else this.replies.simple(hi, lo, errno);
  }

  private completed(bytes: number): void {
    this.inFlight--;
    this.inFlightBytes -= bytes;
    assert(this.inFlight >= 0 && this.inFlightBytes >= 0, 'in-flight accounting went negative');
    if (this.held !== undefined) this.resume();
    if (this.finishing !== undefined && this.inFlight === 0)
      this.host.finish(this.finishing.reason, this.finishing.level);
  }

  private isBlocked(): boolean {
    return (
      this.inFlight >= REQUESTS_IN_FLIGHT_MAX ||
      this.inFlightBytes >= BYTES_IN_FLIGHT_MAX ||
      this.host.outputQueuedBytes() >= OUTPUT_QUEUED_MAX_BYTES
    );
  }

  /** Read nothing more; finish once every request in flight has been answered. */
  private stop(finishing: { reason: string; level: NbdLogLevel }): void {
    this.stopped = true;
    this.held = undefined;
    this.finishing ??= finishing;
    if (this.inFlight === 0) this.host.finish(this.finishing.reason, this.finishing.level);
  }

  private protocolError(reason: string): void {
    this.stopped = true;
    this.held = undefined;
    this.host.finish(reason, 'warn');
  }
}

function zeroOpts(flags: number, punchHole: boolean): ZeroOptions {
  return ZERO_OPTS[((flags & CmdFlag.FUA) !== 0 ? 1 : 0) + (punchHole ? 2 : 0)]!;
}
