/**
 * Replays one simulator seed with a log of what happens, and exits 1 if a checker found a
 * violation (the command a failing simulator test prints):
 *
 *   node dist/src/testing/sim/replay.js --seed 1234 [--bug apply-past-gap] [--quiet]
 */
import { parseArgs } from 'node:util';
import { BUG_NAMES, isBugName } from './config.js';
import { describeFailure, runSim } from './sim.js';

function main(): number {
  const { values } = parseArgs({
    options: {
      seed: { type: 'string' },
      bug: { type: 'string' },
      quiet: { type: 'boolean', default: false },
    },
  });
  const seed = Number(values.seed);
  if (values.seed === undefined || !Number.isSafeInteger(seed)) {
    console.error('usage: replay.js --seed N [--bug NAME] [--quiet]');
    return 2;
  }
  if (values.bug !== undefined && !isBugName(values.bug)) {
    console.error(`unknown bug ${JSON.stringify(values.bug)}: one of ${BUG_NAMES.join(', ')}`);
    return 2;
  }
  const r = runSim({ seed, bug: values.bug, log: values.quiet ? undefined : (line) => console.log(line) });
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
