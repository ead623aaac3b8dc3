/**
 * A snapshot of a target volume as the front ends see it: `VOLUME@N`, read-only, the volume's
 * image at marker N (DESIGN.md §3.4, §5 exports), kept after a takeover. A read is that image even
 * while the live volume is written: VolumeSnapshots.read checks again the chunks it took from the
 * live volume and reads those preserved meanwhile from the snapshot (snapshots.ts, "Reads while the
 * live volume is written"). That is what protects a promoted volume's exports, whose host writes
 * go on during a read. A target volume's reads also wait for its apply cycle (the gate), as the
 * volume's own reads do; correctness does not rest on it.
 */
import type { Extent, VolumeExport } from '../frontend/backend.js';
import { BackendError } from '../frontend/backend.js';
import type { VolumeSnapshots } from '../storage/snapshots.js';
import type { NodeVolume } from './volume-export.js';
import { rangeError, zeroScanExtents } from './volume-export.js';

export class SnapshotExport implements VolumeExport {
  readonly readOnly = true;

  constructor(
    private readonly volume: NodeVolume,
    readonly snapshots: VolumeSnapshots,
    readonly number: number,
  ) {}

  get name(): string {
    return `${this.volume.name}@${this.number}`;
  }

  get description(): string {
    return `remcopy snapshot of ${this.volume.name} at marker ${this.number}`;
  }

  get sizeBytes(): number {
    return this.volume.sizeBytes;
  }

  read(offset: number, length: number): Promise<Buffer> {
    const bad = rangeError(this, offset, length, 'EINVAL');
    if (bad) return Promise.reject(bad);
    const read = (): Promise<Buffer> =>
      this.snapshots.read(this.number, offset, length).catch((e) => {
        throw new BackendError('EIO', `${this.name}: ${(e as Error).message}`);
      });
    return this.volume.gate ? this.volume.gate.read(read) : read();
  }

  write(): Promise<void> {
    return Promise.reject(new BackendError('EPERM', `${this.name} is a read-only snapshot`));
  }

  zero(): Promise<void> {
    return this.write();
  }

  flush(): Promise<void> {
    return Promise.resolve();
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    const bad = rangeError(this, offset, length, 'EINVAL');
    if (bad) throw bad;
    return zeroScanExtents((o, l) => this.read(o, l), offset, length);
  }

  cache(offset: number, length: number): Promise<void> {
    const bad = rangeError(this, offset, length, 'EINVAL');
    return bad ? Promise.reject(bad) : Promise.resolve();
  }
}
