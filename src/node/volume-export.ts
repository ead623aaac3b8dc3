/**
 * A node's volume as the front ends see it (VolumeExport): bounds and permission checks, then
 * either the journalled write path (a volume that is the source of a group) or the device alone
 * (a volume in no group, a promoted one). A volume that is the target of a group is exported
 * read-only.
 *
 * Direct writes (writeDirect) keep the write path's ordering: one that overlaps a direct write in
 * flight starts after it (InflightRanges), so the later of two overlapping writes wins, however
 * long the earlier one takes. Zeroing a range is the long one: TRIM and WRITE_ZEROES are not
 * bounded by the request size limit (requests.ts), and one may cover the whole volume. It runs on
 * the thread pool, a piece at a time (BlockDevice.zero), so the node answers other requests, other
 * connections and its API meanwhile; written synchronously it held the event loop for seconds
 * (4 GiB: about 4 s). Node's fs has no fallocate, so a TRIM is a WRITE_ZEROES: the pieces that
 * already read as zero are left as they are (a hole stays a hole), the others get zeroes written
 * (allocated, not punched).
 */
import { RecordKind } from '../core/types.js';
import type { Extent, VolumeExport, WriteOptions, ZeroOptions } from '../frontend/backend.js';
import { appendExtent, BackendError } from '../frontend/backend.js';
import type { BlockDevice } from '../storage/blockdev.js';
import type { VolumeSnapshots } from '../storage/snapshots.js';
import { isZero } from '../storage/zeroes.js';
import { ASYNC_APPLY_BYTES_MIN, InflightRanges, type TrackPort, type WritePath } from './write-path.js';

/**
 * none: in no group, written directly. source: journalled. target: read-only, shows the last
 * completed cut. promoted: a target taken over, written directly (DESIGN.md §3.7). fenced: a
 * source that learned of a higher epoch elsewhere, read-only.
 */
export type VolumeRole =
  | { kind: 'none' }
  | { kind: 'source'; group: string }
  | { kind: 'target'; group: string }
  | { kind: 'promoted'; group: string }
  | { kind: 'fenced'; group: string };

/** Serializes reads with apply cycles, so a target volume is read at a completed cut. */
export interface ReadGate {
  read<T>(f: () => Promise<T>): Promise<T>;
}

/**
 * BLOCK_STATUS by reading: runs of all-zero 4 KiB blocks are reported as zero, everything else as
 * allocated data; at most BLOCK_STATUS_SCAN_BYTES per request.
 */
export async function zeroScanExtents(
  read: (offset: number, length: number) => Promise<Buffer>,
  offset: number,
  length: number,
): Promise<Extent[]> {
  const scan = Math.min(length, BLOCK_STATUS_SCAN_BYTES);
  const buf = await read(offset, scan);
  const extents: Extent[] = [];
  for (let at = 0; at < scan;) {
    const end = Math.min(scan, at + BLOCK_STATUS_GRAIN_BYTES - ((offset + at) % BLOCK_STATUS_GRAIN_BYTES));
    appendExtent(extents, end - at, isZero(buf, at, end) ? STATE_ZERO : 0);
    at = end;
  }
  return extents;
}

/** Zero detection for BLOCK_STATUS looks at most this much per request. */
const BLOCK_STATUS_SCAN_BYTES = 1 << 20;
const BLOCK_STATUS_GRAIN_BYTES = 4096;
const STATE_ZERO = 2;

export class NodeVolume implements VolumeExport {
  private roleNow: VolumeRole;
  /** Set on a target volume by the node: reads wait for the apply cycle in progress. */
  gate: ReadGate | undefined;
  /** Set on a target volume by the node: why its image is half-synced now (reads refused), if it is. */
  halfSynced: (() => string | undefined) | undefined;
  /**
   * Set on a promoted volume by the node: its group's dirty bitmap since the takeover (DESIGN.md
   * §3.7). Each write's bits are durable before the write is applied and acknowledged.
   */
  tracked: TrackPort | undefined;
  /** Set by the node on a target volume: its snapshots, preserved before a direct write (promoted). */
  snapshots: VolumeSnapshots | undefined;
  private readonly direct = new Set<Promise<void>>();
  /** Direct writes in flight, so that overlapping ones land in the order they were submitted. */
  private readonly directRanges = new InflightRanges();

  constructor(
    readonly name: string,
    readonly device: BlockDevice,
    role: VolumeRole,
    private readonly writePath: WritePath,
  ) {
    this.roleNow = role;
  }

  get role(): VolumeRole {
    return this.roleNow;
  }

  /** Takeover and fencing change a volume's role while it is exported; new requests follow it. */
  setRole(role: VolumeRole): void {
    this.roleNow = role;
    if (role.kind !== 'target') this.gate = undefined;
  }

  get readOnly(): boolean {
    return this.roleNow.kind === 'target' || this.roleNow.kind === 'fenced';
  }

  get description(): string {
    const r = this.roleNow;
    return r.kind === 'none' ? 'remcopy volume' : `remcopy ${r.kind} volume of group ${r.group}`;
  }

  get sizeBytes(): number {
    return this.device.sizeBytes;
  }

  read(offset: number, length: number): Promise<Buffer> {
    const bad = this.rangeError(offset, length, 'EINVAL');
    if (bad) return Promise.reject(bad);
    const half = this.roleNow.kind === 'target' ? this.halfSynced?.() : undefined;
    if (half !== undefined) return Promise.reject(new BackendError('EIO', half));
    const read = (): Promise<Buffer> =>
      this.device.read(offset, length).catch((e) => {
        throw new BackendError('EIO', `read failed: ${String(e)}`);
      });
    return this.gate ? this.gate.read(read) : read();
  }

  write(offset: number, data: Buffer, opts: WriteOptions): Promise<void> {
    const bad = this.writeError(offset, data.length);
    if (bad) return Promise.reject(bad);
    return this.submit(RecordKind.data, offset, data.length, data, opts);
  }

  zero(offset: number, length: number, opts: ZeroOptions): Promise<void> {
    const bad = this.writeError(offset, length);
    if (bad) return Promise.reject(bad);
    return this.submit(RecordKind.zero, offset, length, undefined, opts);
  }

  flush(): Promise<void> {
    if (this.roleNow.kind === 'source') return this.writePath.flushGroup(this.roleNow.group, this.device);
    return this.device.sync().catch((e) => {
      throw new BackendError('EIO', `flush failed: ${String(e)}`);
    });
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    const bad = this.rangeError(offset, length, 'EINVAL');
    if (bad) throw bad;
    return zeroScanExtents((o, l) => this.read(o, l), offset, length);
  }

  cache(offset: number, length: number): Promise<void> {
    const bad = this.rangeError(offset, length, 'EINVAL');
    return bad ? Promise.reject(bad) : Promise.resolve();
  }

  private async submit(
    kind: RecordKind,
    offset: number,
    length: number,
    payload: Buffer | undefined,
    opts: WriteOptions,
  ): Promise<void> {
    const end = offset + length;
    if (this.roleNow.kind === 'source') {
      // Just turned source (failback) while a direct write of the range still runs: after it.
      if (this.directRanges.overlaps(offset, end))
        return this.directRanges.run(offset, end, () => this.journalled(kind, offset, length, payload, opts));
      return this.journalled(kind, offset, length, payload, opts);
    }
    const done = this.directRanges.run(offset, end, () =>
      this.writeDirect(kind, offset, length, payload, opts),
    );
    this.direct.add(done);
    try {
      await done;
    } finally {
      this.direct.delete(done);
    }
  }

  private journalled(
    kind: RecordKind,
    offset: number,
    length: number,
    payload: Buffer | undefined,
    opts: WriteOptions,
  ): Promise<void> {
    const role = this.roleNow;
    // A write that waited (see submit) may find the volume fenced meanwhile: read-only.
    if (role.kind !== 'source')
      return Promise.reject(new BackendError('EPERM', `${this.name} is read-only now`));
    return this.writePath.submit({
      group: role.group,
      kind,
      volume: this.name,
      device: this.device,
      offset,
      length,
      payload,
      hostTimeUs: opts.hostTimeUs,
      fua: opts.fua === true,
      payloadStable: opts.payloadStable === true,
    });
  }

  /**
   * A write that does not go through the write path (a promoted volume's, tracked in its bitmap).
   * Its range is marked and preserved before it is changed. Zeroes of ASYNC_APPLY_BYTES_MIN and
   * more go to the thread pool in pieces (see the header); other writes go to the page cache here.
   */
  private async writeDirect(
    kind: RecordKind,
    offset: number,
    length: number,
    payload: Buffer | undefined,
    opts: WriteOptions,
  ): Promise<void> {
    try {
      if (this.roleNow.kind === 'promoted' && this.tracked)
        await this.tracked.mark(this.name, offset, length);
      // Snapshots taken while this was a target keep their image (copy-on-write). A read of one in
      // flight does not hold this write back: it checks the chunks it read from the volume again.
      if (this.snapshots?.needsPreserve(offset, length)) await this.snapshots.preserve([{ offset, length }]);
      if (payload) this.device.writeSync(offset, payload);
      else if (length < ASYNC_APPLY_BYTES_MIN) this.device.zeroSync(offset, length);
      else await this.device.zero(offset, length);
      if (opts.fua) await this.device.sync();
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code === 'ENOSPC' ? 'ENOSPC' : 'EIO';
      throw new BackendError(code, `write failed: ${String(e)}`);
    }
  }

  /** Resolves once every write that bypassed the write path (see writeDirect) is on the volume. */
  async directWritesDone(): Promise<void> {
    await Promise.allSettled([...this.direct]);
  }

  private writeError(offset: number, length: number): BackendError | undefined {
    if (this.readOnly) return new BackendError('EPERM', `${this.name} is read-only on this node`);
    return this.rangeError(offset, length, 'ENOSPC');
  }

  private rangeError(offset: number, length: number, errno: 'EINVAL' | 'ENOSPC'): BackendError | undefined {
    return rangeError(this, offset, length, errno);
  }
}

/**
 * A request's range checked against an export: a bad range is EINVAL, one past the end `errno`.
 * Errors are returned, not thrown, so callers always get a rejected promise.
 */
export function rangeError(
  exp: { readonly name: string; readonly sizeBytes: number },
  offset: number,
  length: number,
  errno: 'EINVAL' | 'ENOSPC',
): BackendError | undefined {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
    return new BackendError('EINVAL', `bad range ${offset}+${length}`);
  }
  if (offset + length > exp.sizeBytes) {
    return new BackendError(
      errno,
      `range ${offset}+${length} is past the end of ${exp.name} (${exp.sizeBytes})`,
    );
  }
  return undefined;
}
