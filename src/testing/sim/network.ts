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
 */
import type { OrderKey, RecordHeader } from '../../core/types.js';
import type { NetConfig } from './config.js';
import type { Rng } from './rng.js';
import type { Scheduler } from './scheduler.js';

export type Side = 'source' | 'target';

/** A record as it travels: the header and, as its payload, the id of the source write. */
export interface ShippedRecord {
  readonly h: RecordHeader;
  readonly writeId: number;
}

export type Frame =
  | { readonly type: 'connect'; readonly session: number }
  | { readonly type: 'close'; readonly session: number }
  | { readonly type: 'heartbeat'; readonly session: number }
  | { readonly type: 'resume'; readonly session: number; readonly group: string; readonly nextSeq: number }
  | {
      readonly type: 'records';
      readonly session: number;
      readonly group: string;
      readonly records: readonly ShippedRecord[];
    }
  | {
      readonly type: 'tick';
      readonly session: number;
      readonly group: string;
      readonly seq: number;
      readonly key: OrderKey;
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
