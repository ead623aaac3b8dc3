/**
 * The arguments of the simulators' replay commands (replay.ts, markers.ts):
 * `--seed N [--bug NAME] [--quiet]`. Bad ones print usage and give exit code 2.
 */
import { parseArgs } from 'node:util';

export interface ReplayArgs<B extends string> {
  readonly seed: number;
  readonly bug: B | undefined;
  readonly quiet: boolean;
}

export function parseReplayArgs<B extends string>(
  command: string,
  bugs: readonly B[],
  isBug: (name: string) => name is B,
): ReplayArgs<B> | 2 {
  const { values } = parseArgs({
    options: {
      seed: { type: 'string' },
      bug: { type: 'string' },
      quiet: { type: 'boolean', default: false },
    },
  });
  const seed = Number(values.seed);
  if (values.seed === undefined || !Number.isSafeInteger(seed)) {
    console.error(`usage: ${command} --seed N [--bug NAME] [--quiet]`);
    return 2;
  }
  if (values.bug !== undefined && !isBug(values.bug)) {
    console.error(`unknown bug ${JSON.stringify(values.bug)}: one of ${bugs.join(', ')}`);
    return 2;
  }
  return { seed, bug: values.bug, quiet: values.quiet };
}
