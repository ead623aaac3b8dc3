/**
 * The invariants of TESTING.md, checked on every run against the source's full history
 * (history.ts). The simulator calls them at the moments they speak about:
 *
 *   a set's cycle completed (in memory)      --> prefix consistency, dependent writes, monotonic cuts
 *   the target restarted                     --> monotonic cuts (the persisted state pins a cut no
 *                                                lower than the last one readers could have seen)
 *   the source releases journal records      --> release after durable (the target holds them)
 *   the source crashed                       --> no loss where promised (FUA / FLUSH)
 *   the liveness phase ended                 --> convergence
 *
 * A violation is recorded, not thrown: the run goes on, so one run shows every checker that a
 * planted bug trips. Only the first few violations per checker keep their message.
 */
import type { OrderKey } from '../../core/types.js';
import { compareKeys } from '../../core/types.js';
import type { SetSpec, SimConfig, VolumeSpec } from './config.js';
import { ACCOUNT_OPENING_BALANCE } from './config.js';
import type { History, SourceWrite } from './history.js';

export const CHECKER_NAMES = [
  'prefix-consistency',
  'dependent-writes',
  'monotonic-cuts',
  'convergence',
  'no-loss',
  'release-after-durable',
  /** A core module refused what a correct peer sent (a durable record, a tick). */
  'protocol',
  /** The run threw: a core assertion, or the simulator's own. */
  'exception',
] as const;
export type CheckerName = (typeof CHECKER_NAMES)[number];

export interface Violation {
  readonly checker: CheckerName;
  readonly atUs: number;
  readonly message: string;
}

/** What a check reads of the target's volumes: the write id a block holds. */
export type BlockReader = (volume: string, block: number) => number | undefined;

export interface EndState {
  readonly sourceUp: boolean;
  readonly targetUp: boolean;
  readonly workloadIdle: boolean;
  readonly sourceUnreleased: number;
  readonly targetUnreleased: number;
  readonly read: BlockReader;
}

const MESSAGES_PER_CHECKER_MAX = 3;

export const fmtKey = (k: OrderKey | undefined): string =>
  k === undefined ? '(none)' : `(${k.writeTimeUs},${k.ordinal})`;

export class Checkers {
  readonly violations: Violation[] = [];
  readonly counts = new Map<CheckerName, number>();
  cutsChecked = 0;
  private readonly lastCut = new Map<string, OrderKey>();

  constructor(
    private readonly history: History,
    private readonly cfg: SimConfig,
    private readonly nowUs: () => number,
  ) {}

  report(checker: CheckerName, message: string): void {
    const n = (this.counts.get(checker) ?? 0) + 1;
    this.counts.set(checker, n);
    if (n <= MESSAGES_PER_CHECKER_MAX) this.violations.push({ checker, atUs: this.nowUs(), message });
  }

  /**
   * A cycle of `set` completed at `cut`, in memory: readers of the target volumes see it from now
   * on (nothing need be durable yet). Its volumes must show the source exactly at the cut, and the
   * cut must not be below the last one readers could have seen, also across target restarts.
   */
  onCutCompleted(set: SetSpec, cut: OrderKey, read: BlockReader): void {
    this.cutsChecked++;
    const last = this.lastCut.get(set.name);
    if (last !== undefined && compareKeys(cut, last) < 0) {
      this.report('monotonic-cuts', `${set.name}: cut ${fmtKey(cut)} completed after ${fmtKey(last)}`);
    }
    this.lastCut.set(set.name, cut);
    this.checkPrefix(set, cut, read);
    this.checkDependencies(set, cut, read);
    this.checkBank(set, cut, read);
  }

  /**
   * The target restarted with `pinned`: the cut its persisted apply state makes it reach (the cut
   * planned last, which the redo re-applies, else the checkpoint). Nothing lower may follow a cut
   * readers saw before the crash.
   */
  onTargetRestart(set: string, pinned: OrderKey | undefined): void {
    const last = this.lastCut.get(set);
    if (last !== undefined && (pinned === undefined || compareKeys(pinned, last) < 0)) {
      this.report(
        'monotonic-cuts',
        `${set}: restarted with cut ${fmtKey(pinned)} pinned, readers had seen ${fmtKey(last)}`,
      );
    }
  }

  onSourceRelease(group: string, upTo: number, targetDurableSeq: number): void {
    if (upTo > targetDurableSeq) {
      this.report(
        'release-after-durable',
        `${group}: the source released up to seq ${upTo}, the target holds only ${targetDurableSeq} durably`,
      );
    }
  }

  onSourceCrash(lost: readonly SourceWrite[]): void {
    for (const w of lost) {
      if (w.promised)
        this.report('no-loss', `write #${w.writeId} (${w.group}/${w.seq}) was promised durable`);
    }
  }

  /** After the liveness phase: the target equals the source and every journal is empty. */
  onEnd(end: EndState): void {
    const problems: string[] = [];
    if (!end.sourceUp || !end.targetUp) problems.push('a node is still down');
    if (!end.workloadIdle) problems.push('host operations still outstanding');
    if (end.sourceUnreleased > 0) problems.push(`${end.sourceUnreleased} records unreleased at the source`);
    if (end.targetUnreleased > 0) problems.push(`${end.targetUnreleased} records unreleased at the target`);
    let differing = 0;
    for (const { volume, block } of this.blocksOf(this.cfg.groups.map((g) => g.name))) {
      const want = this.history.current(volume, block)?.writeId;
      const got = end.read(volume, block);
      if (want === got) continue;
      if (differing++ === 0)
        problems.push(`${volume}#${block}: target ${this.describe(got)}, source ${this.describe(want)}`);
    }
    if (differing > 0) problems.push(`${differing} blocks differ`);
    if (problems.length > 0) this.report('convergence', problems.join('; '));
  }

  private checkPrefix(set: SetSpec, cut: OrderKey, read: BlockReader): void {
    for (const { volume, block } of this.blocksOf(set.groups)) {
      const got = read(volume, block);
      const want = this.history.atCut(volume, block, cut)?.writeId;
      if (got === want) continue;
      this.report(
        'prefix-consistency',
        `${set.name} at cut ${fmtKey(cut)}: ${volume}#${block} holds ${this.describe(got)}, ` +
          `the source had ${this.describe(want)}`,
      );
      return;
    }
  }

  /**
   * Never a write without every write acknowledged before it was issued: take the shown write
   * issued last; each block must show at least the latest write acknowledged before that.
   */
  private checkDependencies(set: SetSpec, cut: OrderKey, read: BlockReader): void {
    const blocks = this.blocksOf(set.groups);
    let latest: SourceWrite | undefined;
    for (const { volume, block } of blocks) {
      const id = read(volume, block);
      const w = id === undefined ? undefined : this.history.writes[id];
      if (w !== undefined && !w.lost && (latest === undefined || w.issueStamp > latest.issueStamp))
        latest = w;
    }
    if (latest === undefined) return;
    for (const { volume, block } of blocks) {
      const need = this.history.requiredPosition(volume, block, latest.issueStamp);
      const have = this.history.position(volume, block, read(volume, block));
      if (have === undefined || have >= need) continue; // an unknown write is prefix-consistency's
      this.report(
        'dependent-writes',
        `${set.name} at cut ${fmtKey(cut)}: shows ${this.describe(latest.writeId)}, but ${volume}#${block} ` +
          `holds ${this.describe(read(volume, block))}, older than a write acknowledged before it was issued`,
      );
      return;
    }
  }

  /** The bank: a credit is issued only after its debit is acknowledged, so the sum never grows. */
  private checkBank(set: SetSpec, cut: OrderKey, read: BlockReader): void {
    if (set.accountsPerGroup === 0) return;
    let sum = 0;
    for (const g of set.groups) {
      const volume = this.firstVolume(g).name;
      for (let b = 0; b < set.accountsPerGroup; b++) {
        const id = read(volume, b);
        sum += id === undefined ? 0 : (this.history.writes[id]?.balance ?? 0);
      }
    }
    const total = set.groups.length * set.accountsPerGroup * ACCOUNT_OPENING_BALANCE;
    if (sum > total) {
      this.report(
        'dependent-writes',
        `${set.name} at cut ${fmtKey(cut)}: bank balances sum to ${sum}, above the ${total} deposited ` +
          `(a credit shown without its debit)`,
      );
    }
  }

  private describe(id: number | undefined): string {
    if (id === undefined) return 'nothing';
    const w = this.history.writes[id];
    if (w === undefined) return `unknown write #${id}`;
    return `#${id} (${w.group}/${w.seq} key ${fmtKey(w.key)}${w.lost ? ', lost at the source' : ''})`;
  }

  private firstVolume(group: string): VolumeSpec {
    return this.cfg.groups.find((g) => g.name === group)!.volumes[0]!;
  }

  private blocksOf(groups: readonly string[]): { volume: string; block: number }[] {
    const out: { volume: string; block: number }[] = [];
    for (const g of this.cfg.groups) {
      if (!groups.includes(g.name)) continue;
      for (const v of g.volumes) for (let b = 0; b < v.blocks; b++) out.push({ volume: v.name, block: b });
    }
    return out;
  }
}
