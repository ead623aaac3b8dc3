/**
 * Journal recovery under damage (TESTING.md layer 2) proves, on a journal of ~30 records of varying
 * kinds and sizes across 3+ segments:
 * - every truncation point of the last segment (and a zero-filled tail at many points): the journal
 *   opens, the torn tail is cut at the last whole record, and retained() is exactly the prefix of
 *   whole records;
 * - a flipped bit at every byte of several records (a random bit each) and at random bytes
 *   anywhere: open refuses with RC_ERR_JOURNAL_CORRUPT when valid records follow the damaged one,
 *   and truncates when the damaged record is the last one;
 * - in no case does retained() return a record whose bytes differ from what was written.
 * Seeded: RC_FUZZ_SEED=<n> replays a run.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
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
import { Journal } from '../../src/storage/journal.js';
import { decodeRecord, encodeHeader } from '../../src/storage/record.js';
import { mulberry32 } from '../../src/testing/random.js';

const SEED = Number(process.env['RC_FUZZ_SEED'] ?? 20261122);
const LIMITS = { limits: { recordPayloadBytesMax: 4096 }, segmentBytes: 10 * 1024, bytesMax: 1024 * 1024 };
const RECORDS = 30;

const prng = mulberry32;
const rnd = prng(SEED);
const int = (n: number) => Math.floor(rnd() * n);

/** tmpfs when there is one: thousands of opens, each with an fsync of the truncated file. */
const base = fs.existsSync('/dev/shm') ? '/dev/shm' : tmpdir();
const root = fs.mkdtempSync(join(base, 'rc-journal-fuzz-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));

/** One written record and where it landed. */
interface Written {
  readonly bytes: Buffer; // the exact record bytes
  readonly file: string; // segment file name
  readonly offset: number;
}

let written: Written[] = [];
let files: Map<string, Buffer>; // the journal as written: file name -> content
let segNames: string[] = [];

function makeRecords(): { header: RecordHeader; payload?: Buffer }[] {
  const kinds: RecordKind[] = [Kind.data, Kind.data, Kind.zero, Kind.copy, Kind.marker];
  const seqs = new Map<string, number>();
  const out: { header: RecordHeader; payload?: Buffer }[] = [];
  for (let i = 1; i <= RECORDS; i++) {
    const kind = kinds[int(kinds.length)]!;
    const group = rnd() < 0.6 ? 'g-db' : 'g-log';
    const s = (seqs.get(group) ?? 0) + 1;
    seqs.set(group, s);
    const length = kind === Kind.marker ? 0 : int(4) === 0 ? int(64) : int(4096) + 1;
    const header: RecordHeader = {
      kind,
      group,
      seq: seq(s),
      writeTimeUs: timeUs(1_700_000_000_000_000 + i * 3),
      hostTimeUs: timeUs(i % 2 === 0 ? 1_700_000_000_000_000 + i : 0),
      nodeId: nodeIdFromNumber(0x1234abcd),
      ordinal: ordinal(i),
      epoch: 1,
      volume: kind === Kind.marker ? '' : group === 'g-db' ? 'db' : 'log',
      offset: byteOffset(int(1000) * 4096),
      length,
      markerNo: kind === Kind.marker ? s : 0,
    };
    const payload = kindCarriesData(kind) ? Buffer.from(Array.from({ length }, () => int(256))) : undefined;
    out.push(payload === undefined ? { header } : { header, payload });
  }
  return out;
}

before(async () => {
  const dir = join(root, 'template');
  const j = await Journal.open({ dir, ...LIMITS });
  const recs = makeRecords();
  // Several appends of several records: batches that span segments too.
  for (let i = 0; i < recs.length;) {
    const n = 1 + int(5);
    j.append(recs.slice(i, i + n));
    i += n;
  }
  await j.close();
  segNames = fs
    .readdirSync(dir)
    .filter((f) => f.startsWith('seg-'))
    .sort();
  // Segments are preallocated: keep each file's records, not its zero tail, so that truncation
  // points and flipped bits fall on record bytes (zero tails have a test of their own).
  files = new Map(segNames.map((f) => [f, recordsPart(fs.readFileSync(join(dir, f)))]));
  // Where each record landed: scan the files in order.
  written = [];
  let k = 0;
  for (const f of segNames) {
    const content = files.get(f)!;
    let off = 0;
    while (off < content.length) {
      const r = recs[k++]!;
      const bytes = Buffer.concat([encodeHeader(r.header, r.payload), r.payload ?? Buffer.alloc(0)]);
      assert.ok(content.subarray(off, off + bytes.length).equals(bytes), `record ${k} at ${f}:${off}`);
      written.push({ bytes, file: f, offset: off });
      off += bytes.length;
    }
  }
  assert.equal(written.length, RECORDS);
  assert.ok(segNames.length >= 3, `${segNames.length} segments`);
});

/** The prefix of a segment's content made of whole valid records. */
function recordsPart(content: Buffer): Buffer {
  let off = 0;
  for (;;) {
    const r = decodeRecord(content, off);
    if (!r.ok) return content.subarray(0, off);
    off += r.bytes;
  }
}

let trial = 0;
/** A fresh copy of the journal with `last` (if given) replacing the last segment's content. */
function copyJournal(mutate?: (name: string, content: Buffer) => Buffer): string {
  const dir = join(root, `t${trial++ % 4}`);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir);
  for (const [name, content] of files)
    fs.writeFileSync(join(dir, name), mutate ? mutate(name, content) : content);
  return dir;
}

/** Opens the journal; returns the retained records' bytes, or the refusal. */
async function openAndRead(dir: string): Promise<{ records: Buffer[] } | { refused: RemcopyError }> {
  let j: Journal;
  try {
    j = await Journal.open({ dir, ...LIMITS });
  } catch (e) {
    if (e instanceof RemcopyError) return { refused: e };
    throw e;
  }
  const records = [...j.retained()].map((r) => Buffer.concat([encodeHeader(r.header, r.payload), r.payload]));
  await j.close();
  return { records };
}

/** Every returned record is byte-identical to the written one at its position. */
function assertPrefix(records: Buffer[], count: number, what: string): void {
  assert.equal(records.length, count, `${what}: ${records.length} records retained, expected ${count}`);
  for (let i = 0; i < records.length; i++) {
    assert.ok(records[i]!.equals(written[i]!.bytes), `${what}: record ${i} differs from what was written`);
  }
}

describe(`journal recovery fuzz (RC_FUZZ_SEED=${SEED})`, () => {
  test('every truncation point of the last segment: opens, keeps exactly the whole records', async () => {
    const lastName = segNames[segNames.length - 1]!;
    const last = files.get(lastName)!;
    const before = written.filter((w) => w.file !== lastName).length;
    const ends = written.filter((w) => w.file === lastName).map((w) => w.offset + w.bytes.length);
    for (let cut = 0; cut <= last.length; cut++) {
      const dir = copyJournal((name, c) => (name === lastName ? c.subarray(0, cut) : c));
      const whole = ends.filter((e) => e <= cut);
      const r = await openAndRead(dir);
      assert.ok('records' in r, `cut ${cut}: refused: ${'refused' in r ? r.refused.message : ''}`);
      assertPrefix(r.records, before + whole.length, `cut ${cut}`);
      // The torn bytes are gone: after the last whole record the (re-preallocated) file is zeroes.
      const content = fs.readFileSync(join(dir, lastName));
      const end = whole.length > 0 ? whole[whole.length - 1]! : 0;
      assert.equal(recordsPart(content).length, end, `cut ${cut}: records end at a record end`);
      assert.ok(
        content.subarray(end).every((b) => b === 0),
        `cut ${cut}: torn bytes removed`,
      );
    }
  });

  test('a zero-filled tail (preallocated or sparse) is the end of data', async () => {
    const lastName = segNames[segNames.length - 1]!;
    const last = files.get(lastName)!;
    const before = written.filter((w) => w.file !== lastName).length;
    const ends = written.filter((w) => w.file === lastName).map((w) => w.offset + w.bytes.length);
    for (let cut = 0; cut <= last.length; cut += 1 + int(13)) {
      const dir = copyJournal((name, c) => {
        if (name !== lastName) return c;
        const z = Buffer.alloc(c.length + 4096);
        c.copy(z, 0, 0, cut);
        return z;
      });
      const r = await openAndRead(dir);
      assert.ok('records' in r, `zero tail at ${cut}: refused`);
      assertPrefix(r.records, before + ends.filter((e) => e <= cut).length, `zero tail at ${cut}`);
    }
  });

  test('truncating a segment that valid segments follow is refused (mid-record cut)', async () => {
    for (const name of segNames.slice(0, -1)) {
      const inside = written.filter((w) => w.file === name);
      for (const w of inside) {
        const cut = w.offset + 1 + int(w.bytes.length - 1);
        const r = await openAndRead(copyJournal((n, c) => (n === name ? c.subarray(0, cut) : c)));
        assert.ok('refused' in r && r.refused.code === 'RC_ERR_JOURNAL_CORRUPT', `${name} cut at ${cut}`);
      }
    }
  });

  /** Flips one random bit of byte `at` of record `index`; checks the outcome. */
  async function flipAndCheck(index: number, at: number): Promise<void> {
    const w = written[index]!;
    const bit = int(8);
    const dir = copyJournal((name, c) => {
      if (name !== w.file) return c;
      const d = Buffer.from(c);
      d[w.offset + at]! ^= 1 << bit;
      return d;
    });
    const what = `record ${index} byte ${at} bit ${bit}`;
    const r = await openAndRead(dir);
    if (index === written.length - 1) {
      assert.ok('records' in r, `${what}: the last record is a torn tail, expected truncation`);
      assertPrefix(r.records, index, what);
    } else {
      assert.ok('refused' in r, `${what}: opened over a corrupt record followed by valid ones`);
      assert.equal(r.refused.code, 'RC_ERR_JOURNAL_CORRUPT', what);
      assert.ok(r.refused.message.includes(w.file), `${what}: message names the segment`);
    }
  }

  test('a flipped bit at every byte of chosen records: refused, or truncated when it is the last', async () => {
    const lastOfFirstSeg = written.filter((w) => w.file === segNames[0]).length - 1;
    const firstOfLastSeg = written.findIndex((w) => w.file === segNames[segNames.length - 1]);
    const chosen = new Set([0, 1 + int(lastOfFirstSeg), lastOfFirstSeg, firstOfLastSeg, written.length - 1]);
    for (const index of chosen) {
      for (let at = 0; at < written[index]!.bytes.length; at++) await flipAndCheck(index, at);
    }
  });

  test('a flipped bit at random bytes anywhere in the journal', async () => {
    for (let n = 0; n < 1500; n++) {
      const index = int(written.length);
      await flipAndCheck(index, int(written[index]!.bytes.length));
    }
  });
});
