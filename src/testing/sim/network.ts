/**
 * The simulated link between the source and the target node: frames with a seeded delay, and in
 * the safety phase loss, duplication, reordering and partitions (DESIGN.md §3.5; TESTING.md layer 3).
 *
 * Frames normally keep their order per direction (a TCP stream); a reordered frame ignores that
 * order and may arrive after frames sent later. A lost frame is never resent by the network, and
 * within one session a later frame may still arrive: so the receiver does see gaps, duplicates and
 * reordering, and the protocol must cope (GroupReceiver refuses a gap; the session is dropped and
 * resumed). Every frame carries its session number; each side ignores frames of other sessions.
 * During a partition every frame is dropped, both ways: the sides notice by their timeouts.
 *
 * A PAIR_STATE announcement has no seq of its own: over TCP, its place among the records is the
 * stream's order. Here each announcement carries its number in the session (per group) and every
 * RECORDS and TICK frame the number of announcements sent before it, so the target notices one
 * that was lost or overtaken and drops the session (as a broken TCP stream would end it); the next
 * session announces the state again before any record.
 */
import type { OrderKey, RecordHeader } from '../../core/types.js';
import type { NetConfig } from './config.js';
import type { CopyPayload } from './disk.js';
import type { Rng } from './rng.js';
import type { Scheduler } from './scheduler.js';

export type Side = 'source' | 'target';

/** A record as it travels: the header and, as its payload, the id of the source write (or a copy). */
export interface ShippedRecord {
  readonly h: RecordHeader;
  readonly writeId: number;
  readonly copy?: CopyPayload;
}

/** Pair states a source announces (src/link/frames.ts PAIR_STATE, with `resync`). */
export type AnnouncedState = 'pair' | 'resync';

export type Frame =
  | { readonly type: 'connect'; readonly session: number }
  | { readonly type: 'close'; readonly session: number }
  | { readonly type: 'heartbeat'; readonly session: number }
  /** From a node that took over: its epoch is newer, the old source must stop acting as source. */
  | { readonly type: 'fenced'; readonly session: number; readonly epoch: number }
  | { readonly type: 'resume'; readonly session: number; readonly group: string; readonly nextSeq: number }
  | {
      readonly type: 'records';
      readonly session: number;
      readonly group: string;
      readonly records: readonly ShippedRecord[];
      /** Announcements of the group sent in this session before this frame. */
      readonly pairStates: number;
    }
  | {
      readonly type: 'tick';
      readonly session: number;
      readonly group: string;
      readonly seq: number;
      readonly key: OrderKey;
      readonly pairStates: number;
    }
  | {
      readonly type: 'pair-state';
      readonly session: number;
      readonly group: string;
      readonly state: AnnouncedState;
      /** With `pair`: the image is consistent once the target has applied up to this seq. */
      readonly copyEndSeq: number;
      /** This announcement's number in the session, per group: 1, 2, ... */
      readonly index: number;
    }
  | { readonly type: 'ack'; readonly session: number; readonly group: string; readonly durableSeq: number };

export interface NetworkStats {
  framesSent: number;
  framesLost: number;
  framesDuplicated: number;
  framesReordered: number;
  framesPartitioned: number;
}

export class Network {
  private faultsOn = true;
  private readonly lastDeliveryUs: Record<Side, number> = { source: 0, target: 0 };
  readonly stats: NetworkStats = {
    framesSent: 0,
    framesLost: 0,
    framesDuplicated: 0,
    framesReordered: 0,
    framesPartitioned: 0,
  };

  constructor(
    private readonly sched: Scheduler,
    private readonly rng: Rng,
    private readonly cfg: NetConfig,
    private readonly deliver: (to: Side, f: Frame) => void,
  ) {}

  /** Faults off from now on: no loss, duplication, reordering or partition (the liveness phase). */
  heal(): void {
    this.faultsOn = false;
  }

  send(from: Side, f: Frame): void {
    const to: Side = from === 'source' ? 'target' : 'source';
    this.stats.framesSent++;
    if (this.faultsOn && this.rng.chance(this.cfg.lossChance)) {
      this.stats.framesLost++;
      return;
    }
    const delay = this.rng.int(this.cfg.delayUs[0], this.cfg.delayUs[1]);
    let atUs: number;
    if (this.faultsOn && this.rng.chance(this.cfg.reorderChance)) {
      this.stats.framesReordered++;
      atUs = this.sched.nowUs + delay + this.rng.int(0, this.cfg.reorderExtraUs);
    } else {
      atUs = Math.max(this.sched.nowUs + delay, this.lastDeliveryUs[to]);
      this.lastDeliveryUs[to] = atUs;
    }
    this.schedule(to, f, atUs);
    if (this.faultsOn && this.rng.chance(this.cfg.dupChance)) {
      this.stats.framesDuplicated++;
      this.schedule(to, f, atUs + this.rng.int(0, this.cfg.reorderExtraUs));
    }
  }

  private schedule(to: Side, f: Frame, atUs: number): void {
    this.sched.after(atUs - this.sched.nowUs, () => {
      if (this.faultsOn && this.partitioned(this.sched.nowUs)) {
        this.stats.framesPartitioned++;
        return;
      }
      this.deliver(to, f);
    });
  }

  private partitioned(atUs: number): boolean {
    return this.cfg.partitions.some((p) => atUs >= p.startUs && atUs < p.endUs);
  }
}
