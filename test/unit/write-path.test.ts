/**
 * Proves the write path's contract (DESIGN.md §3.1, §3.2, §6) against the real journal on disk:
 * - every acknowledged write is in the journal with gapless per-group seqs and increasing order
 *   keys, and in the volume, before it is acknowledged;
 * - FUA waits for the journal's fdatasync; many FUA writers share one (group commit);
 * - journal full (throttle): writes wait, bounded; released space lets them through in order;
 *   past the bound the owner suspends what it can (those writes go on tracked), the rest fail
 *   with ENOSPC and change nothing (volume, journal, seq);
 * - redo: the retained journal replayed into a blank volume rebuilds it exactly;
 * - a write whose extent is new to the activity log reaches the volume, and is acknowledged, only
 *   once the log holds it (a later overlapping write lands after it); when the log cannot be
 *   written the write fails and the volume is unchanged.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import type { Seq } from '../../src/core/types.js';
import { compareKeys, keyOf, kindCarriesData, RecordKind, seq } from '../../src/core/types.js';
import type { BackendError } from '../../src/frontend/backend.js';
import {
  type ActivityLogPort,
  applyToDevice,
  COPY_READ_TRIES,
  WritePath,
} from '../../src/node/write-path.js';
import { GroupBitmaps } from '../../src/node/replication/bitmaps.js';
import { MemBlockDevice } from '../../src/storage/blockdev.js';
import { DIRECT_ROOM_MARGIN_BYTES, Journal, type JournalIo } from '../../src/storage/journal.js';
import { mulberry32 } from '../../src/testing/random.js';
import { testWritePath } from '../../src/testing/write-path-fixture.js';

const root = fs.mkdtempSync(join(tmpdir(), 'rc-wp-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));
let n = 0;

const PAYLOAD_MAX = 64 * 1024;
const SEGMENT = 80 * 1024;

async function setup(
  opts: {
    bytesMax?: number;
    throttleMaxDelayMs?: number;
    onJournalFull?: (wp: WritePath, groups: ReadonlySet<string>) => void;
    onThrottleExpired?: (wp: WritePath, groups: ReadonlySet<string>) => void;
    activityLog?: ActivityLogPort;
    dev?: MemBlockDevice;
    /** Runs of this many bytes or more into a new segment go direct (journal.ts). */
    directRunBytesMin?: number;
    journalIo?: JournalIo;
  } = {},
) {
  const journal = await Journal.open({
    dir: join(root, `j${n++}`),
    bytesMax: opts.bytesMax ?? 64 * SEGMENT,
    segmentBytes: SEGMENT,
    limits: { recordPayloadBytesMax: PAYLOAD_MAX, directRunBytesMin: opts.directRunBytesMin },
    io: opts.journalIo,
  });
  const { sequencer, wp } = testWritePath(journal, {
    throttleMaxDelayMs: opts.throttleMaxDelayMs,
    throttleRetryMs: 2,
    onJournalFull: opts.onJournalFull,
    onThrottleExpired: opts.onThrottleExpired,
    activityLog: opts.activityLog,
  });
  const dev = opts.dev ?? new MemBlockDevice(1 << 20);
  const write = (group: string, offset: number, byte: number, length = 4096, fua = false) =>
    wp.submit({
      group,
      kind: RecordKind.data,
      volume: group === 'g1' ? 'v1' : 'v2',
      device: dev,
      offset,
      length,
      payload: Buffer.alloc(length, byte),
      fua,
    });
  return { journal, sequencer, wp, dev, write };
}

/** setup() with a full journal: two segments of 80 KiB, each holding one 64 KiB record of g1. */
async function setupFull(opts: Omit<NonNullable<Parameters<typeof setup>[0]>, 'bytesMax'>) {
  const s = await setup({ ...opts, bytesMax: 2 * SEGMENT });
  await s.write('g1', 0, 1, PAYLOAD_MAX);
  await s.write('g1', PAYLOAD_MAX, 2, PAYLOAD_MAX);
  return s;
}

/** The real journal io with `write` for its direct writes (and `more` over the rest). */
function journalIoWith(write: JournalIo['write'], more: Partial<JournalIo> = {}): JournalIo {
  return {
    writevSync: (fd, bufs, pos) => fs.writevSync(fd, bufs, pos),
    fdatasync: (fd) => new Promise((res, rej) => fs.fdatasync(fd, (e) => (e ? rej(e) : res()))),
    write,
    ...more,
  };
}

/** Direct journal writes held until open() is called. */
function gatedDirectWrites(): { io: JournalIo; open: () => void } {
  let open: () => void = () => {};
  const gate = new Promise<void>((r) => (open = r));
  const io = journalIoWith(async (fd, buf, pos) => {
    await gate;
    return fs.writeSync(fd, buf, 0, buf.length, pos);
  });
  return { io, open: () => open() };
}

test('acknowledged writes are journalled in order and applied before the ack', async () => {
  const { journal, dev, write, wp } = await setup();
  const acks: Promise<void>[] = [];
  for (let i = 0; i < 200; i++) {
    const p = write(i % 3 === 0 ? 'g2' : 'g1', (i % 100) * 4096, i & 0xff);
    // Each ack finds its own bytes (or a later write's) in the volume.
    acks.push(p.then(() => assert.notEqual(dev.bytes[(i % 100) * 4096], undefined)));
  }
  await Promise.all(acks);
  const recs = [...journal.retained()];
  assert.equal(recs.length, 200);
  const seqs = new Map<string, number>();
  for (let i = 0; i < recs.length; i++) {
    const h = recs[i]!.header;
    assert.equal(h.seq, (seqs.get(h.group) ?? 0) + 1, 'gapless seq per group');
    seqs.set(h.group, h.seq);
    if (i > 0) assert.equal(compareKeys(keyOf(recs[i - 1]!.header), keyOf(h)), -1, 'order keys increase');
    assert.equal(recs[i]!.payload[0], i & 0xff, 'journal order is submission order');
  }
  assert.ok(wp.stats.batches < 200, 'writes were batched');
  await journal.close();
});

test('FUA writes resolve only after an fdatasync; concurrent FUA writers share it', async () => {
  const { journal, write } = await setup();
  const before = journal.syncCount;
  let synced = -1;
  const acks = Array.from({ length: 64 }, (_, i) =>
    write('g1', i * 4096, 1, 4096, true).then(() => {
      // Every FUA ack comes after a completed sync round.
      synced = Math.min(synced === -1 ? Number.POSITIVE_INFINITY : synced, journal.syncCount - before);
    }),
  );
  await Promise.all(acks);
  const rounds = journal.syncCount - before;
  assert.ok(synced >= 1, 'no FUA write was acknowledged before a sync round completed');
  assert.ok(rounds <= 2, `group commit: ${rounds} sync rounds for 64 FUA writes`);
  await journal.close();
});

test('journal full: writes wait and go through in order once records are released', async () => {
  const { journal, sequencer, wp, dev, write } = await setupFull({
    throttleMaxDelayMs: 5000,
  });
  const third = write('g1', 2 * PAYLOAD_MAX, 3, PAYLOAD_MAX);
  const fourth = write('g1', 3 * PAYLOAD_MAX, 4, PAYLOAD_MAX);
  await new Promise((r) => setTimeout(r, 30));
  assert.ok(wp.throttling, 'throttling while full');
  assert.equal(sequencer.seqOf('g1'), 2, 'waiting writes have no seq yet');
  assert.equal(dev.bytes[2 * PAYLOAD_MAX], 0, 'waiting write not applied');
  await wp.release('g1', 2 as Seq, [dev]);
  await Promise.all([third, fourth]);
  assert.equal(sequencer.seqOf('g1'), 4);
  assert.deepEqual(
    [...journal.retained()].map((r) => r.header.seq),
    [3, 4],
  );
  assert.ok(wp.stats.throttledWrites >= 1 && wp.stats.throttleDelayMsTotal > 0, 'delay is counted');
  await journal.close();
});

test('journal full past the bound: ENOSPC, and nothing changes', async () => {
  const { journal, sequencer, wp, dev, write } = await setupFull({
    throttleMaxDelayMs: 50,
  });
  const usage = journal.usage();
  const t0 = performance.now();
  await assert.rejects(
    write('g1', 4 * PAYLOAD_MAX, 9, PAYLOAD_MAX),
    (e: BackendError) => e.errno === 'ENOSPC',
  );
  const waited = performance.now() - t0;
  assert.ok(waited >= 45, `waited ${waited} ms before failing`);
  assert.equal(sequencer.seqOf('g1'), 2, 'no seq consumed');
  assert.ok(
    dev.bytes.subarray(4 * PAYLOAD_MAX, 5 * PAYLOAD_MAX).equals(Buffer.alloc(PAYLOAD_MAX)),
    'volume unchanged',
  );
  assert.deepEqual(journal.usage(), usage, 'journal unchanged');
  assert.equal(wp.stats.rejectedJournalFull, 1);
  assert.equal(wp.throttling, false, 'throttling ends when nothing waits');
  // And the node goes on: after a release the next write is seq 3.
  await wp.release('g1', 2 as Seq, [dev]);
  await write('g1', 0, 7, 4096);
  assert.equal(sequencer.seqOf('g1'), 3);
  await journal.close();
});

test('redo: replaying the retained journal rebuilds the volume exactly', async () => {
  const { journal, dev, wp } = await setup();
  const ops: Promise<void>[] = [];
  for (let i = 0; i < 300; i++) {
    const offset = ((i * 7919) % 250) * 4096 + (i % 3) * 512;
    if (i % 10 === 9) {
      ops.push(
        wp.submit({
          group: 'g1',
          kind: RecordKind.zero,
          volume: 'v1',
          device: dev,
          offset,
          length: 8192,
          fua: false,
        }),
      );
    } else {
      const payload = Buffer.alloc(4096 + (i % 5) * 512, i & 0xff);
      ops.push(
        wp.submit({
          group: 'g1',
          kind: RecordKind.data,
          volume: 'v1',
          device: dev,
          offset,
          length: payload.length,
          payload,
          fua: false,
        }),
      );
    }
  }
  await Promise.all(ops);
  const rebuilt = new MemBlockDevice(dev.sizeBytes);
  for (const { header, payload } of journal.retained()) {
    applyToDevice(
      rebuilt,
      header.kind,
      header.offset,
      header.length,
      header.kind === RecordKind.data ? payload : undefined,
    );
  }
  assert.ok(rebuilt.bytes.equals(dev.bytes));
  await journal.close();
});

test('after close, writes are refused with ESHUTDOWN', async () => {
  const { journal, wp, write } = await setup();
  await wp.close();
  await assert.rejects(write('g1', 0, 1), (e: BackendError) => e.errno === 'ESHUTDOWN');
  await journal.close();
});

/** Async writes that finish in a seeded random order: what the thread pool may do. */
class ShuffledDevice extends MemBlockDevice {
  private s = 12345;
  override write(offset: number, data: Uint8Array): Promise<void> {
    this.s = (Math.imul(this.s, 1103515245) + 12345) >>> 0;
    const copy = Buffer.from(data);
    return new Promise((resolve) =>
      setTimeout(() => {
        this.writeSync(offset, copy);
        resolve();
      }, this.s % 7),
    );
  }
}

test('overlapping large writes land in journal order even when the pool finishes them out of order', async () => {
  const { journal, wp } = await setup();
  const dev = new ShuffledDevice(1 << 20);
  const size = 64 * 1024;
  const ops: Promise<void>[] = [];
  for (let i = 0; i < 60; i++) {
    // Overlapping ranges, each write a different fill byte; some small, applied inline.
    const offset = (i % 5) * 16 * 1024;
    const length = i % 4 === 3 ? 4096 : size;
    ops.push(
      wp.submit({
        group: 'g1',
        kind: RecordKind.data,
        volume: 'v1',
        device: dev,
        offset,
        length,
        payload: Buffer.alloc(length, i + 1),
        fua: false,
      }),
    );
  }
  await Promise.all(ops);
  const redo = new MemBlockDevice(dev.sizeBytes);
  for (const { header, payload } of journal.retained()) {
    applyToDevice(redo, header.kind, header.offset, header.length, payload);
  }
  assert.ok(redo.bytes.equals(dev.bytes), 'the volume equals the journal replayed in order');
  await journal.close();
});

test('release of nothing, or racing a stop, is a no-op instead of a crash', async () => {
  const { journal, wp, dev, write } = await setup();
  await wp.release('never-written', 0 as Seq, [dev]);
  await write('g1', 0, 1);
  // As the node's stop does: write path, then journal, closed while the release syncs volumes.
  const racing = wp.release('g1', 1 as Seq, [dev]);
  await wp.close();
  await journal.close();
  await racing;
});

test('records are released only after the volume sync completes (the redo log never has a hole)', async () => {
  const { journal, wp, write } = await setup();
  let finishSync: () => void = () => {};
  class SlowSyncDevice extends MemBlockDevice {
    override sync(): Promise<void> {
      return new Promise((resolve) => {
        finishSync = resolve;
      });
    }
  }
  const slow = new SlowSyncDevice(1 << 20);
  await write('g1', 0, 1);
  await write('g1', 4096, 2);
  const releasing = wp.release('g1', 2 as Seq, [slow]);
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(journal.releasedSeq('g1'), 0, 'nothing released while the volume sync is pending');
  assert.equal(journal.usage().records, 2);
  finishSync();
  await releasing;
  assert.equal(journal.releasedSeq('g1'), 2, 'released once the volume is durable');
  await journal.close();
});

test('tracked (suspended) writes: no record, no seq; bit durable before the volume; pending writes follow', async () => {
  const { journal, sequencer, wp, dev, write } = await setup();
  await write('g1', 0, 1);
  const order: string[] = [];
  let releaseMark!: () => void;
  const markGate = new Promise<void>((r) => (releaseMark = r));
  const port = {
    async mark(volume: string, offset: number, length: number) {
      order.push(`mark ${volume} ${offset}+${length}`);
      await markGate;
    },
  };
  let ready!: () => void;
  // A write submitted before track() but not yet journalled follows the new rule too.
  const early = write('g1', 8192, 7);
  wp.track('g1', port, new Promise<void>((r) => (ready = r)));
  const w = write('g1', 4096, 9);
  const other = write('g2', 0, 5);
  await other;
  assert.deepEqual(order, [], 'nothing of g1 proceeds before the suspension is in force');
  assert.equal(dev.bytes[4096], 0);
  ready();
  await new Promise((r) => setTimeout(r, 10));
  assert.deepEqual(order.sort(), ['mark v1 4096+4096', 'mark v1 8192+4096']);
  assert.equal(dev.bytes[4096], 0, 'the volume waits for the bit to be durable');
  // A copy of the range waits for the tracked write, then refuses: no copy record while suspended.
  const copy = wp.copyChunk('g1', 'v1', dev, 4096, 4096);
  releaseMark();
  await Promise.all([w, early]);
  await assert.rejects(copy, /suspended/);
  assert.equal(dev.bytes[4096], 9);
  assert.equal(dev.bytes[8192], 7);
  assert.equal(sequencer.seqOf('g1'), 1, 'tracked writes take no seq');
  assert.deepEqual(
    [...journal.retained()].map((r) => `${r.header.group}:${r.header.seq}`),
    ['g1:1', 'g2:1'],
  );
  await wp.untrack('g1');
  await write('g1', 4096, 10);
  assert.equal(sequencer.seqOf('g1'), 2, 'journalled again after untrack');
  await journal.close();
});

test('journal full under policy suspend: the owner suspends, the writes are tracked, none fails', async () => {
  const marked: number[] = [];
  const full: string[][] = [];
  const { journal, sequencer, wp } = await setup({
    bytesMax: 2 * SEGMENT,
    throttleMaxDelayMs: 50,
    onJournalFull: (w, groups) => {
      full.push([...groups]);
      w.track('g1', { mark: async (_v, offset) => void marked.push(offset) }, Promise.resolve());
    },
  });
  const dev = new MemBlockDevice(1 << 20);
  const writes = [];
  for (let i = 0; i < 12; i++) {
    writes.push(
      wp.submit({
        group: 'g1',
        kind: RecordKind.data,
        volume: 'v1',
        device: dev,
        offset: i * 32768,
        length: 32768,
        payload: Buffer.alloc(32768, i + 1),
        fua: false,
      }),
    );
  }
  await Promise.all(writes);
  assert.deepEqual(full, [['g1']]);
  assert.ok(marked.length > 0, 'the writes that did not fit were tracked');
  assert.equal(sequencer.seqOf('g1') + marked.length, 12, 'every write journalled or tracked, once');
  for (let i = 0; i < 12; i++) assert.equal(dev.bytes[i * 32768], i + 1);
  assert.equal(wp.stats.rejectedJournalFull, 0);
  await journal.close();
});

test('a suspension that starts while writes wait for journal space takes them over (remcopy suspend under throttle)', async () => {
  const marked: number[] = [];
  const { journal, sequencer, wp, dev, write } = await setupFull({
    throttleMaxDelayMs: 60_000,
  });
  const waiting = write('g1', 4 * PAYLOAD_MAX, 3, PAYLOAD_MAX);
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(wp.throttling, true, 'the write waits for journal space');
  // As the source suspends: tracking starts, and the suspension is in force once the volume writes
  // in flight are done. The waiting write, now tracked, must not be one of those it waits for.
  let inForce!: () => void;
  wp.track(
    'g1',
    { mark: async (_v, offset) => void marked.push(offset) },
    new Promise((ok) => (inForce = ok)),
  );
  await wp.settle([dev]);
  inForce();
  await waiting;
  assert.deepEqual(marked, [4 * PAYLOAD_MAX]);
  assert.equal(dev.bytes[4 * PAYLOAD_MAX], 3);
  assert.equal(sequencer.seqOf('g1'), 2, 'tracked, not journalled');
  assert.equal(wp.throttling, false, 'nothing waits for space any more');
  await journal.close();
});

test('journal full under policy throttle, past the bound: the groups the owner suspends go on tracked, the others fail with ENOSPC', async () => {
  const marked: number[] = [];
  const expired: string[][] = [];
  const { journal, sequencer, wp, dev, write } = await setupFull({
    throttleMaxDelayMs: 50,
    onThrottleExpired: (w, groups) => {
      expired.push([...groups].sort());
      // g2 cannot be suspended (as a group in its initial copy): only g1 is tracked. As the source
      // does it: tracking starts, then the suspension is in force once the volume writes in flight
      // are done (settle); the waiting writes tracked meanwhile must not be among those. The
      // writes arrived microseconds apart, so g1 and g2 may pass the bound in different rounds.
      if (!groups.has('g1')) return;
      let inForce!: () => void;
      w.track(
        'g1',
        { mark: async (_v, offset) => void marked.push(offset) },
        new Promise((ok) => (inForce = ok)),
      );
      void w.settle([dev]).then(inForce);
    },
  });
  const usage = journal.usage();
  const t0 = performance.now();
  const g1 = [write('g1', 4 * PAYLOAD_MAX, 3, PAYLOAD_MAX), write('g1', 6 * PAYLOAD_MAX, 4, 4096)];
  const g2 = write('g2', 8 * PAYLOAD_MAX, 5, PAYLOAD_MAX);
  await Promise.all(g1);
  const waited = performance.now() - t0;
  await assert.rejects(g2, (e: BackendError) => e.errno === 'ENOSPC');
  assert.ok(waited >= 45, `the writes waited the bound (${waited.toFixed(0)} ms) before the suspension`);
  assert.deepEqual(
    expired.flat().sort(),
    ['g1', 'g2'],
    'each group told once, when its writes pass the bound',
  );
  assert.deepEqual(marked, [4 * PAYLOAD_MAX, 6 * PAYLOAD_MAX], "g1's waiting writes were tracked, in order");
  assert.equal(dev.bytes[4 * PAYLOAD_MAX], 3);
  assert.equal(dev.bytes[6 * PAYLOAD_MAX], 4);
  assert.equal(sequencer.seqOf('g1'), 2, 'tracked writes take no seq');
  assert.equal(sequencer.seqOf('g2'), 0, 'the refused write took no seq');
  assert.equal(dev.bytes[8 * PAYLOAD_MAX], 0, 'the refused write changed nothing');
  assert.deepEqual(journal.usage(), usage, 'nothing journalled');
  assert.equal(wp.stats.rejectedJournalFull, 1);
  assert.equal(wp.throttling, false, 'throttling ends when nothing waits');
  // A later write of the suspended group is tracked at once: no delay, no journal.
  await write('g1', 0, 6, 4096);
  assert.equal(marked.length, 3);
  await journal.close();
});

test('a freeze journals the writes submitted before it, holds later ones past the marker, and stacks with a hold', async () => {
  const { journal, wp, write } = await setup();
  // Submitted, not yet batched (the batch runs on setImmediate): the freeze must journal them.
  const before = [write('g1', 0, 1), write('g2', 0, 2), write('g1', 4096, 3)];
  wp.hold('g1'); // a verify's hold on g1, for another reason
  wp.freeze(['g1', 'g2']);
  assert.equal([...journal.retained()].length, 3, 'the freeze journalled the writes submitted before it');
  await Promise.all(before);
  let laterAcked = false;
  const later = write('g2', 8192, 4).then(() => (laterAcked = true));
  await new Promise((r) => setImmediate(r));
  const markers = wp.appendMarkers([
    { group: 'g1', markerNo: 1, prev: 0 },
    { group: 'g2', markerNo: 1, prev: 0 },
  ]);
  assert.deepEqual(
    markers.map((h) => [h.group, Number(h.seq), h.kind, h.markerNo, Number(h.offset), h.length]),
    [
      ['g1', 3, RecordKind.marker, 1, 0, 0],
      ['g2', 2, RecordKind.marker, 1, 0, 0],
    ],
    'each marker follows every write of its group journalled before the freeze',
  );
  assert.equal(laterAcked, false, 'a write submitted during the freeze waits');
  const g1During = write('g1', 12288, 5);
  wp.thaw(['g1', 'g2']);
  await later;
  const recs = [...journal.retained()].map((r) => r.header);
  const g2Write = recs.find((h) => h.group === 'g2' && h.offset === 8192)!;
  assert.equal(Number(g2Write.seq), 3, 'the held write lands after the marker');
  await new Promise((r) => setTimeout(r, 20));
  assert.ok(
    ![...journal.retained()].some((r) => r.header.group === 'g1' && r.header.offset === 12288),
    'g1 stays held: the verify hold did not end with the thaw',
  );
  wp.unhold('g1');
  await g1During;
  assert.equal(journal.lastMarker('g1'), 1);
  await journal.close();
});

test('a volume write waits for the activity log to hold its extent; a failed log write fails it', async () => {
  const gates: { volume: string; offset: number; gen: number; open: () => void; fail: (e: Error) => void }[] =
    [];
  const activityLog: ActivityLogPort = {
    admit(volume, offset, _length, gen) {
      // The first write of each offset waits; later ones find the extent in the log.
      if (gates.some((g) => g.offset === offset)) return undefined;
      let open!: () => void;
      let fail!: (e: Error) => void;
      const p = new Promise<void>((ok, no) => ((open = ok), (fail = no)));
      gates.push({ volume, offset, gen, open, fail });
      return p;
    },
  };
  const { journal, dev, write } = await setup({ activityLog });
  let acked = false;
  const first = write('g1', 0, 0x11).then(() => (acked = true));
  const tick = () => new Promise((r) => setImmediate(r));
  await tick();
  assert.equal(gates.length, 1);
  assert.equal(gates[0]!.volume, 'v1');
  assert.ok(gates[0]!.gen >= 1 && gates[0]!.gen <= journal.appendGeneration, 'admitted with its append gen');
  // Journalled, but neither on the volume nor acknowledged while the log write is pending.
  assert.equal([...journal.retained()].length, 1);
  assert.equal(dev.bytes[0], 0, 'not on the volume before the log holds its extent');
  assert.equal(acked, false, 'not acknowledged before the log holds its extent');
  // A later write of the same bytes (extent now known) still lands after the first.
  const second = write('g1', 0, 0x22);
  await tick();
  assert.equal(dev.bytes[0], 0, 'the overlapping write waits for the first');
  gates[0]!.open();
  await Promise.all([first, second]);
  assert.equal(dev.bytes[0], 0x22, 'journal order on the volume');

  const failed = write('g1', 8192, 0x33);
  await tick();
  gates[1]!.fail(new Error('EIO: activity log write failed'));
  await assert.rejects(failed, (e: BackendError) => e.errno === 'EIO');
  assert.equal(dev.bytes[8192], 0, 'a write the log could not cover never reaches the volume');
  await journal.close();
});

/**
 * A volume whose async reads behave like reads on the thread pool: the first half of the range is
 * read when the read starts, the rest when it completes (after `gate` opens, or a few turns of the
 * event loop), so writes issued meanwhile may be in either part, or in neither.
 */
class PoolReadDevice extends MemBlockDevice {
  gate: Promise<void> | undefined;
  asyncReads = 0;
  constructor(
    size: number,
    private readonly turns: () => number = () => 1,
  ) {
    super(size);
  }
  override read(offset: number, length: number): Promise<Buffer> {
    return this.poolRead(offset, length);
  }
  override readForCopy(offset: number, length: number): Promise<Buffer> {
    return this.poolRead(offset, length);
  }
  private async poolRead(offset: number, length: number): Promise<Buffer> {
    this.asyncReads++;
    const half = Math.floor(length / 8192) * 4096;
    const head = Buffer.from(this.bytes.subarray(offset, offset + half));
    if (this.gate !== undefined) await this.gate;
    else for (let i = this.turns(); i > 0; i--) await new Promise((r) => setImmediate(r));
    return Buffer.concat([head, this.bytes.subarray(offset + half, offset + length)]);
  }
}

/** The volume the journal's records describe: every retained record from `fromSeq` on, in order. */
function replayed(journal: Journal, size: number, fromSeq = 0): Buffer {
  const dev = new MemBlockDevice(size);
  for (const { header: h, payload } of journal.retained()) {
    if (h.seq < fromSeq) continue;
    applyToDevice(dev, h.kind, h.offset, h.length, kindCarriesData(h.kind) ? payload : undefined);
  }
  return dev.bytes;
}

test('a copy read on the pool: a write to its range meanwhile makes it read again; one elsewhere does not', async () => {
  const dev = new PoolReadDevice(1 << 20);
  const { journal, wp, write } = await setup({ dev });
  await write('g1', 0, 1, 65536);

  // A write elsewhere while the copy reads: the bytes read are journalled as they are.
  let open!: () => void;
  dev.gate = new Promise((r) => (open = r));
  const quiet = wp.copyChunk('g1', 'v1', dev, 0, 65536);
  await new Promise((r) => setImmediate(r));
  await write('g1', 131072, 9);
  open();
  const q = await quiet;
  assert.equal(dev.asyncReads, 1);
  assert.deepEqual([wp.stats.copyReadsAsync, wp.stats.copyReadsRetried], [1, 0]);

  // A write into the first half while the copy reads (the half already read): read again, so the
  // record holds the write, and it comes after the write's record.
  dev.gate = new Promise((r) => (open = r));
  const racing = wp.copyChunk('g1', 'v1', dev, 0, 65536);
  await new Promise((r) => setImmediate(r));
  await write('g1', 4096, 2);
  dev.gate = undefined;
  open();
  const c = await racing;
  assert.equal(dev.asyncReads, 3, 'read again after the write');
  assert.deepEqual([wp.stats.copyReadsAsync, wp.stats.copyReadsRetried], [2, 1]);
  const recs = [...journal.retained()];
  const copy = recs.find((r) => r.header.group === 'g1' && r.header.seq === c.seq)!;
  assert.equal(copy.header.kind, RecordKind.copy);
  assert.equal(copy.payload[4096], 2, 'the copy holds the write made while it read');
  assert.equal(copy.payload[0], 1);
  assert.ok(c.seq > q.seq + 1, 'the copy follows the write in the journal');
  assert.ok(replayed(journal, 1 << 20).equals(dev.bytes), 'replaying the journal gives the volume');
  await journal.close();
});

test(`a copy whose range is written during each of its ${COPY_READ_TRIES} pool reads is read in the step that journals it`, async () => {
  const dev = new PoolReadDevice(1 << 20);
  const { journal, wp, write } = await setup({ dev });
  const gates: Array<() => void> = [];
  const nextGate = () => (dev.gate = new Promise((r) => gates.push(r)));
  nextGate();
  const copy = wp.copyChunk('g1', 'v1', dev, 0, 65536);
  for (let i = 1; i <= COPY_READ_TRIES; i++) {
    await new Promise((r) => setImmediate(r));
    assert.equal(dev.asyncReads, i);
    await write('g1', 0, 0x10 + i);
    const open = gates[i - 1]!;
    nextGate();
    open();
  }
  const c = await copy;
  assert.equal(dev.asyncReads, COPY_READ_TRIES, 'no further pool read');
  assert.deepEqual([wp.stats.copyReadsAsync, wp.stats.copyReadsRetried], [0, COPY_READ_TRIES]);
  const rec = [...journal.retained()].find((r) => r.header.seq === c.seq && r.header.group === 'g1')!;
  assert.equal(rec.payload[0], 0x10 + COPY_READ_TRIES, 'the last write is in the copy');
  assert.ok(replayed(journal, 1 << 20).equals(dev.bytes));
  await journal.close();
});

test('copies on the pool among random host writes: the journal replayed is the volume, for 40 seeds', async () => {
  const CHUNK = 65536;
  const SIZE = 16 * CHUNK;
  let retried = 0;
  for (let seed = 1; seed <= 40; seed++) {
    const rnd = mulberry32(seed);
    const dev = new PoolReadDevice(SIZE, () => Math.floor(rnd() * 4));
    const { journal, wp, write } = await setup({ dev, bytesMax: 1024 * SEGMENT });
    const writes: Promise<void>[] = [];
    let stop = false;
    // Host writes of 4-16 KiB at random places, some zeroes, a few at a time, until the copy ends.
    const writer = (async () => {
      for (let i = 0; !stop; i++) {
        const length = 4096 * (1 + Math.floor(rnd() * 4));
        const offset = 4096 * Math.floor(rnd() * ((SIZE - length) / 4096 + 1));
        writes.push(write('g1', offset, i % 7 === 0 ? 0 : 1 + (i % 250), length));
        if (rnd() < 0.5) await new Promise((r) => setImmediate(r));
      }
    })();
    const copied = [];
    for (let off = 0; off < SIZE; off += CHUNK) {
      copied.push(await wp.copyChunk('g1', 'v1', dev, off, CHUNK, { cached: rnd() < 0.3 }));
    }
    stop = true;
    await writer;
    await Promise.all(writes);
    const why = `seed ${seed} (async ${wp.stats.copyReadsAsync}, retried ${wp.stats.copyReadsRetried})`;
    assert.ok(replayed(journal, SIZE).equals(dev.bytes), `${why}: replaying the journal gives the volume`);
    // Only the copies matter at a target that had nothing before them: from the first copy on,
    // the records give the volume as well (the writes before it are inside the copies).
    const first = Math.min(...copied.map((c) => c.seq));
    assert.ok(
      replayed(journal, SIZE, first).equals(dev.bytes),
      `${why}: the copies and what follows them give the volume`,
    );
    retried += wp.stats.copyReadsRetried;
    await journal.close();
  }
  assert.ok(retried > 0, 'some reads were overtaken by a write and read again');
});

test('a write whose record is still being written to the journal (direct, on the pool) reaches the volume only after it; a copy of its range waits for it', async () => {
  const gated = gatedDirectWrites();
  const { journal, wp, dev, write } = await setup({ directRunBytesMin: 1, journalIo: gated.io });
  // The first segment (the spare prepared at open, written buffered) is filled by one record.
  await write('g1', 4 * PAYLOAD_MAX, 1, PAYLOAD_MAX);
  const done: string[] = [];
  const w = write('g1', 0, 0xaa, 32 * 1024).then(() => done.push('write'));
  await new Promise((r) => setImmediate(r));
  assert.notEqual(journal.whenWritten(journal.appendGeneration), undefined, 'the record is being written');
  const copy = wp.copyChunk('g1', 'v1', dev, 0, 64 * 1024).then((c) => {
    done.push('copy');
    return c;
  });
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
  assert.equal(dev.bytes[0], 0, 'the volume is not written before its journal');
  assert.deepEqual(done, [], 'neither the write nor the copy is done');
  gated.open();
  await w;
  const c = await copy;
  assert.equal(dev.bytes[0], 0xaa);
  assert.equal(c.zero, false);
  await journal.sync();
  // The copy record follows the write and holds it: replayed, the journal gives the volume.
  const recs = [...journal.retained()].filter((r) => r.header.seq >= 2);
  assert.deepEqual(
    recs.map((r) => [r.header.seq, r.header.kind]),
    [
      [2, RecordKind.data],
      [3, RecordKind.copy],
    ],
  );
  assert.equal(recs[1]!.payload[0], 0xaa, 'the copy record holds the write');
  await journal.close();
});

test('the dirty ranges of journalled records (takeover, failback) include records still being written', async () => {
  const gated = gatedDirectWrites();
  const { journal, write } = await setup({ directRunBytesMin: 1, journalIo: gated.io });
  // Seq 1 fills the first segment (the prepared spare, written buffered); seq 2 goes direct and
  // is held, seq 3 waits behind it.
  await write('g1', 4 * PAYLOAD_MAX, 1, PAYLOAD_MAX);
  const held = [write('g1', 0, 0xaa, 32 * 1024), write('g1', 128 * 1024, 0xbb, 4096)];
  await new Promise((r) => setImmediate(r));
  assert.equal(journal.readRetained('g1', seq(2), 1 << 20).length, 0, 'not readable yet');
  const bitmaps = new GroupBitmaps(join(root, `bm${n++}`), 'g1', 4096, [{ name: 'v1', sizeBytes: 1 << 20 }]);
  let marked = false;
  const marking = bitmaps.markJournalled(journal, 'g1', 1).then(() => (marked = true));
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
  assert.equal(marked, false, 'marking waits for the held records');
  gated.open();
  await Promise.all([marking, ...held]);
  const bm = bitmaps.maps.get('v1')!;
  const dirty = [...Array(bm.chunks).keys()].filter((c) => bm.isDirty(c));
  // 32 KiB from 0 (chunks 0-7) and 4 KiB at 128 KiB (chunk 32); not seq 1, at or before afterSeq.
  assert.deepEqual(dirty, [0, 1, 2, 3, 4, 5, 6, 7, 32]);
  await journal.close();
});

test('near a full disk a large write is journalled synchronously: ENOSPC fails it alone, and the next write goes through', async () => {
  let full = false;
  let direct = 0;
  let free = 2 ** 40;
  const { journal, dev, write } = await setup({
    directRunBytesMin: 1,
    journalIo: journalIoWith(
      (fd, buf, pos) => {
        direct++;
        return Promise.resolve(fs.writeSync(fd, buf, 0, buf.length, pos));
      },
      {
        writevSync: (fd, bufs, pos) => {
          if (full) throw Object.assign(new Error('no space left on device'), { code: 'ENOSPC' });
          return fs.writevSync(fd, bufs, pos);
        },
        freeBytes: () => free,
      },
    ),
  });
  // The first segment (the prepared spare, written buffered) is filled by one record.
  await write('g1', 4 * PAYLOAD_MAX, 1, PAYLOAD_MAX);
  // With room, a write into the next segment (a new sparse file) goes direct. The segment holds
  // three such writes.
  await write('g1', 0, 0xaa, 20480);
  assert.equal(direct, 1, 'a direct write with room');
  // Less than a run and the margin: the next run into that segment is written synchronously.
  free = DIRECT_ROOM_MARGIN_BYTES;
  full = true;
  await assert.rejects(write('g1', 20480, 0xbb, 20480), (e: BackendError) => e.errno === 'ENOSPC');
  assert.equal(dev.bytes[20480], 0, 'the failed write is not on the volume');
  full = false;
  // Space again: the journal was not failed, and the write takes the seq the failed one did not.
  await write('g1', 40960, 0xcc, 20480);
  assert.equal(dev.bytes[40960], 0xcc);
  assert.equal(direct, 1, 'no direct write near a full disk');
  const recs = [...journal.retained()];
  assert.deepEqual(
    recs.map((r) => [r.header.seq, r.payload[0]]),
    [
      [1, 1],
      [2, 0xaa],
      [3, 0xcc],
    ],
  );
  await journal.close();
});

test('a direct journal write that fails with ENOSPC: the writes get ENOSPC and no volume is written; the journal refuses more', async () => {
  const { journal, dev, write } = await setup({
    directRunBytesMin: 1,
    journalIo: journalIoWith(() =>
      Promise.reject(Object.assign(new Error('no space left on device'), { code: 'ENOSPC' })),
    ),
  });
  // The first segment (the prepared spare, written buffered) is filled by one record.
  await write('g1', 4 * PAYLOAD_MAX, 1, PAYLOAD_MAX);
  const failed = write('g1', 0, 0xaa, 32 * 1024);
  const behind = write('g1', 32 * 1024, 0xbb, 4096);
  await assert.rejects(failed, (e: BackendError) => e.errno === 'ENOSPC');
  // The journal is failed, for want of space: what is queued or comes later gets ENOSPC too.
  await assert.rejects(behind, (e: BackendError) => e.errno === 'ENOSPC');
  await assert.rejects(write('g1', 64 * 1024, 0xcc, 4096), (e: BackendError) => e.errno === 'ENOSPC');
  assert.equal(dev.bytes[0], 0, 'the failed write is not on the volume');
  assert.equal(dev.bytes[32 * 1024], 0, 'nor the one queued behind it');
  assert.equal(dev.bytes[64 * 1024], 0, 'nor a later one');
  await journal.close();
});
