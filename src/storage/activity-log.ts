/**
 * The activity log of a source node: the volume extents that may hold a write whose journal
 * record is not durable yet. It closes the one gap the journal alone leaves at a power loss: the
 * kernel writes back a volume's dirty pages in its own time, so a volume page can reach the disk
 * before the journal record of the write that made it. The journal then drops that record (it was
 * never synced) while the volume keeps the write: the source is ahead of its journal, and the
 * target never receives the write (DRBD keeps an activity log for the same reason).
 *
 *   write path: journal.append --> admit(volume, range, gen) --> volume write --> ack
 *     every extent of the range already in the file: nothing to wait for (the common case)
 *     an extent new to the log: the log file is rewritten and fdatasynced first (one write
 *     serves every extent admitted meanwhile); the volume write waits for it
 *   an extent leaves the log only when every write admitted to it has a durable journal record
 *     (its last gen <= the journal's synced gen): when room is needed (the least recently
 *     written such extent), or when it has stayed unwritten for a trim period
 *   clean close (journal synced): the file is written empty
 *
 * At start, a file written in another boot of the machine (the boot id differs) that names
 * extents means the process did not stop cleanly before a restart of the machine, perhaps a power
 * loss: those extents may be ahead of the journal. The node journals their current content as copy
 * records before any host write (src/node/replication/source.ts recoverActiveExtents). A file
 * written in this boot needs nothing: kill -9 keeps the page cache, and a journal record is
 * appended before its volume write is issued.
 *
 * Format (`activity.log`, sparse, 2 MiB): two slots, at 0 and at 1 MiB, written in turn; the
 * valid slot with the higher counter holds the log. A slot:
 *
 *    0 magic 'RCAL' (u32 0x4c414352)   4 version u8 = 1, 3 bytes zero   8 crc32c (u32) of the slot
 *   12 slot bytes (u32)   16 counter (u64)   24 extent bytes (u64)   32 volumes (u32)
 *   36 extents (u32)   40 boot id (36 bytes of ASCII, or zeroes)   76 the volume names, each a
 *   u16 byte length and UTF-8; then the extents, each a u32 volume index and a u32 extent number
 *
 * The file is created (write, fdatasync, rename, directory fsync) before the first host write, so
 * it never exists without a valid slot except by damage: an unreadable file is taken as "every
 * extent of every volume".
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { crc32c } from '@node-rs/crc32';
import { assert } from '../core/assert.js';
import { type Deferred, deferred } from '../core/deferred.js';
import { RemcopyError } from '../core/errors.js';
import { currentBootId } from './durable-point.js';
import { fsyncDirSync } from './journal-state.js';
import { checksumMatches, readU64, writeU64 } from './record.js';
import { readBestSlot, type SlotOffsets, slotOffset } from './slot-file.js';

export const ACTIVITY_LOG_FILE_NAME = 'activity.log';
export const ACTIVITY_LOG_EXTENT_BYTES_DEFAULT = 4 * 1024 * 1024;
/**
 * Extents a log holds by default (`activityLog.extents` in the node's config): 64 GiB of volume
 * written within a few seconds. Room costs nothing until it is used (a file write holds only the
 * extents in the log), while a log too small for the extents being written costs a file write and
 * a journal sync for nearly every batch: fio 4 KiB random writes over 16 GiB made 19 700 IOPS with
 * 1024 extents and 38 700 with 16384 on this 2-core machine. The price of a large log is paid
 * only after a power loss, by a recovery that copies (or resyncs) every extent it names.
 */
export const ACTIVITY_LOG_EXTENTS_DEFAULT = 16384;
/** Most extents a log may hold: 8 bytes each, a slot (1 MiB) holds them with the volume names. */
export const ACTIVITY_LOG_EXTENTS_MAX = 65536;
/** A write of the largest NBD size (32 MiB) spans at most 9 extents of 4 MiB; room for two. */
export const ACTIVITY_LOG_EXTENTS_MIN = 32;
/** Extents not written for this long (and durable in the journal) leave the log. */
export const ACTIVITY_LOG_TRIM_MS_DEFAULT = 5000;

const MAGIC = 0x4c414352;
const VERSION = 1;
const HEADER_BYTES = 76;
const BOOT_ID_BYTES = 36;
const ENTRY_BYTES = 8;
const SLOT_REGION_BYTES = 1024 * 1024;
const SLOT_OFFSETS: SlotOffsets = [0, SLOT_REGION_BYTES];
const TWO_POW_32 = 2 ** 32;

/** One extent named by the log. */
export interface ActiveExtent {
  readonly volume: string;
  readonly extentNo: number;
}

export type ActivityLogRead =
  | { readonly state: 'missing' }
  | { readonly state: 'unreadable' }
  | {
      readonly state: 'ok';
      readonly bootId: string;
      readonly extentBytes: number;
      readonly extents: readonly ActiveExtent[];
    };

interface Slot {
  readonly counter: number;
  readonly bootId: string;
  readonly extentBytes: number;
  readonly volumes: readonly string[];
  /** Pairs of (volume index, extent number). */
  readonly extents: readonly (readonly [number, number])[];
}

function encodeSlot(s: Slot): Buffer {
  const names = s.volumes.map((v) => Buffer.from(v, 'utf8'));
  const bytes = HEADER_BYTES + names.reduce((n, b) => n + 2 + b.length, 0) + ENTRY_BYTES * s.extents.length;
  assert(bytes <= SLOT_REGION_BYTES, 'activity log slot larger than its region');
  const b = Buffer.alloc(bytes);
  b.writeUInt32LE(MAGIC, 0);
  b.writeUInt8(VERSION, 4);
  b.writeUInt32LE(bytes, 12);
  writeU64(b, 16, s.counter);
  writeU64(b, 24, s.extentBytes);
  b.writeUInt32LE(s.volumes.length, 32);
  b.writeUInt32LE(s.extents.length, 36);
  b.write(s.bootId, 40, BOOT_ID_BYTES, 'ascii');
  let at = HEADER_BYTES;
  for (const n of names) {
    b.writeUInt16LE(n.length, at);
    n.copy(b, at + 2);
    at += 2 + n.length;
  }
  for (const [v, e] of s.extents) {
    b.writeUInt32LE(v, at);
    b.writeUInt32LE(e, at + 4);
    at += ENTRY_BYTES;
  }
  b.writeUInt32LE(crc32c(b), 8);
  return b;
}

function decodeSlot(file: Buffer, at: number): Slot | null {
  if (file.length < at + HEADER_BYTES) return null;
  if (file.readUInt32LE(at) !== MAGIC || file.readUInt8(at + 4) !== VERSION) return null;
  const bytes = file.readUInt32LE(at + 12);
  if (bytes < HEADER_BYTES || bytes > SLOT_REGION_BYTES || at + bytes > file.length) return null;
  if (!checksumMatches(file, at, bytes)) return null;
  const b = file.subarray(at, at + bytes);
  const counter = readU64(b, 16);
  const extentBytes = readU64(b, 24);
  if (counter < 0 || extentBytes <= 0) return null;
  const volumeCount = b.readUInt32LE(32);
  const extentCount = b.readUInt32LE(36);
  const bootId = b.toString('ascii', 40, 40 + BOOT_ID_BYTES).replace(/\0+$/, '');
  const volumes: string[] = [];
  let p = HEADER_BYTES;
  for (let i = 0; i < volumeCount; i++) {
    if (p + 2 > bytes) return null;
    const len = b.readUInt16LE(p);
    if (p + 2 + len > bytes) return null;
    volumes.push(b.toString('utf8', p + 2, p + 2 + len));
    p += 2 + len;
  }
  if (p + ENTRY_BYTES * extentCount !== bytes) return null;
  const extents: [number, number][] = [];
  for (let i = 0; i < extentCount; i++, p += ENTRY_BYTES) {
    const v = b.readUInt32LE(p);
    if (v >= volumeCount) return null;
    extents.push([v, b.readUInt32LE(p + 4)]);
  }
  return { counter, bootId, extentBytes, volumes, extents };
}

function readBest(file: string): { read: ActivityLogRead; counter: number } {
  const r = readBestSlot(file, SLOT_OFFSETS, decodeSlot, 'RC_ERR_IO');
  if (r.state !== 'ok') return { read: r, counter: 0 };
  const best = r.slot;
  const extents = best.extents.map(([v, e]) => ({ volume: best.volumes[v]!, extentNo: e }));
  return {
    read: { state: 'ok', bootId: best.bootId, extentBytes: best.extentBytes, extents },
    counter: best.counter,
  };
}

/** Reads the activity log in `dir` as the next start would. */
export function readActivityLogSync(dir: string): ActivityLogRead {
  return readBest(path.join(dir, ACTIVITY_LOG_FILE_NAME)).read;
}

/**
 * Writes `log` into the activity log in `dir` as its newest slot, durably (tools, and tests that
 * stand for a log written in another boot of the machine).
 */
export function writeActivityLogSync(
  dir: string,
  log: { readonly bootId: string; readonly extentBytes: number; readonly extents: readonly ActiveExtent[] },
): void {
  const file = path.join(dir, ACTIVITY_LOG_FILE_NAME);
  const { counter } = readBest(file);
  const volumes = [...new Set(log.extents.map((e) => e.volume))];
  const slot = encodeSlot({
    counter: counter + 1,
    bootId: log.bootId,
    extentBytes: log.extentBytes,
    volumes,
    extents: log.extents.map((e) => [volumes.indexOf(e.volume), e.extentNo] as const),
  });
  const created = !fs.existsSync(file);
  const fd = fs.openSync(file, created ? 'w+' : 'r+');
  try {
    fs.writeSync(fd, slot, 0, slot.length, slotOffset(SLOT_OFFSETS, counter + 1));
    fs.fdatasyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  if (created) fsyncDirSync(dir);
}

/** What the log needs of the journal. */
export interface ActivityLogJournal {
  /** Grows with every append; a record appended at gen g is durable once syncedGeneration >= g. */
  readonly appendGeneration: number;
  readonly syncedGeneration: number;
  sync(): Promise<void>;
}

/** The file operations the log uses; tests replace them to fail one. */
export interface ActivityLogIo {
  write(fd: number, buf: Buffer, position: number): Promise<void>;
  fdatasync(fd: number): Promise<void>;
}

const REAL_IO: ActivityLogIo = {
  write: (fd, buf, position) =>
    new Promise((resolve, reject) =>
      fs.write(fd, buf, 0, buf.length, position, (e, n) =>
        e
          ? reject(e)
          : n !== buf.length
            ? reject(new Error(`short write: ${n} of ${buf.length}`))
            : resolve(),
      ),
    ),
  fdatasync: (fd) => new Promise((resolve, reject) => fs.fdatasync(fd, (e) => (e ? reject(e) : resolve()))),
};

export interface ActivityLogOptions {
  readonly dir: string;
  /** The volumes whose writes are admitted (index order is kept in the file). */
  readonly volumes: readonly string[];
  readonly journal: ActivityLogJournal;
  readonly extentBytes?: number;
  readonly capacity?: number;
  readonly trimMs?: number;
  /** This boot of the machine (tests stand for a restart with another). */
  readonly bootId?: string;
  readonly io?: ActivityLogIo;
  readonly log: (level: 'info' | 'warn' | 'error', msg: string, fields?: object) => void;
}

interface Entry {
  readonly volume: number;
  readonly extentNo: number;
  /** The journal gen of the latest write admitted to the extent. */
  lastGen: number;
  /** The number of the first file write that holds the extent. */
  needWrite: number;
}

export interface ActivityLogStats {
  /** File writes completed. */
  writes: number;
  /** Extents admitted that were not in the log. */
  extentsAdded: number;
  /** Extents that left the log to make room. */
  evictions: number;
  /** Extents that left the log unwritten for a trim period. */
  trimmed: number;
  /** Admissions that waited for a journal sync because no extent could leave the log. */
  fullWaits: number;
}

export class ActivityLog {
  /** What the file held when opened: the last run's log (recovery reads it before start()). */
  readonly previous: ActivityLogRead;
  readonly extentBytes: number;
  readonly capacity: number;
  readonly stats: ActivityLogStats = { writes: 0, extentsAdded: 0, evictions: 0, trimmed: 0, fullWaits: 0 };
  private readonly file: string;
  private readonly volumeIndex = new Map<string, number>();
  private readonly volumes: readonly string[];
  private readonly bootId: string;
  private readonly io: ActivityLogIo;
  private readonly entries = new Map<number, Entry>();
  private fd: number | null = null;
  private counter: number;
  private writesStarted = 0;
  private writesDone = 0;
  private current: { no: number; done: Deferred } | null = null;
  private next: Deferred | null = null;
  private trimTimer: NodeJS.Timeout | null = null;
  private syncedAtLastTrim = 0;
  private closed = false;

  constructor(private readonly o: ActivityLogOptions) {
    this.extentBytes = o.extentBytes ?? ACTIVITY_LOG_EXTENT_BYTES_DEFAULT;
    this.capacity = o.capacity ?? ACTIVITY_LOG_EXTENTS_DEFAULT;
    if (
      !Number.isSafeInteger(this.capacity) ||
      this.capacity < ACTIVITY_LOG_EXTENTS_MIN ||
      this.capacity > ACTIVITY_LOG_EXTENTS_MAX
    ) {
      throw new RemcopyError(
        'RC_ERR_CONFIG',
        `activity log: ${this.capacity} extents is out of range ` +
          `(${ACTIVITY_LOG_EXTENTS_MIN} to ${ACTIVITY_LOG_EXTENTS_MAX})`,
      );
    }
    this.volumes = [...o.volumes];
    this.volumes.forEach((v, i) => this.volumeIndex.set(v, i));
    this.bootId = o.bootId ?? currentBootId();
    this.io = o.io ?? REAL_IO;
    this.file = path.join(o.dir, ACTIVITY_LOG_FILE_NAME);
    const { read, counter } = readBest(this.file);
    this.previous = read;
    this.counter = counter;
    assert(this.bootId.length <= BOOT_ID_BYTES, `boot id longer than ${BOOT_ID_BYTES} characters`);
    const largest =
      HEADER_BYTES +
      this.volumes.reduce((n, v) => n + 2 + Buffer.byteLength(v, 'utf8'), 0) +
      ENTRY_BYTES * (this.capacity + 9);
    if (largest > SLOT_REGION_BYTES) {
      throw new RemcopyError(
        'RC_ERR_CONFIG',
        `activity log: ${this.capacity} extents of ${this.volumes.length} volumes do not fit its ${SLOT_REGION_BYTES}-byte slot`,
      );
    }
  }

  /**
   * Whether the last run's log names extents that may be ahead of the journal: it was written in
   * another boot of the machine (or cannot be read) and the run did not end cleanly.
   */
  get previousNeedsRecovery(): boolean {
    const p = this.previous;
    if (p.state === 'missing') return false;
    if (p.state === 'unreadable') return true;
    return p.extents.length > 0 && (p.bootId === '' || p.bootId !== this.bootId);
  }

  /**
   * Writes an empty log of this boot, durably; from here on the last run's log is gone. Call it
   * after the extents it named are taken care of, and before the first host write.
   */
  async start(): Promise<void> {
    assert(this.fd === null && !this.closed, 'activity log started twice');
    if (this.previous.state !== 'ok') {
      // Never a file without a valid slot: made under another name, then renamed into place.
      const tmp = `${this.file}.tmp`;
      const fd = fs.openSync(tmp, 'w');
      try {
        fs.ftruncateSync(fd, 2 * SLOT_REGION_BYTES);
        const slot = this.encode(++this.counter);
        fs.writeSync(fd, slot, 0, slot.length, slotOffset(SLOT_OFFSETS, this.counter));
        fs.fdatasyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
      fs.renameSync(tmp, this.file);
      fsyncDirSync(this.o.dir);
      this.fd = fs.openSync(this.file, 'r+');
    } else {
      this.fd = fs.openSync(this.file, 'r+');
      try {
        await this.writeNow();
      } catch (e) {
        fs.closeSync(this.fd);
        this.fd = null;
        throw e;
      }
    }
    this.syncedAtLastTrim = this.o.journal.syncedGeneration;
    const trimMs = this.o.trimMs ?? ACTIVITY_LOG_TRIM_MS_DEFAULT;
    this.trimTimer = setInterval(() => this.trim(), trimMs).unref();
  }

  /** Extents in the log now. */
  get size(): number {
    return this.entries.size;
  }

  /** The extents in the log now, in no particular order. */
  extents(): ActiveExtent[] {
    return [...this.entries.values()].map((e) => ({ volume: this.volumes[e.volume]!, extentNo: e.extentNo }));
  }

  /**
   * A write of `volume` [offset, offset + length) whose journal record was appended at journal gen
   * `gen` is about to go to the volume. Returns undefined when it may go now, else a promise that
   * resolves once it may (the log file holds its extents) or rejects when the file cannot be written.
   */
  admit(volume: string, offset: number, length: number, gen: number): Promise<void> | undefined {
    if (length <= 0) return undefined;
    const v = this.volumeIndex.get(volume);
    assert(v !== undefined, `activity log: unknown volume ${volume}`);
    const r = this.tryAdmit(v, offset, length, gen);
    if (r !== 'full') return r;
    return this.admitWhenRoom(v, offset, length, gen);
  }

  private tryAdmit(
    v: number,
    offset: number,
    length: number,
    gen: number,
  ): Promise<void> | undefined | 'full' {
    const first = Math.floor(offset / this.extentBytes);
    const last = Math.floor((offset + length - 1) / this.extentBytes);
    // The file write that holds every extent of the range: the latest any of them needs (file
    // writes complete in order). Not the last extent's: its write can be an earlier one.
    let need = 0;
    for (let x = first; x <= last; x++) {
      const key = v * TWO_POW_32 + x;
      let e = this.entries.get(key);
      if (e === undefined) {
        if (this.entries.size >= this.capacity && !this.evictOne()) return 'full';
        e = { volume: v, extentNo: x, lastGen: gen, needWrite: this.writesStarted + 1 };
        this.stats.extentsAdded++;
      } else {
        // Map order is admission order: the least recently written extent stays first.
        this.entries.delete(key);
      }
      this.entries.set(key, e);
      // Never back: a retry after a full wait comes with its first gen, and later writes of the
      // extent may have gone to the volume meanwhile.
      if (gen > e.lastGen) e.lastGen = gen;
      if (e.needWrite > need) need = e.needWrite;
    }
    return need > this.writesDone ? this.waitForWrite(need) : undefined;
  }

  /** No extent could leave the log: sync the journal (then some can) and try again. */
  private async admitWhenRoom(v: number, offset: number, length: number, gen: number): Promise<void> {
    this.stats.fullWaits++;
    for (;;) {
      await this.o.journal.sync();
      if (this.closed) throw new RemcopyError('RC_ERR_STATE', 'activity log closed');
      const r = this.tryAdmit(v, offset, length, gen);
      if (r !== 'full') return r;
    }
  }

  /**
   * Drops the least recently written extent whose writes are all durable in the journal. The
   * entries are in admission order, so the first durable one is it, and usually the very first.
   */
  private evictOne(): boolean {
    const synced = this.o.journal.syncedGeneration;
    for (const [k, e] of this.entries) {
      if (e.lastGen > synced) continue;
      this.entries.delete(k);
      this.stats.evictions++;
      return true;
    }
    return false;
  }

  /** Extents unwritten since the last trim, their writes durable in the journal, leave the log. */
  private trim(): void {
    const floor = Math.min(this.syncedAtLastTrim, this.o.journal.syncedGeneration);
    this.syncedAtLastTrim = this.o.journal.syncedGeneration;
    let dropped = 0;
    for (const [k, e] of this.entries) {
      if (e.lastGen <= floor && e.needWrite <= this.writesDone) {
        this.entries.delete(k);
        dropped++;
      }
    }
    if (dropped === 0 || this.closed) return;
    this.stats.trimmed += dropped;
    this.waitForWrite(this.writesStarted + 1).catch(() => {});
  }

  /** Resolves once file write `no` (the one in flight, or the next) is durable. */
  private waitForWrite(no: number): Promise<void> {
    if (this.current !== null && this.current.no === no) return this.current.done.promise;
    assert(
      no === this.writesStarted + 1,
      'activity log: waiting for a write that is neither current nor next',
    );
    if (this.next === null) {
      this.next = deferred();
      // A write that nobody waits on (a trim) must not fail the process.
      this.next.promise.catch(() => {});
      // Every admission of this batch goes into the same write.
      if (this.current === null) queueMicrotask(() => this.startNext());
    }
    return this.next.promise;
  }

  private startNext(): void {
    if (this.current !== null || this.next === null) return;
    const done = this.next;
    this.next = null;
    const no = ++this.writesStarted;
    this.current = { no, done };
    this.writeNow()
      .then(
        () => {
          this.writesDone = no;
          done.resolve();
        },
        (e) => {
          // Extents only this write would have held are not in the file: forget them (the writes
          // waiting for them fail and do not reach their volume).
          for (const [k, en] of this.entries) if (en.needWrite === no) this.entries.delete(k);
          this.o.log('error', 'activity log: write failed; the writes waiting for it fail', {
            error: String(e),
          });
          done.reject(new RemcopyError('RC_ERR_JOURNAL_IO', `activity log write failed: ${String(e)}`));
        },
      )
      .finally(() => {
        this.current = null;
        if (this.next !== null) this.startNext();
      });
  }

  private encode(counter: number): Buffer {
    const extents = [...this.entries.values()].map((e) => [e.volume, e.extentNo] as const);
    return encodeSlot({
      counter,
      bootId: this.bootId,
      extentBytes: this.extentBytes,
      volumes: this.volumes,
      extents,
    });
  }

  private async writeNow(): Promise<void> {
    assert(this.fd !== null, 'activity log not started');
    const counter = this.counter + 1;
    const slot = this.encode(counter);
    await this.io.write(this.fd, slot, slotOffset(SLOT_OFFSETS, counter));
    await this.io.fdatasync(this.fd);
    // Only now: after a failure the next write goes to the same slot, never over the last good one.
    this.counter = counter;
    this.stats.writes++;
  }

  /**
   * Stops. `clean`: the journal holds every write admitted, durably (it was synced after the last
   * one), so the log is written empty; otherwise it is left as it is for the next start.
   */
  async close(clean: boolean): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.trimTimer !== null) clearInterval(this.trimTimer);
    while (this.current !== null || this.next !== null) {
      await (this.current ?? { done: this.next! }).done.promise.catch(() => {});
      await new Promise<void>((r) => setImmediate(r));
    }
    if (this.fd === null) return;
    try {
      if (clean && this.o.journal.syncedGeneration >= this.o.journal.appendGeneration) {
        this.entries.clear();
        await this.writeNow();
      }
    } catch (e) {
      this.o.log('warn', 'activity log: the clean-stop write failed; the next start copies its extents', {
        error: String(e),
      });
    } finally {
      fs.closeSync(this.fd);
      this.fd = null;
    }
  }
}
