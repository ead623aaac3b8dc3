/**
 * The invariants of TESTING.md, checked on every run against the source's full history
 * (history.ts). The simulator calls them at the moments they speak about:
 *
 *   a set's cycle completed (in memory)      --> monotonic cuts; and when the target claims the
 *                                                image consistent: prefix consistency, dependent
 *                                                writes (the claim gates them, so a false claim
 *                                                during a resync is caught by them)
 *   a set's image becomes consistent between
 *   cycles (a `pair` announcement)           --> prefix consistency, dependent writes
 *   the target restarted                     --> monotonic cuts (the persisted state pins a cut no
 *                                                lower than the last one readers could have seen)
 *   the source releases journal records      --> release after durable (the target holds them)
 *   the source crashed                       --> no loss where promised (FUA / FLUSH)
 *   the source journals a copy record        --> copies dirty only (the chunk was written while
 *                                                suspended since its bit was last durably cleared)
 *   the source clears a dirty bit, and for
 *   every clear bit at a source restart      --> bit cleared early (the target holds a copy of the
 *                                                chunk made after its last suspended write durably)
 *   the liveness phase ended                 --> convergence, resync converged
 *   the source acknowledges a host write     --> no split brain (not once told of a newer epoch)
 *   a reverse run begins (after a failback)  --> presetTruth: which chunks may be copied
 *
 * A violation is recorded, not thrown: the run goes on, so one run shows every checker that a
 * planted bug trips. Only the first few violations per checker keep their message.
 */
import type { DirtyBitmap } from '../../core/dirty-bitmap.js';
import type { OrderKey } from '../../core/types.js';
import { compareKeys } from '../../core/types.js';
import type { SetSpec, SimConfig, VolumeSpec } from './config.js';
import { ACCOUNT_OPENING_BALANCE } from './config.js';
import type { BitmapSnapshot } from './disk.js';
import type { CopyRecord, History, SourceWrite } from './history.js';

export const CHECKER_NAMES = [
  'prefix-consistency',
  'dependent-writes',
  'monotonic-cuts',
  'convergence',
  'no-loss',
  'release-after-durable',
  /** At the end every group is back in `pair`, every dirty bit clear, every target image consistent. */
  'resync-converged',
  /** A resync copies only chunks written while suspended since their bit was last durably cleared. */
  'copies-dirty-only',
  /** A bit is clear only once the target durably holds a copy made after the chunk's last tracked write. */
  'bit-cleared-early',
  /** A core module refused what a correct peer sent (a durable record, a tick). */
  'protocol',
  /** The old source acknowledged a host write after it was told of the takeover's newer epoch. */
  'no-split-brain',
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

/** A group's suspension and resync state at the end of a run. */
export interface GroupResyncEnd {
  readonly group: string;
  /** The source's state of the group: pair, suspended or resync. */
  readonly sourceState: string;
  readonly dirtyChunks: number;
  /** The target's claim: `pair` announced and applied up to its copyEndSeq. */
  readonly targetConsistent: boolean;
}

export interface EndState {
  readonly sourceUp: boolean;
  readonly targetUp: boolean;
  readonly workloadIdle: boolean;
  readonly sourceUnreleased: number;
  readonly targetUnreleased: number;
  readonly read: BlockReader;
  /** Undefined when a node is down (convergence reports that). */
  readonly resync: readonly GroupResyncEnd[] | undefined;
}

/** Does the target hold this copy record durably (its journal, or released into its volumes)? */
export type CopyHeld = (c: CopyRecord) => boolean;

/** Ground truth of one dirty-bitmap chunk, in stamps (-1: never). */
interface ChunkTruth {
  /** The last write to the chunk tracked while suspended: issued, and applied to the source volume. */
  issued: number;
  applied: number;
  /** The last bitmap round that persisted the chunk's bit clear began at this stamp. */
  clearedSnap: number;
}

const MESSAGES_PER_CHECKER_MAX = 3;

export const fmtKey = (k: OrderKey | undefined): string =>
  k === undefined ? '(none)' : `(${k.writeTimeUs},${k.ordinal})`;

export class Checkers {
  readonly violations: Violation[] = [];
  readonly counts = new Map<CheckerName, number>();
  cutsChecked = 0;
  /** Cuts completed while the target did not claim a consistent image (a resync): not checked. */
  cutsInconsistent = 0;
  private readonly lastCut = new Map<string, OrderKey>();
  private readonly chunks = new Map<string, ChunkTruth[]>();
  /** The epoch the old source was told of by the node that took over (FENCED delivered). */
  private fencedEpoch = 0;

  constructor(
    private readonly history: History,
    private readonly cfg: SimConfig,
    private readonly nowUs: () => number,
  ) {
    for (const g of cfg.groups) {
      for (const v of g.volumes) {
        const n = Math.ceil(v.blocks / cfg.resync.chunkBlocks);
        this.chunks.set(
          v.name,
          Array.from({ length: n }, () => ({ issued: -1, applied: -1, clearedSnap: -1 })),
        );
      }
    }
  }

  report(checker: CheckerName, message: string): void {
    const n = (this.counts.get(checker) ?? 0) + 1;
    this.counts.set(checker, n);
    if (n <= MESSAGES_PER_CHECKER_MAX) this.violations.push({ checker, atUs: this.nowUs(), message });
  }

  /**
   * A cycle of `set` completed at `cut`, in memory: readers of the target volumes see it from now
   * on (nothing need be durable yet). The cut must not be below the last one readers could have
   * seen, also across target restarts. When the target claims the image consistent (`consistent`:
   * no group of the set in a resync it has not applied to its end), its volumes must show the
   * source exactly at the cut.
   */
  onCutCompleted(set: SetSpec, cut: OrderKey, read: BlockReader, consistent: boolean): void {
    const last = this.lastCut.get(set.name);
    if (last !== undefined && compareKeys(cut, last) < 0) {
      this.report('monotonic-cuts', `${set.name}: cut ${fmtKey(cut)} completed after ${fmtKey(last)}`);
    }
    this.lastCut.set(set.name, cut);
    if (consistent) this.onConsistent(set, cut, read);
    else this.cutsInconsistent++;
  }

  /** The target claims `set` consistent at `cut`: at a completed cycle, or when a resync ends. */
  onConsistent(set: SetSpec, cut: OrderKey, read: BlockReader): void {
    this.cutsChecked++;
    this.checkPrefix(set, cut, read);
    this.checkDependencies(set, cut, read);
    this.checkBank(set, cut, read);
  }

  /** A write to a suspended group: its chunk is dirty from now on (before its bit is even set). */
  onTrackedWriteIssued(volume: string, block: number, stamp: number): void {
    const t = this.chunkOf(volume, block);
    t.issued = Math.max(t.issued, stamp);
  }

  /** A tracked write reached the source volume. */
  onTrackedWriteApplied(volume: string, block: number, stamp: number): void {
    const t = this.chunkOf(volume, block);
    t.applied = Math.max(t.applied, stamp);
  }

  /** A bitmap round that began at `stamp` is durable: the chunks clear in it were clean then. */
  onBitmapPersisted(bits: BitmapSnapshot, stamp: number): void {
    for (const [volume, bytes] of bits) {
      const truth = this.chunks.get(volume)!;
      truth.forEach((t, c) => {
        if ((bytes[c >> 3]! & (1 << (c & 7))) === 0) t.clearedSnap = Math.max(t.clearedSnap, stamp);
      });
    }
  }

  /**
   * Before the reverse run after a failback: chunks whose copy is legitimate from the start
   * ('allowed': issued at stamp 0), and among them those whose content differs between the two
   * sides (also 'applied' at 0: their bit may be clear only once the target holds a copy).
   */
  presetTruth(truth: ReadonlyMap<string, readonly ('differs' | 'allowed' | undefined)[]>): void {
    for (const [volume, chunks] of truth) {
      chunks.forEach((t, c) => {
        if (t === undefined) return;
        const x = this.chunks.get(volume)![c]!;
        x.issued = 0;
        if (t === 'differs') x.applied = 0;
      });
    }
  }

  /** A tracked write reached the chunk after its bit was last durably cleared (a copy is legitimate). */
  chunkDirtyInTruth(volume: string, chunk: number): boolean {
    const t = this.chunks.get(volume)![chunk]!;
    return t.issued > t.clearedSnap;
  }

  /** The node that took over told the old source of its epoch. */
  onFenceDelivered(epoch: number): void {
    this.fencedEpoch = Math.max(this.fencedEpoch, epoch);
  }

  /** The source acknowledges a host write: not once it was told of a newer epoch. */
  onSourceAck(writeId: number): void {
    if (this.fencedEpoch === 0) return;
    this.report(
      'no-split-brain',
      `the old source acknowledged write #${writeId} after it was told of epoch ${this.fencedEpoch}`,
    );
  }

  /** The source journalled a copy record: its chunk must be dirty. */
  onCopy(c: CopyRecord): void {
    const t = this.chunks.get(c.volume)![c.chunk]!;
    if (t.issued > t.clearedSnap) return;
    this.report(
      'copies-dirty-only',
      `${c.group}: copy ${c.seq} of ${c.volume} chunk ${c.chunk}, which no tracked write changed since ` +
        (t.clearedSnap < 0 ? 'the start' : 'its bit was durably cleared'),
    );
  }

  /** The source cleared these bits: the target must hold a copy made after their last tracked write. */
  onBitsCleared(group: string, volume: string, chunks: readonly number[], held: CopyHeld): void {
    for (const chunk of chunks) {
      const t = this.chunks.get(volume)![chunk]!;
      const copy = this.heldCopyAfter(volume, chunk, Math.max(t.issued, t.applied), held);
      if (copy !== undefined) continue;
      this.report(
        'bit-cleared-early',
        `${group}: bit of ${volume} chunk ${chunk} cleared, the target holds no copy of it made after its ` +
          `last tracked write durably`,
      );
    }
  }

  /**
   * The source restarted with these bitmaps: every clear bit whose chunk took a tracked write must
   * be covered by a copy the target holds durably (else the bit of an acknowledged write was lost).
   */
  onSourceRestart(bitmaps: ReadonlyMap<string, DirtyBitmap>, held: CopyHeld): void {
    for (const [volume, bm] of bitmaps) {
      this.chunks.get(volume)!.forEach((t, chunk) => {
        if (t.applied < 0 || bm.isDirty(chunk)) return;
        if (this.heldCopyAfter(volume, chunk, t.applied, held) !== undefined) return;
        this.report(
          'bit-cleared-early',
          `${volume} chunk ${chunk}: clear after a source restart, though a tracked write reached it ` +
            `and the target holds no copy made after that`,
        );
      });
    }
  }

  private heldCopyAfter(
    volume: string,
    chunk: number,
    after: number,
    held: CopyHeld,
  ): CopyRecord | undefined {
    const copies = this.history.copiesOf(volume, chunk);
    for (let i = copies.length - 1; i >= 0 && copies[i]!.srcPos > after; i--) {
      const c = copies[i]!;
      if (!c.lost && held(c)) return c;
    }
    return undefined;
  }

  private chunkOf(volume: string, block: number): ChunkTruth {
    return this.chunks.get(volume)![Math.floor(block / this.cfg.resync.chunkBlocks)]!;
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
    const resync = (end.resync ?? []).flatMap((g) => {
      const p: string[] = [];
      if (g.sourceState !== 'pair') p.push(`${g.group} still ${g.sourceState} at the source`);
      if (g.dirtyChunks > 0) p.push(`${g.group}: ${g.dirtyChunks} dirty chunks`);
      if (!g.targetConsistent) p.push(`${g.group}: the target image is not consistent`);
      return p;
    });
    if (resync.length > 0) this.report('resync-converged', resync.join('; '));
  }

  private checkPrefix(set: SetSpec, cut: OrderKey, read: BlockReader): void {
    const pos = this.history.posAtCut(cut);
    for (const { volume, block } of this.blocksOf(set.groups)) {
      const got = read(volume, block);
      const want = this.history.atPos(volume, block, pos)?.writeId;
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

  /**
   * The bank: a credit is issued only after its debit is acknowledged, so the sum never grows: not
   * above the money deposited, nor above what the source's own volumes held at the cut. (A source
   * crash can lose an acknowledged, unsynced debit while its credit survives, when the credit went
   * to a suspended group: tracked writes are not lost with the journal's tail. The source then holds
   * more than was deposited, and a correct target shows just that.)
   */
  private checkBank(set: SetSpec, cut: OrderKey, read: BlockReader): void {
    if (set.accountsPerGroup === 0) return;
    const pos = this.history.posAtCut(cut);
    let sum = 0;
    let atSource = 0;
    for (const g of set.groups) {
      const volume = this.firstVolume(g).name;
      for (let b = 0; b < set.accountsPerGroup; b++) {
        const id = read(volume, b);
        sum += id === undefined ? 0 : (this.history.writes[id]?.balance ?? 0);
        atSource += this.history.atPos(volume, b, pos)?.balance ?? 0;
      }
    }
    const total = set.groups.length * set.accountsPerGroup * ACCOUNT_OPENING_BALANCE;
    if (sum > Math.max(total, atSource)) {
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
    const where =
      w.key === undefined ? `${w.group} tracked while suspended` : `${w.group}/${w.seq} key ${fmtKey(w.key)}`;
    return `#${id} (${where}${w.lost ? ', lost at the source' : ''})`;
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
