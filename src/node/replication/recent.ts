/**
 * Records of one group kept in memory between their journal append and their use: the source
 * ships them from here and the target applies them from here, instead of reading them back from
 * the journal (a read, a decode and a checksum per record). Bounded in bytes: past the bound new
 * records are not kept, and users fall back to the journal for whatever is missing.
 */
import type { RecordHeader, Seq } from '../../core/types.js';

export interface KeptRecord {
  readonly header: RecordHeader;
  readonly payload: Buffer;
  /** Its encoded header and names as journalled, when known (a source ships it as it is). */
  readonly head?: Buffer | undefined;
}

const EMPTY = Buffer.alloc(0);
/** Bytes a record costs beyond its payload (header, map entry), for the bound. */
const RECORD_OVERHEAD_BYTES = 160;
/** Copies of small payloads are cut from slabs this large (see SlabCopier). */
export const SLAB_BYTES = 1024 * 1024;
/** Payloads larger than this are copied into a buffer of their own. */
const SLAB_COPY_MAX_BYTES = SLAB_BYTES / 8;

/**
 * Copies payloads into large shared slabs instead of one new buffer each: a 4 KiB Buffer.from
 * allocates an ArrayBuffer of its own (Node pools only smaller ones), which cost a source more CPU
 * than the copy itself and loaded the garbage collector. A slab lives while any record cut from
 * it is kept; records are dropped in seq order, so at most the newest slabs are partly in use.
 */
export class SlabCopier {
  private slab: Buffer = EMPTY;
  private used = 0;

  copy(src: Buffer): Buffer {
    const n = src.length;
    if (n > SLAB_COPY_MAX_BYTES) return Buffer.from(src);
    if (this.used + n > this.slab.length) {
      this.slab = Buffer.allocUnsafeSlow(SLAB_BYTES);
      this.used = 0;
    }
    const out = this.slab.subarray(this.used, this.used + n);
    src.copy(out);
    // Cuts start 8-byte aligned, so typed views over a payload stay possible.
    this.used += (n + 7) & ~7;
    return out;
  }
}

interface Kept extends KeptRecord {
  /** Kept as given: the record pins its buffer (see RecentRecords.pins). */
  readonly pinned: boolean;
}

export class RecentRecords {
  private readonly recs = new Map<number, Kept>();
  private bytes = 0;
  private readonly slabs = new SlabCopier();
  /**
   * Payloads kept as given, by the buffer they are cut from: a payload cut from a socket's chunk
   * or a frame keeps the whole buffer alive, so the bound counts each such buffer once, whole,
   * while any record cut from it is kept (a small write in a large chunk costs the chunk).
   */
  private readonly pins = new Map<ArrayBufferLike, number>();

  constructor(readonly bytesMax: number) {}

  get size(): number {
    return this.recs.size;
  }

  /** Bytes counted against the bound (payloads, their pinned buffers, per-record overhead). */
  get bytesKept(): number {
    return this.bytes;
  }

  /**
   * Keeps a record. Its payload is kept as given, or with `copy` (a buffer the caller may reuse,
   * such as a front end's) a copy of it, made only when the record is kept.
   */
  add(header: RecordHeader, payload: Buffer | undefined, head?: Buffer, copy = false): void {
    if (this.recs.has(header.seq)) return;
    const pinned = payload !== undefined && !copy;
    let cost = RECORD_OVERHEAD_BYTES;
    if (pinned) cost += this.pins.has(payload.buffer) ? 0 : payload.buffer.byteLength;
    else if (payload !== undefined) cost += payload.length;
    if (this.bytes + cost > this.bytesMax) return;
    const kept = payload === undefined ? EMPTY : copy ? this.slabs.copy(payload) : payload;
    if (pinned) this.pins.set(payload.buffer, (this.pins.get(payload.buffer) ?? 0) + 1);
    this.recs.set(header.seq, { header, payload: kept, head, pinned });
    this.bytes += cost;
  }

  /** Kept records from `fromSeq` on, contiguous, up to `toSeq`, `maxBytes` and `maxCount`. */
  take(fromSeq: Seq, toSeq: number, maxBytes: number, maxCount: number): KeptRecord[] {
    const out: KeptRecord[] = [];
    let bytes = 0;
    for (let s: number = fromSeq; s <= toSeq && out.length < maxCount; s++) {
      const r = this.recs.get(s);
      if (r === undefined) break;
      if (out.length > 0 && bytes + r.payload.length > maxBytes) break;
      out.push(r);
      bytes += r.payload.length;
    }
    return out;
  }

  /** Forgets every record up to `s` (shipped and acknowledged, or applied). */
  dropUpTo(s: number): void {
    // Records are added in seq order, so the map iterates in seq order.
    for (const [k, r] of this.recs) {
      if (k > s) break;
      this.recs.delete(k);
      this.bytes -= RECORD_OVERHEAD_BYTES;
      if (!r.pinned) {
        this.bytes -= r.payload.length;
        continue;
      }
      const left = this.pins.get(r.payload.buffer)! - 1;
      if (left > 0) {
        this.pins.set(r.payload.buffer, left);
      } else {
        this.pins.delete(r.payload.buffer);
        this.bytes -= r.payload.buffer.byteLength;
      }
    }
  }

  clear(): void {
    this.recs.clear();
    this.pins.clear();
    this.bytes = 0;
  }
}
