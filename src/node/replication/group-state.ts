/**
 * What a node remembers about each of its groups beyond the journal (DESIGN.md §3.6, §3.7): the
 * epoch, a role that overrides the config after a takeover (`promoted` on the old target, `fenced`
 * on an old source that learned a higher epoch), and on a source the initial copy's progress.
 * Stored in `<dataDir>/groups.json`, written durably before the change takes effect.
 */
import * as z from 'zod';
import { join } from 'node:path';
import { readJsonFile, writeJsonDurable } from '../../storage/state-file.js';

const copySchema = z.object({
  /** `copy` while chunks are still to be journalled, `pair` once all are. */
  state: z.enum(['copy', 'pair']),
  /** Index of the pair (in config order) and byte offset the copy continues at. */
  pairIndex: z.number().int().nonnegative(),
  offset: z.number().int().nonnegative(),
  /** Seq of the copy's last record (0 until the copy is journalled). */
  copyEndSeq: z.number().int().nonnegative(),
  bytesDone: z.number().int().nonnegative(),
  bytesTotal: z.number().int().nonnegative(),
});

/**
 * On a source: a suspension (DESIGN.md §3.6) and the delta resync after it. `suspended` while
 * writes are tracked in the dirty bitmap; `resync` while the dirty chunks are being journalled as
 * copy records; `pair` once all are (the target is consistent again when it has applied
 * `resyncEndSeq`). `redoFloor`: the group's records up to this seq were durable in the volumes when
 * the suspension began, so a restart does not redo them (they would overwrite tracked writes).
 */
const deltaSchema = z.object({
  state: z.enum(['suspended', 'resync', 'pair']),
  reason: z.string(),
  since: z.string(),
  /**
   * No later than the first write the target lacks that no record carries (a tracked one): lag
   * figures count from it after a restart. Absent in files from before it: `since` then.
   */
  behindSince: z.string().optional(),
  redoFloor: z.number().int().nonnegative(),
  resyncEndSeq: z.number().int().nonnegative(),
  resyncs: z.number().int().nonnegative(),
});

const groupSchema = z.object({
  epoch: z.number().int().min(1).max(0xffffffff),
  role: z.enum(['promoted', 'fenced']).optional(),
  reason: z.string().optional(),
  /**
   * The node that is the group's source since the last failback, when that is not the config's
   * source: source and target swap roles (config.ts effectiveTopology). Both nodes record it.
   */
  source: z.string().optional(),
  /**
   * On a target being taken over at snapshot `marker` of its set: its volumes are being put back
   * to that snapshot; then the group is promoted at `epoch` with takeoverSeq `seq` (the marker's).
   * A restart finishes the job before anything else uses the volumes.
   */
  rollback: z
    .object({
      marker: z.number().int().positive(),
      seq: z.number().int().nonnegative(),
      epoch: z.number().int().min(1).max(0xffffffff),
    })
    .optional(),
  /** On a promoted target: the seq its takeover applied up to (later records were never applied). */
  takeoverSeq: z.number().int().nonnegative().optional(),
  /**
   * On a target promoted at a snapshot of its set (a set takeover): that snapshot's marker. The
   * other groups of the set must be taken over at the same one to make one image with it.
   */
  takeoverMarker: z.number().int().positive().optional(),
  /**
   * On an old source being failed back: it was fenced at `epoch`, its host writes were drained and
   * its dirty set (bitmap plus unshipped records) persisted in its bitmap file; `lastSeq` was the
   * group's last journalled seq then. Kept until the new source holds that dirty set.
   */
  demoted: z
    .object({
      epoch: z.number().int().min(1),
      lastSeq: z.number().int().nonnegative(),
      /** Once it accepted the new source: the seq that source continues after. */
      base: z.number().int().nonnegative().optional(),
    })
    .optional(),
  /** On a source: the initial copy. */
  copy: copySchema.optional(),
  /** On a source: suspension and resync. */
  delta: deltaSchema.optional(),
  /**
   * On a target: the source's last PAIR_STATE. `after` names what the copy up to copyEndSeq was
   * (the initial copy or a resync), for status.
   */
  announced: z
    .object({
      state: z.enum(['copy', 'pair', 'resync', 'suspended']),
      copyEndSeq: z.number().int().nonnegative(),
      after: z.enum(['copy', 'resync']).optional(),
    })
    .optional(),
});

const fileSchema = z.object({ version: z.literal(1), groups: z.record(z.string(), groupSchema) });

export type CopyProgress = z.infer<typeof copySchema>;
export type DeltaState = z.infer<typeof deltaSchema>;
export type GroupRecord = z.infer<typeof groupSchema>;

export const GROUP_STATE_FILE = 'groups.json';

export class GroupStateStore {
  private readonly groups: Map<string, GroupRecord>;
  readonly file: string;

  constructor(dataDir: string) {
    this.file = join(dataDir, GROUP_STATE_FILE);
    const loaded = readJsonFile(this.file, (v) => {
      const r = fileSchema.safeParse(v);
      return r.success ? r.data : r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ');
    });
    this.groups = new Map(Object.entries(loaded?.groups ?? {}));
  }

  has(group: string): boolean {
    return this.groups.has(group);
  }

  get(group: string): GroupRecord {
    return this.groups.get(group) ?? { epoch: 1 };
  }

  epoch(group: string): number {
    return this.get(group).epoch;
  }

  /**
   * Applies `patch` to the group and resolves once the file holds it. A key given as undefined is
   * removed.
   */
  async update(group: string, patch: Partial<GroupRecord>): Promise<GroupRecord> {
    const next: GroupRecord = { ...this.get(group), ...patch };
    for (const k of Object.keys(next) as (keyof GroupRecord)[]) if (next[k] === undefined) delete next[k];
    this.groups.set(group, next);
    await writeJsonDurable(this.file, { version: 1, groups: Object.fromEntries(this.groups) });
    return next;
  }
}
