/**
 * What the journal knows about each group: in memory, the index of its retained records
 * (GroupIndex); on disk, the state file, which holds what must survive after every record of a
 * group has been released and its segments deleted, so that a restart still knows where each
 * sequence continues.
 *
 * Owned by journal.ts, which reads the state file once at open and writes it (atomically: tmp +
 * fsync + rename + fsync dir) before it deletes any segment whose records it covers; also on close
 * and resumeGroup, never just because of a release (replaying a released record is harmless). A state file that does
 * not parse or has an out-of-range value is refused (RC_ERR_JOURNAL_CORRUPT): guessing would
 * reuse sequence numbers.
 *
 * Format (`state.json`, utf8 JSON):
 *
 *   { "version": 1,
 *     "ordinalMax": 1234,          highest ordinal appended when the file was written
 *     "writeTimeUsMax": 1700...,   highest effective write time appended when the file was written
 *     "groups": { "g-db": { "releasedSeq": 17,     per group: every seq <= releasedSeq is released
 *                           "lastMarker": 3 } },   the highest marker number ever appended to it
 *                                                  (written when not 0; DESIGN.md §3.4)
 *     "segments": { "live": [4, 6, 7],  segments that may hold records not released under this file:
 *                                       those with unreleased records and the active one
 *                   "next": 8 } }       every segment numbered from here on was made after the file
 *
 * ordinalMax / writeTimeUsMax are taken over everything appended so far, which includes every
 * released record: a restart resumes above them even when no record is left on disk.
 *
 * `segments` lets open notice a segment file lost behind the journal's back (journal.ts): no listed
 * segment, and none numbered from `next` on, is ever deleted before a later state file stops
 * listing it, so one of them missing (at or below the durable point) lost records. A file without
 * `segments` (written before it existed) says nothing about them; no file at all means no segment
 * was ever deleted.
 */
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { RemcopyError } from '../core/errors.js';

export const STATE_FILE_NAME = 'state.json';
export const STATE_TMP_FILE_NAME = 'state.json.tmp';
const STATE_VERSION = 1;
/** Bytes of a state file, at most: far above any real one (a few bytes per group). */
export const STATE_FILE_BYTES_MAX = 16 * 1024 * 1024;

export interface JournalState {
  readonly ordinalMax: number;
  readonly writeTimeUsMax: number;
  /** Per group, the highest released seq. */
  readonly releasedSeq: ReadonlyMap<string, number>;
  /**
   * Per group, the highest marker number appended (groups without a marker are absent). A segment
   * holding a marker is deleted only after a state file covering it is written, so this survives.
   */
  readonly lastMarker: ReadonlyMap<string, number>;
  /** The segments that must still exist; null for a file from before it was written. */
  readonly segments: LiveSegments | null;
}

/** Segments that may hold records the state file does not release. */
export interface LiveSegments {
  /** Made before the file: these (ascending). */
  readonly live: readonly number[];
  /** Every segment numbered from here on was made after the file. */
  readonly next: number;
}

/** No state file: no segment was ever deleted (that happens only after a state file is written). */
export const EMPTY_STATE: JournalState = {
  ordinalMax: 0,
  writeTimeUsMax: 0,
  releasedSeq: new Map(),
  lastMarker: new Map(),
  segments: { live: [], next: 1 },
};

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/** Parses and validates state file text; a string error names what is wrong. */
export function parseState(text: string): JournalState | string {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    return `not JSON: ${(e as Error).message}`;
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) return 'not a JSON object';
  const d = doc as Record<string, unknown>;
  if (d['version'] !== STATE_VERSION) return `unknown version ${JSON.stringify(d['version'])}`;
  if (!isCount(d['ordinalMax'])) return 'ordinalMax is not a non-negative integer';
  if (!isCount(d['writeTimeUsMax'])) return 'writeTimeUsMax is not a non-negative integer';
  const groups = d['groups'];
  if (typeof groups !== 'object' || groups === null || Array.isArray(groups))
    return 'groups is not an object';
  const releasedSeq = new Map<string, number>();
  const lastMarker = new Map<string, number>();
  for (const [name, g] of Object.entries(groups)) {
    if (typeof g !== 'object' || g === null) return `group ${JSON.stringify(name)} is not an object`;
    const r = (g as Record<string, unknown>)['releasedSeq'];
    if (!isCount(r)) return `group ${JSON.stringify(name)}: releasedSeq is not a non-negative integer`;
    releasedSeq.set(name, r);
    const m = (g as Record<string, unknown>)['lastMarker'];
    if (m !== undefined && !isCount(m)) {
      return `group ${JSON.stringify(name)}: lastMarker is not a non-negative integer`;
    }
    if (m !== undefined && m > 0) lastMarker.set(name, m);
  }
  const segments = parseSegments(d['segments']);
  if (typeof segments === 'string') return segments;
  return {
    ordinalMax: d['ordinalMax'],
    writeTimeUsMax: d['writeTimeUsMax'],
    releasedSeq,
    lastMarker,
    segments,
  };
}

function parseSegments(v: unknown): LiveSegments | null | string {
  if (v === undefined) return null;
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return 'segments is not an object';
  const { live, next } = v as Record<string, unknown>;
  if (!isCount(next) || next < 1) return 'segments.next is not a positive integer';
  if (!Array.isArray(live) || !live.every((n) => isCount(n) && n >= 1 && n < next)) {
    return 'segments.live is not a list of segment numbers below segments.next';
  }
  const sorted = [...(live as number[])].sort((a, b) => a - b);
  return { live: sorted, next };
}

export function formatState(s: JournalState): string {
  const groups: Record<string, { releasedSeq: number; lastMarker?: number }> = {};
  const names = new Set([...s.releasedSeq.keys(), ...s.lastMarker.keys()]);
  for (const name of [...names].sort()) {
    const m = s.lastMarker.get(name);
    groups[name] = {
      releasedSeq: s.releasedSeq.get(name) ?? 0,
      ...(m === undefined ? {} : { lastMarker: m }),
    };
  }
  const doc = {
    version: STATE_VERSION,
    ordinalMax: s.ordinalMax,
    writeTimeUsMax: s.writeTimeUsMax,
    groups,
    ...(s.segments === null ? {} : { segments: s.segments }),
  };
  return `${JSON.stringify(doc, null, 2)}\n`;
}

/** Reads the state file of `dir` (EMPTY_STATE when there is none); refuses an invalid one. */
export function readStateSync(dir: string): JournalState {
  const file = path.join(dir, STATE_FILE_NAME);
  let text: string;
  try {
    const st = fs.statSync(file);
    if (st.size > STATE_FILE_BYTES_MAX) {
      throw new RemcopyError(
        'RC_ERR_JOURNAL_CORRUPT',
        `${file}: ${st.size} bytes is too large for a state file`,
      );
    }
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return EMPTY_STATE;
    if (e instanceof RemcopyError) throw e;
    throw new RemcopyError('RC_ERR_JOURNAL_IO', `${file}: ${(e as Error).message}`);
  }
  const parsed = parseState(text);
  if (typeof parsed === 'string') {
    throw new RemcopyError('RC_ERR_JOURNAL_CORRUPT', `${file}: invalid journal state file: ${parsed}`);
  }
  return parsed;
}

/** Writes the state file atomically and durably: tmp, fsync, rename, fsync dir. */
export async function writeState(dir: string, s: JournalState): Promise<void> {
  const tmp = path.join(dir, STATE_TMP_FILE_NAME);
  const fh = await fsp.open(tmp, 'w');
  try {
    await fh.writeFile(formatState(s), 'utf8');
    await fh.sync();
  } finally {
    await fh.close();
  }
  await fsp.rename(tmp, path.join(dir, STATE_FILE_NAME));
  await fsyncDir(dir);
}

export async function fsyncDir(dir: string): Promise<void> {
  const dh = await fsp.open(dir, 'r');
  try {
    await dh.sync();
  } finally {
    await dh.close();
  }
}

export function fsyncDirSync(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Per group: the retained records (seq releasedSeq+1 .. lastSeq with an entry each, contiguous)
 * as parallel arrays from `head`: 24 bytes per record.
 */
export class GroupIndex {
  releasedSeq = 0;
  /** Highest seq ever appended (or known from the state file). */
  lastSeq = 0;
  /** Highest marker number ever appended (or known from the state file); 0 if none. */
  lastMarker = 0;
  readonly segNo: number[] = [];
  readonly offset: number[] = [];
  readonly bytes: number[] = [];
  head = 0;

  get retained(): number {
    return this.segNo.length - this.head;
  }

  /** Seq of the first retained entry. */
  get firstSeq(): number {
    return this.lastSeq - this.retained + 1;
  }

  push(segNo: number, offset: number, bytes: number): void {
    this.segNo.push(segNo);
    this.offset.push(offset);
    this.bytes.push(bytes);
  }

  /** Drops entries up to `uptoSeq`; returns how many were dropped. */
  release(uptoSeq: number): number {
    const drop = Math.max(0, Math.min(this.retained, uptoSeq - this.firstSeq + 1));
    this.head += drop;
    this.releasedSeq = Math.max(this.releasedSeq, uptoSeq);
    if (this.head > 4096 && this.head * 2 > this.segNo.length) {
      this.segNo.splice(0, this.head);
      this.offset.splice(0, this.head);
      this.bytes.splice(0, this.head);
      this.head = 0;
    }
    return drop;
  }
}
