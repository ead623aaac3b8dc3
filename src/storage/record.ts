/**
 * The binary codec of one journal record: the only place that knows the record's bytes.
 *
 * The journal (journal.ts) writes records with it and checks them on recovery and read-back; the
 * link may carry the same bytes, so a record keeps its checksum from the source's journal to the
 * target's. Encoding asserts (a bad header is a programmer error); decoding never throws on any
 * input and returns a typed reason, because it reads disk content and peer bytes (STYLE.md 3, 6).
 *
 * On-disk format, little-endian, one record (byte offsets on the left):
 *
 *    0 +--------+--------+--------+--------+
 *      |    magic 'RCJR' (u32 0x524a4352)  |
 *    4 +--------+--------+--------+--------+
 *      |version | kind   | gLen   | vLen   |   version = 1; kind = RecordKind; name lengths (u8)
 *    8 +--------+--------+--------+--------+
 *      |      crc32c (u32)                 |
 *   12 |      nodeId (u32)                 |
 *   16 |      epoch (u32)                  |
 *   20 |      payloadLen (u32)             |   <= 32 MiB
 *   24 |      seq (u64)                    |
 *   32 |      writeTimeUs (u64)            |
 *   40 |      hostTimeUs (u64)             |
 *   48 |      ordinal (u64)                |
 *   56 |      offset (u64)                 |   byte offset in the volume
 *   64 |      length (u64)                 |   bytes of the volume covered
 *   72 |      markerNo (u64)               |
 *   80 +-----------------------------------+
 *      | group name: gLen bytes utf8       |   1..64 bytes
 *      | volume name: vLen bytes utf8      |   0..64 bytes
 *      +-----------------------------------+
 *      | payload: payloadLen bytes         |   = length for data/copy, else empty
 *      +-----------------------------------+
 *
 * crc32c covers the 80 header bytes with the crc field zeroed, then the names, then the payload.
 * Every u64 holds a number below 2^53 (written as two u32 halves: no BigInt on the hot path).
 * A record is `RECORD_HEADER_BYTES + gLen + vLen + payloadLen` bytes; records are not padded.
 */
import { isUtf8 } from 'node:buffer';
import { crc32c } from '@node-rs/crc32';
import { assert } from '../core/assert.js';
import type { RecordHeader, RecordKind } from '../core/types.js';
import { byteOffset, kindCarriesData, nodeIdFromNumber, ordinal, seq, timeUs } from '../core/types.js';

/** 'RCJR' read as a little-endian u32. */
export const RECORD_MAGIC = 0x524a4352;
export const RECORD_VERSION = 1;
/** Bytes of the fixed header, before the names. */
export const RECORD_HEADER_BYTES = 80;
/** Bytes of utf8 in a group or volume name, at most. */
export const RECORD_NAME_BYTES_MAX = 64;
/** Payload bytes of one record, at most: the largest host write we journal as one record. */
export const RECORD_PAYLOAD_BYTES_MAX = 32 * 1024 * 1024;
/** Header and names of one record, at most. */
export const RECORD_HEADER_AND_NAMES_BYTES_MAX = RECORD_HEADER_BYTES + 2 * RECORD_NAME_BYTES_MAX;
/** Bytes of one whole record, at most. */
export const RECORD_BYTES_MAX = RECORD_HEADER_AND_NAMES_BYTES_MAX + RECORD_PAYLOAD_BYTES_MAX;

const U32_MAX = 0xffffffff;
const TWO_POW_32 = 4294967296;
/** The high half of a u64 holding a number <= Number.MAX_SAFE_INTEGER. */
const U64_HIGH_MAX = 0x1fffff;

const OFF_MAGIC = 0;
const OFF_VERSION = 4;
const OFF_KIND = 5;
const OFF_GROUP_LEN = 6;
const OFF_VOLUME_LEN = 7;
const OFF_CRC = 8;
const OFF_NODE_ID = 12;
const OFF_EPOCH = 16;
const OFF_PAYLOAD_LEN = 20;
const OFF_SEQ = 24;
const OFF_WRITE_TIME = 32;
const OFF_HOST_TIME = 40;
const OFF_ORDINAL = 48;
const OFF_OFFSET = 56;
const OFF_LENGTH = 64;
const OFF_MARKER_NO = 72;

assert(OFF_MARKER_NO + 8 === RECORD_HEADER_BYTES, 'header layout covers the header exactly');
assert(RECORD_NAME_BYTES_MAX <= 255, 'name lengths fit in a u8');
assert(RECORD_PAYLOAD_BYTES_MAX <= U32_MAX, 'payload length fits in a u32');

export type DecodeFailure = 'short' | 'magic' | 'version' | 'bounds' | 'checksum' | 'names';

export type DecodeResult =
  | { readonly ok: true; readonly header: RecordHeader; readonly payload: Buffer; readonly bytes: number }
  | { readonly ok: false; readonly reason: DecodeFailure };

/** Bytes of the whole record for header `h` with `payloadLength` payload bytes. */
export function recordBytes(h: RecordHeader, payloadLength: number): number {
  return (
    RECORD_HEADER_BYTES +
    Buffer.byteLength(h.group, 'utf8') +
    Buffer.byteLength(h.volume, 'utf8') +
    payloadLength
  );
}

/** True for a name the codec accepts: utf8 of at most 64 bytes, no control characters. */
export function isValidName(name: string): boolean {
  return nameBytes(name) >= 0;
}

/** Names seen by encodeHeader, with their utf8 length: a handful of groups and volumes. */
const validNames = new Map<string, number>();
const VALID_NAMES_CACHED_MAX = 4096;

/** utf8 bytes of a valid name, -1 for an invalid one. */
function nameBytes(name: string): number {
  const cached = validNames.get(name);
  if (cached !== undefined) return cached;
  const bytes = Buffer.byteLength(name, 'utf8');
  // Control characters are refused in names on purpose: they would corrupt logs and paths.
  // eslint-disable-next-line no-control-regex
  if (bytes > RECORD_NAME_BYTES_MAX || /[\u0000-\u001f\u007f]/.test(name) || !isWellFormed(name)) return -1;
  if (validNames.size >= VALID_NAMES_CACHED_MAX) validNames.clear();
  validNames.set(name, bytes);
  return bytes;
}

function isWellFormed(s: string): boolean {
  // No lone surrogates: the string survives a utf8 round trip.
  return !/[\ud800-\udfff]/.test(s) || Buffer.from(s, 'utf8').toString('utf8') === s;
}

function isU53(v: number): boolean {
  return Number.isSafeInteger(v) && v >= 0;
}

function isU32(v: number): boolean {
  return Number.isInteger(v) && v >= 0 && v <= U32_MAX;
}

/** Asserts the header is encodable; the fast check runs first, messages are built on failure only. */
function assertHeader(h: RecordHeader, payloadLength: number): void {
  const ok =
    h.kind >= 1 &&
    h.kind <= 5 &&
    Number.isInteger(h.kind) &&
    h.group.length > 0 &&
    nameBytes(h.group) >= 0 &&
    nameBytes(h.volume) >= 0 &&
    isU53(h.seq) &&
    isU53(h.writeTimeUs) &&
    isU53(h.hostTimeUs) &&
    isU53(h.ordinal) &&
    isU53(h.offset) &&
    isU53(h.length) &&
    isU53(h.markerNo) &&
    isU32(h.nodeId) &&
    isU32(h.epoch) &&
    payloadLength === (kindCarriesData(h.kind) ? h.length : 0) &&
    payloadLength <= RECORD_PAYLOAD_BYTES_MAX;
  if (ok) return;
  assert(h.kind >= 1 && h.kind <= 5 && Number.isInteger(h.kind), `record kind ${h.kind}`);
  assert(h.group.length > 0 && isValidName(h.group), `group name ${JSON.stringify(h.group)}`);
  assert(isValidName(h.volume), `volume name ${JSON.stringify(h.volume)}`);
  for (const [name, v] of Object.entries(h)) {
    if (name === 'nodeId' || name === 'epoch') assert(isU32(v), `record ${name} ${v} is not a u32`);
    else assert(typeof v !== 'number' || isU53(v), `record ${name} ${v} is not an integer in [0, 2^53)`);
  }
  assert(payloadLength <= RECORD_PAYLOAD_BYTES_MAX, `payload of ${payloadLength} bytes exceeds the maximum`);
  assert(false, `payload of ${payloadLength} bytes for kind ${h.kind} length ${h.length}`);
}

/** Writes a u64 holding a safe integer (two u32 halves). */
export function writeU64(buf: Buffer, off: number, v: number): void {
  buf.writeUInt32LE(v >>> 0, off);
  buf.writeUInt32LE(Math.floor(v / TWO_POW_32), off + 4);
}

/** Reads a u64 that must hold a safe integer; -1 when it does not. */
export function readU64(buf: Buffer, off: number): number {
  const hi = buf.readUInt32LE(off + 4);
  if (hi > U64_HIGH_MAX) return -1;
  return hi * TWO_POW_32 + buf.readUInt32LE(off);
}

/**
 * Whether `encoded` is the encoding of `h`'s header and names followed by `payloadBytes` bytes
 * (0: the header and names alone): its length and seq agree. A cheap guard where an encoding made
 * earlier is passed along instead of encoding the record again (the checksum inside was computed,
 * or verified, where the encoding was made).
 */
export function encodingFits(h: RecordHeader, encoded: Buffer, payloadBytes: number): boolean {
  return (
    encoded.length === RECORD_HEADER_BYTES + nameBytes(h.group) + nameBytes(h.volume) + payloadBytes &&
    readU64(encoded, OFF_SEQ) === h.seq
  );
}

/**
 * The header and names of a record, with the checksum computed over header, names and `payload`.
 * The caller writes [result, payload] (writev), so the payload is never copied.
 */
export function encodeHeader(h: RecordHeader, payload?: Buffer): Buffer {
  const payloadLength = payload === undefined ? 0 : payload.length;
  assertHeader(h, payloadLength);
  const groupLen = nameBytes(h.group);
  const volumeLen = nameBytes(h.volume);
  const buf = Buffer.allocUnsafe(RECORD_HEADER_BYTES + groupLen + volumeLen);
  buf.writeUInt32LE(RECORD_MAGIC, OFF_MAGIC);
  buf[OFF_VERSION] = RECORD_VERSION;
  buf[OFF_KIND] = h.kind;
  buf[OFF_GROUP_LEN] = groupLen;
  buf[OFF_VOLUME_LEN] = volumeLen;
  buf.writeUInt32LE(0, OFF_CRC);
  buf.writeUInt32LE(h.nodeId, OFF_NODE_ID);
  buf.writeUInt32LE(h.epoch, OFF_EPOCH);
  buf.writeUInt32LE(payloadLength, OFF_PAYLOAD_LEN);
  writeU64(buf, OFF_SEQ, h.seq);
  writeU64(buf, OFF_WRITE_TIME, h.writeTimeUs);
  writeU64(buf, OFF_HOST_TIME, h.hostTimeUs);
  writeU64(buf, OFF_ORDINAL, h.ordinal);
  writeU64(buf, OFF_OFFSET, h.offset);
  writeU64(buf, OFF_LENGTH, h.length);
  writeU64(buf, OFF_MARKER_NO, h.markerNo);
  buf.write(h.group, RECORD_HEADER_BYTES, groupLen, 'utf8');
  buf.write(h.volume, RECORD_HEADER_BYTES + groupLen, volumeLen, 'utf8');
  let crc = crc32c(buf);
  if (payloadLength > 0) crc = crc32c(payload!, crc);
  buf.writeUInt32LE(crc >>> 0, OFF_CRC);
  return buf;
}

/**
 * Decodes the record starting at `offset` in `buf`. Never throws. The payload is a subarray of
 * `buf` (not a copy). Reasons: 'short' = `buf` ends before the record does (a torn tail, or read
 * more); 'magic'/'version' = not a record of this format; 'bounds' = a length or number out of
 * range or an unknown kind; 'checksum' = bytes differ from what was written; 'names' = a name is
 * not valid utf8 or has control characters.
 */
export function decodeRecord(buf: Buffer, offset: number): DecodeResult {
  if (!Number.isSafeInteger(offset) || offset < 0 || offset > buf.length)
    return { ok: false, reason: 'bounds' };
  const avail = buf.length - offset;
  if (avail < RECORD_HEADER_BYTES) return { ok: false, reason: 'short' };
  if (buf.readUInt32LE(offset + OFF_MAGIC) !== RECORD_MAGIC) return { ok: false, reason: 'magic' };
  if (buf[offset + OFF_VERSION] !== RECORD_VERSION) return { ok: false, reason: 'version' };
  const groupLen = buf[offset + OFF_GROUP_LEN]!;
  const volumeLen = buf[offset + OFF_VOLUME_LEN]!;
  const payloadLength = buf.readUInt32LE(offset + OFF_PAYLOAD_LEN);
  if (groupLen > RECORD_NAME_BYTES_MAX || volumeLen > RECORD_NAME_BYTES_MAX)
    return { ok: false, reason: 'bounds' };
  if (payloadLength > RECORD_PAYLOAD_BYTES_MAX) return { ok: false, reason: 'bounds' };
  const bytes = RECORD_HEADER_BYTES + groupLen + volumeLen + payloadLength;
  if (avail < bytes) return { ok: false, reason: 'short' };
  if (!checksumMatches(buf, offset, bytes)) return { ok: false, reason: 'checksum' };
  return decodeChecked(buf, offset, groupLen, volumeLen, payloadLength);
}

/**
 * Whether the `bytes` bytes at `offset` hold their crc32c at byte 8, computed with that field zero:
 * records, segment end marks and the journal's durable point (durable-point.ts) are checked alike.
 */
export function checksumMatches(buf: Buffer, offset: number, bytes: number): boolean {
  const stored = buf.readUInt32LE(offset + OFF_CRC);
  let crc = crc32c(buf.subarray(offset, offset + OFF_CRC));
  crc = crc32c(ZERO_CRC_FIELD, crc);
  crc = crc32c(buf.subarray(offset + OFF_CRC + 4, offset + bytes), crc);
  return crc >>> 0 === stored;
}

const ZERO_CRC_FIELD = Buffer.alloc(4);

/** Field checks after the checksum matched: only a buggy or foreign writer gets these wrong. */
function decodeChecked(
  buf: Buffer,
  offset: number,
  groupLen: number,
  volumeLen: number,
  payloadLength: number,
): DecodeResult {
  const kind = buf[offset + OFF_KIND]!;
  if (kind < 1 || kind > 5) return { ok: false, reason: 'bounds' };
  const s = readU64(buf, offset + OFF_SEQ);
  const wt = readU64(buf, offset + OFF_WRITE_TIME);
  const ht = readU64(buf, offset + OFF_HOST_TIME);
  const ord = readU64(buf, offset + OFF_ORDINAL);
  const off = readU64(buf, offset + OFF_OFFSET);
  const length = readU64(buf, offset + OFF_LENGTH);
  const markerNo = readU64(buf, offset + OFF_MARKER_NO);
  if (s < 0 || wt < 0 || ht < 0 || ord < 0 || off < 0 || length < 0 || markerNo < 0) {
    return { ok: false, reason: 'bounds' };
  }
  const k = kind as RecordKind;
  if (payloadLength !== (kindCarriesData(k) ? length : 0)) return { ok: false, reason: 'bounds' };
  const groupStart = offset + RECORD_HEADER_BYTES;
  const groupBytes = buf.subarray(groupStart, groupStart + groupLen);
  const volumeBytes = buf.subarray(groupStart + groupLen, groupStart + groupLen + volumeLen);
  if (groupLen === 0 || !isUtf8(groupBytes) || !isUtf8(volumeBytes)) return { ok: false, reason: 'names' };
  const group = groupBytes.toString('utf8');
  const volume = volumeBytes.toString('utf8');
  if (!isValidName(group) || !isValidName(volume)) return { ok: false, reason: 'names' };
  const payloadStart = groupStart + groupLen + volumeLen;
  const header: RecordHeader = {
    kind: k,
    group,
    seq: seq(s),
    writeTimeUs: timeUs(wt),
    hostTimeUs: timeUs(ht),
    nodeId: nodeIdFromNumber(buf.readUInt32LE(offset + OFF_NODE_ID)),
    ordinal: ordinal(ord),
    epoch: buf.readUInt32LE(offset + OFF_EPOCH),
    volume,
    offset: byteOffset(off),
    length,
    markerNo,
  };
  const bytes = RECORD_HEADER_BYTES + groupLen + volumeLen + payloadLength;
  return { ok: true, header, payload: buf.subarray(payloadStart, payloadStart + payloadLength), bytes };
}

/**
 * The ordinal in the fixed header at `offset`, read without checking anything (the caller has
 * found the magic there and the header is all there); lets a scan skip old records before paying
 * for their checksum.
 */
export function peekOrdinal(buf: Buffer, offset: number): number {
  return readU64(buf, offset + OFF_ORDINAL);
}

/**
 * Bytes of the record whose fixed header starts at `offset`, read from its length fields without
 * checking the checksum; -1 when the fixed header is not all there or is not a record header.
 * Lets a reader size its next read; decodeRecord still decides whether the record is valid.
 */
export function peekRecordBytes(buf: Buffer, offset: number): number {
  if (offset < 0 || buf.length - offset < RECORD_HEADER_BYTES) return -1;
  if (buf.readUInt32LE(offset + OFF_MAGIC) !== RECORD_MAGIC) return -1;
  const groupLen = buf[offset + OFF_GROUP_LEN]!;
  const volumeLen = buf[offset + OFF_VOLUME_LEN]!;
  const payloadLength = buf.readUInt32LE(offset + OFF_PAYLOAD_LEN);
  if (groupLen > RECORD_NAME_BYTES_MAX || volumeLen > RECORD_NAME_BYTES_MAX) return -1;
  if (payloadLength > RECORD_PAYLOAD_BYTES_MAX) return -1;
  return RECORD_HEADER_BYTES + groupLen + volumeLen + payloadLength;
}

/** The magic as it appears in a byte stream: where a record may start. */
export const RECORD_MAGIC_BYTES: Buffer = (() => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(RECORD_MAGIC, 0);
  return b;
})();

// ---------------------------------------------------------------------------------------------
// Segment end mark

/**
 * The mark a segment gets right after its last record when the journal moves on to the next one:
 * recovery then knows the bytes past it are not records lost in a power loss (journal-recovery.ts).
 * 32 bytes, little-endian:
 *
 *    0 magic 'RCJE' (u32 0x454a4352)   4 version u8 = 1, 3 bytes zero   8 crc32c (u32) of the mark
 *   12 zero (u32)   16 segment number (u64)   24 bytes of records before the mark (u64)
 *
 * The segment number tells it apart from the mark of a recycled file's previous life.
 */
export const SEGMENT_END_BYTES = 32;
const SEGMENT_END_MAGIC = 0x454a4352;
assert(OFF_CRC === 8, 'the end mark keeps its checksum where a record does');
const OFF_END_SEGMENT = 16;
const OFF_END_RECORDS_BYTES = 24;

export function encodeSegmentEnd(segNo: number, recordsBytes: number): Buffer {
  assert(isU53(segNo) && isU53(recordsBytes), `segment end ${segNo} at ${recordsBytes}`);
  const buf = Buffer.alloc(SEGMENT_END_BYTES);
  buf.writeUInt32LE(SEGMENT_END_MAGIC, OFF_MAGIC);
  buf.writeUInt8(RECORD_VERSION, OFF_VERSION);
  writeU64(buf, OFF_END_SEGMENT, segNo);
  writeU64(buf, OFF_END_RECORDS_BYTES, recordsBytes);
  buf.writeUInt32LE(crc32c(buf), OFF_CRC);
  return buf;
}

/** True when `buf` holds, at `offset`, the end mark of segment `segNo` with its records before it. */
export function isSegmentEnd(buf: Buffer, offset: number, segNo: number): boolean {
  if (offset < 0 || offset + SEGMENT_END_BYTES > buf.length) return false;
  return (
    buf.readUInt32LE(offset + OFF_MAGIC) === SEGMENT_END_MAGIC &&
    checksumMatches(buf, offset, SEGMENT_END_BYTES) &&
    buf.readUInt8(offset + OFF_VERSION) === RECORD_VERSION &&
    readU64(buf, offset + OFF_END_SEGMENT) === segNo &&
    readU64(buf, offset + OFF_END_RECORDS_BYTES) === offset
  );
}
