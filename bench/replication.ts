/**
 * Replication cases of `npm run bench` (issue 3), both nodes on this machine:
 *   onoff   fio 4 KiB random write QD32 on a plain remcopy volume (in no group: not journalled, not
 *           replicated) vs on the source volume of an async group to node b, initial copy done
 *   lag     the group's lag (source GET /v1/status, lagMs, every 100 ms) while fio writes at half
 *           the "on" rate for BENCH_SECONDS
 *   outage  node b stopped for BENCH_OUTAGE_SECONDS while fio writes at half rate, then started
 *           again; time until the source reports applied the seq written when b was restarted
 *           (fio keeps writing at half rate during the catch-up), records and MiB per second
 *   populated a pair whose source volume already holds data (written around the page cache before
 *           node a starts, so none of it is cached): the initial copy's time, then fio 4 KiB random
 *           write QD32 as in onoff. The copy reads the whole volume; read through the page cache it
 *           left it cached in large folios, which halved the host writes after it (README). While
 *           the copy runs, a host writes 4 KiB QD1 into the volume's first 64 MiB: its write rate
 *           and latency during the copy (a copy that holds the event loop shows in them).
 * Bars: "on" at least 0.5x "off"; lag p99 under 1000 ms at half load.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { FileBlockDevice } from '../src/storage/blockdev.js';
import {
  apiOf,
  type Api,
  copyJournalled,
  type GroupStatus,
  groupStatus,
  waitFor,
} from '../src/testing/cluster.js';
import { type NodeProcess, startNodeProcess, type TestTopology, writeTopology } from '../src/testing/proc.js';
import {
  envNumber,
  fio,
  type FioResult,
  fmt,
  type FioRun,
  percentile,
  rand4k,
  removeDir,
  SECONDS,
  SIZE_MIB,
  sleep,
  startFio,
  tempDir,
  track,
} from './common.js';

export const GROUP = 'g';
/** The host writing during a populated volume's initial copy. */
const probe4k = {
  name: 'probe4k',
  unit: 'IOPS' as const,
  args: ['--rw=randwrite', '--bs=4k', '--iodepth=1'],
};
const RECORD_BYTES = 4096;
const OUTAGE_SECONDS = envNumber('BENCH_OUTAGE_SECONDS', 30);
const CATCHUP_MAX_SECONDS = envNumber('BENCH_CATCHUP_MAX_SECONDS', 300);
const SAMPLE_MS = envNumber('BENCH_LAG_SAMPLE_MS', 100);
// 16 GiB: remcopy-journal releases nothing, and seq1m at 540 MB/s for 8 s filled 4 GiB (the run then
// died of ENOSPC from the throttled writes). Segments are sparse: only what is written takes disk.
const JOURNAL = process.env.BENCH_JOURNAL ?? '16GiB';
const ON_OFF_BAR = 0.5;
const LAG_P99_BAR_MS = 1000;

export const REPL_CASES = ['onoff', 'lag', 'outage', 'populated'] as const;
export type ReplCase = (typeof REPL_CASES)[number];

/** BENCH_REPL: unset, "1" or "all" = every case; "0" = none; else a comma list of REPL_CASES. */
export function replCases(): Set<ReplCase> {
  const raw = (process.env.BENCH_REPL ?? 'all').trim();
  if (raw === '0' || raw === '') return new Set();
  if (raw === '1' || raw === 'all') return new Set(REPL_CASES);
  const out = new Set<ReplCase>();
  for (const c of raw.split(',').map((s) => s.trim())) {
    if (!(REPL_CASES as readonly string[]).includes(c)) {
      throw new Error(`BENCH_REPL: unknown case "${c}" (cases: ${REPL_CASES.join(', ')}, or 0 / 1)`);
    }
    out.add(c as ReplCase);
  }
  return out;
}

function outageSignal(): 'SIGTERM' | 'SIGKILL' {
  const s = process.env.BENCH_OUTAGE_SIGNAL ?? 'SIGTERM';
  if (s !== 'SIGTERM' && s !== 'SIGKILL') throw new Error(`BENCH_OUTAGE_SIGNAL must be SIGTERM or SIGKILL`);
  return s;
}

async function startNode(topo: TestTopology, name: string, timeoutMs = 60_000): Promise<NodeProcess> {
  const p = await startNodeProcess(topo.file, name, timeoutMs);
  track(p.child);
  return p;
}

export interface Cluster {
  readonly uri: string;
  readonly apiA: Api;
  /** The source's view of the group (throws without replication). */
  status(): Promise<GroupStatus>;
  /** Stop node b (target) with `signal`. */
  stopB(signal: 'SIGTERM' | 'SIGKILL'): Promise<void>;
  /** Start node b again, from its data directory; resolves when it is ready. */
  startB(): Promise<void>;
  /** Stop every node (SIGTERM) and remove the directory. */
  stop(): Promise<void>;
  /** Process ids of the nodes running now, a first (bench/cost.ts reads their CPU time). */
  pids(): number[];
  /** Seconds from starting the nodes until the pair was in state 'pair' (replicating clusters). */
  readonly copySeconds?: number;
}

/** Fills a's volume with nonzero data written with O_DIRECT, so that none of it is cached. */
async function populate(file: string): Promise<void> {
  const dev = FileBlockDevice.open(file, SIZE_MIB * 1048576);
  const chunk = Buffer.alloc(1048576);
  for (let i = 0; i < chunk.length; i += 8) chunk.writeUInt32LE((i * 2654435761) >>> 0, i);
  for (let off = 0; off < dev.sizeBytes; off += chunk.length) {
    chunk.writeUInt32LE(off / chunk.length, 4);
    dev.writeForCopySync(off, chunk.subarray(0, Math.min(chunk.length, dev.sizeBytes - off)));
  }
  if (dev.directBytes.written < dev.sizeBytes) {
    process.stderr.write(`populated: ${file} was written through the page cache (no O_DIRECT here)\n`);
  }
  await dev.close();
}

/**
 * A remcopy node `a` with volume `vol` in a fresh directory. With `replicate`, `vol` is the source
 * of the async group `g` to node `b` (also started), and this resolves once the initial copy is
 * journalled and the target reports the pair in state 'pair'. Without, `vol` is in no group. With
 * `populated`, a's volume is filled with data (uncached) before the nodes start.
 */
export async function startCluster(
  replicate: boolean,
  populated = false,
  /** Called once the nodes are up, before the initial copy is awaited. */
  onNodesUp?: (uri: string) => Promise<void>,
): Promise<Cluster> {
  const dir = tempDir(replicate ? 'remcopy-repl' : 'remcopy-plain');
  const journal = `{ size: ${JOURNAL}, segmentSize: 64MiB, throttleMaxDelay: 10s }`;
  const spec = { volumes: { vol: `${SIZE_MIB}MiB` }, journal };
  const topo = await writeTopology(
    dir,
    replicate ? { a: spec, b: spec } : { a: spec },
    replicate ? { [GROUP]: ['a', 'b', 'vol'] } : {},
  );
  const ports = topo.ports.get('a')!;
  const apiA = apiOf(ports.api);
  if (populated) {
    mkdirSync(join(dir, 'a', 'volumes'), { recursive: true });
    await populate(join(dir, 'a', 'volumes', 'vol.img'));
  }
  const t0 = performance.now();
  const started = await Promise.allSettled([
    startNode(topo, 'a'),
    replicate ? startNode(topo, 'b') : Promise.resolve(undefined),
  ]);
  let a = started[0].status === 'fulfilled' ? started[0].value : undefined;
  let b = started[1].status === 'fulfilled' ? started[1].value : undefined;
  const stopAll = async (): Promise<void> => {
    const codes = await Promise.all([a?.stop(), b?.stop()]);
    codes.forEach((code, i) => {
      if (code !== undefined && code !== 0) process.stderr.write(`node ${'ab'[i]} exited with ${code}\n`);
    });
    a = b = undefined;
    removeDir(dir);
  };
  const failed = started.find((s) => s.status === 'rejected');
  if (failed) {
    await stopAll();
    throw failed.reason;
  }
  const cluster: { -readonly [K in keyof Cluster]: Cluster[K] } = {
    uri: `nbd://127.0.0.1:${ports.nbd}/vol`,
    apiA,
    status: () => groupStatus(apiA, topo.secret, GROUP),
    async stopB(signal) {
      if (!b) return;
      if (signal === 'SIGKILL') await b.kill9();
      else await b.stop();
      b = undefined;
    },
    async startB() {
      b = await startNode(topo, 'b');
    },
    stop: stopAll,
    pids: () => [a?.child.pid, b?.child.pid].filter((p) => p !== undefined),
  };
  if (replicate) {
    try {
      await onNodesUp?.(cluster.uri);
      await copyJournalled(apiA, topo.secret, GROUP);
      const apiB = apiOf(topo.ports.get('b')!.api);
      await waitFor(
        `group ${GROUP} in state pair at the target`,
        async () => ((await groupStatus(apiB, topo.secret, GROUP)).state === 'pair' ? true : undefined),
        120_000,
      );
      cluster.copySeconds = (performance.now() - t0) / 1000;
    } catch (e) {
      await stopAll();
      throw e;
    }
  }
  return cluster;
}

/** Until the target has applied everything written so far (a steady start for the next case). */
async function drain(c: Cluster): Promise<void> {
  const want = (await c.status()).seqWritten;
  await waitFor(
    `the target to apply up to seq ${want}`,
    async () => ((await c.status()).seqApplied >= want ? true : undefined),
    CATCHUP_MAX_SECONDS * 1000,
  );
}

interface Sample {
  lagMs: number;
  lagRecords: number;
}

/** Samples the source's group status every SAMPLE_MS (on a fixed schedule) until stopped. */
function sampleLag(c: Cluster): { stop(): Promise<Sample[]> } {
  const samples: Sample[] = [];
  let on = true;
  let failure: Error | undefined;
  const loop = (async () => {
    let next = performance.now();
    while (on) {
      const g = await c.status();
      samples.push({ lagMs: g.lagMs, lagRecords: g.lagRecords });
      next += SAMPLE_MS;
      await sleep(next - performance.now());
    }
  })().catch((e: Error) => {
    failure = e;
  });
  return {
    async stop() {
      on = false;
      await loop;
      if (failure) throw new Error(`status sampling failed: ${failure.message}`);
      return samples;
    },
  };
}

export interface LagResult {
  rateIops: number;
  doneIops: number;
  samples: number;
  p50: number;
  p99: number;
  max: number;
  maxRecords: number;
}

export interface OutageResult {
  signal: string;
  rateIops: number;
  outageS: number;
  /** Records journalled per second while b was down (seqWritten). */
  writtenPerS: number;
  backlogRecords: number;
  readyS: number;
  caughtUp: boolean;
  elapsedS: number;
  appliedRecords: number;
  recPerS: number;
  mibPerS: number;
  loadIops: number;
}

export interface ReplResults {
  offIops?: number;
  onIops?: number;
  populated?: { copySeconds: number; iops: number; duringCopy: FioResult };
  halfRate?: { iops: number; from: string };
  lag?: LagResult;
  outage?: OutageResult;
  errors: string[];
}

async function lagCase(c: Cluster, rate: number): Promise<LagResult> {
  await drain(c);
  const load = await startFio(c.uri, rand4k, [`--rate_iops=${rate}`]);
  const sampler = sampleLag(c);
  let res: FioResult;
  let samples: Sample[];
  try {
    res = await load.done;
  } finally {
    load.stop();
    samples = await sampler.stop();
  }
  const ms = samples.map((s) => s.lagMs).sort((x, y) => x - y);
  return {
    rateIops: rate,
    doneIops: res.iops,
    samples: samples.length,
    p50: percentile(ms, 50),
    p99: percentile(ms, 99),
    max: ms.at(-1) ?? Number.NaN,
    maxRecords: Math.max(...samples.map((s) => s.lagRecords)),
  };
}

async function outageCase(c: Cluster, rate: number): Promise<OutageResult> {
  const signal = outageSignal();
  await drain(c);
  const load = await startFio(
    c.uri,
    rand4k,
    [`--rate_iops=${rate}`],
    Math.ceil(OUTAGE_SECONDS + CATCHUP_MAX_SECONDS + 120),
  );
  try {
    await sleep(2000); // fio connected and past its 1 s ramp
    const before = await c.status();
    const t0 = performance.now();
    process.stderr.write(`outage: stopping node b (${signal}) for ${OUTAGE_SECONDS} s\n`);
    await c.stopB(signal);
    await sleep(OUTAGE_SECONDS * 1000 - (performance.now() - t0));
    if (load.exited) await load.done; // fio failed: its error
    const atRestart = await c.status();
    const tr = performance.now();
    const outageS = (tr - t0) / 1000;
    const backlog = atRestart.seqWritten - atRestart.seqApplied;
    process.stderr.write(`outage: restarting node b, ${fmt(backlog)} records behind\n`);
    await c.startB();
    const readyS = (performance.now() - tr) / 1000;
    let last = atRestart;
    let caughtUp = false;
    while (performance.now() - tr < CATCHUP_MAX_SECONDS * 1000) {
      last = await c.status();
      if (last.seqApplied >= atRestart.seqWritten) {
        caughtUp = true;
        break;
      }
      if (load.exited) await load.done;
      await sleep(SAMPLE_MS);
    }
    const elapsedS = (performance.now() - tr) / 1000;
    load.stop();
    const loadIops = (await load.done).iops;
    const applied = Math.min(last.seqApplied, atRestart.seqWritten) - atRestart.seqApplied;
    return {
      signal,
      rateIops: rate,
      outageS,
      writtenPerS: (atRestart.seqWritten - before.seqWritten) / outageS,
      backlogRecords: backlog,
      readyS,
      caughtUp,
      elapsedS,
      appliedRecords: applied,
      recPerS: applied / elapsedS,
      mibPerS: (applied * RECORD_BYTES) / 1048576 / elapsedS,
      loadIops,
    };
  } finally {
    load.stop();
    await load.done.catch(() => undefined);
  }
}

function halfRateFromEnv(): number | undefined {
  const raw = process.env.BENCH_HALF_IOPS;
  return raw === undefined || raw === '' ? undefined : Math.round(envNumber('BENCH_HALF_IOPS', 1));
}

/** Runs the chosen cases; a failed case is recorded in `errors` and the others still run. */
export async function runReplication(cases: Set<ReplCase>): Promise<ReplResults> {
  const r: ReplResults = { errors: [] };
  const fixedRate = halfRateFromEnv();
  const needOn = cases.has('onoff') || (fixedRate === undefined && (cases.has('lag') || cases.has('outage')));
  if (cases.has('onoff')) {
    const c = await startCluster(false);
    try {
      r.offIops = await fio(c.uri, rand4k);
      process.stderr.write(`replication off rand4k: ${fmt(r.offIops)} IOPS\n`);
    } catch (e) {
      r.errors.push(`off: ${(e as Error).message}`);
    } finally {
      await c.stop();
    }
  }
  if (cases.has('populated')) {
    try {
      let probe: FioRun | undefined;
      const c = await startCluster(true, true, async (uri) => {
        probe = await startFio(uri, probe4k, ['--size=64M', '--ramp_time=0'], CATCHUP_MAX_SECONDS);
      });
      try {
        probe!.stop();
        const duringCopy = await probe!.done;
        await drain(c);
        r.populated = { copySeconds: c.copySeconds!, iops: await fio(c.uri, rand4k), duringCopy };
        process.stderr.write(
          `populated: copy ${r.populated.copySeconds.toFixed(1)} s (QD1 writes meanwhile: ` +
            `${fmt(duringCopy.iops)}/s, p50 ${fmt(duringCopy.clatUs.p50)} us, p99 ${fmt(duringCopy.clatUs.p99)} us), ` +
            `rand4k after ${fmt(r.populated.iops)} IOPS\n`,
        );
      } finally {
        await c.stop();
      }
    } catch (e) {
      r.errors.push(`populated: ${(e as Error).message}`);
    }
  }
  if (!needOn && !cases.has('lag') && !cases.has('outage')) return r;
  const c = await startCluster(true);
  try {
    if (needOn) {
      r.onIops = await fio(c.uri, rand4k);
      process.stderr.write(`replication on rand4k: ${fmt(r.onIops)} IOPS\n`);
    }
    const rate = fixedRate ?? Math.max(1, Math.round(r.onIops! / 2));
    r.halfRate = { iops: rate, from: fixedRate === undefined ? 'half the "on" IOPS' : 'BENCH_HALF_IOPS' };
    if (cases.has('lag')) {
      try {
        r.lag = await lagCase(c, rate);
        process.stderr.write(`lag at ${fmt(rate)} IOPS: p99 ${fmt(r.lag.p99)} ms\n`);
      } catch (e) {
        r.errors.push(`lag: ${(e as Error).message}`);
      }
    }
    if (cases.has('outage')) {
      try {
        r.outage = await outageCase(c, rate);
        process.stderr.write(`catch-up: ${fmt(r.outage.recPerS)} records/s\n`);
      } catch (e) {
        r.errors.push(`outage: ${(e as Error).message}`);
      }
    }
  } catch (e) {
    r.errors.push(`on: ${(e as Error).message}`);
  } finally {
    await c.stop();
  }
  return r;
}

const verdict = (ok: boolean | undefined): string => (ok === undefined ? 'n/a' : ok ? 'met' : 'NOT MET');

/** The replication summary: one row per measure, with its bar and whether it is met. */
export function reportReplication(r: ReplResults): string {
  const rows: [string, string, string, string][] = [];
  if (r.offIops !== undefined || r.onIops !== undefined) {
    const ratio = r.offIops && r.onIops !== undefined ? r.onIops / r.offIops : undefined;
    rows.push(['rand4k, replication off (plain volume)', `${fmt(r.offIops ?? NaN)} IOPS`, '', '']);
    rows.push([
      'rand4k, replication on (async to b)',
      `${fmt(r.onIops ?? NaN)} IOPS${ratio === undefined ? '' : `  ${ratio.toFixed(2)}x off`}`,
      `>= ${ON_OFF_BAR.toFixed(2)}x off`,
      verdict(ratio === undefined ? undefined : ratio >= ON_OFF_BAR),
    ]);
  }
  if (r.populated) {
    const p = r.populated;
    rows.push([
      `initial copy of a populated ${SIZE_MIB} MiB volume`,
      `${p.copySeconds.toFixed(1)} s  ${fmt((SIZE_MIB * 1048576) / 1e6 / p.copySeconds)} MB/s (from node start)`,
      '',
      '',
    ]);
    const d = p.duringCopy.clatUs;
    rows.push([
      '  4 KiB QD1 writes during it',
      `${fmt(p.duringCopy.iops)}/s  p50 ${fmt(d.p50)} us  p99 ${fmt(d.p99)} us  p99.9 ${fmt(d.p999)} us  max ${fmt(d.max)} us`,
      '',
      '',
    ]);
    const ratio = r.onIops ? p.iops / r.onIops : undefined;
    rows.push([
      '  rand4k after it (replicating)',
      `${fmt(p.iops)} IOPS${ratio === undefined ? '' : `  ${ratio.toFixed(2)}x on a fresh volume`}`,
      '',
      '',
    ]);
  }
  if (r.lag) {
    const l = r.lag;
    rows.push([
      `lag at half load (${fmt(l.rateIops)} IOPS asked, ${fmt(l.doneIops)} done)`,
      `p50 ${fmt(l.p50)} ms  p99 ${fmt(l.p99)} ms  max ${fmt(l.max)} ms`,
      `p99 < ${LAG_P99_BAR_MS} ms`,
      verdict(Number.isFinite(l.p99) ? l.p99 < LAG_P99_BAR_MS : undefined),
    ]);
  }
  if (r.outage) {
    const o = r.outage;
    rows.push([
      `catch-up after ${o.outageS.toFixed(1)} s outage (${o.signal} of b)`,
      o.caughtUp
        ? `${fmt(o.backlogRecords)} records (${fmt((o.backlogRecords * RECORD_BYTES) / 1048576, 1)} MiB) in ${o.elapsedS.toFixed(1)} s`
        : `NOT caught up in ${o.elapsedS.toFixed(0)} s: ${fmt(o.appliedRecords)} of ${fmt(o.backlogRecords)} records`,
      '',
      '',
    ]);
    rows.push(['  catch-up rate', `${fmt(o.recPerS)} records/s  ${fmt(o.mibPerS, 1)} MiB/s`, '', '']);
  }
  if (rows.length === 0 && r.errors.length === 0) return '';
  const w0 = Math.max(...rows.map((x) => x[0].length), 7);
  const w1 = Math.max(...rows.map((x) => x[1].length), 6);
  const w2 = Math.max(...rows.map((x) => x[2].length), 3);
  const line = (x: readonly string[]): string =>
    `${x[0]!.padEnd(w0)}  ${x[1]!.padEnd(w1)}  ${x[2]!.padEnd(w2)}  ${x[3]}`.trimEnd();
  const lines = [
    `Async replication, both nodes on this machine: fio 4 KiB random write QD32, ${SECONDS} s per run, ${SIZE_MIB} MiB volume`,
    '',
    ...(rows.length > 0 ? [line(['measure', 'result', 'bar', 'verdict']), ...rows.map(line)] : []),
  ];
  if (r.halfRate) lines.push('', `half load: --rate_iops=${fmt(r.halfRate.iops)} (${r.halfRate.from})`);
  if (r.lag)
    lines.push(
      `lag: source lagMs sampled every ${SAMPLE_MS} ms while fio ran, ${r.lag.samples} samples, up to ${fmt(r.lag.maxRecords)} records behind`,
    );
  if (r.outage) {
    const o = r.outage;
    lines.push(
      `outage: fio kept writing at half rate throughout (${fmt(o.writtenPerS)} records/s journalled while b was down, ${fmt(o.loadIops)} IOPS over the run); b ready ${o.readyS.toFixed(1)} s after restart (from then: ${fmt(o.appliedRecords / Math.max(1e-3, o.elapsedS - o.readyS))} records/s); catch-up time counted from the restart to seqApplied >= seqWritten at restart`,
    );
  }
  for (const e of r.errors) lines.push(`FAILED ${e}`);
  return `${lines.join('\n')}\n`;
}
