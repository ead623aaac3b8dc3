/**
 * Copy-on-write snapshots of one volume at chunk granularity, kept at a replication target.
 *
 * Who calls it: the target's applier. Once it has applied its journal up to consistency marker N
 * (and the live volume holds that content durably) it calls `create(N)`; from then on, before it
 * overwrites any part of the live volume, it asks `needsPreserve(offset, length)` (synchronous, on
 * the hot path) and, when true, awaits `preserve(ranges)`, which copies the old content of the
 * chunks the newest snapshot does not hold yet into that snapshot. Snapshots are read (exported
 * read-only as `VOLUME@N`), listed and deleted; the caller keeps the last K by deleting the oldest.
 *
 * Layout in `dir`, per snapshot n (a snapshot exists iff its map file exists):
 *
 *   <n>.data  sparse file the size of the volume; a preserved chunk sits at its own offset
 *   <n>.map   "RCSM" | version u32 | header length u32 | header (JSON: number, createdAtMs,
 *             chunkBytes, sizeBytes) | chunk bitmap (bit c set: chunk c preserved in <n>.data)
 *             | crc32c u32 of all before it
 *
 * The map is replaced atomically and durably (writeFileDurable: <n>.map.tmp, fsync, rename, fsync
 * dir). Other names in `dir` are ignored.
 *
 * Reading. Only the newest snapshot receives preserved chunks. Snapshot i at chunk c reads from
 * the first snapshot j >= i (ascending) whose map holds c, else from the live volume. Why: the
 * first write to c after i was created was preceded by a preserve into the snapshot newest at that
 * moment, j; nothing wrote c between i's and j's creation, so j holds exactly i's content, and no
 * snapshot between them holds c. If no snapshot >= i holds c, nothing wrote c since i was created.
 *
 * Crash safety (kill -9 or power loss at any point; the caller replays its journal afterwards):
 * - create: data file created sparse and fsynced, dir fsynced, then the empty map written. A crash
 *   before the map leaves a data file without a map: open() removes it, the snapshot never existed.
 * - preserve: read live chunks -> write them to the newest data file -> fdatasync -> persist the
 *   map -> resolve; one fdatasync and one map write per call. Before the map lands, the new chunks
 *   have no bit, so every read still goes to later snapshots or the live volume, which the caller
 *   has not overwritten yet (it waits for preserve). After, the bits point at synced data.
 * - delete n: chunks n holds that the next older snapshot o does not are copied into o, fdatasync,
 *   o's map persisted; then n's map removed and the dir fsynced; then n's data file removed. A crash
 *   before n's map goes leaves n intact and o holding extra chunks with n's bytes: identical to what
 *   o read through n for them, so every read is unchanged; o receives nothing else while n exists
 *   (only the newest does), and deleting n again moves only what o still lacks. A crash after n's
 *   map is gone leaves an orphan data file, which open() removes.
 * - open(): leftover <n>.map.tmp files and data files without a map are removed; a map that fails
 *   its checksum, does not parse, or disagrees with the volume (size, chunk size, its own number)
 *   or whose data file is missing or of another size is refused (RC_ERR_SNAPSHOT, naming the file):
 *   we do not guess which chunks a snapshot holds.
 *
 * Concurrency: create, preserve and delete run one at a time on a promise chain, so a map is never
 * written from a half-updated state. Reads are not queued (an export's reads must not wait behind
 * fsyncs); a delete waits for reads in flight before it closes the deleted snapshot's data file.
 *
 * Reads while the live volume is written. A read plans each chunk's source at once, then reads its
 * runs one after another; a promoted volume's host writes go on meanwhile (no apply gate), so a
 * chunk planned "from the live volume" may be preserved and overwritten before its run is read (a
 * 32 MiB NBD read of a promoted volume's db@1 returned a chunk written after snapshot 1). So once
 * its runs are read, a read checks again, for the chunks it took from the live volume, which
 * snapshot now holds them, and reads those again from there. That is enough: a writer overwrites a
 * live chunk only after its preserve has put the chunk's bit in a map (or when the newest snapshot
 * held it already, and then no read plans it from the live volume; restore rewrites only chunks
 * snapshots hold, after deleting those newer than its own), and a bit never goes away while a
 * snapshot at least as new as the one read remains (a delete moves it into the next older one). So
 * bytes read from the live volume are the snapshot's unless a bit for their chunk is set by the
 * time the check runs; preserved bytes never change, so one check suffices. The check looks from
 * the oldest snapshot of the plan still listed (the one read, or one newer if it was deleted
 * meanwhile); none left: the read fails (RC_ERR_UNKNOWN_SNAPSHOT), as nothing then records whether
 * the live chunks were written. Why not a range lock shared by reads and preserve: a write would
 * wait for a whole long read (an NBD read is up to 32 MiB); the check costs a read only map lookups
 * for its live chunks, and a second read only of chunks preserved meanwhile. Writes never wait for
 * reads.
 *
 * usedBytes counts preserved chunks' bytes (a short last chunk at its length), not the blocks the
 * filesystem allocated. A map write costs the bitmap's size (volume / chunkBytes / 8 bytes: 2 MiB
 * for 1 TiB at 64 KiB chunks) per preserve call.
 */
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { crc32c } from '@node-rs/crc32';
import { assert } from '../core/assert.js';
import { DirtyBitmap } from '../core/dirty-bitmap.js';
import { RemcopyError } from '../core/errors.js';
import { type BlockDevice, FileBlockDevice } from './blockdev.js';
import { fsyncDir, fsyncDirSync } from './journal-state.js';
import { writeFileDurable } from './state-file.js';

export const SNAPSHOT_CHUNK_BYTES_DEFAULT = 64 * 1024;
/** Largest run of chunks copied in one read + write by preserve() and delete(): bounds memory. */
export const SNAPSHOT_COPY_BYTES_MAX = 1024 * 1024;
/** Runs copied at once by preserve() and delete(): keeps the thread pool busy, bounds memory. */
export const SNAPSHOT_COPY_RUNS_IN_FLIGHT = 8;
/** Largest header of a map file: far above any real one (four numbers). */
const MAP_HEADER_BYTES_MAX = 4096;

const MAGIC = 0x4d534352; // "RCSM" little-endian
const VERSION = 1;
const MAP_RE = /^(\d+)\.map$/;
const DATA_RE = /^(\d+)\.data$/;
const TMP_RE = /^\d+\.map\.tmp$/;

export interface SnapshotInfo {
  readonly number: number;
  readonly createdAtMs: number;
  readonly preservedChunks: number;
  readonly usedBytes: number;
}

export interface SnapshotMapHeader {
  readonly number: number;
  readonly createdAtMs: number;
  readonly chunkBytes: number;
  readonly sizeBytes: number;
}

/**
 * Steps inside create, preserve and delete at which a test may stop the operation the way a crash
 * would: `onStep` throws, the operation goes no further, the test closes the instance (which
 * writes no metadata) and reopens the directory.
 */
export type SnapshotStep =
  | 'create:data-file'
  | 'preserve:data-written'
  | 'preserve:data-synced'
  | 'delete:older-data-synced'
  | 'delete:older-map'
  | 'delete:map-removed'
  | 'restore:live-written';

/** For tests only: see SnapshotStep. */
export interface SnapshotTestHooks {
  readonly onStep?: (step: SnapshotStep, n: number) => void;
}

export function snapshotMapFile(dir: string, n: number): string {
  return path.join(dir, `${n}.map`);
}

export function snapshotDataFile(dir: string, n: number): string {
  return path.join(dir, `${n}.data`);
}

export function encodeSnapshotMap(header: SnapshotMapHeader, map: DirtyBitmap): Buffer {
  assert(map.chunkBytes === header.chunkBytes && map.sizeBytes === header.sizeBytes, 'map geometry');
  const h = Buffer.from(JSON.stringify(header), 'utf8');
  const pre = Buffer.alloc(12);
  pre.writeUInt32LE(MAGIC, 0);
  pre.writeUInt32LE(VERSION, 4);
  pre.writeUInt32LE(h.length, 8);
  const body = Buffer.concat([pre, h, map.toBytes()]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32LE(crc32c(body), 0);
  return Buffer.concat([body, crc]);
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

function parseHeader(text: string): SnapshotMapHeader | string {
  let h: unknown;
  try {
    h = JSON.parse(text);
  } catch (e) {
    return `header is not JSON (${(e as Error).message})`;
  }
  if (typeof h !== 'object' || h === null) return 'header is not a JSON object';
  const { number, createdAtMs, chunkBytes, sizeBytes } = h as Record<string, unknown>;
  if (!isCount(number) || number === 0) return 'number is not a positive integer';
  if (!isCount(createdAtMs)) return 'createdAtMs is not a non-negative integer';
  if (!isCount(chunkBytes) || chunkBytes === 0) return 'chunkBytes is not a positive integer';
  if (!isCount(sizeBytes) || sizeBytes === 0) return 'sizeBytes is not a positive integer';
  return { number, createdAtMs, chunkBytes, sizeBytes };
}

/** The header and bitmap in `buf`; anything malformed is an RC_ERR_SNAPSHOT error naming `file`. */
export function decodeSnapshotMap(
  file: string,
  buf: Buffer,
): { header: SnapshotMapHeader; map: DirtyBitmap } {
  const bad = (why: string): RemcopyError => new RemcopyError('RC_ERR_SNAPSHOT', `${file}: ${why}`);
  if (buf.length < 16) throw bad(`${buf.length} bytes is too short for a snapshot map`);
  if (buf.readUInt32LE(0) !== MAGIC) throw bad('not a remcopy snapshot map (bad magic)');
  if (buf.readUInt32LE(4) !== VERSION) throw bad(`map version ${buf.readUInt32LE(4)} is not ${VERSION}`);
  if (crc32c(buf.subarray(0, buf.length - 4)) !== buf.readUInt32LE(buf.length - 4)) {
    throw bad('checksum mismatch: which chunks the snapshot holds cannot be trusted');
  }
  const hLen = buf.readUInt32LE(8);
  if (hLen > MAP_HEADER_BYTES_MAX || 12 + hLen > buf.length - 4) throw bad('header runs past the end');
  const header = parseHeader(buf.subarray(12, 12 + hLen).toString('utf8'));
  if (typeof header === 'string') throw bad(header);
  const bitsLen = DirtyBitmap.byteLength(header.sizeBytes, header.chunkBytes);
  if (12 + hLen + bitsLen + 4 !== buf.length) {
    throw bad(`${buf.length} bytes, not the ${12 + hLen + bitsLen + 4} its header implies`);
  }
  const bits = buf.subarray(12 + hLen, 12 + hLen + bitsLen);
  return { header, map: new DirtyBitmap(header.sizeBytes, header.chunkBytes, bits) };
}

interface Snapshot {
  readonly header: SnapshotMapHeader;
  readonly mapFile: string;
  readonly dataFile: string;
  readonly data: BlockDevice;
  /** What the map file holds durably (updated only after it was written). */
  map: DirtyBitmap;
}

/** The snapshot number a file name carries, or undefined when it is not one of ours. */
function numberIn(name: string, re: RegExp): number | undefined {
  const m = re.exec(name);
  if (m === null) return undefined;
  const n = Number(m[1]);
  return Number.isSafeInteger(n) && n > 0 && String(n) === m[1] ? n : undefined;
}

/**
 * Recovery before loading: removes leftover map tmp files and data files without a map (an
 * interrupted create or delete). Returns the snapshot numbers that have a map, ascending.
 */
function recoverDir(dir: string): number[] {
  const names = fs.readdirSync(dir);
  const maps = new Set<number>();
  for (const name of names) {
    if (MAP_RE.test(name)) {
      const n = numberIn(name, MAP_RE);
      if (n === undefined) {
        throw new RemcopyError('RC_ERR_SNAPSHOT', `${path.join(dir, name)}: not a snapshot number`);
      }
      maps.add(n);
    }
  }
  let removed = 0;
  for (const name of names) {
    const n = numberIn(name, DATA_RE);
    if (TMP_RE.test(name) || (n !== undefined && !maps.has(n))) {
      fs.rmSync(path.join(dir, name), { force: true });
      removed++;
    }
  }
  if (removed > 0) fsyncDirSync(dir);
  return [...maps].sort((a, b) => a - b);
}

/** Reads and checks snapshot n's map and data file; opens nothing. */
function loadMap(
  dir: string,
  n: number,
  sizeBytes: number,
  chunkBytes: number,
): { header: SnapshotMapHeader; map: DirtyBitmap } {
  const mapFile = snapshotMapFile(dir, n);
  const bad = (why: string): RemcopyError => new RemcopyError('RC_ERR_SNAPSHOT', `${mapFile}: ${why}`);
  const loaded = decodeSnapshotMap(mapFile, fs.readFileSync(mapFile));
  const h = loaded.header;
  if (h.number !== n) throw bad(`holds snapshot ${h.number}, not ${n}`);
  if (h.sizeBytes !== sizeBytes) throw bad(`snapshot of ${h.sizeBytes} bytes, the volume has ${sizeBytes}`);
  if (h.chunkBytes !== chunkBytes) throw bad(`chunks of ${h.chunkBytes} bytes, expected ${chunkBytes}`);
  const dataFile = snapshotDataFile(dir, n);
  let dataBytes: number;
  try {
    dataBytes = fs.statSync(dataFile).size;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    throw bad(`its data file ${dataFile} is missing`);
  }
  if (dataBytes !== sizeBytes) throw bad(`its data file ${dataFile} is ${dataBytes} bytes, not ${sizeBytes}`);
  return loaded;
}

export class VolumeSnapshots {
  /** Ascending by number; the last one is the newest, the only one preserve() writes. */
  private readonly snaps: Snapshot[] = [];
  private tail: Promise<void> = Promise.resolve();
  private readonly reads = new Set<Promise<unknown>>();
  private closed = false;

  private constructor(
    private readonly dir: string,
    private readonly live: BlockDevice,
    readonly chunkBytes: number,
    private readonly hooks: SnapshotTestHooks,
  ) {}

  /**
   * Opens (creating `dir` if needed) the snapshots of one volume; recovers after a crash (see the
   * file comment). A corrupt or mismatched map is refused with RC_ERR_SNAPSHOT naming the file.
   */
  static open(
    dir: string,
    live: BlockDevice,
    chunkBytes = SNAPSHOT_CHUNK_BYTES_DEFAULT,
    hooks: SnapshotTestHooks = {},
  ): VolumeSnapshots {
    assert(Number.isSafeInteger(chunkBytes) && chunkBytes > 0, 'snapshot chunk size');
    assert(live.sizeBytes > 0, 'volume size');
    if (!fs.existsSync(dir)) {
      fs.mkdirSync(dir, { recursive: true });
      fsyncDirSync(path.dirname(path.resolve(dir)));
    }
    const numbers = recoverDir(dir);
    const loaded = numbers.map((n) => loadMap(dir, n, live.sizeBytes, chunkBytes));
    const vs = new VolumeSnapshots(dir, live, chunkBytes, hooks);
    try {
      for (const { header, map } of loaded) {
        const dataFile = snapshotDataFile(dir, header.number);
        const data = FileBlockDevice.open(dataFile, live.sizeBytes);
        vs.snaps.push({ header, mapFile: snapshotMapFile(dir, header.number), dataFile, data, map });
      }
    } catch (e) {
      for (const s of vs.snaps) void s.data.close().catch(() => {}); // the open error is the one to report
      throw e;
    }
    return vs;
  }

  /** Ascending by number. */
  list(): SnapshotInfo[] {
    return this.snaps.map((s) => ({
      number: s.header.number,
      createdAtMs: s.header.createdAtMs,
      preservedChunks: s.map.dirtyChunks,
      usedBytes: s.map.dirtyBytes,
    }));
  }

  has(n: number): boolean {
    return this.indexOf(n) >= 0;
  }

  get newest(): number | undefined {
    return this.snaps.at(-1)?.header.number;
  }

  /** Preserved chunks' bytes over all snapshots (a short last chunk at its length). */
  usedBytes(): number {
    let sum = 0;
    for (const s of this.snaps) sum += s.map.dirtyBytes;
    return sum;
  }

  /**
   * Durable on return. `n` must be a positive safe integer above every snapshot
   * (RC_ERR_SNAPSHOT_NUMBER, nothing changed); creating an existing n again does nothing (a redo
   * after a crash). The caller guarantees the live volume durably holds the content to snapshot
   * and writes nothing meanwhile.
   */
  create(n: number, createdAtMs: number = Date.now()): Promise<void> {
    return this.serial(() => this.createNow(n, createdAtMs));
  }

  /**
   * True when a write to [offset, offset + length) must await preserve() first: some chunk it
   * touches is not preserved in the newest snapshot yet. False without snapshots.
   */
  needsPreserve(offset: number, length: number): boolean {
    const top = this.snaps.at(-1);
    return top !== undefined && !top.map.covers(offset, length);
  }

  /**
   * Copies into the newest snapshot the live content of every chunk `ranges` touch that it does
   * not hold yet; resolves once that is durable (data fdatasync'ed, then the map). The caller
   * writes none of those ranges of the live volume before it resolves.
   */
  preserve(ranges: ReadonlyArray<{ offset: number; length: number }>): Promise<void> {
    return this.serial(() => this.preserveNow(ranges));
  }

  /**
   * The volume's content as it was when snapshot n was created, even while the live volume is
   * written (each write preserved first; see "Reads while the live volume is written"). Unknown n,
   * or n deleted during the read with no newer snapshot left: RC_ERR_UNKNOWN_SNAPSHOT; a bad range:
   * RC_ERR_OUT_OF_RANGE.
   */
  read(n: number, offset: number, length: number): Promise<Buffer> {
    assert(!this.closed, 'snapshots closed');
    const i = this.indexOf(n);
    if (i < 0) return Promise.reject(this.unknown(n));
    const size = this.live.sizeBytes;
    if (!isCount(offset) || !isCount(length) || offset + length > size) {
      const why = `read ${offset}+${length} of snapshot ${n}: outside the volume (${size} bytes)`;
      return Promise.reject(new RemcopyError('RC_ERR_OUT_OF_RANGE', why));
    }
    const p = this.readNow(i, offset, length);
    this.reads.add(p);
    const done = (): void => void this.reads.delete(p);
    p.then(done, done);
    return p;
  }

  /**
   * Deletes snapshot n crash-safely: the chunks it holds that the next older snapshot lacks move
   * there first (durably), then n's map goes (dir fsynced), then its data file.
   */
  delete(n: number): Promise<void> {
    return this.serial(() => this.deleteNow(n));
  }

  /**
   * The ranges of the live volume written since snapshot n was created: the chunks some snapshot
   * >= n holds (each was preserved before its first overwrite). Unknown n: RC_ERR_UNKNOWN_SNAPSHOT.
   */
  changedSince(n: number): { offset: number; length: number }[] {
    const i = this.indexOf(n);
    if (i < 0) throw this.unknown(n);
    return this.chunkRuns(this.heldFrom(i));
  }

  /**
   * Makes the live volume snapshot n again (a takeover at a consistent point). First the snapshots
   * newer than n are deleted, newest first: they picture writes now undone, and each delete moves
   * into the next older one the chunks it lacks, so n ends up holding every chunk written since it
   * was created. Then those chunks get n's content back in the live volume, which is synced.
   * Resolves with the ranges rewritten. Every remaining snapshot reads right at every step, and
   * a redo after a crash at any step rewrites the same ranges. The caller writes nothing to the
   * volume meanwhile.
   */
  restore(n: number): Promise<{ offset: number; length: number }[]> {
    let ranges: { offset: number; length: number }[] = [];
    return this.serial(async () => {
      if (!this.has(n)) throw this.unknown(n);
      while (this.newest !== n) await this.deleteNow(this.newest!);
      const i = this.indexOf(n);
      ranges = this.chunkRuns(this.heldFrom(i));
      for (const r of ranges) {
        for (let at = r.offset; at < r.offset + r.length; at += SNAPSHOT_COPY_BYTES_MAX) {
          const length = Math.min(SNAPSHOT_COPY_BYTES_MAX, r.offset + r.length - at);
          await this.live.write(at, await this.readNow(i, at, length));
        }
      }
      this.step('restore:live-written', n);
      await this.live.sync();
    }).then(() => ranges);
  }

  /** Waits for queued operations and reads, then closes the data files (writes no metadata). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.tail;
    await this.drainReads();
    for (const s of this.snaps.splice(0)) await s.data.close();
  }

  private serial(op: () => Promise<void>): Promise<void> {
    assert(!this.closed, 'snapshots closed');
    const run = this.tail.then(op);
    this.tail = run.then(
      () => {},
      () => {},
    );
    return run;
  }

  private step(step: SnapshotStep, n: number): void {
    this.hooks.onStep?.(step, n);
  }

  private indexOf(n: number): number {
    return this.snaps.findIndex((s) => s.header.number === n);
  }

  private unknown(n: number): RemcopyError {
    return new RemcopyError('RC_ERR_UNKNOWN_SNAPSHOT', `no snapshot ${n} in ${this.dir}`);
  }

  private async drainReads(): Promise<void> {
    while (this.reads.size > 0) await Promise.allSettled([...this.reads]);
  }

  private async createNow(n: number, createdAtMs: number): Promise<void> {
    if (this.has(n)) return;
    const newest = this.newest;
    if (!Number.isSafeInteger(n) || n <= 0 || (newest !== undefined && n < newest)) {
      const above = newest === undefined ? '' : ` above the newest snapshot ${newest}`;
      throw new RemcopyError(
        'RC_ERR_SNAPSHOT_NUMBER',
        `cannot create snapshot ${n}: need an integer${above}`,
      );
    }
    assert(isCount(createdAtMs), 'snapshot creation time');
    const mapFile = snapshotMapFile(this.dir, n);
    const dataFile = snapshotDataFile(this.dir, n);
    // Leftovers of a create that failed in this process (open() removes those of a crash).
    await fsp.rm(mapFile, { force: true });
    await fsp.rm(dataFile, { force: true });
    const size = this.live.sizeBytes;
    const data = FileBlockDevice.open(dataFile, size); // sparse, fsynced
    const header: SnapshotMapHeader = {
      number: n,
      createdAtMs,
      chunkBytes: this.chunkBytes,
      sizeBytes: size,
    };
    const map = new DirtyBitmap(size, this.chunkBytes);
    try {
      await fsyncDir(this.dir);
      this.step('create:data-file', n);
      await writeFileDurable(mapFile, encodeSnapshotMap(header, map));
    } catch (e) {
      await data.close();
      throw e;
    }
    this.snaps.push({ header, mapFile, dataFile, data, map });
  }

  private async preserveNow(ranges: ReadonlyArray<{ offset: number; length: number }>): Promise<void> {
    const top = this.snaps.at(-1);
    if (top === undefined) return;
    const next = new DirtyBitmap(top.map.sizeBytes, top.map.chunkBytes, top.map.toBytes());
    const fresh: number[] = [];
    for (const r of ranges) {
      const cs = next.chunksOf(r.offset, r.length);
      if (cs === undefined) continue;
      for (let c = cs.first; c <= cs.last; c++) if (next.set(c)) fresh.push(c);
    }
    if (fresh.length === 0) return;
    fresh.sort((a, b) => a - b);
    await this.copyChunks(this.live, top.data, fresh);
    this.step('preserve:data-written', top.header.number);
    await top.data.sync();
    this.step('preserve:data-synced', top.header.number);
    await writeFileDurable(top.mapFile, encodeSnapshotMap(top.header, next));
    top.map = next;
  }

  private async deleteNow(n: number): Promise<void> {
    const i = this.indexOf(n);
    if (i < 0) throw this.unknown(n);
    const s = this.snaps[i]!;
    const older = this.snaps[i - 1];
    if (older !== undefined) await this.moveInto(older, s);
    await fsp.unlink(s.mapFile);
    await fsyncDir(this.dir);
    this.snaps.splice(i, 1);
    await this.drainReads(); // reads planned before the splice may still use s.data
    await s.data.close();
    this.step('delete:map-removed', n);
    await fsp.unlink(s.dataFile);
  }

  /** Gives `older` the chunks `s` holds that it lacks, durably (data synced, then its map). */
  private async moveInto(older: Snapshot, s: Snapshot): Promise<void> {
    const moved: number[] = [];
    for (let c = s.map.nextDirty(0); c >= 0; c = s.map.nextDirty(c + 1)) {
      if (!older.map.isDirty(c)) moved.push(c);
    }
    if (moved.length > 0) {
      await this.copyChunks(s.data, older.data, moved);
      await older.data.sync();
      this.step('delete:older-data-synced', s.header.number);
      const next = new DirtyBitmap(older.map.sizeBytes, older.map.chunkBytes, older.map.toBytes());
      for (const c of moved) next.set(c);
      await writeFileDurable(older.mapFile, encodeSnapshotMap(older.header, next));
      older.map = next;
    }
    this.step('delete:older-map', s.header.number);
  }

  /**
   * Copies `chunks` (ascending) from `from` to `to` at the same offsets, in runs of at most
   * SNAPSHOT_COPY_BYTES_MAX, SNAPSHOT_COPY_RUNS_IN_FLIGHT runs at a time: scattered small chunks
   * (random writes) would otherwise cost two thread-pool round trips each, one after the other.
   * Runs are disjoint, so their order does not matter; the caller syncs `to` after.
   */
  private async copyChunks(from: BlockDevice, to: BlockDevice, chunks: readonly number[]): Promise<void> {
    const runChunksMax = Math.max(1, Math.floor(SNAPSHOT_COPY_BYTES_MAX / this.chunkBytes));
    const runs: { offset: number; length: number }[] = [];
    for (let k = 0; k < chunks.length;) {
      let end = k + 1;
      while (end < chunks.length && end - k < runChunksMax && chunks[end] === chunks[end - 1]! + 1) end++;
      const offset = chunks[k]! * this.chunkBytes;
      const length = Math.min(chunks[end - 1]! * this.chunkBytes + this.chunkBytes, from.sizeBytes) - offset;
      runs.push({ offset, length });
      k = end;
    }
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < runs.length) {
        const r = runs[next++]!;
        try {
          await to.write(r.offset, await from.read(r.offset, r.length));
        } catch (e) {
          next = runs.length; // the others stop after their current run
          throw e;
        }
      }
    };
    const workers = Array.from({ length: Math.min(SNAPSHOT_COPY_RUNS_IN_FLIGHT, runs.length) }, worker);
    // Every worker settles before this returns (no copy still running when the caller syncs).
    const results = await Promise.allSettled(workers);
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
  }

  /**
   * Snapshot at index i over [offset, offset + length). The plan (each chunk's source, neighbours
   * with one source merged) is made before the first await: a delete may reorder `snaps` meanwhile,
   * and waits for this read before it closes a data file the plan uses. Runs read from the live
   * volume are checked again after (see "Reads while the live volume is written").
   */
  private async readNow(i: number, offset: number, length: number): Promise<Buffer> {
    const out = Buffer.alloc(length);
    if (length === 0) return out;
    const planned = this.snaps.slice(i);
    const plan = this.planRead(i, offset, offset + length);
    for (const r of plan) out.set(await r.source.read(r.offset, r.length), r.offset - offset);
    const fromLive = plan.filter((r) => r.source === this.live);
    if (fromLive.length === 0) return out;
    // No await between finding k and planning from it: `snaps` cannot change in between.
    const k = this.snaps.findIndex((s) => planned.includes(s));
    if (k < 0) {
      const n = planned[0]!.header.number;
      throw new RemcopyError(
        'RC_ERR_UNKNOWN_SNAPSHOT',
        `snapshot ${n} in ${this.dir} was deleted during a read`,
      );
    }
    const again = fromLive.flatMap((r) => this.planRead(k, r.offset, r.offset + r.length));
    for (const r of again) {
      if (r.source !== this.live) out.set(await r.source.read(r.offset, r.length), r.offset - offset);
    }
    return out;
  }

  private planRead(
    i: number,
    start: number,
    end: number,
  ): { source: BlockDevice; offset: number; length: number }[] {
    const cb = this.chunkBytes;
    const plan: { source: BlockDevice; offset: number; length: number }[] = [];
    let runStart = start;
    let runSource = this.sourceOf(i, Math.floor(start / cb));
    for (let c = Math.floor(start / cb) + 1; c * cb < end; c++) {
      const source = this.sourceOf(i, c);
      if (source === runSource) continue;
      plan.push({ source: runSource, offset: runStart, length: c * cb - runStart });
      runStart = c * cb;
      runSource = source;
    }
    plan.push({ source: runSource, offset: runStart, length: end - runStart });
    return plan;
  }

  /** Chunks held by snapshot i or a newer one, ascending. */
  private heldFrom(i: number): number[] {
    const held = new Set<number>();
    for (const s of this.snaps.slice(i)) {
      for (let c = s.map.nextDirty(0); c >= 0; c = s.map.nextDirty(c + 1)) held.add(c);
    }
    return [...held].sort((a, b) => a - b);
  }

  /** Ascending chunks as byte ranges, neighbours merged (a short last chunk at its length). */
  private chunkRuns(chunks: readonly number[]): { offset: number; length: number }[] {
    const cb = this.chunkBytes;
    const out: { offset: number; length: number }[] = [];
    for (const c of chunks) {
      const last = out.at(-1);
      const end = Math.min((c + 1) * cb, this.live.sizeBytes);
      if (last !== undefined && last.offset + last.length === c * cb) last.length = end - last.offset;
      else out.push({ offset: c * cb, length: end - c * cb });
    }
    return out;
  }

  /** Where snapshot i's chunk c lives: the first snapshot j >= i holding it, else the live volume. */
  private sourceOf(i: number, c: number): BlockDevice {
    for (let j = i; j < this.snaps.length; j++) {
      const s = this.snaps[j]!;
      if (s.map.isDirty(c)) return s.data;
    }
    return this.live;
  }
}
