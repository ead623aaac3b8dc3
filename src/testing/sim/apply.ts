/**
 * The target's apply coordinator for one consistency set (DESIGN.md §3.3), as the simulator
 * drives it, following src/node/replication/apply.ts: the real planCycle / completeCycle
 * (src/core/apply-plan.ts) over the set's real GroupArrivals, with the apply state in a simulated
 * metadata file and the volumes on a simulated disk that loses unsynced writes.
 *
 *   every applyEveryUs, when no cycle or checkpoint runs:
 *     planCycle --cycle--> persist {last checkpoint, cutPlanned = this cut}  [crash: nothing applied]
 *               --> apply records, groups interleaved, each group in seq order, in small steps
 *                   (volume page cache: nothing synced)                       [crash: redo]
 *               --> completeCycle in memory: readers see the new cut; checkers at the cut
 *               --> a checkpoint if one is due (checkpoint.everyUs since the last one, or a
 *                   target journal holds more than checkpoint.journalRecordsMax records)
 *             --no cycle--> a checkpoint checkpoint.idleUs later (unless one runs then)
 *   checkpoint (a no-op when no seqApplied moved since the last one):
 *     volumes sync --> persist {checkpoint = the cut completed in memory, no cutPlanned}
 *     --> release arrival and target journal up to its seqApplied       [crash between: redo]
 *   restart: the persisted state: the checkpoint and, if a cycle ran after it, the last cut
 *            planned; release what the checkpoint says is applied (a crash may have come between
 *            persisting and releasing); the first planCycle re-plans from the checkpoint's seqApplied
 *            up to exactly the planned cut and re-applies it (the records after the checkpoint are
 *            still in the journals), so readers never see a cut below one they saw before.
 *
 * Readers are told whether the image is consistent (target.ts: no group of the set in a resync it
 * has not applied to its end); the checkers check the image at every cut, and at every moment
 * between cycles, at which the coordinator claims it consistent, and only then.
 *
 * Planted bugs (bugs.ts, config.ts):
 * - checkpoint-without-plan: a cycle persists only the checkpoint, not its cutPlanned: after a
 *   crash nothing pins the cut readers saw, and planCycle computes a new one from what arrival
 *   holds (ticks are lost; recordsPerGroupMax caps it), which can be lower.
 * - cut-not-persisted: a checkpoint releases the records without persisting itself: the file
 *   keeps the previous checkpoint, whose records are gone from the journals.
 */
import type { GroupArrival, HeldRecord } from '../../core/arrival.js';
import type { ApplyState, CyclePlan } from '../../core/apply-plan.js';
import { completeCycle, initialApplyState } from '../../core/apply-plan.js';
import { assert } from '../../core/assert.js';
import type { OrderKey } from '../../core/types.js';
import { compareKeys, keyOf } from '../../core/types.js';
import { planWithBug, releasableSeq } from './bugs.js';
import { fmtKey } from './checkers.js';
import type { SetSpec } from './config.js';
import { BLOCK_BYTES } from './config.js';
import type { SimContext } from './context.js';
import type { SimJournal, SimVolumes } from './disk.js';
import type { Rng } from './rng.js';

/** What the coordinator keeps on the target's disk. */
export interface ApplyDisk {
  readonly journals: ReadonlyMap<string, SimJournal>;
  readonly volumes: SimVolumes;
  /** The persisted apply state per set (the metadata file): the checkpoint and cutPlanned. */
  readonly applyStates: Map<string, ApplyState>;
}

export class ApplyCoordinator {
  /** In memory: the cut readers see and the seqs applied; cycles plan from it. */
  private state: ApplyState;
  /** The last checkpoint: what the file holds as completed (volumes durable up to it). */
  private durable: ApplyState;
  /** A cycle or a checkpoint runs. */
  private busy = false;
  private lastCheckpointUs: number;
  /** Bumped by every checkpoint: an idle checkpoint timer set before it does nothing. */
  private idleTimerGen = 0;
  private idleTimerSet = false;
  /** A cycle is writing to the volumes: they show neither its cut nor the last one. */
  private applying = false;
  /** The volumes show the completed cut exactly (false after a restart until the first cycle). */
  private shown = false;
  /** The image was claimed consistent when last decided. */
  private claimed = false;
  /** Taken over: no more cycles or checkpoints. */
  private frozen = false;

  constructor(
    private readonly ctx: SimContext,
    private readonly rng: Rng,
    private readonly set: SetSpec,
    private readonly disk: ApplyDisk,
    /** The set's arrivals, in the order of set.groups. */
    private readonly arrivals: readonly GroupArrival[],
    private readonly alive: () => boolean,
    /** Whether the image at these seqApplied is consistent (the pair states announced). */
    private readonly consistent: (seqApplied: ReadonlyMap<string, number>) => boolean,
  ) {
    this.state = disk.applyStates.get(set.name) ?? initialApplyState(set.groups);
    this.durable = { ...this.state, cutPlanned: undefined };
    this.lastCheckpointUs = ctx.sched.nowUs;
  }

  /** The last seq of `group` applied by a completed cycle. */
  seqApplied(group: string): number {
    return this.state.seqApplied.get(group)!;
  }

  /**
   * An announcement changed what the set's image may be claimed to be. Between cycles an image
   * that becomes consistent is checked at once: readers may read it from now on.
   */
  claimMayHaveChanged(): void {
    if (this.applying || !this.shown) return;
    const now = this.consistent(this.state.seqApplied);
    if (now && !this.claimed && this.state.cutCompleted !== undefined) {
      this.ctx.checkers.onConsistent(this.set, this.state.cutCompleted, (v, b) =>
        this.disk.volumes.read(v, b),
      );
    }
    this.claimed = now;
  }

  /**
   * Ready for a takeover: no cycle or checkpoint runs, the volumes show the completed cut (after a
   * restart: no cycle planned since the checkpoint, or its redo done) and the image is consistent.
   */
  get settled(): boolean {
    const shown = this.shown || this.state.cutPlanned === undefined;
    return !this.busy && !this.applying && shown && this.consistent(this.state.seqApplied);
  }

  /** The cut readers see (undefined before the first cycle). */
  get cut(): OrderKey | undefined {
    return this.state.cutCompleted;
  }

  /** The takeover: the image stays at the completed cut; no cycle or checkpoint from now on. */
  freeze(): void {
    this.frozen = true;
  }

  start(): void {
    this.ctx.checkers.onTargetRestart(this.set.name, this.state.cutPlanned ?? this.state.cutCompleted);
    this.release(this.durable);
    this.ctx.sched.every(this.ctx.cfg.applyEveryUs, () => {
      if (!this.alive()) return false;
      if (!this.busy && !this.frozen) this.tryCycle();
      return true;
    });
  }

  private tryCycle(): void {
    const limits = { recordsPerGroupMax: this.ctx.cfg.applyRecordsPerGroupMax };
    const r = planWithBug(this.ctx.bug, this.state, this.arrivals, limits);
    if (r.kind !== 'cycle') {
      this.scheduleIdleCheckpoint();
      return;
    }
    this.busy = true;
    if (r.plan.redo) {
      this.ctx.stats.cyclesRedone++;
      for (const g of r.plan.groups) this.ctx.stats.recordsRedone += g.apply.length;
    }
    const ranges = r.plan.groups.map((g) => `${g.group} ${g.seqFirst}..${g.seqLast}`).join(', ');
    this.ctx.log(`${this.set.name}: ${r.plan.redo ? 'redo' : 'plan'} cut ${fmtKey(r.plan.cut)}: ${ranges}`);
    // The file keeps the checkpoint and pins this cycle's cut: a redo re-plans exactly it.
    const pinned =
      this.ctx.bug === 'checkpoint-without-plan' ? this.durable : { ...this.durable, cutPlanned: r.plan.cut };
    this.persist(pinned, () => {
      this.state = r.state;
      this.applying = true;
      this.shown = false;
      this.ctx.crashPoint('target');
      this.applyPlan(r.plan);
    });
  }

  private applyPlan(plan: CyclePlan): void {
    const queues = plan.groups.map((g) => ({ group: g.group, records: [...g.apply] }));
    const step = (): void => {
      if (!this.alive()) return;
      const open = queues.filter((q) => q.records.length > 0);
      if (open.length === 0) return this.complete(plan);
      const q = this.rng.pick(open);
      for (let n = this.rng.int(1, 3); n > 0 && q.records.length > 0; n--) {
        this.applyRecord(q.group, q.records.shift()!);
      }
      this.ctx.crashPoint('target');
      this.ctx.sched.after(this.rng.int(this.ctx.cfg.applyStepUs[0], this.ctx.cfg.applyStepUs[1]), step);
    };
    step();
  }

  private applyRecord(group: string, r: HeldRecord): void {
    const e = this.disk.journals.get(group)!.get(group, r.seq);
    assert(
      e !== undefined && compareKeys(keyOf(e.h), r.key) === 0,
      `${group}/${r.seq} is in the target journal`,
    );
    const block = e.h.offset / BLOCK_BYTES;
    if (e.copy === undefined) return this.disk.volumes.write(e.h.volume, block, e.writeId);
    e.copy.blocks.forEach((id, i) => this.disk.volumes.write(e.h.volume, block + i, id));
  }

  /** The cycle's records are on the volumes (unsynced): readers see its cut from now on. */
  private complete(plan: CyclePlan): void {
    this.state = completeCycle(this.state, plan);
    this.applying = false;
    this.shown = true;
    this.claimed = this.consistent(this.state.seqApplied);
    this.ctx.stats.cycles++;
    this.ctx.trace.add('cut', this.set.name, plan.cut.writeTimeUs, plan.cut.ordinal);
    this.ctx.checkers.onCutCompleted(
      this.set,
      plan.cut,
      (v, b) => this.disk.volumes.read(v, b),
      this.claimed,
    );
    this.ctx.crashPoint('target');
    if (this.checkpointDue()) this.checkpoint(() => (this.busy = false));
    else this.busy = false;
  }

  private checkpointDue(): boolean {
    const c = this.ctx.cfg.checkpoint;
    if (this.ctx.sched.nowUs - this.lastCheckpointUs >= c.everyUs) return true;
    return (
      c.journalRecordsMax !== undefined &&
      this.set.groups.some((g) => this.disk.journals.get(g)!.unreleased() > c.journalRecordsMax!)
    );
  }

  /** Once idle, the last cut becomes durable soon, not only when the next record arrives. */
  private scheduleIdleCheckpoint(): void {
    if (this.idleTimerSet) return;
    this.idleTimerSet = true;
    const gen = this.idleTimerGen;
    this.ctx.sched.after(this.ctx.cfg.checkpoint.idleUs, () => {
      if (!this.alive() || gen !== this.idleTimerGen) return;
      this.idleTimerSet = false;
      if (this.busy || this.frozen) return;
      this.busy = true;
      this.checkpoint(() => (this.busy = false));
    });
  }

  /**
   * Makes the cut readers see durable: sync the volumes, persist it as the checkpoint, release the
   * records up to it. A no-op when no seqApplied moved since the last one.
   */
  private checkpoint(done: () => void): void {
    this.idleTimerGen++;
    this.idleTimerSet = false;
    const point: ApplyState = { ...this.state, cutPlanned: undefined };
    const moved = this.set.groups.some((g) => point.seqApplied.get(g)! > this.durable.seqApplied.get(g)!);
    if (!moved) return done();
    this.lastCheckpointUs = this.ctx.sched.nowUs;
    this.disk.volumes.sync(() => {
      if (!this.alive()) return;
      this.ctx.crashPoint('target');
      this.persist(
        point,
        () => {
          this.durable = point;
          this.ctx.stats.checkpoints++;
          this.ctx.trace.add('checkpoint', this.set.name);
          const seqs = this.set.groups.map((g) => `${g} ${point.seqApplied.get(g)}`).join(', ');
          this.ctx.log(`${this.set.name}: checkpoint at cut ${fmtKey(point.cutCompleted)}: ${seqs}`);
          this.ctx.crashPoint('target');
          this.release(point);
          done();
        },
        this.ctx.bug !== 'cut-not-persisted',
      );
    });
  }

  /**
   * Writes the apply state file (write, fsync, rename): durable after a delay, unless a crash.
   * With `write` false the delay passes and nothing is written (planted bug cut-not-persisted).
   */
  private persist(s: ApplyState, then: () => void, write = true): void {
    const [lo, hi] = this.ctx.cfg.disk.persistUs;
    this.ctx.sched.after(this.rng.int(lo, hi), () => {
      if (!this.alive()) return;
      if (write) this.disk.applyStates.set(this.set.name, s);
      then();
    });
  }

  /** Releases arrival and the journals up to a checkpoint's seqApplied. */
  private release(checkpoint: ApplyState): void {
    this.set.groups.forEach((g, i) => {
      const a = this.arrivals[i]!;
      const upTo = releasableSeq(this.ctx.bug, a, checkpoint.seqApplied.get(g)!);
      if (upTo > a.seqReleased) a.release(upTo);
      const j = this.disk.journals.get(g)!;
      if (upTo > j.seqReleased(g)) j.release(g, upTo);
    });
  }
}
