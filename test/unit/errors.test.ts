/**
 * Proves the error-code table in src/core/errors.ts and the one in README.md stay in step
 * (STYLE.md 8): same codes, same meanings, same order.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { ErrorCodes } from '../../src/core/errors.js';

test('README lists exactly the error codes of src/core/errors.ts', () => {
  const readme = readFileSync('README.md', 'utf8');
  const block = /<!-- error-codes:start -->([\s\S]*?)<!-- error-codes:end -->/.exec(readme);
  assert.ok(block, 'README has the error-codes block');
  const rows = [...block[1]!.matchAll(/^\| `(RC_ERR_[A-Z_]+)` \| (.+?) \|$/gm)].map((m) => [m[1], m[2]]);
  assert.deepEqual(rows, Object.entries(ErrorCodes));
});
