/**
 * Proves the NBD codec and both phase machines in-process, without sockets: option decoders
 * reject malformed payloads with a reason instead of throwing; the handshake gives the same
 * effects however its input is split, refuses options with ERR_TLS_REQD when TLS is required and
 * forgets structured replies after STARTTLS; the transmission parser dispatches the same requests
 * and the same replies for a stream split at every byte; random garbage never throws in either
 * phase; BLOCK_STATUS extents are clamped to the request (exactly one with REQ_ONE); a write
 * completed in the event loop's check phase (as the write path completes them) is answered in that
 * same phase.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Handshake, type HandshakeEffect, type Negotiated } from '../../src/frontend/nbd/handshake.js';
import {
  decodeInfoRequest,
  decodeMetaContextRequest,
  IHAVEOPT,
  Opt,
  Rep,
  transmissionFlagsFor,
} from '../../src/frontend/nbd/protocol.js';
import { type ReplySink, ReplyWriter } from '../../src/frontend/nbd/replies.js';
import { clampExtents } from '../../src/frontend/nbd/requests.js';
import { Transmission, type TransmissionHost } from '../../src/frontend/nbd/transmission.js';
import { MemCatalog, MemExport } from '../../src/testing/mem-export.js';
import { mulberry32 } from '../../src/testing/random.js';
import { nbdRequest, u32be } from '../../src/testing/wire.js';

function option(opt: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(16);
  h.writeBigUInt64BE(IHAVEOPT, 0);
  h.writeUInt32BE(opt, 8);
  h.writeUInt32BE(data.length, 12);
  return Buffer.concat([h, data]);
}

const u32 = u32be;

function goData(name: string): Buffer {
  return Buffer.concat([u32(name.length), Buffer.from(name), Buffer.from([0, 0])]);
}

const request = nbdRequest;

const rng = mulberry32;

/** Every test fails (never hangs) if something does not settle. */
const T = { timeout: 60_000 };
const catalog = () => new MemCatalog([new MemExport({ name: 'vol', sizeBytes: 1 << 20 })]);

/** Feed `input` to a fresh handshake in pieces cut at `cuts`; return every effect, bytes joined. */
function runHandshake(input: Buffer, cuts: number[], tlsRequired = false) {
  const hs = new Handshake({ catalog: catalog(), tlsAvailable: tlsRequired, tlsRequired });
  const effects: HandshakeEffect[] = [];
  let prev = 0;
  for (const cut of [...cuts, input.length]) {
    const r = hs.feed(input.subarray(prev, cut));
    effects.push(...r.effects);
    prev = cut;
    if (effects.some((e) => e.kind !== 'send' && e.kind !== 'log')) break;
  }
  const sent = Buffer.concat(effects.flatMap((e) => (e.kind === 'send' ? [e.data] : [])));
  return { sent, terminal: effects.find((e) => e.kind !== 'send' && e.kind !== 'log'), hs };
}

/** Option replies in `bytes`, as [option, type] pairs. */
function replyTypes(bytes: Buffer): [number, number][] {
  const out: [number, number][] = [];
  for (let at = 0; at < bytes.length;) {
    out.push([bytes.readUInt32BE(at + 8), bytes.readUInt32BE(at + 12)]);
    at += 20 + bytes.readUInt32BE(at + 16);
  }
  return out;
}

describe('option decoders', () => {
  test('INFO/GO requests: good, truncated, count mismatch, bad UTF-8', T, () => {
    assert.deepEqual(
      decodeInfoRequest(Buffer.concat([u32(1), Buffer.from('v'), Buffer.from([0, 1, 0, 3])])),
      {
        ok: true,
        value: { name: 'v', infos: [3] },
      },
    );
    assert.equal(decodeInfoRequest(Buffer.from([0, 0])).ok, false);
    assert.equal(
      decodeInfoRequest(Buffer.concat([u32(1), Buffer.from('v'), Buffer.from([0, 2, 0, 3])])).ok,
      false,
    );
    assert.equal(decodeInfoRequest(Buffer.concat([u32(9), Buffer.from('v'), Buffer.from([0, 0])])).ok, false);
    assert.equal(
      decodeInfoRequest(Buffer.concat([u32(1), Buffer.from([0xff]), Buffer.from([0, 0])])).ok,
      false,
    );
    assert.equal(decodeInfoRequest(Buffer.concat([u32(1), Buffer.from([0]), Buffer.from([0, 0])])).ok, false);
  });

  test('meta context requests: queries parsed, overruns and trailing bytes rejected', T, () => {
    const good = Buffer.concat([u32(1), Buffer.from('v'), u32(1), u32(5), Buffer.from('base:')]);
    assert.deepEqual(decodeMetaContextRequest(good), {
      ok: true,
      value: { exportName: 'v', queries: ['base:'] },
    });
    assert.equal(decodeMetaContextRequest(Buffer.concat([good, Buffer.from([1])])).ok, false);
    assert.equal(
      decodeMetaContextRequest(Buffer.concat([u32(1), Buffer.from('v'), u32(2), u32(1)])).ok,
      false,
    );
    assert.equal(
      decodeMetaContextRequest(Buffer.concat([u32(1), Buffer.from('v'), u32(1), u32(99)])).ok,
      false,
    );
  });
});

describe('handshake machine', () => {
  const input = Buffer.concat([
    u32(3),
    option(0x77, Buffer.alloc(40, 1)),
    option(Opt.LIST),
    option(Opt.STRUCTURED_REPLY),
    option(Opt.GO, goData('vol')),
    Buffer.from('first request bytes'),
  ]);

  test('the same replies and the same leftover however the input is split', T, () => {
    const whole = runHandshake(input, []);
    assert.equal(whole.terminal?.kind, 'transmit');
    assert.deepEqual(replyTypes(whole.sent), [
      [0x77, Rep.ERR_UNSUP],
      [Opt.LIST, Rep.SERVER],
      [Opt.LIST, Rep.ACK],
      [Opt.STRUCTURED_REPLY, Rep.ACK],
      [Opt.GO, Rep.INFO],
      [Opt.GO, Rep.INFO],
      [Opt.GO, Rep.ACK],
    ]);
    for (let cut = 1; cut < input.length; cut++) {
      const split = runHandshake(input, [cut]);
      assert.ok(split.sent.equals(whole.sent), `split at ${cut}`);
      assert.equal(split.terminal?.kind, 'transmit');
    }
  });

  test('leftover bytes after GO are handed back', T, () => {
    const hs = new Handshake({ catalog: catalog(), tlsAvailable: false, tlsRequired: false });
    const r = hs.feed(input);
    assert.equal(r.leftover.toString(), 'first request bytes');
    const t = r.effects.find((e) => e.kind === 'transmit');
    assert.ok(t && t.kind === 'transmit');
    const n: Negotiated = t.negotiated;
    assert.equal(n.structuredReplies, true);
    assert.equal(n.transmissionFlags, transmissionFlagsFor(false));
  });

  test('TLS required: ERR_TLS_REQD before STARTTLS, state forgotten after it', T, () => {
    const hs = new Handshake({ catalog: catalog(), tlsAvailable: true, tlsRequired: true });
    const r1 = hs.feed(
      Buffer.concat([u32(3), option(Opt.LIST), option(0x55), option(Opt.STARTTLS), u32(0xabcdef)]),
    );
    const sent = Buffer.concat(r1.effects.flatMap((e) => (e.kind === 'send' ? [e.data] : [])));
    assert.deepEqual(replyTypes(sent), [
      [Opt.LIST, Rep.ERR_TLS_REQD],
      [0x55, Rep.ERR_TLS_REQD],
      [Opt.STARTTLS, Rep.ACK],
    ]);
    assert.equal(r1.effects.at(-1)?.kind, 'starttls');
    assert.deepEqual([...r1.leftover], [0, 0xab, 0xcd, 0xef], 'bytes after STARTTLS are returned');
    hs.tlsStarted();
    const r2 = hs.feed(Buffer.concat([option(Opt.STRUCTURED_REPLY), option(Opt.STARTTLS)]));
    const sent2 = Buffer.concat(r2.effects.flatMap((e) => (e.kind === 'send' ? [e.data] : [])));
    assert.deepEqual(replyTypes(sent2), [
      [Opt.STRUCTURED_REPLY, Rep.ACK],
      [Opt.STARTTLS, Rep.ERR_INVALID],
    ]);
    const r3 = hs.feed(option(Opt.EXPORT_NAME, Buffer.from('vol')));
    const t = r3.effects.find((e) => e.kind === 'transmit');
    assert.ok(t && t.kind === 'transmit' && t.negotiated.structuredReplies);
  });

  test('STARTTLS forgets structured replies negotiated before it', T, () => {
    const hs = new Handshake({ catalog: catalog(), tlsAvailable: true, tlsRequired: false });
    hs.feed(Buffer.concat([u32(3), option(Opt.STRUCTURED_REPLY), option(Opt.STARTTLS)]));
    hs.tlsStarted();
    const r = hs.feed(option(Opt.GO, goData('vol')));
    const t = r.effects.find((e) => e.kind === 'transmit');
    assert.ok(t && t.kind === 'transmit');
    assert.equal(t.negotiated.structuredReplies, false);
  });

  test('random garbage never throws and ends in close or more-bytes-needed', T, () => {
    const rand = rng(1);
    for (let i = 0; i < 2000; i++) {
      const len = Math.floor(rand() * 200);
      const junk = Buffer.alloc(len);
      for (let j = 0; j < len; j++) junk[j] = Math.floor(rand() * 256);
      // Half the cases start with a valid prefix, so option parsing sees garbage too.
      const input = i % 2 ? Buffer.concat([u32(3), option(0, Buffer.alloc(0)).subarray(0, 8), junk]) : junk;
      const r = runHandshake(input, [Math.floor(rand() * input.length)]);
      assert.ok(r.terminal === undefined || ['close', 'transmit'].includes(r.terminal.kind));
    }
  });
});

/** A Transmission over a MemExport with a recording sink and host. */
function makeTransmission(structured: boolean) {
  const exp = new MemExport({ name: 'vol', sizeBytes: 1 << 20 });
  const out: Buffer[] = [];
  const sink: ReplySink = {
    destroyed: false,
    writableEnded: false,
    write: (b) => out.push(Buffer.from(b)) > 0,
    cork: () => {},
    uncork: () => {},
  };
  const finished: string[] = [];
  const host: TransmissionHost = {
    pauseInput: () => {},
    resumeInput: () => {},
    outputQueuedBytes: () => 0,
    finish: (reason) => finished.push(reason),
    log: () => {},
  };
  const negotiated: Negotiated = {
    export: exp,
    transmissionFlags: transmissionFlagsFor(false),
    structuredReplies: structured,
    baseAllocation: structured,
  };
  const writer = new ReplyWriter(sink);
  const tx = new Transmission(negotiated, writer, host);
  return { exp, tx, writer, out, finished };
}

const settle = () => new Promise((r) => setImmediate(r));

/** Parse simple replies (16 bytes, + data for handles listed in `reads`) into handle -> error. */
function simpleReplies(
  bytes: Buffer,
  reads: Map<number, number>,
): Map<number, { error: number; data?: Buffer }> {
  const out = new Map<number, { error: number; data?: Buffer }>();
  for (let at = 0; at < bytes.length;) {
    assert.equal(bytes.readUInt32BE(at), 0x67446698);
    const error = bytes.readUInt32BE(at + 4);
    const handle = Number(bytes.readBigUInt64BE(at + 8));
    at += 16;
    const n = error === 0 ? (reads.get(handle) ?? 0) : 0;
    out.set(handle, n ? { error, data: bytes.subarray(at, at + n) } : { error });
    at += n;
  }
  return out;
}

describe('transmission parser', () => {
  const pattern = (n: number, seed: number) =>
    Buffer.from(Array.from({ length: n }, (_, i) => (i * 7 + seed) & 255));
  const stream = Buffer.concat([
    request(1, 1, 0, 4096),
    pattern(4096, 1),
    request(1, 2, 8192, 1024, 1),
    pattern(1024, 2),
    request(0, 3, 0, 512),
    request(7, 4, 0, 4096, 0x80), // unknown flag: EINVAL
    request(1, 5, 1 << 20, 512), // past the end: ENOSPC, payload skipped
    pattern(512, 3),
    request(6, 6, 12288, 4096, 2),
    request(0, 7, 8192, 1024),
  ]);
  const reads = new Map([
    [3, 512],
    [7, 1024],
  ]);

  test('a stream split at every byte gives the same data and the same replies', T, async () => {
    const whole = makeTransmission(false);
    whole.tx.onData(stream);
    await settle();
    whole.writer.flush();
    const expected = simpleReplies(Buffer.concat(whole.out), reads);
    assert.deepEqual(
      [...expected].map(([h, r]) => [h, r.error]).sort((a, b) => (a[0] ?? 0) - (b[0] ?? 0)),
      [
        [1, 0],
        [2, 0],
        [3, 0],
        [4, 22],
        [5, 28],
        [6, 0],
        [7, 0],
      ],
    );
    assert.ok(expected.get(7)?.data?.equals(pattern(1024, 2)));
    for (let cut = 1; cut < stream.length; cut += 1) {
      const t = makeTransmission(false);
      t.tx.onData(stream.subarray(0, cut));
      t.tx.onData(stream.subarray(cut));
      await settle();
      t.writer.flush();
      assert.deepEqual(simpleReplies(Buffer.concat(t.out), reads), expected, `split at ${cut}`);
      assert.ok(t.exp.data.equals(whole.exp.data), `data split at ${cut}`);
    }
  });

  test('random garbage never throws; a bad magic finishes the connection', T, async () => {
    const rand = rng(2);
    for (let i = 0; i < 300; i++) {
      const t = makeTransmission(i % 2 === 0);
      const parts = [];
      for (let k = 0; k < 4; k++) {
        const r = request(
          Math.floor(rand() * 10),
          k,
          Math.floor(rand() * 8) * 512,
          Math.floor(rand() * 4) * 512,
        );
        r.writeUInt16BE(Math.floor(rand() * 64), 4);
        parts.push(r);
      }
      const junk = Buffer.alloc(Math.floor(rand() * 100));
      for (let j = 0; j < junk.length; j++) junk[j] = Math.floor(rand() * 256);
      t.tx.onData(Buffer.concat([...parts, junk]));
      await settle();
      t.writer.flush();
    }
    const t = makeTransmission(false);
    t.tx.onData(Buffer.alloc(28, 0xff));
    assert.equal(t.finished.length, 1);
  });

  // The write path completes host writes in a batch it runs with setImmediate (the check phase). A
  // flush scheduled by the reply from there would wait for the next loop turn, after its timers.
  for (const [name, req] of [
    ['WRITE', Buffer.concat([request(1, 1, 0, 512), Buffer.alloc(512, 7)])],
    ['WRITE_ZEROES', request(6, 1, 0, 512)],
    ['TRIM', request(4, 1, 0, 512)],
  ] as const) {
    test(
      `a ${name} completed in the check phase is answered in that phase, not a loop turn later`,
      T,
      async () => {
        const t = makeTransmission(false);
        const inBatch =
          <A extends unknown[]>(op: (...a: A) => Promise<void>) =>
          (...a: A): Promise<void> =>
            new Promise((resolve, reject) =>
              setImmediate(() => {
                op(...a).then(resolve, reject);
                // Long enough that a timer set at dispatch (1 ms) is due when the next turn begins.
                const until = performance.now() + 3;
                while (performance.now() < until);
              }),
            );
        t.exp.write = inBatch(t.exp.write.bind(t.exp));
        t.exp.zero = inBatch(t.exp.zero.bind(t.exp));
        const repliesAtNextTurn = await new Promise<number>((resolve) =>
          setTimeout(() => {
            t.tx.onData(req);
            setTimeout(() => resolve(t.out.length), 0);
          }, 0),
        );
        assert.equal(repliesAtNextTurn, 1, 'the reply had left before the next turn of the event loop');
        assert.deepEqual([...simpleReplies(Buffer.concat(t.out), new Map()).keys()], [1]);
      },
    );
  }
});

describe('BLOCK_STATUS extents', () => {
  test('clamped to the request, merged, bounded in count, never empty', T, () => {
    const ex = [
      { length: 4096, flags: 3 },
      { length: 4096, flags: 3 },
      { length: 8192, flags: 0 },
    ];
    assert.deepEqual(clampExtents(ex, 10000, 1), [{ length: 8192, flags: 3 }]);
    assert.deepEqual(clampExtents(ex, 4096, 1), [{ length: 4096, flags: 3 }]);
    assert.deepEqual(clampExtents(ex, 10000, 8), [
      { length: 8192, flags: 3 },
      { length: 1808, flags: 0 },
    ]);
    assert.deepEqual(clampExtents([], 512, 8), [{ length: 512, flags: 0 }]);
    assert.deepEqual(clampExtents([{ length: 0, flags: 1 }], 512, 8), [{ length: 512, flags: 0 }]);
  });
});
