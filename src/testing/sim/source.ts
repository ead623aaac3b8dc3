/**
 * The simulated source node: a real Sequencer (src/core/sequencer.ts) for every group, one
 * simulated journal for the whole node, and per group a real GroupSender (src/core/sender.ts).
 * The journal is the disk and survives a crash; a SourceNode is one incarnation of the process,
 * rebuilt from the journal on restart (the sequencer resumes from its durable end).
 *
 *   host write --> sequencer.next --> journal.append --> ack (FUA: after the sync that covers it)
 *   FLUSH      --> journal.sync --> ack (every write acknowledged before it is now promised)
 *   every flushEveryUs: sync the journal if it holds unsynced records (page-cache writeback)
 *   journal durable --> pump: sender.want --> RECORDS of *durable* records --> sender.onSent
 *   RESUME     --> sender.onResume --> release up to seqAcked, pump
 *   ACK        --> sender.onAck    --> release up to seqAcked, pump
 *   idle group --> sender.tickDue  --> TICK(group's durable seq, key of the journal's durable end)
 *
 * Two rules the real node must follow too (doc/simulator.md):
 * - Ship only durable records. A crash may lose the unsynced tail, and the sequencer then gives
 *   those seqs and ordinals to new records: had the target received the lost ones, it would hold
 *   a different history (RESUME fails with target-ahead, or the target applies writes that never
 *   happened).
 * - A tick's key is the largest *durable* key, with the group's durable seq. Every later record of
 *   the group then has a larger key, even after a crash: the records after the durable end are
 *   either above it already or lost and reissued above the recovered end. The latest *assigned*
 *   key would not do: a crash could reissue a record of the group below it.
 *
 * The source releases a group's records only up to sender.seqAcked, the target's durable report
 * (planted bug release-before-durable: at send time). A FUA write is acknowledged after the sync
 * that covers it (planted bug fua-before-sync: at once). Ticks follow rule 2 (planted bug
 * tick-from-last-key: the latest key assigned, what the first version of the node's sender sent).
 */
import { GroupSender } from '../../core/sender.js';
import type { JournalSpan } from '../../core/sender.js';
import { Sequencer } from '../../core/sequencer.js';
import type { OrderKey, RecordHeader, TimeUs } from '../../core/types.js';
import { byteOffset, nodeIdOf, ordinal, RecordKind, seq, timeUs } from '../../core/types.js';
import { BLOCK_BYTES } from './config.js';
import type { SimContext } from './context.js';
import { countDrop } from './context.js';
import type { SimJournal } from './disk.js';
import type { Frame, Network } from './network.js';
import type { Rng } from './rng.js';
import { SIM_EPOCH } from './target.js';

const SOURCE_NODE_ID = nodeIdOf('siteA');
/** The node clock at virtual time 0, in microseconds since the Unix epoch. */
const NODE_CLOCK_BASE_US = 1_700_000_000_000_000;

export interface WriteRequest {
  readonly set: string;
  readonly group: string;
  readonly volume: string;
  readonly block: number;
  readonly balance: number | undefined;
  readonly fua: boolean;
  readonly hostTimeUs: TimeUs | undefined;
  readonly issueStamp: number;
}

/** A tick: when it is due (tickDue reads the span), what it says. */
interface PlannedTick {
  readonly span: JournalSpan;
  readonly seq: number;
  readonly key: OrderKey;
}

interface SourceSession {
  readonly id: number;
  readonly startedUs: number;
  lastHeardUs: number;
  /** Last time an ACK moved a group on, or records went out with none in flight. */
  lastProgressUs: number;
}

export class SourceNode {
  alive = true;
  private readonly sequencer: Sequencer;
  private readonly senders = new Map<string, GroupSender>();
  private session: SourceSession | undefined;
  /** Host operations not yet answered: failed if the node crashes first. */
  private readonly pending = new Map<number, (ok: boolean) => void>();
  private nextOpId = 1;

  constructor(
    private readonly ctx: SimContext,
    private readonly rng: Rng,
    private readonly journal: SimJournal,
    private readonly net: Network,
    /** The target's durable prefix of a group: only for the release-after-durable checker. */
    private readonly targetSeqDurable: (group: string) => number,
  ) {
    const groups = ctx.cfg.groups.map((g) => g.name);
    const end = journal.keyDurableMax;
    this.sequencer = new Sequencer(SOURCE_NODE_ID, ctx.cfg.writeTimeMode, {
      lastOrdinal: end?.ordinal ?? ordinal(0),
      lastWriteTimeUs: end?.writeTimeUs ?? timeUs(0),
      lastSeq: new Map(groups.map((g) => [g, seq(journal.seqLast(g))])),
    });
    for (const g of groups) {
      this.senders.set(g, new GroupSender(g, ctx.cfg.sender, seq(journal.seqReleased(g)), SIM_EPOCH));
    }
    journal.onDurable = () => this.pump();
    this.startTimers();
    this.connect();
  }

  get nodeClockUs(): number {
    return NODE_CLOCK_BASE_US + this.ctx.sched.nowUs;
  }

  write(req: WriteRequest, done: (ok: boolean) => void): void {
    const f = this.sequencer.next(req.group, req.hostTimeUs, timeUs(this.nodeClockUs));
    const h: RecordHeader = {
      kind: RecordKind.data,
      group: req.group,
      volume: req.volume,
      offset: byteOffset(req.block * BLOCK_BYTES),
      length: BLOCK_BYTES,
      epoch: SIM_EPOCH,
      markerNo: 0,
      ...f,
    };
    const key: OrderKey = { writeTimeUs: f.writeTimeUs, nodeId: f.nodeId, ordinal: f.ordinal };
    const w = this.ctx.history.add({ ...req, seq: f.seq, key });
    this.journal.append({ h, writeId: w.writeId });
    this.ctx.stats.writesIssued++;
    this.ctx.trace.add('w', w.writeId, req.group, f.seq, f.writeTimeUs, f.ordinal);
    const op = this.track(done);
    const ack = (): void =>
      this.answer(op, () => {
        this.ctx.history.acked(w.writeId, this.ctx.stamp(), req.fua);
        this.ctx.stats.writesAcked++;
      });
    if (req.fua && this.ctx.bug !== 'fua-before-sync') this.journal.sync(ack);
    else
      this.ctx.sched.after(this.rng.int(this.ctx.cfg.link.hostAckUs[0], this.ctx.cfg.link.hostAckUs[1]), ack);
    this.ctx.crashPoint('source');
  }

  flush(issueStamp: number, done: (ok: boolean) => void): void {
    const op = this.track(done);
    this.journal.sync(() =>
      this.answer(op, () => {
        this.ctx.history.promiseAckedBefore(issueStamp);
        this.ctx.stats.flushes++;
      }),
    );
  }

  /** The process dies: every host operation not yet answered fails. The journal crashes apart. */
  crash(): void {
    this.alive = false;
    for (const done of this.pending.values())
      this.ctx.sched.after(this.ctx.cfg.link.hostAckUs[1], () => done(false));
    this.pending.clear();
    this.session = undefined;
  }

  onFrame(f: Frame): void {
    const s = this.session;
    if (s === undefined || f.session !== s.id) return;
    s.lastHeardUs = this.ctx.sched.nowUs;
    switch (f.type) {
      case 'heartbeat':
        return;
      case 'close':
        return this.drop('source: closed by the target', false);
      case 'resume':
        return this.onResume(f.group, f.nextSeq);
      case 'ack':
        return this.onAck(s, f.group, f.durableSeq);
      default:
        return this.drop(`source: unexpected ${f.type}`);
    }
  }

  private track(done: (ok: boolean) => void): number {
    const op = this.nextOpId++;
    this.pending.set(op, done);
    return op;
  }

  private answer(op: number, onOk: () => void): void {
    const done = this.pending.get(op);
    if (!this.alive || done === undefined) return;
    this.pending.delete(op);
    onOk();
    done(true);
  }

  private span(group: string): JournalSpan {
    return {
      seqReleased: seq(this.journal.seqReleased(group)),
      seqLast: seq(this.journal.seqDurable(group)),
    };
  }

  private onResume(group: string, nextSeq: number): void {
    const r = this.senders.get(group)!.onResume(nextSeq, this.span(group));
    if (!r.ok) return this.drop(`source: RESUME ${r.kind}`);
    this.release(group);
    this.pump();
  }

  private onAck(s: SourceSession, group: string, durableSeq: number): void {
    const r = this.senders.get(group)!.onAck(durableSeq);
    if (!r.ok) return this.drop(`source: ACK ${r.kind}`);
    if (!r.advanced) return;
    s.lastProgressUs = this.ctx.sched.nowUs;
    this.release(group);
    this.pump();
  }

  /** Releases the group's records up to `upTo` (the target's durable report, unless a bug). */
  private release(group: string, upTo: number = this.senders.get(group)!.seqAcked): void {
    if (upTo <= this.journal.seqReleased(group)) return;
    this.ctx.checkers.onSourceRelease(group, upTo, this.targetSeqDurable(group));
    this.journal.release(group, upTo);
  }

  /** Sends what every streaming sender wants, from the durable part of the journal. */
  private pump(): void {
    const s = this.session;
    if (s === undefined) return;
    for (const [group, sender] of this.senders) {
      for (;;) {
        const want = sender.want(this.span(group));
        if (want === undefined) break;
        const count = Math.max(1, Math.floor(want.maxBytes / BLOCK_BYTES));
        const records = this.journal.durableRange(group, want.fromSeq, count);
        if (records.length === 0) break;
        if (sender.bytesInFlight === 0) s.lastProgressUs = this.ctx.sched.nowUs;
        const last = records.at(-1)!.h.seq;
        this.net.send('source', { type: 'records', session: s.id, group, records });
        this.ctx.trace.add('send', s.id, group, want.fromSeq, last);
        sender.onSent(last, records.length * BLOCK_BYTES, this.ctx.sched.nowMs);
        if (this.ctx.bug === 'release-before-durable') this.release(group, last);
        this.ctx.crashPoint('source');
      }
    }
  }

  private startTimers(): void {
    const { sched, cfg } = this.ctx;
    sched.every(cfg.link.heartbeatUs, () => {
      if (!this.alive) return false;
      this.onTimer();
      return true;
    });
    sched.every(cfg.disk.flushEveryUs, () => {
      if (!this.alive) return false;
      this.journal.sync();
      return true;
    });
  }

  private onTimer(): void {
    const now = this.ctx.sched.nowUs;
    const s = this.session;
    if (s === undefined) return;
    const link = this.ctx.cfg.link;
    const senders = [...this.senders.values()];
    if (now - s.lastHeardUs > link.sessionTimeoutUs) return this.drop('source: timeout');
    if (now - s.startedUs > link.resumeTimeoutUs && senders.some((x) => x.state === 'resuming')) {
      return this.drop('source: no RESUME');
    }
    if (now - s.lastProgressUs > link.ackTimeoutUs && senders.some((x) => x.bytesInFlight > 0)) {
      return this.drop('source: no ACK');
    }
    this.net.send('source', { type: 'heartbeat', session: s.id });
    this.sendTicks(s);
  }

  private sendTicks(s: SourceSession): void {
    for (const [group, sender] of this.senders) {
      const tick =
        this.ctx.bug === 'tick-from-last-key' ? this.tickFromLastKey(group) : this.tickDurable(group);
      if (!sender.tickDue(tick.span, this.ctx.sched.nowMs)) continue;
      this.net.send('source', { type: 'tick', session: s.id, group, seq: tick.seq, key: tick.key });
      sender.onTickSent(this.ctx.sched.nowMs);
      this.ctx.stats.ticksSent++;
      this.ctx.crashPoint('source');
    }
  }

  /** Rule 2 of the file comment: the group's durable seq, the journal's largest durable key. */
  private tickDurable(group: string): PlannedTick {
    const span = this.span(group);
    const zero = { writeTimeUs: timeUs(0), nodeId: SOURCE_NODE_ID, ordinal: ordinal(0) };
    return { span, seq: span.seqLast, key: this.journal.keyDurableMax ?? zero };
  }

  /** Planted bug tick-from-last-key: due once all appended is sent; the latest key assigned. */
  private tickFromLastKey(group: string): PlannedTick {
    const span = { ...this.span(group), seqLast: seq(this.journal.seqLast(group)) };
    return { span, seq: this.senders.get(group)!.seqSent, key: this.sequencer.lastKey() };
  }

  private connect(): void {
    const id = this.ctx.newSessionId();
    const now = this.ctx.sched.nowUs;
    this.session = { id, startedUs: now, lastHeardUs: now, lastProgressUs: now };
    for (const sender of this.senders.values()) sender.connected();
    this.net.send('source', { type: 'connect', session: id });
    this.ctx.stats.sessions++;
    this.ctx.trace.add('connect', id);
  }

  private drop(reason: string, notify = true): void {
    const s = this.session;
    if (s === undefined) return;
    if (notify) this.net.send('source', { type: 'close', session: s.id });
    for (const sender of this.senders.values()) sender.disconnected();
    this.session = undefined;
    countDrop(this.ctx.stats, reason);
    this.ctx.log(`session ${s.id} dropped (${reason})`);
    this.ctx.sched.after(this.ctx.cfg.link.reconnectUs, () => {
      if (this.alive && this.session === undefined) this.connect();
    });
  }
}
