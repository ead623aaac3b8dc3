/**
 * Proves, with a real node process, that host write times reach the journal (DESIGN.md §2,
 * §3.1): a native-protocol write's writeTimeUs is the record's host time; NBD writes (no time)
 * in `host-last` mode take the latest host time; order keys strictly increase across both
 * groups and both front ends, in the order the writes were acknowledged.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { promisify } from 'node:util';
import { connect } from '../../src/client/index.js';
import { compareKeys } from '../../src/core/types.js';
import { apiCall } from '../../src/node/api.js';
import { apiOf, copyJournalled } from '../../src/testing/cluster.js';
import { startNodeProcess, writeTopology } from '../../src/testing/proc.js';

const run = promisify(execFile);
const dir = mkdtempSync(join(tmpdir(), 'rc-wtime-'));
after(() => rmSync(dir, { recursive: true, force: true }));

interface Rec {
  seq: number;
  kind: string;
  writeTimeUs: number;
  hostTimeUs: number;
  nodeId: number;
  ordinal: number;
  volume: string;
  offset: number;
}

test('host write times reach journal records; NBD writes in between take the latest host time', async () => {
  const topo = await writeTopology(
    dir,
    {
      a: { volumes: { d: '4MiB', l: '4MiB' }, native: true, writeTime: 'host-last' },
      b: { volumes: { d: '4MiB', l: '4MiB' } },
    },
    { gd: ['a', 'b', 'd'], gl: ['a', 'b', 'l'] },
  );
  const node = await startNodeProcess(topo.file, 'a');
  try {
    const p = topo.ports.get('a')!;
    // New pairs journal their initial copy first; the host writes come after it.
    const base = {
      gd: (await copyJournalled(apiOf(p.api), topo.secret, 'gd')).seqWritten,
      gl: (await copyJournalled(apiOf(p.api), topo.secret, 'gl')).seqWritten,
    };
    const client = await connect({ host: '127.0.0.1', port: p.native! });
    const d = await client.open('d');
    const t1 = 1_700_000_000_000_123;
    await d.write(0, Buffer.alloc(4096, 1), { writeTimeUs: t1 });
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 2 0 4k', `nbd://127.0.0.1:${p.nbd}/l`]);
    const t2 = t1 + 5_000;
    await d.write(4096, Buffer.alloc(4096, 3), { writeTime: new Date(Math.floor(t2 / 1000)) });
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 4 4k 4k', `nbd://127.0.0.1:${p.nbd}/l`]);
    await client.close();

    const api = { host: '127.0.0.1', port: p.api };
    const get = async (g: 'gd' | 'gl') =>
      (
        (await apiCall(api, topo.secret, 'GET', `/v1/groups/${g}/records?fromSeq=${base[g] + 1}`)) as {
          records: Rec[];
        }
      ).records.map((r) => ({ ...r, seq: r.seq - base[g] }));
    const [rd, rl] = [await get('gd'), await get('gl')];
    assert.deepEqual(
      rd.map((r) => [r.seq, r.kind, r.offset]),
      [
        [1, 'data', 0],
        [2, 'data', 4096],
      ],
    );
    assert.deepEqual(
      rl.map((r) => [r.seq, r.offset]),
      [
        [1, 0],
        [2, 4096],
      ],
    );
    assert.equal(rd[0]!.hostTimeUs, t1, 'native write time is the record host time');
    assert.equal(rd[0]!.writeTimeUs, t1);
    const t2ms = Math.floor(t2 / 1000) * 1000;
    assert.equal(rd[1]!.hostTimeUs, t2ms, 'a Date write time arrives with millisecond precision');
    assert.equal(rl[0]!.hostTimeUs, 0, 'NBD carries no host time');
    assert.equal(rl[0]!.writeTimeUs, t1, 'host-last: the latest host time recorded');
    assert.equal(rl[1]!.writeTimeUs, t2ms);
    // Acknowledgement order d1 < l1 < d2 < l2 is order-key order across groups and front ends.
    const order = [rd[0]!, rl[0]!, rd[1]!, rl[1]!];
    for (let i = 1; i < order.length; i++)
      assert.equal(compareKeys(order[i - 1] as never, order[i] as never), -1);
    // Bad query input is a 400, and the node keeps serving.
    await assert.rejects(apiCall(api, topo.secret, 'GET', '/v1/groups/gd/records?fromSeq=-1'), /HTTP 400/);
    await assert.rejects(apiCall(api, 'wrong-secret-000', 'GET', '/v1/status'), /HTTP 401/);
    assert.equal((await get('gd')).length, 2);
  } finally {
    assert.equal(await node.stop(), 0);
  }
});
