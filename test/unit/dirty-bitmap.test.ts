/**
 * Dirty bitmaps (core/dirty-bitmap.ts), the resync tracker (core/resync.ts) and the bitmap file
 * (storage/bitmap-file.ts): marking, clearing only on a durable report, no clean chunk handed out,
 * a file that survives a round trip and refuses a flipped bit or a torn tail.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { DirtyBitmap } from '../../src/core/dirty-bitmap.js';
import { ResyncTracker } from '../../src/core/resync.js';
import {
  decodeBitmaps,
  encodeBitmaps,
  readBitmapFile,
  writeBitmapFile,
} from '../../src/storage/bitmap-file.js';
import { forEachSeed, mulberry32 } from '../../src/testing/random.js';

const K = 1024;
const replay = (seed: number): string =>
  `node --test dist/test/unit/dirty-bitmap.test.js (seeds are fixed; seed ${seed} fails every run)`;

describe('DirtyBitmap', () => {
  test('marks every chunk a range touches, counts bytes with a short last chunk', () => {
    const bm = new DirtyBitmap(100 * K, 64 * K);
    assert.equal(bm.chunks, 2);
    assert.equal(bm.mark(60 * K, 8 * K), 2, 'a write across a chunk boundary dirties both');
    assert.equal(bm.mark(0, 4 * K), 0, 'chunk 0 was dirty already');
    assert.equal(bm.dirtyChunks, 2);
    assert.equal(bm.dirtyBytes, 100 * K, 'the short last chunk counts its own bytes');
    assert.ok(bm.covers(0, 100 * K));
    assert.equal(bm.clear(1), true);
    assert.equal(bm.clear(1), false);
    assert.equal(bm.dirtyBytes, 64 * K);
    assert.equal(bm.mark(0, 0), 0, 'an empty range marks nothing');
    assert.throws(() => bm.mark(96 * K, 8 * K), /past the bitmap/);
  });

  test('nextDirty walks the set bits in order, like a set of chunk numbers', () => {
    forEachSeed(1, 20, replay, (seed) => {
      const rnd = mulberry32(seed);
      const chunks = 1 + Math.floor(rnd() * 300);
      const bm = new DirtyBitmap(chunks * 4096, 4096);
      const truth = new Set<number>();
      for (let i = 0; i < 100; i++) {
        const c = Math.floor(rnd() * chunks);
        if (rnd() < 0.7) {
          bm.set(c);
          truth.add(c);
        } else {
          bm.clear(c);
          truth.delete(c);
        }
      }
      const seen: number[] = [];
      for (let c = bm.nextDirty(0); c >= 0; c = bm.nextDirty(c + 1)) seen.push(c);
      assert.deepEqual(
        seen,
        [...truth].sort((a, b) => a - b),
      );
      assert.equal(bm.dirtyChunks, truth.size);
      const copy = new DirtyBitmap(bm.sizeBytes, 4096, bm.toBytes());
      assert.equal(copy.dirtyChunks, truth.size);
    });
  });

  test('union takes every bit of the other side', () => {
    const a = new DirtyBitmap(1024 * K, 64 * K);
    const b = new DirtyBitmap(1024 * K, 64 * K);
    a.set(1);
    b.set(1);
    b.set(7);
    a.union(b);
    assert.equal(a.dirtyChunks, 2);
    assert.ok(a.isDirty(7));
    assert.throws(() => a.union(new DirtyBitmap(1024 * K, 128 * K)), /geometry/);
  });
});

describe('ResyncTracker', () => {
  test('a bit is cleared only by a durable report covering its latest copy', () => {
    const bm = new DirtyBitmap(512 * K, 64 * K);
    const t = new ResyncTracker([{ volume: 'v', bitmap: bm }]);
    t.markWrite('v', 0, 4 * K);
    t.markWrite('v', 200 * K, 4 * K);
    t.start();
    assert.equal(t.bytesTotal, 128 * K);
    const c0 = t.next()!;
    assert.deepEqual([c0.chunk, c0.offset, c0.length], [0, 0, 64 * K]);
    t.copied('v', c0.chunk, 10);
    const c3 = t.next()!;
    assert.equal(c3.chunk, 3);
    t.copied('v', c3.chunk, 11);
    assert.equal(t.next(), undefined, 'no clean chunk is handed out');
    assert.equal(t.acked(9), 0, 'a report below the copy clears nothing');
    assert.ok(bm.isDirty(0));
    // Chunk 3 is written again (suspended) before its copy is reported: its bit must stay.
    t.markWrite('v', 196 * K, 4 * K);
    assert.equal(t.acked(11), 1);
    assert.ok(!bm.isDirty(0));
    assert.ok(bm.isDirty(3), 'a copy older than the last write does not clear the bit');
    t.start();
    const again = t.next()!;
    assert.equal(again.chunk, 3);
    t.copied('v', 3, 20);
    assert.equal(t.acked(20), 1);
    assert.equal(t.dirtyBytes, 0);
  });

  test('random runs: every cleared bit had a copy after its last write, reported durable', () => {
    forEachSeed(1, 50, replay, (seed) => {
      const rnd = mulberry32(seed);
      const bm = new DirtyBitmap(64 * 4096, 4096);
      const t = new ResyncTracker([{ volume: 'v', bitmap: bm }]);
      const lastWrite = new Map<number, number>(); // chunk -> step of its last tracked write
      const copyAt = new Map<number, { seq: number; step: number }[]>();
      let seq = 0;
      let acked = 0;
      t.start();
      for (let step = 0; step < 400; step++) {
        const r = rnd();
        if (r < 0.3) {
          const c = Math.floor(rnd() * 64);
          t.markWrite('v', c * 4096, 4096);
          lastWrite.set(c, step);
        } else if (r < 0.7) {
          const n = t.next() ?? (t.start(), t.next());
          if (n === undefined) continue;
          assert.ok(bm.isDirty(n.chunk), `seed ${seed}: a clean chunk ${n.chunk} handed out`);
          t.copied('v', n.chunk, ++seq);
          copyAt.set(n.chunk, [...(copyAt.get(n.chunk) ?? []), { seq, step }]);
        } else if (seq > acked) {
          acked += 1 + Math.floor(rnd() * (seq - acked));
          const before = new Set<number>();
          for (let c = bm.nextDirty(0); c >= 0; c = bm.nextDirty(c + 1)) before.add(c);
          t.acked(acked);
          for (const c of before) {
            if (bm.isDirty(c)) continue;
            const ok = (copyAt.get(c) ?? []).some((x) => x.seq <= acked && x.step > (lastWrite.get(c) ?? -1));
            assert.ok(ok, `seed ${seed}: bit ${c} cleared without a durable copy after its last write`);
          }
        }
      }
    });
  });
});

describe('bitmap file', () => {
  const dir = mkdtempSync(join(tmpdir(), 'rc-bmp-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const vols = [
    { name: 'a', sizeBytes: 1024 * K },
    { name: 'b', sizeBytes: 300 * K },
  ];

  test('a round trip keeps every bit; a missing file is all clean', async () => {
    const file = join(dir, 'g.bmp');
    const clean = readBitmapFile(file, 'g', 64 * K, vols);
    assert.equal(clean.get('a')!.dirtyChunks, 0);
    clean.get('a')!.mark(130 * K, 1);
    clean.get('b')!.mark(299 * K, K);
    await writeBitmapFile(file, 'g', 64 * K, clean);
    const back = readBitmapFile(file, 'g', 64 * K, vols);
    assert.ok(back.get('a')!.isDirty(2));
    assert.ok(back.get('b')!.isDirty(4));
    assert.equal(back.get('a')!.dirtyChunks + back.get('b')!.dirtyChunks, 2);
  });

  test('another chunk size converts without losing a dirty byte', () => {
    const maps = new Map([
      ['a', new DirtyBitmap(1024 * K, 64 * K)],
      ['b', new DirtyBitmap(300 * K, 64 * K)],
    ]);
    maps.get('a')!.mark(100 * K, 1);
    const buf = encodeBitmaps('g', 64 * K, maps);
    const small = decodeBitmaps('f', buf, 'g', 16 * K, vols);
    assert.deepEqual([...range(small.get('a')!)], [4, 5, 6, 7]);
    const big = decodeBitmaps('f', buf, 'g', 256 * K, vols);
    assert.deepEqual([...range(big.get('a')!)], [0]);
  });

  test('every flipped bit and every truncation is refused, naming the file', () => {
    const maps = new Map([['a', new DirtyBitmap(1024 * K, 64 * K)]]);
    maps.get('a')!.mark(0, 1);
    const buf = encodeBitmaps('g', 64 * K, maps);
    for (let i = 0; i < buf.length; i++) {
      for (let bit = 0; bit < 8; bit++) {
        const bad = Buffer.from(buf);
        bad[i]! ^= 1 << bit;
        assert.throws(() => decodeBitmaps('x.bmp', bad, 'g', 64 * K, [vols[0]!]), /x\.bmp/);
      }
    }
    for (let n = 0; n < buf.length; n++) {
      assert.throws(() => decodeBitmaps('x.bmp', buf.subarray(0, n), 'g', 64 * K, [vols[0]!]), /x\.bmp/);
    }
  });

  test('a volume whose size changed is an error; another group is an error', async () => {
    const file = join(dir, 'h.bmp');
    await writeBitmapFile(file, 'h', 64 * K, new Map([['a', new DirtyBitmap(1024 * K, 64 * K)]]));
    assert.throws(
      () => readBitmapFile(file, 'h', 64 * K, [{ name: 'a', sizeBytes: 2048 * K }]),
      /was 1048576/,
    );
    assert.throws(() => readBitmapFile(file, 'other', 64 * K, [vols[0]!]), /holds group h/);
    writeFileSync(file, readFileSync(file).subarray(0, 10));
    assert.throws(() => readBitmapFile(file, 'h', 64 * K, [vols[0]!]), /too short/);
  });
});

function* range(bm: DirtyBitmap): Generator<number> {
  for (let c = bm.nextDirty(0); c >= 0; c = bm.nextDirty(c + 1)) yield c;
}
