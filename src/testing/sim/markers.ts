/**
 * Markers across nodes with unrelated clocks (DESIGN.md §3.4; doc/simulator.md "Markers across
 * nodes"): a deterministic simulation of two source nodes, two target nodes and a coordinator, on
 * virtual time drawn from one seed, with the real core state machines: a `Sequencer` per source
 * node (its own clock: offsets of hours, different rates and write-time modes), a `GroupArrival`
 * per group at its target, `planCycle` / `completeCycle` with `markersReleased` and
 * `waitingAtMarker` per apply segment (one per source node on a target node: keys of different
 * source nodes do not compare).
 *
 *   hosts --write--> source: sequenced + journalled --> acknowledged; held while frozen
 *   coordinator, every period: freeze S1, S2 (writes submitted before are journalled first)
 *        --> n = 1 + max last marker --> mark n on both (markers in every group, one step; thaw)
 *        faults: a freeze or a mark lost, a mark late past the freeze's bound (refused)
 *   link per group: every record delivered eventually (delay, reordering, duplication, loss with
 *        resend); ticks (seq, node's last key) now and then
 *   target node: journal + arrival per group; per segment apply cycles; a barrier: every group of
 *        the node waits at a marker --> all at n: snapshot n, release n; else the lowest is
 *        incomplete there, release it. Crashes: memory lost, restart from the durable journal and
 *        apply state (redo of a planned cut), snapshots durable.
 *
 *   node dist/src/testing/sim/markers.js --seed N [--bug NAME] [--quiet]
 */
import { pathToFileURL } from 'node:url';
import { parseReplayArgs } from './replay-args.js';
import type { ApplyState, CyclePlan, PlanResult } from '../../core/apply-plan.js';
import { completeCycle, initialApplyState, planCycle, waitingAtMarker } from '../../core/apply-plan.js';
import { ARRIVAL_LIMITS_DEFAULT, GroupArrival } from '../../core/arrival.js';
import { Sequencer } from '../../core/sequencer.js';
import type { NodeId, OrderKey, RecordHeader, TimeUs, WriteTimeMode } from '../../core/types.js';
import { byteOffset, nodeIdOf, ordinal, RecordKind, seq, timeUs } from '../../core/types.js';
import { TraceHash } from './context.js';
import type {
  GroupShape,
  MarkerCheckerName,
  MarkerViolation,
  Pair,
  Placement,
  SimRecord,
  TargetEnd,
  WriteRec,
} from './markers-check.js';
import {
  checkConvergence,
  checkDependent,
  checkFreezePoint,
  checkMarkerCut,
  checkMonotonic,
  checkNoLoss,
  MARKER_CHECKERS,
} from './markers-check.js';
import { Rng } from './rng.js';
import { Scheduler } from './scheduler.js';

export const MARKER_BUGS = ['freeze-no-drain', 'no-freeze', 'barrier-early', 'global-key-cut'] as const;
export type MarkerBug = (typeof MARKER_BUGS)[number];
export const isMarkerBug = (s: string): s is MarkerBug => (MARKER_BUGS as readonly string[]).includes(s);

export interface SourceCfg {
  readonly name: string;
  readonly nodeId: NodeId;
  readonly mode: WriteTimeMode;
  /** The node's clock: CLOCK_BASE_US + offsetUs + rate * virtual time. */
  readonly offsetUs: number;
  readonly rate: number;
  /** Chance that a write carries the host's own time. */
  readonly hostTimeChance: number;
}

type Range = readonly [number, number];

export interface MarkerSimConfig {
  readonly sources: readonly SourceCfg[];
  readonly targets: readonly string[];
  readonly groups: readonly GroupShape[];
  readonly hosts: number;
  readonly opsPerHost: number;
  /** Chance that a host operation is a dependent pair across source nodes. */
  readonly pairChance: number;
  /** Per host: its clock's offset (host times it sends). */
  readonly hostOffsetUs: readonly number[];
  readonly thinkUs: Range;
  /** Submit to journalled (in flight at the source), journalled to acknowledged. */
  readonly journalUs: Range;
  readonly ackUs: Range;
  readonly netUs: Range;
  readonly lossChance: number;
  readonly dupChance: number;
  readonly resendUs: number;
  readonly tickUs: number;
  /** Coordinator <-> source messages. */
  readonly ctlUs: Range;
  readonly periodUs: number;
  readonly boundUs: number;
  readonly faultChance: number;
  readonly cycleUs: number;
  /** planCycle's recordsPerGroupMax (undefined: no cap), as the node's apply passes one. */
  readonly recordsPerGroupMax: number | undefined;
  readonly stepUs: Range;
  readonly targetCrashes: number;
  readonly crashPointChance: number;
  readonly downUs: Range;
  /** How long after the workload the final marker must be reached everywhere. */
  readonly livenessUs: number;
}

export interface MarkerSimStats {
  writes: number;
  pairs: number;
  heldWrites: number;
  checkpoints: number;
  checkpointsFailed: number;
  boundPassed: number;
  markersPlaced: number;
  snapshots: number;
  incomplete: number;
  cycles: number;
  redo: number;
  targetCrashes: number;
  recordsLost: number;
  recordsDuplicated: number;
  mixedTargets: number;
}

export interface MarkerSimResult {
  readonly seed: number;
  readonly bug: MarkerBug | undefined;
  readonly traceHash: string;
  readonly stats: MarkerSimStats;
  readonly violations: readonly MarkerViolation[];
  readonly violationCounts: ReadonlyMap<MarkerCheckerName, number>;
  readonly finalMarker: number | undefined;
  readonly endUs: number;
}

export interface MarkerSimOptions {
  readonly seed: number;
  readonly bug?: MarkerBug | undefined;
  readonly log?: ((line: string) => void) | undefined;
}

/** The node clocks' common base (µs since the epoch, late 2023); offsets of hours around it. */
const CLOCK_BASE_US = 1_700_000_000_000_000;
const HOUR_US = 3_600_000_000;
const MODES: readonly WriteTimeMode[] = ['clock', 'host-last', 'counter'];
const RATES = [1, 1, 0.5, 2, 1.0001, 0.999] as const;

export function markerConfig(seed: number): MarkerSimConfig {
  const r = new Rng(seed ^ 0x5eed_0005);
  const sources: SourceCfg[] = ['S1', 'S2'].map((name) => ({
    name,
    nodeId: nodeIdOf(name),
    mode: r.pick(MODES),
    offsetUs: r.int(-3 * HOUR_US, 3 * HOUR_US),
    rate: r.pick(RATES),
    hostTimeChance: r.pick([0, 0, 0.05, 0.3]),
  }));
  const routes: [string, string][] = [
    ['S1', 'T1'],
    ['S2', 'T2'],
  ];
  if (r.chance(0.5)) routes.push(['S1', 'T2']);
  if (r.chance(0.5)) routes.push(['S2', 'T1']);
  if (r.chance(0.3)) routes.push([r.pick(['S1', 'S2']), r.pick(['T1', 'T2'])]);
  const groups: GroupShape[] = routes.map(([source, target], i) => {
    const name = `g${i + 1}.${source}-${target}`;
    const n = r.int(1, 2);
    return {
      name,
      source,
      target,
      volumes: Array.from({ length: n }, (_, v) => ({ name: `${name}/v${v}`, blocks: r.int(3, 8) })),
    };
  });
  const hosts = r.int(2, 3);
  const net = r.pick<Range>([
    [50, 500],
    [100, 2000],
    [200, 5000],
  ]);
  return {
    sources,
    targets: ['T1', 'T2'],
    groups,
    hosts,
    opsPerHost: r.int(20, 50),
    pairChance: r.pick([0.2, 0.4, 0.6]),
    hostOffsetUs: Array.from({ length: hosts }, () => r.int(-3 * HOUR_US, 3 * HOUR_US)),
    thinkUs: [0, r.pick([200, 1000, 3000])],
    journalUs: [50, r.pick([500, 2000, 4000])],
    ackUs: [20, 300],
    netUs: net,
    lossChance: r.pick([0, 0.02, 0.1]),
    dupChance: r.pick([0, 0.02, 0.1]),
    resendUs: r.int(2000, 10_000),
    tickUs: r.int(1000, 8000),
    ctlUs: [50, r.pick([500, 1500, 3000])],
    periodUs: r.int(5000, 30_000),
    boundUs: r.int(15_000, 50_000),
    faultChance: r.pick([0, 0.1, 0.3]),
    cycleUs: r.int(1000, 8000),
    recordsPerGroupMax: r.pick([undefined, 1, 3, 16]),
    stepUs: [10, r.pick([200, 1000])],
    targetCrashes: r.int(0, 3),
    crashPointChance: r.pick([0, 0.01, 0.05]),
    downUs: [1000, 40_000],
    livenessUs: 3_000_000,
  };
}

interface Pending {
  readonly w: WriteRec;
  readonly hostTimeUs: TimeUs | undefined;
  readonly onAck: () => void;
}

type FreezeReply = { ok: true; lastMarker: number } | { ok: false; why: string };
type MarkReply = { ok: true } | { ok: false; why: string };

class SourceNode {
  readonly seqr: Sequencer;
  readonly groups: readonly GroupShape[];
  private readonly inflight = new Map<number, Pending>();
  private held: Pending[] = [];
  private frozen: { id: number; idx: number } | undefined;
  private idx = 0;

  constructor(
    private readonly sim: MarkerSim,
    readonly cfg: SourceCfg,
  ) {
    this.seqr = new Sequencer(cfg.nodeId, cfg.mode, {
      lastOrdinal: ordinal(0),
      lastWriteTimeUs: timeUs(0),
      lastSeq: new Map(),
    });
    this.groups = sim.cfg.groups.filter((g) => g.source === cfg.name);
    for (const g of this.groups) sim.journals.set(g.name, []);
  }

  get name(): string {
    return this.cfg.name;
  }

  clockUs(): TimeUs {
    return timeUs(CLOCK_BASE_US + this.cfg.offsetUs + Math.round(this.sim.sched.nowUs * this.cfg.rate));
  }

  lastMarker(): number {
    return Math.max(0, ...this.groups.map((g) => this.sim.lastMarker.get(g.name) ?? 0));
  }

  /** A host write: journalled after its in-flight time, or held while the node is frozen. */
  submit(
    w: Omit<WriteRec, 'submitIdx' | 'heldBy' | 'seq' | 'ackUs'>,
    hostTimeUs: TimeUs | undefined,
    onAck: () => void,
  ): void {
    const rec: WriteRec = {
      ...w,
      submitIdx: ++this.idx,
      heldBy: undefined,
      seq: undefined,
      ackUs: undefined,
    };
    this.sim.writes.set(rec.writeId, rec);
    const p: Pending = { w: rec, hostTimeUs, onAck };
    if (this.frozen !== undefined) {
      rec.heldBy = this.frozen.id;
      this.held.push(p);
      this.sim.stats.heldWrites++;
      return;
    }
    this.inflight.set(rec.writeId, p);
    this.sim.sched.after(this.sim.draw(this.sim.cfg.journalUs), () => {
      if (this.inflight.has(rec.writeId)) this.journal(p);
    });
  }

  private journal(p: Pending): void {
    this.inflight.delete(p.w.writeId);
    const f = this.seqr.next(p.w.group, p.hostTimeUs, this.clockUs());
    const h = headerOf(f, RecordKind.data, p.w.group, p.w.volume, p.w.block, 1, 0);
    p.w.seq = f.seq;
    this.append({ h, writeId: p.w.writeId });
    this.sim.trace.add('j', p.w.writeId, p.w.group, f.seq);
    this.sim.sched.after(this.sim.draw(this.sim.cfg.ackUs), () => {
      p.w.ackUs = this.sim.sched.nowUs;
      p.onAck();
    });
  }

  private append(r: SimRecord): void {
    this.sim.journals.get(r.h.group)!.push(r);
    this.sim.ship(r);
  }

  freeze(id: number, boundUs: number): FreezeReply {
    if (this.frozen !== undefined) return { ok: false, why: `frozen already by ${this.frozen.id}` };
    // Writes submitted before the freeze are journalled now (the drain).
    if (this.sim.bug !== 'freeze-no-drain') for (const p of [...this.inflight.values()]) this.journal(p);
    this.frozen = { id, idx: ++this.idx };
    this.sim.trace.add('freeze', this.name, id);
    this.sim.sched.after(boundUs, () => {
      if (this.frozen?.id !== id) return;
      this.sim.stats.boundPassed++;
      this.sim.log(`${this.name}: freeze ${id} passed its bound: thawed without a marker`);
      this.thawNow();
    });
    return { ok: true, lastMarker: this.lastMarker() };
  }

  /** Marker n into every group of the set here in one step, then thaw (`id` undefined: no freeze). */
  mark(id: number | undefined, n: number): MarkReply {
    if (id !== undefined && this.frozen?.id !== id) return { ok: false, why: `not frozen by ${id}` };
    const low = this.groups.find((g) => (this.sim.lastMarker.get(g.name) ?? 0) >= n);
    if (low !== undefined) {
      if (id !== undefined) this.thawNow();
      return { ok: false, why: `marker ${n} is not above ${low.name}'s last` };
    }
    const freeze = this.frozen;
    const markIdx = ++this.idx;
    for (const g of this.groups) {
      const f = this.seqr.next(g.name, undefined, this.clockUs());
      const prev = this.sim.lastMarker.get(g.name) ?? 0;
      // A marker's offset names the marker before it in the group.
      const h = headerOf(f, RecordKind.marker, g.name, '', prev, 0, n);
      this.sim.lastMarker.set(g.name, n);
      this.append({ h, writeId: 0 });
    }
    this.sim.placements.push({
      source: this.name,
      marker: n,
      freezeId: freeze?.id,
      freezeIdx: freeze?.idx,
      markIdx,
    });
    this.sim.stats.markersPlaced++;
    this.sim.trace.add('mark', this.name, n);
    this.sim.log(`${this.name}: marker ${n} placed`);
    if (freeze !== undefined) this.thawNow();
    return { ok: true };
  }

  thaw(id: number): void {
    if (this.frozen?.id === id) this.thawNow();
  }

  private thawNow(): void {
    this.frozen = undefined;
    const held = this.held;
    this.held = [];
    for (const p of held) this.journal(p);
  }

  sendTicks(): void {
    const key = this.seqr.lastKey();
    for (const g of this.groups) this.sim.shipTick(g.name, this.seqr.seqOf(g.name), key);
  }
}

interface Segment {
  readonly source: string;
  readonly groups: readonly string[];
}

class TargetNode {
  readonly groups: readonly GroupShape[];
  readonly segments: readonly Segment[];
  up = true;
  private incarnation = 0;
  private busy = false;
  private crashes = 0;
  // Durable.
  private readonly journal = new Map<string, Map<number, SimRecord>>();
  private readonly durableState: ApplyState[];
  private readonly keyApplied = new Map<string, OrderKey | undefined>();
  readonly volumes = new Map<string, number[]>();
  readonly snapshots = new Map<number, Map<string, number[]>>();
  readonly outcomes: { marker: number; kind: 'snapshot' | 'incomplete' }[] = [];
  readonly releasedTrace: number[] = [0];
  released = 0;
  private reached = 0;
  // Memory.
  private arrivals = new Map<string, GroupArrival>();
  private state: ApplyState[];

  constructor(
    private readonly sim: MarkerSim,
    readonly name: string,
  ) {
    this.groups = sim.cfg.groups.filter((g) => g.target === name);
    const bySource = [...new Set(this.groups.map((g) => g.source))];
    this.segments =
      sim.bug === 'global-key-cut'
        ? [{ source: bySource.join('+'), groups: this.groups.map((g) => g.name) }]
        : bySource.map((s) => ({
            source: s,
            groups: this.groups.filter((g) => g.source === s).map((g) => g.name),
          }));
    for (const g of this.groups) {
      this.journal.set(g.name, new Map());
      this.keyApplied.set(g.name, undefined);
      for (const v of g.volumes) this.volumes.set(v.name, new Array<number>(v.blocks).fill(0));
    }
    this.durableState = this.segments.map((s) => initialApplyState(s.groups));
    this.state = [...this.durableState];
    this.rebuildArrivals();
  }

  /** A record delivered by the link: false when it must be sent again. */
  receive(r: SimRecord): boolean {
    if (!this.up) return false;
    const a = this.arrivals.get(r.h.group)!;
    const c = a.check(r.h);
    if (!c.ok) {
      if (c.kind === 'backpressure') return false;
      this.sim.violation(
        'protocol',
        `${this.name}: ${r.h.group} seq ${r.h.seq} refused: ${c.kind}: ${c.detail}`,
      );
      return true;
    }
    if (c.outcome !== 'new') return true;
    this.journal.get(r.h.group)!.set(r.h.seq, r);
    a.onRecord(r.h);
    return true;
  }

  onTick(group: string, afterSeq: number, key: OrderKey): void {
    if (!this.up) return;
    const t = this.arrivals.get(group)!.onTick(seq(afterSeq), key);
    if (!t.ok && t.kind !== 'backpressure') {
      this.sim.violation('protocol', `${this.name}: tick of ${group} refused: ${t.kind}: ${t.detail}`);
    }
  }

  /** The apply loop's turn: every segment's cycle in turn, then the barrier. */
  kick(): void {
    if (!this.up || this.busy) return;
    this.busy = true;
    this.runSegment(0, this.incarnation);
  }

  private plan(i: number): PlanResult {
    const seg = this.segments[i]!;
    return planCycle(
      this.state[i]!,
      seg.groups.map((g) => this.arrivals.get(g)!),
      {
        markersReleased: this.released,
        ...(this.sim.cfg.recordsPerGroupMax === undefined
          ? {}
          : { recordsPerGroupMax: this.sim.cfg.recordsPerGroupMax }),
      },
    );
  }

  private runSegment(i: number, inc: number): void {
    if (i === this.segments.length) {
      this.busy = false;
      this.barrier();
      return;
    }
    const r = this.plan(i);
    if (r.kind !== 'cycle') {
      this.runSegment(i + 1, inc);
      return;
    }
    const bad = r.plan.groups.find((g) => g.abnormal !== undefined);
    if (bad !== undefined) this.sim.violation('protocol', `${this.name}: abnormal marker: ${bad.abnormal}`);
    // Persist the cut in progress before any volume sees it (a redo re-plans exactly it).
    this.durableState[i] = r.state;
    this.state[i] = r.state;
    this.sim.stats.cycles++;
    if (r.plan.redo) this.sim.stats.redo++;
    this.sim.trace.add(
      'cycle',
      this.name,
      i,
      r.plan.cut.writeTimeUs,
      r.plan.cut.ordinal,
      r.plan.redo ? 1 : 0,
    );
    if (this.crashPoint()) return;
    const steps: SimRecord[][] = [];
    for (const gp of r.plan.groups) {
      const recs = gp.apply.map((h) => this.journal.get(gp.group)!.get(h.seq)!);
      for (let k = 0; k < recs.length; k += this.sim.rng.int(1, 3)) steps.push(recs.slice(k, k + 3));
    }
    const step = (k: number): void => {
      if (this.incarnation !== inc) return;
      if (k === steps.length) {
        this.complete(i, r.plan);
        this.runSegment(i + 1, inc);
        return;
      }
      for (const rec of steps[k]!) this.volumes.get(rec.h.volume)![rec.h.offset] = rec.writeId;
      if (k > 0 && this.crashPoint()) return;
      this.sim.sched.after(this.sim.draw(this.sim.cfg.stepUs), () => step(k + 1));
    };
    step(0);
  }

  private complete(i: number, plan: CyclePlan): void {
    const next = completeCycle(this.state[i]!, plan);
    for (const gp of plan.groups) {
      if (gp.seqLast < gp.seqFirst) continue;
      this.keyApplied.set(gp.group, this.arrivals.get(gp.group)!.heldAt(gp.seqLast)!.key);
    }
    this.durableState[i] = next;
    this.state[i] = next;
    for (const gp of plan.groups) {
      const a = this.arrivals.get(gp.group)!;
      a.release(gp.seqLast);
      const j = this.journal.get(gp.group)!;
      for (const s of [...j.keys()]) if (s <= gp.seqLast) j.delete(s);
    }
  }

  /** Every group of the node waits at a marker: snapshot (all at n) or skip the lowest. */
  private barrier(): void {
    const waiting = new Map<string, number>();
    this.state.forEach((s) => {
      for (const [g, m] of waitingAtMarker(s, this.released)) waiting.set(g, m);
    });
    const all = this.groups.length;
    if (waiting.size === 0 || (waiting.size < all && this.sim.bug !== 'barrier-early')) return;
    const low = Math.min(...waiting.values());
    if (low <= this.reached) return;
    const ahead = [...waiting].filter(([, m]) => m !== low);
    if (ahead.length > 0) {
      this.outcomes.push({ marker: low, kind: 'incomplete' });
      this.sim.stats.incomplete++;
      this.sim.log(
        `${this.name}: marker ${low} incomplete (${ahead.map(([g, m]) => `${g} at ${m}`).join(', ')}): no snapshot`,
      );
    } else {
      this.snapshots.set(low, new Map([...this.volumes].map(([v, b]) => [v, [...b]])));
      this.reached = low;
      this.outcomes.push({ marker: low, kind: 'snapshot' });
      this.sim.stats.snapshots++;
      this.sim.log(`${this.name}: snapshot ${low}`);
    }
    this.sim.trace.add('barrier', this.name, low, ahead.length);
    this.released = low;
    this.releasedTrace.push(low);
    this.sim.onTargetProgress();
    this.sim.sched.after(0, () => this.kick());
  }

  /** A crash point (a plan persisted, between apply steps): maybe crash now. */
  private crashPoint(): boolean {
    if (this.sim.rng.chance(this.sim.cfg.crashPointChance) && this.crashes < 3) {
      this.crash();
      return true;
    }
    return false;
  }

  crash(): void {
    if (!this.up) return;
    this.crashes++;
    this.up = false;
    this.busy = false;
    this.incarnation++;
    this.sim.stats.targetCrashes++;
    this.sim.trace.add('crash', this.name, this.sim.sched.nowUs);
    this.sim.log(`${this.name}: crash`);
    this.sim.sched.after(this.sim.draw(this.sim.cfg.downUs), () => this.restart());
  }

  private restart(): void {
    this.up = true;
    this.state = [...this.durableState];
    this.releasedTrace.push(this.released);
    this.rebuildArrivals();
    this.sim.log(`${this.name}: restart (released ${this.released})`);
    this.sim.onTargetProgress();
  }

  /** Arrival from the durable journal, resumed at each group's applied seq (apply.ts). */
  private rebuildArrivals(): void {
    this.arrivals = new Map();
    this.segments.forEach((seg, i) => {
      for (const g of seg.groups) {
        const s = this.durableState[i]!.seqApplied.get(g)!;
        const a = new GroupArrival(g, ARRIVAL_LIMITS_DEFAULT, {
          seqReleased: s,
          keyReleased: this.keyApplied.get(g),
        });
        for (const r of [...this.journal.get(g)!.values()].sort((x, y) => x.h.seq - y.h.seq)) a.onRecord(r.h);
        this.arrivals.set(g, a);
      }
    });
  }

  /** Why the node is not at marker `n` (for a stall's message). */
  describe(): string {
    const parts: string[] = [];
    this.segments.forEach((seg, i) => {
      const st = this.state[i]!;
      for (const g of seg.groups) {
        const a = this.arrivals.get(g)!;
        parts.push(
          `${g} applied ${st.seqApplied.get(g)} marker ${st.markerReached.get(g)} contiguous ${a.seqContiguous}`,
        );
      }
    });
    return `${this.name} released ${this.released}: ${parts.join('; ')}`;
  }

  end(): TargetEnd {
    return {
      name: this.name,
      up: this.up,
      volumes: this.volumes,
      snapshots: this.snapshots,
      outcomes: this.outcomes,
      releasedTrace: this.releasedTrace,
      released: this.released,
    };
  }
}

type Fault = { readonly source: string; readonly kind: 'freeze-lost' | 'mark-lost' | 'mark-late' };

class MarkerSim {
  readonly cfg: MarkerSimConfig;
  readonly sched = new Scheduler();
  readonly trace = new TraceHash();
  readonly rng: Rng;
  private readonly wl: Rng;
  private readonly net: Rng;
  private readonly coord: Rng;
  readonly journals = new Map<string, SimRecord[]>();
  readonly lastMarker = new Map<string, number>();
  readonly writes = new Map<number, WriteRec>();
  readonly pairs: Pair[] = [];
  readonly placements: Placement[] = [];
  readonly stats: MarkerSimStats = {
    writes: 0,
    pairs: 0,
    heldWrites: 0,
    checkpoints: 0,
    checkpointsFailed: 0,
    boundPassed: 0,
    markersPlaced: 0,
    snapshots: 0,
    incomplete: 0,
    cycles: 0,
    redo: 0,
    targetCrashes: 0,
    recordsLost: 0,
    recordsDuplicated: 0,
    mixedTargets: 0,
  };
  private readonly violations: MarkerViolation[] = [];
  private readonly counts = new Map<MarkerCheckerName, number>();
  private readonly sources: SourceNode[];
  private readonly targets: TargetNode[];
  private readonly targetOf = new Map<string, TargetNode>();
  private nextWriteId = 1;
  private hostsRunning: number;
  private freezeIds = 0;
  private workloadDone = false;
  private finalMarker: number | undefined;
  private stalled: string | undefined;

  readonly log: (line: string) => void;

  constructor(
    readonly seed: number,
    readonly bug: MarkerBug | undefined,
    log: (line: string) => void,
  ) {
    this.log = (line) => log(`${(this.sched.nowUs / 1000).toFixed(3).padStart(9)} ms  ${line}`);
    this.cfg = markerConfig(seed);
    const root = new Rng(seed);
    this.rng = root.fork();
    this.wl = root.fork();
    this.net = root.fork();
    this.coord = root.fork();
    this.sources = this.cfg.sources.map((s) => new SourceNode(this, s));
    this.targets = this.cfg.targets.map((t) => new TargetNode(this, t));
    for (const t of this.targets) for (const g of t.groups) this.targetOf.set(g.name, t);
    this.stats.mixedTargets = this.targets.filter(
      (t) => new Set(t.groups.map((g) => g.source)).size > 1,
    ).length;
    this.hostsRunning = this.cfg.hosts;
  }

  draw(r: Range): number {
    return this.rng.int(r[0], r[1]);
  }

  violation(checker: MarkerCheckerName, message: string): void {
    this.counts.set(checker, (this.counts.get(checker) ?? 0) + 1);
    if (this.violations.filter((v) => v.checker === checker).length < 3) {
      this.violations.push({ checker, message });
      this.log(`VIOLATION [${checker}] ${message}`);
    }
  }

  /** The link of a record's group: delivered eventually, in any order, maybe twice. */
  ship(r: SimRecord): void {
    const target = this.targetOf.get(r.h.group)!;
    const attempt = (): void => {
      this.sched.after(this.net.int(this.cfg.netUs[0], this.cfg.netUs[1]), () => {
        if (this.net.chance(this.cfg.lossChance)) {
          this.stats.recordsLost++;
          this.sched.after(this.cfg.resendUs, attempt);
          return;
        }
        if (!target.receive(r)) {
          this.sched.after(this.cfg.resendUs, attempt);
          return;
        }
        if (this.net.chance(this.cfg.dupChance)) {
          this.stats.recordsDuplicated++;
          this.sched.after(this.net.int(this.cfg.netUs[0], this.cfg.netUs[1]), () => target.receive(r));
        }
      });
    };
    attempt();
  }

  shipTick(group: string, afterSeq: number, key: OrderKey): void {
    const target = this.targetOf.get(group)!;
    if (this.net.chance(this.cfg.lossChance)) return;
    this.sched.after(this.net.int(this.cfg.netUs[0], this.cfg.netUs[1]), () =>
      target.onTick(group, afterSeq, key),
    );
  }

  run(): MarkerSimResult {
    try {
      this.start();
      this.sched.runUntil(60_000_000);
      if (this.finalMarker === undefined && this.stalled === undefined) this.stalled = 'the run ended early';
    } catch (e) {
      this.violation('exception', String((e as Error).stack ?? e));
    }
    if (!this.counts.has('exception')) this.check();
    return {
      seed: this.seed,
      bug: this.bug,
      traceHash: this.trace.hex,
      stats: this.stats,
      violations: this.violations,
      violationCounts: this.counts,
      finalMarker: this.finalMarker,
      endUs: this.sched.nowUs,
    };
  }

  private start(): void {
    for (let h = 0; h < this.cfg.hosts; h++) this.sched.after(this.wl.int(0, 1000), () => this.hostOp(h, 0));
    for (const s of this.sources) {
      this.sched.every(this.cfg.tickUs, () => {
        s.sendTicks();
        return true;
      });
    }
    for (const t of this.targets) {
      this.sched.every(this.cfg.cycleUs, () => {
        t.kick();
        return true;
      });
    }
    for (let i = 0; i < this.cfg.targetCrashes; i++) {
      const t = this.rng.pick(this.targets);
      this.sched.after(this.rng.int(1000, 150_000), () => t.crash());
    }
    this.sched.after(this.cfg.periodUs, () => this.checkpoint());
  }

  // --- hosts -------------------------------------------------------------------------------

  private hostOp(h: number, done: number): void {
    if (done >= this.cfg.opsPerHost) {
      if (--this.hostsRunning === 0) {
        this.workloadDone = true;
        this.log(`workload done at ${(this.sched.nowUs / 1000).toFixed(1)} ms`);
        this.sched.after(this.cfg.livenessUs, () => {
          this.stalled = this.targets.map((t) => t.describe()).join(' | ');
          this.log(`stalled: ${this.stalled}`);
          this.sched.stop();
        });
      }
      return;
    }
    const next = (): void =>
      this.sched.after(this.wl.int(this.cfg.thinkUs[0], this.cfg.thinkUs[1]), () => this.hostOp(h, done + 1));
    if (this.wl.chance(this.cfg.pairChance)) {
      const [a, b] = this.wl.chance(0.5)
        ? [this.sources[0]!, this.sources[1]!]
        : [this.sources[1]!, this.sources[0]!];
      // The acknowledgement comes in a later event, after write() returned W1's id.
      const w1: number = this.write(h, a, () => {
        const w2 = this.write(h, b, next);
        this.pairs.push({ w1, w2 });
        this.stats.pairs++;
      });
      return;
    }
    this.write(h, this.wl.pick(this.sources), next);
  }

  private write(h: number, s: SourceNode, onAck: () => void): number {
    const g = this.wl.pick(s.groups);
    const v = this.wl.pick(g.volumes);
    const writeId = this.nextWriteId++;
    const hostTime = this.wl.chance(s.cfg.hostTimeChance)
      ? timeUs(CLOCK_BASE_US + this.cfg.hostOffsetUs[h]! + this.sched.nowUs)
      : undefined;
    this.stats.writes++;
    s.submit(
      {
        writeId,
        source: s.name,
        group: g.name,
        volume: v.name,
        block: this.wl.int(0, v.blocks - 1),
        submitUs: this.sched.nowUs,
      },
      hostTime,
      onAck,
    );
    return writeId;
  }

  // --- coordinator ------------------------------------------------------------------------

  private ctl(): number {
    return this.coord.int(this.cfg.ctlUs[0], this.cfg.ctlUs[1]);
  }

  /** A request to a source and its reply, each over the network; `lost`: never arrives. */
  private rpc<T>(lost: boolean, lateUs: number, call: () => T, reply: (r: T) => void): void {
    if (lost) return;
    this.sched.after(this.ctl() + lateUs, () => {
      const r = call();
      this.sched.after(this.ctl(), () => reply(r));
    });
  }

  /** Calls every source; `finish` once all replied or after `timeoutUs` (missing: undefined). */
  private gather<T>(
    timeoutUs: number,
    send: (s: SourceNode, reply: (r: T) => void) => void,
    finish: (rs: (T | undefined)[]) => void,
  ): void {
    const rs: (T | undefined)[] = this.sources.map(() => undefined);
    let left = this.sources.length;
    let over = false;
    const end = (): void => {
      if (over) return;
      over = true;
      finish(rs);
    };
    this.sources.forEach((s, i) =>
      send(s, (r) => {
        rs[i] = r;
        if (--left === 0) end();
      }),
    );
    this.sched.after(timeoutUs, end);
  }

  private checkpoint(): void {
    const faults = !this.workloadDone;
    const fault: Fault | undefined =
      faults && this.coord.chance(this.cfg.faultChance)
        ? {
            source: this.coord.pick(this.sources).name,
            kind: this.coord.pick(['freeze-lost', 'mark-lost', 'mark-late'] as const),
          }
        : undefined;
    this.stats.checkpoints++;
    const done = (marker: number | undefined, why: string): void => {
      this.trace.add('checkpoint', marker ?? 0);
      if (marker === undefined) {
        this.stats.checkpointsFailed++;
        this.log(`checkpoint failed: ${why}`);
      } else {
        this.log(`checkpoint: marker ${marker} placed on every source`);
      }
      if (!faults && marker !== undefined) {
        this.finalMarker = marker;
        this.onTargetProgress();
        return;
      }
      this.sched.after(this.cfg.periodUs, () => this.checkpoint());
    };
    if (fault !== undefined) this.log(`checkpoint with fault: ${fault.kind} on ${fault.source}`);
    if (this.bug === 'no-freeze') return this.checkpointNoFreeze(fault, done);
    const id = ++this.freezeIds;
    const unreachable = (s: SourceNode, kind: Fault['kind']): boolean =>
      fault?.source === s.name && fault.kind === kind;
    const thawAll = (): void => {
      for (const s of this.sources)
        this.rpc(
          fault?.source === s.name,
          0,
          () => s.thaw(id),
          () => {},
        );
    };
    /** A source whose reply is missing or not ok fails the checkpoint: thaw all, report it. */
    const failed = (replies: readonly ({ ok: boolean } | undefined)[], what: string): boolean => {
      const bad = replies.findIndex((r) => r === undefined || !r.ok);
      if (bad < 0) return false;
      thawAll();
      done(undefined, `${what} ${this.sources[bad]!.name}: ${JSON.stringify(replies[bad]) ?? 'no answer'}`);
      return true;
    };
    this.gather<FreezeReply>(
      this.cfg.boundUs,
      (s, reply) => this.rpc(unreachable(s, 'freeze-lost'), 0, () => s.freeze(id, this.cfg.boundUs), reply),
      (frozen) => {
        if (failed(frozen, 'freeze of')) return;
        const n = 1 + Math.max(...frozen.map((r) => (r as { lastMarker: number }).lastMarker));
        this.gather<MarkReply>(
          2 * this.cfg.boundUs,
          (s, reply) =>
            this.rpc(
              unreachable(s, 'mark-lost'),
              unreachable(s, 'mark-late') ? this.cfg.boundUs : 0,
              () => s.mark(id, n),
              reply,
            ),
          (marked) => {
            if (failed(marked, `marker ${n} on`)) return;
            done(n, '');
          },
        );
      },
    );
  }

  /** Planted bug no-freeze: mark the sources one after the other, nothing held in between. */
  private checkpointNoFreeze(
    fault: Fault | undefined,
    done: (marker: number | undefined, why: string) => void,
  ): void {
    this.gather<number>(
      this.cfg.boundUs,
      (s, reply) => this.rpc(false, 0, () => s.lastMarker(), reply),
      (last) => {
        const n = 1 + Math.max(...last.map((m) => m ?? 0));
        const order = this.coord.chance(0.5) ? [...this.sources] : [...this.sources].reverse();
        let over = false;
        const finish = (marker: number | undefined, why: string): void => {
          if (over) return;
          over = true;
          done(marker, why);
        };
        const markNext = (i: number): void => {
          if (i === order.length) return finish(n, '');
          const s = order[i]!;
          const lost = fault?.source === s.name && fault.kind !== 'freeze-lost';
          this.rpc(
            lost,
            0,
            () => s.mark(undefined, n),
            (r) => (r.ok ? markNext(i + 1) : finish(undefined, r.why)),
          );
          if (lost) this.sched.after(this.cfg.boundUs, () => finish(undefined, `${s.name} unreachable`));
        };
        markNext(0);
      },
    );
  }

  onTargetProgress(): void {
    const n = this.finalMarker;
    if (n !== undefined && this.targets.every((t) => t.up && t.released >= n)) {
      this.log(`every target reached the final marker ${n}`);
      this.sched.stop();
    }
  }

  private check(): void {
    const ends = this.targets.map((t) => t.end());
    const groups = this.cfg.groups;
    const all = [
      ...checkMarkerCut(groups, this.journals, ends),
      ...checkDependent(this.journals, ends, this.writes, this.pairs),
      ...checkFreezePoint(this.journals, this.placements, this.writes),
      ...checkMonotonic(ends),
      ...checkConvergence(groups, this.journals, ends, this.finalMarker, this.stalled),
      ...checkNoLoss(this.journals, this.writes),
    ];
    for (const v of all) this.violation(v.checker, v.message);
  }
}

export function runMarkerSim(opts: MarkerSimOptions): MarkerSimResult {
  return new MarkerSim(opts.seed, opts.bug, opts.log ?? (() => {})).run();
}

export function markerReplayCommand(seed: number, bug?: MarkerBug): string {
  return `node dist/src/testing/sim/markers.js --seed ${seed}${bug === undefined ? '' : ` --bug ${bug}`}`;
}

export function describeMarkerFailure(r: MarkerSimResult): string {
  const counts = MARKER_CHECKERS.filter((c) => r.violationCounts.has(c)).map(
    (c) => `${c} x${r.violationCounts.get(c)}`,
  );
  return [
    `seed ${r.seed}${r.bug === undefined ? '' : ` with bug ${r.bug}`}: ${counts.join(', ')}`,
    ...r.violations.map((v) => `  [${v.checker}] ${v.message}`),
    `replay: ${markerReplayCommand(r.seed, r.bug)}`,
  ].join('\n');
}

/** The record a sequenced write or marker makes (epoch 1: this model has no takeover). */
function headerOf(
  f: ReturnType<Sequencer['next']>,
  kind: RecordKind,
  group: string,
  volume: string,
  offset: number,
  length: number,
  markerNo: number,
): RecordHeader {
  return {
    kind,
    group,
    seq: f.seq,
    writeTimeUs: f.writeTimeUs,
    hostTimeUs: f.hostTimeUs,
    nodeId: f.nodeId,
    ordinal: f.ordinal,
    epoch: 1,
    volume,
    offset: byteOffset(offset),
    length,
    markerNo,
  };
}

function main(): number {
  const args = parseReplayArgs('markers.js', MARKER_BUGS, isMarkerBug);
  if (args === 2) return 2;
  const { seed, bug, quiet } = args;
  const cfg = markerConfig(seed);
  if (!quiet) {
    for (const s of cfg.sources) {
      console.log(
        `${s.name}: mode ${s.mode}, clock offset ${(s.offsetUs / 1e6).toFixed(0)} s, rate ${s.rate}`,
      );
    }
    console.log(`groups: ${cfg.groups.map((g) => g.name).join(', ')}`);
  }
  const r = runMarkerSim({ seed, bug, log: quiet ? undefined : (line) => console.log(line) });
  console.log(`stats ${JSON.stringify(r.stats)}`);
  console.log(`trace ${r.traceHash}`);
  if (r.violations.length === 0) {
    console.log(`seed ${seed}: no violation (final marker ${r.finalMarker})`);
    return 0;
  }
  console.log(describeMarkerFailure(r));
  return 1;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.exitCode = main();
}
