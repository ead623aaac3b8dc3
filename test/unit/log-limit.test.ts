/**
 * The log rate limit (src/core/log-limit.ts) proves, with the time passed in:
 * - per kind, the first `burst` lines of an interval are logged and the rest only counted; the
 *   first line of every kind is logged whatever the others do;
 * - the count of dropped lines is reported once: with the first line of the next interval, or by
 *   flush() once the interval is over, never both;
 * - a kind that dropped nothing is never reported, and flush() forgets ended intervals.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { LogLimiter } from '../../src/core/log-limit.js';

test('the first lines of each kind are logged, the rest counted', () => {
  const l = new LogLimiter<'auth' | 'protocol'>(1000, 3);
  const logged = Array.from({ length: 10 }, (_, i) => l.admit('auth', i).log);
  assert.deepEqual(logged, [true, true, true, false, false, false, false, false, false, false]);
  assert.deepEqual(l.admit('protocol', 10), { log: true, droppedBefore: 0 }, 'another kind is not held back');
});

test('dropped lines are reported with the next interval’s first line', () => {
  const l = new LogLimiter<'auth'>(1000, 1);
  assert.deepEqual(l.admit('auth', 0), { log: true, droppedBefore: 0 });
  for (let t = 1; t <= 4; t++) assert.equal(l.admit('auth', t).log, false);
  assert.deepEqual(l.admit('auth', 1000), { log: true, droppedBefore: 4 });
  assert.deepEqual(l.flush(5000), [], 'already reported: not again');
});

test('flush reports intervals that are over and dropped lines, once', () => {
  const l = new LogLimiter<'auth' | 'protocol' | 'closed'>(1000, 2);
  for (let t = 0; t < 5; t++) l.admit('auth', t);
  l.admit('protocol', 0);
  for (let t = 500; t < 510; t++) l.admit('closed', t);
  assert.deepEqual(l.flush(999), [], 'no interval is over yet');
  assert.deepEqual(l.flush(1000), [{ kind: 'auth', dropped: 3, intervalMs: 1000 }]);
  assert.deepEqual(l.flush(1500), [{ kind: 'closed', dropped: 8, intervalMs: 1000 }]);
  assert.deepEqual(l.flush(10_000), []);
  assert.deepEqual(l.admit('auth', 10_001), { log: true, droppedBefore: 0 }, 'a fresh interval');
});
