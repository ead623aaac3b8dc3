/**
 * A hand-driven link peer for tests: a raw TCP socket that speaks the link protocol with the real
 * codec (src/link/frames.ts, decoder.ts) and does exactly what a test tells it, the malformed and
 * the contradictory included. `authenticate` runs the handshake as a node of the configuration;
 * `RecordMaker` builds records with keys that rise with each call, as a source's do.
 */
import assert from 'node:assert/strict';
import * as net from 'node:net';
import type { OrderKey, RecordHeader } from '../core/types.js';
import { byteOffset, nodeIdOf, ordinal, RecordKind, seq, timeUs } from '../core/types.js';
import { FrameDecoder } from '../link/decoder.js';
import type { Frame, FrameError, OutFrame } from '../link/frames.js';
import {
  authProof,
  encodeFrame,
  FrameType,
  frameTypeName,
  LINK_VERSION_MAX,
  LINK_VERSION_MIN,
  newNonce,
  verifyAuthProof,
} from '../link/frames.js';

export class RawPeer {
  readonly nonce = newNonce();
  private readonly decoder = new FrameDecoder();
  private readonly queue: Frame[] = [];
  private wake: (() => void) | undefined;
  decodeError: FrameError | undefined;
  isClosed = false;
  readonly closed: Promise<void>;
  private heartbeat: NodeJS.Timeout | undefined;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.decoder.push(chunk);
      for (;;) {
        const step = this.decoder.next();
        if (step === 'need-more') break;
        if (!step.ok) {
          this.decodeError = step.error;
          break;
        }
        this.queue.push(step.frame);
      }
      this.wake?.();
    });
    socket.on('error', () => {});
    this.closed = new Promise((resolve) =>
      socket.on('close', () => {
        this.isClosed = true;
        clearInterval(this.heartbeat);
        this.wake?.();
        resolve();
      }),
    );
  }

  static connect(port: number): Promise<RawPeer> {
    return new Promise((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1', () => {
        s.off('error', reject);
        resolve(new RawPeer(s));
      });
      s.once('error', reject);
    });
  }

  send(f: OutFrame): void {
    this.socket.write(encodeFrame(f));
  }

  write(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  hello(nodeName = 'a', groups: readonly string[] = ['g']): void {
    this.send({
      type: FrameType.hello,
      versionMin: LINK_VERSION_MIN,
      versionMax: LINK_VERSION_MAX,
      nonce: this.nonce,
      nodeName,
      clusterId: '',
      groups: [...groups],
    });
  }

  /** Heartbeats every 500 ms, as a live source sends them (a silent peer is timed out). */
  startHeartbeats(): void {
    this.heartbeat = setInterval(() => {
      if (!this.socket.destroyed) {
        const now = Math.floor((performance.timeOrigin + performance.now()) * 1000);
        this.send({ type: FrameType.heartbeat, sentTimeUs: timeUs(now), echoTimeUs: timeUs(0) });
      }
    }, 500);
  }

  /**
   * The next frame that is not a HEARTBEAT (and that `accept` takes, skipping others); throws when
   * the connection closes first or nothing comes within `timeoutMs`.
   */
  async next(what: string, accept: (f: Frame) => boolean = () => true, timeoutMs = 5000): Promise<Frame> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      while (this.queue.length > 0) {
        const f = this.queue.shift()!;
        if (f.type !== FrameType.heartbeat && accept(f)) return f;
      }
      if (this.isClosed) throw new Error(`connection closed while waiting for ${what}`);
      const left = deadline - performance.now();
      if (left <= 0) throw new Error(`no ${what} within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.wake = undefined;
    }
  }

  /** Frames received (heartbeats left out) until the node closed the connection; fails if it stays open. */
  async untilClosed(timeoutMs = 5000): Promise<Frame[]> {
    const closed = await Promise.race([this.closed.then(() => true), sleep(timeoutMs).then(() => false)]);
    if (!closed) {
      this.socket.destroy();
      assert.fail(`the node did not close the connection within ${timeoutMs} ms`);
    }
    return this.queue.splice(0).filter((f) => f.type !== FrameType.heartbeat);
  }

  end(): void {
    clearInterval(this.heartbeat);
    this.socket.end();
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * A full, correct handshake with the node listening on `port`, as node `self`, which must find
 * `peer` at the other end; returns the RESUME that node sends for `group`.
 */
export async function authenticate(
  port: number,
  secret: string,
  group: string,
  self = 'a',
  peer = 'b',
): Promise<{ peer: RawPeer; nextSeq: number }> {
  const p = await RawPeer.connect(port);
  p.hello(self, [group]);
  const hello = await p.next(`HELLO from ${peer}`);
  assert.equal(hello.type, FrameType.hello, `${peer} sent ${frameTypeName(hello.type)} first`);
  assert.equal(hello.nodeName, peer);
  p.send({
    type: FrameType.challengeResponse,
    proof: authProof(secret, { nonce: hello.nonce, prover: self, verifier: peer }),
  });
  const proof = await p.next(`CHALLENGE_RESPONSE from ${peer}`);
  assert.equal(proof.type, FrameType.challengeResponse);
  assert.ok(
    verifyAuthProof(secret, { nonce: p.nonce, prover: peer, verifier: self }, proof.proof),
    `${peer}'s own proof checks out`,
  );
  const ok = await p.next(`AUTH_OK from ${peer}`);
  assert.equal(ok.type, FrameType.authOk, `${peer} answered ${frameTypeName(ok.type)}`);
  p.send({ type: FrameType.authOk });
  const resume = await p.next(
    `RESUME of ${group} from ${peer}`,
    (f) => f.type === FrameType.resume && f.group === group,
  );
  assert.ok(resume.type === FrameType.resume && resume.epoch === 1);
  return { peer: p, nextSeq: resume.nextSeq };
}

/** Records of node `node` (epoch 1) whose keys rise with every one made, as a source's do. */
export class RecordMaker {
  private nextOrdinal = 1;
  readonly nodeId;

  constructor(
    node = 'a',
    private readonly baseTimeUs = 1_700_000_000_000_000,
  ) {
    this.nodeId = nodeIdOf(node);
  }

  /** The next key: above every key made so far. */
  key(): OrderKey {
    return this.keyAt(this.nextOrdinal++);
  }

  /** The key with ordinal `o` (any: a test may want one out of order); later key()s lie above it. */
  keyAt(o: number): OrderKey {
    this.nextOrdinal = Math.max(this.nextOrdinal, o + 1);
    return { writeTimeUs: timeUs(this.baseTimeUs + o), nodeId: this.nodeId, ordinal: ordinal(o) };
  }

  data(
    group: string,
    s: number,
    payload: Buffer,
    at: Pick<RecordHeader, 'volume' | 'offset'>,
    key: OrderKey = this.key(),
  ): { header: RecordHeader; payload: Buffer } {
    const header: RecordHeader = {
      kind: RecordKind.data,
      group,
      seq: seq(s),
      writeTimeUs: key.writeTimeUs,
      hostTimeUs: timeUs(0),
      nodeId: key.nodeId,
      ordinal: key.ordinal,
      epoch: 1,
      volume: at.volume,
      offset: byteOffset(at.offset),
      length: payload.length,
      markerNo: 0,
    };
    return { header, payload };
  }
}

/** One RECORDS frame of `group` (epoch 1). */
export function recordsFrame(
  group: string,
  records: readonly { header: RecordHeader; payload: Buffer }[],
): Buffer {
  return encodeFrame({ type: FrameType.records, group, epoch: 1, records: [...records] });
}
