/**
 * The apply coordinator and applier of one consistency set at the target (DESIGN.md §3.3; patent
 * fig 9): takes the set's cut, applies every record up to it from the target journals to the
 * target volumes, and at checkpoints makes them durable and releases the records.
 *
 *   kick() --> planCycle --cycle--> persist {checkpoint, cutPlanned} --> [reads wait] apply per
 *              group in seq order, completeCycle in memory [reads go on: they see the new cut]
 *              --> report the applied seq to the source
 *   checkpoint (every CHECKPOINT_MS while cycles run, CHECKPOINT_MS after the last one, when a
 *              journal fills, at takeover and stop) --> sync volumes --> persist {checkpoint =
 *              the cut completed, no cutPlanned} --> release records (arrival + journal) up to it
 *
 * Crash safety: the apply state file (`<dataDir>/apply/<set>.json`) holds the last checkpoint
 * (cut, seq applied per group) and the cut planned latest, written before any record of that cycle
 * touches a volume. Records after the checkpoint stay in the journals. After a crash the node
 * re-plans from the checkpoint up to exactly the planned cut and re-applies it (idempotent), so the
 * volumes reach the latest cut any reader could have seen: cuts never go back. Readers of the
 * target volumes (NBD, verify) go through `gate`, which holds them while a cycle writes, so they only
 * ever see a completed cut. Syncing the volumes at checkpoints rather than every cycle keeps the
 * disk from constant writeback, which slows every other writer on it several times over.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import * as z from 'zod';
import { join } from 'node:path';
import type { ApplyState, CyclePlan, GroupPlan } from '../../core/apply-plan.js';
import { completeCycle, initialApplyState, planCycle, waitingAtMarker } from '../../core/apply-plan.js';
import type { GroupArrival } from '../../core/arrival.js';
import { RemcopyError } from '../../core/errors.js';
import type { OrderKey, Seq } from '../../core/types.js';
import { kindCarriesData, nodeIdFromNumber, ordinal, RecordKind, seq, timeUs } from '../../core/types.js';
import type { BlockDevice } from '../../storage/blockdev.js';
import type { Journal } from '../../storage/journal.js';
import type { VolumeSnapshots } from '../../storage/snapshots.js';
import { readJsonFile, writeJsonDurable } from '../../storage/state-file.js';
import { failpoint } from '../failpoint.js';
import type { Log } from '../log.js';
import { applyToDevice, ASYNC_APPLY_BYTES_MIN } from '../write-path.js';
import type { KeptRecord, RecentRecords } from './recent.js';
import type { ZeroMap } from './zero-map.js';

/** Cycles start at most this often (see loop()). */
export const CYCLE_MIN_MS = 20;
/** Volumes are synced and records released at least this often while cycles run. */
export const CHECKPOINT_MS = 500;
/** ...and at once when a group's target journal is fuller than this fraction. */
const CHECKPOINT_JOURNAL_FRACTION = 0.25;
/** A cycle reaches at most this many records per group, so readers never wait long. */
export const CYCLE_RECORDS_PER_GROUP_MAX = 8192;
/** Bytes read from a target journal per call while applying. */
const APPLY_READ_BYTES = 16 * 1024 * 1024;

/** What the coordinator needs of one incoming group. */
export interface ApplyGroup {
  readonly name: string;
  readonly arrival: GroupArrival;
  readonly journal: Journal;
  /** Source volume name (as in the records) -> target device. */
  readonly devices: ReadonlyMap<string, BlockDevice>;
  /** Source volume name -> what is known zero on its target device (volumes created now). */
  readonly zeroMaps: ReadonlyMap<string, ZeroMap>;
  /** Records received since the last apply, kept to apply without reading the journal. */
  readonly recent: RecentRecords;
  /** Source volume name -> the snapshots of its target volume (copy-on-write before applying). */
  readonly snapshots?: ReadonlyMap<string, VolumeSnapshots>;
  /** Called after a cycle raised the group's applied seq. */
  onApplied(seqApplied: Seq): void;
  /** Called after a checkpoint released the group's records up to `seqReleased` (arrival, journal). */
  onReleased(seqReleased: Seq): void;
}

/** Readers wait while a cycle writes the volumes; a cycle waits for readers in progress. */
export class CutGate {
  private cycle: Promise<void> | null = null;
  private readers = 0;
  private readersIdle: (() => void) | null = null;

  async read<T>(f: () => Promise<T>): Promise<T> {
    while (this.cycle !== null) await this.cycle;
    this.readers++;
    try {
      return await f();
    } finally {
      if (--this.readers === 0 && this.readersIdle) this.readersIdle();
    }
  }

  async exclusive(f: () => Promise<void>): Promise<void> {
    let done!: () => void;
    while (this.cycle !== null) await this.cycle;
    this.cycle = new Promise((r) => (done = r));
    try {
      if (this.readers > 0) await new Promise<void>((r) => (this.readersIdle = r));
      this.readersIdle = null;
      await f();
    } finally {
      this.cycle = null;
      done();
    }
  }
}

const keySchema = z.object({
  writeTimeUs: z.number().int().nonnegative(),
  nodeId: z.number().int().nonnegative(),
  ordinal: z.number().int().nonnegative(),
});
const fileSchema = z.object({
  version: z.literal(1),
  cutCompleted: keySchema.nullable(),
  cutPlanned: keySchema.nullable(),
  groups: z.record(
    z.string(),
    z.object({
      seqApplied: z.number().int().nonnegative(),
      keyApplied: keySchema.nullable(),
      /** The last marker number within the applied records; null when not known (after a reset). */
      markerReached: z.number().int().nonnegative().nullable().default(0),
    }),
  ),
});
type KeyJson = z.infer<typeof keySchema>;

const toKey = (k: KeyJson | null): OrderKey | undefined =>
  k === null
    ? undefined
    : { writeTimeUs: timeUs(k.writeTimeUs), nodeId: nodeIdFromNumber(k.nodeId), ordinal: ordinal(k.ordinal) };
const fromKey = (k: OrderKey | undefined): KeyJson | null =>
  k === undefined ? null : { writeTimeUs: k.writeTimeUs, nodeId: k.nodeId, ordinal: k.ordinal };

/** The persisted apply state of a set: the core's ApplyState plus the key of each seqApplied. */
export interface SavedApply {
  readonly state: ApplyState;
  readonly keyApplied: ReadonlyMap<string, OrderKey | undefined>;
}

export function applyStateFile(dataDir: string, set: string): string {
  return join(dataDir, 'apply', `${set}.json`);
}

/** Loads a set's apply state; groups new to the set start at seq 0. */
export function loadApplyState(file: string, groups: readonly string[]): SavedApply {
  const saved = readJsonFile(file, (v) => {
    const r = fileSchema.safeParse(v);
    return r.success ? r.data : r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ');
  });
  if (saved === undefined) {
    return { state: initialApplyState(groups), keyApplied: new Map(groups.map((g) => [g, undefined])) };
  }
  return {
    state: {
      cutCompleted: toKey(saved.cutCompleted),
      cutPlanned: toKey(saved.cutPlanned),
      seqApplied: new Map(groups.map((g) => [g, seq(saved.groups[g]?.seqApplied ?? 0)])),
      markerReached: new Map(groups.map((g) => [g, saved.groups[g]?.markerReached ?? undefined])),
    },
    keyApplied: new Map(groups.map((g) => [g, toKey(saved.groups[g]?.keyApplied ?? null)])),
  };
}

/**
 * Starts a set's apply state over (failback, DESIGN.md §3.7): no cut yet, each group applied up to
 * the seq its new source continues after. Durable on return.
 */
export function resetApplyState(file: string, seqApplied: ReadonlyMap<string, number>): Promise<void> {
  return writeJsonDurable(file, {
    version: 1,
    cutCompleted: null,
    cutPlanned: null,
    // The key of a seq applied is known only as "before every key to come": the least key.
    groups: Object.fromEntries(
      [...seqApplied].map(([g, sq]) => [
        g,
        {
          seqApplied: sq,
          keyApplied: sq === 0 ? null : { writeTimeUs: 0, nodeId: 0, ordinal: 0 },
          // The new source numbers its markers on from its own last one.
          markerReached: null,
        },
      ]),
    ),
  });
}

/** Where a coordinator's marker stops are decided (set-markers.ts). */
export interface MarkerPort {
  /** Markers up to this number are passed; groups stop at the first above it. */
  readonly markersReleased: number;
  /** Called after cycles ran: groups may now wait at a marker. */
  onProgress(): void;
}

export interface CoordinatorStats {
  cycles: number;
  recordsApplied: number;
  bytesApplied: number;
  lastCycleMs: number;
  lastCutAtMs: number;
  checkpoints: number;
}

export class ApplyCoordinator {
  readonly gate = new CutGate();
  /** In memory: the cut readers see; cycles plan from it. */
  private state: ApplyState;
  private readonly keyApplied: Map<string, OrderKey | undefined>;
  /** The last checkpoint: what the file holds as completed (volumes durable up to it). */
  private durable: ApplyState;
  private durableKeys: Map<string, OrderKey | undefined>;
  private lastCheckpointMs = performance.now();
  private checkpointTimer: NodeJS.Timeout | undefined;
  private lastCycleStartMs = Number.NEGATIVE_INFINITY;
  private groups: ApplyGroup[];
  private running: Promise<void> | null = null;
  private again = false;
  private stopped = false;
  failure: Error | undefined;
  /** A marker that does not follow its group's last one stopped a group here (see apply-plan.ts). */
  abnormal: string | undefined;
  /** Set by the node when markers stop this set's groups (DESIGN.md §3.4). */
  markers: MarkerPort | undefined;
  readonly stats: CoordinatorStats = {
    cycles: 0,
    recordsApplied: 0,
    bytesApplied: 0,
    lastCycleMs: 0,
    lastCutAtMs: 0,
    checkpoints: 0,
  };

  constructor(
    readonly set: string,
    private readonly file: string,
    groups: readonly ApplyGroup[],
    saved: SavedApply,
    private readonly log: Log,
  ) {
    this.groups = [...groups];
    this.state = saved.state;
    this.keyApplied = new Map(saved.keyApplied);
    this.durable = { ...saved.state, cutPlanned: undefined };
    this.durableKeys = new Map(saved.keyApplied);
  }

  get cutCompleted(): OrderKey | undefined {
    return this.state.cutCompleted;
  }
  seqApplied(group: string): Seq {
    return this.state.seqApplied.get(group) ?? seq(0);
  }
  keyAppliedOf(group: string): OrderKey | undefined {
    return this.keyApplied.get(group);
  }
  get groupNames(): string[] {
    return this.groups.map((g) => g.name);
  }
  /** Groups that wait at a marker above `released`, with its number. */
  waitingAtMarker(released: number): Map<string, number> {
    return waitingAtMarker(this.state, released);
  }

  /**
   * After a crash in a cycle: the cycle the state file pins (cutPlanned) may be partly on the
   * volumes, and the cycles since the last checkpoint wholly (their records were applied, not yet
   * checkpointed), so the volumes show no cut until that cycle is applied again. The node calls
   * this before it serves the volumes (TargetReplicator.open): a reader in between would read
   * records past the completed cut (the demo once saw 42 transfers half done at a live cut).
   */
  async redoInterrupted(): Promise<void> {
    if (this.state.cutPlanned === undefined) return;
    await this.guarded(() => this.cycle());
  }

  /** A checkpoint, as the coordinator's only activity (markers: volumes durable at the marker). */
  checkpointNow(): Promise<void> {
    return this.guarded(() => this.checkpoint());
  }

  /** Runs cycles until nothing more can be applied; a kick during a run causes another pass. */
  kick(): void {
    if (this.stopped || this.failure) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = this.loop().finally(() => (this.running = null));
  }

  /** Resolves when no cycle is running (after the current one and any pass a kick asked for). */
  async idle(): Promise<void> {
    while (this.running) await this.running;
  }

  /** Applies every cut that can complete now, until none is left (takeover's "finish the cut"). */
  async finish(): Promise<void> {
    await this.idle();
    this.kick();
    await this.idle();
    if (this.failure) throw this.failure;
    await this.guarded(() => this.checkpoint());
  }

  /**
   * Runs `f` as the coordinator's only activity: no cycle runs beside it (a kick meanwhile is
   * remembered and runs after). A checkpoint beside a cycle could persist a checkpoint that
   * unpins the cycle's cut, or release records the file still names.
   */
  private async guarded<T>(f: () => Promise<T>): Promise<T> {
    while (this.running) await this.idle();
    const p = f();
    this.running = p
      .then(
        () => {},
        () => {},
      )
      .finally(() => {
        this.running = null;
        if (this.again) {
          this.again = false;
          this.kick();
        }
      });
    return p;
  }

  /** Removes a group from the set (it was taken over on its own): the others go on without it. */
  remove(group: string): Promise<{ seqApplied: Seq; cut: OrderKey | undefined }> {
    return this.guarded(() => this.removeNow(group));
  }

  private async removeNow(group: string): Promise<{ seqApplied: Seq; cut: OrderKey | undefined }> {
    await this.checkpoint();
    const end = { seqApplied: this.seqApplied(group), cut: this.state.cutCompleted };
    this.groups = this.groups.filter((g) => g.name !== group);
    const without = (st: ApplyState): ApplyState => {
      const seqApplied = new Map(st.seqApplied);
      const markerReached = new Map(st.markerReached);
      seqApplied.delete(group);
      markerReached.delete(group);
      return { ...st, seqApplied, markerReached };
    };
    this.state = without(this.state);
    this.durable = without(this.durable);
    this.keyApplied.delete(group);
    this.durableKeys.delete(group);
    await this.persist(this.durable, this.durableKeys);
    return end;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.idle();
    clearTimeout(this.checkpointTimer);
    if (this.failure) return;
    await this.guarded(() => this.checkpoint()).catch((e) =>
      this.log('error', 'checkpoint at stop failed', { error: String(e) }),
    );
  }

  /**
   * Makes the cut readers see durable: sync the volumes, persist it as the checkpoint, release the
   * records up to it. A no-op when nothing was applied since the last one.
   */
  async checkpoint(): Promise<void> {
    clearTimeout(this.checkpointTimer);
    this.checkpointTimer = undefined;
    const point: ApplyState = { ...this.state, cutPlanned: undefined };
    const keys = new Map(this.keyApplied);
    const moved = [...point.seqApplied].some(([g, sq]) => sq > (this.durable.seqApplied.get(g) ?? 0));
    if (!moved) return;
    this.lastCheckpointMs = performance.now();
    const devices = new Set(this.groups.flatMap((g) => [...g.devices.values()]));
    await Promise.all([...devices].map((d) => d.sync()));
    await this.persist(point, keys);
    this.durable = point;
    this.durableKeys = keys;
    for (const g of this.groups) {
      const upTo = point.seqApplied.get(g.name)!;
      if (upTo > g.arrival.seqReleased) {
        g.arrival.release(upTo);
        g.journal.release(g.name, upTo);
        g.onReleased(upTo);
      }
    }
    this.stats.checkpoints++;
  }

  private checkpointDue(): boolean {
    if (performance.now() - this.lastCheckpointMs >= CHECKPOINT_MS) return true;
    return this.groups.some((g) => {
      const u = g.journal.usage();
      return u.usedBytes > CHECKPOINT_JOURNAL_FRACTION * u.bytesMax;
    });
  }

  /** Once idle, the last cut becomes durable soon, not only when the next write arrives. */
  private scheduleCheckpoint(): void {
    if (this.stopped || this.checkpointTimer !== undefined) return;
    this.checkpointTimer = setTimeout(() => {
      this.checkpointTimer = undefined;
      // A cycle running now checkpoints by itself when due.
      if (this.running || this.stopped) return;
      this.guarded(() => this.checkpoint()).catch((e) => {
        this.failure = e as Error;
        this.log('error', 'apply checkpoint failed: the target copy stays at its last durable cut', {
          set: this.set,
          error: String(e),
        });
      });
    }, CHECKPOINT_MS);
    this.checkpointTimer.unref();
  }

  private async loop(): Promise<void> {
    try {
      do {
        this.again = false;
        while (!this.stopped && (await this.cycle())) {
          if (this.checkpointDue()) await this.checkpoint();
          // Cycles start at most every CYCLE_MIN_MS: each costs a durable write of the state file,
          // and a longer cycle carries more records for the same cost.
          const wait = this.lastCycleStartMs + CYCLE_MIN_MS - performance.now();
          if (wait > 0 && !this.stopped) await sleep(wait);
        }
      } while (this.again && !this.stopped);
      this.scheduleCheckpoint();
      this.markers?.onProgress();
    } catch (e) {
      this.failure = e as Error;
      this.log('error', 'apply stopped: the target copy stays at its last completed cut', {
        set: this.set,
        error: String(e),
      });
    }
  }

  /** One cycle; false when there is nothing to apply. */
  private async cycle(): Promise<boolean> {
    if (this.groups.length === 0) return false;
    const arrivals = this.groups.map((g) => g.arrival);
    const r = planCycle(this.state, arrivals, {
      recordsPerGroupMax: CYCLE_RECORDS_PER_GROUP_MAX,
      ...(this.markers ? { markersReleased: this.markers.markersReleased } : {}),
    });
    if (r.kind !== 'cycle') return false;
    const bad = r.plan.groups.find((g) => g.abnormal !== undefined)?.abnormal;
    if (bad !== undefined && this.abnormal === undefined) {
      this.abnormal = bad;
      this.log('error', 'abnormal marker: the group stops before it', { set: this.set, detail: bad });
    }
    const started = performance.now();
    this.lastCycleStartMs = started;
    // The file keeps the checkpoint and pins this cycle's cut (a redo re-plans exactly it).
    await this.persist({ ...this.durable, cutPlanned: r.plan.cut }, this.durableKeys);
    this.state = r.state;
    await this.gate.exclusive(async () => {
      for (const gp of r.plan.groups) {
        await this.applyGroup(gp);
        // A crash with part of the cycle's groups on the volumes (tests: the redo at restart).
        if (gp.seqLast >= gp.seqFirst) failpoint('apply:group-applied');
      }
      this.complete(r.plan);
    });
    this.stats.cycles++;
    this.stats.lastCycleMs = performance.now() - started;
    this.stats.lastCutAtMs = Date.now();
    return true;
  }

  private async applyGroup(gp: GroupPlan): Promise<void> {
    if (gp.seqLast < gp.seqFirst) return;
    const g = this.groups.find((x) => x.name === gp.group)!;
    let next: number = gp.seqFirst;
    while (next <= gp.seqLast) {
      let recs: readonly KeptRecord[] = g.recent.take(seq(next), gp.seqLast, APPLY_READ_BYTES, Infinity);
      if (recs.length === 0) recs = g.journal.readRetained(g.name, seq(next), APPLY_READ_BYTES);
      if (recs.length === 0) {
        throw new RemcopyError(
          'RC_ERR_JOURNAL_IO',
          `${g.name}: record ${next} is missing from the target journal`,
        );
      }
      if (g.snapshots !== undefined && g.snapshots.size > 0) await preserveFor(g.snapshots, recs, gp.seqLast);
      for (const { header: h, payload } of recs) {
        if (h.seq > gp.seqLast) break;
        next = h.seq + 1;
        if (h.kind === RecordKind.marker) continue;
        const dev = g.devices.get(h.volume);
        if (dev === undefined) {
          throw new RemcopyError(
            'RC_ERR_STATE',
            `${g.name}: record ${h.seq} is for volume ${h.volume}, not a pair`,
          );
        }
        const zeroMap = g.zeroMaps.get(h.volume);
        if (h.kind === RecordKind.zero) {
          // Only the parts not already zero are written (BlockDevice.zero). A large record goes
          // to the thread pool in pieces: its length is not bounded by a host's request limit
          // (one TRIM may cover the volume), and on the event loop it would hold the whole node
          // (link, API, other exports) for seconds. A small one is done here: a pool hop costs more.
          const known = zeroMap?.knownZero(h.offset, h.length) === true;
          if (!known && h.length < ASYNC_APPLY_BYTES_MIN) dev.zeroSync(h.offset, h.length);
          else if (!known) await dev.zero(h.offset, h.length);
        } else {
          zeroMap?.touch(h.offset, h.length);
          applyToDevice(dev, h.kind, h.offset, h.length, kindCarriesData(h.kind) ? payload : undefined);
        }
        this.stats.recordsApplied++;
        this.stats.bytesApplied += h.length;
      }
    }
  }

  /** The cycle's records are on the volumes (page cache): readers see its cut from now on. */
  private complete(plan: CyclePlan): void {
    this.state = completeCycle(this.state, plan);
    for (const gp of plan.groups) {
      if (gp.seqLast < gp.seqFirst) continue;
      const g = this.groups.find((x) => x.name === gp.group)!;
      this.keyApplied.set(gp.group, g.arrival.heldAt(gp.seqLast)!.key);
      g.recent.dropUpTo(gp.seqLast);
      g.onApplied(gp.seqLast);
    }
  }

  private persist(s: ApplyState, keys: ReadonlyMap<string, OrderKey | undefined>): Promise<void> {
    return writeJsonDurable(this.file, {
      version: 1,
      cutCompleted: fromKey(s.cutCompleted),
      cutPlanned: fromKey(s.cutPlanned),
      groups: Object.fromEntries(
        [...s.seqApplied].map(([g, sq]) => [
          g,
          { seqApplied: sq, keyApplied: fromKey(keys.get(g)), markerReached: s.markerReached.get(g) ?? null },
        ]),
      ),
    });
  }
}

/**
 * Copy-on-write before a batch is applied: the chunks its records overwrite are preserved in the
 * newest snapshot of their volume first, durably (DESIGN.md §3.4 snapshots).
 */
async function preserveFor(
  snapshots: ReadonlyMap<string, VolumeSnapshots>,
  recs: readonly KeptRecord[],
  seqLast: Seq,
): Promise<void> {
  const ranges = new Map<VolumeSnapshots, { offset: number; length: number }[]>();
  for (const { header: h } of recs) {
    if (h.seq > seqLast) break;
    if (h.kind === RecordKind.marker || h.length === 0) continue;
    const s = snapshots.get(h.volume);
    if (s === undefined || !s.needsPreserve(h.offset, h.length)) continue;
    let list = ranges.get(s);
    if (list === undefined) ranges.set(s, (list = []));
    list.push({ offset: h.offset, length: h.length });
  }
  await Promise.all([...ranges].map(([s, list]) => s.preserve(list)));
}
