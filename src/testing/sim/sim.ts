/**
 * One deterministic simulated run (DESIGN.md §3, TESTING.md layer 3): a source node and a target
 * node in one process, the real core state machines inside them, a seeded network and seeded
 * disks around them, all on virtual time. Everything is drawn from the seed: same seed, same run
 * (the trace hash says so).
 *
 *   safety phase   [0, safetyUs): hosts write; the network loses, duplicates, reorders and
 *                  partitions; either node crashes (losing unsynced writes) and restarts; groups
 *                  are suspended and resumed (a delta resync).
 *   liveness phase: the workload stops, the network heals, no more crashes, every suspended
 *                  group resumes; the run ends as soon as the target has converged (resyncs
 *                  done, every bit clear, images consistent), or after livenessUs.
 *   checkers       at every completed cut, every release, every crash, and at the end
 *                  (checkers.ts). A throw inside the run is a violation too ('exception').
 *
 * With a takeover (cfg.takeover, failback.ts) the target takes over in the safety phase, hosts
 * move to it (some still write to the old source until it is fenced), and the failback hands both
 * sides' dirty sets over; this run then stops and a reverse run goes on from the disks as the
 * failback left them (same topology, its own faults): the promoted node is its source, the old
 * source its target, resyncing the union. Its checkers (convergence included) judge the failback.
 *
 * `runSim({ seed, bug })` returns the violations; replay.ts runs one seed from the command line.
 */
import { AssertionError } from '../../core/assert.js';
import type { NodeId, OrderKey } from '../../core/types.js';
import { nodeIdOf, ordinal, seq, timeUs } from '../../core/types.js';
import { Checkers, CHECKER_NAMES } from './checkers.js';
import type { CheckerName, GroupResyncEnd, Violation } from './checkers.js';
import type { BugName, SimConfig } from './config.js';
import { configFor, reverseConfigFor } from './config.js';
import type { SimContext, SimStats } from './context.js';
import { newStats, TraceHash } from './context.js';
import type { BitmapSnapshot } from './disk.js';
import { SimBitmapFile, SimJournal } from './disk.js';
import type { HostNode, ReverseStart } from './failback.js';
import { countChunks, PromotedNode, PromotedWrites, reverseStart } from './failback.js';
import { History } from './history.js';
import type { NetworkStats } from './network.js';
import { Network } from './network.js';
import { Rng } from './rng.js';
import { Scheduler } from './scheduler.js';
import { SourceDisk, SourceNode } from './source.js';
import { TargetDisk, TargetNode } from './target.js';
import { Workload } from './workload.js';

/** How often the liveness phase checks whether the target has caught up. */
const CONVERGENCE_POLL_US = 20_000;
/** A takeover or failback that cannot go on now tries again this much later. */
const RETRY_US = 1_000;
/** The key of a seq a failback's base stands for: below every key to come (node: resetApplyState). */
const LEAST_KEY: OrderKey = { writeTimeUs: timeUs(0), nodeId: 0 as NodeId, ordinal: ordinal(0) };

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
    NetworkStats & {
      readonly cutsChecked: number;
      readonly cutsInconsistent: number;
      readonly virtualMs: number;
      readonly events: number;
    };
  readonly config: SimConfig;
}

/** The command that replays one seed. */
export function replayCommand(seed: number, bug?: BugName): string {
  return `node dist/src/testing/sim/replay.js --seed ${seed}${bug === undefined ? '' : ` --bug ${bug}`}`;
}

export function runSim(opts: SimOptions): SimResult {
  return new Simulation(opts).run();
}

/** A run with a failback: the forward run's figures and violations, then the reverse run's. */
function mergeResults(a: SimResult, b: SimResult): SimResult {
  const counts = new Map(a.violationCounts);
  for (const [c, n] of b.violationCounts) counts.set(c, (counts.get(c) ?? 0) + n);
  const trace = new TraceHash();
  trace.add(a.traceHash, b.traceHash);
  const stats: Record<string, unknown> = { ...a.stats };
  for (const [k, v] of Object.entries(b.stats))
    if (typeof v === 'number') stats[k] = (stats[k] as number) + v;
  const drops = { ...a.stats.sessionDrops };
  for (const [k, v] of Object.entries(b.stats.sessionDrops)) drops[k] = (drops[k] ?? 0) + v;
  return {
    ...a,
    violations: [...a.violations, ...b.violations],
    violationCounts: counts,
    traceHash: trace.hex,
    stats: { ...(stats as unknown as SimResult['stats']), sessionDrops: drops },
  };
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
  private readonly sourceDisk: SourceDisk;
  private readonly targetDisk: TargetDisk;
  private readonly workload: Workload;
  private readonly rngs: { readonly source: Rng; readonly target: Rng; readonly faults: Rng };
  private readonly pointCrashes = { source: 0, target: 0 };
  private source: SourceNode | undefined;
  private target: TargetNode | undefined;
  private safety = true;
  /** The takeover and failback (cfg.takeover); the reverse run's start once failed back. */
  private readonly promotedWrites = new PromotedWrites();
  private promoted: PromotedNode | undefined;
  private takenOver = false;
  private failbackBusy = false;
  /** Bumped by a crash: a failback under way does not go on. */
  private failbackGen = 0;
  private reverse: ReverseStart | undefined;
  private readonly rngsTakeover: { readonly stray: Rng; readonly reverse: Rng };

  constructor(
    private readonly opts: SimOptions,
    /** The reverse run after a failback: how it begins. */
    private readonly start?: ReverseStart,
  ) {
    const root = start?.rng ?? new Rng(opts.seed);
    const drawn = configFor(root.fork());
    const cfg = start?.cfg ?? drawn;
    const sched = new Scheduler();
    const history = start?.history ?? new History();
    let stamps = start?.stamps ?? 0;
    let sessions = 0;
    this.ctx = {
      sched,
      cfg,
      bug: opts.bug,
      epoch: start?.epoch ?? 1,
      sourceNodeId: nodeIdOf(start === undefined ? 'siteA' : 'siteB'),
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
      else if (this.promoted !== undefined) this.promoted.onFrame(f);
      else this.target?.onFrame(f);
    });
    const groups = cfg.groups.map((g) => g.name);
    this.sourceJournal = new SimJournal(sched, root.fork(), cfg.disk.journalSyncUs, groups);
    this.targetDisk = new TargetDisk(this.ctx, root.fork());
    this.workload = new Workload(
      this.ctx,
      root.fork(),
      (bank) => this.route(bank),
      (v, b) => this.balanceAt(v, b),
    );
    this.rngs = { source: root.fork(), target: root.fork(), faults: root.fork() };
    const bitmaps = new SimBitmapFile(sched, root.fork(), cfg.resync.bitmapPersistUs, this.ctx.stamp);
    bitmaps.onPersisted = (bits, stamp) => {
      this.ctx.checkers.onBitmapPersisted(bits, stamp);
      // Bits durable, the tracked writes waiting for them not yet applied, copies maybe unsynced.
      this.ctx.crashPoint('source');
    };
    this.sourceDisk = new SourceDisk(this.sourceJournal, bitmaps);
    // Drawn after every other stream: runs without a takeover keep theirs.
    this.rngsTakeover = { stray: root.fork(), reverse: root.fork() };
    if (start !== undefined) this.presetReverse(start, bitmaps);
  }

  /**
   * The reverse run begins where the failback left the disks: every group in `resync` after its
   * base on both sides, the union as the source's bitmaps, the old source's content on the target
   * volumes, announced `resync` there (accept), and the checkers' truth of which chunks differ.
   */
  private presetReverse(start: ReverseStart, bitmaps: SimBitmapFile): void {
    for (const g of this.ctx.cfg.groups) {
      const base = start.bases.get(g.name)!;
      if (base > 0) {
        this.sourceJournal.startAfter(g.name, base, LEAST_KEY);
        this.targetDisk.journal(g.name).startAfter(g.name, base, LEAST_KEY);
      }
      this.sourceDisk.delta.set(g.name, { state: 'resync', copyEndSeq: 0 });
      this.targetDisk.announced.set(g.name, { state: 'resync', copyEndSeq: 0 });
    }
    for (const set of this.ctx.cfg.sets) {
      this.targetDisk.applyStates.set(set.name, {
        cutCompleted: undefined,
        cutPlanned: undefined,
        seqApplied: new Map(set.groups.map((g) => [g, seq(start.bases.get(g)!)])),
        markerReached: new Map(set.groups.map((g) => [g, undefined])),
      });
    }
    bitmaps.preset(start.dirty);
    for (const b of start.targetBlocks) this.targetDisk.volumes.preset(b.volume, b.block, b.id);
    this.ctx.checkers.presetTruth(start.truth);
  }

  run(): SimResult {
    const { sched, cfg } = this.ctx;
    this.ctx.log(`config ${JSON.stringify(summary(cfg))}`);
    try {
      this.startSource();
      this.startTarget();
      this.workload.start();
      for (const c of [...cfg.crashes, ...cfg.resync.crashes])
        sched.after(c.atUs, () => this.crash(c.side, c.downUs));
      for (const p of cfg.net.partitions) {
        sched.after(p.startUs, () => this.ctx.log(`partition until ${p.endUs / 1000} ms`));
      }
      for (const sp of cfg.resync.suspensions) {
        sched.after(sp.atUs, () => this.suspend(sp.groups));
        if (sp.resumeAtUs !== undefined) sched.after(sp.resumeAtUs, () => this.resume(sp.groups));
      }
      if (cfg.takeover !== undefined) sched.after(cfg.takeover.atUs, () => this.tryTakeover());
      sched.runUntil(cfg.safetyUs);
      if (this.reverse === undefined) {
        this.beginLiveness();
        sched.runUntil(cfg.safetyUs + cfg.livenessUs);
      }
      if (cfg.takeover !== undefined) {
        if (this.reverse === undefined) {
          this.ctx.checkers.report(
            'convergence',
            this.takenOver ? 'the failback never happened' : 'the takeover never happened',
          );
        }
        return this.endForward();
      }
      this.ctx.checkers.onEnd({
        sourceUp: this.source !== undefined,
        targetUp: this.target !== undefined,
        workloadIdle: this.workload.idle,
        sourceUnreleased: this.sourceJournal.unreleased(),
        targetUnreleased: this.targetDisk.unreleased(),
        read: (v, b) => this.targetDisk.volumes.read(v, b),
        resync: this.resyncEnd(),
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

  /** The forward run of a run with a takeover ended: the reverse run goes on from the failback. */
  private endForward(): SimResult {
    for (const v of this.ctx.checkers.violations) this.ctx.log(`violation [${v.checker}] ${v.message}`);
    const forward = this.result();
    if (this.reverse === undefined) return forward;
    const log = this.opts.log;
    const back = new Simulation(
      { ...this.opts, log: log === undefined ? undefined : (line) => log(`reverse ${line}`) },
      this.reverse,
    ).run();
    return mergeResults(forward, back);
  }

  // ---- takeover and failback (failback.ts) ----

  /** Where a host's next operation goes: after the takeover, the promoted node, or (stray) the old source. */
  private route(bank: boolean): HostNode | undefined {
    if (!this.takenOver) return this.source;
    const stray = this.ctx.cfg.takeover!.strayChance;
    if (bank || stray === 0 || !this.rngsTakeover.stray.chance(stray)) return this.promoted;
    const old = this.source;
    if (old === undefined) return undefined;
    const { stats } = this.ctx;
    return {
      nodeClockUs: old.nodeClockUs,
      write: (req, done) => {
        stats.strayWrites++;
        old.write(req, (ok) => {
          if (ok) stats.strayAcked++;
          done(ok);
        });
      },
      flush: (stamp, done) => old.flush(stamp, done),
    };
  }

  /** A bank account's balance where the bank writes: the source's history, or the promoted volumes. */
  private balanceAt(volume: string, block: number): number | undefined {
    if (!this.takenOver) return this.ctx.history.current(volume, block)?.balance;
    const id = this.targetDisk.volumes.read(volume, block);
    if (id === undefined) return undefined;
    return this.promotedWrites.get(id)?.balance ?? this.ctx.history.writes[id]?.balance;
  }

  /** Polls until the target can take over (its image consistent, no cycle running), then does. */
  private tryTakeover(): void {
    if (this.takenOver) return;
    const t = this.target;
    t?.takeover((r) => {
      this.takenOver = true;
      this.targetDisk.takeover = { epoch: r.epoch, takeoverSeq: r.takeoverSeq };
      this.targetDisk.promotedBits.preset(r.beyondCut);
      for (const set of this.ctx.cfg.sets) {
        const cut = r.cuts.get(set.name);
        if (cut !== undefined)
          this.ctx.checkers.onConsistent(set, cut, (v, b) => this.targetDisk.volumes.read(v, b));
      }
      this.ctx.stats.takeovers++;
      const seqs = [...r.takeoverSeq].map(([g, s]) => `${g} ${s}`).join(', ');
      this.ctx.trace.add('takeover', seqs);
      this.ctx.log(
        `takeover at epoch ${r.epoch}, applied ${seqs}; ${countChunks(r.beyondCut)} chunks beyond the cut`,
      );
      t.crash();
      this.target = undefined;
      this.startPromoted();
      this.ctx.sched.after(this.ctx.cfg.takeover!.failbackAfterUs, () => this.tryFailback());
    });
    this.ctx.sched.after(RETRY_US, () => this.tryTakeover());
  }

  private startPromoted(): void {
    const epoch = this.targetDisk.takeover!.epoch;
    this.promoted = new PromotedNode(
      this.ctx,
      this.rngs.target.fork(),
      this.targetDisk,
      this.net,
      this.promotedWrites,
      epoch,
    );
    this.ctx.log(`promoted node up (epoch ${epoch})`);
  }

  /**
   * The failback once both nodes are up: demote the old source (fenced, drained, its dirty set),
   * drain the promoted node (its bitmap); then the reverse run begins and this one stops. A crash
   * of either node in between starts it again.
   */
  private tryFailback(): void {
    if (this.reverse !== undefined || this.failbackBusy) return;
    const old = this.source;
    const promoted = this.promoted;
    if (old === undefined || promoted === undefined) {
      this.ctx.sched.after(RETRY_US, () => this.tryFailback());
      return;
    }
    this.failbackBusy = true;
    const gen = this.failbackGen;
    const took = this.targetDisk.takeover!;
    this.ctx.log('failback: demote');
    old.demote(took.epoch, took.takeoverSeq, (oldDirty) => {
      if (gen !== this.failbackGen) return;
      this.ctx.log('failback: promote');
      promoted.drain((newDirty) => {
        if (gen === this.failbackGen) this.failedBack(oldDirty, newDirty);
      });
    });
  }

  private failedBack(oldDirty: BitmapSnapshot, newDirty: BitmapSnapshot): void {
    const { cfg } = this.ctx;
    const bases = new Map(
      cfg.groups.map((g) => [
        g.name,
        Math.max(this.sourceJournal.seqLast(g.name), this.targetDisk.journal(g.name).seqLast(g.name)),
      ]),
    );
    this.reverse = reverseStart({
      cfg,
      bug: this.ctx.bug,
      rng: this.rngsTakeover.reverse.fork(),
      epoch: this.targetDisk.takeover!.epoch,
      history: this.ctx.history,
      promoted: this.promoted!,
      promotedWrites: this.promotedWrites,
      checkers: this.ctx.checkers,
      oldDirty,
      newDirty,
      bases,
      reverseCfg: reverseConfigFor(this.rngsTakeover.reverse.fork(), cfg),
    });
    const chunks = countChunks(this.reverse.dirty);
    this.ctx.stats.failbacks++;
    this.ctx.stats.failbackDirtyChunks += chunks;
    this.ctx.trace.add('failback', chunks);
    this.ctx.log(`failback: ${chunks} chunks to resync; the run goes on in the other direction`);
    this.ctx.sched.stop();
  }

  private startSource(): void {
    this.source = new SourceNode(
      this.ctx,
      this.rngs.source.fork(),
      this.sourceDisk,
      this.net,
      (g) => this.targetDisk.seqDurable(g),
      (c) => this.targetDisk.holdsCopy(c),
    );
    this.ctx.log('source up');
  }

  /** Suspends the groups at the source: at once if it is up, else when it restarts. */
  private suspend(groups: readonly string[]): void {
    if (!this.safety) return;
    for (const g of groups) {
      if (this.source !== undefined) this.source.suspend(g);
      else {
        const d = this.sourceDisk.delta.get(g);
        this.sourceDisk.delta.set(g, { state: 'suspended', copyEndSeq: d?.copyEndSeq ?? 0 });
        this.ctx.log(`${g}: suspended while the source is down`);
      }
    }
  }

  /** Resumes the groups: a delta resync, at once if the source is up, else when it restarts. */
  private resume(groups: readonly string[]): void {
    for (const g of groups) {
      if (this.source !== undefined) this.source.resume(g);
      else {
        const d = this.sourceDisk.delta.get(g);
        if (d?.state === 'suspended') this.sourceDisk.delta.set(g, { ...d, state: 'resync' });
      }
    }
  }

  private resyncEnd(): GroupResyncEnd[] | undefined {
    const source = this.source;
    const target = this.target;
    if (source === undefined || target === undefined) return undefined;
    return this.ctx.cfg.groups.map((g) => {
      const d = source.deltaOf(g.name);
      return {
        group: g.name,
        sourceState: d.state,
        dirtyChunks: d.dirtyChunks,
        targetConsistent: target.groupConsistentNow(g.name),
      };
    });
  }

  private startTarget(): void {
    if (this.targetDisk.takeover !== undefined) return this.startPromoted();
    this.target = new TargetNode(this.ctx, this.rngs.target.fork(), this.targetDisk, this.net);
    this.ctx.log('target up');
  }

  private crash(side: 'source' | 'target', downUs: number): void {
    if (!this.safety || this.reverse !== undefined) return;
    const { stats, trace, sched } = this.ctx;
    if (this.failbackBusy) {
      // A failback under way starts again once the node is back.
      this.failbackGen++;
      this.failbackBusy = false;
      this.promoted?.undrain();
      sched.after(RETRY_US, () => this.tryFailback());
    }
    if (side === 'target' && this.promoted !== undefined) {
      this.promoted.crash();
      this.promoted = undefined;
      this.targetDisk.crash();
      stats.targetCrashes++;
      trace.add('crash', 'promoted');
      this.ctx.log(`promoted node crashed; down ${downUs / 1000} ms`);
      sched.after(downUs, () => this.startTarget());
    } else if (side === 'source' && this.source !== undefined) {
      this.source.crash();
      this.source = undefined;
      const lost = this.sourceJournal.crash(this.ctx.cfg.disk.tornChance);
      this.sourceDisk.bitmaps.crash();
      const writes = this.ctx.history.markLost(
        lost.filter((e) => e.copy === undefined).map((e) => e.writeId),
        lost.flatMap((e) => (e.copy === undefined ? [] : [e.copy.copyId])),
      );
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
    this.resume(this.ctx.cfg.groups.map((g) => g.name));
    this.ctx.log('liveness phase: workload stopped, network healed, no more crashes, every group resumed');
    // With a takeover the failback ends this run; the reverse run checks convergence.
    if (this.ctx.cfg.takeover !== undefined) return;
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
    if (!this.source.resyncsDone || !this.target.consistent) return false;
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
        cutsInconsistent: checkers.cutsInconsistent,
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
    crashes: [...cfg.crashes, ...cfg.resync.crashes].map((c) => `${c.side}@${c.atUs / 1000}ms`),
    partitions: cfg.net.partitions.length,
    loss: cfg.net.lossChance,
    dup: cfg.net.dupChance,
    reorder: cfg.net.reorderChance,
    chunkBlocks: cfg.resync.chunkBlocks,
    suspensions: cfg.resync.suspensions.map(
      (sp) =>
        `${sp.groups.join('+')}@${sp.atUs / 1000}ms-${sp.resumeAtUs === undefined ? 'liveness' : `${sp.resumeAtUs / 1000}ms`}`,
    ),
  };
}
