/**
 * The link frame codec (src/link/frames.ts, src/link/decoder.ts) proves:
 * - every frame type round-trips through encodeFrame/decodeFrame and the streaming decoder, with
 *   fields at their boundaries (0 and 2^53-1, epoch 2^32-1, 1- and 64-byte names, multi-byte
 *   utf8, empty and full group lists, text at its limit), and re-encodes to the same bytes;
 * - the auth proof verifies with the right secret only: not with a wrong secret, swapped names,
 *   another nonce (a replay), or a proof of the wrong length;
 * - RECORDS carries records in their exact journal bytes and refuses a record with a bad checksum,
 *   another group, a seq gap, a repeated seq, a tick, an epoch above the frame's, a bad count;
 * - every header fault has its code (magic, version, type, flags, length, checksum), and the
 *   streaming decoder is dead after one;
 * - the handshake limit is the largest handshake frame (a HELLO with every field at its limit), and
 *   a streaming decoder held to it refuses a larger header before its payload, and reads larger
 *   frames once the limit is raised;
 * - encoders assert on values this node must never send.
 *
 * Wire format under test (frames.ts has the payloads):
 *
 *    0       4       5      6        8               12              16
 *   +-------+-------+------+--------+---------------+---------------+-----------------+
 *   | "RCLK"|version| type | flags  | payloadLen u32| crc32c u32    | payload ...     |
 *   +-------+-------+------+--------+---------------+---------------+-----------------+
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { crc32c } from '@node-rs/crc32';
import { AssertionError } from '../../src/core/assert.js';
import type { RecordHeader, RecordKind } from '../../src/core/types.js';
import {
  byteOffset,
  RecordKind as Kind,
  kindCarriesData,
  nodeIdFromNumber,
  ordinal,
  seq,
  timeUs,
} from '../../src/core/types.js';
import { FrameDecoder } from '../../src/link/decoder.js';
import type { Frame, FrameErrorCode, LinkRecord, OutFrame } from '../../src/link/frames.js';
import {
  authProof,
  decodeFrame,
  encodeAck,
  encodeAuthFail,
  encodeChallengeResponse,
  encodeError,
  encodeFrame,
  encodeHello,
  encodeRecords,
  encodeResume,
  FrameType,
  LINK_BATCH_RECORDS_MAX,
  LINK_FRAME_HEADER_BYTES,
  LINK_FRAME_PAYLOAD_BYTES_MAX,
  LINK_HANDSHAKE_PAYLOAD_BYTES_MAX,
  LINK_HELLO_GROUPS_MAX,
  LINK_NONCE_BYTES,
  LINK_TEXT_BYTES_MAX,
  negotiateVersion,
  newNonce,
  sealFrame,
  verifyAuthProof,
} from '../../src/link/frames.js';
import { encodeHeader } from '../../src/storage/record.js';

const U53 = Number.MAX_SAFE_INTEGER;
const U32 = 0xffffffff;
const NAME64 = 'g'.repeat(64);
const NAME_UTF8 = 'ä'.repeat(32); // 64 utf8 bytes

function record(s: number, over: Partial<RecordHeader> = {}, length = 16): LinkRecord {
  const kind: RecordKind = over.kind ?? Kind.data;
  const len = kind === Kind.marker ? 0 : length;
  const header: RecordHeader = {
    kind,
    group: 'g-db',
    seq: seq(s),
    writeTimeUs: timeUs(s < 1e9 ? 1_700_000_000_000_000 + s : s),
    hostTimeUs: timeUs(0),
    nodeId: nodeIdFromNumber(0xdeadbeef),
    ordinal: ordinal(s < 1e9 ? s * 2 : s),
    epoch: 3,
    volume: kind === Kind.marker ? '' : 'db',
    offset: byteOffset(s < 1e9 ? 4096 * s : 0),
    length: len,
    markerNo: kind === Kind.marker ? s : 0,
    ...over,
  };
  const payload = kindCarriesData(kind) ? Buffer.alloc(len, s & 0xff) : Buffer.alloc(0);
  return { header, payload };
}

/** Raw journal bytes of a record: what the journal writes. */
function journalBytes(r: LinkRecord): Buffer {
  return Buffer.concat([encodeHeader(r.header, r.payload), r.payload]);
}

/** Frames covering every type, with fields at their boundaries. */
function boundaryFrames(): OutFrame[] {
  const nonce = Buffer.alloc(LINK_NONCE_BYTES, 0xa5);
  const manyGroups = Array.from({ length: LINK_HELLO_GROUPS_MAX }, (_, i) => `g${i}`.padEnd(64, 'x'));
  return [
    { type: FrameType.hello, versionMin: 1, versionMax: 1, nonce, nodeName: 'a', clusterId: '', groups: [] },
    {
      type: FrameType.hello,
      versionMin: 1,
      versionMax: 0xffff,
      nonce: newNonce(),
      nodeName: NAME_UTF8,
      clusterId: NAME64,
      groups: manyGroups,
    },
    { type: FrameType.challengeResponse, proof: Buffer.alloc(32, 0xff) },
    { type: FrameType.authOk },
    { type: FrameType.authFail, reason: '' },
    { type: FrameType.authFail, reason: 'é'.repeat(LINK_TEXT_BYTES_MAX / 2) },
    { type: FrameType.records, group: 'g-db', epoch: 3, records: [record(1)] },
    {
      type: FrameType.records,
      group: 'g-db',
      epoch: U32,
      records: [
        record(U53 - 3, { kind: Kind.zero, length: 1 << 20 }, 0),
        record(U53 - 2, { kind: Kind.copy, offset: byteOffset(U53 - 100) }, 64),
        record(U53 - 1, { kind: Kind.marker, epoch: U32 }),
        record(U53, { writeTimeUs: timeUs(U53), hostTimeUs: timeUs(U53), ordinal: ordinal(U53) }, 1),
      ],
    },
    { type: FrameType.ack, group: 'g', epoch: 0, durableSeq: seq(0), appliedSeq: seq(0) },
    { type: FrameType.ack, group: NAME64, epoch: U32, durableSeq: seq(U53), appliedSeq: seq(U53 - 1) },
    { type: FrameType.pairState, group: 'g', epoch: 2, state: 'copy', copyEndSeq: seq(0) },
    { type: FrameType.pairState, group: NAME64, epoch: U32, state: 'pair', copyEndSeq: seq(U53) },
    {
      type: FrameType.tick,
      group: NAME_UTF8,
      epoch: 1,
      seq: seq(0),
      key: { writeTimeUs: timeUs(0), nodeId: nodeIdFromNumber(0), ordinal: ordinal(0) },
    },
    {
      type: FrameType.tick,
      group: 'g-log',
      epoch: U32,
      seq: seq(U53),
      key: { writeTimeUs: timeUs(U53), nodeId: nodeIdFromNumber(U32), ordinal: ordinal(U53) },
    },
    { type: FrameType.resume, group: 'g', epoch: 0, nextSeq: seq(1) },
    { type: FrameType.resume, group: 'g', epoch: U32, nextSeq: seq(U53) },
    { type: FrameType.heartbeat, sentTimeUs: timeUs(0), echoTimeUs: timeUs(0) },
    { type: FrameType.heartbeat, sentTimeUs: timeUs(U53), echoTimeUs: timeUs(U53 - 1) },
    { type: FrameType.error, code: 'RC_ERR_PROTOCOL', message: 'bad frame: ✓' },
    { type: FrameType.error, code: 'X', message: '' },
    { type: FrameType.epoch, group: 'g-db', epoch: 0 },
    { type: FrameType.epoch, group: 'g-db', epoch: U32 },
  ];
}

/** A decoded frame compared with what was encoded: RECORDS by header, payload and exact bytes. */
function assertSameFrame(got: Frame, want: OutFrame): void {
  if (want.type !== FrameType.records || got.type !== FrameType.records) {
    assert.deepEqual(got, want);
    return;
  }
  assert.equal(got.group, want.group);
  assert.equal(got.epoch, want.epoch);
  assert.equal(got.records.length, want.records.length);
  want.records.forEach((w, i) => {
    const g = got.records[i]!;
    assert.deepEqual(g.header, w.header);
    assert.ok(g.payload.equals(w.payload), `record ${i} payload`);
    assert.ok(g.bytes.equals(journalBytes(w)), `record ${i} travels in its exact journal bytes`);
  });
}

function decodeOk(buf: Buffer): Frame {
  const r = decodeFrame(buf);
  assert.ok(r.ok, r.ok ? '' : `${r.error.code}: ${r.error.reason}`);
  assert.equal(r.bytes, buf.length);
  return r.frame;
}

function decodeErr(buf: Buffer, code: FrameErrorCode, reason?: RegExp): void {
  const r = decodeFrame(buf);
  assert.ok(!r.ok, 'must not decode');
  assert.equal(r.error.code, code, r.error.reason);
  if (reason) assert.match(r.error.reason, reason);
}

/** Re-seals a frame's payload after `edit`: hostile payloads with a valid checksum. */
function resealed(frame: Buffer, edit: (payload: Buffer) => Buffer): Buffer {
  const payload = Buffer.from(frame.subarray(LINK_FRAME_HEADER_BYTES));
  return sealFrame(frame[5]!, edit(payload));
}

describe('link frames: round trip', () => {
  test('every frame type at its boundaries decodes to what was encoded and re-encodes identically', () => {
    const seen = new Set<number>();
    for (const f of boundaryFrames()) {
      const buf = encodeFrame(f);
      const got = decodeOk(buf);
      assertSameFrame(got, f);
      assert.ok(encodeFrame(got).equals(buf), `${got.type} re-encodes to the same bytes`);
      seen.add(f.type);
    }
    assert.equal(seen.size, Object.keys(FrameType).length, 'every frame type covered');
  });

  test('the streaming decoder yields the same frames from one chunk and byte by byte', () => {
    const frames = boundaryFrames().filter((f) => f.type !== FrameType.hello || f.groups.length === 0);
    const stream = Buffer.concat(frames.map(encodeFrame));
    const oneChunk = drain([stream]);
    const byteByByte = drain([...stream].map((b) => Buffer.from([b])));
    assert.equal(oneChunk.length, frames.length);
    oneChunk.forEach((g, i) => assertSameFrame(g, frames[i]!));
    assert.deepEqual(byteByByte, oneChunk);
  });

  test('text longer than the limit is cut at a character boundary', () => {
    const long = 'x' + '€'.repeat(LINK_TEXT_BYTES_MAX); // 3-byte characters
    const got = decodeOk(encodeFrame({ type: FrameType.error, code: 'E', message: long }));
    assert.equal(got.type, FrameType.error);
    if (got.type !== FrameType.error) return;
    assert.ok(Buffer.byteLength(got.message) <= LINK_TEXT_BYTES_MAX);
    assert.ok(long.startsWith(got.message) && got.message.length === 1 + (LINK_TEXT_BYTES_MAX - 1) / 3);
  });

  test('versions negotiate to the highest common one, or none', () => {
    assert.equal(negotiateVersion({ versionMin: 1, versionMax: 3 }, { versionMin: 2, versionMax: 5 }), 3);
    assert.equal(negotiateVersion({ versionMin: 1, versionMax: 1 }, { versionMin: 1, versionMax: 1 }), 1);
    assert.equal(negotiateVersion({ versionMin: 1, versionMax: 1 }, { versionMin: 2, versionMax: 2 }), null);
  });
});

function drain(chunks: Buffer[]): Frame[] {
  const d = new FrameDecoder();
  const out: Frame[] = [];
  for (const c of chunks) {
    d.push(c);
    for (let s = d.next(); s !== 'need-more'; s = d.next()) {
      assert.ok(s.ok, s.ok ? '' : s.error.reason);
      out.push(s.frame);
    }
  }
  assert.equal(d.bufferedBytes, 0);
  return out;
}

describe('link frames: authentication', () => {
  const secret = 'change-me';
  const nonce = newNonce();
  const input = { nonce, prover: 'siteA', verifier: 'siteB' };
  const proof = authProof(secret, input);

  test('the proof verifies with the right secret, nonce and names', () => {
    assert.equal(proof.length, 32);
    assert.ok(verifyAuthProof(secret, input, proof));
    assert.ok(verifyAuthProof(Buffer.from(secret), input, proof), 'string and Buffer secrets agree');
    assert.ok(!proof.includes(Buffer.from(secret)), 'the secret is not in the proof');
  });

  test('a wrong secret, swapped names, another nonce or a mangled proof fails', () => {
    assert.ok(!verifyAuthProof('change-me!', input, proof));
    assert.ok(!verifyAuthProof(secret, { nonce, prover: 'siteB', verifier: 'siteA' }, proof), 'reflected');
    assert.ok(
      !verifyAuthProof(secret, { nonce, prover: 'siteA', verifier: 'siteC' }, proof),
      'other verifier',
    );
    assert.ok(
      !verifyAuthProof(secret, { nonce, prover: 'site', verifier: 'AsiteB' }, proof),
      'names shifted',
    );
    assert.ok(!verifyAuthProof(secret, { ...input, nonce: newNonce() }, proof), 'replayed to a new nonce');
    const flipped = Buffer.from(proof);
    flipped[31]! ^= 1;
    assert.ok(!verifyAuthProof(secret, input, flipped));
    assert.ok(!verifyAuthProof(secret, input, proof.subarray(0, 31)), 'short proof: false, no throw');
    assert.ok(!verifyAuthProof('', input, proof), 'empty secret never verifies');
    assert.ok(!verifyAuthProof(secret, { ...input, nonce: nonce.subarray(1) }, proof), 'short nonce');
  });

  test('the proof travels in CHALLENGE_RESPONSE and still verifies', () => {
    const got = decodeOk(encodeFrame({ type: FrameType.challengeResponse, proof }));
    assert.ok(got.type === FrameType.challengeResponse && verifyAuthProof(secret, input, got.proof));
  });
});

describe('link frames: RECORDS batch rules', () => {
  const batch = { group: 'g-db', epoch: 3, records: [record(5), record(6), record(7)] };
  const good = encodeRecords(batch);
  /** Payload offset of record i: group name (1 + 4), epoch, count, then records. */
  const recordStart = (i: number) =>
    1 + 4 + 4 + 4 + batch.records.slice(0, i).reduce((n, r) => n + journalBytes(r).length, 0);

  test('a record with a bad checksum is refused even when the frame checksum is right', () => {
    const bad = resealed(good, (p) => {
      p[recordStart(1) + 100]! ^= 0x10; // a payload byte of record 1
      return p;
    });
    decodeErr(bad, 'record', /record 1 .*checksum/);
    // Without re-sealing, the frame checksum catches it first.
    const raw = Buffer.from(good);
    raw[LINK_FRAME_HEADER_BYTES + recordStart(1) + 100]! ^= 0x10;
    decodeErr(raw, 'checksum');
  });

  test('a record of another group is refused', () => {
    const other = record(6, { group: 'g-log', volume: 'log' });
    const bad = resealed(good, (p) =>
      Buffer.concat([p.subarray(0, recordStart(1)), journalBytes(other), p.subarray(recordStart(2))]),
    );
    decodeErr(bad, 'record', /record 1 .*group "g-log" in a batch of "g-db"/);
  });

  test('a seq gap, a repeated seq, seq 0, a tick and a newer epoch are refused', () => {
    const cases: [LinkRecord, RegExp][] = [
      [record(8), /seq gap: 8 after 6/],
      [record(6), /seq 6 not after 6/],
      [record(4), /seq 4 not after 6/],
      [record(7, { kind: Kind.tick, volume: '', length: 0 }), /tick/],
      [record(7, { epoch: 4 }), /epoch 4 above/],
    ];
    for (const [last, reason] of cases) {
      const bad = resealed(good, (p) => Buffer.concat([p.subarray(0, recordStart(2)), journalBytes(last)]));
      decodeErr(bad, 'record', reason);
    }
    const zero = resealed(good, (p) =>
      Buffer.concat([p.subarray(0, recordStart(0)), journalBytes(record(0))]),
    );
    decodeErr(
      resealed(zero, (p) => (p.writeUInt32LE(1, 9), p)),
      'record',
      /seq 0/,
    );
  });

  test('count, truncation and trailing bytes are checked', () => {
    const withCount = (n: number) => resealed(good, (p) => (p.writeUInt32LE(n, 9), p));
    decodeErr(withCount(0), 'payload', /0 records/);
    decodeErr(withCount(LINK_BATCH_RECORDS_MAX + 1), 'payload', /records \(1\.\./);
    decodeErr(withCount(4), 'record', /record 3 .*past the end/);
    decodeErr(withCount(2), 'payload', /trailing/);
    decodeErr(
      resealed(good, (p) => p.subarray(0, p.length - 1)),
      'record',
      /record 2 .*past the end/,
    );
  });

  test('a head passed along (as the journal encoded it) gives the same frame; a wrong one is refused', () => {
    // Small payloads are copied into the frame, large ones sent by reference: both paths.
    const recs = [record(5), record(6, {}, 128 * 1024), record(7, { kind: Kind.marker })];
    const withHeads = recs.map((r) => ({ ...r, head: encodeHeader(r.header, r.payload) }));
    const plain = encodeRecords({ ...batch, records: recs });
    assert.ok(encodeRecords({ ...batch, records: withHeads }).equals(plain));
    const d = decodeFrame(plain);
    assert.ok(d.ok && d.frame.type === FrameType.records && d.frame.records.length === 3);
    // Another record's head, or a whole record's bytes instead of its head, must not be sent.
    const swapped = [withHeads[0]!, { ...withHeads[1]!, head: withHeads[0]!.head }, withHeads[2]!];
    assert.throws(() => encodeRecords({ ...batch, records: swapped }), /head given for seq 6/);
    const whole = [{ ...withHeads[0]!, head: journalBytes(recs[0]!) }];
    assert.throws(() => encodeRecords({ ...batch, records: whole }), /head given for seq 5/);
  });

  test('the encoder refuses to build a batch that breaks the rules', () => {
    const bad = [
      { ...batch, records: [] },
      { ...batch, records: [record(5), record(7)] },
      { ...batch, records: [record(5, { group: 'g-log' })] },
      { ...batch, records: [record(5, { kind: Kind.tick, volume: '', length: 0 })] },
      { ...batch, epoch: 2 },
      { ...batch, group: '' },
    ];
    for (const b of bad) assert.throws(() => encodeRecords(b), AssertionError);
  });
});

describe('link frames: header faults', () => {
  const frame = encodeAck({ group: 'g-db', epoch: 1, durableSeq: seq(9), appliedSeq: seq(5) });
  const patched = (off: number, v: number) => {
    const b = Buffer.from(frame);
    b[off] = v;
    return b;
  };

  test('each header fault has its code', () => {
    decodeErr(patched(0, 0x58), 'magic');
    decodeErr(patched(4, 2), 'version');
    decodeErr(patched(5, 0), 'type');
    decodeErr(patched(5, 13), 'type');
    decodeErr(patched(7, 0x80), 'flags');
    decodeErr(patched(16, frame[16]! ^ 1), 'checksum');
    decodeErr(patched(12, frame[12]! ^ 1), 'checksum');
    decodeErr(frame.subarray(0, frame.length - 1), 'short');
    decodeErr(Buffer.alloc(0), 'short');
    const big = Buffer.from(frame);
    big.writeUInt32LE(LINK_FRAME_PAYLOAD_BYTES_MAX + 1, 8);
    decodeErr(big, 'length');
    decodeErr(big.subarray(0, 12), 'length');
  });

  test('a payload that breaks a field rule is a payload error, with the checksum right', () => {
    const resume = encodeResume({ group: 'g', epoch: 1, nextSeq: seq(1) });
    decodeErr(
      resealed(resume, (p) => (p.fill(0, 6), p)),
      'payload',
      /nextSeq 0/,
    );
    decodeErr(
      resealed(resume, (p) => (p.writeUInt32LE(0x200000, 10), p)),
      'payload',
      /2\^53/,
    );
    decodeErr(
      resealed(resume, (p) => Buffer.concat([p, Buffer.from([0])])),
      'payload',
      /trailing/,
    );
    decodeErr(
      resealed(resume, (p) => p.subarray(0, 9)),
      'payload',
      /ends early/,
    );
    decodeErr(
      resealed(resume, (p) => ((p[0] = 0), p)),
      'payload',
      /empty/,
    );
    decodeErr(
      resealed(resume, (p) => ((p[1] = 0x07), p)),
      'payload',
      /not a valid name/,
    );
    const err = encodeError({ code: 'RC_ERR_X', message: 'm' });
    decodeErr(
      resealed(err, (p) => ((p[1] = 0x61), p)),
      'payload',
      /code "aC_ERR_X"/,
    );
    const hello = encodeHello({
      versionMin: 1,
      versionMax: 1,
      nonce: newNonce(),
      nodeName: 'a',
      clusterId: '',
      groups: [],
    });
    decodeErr(
      resealed(hello, (p) => (p.writeUInt16LE(2, 0), p)),
      'payload',
      /version range 2\.\.1/,
    );
    decodeErr(
      resealed(hello, (p) => (p.writeUInt16LE(0xffff, p.length - 2), p)),
      'payload',
      /groups exceeds/,
    );
  });

  test('the streaming decoder refuses an oversized length from the header alone and stays dead', () => {
    const d = new FrameDecoder();
    const head = Buffer.from(frame.subarray(0, LINK_FRAME_HEADER_BYTES));
    head.writeUInt32LE(0xffffffff, 8);
    d.push(head.subarray(0, 12));
    assert.equal(d.bufferedBytes, 0, 'nothing held once the length is known to be bad');
    const step = d.next();
    assert.ok(step !== 'need-more' && !step.ok && step.error.code === 'length');
    d.push(frame);
    assert.equal(d.bufferedBytes, 0, 'chunks after the error are dropped');
    assert.deepEqual(d.next(), step);
    assert.equal(d.error?.code, 'length');
  });

  test('the handshake limit is exactly the largest handshake frame', () => {
    const payloadBytes = (f: Buffer): number => f.length - LINK_FRAME_HEADER_BYTES;
    const largestHello = encodeHello({
      versionMin: 1,
      versionMax: 0xffff,
      nonce: newNonce(),
      nodeName: NAME64,
      clusterId: NAME_UTF8,
      groups: Array.from({ length: LINK_HELLO_GROUPS_MAX }, (_, i) => `${i}`.padStart(64, 'g')),
    });
    assert.equal(payloadBytes(largestHello), LINK_HANDSHAKE_PAYLOAD_BYTES_MAX);
    const text = 'x'.repeat(2 * LINK_TEXT_BYTES_MAX);
    for (const f of [
      encodeChallengeResponse({ proof: Buffer.alloc(32) }),
      encodeFrame({ type: FrameType.authOk }),
      encodeAuthFail({ reason: text }),
      encodeError({ code: 'RC_ERR_' + 'X'.repeat(57), message: text }),
    ]) {
      assert.ok(
        payloadBytes(f) <= LINK_HANDSHAKE_PAYLOAD_BYTES_MAX,
        `a handshake frame of ${payloadBytes(f)} bytes`,
      );
    }
  });

  test('a decoder held to the handshake limit refuses a larger header at once; raised, it reads on', () => {
    const limited = new FrameDecoder(LINK_HANDSHAKE_PAYLOAD_BYTES_MAX);
    const head = Buffer.from(frame.subarray(0, LINK_FRAME_HEADER_BYTES));
    head.writeUInt32LE(LINK_HANDSHAKE_PAYLOAD_BYTES_MAX + 1, 8);
    limited.push(head);
    assert.equal(limited.bufferedBytes, 0, 'nothing held once the length is known to be too large');
    const step = limited.next();
    assert.ok(step !== 'need-more' && !step.ok && step.error.code === 'length');
    assert.match(step.error.reason, new RegExp(`exceeds ${LINK_HANDSHAKE_PAYLOAD_BYTES_MAX}$`));

    // A small frame, then one above the handshake limit, in one chunk: the limit is raised after
    // the first (as a session does once authenticated) and the second is read.
    const small = encodeError({ code: 'RC_ERR_PROTOCOL', message: 'x' });
    const above = sealFrame(FrameType.error, Buffer.alloc(LINK_HANDSHAKE_PAYLOAD_BYTES_MAX + 1));
    const d = new FrameDecoder(LINK_HANDSHAKE_PAYLOAD_BYTES_MAX);
    d.push(Buffer.concat([small, above]));
    const first = d.next();
    assert.ok(first !== 'need-more' && first.ok, 'the small frame');
    d.payloadBytesMax = LINK_FRAME_PAYLOAD_BYTES_MAX;
    const second = d.next();
    assert.ok(second !== 'need-more' && !second.ok, 'the large frame is read (and fails on its payload)');
    assert.equal(second.error.code, 'payload', 'not refused for its length');
  });

  test('a bad checksum in the middle of a stream: the frames before it, then the error', () => {
    const bad = Buffer.from(frame);
    bad[bad.length - 1]! ^= 0x80;
    const d = new FrameDecoder();
    d.push(Buffer.concat([frame, bad, frame]));
    const first = d.next();
    assert.ok(first !== 'need-more' && first.ok);
    const second = d.next();
    assert.ok(second !== 'need-more' && !second.ok && second.error.code === 'checksum');
    assert.deepEqual(d.next(), second);
  });

  test('crc32c covers the header with the crc field zeroed, then the payload', () => {
    const zeroed = Buffer.from(frame);
    zeroed.writeUInt32LE(0, 12);
    assert.equal(frame.readUInt32LE(12), crc32c(zeroed) >>> 0);
    assert.ok(frame.subarray(0, 4).equals(Buffer.from('RCLK')));
    assert.equal(frame.readUInt32LE(8), frame.length - LINK_FRAME_HEADER_BYTES);
  });
});

describe('link frames: encoders assert on what this node must never send', () => {
  test('out-of-range numbers, bad names and bad lengths throw AssertionError', () => {
    const nonce = newNonce();
    const bad: (() => Buffer)[] = [
      () => encodeAck({ group: 'g', epoch: 1, durableSeq: seq(U53 + 1), appliedSeq: seq(0) }),
      () => encodeAck({ group: 'g', epoch: U32 + 1, durableSeq: seq(1), appliedSeq: seq(0) }),
      () => encodeAck({ group: 'g', epoch: -1, durableSeq: seq(1), appliedSeq: seq(0) }),
      () => encodeAck({ group: 'x'.repeat(65), epoch: 1, durableSeq: seq(1), appliedSeq: seq(0) }),
      () => encodeAck({ group: 'a\nb', epoch: 1, durableSeq: seq(1), appliedSeq: seq(0) }),
      () => encodeAck({ group: 'g', epoch: 1, durableSeq: seq(1), appliedSeq: seq(2) }),
      () => encodeResume({ group: 'g', epoch: 1, nextSeq: seq(0) }),
      () => encodeError({ code: 'lower', message: '' }),
      () => encodeHello({ versionMin: 2, versionMax: 1, nonce, nodeName: 'a', clusterId: '', groups: [] }),
      () =>
        encodeHello({
          versionMin: 1,
          versionMax: 1,
          nonce: nonce.subarray(1),
          nodeName: 'a',
          clusterId: '',
          groups: [],
        }),
      () => encodeHello({ versionMin: 1, versionMax: 1, nonce, nodeName: '', clusterId: '', groups: [] }),
      () => encodeHello({ versionMin: 1, versionMax: 1, nonce, nodeName: 'a', clusterId: '', groups: [''] }),
      () => encodeFrame({ type: FrameType.challengeResponse, proof: Buffer.alloc(31) }),
      () => authProof('', { nonce, prover: 'a', verifier: 'b' }),
    ];
    for (const f of bad) assert.throws(f, AssertionError);
  });
});
