/**
 * Resync case of `npm run bench` (issue 4): the delta resync rate against a plain `nbdcopy` of the
 * same volume on this machine, as a ratio.
 *   1. Nodes a and b on this machine, group g (a -> b) with one volume of BENCH_RESYNC_MIB; the
 *      initial copy finishes (state pair at the target).
 *   2. Suspend g; fio writes the whole volume (1 MiB sequential, QD16) over NBD, so every chunk of
 *      the dirty bitmap is set; the source's dirtyBytes must equal the volume size.
 *   3. Resume; the time until the source says 'pair' and the target has applied up to the source's
 *      seqWritten (both polled every 50 ms). Rate = dirty bytes / seconds.
 *   4. `nbdcopy --flush` of the same source volume over NBD into a file in the bench directory (so
 *      flushed to disk at the end), timed the same way. Rate = volume bytes / seconds.
 * Both timed phases start after a `sync`. Also printed: remcopy_resync_bytes_total vs dirtyBytes.
 */
import { spawn } from 'node:child_process';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { apiCall } from '../src/node/api.js';
import {
  apiOf,
  copyJournalled,
  type GroupStatus,
  groupStatus,
  metricValue,
  waitFor,
} from '../src/testing/cluster.js';
import { type NodeProcess, startNodeProcess, writeTopology } from '../src/testing/proc.js';
import { envNumber, fmt, removeDir, run, sleep, tempDir, track } from './common.js';

const GROUP = 'g';
const RESYNC_MIB = envNumber('BENCH_RESYNC_MIB', 512);
const MAX_SECONDS = envNumber('BENCH_CATCHUP_MAX_SECONDS', 300);
const JOURNAL = process.env.BENCH_JOURNAL ?? '4GiB';
const POLL_MS = 50;

export interface ResyncResult {
  volumeBytes: number;
  /** Source dirtyBytes after fio, before resume. */
  dirtyBytes?: number;
  /** dirtyBytes in the answer to POST resume. */
  resumeDirtyBytes?: number;
  fioMBps?: number;
  resyncS?: number;
  /** remcopy_resync_bytes_total at the source, after minus before. */
  resyncedBytes?: number;
  /** The source's last resync progress seen while it ran. */
  lastProgress?: GroupStatus['resync'];
  /** Status polls (source and target) from resume to done. */
  polls?: number;
  nbdcopyS?: number;
  copyBytes?: number;
  errors: string[];
}

/** Run `cmd` as a tracked child (killed if the bench ends first); its stdout, or an error with stderr. */
function runTracked(cmd: string, args: string[], cwd: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = track(spawn(cmd, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] }));
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.once('error', reject);
    child.once('close', (code, signal) =>
      code === 0
        ? resolve(stdout)
        : reject(new Error(`${cmd} exited (${code ?? signal}): ${stderr.trim().slice(-1000)}`)),
    );
  });
}

const json = (g: unknown): string => JSON.stringify(g);

export async function runResync(): Promise<ResyncResult> {
  const volumeBytes = RESYNC_MIB * 1048576;
  const r: ResyncResult = { volumeBytes, errors: [] };
  const dir = tempDir('remcopy-resync');
  const nodes = new Map<string, NodeProcess>();
  try {
    const journal = `{ size: ${JOURNAL}, segmentSize: 64MiB, throttleMaxDelay: 10s }`;
    const spec = { volumes: { vol: `${RESYNC_MIB}MiB` }, journal };
    const topo = await writeTopology(dir, { a: spec, b: spec }, { [GROUP]: ['a', 'b', 'vol'] });
    const apiA = apiOf(topo.ports.get('a')!.api);
    const apiB = apiOf(topo.ports.get('b')!.api);
    const uri = `nbd://127.0.0.1:${topo.ports.get('a')!.nbd}/vol`;
    const started = await Promise.allSettled(
      ['a', 'b'].map(async (n) => {
        const p = await startNodeProcess(topo.file, n, 60_000);
        nodes.set(n, p);
        track(p.child);
      }),
    );
    for (const s of started) if (s.status === 'rejected') throw s.reason;
    const src = (): Promise<GroupStatus> => groupStatus(apiA, topo.secret, GROUP);
    const tgt = (): Promise<GroupStatus> => groupStatus(apiB, topo.secret, GROUP);
    const stateIs = (f: () => Promise<GroupStatus>, state: string) => async () =>
      (await f()).state === state ? true : undefined;

    await copyJournalled(apiA, topo.secret, GROUP);
    await waitFor(`group ${GROUP} in state pair at the target`, stateIs(tgt, 'pair'), 120_000);

    await apiCall(apiA, topo.secret, 'POST', `/v1/groups/${GROUP}/suspend`);
    await waitFor(`group ${GROUP} suspended at the source`, stateIs(src, 'suspended'));
    await waitFor(`group ${GROUP} suspended at the target`, stateIs(tgt, 'suspended'));
    process.stderr.write(`resync: suspended, fio writes all ${RESYNC_MIB} MiB\n`);
    const out = await runTracked(
      'fio',
      [
        '--name=dirty',
        '--ioengine=nbd',
        `--uri=${uri}`,
        `--size=${RESYNC_MIB}M`,
        '--rw=write',
        '--bs=1M',
        '--iodepth=16',
        '--output-format=json',
      ],
      dir,
    );
    const w = JSON.parse(out.slice(out.indexOf('{'))).jobs[0].write as { bw_bytes: number; io_bytes: number };
    r.fioMBps = w.bw_bytes / 1e6;
    const suspended = await src();
    r.dirtyBytes = suspended.dirtyBytes;
    if (suspended.state !== 'suspended' || suspended.dirtyBytes !== volumeBytes) {
      r.errors.push(`after fio (${fmt(w.io_bytes)} bytes written) the source says ${json(suspended)}`);
    }

    const metric = `remcopy_resync_bytes_total{group="${GROUP}"}`;
    const metricBefore = (await metricValue(apiA, topo.secret, metric)) ?? 0;
    await run('sync', []);
    const t0 = performance.now();
    const resumed = (await apiCall(apiA, topo.secret, 'POST', `/v1/groups/${GROUP}/resume`)) as {
      dirtyBytes: number;
    };
    r.resumeDirtyBytes = resumed.dirtyBytes;
    let polls = 1;
    let next = performance.now();
    let [s, t] = await Promise.all([src(), tgt()]);
    while (!(s.state === 'pair' && t.seqApplied >= s.seqWritten)) {
      if (performance.now() - t0 > MAX_SECONDS * 1000) {
        throw new Error(
          `resync not done after ${MAX_SECONDS} s (${polls} polls); source: ${json(s)}; target: ${json(t)}`,
        );
      }
      if (s.resync) r.lastProgress = s.resync;
      next += POLL_MS; // a fixed schedule: a slow answer does not push the next poll back
      await sleep(next - performance.now());
      [s, t] = await Promise.all([src(), tgt()]);
      polls++;
    }
    r.resyncS = (performance.now() - t0) / 1000;
    r.polls = polls;
    r.resyncedBytes = ((await metricValue(apiA, topo.secret, metric)) ?? 0) - metricBefore;
    process.stderr.write(`resync: ${fmt(resumed.dirtyBytes)} bytes in ${r.resyncS.toFixed(2)} s\n`);

    const copy = join(dir, 'copy.img');
    await run('sync', []);
    const t1 = performance.now();
    await runTracked('nbdcopy', ['--flush', uri, copy], dir);
    r.nbdcopyS = (performance.now() - t1) / 1000;
    r.copyBytes = statSync(copy).size;
    process.stderr.write(`resync: nbdcopy of ${fmt(r.copyBytes)} bytes in ${r.nbdcopyS.toFixed(2)} s\n`);
  } catch (e) {
    r.errors.push((e as Error).message);
  } finally {
    await Promise.all(
      [...nodes].map(async ([name, p]) => {
        const code = await p.stop();
        if (code !== 0) process.stderr.write(`resync: node ${name} exited with ${code}\n`);
      }),
    );
    removeDir(dir);
  }
  return r;
}

/** The resync summary: rates of the resync and of nbdcopy, their ratio, bytes resynced vs dirty. */
export function reportResync(r: ResyncResult): string {
  const mbps = (bytes: number | undefined, s: number | undefined): number =>
    bytes === undefined || s === undefined ? Number.NaN : bytes / 1e6 / s;
  const dirty = r.resumeDirtyBytes ?? r.dirtyBytes;
  const resync = mbps(dirty, r.resyncS);
  const copy = mbps(r.copyBytes, r.nbdcopyS);
  const secs = (s: number | undefined): string => (s === undefined ? 'n/a' : `${s.toFixed(2)} s`);
  const rows: [string, string][] = [
    ['resync (resume until pair, target applied all)', `${fmt(resync, 1)} MB/s  (${secs(r.resyncS)})`],
    ['nbdcopy --flush of the volume to a local file', `${fmt(copy, 1)} MB/s  (${secs(r.nbdcopyS)})`],
    ['ratio resync / nbdcopy', Number.isFinite(resync / copy) ? `${(resync / copy).toFixed(2)}x` : 'n/a'],
    [
      'resynced bytes (metric) / dirty bytes',
      `${fmt(r.resyncedBytes ?? Number.NaN)} / ${fmt(dirty ?? Number.NaN)}` +
        (r.resyncedBytes !== undefined && dirty ? `  (${(r.resyncedBytes / dirty).toFixed(2)}x)` : ''),
    ],
  ];
  const w0 = Math.max(...rows.map((x) => x[0].length));
  const lines = [
    `Delta resync vs plain nbdcopy, both nodes on this machine: ${fmt(RESYNC_MIB)} MiB volume, all dirty`,
    '',
    ...rows.map(([a, b]) => `${a.padEnd(w0)}  ${b}`),
    '',
    `dirty: fio 1 MiB sequential writes QD16 over the whole volume while suspended (${fmt(r.fioMBps ?? Number.NaN)} MB/s); ` +
      `dirtyBytes at the source ${fmt(r.dirtyBytes ?? Number.NaN)} of ${fmt(r.volumeBytes)}; ` +
      `resync polled every ${POLL_MS} ms (${r.polls ?? 'n/a'} polls` +
      (r.polls && r.resyncS ? `, one per ${fmt((r.resyncS * 1000) / r.polls)} ms on average)` : ')') +
      (r.lastProgress ? `, last progress seen ${json(r.lastProgress)}` : ''),
    `MB = 10^6 bytes; nbdcopy ${fmt(r.copyBytes ?? Number.NaN)} bytes, file and fsync in the bench directory`,
  ];
  for (const e of r.errors) lines.push(`FAILED resync: ${e}`);
  return `${lines.join('\n')}\n`;
}
