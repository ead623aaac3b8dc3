/**
 * A pair's dirty bitmap (DESIGN.md §3.6, seed 003): one bit per chunk of a volume, set when a write
 * changed the chunk at the source and the target may not hold it, cleared only once the target
 * holds the chunk durably. Pure: the persistence (bit durable before the write is acknowledged)
 * is storage/bitmap-file.ts and node/replication/bitmaps.ts.
 *
 * `generation` counts changes, so a writer of the bitmap knows whether what it persisted is the
 * latest.
 */
import { assert } from './assert.js';

export const DIRTY_CHUNK_BYTES_DEFAULT = 64 * 1024;

export interface ChunkRange {
  readonly offset: number;
  readonly length: number;
}

export class DirtyBitmap {
  readonly chunks: number;
  private readonly bits: Uint8Array;
  private count = 0;
  generation = 0;

  constructor(
    readonly sizeBytes: number,
    readonly chunkBytes: number,
    bits?: Uint8Array,
  ) {
    assert(Number.isSafeInteger(sizeBytes) && sizeBytes >= 0, 'bitmap size');
    assert(Number.isSafeInteger(chunkBytes) && chunkBytes > 0, 'bitmap chunk size');
    this.chunks = Math.ceil(sizeBytes / chunkBytes);
    const len = DirtyBitmap.byteLength(sizeBytes, chunkBytes);
    if (bits === undefined) this.bits = new Uint8Array(len);
    else {
      assert(bits.length === len, `bitmap of ${bits.length} bytes for ${this.chunks} chunks`);
      this.bits = Uint8Array.from(bits);
      // Bits past the last chunk are meaningless: drop them so that counts stay true.
      const spare = len * 8 - this.chunks;
      if (spare > 0) this.bits[len - 1]! &= 0xff >> spare;
      for (const b of this.bits) this.count += popcount8(b);
    }
  }

  static byteLength(sizeBytes: number, chunkBytes: number): number {
    return Math.ceil(Math.ceil(sizeBytes / chunkBytes) / 8);
  }

  /** Chunks [first, last] that [offset, offset + length) touches; undefined for an empty range. */
  chunksOf(offset: number, length: number): { first: number; last: number } | undefined {
    if (length <= 0) return undefined;
    assert(offset >= 0 && offset + length <= this.sizeBytes, `range ${offset}+${length} past the bitmap`);
    return {
      first: Math.floor(offset / this.chunkBytes),
      last: Math.floor((offset + length - 1) / this.chunkBytes),
    };
  }

  /** Marks every chunk the range touches; returns how many were clean before. */
  mark(offset: number, length: number): number {
    const r = this.chunksOf(offset, length);
    if (r === undefined) return 0;
    let fresh = 0;
    for (let c = r.first; c <= r.last; c++) if (this.set(c)) fresh++;
    return fresh;
  }

  /** True when every chunk the range touches is dirty already (nothing to persist). */
  covers(offset: number, length: number): boolean {
    const r = this.chunksOf(offset, length);
    if (r === undefined) return true;
    for (let c = r.first; c <= r.last; c++) if (!this.isDirty(c)) return false;
    return true;
  }

  isDirty(chunk: number): boolean {
    return (this.bits[chunk >> 3]! & (1 << (chunk & 7))) !== 0;
  }

  /** Sets one chunk's bit; true when it was clean. */
  set(chunk: number): boolean {
    assert(chunk >= 0 && chunk < this.chunks, `chunk ${chunk} of ${this.chunks}`);
    if (this.isDirty(chunk)) return false;
    this.bits[chunk >> 3]! |= 1 << (chunk & 7);
    this.count++;
    this.generation++;
    return true;
  }

  /** Clears one chunk's bit; true when it was dirty. */
  clear(chunk: number): boolean {
    assert(chunk >= 0 && chunk < this.chunks, `chunk ${chunk} of ${this.chunks}`);
    if (!this.isDirty(chunk)) return false;
    this.bits[chunk >> 3]! &= ~(1 << (chunk & 7));
    this.count--;
    this.generation++;
    return true;
  }

  /** Every bit of `other` (same geometry) is set here too: failback's union. */
  union(other: DirtyBitmap): void {
    assert(other.sizeBytes === this.sizeBytes && other.chunkBytes === this.chunkBytes, 'bitmap geometry');
    for (let c = other.nextDirty(0); c >= 0; c = other.nextDirty(c + 1)) this.set(c);
  }

  get dirtyChunks(): number {
    return this.count;
  }

  /** Bytes of the volume the dirty chunks cover (the last chunk may be short). */
  get dirtyBytes(): number {
    if (this.count === 0) return 0;
    const lastLen = this.sizeBytes - (this.chunks - 1) * this.chunkBytes;
    return this.count * this.chunkBytes - (this.isDirty(this.chunks - 1) ? this.chunkBytes - lastLen : 0);
  }

  /** The first dirty chunk at or after `from`, or -1. */
  nextDirty(from: number): number {
    for (let c = Math.max(0, from); c < this.chunks;) {
      const byte = this.bits[c >> 3]!;
      if (byte === 0) {
        c = ((c >> 3) + 1) << 3;
        continue;
      }
      if ((byte & (1 << (c & 7))) !== 0) return c;
      c++;
    }
    return -1;
  }

  range(chunk: number): ChunkRange {
    const offset = chunk * this.chunkBytes;
    return { offset, length: Math.min(this.chunkBytes, this.sizeBytes - offset) };
  }

  /** A copy of the bits, for persisting. */
  toBytes(): Uint8Array {
    return Uint8Array.from(this.bits);
  }
}

function popcount8(b: number): number {
  let n = 0;
  for (let x = b; x !== 0; x &= x - 1) n++;
  return n;
}
