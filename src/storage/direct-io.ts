/**
 * Direct I/O (O_DIRECT) for the journal's large appends and for the volume I/O of copies (DirectFile).
 *
 * A buffered write copies every byte into the page cache. On this kind of VM that copy is the
 * cost: a 1 MiB buffered write of new journal data took 4.4 ms of system time (fresh pages are
 * first touched, most samples in copy_folio_from_iter_atomic), where an O_DIRECT write of the same
 * MiB took 0.4-0.5 ms and 10-18% of one core (fio on this disk: 2.0-2.5 GB/s direct, 0.73 GB/s
 * buffered). The journal never reads back what it appends on the hot path, so caching it is waste.
 *
 * O_DIRECT wants the file offset, the length and the memory address aligned. Node does not expose
 * a buffer's address, so `DirectStaging.open` finds an aligned place by trying: it over-allocates
 * one staging buffer and writes one block from successive offsets into it to a probe file, until
 * the kernel accepts one (EINVAL means misaligned). Backing stores of ArrayBuffers never move, so
 * the offset found stays good for the buffer's life. Where the file system refuses O_DIRECT (open
 * fails) or no offset works, there is no staging and the journal writes buffered as before.
 *
 * A copy's volume I/O (the reads of the initial copy, verify and the target's zero check; the
 * target's large writes of copy records) goes around the page cache too, for another reason:
 * on this kernel (6.18, ext4) large buffered I/O fills the cache in large folios (through readahead
 * for reads), and a later 4 KiB write into such a folio costs far more than one into a small folio.
 * Random 4 KiB writes into 256 MiB read back with 1 MiB reads ran at 95-100k/s, after the same reads
 * with O_DIRECT (or none) at 340-360k/s; into pages written with 1 MiB writes at 63-73k/s, against
 * 440-450k/s after 4 KiB writes. A direct read first writes back the dirty pages of its range and a
 * direct write also drops the range from the cache, so both stay coherent with buffered I/O.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

/** Offsets and lengths of direct writes are multiples of this (a page; >= any logical block). */
export const DIRECT_ALIGN = 4096;
/** Bytes of the staging buffer: a direct run is written in pieces of at most this. */
export const DIRECT_STAGING_BYTES = 8 * 1024 * 1024;
/** The file the probe writes to, in the journal directory; removed after the probe. */
export const DIRECT_PROBE_FILE_NAME = 'direct-probe.tmp';
/** Address steps tried: malloc'd backing stores are at least 16-byte aligned on 64-bit Linux. */
const ADDRESS_STEP = 16;

export function alignDown(n: number): number {
  return n - (n % DIRECT_ALIGN);
}

export function alignUp(n: number): number {
  return alignDown(n + DIRECT_ALIGN - 1);
}

/** Opens `file` for O_DIRECT writes; null where the platform or file system has no O_DIRECT. */
export function openDirect(file: string, extraFlags = 0): number | null {
  const O_DIRECT = fs.constants.O_DIRECT;
  if (O_DIRECT === undefined) return null;
  try {
    return fs.openSync(file, fs.constants.O_RDWR | O_DIRECT | extraFlags, 0o600);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EINVAL') return null;
    throw e;
  }
}

/**
 * Allocates `bytes` at an address the kernel accepts for O_DIRECT, found by trying: `io` does one
 * DIRECT_ALIGN-long direct I/O from the start of the buffer it is given and throws EINVAL when the
 * address is misaligned. Null when no address works; any other error of `io` is thrown.
 */
export function alignedBuffer(bytes: number, io: (b: Buffer) => void): Buffer | null {
  const raw = Buffer.allocUnsafeSlow(bytes + DIRECT_ALIGN);
  raw.fill(0, 0, 2 * DIRECT_ALIGN);
  for (let at = 0; at < DIRECT_ALIGN; at += ADDRESS_STEP) {
    try {
      io(raw.subarray(at, at + DIRECT_ALIGN));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EINVAL') continue;
      throw e;
    }
    return raw.subarray(at, at + bytes);
  }
  return null;
}

/**
 * An aligned buffer of `bytes`, probed with direct writes to the scratch file `probe` (removed
 * after); null when the file system refuses O_DIRECT or every address.
 */
function probedBuffer(probe: string, bytes: number): Buffer | null {
  fs.rmSync(probe, { force: true });
  const fd = openDirect(probe, fs.constants.O_CREAT | fs.constants.O_TRUNC);
  if (fd === null) return null;
  try {
    return alignedBuffer(bytes, (b) => fs.writeSync(fd, b, 0, b.length, 0));
  } finally {
    fs.closeSync(fd);
    fs.rmSync(probe, { force: true });
  }
}

/** One aligned buffer for composing direct writes. */
export class DirectStaging {
  private constructor(
    /** DIRECT_STAGING_BYTES long, at an address the kernel accepts for O_DIRECT. */
    readonly buf: Buffer,
  ) {}

  /**
   * Probes O_DIRECT in `dir` and returns an aligned staging buffer, or null (with the reason) when
   * direct writes cannot be used there.
   */
  static open(dir: string): { staging: DirectStaging | null; reason: string } {
    try {
      const buf = probedBuffer(path.join(dir, DIRECT_PROBE_FILE_NAME), DIRECT_STAGING_BYTES);
      if (buf === null)
        return { staging: null, reason: 'the file system refuses O_DIRECT or every buffer address' };
      return { staging: new DirectStaging(buf), reason: '' };
    } catch (e) {
      return { staging: null, reason: `probe write failed: ${String(e)}` };
    }
  }
}

/** Bytes of a DirectFile's buffer: longer I/O is done in pieces of this. */
export const DIRECT_IO_BYTES = 1024 * 1024;

/**
 * A file opened with O_DIRECT, with one aligned buffer, for ranges aligned to DIRECT_ALIGN (the
 * caller does anything else buffered). `open` returns null where the file cannot be used this way.
 * Calls share the buffer: the sync ones run one at a time on the calling thread, the async reads
 * take turns among themselves, but a sync call made while an async read is on the pool would
 * overwrite its buffer. A user of both keeps one DirectFile for each (FileBlockDevice does).
 */
export class DirectFile {
  /** Bytes read and written with O_DIRECT so far. */
  bytesRead = 0;
  bytesWritten = 0;
  /** The async read in flight. */
  private turn: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly fd: number,
    private readonly buf: Buffer,
  ) {}

  /**
   * Null when O_DIRECT is refused. The buffer's alignment is probed with writes to a scratch file
   * beside `file` (removed after): a direct read of a hole is served without the alignment check,
   * so a probe reading the file itself could pass on an address its data blocks would refuse.
   */
  static open(file: string): DirectFile | null {
    let buf: Buffer | null;
    try {
      buf = probedBuffer(`${file}.${DIRECT_PROBE_FILE_NAME}`, DIRECT_IO_BYTES);
    } catch {
      return null; // no scratch file here (permissions, a read-only directory): stay buffered
    }
    if (buf === null) return null;
    const fd = openDirect(file);
    return fd === null ? null : new DirectFile(fd, buf);
  }

  /** True when [offset, offset + length) can be read or written with O_DIRECT. */
  static fits(offset: number, length: number): boolean {
    return offset % DIRECT_ALIGN === 0 && length % DIRECT_ALIGN === 0;
  }

  /** Reads a range that fits() into `out`, on the calling thread. */
  readSync(offset: number, length: number, out: Buffer): void {
    assertFits(offset, length);
    for (let done = 0; done < length;) {
      const n = fs.readSync(this.fd, this.buf, 0, Math.min(length - done, this.buf.length), offset + done);
      done += this.took(n, offset + done, out, done);
    }
  }

  /** Like readSync, on the thread pool. */
  read(offset: number, length: number, out: Buffer): Promise<void> {
    assertFits(offset, length);
    const run = this.turn.then(async () => {
      for (let done = 0; done < length;) {
        const n = await new Promise<number>((resolve, reject) =>
          fs.read(
            this.fd,
            this.buf,
            0,
            Math.min(length - done, this.buf.length),
            offset + done,
            (err, got) => (err ? reject(err) : resolve(got)),
          ),
        );
        done += this.took(n, offset + done, out, done);
      }
    });
    this.turn = run.catch(() => undefined);
    return run;
  }

  /** Writes `data` (its length fits()) at `offset`, on the calling thread. */
  writeSync(offset: number, data: Uint8Array): void {
    assertFits(offset, data.length);
    for (let done = 0; done < data.length;) {
      const n = Math.min(data.length - done, this.buf.length);
      this.buf.set(data.subarray(done, done + n));
      for (let put = 0; put < n;) {
        const w = fs.writeSync(this.fd, this.buf, put, n - put, offset + done + put);
        if (w <= 0 || w % DIRECT_ALIGN !== 0) {
          throw new Error(`direct write at ${offset + done + put} wrote ${w} bytes`);
        }
        put += w;
      }
      done += n;
      this.bytesWritten += n;
    }
  }

  close(): void {
    fs.closeSync(this.fd);
  }

  private took(n: number, at: number, out: Buffer, outAt: number): number {
    if (n <= 0 || n % DIRECT_ALIGN !== 0) {
      throw new Error(`direct read at ${at} returned ${n} bytes (a short read inside the file)`);
    }
    this.buf.copy(out, outAt, 0, n);
    this.bytesRead += n;
    return n;
  }
}

function assertFits(offset: number, length: number): void {
  if (!DirectFile.fits(offset, length)) throw new Error(`direct I/O ${offset}+${length} is not aligned`);
}
