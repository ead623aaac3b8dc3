/**
 * Proves TESTING.md's "reported lag is never less than the true lag" for a source group's lag
 * figures (src/core/lag.ts), against a model of the pair: seeded runs of host writes journalled in
 * batches, the target's durable and applied reports, suspensions whose writes go to a dirty bitmap
 * (no record), resumes whose resync journals a copy of each dirty chunk, and restarts that rebuild
 * the tracker from the bounds a node has on disk. After every step the reported milliseconds and
 * bytes are at least the truth: the oldest write the target lacks, and the bytes it lacks.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { LagTracker } from '../../src/core/lag.js';
import { forEachSeed, mulberry32 } from '../../src/testing/random.js';

const BLOCK = 4096;
const CHUNK = 4 * BLOCK;
const BLOCKS = 64;

interface ModelRecord {
  readonly seq: number;
  readonly bytes: number;
  readonly arrivedMs: number;
  /** A resync's copy of this chunk, taken at step `step`. */
  readonly copyOf?: number;
  readonly step: number;
}

interface TrackedWrite {
  readonly block: number;
  readonly arrivedMs: number;
  readonly step: number;
}

/** The pair as the node sees it, with what the target truly lacks. */
class Model {
  now = 1000;
  seq = 0;
  applied = 0;
  durable = 0;
  mode: 'pair' | 'suspended' | 'resync' = 'pair';
  resyncEndSeq = 0;
  /** Persisted at suspension: the tracker's behind-since, or the suspension's time. */
  behindSincePersisted: number | undefined;
  readonly records: ModelRecord[] = [];
  /** Tracked writes the target lacks: no applied copy of their chunk made after them. */
  tracked: TrackedWrite[] = [];
  readonly dirty = new Set<number>();
  /** The copy of each dirty chunk journalled since its last tracked write. */
  readonly copySeq = new Map<number, number>();
  copyQueue: number[] = [];

  /** status: `pair` once every resync is journalled and applied. */
  get inPair(): boolean {
    return this.mode === 'pair' && this.applied >= this.resyncEndSeq;
  }

  trueLag(): { ms: number; bytes: number } {
    let oldest = Infinity;
    let bytes = 0;
    for (const r of this.records) {
      if (r.seq <= this.applied) continue;
      oldest = Math.min(oldest, r.arrivedMs);
      bytes += r.bytes;
    }
    // A tracked write's bytes are in a copy record once one of its chunk is journalled after it.
    const blocks = new Set<number>();
    for (const w of this.tracked) {
      oldest = Math.min(oldest, w.arrivedMs);
      if (!this.records.some((r) => r.copyOf === Math.floor(w.block / 4) && r.step > w.step))
        blocks.add(w.block);
    }
    return { ms: oldest === Infinity ? 0 : this.now - oldest, bytes: bytes + blocks.size * BLOCK };
  }

  /** The target applied up to `s`: tracked writes an applied copy covers are no longer lacking. */
  apply(s: number): void {
    this.applied = s;
    const copies = this.records.filter((r) => r.copyOf !== undefined && r.seq <= s);
    this.tracked = this.tracked.filter(
      (w) => !copies.some((c) => c.copyOf === Math.floor(w.block / 4) && c.step > w.step),
    );
    if (this.inPair) this.tracked = [];
  }
}

function runLagModel(seed: number, steps: number, bug?: 'untracked' | 'restart-now'): void {
  const rnd = mulberry32(seed);
  const pick = (n: number): number => Math.floor(rnd() * n);
  const m = new Model();
  let lag = new LagTracker({ releasedSeq: 0 });

  let step = 0;
  const journal = (bytes: number, arrivedMs: number, copyOf?: number): void => {
    m.records.push({ seq: ++m.seq, bytes, arrivedMs, copyOf, step });
  };
  for (; step < steps; step++) {
    const before = m.now;
    m.now += pick(40);
    const e = pick(20);
    if (e < 7) {
      if (m.mode === 'suspended') {
        // A tracked write: no record, its chunk's bit set, an older copy of the chunk void.
        const block = pick(BLOCKS);
        m.tracked.push({ block, arrivedMs: m.now, step });
        m.dirty.add(Math.floor(block / 4));
        m.copySeq.delete(Math.floor(block / 4));
        if (bug !== 'untracked') lag.tracked(m.now);
      } else {
        // A batch of 1-4 writes that arrived since the last step; the oldest's arrival is passed.
        const n = 1 + pick(4);
        const arrivals = Array.from({ length: n }, () => before + pick(m.now - before + 1)).sort(
          (a, b) => a - b,
        );
        let bytes = 0;
        for (const a of arrivals) {
          const b = BLOCK * (1 + pick(3));
          journal(b, a);
          bytes += b;
        }
        lag.appended(m.seq, bytes, arrivals[0]!);
      }
    } else if (e < 9) {
      m.durable = m.seq - pick(Math.min(3, m.seq - m.durable) + 1);
      // Bits whose copy is durable at the target are cleared.
      for (const [chunk, s] of m.copySeq) {
        if (s <= m.durable) {
          m.dirty.delete(chunk);
          m.copySeq.delete(chunk);
        }
      }
    } else if (e < 11) {
      const s = m.applied + pick(m.durable - m.applied + 1);
      m.apply(s);
      lag.applied(s);
    } else if (e === 11 && m.mode !== 'suspended') {
      if (m.inPair) lag.caughtUp();
      m.mode = 'suspended';
      m.copyQueue = [];
      m.behindSincePersisted = lag.behindSinceMs ?? m.now;
    } else if (e === 12 && m.mode === 'suspended') {
      m.mode = 'resync';
      m.copyQueue = [...m.dirty].sort((a, b) => a - b);
    } else if (e < 15 && m.mode === 'resync') {
      const chunk = m.copyQueue.shift();
      if (chunk !== undefined) {
        journal(CHUNK, m.now, chunk);
        m.copySeq.set(chunk, m.seq);
        lag.appended(m.seq, CHUNK, m.now);
      }
      if (m.copyQueue.length === 0) {
        m.mode = 'pair';
        m.resyncEndSeq = m.seq;
      }
    } else if (e === 15) {
      // A restart: the released seq is at most the applied one; the retained records count from a
      // time no later than the oldest's arrival (a segment's birth), tracked writes from the
      // persisted behind-since.
      const released = m.applied - pick(Math.min(2, m.applied) + 1);
      const retained = m.records.filter((r) => r.seq > released);
      const oldest = Math.min(...retained.map((r) => r.arrivedMs));
      const behind = m.mode !== 'pair' || m.resyncEndSeq > released;
      lag = new LagTracker({
        releasedSeq: released,
        retained:
          retained.length === 0
            ? undefined
            : {
                lastSeq: m.seq,
                bytes: retained.reduce((n, r) => n + r.bytes, 0),
                sinceMs: bug === 'restart-now' ? m.now : oldest - pick(100),
              },
        behindSinceMs: behind ? m.behindSincePersisted : undefined,
      });
    }
    if (m.inPair) lag.caughtUp();
    const got = lag.lag(m.now, m.dirty.size * CHUNK);
    const want = m.trueLag();
    assert.ok(got.ms >= want.ms, `step ${step}: lag ${got.ms} ms reported, ${want.ms} ms true (${m.mode})`);
    assert.ok(
      got.bytes >= want.bytes,
      `step ${step}: lag ${got.bytes} bytes reported, ${want.bytes} true (${m.mode})`,
    );
  }
  // Everything applied and the pair back in `pair`: no lag left.
  if (m.mode === 'pair' && m.durable === m.seq) {
    m.apply(m.seq);
    lag.applied(m.seq);
    if (m.inPair) lag.caughtUp();
    assert.deepEqual(lag.lag(m.now, m.dirty.size * CHUNK), { ms: 0, bytes: 0 });
  }
}

test('the reported lag is never less than the true lag: writes, suspensions, resyncs, restarts', () => {
  forEachSeed(
    1,
    300,
    (seed) => `runLagModel(${seed}) in test/unit/lag.test.ts`,
    (seed) => runLagModel(seed, 400),
  );
});

test('the model catches a tracked write left out, and restarted records counted from the restart', () => {
  for (const bug of ['untracked', 'restart-now'] as const) {
    let caught = 0;
    for (let seed = 1; seed <= 100; seed++) {
      try {
        runLagModel(seed, 400, bug);
      } catch {
        caught++;
      }
    }
    assert.ok(caught > 0, `bug ${bug} caught by none of 100 seeds`);
  }
});

test('a tracked write counts until the pair is back in pair; an applied batch stops counting', () => {
  const lag = new LagTracker({ releasedSeq: 10 });
  assert.deepEqual(lag.lag(100, 0), { ms: 0, bytes: 0 });
  lag.appended(12, 8192, 50);
  assert.deepEqual(lag.lag(100, 0), { ms: 50, bytes: 8192 });
  lag.applied(11);
  assert.deepEqual(lag.lag(100, 0), { ms: 50, bytes: 8192 }, 'a batch counts whole until fully applied');
  lag.applied(12);
  assert.deepEqual(lag.lag(100, 0), { ms: 0, bytes: 0 });
  lag.tracked(120);
  lag.tracked(110);
  assert.equal(lag.behindSinceMs, 110);
  assert.deepEqual(lag.lag(200, 65536), { ms: 90, bytes: 65536 });
  lag.appended(13, 65536, 190);
  assert.deepEqual(lag.lag(200, 0), { ms: 90, bytes: 65536 }, 'the copy is applied only later');
  lag.applied(13);
  assert.deepEqual(lag.lag(200, 0), { ms: 90, bytes: 0 }, 'still behind until caught up');
  lag.caughtUp();
  assert.deepEqual(lag.lag(200, 0), { ms: 0, bytes: 0 });
  assert.throws(() => lag.appended(13, 1, 200), /appended seq 13 after 13/);
});

test('after a restart, retained records count from the bound given, and tracked writes too', () => {
  const lag = new LagTracker({
    releasedSeq: 5,
    retained: { lastSeq: 9, bytes: 20_000, sinceMs: -3000 },
    behindSinceMs: -5000,
  });
  assert.deepEqual(lag.lag(1000, 4096), { ms: 6000, bytes: 24_096 });
  lag.caughtUp();
  assert.deepEqual(lag.lag(1000, 0), { ms: 4000, bytes: 20_000 });
  lag.applied(9);
  assert.deepEqual(lag.lag(1000, 0), { ms: 0, bytes: 0 });
});
