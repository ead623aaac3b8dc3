/**
 * Proves the size and duration parsers of src/core/units.ts accept exactly the documented forms
 * (doc/config.md): binary and decimal units, whole results only, and that they refuse negative,
 * fractional-byte, overflowing and garbage input with a message instead of a wrong number.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { formatBytes, GiB, KiB, MiB, parseDurationMs, parseSize, TiB } from '../../src/core/units.js';

function size(v: unknown): number {
  const r = parseSize(v);
  assert.ok(r.ok, `${String(v)} should parse: ${r.ok ? '' : r.error}`);
  return r.value;
}

function sizeError(v: unknown): string {
  const r = parseSize(v);
  assert.ok(!r.ok, `${String(v)} should be refused, got ${r.ok ? r.value : ''}`);
  return r.error;
}

function ms(v: unknown): number {
  const r = parseDurationMs(v);
  assert.ok(r.ok, `${String(v)} should parse: ${r.ok ? '' : r.error}`);
  return r.value;
}

function msError(v: unknown): string {
  const r = parseDurationMs(v);
  assert.ok(!r.ok, `${String(v)} should be refused, got ${r.ok ? r.value : ''}`);
  return r.error;
}

describe('parseSize', () => {
  test('integer bytes, as numbers and digit strings', () => {
    assert.equal(size(0), 0);
    assert.equal(size(-0), 0);
    assert.ok(Object.is(size(-0), 0), '-0 becomes +0');
    assert.equal(size(4096), 4096);
    assert.equal(size('4096'), 4096);
    assert.equal(size('4096B'), 4096);
    assert.equal(size(Number.MAX_SAFE_INTEGER), Number.MAX_SAFE_INTEGER);
    assert.equal(size(String(Number.MAX_SAFE_INTEGER)), Number.MAX_SAFE_INTEGER);
  });

  test('binary units, long and short', () => {
    assert.equal(size('1KiB'), KiB);
    assert.equal(size('1K'), KiB);
    assert.equal(size('256MiB'), 256 * MiB);
    assert.equal(size('256M'), 256 * MiB);
    assert.equal(size('1GiB'), GiB);
    assert.equal(size('1G'), GiB);
    assert.equal(size('2TiB'), 2 * TiB);
    assert.equal(size('2T'), 2 * TiB);
    assert.equal(size('256 MiB'), 256 * MiB, 'one space between number and unit');
  });

  test('decimal units', () => {
    assert.equal(size('1KB'), 1000);
    assert.equal(size('1MB'), 1_000_000);
    assert.equal(size('1GB'), 1_000_000_000);
    assert.equal(size('1TB'), 1_000_000_000_000);
    assert.equal(size('1.1GB'), 1_100_000_000, 'exact, no floating-point rounding');
  });

  test('fractions only when they come out as whole bytes', () => {
    assert.equal(size('1.5KiB'), 1536);
    assert.equal(size('0.5MiB'), 512 * KiB);
    assert.match(sizeError('0.1KiB'), /not a whole number of bytes/);
    assert.match(sizeError('1.5'), /not a whole number of bytes/);
    assert.match(sizeError('1.5B'), /not a whole number of bytes/);
    assert.match(sizeError(1.5), /not a whole number of bytes/);
  });

  test('negative sizes are refused', () => {
    assert.match(sizeError(-1), /must not be negative/);
    assert.match(sizeError('-1'), /must not be negative/);
    assert.match(sizeError('-4KiB'), /must not be negative/);
  });

  test('overflow past 2^53 - 1 is refused, never rounded', () => {
    assert.match(sizeError(2 ** 53), /too large/);
    assert.match(sizeError('9007199254740992'), /too large/);
    assert.match(sizeError('8192TiB'), /too large/, '8192 TiB = 2^53 bytes');
    assert.match(sizeError('99999999999999999999999TB'), /too large/);
    assert.match(sizeError(Number.POSITIVE_INFINITY), /too large/);
    assert.match(sizeError('1'.repeat(100)), /expected a size/, 'absurdly long strings are garbage');
  });

  test('garbage and wrong types are refused with the value shown', () => {
    assert.match(sizeError(''), /expected a size .*got ""/);
    assert.match(sizeError('abc'), /expected a size .*got "abc"/);
    assert.match(sizeError('MiB'), /expected a size/);
    assert.match(sizeError('1e3'), /expected a size .*got "1e3"/);
    assert.match(sizeError('0x1000'), /expected a size/);
    assert.match(sizeError('1x'), /unknown unit "x"/);
    assert.match(sizeError('1,5MiB'), /expected a size/);
    assert.match(sizeError('1  MiB'), /expected a size/);
    assert.match(sizeError('1MiB extra'), /expected a size/);
    assert.match(sizeError(Number.NaN), /got NaN/);
    assert.match(sizeError(null), /got an empty value/);
    assert.match(sizeError(undefined), /got nothing/);
    assert.match(sizeError(true), /got true/);
    assert.match(sizeError([1]), /got a list/);
    assert.match(sizeError({ size: 1 }), /got a mapping/);
  });

  test('units are case-sensitive and limited to the documented ones', () => {
    assert.match(sizeError('10mb'), /unknown unit "mb".*KiB/);
    assert.match(sizeError('10Mb'), /unknown unit "Mb"/);
    assert.match(sizeError('10kib'), /unknown unit "kib"/);
    assert.match(sizeError('1PiB'), /unknown unit "PiB"/);
    assert.match(sizeError('1constructor'), /unknown unit "constructor"/, 'no prototype keys');
  });
});

describe('parseDurationMs', () => {
  test('numbers and unitless strings are milliseconds', () => {
    assert.equal(ms(0), 0);
    assert.equal(ms(500), 500);
    assert.equal(ms('500'), 500);
  });

  test('ms, s, m, h', () => {
    assert.equal(ms('500ms'), 500);
    assert.equal(ms('2s'), 2000);
    assert.equal(ms('2 s'), 2000);
    assert.equal(ms('1m'), 60_000);
    assert.equal(ms('1h'), 3_600_000);
    assert.equal(ms('1.5s'), 1500);
  });

  test('fractional milliseconds, negative, garbage and overflow are refused', () => {
    assert.match(msError('1.0005s'), /not a whole number of milliseconds/);
    assert.match(msError(2.5), /not a whole number of milliseconds/);
    assert.match(msError('1.5ms'), /not a whole number of milliseconds/);
    assert.match(msError(-1), /must not be negative/);
    assert.match(msError('-2s'), /must not be negative/);
    assert.match(msError('soon'), /expected a duration/);
    assert.match(msError('2sec'), /unknown unit "sec"/);
    assert.match(msError('2S'), /unknown unit "S"/);
    assert.match(msError('9999999999999999h'), /too large/);
    assert.match(msError({}), /got a mapping/);
  });
});

test('formatBytes uses exact binary units when it can', () => {
  assert.equal(formatBytes(0), '0 B');
  assert.equal(formatBytes(4096), '4 KiB');
  assert.equal(formatBytes(256 * MiB), '256 MiB');
  assert.equal(formatBytes(1536), '1536 B');
  assert.equal(formatBytes(3 * TiB), '3 TiB');
  assert.equal(formatBytes(1_000_000), '1000000 B');
});
