/**
 * The activity log (src/storage/activity-log.ts) proves: a new extent costs one durable file write
 * before its volume write, an extent already in the file costs nothing; admissions in one
 * synchronous step share a write, one arriving while a write is in flight waits for the next; a full
 * log evicts the least recently written extent whose writes are durable in the journal, never one
 * that is not, and syncs the journal when none is; durable extents left unwritten for a trim period
 * leave the log and the file; the next start tells a log of another boot naming extents (or an
 * unreadable file) from a clean or same-boot one; a failed file write fails its admissions and
 * leaves the last good slot; the file format round-trips.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { RemcopyError } from '../../src/core/errors.js';
import {
  ACTIVITY_LOG_EXTENTS_MAX,
  ACTIVITY_LOG_EXTENTS_MIN,
  ACTIVITY_LOG_FILE_NAME,
  ActivityLog,
  type ActiveExtent,
  type ActivityLogIo,
  type ActivityLogJournal,
  type ActivityLogOptions,
  readActivityLogSync,
  writeActivityLogSync,
} from '../../src/storage/activity-log.js';

const root = fs.mkdtempSync(join(tmpdir(), 'rc-activity-log-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));
let dirs = 0;
const newDir = (): string => {
  const d = join(root, `a${dirs++}`);
  fs.mkdirSync(d);
  return d;
};

/** Small extents keep the offsets readable: extent x covers [x * EB, (x + 1) * EB). */
const EB = 4096;
const SLOT_REGION_BYTES = 1024 * 1024;

/** Stands for the journal: sync() covers what was appended when it was called (as journal.ts). */
class FakeJournal implements ActivityLogJournal {
  appendGeneration = 0;
  syncedGeneration = 0;
  syncCalls = 0;
  /** While set, sync() waits for it before it completes. */
  gate: Promise<void> | null = null;
  async sync(): Promise<void> {
    this.syncCalls++;
    const target = this.appendGeneration;
    if (this.gate !== null) await this.gate;
    this.syncedGeneration = Math.max(this.syncedGeneration, target);
  }
}

/** Real file writes that a test can hold at their start, or fail once (after a torn half write). */
class TestIo implements ActivityLogIo {
  writeCalls = 0;
  fdatasyncCalls = 0;
  hold = false;
  failNextWrite = false;
  private readonly held: (() => void)[] = [];
  async write(fd: number, buf: Buffer, position: number): Promise<void> {
    this.writeCalls++;
    if (this.hold) await new Promise<void>((r) => this.held.push(r));
    if (this.failNextWrite) {
      this.failNextWrite = false;
      fs.writeSync(fd, buf, 0, buf.length >> 1, position);
      throw new Error('EIO: injected write failure');
    }
    fs.writeSync(fd, buf, 0, buf.length, position);
  }
  async fdatasync(fd: number): Promise<void> {
    this.fdatasyncCalls++;
    fs.fdatasyncSync(fd);
  }
  /** Lets the oldest held write go on. */
  releaseOne(): void {
    const r = this.held.shift();
    assert.ok(r !== undefined, 'no write is held');
    r();
  }
  get heldCount(): number {
    return this.held.length;
  }
}

interface Made {
  log: ActivityLog;
  journal: FakeJournal;
  logged: { level: string; msg: string }[];
}

function make(dir: string, more: Partial<ActivityLogOptions> = {}): Made {
  const journal = (more.journal as FakeJournal | undefined) ?? new FakeJournal();
  const logged: { level: string; msg: string }[] = [];
  const log = new ActivityLog({
    dir,
    volumes: ['v0', 'v1'],
    journal,
    extentBytes: EB,
    bootId: 'boot-1',
    log: (level, msg) => logged.push({ level, msg }),
    ...more,
  });
  return { log, journal, logged };
}

/** The admission must wait for a file write. */
function mustWait(r: Promise<void> | undefined, what = 'admit'): Promise<void> {
  assert.ok(r instanceof Promise, `${what}: expected a promise (a file write to wait for)`);
  return r;
}

const ext = (volume: string, extentNo: number): ActiveExtent => ({ volume, extentNo });
const key = (e: ActiveExtent): string => `${e.volume}#${e.extentNo}`;
const sortedKeys = (es: readonly ActiveExtent[]): string[] => es.map(key).sort();

/** The extents the file in `dir` names (it must be readable). */
function fileExtents(dir: string): string[] {
  const r = readActivityLogSync(dir);
  assert.equal(r.state, 'ok', 'activity log file readable');
  return r.state === 'ok' ? sortedKeys(r.extents) : [];
}

/** Polls `cond` on real time until it holds; fails after a bound (never a timing assertion). */
async function until(cond: () => boolean, what: string, boundMs = 2000): Promise<void> {
  const deadline = Date.now() + boundMs;
  while (!cond()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for: ${what}`);
    await new Promise<void>((r) => setTimeout(r, 1));
  }
}

/** Lets pending microtasks and immediates run. */
async function settle(rounds = 5): Promise<void> {
  for (let i = 0; i < rounds; i++) await new Promise<void>((r) => setImmediate(r));
}

function flipByte(file: string, at: number): void {
  const fd = fs.openSync(file, 'r+');
  try {
    const b = Buffer.alloc(1);
    fs.readSync(fd, b, 0, 1, at);
    b[0] = b[0]! ^ 0xff;
    fs.writeSync(fd, b, 0, 1, at);
  } finally {
    fs.closeSync(fd);
  }
}

/** Admits extents 0..n-1 of v0 at gens gen(x), and waits for their file write. */
async function fill(m: Made, n: number, gen: (x: number) => number): Promise<void> {
  const waits: Promise<void>[] = [];
  for (let x = 0; x < n; x++) {
    const g = gen(x);
    m.journal.appendGeneration = Math.max(m.journal.appendGeneration, g);
    waits.push(mustWait(m.log.admit('v0', x * EB, 1, g), `fill extent ${x}`));
  }
  await Promise.all(waits);
}

describe('activity log', () => {
  test('a new extent waits for a durable file write naming it; then it costs nothing', async () => {
    const dir = newDir();
    const m = make(dir, { bootId: 'boot-A' });
    await m.log.start();
    assert.deepEqual(readActivityLogSync(dir), {
      state: 'ok',
      bootId: 'boot-A',
      extentBytes: EB,
      extents: [],
    });

    m.journal.appendGeneration = 1;
    const p = mustWait(m.log.admit('v1', 3 * EB + 100, 200, 1));
    await p;
    assert.deepEqual(readActivityLogSync(dir), {
      state: 'ok',
      bootId: 'boot-A',
      extentBytes: EB,
      extents: [ext('v1', 3)],
    });
    assert.equal(m.log.stats.extentsAdded, 1);
    // Already in the file: the volume write may go now, and no file write happens.
    const writes = m.log.stats.writes;
    m.journal.appendGeneration = 2;
    assert.equal(m.log.admit('v1', 3 * EB, EB, 2), undefined);
    assert.equal(m.log.admit('v1', 3 * EB + EB - 1, 1, 2), undefined);
    assert.equal(m.log.admit('v0', 3 * EB, 0, 2), undefined, 'an empty range admits nothing');
    await settle();
    assert.equal(m.log.stats.writes, writes);
    assert.equal(m.log.stats.extentsAdded, 1);
    assert.deepEqual(sortedKeys(m.log.extents()), ['v1#3']);

    // A range across an extent boundary names both extents.
    m.journal.appendGeneration = 3;
    await mustWait(m.log.admit('v0', 8 * EB - 1, 2, 3));
    assert.deepEqual(fileExtents(dir), ['v0#7', 'v0#8', 'v1#3']);
    assert.equal(m.log.size, 3);
    assert.equal(m.log.admit('v0', 7 * EB, 2 * EB, 4), undefined);
    // A range that covers one known and one new extent waits again.
    await mustWait(m.log.admit('v0', 8 * EB, 2 * EB, 5));
    assert.deepEqual(fileExtents(dir), ['v0#7', 'v0#8', 'v0#9', 'v1#3']);
    assert.throws(() => m.log.admit('nope', 0, 1, 6), /unknown volume/);
    await m.log.close(false);
  });

  test('admissions in one synchronous step share one file write', async () => {
    const dir = newDir();
    const m = make(dir);
    await m.log.start();
    const before = m.log.stats.writes;
    m.journal.appendGeneration = 1;
    const waits = [
      mustWait(m.log.admit('v0', 0, 1, 1)),
      mustWait(m.log.admit('v0', 5 * EB, 3 * EB, 1)),
      mustWait(m.log.admit('v1', 0, 1, 1)),
      mustWait(m.log.admit('v0', 0, 10, 1), 'an extent pending in the same write'),
    ];
    await Promise.all(waits);
    assert.equal(m.log.stats.writes - before, 1, 'one file write for the whole step');
    assert.equal(m.log.stats.extentsAdded, 5);
    assert.deepEqual(fileExtents(dir), ['v0#0', 'v0#5', 'v0#6', 'v0#7', 'v1#0']);
    await m.log.close(false);
  });

  test('an admission during a write in flight waits for the next write', async () => {
    const dir = newDir();
    const io = new TestIo();
    const m = make(dir, { io });
    await m.log.start(); // a new file is made without io
    assert.equal(io.writeCalls, 0);
    io.hold = true;
    m.journal.appendGeneration = 1;
    const p1 = mustWait(m.log.admit('v0', 0, 1, 1));
    let p1Done = false;
    void p1.then(() => (p1Done = true));
    await until(() => io.heldCount === 1, 'the first write is in flight');

    // Late: extent 1 was not in the slot the first write carries.
    m.journal.appendGeneration = 2;
    const p2 = mustWait(m.log.admit('v0', EB, 1, 2));
    let p2Done = false;
    void p2.then(() => (p2Done = true));
    // Extent 0 is in the write in flight: its admission waits for that one.
    const p1again = mustWait(m.log.admit('v0', 10, 1, 2), 'an extent in the write in flight');
    let p1againDone = false;
    void p1again.then(() => (p1againDone = true));
    assert.notEqual(p1, p2);

    await settle();
    assert.equal(p1Done, false, 'no admission resolves before its write completes');
    assert.equal(p1againDone, false);
    io.releaseOne();
    await p1;
    await settle();
    assert.ok(p1againDone, 'the in-flight write serves an extent it carries');
    assert.equal(p2Done, false, 'the in-flight write does not serve a late extent');
    assert.deepEqual(fileExtents(dir), ['v0#0']);

    await until(() => io.heldCount === 1, 'the second write starts');
    await settle();
    assert.equal(p2Done, false);
    assert.deepEqual(fileExtents(dir), ['v0#0'], 'the late extent is not in the file before its write');
    io.hold = false;
    io.releaseOne();
    await p2;
    assert.deepEqual(fileExtents(dir), ['v0#0', 'v0#1']);
    assert.equal(m.log.stats.writes, 2);
    assert.equal(io.writeCalls, 2);
    assert.equal(io.fdatasyncCalls, 2);
    await m.log.close(false);
  });

  test('a range whose extents are in different writes waits for the latest of them', async () => {
    // Found by activity-log-invariant.test.ts: the admission waited only for the write its last
    // extent needed, and the volume write went ahead before its first extent was in the file.
    const dir = newDir();
    const io = new TestIo();
    const m = make(dir, { io });
    await m.log.start();
    io.hold = true;
    m.journal.appendGeneration = 1;
    const p1 = mustWait(m.log.admit('v0', EB, 1, 1)); // extent 1: write 1
    await until(() => io.heldCount === 1, 'write 1 is in flight');
    m.journal.appendGeneration = 2;
    // Extent 0 is new (write 2); extent 1, last in the range, is in write 1 (in flight).
    const p = mustWait(m.log.admit('v0', EB - 10, 20, 2), 'a range over extents 0 and 1');
    let done = false;
    void p.then(() => (done = true));
    io.releaseOne();
    await p1;
    await settle();
    assert.equal(done, false, 'write 1 does not hold extent 0: the range must wait for write 2');
    await until(() => io.heldCount === 1, 'write 2 starts');
    io.hold = false;
    io.releaseOne();
    await p;
    assert.deepEqual(fileExtents(dir), ['v0#0', 'v0#1']);
    await m.log.close(false);
  });

  test('a full log evicts the least recently written extent durable in the journal, never another', async () => {
    const dir = newDir();
    const m = make(dir, { capacity: ACTIVITY_LOG_EXTENTS_MIN });
    await m.log.start();
    await fill(m, 32, (x) => x + 1); // extent x at gen x + 1
    assert.equal(m.log.size, 32);
    m.journal.syncedGeneration = 10;

    m.journal.appendGeneration = 33;
    await mustWait(m.log.admit('v0', 32 * EB, 1, 33));
    assert.equal(m.log.stats.evictions, 1);
    assert.equal(m.log.size, 32);
    let keys = sortedKeys(m.log.extents());
    assert.ok(!keys.includes('v0#0'), 'gen 1, the oldest durable, left');
    assert.ok(keys.includes('v0#32'));

    // Nine more: gens 2..10 leave in order; gens 11..32 (not durable) all stay.
    for (let x = 33; x < 42; x++) {
      m.journal.appendGeneration = x + 1;
      await mustWait(m.log.admit('v0', x * EB, 1, x + 1));
    }
    assert.equal(m.log.stats.evictions, 10);
    assert.equal(m.log.stats.fullWaits, 0);
    assert.equal(m.journal.syncCalls, 0);
    keys = sortedKeys(m.log.extents());
    for (let x = 0; x < 10; x++) assert.ok(!keys.includes(`v0#${x}`), `extent ${x} (durable) left`);
    for (let x = 10; x < 42; x++) assert.ok(keys.includes(`v0#${x}`), `extent ${x} (not durable) stays`);
    assert.deepEqual(fileExtents(dir), keys);

    // Rewriting an old extent makes it recent: the next eviction takes the next oldest instead.
    m.journal.appendGeneration = 43;
    assert.equal(m.log.admit('v0', 10 * EB, 1, 43), undefined);
    m.journal.appendGeneration = 44;
    m.journal.syncedGeneration = 44;
    await mustWait(m.log.admit('v0', 42 * EB, 1, 44));
    keys = sortedKeys(m.log.extents());
    assert.ok(keys.includes('v0#10'), 'rewritten at gen 43: stays');
    assert.ok(!keys.includes('v0#11'), 'gen 12, now the oldest: left');
    assert.equal(m.log.stats.evictions, 11);
    await m.log.close(false);
  });

  test('a full log with nothing durable syncs the journal, then admits', async () => {
    const dir = newDir();
    const m = make(dir, { capacity: ACTIVITY_LOG_EXTENTS_MIN });
    await m.log.start();
    await fill(m, 32, (x) => x + 1);
    assert.equal(m.journal.syncedGeneration, 0);
    m.journal.appendGeneration = 33;
    const p = mustWait(m.log.admit('v0', 32 * EB, 1, 33));
    assert.equal(m.log.stats.fullWaits, 1);
    assert.equal(m.journal.syncCalls, 1);
    await p;
    assert.equal(m.journal.syncedGeneration, 33);
    assert.equal(m.log.stats.evictions, 1);
    assert.equal(m.log.size, 32);
    const keys = sortedKeys(m.log.extents());
    assert.ok(keys.includes('v0#32'));
    assert.ok(!keys.includes('v0#0'), 'the least recently written extent left');
    assert.deepEqual(fileExtents(dir), keys);
    await m.log.close(false);
  });

  // An admission retried after a journal sync (admitWhenRoom) carries the gen it was appended at,
  // which can be lower than the gen of a later write to the same extent admitted during that sync.
  // Were lastGen set back to it, the extent would count as durable (lastGen <= synced) while its
  // latest write is not, and eviction (or trim) would drop it: a power loss would then leave that
  // write on the volume, absent from the journal, with the extent not in the log.
  test('an admission retried after a full wait does not make a newer write of an extent look durable', async () => {
    const dir = newDir();
    const m = make(dir, { capacity: ACTIVITY_LOG_EXTENTS_MIN });
    await m.log.start();
    // Extent 31 at gen 1, extents 0..30 at gens 2..32; nothing durable.
    await fill(m, 32, (x) => (x === 31 ? 1 : x + 2));
    let release!: () => void;
    m.journal.gate = new Promise<void>((r) => (release = r));

    // A write at gen 33 over extents 31 (known) and 32 (new): the log is full, the journal syncs
    // up to gen 33.
    m.journal.appendGeneration = 33;
    const p = mustWait(m.log.admit('v0', 31 * EB, 2 * EB, 33));
    assert.equal(m.log.stats.fullWaits, 1);
    assert.equal(m.journal.syncCalls, 1);

    // Meanwhile every extent in the log is written again, past what that sync covers; each is in
    // the file already, so these volume writes go at once.
    for (let x = 0; x < 31; x++) assert.equal(m.log.admit('v0', x * EB, 1, 34 + x), undefined);
    assert.equal(m.log.admit('v0', 31 * EB + 8, 1, 65), undefined);
    m.journal.appendGeneration = 65;

    m.journal.gate = null;
    release();
    await p;
    // Gen 33 is durable, gens 34..65 are not until the next sync: no extent was evictable when
    // the retry ran; extent 31's latest write (gen 65) must not have let it go.
    assert.ok(m.journal.syncedGeneration >= 33);
    const keys = sortedKeys(m.log.extents());
    assert.ok(keys.includes('v0#32'));
    assert.ok(
      keys.includes('v0#31'),
      `extent 31 (last written at gen 65) was evicted while the journal was synced only to gen ${m.journal.syncedGeneration}`,
    );
    await m.log.close(false);
  });

  test('durable extents unwritten for a trim period leave the log and the file; a rewritten one stays', async () => {
    const dir = newDir();
    const m = make(dir, { trimMs: 20 });
    await m.log.start();
    const j = m.journal;
    j.appendGeneration = 1;
    await mustWait(m.log.admit('v0', 0, 1, 1)); // A: extent 0
    j.appendGeneration = 2;
    await mustWait(m.log.admit('v0', EB, 1, 2)); // B: extent 1
    await j.sync();
    assert.equal(j.syncedGeneration, 2);

    const writesBefore = m.log.stats.writes;
    // B is written again every millisecond or so, each write made durable at once.
    let rewriting = true;
    let bWaited = false;
    const rewriter = (async () => {
      while (rewriting) {
        j.appendGeneration++;
        const r = m.log.admit('v0', EB + 16, 1, j.appendGeneration);
        if (r !== undefined) {
          bWaited = true;
          await r;
        }
        j.syncedGeneration = j.appendGeneration;
        await new Promise<void>((res) => setTimeout(res, 1));
      }
    })();
    try {
      await until(() => !sortedKeys(m.log.extents()).includes('v0#0'), 'extent 0 trimmed from the log');
      await until(() => m.log.stats.writes === writesBefore + 1, 'the file write after the trim');
      assert.deepEqual(sortedKeys(m.log.extents()), ['v0#1']);
      assert.deepEqual(fileExtents(dir), ['v0#1']);
      assert.equal(m.log.stats.trimmed, 1);
      // A few more trim periods: B, written all along, stays, and nothing is written.
      await new Promise<void>((res) => setTimeout(res, 80));
      assert.deepEqual(sortedKeys(m.log.extents()), ['v0#1']);
      assert.equal(bWaited, false, 'the rewritten extent never left the log');
      assert.equal(m.log.stats.writes, writesBefore + 1, 'no file write while nothing changes');
    } finally {
      rewriting = false;
      await rewriter;
    }

    // Unwritten now: B leaves too.
    await until(() => m.log.size === 0, 'extent 1 trimmed from the log');
    await until(() => fileExtents(dir).length === 0, 'extent 1 trimmed from the file');
    assert.equal(m.log.stats.trimmed, 2);

    // An extent whose write is not durable never leaves, however long it stays unwritten.
    j.appendGeneration++;
    await mustWait(m.log.admit('v1', 0, 1, j.appendGeneration));
    await new Promise<void>((res) => setTimeout(res, 100));
    assert.deepEqual(sortedKeys(m.log.extents()), ['v1#0']);
    assert.deepEqual(fileExtents(dir), ['v1#0']);
    await m.log.close(false);
  });

  describe('the previous run', () => {
    test('a missing file needs no recovery', () => {
      const m = make(newDir());
      assert.deepEqual(m.log.previous, { state: 'missing' });
      assert.equal(m.log.previousNeedsRecovery, false);
    });

    test('a log of another boot naming extents needs recovery; one of this boot does not', async () => {
      const dir = newDir();
      const m = make(dir, { bootId: 'boot-1' });
      await m.log.start();
      m.journal.appendGeneration = 2;
      await mustWait(m.log.admit('v0', 0, 1, 1));
      await mustWait(m.log.admit('v1', 5 * EB, 1, 2));
      await m.log.close(false);
      assert.deepEqual(readActivityLogSync(dir), {
        state: 'ok',
        bootId: 'boot-1',
        extentBytes: EB,
        extents: [ext('v0', 0), ext('v1', 5)],
      });

      const same = make(dir, { bootId: 'boot-1' }).log;
      assert.equal(same.previous.state, 'ok');
      assert.equal(same.previousNeedsRecovery, false);
      const other = make(dir, { bootId: 'boot-2' }).log;
      assert.equal(other.previousNeedsRecovery, true);
      assert.deepEqual(other.previous.state === 'ok' && sortedKeys(other.previous.extents), ['v0#0', 'v1#5']);

      // Started, the other boot's log writes an empty log of its own: the old one is gone.
      await other.start();
      assert.deepEqual(readActivityLogSync(dir), {
        state: 'ok',
        bootId: 'boot-2',
        extentBytes: EB,
        extents: [],
      });
      await other.close(false);
      assert.equal(make(dir, { bootId: 'boot-3' }).log.previousNeedsRecovery, false);
    });

    test('a clean close with the journal synced writes the log empty; otherwise it stays', async () => {
      const dir = newDir();
      const m = make(dir, { bootId: 'boot-1' });
      await m.log.start();
      m.journal.appendGeneration = 1;
      await mustWait(m.log.admit('v0', 0, 1, 1));
      await m.journal.sync();
      await m.log.close(true);
      assert.deepEqual(readActivityLogSync(dir), {
        state: 'ok',
        bootId: 'boot-1',
        extentBytes: EB,
        extents: [],
      });
      const next = make(dir, { bootId: 'boot-2' }).log;
      assert.equal(next.previousNeedsRecovery, false);

      // clean, but a write is not durable in the journal: the extents stay.
      const dir2 = newDir();
      const m2 = make(dir2, { bootId: 'boot-1' });
      await m2.log.start();
      m2.journal.appendGeneration = 1;
      await mustWait(m2.log.admit('v0', 0, 1, 1));
      await m2.log.close(true);
      assert.deepEqual(fileExtents(dir2), ['v0#0']);
      assert.equal(make(dir2, { bootId: 'boot-2' }).log.previousNeedsRecovery, true);

      // Not clean: the extents stay whatever the journal holds.
      const dir3 = newDir();
      const m3 = make(dir3, { bootId: 'boot-1' });
      await m3.log.start();
      m3.journal.appendGeneration = 1;
      await mustWait(m3.log.admit('v1', 2 * EB, 1, 1));
      await m3.journal.sync();
      await m3.log.close(false);
      assert.deepEqual(fileExtents(dir3), ['v1#2']);
      assert.equal(make(dir3, { bootId: 'boot-2' }).log.previousNeedsRecovery, true);
    });

    test('both slots corrupted: unreadable, needs recovery; one slot corrupted: the other is read', async () => {
      const dir = newDir();
      const file = join(dir, ACTIVITY_LOG_FILE_NAME);
      const m = make(dir, { bootId: 'boot-1' });
      await m.log.start(); // counter 1, second slot
      m.journal.appendGeneration = 2;
      await mustWait(m.log.admit('v0', 0, 1, 1)); // counter 2, first slot
      await mustWait(m.log.admit('v0', EB, 1, 2)); // counter 3, second slot
      await m.log.close(false);
      assert.deepEqual(fileExtents(dir), ['v0#0', 'v0#1']);
      const intact = fs.readFileSync(file);

      // The newer slot (second) damaged: the older one is read.
      flipByte(file, SLOT_REGION_BYTES + 20);
      assert.deepEqual(readActivityLogSync(dir), {
        state: 'ok',
        bootId: 'boot-1',
        extentBytes: EB,
        extents: [ext('v0', 0)],
      });
      // The older slot damaged instead: the newer one is read.
      fs.writeFileSync(file, intact);
      flipByte(file, 20);
      assert.deepEqual(fileExtents(dir), ['v0#0', 'v0#1']);

      // Both damaged.
      flipByte(file, SLOT_REGION_BYTES + 20);
      assert.deepEqual(readActivityLogSync(dir), { state: 'unreadable' });
      const same = make(dir, { bootId: 'boot-1' }).log;
      assert.deepEqual(same.previous, { state: 'unreadable' });
      assert.equal(same.previousNeedsRecovery, true, 'an unreadable file stands for every extent');
      // Started, it writes a valid empty log in place of the damaged file.
      await same.start();
      assert.deepEqual(readActivityLogSync(dir), {
        state: 'ok',
        bootId: 'boot-1',
        extentBytes: EB,
        extents: [],
      });
      assert.ok(!fs.existsSync(`${file}.tmp`));
      await same.close(false);
    });
  });

  test('a failed file write fails its admissions and keeps the last good slot; a later one succeeds', async () => {
    const dir = newDir();
    const io = new TestIo();
    const m = make(dir, { io });
    await m.log.start();
    m.journal.appendGeneration = 1;
    await mustWait(m.log.admit('v0', 0, 1, 1));
    assert.deepEqual(fileExtents(dir), ['v0#0']);
    const writes = m.log.stats.writes;

    io.failNextWrite = true; // writes half the slot, then fails
    m.journal.appendGeneration = 2;
    const p = mustWait(m.log.admit('v0', 4 * EB, 1, 2));
    await assert.rejects(p, (e: unknown) => e instanceof RemcopyError && e.code === 'RC_ERR_JOURNAL_IO');
    assert.deepEqual(sortedKeys(m.log.extents()), ['v0#0'], 'the extent the failed write held is forgotten');
    assert.equal(m.log.stats.writes, writes);
    assert.ok(m.logged.some((l) => l.level === 'error'));
    assert.deepEqual(fileExtents(dir), ['v0#0'], 'the torn write did not damage the last good slot');

    m.journal.appendGeneration = 3;
    await mustWait(m.log.admit('v0', 4 * EB, 1, 3), 'the forgotten extent is new again');
    assert.deepEqual(fileExtents(dir), ['v0#0', 'v0#4']);
    assert.equal(m.log.stats.writes, writes + 1);
    assert.equal(m.log.admit('v0', 4 * EB, 1, 4), undefined);
    await m.log.close(false);
    // Reopened, the file holds the last successful write.
    assert.deepEqual(make(dir, { bootId: 'boot-2' }).log.previous, {
      state: 'ok',
      bootId: 'boot-1',
      extentBytes: EB,
      extents: [ext('v0', 0), ext('v0', 4)],
    });
  });

  test('an activity log that cannot be read (a directory) is an error naming it, not a crash', () => {
    const dir = newDir();
    fs.mkdirSync(join(dir, ACTIVITY_LOG_FILE_NAME));
    assert.throws(
      () => readActivityLogSync(dir),
      (e: unknown) =>
        e instanceof RemcopyError && e.code === 'RC_ERR_IO' && e.message.includes(ACTIVITY_LOG_FILE_NAME),
    );
  });

  test(`fewer than ${ACTIVITY_LOG_EXTENTS_MIN} or more than ${ACTIVITY_LOG_EXTENTS_MAX} extents is a configuration error`, () => {
    for (const capacity of [ACTIVITY_LOG_EXTENTS_MIN - 1, ACTIVITY_LOG_EXTENTS_MAX + 1, 100.5]) {
      assert.throws(
        () => make(newDir(), { capacity }),
        (e: unknown) => e instanceof RemcopyError && e.code === 'RC_ERR_CONFIG',
        `capacity ${capacity}`,
      );
    }
    for (const capacity of [ACTIVITY_LOG_EXTENTS_MIN, ACTIVITY_LOG_EXTENTS_MAX]) {
      assert.equal(make(newDir(), { capacity }).log.capacity, capacity);
    }
  });

  test('writeActivityLogSync and readActivityLogSync round-trip; the newest write wins', () => {
    const dir = newDir();
    assert.deepEqual(readActivityLogSync(dir), { state: 'missing' });
    const first = {
      bootId: '0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d',
      extentBytes: 8 * 1024 * 1024,
      extents: [ext('a', 3), ext('vol-β', 0), ext('a', 2 ** 32 - 1)],
    };
    writeActivityLogSync(dir, first);
    assert.deepEqual(readActivityLogSync(dir), { state: 'ok', ...first });

    const second = { bootId: 'boot-9', extentBytes: EB, extents: [ext('b', 7)] };
    writeActivityLogSync(dir, second);
    assert.deepEqual(readActivityLogSync(dir), { state: 'ok', ...second });
    writeActivityLogSync(dir, { bootId: '', extentBytes: EB, extents: [] });
    assert.deepEqual(readActivityLogSync(dir), { state: 'ok', bootId: '', extentBytes: EB, extents: [] });

    // A log written for another boot, as tests stand for a restart of the machine.
    writeActivityLogSync(dir, second);
    const m = make(dir, { bootId: 'boot-1' });
    assert.deepEqual(m.log.previous, { state: 'ok', ...second });
    assert.equal(m.log.previousNeedsRecovery, true);
  });
});
