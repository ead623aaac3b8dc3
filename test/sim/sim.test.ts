/**
 * Proves that replication keeps its promises under faults (TESTING.md layer 3), with the
 * deterministic simulator of src/testing/sim/ (doc/simulator.md):
 * - many seeds (RC_SIM_SEEDS, default 500, from RC_SIM_SEED_BASE, default 1), each with a seeded
 *   network (delay, loss, duplication, reordering, partitions), seeded disks (lost unsynced writes,
 *   torn journal tails, lost unsynced volume writes, which the target's redo from its last
 *   checkpoint up to the cut it planned last must restore), crashes and restarts of both nodes, and
 *   suspensions with a delta resync after them (writes tracked in dirty bitmaps, copy records,
 *   PAIR_STATE announcements, crashes while a resync runs), overflows of a bounded source journal
 *   (its set suspended), and takeovers followed by a failback (hosts that still write to the old
 *   source until it is fenced, writes at the promoted node, the dirty sets of both sides handed
 *   over, the run going on in the other direction with a resync of their union); every checker
 *   runs on every seed
 *   (prefix consistency and dependent writes whenever the target claims a consistent image,
 *   monotonic cuts, convergence, no loss where promised, release after durable, resync converged,
 *   copies dirty only, bit cleared early, no split brain); a failure names its seed and the command
 *   replaying it;
 * - the faults do happen over those seeds (so a pass means something);
 * - same seed, same run (the trace hash); another seed, another run;
 * - the replay command exits 0 on a clean seed, and 1 with its own replay line on a violation.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { SimResult } from '../../src/testing/sim/sim.js';
import { describeFailure, replayCommand, runSim } from '../../src/testing/sim/sim.js';

function envInt(name: string, fallback: number): number {
  const text = process.env[name];
  if (text === undefined || text === '') return fallback;
  const n = Number(text);
  assert.ok(Number.isSafeInteger(n) && n >= 0, `${name} must be a whole number, got ${JSON.stringify(text)}`);
  return n;
}

const SEEDS = envInt('RC_SIM_SEEDS', 500);
const SEED_BASE = envInt('RC_SIM_SEED_BASE', 1);
/** Seeds whose failure messages a failing run prints in full. */
const FAILURES_SHOWN_MAX = 5;

type Totals = Record<string, number>;

function addStats(totals: Totals, r: SimResult): void {
  for (const [k, v] of Object.entries(r.stats)) if (typeof v === 'number') totals[k] = (totals[k] ?? 0) + v;
  for (const [reason, n] of Object.entries(r.stats.sessionDrops)) totals[reason] = (totals[reason] ?? 0) + n;
  totals[`mode ${r.config.writeTimeMode}`] = (totals[`mode ${r.config.writeTimeMode}`] ?? 0) + 1;
}

test(`simulator: seeds ${SEED_BASE}..${SEED_BASE + SEEDS - 1} with faults, every checker on every run`, (t) => {
  const totals: Totals = {};
  const failures: SimResult[] = [];
  for (let seed = SEED_BASE; seed < SEED_BASE + SEEDS; seed++) {
    const r = runSim({ seed });
    addStats(totals, r);
    if (r.violations.length > 0) failures.push(r);
  }
  t.diagnostic(
    `${SEEDS} seeds: ${totals['writesIssued']} writes, ${totals['cutsChecked']} cuts checked, ` +
      `${totals['sourceCrashes']} source and ${totals['targetCrashes']} target crashes, ` +
      `${totals['checkpoints']} checkpoints, ${totals['cyclesRedone']} cycles redone ` +
      `(${totals['recordsRedone']} records), ${totals['volumeWritesLost']} unsynced volume writes lost, ` +
      `${totals['writesLost']} unsynced records lost, ` +
      `${totals['framesLost']} frames lost, ${totals['target: refused batch']} batches refused (gaps); ` +
      `${totals['suspensions']} groups suspended, ${totals['trackedWrites']} writes tracked, ` +
      `${totals['chunksCopied']} chunks copied, ${totals['resyncsCompleted']} resyncs journalled, ` +
      `${totals['bitsCleared']} bits cleared, ${totals['cutsInconsistent']} cuts during resyncs (not claimed consistent); ` +
      `${totals['overflows']} journal overflows; ${totals['takeovers']} takeovers, ${totals['strayWrites']} writes to ` +
      `the old source after them (${totals['strayAcked']} acknowledged before it was fenced, ` +
      `${totals['fencedRefused']} refused once fenced), ${totals['promotedWrites']} writes at the promoted node, ` +
      `${totals['failbacks']} failbacks resyncing ${totals['failbackDirtyChunks']} chunks`,
  );
  if (failures.length > 0) {
    const shown = failures.slice(0, FAILURES_SHOWN_MAX).map(describeFailure);
    const seeds = failures.map((r) => r.seed).join(', ');
    assert.fail(`${failures.length} of ${SEEDS} seeds failed (${seeds}):\n${shown.join('\n\n')}`);
  }
  if (SEEDS >= 100) {
    for (const what of [
      'sourceCrashes',
      'targetCrashes',
      'cyclesRedone',
      'recordsRedone',
      'checkpoints',
      'volumeWritesLost',
      'writesLost',
      'flushes',
      'framesLost',
      'framesDuplicated',
      'framesReordered',
      'framesPartitioned',
      'target: refused batch',
      'mode host-last',
      'mode clock',
      'mode counter',
      'suspensions',
      'trackedWrites',
      'chunksCopied',
      'resyncsCompleted',
      'bitsCleared',
      'cutsInconsistent',
      'target: announcement lost',
      'overflows',
      'takeovers',
      'strayWrites',
      'strayAcked',
      'fencedRefused',
      'promotedWrites',
      'failbacks',
      'failbackDirtyChunks',
    ]) {
      assert.ok((totals[what] ?? 0) > 0, `the seeds exercised ${what}`);
    }
    assert.ok(totals['cutsChecked']! > SEEDS * 5, 'many cuts checked per seed');
  }
});

test('same seed, same run; another seed, another run', () => {
  const a = runSim({ seed: 4242 });
  const b = runSim({ seed: 4242 });
  assert.equal(a.traceHash, b.traceHash);
  assert.deepEqual(a.stats, b.stats);
  assert.ok(a.stats.writesIssued > 0 && a.stats.cycles > 0, 'the run did something');
  assert.notEqual(runSim({ seed: 4243 }).traceHash, a.traceHash);
  // A run with a takeover and a failback: the reverse run is drawn from the seed too.
  let seed = 4242;
  while (runSim({ seed }).config.takeover === undefined) seed++;
  const c = runSim({ seed });
  const d = runSim({ seed });
  assert.equal(c.stats.failbacks, 1, `seed ${seed} failed back`);
  assert.equal(c.traceHash, d.traceHash);
  assert.deepEqual(c.stats, d.stats);
});

const REPLAY_JS = fileURLToPath(new URL('../../src/testing/sim/replay.js', import.meta.url));

function replay(...args: string[]) {
  return spawnSync(process.execPath, [REPLAY_JS, ...args, '--quiet'], { encoding: 'utf8' });
}

test('the replay command: 0 on a clean seed, 1 and its own command line on a violation, 2 on bad use', () => {
  const clean = replay('--seed', '7');
  assert.equal(clean.status, 0, clean.stdout + clean.stderr);
  assert.match(clean.stdout, /seed 7: no violation/);
  const caught = replay('--seed', '1', '--bug', 'release-before-durable');
  assert.equal(caught.status, 1, caught.stdout + caught.stderr);
  assert.ok(caught.stdout.includes(`replay: ${replayCommand(1, 'release-before-durable')}`), caught.stdout);
  assert.equal(replay('--seed', '1', '--bug', 'no-such-bug').status, 2);
  assert.equal(replay().status, 2);
});
