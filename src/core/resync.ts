/**
 * Delta resync of one group (DESIGN.md §3.6): which dirty chunks are still to be copied, which copy
 * record carries each, and which bits a durable report of the target may clear.
 *
 *   resume          --> start()                      a pass over the dirty bits, totals fixed
 *   copy loop       --> next() --chunk--> journal a copy record --> copied(volume, chunk, seq)
 *   ACK(durable)    --> acked(durable)               bits of chunks whose copy is durable cleared
 *   suspended write --> markWrite(volume, range)     bits set; an older copy of them no longer counts
 *
 * Safety contract: a bit is cleared only when a copy record of its chunk, journalled after the last
 * time the chunk was marked, is durable at the target (`acked` covers its seq). next() never hands
 * out a clean chunk, so a resync copies nothing the target already holds.
 */
import { assert } from './assert.js';
import type { DirtyBitmap } from './dirty-bitmap.js';

export interface VolumeBitmap {
  readonly volume: string;
  readonly bitmap: DirtyBitmap;
}

export interface ResyncChunk {
  readonly volume: string;
  readonly chunk: number;
  readonly offset: number;
  readonly length: number;
}

export class ResyncTracker {
  /** Copies journalled and not yet reported durable, in seq order. */
  private pending: { seq: number; volume: number; chunk: number }[] = [];
  /** Per volume index: chunk -> seq of its latest copy still pending. */
  private readonly copySeq: Map<number, number>[];
  private vol = 0;
  private chunk = 0;
  bytesTotal = 0;
  bytesDone = 0;

  constructor(readonly volumes: readonly VolumeBitmap[]) {
    this.copySeq = volumes.map(() => new Map());
  }

  /** Begins a pass over every dirty chunk; what a pass copies is fixed by the bits set now. */
  start(): void {
    this.vol = 0;
    this.chunk = 0;
    this.bytesDone = 0;
    this.bytesTotal = this.volumes.reduce((n, v) => n + v.bitmap.dirtyBytes, 0);
  }

  /** Next dirty chunk of this pass, or undefined when the pass has been through every volume. */
  next(): ResyncChunk | undefined {
    while (this.vol < this.volumes.length) {
      const { volume, bitmap } = this.volumes[this.vol]!;
      const c = bitmap.nextDirty(this.chunk);
      if (c >= 0) {
        this.chunk = c + 1;
        return { volume, chunk: c, ...bitmap.range(c) };
      }
      this.vol++;
      this.chunk = 0;
    }
    return undefined;
  }

  /** The chunk's content was journalled as the copy record `seq`. */
  copied(volume: string, chunk: number, seq: number): void {
    const v = this.indexOf(volume);
    const last = this.pending[this.pending.length - 1];
    assert(last === undefined || last.seq < seq, `copy seq ${seq} after ${last?.seq}`);
    this.pending.push({ seq, volume: v, chunk });
    this.copySeq[v]!.set(chunk, seq);
    this.bytesDone += this.volumes[v]!.bitmap.range(chunk).length;
  }

  /**
   * A write that is not journalled (the pair is suspended) changed the range: its chunks are dirty,
   * and copies of them already journalled no longer cover them. Returns how many bits were clean.
   */
  markWrite(volume: string, offset: number, length: number): number {
    const v = this.indexOf(volume);
    const bm = this.volumes[v]!.bitmap;
    const r = bm.chunksOf(offset, length);
    if (r === undefined) return 0;
    for (let c = r.first; c <= r.last; c++) this.copySeq[v]!.delete(c);
    return bm.mark(offset, length);
  }

  /** The target holds every record up to `seq` durably; returns how many bits were cleared. */
  acked(seq: number): number {
    let i = 0;
    let cleared = 0;
    for (; i < this.pending.length && this.pending[i]!.seq <= seq; i++) {
      const p = this.pending[i]!;
      if (this.copySeq[p.volume]!.get(p.chunk) !== p.seq) continue;
      this.copySeq[p.volume]!.delete(p.chunk);
      if (this.volumes[p.volume]!.bitmap.clear(p.chunk)) cleared++;
    }
    if (i > 0) this.pending = this.pending.slice(i);
    return cleared;
  }

  /** Copies journalled but not yet reported durable. */
  get inFlight(): number {
    return this.pending.length;
  }

  get dirtyBytes(): number {
    return this.volumes.reduce((n, v) => n + v.bitmap.dirtyBytes, 0);
  }

  private indexOf(volume: string): number {
    const i = this.volumes.findIndex((v) => v.volume === volume);
    assert(i >= 0, `volume ${volume} is not in the resync`);
    return i;
  }
}
