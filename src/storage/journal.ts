/**
 * The journal: a bounded, segmented, append-only log of records on disk (DESIGN.md §2, §3.2, §6).
 *
 * Every host write is appended here, with its order, before it is acknowledged; the write path
 * (src/node/write-path.ts) appends, syncs for FLUSH/FUA, replays `retained()` at start, and
 * releases records once their volumes are durable and the target has them; the sender/reader ships
 * records with `readRetained()`.
 *
 *   append(batch) --writevSync--> page cache       (placed, indexed and buffered-written when it
 *                                                   returns; runs of 256 KiB+ into a new segment go
 *                                                   to the device with O_DIRECT on the thread pool:
 *                                                   whenWritten() says when their bytes are in)
 *   sync()        --fdatasync---> disk             (group commit: one fdatasync in flight, the next
 *                                                   one covers every caller that arrived meanwhile)
 *   release(g, s) --state.json--> segment deleted  (state persisted before any segment goes)
 *
 * On disk, in `dir`:
 *
 *   seg-0000000000000001.log   [record]...[record][end]         records as in record.ts, no padding;
 *   seg-0000000000000002.log   [record]...                      a new segment when the next record
 *   ...                                                         and an end mark do not fit in
 *                                                               segmentBytes; the segment left
 *                                                               gets its end mark (record.ts)
 *   state.json                 released seq per group, highest ordinal/write time (journal-state.ts)
 *   durable.pos                where the last completed sync round reached (durable-point.ts):
 *                              recovery tells a power-loss hole past it from corruption before it
 *
 * Space: `usedBytes` is what the live segments take (records, released or not, in segments not yet
 * deleted): a whole segment for each one the journal moved on from, whose tail no record can use,
 * and the records of the active one. An append that would take usedBytes above bytesMax throws
 * RC_ERR_JOURNAL_FULL and writes nothing. On disk the files take at most bytesMax plus the unused
 * tail of the active segment (allocated when the file is a recycled one). A segment is let go when
 * it is not the active one and every record in it is released under the persisted state file:
 * renamed to free-N.log for reuse (at most FREE_SEGMENTS_MAX, and live + free files within
 * bytesMax), else deleted.
 *
 * Segment files are always segmentBytes long (sparse when new), so appends never change a file's
 * size; a recycled file's blocks are already allocated, so appends overwrite instead of allocating
 * (measured several times faster on ext4). Past the records, a new file holds zeroes and a recycled
 * one stale records of its previous life, whose ordinals are lower: recovery stops at either. When
 * an append moves on from a recycled segment, the stale tail it leaves behind is zeroed first.
 * When no free file exists and appends are slow, a zero-filled spare is prepared in the background
 * (prep-N.tmp, fdatasynced, renamed to free-N.log): FLUSH-heavy hosts then never pay for block
 * allocation inside an fdatasync (measured 2x the fdatasync rate of a sparse file on this disk).
 *
 * Rules asserted on append (programmer errors): per group, seq = previous + 1; ordinal strictly
 * increasing over all groups; ticks are never journalled. Recovery (journal-recovery.ts) refuses
 * a journal where these do not hold among the retained records.
 */
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { assert } from '../core/assert.js';
import { type Deferred, deferred } from '../core/deferred.js';
import { RemcopyError } from '../core/errors.js';
import type { Ordinal, RecordHeader, Seq, TimeUs } from '../core/types.js';
import { ordinal, RecordKind, recordKindName, seq, timeUs } from '../core/types.js';
import {
  checkSegmentsPresent,
  freeSegmentFileName,
  type LogFn,
  listFreeSegments,
  listSegments,
  type RecoveredSegment,
  recoverSegments,
  segmentFileName,
} from './journal-recovery.js';
import {
  fsyncDir,
  fsyncDirSync,
  GroupIndex,
  type JournalState,
  readStateSync,
  STATE_TMP_FILE_NAME,
  writeState,
} from './journal-state.js';
import {
  currentBootId,
  DurablePointFile,
  type JournalPosition,
  POSITION_ZERO,
  readDurablePointSync,
} from './durable-point.js';
import {
  alignDown,
  alignUp,
  DIRECT_ALIGN,
  DIRECT_PROBE_FILE_NAME,
  DirectStaging,
  openDirect,
} from './direct-io.js';
import {
  decodeRecord,
  encodeHeader,
  encodeSegmentEnd,
  encodingFits,
  peekRecordBytes,
  RECORD_HEADER_AND_NAMES_BYTES_MAX,
  RECORD_PAYLOAD_BYTES_MAX,
  SEGMENT_END_BYTES,
} from './record.js';

export type { LogFn } from './journal-recovery.js';

/** Default bytes per segment file. */
export const SEGMENT_BYTES_DEFAULT = 64 * 1024 * 1024;
/** Bytes per segment file, at most: recovery reads a whole segment into memory. */
export const SEGMENT_BYTES_MAX = 1024 * 1024 * 1024;
/** Buffers per writev call, at most (Linux IOV_MAX). */
export const WRITEV_BUFFERS_MAX = 1024;
/** Prepared spares are numbered from here, apart from segment numbers. */
const PREPARED_NO_BASE = 5_000_000_000_000_000;
const PREPARING_PREFIX = 'prep-';
/** Above this append rate no spare is zero-filled (recycling serves fast appenders). */
const PREPARE_APPEND_BYTES_PER_S_MAX = 32 * 1024 * 1024;
/** Free (released, kept for reuse) segment files, at most. */
export const FREE_SEGMENTS_MAX = 8;
/** Zeroes written per call when clearing the stale tail of a recycled segment. */
const ZERO_WRITE_BYTES = 1024 * 1024;
const ZEROES = Buffer.alloc(ZERO_WRITE_BYTES);
/**
 * A run of records of at least this many bytes in a new segment is written with O_DIRECT
 * (direct-io.ts): for large records the copy into fresh page-cache pages costs far more than the
 * device write.
 * Smaller runs stay buffered: a direct write waits for the device, a buffered one does not.
 */
export const DIRECT_RUN_BYTES_MIN = 256 * 1024;
/**
 * A run goes direct (on the thread pool) only while the file system has this much room beyond
 * it. A write that fails once its batch has gone asynchronous fails the journal until a restart
 * (the batches behind it are placed and sequenced already), while a synchronous one is rolled back
 * and only its writes fail: so near a full disk, appends stay synchronous and buffered. The margin
 * covers what other writers (the volumes, other journals) may take while a direct write runs.
 */
export const DIRECT_ROOM_MARGIN_BYTES = 256 * 1024 * 1024;
/** Bytes read per call when scanning a segment in retained(). */
const READ_CHUNK_BYTES = 4 * 1024 * 1024;
/** readRetained reads neighbouring records in one call when it wastes at most this much more. */
const READ_COALESCE_GAP_BYTES = 64 * 1024;

/** The file operations a test may replace to inject faults (ENOSPC, EIO, short writes). */
export interface JournalIo {
  writevSync(fd: number, buffers: readonly NodeJS.ArrayBufferView[], position: number): number;
  fdatasync(fd: number): Promise<void>;
  /**
   * One direct write, on the thread pool. A test's io without it has its direct writes done by
   * writevSync one turn of the event loop later, so that they stay asynchronous.
   */
  write?(fd: number, buffer: Buffer, position: number): Promise<number>;
  /**
   * Bytes free to this process on the file system of `dir` (statfs). A test's io without it has
   * room for every direct write.
   */
  freeBytes?(dir: string): number;
}

const realIo: JournalIo = {
  writevSync: (fd, buffers, position) => fs.writevSync(fd, buffers, position),
  fdatasync: (fd) => new Promise((resolve, reject) => fs.fdatasync(fd, (e) => (e ? reject(e) : resolve()))),
  write: (fd, buffer, position) =>
    new Promise((resolve, reject) =>
      fs.write(fd, buffer, 0, buffer.length, position, (e, n) => (e ? reject(e) : resolve(n))),
    ),
  freeBytes: (dir) => {
    const st = fs.statfsSync(dir);
    return st.bavail * st.bsize;
  },
};

/** JournalIo.write, or writevSync a turn of the event loop later where a test's io has none. */
function asyncWriteOf(io: JournalIo): (fd: number, buffer: Buffer, position: number) => Promise<number> {
  if (io.write !== undefined) return io.write.bind(io);
  return (fd, buffer, position) =>
    new Promise((resolve, reject) =>
      setImmediate(() => {
        try {
          resolve(io.writevSync(fd, [buffer], position));
        } catch (e) {
          reject(e as Error);
        }
      }),
    );
}

export interface JournalOptions {
  readonly dir: string;
  /** Bytes of live segment files, at most (>= 2 * segmentBytes). */
  readonly bytesMax: number;
  /** Bytes per segment file (default 64 MiB; >= the largest record). */
  readonly segmentBytes?: number;
  readonly log?: LogFn;
  /**
   * Lower limits, for tests: small records, and the run size from which appends go direct
   * (directRunBytesMin, default DIRECT_RUN_BYTES_MIN).
   */
  readonly limits?: { readonly recordPayloadBytesMax?: number; readonly directRunBytesMin?: number };
  /** Large appends with O_DIRECT where the file system allows it (default true; direct-io.ts). */
  readonly directIo?: boolean;
  /** Fault injection for tests. */
  readonly io?: JournalIo;
  /**
   * This boot of the machine (default: the Linux boot id, durable-point.ts). Tests give another
   * one to stand for a restart of the machine, as after a power loss.
   */
  readonly bootId?: string;
}

export interface JournalUsage {
  readonly usedBytes: number;
  readonly bytesMax: number;
  readonly segments: number;
  /** Retained (unreleased) records. */
  readonly records: number;
}

export interface JournalRecord {
  readonly header: RecordHeader;
  readonly payload: Buffer;
}

interface Segment {
  readonly no: number;
  readonly file: string;
  /** Bytes of whole records: where the next append goes. */
  size: number;
  /** Open while the segment is active or has unsynced writes; else null (reads open their own). */
  fd: number | null;
  /** Per group, the highest seq in this segment. */
  readonly maxSeq: Map<string, number>;
  /** A reused file: bytes past `size` are stale records of its previous life, not zeroes. */
  recycled: boolean;
}

/**
 * A record to append. `encoded`, when given, is its exact encoding, checksum verified (as a target
 * received it over a link): written as it is instead of being encoded and checksummed again.
 */
export interface JournalInput {
  readonly header: RecordHeader;
  readonly payload?: Buffer | undefined;
  readonly encoded?: Buffer | undefined;
}

/**
 * The writes of one appended batch, with what they need of the journal as it was when the batch
 * was placed: a batch queued behind another is written after later batches were placed.
 */
interface BatchWrite {
  readonly planned: PlannedRecord[];
  /** Every segment the batch writes to (its records, the end mark of the one it leaves). */
  readonly fds: Map<number, number>;
  /** The active segment before the batch, and where its records ended. */
  readonly activeNo: number | undefined;
  readonly activeEnd: number;
  /** Segments that are reused files (their stale tail is zeroed when the batch leaves them). */
  readonly recycled: ReadonlySet<number>;
  /** Segments created as sparse files: their large runs go direct. */
  readonly sparse: ReadonlySet<number>;
}

/** True when every record of `seg` is at or below `released(group)` for its group. */
function releasedUnder(seg: Segment, released: (group: string) => number): boolean {
  for (const [group, maxSeq] of seg.maxSeq) if (maxSeq > released(group)) return false;
  return true;
}

/** A batch appended whose bytes are not all written yet (Journal.unwritten). */
interface UnwrittenBatch {
  /** Its append generation. */
  readonly gen: number;
  /** The lowest segment number it may write to: the active one when it was placed. */
  readonly floor: number;
  /** Per group, the seq of its first record of the group. */
  readonly firstSeq: ReadonlyMap<string, number>;
}

interface PlannedRecord {
  readonly header: RecordHeader;
  /** Written first: the encoded header and names, or the whole encoding given (then no payload). */
  readonly head: Buffer;
  /** head is the encoding the caller gave (JournalInput.encoded). */
  readonly given: boolean;
  readonly payload: Buffer | undefined;
  readonly bytes: number;
  segNo: number;
  offset: number;
}

export class Journal {
  readonly dir: string;
  readonly bytesMax: number;
  readonly segmentBytes: number;
  readonly recordPayloadBytesMax: number;
  private readonly directRunBytesMin: number;
  private readonly log: LogFn;
  private readonly io: JournalIo;
  private readonly writeAsync: (fd: number, buffer: Buffer, position: number) => Promise<number>;
  private readonly bootId: string;

  /** Live segments in ascending order; the last one is the active segment. */
  private readonly segments = new Map<number, Segment>();
  /** Released segment files kept for reuse (free-N.log), by N. */
  private readonly free: number[] = [];
  /** Free files known to hold only zeroes (prepared spares, not recycled segments). */
  private readonly zeroFree = new Set<number>();
  private preparing: Promise<void> | null = null;
  private nextPrepNo = PREPARED_NO_BASE;
  private rateWindowStartMs = 0;
  private rateWindowBytes = 0;
  private lastWindowBytes = 0;
  private active: Segment | null = null;
  private nextSegNo = 1;
  private usedBytes = 0;
  private retainedRecords = 0;
  private readonly groups = new Map<string, GroupIndex>();
  private lastOrdinalValue = 0;
  private lastWriteTimeUsValue = 0;

  // Group commit.
  private appendGen = 0;
  private syncedGen = 0;
  private readonly dirtySegments = new Set<Segment>();
  private dirDirty = false;
  private inFlight: { gen: number; promise: Promise<void>; segments: Set<Segment> } | null = null;
  private nextRound: Deferred | null = null;
  private rounds = 0;
  private fdatasyncs = 0;
  /** Where every record byte before is durable, on disk for recovery (durable-point.ts). */
  private durablePoint: DurablePointFile | null = null;

  // Writes in order (append): while a batch's direct write runs on the thread pool, the batches
  // after it wait for it, so the files always hold a prefix of what was appended.
  /** Settles when the last batch queued is written; null when every batch is. Never rejects. */
  private writing: Promise<void> | null = null;
  /**
   * The batches not written yet, oldest first. After a failed write they stay: their records are
   * never written (readRetained stays short of them, whenWritten rejects).
   */
  private readonly unwritten: UnwrittenBatch[] = [];
  /** deleteReleasedSegmentsSync kept a segment for a batch being written: run it again after. */
  private deletionWaits = false;
  private writtenWaiters: { gen: number; d: Deferred }[] = [];

  // State file and segment deletion.
  private persistedReleased = new Map<string, number>();
  /** The segments the state file on disk lists as live (null: a file from before the list). */
  private persistedLive: ReadonlySet<number> | null = null;
  /** deleteReleasedSegmentsSync kept a released segment the state file lists: write it again. */
  private listedKept = false;
  private stateDirty = false;
  /** Write the state file even if no segment can go (resumeGroup, close). */
  private stateForced = false;
  private maintenance: Promise<void> | null = null;
  private maintainAgain = false;

  private failed: Error | null = null;
  /** close() has begun: no append follows (the last state file need not list the active segment). */
  private closing = false;
  private closed = false;

  // Direct I/O (direct-io.ts): probed at the first large run; null when not used.
  private staging: DirectStaging | null | undefined = undefined;
  /**
   * Segments created as new sparse files: only their large runs go direct. A recycled or prepared
   * file was last written through the page cache, which likely still holds its pages, and
   * rewriting cached pages costs less than a direct write: with replication on (segments recycled
   * as the target reports), fio seq1m made 237 MB/s buffered and 180 MB/s with every large run
   * direct. Where the journal grows into new files (nothing released), direct I/O wins.
   */
  private readonly sparseSegments = new Set<number>();
  private directBytes = 0;
  /** The last roomForDirect said no (logged once until it says yes again). */
  private nearlyFull = false;
  /** The O_DIRECT fd of the segment the last direct run went to. */
  private directFd: { no: number; fd: number } | null = null;
  /** The partial last block of the last direct run: the next run starts by rewriting it. */
  private directTail: { no: number; end: number; bytes: Buffer } | null = null;

  // Used during recovery only (onRecovered).
  private recoveredAny = false;
  private recoveredOrdinal = 0;
  private readonly recoveredSeq = new Map<string, number>();
  private readonly recoveringSegments = new Map<number, Map<string, number>>();

  private constructor(opts: JournalOptions) {
    this.dir = opts.dir;
    this.bytesMax = opts.bytesMax;
    this.segmentBytes = opts.segmentBytes ?? SEGMENT_BYTES_DEFAULT;
    this.recordPayloadBytesMax = opts.limits?.recordPayloadBytesMax ?? RECORD_PAYLOAD_BYTES_MAX;
    this.directRunBytesMin = opts.limits?.directRunBytesMin ?? DIRECT_RUN_BYTES_MIN;
    if (opts.directIo === false) this.staging = null;
    this.log = opts.log ?? (() => {});
    this.io = opts.io ?? realIo;
    this.writeAsync = asyncWriteOf(this.io);
    this.bootId = opts.bootId ?? currentBootId();
    const recordBytesMax = RECORD_HEADER_AND_NAMES_BYTES_MAX + this.recordPayloadBytesMax;
    assert(
      Number.isSafeInteger(this.recordPayloadBytesMax) &&
        this.recordPayloadBytesMax >= 1 &&
        this.recordPayloadBytesMax <= RECORD_PAYLOAD_BYTES_MAX,
      `recordPayloadBytesMax ${this.recordPayloadBytesMax} must be in [1, ${RECORD_PAYLOAD_BYTES_MAX}]`,
    );
    assert(
      Number.isSafeInteger(this.segmentBytes) && this.segmentBytes >= recordBytesMax + SEGMENT_END_BYTES,
      `segmentBytes ${this.segmentBytes} must hold the largest record and an end mark ` +
        `(${recordBytesMax + SEGMENT_END_BYTES} bytes)`,
    );
    assert(
      this.segmentBytes <= SEGMENT_BYTES_MAX,
      `segmentBytes ${this.segmentBytes} > ${SEGMENT_BYTES_MAX}`,
    );
    assert(
      Number.isSafeInteger(this.bytesMax) && this.bytesMax >= 2 * this.segmentBytes,
      `bytesMax ${this.bytesMax} must be at least 2 * segmentBytes (${2 * this.segmentBytes})`,
    );
  }

  /** Opens (creating `dir` if needed) and recovers the journal; see journal-recovery.ts. */
  static async open(opts: JournalOptions): Promise<Journal> {
    const j = new Journal(opts);
    try {
      j.openSync();
    } catch (e) {
      j.closeFds();
      j.durablePoint?.closeSync();
      throw e;
    }
    // A spare, zero-filled segment before the first append: FLUSH-heavy hosts then never pay for
    // block allocation in an fdatasync. Failing to make one is not fatal: appends allocate instead.
    j.maybePrepareSpare();
    await j.preparing;
    await j.whenIdle();
    return j;
  }

  private openSync(): void {
    const created = fs.mkdirSync(this.dir, { recursive: true });
    if (created !== undefined) fsyncDirSync(path.dirname(path.resolve(created)));
    const state = readStateSync(this.dir);
    const nos = listSegments(this.dir);
    const point = readDurablePointSync(this.dir);
    // Before anything in the directory changes.
    checkSegmentsPresent(this.dir, nos, state.segments, point.state === 'ok' ? point.point.segNo : 0);
    fs.rmSync(path.join(this.dir, STATE_TMP_FILE_NAME), { force: true });
    this.loadState(state);
    this.removePreparationLeftovers();
    this.free.push(...listFreeSegments(this.dir));
    for (const n of this.free) this.nextPrepNo = Math.max(this.nextPrepNo, n + 1);
    if (point.state === 'unreadable') {
      this.log('warn', 'journal: the durable point file is unreadable; recovery refuses any hole', {
        dir: this.dir,
      });
    }
    const result = recoverSegments(
      this.dir,
      nos,
      (h, segNo, offset, bytes) => this.onRecovered(h, segNo, offset, bytes),
      this.log,
      point.state === 'ok'
        ? { ...point, sameBoot: point.bootId !== '' && point.bootId === this.bootId }
        : nos.length === 0
          ? { point: POSITION_ZERO, markedFromSegNo: 0, sameBoot: false }
          : null,
    );
    // Segment numbers only grow, even when every segment file is gone: the durable point and the
    // state file name one.
    const lastNo = Math.max(
      nos.length > 0 ? nos[nos.length - 1]! : 0,
      point.state === 'ok' ? point.point.segNo : 0,
      (state.segments?.next ?? 1) - 1,
    );
    this.nextSegNo = lastNo + 1;
    // A journal from before the durable point: its segments left behind have no end mark; the one
    // still active gets one when the journal moves on from it.
    const markedFrom = result.segments[result.segments.length - 1]?.no ?? this.nextSegNo;
    this.durablePoint = DurablePointFile.openSync(this.dir, point, markedFrom, this.bootId, (e) =>
      this.log('error', 'journal: cannot write the durable point; it stops moving', {
        dir: this.dir,
        error: String(e),
      }),
    );
    this.adoptSegments(result.segments);
    const deleted = this.deleteReleasedSegmentsSync();
    if (result.droppedBytes > 0 || deleted > 0) fsyncDirSync(this.dir);
    // A state file listing what is there now before any append: the durable point may pass a
    // segment recovery dropped, appends go on into an active segment a close did not list, and a
    // file from before the list, or listing a segment that can go, is replaced.
    const activeListed = this.active === null || this.persistedLive?.has(this.active.no) === true;
    if (result.segments.length < nos.length || !activeListed || this.listedKept) {
      this.stateDirty = true;
      this.stateForced = true;
      this.scheduleMaintenance();
    }
    this.log('info', 'journal opened', {
      dir: this.dir,
      segments: this.segments.size,
      records: this.retainedRecords,
      usedBytes: this.usedBytes,
      lastOrdinal: this.lastOrdinalValue,
    });
  }

  private loadState(state: JournalState): void {
    this.lastOrdinalValue = state.ordinalMax;
    this.lastWriteTimeUsValue = state.writeTimeUsMax;
    for (const [name, released] of state.releasedSeq) {
      const g = this.group(name);
      g.releasedSeq = released;
      g.lastSeq = released;
      this.persistedReleased.set(name, released);
    }
    for (const [name, m] of state.lastMarker) this.group(name).lastMarker = m;
    this.persistedLive = state.segments === null ? null : new Set(state.segments.live);
  }

  private group(name: string): GroupIndex {
    let g = this.groups.get(name);
    if (g === undefined) {
      g = new GroupIndex();
      this.groups.set(name, g);
    }
    return g;
  }

  /** Checks one recovered record against the sequence rules and indexes it. */
  private onRecovered(h: RecordHeader, segNo: number, offset: number, bytes: number): void {
    const where = `${path.join(this.dir, segmentFileName(segNo))} at byte offset ${offset}`;
    const refuse = (why: string): never => {
      throw new RemcopyError('RC_ERR_JOURNAL_CORRUPT', `${where}: ${why}; refusing to open the journal`);
    };
    if (h.kind === RecordKind.tick) refuse('a tick record (ticks are never journalled)');
    if (this.recoveredAny && h.ordinal <= this.recoveredOrdinal) {
      refuse(`ordinal ${h.ordinal} does not follow the previous record's ${this.recoveredOrdinal}`);
    }
    this.recoveredAny = true;
    this.recoveredOrdinal = h.ordinal;
    const g = this.group(h.group);
    const seenSeq = this.recoveredSeq.get(h.group) ?? 0;
    if (h.seq <= seenSeq) refuse(`group ${h.group}: seq ${h.seq} does not follow seq ${seenSeq}`);
    this.recoveredSeq.set(h.group, h.seq);
    if (h.seq > g.releasedSeq) {
      const expected = g.retained > 0 ? g.lastSeq + 1 : g.releasedSeq + 1;
      if (h.seq !== expected) refuse(`group ${h.group}: seq ${h.seq} where ${expected} was expected (a gap)`);
      g.push(segNo, offset, bytes);
      this.retainedRecords++;
    }
    g.lastSeq = Math.max(g.lastSeq, h.seq);
    if (h.kind === RecordKind.marker) g.lastMarker = Math.max(g.lastMarker, h.markerNo);
    this.lastOrdinalValue = Math.max(this.lastOrdinalValue, h.ordinal);
    this.lastWriteTimeUsValue = Math.max(this.lastWriteTimeUsValue, h.writeTimeUs);
    let seg = this.recoveringSegments.get(segNo);
    if (seg === undefined) {
      seg = new Map();
      this.recoveringSegments.set(segNo, seg);
    }
    seg.set(h.group, h.seq);
  }

  private adoptSegments(recovered: readonly RecoveredSegment[]): void {
    for (const r of recovered) {
      const seg: Segment = {
        no: r.no,
        file: path.join(this.dir, segmentFileName(r.no)),
        size: r.size,
        fd: null,
        maxSeq: this.recoveringSegments.get(r.no) ?? new Map(),
        recycled: false,
      };
      this.segments.set(r.no, seg);
    }
    this.recoveringSegments.clear();
    const last = recovered[recovered.length - 1];
    this.usedBytes = last === undefined ? 0 : (recovered.length - 1) * this.segmentBytes + last.size;
    if (last !== undefined) {
      this.active = this.segments.get(last.no)!;
      this.active.fd = this.openFd(this.active.file, 'r+');
      if (fs.fstatSync(this.active.fd).size < this.segmentBytes)
        fs.ftruncateSync(this.active.fd, this.segmentBytes);
    }
  }

  private openFd(file: string, flags: string): number {
    try {
      return fs.openSync(file, flags);
    } catch (e) {
      throw ioError(`cannot open ${file}`, e);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Append

  /**
   * Appends `records` in order; synchronous: they are in the page cache when this returns (not
   * durable until sync()). Returns each record's encoded header and names (checksum set), which a
   * source ships as they are; undefined for a record given encoded (its caller has it). Throws
   * RC_ERR_JOURNAL_FULL, having written nothing, when the batch does not fit in bytesMax;
   * RC_ERR_JOURNAL_IO, having written nothing that recovery would load, on a write error.
   */
  append(records: ReadonlyArray<JournalInput>): (Buffer | undefined)[] {
    assert(!this.closed, 'append on a closed journal');
    if (this.failed) throw ioError('journal failed earlier', this.failed);
    if (records.length === 0) return [];
    const planned = this.encodeBatch(records);
    let total = 0;
    for (const p of planned) total += p.bytes;
    const created = this.placeBatch(planned);
    const usedAfter = this.usedBytesAfter(planned, created.length);
    if (usedAfter > this.bytesMax) {
      throw new RemcopyError(
        'RC_ERR_JOURNAL_FULL',
        `${this.dir}: ${records.length} record(s) of ${total} bytes do not fit ` +
          `(${this.usedBytes} of ${this.bytesMax} bytes used)`,
      );
    }
    const recycledNos = new Set<number>();
    const floor = this.active?.no ?? created[0]!;
    const { fds, written } = this.writeBatch(planned, created, recycledNos);
    // Before commitBatch: the segment deletion it may run takes its segments off this.
    this.usedBytes = usedAfter;
    this.commitBatch(planned, fds, recycledNos);
    if (written !== undefined) this.trackWriting(planned, floor, written);
    return planned.map((p) => (p.given ? undefined : p.head));
  }

  /**
   * Resolves once the bytes of every batch appended up to generation `gen` (default: all so far)
   * are written to their segment files, as a volume write of their records needs (durable only
   * after sync()); undefined when they are already. Rejects when a write failed first.
   */
  whenWritten(gen = this.appendGen): Promise<void> | undefined {
    if (gen <= this.writtenGen()) return undefined;
    if (this.failed) return Promise.reject(ioError('journal failed earlier', this.failed));
    const d = deferred();
    this.writtenWaiters.push({ gen, d });
    return d.promise;
  }

  /** The append generation up to which every batch is written. */
  private writtenGen(): number {
    const oldest = this.unwritten[0];
    return oldest === undefined ? this.appendGen : oldest.gen - 1;
  }

  /** The first seq of `group` whose bytes are not written yet, if any. */
  private unwrittenFrom(group: string): number | undefined {
    for (const b of this.unwritten) {
      const s = b.firstSeq.get(group);
      if (s !== undefined) return s;
    }
    return undefined;
  }

  /** The batch just committed is being written (`written`): track it until it is. */
  private trackWriting(planned: PlannedRecord[], floor: number, written: Promise<void>): void {
    const gen = this.appendGen;
    const firstSeq = new Map<string, number>();
    for (const p of planned) if (!firstSeq.has(p.header.group)) firstSeq.set(p.header.group, p.header.seq);
    this.unwritten.push({ gen, floor, firstSeq });
    const tail: Promise<void> = written.then(
      () => {
        // Batches are written in order, and none after a failed one.
        assert(this.unwritten[0]?.gen === gen, 'batches are written in append order');
        this.unwritten.shift();
        this.writeSettled(tail);
        this.wakeWritten();
      },
      (e: unknown) => {
        if (this.failed === null) {
          this.failed = e as Error;
          this.log('error', 'journal: a write failed; the journal is failed', {
            dir: this.dir,
            error: String(e),
          });
        }
        this.writeSettled(tail);
        this.wakeWritten();
      },
    );
    this.writing = tail;
  }

  private writeSettled(tail: Promise<void>): void {
    if (this.deletionWaits && !this.closed) {
      this.deletionWaits = false;
      this.scheduleMaintenance();
    }
    if (this.writing === tail) this.writing = null;
  }

  private wakeWritten(): void {
    const waiting = this.writtenWaiters;
    this.writtenWaiters = [];
    const writtenGen = this.writtenGen();
    for (const w of waiting) {
      if (w.gen <= writtenGen) w.d.resolve();
      else if (this.failed) w.d.reject(ioError('journal failed earlier', this.failed));
      else this.writtenWaiters.push(w);
    }
  }

  /**
   * Checks the sequence rules and encodes every header (checksum over header + payload), or takes
   * the record's encoding as given.
   */
  private encodeBatch(records: ReadonlyArray<JournalInput>): PlannedRecord[] {
    const planned: PlannedRecord[] = new Array(records.length);
    const batchSeq = new Map<string, number>();
    let lastOrdinal = this.lastOrdinalValue;
    for (let i = 0; i < records.length; i++) {
      const { header: h, payload, encoded } = records[i]!;
      assert(h.kind !== RecordKind.tick, 'tick records take no seq and are never journalled');
      const prev = batchSeq.get(h.group) ?? this.groups.get(h.group)?.lastSeq ?? 0;
      const payloadBytes = payload === undefined ? 0 : payload.length;
      // Messages are built only on failure: this is the hot path.
      if (h.seq !== prev + 1)
        assert(false, `group ${h.group}: ${recordKindName(h.kind)} seq ${h.seq} after ${prev}`);
      if (h.ordinal <= lastOrdinal) assert(false, `ordinal ${h.ordinal} after ${lastOrdinal}`);
      if (payloadBytes > this.recordPayloadBytesMax) {
        assert(false, `payload of ${payloadBytes} bytes exceeds the limit of ${this.recordPayloadBytesMax}`);
      }
      batchSeq.set(h.group, h.seq);
      lastOrdinal = h.ordinal;
      if (encoded !== undefined) {
        const bytes = encoded.length;
        if (!encodingFits(h, encoded, payloadBytes)) {
          assert(false, `group ${h.group} seq ${h.seq}: the encoding given is not this record's`);
        }
        // Written as one buffer: the payload is inside it.
        planned[i] = {
          header: h,
          head: encoded,
          given: true,
          payload: undefined,
          bytes,
          segNo: 0,
          offset: 0,
        };
        continue;
      }
      const head = encodeHeader(h, payloadBytes > 0 ? payload : undefined);
      const bytes = head.length + payloadBytes;
      planned[i] = {
        header: h,
        head,
        given: false,
        payload: payloadBytes > 0 ? payload : undefined,
        bytes,
        segNo: 0,
        offset: 0,
      };
    }
    return planned;
  }

  /** usedBytes once `planned` (placed, creating `created` segments) is appended. */
  private usedBytesAfter(planned: readonly PlannedRecord[], created: number): number {
    const last = planned[planned.length - 1]!;
    const lastEnd = last.offset + last.bytes;
    // Every segment left (the active one, all created but the last) takes a whole segment.
    const left = created === 0 ? 0 : (this.active === null ? 0 : 1) + created - 1;
    return this.usedBytes - (this.active?.size ?? 0) + left * this.segmentBytes + lastEnd;
  }

  /** Gives every record its segment and offset; returns the numbers of segments to create. */
  private placeBatch(planned: PlannedRecord[]): number[] {
    const created: number[] = [];
    let segNo = this.active?.no ?? -1;
    let pos = this.active?.size ?? this.segmentBytes;
    let nextNo = this.nextSegNo;
    for (const p of planned) {
      // Room is kept for the end mark the segment gets when the journal moves on from it.
      if (pos + p.bytes + SEGMENT_END_BYTES > this.segmentBytes) {
        segNo = nextNo++;
        created.push(segNo);
        pos = 0;
      }
      p.segNo = segNo;
      p.offset = pos;
      pos += p.bytes;
    }
    return created;
  }

  /**
   * Writes the planned records, one writev per run of at most 1024 buffers in one segment, a large
   * run into a new sparse segment with O_DIRECT on the thread pool. `written` is undefined when
   * every byte is written on return; else it settles when they are. A batch placed while an earlier
   * one is still being written waits for it, whole: the files always hold a prefix of the appends
   * (a kill -9 leaves no hole). What fails before the batch goes asynchronous is rolled back and
   * thrown (nothing appended); what fails after fails the journal (the rejection of `written`).
   */
  private writeBatch(
    planned: PlannedRecord[],
    created: readonly number[],
    recycledNos: Set<number>,
  ): { fds: Map<number, number>; written: Promise<void> | undefined } {
    const createdFds = new Map<number, number>();
    const oldSize = this.active?.size ?? 0;
    try {
      for (const no of created) createdFds.set(no, this.openNewSegment(no, recycledNos));
      const fds = new Map(createdFds);
      const recycled = new Set(recycledNos);
      if (this.active !== null) {
        fds.set(this.active.no, this.active.fd!);
        if (this.active.recycled) recycled.add(this.active.no);
      }
      const sparse = new Set<number>();
      for (const no of fds.keys()) if (this.sparseSegments.has(no)) sparse.add(no);
      const w: BatchWrite = { planned, fds, activeNo: this.active?.no, activeEnd: oldSize, recycled, sparse };
      const written =
        this.writing === null
          ? this.writeRuns(w, 0)
          : this.writing.then(() => {
              if (this.failed) throw ioError('journal failed earlier', this.failed);
              return this.writeRuns(w, 0);
            });
      return { fds: createdFds, written };
    } catch (e) {
      this.rollback(createdFds, oldSize, e);
      throw ioError(`append to ${this.dir} failed, nothing appended`, e);
    }
  }

  /**
   * The writes of a batch from planned[i] on, in order, synchronously until a direct write starts
   * (it throws what fails before that); the rest then follows that write, and the promise returned
   * settles when all is written.
   */
  private writeRuns(w: BatchWrite, i: number): Promise<void> | undefined {
    const { planned } = w;
    let previousNo = i === 0 ? w.activeNo : planned[i - 1]!.segNo;
    while (i < planned.length) {
      const first = planned[i]!;
      if (previousNo !== undefined && first.segNo !== previousNo) {
        // After its records: a direct run writes zeroes past its last record, to the block's end.
        this.endSegment(w, previousNo);
      }
      previousNo = first.segNo;
      const iov: Buffer[] = [];
      let j = i;
      for (; j < planned.length && planned[j]!.segNo === first.segNo; j++) {
        if (iov.length + 2 > WRITEV_BUFFERS_MAX) break;
        iov.push(planned[j]!.head);
        if (planned[j]!.payload !== undefined) iov.push(planned[j]!.payload!);
      }
      // Only a run into a new sparse segment is summed: the hot path into others skips it.
      const runBytes = w.sparse.has(first.segNo) ? bytesOf(iov) : 0;
      const fd = w.fds.get(first.segNo)!;
      const direct =
        runBytes > 0 && runBytes >= this.directRunBytesMin && this.roomForDirect(runBytes)
          ? this.writeDirect(first.segNo, fd, iov, runBytes, first.offset)
          : false;
      if (direct !== false) return direct.then(() => this.writeRuns(w, j));
      this.writeFully(fd, iov, first.offset);
      i = j;
    }
    if (this.directFd !== null && this.directFd.no !== previousNo) this.closeDirectFd();
    return undefined;
  }

  /**
   * Whether the file system has room for a direct run of `runBytes` and DIRECT_ROOM_MARGIN_BYTES
   * more. A statfs that fails says no (logged like a nearly full disk, with its error): the run is
   * written synchronously, as it can be undone.
   */
  private roomForDirect(runBytes: number): boolean {
    if (this.io.freeBytes === undefined) return true;
    let free: number | undefined;
    let error: string | undefined;
    try {
      free = this.io.freeBytes(this.dir);
    } catch (e) {
      error = String(e);
    }
    const room = free !== undefined && free >= runBytes + DIRECT_ROOM_MARGIN_BYTES;
    if (!room && !this.nearlyFull) {
      this.log('warn', 'journal: the file system is nearly full; large appends stay synchronous', {
        dir: this.dir,
        freeBytes: free,
        error,
      });
    }
    this.nearlyFull = !room;
    return room;
  }

  /**
   * A new segment file: a recycled one when the free pool has one (its blocks are allocated, so
   * appends overwrite instead of allocating: several times faster on ext4), else a new sparse file.
   * Either way it is segmentBytes long, so appends never change its size.
   */
  private openNewSegment(no: number, recycledNos: Set<number>): number {
    const file = path.join(this.dir, segmentFileName(no));
    const reuse = this.free.pop();
    if (reuse !== undefined) {
      fs.renameSync(path.join(this.dir, freeSegmentFileName(reuse)), file);
      const fd = fs.openSync(file, 'r+');
      if (fs.fstatSync(fd).size !== this.segmentBytes) fs.ftruncateSync(fd, this.segmentBytes);
      if (!this.zeroFree.delete(reuse)) recycledNos.add(no);
      return fd;
    }
    const fd = fs.openSync(file, 'wx+');
    fs.ftruncateSync(fd, this.segmentBytes);
    this.sparseSegments.add(no);
    return fd;
  }

  /**
   * Segment `no`, which this batch leaves behind, gets its end mark after its last record (recovery:
   * the records end there, none were lost), before anything is written to the next segment (so
   * that, with the page cache intact, a record in the next segment means the mark is there); a
   * recycled one then ends in zeroes, not in records of its previous life.
   */
  private endSegment(w: BatchWrite, no: number): void {
    let end = no === w.activeNo ? w.activeEnd : 0;
    for (const p of w.planned) if (p.segNo === no) end = p.offset + p.bytes;
    const fd = w.fds.get(no)!;
    this.writeFully(fd, [encodeSegmentEnd(no, end)], end);
    if (!w.recycled.has(no)) return;
    for (let at = end + SEGMENT_END_BYTES; at < this.segmentBytes; at += ZERO_WRITE_BYTES) {
      const n = Math.min(ZERO_WRITE_BYTES, this.segmentBytes - at);
      this.writeFully(fd, [ZEROES.subarray(0, n)], at);
    }
  }

  /** writev until every byte is written (a regular file may take a short write before ENOSPC). */
  private writeFully(fd: number, iov: Buffer[], position: number): void {
    let want = bytesOf(iov);
    let bufs = iov;
    while (want > 0) {
      const n = this.io.writevSync(fd, bufs, position);
      if (n <= 0) throw Object.assign(new Error('writev wrote nothing'), { code: 'EIO' });
      want -= n;
      position += n;
      if (want > 0) bufs = skipBytes(bufs, n);
    }
  }

  /**
   * Writes the run `iov` (`runBytes` long) at `offset` of segment `no` with O_DIRECT, on the thread
   * pool: the blocks from the one holding `offset` (its bytes before `offset` rewritten as they
   * are) to the one holding the run's end (its bytes after the end written as zeroes: past the
   * records a segment holds zeroes or stale records, and recovery stops at either). Returns false,
   * having written nothing, when direct I/O is not available here (the caller writes buffered
   * then); else the promise settles when the run is written. The staging buffer is the journal's
   * one: batches are written one at a time.
   */
  private writeDirect(
    no: number,
    fd: number,
    iov: readonly Buffer[],
    runBytes: number,
    offset: number,
  ): false | Promise<void> {
    const st = this.directStaging();
    if (st === null) return false;
    const dfd = this.directFdOf(no);
    if (dfd === null) return false;
    return this.writeDirectRun(st.buf, no, dfd, fd, iov, runBytes, offset);
  }

  private async writeDirectRun(
    buf: Buffer,
    no: number,
    dfd: number,
    fd: number,
    iov: readonly Buffer[],
    runBytes: number,
    offset: number,
  ): Promise<void> {
    let at = alignDown(offset);
    let pos = offset - at;
    if (pos > 0) this.loadHead(no, fd, at, pos, buf);
    for (const b of iov) {
      for (let from = 0; from < b.length;) {
        const n = Math.min(b.length - from, buf.length - pos);
        b.copy(buf, pos, from, from + n);
        pos += n;
        from += n;
        if (pos < buf.length) continue;
        await this.writeDirectFully(dfd, fd, buf.subarray(0, pos), at);
        at += pos;
        pos = 0;
        if (this.staging === null) {
          // Direct I/O was given up on this piece (giveUpDirect): the rest of the run goes buffered.
          this.writeFully(fd, skipBytes(iov, at - offset), at);
          return;
        }
      }
    }
    this.directTail = null;
    if (pos > 0) {
      const end = alignUp(pos);
      buf.fill(0, pos, end);
      await this.writeDirectFully(dfd, fd, buf.subarray(0, end), at);
      if (pos % DIRECT_ALIGN !== 0) {
        this.directTail = { no, end: at + pos, bytes: Buffer.from(buf.subarray(alignDown(pos), pos)) };
      }
    }
    this.directBytes += runBytes;
  }

  /** The staging buffer, probed for at the first use; null when direct I/O is not used. */
  private directStaging(): DirectStaging | null {
    if (this.staging !== undefined) return this.staging;
    try {
      const { staging, reason } = DirectStaging.open(this.dir);
      this.staging = staging;
      if (staging === null) this.log('info', 'journal: appends stay buffered', { dir: this.dir, reason });
    } catch (e) {
      this.staging = null;
      this.log('warn', 'journal: O_DIRECT probe failed; appends stay buffered', {
        dir: this.dir,
        error: String(e),
      });
    }
    return this.staging;
  }

  private directFdOf(no: number): number | null {
    if (this.directFd?.no === no) return this.directFd.fd;
    this.closeDirectFd();
    const fd = openDirect(path.join(this.dir, segmentFileName(no)));
    if (fd === null) return null;
    this.directFd = { no, fd };
    return fd;
  }

  private closeDirectFd(): void {
    if (this.directFd === null) return;
    fs.closeSync(this.directFd.fd);
    this.directFd = null;
  }

  /** Puts the `len` bytes of segment `no` at `at` (records already written) at the start of `buf`. */
  private loadHead(no: number, fd: number, at: number, len: number, buf: Buffer): void {
    const t = this.directTail;
    if (t !== null && t.no === no && t.end === at + len) {
      t.bytes.copy(buf, 0);
      return;
    }
    for (let done = 0; done < len;) {
      const n = fs.readSync(fd, buf, done, len - done, at + done);
      if (n === 0)
        throw Object.assign(new Error(`segment ${no} ends before byte ${at + len}`), { code: 'EIO' });
      done += n;
    }
  }

  /**
   * One aligned piece of a direct run. What a short write leaves off alignment is finished
   * buffered, and later runs still go direct; a direct write the kernel calls misaligned (EINVAL)
   * is finished buffered too, and direct I/O is then given up for good.
   */
  private async writeDirectFully(dfd: number, fd: number, piece: Buffer, position: number): Promise<void> {
    let done = 0;
    while (done < piece.length) {
      let n: number;
      try {
        n = await this.writeAsync(dfd, piece.subarray(done), position + done);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw e;
        this.giveUpDirect(e);
        break;
      }
      if (n <= 0) throw Object.assign(new Error('direct write wrote nothing'), { code: 'EIO' });
      done += n;
      if (done < piece.length && done % DIRECT_ALIGN !== 0) break;
    }
    if (done < piece.length) this.writeFully(fd, [piece.subarray(done)], position + done);
  }

  private giveUpDirect(cause: unknown): void {
    this.log('warn', 'journal: a direct write was refused; appends stay buffered', {
      dir: this.dir,
      error: String(cause),
    });
    this.staging = null;
    this.directTail = null;
  }

  /** Undo a failed batch: truncate the active segment back, remove the segments it created. */
  private rollback(createdFds: Map<number, number>, oldSize: number, cause: unknown): void {
    // With earlier batches still being written, this one failed before writing anything (it
    // could not open a segment): their direct fd, tail and bytes stay as they are.
    const idle = this.writing === null;
    if (idle) this.directTail = null;
    try {
      if (idle) this.closeDirectFd();
      if (this.active !== null && idle) {
        // Zero what the failed batch wrote, keeping the segment preallocated.
        fs.ftruncateSync(this.active.fd!, oldSize);
        fs.ftruncateSync(this.active.fd!, this.segmentBytes);
      }
      for (const [no, fd] of createdFds) {
        this.sparseSegments.delete(no);
        fs.closeSync(fd);
        fs.unlinkSync(path.join(this.dir, segmentFileName(no)));
      }
    } catch (e) {
      // Bytes of the failed batch may stay on disk: refuse everything from now on.
      this.failed = e as Error;
      this.log('error', 'journal: cannot undo a failed append; the journal is failed', {
        dir: this.dir,
        cause: String(cause),
        error: String(e),
      });
    }
  }

  /** The batch is written: update segments, indexes and counters. */
  private commitBatch(
    planned: PlannedRecord[],
    createdFds: Map<number, number>,
    recycledNos: Set<number>,
  ): void {
    const previousActive = this.active;
    for (const [no, fd] of createdFds) {
      const seg: Segment = {
        no,
        file: path.join(this.dir, segmentFileName(no)),
        size: 0,
        fd,
        maxSeq: new Map(),
        recycled: recycledNos.has(no),
      };
      this.segments.set(no, seg);
      this.active = seg;
      this.nextSegNo = no + 1;
      this.dirDirty = true;
    }
    for (const p of planned) {
      const seg = this.segments.get(p.segNo)!;
      this.dirtySegments.add(seg);
      assert(seg.size === p.offset, 'records are appended at the end of their segment');
      seg.size += p.bytes;
      seg.maxSeq.set(p.header.group, p.header.seq);
      const g = this.group(p.header.group);
      g.push(p.segNo, p.offset, p.bytes);
      g.lastSeq = p.header.seq;
      if (p.header.kind === RecordKind.marker) g.lastMarker = Math.max(g.lastMarker, p.header.markerNo);
      this.lastOrdinalValue = p.header.ordinal;
      this.lastWriteTimeUsValue = Math.max(this.lastWriteTimeUsValue, p.header.writeTimeUs);
    }
    this.retainedRecords += planned.length;
    this.appendGen++;
    let batchBytes = 0;
    for (const p of planned) batchBytes += p.bytes;
    this.countAppended(batchBytes);
    if (createdFds.size > 0) this.maybePrepareSpare();
    for (const no of this.sparseSegments) if (no !== this.active?.no) this.sparseSegments.delete(no);
    if (previousActive !== null && previousActive !== this.active) {
      // Its end mark (endSegment) is durable with the next round, like its records.
      this.dirtySegments.add(previousActive);
      this.scheduleMaintenance();
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Sync (group commit)

  /** Sync rounds completed: each fdatasyncs every dirty segment once (for tests and metrics). */
  get syncCount(): number {
    return this.rounds;
  }

  /** Bytes of records appended with O_DIRECT (direct-io.ts). */
  get directBytesWritten(): number {
    return this.directBytes;
  }

  /** Grows with every append; a record appended when it became g is durable once syncedGeneration >= g. */
  get appendGeneration(): number {
    return this.appendGen;
  }

  /** The append generation the last completed sync round covers. */
  get syncedGeneration(): number {
    return this.syncedGen;
  }

  /** fdatasync calls made on segment files (more than syncCount when a round spans segments). */
  get fdatasyncCount(): number {
    return this.fdatasyncs;
  }

  /**
   * Resolves once everything appended before the call is durable (fdatasync, and the directory
   * fsynced when a segment was created). One round runs at a time; callers arriving during a round
   * that does not cover them share the next one. Rejects with RC_ERR_JOURNAL_IO; after a failed
   * fdatasync the journal refuses all further work (the kernel may have dropped the dirty pages).
   */
  sync(): Promise<void> {
    if (this.failed) return Promise.reject(ioError('journal failed earlier', this.failed));
    const gen = this.appendGen;
    if (gen <= this.syncedGen) return Promise.resolve();
    if (this.inFlight !== null) {
      if (this.inFlight.gen >= gen) return this.inFlight.promise;
      this.nextRound ??= deferred();
      return this.nextRound.promise;
    }
    return this.startRound();
  }

  private startRound(): Promise<void> {
    const gen = this.appendGen;
    const segments = new Set(this.dirtySegments);
    this.dirtySegments.clear();
    const dir = this.dirDirty;
    this.dirDirty = false;
    // Every byte appended so far lies before the end of the active segment, in a segment this
    // round (or an earlier one) syncs.
    const upto: JournalPosition =
      this.active === null ? POSITION_ZERO : { segNo: this.active.no, offset: this.active.size };
    const promise = this.runRound(gen, segments, dir, upto);
    this.inFlight = { gen, promise, segments };
    return promise;
  }

  private async runRound(
    gen: number,
    segments: Set<Segment>,
    dir: boolean,
    upto: JournalPosition,
  ): Promise<void> {
    try {
      // The round covers the batches appended so far: their bytes must be in the files first.
      await this.whenWritten(gen);
      await Promise.all(
        [...segments].map(async (s) => {
          await this.io.fdatasync(s.fd!);
          this.fdatasyncs++;
        }),
      );
      if (dir) await fsyncDir(this.dir);
      this.rounds++;
      this.syncedGen = Math.max(this.syncedGen, gen);
      this.durablePoint?.advance(upto);
    } catch (e) {
      this.failed ??= e as Error;
      this.log('error', 'journal: sync failed; the journal is failed', { dir: this.dir, error: String(e) });
      throw ioError(`sync of ${this.dir} failed`, e);
    } finally {
      this.inFlight = null;
      this.closeSyncedFds(segments);
      this.startNextRound();
    }
  }

  private startNextRound(): void {
    const next = this.nextRound;
    if (next === null) return;
    this.nextRound = null;
    if (this.failed) {
      next.reject(ioError('journal failed earlier', this.failed));
      return;
    }
    if (this.appendGen <= this.syncedGen) {
      next.resolve();
      return;
    }
    this.startRound().then(next.resolve, next.reject);
  }

  /** A segment that is neither active nor dirty needs no fd; deletions may be waiting for it. */
  private closeSyncedFds(segments: Set<Segment>): void {
    let closedAny = false;
    for (const s of segments) {
      if (s === this.active || this.dirtySegments.has(s) || s.fd === null) continue;
      fs.closeSync(s.fd);
      s.fd = null;
      closedAny = true;
    }
    if (closedAny) this.scheduleMaintenance();
  }

  // ---------------------------------------------------------------------------------------------
  // Release, state file, segment deletion

  /**
   * Records of `group` with seq <= uptoSeq are no longer needed. Segments holding only released
   * records are deleted in the background, after the state file records the release.
   */
  release(group: string, uptoSeq: Seq): void {
    assert(!this.closed, 'release on a closed journal');
    const g = this.groups.get(group);
    assert(
      g !== undefined && uptoSeq <= g.lastSeq,
      `release of ${group} up to ${uptoSeq} beyond its last seq`,
    );
    if (uptoSeq <= g.releasedSeq) return;
    this.retainedRecords -= g.release(uptoSeq);
    this.stateDirty = true;
    this.scheduleMaintenance();
  }

  /**
   * Starts `group` after `afterSeq`: the next append of the group must have seq afterSeq + 1. For a
   * group the journal has never seen, or one with nothing retained whose sequence moves on (a group
   * whose sequence continues from another node: DESIGN.md §3.7 failback, §3.8 migration). Durable
   * when the promise resolves.
   */
  async resumeGroup(group: string, afterSeq: Seq): Promise<void> {
    assert(!this.closed, 'resumeGroup on a closed journal');
    const g = this.group(group);
    assert(g.retained === 0, `resumeGroup(${group}) on a group with records retained`);
    assert(
      Number.isSafeInteger(afterSeq) && afterSeq >= 1 && afterSeq >= g.lastSeq,
      `resumeGroup(${group}) seq ${afterSeq} (last ${g.lastSeq})`,
    );
    g.lastSeq = afterSeq;
    g.releasedSeq = afterSeq;
    await this.persistReleased(group, afterSeq);
  }

  /**
   * Releases every record of `group` and resolves once the state file says so: no redo after a
   * restart replays them (a group whose volumes are about to take another node's data: failback).
   */
  async releaseAll(group: string): Promise<void> {
    assert(!this.closed, 'releaseAll on a closed journal');
    const g = this.groups.get(group);
    if (g === undefined || g.lastSeq === 0) return;
    this.release(group, seq(g.lastSeq));
    await this.persistReleased(group, g.lastSeq);
  }

  private async persistReleased(group: string, upto: number): Promise<void> {
    this.stateDirty = true;
    this.stateForced = true;
    this.scheduleMaintenance();
    await this.whenIdle();
    if (this.persistedReleased.get(group) !== upto) {
      throw new RemcopyError(
        'RC_ERR_JOURNAL_IO',
        `${this.dir}: cannot persist the release of group ${group}`,
      );
    }
  }

  /** Resolves when the state file and segment deletions have caught up with every release. */
  async whenIdle(): Promise<void> {
    while (this.maintenance !== null) await this.maintenance;
  }

  private scheduleMaintenance(): void {
    if (this.maintenance !== null) {
      this.maintainAgain = true;
      return;
    }
    this.maintenance = this.maintain().finally(() => {
      this.maintenance = null;
      // Asked for again after the pass's last look at maintainAgain: another pass.
      if (this.maintainAgain && !this.closed) this.scheduleMaintenance();
    });
  }

  private async maintain(): Promise<void> {
    do {
      this.maintainAgain = false;
      // The state file is written only when it lets a segment go (or is asked for): releases
      // alone need no fsync, since replaying an already released record is harmless.
      let wrote = false;
      if (this.stateDirty && this.failed === null && (this.stateForced || this.anySegmentReleasable())) {
        this.stateDirty = false;
        this.stateForced = false;
        const snapshot = this.stateSnapshot();
        try {
          await writeState(this.dir, snapshot);
          wrote = true;
          this.persistedReleased = new Map(snapshot.releasedSeq);
          this.persistedLive = new Set(snapshot.segments?.live);
        } catch (e) {
          this.stateDirty = true;
          this.log('error', 'journal: cannot write the state file; segments are kept', {
            dir: this.dir,
            error: String(e),
          });
          return;
        }
      }
      this.deleteReleasedSegmentsSync();
      // A released segment the file on disk still lists goes after one more state file (a new one
      // does not list it: it is neither active nor holding unreleased records).
      if (this.listedKept && !wrote && this.failed === null) {
        this.stateDirty = true;
        this.maintainAgain = true;
      }
    } while (this.maintainAgain);
  }

  private stateSnapshot(): JournalState {
    const releasedSeq = new Map<string, number>();
    const lastMarker = new Map<string, number>();
    for (const [name, g] of this.groups) {
      if (g.releasedSeq > 0) releasedSeq.set(name, g.releasedSeq);
      if (g.lastMarker > 0) lastMarker.set(name, g.lastMarker);
    }
    // The active segment is listed even when released, as appends after this file go on into it;
    // not at close (open lists it again before any append: openSync).
    const live: number[] = [];
    for (const seg of this.segments.values()) {
      const appendable = seg === this.active && !this.closing;
      if (appendable || !releasedUnder(seg, (group) => releasedSeq.get(group) ?? 0)) live.push(seg.no);
    }
    return {
      ordinalMax: this.lastOrdinalValue,
      writeTimeUsMax: this.lastWriteTimeUsValue,
      releasedSeq,
      lastMarker,
      segments: { live: live.sort((a, b) => a - b), next: this.nextSegNo },
    };
  }

  /**
   * Deletes every non-active segment whose records are all released in the persisted state. Not one
   * that a batch being written may still write to (from the active segment when it was placed on):
   * the end of that batch's writes runs this again.
   */
  private deleteReleasedSegmentsSync(): number {
    let deleted = 0;
    this.listedKept = false;
    const floor = this.unwritten[0]?.floor ?? Number.POSITIVE_INFINITY;
    for (const seg of this.segments.values()) {
      if (seg === this.active || !this.releasedOnDisk(seg)) continue;
      if (seg.no >= floor) {
        this.deletionWaits = true;
        continue;
      }
      if (this.inFlight?.segments.has(seg)) continue; // its fd is in use; retried after the round
      if (this.persistedLive?.has(seg.no)) {
        // Open would miss it (checkSegmentsPresent): kept until a state file stops listing it.
        this.listedKept = true;
        continue;
      }
      try {
        if (seg.fd !== null) fs.closeSync(seg.fd);
        seg.fd = null;
        if (this.mayKeepFree()) {
          fs.renameSync(seg.file, path.join(this.dir, freeSegmentFileName(seg.no)));
          this.free.push(seg.no);
        } else fs.unlinkSync(seg.file);
      } catch (e) {
        this.log('warn', 'journal: cannot delete a released segment; retried later', {
          segment: seg.file,
          error: String(e),
        });
        continue;
      }
      this.dirtySegments.delete(seg);
      this.segments.delete(seg.no);
      this.usedBytes -= this.segmentBytes; // never the active one
      deleted++;
    }
    return deleted;
  }

  /** Keep a released segment for reuse while live and free files stay within bytesMax. */
  private mayKeepFree(): boolean {
    const files = this.segments.size + this.free.length; // the one being released counts in both
    return this.free.length < FREE_SEGMENTS_MAX && files * this.segmentBytes <= this.bytesMax;
  }

  /**
   * Prepare a zero-filled spare segment in the background when none is free, space allows, and
   * appends are slow: fast appenders are served by recycled segments, and zero-filling would
   * double their disk traffic.
   */
  private maybePrepareSpare(): void {
    if (this.preparing !== null || this.closed || this.failed !== null || this.free.length > 0) return;
    const files = this.segments.size + this.free.length + 1;
    if (files * this.segmentBytes > this.bytesMax) return;
    if (Math.max(this.rateWindowBytes, this.lastWindowBytes) > PREPARE_APPEND_BYTES_PER_S_MAX) return;
    const no = this.nextPrepNo++;
    this.preparing = this.prepareSpare(no)
      .catch((e) =>
        this.log('warn', 'journal: cannot prepare a spare segment', { dir: this.dir, error: String(e) }),
      )
      .finally(() => {
        this.preparing = null;
      });
  }

  private async prepareSpare(no: number): Promise<void> {
    const tmp = path.join(this.dir, `${PREPARING_PREFIX}${no}.tmp`);
    const fd = await fsp.open(tmp, 'wx');
    try {
      for (let at = 0; at < this.segmentBytes; at += ZERO_WRITE_BYTES) {
        await fd.write(ZEROES, 0, Math.min(ZERO_WRITE_BYTES, this.segmentBytes - at), at);
      }
      await fd.datasync();
    } finally {
      await fd.close();
    }
    if (this.closed) {
      await fsp.rm(tmp, { force: true });
      return;
    }
    await fsp.rename(tmp, path.join(this.dir, freeSegmentFileName(no)));
    await fsyncDir(this.dir);
    this.free.push(no);
    this.zeroFree.add(no);
  }

  private removePreparationLeftovers(): void {
    for (const name of fs.readdirSync(this.dir)) {
      if (name.startsWith(PREPARING_PREFIX) || name === DIRECT_PROBE_FILE_NAME) {
        fs.rmSync(path.join(this.dir, name), { force: true });
      }
    }
  }

  /** Bytes appended per second, over a one-second window: decides whether spares are prepared. */
  private countAppended(bytes: number): void {
    const now = performance.now();
    if (now - this.rateWindowStartMs >= 1000) {
      this.lastWindowBytes = now - this.rateWindowStartMs >= 2000 ? 0 : this.rateWindowBytes;
      this.rateWindowBytes = 0;
      this.rateWindowStartMs = now;
    }
    this.rateWindowBytes += bytes;
  }

  private releasedOnDisk(seg: Segment): boolean {
    return releasedUnder(seg, (group) => this.persistedReleased.get(group) ?? 0);
  }

  /** True when a non-active segment holds only records released in memory. */
  private anySegmentReleasable(): boolean {
    const inMemory = (group: string): number => this.groups.get(group)?.releasedSeq ?? 0;
    for (const seg of this.segments.values()) {
      if (seg !== this.active && releasedUnder(seg, inMemory)) return true;
    }
    return false;
  }

  // ---------------------------------------------------------------------------------------------
  // Queries and reads

  usage(): JournalUsage {
    return {
      usedBytes: this.usedBytes,
      bytesMax: this.bytesMax,
      segments: this.segments.size,
      records: this.retainedRecords,
    };
  }

  /** Highest seq ever appended to `group` (0 if none): the sequencer continues at +1. */
  lastSeq(group: string): Seq {
    return seq(this.groups.get(group)?.lastSeq ?? 0);
  }

  /** Bytes of `group`'s retained records (headers included), for lag figures. */
  retainedBytes(group: string): number {
    const g = this.groups.get(group);
    if (g === undefined) return 0;
    let n = 0;
    for (let i = g.head; i < g.bytes.length; i++) n += g.bytes[i]!;
    return n;
  }

  /**
   * A wall-clock time (ms since the epoch) no later than the append of `group`'s oldest retained
   * record: the birth time of the segment file holding it (its last change on a file system that
   * keeps no birth time). undefined when the group retains no record. Lag figures after a restart
   * count from it, as the records' own arrival is not kept.
   */
  retainedSinceMs(group: string): number | undefined {
    const released = this.releasedSeq(group);
    let oldest: Segment | undefined;
    for (const s of this.segments.values()) {
      if ((s.maxSeq.get(group) ?? 0) > released && (oldest === undefined || s.no < oldest.no)) oldest = s;
    }
    if (oldest === undefined) return undefined;
    const st = fs.statSync(oldest.file);
    return st.birthtimeMs > 0 ? st.birthtimeMs : Math.min(st.ctimeMs, st.mtimeMs);
  }

  /** Highest marker number ever appended to `group` (0 if none): a new marker names it. */
  lastMarker(group: string): number {
    return this.groups.get(group)?.lastMarker ?? 0;
  }

  /** Highest released seq of `group` (0 if none). */
  releasedSeq(group: string): Seq {
    return seq(this.groups.get(group)?.releasedSeq ?? 0);
  }

  /** Groups the journal knows (from records or the state file). */
  groupNames(): string[] {
    return [...this.groups.keys()];
  }

  lastOrdinal(): Ordinal {
    return ordinal(this.lastOrdinalValue);
  }

  lastWriteTimeUs(): TimeUs {
    return timeUs(this.lastWriteTimeUsValue);
  }

  /**
   * Every unreleased record, in append order, read from disk (checksums verified); records
   * appended to a segment after the iteration reached it are not included. Payloads are
   * views of read buffers of up to 4 MiB; copy them to keep many. Throws RC_ERR_JOURNAL_CORRUPT if
   * a record no longer reads back as written. Not while appends are being written (whenWritten).
   */
  *retained(): Generator<JournalRecord> {
    assert(!this.closed, 'retained on a closed journal');
    assert(this.writing === null, 'retained() while appends are being written: await whenWritten() first');
    for (const seg of [...this.segments.values()]) {
      if (!this.segments.has(seg.no)) continue;
      yield* this.readSegment(seg);
    }
  }

  private *readSegment(seg: Segment): Generator<JournalRecord> {
    const end = seg.size;
    const fd = this.openFd(seg.file, 'r');
    try {
      let pos = 0;
      while (pos < end) {
        const head = readAt(fd, seg.file, pos, Math.min(READ_CHUNK_BYTES, end - pos));
        const first = peekRecordBytes(head, 0);
        const buf = first > head.length ? readAt(fd, seg.file, pos, first) : head;
        let p = 0;
        while (p < buf.length) {
          const r = decodeRecord(buf, p);
          if (!r.ok && r.reason === 'short' && p > 0) break;
          if (!r.ok) throw readBackError(seg.file, pos + p, r.reason);
          const g = this.groups.get(r.header.group);
          if (g !== undefined && r.header.seq > g.releasedSeq) yield { header: r.header, payload: r.payload };
          p += r.bytes;
        }
        pos += p;
      }
    } finally {
      fs.closeSync(fd);
    }
  }

  /**
   * Retained records of `group` from seq `fromSeq` on, in seq order, of at most `maxBytes` bytes
   * of records in all (but at least one record when any is available). Empty when fromSeq is past
   * the last seq. Asserts that fromSeq is not released. Reads from disk (page cache, usually), so
   * only records whose bytes are written (whenWritten): a durable one always is.
   */
  readRetained(group: string, fromSeq: Seq, maxBytes: number): JournalRecord[] {
    assert(!this.closed, 'readRetained on a closed journal');
    const g = this.groups.get(group);
    if (g === undefined || fromSeq > g.lastSeq || g.retained === 0) return [];
    assert(fromSeq > g.releasedSeq, `readRetained(${group}, ${fromSeq}): released up to ${g.releasedSeq}`);
    assert(g.firstSeq === g.releasedSeq + 1, 'retained records start right after the released ones');
    const start = g.head + (fromSeq - g.firstSeq);
    const unwritten = this.unwrittenFrom(group);
    const limit = unwritten === undefined ? g.segNo.length : g.head + (unwritten - g.firstSeq);
    let end = start;
    let total = 0;
    while (end < limit && (end === start || total + g.bytes[end]! <= maxBytes)) {
      total += g.bytes[end]!;
      end++;
    }
    const out: JournalRecord[] = [];
    let i = start;
    while (i < end) {
      // One read for neighbours in the same segment while at most half the bytes read are other
      // groups' records (plus a small allowance).
      let j = i + 1;
      let useful = g.bytes[i]!;
      while (j < end && g.segNo[j] === g.segNo[i]) {
        const span = g.offset[j]! + g.bytes[j]! - g.offset[i]!;
        if (span > 2 * (useful + g.bytes[j]!) + READ_COALESCE_GAP_BYTES) break;
        useful += g.bytes[j]!;
        j++;
      }
      this.readRun(g, i, j, fromSeq + (i - start), group, out);
      i = j;
    }
    return out;
  }

  private readRun(
    g: GroupIndex,
    i: number,
    j: number,
    firstSeq: number,
    group: string,
    out: JournalRecord[],
  ): void {
    const seg = this.segments.get(g.segNo[i]!);
    assert(seg !== undefined, `segment ${g.segNo[i]} of a retained record is live`);
    const base = g.offset[i]!;
    const length = g.offset[j - 1]! + g.bytes[j - 1]! - base;
    const fd = seg.fd ?? this.openFd(seg.file, 'r');
    try {
      const buf = readAt(fd, seg.file, base, length);
      for (let k = i; k < j; k++) {
        const r = decodeRecord(buf, g.offset[k]! - base);
        if (!r.ok) throw readBackError(seg.file, g.offset[k]!, r.reason);
        const s = firstSeq + (k - i);
        if (r.header.group !== group || r.header.seq !== s) {
          throw readBackError(
            seg.file,
            g.offset[k]!,
            `expected ${group} seq ${s}, read ${r.header.group} seq ${r.header.seq}`,
          );
        }
        out.push({ header: r.header, payload: r.payload });
      }
    } finally {
      if (seg.fd === null) fs.closeSync(fd);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Close

  /** Syncs, finishes background work, closes every fd. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closing = true;
    try {
      if (this.failed === null) await this.sync();
      while (this.writing !== null) await this.writing;
      while (this.inFlight !== null) await this.inFlight.promise.catch(() => {});
      // A clean restart should not replay what was released, nor need an active segment whose
      // records are all released.
      const a = this.active;
      const activeListed = a !== null && this.persistedLive?.has(a.no) === true && this.releasedOnDisk(a);
      if (this.stateDirty || activeListed) {
        this.stateDirty = true;
        this.stateForced = true;
        this.scheduleMaintenance();
      }
      await this.whenIdle();
    } finally {
      this.closed = true;
      await this.preparing;
      this.closeFds();
      const point = this.durablePoint;
      this.durablePoint = null;
      await point?.close();
    }
  }

  private closeFds(): void {
    this.closeDirectFd();
    for (const seg of this.segments.values()) {
      if (seg.fd !== null) fs.closeSync(seg.fd);
      seg.fd = null;
    }
  }
}

function ioError(what: string, cause: unknown): RemcopyError {
  const code = (cause as NodeJS.ErrnoException | null)?.code;
  const msg = cause instanceof Error ? cause.message : String(cause);
  return new RemcopyError('RC_ERR_JOURNAL_IO', `${what}: ${code !== undefined ? `${code} ` : ''}${msg}`);
}

function readBackError(file: string, offset: number, reason: string): RemcopyError {
  return new RemcopyError(
    'RC_ERR_JOURNAL_CORRUPT',
    `${file}: the record at byte offset ${offset} does not read back as written (${reason})`,
  );
}

function readAt(fd: number, file: string, position: number, length: number): Buffer {
  const buf = Buffer.allocUnsafe(length);
  let done = 0;
  try {
    while (done < length) {
      const n = fs.readSync(fd, buf, done, length - done, position + done);
      if (n === 0) break;
      done += n;
    }
  } catch (e) {
    throw ioError(`cannot read ${file}`, e);
  }
  return done === length ? buf : buf.subarray(0, done);
}

function bytesOf(bufs: readonly Buffer[]): number {
  let n = 0;
  for (const b of bufs) n += b.length;
  return n;
}

/** The buffers left after the first `n` bytes. */
function skipBytes(bufs: readonly Buffer[], n: number): Buffer[] {
  const out: Buffer[] = [];
  let skip = n;
  for (const b of bufs) {
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    out.push(skip > 0 ? b.subarray(skip) : b);
    skip = 0;
  }
  return out;
}
