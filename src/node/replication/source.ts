/**
 * The source side of a node (DESIGN.md §3.2, §3.5 push, §3.6 initial copy, §3.7 epochs): per
 * target node a link session that it dials (reconnecting with backoff), per group a GroupSender
 * (src/core/sender.ts) that ships journal records in a bounded window, ticks when idle, and
 * releases records only after the target reported them durable.
 *
 *   write path appends --> onAppended --> journal.sync (group commit) --> durable seq per group
 *        --> pump: RECORDS from seqSent+1 up to the durable seq, while the window has room
 *   ACK(durable, applied) --> sender.onAck --> release (volumes synced, then journal.release)
 *   idle group --> TICK(seqLast, node's latest key)
 *   EPOCH(higher) --> fenced: the group's volumes turn read-only, shipping stops, persisted
 *
 * Only records durable in this node's journal are shipped: a record that a power loss could take
 * back must never reach a target, or the seq would be reused for a different write.
 *
 * Suspension and delta resync (DESIGN.md §3.6, issue 4), per group:
 *   suspend (operator, link down for suspendAfter, journal full under policy `suspend`)
 *     --> write path tracks the group's writes in its dirty bitmap (not journalled, no seq)
 *     --> volumes and journal synced, {suspended, redoFloor} persisted --> tracked writes go on
 *     --> nothing of the group is shipped or ticked; records already journalled stay
 *   resume --> tracked writes settled, volumes synced --> {resync} persisted --> shipping goes on
 *     --> every dirty chunk journalled as a copy record (it takes a seq, so it cannot overwrite a
 *         newer write at the target) --> {pair, resyncEndSeq} --> bits cleared as ACKs cover them
 */
import * as fs from 'node:fs';
import { setImmediate as nextTurn, setTimeout as sleep } from 'node:timers/promises';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { RemcopyError } from '../../core/errors.js';
import { LagTracker } from '../../core/lag.js';
import type { Sequencer } from '../../core/sequencer.js';
import { GroupSender, SENDER_LIMITS_DEFAULT } from '../../core/sender.js';
import type { OrderKey, Seq } from '../../core/types.js';
import { kindCarriesData, seq } from '../../core/types.js';
import type { Frame } from '../../link/frames.js';
import { FrameType, LINK_BATCH_RECORDS_MAX } from '../../link/frames.js';
import { LinkSession } from '../../link/session.js';
import type { BlockDevice } from '../../storage/blockdev.js';
import type { Journal } from '../../storage/journal.js';
import type { GroupConfig, NodeConfig, Topology } from '../config.js';
import { consistencySetOf } from '../config.js';
import { nowUs } from '../clock.js';
import type { Log } from '../log.js';
import type { WritePath } from '../write-path.js';
import type { AppendedRecord, TrackPort } from '../write-path.js';
import type { GroupBitmaps } from './bitmaps.js';
import { bitmapsOn } from './bitmaps.js';
import type { DeltaState, GroupStateStore } from './group-state.js';
import { RecentRecords } from './recent.js';
import type { ZeroMap } from './zero-map.js';

export interface LinkTiming {
  readonly heartbeatMs: number;
  readonly timeoutMs: number;
  readonly reconnectMinMs: number;
  readonly reconnectMaxMs: number;
}

export const LINK_TIMING_DEFAULT: LinkTiming = {
  heartbeatMs: 500,
  timeoutMs: 3000,
  reconnectMinMs: 100,
  reconnectMaxMs: 5000,
};

/**
 * Journal syncs for shipping start at most this often. Back-to-back fdatasyncs of the journal
 * stall its appends (the tail page is under writeback), so a few ms of lag buy host throughput.
 */
const SHIP_SYNC_INTERVAL_MS = Number(process.env.REMCOPY_SHIP_SYNC_MS ?? 10);
/**
 * Acknowledged records are released this long after an ACK: a release syncs the group's volumes
 * first (the journal is their redo log), and a volume under constant writeback slows the host
 * writes into it several times over. When the journal is fuller than RELEASE_URGENT_FRACTION, they
 * are released after RELEASE_URGENT_DELAY_MS instead.
 */
const RELEASE_DELAY_MS = 1000;
const RELEASE_URGENT_DELAY_MS = 20;
const RELEASE_URGENT_FRACTION = 0.25;
/** Bytes of records per group kept in memory for shipping (see recent.ts). */
const SHIP_CACHE_BYTES = 64 * 1024 * 1024;
/**
 * Initial copy: bytes per copy record. Each is read on the thread pool, but checksummed and
 * appended on the event loop, where host requests wait meanwhile: with 1 MiB records, fio's QD1
 * writes during the copy of a populated 2 GiB volume took 1.2-2.2 ms (p50) and 340-440 writes/s,
 * with 256 KiB 0.5 ms and 1 040-1 170/s. The copy took 25% longer than with 1 MiB records on the
 * pool, and as long as with the synchronous 1 MiB reads before (README, Benchmarks).
 */
export const COPY_CHUNK_BYTES = 256 * 1024;
/** Initial copy waits while the journal is fuller than this fraction (host writes come first). */
const COPY_JOURNAL_FRACTION_MAX = 0.5;
/** Initial copy progress is persisted at least this often. */
const COPY_PERSIST_MS = 1000;
/** Cleared dirty bits are persisted at most this often (a bit found set again costs one chunk). */
const BITMAP_CLEAR_PERSIST_MS = 200;

export type SourcePairState = 'copy' | 'pair' | 'suspended' | 'resync' | 'fenced';

export interface ResyncProgress {
  readonly bytesDone: number;
  readonly bytesTotal: number;
  readonly rateBytesPerSec: number;
  readonly etaSeconds: number | undefined;
}

export interface SourceGroupStatus {
  readonly name: string;
  readonly role: 'source';
  readonly state: SourcePairState;
  readonly reason?: string;
  /** Bytes of the source volumes the dirty bitmaps mark (what a resync would copy). */
  readonly dirtyBytes: number;
  readonly resync?: ResyncProgress;
  readonly epoch: number;
  readonly target: string;
  readonly linkUp: boolean;
  readonly sender: string;
  readonly seqWritten: number;
  readonly seqDurable: number;
  readonly seqSent: number;
  readonly seqArrived: number;
  readonly seqApplied: number;
  readonly lagRecords: number;
  readonly lagBytes: number;
  readonly lagMs: number;
  readonly copy?: { readonly bytesDone: number; readonly bytesTotal: number; readonly copyEndSeq: number };
  readonly rttMs: number;
  readonly lastError?: string;
}

/** A wall-clock time (ms since the epoch) on the performance.now() clock lag figures use. */
function monotonicOf(wallMs: number): number {
  return performance.now() - (Date.now() - wallMs);
}

/** The inverse of monotonicOf. */
function wallOf(monotonicMs: number): number {
  return Date.now() - (performance.now() - monotonicMs);
}

/**
 * When the target began to lack writes that no record carries, as far as the persisted pair state
 * tells after a restart (no later than the truth): suspended (bits cleared by copies the target
 * has not applied yet still leave it behind), resyncing, or a resync not yet applied. undefined
 * when the pair was in `pair` with its last resync released.
 */
function behindSinceAtStart(delta: DeltaState | undefined, released: number): number | undefined {
  if (delta === undefined || (delta.state === 'pair' && delta.resyncEndSeq <= released)) return undefined;
  return monotonicOf(Date.parse(delta.behindSince ?? delta.since));
}

class SourceGroup {
  readonly sender: GroupSender;
  seqDurable: number;
  seqApplied = 0;
  readonly lag: LagTracker;
  releaseTimer: NodeJS.Timeout | undefined;
  releasing: Promise<void> | undefined;
  lastError: string | undefined;
  /** Records appended and not yet acknowledged, kept to ship without reading the journal. */
  readonly recent = new RecentRecords(SHIP_CACHE_BYTES);
  /** Writes are tracked in the bitmaps, nothing is shipped (suspended). */
  suspended = false;
  resyncing: Promise<void> | undefined;
  /** Bumped by every resume: a pass of an earlier resume stops (it may have missed new bits). */
  resyncPass = 0;
  resyncStartedMs = 0;
  /** Bytes journalled as resync copy records since the start (metric). */
  resyncBytesTotal = 0;
  clearPersistTimer: NodeJS.Timeout | undefined;
  /** What the write path marks a tracked write's chunks in (and tells its arrival to). */
  readonly trackPort: TrackPort;

  constructor(
    readonly cfg: GroupConfig,
    readonly devices: readonly { readonly name: string; readonly device: BlockDevice }[],
    journal: Journal,
    epoch: number,
    readonly bitmaps: GroupBitmaps,
    delta: DeltaState | undefined,
  ) {
    const released = journal.releasedSeq(cfg.name);
    this.sender = new GroupSender(
      cfg.name,
      { ...SENDER_LIMITS_DEFAULT, tickMs: cfg.tickMs },
      released,
      epoch,
    );
    this.seqDurable = released;
    // Records recovered from the journal count from their segment file's birth: their own
    // arrival is not kept (lag is never reported below the truth).
    const retainedSince = journal.retainedSinceMs(cfg.name);
    this.lag = new LagTracker({
      releasedSeq: released,
      retained:
        retainedSince === undefined
          ? undefined
          : {
              lastSeq: journal.lastSeq(cfg.name),
              bytes: journal.retainedBytes(cfg.name),
              sinceMs: monotonicOf(retainedSince),
            },
      behindSinceMs: behindSinceAtStart(delta, released),
    });
    this.trackPort = {
      mark: (volume, offset, length) => bitmaps.mark(volume, offset, length),
      tracking: (arrivedMs) => this.lag.tracked(arrivedMs),
    };
  }

  /** When the first write the target lacks that no record carries arrived, on the wall clock. */
  behindSinceWall(): string | undefined {
    const since = this.lag.behindSinceMs;
    return since === undefined ? undefined : new Date(wallOf(since)).toISOString();
  }

  get name(): string {
    return this.cfg.name;
  }

  noteApplied(applied: number): void {
    if (applied <= this.seqApplied) return;
    this.seqApplied = applied;
    this.lag.applied(applied);
  }
}

class TargetPeer {
  session: LinkSession | undefined;
  private backoffMs: number;
  private timer: NodeJS.Timeout | undefined;
  private tickTimer: NodeJS.Timeout | undefined;
  private pumping = false;
  private pumpAgain = false;
  closed = false;
  lastError: string | undefined;
  /** When the session went down (or the peer was created); undefined while it is up. */
  downSinceMs: number | undefined = performance.now();

  constructor(
    readonly target: NodeConfig,
    readonly groups: readonly SourceGroup[],
    private readonly owner: SourceReplicator,
  ) {
    this.backoffMs = owner.timing.reconnectMinMs;
    const tickMs = Math.max(10, Math.min(...groups.map((g) => g.cfg.tickMs)) / 2);
    this.tickTimer = setInterval(() => this.tick(), tickMs);
    this.tickTimer.unref();
  }

  start(): void {
    this.dial();
  }

  private dial(): void {
    if (this.closed) return;
    const { host, port } = this.target.link;
    const o = this.owner;
    const socket = o.tlsFor(this.target)
      ? tls.connect({ host, port, ...o.tlsFor(this.target)! })
      : net.connect({ host, port });
    let opened = false;
    const onOpen = (): void => {
      opened = true;
      socket.off('error', onEarlyError);
      const session = new LinkSession(
        socket,
        {
          selfName: o.cfg.name,
          secret: o.topo.secret,
          groups: this.groups.map((g) => g.name),
          knownPeer: (n) => n === this.target.name,
          expectPeer: this.target.name,
          heartbeatMs: o.timing.heartbeatMs,
          timeoutMs: o.timing.timeoutMs,
          nowUs,
        },
        {
          ready: (s) => this.onReady(s),
          frame: (f, s) => this.onFrame(f, s),
          closed: (reason, s) => this.onClosed(reason, s),
        },
      );
      this.session = session;
    };
    const onEarlyError = (e: Error): void => {
      if (opened) return;
      this.lastError = `connect to ${this.target.name} (${host}:${port}): ${e.message}`;
      socket.destroy();
      this.retryLater();
    };
    socket.once(o.tlsFor(this.target) ? 'secureConnect' : 'connect', onOpen);
    socket.once('error', onEarlyError);
  }

  private retryLater(): void {
    if (this.closed) return;
    const wait = this.backoffMs;
    this.backoffMs = Math.min(this.owner.timing.reconnectMaxMs, this.backoffMs * 2);
    this.timer = setTimeout(() => this.dial(), wait);
    this.timer.unref();
  }

  private onReady(_s: LinkSession): void {
    this.backoffMs = this.owner.timing.reconnectMinMs;
    this.lastError = undefined;
    this.owner.log('info', 'link up', { target: this.target.name, groups: this.groups.map((g) => g.name) });
    this.downSinceMs = undefined;
    for (const g of this.groups) {
      g.sender.connected();
      if (g.sender.state === 'fenced') continue;
      this.announce(g);
    }
  }

  /** Tells the target the group's pair state (PAIR_STATE), when the session is up. */
  announce(g: SourceGroup): void {
    const s = this.session;
    if (!s || !s.isReady || g.sender.state === 'fenced') return;
    const st = this.owner.state.get(g.name);
    const delta = st.delta;
    const state = st.copy?.state === 'copy' ? 'copy' : delta && delta.state !== 'pair' ? delta.state : 'pair';
    const copyEndSeq = Math.max(st.copy?.copyEndSeq ?? 0, delta?.resyncEndSeq ?? 0);
    s.send({
      type: FrameType.pairState,
      group: g.name,
      epoch: g.sender.epoch,
      state,
      copyEndSeq: seq(copyEndSeq),
    });
  }

  private onClosed(reason: string, s: LinkSession): void {
    if (this.session !== s) return;
    this.session = undefined;
    this.downSinceMs = performance.now();
    for (const g of this.groups) g.sender.disconnected();
    this.lastError = reason;
    this.owner.log(this.closed ? 'info' : 'warn', 'link down', { target: this.target.name, reason });
    this.retryLater();
  }

  private onFrame(f: Frame, s: LinkSession): void {
    if (!('group' in f)) {
      s.close(`unexpected frame type ${f.type} from a target`);
      return;
    }
    const g = this.groups.find((x) => x.name === f.group);
    if (g === undefined) {
      s.close(`frame for group ${f.group}, which this node does not replicate to ${this.target.name}`);
      return;
    }
    const j = this.owner.journal;
    switch (f.type) {
      case FrameType.resume: {
        if (f.nextSeq - 1 < g.sender.seqAcked) {
          this.owner.log('warn', 'target lost records it had reported durable; sending them again', {
            group: g.name,
            reportedDurable: g.sender.seqAcked,
            nextSeq: f.nextSeq,
          });
        }
        const r = g.sender.onResume(f.nextSeq, {
          seqReleased: j.releasedSeq(g.name),
          seqLast: j.lastSeq(g.name),
        });
        if (!r.ok) {
          g.lastError = r.detail;
          this.owner.log('error', 'cannot resume replication of the group', {
            group: g.name,
            reason: r.detail,
          });
          s.close(r.detail, true, r.kind === 'protocol' ? 'RC_ERR_PROTOCOL' : 'RC_ERR_RESUME');
          return;
        }
        g.lastError = undefined;
        this.pump();
        return;
      }
      case FrameType.ack: {
        const r = g.sender.onAck(f.durableSeq);
        if (!r.ok) {
          this.owner.log('warn', 'bad ACK from target', { group: g.name, reason: r.detail });
          s.close(r.detail);
          return;
        }
        g.noteApplied(f.appliedSeq);
        if (r.advanced) {
          g.recent.dropUpTo(g.sender.seqAcked);
          this.owner.scheduleRelease(g);
          if (g.bitmaps.tracker.acked(g.sender.seqAcked) > 0) this.owner.persistClears(g);
        }
        this.pump();
        return;
      }
      case FrameType.epoch:
        if (g.sender.onEpoch(f.epoch)) {
          this.owner.fence(g, f.epoch, this.target.name).catch((e) =>
            this.owner.log(
              'error',
              'cannot persist the fencing epoch; volumes stay read-only until restart',
              {
                group: g.name,
                error: String(e),
              },
            ),
          );
        }
        return;
      default:
        s.close(`unexpected frame type ${f.type} from a target`);
    }
  }

  /** Sends what the windows allow; re-runs when asked during a run. */
  pump(): void {
    if (this.pumping) {
      this.pumpAgain = true;
      return;
    }
    this.pumping = true;
    this.pumpLoop()
      .catch((e) => {
        // A journal read failed: drop the session; the next one resumes from the target's word.
        this.owner.log('error', 'sending records failed', { target: this.target.name, error: String(e) });
        this.session?.close(`source cannot read its journal: ${String(e)}`, true, 'RC_ERR_JOURNAL_IO');
      })
      .finally(() => (this.pumping = false));
  }

  private async pumpLoop(): Promise<void> {
    const j = this.owner.journal;
    do {
      this.pumpAgain = false;
      for (const g of this.groups) {
        if (g.suspended) continue;
        for (;;) {
          const s = this.session;
          if (!s || !s.isReady) return;
          if (s.congested) {
            await s.whenWritable();
            this.pumpAgain = true;
            break;
          }
          const w = g.sender.want({ seqReleased: j.releasedSeq(g.name), seqLast: seq(g.seqDurable) });
          if (!w) break;
          let recs = g.recent.take(w.fromSeq, g.seqDurable, w.maxBytes, LINK_BATCH_RECORDS_MAX);
          if (recs.length === 0) {
            recs = j
              .readRetained(g.name, w.fromSeq, w.maxBytes)
              .filter((r) => r.header.seq <= g.seqDurable)
              .slice(0, LINK_BATCH_RECORDS_MAX);
          }
          if (recs.length === 0) break;
          s.send({ type: FrameType.records, group: g.name, epoch: g.sender.epoch, records: recs });
          let bytes = 0;
          for (const r of recs) bytes += r.payload.length + 128;
          g.sender.onSent(recs[recs.length - 1]!.header.seq, bytes, performance.now());
        }
      }
    } while (this.pumpAgain);
  }

  private tick(): void {
    const s = this.session;
    const now = performance.now();
    if (!s || !s.isReady) {
      this.suspendIfDownTooLong(now);
      return;
    }
    const j = this.owner.journal;
    for (const g of this.groups) {
      if (g.suspended) continue;
      // Everything durable of the group is sent: promise that no key at or below the latest
      // durable key of the node follows. Not the latest assigned key: a power loss can take back
      // records that are not durable, and the restarted sequencer reuses their keys (found by the
      // simulator: seed 13 of --bug tick-from-last-key).
      const key = this.owner.durableKey;
      if (key === undefined) continue;
      if (!g.sender.tickDue({ seqReleased: j.releasedSeq(g.name), seqLast: seq(g.seqDurable) }, now))
        continue;
      s.send({ type: FrameType.tick, group: g.name, epoch: g.sender.epoch, seq: g.sender.seqSent, key });
      g.sender.onTickSent(now);
    }
  }

  /** A link down longer than a group's suspendAfter suspends the group (its writes go to the bitmap). */
  private suspendIfDownTooLong(now: number): void {
    if (this.downSinceMs === undefined || this.closed) return;
    const downMs = now - this.downSinceMs;
    for (const g of this.groups) {
      if (downMs < g.cfg.suspendAfterMs || !this.owner.canSuspend(g)) continue;
      const reason = `link to ${this.target.name} down for ${Math.round(downMs / 1000)} s`;
      this.owner
        .suspendGroup(g, reason)
        .catch((e) =>
          this.owner.log('error', 'automatic suspension failed', { group: g.name, error: String(e) }),
        );
    }
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    clearInterval(this.tickTimer);
    this.session?.close('node stopping', true, 'RC_ERR_SHUTDOWN');
  }
}

export interface SourceOptions {
  readonly topo: Topology;
  readonly cfg: NodeConfig;
  readonly journal: Journal;
  readonly writePath: WritePath;
  readonly sequencer: Sequencer;
  readonly state: GroupStateStore;
  readonly devices: ReadonlyMap<string, BlockDevice>;
  readonly log: Log;
  readonly timing?: LinkTiming;
  /** The group was fenced by a higher epoch: make its volumes read-only. */
  readonly onFenced: (group: string) => void;
  /** Volumes this process created (known zero until written): the initial copy need not read them. */
  readonly zeroMaps?: ReadonlyMap<string, ZeroMap>;
  /** Bitmaps of a group already open on this node (a promoted group becoming a source: failback). */
  readonly bitmapsOf?: (group: string) => GroupBitmaps | undefined;
}

export class SourceReplicator {
  readonly topo: Topology;
  readonly cfg: NodeConfig;
  readonly journal: Journal;
  readonly sequencer: Sequencer;
  readonly state: GroupStateStore;
  readonly log: Log;
  readonly timing: LinkTiming;
  private readonly groups = new Map<string, SourceGroup>();
  private readonly peers: TargetPeer[] = [];
  private syncing = false;
  private closed = false;
  private syncTimer: NodeJS.Timeout | undefined;
  private lastSyncMs = Number.NEGATIVE_INFINITY;
  /** Key of the latest record known durable in the journal (any group); ticks carry it. */
  durableKey: OrderKey | undefined;
  private readonly copies: Promise<void>[] = [];

  constructor(private readonly o: SourceOptions) {
    this.topo = o.topo;
    this.cfg = o.cfg;
    this.journal = o.journal;
    this.sequencer = o.sequencer;
    this.state = o.state;
    this.log = o.log;
    this.timing = o.timing ?? LINK_TIMING_DEFAULT;
    const byTarget = new Map<string, SourceGroup[]>();
    for (const g of o.topo.groups.values()) {
      if (g.source !== o.cfg.name) continue;
      const st = o.state.get(g.name);
      if (st.role !== undefined) continue;
      const devices = [...g.pairs.keys()].map((name) => ({ name, device: o.devices.get(name)! }));
      const bitmaps = o.bitmapsOf?.(g.name) ?? bitmapsOn(o.cfg, g);
      const sg = new SourceGroup(g, devices, o.journal, st.epoch, bitmaps, st.delta);
      if (st.delta?.state === 'suspended') {
        // Before any front end listens: the group's writes go to the bitmap from the first one.
        sg.suspended = true;
        // (Tracked already when the node turned other groups around: same bitmaps, see bitmapsOf.)
        if (!o.writePath.isTracked(g.name)) o.writePath.track(g.name, sg.trackPort, Promise.resolve());
      }
      this.groups.set(g.name, sg);
      byTarget.set(g.target, [...(byTarget.get(g.target) ?? []), sg]);
    }
    for (const [target, groups] of byTarget) {
      this.peers.push(new TargetPeer(o.topo.nodes.get(target)!, groups, this));
    }
  }

  /** TLS options for dialling `target`, or undefined for plain TCP. */
  tlsFor(target: NodeConfig): tls.ConnectionOptions | undefined {
    if (!target.tls) return undefined;
    const caFile = this.cfg.tls?.caFile ?? target.tls.caFile;
    // The peer's certificate must chain to the CA (or Node's default roots without one) and
    // name the link address; the HMAC handshake then proves it holds the cluster secret too.
    return caFile ? { ca: fs.readFileSync(caFile) } : {};
  }

  async start(): Promise<void> {
    for (const g of this.groups.values()) {
      if (!this.state.has(g.name)) {
        const bytesTotal = g.devices.reduce((n, d) => n + d.device.sizeBytes, 0);
        await this.state.update(g.name, {
          epoch: 1,
          copy: { state: 'copy', pairIndex: 0, offset: 0, copyEndSeq: 0, bytesDone: 0, bytesTotal },
        });
        this.log('info', 'new pair: initial copy starts', { group: g.name, bytes: bytesTotal });
      }
      if (this.state.get(g.name).copy?.state === 'copy') {
        this.copies.push(
          this.runCopy(g).catch((e) => {
            g.lastError = `initial copy stopped: ${String(e)}`;
            this.log(
              'error',
              'initial copy stopped; it continues from its last persisted point at the next start',
              {
                group: g.name,
                error: String(e),
              },
            );
          }),
        );
      }
    }
    for (const g of this.groups.values()) {
      const delta = this.state.get(g.name).delta;
      if (delta?.state === 'pair' && g.bitmaps.dirtyBytes > 0) {
        // A resync ended, but some copies were not reported durable before the stop: their bits
        // are still set, and a power loss may have taken the copies back. Copy them again.
        await this.state.update(g.name, { delta: { ...delta, state: 'resync' } });
        this.log('info', 'dirty bits left from the last resync: it runs again', {
          group: g.name,
          dirtyBytes: g.bitmaps.dirtyBytes,
        });
      }
      if (this.state.get(g.name).delta?.state === 'resync') this.startResync(g);
    }
    for (const p of this.peers) p.start();
    this.makeDurable();
  }

  private peerOf(g: SourceGroup): TargetPeer {
    return this.peers.find((p) => p.groups.includes(g))!;
  }

  private groupOrThrow(group: string): SourceGroup {
    const g = this.groups.get(group);
    if (!g) throw new RemcopyError('RC_ERR_STATE', `${group} is not replicated from this node`);
    if (g.sender.state === 'fenced') {
      throw new RemcopyError('RC_ERR_FENCED', `${group} is fenced on this node (taken over elsewhere)`);
    }
    return g;
  }

  /** Whether an automatic suspension may take the group now. */
  canSuspend(g: SourceGroup): boolean {
    return (
      !g.suspended &&
      !this.closed &&
      g.sender.state !== 'fenced' &&
      this.state.get(g.name).copy?.state !== 'copy'
    );
  }

  /**
   * Suspends `group` (DESIGN.md §3.6): from the moment of the call its writes are tracked in the
   * dirty bitmap; they proceed once the journalled records are durable in the volumes and the
   * suspension is persisted. Resolves with the persisted state.
   */
  async suspend(
    group: string,
    reason: string,
  ): Promise<{ delta: DeltaState; already: boolean; groups: string[] }> {
    const g = this.groupOrThrow(group);
    const groups = this.setMembers(g).map((m) => m.name);
    if (g.suspended) return { delta: this.state.get(group).delta!, already: true, groups };
    if (this.state.get(group).copy?.state === 'copy') {
      throw new RemcopyError(
        'RC_ERR_STATE',
        `${group}: the initial copy is running; a suspension would have nothing consistent to fall back on`,
      );
    }
    const delta = await this.suspendGroup(g, reason);
    return { delta, already: false, groups: groups.filter((n) => this.groups.get(n)!.suspended) };
  }

  /**
   * The journal is full (policy `suspend`), or writes waited for space past `throttleMaxDelay`
   * (policy `throttle`): suspend every group of `groups` that can be.
   */
  onJournalFull(groups: ReadonlySet<string>, reason = 'journal full'): void {
    for (const name of groups) {
      const g = this.groups.get(name);
      if (!g || !this.canSuspend(g)) continue;
      this.suspendGroup(g, reason).catch((e) =>
        this.log('error', 'suspension on a full journal failed', { group: name, error: String(e) }),
      );
    }
  }

  /**
   * The groups of g's consistency set replicated from this node, g first. They are suspended and
   * resumed together: a suspended group holds back its set's cut at the target, so the others
   * would only fill the target's journal meanwhile.
   */
  setMembers(g: SourceGroup): SourceGroup[] {
    const set = consistencySetOf(this.topo, g.name);
    const names = set === undefined ? [] : (this.topo.consistencySets.get(set) ?? []);
    const others = names.filter((n) => n !== g.name).map((n) => this.groups.get(n));
    return [g, ...others.filter((x): x is SourceGroup => x !== undefined)];
  }

  /**
   * Suspends g and the other groups of its set on this node that can be; resolves with g's
   * persisted state. The synchronous part (tracking starts) happens before the first await.
   */
  suspendGroup(g: SourceGroup, reason: string): Promise<DeltaState> {
    for (const m of this.setMembers(g).slice(1)) {
      if (!this.canSuspend(m)) continue;
      this.suspendOne(m, `${reason} (with ${g.name}, same consistency set)`).catch((e) =>
        this.log('error', 'suspension failed', { group: m.name, error: String(e) }),
      );
    }
    return this.suspendOne(g, reason);
  }

  private suspendOne(g: SourceGroup, reason: string): Promise<DeltaState> {
    // Tracked writes of an earlier suspension the target has by now no longer count.
    if (this.pairState(g) === 'pair') g.lag.caughtUp();
    let settle!: { ok: () => void; fail: (e: unknown) => void };
    const ready = new Promise<void>((ok, fail) => (settle = { ok, fail }));
    g.suspended = true;
    this.o.writePath.track(g.name, g.trackPort, ready);
    // No record of the group is appended after this: everything up to it is redone no more once
    // the volumes hold it durably.
    const redoFloor = this.journal.lastSeq(g.name);
    this.log('warn', 'pair suspended: writes are tracked in the dirty bitmap', { group: g.name, reason });
    const done = (async () => {
      await this.o.writePath.settle(g.devices.map((d) => d.device));
      await this.journal.sync();
      const prev = this.state.get(g.name).delta;
      const delta: DeltaState = {
        state: 'suspended',
        reason,
        since: new Date().toISOString(),
        // The target lacks writes since then at the latest (the first tracked one comes later).
        behindSince: g.behindSinceWall() ?? new Date().toISOString(),
        redoFloor: Math.max(redoFloor, prev?.redoFloor ?? 0),
        resyncEndSeq: prev?.resyncEndSeq ?? 0,
        resyncs: prev?.resyncs ?? 0,
      };
      await this.state.update(g.name, { delta });
      return delta;
    })();
    done.then(
      () => {
        settle.ok();
        this.peerOf(g).announce(g);
      },
      (e) => settle.fail(e),
    );
    return done;
  }

  /**
   * Resumes a suspended group and the suspended groups of its set on this node: their writes are
   * journalled again, and a delta resync journals every dirty chunk as a copy record. Resolves once
   * the resyncs have started (not finished); `dirtyBytes` is their total.
   */
  async resume(group: string, force = false): Promise<{ dirtyBytes: number; groups: string[] }> {
    const g = this.groupOrThrow(group);
    const delta = this.state.get(group).delta;
    if (!g.suspended || delta?.state !== 'suspended') {
      const what = delta?.state === 'resync' ? 'a resync is running already' : 'it is not suspended';
      throw new RemcopyError('RC_ERR_STATE', `${group}: cannot resume, ${what}`);
    }
    const peer = this.peerOf(g);
    if (!force && peer.session?.isReady !== true) {
      throw new RemcopyError(
        'RC_ERR_STATE',
        `${group}: the link to ${peer.target.name} is down (${peer.lastError ?? 'no session'}); resume once it is up, or use --force`,
      );
    }
    const members = this.setMembers(g).filter(
      (m) => m.suspended && this.state.get(m.name).delta?.state === 'suspended',
    );
    let dirtyBytes = 0;
    for (const m of members) {
      const d = this.state.get(m.name).delta!;
      await this.o.writePath.untrack(m.name);
      m.suspended = false;
      await this.state.update(m.name, { delta: { ...d, state: 'resync', resyncs: d.resyncs + 1 } });
      this.log('info', 'pair resumed: delta resync starts', {
        group: m.name,
        dirtyBytes: m.bitmaps.dirtyBytes,
      });
      dirtyBytes += m.bitmaps.dirtyBytes;
      const p = this.peerOf(m);
      p.announce(m);
      p.pump();
      this.startResync(m);
    }
    this.makeDurable();
    return { dirtyBytes, groups: members.map((m) => m.name) };
  }

  private startResync(g: SourceGroup): void {
    const pass = ++g.resyncPass;
    const previous = g.resyncing;
    g.resyncing = (async () => {
      // A pass of an earlier resume may still be in a copy: it stops at its next step.
      await previous;
      await this.runResync(g, pass);
    })()
      .catch((e) => {
        g.lastError = `resync stopped: ${String(e)}`;
        this.log('error', 'resync stopped; it starts over at the next resume or restart', {
          group: g.name,
          error: String(e),
        });
      })
      .finally(() => {
        if (g.resyncPass === pass) g.resyncing = undefined;
      });
  }

  /** One pass over the dirty chunks, each journalled as a copy record; then back to `pair`. */
  private async runResync(g: SourceGroup, pass: number): Promise<void> {
    const stale = (): boolean => this.closed || g.suspended || g.resyncPass !== pass;
    if (stale()) return;
    const t = g.bitmaps.tracker;
    t.start();
    g.resyncStartedMs = performance.now();
    const rate = g.cfg.resyncRateBps;
    const started = performance.now();
    let chunk = t.next();
    while (chunk !== undefined) {
      if (stale() || g.sender.state === 'fenced') return;
      const u = this.journal.usage();
      if (u.usedBytes > COPY_JOURNAL_FRACTION_MAX * u.bytesMax) {
        await sleep(20);
        continue;
      }
      if (await paced(rate, t.bytesDone, started)) continue;
      const device = g.devices.find((d) => d.name === chunk!.volume)!.device;
      let copied;
      try {
        copied = await this.o.writePath.copyChunk(g.name, chunk.volume, device, chunk.offset, chunk.length, {
          cached: true,
        });
      } catch (e) {
        if (e instanceof RemcopyError && e.code === 'RC_ERR_JOURNAL_FULL') {
          await sleep(20);
          continue;
        }
        if (stale()) return;
        throw e;
      }
      t.copied(chunk.volume, chunk.chunk, copied.seq);
      g.resyncBytesTotal += chunk.length;
      chunk = t.next();
      // Host requests that came in meanwhile go first: a chunk copied from the page cache, or a
      // zero one, completes without giving up the event loop.
      await nextTurn();
    }
    if (stale()) return;
    // Everything after this seq is journalled as written: the target is consistent once it has
    // applied it.
    const resyncEndSeq = this.journal.lastSeq(g.name);
    const delta = this.state.get(g.name).delta!;
    await this.state.update(g.name, { delta: { ...delta, state: 'pair', resyncEndSeq } });
    this.log('info', 'resync journalled: the target is consistent once it applies it', {
      group: g.name,
      bytes: t.bytesDone,
      resyncEndSeq,
      seconds: Math.round((performance.now() - started) / 100) / 10,
    });
    this.peerOf(g).announce(g);
  }

  /** Cleared bits reach the file lazily (a bit found set after a crash costs one chunk copied again). */
  persistClears(g: SourceGroup): void {
    if (g.clearPersistTimer || this.closed) return;
    g.clearPersistTimer = setTimeout(() => {
      g.clearPersistTimer = undefined;
      g.bitmaps
        .durable()
        .catch((e) =>
          this.log('warn', 'cannot persist cleared dirty bits', { group: g.name, error: String(e) }),
        );
    }, BITMAP_CLEAR_PERSIST_MS);
    g.clearPersistTimer.unref();
  }

  /** The write path appended records: note them and get them durable, then ship them. */
  onAppended(records: readonly AppendedRecord[], arrivedMs: number): void {
    const per = new Map<SourceGroup, { last: number; bytes: number }>();
    for (const { header: h, payload, head, payloadStable } of records) {
      this.o.zeroMaps?.get(h.volume)?.touch(h.offset, h.length);
      const g = this.groups.get(h.group);
      if (!g) continue;
      // Kept for shipping: as it is when the front end never changes it (a payload cut from a
      // socket's receive buffer), else a copy, as the front end reuses its buffer once answered.
      g.recent.add(h, payload, head, payloadStable !== true);
      const e = per.get(g) ?? { last: 0, bytes: 0 };
      e.last = h.seq;
      if (kindCarriesData(h.kind)) e.bytes += h.length;
      per.set(g, e);
    }
    for (const [g, e] of per) g.lag.appended(e.last, e.bytes, arrivedMs);
    this.makeDurable();
  }

  /** One journal sync at a time; each makes every record appended before it shippable. */
  private makeDurable(): void {
    if (this.syncing || this.closed || this.syncTimer) return;
    const wait = this.lastSyncMs + SHIP_SYNC_INTERVAL_MS - performance.now();
    if (wait > 0) {
      this.syncTimer = setTimeout(() => {
        this.syncTimer = undefined;
        this.makeDurable();
      }, wait);
      return;
    }
    const upTo = new Map<SourceGroup, number>();
    let behind = false;
    for (const g of this.groups.values()) {
      const last = this.journal.lastSeq(g.name);
      upTo.set(g, last);
      if (last > g.seqDurable) behind = true;
    }
    if (!behind && this.durableKey !== undefined) return;
    this.syncing = true;
    // Records are appended in key order and a sync makes a prefix durable: every record with a
    // key up to this one is durable once the sync completes.
    const key = this.sequencer.lastKey();
    this.journal.sync().then(
      () => {
        this.syncing = false;
        this.lastSyncMs = performance.now();
        this.durableKey = key;
        for (const [g, s] of upTo) g.seqDurable = Math.max(g.seqDurable, s);
        for (const p of this.peers) p.pump();
        this.makeDurable();
      },
      (e) => {
        this.syncing = false;
        this.log('error', 'journal sync failed; records are not shipped until it succeeds', {
          error: String(e),
        });
        setTimeout(() => this.makeDurable(), 1000).unref();
      },
    );
  }

  private releaseDelayMs(): number {
    const u = this.journal.usage();
    return u.usedBytes > RELEASE_URGENT_FRACTION * u.bytesMax ? RELEASE_URGENT_DELAY_MS : RELEASE_DELAY_MS;
  }

  scheduleRelease(g: SourceGroup): void {
    if (g.releaseTimer || this.closed) return;
    g.releaseTimer = setTimeout(() => {
      g.releaseTimer = undefined;
      const upTo = g.sender.seqAcked;
      if (upTo <= this.journal.releasedSeq(g.name) || g.releasing) return;
      g.releasing = this.o.writePath
        .release(
          g.name,
          upTo,
          g.devices.map((d) => d.device),
        )
        .catch((e) => this.log('error', 'release failed', { group: g.name, error: String(e) }))
        .finally(() => {
          g.releasing = undefined;
          if (g.sender.seqAcked > this.journal.releasedSeq(g.name)) this.scheduleRelease(g);
        });
    }, this.releaseDelayMs());
    g.releaseTimer.unref();
  }

  async fence(g: SourceGroup, epoch: number, by: string): Promise<void> {
    const reason = `${by} holds epoch ${epoch} of ${g.name} (taken over)`;
    this.log('warn', 'group fenced: this node no longer acts as its source', { group: g.name, epoch, by });
    this.o.onFenced(g.name);
    await this.state.update(g.name, { epoch, role: 'fenced', reason });
  }

  /**
   * Failback of `group` away from this node, or a planned takeover elsewhere (DESIGN.md §3.7): fence
   * it at `epoch` unless it is fenced at that epoch already (its volumes turn read-only, the epoch
   * is persisted), stop its resync, and wait until every host write that got in is on the volumes
   * and in the journal or the bitmap. Returns the group's open bitmaps, or undefined when
   * this run of the node does not replicate the group (it was fenced at an earlier start).
   */
  async quiesce(group: string, epoch: number, by: string): Promise<GroupBitmaps | undefined> {
    const g = this.groups.get(group);
    if (g === undefined) return undefined;
    if (g.sender.state !== 'fenced' || this.state.epoch(group) < epoch) {
      g.sender.onEpoch(epoch);
      await this.fence(g, epoch, by);
    }
    g.resyncPass++;
    await g.resyncing;
    await this.o.writePath.untrack(group);
    await this.o.writePath.settle(g.devices.map((d) => d.device));
    await this.journal.sync();
    return g.bitmaps;
  }

  /**
   * After a restart of the machine that the process did not stop cleanly before (a power loss;
   * storage/activity-log.ts), `ranges` of the source volumes may hold writes whose journal records
   * were lost: the target must get their content now. Runs before any host write. Per group:
   *   - suspended: the ranges' chunks are marked dirty (the resync after resume copies them);
   *   - initial copy running: the copy goes back to the earliest range it had passed;
   *   - otherwise they are journalled now as copy records, sequenced before any new host write, so
   *     every cut the target applies stays a crash image of the source (any subset of writes not
   *     yet flushed). What does not fit in `budgetBytes` (of journal, and of reading before the
   *     node serves) is marked dirty instead, and the group resyncs: the target says its image is
   *     not consistent until that is applied.
   * The records are durable when this resolves. Volumes of no group replicated from here (fenced
   * or promoted groups, plain volumes) are left: nothing ships from them.
   */
  async recoverActiveExtents(
    ranges: readonly { readonly volume: string; readonly offset: number; readonly length: number }[],
    budgetBytes: number,
  ): Promise<{ journalledBytes: number; markedBytes: number; groups: string[] }> {
    const where = new Map<string, { g: SourceGroup; index: number; device: BlockDevice }>();
    for (const g of this.groups.values())
      g.devices.forEach((d, index) => where.set(d.name, { g, index, device: d.device }));
    const marks = new Map<SourceGroup, { volume: string; offset: number; length: number }[]>();
    const mark = (g: SourceGroup, volume: string, offset: number, length: number): void => {
      const list = marks.get(g);
      if (list === undefined) marks.set(g, [{ volume, offset, length }]);
      else list.push({ volume, offset, length });
    };
    const touched = new Set<string>();
    let budget = budgetBytes;
    let journalledBytes = 0;
    let markedBytes = 0;
    for (const r of ranges) {
      const at = where.get(r.volume);
      if (at === undefined) continue;
      const { g, index, device } = at;
      const end = Math.min(r.offset + r.length, device.sizeBytes);
      if (r.offset >= end) continue;
      touched.add(g.name);
      const copy = this.state.get(g.name).copy;
      if (copy?.state === 'copy') {
        if (index < copy.pairIndex || (index === copy.pairIndex && r.offset < copy.offset)) {
          const offset = r.offset - (r.offset % COPY_CHUNK_BYTES);
          const before = g.devices.slice(0, index).reduce((n, d) => n + d.device.sizeBytes, 0);
          await this.state.update(g.name, {
            copy: { ...copy, pairIndex: index, offset, bytesDone: before + offset },
          });
        }
        continue;
      }
      if (g.suspended) {
        mark(g, r.volume, r.offset, end - r.offset);
        markedBytes += end - r.offset;
        continue;
      }
      for (let off = r.offset; off < end; off += COPY_CHUNK_BYTES) {
        const len = Math.min(COPY_CHUNK_BYTES, end - off);
        if (budget >= len) {
          try {
            // Charged zero or not: it bounds the reading done before the node serves hosts too
            // (an unreadable log names every extent of every volume).
            await this.o.writePath.copyChunk(g.name, r.volume, device, off, len);
            budget -= len;
            journalledBytes += len;
            continue;
          } catch (e) {
            if (!(e instanceof RemcopyError && e.code === 'RC_ERR_JOURNAL_FULL')) throw e;
            budget = 0;
          }
        }
        mark(g, r.volume, off, end - off);
        markedBytes += end - off;
        break;
      }
    }
    for (const [g, list] of marks) {
      await g.bitmaps.markAll(list);
      const delta = this.state.get(g.name).delta;
      if (g.suspended || delta?.state === 'resync') continue;
      await this.state.update(g.name, {
        delta: {
          state: 'resync',
          reason: 'power loss: volume ranges ahead of the journal',
          since: new Date().toISOString(),
          redoFloor: delta?.redoFloor ?? 0,
          resyncEndSeq: delta?.resyncEndSeq ?? 0,
          resyncs: (delta?.resyncs ?? 0) + 1,
        },
      });
    }
    await this.journal.sync();
    return { journalledBytes, markedBytes, groups: [...touched] };
  }

  /** Initial copy: every chunk of every source volume of the group, as copy or zero records. */
  private async runCopy(g: SourceGroup): Promise<void> {
    let progress = this.state.get(g.name).copy!;
    let lastSeq = progress.copyEndSeq;
    let persistedAt = performance.now();
    const started = performance.now();
    // resyncRate paces the bytes read and shipped; zero chunks cost neither and are not counted.
    let dataBytes = 0;
    for (let i = progress.pairIndex; i < g.devices.length && !this.closed; i++) {
      const { name, device } = g.devices[i]!;
      let offset = i === progress.pairIndex ? progress.offset : 0;
      while (offset < device.sizeBytes && !this.closed) {
        if (g.sender.state === 'fenced') return;
        const u = this.journal.usage();
        if (u.usedBytes > COPY_JOURNAL_FRACTION_MAX * u.bytesMax) {
          await sleep(20);
          continue;
        }
        if (await paced(g.cfg.resyncRateBps, dataBytes, started)) continue;
        const len = Math.min(COPY_CHUNK_BYTES, device.sizeBytes - offset);
        try {
          const zeroMap = this.o.zeroMaps?.get(name);
          const at = offset;
          const knownZero = (): boolean => zeroMap?.knownZero(at, len) === true;
          const copied = await this.o.writePath.copyChunk(g.name, name, device, offset, len, { knownZero });
          lastSeq = copied.seq;
          if (!copied.zero) dataBytes += len;
        } catch (e) {
          if (e instanceof RemcopyError && e.code === 'RC_ERR_JOURNAL_FULL') {
            await sleep(20);
            continue;
          }
          if (this.closed) return;
          throw e;
        }
        offset += len;
        await nextTurn(); // as in runResync: host requests that came in meanwhile go first
        progress = {
          ...progress,
          pairIndex: i,
          offset,
          bytesDone: progress.bytesDone + len,
          copyEndSeq: lastSeq,
        };
        if (performance.now() - persistedAt > COPY_PERSIST_MS) {
          persistedAt = performance.now();
          await this.state.update(g.name, { copy: progress });
        }
      }
      if (!this.closed) progress = { ...progress, pairIndex: i + 1, offset: 0 };
    }
    if (this.closed) {
      await this.state.update(g.name, { copy: progress }).catch(() => {});
      return;
    }
    await this.state.update(g.name, { copy: { ...progress, state: 'pair', copyEndSeq: lastSeq } });
    this.log('info', 'initial copy journalled', {
      group: g.name,
      bytes: progress.bytesTotal,
      lastSeq,
      seconds: Math.round((performance.now() - started) / 100) / 10,
    });
    this.peerOf(g).announce(g);
  }

  /** The open bitmaps of a group this node replicates, if any. */
  bitmapsOf(group: string): GroupBitmaps | undefined {
    return this.groups.get(group)?.bitmaps;
  }

  hasGroup(group: string): boolean {
    return this.groups.has(group);
  }

  status(): SourceGroupStatus[] {
    const out: SourceGroupStatus[] = [];
    const now = performance.now();
    for (const g of this.o.topo.groups.values()) {
      if (g.source !== this.cfg.name) continue;
      const st = this.state.get(g.name);
      const sg = this.groups.get(g.name);
      const written = this.journal.lastSeq(g.name);
      if (!sg || sg.sender.state === 'fenced' || st.role !== undefined) {
        out.push({
          name: g.name,
          role: 'source',
          state: 'fenced',
          reason: st.reason,
          epoch: st.epoch,
          target: g.target,
          linkUp: false,
          sender: 'fenced',
          seqWritten: written,
          seqDurable: sg?.seqDurable ?? 0,
          seqSent: sg?.sender.seqSent ?? 0,
          seqArrived: sg?.sender.seqAcked ?? 0,
          seqApplied: sg?.seqApplied ?? 0,
          lagRecords: 0,
          lagBytes: 0,
          lagMs: 0,
          rttMs: Number.NaN,
          dirtyBytes: sg?.bitmaps.dirtyBytes ?? 0,
        });
        continue;
      }
      const peer = this.peerOf(sg);
      const copy = st.copy;
      const delta = st.delta;
      const state = this.pairState(sg);
      if (state === 'pair') sg.lag.caughtUp();
      const lag = sg.lag.lag(now, sg.bitmaps.dirtyBytes);
      out.push({
        name: g.name,
        role: 'source',
        state,
        reason: state === 'suspended' ? delta?.reason : undefined,
        dirtyBytes: sg.bitmaps.dirtyBytes,
        resync: state === 'resync' ? this.resyncProgress(sg, now) : undefined,
        epoch: sg.sender.epoch,
        target: g.target,
        linkUp: peer.session?.isReady === true,
        sender: sg.sender.state,
        seqWritten: written,
        seqDurable: sg.seqDurable,
        seqSent: sg.sender.seqSent,
        seqArrived: sg.sender.seqAcked,
        seqApplied: sg.seqApplied,
        lagRecords: written - sg.seqApplied,
        lagBytes: lag.bytes,
        lagMs: Math.round(lag.ms),
        copy: copy
          ? { bytesDone: copy.bytesDone, bytesTotal: copy.bytesTotal, copyEndSeq: copy.copyEndSeq }
          : undefined,
        rttMs: peer.session?.rttMs ?? Number.NaN,
        lastError: sg.lastError ?? (peer.session?.isReady ? undefined : peer.lastError),
      });
    }
    return out;
  }

  /** The pair's state as status shows it: `pair` once the target holds a consistent image again. */
  private pairState(g: SourceGroup): SourcePairState {
    const { copy, delta } = this.state.get(g.name);
    if (delta?.state === 'suspended') return 'suspended';
    if (copy !== undefined && (copy.state === 'copy' || g.seqApplied < copy.copyEndSeq)) return 'copy';
    if (delta?.state === 'resync' || (delta !== undefined && g.seqApplied < delta.resyncEndSeq))
      return 'resync';
    return 'pair';
  }

  private resyncProgress(g: SourceGroup, now: number): ResyncProgress {
    const t = g.bitmaps.tracker;
    const secs = (now - g.resyncStartedMs) / 1000;
    const rate = secs > 0 ? t.bytesDone / secs : 0;
    const left = Math.max(0, t.bytesTotal - t.bytesDone);
    return {
      bytesDone: t.bytesDone,
      bytesTotal: t.bytesTotal,
      rateBytesPerSec: Math.round(rate),
      etaSeconds: left === 0 ? 0 : rate > 0 ? Math.ceil(left / rate) : undefined,
    };
  }

  /** Per group: bytes journalled as resync copy records since start, and bytes marked dirty. */
  deltaFigures(): { group: string; resyncBytesTotal: number; dirtyBytes: number; suspended: boolean }[] {
    return [...this.groups.values()].map((g) => ({
      group: g.name,
      resyncBytesTotal: g.resyncBytesTotal,
      dirtyBytes: g.bitmaps.dirtyBytes,
      suspended: g.suspended,
    }));
  }

  /** Waits until the target has applied everything written to `group` so far (verify). */
  async waitApplied(group: string, timeoutMs: number): Promise<Seq> {
    const g = this.groupOrThrow(group);
    if (g.suspended || this.state.get(group).delta?.state === 'resync') {
      throw new RemcopyError(
        'RC_ERR_STATE',
        `${group} is ${g.suspended ? 'suspended' : 'resyncing'}: the target cannot catch up to this point now`,
      );
    }
    const want = this.journal.lastSeq(group);
    const deadline = performance.now() + timeoutMs;
    while (g.seqApplied < want) {
      if (performance.now() > deadline) {
        throw new RemcopyError(
          'RC_ERR_TIMEOUT',
          `${group}: the target applied seq ${g.seqApplied} of ${want} within ${timeoutMs} ms`,
        );
      }
      await sleep(20);
    }
    return want;
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const p of this.peers) p.close();
    for (const g of this.groups.values()) {
      clearTimeout(g.releaseTimer);
      clearTimeout(g.clearPersistTimer);
    }
    clearTimeout(this.syncTimer);
    await Promise.all(this.copies.map((c) => c.catch(() => {})));
    await Promise.all([...this.groups.values()].map((g) => g.releasing));
    await Promise.all([...this.groups.values()].map((g) => g.resyncing));
    await Promise.all([...this.groups.values()].map((g) => g.bitmaps.durable().catch(() => {})));
  }
}

/**
 * Pacing of a copy at `rateBps` (a group's resyncRate; none: no pacing): sleeps while `bytes` done
 * since `startedMs` are ahead of the rate, at most 200 ms at a time. True when the caller should
 * check its loop's conditions again before the next chunk (it slept the full 200 ms).
 */
async function paced(rateBps: number | undefined, bytes: number, startedMs: number): Promise<boolean> {
  if (rateBps === undefined) return false;
  const aheadMs = (bytes / rateBps) * 1000 - (performance.now() - startedMs);
  if (aheadMs > 0) await sleep(Math.min(aheadMs, 200));
  return aheadMs > 200;
}
