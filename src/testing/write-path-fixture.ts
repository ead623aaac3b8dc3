/**
 * A write path over a given journal for tests: a fresh sequencer of node `a`, epoch 1, a virtual
 * microsecond clock that moves by one per record, real milliseconds, no logging.
 */
import { Sequencer } from '../core/sequencer.js';
import type { WriteTimeMode } from '../core/types.js';
import { nodeIdOf, ordinal, timeUs } from '../core/types.js';
import { type WritePathOptions, WritePath } from '../node/write-path.js';

export function testWritePath(
  journal: WritePathOptions['journal'],
  opts: {
    readonly writeTime?: WriteTimeMode;
    readonly throttleMaxDelayMs?: number;
    readonly throttleRetryMs?: number;
    readonly activityLog?: WritePathOptions['activityLog'];
    readonly onJournalFull?: (wp: WritePath, groups: ReadonlySet<string>) => void;
    readonly onThrottleExpired?: (wp: WritePath, groups: ReadonlySet<string>) => void;
  } = {},
): { sequencer: Sequencer; wp: WritePath } {
  const sequencer = new Sequencer(nodeIdOf('a'), opts.writeTime ?? 'host-last', {
    lastOrdinal: ordinal(0),
    lastWriteTimeUs: timeUs(0),
    lastSeq: new Map(),
  });
  let clock = 1_000;
  const onFull = opts.onJournalFull;
  const onExpired = opts.onThrottleExpired;
  const wp: WritePath = new WritePath({
    sequencer,
    journal,
    epochOf: () => 1,
    nowUs: () => timeUs(clock++),
    nowMs: () => performance.now(),
    throttleMaxDelayMs: opts.throttleMaxDelayMs ?? 2000,
    throttleRetryMs: opts.throttleRetryMs,
    log: () => {},
    onJournalFull: onFull && ((groups) => onFull(wp, groups)),
    onThrottleExpired: onExpired && ((groups) => onExpired(wp, groups)),
    activityLog: opts.activityLog,
  });
  return { sequencer, wp };
}
