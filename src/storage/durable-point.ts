/**
 * The journal's durable point: a position (segment number, byte offset) below which every record
 * byte is known to have been fdatasynced. Kept on disk so that recovery can tell a power loss from
 * corruption (journal-recovery.ts):
 *
 *   - a bad record at or past the durable point sits where no completed fdatasync covered it. A
 *     power loss can leave exactly that, with later pages persisted (the kernel writes back dirty
 *     pages in any order, within a file and across files): the bad record and everything after it
 *     are dropped, and no record there was ever reported durable;
 *   - a bad record below it was durable once: that is corruption, and the journal is refused.
 *
 * The point on disk is a lower bound of the true one: the journal writes it only after a sync
 * round completes (journal.ts), and the file itself is fdatasynced at most once a second in the
 * background, so after a power loss it may lag by about a second. Corruption inside that last
 * second is taken for a power loss (the records are dropped, not refused); nothing else is lost.
 *
 * It also says from which segment on every segment the journal moved on from carries an end mark
 * (record.ts): a zero tail in an earlier segment is its end, as before marks existed; from there
 * on, a segment that others follow and that has no mark lost its end in a power loss.
 *
 * Format (`durable.pos`, 8 KiB): two slots of 48 bytes, at byte 0 and at byte 4096 (different
 * pages and sectors, so a torn write spoils at most one). Writes alternate between them; the valid
 * slot with the higher counter holds the point.
 *
 *    0 magic 'RCJD' (u32 0x444a4352)   4 version u8 = 1, 3 bytes zero   8 crc32c (u32) of the slot
 *   12 zero (u32)   16 counter (u64)   24 segment number (u64)   32 byte offset (u64)
 *   40 first segment with end marks (u64)   48 boot id of the last open (36 bytes of ASCII, or zeroes)
 *
 * A journal without the file (made before it existed) has no known point: recovery then refuses
 * any bad record that a valid one follows, as it always did, and the file is created at open.
 *
 * Each open writes the machine's boot id (Linux: /proc/sys/kernel/random/boot_id) into the file.
 * When the next open finds the same boot id, the machine has not restarted in between: the page
 * cache kept every byte written, no power loss can have made a hole, and a bad record that a valid
 * one follows is refused as it always was (dropping it would leave the volume ahead of the journal).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { crc32c } from '@node-rs/crc32';
import { fsyncDirSync } from './journal-state.js';
import { checksumMatches, readU64, writeU64 } from './record.js';
import { readBestSlot, type SlotOffsets, slotOffset } from './slot-file.js';

export const DURABLE_POINT_FILE_NAME = 'durable.pos';
const MAGIC = 0x444a4352;
const VERSION = 1;
const SLOT_BYTES = 84;
const BOOT_ID_BYTES = 36;
const BOOT_ID_FILE = '/proc/sys/kernel/random/boot_id';
const SLOT_OFFSETS: SlotOffsets = [0, 4096];
const FILE_BYTES = 8192;
/** The file is fdatasynced at most this often (its value on disk lags by about as much). */
export const DURABLE_POINT_FLUSH_MS = 1000;

/** A byte position in the journal: segment number, then byte offset in it. */
export interface JournalPosition {
  readonly segNo: number;
  readonly offset: number;
}

export const POSITION_ZERO: JournalPosition = { segNo: 0, offset: 0 };

/** This boot of the machine: the Linux boot id, '' where there is none. */
export function currentBootId(): string {
  try {
    const id = fs.readFileSync(BOOT_ID_FILE, 'ascii').trim();
    return /^[0-9a-f-]{36}$/.test(id) ? id : '';
  } catch {
    return '';
  }
}

/** True when position a comes before position b. */
export function positionBefore(a: JournalPosition, b: JournalPosition): boolean {
  return a.segNo < b.segNo || (a.segNo === b.segNo && a.offset < b.offset);
}

/** What the file holds. */
interface DurablePoint {
  readonly point: JournalPosition;
  /** Segments numbered from here on carry an end mark once the journal moves on from them. */
  readonly markedFromSegNo: number;
}

/** What recovery needs to know. */
export interface RecoveryPoint extends DurablePoint {
  /** The machine has not restarted since the journal was last opened: the page cache kept all. */
  readonly sameBoot: boolean;
}

interface Slot extends DurablePoint {
  readonly counter: number;
  readonly bootId: string;
}

function encodeSlot(s: Slot): Buffer {
  const b = Buffer.alloc(SLOT_BYTES);
  b.writeUInt32LE(MAGIC, 0);
  b.writeUInt8(VERSION, 4);
  writeU64(b, 16, s.counter);
  writeU64(b, 24, s.point.segNo);
  writeU64(b, 32, s.point.offset);
  writeU64(b, 40, s.markedFromSegNo);
  b.write(s.bootId, 48, BOOT_ID_BYTES, 'ascii');
  b.writeUInt32LE(crc32c(b), 8);
  return b;
}

function decodeSlot(b: Buffer): Slot | null {
  if (b.length < SLOT_BYTES || b.readUInt32LE(0) !== MAGIC || b.readUInt8(4) !== VERSION) return null;
  if (!checksumMatches(b, 0, SLOT_BYTES)) return null;
  const counter = readU64(b, 16);
  const segNo = readU64(b, 24);
  const offset = readU64(b, 32);
  const markedFromSegNo = readU64(b, 40);
  if (counter < 0 || segNo < 0 || offset < 0 || markedFromSegNo < 0) return null;
  const bootId = b.toString('ascii', 48, 48 + BOOT_ID_BYTES).replace(/\0+$/, '');
  return { counter, point: { segNo, offset }, markedFromSegNo, bootId };
}

export type DurablePointRead =
  { readonly state: 'missing' } | { readonly state: 'unreadable' } | ({ readonly state: 'ok' } & Slot);

/** Reads the durable point of the journal in `dir`. */
export function readDurablePointSync(dir: string): DurablePointRead {
  const r = readBestSlot(
    path.join(dir, DURABLE_POINT_FILE_NAME),
    SLOT_OFFSETS,
    (buf, at) => decodeSlot(buf.subarray(at, at + SLOT_BYTES)),
    'RC_ERR_JOURNAL_IO',
  );
  return r.state === 'ok' ? { state: 'ok', ...r.slot } : r;
}

/**
 * The open durable-point file of a journal. `advance` writes a new point (page cache, one pwrite);
 * the file is fdatasynced in the background at most every DURABLE_POINT_FLUSH_MS. Write errors are
 * logged once and the point stops moving: a stale point is still a lower bound.
 */
export class DurablePointFile {
  private point: JournalPosition;
  private counter: number;
  readonly markedFromSegNo: number;
  private readonly bootId: string;
  private flushTimer: NodeJS.Timeout | null = null;
  private flushing: Promise<void> | null = null;
  private broken = false;

  private constructor(
    private readonly fd: number,
    start: Slot,
    private readonly onError: (e: unknown) => void,
  ) {
    this.point = start.point;
    this.counter = start.counter;
    this.markedFromSegNo = start.markedFromSegNo;
    this.bootId = start.bootId;
  }

  /**
   * Opens the file in `dir` and writes this boot's id into it (durable). When it is missing or
   * unreadable, creates it with the point at zero, which claims nothing, and end marks from
   * segment `markedFromSegNo` on.
   */
  static openSync(
    dir: string,
    read: DurablePointRead,
    markedFromSegNo: number,
    bootId: string,
    onError: (e: unknown) => void,
  ): DurablePointFile {
    const file = path.join(dir, DURABLE_POINT_FILE_NAME);
    const start: Slot =
      read.state === 'ok'
        ? { ...read, counter: read.counter + 1, bootId }
        : { counter: 1, point: POSITION_ZERO, markedFromSegNo, bootId };
    const fd = fs.openSync(file, read.state === 'ok' ? 'r+' : 'w+');
    try {
      if (read.state !== 'ok') fs.ftruncateSync(fd, FILE_BYTES);
      fs.writeSync(fd, encodeSlot(start), 0, SLOT_BYTES, slotOffset(SLOT_OFFSETS, start.counter));
      fs.fdatasyncSync(fd);
      if (read.state !== 'ok') fsyncDirSync(dir);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
    return new DurablePointFile(fd, start, onError);
  }

  get current(): JournalPosition {
    return this.point;
  }

  /** Records that every byte before `p` is durable. */
  advance(p: JournalPosition): void {
    if (this.broken || !positionBefore(this.point, p)) return;
    const counter = this.counter + 1;
    const slot = encodeSlot({
      counter,
      point: p,
      markedFromSegNo: this.markedFromSegNo,
      bootId: this.bootId,
    });
    try {
      fs.writeSync(this.fd, slot, 0, SLOT_BYTES, slotOffset(SLOT_OFFSETS, counter));
    } catch (e) {
      this.fail(e);
      return;
    }
    this.counter = counter;
    this.point = p;
    this.flushTimer ??= setTimeout(() => this.flushInBackground(), DURABLE_POINT_FLUSH_MS).unref();
  }

  private flushInBackground(): void {
    this.flushTimer = null;
    if (this.flushing !== null) {
      // One at a time; the point written since needs the next one.
      this.flushTimer = setTimeout(() => this.flushInBackground(), DURABLE_POINT_FLUSH_MS).unref();
      return;
    }
    this.flushing = new Promise<void>((resolve) =>
      fs.fdatasync(this.fd, (e) => {
        if (e) this.fail(e);
        this.flushing = null;
        resolve();
      }),
    );
  }

  private fail(e: unknown): void {
    if (!this.broken) this.onError(e);
    this.broken = true;
  }

  /** Makes the current point durable and closes the file. */
  async close(): Promise<void> {
    this.stopTimer();
    await this.flushing;
    try {
      if (!this.broken) fs.fdatasyncSync(this.fd);
    } catch (e) {
      this.fail(e);
    }
    fs.closeSync(this.fd);
  }

  /** Closes without syncing (the journal failed to open). */
  closeSync(): void {
    this.stopTimer();
    fs.closeSync(this.fd);
  }

  private stopTimer(): void {
    if (this.flushTimer !== null) clearTimeout(this.flushTimer);
    this.flushTimer = null;
  }
}
