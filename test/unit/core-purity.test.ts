/**
 * Proves src/core stays pure (STYLE.md 1-2): no clock, randomness, timers, or disk and network
 * access, so the same core runs in the daemon and in the deterministic simulator.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';

const forbidden = [
  /Date\.now/,
  /Math\.random/,
  /setTimeout/,
  /setInterval/,
  /setImmediate/,
  /node:fs/,
  /node:net/,
  /\bawait\b/,
  /performance\.now/,
  /process\.hrtime/,
];

test('src/core mentions no clock, randomness, timers, fs, net or await', () => {
  const dir = join(process.cwd(), 'src', 'core');
  const files = readdirSync(dir).filter((f) => f.endsWith('.ts'));
  assert.ok(files.length > 0, 'src/core has files');
  for (const f of files) {
    const text = readFileSync(join(dir, f), 'utf8').replace(/\/\*[\s\S]*?\*\/|\/\/.*$/gm, '');
    for (const re of forbidden) assert.doesNotMatch(text, re, `${f} must not use ${re}`);
  }
});
