/**
 * The record codec (src/storage/record.ts) proves: every kind round-trips with every field at its
 * extremes; the checksum is the one a reader recomputes over header + names + payload, so
 * [header, payload] can be written without copying; decoding random garbage and garbage with a
 * valid-looking header never throws; every single-bit flip of an encoded record is detected; every
 * truncation of a record returns 'short'; bad names, kinds and lengths are refused.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { crc32c } from '@node-rs/crc32';
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
import {
  decodeRecord,
  encodeHeader,
  peekRecordBytes,
  RECORD_HEADER_BYTES,
  RECORD_MAGIC,
  RECORD_PAYLOAD_BYTES_MAX,
  recordBytes,
} from '../../src/storage/record.js';
import { mulberry32 } from '../../src/testing/random.js';

const prng = mulberry32;

function header(kind: RecordKind, length: number, over: Partial<RecordHeader> = {}): RecordHeader {
  return {
    kind,
    group: 'g-db',
    seq: seq(7),
    writeTimeUs: timeUs(1_700_000_000_123_456),
    hostTimeUs: timeUs(1_700_000_000_000_001),
    nodeId: nodeIdFromNumber(0xdeadbeef),
    ordinal: ordinal(99),
    epoch: 3,
    volume: kind === Kind.marker ? '' : 'db',
    offset: byteOffset(4096 * 1000),
    length,
    markerNo: kind === Kind.marker ? 12 : 0,
    ...over,
  };
}

function encode(h: RecordHeader, payload?: Buffer): Buffer {
  const head = encodeHeader(h, payload);
  return payload === undefined ? head : Buffer.concat([head, payload]);
}

function payloadFor(kind: RecordKind, length: number, fill = 0x5a): Buffer | undefined {
  return kindCarriesData(kind) ? Buffer.alloc(length, fill) : undefined;
}

const ALL_KINDS: RecordKind[] = [Kind.data, Kind.zero, Kind.copy, Kind.marker, Kind.tick];

describe('record codec', () => {
  test('every kind round-trips, at any offset of a larger buffer', () => {
    for (const kind of ALL_KINDS) {
      const length = kind === Kind.marker || kind === Kind.tick ? 0 : 4096;
      const h = header(kind, length);
      const payload = payloadFor(kind, length);
      const rec = encode(h, payload);
      assert.equal(rec.length, recordBytes(h, payload?.length ?? 0));
      const buf = Buffer.concat([Buffer.alloc(13, 0xff), rec, Buffer.alloc(5, 0xee)]);
      const r = decodeRecord(buf, 13);
      assert.ok(r.ok, `kind ${kind}`);
      assert.deepEqual(r.header, h);
      assert.equal(r.bytes, rec.length);
      assert.equal(peekRecordBytes(buf, 13), rec.length);
      assert.ok(r.payload.equals(payload ?? Buffer.alloc(0)));
    }
  });

  test('fields at their extremes and multi-byte names round-trip', () => {
    const big = Number.MAX_SAFE_INTEGER;
    const h = header(Kind.zero, big, {
      seq: seq(big),
      writeTimeUs: timeUs(big),
      hostTimeUs: timeUs(0),
      ordinal: ordinal(2 ** 32 + 1),
      nodeId: nodeIdFromNumber(0xffffffff),
      epoch: 0xffffffff,
      offset: byteOffset(2 ** 40 + 3),
      markerNo: big - 1,
      group: 'g'.repeat(64),
      volume: 'é'.repeat(32),
    });
    const r = decodeRecord(encode(h), 0);
    assert.ok(r.ok);
    assert.deepEqual(r.header, h);
  });

  test('a large payload round-trips and the checksum chains over [header, payload]', () => {
    const h = header(Kind.copy, 1024 * 1024);
    const payload = Buffer.alloc(1024 * 1024);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 31) & 0xff;
    const r = decodeRecord(encode(h, payload), 0);
    assert.ok(r.ok);
    assert.ok(r.payload.equals(payload));
  });

  test('encoding asserts on bad headers (programmer errors)', () => {
    assert.throws(() => encodeHeader(header(Kind.data, 10), Buffer.alloc(9)), /payload/);
    assert.throws(() => encodeHeader(header(Kind.zero, 10), Buffer.alloc(10)), /payload/);
    assert.throws(() => encodeHeader(header(Kind.data, 0, { group: '' })), /group/);
    assert.throws(() => encodeHeader(header(Kind.zero, 1, { group: 'x'.repeat(65) })), /group/);
    assert.throws(() => encodeHeader(header(Kind.zero, 1, { volume: 'a\nb' })), /volume/);
    assert.throws(() => encodeHeader(header(Kind.zero, 1, { seq: seq(-1) })), /seq/);
    assert.throws(() => encodeHeader(header(Kind.zero, 1, { seq: seq(2 ** 53) })), /seq/);
    assert.throws(() => encodeHeader(header(Kind.zero, 1, { epoch: 2 ** 32 })), /epoch/);
    assert.throws(() => encodeHeader(header(9 as RecordKind, 0)), /kind/);
    const tooBig = RECORD_PAYLOAD_BYTES_MAX + 1;
    assert.throws(() => encodeHeader(header(Kind.data, tooBig), Buffer.alloc(tooBig)), /payload/);
  });

  test('decoding random garbage never throws and never accepts', () => {
    const rnd = prng(1);
    for (let i = 0; i < 20_000; i++) {
      const len = Math.floor(rnd() * 300);
      const buf = Buffer.alloc(len);
      for (let k = 0; k < len; k++) buf[k] = Math.floor(rnd() * 256);
      // Half the time, a plausible header start, so the later checks are exercised too.
      if (len >= 8 && rnd() < 0.5) {
        buf.writeUInt32LE(RECORD_MAGIC, 0);
        buf[4] = 1;
        buf[6] = Math.floor(rnd() * 70);
        buf[7] = Math.floor(rnd() * 70);
      }
      if (len >= 24 && rnd() < 0.5) buf.writeUInt32LE(Math.floor(rnd() * 200), 20);
      const off = Math.floor(rnd() * (len + 2)) - 1;
      const r = decodeRecord(buf, off);
      assert.equal(r.ok, false);
      peekRecordBytes(buf, off);
    }
  });

  test('every single-bit flip of an encoded record is detected', () => {
    for (const kind of ALL_KINDS) {
      const length = kindCarriesData(kind) ? 300 : 0;
      const rec = encode(header(kind, length), payloadFor(kind, length, 0xa5));
      for (let bit = 0; bit < rec.length * 8; bit++) {
        const bad = Buffer.from(rec);
        bad[bit >> 3]! ^= 1 << (bit & 7);
        const r = decodeRecord(bad, 0);
        assert.equal(r.ok, false, `kind ${kind} bit ${bit} accepted`);
      }
    }
  });

  test('every truncation returns short', () => {
    for (const kind of ALL_KINDS) {
      const length = kindCarriesData(kind) ? 200 : 0;
      const rec = encode(header(kind, length), payloadFor(kind, length));
      for (let cut = 0; cut < rec.length; cut++) {
        const r = decodeRecord(rec.subarray(0, cut), 0);
        assert.deepEqual(r, { ok: false, reason: 'short' }, `kind ${kind} cut ${cut}`);
      }
    }
  });

  test('reasons: magic, version, bounds, names', () => {
    const rec = encode(header(Kind.zero, 10));
    const reason = (mutate: (b: Buffer) => void) => {
      const b = Buffer.from(rec);
      mutate(b);
      const r = decodeRecord(b, 0);
      return r.ok ? 'ok' : r.reason;
    };
    assert.equal(
      reason((b) => {
        b[0] = 0;
      }),
      'magic',
    );
    assert.equal(
      reason((b) => {
        b[4] = 2;
      }),
      'version',
    );
    assert.equal(
      reason((b) => {
        b[6] = 65;
      }),
      'bounds',
    );
    assert.equal(
      reason((b) => b.writeUInt32LE(RECORD_PAYLOAD_BYTES_MAX + 1, 20)),
      'bounds',
    );
    assert.equal(
      reason((b) => b.writeUInt32LE(0xffffffff, 24 + 4)),
      'checksum',
    );
    // Past the checksum: only a buggy writer gets these wrong, so re-sign after the change.
    const resigned = (h: RecordHeader, mutate: (b: Buffer) => void): string => {
      const b = encode(h);
      mutate(b);
      b.writeUInt32LE(0, 8);
      b.writeUInt32LE(crc32c(b) >>> 0, 8);
      const r = decodeRecord(b, 0);
      return r.ok ? 'ok' : r.reason;
    };
    assert.equal(
      resigned(header(Kind.zero, 10), (b) => {
        b[5] = 9;
      }),
      'bounds',
    );
    assert.equal(
      resigned(header(Kind.zero, 10), (b) => b.writeUInt32LE(0x200000, 24 + 4)),
      'bounds',
    );
    assert.equal(
      resigned(header(Kind.zero, 10, { volume: 'ab' }), (b) => {
        b[RECORD_HEADER_BYTES + 4] = 0xff;
      }),
      'names',
    );
    assert.equal(
      resigned(header(Kind.zero, 10, { volume: 'ab' }), (b) => {
        b[RECORD_HEADER_BYTES + 4] = 0x07;
      }),
      'names',
    );
  });
});
