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
 */
import { ARRIVAL_LIMITS_DEFAULT, GroupArrival } from '../../core/arrival.js';
import type { ApplyState } from '../../core/apply-plan.js';
import { GroupReceiver } from '../../core/receiver.js';
import type { OrderKey, RecordHeader } from '../../core/types.js';
import { keyOf, seq } from '../../core/types.js';
import type { ApplyDisk } from './apply.js';
import { ApplyCoordinator } from './apply.js';
import type { SimContext } from './context.js';
import { countDrop } from './context.js';
import { SimJournal, SimVolumes } from './disk.js';
import type { Frame, Network, ShippedRecord } from './network.js';
import type { Rng } from './rng.js';

/** Every record and frame of the simulation carries this epoch: takeover is not modelled. */
export const SIM_EPOCH = 1;

/** The target's disk: one journal per group, the volumes, the apply state files. */
export class TargetDisk implements ApplyDisk {
  readonly journals = new Map<string, SimJournal>();
  readonly volumes: SimVolumes;
  readonly applyStates = new Map<string, ApplyState>();

  constructor(
    private readonly ctx: SimContext,
    rng: Rng,
  ) {
    const d = ctx.cfg.disk;
    for (const g of ctx.cfg.groups)
      this.journals.set(g.name, new SimJournal(ctx.sched, rng.fork(), d.journalSyncUs, [g.name]));
    this.volumes = new SimVolumes(ctx.sched, rng.fork(), d.volumeSyncUs);
  }

  journal(group: string): SimJournal {
    return this.journals.get(group)!;
  }

  /** The group's durable contiguous prefix: what the source may have released. */
  seqDurable(group: string): number {
    return this.journal(group).seqDurable(group);
  }

  unreleased(): number {
    let n = 0;
    for (const j of this.journals.values()) n += j.unreleased();
    return n;
  }

  crash(): void {
    for (const j of this.journals.values()) j.crash(this.ctx.cfg.disk.tornChance);
    this.ctx.stats.volumeWritesLost += this.volumes.crash(this.ctx.cfg.disk.dirtySurvivesChance);
  }
}

interface TargetSession {
  readonly id: number;
  lastHeardUs: number;
  /** Per group, the highest seq this session carried (the RESUME point to start with). */
  readonly seqCarried: Map<string, number>;
}

export class TargetNode {
  alive = true;
  private readonly receivers = new Map<string, GroupReceiver>();
  private readonly arrivals = new Map<string, GroupArrival>();
  private session: TargetSession | undefined;

  constructor(
    private readonly ctx: SimContext,
    rng: Rng,
    private readonly disk: TargetDisk,
    private readonly net: Network,
  ) {
    for (const g of ctx.cfg.groups) this.recoverGroup(g.name);
    for (const set of ctx.cfg.sets) {
      const arrivals = set.groups.map((g) => this.arrivals.get(g)!);
      new ApplyCoordinator(ctx, rng.fork(), set, disk, arrivals, () => this.alive).start();
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

  onFrame(f: Frame): void {
    if (f.type === 'connect') return this.onConnect(f.session);
    const s = this.session;
    if (s === undefined || f.session !== s.id) return;
    s.lastHeardUs = this.ctx.sched.nowUs;
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
      default:
        return this.drop(`unexpected ${f.type}`);
    }
  }

  /** Rebuilds a group from the journal: the receiver from its durable end, arrival from its records. */
  private recoverGroup(group: string): void {
    const j = this.disk.journal(group);
    const seqLast = j.seqDurable(group);
    const keyLast = seqLast === j.seqReleased(group) ? j.keyReleased(group) : keyOf(j.get(group, seqLast)!.h);
    this.receivers.set(group, new GroupReceiver(group, { epoch: SIM_EPOCH, seqLast: seq(seqLast), keyLast }));
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
    this.session = { id, lastHeardUs: this.ctx.sched.nowUs, seqCarried };
    for (const [group, r] of this.receivers) {
      seqCarried.set(group, r.resumeSeq() - 1);
      this.net.send('target', { type: 'resume', session: id, group, nextSeq: r.resumeSeq() });
    }
  }

  private onRecords(s: TargetSession, group: string, records: readonly ShippedRecord[]): void {
    const receiver = this.receivers.get(group)!;
    const r = receiver.accept(
      SIM_EPOCH,
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
