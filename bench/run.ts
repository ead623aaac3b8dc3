/**
 * `npm run bench`: fio against remcopy (journalling on), nbdkit's file plugin and qemu-nbd, each
 * serving the same kind of file on this machine, in one run; results printed as ratios to nbdkit.
 *
 * Workloads (fio's nbd engine, one connection each):
 *   rand4k   4 KiB random write, QD32        (IOPS)
 *   seq1m    1 MiB sequential write, QD16    (MB/s)
 *   flush4k  4 KiB write + FLUSH, QD1        (writes/s)
 *
 * remcopy runs with its volume in a group, so every write is journalled. No target ships records
 * yet, so a releaser stands in for a target's durable reports: every RELEASE_EVERY_MS it releases
 * everything written so far (the node syncs the volume first, as it will for a real target).
 *
 * Environment: BENCH_SECONDS (per workload, default 8), BENCH_SIZE_MIB (file size, default 1024),
 * BENCH_RELEASE_MS (how often the stand-in target releases, default 250), BENCH_WORKLOADS (comma list),
 * BENCH_ONLY (comma list of servers: remcopy,nbdkit,qemu-nbd).
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { apiCall } from '../src/node/api.js';
import { freePorts } from '../src/testing/proc.js';

const run = promisify(execFile);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 8);
const SIZE_MIB = Number(process.env.BENCH_SIZE_MIB ?? 1024);
const RELEASE_EVERY_MS = Number(process.env.BENCH_RELEASE_MS ?? 250);
const SECRET = 'bench-secret-123';

interface Workload {
  name: string;
  unit: 'IOPS' | 'MB/s' | 'writes/s';
  args: string[];
}

const workloads: Workload[] = [
  { name: 'rand4k', unit: 'IOPS', args: ['--rw=randwrite', '--bs=4k', '--iodepth=32'] },
  { name: 'seq1m', unit: 'MB/s', args: ['--rw=write', '--bs=1m', '--iodepth=16'] },
  { name: 'flush4k', unit: 'writes/s', args: ['--rw=write', '--bs=4k', '--iodepth=1', '--fsync=1'] },
];

interface Server {
  name: string;
  uri: string;
  proc: ChildProcess;
  stop(): Promise<void>;
}

/** Wait until the server answers NBD on `port`; fail early, with its stderr, if it exits. */
function waitPort(port: number, proc: ChildProcess, ms = 10000): Promise<void> {
  const start = Date.now();
  let stderr = '';
  proc.stderr?.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  return new Promise((resolve, reject) => {
    const attempt = (): void => {
      if (proc.exitCode !== null) {
        reject(new Error(`server exited (${proc.exitCode}): ${stderr}`));
        return;
      }
      run('nbdinfo', ['--size', `nbd://127.0.0.1:${port}/vol`]).then(
        () => resolve(),
        () =>
          Date.now() - start > ms
            ? reject(new Error(`port ${port} not serving: ${stderr}`))
            : setTimeout(attempt, 100),
      );
    };
    attempt();
  });
}

function killAndWait(p: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (p.exitCode !== null) return resolve();
    p.once('exit', () => resolve());
    p.kill('SIGTERM');
  });
}

async function startNbdkit(dir: string): Promise<Server> {
  const [port] = (await freePorts(1)) as [number];
  const file = join(dir, 'nbdkit.img');
  await run('truncate', ['-s', `${SIZE_MIB}M`, file]);
  const proc = spawn('nbdkit', ['-f', '-i', '127.0.0.1', '-p', String(port), 'file', `file=${file}`], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  await waitPort(port, proc);
  return { name: 'nbdkit', uri: `nbd://127.0.0.1:${port}/vol`, proc, stop: () => killAndWait(proc) };
}

async function startQemuNbd(dir: string): Promise<Server> {
  const [port] = (await freePorts(1)) as [number];
  const file = join(dir, 'qemu.img');
  await run('truncate', ['-s', `${SIZE_MIB}M`, file]);
  const args = [
    '-f',
    'raw',
    '-x',
    'vol',
    '-b',
    '127.0.0.1',
    '-p',
    String(port),
    '-t',
    '--shared=8',
    '--cache=writeback',
    file,
  ];
  const proc = spawn('qemu-nbd', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  await waitPort(port, proc);
  return { name: 'qemu-nbd', uri: `nbd://127.0.0.1:${port}/vol`, proc, stop: () => killAndWait(proc) };
}

async function startRemcopy(dir: string): Promise<Server> {
  const [port, link, apiPort, bPort, bLink, bApi] = (await freePorts(6)) as [
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  const cfg = join(dir, 'bench.yaml');
  writeFileSync(
    cfg,
    `secret: ${SECRET}
nodes:
  a:
    dataDir: ./a
    nbd: 127.0.0.1:${port}
    link: 127.0.0.1:${link}
    api: 127.0.0.1:${apiPort}
    volumes: { vol: ${SIZE_MIB}MiB }
    journal: { size: 4GiB, segmentSize: 64MiB, throttleMaxDelay: 10s }
  b:
    dataDir: ./b
    nbd: 127.0.0.1:${bPort}
    link: 127.0.0.1:${bLink}
    api: 127.0.0.1:${bApi}
    volumes: { vol: ${SIZE_MIB}MiB }
groups:
  g: { source: a, target: b, pairs: { vol: vol } }
`,
  );
  const main = new URL('../src/cli/main.js', import.meta.url).pathname;
  const proc = spawn(process.execPath, [main, 'node', '--config', cfg, '--node', 'a'], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, REMCOPY_LOG_LEVEL: 'warn' },
  });
  await waitPort(port, proc);
  const api = { host: '127.0.0.1', port: apiPort };
  let releasing = true;
  const releaser = (async () => {
    while (releasing) {
      await new Promise((r) => setTimeout(r, RELEASE_EVERY_MS));
      const s = (await apiCall(api, SECRET, 'GET', '/v1/status')) as {
        groups: { name: string; seqWritten: number }[];
      };
      const seq = s.groups.find((g) => g.name === 'g')?.seqWritten ?? 0;
      if (seq > 0) await apiCall(api, SECRET, 'POST', '/v1/groups/g/release', { uptoSeq: seq });
    }
  })();
  return {
    name: 'remcopy',
    uri: `nbd://127.0.0.1:${port}/vol`,
    proc,
    stop: async () => {
      releasing = false;
      await releaser.catch((e) => console.error('releaser:', e));
      await killAndWait(proc);
    },
  };
}

async function fio(uri: string, w: Workload): Promise<number> {
  await run('sync', []);
  const args = [
    '--name=bench',
    '--ioengine=nbd',
    `--uri=${uri}`,
    `--size=${SIZE_MIB}M`,
    '--time_based',
    `--runtime=${SECONDS}`,
    '--ramp_time=1',
    '--output-format=json',
    ...w.args,
  ];
  const { stdout } = await run('fio', args, { maxBuffer: 64 << 20 });
  const job = JSON.parse(stdout.slice(stdout.indexOf('{'))).jobs[0].write;
  if (w.unit === 'MB/s') return job.bw_bytes / 1e6;
  return job.iops;
}

async function main(): Promise<void> {
  const only = (process.env.BENCH_ONLY ?? 'nbdkit,qemu-nbd,remcopy').split(',');
  const chosen = process.env.BENCH_WORKLOADS?.split(',');
  if (chosen) workloads.splice(0, workloads.length, ...workloads.filter((w) => chosen.includes(w.name)));
  const starters: Record<string, (dir: string) => Promise<Server>> = {
    nbdkit: startNbdkit,
    'qemu-nbd': startQemuNbd,
    remcopy: startRemcopy,
  };
  const results = new Map<string, Map<string, number>>();
  for (const name of only) {
    const start = starters[name];
    if (!start) throw new Error(`unknown server ${name}`);
    const row = new Map<string, number>();
    results.set(name, row);
    for (const w of workloads) {
      // A fresh file and server per workload, so page-cache state from one run does not skew the next.
      const dir = mkdtempSync(join(process.env.BENCH_DIR ?? tmpdir(), `bench-${name}-`));
      const server = await start(dir);
      try {
        row.set(w.name, await fio(server.uri, w));
        process.stderr.write(`${name} ${w.name}: ${row.get(w.name)!.toFixed(0)} ${w.unit}\n`);
      } finally {
        await server.stop();
        rmSync(dir, { recursive: true, force: true });
      }
    }
  }
  report(results);
}

function report(results: Map<string, Map<string, number>>): void {
  const base = results.get('nbdkit');
  const lines = [`fio over NBD, ${SECONDS} s per workload, ${SIZE_MIB} MiB files, one run`, ''];
  lines.push(['server'.padEnd(10), ...workloads.map((w) => `${w.name} (${w.unit})`.padStart(28))].join(''));
  for (const [name, row] of results) {
    const cells = workloads.map((w) => {
      const v = row.get(w.name) ?? Number.NaN;
      const b = base?.get(w.name);
      const ratio = b ? ` ${(v / b).toFixed(2)}x` : '';
      return `${v.toFixed(0)}${ratio}`.padStart(28);
    });
    lines.push([name.padEnd(10), ...cells].join(''));
  }
  process.stdout.write(`${lines.join('\n')}\n`);
}

await main();
