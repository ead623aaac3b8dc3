/**
 * The source side of markers (DESIGN.md §3.4; patent fig 15, paras [0066]-[0073]): a coordinator
 * freezes host writes to a consistency set's groups on every source node, has each put a marker
 * with one marker number into every group of the set it is the source of, and thaws.
 *
 *   freeze(set, id, boundMs)   new host writes of the set's groups here wait (queued, not failed);
 *                              writes submitted before are journalled now --> report the groups'
 *                              last marker numbers (the coordinator picks the next number above all)
 *   mark(set, id, n)           one marker record per group, appended in one step (consecutive
 *                              ordinals, nothing between) --> thaw at once --> journal synced --> report
 *   thaw(set, id)              the coordinator gave up: thaw without a marker
 *   bound passed               the node thaws by itself; a later mark for that freeze is refused
 *                              and the cycle fails cleanly (no marker, nothing lost)
 *
 * Only groups in `pair` take part: a group in copy, resync or suspended has no consistent image
 * at its target, and a marker there would promise one. The freeze time (freeze to thaw) is what
 * host writes of the set wait at most; it is measured and kept for status (p50/p99).
 */
import { randomUUID } from 'node:crypto';
import { RemcopyError } from '../core/errors.js';
import { percentile } from '../core/stats.js';
import { setMembers } from './config.js';
import type { RemcopyNode } from './node.js';

/** Freeze times kept for the percentiles in status. */
const FREEZE_SAMPLES_MAX = 1024;

interface Freeze {
  readonly id: string;
  readonly groups: readonly string[];
  readonly startedMs: number;
  readonly timer: NodeJS.Timeout;
}

export interface FreezeStats {
  freezes: number;
  markers: number;
  /** Freezes that passed their bound: thawed by the node, the cycle failed. */
  boundPassed: number;
  thawedWithoutMarker: number;
}

/** A ring of recent samples with percentiles (freeze times, cycle times). */
export class Samples {
  private readonly values: number[] = [];
  private next = 0;
  constructor(private readonly max = FREEZE_SAMPLES_MAX) {}

  add(v: number): void {
    if (this.values.length < this.max) this.values.push(v);
    else this.values[this.next] = v;
    this.next = (this.next + 1) % this.max;
  }

  get count(): number {
    return this.values.length;
  }

  /** The p-th percentile (0..100) by nearest rank; undefined without samples. */
  percentile(p: number): number | undefined {
    if (this.values.length === 0) return undefined;
    return percentile(
      [...this.values].sort((a, b) => a - b),
      p,
    );
  }

  summary(): { count: number; p50: number | undefined; p99: number | undefined; max: number | undefined } {
    return {
      count: this.count,
      p50: this.percentile(50),
      p99: this.percentile(99),
      max: this.values.length === 0 ? undefined : Math.max(...this.values),
    };
  }
}

export class MarkerSource {
  private readonly frozen = new Map<string, Freeze>();
  /** Freezes that ended by their bound: a mark for them is refused with this reason. */
  private readonly expired = new Map<string, string>();
  readonly freezeMs = new Samples();
  readonly stats: FreezeStats = { freezes: 0, markers: 0, boundPassed: 0, thawedWithoutMarker: 0 };

  constructor(private readonly node: RemcopyNode) {}

  /** Groups of `set` this node is the source of (the topology in force). */
  groupsOf(set: string): string[] {
    return (setMembers(this.node.topo, set) ?? []).filter(
      (g) => this.node.topo.groups.get(g)?.source === this.node.cfg.name,
    );
  }

  freeze(
    set: string,
    id: string,
    boundMs: number,
  ): { set: string; id: string; groups: string[]; lastMarker: number } {
    const groups = this.groupsOf(set);
    if (groups.length === 0) {
      throw new RemcopyError('RC_ERR_STATE', `${this.node.cfg.name} is the source of no group of set ${set}`);
    }
    this.assertPaired(groups);
    const held = this.frozen.get(set);
    if (held !== undefined) {
      throw new RemcopyError(
        'RC_ERR_STATE',
        `set ${set} is frozen already on ${this.node.cfg.name} by another checkpoint (${held.id})`,
      );
    }
    const startedMs = performance.now();
    this.node.writePath.freeze(groups);
    const timer = setTimeout(() => this.expire(set, id, boundMs), boundMs);
    this.frozen.set(set, { id, groups, startedMs, timer });
    this.stats.freezes++;
    const lastMarker = Math.max(...groups.map((g) => this.node.journal.lastMarker(g)));
    return { set, id, groups, lastMarker };
  }

  async mark(
    set: string,
    id: string,
    markerNo: number,
  ): Promise<{ set: string; marker: number; freezeMs: number; groups: { group: string; seq: number }[] }> {
    const f = this.frozen.get(set);
    if (f === undefined || f.id !== id) {
      const why = this.expired.get(id) ?? `set ${set} is not frozen by ${id} on ${this.node.cfg.name}`;
      throw new RemcopyError('RC_ERR_STATE', why);
    }
    let headers;
    try {
      this.assertPaired(f.groups);
      const low = f.groups.find((g) => this.node.journal.lastMarker(g) >= markerNo);
      if (low !== undefined) {
        throw new RemcopyError(
          'RC_ERR_STATE',
          `marker ${markerNo} is not above ${low}'s last marker ${this.node.journal.lastMarker(low)}`,
        );
      }
      headers = this.node.writePath.appendMarkers(
        f.groups.map((g) => ({ group: g, markerNo, prev: this.node.journal.lastMarker(g) })),
      );
    } finally {
      this.end(set);
    }
    const freezeMs = performance.now() - f.startedMs;
    this.freezeMs.add(freezeMs);
    this.stats.markers++;
    // Reported once durable: a crash now cannot take the marker back.
    await this.node.writePath.flush();
    return { set, marker: markerNo, freezeMs, groups: headers.map((h) => ({ group: h.group, seq: h.seq })) };
  }

  thaw(set: string, id: string): { set: string; thawed: boolean } {
    const f = this.frozen.get(set);
    if (f === undefined || f.id !== id) return { set, thawed: false };
    this.end(set);
    this.stats.thawedWithoutMarker++;
    return { set, thawed: true };
  }

  status(): object {
    return { ...this.stats, frozen: [...this.frozen.keys()], freezeMs: this.freezeMs.summary() };
  }

  close(): void {
    for (const set of [...this.frozen.keys()]) this.end(set);
  }

  private end(set: string): void {
    const f = this.frozen.get(set);
    if (f === undefined) return;
    clearTimeout(f.timer);
    this.frozen.delete(set);
    this.node.writePath.thaw(f.groups);
  }

  private expire(set: string, id: string, boundMs: number): void {
    const f = this.frozen.get(set);
    if (f === undefined || f.id !== id) return;
    this.end(set);
    this.stats.boundPassed++;
    this.freezeMs.add(performance.now() - f.startedMs);
    const why = `the freeze of set ${set} on ${this.node.cfg.name} passed its bound of ${boundMs} ms: writes thawed, no marker`;
    this.expired.set(id, why);
    if (this.expired.size > 64) this.expired.delete(this.expired.keys().next().value!);
    this.node.log('warn', 'freeze bound passed: thawed without a marker; the cycle fails', { set, boundMs });
  }

  private assertPaired(groups: readonly string[]): void {
    const states = new Map((this.node.source?.status() ?? []).map((s) => [s.name, s.state]));
    const notPaired = groups.filter((g) => states.get(g) !== 'pair');
    if (notPaired.length > 0) {
      throw new RemcopyError(
        'RC_ERR_STATE',
        `no consistent point: ${notPaired.map((g) => `${g} is ${states.get(g) ?? 'not replicating'}`).join(', ')}`,
      );
    }
  }
}

/** A fresh freeze id. */
export function freezeId(): string {
  return randomUUID();
}
