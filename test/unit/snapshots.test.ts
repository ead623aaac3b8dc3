/**
 * Copy-on-write snapshots (src/storage/snapshots.ts), on real files: every snapshot reads back the
 * volume as it was when it was created, through random writes, creates, deletes and reopens
 * (seeded model test); a crash at every step of create, preserve and delete, a leftover tmp file
 * and orphan data files all reopen to snapshots that read correctly; a corrupt or mismatched map is
 * refused naming its file; bad numbers, ranges and unknown snapshots are refused and change nothing;
 * concurrent calls do not tear the state; a read whose chunk from the live volume is preserved and
 * overwritten while the read is in flight still returns the snapshot's bytes, and one whose
 * snapshot is deleted meanwhile fails rather than return bytes written after it (a held device
 * read orders the steps, no timing).
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { RemcopyError } from '../../src/core/errors.js';
import { FileBlockDevice } from '../../src/storage/blockdev.js';
import {
  type SnapshotStep,
  snapshotDataFile,
  snapshotMapFile,
  VolumeSnapshots,
} from '../../src/storage/snapshots.js';
import { mulberry32 } from '../../src/testing/random.js';
import { holdRead } from '../../src/testing/hold-read.js';

const K = 1024;
const root = fs.mkdtempSync(join(tmpdir(), 'rc-snap-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));
let dirs = 0;

/** A live volume file, the snapshots' directory, and what each should read. */
interface Rig {
  readonly dir: string;
  readonly live: FileBlockDevice;
  vs: VolumeSnapshots;
  /** The live volume's expected content. */
  readonly model: Buffer;
  /** Per snapshot, the live content when it was created. */
  readonly snaps: Map<number, Buffer>;
}

function rig(sizeBytes: number, chunkBytes: number, onStep?: (s: SnapshotStep) => void): Rig {
  const base = join(root, `r${dirs++}`);
  fs.mkdirSync(base);
  const live = FileBlockDevice.open(join(base, 'volume.img'), sizeBytes);
  const dir = join(base, 'snaps');
  const vs = VolumeSnapshots.open(dir, live, chunkBytes, onStep ? { onStep } : {});
  return { dir, live, vs, model: Buffer.alloc(sizeBytes), snaps: new Map() };
}

/** What the applier does: preserve when needed, then write the live volume. */
async function write(r: Rig, offset: number, data: Buffer): Promise<void> {
  if (r.vs.needsPreserve(offset, data.length)) await r.vs.preserve([{ offset, length: data.length }]);
  assert.equal(r.vs.needsPreserve(offset, data.length), false, 'preserved before the write');
  r.live.writeSync(offset, data);
  data.copy(r.model, offset);
}

async function create(r: Rig, n: number): Promise<void> {
  await r.vs.create(n, 1000 + n);
  r.snaps.set(n, Buffer.from(r.model));
}

async function remove(r: Rig, n: number): Promise<void> {
  await r.vs.delete(n);
  r.snaps.delete(n);
}

async function reopen(r: Rig, chunkBytes: number): Promise<void> {
  await r.vs.close();
  r.vs = VolumeSnapshots.open(r.dir, r.live, chunkBytes);
}

function sameBytes(actual: Buffer, expected: Buffer, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  if (actual.equals(expected)) return;
  let at = 0;
  while (actual[at] === expected[at]) at++;
  assert.fail(`${what}: first difference at byte ${at}`);
}

/** Every snapshot reads its creation-time content in full, and the live volume is the model. */
async function checkAll(r: Rig, label: string): Promise<void> {
  const want = [...r.snaps.keys()].sort((a, b) => a - b);
  assert.deepEqual(
    r.vs.list().map((s) => s.number),
    want,
    `${label}: snapshot list`,
  );
  for (const n of want) {
    sameBytes(await r.vs.read(n, 0, r.model.length), r.snaps.get(n)!, `${label}: snapshot ${n}`);
  }
  sameBytes(r.live.readSync(0, r.model.length), r.model, `${label}: live volume`);
}

function randomBytes(rnd: () => number, length: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = Math.floor(rnd() * 256);
  return b;
}

function isCode(code: string, text?: RegExp): (e: unknown) => boolean {
  return (e) => {
    assert.ok(e instanceof RemcopyError, `a RemcopyError, got ${String(e)}`);
    assert.equal(e.code, code);
    if (text) assert.match(e.message, text);
    return true;
  };
}

class SimulatedCrash extends Error {}

/** Until `done()`, a turn of the event loop at a time (a step of an operation in flight). */
async function until(done: () => boolean): Promise<void> {
  while (!done()) await new Promise((resolve) => setImmediate(resolve));
}

describe('VolumeSnapshots', () => {
  test('seeded model: random writes, creates, deletes and reopens keep every snapshot exact', async () => {
    const size = 256 * K; // 64 chunks: writes often hit chunks preserved already
    const chunk = 4 * K;
    for (let seed = 1; seed <= 3; seed++) {
      const rnd = mulberry32(seed);
      const r = rig(size, chunk);
      let next = 1;
      const done = { creates: 0, deletes: 0, reopens: 0 };
      try {
        for (let step = 0; step < 90; step++) {
          const label = `seed ${seed} step ${step}`;
          const p = rnd();
          const numbers = [...r.snaps.keys()].sort((a, b) => a - b);
          if (p < 0.6) {
            const length = 1 + Math.floor(rnd() * 3 * chunk);
            const offset = Math.floor(rnd() * (size - length + 1));
            await write(r, offset, randomBytes(rnd, length));
          } else if (p < 0.72) {
            next += Math.floor(rnd() * 3);
            await create(r, next++);
            done.creates++;
          } else if (p < 0.84 && numbers.length > 0) {
            const victim =
              rnd() < 0.5 || numbers.length > 4 ? numbers[0]! : numbers[Math.floor(rnd() * numbers.length)]!;
            await remove(r, victim);
            done.deletes++;
          } else if (p < 0.88) {
            await reopen(r, chunk);
            done.reopens++;
          } else if (numbers.length > 0) {
            const n = numbers[Math.floor(rnd() * numbers.length)]!;
            const length = Math.floor(rnd() * 5 * chunk);
            const offset = Math.floor(rnd() * (size - length + 1));
            const got = await r.vs.read(n, offset, length);
            sameBytes(
              got,
              r.snaps.get(n)!.subarray(offset, offset + length),
              `${label}: read ${offset}+${length}`,
            );
          }
          await checkAll(r, label);
        }
        const info = r.vs.list();
        assert.ok(
          done.creates > 3 && done.deletes > 3 && done.reopens > 0,
          `seed ${seed}: ${JSON.stringify(done)}`,
        );
        assert.ok(
          info.every((s) => s.createdAtMs === 1000 + s.number),
          `seed ${seed}: creation times survive reopens`,
        );
        assert.equal(
          r.vs.usedBytes(),
          info.reduce((a, s) => a + s.usedBytes, 0),
        );
      } catch (e) {
        throw new Error(`seed ${seed} failed (node --test dist/test/unit/snapshots.test.js replays it)`, {
          cause: e,
        });
      } finally {
        await r.vs.close();
        await r.live.close();
      }
    }
  });

  test('needsPreserve, batched preserve and usedBytes with a short last chunk', async () => {
    const chunk = 4 * K;
    const steps: SnapshotStep[] = [];
    const r = rig(10 * K, chunk, (s) => steps.push(s)); // chunks of 4, 4 and 2 KiB
    assert.equal(r.vs.needsPreserve(0, 10 * K), false, 'nothing to preserve without snapshots');
    await r.vs.preserve([{ offset: 0, length: 10 * K }]);
    assert.deepEqual(fs.readdirSync(r.dir), [], 'preserve without snapshots writes nothing');
    assert.equal(r.vs.newest, undefined);
    await write(r, 0, Buffer.alloc(10 * K, 7));
    await create(r, 5);
    assert.equal(r.vs.newest, 5);
    assert.ok(r.vs.has(5) && !r.vs.has(4));
    assert.equal(r.vs.needsPreserve(100, 1), true);
    await r.vs.preserve([
      { offset: 9 * K, length: K },
      { offset: 100, length: 1 },
      { offset: 0, length: 0 },
    ]);
    assert.deepEqual(
      steps.filter((s) => s.startsWith('preserve')),
      ['preserve:data-written', 'preserve:data-synced'],
      'one copy and one fdatasync for the whole batch',
    );
    assert.equal(r.vs.needsPreserve(0, 4 * K), false);
    assert.equal(r.vs.needsPreserve(8 * K, 2 * K), false);
    assert.equal(r.vs.needsPreserve(4 * K, 1), true, 'the middle chunk is not preserved');
    assert.deepEqual(r.vs.list(), [{ number: 5, createdAtMs: 1005, preservedChunks: 2, usedBytes: 6 * K }]);
    assert.equal(r.vs.usedBytes(), 6 * K, 'a short last chunk counts its own bytes');
    await write(r, 3 * K, Buffer.alloc(6 * K, 9));
    await checkAll(r, 'after the writes');
    await r.vs.close();
    await r.live.close();
  });

  test('concurrent preserves, a delete and reads do not tear the state', async () => {
    const chunk = 4 * K;
    const r = rig(64 * K, chunk);
    const rnd = mulberry32(77);
    await write(r, 0, randomBytes(rnd, 64 * K));
    await create(r, 1);
    await write(r, 0, randomBytes(rnd, 20 * K));
    await create(r, 2);
    await write(r, 8 * K, randomBytes(rnd, 20 * K));
    await create(r, 3);
    const full1 = r.vs.read(1, 0, 64 * K);
    const full3 = r.vs.read(3, 0, 64 * K);
    // The caller keeps live writes away from a range while it is read.
    const readsDone = Promise.all([full1, full3]);
    const writers = [0, 2, 5, 6, 13, 14, 25, 30, 31].map(async (k) => {
      const offset = k * 2 * K + 100; // neighbours share a chunk
      await r.vs.preserve([{ offset, length: K }]);
      await readsDone;
      r.live.writeSync(offset, Buffer.alloc(K, k + 1));
      r.model.fill(k + 1, offset, offset + K);
    });
    const deleting = remove(r, 2);
    await Promise.all([...writers, deleting]);
    sameBytes(await full1, r.snaps.get(1)!, 'a read of 1 during the delete of 2');
    sameBytes(await full3, r.snaps.get(3)!, 'a read of 3 during the preserves');
    await checkAll(r, 'after the concurrent calls');
    await reopen(r, chunk);
    await checkAll(r, 'after a reopen');
    await r.vs.close();
    await r.live.close();
  });
});

describe('VolumeSnapshots reads while the live volume is written', () => {
  test('a chunk preserved and overwritten while a read of it is in flight reads as the snapshot', async () => {
    const chunk = 4 * K;
    const r = rig(16 * chunk, chunk);
    await write(r, 0, Buffer.alloc(16 * chunk, 0x11));
    await create(r, 1);
    await write(r, 0, Buffer.alloc(4 * chunk, 0x22)); // chunks 0-3 and 8 preserved: runs alternate
    await write(r, 8 * chunk, Buffer.alloc(chunk, 0x22));
    // The read plans chunks 4-7 and 9-15 from the live volume; its read of 4-7 is held.
    const held = holdRead(r.live, 4 * chunk);
    const reading = r.vs.read(1, 0, 16 * chunk);
    await held.reached;
    // A promoted volume's host writes meanwhile: preserved into 1, then the live volume written.
    await write(r, 5 * chunk + 100, Buffer.alloc(chunk, 0x33)); // chunks 5 and 6, in the held run
    await write(r, 12 * chunk, Buffer.alloc(chunk, 0x44)); // chunk 12, in a run not read yet
    held.open();
    sameBytes(await reading, r.snaps.get(1)!, 'the read in flight during the writes');
    assert.equal(r.vs.list()[0]!.preservedChunks, 8, 'chunks 0-3, 5, 6, 8 and 12 preserved');
    await checkAll(r, 'after the writes'); // the writes landed; snapshot 1 unchanged
    await r.vs.close();
    await r.live.close();
  });

  test('a snapshot deleted during a read: read through a newer one, or refused when none is left', async () => {
    const chunk = 4 * K;
    const r = rig(8 * chunk, chunk);
    await write(r, 0, Buffer.alloc(8 * chunk, 0x11));
    await create(r, 1);
    await write(r, 0, Buffer.alloc(chunk, 0x22)); // chunk 0 held by 1
    await create(r, 2);
    await create(r, 3);
    // A newer snapshot remains: no write reaches the chunks read from the live volume meanwhile
    // (their preserve waits for the delete, which waits for the read), and the read is exact.
    let held = holdRead(r.live, 0);
    let reading = r.vs.read(2, 0, 8 * chunk);
    await held.reached;
    const deleting2 = r.vs.delete(2);
    await until(() => !r.vs.has(2));
    held.open();
    sameBytes(await reading, r.snaps.get(2)!, 'a read of 2 while 2 was deleted');
    await deleting2;
    r.snaps.delete(2);
    // None left: snapshot 1, newest again, holds chunk 0, so a write to it goes straight to the
    // live volume; nothing records that the read of 3 took chunk 0 from there meanwhile.
    held = holdRead(r.live, 0);
    reading = r.vs.read(3, 0, 8 * chunk);
    await held.reached;
    const deleting3 = r.vs.delete(3);
    await until(() => !r.vs.has(3));
    r.snaps.delete(3);
    await write(r, 0, Buffer.alloc(chunk, 0x33));
    held.open();
    await assert.rejects(
      reading,
      isCode('RC_ERR_UNKNOWN_SNAPSHOT', /snapshot 3 .* was deleted during a read/),
    );
    await deleting3;
    await checkAll(r, 'after the deletes');
    await r.vs.close();
    await r.live.close();
  });
});

describe('VolumeSnapshots copy errors', () => {
  test('a read failing in the middle of a scattered preserve fails it whole: no bit set, reads unchanged', async () => {
    const chunk = 4 * K;
    const base = join(root, `r${dirs++}`);
    fs.mkdirSync(base);
    const live = FileBlockDevice.open(join(base, 'volume.img'), 256 * K);
    const dir = join(base, 'snaps');
    const vs = VolumeSnapshots.open(dir, live, chunk);
    const rnd = mulberry32(5);
    const before = randomBytes(rnd, 256 * K);
    live.writeSync(0, before);
    await vs.create(1, 1001);
    // Every other chunk: 32 runs of one chunk, copied several at a time.
    const ranges = Array.from({ length: 32 }, (_, i) => ({ offset: 2 * i * chunk + 10, length: 100 }));
    let reads = 0;
    const read = live.read.bind(live);
    live.read = (offset, length) =>
      ++reads === 5 ? Promise.reject(new Error('EIO: fifth read')) : read(offset, length);
    await assert.rejects(vs.preserve(ranges), /EIO: fifth read/);
    assert.ok(reads < 32, `the copy stopped early (${reads} reads)`);
    for (const r of ranges) assert.equal(vs.needsPreserve(r.offset, r.length), true, 'no chunk marked');
    assert.equal(vs.usedBytes(), 0);
    await vs.close();
    const again = VolumeSnapshots.open(dir, live, chunk);
    assert.deepEqual(again.list(), [{ number: 1, createdAtMs: 1001, preservedChunks: 0, usedBytes: 0 }]);
    await again.preserve(ranges);
    for (const r of ranges) live.writeSync(r.offset, Buffer.alloc(r.length, 0xee));
    sameBytes(await again.read(1, 0, 256 * K), before, 'snapshot 1 after the retried preserve');
    assert.equal(again.usedBytes(), 32 * chunk);
    await again.close();
    await live.close();
  });
});

describe('VolumeSnapshots after a crash', () => {
  const chunk = 4 * K;
  const size = 64 * K;

  /** Three snapshots with chunks spread over them; `crashAt` makes that step throw like a crash. */
  async function crashRig(crashAt: SnapshotStep): Promise<Rig> {
    let armed = false;
    const r = rig(size, chunk, (s) => {
      if (armed && s === crashAt) throw new SimulatedCrash(s);
    });
    const rnd = mulberry32(crashAt.length);
    await write(r, 0, randomBytes(rnd, size));
    await create(r, 1);
    await write(r, 0, randomBytes(rnd, 12 * K)); // chunks 0-2 into 1
    await create(r, 2);
    await write(r, 4 * K, randomBytes(rnd, 4 * K)); // chunk 1 into 2
    await write(r, 20 * K, randomBytes(rnd, 8 * K)); // chunks 5, 6 into 2
    await create(r, 3);
    await write(r, 24 * K, randomBytes(rnd, 8 * K)); // chunks 6, 7 into 3 (7 is not in 2)
    await checkAll(r, 'before the crash');
    armed = true;
    return r;
  }

  /** The crashed instance is dropped (close writes no metadata) and the directory reopened. */
  async function crashAndReopen(r: Rig, op: Promise<void>, step: SnapshotStep): Promise<void> {
    await assert.rejects(op, (e) => e instanceof SimulatedCrash && e.message === step);
    await reopen(r, chunk);
  }

  for (const step of ['preserve:data-written', 'preserve:data-synced'] as const) {
    test(`preserve stopped at ${step}: the chunks are not in the snapshot, every read unchanged`, async () => {
      const r = await crashRig(step);
      const before = r.vs.list();
      await crashAndReopen(r, r.vs.preserve([{ offset: 8 * K, length: 20 * K }]), step);
      assert.deepEqual(r.vs.list(), before, 'no chunk was added');
      await checkAll(r, 'after the crash (the live volume was not written)');
      await write(r, 8 * K, Buffer.alloc(20 * K, 0xee)); // the caller's redo
      await checkAll(r, 'after the redo');
      await r.vs.close();
      await r.live.close();
    });
  }

  test('create stopped before its map: the snapshot does not exist, its data file is removed', async () => {
    const r = await crashRig('create:data-file');
    await crashAndReopen(r, r.vs.create(4), 'create:data-file');
    assert.equal(r.vs.has(4), false);
    assert.equal(fs.existsSync(snapshotDataFile(r.dir, 4)), false, 'the orphan data file is gone');
    await checkAll(r, 'after the crash');
    await create(r, 4);
    await write(r, 0, Buffer.alloc(size, 0x44));
    await checkAll(r, 'after the redo');
    await r.vs.close();
    await r.live.close();
  });

  for (const victim of [2, 3]) {
    for (const step of ['delete:older-data-synced', 'delete:older-map'] as const) {
      test(`delete ${victim} stopped at ${step}: ${victim} still there, every read unchanged`, async () => {
        const r = await crashRig(step);
        const olderBefore = r.vs.list().find((s) => s.number === victim - 1)!.preservedChunks;
        await crashAndReopen(r, r.vs.delete(victim), step);
        assert.ok(r.vs.has(victim));
        const olderAfter = r.vs.list().find((s) => s.number === victim - 1)!.preservedChunks;
        if (step === 'delete:older-map')
          assert.ok(olderAfter > olderBefore, 'the older one holds extra chunks');
        else assert.equal(olderAfter, olderBefore, 'chunks without their map bit do not count');
        await checkAll(r, 'after the crash');
        await write(r, 0, Buffer.alloc(size, 0x55)); // preserves into the newest, which may be the victim
        await checkAll(r, 'after writes');
        await remove(r, victim); // the caller's redo
        await checkAll(r, 'after the redo');
        await r.vs.close();
        await r.live.close();
      });
    }
  }

  test('delete stopped after the map is removed: gone, its data file removed at open', async () => {
    const r = await crashRig('delete:map-removed');
    await crashAndReopen(r, r.vs.delete(2), 'delete:map-removed');
    r.snaps.delete(2);
    assert.equal(r.vs.has(2), false);
    assert.equal(fs.existsSync(snapshotDataFile(r.dir, 2)), false);
    await checkAll(r, 'after the crash');
    await r.vs.close();
    await r.live.close();
  });

  /** After restore(n): the live volume is n's content, newer snapshots are gone, older ones intact. */
  async function checkRestored(r: Rig, n: number, label: string): Promise<void> {
    r.snaps.get(n)!.copy(r.model);
    for (const k of [...r.snaps.keys()]) if (k > n) r.snaps.delete(k);
    await checkAll(r, label);
  }

  for (const n of [1, 2, 3]) {
    test(`restore(${n}) writes back what changed since ${n}, drops newer snapshots, keeps older ones`, async () => {
      const r = await crashRig('create:data-file'); // never reached: no crash here
      const changed = r.vs.changedSince(n);
      const expected = {
        1: [
          [0, 12],
          [20, 12],
        ],
        2: [
          [4, 4],
          [20, 12],
        ],
        3: [[24, 8]],
      }[n]!;
      assert.deepEqual(
        changed.map((c) => [c.offset / K, c.length / K]),
        expected,
        'the chunks written since the snapshot, neighbours merged',
      );
      assert.deepEqual(await r.vs.restore(n), changed);
      await checkRestored(r, n, `after restore(${n})`);
      await write(r, 0, Buffer.alloc(size, 0x66)); // a promoted volume's writes preserve into n
      await checkAll(r, 'after writes to the restored volume');
      await r.vs.close();
      await r.live.close();
    });
  }

  for (const step of [
    'restore:live-written',
    'delete:older-data-synced',
    'delete:older-map',
    'delete:map-removed',
  ] as const) {
    test(`restore(1) stopped at ${step}: restoring again gives snapshot 1 exactly`, async () => {
      const r = await crashRig(step);
      const changed = r.vs.changedSince(1);
      const done = r.vs.restore(1).then(() => {});
      await crashAndReopen(r, done, step);
      for (const { number: k } of r.vs.list()) {
        sameBytes(await r.vs.read(k, 0, size), r.snaps.get(k)!, `after the crash: snapshot ${k}`);
      }
      assert.deepEqual(r.vs.changedSince(1), changed, 'the same chunks are held from 1 on');
      assert.deepEqual(await r.vs.restore(1), changed, 'the redo rewrites the same ranges');
      await checkRestored(r, 1, 'after the redo');
      await r.vs.close();
      await r.live.close();
    });
  }

  test('restore of an unknown snapshot is refused and changes nothing', async () => {
    const r = await crashRig('create:data-file');
    assert.throws(() => r.vs.changedSince(9), isCode('RC_ERR_UNKNOWN_SNAPSHOT'));
    await assert.rejects(r.vs.restore(9), isCode('RC_ERR_UNKNOWN_SNAPSHOT'));
    await checkAll(r, 'after the refusal');
    await r.vs.close();
    await r.live.close();
  });

  test('leftover tmp map, orphan data files and stray bytes without a map bit are harmless', async () => {
    const r = await crashRig('create:data-file'); // the hook is never reached here
    await r.vs.close();
    fs.writeFileSync(`${snapshotMapFile(r.dir, 3)}.tmp`, 'half a map');
    fs.writeFileSync(snapshotDataFile(r.dir, 9), 'orphan');
    fs.writeFileSync(snapshotDataFile(r.dir, 7), Buffer.alloc(size));
    const fd = fs.openSync(snapshotDataFile(r.dir, 3), 'r+'); // chunk 10 has no bit in 3
    fs.writeSync(fd, Buffer.alloc(chunk, 0xaa), 0, chunk, 10 * chunk);
    fs.closeSync(fd);
    fs.writeFileSync(join(r.dir, 'notes.txt'), 'not ours');
    r.vs = VolumeSnapshots.open(r.dir, r.live, chunk);
    assert.deepEqual(fs.readdirSync(r.dir).sort(), [
      '1.data',
      '1.map',
      '2.data',
      '2.map',
      '3.data',
      '3.map',
      'notes.txt',
    ]);
    await checkAll(r, 'after the reopen');
    await r.vs.close();
    await r.live.close();
  });
});

describe('VolumeSnapshots refuse bad input', () => {
  const chunk = 4 * K;
  const size = 32 * K;

  async function twoSnapshots(): Promise<Rig> {
    const r = rig(size, chunk);
    await write(r, 0, Buffer.alloc(size, 1));
    await create(r, 1);
    await write(r, 0, Buffer.alloc(8 * K, 2));
    await create(r, 3);
    await write(r, 4 * K, Buffer.alloc(8 * K, 3));
    return r;
  }

  test('a map with a flipped byte or a torn tail is refused, naming the file', async () => {
    const r = await twoSnapshots();
    await r.vs.close();
    const file = snapshotMapFile(r.dir, 1);
    const good = fs.readFileSync(file);
    const damaged: Buffer[] = [];
    for (const at of [0, 5, 13, good.length - 5, good.length - 1]) {
      const b = Buffer.from(good);
      b[at]! ^= 0x10;
      damaged.push(b);
    }
    damaged.push(good.subarray(0, good.length - 3), Buffer.alloc(0));
    for (const b of damaged) {
      fs.writeFileSync(file, b);
      assert.throws(
        () => VolumeSnapshots.open(r.dir, r.live, chunk),
        isCode('RC_ERR_SNAPSHOT', new RegExp(file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'))),
      );
    }
    fs.writeFileSync(file, good);
    r.vs = VolumeSnapshots.open(r.dir, r.live, chunk);
    await checkAll(r, 'with the good map back');
    await r.vs.close();
    await r.live.close();
  });

  test('a map of another chunk size or volume size, or without its data file, is refused', async () => {
    const r = await twoSnapshots();
    await r.vs.close();
    assert.throws(
      () => VolumeSnapshots.open(r.dir, r.live, 2 * chunk),
      isCode('RC_ERR_SNAPSHOT', /chunks of 4096/),
    );
    const bigger = FileBlockDevice.open(join(r.dir, '..', 'bigger.img'), 2 * size);
    assert.throws(
      () => VolumeSnapshots.open(r.dir, bigger, chunk),
      isCode('RC_ERR_SNAPSHOT', /1\.map.*volume has 65536/),
    );
    await bigger.close();
    fs.renameSync(snapshotDataFile(r.dir, 3), join(r.dir, 'aside'));
    assert.throws(
      () => VolumeSnapshots.open(r.dir, r.live, chunk),
      isCode('RC_ERR_SNAPSHOT', /3\.map.*missing/),
    );
    fs.renameSync(join(r.dir, 'aside'), snapshotDataFile(r.dir, 3));
    r.vs = VolumeSnapshots.open(r.dir, r.live, chunk);
    await checkAll(r, 'with everything back');
    await r.vs.close();
    await r.live.close();
  });

  test('create below the newest or with a bad number is refused and changes nothing', async () => {
    const r = await twoSnapshots();
    const files = fs.readdirSync(r.dir).sort();
    const before = r.vs.list();
    for (const n of [2, 0, -1, 1.5, Number.NaN, 2 ** 53]) {
      await assert.rejects(r.vs.create(n), isCode('RC_ERR_SNAPSHOT_NUMBER'), `create(${n})`);
    }
    await r.vs.create(3, 99999); // a redo of an existing snapshot
    await r.vs.create(1, 99999);
    assert.deepEqual(r.vs.list(), before, 'nothing changed, creation time included');
    assert.deepEqual(fs.readdirSync(r.dir).sort(), files);
    await checkAll(r, 'after the refusals');
    await r.vs.close();
    await r.live.close();
  });

  test('reads outside the volume, of unknown snapshots, and deletes of unknown ones are refused', async () => {
    const r = await twoSnapshots();
    const bad: [number, number][] = [
      [size - 10, 11],
      [-1, 4],
      [0, size + 1],
      [1.5, 2],
      [0, -3],
    ];
    for (const [offset, length] of bad) {
      await assert.rejects(
        r.vs.read(1, offset, length),
        isCode('RC_ERR_OUT_OF_RANGE'),
        `${offset}+${length}`,
      );
    }
    assert.equal((await r.vs.read(1, size, 0)).length, 0, 'an empty read at the end is fine');
    await assert.rejects(r.vs.read(2, 0, 1), isCode('RC_ERR_UNKNOWN_SNAPSHOT', /snapshot 2/));
    await assert.rejects(r.vs.delete(2), isCode('RC_ERR_UNKNOWN_SNAPSHOT'));
    await assert.rejects(r.vs.delete(4), isCode('RC_ERR_UNKNOWN_SNAPSHOT'));
    await checkAll(r, 'after the refusals');
    await r.vs.close();
    await r.live.close();
  });
});
