/**
 * `remcopy checkpoint` and `remcopy snapshots` (DESIGN.md §3.4, §5): one consistent point across
 * every source and target node of a consistency set, and the snapshots it leaves at the targets.
 *
 * checkpoint: runs the coordinator (src/mgmt/checkpoint.ts) from this process against the nodes'
 *   APIs, with each group in the direction in force (a failed-back group is asked at its current
 *   source), and prints the marker number N; every target volume of the set then has `VOLUME@N`.
 * snapshots: lists the snapshots of every target volume of the set; `--delete N` deletes marker N's
 *   snapshots everywhere; `--keep K` deletes all but the newest K (the config's `keepSnapshots`
 *   does the same after each marker).
 */
import { ExitCode, RemcopyError } from '../core/errors.js';
import type { Topology } from '../node/config.js';
import { loadConfig, setMembers } from '../node/config.js';
import { checkpoint } from '../mgmt/checkpoint.js';
import { callNode, liveGroup } from './direction.js';

export interface CheckpointOptions {
  set: string;
  timeout?: string;
  json?: boolean;
}

function positiveInt(v: string | undefined, what: string, dflt: number): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(n) || n < 1) {
    throw new RemcopyError(
      'RC_ERR_USAGE',
      `${what} must be a positive whole number, got ${JSON.stringify(v)}`,
    );
  }
  return n;
}

/** The config's topology with each group of `set` turned the way it runs now. */
async function liveTopology(topo: Topology, set: string): Promise<Topology> {
  const groups = setMembers(topo, set);
  if (groups === undefined)
    throw new RemcopyError('RC_ERR_USAGE', `no consistency set ${set} in ${topo.file}`);
  const live = await Promise.all(groups.map((g) => liveGroup(topo, g)));
  const map = new Map(topo.groups);
  for (const l of live) map.set(l.g.name, l.g);
  return { ...topo, groups: map };
}

export async function runCheckpoint(configFile: string, o: CheckpointOptions): Promise<number> {
  const topo = loadConfig(configFile);
  const timeoutMs = positiveInt(o.timeout, '--timeout', 60_000);
  const live = await liveTopology(topo, o.set);
  const r = await checkpoint(
    live,
    o.set,
    (node, method, path, body) => callNode(topo, node, method, path, body),
    {
      reachTimeoutMs: timeoutMs,
      onStep: o.json ? undefined : (s) => process.stderr.write(`${s}\n`),
    },
  );
  if (o.json) {
    process.stdout.write(`${JSON.stringify(r)}\n`);
  } else {
    const freeze = Object.entries(r.freezeMs)
      .map(([n, ms]) => `${n} ${ms.toFixed(2)} ms`)
      .join(', ');
    process.stdout.write(
      `${r.marker}\n` +
        `checkpoint ${r.marker} of ${o.set}: snapshots @${r.marker} on ${Object.keys(r.targets).join(', ')}; ` +
        `writes frozen ${freeze}; ${r.totalMs.toFixed(0)} ms in all\n`,
    );
  }
  return ExitCode.ok;
}

export interface SnapshotsOptions {
  set: string;
  delete?: string;
  keep?: string;
  json?: boolean;
}

interface SnapshotList {
  volume: string;
  snapshots: { number: number; createdAtMs: number; usedBytes: number }[];
  usedBytes: number;
}

export async function runSnapshots(configFile: string, o: SnapshotsOptions): Promise<number> {
  const topo = loadConfig(configFile);
  if (o.delete !== undefined && o.keep !== undefined) {
    throw new RemcopyError('RC_ERR_USAGE', 'give at most one of --delete N and --keep K');
  }
  const del = o.delete === undefined ? undefined : positiveInt(o.delete, '--delete', 1);
  const keep = o.keep === undefined ? undefined : positiveInt(o.keep, '--keep', 1);
  const live = await liveTopology(topo, o.set);
  const groups = setMembers(live, o.set)!;
  const targets: { node: string; volume: string }[] = [];
  for (const g of groups.map((n) => live.groups.get(n)!)) {
    for (const dst of g.pairs.values()) targets.push({ node: g.target, volume: dst });
  }
  const out: (SnapshotList & { node: string })[] = [];
  let deleted = 0;
  for (const t of targets) {
    const path = `/v1/volumes/${encodeURIComponent(t.volume)}`;
    let list = (await callNode(topo, t.node, 'GET', `${path}/snapshots`)) as SnapshotList;
    const doomed =
      del !== undefined
        ? list.snapshots.filter((s) => s.number === del)
        : keep !== undefined
          ? list.snapshots.slice(0, Math.max(0, list.snapshots.length - keep))
          : [];
    for (const s of doomed) {
      list = (await callNode(topo, t.node, 'POST', `${path}/delete-snapshot`, {
        number: s.number,
      })) as SnapshotList;
      deleted++;
    }
    out.push({ node: t.node, ...list });
  }
  if (del !== undefined && deleted === 0) {
    throw new RemcopyError('RC_ERR_STATE', `no target volume of ${o.set} has a snapshot @${del}`);
  }
  if (o.json) {
    process.stdout.write(`${JSON.stringify({ set: o.set, volumes: out })}\n`);
    return ExitCode.ok;
  }
  for (const v of out) {
    const nums = v.snapshots.map((s) => `@${s.number}`).join(' ') || '(none)';
    process.stdout.write(`${v.node} ${v.volume}: ${nums}  ${(v.usedBytes / 1048576).toFixed(1)} MiB used\n`);
  }
  return ExitCode.ok;
}
