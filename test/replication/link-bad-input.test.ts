/**
 * Bad input on the link, against a real target node (issue 3: "a peer with the wrong secret,
 * garbage frames, a frame cut in half, an out-of-range seq: rejected with a logged reason, the
 * node keeps running, no data changes").
 *
 * Only node b (the target of group g, volume v) runs, as a process. The test is node a: a raw TCP
 * socket speaking the link protocol with the real codec (src/link/frames.ts, decoder.ts). Every bad
 * input is sent on a session of its own; after each one b must have logged why it refused, still
 * run and answer its API, and show no change: nothing arrived or journalled, the target volume
 * still all zeroes. Then a correct session proves the node still replicates: a record is ACKed
 * durable, a TICK lets it apply, and the target reads it back at a cut. Last, a flood of
 * unauthenticated connections past the cap is turned away at once while an authenticated peer
 * goes on replicating, and the cap frees up when the flood ends.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { crc32c } from '@node-rs/crc32';
import type { OrderKey, RecordHeader } from '../../src/core/types.js';
import { byteOffset, ordinal, seq, timeUs } from '../../src/core/types.js';
import {
  authProof,
  encodeFrame,
  FrameType,
  frameTypeName,
  LINK_FRAME_HEADER_BYTES,
  LINK_FRAME_PAYLOAD_BYTES_MAX,
  LINK_HANDSHAKE_PAYLOAD_BYTES_MAX,
  LINK_MAGIC,
  LINK_VERSION_MAX,
  LINK_VERSION_MIN,
  newNonce,
} from '../../src/link/frames.js';
import { apiCall } from '../../src/node/api.js';
import {
  LINK_REFUSAL_LOG_BURST,
  LINK_UNAUTHENTICATED_CONNECTIONS_MAX,
} from '../../src/node/replication/link-server.js';
import type { Api } from '../../src/testing/cluster.js';
import { apiOf, waitFor } from '../../src/testing/cluster.js';
import type { NodeProcess, TestTopology } from '../../src/testing/proc.js';
import { startNodeProcess, writeTopology } from '../../src/testing/proc.js';
import {
  authenticate,
  RawPeer,
  RecordMaker,
  recordsFrame as recordsFrameOf,
  sleep,
} from '../../src/testing/link-peer.js';

const VOLUME_BYTES = 8 * 1024 * 1024;
const BLOCK = 4096;
/** Where the good record (and most bad ones) write. */
const DATA_OFFSET = 1024 * 1024;
/** b's link timeout (LINK_TIMING_DEFAULT): a silent session must be gone well before this bound. */
const SILENCE_BOUND_MS = 8000;

const root = mkdtempSync(join(tmpdir(), 'rc-link-bad-'));
let topo: TestTopology;
let B: NodeProcess;
let api: Api;
let linkPort: number;
let volumeFile: string;

before(async () => {
  const dir = mkdtempSync(join(root, 'n-'));
  topo = await writeTopology(
    dir,
    { a: { volumes: { v: '8MiB' } }, b: { volumes: { v: '8MiB' } } },
    { g: ['a', 'b', 'v'] },
  );
  B = await startNodeProcess(topo.file, 'b');
  api = apiOf(topo.ports.get('b')!.api);
  linkPort = topo.ports.get('b')!.link;
  volumeFile = join(dir, 'b', 'volumes', 'v.img');
});

after(async () => {
  if (B && B.child.exitCode === null && B.child.signalCode === null) await B.stop();
  rmSync(root, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------------
// A hand-driven peer (src/testing/link-peer.ts): node "a" as far as b can tell, when it behaves.

/** A full, correct handshake as node a; returns the RESUME b sends for group g. */
const authenticated = (secret = topo.secret) => authenticate(linkPort, secret, 'g');

const maker = new RecordMaker('a');
const nodeA = maker.nodeId;

/** A data record of group g (epoch 1) with its payload; each call takes a new, larger key. */
function dataRecord(
  s: number,
  payload: Buffer,
  over: Partial<Pick<RecordHeader, 'volume' | 'offset'>> = {},
): { header: RecordHeader; payload: Buffer } {
  return maker.data('g', s, payload, {
    volume: over.volume ?? 'v',
    offset: over.offset ?? byteOffset(DATA_OFFSET),
  });
}

function recordsFrame(rec: { header: RecordHeader; payload: Buffer }, group = 'g'): Buffer {
  return recordsFrameOf(group, [rec]);
}

const pattern = (byte: number): Buffer => Buffer.alloc(BLOCK, byte);

// ---------------------------------------------------------------------------------------------
// What b says and shows

interface TargetStatus {
  name: string;
  state: string;
  linkUp: boolean;
  seqArrived: number;
  seqApplied: number;
  journal: { usedBytes: number; records: number };
  refusedFrames: number;
}

async function status(): Promise<TargetStatus> {
  const st = (await apiCall(api, topo.secret, 'GET', '/v1/status')) as { groups: TargetStatus[] };
  const g = st.groups.find((x) => x.name === 'g');
  assert.ok(g, 'b reports group g');
  return g;
}

/** b's stderr lines from `mark` on. */
const logSince = (mark: number): string[] => B.stderr.slice(mark);

/** Waits for a stderr line (from `mark` on) that matches every pattern; returns it. */
function logLine(mark: number, ...patterns: RegExp[]): Promise<string> {
  return waitFor(
    `b to log ${patterns.join(' and ')}`,
    async () => logSince(mark).find((l) => patterns.every((p) => p.test(l))),
    5000,
  ).catch((e: Error) => {
    throw new Error(`${e.message}; b logged:\n${logSince(mark).join('\n')}`);
  });
}

async function readTarget(offset: number, length: number): Promise<Buffer> {
  const r = (await apiCall(api, topo.secret, 'POST', '/v1/sets/g/read', {
    reads: [{ volume: 'v', offset, length }],
  })) as { reads: { data: string }[] };
  return Buffer.from(r.reads[0]!.data, 'base64');
}

/** Status and volume as they were before any bad input; taken by the first test. */
let baseline: TargetStatus;

/** b still runs, answers its API, and the bad input changed nothing. */
async function assertNothingChanged(what: string): Promise<void> {
  assert.equal(B.child.exitCode, null, `${what}: b exited`);
  assert.equal(B.child.signalCode, null, `${what}: b was killed`);
  const s = await waitFor(`${what}: b's link session to be gone`, async () => {
    const x = await status();
    return x.linkUp ? undefined : x;
  });
  assert.equal(s.seqArrived, baseline.seqArrived, `${what}: a record arrived`);
  assert.equal(s.seqApplied, baseline.seqApplied, `${what}: a record was applied`);
  assert.equal(s.journal.records, baseline.journal.records, `${what}: a record was journalled`);
  assert.equal(s.journal.usedBytes, baseline.journal.usedBytes, `${what}: the target journal grew`);
  assert.ok(
    (await readTarget(DATA_OFFSET, BLOCK)).equals(Buffer.alloc(BLOCK)),
    `${what}: target data changed`,
  );
  assert.ok(
    (await readTarget(VOLUME_BYTES - BLOCK, BLOCK)).equals(Buffer.alloc(BLOCK)),
    `${what}: target data changed at the end of the volume`,
  );
  assert.ok(readFileSync(volumeFile).equals(Buffer.alloc(VOLUME_BYTES)), `${what}: the volume file changed`);
}

// ---------------------------------------------------------------------------------------------
// The cases, in order: each leaves b as it found it; the last shows it still replicates.

test('baseline: b runs as the target of g, nothing received yet', async () => {
  baseline = await status();
  assert.equal(baseline.seqArrived, 0);
  assert.equal(baseline.seqApplied, 0);
  assert.equal(baseline.journal.records, 0);
  assert.equal(baseline.linkUp, false);
  await assertNothingChanged('baseline');
});

test('a peer with the wrong secret is refused with AUTH_FAIL and a logged reason', async () => {
  const mark = B.stderr.length;
  const peer = await RawPeer.connect(linkPort);
  peer.hello('a');
  const hello = await peer.next('HELLO from b');
  assert.equal(hello.type, FrameType.hello);
  peer.send({
    type: FrameType.challengeResponse,
    proof: authProof('not-the-cluster-secret', { nonce: hello.nonce, prover: 'a', verifier: 'b' }),
  });
  const frames = await peer.untilClosed();
  const fail = frames.find((f) => f.type === FrameType.authFail);
  assert.ok(fail, `b answered ${frames.map((f) => frameTypeName(f.type)).join(', ')}, no AUTH_FAIL`);
  assert.match(fail.reason, /a did not prove the cluster secret/);
  assert.ok(!frames.some((f) => f.type === FrameType.authOk || f.type === FrameType.resume));
  await logLine(mark, /link peer refused/, /a did not prove the cluster secret/);
  await assertNothingChanged('wrong secret');
});

test('a proof made for the wrong names (right secret) is refused too', async () => {
  const mark = B.stderr.length;
  const peer = await RawPeer.connect(linkPort);
  peer.hello('a');
  const hello = await peer.next('HELLO from b');
  assert.equal(hello.type, FrameType.hello);
  // b's proof reflected back: prover and verifier swapped.
  peer.send({
    type: FrameType.challengeResponse,
    proof: authProof(topo.secret, { nonce: hello.nonce, prover: 'b', verifier: 'a' }),
  });
  const frames = await peer.untilClosed();
  assert.ok(frames.some((f) => f.type === FrameType.authFail));
  assert.ok(!frames.some((f) => f.type === FrameType.authOk));
  await logLine(mark, /link peer refused/, /did not prove the cluster secret/);
  await assertNothingChanged('reflected proof');
});

test('a HELLO from a node not in the configuration is refused', async () => {
  const mark = B.stderr.length;
  const peer = await RawPeer.connect(linkPort);
  peer.hello('mallory');
  const frames = await peer.untilClosed();
  const fail = frames.find((f) => f.type === FrameType.authFail);
  assert.ok(fail, 'AUTH_FAIL for mallory');
  assert.match(fail.reason, /mallory is not a node of the configuration/);
  assert.ok(!frames.some((f) => f.type === FrameType.challengeResponse), 'b proved nothing to mallory');
  await logLine(mark, /link peer refused/, /mallory is not a node of the configuration/);
  await assertNothingChanged('unknown node');
});

test("a HELLO claiming b's own name is refused", async () => {
  const mark = B.stderr.length;
  const peer = await RawPeer.connect(linkPort);
  peer.hello('b');
  const frames = await peer.untilClosed();
  assert.ok(frames.some((f) => f.type === FrameType.authFail));
  await logLine(mark, /link peer refused/, /claims this node's own name b/);
  await assertNothingChanged('own name');
});

test('garbage bytes instead of a HELLO close the session with a logged reason', async () => {
  const mark = B.stderr.length;
  const peer = await RawPeer.connect(linkPort);
  const garbage = randomBytes(64);
  garbage[0] = 0x00; // never the magic's 'R'
  peer.write(garbage);
  const frames = await peer.untilClosed();
  const err = frames.find((f) => f.type === FrameType.error);
  assert.ok(err && err.code === 'RC_ERR_PROTOCOL', 'ERROR RC_ERR_PROTOCOL before the close');
  await logLine(mark, /link session closed/, /bad frame from .*: magic: bad magic byte 0/);
  await assertNothingChanged('garbage before HELLO');
});

test('a HELLO header declaring a huge payload before authentication is refused at once', async () => {
  const mark = B.stderr.length;
  const peer = await RawPeer.connect(linkPort);
  // The header alone, declaring the frame limit (64 MiB): b must refuse it from the declared
  // length, before any payload. Had it waited for the payload, silence would end the session.
  const header = Buffer.alloc(LINK_FRAME_HEADER_BYTES);
  LINK_MAGIC.copy(header, 0);
  header[4] = 1;
  header[5] = FrameType.hello;
  header.writeUInt32LE(LINK_FRAME_PAYLOAD_BYTES_MAX, 8);
  peer.write(header);
  const frames = await peer.untilClosed();
  const err = frames.find((f) => f.type === FrameType.error);
  assert.ok(err && err.code === 'RC_ERR_PROTOCOL', `b answered ${JSON.stringify(err)}, not RC_ERR_PROTOCOL`);
  await logLine(
    mark,
    /link session closed/,
    new RegExp(
      `bad frame from .* before authentication \\(phase hello\\): length: declared payload of ${LINK_FRAME_PAYLOAD_BYTES_MAX} bytes exceeds ${LINK_HANDSHAKE_PAYLOAD_BYTES_MAX}`,
    ),
  );
  await assertNothingChanged('huge HELLO before authentication');
});

test('garbage bytes on an authenticated session close it with a logged reason', async () => {
  const { peer, nextSeq } = await authenticated();
  assert.equal(nextSeq, 1);
  const mark = B.stderr.length;
  const garbage = randomBytes(64);
  garbage[0] = 0x00;
  peer.write(garbage);
  const frames = await peer.untilClosed();
  assert.ok(frames.some((f) => f.type === FrameType.error && f.code === 'RC_ERR_PROTOCOL'));
  await logLine(mark, /link session closed/, /bad frame from .*: magic: bad magic byte 0/);
  await assertNothingChanged('garbage after the handshake');
});

test('a RECORDS frame with a flipped bit is refused by its checksum', async () => {
  const { peer, nextSeq } = await authenticated();
  const mark = B.stderr.length;
  const frame = recordsFrame(dataRecord(nextSeq, pattern(0xa1)));
  frame[frame.length - 100]! ^= 0x04;
  peer.write(frame);
  await peer.untilClosed();
  await logLine(mark, /link session closed/, /bad frame from .*: checksum:/);
  await assertNothingChanged('flipped bit');
});

test('a corrupt record behind a valid frame checksum is refused', async () => {
  const { peer, nextSeq } = await authenticated();
  const mark = B.stderr.length;
  const frame = recordsFrame(dataRecord(nextSeq, pattern(0xa2)));
  frame[frame.length - 100]! ^= 0x04;
  // Reseal the frame: its crc32c covers the header (crc field zeroed) and the payload.
  frame.writeUInt32LE(0, 12);
  frame.writeUInt32LE(crc32c(frame) >>> 0, 12);
  peer.write(frame);
  await peer.untilClosed();
  await logLine(mark, /link session closed/, /bad frame from .*: record:/);
  await assertNothingChanged('corrupt record');
});

test('a RECORDS frame cut in half, then the connection closed: nothing journalled', async () => {
  const { peer, nextSeq } = await authenticated();
  const mark = B.stderr.length;
  const frame = recordsFrame(dataRecord(nextSeq, pattern(0xb1)));
  peer.write(frame.subarray(0, Math.floor(frame.length / 2)));
  await sleep(200);
  peer.end();
  await peer.closed;
  await logLine(
    mark,
    /link session closed/,
    /connection closed by peer inside a frame \(\d+ bytes dropped\)/,
  );
  await assertNothingChanged('half a frame, then close');
});

test('a RECORDS frame cut in half, then silence: b times the session out', async () => {
  const { peer, nextSeq } = await authenticated();
  const mark = B.stderr.length;
  const frame = recordsFrame(dataRecord(nextSeq, pattern(0xb2)));
  // Only the header and part of the payload: b holds it, waiting for the rest that never comes.
  peer.write(frame.subarray(0, LINK_FRAME_HEADER_BYTES + 40));
  const t0 = performance.now();
  const frames = await peer.untilClosed(SILENCE_BOUND_MS);
  const ms = performance.now() - t0;
  assert.ok(ms > 1000, `b closed a silent session after only ${Math.round(ms)} ms`);
  const err = frames.find((f) => f.type === FrameType.error);
  assert.ok(err && err.code === 'RC_ERR_TIMEOUT', 'ERROR RC_ERR_TIMEOUT before the close');
  await logLine(mark, /link session closed/, /no frame for \d+ ms: peer presumed dead/);
  await assertNothingChanged('half a frame, then silence');
});

test('a record whose seq leaves a gap after RESUME is refused', async () => {
  const { peer, nextSeq } = await authenticated();
  const mark = B.stderr.length;
  peer.write(recordsFrame(dataRecord(nextSeq + 5, pattern(0xc1))));
  const frames = await peer.untilClosed();
  assert.ok(frames.some((f) => f.type === FrameType.error && f.code === 'RC_ERR_PROTOCOL'));
  assert.ok(!frames.some((f) => f.type === FrameType.ack && f.durableSeq >= nextSeq), 'no ACK for it');
  await logLine(
    mark,
    /link frame refused; nothing journalled/,
    new RegExp(`seq ${nextSeq + 5} does not follow ${nextSeq - 1} \\(a gap\\)`),
  );
  await assertNothingChanged('seq gap');
  assert.ok((await status()).refusedFrames > baseline.refusedFrames, 'counted as a refused frame');
});

test('a record past the end of the target volume is refused', async () => {
  const { peer, nextSeq } = await authenticated();
  const mark = B.stderr.length;
  // Starts in the volume's last block, ends past it.
  const offset = VOLUME_BYTES - BLOCK / 2;
  peer.write(recordsFrame(dataRecord(nextSeq, pattern(0xc2), { offset: byteOffset(offset) })));
  await peer.untilClosed();
  await logLine(
    mark,
    /link frame refused; nothing journalled/,
    new RegExp(`range ${offset}\\+${BLOCK} is past the end of the target volume \\(${VOLUME_BYTES} bytes\\)`),
  );
  await assertNothingChanged('past the end');
});

test('a record far past the end (offset near 2^53) is refused', async () => {
  const { peer, nextSeq } = await authenticated();
  const mark = B.stderr.length;
  const offset = Number.MAX_SAFE_INTEGER - BLOCK;
  peer.write(recordsFrame(dataRecord(nextSeq, pattern(0xc3), { offset: byteOffset(offset) })));
  await peer.untilClosed();
  await logLine(mark, /link frame refused; nothing journalled/, /is past the end of the target volume/);
  await assertNothingChanged('offset near 2^53');
});

test('a record for a volume that is not a pair of the group is refused', async () => {
  const { peer, nextSeq } = await authenticated();
  const mark = B.stderr.length;
  peer.write(recordsFrame(dataRecord(nextSeq, pattern(0xc4), { volume: 'w' })));
  await peer.untilClosed();
  await logLine(mark, /link frame refused; nothing journalled/, /volume \\"w\\" is not a pair of the group/);
  await assertNothingChanged('not a pair');
});

test('records for a group that a does not replicate to b are refused', async () => {
  const { peer, nextSeq } = await authenticated();
  const mark = B.stderr.length;
  const rec = dataRecord(nextSeq, pattern(0xc5));
  peer.write(recordsFrame({ header: { ...rec.header, group: 'zz' }, payload: rec.payload }, 'zz'));
  await peer.untilClosed();
  await logLine(
    mark,
    /link frame refused; nothing journalled/,
    /frame for group zz, which a does not replicate to this node/,
  );
  await assertNothingChanged('unknown group');
});

test('a TICK after a seq that never arrived is refused', async () => {
  const { peer, nextSeq } = await authenticated();
  const mark = B.stderr.length;
  const key: OrderKey = maker.keyAt(1e6);
  peer.send({ type: FrameType.tick, group: 'g', epoch: 1, seq: seq(nextSeq + 5), key });
  await peer.untilClosed();
  await logLine(
    mark,
    /link frame refused; nothing journalled/,
    new RegExp(`tick after seq ${nextSeq + 5}, only ${nextSeq - 1} received`),
  );
  await assertNothingChanged('tick past the received seq');
});

test('after all that, a correct session replicates: ACK, TICK, applied, read back at a cut', async () => {
  const { peer, nextSeq } = await authenticated();
  assert.equal(nextSeq, 1, 'nothing of the bad input moved the resume point');
  peer.startHeartbeats();
  try {
    peer.send({ type: FrameType.pairState, group: 'g', epoch: 1, state: 'pair', copyEndSeq: seq(0) });
    const data = Buffer.alloc(BLOCK);
    for (let i = 0; i < BLOCK; i++) data[i] = (i * 7 + 3) & 0xff;
    const rec = dataRecord(nextSeq, data);
    peer.write(recordsFrame(rec));
    const ack = await peer.next(
      `ACK of seq ${nextSeq}`,
      (f) => f.type === FrameType.ack && f.durableSeq >= nextSeq,
    );
    assert.ok(ack.type === FrameType.ack && ack.group === 'g' && ack.epoch === 1);
    assert.equal(ack.durableSeq, nextSeq);
    const key: OrderKey = {
      writeTimeUs: timeUs(rec.header.writeTimeUs + 1),
      nodeId: nodeA,
      ordinal: ordinal(rec.header.ordinal + 1),
    };
    peer.send({ type: FrameType.tick, group: 'g', epoch: 1, seq: seq(nextSeq), key });
    const st = await waitFor(
      'seq 1 applied at b',
      async () => {
        const s = await status();
        return s.seqApplied >= nextSeq ? s : undefined;
      },
      5000,
    );
    assert.equal(st.seqArrived, nextSeq);
    assert.equal(st.linkUp, true);
    const r = (await apiCall(api, topo.secret, 'POST', '/v1/sets/g/read', {
      reads: [{ volume: 'v', offset: DATA_OFFSET, length: BLOCK }],
    })) as { set: string; cut: OrderKey | null; reads: { data: string }[] };
    assert.equal(r.set, 'g');
    assert.ok(r.cut !== null, 'read at a completed cut');
    assert.ok(Buffer.from(r.reads[0]!.data, 'base64').equals(data), 'the record is applied');
    // The ACKs report it applied too, eventually.
    if (ack.appliedSeq < nextSeq) {
      await peer.next('ACK with appliedSeq 1', (f) => f.type === FrameType.ack && f.appliedSeq >= nextSeq);
    }
  } finally {
    peer.end();
    await peer.closed;
  }
});

/**
 * A connection that has proved nothing and holds one of b's unauthenticated slots: it sends a byte
 * of a HELLO every 500 ms, so neither silence nor a whole HELLO ends it before the handshake
 * deadline.
 */
class SlotHolder {
  bytesIn = 0;
  isClosed = false;
  readonly greeted: Promise<void>;
  private sent = 0;
  private readonly trickle: NodeJS.Timeout;

  constructor(readonly socket: net.Socket) {
    const hello = encodeFrame({
      type: FrameType.hello,
      versionMin: LINK_VERSION_MIN,
      versionMax: LINK_VERSION_MAX,
      nonce: newNonce(),
      nodeName: 'a',
      clusterId: '',
      groups: ['g'],
    });
    this.greeted = new Promise((resolve) => socket.once('data', () => resolve()));
    socket.on('data', (chunk: Buffer) => (this.bytesIn += chunk.length));
    socket.on('close', () => (this.isClosed = true));
    this.trickle = setInterval(() => {
      if (this.sent < hello.length && !socket.destroyed) socket.write(hello.subarray(this.sent, ++this.sent));
    }, 500);
  }

  static async open(port: number): Promise<SlotHolder> {
    const s = net.connect(port, '127.0.0.1');
    s.on('error', () => {});
    await new Promise((resolve) => s.once('connect', resolve));
    return new SlotHolder(s);
  }

  /** What b did first: greeted the connection with its HELLO (let it in), or closed it. */
  firstAnswer(): Promise<'greeted' | 'closed'> {
    if (this.isClosed) return Promise.resolve(this.bytesIn > 0 ? 'greeted' : 'closed');
    const closed = new Promise<'closed'>((resolve) => this.socket.once('close', () => resolve('closed')));
    return Promise.race([this.greeted.then(() => 'greeted' as const), closed]);
  }

  drop(): void {
    clearInterval(this.trickle);
    this.socket.destroy();
  }
}

test('connections past the cap of unauthenticated ones are closed at once; an authenticated peer goes on', async () => {
  const first = await authenticated();
  const peer = first.peer;
  const nextSeq = first.nextSeq;
  peer.startHeartbeats();
  const mark = B.stderr.length;
  const flood: SlotHolder[] = [];
  const extra: SlotHolder[] = [];
  try {
    for (let i = 0; i < LINK_UNAUTHENTICATED_CONNECTIONS_MAX; i++)
      flood.push(await SlotHolder.open(linkPort));
    // b has taken every one in: each got b's HELLO.
    await Promise.all(flood.map((h) => h.greeted));
    for (let i = 0; i < 3; i++) extra.push(await SlotHolder.open(linkPort));
    for (const [i, h] of extra.entries()) {
      assert.equal(await h.firstAnswer(), 'closed', `connection ${i} past the cap was let in`);
      assert.equal(h.bytesIn, 0, `connection ${i} past the cap got bytes from b`);
    }
    await logLine(mark, /link connection refused: too many unauthenticated connections/);
    // The authenticated peer replicates meanwhile: ready sessions are not counted against the cap.
    // (The previous test's TICK took the key after its record: this record's key must be above it.)
    maker.key();
    peer.write(recordsFrame(dataRecord(nextSeq, pattern(0xd1), { offset: byteOffset(DATA_OFFSET + BLOCK) })));
    const ack = await peer.next(
      `ACK of seq ${nextSeq}`,
      (f) => f.type === FrameType.ack && f.durableSeq >= nextSeq,
    );
    assert.ok(ack.type === FrameType.ack && ack.durableSeq === nextSeq);
    assert.ok(
      flood.every((h) => !h.isClosed),
      'the flood held its slots throughout (else the refusals above prove nothing)',
    );
  } finally {
    for (const h of [...flood, ...extra]) h.drop();
    peer.end();
    await peer.closed;
  }
  // The flood gone, a new peer is let in (retrying while b still counts the flood's sockets).
  const again = await waitFor(
    'a new peer to be let in after the flood',
    () => authenticated().catch(() => undefined),
    10_000,
  );
  assert.equal(again.nextSeq, nextSeq + 1, 'the record sent during the flood is durable at b');
  again.peer.end();
  await again.peer.closed;
  // The cap was logged once, however many it turned away (the extras, and the retries above).
  const capLines = logSince(mark).filter((l) => /link connection refused: too many unauthenticated/.test(l));
  assert.equal(capLines.length, 1, `the cap's refusals logged:\n${capLines.join('\n')}`);
  // 64 unauthenticated sessions ended together: their closes are logged within the rate limit
  // (per kind: the peer's close, or a reset).
  const floodCloses = logSince(mark).filter((l) => /link session closed/.test(l) && !/"peer":/.test(l));
  assert.ok(
    floodCloses.length <= 2 * LINK_REFUSAL_LOG_BURST,
    `${floodCloses.length} lines for the flood's closes:\n${floodCloses.join('\n')}`,
  );
});

test('b stops cleanly after all that', async () => {
  assert.equal(B.child.exitCode, null, 'b still runs');
  assert.equal(await B.stop(), 0, 'b stops cleanly');
});
