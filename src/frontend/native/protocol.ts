/**
 * The native host protocol's one codec (STYLE.md 6): constants, limits, and one encode/decode
 * pair per frame. Used by the server (src/frontend/native/server.ts) and by the client library
 * (src/client/index.ts). doc/native-protocol.md is the user-facing copy of the diagrams below.
 *
 * The native protocol is the path for hosts that have their own clock (DESIGN.md §2, the patent's
 * "mainframe"): a WRITE may carry the host's write time, which becomes the journal record's host
 * time (DESIGN.md §3.1). Everything is big-endian, over one TCP connection:
 *
 *   client                                   server
 *     | -- hello (24 bytes) ------------------> |
 *     | <------------------ hello (24 bytes) -- |  status 0: ready; else the server closes
 *     | -- request (40-byte header + payload) -> |  any number pipelined, up to the limits
 *     | <- reply (24-byte header + payload) ---- |  in completion order, matched by cookie
 *
 * Hello, both directions (the client sends zeroes in status and the limits):
 *
 *    0                                       8          10         12
 *   +---------------------------------------+----------+----------+
 *   | magic "RCNATIVE" (8 ASCII bytes)      | version  | status   |
 *   +---------------------------------------+----------+----------+
 *   12                    16                    20                    24
 *   | maxPayloadBytes u32 | maxInFlight u32     | maxInFlightBytes u32|
 *   +---------------------+---------------------+---------------------+
 *
 * Request:
 *
 *    0                   4        5        6                 8
 *   +-------------------+--------+--------+-----------------+
 *   | magic "RCRQ"      | type   | flags  | reserved (0)    |
 *   +-------------------+--------+--------+-----------------+
 *    8                                                      16
 *   | cookie u64 (echoed in the reply)                       |
 *   16                  20                                  24
 *   | handle u32        | length u32                        |
 *   24                                                      32
 *   | offset u64                                            |
 *   32                                                      40
 *   | writeTimeUs u64 (µs since the Unix epoch; 0 = none)    |
 *   +-------------------------------------------------------+
 *   then `length` payload bytes for OPEN (UTF-8 volume name) and WRITE (data); none otherwise.
 *
 *   type   1 OPEN   length = name bytes; handle, offset, writeTimeUs = 0
 *          2 WRITE  handle, offset, length = data bytes, writeTimeUs, flags bit 0 = FUA
 *          3 READ   handle, offset, length = bytes to read
 *          4 FLUSH  handle
 *          5 CLOSE  handle
 *   Fields a type does not use must be zero; unknown flag bits are EINVAL.
 *
 * Reply:
 *
 *    0                   4        5        6                 8
 *   +-------------------+--------+--------+-----------------+
 *   | magic "RCRP"      | type   | 0      | status u16      |
 *   +-------------------+--------+--------+-----------------+
 *    8                                                      16
 *   | cookie u64                                            |
 *   16                  20                                  24
 *   | length u32        | reserved (0)                      |
 *   +-------------------+-----------------------------------+
 *   then `length` payload bytes: OPEN ok = handle u32, flags u32 (bit 0 read-only), sizeBytes u64;
 *   READ ok = the data; any error = a UTF-8 message (at most NATIVE_MAX_ERROR_MESSAGE_BYTES).
 *
 * Framing errors (bad magic, unknown type, a payload over its limit) cannot be answered, because
 * the stream cannot be resynchronised: the server logs the reason and closes that connection.
 * Everything else that is wrong with a request gets an error reply and the connection goes on.
 * Decoders never throw on peer input: they return a frame, "incomplete", or a typed error.
 */
import { isUtf8 } from 'node:buffer';
import { assert } from '../../core/assert.js';

/** Protocol version spoken by this code; the hello carries it. */
export const NATIVE_PROTOCOL_VERSION = 1;
/** Largest WRITE payload, READ length and reply payload: 32 MiB. */
export const NATIVE_MAX_PAYLOAD_BYTES = 32 * 1024 * 1024;
/** Requests a connection may have outstanding (received, not yet answered and flushed). */
export const NATIVE_MAX_IN_FLIGHT = 128;
/** Sum of WRITE payloads and READ lengths outstanding on a connection: 64 MiB. */
export const NATIVE_MAX_IN_FLIGHT_BYTES = 64 * 1024 * 1024;
/** Longest volume name in an OPEN request, in UTF-8 bytes. */
export const NATIVE_MAX_VOLUME_NAME_BYTES = 1024;
/** Longest error message in a reply, in UTF-8 bytes (longer ones are cut). */
export const NATIVE_MAX_ERROR_MESSAGE_BYTES = 1024;
/** Volumes a connection may have open at once. */
export const NATIVE_MAX_HANDLES_PER_CONNECTION = 256;
/** A client that has not completed its hello by then is disconnected. */
export const NATIVE_HELLO_TIMEOUT_MS = 10_000;
/** After the server half-closes a connection, how long it waits for the peer's close. */
export const NATIVE_CLOSE_LINGER_MS = 2_000;
/** Largest offset, length end or write time: integers must stay exact as JS numbers. */
export const NATIVE_MAX_SAFE_U64 = BigInt(Number.MAX_SAFE_INTEGER);

assert(NATIVE_MAX_IN_FLIGHT_BYTES >= NATIVE_MAX_PAYLOAD_BYTES, 'one maximal request must fit the window');
assert(NATIVE_MAX_PAYLOAD_BYTES <= 0xffff_ffff, 'payload length is a u32 on the wire');
assert(NATIVE_MAX_IN_FLIGHT > 0, 'in-flight window must allow one request');

export const HELLO_MAGIC = Buffer.from('RCNATIVE', 'latin1');
export const HELLO_BYTES = 24;
export const REQUEST_MAGIC = 0x52435251; // "RCRQ"
export const REQUEST_HEADER_BYTES = 40;
export const REPLY_MAGIC = 0x52435250; // "RCRP"
export const REPLY_HEADER_BYTES = 24;
export const OPEN_REPLY_BYTES = 16;

/** Request types. Wire codes: never renumber. */
export const RequestType = { open: 1, write: 2, read: 3, flush: 4, close: 5 } as const;
export type RequestType = (typeof RequestType)[keyof typeof RequestType];

export function requestTypeName(t: number): string {
  for (const [name, v] of Object.entries(RequestType)) if (v === t) return name;
  return `unknown(${t})`;
}

function isRequestType(t: number): t is RequestType {
  return t >= RequestType.open && t <= RequestType.close;
}

/** Request flag bits. */
export const RequestFlag = { fua: 1 } as const;
/** OPEN reply flag bits. */
export const OpenFlag = { readOnly: 1 } as const;

/**
 * Reply status codes: Linux errno numbers, like NBD. Wire codes: never renumber.
 * ENOENT means "no such volume"; EBADF "no such handle on this connection".
 */
export const Status = {
  OK: 0,
  EPERM: 1,
  ENOENT: 2,
  EIO: 5,
  EBADF: 9,
  EINVAL: 22,
  EMFILE: 24,
  ENOSPC: 28,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;
export type StatusName = keyof typeof Status;
export type Status = (typeof Status)[StatusName];

/** The name of a status code, or undefined for a code this version does not know. */
export function statusName(code: number): StatusName | undefined {
  for (const [name, v] of Object.entries(Status)) if (v === code) return name as StatusName;
  return undefined;
}

/** Why a byte stream could not be decoded; the connection cannot continue after one of these. */
export type ProtocolErrorKind = 'bad-magic' | 'unknown-type' | 'oversized' | 'bad-field';

export interface ProtocolError {
  readonly kind: ProtocolErrorKind;
  readonly message: string;
}

export type Decoded<T> =
  | { readonly kind: 'frame'; readonly frame: T }
  | { readonly kind: 'incomplete' }
  | { readonly kind: 'error'; readonly error: ProtocolError };

const incomplete = { kind: 'incomplete' } as const;
const fail = (kind: ProtocolErrorKind, message: string) =>
  ({ kind: 'error', error: { kind, message } }) as const;

/**
 * Received bytes not yet decoded. Chunks are kept as they came so that a 32 MiB payload is copied
 * once, when it is taken, not on every chunk.
 */
export class ByteQueue {
  private chunks: Buffer[] = [];
  private bytes = 0;

  get length(): number {
    return this.bytes;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.bytes += chunk.length;
  }

  /** The first `n` bytes, not consumed. */
  peek(n: number): Buffer {
    assert(n <= this.bytes, 'peek past the end of the queue');
    const first = this.chunks[0];
    if (first !== undefined && first.length >= n) return first.subarray(0, n);
    return Buffer.concat(this.chunks, this.bytes).subarray(0, n);
  }

  /** Remove and return the first `n` bytes. */
  take(n: number): Buffer {
    assert(n <= this.bytes, 'take past the end of the queue');
    const first = this.chunks[0];
    if (first !== undefined && first.length >= n) {
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      this.bytes -= n;
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const c = this.chunks[0]!;
      const part = Math.min(c.length, n - filled);
      c.copy(out, filled, 0, part);
      filled += part;
      if (part === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(part);
    }
    this.bytes -= n;
    return out;
  }
}

// ---------------------------------------------------------------------------------------------
// Hello

export interface Hello {
  readonly version: number;
  /** Server: Status.OK to go on; an error status means the server refuses and closes. */
  readonly status: number;
  readonly maxPayloadBytes: number;
  readonly maxInFlight: number;
  readonly maxInFlightBytes: number;
}

export function encodeHello(h: Hello): Buffer {
  const b = Buffer.alloc(HELLO_BYTES);
  HELLO_MAGIC.copy(b, 0);
  b.writeUInt16BE(h.version, 8);
  b.writeUInt16BE(h.status, 10);
  b.writeUInt32BE(h.maxPayloadBytes, 12);
  b.writeUInt32BE(h.maxInFlight, 16);
  b.writeUInt32BE(h.maxInFlightBytes, 20);
  return b;
}

export function decodeHello(q: ByteQueue): Decoded<Hello> {
  if (q.length < HELLO_BYTES) {
    // Reject a wrong magic as soon as it shows, so a stray HTTP or NBD client is told at once.
    const seen = Math.min(q.length, HELLO_MAGIC.length);
    if (!q.peek(seen).equals(HELLO_MAGIC.subarray(0, seen))) return fail('bad-magic', 'bad hello magic');
    return incomplete;
  }
  const b = q.peek(HELLO_BYTES);
  if (!b.subarray(0, 8).equals(HELLO_MAGIC)) return fail('bad-magic', 'bad hello magic');
  q.take(HELLO_BYTES);
  return {
    kind: 'frame',
    frame: {
      version: b.readUInt16BE(8),
      status: b.readUInt16BE(10),
      maxPayloadBytes: b.readUInt32BE(12),
      maxInFlight: b.readUInt32BE(16),
      maxInFlightBytes: b.readUInt32BE(20),
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Requests

export interface Request {
  readonly type: RequestType;
  readonly flags: number;
  readonly reserved: number;
  readonly cookie: bigint;
  readonly handle: number;
  /** OPEN/WRITE: payload bytes; READ: bytes to read; else must be 0. */
  readonly length: number;
  readonly offset: bigint;
  /** 0 = the host gave no time. */
  readonly writeTimeUs: bigint;
  /** OPEN: the volume name; WRITE: the data; else empty. */
  readonly payload: Buffer;
}

export type RequestHeader = Omit<Request, 'payload'>;

/** Payload bytes that follow a request header of this type (0 for types without payload). */
function requestPayloadBytes(type: RequestType, length: number): number {
  return type === RequestType.open || type === RequestType.write ? length : 0;
}

/** Encode a request header; the caller sends `payload` right after it. */
export function encodeRequestHeader(r: RequestHeader): Buffer {
  const b = Buffer.alloc(REQUEST_HEADER_BYTES);
  b.writeUInt32BE(REQUEST_MAGIC, 0);
  b.writeUInt8(r.type, 4);
  b.writeUInt8(r.flags, 5);
  b.writeUInt16BE(r.reserved, 6);
  b.writeBigUInt64BE(r.cookie, 8);
  b.writeUInt32BE(r.handle, 16);
  b.writeUInt32BE(r.length, 20);
  b.writeBigUInt64BE(r.offset, 24);
  b.writeBigUInt64BE(r.writeTimeUs, 32);
  return b;
}

export function encodeRequest(r: Request): Buffer {
  return Buffer.concat([encodeRequestHeader(r), r.payload]);
}

/**
 * Decode one request from the front of `q`, consuming it only when it is complete. Checks only
 * what framing needs (magic, type, payload limits); checkRequest() judges the fields.
 */
export function decodeRequest(q: ByteQueue): Decoded<Request> {
  if (q.length < REQUEST_HEADER_BYTES) return incomplete;
  const h = q.peek(REQUEST_HEADER_BYTES);
  const magic = h.readUInt32BE(0);
  if (magic !== REQUEST_MAGIC) return fail('bad-magic', `bad request magic 0x${magic.toString(16)}`);
  const type = h.readUInt8(4);
  if (!isRequestType(type)) return fail('unknown-type', `unknown request type ${type}`);
  const length = h.readUInt32BE(20);
  const payloadBytes = requestPayloadBytes(type, length);
  const limit = type === RequestType.open ? NATIVE_MAX_VOLUME_NAME_BYTES : NATIVE_MAX_PAYLOAD_BYTES;
  if (payloadBytes > limit) {
    return fail('oversized', `${requestTypeName(type)} payload of ${payloadBytes} bytes exceeds ${limit}`);
  }
  if (q.length < REQUEST_HEADER_BYTES + payloadBytes) return incomplete;
  q.take(REQUEST_HEADER_BYTES);
  const payload = payloadBytes > 0 ? q.take(payloadBytes) : Buffer.alloc(0);
  return {
    kind: 'frame',
    frame: {
      type,
      flags: h.readUInt8(5),
      reserved: h.readUInt16BE(6),
      cookie: h.readBigUInt64BE(8),
      handle: h.readUInt32BE(16),
      length,
      offset: h.readBigUInt64BE(24),
      writeTimeUs: h.readBigUInt64BE(32),
      payload,
    },
  };
}

export interface RequestProblem {
  readonly status: Status;
  readonly message: string;
}

/**
 * Field checks that do not need the volume: unused fields zero, known flags, lengths within
 * limits, offsets and write times exact as JS numbers. Returns undefined when the request is
 * well-formed; the server answers a problem with an error reply and keeps the connection.
 */
export function checkRequest(r: Request): RequestProblem | undefined {
  const bad = (message: string): RequestProblem => ({ status: Status.EINVAL, message });
  if (r.reserved !== 0) return bad('reserved header bits set');
  const allowedFlags = r.type === RequestType.write ? RequestFlag.fua : 0;
  if ((r.flags & ~allowedFlags) !== 0) return bad(`flags 0x${r.flags.toString(16)} not valid here`);
  const usesHandle = r.type !== RequestType.open;
  const usesRange = r.type === RequestType.write || r.type === RequestType.read;
  if (!usesHandle && r.handle !== 0) return bad('handle must be 0');
  if (!usesRange && r.offset !== 0n) return bad('offset must be 0');
  if (r.type !== RequestType.write && r.writeTimeUs !== 0n) return bad('writeTimeUs is only for WRITE');
  if (r.type === RequestType.open && (r.length === 0 || !isUtf8(r.payload))) {
    return bad('volume name must be non-empty UTF-8');
  }
  if ((r.type === RequestType.flush || r.type === RequestType.close) && r.length !== 0) {
    return bad('length must be 0');
  }
  if (usesRange) {
    if (r.length === 0) return bad('length must be at least 1');
    if (r.length > NATIVE_MAX_PAYLOAD_BYTES) return bad(`length exceeds ${NATIVE_MAX_PAYLOAD_BYTES}`);
    if (r.offset + BigInt(r.length) > NATIVE_MAX_SAFE_U64) return bad('offset out of range');
  }
  if (r.writeTimeUs > NATIVE_MAX_SAFE_U64) return bad('writeTimeUs must be below 2^53');
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Replies

export interface Reply {
  /** The request's type, echoed (0 when the request could not be read far enough to know it). */
  readonly type: number;
  readonly status: number;
  readonly cookie: bigint;
  readonly payload: Buffer;
}

export function encodeReplyHeader(type: number, status: number, cookie: bigint, length: number): Buffer {
  const b = Buffer.alloc(REPLY_HEADER_BYTES);
  b.writeUInt32BE(REPLY_MAGIC, 0);
  b.writeUInt8(type, 4);
  b.writeUInt16BE(status, 6);
  b.writeBigUInt64BE(cookie, 8);
  b.writeUInt32BE(length, 16);
  return b;
}

export function encodeReply(r: Reply): Buffer {
  return Buffer.concat([encodeReplyHeader(r.type, r.status, r.cookie, r.payload.length), r.payload]);
}

/** An error reply whose payload is `message`, cut to NATIVE_MAX_ERROR_MESSAGE_BYTES. */
export function encodeErrorReply(type: number, status: Status, cookie: bigint, message: string): Buffer {
  let text = Buffer.from(message, 'utf8').subarray(0, NATIVE_MAX_ERROR_MESSAGE_BYTES);
  // Cut on a character boundary so the peer can decode it.
  while (text.length > 0 && !isUtf8(text)) text = text.subarray(0, text.length - 1);
  return encodeReply({ type, status, cookie, payload: text });
}

export function decodeReply(q: ByteQueue): Decoded<Reply> {
  if (q.length < REPLY_HEADER_BYTES) return incomplete;
  const h = q.peek(REPLY_HEADER_BYTES);
  const magic = h.readUInt32BE(0);
  if (magic !== REPLY_MAGIC) return fail('bad-magic', `bad reply magic 0x${magic.toString(16)}`);
  const length = h.readUInt32BE(16);
  if (length > NATIVE_MAX_PAYLOAD_BYTES) {
    return fail('oversized', `reply payload of ${length} bytes exceeds ${NATIVE_MAX_PAYLOAD_BYTES}`);
  }
  if (q.length < REPLY_HEADER_BYTES + length) return incomplete;
  q.take(REPLY_HEADER_BYTES);
  const payload = length > 0 ? q.take(length) : Buffer.alloc(0);
  return {
    kind: 'frame',
    frame: { type: h.readUInt8(4), status: h.readUInt16BE(6), cookie: h.readBigUInt64BE(8), payload },
  };
}

export interface OpenInfo {
  readonly handle: number;
  readonly readOnly: boolean;
  readonly sizeBytes: number;
}

export function encodeOpenInfo(info: OpenInfo): Buffer {
  const b = Buffer.alloc(OPEN_REPLY_BYTES);
  b.writeUInt32BE(info.handle, 0);
  b.writeUInt32BE(info.readOnly ? OpenFlag.readOnly : 0, 4);
  b.writeBigUInt64BE(BigInt(info.sizeBytes), 8);
  return b;
}

export function decodeOpenInfo(payload: Buffer): OpenInfo | ProtocolError {
  if (payload.length !== OPEN_REPLY_BYTES) {
    return { kind: 'bad-field', message: `OPEN reply payload of ${payload.length} bytes` };
  }
  const size = payload.readBigUInt64BE(8);
  if (size > NATIVE_MAX_SAFE_U64) return { kind: 'bad-field', message: 'volume size beyond 2^53' };
  return {
    handle: payload.readUInt32BE(0),
    readOnly: (payload.readUInt32BE(4) & OpenFlag.readOnly) !== 0,
    sizeBytes: Number(size),
  };
}
