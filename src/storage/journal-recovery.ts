/**
 * Journal recovery: decides, at open, which bytes of the segment files are records and which are a
 * torn tail to drop, and refuses a journal with a corrupt record in the middle.
 *
 * Called once by Journal.open (journal.ts), which receives every valid record through `onRecord`
 * in append order, builds its index and checks the sequence rules (and may refuse too).
 *
 * The rule (DESIGN.md §3.2: no acknowledged write exists only in memory, and a bad record is never
 * loaded):
 *
 *   seg 1: [rec][rec][rec]            every byte a valid record
 *   seg 2: [rec][rec][XXXX...]        first bad byte at P: look for a later valid record
 *          - found (later in seg 2 at any offset, or in seg 3...)  -> refuse, RC_ERR_JOURNAL_CORRUPT
 *          - none                      -> torn tail: truncate seg 2 at P, delete later segments
 *
 * "Bad" is anything decodeRecord rejects: an incomplete record, a checksum mismatch, garbage, or
 * zero bytes (a preallocated or sparse tail reads as zeroes: end of data). Segments are
 * preallocated, so every segment but the last normally ends in zeroes: an all-zero tail of a
 * segment that others follow is the end of its records, not corruption (trimmed at open). It cannot
 * hide lost records: the journal checks that every group's seqs continue across segments. A torn tail can only
 * come from a crash during an append, which writes at the end, so it is always after the last
 * valid record of the whole journal, possibly spanning into a segment created by that append.
 *
 * Segments are recycled (journal.ts): a reused file holds records of its previous life after the
 * new ones. Ordinals only grow, so a record whose ordinal is not above the previous one is stale
 * content (reason 'stale'): the end of the data, never loaded.
 *
 * A "later valid record" is one that decodes with a good checksum AND has an ordinal above the
 * last good record's: every record appended after it has one, so real corruption is always caught,
 * while an old record image that happens to sit inside a payload (a volume holding journal bytes)
 * does not make a torn tail look like corruption.
 *
 * The durable point (durable-point.ts) refines the rule when the journal has one. A power loss can
 * leave a hole that later valid records follow (dirty pages reach the disk in any order), but only
 * where no completed fdatasync reached; so, for bad bytes at position P:
 *   - P below the durable point: they were durable once: refuse, whether or not records follow;
 *   - P at or past it: a torn tail or a power-loss hole: drop P and everything after it (the
 *     valid records past a hole were never reported durable), and log what was dropped;
 *   - no durable point (a journal from before it existed), or no restart of the machine since the
 *     journal was last opened (the page cache kept every byte, so no power loss made the hole):
 *     the rule above, refuse if a valid record follows.
 * A journal whose records end before the durable point, in its segment, lost durable records:
 * refused too.
 *
 * A zero tail is no proof of a segment's end once power losses count: the pages of its last records
 * may not have reached the disk while the next segment's did. So a segment the journal moves on from
 * gets an end mark right after its last record (record.ts), and from the durable point's
 * markedFromSegNo on, a segment that others follow ends at its mark; without one, its end is bad
 * bytes like any other (a hole past the durable point: dropped with everything after it). Older
 * segments keep the zero-tail rule.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RemcopyError } from '../core/errors.js';
import type { RecordHeader } from '../core/types.js';
import { type JournalPosition, positionBefore, type RecoveryPoint } from './durable-point.js';
import {
  decodeRecord,
  isSegmentEnd,
  peekOrdinal,
  peekRecordBytes,
  RECORD_MAGIC_BYTES,
  SEGMENT_END_BYTES,
} from './record.js';
import type { LiveSegments } from './journal-state.js';
import { isZero } from './zeroes.js';

export type LogFn = (level: 'info' | 'warn' | 'error', msg: string, fields?: object) => void;

const SEGMENT_RE = /^seg-(\d{16})\.log$/;
const FREE_RE = /^free-(\d{16})\.log$/;

export function segmentFileName(no: number): string {
  return `seg-${String(no).padStart(16, '0')}.log`;
}

/** A released segment kept for reuse: its blocks are allocated, so appends rewrite, not allocate. */
export function freeSegmentFileName(no: number): string {
  return `free-${String(no).padStart(16, '0')}.log`;
}

/** Numbers of the free (recyclable) segment files in `dir`. */
export function listFreeSegments(dir: string): number[] {
  const nos: number[] = [];
  for (const name of fs.readdirSync(dir)) {
    const m = FREE_RE.exec(name);
    if (m) nos.push(Number(m[1]));
  }
  return nos.sort((a, b) => a - b);
}

/** Segment numbers found in `dir`, ascending. */
export function listSegments(dir: string): number[] {
  const nos: number[] = [];
  for (const name of fs.readdirSync(dir)) {
    const m = SEGMENT_RE.exec(name);
    const no = m ? Number(m[1]) : -1;
    if (Number.isSafeInteger(no) && no >= 0) nos.push(no);
  }
  return nos.sort((a, b) => a - b);
}

/**
 * Refuses a journal one of whose segment files is gone while it may hold records not released:
 * listed as live by the state file, or made after it, at or below the durable point's segment
 * (journal-state.ts). Such a file is deleted only behind the journal's back, and going on would
 * lose its records and reuse their sequence numbers. A segment past the durable point may be
 * missing after a power loss (its directory entry was never synced): not judged.
 */
export function checkSegmentsPresent(
  dir: string,
  nos: readonly number[],
  segments: LiveSegments | null,
  durableSegNo: number,
): void {
  if (segments === null) return;
  const present = new Set(nos);
  const missing: number[] = [];
  for (const no of segments.live) if (no <= durableSegNo && !present.has(no)) missing.push(no);
  for (let no = segments.next; no <= durableSegNo; no++) if (!present.has(no)) missing.push(no);
  if (missing.length === 0) return;
  const names = missing.slice(0, 4).map(segmentFileName).join(', ');
  const more = missing.length > 4 ? ` and ${missing.length - 4} more` : '';
  throw new RemcopyError(
    'RC_ERR_JOURNAL_CORRUPT',
    `${dir}: journal segment ${missing.length === 1 ? 'file' : 'files'} ${names}${more} ` +
      `${missing.length === 1 ? 'is' : 'are'} missing but may hold records not released (listed ` +
      `by the state file, or at or below the durable point); refusing to open ` +
      `the journal, which would lose them and reuse their sequence numbers (restore the file, or ` +
      `remove the journal directory and resync the groups it held)`,
  );
}

export interface RecoveredSegment {
  readonly no: number;
  /** Bytes of whole valid records: where the next append goes. */
  readonly size: number;
}

export interface RecoveryResult {
  /** Segments kept, ascending; the last one is the active segment. */
  readonly segments: RecoveredSegment[];
  /** Bytes dropped as a torn tail (0 when the journal ended cleanly). */
  readonly droppedBytes: number;
}

/**
 * Scans the segments `nos` of `dir` in order, calling `onRecord` for every valid record, truncates a
 * torn tail (or a power-loss hole past `durable`), and throws RC_ERR_JOURNAL_CORRUPT for bad bytes
 * below `durable`, or, when `durable` is null (unknown), for a corrupt record followed by a valid one.
 */
export function recoverSegments(
  dir: string,
  nos: readonly number[],
  onRecord: (h: RecordHeader, segNo: number, offset: number, bytes: number) => void,
  log: LogFn,
  durable: RecoveryPoint | null,
): RecoveryResult {
  const segments: RecoveredSegment[] = [];
  let lastOrdinal = -1;
  for (let i = 0; i < nos.length; i++) {
    const no = nos[i]!;
    const file = path.join(dir, segmentFileName(no));
    const buf = readSegment(file);
    let pos = 0;
    let reason = '';
    while (pos < buf.length) {
      const r = decodeRecord(buf, pos);
      if (!r.ok) {
        reason = r.reason;
        break;
      }
      if (r.header.ordinal <= lastOrdinal) {
        // An older record: stale content of a recycled segment, past the end of the new records.
        reason = 'stale';
        break;
      }
      onRecord(r.header, no, pos, r.bytes);
      lastOrdinal = r.header.ordinal;
      pos += r.bytes;
    }
    const last = i === nos.length - 1;
    // From markedFromSegNo on, every segment the journal moved on from ends in an end mark.
    const marked = durable !== null && no >= durable.markedFromSegNo;
    if (isSegmentEnd(buf, pos, no)) {
      if (!last) trimTail(file, pos + SEGMENT_END_BYTES);
      segments.push({ no, size: pos });
      continue;
    }
    if (pos === buf.length && (last || !marked)) {
      segments.push({ no, size: pos });
      continue;
    }
    if (!last && !marked && isZero(buf, pos)) {
      // Unmarked (older) segments: a zero tail before the next segment is the end of the records.
      if (durable !== null && durable.point.segNo === no) {
        refuseBelowDurable(file, { segNo: no, offset: pos }, reason, durable.point);
      }
      trimTail(file, pos);
      segments.push({ no, size: pos });
      continue;
    }
    reason ||= 'no end mark';
    if (durable !== null) refuseBelowDurable(file, { segNo: no, offset: pos }, reason, durable.point);
    // A whole older record where the next one would be, past the durable point: the records end
    // here and the segment's previous life follows. Nothing written later can lie beyond it (a
    // record lost to a power loss past the durable point is dropped, with those after it, either
    // way), and what does lie beyond is old payloads, whose bytes are the hosts': one holding an
    // image of a record from some other journal made a clean journal look corrupt.
    const endsAtOldRecord = reason === 'stale' && durable !== null;
    const follows = endsAtOldRecord ? null : findValidAfter(dir, nos.slice(i), buf, pos, lastOrdinal);
    if (follows !== null && (durable === null || durable.sameBoot)) {
      const why = durable === null ? '' : ' (the machine has not restarted since: no power loss made it)';
      throw new RemcopyError(
        'RC_ERR_JOURNAL_CORRUPT',
        `${file}: the record at byte offset ${pos} is invalid (${reason}) but a valid record follows ` +
          `at byte offset ${follows.offset} of ${follows.file}${why}; refusing to open the journal ` +
          `(restore it or remove the journal directory and resync the groups it held)`,
      );
    }
    const droppedBytes = dropTornTail(dir, nos.slice(i), buf, pos, reason, log, follows);
    segments.push({ no, size: pos });
    return { segments, droppedBytes };
  }
  // Records ending early in the segment of the durable point were lost. (A segment missing as a whole
  // is judged before: checkSegmentsPresent.)
  const last = segments[segments.length - 1];
  if (durable !== null && last !== undefined && last.no === durable.point.segNo) {
    const end = { segNo: last.no, offset: last.size };
    refuseBelowDurable(
      path.join(dir, segmentFileName(last.no)),
      end,
      'the end of the records',
      durable.point,
    );
  }
  return { segments, droppedBytes: 0 };
}

/** Bad bytes (or the end of the records) at `at`, below the durable point, mean lost durable records. */
function refuseBelowDurable(
  file: string,
  at: JournalPosition,
  reason: string,
  durable: JournalPosition,
): void {
  if (!positionBefore(at, durable)) return;
  throw new RemcopyError(
    'RC_ERR_JOURNAL_CORRUPT',
    `${file}: byte offset ${at.offset} (${reason}) lies below the journal's durable point (segment ` +
      `${durable.segNo}, byte offset ${durable.offset}): records that were synced are damaged or ` +
      `missing; refusing to open the journal (restore it or remove the journal directory and resync ` +
      `the groups it held)`,
  );
}

function readSegment(file: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (e) {
    throw new RemcopyError(
      'RC_ERR_JOURNAL_IO',
      `${file}: cannot read journal segment: ${(e as Error).message}`,
    );
  }
}

/** The first valid record after the bad bytes at `pos` of segment nos[0], or null. */
function findValidAfter(
  dir: string,
  nos: readonly number[],
  buf: Buffer,
  pos: number,
  lastOrdinal: number,
): { file: string; offset: number } | null {
  for (let i = 0; i < nos.length; i++) {
    const file = path.join(dir, segmentFileName(nos[i]!));
    const b = i === 0 ? buf : readSegment(file);
    const at = findValidRecord(b, i === 0 ? pos + 1 : 0, lastOrdinal);
    if (at >= 0) return { file, offset: at };
  }
  return null;
}

/**
 * Offset of the first valid record at or after `from` with ordinal > `ordinalAbove`, or -1. The
 * ordinal is read before the checksum is computed: the rest of a recycled segment holds old records
 * (lower ordinals), and checksumming each over its claimed length cost minutes (hours when payloads
 * were full of record-like bytes) at open.
 */
export function findValidRecord(buf: Buffer, from: number, ordinalAbove: number): number {
  let at = buf.indexOf(RECORD_MAGIC_BYTES, from);
  while (at >= 0) {
    if (peekRecordBytes(buf, at) > 0 && peekOrdinal(buf, at) > ordinalAbove) {
      const r = decodeRecord(buf, at);
      if (r.ok && r.header.ordinal > ordinalAbove) return at;
    }
    at = buf.indexOf(RECORD_MAGIC_BYTES, at + 1);
  }
  return -1;
}

/** Truncates segment nos[0] at `pos`, deletes the segments after it; returns the bytes dropped. */
function dropTornTail(
  dir: string,
  nos: readonly number[],
  buf: Buffer,
  pos: number,
  reason: string,
  log: LogFn,
  follows: { file: string; offset: number } | null,
): number {
  const file = path.join(dir, segmentFileName(nos[0]!));
  let dropped = buf.length - pos;
  let allZero = isZero(buf, pos);
  const deleted: string[] = [];
  try {
    for (const no of nos.slice(1)) {
      const later = path.join(dir, segmentFileName(no));
      const b = readSegment(later);
      dropped += b.length;
      allZero &&= isZero(b);
      fs.unlinkSync(later);
      deleted.push(later);
    }
    const fd = fs.openSync(file, 'r+');
    try {
      fs.ftruncateSync(fd, pos);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  } catch (e) {
    if (e instanceof RemcopyError) throw e;
    throw new RemcopyError(
      'RC_ERR_JOURNAL_IO',
      `${file}: cannot drop the torn tail: ${(e as Error).message}`,
    );
  }
  const fields = { segment: file, offset: pos, bytesDropped: dropped, reason, segmentsDeleted: deleted };
  if (follows !== null) {
    log(
      'warn',
      'journal: hole past the durable point (a power loss leaves one); it and the records after it dropped',
      {
        ...fields,
        nextValidRecord: `${follows.file} at byte offset ${follows.offset}`,
      },
    );
  } else if (allZero || reason === 'stale')
    log('info', 'journal: unused tail after the last record dropped', fields);
  else log('warn', 'journal: torn tail after the last valid record dropped', fields);
  return dropped;
}

/** Cut the unused preallocated tail of a full segment, so that only the last one has one. */
function trimTail(file: string, size: number): void {
  try {
    fs.truncateSync(file, size);
  } catch (e) {
    throw new RemcopyError(
      'RC_ERR_JOURNAL_IO',
      `${file}: cannot trim the unused tail: ${(e as Error).message}`,
    );
  }
}
