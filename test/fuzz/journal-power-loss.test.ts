/**
 * Journal recovery after a power loss (TESTING.md layer 2). kill -9 keeps the page cache, so this
 * builds what a power loss can leave instead. Per trial, on a journal of small segments:
 *   1. random batches appended, a sync, more batches, a sync: the files when that sync starts (and
 *      the durable point it leaves) are the durable image; batches appended while it runs are not;
 *   2. more batches appended, never synced: the files then are the cache image;
 *   3. power-loss images: every sector (512 B) or page (4 KiB) of every file comes from either
 *      image at random, a file only one image has is there or not at random, and the durable
 *      point file may be the one of the earlier sync (its writes lag the sync that made them).
 * Proves:
 *   - every power-loss image opens: no refusal (the unsynced holes that later pages follow are
 *     dropped, not taken for corruption);
 *   - what it holds is a prefix of the appended records, byte for byte, and holds at least every
 *     record synced in step 1: nothing durable is lost, no bad record is loaded;
 *   - the journal goes on: an append and a reopen keep the records and the new one;
 *   - opened in the boot that wrote it (no restart, so no power loss), such an image with a hole
 *     that valid records follow is refused instead: the page cache cannot have lost the page;
 *   - damage below the durable point (a flipped bit in a synced record of the durable image) is
 *     still refused with RC_ERR_JOURNAL_CORRUPT.
 * Seeded: RC_FUZZ_SEED=<n> replays a run.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { RemcopyError } from '../../src/core/errors.js';
import type { RecordHeader } from '../../src/core/types.js';
import {
  byteOffset,
  RecordKind as Kind,
  kindCarriesData,
  nodeIdFromNumber,
  ordinal,
  seq,
  timeUs,
} from '../../src/core/types.js';
import { DURABLE_POINT_FILE_NAME } from '../../src/storage/durable-point.js';
import { Journal } from '../../src/storage/journal.js';
import { decodeRecord, encodeHeader } from '../../src/storage/record.js';
import { mulberry32 } from '../../src/testing/random.js';

const SEED = Number(process.env['RC_FUZZ_SEED'] ?? 20261122);
const LIMITS = {
  limits: { recordPayloadBytesMax: 6000 },
  segmentBytes: 16 * 1024,
  bytesMax: 4 * 1024 * 1024,
};
const TRIALS = 30;
const IMAGES_PER_TRIAL = 12;
const GROUPS = ['g-db', 'g-log'];

const base = fs.existsSync('/dev/shm') ? '/dev/shm' : tmpdir();
const root = fs.mkdtempSync(join(base, 'rc-journal-power-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));

type Files = Map<string, Buffer>;
interface Input {
  readonly header: RecordHeader;
  readonly payload?: Buffer;
}

/** The files of `dir`; one renamed away meanwhile (a spare being prepared in the background) is left out. */
function readFiles(dir: string): Files {
  const files: Files = new Map();
  for (const f of fs.readdirSync(dir)) {
    try {
      files.set(f, fs.readFileSync(join(dir, f)));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
  }
  return files;
}

function writeFiles(dir: string, files: Files): void {
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir);
  for (const [name, content] of files) fs.writeFileSync(join(dir, name), content);
}

function encode(r: Input): Buffer {
  return Buffer.concat([encodeHeader(r.header, r.payload), r.payload ?? Buffer.alloc(0)]);
}

class Workload {
  readonly appended: Input[] = [];
  private readonly seqs = new Map<string, number>();
  constructor(private readonly rnd: () => number) {}

  private int(n: number): number {
    return Math.floor(this.rnd() * n);
  }

  /** One batch of 1-6 records of random kinds and sizes, appended. */
  appendBatch(j: Journal): void {
    const batch: Input[] = [];
    for (let n = 1 + this.int(6); n > 0; n--) {
      const group = GROUPS[this.int(GROUPS.length)]!;
      const s = (this.seqs.get(group) ?? 0) + 1;
      this.seqs.set(group, s);
      const kind = [Kind.data, Kind.data, Kind.data, Kind.zero, Kind.marker][this.int(5)]!;
      const length = kind === Kind.marker ? 0 : 1 + this.int(6000);
      const o = this.appended.length + batch.length + 1;
      const header: RecordHeader = {
        kind,
        group,
        seq: seq(s),
        writeTimeUs: timeUs(1_700_000_000_000_000 + o * 7),
        hostTimeUs: timeUs(0),
        nodeId: nodeIdFromNumber(7),
        ordinal: ordinal(o),
        epoch: 1,
        volume: kind === Kind.marker ? '' : 'v',
        offset: byteOffset(this.int(100) * 4096),
        length,
        markerNo: kind === Kind.marker ? s : 0,
      };
      const payload = kindCarriesData(kind) ? Buffer.alloc(length, o & 0xff) : undefined;
      batch.push(payload === undefined ? { header } : { header, payload });
    }
    j.append(batch);
    this.appended.push(...batch);
  }
}

/** One file as a power loss may leave it: each unit from `a` or `b` (zeroes where one is short). */
function mixPages(a: Buffer | undefined, b: Buffer | undefined, unit: number, rnd: () => number): Buffer {
  const length = Math.max(a?.length ?? 0, b?.length ?? 0);
  const out = Buffer.alloc(length);
  for (let at = 0; at < length; at += unit) {
    const from = rnd() < 0.5 ? a : b;
    from?.copy(out, at, at, Math.min(at + unit, from.length));
  }
  return out;
}

function powerLossImage(durable: Files, cache: Files, earlierPoint: Buffer, rnd: () => number): Files {
  const unit = rnd() < 0.5 ? 512 : 4096;
  const out: Files = new Map();
  // Segment files created since the last directory fsync: the file system keeps the order of its
  // metadata changes (ext4, xfs: a journal), so some first ones of them are there, the rest not.
  const created = [...cache.keys()].filter((f) => f.startsWith('seg-') && !durable.has(f)).sort();
  const lost = new Set(created.slice(Math.floor(rnd() * (created.length + 1))));
  for (const name of new Set([...durable.keys(), ...cache.keys()])) {
    const a = durable.get(name);
    const b = cache.get(name);
    if (lost.has(name)) continue;
    // Any other file renamed or deleted since may or may not be there.
    if ((a === undefined || b === undefined) && !created.includes(name) && rnd() < 0.5) continue;
    // The state file is replaced by rename: one version or the other, whole.
    if (name === 'state.json') out.set(name, (rnd() < 0.5 ? a : b) ?? a ?? b!);
    else out.set(name, mixPages(a, b, unit, rnd));
  }
  if (rnd() < 0.3) out.set(DURABLE_POINT_FILE_NAME, earlierPoint);
  return out;
}

/**
 * Opens `dir` in boot `bootId` (a boot other than the one that wrote it stands for the restart after
 * a power loss); the records it holds, encoded, or the refusal.
 */
async function openAndRead(
  dir: string,
  bootId: string | undefined,
  logs: string[] = [],
): Promise<{ journal: Journal; records: Buffer[] } | RemcopyError> {
  try {
    const log = (_level: string, msg: string) => logs.push(msg);
    const journal = await Journal.open({ dir, ...LIMITS, log, ...(bootId === undefined ? {} : { bootId }) });
    return { journal, records: [...journal.retained()].map((r) => encode(r)) };
  } catch (e) {
    if (e instanceof RemcopyError) return e;
    throw e;
  }
}

/** Offsets of the records in the durable image's segments: [file, offset, bytes] in append order. */
function recordPlaces(files: Files): [string, number, number][] {
  const places: [string, number, number][] = [];
  for (const name of [...files.keys()].filter((f) => f.startsWith('seg-')).sort()) {
    const buf = files.get(name)!;
    for (let off = 0; ;) {
      const r = decodeRecord(buf, off);
      if (!r.ok) break;
      places.push([name, off, r.bytes]);
      off += r.bytes;
    }
  }
  return places;
}

async function trial(n: number): Promise<void> {
  const rnd = mulberry32(SEED * 1000 + n);
  const int = (k: number): number => Math.floor(rnd() * k);
  const live = join(root, `live-${n % 2}`);
  fs.rmSync(live, { recursive: true, force: true });
  const j = await Journal.open({ dir: live, ...LIMITS });
  const w = new Workload(rnd);
  for (let b = 1 + int(8); b > 0; b--) w.appendBatch(j);
  await j.sync();
  const earlierPoint = fs.readFileSync(join(live, DURABLE_POINT_FILE_NAME));
  for (let b = 1 + int(8); b > 0; b--) w.appendBatch(j);
  // The round covers what was appended when it started; batches appended while it runs are not
  // durable when it completes, and the durable point it leaves must not claim them.
  const round = j.sync();
  const durable = readFiles(live);
  const durableCount = w.appended.length;
  for (let b = int(4); b > 0; b--) w.appendBatch(j);
  await round;
  durable.set(DURABLE_POINT_FILE_NAME, fs.readFileSync(join(live, DURABLE_POINT_FILE_NAME)));
  for (let b = 1 + int(12); b > 0; b--) w.appendBatch(j);
  const cache = readFiles(live);
  await j.close();
  const expected = w.appended.map(encode);

  const what = (i: number) => `RC_FUZZ_SEED=${SEED} trial ${n} image ${i}`;
  const dir = join(root, `image-${n % 2}`);
  const sameBootDir = join(root, `same-boot-${n % 2}`);
  for (let i = 0; i < IMAGES_PER_TRIAL; i++) {
    const image = powerLossImage(durable, cache, earlierPoint, rnd);
    writeFiles(dir, image);
    writeFiles(sameBootDir, image);
    const boot = `after-power-loss-${n}-${i}`;
    const logs: string[] = [];
    const r = await openAndRead(dir, boot, logs);
    if (r instanceof RemcopyError) assert.fail(`${what(i)}: refused: ${r.message}`);
    // In the boot that wrote it, a hole is no power loss: refused exactly when one was dropped.
    const holeDropped = logs.some((m) => m.includes('hole past the durable point'));
    const same = await openAndRead(sameBootDir, undefined);
    if (same instanceof RemcopyError) {
      assert.ok(holeDropped, `${what(i)}: refused in the same boot with no hole: ${same.message}`);
      assert.match(same.message, /has not restarted/, what(i));
    } else {
      assert.ok(!holeDropped, `${what(i)}: opened in the same boot over a hole`);
      assert.deepEqual(same.records, r.records, `${what(i)}: the same records in the same boot`);
      await same.journal.close();
    }
    const got = r.records;
    assert.ok(got.length >= durableCount, `${what(i)}: ${got.length} records, ${durableCount} were durable`);
    assert.ok(got.length <= expected.length, `${what(i)}: more records than appended`);
    for (let k = 0; k < got.length; k++) {
      if (!got[k]!.equals(expected[k]!))
        console.log(
          'DBG',
          k,
          decodeRecord(got[k]!, 0),
          decodeRecord(expected[k]!, 0),
          [...fs.readdirSync(dir)],
          [...durable.keys()],
          [...cache.keys()],
        );
      assert.ok(got[k]!.equals(expected[k]!), `${what(i)}: record ${k}`);
    }
    // The journal goes on from there.
    const last = w.appended[got.length - 1]!.header;
    const group = GROUPS[int(GROUPS.length)]!;
    const next: RecordHeader = {
      ...last,
      kind: Kind.marker,
      group,
      seq: seq(r.journal.lastSeq(group) + 1),
      ordinal: ordinal(r.journal.lastOrdinal() + 1),
      volume: '',
      offset: byteOffset(0),
      length: 0,
      markerNo: r.journal.lastMarker(group) + 1,
    };
    r.journal.append([{ header: next }]);
    await r.journal.close();
    const again = await openAndRead(dir, boot);
    if (again instanceof RemcopyError) assert.fail(`${what(i)}: refused after going on: ${again.message}`);
    assert.equal(again.records.length, got.length + 1, `${what(i)}: reopened`);
    assert.ok(again.records[got.length]!.equals(encode({ header: next })), `${what(i)}: the new record`);
    await again.journal.close();
  }

  // Damage that no power loss makes: a bit of a synced record. Refused.
  const places = recordPlaces(durable);
  assert.equal(places.length, durableCount, `${what(-1)}: the durable image holds the synced records`);
  const [file, offset, bytes] = places[int(places.length)]!;
  const damaged = new Map(durable);
  const content = Buffer.from(durable.get(file)!);
  content[offset + int(bytes)]! ^= 1 << int(8);
  damaged.set(file, content);
  writeFiles(dir, damaged);
  const r = await openAndRead(dir, `after-power-loss-${n}`);
  if (!(r instanceof RemcopyError)) {
    await r.journal.close();
    assert.fail(`${what(-1)}: opened over a flipped bit in the synced record at ${file}:${offset}`);
  }
  assert.equal(r.code, 'RC_ERR_JOURNAL_CORRUPT', `${what(-1)}: ${r.message}`);
  assert.ok(r.message.includes(file), `${what(-1)}: the refusal names the segment: ${r.message}`);
}

describe(`journal recovery after a power loss (RC_FUZZ_SEED=${SEED})`, () => {
  test(`${TRIALS} trials of ${IMAGES_PER_TRIAL} power-loss images: open, keep every synced record, go on; damage below the durable point refused`, async () => {
    for (let n = 0; n < TRIALS; n++) await trial(n);
  });
});
