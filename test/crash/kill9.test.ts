/**
 * Crash test with real processes (TESTING.md "No loss where promised"): a write storm through the
 * native client into a journalled volume, kill -9 of the node at a random moment, restart, and
 * check that every write acknowledged with FUA, or acknowledged before a FLUSH that completed, is
 * there. kill -9 keeps the page cache, so every acknowledged write must in fact survive: the test
 * checks that too, and that the journal's sequence continues without reuse after each restart.
 * Three rounds per run, each killed at a different moment (seeded; the seed is printed).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { connect } from '../../src/client/index.js';
import { apiCall } from '../../src/node/api.js';
import { copyJournalled } from '../../src/testing/cluster.js';
import { startNodeProcess, type TestTopology, writeTopology } from '../../src/testing/proc.js';
import { mulberry32 } from '../../src/testing/random.js';

const BLOCK = 4096;
const BLOCKS = 4096; // 16 MiB volume
const CONCURRENCY = 16;
const ROUNDS = 3;
const seed = Number(process.env.REMCOPY_SEED ?? Date.now() % 100000);
const random = mulberry32(seed);

const dir = mkdtempSync(join(tmpdir(), 'rc-kill9-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function blockFor(round: number, id: number): Buffer {
  const b = Buffer.alloc(BLOCK, (id * 31 + round) & 0xff);
  b.writeUInt32LE(round, 0);
  b.writeUInt32LE(id, 4);
  return b;
}

interface Outcome {
  /** Block id -> round of its newest acknowledged write. */
  acked: Map<number, number>;
  /** Subset promised durable by FUA or a completed FLUSH. */
  promised: Set<number>;
  writes: number;
}

/** Writes block ids in order, each to its own block, until the node dies. */
async function storm(topo: TestTopology, round: number, firstId: number, out: Outcome): Promise<void> {
  const client = await connect({ host: '127.0.0.1', port: topo.ports.get('a')!.native! });
  const vol = await client.open('vol');
  let next = firstId;
  let dead = false;
  const notYetFlushed: number[] = [];
  const worker = async (): Promise<void> => {
    while (!dead && next < firstId + BLOCKS) {
      const id = next++;
      const fua = random() < 0.25;
      try {
        await vol.write((id % BLOCKS) * BLOCK, blockFor(round, id), { fua, writeTimeUs: Date.now() * 1000 });
      } catch {
        dead = true;
        return;
      }
      out.writes++;
      out.acked.set(id % BLOCKS, round);
      if (fua) out.promised.add(id % BLOCKS);
      else notYetFlushed.push(id % BLOCKS);
      if (out.writes % 97 === 0) {
        const covered = notYetFlushed.splice(0);
        try {
          await vol.flush();
        } catch {
          dead = true;
          return;
        }
        for (const b of covered) out.promised.add(b);
      }
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  await client.close().catch(() => {});
}

test(`kill -9 during a write storm loses no acknowledged write (seed ${seed})`, async () => {
  const topo = await writeTopology(
    dir,
    { a: { volumes: { vol: '16MiB' }, native: true }, b: { volumes: { vol: '16MiB' } } },
    { g: ['a', 'b', 'vol'] },
  );
  const api = { host: '127.0.0.1', port: topo.ports.get('a')!.api };
  let seqBefore = 0;
  for (let round = 1; round <= ROUNDS; round++) {
    const node = await startNodeProcess(topo.file, 'a');
    // A new pair first journals its initial copy (copy and zero records): let it finish.
    const status = await copyJournalled(api, topo.secret, 'g');
    if (round === 1) seqBefore = status.seqWritten;
    assert.equal(status.seqWritten, seqBefore, 'the sequence continues where the journal left off');
    const out: Outcome = { acked: new Map(), promised: new Set(), writes: 0 };
    const killAfterMs = 150 + Math.floor(random() * 600);
    // Kill at the random moment, but never before the storm is under way (a loaded CI machine).
    let stormDone = false;
    const stormed = storm(topo, round, round * 100_000, out).finally(() => {
      stormDone = true;
    });
    const underWay = async (): Promise<void> => {
      while (out.writes < 50 && !stormDone) await new Promise((r) => setTimeout(r, 5));
    };
    const killer = Promise.all([new Promise((r) => setTimeout(r, killAfterMs)), underWay()]).then(() =>
      node.kill9(),
    );
    await Promise.all([stormed, killer]);
    assert.ok(out.writes > 0, 'the storm wrote something before the kill');

    const again = await startNodeProcess(topo.file, 'a');
    const client = await connect({ host: '127.0.0.1', port: topo.ports.get('a')!.native! });
    const vol = await client.open('vol');
    let lostPromised = 0;
    let lostAcked = 0;
    for (const [block, r] of out.acked) {
      const got = await vol.read(block * BLOCK, BLOCK);
      const ok = got.readUInt32LE(0) === r && got.equals(blockFor(r, got.readUInt32LE(4)));
      if (!ok && out.promised.has(block)) lostPromised++;
      if (!ok) lostAcked++;
    }
    await client.close();
    assert.equal(lostPromised, 0, `round ${round}: FUA/FLUSH-promised writes lost (of ${out.promised.size})`);
    assert.equal(
      lostAcked,
      0,
      `round ${round}: acknowledged writes lost after kill -9 (of ${out.acked.size})`,
    );
    const st = (await apiCall(api, topo.secret, 'GET', '/v1/status')) as { groups: { seqWritten: number }[] };
    seqBefore = st.groups[0]!.seqWritten;
    assert.ok(seqBefore >= out.writes, 'every acknowledged write has a journal record');
    assert.equal(await again.stop(), 0, 'clean stop exits 0');
  }
});
