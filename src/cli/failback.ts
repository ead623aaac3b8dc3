/**
 * `remcopy failback --config F --group G | --set S` (DESIGN.md §3.7): after a takeover, the node
 * that took over stays the source and the old source becomes its target; only the chunks either
 * side changed since the takeover are copied. The steps and why each is safe to repeat are in
 * src/node/failback.ts; this drives them through the two nodes' APIs:
 *
 *   status of both nodes -> demote (old source) -> accept (old source) -> promote (new source)
 *   -> done (old source)
 *
 * A failback cut short (a node down, the command killed) is finished by running it again. A set
 * whose groups span nodes runs these steps for each pair of nodes in turn.
 */
import { ExitCode, RemcopyError } from '../core/errors.js';
import { loadConfig } from '../node/config.js';
import type { DemotedGroup } from '../node/failback.js';
import type { LiveGroup } from './direction.js';
import { callNode, liveGroup } from './direction.js';

export interface FailbackOptions {
  group?: string;
  set?: string;
  json?: boolean;
}

interface PromoteResult {
  groups: { group: string; epoch: number; base: number; ownDirtyBytes: number; dirtyBytes: number }[];
  already: boolean;
}

export async function runFailback(configFile: string, o: FailbackOptions): Promise<number> {
  const topo = loadConfig(configFile);
  if ((o.group === undefined) === (o.set === undefined)) {
    throw new RemcopyError('RC_ERR_USAGE', 'give exactly one of --group G or --set S');
  }
  let groups: string[];
  if (o.set !== undefined) {
    const set = topo.consistencySets.get(o.set);
    if (!set) throw new RemcopyError('RC_ERR_USAGE', `no consistency set ${o.set} in ${topo.file}`);
    groups = set;
  } else {
    if (!topo.groups.has(o.group!))
      throw new RemcopyError('RC_ERR_USAGE', `no group ${o.group} in ${topo.file}`);
    const set = [...topo.consistencySets].find(([, members]) => members.includes(o.group!));
    if (set && set[1].length > 1) {
      throw new RemcopyError(
        'RC_ERR_USAGE',
        `${o.group} is in consistency set ${set[0]}, whose groups change direction together: use --set ${set[0]}`,
      );
    }
    groups = [o.group!];
  }
  const lives = await Promise.all(groups.map((g) => liveGroup(topo, g)));
  // A set whose groups span nodes (taken over at a snapshot, `takeover --set`) fails back pair of
  // nodes by pair of nodes; each step is repeatable, so a run cut short is finished by another.
  const byPair = new Map<string, LiveGroup[]>();
  for (const l of lives) {
    const key = `${l.g.source}>${l.g.target}`;
    byPair.set(key, [...(byPair.get(key) ?? []), l]);
  }
  for (const pair of byPair.values()) {
    await failbackPair(
      topo,
      pair,
      pair.map((l) => l.g.name),
      o,
    );
  }
  return ExitCode.ok;
}

/** The failback of `groups` (`lives`), which all replicate from one node to one other now. */
async function failbackPair(
  topo: ReturnType<typeof loadConfig>,
  lives: LiveGroup[],
  groups: string[],
  o: FailbackOptions,
): Promise<void> {
  const { source: newSource, target: oldSource } = lives[0]!.g;
  const reports = lives.map((l) => ({ live: l, report: l.reports.get(newSource) }));
  const unreachable = [newSource, oldSource].filter((n) => lives[0]!.errors.has(n));
  if (unreachable.length > 0) {
    throw new RemcopyError(
      'RC_ERR_STATE',
      `failback needs both nodes: ${unreachable.map((n) => lives[0]!.errors.get(n)).join('; ')}`,
    );
  }
  const promoted = reports.filter((r) => r.report?.role === 'promoted');
  if (promoted.length === 0) return finished(topo, lives, groups, o);
  if (promoted.length < reports.length) {
    throw new RemcopyError(
      'RC_ERR_STATE',
      `only ${promoted.map((r) => r.live.g.name).join(', ')} of ${groups.join(', ')} were taken over at ${newSource}`,
    );
  }
  const epoch = Math.max(...promoted.map((r) => r.report!.epoch));
  const demoted = (await callNode(topo, oldSource, 'POST', '/v1/failback/demote', {
    groups,
    epoch,
    takeoverSeqs: Object.fromEntries(promoted.map((r) => [r.live.g.name, r.report!.takeoverSeq ?? 0])),
  })) as { groups: DemotedGroup[] };
  const wanted = Object.fromEntries(
    promoted.map((r) => {
      const d = demoted.groups.find((x) => x.group === r.live.g.name)!;
      return [r.live.g.name, Math.max(d.lastSeq, r.report!.seqWritten ?? 0, r.report!.takeoverSeq ?? 0, 1)];
    }),
  );
  // The base the old source accepted is the one in force (a repeated accept keeps the first's).
  const accepted = (await callNode(topo, oldSource, 'POST', '/v1/failback/accept', {
    groups,
    epoch,
    source: newSource,
    bases: wanted,
  })) as { bases: Record<string, number> };
  const bases = accepted.bases;
  const promotedRes = (await callNode(topo, newSource, 'POST', '/v1/failback/promote', {
    groups,
    bases,
    peer: Object.fromEntries(
      demoted.groups.map((d) => [d.group, { chunkBytes: d.chunkBytes, bitmaps: d.bitmaps }]),
    ),
  })) as PromoteResult;
  await callNode(topo, oldSource, 'POST', '/v1/failback/done', { groups });
  if (o.json) {
    process.stdout.write(
      `${JSON.stringify({ source: newSource, target: oldSource, epoch, demoted: demoted.groups.map(({ bitmaps: _, ...d }) => d), promoted: promotedRes.groups })}\n`,
    );
    return;
  }
  for (const p of promotedRes.groups) {
    const d = demoted.groups.find((x) => x.group === p.group)!;
    process.stdout.write(
      `failback ${p.group}: ${newSource} is the source, ${oldSource} its target (epoch ${p.epoch}); ` +
        `resync of ${p.dirtyBytes} bytes started (changed since the takeover: ${p.ownDirtyBytes} at ${newSource}, ` +
        `${d.dirtyBytes} at ${oldSource}); \`remcopy status\` shows its progress\n`,
    );
  }
}

/** Nothing taken over: a failback done already (finish its last step), or none to do. */
async function finished(
  topo: ReturnType<typeof loadConfig>,
  lives: LiveGroup[],
  groups: string[],
  o: FailbackOptions,
): Promise<void> {
  const { source, target } = lives[0]!.g;
  const t = lives.map((l) => l.reports.get(target));
  const s = lives.map((l) => l.reports.get(source));
  if (
    !t.every((r) => r?.role === 'target') ||
    !s.every((r) => r?.role === 'source' && r.state !== 'fenced')
  ) {
    throw new RemcopyError(
      'RC_ERR_STATE',
      `nothing to fail back: ${groups.join(', ')} ${groups.length > 1 ? 'were' : 'was'} not taken over (${lives
        .map(
          (l) =>
            `${l.g.name}: ${source} ${l.reports.get(source)?.state ?? '?'}, ${target} ${l.reports.get(target)?.state ?? '?'}`,
        )
        .join('; ')})`,
    );
  }
  await callNode(topo, target, 'POST', '/v1/failback/done', { groups });
  if (o.json) process.stdout.write(`${JSON.stringify({ source, target, already: true })}\n`);
  else {
    process.stdout.write(
      `failback ${groups.join(', ')}: nothing to do; ${source} is the source, ${target} its target\n`,
    );
  }
}
