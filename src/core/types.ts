/**
 * Branded scalar types and the journal record model shared by every layer.
 *
 * Branded types keep sequence numbers, ordinals, byte offsets and times from being mixed up
 * (STYLE.md 5). They cost nothing at run time: construct them with the helpers below.
 */

declare const brand: unique symbol;
type Brand<T, B extends string> = T & { readonly [brand]: B };

/** Per-group sequence number: starts at 1, +1 per record, no gaps, never reused (DESIGN.md §3.1). */
export type Seq = Brand<number, 'Seq'>;
/** Node-wide counter, +1 on every record of every group: the order key's tie-breaker. */
export type Ordinal = Brand<number, 'Ordinal'>;
/** Microseconds since the Unix epoch (host time or node clock) or a counter value in `counter` mode. */
export type TimeUs = Brand<number, 'TimeUs'>;
/** Byte offset into a volume. */
export type ByteOffset = Brand<number, 'ByteOffset'>;
/** 32-bit numeric id of a node, derived from its name (see nodeIdOf). */
export type NodeId = Brand<number, 'NodeId'>;

export const seq = (n: number): Seq => n as Seq;
export const ordinal = (n: number): Ordinal => n as Ordinal;
export const timeUs = (n: number): TimeUs => n as TimeUs;
export const byteOffset = (n: number): ByteOffset => n as ByteOffset;
export const nodeIdFromNumber = (n: number): NodeId => n as NodeId;

/** FNV-1a 32-bit hash of a node name: stable across restarts and config reordering. */
export function nodeIdOf(name: string): NodeId {
  let h = 0x811c9dc5;
  for (const b of Buffer.from(name, 'utf8')) {
    h ^= b;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h as NodeId;
}

/** How a node derives a record's write time when the host gives none (DESIGN.md §3.1). */
export type WriteTimeMode = 'host-last' | 'clock' | 'counter';

/**
 * The order key (writeTime, nodeId, nodeOrdinal). Unique and strictly increasing on a node across
 * all its groups, so a write acknowledged before another is issued always has the smaller key.
 */
export interface OrderKey {
  readonly writeTimeUs: TimeUs;
  readonly nodeId: NodeId;
  readonly ordinal: Ordinal;
}

export function compareKeys(a: OrderKey, b: OrderKey): number {
  if (a.writeTimeUs !== b.writeTimeUs) return a.writeTimeUs < b.writeTimeUs ? -1 : 1;
  if (a.nodeId !== b.nodeId) return a.nodeId < b.nodeId ? -1 : 1;
  if (a.ordinal !== b.ordinal) return a.ordinal < b.ordinal ? -1 : 1;
  return 0;
}

/**
 * Kinds of journal record. Values are the on-disk/wire codes: never renumber.
 * - data:   a host write; carries `length` bytes of data.
 * - zero:   WRITE_ZEROES or TRIM of `length` bytes; carries no data (reads back as zeroes).
 * - copy:   initial copy / resync chunk; carries data, takes a seq like data.
 * - marker: consistency marker with a marker number; takes a seq, never applied to a volume.
 * - tick:   idle-group progress ("nothing with a key below K follows seq s"); takes no seq.
 */
export const RecordKind = { data: 1, zero: 2, copy: 3, marker: 4, tick: 5 } as const;
export type RecordKind = (typeof RecordKind)[keyof typeof RecordKind];

export function recordKindName(k: RecordKind): string {
  for (const [name, v] of Object.entries(RecordKind)) if (v === k) return name;
  return `unknown(${k})`;
}

/** True for kinds whose record carries `length` bytes of payload. */
export function kindCarriesData(k: RecordKind): boolean {
  return k === RecordKind.data || k === RecordKind.copy;
}

/** One journal record: the header fields; the payload travels beside it. */
export interface RecordHeader {
  readonly kind: RecordKind;
  readonly group: string;
  readonly seq: Seq;
  /** Effective write time: clamped non-decreasing on the node; first part of the order key. */
  readonly writeTimeUs: TimeUs;
  /** The host's original time when the request carried one, else 0. */
  readonly hostTimeUs: TimeUs;
  readonly nodeId: NodeId;
  readonly ordinal: Ordinal;
  readonly epoch: number;
  /** Volume name ('' for markers and ticks). */
  readonly volume: string;
  /**
   * Byte offset in the volume. A marker record has no range: its `offset` holds the number of the
   * marker before it in the same group (0 if none), so a target can tell a skipped number (a cycle
   * that failed on another node) from a lost marker (markerPrev()).
   */
  readonly offset: ByteOffset;
  /** Bytes of the volume the record covers (payload bytes for data/copy). */
  readonly length: number;
  /** Marker number for marker records, else 0. */
  readonly markerNo: number;
}

/** The marker number before this marker in its group (carried in `offset`); 0 for other kinds. */
export function markerPrev(h: RecordHeader): number {
  return h.kind === RecordKind.marker ? h.offset : 0;
}

export function keyOf(h: RecordHeader): OrderKey {
  return { writeTimeUs: h.writeTimeUs, nodeId: h.nodeId, ordinal: h.ordinal };
}
