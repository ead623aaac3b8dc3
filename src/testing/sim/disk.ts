/**
 * Simulated disks: a journal and a set of volumes whose writes are durable only after a sync, and
 * which lose what was not synced when their node crashes (DESIGN.md §3.2, §6; TESTING.md layer 3).
 *
 * SimJournal owns one append-only log of records (one node's journal on the source, one group's on
 * the target), its durable prefix, and per group the release point (seq and key, persisted when
 * released) and the index of the records still held.
 *
 *   append(entry)  --> in the log, not durable
 *   sync(done)     --> after a seeded delay everything appended before the call is durable; one
 *                      round in flight at a time, later callers wait for the next (group commit);
 *                      onDurable gets the newly durable entries, in log order, before any `done`
 *   release(g, s)  --> records of g up to s are gone; the release point is durable at once
 *   crash()        --> the unsynced tail is lost, except that a torn prefix of it may survive
 *                      (what the disk had written when the power went); never a hole
 *
 * SimVolumes owns the target volumes: block -> write id, a durable map and the unsynced writes.
 * At a crash each unsynced block write survives or not, independently (pages written back in any
 * order): the apply redo must not depend on which.
 *
 * SimBitmapFile is the source's dirty-bitmap file (DESIGN.md §3.6): persist() writes the node's
 * bitmaps as they are when a round begins (write + fsync + rename: all or nothing); one round at a
 * time, a caller waits for a round that began after its call; a crash keeps the last round
 * completed.
 */
import { assert } from '../../core/assert.js';
import type { OrderKey, RecordHeader } from '../../core/types.js';
import { compareKeys, keyOf } from '../../core/types.js';
import type { Rng } from './rng.js';
import type { Scheduler } from './scheduler.js';

/** A copy record's payload: which copy it is and the write ids its chunk's blocks held. */
export interface CopyPayload {
  readonly copyId: number;
  /** Per block of the chunk, the write it held at the source (undefined: never written). */
  readonly blocks: readonly (number | undefined)[];
}

/** Sets a chunk's bit in a bitmap's bytes (DirtyBitmap's layout). */
export function setChunkBit(bits: Uint8Array, chunk: number): void {
  bits[chunk >> 3] = bits[chunk >> 3]! | (1 << (chunk & 7));
}

/**
 * Sets, in per-volume bits, the chunks of every record of `entries` past `afterSeq`: what a
 * takeover's records beyond its cut, and a demote's records past takeoverSeq, hand over.
 */
export function markRecordsAfter(
  bits: ReadonlyMap<string, Uint8Array>,
  entries: readonly JournalEntry[],
  afterSeq: number,
  chunkBlocks: number,
  blockBytes: number,
): void {
  for (const e of entries) {
    if (e.h.seq <= afterSeq) continue;
    const first = e.h.offset / blockBytes;
    for (let b = first; b < first + e.h.length / blockBytes; b++)
      setChunkBit(bits.get(e.h.volume)!, Math.floor(b / chunkBlocks));
  }
}

/** `writeId` of a copy record, which carries no single write. */
export const NO_WRITE = -1;

/**
 * One journal record: its header and the id of the source write it carries (its payload); a copy
 * record carries `copy` instead (and `writeId` NO_WRITE).
 */
export interface JournalEntry {
  readonly h: RecordHeader;
  readonly writeId: number;
  readonly copy?: CopyPayload;
}

interface LoggedEntry extends JournalEntry {
  /** Position in the log: durable iff below the journal's durable length. */
  readonly index: number;
}

interface GroupLog {
  seqReleased: number;
  keyReleased: OrderKey | undefined;
  /** Held records by seq (released ones removed). */
  readonly bySeq: Map<number, LoggedEntry>;
  /** End of the durable contiguous prefix (released records count). */
  seqDurable: number;
}

interface SyncWaiter {
  readonly needLen: number;
  readonly done: () => void;
}

export class SimJournal {
  private log: LoggedEntry[] = [];
  private durableLen = 0;
  private readonly groups = new Map<string, GroupLog>();
  private keyDurableMaxNow: OrderKey | undefined;
  private syncInFlight = false;
  private waiters: SyncWaiter[] = [];
  /** Bumped by a crash: a sync round that started before it never completes. */
  private generation = 0;
  /** Called with the entries a sync round made durable, in log order. Cleared by a crash. */
  onDurable: ((entries: readonly JournalEntry[]) => void) | undefined;

  constructor(
    private readonly sched: Scheduler,
    private readonly rng: Rng,
    private readonly syncUs: readonly [number, number],
    groups: readonly string[],
  ) {
    for (const g of groups) {
      this.groups.set(g, { seqReleased: 0, keyReleased: undefined, bySeq: new Map(), seqDurable: 0 });
    }
  }

  /**
   * An empty group starts after `afterSeq` (a failback's base): as if records up to it, the last
   * with key `key`, had been released.
   */
  startAfter(group: string, afterSeq: number, key: OrderKey): void {
    const g = this.group(group);
    assert(g.bySeq.size === 0 && g.seqReleased === 0, `journal of ${group} is not empty`);
    g.seqReleased = afterSeq;
    g.keyReleased = key;
    this.recomputeDurable();
  }

  append(e: JournalEntry): void {
    const g = this.group(e.h.group);
    assert(e.h.seq > g.seqReleased && !g.bySeq.has(e.h.seq), `journal already holds ${e.h.group}/${e.h.seq}`);
    const entry: LoggedEntry = { ...e, index: this.log.length };
    this.log.push(entry);
    g.bySeq.set(e.h.seq, entry);
  }

  has(group: string, s: number): boolean {
    return this.group(group).bySeq.has(s);
  }

  get(group: string, s: number): JournalEntry | undefined {
    return this.group(group).bySeq.get(s);
  }

  /** Held records of `group`, in seq order. */
  entries(group: string): JournalEntry[] {
    return [...this.group(group).bySeq.values()].sort((a, b) => a.h.seq - b.h.seq);
  }

  /** Up to `count` durable records of `group` from `fromSeq` on, contiguous. */
  durableRange(group: string, fromSeq: number, count: number): JournalEntry[] {
    const g = this.group(group);
    const out: JournalEntry[] = [];
    for (let s = fromSeq; s <= g.seqDurable && out.length < count; s++) out.push(g.bySeq.get(s)!);
    return out;
  }

  seqReleased(group: string): number {
    return this.group(group).seqReleased;
  }

  keyReleased(group: string): OrderKey | undefined {
    return this.group(group).keyReleased;
  }

  /** End of the durable contiguous prefix of `group` (released records included). */
  seqDurable(group: string): number {
    return this.group(group).seqDurable;
  }

  /** Highest seq of `group` held or released. */
  seqLast(group: string): number {
    const g = this.group(group);
    let last = g.seqReleased;
    for (const s of g.bySeq.keys()) last = Math.max(last, s);
    return last;
  }

  /** Largest key ever made durable here (held or released): what a restart recovers. */
  get keyDurableMax(): OrderKey | undefined {
    return this.keyDurableMaxNow;
  }

  /** Records held, not released, over all groups. */
  unreleased(): number {
    let n = 0;
    for (const g of this.groups.values()) n += g.bySeq.size;
    return n;
  }

  /** Calls `done` once everything appended before this call is durable. */
  sync(done: () => void = () => {}): void {
    this.waiters.push({ needLen: this.log.length, done });
    if (!this.syncInFlight) this.startRound();
  }

  /** Forgets records of `group` up to `upTo`; the release point is persisted at once. */
  release(group: string, upTo: number): void {
    const g = this.group(group);
    assert(upTo > g.seqReleased, `release ${group} to ${upTo}: already released to ${g.seqReleased}`);
    assert(upTo <= g.seqDurable, `release ${group} to ${upTo}: durable only to ${g.seqDurable}`);
    const last = g.bySeq.get(upTo);
    assert(last !== undefined, `release ${group} to ${upTo}: record held`);
    for (let s = g.seqReleased + 1; s <= upTo; s++) g.bySeq.delete(s);
    g.seqReleased = upTo;
    g.keyReleased = keyOf(last.h);
  }

  /**
   * Power loss: keeps the durable prefix and, with chance `tornChance`, a random prefix of the
   * unsynced tail. Returns the entries lost. What survives is durable from now on.
   */
  crash(tornChance: number): JournalEntry[] {
    this.generation++;
    this.syncInFlight = false;
    this.waiters = [];
    this.onDurable = undefined;
    const unsynced = this.log.length - this.durableLen;
    const keep =
      this.durableLen + (unsynced > 0 && this.rng.chance(tornChance) ? this.rng.int(0, unsynced) : 0);
    const lost = this.log.slice(keep);
    for (const e of lost) this.group(e.h.group).bySeq.delete(e.h.seq);
    this.log.length = keep;
    this.durableLen = keep;
    this.recomputeDurable();
    return lost;
  }

  private startRound(): void {
    this.syncInFlight = true;
    const covers = this.log.length;
    const gen = this.generation;
    this.sched.after(this.rng.int(this.syncUs[0], this.syncUs[1]), () => {
      if (gen !== this.generation) return;
      this.syncInFlight = false;
      this.markDurable(covers);
      const ready = this.waiters.filter((w) => w.needLen <= covers);
      this.waiters = this.waiters.filter((w) => w.needLen > covers);
      if (this.waiters.length > 0) this.startRound();
      for (const w of ready) w.done();
    });
  }

  private markDurable(len: number): void {
    if (len <= this.durableLen) return;
    const fresh = this.log.slice(this.durableLen, len);
    this.durableLen = len;
    for (const e of fresh) this.raiseKey(keyOf(e.h));
    for (const g of this.groups.values()) this.advanceDurable(g);
    this.onDurable?.(fresh);
  }

  private advanceDurable(g: GroupLog): void {
    for (;;) {
      const next = g.bySeq.get(g.seqDurable + 1);
      if (next === undefined || next.index >= this.durableLen) return;
      g.seqDurable++;
    }
  }

  private recomputeDurable(): void {
    this.keyDurableMaxNow = undefined;
    for (const g of this.groups.values()) {
      if (g.keyReleased !== undefined) this.raiseKey(g.keyReleased);
      for (const e of g.bySeq.values()) this.raiseKey(keyOf(e.h));
      g.seqDurable = g.seqReleased;
      this.advanceDurable(g);
    }
  }

  private raiseKey(k: OrderKey): void {
    if (this.keyDurableMaxNow === undefined || compareKeys(k, this.keyDurableMaxNow) > 0)
      this.keyDurableMaxNow = k;
  }

  private group(name: string): GroupLog {
    const g = this.groups.get(name);
    assert(g !== undefined, `journal has no group ${name}`);
    return g;
  }
}

const blockKey = (volume: string, block: number): string => `${volume}#${block}`;

export class SimVolumes {
  /** Block -> write id; undefined: written with zeroes (a copy of a block never written). */
  private readonly durable = new Map<string, number | undefined>();
  private dirty = new Map<string, number | undefined>();
  private generation = 0;
  /** Syncs complete in the order they began: a later one covers every earlier write too. */
  private lastSyncDoneUs = 0;

  constructor(
    private readonly sched: Scheduler,
    private readonly rng: Rng,
    private readonly syncUs: readonly [number, number],
  ) {}

  /** Writes the block; undefined writes zeroes. */
  write(volume: string, block: number, writeId: number | undefined): void {
    this.dirty.set(blockKey(volume, block), writeId);
  }

  /** The write id a read of the block returns (undefined: never written, or zeroes). */
  read(volume: string, block: number): number | undefined {
    const k = blockKey(volume, block);
    return this.dirty.has(k) ? this.dirty.get(k) : this.durable.get(k);
  }

  /** Sets the block's durable content (a volume as it is when a run begins). */
  preset(volume: string, block: number, writeId: number | undefined): void {
    this.durable.set(blockKey(volume, block), writeId);
  }

  /** Calls `done` once every write made before this call is durable. */
  sync(done: () => void): void {
    const snapshot = new Map(this.dirty);
    const gen = this.generation;
    const doneUs = Math.max(
      this.lastSyncDoneUs,
      this.sched.nowUs + this.rng.int(this.syncUs[0], this.syncUs[1]),
    );
    this.lastSyncDoneUs = doneUs;
    this.sched.after(doneUs - this.sched.nowUs, () => {
      if (gen !== this.generation) return;
      for (const [k, v] of snapshot) {
        this.durable.set(k, v);
        if (this.dirty.get(k) === v) this.dirty.delete(k);
      }
      done();
    });
  }

  /** Power loss: each unsynced block write survives with chance `survives`. Returns how many were lost. */
  crash(survives: number): number {
    this.generation++;
    let lost = 0;
    for (const [k, v] of this.dirty) {
      if (this.rng.chance(survives)) this.durable.set(k, v);
      else if (this.durable.get(k) !== v) lost++;
    }
    this.dirty = new Map();
    return lost;
  }
}

interface BitmapWaiter {
  /** The request number: served by a round that began after it. */
  readonly request: number;
  readonly done: () => void;
}

/** The bits of every volume, as one round writes them. */
export type BitmapSnapshot = ReadonlyMap<string, Uint8Array>;

export class SimBitmapFile {
  private durable = new Map<string, Uint8Array>();
  private requests = 0;
  private roundInFlight = false;
  private waiters: BitmapWaiter[] = [];
  private generation = 0;
  /** What a round writes: the live node's bitmaps. Cleared by a crash. */
  snapshot: (() => BitmapSnapshot) | undefined;
  /** Called when a round is durable, with what it wrote and the stamp taken when it began. */
  onPersisted: ((bits: BitmapSnapshot, stamp: number) => void) | undefined;

  constructor(
    private readonly sched: Scheduler,
    private readonly rng: Rng,
    private readonly persistUs: readonly [number, number],
    private readonly stamp: () => number,
  ) {}

  /** The volume's bits as the file holds them (undefined: never written). */
  load(volume: string): Uint8Array | undefined {
    const b = this.durable.get(volume);
    return b === undefined ? undefined : Uint8Array.from(b);
  }

  /** Sets the file's content (bitmaps handed over when a run begins). */
  preset(bits: BitmapSnapshot): void {
    this.durable = new Map([...bits].map(([v, b]) => [v, Uint8Array.from(b)]));
  }

  /** True when the file holds the chunk's bit set. */
  durableSet(volume: string, chunk: number): boolean {
    const b = this.durable.get(volume);
    return b !== undefined && (b[chunk >> 3]! & (1 << (chunk & 7))) !== 0;
  }

  /** Calls `done` once a round that began after this call is durable. */
  persist(done: () => void = () => {}): void {
    this.waiters.push({ request: ++this.requests, done });
    if (!this.roundInFlight) this.startRound();
  }

  crash(): void {
    this.generation++;
    this.roundInFlight = false;
    this.waiters = [];
    this.snapshot = undefined;
  }

  private startRound(): void {
    const take = this.snapshot;
    assert(take !== undefined, 'a bitmap round needs the node');
    this.roundInFlight = true;
    const covers = this.requests;
    const bits = new Map([...take()].map(([v, b]) => [v, Uint8Array.from(b)]));
    const stamp = this.stamp();
    const gen = this.generation;
    this.sched.after(this.rng.int(this.persistUs[0], this.persistUs[1]), () => {
      if (gen !== this.generation) return;
      this.roundInFlight = false;
      this.durable = bits;
      this.onPersisted?.(bits, stamp);
      const ready = this.waiters.filter((w) => w.request <= covers);
      this.waiters = this.waiters.filter((w) => w.request > covers);
      if (this.waiters.length > 0) this.startRound();
      for (const w of ready) w.done();
    });
  }
}
