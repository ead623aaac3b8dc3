/**
 * Proves the target's per-group arrival tracking (src/core/arrival.ts, DESIGN.md §3.3, para
 * [0036]): the contiguous prefix and the arrived key under out-of-order arrival, gaps and
 * duplicates; conflicting duplicates and out-of-order keys are typed errors that change nothing;
 * ticks advance the arrived key only at the end of the prefix and wait past a gap; an empty idle
 * group is advanced by a tick; the past-gap buffer is bounded with back-pressure; release and
 * resume after a restart.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { ArrivalLimits } from '../../src/core/arrival.js';
import { GroupArrival } from '../../src/core/arrival.js';
import type { OrderKey, RecordHeader, RecordKind } from '../../src/core/types.js';
import {
  byteOffset,
  nodeIdFromNumber,
  ordinal,
  RecordKind as Kind,
  seq,
  timeUs,
} from '../../src/core/types.js';

const NODE = nodeIdFromNumber(7);

function key(writeTimeUs: number, ord: number): OrderKey {
  return { writeTimeUs: timeUs(writeTimeUs), nodeId: NODE, ordinal: ordinal(ord) };
}

function hdr(s: number, t: number, ord: number, kind: RecordKind = Kind.data, markerNo = 0): RecordHeader {
  return {
    kind,
    group: 'g',
    seq: seq(s),
    writeTimeUs: timeUs(t),
    hostTimeUs: timeUs(0),
    nodeId: NODE,
    ordinal: ordinal(ord),
    epoch: 1,
    volume: kind === Kind.marker ? '' : 'v',
    offset: byteOffset(0),
    length: kind === Kind.marker ? 0 : 4096,
    markerNo,
  };
}

/** Record s of a history where every record shares write time 100: only the ordinal orders them. */
const tied = (s: number) => hdr(s, 100, s * 10);

function ok<T>(r: { ok: true; outcome: T } | { ok: false; kind: string; detail: string }): T {
  assert.ok(r.ok, `expected ok, got ${r.ok ? '' : `${r.kind}: ${r.detail}`}`);
  return r.outcome;
}

test('in-order arrival extends the prefix; the arrived key is the last record key', () => {
  const a = new GroupArrival('g');
  assert.equal(a.keyArrived, undefined, 'nothing arrived: no key');
  for (let s = 1; s <= 3; s++) assert.equal(ok(a.onRecord(tied(s))), 'new');
  assert.equal(a.seqContiguous, 3);
  assert.deepEqual(a.keyArrived, key(100, 30));
  assert.deepEqual(a.heldAt(seq(2))?.key, key(100, 20));
});

test('out-of-order arrival: records past a gap do not count until the gap fills', () => {
  const a = new GroupArrival('g');
  ok(a.onRecord(tied(1)));
  ok(a.onRecord(tied(3)));
  ok(a.onRecord(tied(4)));
  assert.equal(a.seqContiguous, 1, 'seq 2 is missing');
  assert.deepEqual(a.keyArrived, key(100, 10), 'records 3 and 4 lie past the gap');
  assert.equal(a.recordsPastGap, 2);
  assert.equal(a.seqHeldMax, 4);
  ok(a.onRecord(tied(2)));
  assert.equal(a.seqContiguous, 4, 'the gap filled: 3 and 4 join the prefix');
  assert.deepEqual(a.keyArrived, key(100, 40));
  assert.equal(a.recordsPastGap, 0);
});

test('a group whose first record is missing has no arrived key', () => {
  const a = new GroupArrival('g');
  ok(a.onRecord(tied(2)));
  assert.equal(a.seqContiguous, 0);
  assert.equal(a.keyArrived, undefined);
});

test('duplicates are idempotent, held or already released', () => {
  const a = new GroupArrival('g');
  ok(a.onRecord(tied(1)));
  ok(a.onRecord(tied(3)));
  assert.equal(ok(a.onRecord(tied(1))), 'duplicate');
  assert.equal(ok(a.onRecord(tied(3))), 'duplicate', 'a duplicate past the gap');
  assert.equal(a.recordsPastGap, 1);
  ok(a.onRecord(tied(2)));
  a.release(seq(2));
  assert.equal(ok(a.onRecord(tied(1))), 'stale', 'released: nothing to compare but harmless');
  assert.equal(ok(a.onRecord(tied(3))), 'duplicate');
  assert.equal(a.seqContiguous, 3);
});

test('a conflicting duplicate is a typed error and changes nothing', () => {
  const a = new GroupArrival('g');
  ok(a.onRecord(tied(1)));
  ok(a.onRecord(tied(3)));
  const cases = [
    hdr(1, 100, 11),
    hdr(3, 100, 30, Kind.zero),
    hdr(3, 100, 30, Kind.marker, 4),
    hdr(1, 99, 10),
  ];
  for (const h of cases) {
    const r = a.onRecord(h);
    assert.ok(!r.ok && r.kind === 'conflict', `seq ${h.seq} with another key/kind conflicts`);
  }
  a.release(seq(1));
  const released = a.onRecord(hdr(1, 100, 12));
  assert.ok(!released.ok && released.kind === 'conflict', 'the newest released key is still checked');
  assert.deepEqual(a.heldAt(seq(3))?.key, key(100, 30));
  assert.deepEqual(a.keyArrived, key(100, 10));
});

test('keys that do not increase with seq are a typed error', () => {
  const a = new GroupArrival('g');
  ok(a.onRecord(tied(1)));
  ok(a.onRecord(tied(2)));
  const below = a.onRecord(hdr(3, 100, 15));
  assert.ok(!below.ok && below.kind === 'order', 'seq 3 below the arrived key');
  ok(a.onRecord(tied(5)));
  const aboveNext = a.onRecord(hdr(4, 100, 55));
  assert.ok(!aboveNext.ok && aboveNext.kind === 'order', 'seq 4 above seq 5');
  const belowPrev = a.onRecord(hdr(6, 100, 45));
  assert.ok(!belowPrev.ok && belowPrev.kind === 'order', 'seq 6 below seq 5');
  assert.equal(a.seqContiguous, 2);
  assert.equal(a.recordsPastGap, 1);
});

test('bad input: seq 0, a fraction, a tick kind', () => {
  const a = new GroupArrival('g');
  for (const h of [hdr(0, 1, 1), hdr(1.5, 1, 1), hdr(1, 1, 1, Kind.tick)]) {
    const r = a.onRecord(h);
    assert.ok(!r.ok && r.kind === 'invalid');
  }
  const t = a.onTick(seq(-1), key(1, 1));
  assert.ok(!t.ok && t.kind === 'invalid');
});

test('tick at the end of the prefix advances the arrived key; an idle empty group too', () => {
  const idle = new GroupArrival('g');
  assert.equal(ok(idle.onTick(seq(0), key(500, 70))), 'advanced', 'an empty group moves only by tick');
  assert.deepEqual(idle.keyArrived, key(500, 70));
  assert.equal(ok(idle.onTick(seq(0), key(400, 60))), 'stale', 'an older tick does not lower it');
  assert.deepEqual(idle.keyArrived, key(500, 70));
  const r = idle.onRecord(hdr(1, 500, 70));
  assert.ok(!r.ok && r.kind === 'order', 'a record at or below the tick contradicts it');
  assert.equal(ok(idle.onRecord(hdr(1, 500, 71))), 'new');
  assert.deepEqual(idle.keyArrived, key(500, 71));
});

test('tick past a gap waits until the gap fills', () => {
  const a = new GroupArrival('g');
  ok(a.onRecord(tied(1)));
  ok(a.onRecord(tied(3)));
  assert.equal(ok(a.onTick(seq(3), key(100, 35))), 'pending');
  assert.equal(a.ticksPending, 1);
  assert.deepEqual(a.keyArrived, key(100, 10), 'the tick must not count before seq 2 arrives');
  ok(a.onRecord(tied(2)));
  assert.equal(a.ticksPending, 0);
  assert.deepEqual(a.keyArrived, key(100, 35), 'prefix reached seq 3: the tick applies');
  const r = a.onRecord(hdr(4, 100, 34));
  assert.ok(!r.ok && r.kind === 'order', 'a record after the tick must be above it');
});

test('a pending tick whose seq the prefix passes is dropped; later records already exceed it', () => {
  const a = new GroupArrival('g');
  ok(a.onRecord(tied(1)));
  ok(a.onTick(seq(2), key(100, 25)));
  ok(a.onRecord(tied(3)));
  ok(a.onRecord(tied(2)));
  assert.equal(a.seqContiguous, 3);
  assert.deepEqual(a.keyArrived, key(100, 30));
  assert.equal(a.ticksPending, 0);
});

test('ticks that contradict held records are typed errors', () => {
  const a = new GroupArrival('g');
  for (const s of [1, 2, 3]) ok(a.onRecord(tied(s)));
  ok(a.onRecord(tied(6)));
  const behind = a.onTick(seq(1), key(100, 20));
  assert.ok(!behind.ok && behind.kind === 'order', 'seq 2 (key 20) follows seq 1');
  assert.equal(ok(a.onTick(seq(1), key(100, 15))), 'stale', 'true but old');
  const pastGap = a.onTick(seq(3), key(100, 60));
  assert.ok(!pastGap.ok && pastGap.kind === 'order', 'seq 6 (key 60) follows seq 3');
  assert.deepEqual(a.keyArrived, key(100, 30));
  a.release(seq(3));
  const released = a.onTick(seq(1), key(100, 31));
  assert.ok(!released.ok && released.kind === 'order', 'released records still bound old ticks');
});

const small: ArrivalLimits = { recordsHeldMax: 8, recordsPastGapMax: 3, ticksPendingMax: 2 };

test('the past-gap buffer is bounded: back-pressure, and the gap filler is still accepted', () => {
  const a = new GroupArrival('g', small);
  for (const s of [3, 4, 5]) ok(a.onRecord(tied(s)));
  const full = a.onRecord(tied(6));
  assert.ok(!full.ok && full.kind === 'backpressure');
  assert.equal(a.recordsPastGap, 3);
  ok(a.onRecord(tied(1)));
  ok(a.onRecord(tied(2)));
  assert.equal(a.seqContiguous, 5);
  const window = a.onRecord(tied(9));
  assert.ok(!window.ok && window.kind === 'backpressure', 'seq 9 is beyond 8 records after release 0');
  a.release(seq(5));
  assert.equal(ok(a.onRecord(tied(9))), 'new', 'release opened the window');
  assert.equal(a.heldAt(seq(4)), undefined, 'released records are forgotten');
});

test('pending ticks are bounded; a tick for the same seq merges', () => {
  const a = new GroupArrival('g', small);
  ok(a.onRecord(tied(2)));
  assert.equal(ok(a.onTick(seq(2), key(100, 21))), 'pending');
  assert.equal(ok(a.onTick(seq(2), key(100, 22))), 'pending', 'merged: the larger key wins');
  assert.equal(ok(a.onTick(seq(3), key(100, 31))), 'pending');
  const full = a.onTick(seq(4), key(100, 41));
  assert.ok(!full.ok && full.kind === 'backpressure');
  ok(a.onRecord(tied(1)));
  assert.deepEqual(a.keyArrived, key(100, 22));
});

test('check() classifies without changing state', () => {
  const a = new GroupArrival('g');
  assert.equal(ok(a.check(tied(2))), 'new');
  assert.equal(a.heldAt(seq(2)), undefined);
  ok(a.onRecord(tied(2)));
  assert.equal(ok(a.check(tied(2))), 'duplicate');
});

test('resume after a restart: released position, journal replay in any order', () => {
  const a = new GroupArrival('g', undefined, { seqReleased: seq(4), keyReleased: key(100, 40) });
  assert.equal(a.seqContiguous, 4);
  assert.deepEqual(a.keyArrived, key(100, 40));
  const r = a.onRecord(hdr(4, 100, 41));
  assert.ok(!r.ok && r.kind === 'conflict', 'the released key is known after resume');
  ok(a.onRecord(tied(6)));
  ok(a.onRecord(tied(5)));
  assert.equal(a.seqContiguous, 6);
  assert.equal(ok(a.onRecord(tied(3))), 'stale');
  assert.equal(ok(a.onRecord(hdr(4, 100, 41))), 'stale', 'older released keys are forgotten: unverifiable');
});

test('release is bounded by the prefix (a programmer error otherwise)', () => {
  const a = new GroupArrival('g');
  ok(a.onRecord(tied(1)));
  ok(a.onRecord(tied(3)));
  assert.throws(() => a.release(seq(3)), /past contiguous/);
  a.release(seq(1));
  assert.throws(() => a.release(seq(0)), /below/);
  assert.deepEqual(a.keyReleased, key(100, 10));
});
