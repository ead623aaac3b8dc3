/**
 * The hosts writing to the source (TESTING.md: the bank is the model workload).
 *
 * - Random writers: each loops over think time, then one operation: a FLUSH, or a write of one
 *   block of a random volume (half of the time one of a few hot blocks), some with FUA, some with
 *   a host time (the native protocol's writeTime, from the host's skewed clock).
 * - A bank per consistency set of two or more groups: accounts on the first volume of each group.
 *   It opens every account it finds empty, then transfers: debit one account, wait for the
 *   acknowledgement, then credit an account of another group. It reads balances from the source
 *   volume as it is (after a source crash: as recovered), so the money at the source never grows;
 *   a target that shows a credit without its debit shows more money than was deposited.
 *
 * Every operation waits for its answer; a source crash fails it and the host carries on.
 */
import { timeUs } from '../../core/types.js';
import type { SetSpec, VolumeSpec } from './config.js';
import { ACCOUNT_OPENING_BALANCE } from './config.js';
import type { SimContext } from './context.js';
import type { Rng } from './rng.js';
import type { HostNode } from './failback.js';
import type { WriteRequest } from './source.js';

/** A host that finds the source down tries again after this long. */
const SOURCE_DOWN_RETRY_US = 5_000;
/** Host clocks differ from the node's by up to this much, either way. */
const HOST_CLOCK_SKEW_US_MAX = 5_000;

interface Account {
  readonly set: string;
  readonly group: string;
  readonly volume: string;
  readonly block: number;
}

type Target = Omit<WriteRequest, 'fua' | 'hostTimeUs' | 'issueStamp'>;

export class Workload {
  private stopped = false;
  private outstanding = 0;
  private issued = 0;

  constructor(
    private readonly ctx: SimContext,
    private readonly rng: Rng,
    /** The node a host sends its next operation to (the bank's: `bank`); undefined: it is down. */
    private readonly route: (bank: boolean) => HostNode | undefined,
    /** The balance an account block holds at the node the bank writes to. */
    private readonly balanceAt: (volume: string, block: number) => number | undefined,
  ) {}

  start(): void {
    for (let h = 0; h < this.ctx.cfg.workload.hosts; h++) {
      const skew = this.rng.int(-HOST_CLOCK_SKEW_US_MAX, HOST_CLOCK_SKEW_US_MAX);
      this.ctx.sched.after(this.think(), () => this.hostLoop(skew));
    }
    for (const set of this.ctx.cfg.sets) {
      if (set.accountsPerGroup === 0) continue;
      const skew = this.rng.int(-HOST_CLOCK_SKEW_US_MAX, HOST_CLOCK_SKEW_US_MAX);
      this.ctx.sched.after(this.think(), () => this.bankLoop(this.accountsOf(set), skew));
    }
  }

  /** No new operations from now on; those under way still complete. */
  stop(): void {
    this.stopped = true;
  }

  get idle(): boolean {
    return this.outstanding === 0;
  }

  private get done(): boolean {
    return this.stopped || this.issued >= this.ctx.cfg.workload.writesMax;
  }

  private think(): number {
    const [lo, hi] = this.ctx.cfg.workload.thinkUs;
    return this.rng.int(lo, hi);
  }

  private hostLoop(skew: number): void {
    if (this.done) return;
    const next = (): void => this.ctx.sched.after(this.think(), () => this.hostLoop(skew));
    if (this.rng.chance(this.ctx.cfg.workload.flushChance)) return this.flush(next);
    const g = this.rng.pick(this.ctx.cfg.groups);
    const v = this.rng.pick(g.volumes);
    const set = this.ctx.cfg.sets.find((s) => s.name === g.set)!;
    const reserved = v === g.volumes[0] ? set.accountsPerGroup : 0;
    const block = this.randomBlock(v, reserved);
    this.write({ set: g.set, group: g.name, volume: v.name, block, balance: undefined }, skew, next, false);
  }

  private randomBlock(v: VolumeSpec, reserved: number): number {
    const free = v.blocks - reserved;
    const hot = Math.min(this.ctx.cfg.workload.hotBlocks, free);
    return reserved + (this.rng.chance(0.5) ? this.rng.int(0, hot - 1) : this.rng.int(0, free - 1));
  }

  private bankLoop(accounts: readonly Account[], skew: number): void {
    if (this.done) return;
    const again = (): void => this.ctx.sched.after(this.think(), () => this.bankLoop(accounts, skew));
    const balance = (a: Account): number | undefined => this.balanceAt(a.volume, a.block);
    const empty = accounts.find((a) => balance(a) === undefined);
    if (empty !== undefined)
      return this.write({ ...empty, balance: ACCOUNT_OPENING_BALANCE }, skew, again, true);
    const from = this.rng.pick(accounts);
    const to = this.rng.pick(accounts.filter((a) => a.group !== from.group));
    const fromBalance = balance(from)!;
    if (fromBalance === 0) return again();
    const amount = this.rng.int(1, fromBalance);
    this.write(
      { ...from, balance: fromBalance - amount },
      skew,
      (ok) => {
        const toBalance = balance(to);
        if (!ok || toBalance === undefined) return again();
        this.write({ ...to, balance: toBalance + amount }, skew, again, true);
      },
      true,
    );
  }

  private write(target: Target, skew: number, then: (ok: boolean) => void, bank: boolean): void {
    const src = this.route(bank);
    if (src === undefined) {
      this.ctx.sched.after(SOURCE_DOWN_RETRY_US, () => then(false));
      return;
    }
    const w = this.ctx.cfg.workload;
    const hostTimeUs = this.rng.chance(w.hostTimeChance) ? timeUs(src.nodeClockUs + skew) : undefined;
    this.issued++;
    this.outstanding++;
    src.write(
      { ...target, fua: this.rng.chance(w.fuaChance), hostTimeUs, issueStamp: this.ctx.stamp() },
      (ok) => {
        this.outstanding--;
        then(ok);
      },
    );
  }

  private flush(then: () => void): void {
    const src = this.route(false);
    if (src === undefined) {
      this.ctx.sched.after(SOURCE_DOWN_RETRY_US, then);
      return;
    }
    this.outstanding++;
    src.flush(this.ctx.stamp(), () => {
      this.outstanding--;
      then();
    });
  }

  private accountsOf(set: SetSpec): Account[] {
    const out: Account[] = [];
    for (const name of set.groups) {
      const volume = this.ctx.cfg.groups.find((g) => g.name === name)!.volumes[0]!.name;
      for (let block = 0; block < set.accountsPerGroup; block++)
        out.push({ set: set.name, group: name, volume, block });
    }
    return out;
  }
}
