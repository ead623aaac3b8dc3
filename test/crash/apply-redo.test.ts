/**
 * A target killed in the middle of an apply cycle (TESTING.md "the copy is always an image the
 * primary had"): the state file pins the cycle's cut, and the volumes hold part of that cycle and
 * every cycle since the last checkpoint. At restart the node redoes the pinned cycle before it
 * serves anything, so the first answer it gives already shows that cut. Reads served before the
 * redo would see records past the completed cut (the demo once showed 42 transfers half done).
 *
 * Real processes: a (source of g1 and g2, one set) and b, started with the failpoint
 * `apply:group-applied`, which kills it once a cycle has applied one group's records.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { apiOf, groupStatus, waitFor } from '../../src/testing/cluster.js';
import { startNodeProcess, writeTopology } from '../../src/testing/proc.js';
import { qemuIo, waitState } from '../../src/testing/sites.js';

const root = mkdtempSync(join(tmpdir(), 'rc-apply-redo-'));
after(() => rmSync(root, { recursive: true, force: true }));

test('a target killed inside an apply cycle redoes it before it serves: its first status shows the pinned cut', async () => {
  const dir = mkdtempSync(join(root, 'n-'));
  const topo = await writeTopology(
    dir,
    { a: { volumes: { v1: '4MiB', v2: '4MiB' } }, b: { volumes: { v1: '4MiB', v2: '4MiB' } } },
    { g1: ['a', 'b', 'v1'], g2: ['a', 'b', 'v2'] },
    { s: '[g1, g2]' },
  );
  const port = (n: string) => topo.ports.get(n)!;
  const A = await startNodeProcess(topo.file, 'a');
  let B = await startNodeProcess(topo.file, 'b', undefined, { REMCOPY_FAILPOINT: 'apply:group-applied' });
  try {
    // Both groups carry records: the first cycle that applies one of them kills b.
    await qemuIo(`nbd://127.0.0.1:${port('a').nbd}/v1`, ['write -P 0x11 0 256k']);
    await qemuIo(`nbd://127.0.0.1:${port('a').nbd}/v2`, ['write -P 0x22 0 256k']);
    const died = await B.exited;
    assert.equal(died.signal, 'SIGKILL', 'b died at the failpoint');
    const saved = JSON.parse(readFileSync(join(dir, 'b', 'apply', 's.json'), 'utf8')) as {
      cutPlanned: unknown;
      cutCompleted: unknown;
    };
    assert.notEqual(saved.cutPlanned, null, 'the state file pins the interrupted cycle');

    B = await startNodeProcess(topo.file, 'b');
    const api = apiOf(port('b').api);
    for (const g of ['g1', 'g2']) {
      const st = await groupStatus(api, topo.secret, g);
      assert.deepEqual(st.cut, saved.cutPlanned, `${g}: the first status already shows the redone cut`);
    }
    // And replication goes on from there.
    for (const g of ['g1', 'g2']) await waitState(api, topo.secret, g, 'pair');
    await qemuIo(`nbd://127.0.0.1:${port('a').nbd}/v1`, ['write -P 0x33 1M 4k']);
    const written = (await groupStatus(apiOf(port('a').api), topo.secret, 'g1')).seqWritten;
    await waitFor('b to apply the last write', async () =>
      (await groupStatus(api, topo.secret, 'g1')).seqApplied >= written ? true : undefined,
    );
  } finally {
    if (B.child.exitCode === null && B.child.signalCode === null) assert.equal(await B.stop(), 0);
    assert.equal(await A.stop(), 0);
  }
});
