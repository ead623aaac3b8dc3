/**
 * What an unauthenticated peer can cost a link session (src/link/session.ts), over loopback
 * sockets in-process, proves:
 * - before the handshake is done, a frame header declaring more than the largest handshake frame
 *   (LINK_HANDSHAKE_PAYLOAD_BYTES_MAX) ends the session at once, from the header alone: nothing
 *   of its payload needs to arrive;
 * - once both ends are authenticated the frame limit applies again: a frame far above the
 *   handshake limit goes through;
 * - a peer that sends a byte of its HELLO at a time, never silent for a link timeout, is closed at
 *   the handshake deadline (the close reason says so), not kept open while it trickles.
 * The node-level side (the cap on unauthenticated connections, a real node refusing a huge HELLO
 * and going on) is in test/replication/link-bad-input.test.ts.
 */
import assert from 'node:assert/strict';
import * as net from 'node:net';
import { test } from 'node:test';
import { byteOffset, nodeIdFromNumber, ordinal, RecordKind, seq, timeUs } from '../../src/core/types.js';
import { FrameDecoder } from '../../src/link/decoder.js';
import type { Frame, RecordsFrame } from '../../src/link/frames.js';
import {
  encodeFrame,
  FrameType,
  LINK_FRAME_HEADER_BYTES,
  LINK_HANDSHAKE_PAYLOAD_BYTES_MAX,
  LINK_MAGIC,
  LINK_VERSION_MAX,
  LINK_VERSION_MIN,
  newNonce,
} from '../../src/link/frames.js';
import { handshakeDeadlineMs, LinkSession } from '../../src/link/session.js';
import { readyPair, sessionOptions } from '../../src/testing/link-pair.js';

/** Short enough to keep the tests fast, long enough that a loaded machine never sees silence. */
const TIMEOUT_MS = 1000;
/** The trickling peer's pace: a byte every this many ms, far below TIMEOUT_MS. */
const TRICKLE_MS = 50;

const options = (self: string, peer: string) =>
  sessionOptions(self, peer, { heartbeatMs: 200, timeoutMs: TIMEOUT_MS });

interface Closed {
  readonly reason: string;
  readonly session: LinkSession;
}

/** A session "b" on the accepting end of a loopback connection; the test drives the other end raw. */
async function serverSession(): Promise<{
  client: net.Socket;
  session: LinkSession;
  closed: Promise<Closed>;
  fromSession: Frame[];
  end(): void;
}> {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
  const client = net.connect(port, '127.0.0.1');
  client.on('error', () => {});
  const fromSession: Frame[] = [];
  const decoder = new FrameDecoder();
  client.on('data', (chunk: Buffer) => {
    decoder.push(chunk);
    for (let step = decoder.next(); step !== 'need-more' && step.ok; step = decoder.next()) {
      fromSession.push(step.frame);
    }
  });
  const socket = await accepted;
  socket.on('error', () => {});
  let onClosed!: (c: Closed) => void;
  const closed = new Promise<Closed>((r) => (onClosed = r));
  const session = new LinkSession(socket, options('b', 'a'), {
    ready: () => {},
    frame: () => {},
    closed: (reason, s) => onClosed({ reason, session: s }),
  });
  return {
    client,
    session,
    closed,
    fromSession,
    end() {
      session.close('test done', false);
      client.destroy();
      server.close();
    },
  };
}

function helloFrom(name: string): Buffer {
  return encodeFrame({
    type: FrameType.hello,
    versionMin: LINK_VERSION_MIN,
    versionMax: LINK_VERSION_MAX,
    nonce: newNonce(),
    nodeName: name,
    clusterId: '',
    groups: ['g'],
  });
}

test('before authentication, a header declaring more than a handshake frame closes the session at once', async () => {
  const { client, closed, fromSession, end } = await serverSession();
  try {
    // A HELLO header only: its payload never comes, so only the header can have ended the session.
    const header = Buffer.alloc(LINK_FRAME_HEADER_BYTES);
    LINK_MAGIC.copy(header, 0);
    header[4] = 1;
    header[5] = FrameType.hello;
    header.writeUInt32LE(LINK_HANDSHAKE_PAYLOAD_BYTES_MAX + 1, 8);
    client.write(header);
    const { reason, session } = await closed;
    assert.match(
      reason,
      new RegExp(
        `before authentication \\(phase hello\\): length: declared payload of ${LINK_HANDSHAKE_PAYLOAD_BYTES_MAX + 1} bytes exceeds ${LINK_HANDSHAKE_PAYLOAD_BYTES_MAX}$`,
      ),
    );
    assert.equal(session.closeCode, 'RC_ERR_PROTOCOL');
    await new Promise<void>((r) => (client.closed ? r() : client.once('close', () => r())));
    assert.ok(
      fromSession.some((f) => f.type === FrameType.error && f.code === 'RC_ERR_PROTOCOL'),
      'the peer was told why',
    );
  } finally {
    end();
  }
});

test('once authenticated, frames far above the handshake limit go through', async () => {
  let received!: (f: Frame) => void;
  const got = new Promise<Frame>((r) => (received = r));
  let closedEarly!: (e: Error) => void;
  const failed = new Promise<never>((_, reject) => (closedEarly = reject));
  failed.catch(() => {});
  const { a, end } = await Promise.race([
    readyPair(received, {
      timing: { heartbeatMs: 200, timeoutMs: TIMEOUT_MS },
      onClosed: (reason) => closedEarly(new Error(`a session closed: ${reason}`)),
    }),
    failed,
  ]);
  try {
    const payload = Buffer.alloc(4 * LINK_HANDSHAKE_PAYLOAD_BYTES_MAX, 0x5a);
    const header = {
      kind: RecordKind.data,
      group: 'g',
      seq: seq(1),
      writeTimeUs: timeUs(1),
      hostTimeUs: timeUs(0),
      nodeId: nodeIdFromNumber(1),
      ordinal: ordinal(1),
      epoch: 1,
      volume: 'v',
      offset: byteOffset(0),
      length: payload.length,
      markerNo: 0,
    };
    assert.ok(a.send({ type: FrameType.records, group: 'g', epoch: 1, records: [{ header, payload }] }));
    const f = await Promise.race([got, failed]);
    assert.equal(f.type, FrameType.records);
    assert.ok((f as RecordsFrame).records[0]!.payload.equals(payload));
  } finally {
    end();
  }
});

test('a peer trickling its HELLO a byte at a time is closed at the handshake deadline', async () => {
  const { client, closed, fromSession, end } = await serverSession();
  const hello = helloFrom('a');
  let sent = 0;
  const trickle = setInterval(() => {
    if (sent < hello.length && !client.destroyed) client.write(hello.subarray(sent, ++sent));
  }, TRICKLE_MS);
  try {
    const { reason, session } = await closed;
    const deadlineMs = handshakeDeadlineMs(TIMEOUT_MS);
    assert.match(
      reason,
      new RegExp(`^handshake not done ${deadlineMs} ms after connecting \\(phase hello\\)`),
    );
    assert.equal(session.closeCode, 'RC_ERR_TIMEOUT');
    assert.ok(sent < hello.length, 'closed while the HELLO was still arriving');
    await new Promise<void>((r) => (client.closed ? r() : client.once('close', () => r())));
    assert.ok(fromSession.some((f) => f.type === FrameType.error && f.code === 'RC_ERR_TIMEOUT'));
  } finally {
    clearInterval(trickle);
    end();
  }
});
