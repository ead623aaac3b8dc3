/**
 * The simulated target node: per group a real GroupReceiver (src/core/receiver.ts), a simulated
 * journal of its own and a real GroupArrival fed only once records are durable; per consistency
 * set an ApplyCoordinator (apply.ts). TargetDisk is what survives a crash; a TargetNode is one
 * incarnation of the process, rebuilt from the disk on restart.
 *
 *   CONNECT(session)  --> adopt the session, RESUME(receiver.resumeSeq()) per group
 *   RECORDS           --> receiver.accept --append--> journal --sync--> arrival.onRecord
 *                                                                  --> receiver.onDurable --> ACK
 *                                   --duplicates--> ACK again
 *                                   --error (a gap)--> drop the session: the source resumes
 *   TICK              --> arrival.onTick
 *   nothing heard for sessionTimeoutUs --> forget the session
 *
 * The ACK names at most what this session carried (the RESUME point or a record received in it):
 * a sync begun in an earlier session may complete after the RESUME, and GroupSender.onAck refuses
 * a report above what it sent in the current session (a protocol error: the session is dropped).
 *
 *   PAIR_STATE(state, copyEndSeq) --> in memory at once (the apply coordinator's claim of a
 *                        consistent image changes now) --> persisted (groups.json `announced`);
 *                        the group's later frames wait until it is durable, so no record that
 *                        followed it is journalled before it (a restart keeps the flag)
 *   a group's image is consistent iff `pair` is announced and seqApplied >= its copyEndSeq; a set's
 *   iff all its groups' are. An announcement lost or overtaken (a RECORDS or TICK frame counts more
 *   announcements than arrived) drops the session. Planted bug resync-consistent-early: `resync`
 *   announcements are ignored.
 *
 * Takeover (DESIGN.md §3.7): once every set's image is consistent and no cycle runs, the cut is
 * frozen, link frames refused, the volumes synced; sim.ts then persists the epoch, takeoverSeq and
 * a bitmap of the chunks of the records held beyond the cut (planted bug
 * takeover-forgets-beyond-cut: none), and the node comes back as a PromotedNode (failback.ts).
 */
import { ARRIVAL_LIMITS_DEFAULT, GroupArrival } from '../../core/arrival.js';
import { DirtyBitmap } from '../../core/dirty-bitmap.js';
import type { ApplyState } from '../../core/apply-plan.js';
import { GroupReceiver } from '../../core/receiver.js';
import type { OrderKey, RecordHeader } from '../../core/types.js';
import { keyOf, seq } from '../../core/types.js';
import type { ApplyDisk } from './apply.js';
import { BLOCK_BYTES } from './config.js';
import { ApplyCoordinator } from './apply.js';
import type { SimContext } from './context.js';
import { countDrop } from './context.js';
import type { BitmapSnapshot } from './disk.js';
import { markRecordsAfter, SimBitmapFile, SimJournal, SimVolumes } from './disk.js';
import type { CopyRecord } from './history.js';
import type { AnnouncedState, Frame, Network, ShippedRecord } from './network.js';
import type { Rng } from './rng.js';

/** The source's last PAIR_STATE for a group, as the target keeps it. */
export interface Announced {
  readonly state: AnnouncedState;
  readonly copyEndSeq: number;
}

/** Before any announcement: the initial copy is taken as done (not modelled). */
const ANNOUNCED_INITIAL: Announced = { state: 'pair', copyEndSeq: 0 };

/** What a takeover persisted (groups.json: the new epoch, role promoted, takeoverSeq). */
export interface TakeoverRecord {
  readonly epoch: number;
  /** Per group, the last seq the takeover's cut applied. */
  readonly takeoverSeq: ReadonlyMap<string, number>;
}

/** What a takeover found: per set the cut the volumes show, per group its seq and the records beyond it. */
export interface TakeoverResult extends TakeoverRecord {
  readonly cuts: ReadonlyMap<string, OrderKey | undefined>;
  /** Per volume, the chunks of the records journalled here beyond the cut (the old source has them). */
  readonly beyondCut: BitmapSnapshot;
}

/** The target's disk: one journal per group, the volumes, the apply state files. */
export class TargetDisk implements ApplyDisk {
  readonly journals = new Map<string, SimJournal>();
  readonly volumes: SimVolumes;
  readonly applyStates = new Map<string, ApplyState>();
  /** groups.json `announced`: the source's last PAIR_STATE, once persisted. */
  readonly announced = new Map<string, Announced>();
  /** Set once a takeover is durable: the node restarts as the promoted side (failback.ts). */
  takeover: TakeoverRecord | undefined;
  /** The promoted side's dirty bitmaps (writes since the takeover), from the takeover on. */
  readonly promotedBits: SimBitmapFile;

  constructor(
    private readonly ctx: SimContext,
    rng: Rng,
  ) {
    const d = ctx.cfg.disk;
    for (const g of ctx.cfg.groups)
      this.journals.set(g.name, new SimJournal(ctx.sched, rng.fork(), d.journalSyncUs, [g.name]));
    this.volumes = new SimVolumes(ctx.sched, rng.fork(), d.volumeSyncUs);
    this.promotedBits = new SimBitmapFile(ctx.sched, rng.fork(), ctx.cfg.resync.bitmapPersistUs, ctx.stamp);
  }

  journal(group: string): SimJournal {
    return this.journals.get(group)!;
  }

  /** The group's durable contiguous prefix: what the source may have released. */
  seqDurable(group: string): number {
    return this.journal(group).seqDurable(group);
  }

  /** The copy record is durable here: in the journal's durable prefix, or applied and released. */
  holdsCopy(c: CopyRecord): boolean {
    const j = this.journal(c.group);
    if (c.seq <= j.seqReleased(c.group)) return true;
    return c.seq <= j.seqDurable(c.group) && j.get(c.group, c.seq)?.copy?.copyId === c.copyId;
  }

  unreleased(): number {
    let n = 0;
    for (const j of this.journals.values()) n += j.unreleased();
    return n;
  }

  crash(): void {
    for (const j of this.journals.values()) j.crash(this.ctx.cfg.disk.tornChance);
    this.ctx.stats.volumeWritesLost += this.volumes.crash(this.ctx.cfg.disk.dirtySurvivesChance);
    this.promotedBits.crash();
  }
}

interface TargetSession {
  readonly id: number;
  lastHeardUs: number;
  /** Per group, the highest seq this session carried (the RESUME point to start with). */
  readonly seqCarried: Map<string, number>;
  /** Per group, the PAIR_STATE announcements received in this session. */
  readonly pairStates: Map<string, number>;
}

export class TargetNode {
  alive = true;
  private readonly receivers = new Map<string, GroupReceiver>();
  private readonly arrivals = new Map<string, GroupArrival>();
  private readonly coordinators = new Map<string, ApplyCoordinator>();
  /** The source's last announcement per group, in memory (the disk may lag behind). */
  private readonly announced = new Map<string, Announced>();
  /** Per group, its frames that wait while an announcement is being persisted. */
  private readonly held = new Map<string, Frame[]>();
  private session: TargetSession | undefined;
  /** A takeover began: link frames are refused. */
  private takingOver = false;

  constructor(
    private readonly ctx: SimContext,
    private readonly rng: Rng,
    private readonly disk: TargetDisk,
    private readonly net: Network,
  ) {
    for (const g of ctx.cfg.groups) {
      this.recoverGroup(g.name);
      this.announced.set(g.name, disk.announced.get(g.name) ?? ANNOUNCED_INITIAL);
    }
    for (const set of ctx.cfg.sets) {
      const arrivals = set.groups.map((g) => this.arrivals.get(g)!);
      const consistent = (seqApplied: ReadonlyMap<string, number>): boolean =>
        set.groups.every((g) => this.groupConsistent(g, seqApplied.get(g)!));
      const c = new ApplyCoordinator(ctx, rng.fork(), set, disk, arrivals, () => this.alive, consistent);
      for (const g of set.groups) this.coordinators.set(g, c);
      c.start();
    }
    ctx.sched.every(ctx.cfg.link.heartbeatUs, () => {
      if (!this.alive) return false;
      this.onTimer();
      return true;
    });
  }

  crash(): void {
    this.alive = false;
    this.session = undefined;
  }

  /**
   * Takeover (DESIGN.md §3.7, src/node/replication/target.ts `takeover`): once every set's image
   * is consistent and no cycle runs (false: not now, try again later), the coordinators stop at
   * their cut, link frames are refused, the volumes are synced; then `done` gets each group's
   * seqApplied and the chunks of the records held beyond it (planted bug
   * takeover-forgets-beyond-cut: none). A crash before that ends nothing: the takeover is retried.
   */
  takeover(done: (r: TakeoverResult) => void): boolean {
    const coords = [...new Set(this.coordinators.values())];
    if (this.takingOver || !coords.every((c) => c.settled)) return false;
    this.takingOver = true;
    this.session = undefined;
    for (const c of coords) c.freeze();
    this.disk.volumes.sync(() => {
      if (!this.alive) return;
      const chunkBlocks = this.ctx.cfg.resync.chunkBlocks;
      const takeoverSeq = new Map<string, number>();
      const beyondCut = new Map<string, Uint8Array>();
      for (const g of this.ctx.cfg.groups) {
        const applied = this.coordinators.get(g.name)!.seqApplied(g.name);
        takeoverSeq.set(g.name, applied);
        for (const v of g.volumes) {
          const bytes = DirtyBitmap.byteLength(v.blocks * BLOCK_BYTES, chunkBlocks * BLOCK_BYTES);
          beyondCut.set(v.name, new Uint8Array(bytes));
        }
        if (this.ctx.bug === 'takeover-forgets-beyond-cut') continue;
        const entries = this.disk.journal(g.name).entries(g.name);
        markRecordsAfter(beyondCut, entries, applied, chunkBlocks, BLOCK_BYTES);
      }
      const cuts = new Map(
        this.ctx.cfg.sets.map((set) => [set.name, this.coordinators.get(set.groups[0]!)!.cut]),
      );
      done({ epoch: this.ctx.epoch + 1, takeoverSeq, cuts, beyondCut });
    });
    return true;
  }

  /** Every group's image is consistent (`pair` announced and applied up to its copyEndSeq). */
  get consistent(): boolean {
    return this.ctx.cfg.groups.every((g) => this.groupConsistentNow(g.name));
  }

  /** The group's image is consistent at the set's last completed cycle. */
  groupConsistentNow(group: string): boolean {
    return this.groupConsistent(group, this.coordinators.get(group)!.seqApplied(group));
  }

  onFrame(f: Frame): void {
    if (this.takingOver) return;
    if (f.type === 'connect') return this.onConnect(f.session);
    const s = this.session;
    if (s === undefined || f.session !== s.id) return;
    s.lastHeardUs = this.ctx.sched.nowUs;
    if (f.type === 'records' || f.type === 'tick' || f.type === 'pair-state') {
      const held = this.held.get(f.group);
      if (held !== undefined) return void held.push(f);
      if (f.type !== 'pair-state' && f.pairStates > (s.pairStates.get(f.group) ?? 0))
        return this.drop('announcement lost');
    }
    switch (f.type) {
      case 'heartbeat':
        return;
      case 'close':
        this.session = undefined;
        return;
      case 'records':
        return this.onRecords(s, f.group, f.records);
      case 'tick':
        return this.onTick(f.group, f.seq, f.key);
      case 'pair-state':
        return this.onPairState(s, f.group, f.state, f.copyEndSeq, f.index);
      default:
        return this.drop(`unexpected ${f.type}`);
    }
  }

  private groupConsistent(group: string, seqApplied: number): boolean {
    const a = this.announced.get(group)!;
    return a.state === 'pair' && seqApplied >= a.copyEndSeq;
  }

  /**
   * PAIR_STATE: in memory at once, then persisted; the group's later frames wait for it. Numbered
   * per session: a duplicate or an overtaken one is ignored, one after a missing one drops the session.
   */
  private onPairState(
    s: TargetSession,
    group: string,
    state: AnnouncedState,
    copyEndSeq: number,
    index: number,
  ): void {
    const seen = s.pairStates.get(group) ?? 0;
    if (index <= seen) return;
    if (index > seen + 1) return this.drop('announcement lost');
    s.pairStates.set(group, index);
    if (state === 'resync' && this.ctx.bug === 'resync-consistent-early') return;
    const a: Announced = { state, copyEndSeq };
    this.announced.set(group, a);
    this.ctx.log(`${group}: announced ${state}${state === 'pair' ? ` up to ${copyEndSeq}` : ''}`);
    this.coordinators.get(group)!.claimMayHaveChanged();
    const held: Frame[] = [];
    this.held.set(group, held);
    const [lo, hi] = this.ctx.cfg.disk.persistUs;
    this.ctx.sched.after(this.rng.int(lo, hi), () => {
      if (!this.alive) return;
      this.disk.announced.set(group, a);
      this.held.delete(group);
      this.ctx.crashPoint('target');
      for (const f of held) this.onFrame(f);
    });
  }

  /** Rebuilds a group from the journal: the receiver from its durable end, arrival from its records. */
  private recoverGroup(group: string): void {
    const j = this.disk.journal(group);
    const seqLast = j.seqDurable(group);
    const keyLast = seqLast === j.seqReleased(group) ? j.keyReleased(group) : keyOf(j.get(group, seqLast)!.h);
    this.receivers.set(
      group,
      new GroupReceiver(group, { epoch: this.ctx.epoch, seqLast: seq(seqLast), keyLast }),
    );
    const arrival = new GroupArrival(group, ARRIVAL_LIMITS_DEFAULT, {
      seqReleased: seq(j.seqReleased(group)),
      keyReleased: j.keyReleased(group),
    });
    this.arrivals.set(group, arrival);
    for (const e of j.entries(group)) this.feed(arrival, e.h);
    j.onDurable = (entries) => {
      for (const e of entries) this.feed(arrival, e.h);
    };
  }

  private feed(arrival: GroupArrival, h: RecordHeader): void {
    const r = arrival.onRecord(h);
    if (!r.ok)
      this.ctx.checkers.report('protocol', `arrival refused durable ${h.group}/${h.seq}: ${r.detail}`);
  }

  private onConnect(id: number): void {
    if (this.session !== undefined && id <= this.session.id) return;
    const seqCarried = new Map<string, number>();
    this.session = { id, lastHeardUs: this.ctx.sched.nowUs, seqCarried, pairStates: new Map() };
    for (const [group, r] of this.receivers) {
      seqCarried.set(group, r.resumeSeq() - 1);
      this.net.send('target', { type: 'resume', session: id, group, nextSeq: r.resumeSeq() });
    }
  }

  private onRecords(s: TargetSession, group: string, records: readonly ShippedRecord[]): void {
    const receiver = this.receivers.get(group)!;
    const r = receiver.accept(
      this.ctx.epoch,
      records.map((x) => x.h),
    );
    switch (r.kind) {
      case 'duplicates':
        return this.ack(group);
      case 'stale-epoch':
        return this.drop('stale epoch');
      case 'error':
        if (this.ctx.bug === 'apply-past-gap') this.journalPastGap(group, records);
        return this.drop('refused batch');
      case 'append':
        break;
    }
    const j = this.disk.journal(group);
    const fresh = records.slice(r.from);
    for (const x of fresh) if (!j.has(group, x.h.seq)) j.append(x);
    const last = fresh.at(-1)!.h;
    receiver.appended(last);
    s.seqCarried.set(group, Math.max(s.seqCarried.get(group)!, last.seq));
    this.ctx.crashPoint('target');
    j.sync(() => {
      if (!this.alive) return;
      receiver.onDurable(seq(Math.min(j.seqDurable(group), receiver.seqAppended)));
      this.ack(group);
    });
  }

  /** Planted bug apply-past-gap: keep the records after the gap instead of refusing them. */
  private journalPastGap(group: string, records: readonly ShippedRecord[]): void {
    const j = this.disk.journal(group);
    const next = this.receivers.get(group)!.seqAppended + 1;
    for (const x of records) if (x.h.seq > next && !j.has(group, x.h.seq)) j.append(x);
    j.sync();
  }

  private onTick(group: string, afterSeq: number, key: OrderKey): void {
    const r = this.arrivals.get(group)!.onTick(seq(afterSeq), key);
    if (r.ok || r.kind === 'backpressure') return;
    this.ctx.checkers.report('protocol', `arrival refused tick ${group} (${afterSeq}): ${r.detail}`);
    this.drop('refused tick');
  }

  private ack(group: string): void {
    const s = this.session;
    if (s === undefined) return;
    const durableSeq = Math.min(this.receivers.get(group)!.seqDurable, s.seqCarried.get(group)!);
    this.net.send('target', { type: 'ack', session: s.id, group, durableSeq });
  }

  private drop(reason: string): void {
    const s = this.session;
    if (s === undefined) return;
    this.net.send('target', { type: 'close', session: s.id });
    this.session = undefined;
    countDrop(this.ctx.stats, `target: ${reason}`);
    this.ctx.log(`session ${s.id} dropped (target: ${reason})`);
  }

  private onTimer(): void {
    const s = this.session;
    if (s === undefined) return;
    if (this.ctx.sched.nowUs - s.lastHeardUs > this.ctx.cfg.link.sessionTimeoutUs) {
      this.session = undefined;
      countDrop(this.ctx.stats, 'target: timeout');
      return;
    }
    this.net.send('target', { type: 'heartbeat', session: s.id });
  }
}
