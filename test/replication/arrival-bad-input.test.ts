/**
 * Records that arrival (src/core/arrival.ts) would refuse, against a real target node: each is
 * refused before anything is journalled, with a logged reason, and the node goes on and restarts.
 * Journalled first and refused once durable (as they were), each stopped the group for good and
 * the node at its next start, or let a record below a key a tick had promised be applied after a
 * restart, under a cut readers had already seen without it.
 *
 * Only node b (the target of group g, volume v) runs, as a process, with an arrival window of 64
 * records (REMCOPY_ARRIVAL_WINDOW). The test is node a: a raw link peer (src/testing/link-peer.ts).
 * The cases run in order and build on each other: seq 1 is journalled and applied early on.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { byteOffset, seq } from '../../src/core/types.js';
import { encodeFrame, FrameType } from '../../src/link/frames.js';
import { apiCall } from '../../src/node/api.js';
import type { Api } from '../../src/testing/cluster.js';
import { apiOf, waitFor } from '../../src/testing/cluster.js';
import { authenticate, RecordMaker, recordsFrame } from '../../src/testing/link-peer.js';
import type { NodeProcess, TestTopology } from '../../src/testing/proc.js';
import { startNodeProcess, writeTopology } from '../../src/testing/proc.js';

const BLOCK = 4096;
const WINDOW = 64;
const ENV = { REMCOPY_ARRIVAL_WINDOW: String(WINDOW) };

const root = mkdtempSync(join(tmpdir(), 'rc-arrival-bad-'));
let topo: TestTopology;
let B: NodeProcess;
let api: Api;
const maker = new RecordMaker();

before(async () => {
  topo = await writeTopology(
    mkdtempSync(join(root, 'n-')),
    { a: { volumes: { v: '8MiB' } }, b: { volumes: { v: '8MiB' } } },
    { g: ['a', 'b', 'v'] },
  );
  B = await startNodeProcess(topo.file, 'b', undefined, ENV);
  api = apiOf(topo.ports.get('b')!.api);
});

after(async () => {
  if (B && B.child.exitCode === null && B.child.signalCode === null) await B.stop();
  rmSync(root, { recursive: true, force: true });
});

const session = () => authenticate(topo.ports.get('b')!.link, topo.secret, 'g');
const record = (s: number, byte: number, key = maker.key()) =>
  maker.data('g', s, Buffer.alloc(BLOCK, byte), { volume: 'v', offset: byteOffset(s * BLOCK) }, key);

interface TargetStatus {
  linkUp: boolean;
  seqArrived: number;
  seqApplied: number;
  journal: { records: number };
  refusedFrames: number;
}

async function status(): Promise<TargetStatus> {
  const st = (await apiCall(api, topo.secret, 'GET', '/v1/status')) as {
    groups: (TargetStatus & { name: string })[];
  };
  const g = st.groups.find((x) => x.name === 'g');
  assert.ok(g, 'b reports group g');
  return g;
}

/** b's status once the test's session is gone (b closed it). */
const afterClose = (what: string) =>
  waitFor(`${what}: b's link session to be gone`, async () => {
    const s = await status();
    return s.linkUp ? undefined : s;
  });

/** Waits for a line of b's stderr (from `mark` on) that matches every pattern. */
function logLine(mark: number, ...patterns: RegExp[]): Promise<string> {
  return waitFor(
    `b to log ${patterns.join(' and ')}`,
    async () => B.stderr.slice(mark).find((l) => patterns.every((p) => p.test(l))),
    5000,
  ).catch((e: Error) => {
    throw new Error(`${e.message}; b logged:\n${B.stderr.slice(mark).join('\n')}`);
  });
}

async function readTarget(s: number): Promise<Buffer> {
  const r = (await apiCall(api, topo.secret, 'POST', '/v1/sets/g/read', {
    reads: [{ volume: 'v', offset: s * BLOCK, length: BLOCK }],
  })) as { reads: { data: string }[] };
  return Buffer.from(r.reads[0]!.data, 'base64');
}

/** No line of b's stderr from `mark` on says arrival refused a record it had journalled. */
function assertNoDurableRefusal(mark: number): void {
  const bad = B.stderr.slice(mark).filter((l) => /arrival refused|journalled record refused/.test(l));
  assert.deepEqual(bad, [], 'a record was refused after it was journalled');
}

test('a frame that reaches past the arrival window is refused before anything is journalled', async () => {
  const { peer, nextSeq } = await session();
  assert.equal(nextSeq, 1);
  const mark = B.stderr.length;
  peer.write(
    recordsFrame(
      'g',
      Array.from({ length: WINDOW + 6 }, (_, i) => record(nextSeq + i, 0x10)),
    ),
  );
  const frames = await peer.untilClosed();
  assert.ok(
    frames.some((f) => f.type === FrameType.error && f.code === 'RC_ERR_STATE'),
    'b tells the source why it closes',
  );
  assert.ok(!frames.some((f) => f.type === FrameType.ack && f.durableSeq > 0), 'no ACK');
  await logLine(mark, /records past the arrival window/, /beyond the window of 64 records/);
  const s = await afterClose('past the window');
  assert.equal(s.journal.records, 0, 'nothing journalled');
  assert.equal(s.seqArrived, 0);
  assertNoDurableRefusal(mark);
});

test('a record at or below the key a TICK promised is refused before it is journalled', async () => {
  const { peer, nextSeq } = await session();
  peer.startHeartbeats();
  const mark = B.stderr.length;
  peer.send({ type: FrameType.pairState, group: 'g', epoch: 1, state: 'pair', copyEndSeq: seq(0) });
  const first = record(nextSeq, 0x21);
  peer.write(recordsFrame('g', [first]));
  await peer.next('ACK of seq 1', (f) => f.type === FrameType.ack && f.durableSeq >= 1);
  // Nothing after seq 1 has a key at or below `promised`...
  const o = first.header.ordinal;
  peer.send({ type: FrameType.tick, group: 'g', epoch: 1, seq: seq(1), key: maker.keyAt(o + 1000) });
  await waitFor('seq 1 applied', async () => ((await status()).seqApplied >= 1 ? true : undefined));
  // ...but seq 2 has one: above seq 1's key (the receiver takes it), below the promise.
  peer.write(recordsFrame('g', [record(2, 0x22, maker.keyAt(o + 1))]));
  await peer.untilClosed();
  await logLine(mark, /link frame refused; nothing journalled/, /seq 2 key .* is not above the arrived key/);
  const s = await afterClose('below the tick');
  assert.equal(s.journal.records, 1, 'only seq 1 journalled');
  assert.equal(s.seqArrived, 1);
  assert.ok((await readTarget(2)).equals(Buffer.alloc(BLOCK)), 'seq 2 is not applied');
  assertNoDurableRefusal(mark);
});

test('a TICK that contradicts a record received and not yet durable is refused; the record stays', async () => {
  const { peer, nextSeq } = await session();
  assert.equal(nextSeq, 2, 'seq 2 was not taken');
  peer.startHeartbeats();
  const mark = B.stderr.length;
  const second = record(2, 0x23);
  // In one write: b reads both before the sync that makes seq 2 durable.
  peer.write(Buffer.concat([recordsFrame('g', [second]), encodeTick(1, second.header.ordinal + 5)]));
  await peer.untilClosed();
  await logLine(
    mark,
    /link frame refused; nothing journalled/,
    /tick after seq 1 promises keys above one that seq 2 has/,
  );
  await afterClose('tick against an unsynced record');
  assertNoDurableRefusal(mark);
  // Seq 2 was a good record: it is kept (durable once b's sync after it completes), and applies
  // once a true tick covers it.
  await waitFor('seq 2 durable at b', async () => ((await status()).seqArrived >= 2 ? true : undefined));
  const again = await session();
  assert.equal(again.nextSeq, 3, 'seq 2 is durable at b');
  again.peer.startHeartbeats();
  again.peer.send({
    type: FrameType.tick,
    group: 'g',
    epoch: 1,
    seq: seq(2),
    key: maker.keyAt(second.header.ordinal + 1),
  });
  await waitFor('seq 2 applied', async () => ((await status()).seqApplied >= 2 ? true : undefined));
  assert.ok((await readTarget(2)).equals(Buffer.alloc(BLOCK, 0x23)), 'seq 2 applied');
  again.peer.end();
  await again.peer.closed;
});

test('a record sent again under a seq b holds, but as another record, is refused', async () => {
  const { peer } = await session();
  peer.startHeartbeats();
  const mark = B.stderr.length;
  // Seq 2 again, with another key: a source that reuses a seq for other data.
  peer.write(recordsFrame('g', [record(2, 0x24)]));
  await peer.untilClosed();
  await logLine(mark, /link frame refused; nothing journalled/, /seq 2 (is held|was released) with key/);
  const s = await afterClose('conflicting duplicate');
  assert.equal(s.seqApplied, 2);
  assert.ok((await readTarget(2)).equals(Buffer.alloc(BLOCK, 0x23)), 'seq 2 unchanged');
});

test('b stops cleanly and starts again with what it journalled', async () => {
  assert.equal(await B.stop(), 0);
  const mark = 0;
  B = await startNodeProcess(topo.file, 'b', undefined, ENV);
  const s = await status();
  assert.equal(s.seqApplied, 2);
  assert.equal(s.journal.records <= 2, true);
  assert.ok((await readTarget(1)).equals(Buffer.alloc(BLOCK, 0x21)));
  assert.ok((await readTarget(2)).equals(Buffer.alloc(BLOCK, 0x23)));
  assertNoDurableRefusal(mark);
  const { nextSeq, peer } = await session();
  assert.equal(nextSeq, 3);
  peer.end();
  await peer.closed;
});

function encodeTick(afterSeq: number, keyOrdinal: number): Buffer {
  return encodeFrame({
    type: FrameType.tick,
    group: 'g',
    epoch: 1,
    seq: seq(afterSeq),
    key: maker.keyAt(keyOrdinal),
  });
}
