/**
 * `node dist/bench/cost.js`: what a request costs remcopy in CPU time, which the machine's other
 * load disturbs far less than throughput. For each workload (BENCH_WORKLOADS, default rand4k and
 * seq1m) a fresh pair of nodes replicates volume `vol` from a to b (as in the bench's remcopy case);
 * fio runs for BENCH_SECONDS + 2 s, and over BENCH_SECONDS in its middle the CPU time (user +
 * system, all threads) of each node is divided by the records the group journalled meanwhile.
 *
 * Prints one line per workload: records/s, and CPU microseconds per record on a and on b (each
 * split into user and system time) and in all.
 * BENCH_ROUNDS repeats each workload (default 1).
 */
import { readFileSync } from 'node:fs';
import { installCleanup, SECONDS, sleep, startFio, workloads } from './common.js';
import { startCluster } from './replication.js';

const TICKS_PER_S = 100; // USER_HZ on Linux

/** utime and stime of a process (every thread), in seconds. */
function cpuSeconds(pid: number): { user: number; sys: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { user: Number(fields[11]) / TICKS_PER_S, sys: Number(fields[12]) / TICKS_PER_S };
}

interface Sample {
  atMs: number;
  cpu: { user: number; sys: number }[];
  seq: number;
}

async function measure(name: string): Promise<string> {
  const w = workloads.find((x) => x.name === name);
  if (!w) throw new Error(`unknown workload ${name}`);
  const c = await startCluster(true);
  try {
    const load = await startFio(c.uri, w, [], SECONDS + 2);
    await sleep(1500);
    const sample = async (): Promise<Sample> => ({
      atMs: performance.now(),
      cpu: c.pids().map(cpuSeconds),
      seq: (await c.status()).seqWritten,
    });
    const s1 = await sample();
    await sleep(SECONDS * 1000);
    const s2 = await sample();
    load.stop();
    const fio = await load.done;
    const records = s2.seq - s1.seq;
    const perRecord = (v: number, was: number): number => ((v - was) * 1e6) / records;
    const us = s2.cpu.map((v, i) => ({
      user: perRecord(v.user, s1.cpu[i]!.user),
      sys: perRecord(v.sys, s1.cpu[i]!.sys),
    }));
    const perS = (records * 1000) / (s2.atMs - s1.atMs);
    const total = us.reduce((x, y) => x + y.user + y.sys, 0);
    const fioFigure =
      w.unit === 'MB/s' ? `${(fio.bwBytes / 1e6).toFixed(0)} MB/s` : `${fio.iops.toFixed(0)} IOPS`;
    const node = (n: string, u: { user: number; sys: number }): string =>
      `${n} ${(u.user + u.sys).toFixed(1).padStart(7)} (user ${u.user.toFixed(1)}, sys ${u.sys.toFixed(1)})`;
    return `${name.padEnd(8)} fio ${fioFigure.padStart(11)} ${perS.toFixed(0).padStart(7)} records/s   CPU us/record: ${node('a', us[0]!)}  ${node('b', us[1]!)}  a+b ${total.toFixed(1).padStart(7)}`;
  } finally {
    await c.stop();
  }
}

async function main(): Promise<void> {
  installCleanup();
  process.env.REMCOPY_LOG_LEVEL ??= 'warn';
  const names = (process.env.BENCH_WORKLOADS ?? 'rand4k,seq1m').split(',');
  const rounds = Number(process.env.BENCH_ROUNDS ?? '1');
  for (let r = 0; r < rounds; r++) {
    for (const n of names) process.stdout.write(`${await measure(n)}\n`);
  }
}

await main();
