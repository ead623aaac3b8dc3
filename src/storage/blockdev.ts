/**
 * Block devices as a stack (nbdkit's filters, STYLE.md 7): one interface, a file-backed and a
 * memory implementation, and wrappers (faults) that all pass test/unit/blockdev.test.ts.
 *
 * Writes are synchronous into the page cache (or memory): the write path applies a whole batch of
 * journalled records in one turn of the event loop, and a thread-pool hop per 4 KiB write would
 * cost more than the write. Reads and syncs are asynchronous.
 */
import * as fs from 'node:fs';
import { dirname } from 'node:path';
import { assert } from '../core/assert.js';
import { RemcopyError } from '../core/errors.js';
import { DirectFile } from './direct-io.js';
import { fsyncDirSync } from './journal-state.js';
import { isZero } from './zeroes.js';

export interface BlockDevice {
  readonly sizeBytes: number;
  read(offset: number, length: number): Promise<Buffer>;
  /** Reads on the calling thread (a copy whose pool reads a host write kept overtaking). */
  readSync(offset: number, length: number): Buffer;
  /**
   * Reads a range to copy it elsewhere (initial copy, verify, the target's zero check): around the
   * page cache where the device can (direct-io.ts), so that reading a whole
   * volume does not leave it cached in large folios, which slow every later small write into them.
   * Sees every write made before it, like readSync.
   */
  readForCopySync(offset: number, length: number): Buffer;
  /** Like readForCopySync, asynchronously. */
  readForCopy(offset: number, length: number): Promise<Buffer>;
  /**
   * Like writeSync, for data copied from elsewhere (copy records at a target): around the page
   * cache where the device can and the write is large (DIRECT_COPY_WRITE_MIN), for the same
   * reason as readForCopySync.
   */
  writeForCopySync(offset: number, data: Uint8Array): void;
  /** Into the page cache: durable after the next sync(). */
  writeSync(offset: number, data: Uint8Array): void;
  /**
   * Make the range read back as zeroes. A file device writes only the pieces that do not already:
   * reading a hole is cheap, writing zeroes into it allocates blocks (Node has no fallocate to punch
   * one), so a TRIM or an initial copy's zero record over a fresh sparse volume leaves it sparse.
   */
  zeroSync(offset: number, length: number): void;
  /** Like writeSync, on a thread of the pool: the write path issues large batches this way. */
  write(offset: number, data: Uint8Array): Promise<void>;
  /** Like zeroSync, asynchronously. */
  zero(offset: number, length: number): Promise<void>;
  sync(): Promise<void>;
  close(): Promise<void>;
}

/**
 * writeForCopySync writes at least this many bytes with O_DIRECT. A direct write waits for the
 * device on the calling thread: for an initial copy's chunks that costs less than the copy into new
 * page-cache pages (its 256 KiB copy records: a populated 1 GiB volume copied in 6.8 and 7.4 s
 * direct, 7.0 and 7.9 s buffered, alternating runs; measured with 1 MiB records before), for a
 * delta resync's 64 KiB chunks it cost more (resync 137 against 160 MB/s in `npm run bench`).
 */
export const DIRECT_COPY_WRITE_MIN = 256 * 1024;

/** Largest zero write issued at once; zeroing a larger range loops over this buffer. */
const ZERO_CHUNK_BYTES = 1 << 20;
const zeroChunk = Buffer.alloc(ZERO_CHUNK_BYTES);

function checkRange(dev: BlockDevice, offset: number, length: number): void {
  assert(Number.isSafeInteger(offset) && Number.isSafeInteger(length), 'integer range');
  assert(
    offset >= 0 && length >= 0 && offset + length <= dev.sizeBytes,
    `range ${offset}+${length} in device`,
  );
}

/** Makes `path` a sparse file of `sizeBytes` (see FileBlockDevice.open); false if it appeared meanwhile. */
function createWhole(path: string, sizeBytes: number): boolean {
  const tmp = `${path}.creating`;
  const fd = fs.openSync(tmp, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_TRUNC, 0o600);
  try {
    fs.ftruncateSync(fd, sizeBytes);
    fs.fsyncSync(fd);
  } catch (e) {
    fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw new RemcopyError(
      'RC_ERR_IO',
      `cannot create ${path} (${sizeBytes} bytes): ${(e as Error).message}`,
    );
  }
  fs.closeSync(fd);
  let linked = true;
  try {
    fs.linkSync(tmp, path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') linked = false;
    else fs.renameSync(tmp, path); // a file system without hard links; the data dir is locked
  } finally {
    fs.rmSync(tmp, { force: true });
  }
  fsyncDirSync(dirname(path));
  return linked;
}

export class FileBlockDevice implements BlockDevice {
  private closed = false;
  /**
   * Direct I/O for the *ForCopy calls: one file for the sync ones, one for the async reads (each has
   * its own buffer: a sync call may come while an async read is on the pool), opened at their first
   * use; null when refused.
   */
  private readonly direct: { sync?: DirectFile | null; async?: DirectFile | null } = {};
  private constructor(
    private readonly fd: number,
    readonly sizeBytes: number,
    readonly path: string,
    /** The file did not exist and was created (all zeroes) by this open. */
    readonly created: boolean,
  ) {}

  /**
   * Open a volume file, creating it sparse at `sizeBytes` if missing. An existing file of another
   * size is an error: a silent resize would destroy or invent data.
   *
   * A new file is made whole before it gets its name: sized and fsynced as `<path>.creating`, then
   * linked to `path` (which fails if `path` appeared meanwhile) and the directory fsynced. A crash
   * in between leaves only the `.creating` file, remade at the next start, never a short volume
   * that every later start would refuse.
   */
  static open(path: string, sizeBytes: number): FileBlockDevice {
    assert(Number.isSafeInteger(sizeBytes) && sizeBytes > 0, 'volume size');
    let created = false;
    if (!fs.existsSync(path)) created = createWhole(path, sizeBytes);
    const fd = fs.openSync(path, fs.constants.O_RDWR);
    const actual = fs.fstatSync(fd).size;
    if (actual !== sizeBytes) {
      fs.closeSync(fd);
      throw new RemcopyError(
        'RC_ERR_VOLUME_SIZE',
        `${path} is ${actual} bytes but the configuration says ${sizeBytes}; refusing to resize it`,
      );
    }
    return new FileBlockDevice(fd, sizeBytes, path, created);
  }

  read(offset: number, length: number): Promise<Buffer> {
    checkRange(this, offset, length);
    const buf = Buffer.allocUnsafe(length);
    return new Promise((resolve, reject) => {
      const step = (done: number): void => {
        if (done === length) {
          resolve(buf);
          return;
        }
        fs.read(this.fd, buf, done, length - done, offset + done, (err, n) => {
          if (err) reject(err);
          else if (n === 0) reject(new Error(`short read at ${offset + done} in ${this.path}`));
          else step(done + n);
        });
      };
      step(0);
    });
  }

  readSync(offset: number, length: number): Buffer {
    checkRange(this, offset, length);
    const buf = Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      const n = fs.readSync(this.fd, buf, done, length - done, offset + done);
      if (n === 0) throw new Error(`short read at ${offset + done} in ${this.path}`);
      done += n;
    }
    return buf;
  }

  readForCopySync(offset: number, length: number): Buffer {
    checkRange(this, offset, length);
    const direct = this.directFor(offset, length, 'sync');
    if (direct === null) return this.readSync(offset, length);
    const buf = Buffer.allocUnsafe(length);
    direct.readSync(offset, length, buf);
    return buf;
  }

  async readForCopy(offset: number, length: number): Promise<Buffer> {
    checkRange(this, offset, length);
    const direct = this.directFor(offset, length, 'async');
    if (direct === null) return this.read(offset, length);
    const buf = Buffer.allocUnsafe(length);
    await direct.read(offset, length, buf);
    return buf;
  }

  writeForCopySync(offset: number, data: Uint8Array): void {
    checkRange(this, offset, data.length);
    const direct = data.length < DIRECT_COPY_WRITE_MIN ? null : this.directFor(offset, data.length, 'sync');
    if (direct === null) this.writeSync(offset, data);
    else direct.writeSync(offset, data);
  }

  /** Bytes the *ForCopy calls read and wrote with O_DIRECT; the rest went through the page cache. */
  get directBytes(): { read: number; written: number } {
    const { sync, async } = this.direct;
    return {
      read: (sync?.bytesRead ?? 0) + (async?.bytesRead ?? 0),
      written: sync?.bytesWritten ?? 0,
    };
  }

  /** The direct reader for an aligned range, null when the range or the file system rules it out. */
  private directFor(offset: number, length: number, which: 'sync' | 'async'): DirectFile | null {
    if (!DirectFile.fits(offset, length)) return null;
    if (this.direct[which] === undefined) {
      try {
        this.direct[which] = DirectFile.open(this.path);
      } catch {
        this.direct[which] = null; // reads stay buffered; a real I/O error shows there
      }
    }
    return this.direct[which];
  }

  writeSync(offset: number, data: Uint8Array): void {
    checkRange(this, offset, data.length);
    let done = 0;
    while (done < data.length) {
      done += fs.writeSync(this.fd, data, done, data.length - done, offset + done);
    }
  }

  zeroSync(offset: number, length: number): void {
    checkRange(this, offset, length);
    for (let at = offset; at < offset + length; at += ZERO_CHUNK_BYTES) {
      // Small ranges on the event loop: a buffered read, never one that waits for the disk.
      const n = Math.min(ZERO_CHUNK_BYTES, offset + length - at);
      if (!isZero(this.readSync(at, n))) this.writeSync(at, zeroChunk.subarray(0, n));
    }
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    checkRange(this, offset, data.length);
    return new Promise((resolve, reject) => {
      const step = (done: number): void => {
        if (done === data.length) {
          resolve();
          return;
        }
        fs.write(this.fd, data, done, data.length - done, offset + done, (err, n) => {
          if (err) reject(err);
          else step(done + n);
        });
      };
      step(0);
    });
  }

  async zero(offset: number, length: number): Promise<void> {
    checkRange(this, offset, length);
    for (let at = offset; at < offset + length; at += ZERO_CHUNK_BYTES) {
      const n = Math.min(ZERO_CHUNK_BYTES, offset + length - at);
      if (!isZero(await this.readForCopy(at, n))) await this.write(at, zeroChunk.subarray(0, n));
    }
  }

  sync(): Promise<void> {
    return new Promise((resolve, reject) => fs.fdatasync(this.fd, (err) => (err ? reject(err) : resolve())));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.sync();
    this.direct.sync?.close();
    this.direct.async?.close();
    fs.closeSync(this.fd);
  }
}

/** A volume in memory: for the simulator and unit tests. */
export class MemBlockDevice implements BlockDevice {
  readonly bytes: Buffer;
  syncCount = 0;
  constructor(readonly sizeBytes: number) {
    this.bytes = Buffer.alloc(sizeBytes);
  }
  read(offset: number, length: number): Promise<Buffer> {
    checkRange(this, offset, length);
    return Promise.resolve(Buffer.from(this.bytes.subarray(offset, offset + length)));
  }
  readSync(offset: number, length: number): Buffer {
    checkRange(this, offset, length);
    return Buffer.from(this.bytes.subarray(offset, offset + length));
  }
  readForCopySync(offset: number, length: number): Buffer {
    return this.readSync(offset, length);
  }
  readForCopy(offset: number, length: number): Promise<Buffer> {
    return this.read(offset, length);
  }
  writeForCopySync(offset: number, data: Uint8Array): void {
    this.writeSync(offset, data);
  }
  writeSync(offset: number, data: Uint8Array): void {
    checkRange(this, offset, data.length);
    this.bytes.set(data, offset);
  }
  zeroSync(offset: number, length: number): void {
    checkRange(this, offset, length);
    this.bytes.fill(0, offset, offset + length);
  }
  write(offset: number, data: Uint8Array): Promise<void> {
    this.writeSync(offset, data);
    return Promise.resolve();
  }
  zero(offset: number, length: number): Promise<void> {
    this.zeroSync(offset, length);
    return Promise.resolve();
  }
  sync(): Promise<void> {
    this.syncCount++;
    return Promise.resolve();
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

/**
 * A wrapper that fails chosen operations with an errno (EIO, ENOSPC): a filter over any device,
 * for tests of error paths. `failNext(op, code, count)` arms it.
 */
export class FaultyBlockDevice implements BlockDevice {
  private readonly armed = new Map<string, { code: string; count: number }>();
  constructor(private readonly inner: BlockDevice) {}
  get sizeBytes(): number {
    return this.inner.sizeBytes;
  }
  failNext(op: 'read' | 'write' | 'sync', code: string, count = 1): void {
    this.armed.set(op, { code, count });
  }
  private trip(op: string): void {
    const a = this.armed.get(op);
    if (!a || a.count <= 0) return;
    a.count--;
    const e = new Error(`${a.code}: injected fault`) as NodeJS.ErrnoException;
    e.code = a.code;
    throw e;
  }
  read(offset: number, length: number): Promise<Buffer> {
    this.trip('read');
    return this.inner.read(offset, length);
  }
  readSync(offset: number, length: number): Buffer {
    this.trip('read');
    return this.inner.readSync(offset, length);
  }
  readForCopySync(offset: number, length: number): Buffer {
    this.trip('read');
    return this.inner.readForCopySync(offset, length);
  }
  readForCopy(offset: number, length: number): Promise<Buffer> {
    this.trip('read');
    return this.inner.readForCopy(offset, length);
  }
  writeForCopySync(offset: number, data: Uint8Array): void {
    this.trip('write');
    this.inner.writeForCopySync(offset, data);
  }
  writeSync(offset: number, data: Uint8Array): void {
    this.trip('write');
    this.inner.writeSync(offset, data);
  }
  zeroSync(offset: number, length: number): void {
    this.trip('write');
    this.inner.zeroSync(offset, length);
  }
  async write(offset: number, data: Uint8Array): Promise<void> {
    this.trip('write');
    await this.inner.write(offset, data);
  }
  async zero(offset: number, length: number): Promise<void> {
    this.trip('write');
    await this.inner.zero(offset, length);
  }
  async sync(): Promise<void> {
    this.trip('sync');
    await this.inner.sync();
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}
