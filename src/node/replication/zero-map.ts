/**
 * Which chunks of a volume are known to read as zero without reading them: all of a volume this
 * process created (a new sparse file), until something writes into a chunk. The initial copy
 * journals such chunks as zero records without reading them, and the target skips zero records
 * over them: reading 1 TiB of holes costs time and fills the page cache for nothing. Lost at a
 * restart (then the copy reads, as for any existing volume).
 */
export const ZERO_MAP_CHUNK_BYTES = 1024 * 1024;

export class ZeroMap {
  /** One bit per chunk: set = something may have written into it. */
  private readonly touched: Uint8Array;

  constructor(readonly sizeBytes: number) {
    this.touched = new Uint8Array(Math.ceil(Math.ceil(sizeBytes / ZERO_MAP_CHUNK_BYTES) / 8));
  }

  /** A write may have changed bytes in [offset, offset + length). */
  touch(offset: number, length: number): void {
    if (length <= 0) return;
    const last = Math.floor((offset + length - 1) / ZERO_MAP_CHUNK_BYTES);
    for (let c = Math.floor(offset / ZERO_MAP_CHUNK_BYTES); c <= last; c++)
      this.touched[c >> 3]! |= 1 << (c & 7);
  }

  /** True when every byte of the range is known to read as zero. */
  knownZero(offset: number, length: number): boolean {
    if (length <= 0) return true;
    const last = Math.floor((offset + length - 1) / ZERO_MAP_CHUNK_BYTES);
    for (let c = Math.floor(offset / ZERO_MAP_CHUNK_BYTES); c <= last; c++) {
      if ((this.touched[c >> 3]! & (1 << (c & 7))) !== 0) return false;
    }
    return true;
  }
}
