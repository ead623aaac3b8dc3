/**
 * The source's history, as the checkers see it: every write ever issued, with its order key, when
 * it was issued and acknowledged, whether its durability was promised, and whether a source crash
 * lost it. Per block, the writes that survive, in the order they reached the source volume: from
 * these the checkers know what a block must hold at any cut, and which writes a shown write depends
 * on.
 *
 * Stamps are one counter over the whole run (the simulator's `stamp()`): "B was issued after A was
 * acknowledged" is `B.issueStamp > A.ackStamp`.
 *
 * Suspension and resync (DESIGN.md §3.6) add writes that take no seq and no key (tracked in a dirty
 * bitmap while their group is suspended) and copy records (a chunk's content, with a seq and a key,
 * changing nothing at the source). So "the source at cut C" is not "every write with key <= C" but
 * the source volumes at a moment: each write and copy record has a position `srcPos` (the stamp at
 * which it reached the source volume, or was read from it), the surviving keyed records (data and
 * copy) have keys increasing with their positions (a crash loses a suffix of them, and the
 * sequencer resumes above what survived), and the cut C shows the source at the position of the
 * last surviving keyed record with key <= C. Without suspensions this is exactly "the latest write
 * with key <= C" per block.
 */
import { assert } from '../../core/assert.js';
import type { OrderKey } from '../../core/types.js';
import { compareKeys } from '../../core/types.js';

export interface SourceWrite {
  readonly writeId: number;
  readonly set: string;
  readonly group: string;
  readonly volume: string;
  readonly block: number;
  /** 0 for a write tracked while its group was suspended (not journalled). */
  readonly seq: number;
  /** Undefined for a write tracked while its group was suspended. */
  readonly key: OrderKey | undefined;
  /** When the write reached the source volume (a stamp): orders a block's writes. */
  readonly srcPos: number;
  /** The balance written, for bank account blocks. */
  readonly balance: number | undefined;
  readonly issueStamp: number;
  ackStamp: number | undefined;
  /** Acknowledged as durable: a FUA write, or acknowledged before a FLUSH that completed. */
  promised: boolean;
  /** Lost from the source journal by a crash: as if never written. */
  lost: boolean;
}

export type NewWrite = Omit<SourceWrite, 'writeId' | 'ackStamp' | 'promised' | 'lost'>;

/** A copy record of a resync: the content (write ids, undefined: never written) of one chunk. */
export interface CopyRecord {
  readonly copyId: number;
  readonly group: string;
  readonly volume: string;
  readonly chunk: number;
  readonly firstBlock: number;
  readonly blocks: readonly (number | undefined)[];
  readonly seq: number;
  readonly key: OrderKey;
  /** When the chunk was read from the source volume (a stamp). */
  readonly srcPos: number;
  /** Lost from the source journal by a crash. */
  lost: boolean;
}

export type NewCopy = Omit<CopyRecord, 'copyId' | 'lost'>;

/** A record with a seq and a key: what a cut is made of. */
type Keyed = { readonly key: OrderKey; readonly srcPos: number; readonly lost: boolean };

interface Acked {
  readonly stamp: number;
  /** Highest position (in the block's surviving writes) acknowledged at or before `stamp`. */
  readonly maxPos: number;
}

/** One block's surviving writes in key order, and their acknowledgements in stamp order. */
class BlockHistory {
  ids: number[] = [];
  posOf = new Map<number, number>();
  acked: Acked[] = [];

  add(w: SourceWrite): void {
    this.posOf.set(w.writeId, this.ids.length);
    this.ids.push(w.writeId);
  }

  onAck(w: SourceWrite): void {
    const pos = this.posOf.get(w.writeId)!;
    const prev = this.acked.at(-1)?.maxPos ?? -1;
    this.acked.push({ stamp: w.ackStamp!, maxPos: Math.max(prev, pos) });
  }

  rebuild(writes: readonly SourceWrite[]): void {
    const alive = this.ids.map((id) => writes[id]!).filter((w) => !w.lost);
    this.ids = [];
    this.posOf = new Map();
    this.acked = [];
    for (const w of alive) this.add(w);
    const acked = alive.filter((w) => w.ackStamp !== undefined).sort((a, b) => a.ackStamp! - b.ackStamp!);
    for (const w of acked) this.onAck(w);
  }
}

const blockId = (volume: string, block: number): string => `${volume}#${block}`;
const chunkId = (volume: string, chunk: number): string => `${volume}:${chunk}`;

export class History {
  readonly writes: SourceWrite[] = [];
  readonly copies: CopyRecord[] = [];
  private readonly blocks = new Map<string, BlockHistory>();
  /** Surviving data and copy records, node-wide, in srcPos order (which is key order). */
  private keyed: Keyed[] = [];
  /** Copy records by volume and chunk, oldest first. */
  private readonly copiesByChunk = new Map<string, CopyRecord[]>();
  /** Write ids in acknowledgement order, and how many of them a FLUSH already covered. */
  private readonly ackOrder: number[] = [];
  private promisedCount = 0;
  /**
   * The position every cut shows at least: after a failback, the reverse run's history begins
   * with the new source's content (writes without a key), which even the least cut shows.
   */
  private floorPos = -1;

  /** Writes added so far are the base of every cut (failback.ts). */
  setBase(): void {
    this.floorPos = this.writes.reduce((m, w) => Math.max(m, w.srcPos), -1);
  }

  add(w: NewWrite): SourceWrite {
    const full: SourceWrite = {
      ...w,
      writeId: this.writes.length,
      ackStamp: undefined,
      promised: false,
      lost: false,
    };
    const b = this.block(w.volume, w.block);
    const last = b.ids.at(-1);
    assert(last === undefined || this.writes[last]!.srcPos < w.srcPos, 'writes reach a block in order');
    if (w.key !== undefined) this.addKeyed(full as Keyed);
    this.writes.push(full);
    b.add(full);
    return full;
  }

  /** A copy record was journalled. */
  addCopy(c: NewCopy): CopyRecord {
    const full: CopyRecord = { ...c, copyId: this.copies.length, lost: false };
    this.addKeyed(full);
    this.copies.push(full);
    const id = chunkId(c.volume, c.chunk);
    const list = this.copiesByChunk.get(id);
    if (list === undefined) this.copiesByChunk.set(id, [full]);
    else list.push(full);
    return full;
  }

  /** Copy records of one chunk, oldest first (lost ones included). */
  copiesOf(volume: string, chunk: number): readonly CopyRecord[] {
    return this.copiesByChunk.get(chunkId(volume, chunk)) ?? [];
  }

  private addKeyed(r: Keyed): void {
    const last = this.keyed.at(-1);
    assert(
      last === undefined || (compareKeys(last.key, r.key) < 0 && last.srcPos < r.srcPos),
      'surviving records have keys increasing with their position',
    );
    this.keyed.push(r);
  }

  acked(writeId: number, stamp: number, fua: boolean): void {
    const w = this.writes[writeId]!;
    assert(!w.lost && w.ackStamp === undefined, `write ${writeId} acknowledged once`);
    w.ackStamp = stamp;
    w.promised ||= fua;
    this.ackOrder.push(writeId);
    this.block(w.volume, w.block).onAck(w);
  }

  /** A FLUSH issued at `stamp` completed: every write acknowledged before it is promised. */
  promiseAckedBefore(stamp: number): void {
    while (this.promisedCount < this.ackOrder.length) {
      const w = this.writes[this.ackOrder[this.promisedCount]!]!;
      if (w.ackStamp! >= stamp) break;
      w.promised ||= !w.lost;
      this.promisedCount++;
    }
  }

  /** A source crash lost these writes and copy records: they leave every history. */
  markLost(writeIds: readonly number[], copyIds: readonly number[] = []): SourceWrite[] {
    const touched = new Set<BlockHistory>();
    const lost = writeIds.map((id) => this.writes[id]!);
    for (const w of lost) {
      w.lost = true;
      touched.add(this.block(w.volume, w.block));
    }
    for (const id of copyIds) this.copies[id]!.lost = true;
    for (const b of touched) b.rebuild(this.writes);
    if (lost.length > 0 || copyIds.length > 0) this.keyed = this.keyed.filter((r) => !r.lost);
    return lost;
  }

  /** The block's latest surviving write (what the source volume holds). */
  current(volume: string, block: number): SourceWrite | undefined {
    const id = this.block(volume, block).ids.at(-1);
    return id === undefined ? undefined : this.writes[id];
  }

  /** The position the source had at cut C: that of the last surviving keyed record with key <= C. */
  posAtCut(cut: OrderKey): number {
    let lo = 0;
    let hi = this.keyed.length; // answer: the last index < hi whose key <= cut
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (compareKeys(this.keyed[mid]!.key, cut) <= 0) lo = mid + 1;
      else hi = mid;
    }
    return lo === 0 ? this.floorPos : this.keyed[lo - 1]!.srcPos;
  }

  /** What the block held at source position `pos`: its latest surviving write at or before it. */
  atPos(volume: string, block: number, pos: number): SourceWrite | undefined {
    const ids = this.block(volume, block).ids;
    let lo = 0;
    let hi = ids.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.writes[ids[mid]!]!.srcPos <= pos) lo = mid + 1;
      else hi = mid;
    }
    return lo === 0 ? undefined : this.writes[ids[lo - 1]!];
  }

  /** What the block held at cut C (see the file comment). */
  atCut(volume: string, block: number, cut: OrderKey): SourceWrite | undefined {
    return this.atPos(volume, block, this.posAtCut(cut));
  }

  /** Position of a surviving write in its block's key order; -1 for none, undefined if not there. */
  position(volume: string, block: number, writeId: number | undefined): number | undefined {
    return writeId === undefined ? -1 : this.block(volume, block).posOf.get(writeId);
  }

  /** The position a block must have reached to include every write acknowledged before `stamp`. */
  requiredPosition(volume: string, block: number, stamp: number): number {
    const acked = this.block(volume, block).acked;
    let lo = 0;
    let hi = acked.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (acked[mid]!.stamp < stamp) lo = mid + 1;
      else hi = mid;
    }
    return lo === 0 ? -1 : acked[lo - 1]!.maxPos;
  }

  private block(volume: string, block: number): BlockHistory {
    const id = blockId(volume, block);
    let b = this.blocks.get(id);
    if (b === undefined) {
      b = new BlockHistory();
      this.blocks.set(id, b);
    }
    return b;
  }
}
