/**
 * One conformance suite for every BlockDevice (STYLE.md 7): file, memory and the fault wrapper
 * behave the same for reads, writes, zeroing and bounds; the file device creates sparse files,
 * reopens them, and refuses a file of the wrong size instead of resizing it.
 */
import assert from 'node:assert/strict';
import {
  closeSync,
  constants,
  existsSync,
  mkdtempSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { RemcopyError } from '../../src/core/errors.js';
import type { BlockDevice } from '../../src/storage/blockdev.js';
import {
  DIRECT_COPY_WRITE_MIN,
  FaultyBlockDevice,
  FileBlockDevice,
  MemBlockDevice,
} from '../../src/storage/blockdev.js';
import { openDirect } from '../../src/storage/direct-io.js';
import { isZero } from '../../src/storage/zeroes.js';

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

test('file device: a crash while creating leaves no short volume; a size the file system refuses leaves nothing', async () => {
  // What a crash between creating and sizing the file left: the half-made file under its own name.
  const p = join(dir, 'new.img');
  writeFileSync(`${p}.creating`, '');
  const d = FileBlockDevice.open(p, SIZE);
  assert.equal(d.created, true);
  assert.equal(statSync(p).size, SIZE);
  assert.equal(existsSync(`${p}.creating`), false);
  await d.close();
  // ext4 files end at 16 TiB: sizing one at 1 PiB fails, and no file is left to refuse later.
  const huge = join(dir, 'huge.img');
  assert.throws(
    () => FileBlockDevice.open(huge, 2 ** 50),
    (e: Error) => e instanceof RemcopyError && e.code === 'RC_ERR_IO' && e.message.includes(huge),
  );
  assert.equal(existsSync(huge), false);
  assert.equal(existsSync(`${huge}.creating`), false);
});

test('file device: zeroing writes only what is not zero already: a hole stays a hole, data is cleared', async () => {
  const p = join(dir, 'zero.img');
  const size = 64 * 1024 * 1024;
  const d = FileBlockDevice.open(p, size);
  const allocated = (): number => statSync(p).blocks * 512;
  // Data in two pieces of the range, the rest never written.
  d.writeSync(4096, Buffer.alloc(8192, 7));
  d.writeSync(40 * 1024 * 1024 + 5, Buffer.alloc(3, 9));
  await d.sync();
  const before = allocated();
  await d.zero(0, size);
  d.zeroSync(1024 * 1024, 16 * 1024 * 1024);
  await d.sync();
  assert.ok(allocated() <= before + 2 * 1024 * 1024, `${allocated()} bytes allocated, ${before} before`);
  for (const at of [0, 40 * 1024 * 1024]) assert.ok(isZero(await d.read(at, 1024 * 1024)), `zero at ${at}`);
  await d.close();
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

describe('readForCopy: the same bytes as read, around the page cache where it can', () => {
  const MiB = 1024 * 1024;
  const pattern = (len: number, seed: number): Buffer => {
    const b = Buffer.allocUnsafe(len);
    for (let i = 0; i < len; i++) b[i] = (i * 31 + seed) & 0xff;
    return b;
  };
  for (const [name, make] of Object.entries(makers)) {
    test(`${name}: aligned, unaligned and longer-than-one-buffer ranges, unsynced writes included`, async () => {
      const d = make();
      d.writeSync(0, pattern(SIZE, 7));
      d.writeSync(MiB + 100, Buffer.from('written after, not synced'));
      for (const [off, len] of [
        [0, 4096],
        [MiB, MiB],
        [0, SIZE],
        [4096 * 3, 2 * MiB + 8192],
        [MiB + 50, 1000],
        [SIZE - 4096, 4096],
      ] as const) {
        const want = await d.read(off, len);
        assert.ok(d.readForCopySync(off, len).equals(want), `sync ${off}+${len}`);
        assert.ok((await d.readForCopy(off, len)).equals(want), `async ${off}+${len}`);
      }
      assert.throws(() => d.readForCopySync(SIZE - 4096, 8192), /range/);
      assert.throws(() => d.writeForCopySync(SIZE - 4096, Buffer.alloc(8192)), /range/);
      const copied = pattern(MiB + 4096, 5);
      d.writeForCopySync(4096, copied);
      assert.ok((await d.read(4096, copied.length)).equals(copied), 'a copy write reads back');
      await d.close();
    });
  }

  test('file: aligned ranges are read and written with O_DIRECT where the file system allows it', async (t) => {
    const probe = openDirect(join(dir, 'probe'), constants.O_CREAT);
    if (probe === null) {
      // Not this machine's case (ext4); on tmpfs the I/O is buffered and must still be right.
      t.diagnostic('O_DIRECT refused here: checking the buffered fallback only');
    } else closeSync(probe);
    const direct = probe !== null;
    const d = FileBlockDevice.open(join(dir, `direct${n++}.img`), SIZE);
    // The first block stays a hole: a direct read of a hole skips the kernel's alignment check, so
    // the buffer must not be probed there (its data blocks would then refuse it with EINVAL).
    d.writeSync(MiB, pattern(SIZE - MiB, 3));
    const sync = d.readForCopySync(MiB, 2 * MiB);
    // A sync read while an async one is on the pool: each has its own buffer.
    const pending = d.readForCopy(MiB, 2 * MiB + 4096);
    const during = d.readForCopySync(2 * MiB, MiB);
    const want = await d.read(0, SIZE);
    assert.ok(sync.equals(want.subarray(MiB, 3 * MiB)));
    assert.ok(during.equals(want.subarray(2 * MiB, 3 * MiB)));
    assert.ok((await pending).equals(want.subarray(MiB, 3 * MiB + 4096)));
    d.readForCopySync(100, 4096);
    assert.equal(d.directBytes.read, direct ? 5 * MiB + 4096 : 0, 'an unaligned range is read buffered');

    // Copy writes: direct over cached pages, then buffered writes over part of them; every way of
    // reading sees the last write of each byte.
    const copy = pattern(2 * MiB, 11);
    d.writeForCopySync(MiB - 4096, copy);
    d.writeSync(MiB, Buffer.from('buffered after the direct write'));
    d.writeForCopySync(300, Buffer.from('unaligned: buffered'));
    const small = pattern(DIRECT_COPY_WRITE_MIN - 4096, 13); // aligned, but too small to gain
    d.writeForCopySync(SIZE - small.length, small);
    const expect = Buffer.from(want);
    copy.copy(expect, MiB - 4096);
    small.copy(expect, SIZE - small.length);
    expect.write('buffered after the direct write', MiB);
    expect.write('unaligned: buffered', 300);
    assert.ok((await d.read(0, SIZE)).equals(expect));
    assert.ok(d.readForCopySync(0, SIZE).equals(expect));
    assert.deepEqual(d.directBytes.written, direct ? 2 * MiB : 0);
    await d.close();
    const again = FileBlockDevice.open(d.path, SIZE);
    assert.ok((await again.read(0, SIZE)).equals(expect), 'after close and reopen');
    await again.close();
    assert.deepEqual(
      readdirSync(dir).filter((f) => f.includes('probe') && f !== 'probe'),
      [],
      'no probe file left behind',
    );
  });

  test('file: a volume whose size is not a multiple of the block reads and writes its tail buffered', async () => {
    const odd = 2 * MiB + 512;
    const d = FileBlockDevice.open(join(dir, `odd${n++}.img`), odd);
    d.writeForCopySync(0, pattern(odd, 9));
    const want = await d.read(0, odd);
    assert.ok(want.equals(pattern(odd, 9)));
    assert.ok(d.readForCopySync(0, odd).equals(want));
    assert.ok(d.readForCopySync(2 * MiB, 512).equals(want.subarray(2 * MiB)));
    assert.ok((await d.readForCopy(0, 2 * MiB)).equals(want.subarray(0, 2 * MiB)));
    await d.close();
  });
});
