/**
 * The management operations a node serves through its API (src/node/api.ts): takeover, the write
 * hold and catch-up wait that verify uses, chunk checksums, reads of a target at one completed cut,
 * and the Prometheus metrics. Each checks its input against the configuration and this node's role
 * and answers a clear 4xx (ApiError) when it does not fit; none changes anything on bad input.
 */
import { createHash } from 'node:crypto';
import * as prom from 'prom-client';
import { ApiError, HOLD_MS_MAX, numberField } from './api.js';
import { FREEZE_BOUND_MS_MAX } from './config-schema.js';
import { setMembers } from './config.js';
import type { RemcopyNode } from './node.js';
import { setOf, type TakeoverResult } from './replication/target.js';
import { setNodes } from '../mgmt/checkpoint.js';
import { RemcopyError } from '../core/errors.js';
import { Failback, parseFailbackStep } from './failback.js';
import { FileBlockDevice } from '../storage/blockdev.js';

/** A hold of a group's writes ends by itself after this long at most. */
export const HOLD_MS_DEFAULT_MAX = 120_000;

export class NodeOperations {
  private readonly holds = new Map<string, NodeJS.Timeout>();
  readonly registry = new prom.Registry();

  private readonly failbacks: Failback;

  constructor(private readonly node: RemcopyNode) {
    this.failbacks = new Failback(node);
    this.defineMetrics();
  }

  async takeover(kind: 'group' | 'set', name: string, force: boolean, snapshot?: number): Promise<unknown> {
    const { topo, cfg } = this.node;
    let groups: string[];
    if (kind === 'set') {
      const set = topo.consistencySets.get(name);
      if (!set) throw new ApiError(404, `no consistency set ${name}`);
      if (snapshot !== undefined) return this.takeoverAtSnapshot(name, snapshot);
      const { sources, targets } = setNodes(topo, name);
      if (sources.length > 1 || targets.length > 1) {
        throw new ApiError(
          409,
          `RC_ERR_STATE: set ${name} spans nodes (sources ${sources.join(', ')}; targets ${targets.join(', ')}): only a snapshot is one image of all of them; take over at one (remcopy takeover --set ${name} picks the newest every target has)`,
        );
      }
      groups = set.filter((g) => topo.groups.get(g)!.target === cfg.name);
      if (groups.length !== set.length) {
        throw new ApiError(409, `RC_ERR_STATE: not every group of ${name} has ${cfg.name} as its target`);
      }
    } else {
      const g = topo.groups.get(name);
      if (!g) throw new ApiError(404, `no group ${name}`);
      if (g.target !== cfg.name)
        throw new ApiError(409, `RC_ERR_STATE: ${cfg.name} is not the target of ${name}`);
      groups = [name];
    }
    return this.promote(() => this.node.target!.takeover(groups, force), {});
  }

  /** Every group of `set` this node is the target of, at snapshot `marker` (target.ts). */
  private takeoverAtSnapshot(set: string, marker: number): Promise<unknown> {
    return this.promote(() => this.node.target!.takeoverAtSnapshot(set, marker), { set, snapshot: marker });
  }

  /** Runs a takeover at the target side, then makes its volumes writable and tracked; the answer. */
  private async promote(
    takeover: () => Promise<TakeoverResult[]>,
    at: { set?: string; snapshot?: number },
  ): Promise<unknown> {
    try {
      const taken = await takeover();
      for (const d of taken) this.node.setGroupRole(d.group, 'promoted', d.bitmaps);
      const done = taken.map(({ bitmaps, ...d }) => ({ ...d, dirtyBytes: bitmaps.dirtyBytes }));
      this.node.log('warn', 'takeover: target volumes are writable, the epoch is bumped', {
        ...at,
        groups: done,
      });
      return { node: this.node.cfg.name, ...at, groups: done };
    } catch (e) {
      if (e instanceof RemcopyError) throw new ApiError(409, e.message);
      throw e;
    }
  }

  /**
   * A planned takeover at the target (or an operator) tells this source that `epoch` holds the
   * group elsewhere now: it stops acting as source, and writes held or queued fail (EPERM).
   */
  async fence(group: string, epoch: number, by: string): Promise<unknown> {
    const g = this.node.topo.groups.get(group);
    if (!g) throw new ApiError(404, `no group ${group}`);
    if (g.source !== this.node.cfg.name) {
      throw new ApiError(409, `RC_ERR_STATE: ${this.node.cfg.name} is not the source of ${group}`);
    }
    const st = this.node.groupState.get(group);
    if (epoch <= st.epoch) {
      if (st.role === 'fenced') return { group, epoch: st.epoch, fenced: true, already: true };
      throw new ApiError(409, `RC_ERR_STATE: epoch ${epoch} is not newer than ${group}'s ${st.epoch} here`);
    }
    clearTimeout(this.holds.get(group));
    this.holds.delete(group);
    // quiesce() fences and persists it; a group fenced at an earlier start is only persisted here.
    if (!(await this.node.source?.quiesce(group, epoch, by))) {
      this.node.setGroupRole(group, 'fenced');
      await this.node.groupState.update(group, {
        epoch,
        role: 'fenced',
        reason: `${by} holds epoch ${epoch}`,
      });
    }
    return { group, epoch, fenced: true };
  }

  /** One step of a failback (src/node/failback.ts); the body is checked before anything changes. */
  async failback(step: string, body: unknown): Promise<unknown> {
    const parsed = parseFailbackStep(step, body);
    switch (parsed.step) {
      case 'demote':
        return this.failbacks.demote(
          parsed.groups,
          parsed.epoch,
          new Map(Object.entries(parsed.takeoverSeqs)),
        );
      case 'accept':
        return this.failbacks.accept(
          parsed.groups,
          parsed.epoch,
          parsed.source,
          new Map(Object.entries(parsed.bases)),
        );
      case 'promote':
        return this.failbacks.promote(
          parsed.groups,
          new Map(Object.entries(parsed.bases)),
          new Map(Object.entries(parsed.peer)),
        );
      case 'done':
        return this.failbacks.done(parsed.groups);
    }
  }

  /** Suspends a source group (operator): its writes go to the dirty bitmap, nothing is shipped. */
  async suspend(group: string): Promise<unknown> {
    this.sourceGroup(group);
    try {
      const r = await this.node.source!.suspend(group, 'operator');
      return {
        group,
        groups: r.groups,
        state: 'suspended',
        already: r.already,
        since: r.delta.since,
        reason: r.delta.reason,
      };
    } catch (e) {
      if (e instanceof RemcopyError) throw new ApiError(409, e.message);
      throw e;
    }
  }

  /** Resumes a suspended source group: the delta resync starts. */
  async resume(group: string, force: boolean): Promise<unknown> {
    this.sourceGroup(group);
    try {
      const r = await this.node.source!.resume(group, force);
      return { group, groups: r.groups, state: 'resync', dirtyBytes: r.dirtyBytes };
    } catch (e) {
      if (e instanceof RemcopyError) throw new ApiError(409, e.message);
      throw e;
    }
  }

  hold(group: string, ms: number): unknown {
    this.sourceGroup(group);
    clearTimeout(this.holds.get(group));
    this.node.writePath.hold(group);
    const t = setTimeout(() => this.unhold(group), ms);
    t.unref();
    this.holds.set(group, t);
    return { group, heldMs: ms };
  }

  unhold(group: string): unknown {
    this.sourceGroup(group);
    clearTimeout(this.holds.get(group));
    this.holds.delete(group);
    this.node.writePath.unhold(group);
    return { group, held: false };
  }

  async waitApplied(group: string, timeoutMs: number): Promise<unknown> {
    this.sourceGroup(group);
    try {
      const s = await this.node.source!.waitApplied(group, timeoutMs);
      return { group, seqApplied: s };
    } catch (e) {
      if (e instanceof RemcopyError) throw new ApiError(e.code === 'RC_ERR_TIMEOUT' ? 504 : 409, e.message);
      throw e;
    }
  }

  private sourceGroup(group: string): void {
    const g = this.node.topo.groups.get(group);
    if (!g) throw new ApiError(404, `no group ${group}`);
    if (g.source !== this.node.cfg.name || !this.node.source?.hasGroup(group)) {
      throw new ApiError(409, `RC_ERR_STATE: ${this.node.cfg.name} is not the active source of ${group}`);
    }
  }

  /** sha256 of each chunk of a volume; a target volume is read whole at one completed cut. */
  async checksums(volume: string, chunkBytes: number): Promise<unknown> {
    const v = this.node.volume(volume);
    if (!v) throw new ApiError(404, `no volume ${volume} on ${this.node.cfg.name}`);
    const scan = async (): Promise<string[]> => {
      const sums: string[] = [];
      for (let off = 0; off < v.sizeBytes; off += chunkBytes) {
        const len = Math.min(chunkBytes, v.sizeBytes - off);
        const data = await v.device.readForCopy(off, len);
        sums.push(createHash('sha256').update(data).digest('hex').slice(0, 32));
      }
      return sums;
    };
    const sums = v.gate ? await v.gate.read(scan) : await scan();
    return { volume, sizeBytes: v.sizeBytes, chunkBytes, role: v.role.kind, sums };
  }

  /** Reads ranges of the target volumes of a set's groups, all at one completed cut. */
  async readAtCut(
    set: string,
    reads: readonly { volume: string; offset: number; length: number }[],
  ): Promise<unknown> {
    const { topo, cfg } = this.node;
    const groups = setMembers(topo, set);
    if (!groups) throw new ApiError(404, `no consistency set or group ${set}`);
    const coord = this.node.target?.coordinatorOf(groups[0]!);
    if (
      !coord ||
      groups.some((g) => topo.groups.get(g)!.target !== cfg.name || setOf(topo, g) !== coord.set)
    ) {
      throw new ApiError(
        409,
        `RC_ERR_STATE: ${cfg.name} is not applying ${set} (not its target, or taken over)`,
      );
    }
    for (const g of groups) {
      const why = this.node.target?.halfSynced(g);
      if (why !== undefined) throw new ApiError(409, `RC_ERR_STATE: ${why}`);
    }
    const vols = reads.map((r) => {
      const v = this.node.volume(r.volume);
      if (!v || v.role.kind !== 'target' || !groups.includes(v.role.group)) {
        throw new ApiError(400, `${r.volume} is not a target volume of ${set} on ${cfg.name}`);
      }
      if (r.offset + r.length > v.sizeBytes) throw new ApiError(400, `${r.volume}: range past the end`);
      return v;
    });
    return coord.gate.read(async () => ({
      set,
      cut: coord.cutCompleted ?? null,
      reads: await Promise.all(
        reads.map(async (r, i) => ({
          ...r,
          data: (await vols[i]!.device.read(r.offset, r.length)).toString('base64'),
        })),
      ),
    }));
  }

  /** Marker requests (DESIGN.md §3.4): freeze / mark / thaw at a source, wait-marker / go at a target. */
  async markers(set: string, action: string, body: Record<string, unknown>): Promise<unknown> {
    const { topo } = this.node;
    if (setMembers(topo, set) === undefined) {
      throw new ApiError(404, `no consistency set or group ${set}`);
    }
    const id = (): string => {
      const v = body.id;
      if (typeof v !== 'string' || v.length === 0 || v.length > 100) {
        throw new ApiError(400, 'id must be a string of 1 to 100 characters');
      }
      return v;
    };
    const target = this.node.target?.markers().get(set);
    const needTarget = (): NonNullable<typeof target> => {
      if (target === undefined)
        throw new ApiError(409, `RC_ERR_STATE: ${this.node.cfg.name} is not a target of ${set}`);
      return target;
    };
    try {
      switch (action) {
        case 'freeze':
          return this.node.markerSource.freeze(
            set,
            id(),
            numberField(body, 'boundMs', 1, FREEZE_BOUND_MS_MAX),
          );
        case 'mark':
          return await this.node.markerSource.mark(
            set,
            id(),
            numberField(body, 'marker', 1, Number.MAX_SAFE_INTEGER),
          );
        case 'thaw':
          return this.node.markerSource.thaw(set, id());
        case 'wait-marker': {
          const marker = numberField(body, 'marker', 1, Number.MAX_SAFE_INTEGER);
          const h = await needTarget().waitFor(marker, numberField(body, 'timeoutMs', 1, HOLD_MS_MAX));
          if (h === undefined) {
            throw new ApiError(
              504,
              `RC_ERR_TIMEOUT: ${this.node.cfg.name} has not reached marker ${marker} of ${set}`,
            );
          }
          return { set, node: this.node.cfg.name, ...h };
        }
        case 'abandon':
          return await needTarget().abandon(numberField(body, 'marker', 1, Number.MAX_SAFE_INTEGER));
        case 'go':
          return await needTarget().go(numberField(body, 'marker', 1, Number.MAX_SAFE_INTEGER));
        case 'markers':
          return {
            set,
            node: this.node.cfg.name,
            source:
              this.node.markerSource.groupsOf(set).length > 0 ? this.node.markerSource.status() : undefined,
            target: target?.status(),
          };
        default:
          throw new ApiError(404, `no marker action ${action}`);
      }
    } catch (e) {
      if (e instanceof RemcopyError) throw new ApiError(409, e.message);
      throw e;
    }
  }

  /** The snapshots of a target volume: list, delete. */
  async snapshots(volume: string, action: string, body: Record<string, unknown>): Promise<unknown> {
    const snaps = this.node.target?.snapshotsOf(volume);
    if (snaps === undefined) {
      throw new ApiError(404, `${volume} is not a target volume with snapshots on ${this.node.cfg.name}`);
    }
    if (action === 'delete-snapshot') {
      const n = numberField(body, 'number', 1, Number.MAX_SAFE_INTEGER);
      try {
        await snaps.delete(n);
      } catch (e) {
        if (e instanceof RemcopyError) throw new ApiError(409, e.message);
        throw e;
      }
    }
    return { volume, snapshots: snaps.list(), usedBytes: snaps.usedBytes() };
  }

  metrics(): Promise<string> {
    return this.registry.metrics();
  }

  close(): void {
    for (const t of this.holds.values()) clearTimeout(t);
    this.holds.clear();
  }

  private defineMetrics(): void {
    const r = this.registry;
    const node = this.node;
    const gauge = (
      name: string,
      help: string,
      labelNames: string[],
      collect: (g: prom.Gauge) => void,
    ): void => {
      new prom.Gauge({
        name,
        help,
        labelNames,
        registers: [r],
        collect(this: prom.Gauge) {
          this.reset();
          collect(this);
        },
      });
    };
    const counter = (name: string, help: string, value: () => number): void => {
      new prom.Counter({
        name,
        help,
        registers: [r],
        collect(this: prom.Counter) {
          this.reset();
          this.inc(value());
        },
      });
    };
    // Process figures (memory, CPU, heap, GC pauses by kind, event-loop lag), same prefix.
    prom.collectDefaultMetrics({ register: r, prefix: 'remcopy_' });
    gauge(
      'remcopy_process_info',
      'Always 1; the labels say how this process runs: Node.js version, V8 flags given (NODE_PROCESS_V8_FLAGS), ' +
        'glibc tunables (NODE_PROCESS_MALLOC_TUNABLES)',
      ['nodejs', 'v8_flags', 'glibc_tunables'],
      (g) =>
        g.set(
          {
            nodejs: process.version,
            v8_flags: process.execArgv.join(' '),
            glibc_tunables: process.env.GLIBC_TUNABLES ?? '',
          },
          1,
        ),
    );
    gauge('remcopy_group_seq', 'Sequence numbers per group and stage', ['group', 'role', 'stage'], (g) => {
      for (const s of node.source?.status() ?? []) {
        for (const stage of ['written', 'durable', 'sent', 'arrived', 'applied'] as const) {
          const v = {
            written: s.seqWritten,
            durable: s.seqDurable,
            sent: s.seqSent,
            arrived: s.seqArrived,
            applied: s.seqApplied,
          }[stage];
          g.set({ group: s.name, role: 'source', stage }, v);
        }
      }
      for (const t of node.target?.status() ?? []) {
        g.set({ group: t.name, role: 'target', stage: 'arrived' }, t.seqArrived);
        g.set({ group: t.name, role: 'target', stage: 'applied' }, t.seqApplied);
      }
    });
    gauge(
      'remcopy_lag_records',
      'Records written at the source and not yet applied at the target',
      ['group'],
      (g) => {
        for (const s of node.source?.status() ?? []) g.set({ group: s.name }, s.lagRecords);
      },
    );
    gauge(
      'remcopy_lag_bytes',
      'Bytes written at the source and not yet applied at the target',
      ['group'],
      (g) => {
        for (const s of node.source?.status() ?? []) g.set({ group: s.name }, s.lagBytes);
      },
    );
    gauge(
      'remcopy_lag_seconds',
      'Age of the oldest write not yet applied at the target (the RPO)',
      ['group'],
      (g) => {
        for (const s of node.source?.status() ?? []) g.set({ group: s.name }, s.lagMs / 1000);
      },
    );
    gauge('remcopy_link_up', '1 when the group link session is up', ['group', 'role'], (g) => {
      for (const s of node.source?.status() ?? []) g.set({ group: s.name, role: 'source' }, s.linkUp ? 1 : 0);
      for (const t of node.target?.status() ?? []) g.set({ group: t.name, role: 'target' }, t.linkUp ? 1 : 0);
    });
    gauge('remcopy_epoch', 'Epoch of the group on this node', ['group'], (g) => {
      for (const s of [...(node.source?.status() ?? []), ...(node.target?.status() ?? [])])
        g.set({ group: s.name }, s.epoch);
    });
    gauge(
      'remcopy_initial_copy_bytes',
      'Initial copy progress: bytes journalled and the total',
      ['group', 'what'],
      (g) => {
        for (const s of node.source?.status() ?? []) {
          if (!s.copy) continue;
          g.set({ group: s.name, what: 'done' }, s.copy.bytesDone);
          g.set({ group: s.name, what: 'total' }, s.copy.bytesTotal);
        }
      },
    );
    new prom.Counter({
      name: 'remcopy_resync_bytes_total',
      help: 'Bytes journalled as delta resync copy records, per group, since the node started',
      labelNames: ['group'],
      registers: [r],
      collect(this: prom.Counter) {
        this.reset();
        for (const d of node.source?.deltaFigures() ?? []) this.inc({ group: d.group }, d.resyncBytesTotal);
      },
    });
    gauge(
      'remcopy_freeze_ms',
      'Freeze time of host writes for markers on this node (p50, p99, max)',
      ['q'],
      (g) => {
        const f = node.markerSource.freezeMs.summary();
        if (f.p50 !== undefined) g.set({ q: 'p50' }, f.p50);
        if (f.p99 !== undefined) g.set({ q: 'p99' }, f.p99);
        if (f.max !== undefined) g.set({ q: 'max' }, f.max);
      },
    );
    counter(
      'remcopy_markers_total',
      'Markers this node put into its groups',
      () => node.markerSource.stats.markers,
    );
    counter(
      'remcopy_freeze_bound_passed_total',
      'Freezes that passed their bound (thawed by the node, the cycle failed)',
      () => node.markerSource.stats.boundPassed,
    );
    gauge('remcopy_marker_reached', 'Last marker whose snapshots were taken here, per set', ['set'], (g) => {
      for (const [set, m] of node.target?.markers() ?? []) g.set({ set }, m.status().reached);
    });
    gauge('remcopy_snapshot_bytes', 'Bytes used by the snapshots of a target volume', ['volume'], (g) => {
      for (const m of node.target?.markers().values() ?? []) {
        for (const s of m.status().snapshots) g.set({ volume: s.volume }, s.usedBytes);
      }
    });
    gauge(
      'remcopy_consistent_point_age_seconds',
      'Age of the newest point every target of the set snapshotted (the RPO), on the coordinator node',
      ['set'],
      (g) => {
        for (const c of node.cycles) {
          const age = c.status().consistentPointAgeMs;
          if (age !== undefined) g.set({ set: c.set }, age / 1000);
        }
      },
    );
    gauge('remcopy_dirty_bytes', 'Bytes of source volumes marked in the dirty bitmaps', ['group'], (g) => {
      for (const d of node.source?.deltaFigures() ?? []) g.set({ group: d.group }, d.dirtyBytes);
    });
    gauge('remcopy_pair_suspended', '1 while the group is suspended at this source', ['group'], (g) => {
      for (const d of node.source?.deltaFigures() ?? []) g.set({ group: d.group }, d.suspended ? 1 : 0);
    });
    counter(
      'remcopy_writes_tracked_total',
      'Host writes of suspended groups tracked in the dirty bitmap instead of the journal',
      () => node.writePath.stats.trackedWrites,
    );
    counter(
      'remcopy_copy_reads_retried_total',
      'Initial-copy and resync chunk reads read again because a host write reached the chunk meanwhile',
      () => node.writePath.stats.copyReadsRetried,
    );
    gauge('remcopy_journal_bytes', 'Journal bytes used and the limit', ['journal', 'what'], (g) => {
      const u = node.journal.usage();
      g.set({ journal: 'node', what: 'used' }, u.usedBytes);
      g.set({ journal: 'node', what: 'max' }, u.bytesMax);
      for (const t of node.target?.status() ?? []) {
        g.set({ journal: `in/${t.name}`, what: 'used' }, t.journal.usedBytes);
        g.set({ journal: `in/${t.name}`, what: 'max' }, t.journal.bytesMax);
      }
    });
    counter(
      'remcopy_journal_direct_bytes_total',
      'Bytes of records this node journalled with O_DIRECT (large batches into new segments)',
      () => node.journal.directBytesWritten,
    );
    new prom.Counter({
      name: 'remcopy_volume_copy_direct_bytes_total',
      help: 'Bytes of copy I/O (initial copy and verify reads, large copy-record writes) that bypassed the page cache, per volume',
      labelNames: ['volume', 'op'],
      registers: [r],
      collect(this: prom.Counter) {
        this.reset();
        for (const v of node.volumeList()) {
          if (!(v.device instanceof FileBlockDevice)) continue;
          const { read, written } = v.device.directBytes;
          this.inc({ volume: v.name, op: 'read' }, read);
          this.inc({ volume: v.name, op: 'write' }, written);
        }
      },
    });
    gauge('remcopy_activity_log_extents', 'Volume extents in the activity log now', [], (g) =>
      g.set(node.activityLog.size),
    );
    counter(
      'remcopy_activity_log_writes_total',
      'Durable writes of the activity log file (a host write to an extent new to the log waits for one)',
      () => node.activityLog.stats.writes,
    );
    counter(
      'remcopy_activity_log_full_waits_total',
      'Host writes that waited for a journal sync because no extent could leave the full activity log',
      () => node.activityLog.stats.fullWaits,
    );
    counter(
      'remcopy_records_journalled_total',
      'Host and copy records journalled by this node',
      () => node.writePath.stats.recordsAppended,
    );
    counter(
      'remcopy_throttle_delay_seconds_total',
      'Time host writes waited for journal space',
      () => node.writePath.stats.throttleDelayMsTotal / 1000,
    );
    counter(
      'remcopy_writes_rejected_journal_full_total',
      'Host writes failed with ENOSPC after the throttle delay',
      () => node.writePath.stats.rejectedJournalFull,
    );
    gauge('remcopy_apply_cycles', 'Apply cycles completed per consistency set (counter)', ['set'], (g) => {
      for (const [set, c] of node.target?.coordinators() ?? []) g.set({ set }, c.stats.cycles);
    });
    gauge('remcopy_applied_bytes', 'Bytes applied to target volumes per set (counter)', ['set'], (g) => {
      for (const [set, c] of node.target?.coordinators() ?? []) g.set({ set }, c.stats.bytesApplied);
    });
  }
}
