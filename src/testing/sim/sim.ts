/**
 * One deterministic simulated run (DESIGN.md §3, TESTING.md layer 3): a source node and a target
 * node in one process, the real core state machines inside them, a seeded network and seeded
 * disks around them, all on virtual time. Everything is drawn from the seed: same seed, same run
 * (the trace hash says so).
 *
 *   safety phase   [0, safetyUs): hosts write; the network loses, duplicates, reorders and
 *                  partitions; either node crashes (losing unsynced writes) and restarts.
 *   liveness phase: the workload stops, the network heals, no more crashes; the run ends as soon
 *                  as the target has converged, or after livenessUs.
 *   checkers       at every completed cut, every release, every crash, and at the end
 *                  (checkers.ts). A throw inside the run is a violation too ('exception').
 *
 * `runSim({ seed, bug })` returns the violations; replay.ts runs one seed from the command line.
 */
import { AssertionError } from '../../core/assert.js';
import { Checkers, CHECKER_NAMES } from './checkers.js';
import type { CheckerName, Violation } from './checkers.js';
import type { BugName, SimConfig } from './config.js';
import { configFor } from './config.js';
import type { SimContext, SimStats } from './context.js';
import { newStats, TraceHash } from './context.js';
import { SimJournal } from './disk.js';
import { History } from './history.js';
import type { NetworkStats } from './network.js';
import { Network } from './network.js';
import { Rng } from './rng.js';
import { Scheduler } from './scheduler.js';
import { SourceNode } from './source.js';
import { TargetDisk, TargetNode } from './target.js';
import { Workload } from './workload.js';

/** How often the liveness phase checks whether the target has caught up. */
const CONVERGENCE_POLL_US = 20_000;

export interface SimOptions {
  readonly seed: number;
  readonly bug?: BugName;
  /** Receives a line per notable event (crashes, phases, violations); silent when absent. */
  readonly log?: (line: string) => void;
}

export interface SimResult {
  readonly seed: number;
  readonly bug: BugName | undefined;
  readonly violations: readonly Violation[];
  /** Violations per checker, including those whose message was not kept. */
  readonly violationCounts: ReadonlyMap<CheckerName, number>;
  readonly traceHash: string;
  readonly stats: SimStats &
    NetworkStats & { readonly cutsChecked: number; readonly virtualMs: number; readonly events: number };
  readonly config: SimConfig;
}

/** The command that replays one seed. */
export function replayCommand(seed: number, bug?: BugName): string {
  return `node dist/src/testing/sim/replay.js --seed ${seed}${bug === undefined ? '' : ` --bug ${bug}`}`;
}

export function runSim(opts: SimOptions): SimResult {
  return new Simulation(opts).run();
}

/** One line per violation, then the replay command. */
export function describeFailure(r: SimResult): string {
  const lines = r.violations.map((v) => `  [${v.checker}] at ${(v.atUs / 1000).toFixed(1)} ms: ${v.message}`);
  const counts = CHECKER_NAMES.filter((c) => r.violationCounts.has(c)).map(
    (c) => `${c} x${r.violationCounts.get(c)}`,
  );
  return [
    `seed ${r.seed}${r.bug === undefined ? '' : ` with bug ${r.bug}`}: ${counts.join(', ')}`,
    ...lines,
    `replay: ${replayCommand(r.seed, r.bug)}`,
  ].join('\n');
}

class Simulation {
  private readonly ctx: SimContext;
  private readonly net: Network;
  private readonly sourceJournal: SimJournal;
  private readonly targetDisk: TargetDisk;
  private readonly workload: Workload;
  private readonly rngs: { readonly source: Rng; readonly target: Rng; readonly faults: Rng };
  private readonly pointCrashes = { source: 0, target: 0 };
  private source: SourceNode | undefined;
  private target: TargetNode | undefined;
  private safety = true;

  constructor(private readonly opts: SimOptions) {
    const root = new Rng(opts.seed);
    const cfg = configFor(root.fork());
    const sched = new Scheduler();
    const history = new History();
    let stamps = 0;
    let sessions = 0;
    this.ctx = {
      sched,
      cfg,
      bug: opts.bug,
      history,
      checkers: new Checkers(history, cfg, () => sched.nowUs),
      stats: newStats(),
      trace: new TraceHash(),
      stamp: () => ++stamps,
      newSessionId: () => ++sessions,
      crashPoint: (side) => this.crashPoint(side),
      log: (line) => opts.log?.(`${(sched.nowUs / 1000).toFixed(3).padStart(10)} ms  ${line}`),
    };
    this.net = new Network(sched, root.fork(), cfg.net, (to, f) => {
      if (to === 'source') this.source?.onFrame(f);
      else this.target?.onFrame(f);
    });
    const groups = cfg.groups.map((g) => g.name);
    this.sourceJournal = new SimJournal(sched, root.fork(), cfg.disk.journalSyncUs, groups);
    this.targetDisk = new TargetDisk(this.ctx, root.fork());
    this.workload = new Workload(this.ctx, root.fork(), () => this.source);
    this.rngs = { source: root.fork(), target: root.fork(), faults: root.fork() };
  }

  run(): SimResult {
    const { sched, cfg } = this.ctx;
    this.ctx.log(`config ${JSON.stringify(summary(cfg))}`);
    try {
      this.startSource();
      this.startTarget();
      this.workload.start();
      for (const c of cfg.crashes) sched.after(c.atUs, () => this.crash(c.side, c.downUs));
      for (const p of cfg.net.partitions) {
        sched.after(p.startUs, () => this.ctx.log(`partition until ${p.endUs / 1000} ms`));
      }
      sched.runUntil(cfg.safetyUs);
      this.beginLiveness();
      sched.runUntil(cfg.safetyUs + cfg.livenessUs);
      this.ctx.checkers.onEnd({
        sourceUp: this.source !== undefined,
        targetUp: this.target !== undefined,
        workloadIdle: this.workload.idle,
        sourceUnreleased: this.sourceJournal.unreleased(),
        targetUnreleased: this.targetDisk.unreleased(),
        read: (v, b) => this.targetDisk.volumes.read(v, b),
      });
    } catch (e) {
      const what = e instanceof AssertionError ? 'assertion' : 'error';
      this.ctx.checkers.report(
        'exception',
        `${what}: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`,
      );
    }
    for (const v of this.ctx.checkers.violations) this.ctx.log(`violation [${v.checker}] ${v.message}`);
    return this.result();
  }

  private startSource(): void {
    this.source = new SourceNode(this.ctx, this.rngs.source.fork(), this.sourceJournal, this.net, (g) =>
      this.targetDisk.seqDurable(g),
    );
    this.ctx.log('source up');
  }

  private startTarget(): void {
    this.target = new TargetNode(this.ctx, this.rngs.target.fork(), this.targetDisk, this.net);
    this.ctx.log('target up');
  }

  private crash(side: 'source' | 'target', downUs: number): void {
    if (!this.safety) return;
    const { stats, trace, sched } = this.ctx;
    if (side === 'source' && this.source !== undefined) {
      this.source.crash();
      this.source = undefined;
      const lost = this.sourceJournal.crash(this.ctx.cfg.disk.tornChance);
      const writes = this.ctx.history.markLost(lost.map((e) => e.writeId));
      this.ctx.checkers.onSourceCrash(writes);
      stats.sourceCrashes++;
      stats.writesLost += lost.length;
      trace.add('crash', side, lost.length);
      this.ctx.log(`source crashed, ${lost.length} unsynced records lost; down ${downUs / 1000} ms`);
      sched.after(downUs, () => this.startSource());
    } else if (side === 'target' && this.target !== undefined) {
      this.target.crash();
      this.target = undefined;
      this.targetDisk.crash();
      stats.targetCrashes++;
      trace.add('crash', side);
      this.ctx.log(`target crashed; down ${downUs / 1000} ms`);
      sched.after(downUs, () => this.startTarget());
    }
  }

  private crashPoint(side: 'source' | 'target'): void {
    const { chance, maxPerNode, downUs } = this.ctx.cfg.crashPoints;
    if (!this.safety || this.pointCrashes[side] >= maxPerNode || !this.rngs.faults.chance(chance)) return;
    this.pointCrashes[side]++;
    const down = this.rngs.faults.int(downUs[0], downUs[1]);
    this.ctx.sched.after(0, () => this.crash(side, down));
  }

  private beginLiveness(): void {
    this.safety = false;
    this.workload.stop();
    this.net.heal();
    this.ctx.log('liveness phase: workload stopped, network healed, no more crashes');
    this.ctx.sched.every(CONVERGENCE_POLL_US, () => {
      if (!this.converged()) return true;
      this.ctx.log('converged');
      this.ctx.sched.stop();
      return false;
    });
  }

  private converged(): boolean {
    if (this.source === undefined || this.target === undefined || !this.workload.idle) return false;
    if (this.sourceJournal.unreleased() > 0 || this.targetDisk.unreleased() > 0) return false;
    for (const g of this.ctx.cfg.groups) {
      for (const v of g.volumes) {
        for (let b = 0; b < v.blocks; b++) {
          if (this.ctx.history.current(v.name, b)?.writeId !== this.targetDisk.volumes.read(v.name, b))
            return false;
        }
      }
    }
    return true;
  }

  private result(): SimResult {
    const { stats, checkers, sched, trace } = this.ctx;
    return {
      seed: this.opts.seed,
      bug: this.opts.bug,
      violations: checkers.violations,
      violationCounts: checkers.counts,
      traceHash: trace.hex,
      stats: {
        ...stats,
        ...this.net.stats,
        cutsChecked: checkers.cutsChecked,
        virtualMs: sched.nowUs / 1000,
        events: sched.eventsRun,
      },
      config: this.ctx.cfg,
    };
  }
}

/** The configuration in one line, for logs. */
function summary(cfg: SimConfig): object {
  return {
    mode: cfg.writeTimeMode,
    sets: cfg.sets.map((s) => `${s.name}=${s.groups.join('+')}${s.accountsPerGroup > 0 ? ' bank' : ''}`),
    volumes: cfg.groups.flatMap((g) => g.volumes.map((v) => `${v.name}:${v.blocks}`)),
    writes: cfg.workload.writesMax,
    crashes: cfg.crashes.map((c) => `${c.side}@${c.atUs / 1000}ms`),
    partitions: cfg.net.partitions.length,
    loss: cfg.net.lossChance,
    dup: cfg.net.dupChance,
    reorder: cfg.net.reorderChance,
  };
}
