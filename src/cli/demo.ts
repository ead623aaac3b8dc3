/**
 * `remcopy demo`: two sites in a temporary directory and the bank transfers of seed 001 [0003].
 *
 *   1. siteA (source) and siteB (target) start; groups g-debits and g-credits, one consistency set
 *      "bank"; the initial copy runs.
 *   2. Transfers for ~25 s through the native client: a debit on one volume with a host write time,
 *      acknowledged, then the credit on the other volume. Each second a status line: transfers,
 *      seqs written and applied, lag, and how many images of siteB, read at live cuts, were checked
 *      for dependent writes (no credit without its debit).
 *   3. Halfway, siteB is killed (kill -9) and restarted: the lag grows, then siteB catches up.
 *   4. The workload stops; `verify` compares both groups at one point (chunk checksums).
 *   5. Disaster: siteA is killed; `takeover --set bank` promotes siteB; its image is checked again.
 *   One verdict line: PASS or FAIL with the figures.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createWriteStream, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { connect } from '../client/index.js';
import { ExitCode } from '../core/errors.js';
import { apiCall, endpointOf } from '../node/api.js';
import type { Topology } from '../node/config.js';
import { loadConfig } from '../node/config.js';
import type { BankLayout, BankProgress } from '../testing/bank.js';
import { BANK_BLOCK_BYTES, checkBank, runBank } from '../testing/bank.js';
import { runTakeover, verifyGroup } from './manage.js';
import { nodeProcessArgs, nodeProcessEnv } from './node-process.js';
import type { GroupLine } from './status.js';

/** The workload runs 25 s; REMCOPY_DEMO_SECONDS shortens it (the test of the demo uses 8). */
const WORKLOAD_MS = 1000 * (Number(process.env.REMCOPY_DEMO_SECONDS) || 25);
const TARGET_DOWN_AT_MS = 0.36 * WORKLOAD_MS;
const TARGET_DOWN_FOR_MS = 0.16 * WORKLOAD_MS;
const LAYOUT: BankLayout = { workers: 4, blocksPerWorker: 64 };
const BANK_BYTES = LAYOUT.workers * LAYOUT.blocksPerWorker * BANK_BLOCK_BYTES;

const say = (s: string): void => {
  process.stdout.write(`${s}\n`);
};

function demoConfig(port: number): string {
  return `# written by remcopy demo
secret: demo-secret-${process.pid}
nodes:
  siteA:
    dataDir: ./siteA
    nbd: 127.0.0.1:${port}
    link: 127.0.0.1:${port + 1}
    api: 127.0.0.1:${port + 2}
    native: 127.0.0.1:${port + 3}
    writeTime: host-last
    volumes: { debits: 64MiB, credits: 64MiB }
    journal: { size: 1GiB }
  siteB:
    dataDir: ./siteB
    nbd: 127.0.0.1:${port + 10}
    link: 127.0.0.1:${port + 11}
    api: 127.0.0.1:${port + 12}
    volumes: { debits: 64MiB, credits: 64MiB }
    journal: { size: 1GiB }
groups:
  g-debits:  { source: siteA, target: siteB, pairs: { debits: debits } }
  g-credits: { source: siteA, target: siteB, pairs: { credits: credits } }
consistencySets:
  bank: [g-debits, g-credits]
`;
}

interface DemoNode {
  child: ChildProcess;
  exited: Promise<void>;
}

/** Starts `remcopy node` with its log in `<dir>/<name>.log`; resolves when it is ready. */
function startNode(dir: string, configFile: string, name: string): Promise<DemoNode> {
  const child = spawn(process.execPath, nodeProcessArgs(configFile, name), {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: nodeProcessEnv(),
  });
  const log = createWriteStream(join(dir, `${name}.log`), { flags: 'a' });
  child.stderr!.pipe(log);
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  return new Promise((resolve, reject) => {
    createInterface({ input: child.stdout! }).on('line', (l) => {
      if (l.includes('ready')) resolve({ child, exited });
    });
    child.on('exit', (code) =>
      reject(new Error(`${name} exited with ${code}; see ${join(dir, `${name}.log`)}`)),
    );
  });
}

async function groups(topo: Topology, node: string): Promise<GroupLine[]> {
  const s = (await apiCall(endpointOf(topo.nodes.get(node)!), topo.secret, 'GET', '/v1/status')) as {
    groups: GroupLine[];
  };
  return s.groups;
}

/** Reads both bank volumes of siteB at one completed cut and checks the dependent writes. */
async function checkLiveCut(topo: Topology): Promise<ReturnType<typeof checkBank> | undefined> {
  const r = (await apiCall(endpointOf(topo.nodes.get('siteB')!), topo.secret, 'POST', '/v1/sets/bank/read', {
    reads: [
      { volume: 'debits', offset: 0, length: BANK_BYTES },
      { volume: 'credits', offset: 0, length: BANK_BYTES },
    ],
  }).catch(() => undefined)) as { reads: { data: string }[] } | undefined;
  if (!r) return undefined;
  return checkBank(LAYOUT, Buffer.from(r.reads[0]!.data, 'base64'), Buffer.from(r.reads[1]!.data, 'base64'));
}

export async function runDemo(o: { keep?: boolean }): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'remcopy-demo-'));
  const port = 20000 + Math.floor(Math.random() * 20000);
  const configFile = join(dir, 'remcopy.yaml');
  writeFileSync(configFile, demoConfig(port));
  const topo = loadConfig(configFile);
  say(`remcopy demo in ${dir} (node logs: siteA.log, siteB.log)`);
  say('  siteA --async--> siteB   volumes debits + credits (64 MiB each), groups g-debits + g-credits,');
  say('  one consistency set "bank": siteB applies both groups at one cut');
  const started = await Promise.all([
    startNode(dir, configFile, 'siteA'),
    startNode(dir, configFile, 'siteB'),
  ]);
  const a = started[0];
  let b = started[1];
  const problems: string[] = [];
  try {
    say('\n1. initial copy');
    for (;;) {
      const gs = await groups(topo, 'siteB');
      if (gs.every((g) => g.state === 'pair')) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    say('   both pairs in state pair: siteB holds a consistent image');

    say(
      `\n2. bank transfers for ${WORKLOAD_MS / 1000} s: debit (host write time), acknowledged, then credit`,
    );
    const client = await connect(topo.nodes.get('siteA')!.native!);
    const debits = await client.open('debits');
    const credits = await client.open('credits');
    const progress: BankProgress = { completed: 0, errors: [] };
    const t0 = performance.now();
    let stop = false;
    const bank = runBank(
      LAYOUT,
      (off, data) => debits.write(off, data, { writeTime: new Date() }),
      (off, data) => credits.write(off, data),
      () => stop,
      progress,
    );
    let cuts = 0;
    let maxLagMs = 0;
    let targetDown = false;
    let targetRestarted = false;
    while (performance.now() - t0 < WORKLOAD_MS) {
      await new Promise((r) => setTimeout(r, 1000));
      const elapsed = performance.now() - t0;
      if (!targetDown && !targetRestarted && elapsed > TARGET_DOWN_AT_MS) {
        b.child.kill('SIGKILL');
        await b.exited;
        targetDown = true;
        say('   -- siteB killed (kill -9): siteA keeps journalling, the lag grows');
      } else if (targetDown && elapsed > TARGET_DOWN_AT_MS + TARGET_DOWN_FOR_MS) {
        b = await startNode(dir, configFile, 'siteB');
        targetDown = false;
        targetRestarted = true;
        say('   -- siteB restarted: it recovers its journals, resumes at its durable seq and catches up');
      }
      const src = await groups(topo, 'siteA');
      const lag = Math.max(...src.map((g) => g.lagMs ?? 0));
      maxLagMs = Math.max(maxLagMs, lag);
      let cutNote = 'siteB down';
      if (!targetDown) {
        const c = await checkLiveCut(topo);
        if (c) {
          cuts++;
          if (!c.ok) problems.push(`live cut: ${c.violations[0]}`);
          cutNote = `siteB cut: ${c.transfers} transfers, ${c.inFlight} in flight, ${c.ok ? 'consistent' : 'BROKEN'}`;
        }
      }
      const seqs = src.map((g) => `${g.name} ${g.seqWritten}/${g.seqApplied}`).join(' ');
      say(
        `   ${Math.round(elapsed / 1000)
          .toString()
          .padStart(
            2,
          )}s  ${progress.completed} transfers  written/applied ${seqs}  lag ${lag} ms  ${cutNote}`,
      );
    }
    stop = true;
    await bank;
    await client.close();
    if (progress.errors.length > 0) problems.push(`workload: ${progress.errors[0]}`);

    say(`\n3. verify: hold writes, let siteB catch up, compare 1 MiB chunk checksums`);
    for (const g of ['g-debits', 'g-credits']) {
      const r = await verifyGroup(topo, g, 1024 * 1024, 30_000);
      const bad = r.pairs.reduce((n, p) => n + p.mismatches.length, 0);
      say(
        `   ${g}: ${r.pairs[0]!.chunks} chunks at seq ${r.seq}: ${bad === 0 ? 'identical' : `${bad} ranges differ`}`,
      );
      if (bad > 0) problems.push(`verify ${g}: ${bad} ranges differ`);
    }

    say('\n4. disaster: siteA killed (kill -9); takeover of the set at siteB');
    a.child.kill('SIGKILL');
    await a.exited;
    await runTakeover(configFile, { set: 'bank' });
    b.child.kill('SIGTERM');
    await b.exited;
    const after = checkBank(
      LAYOUT,
      readFileSync(join(dir, 'siteB', 'volumes', 'debits.img')).subarray(0, BANK_BYTES),
      readFileSync(join(dir, 'siteB', 'volumes', 'credits.img')).subarray(0, BANK_BYTES),
    );
    if (!after.ok) problems.push(`after takeover: ${after.violations[0]}`);
    say(
      `   siteB after takeover: ${after.transfers} of ${progress.completed} transfers, ${after.inFlight} in flight: ${after.ok ? 'consistent' : 'BROKEN'}`,
    );

    const verdict =
      problems.length === 0
        ? `PASS: ${progress.completed} transfers, ${cuts} live cuts of siteB consistent, max lag ${maxLagMs} ms, verify identical, takeover image consistent`
        : `FAIL: ${problems.slice(0, 3).join('; ')}`;
    say(`\n${verdict}`);
    return problems.length === 0 ? ExitCode.ok : ExitCode.failure;
  } finally {
    for (const n of [a, b]) {
      if (n.child.exitCode === null && n.child.signalCode === null) {
        n.child.kill('SIGTERM');
        await n.exited;
      }
    }
    if (!o.keep) rmSync(dir, { recursive: true, force: true });
  }
}
