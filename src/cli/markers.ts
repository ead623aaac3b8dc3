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
import type { LiveGroup } from './direction.js';
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
  return (await liveSet(topo, set)).live;
}

/** Each group of `set` as it stands now (LiveGroup), and the topology they make. */
async function liveSet(topo: Topology, set: string): Promise<{ live: Topology; lives: LiveGroup[] }> {
  const groups = setMembers(topo, set);
  if (groups === undefined)
    throw new RemcopyError('RC_ERR_USAGE', `no consistency set ${set} in ${topo.file}`);
  const lives = await Promise.all(groups.map((g) => liveGroup(topo, g)));
  const map = new Map(topo.groups);
  for (const l of lives) map.set(l.g.name, l.g);
  return { live: { ...topo, groups: map }, lives };
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
      .map(([n, ms]) => `${n} ${ms.toFixed(2)} ms (answered in ${r.freezeAnswerMs[n]!.toFixed(2)} ms)`)
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

export interface SetTakeoverOptions {
  set: string;
  snapshot?: string;
  json?: boolean;
}

interface MarkersReport {
  history: { marker: number; outcome: string; seqs?: Record<string, number> }[];
  snapshots: { volume: string; numbers: number[] }[];
}

/**
 * The snapshot a set takeover must use when some groups of the set are promoted already (`done`,
 * with the marker each was taken over at): theirs, which all must share, and which `asked`
 * (--snapshot) must name if given. Undefined when nothing is promoted yet (the caller picks).
 */
export function resumeSnapshot(
  set: string,
  done: readonly { group: string; marker: number | undefined }[],
  asked: number | undefined,
): number | undefined {
  if (done.length === 0) return asked;
  const own = done.filter((d) => d.marker === undefined).map((d) => d.group);
  if (own.length > 0) {
    throw new RemcopyError(
      'RC_ERR_STATE',
      `${own.join(', ')} of ${set} were taken over at their own cut, not at a snapshot of the set: no snapshot makes one image with them; take over the rest per group (--group)`,
    );
  }
  const markers = [...new Set(done.map((d) => d.marker!))];
  const list = done.map((d) => `${d.group} at ${d.marker}`).join(', ');
  if (markers.length > 1) {
    throw new RemcopyError(
      'RC_ERR_STATE',
      `groups of ${set} were taken over at different snapshots (${list})`,
    );
  }
  if (asked !== undefined && asked !== markers[0]) {
    throw new RemcopyError(
      'RC_ERR_STATE',
      `--snapshot ${asked} does not match the takeover already done (${list}): the rest of ${set} must be taken over at snapshot ${markers[0]} to make one image with them`,
    );
  }
  return markers[0];
}

/**
 * `remcopy takeover --set S` for a set whose groups span nodes (or with `--snapshot N`): every
 * target node of the set is promoted at one snapshot, the only image all of them agree on.
 *
 * Planned (every source answers, in pair, link up): the sources' writes are held, a checkpoint
 * takes snapshot N of everything they acknowledged, every target is promoted at N, the sources
 * are fenced; nothing is lost. Otherwise (a disaster): N is the newest snapshot every target still
 * keeps (or `--snapshot N`); writes the targets applied past it are undone, and their chunks are
 * in the dirty bitmaps a failback copies back.
 */
export async function runSetTakeover(configFile: string, o: SetTakeoverOptions): Promise<number> {
  const topo = loadConfig(configFile);
  const asked = o.snapshot === undefined ? undefined : positiveInt(o.snapshot, '--snapshot', 1);
  const { live, lives } = await liveSet(topo, o.set);
  const done0 = lives.filter((l) => l.reports.get(l.g.source)?.role === 'promoted');
  const pending = lives.filter((l) => !done0.includes(l));
  if (pending.length === 0) {
    throw new RemcopyError('RC_ERR_STATE', `every group of ${o.set} was taken over already`);
  }
  // A takeover that stopped part-way goes on at the snapshot the groups it promoted are at.
  const resumed = resumeSnapshot(
    o.set,
    done0.map((l) => ({ group: l.g.name, marker: l.reports.get(l.g.source)?.takeoverMarker })),
    asked,
  );
  const groups = pending.map((l) => l.g);
  const sources = [...new Set(groups.map((g) => g.source))];
  const targets = [...new Set(groups.map((g) => g.target))];
  const call = (node: string, method: 'GET' | 'POST', path: string, body?: unknown): Promise<unknown> =>
    callNode(topo, node, method, path, body);
  const enc = encodeURIComponent;
  const planned =
    resumed === undefined &&
    pending.every((l) => {
      const r = l.reports.get(l.g.source);
      return r?.role === 'source' && r.state === 'pair' && r.linkUp === true;
    });
  const say = (s: string): void => {
    if (!o.json) process.stderr.write(`${s}\n`);
  };
  let marker: number;
  if (planned) {
    say(
      `${sources.join(', ')} answer: a planned takeover (writes held, a last checkpoint, then the sources are fenced)`,
    );
    const holdMs = 60_000;
    for (const g of groups) await call(g.source, 'POST', `/v1/groups/${enc(g.name)}/hold`, { ms: holdMs });
    try {
      marker = (await checkpoint(live, o.set, call, { reachTimeoutMs: holdMs - 10_000, onStep: say })).marker;
    } catch (e) {
      for (const g of groups)
        await call(g.source, 'POST', `/v1/groups/${enc(g.name)}/unhold`, {}).catch(() => {});
      throw e;
    }
  } else {
    const usable = await Promise.all(
      targets.map(async (node) => {
        const r = ((await call(node, 'GET', `/v1/sets/${enc(o.set)}/markers`)) as { target?: MarkersReport })
          .target;
        if (r === undefined)
          throw new RemcopyError('RC_ERR_STATE', `${node} is not a target of ${o.set} now`);
        const mine = groups.filter((g) => g.target === node).map((g) => g.name);
        return r.history
          .filter((h) => h.outcome === 'snapshot' && mine.every((g) => h.seqs?.[g] !== undefined))
          .map((h) => h.marker)
          .filter((m) => r.snapshots.every((v) => v.numbers.includes(m)));
      }),
    );
    const common = usable.reduce((a, b) => a.filter((m) => b.includes(m)));
    if (resumed !== undefined && !common.includes(resumed)) {
      throw new RemcopyError(
        'RC_ERR_STATE',
        `snapshot ${resumed} of ${o.set} is not on every target (on all of ${targets.join(', ')}: ${common.join(', ') || 'none'})`,
      );
    }
    if (common.length === 0) {
      throw new RemcopyError(
        'RC_ERR_STATE',
        `no snapshot of ${o.set} is on every target (${targets.join(', ')}): there is no image of the whole set to take over at; a takeover per group (--group) promotes each at its own cut, not consistent with the others`,
      );
    }
    marker = resumed ?? Math.max(...common);
    say(`takeover of ${o.set} at snapshot ${marker} (the newest on every target) on ${targets.join(', ')}`);
  }
  const done: {
    node: string;
    groups: { group: string; epoch: number; seqApplied: number; dirtyBytes: number }[];
  }[] = [];
  let failure: string | undefined;
  for (const node of targets) {
    try {
      done.push(
        (await call(node, 'POST', `/v1/sets/${enc(o.set)}/takeover`, {
          snapshot: marker,
        })) as (typeof done)[number],
      );
    } catch (e) {
      failure = (e as Error).message;
      break;
    }
  }
  if (planned) {
    // The old source of a promoted group is fenced at once; the others' writes go on as before.
    const epochs = new Map(done.flatMap((d) => d.groups).map((x) => [x.group, x.epoch]));
    for (const g of groups) {
      const epoch = epochs.get(g.name);
      if (epoch === undefined) {
        await call(g.source, 'POST', `/v1/groups/${enc(g.name)}/unhold`, {}).catch(() => {});
      } else {
        await call(g.source, 'POST', `/v1/groups/${enc(g.name)}/fence`, {
          epoch,
          by: `planned takeover of ${o.set}`,
        });
      }
    }
  }
  if (failure !== undefined) {
    const ok = done.map((d) => d.node);
    throw new RemcopyError(
      'RC_ERR_STATE',
      `${failure}; promoted at snapshot ${marker} so far: ${ok.join(', ') || 'none'} (run the takeover again: it goes on at snapshot ${marker})`,
    );
  }
  if (o.json)
    process.stdout.write(`${JSON.stringify({ set: o.set, snapshot: marker, planned, nodes: done })}\n`);
  else {
    for (const d of done) {
      for (const g of d.groups) {
        process.stdout.write(
          `takeover ${g.group}: ${d.node} is now the source (epoch ${g.epoch}) at snapshot ${marker}, seq ${g.seqApplied}` +
            (planned
              ? ` (planned: its old source is fenced, nothing lost)`
              : `; ${g.dirtyBytes} bytes to copy back at failback`) +
            '\n',
        );
      }
    }
  }
  return ExitCode.ok;
}
