/**
 * Crash test with real processes (TESTING.md "No loss where promised"): a write storm through the
 * native client into a journalled volume, kill -9 of the node at a random moment, restart, and
 * check that every write acknowledged with FUA, or acknowledged before a FLUSH that completed, is
 * there. kill -9 keeps the page cache, so every acknowledged write must in fact survive: the test
 * checks that too, and that the journal's sequence continues without reuse after each restart.
 * Three rounds per run, each killed at a different moment (seeded; the seed is printed). Twice:
 * with 4 KiB writes (journalled through the page cache) and with 512 KiB writes (runs of at least
 * 256 KiB are journalled with O_DIRECT, src/storage/direct-io.ts).
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { connect } from '../../src/client/index.js';
import { apiCall } from '../../src/node/api.js';
import { copyJournalled, metricValue } from '../../src/testing/cluster.js';
import { startNodeProcess, type TestTopology, writeTopology } from '../../src/testing/proc.js';
import { mulberry32 } from '../../src/testing/random.js';

/** One storm's shape: block size, blocks in the volume (each written once per round), writers. */
interface Shape {
  readonly block: number;
  readonly blocks: number;
  readonly concurrency: number;
  /** The kill comes this long after the storm starts, plus up to killSpreadMs more (seeded). */
  readonly killMinMs: number;
  readonly killSpreadMs: number;
  /** ... and never before this many writes were acknowledged (a loaded CI machine). */
  readonly underWayWrites: number;
  /** Times each block may be written per round: the storm goes on until the kill or this. */
  readonly passes: number;
  /** Node a's journal (YAML flow), when not the default. */
  readonly journal?: string;
  /** The journal must have written with O_DIRECT by the time of the kill. */
  readonly direct: boolean;
}
const SMALL: Shape = {
  block: 4096,
  blocks: 4096,
  concurrency: 16,
  killMinMs: 150,
  killSpreadMs: 600,
  underWayWrites: 50,
  passes: 1,
  direct: false,
};
/**
 * 512 KiB writes, killed only once the journal has written with O_DIRECT: past the rest of the
 * active segment and the zero-filled spares (33 MiB segments, written buffered). A slow appender
 * (under 32 MiB/s, a loaded CI machine) gets a new spare each time it takes one, and a spare left
 * over from the previous round's kill is used first, so the storm goes over the volume up to four
 * times (512 MiB of a 1 GiB journal per round at most; the kill comes long before that).
 */
const LARGE: Shape = {
  block: 512 * 1024,
  blocks: 256,
  concurrency: 8,
  killMinMs: 0,
  killSpreadMs: 150,
  underWayWrites: 150,
  passes: 4,
  journal: '{ size: 1GiB, segmentSize: 33MiB }',
  direct: true,
};
const ROUNDS = 3;
const seed = Number(process.env.REMCOPY_SEED ?? Date.now() % 100000);
const random = mulberry32(seed);

const dir = mkdtempSync(join(tmpdir(), 'rc-kill9-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function blockFor(shape: Shape, round: number, id: number): Buffer {
  const b = Buffer.alloc(shape.block, (id * 31 + round) & 0xff);
  b.writeUInt32LE(round, 0);
  b.writeUInt32LE(id, 4);
  return b;
}

/** Writes are numbered from this times the round; a write's number is in its data. */
const ROUND_IDS = 100_000;

interface Outcome {
  /** Block -> number of its newest acknowledged write. */
  acked: Map<number, number>;
  /** Subset promised durable by FUA or a completed FLUSH. */
  promised: Set<number>;
  writes: number;
}

/**
 * Writes ids in order, id % blocks the block, until the node dies or each block was written
 * `passes` times. At most `concurrency` writes are in flight, all within `concurrency` ids of each
 * other, so two writes to one block never overlap and the newest acknowledged one is what must be
 * read back.
 */
async function storm(shape: Shape, topo: TestTopology, round: number, out: Outcome): Promise<void> {
  const { block: BLOCK, blocks: BLOCKS } = shape;
  const firstId = round * ROUND_IDS;
  const client = await connect({ host: '127.0.0.1', port: topo.ports.get('a')!.native! });
  const vol = await client.open('vol');
  let next = firstId;
  let dead = false;
  const notYetFlushed: number[] = [];
  const worker = async (): Promise<void> => {
    while (!dead && next < firstId + BLOCKS * shape.passes) {
      const id = next++;
      const fua = random() < 0.25;
      try {
        await vol.write((id % BLOCKS) * BLOCK, blockFor(shape, round, id), {
          fua,
          writeTimeUs: Date.now() * 1000,
        });
      } catch {
        dead = true;
        return;
      }
      out.writes++;
      if ((out.acked.get(id % BLOCKS) ?? -1) < id) out.acked.set(id % BLOCKS, id);
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
  await Promise.all(Array.from({ length: shape.concurrency }, worker));
  await client.close().catch(() => {});
}

async function crashRounds(shape: Shape, sub: string): Promise<void> {
  const size = `${(shape.block * shape.blocks) / (1024 * 1024)}MiB`;
  mkdirSync(join(dir, sub));
  const topo = await writeTopology(
    join(dir, sub),
    {
      a: { volumes: { vol: size }, native: true, ...(shape.journal ? { journal: shape.journal } : {}) },
      b: { volumes: { vol: size } },
    },
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
    const killAfterMs = shape.killMinMs + Math.floor(random() * shape.killSpreadMs);
    // Kill at the random moment, but never before the storm is under way (a loaded CI machine).
    let stormDone = false;
    const stormed = storm(shape, topo, round, out).finally(() => {
      stormDone = true;
    });
    let directBytes = 0;
    const underWay = async (): Promise<void> => {
      while (out.writes < shape.underWayWrites && !stormDone) await new Promise((r) => setTimeout(r, 5));
      while (shape.direct && !stormDone) {
        directBytes = (await metricValue(api, topo.secret, 'remcopy_journal_direct_bytes_total')) ?? 0;
        if (directBytes > 0) return;
        await new Promise((r) => setTimeout(r, 10));
      }
    };
    const killer = Promise.all([new Promise((r) => setTimeout(r, killAfterMs)), underWay()]).then(() =>
      node.kill9(),
    );
    await Promise.all([stormed, killer]);
    assert.ok(out.writes > 0, 'the storm wrote something before the kill');
    if (shape.direct) assert.ok(directBytes > 0, `round ${round}: journalled with O_DIRECT before the kill`);

    const again = await startNodeProcess(topo.file, 'a');
    const client = await connect({ host: '127.0.0.1', port: topo.ports.get('a')!.native! });
    const vol = await client.open('vol');
    let lostPromised = 0;
    let lostAcked = 0;
    for (const [block, id] of out.acked) {
      const got = await vol.read(block * shape.block, shape.block);
      const ok = got.equals(blockFor(shape, round, id));
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
}

test(`kill -9 during a storm of 4 KiB writes loses no acknowledged write (seed ${seed})`, () =>
  crashRounds(SMALL, 'small'));

test(`kill -9 during a storm of 512 KiB writes (journalled direct) loses no acknowledged write (seed ${seed})`, () =>
  crashRounds(LARGE, 'large'));
