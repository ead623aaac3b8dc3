/**
 * The target side of markers for one consistency set on one node (DESIGN.md §3.4; patent figs 19,
 * 20, paras [0075]-[0083]): its groups stop at marker n, the node snapshots every target volume of
 * the set there, reports, and the groups go on, by themselves (`resume: auto`, fig 20) or when the
 * coordinator says so (`resume: coordinator`, fig 19).
 *
 *   apply cycles (one ApplyCoordinator per source node of the set here: keys of different source
 *   nodes do not compare) --> every group waits at a marker above `released`
 *     all at the same n --> checkpoint every segment (volumes durable at marker n)
 *                       --> snapshot every target volume as n (durable), drop beyond keepSnapshots
 *                       --> persist {reached n} --> [auto, or once go(n)] persist {released n}
 *                       --> segments go on; before a cycle overwrites a chunk it is preserved in
 *                           the newest snapshot (copy-on-write, VolumeSnapshots.preserve)
 *     at different numbers --> the lowest, m, cannot complete here: some source never put marker
 *                       m into its groups (a cycle that failed half-way) --> released = m, no
 *                       snapshot, recorded as incomplete
 *
 * Crash safety: the state file (`<dataDir>/markers/<set>.json`) is written after the snapshots
 * are durable. A restart finds the groups waiting at n again (the apply state keeps each group's
 * last marker), re-creates the snapshots (create is idempotent) and goes on. Nothing writes the
 * volumes between the checkpoint at marker n and the snapshots: every group waits.
 */
import * as z from 'zod';
import { join } from 'node:path';
import { RemcopyError } from '../../core/errors.js';
import type { VolumeSnapshots } from '../../storage/snapshots.js';
import { readJsonFile, writeJsonDurable } from '../../storage/state-file.js';
import type { Log } from '../log.js';
import type { ApplyCoordinator } from './apply.js';

/** Markers recorded in status, at most. */
const HISTORY_MAX = 32;

const fileSchema = z.object({
  version: z.literal(1),
  /** Groups may pass markers numbered up to this one. */
  released: z.number().int().nonnegative(),
  /** The last marker whose snapshots were taken here (0 if none). */
  reached: z.number().int().nonnegative(),
  /** Markers the coordinator gave up on before this node reached them: no snapshot when reached. */
  abandoned: z.array(z.number().int().positive()).default([]),
  history: z.array(
    z.object({
      marker: z.number().int().positive(),
      atMs: z.number(),
      outcome: z.enum(['snapshot', 'incomplete', 'abandoned']),
      detail: z.string().optional(),
      /** A snapshot: each group's seq at its marker (a takeover at the snapshot resumes there). */
      seqs: z.record(z.string(), z.number().int().nonnegative()).optional(),
    }),
  ),
});
type MarkerFile = z.infer<typeof fileSchema>;

export type MarkerHistory = MarkerFile['history'][number];

export interface SetMarkersStatus {
  readonly set: string;
  readonly released: number;
  readonly reached: number;
  /** Per group: the marker it waits at (groups that do not wait are absent). */
  readonly waiting: Record<string, number>;
  /** The marker the node waits for the coordinator's go on (resume: coordinator). */
  readonly awaitingGo: number | undefined;
  readonly abnormal: string | undefined;
  readonly history: readonly MarkerHistory[];
  readonly snapshots: readonly { volume: string; numbers: number[]; usedBytes: number }[];
}

export function markersFile(dataDir: string, set: string): string {
  return join(dataDir, 'markers', `${set}.json`);
}

export class SetMarkers {
  private released: number;
  private reached: number;
  private history: MarkerHistory[];
  private abandoned: number[];
  private checking: Promise<void> | null = null;
  private again = false;
  private closed = false;
  private readonly waiters = new Set<() => void>();

  constructor(
    readonly set: string,
    private readonly file: string,
    private readonly segments: readonly ApplyCoordinator[],
    /** Target volume name -> its snapshots. */
    readonly snapshots: ReadonlyMap<string, VolumeSnapshots>,
    private readonly opts: { readonly keepSnapshots: number; readonly resume: 'auto' | 'coordinator' },
    private readonly log: Log,
  ) {
    const saved = readJsonFile(file, (v) => {
      const r = fileSchema.safeParse(v);
      return r.success ? r.data : r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ');
    });
    this.released = saved?.released ?? 0;
    this.reached = saved?.reached ?? 0;
    this.history = saved?.history ?? [];
    this.abandoned = saved?.abandoned ?? [];
  }

  /** What the segments' planners may pass. */
  get markersReleased(): number {
    return this.released;
  }

  /** Called by a segment after its cycles: maybe every group waits at a marker now. */
  onProgress(): void {
    if (this.closed) return;
    if (this.checking) {
      this.again = true;
      return;
    }
    this.checking = this.checkLoop().finally(() => (this.checking = null));
  }

  /** The coordinator's go on past `marker` (resume: coordinator). */
  async go(marker: number): Promise<{ released: number }> {
    if (marker > this.reached) {
      throw new RemcopyError(
        'RC_ERR_STATE',
        `${this.set}: marker ${marker} has not been reached here (last snapshot ${this.reached})`,
      );
    }
    if (marker > this.released) await this.release(marker);
    return { released: this.released };
  }

  /**
   * The coordinator gave up on `marker` (it is not on every node): its snapshots here are deleted,
   * or, not reached yet, it will take none. A snapshot of part of a set would be mistaken for one
   * of all of it.
   */
  async abandon(marker: number): Promise<{ marker: number; deleted: boolean }> {
    while (this.checking) await this.checking;
    const h = this.history.find((x) => x.marker === marker);
    let deleted = false;
    if (h?.outcome === 'snapshot') {
      for (const s of this.snapshots.values()) {
        if (s.has(marker)) {
          await s.delete(marker);
          deleted = true;
        }
      }
      this.note({ ...h, outcome: 'abandoned', detail: 'the checkpoint failed on another node' });
    } else if (h === undefined && marker > this.reached && !this.abandoned.includes(marker)) {
      this.abandoned = [...this.abandoned, marker].slice(-HISTORY_MAX);
    }
    await this.persist();
    this.log('warn', 'marker abandoned by the coordinator', { set: this.set, marker, deleted });
    return { marker, deleted };
  }

  /** Resolves once this node has dealt with `marker` (snapshot or incomplete), or after timeoutMs. */
  async waitFor(marker: number, timeoutMs: number): Promise<MarkerHistory | undefined> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const h = this.history.find((x) => x.marker === marker);
      if (h !== undefined) return h;
      if (this.reached > marker || this.released >= marker) return undefined;
      const left = deadline - performance.now();
      if (left <= 0 || this.closed) return undefined;
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, Math.min(left, 1000));
        function done(): void {
          clearTimeout(t);
          resolve();
        }
        this.waiters.add(done);
      });
    }
  }

  /** What this node did at `marker`, if it is still in the history. */
  historyOf(marker: number): MarkerHistory | undefined {
    return this.history.find((x) => x.marker === marker);
  }

  status(): SetMarkersStatus {
    const waiting: Record<string, number> = {};
    for (const c of this.segments) for (const [g, m] of c.waitingAtMarker(this.released)) waiting[g] = m;
    const abnormal = this.segments.map((c) => c.abnormal).find((a) => a !== undefined);
    return {
      set: this.set,
      released: this.released,
      reached: this.reached,
      waiting,
      awaitingGo: this.reached > this.released ? this.reached : undefined,
      abnormal,
      history: this.history,
      snapshots: [...this.snapshots].map(([volume, s]) => ({
        volume,
        numbers: s.list().map((i) => i.number),
        usedBytes: s.usedBytes(),
      })),
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    while (this.checking) await this.checking;
    this.wake();
  }

  private async checkLoop(): Promise<void> {
    try {
      do {
        this.again = false;
        await this.check();
      } while (this.again && !this.closed);
    } catch (e) {
      this.log('error', 'marker handling failed; the set waits at its marker', {
        set: this.set,
        error: String(e),
      });
    }
  }

  private async check(): Promise<void> {
    const waiting = new Map<string, number>();
    let groups = 0;
    for (const c of this.segments) {
      groups += c.groupNames.length;
      for (const [g, m] of c.waitingAtMarker(this.released)) waiting.set(g, m);
    }
    if (groups === 0 || waiting.size < groups) return;
    const low = Math.min(...waiting.values());
    if (low <= this.reached) return; // snapshots taken, waiting for the coordinator's go
    const ahead = [...waiting].filter(([, m]) => m !== low);
    if (ahead.length > 0) {
      // Some source never put marker `low` into its groups: it cannot complete here.
      const detail = `${ahead.map(([g, m]) => `${g} went on to marker ${m}`).join(', ')}`;
      this.log('warn', 'marker incomplete on this node: no snapshot', { set: this.set, marker: low, detail });
      this.note({ marker: low, atMs: Date.now(), outcome: 'incomplete', detail });
      await this.release(low);
      return;
    }
    if (this.abandoned.includes(low)) {
      this.note({
        marker: low,
        atMs: Date.now(),
        outcome: 'abandoned',
        detail: 'the checkpoint failed on another node',
      });
      this.abandoned = this.abandoned.filter((m) => m !== low);
      await this.release(low);
      return;
    }
    // Every group waits at `low`: make the volumes durable there and snapshot them.
    for (const c of this.segments) await c.checkpointNow();
    for (const [volume, s] of this.snapshots) {
      await s.create(low);
      const all = s.list();
      for (const old of all.slice(0, Math.max(0, all.length - this.opts.keepSnapshots))) {
        await s.delete(old.number);
        this.log('info', 'snapshot deleted (keepSnapshots)', { volume, marker: old.number });
      }
    }
    const seqs: Record<string, number> = {};
    for (const c of this.segments) for (const g of c.groupNames) seqs[g] = c.seqApplied(g);
    this.reached = low;
    this.note({ marker: low, atMs: Date.now(), outcome: 'snapshot', seqs });
    this.log('info', 'marker reached: snapshots taken', { set: this.set, marker: low });
    if (this.opts.resume === 'auto') this.released = low;
    await this.persist();
    this.kickAll();
  }

  private async release(marker: number): Promise<void> {
    this.released = marker;
    await this.persist();
    this.kickAll();
  }

  private note(h: MarkerHistory): void {
    this.history = [...this.history.filter((x) => x.marker !== h.marker), h].slice(-HISTORY_MAX);
  }

  private kickAll(): void {
    this.wake();
    for (const c of this.segments) c.kick();
  }

  private wake(): void {
    for (const w of [...this.waiters]) w();
    this.waiters.clear();
  }

  private persist(): Promise<void> {
    const f: MarkerFile = {
      version: 1,
      released: this.released,
      reached: this.reached,
      abandoned: this.abandoned,
      history: this.history,
    };
    return writeJsonDurable(this.file, f);
  }
}
