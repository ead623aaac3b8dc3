/**
 * Proves that one large WRITE_ZEROES or TRIM does not hold the node: over the NBD server, on a
 * node volume in no group (written directly) backed by a sparse file, a 4 KiB READ on
 * another connection, sent once the zeroing has begun, is answered before the zeroing is; a
 * WRITE overlapping the zeroed range's end, sent after it on the same connection, waits for it
 * and wins; and the range reads back as zeroes. Ordering of events only, never wall-clock time:
 * the server runs in this process, so a synchronous zeroing would stall the test's client too,
 * and the zero's reply would be out before the READ even reached the server.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { NbdServer } from '../../src/frontend/nbd/server.js';
import { NodeVolume } from '../../src/node/volume-export.js';
import type { WritePath } from '../../src/node/write-path.js';
import { FileBlockDevice } from '../../src/storage/blockdev.js';
import { isZero } from '../../src/storage/zeroes.js';
import { MemCatalog } from '../../src/testing/mem-export.js';
import { nbdRequest, u32be } from '../../src/testing/wire.js';

const KiB = 1024;
const MiB = 1024 * KiB;
/** The zeroed range; the volume has 1 MiB more, read while it is zeroed. */
const ZERO_BYTES = 512 * MiB;
const CMD = { READ: 0, WRITE: 1, TRIM: 4, WRITE_ZEROES: 6 };
/** Every test fails (never hangs) if a reply does not come. */
const T = { timeout: 60_000 };

/** Exact reads from one socket. */
class Conn {
  private buf = Buffer.alloc(0);
  private wake: (() => void) | undefined;
  private closed = false;

  private constructor(readonly sock: net.Socket) {
    sock.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.wake?.();
    });
    sock.on('close', () => {
      this.closed = true;
      this.wake?.();
    });
    sock.on('error', () => {});
  }

  /** Connect and enter transmission on `name` (EXPORT_NAME, NO_ZEROES). */
  static async open(port: number, name: string): Promise<Conn> {
    const sock = net.connect(port, '127.0.0.1');
    await new Promise((resolve, reject) => sock.once('connect', resolve).once('error', reject));
    const c = new Conn(sock);
    await c.read(18);
    const opt = Buffer.alloc(16);
    opt.writeBigUInt64BE(0x49484156454f5054n, 0);
    opt.writeUInt32BE(1 /* EXPORT_NAME */, 8);
    opt.writeUInt32BE(Buffer.byteLength(name), 12);
    sock.write(Buffer.concat([u32be(3), opt, Buffer.from(name)]));
    await c.read(10); // export size and transmission flags
    return c;
  }

  async read(n: number): Promise<Buffer> {
    while (this.buf.length < n) {
      if (this.closed) throw new Error(`closed with ${this.buf.length} of ${n} bytes`);
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  /** The next simple reply's handle; fails on an error reply. */
  async reply(): Promise<number> {
    const h = await this.read(16);
    assert.equal(h.readUInt32BE(0), 0x67446698, 'simple reply magic');
    assert.equal(h.readUInt32BE(4), 0, 'no error');
    return Number(h.readBigUInt64BE(8));
  }

  send(...parts: Buffer[]): void {
    this.sock.write(Buffer.concat(parts));
  }
}

const dir = mkdtempSync(join(tmpdir(), 'rc-nbd-zero-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** A fresh sparse volume file, in no group (written directly), served over NBD during `f`. */
async function withVolume(
  f: (v: { port: number; file: string; device: FileBlockDevice }) => Promise<void>,
): Promise<void> {
  const file = join(dir, 'vol.img');
  const device = FileBlockDevice.open(file, ZERO_BYTES + MiB);
  // A volume in no group never reaches the write path.
  const volume = new NodeVolume('vol', device, { kind: 'none' }, undefined as unknown as WritePath);
  const server = new NbdServer({ catalog: new MemCatalog([volume]) });
  try {
    const { port } = await server.listen('127.0.0.1', 0);
    await f({ port, file, device });
  } finally {
    await server.close();
    await device.close();
    rmSync(file);
  }
}

/** Resolves once `file` holds more blocks than `blocks`: the zeroing has begun. */
async function allocatedPast(file: string, blocks: number): Promise<void> {
  while (statSync(file).blocks <= blocks) await new Promise((r) => setImmediate(r));
}

for (const [name, cmd] of [
  ['WRITE_ZEROES', CMD.WRITE_ZEROES],
  ['TRIM', CMD.TRIM],
] as const) {
  test(`${name} of 512 MiB: a READ meanwhile is answered first, a later overlapping WRITE wins`, T, () =>
    withVolume(async ({ port, file, device }) => {
      const a = await Conn.open(port, 'vol');
      const b = await Conn.open(port, 'vol');
      try {
        // Data to be zeroed: at the start, in the middle, in the last 4 KiB.
        const marks = [0, ZERO_BYTES / 2, ZERO_BYTES - 4 * KiB];
        for (const [i, at] of marks.entries())
          a.send(nbdRequest(CMD.WRITE, i, at, 4096), Buffer.alloc(4096, 0x5a));
        for (let i = 0; i < marks.length; i++) await a.reply();
        const blocksBefore = statSync(file).blocks;

        const events: string[] = [];
        a.send(nbdRequest(cmd, 10, 0, ZERO_BYTES));
        const zeroed = a.reply().then((h) => events.push(`a:${h}`));
        await allocatedPast(file, blocksBefore);
        b.send(nbdRequest(CMD.READ, 20, ZERO_BYTES, 4096));
        const read = b.reply().then(async (h) => {
          events.push(`b:${h}`);
          assert.ok(isZero(await b.read(4096)));
        });
        const tail = ZERO_BYTES - 4 * KiB;
        a.send(nbdRequest(CMD.WRITE, 11, tail, 4096), Buffer.alloc(4096, 0xab));
        await Promise.all([zeroed, read]);
        events.push(`a:${await a.reply()}`);
        assert.deepEqual(events, ['b:20', 'a:10', 'a:11'], 'READ answered while zeroing; WRITE after it');

        for (const [i, at] of marks.entries()) a.send(nbdRequest(CMD.READ, 30 + i, at, 4096));
        for (let i = 0; i < marks.length; i++) {
          const h = await a.reply();
          const data = await a.read(4096);
          const want = marks[h - 30] === tail ? Buffer.alloc(4096, 0xab) : Buffer.alloc(4096);
          assert.ok(data.equals(want), `4 KiB at ${marks[h - 30]} after the ${name}`);
        }
        for (let at = 0; at < tail; at += 64 * MiB) {
          const n = Math.min(64 * MiB, tail - at);
          assert.ok(isZero(device.readSync(at, n)), `[${at}, ${at + n}) reads as zeroes`);
        }
      } finally {
        a.sock.destroy();
        b.sock.destroy();
      }
    }),
  );
}
