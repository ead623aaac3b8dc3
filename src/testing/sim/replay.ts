/**
 * Replays one simulator seed with a log of what happens, and exits 1 if a checker found a
 * violation (the command a failing simulator test prints):
 *
 *   node dist/src/testing/sim/replay.js --seed 1234 [--bug apply-past-gap] [--quiet]
 */
import { parseReplayArgs } from './replay-args.js';
import { BUG_NAMES, isBugName } from './config.js';
import { describeFailure, runSim } from './sim.js';

function main(): number {
  const args = parseReplayArgs('replay.js', BUG_NAMES, isBugName);
  if (args === 2) return 2;
  const { seed, bug, quiet } = args;
  const r = runSim({ seed, bug, log: quiet ? undefined : (line) => console.log(line) });
  console.log(`stats ${JSON.stringify(r.stats)}`);
  console.log(`trace ${r.traceHash}`);
  if (r.violations.length === 0) {
    console.log(`seed ${seed}: no violation`);
    return 0;
  }
  console.log(describeFailure(r));
  return 1;
}

process.exitCode = main();
