/**
 * `remcopy takeover` and `remcopy verify` (DESIGN.md §3.7, §5): management commands that talk to
 * the nodes of a configuration through their APIs.
 *
 * takeover: asks the target node of the group (or of every group of the set) to finish the
 *   current cut, bump the epoch and make its volumes writable; prints what it reached.
 * suspend / resume: ask the source node of the group to track writes in its dirty bitmap instead
 *   of shipping them, and to go back to shipping with a delta resync (DESIGN.md §3.6).
 * verify: holds the group's new host writes at the source (bounded), waits until the target has
 *   applied everything written so far, compares per-chunk checksums of every pair at that one
 *   point, releases the hold, and names any range that differs (exit 1).
 */
import { ExitCode, RemcopyError } from '../core/errors.js';
import type { Topology } from '../node/config.js';
import { loadConfig, setMembers } from '../node/config.js';
import { setNodes } from '../mgmt/checkpoint.js';
import { runSetTakeover } from './markers.js';
import { callNode, liveGroup } from './direction.js';

export interface TakeoverOptions {
  group?: string;
  set?: string;
  snapshot?: string;
  force?: boolean;
  json?: boolean;
}

export async function runTakeover(configFile: string, o: TakeoverOptions): Promise<number> {
  const topo = loadConfig(configFile);
  if ((o.group === undefined) === (o.set === undefined)) {
    throw new RemcopyError('RC_ERR_USAGE', 'give exactly one of --group G or --set S');
  }
  if (o.snapshot !== undefined && o.set === undefined) {
    throw new RemcopyError('RC_ERR_USAGE', '--snapshot N is for a set (--set S)');
  }
  if (o.set !== undefined && setMembers(topo, o.set) !== undefined) {
    const { sources, targets } = setNodes(topo, o.set);
    if (o.snapshot !== undefined || sources.length > 1 || targets.length > 1) {
      if (o.force)
        throw new RemcopyError('RC_ERR_USAGE', '--force does not apply to a takeover at a snapshot');
      return runSetTakeover(configFile, { set: o.set, snapshot: o.snapshot, json: o.json });
    }
  }
  const groups = o.set !== undefined ? topo.consistencySets.get(o.set) : [o.group!];
  if (!groups) throw new RemcopyError('RC_ERR_USAGE', `no consistency set ${o.set} in ${topo.file}`);
  if (!topo.groups.has(groups[0]!))
    throw new RemcopyError('RC_ERR_USAGE', `no group ${groups[0]} in ${topo.file}`);
  const lives = await Promise.all(groups.map((name) => liveGroup(topo, name)));
  for (const l of lives) {
    const r = l.reports.get(l.g.source);
    if (r?.role === 'promoted') {
      throw new RemcopyError(
        'RC_ERR_STATE',
        `${l.g.name} was taken over already: ${l.g.source} is its source (epoch ${r.epoch}); \`remcopy failback\` makes ${l.g.target} its target again`,
      );
    }
  }
  const target = topo.nodes.get(lives[0]!.g.target)!;
  const path =
    o.set !== undefined
      ? `/v1/sets/${encodeURIComponent(o.set)}/takeover`
      : `/v1/groups/${encodeURIComponent(o.group!)}/takeover`;
  // A planned takeover (the source answers): hold its writes, let the target apply all of them,
  // take over, and fence the source, so that nothing it acknowledged is lost.
  const sources = lives.map((l) => ({ name: l.g.name, node: l.g.source, report: l.reports.get(l.g.source) }));
  // Otherwise (a source down, cut off, suspended, resyncing) it is the disaster case: the target
  // takes over at its last cut, as far as its own checks allow.
  const planned =
    !o.force &&
    sources.every(
      (s) => s.report?.role === 'source' && s.report.state === 'pair' && s.report.linkUp === true,
    );
  const holdMs = 60_000;
  const enc = (name: string): string => encodeURIComponent(name);
  let res: { groups: { group: string; epoch: number; seqApplied: number; cut?: { writeTimeUs: number } }[] };
  if (planned) {
    for (const s of sources)
      await callNode(topo, s.node, 'POST', `/v1/groups/${enc(s.name)}/hold`, { ms: holdMs });
    try {
      for (const s of sources) {
        await callNode(topo, s.node, 'POST', `/v1/groups/${enc(s.name)}/wait-applied`, {
          timeoutMs: holdMs - 10_000,
        });
      }
      res = (await callNode(topo, target.name, 'POST', path, { force: false })) as typeof res;
    } catch (e) {
      for (const s of sources) {
        await callNode(topo, s.node, 'POST', `/v1/groups/${enc(s.name)}/unhold`, {}).catch(() => {});
      }
      throw e;
    }
    for (const s of sources) {
      const epoch = res.groups.find((r) => r.group === s.name)!.epoch;
      await callNode(topo, s.node, 'POST', `/v1/groups/${enc(s.name)}/fence`, {
        epoch,
        by: `planned takeover at ${target.name}`,
      });
    }
  } else {
    res = (await callNode(topo, target.name, 'POST', path, { force: o.force === true })) as typeof res;
  }
  if (o.json) process.stdout.write(`${JSON.stringify(res, null, 2)}\n`);
  else {
    for (const g of res.groups) {
      process.stdout.write(
        `takeover ${g.group}: ${target.name} is now the source (epoch ${g.epoch}), applied up to seq ${g.seqApplied}` +
          (g.cut ? ` at cut time ${g.cut.writeTimeUs}` : '') +
          (planned ? ` (planned: ${sources[0]!.node} is fenced, nothing lost)` : '') +
          '\n',
      );
    }
  }
  return ExitCode.ok;
}

export interface PairOptions {
  group: string;
  force?: boolean;
  json?: boolean;
}

/** `remcopy suspend` / `remcopy resume` at the group's source node. */
export async function runPairCommand(
  configFile: string,
  action: 'suspend' | 'resume',
  o: PairOptions,
): Promise<number> {
  const topo = loadConfig(configFile);
  const { g } = await liveGroup(topo, o.group);
  const path = `/v1/groups/${encodeURIComponent(o.group)}/${action}`;
  const body = action === 'resume' ? { force: o.force === true } : {};
  const res = (await callNode(topo, g.source, 'POST', path, body)) as {
    already?: boolean;
    since?: string;
    dirtyBytes?: number;
    groups?: string[];
  };
  const others = (res.groups ?? []).filter((n) => n !== o.group);
  const withSet = others.length > 0 ? ` (with ${others.join(', ')} of its consistency set)` : '';
  if (o.json) process.stdout.write(`${JSON.stringify(res, null, 2)}\n`);
  else if (action === 'suspend') {
    process.stdout.write(
      `suspend ${o.group}: ${res.already ? 'was suspended already' : 'suspended'}${withSet} since ${res.since}; writes at ${g.source} are tracked in the dirty bitmap\n`,
    );
  } else {
    process.stdout.write(
      `resume ${o.group}${withSet}: resync of ${res.dirtyBytes} dirty bytes started; \`remcopy status\` shows its progress\n`,
    );
  }
  return ExitCode.ok;
}

export interface VerifyOptions {
  group: string;
  chunk?: string;
  timeout?: string;
  json?: boolean;
}

export interface VerifyResult {
  group: string;
  seq: number;
  pairs: {
    source: string;
    target: string;
    chunkBytes: number;
    chunks: number;
    mismatches: { offset: number; length: number }[];
  }[];
}

export async function runVerify(configFile: string, o: VerifyOptions): Promise<number> {
  const topo = loadConfig(configFile);
  const r = await verifyGroup(topo, o.group, Number(o.chunk ?? 1048576), Number(o.timeout ?? 30000));
  const bad = r.pairs.reduce((n, p) => n + p.mismatches.length, 0);
  if (o.json) process.stdout.write(`${JSON.stringify({ ...r, ok: bad === 0 }, null, 2)}\n`);
  else {
    for (const p of r.pairs) {
      process.stdout.write(
        `${p.source} -> ${p.target}: ${p.chunks} chunks compared, ${p.mismatches.length} differ\n`,
      );
      for (const m of p.mismatches)
        process.stdout.write(`  differs: bytes ${m.offset}..${m.offset + m.length - 1}\n`);
    }
    process.stdout.write(
      bad === 0 ? `verify ${o.group}: OK at seq ${r.seq}\n` : `verify ${o.group}: MISMATCH\n`,
    );
  }
  return bad === 0 ? ExitCode.ok : ExitCode.failure;
}

export async function verifyGroup(
  topo: Topology,
  group: string,
  chunkBytes: number,
  timeoutMs: number,
): Promise<VerifyResult> {
  if (!topo.groups.has(group)) throw new RemcopyError('RC_ERR_USAGE', `no group ${group} in ${topo.file}`);
  if (!Number.isSafeInteger(chunkBytes) || chunkBytes < 4096 || chunkBytes % 4096 !== 0) {
    throw new RemcopyError('RC_ERR_USAGE', `--chunk must be a multiple of 4096 bytes, got ${chunkBytes}`);
  }
  if (!Number.isSafeInteger(timeoutMs) || timeoutMs < 1 || timeoutMs > 120_000) {
    throw new RemcopyError('RC_ERR_USAGE', `--timeout must be 1..120000 ms, got ${timeoutMs}`);
  }
  const { g } = await liveGroup(topo, group);
  const enc = encodeURIComponent(group);
  await callNode(topo, g.source, 'POST', `/v1/groups/${enc}/hold`, { ms: timeoutMs + 10_000 });
  try {
    const { seqApplied } = (await callNode(topo, g.source, 'POST', `/v1/groups/${enc}/wait-applied`, {
      timeoutMs,
    })) as {
      seqApplied: number;
    };
    const pairs = [];
    for (const [src, dst] of g.pairs) {
      const sums = async (node: string, vol: string) =>
        (await callNode(
          topo,
          node,
          'GET',
          `/v1/volumes/${encodeURIComponent(vol)}/checksums?chunk=${chunkBytes}`,
        )) as {
          sums: string[];
          sizeBytes: number;
        };
      const [a, b] = await Promise.all([sums(g.source, src), sums(g.target, dst)]);
      const mismatches: { offset: number; length: number }[] = [];
      const n = Math.max(a.sums.length, b.sums.length);
      for (let i = 0; i < n; i++) {
        if (a.sums[i] === b.sums[i]) continue;
        const offset = i * chunkBytes;
        const last = mismatches[mismatches.length - 1];
        const length = Math.min(chunkBytes, Math.max(a.sizeBytes, b.sizeBytes) - offset);
        if (last && last.offset + last.length === offset) last.length += length;
        else mismatches.push({ offset, length });
      }
      pairs.push({
        source: `${g.source}:${src}`,
        target: `${g.target}:${dst}`,
        chunkBytes,
        chunks: n,
        mismatches,
      });
    }
    return { group, seq: seqApplied, pairs };
  } finally {
    await callNode(topo, g.source, 'POST', `/v1/groups/${enc}/unhold`, {}).catch(() => {});
  }
}
