/**
 * Fuzzing the link frame codec (TESTING.md layer 2; undici's split-data fuzz tests) proves, on
 * random valid frames of every type with fields drawn towards their boundaries:
 * - a stream of frames split at every byte offset, and cut into random chunks (1 byte upwards),
 *   decodes to the same frames, each re-encoding to exactly the bytes that were sent;
 * - every single-bit flip of an encoded frame is detected: decodeFrame never returns a frame, and
 *   in a stream the frames before it come out and nothing after it does;
 * - every truncation of a frame is 'short' / 'need-more', never a frame;
 * - random garbage, garbage behind a valid-looking header, and mutated payloads re-sealed with a
 *   valid checksum (so they reach the payload decoders) never throw; whatever decodes re-encodes
 *   to the same bytes (one encoding per frame) without tripping an encoder assertion;
 * - a declared length above the limit is refused as soon as the length field arrives, with nothing
 *   buffered, and chunks after it are dropped.
 *
 * Wire format under test (frames.ts has the payloads):
 *
 *    0       4       5      6        8               12              16
 *   +-------+-------+------+--------+---------------+---------------+-----------------+
 *   | "RCLK"|version| type | flags  | payloadLen u32| crc32c u32    | payload ...     |
 *   +-------+-------+------+--------+---------------+---------------+-----------------+
 *
 * Seeded: RC_FUZZ_SEED=<n> replays a run; the seed is printed.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
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
import type { LinkRecord, OutFrame } from '../../src/link/frames.js';
import {
  decodeFrame,
  encodeFrame,
  FrameType,
  LINK_FRAME_HEADER_BYTES,
  LINK_FRAME_PAYLOAD_BYTES_MAX,
  LINK_MAGIC,
  LINK_NONCE_BYTES,
  sealFrame,
} from '../../src/link/frames.js';
import { mulberry32 } from '../../src/testing/random.js';

const SEED = Number(process.env['RC_FUZZ_SEED'] ?? 20261123);
console.log(`link-frames fuzz seed ${SEED} (replay: RC_FUZZ_SEED=${SEED})`);

const rnd = mulberry32(SEED);
const int = (n: number) => Math.floor(rnd() * n);
const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;
const U53 = Number.MAX_SAFE_INTEGER;
const U32 = 0xffffffff;

/** A u53 drawn towards its boundaries. */
function u53(): number {
  return pick([0, 1, U53, U53 - 1, 2 ** 32 - 1, 2 ** 32, int(1000), Math.floor(rnd() * U53)]);
}
function epoch(): number {
  return pick([0, 1, U32, int(100), Math.floor(rnd() * U32)]);
}
function bytes(n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = int(256);
  return b;
}
/** A valid name of 1..64 utf8 bytes (or 0 when `allowEmpty`), mixing 1- to 4-byte characters. */
function name(allowEmpty = false): string {
  const target = allowEmpty && int(4) === 0 ? 0 : pick([1, 64, 1 + int(64)]);
  let s = '';
  while (true) {
    const ch = pick(['a', 'Z', '-', '.', '_', '9', 'ä', '€', '😀']);
    if (Buffer.byteLength(s + ch) > target) break;
    s += ch;
  }
  return s === '' && !allowEmpty ? 'g' : s;
}
function text(): string {
  const n = pick([0, 1, int(40), int(1100)]);
  let s = '';
  for (let i = 0; i < n; i++) s += pick(['a', ' ', 'é', '€', '😀', '\n']);
  return s;
}

function records(group: string, ep: number): LinkRecord[] {
  const n = 1 + int(5);
  const first = pick([1, 1 + int(1000), U53 - n + 1]);
  const kinds: RecordKind[] = [Kind.data, Kind.zero, Kind.copy, Kind.marker];
  return Array.from({ length: n }, (_, i) => {
    const kind = pick(kinds);
    const length = kind === Kind.marker ? 0 : kind === Kind.zero ? u53() : int(96);
    const header: RecordHeader = {
      kind,
      group,
      seq: seq(first + i),
      writeTimeUs: timeUs(u53()),
      hostTimeUs: timeUs(u53()),
      nodeId: nodeIdFromNumber(pick([0, U32, int(U32)])),
      ordinal: ordinal(u53()),
      epoch: Math.min(ep, epoch()),
      volume: kind === Kind.marker ? '' : name(),
      offset: byteOffset(u53()),
      length,
      markerNo: kind === Kind.marker ? u53() : 0,
    };
    return { header, payload: kindCarriesData(kind) ? bytes(length) : Buffer.alloc(0) };
  });
}

/** A random valid frame of `type`. */
function randomFrame(type: FrameType): OutFrame {
  switch (type) {
    case FrameType.hello: {
      const versionMin = 1 + int(3);
      const groups = Array.from({ length: pick([0, 1, int(6)]) }, () => name());
      const nonce = bytes(LINK_NONCE_BYTES);
      return {
        type,
        versionMin,
        versionMax: versionMin + int(3),
        nonce,
        nodeName: name(),
        clusterId: name(true),
        groups,
      };
    }
    case FrameType.challengeResponse:
      return { type, proof: bytes(32) };
    case FrameType.authOk:
      return { type };
    case FrameType.authFail:
      return { type, reason: text() };
    case FrameType.records: {
      const group = name();
      const ep = epoch();
      return { type, group, epoch: ep, records: records(group, ep) };
    }
    case FrameType.ack: {
      const durableSeq = u53();
      return {
        type,
        group: name(),
        epoch: epoch(),
        durableSeq: seq(durableSeq),
        appliedSeq: seq(Math.min(u53(), durableSeq)),
      };
    }
    case FrameType.tick: {
      const key = {
        writeTimeUs: timeUs(u53()),
        nodeId: nodeIdFromNumber(pick([0, U32])),
        ordinal: ordinal(u53()),
      };
      return { type, group: name(), epoch: epoch(), seq: seq(u53()), key };
    }
    case FrameType.resume:
      return { type, group: name(), epoch: epoch(), nextSeq: seq(Math.max(1, u53())) };
    case FrameType.heartbeat:
      return { type, sentTimeUs: timeUs(u53()), echoTimeUs: timeUs(u53()) };
    case FrameType.error:
      return { type, code: pick(['RC_ERR_PROTOCOL', 'RC_ERR_AUTH', 'X', 'E'.repeat(64)]), message: text() };
    case FrameType.epoch:
      return { type, group: name(), epoch: epoch() };
    case FrameType.pairState:
      return {
        type,
        group: name(),
        epoch: epoch(),
        state: pick(['copy', 'pair'] as const),
        copyEndSeq: seq(u53()),
      };
  }
}

const TYPES = Object.values(FrameType);

/** `n` encoded random frames, every type at least once when n >= the number of types. */
function randomEncoded(n: number): Buffer[] {
  return Array.from({ length: n }, (_, i) =>
    encodeFrame(randomFrame(i < TYPES.length ? TYPES[i]! : pick(TYPES))),
  );
}

/** Pushes `chunks` and drains after each; the frames re-encoded, and how the stream ended. */
function run(chunks: readonly Buffer[]): { frames: Buffer[]; end: 'need-more' | string } {
  const d = new FrameDecoder();
  const frames: Buffer[] = [];
  for (const c of chunks) {
    d.push(c);
    while (true) {
      const s = d.next();
      if (s === 'need-more') break;
      if (!s.ok) return { frames, end: s.error.code };
      frames.push(encodeFrame(s.frame));
    }
  }
  return { frames, end: 'need-more' };
}

function assertFrames(got: Buffer[], want: readonly Buffer[], what: string): void {
  assert.equal(got.length, want.length, `${what}: frame count`);
  for (let i = 0; i < want.length; i++) assert.ok(got[i]!.equals(want[i]!), `${what}: frame ${i} differs`);
}

describe(`link frames fuzz (RC_FUZZ_SEED=${SEED})`, () => {
  test('a stream of random frames decodes identically when split at every byte offset', () => {
    const frames = randomEncoded(30);
    const stream = Buffer.concat(frames);
    assertFrames(run([stream]).frames, frames, 'whole');
    for (let k = 0; k <= stream.length; k++) {
      const r = run([stream.subarray(0, k), stream.subarray(k)]);
      assert.equal(r.end, 'need-more');
      assertFrames(r.frames, frames, `split at ${k}`);
    }
  });

  test('random chunkings of random streams decode identically', () => {
    for (let round = 0; round < 300; round++) {
      const frames = randomEncoded(1 + int(12));
      const stream = Buffer.concat(frames);
      const chunks: Buffer[] = [];
      const sizeMax = pick([1, 3, 17, 200, 5000]);
      for (let at = 0; at < stream.length;) {
        const n = 1 + int(sizeMax);
        chunks.push(stream.subarray(at, at + n));
        at += n;
      }
      const r = run(chunks);
      assert.equal(r.end, 'need-more');
      assertFrames(r.frames, frames, `round ${round}, chunks up to ${sizeMax} bytes`);
    }
  });

  test('every single-bit flip of every frame is detected, alone and inside a stream', () => {
    const frames = randomEncoded(3 * TYPES.length);
    const before = frames[0]!;
    const after = frames[1]!;
    let flips = 0;
    for (const f of frames) {
      for (let bit = 0; bit < f.length * 8; bit++) {
        const bad = Buffer.from(f);
        bad[bit >> 3]! ^= 1 << (bit & 7);
        const alone = decodeFrame(bad);
        assert.ok(!alone.ok, `flip of bit ${bit} of a ${f[5]}-type frame decoded`);
        const r = run([Buffer.concat([before, bad, after])]);
        assertFrames(r.frames, [before], `flip of bit ${bit} in a stream`);
        flips++;
      }
    }
    assert.ok(flips > 10_000, `${flips} flips`);
  });

  test('every truncation of every frame needs more, never yields a frame', () => {
    for (const f of randomEncoded(3 * TYPES.length)) {
      for (let n = 0; n < f.length; n++) {
        const cut = f.subarray(0, n);
        const r = decodeFrame(cut);
        assert.ok(
          !r.ok && r.error.code === 'short',
          `prefix of ${n} bytes: ${r.ok ? 'a frame' : r.error.code}`,
        );
        const s = run([f, cut]);
        assert.equal(s.end, 'need-more');
        assertFrames(s.frames, [f], `frame then a ${n}-byte prefix`);
      }
    }
  });

  test('random garbage never throws and never yields a frame', () => {
    for (let i = 0; i < 20_000; i++) {
      const junk = bytes(int(300));
      if (i % 2 === 1 && junk.length >= 12) {
        // A valid-looking header, so the garbage reaches the length and checksum checks.
        LINK_MAGIC.copy(junk, 0);
        junk[4] = 1;
        junk[5] = pick(TYPES);
        junk.writeUInt16LE(0, 6);
        junk.writeUInt32LE(int(junk.length), 8);
      }
      const r = decodeFrame(junk);
      assert.ok(!r.ok || junk.length < LINK_FRAME_HEADER_BYTES, 'garbage decoded as a frame');
      assert.equal(run([junk.subarray(0, int(junk.length + 1)), junk]).frames.length, 0);
    }
  });

  test('mutated payloads behind a valid checksum never throw; what decodes re-encodes identically', () => {
    let decoded = 0;
    for (let i = 0; i < 20_000; i++) {
      const f = encodeFrame(randomFrame(pick(TYPES)));
      let payload: Buffer = Buffer.from(f.subarray(LINK_FRAME_HEADER_BYTES));
      for (let m = 1 + int(3); m > 0; m--) payload = mutate(payload);
      const sealed = sealFrame(int(8) === 0 ? int(256) : f[5]!, payload);
      const r = decodeFrame(sealed);
      if (!r.ok) continue;
      decoded++;
      assert.ok(
        encodeFrame(r.frame).equals(sealed),
        `type ${r.frame.type}: decodes but re-encodes differently`,
      );
    }
    assert.ok(
      decoded > 100,
      `${decoded} mutated payloads still decoded: the mutations reach valid frames too`,
    );
  });

  test('a declared length above the limit is refused before any of it is buffered', () => {
    const header = Buffer.from(encodeFrame({ type: FrameType.authOk }));
    for (let i = 0; i < 200; i++) {
      const declared =
        LINK_FRAME_PAYLOAD_BYTES_MAX + 1 + Math.floor(rnd() * (U32 - LINK_FRAME_PAYLOAD_BYTES_MAX - 1));
      header.writeUInt32LE(i === 0 ? U32 : declared, 8);
      const d = new FrameDecoder();
      const cut = int(13);
      d.push(header.subarray(0, cut));
      if (cut < 12) {
        assert.equal(d.next(), 'need-more');
        d.push(header.subarray(cut, 12));
      }
      assert.equal(d.bufferedBytes, 0, 'released as soon as the length field arrived');
      const s = d.next();
      assert.ok(s !== 'need-more' && !s.ok && s.error.code === 'length');
      d.push(bytes(4096));
      assert.equal(d.bufferedBytes, 0, 'chunks after the error are dropped');
      assert.deepEqual(d.next(), s);
    }
    // At the limit: accepted, and only what arrived is buffered.
    header.writeUInt32LE(LINK_FRAME_PAYLOAD_BYTES_MAX, 8);
    const d = new FrameDecoder();
    d.push(header);
    d.push(bytes(1000));
    assert.equal(d.next(), 'need-more');
    assert.equal(d.bufferedBytes, LINK_FRAME_HEADER_BYTES + 1000);
  });
});

/** One random edit: a byte set, a bit flipped, bytes cut or added, a length-like field nudged. */
function mutate(p: Buffer): Buffer {
  const at = int(p.length + 1);
  switch (int(6)) {
    case 0:
      if (p.length > 0) p[Math.min(at, p.length - 1)] = int(256);
      return p;
    case 1:
      if (p.length > 0) p[Math.min(at, p.length - 1)]! ^= 1 << int(8);
      return p;
    case 2:
      return p.subarray(0, at);
    case 3:
      return Buffer.concat([p.subarray(0, at), bytes(1 + int(8)), p.subarray(at)]);
    case 4:
      return Buffer.concat([p.subarray(0, at), p.subarray(Math.min(p.length, at + 1 + int(8)))]);
    default:
      if (p.length > 0) p[Math.min(at, p.length - 1)] = pick([0, 1, 0x7f, 0x80, 0xff, 64, 65]);
      return p;
  }
}
