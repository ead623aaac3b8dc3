/**
 * An in-memory VolumeExport and ExportCatalog for front-end tests (NBD server, native protocol).
 *
 * Keeps the data in one Buffer and an allocation map per 4 KiB block so BLOCK_STATUS has holes
 * and zeroes to report. Checks bounds and read-only like a node volume does, with BackendErrors.
 * Optional `latencyMs` delays every operation, so tests can hold requests in flight; counters
 * let tests see what reached the backend.
 */
import type { ExportCatalog, Extent, VolumeExport, WriteOptions, ZeroOptions } from '../frontend/backend.js';
import { appendExtent, BackendError } from '../frontend/backend.js';

export interface MemExportOptions {
  readonly name: string;
  readonly sizeBytes: number;
  readonly description?: string;
  readonly readOnly?: boolean;
  /** Delay before every operation settles. */
  readonly latencyMs?: number;
}

/** Allocation map granule: a block is a hole, allocated zeroes, or data. */
export const MEM_BLOCK_BYTES = 4096;
const BLOCK_HOLE = 0;
const BLOCK_ZERO = 1;
const BLOCK_DATA = 2;
/** NBD base:allocation flags per block state. */
const STATE_FLAGS = [3, 2, 0];

export class MemExport implements VolumeExport {
  readonly name: string;
  readonly description: string;
  readonly sizeBytes: number;
  readonly readOnly: boolean;
  readonly data: Buffer;
  private readonly blocks: Uint8Array;
  private readonly latencyMs: number;
  readonly counts = { read: 0, write: 0, fuaWrite: 0, zero: 0, punch: 0, flush: 0, blockStatus: 0, cache: 0 };

  constructor(opts: MemExportOptions) {
    if (!Number.isSafeInteger(opts.sizeBytes) || opts.sizeBytes < 0) throw new Error('bad sizeBytes');
    this.name = opts.name;
    this.description = opts.description ?? `memory export ${opts.name}`;
    this.sizeBytes = opts.sizeBytes;
    this.readOnly = opts.readOnly === true;
    this.latencyMs = opts.latencyMs ?? 0;
    this.data = Buffer.alloc(opts.sizeBytes);
    this.blocks = new Uint8Array(Math.ceil(opts.sizeBytes / MEM_BLOCK_BYTES));
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.checkRange(offset, length, 'EINVAL');
    await this.delay();
    this.counts.read++;
    return Buffer.from(this.data.subarray(offset, offset + length));
  }

  async write(offset: number, data: Buffer, opts: WriteOptions): Promise<void> {
    this.checkWritable(offset, data.length);
    await this.delay();
    data.copy(this.data, offset);
    this.mark(offset, data.length, BLOCK_DATA, false);
    this.counts.write++;
    if (opts.fua) this.counts.fuaWrite++;
  }

  async zero(offset: number, length: number, opts: ZeroOptions): Promise<void> {
    this.checkWritable(offset, length);
    await this.delay();
    this.data.fill(0, offset, offset + length);
    this.mark(offset, length, opts.punchHole ? BLOCK_HOLE : BLOCK_ZERO, true);
    this.counts.zero++;
    if (opts.punchHole) this.counts.punch++;
  }

  async flush(): Promise<void> {
    await this.delay();
    this.counts.flush++;
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    this.checkRange(offset, length, 'EINVAL');
    await this.delay();
    this.counts.blockStatus++;
    const end = offset + length;
    const extents: Extent[] = [];
    for (let at = offset; at < end;) {
      const block = Math.floor(at / MEM_BLOCK_BYTES);
      const next = Math.min(end, (block + 1) * MEM_BLOCK_BYTES);
      appendExtent(extents, next - at, STATE_FLAGS[this.blocks[block] ?? BLOCK_DATA] ?? 0);
      at = next;
    }
    return extents;
  }

  async cache(offset: number, length: number): Promise<void> {
    this.checkRange(offset, length, 'EINVAL');
    await this.delay();
    this.counts.cache++;
  }

  /** Set the state of blocks in range; partly covered blocks become data unless `zeroing` them. */
  private mark(offset: number, length: number, state: number, zeroing: boolean): void {
    const end = offset + length;
    for (let b = Math.floor(offset / MEM_BLOCK_BYTES); b * MEM_BLOCK_BYTES < end; b++) {
      const whole = b * MEM_BLOCK_BYTES >= offset && (b + 1) * MEM_BLOCK_BYTES <= end;
      if (whole) this.blocks[b] = state;
      else if (!zeroing || this.blocks[b] !== BLOCK_HOLE) this.blocks[b] = BLOCK_DATA;
    }
  }

  private checkRange(offset: number, length: number, errno: 'EINVAL' | 'ENOSPC'): void {
    if (offset < 0 || length < 0 || offset + length > this.sizeBytes) {
      throw new BackendError(errno, `range ${offset}+${length} outside ${this.sizeBytes} bytes`);
    }
  }

  private checkWritable(offset: number, length: number): void {
    if (this.readOnly) throw new BackendError('EPERM', `${this.name} is read-only`);
    this.checkRange(offset, length, 'ENOSPC');
  }

  private delay(): Promise<void> | undefined {
    if (this.latencyMs <= 0) return undefined;
    return new Promise((resolve) => setTimeout(resolve, this.latencyMs));
  }
}

/** A catalog over a fixed set of exports. */
export class MemCatalog implements ExportCatalog {
  private readonly byName = new Map<string, VolumeExport>();

  constructor(exports: readonly VolumeExport[] = []) {
    for (const e of exports) this.add(e);
  }

  add(exp: VolumeExport): this {
    this.byName.set(exp.name, exp);
    return this;
  }

  list(): readonly VolumeExport[] {
    return [...this.byName.values()];
  }

  get(name: string): VolumeExport | undefined {
    return this.byName.get(name);
  }
}
