/**
 * Two paired sites for replication tests with real node processes: start nodes a and b of a fresh
 * topology and wait until every group is past its initial copy; plus the small steps those tests
 * share (qemu-io against an export, waiting for a group's state).
 */
import { execFile } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Api } from './cluster.js';
import { apiOf, copyJournalled, groupStatus, waitFor } from './cluster.js';
import type { TestNodeSpec } from './proc.js';
import { startNodeProcess, writeTopology } from './proc.js';

const run = promisify(execFile);

/** Runs qemu-io commands against an NBD URI (read-only with `-r`); its output, or a rejection. */
export async function qemuIo(uri: string, cmds: string[], readOnly = false): Promise<string> {
  const ro = readOnly ? ['-r'] : [];
  const r = await run('qemu-io', [...ro, '-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), uri], {
    maxBuffer: 64 * 1024 * 1024,
  });
  return r.stdout + r.stderr;
}

/** Waits until the node reports `group` in `state`; resolves with that report. */
export async function waitState(api: Api, secret: string, group: string, state: string, timeoutMs = 60_000) {
  return waitFor(
    `${group} in state ${state}`,
    async () => {
      const g = await groupStatus(api, secret, group);
      return g.state === state ? g : undefined;
    },
    timeoutMs,
  );
}

/** Nodes a and b started from a fresh topology under `root`, every group past its initial copy. */
export async function pairedSites(
  root: string,
  prefix: string,
  nodes: { a: TestNodeSpec; b: TestNodeSpec },
  groups: Record<string, [string, string, string] | [string, string, string, string]>,
  sets: Record<string, string[]> = {},
) {
  const topo = await writeTopology(mkdtempSync(join(root, prefix)), nodes, groups, sets);
  const pa = topo.ports.get('a')!;
  const pb = topo.ports.get('b')!;
  // b first, ready before a dials it: a group with a short suspendAfter (1 s in the delta tests)
  // would otherwise be suspended when b comes up late on a loaded machine (a CI run did).
  const B = await startNodeProcess(topo.file, 'b');
  const A = await startNodeProcess(topo.file, 'a');
  for (const g of Object.keys(groups)) {
    await copyJournalled(apiOf(pa.api), topo.secret, g);
    await waitState(apiOf(pb.api), topo.secret, g, 'pair');
  }
  return { topo, pa, pb, A, B };
}
