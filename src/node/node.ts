/**
 * One remcopy node: opens its volumes and journal, redoes the journal into the volumes after a
 * crash, and serves the host front ends (NBD, native protocol) and the management API.
 *
 *   start: lock dataDir -> open volumes -> open journal (recovery) -> redo retained records
 *          -> sequencer resumes after the journal's last seq/ordinal/time -> listen
 *   stop:  stop listening; in-flight requests are answered -> pending writes appended
 *          -> journal synced -> volumes synced -> unlock
 */
import * as fs from 'node:fs';
import { join } from 'node:path';
import { type IntervalHistogram, monitorEventLoopDelay } from 'node:perf_hooks';
import { RemcopyError } from '../core/errors.js';
import { Sequencer } from '../core/sequencer.js';
import type { Seq } from '../core/types.js';
import { kindCarriesData, RecordKind, recordKindName } from '../core/types.js';
import type { ExportCatalog } from '../frontend/backend.js';
import { BackendError } from '../frontend/backend.js';
import { NativeServer } from '../frontend/native/server.js';
import { NbdServer } from '../frontend/nbd/server.js';
import type { BlockDevice } from '../storage/blockdev.js';
import { FileBlockDevice } from '../storage/blockdev.js';
import { ActivityLog } from '../storage/activity-log.js';
import { Journal } from '../storage/journal.js';
import { ApiError, ApiServer, apiCall, endpointOf } from './api.js';
import type { NodeCall } from '../mgmt/checkpoint.js';
import { CycleRunner } from '../mgmt/cycles.js';
import { MarkerSource } from './markers.js';
import { SnapshotExport } from './snapshot-export.js';
import type { VolumeSnapshots } from '../storage/snapshots.js';
import type { NodeConfig, Topology } from './config.js';
import { effectiveTopology, volumeRole } from './config.js';
import type { Log } from './log.js';
import type { VolumeRole } from './volume-export.js';
import { NodeVolume } from './volume-export.js';
import { NodeOperations } from './operations.js';
import { GroupStateStore } from './replication/group-state.js';
import { LinkServer } from './replication/link-server.js';
import type { LinkTiming } from './replication/source.js';
import { LINK_TIMING_DEFAULT, SourceReplicator } from './replication/source.js';
import { TargetReplicator } from './replication/target.js';
import type { GroupBitmaps } from './replication/bitmaps.js';
import { bitmapsOn } from './replication/bitmaps.js';
import { ZeroMap } from './replication/zero-map.js';
import { applyToDevice, WritePath } from './write-path.js';
import { nowUs } from './clock.js';

/** Bytes of records one records request reads from the journal, at most. */
const RECORD_HEADERS_READ_BYTES_MAX = 8 * 1024 * 1024;

export interface NodePorts {
  nbd: number;
  api: number;
  link: number;
  native?: number;
}

export interface NodeStartOptions {
  /** Link heartbeat, timeout and reconnect timing (tests shorten them). */
  readonly timing?: LinkTiming;
  /** This boot of the machine, for the journal and the activity log (tests stand for a restart). */
  readonly bootId?: string;
  /** Activity log size and trim period (tests make them small). */
  readonly activityLog?: {
    readonly capacity?: number;
    readonly extentBytes?: number;
    readonly trimMs?: number;
  };
}

export class RemcopyNode {
  private nbd?: NbdServer;
  private native?: NativeServer;
  private api?: ApiServer;
  private linkServer?: LinkServer;
  private readonly ops = new NodeOperations(this);
  /** Freeze, markers and thaw at this node as a source (DESIGN.md §3.4). */
  readonly markerSource = new MarkerSource(this);
  /** Consistency cycles of the sets this node coordinates (`cycleSeconds`). */
  readonly cycles: CycleRunner[] = [];
  private readonly snapshotExports = new Map<string, SnapshotExport>();
  /** Dirty bitmaps of the groups taken over at this node, since their takeover. */
  readonly promoted = new Map<string, GroupBitmaps>();
  source?: SourceReplicator;
  target?: TargetReplicator;
  private stopping?: Promise<void>;
  private reconfiguring: Promise<void> = Promise.resolve();
  ports: NodePorts = { nbd: 0, api: 0, link: 0 };
  readonly startedAtMs = Date.now();
  /**
   * How late the event loop runs what is due (status): host requests, link frames and a cycle's
   * freeze and mark all wait behind whatever the loop is doing.
   */
  private readonly loopDelay = monitorEventLoopDelay({ resolution: 1 });
  redoRecords = 0;

  private constructor(
    /** The topology of the config file. */
    readonly configTopo: Topology,
    /** The topology in force: the config's with the groups failed back reversed (effectiveTopology). */
    public topo: Topology,
    readonly cfg: NodeConfig,
    readonly log: Log,
    private readonly volumes: Map<string, NodeVolume>,
    readonly journal: Journal,
    readonly writePath: WritePath,
    readonly sequencer: Sequencer,
    readonly devices: ReadonlyMap<string, BlockDevice>,
    private readonly unlock: () => void,
    readonly groupState: GroupStateStore,
    readonly timing: LinkTiming,
    readonly activityLog: ActivityLog,
  ) {
    this.loopDelay.enable();
  }

  static async start(
    topo: Topology,
    nodeName: string,
    log: Log,
    opts: NodeStartOptions = {},
  ): Promise<RemcopyNode> {
    const cfg = topo.nodes.get(nodeName);
    if (!cfg) throw new RemcopyError('RC_ERR_UNKNOWN_NODE', `no node "${nodeName}" in ${topo.file}`);
    for (const g of topo.groups.values()) {
      if ((g.source === nodeName || g.target === nodeName) && (g.mode !== 'async' || g.transfer !== 'push')) {
        throw new RemcopyError(
          'RC_ERR_CONFIG',
          `groups.${g.name}: mode ${g.mode} / transfer ${g.transfer} is not supported by this version yet; use mode async, transfer push`,
        );
      }
    }
    fs.mkdirSync(join(cfg.dataDir, 'journal'), { recursive: true });
    fs.mkdirSync(join(cfg.dataDir, 'volumes'), { recursive: true });
    const unlock = lockDataDir(cfg.dataDir);
    const devices = new Map<string, BlockDevice>();
    try {
      for (const v of cfg.volumes.values()) devices.set(v.name, FileBlockDevice.open(v.path, v.sizeBytes));
      const journal = await Journal.open({
        dir: join(cfg.dataDir, 'journal'),
        bytesMax: cfg.journal.bytesMax,
        segmentBytes: cfg.journal.segmentBytes,
        bootId: opts.bootId,
        log,
      });
      // Read now, written only once its extents are taken care of (recoverPowerLoss).
      const activityLog = new ActivityLog({
        dir: cfg.dataDir,
        volumes: [...devices.keys()],
        journal,
        bootId: opts.bootId,
        capacity: cfg.activityLogExtents,
        ...opts.activityLog,
        log,
      });
      const groupState = new GroupStateStore(cfg.dataDir);
      const configTopo = topo;
      topo = effectiveTopology(configTopo, (g) => groupState.get(g).source);
      const redone = await redo(journal, devices, log, (g) => groupState.get(g).delta?.redoFloor ?? 0);
      const sourceGroups = [...topo.groups.values()].filter((g) => g.source === nodeName).map((g) => g.name);
      const sequencer = new Sequencer(cfg.nodeId, cfg.writeTime, {
        lastOrdinal: journal.lastOrdinal(),
        lastWriteTimeUs: journal.lastWriteTimeUs(),
        lastSeq: new Map(sourceGroups.map((g) => [g, journal.lastSeq(g)])),
      });
      // The write path calls the source side of the node built below (and rebuilt by reconfigure()).
      const writePath = new WritePath({
        sequencer,
        journal,
        epochOf: (g) => groupState.epoch(g),
        onAppended: (recs, at) => node.source?.onAppended(recs, at),
        onJournalFull:
          cfg.journal.fullPolicy === 'suspend' ? (gs) => node.source?.onJournalFull(gs) : undefined,
        onThrottleExpired:
          cfg.journal.fullPolicy === 'throttle'
            ? (gs) =>
                node.source?.onJournalFull(
                  gs,
                  `journal full for ${cfg.journal.throttleMaxDelayMs} ms (throttleMaxDelay)`,
                )
            : undefined,
        nowUs,
        nowMs: () => performance.now(),
        throttleMaxDelayMs: cfg.journal.throttleMaxDelayMs,
        activityLog,
        log,
      });
      const volumes = new Map<string, NodeVolume>();
      for (const [name, dev] of devices) {
        volumes.set(name, new NodeVolume(name, dev, roleOf(topo, nodeName, name, groupState), writePath));
      }
      const timing = opts.timing ?? LINK_TIMING_DEFAULT;
      const node = new RemcopyNode(
        configTopo,
        topo,
        cfg,
        log,
        volumes,
        journal,
        writePath,
        sequencer,
        devices,
        unlock,
        groupState,
        timing,
        activityLog,
      );
      node.redoRecords = redone;
      try {
        // Volumes created by this start read as zero until written: the initial copy skips them.
        const zeroMaps = new Map<string, ZeroMap>();
        // (Not when the redo wrote anything: a journal may outlive a deleted volume file.)
        for (const [name, dev] of devices) {
          if (dev instanceof FileBlockDevice && dev.created && redone === 0) {
            zeroMaps.set(name, new ZeroMap(dev.sizeBytes));
          }
        }
        await node.openReplication(zeroMaps);
        await node.recoverPowerLoss();
        await activityLog.start();
        await node.listen();
        await node.source!.start();
        node.startCycles();
      } catch (e) {
        await node.stop();
        throw e;
      }
      return node;
    } catch (e) {
      await Promise.all([...devices.values()].map((d) => d.close().catch(() => {})));
      unlock();
      throw e;
    }
  }

  /** Volumes, and the snapshots of target volumes as `VOLUME@N` (read-only). */
  get catalog(): ExportCatalog {
    const volumes = [...this.volumes.values()];
    // One object per snapshot: the NBD handshake matches exports by identity (SET_META_CONTEXT, GO).
    const exportOf = (v: NodeVolume, s: VolumeSnapshots, n: number): SnapshotExport => {
      const key = `${v.name}@${n}`;
      let e = this.snapshotExports.get(key);
      if (e === undefined || e.snapshots !== s)
        this.snapshotExports.set(key, (e = new SnapshotExport(v, s, n)));
      return e;
    };
    const snapshotsOf = (v: NodeVolume): SnapshotExport[] => {
      const s = this.target?.snapshotsOf(v.name);
      return s === undefined ? [] : s.list().map((i) => exportOf(v, s, i.number));
    };
    return {
      list: () => [...volumes, ...volumes.flatMap(snapshotsOf)],
      get: (name) => {
        const at = name.lastIndexOf('@');
        if (at < 0) return this.volumes.get(name);
        const v = this.volumes.get(name.slice(0, at));
        const n = name.slice(at + 1);
        const s = v === undefined ? undefined : this.target?.snapshotsOf(v.name);
        if (v === undefined || s === undefined || !/^[1-9]\d{0,15}$/.test(n) || !s.has(Number(n)))
          return undefined;
        return exportOf(v, s, Number(n));
      },
    };
  }

  /** Starts the consistency cycles of every set this node coordinates. */
  private startCycles(): void {
    for (const [set, o] of this.configTopo.setOptions) {
      if (o.cycleSeconds === undefined || o.coordinator !== this.cfg.name) continue;
      const call: NodeCall = (node, method, path, body) => {
        // This node's own part of a cycle runs in process: no HTTP round trip inside the freeze.
        const local = node === this.cfg.name ? /^\/v1\/sets\/([^/]+)\/([a-z-]+)$/.exec(path) : null;
        if (local !== null) {
          const [, set, action] = local;
          return this.ops
            .markers(decodeURIComponent(set!), action!, (body ?? {}) as Record<string, unknown>)
            .catch((e: unknown) => {
              throw new Error(`${node}: ${(e as Error).message}`);
            });
        }
        const n = this.topo.nodes.get(node)!;
        const failed = (e: unknown): never => {
          throw new Error(`${node}: ${(e as Error).message}`);
        };
        let endpoint;
        try {
          endpoint = endpointOf(n, this.cfg.tls?.caFile);
        } catch (e) {
          return Promise.reject(e).catch(failed);
        }
        return apiCall(endpoint, this.topo.secret, method, path, body).catch(failed);
      };
      const runner = new CycleRunner(set, o.cycleSeconds, () => this.topo, call, this.log, this.cfg.name);
      this.cycles.push(runner);
      runner.start();
      this.log('info', 'consistency cycles started', { set, cycleSeconds: o.cycleSeconds });
    }
  }

  /**
   * Opens the target and source sides for the topology in force and gives each volume its role.
   * The source side is not started (start() dials the targets and resumes copies and resyncs).
   */
  private async openReplication(
    zeroMaps: ReadonlyMap<string, ZeroMap>,
    previous?: SourceReplicator,
  ): Promise<void> {
    const { topo, cfg, groupState, devices } = this;
    // The target side first: a volume that becomes a target reads through its gate from the start.
    const target = await TargetReplicator.open(topo, cfg, groupState, devices, this.log, zeroMaps);
    this.target = target;
    for (const v of this.volumes.values()) v.setRole(roleOf(topo, cfg.name, v.name, groupState));
    for (const g of topo.groups.values()) {
      if (g.target === cfg.name && groupState.get(g.name).role === 'promoted') {
        this.setGroupRole(g.name, 'promoted', this.promoted.get(g.name) ?? bitmapsOn(cfg, g));
      }
    }
    for (const v of this.volumes.values()) v.snapshots = target.snapshotsOf(v.name) ?? v.snapshots;
    for (const v of this.volumes.values()) {
      if (v.role.kind !== 'target') continue;
      const group = v.role.group;
      v.gate = target.gateOf(group);
      // (No target side for a moment while groups are turned around: a read then fails, it never
      // sees an image no coordinator vouches for.)
      v.halfSynced = () =>
        this.target ? this.target.halfSynced(group) : `${this.cfg.name} is turning groups around; try again`;
    }
    this.source = new SourceReplicator({
      topo,
      cfg,
      journal: this.journal,
      writePath: this.writePath,
      sequencer: this.sequencer,
      state: groupState,
      devices,
      log: this.log,
      timing: this.timing,
      onFenced: (g) => this.setGroupRole(g, 'fenced'),
      zeroMaps,
      // One GroupBitmaps per group and file: a suspended group's writes are tracked in it meanwhile.
      bitmapsOf: (g) => this.promoted.get(g) ?? previous?.bitmapsOf(g),
    });
  }

  /**
   * A failback changed which node is the source of some groups (groups.json): close the source
   * and target sides, take the topology in force from the group states, and open them again. Host
   * front ends and the write path go on; link sessions are dropped and reconnect.
   */
  reconfigure(): Promise<void> {
    const run = this.reconfiguring.then(async () => {
      const before = this.topo;
      const previous = this.source;
      const oldTarget = this.target;
      // From here link frames are refused (no target side) and nothing more is shipped.
      this.source = undefined;
      this.target = undefined;
      this.linkServer?.dropSessions('the groups of this node changed direction (failback)');
      await previous?.close();
      await oldTarget?.close();
      this.topo = effectiveTopology(this.configTopo, (g) => this.groupState.get(g).source);
      for (const g of this.topo.groups.values()) {
        if (g.source === this.cfg.name) this.sequencer.resumeGroup(g.name, this.journal.lastSeq(g.name));
      }
      await this.openReplication(new Map(), previous);
      // A write that took the untracked path of its old role (a promoted volume's) lands before any
      // resync reads the volume.
      await Promise.all([...this.volumes.values()].map((v) => v.directWritesDone()));
      await this.source!.start();
      const moved = [...this.topo.groups.values()].filter((g) => before.groups.get(g.name) !== g);
      this.log('info', 'replication reconfigured', {
        groups: moved.map((g) => ({ group: g.name, source: g.source, target: g.target })),
      });
    });
    this.reconfiguring = run.catch((e: unknown) => {
      this.log('error', 'replication could not be reopened; retry the failback or restart the node', {
        error: String(e),
      });
    });
    return run;
  }

  private async listen(): Promise<void> {
    const { cfg } = this;
    const tls = cfg.tls
      ? {
          cert: fs.readFileSync(cfg.tls.certFile),
          key: fs.readFileSync(cfg.tls.keyFile),
          ca: cfg.tls.caFile ? fs.readFileSync(cfg.tls.caFile) : undefined,
          required: cfg.tls.required,
        }
      : undefined;
    this.nbd = new NbdServer({ catalog: this.catalog, tls, log: this.log });
    this.ports.nbd = await listening('nbd', cfg.nbd, () =>
      this.nbd!.listen(cfg.nbd.host, cfg.nbd.port).then((r) => r.port),
    );
    if (cfg.native) {
      const addr = cfg.native;
      this.native = new NativeServer({ catalog: this.catalog, log: this.log });
      this.ports.native = await listening('native', addr, () =>
        this.native!.listen(addr.host, addr.port).then((r) => r.port),
      );
    }
    this.api = new ApiServer(
      this.topo.secret,
      {
        status: () => this.status(),
        metrics: () => this.ops.metrics(),
        records: (g, from, max) => this.records(g, from, max),
        takeover: (kind, name, force, snapshot) => this.ops.takeover(kind, name, force, snapshot),
        fence: (g, epoch, by) => this.ops.fence(g, epoch, by),
        failback: (step, body) => this.ops.failback(step, body),
        suspend: (g) => this.ops.suspend(g),
        resume: (g, force) => this.ops.resume(g, force),
        hold: (g, ms) => this.ops.hold(g, ms),
        unhold: (g) => this.ops.unhold(g),
        waitApplied: (g, ms) => this.ops.waitApplied(g, ms),
        checksums: (v, chunk) => this.ops.checksums(v, chunk),
        readAtCut: (set, reads) => this.ops.readAtCut(set, reads),
        markers: (set, action, body) => this.ops.markers(set, action, body),
        snapshots: (volume, action, body) => this.ops.snapshots(volume, action, body),
      },
      this.log,
      tls,
    );
    this.ports.api = await listening('api', cfg.api, () => this.api!.listen(cfg.api.host, cfg.api.port));
    this.linkServer = new LinkServer(
      () => ({ topo: this.topo, target: this.target }),
      cfg,
      this.timing,
      this.log,
    );
    this.ports.link = await listening('link', cfg.link, () => this.linkServer!.listen());
    // The node's name is in every line already (the logger's base fields).
    this.log('info', 'node ready', {
      ports: this.ports,
      volumes: [...this.volumes.keys()],
      redoRecords: this.redoRecords,
    });
  }

  /**
   * The last run ended without a clean stop before a restart of the machine (activity-log.ts):
   * the extents its activity log names may hold writes the journal lost. Their content goes to the
   * targets (SourceReplicator.recoverActiveExtents) before any host write.
   */
  private async recoverPowerLoss(): Promise<void> {
    const al = this.activityLog;
    if (!al.previousNeedsRecovery) return;
    const prev = al.previous;
    const ranges =
      prev.state === 'ok'
        ? prev.extents
            .map((e) => ({
              volume: e.volume,
              offset: e.extentNo * prev.extentBytes,
              length: prev.extentBytes,
            }))
            .sort((a, b) => (a.volume === b.volume ? a.offset - b.offset : a.volume < b.volume ? -1 : 1))
        : [...this.devices].map(([volume, d]) => ({ volume, offset: 0, length: d.sizeBytes }));
    this.log(
      'warn',
      'the last run did not stop cleanly before a restart of the machine: volume ranges that may be ahead of the journal go to the targets',
      {
        activityLog: prev.state,
        ranges: ranges.length,
      },
    );
    if (this.source === undefined) return;
    const u = this.journal.usage();
    const budget = Math.max(0, Math.floor(u.bytesMax / 2) - u.usedBytes);
    const r = await this.source.recoverActiveExtents(ranges, budget);
    this.log('warn', 'power-loss recovery done', {
      ...r,
      note:
        r.markedBytes > 0
          ? 'marked ranges resync; the target is not consistent until it applies them'
          : undefined,
    });
  }

  volume(name: string): NodeVolume | undefined {
    return this.volumes.get(name);
  }

  volumeList(): readonly NodeVolume[] {
    return [...this.volumes.values()];
  }

  status(): object {
    const groups = [...(this.source?.status() ?? []), ...(this.target?.status() ?? [])].map((g) =>
      g.role === 'promoted'
        ? {
            ...g,
            dirtyBytes: this.promoted.get(g.name)?.dirtyBytes ?? 0,
            // What a failback needs: the seq the takeover applied up to, the seqs journalled here.
            takeoverSeq: this.groupState.get(g.name).takeoverSeq ?? 0,
            takeoverMarker: this.groupState.get(g.name).takeoverMarker,
            seqWritten: this.journal.lastSeq(g.name),
          }
        : g,
    );
    return {
      node: this.cfg.name,
      pid: process.pid,
      uptimeMs: Date.now() - this.startedAtMs,
      ports: this.ports,
      volumes: [...this.volumes.values()].map((v) => ({
        name: v.name,
        sizeBytes: v.sizeBytes,
        role: v.role.kind,
        group: v.role.kind === 'none' ? undefined : v.role.group,
        readOnly: v.readOnly,
      })),
      groups,
      journal: this.journal.usage(),
      activityLog: {
        extents: this.activityLog.size,
        capacity: this.activityLog.capacity,
        extentBytes: this.activityLog.extentBytes,
        ...this.activityLog.stats,
      },
      writePath: { ...this.writePath.stats, throttling: this.writePath.throttling },
      eventLoopDelayMs: loopDelaySummary(this.loopDelay),
      markers: {
        source: this.markerSource.status(),
        sets: [...(this.target?.markers().values() ?? [])].map((m) => m.status()),
      },
      cycles: this.cycles.map((c) => c.status()),
    };
  }

  /** Headers of retained records of a source group from `fromSeq` on (released ones are gone). */
  records(group: string, fromSeq: number, max: number): object {
    const g = this.topo.groups.get(group);
    if (!g || g.source !== this.cfg.name)
      throw new ApiError(404, `${group} is not a source group of ${this.cfg.name}`);
    const from = Math.max(fromSeq, this.journal.releasedSeq(group) + 1);
    const recs = this.journal.readRetained(group, from as Seq, RECORD_HEADERS_READ_BYTES_MAX).slice(0, max);
    return {
      group,
      releasedSeq: this.journal.releasedSeq(group),
      lastSeq: this.journal.lastSeq(group),
      records: recs.map((r) => ({ ...r.header, kind: recordKindName(r.header.kind) })),
    };
  }

  /** Stop cleanly: answer in-flight requests, append what is pending, sync everything. */
  stop(): Promise<void> {
    this.stopping ??= this.doStop();
    return this.stopping;
  }

  /**
   * Volumes of `group` on this node take `kind` (takeover, fencing); exports follow at once. A
   * promoted group's writes are tracked in `bitmaps` (set before the volumes become writable).
   */
  setGroupRole(group: string, kind: 'promoted' | 'fenced', bitmaps?: GroupBitmaps): void {
    if (bitmaps) this.promoted.set(group, bitmaps);
    if (kind === 'fenced') {
      this.writePath.dropQueued(group, new BackendError('EPERM', `${group} was fenced on this node`));
    }
    for (const v of this.volumes.values()) {
      if (v.role.kind === 'none' || v.role.group !== group) continue;
      if (kind === 'promoted') v.tracked = bitmaps;
      v.setRole({ kind, group });
    }
  }

  private async doStop(): Promise<void> {
    this.log('info', 'stopping');
    await Promise.all(this.cycles.map((c) => c.stop()));
    this.markerSource.close();
    this.loopDelay.disable();
    await Promise.all([this.nbd?.close(), this.native?.close(), this.api?.close(), this.linkServer?.close()]);
    this.ops.close();
    await this.reconfiguring;
    await this.source?.close();
    await this.target?.close();
    await this.writePath.close();
    // The journal is synced (unless it failed): every write the log names is in it durably.
    await this.activityLog.close(true);
    await this.journal.close();
    await Promise.all([...this.volumes.values()].map((v) => v.device.close()));
    this.unlock();
    this.log('info', 'stopped');
  }
}

/** A port in use is an operating error with a clear message, not a stack trace. */
async function listening(
  what: string,
  addr: { host: string; port: number },
  f: () => Promise<number>,
): Promise<number> {
  try {
    return await f();
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? String(e);
    throw new RemcopyError(
      'RC_ERR_LISTEN',
      `cannot listen for ${what} on ${addr.host}:${addr.port}: ${code}`,
    );
  }
}

function roleOf(topo: Topology, node: string, volume: string, state: GroupStateStore): VolumeRole {
  const r = volumeRole(topo, node, volume);
  if (r.role === 'none' || r.group === undefined) return { kind: 'none' };
  const override = state.get(r.group).role;
  if (override === 'promoted' && r.role === 'target') return { kind: 'promoted', group: r.group };
  if (override === 'fenced' && r.role === 'source') return { kind: 'fenced', group: r.group };
  return { kind: r.role, group: r.group };
}

/**
 * Replay every retained record into the volumes: the journal is their redo log. Not the records of
 * a group up to its `redoFloor`: they were durable in the volumes when the group was suspended, and
 * writes tracked in the bitmap since may have overwritten them.
 */
async function redo(
  journal: Journal,
  devices: Map<string, BlockDevice>,
  log: Log,
  redoFloor: (group: string) => number,
): Promise<number> {
  let n = 0;
  const skipped = new Set<string>();
  for (const { header, payload } of journal.retained()) {
    if (header.kind !== RecordKind.data && header.kind !== RecordKind.zero && header.kind !== RecordKind.copy)
      continue;
    if (header.seq <= redoFloor(header.group)) continue;
    const dev = devices.get(header.volume);
    if (!dev || header.offset + header.length > dev.sizeBytes) {
      skipped.add(header.volume);
      continue;
    }
    applyToDevice(
      dev,
      header.kind,
      header.offset,
      header.length,
      kindCarriesData(header.kind) ? payload : undefined,
    );
    n++;
  }
  if (skipped.size > 0)
    log('warn', 'journal records for volumes not in this configuration were not redone', {
      volumes: [...skipped],
    });
  await Promise.all([...devices.values()].map((d) => d.sync()));
  if (n > 0) log('info', 'redo: journal records replayed into volumes', { records: n });
  return n;
}

/** One process per data directory: a second one would corrupt the journal. */
function lockDataDir(dataDir: string): () => void {
  const path = join(dataDir, 'node.lock');
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      fs.writeFileSync(path, String(process.pid), { flag: 'wx' });
      return () => fs.rmSync(path, { force: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      const pid = Number(fs.readFileSync(path, 'utf8'));
      if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && isAlive(pid)) {
        throw new RemcopyError('RC_ERR_USAGE', `${dataDir} is in use by process ${pid} (${path})`);
      }
      fs.rmSync(path, { force: true });
    }
  }
  throw new RemcopyError('RC_ERR_USAGE', `cannot lock ${path}`);
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Event-loop delay since start, in ms (the histogram counts ns; its floor is the 1 ms resolution). */
function loopDelaySummary(h: IntervalHistogram): { p50: number; p99: number; max: number } | undefined {
  if (h.count === 0) return undefined;
  const ms = (ns: number): number => Math.round(ns / 1e4) / 100;
  return { p50: ms(h.percentile(50)), p99: ms(h.percentile(99)), max: ms(h.max) };
}
