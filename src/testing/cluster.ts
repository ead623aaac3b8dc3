/**
 * Helpers for tests that run nodes as processes and watch them through the management API:
 * group status by name, and polling until a condition holds (with a bound and a clear message).
 */
import { readFileSync } from 'node:fs';
import { type ApiEndpoint, apiCall } from '../node/api.js';

export type Api = ApiEndpoint;

/** A node's API on this machine; with `ca` (a PEM file) over HTTPS trusting that CA. */
export const apiOf = (port: number, ca?: string): Api =>
  ca === undefined ? { host: '127.0.0.1', port } : { host: '127.0.0.1', port, tls: { ca: readFileSync(ca) } };

/** A group's entry in GET /v1/status (the fields tests read). */
export interface GroupStatus {
  name: string;
  role: string;
  state: string;
  epoch: number;
  linkUp: boolean;
  seqWritten: number;
  seqArrived: number;
  seqApplied: number;
  lagRecords: number;
  lagBytes: number;
  lagMs: number;
  /** At a target: the completed cut readers see. */
  cut?: { writeTimeUs: number; nodeId: number; ordinal: number } | null;
  copy?: { bytesDone: number; bytesTotal: number; copyEndSeq: number };
  reason?: string;
  dirtyBytes?: number;
  resync?: { bytesDone: number; bytesTotal: number; rateBytesPerSec: number; etaSeconds?: number };
}

/** The value of a metric sample (`name{labels}`) in GET /metrics, or undefined when absent. */
export async function metricValue(api: Api, secret: string, sample: string): Promise<number | undefined> {
  const res = await fetch(`http://${api.host}:${api.port}/metrics`, {
    headers: { authorization: `Bearer ${secret}` },
  });
  const text = await res.text();
  for (const line of text.split('\n')) {
    if (line.startsWith(`${sample} `)) return Number(line.slice(sample.length + 1));
  }
  return undefined;
}

export async function groupStatus(api: Api, secret: string, group: string): Promise<GroupStatus> {
  const st = (await apiCall(api, secret, 'GET', '/v1/status')) as { groups: GroupStatus[] };
  const g = st.groups.find((x) => x.name === group);
  if (!g) throw new Error(`no group ${group} in the status of ${api.host}:${api.port}`);
  return g;
}

/** Polls `f` until it returns a value other than undefined; throws `what` after `timeoutMs`. */
export async function waitFor<T>(
  what: string,
  f: () => Promise<T | undefined>,
  timeoutMs = 30_000,
): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Waits until a source group's initial copy is journalled (all chunks taken a seq). */
export function copyJournalled(api: Api, secret: string, group: string): Promise<GroupStatus> {
  return waitFor(`the initial copy of ${group} to be journalled`, async () => {
    const g = await groupStatus(api, secret, group);
    return g.copy && g.copy.bytesDone === g.copy.bytesTotal && g.copy.copyEndSeq > 0 ? g : undefined;
  });
}
