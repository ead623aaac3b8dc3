/**
 * The journal (src/storage/journal.ts) proves: appended records survive sync + reopen byte for byte
 * and in append order; lastSeq/lastOrdinal/lastWriteTimeUs resume after a restart, even when every
 * record was released and its segments deleted (state file); group commit (N concurrent sync()
 * callers cost at most 2 fdatasyncs); a full journal throws RC_ERR_JOURNAL_FULL and writes nothing;
 * segments rotate and are deleted once released; readRetained serves one group from a seq; a write
 * error (ENOSPC, short write) leaves nothing recovery would load and the journal usable; a failed
 * fdatasync fails the journal; recovery truncates a torn tail and refuses a corrupt middle record,
 * a seq gap, an invalid state file and a segment file lost behind the journal's back (while the
 * state file on disk never asks for a segment the journal let go); sequence rules and limits are
 * asserted.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { RemcopyError } from '../../src/core/errors.js';
import type { RecordHeader, RecordKind } from '../../src/core/types.js';
import {
  byteOffset,
  RecordKind as Kind,
  kindCarriesData,
  nodeIdFromNumber,
  ordinal,
  seq,
  timeUs,
} from '../../src/core/types.js';
import { DIRECT_STAGING_BYTES } from '../../src/storage/direct-io.js';
import { DURABLE_POINT_FILE_NAME, readDurablePointSync } from '../../src/storage/durable-point.js';
import {
  DIRECT_ROOM_MARGIN_BYTES,
  Journal,
  type JournalIo,
  type JournalOptions,
} from '../../src/storage/journal.js';
import { checkSegmentsPresent, type LogFn, listSegments } from '../../src/storage/journal-recovery.js';
import { readStateSync } from '../../src/storage/journal-state.js';
import {
  decodeRecord,
  encodeHeader,
  isSegmentEnd,
  RECORD_HEADER_AND_NAMES_BYTES_MAX,
  SEGMENT_END_BYTES,
  recordBytes as recordBytesOf,
} from '../../src/storage/record.js';

const root = fs.mkdtempSync(join(tmpdir(), 'rc-journal-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));
let dirs = 0;
const newDir = (): string => join(root, `j${dirs++}`);

/** Small limits so tests rotate segments quickly: records up to 4 KiB, 16 KiB segments. */
const SMALL = { limits: { recordPayloadBytesMax: 4096 }, segmentBytes: 16 * 1024, bytesMax: 1024 * 1024 };

interface Rec {
  header: RecordHeader;
  payload?: Buffer;
}

/** Makes records that follow the sequence rules: seq per group, one ordinal counter. */
class Maker {
  private ord: number;
  private readonly seqs = new Map<string, number>();
  constructor(j?: Journal, groups: string[] = []) {
    this.ord = j ? j.lastOrdinal() : 0;
    for (const g of groups) this.seqs.set(g, j ? j.lastSeq(g) : 0);
  }
  rec(group: string, kind: RecordKind, length: number, fill?: number): Rec {
    const s = (this.seqs.get(group) ?? 0) + 1;
    this.seqs.set(group, s);
    this.ord++;
    const header: RecordHeader = {
      kind,
      group,
      seq: seq(s),
      writeTimeUs: timeUs(1_000_000 + this.ord * 10),
      hostTimeUs: timeUs(0),
      nodeId: nodeIdFromNumber(42),
      ordinal: ordinal(this.ord),
      epoch: 1,
      volume: kind === Kind.marker ? '' : `vol-${group}`,
      offset: byteOffset(s * 4096),
      length: kind === Kind.marker ? 0 : length,
      markerNo: kind === Kind.marker ? s : 0,
    };
    if (!kindCarriesData(kind)) return { header };
    const payload = Buffer.alloc(length);
    for (let i = 0; i < length; i++) payload[i] = (fill ?? this.ord * 7 + i) & 0xff;
    return { header, payload };
  }
}

const open = (dir: string, more: Partial<JournalOptions> = {}) => Journal.open({ dir, ...SMALL, ...more });

function collect(j: Journal): Rec[] {
  return [...j.retained()].map((r) => ({ header: r.header, payload: Buffer.from(r.payload) }));
}

function assertSame(got: Rec[], want: Rec[], what = 'records'): void {
  assert.equal(got.length, want.length, `${what}: record count`);
  for (let i = 0; i < want.length; i++) {
    assert.deepEqual(got[i]!.header, want[i]!.header, `record ${i} header`);
    assert.ok(got[i]!.payload!.equals(want[i]!.payload ?? Buffer.alloc(0)), `record ${i} payload`);
  }
}

function segFiles(dir: string): string[] {
  return fs
    .readdirSync(dir)
    .filter((f) => f.startsWith('seg-'))
    .sort();
}

function sizes(dir: string): Record<string, number> {
  return Object.fromEntries(segFiles(dir).map((f) => [f, fs.statSync(join(dir, f)).size]));
}

const isCode = (code: string) => (e: unknown) => e instanceof RemcopyError && e.code === code;

describe('journal', () => {
  test('append, sync, reopen: every record back in append order; counters resume', async () => {
    const dir = newDir();
    const j = await open(dir);
    const m = new Maker();
    const recs = [
      m.rec('a', Kind.data, 4096),
      m.rec('b', Kind.zero, 1 << 20),
      m.rec('a', Kind.copy, 100),
      m.rec('a', Kind.marker, 0),
      m.rec('b', Kind.data, 1),
    ];
    j.append(recs.slice(0, 2));
    j.append(recs.slice(2));
    assertSame(collect(j), recs);
    await j.sync();
    await j.close();
    const j2 = await open(dir);
    assertSame(collect(j2), recs);
    assert.equal(j2.lastSeq('a'), 3);
    assert.equal(j2.lastSeq('b'), 2);
    assert.equal(j2.lastSeq('nope'), 0);
    assert.equal(j2.lastOrdinal(), 5);
    assert.equal(j2.lastWriteTimeUs(), recs[4]!.header.writeTimeUs);
    assert.deepEqual(j2.usage().records, 5);
    // The sequence continues.
    const m2 = new Maker(j2, ['a', 'b']);
    const more = m2.rec('a', Kind.data, 10);
    assert.equal(more.header.seq, 4);
    j2.append([more]);
    await j2.close();
    const j3 = await open(dir);
    assertSame(collect(j3), [...recs, more]);
    await j3.close();
  });

  test('append returns each head; an encoding given is written as is; a wrong one writes nothing', async () => {
    const dir = newDir();
    const j = await open(dir);
    const m = new Maker();
    const recs = [m.rec('a', Kind.data, 4096), m.rec('a', Kind.marker, 0), m.rec('b', Kind.zero, 512)];
    const heads = j.append(recs);
    assert.equal(heads.length, 3);
    recs.forEach((r, i) => assert.ok(heads[i]!.equals(encodeHeader(r.header, r.payload)), `head ${i}`));
    // As a target journals what it received: the exact bytes, payload inside them.
    const more = [m.rec('a', Kind.data, 3000), m.rec('b', Kind.marker, 0)];
    const encoded = more.map((r) => {
      const head = encodeHeader(r.header, r.payload);
      return r.payload ? Buffer.concat([head, r.payload]) : head;
    });
    const heads2 = j.append(more.map((r, i) => ({ ...r, encoded: encoded[i] })));
    assert.deepEqual(heads2, [undefined, undefined], 'no head for a record given encoded: its caller has it');
    // An encoding that is not the record's (another seq; a payload cut short) is refused whole.
    const bad = m.rec('a', Kind.data, 100);
    const other = m.rec('b', Kind.data, 100);
    const used = j.usage().usedBytes;
    assert.throws(
      () =>
        j.append([
          { ...bad, encoded: Buffer.concat([encodeHeader(other.header, other.payload), other.payload!]) },
        ]),
      /not this record's/,
    );
    const cut = Buffer.concat([encodeHeader(bad.header, bad.payload), bad.payload!]).subarray(0, -1);
    assert.throws(() => j.append([{ ...bad, encoded: cut }]), /not this record's/);
    assert.equal(j.usage().usedBytes, used, 'nothing written');
    await j.sync();
    await j.close();
    const j2 = await open(dir);
    assertSame(collect(j2), [...recs, ...more]);
    await j2.close();
  });

  test('group commit: 100 concurrent sync() callers cost at most 2 fdatasyncs', async () => {
    const j = await open(newDir(), { segmentBytes: 1 << 20, bytesMax: 2 << 20 });
    const m = new Maker();
    await j.sync();
    assert.equal(j.syncCount, 0, 'nothing appended: no fdatasync');
    j.append([m.rec('a', Kind.data, 512)]);
    await Promise.all(Array.from({ length: 100 }, () => j.sync()));
    assert.equal(j.syncCount, 1, 'one round covers callers that all came after the append');
    assert.equal(j.fdatasyncCount, 1);
    // Appends between callers: the first round covers the first, the next round all the others.
    const before = j.syncCount;
    const waits: Promise<void>[] = [];
    for (let i = 0; i < 100; i++) {
      j.append([m.rec('a', Kind.data, 512)]);
      waits.push(j.sync());
    }
    await Promise.all(waits);
    assert.ok(j.syncCount - before <= 2, `${j.syncCount - before} rounds`);
    assert.ok(j.fdatasyncCount - before <= 2, `${j.fdatasyncCount - before} fdatasyncs`);
    await j.close();
  });

  test('sync resolves only after the fdatasync covering the caller completes', async () => {
    let release: (() => void) | null = null;
    const io: JournalIo = {
      writevSync: (fd, bufs, pos) => fs.writevSync(fd, bufs, pos),
      fdatasync: (fd) =>
        new Promise((resolve) => {
          release = () => fs.fdatasync(fd, () => resolve());
        }),
    };
    const j = await open(newDir(), { io });
    const m = new Maker();
    j.append([m.rec('a', Kind.data, 10)]);
    let done = false;
    const p = j.sync().then(() => {
      done = true;
    });
    await new Promise((r) => setImmediate(r));
    assert.equal(done, false);
    assert.ok(release);
    (release as () => void)();
    await p;
    assert.equal(done, true);
    await j.close();
  });

  test('a full journal throws RC_ERR_JOURNAL_FULL and writes nothing', async () => {
    const dir = newDir();
    const j = await open(dir, { bytesMax: 32 * 1024 });
    const m = new Maker();
    const fit: Rec[] = [];
    for (let i = 0; i < 7; i++) fit.push(m.rec('a', Kind.data, 4000));
    j.append(fit);
    const usage = j.usage();
    const onDisk = sizes(dir);
    const tooMany = [m.rec('a', Kind.data, 4000), m.rec('a', Kind.data, 4000)];
    assert.throws(() => j.append(tooMany), isCode('RC_ERR_JOURNAL_FULL'));
    assert.deepEqual(j.usage(), usage);
    assert.deepEqual(sizes(dir), onDisk);
    assert.equal(j.lastSeq('a'), 7);
    // After a release frees segments, the same records (same seqs) go in.
    j.release('a', seq(7));
    await j.whenIdle();
    j.append(tooMany);
    assert.equal(j.lastSeq('a'), 9);
    await j.close();
    const j2 = await open(dir, { bytesMax: 32 * 1024 });
    assertSame(collect(j2), tooMany);
    await j2.close();
  });

  test('the files stay within bytesMax: a segment left with a tail no record fits counts whole', async () => {
    // One 9000-byte record per 16 KiB segment: each segment left keeps a 7 KiB tail no record fits.
    const dir = newDir();
    const opts = { bytesMax: 64 * 1024, limits: { recordPayloadBytesMax: 12000 } };
    const j = await open(dir, opts);
    const m = new Maker();
    const recBytes = recordBytesOf(new Maker().rec('a', Kind.data, 9000).header, 9000);
    const fileBytes = (): number =>
      fs.readdirSync(dir).reduce((n, f) => n + (f.endsWith('.log') ? fs.statSync(join(dir, f)).size : 0), 0);
    let next = m.rec('a', Kind.data, 9000); // the one refused goes in first next time
    const fill = (): number => {
      for (let fitted = 0; ; fitted++) {
        try {
          j.append([next]);
          next = m.rec('a', Kind.data, 9000);
        } catch (e) {
          assert.ok(isCode('RC_ERR_JOURNAL_FULL')(e), String(e));
          return fitted;
        }
      }
    };
    for (let round = 0; round < 3; round++) {
      // Later rounds start in the segment holding the last round's last (released) record: left
      // behind, it counts whole until it is deleted.
      assert.equal(fill(), round === 0 ? 4 : 3, `round ${round}`);
      const u = j.usage();
      assert.equal(u.segments, 4);
      assert.equal(u.usedBytes, 3 * SMALL.segmentBytes + recBytes);
      // Segment files (live, and kept for reuse) are whole segments: within bytesMax.
      assert.ok(fileBytes() <= opts.bytesMax, `round ${round}: ${fileBytes()} bytes of segment files`);
      await j.sync();
      j.release('a', seq(j.lastSeq('a')));
      await j.whenIdle();
      assert.ok(fileBytes() <= opts.bytesMax, `round ${round}, released: ${fileBytes()} bytes`);
    }
    await j.close();
    // Reopened: the active segment counts its records, the others whole.
    const j2 = await open(dir, opts);
    assert.equal(j2.usage().usedBytes, (j2.usage().segments - 1) * SMALL.segmentBytes + recBytes);
    await j2.close();
  });

  test('segments rotate; released segments are deleted; the sequence continues after reopen', async () => {
    const dir = newDir();
    const j = await open(dir);
    const m = new Maker();
    const recs: Rec[] = [];
    for (let i = 0; i < 20; i++) recs.push(m.rec(i % 3 === 0 ? 'b' : 'a', Kind.data, 3000));
    j.append(recs.slice(0, 10));
    j.append(recs.slice(10));
    assert.ok(segFiles(dir).length >= 4, `${segFiles(dir).length} segments`);
    for (const f of segFiles(dir)) assert.ok(fs.statSync(join(dir, f)).size <= SMALL.segmentBytes);
    await j.sync();
    // Releasing only group a frees no segment that also holds unreleased b records.
    j.release('a', j.lastSeq('a'));
    await j.whenIdle();
    const left = recs.filter((r) => r.header.group === 'b');
    assertSame(collect(j), left);
    assert.equal(j.usage().records, left.length);
    j.release('b', j.lastSeq('b'));
    await j.whenIdle();
    assert.equal(j.usage().records, 0);
    assert.equal(segFiles(dir).length, 1, 'only the active segment is left');
    assert.equal(j.usage().segments, 1);
    await j.close();
    const state = JSON.parse(fs.readFileSync(join(dir, 'state.json'), 'utf8'));
    assert.deepEqual(state.groups, { a: { releasedSeq: 13 }, b: { releasedSeq: 7 } });
    // Remove even the active segment: the state file alone says where everything continues.
    for (const f of segFiles(dir)) fs.rmSync(join(dir, f));
    const j2 = await open(dir);
    assert.equal(j2.lastSeq('a'), 13);
    assert.equal(j2.lastSeq('b'), 7);
    assert.equal(j2.lastOrdinal(), 20);
    assert.equal(j2.lastWriteTimeUs(), recs[19]!.header.writeTimeUs);
    assert.equal(collect(j2).length, 0);
    const m2 = new Maker(j2, ['a', 'b']);
    const next = [m2.rec('a', Kind.data, 8), m2.rec('b', Kind.zero, 8)];
    assert.equal(next[0]!.header.seq, 14);
    assert.equal(next[1]!.header.ordinal, 22);
    j2.append(next);
    await j2.close();
    const j3 = await open(dir);
    assertSame(collect(j3), next);
    await j3.close();
  });

  test("a group's last marker survives its release and the deletion of its segment", async () => {
    const dir = newDir();
    const j = await open(dir);
    const m = new Maker();
    // Maker numbers a marker by its seq: marker 2 in group a, then data filling several segments.
    const recs = [m.rec('a', Kind.data, 3000), m.rec('a', Kind.marker, 0), m.rec('b', Kind.marker, 0)];
    for (let i = 0; i < 12; i++) recs.push(m.rec('a', Kind.data, 3000));
    j.append(recs);
    assert.equal(j.lastMarker('a'), 2);
    assert.equal(j.lastMarker('b'), 1);
    assert.equal(j.lastMarker('c'), 0);
    await j.sync();
    j.release('a', j.lastSeq('a'));
    j.release('b', j.lastSeq('b'));
    await j.whenIdle();
    assert.equal(segFiles(dir).length, 1, 'the segments holding the markers are gone');
    await j.close();
    const state = JSON.parse(fs.readFileSync(join(dir, 'state.json'), 'utf8'));
    assert.deepEqual(state.groups, {
      a: { releasedSeq: 14, lastMarker: 2 },
      b: { releasedSeq: 1, lastMarker: 1 },
    });
    const j2 = await open(dir);
    assert.equal(j2.lastMarker('a'), 2, 'known from the state file alone');
    assert.equal(j2.lastMarker('b'), 1);
    // A marker still on disk after a crash (no state write) is found by recovery.
    const m2 = new Maker(j2, ['a', 'b']);
    j2.append([m2.rec('b', Kind.marker, 0)]);
    await j2.sync();
    fs.rmSync(join(dir, 'state.json.tmp'), { force: true });
    const j3 = await open(dir);
    assert.equal(j3.lastMarker('b'), 2, 'recovered from the retained record');
    assert.equal(j3.lastMarker('a'), 2);
    await j3.close();
    await j2.close().catch(() => {});
  });

  test('releases persist lazily: no state write until a segment can go; close writes it', async () => {
    const dir = newDir();
    const j = await open(dir);
    const m = new Maker();
    const recs = [m.rec('a', Kind.data, 100), m.rec('a', Kind.data, 100), m.rec('a', Kind.data, 100)];
    j.append(recs);
    j.release('a', seq(2));
    await j.whenIdle();
    assert.equal(fs.existsSync(join(dir, 'state.json')), false, 'no segment to delete: no state write');
    assertSame(collect(j), recs.slice(2));
    await j.close();
    assert.ok(fs.existsSync(join(dir, 'state.json')));
    const j2 = await open(dir);
    assertSame(collect(j2), recs.slice(2));
    assert.equal(j2.releasedSeq('a'), 2);
    assert.equal(j2.usage().records, 1);
    await j2.close();
  });

  test('retained() reads records larger than its read chunk and across chunk boundaries', async () => {
    const dir = newDir();
    const j = await Journal.open({ dir, bytesMax: 256 * 1024 * 1024 });
    const m = new Maker();
    const recs = [
      m.rec('a', Kind.data, 3 * 1024 * 1024),
      m.rec('a', Kind.data, 6 * 1024 * 1024),
      m.rec('a', Kind.zero, 1),
      m.rec('a', Kind.data, 3 * 1024 * 1024 + 17),
      m.rec('a', Kind.data, 5),
    ];
    j.append(recs);
    assertSame(collect(j), recs);
    assertSame(j.readRetained('a', seq(2), 1), recs.slice(1, 2));
    await j.close();
  });

  test('readRetained serves one group from a seq, bounded by bytes, across segments', async () => {
    const dir = newDir();
    const j = await open(dir);
    const m = new Maker();
    const recs: Rec[] = [];
    for (let i = 0; i < 30; i++) recs.push(m.rec(i % 2 === 0 ? 'a' : 'b', Kind.data, 1000 + i * 50));
    j.append(recs);
    const a = recs.filter((r) => r.header.group === 'a');
    const all = j.readRetained('a', seq(1), 1 << 30);
    assertSame(all, a);
    const some = j.readRetained('a', seq(4), 3 * 1300);
    assert.ok(some.length >= 1 && some.length < a.length - 3);
    assertSame(some, a.slice(3, 3 + some.length));
    assert.equal(j.readRetained('a', seq(5), 1).length, 1, 'at least one record');
    assert.equal(j.readRetained('a', seq(16), 1 << 20).length, 0, 'past the end');
    assert.equal(j.readRetained('zz', seq(1), 1 << 20).length, 0, 'unknown group');
    j.release('a', seq(10));
    assertSame(j.readRetained('a', seq(11), 1 << 30), a.slice(10));
    assert.throws(() => j.readRetained('a', seq(10), 100), /released/);
    await j.close();
    const j2 = await open(dir);
    assertSame(
      j2.readRetained('b', seq(1), 1 << 30),
      recs.filter((r) => r.header.group === 'b'),
    );
    await j2.close();
  });

  test('sequence rules and limits are asserted', async () => {
    const dir = newDir();
    await assert.rejects(
      () => Journal.open({ dir, bytesMax: 1 << 30, segmentBytes: 1 << 20 }),
      /segmentBytes/,
    );
    await assert.rejects(() => open(dir, { bytesMax: SMALL.segmentBytes }), /bytesMax/);
    await assert.rejects(() => open(dir, { limits: { recordPayloadBytesMax: 0 } }), /recordPayloadBytesMax/);
    const j = await open(dir);
    const m = new Maker();
    j.append([m.rec('a', Kind.data, 10)]);
    const gap = m.rec('a', Kind.data, 10);
    m.rec('a', Kind.data, 10);
    assert.throws(() => j.append([m.rec('a', Kind.data, 10)]), /seq 4 after 1/);
    assert.throws(() => j.append([{ ...gap, header: { ...gap.header, ordinal: ordinal(1) } }]), /ordinal/);
    const tick = { header: { ...gap.header, kind: Kind.tick, length: 0 } };
    assert.throws(() => j.append([tick]), /tick/);
    assert.throws(() => j.append([m.rec('c', Kind.data, 4097)]), /payload/);
    assert.throws(() => j.release('a', seq(2)), /beyond/);
    j.append([gap]);
    await j.close();
  });

  test('resumeGroup: a group continuing from another node starts at the given seq', async () => {
    const dir = newDir();
    const j = await open(dir);
    await j.resumeGroup('mig', seq(1000));
    assert.equal(j.lastSeq('mig'), 1000);
    const m = new Maker(j, ['mig']);
    const r = m.rec('mig', Kind.data, 10);
    assert.equal(r.header.seq, 1001);
    j.append([r]);
    await j.close();
    const j2 = await open(dir);
    assertSame(collect(j2), [r]);
    assert.equal(j2.lastSeq('mig'), 1001);
    await j2.close();
  });

  test('releaseAll is durable at once: a restart replays none of the records; the group moves on', async () => {
    const dir = newDir();
    const j = await open(dir);
    const m = new Maker(j, ['fb']);
    const recs = [m.rec('fb', Kind.data, 10), m.rec('fb', Kind.data, 10), m.rec('fb', Kind.data, 10)];
    j.append(recs);
    await j.sync();
    // A release just before: its maintenance pass may be running when releaseAll asks for another.
    j.release('fb', seq(1));
    await j.releaseAll('fb');
    assert.equal(j.releasedSeq('fb'), 3);
    await assert.rejects(j.resumeGroup('fb', seq(2)), /seq 2/, 'a group never goes back');
    await j.resumeGroup('fb', seq(50));
    const next = new Maker(j, ['fb']).rec('fb', Kind.data, 10);
    assert.equal(next.header.seq, 51);
    // No close: a crash now. The state file alone says every old record is released.
    const j2 = await open(dir);
    assert.deepEqual(collect(j2), []);
    assert.equal(j2.lastSeq('fb'), 50);
    await j2.close();
    await j.close();
  });

  test('ENOSPC after a short write: RC_ERR_JOURNAL_IO, nothing left that recovery would load', async () => {
    const dir = newDir();
    let failAfter = -1; // bytes to write before failing; -1 = no fault
    const io: JournalIo = {
      writevSync: (fd, bufs, pos) => {
        if (failAfter < 0) return fs.writevSync(fd, bufs, pos);
        if (failAfter === 0) throw Object.assign(new Error('no space left on device'), { code: 'ENOSPC' });
        const all = Buffer.concat(bufs as Buffer[]);
        const n = fs.writeSync(fd, all, 0, Math.min(failAfter, all.length), pos);
        failAfter = 0;
        return n;
      },
      fdatasync: (fd) => new Promise((res, rej) => fs.fdatasync(fd, (e) => (e ? rej(e) : res()))),
    };
    const j = await open(dir, { io });
    const m = new Maker();
    const ok = [m.rec('a', Kind.data, 3000), m.rec('a', Kind.data, 3000)];
    j.append(ok);
    const onDisk = sizes(dir);
    const snap = new Maker(j, ['a']);
    // A batch that spans into a new segment, failing in the middle of its second record.
    const batch = Array.from({ length: 6 }, () => snap.rec('a', Kind.data, 3000));
    failAfter = 4000;
    assert.throws(
      () => j.append(batch),
      (e: unknown) => isCode('RC_ERR_JOURNAL_IO')(e) && /ENOSPC/.test(String(e)),
    );
    assert.deepEqual(sizes(dir), onDisk, 'truncated back, created segments removed');
    assert.equal(j.lastSeq('a'), 2);
    failAfter = -1;
    j.append(batch); // the same seqs: nothing was consumed
    await j.close();
    const j2 = await open(dir);
    assertSame(collect(j2), [...ok, ...batch]);
    await j2.close();
  });

  test('a failed fdatasync fails the journal: sync rejects, later appends throw', async () => {
    const io: JournalIo = {
      writevSync: (fd, bufs, pos) => fs.writevSync(fd, bufs, pos),
      fdatasync: () => Promise.reject(Object.assign(new Error('input/output error'), { code: 'EIO' })),
    };
    const j = await open(newDir(), { io });
    const m = new Maker();
    j.append([m.rec('a', Kind.data, 10)]);
    await assert.rejects(() => j.sync(), isCode('RC_ERR_JOURNAL_IO'));
    assert.throws(() => j.append([m.rec('a', Kind.data, 10)]), isCode('RC_ERR_JOURNAL_IO'));
    await assert.rejects(() => j.sync(), isCode('RC_ERR_JOURNAL_IO'));
    await j.close();
  });

  test('recovery truncates a torn tail and a zero tail, and logs it', async () => {
    const dir = newDir();
    const j = await open(dir);
    const m = new Maker();
    const recs = [m.rec('a', Kind.data, 100), m.rec('a', Kind.data, 100)];
    j.append(recs);
    await j.close();
    const [last] = segFiles(dir).slice(-1);
    const file = join(dir, last!);
    const goodSize = fs.statSync(file).size;
    const torn = m.rec('a', Kind.data, 100);
    const tornBytes = Buffer.concat([encodeHeader(torn.header, torn.payload), torn.payload!]).subarray(
      0,
      150,
    );
    fs.appendFileSync(file, tornBytes);
    const logs: string[] = [];
    const j2 = await open(dir, { log: (level, msg) => logs.push(`${level} ${msg}`) });
    assertSame(collect(j2), recs);
    assert.equal(fs.statSync(file).size, goodSize);
    assert.ok(logs.some((l) => l.startsWith('warn') && l.includes('torn tail')));
    await j2.close();
    fs.appendFileSync(file, Buffer.alloc(8192));
    const j3 = await open(dir);
    assertSame(collect(j3), recs);
    assert.equal(fs.statSync(file).size, goodSize);
    await j3.close();
  });

  test('recovery refuses a corrupt record followed by valid ones, naming file and offset', async () => {
    const dir = newDir();
    const j = await open(dir);
    const m = new Maker();
    const recs = [m.rec('a', Kind.data, 100), m.rec('a', Kind.data, 100), m.rec('a', Kind.data, 100)];
    j.append(recs);
    await j.close();
    const file = join(dir, segFiles(dir)[0]!);
    const buf = fs.readFileSync(file);
    const second = recordBytesOf(recs[0]!.header, 100); // three records of equal size
    buf[second + 90]! ^= 0x10;
    fs.writeFileSync(file, buf);
    await assert.rejects(
      () => open(dir),
      (e: unknown) =>
        isCode('RC_ERR_JOURNAL_CORRUPT')(e) &&
        String(e).includes(file) &&
        String(e).includes(`byte offset ${second} `) &&
        String(e).includes('checksum'),
    );
    assert.equal(fs.readFileSync(file).length, buf.length, 'nothing truncated');
  });

  test('preallocated segments: a zero tail before the next segment is the end; zeroed records are a gap', async () => {
    const dir = newDir();
    const j = await open(dir);
    const m = new Maker();
    const recs = Array.from({ length: 6 }, () => m.rec('a', Kind.data, 3000));
    j.append(recs);
    await j.close();
    const files = segFiles(dir).map((f) => join(dir, f));
    assert.equal(files.length, 2);
    const rb = recordBytesOf(recs[0]!.header, 3000);
    assert.ok(fs.statSync(files[0]!).size > 5 * rb, 'the first segment ends in an unused, zeroed tail');
    // Reopens with every record: the zero tail of the full segment is not corruption.
    const j2 = await open(dir);
    assertSame(collect(j2), recs);
    await j2.close();
    // Zeroing the last record of the first segment cannot hide it: the seq gap is refused.
    const buf = fs.readFileSync(files[0]!);
    buf.fill(0, 4 * rb, 5 * rb);
    fs.writeFileSync(files[0]!, buf);
    await assert.rejects(() => open(dir), isCode('RC_ERR_JOURNAL_CORRUPT'));
  });

  test('released segments are recycled; reopening after reuse and after a crash keeps exactly the live records', async () => {
    const dir = newDir();
    let j = await open(dir);
    let m = new Maker();
    let live: Rec[] = [];
    // Fill and release many segments' worth, so that segment files are reused several times.
    for (let round = 0; round < 12; round++) {
      const recs = Array.from({ length: 4 }, () => m.rec('a', Kind.data, 3000));
      j.append(recs);
      await j.sync();
      live = live.concat(recs);
      const keep = live.slice(-3);
      j.release('a', (keep[0]!.header.seq - 1) as never);
      live = keep;
      await j.whenIdle();
    }
    const free = fs.readdirSync(dir).filter((f) => f.startsWith('free-'));
    const segs = segFiles(dir);
    assert.ok(free.length > 0, 'released segments are kept for reuse');
    assert.ok(
      segs.length + free.length <= SMALL.bytesMax / SMALL.segmentBytes!,
      'live + free files within bytesMax',
    );
    assertSame(collect(j), live);
    // The next segments are the free files, renamed: same inodes, blocks already allocated.
    const freeInodes = new Set(free.map((f) => fs.statSync(join(dir, f)).ino));
    for (let i = 0; i < 8; i++) {
      const recs = Array.from({ length: 4 }, () => m.rec('a', Kind.data, 3000));
      j.append(recs);
      live = live.concat(recs);
    }
    assert.ok(
      segFiles(dir).some((f) => freeInodes.has(fs.statSync(join(dir, f)).ino)),
      'a free file came back as a live segment',
    );
    await j.close();
    j = await open(dir);
    assertSame(collect(j), live, 'after a clean reopen');
    // A crash image: the active (possibly recycled) segment's records are followed by stale bytes.
    m = new Maker(j, ['a']);
    const more = m.rec('a', Kind.data, 3000);
    j.append([more]);
    await j.close();
    j = await open(dir);
    assertSame(collect(j), live.concat([more]), 'stale tail after the last record is not loaded');
    await j.close();
  });

  test('a recycled segment whose old payloads hold an image of a record of another journal reopens cleanly', async () => {
    // Host data that is a record of another journal (a VM disk holding one, a backup), with an
    // ordinal far above this journal's: once its segment is recycled, the new records end where
    // an older record of the file's previous life begins, and the image lies beyond.
    const f = new Maker().rec('db', Kind.data, 512);
    const image = { ...f.header, ordinal: ordinal(5_000_000) };
    const payload = Buffer.alloc(3000);
    Buffer.concat([encodeHeader(image, f.payload), f.payload!]).copy(payload, 1000);
    const dir = newDir();
    const j = await open(dir);
    const m = new Maker();
    const write = (): Rec => ({ header: m.rec('a', Kind.data, 3000).header, payload });
    let live: Rec[] = [];
    for (let i = 0; i < 6; i++) live.push(write());
    for (const r of live) j.append([r]);
    await j.sync();
    j.release('a', live[4]!.header.seq);
    live = live.slice(5);
    await j.whenIdle();
    for (let i = 0; i < 5; i++) {
      const r = write();
      j.append([r]);
      live.push(r);
    }
    await j.sync();
    await j.close();
    const again = await open(dir);
    assertSame(collect(again), live, 'after a clean close');
    await again.close();
  });

  test('a fresh journal prepares a zero-filled spare; the first segment is that file', async () => {
    const dir = newDir();
    const j = await open(dir);
    const spares = fs.readdirSync(dir).filter((f) => f.startsWith('free-'));
    assert.equal(spares.length, 1, 'one spare prepared at open');
    const spare = join(dir, spares[0]!);
    const content = fs.readFileSync(spare);
    assert.equal(content.length, SMALL.segmentBytes);
    assert.ok(
      content.every((b) => b === 0),
      'zero-filled, so its blocks are allocated and hold no stale records',
    );
    const ino = fs.statSync(spare).ino;
    const m = new Maker();
    const rec = m.rec('a', Kind.data, 1000);
    j.append([rec]);
    assert.equal(fs.statSync(join(dir, segFiles(dir)[0]!)).ino, ino, 'the first segment reuses the spare');
    await j.close();
    assert.ok(!fs.readdirSync(dir).some((f) => f.startsWith('prep-')), 'no preparation leftovers');
    const j2 = await open(dir);
    assertSame(collect(j2), [rec]);
    await j2.close();
  });

  test('recovery: a torn tail spanning into a segment the crashed append created is dropped', async () => {
    const dir = newDir();
    const j = await open(dir);
    const m = new Maker();
    const recs = Array.from({ length: 6 }, () => m.rec('a', Kind.data, 3000));
    j.append(recs.slice(0, 4));
    await j.sync();
    // The crash comes before the next sync: the durable point on disk is the one of this sync.
    const durableAt4 = fs.readFileSync(join(dir, 'durable.pos'));
    j.append(recs.slice(4));
    await j.close();
    fs.writeFileSync(join(dir, 'durable.pos'), durableAt4);
    const files = segFiles(dir);
    assert.equal(files.length, 2);
    const first = join(dir, files[0]!);
    const second = join(dir, files[1]!);
    // Segments are preallocated: the first holds five records and then zeroes.
    const recordBytes = recordBytesOf(recs[0]!.header, 3000);
    const firstSize = 5 * recordBytes;
    // The first segment loses half of its last record; the second holds only a torn record.
    fs.truncateSync(first, firstSize - recordBytes / 2);
    fs.truncateSync(second, 100);
    const logs: object[] = [];
    const j2 = await open(dir, { log: (_l, _m, f) => logs.push(f ?? {}) });
    assertSame(collect(j2), recs.slice(0, 4));
    assert.deepEqual(segFiles(dir), [files[0]]);
    assert.equal(j2.usage().usedBytes, 4 * recordBytes, 'records after the cut are gone');
    assert.ok(
      logs.some(
        (f) => 'bytesDropped' in f && (f as { bytesDropped: number }).bytesDropped === 100 + recordBytes / 2,
      ),
    );
    // Appends continue at the cut.
    const more = new Maker(j2, ['a']).rec('a', Kind.data, 3000);
    assert.equal(more.header.seq, 5);
    j2.append([more]);
    await j2.close();
    const j3 = await open(dir);
    assertSame(collect(j3), [...recs.slice(0, 4), more]);
    await j3.close();
  });

  test('recovery: segments released under the state file are deleted at open; a gap after it is refused', async () => {
    const dir = newDir();
    const j = await open(dir);
    const m = new Maker();
    const recs = Array.from({ length: 12 }, () => m.rec('a', Kind.data, 3000));
    j.append(recs);
    await j.close();
    assert.equal(segFiles(dir).length, 3);
    // As if the process died after persisting a release of seq 5 but before deleting segment 1.
    const state = { version: 1, ordinalMax: 5, writeTimeUsMax: 0, groups: { a: { releasedSeq: 5 } } };
    fs.writeFileSync(join(dir, 'state.json'), JSON.stringify(state));
    const j2 = await open(dir);
    assert.equal(segFiles(dir).length, 2, 'segment 1 (seqs 1..5) deleted');
    assertSame(collect(j2), recs.slice(5));
    assert.equal(j2.lastSeq('a'), 12);
    await j2.close();
    // A state file that says less was released than the deleted segments held: a gap.
    fs.writeFileSync(
      join(dir, 'state.json'),
      JSON.stringify({ ...state, groups: { a: { releasedSeq: 3 } } }),
    );
    await assert.rejects(() => open(dir), /RC_ERR_JOURNAL_CORRUPT.*seq 6 where 4 was expected/);
  });

  test('recovery refuses a seq gap and an invalid state file', async () => {
    const dir = newDir();
    fs.mkdirSync(dir);
    const m = new Maker();
    const r1 = m.rec('a', Kind.data, 10);
    m.rec('a', Kind.data, 10);
    const r3 = m.rec('a', Kind.data, 10);
    const bytes = [r1, r3].flatMap((r) => [encodeHeader(r.header, r.payload), r.payload!]);
    fs.writeFileSync(join(dir, 'seg-0000000000000001.log'), Buffer.concat(bytes));
    await assert.rejects(() => open(dir), /RC_ERR_JOURNAL_CORRUPT.*seq 3 where 2 was expected/);

    const dir2 = newDir();
    const j = await open(dir2);
    j.append([new Maker().rec('a', Kind.data, 10)]);
    await j.close();
    for (const bad of [
      '{',
      '[]',
      '{"version":1}',
      '{"version":1,"ordinalMax":-1,"writeTimeUsMax":0,"groups":{}}',
    ]) {
      fs.writeFileSync(join(dir2, 'state.json'), bad);
      await assert.rejects(() => open(dir2), /RC_ERR_JOURNAL_CORRUPT.*state\.json/);
    }
  });
});

/** Whether `fd` was opened with O_DIRECT (its flags in /proc/self/fdinfo). */
function isDirectFd(fd: number): boolean {
  const m = /^flags:\s+([0-7]+)$/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  assert.ok(m, `no flags for fd ${fd}`);
  return (parseInt(m[1]!, 8) & fs.constants.O_DIRECT) !== 0;
}

interface SeenWrite {
  readonly file: string;
  readonly position: number;
  readonly length: number;
}

/**
 * Real writes, each noted with its file as direct or buffered. `fault`, when given, is asked first
 * about every direct write (nth from 0) and may do it itself (returning the bytes written) or throw.
 */
function watchedIo(
  fault?: (
    fd: number,
    bufs: readonly NodeJS.ArrayBufferView[],
    pos: number,
    nth: number,
  ) => number | undefined,
) {
  const seen = { direct: [] as SeenWrite[], buffered: [] as SeenWrite[], endMarks: [] as SeenWrite[] };
  const io: JournalIo = {
    writevSync: (fd, bufs, pos) => {
      let length = 0;
      for (const b of bufs) length += b.byteLength;
      const w = { file: fs.readlinkSync(`/proc/self/fd/${fd}`).replace(/^.*\//, ''), position: pos, length };
      if (!isDirectFd(fd)) {
        // A segment's end mark, written when the journal moves on from it, is noted apart.
        const first = bufs[0] as Buffer;
        const endMark =
          bufs.length === 1 && length === SEGMENT_END_BYTES && first.readUInt32LE(0) === 0x454a4352;
        (endMark ? seen.endMarks : seen.buffered).push(w);
        return fs.writevSync(fd, bufs, pos);
      }
      seen.direct.push(w);
      return fault?.(fd, bufs, pos, seen.direct.length - 1) ?? fs.writevSync(fd, bufs, pos);
    },
    fdatasync: (fd) => new Promise((resolve, reject) => fs.fdatasync(fd, (e) => (e ? reject(e) : resolve()))),
  };
  return { io, seen };
}

/** A watchedIo fault: direct write number `n` throws an error with `code`. */
function throwOn(n: number, code: string) {
  return (_fd: number, _bufs: readonly NodeJS.ArrayBufferView[], _pos: number, nth: number): undefined => {
    if (nth === n) throw Object.assign(new Error(`injected ${code}`), { code });
    return undefined;
  };
}

/** Records equal one by one (headers deep-equal, payloads byte-equal): cheap for large payloads. */
function assertSameRecords(actual: Rec[], expected: Rec[]): void {
  assert.equal(actual.length, expected.length, 'record count');
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i]!;
    const e = expected[i]!;
    assert.deepEqual(a.header, e.header, `record ${i}: header`);
    const ap = a.payload ?? Buffer.alloc(0);
    const ep = e.payload ?? Buffer.alloc(0);
    if (!ap.equals(ep)) {
      let at = 0;
      while (at < ep.length && ap[at] === ep[at]) at++;
      assert.fail(`record ${i} (seq ${e.header.seq}, ${ep.length} bytes): payload differs from byte ${at}`);
    }
  }
}

/** `j` holds `expected`, and so does the journal opened again after `j` closes. */
async function sameAfterReopen(
  j: Journal,
  dir: string,
  opts: Partial<JournalOptions>,
  expected: Rec[],
): Promise<void> {
  await j.whenWritten();
  assertSameRecords(collect(j), expected);
  await j.close();
  const again = await open(dir, opts);
  assertSameRecords(collect(again), expected);
  await again.close();
}

describe('journal: large runs with O_DIRECT', () => {
  const MiB = 1024 * 1024;
  const SEG1 = 'seg-0000000000000001.log';
  /** The largest payload a segment of `bytes` holds. */
  const payloadMax = (bytes: number): number => bytes - RECORD_HEADER_AND_NAMES_BYTES_MAX - SEGMENT_END_BYTES;
  const DIRECT = {
    segmentBytes: MiB,
    bytesMax: 64 * MiB,
    limits: { recordPayloadBytesMax: payloadMax(MiB) },
  };
  const EVERY_RUN = { ...DIRECT, limits: { ...DIRECT.limits, directRunBytesMin: 1 } };
  /** Segments of 4 MiB: runs of 64 KiB or more go direct, smaller ones buffered. */
  const MIXED = {
    ...DIRECT,
    segmentBytes: 4 * MiB,
    limits: { recordPayloadBytesMax: payloadMax(4 * MiB), directRunBytesMin: 64 * 1024 },
  };
  /** Record sizes that cross blocks, pieces and segments at odd places. */
  const sizesFrom = (seed: number, n: number, max: number): number[] => {
    const out: number[] = [];
    let x = seed;
    for (let i = 0; i < n; i++) {
      x = (x * 1103515245 + 12345) % 2147483648;
      out.push(1 + (x % max));
    }
    return out;
  };
  /**
   * The first segment is the spare prepared at open (zero-filled through the page cache), so it
   * is written buffered: one record fills it, leaving less room than any further record needs.
   */
  const fillPrepared = (j: Journal, m: Maker, segmentBytes: number): Rec => {
    const probe = m.rec('a', Kind.data, 1);
    const r = m.rec(
      'a',
      Kind.data,
      segmentBytes - 2 * recordBytesOf(probe.header, 0) - 50 - SEGMENT_END_BYTES,
    );
    j.append([probe, r]);
    return probe;
  };
  /** fillPrepared, then one record of group a per size, each its own batch; every record. */
  const fillThenAppend = (j: Journal, m: Maker, segmentBytes: number, sizes: readonly number[]): Rec[] => {
    const all = [fillPrepared(j, m, segmentBytes)];
    all.push(...collect(j).slice(1));
    for (const n of sizes) {
      const r = m.rec('a', Kind.data, n);
      j.append([r]);
      all.push(r);
    }
    return all;
  };
  const outsidePrepared = (ws: readonly SeenWrite[]): number => ws.filter((w) => w.file !== SEG1).length;

  test('large runs in new segments go direct and aligned, the prepared one buffered; records read back, reopen, go on', async () => {
    const dir = newDir();
    const { io, seen } = watchedIo();
    const j = await open(dir, { ...EVERY_RUN, io });
    const m = new Maker();
    const all: Rec[] = [];
    const sizes = sizesFrom(7, 60, 200_000);
    for (let i = 0; i < sizes.length;) {
      const batch: Rec[] = [];
      for (let k = 0; k < 1 + (i % 4) && i < sizes.length; k++, i++) {
        batch.push(m.rec(i % 3 === 0 ? 'b' : 'a', i % 7 === 0 ? Kind.marker : Kind.data, sizes[i]!));
      }
      j.append(batch);
      all.push(...batch);
    }
    await j.whenWritten();
    assert.ok(seen.buffered.length > 0 && seen.direct.length >= 10, `${seen.direct.length} direct writes`);
    assert.ok(seen.endMarks.length >= 2, `${seen.endMarks.length} segments ended with a mark`);
    for (const w of seen.buffered) assert.equal(w.file, SEG1, `buffered write to ${w.file}`);
    for (const w of seen.direct) {
      assert.notEqual(w.file, SEG1, 'the prepared segment is written buffered');
      assert.equal(w.position % 4096, 0, `direct write at ${w.position}`);
      assert.equal(w.length % 4096, 0, `direct write of ${w.length} bytes`);
    }
    assertSameRecords(collect(j), all);
    await j.close();

    // After a restart the active segment is written buffered again (its pages may be cached).
    const j2 = await open(dir, EVERY_RUN);
    assertSameRecords(collect(j2), all);
    const m2 = new Maker(j2, ['a', 'b']);
    for (const n of [3, 70_000, 5000, 900_000, 800_000]) {
      const r = m2.rec('a', Kind.data, n);
      j2.append([r]);
      all.push(r);
    }
    await j2.close();
    const j3 = await open(dir, EVERY_RUN);
    assertSameRecords(collect(j3), all);
    await j3.close();
  });

  test('small runs stay buffered and large ones go direct, interleaved in one new segment', async () => {
    const dir = newDir();
    const { io, seen } = watchedIo();
    const opts = MIXED;
    const j = await open(dir, { ...opts, io });
    const m = new Maker();
    const sizes = Array.from({ length: 24 }, (_, i) => (i % 2 === 0 ? 500 + i : 100_000 + i));
    const all = fillThenAppend(j, m, opts.segmentBytes, sizes);
    await j.whenWritten();
    assert.equal(seen.direct.length, 12, 'one direct write per large record');
    const large = all.slice(2).filter((r) => r.header.length >= 100_000);
    const directBytes = large.reduce((n, r) => n + recordBytesOf(r.header, r.header.length), 0);
    assert.equal(j.directBytesWritten, directBytes, 'directBytesWritten counts the large records');
    assert.equal(outsidePrepared(seen.buffered), 12, 'one buffered write per small record');
    await sameAfterReopen(j, dir, opts, all);
  });

  test('segments written direct are recycled buffered; no stale record of a previous life loads', async () => {
    const dir = newDir();
    const { io, seen } = watchedIo();
    const opts = { ...EVERY_RUN, bytesMax: 8 * MiB };
    const j = await open(dir, { ...opts, io });
    const m = new Maker();
    let kept: Rec[] = [];
    let freeSeen = 0;
    for (let round = 0; round < 6; round++) {
      // Each round fills about three segments, then releases all but its last few records.
      const recs = sizesFrom(round + 1, 20, 180_000).map((n) => m.rec('a', Kind.data, n));
      for (const r of recs) j.append([r]);
      kept = kept.concat(recs);
      const upto = kept[kept.length - 4]!.header.seq;
      j.release('a', upto);
      kept = kept.filter((r) => r.header.seq > upto);
      await j.whenIdle();
      if (fs.readdirSync(dir).some((f) => f.startsWith('free-'))) freeSeen++;
    }
    // Six rounds append more than bytesMax: released segments were let go and their files reused.
    assert.ok(freeSeen >= 3, `released segments kept for reuse after ${freeSeen} of 6 rounds`);
    const directFiles = new Set(seen.direct.map((w) => w.file));
    const bufferedLater = seen.buffered.filter((w) => w.file !== SEG1 && !directFiles.has(w.file));
    assert.ok(directFiles.size >= 1, `${directFiles.size} segments written direct`);
    assert.ok(bufferedLater.length > 0, 'recycled segments were written buffered');
    await sameAfterReopen(j, dir, opts, kept);
  });

  test('an EIO in the second piece of a direct run fails the journal; what it left is a prefix of the appends', async () => {
    const dir = newDir();
    const { io, seen } = watchedIo(throwOn(2, 'EIO'));
    const logs: string[] = [];
    const opts = {
      segmentBytes: 32 * MiB,
      bytesMax: 128 * MiB,
      limits: { recordPayloadBytesMax: payloadMax(32 * MiB) },
    };
    const j = await open(dir, { ...opts, io, log: (level, msg) => logs.push(`${level} ${msg}`) });
    const m = new Maker();
    const all = fillThenAppend(j, m, opts.segmentBytes, [3 * MiB]); // direct write 0, in segment 2
    await j.whenWritten();
    // 3 x 3 MiB: more than the 8 MiB staging buffer, so two pieces (direct writes 1 and 2); then a
    // small record, queued behind them.
    const failed = [
      m.rec('a', Kind.data, 3 * MiB),
      m.rec('a', Kind.data, 3 * MiB),
      m.rec('a', Kind.data, 3 * MiB),
    ];
    j.append(failed);
    const queued = m.rec('a', Kind.data, 100);
    j.append([queued]);
    const sync = j.sync();
    await assert.rejects(j.whenWritten()!, isCode('RC_ERR_JOURNAL_IO'));
    await assert.rejects(sync, isCode('RC_ERR_JOURNAL_IO'));
    assert.equal(seen.direct.length, 3, 'the piece after the failed one was not written');
    assert.equal(outsidePrepared(seen.buffered), 0, 'nor the record queued behind it');
    assert.ok(logs.some((l) => l.startsWith('error') && l.includes('the journal is failed')));
    assert.throws(() => j.append([m.rec('a', Kind.data, 10)]), isCode('RC_ERR_JOURNAL_IO'));
    assert.deepEqual(
      j.readRetained('a', all[all.length - 1]!.header.seq, 64 * MiB).map((r) => r.header.seq),
      [all[all.length - 1]!.header.seq],
      'records not written are not read',
    );
    await j.close();
    // The first piece reached the file: its whole records are recovered, nothing after them.
    const again = await open(dir, opts);
    const got = collect(again);
    const kept = got.length - all.length;
    assert.ok(kept >= 0 && kept < failed.length, `${kept} records of the failed run recovered`);
    assertSameRecords(got, all.concat(failed.slice(0, kept)));
    await again.close();
  });

  test('near a full disk large runs are written synchronously and buffered; the journal says so once', async () => {
    const dir = newDir();
    const { io: watched, seen } = watchedIo();
    let free: number | Error = 2 ** 40;
    const io: JournalIo = {
      ...watched,
      freeBytes: () => {
        if (free instanceof Error) throw free;
        return free;
      },
    };
    const warnings: string[] = [];
    const log: LogFn = (level, msg) => {
      if (level === 'warn') warnings.push(msg);
    };
    const opts = MIXED;
    const j = await open(dir, { ...opts, io, log });
    const m = new Maker();
    const all = fillThenAppend(j, m, opts.segmentBytes, [100_000]);
    await j.whenWritten();
    assert.equal(seen.direct.length, 1, 'with room: direct');
    const room = (n: number): number => n + DIRECT_ROOM_MARGIN_BYTES;
    const large = (): void => {
      const r = m.rec('a', Kind.data, 100_000);
      j.append([r]);
      all.push(r);
    };
    free = room(100_000) - 1;
    large();
    free = room(0); // still less than the run and the margin
    large();
    free = new Error('statfs failed');
    large();
    // Each was written before append returned: nothing left for the thread pool.
    assert.equal(seen.direct.length, 1, 'no direct write without room');
    assert.equal(outsidePrepared(seen.buffered), 3, 'written buffered');
    assert.deepEqual(warnings, ['journal: the file system is nearly full; large appends stay synchronous']);
    free = 2 ** 40;
    large();
    await j.whenWritten();
    assert.equal(seen.direct.length, 2, 'room again: direct');
    await sameAfterReopen(j, dir, opts, all);
  });

  test('batches appended while a direct write runs wait for it: the files hold a prefix of the appends', async () => {
    const dir = newDir();
    let open1: () => void = () => {};
    const gate = new Promise<void>((r) => (open1 = r));
    const seen: number[] = [];
    let fdatasyncs = 0;
    const io: JournalIo = {
      writevSync: (fd, bufs, pos) => fs.writevSync(fd, bufs, pos),
      fdatasync: (fd) => {
        fdatasyncs++;
        return new Promise((resolve, reject) => fs.fdatasync(fd, (e) => (e ? reject(e) : resolve())));
      },
      write: async (fd, buf, pos) => {
        seen.push(pos);
        await gate;
        return fs.writeSync(fd, buf, 0, buf.length, pos);
      },
    };
    const opts = MIXED;
    const j = await open(dir, { ...opts, io });
    const m = new Maker();
    const before = [fillPrepared(j, m, opts.segmentBytes)];
    before.push(...collect(j).slice(1));
    // Into the second segment: a small record (buffered, written at once), a large one (direct,
    // held at the gate), then a small one and a marker of another group (queued behind it).
    const small = m.rec('a', Kind.data, 10);
    j.append([small]);
    const large = m.rec('a', Kind.data, 300_000);
    j.append([large]);
    const behind = [m.rec('a', Kind.data, 20), m.rec('b', Kind.marker, 0)];
    j.append(behind);
    await new Promise((r) => setImmediate(r));
    assert.equal(seen.length, 1, 'the direct write started');
    let synced = false;
    const syncsBefore = fdatasyncs;
    const sync = j.sync().then(() => (synced = true));
    const written = j.whenWritten()!;
    assert.ok(written !== undefined, 'not written yet');
    // What a kill -9 would leave now: the segment files as they are.
    const crashDir = newDir();
    fs.mkdirSync(crashDir, { recursive: true });
    for (const f of fs.readdirSync(dir)) fs.copyFileSync(join(dir, f), join(crashDir, f));
    assert.deepEqual(
      j.readRetained('a', small.header.seq, 64 * MiB).map((r) => r.header.seq),
      [small.header.seq],
      'readRetained stops before the records being written',
    );
    assert.deepEqual(j.readRetained('b', behind[1]!.header.seq, 64 * MiB), []);
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
    assert.equal(synced, false, 'a sync waits for the writes of the batches before it');
    assert.equal(fdatasyncs, syncsBefore, 'no fdatasync before the bytes are written');
    open1();
    await written;
    await sync;
    assert.equal(j.whenWritten(), undefined);
    assertSameRecords(collect(j), [...before, small, large, ...behind]);
    await j.close();
    const crashed = await open(crashDir, opts);
    assertSameRecords(collect(crashed), [...before, small]);
    await crashed.close();
    const reopened = await open(dir, opts);
    assertSameRecords(collect(reopened), [...before, small, large, ...behind]);
    await reopened.close();
  });

  test('released segments are let go while a batch is written, except those it may still write to', async () => {
    const dir = newDir();
    let hold = false;
    let release: () => void = () => {};
    const gate = new Promise<void>((r) => (release = r));
    const io: JournalIo = {
      writevSync: (fd, bufs, pos) => fs.writevSync(fd, bufs, pos),
      fdatasync: (fd) =>
        new Promise((resolve, reject) => fs.fdatasync(fd, (e) => (e ? reject(e) : resolve()))),
      write: async (fd, buf, pos) => {
        if (hold) await gate;
        return fs.writeSync(fd, buf, 0, buf.length, pos);
      },
    };
    const opts = {
      ...MIXED,
      segmentBytes: MiB,
      limits: { ...MIXED.limits, recordPayloadBytesMax: payloadMax(MiB) },
    };
    const j = await open(dir, { ...opts, io });
    const m = new Maker();
    fillPrepared(j, m, opts.segmentBytes);
    // Segments 2 and 3: two records of 400 KB each, written direct at once.
    for (let i = 0; i < 4; i++) j.append([m.rec('a', Kind.data, 400_000)]);
    await j.whenWritten();
    const live = () => segFiles(dir).map((f) => Number(f.slice(4, 20)));
    assert.deepEqual(live(), [1, 2, 3]);
    // Held: a record into segment 4 (placed while 3 was active), then one into segment 5.
    hold = true;
    const held = m.rec('a', Kind.data, 400_000);
    j.append([held]);
    const next = m.rec('a', Kind.data, 700_000);
    j.append([next]);
    assert.deepEqual(live(), [1, 2, 3, 4, 5]);
    // Everything but the last record released: 1 and 2 go; 3 and 4 are kept while the held
    // batch, placed with 3 active, may still write to them.
    j.release('a', held.header.seq);
    await j.whenIdle();
    assert.deepEqual(live(), [3, 4, 5]);
    release();
    await j.whenWritten();
    await j.whenIdle();
    assert.deepEqual(live(), [5]);
    assertSameRecords(collect(j), [next]);
    await j.close();
  });

  test('a direct write refused as misaligned (EINVAL) is finished buffered, and direct I/O is given up', async () => {
    const dir = newDir();
    const { io, seen } = watchedIo(throwOn(0, 'EINVAL'));
    const j = await open(dir, { ...EVERY_RUN, io });
    const m = new Maker();
    const all = fillThenAppend(j, m, EVERY_RUN.segmentBytes, [100_000, 90_000, 7]);
    await j.whenWritten();
    assert.equal(seen.direct.length, 1, 'no direct write after the refusal');
    assert.equal(outsidePrepared(seen.buffered), 3, 'the refused write and the next two, buffered');
    await sameAfterReopen(j, dir, EVERY_RUN, all);
  });

  test('a refusal (EINVAL) in the first piece of a run larger than the staging buffer: the rest of the run goes buffered', async () => {
    const dir = newDir();
    const { io, seen } = watchedIo(throwOn(0, 'EINVAL'));
    const logs: string[] = [];
    const opts = {
      segmentBytes: 32 * MiB,
      bytesMax: 128 * MiB,
      limits: { recordPayloadBytesMax: payloadMax(32 * MiB), directRunBytesMin: 1 },
    };
    const j = await open(dir, { ...opts, io, log: (level, msg) => logs.push(`${level} ${msg}`) });
    const m = new Maker();
    // Fill the prepared first segment, so that the large record goes to a new sparse one.
    const all = [m.rec('a', Kind.data, 32 * MiB - 40_000)];
    j.append(all);
    const large = m.rec('a', Kind.data, 2 * DIRECT_STAGING_BYTES + 12_345);
    j.append([large]);
    all.push(large);
    await j.whenWritten();
    assert.equal(seen.direct.length, 1, 'no direct write after the refusal');
    assert.equal(
      outsidePrepared(seen.buffered),
      2,
      'the refused piece, then the rest of the run in one write',
    );
    assert.equal(logs.filter((l) => l.includes('a direct write was refused')).length, 1, 'logged once');
    await sameAfterReopen(j, dir, opts, all);
  });

  test('a short direct write that ends off alignment is finished buffered', async () => {
    const dir = newDir();
    const { io, seen } = watchedIo((fd, bufs, pos, nth) => {
      if (nth !== 1) return undefined;
      // The kernel took 5000 bytes: write them through a buffered fd of the same file.
      const plain = fs.openSync(`/proc/self/fd/${fd}`, 'r+');
      try {
        return fs.writeSync(plain, bufs[0] as Buffer, 0, 5000, pos);
      } finally {
        fs.closeSync(plain);
      }
    });
    const j = await open(dir, { ...EVERY_RUN, io });
    const m = new Maker();
    const all = fillThenAppend(j, m, EVERY_RUN.segmentBytes, [70_000, 150_000, 60_000]);
    await j.whenWritten();
    assert.equal(seen.direct.length, 3, 'direct I/O goes on after a short write');
    assert.equal(outsidePrepared(seen.buffered), 1, 'the rest of the short write went buffered');
    await sameAfterReopen(j, dir, EVERY_RUN, all);
  });
});

describe('journal: the durable point and segment end marks (power loss)', () => {
  /** Another boot id than the one the journal was written in: the machine restarted since. */
  const AFTER_A_RESTART = '00000000-0000-4000-8000-000000000001';

  /** Appends `recs`, syncing after the first `synced` of them; returns durable.pos as that sync left it. */
  async function writeWithDurablePoint(dir: string, recs: Rec[], synced: number): Promise<Buffer> {
    const j = await open(dir);
    j.append(recs.slice(0, synced));
    await j.sync();
    const point = fs.readFileSync(join(dir, DURABLE_POINT_FILE_NAME));
    for (const r of recs.slice(synced)) j.append([r]);
    await j.close();
    return point;
  }

  /** Where each record landed: [segment file, offset], in append order. */
  function places(dir: string): [string, number][] {
    const out: [string, number][] = [];
    for (const f of segFiles(dir)) {
      const buf = fs.readFileSync(join(dir, f));
      for (let off = 0; ;) {
        const r = decodeRecord(buf, off);
        if (!r.ok) break;
        out.push([f, off]);
        off += r.bytes;
      }
    }
    return out;
  }

  function damage(dir: string, [file, offset]: [string, number], fill?: number): void {
    const buf = fs.readFileSync(join(dir, file));
    if (fill === undefined) buf[offset + 100]! ^= 0x04;
    else buf.fill(fill, offset, offset + 512);
    fs.writeFileSync(join(dir, file), buf);
  }

  test('a hole past the durable point is dropped with the valid records after it (logged); one below it is refused', async () => {
    const m = new Maker();
    const recs = Array.from({ length: 8 }, (_, i) => m.rec(i % 2 ? 'a' : 'b', Kind.data, 1000));
    const dir = newDir();
    const point = await writeWithDurablePoint(dir, recs, 4);
    const at = places(dir);
    // The power loss: the durable point of the last completed sync, and a sector of record 6 lost.
    fs.writeFileSync(join(dir, DURABLE_POINT_FILE_NAME), point);
    damage(dir, at[5]!, 0);
    // Without a restart of the machine no power loss can have made it: refused, nothing cut.
    const intact = sizes(dir);
    await assert.rejects(
      () => open(dir),
      (e: unknown) => isCode('RC_ERR_JOURNAL_CORRUPT')(e) && /has not restarted/.test(String(e)),
    );
    assert.deepEqual(sizes(dir), intact);
    const logs: { msg: string; fields: object }[] = [];
    const j = await open(dir, {
      bootId: AFTER_A_RESTART,
      log: (_l, msg, fields) => logs.push({ msg, fields: fields ?? {} }),
    });
    assertSame(collect(j), recs.slice(0, 5));
    const hole = logs.find((l) => l.msg.includes('hole past the durable point'));
    assert.ok(
      hole && 'nextValidRecord' in hole.fields,
      'the dropped hole is logged with the next valid record',
    );
    await j.close();

    // Damage below the durable point (a synced record) is corruption: refused, nothing cut.
    const dir2 = newDir();
    await writeWithDurablePoint(dir2, recs, 4);
    damage(dir2, places(dir2)[2]!);
    const before = sizes(dir2);
    await assert.rejects(
      () => open(dir2),
      (e: unknown) =>
        isCode('RC_ERR_JOURNAL_CORRUPT')(e) && /below the journal's durable point/.test(String(e)),
    );
    assert.deepEqual(sizes(dir2), before, 'nothing truncated');
    // So is the last synced record, even with nothing after it.
    const dir3 = newDir();
    await writeWithDurablePoint(dir3, recs.slice(0, 4), 4);
    damage(dir3, places(dir3)[3]!);
    await assert.rejects(() => open(dir3), isCode('RC_ERR_JOURNAL_CORRUPT'));
  });

  test('a segment the journal moved on from ends in an end mark; without it past the durable point, later segments are dropped', async () => {
    const m = new Maker();
    const recs = Array.from({ length: 14 }, () => m.rec('a', Kind.data, 3000));
    const dir = newDir();
    const point = await writeWithDurablePoint(dir, recs, 3);
    const files = segFiles(dir);
    assert.ok(files.length >= 3, `${files.length} segments`);
    const at = places(dir);
    const inSecond = at.filter(([f]) => f === files[1]).length;
    const firstCount = at.filter(([f]) => f === files[0]).length;
    // The end mark of the second segment sits right after its last record.
    const [, lastOff] = at[firstCount + inSecond - 1]!;
    const end = lastOff + recordBytesOf(recs[0]!.header, 3000);
    const second = fs.readFileSync(join(dir, files[1]!));
    assert.ok(isSegmentEnd(second, end, Number(files[1]!.slice(4, 20))), 'end mark after the last record');
    assert.ok(!isSegmentEnd(second, end, 99), 'the mark names its segment');
    // A power loss took the page holding the mark (and the last record's tail): a zero tail.
    fs.writeFileSync(join(dir, DURABLE_POINT_FILE_NAME), point);
    second.fill(0, end - 100);
    fs.writeFileSync(join(dir, files[1]!), second);
    const j = await open(dir, { bootId: AFTER_A_RESTART });
    assertSame(collect(j), recs.slice(0, firstCount + inSecond - 1));
    assert.deepEqual(segFiles(dir), files.slice(0, 2), 'the segments after the hole are gone');
    await j.close();
  });

  test('a journal from before the durable point keeps the old rule and gets one; an unreadable one is logged, one that cannot be read refused', async () => {
    const m = new Maker();
    const recs = Array.from({ length: 6 }, () => m.rec('a', Kind.data, 500));
    const dir = newDir();
    await writeWithDurablePoint(dir, recs, 6);
    fs.rmSync(join(dir, DURABLE_POINT_FILE_NAME));
    const good = new Map(segFiles(dir).map((f) => [f, fs.readFileSync(join(dir, f))]));
    // The old rule: a bad record that a valid one follows is refused.
    damage(dir, places(dir)[1]!);
    await assert.rejects(
      () => open(dir),
      (e: unknown) => isCode('RC_ERR_JOURNAL_CORRUPT')(e) && /a valid record follows/.test(String(e)),
    );
    assert.ok(!fs.existsSync(join(dir, DURABLE_POINT_FILE_NAME)), 'a refused journal gets no durable point');
    for (const [f, c] of good) fs.writeFileSync(join(dir, f), c);
    const j = await open(dir);
    assertSame(collect(j), recs);
    await j.close();
    const read = readDurablePointSync(dir);
    assert.equal(read.state, 'ok');

    // Both slots unreadable: logged, the old rule for this open, and a new file.
    fs.writeFileSync(join(dir, DURABLE_POINT_FILE_NAME), Buffer.alloc(8192, 0x5a));
    const logs: string[] = [];
    const j2 = await open(dir, { log: (level, msg) => logs.push(`${level} ${msg}`) });
    assertSame(collect(j2), recs);
    assert.ok(logs.some((l) => l.startsWith('warn') && l.includes('durable point file is unreadable')));
    await j2.close();
    assert.equal(readDurablePointSync(dir).state, 'ok');

    // A durable point that is not a file (a directory, by hand): refused, naming it; nothing changes.
    const file = join(dir, DURABLE_POINT_FILE_NAME);
    fs.rmSync(file);
    fs.mkdirSync(file);
    const before = new Map(segFiles(dir).map((f) => [f, fs.readFileSync(join(dir, f))]));
    await assert.rejects(
      () => open(dir),
      (e: unknown) => isCode('RC_ERR_JOURNAL_IO')(e) && String(e).includes(file),
    );
    assert.deepEqual(new Map(segFiles(dir).map((f) => [f, fs.readFileSync(join(dir, f))])), before);
    assert.ok(fs.statSync(file).isDirectory());
  });

  test('the end mark written when a batch moves on goes to disk with the next sync, with the new segment', async () => {
    const synced: string[][] = [];
    let round: string[] = [];
    const io: JournalIo = {
      writevSync: (fd, bufs, pos) => fs.writevSync(fd, bufs, pos),
      fdatasync: (fd) => {
        round.push(fs.readlinkSync(`/proc/self/fd/${fd}`).replace(/^.*\//, ''));
        return new Promise((resolve, reject) => fs.fdatasync(fd, (e) => (e ? reject(e) : resolve())));
      },
    };
    const dir = newDir();
    const j = await open(dir, { io });
    const m = new Maker();
    const sync = async (): Promise<void> => {
      round = [];
      await j.sync();
      synced.push(round.sort());
    };
    j.append([m.rec('a', Kind.data, 4096), m.rec('a', Kind.data, 4096), m.rec('a', Kind.data, 4096)]);
    await sync();
    const [first] = segFiles(dir);
    // This batch does not fit in the first segment: all of it goes to a new one, and the first
    // segment gets only its end mark.
    j.append([m.rec('a', Kind.data, 4096), m.rec('a', Kind.data, 4096)]);
    const files = segFiles(dir);
    assert.equal(files.length, 2);
    await sync();
    assert.deepEqual(synced, [[first], files], 'the second sync covers the end mark in the first segment');
    await j.close();
  });

  test('the durable point moves with each sync, in alternate slots: a torn write of one leaves the other', async () => {
    const dir = newDir();
    const j = await open(dir);
    const m = new Maker();
    const points: { segNo: number; offset: number; counter: number }[] = [];
    for (let i = 0; i < 3; i++) {
      j.append([m.rec('a', Kind.data, 2000)]);
      await j.sync();
      const r = readDurablePointSync(dir);
      assert.ok(r.state === 'ok');
      points.push({ ...r.point, counter: r.counter });
    }
    await j.close();
    for (let i = 1; i < points.length; i++) {
      assert.equal(points[i]!.counter, points[i - 1]!.counter + 1);
      assert.ok(points[i]!.offset > points[i - 1]!.offset, 'the point moves on');
    }
    // Tear the slot of the last write: the point of the write before it is read.
    const file = join(dir, DURABLE_POINT_FILE_NAME);
    const buf = fs.readFileSync(file);
    const lastSlot = (points[2]!.counter % 2) * 4096;
    buf[lastSlot + 30]! ^= 0xff;
    fs.writeFileSync(file, buf);
    const r = readDurablePointSync(dir);
    assert.ok(r.state === 'ok');
    assert.deepEqual({ ...r.point, counter: r.counter }, points[1]);
  });
});

describe('journal: a segment file lost behind its back', () => {
  /** Whether the state file and durable point on disk ask for a segment that is not there. */
  function requiredMissing(dir: string): string | null {
    const p = readDurablePointSync(dir);
    try {
      checkSegmentsPresent(
        dir,
        listSegments(dir),
        readStateSync(dir).segments,
        p.state === 'ok' ? p.point.segNo : 0,
      );
      return null;
    } catch (e) {
      return String(e);
    }
  }

  /** Per segment file, the groups of its records. */
  function groupsBySegment(dir: string): Map<string, Set<string>> {
    const out = new Map<string, Set<string>>();
    for (const f of segFiles(dir)) {
      const buf = fs.readFileSync(join(dir, f));
      const groups = new Set<string>();
      for (let off = 0; ;) {
        const r = decodeRecord(buf, off);
        if (!r.ok) break;
        groups.add(r.header.group);
        off += r.bytes;
      }
      out.set(f, groups);
    }
    return out;
  }

  /** Every file of `dir`, with its bytes: what a refused open must leave as it was. */
  function snapshot(dir: string): Map<string, Buffer> {
    return new Map(fs.readdirSync(dir).map((f) => [f, fs.readFileSync(join(dir, f))]));
  }

  async function refusedNaming(dir: string, file: string): Promise<void> {
    const before = snapshot(dir);
    await assert.rejects(
      () => open(dir),
      (e: unknown) =>
        e instanceof RemcopyError &&
        e.code === 'RC_ERR_JOURNAL_CORRUPT' &&
        e.message.includes(`${file} is missing`),
    );
    assert.deepEqual(snapshot(dir), before, 'a refused open changes no file');
  }

  test("refused at open: the segment holding a group's only records, the durable point's own, with and without a state file", async () => {
    const dir = newDir();
    const j = await open(dir);
    const m = new Maker();
    const recs = [
      ...Array.from({ length: 8 }, () => m.rec('a', Kind.data, 3000)),
      ...Array.from({ length: 12 }, () => m.rec('b', Kind.data, 3000)),
      ...Array.from({ length: 8 }, () => m.rec('a', Kind.data, 3000)),
    ];
    for (const r of recs) j.append([r]);
    await j.sync();
    // A crash image (no state file yet: nothing was ever deleted, so every segment up to the
    // durable point must be there).
    const crashDir = newDir();
    fs.mkdirSync(crashDir);
    for (const f of fs.readdirSync(dir)) fs.copyFileSync(join(dir, f), join(crashDir, f));
    assert.ok(!fs.existsSync(join(crashDir, 'state.json')));
    await j.close();
    const onlyB = [...groupsBySegment(dir)].find(([, g]) => g.size === 1 && g.has('b'))?.[0];
    assert.ok(onlyB !== undefined, 'a segment holds only b records');
    const last = segFiles(dir).at(-1)!;
    for (const [d, file] of [
      [dir, onlyB],
      [dir, last],
      [crashDir, onlyB],
      [crashDir, last],
    ] as const) {
      const saved = fs.readFileSync(join(d, file));
      fs.rmSync(join(d, file));
      await refusedNaming(d, file);
      // Put back, the journal opens with every record.
      fs.writeFileSync(join(d, file), saved);
      const again = await open(d);
      assertSame(collect(again), recs);
      await again.close();
    }
  });

  test('released segments go, but never one the state file on disk still asks for; reopen keeps the rest', async () => {
    const dir = newDir();
    const j = await open(dir);
    const m = new Maker(j, ['a', 'b', 'c']);
    let live: Rec[] = [];
    let seed = 7;
    const rand = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const check = async (what: string): Promise<void> => {
      await j.whenIdle();
      assert.equal(requiredMissing(dir), null, what);
      // Usage: every segment but the active one whole, the active one by its records.
      const u = j.usage();
      const whole = Math.max(0, u.segments - 1) * SMALL.segmentBytes;
      assert.ok(
        u.usedBytes >= whole && u.usedBytes <= whole + SMALL.segmentBytes,
        `${what}: usage ${u.usedBytes}`,
      );
    };
    for (let step = 0; step < 120; step++) {
      const group = ['a', 'b', 'c'][rand(3)]!;
      const op = rand(4);
      if (op < 2) {
        const recs = Array.from({ length: 1 + rand(4) }, () => m.rec(group, Kind.data, 1000 + rand(2000)));
        j.append(recs);
        live.push(...recs);
      } else if (op === 2 && j.lastSeq(group) > 0) {
        const upto = j.lastSeq(group) - rand(3);
        if (upto > 0) j.release(group, seq(upto));
        live = live.filter((r) => r.header.group !== group || r.header.seq > upto);
      } else await j.sync();
      await check(`step ${step}`);
    }
    assertSame(collect(j), live, 'records retained after the steps');
    // Everything released, then appends move on from the active segment without a release: the
    // state file lists that segment (it was active), so it must stay until a new file does not.
    for (const g of ['a', 'b', 'c']) if (j.lastSeq(g) > 0) j.release(g, seq(j.lastSeq(g)));
    await j.sync();
    await check('all released');
    const segsBefore = segFiles(dir).length;
    const more = Array.from({ length: 8 }, () => m.rec('a', Kind.data, 3000));
    for (const r of more) j.append([r]);
    await j.sync();
    await check('moved on from a released active segment');
    await j.sync();
    await check('after another round');
    assert.ok(segFiles(dir).length <= segsBefore + 2, `${segFiles(dir).length} segments: released ones go`);
    await j.close();
    assert.equal(requiredMissing(dir), null, 'after close');
    const j2 = await open(dir);
    assertSame(collect(j2), more);
    await j2.close();
  });

  test('a segment recovery dropped past the durable point is not asked for once the journal moves past its number', async () => {
    const dir = newDir();
    const j = await open(dir);
    const m = new Maker();
    const first = Array.from({ length: 8 }, () => m.rec('a', Kind.data, 3000));
    for (const r of first) j.append([r]);
    // A release: the state file written at close lists the active segment (it holds unreleased
    // records), so only the dropped segment makes the next open write a new one.
    j.release('a', seq(1));
    await j.close();
    assert.ok(JSON.parse(fs.readFileSync(join(dir, 'state.json'), 'utf8')).segments.live.length > 0);
    // A power loss left a segment after the last one that holds no record: recovery drops it.
    const nextNo = Number(segFiles(dir).at(-1)!.slice(4, 20)) + 1;
    const stray = `seg-${String(nextNo).padStart(16, '0')}.log`;
    fs.writeFileSync(join(dir, stray), Buffer.alloc(4096, 0xa5));
    const j2 = await open(dir, { bootId: '00000000-0000-4000-8000-000000000001' });
    assert.ok(!fs.existsSync(join(dir, stray)), 'dropped');
    const m2 = new Maker(j2, ['a']);
    const second = Array.from({ length: 12 }, () => m2.rec('a', Kind.data, 3000));
    for (const r of second) j2.append([r]);
    await j2.sync();
    assert.ok(Number(segFiles(dir).at(-1)!.slice(4, 20)) > nextNo, 'the durable point passed the number');
    assert.equal(requiredMissing(dir), null);
    await j2.close();
    const j3 = await open(dir);
    assertSame(collect(j3), [...first.slice(1), ...second]);
    await j3.close();
  });

  test('refused at open: the segment that was active and released when the state file was written, after appends into it', async () => {
    /** What a kill -9 now leaves, with `file` lost from it. */
    const crashImageWithout = (dir: string, file: string): string => {
      const crashDir = newDir();
      fs.mkdirSync(crashDir);
      for (const f of fs.readdirSync(dir)) if (f !== file) fs.copyFileSync(join(dir, f), join(crashDir, f));
      return crashDir;
    };
    // While open: everything released and the state file written (the first segment goes), then
    // a record appended into the segment that file saw active.
    const dir = newDir();
    const j = await open(dir);
    const m = new Maker();
    for (let i = 0; i < 6; i++) j.append([m.rec('a', Kind.data, 3000)]);
    j.release('a', seq(6));
    await j.whenIdle();
    assert.equal(segFiles(dir).length, 1);
    j.append([m.rec('a', Kind.data, 3000)]);
    await j.sync();
    await refusedNaming(crashImageWithout(dir, segFiles(dir)[0]!), segFiles(dir)[0]!);
    // After a clean close that released everything, a reopen and an append into the same segment.
    j.release('a', seq(7));
    await j.close();
    const j2 = await open(dir);
    const m2 = new Maker(j2, ['a']);
    j2.append([m2.rec('a', Kind.data, 3000)]);
    await j2.sync();
    await refusedNaming(crashImageWithout(dir, segFiles(dir)[0]!), segFiles(dir)[0]!);
    await j2.close();
  });
});
