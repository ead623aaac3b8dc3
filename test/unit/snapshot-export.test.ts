/**
 * Proves that a promoted volume's snapshot export (`VOLUME@N`, src/node/snapshot-export.ts) serves
 * the snapshot's image while hosts write the volume: no apply gate holds those writes back, so a
 * write may preserve and overwrite a chunk while a read of the export has planned it from the live
 * volume and not read it yet. The read returns the snapshot's bytes; the writes land, in the order
 * they were submitted, each marked in the volume's bitmap and preserved before it is written. A
 * held device read orders the steps, no timing.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { SnapshotExport } from '../../src/node/snapshot-export.js';
import { NodeVolume } from '../../src/node/volume-export.js';
import type { WritePath } from '../../src/node/write-path.js';
import { FileBlockDevice } from '../../src/storage/blockdev.js';
import { SNAPSHOT_CHUNK_BYTES_DEFAULT, VolumeSnapshots } from '../../src/storage/snapshots.js';
import { holdRead } from '../../src/testing/hold-read.js';

const CHUNK = SNAPSHOT_CHUNK_BYTES_DEFAULT;
const SIZE = 16 * CHUNK;
const root = fs.mkdtempSync(join(tmpdir(), 'rc-snap-export-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));

test('a promoted volume written during a read of its snapshot export: the read is the snapshot, the writes land in order', async () => {
  const live = FileBlockDevice.open(join(root, 'db.img'), SIZE);
  live.writeSync(0, Buffer.alloc(SIZE, 0x11));
  await live.sync();
  const events: string[] = [];
  const snapshots = VolumeSnapshots.open(join(root, 'snaps'), live, CHUNK, {
    onStep: (step) => void events.push(step),
  });
  await snapshots.create(1);
  // A promoted volume never reaches the write path; its writes are direct, tracked in a bitmap.
  const volume = new NodeVolume(
    'db',
    live,
    { kind: 'promoted', group: 'g' },
    undefined as unknown as WritePath,
  );
  volume.snapshots = snapshots;
  volume.tracked = { mark: async (v, offset, length) => void events.push(`mark ${v} ${offset}+${length}`) };
  const writeSync = live.writeSync.bind(live);
  live.writeSync = (offset, data) => {
    events.push(`write ${offset}+${data.length}`);
    writeSync(offset, data);
  };
  const exp = new SnapshotExport(volume, snapshots, 1);
  try {
    assert.equal(volume.gate, undefined, 'no apply gate on a promoted volume');
    // db@1 is all on the live volume: one run, held before the device read.
    const held = holdRead(live, 0);
    const reading = exp.read(0, SIZE);
    await held.reached;
    const a = 5 * CHUNK + 100; // chunks 5 and 6
    const b = 5 * CHUNK + 200; // inside a: submitted after it, so it lands after it
    const writes = [
      volume.write(a, Buffer.alloc(CHUNK, 0x33), {}),
      volume.write(b, Buffer.alloc(1000, 0x44), {}),
    ];
    await Promise.all(writes);
    held.open();
    const image = await reading;
    assert.ok(
      image.equals(Buffer.alloc(SIZE, 0x11)),
      'the read in flight returns the snapshot, not the writes',
    );
    assert.deepEqual(events.slice(1), [
      `mark db ${a}+${CHUNK}`,
      'preserve:data-written',
      'preserve:data-synced',
      `write ${a}+${CHUNK}`,
      `mark db ${b}+1000`,
      `write ${b}+1000`,
    ]);
    const want = Buffer.alloc(SIZE, 0x11);
    want.fill(0x33, a, a + CHUNK);
    want.fill(0x44, b, b + 1000);
    assert.ok(live.readSync(0, SIZE).equals(want), 'both writes landed, the later one on top');
    assert.ok((await exp.read(0, SIZE)).equals(Buffer.alloc(SIZE, 0x11)), 'db@1 after the writes');
  } finally {
    await snapshots.close();
    await live.close();
  }
});
