/**
 * The target side of a node (DESIGN.md §3.2, §3.3, §3.7): per incoming group a journal of its own
 * (`<dataDir>/in/<group>/`, so each holds one source's increasing ordinals), a GroupReceiver that
 * decides what to journal, a GroupArrival fed once records are durable, and per consistency set an
 * ApplyCoordinator. Also takeover: finish the cut, bump the epoch, make the volumes writable.
 *
 *   session ready --> RESUME(nextSeq) per group (EPOCH instead for a group taken over here)
 *   RECORDS --> receiver.accept --> journal.append --> sync --> arrival.onRecord --> ACK --> kick apply
 *   TICK    --> arrival.onTick --> kick apply
 *   apply cycle done --> ACK (applied seq) so the source can show the lag
 *
 * Peer input never throws out of here: a record for a volume that is not a pair, past the end of
 * the volume, out of order, or from a lower epoch is refused with a logged reason and nothing is
 * journalled; the session is closed and the source resends after RESUME.
 */
import { join } from 'node:path';
import type { ArrivalError } from '../../core/arrival.js';
import { GroupArrival, sameRecord } from '../../core/arrival.js';
import { RemcopyError } from '../../core/errors.js';
import { GroupReceiver } from '../../core/receiver.js';
import type { OrderKey, RecordHeader, Seq } from '../../core/types.js';
import { compareKeys, keyOf, RecordKind, seq } from '../../core/types.js';
import type { PairStateFrame, RecordsFrame, TickFrame } from '../../link/frames.js';
import { FrameType } from '../../link/frames.js';
import type { LinkSession } from '../../link/session.js';
import type { BlockDevice } from '../../storage/blockdev.js';
import { Journal } from '../../storage/journal.js';
import type { GroupConfig, NodeConfig, Topology } from '../config.js';
import { consistencySetOf } from '../config.js';
import { DEFAULT_KEEP_SNAPSHOTS } from '../config-schema.js';
import type { Log } from '../log.js';
import { VolumeSnapshots } from '../../storage/snapshots.js';
import { failpoint } from '../failpoint.js';
import type { ApplyGroup } from './apply.js';
import { ApplyCoordinator, applyStateFile, loadApplyState } from './apply.js';
import { markersFile, SetMarkers } from './set-markers.js';
import type { GroupBitmaps } from './bitmaps.js';
import { bitmapsOn } from './bitmaps.js';
import type { GroupStateStore } from './group-state.js';
import { RecentRecords } from './recent.js';
import type { ZeroMap } from './zero-map.js';

/**
 * Records held unapplied per group, at most (the arrival window). REMCOPY_ARRIVAL_WINDOW sets
 * another, for tests: they reach a window of a thousand records, not of a million.
 */
const ARRIVAL_HELD_MAX = positiveInteger(process.env.REMCOPY_ARRIVAL_WINDOW) ?? 1 << 20;
/** Bytes of received records per group kept in memory until applied (see recent.ts). */
const APPLY_CACHE_BYTES = 64 * 1024 * 1024;
/** Journal syncs of an incoming group start at most this often (see makeDurable). */
const TARGET_SYNC_INTERVAL_MS = 5;
/** Stop reading a session while a target journal is fuller than this fraction. */
const JOURNAL_PAUSE_FRACTION = 0.75;
/** Stop reading a session while more than this fraction of the arrival window waits to be applied. */
const ARRIVAL_PAUSE_FRACTION = 0.75;

export interface TargetGroupStatus {
  readonly name: string;
  readonly role: 'target' | 'promoted';
  readonly state: string;
  readonly epoch: number;
  readonly source: string;
  readonly set: string;
  readonly linkUp: boolean;
  readonly seqArrived: number;
  readonly seqApplied: number;
  readonly recordsUnapplied: number;
  readonly journal: ReturnType<Journal['usage']>;
  readonly cut: OrderKey | undefined;
  readonly copyEndSeq: number;
  readonly refusedFrames: number;
}

class TargetGroup implements ApplyGroup {
  session: LinkSession | undefined;
  /** Appended, not yet durable: fed to arrival after the sync that covers them. */
  private unfed: RecordHeader[] = [];
  coordinator!: ApplyCoordinator;
  refusedFrames = 0;
  readonly recent = new RecentRecords(APPLY_CACHE_BYTES);
  /**
   * Highest seq the current session carried or resumed from: an ACK never reports more, since a
   * sync begun in an earlier session can complete after this session's RESUME, and the source
   * refuses an ACK beyond what it sent in this session.
   */
  sessionSeq = 0;
  syncing = false;
  syncTimer: NodeJS.Timeout | undefined;
  lastSyncMs = Number.NEGATIVE_INFINITY;
  /** Set once a takeover began: no more cycles are started for it. */
  takenOver = false;

  constructor(
    readonly cfg: GroupConfig,
    readonly journal: Journal,
    readonly receiver: GroupReceiver,
    readonly arrival: GroupArrival,
    readonly devices: ReadonlyMap<string, BlockDevice>,
    readonly zeroMaps: ReadonlyMap<string, ZeroMap>,
    readonly snapshots: ReadonlyMap<string, VolumeSnapshots>,
    readonly set: string,
    private readonly sendAck: (g: TargetGroup) => void,
  ) {}

  get name(): string {
    return this.cfg.name;
  }

  onApplied(): void {
    this.sendAck(this);
  }

  /** Room in the journal and the arrival window: a link paused for it may go on (sendAck resumes it). */
  onReleased(): void {
    this.sendAck(this);
  }

  queue(headers: readonly RecordHeader[]): void {
    this.unfed.push(...headers);
  }

  /**
   * Why arrival would refuse the records of a frame once they are durable, asked before any is
   * journalled (core/arrival.ts: check, then append): a record past the arrival window, a key at
   * or below what a tick promised, a duplicate (`headers` before `from`) that differs from the
   * record received under its seq. Records appended and not yet durable are unknown to arrival
   * until fed: a duplicate of one is compared with it here. Undefined when nothing is wrong.
   */
  problem(headers: readonly RecordHeader[], from: number): ArrivalError | undefined {
    for (let i = 0; i < headers.length; i++) {
      const h = headers[i]!;
      const pending = i < from ? this.unfedAt(h.seq) : undefined;
      if (pending !== undefined) {
        if (!sameRecord(pending, h)) {
          return { kind: 'conflict', detail: `seq ${h.seq} was received before as another record` };
        }
        continue;
      }
      const c = this.arrival.check(h);
      if (!c.ok) return c;
    }
    return undefined;
  }

  /**
   * Why a tick (every record after `afterSeq` has a key above `key`) contradicts a record received
   * and not yet durable, which arrival does not know yet; undefined when it does not.
   */
  tickProblem(afterSeq: number, key: OrderKey): string | undefined {
    const first = this.unfed[0];
    if (first === undefined) return undefined;
    // Keys rise with seq (the receiver checks): the first record after afterSeq has the lowest.
    const next = this.unfed[Math.max(0, afterSeq + 1 - first.seq)];
    if (next !== undefined && compareKeys(keyOf(next), key) <= 0) {
      return `tick after seq ${afterSeq} promises keys above one that seq ${next.seq} has`;
    }
    return undefined;
  }

  private unfedAt(s: number): RecordHeader | undefined {
    const first = this.unfed[0];
    const h = first === undefined ? undefined : this.unfed[s - first.seq];
    return h?.seq === s ? h : undefined;
  }

  /** Feeds arrival every queued record up to `durable` (in seq order). */
  feed(durable: Seq): void {
    let i = 0;
    for (; i < this.unfed.length && this.unfed[i]!.seq <= durable; i++) {
      const r = this.arrival.onRecord(this.unfed[i]!);
      if (!r.ok) throw new RemcopyError('RC_ERR_STATE', `${this.name}: arrival refused record: ${r.detail}`);
    }
    if (i > 0) this.unfed = this.unfed.slice(i);
  }
}

export class TargetReplicator {
  private readonly groups = new Map<string, TargetGroup>();
  /** Per segment of a set here (the set's groups from one source node), named by segmentName. */
  private readonly coordinators_ = new Map<string, ApplyCoordinator>();
  private readonly markers_ = new Map<string, SetMarkers>();
  /** Target volume name -> its snapshots (DESIGN.md §3.4). */
  private readonly snapshots_ = new Map<string, VolumeSnapshots>();
  private readonly paused = new Set<LinkSession>();
  private closing = false;

  private constructor(
    private readonly topo: Topology,
    private readonly cfg: NodeConfig,
    private readonly state: GroupStateStore,
    private readonly log: Log,
    private readonly zeroMaps: ReadonlyMap<string, ZeroMap>,
  ) {}

  /** Opens every incoming group's journal, rebuilds arrival and redoes an interrupted cycle. */
  static async open(
    topo: Topology,
    cfg: NodeConfig,
    state: GroupStateStore,
    devices: ReadonlyMap<string, BlockDevice>,
    log: Log,
    zeroMaps: ReadonlyMap<string, ZeroMap> = new Map(),
  ): Promise<TargetReplicator> {
    const t = new TargetReplicator(topo, cfg, state, log, zeroMaps);
    // Volumes of promoted groups keep their snapshots: exported, and preserved into before a write.
    const openSnapshots = (g: GroupConfig): void => {
      for (const dst of g.pairs.values()) {
        if (t.snapshots_.has(dst)) continue;
        t.snapshots_.set(dst, VolumeSnapshots.open(join(cfg.dataDir, 'snapshots', dst), devices.get(dst)!));
      }
    };
    const promotedHere = [...topo.groups.values()].filter(
      (g) => g.target === cfg.name && (state.get(g.name).role === 'promoted' || state.get(g.name).rollback),
    );
    try {
      for (const g of promotedHere) openSnapshots(g);
      await t.finishRollbacks(promotedHere);
    } catch (e) {
      await t.close();
      throw e;
    }
    const mine = [...topo.groups.values()].filter(
      (g) => g.target === cfg.name && state.get(g.name).role !== 'promoted',
    );
    const bySet = new Map<string, GroupConfig[]>();
    for (const g of mine) {
      const set = setOf(topo, g.name);
      bySet.set(set, [...(bySet.get(set) ?? []), g]);
    }
    try {
      for (const [set, groups] of bySet) {
        for (const g of groups) openSnapshots(g);
        const sources = [...new Set(groups.map((g) => g.source))];
        const segments: ApplyCoordinator[] = [];
        for (const source of sources) {
          const segment = sources.length === 1 ? set : `${set}+${source}`;
          const mine = groups.filter((g) => g.source === source);
          const file = applyStateFile(cfg.dataDir, segment);
          const saved = loadApplyState(
            file,
            mine.map((g) => g.name),
          );
          const members: TargetGroup[] = [];
          for (const g of mine) {
            const tg = await t.openGroup(
              g,
              set,
              devices,
              saved.state.seqApplied.get(g.name)!,
              saved.keyApplied.get(g.name),
            );
            members.push(tg);
            t.groups.set(g.name, tg);
          }
          const coord = new ApplyCoordinator(segment, file, members, saved, log);
          for (const tg of members) tg.coordinator = coord;
          t.coordinators_.set(segment, coord);
          segments.push(coord);
        }
        const opts = topo.setOptions.get(set) ?? { keepSnapshots: DEFAULT_KEEP_SNAPSHOTS, resume: 'auto' };
        const snaps = new Map(
          groups.flatMap((g) => [...g.pairs.values()].map((dst) => [dst, t.snapshots_.get(dst)!] as const)),
        );
        const markers = new SetMarkers(set, markersFile(cfg.dataDir, set), segments, snaps, opts, log);
        t.markers_.set(set, markers);
        for (const c of segments) {
          c.markers = markers;
          // Before the volumes are served: they show no cut until an interrupted cycle is redone.
          await c.redoInterrupted();
          c.kick();
        }
      }
    } catch (e) {
      await t.close();
      throw e;
    }
    return t;
  }

  private async openGroup(
    g: GroupConfig,
    set: string,
    devices: ReadonlyMap<string, BlockDevice>,
    seqApplied: Seq,
    keyApplied: OrderKey | undefined,
  ): Promise<TargetGroup> {
    const journal = await Journal.open({
      dir: join(this.cfg.dataDir, 'in', g.name),
      bytesMax: this.cfg.journal.bytesMax,
      segmentBytes: this.cfg.journal.segmentBytes,
      log: this.log,
    });
    if (journal.lastSeq(g.name) < seqApplied) {
      await journal.close();
      throw new RemcopyError(
        'RC_ERR_STATE',
        `${g.name}: the apply state says seq ${seqApplied} is applied but the target journal ends at ${journal.lastSeq(g.name)}`,
      );
    }
    if (journal.releasedSeq(g.name) < seqApplied) journal.release(g.name, seqApplied);
    // The window covers whatever the journal holds: records are checked against it before they
    // are journalled, but a journal written before that check may hold more.
    const arrival = new GroupArrival(
      g.name,
      {
        recordsHeldMax: Math.max(ARRIVAL_HELD_MAX, journal.lastSeq(g.name) - seqApplied),
        recordsPastGapMax: 1,
        ticksPendingMax: 16,
      },
      { seqReleased: seqApplied, keyReleased: keyApplied },
    );
    let keyLast = keyApplied;
    for (const { header } of journal.retained()) {
      if (header.group !== g.name || header.seq <= seqApplied) continue;
      const r = arrival.onRecord(header);
      if (!r.ok) throw new RemcopyError('RC_ERR_STATE', `${g.name}: journalled record refused: ${r.detail}`);
      keyLast = keyOf(header);
    }
    const receiver = new GroupReceiver(g.name, {
      epoch: this.state.epoch(g.name),
      seqLast: journal.lastSeq(g.name),
      keyLast,
    });
    const byVolume = new Map<string, BlockDevice>();
    const zeroMaps = new Map<string, ZeroMap>();
    const snapshots = new Map<string, VolumeSnapshots>();
    for (const [src, dst] of g.pairs) {
      byVolume.set(src, devices.get(dst)!);
      const z = this.zeroMaps.get(dst);
      if (z) zeroMaps.set(src, z);
      snapshots.set(src, this.snapshots_.get(dst)!);
    }
    return new TargetGroup(g, journal, receiver, arrival, byVolume, zeroMaps, snapshots, set, (tg) =>
      this.ack(tg),
    );
  }

  /** The gate readers of a target volume go through (undefined for a volume in no incoming group). */
  gateOf(group: string): ApplyCoordinator['gate'] | undefined {
    return this.groups.get(group)?.coordinator.gate;
  }

  /** A session from a peer became ready: resume each of the peer's groups that target this node. */
  attach(session: LinkSession): void {
    const peer = session.peerName;
    const theirs = [...this.topo.groups.values()].filter(
      (g) => g.source === peer && g.target === this.cfg.name,
    );
    if (theirs.length === 0) {
      session.close(`${this.cfg.name} is the target of no group of ${peer}`);
      return;
    }
    for (const g of theirs) {
      const epoch = this.state.epoch(g.name);
      if (this.state.get(g.name).role === 'promoted') {
        session.send({ type: FrameType.epoch, group: g.name, epoch });
        continue;
      }
      const tg = this.groups.get(g.name);
      if (!tg) continue;
      if (tg.session && tg.session !== session) tg.session.close('replaced by a new session', false);
      tg.session = session;
      tg.sessionSeq = tg.receiver.resumeSeq() - 1;
      session.send({
        type: FrameType.resume,
        group: g.name,
        epoch: tg.receiver.epoch,
        nextSeq: tg.receiver.resumeSeq(),
      });
      this.ack(tg);
    }
    this.log('info', 'link session from source', {
      peer,
      groups: theirs.map((g) => g.name),
      remote: session.remote,
    });
  }

  detach(session: LinkSession): void {
    this.paused.delete(session);
    for (const tg of this.groups.values()) if (tg.session === session) tg.session = undefined;
  }

  /** A frame on a ready session from a source. */
  onFrame(session: LinkSession, f: import('../../link/frames.js').Frame): void {
    switch (f.type) {
      case FrameType.records:
        return this.onRecords(session, f);
      case FrameType.tick:
        return this.onTick(session, f);
      case FrameType.pairState:
        return this.onPairState(session, f);
      case FrameType.epoch:
        // A source announcing its epoch: nothing to do unless it is higher (a later failback).
        return;
      default:
        session.close(`unexpected frame type ${f.type} from a source`);
    }
  }

  private groupFor(session: LinkSession, group: string): TargetGroup | undefined {
    const tg = this.groups.get(group);
    if (tg === undefined || tg.cfg.source !== session.peerName || tg.session !== session) {
      if (
        this.state.get(group).role === 'promoted' &&
        this.topo.groups.get(group)?.source === session.peerName
      ) {
        session.send({ type: FrameType.epoch, group, epoch: this.state.epoch(group) });
        return undefined;
      }
      this.refuse(
        session,
        undefined,
        `frame for group ${group}, which ${session.peerName} does not replicate to this node`,
      );
      return undefined;
    }
    return tg;
  }

  private refuse(session: LinkSession, tg: TargetGroup | undefined, reason: string): void {
    if (tg) tg.refusedFrames++;
    this.log('warn', 'link frame refused; nothing journalled', { peer: session.peerName, reason });
    session.close(reason);
  }

  private onRecords(session: LinkSession, f: RecordsFrame): void {
    const tg = this.groupFor(session, f.group);
    if (!tg) return;
    const headers = f.records.map((r) => r.header);
    const bad = headers.map((h) => this.recordProblem(tg, h)).find((p) => p !== undefined);
    if (bad !== undefined) return this.refuse(session, tg, `${f.group}: ${bad}`);
    const r = tg.receiver.accept(f.epoch, headers);
    if (r.kind === 'stale-epoch') {
      session.send({ type: FrameType.epoch, group: f.group, epoch: r.epoch });
      return;
    }
    if (r.kind === 'error') return this.refuse(session, tg, `${f.group}: ${r.detail}`);
    // Checked before anything is journalled: a record journalled that arrival then refuses
    // would stop the group for good, and stop the node at its next start.
    const p = tg.problem(headers, r.kind === 'append' ? r.from : headers.length);
    if (p?.kind === 'backpressure') {
      // Reading pauses well before the window is full (maybePause): a frame reaches it only if
      // it alone is larger than the margin. The source sends it again after reconnecting.
      this.log('warn', 'records past the arrival window: the source resends them later', {
        group: f.group,
        detail: p.detail,
      });
      session.close(`${f.group}: ${p.detail}`, true, 'RC_ERR_STATE');
      return;
    }
    if (p !== undefined) return this.refuse(session, tg, `${f.group}: ${p.detail}`);
    if (r.kind === 'duplicates') {
      tg.sessionSeq = Math.max(tg.sessionSeq, headers[headers.length - 1]!.seq);
      this.ack(tg);
      return;
    }
    const recs = f.records.slice(r.from);
    try {
      // Journalled as received: each record's bytes, checksum verified by the frame decoder.
      tg.journal.append(recs.map((x) => ({ header: x.header, payload: x.payload, encoded: x.bytes })));
    } catch (e) {
      const full = e instanceof RemcopyError && e.code === 'RC_ERR_JOURNAL_FULL';
      this.log(full ? 'warn' : 'error', 'target journal refused records; the source resends later', {
        group: f.group,
        error: String(e),
      });
      session.close(
        `${f.group}: target journal: ${String(e)}`,
        true,
        full ? 'RC_ERR_JOURNAL_FULL' : 'RC_ERR_JOURNAL_IO',
      );
      return;
    }
    for (const r of recs) tg.recent.add(r.header, r.payload);
    const last = recs[recs.length - 1]!.header;
    tg.receiver.appended(last);
    tg.sessionSeq = last.seq;
    tg.queue(recs.map((x) => x.header));
    this.makeDurable(tg);
    this.maybePause(session, tg);
  }

  /**
   * One journal sync at a time per group, started at most every TARGET_SYNC_INTERVAL_MS: it makes
   * every record appended before it durable, then arrival learns of them, the source gets an ACK
   * and the coordinator a kick. Back-to-back syncs would keep the disk in constant writeback.
   */
  private makeDurable(tg: TargetGroup): void {
    // A group taken over has its journal closed: nothing more to make durable.
    if (
      this.closing ||
      tg.takenOver ||
      tg.syncing ||
      tg.syncTimer ||
      tg.receiver.seqAppended <= tg.receiver.seqDurable
    )
      return;
    const wait = tg.lastSyncMs + TARGET_SYNC_INTERVAL_MS - performance.now();
    if (wait > 0) {
      tg.syncTimer = setTimeout(() => {
        tg.syncTimer = undefined;
        this.makeDurable(tg);
      }, wait);
      return;
    }
    tg.syncing = true;
    const upTo = tg.receiver.seqAppended;
    tg.journal.sync().then(
      () => {
        tg.syncing = false;
        tg.lastSyncMs = performance.now();
        tg.receiver.onDurable(upTo);
        try {
          tg.feed(tg.receiver.seqDurable);
        } catch (e) {
          this.log('error', 'arrival refused a durable record', { group: tg.name, error: String(e) });
          tg.session?.close(String(e));
          return;
        }
        this.ack(tg);
        if (!tg.takenOver) tg.coordinator.kick();
        this.makeDurable(tg);
      },
      (e) => {
        tg.syncing = false;
        this.log('error', 'target journal sync failed', { group: tg.name, error: String(e) });
        tg.session?.close('target journal sync failed', true, 'RC_ERR_JOURNAL_IO');
      },
    );
  }

  /** A data record must address a pair's volume within its size; markers carry no range. */
  private recordProblem(tg: TargetGroup, h: RecordHeader): string | undefined {
    if (h.kind === RecordKind.marker) return undefined;
    const dev = tg.devices.get(h.volume);
    if (dev === undefined)
      return `seq ${h.seq}: volume ${JSON.stringify(h.volume)} is not a pair of the group`;
    if (h.offset + h.length > dev.sizeBytes) {
      return `seq ${h.seq}: range ${h.offset}+${h.length} is past the end of the target volume (${dev.sizeBytes} bytes)`;
    }
    return undefined;
  }

  private onTick(session: LinkSession, f: TickFrame): void {
    const tg = this.groupFor(session, f.group);
    if (!tg) return;
    if (f.epoch < tg.receiver.epoch) {
      session.send({ type: FrameType.epoch, group: f.group, epoch: tg.receiver.epoch });
      return;
    }
    if (f.seq > tg.receiver.seqAppended) {
      return this.refuse(
        session,
        tg,
        `${f.group}: tick after seq ${f.seq}, only ${tg.receiver.seqAppended} received`,
      );
    }
    const contradiction = tg.tickProblem(f.seq, f.key);
    if (contradiction !== undefined) return this.refuse(session, tg, `${f.group}: ${contradiction}`);
    const r = tg.arrival.onTick(f.seq, f.key);
    if (!r.ok) {
      if (r.kind === 'backpressure') return;
      return this.refuse(session, tg, `${f.group}: tick refused: ${r.detail}`);
    }
    if (r.outcome === 'advanced') tg.coordinator.kick();
  }

  private onPairState(session: LinkSession, f: PairStateFrame): void {
    const tg = this.groupFor(session, f.group);
    if (!tg) return;
    const cur = this.state.get(f.group).announced;
    if (cur && cur.state === f.state && cur.copyEndSeq === f.copyEndSeq) return;
    // What the copy that ends at copyEndSeq was: the initial copy or a resync (for status).
    const after =
      f.state === 'copy' || f.state === 'resync'
        ? f.state
        : cur?.state === 'copy' || cur?.state === 'resync'
          ? cur.state
          : cur?.after;
    if (f.state === 'resync' && cur?.state !== 'resync') {
      this.log('warn', 'resync announced: the target image is not consistent until it completes', {
        group: f.group,
      });
    }
    this.state
      .update(f.group, { announced: { state: f.state, copyEndSeq: f.copyEndSeq, after } })
      .catch((e) => this.log('error', 'cannot persist the pair state', { group: f.group, error: String(e) }));
  }

  private ack(tg: TargetGroup): void {
    const s = tg.session;
    if (!s || !s.isReady) return;
    const durable = seq(Math.min(tg.receiver.seqDurable, tg.sessionSeq));
    const applied = tg.coordinator.seqApplied(tg.name);
    s.send({
      type: FrameType.ack,
      group: tg.name,
      epoch: tg.receiver.epoch,
      durableSeq: durable,
      appliedSeq: seq(Math.min(applied, durable)),
    });
    this.maybeResume();
  }

  private maybePause(session: LinkSession, tg: TargetGroup): void {
    const why = this.tooFarAhead(tg);
    if (why !== undefined && !this.paused.has(session)) {
      this.paused.add(session);
      session.pause();
      this.log('info', `${why}: pausing the link until apply catches up`, { group: tg.name });
    }
  }

  /**
   * Why the group's source should wait for apply: its target journal is filling up, or the records
   * not yet applied near the arrival window (arrival refuses records past it). Undefined if neither.
   */
  private tooFarAhead(tg: TargetGroup): string | undefined {
    const u = tg.journal.usage();
    if (u.usedBytes > JOURNAL_PAUSE_FRACTION * u.bytesMax) return 'target journal filling up';
    if (
      tg.receiver.seqAppended - tg.arrival.seqReleased >
      ARRIVAL_PAUSE_FRACTION * tg.arrival.limits.recordsHeldMax
    ) {
      return 'records waiting to be applied near the arrival window';
    }
    return undefined;
  }

  private maybeResume(): void {
    for (const session of this.paused) {
      const full = [...this.groups.values()].some(
        (tg) => tg.session === session && this.tooFarAhead(tg) !== undefined,
      );
      if (!full) {
        this.paused.delete(session);
        session.resume();
      }
    }
  }

  /**
   * Pair state as the source announced it: 'copy' or 'resync' until that copy is applied (the image
   * is not consistent), 'suspended' while the source tracks writes in its bitmap, else 'pair'.
   */
  private pairState(tg: TargetGroup): 'copy' | 'resync' | 'suspended' | 'pair' {
    const c = this.state.get(tg.name).announced;
    if (c === undefined) return 'copy';
    if (c.state !== 'pair') return c.state;
    if (tg.coordinator.seqApplied(tg.name) < c.copyEndSeq) return c.after ?? 'copy';
    return 'pair';
  }

  /** Why the group's target image cannot be read as consistent now, or undefined when it can. */
  halfSynced(group: string): string | undefined {
    const tg = this.groups.get(group);
    if (tg === undefined || this.pairState(tg) !== 'resync') return undefined;
    return `${group} is resyncing: its target image is half-synced until the resync completes`;
  }

  status(): TargetGroupStatus[] {
    const out: TargetGroupStatus[] = [];
    for (const g of this.topo.groups.values()) {
      if (g.target !== this.cfg.name) continue;
      const tg = this.groups.get(g.name);
      const st = this.state.get(g.name);
      if (!tg) {
        out.push({
          name: g.name,
          role: 'promoted',
          state: 'takeover',
          epoch: st.epoch,
          source: g.source,
          set: setOf(this.topo, g.name),
          linkUp: false,
          seqArrived: 0,
          seqApplied: 0,
          recordsUnapplied: 0,
          journal: { usedBytes: 0, bytesMax: 0, segments: 0, records: 0 },
          cut: undefined,
          copyEndSeq: st.announced?.copyEndSeq ?? 0,
          refusedFrames: 0,
        });
        continue;
      }
      const applied = tg.coordinator.seqApplied(g.name);
      out.push({
        name: g.name,
        role: 'target',
        state: this.pairState(tg),
        epoch: tg.receiver.epoch,
        source: g.source,
        set: tg.set,
        linkUp: tg.session?.isReady === true,
        seqArrived: tg.arrival.seqContiguous,
        seqApplied: applied,
        recordsUnapplied: tg.arrival.seqContiguous - applied,
        journal: tg.journal.usage(),
        cut: tg.coordinator.cutCompleted,
        copyEndSeq: this.state.get(g.name).announced?.copyEndSeq ?? 0,
        refusedFrames: tg.refusedFrames,
      });
    }
    return out;
  }

  coordinators(): ReadonlyMap<string, ApplyCoordinator> {
    return this.coordinators_;
  }

  /** The marker state of each set this node is a target of. */
  markers(): ReadonlyMap<string, SetMarkers> {
    return this.markers_;
  }

  /** The snapshots of a target volume (undefined for a volume that is not one). */
  snapshotsOf(volume: string): VolumeSnapshots | undefined {
    return this.snapshots_.get(volume);
  }

  coordinatorOf(group: string): ApplyCoordinator | undefined {
    return this.groups.get(group)?.coordinator;
  }

  isCopying(group: string): boolean {
    const tg = this.groups.get(group);
    return tg !== undefined && this.pairState(tg) === 'copy';
  }

  /**
   * Takeover of `groups` (DESIGN.md §3.7): stop taking records for them, apply every cut that can
   * complete, then bump each group's epoch durably and hand them back (the caller makes the
   * volumes writable). All groups end at one completed cut when they share a set.
   */
  async takeover(names: readonly string[], force: boolean): Promise<TakeoverResult[]> {
    const tgs = names.map((n) => {
      const tg = this.groups.get(n);
      if (!tg)
        throw new RemcopyError(
          'RC_ERR_STATE',
          `${n} is not a group this node is the target of (taken over already?)`,
        );
      return tg;
    });
    const copying = tgs.filter((tg) => this.pairState(tg) === 'copy').map((tg) => tg.name);
    if (copying.length > 0 && !force) {
      throw new RemcopyError(
        'RC_ERR_STATE',
        `${copying.join(', ')}: the initial copy has not completed, the target image is not consistent (use --force to take over anyway)`,
      );
    }
    const resyncing = tgs.filter((tg) => this.pairState(tg) === 'resync').map((tg) => tg.name);
    if (resyncing.length > 0 && !force) {
      throw new RemcopyError(
        'RC_ERR_STATE',
        `${resyncing.join(', ')}: a resync is running, the target image is half-synced (use --force to take over anyway)`,
      );
    }
    this.leave(tgs);
    const coords = new Set(tgs.map((tg) => tg.coordinator));
    for (const c of coords) await c.finish();
    // Groups of one set leave it together, at the cut the last finish() completed.
    const ends = [];
    for (const tg of tgs) ends.push({ tg, ...(await tg.coordinator.remove(tg.name)) });
    const out = [];
    for (const { tg, seqApplied, cut } of ends) {
      // DESIGN.md §3.7: the promoted side starts a dirty bitmap. Records that arrived beyond the
      // cut are written at the old source and not here: their chunks differ from the start.
      const bitmaps = bitmapsOn(this.cfg, tg.cfg);
      await bitmaps.markJournalled(tg.journal, tg.name, seqApplied, (v) => tg.cfg.pairs.get(v));
      const epoch = tg.receiver.epoch + 1;
      tg.receiver.setEpoch(epoch);
      await this.state.update(tg.name, {
        epoch,
        role: 'promoted',
        reason: `takeover at ${new Date().toISOString()}`,
        takeoverSeq: seqApplied,
        takeoverMarker: undefined,
      });
      await tg.journal.close();
      out.push({ group: tg.name, epoch, seqApplied, cut, bitmaps });
    }
    return out;
  }

  /**
   * Takeover of every group of `set` this node is the target of, at snapshot `marker` (a set whose
   * groups span nodes: the snapshots of one marker are the only image all its nodes agree on).
   *
   *   stop taking records and applying --> dirty bits, durable: the chunks written since the
   *   snapshot and the records journalled beyond the marker (the old source has them, this image
   *   will not) --> persist the intent {marker, seq, epoch} --> each volume back to the snapshot
   *   (VolumeSnapshots.restore) --> promoted at the new epoch, takeoverSeq = the marker's seq.
   *
   * A crash after the intent is persisted is finished at the next open, before anything uses the
   * volumes (finishRollbacks). Snapshot `marker` stays, and a promoted volume's writes preserve
   * into it, so `VOLUME@marker` keeps showing the image the takeover started from.
   */
  async takeoverAtSnapshot(set: string, marker: number): Promise<TakeoverResult[]> {
    const markers = this.markers_.get(set);
    const tgs = [...this.groups.values()].filter((tg) => tg.set === set);
    if (markers === undefined || tgs.length === 0) {
      throw new RemcopyError(
        'RC_ERR_STATE',
        `${this.cfg.name} is the target of no group of set ${set} (taken over already?)`,
      );
    }
    const h = markers.historyOf(marker);
    if (h?.outcome !== 'snapshot') {
      const have = markers
        .status()
        .history.filter((x) => x.outcome === 'snapshot')
        .map((x) => x.marker);
      throw new RemcopyError(
        'RC_ERR_STATE',
        `${set}: no snapshot ${marker} on ${this.cfg.name} (snapshots taken here: ${have.join(', ') || 'none'})`,
      );
    }
    const seqs = h.seqs ?? {};
    const unknown = tgs.filter((tg) => seqs[tg.name] === undefined).map((tg) => tg.name);
    if (unknown.length > 0) {
      throw new RemcopyError(
        'RC_ERR_STATE',
        `${set}: snapshot ${marker} does not record where ${unknown.join(', ')} stood (taken by an older version); take over at a newer one`,
      );
    }
    const volumes = tgs.flatMap((tg) => [...tg.cfg.pairs.values()]);
    const missing = volumes.filter((v) => !this.snapshots_.get(v)?.has(marker));
    if (missing.length > 0) {
      throw new RemcopyError(
        'RC_ERR_STATE',
        `${set}: snapshot ${marker} of ${missing.join(', ')} is gone (deleted); take over at one every volume keeps`,
      );
    }
    this.leave(tgs);
    await markers.close();
    this.markers_.delete(set);
    for (const c of new Set(tgs.map((tg) => tg.coordinator))) {
      await c.stop();
      for (const [name, x] of this.coordinators_) if (x === c) this.coordinators_.delete(name);
    }
    const out: TakeoverResult[] = [];
    for (const tg of tgs) {
      const seqAt = seqs[tg.name]!;
      const bitmaps = bitmapsOn(this.cfg, tg.cfg);
      const changed = [...tg.cfg.pairs.values()].flatMap((v) =>
        this.snapshots_
          .get(v)!
          .changedSince(marker)
          .map((r) => ({ volume: v, ...r })),
      );
      // Records applied past the marker were released from the journal: their chunks are among
      // `changed`. The ones still journalled past it were not applied, or applied and kept.
      await bitmaps.markJournalled(tg.journal, tg.name, seqAt, (v) => tg.cfg.pairs.get(v), changed);
      const epoch = tg.receiver.epoch + 1;
      tg.receiver.setEpoch(epoch);
      await this.state.update(tg.name, { rollback: { marker, seq: seqAt, epoch } });
      await tg.journal.close();
      out.push({ group: tg.name, epoch, seqApplied: seqAt, cut: undefined, bitmaps, snapshot: marker });
    }
    failpoint('takeover:rollback-intent');
    await this.finishRollbacks(tgs.map((tg) => tg.cfg));
    return out;
  }

  /**
   * Groups with a rollback intent (takeoverAtSnapshot): put their volumes back to the snapshot
   * (repeatable, see VolumeSnapshots.restore) and promote them.
   */
  private async finishRollbacks(groups: readonly GroupConfig[]): Promise<void> {
    for (const g of groups) {
      const rb = this.state.get(g.name).rollback;
      if (rb === undefined) continue;
      for (const dst of g.pairs.values()) {
        const ranges = await this.snapshots_.get(dst)!.restore(rb.marker);
        const bytes = ranges.reduce((a, r) => a + r.length, 0);
        this.log('warn', 'takeover at a snapshot: volume put back', {
          volume: dst,
          marker: rb.marker,
          bytes,
        });
      }
      await this.state.update(g.name, {
        epoch: rb.epoch,
        role: 'promoted',
        reason: `takeover at snapshot ${rb.marker} at ${new Date().toISOString()}`,
        takeoverSeq: rb.seq,
        takeoverMarker: rb.marker,
        rollback: undefined,
      });
    }
  }

  /** Takeover: the groups take no more records (their sessions close) and leave this target side. */
  private leave(tgs: readonly TargetGroup[]): void {
    for (const tg of tgs) {
      tg.takenOver = true;
      clearTimeout(tg.syncTimer);
      tg.syncTimer = undefined;
      tg.session?.close('takeover at the target', true, 'RC_ERR_FENCED');
      tg.session = undefined;
      this.groups.delete(tg.name);
    }
  }

  async close(): Promise<void> {
    this.closing = true;
    for (const m of this.markers_.values()) await m.close();
    for (const c of this.coordinators_.values()) await c.stop();
    for (const s of this.snapshots_.values()) await s.close().catch(() => {});
    for (const tg of this.groups.values()) {
      clearTimeout(tg.syncTimer);
      tg.session?.close('node stopping', true, 'RC_ERR_SHUTDOWN');
      await tg.journal.close().catch(() => {});
    }
  }
}

export interface TakeoverResult {
  readonly group: string;
  readonly epoch: number;
  /** The seq the promoted image holds every record up to (takeoverSeq). */
  readonly seqApplied: number;
  readonly cut: OrderKey | undefined;
  readonly bitmaps: GroupBitmaps;
  /** A takeover at a snapshot: its marker number. */
  readonly snapshot?: number;
}

/** The consistency set of a group; a group in no set forms a set of its own, named after it. */
export function setOf(topo: Topology, group: string): string {
  return consistencySetOf(topo, group) ?? group;
}

function positiveInteger(raw: string | undefined): number | undefined {
  const n = Number(raw);
  return raw !== undefined && Number.isSafeInteger(n) && n > 0 ? n : undefined;
}
