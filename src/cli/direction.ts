/**
 * Which way a group replicates now. The config names its first source and target; takeovers and
 * failbacks move the source (DESIGN.md §3.7), and each node knows where it stands. The management
 * commands ask both nodes and believe the one with the highest epoch.
 */
import { RemcopyError } from '../core/errors.js';
import { apiCall, endpointOf } from '../node/api.js';
import type { GroupConfig, Topology } from '../node/config.js';
import { reversedGroup } from '../node/config.js';

/** What a node's status says about one group (the fields the commands use). */
export interface GroupReport {
  name: string;
  role: 'source' | 'target' | 'promoted';
  state: string;
  epoch: number;
  linkUp?: boolean;
  source?: string;
  target?: string;
  takeoverSeq?: number;
  /** A group promoted at a snapshot of its set: that snapshot's marker number. */
  takeoverMarker?: number;
  seqWritten?: number;
  dirtyBytes?: number;
}

export interface LiveGroup {
  /** The group with source and target as they stand (pairs: source volume -> target volume). */
  readonly g: GroupConfig;
  /** Each of the two nodes' report, undefined when it could not be reached. */
  readonly reports: ReadonlyMap<string, GroupReport | undefined>;
  /** Why a node could not be reached. */
  readonly errors: ReadonlyMap<string, string>;
}

export async function liveGroup(topo: Topology, group: string): Promise<LiveGroup> {
  const cfg = topo.groups.get(group);
  if (!cfg) throw new RemcopyError('RC_ERR_USAGE', `no group ${group} in ${topo.file}`);
  const reports = new Map<string, GroupReport | undefined>();
  const errors = new Map<string, string>();
  await Promise.all(
    [cfg.source, cfg.target].map(async (node) => {
      try {
        const st = (await callNode(topo, node, 'GET', '/v1/status')) as { groups: GroupReport[] };
        reports.set(
          node,
          st.groups.find((r) => r.name === group),
        );
      } catch (e) {
        reports.set(node, undefined);
        errors.set(node, (e as Error).message);
      }
    }),
  );
  const rank = (r: GroupReport): number => r.epoch * 2 + (r.state === 'fenced' ? 0 : 1);
  let best: [string, GroupReport] | undefined;
  for (const [node, r] of reports) if (r && (!best || rank(r) > rank(best[1]))) best = [node, r];
  let source = cfg.source;
  if (best) {
    const [node, r] = best;
    const other = node === cfg.source ? cfg.target : cfg.source;
    source = r.role === 'target' || (r.role === 'source' && r.state === 'fenced') ? other : node;
  }
  const g = source === cfg.source ? cfg : reversedGroup(cfg);
  return { g, reports, errors };
}

/** A node's API; its failure names the node and address. */
export async function callNode(
  topo: Topology,
  node: string,
  method: 'GET' | 'POST',
  path: string,
  body?: unknown,
): Promise<unknown> {
  const n = topo.nodes.get(node)!;
  try {
    return await apiCall(endpointOf(n), topo.secret, method, path, body);
  } catch (e) {
    throw new RemcopyError('RC_ERR_STATE', `${node} (${n.api.host}:${n.api.port}): ${(e as Error).message}`);
  }
}
