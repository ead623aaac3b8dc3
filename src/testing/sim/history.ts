/**
 * The source's history, as the checkers see it: every write ever issued, with its order key, when
 * it was issued and acknowledged, whether its durability was promised, and whether a source crash
 * lost it. Per block, the writes that survive, in key order: from these the checkers know what a
 * block must hold at any cut, and which writes a shown write depends on.
 *
 * Stamps are one counter over the whole run (the simulator's `stamp()`): "B was issued after A was
 * acknowledged" is `B.issueStamp > A.ackStamp`.
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
  readonly seq: number;
  readonly key: OrderKey;
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

export class History {
  readonly writes: SourceWrite[] = [];
  private readonly blocks = new Map<string, BlockHistory>();
  /** Write ids in acknowledgement order, and how many of them a FLUSH already covered. */
  private readonly ackOrder: number[] = [];
  private promisedCount = 0;

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
    assert(last === undefined || compareKeys(this.writes[last]!.key, w.key) < 0, 'keys increase per block');
    this.writes.push(full);
    b.add(full);
    return full;
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

  /** A source crash lost these writes: they leave every block history. */
  markLost(writeIds: readonly number[]): SourceWrite[] {
    const touched = new Set<BlockHistory>();
    const lost = writeIds.map((id) => this.writes[id]!);
    for (const w of lost) {
      w.lost = true;
      touched.add(this.block(w.volume, w.block));
    }
    for (const b of touched) b.rebuild(this.writes);
    return lost;
  }

  /** The block's latest surviving write (what the source volume holds). */
  current(volume: string, block: number): SourceWrite | undefined {
    const id = this.block(volume, block).ids.at(-1);
    return id === undefined ? undefined : this.writes[id];
  }

  /** The block's latest surviving write with key <= cut. */
  atCut(volume: string, block: number, cut: OrderKey): SourceWrite | undefined {
    const ids = this.block(volume, block).ids;
    let lo = 0;
    let hi = ids.length; // answer: the last index < hi whose key <= cut
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (compareKeys(this.writes[ids[mid]!]!.key, cut) <= 0) lo = mid + 1;
      else hi = mid;
    }
    return lo === 0 ? undefined : this.writes[ids[lo - 1]!];
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
