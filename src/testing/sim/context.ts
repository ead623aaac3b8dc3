/**
 * What every part of one simulated run shares: the scheduler, the configuration, the planted bug,
 * the source history and the checkers, the counters, the trace hash and the stamp counter.
 *
 * The trace hash folds in every event that matters (writes, acknowledgements, frames, crashes,
 * cuts) in the order they happen: two runs of one seed must end with the same hash.
 */
import type { NodeId } from '../../core/types.js';
import type { Checkers } from './checkers.js';
import type { BugName, SimConfig } from './config.js';
import type { History } from './history.js';
import type { Scheduler } from './scheduler.js';

export interface SimStats {
  writesIssued: number;
  writesAcked: number;
  writesLost: number;
  flushes: number;
  sourceCrashes: number;
  targetCrashes: number;
  sessions: number;
  /** Sessions dropped, by side and reason. */
  sessionDrops: Record<string, number>;
  ticksSent: number;
  cycles: number;
  cyclesRedone: number;
  /** Records re-applied by redo cycles (those after the checkpoint, up to the cut planned). */
  recordsRedone: number;
  /** Target checkpoints: volumes synced, the completed cut persisted, records released. */
  checkpoints: number;
  /** Unsynced target volume block writes a crash lost. */
  volumeWritesLost: number;
  /** Groups suspended (one per group and suspension). */
  suspensions: number;
  /** Host writes to suspended groups: tracked in the dirty bitmap, not journalled. */
  trackedWrites: number;
  /** Copy records journalled by resyncs. */
  chunksCopied: number;
  /** Resync passes that journalled every dirty chunk (the source announced `pair`). */
  resyncsCompleted: number;
  /** Dirty bits cleared by the target's durable reports. */
  bitsCleared: number;
  /** Host writes that found the source journal full: their set suspended. */
  overflows: number;
  /** Takeovers at the target (at most one per run). */
  takeovers: number;
  /** Host writes that went to the old source after the takeover; of those, acknowledged by it. */
  strayWrites: number;
  strayAcked: number;
  /** Host writes the old source refused once fenced. */
  fencedRefused: number;
  /** Host writes to the node that took over, before the failback (tracked in its bitmap). */
  promotedWrites: number;
  /** Failbacks (the run went on in the other direction), and the chunks their resync had to copy. */
  failbacks: number;
  failbackDirtyChunks: number;
}

export const newStats = (): SimStats => ({
  writesIssued: 0,
  writesAcked: 0,
  writesLost: 0,
  flushes: 0,
  sourceCrashes: 0,
  targetCrashes: 0,
  sessions: 0,
  sessionDrops: {},
  ticksSent: 0,
  cycles: 0,
  cyclesRedone: 0,
  recordsRedone: 0,
  checkpoints: 0,
  volumeWritesLost: 0,
  suspensions: 0,
  trackedWrites: 0,
  chunksCopied: 0,
  resyncsCompleted: 0,
  bitsCleared: 0,
  overflows: 0,
  takeovers: 0,
  strayWrites: 0,
  strayAcked: 0,
  fencedRefused: 0,
  promotedWrites: 0,
  failbacks: 0,
  failbackDirtyChunks: 0,
});

export function countDrop(stats: SimStats, reason: string): void {
  stats.sessionDrops[reason] = (stats.sessionDrops[reason] ?? 0) + 1;
}

export interface SimContext {
  readonly sched: Scheduler;
  readonly cfg: SimConfig;
  readonly bug: BugName | undefined;
  /** The epoch of every record and session (1; after a takeover and failback, the takeover's). */
  readonly epoch: number;
  /** The node that acts as source (its id is in every order key). */
  readonly sourceNodeId: NodeId;
  readonly history: History;
  readonly checkers: Checkers;
  readonly stats: SimStats;
  readonly trace: TraceHash;
  /** Next value of the run's one logical counter (issue and acknowledgement order). */
  stamp(): number;
  /**
   * A moment worth crashing at (between persisting and applying, after an append before its
   * sync...): in the safety phase the node may crash right after the current event.
   */
  crashPoint(side: 'source' | 'target'): void;
  /** A new link session number, unique in the run. */
  newSessionId(): number;
  log(line: string): void;
}

/** Two 32-bit FNV-1a lanes with different offsets: a 64-bit fingerprint of the run. */
export class TraceHash {
  private a = 0x811c9dc5;
  private b = 0x050c5d1f;

  add(...parts: readonly (string | number)[]): void {
    for (const p of parts) {
      const text = typeof p === 'number' ? p.toString(36) : p;
      for (let i = 0; i < text.length; i++) {
        const c = text.charCodeAt(i);
        this.a = Math.imul(this.a ^ c, 0x01000193) >>> 0;
        this.b = Math.imul(this.b ^ c, 0x5bd1e995) >>> 0;
      }
      this.a = Math.imul(this.a ^ 0x1f, 0x01000193) >>> 0;
      this.b = Math.imul(this.b ^ 0x1e, 0x5bd1e995) >>> 0;
    }
  }

  get hex(): string {
    return this.a.toString(16).padStart(8, '0') + this.b.toString(16).padStart(8, '0');
  }
}
