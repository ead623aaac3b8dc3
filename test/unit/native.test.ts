/**
 * Proves the native host protocol end to end over real sockets: NativeServer in-process over an
 * in-memory catalog, driven by the client library (src/client) and, for misbehaving peers, by
 * raw sockets. It shows that the host's write time and FUA reach the backend unchanged
 * (DESIGN.md §3.1: the write time must reach the journal record), that pipelined writes work and
 * stay within the server's window, that bounds and permissions give the documented errno codes,
 * that malformed input is logged and closes only that connection while others keep working, and
 * that close() answers requests in flight before closing.
 */
import assert from 'node:assert/strict';
import { createServer, connect as netConnect, type Socket } from 'node:net';
import { after, before, test } from 'node:test';
import { connect, NativeError } from '../../src/client/index.js';
import {
  BackendError,
  type ExportCatalog,
  type Extent,
  type VolumeExport,
  type WriteOptions,
  type ZeroOptions,
} from '../../src/frontend/backend.js';
import {
  ByteQueue,
  decodeHello,
  decodeReply,
  encodeHello,
  encodeRequest,
  NATIVE_MAX_IN_FLIGHT,
  NATIVE_PROTOCOL_VERSION,
  type Reply,
  type Request,
  RequestType,
  Status,
} from '../../src/frontend/native/protocol.js';
import { type NativeLog, NativeServer } from '../../src/frontend/native/server.js';
import { nativeRequest } from '../../src/testing/wire.js';

// --- An in-memory catalog that records what the backend was asked (src/testing/mem-export.ts
// --- belongs to another change; this one is private to this test).

class Gate {
  private open: Promise<void> = Promise.resolve();
  private release: (() => void) | undefined;
  close(): void {
    this.open = new Promise((resolve) => {
      this.release = resolve;
    });
  }
  openUp(): void {
    this.release?.();
  }
  wait(): Promise<void> {
    return this.open;
  }
}

class MemVolume implements VolumeExport {
  readonly description = 'in-memory test volume';
  readonly data: Buffer;
  readonly writes: { offset: number; length: number; opts: WriteOptions }[] = [];
  readonly gate = new Gate();
  inFlight = 0;
  maxInFlight = 0;
  flushes = 0;
  failWith: BackendError | undefined;

  constructor(
    readonly name: string,
    readonly sizeBytes: number,
    readonly readOnly = false,
  ) {
    this.data = Buffer.alloc(sizeBytes);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    await this.gate.wait();
    return Buffer.from(this.data.subarray(offset, offset + length));
  }

  async write(offset: number, data: Buffer, opts: WriteOptions): Promise<void> {
    this.writes.push({ offset, length: data.length, opts });
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    try {
      await this.gate.wait();
      await new Promise((resolve) => setImmediate(resolve));
      if (this.failWith) throw this.failWith;
      if (this.readOnly) throw new BackendError('EPERM', 'read-only');
      if (offset + data.length > this.sizeBytes) throw new BackendError('ENOSPC', 'past the end');
      data.copy(this.data, offset);
    } finally {
      this.inFlight--;
    }
  }

  async zero(offset: number, length: number, _opts: ZeroOptions): Promise<void> {
    this.data.fill(0, offset, offset + length);
  }

  async flush(): Promise<void> {
    this.flushes++;
  }

  async blockStatus(_offset: number, length: number): Promise<Extent[]> {
    return [{ length, flags: 0 }];
  }

  async cache(): Promise<void> {}
}

class MemCatalog implements ExportCatalog {
  private readonly byName = new Map<string, MemVolume>();
  add(v: MemVolume): MemVolume {
    this.byName.set(v.name, v);
    return v;
  }
  list(): readonly VolumeExport[] {
    return [...this.byName.values()];
  }
  get(name: string): MemVolume | undefined {
    return this.byName.get(name);
  }
}

// --- Fixtures

const MiB = 1024 * 1024;
const catalog = new MemCatalog();
const db = catalog.add(new MemVolume('db', 4 * MiB));
const ro = catalog.add(new MemVolume('ro', MiB, true));
const gated = catalog.add(new MemVolume('gated', MiB));
const broken = catalog.add(new MemVolume('broken', MiB));
const logs: { level: string; msg: string; fields: Record<string, unknown> }[] = [];
const log: NativeLog = (level, msg, fields) => logs.push({ level, msg, fields: { ...fields } });
const server = new NativeServer({ catalog, log });
let port = 0;

before(async () => {
  port = (await server.listen('127.0.0.1', 0)).port;
});
after(() => server.close());

async function rejectsWith(p: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof NativeError, `expected NativeError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    return true;
  });
}

/** A raw socket speaking bytes we choose; collects the server's hello and replies. */
class RawPeer {
  readonly socket: Socket;
  readonly replies: Reply[] = [];
  readonly closed: Promise<void>;
  private readonly q = new ByteQueue();
  private helloSeen = false;

  constructor() {
    this.socket = netConnect({ host: '127.0.0.1', port });
    this.socket.on('error', () => {});
    this.closed = new Promise((resolve) => this.socket.on('close', () => resolve()));
    this.socket.on('data', (chunk: Buffer) => {
      this.q.push(chunk);
      if (!this.helloSeen && decodeHello(this.q).kind === 'frame') this.helloSeen = true;
      for (let d = decodeReply(this.q); d.kind === 'frame'; d = decodeReply(this.q))
        this.replies.push(d.frame);
    });
  }

  hello(): this {
    this.socket.write(
      encodeHello({
        version: NATIVE_PROTOCOL_VERSION,
        status: 0,
        maxPayloadBytes: 0,
        maxInFlight: 0,
        maxInFlightBytes: 0,
      }),
    );
    return this;
  }

  send(b: Buffer): this {
    this.socket.write(b);
    return this;
  }
}

function rawRequest(fields: Partial<Request> & Pick<Request, 'type'>): Buffer {
  return encodeRequest(nativeRequest(fields));
}

async function until(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** A fresh client does a full round trip: the server is still serving. */
async function assertServing(): Promise<void> {
  const c = await connect({ host: '127.0.0.1', port });
  const v = await c.open('db');
  await v.write(0, Buffer.from('still alive'));
  assert.equal((await v.read(0, 11)).toString(), 'still alive');
  await c.close();
}

// --- Tests

test('write then read round-trips; OPEN reports size and read-only', async () => {
  const c = await connect(`127.0.0.1:${port}`);
  const v = await c.open('db');
  assert.equal(v.sizeBytes, 4 * MiB);
  assert.equal(v.readOnly, false);
  const data = Buffer.alloc(65536);
  for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff;
  await v.write(8192, data);
  assert.deepEqual(await v.read(8192, data.length), data);
  await v.flush();
  assert.ok(db.flushes >= 1);
  assert.equal((await c.open('ro')).readOnly, true);
  await v.close();
  await c.close();
});

test('the host write time and FUA reach the backend as hostTimeUs and fua', async () => {
  const c = await connect({ host: '127.0.0.1', port });
  const v = await c.open('db');
  const seen = () => db.writes.at(-1)!.opts;

  await v.write(0, Buffer.from('a'), { writeTimeUs: 1_700_000_000_123_456 });
  assert.deepEqual(seen(), { fua: false, hostTimeUs: 1_700_000_000_123_456 });

  await v.write(0, Buffer.from('b'), { writeTime: new Date(1_700_000_000_123), fua: true });
  assert.deepEqual(seen(), { fua: true, hostTimeUs: 1_700_000_000_123_000 });

  await v.write(0, Buffer.from('c'));
  assert.deepEqual(seen(), { fua: false }, 'no time given: no hostTimeUs');

  await v.write(0, Buffer.from('d'), { writeTimeUs: 0 });
  assert.deepEqual(seen(), { fua: false }, '0 means no time');

  await v.write(0, Buffer.from('e'), { writeTimeUs: Number.MAX_SAFE_INTEGER, fua: true });
  assert.deepEqual(seen(), { fua: true, hostTimeUs: Number.MAX_SAFE_INTEGER });
  await c.close();
});

test('bad write times are refused before anything is sent', async () => {
  const c = await connect({ host: '127.0.0.1', port });
  const v = await c.open('db');
  const before = db.writes.length;
  const one = Buffer.from('x');
  await rejectsWith(v.write(0, one, { writeTimeUs: -1 }), 'EINVAL');
  await rejectsWith(v.write(0, one, { writeTimeUs: 1.5 }), 'EINVAL');
  await rejectsWith(v.write(0, one, { writeTimeUs: 2 ** 53 }), 'EINVAL');
  await rejectsWith(v.write(0, one, { writeTime: new Date(Number.NaN) }), 'EINVAL');
  await rejectsWith(v.write(0, one, { writeTime: new Date(-1) }), 'EINVAL');
  await rejectsWith(v.write(0, one, { writeTime: new Date(0), writeTimeUs: 1 }), 'EINVAL');
  await rejectsWith(v.write(0, one, { writeTime: 5 as unknown as Date }), 'EINVAL');
  assert.equal(db.writes.length, before);
  await c.close();
});

test('the server itself refuses a write time of 2^53 or more (raw frame)', async () => {
  const peer = new RawPeer().hello();
  peer.send(rawRequest({ type: RequestType.open, cookie: 1n, payload: Buffer.from('db') }));
  await until(() => peer.replies.length === 1, 'OPEN reply');
  const handle = peer.replies[0]!.payload.readUInt32BE(0);
  const before = db.writes.length;
  peer.send(
    rawRequest({
      type: RequestType.write,
      cookie: 2n,
      handle,
      writeTimeUs: 2n ** 53n,
      payload: Buffer.from('x'),
    }),
  );
  await until(() => peer.replies.length === 2, 'WRITE reply');
  assert.equal(peer.replies[1]!.status, Status.EINVAL);
  assert.equal(peer.replies[1]!.cookie, 2n);
  assert.equal(db.writes.length, before);
  peer.socket.end();
  await peer.closed;
});

test('1000 pipelined writes resolve and read back', async () => {
  const c = await connect({ host: '127.0.0.1', port });
  const v = await c.open('db');
  db.maxInFlight = 0;
  const block = 512;
  const writes = [];
  for (let i = 0; i < 1000; i++) {
    writes.push(v.write(i * block, Buffer.alloc(block, i & 0xff), { writeTimeUs: 1_000_000 + i }));
  }
  await Promise.all(writes);
  assert.ok(db.maxInFlight > 1, `writes ran concurrently (max ${db.maxInFlight})`);
  assert.ok(db.maxInFlight <= NATIVE_MAX_IN_FLIGHT, 'the window holds');
  const back = await v.read(0, 1000 * block);
  for (let i = 0; i < 1000; i++) assert.equal(back[i * block], i & 0xff, `block ${i}`);
  const times = new Set(db.writes.slice(-1000).map((w) => w.opts.hostTimeUs));
  assert.equal(times.size, 1000, 'each write carried its own time');
  await c.close();
});

test('out of range, read-only, unknown volume and closed handle give errno codes', async () => {
  const c = await connect({ host: '127.0.0.1', port });
  const v = await c.open('db');
  await rejectsWith(v.read(4 * MiB - 10, 11), 'EINVAL');
  await rejectsWith(v.read(4 * MiB, 1), 'EINVAL');
  assert.equal((await v.read(4 * MiB - 10, 10)).length, 10, 'the last bytes are readable');
  await rejectsWith(v.write(4 * MiB - 10, Buffer.alloc(11)), 'ENOSPC');
  await rejectsWith(v.read(0, 0), 'EINVAL');
  await rejectsWith(v.read(-1, 1), 'EINVAL');

  const r = await c.open('ro');
  await rejectsWith(r.write(0, Buffer.alloc(1)), 'EPERM');
  assert.equal(ro.writes.length, 0, 'refused by the front end, before the backend');
  assert.equal((await r.read(0, 4)).length, 4, 'read-only volumes are readable');

  await rejectsWith(c.open('nope'), 'ENOENT');

  broken.failWith = new BackendError('EIO', 'disk on fire');
  const b = await c.open('broken');
  await assert.rejects(b.write(0, Buffer.alloc(1)), /EIO: disk on fire/);

  await v.close();
  await rejectsWith(v.read(0, 1), 'EBADF');
  await c.close();
  await rejectsWith(c.open('db'), 'ESHUTDOWN');
});

test('malformed input is logged, closes only that connection, and others keep working', async () => {
  const cases: [string, (p: RawPeer) => void, RegExp][] = [
    ['garbage instead of a hello', (p) => p.send(Buffer.from('GET / HTTP/1.1\r\n\r\n')), /malformed/],
    ['garbage after the hello', (p) => p.hello().send(Buffer.alloc(64, 0xa5)), /malformed/],
    [
      'an oversized length',
      (p) => p.hello().send(rawRequest({ type: RequestType.write, handle: 1 }).fill(0xff, 20, 24)),
      /malformed/,
    ],
    [
      'a frame cut in half, then the peer closes',
      (p) => {
        const frame = rawRequest({ type: RequestType.open, payload: Buffer.from('db') });
        p.hello().send(frame.subarray(0, 20));
        p.socket.end();
      },
      /middle of a frame/,
    ],
  ];
  const victim = await connect({ host: '127.0.0.1', port });
  const vv = await victim.open('db');
  for (const [name, misbehave, logged] of cases) {
    const mark = logs.length;
    const peer = new RawPeer();
    misbehave(peer);
    await peer.closed;
    const said = logs.slice(mark).find((l) => logged.test(l.msg));
    assert.ok(said, `${name}: logged (${JSON.stringify(logs.slice(mark))})`);
    assert.equal(said.level, 'warn');
    await assertServing();
    await vv.write(0, Buffer.from('x')); // an existing connection is unaffected too
  }
  await victim.close();
});

test('the oversized payload is refused from its header, without waiting for the data', async () => {
  const mark = logs.length;
  const peer = new RawPeer().hello();
  const header = rawRequest({ type: RequestType.write, handle: 1 }).subarray(0, 40);
  header.writeUInt32BE(64 * MiB, 20);
  peer.send(header); // and never send the 64 MiB
  await peer.closed;
  const said = logs.slice(mark).find((l) => l.fields.kind === 'oversized');
  assert.ok(said, 'the reason names the oversized payload');
});

test('a request before garbage is still answered before the connection closes', async () => {
  const peer = new RawPeer().hello();
  peer.send(
    Buffer.concat([
      rawRequest({ type: RequestType.open, cookie: 77n, payload: Buffer.from('db') }),
      Buffer.alloc(40, 0xee),
    ]),
  );
  await peer.closed;
  assert.equal(peer.replies.length, 1);
  assert.equal(peer.replies[0]!.cookie, 77n);
  assert.equal(peer.replies[0]!.status, Status.OK);
});

test('a frame split across writes with a pause in between still works', async () => {
  const peer = new RawPeer().hello();
  const frame = rawRequest({ type: RequestType.open, cookie: 5n, payload: Buffer.from('db') });
  peer.send(frame.subarray(0, 13));
  await new Promise((resolve) => setTimeout(resolve, 30));
  peer.send(frame.subarray(13));
  await until(() => peer.replies.length === 1, 'OPEN reply');
  assert.equal(peer.replies[0]!.status, Status.OK);
  peer.socket.end();
  await peer.closed;
});

test('a peer that ignores the window is throttled by the server, not buffered without bound', async () => {
  const peer = new RawPeer().hello();
  peer.send(rawRequest({ type: RequestType.open, cookie: 1n, payload: Buffer.from('gated') }));
  await until(() => peer.replies.length === 1, 'OPEN reply');
  const handle = peer.replies[0]!.payload.readUInt32BE(0);
  gated.gate.close();
  gated.maxInFlight = 0;
  const n = NATIVE_MAX_IN_FLIGHT + 50;
  const frames = [];
  for (let i = 0; i < n; i++) {
    frames.push(
      rawRequest({ type: RequestType.write, cookie: BigInt(10 + i), handle, payload: Buffer.alloc(16) }),
    );
  }
  peer.send(Buffer.concat(frames));
  await until(() => gated.inFlight === NATIVE_MAX_IN_FLIGHT, 'a full window');
  await new Promise((resolve) => setTimeout(resolve, 30));
  assert.equal(gated.inFlight, NATIVE_MAX_IN_FLIGHT, 'no more than the window reaches the backend');
  gated.gate.openUp();
  await until(() => peer.replies.length === n + 1, 'every reply');
  assert.ok(peer.replies.every((r) => r.status === Status.OK));
  assert.equal(new Set(peer.replies.map((r) => r.cookie)).size, n + 1);
  peer.socket.end();
  await peer.closed;
});

test('close() answers the requests in flight, then closes the connections', async () => {
  const local = new NativeServer({ catalog, log });
  const localPort = (await local.listen('127.0.0.1', 0)).port;
  const c = await connect({ host: '127.0.0.1', port: localPort });
  const v = await c.open('gated');
  gated.gate.close();
  const before = gated.writes.length;
  const settled: string[] = [];
  const writes = Array.from({ length: 10 }, (_, i) =>
    v.write(i * 16, Buffer.alloc(16, 1)).then(
      () => settled.push('ok'),
      (err: NativeError) => settled.push(err.code),
    ),
  );
  await until(() => gated.writes.length === before + 10, 'the writes to reach the backend');
  let closed = false;
  const closing = local.close().then(() => {
    closed = true;
  });
  await new Promise((resolve) => setTimeout(resolve, 30));
  assert.equal(closed, false, 'close() waits for the requests in flight');
  gated.gate.openUp();
  await closing;
  await Promise.all(writes);
  assert.deepEqual(settled, Array(10).fill('ok'));
  await assert.rejects(v.write(0, Buffer.alloc(1)), (err: NativeError) =>
    ['ESHUTDOWN', 'ECONNRESET'].includes(err.code),
  );
  await assert.rejects(
    connect({ host: '127.0.0.1', port: localPort }),
    (err: NativeError) => err.code === 'ECONNREFUSED',
  );
});

test('an unsupported client version is refused in the hello', async () => {
  const peer = new RawPeer();
  const chunks: Buffer[] = [];
  peer.socket.on('data', (c: Buffer) => chunks.push(c));
  peer.send(encodeHello({ version: 0, status: 0, maxPayloadBytes: 0, maxInFlight: 0, maxInFlightBytes: 0 }));
  await peer.closed;
  const q = new ByteQueue();
  q.push(Buffer.concat(chunks));
  const d = decodeHello(q);
  assert.equal(d.kind, 'frame');
  if (d.kind === 'frame') assert.equal(d.frame.status, Status.ENOTSUP);
});

test('a server that does not speak the protocol fails connect() with EPROTO', async () => {
  const fake = createServer((s) => s.resume().end('SSH-2.0-OpenSSH_9.6\r\n'));
  await new Promise<void>((resolve) => fake.listen(0, '127.0.0.1', resolve));
  const addr = fake.address();
  assert.ok(typeof addr === 'object' && addr !== null);
  await rejectsWith(connect({ host: '127.0.0.1', port: addr.port }), 'EPROTO');
  await new Promise((resolve) => fake.close(resolve));
});

test('fuzz: corrupted frames from many peers never take the server down', async () => {
  let s = 12345;
  const rnd = () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
  const open = rawRequest({ type: RequestType.open, cookie: 1n, payload: Buffer.from('db') });
  const write = rawRequest({
    type: RequestType.write,
    cookie: 2n,
    handle: 1,
    offset: 4096n,
    writeTimeUs: 1_700_000_000_000_000n,
    payload: Buffer.alloc(64, 0x5a),
  });
  const read = rawRequest({ type: RequestType.read, cookie: 3n, handle: 1, offset: 0n, length: 64 });
  const before = server.counters.protocolErrors;
  for (let i = 0; i < 200; i++) {
    const frames = Buffer.concat([open, write, read]);
    const flips = 1 + Math.floor(rnd() * 3);
    for (let f = 0; f < flips; f++) {
      const bit = Math.floor(rnd() * frames.length * 8);
      frames[bit >> 3]! ^= 1 << (bit & 7);
    }
    const peer = new RawPeer().hello();
    const cut = Math.floor(rnd() * frames.length);
    peer.send(frames.subarray(0, cut));
    peer.send(frames.subarray(cut));
    peer.socket.end(); // half-close: the server answers what it can, then closes
    await peer.closed;
    assert.ok(peer.replies.length <= 3, 'at most one reply per request');
  }
  assert.ok(server.counters.protocolErrors > before, 'some corruptions broke the framing');
  await assertServing();
});
