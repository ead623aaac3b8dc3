/**
 * NBD wire constants, limits and the handshake-phase codec (doc/proto.md of NetworkBlockDevice/nbd).
 *
 * Owns every number that goes on the wire and every limit the server enforces on client input.
 * The handshake (handshake.ts) and transmission (transmission.ts) phases use it; nothing here
 * does I/O. Decoders never throw on client input: they return a value or a typed error.
 *
 * Handshake (fixed newstyle), all integers big-endian:
 *
 *   S: 'NBDMAGIC' u64 | 'IHAVEOPT' u64 | handshake flags u16
 *   C: client flags u32
 *   C: 'IHAVEOPT' u64 | option u32 | length u32 | data[length]          (repeated)
 *   S: 0x3e889045565a9 u64 | option u32 | reply type u32 | length u32 | data[length]
 *
 * Transmission:
 *
 *   C: 0x25609513 u32 | flags u16 | type u16 | handle u64 | offset u64 | length u32 | data (WRITE)
 *   S: 0x67446698 u32 | error u32 | handle u64 | data (READ, simple reply)
 *   S: 0x668e33ef u32 | flags u16 | type u16 | handle u64 | length u32 | payload (structured chunk)
 */
import { assert } from '../../core/assert.js';
import type { BackendErrno } from '../backend.js';

const KiB = 1024;
const MiB = 1024 * KiB;

// ---- Magic numbers ------------------------------------------------------------------------------

/** 'NBDMAGIC' */
export const NBD_MAGIC = 0x4e42444d41474943n;
/** 'IHAVEOPT': server greeting and every client option header. */
export const IHAVEOPT = 0x49484156454f5054n;
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// ---- Handshake flags ----------------------------------------------------------------------------

export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;
export const FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_C_NO_ZEROES = 1 << 1;
export const CLIENT_FLAGS_KNOWN = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;

// ---- Options and option replies -----------------------------------------------------------------

export const Opt = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  /** Known but not supported: answered with ERR_UNSUP (still an experiment in our clients). */
  EXTENDED_HEADERS: 11,
} as const;

export const Rep = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: 0x80000001,
  ERR_POLICY: 0x80000002,
  ERR_INVALID: 0x80000003,
  ERR_PLATFORM: 0x80000004,
  ERR_TLS_REQD: 0x80000005,
  ERR_UNKNOWN: 0x80000006,
  ERR_SHUTDOWN: 0x80000007,
  ERR_BLOCK_SIZE_REQD: 0x80000008,
  ERR_TOO_BIG: 0x80000009,
} as const;

export const Info = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;

// ---- Transmission flags (per export, sent in NBD_INFO_EXPORT / EXPORT_NAME reply) ---------------

export const TFlag = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
} as const;

// ---- Commands, command flags, replies -----------------------------------------------------------

export const Cmd = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
} as const;

export const CmdFlag = {
  FUA: 1 << 0,
  NO_HOLE: 1 << 1,
  DF: 1 << 2,
  REQ_ONE: 1 << 3,
  FAST_ZERO: 1 << 4,
} as const;

export const ReplyFlag = { DONE: 1 << 0 } as const;

export const ReplyType = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  ERROR: 0x8001,
  ERROR_OFFSET: 0x8002,
} as const;

/** NBD error values (not host errno: the protocol fixes them). */
export const NbdErrno = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;
export type NbdErrnoValue = (typeof NbdErrno)[keyof typeof NbdErrno];

export function nbdErrnoOf(errno: BackendErrno): NbdErrnoValue {
  return NbdErrno[errno];
}

/** The one metadata context we serve, and the id we give it in SET_META_CONTEXT replies. */
export const CONTEXT_BASE_ALLOCATION = 'base:allocation';
export const CONTEXT_ID_BASE_ALLOCATION = 1;

// ---- Sizes and limits ---------------------------------------------------------------------------

export const REQUEST_HEADER_BYTES = 28;
export const SIMPLE_REPLY_HEADER_BYTES = 16;
export const STRUCTURED_REPLY_HEADER_BYTES = 20;
export const OPTION_HEADER_BYTES = 16;
export const OPTION_REPLY_HEADER_BYTES = 20;
/** Bytes of zeroes after an EXPORT_NAME reply unless NO_ZEROES was agreed. */
export const EXPORT_NAME_ZEROES_BYTES = 124;

/** Advertised in NBD_INFO_BLOCK_SIZE; requests not aligned to the minimum get EINVAL. */
export const BLOCK_SIZE_MIN_BYTES = 512;
export const BLOCK_SIZE_PREFERRED_BYTES = 4 * KiB;
/** Largest READ, WRITE, CACHE (and WRITE_ZEROES without FAST_ZERO) we accept; larger get EINVAL. */
export const REQUEST_LENGTH_MAX_BYTES = 32 * MiB;
/** An oversized WRITE up to this size has its payload skipped to stay in sync; beyond, disconnect. */
export const WRITE_SKIP_MAX_BYTES = 64 * MiB;
/** Largest option payload we parse; NBD strings are at most 4096 bytes. */
export const OPTION_LENGTH_MAX_BYTES = 64 * KiB;
/** An oversized option up to this size is skipped and errored; beyond, disconnect. */
export const OPTION_SKIP_MAX_BYTES = 1 * MiB;
/** Options one connection may send before entering transmission (a DoS bound). */
export const OPTIONS_PER_CONNECTION_MAX = 1024;
/** NBD strings (export names, queries) MUST be no longer than this. */
export const STRING_MAX_BYTES = 4096;
/** Error messages we attach to structured ERROR chunks are cut to this many bytes. */
export const ERROR_MESSAGE_MAX_BYTES = 256;
/** Requests dispatched and not yet answered, per connection; reading pauses at the bound. */
export const REQUESTS_IN_FLIGHT_MAX = 256;
/** READ lengths plus WRITE payloads in flight per connection; reading pauses at the bound. */
export const BYTES_IN_FLIGHT_MAX = 256 * MiB;
/** Reply bytes queued in the socket before we stop reading new requests. */
export const OUTPUT_QUEUED_MAX_BYTES = 64 * MiB;
/** Gathered WRITE payload buffers kept per connection for reuse (a QD16 stream of 1 MiB writes). */
export const PAYLOAD_POOL_BYTES_MAX = 16 * MiB;
/** Replies are encoded into slabs of this size (a larger reply gets a slab of its own). */
export const REPLY_SLAB_BYTES = 64 * KiB;
/** A connection still negotiating after this long is closed (qemu-nbd's default is 10 s). */
export const HANDSHAKE_TIMEOUT_MS = 30_000;
/** After a clean close starts (DISC, shutdown), the socket is destroyed if still open this late. */
export const CLOSE_LINGER_MS = 2000;
/** Extents per BLOCK_STATUS reply (without REQ_ONE); the client asks again for the rest. */
export const BLOCK_STATUS_EXTENTS_MAX = 1024;

assert(REQUEST_LENGTH_MAX_BYTES <= WRITE_SKIP_MAX_BYTES, 'oversized writes are skippable');
assert(REQUEST_LENGTH_MAX_BYTES <= BYTES_IN_FLIGHT_MAX, 'one maximal request fits the in-flight bound');
assert(REQUEST_LENGTH_MAX_BYTES % BLOCK_SIZE_MIN_BYTES === 0, 'max block size is a multiple of min');
assert(BLOCK_SIZE_PREFERRED_BYTES % BLOCK_SIZE_MIN_BYTES === 0, 'preferred is a multiple of min');
assert(STRING_MAX_BYTES < OPTION_LENGTH_MAX_BYTES, 'an option can carry a maximal string');
assert(OPTION_LENGTH_MAX_BYTES <= OPTION_SKIP_MAX_BYTES, 'oversized options are skippable');

// ---- Encoders -----------------------------------------------------------------------------------

export function encodeGreeting(): Buffer {
  const b = Buffer.alloc(18);
  b.writeBigUInt64BE(NBD_MAGIC, 0);
  b.writeBigUInt64BE(IHAVEOPT, 8);
  b.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16);
  return b;
}

export function encodeOptionReply(option: number, type: number, data?: Buffer): Buffer {
  const len = data ? data.length : 0;
  const b = Buffer.alloc(OPTION_REPLY_HEADER_BYTES + len);
  b.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(len, 16);
  if (data) data.copy(b, OPTION_REPLY_HEADER_BYTES);
  return b;
}

export function encodeOptionError(option: number, type: number, message: string): Buffer {
  return encodeOptionReply(option, type, Buffer.from(truncateUtf8(message, ERROR_MESSAGE_MAX_BYTES)));
}

/** NBD_REP_SERVER payload: name length, name, then a human-readable description. */
export function encodeServerEntry(name: string, description: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const d = Buffer.from(description, 'utf8');
  const b = Buffer.alloc(4 + n.length + d.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  d.copy(b, 4 + n.length);
  return b;
}

export function encodeInfoExport(sizeBytes: number, transmissionFlags: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt16BE(Info.EXPORT, 0);
  b.writeBigUInt64BE(BigInt(sizeBytes), 2);
  b.writeUInt16BE(transmissionFlags, 10);
  return b;
}

export function encodeInfoString(type: typeof Info.NAME | typeof Info.DESCRIPTION, text: string): Buffer {
  const s = Buffer.from(truncateUtf8(text, STRING_MAX_BYTES), 'utf8');
  const b = Buffer.alloc(2 + s.length);
  b.writeUInt16BE(type, 0);
  s.copy(b, 2);
  return b;
}

export function encodeInfoBlockSize(): Buffer {
  const b = Buffer.alloc(14);
  b.writeUInt16BE(Info.BLOCK_SIZE, 0);
  b.writeUInt32BE(BLOCK_SIZE_MIN_BYTES, 2);
  b.writeUInt32BE(BLOCK_SIZE_PREFERRED_BYTES, 6);
  b.writeUInt32BE(REQUEST_LENGTH_MAX_BYTES, 10);
  return b;
}

export function encodeMetaContext(id: number, name: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.alloc(4 + n.length);
  b.writeUInt32BE(id, 0);
  n.copy(b, 4);
  return b;
}

/** The EXPORT_NAME reply: size, transmission flags, and 124 zeroes unless NO_ZEROES. */
export function encodeExportNameReply(sizeBytes: number, flags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(10 + (noZeroes ? 0 : EXPORT_NAME_ZEROES_BYTES));
  b.writeBigUInt64BE(BigInt(sizeBytes), 0);
  b.writeUInt16BE(flags, 8);
  return b;
}

/** Transmission flags for an export: everything we support, less writes on a read-only export. */
export function transmissionFlagsFor(readOnly: boolean): number {
  const always = TFlag.HAS_FLAGS | TFlag.SEND_FLUSH | TFlag.SEND_CACHE | TFlag.CAN_MULTI_CONN;
  if (readOnly) return always | TFlag.READ_ONLY;
  return always | TFlag.SEND_FUA | TFlag.SEND_TRIM | TFlag.SEND_WRITE_ZEROES | TFlag.SEND_FAST_ZERO;
}

export function truncateUtf8(text: string, maxBytes: number): string {
  const b = Buffer.from(text, 'utf8');
  if (b.length <= maxBytes) return text;
  // Cut on a character boundary: drop continuation bytes (10xxxxxx) at the cut.
  let end = maxBytes;
  while (end > 0 && ((b[end] ?? 0) & 0xc0) === 0x80) end--;
  return b.subarray(0, end).toString('utf8');
}

// ---- Option payload decoders (never throw) ------------------------------------------------------

export type Decoded<T> = { ok: true; value: T } | { ok: false; reason: string };

export interface InfoRequest {
  readonly name: string;
  readonly infos: readonly number[];
}

/** NBD_OPT_INFO / NBD_OPT_GO: name length u32, name, count u16, count x info type u16. */
export function decodeInfoRequest(data: Buffer): Decoded<InfoRequest> {
  if (data.length < 6) return { ok: false, reason: 'info request shorter than 6 bytes' };
  const nameLen = data.readUInt32BE(0);
  if (nameLen > data.length - 6) return { ok: false, reason: 'export name longer than the option' };
  const name = decodeString(data, 4, nameLen);
  if (!name.ok) return name;
  const count = data.readUInt16BE(4 + nameLen);
  if (data.length !== 6 + nameLen + 2 * count) return { ok: false, reason: 'info request count mismatch' };
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(data.readUInt16BE(6 + nameLen + 2 * i));
  return { ok: true, value: { name: name.value, infos } };
}

export interface MetaContextRequest {
  readonly exportName: string;
  readonly queries: readonly string[];
}

/** LIST/SET_META_CONTEXT: name length u32, name, count u32, count x (length u32, query). */
export function decodeMetaContextRequest(data: Buffer): Decoded<MetaContextRequest> {
  if (data.length < 8) return { ok: false, reason: 'meta context request shorter than 8 bytes' };
  const nameLen = data.readUInt32BE(0);
  if (nameLen > data.length - 8) return { ok: false, reason: 'export name longer than the option' };
  const name = decodeString(data, 4, nameLen);
  if (!name.ok) return name;
  let at = 4 + nameLen;
  const count = data.readUInt32BE(at);
  at += 4;
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (data.length - at < 4) return { ok: false, reason: 'query count exceeds the option' };
    const qLen = data.readUInt32BE(at);
    at += 4;
    if (qLen > data.length - at) return { ok: false, reason: 'query longer than the option' };
    const q = decodeString(data, at, qLen);
    if (!q.ok) return q;
    queries.push(q.value);
    at += qLen;
  }
  if (at !== data.length) return { ok: false, reason: 'trailing bytes after the queries' };
  return { ok: true, value: { exportName: name.value, queries } };
}

/** A protocol string: at most STRING_MAX_BYTES, valid UTF-8, no NUL. */
export function decodeString(data: Buffer, start: number, length: number): Decoded<string> {
  if (length > STRING_MAX_BYTES) return { ok: false, reason: `string longer than ${STRING_MAX_BYTES} bytes` };
  const bytes = data.subarray(start, start + length);
  if (bytes.includes(0)) return { ok: false, reason: 'string contains NUL' };
  try {
    return { ok: true, value: utf8Strict.decode(bytes) };
  } catch {
    return { ok: false, reason: 'string is not valid UTF-8' };
  }
}

const utf8Strict = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * Which of our contexts a query selects. LIST: 'base:' is a wildcard for the namespace. SET:
 * 'base:' selects nothing. Unknown namespaces and leaf names select nothing (never an error).
 */
export function contextsMatching(query: string, forList: boolean): string[] {
  if (query === CONTEXT_BASE_ALLOCATION) return [CONTEXT_BASE_ALLOCATION];
  if (forList && query === 'base:') return [CONTEXT_BASE_ALLOCATION];
  return [];
}
