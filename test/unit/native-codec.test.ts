/**
 * Proves the native protocol codec (src/frontend/native/protocol.ts): every frame round-trips;
 * a stream split at every byte decodes to the same frames (undici's split-data fuzz); flipped
 * bits and random garbage never make a decoder throw, only return a frame, "incomplete" or a
 * typed error; oversized lengths are refused from the header alone, before any payload arrives;
 * and checkRequest() refuses the field values the protocol forbids.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  ByteQueue,
  checkRequest,
  type Decoded,
  decodeHello,
  decodeOpenInfo,
  decodeReply,
  decodeRequest,
  encodeErrorReply,
  encodeHello,
  encodeOpenInfo,
  encodeReply,
  encodeRequest,
  NATIVE_MAX_ERROR_MESSAGE_BYTES,
  NATIVE_MAX_PAYLOAD_BYTES,
  REQUEST_HEADER_BYTES,
  type Request,
  RequestFlag,
  RequestType,
  Status,
} from '../../src/frontend/native/protocol.js';
import { nativeRequest } from '../../src/testing/wire.js';

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

const req = nativeRequest;

const sample: Request[] = [
  req({ type: RequestType.open, cookie: 1n, payload: Buffer.from('db') }),
  req({
    type: RequestType.write,
    cookie: 0xffff_ffff_ffff_fffen,
    handle: 7,
    offset: 4096n,
    writeTimeUs: 1_700_000_000_000_000n,
    flags: RequestFlag.fua,
    payload: Buffer.from('hello, world'),
  }),
  req({ type: RequestType.read, cookie: 3n, handle: 7, offset: 512n, length: 100 }),
  req({ type: RequestType.flush, cookie: 4n, handle: 7 }),
  req({ type: RequestType.close, cookie: 5n, handle: 7 }),
];

/** Decode every whole frame in the queue; stop at "incomplete" or an error. */
function drain<T>(q: ByteQueue, decode: (q: ByteQueue) => Decoded<T>): { frames: T[]; error?: string } {
  const frames: T[] = [];
  for (;;) {
    const d = decode(q);
    if (d.kind === 'incomplete') return { frames };
    if (d.kind === 'error') return { frames, error: d.error.kind };
    frames.push(d.frame);
  }
}

test('requests, replies, hello and OPEN info round-trip', () => {
  const q = new ByteQueue();
  for (const r of sample) q.push(encodeRequest(r));
  assert.deepEqual(drain(q, decodeRequest).frames, sample);
  assert.equal(q.length, 0);

  const reply = { type: RequestType.read, status: Status.OK, cookie: 9n, payload: Buffer.from('data') };
  q.push(encodeReply(reply));
  assert.deepEqual(drain(q, decodeReply).frames, [reply]);

  const hello = { version: 1, status: 0, maxPayloadBytes: 3, maxInFlight: 4, maxInFlightBytes: 5 };
  q.push(encodeHello(hello));
  assert.deepEqual(drain(q, decodeHello).frames, [hello]);

  const info = { handle: 3, readOnly: true, sizeBytes: 2 ** 40 };
  assert.deepEqual(decodeOpenInfo(encodeOpenInfo(info)), info);
  assert.equal('kind' in decodeOpenInfo(Buffer.alloc(3)), true);
});

test('a request stream split at every byte decodes to the same frames', () => {
  const stream = Buffer.concat(sample.map(encodeRequest));
  for (let cut = 0; cut <= stream.length; cut++) {
    const q = new ByteQueue();
    const frames: Request[] = [];
    for (const part of [stream.subarray(0, cut), stream.subarray(cut)]) {
      q.push(part);
      frames.push(...drain(q, decodeRequest).frames);
    }
    assert.deepEqual(frames, sample, `cut at ${cut}`);
  }
  // And one byte at a time.
  const q = new ByteQueue();
  const frames: Request[] = [];
  for (let i = 0; i < stream.length; i++) {
    q.push(stream.subarray(i, i + 1));
    frames.push(...drain(q, decodeRequest).frames);
  }
  assert.deepEqual(frames, sample);
});

test('a reply stream split at every byte decodes to the same frames', () => {
  const replies = [
    {
      type: RequestType.open,
      status: Status.OK,
      cookie: 1n,
      payload: encodeOpenInfo({ handle: 1, readOnly: false, sizeBytes: 1 << 20 }),
    },
    { type: RequestType.write, status: Status.OK, cookie: 2n, payload: Buffer.alloc(0) },
    { type: RequestType.read, status: Status.OK, cookie: 3n, payload: Buffer.from('0123456789') },
  ];
  const stream = Buffer.concat([
    ...replies.map(encodeReply),
    encodeErrorReply(2, Status.EPERM, 4n, 'read-only'),
  ]);
  for (let cut = 0; cut <= stream.length; cut++) {
    const q = new ByteQueue();
    const frames = [];
    for (const part of [stream.subarray(0, cut), stream.subarray(cut)]) {
      q.push(part);
      frames.push(...drain(q, decodeReply).frames);
    }
    assert.equal(frames.length, 4, `cut at ${cut}`);
    assert.deepEqual(frames.slice(0, 3), replies);
    assert.equal(frames[3]!.status, Status.EPERM);
    assert.equal(frames[3]!.payload.toString(), 'read-only');
  }
});

test('flipped bits never make the decoders throw', () => {
  const stream = Buffer.concat(sample.map(encodeRequest));
  for (let bit = 0; bit < stream.length * 8; bit++) {
    const bad = Buffer.from(stream);
    bad[bit >> 3]! ^= 1 << (bit & 7);
    const q = new ByteQueue();
    q.push(bad);
    const { frames } = drain(q, decodeRequest);
    for (const f of frames) checkRequest(f); // must not throw either
    const rq = new ByteQueue();
    rq.push(bad);
    drain(rq, decodeReply);
    const hq = new ByteQueue();
    hq.push(bad);
    drain(hq, decodeHello);
  }
});

test('random garbage gives a typed error or "incomplete", never a throw', () => {
  const rnd = lcg(42);
  for (let i = 0; i < 2000; i++) {
    const junk = Buffer.alloc(Math.floor(rnd() * 200));
    for (let j = 0; j < junk.length; j++) junk[j] = Math.floor(rnd() * 256);
    for (const decode of [decodeRequest, decodeReply, decodeHello] as const) {
      const q = new ByteQueue();
      q.push(junk);
      const d = (decode as (q: ByteQueue) => Decoded<unknown>)(q);
      assert.ok(['frame', 'incomplete', 'error'].includes(d.kind));
    }
  }
});

test('framing errors are typed and found from the header alone', () => {
  const one = (b: Buffer) => {
    const q = new ByteQueue();
    q.push(b);
    return decodeRequest(q);
  };
  const write = encodeRequest(sample[1]!);

  const badMagic = Buffer.from(write);
  badMagic[0] = 0;
  assert.deepEqual(kindOf(one(badMagic)), 'bad-magic');

  const badType = Buffer.from(write);
  badType[4] = 99;
  assert.deepEqual(kindOf(one(badType)), 'unknown-type');

  // Only the 40-byte header of a WRITE claiming 4 GiB - 1: refused before any payload.
  const huge = Buffer.from(write.subarray(0, REQUEST_HEADER_BYTES));
  huge.writeUInt32BE(0xffff_ffff, 20);
  assert.deepEqual(kindOf(one(huge)), 'oversized');
  huge.writeUInt32BE(NATIVE_MAX_PAYLOAD_BYTES, 20);
  assert.deepEqual(kindOf(one(huge)), 'incomplete');

  const longName = encodeRequest(req({ type: RequestType.open, payload: Buffer.alloc(2000, 0x61) }));
  assert.deepEqual(kindOf(one(longName)), 'oversized');

  const q = new ByteQueue();
  q.push(Buffer.from('GET / HTTP/1.1\r\n'));
  assert.equal(decodeHello(q).kind, 'error', 'a wrong hello magic shows before 24 bytes arrive');
});

function kindOf(d: Decoded<unknown>): string {
  return d.kind === 'error' ? d.error.kind : d.kind;
}

test('checkRequest refuses forbidden field values with EINVAL', () => {
  const w = sample[1]!;
  assert.equal(checkRequest(w), undefined);
  for (const r of sample) assert.equal(checkRequest(r), undefined, `sample ${r.type}`);
  const refused: Request[] = [
    { ...w, reserved: 1 },
    { ...w, flags: 2 },
    { ...sample[2]!, flags: RequestFlag.fua },
    { ...w, writeTimeUs: 2n ** 53n },
    { ...w, offset: 2n ** 53n },
    { ...sample[2]!, length: 0 },
    { ...sample[2]!, length: NATIVE_MAX_PAYLOAD_BYTES + 1 },
    { ...sample[2]!, writeTimeUs: 5n },
    { ...sample[3]!, offset: 1n },
    { ...sample[3]!, length: 1 },
    { ...sample[0]!, handle: 1 },
    { ...sample[0]!, payload: Buffer.from([0xff, 0xfe]), length: 2 },
  ];
  for (const r of refused) assert.equal(checkRequest(r)?.status, Status.EINVAL, JSON.stringify(r, bigints));
  assert.equal(checkRequest({ ...w, writeTimeUs: 2n ** 53n - 1n }), undefined, 'largest write time allowed');
});

function bigints(_k: string, v: unknown): unknown {
  return typeof v === 'bigint' ? v.toString() : v;
}

test('error messages are cut to the limit on a character boundary', () => {
  const q = new ByteQueue();
  q.push(encodeErrorReply(2, Status.EIO, 1n, 'é'.repeat(NATIVE_MAX_ERROR_MESSAGE_BYTES)));
  const d = decodeReply(q);
  assert.equal(d.kind, 'frame');
  if (d.kind !== 'frame') return;
  assert.ok(d.frame.payload.length <= NATIVE_MAX_ERROR_MESSAGE_BYTES);
  assert.equal(d.frame.payload.toString('utf8'), 'é'.repeat(NATIVE_MAX_ERROR_MESSAGE_BYTES / 2));
});
