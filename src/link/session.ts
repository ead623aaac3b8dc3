/**
 * One link connection between two nodes (doc/link-protocol.md): the versioned handshake that
 * authenticates both ends with the cluster secret, heartbeats and the idle timeout, and framed
 * sending and receiving once both ends are authenticated. What the frames mean is the caller's
 * (src/node/replication/*); this file only knows who is at the other end and whether it is alive.
 *
 *   socket --> HELLO both ways --> CHALLENGE_RESPONSE both ways --> AUTH_OK both ways --> ready
 *          \--> bad frame / wrong secret / unknown peer / silence / slow handshake --> closed(reason)
 *
 * Peer input never throws out of here: a frame that does not decode, a frame out of place, a
 * wrong proof, all end the session with a reason (and, where it helps the peer's operator, an
 * ERROR or AUTH_FAIL frame first); the owner logs it from the `closed` event, with `closeCode`
 * telling refusals, protocol errors and timeouts apart. A silent peer is noticed after `timeoutMs`
 * without any frame (heartbeats flow every `heartbeatMs` both ways), not after TCP's minutes.
 *
 * Until the session is ready the peer has proved nothing, so what it can cost is bounded:
 * - frames: the decoder refuses a header declaring more than LINK_HANDSHAKE_PAYLOAD_BYTES_MAX
 *   (the largest handshake frame) before buffering its payload; the frame limit applies once ready;
 * - time: the whole handshake must be done within handshakeDeadlineMs(timeoutMs) of the session's
 *   start, however the peer paces its bytes (the silence timeout alone would let a byte a second
 *   keep it open forever).
 * The number of unauthenticated sessions is the listener's to bound (link-server.ts).
 */
import type * as net from 'node:net';
import type { ErrorCode } from '../core/errors.js';
import { FrameDecoder } from './decoder.js';
import type { Frame, HelloFrame, OutFrame } from './frames.js';
import {
  authProof,
  encodeFrame,
  encodeFrameParts,
  FrameType,
  frameTypeName,
  LINK_FRAME_PAYLOAD_BYTES_MAX,
  LINK_HANDSHAKE_PAYLOAD_BYTES_MAX,
  LINK_VERSION_MAX,
  LINK_VERSION_MIN,
  negotiateVersion,
  newNonce,
  verifyAuthProof,
} from './frames.js';

export interface SessionOptions {
  readonly selfName: string;
  readonly secret: string;
  /** Groups this node replicates with peers (sent in HELLO, for the peer's log and checks). */
  readonly groups: readonly string[];
  /** Whether a node of this name may connect (a node of the configuration, not this one). */
  readonly knownPeer: (name: string) => boolean;
  /** When set, the peer must be this node (the dialling side knows whom it called). */
  readonly expectPeer?: string;
  readonly heartbeatMs: number;
  /** No frame for this long: the peer is dead. Also sets the handshake's deadline (below). */
  readonly timeoutMs: number;
  /** Current time in microseconds (heartbeats). */
  readonly nowUs: () => number;
}

export interface SessionEvents {
  ready(session: LinkSession): void;
  frame(frame: Frame, session: LinkSession): void;
  closed(reason: string, session: LinkSession): void;
}

type Phase = 'hello' | 'proof' | 'auth-ok' | 'ready' | 'closed';

/** Bytes queued on the socket beyond which a sender should wait for `drain`. */
export const LINK_SEND_QUEUE_BYTES_MAX = 8 * 1024 * 1024;

/**
 * The handshake (HELLO to both AUTH_OKs) must be done within this many link timeouts of the
 * session's start: 6 s with the default 3 s. It takes two round trips and two HMACs, so an honest
 * peer is done in milliseconds on a LAN and well within one timeout across continents; a peer
 * past the deadline is closed (RC_ERR_TIMEOUT) even if it keeps sending bytes.
 */
export const LINK_HANDSHAKE_TIMEOUTS = 2;

/** How long after its start a session must have finished its handshake, for a link timeout. */
export function handshakeDeadlineMs(timeoutMs: number): number {
  return LINK_HANDSHAKE_TIMEOUTS * timeoutMs;
}

export class LinkSession {
  private phase: Phase = 'hello';
  /** Reads at most handshake-sized frames until the peer is authenticated (maybeReady raises it). */
  private readonly decoder = new FrameDecoder(LINK_HANDSHAKE_PAYLOAD_BYTES_MAX);
  private readonly nonce = newNonce();
  private peer: HelloFrame | undefined;
  private sentAuthOk = false;
  private gotAuthOk = false;
  private readonly startMs = performance.now();
  private lastRecvMs = this.startMs;
  private lastPeerSentUs = 0;
  private timer: NodeJS.Timeout | undefined;
  /** Round trip of the latest heartbeat echo, in ms (NaN before the first). */
  rttMs = Number.NaN;
  closeReason = '';
  /**
   * The code of the close (RC_ERR_AUTH: refused; RC_ERR_TIMEOUT: silence or a slow handshake;
   * RC_ERR_PROTOCOL: bad or misplaced frames, and the peer's own close or error), for owners that
   * count or rate-limit closes by kind. Set with closeReason.
   */
  closeCode: ErrorCode | undefined;
  /** The peer's address and port, taken at the start (a closed socket no longer knows them). */
  readonly remote: string;

  constructor(
    private readonly socket: net.Socket,
    private readonly opts: SessionOptions,
    private readonly events: SessionEvents,
  ) {
    this.remote = `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`;
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (e) => this.close(`socket error: ${e.message}`, false));
    socket.on('close', () => {
      const partial = this.decoder.bufferedBytes;
      this.close(
        partial > 0
          ? `connection closed by peer inside a frame (${partial} bytes dropped)`
          : 'connection closed by peer',
        false,
      );
    });
    socket.on('drain', () => this.drainWaiters.splice(0).forEach((f) => f()));
    this.timer = setInterval(() => this.onTimer(), Math.max(10, Math.floor(opts.heartbeatMs / 2)));
    this.timer.unref();
    this.sendFrame({
      type: FrameType.hello,
      versionMin: LINK_VERSION_MIN,
      versionMax: LINK_VERSION_MAX,
      nonce: this.nonce,
      nodeName: opts.selfName,
      clusterId: '',
      groups: opts.groups.slice(0, 1024),
    });
  }

  private readonly drainWaiters: (() => void)[] = [];
  private lastHeartbeatMs = 0;
  private readPaused = false;
  private authenticatedPeer = '';

  /** The authenticated peer's name ('' until the handshake is done; kept after close for logs). */
  get peerName(): string {
    return this.authenticatedPeer;
  }
  get peerGroups(): readonly string[] {
    return this.peer?.groups ?? [];
  }
  get isReady(): boolean {
    return this.phase === 'ready';
  }
  get isClosed(): boolean {
    return this.phase === 'closed';
  }
  /** True when the socket's queue is long: wait for whenWritable() before sending more. */
  get congested(): boolean {
    return this.socket.writableLength > LINK_SEND_QUEUE_BYTES_MAX;
  }
  whenWritable(): Promise<void> {
    if (!this.congested || this.phase === 'closed') return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  /** Stops reading from the peer (TCP pushes back on it) until resume(); no timeout meanwhile. */
  pause(): void {
    this.readPaused = true;
    this.socket.pause();
  }

  resume(): void {
    if (!this.readPaused) return;
    this.readPaused = false;
    this.lastRecvMs = performance.now();
    this.socket.resume();
  }

  /** Sends a frame on a ready session; false if the session is closed. */
  send(frame: OutFrame): boolean {
    if (this.phase !== 'ready') return false;
    return this.sendFrame(frame);
  }

  /** Ends the session; `tellPeer` sends an ERROR frame with the reason first. */
  close(reason: string, tellPeer = true, code: ErrorCode = 'RC_ERR_PROTOCOL'): void {
    if (this.phase === 'closed') return;
    if (tellPeer && !this.socket.destroyed) {
      try {
        this.socket.write(encodeFrame({ type: FrameType.error, code, message: reason }));
      } catch {
        // the socket is going anyway
      }
    }
    this.phase = 'closed';
    this.closeReason = reason;
    this.closeCode = code;
    clearInterval(this.timer);
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 1000).unref();
    this.drainWaiters.splice(0).forEach((f) => f());
    this.events.closed(reason, this);
  }

  /**
   * Frames sent in one go (a pump's batches, an ACK after a journal sync) leave in one writev: the
   * socket is corked at the first and uncorked once the current callback's synchronous work and
   * microtasks are done. Every write is queued on the socket at once, so `congested` and 'drain'
   * see it; end() flushes a corked socket first.
   */
  private sendFrame(frame: OutFrame): boolean {
    if (this.socket.destroyed) return false;
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(this.uncork);
    }
    for (const part of encodeFrameParts(frame)) this.socket.write(part);
    return true;
  }

  private corked = false;
  private readonly uncork = (): void => {
    this.corked = false;
    this.socket.uncork();
  };

  private onTimer(): void {
    if (this.phase === 'closed') return;
    const now = performance.now();
    const deadlineMs = handshakeDeadlineMs(this.opts.timeoutMs);
    if (this.phase !== 'ready' && now - this.startMs > deadlineMs) {
      this.close(
        `handshake not done ${deadlineMs} ms after connecting (phase ${this.phase}): too slow, or not a peer`,
        true,
        'RC_ERR_TIMEOUT',
      );
      return;
    }
    if (!this.readPaused && now - this.lastRecvMs > this.opts.timeoutMs) {
      const what = this.phase === 'ready' ? 'no frame' : 'handshake not finished';
      this.close(
        `${what} for ${Math.round(now - this.lastRecvMs)} ms: peer presumed dead`,
        true,
        'RC_ERR_TIMEOUT',
      );
      return;
    }
    if (this.phase === 'ready' && now - this.lastHeartbeatMs >= this.opts.heartbeatMs) {
      this.lastHeartbeatMs = now;
      this.sendFrame({
        type: FrameType.heartbeat,
        sentTimeUs: this.opts.nowUs() as never,
        echoTimeUs: this.lastPeerSentUs as never,
      });
    }
  }

  private onData(chunk: Buffer): void {
    if (this.phase === 'closed') return;
    this.lastRecvMs = performance.now();
    this.decoder.push(chunk);
    for (;;) {
      if (this.isClosed) return;
      const step = this.decoder.next();
      if (step === 'need-more') return;
      if (!step.ok) {
        const when = this.phase === 'ready' ? '' : ` before authentication (phase ${this.phase})`;
        this.close(`bad frame from ${this.remote}${when}: ${step.error.code}: ${step.error.reason}`);
        return;
      }
      this.onFrame(step.frame);
    }
  }

  private onFrame(f: Frame): void {
    if (f.type === FrameType.error) {
      this.close(`peer reported ${f.code}: ${f.message}`, false);
      return;
    }
    if (f.type === FrameType.authFail) {
      this.close(`peer refused authentication: ${f.reason}`, false);
      return;
    }
    switch (this.phase) {
      case 'hello':
        if (f.type !== FrameType.hello) return this.unexpected(f);
        return this.onHello(f);
      case 'proof':
        if (f.type !== FrameType.challengeResponse) return this.unexpected(f);
        if (!verifyAuthProof(this.opts.secret, this.authInput(), f.proof)) {
          return this.refuse(`${this.peer!.nodeName} did not prove the cluster secret`);
        }
        this.phase = 'auth-ok';
        this.sentAuthOk = true;
        this.sendFrame({ type: FrameType.authOk });
        return this.maybeReady();
      case 'auth-ok':
        if (f.type !== FrameType.authOk) return this.unexpected(f);
        this.gotAuthOk = true;
        return this.maybeReady();
      case 'ready':
        if (f.type === FrameType.heartbeat) {
          this.lastPeerSentUs = f.sentTimeUs;
          if (f.echoTimeUs > 0) this.rttMs = (this.opts.nowUs() - f.echoTimeUs) / 1000;
          return;
        }
        if (
          f.type === FrameType.hello ||
          f.type === FrameType.challengeResponse ||
          f.type === FrameType.authOk
        ) {
          return this.unexpected(f);
        }
        this.events.frame(f, this);
        return;
      case 'closed':
        return;
    }
  }

  private onHello(f: HelloFrame): void {
    const version = negotiateVersion({ versionMin: LINK_VERSION_MIN, versionMax: LINK_VERSION_MAX }, f);
    if (version === null) {
      return this.refuse(`no common protocol version (peer ${f.versionMin}..${f.versionMax})`);
    }
    if (f.nodeName === this.opts.selfName)
      return this.refuse(`peer claims this node's own name ${f.nodeName}`);
    if (!this.opts.knownPeer(f.nodeName))
      return this.refuse(`${f.nodeName} is not a node of the configuration`);
    if (this.opts.expectPeer !== undefined && f.nodeName !== this.opts.expectPeer) {
      return this.refuse(`expected node ${this.opts.expectPeer}, ${f.nodeName} answered`);
    }
    this.peer = f;
    this.phase = 'proof';
    this.sendFrame({
      type: FrameType.challengeResponse,
      proof: authProof(this.opts.secret, {
        nonce: f.nonce,
        prover: this.opts.selfName,
        verifier: f.nodeName,
      }),
    });
  }

  private authInput() {
    return { nonce: this.nonce, prover: this.peer!.nodeName, verifier: this.opts.selfName };
  }

  private maybeReady(): void {
    if (!this.sentAuthOk || !this.gotAuthOk || this.phase !== 'auth-ok') return;
    this.phase = 'ready';
    this.decoder.payloadBytesMax = LINK_FRAME_PAYLOAD_BYTES_MAX;
    this.authenticatedPeer = this.peer!.nodeName;
    this.lastHeartbeatMs = 0;
    this.events.ready(this);
  }

  /** Refuses the peer: AUTH_FAIL with the reason, then close (the owner logs it, RC_ERR_AUTH). */
  private refuse(reason: string): void {
    if (!this.socket.destroyed) this.socket.write(encodeFrame({ type: FrameType.authFail, reason }));
    this.close(reason, false, 'RC_ERR_AUTH');
  }

  private unexpected(f: Frame): void {
    this.close(`unexpected ${frameTypeName(f.type)} frame during ${this.phase}`);
  }
}
