/**
 * What one simulated run looks like, drawn from its seed: the topology (groups, volumes,
 * consistency sets), the write-time mode, the workload, the network and disk faults, the crashes,
 * the link timers and the phases. Also the names of the planted bugs (test the tester).
 *
 * Sizes are small on purpose (volumes of 16-64 blocks, a few hundred writes): many seeds in little
 * time find more than a few long runs.
 */
import type { SenderLimits } from '../../core/sender.js';
import type { WriteTimeMode } from '../../core/types.js';
import type { Rng } from './rng.js';

/** Bytes of one volume block; every simulated write covers exactly one block. */
export const BLOCK_BYTES = 4096;
/** Every bank account opens with this balance. */
export const ACCOUNT_OPENING_BALANCE = 100;

/**
 * Planted bugs, each off unless asked for:
 * - apply-past-gap: the target journals records past a gap and its planner counts them as arrived.
 * - no-tiebreak: the planner compares by write time only, applying every held record whose write
 *   time is not above the cut's (the tie-breaker of DESIGN.md §3.1 dropped).
 * - release-before-durable: the source releases journal records when it sends them, not when the
 *   target reports them durable.
 * - fua-before-sync: the source acknowledges a FUA write before the journal sync that covers it.
 * - cut-not-persisted: a target checkpoint releases the records without persisting itself (the
 *   state file keeps the previous checkpoint).
 * - checkpoint-without-plan: a target cycle persists only the last checkpoint, not its cutPlanned,
 *   before applying (nothing pins the cut readers saw until the next checkpoint).
 * - tick-from-last-key: the source ticks when a group has nothing appended left to send, with the
 *   group's seqSent and Sequencer.lastKey() (the latest key assigned, durable or not).
 * - resync-clear-on-copy: the source clears a dirty bit when the chunk's copy record is journalled,
 *   not when the target reports it durable.
 * - resync-skip-chunk: the resync skips the last dirty chunk of each volume.
 * - resync-consistent-early: the target ignores the source's `resync` announcement and keeps
 *   claiming a consistent image while the copy records of a resync are applied.
 * - suspend-ack-before-bit: a write to a suspended group is applied and acknowledged before its
 *   dirty bit is durable.
 * - no-fence: the old source ignores the takeover's epoch when it learns it: it goes on taking host
 *   writes as the source (split brain).
 * - takeover-forgets-beyond-cut: the promoted target does not mark the chunks of the records it
 *   holds beyond the takeover's cut (records the old source may have released).
 * - failback-skips-journal: demote hands over the old source's bitmap only, not the chunks of its
 *   journalled records past the takeover's seq.
 * - failback-skips-promoted: promote resyncs the old source's dirty set only, not its own bitmap
 *   (the writes since the takeover).
 * - failback-whole-volume: the failback resync copies every chunk of every volume.
 */
export const BUG_NAMES = [
  'apply-past-gap',
  'no-tiebreak',
  'release-before-durable',
  'fua-before-sync',
  'cut-not-persisted',
  'tick-from-last-key',
  'checkpoint-without-plan',
  'resync-clear-on-copy',
  'resync-skip-chunk',
  'resync-consistent-early',
  'suspend-ack-before-bit',
  'no-fence',
  'takeover-forgets-beyond-cut',
  'failback-skips-journal',
  'failback-skips-promoted',
  'failback-whole-volume',
] as const;
export type BugName = (typeof BUG_NAMES)[number];

export const isBugName = (s: string): s is BugName => (BUG_NAMES as readonly string[]).includes(s);

export interface VolumeSpec {
  readonly name: string;
  readonly blocks: number;
}

export interface GroupSpec {
  readonly name: string;
  readonly set: string;
  readonly volumes: readonly VolumeSpec[];
}

export interface SetSpec {
  readonly name: string;
  readonly groups: readonly string[];
  /** Bank accounts live on the first volume of every group of the set (blocks 0..n-1). */
  readonly accountsPerGroup: number;
}

export interface CrashSpec {
  readonly side: 'source' | 'target';
  readonly atUs: number;
  readonly downUs: number;
}

/** Crashes at chosen moments (crash points), on top of the crashes at fixed times. */
export interface CrashPointConfig {
  /** Chance that a node crashes at each crash point it passes. */
  readonly chance: number;
  /** At most this many crash-point crashes per node and run. */
  readonly maxPerNode: number;
  readonly downUs: readonly [number, number];
}

export interface NetConfig {
  readonly delayUs: readonly [number, number];
  readonly lossChance: number;
  readonly dupChance: number;
  /** Chance that a frame ignores the link's FIFO order and takes up to reorderExtraUs more. */
  readonly reorderChance: number;
  readonly reorderExtraUs: number;
  /** Windows in which every frame is dropped, both ways. */
  readonly partitions: readonly { readonly startUs: number; readonly endUs: number }[];
}

export interface DiskConfig {
  readonly journalSyncUs: readonly [number, number];
  readonly volumeSyncUs: readonly [number, number];
  /** The apply state file: write + fsync + rename. */
  readonly persistUs: readonly [number, number];
  /** The source syncs its journal this often when it holds unsynced records (page-cache writeback). */
  readonly flushEveryUs: number;
  /** Chance that a crash keeps a torn prefix of the journal's unsynced tail. */
  readonly tornChance: number;
  /** Chance that each unsynced volume block write survives a crash. */
  readonly dirtySurvivesChance: number;
}

/**
 * When the target makes its cuts durable (src/node/replication/apply.ts: every 500 ms while cycles
 * run, 500 ms after the last one, when a target journal is over 25% full).
 */
export interface CheckpointConfig {
  /** After a cycle, a checkpoint when the last one is at least this old (0: after every cycle). */
  readonly everyUs: number;
  /** When no cycle could be planned, a checkpoint this much later (unless one runs then). */
  readonly idleUs: number;
  /** After a cycle, a checkpoint when a group's target journal holds more records (none: no limit). */
  readonly journalRecordsMax: number | undefined;
}

export interface WorkloadConfig {
  readonly hosts: number;
  readonly writesMax: number;
  readonly fuaChance: number;
  readonly flushChance: number;
  /** Chance that a write carries a host time (the native protocol's writeTime). */
  readonly hostTimeChance: number;
  readonly thinkUs: readonly [number, number];
  /** Random writes go to the first `hotBlocks` free blocks of a volume half of the time. */
  readonly hotBlocks: number;
}

export interface LinkConfig {
  readonly heartbeatUs: number;
  /** Nothing heard for this long: the session is dropped. */
  readonly sessionTimeoutUs: number;
  /** A group still waits for RESUME this long after connecting: the session is dropped. */
  readonly resumeTimeoutUs: number;
  /** Records in flight and no ACK progress for this long: the session is dropped. */
  readonly ackTimeoutUs: number;
  readonly reconnectUs: number;
  /** Host <-> source round trip for a write that needs no sync. */
  readonly hostAckUs: readonly [number, number];
}

/**
 * A suspension (DESIGN.md §3.6) of some groups: from `atUs` on, their writes are tracked in dirty
 * bitmaps instead of journalled; at `resumeAtUs` (or when the liveness phase begins) the source
 * resumes them with a delta resync.
 */
export interface SuspensionSpec {
  readonly atUs: number;
  /** One group, or every group of a consistency set. */
  readonly groups: readonly string[];
  /** Undefined: suspended until the liveness phase. */
  readonly resumeAtUs: number | undefined;
}

export interface ResyncConfig {
  /** Blocks per dirty-bitmap chunk (a chunk is what one copy record carries). */
  readonly chunkBlocks: number;
  readonly suspensions: readonly SuspensionSpec[];
  /** Pause between two copy records of a resync. */
  readonly copyStepUs: readonly [number, number];
  /**
   * A copy waits while the group has more records unreleased (not yet durable at the target): the
   * node's copy loop waits on journal usage the same way, so a resync goes at the target's pace.
   */
  readonly copyBacklogMax: number;
  /** Writing the bitmap file (write + fsync), one round at a time. */
  readonly bitmapPersistUs: readonly [number, number];
  /** Crashes soon after a resume: while the resync runs (on top of `crashes`). */
  readonly crashes: readonly CrashSpec[];
}

/**
 * A takeover at the target and a failback after it (DESIGN.md §3.7): at `atUs` (or as soon after
 * as the target's image is consistent and no cycle runs) the target takes over; hosts move to it,
 * but a random host's operation still goes to the old source with chance `strayChance` until the
 * old source refuses it (the split-brain window of an unplanned takeover). `failbackAfterUs` after
 * the takeover (once both nodes are up) the failback hands the old source's dirty set over and the
 * run goes on in the other direction (sim.ts: the reverse run).
 */
export interface TakeoverConfig {
  readonly atUs: number;
  readonly strayChance: number;
  readonly failbackAfterUs: number;
}

export interface SimConfig {
  readonly writeTimeMode: WriteTimeMode;
  readonly groups: readonly GroupSpec[];
  readonly sets: readonly SetSpec[];
  readonly net: NetConfig;
  readonly disk: DiskConfig;
  readonly crashes: readonly CrashSpec[];
  readonly crashPoints: CrashPointConfig;
  readonly workload: WorkloadConfig;
  readonly sender: SenderLimits;
  readonly link: LinkConfig;
  readonly applyEveryUs: number;
  /** planCycle's PlanLimits.recordsPerGroupMax: caps how far one cycle goes (none: no cap). */
  readonly applyRecordsPerGroupMax: number | undefined;
  readonly applyStepUs: readonly [number, number];
  readonly checkpoint: CheckpointConfig;
  /** Suspensions and delta resyncs (drawn after everything else). */
  readonly resync: ResyncConfig;
  /** Faults and writes happen in [0, safetyUs); then the liveness phase, at most livenessUs. */
  readonly safetyUs: number;
  readonly livenessUs: number;
  /** A takeover and a failback (drawn after everything but the overflow); undefined: none. */
  readonly takeover: TakeoverConfig | undefined;
  /** A bounded source journal (drawn last); undefined: unbounded. */
  readonly overflow: OverflowConfig | undefined;
}

/**
 * The source journal's `suspend` policy (DESIGN.md §6): a host write that finds the node's journal
 * holding `journalRecordsMax` unreleased records suspends its group and the rest of its set (the
 * write is tracked in the bitmap instead); the operator resumes them `resumeAfterUs` later.
 */
export interface OverflowConfig {
  readonly journalRecordsMax: number;
  readonly resumeAfterUs: number;
}

const MS = 1000;

export function configFor(rng: Rng): SimConfig {
  const { groups, sets } = topologyFor(rng);
  const safetyUs = rng.int(1500, 3000) * MS;
  return {
    writeTimeMode: rng.pick(['host-last', 'host-last', 'clock', 'counter'] as const),
    groups,
    sets,
    net: netFor(rng, safetyUs),
    disk: {
      journalSyncUs: [100, rng.pick([2000, 5000, 30_000])],
      volumeSyncUs: [100, rng.int(500, 5000)],
      persistUs: [100, rng.int(300, 3000)],
      flushEveryUs: rng.int(2, 30) * MS,
      tornChance: rng.pick([0, 0.5, 1]),
      dirtySurvivesChance: rng.pick([0, 0.5, 1]),
    },
    crashes: crashesFor(rng, safetyUs),
    crashPoints: {
      chance: rng.pick([0, 0.003, 0.01, 0.03]),
      maxPerNode: rng.int(1, 3),
      downUs: [MS, 100 * MS],
    },
    workload: {
      hosts: rng.int(1, 3),
      writesMax: rng.int(150, 400),
      fuaChance: rng.pick([0, 0.1, 0.3]),
      flushChance: rng.pick([0, 0.03, 0.1]),
      hostTimeChance: rng.pick([0.02, 0.1, 0.3]),
      thinkUs: [0, rng.int(2, 15) * MS],
      hotBlocks: rng.int(2, 8),
    },
    sender: {
      windowBytes: BLOCK_BYTES * rng.int(2, 32),
      batchBytes: BLOCK_BYTES * rng.int(1, 8),
      tickMs: rng.int(3, 30),
    },
    link: {
      heartbeatUs: 10 * MS,
      sessionTimeoutUs: rng.int(40, 100) * MS,
      resumeTimeoutUs: 60 * MS,
      ackTimeoutUs: rng.int(50, 120) * MS,
      reconnectUs: rng.pick([200, 2 * MS, 20 * MS, 50 * MS]),
      hostAckUs: [50, 500],
    },
    applyEveryUs: rng.int(3, 40) * MS,
    applyRecordsPerGroupMax: rng.pick([undefined, 1, 3, 16]),
    applyStepUs: [0, rng.int(100, 2000)],
    safetyUs,
    livenessUs: 20_000 * MS,
    // Drawn last: the draws above keep the values they had before checkpoints were modelled.
    checkpoint: {
      everyUs: rng.pick([0, 20, 100, 500]) * MS,
      idleUs: rng.pick([1, 20, 100, 500]) * MS,
      journalRecordsMax: rng.pick([undefined, undefined, 8, 64]),
    },
    // Drawn after the checkpoints: a seed keeps the rest of its configuration.
    resync: resyncFor(rng, safetyUs, sets),
    // Drawn after the rest: a run without a takeover is the run it was before takeovers were modelled.
    takeover: takeoverFor(rng, safetyUs),
    // Drawn last, likewise.
    overflow: rng.chance(0.3)
      ? { journalRecordsMax: rng.pick([16, 32, 64]), resumeAfterUs: rng.pick([20, 100, 300]) * MS }
      : undefined,
  };
}

/** In 35% of runs a takeover in the safety phase, and a failback 0-300 ms after it. */
function takeoverFor(rng: Rng, safetyUs: number): TakeoverConfig | undefined {
  if (!rng.chance(0.35)) return undefined;
  return {
    atUs: rng.int(safetyUs / 10, (safetyUs * 7) / 10),
    strayChance: rng.pick([0, 0.2, 0.5]),
    failbackAfterUs: rng.pick([0, 30, 100, 300]) * MS,
  };
}

/**
 * The reverse run after a failback: the same topology, timers and disks, its own faults, crashes
 * and writes; no suspension and no takeover (the failback's resync is what it is about).
 */
export function reverseConfigFor(rng: Rng, cfg: SimConfig): SimConfig {
  const safetyUs = rng.int(500, 1500) * MS;
  return {
    ...cfg,
    net: netFor(rng, safetyUs),
    crashes: crashesFor(rng, safetyUs),
    workload: { ...cfg.workload, writesMax: rng.int(50, 200) },
    safetyUs,
    resync: { ...cfg.resync, suspensions: [], crashes: [] },
    takeover: undefined,
    overflow: undefined,
  };
}

/**
 * In 40% of runs 1-2 suspensions of one group or of a whole set, while the hosts write; most are
 * resumed in the safety phase (a resync under faults), the others when the liveness phase begins.
 * Half of those resumed under faults have a crash (mostly of the source) while the resync runs.
 */
function resyncFor(rng: Rng, safetyUs: number, sets: readonly SetSpec[]): ResyncConfig {
  const chunkBlocks = rng.pick([1, 2, 4]);
  const suspensions: SuspensionSpec[] = [];
  if (rng.chance(0.4)) {
    for (let n = rng.int(1, 2); n > 0; n--) {
      const set = rng.pick(sets);
      const groups = set.groups.length > 1 && rng.chance(0.5) ? [...set.groups] : [rng.pick(set.groups)];
      // While the hosts write: their 150-400 writes mostly end in the first fifth of the phase.
      const atUs = rng.int(safetyUs / 50, (safetyUs * 3) / 10);
      const resumeAtUs = rng.chance(0.25) ? undefined : atUs + rng.pick([10, 30, 100, 300]) * MS;
      suspensions.push({ atUs, groups, resumeAtUs });
    }
  }
  const crashes: CrashSpec[] = [];
  for (const sp of suspensions) {
    if (sp.resumeAtUs === undefined || !rng.chance(0.5)) continue;
    const side = rng.chance(0.7) ? 'source' : 'target';
    crashes.push({ side, atUs: sp.resumeAtUs + rng.int(1, 60) * MS, downUs: rng.int(1, 100) * MS });
  }
  return {
    chunkBlocks,
    suspensions: suspensions.sort((a, b) => a.atUs - b.atUs),
    copyStepUs: [0, rng.pick([2000, 10_000, 30_000])],
    bitmapPersistUs: [100, rng.pick([500, 2000, 5000])],
    copyBacklogMax: rng.pick([2, 8, 32]),
    crashes,
  };
}

/** One consistency set of 2-3 groups (with a bank), sometimes a second of 1-2. */
function topologyFor(rng: Rng): { groups: GroupSpec[]; sets: SetSpec[] } {
  const sizes = [rng.int(2, 3)];
  if (rng.chance(0.4)) sizes.push(rng.int(1, 2));
  const groups: GroupSpec[] = [];
  const sets: SetSpec[] = [];
  sizes.forEach((size, si) => {
    const set = `set${si + 1}`;
    const names: string[] = [];
    for (let i = 0; i < size; i++) {
      const name = `g${groups.length + 1}`;
      const volumes = Array.from({ length: rng.int(1, 2) }, (_, vi) => ({
        name: `${name}v${vi + 1}`,
        blocks: rng.pick([16, 32, 64]),
      }));
      groups.push({ name, set, volumes });
      names.push(name);
    }
    sets.push({ name: set, groups: names, accountsPerGroup: size >= 2 ? rng.int(1, 3) : 0 });
  });
  return { groups, sets };
}

function netFor(rng: Rng, safetyUs: number): NetConfig {
  const partitions = Array.from({ length: rng.int(0, 3) }, () => {
    const startUs = rng.int(0, safetyUs);
    return { startUs, endUs: startUs + rng.int(20, 400) * MS };
  });
  return {
    delayUs: [100, rng.int(500, 5000)],
    lossChance: rng.pick([0, 0.002, 0.01, 0.03]),
    dupChance: rng.pick([0, 0.005, 0.02]),
    reorderChance: rng.pick([0, 0.005, 0.02]),
    reorderExtraUs: rng.int(1, 20) * MS,
    partitions,
  };
}

function crashesFor(rng: Rng, safetyUs: number): CrashSpec[] {
  const crashes: CrashSpec[] = [];
  for (const side of ['source', 'target'] as const) {
    const n = rng.int(0, side === 'source' ? 2 : 3);
    for (let i = 0; i < n; i++) {
      crashes.push({ side, atUs: rng.int(safetyUs / 10, safetyUs), downUs: rng.int(1, 150) * MS });
    }
  }
  return crashes.sort((a, b) => a.atUs - b.atUs);
}
