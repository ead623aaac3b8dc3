/**
 * Proves the target side of one group's transfer (src/core/receiver.ts, DESIGN.md §3.2, §3.3;
 * patent fig 6 steps 1101-1105): accept() classifies a RECORDS batch (duplicates at or below the
 * appended prefix, the range to append, gaps, keys that do not increase, records of another group,
 * ticks, record epochs above the frame's, frames of a stale epoch) and changes nothing itself; a
 * refused batch journals nothing; setEpoch only raises; appended()/onDurable() move the prefixes,
 * the durable one never past the appended one; resumeSeq() is one past the durable prefix.
 *
 * Property (seeded, REMCOPY_SEED=<n> replays one seed): batches cut from a source history, resent,
 * overlapping, with gaps, swapped records and foreign records, fed through a driver that journals
 * what accept() says and syncs at random; every classification is checked against a model and the
 * journal must always be exactly the source history's prefix 1..seqAppended, with seqDurable <=
 * seqAppended, both never decreasing.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { AcceptResult, ReceiverResume } from '../../src/core/receiver.js';
import { GroupReceiver } from '../../src/core/receiver.js';
import type { OrderKey, RecordHeader, RecordKind } from '../../src/core/types.js';
import {
  byteOffset,
  keyOf,
  nodeIdFromNumber,
  ordinal,
  RecordKind as Kind,
  seq,
  timeUs,
} from '../../src/core/types.js';
import { forEachSeed, mulberry32 } from '../../src/testing/random.js';

const NODE = nodeIdFromNumber(7);

function key(writeTimeUs: number, ord: number): OrderKey {
  return { writeTimeUs: timeUs(writeTimeUs), nodeId: NODE, ordinal: ordinal(ord) };
}

interface HdrOpts {
  readonly t?: number;
  readonly ord?: number;
  readonly kind?: RecordKind;
  readonly group?: string;
  readonly epoch?: number;
}

/** Record s of group g: by default write time 100 + s, ordinal 10 * s, epoch 1. */
function hdr(s: number, o: HdrOpts = {}): RecordHeader {
  const kind = o.kind ?? Kind.data;
  return {
    kind,
    group: o.group ?? 'g',
    seq: seq(s),
    writeTimeUs: timeUs(o.t ?? 100 + s),
    hostTimeUs: timeUs(0),
    nodeId: NODE,
    ordinal: ordinal(o.ord ?? 10 * s),
    epoch: o.epoch ?? 1,
    volume: kind === Kind.marker || kind === Kind.tick ? '' : 'v',
    offset: byteOffset(0),
    length: kind === Kind.marker || kind === Kind.tick ? 0 : 4096,
    markerNo: kind === Kind.marker ? s : 0,
  };
}

const range = (from: number, to: number, o: HdrOpts = {}): RecordHeader[] => {
  const out: RecordHeader[] = [];
  for (let s = from; s <= to; s++) out.push(hdr(s, o));
  return out;
};

function resume(seqLast: number, epoch = 1, keyLast?: OrderKey): ReceiverResume {
  return {
    epoch,
    seqLast: seq(seqLast),
    keyLast: keyLast ?? (seqLast > 0 ? keyOf(hdr(seqLast)) : undefined),
  };
}

/** The receiver's observable state. */
function state(r: GroupReceiver) {
  return {
    epoch: r.epoch,
    seqAppended: r.seqAppended as number,
    seqDurable: r.seqDurable as number,
    resumeSeq: r.resumeSeq() as number,
  };
}

function expectError(r: AcceptResult, pattern: RegExp, message?: string): void {
  assert.equal(r.kind, 'error', `${message ?? ''}: expected an error, got ${JSON.stringify(r)}`);
  if (r.kind === 'error') assert.match(r.detail, pattern);
}

/** Drives one accepted batch the way the target does: journal records[from..], then appended(). */
function journal(r: GroupReceiver, headers: readonly RecordHeader[], res: AcceptResult): RecordHeader[] {
  assert.equal(res.kind, 'append', JSON.stringify(res));
  if (res.kind !== 'append') return [];
  const recs = headers.slice(res.from);
  r.appended(recs[recs.length - 1]!);
  return recs;
}

test('a fresh receiver: nothing appended or durable, RESUME asks for seq 1', () => {
  const r = new GroupReceiver('g', resume(0, 3));
  assert.equal(r.group, 'g');
  assert.deepEqual(state(r), { epoch: 3, seqAppended: 0, seqDurable: 0, resumeSeq: 1 });
});

test('a recovered receiver starts at its durable journal end', () => {
  const r = new GroupReceiver('g', resume(41, 2));
  assert.deepEqual(state(r), { epoch: 2, seqAppended: 41, seqDurable: 41, resumeSeq: 42 });
});

test('an in-order batch is appended whole; accept() itself changes nothing', () => {
  const r = new GroupReceiver('g', resume(0));
  const batch = range(1, 4);
  assert.deepEqual(r.accept(1, batch), { kind: 'append', from: 0, duplicates: 0 });
  assert.deepEqual(state(r), { epoch: 1, seqAppended: 0, seqDurable: 0, resumeSeq: 1 });
  assert.deepEqual(r.accept(1, batch), { kind: 'append', from: 0, duplicates: 0 }, 'same answer again');
  r.appended(batch[3]!);
  assert.deepEqual(state(r), { epoch: 1, seqAppended: 4, seqDurable: 0, resumeSeq: 1 });
  assert.deepEqual(r.accept(1, range(5, 6)), { kind: 'append', from: 0, duplicates: 0 });
});

test('records at or below the appended prefix are duplicates; a wholly duplicate batch appends nothing', () => {
  const r = new GroupReceiver('g', resume(5));
  assert.deepEqual(r.accept(1, range(1, 5)), { kind: 'duplicates', duplicates: 5 });
  assert.deepEqual(r.accept(1, range(5, 5)), { kind: 'duplicates', duplicates: 1 });
  assert.deepEqual(r.accept(1, []), { kind: 'duplicates', duplicates: 0 }, 'an empty batch');
  assert.deepEqual(state(r), { epoch: 1, seqAppended: 5, seqDurable: 5, resumeSeq: 6 });
});

test('a batch overlapping the prefix: the leading duplicates are skipped, the rest appended', () => {
  const r = new GroupReceiver('g', resume(3));
  const batch = range(2, 6);
  const res = r.accept(1, batch);
  assert.deepEqual(res, { kind: 'append', from: 2, duplicates: 2 });
  const recs = journal(r, batch, res);
  assert.deepEqual(
    recs.map((h) => h.seq),
    [4, 5, 6],
  );
  assert.equal(r.seqAppended, 6);
});

test('appended but not yet durable records are duplicates when resent after a RESUME', () => {
  const r = new GroupReceiver('g', resume(0));
  const batch = range(1, 5);
  journal(r, batch, r.accept(1, batch));
  r.onDurable(seq(2));
  assert.deepEqual(state(r), { epoch: 1, seqAppended: 5, seqDurable: 2, resumeSeq: 3 });
  // The session dropped before the sync of 3..5 finished; the source resends from seq 3.
  assert.deepEqual(r.accept(1, range(3, 7)), { kind: 'append', from: 3, duplicates: 3 });
  assert.deepEqual(r.accept(1, range(3, 5)), { kind: 'duplicates', duplicates: 3 });
});

test('a gap before the first new record is refused: the seq must follow the appended prefix', () => {
  const r = new GroupReceiver('g', resume(3));
  const res = r.accept(1, range(5, 6));
  expectError(res, /does not follow/);
  assert.deepEqual(res, { kind: 'error', detail: 'seq 5 does not follow 3 (a gap)' });
  expectError(r.accept(1, [hdr(3), hdr(5)]), /seq 5 does not follow 3/);
  assert.deepEqual(state(r), { epoch: 1, seqAppended: 3, seqDurable: 3, resumeSeq: 4 });
});

test('a gap inside a batch refuses the whole batch (all or nothing)', () => {
  const r = new GroupReceiver('g', resume(0));
  assert.deepEqual(r.accept(1, [hdr(1), hdr(2), hdr(4)]), {
    kind: 'error',
    detail: 'seq 4 does not follow 2 (a gap)',
  });
});

test('after the first new record, a repeated or older seq is refused, not skipped', () => {
  const r = new GroupReceiver('g', resume(2));
  assert.deepEqual(r.accept(1, [hdr(3), hdr(3)]), {
    kind: 'error',
    detail: 'seq 3 does not follow 3 (a gap)',
  });
  assert.deepEqual(r.accept(1, [hdr(3), hdr(1)]), {
    kind: 'error',
    detail: 'seq 1 does not follow 3 (a gap)',
  });
  assert.deepEqual(r.accept(1, [hdr(3), hdr(5), hdr(4)]), {
    kind: 'error',
    detail: 'seq 5 does not follow 3 (a gap)',
  });
});

test('keys must strictly increase with seq, within the batch and from the appended key', () => {
  const r = new GroupReceiver('g', resume(2, 1, key(200, 20)));
  assert.deepEqual(r.accept(1, [hdr(3, { t: 199, ord: 30 })]), {
    kind: 'error',
    detail: 'seq 3: its order key does not increase',
  });
  expectError(r.accept(1, [hdr(3, { t: 200, ord: 20 })]), /seq 3: its order key does not increase/);
  expectError(r.accept(1, [hdr(3, { t: 200, ord: 19 })]), /order key does not increase/);
  assert.deepEqual(r.accept(1, [hdr(3, { t: 200, ord: 21 })]), { kind: 'append', from: 0, duplicates: 0 });
  expectError(
    r.accept(1, [hdr(3, { t: 300, ord: 30 }), hdr(4, { t: 300, ord: 30 })]),
    /seq 4: its order key does not increase/,
  );
  expectError(
    r.accept(1, [hdr(3, { t: 300, ord: 30 }), hdr(4, { t: 250, ord: 40 })]),
    /seq 4: its order key does not increase/,
  );
  assert.deepEqual(
    r.accept(1, [hdr(3, { t: 300, ord: 30 }), hdr(4, { t: 300, ord: 31 })]),
    { kind: 'append', from: 0, duplicates: 0 },
    'a tied write time is ordered by the ordinal',
  );
});

test('the node id breaks ties between equal write times', () => {
  const r = new GroupReceiver('g', resume(0));
  const a: RecordHeader = { ...hdr(1, { t: 100, ord: 5 }), nodeId: nodeIdFromNumber(8) };
  const b: RecordHeader = { ...hdr(2, { t: 100, ord: 1 }), nodeId: nodeIdFromNumber(9) };
  assert.deepEqual(r.accept(1, [a, b]), { kind: 'append', from: 0, duplicates: 0 });
  expectError(
    r.accept(1, [
      { ...b, seq: seq(1) },
      { ...a, seq: seq(2) },
    ]),
    /seq 2: its order key does not increase/,
    'node 8 < node 9',
  );
});

test('without a known last key (released or empty journal), the first record takes any key', () => {
  const r = new GroupReceiver('g', { epoch: 1, seqLast: seq(7), keyLast: undefined });
  assert.deepEqual(r.accept(1, [hdr(8, { t: 1, ord: 1 })]), { kind: 'append', from: 0, duplicates: 0 });
  expectError(r.accept(1, [hdr(8, { t: 1, ord: 1 }), hdr(9, { t: 0, ord: 2 })]), /seq 9: its order key/);
});

test('the key check applies from the key appended last, across batches', () => {
  const r = new GroupReceiver('g', resume(0));
  const first = [hdr(1, { t: 500, ord: 1 })];
  journal(r, first, r.accept(1, first));
  expectError(r.accept(1, [hdr(2, { t: 400, ord: 2 })]), /seq 2: its order key does not increase/);
  assert.deepEqual(r.accept(1, [hdr(2, { t: 500, ord: 2 })]), { kind: 'append', from: 0, duplicates: 0 });
});

test('duplicates are not key-checked: only records that continue the prefix are', () => {
  const r = new GroupReceiver('g', resume(3, 1, key(1000, 1)));
  // Records 1..3 resent with keys that would not increase past the appended key: still duplicates.
  assert.deepEqual(r.accept(1, range(1, 3)), { kind: 'duplicates', duplicates: 3 });
  expectError(r.accept(1, [...range(1, 3), hdr(4)]), /seq 4: its order key does not increase/);
});

test('a record of another group refuses the batch, wherever it is', () => {
  const r = new GroupReceiver('g', resume(2));
  assert.deepEqual(r.accept(1, [hdr(3, { group: 'h' })]), {
    kind: 'error',
    detail: 'record of group h in a frame of g',
  });
  expectError(r.accept(1, [hdr(3), hdr(4), hdr(5, { group: 'h' })]), /record of group h in a frame of g/);
  expectError(r.accept(1, [hdr(1, { group: 'h' })]), /group h/, 'even a duplicate');
  assert.deepEqual(state(r), { epoch: 1, seqAppended: 2, seqDurable: 2, resumeSeq: 3 });
});

test('every sequenced kind is accepted; a tick (or an unknown kind) takes no seq', () => {
  const r = new GroupReceiver('g', resume(0));
  const kinds = [Kind.data, Kind.zero, Kind.copy, Kind.marker];
  const batch = kinds.map((kind, i) => hdr(i + 1, { kind }));
  assert.deepEqual(r.accept(1, batch), { kind: 'append', from: 0, duplicates: 0 });
  assert.deepEqual(r.accept(1, [hdr(1, { kind: Kind.tick })]), {
    kind: 'error',
    detail: `record kind ${Kind.tick} takes no seq`,
  });
  expectError(r.accept(1, [hdr(1), hdr(2, { kind: Kind.tick })]), /record kind 5 takes no seq/);
  expectError(r.accept(1, [hdr(1, { kind: 9 as RecordKind })]), /record kind 9 takes no seq/);
  const later = new GroupReceiver('g', resume(4));
  expectError(later.accept(1, [hdr(2, { kind: Kind.tick })]), /takes no seq/, 'even at a duplicate seq');
});

test('no record epoch may be above the frame epoch; older or equal epochs are fine', () => {
  const r = new GroupReceiver('g', resume(0, 2));
  assert.deepEqual(r.accept(2, [hdr(1, { epoch: 3 })]), {
    kind: 'error',
    detail: "record epoch 3 above the frame's 2",
  });
  expectError(
    r.accept(3, [hdr(1, { epoch: 3 }), hdr(2, { epoch: 4 })]),
    /record epoch 4 above the frame's 3/,
  );
  assert.deepEqual(
    r.accept(3, [hdr(1, { epoch: 1 }), hdr(2, { epoch: 2 }), hdr(3, { epoch: 3 })]),
    { kind: 'append', from: 0, duplicates: 0 },
    'records written under earlier epochs, resent by the current source',
  );
  const later = new GroupReceiver('g', resume(5, 2));
  expectError(later.accept(2, [hdr(1, { epoch: 9 })]), /record epoch 9/, 'even a duplicate');
});

test('a frame of a lower epoch is stale: the reply names this epoch, contents are not examined', () => {
  const r = new GroupReceiver('g', resume(2, 4));
  assert.deepEqual(r.accept(3, range(3, 4)), { kind: 'stale-epoch', epoch: 4 });
  assert.deepEqual(r.accept(0, [hdr(9, { group: 'h', kind: Kind.tick })]), { kind: 'stale-epoch', epoch: 4 });
  assert.deepEqual(r.accept(3, []), { kind: 'stale-epoch', epoch: 4 });
  assert.deepEqual(r.accept(4, range(3, 4, { epoch: 4 })), { kind: 'append', from: 0, duplicates: 0 });
  assert.deepEqual(
    r.accept(7, range(3, 4, { epoch: 4 })),
    { kind: 'append', from: 0, duplicates: 0 },
    'a higher frame epoch is accepted',
  );
  assert.equal(r.epoch, 4, 'accepting a higher frame epoch does not raise the receiver epoch');
});

test('setEpoch only raises; frames below the raised epoch become stale', () => {
  const r = new GroupReceiver('g', resume(0, 2));
  r.setEpoch(1);
  assert.equal(r.epoch, 2);
  r.setEpoch(2);
  assert.equal(r.epoch, 2);
  assert.deepEqual(r.accept(2, range(1, 1)), { kind: 'append', from: 0, duplicates: 0 });
  r.setEpoch(5);
  assert.equal(r.epoch, 5);
  assert.deepEqual(r.accept(2, range(1, 1)), { kind: 'stale-epoch', epoch: 5 });
  assert.deepEqual(r.accept(4, range(1, 1)), { kind: 'stale-epoch', epoch: 5 });
  r.setEpoch(3);
  assert.equal(r.epoch, 5);
  assert.deepEqual(r.accept(5, range(1, 1)), { kind: 'append', from: 0, duplicates: 0 });
});

test('the first failing rule is reported: group before kind before epoch before seq', () => {
  const r = new GroupReceiver('g', resume(0, 1));
  const bad = hdr(9, { group: 'h', kind: Kind.tick, epoch: 5, t: 0 });
  expectError(r.accept(1, [bad]), /record of group h/);
  expectError(r.accept(1, [{ ...bad, group: 'g' }]), /record kind 5 takes no seq/);
  expectError(r.accept(1, [{ ...bad, group: 'g', kind: Kind.data }]), /record epoch 5 above/);
  expectError(r.accept(1, [{ ...bad, group: 'g', kind: Kind.data, epoch: 1 }]), /seq 9 does not follow 0/);
});

test('onDurable() moves the durable prefix up to, never past, the appended one', () => {
  const r = new GroupReceiver('g', resume(2));
  const batch = range(3, 8);
  journal(r, batch, r.accept(1, batch));
  assert.deepEqual(state(r), { epoch: 1, seqAppended: 8, seqDurable: 2, resumeSeq: 3 });
  r.onDurable(seq(5));
  assert.deepEqual(state(r), { epoch: 1, seqAppended: 8, seqDurable: 5, resumeSeq: 6 });
  r.onDurable(seq(4));
  assert.equal(r.seqDurable, 5, 'a sync that finished late does not lower it');
  r.onDurable(seq(5));
  assert.equal(r.seqDurable, 5);
  r.onDurable(seq(9));
  assert.equal(r.seqDurable, 5, 'nothing past the appended prefix is durable');
  r.onDurable(seq(8));
  assert.deepEqual(state(r), { epoch: 1, seqAppended: 8, seqDurable: 8, resumeSeq: 9 });
});

test('onDurable() on a fresh receiver with nothing appended does nothing', () => {
  const r = new GroupReceiver('g', resume(0));
  r.onDurable(seq(1));
  assert.deepEqual(state(r), { epoch: 1, seqAppended: 0, seqDurable: 0, resumeSeq: 1 });
});

test('appended() records the last seq and key: the next batch must continue from both', () => {
  const r = new GroupReceiver('g', resume(0));
  const batch = [hdr(1, { t: 10, ord: 1 }), hdr(2, { t: 10, ord: 2 }), hdr(3, { t: 20, ord: 3 })];
  const recs = journal(r, batch, r.accept(1, batch));
  assert.equal(recs.length, 3);
  assert.equal(r.seqAppended, 3);
  expectError(r.accept(1, [hdr(4, { t: 20, ord: 3 })]), /seq 4: its order key does not increase/);
  expectError(r.accept(1, [hdr(5, { t: 30, ord: 5 })]), /seq 5 does not follow 3/);
  assert.deepEqual(r.accept(1, [hdr(4, { t: 20, ord: 4 })]), { kind: 'append', from: 0, duplicates: 0 });
});

// ---------------------------------------------------------------------------------------------
// Property: batches cut from a source history, resent, overlapping, gapped and corrupted.

const REPLAY = (seed: number) => `REMCOPY_SEED=${seed} node --test dist/test/unit/receiver.test.js`;

interface RunStats {
  appends: number;
  duplicates: number;
  gaps: number;
  keyErrors: number;
  foreign: number;
  stale: number;
}

const lexKey = (h: RecordHeader): [number, number, number] => [h.writeTimeUs, h.nodeId, h.ordinal];
const keyAbove = (a: RecordHeader, b: RecordHeader): boolean => {
  const [x, y] = [lexKey(a), lexKey(b)];
  for (let i = 0; i < 3; i++) if (x[i] !== y[i]) return x[i]! > y[i]!;
  return false;
};

/** The model: the rules of the file comment, applied record by record. */
function verdict(
  appended: number,
  last: RecordHeader | undefined,
  batch: readonly RecordHeader[],
): AcceptResult {
  let from = -1;
  let prev = appended;
  let prevHdr = last;
  for (let i = 0; i < batch.length; i++) {
    const h = batch[i]!;
    if (h.group !== 'g') return { kind: 'error', detail: `record of group ${h.group} in a frame of g` };
    if (from < 0 && h.seq <= appended) continue;
    if (h.seq !== prev + 1) return { kind: 'error', detail: `seq ${h.seq} does not follow ${prev} (a gap)` };
    if (prevHdr !== undefined && !keyAbove(h, prevHdr)) {
      return { kind: 'error', detail: `seq ${h.seq}: its order key does not increase` };
    }
    if (from < 0) from = i;
    prev = h.seq;
    prevHdr = h;
  }
  const duplicates = from < 0 ? batch.length : from;
  return from < 0 ? { kind: 'duplicates', duplicates } : { kind: 'append', from, duplicates };
}

function runSeed(seed: number, stats: RunStats): void {
  const rnd = mulberry32(seed);
  const pick = (n: number) => Math.floor(rnd() * n);
  // The source history: keys strictly increase (write times often tied, the ordinal breaks ties).
  const history: RecordHeader[] = [];
  let t = 1000;
  const kinds = [Kind.data, Kind.zero, Kind.copy, Kind.marker];
  for (let s = 1; s <= 120; s++) {
    if (rnd() < 0.4) t += 1 + pick(5);
    history.push(hdr(s, { t, ord: s * 3, kind: kinds[pick(4)]!, epoch: s < 60 ? 1 : 2 }));
  }
  const frameEpoch = 2;
  const r = new GroupReceiver('g', { epoch: frameEpoch, seqLast: seq(0), keyLast: undefined });
  const journalled: RecordHeader[] = [];
  let prevAppended = 0;
  let prevDurable = 0;

  for (let step = 1; step <= 200; step++) {
    const at = `seed ${seed} step ${step}`;
    const appended = r.seqAppended as number;
    // A batch starting around the appended prefix: behind it (resend), at it, or past it (gap).
    const start = Math.max(1, appended + 1 - pick(6) + (rnd() < 0.15 ? 1 + pick(3) : 0));
    const len = pick(6);
    const batch = history.slice(start - 1, Math.min(history.length, start - 1 + len));
    let corrupt = 'none' as 'none' | 'swap' | 'foreign' | 'stale' | 'key';
    const c = rnd();
    if (c < 0.05 && batch.length >= 2) {
      const i = pick(batch.length - 1);
      [batch[i], batch[i + 1]] = [batch[i + 1]!, batch[i]!];
      corrupt = 'swap';
    } else if (c < 0.08 && batch.length >= 1) {
      const i = pick(batch.length);
      batch[i] = { ...batch[i]!, group: 'other' };
      corrupt = 'foreign';
    } else if (c < 0.1) {
      corrupt = 'stale';
    } else if (c < 0.15 && batch.length >= 1) {
      // A record whose key repeats the key before it (of the batch, or of the history).
      const i = pick(batch.length);
      const before = batch[i]!.seq >= 2 ? history[batch[i]!.seq - 2]! : undefined;
      if (before !== undefined) {
        batch[i] = { ...batch[i]!, writeTimeUs: before.writeTimeUs, ordinal: before.ordinal };
        corrupt = 'key';
      }
    }
    const res = r.accept(corrupt === 'stale' ? frameEpoch - 1 : frameEpoch, batch);

    // The model's verdict.
    if (corrupt === 'stale') {
      assert.deepEqual(res, { kind: 'stale-epoch', epoch: frameEpoch }, at);
      stats.stale++;
    } else {
      const expected = verdict(appended, journalled[appended - 1], batch);
      assert.deepEqual(res, expected, `${at}: batch ${batch.map((h) => `${h.group}:${h.seq}`).join(',')}`);
      if (res.kind === 'duplicates') stats.duplicates++;
      if (res.kind === 'error') {
        if (res.detail.includes('a gap')) stats.gaps++;
        if (res.detail.includes('group other')) stats.foreign++;
        if (res.detail.includes('order key')) stats.keyErrors++;
      }
    }

    if (res.kind === 'append') {
      const recs = batch.slice(res.from);
      journalled.push(...recs);
      r.appended(recs[recs.length - 1]!);
      stats.appends++;
    }
    if (rnd() < 0.3) r.onDurable(seq(r.seqAppended - pick(3)));

    // Invariants.
    assert.deepEqual(
      journalled.map((h) => h.seq),
      history.slice(0, journalled.length).map((h) => h.seq),
      `${at}: the journal is the source history's prefix`,
    );
    assert.deepEqual(journalled, history.slice(0, journalled.length), `${at}: the records themselves`);
    assert.equal(r.seqAppended, journalled.length, `${at}: seqAppended is the journal end`);
    assert.ok(r.seqDurable <= r.seqAppended, `${at}: durable ${r.seqDurable} > appended ${r.seqAppended}`);
    assert.ok(r.seqAppended >= prevAppended, `${at}: seqAppended decreased`);
    assert.ok(r.seqDurable >= prevDurable, `${at}: seqDurable decreased`);
    assert.equal(r.resumeSeq(), r.seqDurable + 1, `${at}: resumeSeq`);
    assert.equal(r.epoch, frameEpoch, `${at}: epoch`);
    prevAppended = r.seqAppended;
    prevDurable = r.seqDurable;
  }
}

const seedEnv = process.env['REMCOPY_SEED'];
const SEED_BASE = seedEnv !== undefined ? Number(seedEnv) : 1;
const SEEDS = seedEnv !== undefined ? 1 : 300;

test(`property: the journal is always the source history's prefix (seeds ${SEED_BASE}..${SEED_BASE + SEEDS - 1})`, (t) => {
  const stats: RunStats = { appends: 0, duplicates: 0, gaps: 0, keyErrors: 0, foreign: 0, stale: 0 };
  forEachSeed(SEED_BASE, SEEDS, REPLAY, (seed) => runSeed(seed, stats));
  t.diagnostic(JSON.stringify(stats));
  if (seedEnv === undefined) {
    for (const [k, v] of Object.entries(stats))
      assert.ok(v >= SEEDS / 2, `${k}: only ${v} in ${SEEDS} seeds`);
  }
});
