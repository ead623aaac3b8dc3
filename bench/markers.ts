/**
 * `npm run bench:markers`: consistency cycles across nodes under load (issue 5, DESIGN.md §3.4).
 *
 * Two source nodes (a1, a2) and two target nodes (b1, b2) on this machine; one consistency set over
 * three groups: g1 a1 -> b1 (bank debits), g2 a2 -> b2 (bank credits), g3 a1 -> b1 (fio's volume).
 * a1 runs a consistency cycle every BENCH_CYCLE_SECONDS. Meanwhile the bank workload moves money
 * from a1 to a2 (a debit acknowledged on a1 before its credit is issued on a2) and fio writes 4 KiB
 * random blocks at QD4 to g3. At the end: every snapshot both targets took passes the bank's
 * dependent-write check; reported are the cycles, the freeze time per source node (p50/p99/max:
 * the bar is p99 under 5 ms), the cycle time, and the host write latency during cycles (the bank's
 * writes, measured here; fio's completion latency percentiles).
 *
 * Environment: BENCH_MARKERS_SECONDS (default 60), BENCH_CYCLE_SECONDS (default 2),
 * BENCH_MARKERS_FIO_IOPS (fio's rate; unset, as fast as it goes: then b1 applies less than a1
 * takes on this machine, and the cycle time grows with b1's lag), BENCH_DIR (temporary
 * directories), REMCOPY_LOG_LEVEL (node logs, default warn).
 */
import { spawn } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { apiCall } from '../src/node/api.js';
import type { BankProgress } from '../src/testing/bank.js';
import { BANK_BLOCK_BYTES, checkBank, runBank } from '../src/testing/bank.js';
import { apiOf, copyJournalled } from '../src/testing/cluster.js';
import { nbdWriter } from '../src/testing/nbd-writer.js';
import type { NodeProcess } from '../src/testing/proc.js';
import { startNodeProcess, writeTopology } from '../src/testing/proc.js';
import { waitState } from '../src/testing/sites.js';
import { envNumber, fmt, installCleanup, percentile, removeDir, run, tempDir, track } from './common.js';

const SECONDS = envNumber('BENCH_MARKERS_SECONDS', 60);
const CYCLE_SECONDS = envNumber('BENCH_CYCLE_SECONDS', 2);
const FIO_IOPS = envNumber('BENCH_MARKERS_FIO_IOPS', 0);
const LAYOUT = { workers: 8, blocksPerWorker: 32 };

interface Summary {
  count: number;
  p50?: number;
  p99?: number;
  max?: number;
}

async function main(): Promise<void> {
  installCleanup();
  process.env.REMCOPY_LOG_LEVEL ??= 'warn';
  const dir = tempDir('remcopy-bench-markers-');
  const topo = await writeTopology(
    dir,
    {
      a1: { volumes: { v1: '64MiB', data: '256MiB' }, journal: '{ size: 2GiB }' },
      a2: { volumes: { v2: '64MiB' }, journal: '{ size: 2GiB }' },
      b1: { volumes: { v1: '64MiB', data: '256MiB' }, journal: '{ size: 2GiB }' },
      b2: { volumes: { v2: '64MiB' }, journal: '{ size: 2GiB }' },
    },
    { g1: ['a1', 'b1', 'v1'], g2: ['a2', 'b2', 'v2'], g3: ['a1', 'b1', 'data'] },
    { bank: `{ groups: [g1, g2, g3], cycleSeconds: ${CYCLE_SECONDS}, keepSnapshots: 1000 }` },
  );
  const procs: NodeProcess[] = [];
  const port = (n: string) => topo.ports.get(n)!;
  const uri = (n: string, v: string) => `nbd://127.0.0.1:${port(n).nbd}/${v}`;
  try {
    for (const n of ['b1', 'b2', 'a1', 'a2']) procs.push(await startNodeProcess(topo.file, n, 60_000));
    for (const [g, src, dst] of [
      ['g1', 'a1', 'b1'],
      ['g2', 'a2', 'b2'],
      ['g3', 'a1', 'b1'],
    ] as const) {
      await copyJournalled(apiOf(port(src).api), topo.secret, g);
      await waitState(apiOf(port(dst).api), topo.secret, g, 'pair', 300_000);
    }
    const fioRate = FIO_IOPS > 0 ? ` at ${FIO_IOPS} IOPS` : '';
    process.stdout.write(
      `markers: 2 source + 2 target nodes, cycles every ${CYCLE_SECONDS} s for ${SECONDS} s, bank (8 workers) + fio 4k randwrite QD4${fioRate}\n`,
    );
    const debit = await nbdWriter(uri('a1', 'v1'));
    const credit = await nbdWriter(uri('a2', 'v2'));
    const latencies: number[] = [];
    const timed = (w: typeof debit) => async (off: number, data: Buffer) => {
      const t = performance.now();
      await w.write(off, data);
      latencies.push(performance.now() - t);
    };
    const progress: BankProgress = { completed: 0, errors: [] };
    let stop = false;
    const bank = runBank(LAYOUT, timed(debit), timed(credit), () => stop, progress);
    const fio = track(
      spawn(
        'fio',
        [
          '--name=markers',
          '--ioengine=nbd',
          `--uri=${uri('a1', 'data')}`,
          '--size=256M',
          '--rw=randwrite',
          '--bs=4k',
          '--iodepth=4',
          ...(FIO_IOPS > 0 ? [`--rate_iops=${FIO_IOPS}`] : []),
          '--time_based',
          `--runtime=${SECONDS}`,
          '--output-format=json',
        ],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      ),
    );
    let fioOut = '';
    fio.stdout.on('data', (d: Buffer) => (fioOut += d.toString()));
    const fioDone = new Promise<void>((resolve) => fio.once('close', () => resolve()));
    await new Promise((r) => setTimeout(r, SECONDS * 1000));
    stop = true;
    await bank;
    await fioDone;
    await debit.close();
    await credit.close();
    // Let the last cycle finish.
    await new Promise((r) => setTimeout(r, CYCLE_SECONDS * 1000 + 1000));
    const st = (await apiCall(apiOf(port('a1').api), topo.secret, 'GET', '/v1/status')) as {
      cycles: {
        cycles: number;
        failures: number;
        lastMarker?: number;
        lastError?: string;
        cycleMs: Summary;
        freezeMs: Summary;
        nodes: Record<string, { freezeAnswerMs: Summary }>;
      }[];
    };
    const cyc = st.cycles[0]!;
    // The set's marker state on a node: freeze times on a source, snapshots on a target.
    const markersOf = async (n: string) =>
      (await apiCall(apiOf(port(n).api), topo.secret, 'GET', '/v1/sets/bank/markers')) as {
        source?: { freezeMs: Summary; boundPassed: number };
        target?: { snapshots: { usedBytes: number }[] };
      };
    const perNode: Record<string, Summary> = {};
    for (const n of ['a1', 'a2']) perNode[n] = (await markersOf(n)).source!.freezeMs;
    // How late each node's event loop ran what was due: a freeze waits behind it on both ends.
    const loopDelay: string[] = [];
    for (const n of ['a1', 'a2', 'b1', 'b2']) {
      const d = (
        (await apiCall(apiOf(port(n).api), topo.secret, 'GET', '/v1/status')) as {
          eventLoopDelayMs?: { p50: number; p99: number; max: number };
        }
      ).eventLoopDelayMs;
      loopDelay.push(
        d ? `${n} p50 ${fmt(d.p50, 2)} / p99 ${fmt(d.p99, 2)} / max ${fmt(d.max, 1)}` : `${n} n/a`,
      );
    }
    // Every snapshot on both targets: one image of both source nodes (the bank invariant).
    const listOf = async (node: string, v: string): Promise<number[]> =>
      (
        (await apiCall(apiOf(port(node).api), topo.secret, 'GET', `/v1/volumes/${v}/snapshots`)) as {
          snapshots: { number: number }[];
        }
      ).snapshots.map((x) => x.number);
    // Copy-on-write: what the snapshots hold, per target node (chunks preserved before overwrite).
    const snapSpace: string[] = [];
    for (const n of ['b1', 'b2']) {
      const used = ((await markersOf(n)).target?.snapshots ?? []).reduce((sum, v) => sum + v.usedBytes, 0);
      snapSpace.push(`${n} ${fmt(used / 2 ** 20, 0)} MiB`);
    }
    const on1 = await listOf('b1', 'v1');
    const on2 = new Set(await listOf('b2', 'v2'));
    const both = on1.filter((n) => on2.has(n));
    // A number above the coordinator's last completed marker belongs to a cycle still running.
    const done = (n: number): boolean => n <= (cyc.lastMarker ?? 0);
    const partial = on1.filter(done).length + [...on2].filter(done).length - 2 * both.filter(done).length;
    const bytes = LAYOUT.workers * LAYOUT.blocksPerWorker * BANK_BLOCK_BYTES;
    let bad = 0;
    let checked = 0;
    for (const number of both) {
      const read = async (node: string, v: string): Promise<Buffer> => {
        const file = join(dir, `snap-${node}-${number}`);
        await run('nbdcopy', [uri(node, `${v}@${number}`), file]);
        const b = readFileSync(file).subarray(0, bytes);
        rmSync(file);
        return b;
      };
      const r = checkBank(LAYOUT, await read('b1', 'v1'), await read('b2', 'v2'));
      checked++;
      if (!r.ok) {
        bad++;
        process.stdout.write(`  snapshot @${number}: ${r.violations.slice(0, 3).join('; ')}\n`);
      }
    }
    const fioJob = JSON.parse(fioOut.slice(fioOut.indexOf('{'))).jobs[0].write as {
      iops: number;
      clat_ns: { percentile: Record<string, number> };
    };
    const sorted = [...latencies].sort((a, b) => a - b);
    const ms = (v: number | undefined) => (v === undefined ? 'n/a' : fmt(v, 2));
    process.stdout.write(
      [
        `  cycles: ${cyc.cycles} completed, ${cyc.failures} failed${cyc.lastError ? ` (last: ${cyc.lastError})` : ''}; cycle time p50 ${ms(cyc.cycleMs.p50)} ms, p99 ${ms(cyc.cycleMs.p99)} ms`,
        ...Object.entries(perNode).map(
          ([n, s]) =>
            `  freeze on ${n}: ${s.count} freezes, p50 ${ms(s.p50)} ms, p99 ${ms(s.p99)} ms, max ${ms(s.max)} ms (bar: p99 < 5 ms)`,
        ),
        // The coordinator's view: how long each node took to answer its freeze (a round trip for a2).
        `  freeze answered (a1's view, p50 / p99 / max ms): ${Object.entries(cyc.nodes)
          .map(
            ([n, v]) =>
              `${n} ${ms(v.freezeAnswerMs.p50)} / ${ms(v.freezeAnswerMs.p99)} / ${ms(v.freezeAnswerMs.max)}`,
          )
          .join(', ')}`,
        `  event-loop delay (ms): ${loopDelay.join(', ')}`,
        `  snapshots checked: ${checked} on b1+b2, ${bad} failed the dependent-write check; ${partial} on one target only (a failed cycle the coordinator could not abandon); space the snapshots hold: ${snapSpace.join(', ')}`,
        `  bank: ${fmt(progress.completed)} transfers, ${progress.errors.length} errors; write latency p50 ${ms(percentile(sorted, 50))} ms, p99 ${ms(percentile(sorted, 99))} ms, max ${ms(sorted[sorted.length - 1])} ms`,
        `  fio 4k randwrite QD4${fioRate}: ${fmt(fioJob.iops)} IOPS, completion latency p50 ${ms(fioJob.clat_ns.percentile['50.000000']! / 1e6)} ms, p99 ${ms(fioJob.clat_ns.percentile['99.000000']! / 1e6)} ms`,
      ].join('\n') + '\n',
    );
    if (bad > 0 || progress.errors.length > 0) process.exitCode = 1;
  } finally {
    for (const p of procs) await p.stop().catch(() => undefined);
    removeDir(dir);
  }
}

await main();
