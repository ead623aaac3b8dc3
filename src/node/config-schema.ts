/**
 * The shape of the config file (DESIGN.md §5, doc/config.md) as a zod schema, and the translation
 * of zod's issues into one-line problems that name the key path.
 *
 * This file checks each key on its own: types, units, ranges, names, unknown keys. Checks that
 * relate keys to each other (a group's source node exists, two nodes do not share a port, the
 * journal holds two segments) are in config.ts, which runs them on the parsed result.
 *
 * Every leaf is a `scalar`: a parser of our own that gives its own message ("expected host:port,
 * got 10809"), so zod's generic messages only show for mappings and lists. Defaults are given as
 * parsed values (zod v4 `.default()` does not run the parser on them).
 */
import { isIPv4, isIPv6 } from 'node:net';
import * as z from 'zod';
import { describeValue, formatBytes, GiB, MiB, parseDurationMs, parseSize } from '../core/units.js';
import {
  ACTIVITY_LOG_EXTENTS_DEFAULT,
  ACTIVITY_LOG_EXTENTS_MAX,
  ACTIVITY_LOG_EXTENTS_MIN,
} from '../storage/activity-log.js';

/** Node, group, set and volume names: safe in file names, URLs, NBD export names and metrics. */
export const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
/** Volume sizes must be whole 4 KiB blocks: the block size NBD clients and the bitmaps use. */
export const VOLUME_BLOCK_BYTES = 4096;
/** A journal segment holds at least one record of the largest NBD write (32 MiB) plus headers. */
export const JOURNAL_SEGMENT_BYTES_MIN = 33 * MiB;
/** Upper bound on a segment file, so offsets inside a segment stay far below 2^32. */
export const JOURNAL_SEGMENT_BYTES_MAX = GiB;
export const TICK_MS_MAX = 60_000;
export const THROTTLE_MAX_DELAY_MS_MAX = 60_000;

export const DEFAULT_JOURNAL = {
  size: GiB,
  segmentSize: 64 * MiB,
  full: 'throttle',
  throttleMaxDelay: 2000,
} as const;
export const DEFAULT_TICK_MS = 100;
/** Dirty bitmap chunk: the unit a suspension tracks and a resync copies (issue 4). */
export const DEFAULT_BITMAP_CHUNK_BYTES = 64 * 1024;
export const BITMAP_CHUNK_BYTES_MAX = 64 * MiB;
/** A pair whose link stays down this long is suspended (its writes tracked in the bitmap). */
export const DEFAULT_SUSPEND_AFTER_MS = 60_000;
export const SUSPEND_AFTER_MS_MAX = 7 * 24 * 3600_000;

export interface Address {
  host: string;
  port: number;
}

type Parsed<T> = { ok: true; value: T } | { ok: false; error: string };

/**
 * A leaf value: `accepts` says whether the YAML type is right (else the problem is a type mismatch,
 * which lets a union pick the branch the user meant), `parse` checks and converts the value.
 */
function scalar<T>(expected: string, accepts: (v: unknown) => boolean, parse: (v: unknown) => Parsed<T>) {
  return z.unknown().transform((v, ctx): T => {
    if (v === undefined || !accepts(v)) {
      const message =
        v === undefined ? `missing (expected ${expected})` : `expected ${expected}, got ${describeValue(v)}`;
      ctx.addIssue({ code: 'custom', message, input: v, params: { typeMismatch: true } });
      return z.NEVER;
    }
    const r = parse(v);
    if (r.ok) return r.value;
    ctx.addIssue({ code: 'custom', message: r.error, input: v });
    return z.NEVER;
  });
}

const isString = (v: unknown): v is string => typeof v === 'string';
const isQuantity = (v: unknown): boolean => typeof v === 'string' || typeof v === 'number';

/** A free-form string; a number or boolean is refused with a hint, as YAML would mangle it (0123). */
function text(expected: string) {
  const accepts = (v: unknown): boolean => ['string', 'number', 'boolean'].includes(typeof v);
  return scalar(expected, accepts, (v) => {
    if (typeof v !== 'string')
      return { ok: false, error: `expected ${expected}, got ${describeValue(v)} (put it in quotes)` };
    return v.trim() === ''
      ? { ok: false, error: `expected ${expected}, got an empty string` }
      : { ok: true, value: v };
  });
}

/** A file or directory path; relative ones are resolved against the config file's directory. */
function filePath(expected: string) {
  return scalar(expected, isString, (v) => {
    const s = v as string;
    if (s.trim() === '') return { ok: false, error: `expected ${expected}, got an empty string` };
    if (s.startsWith('~'))
      return {
        ok: false,
        error: `"~" is not expanded here; use an absolute path or one relative to the config file`,
      };
    return { ok: true, value: s };
  });
}

function oneOf<const T extends string>(values: readonly T[]) {
  const expected = `one of ${values.join(', ')}`;
  return scalar(expected, isString, (v) => {
    if ((values as readonly string[]).includes(v as string)) return { ok: true, value: v as T };
    const guess = closest(v as string, values);
    const hint = guess === undefined ? '' : ` (did you mean "${guess}"?)`;
    return { ok: false, error: `expected ${expected}, got ${describeValue(v)}${hint}` };
  });
}

function size(min: number, max: number, blockBytes = 1) {
  return scalar('a size such as 256MiB', isQuantity, (v) => {
    const r = parseSize(v);
    if (!r.ok) return r;
    if (r.value < min)
      return { ok: false, error: `${describeValue(v)} is too small (at least ${formatBytes(min)})` };
    if (r.value > max)
      return { ok: false, error: `${describeValue(v)} is too large (at most ${formatBytes(max)})` };
    if (r.value % blockBytes !== 0) {
      return { ok: false, error: `${describeValue(v)} is not a multiple of ${blockBytes} bytes` };
    }
    return r;
  });
}

function powerOfTwoSize(min: number, max: number) {
  return scalar('a size such as 64KiB', isQuantity, (v) => {
    const r = parseSize(v);
    if (!r.ok) return r;
    if (r.value < min || r.value > max || (r.value & (r.value - 1)) !== 0) {
      const error = `${describeValue(v)} must be a power of two from ${formatBytes(min)} to ${formatBytes(max)}`;
      return { ok: false, error };
    }
    return r;
  });
}

function durationMs(min: number, max: number) {
  return scalar('a duration such as 500ms or 2s', isQuantity, (v) => {
    const r = parseDurationMs(v);
    if (!r.ok) return r;
    if (r.value < min || r.value > max) {
      return { ok: false, error: `${describeValue(v)} is out of range (${min} ms to ${max} ms)` };
    }
    return r;
  });
}

const boolean = scalar(
  'true or false',
  (v) => typeof v === 'boolean',
  (v) => ({ ok: true, value: v as boolean }),
);

/** `host:port` or `[ipv6]:port`; the host is kept without brackets, ready for net.listen. */
export function parseAddress(v: string): Parsed<Address> {
  const bad = (why: string): Parsed<Address> => ({ ok: false, error: why });
  const s = v.trim();
  let host: string;
  let portText: string;
  if (s.startsWith('[')) {
    const end = s.indexOf(']');
    if (end < 0 || s[end + 1] !== ':') return bad(`expected [ipv6]:port, got ${describeValue(v)}`);
    host = s.slice(1, end);
    portText = s.slice(end + 2);
    if (!isIPv6(host)) return bad(`"${host}" is not an IPv6 address`);
  } else {
    const colon = s.lastIndexOf(':');
    if (colon < 0) return bad(`expected host:port, got ${describeValue(v)}`);
    host = s.slice(0, colon);
    portText = s.slice(colon + 1);
    if (host.includes(':'))
      return bad(`IPv6 addresses need brackets, e.g. [::1]:10809, got ${describeValue(v)}`);
    if (host === '') return bad(`missing host in ${describeValue(v)} (e.g. 127.0.0.1:10809)`);
    if (!isHostName(host)) return bad(`"${host}" is not a host name or IPv4 address`);
  }
  const port = /^\d{1,5}$/.test(portText) ? Number(portText) : Number.NaN;
  if (!(port >= 1 && port <= 65535)) return bad(`port must be a number from 1 to 65535, got "${portText}"`);
  return { ok: true, value: { host, port } };
}

function isHostName(host: string): boolean {
  if (/^[0-9.]+$/.test(host)) return isIPv4(host);
  if (host.length > 253) return false;
  return host.split('.').every((label) => /^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$/.test(label));
}

const address = scalar('host:port', isString, (v) => parseAddress(v as string));

function nameOf(what: string) {
  return z.string().regex(NAME_RE, {
    error: (iss) => {
      const reserved =
        what === 'volume' && String(iss.input).includes('@') ? " ('@' is reserved for snapshots vol@N)" : '';
      return `invalid ${what} name ${describeValue(iss.input)}${reserved}: use 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit`;
    },
  });
}

function nameRef(what: string) {
  return scalar(`a ${what} name`, isString, (v) => ({ ok: true, value: v as string }));
}

const volumeSize = size(1, Number.MAX_SAFE_INTEGER, VOLUME_BLOCK_BYTES);

const volumeSchema = z.union(
  [volumeSize, z.strictObject({ size: volumeSize, file: filePath('a file path').optional() })],
  {
    error: (iss) =>
      `expected a size such as 256MiB or a mapping { size, file }, got ${describeValue(iss.input)}`,
  },
);

const count = (min: number, max: number) =>
  scalar(
    'a whole number',
    (v) => typeof v === 'number',
    (v) => {
      const n = v as number;
      if (!Number.isSafeInteger(n) || n < min || n > max) {
        return { ok: false, error: `${describeValue(v)} is not a whole number from ${min} to ${max}` };
      }
      return { ok: true, value: n };
    },
  );

const journalSchema = z.strictObject({
  size: size(1, Number.MAX_SAFE_INTEGER).default(DEFAULT_JOURNAL.size),
  segmentSize: size(JOURNAL_SEGMENT_BYTES_MIN, JOURNAL_SEGMENT_BYTES_MAX).default(
    DEFAULT_JOURNAL.segmentSize,
  ),
  full: oneOf(['throttle', 'suspend']).default(DEFAULT_JOURNAL.full),
  throttleMaxDelay: durationMs(1, THROTTLE_MAX_DELAY_MS_MAX).default(DEFAULT_JOURNAL.throttleMaxDelay),
});

/** The activity log (src/storage/activity-log.ts): how many 4 MiB extents it can name. */
const activityLogSchema = z.strictObject({
  extents: count(ACTIVITY_LOG_EXTENTS_MIN, ACTIVITY_LOG_EXTENTS_MAX).default(ACTIVITY_LOG_EXTENTS_DEFAULT),
});

const tlsSchema = z.strictObject({
  cert: filePath('a certificate file path'),
  key: filePath('a private key file path'),
  ca: filePath('a CA certificate file path').optional(),
  required: boolean.default(true),
});

const nodeSchema = z.strictObject({
  dataDir: filePath('a directory path'),
  nbd: address,
  link: address,
  api: address,
  native: address.optional(),
  writeTime: oneOf(['host-last', 'clock', 'counter']).default('host-last'),
  volumes: z.record(nameOf('volume'), volumeSchema).default({}),
  journal: journalSchema.default({ ...DEFAULT_JOURNAL }),
  activityLog: activityLogSchema.default({ extents: ACTIVITY_LOG_EXTENTS_DEFAULT }),
  tls: tlsSchema.optional(),
});

const groupSchema = z.strictObject({
  source: nameRef('node'),
  target: nameRef('node'),
  mode: oneOf(['async', 'sync']).default('async'),
  transfer: oneOf(['push', 'pull']).default('push'),
  pairs: z.record(nameOf('volume'), nameRef('volume')),
  tickMs: durationMs(1, TICK_MS_MAX).default(DEFAULT_TICK_MS),
  bitmapChunk: powerOfTwoSize(VOLUME_BLOCK_BYTES, BITMAP_CHUNK_BYTES_MAX).default(DEFAULT_BITMAP_CHUNK_BYTES),
  suspendAfter: durationMs(1, SUSPEND_AFTER_MS_MAX).default(DEFAULT_SUSPEND_AFTER_MS),
  /** Bytes per second a resync journals at most; unset: as fast as the journal takes them. */
  resyncRate: size(64 * 1024, Number.MAX_SAFE_INTEGER).optional(),
});

/** Longest freeze of host writes a set may configure (the default is IBM Global Mirror's 50 ms). */
export const FREEZE_BOUND_MS_MAX = 10_000;
export const DEFAULT_FREEZE_BOUND_MS = 50;
export const DEFAULT_KEEP_SNAPSHOTS = 8;
export const KEEP_SNAPSHOTS_MAX = 1000;
export const CYCLE_SECONDS_MAX = 86_400;

const positiveSeconds = scalar(
  'a number of seconds such as 2 or 0.5',
  (v) => typeof v === 'number',
  (v) => {
    const n = v as number;
    if (!Number.isFinite(n) || n < 0.1 || n > CYCLE_SECONDS_MAX) {
      return {
        ok: false,
        error: `${describeValue(v)} is out of range (0.1 to ${CYCLE_SECONDS_MAX} seconds)`,
      };
    }
    return { ok: true, value: n };
  },
);

const setGroups = z.array(nameRef('group')).min(1, { error: 'must list at least one group' });

/**
 * A consistency set: its groups, as a list, or a mapping with the consistency-cycle settings
 * (DESIGN.md §3.4): markers every `cycleSeconds`, host writes frozen at most `freezeBound`, the last
 * `keepSnapshots` snapshots kept per target volume, targets going on after a snapshot by themselves
 * (`resume: auto`, patent fig 20) or when the coordinator says so (`coordinator`, fig 19).
 */
const setSchema = z.union(
  [
    setGroups,
    z.strictObject({
      groups: setGroups,
      cycleSeconds: positiveSeconds.optional(),
      freezeBound: durationMs(1, FREEZE_BOUND_MS_MAX).default(DEFAULT_FREEZE_BOUND_MS),
      keepSnapshots: count(1, KEEP_SNAPSHOTS_MAX).default(DEFAULT_KEEP_SNAPSHOTS),
      resume: oneOf(['auto', 'coordinator']).default('auto'),
      coordinator: nameRef('node').optional(),
    }),
  ],
  {
    error: (iss) =>
      `expected a list of groups or a mapping { groups, cycleSeconds, freezeBound, keepSnapshots, resume, coordinator }, got ${describeValue(iss.input)}`,
  },
);

export const configSchema = z.strictObject({
  secret: text('a string').optional(),
  nodes: z.record(nameOf('node'), nodeSchema),
  groups: z.record(nameOf('group'), groupSchema).default({}),
  consistencySets: z.record(nameOf('consistency set'), setSchema).default({}),
});

/** The file after per-key checks: sizes in bytes, durations in ms, addresses split, defaults filled. */
export type ParsedConfig = z.output<typeof configSchema>;

/** One problem: the key path (as in `nodes.siteA.nbd`, '' for the whole file) and what is wrong. */
export interface ConfigProblem {
  readonly path: string;
  readonly message: string;
}

type PathSegment = PropertyKey;

/** `nodes.siteA.volumes["a b"]`, `consistencySets.bank[1]`: paths as the user types them. */
export function formatPath(path: readonly PathSegment[]): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else if (typeof seg === 'string' && /^[A-Za-z0-9_-]+$/.test(seg)) out += out === '' ? seg : `.${seg}`;
    else out += `[${JSON.stringify(String(seg))}]`;
  }
  return out;
}

/** Turns zod issues into problems, one per bad key, in the order zod found them. */
export function problemsFromIssues(
  issues: readonly z.core.$ZodIssue[],
  base: readonly PathSegment[] = [],
): ConfigProblem[] {
  const out: ConfigProblem[] = [];
  for (const iss of issues) {
    const path = [...base, ...iss.path];
    switch (iss.code) {
      case 'unrecognized_keys':
        for (const key of iss.keys)
          out.push({ path: formatPath([...path, key]), message: unknownKeyMessage(path, key) });
        break;
      case 'invalid_key':
        out.push({ path: formatPath(path), message: iss.issues[0]?.message ?? iss.message });
        break;
      case 'invalid_union': {
        const meant = iss.errors.filter((branch) => !branch.every(isRootTypeMismatch));
        if (meant.length === 1) out.push(...problemsFromIssues(meant[0]!, path));
        else out.push({ path: formatPath(path), message: iss.message });
        break;
      }
      case 'invalid_type': {
        const expected = EXPECTED_TYPES[iss.expected] ?? iss.expected;
        const got = iss.input === undefined ? 'missing' : `got ${describeValue(iss.input)}`;
        out.push({
          path: formatPath(path),
          message: iss.input === undefined ? `${got} (expected ${expected})` : `expected ${expected}, ${got}`,
        });
        break;
      }
      default:
        out.push({ path: formatPath(path), message: iss.message });
    }
  }
  return out;
}

const EXPECTED_TYPES: Partial<Record<string, string>> = {
  object: 'a mapping',
  array: 'a list',
  record: 'a mapping',
};

function isRootTypeMismatch(iss: z.core.$ZodIssue): boolean {
  if (iss.path.length !== 0) return false;
  return iss.code === 'invalid_type' || (iss.code === 'custom' && iss.params?.['typeMismatch'] === true);
}

function unknownKeyMessage(objectPath: readonly PathSegment[], key: string): string {
  const known = knownKeysAt(configSchema, objectPath);
  const guess = closest(key, known);
  if (guess !== undefined) return `unknown key (did you mean "${guess}"?)`;
  return known.length > 0 ? `unknown key (known keys: ${known.join(', ')})` : 'unknown key';
}

interface SchemaDef {
  type: string;
  shape?: Record<string, z.ZodType>;
  valueType?: z.ZodType;
  element?: z.ZodType;
  innerType?: z.ZodType;
  options?: z.ZodType[];
}

const defOf = (s: z.ZodType): SchemaDef => s._zod.def as unknown as SchemaDef;

/** The keys the schema allows for the mapping at `path` (for "did you mean" hints). */
function knownKeysAt(schema: z.ZodType, path: readonly PathSegment[]): string[] {
  let candidates: z.ZodType[] = [schema];
  for (const seg of path) {
    const next: z.ZodType[] = [];
    for (const c of candidates.flatMap(unwrap)) {
      const def = defOf(c);
      if (def.type === 'object' && typeof seg === 'string' && def.shape?.[seg]) next.push(def.shape[seg]);
      if (def.type === 'record' && def.valueType) next.push(def.valueType);
      if (def.type === 'array' && def.element) next.push(def.element);
    }
    candidates = next;
  }
  const objects = candidates.flatMap(unwrap).filter((c) => defOf(c).type === 'object');
  return objects.flatMap((c) => Object.keys(defOf(c).shape ?? {}));
}

function unwrap(s: z.ZodType): z.ZodType[] {
  const def = defOf(s);
  if ((def.type === 'optional' || def.type === 'default') && def.innerType) return unwrap(def.innerType);
  if (def.type === 'union' && def.options) return def.options.flatMap(unwrap);
  return [s];
}

/** The candidate closest to `word` (case-insensitive edit distance) if it is a likely typo and unambiguous. */
export function closest(word: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Number.POSITIVE_INFINITY;
  let tie = false;
  for (const c of candidates) {
    const [w, k] = [word.toLowerCase(), c.toLowerCase()];
    // A prefix ("tick" for "tickMs") is as likely a slip as a one-letter typo.
    const d =
      w.length >= 3 && (k.startsWith(w) || w.startsWith(k))
        ? Math.min(1, editDistance(w, k))
        : editDistance(w, k);
    if (d === bestDistance) tie = true;
    if (d < bestDistance) {
      best = c;
      bestDistance = d;
      tie = false;
    }
  }
  const allowed = Math.max(1, Math.floor(word.length / 3));
  return bestDistance <= allowed && !tie ? best : undefined;
}

/** Optimal string alignment distance: insertions, deletions, substitutions and adjacent swaps. */
function editDistance(a: string, b: string): number {
  if (Math.abs(a.length - b.length) > 8) return Number.POSITIVE_INFINITY;
  let before: number[] = [];
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let d = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1])
        d = Math.min(d, before[j - 2]! + 1);
      cur[j] = d;
    }
    before = prev;
    prev = cur;
  }
  return prev[b.length]!;
}
