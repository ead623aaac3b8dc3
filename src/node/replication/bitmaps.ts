/**
 * A group's dirty bitmaps on a node, with their file (storage/bitmap-file.ts) and the resync
 * tracker over them (core/resync.ts). Persisting is a group commit: every caller of durable() waits
 * for one file write that holds its change, and one write serves all that were waiting.
 *
 * The rule (issue 4): a bit is durable before the write it covers is acknowledged (mark()), and
 * cleared only once the target holds the chunk durably (the tracker's acked()); clearing is
 * persisted lazily, since a bit found set after a crash costs one chunk copied again, nothing more.
 */
import { join } from 'node:path';
import type { DirtyBitmap } from '../../core/dirty-bitmap.js';
import { ResyncTracker } from '../../core/resync.js';
import { seq } from '../../core/types.js';
import type { VolumeGeometry } from '../../storage/bitmap-file.js';
import { readBitmapFile, writeBitmapFile } from '../../storage/bitmap-file.js';
import type { Journal } from '../../storage/journal.js';
import type { GroupConfig, NodeConfig } from '../config.js';

/** Bytes of records read at a time by markJournalled. */
const READ_BYTES = 8 * 1024 * 1024;

/** Bytes of a volume to mark dirty. */
export interface Range {
  readonly volume: string;
  readonly offset: number;
  readonly length: number;
}

export class GroupBitmaps {
  readonly maps: Map<string, DirtyBitmap>;
  readonly tracker: ResyncTracker;
  readonly file: string;
  private persistedGeneration: number;
  private persisting: Promise<void> | undefined;

  constructor(
    dataDir: string,
    readonly group: string,
    readonly chunkBytes: number,
    volumes: readonly VolumeGeometry[],
  ) {
    this.file = join(dataDir, 'bitmaps', `${group}.bmp`);
    this.maps = readBitmapFile(this.file, group, chunkBytes, volumes);
    this.tracker = new ResyncTracker([...this.maps].map(([volume, bitmap]) => ({ volume, bitmap })));
    this.persistedGeneration = this.generation;
  }

  /** Grows with every bit set or cleared in any of the group's bitmaps. */
  get generation(): number {
    let n = 0;
    for (const bm of this.maps.values()) n += bm.generation;
    return n;
  }

  get dirtyBytes(): number {
    return this.tracker.dirtyBytes;
  }

  /** A write that is not journalled changed the range: resolves once its bits are durable. */
  mark(volume: string, offset: number, length: number): Promise<void> {
    this.tracker.markWrite(volume, offset, length);
    return this.durable();
  }

  /** Marks whole ranges at once (failback: chunks that differ from the peer); durable on return. */
  markAll(ranges: Iterable<Range>): Promise<void> {
    this.track(ranges);
    return this.durable();
  }

  private track(ranges: Iterable<Range>): void {
    for (const r of ranges) if (this.maps.has(r.volume)) this.tracker.markWrite(r.volume, r.offset, r.length);
  }

  /**
   * Marks the ranges of the records of `group` that `journal` retains past `afterSeq` (volumes
   * named by `volumeOf`, which skips a record by giving undefined), once every record appended so
   * far is written: readRetained stops short of the first that is not, and a range left out would
   * be a chunk that differs from the peer unmarked. `also`: more ranges, marked with them in the
   * same bitmap write. Durable on return.
   */
  async markJournalled(
    journal: Journal,
    group: string,
    afterSeq: number,
    volumeOf: (volume: string) => string | undefined = (v) => v,
    also: Iterable<Range> = [],
  ): Promise<void> {
    await journal.whenWritten();
    this.track(also);
    return this.markAll(journalledRanges(journal, group, afterSeq, volumeOf));
  }

  /** Resolves once the file holds every change made before the call. */
  async durable(): Promise<void> {
    const want = this.generation;
    while (this.persistedGeneration < want) {
      if (this.persisting === undefined) {
        const gen = this.generation;
        this.persisting = writeBitmapFile(this.file, this.group, this.chunkBytes, this.maps)
          .then(() => {
            this.persistedGeneration = Math.max(this.persistedGeneration, gen);
          })
          .finally(() => (this.persisting = undefined));
      }
      await this.persisting;
    }
  }
}

/** The group's bitmaps over `node`'s own volumes of it (source volumes on its source, else target). */
export function bitmapsOn(node: NodeConfig, g: GroupConfig): GroupBitmaps {
  const mine = g.source === node.name ? [...g.pairs.keys()] : [...g.pairs.values()];
  const volumes = mine.map((name) => ({ name, sizeBytes: node.volumes.get(name)!.sizeBytes }));
  return new GroupBitmaps(node.dataDir, g.name, g.bitmapChunkBytes, volumes);
}

function* journalledRanges(
  journal: Journal,
  group: string,
  afterSeq: number,
  volumeOf: (volume: string) => string | undefined,
): Generator<Range> {
  let from = Math.max(afterSeq, journal.releasedSeq(group)) + 1;
  while (from <= journal.lastSeq(group)) {
    const recs = journal.readRetained(group, seq(from), READ_BYTES);
    if (recs.length === 0) return;
    for (const { header: h } of recs) {
      const volume = volumeOf(h.volume);
      if (volume !== undefined && h.length > 0) yield { volume, offset: h.offset, length: h.length };
    }
    from = recs[recs.length - 1]!.header.seq + 1;
  }
}
