/**
 * Consistency cycles (DESIGN.md §3.4): the coordinator node of a set with `cycleSeconds` runs a
 * checkpoint (checkpoint.ts) every cycleSeconds, inside `remcopy node` / `remcopy up`, and keeps
 * what status shows: cycle time, freeze time p50/p99 and the age of the newest consistent point
 * (the RPO users quote). A failed cycle (a node down, a freeze past its bound, a group not in pair)
 * is logged and counted; the next one retries. A cycle that takes longer than cycleSeconds delays
 * the next one: cycles never overlap.
 */
import type { Topology } from '../node/config.js';
import type { Log } from '../node/log.js';
import { Samples } from '../node/markers.js';
import type { CheckpointResult, NodeCall } from './checkpoint.js';
import { checkpoint } from './checkpoint.js';

export interface CycleStatus {
  readonly set: string;
  readonly cycleSeconds: number;
  readonly cycles: number;
  readonly failures: number;
  readonly lastMarker: number | undefined;
  /** Why the latest failed cycle failed, and when (kept after later cycles succeed). */
  readonly lastError: string | undefined;
  readonly lastErrorAgeMs: number | undefined;
  readonly cycleMs: ReturnType<Samples['summary']>;
  readonly freezeMs: ReturnType<Samples['summary']>;
  /**
   * Per source node: its freeze times, and the time from the freeze request to its answer as this
   * coordinator saw it (checkpoint.ts, freezeAnswerMs): which node's freezes are long, and whether
   * its answer or the rest of the cycle made them so.
   */
  readonly nodes: Record<
    string,
    { freezeMs: ReturnType<Samples['summary']>; freezeAnswerMs: ReturnType<Samples['summary']> }
  >;
  /** Age of the newest point every target snapshotted (now minus its freeze moment); the RPO. */
  readonly consistentPointAgeMs: number | undefined;
}

export class CycleRunner {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private stopped = false;
  private cycles = 0;
  private failures = 0;
  private last: CheckpointResult | undefined;
  private lastError: string | undefined;
  private lastErrorAtMs: number | undefined;
  private readonly cycleMs = new Samples();
  readonly freezeMs = new Samples();
  private readonly perNode = new Map<string, { freezeMs: Samples; freezeAnswerMs: Samples }>();

  constructor(
    readonly set: string,
    private readonly cycleSeconds: number,
    private readonly topo: () => Topology,
    private readonly call: NodeCall,
    private readonly log: Log,
    /** The node `call` reaches in process (checkpoint's `local`). */
    private readonly local?: string,
  ) {}

  start(): void {
    this.schedule(this.cycleSeconds * 1000);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.running;
  }

  status(): CycleStatus {
    return {
      set: this.set,
      cycleSeconds: this.cycleSeconds,
      cycles: this.cycles,
      failures: this.failures,
      lastMarker: this.last?.marker,
      lastError: this.lastError,
      lastErrorAgeMs: this.lastErrorAtMs === undefined ? undefined : Date.now() - this.lastErrorAtMs,
      cycleMs: this.cycleMs.summary(),
      freezeMs: this.freezeMs.summary(),
      nodes: Object.fromEntries(
        [...this.perNode].map(([n, v]) => [
          n,
          { freezeMs: v.freezeMs.summary(), freezeAnswerMs: v.freezeAnswerMs.summary() },
        ]),
      ),
      consistentPointAgeMs: this.last === undefined ? undefined : Date.now() - this.last.atMs,
    };
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.running = this.runOnce().finally(() => (this.running = undefined));
    }, ms);
    this.timer.unref();
  }

  private async runOnce(): Promise<void> {
    const started = performance.now();
    const periodMs = this.cycleSeconds * 1000;
    try {
      const r = await checkpoint(this.topo(), this.set, this.call, {
        reachTimeoutMs: Math.max(10_000, 5 * periodMs),
        local: this.local,
      });
      this.cycles++;
      this.last = r;
      this.cycleMs.add(r.totalMs);
      for (const [node, ms] of Object.entries(r.freezeMs)) {
        this.freezeMs.add(ms);
        let samples = this.perNode.get(node);
        if (samples === undefined) {
          samples = { freezeMs: new Samples(), freezeAnswerMs: new Samples() };
          this.perNode.set(node, samples);
        }
        samples.freezeMs.add(ms);
        samples.freezeAnswerMs.add(r.freezeAnswerMs[node]!);
      }
    } catch (e) {
      this.failures++;
      this.lastError = (e as Error).message;
      this.lastErrorAtMs = Date.now();
      this.log('warn', 'consistency cycle failed; the next one retries', {
        set: this.set,
        error: this.lastError,
      });
    }
    this.schedule(Math.max(0, periodMs - (performance.now() - started)));
  }
}
