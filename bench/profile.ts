/**
 * `node dist/bench/profile.js WORKLOAD [repl|journal|plain]`: one fio workload (bench/common.ts)
 * against a remcopy node started with `--cpu-prof`, then a summary of where the node spent its CPU.
 * With `repl` (the default) the volume is the source of an async group to a second node (profiled
 * too), as in the bench's remcopy case; with `journal` the same, but the second node is stopped
 * once the pair is up (the bench's remcopy-journal case); with `plain` it is in no group.
 *
 * The profiles (.cpuprofile, for Chrome DevTools or speedscope) stay in PROFILE_DIR (default
 * /tmp/remcopy-profile); the summary lists self time by function and by source file for each.
 * BENCH_SECONDS and BENCH_SIZE_MIB apply as in the bench.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { apiOf, copyJournalled, groupStatus, waitFor } from '../src/testing/cluster.js';
import { nodeProcessArgs, nodeProcessEnv } from '../src/cli/node-process.js';
import { writeTopology } from '../src/testing/proc.js';
import {
  fio,
  installCleanup,
  killAndWait,
  removeDir,
  SIZE_MIB,
  tempDir,
  track,
  workloads,
} from './common.js';

const PROFILE_DIR = process.env.PROFILE_DIR ?? '/tmp/remcopy-profile';
const GROUP = 'g';

function startProfiledNode(config: string, name: string): Promise<ChildProcess> {
  const dir = join(PROFILE_DIR, name);
  mkdirSync(dir, { recursive: true });
  const child = track(
    spawn(process.execPath, ['--cpu-prof', `--cpu-prof-dir=${dir}`, ...nodeProcessArgs(config, name)], {
      stdio: ['ignore', 'pipe', 'inherit'],
      env: nodeProcessEnv(),
    }),
  );
  return new Promise((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`node ${name} exited (${code})`)));
    createInterface({ input: child.stdout! }).on('line', (l) => {
      if (l.includes(' ready: ')) resolve(child);
    });
  });
}

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

/** Self time per function and per file of one .cpuprofile, as percentages, largest first. */
function summarize(file: string, top = 25): string {
  const p = JSON.parse(readFileSync(file, 'utf8')) as {
    nodes: ProfileNode[];
    samples: number[];
    timeDeltas: number[];
  };
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const selfUs = new Map<number, number>();
  p.samples.forEach((id, i) => selfUs.set(id, (selfUs.get(id) ?? 0) + (p.timeDeltas[i] ?? 0)));
  const total = [...selfUs.values()].reduce((a, b) => a + b, 0);
  const fns = new Map<string, number>();
  const files = new Map<string, number>();
  for (const [id, us] of selfUs) {
    const f = byId.get(id)!.callFrame;
    const url = f.url.replace(/^.*\/dist\//, '').replace(/^node:/, '');
    const fn = `${f.functionName || '(anonymous)'} ${url}:${f.lineNumber + 1}`;
    fns.set(fn, (fns.get(fn) ?? 0) + us);
    const key = url === '' ? f.functionName : url;
    files.set(key, (files.get(key) ?? 0) + us);
  }
  const list = (m: Map<string, number>): string[] =>
    [...m.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([k, us]) => `  ${((100 * us) / total).toFixed(1).padStart(5)}%  ${k}`);
  return [
    `${file}: ${(total / 1e6).toFixed(1)} s sampled`,
    'self time by function:',
    ...list(fns),
    'self time by file:',
    ...list(files),
  ].join('\n');
}

async function main(): Promise<void> {
  installCleanup();
  const [name = 'rand4k', mode = 'repl'] = process.argv.slice(2);
  const w = workloads.find((x) => x.name === name);
  if (!w) throw new Error(`unknown workload ${name}`);
  if (!['repl', 'journal', 'plain'].includes(mode)) throw new Error(`unknown mode ${mode}`);
  const replicate = mode !== 'plain';
  const dir = tempDir('profile');
  const spec = { volumes: { vol: `${SIZE_MIB}MiB` }, journal: '{ size: 4GiB, segmentSize: 64MiB }' };
  const topo = await writeTopology(
    dir,
    replicate ? { a: spec, b: spec } : { a: spec },
    replicate ? { [GROUP]: ['a', 'b', 'vol'] } : {},
  );
  const nodes = await Promise.all(
    (replicate ? ['a', 'b'] : ['a']).map((n) => startProfiledNode(topo.file, n)),
  );
  if (replicate) {
    await copyJournalled(apiOf(topo.ports.get('a')!.api), topo.secret, GROUP);
    const apiB = apiOf(topo.ports.get('b')!.api);
    await waitFor(
      'pair at the target',
      async () => ((await groupStatus(apiB, topo.secret, GROUP)).state === 'pair' ? true : undefined),
      120_000,
    );
    if (mode === 'journal') {
      nodes[1]!.removeAllListeners('exit');
      await killAndWait(nodes.pop()!);
    }
  }
  const figure = await fio(`nbd://127.0.0.1:${topo.ports.get('a')!.nbd}/vol`, w);
  process.stdout.write(`${name} (${mode}): ${figure.toFixed(0)} ${w.unit}\n`);
  for (const n of nodes) n.removeAllListeners('exit');
  await Promise.all(nodes.map((n) => killAndWait(n)));
  removeDir(dir);
  for (const node of mode === 'repl' ? ['a', 'b'] : ['a']) {
    const d = join(PROFILE_DIR, node);
    const latest = readdirSync(d)
      .filter((f) => f.endsWith('.cpuprofile'))
      .sort()
      .at(-1);
    if (latest) process.stdout.write(`\nnode ${node}: ${summarize(join(d, latest))}\n`);
  }
}

await main();
