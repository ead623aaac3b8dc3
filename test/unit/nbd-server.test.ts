/**
 * Proves the NBD server's wire behaviour with a raw TCP client written here (no NBD library):
 * the exact handshake bytes (NO_ZEROES or not), unknown options answered with ERR_UNSUP and the
 * session going on to GO, LIST and INFO reply contents, malformed and oversized input (errors
 * where the protocol has one, a logged disconnect where it has none), unknown flags and commands
 * answered with EINVAL, structured replies and BLOCK_STATUS with REQ_ONE, out-of-order replies,
 * the in-flight bound, and DISC / close() answering every request in flight before closing, also
 * when the client half-closes (FIN) after DISC or without it, or in the handshake.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import type { ExportCatalog, Extent, VolumeExport } from '../../src/frontend/backend.js';
import { NbdServer } from '../../src/frontend/nbd/server.js';
import { MemCatalog, MemExport } from '../../src/testing/mem-export.js';
import { nbdRequest, u32be } from '../../src/testing/wire.js';

const MiB = 1024 * 1024;
const IHAVEOPT = 0x49484156454f5054n;
const OPT = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, INFO: 6, GO: 7, SR: 8, LIST_META: 9, SET_META: 10, EXT: 11 };
const REP = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META: 4,
  UNSUP: 0x80000001,
  INVALID: 0x80000003,
  UNKNOWN: 0x80000006,
};
const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, ZERO: 6, BLOCK_STATUS: 7 };
const EINVAL = 22;
/** Every test fails (never hangs) if a reply does not come. */
const T = { timeout: 20_000 };
const ALL_FLAGS = 0x1 | 0x4 | 0x8 | 0x20 | 0x40 | 0x100 | 0x400 | 0x800;

/** A byte-exact NBD client: every read takes exactly the bytes asked for. */
class Raw {
  private buf = Buffer.alloc(0);
  private want: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  closed = false;
  readonly closedP: Promise<void>;

  private constructor(readonly sock: net.Socket) {
    sock.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.pump();
    });
    this.closedP = new Promise((resolve) =>
      sock.on('close', () => {
        this.closed = true;
        this.want?.reject(new Error(`closed with ${this.buf.length} bytes buffered`));
        resolve();
      }),
    );
    sock.on('error', () => {});
  }

  static connect(port: number): Promise<Raw> {
    return new Promise((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1', () => resolve(new Raw(s)));
      s.once('error', reject);
    });
  }

  read(n: number): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      if (this.closed && this.buf.length < n) return reject(new Error('closed'));
      this.want = { n, resolve, reject };
      this.pump();
    });
  }

  send(...parts: Buffer[]): void {
    this.sock.write(Buffer.concat(parts));
  }

  private pump(): void {
    const w = this.want;
    if (!w || this.buf.length < w.n) return;
    this.want = undefined;
    const out = this.buf.subarray(0, w.n);
    this.buf = this.buf.subarray(w.n);
    w.resolve(out);
  }
}

function option(opt: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(16);
  h.writeBigUInt64BE(IHAVEOPT, 0);
  h.writeUInt32BE(opt, 8);
  h.writeUInt32BE(data.length, 12);
  return Buffer.concat([h, data]);
}

function infoData(name: string, infos: number[] = []): Buffer {
  const n = Buffer.from(name);
  const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  for (const [i, t] of infos.entries()) b.writeUInt16BE(t, 6 + n.length + 2 * i);
  return b;
}

function metaData(name: string, queries: string[]): Buffer {
  const parts = [u32(Buffer.byteLength(name)), Buffer.from(name), u32(queries.length)];
  for (const q of queries) parts.push(u32(Buffer.byteLength(q)), Buffer.from(q));
  return Buffer.concat(parts);
}

const u32 = u32be;

const request = nbdRequest;

async function optReply(c: Raw): Promise<{ option: number; type: number; data: Buffer }> {
  const h = await c.read(20);
  assert.equal(h.readBigUInt64BE(0), 0x3e889045565a9n, 'option reply magic');
  const len = h.readUInt32BE(16);
  return {
    option: h.readUInt32BE(8),
    type: h.readUInt32BE(12),
    data: len ? await c.read(len) : Buffer.alloc(0),
  };
}

/** Replies to one option up to and including the final one (ACK or an error). */
async function optReplies(c: Raw): Promise<{ option: number; type: number; data: Buffer }[]> {
  const out = [];
  for (;;) {
    const r = await optReply(c);
    out.push(r);
    if (r.type === REP.ACK || r.type >= 0x80000000) return out;
  }
}

async function greet(c: Raw, clientFlags = 3): Promise<void> {
  const g = await c.read(18);
  assert.equal(g.readBigUInt64BE(0), 0x4e42444d41474943n, 'NBDMAGIC');
  assert.equal(g.readBigUInt64BE(8), IHAVEOPT, 'IHAVEOPT');
  assert.equal(g.readUInt16BE(16), 3, 'handshake flags FIXED_NEWSTYLE|NO_ZEROES');
  c.send(u32(clientFlags));
}

/** Connect, optionally negotiate structured replies + base:allocation, GO to `name`. */
async function open(port: number, name: string, opts: { structured?: boolean; meta?: boolean } = {}) {
  const c = await Raw.connect(port);
  await greet(c);
  if (opts.structured) {
    c.send(option(OPT.SR));
    assert.equal((await optReply(c)).type, REP.ACK);
  }
  if (opts.meta) {
    c.send(option(OPT.SET_META, metaData(name, ['base:allocation'])));
    const rs = await optReplies(c);
    assert.deepEqual(
      rs.map((r) => r.type),
      [REP.META, REP.ACK],
    );
  }
  c.send(option(OPT.GO, infoData(name)));
  const rs = await optReplies(c);
  assert.equal(rs.at(-1)?.type, REP.ACK, 'GO succeeded');
  return c;
}

async function simpleReply(c: Raw): Promise<{ error: number; handle: number }> {
  const h = await c.read(16);
  assert.equal(h.readUInt32BE(0), 0x67446698, 'simple reply magic');
  return { error: h.readUInt32BE(4), handle: Number(h.readBigUInt64BE(8)) };
}

async function chunk(c: Raw): Promise<{ flags: number; type: number; handle: number; payload: Buffer }> {
  const h = await c.read(20);
  assert.equal(h.readUInt32BE(0), 0x668e33ef, 'structured reply magic');
  const len = h.readUInt32BE(16);
  return {
    flags: h.readUInt16BE(4),
    type: h.readUInt16BE(6),
    handle: Number(h.readBigUInt64BE(8)),
    payload: len ? await c.read(len) : Buffer.alloc(0),
  };
}

/** An export whose operations wait until the test opens the gate. */
class GatedExport implements VolumeExport {
  readonly name = 'gated';
  readonly description = 'gated';
  readonly sizeBytes = 16 * MiB;
  readonly readOnly = false;
  started = 0;
  private waiting: (() => void)[] = [];
  private gated = true;
  open(): void {
    this.gated = false;
    for (const w of this.waiting.splice(0)) w();
  }
  private wait(): Promise<void> {
    this.started++;
    return this.gated ? new Promise((r) => this.waiting.push(r)) : Promise.resolve();
  }
  async read(_o: number, length: number): Promise<Buffer> {
    await this.wait();
    return Buffer.alloc(length, 7);
  }
  async write(): Promise<void> {
    await this.wait();
  }
  async zero(): Promise<void> {}
  async flush(): Promise<void> {}
  async blockStatus(_o: number, length: number): Promise<Extent[]> {
    return [{ length, flags: 0 }];
  }
  async cache(): Promise<void> {}
}

const logs: { level: string; msg: string; fields: Record<string, unknown> }[] = [];
let vol: MemExport;
let server: NbdServer;
let port: number;

function startServer(catalog: ExportCatalog): Promise<{ server: NbdServer; port: number }> {
  const s = new NbdServer({ catalog, log: (level, msg, fields) => logs.push({ level, msg, fields }) });
  return s.listen('127.0.0.1', 0).then(({ port }) => ({ server: s, port }));
}

/** The server has seen every connection close (its 'close' may come a little after the client's). */
async function noConnections(s: NbdServer): Promise<void> {
  for (let i = 0; i < 200 && s.connectionCount > 0; i++) await new Promise((r) => setTimeout(r, 10));
  assert.equal(s.connectionCount, 0, 'the server closed every connection');
}

before(async () => {
  vol = new MemExport({ name: 'vol', sizeBytes: 16 * MiB, description: 'the test volume' });
  const ro = new MemExport({ name: 'ro', sizeBytes: MiB, readOnly: true });
  ({ server, port } = await startServer(new MemCatalog([vol, ro])));
});
after(() => server.close());

describe('handshake', () => {
  test('greeting, EXPORT_NAME reply with and without NO_ZEROES', T, async () => {
    for (const [flags, len] of [
      [3, 10],
      [1, 134],
    ] as const) {
      const c = await Raw.connect(port);
      await greet(c, flags);
      c.send(option(OPT.EXPORT_NAME, Buffer.from('vol')));
      const r = await c.read(len);
      assert.equal(r.readBigUInt64BE(0), BigInt(16 * MiB));
      assert.equal(r.readUInt16BE(8), ALL_FLAGS);
      assert.ok(r.subarray(10).equals(Buffer.alloc(len - 10)), 'trailing zeroes');
      c.send(request(CMD.DISC, 0, 0, 0));
      await c.closedP;
    }
  });

  test('unknown client flags close the connection', T, async () => {
    const c = await Raw.connect(port);
    await greet(c, 0x80);
    await c.closedP;
    assert.ok(logs.some((l) => String(l.fields.reason).includes('unknown client flags')));
  });

  test('unknown and unsupported options get ERR_UNSUP, data skipped, then GO works', T, async () => {
    const c = await Raw.connect(port);
    await greet(c);
    c.send(option(0x4242, Buffer.alloc(300, 0x49)), option(OPT.EXT));
    const unknown = await optReply(c);
    assert.deepEqual([unknown.option, unknown.type], [0x4242, REP.UNSUP]);
    const ext = await optReply(c);
    assert.deepEqual([ext.option, ext.type], [OPT.EXT, REP.UNSUP], 'extended headers are not offered');
    c.send(option(OPT.GO, infoData('vol')));
    const rs = await optReplies(c);
    assert.equal(rs.at(-1)?.type, REP.ACK);
    c.send(request(CMD.READ, 5, 0, 512));
    assert.deepEqual(await simpleReply(c), { error: 0, handle: 5 });
    assert.equal((await c.read(512)).length, 512);
  });

  test('LIST names every export; LIST with data is ERR_INVALID and the session goes on', T, async () => {
    const c = await Raw.connect(port);
    await greet(c);
    c.send(option(OPT.LIST, Buffer.from('x')));
    assert.equal((await optReply(c)).type, REP.INVALID);
    c.send(option(OPT.LIST));
    const rs = await optReplies(c);
    assert.deepEqual(
      rs.map((r) => r.type),
      [REP.SERVER, REP.SERVER, REP.ACK],
    );
    const names = rs.slice(0, 2).map((r) => r.data.subarray(4, 4 + r.data.readUInt32BE(0)).toString());
    assert.deepEqual(names.sort(), ['ro', 'vol']);
    assert.ok(
      rs[0]?.data.toString().includes('the test volume') ||
        rs[1]?.data.toString().includes('the test volume'),
    );
    c.send(option(OPT.ABORT));
    assert.equal((await optReply(c)).type, REP.ACK);
    await c.closedP;
  });

  test(
    'INFO reports export, name, description and block sizes before ACK, and stays in options',
    T,
    async () => {
      const c = await Raw.connect(port);
      await greet(c);
      c.send(option(OPT.INFO, infoData('vol', [1, 2, 3])));
      const rs = await optReplies(c);
      assert.equal(rs.at(-1)?.type, REP.ACK);
      const byType = new Map(rs.slice(0, -1).map((r) => [r.data.readUInt16BE(0), r.data]));
      assert.ok(rs.slice(0, -1).every((r) => r.type === REP.INFO));
      const exp = byType.get(0)!;
      assert.equal(exp.length, 12);
      assert.equal(exp.readBigUInt64BE(2), BigInt(16 * MiB));
      assert.equal(exp.readUInt16BE(10), ALL_FLAGS);
      assert.equal(byType.get(1)?.subarray(2).toString(), 'vol');
      assert.equal(byType.get(2)?.subarray(2).toString(), 'the test volume');
      const bs = byType.get(3)!;
      assert.deepEqual([bs.readUInt32BE(2), bs.readUInt32BE(6), bs.readUInt32BE(10)], [512, 4096, 32 * MiB]);
      // Read-only export: READ_ONLY set, no write-side flags.
      c.send(option(OPT.INFO, infoData('ro')));
      const ro = (await optReplies(c)).find((r) => r.type === REP.INFO && r.data.readUInt16BE(0) === 0)!;
      assert.equal(ro.data.readUInt16BE(10), 0x1 | 0x2 | 0x4 | 0x100 | 0x400);
      c.send(option(OPT.INFO, infoData('nope')));
      assert.equal((await optReply(c)).type, REP.UNKNOWN);
      c.send(option(OPT.INFO, Buffer.from([0, 0, 0, 9, 1])));
      assert.equal((await optReply(c)).type, REP.INVALID, 'truncated INFO is ERR_INVALID');
      c.send(option(OPT.GO, infoData('vol')));
      assert.equal((await optReplies(c)).at(-1)?.type, REP.ACK, 'still negotiating after INFO');
    },
  );

  test('meta contexts: LIST shows base:allocation, SET needs structured replies', T, async () => {
    const c = await Raw.connect(port);
    await greet(c);
    c.send(option(OPT.LIST_META, metaData('vol', [])));
    const list = await optReplies(c);
    assert.equal(list[0]?.type, REP.META);
    assert.equal(list[0]?.data.subarray(4).toString(), 'base:allocation');
    c.send(option(OPT.SET_META, metaData('vol', ['base:allocation'])));
    assert.equal((await optReply(c)).type, REP.INVALID);
    c.send(option(OPT.SR), option(OPT.SET_META, metaData('vol', ['base:allocation', 'x-other:thing'])));
    assert.equal((await optReply(c)).type, REP.ACK);
    const set = await optReplies(c);
    assert.deepEqual(
      set.map((r) => r.type),
      [REP.META, REP.ACK],
    );
    assert.equal(set[0]?.data.readUInt32BE(0), 1);
  });

  test('an absurd option length disconnects with a logged reason', T, async () => {
    const c = await Raw.connect(port);
    await greet(c);
    const h = option(0x99);
    h.writeUInt32BE(0xffffffff, 12);
    c.send(h);
    await c.closedP;
    assert.ok(logs.some((l) => String(l.fields.reason).includes('too large')));
  });
});

describe('transmission', () => {
  test(
    'unknown flags, DF, unknown commands and misaligned requests get EINVAL; session goes on',
    T,
    async () => {
      const c = await open(port, 'vol');
      c.send(
        request(CMD.READ, 1, 0, 512, 0x80),
        request(CMD.READ, 2, 0, 512, 0x4),
        request(99, 3, 0, 0),
        request(CMD.READ, 4, 100, 512),
        request(CMD.WRITE, 5, 0, 512, 0x2),
        Buffer.alloc(512),
        request(CMD.READ, 6, 0, 512),
      );
      for (const h of [1, 2, 3, 4, 5]) assert.deepEqual(await simpleReply(c), { error: EINVAL, handle: h });
      assert.deepEqual(await simpleReply(c), { error: 0, handle: 6 });
      await c.read(512);
    },
  );

  test(
    'out of range, read-only and oversized requests get their errors; payloads are skipped',
    T,
    async () => {
      const c = await open(port, 'vol');
      const big = 33 * MiB;
      c.send(request(CMD.READ, 1, 16 * MiB, 512), request(CMD.READ, 2, 0, big));
      assert.deepEqual(await simpleReply(c), { error: EINVAL, handle: 1 });
      assert.deepEqual(await simpleReply(c), { error: EINVAL, handle: 2 });
      c.send(request(CMD.WRITE, 3, 16 * MiB - 512, 1024), Buffer.alloc(1024, 1));
      assert.deepEqual(await simpleReply(c), { error: 28, handle: 3 });
      c.send(
        request(CMD.WRITE, 4, 0, big),
        Buffer.alloc(big, 0xee),
        request(CMD.WRITE, 5, 0, 512),
        Buffer.alloc(512, 9),
      );
      assert.deepEqual(await simpleReply(c), { error: EINVAL, handle: 4 });
      assert.deepEqual(await simpleReply(c), { error: 0, handle: 5 });
      assert.equal(vol.data[0], 9, 'the write after the skipped payload landed');
      const r = await open(port, 'ro');
      r.send(request(CMD.WRITE, 6, 0, 512), Buffer.alloc(512), request(CMD.TRIM, 7, 0, 512));
      assert.deepEqual(await simpleReply(r), { error: 1, handle: 6 });
      assert.deepEqual(await simpleReply(r), { error: 1, handle: 7 });
    },
  );

  test('a WRITE too large to skip and a bad magic disconnect with a logged reason', T, async () => {
    const c = await open(port, 'vol');
    c.send(request(CMD.WRITE, 1, 0, 100 * MiB));
    await c.closedP;
    const closed = logs.find((l) => String(l.fields.reason).includes('too large to skip'));
    assert.deepEqual([closed?.level, closed?.fields.code], ['warn', 'RC_ERR_PROTOCOL']);
    const d = await open(port, 'vol');
    const bad = request(CMD.READ, 1, 0, 512);
    bad.writeUInt32BE(0xdeadbeef, 0);
    d.send(bad);
    await d.closedP;
    assert.ok(logs.some((l) => String(l.fields.reason).includes('bad request magic')));
  });

  test(
    'structured replies: READ as OFFSET_DATA, errors as ERROR chunks, BLOCK_STATUS with REQ_ONE',
    T,
    async () => {
      const c = await open(port, 'vol', { structured: true, meta: true });
      const base = MiB; // a region no other test touches
      c.send(request(CMD.WRITE, 1, base + 8192, 4096), Buffer.alloc(4096, 0x5a));
      assert.deepEqual(await simpleReply(c), { error: 0, handle: 1 });
      c.send(request(CMD.READ, 2, base + 8192, 4096));
      const data = await chunk(c);
      assert.deepEqual([data.flags, data.type, data.handle], [1, 1, 2]);
      assert.equal(data.payload.readBigUInt64BE(0), BigInt(base + 8192));
      assert.ok(data.payload.subarray(8).equals(Buffer.alloc(4096, 0x5a)));
      c.send(request(CMD.READ, 3, 16 * MiB, 512));
      const err = await chunk(c);
      assert.deepEqual(
        [err.flags, err.type, err.handle, err.payload.readUInt32BE(0)],
        [1, 0x8001, 3, EINVAL],
      );
      c.send(
        request(CMD.BLOCK_STATUS, 4, base, 64 * 1024, 0x8),
        request(CMD.BLOCK_STATUS, 5, base, 64 * 1024),
      );
      const one = await chunk(c);
      assert.deepEqual([one.type, one.handle, one.payload.length], [5, 4, 12], 'exactly one extent');
      const id = one.payload.readUInt32BE(0);
      assert.deepEqual(
        [id, one.payload.readUInt32BE(4), one.payload.readUInt32BE(8)],
        [1, 8192, 3],
        'a hole',
      );
      const many = await chunk(c);
      assert.equal(many.payload.length, 4 + 3 * 8, 'hole, data, hole');
      assert.deepEqual([many.payload.readUInt32BE(12), many.payload.readUInt32BE(16)], [4096, 0]);
      const plain = await open(port, 'vol', { structured: true });
      plain.send(request(CMD.BLOCK_STATUS, 6, 0, 4096));
      assert.equal((await chunk(plain)).payload.readUInt32BE(0), EINVAL, 'no meta context: EINVAL');
    },
  );

  test('write zeroes, trim, flush, FUA and cache reach the backend with the right options', T, async () => {
    const c = await open(port, 'vol');
    const before = { ...vol.counts };
    c.send(
      request(CMD.WRITE, 1, 0, 4096, 1),
      Buffer.alloc(4096, 3),
      request(CMD.ZERO, 2, 0, 4096, 0x2 | 0x10),
      request(CMD.TRIM, 3, 4096, 4096),
      request(CMD.FLUSH, 4, 0, 0),
      request(CMD.CACHE, 5, 0, 4096),
    );
    const handles = [];
    for (let i = 0; i < 5; i++) handles.push((await simpleReply(c)).handle);
    assert.deepEqual(handles.sort(), [1, 2, 3, 4, 5]);
    assert.equal(vol.counts.fuaWrite - before.fuaWrite, 1);
    assert.equal(vol.counts.zero - before.zero, 2);
    assert.equal(vol.counts.punch - before.punch, 1, 'NO_HOLE zeroes do not punch; TRIM does');
    assert.equal(vol.counts.flush - before.flush, 1);
    assert.equal(vol.counts.cache - before.cache, 1);
    assert.ok(vol.data.subarray(0, 4096).equals(Buffer.alloc(4096)));
  });
});

describe('concurrency and shutdown', () => {
  test('requests are pipelined and answered out of order', T, async () => {
    const gated = new GatedExport();
    const s = await startServer(new MemCatalog([gated, new MemExport({ name: 'fast', sizeBytes: MiB })]));
    try {
      const c = await open(s.port, 'gated');
      c.send(request(CMD.READ, 1, 0, 512), request(CMD.FLUSH, 2, 0, 0));
      assert.deepEqual(await simpleReply(c), { error: 0, handle: 2 }, 'the later FLUSH is answered first');
      gated.open();
      assert.deepEqual(await simpleReply(c), { error: 0, handle: 1 });
      assert.ok((await c.read(512)).equals(Buffer.alloc(512, 7)));
    } finally {
      gated.open();
      await s.server.close();
    }
  });

  test('at most 256 requests are in flight per connection; the rest wait and are answered', T, async () => {
    const gated = new GatedExport();
    const s = await startServer(new MemCatalog([gated]));
    try {
      const c = await open(s.port, 'gated');
      const reqs = [];
      for (let i = 0; i < 300; i++) reqs.push(request(CMD.READ, i, 0, 512));
      c.send(...reqs);
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(gated.started, 256);
      gated.open();
      const seen = new Set<number>();
      for (let i = 0; i < 300; i++) {
        const r = await simpleReply(c);
        assert.equal(r.error, 0);
        seen.add(r.handle);
        await c.read(512);
      }
      assert.equal(seen.size, 300);
    } finally {
      gated.open();
      await s.server.close();
    }
  });

  test('DISC answers every request in flight, then closes', T, async () => {
    const slow = new MemExport({ name: 'slow', sizeBytes: MiB, latencyMs: 50 });
    const s = await startServer(new MemCatalog([slow]));
    try {
      const c = await open(s.port, 'slow');
      const parts = [];
      for (let i = 0; i < 8; i++)
        parts.push(request(CMD.WRITE, i, i * 4096, 4096), Buffer.alloc(4096, i + 1));
      c.send(...parts, request(CMD.DISC, 99, 0, 0));
      const handles = [];
      for (let i = 0; i < 8; i++) handles.push((await simpleReply(c)).handle);
      assert.deepEqual(
        handles.sort((a, b) => a - b),
        [0, 1, 2, 3, 4, 5, 6, 7],
      );
      await c.closedP;
      for (let i = 0; i < 8; i++) assert.equal(slow.data[i * 4096], i + 1);
    } finally {
      await s.server.close();
    }
  });

  test(
    'DISC then a half-close (FIN): every request in flight is answered, then the server closes',
    T,
    async () => {
      // What qemu and python clients do: requests, DISC, shutdown(SHUT_WR), then read the replies.
      // The writes take 50 ms each in the backend, so all of them are in flight when the FIN comes.
      const n = 64;
      const slow = new MemExport({ name: 'slow', sizeBytes: 8 * MiB, latencyMs: 50 });
      const s = await startServer(new MemCatalog([slow]));
      try {
        const c = await open(s.port, 'slow');
        const parts = [];
        for (let i = 0; i < n; i++)
          parts.push(request(CMD.WRITE, i, i * 65536, 65536, 1 /* FUA */), Buffer.alloc(65536, i + 1));
        c.send(...parts, request(CMD.DISC, 999, 0, 0));
        c.sock.end();
        const handles = new Set<number>();
        for (let i = 0; i < n; i++) {
          const r = await simpleReply(c);
          assert.equal(r.error, 0);
          handles.add(r.handle);
        }
        assert.equal(handles.size, n, 'every write answered once');
        await c.closedP;
        for (let i = 0; i < n; i++) assert.equal(slow.data[i * 65536 + 65535], i + 1, `write ${i} is there`);
        assert.equal(slow.counts.fuaWrite, n);
      } finally {
        await s.server.close();
      }
    },
  );

  test('a FIN without DISC: requests in flight are answered, then the server closes', T, async () => {
    const slow = new MemExport({ name: 'slow', sizeBytes: MiB, latencyMs: 50 });
    const s = await startServer(new MemCatalog([slow]));
    try {
      const c = await open(s.port, 'slow', { structured: true });
      c.send(request(CMD.WRITE, 1, 0, 4096), Buffer.alloc(4096, 9), request(CMD.READ, 2, 8192, 4096));
      c.sock.end();
      const replies = [await simpleReply(c)];
      const read = await chunk(c);
      assert.deepEqual(replies, [{ error: 0, handle: 1 }]);
      assert.equal(read.handle, 2);
      await c.closedP;
      assert.equal(slow.data[4095], 9);
      await noConnections(s.server);
    } finally {
      await s.server.close();
    }
  });

  test('a FIN in the handshake closes the connection at once', T, async () => {
    const s = await startServer(new MemCatalog([new MemExport({ name: 'v', sizeBytes: MiB })]));
    try {
      const c = await Raw.connect(s.port);
      await greet(c);
      c.sock.end();
      // Half-open sockets: without handling the FIN this would wait for the handshake timeout.
      await c.closedP;
      await noConnections(s.server);
    } finally {
      await s.server.close();
    }
  });

  test('close() answers requests in flight, closes connections and stops accepting', T, async () => {
    const slow = new MemExport({ name: 'slow', sizeBytes: MiB, latencyMs: 100 });
    const s = await startServer(new MemCatalog([slow]));
    const c = await open(s.port, 'slow');
    const idle = await Raw.connect(s.port);
    c.send(request(CMD.WRITE, 1, 0, 4096), Buffer.alloc(4096, 1));
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(s.server.connectionCount, 2);
    const closing = s.server.close();
    assert.deepEqual(await simpleReply(c), { error: 0, handle: 1 });
    await closing;
    await Promise.all([c.closedP, idle.closedP]);
    assert.equal(s.server.connectionCount, 0);
    await assert.rejects(Raw.connect(s.port));
  });
});
