/**
 * The NBD server's batching on the hot path (src/frontend/nbd/transmission.ts, replies.ts) proves:
 * - pipelined WRITEs whose payloads span socket chunks (gathered into buffers that are reused)
 *   land intact, and no buffer changes while its write is in flight, over rounds that reuse them;
 * - the buffer of a failed WRITE is never reused (a backend may still read it after rejecting);
 * - replies to many pipelined READs, batched per event-loop turn, arrive whole, each exactly once,
 *   with the right data, when the client reads slowly enough that the output bound is reached.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, test } from 'node:test';
import type { Extent, VolumeExport } from '../../src/frontend/backend.js';
import { BackendError } from '../../src/frontend/backend.js';
import { OUTPUT_QUEUED_MAX_BYTES } from '../../src/frontend/nbd/protocol.js';
import { NbdServer } from '../../src/frontend/nbd/server.js';
import { MemCatalog } from '../../src/testing/mem-export.js';
import { nbdRequest, u32be } from '../../src/testing/wire.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const CMD = { READ: 0, WRITE: 1, DISC: 2 };
const SIMPLE_REPLY_MAGIC = 0x67446698;
const T = { timeout: 60_000 };

/** Bytes that differ per seed (and per position). */
function pattern(n: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i += 4) b.writeUInt32LE(((seed * 0x9e3779b1) ^ (i * 0x85ebca6b)) >>> 0, i);
  return b;
}

const tick = (): Promise<void> => new Promise((r) => setTimeout(r, Math.floor(Math.random() * 3)));

/**
 * A memory export that checks the front end's side of the buffer contract: the `data` of a write
 * is the same when the write settles as when it was submitted. Writes to `failAt` offsets are
 * rejected at once, and their buffers are checked again later (`checkFailed`).
 */
class CheckingExport implements VolumeExport {
  readonly name = 'vol';
  readonly description = 'checking';
  readonly readOnly = false;
  readonly bytes: Buffer;
  readonly changedInFlight: number[] = [];
  readonly failAt = new Set<number>();
  private readonly failed: { data: Buffer; copy: Buffer; offset: number }[] = [];
  constructor(readonly sizeBytes: number) {
    this.bytes = Buffer.alloc(sizeBytes);
  }
  async read(offset: number, length: number): Promise<Buffer> {
    await tick();
    return Buffer.from(this.bytes.subarray(offset, offset + length));
  }
  async write(offset: number, data: Buffer): Promise<void> {
    const copy = Buffer.from(data);
    if (this.failAt.has(offset)) {
      this.failed.push({ data, copy, offset });
      throw new BackendError('EIO', 'injected');
    }
    await tick();
    if (!data.equals(copy)) this.changedInFlight.push(offset);
    copy.copy(this.bytes, offset);
  }
  /** Offsets of failed writes whose buffers changed since they were rejected. */
  checkFailed(): number[] {
    return this.failed.filter((f) => !f.data.equals(f.copy)).map((f) => f.offset);
  }
  async zero(): Promise<void> {}
  async flush(): Promise<void> {}
  async blockStatus(_o: number, length: number): Promise<Extent[]> {
    return [{ length, flags: 0 }];
  }
  async cache(): Promise<void> {}
}

/** A client that reads exactly the bytes asked for; `pause()` stops reading the socket. */
class Client {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private want: { n: number; resolve: (b: Buffer) => void } | undefined;

  private constructor(readonly sock: net.Socket) {
    sock.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.buffered += d.length;
      this.pump();
    });
  }

  /** Connect and enter transmission with EXPORT_NAME (simple replies). */
  static async open(port: number): Promise<Client> {
    const sock = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1', () => resolve(s));
      s.once('error', reject);
    });
    const c = new Client(sock);
    await c.read(18);
    const name = Buffer.from('vol');
    const opt = Buffer.alloc(16);
    opt.writeBigUInt64BE(0x49484156454f5054n, 0);
    opt.writeUInt32BE(1, 8);
    opt.writeUInt32BE(name.length, 12);
    sock.write(Buffer.concat([u32be(3), opt, name]));
    await c.read(10);
    return c;
  }

  read(n: number): Promise<Buffer> {
    return new Promise((resolve) => {
      this.want = { n, resolve };
      this.pump();
    });
  }

  async reply(): Promise<{ error: number; handle: number }> {
    const h = await this.read(16);
    assert.equal(h.readUInt32BE(0), SIMPLE_REPLY_MAGIC, 'simple reply magic');
    return { error: h.readUInt32BE(4), handle: Number(h.readBigUInt64BE(8)) };
  }

  close(): void {
    this.sock.write(nbdRequest(CMD.DISC, 0, 0, 0));
    this.sock.end();
  }

  private pump(): void {
    const w = this.want;
    if (!w || this.buffered < w.n) return;
    this.want = undefined;
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    this.chunks = all.length > w.n ? [all.subarray(w.n)] : [];
    this.buffered -= w.n;
    w.resolve(all.subarray(0, w.n));
  }
}

const servers: NbdServer[] = [];
after(() => Promise.all(servers.map((s) => s.close())));

async function serve(exp: VolumeExport): Promise<number> {
  const s = new NbdServer({ catalog: new MemCatalog([exp as never]) });
  servers.push(s);
  return (await s.listen('127.0.0.1', 0)).port;
}

test('pipelined WRITEs spanning chunks land intact; no buffer changes in flight', T, async () => {
  const size = 256 * KiB;
  const count = 48;
  const exp = new CheckingExport(count * size);
  const c = await Client.open(await serve(exp));
  for (let round = 0; round < 3; round++) {
    const out: Buffer[] = [];
    for (let i = 0; i < count; i++) {
      out.push(nbdRequest(CMD.WRITE, round * count + i, i * size, size), pattern(size, round * count + i));
    }
    c.sock.write(Buffer.concat(out));
    const seen = new Set<number>();
    for (let i = 0; i < count; i++) {
      const r = await c.reply();
      assert.equal(r.error, 0);
      seen.add(r.handle);
    }
    assert.equal(seen.size, count, 'each write answered once');
    for (let i = 0; i < count; i++) {
      const got = exp.bytes.subarray(i * size, (i + 1) * size);
      assert.ok(got.equals(pattern(size, round * count + i)), `round ${round} write ${i}`);
    }
  }
  assert.deepEqual(exp.changedInFlight, []);
  c.close();
});

test('the buffer of a failed WRITE is not reused', T, async () => {
  const size = 128 * KiB;
  const count = 32;
  const exp = new CheckingExport(count * size);
  for (let i = 0; i < count; i += 3) exp.failAt.add(i * size);
  const c = await Client.open(await serve(exp));
  for (let round = 0; round < 3; round++) {
    const out: Buffer[] = [];
    for (let i = 0; i < count; i++) {
      out.push(nbdRequest(CMD.WRITE, i, i * size, size), pattern(size, round * count + i));
    }
    c.sock.write(Buffer.concat(out));
    for (let i = 0; i < count; i++) {
      const r = await c.reply();
      assert.equal(r.error !== 0, exp.failAt.has(r.handle * size), `write ${r.handle}`);
    }
  }
  assert.deepEqual(exp.checkFailed(), []);
  assert.deepEqual(exp.changedInFlight, []);
  c.close();
});

test('replies to pipelined READs arrive whole and once each under output back-pressure', T, async () => {
  const size = 1 * MiB;
  const count = Math.ceil((1.5 * OUTPUT_QUEUED_MAX_BYTES) / size);
  const vol = 8 * MiB;
  const exp = new CheckingExport(vol);
  pattern(vol, 99).copy(exp.bytes);
  const c = await Client.open(await serve(exp));
  c.sock.pause();
  const out: Buffer[] = [];
  for (let i = 0; i < count; i++) out.push(nbdRequest(CMD.READ, i, (i * size) % vol, size));
  c.sock.write(Buffer.concat(out));
  await new Promise((r) => setTimeout(r, 200));
  c.sock.resume();
  const seen = new Set<number>();
  for (let i = 0; i < count; i++) {
    const r = await c.reply();
    assert.equal(r.error, 0);
    assert.ok(!seen.has(r.handle), `handle ${r.handle} answered once`);
    seen.add(r.handle);
    const data = await c.read(size);
    const at = (r.handle * size) % vol;
    assert.ok(data.equals(exp.bytes.subarray(at, at + size)), `READ ${r.handle} data`);
  }
  assert.equal(seen.size, count);
  c.close();
});
