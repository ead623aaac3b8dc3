/**
 * Proves the in-memory record cache of a group (src/node/replication/recent.ts): a record kept with
 * `copy` holds its own bytes (the front end reuses its payload buffer once a write is answered),
 * copies cut from one slab never overlap, large payloads and slab boundaries are handled, the byte
 * bound refuses records (and copies nothing for them), and dropUpTo forgets a prefix in seq order.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { RecordHeader } from '../../src/core/types.js';
import { byteOffset, nodeIdFromNumber, ordinal, RecordKind, seq, timeUs } from '../../src/core/types.js';
import { RecentRecords, SLAB_BYTES, SlabCopier } from '../../src/node/replication/recent.js';
import { mulberry32 } from '../../src/testing/random.js';

function header(s: number, length: number): RecordHeader {
  return {
    kind: RecordKind.data,
    group: 'g',
    seq: seq(s),
    writeTimeUs: timeUs(s),
    hostTimeUs: timeUs(0),
    nodeId: nodeIdFromNumber(1),
    ordinal: ordinal(s),
    epoch: 1,
    volume: 'v',
    offset: byteOffset(0),
    length,
    markerNo: 0,
  };
}

test('slab copies equal their sources, survive reuse of the source buffer, and never overlap', () => {
  const rand = mulberry32(7);
  const copier = new SlabCopier();
  const source = Buffer.alloc(SLAB_BYTES);
  const kept: { copy: Buffer; want: Buffer }[] = [];
  // Sizes up to past the large-payload cut-off, enough of them to fill several slabs.
  for (let i = 0; i < 2000; i++) {
    const n = [1, 512, 4096, 4099, 65536, 200 * 1024][Math.floor(rand() * 6)]!;
    const src = source.subarray(0, n);
    for (let j = 0; j < n; j += 97) src[j] = Math.floor(rand() * 256);
    const want = Buffer.from(src);
    const copy = copier.copy(src);
    assert.equal(copy.length, n);
    assert.ok(copy.buffer !== source.buffer, 'a copy never shares the source buffer');
    assert.equal(copy.byteOffset % 8, 0, 'copies start 8-byte aligned in their slab');
    kept.push({ copy, want });
    // The front end reuses its buffer for the next write.
    src.fill(0xee);
  }
  for (const k of kept) assert.ok(k.copy.equals(k.want));
  const bySlab = new Map<ArrayBufferLike, [number, number][]>();
  for (const { copy } of kept) {
    const list = bySlab.get(copy.buffer) ?? [];
    list.push([copy.byteOffset, copy.byteOffset + copy.length]);
    bySlab.set(copy.buffer, list);
  }
  assert.ok(bySlab.size > 2, 'several slabs were used');
  for (const list of bySlab.values()) {
    list.sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < list.length; i++) assert.ok(list[i - 1]![1] <= list[i]![0], 'copies overlap');
  }
});

test('kept records: a copy when asked, the bound refuses records whole, dropUpTo forgets a prefix', () => {
  const recent = new RecentRecords(3 * (4096 + 160));
  const frontEnd = Buffer.alloc(4096, 1);
  recent.add(header(1, 4096), frontEnd, undefined, true);
  frontEnd.fill(2);
  recent.add(header(2, 4096), frontEnd, undefined, true);
  const own = Buffer.alloc(4096, 3);
  recent.add(header(3, 4096), own);
  recent.add(header(4, 4096), Buffer.alloc(4096, 4), undefined, true); // past the bound: not kept
  assert.equal(recent.size, 3);
  const taken = recent.take(seq(1), 10, 1 << 20, 100);
  assert.deepEqual(
    taken.map((r) => [r.header.seq, r.payload[0], r.payload[4095]]),
    [
      [1, 1, 1],
      [2, 2, 2],
      [3, 3, 3],
    ],
  );
  assert.equal(taken[2]!.payload, own, 'without copy the payload is kept as given');
  recent.dropUpTo(2);
  assert.deepEqual(
    recent.take(seq(1), 10, 1 << 20, 100).map((r) => r.header.seq),
    [],
    'take starts at a dropped seq: nothing contiguous from there',
  );
  assert.deepEqual(
    recent.take(seq(3), 10, 1 << 20, 100).map((r) => r.header.seq),
    [3],
  );
  recent.add(header(4, 4096), Buffer.alloc(4096, 4), undefined, true); // room again after the drop
  assert.deepEqual(
    recent.take(seq(3), 10, 1 << 20, 100).map((r) => [r.header.seq, r.payload[0]]),
    [
      [3, 3],
      [4, 4],
    ],
  );
});

test('payloads kept as given count their whole buffer once, while any record cut from it is kept', () => {
  const overhead = 160;
  const recent = new RecentRecords(64 * 1024 + 3 * overhead + 4096);
  // As a front end's receive buffer: one 64 KiB chunk holding several writes.
  const chunk = Buffer.alloc(64 * 1024, 7);
  recent.add(header(1, 4096), chunk.subarray(0, 4096));
  assert.equal(recent.bytesKept, 64 * 1024 + overhead, 'the first record cut from the chunk pins all of it');
  recent.add(header(2, 4096), chunk.subarray(4096, 8192));
  assert.equal(recent.bytesKept, 64 * 1024 + 2 * overhead, 'a second cut costs only its overhead');
  // A record in another chunk does not fit the 4 KiB left: the bound counts the chunk, not the cut.
  recent.add(header(3, 512), Buffer.alloc(8192, 9).subarray(0, 512));
  assert.equal(recent.size, 2, 'a small cut of another large buffer is refused');
  recent.add(header(3, 4096), Buffer.alloc(4096, 3), undefined, true);
  assert.equal(recent.size, 3, 'a copy costs its length');
  assert.equal(recent.take(seq(2), 3, 1 << 20, 10)[0]!.payload.buffer, chunk.buffer, 'kept without a copy');
  recent.dropUpTo(1);
  assert.equal(recent.bytesKept, 64 * 1024 + 2 * overhead + 4096, 'the chunk stays pinned by record 2');
  recent.dropUpTo(3);
  assert.equal(recent.bytesKept, 0, 'the last record cut from the chunk unpins it');
  recent.add(header(4, 512), Buffer.alloc(8192, 9).subarray(0, 512));
  assert.equal(recent.size, 1, 'room again');
});
