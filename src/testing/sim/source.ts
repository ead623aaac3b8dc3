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
 *
 * Suspension and delta resync (DESIGN.md §3.6), with the real DirtyBitmap and ResyncTracker
 * (src/core/dirty-bitmap.ts, resync.ts), one bitmap per volume, one tracker per group:
 *
 *   suspend     --> nothing shipped for the group (no RECORDS, no TICK; RESUME and ACK still
 *                   handled); its journalled records stay until after the resume
 *   host write  --> tracker.markWrite --> bitmap file durable (skipped when the bit is durably
 *   (suspended)     set already) --> write to the source volume --> ack. No seq, no key.
 *   resume      --> wait for the tracked writes in flight --> PAIR_STATE(resync) --> shipping
 *                   again --> tracker.start(); per step (waiting while more than copyBacklogMax
 *                   of the group's records are unreleased): next() --> copy record (the chunk as
 *                   the source volume holds it now, seq and key from the Sequencer) --> copied()
 *                   next() done --> PAIR_STATE(pair, copyEndSeq = the last copy seq)
 *   ACK, RESUME --> tracker.acked(seqAcked): bits of chunks whose copy is durable at the target
 *   restart     --> bitmaps from the file; a group not suspended with dirty bits (or persisted in
 *                   resync) resyncs them from the start
 *
 * The group's state (pair, suspended, resync, with the copyEndSeq last announced) is on disk at
 * once (groups.json `delta`). On connect, a group that has been suspended announces its state before
 * any record. With a bounded journal (cfg.overflow, policy `suspend`) a host write that finds it
 * full suspends its set, and is tracked.
 *
 * Takeover and failback (failback.ts): FENCED(epoch) from the node that took over --> the epoch
 * persisted, host operations not yet answered fail, new ones are refused, nothing is shipped and
 * no session opened again (planted bug no-fence: ignored). demote --> fenced, drained, journal
 * synced, the dirty set handed over: the bitmaps and the chunks of the records past takeoverSeq
 * (planted bug failback-skips-journal: the bitmaps only). Planted bugs: resync-clear-on-copy (a bit cleared when its copy is journalled),
 * resync-skip-chunk (next() skips each volume's last dirty chunk), suspend-ack-before-bit (a tracked
 * write applied and acknowledged before its bit is durable).
 */
import { DirtyBitmap } from '../../core/dirty-bitmap.js';
import { ResyncTracker } from '../../core/resync.js';
import { GroupSender } from '../../core/sender.js';
import type { JournalSpan } from '../../core/sender.js';
import { Sequencer } from '../../core/sequencer.js';
import type { OrderKey, RecordHeader, TimeUs } from '../../core/types.js';
import { byteOffset, ordinal, RecordKind, seq, timeUs } from '../../core/types.js';
import { nextChunkWithBug } from './bugs.js';
import type { CopyHeld } from './checkers.js';
import { BLOCK_BYTES } from './config.js';
import type { SimContext } from './context.js';
import { countDrop } from './context.js';
import type { BitmapSnapshot, SimBitmapFile, SimJournal } from './disk.js';
import { markRecordsAfter, NO_WRITE } from './disk.js';
import type { AnnouncedState, Frame, Network } from './network.js';
import type { Rng } from './rng.js';
/** The node clock at virtual time 0, in microseconds since the Unix epoch. */
export const NODE_CLOCK_BASE_US = 1_700_000_000_000_000;

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
  /** Per group, the PAIR_STATE announcements sent in this session. */
  readonly pairStates: Map<string, number>;
}

/** A group's pair state at the source (groups.json `delta` in the node). */
export type DeltaMode = 'pair' | 'suspended' | 'resync';

export interface DeltaState {
  readonly state: DeltaMode;
  /** The last copy record of the last resync that completed (what `pair` announces). */
  readonly copyEndSeq: number;
}

/** What the source keeps on disk: the journal, the bitmap file, each group's pair state. */
export class SourceDisk {
  /** Absent: never suspended (pair, nothing to announce). Written at once, never lost. */
  readonly delta = new Map<string, DeltaState>();
  /** A newer epoch this node learned of (a takeover elsewhere): it is no source any more. 0: none. */
  fencedEpoch = 0;

  constructor(
    readonly journal: SimJournal,
    readonly bitmaps: SimBitmapFile,
  ) {}
}

interface GroupDelta {
  mode: DeltaMode;
  /** Per volume of the group. */
  readonly bitmaps: ReadonlyMap<string, DirtyBitmap>;
  readonly tracker: ResyncTracker;
  /** Tracked writes not yet applied (their bit is not yet durable). */
  tracked: number;
  /** A resume waits for the tracked writes in flight (else a copy could miss one). */
  resumeWanted: boolean;
  /** Bumped by every pass and suspension: a copy step of an earlier pass does nothing. */
  pass: number;
  lastCopySeq: number;
  /** The group's last seq when this incarnation began: bounds the copies of passes before it. */
  readonly seqAtStart: number;
}

export class SourceNode {
  alive = true;
  private readonly journal: SimJournal;
  private readonly sequencer: Sequencer;
  private readonly senders = new Map<string, GroupSender>();
  private readonly delta = new Map<string, GroupDelta>();
  private session: SourceSession | undefined;
  /** Host operations not yet answered: failed if the node crashes first. */
  private readonly pending = new Map<number, (ok: boolean) => void>();
  private nextOpId = 1;
  /** Sum of the bitmaps' generations when a bitmap round was last asked for. */
  private bitsGenPersisted = 0;

  constructor(
    private readonly ctx: SimContext,
    private readonly rng: Rng,
    private readonly disk: SourceDisk,
    private readonly net: Network,
    /** The target's durable prefix of a group: only for the release-after-durable checker. */
    private readonly targetSeqDurable: (group: string) => number,
    /** Whether the target holds a copy record durably: only for the bit-cleared-early checker. */
    private readonly targetHolds: CopyHeld,
  ) {
    const journal = disk.journal;
    this.journal = journal;
    const groups = ctx.cfg.groups.map((g) => g.name);
    const end = journal.keyDurableMax;
    this.sequencer = new Sequencer(ctx.sourceNodeId, ctx.cfg.writeTimeMode, {
      lastOrdinal: end?.ordinal ?? ordinal(0),
      lastWriteTimeUs: end?.writeTimeUs ?? timeUs(0),
      lastSeq: new Map(groups.map((g) => [g, seq(journal.seqLast(g))])),
    });
    for (const g of groups) {
      this.senders.set(g, new GroupSender(g, ctx.cfg.sender, seq(journal.seqReleased(g)), ctx.epoch));
    }
    this.recoverDelta();
    journal.onDurable = () => this.pump();
    this.startTimers();
    if (this.fenced) return;
    this.connect();
    for (const [group, d] of this.delta) if (d.mode === 'resync') this.startPass(group);
  }

  /** It learned of a newer epoch: no host writes, nothing shipped (planted bug no-fence: ignored). */
  get fenced(): boolean {
    return this.disk.fencedEpoch > 0 && this.ctx.bug !== 'no-fence';
  }

  get nodeClockUs(): number {
    return NODE_CLOCK_BASE_US + this.ctx.sched.nowUs;
  }

  write(req: WriteRequest, done: (ok: boolean) => void): void {
    if (this.fenced) {
      this.ctx.stats.fencedRefused++;
      this.ctx.sched.after(this.ctx.cfg.link.hostAckUs[0], () => done(false));
      return;
    }
    const d = this.delta.get(req.group)!;
    const full = this.ctx.cfg.overflow;
    if (d.mode !== 'suspended' && full !== undefined && this.journal.unreleased() >= full.journalRecordsMax)
      this.onJournalFull(req.group, full.resumeAfterUs);
    if (d.mode === 'suspended') return this.writeTracked(req, d, done);
    const f = this.sequencer.next(req.group, req.hostTimeUs, timeUs(this.nodeClockUs));
    const h: RecordHeader = {
      kind: RecordKind.data,
      group: req.group,
      volume: req.volume,
      offset: byteOffset(req.block * BLOCK_BYTES),
      length: BLOCK_BYTES,
      epoch: this.ctx.epoch,
      markerNo: 0,
      ...f,
    };
    const key: OrderKey = { writeTimeUs: f.writeTimeUs, nodeId: f.nodeId, ordinal: f.ordinal };
    const w = this.ctx.history.add({ ...req, seq: f.seq, key, srcPos: req.issueStamp });
    this.journal.append({ h, writeId: w.writeId });
    this.ctx.stats.writesIssued++;
    this.ctx.trace.add('w', w.writeId, req.group, f.seq, f.writeTimeUs, f.ordinal);
    const op = this.track(done);
    const ack = (): void =>
      this.answer(op, () => {
        this.ctx.checkers.onSourceAck(w.writeId);
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
    this.failPending();
    this.session = undefined;
  }

  private failPending(): void {
    for (const done of this.pending.values())
      this.ctx.sched.after(this.ctx.cfg.link.hostAckUs[1], () => done(false));
    this.pending.clear();
  }

  /**
   * A node took over at `epoch` (DESIGN.md §3.7): persisted at once; every host operation not yet
   * answered fails and new ones are refused, nothing more is shipped, no session is opened again.
   */
  fence(epoch: number): void {
    if (epoch <= this.disk.fencedEpoch) return;
    this.disk.fencedEpoch = epoch;
    this.ctx.trace.add('fenced', epoch);
    if (!this.fenced) return void this.ctx.log(`source: told of epoch ${epoch}, ignored (bug no-fence)`);
    this.ctx.log(`source: fenced by epoch ${epoch}`);
    this.failPending();
    if (this.session !== undefined) this.drop('source: fenced', true, false);
  }

  /**
   * Failback, step demote (src/node/failback.ts): fenced, host writes drained (none is answered
   * any more), the journal synced; then `done` gets the dirty set handed over, per volume: the
   * bitmap (every tracked write, and chunks whose copy the target may not hold) and the chunks of
   * every journalled record the takeover did not apply (seq > takeoverSeq). Planted bug
   * failback-skips-journal: the bitmap only.
   */
  demote(
    epoch: number,
    takeoverSeq: ReadonlyMap<string, number>,
    done: (dirty: BitmapSnapshot) => void,
  ): void {
    this.disk.fencedEpoch = Math.max(this.disk.fencedEpoch, epoch);
    this.failPending();
    if (this.session !== undefined) this.drop('source: demoted', true, false);
    this.journal.sync(() => {
      if (!this.alive) return;
      const chunkBlocks = this.ctx.cfg.resync.chunkBlocks;
      const out = new Map<string, Uint8Array>();
      for (const [group, d] of this.delta) {
        const from = takeoverSeq.get(group)!;
        const marked = new Map([...d.bitmaps].map(([v, bm]) => [v, bm.toBytes()]));
        if (this.ctx.bug !== 'failback-skips-journal')
          markRecordsAfter(marked, this.journal.entries(group), from, chunkBlocks, BLOCK_BYTES);
        for (const [v, bits] of marked) out.set(v, bits);
      }
      done(out);
    });
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
      case 'fenced':
        this.ctx.checkers.onFenceDelivered(f.epoch);
        return this.fence(f.epoch);
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
    this.clearCopied(group);
    this.pump();
  }

  private onAck(s: SourceSession, group: string, durableSeq: number): void {
    const r = this.senders.get(group)!.onAck(durableSeq);
    if (!r.ok) return this.drop(`source: ACK ${r.kind}`);
    if (!r.advanced) return;
    s.lastProgressUs = this.ctx.sched.nowUs;
    this.release(group);
    this.clearCopied(group);
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
      if (this.delta.get(group)!.mode === 'suspended') continue;
      for (;;) {
        const want = sender.want(this.span(group));
        if (want === undefined) break;
        const count = Math.max(1, Math.floor(want.maxBytes / BLOCK_BYTES));
        const records = this.journal.durableRange(group, want.fromSeq, count);
        if (records.length === 0) break;
        if (sender.bytesInFlight === 0) s.lastProgressUs = this.ctx.sched.nowUs;
        const last = records.at(-1)!.h.seq;
        const pairStates = s.pairStates.get(group) ?? 0;
        this.net.send('source', { type: 'records', session: s.id, group, records, pairStates });
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
      if (this.bitsGeneration() !== this.bitsGenPersisted) this.persistBits();
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
      if (this.delta.get(group)!.mode === 'suspended') continue;
      const tick =
        this.ctx.bug === 'tick-from-last-key' ? this.tickFromLastKey(group) : this.tickDurable(group);
      if (!sender.tickDue(tick.span, this.ctx.sched.nowMs)) continue;
      const pairStates = s.pairStates.get(group) ?? 0;
      this.net.send('source', {
        type: 'tick',
        session: s.id,
        group,
        seq: tick.seq,
        key: tick.key,
        pairStates,
      });
      sender.onTickSent(this.ctx.sched.nowMs);
      this.ctx.stats.ticksSent++;
      this.ctx.crashPoint('source');
    }
  }

  /** Rule 2 of the file comment: the group's durable seq, the journal's largest durable key. */
  private tickDurable(group: string): PlannedTick {
    const span = this.span(group);
    const zero = { writeTimeUs: timeUs(0), nodeId: this.ctx.sourceNodeId, ordinal: ordinal(0) };
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
    const s: SourceSession = {
      id,
      startedUs: now,
      lastHeardUs: now,
      lastProgressUs: now,
      pairStates: new Map(),
    };
    this.session = s;
    for (const sender of this.senders.values()) sender.connected();
    this.net.send('source', { type: 'connect', session: id });
    this.ctx.stats.sessions++;
    this.ctx.trace.add('connect', id);
    // Before any record of the session: the state of every group that has been suspended.
    for (const [group, d] of this.delta) {
      if (d.mode !== 'suspended' && this.disk.delta.has(group)) this.announce(s, group);
    }
  }

  private drop(reason: string, notify = true, reconnect = true): void {
    const s = this.session;
    if (s === undefined) return;
    if (notify) this.net.send('source', { type: 'close', session: s.id });
    for (const sender of this.senders.values()) sender.disconnected();
    this.session = undefined;
    countDrop(this.ctx.stats, reason);
    this.ctx.log(`session ${s.id} dropped (${reason})`);
    if (!reconnect) return;
    this.ctx.sched.after(this.ctx.cfg.link.reconnectUs, () => {
      if (this.alive && this.session === undefined && !this.fenced) this.connect();
    });
  }

  // ---- suspension and delta resync ----

  /** Suspends the group (operator or automatic): tracked writes from now on, nothing shipped. */
  suspend(group: string): void {
    const d = this.delta.get(group)!;
    d.resumeWanted = false;
    if (d.mode === 'suspended') return;
    d.mode = 'suspended';
    d.pass++;
    this.setDelta(group, 'suspended');
    this.ctx.stats.suspensions++;
    this.ctx.trace.add('suspend', group);
    this.ctx.log(`${group}: suspended`);
  }

  /**
   * The journal is full (policy `suspend`): the group and the rest of its set are suspended, the
   * write that found it full is tracked; the operator resumes them `resumeAfterUs` later.
   */
  private onJournalFull(group: string, resumeAfterUs: number): void {
    const set = this.ctx.cfg.sets.find((x) => x.groups.includes(group))!;
    this.ctx.stats.overflows++;
    this.ctx.log(`journal full (${this.journal.unreleased()} records): ${set.groups.join(', ')} suspended`);
    for (const g of set.groups) this.suspend(g);
    this.ctx.sched.after(resumeAfterUs, () => {
      if (this.alive) for (const g of set.groups) this.resume(g);
    });
  }

  /** Resumes the group: a delta resync once the tracked writes in flight are applied. */
  resume(group: string): void {
    const d = this.delta.get(group)!;
    if (d.mode !== 'suspended') return;
    d.resumeWanted = true;
    this.maybeBeginResync(group);
  }

  /** The group's state as the end checks see it. */
  deltaOf(group: string): { readonly state: DeltaMode; readonly dirtyChunks: number } {
    const d = this.delta.get(group)!;
    let dirtyChunks = 0;
    for (const bm of d.bitmaps.values()) dirtyChunks += bm.dirtyChunks;
    return { state: d.mode, dirtyChunks };
  }

  /** Every group in pair and every bit clear. */
  get resyncsDone(): boolean {
    return [...this.delta.keys()].every((g) => {
      const d = this.deltaOf(g);
      return d.state === 'pair' && d.dirtyChunks === 0;
    });
  }

  /** Bitmaps and trackers from the bitmap file, and each group's mode from its persisted state. */
  private recoverDelta(): void {
    const { cfg } = this.ctx;
    const chunkBytes = cfg.resync.chunkBlocks * BLOCK_BYTES;
    const all = new Map<string, DirtyBitmap>();
    for (const g of cfg.groups) {
      const bitmaps = new Map<string, DirtyBitmap>();
      for (const v of g.volumes) {
        const bm = new DirtyBitmap(v.blocks * BLOCK_BYTES, chunkBytes, this.disk.bitmaps.load(v.name));
        bitmaps.set(v.name, bm);
        all.set(v.name, bm);
      }
      const tracker = new ResyncTracker([...bitmaps].map(([volume, bitmap]) => ({ volume, bitmap })));
      const persisted = this.disk.delta.get(g.name);
      const dirty = [...bitmaps.values()].some((b) => b.dirtyChunks > 0);
      const mode: DeltaMode =
        persisted?.state === 'suspended'
          ? 'suspended'
          : persisted?.state === 'resync' || dirty
            ? 'resync'
            : 'pair';
      this.delta.set(g.name, {
        mode,
        bitmaps,
        tracker,
        tracked: 0,
        resumeWanted: false,
        pass: 0,
        lastCopySeq: 0,
        seqAtStart: this.journal.seqLast(g.name),
      });
      if (mode === 'resync' && persisted?.state !== 'resync') this.setDelta(g.name, 'resync');
    }
    this.disk.bitmaps.snapshot = (): BitmapSnapshot => new Map([...all].map(([v, b]) => [v, b.toBytes()]));
    this.bitsGenPersisted = this.bitsGeneration();
    this.ctx.checkers.onSourceRestart(all, this.targetHolds);
  }

  private setDelta(group: string, state: DeltaMode, copyEndSeq?: number): void {
    const prev = this.disk.delta.get(group);
    this.disk.delta.set(group, { state, copyEndSeq: copyEndSeq ?? prev?.copyEndSeq ?? 0 });
  }

  private bitsGeneration(): number {
    let n = 0;
    for (const d of this.delta.values()) for (const b of d.bitmaps.values()) n += b.generation;
    return n;
  }

  private persistBits(done?: () => void): void {
    this.bitsGenPersisted = this.bitsGeneration();
    this.disk.bitmaps.persist(done);
  }

  /**
   * A write to a suspended group: its bit durable first, then the source volume, then the ack. No
   * seq, no key, no journal record (planted bug suspend-ack-before-bit: volume and ack first).
   */
  private writeTracked(req: WriteRequest, d: GroupDelta, done: (ok: boolean) => void): void {
    const { ctx } = this;
    const op = this.track(done);
    ctx.stats.writesIssued++;
    ctx.stats.trackedWrites++;
    ctx.checkers.onTrackedWriteIssued(req.volume, req.block, req.issueStamp);
    d.tracked++;
    const apply = (): void => {
      const w = ctx.history.add({ ...req, seq: 0, key: undefined, srcPos: ctx.stamp() });
      ctx.checkers.onTrackedWriteApplied(req.volume, req.block, w.srcPos);
      ctx.trace.add('tw', w.writeId, req.group, req.volume, req.block);
      d.tracked--;
      const [lo, hi] = ctx.cfg.link.hostAckUs;
      ctx.sched.after(this.rng.int(lo, hi), () =>
        this.answer(op, () => {
          ctx.checkers.onSourceAck(w.writeId);
          ctx.history.acked(w.writeId, ctx.stamp(), req.fua);
          ctx.stats.writesAcked++;
        }),
      );
      ctx.crashPoint('source');
    };
    const offset = req.block * BLOCK_BYTES;
    if (ctx.bug === 'suspend-ack-before-bit') {
      apply();
      d.tracker.markWrite(req.volume, offset, BLOCK_BYTES);
      this.persistBits();
      return this.maybeBeginResync(req.group);
    }
    const fresh = d.tracker.markWrite(req.volume, offset, BLOCK_BYTES);
    const chunk = Math.floor(req.block / ctx.cfg.resync.chunkBlocks);
    if (fresh === 0 && this.disk.bitmaps.durableSet(req.volume, chunk)) {
      apply();
      return this.maybeBeginResync(req.group);
    }
    this.persistBits(() => {
      if (!this.alive) return;
      apply();
      this.maybeBeginResync(req.group);
    });
    ctx.crashPoint('source');
  }

  /** A resume asked for and no tracked write in flight: announce `resync`, ship, copy. */
  private maybeBeginResync(group: string): void {
    const d = this.delta.get(group)!;
    if (!d.resumeWanted || d.tracked > 0 || d.mode !== 'suspended') return;
    d.resumeWanted = false;
    d.mode = 'resync';
    this.setDelta(group, 'resync');
    this.ctx.trace.add('resume', group);
    this.ctx.log(`${group}: resumed, resync`);
    if (this.session !== undefined) this.announce(this.session, group);
    this.startPass(group);
    this.pump();
  }

  /** PAIR_STATE of the group, in order with its records on the session. */
  private announce(s: SourceSession, group: string): void {
    const d = this.delta.get(group)!;
    const state: AnnouncedState = d.mode === 'resync' ? 'resync' : 'pair';
    const copyEndSeq = state === 'pair' ? (this.disk.delta.get(group)?.copyEndSeq ?? 0) : 0;
    const index = (s.pairStates.get(group) ?? 0) + 1;
    s.pairStates.set(group, index);
    this.net.send('source', { type: 'pair-state', session: s.id, group, state, copyEndSeq, index });
    this.ctx.trace.add('announce', s.id, group, state, copyEndSeq);
  }

  /** A pass over the dirty bits, from the start: one copy record per step. */
  private startPass(group: string): void {
    const d = this.delta.get(group)!;
    d.pass++;
    d.tracker.start();
    this.scheduleCopy(group, d.pass);
  }

  private scheduleCopy(group: string, pass: number): void {
    const [lo, hi] = this.ctx.cfg.resync.copyStepUs;
    this.ctx.sched.after(this.rng.int(lo, hi), () => this.copyStep(group, pass));
  }

  private copyStep(group: string, pass: number): void {
    const d = this.delta.get(group)!;
    if (!this.alive || this.fenced || d.mode !== 'resync' || d.pass !== pass) return;
    if (this.journal.seqLast(group) - this.journal.seqReleased(group) > this.ctx.cfg.resync.copyBacklogMax)
      return this.scheduleCopy(group, pass);
    const c = nextChunkWithBug(this.ctx.bug, d.tracker);
    if (c === undefined) return this.finishResync(group);
    const { ctx } = this;
    const firstBlock = c.offset / BLOCK_BYTES;
    const blocks = Array.from(
      { length: c.length / BLOCK_BYTES },
      (_, i) => ctx.history.current(c.volume, firstBlock + i)?.writeId,
    );
    const f = this.sequencer.next(group, undefined, timeUs(this.nodeClockUs));
    const key: OrderKey = { writeTimeUs: f.writeTimeUs, nodeId: f.nodeId, ordinal: f.ordinal };
    const copy = ctx.history.addCopy({
      group,
      volume: c.volume,
      chunk: c.chunk,
      firstBlock,
      blocks,
      seq: f.seq,
      key,
      srcPos: ctx.stamp(),
    });
    ctx.checkers.onCopy(copy);
    const h: RecordHeader = {
      kind: RecordKind.copy,
      group,
      volume: c.volume,
      offset: byteOffset(c.offset),
      length: c.length,
      epoch: this.ctx.epoch,
      markerNo: 0,
      ...f,
    };
    this.journal.append({ h, writeId: NO_WRITE, copy: { copyId: copy.copyId, blocks } });
    d.tracker.copied(c.volume, c.chunk, f.seq);
    d.lastCopySeq = f.seq;
    ctx.stats.chunksCopied++;
    ctx.trace.add('copy', group, f.seq, c.volume, c.chunk);
    if (ctx.bug === 'resync-clear-on-copy' && d.bitmaps.get(c.volume)!.clear(c.chunk)) {
      ctx.checkers.onBitsCleared(group, c.volume, [c.chunk], this.targetHolds);
      this.persistBits();
    }
    ctx.crashPoint('source');
    this.scheduleCopy(group, pass);
  }

  /** Every dirty chunk is journalled: announce `pair` with the last copy's seq. */
  private finishResync(group: string): void {
    const d = this.delta.get(group)!;
    // After a restart, copies of passes before it may be durable and not yet applied: cover them.
    const copyEndSeq = Math.max(d.lastCopySeq, d.seqAtStart);
    d.mode = 'pair';
    this.setDelta(group, 'pair', copyEndSeq);
    this.ctx.stats.resyncsCompleted++;
    this.ctx.trace.add('pair', group, copyEndSeq);
    this.ctx.log(`${group}: resync journalled, pair at copy end seq ${copyEndSeq}`);
    if (this.session !== undefined) this.announce(this.session, group);
  }

  /** The target reported records durable: clear the bits of chunks whose copy it now holds, persist them. */
  private clearCopied(group: string): void {
    const d = this.delta.get(group)!;
    if (d.tracker.inFlight === 0) return;
    const before = [...d.bitmaps].map(([volume, bm]) => ({ volume, bm, dirty: dirtyChunks(bm) }));
    if (d.tracker.acked(this.senders.get(group)!.seqAcked) === 0) return;
    for (const { volume, bm, dirty } of before) {
      const cleared = dirty.filter((c) => !bm.isDirty(c));
      if (cleared.length === 0) continue;
      this.ctx.stats.bitsCleared += cleared.length;
      this.ctx.checkers.onBitsCleared(group, volume, cleared, this.targetHolds);
    }
    // Soon durable, so that a restart does not copy these chunks again.
    this.persistBits();
  }
}

function dirtyChunks(bm: DirtyBitmap): number[] {
  const out: number[] = [];
  for (let c = bm.nextDirty(0); c >= 0; c = bm.nextDirty(c + 1)) out.push(c);
  return out;
}
