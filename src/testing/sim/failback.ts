/**
 * Takeover and failback in the simulator (DESIGN.md §3.7; src/node/replication/target.ts
 * `takeover`, src/node/failback.ts):
 *
 *   takeover (target)   once every set's image is consistent and no cycle runs: the cut stays,
 *                       volumes synced; the epoch goes up; a bitmap starts with the chunks of the
 *                       records held beyond the cut (the old source wrote them, this node never
 *                       will); from now on the node is a PromotedNode: hosts write to it, each
 *                       write's bit durable before the volume write and the ack; a CONNECT from
 *                       the old source is answered with FENCED(epoch)
 *   old source          told of the epoch (FENCED): persists it, fails every host operation not
 *                       yet answered, refuses new ones, ships nothing more. Until then it still
 *                       takes the writes of hosts that did not move (the split-brain window of an
 *                       unplanned takeover): those are lost by design, the failback undoes them
 *   failback            demote (old source): fenced, drained, journal synced; its dirty set is its
 *                       bitmap plus the chunks of its journalled records past the takeover's seq.
 *                       promote (new source): its writes drained; the union of both sets is the
 *                       resync. The run then goes on in the other direction (sim.ts: the reverse
 *                       run): the old source's volumes are the target's, the promoted node's the
 *                       source's, every group in `resync` from a base above every seq either side
 *                       journalled, with the union as the source's dirty bitmaps.
 *
 * What the reverse run starts from is built here (`reverseStart`): the source history begins
 * with one write per block the new source holds, the target volumes hold the old source's
 * content (blocks that differ hold ids no source write has), and the checkers learn which chunks
 * may legitimately be copied: those whose content differs, those the promoted node wrote (even if
 * a crash lost the write after its bit), and those the forward run's own truth held dirty.
 */
import { DirtyBitmap } from '../../core/dirty-bitmap.js';
import type { Checkers } from './checkers.js';
import type { SimConfig } from './config.js';
import { BLOCK_BYTES } from './config.js';
import type { SimContext } from './context.js';
import type { BitmapSnapshot } from './disk.js';
import { setChunkBit } from './disk.js';
import { History } from './history.js';
import type { Network } from './network.js';
import type { Rng } from './rng.js';
import type { WriteRequest } from './source.js';
import { NODE_CLOCK_BASE_US } from './source.js';
import type { TargetDisk } from './target.js';

/** Ids of the promoted node's writes: above every forward-run write id. */
const PROMOTED_ID_BASE = 1_000_000_000;
/** Ids of the old source's blocks that differ from the new source's at the failback. */
export const FOREIGN_ID_BASE = 2_000_000_000;

/** A node the hosts write to. */
export interface HostNode {
  readonly nodeClockUs: number;
  write(req: WriteRequest, done: (ok: boolean) => void): void;
  flush(issueStamp: number, done: (ok: boolean) => void): void;
}

export interface PromotedWrite {
  readonly id: number;
  readonly volume: string;
  readonly block: number;
  readonly balance: number | undefined;
}

/** The promoted node's writes over all its incarnations (what the checkers know of them). */
export class PromotedWrites {
  readonly writes: PromotedWrite[] = [];
  /** Chunks a write was issued to, by volume: their content may differ from the old source's. */
  readonly chunksIssued = new Map<string, Set<number>>();

  add(req: WriteRequest, chunkBlocks: number): PromotedWrite {
    const w = {
      id: PROMOTED_ID_BASE + this.writes.length,
      volume: req.volume,
      block: req.block,
      balance: req.balance,
    };
    this.writes.push(w);
    let set = this.chunksIssued.get(req.volume);
    if (set === undefined) this.chunksIssued.set(req.volume, (set = new Set()));
    set.add(Math.floor(req.block / chunkBlocks));
    return w;
  }

  get(id: number): PromotedWrite | undefined {
    return id >= PROMOTED_ID_BASE ? this.writes[id - PROMOTED_ID_BASE] : undefined;
  }
}

/**
 * The node that took over, until the failback: host writes tracked in a dirty bitmap (bit durable,
 * then the volume write, then the ack; FUA after a volume sync), FLUSH a volume sync; the old
 * source's CONNECT answered with FENCED.
 */
export class PromotedNode implements HostNode {
  alive = true;
  private readonly bitmaps = new Map<string, DirtyBitmap>();
  private readonly pending = new Map<number, (ok: boolean) => void>();
  private nextOp = 1;
  /** Writes whose bit is not yet durable (not yet on the volume). */
  private inFlight = 0;
  private draining: (() => void) | undefined;

  constructor(
    private readonly ctx: SimContext,
    private readonly rng: Rng,
    private readonly disk: TargetDisk,
    private readonly net: Network,
    private readonly writes: PromotedWrites,
    private readonly epoch: number,
  ) {
    const chunkBytes = ctx.cfg.resync.chunkBlocks * BLOCK_BYTES;
    for (const g of ctx.cfg.groups) {
      for (const v of g.volumes) {
        const bits = disk.promotedBits.load(v.name);
        this.bitmaps.set(v.name, new DirtyBitmap(v.blocks * BLOCK_BYTES, chunkBytes, bits));
      }
    }
    disk.promotedBits.snapshot = () => new Map([...this.bitmaps].map(([v, b]) => [v, b.toBytes()]));
    ctx.sched.every(ctx.cfg.disk.flushEveryUs, () => {
      if (!this.alive) return false;
      this.disk.volumes.sync(() => {});
      return true;
    });
  }

  get nodeClockUs(): number {
    return NODE_CLOCK_BASE_US + this.ctx.sched.nowUs;
  }

  write(req: WriteRequest, done: (ok: boolean) => void): void {
    const { ctx } = this;
    if (this.draining !== undefined)
      return void ctx.sched.after(ctx.cfg.link.hostAckUs[0], () => done(false));
    const op = this.nextOp++;
    this.pending.set(op, done);
    const w = this.writes.add(req, ctx.cfg.resync.chunkBlocks);
    ctx.stats.promotedWrites++;
    ctx.trace.add('pw', w.id, req.volume, req.block);
    const apply = (): void => {
      this.disk.volumes.write(req.volume, req.block, w.id);
      const ack = (): void => {
        if (!this.alive || !this.pending.delete(op)) return;
        done(true);
      };
      if (req.fua) this.disk.volumes.sync(ack);
      else ctx.sched.after(this.rng.int(ctx.cfg.link.hostAckUs[0], ctx.cfg.link.hostAckUs[1]), ack);
    };
    const chunk = Math.floor(req.block / ctx.cfg.resync.chunkBlocks);
    if (this.disk.promotedBits.durableSet(req.volume, chunk)) return apply();
    this.bitmaps.get(req.volume)!.set(chunk);
    this.inFlight++;
    this.disk.promotedBits.persist(() => {
      if (!this.alive) return;
      apply();
      if (--this.inFlight === 0) this.draining?.();
    });
  }

  flush(_issueStamp: number, done: (ok: boolean) => void): void {
    const op = this.nextOp++;
    this.pending.set(op, done);
    this.disk.volumes.sync(() => {
      if (this.alive && this.pending.delete(op)) done(true);
    });
  }

  onFrame(f: { readonly type: string; readonly session: number }): void {
    if (f.type === 'connect')
      this.net.send('target', { type: 'fenced', session: f.session, epoch: this.epoch });
  }

  crash(): void {
    this.alive = false;
    for (const done of this.pending.values())
      this.ctx.sched.after(this.ctx.cfg.link.hostAckUs[1], () => done(false));
    this.pending.clear();
  }

  /**
   * Failback, step promote: new writes are refused, those whose bit is on its way reach the
   * volume; then `done` gets the bitmaps (planted bug failback-skips-promoted: empty ones).
   */
  drain(done: (bits: BitmapSnapshot) => void): void {
    const finish = (): void => {
      if (!this.alive) return;
      this.draining = () => {};
      const skip = this.ctx.bug === 'failback-skips-promoted';
      done(
        new Map(
          [...this.bitmaps].map(([v, b]) => [v, skip ? new Uint8Array(b.toBytes().length) : b.toBytes()]),
        ),
      );
    };
    this.draining = finish;
    if (this.inFlight === 0) finish();
  }

  /** A failback cut short by a crash of the other node: take writes again. */
  undrain(): void {
    this.draining = undefined;
  }

  read(volume: string, block: number): number | undefined {
    return this.disk.volumes.read(volume, block);
  }
}

/** How the reverse run begins (sim.ts). */
export interface ReverseStart {
  readonly cfg: SimConfig;
  readonly rng: Rng;
  readonly epoch: number;
  readonly history: History;
  /** Stamps the history's base writes used. */
  readonly stamps: number;
  /** Per group, the seq the new direction continues after. */
  readonly bases: ReadonlyMap<string, number>;
  /** The union of both sides' dirty sets: the new source's bitmaps. */
  readonly dirty: BitmapSnapshot;
  /** The old source's content, as the reverse run's target volumes hold it. */
  readonly targetBlocks: readonly { volume: string; block: number; id: number | undefined }[];
  /** Per volume and chunk: may a copy of it be made ('differs' also: its content differs). */
  readonly truth: ReadonlyMap<string, readonly ('differs' | 'allowed' | undefined)[]>;
}

/** What the forward run hands to `reverseStart`. */
export interface FailbackInputs {
  readonly cfg: SimConfig;
  readonly bug: SimContext['bug'];
  readonly rng: Rng;
  readonly epoch: number;
  /** The old source's content (forward history) and the new source's (its volumes). */
  readonly history: History;
  readonly promoted: PromotedNode;
  readonly promotedWrites: PromotedWrites;
  readonly checkers: Checkers;
  readonly oldDirty: BitmapSnapshot;
  readonly newDirty: BitmapSnapshot;
  readonly bases: ReadonlyMap<string, number>;
  readonly reverseCfg: SimConfig;
}

export function reverseStart(x: FailbackInputs): ReverseStart {
  const history = new History();
  let stamps = 0;
  const chunkBlocks = x.cfg.resync.chunkBlocks;
  const balanceOf = (id: number): number | undefined =>
    x.promotedWrites.get(id)?.balance ?? x.history.writes[id]?.balance;
  const targetBlocks: { volume: string; block: number; id: number | undefined }[] = [];
  const truth = new Map<string, ('differs' | 'allowed' | undefined)[]>();
  const dirty = new Map<string, Uint8Array>();
  for (const g of x.cfg.groups) {
    for (const v of g.volumes) {
      const chunks = Math.ceil(v.blocks / chunkBlocks);
      const t: ('differs' | 'allowed' | undefined)[] = Array.from({ length: chunks }, () => undefined);
      for (let b = 0; b < v.blocks; b++) {
        const now = x.promoted.read(v.name, b);
        const old = x.history.current(v.name, b)?.writeId;
        let mapped: number | undefined;
        if (now !== undefined) {
          const w = history.add({
            set: g.set,
            group: g.name,
            volume: v.name,
            block: b,
            seq: 0,
            key: undefined,
            srcPos: ++stamps,
            balance: balanceOf(now),
            issueStamp: ++stamps,
          });
          history.acked(w.writeId, ++stamps, true);
          mapped = w.writeId;
        }
        const same = old === now;
        targetBlocks.push({
          volume: v.name,
          block: b,
          id: same ? mapped : old === undefined ? undefined : FOREIGN_ID_BASE + old,
        });
        if (!same) t[Math.floor(b / chunkBlocks)] = 'differs';
      }
      const issued = x.promotedWrites.chunksIssued.get(v.name);
      for (let c = 0; c < chunks; c++) {
        if (t[c] === undefined && (issued?.has(c) === true || x.checkers.chunkDirtyInTruth(v.name, c)))
          t[c] = 'allowed';
      }
      truth.set(v.name, t);
      const a = x.oldDirty.get(v.name)!;
      const bits = Uint8Array.from(x.newDirty.get(v.name)!, (byte, i) => byte | a[i]!);
      if (x.bug === 'failback-whole-volume') for (let c = 0; c < chunks; c++) setChunkBit(bits, c);
      dirty.set(v.name, bits);
    }
  }
  history.setBase();
  return {
    cfg: x.reverseCfg,
    rng: x.rng,
    epoch: x.epoch,
    history,
    stamps,
    bases: x.bases,
    dirty,
    targetBlocks,
    truth,
  };
}

/** Chunks set in a snapshot. */
export function countChunks(bits: BitmapSnapshot): number {
  let n = 0;
  for (const b of bits.values()) for (const byte of b) for (let x = byte; x !== 0; x &= x - 1) n++;
  return n;
}
