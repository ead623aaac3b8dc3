/**
 * The activity log's one promise, checked at every moment it could break: a power loss at any
 * instant finds every volume write already issued whose journal record is not durable inside an
 * extent that the log file durably names (src/storage/activity-log.ts). Then a restart copies that
 * extent, and no write the journal lost stays on the source volume unknown to the target.
 *
 * The real write path, journal and activity log, on real files, under seeded random load: several
 * volumes, writes of 4-64 KiB spanning extents, FUA writes and journal syncs at random, a log too
 * small for the extents written (evictions, full waits) and a short trim period; one write in ten
 * a zero write. Watched:
 * - every volume write as it is issued (the device), with the journal gen its record was appended
 *   at (the write path hands it to admit() just before);
 * - the log file after every write of it: until its fdatasync completes, a power loss may leave
 *   either slot, so what is durably named is what both the old and the new slot name;
 * - the journal's synced gen, which only grows and so only relaxes the rule.
 * The rule can only break when a volume write is issued or when the log file is rewritten: both
 * are checked there.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { RecordKind } from '../../src/core/types.js';
import type { ActivityLogPort } from '../../src/node/write-path.js';
import { ActivityLog, type ActivityLogIo, readActivityLogSync } from '../../src/storage/activity-log.js';
import { MemBlockDevice } from '../../src/storage/blockdev.js';
import { Journal } from '../../src/storage/journal.js';
import { mulberry32 } from '../../src/testing/random.js';
import { testWritePath } from '../../src/testing/write-path-fixture.js';

const root = fs.mkdtempSync(join(tmpdir(), 'rc-al-invariant-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));

const SEEDS = Number(process.env.RC_AL_SEEDS ?? 40);
const SEED_BASE = Number(process.env.RC_AL_SEED_BASE ?? 1);
const EXTENT = 64 * 1024;
const VOLUME_BYTES = 2 * 1024 * 1024; // 32 extents per volume
const VOLUMES = ['v0', 'v1', 'v2'];
const CAPACITY = 32; // fewer than the 96 extents written: evictions and full waits
const BLOCK = 4096;

interface Issued {
  readonly volume: string;
  readonly offset: number;
  readonly length: number;
  readonly gen: number;
}

/** A volume that reports every write as it is issued. */
class WatchedDevice extends MemBlockDevice {
  constructor(
    readonly name: string,
    private readonly onIssue: (d: WatchedDevice, offset: number, length: number) => void,
  ) {
    super(VOLUME_BYTES);
  }
  override writeSync(offset: number, data: Uint8Array): void {
    this.onIssue(this, offset, data.length);
    super.writeSync(offset, data);
  }
  override zeroSync(offset: number, length: number): void {
    this.onIssue(this, offset, length);
    super.zeroSync(offset, length);
  }
  // MemBlockDevice.write and zero go through writeSync and zeroSync: reported there, once.
}

const extentKeys = (volume: string, offset: number, length: number): string[] => {
  const keys: string[] = [];
  for (let x = Math.floor(offset / EXTENT); x <= Math.floor((offset + length - 1) / EXTENT); x++) {
    keys.push(`${volume}#${x}`);
  }
  return keys;
};

function namedNow(dir: string): Set<string> {
  const r = readActivityLogSync(dir);
  assert.equal(r.state, 'ok', 'the log file is readable after each write of it');
  return new Set(r.state === 'ok' ? r.extents.map((e) => `${e.volume}#${e.extentNo}`) : []);
}

async function runSeed(seed: number): Promise<{ violations: string[]; stats: ActivityLog['stats'] }> {
  // The load is drawn from `rnd` alone, so a seed gives the same writes; the file I/O delays from
  // `jitter` (real I/O still moves the interleaving a little from run to run).
  const rnd = mulberry32(seed);
  const pick = (n: number): number => Math.floor(rnd() * n);
  const jitter = mulberry32(seed ^ 0x5eed);
  const dir = join(root, `s${seed}`);
  fs.mkdirSync(dir);
  const journal = await Journal.open({
    dir: join(dir, 'journal'),
    bytesMax: 512 * 80 * 1024,
    segmentBytes: 80 * 1024,
    limits: { recordPayloadBytesMax: 64 * 1024 },
  });
  const violations: string[] = [];
  /** Issued volume writes whose record may not be durable yet. */
  let issued: Issued[] = [];
  /** Extents a power loss now would find named in the log file. */
  let durable = new Set<string>();

  const check = (where: string): void => {
    const synced = journal.syncedGeneration;
    issued = issued.filter((w) => w.gen > synced);
    for (const w of issued) {
      for (const k of extentKeys(w.volume, w.offset, w.length)) {
        if (durable.has(k)) continue;
        violations.push(
          `${where}: ${w.volume} [${w.offset}, +${w.length}) went to the volume at gen ${w.gen} ` +
            `(journal synced to ${synced}) but the log file does not durably name ${k}`,
        );
      }
    }
  };

  const io: ActivityLogIo = {
    async write(fd, buf, position) {
      await new Promise<void>((r) => setImmediate(r));
      fs.writeSync(fd, buf, 0, buf.length, position);
      const now = namedNow(dir);
      durable = new Set([...durable].filter((k) => now.has(k)));
      check('log file rewritten');
    },
    async fdatasync(fd) {
      await new Promise<void>((r) => setTimeout(r, Math.floor(jitter() * 3)));
      fs.fdatasyncSync(fd);
      durable = namedNow(dir);
    },
  };
  const log = new ActivityLog({
    dir,
    volumes: VOLUMES,
    journal,
    extentBytes: EXTENT,
    capacity: CAPACITY,
    trimMs: 3,
    io,
    log: () => {},
  });
  await log.start();

  /** Per volume, offset and length: the gens admit() was given, oldest first. */
  const admitted = new Map<string, number[]>();
  const port: ActivityLogPort = {
    admit(volume, offset, length, gen) {
      const key = `${volume}:${offset}:${length}`;
      const q = admitted.get(key) ?? [];
      q.push(gen);
      admitted.set(key, q);
      return log.admit(volume, offset, length, gen);
    },
  };
  const onIssue = (d: WatchedDevice, offset: number, length: number): void => {
    const gen = admitted.get(`${d.name}:${offset}:${length}`)?.shift();
    if (gen === undefined) {
      violations.push(`${d.name} [${offset}, +${length}) went to the volume without an admission`);
      return;
    }
    issued.push({ volume: d.name, offset, length, gen });
    check('volume write issued');
  };
  const devices = VOLUMES.map((v) => new WatchedDevice(v, onIssue));

  const { wp } = testWritePath(journal, {
    writeTime: 'clock',
    throttleMaxDelayMs: 5000,
    activityLog: port,
  });

  for (let round = 0; round < 40; round++) {
    const batch: Promise<unknown>[] = [];
    const n = 1 + pick(8);
    for (let i = 0; i < n; i++) {
      const v = pick(VOLUMES.length);
      const blocks = 1 + pick(16);
      const offset = pick(VOLUME_BYTES / BLOCK - blocks + 1) * BLOCK;
      const length = blocks * BLOCK;
      // One write in ten zeroes its range (WRITE_ZEROES, TRIM): a volume write like any other.
      const zero = rnd() < 0.1;
      batch.push(
        wp.submit({
          group: `g${v}`,
          kind: zero ? RecordKind.zero : RecordKind.data,
          volume: VOLUMES[v]!,
          device: devices[v]!,
          offset,
          length,
          payload: zero ? undefined : Buffer.alloc(length, (seed + round + i) & 0xff),
          fua: rnd() < 0.1,
        }),
      );
    }
    if (rnd() < 0.3) batch.push(journal.sync());
    // Half the time the next batch comes while this one is still in flight.
    const next = pick(4);
    if (next < 2) await Promise.all(batch);
    else if (next === 2) await new Promise((r) => setTimeout(r, pick(6)));
  }
  await wp.close();
  await log.close(true);
  await journal.close();
  return { violations, stats: log.stats };
}

test('every volume write whose record is not durable lies in an extent the log file durably names', async () => {
  let evictions = 0;
  let fullWaits = 0;
  let trimmed = 0;
  for (let seed = SEED_BASE; seed < SEED_BASE + SEEDS; seed++) {
    const { violations, stats } = await runSeed(seed);
    assert.deepEqual(
      violations.slice(0, 5),
      [],
      `seed ${seed} (replay: RC_AL_SEED_BASE=${seed} RC_AL_SEEDS=1 node --test ` +
        `dist/test/unit/activity-log-invariant.test.js): ${violations.length} violation(s)`,
    );
    evictions += stats.evictions;
    fullWaits += stats.fullWaits;
    trimmed += stats.trimmed;
  }
  // The runs reach the paths that drop extents from the log, or they prove little.
  assert.ok(evictions > 0, 'some extents were evicted');
  assert.ok(fullWaits > 0, 'some admissions waited for a journal sync');
  assert.ok(trimmed > 0, 'some extents were trimmed');
});
