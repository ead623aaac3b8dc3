/**
 * The link protocol's one codec (STYLE.md 6): constants, limits, frame types and one encode/decode
 * pair per frame, for the node-to-node link (DESIGN.md §3.2, §3.3, §3.7). The sessions over
 * TCP/TLS, the sender and the receiver use it; they never touch frame bytes themselves. The
 * streaming decoder (decoder.ts) cuts a byte stream into frames with it. doc/link-protocol.md is the
 * user's copy of the diagrams below.
 *
 * Encoding asserts (a bad frame built by this node is a programmer error); decoding never throws on
 * any input and returns `{ ok: true, frame }` or `{ ok: false, error: { code, reason } }`, because
 * it reads peer bytes (STYLE.md 3). Journal records travel in RECORDS frames in exactly their
 * journal encoding (src/storage/record.ts), so a target journals the bytes it received and a
 * record keeps its checksum from the source's journal to the target's.
 *
 * Frame, little-endian like the journal record (byte offsets on the left):
 *
 *    0 +--------+--------+--------+--------+
 *      |      magic "RCLK" (4 ASCII bytes) |
 *    4 +--------+--------+--------+--------+
 *      |version | type   | flags (u16, 0)  |   version = 1; type = FrameType
 *    8 +--------+--------+--------+--------+
 *      |      payloadLen (u32)             |   <= LINK_FRAME_PAYLOAD_BYTES_MAX (64 MiB); before
 *      |                                   |      authentication <= LINK_HANDSHAKE_PAYLOAD_BYTES_MAX
 *   12 +--------+--------+--------+--------+
 *      |      crc32c (u32)                 |   over the 16 header bytes (crc field zeroed) + payload
 *   16 +-----------------------------------+
 *      |      payload: payloadLen bytes    |   by type, below
 *      +-----------------------------------+
 *
 * Payload fields (name = u8 length + utf8, at most 64 bytes, no control characters, as in the
 * journal; text = u16 length + utf8, at most 1024 bytes; u64 = two u32 halves, value < 2^53):
 *
 *   1 HELLO              versionMin u16, versionMax u16, nonce 32 bytes, nodeName name,
 *                        clusterId name (may be empty), groupCount u16, groupCount x group name
 *   2 CHALLENGE_RESPONSE proof 32 bytes = authProof(secret, peer's nonce, prover, verifier)
 *   3 AUTH_OK            (empty)
 *   4 AUTH_FAIL          reason text
 *   5 RECORDS            group name, epoch u32, count u32, count x journal record (record.ts bytes)
 *   6 ACK                group name, epoch u32, durableSeq u64   "journalled durably up to here"
 *   7 TICK               group name, epoch u32, seq u64, key: writeTimeUs u64, nodeId u32,
 *                        ordinal u64                          "nothing with a key below K follows seq"
 *   8 RESUME             group name, epoch u32, nextSeq u64 (>= 1)
 *   9 HEARTBEAT          sentTimeUs u64, echoTimeUs u64 (the peer's last sentTimeUs, 0 = none)
 *  10 ERROR              code name ([A-Z][A-Z0-9_]*), message text
 *  11 EPOCH              group name, epoch u32
 *
 * Every payload is consumed exactly: trailing bytes are an error, so each frame has one encoding.
 * The header layout and the HELLO payload are frozen: a later protocol version still sends and
 * reads them, so two nodes can always agree on a version (negotiateVersion).
 */
import { isUtf8 } from 'node:buffer';
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { crc32c } from '@node-rs/crc32';
import { assert, unreachable } from '../core/assert.js';
import type { OrderKey, RecordHeader, Seq, TimeUs } from '../core/types.js';
import { byteOffset, nodeIdFromNumber, ordinal, RecordKind, seq, timeUs } from '../core/types.js';
import { MiB } from '../core/units.js';
import {
  decodeRecord,
  encodeHeader,
  encodingFits,
  isValidName,
  RECORD_BYTES_MAX,
  RECORD_HEADER_BYTES,
  RECORD_NAME_BYTES_MAX,
} from '../storage/record.js';

// ---------------------------------------------------------------------------------------------
// Constants and limits

/** The first four bytes of every frame, in stream order. */
export const LINK_MAGIC = Buffer.from('RCLK', 'latin1');
/** Frame format version written in every header; the only one this code reads. */
export const LINK_FRAME_VERSION = 1;
/** Protocol versions this code speaks, offered in HELLO. */
export const LINK_VERSION_MIN = 1;
export const LINK_VERSION_MAX = 1;
/** Bytes of the fixed frame header. */
export const LINK_FRAME_HEADER_BYTES = 16;
/** Payload bytes of one frame, at most. A peer declaring more is refused before it is buffered. */
export const LINK_FRAME_PAYLOAD_BYTES_MAX = 64 * MiB;
/** Journal records in one RECORDS frame, at most. */
export const LINK_BATCH_RECORDS_MAX = 4096;
/** utf8 bytes of a node, cluster, group name or error code, at most (the journal's name limit). */
export const LINK_NAME_BYTES_MAX = RECORD_NAME_BYTES_MAX;
/** Groups listed in one HELLO, at most. */
export const LINK_HELLO_GROUPS_MAX = 1024;
/** utf8 bytes of an AUTH_FAIL reason or ERROR message, at most (longer ones are cut on encode). */
export const LINK_TEXT_BYTES_MAX = 1024;
/** Bytes of the HELLO nonce. */
export const LINK_NONCE_BYTES = 32;
/** Bytes of a CHALLENGE_RESPONSE proof (HMAC-SHA256). */
export const LINK_PROOF_BYTES = 32;
/** Largest epoch: a u32, as in the journal record. */
export const LINK_EPOCH_MAX = 0xffffffff;

const U16_MAX = 0xffff;
const U32_MAX = 0xffffffff;
const TWO_POW_32 = 4294967296;
/** The high half of a u64 holding a number <= Number.MAX_SAFE_INTEGER. */
const U64_HIGH_MAX = 0x1fffff;

const OFF_VERSION = 4;
const OFF_TYPE = 5;
const OFF_FLAGS = 6;
const OFF_LENGTH = 8;
const OFF_CRC = 12;

/** RECORDS payload before the records, at most: group name, epoch, count. */
const RECORDS_PREFIX_BYTES_MAX = 1 + LINK_NAME_BYTES_MAX + 4 + 4;
/** HELLO payload, at most. */
const HELLO_BYTES_MAX =
  4 +
  LINK_NONCE_BYTES +
  2 * (1 + LINK_NAME_BYTES_MAX) +
  2 +
  LINK_HELLO_GROUPS_MAX * (1 + LINK_NAME_BYTES_MAX);
/** CHALLENGE_RESPONSE, AUTH_OK, AUTH_FAIL and ERROR payloads, at most. */
const CHALLENGE_RESPONSE_BYTES_MAX = LINK_PROOF_BYTES;
const AUTH_OK_BYTES_MAX = 0;
const AUTH_FAIL_BYTES_MAX = 2 + LINK_TEXT_BYTES_MAX;
const ERROR_BYTES_MAX = 1 + LINK_NAME_BYTES_MAX + 2 + LINK_TEXT_BYTES_MAX;
/**
 * Payload bytes of one frame before a session is authenticated, at most: the largest frame the
 * handshake can carry (HELLO with every field at its limit, CHALLENGE_RESPONSE, AUTH_OK, AUTH_FAIL,
 * ERROR). A session decodes with this limit until it is ready, so a peer that has proved nothing
 * makes a node buffer at most one such frame, not LINK_FRAME_PAYLOAD_BYTES_MAX.
 */
export const LINK_HANDSHAKE_PAYLOAD_BYTES_MAX = Math.max(
  HELLO_BYTES_MAX,
  CHALLENGE_RESPONSE_BYTES_MAX,
  AUTH_OK_BYTES_MAX,
  AUTH_FAIL_BYTES_MAX,
  ERROR_BYTES_MAX,
);

assert(LINK_MAGIC.length === 4, 'magic is 4 bytes');
assert(OFF_CRC + 4 === LINK_FRAME_HEADER_BYTES, 'header layout covers the header exactly');
assert(LINK_FRAME_PAYLOAD_BYTES_MAX <= U32_MAX, 'payload length fits in a u32');
assert(
  RECORDS_PREFIX_BYTES_MAX + RECORD_BYTES_MAX <= LINK_FRAME_PAYLOAD_BYTES_MAX,
  'one record of the largest size fits in a RECORDS frame',
);
assert(
  RECORDS_PREFIX_BYTES_MAX + LINK_BATCH_RECORDS_MAX * RECORD_HEADER_BYTES <= LINK_FRAME_PAYLOAD_BYTES_MAX,
  'a full batch of the smallest records fits in a RECORDS frame',
);
assert(HELLO_BYTES_MAX <= LINK_FRAME_PAYLOAD_BYTES_MAX, 'the largest HELLO fits in a frame');
assert(
  LINK_HANDSHAKE_PAYLOAD_BYTES_MAX <= LINK_FRAME_PAYLOAD_BYTES_MAX,
  'the handshake limit is below the frame limit',
);
assert(LINK_NAME_BYTES_MAX <= 255, 'name lengths fit in a u8');
assert(LINK_HELLO_GROUPS_MAX <= U16_MAX, 'group count fits in a u16');
assert(LINK_TEXT_BYTES_MAX <= U16_MAX, 'text lengths fit in a u16');
assert(LINK_BATCH_RECORDS_MAX >= 1, 'a batch holds a record');
assert(1 <= LINK_VERSION_MIN && LINK_VERSION_MIN <= LINK_VERSION_MAX, 'version range');
assert(LINK_VERSION_MAX <= U16_MAX, 'versions fit in a u16');

/** Frame types. Wire codes: never renumber. */
export const FrameType = {
  hello: 1,
  challengeResponse: 2,
  authOk: 3,
  authFail: 4,
  records: 5,
  ack: 6,
  tick: 7,
  resume: 8,
  heartbeat: 9,
  error: 10,
  epoch: 11,
  pairState: 12,
} as const;
export type FrameType = (typeof FrameType)[keyof typeof FrameType];

export function frameTypeName(t: number): string {
  for (const [name, v] of Object.entries(FrameType)) if (v === t) return name;
  return `unknown(${t})`;
}

function isFrameType(t: number): t is FrameType {
  return t >= FrameType.hello && t <= FrameType.pairState;
}

// ---------------------------------------------------------------------------------------------
// Frame types

export interface HelloFrame {
  readonly type: typeof FrameType.hello;
  readonly versionMin: number;
  readonly versionMax: number;
  /** 32 random bytes (newNonce): the peer proves the secret over them. */
  readonly nonce: Buffer;
  readonly nodeName: string;
  /** '' when the cluster is identified by its groups only. */
  readonly clusterId: string;
  /** Groups this node replicates with the peer. */
  readonly groups: readonly string[];
}
export interface ChallengeResponseFrame {
  readonly type: typeof FrameType.challengeResponse;
  readonly proof: Buffer;
}
export interface AuthOkFrame {
  readonly type: typeof FrameType.authOk;
}
export interface AuthFailFrame {
  readonly type: typeof FrameType.authFail;
  readonly reason: string;
}
/**
 * A journal record to send: what the journal returns. `head`, when given, is its header and names
 * as the journal encoded them (checksum over them and the payload set): sent as it is.
 */
export interface LinkRecord {
  readonly header: RecordHeader;
  readonly payload: Buffer;
  readonly head?: Buffer | undefined;
}
/** A journal record received: `bytes` is its exact journal encoding, to be journalled as is. */
export interface ReceivedRecord extends LinkRecord {
  readonly bytes: Buffer;
}
/**
 * A batch of one group's records: seqs contiguous and increasing, no ticks (they are never
 * journalled), each record's epoch <= the frame's epoch.
 */
export interface RecordsFrame<R extends LinkRecord = ReceivedRecord> {
  readonly type: typeof FrameType.records;
  readonly group: string;
  readonly epoch: number;
  readonly records: readonly R[];
}
/** The target's report: every record of the group up to `durableSeq` is durable in its journal. */
export interface AckFrame {
  readonly type: typeof FrameType.ack;
  readonly group: string;
  readonly epoch: number;
  readonly durableSeq: Seq;
  /** Every record up to `appliedSeq` is applied at a completed cut (<= durableSeq). */
  readonly appliedSeq: Seq;
}
/** An idle group's progress: nothing with a key below `key` follows `seq` (DESIGN.md §3.3). */
export interface TickFrame {
  readonly type: typeof FrameType.tick;
  readonly group: string;
  readonly epoch: number;
  readonly seq: Seq;
  readonly key: OrderKey;
}
/** Sent by the target on (re)connect: the source continues at `nextSeq`, no gap, no duplicate. */
export interface ResumeFrame {
  readonly type: typeof FrameType.resume;
  readonly group: string;
  readonly epoch: number;
  readonly nextSeq: Seq;
}
export interface HeartbeatFrame {
  readonly type: typeof FrameType.heartbeat;
  readonly sentTimeUs: TimeUs;
  /** The peer's latest `sentTimeUs`, echoed so it can measure the round trip; 0 = none yet. */
  readonly echoTimeUs: TimeUs;
}
export interface ErrorFrame {
  readonly type: typeof FrameType.error;
  /** A stable code such as RC_ERR_PROTOCOL (src/core/errors.ts): [A-Z][A-Z0-9_]*. */
  readonly code: string;
  readonly message: string;
}
/** The sender's epoch for a group: a node that learns a higher one stops acting as source. */
export interface EpochFrame {
  readonly type: typeof FrameType.epoch;
  readonly group: string;
  readonly epoch: number;
}

/** Pair states a source announces (DESIGN.md §3.6). */
export const PAIR_STATES = ['copy', 'pair', 'resync', 'suspended'] as const;
export type PairStateName = (typeof PAIR_STATES)[number];
/**
 * The source's pair state for a group: `copy` while the initial copy runs and `resync` while a delta
 * resync runs (the target image is not consistent in either), `pair` once the copy's last record
 * (`copyEndSeq`, 0 if none) is journalled, `suspended` while writes are tracked in the source's
 * dirty bitmap (the target stays at its last cut).
 */
export interface PairStateFrame {
  readonly type: typeof FrameType.pairState;
  readonly group: string;
  readonly epoch: number;
  readonly state: PairStateName;
  readonly copyEndSeq: Seq;
}

/** A decoded frame. */
export type Frame =
  | HelloFrame
  | ChallengeResponseFrame
  | AuthOkFrame
  | AuthFailFrame
  | RecordsFrame
  | AckFrame
  | TickFrame
  | ResumeFrame
  | HeartbeatFrame
  | ErrorFrame
  | EpochFrame
  | PairStateFrame;
/** A frame to encode: RECORDS may carry records as the journal returns them. */
export type OutFrame = Exclude<Frame, RecordsFrame> | RecordsFrame<LinkRecord>;

/**
 * Why peer bytes are not a frame. 'short': the buffer ends before the frame does (read more);
 * 'magic', 'version', 'type', 'flags', 'length': a bad header (the stream cannot be resynchronised);
 * 'checksum': the bytes differ from what was sent; 'payload': the payload does not parse or breaks
 * a field rule; 'record': a RECORDS batch holds a corrupt record or breaks a batch rule.
 */
export type FrameErrorCode =
  'short' | 'magic' | 'version' | 'type' | 'flags' | 'length' | 'checksum' | 'payload' | 'record';
export interface FrameError {
  readonly code: FrameErrorCode;
  readonly reason: string;
}
export type PayloadResult<F> =
  { readonly ok: true; readonly frame: F } | { readonly ok: false; readonly error: FrameError };
export type FrameResult =
  | { readonly ok: true; readonly frame: Frame; readonly bytes: number }
  | { readonly ok: false; readonly error: FrameError };

function fail(code: FrameErrorCode, reason: string): { ok: false; error: FrameError } {
  return { ok: false, error: { code, reason } };
}

// ---------------------------------------------------------------------------------------------
// Field checks shared by encoders (assert) and decoders (typed error)

function isU53(v: number): boolean {
  return Number.isSafeInteger(v) && v >= 0;
}
function isEpoch(v: number): boolean {
  return Number.isInteger(v) && v >= 0 && v <= LINK_EPOCH_MAX;
}
function isGroupName(s: string): boolean {
  return s.length > 0 && isValidName(s);
}
const ERROR_CODE_PATTERN = /^[A-Z][A-Z0-9_]*$/;
function isErrorCode(s: string): boolean {
  return s.length <= LINK_NAME_BYTES_MAX && ERROR_CODE_PATTERN.test(s);
}
function isVersionRange(min: number, max: number): boolean {
  return Number.isInteger(min) && Number.isInteger(max) && 1 <= min && min <= max && max <= U16_MAX;
}
function nameSize(s: string): number {
  return 1 + Buffer.byteLength(s, 'utf8');
}

/** `s` cut to at most LINK_TEXT_BYTES_MAX utf8 bytes, at a character boundary. */
export function clipText(s: string): string {
  if (Buffer.byteLength(s, 'utf8') <= LINK_TEXT_BYTES_MAX) return s;
  let out = '';
  let bytes = 0;
  for (const ch of s) {
    const n = Buffer.byteLength(ch, 'utf8');
    if (bytes + n > LINK_TEXT_BYTES_MAX) break;
    out += ch;
    bytes += n;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Writing: each encoder sizes its payload exactly, and Writer.seal checks it did.

class Writer {
  private readonly buf: Buffer;
  private pos = LINK_FRAME_HEADER_BYTES;

  constructor(payloadBytes: number) {
    assert(
      payloadBytes <= LINK_FRAME_PAYLOAD_BYTES_MAX,
      `payload of ${payloadBytes} bytes exceeds the maximum`,
    );
    this.buf = Buffer.allocUnsafe(LINK_FRAME_HEADER_BYTES + payloadBytes);
  }
  u8(v: number): void {
    this.buf[this.pos++] = v;
  }
  u16(v: number): void {
    this.pos = this.buf.writeUInt16LE(v, this.pos);
  }
  u32(v: number): void {
    this.pos = this.buf.writeUInt32LE(v, this.pos);
  }
  u64(v: number): void {
    assert(isU53(v), `u64 field ${v} is not an integer in [0, 2^53)`);
    this.buf.writeUInt32LE(v >>> 0, this.pos);
    this.buf.writeUInt32LE(Math.floor(v / TWO_POW_32), this.pos + 4);
    this.pos += 8;
  }
  bytes(b: Buffer): void {
    this.pos += b.copy(this.buf, this.pos);
  }
  name(s: string): void {
    const n = Buffer.byteLength(s, 'utf8');
    this.u8(n);
    this.pos += this.buf.write(s, this.pos, n, 'utf8');
  }
  text(s: string): void {
    const n = Buffer.byteLength(s, 'utf8');
    this.u16(n);
    this.pos += this.buf.write(s, this.pos, n, 'utf8');
  }
  /** The whole frame: header written, checksum computed over header (crc zeroed) and payload. */
  seal(type: FrameType): Buffer {
    assert(
      this.pos === this.buf.length,
      `frame ${frameTypeName(type)} sized ${this.buf.length}, wrote ${this.pos}`,
    );
    return sealInto(this.buf, type);
  }
}

function sealInto(buf: Buffer, type: FrameType): Buffer {
  writeHeader(buf, type, buf.length - LINK_FRAME_HEADER_BYTES);
  buf.writeUInt32LE(crc32c(buf) >>> 0, OFF_CRC);
  return buf;
}

/** The frame header at the start of `buf`, its checksum field zeroed (to be checksummed). */
function writeHeader(buf: Buffer, type: FrameType, payloadBytes: number): void {
  LINK_MAGIC.copy(buf, 0);
  buf[OFF_VERSION] = LINK_FRAME_VERSION;
  buf[OFF_TYPE] = type;
  buf.writeUInt16LE(0, OFF_FLAGS);
  buf.writeUInt32LE(payloadBytes, OFF_LENGTH);
  buf.writeUInt32LE(0, OFF_CRC);
}

/**
 * A frame of `type` around an arbitrary `payload`, with a valid header and checksum. For tests
 * that must get hostile payloads past the checksum; senders use the typed encoders.
 */
export function sealFrame(type: number, payload: Buffer): Buffer {
  assert(payload.length <= LINK_FRAME_PAYLOAD_BYTES_MAX, 'payload exceeds the maximum');
  assert(Number.isInteger(type) && type >= 0 && type <= 255, `frame type ${type}`);
  const buf = Buffer.allocUnsafe(LINK_FRAME_HEADER_BYTES + payload.length);
  payload.copy(buf, LINK_FRAME_HEADER_BYTES);
  return sealInto(buf, type as FrameType);
}

// ---------------------------------------------------------------------------------------------
// Reading: a bounds-checked cursor that records its first failure instead of throwing.

class Reader {
  private pos = 0;
  failure: string | null = null;

  constructor(private readonly buf: Buffer) {}

  fail(reason: string): void {
    if (this.failure === null) this.failure = reason;
  }
  private need(n: number, what: string): boolean {
    if (this.failure !== null) return false;
    if (this.buf.length - this.pos >= n) return true;
    this.fail(`${what}: payload ends early`);
    return false;
  }
  u8(what: string): number {
    return this.need(1, what) ? this.buf[this.pos++]! : 0;
  }
  u16(what: string): number {
    if (!this.need(2, what)) return 0;
    this.pos += 2;
    return this.buf.readUInt16LE(this.pos - 2);
  }
  u32(what: string): number {
    if (!this.need(4, what)) return 0;
    this.pos += 4;
    return this.buf.readUInt32LE(this.pos - 4);
  }
  u64(what: string): number {
    if (!this.need(8, what)) return 0;
    const lo = this.buf.readUInt32LE(this.pos);
    const hi = this.buf.readUInt32LE(this.pos + 4);
    this.pos += 8;
    if (hi > U64_HIGH_MAX) this.fail(`${what}: not below 2^53`);
    return hi * TWO_POW_32 + lo;
  }
  bytes(n: number, what: string): Buffer {
    if (!this.need(n, what)) return Buffer.alloc(0);
    this.pos += n;
    return this.buf.subarray(this.pos - n, this.pos);
  }
  /** A name: u8 length + utf8, valid as a journal name; '' only when `allowEmpty`. */
  name(what: string, allowEmpty: boolean): string {
    const b = this.bytes(this.u8(what), what);
    if (this.failure !== null) return '';
    const s = isUtf8(b) ? b.toString('utf8') : null;
    if (s === null || !isValidName(s)) this.fail(`${what}: not a valid name`);
    else if (s === '' && !allowEmpty) this.fail(`${what}: empty`);
    return s ?? '';
  }
  text(what: string): string {
    const n = this.u16(what);
    if (n > LINK_TEXT_BYTES_MAX) this.fail(`${what}: ${n} bytes exceeds ${LINK_TEXT_BYTES_MAX}`);
    const b = this.bytes(n, what);
    if (this.failure === null && !isUtf8(b)) this.fail(`${what}: not utf8`);
    return this.failure === null ? b.toString('utf8') : '';
  }
  epoch(): number {
    return this.u32('epoch');
  }
  get offset(): number {
    return this.pos;
  }
  get remaining(): number {
    return this.buf.length - this.pos;
  }
  /** `frame` when every read succeeded and the payload was consumed exactly. */
  finish<F>(name: string, frame: F): PayloadResult<F> {
    if (this.failure === null && this.pos !== this.buf.length) {
      this.fail(`${this.buf.length - this.pos} trailing bytes`);
    }
    if (this.failure !== null) return fail('payload', `${name}: ${this.failure}`);
    return { ok: true, frame };
  }
}

// ---------------------------------------------------------------------------------------------
// Handshake frames

type Fields<F> = Omit<F, 'type'>;

export function encodeHello(f: Fields<HelloFrame>): Buffer {
  assert(isVersionRange(f.versionMin, f.versionMax), `version range ${f.versionMin}..${f.versionMax}`);
  assert(f.nonce.length === LINK_NONCE_BYTES, `nonce of ${f.nonce.length} bytes`);
  assert(isGroupName(f.nodeName), `node name ${JSON.stringify(f.nodeName)}`);
  assert(isValidName(f.clusterId), `cluster id ${JSON.stringify(f.clusterId)}`);
  assert(f.groups.length <= LINK_HELLO_GROUPS_MAX, `${f.groups.length} groups in a HELLO`);
  let size = 4 + LINK_NONCE_BYTES + nameSize(f.nodeName) + nameSize(f.clusterId) + 2;
  for (const g of f.groups) {
    assert(isGroupName(g), `group name ${JSON.stringify(g)}`);
    size += nameSize(g);
  }
  const w = new Writer(size);
  w.u16(f.versionMin);
  w.u16(f.versionMax);
  w.bytes(f.nonce);
  w.name(f.nodeName);
  w.name(f.clusterId);
  w.u16(f.groups.length);
  for (const g of f.groups) w.name(g);
  return w.seal(FrameType.hello);
}

export function decodeHello(payload: Buffer): PayloadResult<HelloFrame> {
  const r = new Reader(payload);
  const versionMin = r.u16('versionMin');
  const versionMax = r.u16('versionMax');
  if (r.failure === null && !isVersionRange(versionMin, versionMax)) {
    r.fail(`version range ${versionMin}..${versionMax}`);
  }
  const nonce = r.bytes(LINK_NONCE_BYTES, 'nonce');
  const nodeName = r.name('nodeName', false);
  const clusterId = r.name('clusterId', true);
  const count = r.u16('groupCount');
  if (count > LINK_HELLO_GROUPS_MAX) r.fail(`${count} groups exceeds ${LINK_HELLO_GROUPS_MAX}`);
  const groups: string[] = [];
  for (let i = 0; i < count && r.failure === null; i++) groups.push(r.name(`group ${i}`, false));
  return r.finish('HELLO', {
    type: FrameType.hello,
    versionMin,
    versionMax,
    nonce,
    nodeName,
    clusterId,
    groups,
  });
}

export function encodeChallengeResponse(f: Fields<ChallengeResponseFrame>): Buffer {
  assert(f.proof.length === LINK_PROOF_BYTES, `proof of ${f.proof.length} bytes`);
  const w = new Writer(LINK_PROOF_BYTES);
  w.bytes(f.proof);
  return w.seal(FrameType.challengeResponse);
}

export function decodeChallengeResponse(payload: Buffer): PayloadResult<ChallengeResponseFrame> {
  const r = new Reader(payload);
  const proof = r.bytes(LINK_PROOF_BYTES, 'proof');
  return r.finish('CHALLENGE_RESPONSE', { type: FrameType.challengeResponse, proof });
}

export function encodeAuthOk(_f: Fields<AuthOkFrame> = {}): Buffer {
  return new Writer(0).seal(FrameType.authOk);
}

export function decodeAuthOk(payload: Buffer): PayloadResult<AuthOkFrame> {
  return new Reader(payload).finish('AUTH_OK', { type: FrameType.authOk });
}

/** The reason is cut to LINK_TEXT_BYTES_MAX bytes. */
export function encodeAuthFail(f: Fields<AuthFailFrame>): Buffer {
  const reason = clipText(f.reason);
  const w = new Writer(2 + Buffer.byteLength(reason, 'utf8'));
  w.text(reason);
  return w.seal(FrameType.authFail);
}

export function decodeAuthFail(payload: Buffer): PayloadResult<AuthFailFrame> {
  const r = new Reader(payload);
  const reason = r.text('reason');
  return r.finish('AUTH_FAIL', { type: FrameType.authFail, reason });
}

// ---------------------------------------------------------------------------------------------
// Authentication: each side proves the cluster secret over the other's fresh nonce. The secret
// never crosses the wire; binding both names stops a proof from being reflected back to its
// sender or replayed to another node, and a fresh nonce per connection stops replay in time.

/** Domain separation: these HMACs are never valid for anything else keyed by the secret. */
const AUTH_DOMAIN = Buffer.from('remcopy link auth v1\0', 'latin1');

export interface AuthInput {
  /** The verifier's nonce, from its HELLO. */
  readonly nonce: Buffer;
  /** Name of the node that proves (sends the CHALLENGE_RESPONSE). */
  readonly prover: string;
  /** Name of the node that checks the proof (sent the nonce). */
  readonly verifier: string;
}

/** A fresh random HELLO nonce. */
export function newNonce(): Buffer {
  return randomBytes(LINK_NONCE_BYTES);
}

function lengthPrefixed(s: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  const out = Buffer.allocUnsafe(4 + b.length);
  out.writeUInt32LE(b.length, 0);
  b.copy(out, 4);
  return out;
}

/** HMAC-SHA256(secret, domain || nonce || len+prover || len+verifier): the CHALLENGE_RESPONSE proof. */
export function authProof(secret: string | Buffer, input: AuthInput): Buffer {
  assert(secret.length > 0, 'the cluster secret is empty');
  assert(input.nonce.length === LINK_NONCE_BYTES, `nonce of ${input.nonce.length} bytes`);
  return createHmac('sha256', secret)
    .update(AUTH_DOMAIN)
    .update(input.nonce)
    .update(lengthPrefixed(input.prover))
    .update(lengthPrefixed(input.verifier))
    .digest();
}

/** True when `proof` is authProof(secret, input); constant time in the proof's content. Never throws. */
export function verifyAuthProof(secret: string | Buffer, input: AuthInput, proof: Buffer): boolean {
  if (secret.length === 0 || proof.length !== LINK_PROOF_BYTES) return false;
  if (input.nonce.length !== LINK_NONCE_BYTES) return false;
  return timingSafeEqual(authProof(secret, input), proof);
}

/** The highest protocol version both ranges contain, or null when they do not overlap. */
export function negotiateVersion(
  local: { readonly versionMin: number; readonly versionMax: number },
  peer: { readonly versionMin: number; readonly versionMax: number },
): number | null {
  const v = Math.min(local.versionMax, peer.versionMax);
  return v >= Math.max(local.versionMin, peer.versionMin) ? v : null;
}

// ---------------------------------------------------------------------------------------------
// RECORDS

/** Why record `h` may not follow `prev` in a batch of `group` at `epoch`; null when it may. */
function batchRuleBroken(
  h: RecordHeader,
  group: string,
  epoch: number,
  prev: RecordHeader | undefined,
): string | null {
  if (h.kind === RecordKind.tick) return 'a tick record (ticks take no seq and travel as TICK frames)';
  if (h.group !== group) return `group ${JSON.stringify(h.group)} in a batch of ${JSON.stringify(group)}`;
  if (h.epoch > epoch) return `record epoch ${h.epoch} above the frame's epoch ${epoch}`;
  if (h.seq < 1) return 'seq 0';
  if (prev !== undefined && h.seq !== prev.seq + 1) {
    return h.seq > prev.seq ? `seq gap: ${h.seq} after ${prev.seq}` : `seq ${h.seq} not after ${prev.seq}`;
  }
  return null;
}

/**
 * One group's batch, each record in exactly its journal encoding (encodeHeader + payload). Asserts
 * the batch rules: 1..LINK_BATCH_RECORDS_MAX records, seqs contiguous and increasing, no ticks.
 * The frame in one buffer (tests and small frames); senders use encodeRecordsParts.
 */
export function encodeRecords(f: Fields<RecordsFrame<LinkRecord>>): Buffer {
  const parts = encodeRecordsParts(f);
  return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
}

/**
 * A payload at least this large is sent by reference (its own part of the frame, not copied into
 * the frame buffer), and the frame checksum takes it over from the record's checksum (crc32cShift)
 * instead of reading it a third time. Smaller ones are copied: one write of one buffer is cheaper.
 */
export const LINK_PAYLOAD_BY_REFERENCE_BYTES_MIN = 64 * 1024;

/**
 * encodeRecords as the buffers to write one after another (their concatenation is the frame,
 * byte for byte): one buffer holding the frame header, the group prefix, every record header and
 * every small payload, cut around each payload of LINK_PAYLOAD_BY_REFERENCE_BYTES_MIN or more,
 * which is passed as is. Those payloads must not change until the parts are written.
 *
 * Checksums: encodeHeader reads every payload once for the record's checksum (which the frame must
 * carry). The frame checksum covers small payloads directly; across a large one it is derived from
 * the record's: crc(S|H|P) = shift(crc(S|H) ^ crc(H0), |P|) ^ crc(H0|P), where H0 is the record
 * header with its checksum field zeroed (as encodeHeader checksummed it) and shift is crc32cShift
 * (both sides equal shift(x, |P|) ^ crc(P), and shift is linear).
 */
export function encodeRecordsParts(f: Fields<RecordsFrame<LinkRecord>>): Buffer[] {
  assert(isGroupName(f.group), `group name ${JSON.stringify(f.group)}`);
  assert(isEpoch(f.epoch), `epoch ${f.epoch}`);
  const count = f.records.length;
  assert(count >= 1 && count <= LINK_BATCH_RECORDS_MAX, `${count} records in a batch`);
  const heads: Buffer[] = [];
  let payloadBytes = nameSize(f.group) + 8;
  let ownBytes = LINK_FRAME_HEADER_BYTES + payloadBytes;
  let prev: RecordHeader | undefined;
  for (const rec of f.records) {
    const broken = batchRuleBroken(rec.header, f.group, f.epoch, prev);
    assert(broken === null, `RECORDS batch: ${broken}`);
    const head = rec.head ?? encodeHeader(rec.header, rec.payload);
    if (rec.head !== undefined && !encodingFits(rec.header, head, 0)) {
      assert(false, `RECORDS batch: the head given for seq ${rec.header.seq} is not its encoding`);
    }
    heads.push(head);
    payloadBytes += head.length + rec.payload.length;
    ownBytes += head.length + (byReference(rec.payload) ? 0 : rec.payload.length);
    prev = rec.header;
  }
  assert(
    payloadBytes <= LINK_FRAME_PAYLOAD_BYTES_MAX,
    `payload of ${payloadBytes} bytes exceeds the maximum`,
  );
  const own = Buffer.allocUnsafe(ownBytes);
  writeHeader(own, FrameType.records, payloadBytes);
  let pos = LINK_FRAME_HEADER_BYTES;
  const groupBytes = Buffer.byteLength(f.group, 'utf8');
  own[pos++] = groupBytes;
  pos += own.write(f.group, pos, groupBytes, 'utf8');
  pos = own.writeUInt32LE(f.epoch, pos);
  pos = own.writeUInt32LE(count, pos);
  const parts: Buffer[] = [];
  let cut = 0;
  let crc = 0;
  for (let i = 0; i < count; i++) {
    const head = heads[i]!;
    const payload = f.records[i]!.payload;
    pos += head.copy(own, pos);
    if (!byReference(payload)) {
      pos += payload.copy(own, pos);
      continue;
    }
    const piece = own.subarray(cut, pos);
    crc = crc32c(piece, crc);
    parts.push(piece, payload);
    cut = pos;
    crc =
      (crc32cShift((crc ^ headerCrcZeroed(head)) >>> 0, payload.length) ^
        head.readUInt32LE(RECORD_OFF_CRC)) >>>
      0;
  }
  assert(pos === own.length, `RECORDS frame sized ${own.length}, wrote ${pos}`);
  if (cut < pos) {
    const piece = own.subarray(cut, pos);
    crc = crc32c(piece, crc);
    parts.push(piece);
  }
  own.writeUInt32LE(crc >>> 0, OFF_CRC);
  return parts;
}

function byReference(payload: Buffer): boolean {
  return payload.length >= LINK_PAYLOAD_BY_REFERENCE_BYTES_MIN;
}

/** Where encodeHeader (src/storage/record.ts) puts a record's checksum; checked at load below. */
const RECORD_OFF_CRC = 8;
const RECORD_CRC_ZEROED = Buffer.alloc(4);

/** crc32c of a record header as encodeHeader checksummed it: its checksum field zeroed. */
function headerCrcZeroed(head: Buffer): number {
  let c = crc32c(head.subarray(0, RECORD_OFF_CRC));
  c = crc32c(RECORD_CRC_ZEROED, c);
  return crc32c(head.subarray(RECORD_OFF_CRC + 4), c);
}

// CRC-32C arithmetic modulo its polynomial, bit-reflected as crc32c computes it (zlib's
// crc32_combine, multmodp and x2nmodp). Bit 31 stands for x^0.
const CRC32C_POLY_REFLECTED = 0x82f63b78;

/** a * b modulo the polynomial. */
function multModP(a: number, b: number): number {
  let m = 0x80000000;
  let p = 0;
  for (;;) {
    if ((a & m) !== 0) {
      p ^= b;
      if ((a & (m - 1)) === 0) break;
    }
    m >>>= 1;
    b = (b & 1) !== 0 ? (b >>> 1) ^ CRC32C_POLY_REFLECTED : b >>> 1;
  }
  return p >>> 0;
}

/** X2N[k] = x^(2^k) modulo the polynomial. */
const X2N: number[] = [];
for (let k = 0, p = 0x40000000; k < 32; k++) {
  X2N.push(p);
  p = multModP(p, p);
}

/**
 * What the checksum `crc` of bytes A contributes to the checksum of A followed by `n` more bytes B:
 * crc32c(A|B) = crc32cShift(crc32c(A), n) ^ crc32c(B) (zlib's crc32_combine).
 */
export function crc32cShift(crc: number, n: number): number {
  assert(Number.isSafeInteger(n) && n >= 0, `shift by ${n} bytes`);
  let p = 0x80000000; // x^0
  let k = 3; // a byte is x^(2^3)
  for (let left = n; left > 0; left = Math.floor(left / 2), k++) {
    if (left % 2 === 1) p = multModP(X2N[k % 32]!, p);
  }
  return multModP(p, crc >>> 0);
}

{
  // encodeHeader's layout, as RECORD_OFF_CRC and headerCrcZeroed assume it.
  const payload = Buffer.from('payload');
  const head = encodeHeader(
    {
      kind: RecordKind.data,
      group: 'g',
      seq: seq(1),
      writeTimeUs: timeUs(2),
      hostTimeUs: timeUs(0),
      nodeId: nodeIdFromNumber(3),
      ordinal: ordinal(4),
      epoch: 5,
      volume: 'v',
      offset: byteOffset(0),
      length: payload.length,
      markerNo: 0,
    },
    payload,
  );
  assert(
    head.readUInt32LE(RECORD_OFF_CRC) === crc32c(payload, headerCrcZeroed(head)) >>> 0,
    'a record header keeps its checksum at RECORD_OFF_CRC',
  );
}

/**
 * Every record is checked with decodeRecord (its own checksum too) and against the batch rules;
 * 'record' errors name the record. Records and their `bytes` are views of `payload`, not copies.
 */
export function decodeRecords(payload: Buffer): PayloadResult<RecordsFrame> {
  const r = new Reader(payload);
  const group = r.name('group', false);
  const epoch = r.epoch();
  const count = r.u32('count');
  if (r.failure === null && (count < 1 || count > LINK_BATCH_RECORDS_MAX)) {
    r.fail(`${count} records (1..${LINK_BATCH_RECORDS_MAX})`);
  }
  if (r.failure !== null) return fail('payload', `RECORDS: ${r.failure}`);
  const records: ReceivedRecord[] = [];
  let off = r.offset;
  let prev: RecordHeader | undefined;
  for (let i = 0; i < count; i++) {
    const d = decodeRecord(payload, off);
    if (!d.ok) {
      const why = d.reason === 'short' ? 'runs past the end of the frame' : `bad record (${d.reason})`;
      return fail('record', `RECORDS: record ${i} at payload byte ${off} ${why}`);
    }
    const broken = batchRuleBroken(d.header, group, epoch, prev);
    if (broken !== null) return fail('record', `RECORDS: record ${i} (seq ${d.header.seq}): ${broken}`);
    records.push({ header: d.header, payload: d.payload, bytes: payload.subarray(off, off + d.bytes) });
    off += d.bytes;
    prev = d.header;
  }
  if (off !== payload.length) return fail('payload', `RECORDS: ${payload.length - off} trailing bytes`);
  return { ok: true, frame: { type: FrameType.records, group, epoch, records } };
}

// ---------------------------------------------------------------------------------------------
// Per-group control frames: group name, epoch, then their own fields.

function groupWriter(group: string, epoch: number, rest: number): Writer {
  assert(isGroupName(group), `group name ${JSON.stringify(group)}`);
  assert(isEpoch(epoch), `epoch ${epoch}`);
  const w = new Writer(nameSize(group) + 4 + rest);
  w.name(group);
  w.u32(epoch);
  return w;
}

export function encodeAck(f: Fields<AckFrame>): Buffer {
  assert(f.appliedSeq <= f.durableSeq, `ACK appliedSeq ${f.appliedSeq} above durableSeq ${f.durableSeq}`);
  const w = groupWriter(f.group, f.epoch, 16);
  w.u64(f.durableSeq);
  w.u64(f.appliedSeq);
  return w.seal(FrameType.ack);
}

export function decodeAck(payload: Buffer): PayloadResult<AckFrame> {
  const r = new Reader(payload);
  const group = r.name('group', false);
  const epoch = r.epoch();
  const durableSeq = seq(r.u64('durableSeq'));
  const appliedSeq = seq(r.u64('appliedSeq'));
  if (r.failure === null && appliedSeq > durableSeq) r.fail(`appliedSeq ${appliedSeq} above durableSeq`);
  return r.finish('ACK', { type: FrameType.ack, group, epoch, durableSeq, appliedSeq });
}

export function encodeTick(f: Fields<TickFrame>): Buffer {
  assert(
    Number.isInteger(f.key.nodeId) && f.key.nodeId >= 0 && f.key.nodeId <= U32_MAX,
    `nodeId ${f.key.nodeId}`,
  );
  const w = groupWriter(f.group, f.epoch, 8 + 8 + 4 + 8);
  w.u64(f.seq);
  w.u64(f.key.writeTimeUs);
  w.u32(f.key.nodeId);
  w.u64(f.key.ordinal);
  return w.seal(FrameType.tick);
}

export function decodeTick(payload: Buffer): PayloadResult<TickFrame> {
  const r = new Reader(payload);
  const group = r.name('group', false);
  const epoch = r.epoch();
  const s = seq(r.u64('seq'));
  const key: OrderKey = {
    writeTimeUs: timeUs(r.u64('writeTimeUs')),
    nodeId: nodeIdFromNumber(r.u32('nodeId')),
    ordinal: ordinal(r.u64('ordinal')),
  };
  return r.finish('TICK', { type: FrameType.tick, group, epoch, seq: s, key });
}

export function encodeResume(f: Fields<ResumeFrame>): Buffer {
  assert(f.nextSeq >= 1, `RESUME nextSeq ${f.nextSeq}`);
  const w = groupWriter(f.group, f.epoch, 8);
  w.u64(f.nextSeq);
  return w.seal(FrameType.resume);
}

export function decodeResume(payload: Buffer): PayloadResult<ResumeFrame> {
  const r = new Reader(payload);
  const group = r.name('group', false);
  const epoch = r.epoch();
  const nextSeq = seq(r.u64('nextSeq'));
  if (r.failure === null && nextSeq < 1) r.fail('nextSeq 0 (seqs start at 1)');
  return r.finish('RESUME', { type: FrameType.resume, group, epoch, nextSeq });
}

export function encodeEpoch(f: Fields<EpochFrame>): Buffer {
  return groupWriter(f.group, f.epoch, 0).seal(FrameType.epoch);
}

export function decodeEpoch(payload: Buffer): PayloadResult<EpochFrame> {
  const r = new Reader(payload);
  const group = r.name('group', false);
  const epoch = r.epoch();
  return r.finish('EPOCH', { type: FrameType.epoch, group, epoch });
}

export function encodePairState(f: Fields<PairStateFrame>): Buffer {
  const stateCode = PAIR_STATES.indexOf(f.state);
  assert(stateCode >= 0, `pair state ${f.state}`);
  const w = groupWriter(f.group, f.epoch, 1 + 8);
  w.u8(stateCode);
  w.u64(f.copyEndSeq);
  return w.seal(FrameType.pairState);
}

export function decodePairState(payload: Buffer): PayloadResult<PairStateFrame> {
  const r = new Reader(payload);
  const group = r.name('group', false);
  const epoch = r.epoch();
  const code = r.u8('state');
  const copyEndSeq = seq(r.u64('copyEndSeq'));
  const state = PAIR_STATES[code] ?? 'copy';
  if (r.failure === null && PAIR_STATES[code] === undefined) r.fail(`pair state code ${code}`);
  return r.finish('PAIR_STATE', { type: FrameType.pairState, group, epoch, state, copyEndSeq });
}

// ---------------------------------------------------------------------------------------------
// HEARTBEAT and ERROR

export function encodeHeartbeat(f: Fields<HeartbeatFrame>): Buffer {
  const w = new Writer(16);
  w.u64(f.sentTimeUs);
  w.u64(f.echoTimeUs);
  return w.seal(FrameType.heartbeat);
}

export function decodeHeartbeat(payload: Buffer): PayloadResult<HeartbeatFrame> {
  const r = new Reader(payload);
  const sentTimeUs = timeUs(r.u64('sentTimeUs'));
  const echoTimeUs = timeUs(r.u64('echoTimeUs'));
  return r.finish('HEARTBEAT', { type: FrameType.heartbeat, sentTimeUs, echoTimeUs });
}

/** The message is cut to LINK_TEXT_BYTES_MAX bytes; the code must be a stable code. */
export function encodeError(f: Fields<ErrorFrame>): Buffer {
  assert(isErrorCode(f.code), `error code ${JSON.stringify(f.code)}`);
  const message = clipText(f.message);
  const w = new Writer(nameSize(f.code) + 2 + Buffer.byteLength(message, 'utf8'));
  w.name(f.code);
  w.text(message);
  return w.seal(FrameType.error);
}

export function decodeError(payload: Buffer): PayloadResult<ErrorFrame> {
  const r = new Reader(payload);
  const code = r.name('code', false);
  if (r.failure === null && !isErrorCode(code)) r.fail(`code ${JSON.stringify(code)} is not [A-Z][A-Z0-9_]*`);
  const message = r.text('message');
  return r.finish('ERROR', { type: FrameType.error, code, message });
}

// ---------------------------------------------------------------------------------------------
// Any frame

/**
 * Encodes any frame as buffers to write in order (large RECORDS payloads by reference, see
 * encodeRecordsParts); their concatenation is encodeFrame's result.
 */
export function encodeFrameParts(f: OutFrame): Buffer[] {
  return f.type === FrameType.records ? encodeRecordsParts(f) : [encodeFrame(f)];
}

/** Encodes any frame by its type. */
export function encodeFrame(f: OutFrame): Buffer {
  switch (f.type) {
    case FrameType.hello:
      return encodeHello(f);
    case FrameType.challengeResponse:
      return encodeChallengeResponse(f);
    case FrameType.authOk:
      return encodeAuthOk(f);
    case FrameType.authFail:
      return encodeAuthFail(f);
    case FrameType.records:
      return encodeRecords(f);
    case FrameType.ack:
      return encodeAck(f);
    case FrameType.tick:
      return encodeTick(f);
    case FrameType.resume:
      return encodeResume(f);
    case FrameType.heartbeat:
      return encodeHeartbeat(f);
    case FrameType.error:
      return encodeError(f);
    case FrameType.epoch:
      return encodeEpoch(f);
    case FrameType.pairState:
      return encodePairState(f);
    default:
      return unreachable(f);
  }
}

function decodePayload(type: FrameType, payload: Buffer): PayloadResult<Frame> {
  switch (type) {
    case FrameType.hello:
      return decodeHello(payload);
    case FrameType.challengeResponse:
      return decodeChallengeResponse(payload);
    case FrameType.authOk:
      return decodeAuthOk(payload);
    case FrameType.authFail:
      return decodeAuthFail(payload);
    case FrameType.records:
      return decodeRecords(payload);
    case FrameType.ack:
      return decodeAck(payload);
    case FrameType.tick:
      return decodeTick(payload);
    case FrameType.resume:
      return decodeResume(payload);
    case FrameType.heartbeat:
      return decodeHeartbeat(payload);
    case FrameType.error:
      return decodeError(payload);
    case FrameType.epoch:
      return decodeEpoch(payload);
    case FrameType.pairState:
      return decodePairState(payload);
    default:
      return unreachable(type);
  }
}

/** What the first bytes of a frame say so far. */
export type HeaderPeek =
  | { readonly ok: true; readonly type: FrameType; readonly payloadBytes: number }
  | { readonly ok: false; readonly error: FrameError };

/**
 * Checks the header fields present in `buf` (which may hold fewer than 16 bytes), so that garbage
 * and oversized lengths are refused as soon as the bytes that show them arrive. 'short' when every
 * byte present is fine but the header is not complete. A declared payload above `payloadBytesMax`
 * (the frame limit, or a lower one such as LINK_HANDSHAKE_PAYLOAD_BYTES_MAX) is a 'length' error.
 * Never throws on peer bytes.
 */
export function peekFrameHeader(
  buf: Buffer,
  payloadBytesMax: number = LINK_FRAME_PAYLOAD_BYTES_MAX,
): HeaderPeek {
  assert(isPayloadLimit(payloadBytesMax), `payload limit ${payloadBytesMax}`);
  const n = buf.length;
  for (let i = 0; i < 4 && i < n; i++) {
    if (buf[i] !== LINK_MAGIC[i]) return fail('magic', `bad magic byte ${i}: 0x${buf[i]!.toString(16)}`);
  }
  if (n > OFF_VERSION && buf[OFF_VERSION] !== LINK_FRAME_VERSION) {
    return fail('version', `frame version ${buf[OFF_VERSION]}, this node reads ${LINK_FRAME_VERSION}`);
  }
  if (n > OFF_TYPE && !isFrameType(buf[OFF_TYPE]!))
    return fail('type', `unknown frame type ${buf[OFF_TYPE]}`);
  if (n >= OFF_FLAGS + 2 && buf.readUInt16LE(OFF_FLAGS) !== 0) {
    return fail('flags', `unknown flags 0x${buf.readUInt16LE(OFF_FLAGS).toString(16)}`);
  }
  if (n < OFF_LENGTH + 4) return fail('short', `${n} of ${LINK_FRAME_HEADER_BYTES} header bytes`);
  const payloadBytes = buf.readUInt32LE(OFF_LENGTH);
  if (payloadBytes > payloadBytesMax) {
    return fail('length', `declared payload of ${payloadBytes} bytes exceeds ${payloadBytesMax}`);
  }
  if (n < LINK_FRAME_HEADER_BYTES) return fail('short', `${n} of ${LINK_FRAME_HEADER_BYTES} header bytes`);
  return { ok: true, type: buf[OFF_TYPE] as FrameType, payloadBytes };
}

/** Whether `n` may serve as a decoding limit: a whole number of bytes up to the frame limit. */
export function isPayloadLimit(n: number): boolean {
  return Number.isInteger(n) && n >= 0 && n <= LINK_FRAME_PAYLOAD_BYTES_MAX;
}

const ZERO_CRC_FIELD = Buffer.alloc(4);

/**
 * Decodes the frame at the start of `buf` (bytes after it are ignored; `bytes` says how many it
 * took). The payload views of the frame (records, nonce, proof) are subarrays of `buf`. Never throws.
 */
export function decodeFrame(buf: Buffer): FrameResult {
  const h = peekFrameHeader(buf);
  if (!h.ok) return h;
  const bytes = LINK_FRAME_HEADER_BYTES + h.payloadBytes;
  if (buf.length < bytes) return fail('short', `${buf.length} of ${bytes} frame bytes`);
  let crc = crc32c(buf.subarray(0, OFF_CRC));
  crc = crc32c(ZERO_CRC_FIELD, crc);
  crc = crc32c(buf.subarray(LINK_FRAME_HEADER_BYTES, bytes), crc);
  const stored = buf.readUInt32LE(OFF_CRC);
  if (crc >>> 0 !== stored) {
    return fail('checksum', `crc32c 0x${(crc >>> 0).toString(16)} != stored 0x${stored.toString(16)}`);
  }
  const p = decodePayload(h.type, buf.subarray(LINK_FRAME_HEADER_BYTES, bytes));
  return p.ok ? { ok: true, frame: p.frame, bytes } : p;
}
