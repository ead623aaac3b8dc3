/**
 * `npm run bench`: fio against remcopy, nbdkit's file plugin and qemu-nbd, each serving the same
 * kind of file on this machine, in one run; results printed as ratios to nbdkit. Then the async
 * replication cases (bench/replication.ts): replication on vs off, lag at half load, catch-up after
 * an outage of the target. Last, the delta resync rate vs a plain nbdcopy (bench/resync.ts).
 *
 * Workloads (fio's nbd engine, one connection each):
 *   rand4k   4 KiB random write, QD32        (IOPS)
 *   seq1m    1 MiB sequential write, QD16    (MB/s)
 *   flush4k  4 KiB write + FLUSH, QD1        (writes/s)
 *
 * remcopy runs with its volume as the source of an async group to a second node on this machine,
 * so every write is journalled and shipped; the target's durable reports release the records.
 * Both nodes start fresh for each workload, and fio starts once the initial copy is done.
 * remcopy-journal is the same pair with the target stopped once the copy is done: every write is
 * sequenced and journalled (the storage node of issue 2), nothing is shipped or released.
 *
 * Each workload runs on every server in turn, so the runs a ratio compares are minutes apart at most.
 * With BENCH_ROUNDS > 1 that is repeated: a cell shows the median figure, the median of the
 * round-by-round ratios to nbdkit, and their range (this machine's figures swing 10-25% run to run).
 *
 * Environment:
 *   BENCH_SECONDS              per fio run (default 8)
 *   BENCH_ROUNDS               rounds of the server table (default 1)
 *   BENCH_SIZE_MIB             file / volume size (default 1024)
 *   BENCH_WORKLOADS            comma list of the workloads above (server table only)
 *   BENCH_ONLY                 comma list of servers: nbdkit,qemu-nbd,remcopy-journal,remcopy, and
 *                              of resync (the resync case); empty skips the table and resync.
 *                              BENCH_REPL still picks the replication cases (BENCH_ONLY=resync
 *                              BENCH_REPL=0: resync alone)
 *   BENCH_DIR                  where temporary directories go (default: the system temp dir)
 *   BENCH_JOURNAL              remcopy journal size per node (default 16GiB)
 *   BENCH_REPL                 replication cases: 1/all (default), 0 (none), or a comma list of
 *                              onoff,lag,outage,populated
 *   BENCH_HALF_IOPS            the "half load" rate for lag/outage (default: half the "on" IOPS)
 *   BENCH_OUTAGE_SECONDS       how long node b stays down (default 30)
 *   BENCH_OUTAGE_SIGNAL        SIGTERM (default) or SIGKILL, how node b is stopped
 *   BENCH_CATCHUP_MAX_SECONDS  give up waiting for the catch-up (each drain, the resync) after (default 300)
 *   BENCH_LAG_SAMPLE_MS        status sampling interval (default 100)
 *   BENCH_RESYNC_MIB           volume size of the resync case (default 512)
 * Node logs go to their stderr at REMCOPY_LOG_LEVEL (default here: warn), kept in memory.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';
import { freePorts } from '../src/testing/proc.js';
import {
  envNumber,
  fio,
  installCleanup,
  killAndWait,
  removeDir,
  run,
  SECONDS,
  SIZE_MIB,
  tempDir,
  track,
  workloads,
} from './common.js';
import { replCases, reportReplication, runReplication, startCluster } from './replication.js';
import { reportResync, runResync } from './resync.js';

interface Server {
  name: string;
  uri: string;
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

/** A server process on a fresh file in its own directory; stop() kills it and removes both. */
async function startFileServer(
  name: string,
  argsOf: (port: number, file: string) => [string, string[]],
): Promise<Server> {
  const dir = tempDir(name);
  try {
    const [port] = (await freePorts(1)) as [number];
    const file = join(dir, `${name}.img`);
    await run('truncate', ['-s', `${SIZE_MIB}M`, file]);
    const [cmd, args] = argsOf(port, file);
    const proc = track(spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] }));
    const stop = async (): Promise<void> => {
      await killAndWait(proc);
      removeDir(dir);
    };
    await waitPort(port, proc).catch(async (e: unknown) => {
      await stop();
      throw e;
    });
    return { name, uri: `nbd://127.0.0.1:${port}/vol`, stop };
  } catch (e) {
    removeDir(dir);
    throw e;
  }
}

const startNbdkit = (): Promise<Server> =>
  startFileServer('nbdkit', (port, file) => [
    'nbdkit',
    ['-f', '-i', '127.0.0.1', '-p', String(port), 'file', `file=${file}`],
  ]);

const startQemuNbd = (): Promise<Server> =>
  startFileServer('qemu-nbd', (port, file) => [
    'qemu-nbd',
    [
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
    ],
  ]);

/** remcopy, replication on: node a's volume is the source of group g to node b, copy done. */
async function startRemcopy(): Promise<Server> {
  const c = await startCluster(true);
  return { name: 'remcopy', uri: c.uri, stop: () => c.stop() };
}

/**
 * remcopy with its journal alone (the storage node of issue 2): the same pair, then node b is
 * stopped, so every write is sequenced and journalled but nothing is shipped or released.
 */
async function startRemcopyJournal(): Promise<Server> {
  const c = await startCluster(true);
  try {
    await c.stopB('SIGTERM');
  } catch (e) {
    await c.stop();
    throw e;
  }
  return { name: 'remcopy-journal', uri: c.uri, stop: () => c.stop() };
}

const ROUNDS = Math.floor(envNumber('BENCH_ROUNDS', 1));
const ONLY = (process.env.BENCH_ONLY ?? 'nbdkit,qemu-nbd,remcopy-journal,remcopy,resync')
  .split(',')
  .filter((s) => s !== '');

async function serverTable(): Promise<string> {
  const only = ONLY.filter((s) => s !== 'resync');
  const chosen = process.env.BENCH_WORKLOADS?.split(',');
  if (chosen) workloads.splice(0, workloads.length, ...workloads.filter((w) => chosen.includes(w.name)));
  const starters: Record<string, () => Promise<Server>> = {
    nbdkit: startNbdkit,
    'qemu-nbd': startQemuNbd,
    remcopy: startRemcopy,
    'remcopy-journal': startRemcopyJournal,
  };
  for (const name of only)
    if (!starters[name]) throw new Error(`BENCH_ONLY: unknown server ${name} (or resync)`);
  if (only.length === 0 || workloads.length === 0) return '';
  // Server -> workload -> one figure per round.
  const results = new Map<string, Map<string, number[]>>(only.map((n) => [n, new Map()]));
  for (let round = 1; round <= ROUNDS; round++) {
    for (const w of workloads) {
      for (const name of only) {
        // A fresh file and server per run, so page-cache state from one run does not skew the next.
        const server = await starters[name]!();
        try {
          const figure = await fio(server.uri, w);
          const row = results.get(name)!;
          row.set(w.name, [...(row.get(w.name) ?? []), figure]);
          const of = ROUNDS > 1 ? ` (round ${round}/${ROUNDS})` : '';
          process.stderr.write(`${name} ${w.name}${of}: ${figure.toFixed(0)} ${w.unit}\n`);
        } finally {
          await server.stop();
        }
      }
    }
  }
  return report(results);
}

async function main(): Promise<void> {
  installCleanup();
  process.env.REMCOPY_LOG_LEVEL ??= 'warn';
  const cases = replCases(); // bad BENCH_REPL fails before anything runs
  const table = await serverTable();
  const repl = cases.size > 0 ? await runReplication(cases) : undefined;
  const resync = ONLY.includes('resync') ? await runResync() : undefined;
  const out = [table, repl ? reportReplication(repl) : '', resync ? reportResync(resync) : ''];
  process.stdout.write(`\n${out.filter((s) => s !== '').join('\n')}`);
  if ((repl && repl.errors.length > 0) || (resync && resync.errors.length > 0)) process.exitCode = 1;
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** One cell: the figure (median over rounds), its ratio to nbdkit's, and with rounds their range. */
function cell(figures: readonly number[], base: readonly number[] | undefined): string {
  if (figures.length === 0) return 'n/a';
  let text = median(figures).toFixed(0);
  if (base !== undefined && base.length === figures.length) {
    const ratios = figures.map((v, i) => v / base[i]!);
    text += ` ${median(ratios).toFixed(2)}x`;
    if (ratios.length > 1) text += ` [${Math.min(...ratios).toFixed(2)}-${Math.max(...ratios).toFixed(2)}]`;
  }
  return text;
}

function report(results: Map<string, Map<string, number[]>>): string {
  const base = results.get('nbdkit');
  const runs = ROUNDS > 1 ? `${ROUNDS} rounds (median, [range of the ratios])` : 'one run';
  const lines = [
    `fio over NBD, ${SECONDS} s per workload, ${SIZE_MIB} MiB files, ${runs}; remcopy: async replication on (both nodes here); remcopy-journal: journal alone (target stopped)`,
    '',
  ];
  lines.push(['server'.padEnd(16), ...workloads.map((w) => `${w.name} (${w.unit})`.padStart(28))].join(''));
  for (const [name, row] of results) {
    const cells = workloads.map((w) => cell(row.get(w.name) ?? [], base?.get(w.name)).padStart(28));
    lines.push([name.padEnd(16), ...cells].join(''));
  }
  return `${lines.join('\n')}\n`;
}

await main();
