/**
 * One conformance suite for every BlockDevice (STYLE.md 7): file, memory and the fault wrapper
 * behave the same for reads, writes, zeroing and bounds; the file device creates sparse files,
 * reopens them, and refuses a file of the wrong size instead of resizing it.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import type { BlockDevice } from '../../src/storage/blockdev.js';
import { FaultyBlockDevice, FileBlockDevice, MemBlockDevice } from '../../src/storage/blockdev.js';

const dir = mkdtempSync(join(tmpdir(), 'rc-bdev-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const SIZE = 3 * 1024 * 1024 + 4096;
let n = 0;

const makers: Record<string, () => BlockDevice> = {
  file: () => FileBlockDevice.open(join(dir, `v${n++}.img`), SIZE),
  mem: () => new MemBlockDevice(SIZE),
  faulty: () => new FaultyBlockDevice(new MemBlockDevice(SIZE)),
};

for (const [name, make] of Object.entries(makers)) {
  describe(`BlockDevice conformance: ${name}`, () => {
    test('a new device reads as zeroes', async () => {
      const d = make();
      assert.ok((await d.read(SIZE - 8192, 8192)).equals(Buffer.alloc(8192)));
      await d.close();
    });
    test('writes read back, at the edges too', async () => {
      const d = make();
      const a = Buffer.alloc(5000, 0xab);
      d.writeSync(0, a);
      d.writeSync(SIZE - 3, Buffer.from([1, 2, 3]));
      assert.ok((await d.read(0, 5000)).equals(a));
      assert.deepEqual([...(await d.read(SIZE - 4, 4))], [0, 1, 2, 3]);
      await d.sync();
      await d.close();
    });
    test('zeroing a range larger than the zero chunk clears exactly that range', async () => {
      const d = make();
      d.writeSync(0, Buffer.alloc(SIZE, 0x11));
      d.zeroSync(100, 2 * 1024 * 1024 + 7);
      const all = await d.read(0, SIZE);
      assert.equal(all[99], 0x11);
      assert.ok(all.subarray(100, 100 + 2 * 1024 * 1024 + 7).equals(Buffer.alloc(2 * 1024 * 1024 + 7)));
      assert.equal(all[100 + 2 * 1024 * 1024 + 7], 0x11);
      await d.close();
    });
    test('out-of-range access is a programmer error and changes nothing', async () => {
      const d = make();
      assert.throws(() => d.writeSync(SIZE - 1, Buffer.alloc(2, 9)), /range/);
      assert.throws(() => d.zeroSync(-1, 1), /range/);
      assert.throws(() => d.read(SIZE, 1), /range/);
      assert.deepEqual([...(await d.read(SIZE - 1, 1))], [0]);
      await d.close();
    });
  });
}

test('file device: created sparse, reopened with its data, wrong size refused', async () => {
  const p = join(dir, 'keep.img');
  const d = FileBlockDevice.open(p, SIZE);
  d.writeSync(4096, Buffer.from('hello'));
  await d.close();
  assert.ok(statSync(p).blocks * 512 < SIZE, 'sparse file');
  const again = FileBlockDevice.open(p, SIZE);
  assert.equal((await again.read(4096, 5)).toString(), 'hello');
  await again.close();
  assert.throws(
    () => FileBlockDevice.open(p, SIZE * 2),
    (e: Error & { code?: string }) => {
      return e.message.includes('RC_ERR_VOLUME_SIZE') && e.message.includes('refusing to resize');
    },
  );
  assert.equal(statSync(p).size, SIZE, 'not resized');
  writeFileSync(join(dir, 'small.img'), 'x');
  assert.throws(() => FileBlockDevice.open(join(dir, 'small.img'), SIZE), /RC_ERR_VOLUME_SIZE/);
});

test('fault wrapper fails the armed operation only', async () => {
  const d = new FaultyBlockDevice(new MemBlockDevice(SIZE));
  d.failNext('write', 'EIO');
  assert.throws(() => d.writeSync(0, Buffer.alloc(1)), /EIO/);
  d.writeSync(0, Buffer.alloc(1, 5));
  d.failNext('sync', 'ENOSPC');
  await assert.rejects(d.sync(), /ENOSPC/);
  await d.sync();
  assert.deepEqual([...(await d.read(0, 1))], [5]);
});
