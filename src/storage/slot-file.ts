/**
 * Small metadata files kept as two checksummed slots, written in turn (the journal's durable point,
 * durable-point.ts; the activity log, activity-log.ts): a torn write spoils at most the slot it
 * went to, and the valid slot with the higher counter holds the file's value.
 */
import * as fs from 'node:fs';
import { type ErrorCode, RemcopyError } from '../core/errors.js';

/** Byte offsets of a file's two slots (in different pages, so one torn write spoils one). */
export type SlotOffsets = readonly [number, number];

export type SlotFileRead<S> =
  | { readonly state: 'missing' }
  | { readonly state: 'unreadable' }
  | { readonly state: 'ok'; readonly slot: S };

/** Where the slot with `counter` goes: the two offsets in turn. */
export function slotOffset(offsets: SlotOffsets, counter: number): number {
  return offsets[counter % 2]!;
}

/**
 * Reads `file` and returns its valid slot with the higher counter; `decode` returns null for a slot
 * that is not valid (bad magic, checksum or fields). 'missing' when there is no file; a file that
 * cannot be read (a directory, no permission) throws `ioCode`, naming it.
 */
export function readBestSlot<S extends { readonly counter: number }>(
  file: string,
  offsets: SlotOffsets,
  decode: (buf: Buffer, at: number) => S | null,
  ioCode: ErrorCode,
): SlotFileRead<S> {
  let buf: Buffer;
  try {
    buf = fs.readFileSync(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { state: 'missing' };
    throw new RemcopyError(ioCode, `${file}: ${(e as Error).message}`);
  }
  let best: S | null = null;
  for (const at of offsets) {
    const s = decode(buf, at);
    if (s !== null && (best === null || s.counter > best.counter)) best = s;
  }
  return best === null ? { state: 'unreadable' } : { state: 'ok', slot: best };
}
