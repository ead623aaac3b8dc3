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

export class RecentRecords {
  private readonly recs = new Map<number, KeptRecord>();
  private bytes = 0;

  constructor(readonly bytesMax: number) {}

  get size(): number {
    return this.recs.size;
  }

  /** Keeps a record (its payload as given: the caller copies a buffer it may not keep). */
  add(header: RecordHeader, payload: Buffer | undefined, head?: Buffer): void {
    const cost = (payload?.length ?? 0) + RECORD_OVERHEAD_BYTES;
    if (this.bytes + cost > this.bytesMax || this.recs.has(header.seq)) return;
    this.recs.set(header.seq, { header, payload: payload ?? EMPTY, head });
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
      this.bytes -= r.payload.length + RECORD_OVERHEAD_BYTES;
    }
  }

  clear(): void {
    this.recs.clear();
    this.bytes = 0;
  }
}
