/**
 * A group's dirty bitmaps on disk (DESIGN.md §3.6): one file per group, `<dataDir>/bitmaps/<group>.bmp`,
 * replaced atomically and durably (tmp, fsync, rename, fsync dir), so a crash leaves the old or the
 * new bitmap, never a mix.
 *
 *   "RCBM" | version u32 | header length u32 | header (JSON: group, chunkBytes, volumes with their
 *   size and bitmap byte length) | the bitmaps, one after another | crc32c u32 of all before it
 *
 * A file that fails its checksum or does not parse is refused with a message naming it: a node does
 * not guess which chunks are dirty. A file written with another chunk size is converted: every old
 * dirty chunk marks the new chunks it overlaps (never fewer bytes dirty).
 */
import * as fs from 'node:fs';
import { crc32c } from '@node-rs/crc32';
import { DirtyBitmap } from '../core/dirty-bitmap.js';
import { RemcopyError } from '../core/errors.js';
import { writeFileDurable } from './state-file.js';

const MAGIC = 0x4d424352; // "RCBM" little-endian
const VERSION = 1;

export interface VolumeGeometry {
  readonly name: string;
  readonly sizeBytes: number;
}

interface Header {
  group: string;
  chunkBytes: number;
  volumes: { name: string; sizeBytes: number; bytes: number }[];
}

export function encodeBitmaps(
  group: string,
  chunkBytes: number,
  maps: ReadonlyMap<string, DirtyBitmap>,
): Buffer {
  const volumes = [...maps].map(([name, bm]) => {
    if (bm.chunkBytes !== chunkBytes)
      throw new Error(`bitmap of ${name}: chunk ${bm.chunkBytes}, not ${chunkBytes}`);
    return { name, sizeBytes: bm.sizeBytes, bits: bm.toBytes() };
  });
  const header: Header = {
    group,
    chunkBytes,
    volumes: volumes.map((v) => ({ name: v.name, sizeBytes: v.sizeBytes, bytes: v.bits.length })),
  };
  const h = Buffer.from(JSON.stringify(header), 'utf8');
  const pre = Buffer.alloc(12);
  pre.writeUInt32LE(MAGIC, 0);
  pre.writeUInt32LE(VERSION, 4);
  pre.writeUInt32LE(h.length, 8);
  const body = Buffer.concat([pre, h, ...volumes.map((v) => v.bits)]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32LE(crc32c(body), 0);
  return Buffer.concat([body, crc]);
}

/**
 * The bitmaps in `buf` for `volumes` at `chunkBytes`. A volume the file does not have starts clean
 * (it joined the group later); a volume whose size changed is an error.
 */
export function decodeBitmaps(
  file: string,
  buf: Buffer,
  group: string,
  chunkBytes: number,
  volumes: readonly VolumeGeometry[],
): Map<string, DirtyBitmap> {
  const bad = (why: string): RemcopyError => new RemcopyError('RC_ERR_STATE', `${file}: ${why}`);
  if (buf.length < 16) throw bad(`${buf.length} bytes is too short for a bitmap file`);
  if (buf.readUInt32LE(0) !== MAGIC) throw bad('not a remcopy bitmap file (bad magic)');
  if (buf.readUInt32LE(4) !== VERSION)
    throw bad(`bitmap file version ${buf.readUInt32LE(4)} is not ${VERSION}`);
  if (crc32c(buf.subarray(0, buf.length - 4)) !== buf.readUInt32LE(buf.length - 4)) {
    throw bad('checksum mismatch: the bitmap cannot be trusted (a resync of the whole volumes is needed)');
  }
  const hLen = buf.readUInt32LE(8);
  if (12 + hLen > buf.length - 4) throw bad('header runs past the end');
  let header: Header;
  try {
    header = JSON.parse(buf.subarray(12, 12 + hLen).toString('utf8')) as Header;
  } catch (e) {
    throw bad(`header is not JSON (${(e as Error).message})`);
  }
  if (header.group !== group) throw bad(`holds group ${header.group}, not ${group}`);
  const out = new Map<string, DirtyBitmap>();
  let at = 12 + hLen;
  const stored = new Map<string, DirtyBitmap>();
  for (const v of header.volumes) {
    if (at + v.bytes > buf.length - 4) throw bad(`bitmap of ${v.name} runs past the end`);
    stored.set(v.name, new DirtyBitmap(v.sizeBytes, header.chunkBytes, buf.subarray(at, at + v.bytes)));
    at += v.bytes;
  }
  for (const v of volumes) {
    const old = stored.get(v.name);
    if (old !== undefined && old.sizeBytes !== v.sizeBytes) {
      throw bad(`${v.name} was ${old.sizeBytes} bytes, is ${v.sizeBytes} now`);
    }
    if (old === undefined) out.set(v.name, new DirtyBitmap(v.sizeBytes, chunkBytes));
    else if (old.chunkBytes === chunkBytes) out.set(v.name, old);
    else {
      const bm = new DirtyBitmap(v.sizeBytes, chunkBytes);
      for (let c = old.nextDirty(0); c >= 0; c = old.nextDirty(c + 1)) {
        const r = old.range(c);
        bm.mark(r.offset, r.length);
      }
      out.set(v.name, bm);
    }
  }
  return out;
}

/** The group's bitmaps from `file`, or clean ones when there is no file. */
export function readBitmapFile(
  file: string,
  group: string,
  chunkBytes: number,
  volumes: readonly VolumeGeometry[],
): Map<string, DirtyBitmap> {
  let buf: Buffer;
  try {
    buf = fs.readFileSync(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    return new Map(volumes.map((v) => [v.name, new DirtyBitmap(v.sizeBytes, chunkBytes)]));
  }
  return decodeBitmaps(file, buf, group, chunkBytes, volumes);
}

export function writeBitmapFile(
  file: string,
  group: string,
  chunkBytes: number,
  maps: ReadonlyMap<string, DirtyBitmap>,
): Promise<void> {
  return writeFileDurable(file, encodeBitmaps(group, chunkBytes, maps));
}
