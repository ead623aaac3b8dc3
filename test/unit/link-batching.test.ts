/**
 * The link's batched sending (src/link/frames.ts encodeRecordsParts, src/link/session.ts) proves:
 * - crc32cShift is zlib's combine for CRC-32C: crc(A|B) = shift(crc(A), |B|) ^ crc(B);
 * - a RECORDS frame encoded as parts is the one-buffer frame byte for byte, for batches mixing
 *   payloads below, at and above the by-reference size, and passes large payloads without copying;
 * - frames a session sends in one go (corked, one writev) arrive whole and in order at the peer,
 *   and a sender that waits on `congested` / whenWritable() while the socket is corked gets through
 *   a stream far above the send queue bound (no deadlock, nothing lost).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { crc32c } from '@node-rs/crc32';
import type { RecordHeader } from '../../src/core/types.js';
import { byteOffset, nodeIdFromNumber, ordinal, RecordKind, seq, timeUs } from '../../src/core/types.js';
import type { Frame, LinkRecord, RecordsFrame } from '../../src/link/frames.js';
import {
  crc32cShift,
  decodeFrame,
  encodeFrame,
  encodeFrameParts,
  encodeRecords,
  encodeRecordsParts,
  FrameType,
  LINK_PAYLOAD_BY_REFERENCE_BYTES_MIN,
} from '../../src/link/frames.js';
import { LINK_SEND_QUEUE_BYTES_MAX } from '../../src/link/session.js';
import { readyPair } from '../../src/testing/link-pair.js';

const BIG = LINK_PAYLOAD_BY_REFERENCE_BYTES_MIN;

/** Deterministic bytes, different per seed. */
function bytes(n: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  let x = seed * 2654435761 + 1;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}

function record(s: number, length: number): LinkRecord {
  const header: RecordHeader = {
    kind: length === 0 ? RecordKind.zero : RecordKind.data,
    group: 'g',
    seq: seq(s),
    writeTimeUs: timeUs(1_700_000_000_000_000 + s),
    hostTimeUs: timeUs(0),
    nodeId: nodeIdFromNumber(7),
    ordinal: ordinal(s),
    epoch: 1,
    volume: 'vol',
    offset: byteOffset(4096 * s),
    length: length === 0 ? 4096 : length,
    markerNo: 0,
  };
  return { header, payload: bytes(length, s) };
}

function batch(from: number, lengths: readonly number[]): RecordsFrame<LinkRecord> {
  return {
    type: FrameType.records,
    group: 'g',
    epoch: 2,
    records: lengths.map((n, i) => record(from + i, n)),
  };
}

test('crc32cShift combines checksums of concatenated bytes', () => {
  for (const [a, b] of [
    [0, 0],
    [1, 0],
    [0, 1],
    [7, 1000],
    [80, 65536],
    [3, 1 << 20],
    [1000, 5],
  ] as const) {
    const A = bytes(a, a + 1);
    const B = bytes(b, b + 2);
    const whole = crc32c(Buffer.concat([A, B])) >>> 0;
    assert.equal((crc32cShift(crc32c(A), B.length) ^ crc32c(B)) >>> 0, whole, `|A|=${a} |B|=${b}`);
  }
});

test('RECORDS as parts is the same frame, large payloads by reference', () => {
  const cases: number[][] = [
    [16],
    [0, 4096, 512],
    [BIG],
    [BIG - 512],
    [BIG + 512, 0],
    [4096, BIG, 4096, 1 << 20, 0, BIG * 3 + 4096],
    [1 << 20, 1 << 20, 1 << 20],
  ];
  let s = 1;
  for (const lengths of cases) {
    const f = batch(s, lengths);
    s += lengths.length;
    const parts = encodeRecordsParts(f);
    const whole = Buffer.concat(parts);
    assert.ok(encodeRecords(f).equals(whole), `lengths ${lengths.join(',')}`);
    assert.ok(Buffer.concat(encodeFrameParts(f)).equals(whole));
    const d = decodeFrame(whole);
    assert.ok(d.ok, d.ok ? '' : `${d.error.code}: ${d.error.reason}`);
    const got = d.frame as RecordsFrame;
    assert.equal(got.records.length, lengths.length);
    got.records.forEach((r, i) => assert.ok(r.payload.equals(f.records[i]!.payload)));
    const big = f.records.filter((r) => r.payload.length >= BIG).map((r) => r.payload);
    assert.deepEqual(
      parts.filter((p) => big.includes(p)),
      big,
      'each large payload is one of the parts, itself, in order',
    );
  }
});

test('frames sent in one go arrive whole and in order', async () => {
  const got: Frame[] = [];
  let arrived!: () => void;
  const all = new Promise<void>((r) => (arrived = r));
  const sent: RecordsFrame<LinkRecord>[] = [];
  const { a, end } = await readyPair((f) => {
    got.push(f);
    if (got.length === 40) arrived();
  });
  let s = 1;
  for (let i = 0; i < 40; i++) {
    const lengths = i % 3 === 0 ? [4096, BIG * 2, 512] : i % 3 === 1 ? [0] : [1 << 20];
    const f = batch(s, lengths);
    s += lengths.length;
    sent.push(f);
    assert.ok(a.send(f));
  }
  await all;
  end();
  got.forEach((f, i) => {
    assert.equal(f.type, FrameType.records);
    const r = f as RecordsFrame;
    assert.ok(encodeFrame(sent[i]!).equals(encodeFrame(r)), `frame ${i} as sent`);
  });
});

test('a sender waiting on congestion gets a long stream through a corked socket', async () => {
  const frames = 3 * Math.ceil(LINK_SEND_QUEUE_BYTES_MAX / (1 << 20)) + 5;
  let received = 0;
  let bytesIn = 0;
  let arrived!: () => void;
  const all = new Promise<void>((r) => (arrived = r));
  const { a, end } = await readyPair((f) => {
    const r = f as RecordsFrame;
    assert.equal(r.records[0]!.header.seq, received + 1, 'in order');
    bytesIn += r.records[0]!.payload.length;
    if (++received === frames) arrived();
  });
  let waits = 0;
  for (let i = 1; i <= frames; i++) {
    if (a.congested) {
      waits++;
      await a.whenWritable();
    }
    assert.ok(a.send(batch(i, [1 << 20])));
  }
  await all;
  end();
  assert.equal(bytesIn, frames * (1 << 20));
  assert.ok(waits > 0, 'the sender had to wait at least once');
});
