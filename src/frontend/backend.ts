/**
 * The contract between host-facing front ends (NBD server, native host protocol) and a node's
 * volumes. Front ends parse and validate requests and map results to protocol errors; everything
 * behind this interface (sequencer, journal, volume file) belongs to src/node.
 *
 * Ordering contract: when a write/zero promise resolves, the write is journalled (page-cache
 * durable at least) and visible to every later read on any connection. When `flush()` resolves,
 * every write resolved before flush() was called is durable (journal fsynced). A write with
 * `fua: true` is durable when it resolves. Rejections are `BackendError`s, never other throws.
 * A write may keep using `data` (on the thread pool) until its promise settles: front ends must
 * not reuse or change that buffer before then.
 */
import type { TimeUs } from '../core/types.js';

export type BackendErrno = 'EINVAL' | 'ENOSPC' | 'EPERM' | 'EIO' | 'ENOTSUP' | 'ESHUTDOWN';

export class BackendError extends Error {
  override name = 'BackendError';
  constructor(
    readonly errno: BackendErrno,
    message: string,
  ) {
    super(message);
  }
}

export interface Extent {
  /** Length in bytes. */
  readonly length: number;
  /** NBD base:allocation flags: bit 0 = hole, bit 1 = reads as zero. */
  readonly flags: number;
}

/** Appends a run to a BLOCK_STATUS answer, merging it into the last extent when the flags match. */
export function appendExtent(extents: Extent[], length: number, flags: number): void {
  const last = extents[extents.length - 1];
  if (last && last.flags === flags) extents[extents.length - 1] = { length: last.length + length, flags };
  else extents.push({ length, flags });
}

export interface WriteOptions {
  /** Durable before the promise resolves. */
  readonly fua?: boolean;
  /** Host write time (native protocol only); becomes the record's host time. */
  readonly hostTimeUs?: TimeUs;
  /**
   * The caller never changes `data` after this call (a front end's receive buffer): whatever keeps
   * the bytes past the write's answer may keep `data` itself. Otherwise (the default) it keeps a
   * copy, as the caller may reuse the buffer once the write is answered.
   */
  readonly payloadStable?: boolean;
}

export interface ZeroOptions extends WriteOptions {
  /** Deallocation allowed (TRIM, or WRITE_ZEROES without NO_HOLE). */
  readonly punchHole: boolean;
}

export interface VolumeExport {
  readonly name: string;
  readonly description: string;
  readonly sizeBytes: number;
  readonly readOnly: boolean;

  read(offset: number, length: number): Promise<Buffer>;
  write(offset: number, data: Buffer, opts: WriteOptions): Promise<void>;
  /** Zero a range (WRITE_ZEROES, TRIM). */
  zero(offset: number, length: number, opts: ZeroOptions): Promise<void>;
  flush(): Promise<void>;
  /** Allocation status from `offset`, covering at most `length` bytes, at least one extent. */
  blockStatus(offset: number, length: number): Promise<Extent[]>;
  /** Read-ahead hint (NBD_CMD_CACHE). May be a no-op. */
  cache(offset: number, length: number): Promise<void>;
}

/** What a front end serves: the node's exports, looked up by name per connection. */
export interface ExportCatalog {
  list(): readonly VolumeExport[];
  get(name: string): VolumeExport | undefined;
}
