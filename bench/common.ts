/**
 * Shared by the benchmarks: environment knobs, temporary directories and child processes that are
 * cleaned up on every way out (normal end, error, SIGINT/SIGTERM/SIGHUP), and fio runs over NBD.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

export const run = promisify(execFile);

/** A positive number from the environment, or `dflt` when unset; anything else is an error. */
export function envNumber(name: string, dflt: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return dflt;
  const n = Number(raw);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`${name} must be a positive number, got "${raw}"`);
  return n;
}

export const SECONDS = envNumber('BENCH_SECONDS', 8);
export const SIZE_MIB = envNumber('BENCH_SIZE_MIB', 1024);

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, Math.max(0, ms)));

const children = new Set<ChildProcess>();
const dirs = new Set<string>();
let cleanupInstalled = false;

/** Kill whatever child is still running and remove the temporary directories, on any exit. */
export function installCleanup(): void {
  if (cleanupInstalled) return;
  cleanupInstalled = true;
  process.on('exit', () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      process.stderr.write(`bench: ${sig}, stopping children and removing temporary directories\n`);
      process.exit(130);
    });
  }
}

/** Remember a child so that it is killed if the bench ends before it does. */
export function track<T extends ChildProcess>(c: T): T {
  children.add(c);
  c.once('exit', () => children.delete(c));
  return c;
}

/** A fresh directory under BENCH_DIR (default: the system temp dir), removed at exit at the latest. */
export function tempDir(prefix: string): string {
  const d = mkdtempSync(join(process.env.BENCH_DIR ?? tmpdir(), `bench-${prefix}-`));
  dirs.add(d);
  return d;
}

export function removeDir(d: string): void {
  rmSync(d, { recursive: true, force: true });
  dirs.delete(d);
}

export function killAndWait(p: ChildProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  return new Promise((resolve) => {
    if (p.exitCode !== null || p.signalCode !== null) return resolve();
    p.once('exit', () => resolve());
    p.kill(signal);
  });
}

export interface Workload {
  name: string;
  unit: 'IOPS' | 'MB/s' | 'writes/s';
  args: string[];
}

export const workloads: Workload[] = [
  { name: 'rand4k', unit: 'IOPS', args: ['--rw=randwrite', '--bs=4k', '--iodepth=32'] },
  { name: 'seq1m', unit: 'MB/s', args: ['--rw=write', '--bs=1m', '--iodepth=16'] },
  { name: 'flush4k', unit: 'writes/s', args: ['--rw=write', '--bs=4k', '--iodepth=1', '--fsync=1'] },
];

export const rand4k: Workload = workloads[0]!;

export interface FioResult {
  iops: number;
  bwBytes: number;
  /** Completion latency of the writes, microseconds. */
  clatUs: { p50: number; p99: number; p999: number; max: number };
}

function fioArgs(uri: string, w: Workload, runtimeS: number, extra: readonly string[]): string[] {
  return [
    '--name=bench',
    '--ioengine=nbd',
    `--uri=${uri}`,
    `--size=${SIZE_MIB}M`,
    '--time_based',
    `--runtime=${runtimeS}`,
    '--ramp_time=1',
    '--output-format=json',
    ...w.args,
    ...extra,
  ];
}

function parseFio(stdout: string): FioResult {
  const at = stdout.indexOf('{');
  if (at < 0) throw new Error(`fio printed no JSON: ${stdout.slice(0, 500)}`);
  const job = JSON.parse(stdout.slice(at)).jobs[0].write as {
    iops: number;
    bw_bytes: number;
    clat_ns: { max: number; percentile?: Record<string, number> };
  };
  const pct = (k: string): number => (job.clat_ns.percentile?.[k] ?? Number.NaN) / 1000;
  return {
    iops: job.iops,
    bwBytes: job.bw_bytes,
    clatUs: {
      p50: pct('50.000000'),
      p99: pct('99.000000'),
      p999: pct('99.900000'),
      max: job.clat_ns.max / 1000,
    },
  };
}

export interface FioRun {
  /** Stop fio early (SIGINT: it stops and still prints its figures). */
  stop(): void;
  readonly done: Promise<FioResult>;
  /** Set once fio has exited. */
  exited: boolean;
}

/** Start fio (after a `sync`, as every run does) for `runtimeS` seconds (after a 1 s ramp). */
export async function startFio(
  uri: string,
  w: Workload,
  extra: readonly string[] = [],
  runtimeS = SECONDS,
): Promise<FioRun> {
  await run('sync', []);
  const child = track(spawn('fio', fioArgs(uri, w, runtimeS, extra), { stdio: ['ignore', 'pipe', 'pipe'] }));
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  let stopped = false;
  const r: FioRun = {
    exited: false,
    stop: () => {
      if (child.exitCode === null && child.signalCode === null) {
        stopped = true;
        child.kill('SIGINT');
      }
    },
    done: new Promise<FioResult>((resolve, reject) => {
      child.once('error', reject);
      child.once('close', (code, signal) => {
        r.exited = true;
        // Stopped by SIGINT, fio exits 128 but still prints its figures.
        if (code !== 0 && !(stopped && code === 128)) {
          reject(new Error(`fio exited (${code ?? signal}): ${stderr.trim().slice(-1000)}`));
          return;
        }
        try {
          resolve(parseFio(stdout));
        } catch (e) {
          reject(e as Error);
        }
      });
    }),
  };
  // Seen by whoever awaits `done`; a run nobody awaits yet must not crash the bench.
  r.done.catch(() => undefined);
  return r;
}

/** One fio run of `w` for BENCH_SECONDS; its headline figure in the workload's unit. */
export async function fio(uri: string, w: Workload, extra: readonly string[] = []): Promise<number> {
  const r = await (await startFio(uri, w, extra)).done;
  return w.unit === 'MB/s' ? r.bwBytes / 1e6 : r.iops;
}

export { percentile } from '../src/core/stats.js';

/** 12345.6 -> "12 346" (the README's style). */
export function fmt(n: number, digits = 0): string {
  if (!Number.isFinite(n)) return 'n/a';
  const [int, frac] = n.toFixed(digits).split('.');
  const grouped = int!.replace(/\B(?=(\d{3})+(?!\d))/g, ' ');
  return frac === undefined ? grouped : `${grouped}.${frac}`;
}
