/**
 * Proves the sequencer's ordering rules (DESIGN.md §3.1): per-group seq without gaps, order keys
 * strictly increasing across all groups of a node in every writeTime mode (even when many writes
 * share one recorded time), host times kept, clamping, resumption after restart, and rollback.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Sequencer } from '../../src/core/sequencer.js';
import type { OrderKey, WriteTimeMode } from '../../src/core/types.js';
import { compareKeys, nodeIdOf, ordinal, seq, timeUs } from '../../src/core/types.js';
import { mulberry32 } from '../../src/testing/random.js';

const fresh = { lastOrdinal: ordinal(0), lastWriteTimeUs: timeUs(0), lastSeq: new Map() };

for (const mode of ['host-last', 'clock', 'counter'] as WriteTimeMode[]) {
  test(`${mode}: keys strictly increase across groups, seqs are gapless per group`, () => {
    const sq = new Sequencer(nodeIdOf('a'), mode, fresh);
    const rnd = mulberry32(7);
    let prev: OrderKey | undefined;
    const lastSeq = new Map<string, number>();
    let now = 1_000_000;
    for (let i = 0; i < 5000; i++) {
      const group = `g${Math.floor(rnd() * 3)}`;
      // Clock jitters backwards sometimes; host times arrive out of order sometimes.
      now += Math.floor(rnd() * 20) - 5;
      const host = rnd() < 0.3 ? timeUs(Math.floor(rnd() * 2_000_000)) : undefined;
      const f = sq.next(group, host, timeUs(now));
      const key = { writeTimeUs: f.writeTimeUs, nodeId: f.nodeId, ordinal: f.ordinal };
      if (prev) assert.equal(compareKeys(prev, key), -1, `key ${i} must exceed the previous one`);
      prev = key;
      assert.equal(f.seq, (lastSeq.get(group) ?? 0) + 1);
      lastSeq.set(group, f.seq);
      assert.equal(f.hostTimeUs, host ?? 0, 'host time kept as given');
    }
  });
}

test('host-last: writes without a host time share the latest host time; the ordinal breaks ties', () => {
  const sq = new Sequencer(nodeIdOf('a'), 'host-last', fresh);
  const a = sq.next('g1', timeUs(500), timeUs(9));
  const b = sq.next('g2', undefined, timeUs(9));
  const c = sq.next('g1', undefined, timeUs(9));
  assert.equal(a.writeTimeUs, 500);
  assert.equal(b.writeTimeUs, 500);
  assert.equal(c.writeTimeUs, 500);
  assert.ok(a.ordinal < b.ordinal && b.ordinal < c.ordinal);
});

test('an older host time is clamped to keep write times non-decreasing, original kept', () => {
  const sq = new Sequencer(nodeIdOf('a'), 'clock', fresh);
  sq.next('g', undefined, timeUs(1000));
  const f = sq.next('g', timeUs(10), timeUs(1001));
  assert.equal(f.writeTimeUs, 1000);
  assert.equal(f.hostTimeUs, 10);
});

test('counter mode counts node-wide', () => {
  const sq = new Sequencer(nodeIdOf('a'), 'counter', fresh);
  const times = [sq.next('x', undefined, timeUs(0)), sq.next('y', undefined, timeUs(0))].map(
    (f) => f.writeTimeUs,
  );
  assert.deepEqual(times, [1, 2]);
});

test('resumes after a restart without reusing seqs, ordinals or going back in time', () => {
  const sq = new Sequencer(nodeIdOf('a'), 'clock', {
    lastOrdinal: ordinal(41),
    lastWriteTimeUs: timeUs(9_000),
    lastSeq: new Map([['g', seq(7)]]),
  });
  const f = sq.next('g', undefined, timeUs(5));
  assert.equal(f.seq, 8);
  assert.equal(f.ordinal, 42);
  assert.equal(f.writeTimeUs, 9_000);
  assert.equal(sq.next('h', undefined, timeUs(5)).seq, 1);
});

test('restore undoes a batch the journal refused: no seq is skipped', () => {
  const sq = new Sequencer(nodeIdOf('a'), 'counter', fresh);
  sq.next('g', undefined, timeUs(0));
  const snap = sq.snapshot();
  sq.next('g', undefined, timeUs(0));
  sq.next('h', undefined, timeUs(0));
  sq.restore(snap);
  const f = sq.next('g', undefined, timeUs(0));
  assert.equal(f.seq, 2);
  assert.equal(f.ordinal, 2);
  assert.equal(sq.seqOf('h'), 0);
});

test('a negative or fractional host time is a programmer error', () => {
  const sq = new Sequencer(nodeIdOf('a'), 'clock', fresh);
  assert.throws(() => sq.next('g', timeUs(-1), timeUs(0)), /host time/);
  assert.throws(() => sq.next('g', timeUs(1.5), timeUs(0)), /host time/);
});

test('the largest host time does not push write times past 2^53 - 1; keys still increase', () => {
  const sq = new Sequencer(nodeIdOf('a'), 'counter', fresh);
  const a = sq.next('g', timeUs(Number.MAX_SAFE_INTEGER), timeUs(0));
  const b = sq.next('g', undefined, timeUs(0));
  assert.equal(a.writeTimeUs, Number.MAX_SAFE_INTEGER);
  assert.equal(b.writeTimeUs, Number.MAX_SAFE_INTEGER);
  assert.ok(b.ordinal > a.ordinal);
});
