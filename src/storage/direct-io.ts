/**
 * Direct I/O (O_DIRECT) for the journal's large appends.
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
    const probe = path.join(dir, DIRECT_PROBE_FILE_NAME);
    fs.rmSync(probe, { force: true });
    const fd = openDirect(probe, fs.constants.O_CREAT | fs.constants.O_TRUNC);
    if (fd === null) return { staging: null, reason: 'the file system refuses O_DIRECT' };
    try {
      const raw = Buffer.allocUnsafeSlow(DIRECT_STAGING_BYTES + DIRECT_ALIGN);
      raw.fill(0, 0, 2 * DIRECT_ALIGN);
      for (let at = 0; at < DIRECT_ALIGN; at += ADDRESS_STEP) {
        try {
          fs.writeSync(fd, raw, at, DIRECT_ALIGN, 0);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === 'EINVAL') continue;
          return { staging: null, reason: `probe write failed: ${String(e)}` };
        }
        return { staging: new DirectStaging(raw.subarray(at, at + DIRECT_STAGING_BYTES)), reason: '' };
      }
      return { staging: null, reason: 'no buffer address is accepted for O_DIRECT' };
    } finally {
      fs.closeSync(fd);
      fs.rmSync(probe, { force: true });
    }
  }
}
