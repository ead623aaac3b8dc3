/**
 * The coordinator of one consistent point across the nodes of a consistency set (DESIGN.md §3.4;
 * patent figs 15, 19, 20): `remcopy checkpoint` runs it once, a node with `cycleSeconds` runs it
 * continuously (cycles.ts).
 *
 *   freeze every source node of the set (in parallel) --> all frozen? else thaw all, fail
 *   --> n = 1 + the highest last marker any of them reports
 *   --> mark n on every source node (each appends its markers and thaws at once)
 *   --> every target node applies up to marker n, snapshots its volumes of the set as @n, reports
 *   --> (resume: coordinator) tell every target to go on
 *
 * A cycle that fails part-way leaves marker n in the groups of the nodes that placed it: the
 * coordinator tells every target to abandon n (a snapshot of part of the set taken already is
 * deleted; one not reached yet is not taken), the targets that never see n skip it as incomplete,
 * and the next cycle takes n + 1 (each marker names the one before it
 * in its group, so the skip is told from a lost marker). Nothing is lost: host writes were only
 * delayed, never failed. The requests name nodes, never links, so the same request works when a
 * node in front of a source (embodiment 4) relays the marker instead.
 */
import { randomUUID } from 'node:crypto';
import { RemcopyError } from '../core/errors.js';
import type { Topology } from '../node/config.js';
import { setMembers } from '../node/config.js';

/** How the coordinator reaches a node's management API. */
export type NodeCall = (
  node: string,
  method: 'GET' | 'POST',
  path: string,
  body?: unknown,
) => Promise<unknown>;

export interface CheckpointOptions {
  /** How long to wait for every target to reach the marker. */
  readonly reachTimeoutMs: number;
  /** Called as the steps complete (progress for a person watching). */
  readonly onStep?: (step: string) => void;
  /**
   * The node `call` reaches in process (the coordinator's own): it is frozen only once every other
   * source is, and marked right after them, so its writes wait microseconds, not a round trip.
   */
  readonly local?: string;
}

export interface CheckpointResult {
  readonly set: string;
  readonly marker: number;
  /** Per source node: how long its host writes were held (freeze to thaw). */
  readonly freezeMs: Record<string, number>;
  /**
   * Per source node: from the freeze request to its answer, as the coordinator saw it. For a remote
   * node a round trip: the request's way there (before the node freezes) and the answer's way back
   * (inside its freeze, which lasts until the mark arrives). A long answer points at the node or the
   * network; a freeze much longer than the answer, at the coordinator's side.
   */
  readonly freezeAnswerMs: Record<string, number>;
  /** Per target node: its outcome for the marker. */
  readonly targets: Record<string, 'snapshot' | 'incomplete'>;
  /** When the sources were frozen (ms since the epoch): the moment the image is of. */
  readonly atMs: number;
  readonly totalMs: number;
}

/** The source and target nodes of a set in `topo`. */
export function setNodes(topo: Topology, set: string): { sources: string[]; targets: string[] } {
  const groups = setMembers(topo, set);
  if (groups === undefined)
    throw new RemcopyError('RC_ERR_USAGE', `no consistency set ${set} in ${topo.file}`);
  const gs = groups.map((g) => topo.groups.get(g)!);
  return { sources: [...new Set(gs.map((g) => g.source))], targets: [...new Set(gs.map((g) => g.target))] };
}

export async function checkpoint(
  topo: Topology,
  set: string,
  call: NodeCall,
  o: CheckpointOptions,
): Promise<CheckpointResult> {
  const started = performance.now();
  const { sources, targets } = setNodes(topo, set);
  const opts = topo.setOptions.get(set);
  const boundMs = opts?.freezeBoundMs ?? 50;
  const enc = encodeURIComponent(set);
  const id = randomUUID();
  const atMs = Date.now();
  const thawAll = (): Promise<unknown> =>
    Promise.allSettled(sources.map((n) => call(n, 'POST', `/v1/sets/${enc}/thaw`, { id })));
  const freezeAnswerMs: Record<string, number> = {};
  const freezeOne = async (n: string): Promise<unknown> => {
    const sent = performance.now();
    const answer = await call(n, 'POST', `/v1/sets/${enc}/freeze`, { id, boundMs });
    freezeAnswerMs[n] = performance.now() - sent;
    return answer;
  };
  const freeze = (nodes: readonly string[]): Promise<PromiseSettledResult<unknown>[]> =>
    Promise.allSettled(nodes.map(freezeOne));
  const remote = sources.filter((n) => n !== o.local);
  const local = sources.filter((n) => n === o.local);
  const frozenRemote = await freeze(remote);
  const frozenLocal = await freeze(local);
  const frozen = sources.map((n) => (n === o.local ? frozenLocal[0]! : frozenRemote[remote.indexOf(n)]!));
  const notFrozen = failures(sources, frozen);
  if (notFrozen.length > 0) {
    await thawAll();
    throw new RemcopyError('RC_ERR_STATE', `checkpoint of ${set} failed at freeze: ${notFrozen.join('; ')}`);
  }
  const last = frozen.map((r) => (r as PromiseFulfilledResult<{ lastMarker: number }>).value.lastMarker);
  const marker = Math.max(...last) + 1;
  const markOne = (n: string): Promise<unknown> => call(n, 'POST', `/v1/sets/${enc}/mark`, { id, marker });
  const markedRemote = remote.map(markOne);
  // The remote requests go out on the next tick (when their sockets are attached); the local mark
  // runs synchronously up to its journal append, so it waits for that tick: the remote sources,
  // whose writes wait a round trip already, do not wait for this node's work too.
  await new Promise<void>((resolve) => process.nextTick(resolve));
  const markedLocal = local.map(markOne);
  const markedAll = await Promise.allSettled([...markedRemote, ...markedLocal]);
  const marked = sources.map((n) =>
    n === o.local ? markedAll[remote.length]! : markedAll[remote.indexOf(n)]!,
  );
  // Past here marker n may be in some groups: on failure no target may keep a snapshot of part of it.
  const abandon = (): Promise<unknown> =>
    Promise.allSettled(targets.map((n) => call(n, 'POST', `/v1/sets/${enc}/abandon`, { marker })));
  const notMarked = failures(sources, marked);
  if (notMarked.length > 0) {
    await thawAll();
    await abandon();
    throw new RemcopyError(
      'RC_ERR_STATE',
      `checkpoint of ${set} failed: marker ${marker} was not placed on every source node: ${notMarked.join('; ')}`,
    );
  }
  const freezeMs: Record<string, number> = {};
  sources.forEach((n, i) => {
    freezeMs[n] = (marked[i] as PromiseFulfilledResult<{ freezeMs: number }>).value.freezeMs;
  });
  o.onStep?.(`marker ${marker} placed on ${sources.join(', ')}; waiting for ${targets.join(', ')}`);
  const reached = await Promise.allSettled(
    targets.map((n) =>
      call(n, 'POST', `/v1/sets/${enc}/wait-marker`, { marker, timeoutMs: o.reachTimeoutMs }),
    ),
  );
  const notReached = failures(targets, reached);
  if (notReached.length > 0) {
    await abandon();
    throw new RemcopyError(
      'RC_ERR_STATE',
      `checkpoint of ${set}: marker ${marker} was placed but not every target reported it: ${notReached.join('; ')}`,
    );
  }
  const outcome: Record<string, 'snapshot' | 'incomplete'> = {};
  targets.forEach((n, i) => {
    outcome[n] = (reached[i] as PromiseFulfilledResult<{ outcome: 'snapshot' | 'incomplete' }>).value.outcome;
  });
  const incomplete = targets.filter((n) => outcome[n] !== 'snapshot');
  if (opts?.resume === 'coordinator' && incomplete.length === 0) {
    const went = await Promise.allSettled(
      targets.map((n) => call(n, 'POST', `/v1/sets/${enc}/go`, { marker })),
    );
    const notGone = failures(targets, went);
    if (notGone.length > 0) {
      throw new RemcopyError(
        'RC_ERR_STATE',
        `checkpoint of ${set}: go on after marker ${marker} failed: ${notGone.join('; ')}`,
      );
    }
  }
  if (incomplete.length > 0) {
    await abandon();
    throw new RemcopyError(
      'RC_ERR_STATE',
      `checkpoint of ${set}: marker ${marker} is incomplete on ${incomplete.join(', ')} (a source did not place it)`,
    );
  }
  return {
    set,
    marker,
    freezeMs,
    freezeAnswerMs,
    targets: outcome,
    atMs,
    totalMs: performance.now() - started,
  };
}

function failures(nodes: readonly string[], results: readonly PromiseSettledResult<unknown>[]): string[] {
  const out: string[] = [];
  results.forEach((r, i) => {
    if (r.status === 'rejected') out.push(`${nodes[i]}: ${(r.reason as Error).message ?? String(r.reason)}`);
  });
  return out;
}
