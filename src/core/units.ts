/**
 * Sizes and durations as people write them in the config file ("256MiB", "2s"), parsed exactly.
 *
 * Pure: the config loader (src/node/config.ts) calls these and turns an error string into a
 * message naming the key. Nothing here throws on bad input: every parser returns a result.
 *
 * Sizes:     a non-negative integer number of bytes, or a string `<number>[ ]<unit>` where unit is
 *            B, KiB, MiB, GiB, TiB, K, M, G, T (binary, 1024^n) or KB, MB, GB, TB (decimal, 1000^n),
 *            or no unit (bytes). A fraction is accepted only when it comes out as whole bytes
 *            ("1.5KiB" = 1536; "0.1KiB" is an error). Units are case-sensitive: "mb" or "Mb"
 *            could mean megabits, so they are refused rather than guessed.
 * Durations: a non-negative integer number of milliseconds, or a string `<number>[ ]<unit>` with
 *            unit ms, s, m, h (or none: milliseconds). Fractions must come out as whole ms.
 * Both stay below Number.MAX_SAFE_INTEGER so that arithmetic on them is exact; the arithmetic is
 * done in BigInt so that "1.1GB" is exact too, with no floating-point rounding.
 */

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
export const TiB = 1024 * GiB;

export type ParseResult =
  { readonly ok: true; readonly value: number } | { readonly ok: false; readonly error: string };

const SIZE_UNITS: Readonly<Record<string, bigint>> = {
  '': 1n,
  B: 1n,
  K: 1024n,
  KiB: 1024n,
  M: 1024n ** 2n,
  MiB: 1024n ** 2n,
  G: 1024n ** 3n,
  GiB: 1024n ** 3n,
  T: 1024n ** 4n,
  TiB: 1024n ** 4n,
  KB: 1000n,
  MB: 1000n ** 2n,
  GB: 1000n ** 3n,
  TB: 1000n ** 4n,
};

const DURATION_UNITS_MS: Readonly<Record<string, bigint>> = {
  '': 1n,
  ms: 1n,
  s: 1000n,
  m: 60_000n,
  h: 3_600_000n,
};

/** Longest string we try to read as a number: anything longer is garbage, not a size. */
const QUANTITY_CHARS_MAX = 64;
const QUANTITY_RE = /^(\d+)(?:\.(\d+))?\s?([A-Za-z]*)$/;

/** Parses a size into bytes (see the file comment for the grammar). */
export function parseSize(input: unknown): ParseResult {
  return parseQuantity(input, SIZE_UNITS, 'bytes', 'a size such as 4096, 256MiB or 1GiB');
}

/** Parses a duration into milliseconds (see the file comment for the grammar). */
export function parseDurationMs(input: unknown): ParseResult {
  return parseQuantity(input, DURATION_UNITS_MS, 'milliseconds', 'a duration such as 500, 500ms, 2s or 1m');
}

function parseQuantity(
  input: unknown,
  units: Readonly<Record<string, bigint>>,
  unitName: string,
  expected: string,
): ParseResult {
  if (typeof input === 'number') return fromNumber(input, unitName, expected);
  if (typeof input !== 'string') return fail(`expected ${expected}, got ${describeValue(input)}`);
  const text = input.trim();
  const m = text.length <= QUANTITY_CHARS_MAX ? QUANTITY_RE.exec(text) : null;
  if (m === null) {
    const hint = text.startsWith('-') ? ' (must not be negative)' : '';
    return fail(`expected ${expected}, got ${describeValue(input)}${hint}`);
  }
  const [, whole = '', fraction = '', unit = ''] = m;
  const multiplier = units[unit];
  if (multiplier === undefined || !Object.hasOwn(units, unit)) {
    const known = Object.keys(units).filter((u) => u !== '');
    return fail(`unknown unit "${unit}" in ${describeValue(input)} (use one of ${known.join(', ')})`);
  }
  const scale = 10n ** BigInt(fraction.length);
  const scaled = (BigInt(whole) * scale + BigInt(fraction === '' ? '0' : fraction)) * multiplier;
  if (scaled % scale !== 0n) return fail(`${describeValue(input)} is not a whole number of ${unitName}`);
  const value = scaled / scale;
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) return fail(tooLarge(input, unitName));
  return { ok: true, value: Number(value) };
}

function fromNumber(n: number, unitName: string, expected: string): ParseResult {
  if (Number.isNaN(n)) return fail(`expected ${expected}, got NaN`);
  if (n < 0) return fail(`must not be negative, got ${n}`);
  if (!Number.isFinite(n) || n > Number.MAX_SAFE_INTEGER) return fail(tooLarge(n, unitName));
  if (!Number.isInteger(n)) return fail(`${n} is not a whole number of ${unitName}`);
  return { ok: true, value: n + 0 }; // + 0 turns -0 into 0
}

function tooLarge(input: unknown, unitName: string): string {
  return `${describeValue(input)} is too large (at most ${Number.MAX_SAFE_INTEGER} ${unitName})`;
}

function fail(error: string): ParseResult {
  return { ok: false, error };
}

/** A short, one-line rendering of a config value for error messages. */
export function describeValue(v: unknown): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'an empty value';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  if (typeof v === 'string') {
    const s = v.length > 40 ? `${v.slice(0, 37)}...` : v;
    return JSON.stringify(s);
  }
  return String(v);
}

/** Renders a byte count for people: exact binary units when they fit, else bytes ("256 MiB"). */
export function formatBytes(n: number): string {
  for (const [unit, size] of [
    ['TiB', TiB],
    ['GiB', GiB],
    ['MiB', MiB],
    ['KiB', KiB],
  ] as const) {
    if (n >= size && n % size === 0) return `${n / size} ${unit}`;
  }
  return `${n} B`;
}
