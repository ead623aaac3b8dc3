/**
 * A set takeover that stopped part-way (some target nodes promoted at snapshot N, others not)
 * goes on at N: the rest must be put back to the same snapshot to make one image with what is
 * promoted. resumeSnapshot is the rule the command applies to what the nodes report.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { resumeSnapshot } from '../../src/cli/markers.js';

test('nothing promoted yet: the snapshot asked for, or none (the command picks the newest)', () => {
  assert.equal(resumeSnapshot('bank', [], undefined), undefined);
  assert.equal(resumeSnapshot('bank', [], 7), 7);
});

test('some groups promoted at N: the rest go on at N, asked or not', () => {
  const done = [
    { group: 'g1', marker: 12 },
    { group: 'g3', marker: 12 },
  ];
  assert.equal(resumeSnapshot('bank', done, undefined), 12);
  assert.equal(resumeSnapshot('bank', done, 12), 12);
});

test('--snapshot that differs from the takeover already done is refused, naming the right one', () => {
  assert.throws(
    () => resumeSnapshot('bank', [{ group: 'g1', marker: 12 }], 13),
    /--snapshot 13 does not match the takeover already done \(g1 at 12\).*at snapshot 12/,
  );
});

test('a group taken over at its own cut, or groups at different snapshots, cannot be joined', () => {
  assert.throws(
    () => resumeSnapshot('bank', [{ group: 'g1', marker: undefined }], 12),
    /g1 of bank were taken over at their own cut/,
  );
  assert.throws(
    () =>
      resumeSnapshot(
        'bank',
        [
          { group: 'g1', marker: 12 },
          { group: 'g2', marker: 11 },
        ],
        undefined,
      ),
    /different snapshots \(g1 at 12, g2 at 11\)/,
  );
});
