/**
 * The target's apply coordinator for one consistency set (DESIGN.md §3.3), as the simulator
 * drives it: the real planCycle / completeCycle (src/core/apply-plan.ts) over the set's real
 * GroupArrivals, with the apply state in a simulated metadata file and the volumes on a simulated
 * disk that loses unsynced writes.
 *
 *   every applyEveryUs, when no cycle runs:
 *     planCycle --cycle--> persist state (cutPlanned)              [crash here: nothing applied]
 *               --> apply records, groups interleaved, each group in seq order, in small steps
 *               --> volumes sync                                   [crash before: redo the cut]
 *               --> completeCycle --> persist state (cutCompleted) [crash before: redo the cut]
 *               --> checkers at the cut --> release arrival and target journal
 *   (planted bug cut-not-persisted: the completed state stays in memory, the file keeps the plan)
 *   restart: the persisted state; release what it says is applied (a crash may have come between
 *            persisting and releasing); the next planCycle redoes an interrupted cut.
 */
import type { GroupArrival, HeldRecord } from '../../core/arrival.js';
import type { ApplyState, CyclePlan } from '../../core/apply-plan.js';
import { completeCycle, initialApplyState } from '../../core/apply-plan.js';
import { assert } from '../../core/assert.js';
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
  /** The persisted apply state per set (the metadata file). */
  readonly applyStates: Map<string, ApplyState>;
}

export class ApplyCoordinator {
  private state: ApplyState;
  private busy = false;

  constructor(
    private readonly ctx: SimContext,
    private readonly rng: Rng,
    private readonly set: SetSpec,
    private readonly disk: ApplyDisk,
    /** The set's arrivals, in the order of set.groups. */
    private readonly arrivals: readonly GroupArrival[],
    private readonly alive: () => boolean,
  ) {
    this.state = disk.applyStates.get(set.name) ?? initialApplyState(set.groups);
  }

  start(): void {
    this.ctx.checkers.onTargetRestart(this.set.name, this.state.cutCompleted);
    this.release();
    this.ctx.sched.every(this.ctx.cfg.applyEveryUs, () => {
      if (!this.alive()) return false;
      if (!this.busy) this.tryCycle();
      return true;
    });
  }

  private tryCycle(): void {
    const limits = { recordsPerGroupMax: this.ctx.cfg.applyRecordsPerGroupMax };
    const r = planWithBug(this.ctx.bug, this.state, this.arrivals, limits);
    if (r.kind !== 'cycle') return;
    this.busy = true;
    if (r.plan.redo) this.ctx.stats.cyclesRedone++;
    const ranges = r.plan.groups.map((g) => `${g.group} ${g.seqFirst}..${g.seqLast}`).join(', ');
    this.ctx.log(`${this.set.name}: ${r.plan.redo ? 'redo' : 'plan'} cut ${fmtKey(r.plan.cut)}: ${ranges}`);
    this.persist(r.state, () => {
      this.ctx.crashPoint('target');
      this.applyPlan(r.state, r.plan);
    });
  }

  private applyPlan(planned: ApplyState, plan: CyclePlan): void {
    const queues = plan.groups.map((g) => ({ group: g.group, records: [...g.apply] }));
    const step = (): void => {
      if (!this.alive()) return;
      const open = queues.filter((q) => q.records.length > 0);
      if (open.length === 0) {
        this.disk.volumes.sync(() => {
          if (!this.alive()) return;
          this.ctx.crashPoint('target');
          this.complete(planned, plan);
        });
        return;
      }
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
    this.disk.volumes.write(e.h.volume, e.h.offset / BLOCK_BYTES, e.writeId);
  }

  private complete(planned: ApplyState, plan: CyclePlan): void {
    const done = completeCycle(planned, plan);
    this.persist(this.ctx.bug === 'cut-not-persisted' ? planned : done, () => {
      this.state = done;
      this.ctx.stats.cycles++;
      this.ctx.trace.add('cut', this.set.name, plan.cut.writeTimeUs, plan.cut.ordinal);
      this.ctx.checkers.onCutCompleted(this.set, plan.cut, (v, b) => this.disk.volumes.read(v, b));
      this.ctx.crashPoint('target');
      this.release();
      this.busy = false;
    });
  }

  /** Writes the apply state file (write, fsync, rename): durable after a delay, unless a crash. */
  private persist(s: ApplyState, then: () => void): void {
    const [lo, hi] = this.ctx.cfg.disk.persistUs;
    this.ctx.sched.after(this.rng.int(lo, hi), () => {
      if (!this.alive()) return;
      this.disk.applyStates.set(this.set.name, s);
      then();
    });
  }

  private release(): void {
    this.set.groups.forEach((g, i) => {
      const a = this.arrivals[i]!;
      const upTo = releasableSeq(this.ctx.bug, a, this.state.seqApplied.get(g)!);
      if (upTo > a.seqReleased) a.release(upTo);
      const j = this.disk.journals.get(g)!;
      if (upTo > j.seqReleased(g)) j.release(g, upTo);
    });
  }
}
