/**
 * One native-protocol connection on the server side: the hello, the request pump with its
 * in-flight window, the handlers that call the node's VolumeExports, and the orderly close.
 * NativeServer (server.ts) owns the listener and creates one of these per accepted socket; the
 * wire format is in protocol.ts.
 *
 *   socket data -> ByteQueue -> decodeRequest -> checkRequest -> on<Type>() -> VolumeExport
 *                                                                    |
 *   socket <- reply (cookie, status, payload) <----------------------+  (completion order)
 *
 * Back-pressure: a request counts as in flight from decoding until its reply has been handed to
 * the kernel. When the window (NATIVE_MAX_IN_FLIGHT requests, NATIVE_MAX_IN_FLIGHT_BYTES of
 * payload) is full, the next decoded request is parked and the socket paused, so neither the
 * receive queue nor unread replies can grow without bound.
 *
 * Errors: a request with bad fields gets an error reply; bytes that cannot be framed (bad magic,
 * unknown type, oversized payload) close the connection after the requests already in flight
 * have been answered, with the reason logged. Nothing a peer sends can throw out of here.
 */
import type { Socket } from 'node:net';
import { AssertionError, unreachable } from '../../core/assert.js';
import { timeUs } from '../../core/types.js';
import { BackendError, type ExportCatalog, type VolumeExport } from '../backend.js';
import {
  ByteQueue,
  checkRequest,
  decodeHello,
  decodeRequest,
  encodeErrorReply,
  encodeHello,
  encodeOpenInfo,
  encodeReplyHeader,
  NATIVE_CLOSE_LINGER_MS,
  NATIVE_HELLO_TIMEOUT_MS,
  NATIVE_MAX_HANDLES_PER_CONNECTION,
  NATIVE_MAX_IN_FLIGHT,
  NATIVE_MAX_IN_FLIGHT_BYTES,
  NATIVE_MAX_PAYLOAD_BYTES,
  NATIVE_PROTOCOL_VERSION,
  type ProtocolError,
  type Request,
  RequestFlag,
  RequestType,
  requestTypeName,
  Status,
} from './protocol.js';

/**
 * The logging a front end needs: the same shape as src/node/log.ts's `Log`, so the node passes
 * its own; tests pass one that captures.
 */
export type NativeLog = (level: 'debug' | 'info' | 'warn' | 'error', msg: string, fields?: object) => void;

/** Counters shared by every connection of one server. */
export interface NativeCounters {
  connections: number;
  requests: number;
  errorReplies: number;
  protocolErrors: number;
}

/** What a handler answers: a status, and the payload (OPEN info, READ data or an error message). */
type Outcome = { readonly status: Status; readonly payload?: Buffer; readonly message?: string };

const ok: Outcome = { status: Status.OK };

type State = 'hello' | 'ready' | 'draining' | 'ended';

export class NativeConnection {
  private state: State = 'hello';
  private readonly queue = new ByteQueue();
  private readonly handles = new Map<number, VolumeExport>();
  private nextHandle = 1;
  private inFlight = 0;
  private inFlightBytes = 0;
  /** A decoded request waiting for room in the window. */
  private parked: Request | undefined;
  private readonly remote: string;
  private helloTimer: NodeJS.Timeout | undefined;
  private lingerTimer: NodeJS.Timeout | undefined;
  /** The peer has half-closed: no more requests will come. */
  private peerEnded = false;
  /** Resolves when the socket has closed. */
  readonly closed: Promise<void>;

  constructor(
    private readonly socket: Socket,
    private readonly catalog: ExportCatalog,
    private readonly log: NativeLog,
    private readonly counters: NativeCounters,
  ) {
    this.remote = `${socket.remoteAddress}:${socket.remotePort}`;
    socket.setNoDelay(true);
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('close', () => this.onSocketClose());
    socket.on('error', (err) =>
      this.log('info', 'native: socket error', { remote: this.remote, err: err.message }),
    );
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('end', () => this.onPeerEnd());
    this.helloTimer = setTimeout(() => this.onHelloTimeout(), NATIVE_HELLO_TIMEOUT_MS);
    this.helloTimer.unref();
  }

  /** Stop taking requests, answer those received (buffered ones with ESHUTDOWN), then close. */
  shutdown(): Promise<void> {
    if (this.state === 'hello') {
      this.state = 'ended';
      this.socket.destroy();
    } else if (this.state === 'ready') {
      this.beginDrain();
    }
    return this.closed;
  }

  private onData(chunk: Buffer): void {
    if (this.state === 'ended') return; // discarding while we linger for the peer's close
    this.queue.push(chunk);
    if (this.state === 'hello') this.onHelloBytes();
    this.pump();
  }

  private onHelloBytes(): void {
    const d = decodeHello(this.queue);
    if (d.kind === 'incomplete') return;
    if (d.kind === 'error') {
      this.protocolError(d.error);
      return;
    }
    clearTimeout(this.helloTimer);
    const version = Math.min(d.frame.version, NATIVE_PROTOCOL_VERSION);
    const status = version < 1 ? Status.ENOTSUP : Status.OK;
    this.socket.write(
      encodeHello({
        version,
        status,
        maxPayloadBytes: NATIVE_MAX_PAYLOAD_BYTES,
        maxInFlight: NATIVE_MAX_IN_FLIGHT,
        maxInFlightBytes: NATIVE_MAX_IN_FLIGHT_BYTES,
      }),
    );
    if (status !== Status.OK) {
      this.log('warn', 'native: unsupported client version', {
        remote: this.remote,
        version: d.frame.version,
      });
      this.end();
      return;
    }
    this.state = 'ready';
  }

  /**
   * The peer has sent everything it will (the socket allows half-open): answer what it sent,
   * then close. Bytes left over that do not make a whole frame are logged and dropped.
   */
  private onPeerEnd(): void {
    if (this.state === 'ended') return;
    this.peerEnded = true;
    if (this.state === 'hello') {
      this.end();
      return;
    }
    this.pump();
    this.endIfIdle();
  }

  /** After the peer's FIN or during a drain: end once nothing is left to answer. */
  private endIfIdle(): void {
    const finishing = this.state === 'draining' || (this.state === 'ready' && this.peerEnded);
    if (!finishing || this.inFlight > 0 || this.parked !== undefined) return;
    if (this.queue.length > 0 && this.state === 'ready') {
      this.counters.protocolErrors++;
      this.log('warn', 'native: peer closed in the middle of a frame', {
        remote: this.remote,
        bytes: this.queue.length,
      });
    }
    this.end();
  }

  private onHelloTimeout(): void {
    if (this.state !== 'hello') return;
    this.log('warn', 'native: no hello in time, closing connection', { remote: this.remote });
    this.state = 'ended';
    this.socket.destroy();
  }

  /** Decode and start requests while the window has room; pause the socket when it is full. */
  private pump(): void {
    if (this.state !== 'ready' && this.state !== 'draining') return;
    for (;;) {
      if (this.parked !== undefined) {
        if (!this.fits(this.parked)) break;
        const r = this.parked;
        this.parked = undefined;
        this.start(r);
        continue;
      }
      if (this.state !== 'ready' && this.state !== 'draining') break;
      const d = decodeRequest(this.queue);
      if (d.kind === 'incomplete') break;
      if (d.kind === 'error') {
        this.protocolError(d.error);
        return;
      }
      this.parked = d.frame;
    }
    if (this.state === 'ready' && !this.peerEnded) {
      if (this.parked !== undefined) this.socket.pause();
      else this.socket.resume();
    }
  }

  private fits(r: Request): boolean {
    if (this.inFlight === 0) return true;
    return (
      this.inFlight < NATIVE_MAX_IN_FLIGHT && this.inFlightBytes + costOf(r) <= NATIVE_MAX_IN_FLIGHT_BYTES
    );
  }

  private start(r: Request): void {
    const cost = costOf(r);
    this.inFlight++;
    this.inFlightBytes += cost;
    this.counters.requests++;
    const outcome = this.state === 'draining' ? shuttingDown() : this.execute(r);
    // A rejection here is an AssertionError: left unhandled on purpose, it crashes the process.
    void outcome.then((o) => this.reply(r, o, cost));
  }

  /** Run one request; resolves to its outcome. Rethrows only programmer errors (they crash). */
  private async execute(r: Request): Promise<Outcome> {
    const problem = checkRequest(r);
    if (problem !== undefined) return problem;
    try {
      switch (r.type) {
        case RequestType.open:
          return this.onOpen(r);
        case RequestType.write:
          return await this.onWrite(r);
        case RequestType.read:
          return await this.onRead(r);
        case RequestType.flush:
          return await this.onFlush(r);
        case RequestType.close:
          return this.onClose(r);
        default:
          return unreachable(r.type);
      }
    } catch (err) {
      if (err instanceof BackendError) return { status: Status[err.errno], message: err.message };
      if (err instanceof AssertionError) throw err;
      this.log('error', 'native: backend threw a non-BackendError', {
        remote: this.remote,
        err: String(err),
      });
      return { status: Status.EIO, message: 'internal error' };
    }
  }

  private onOpen(r: Request): Outcome {
    const name = r.payload.toString('utf8');
    const vol = this.catalog.get(name);
    if (vol === undefined) return { status: Status.ENOENT, message: `no volume named '${name}'` };
    if (this.handles.size >= NATIVE_MAX_HANDLES_PER_CONNECTION || this.nextHandle > 0xffff_ffff) {
      return { status: Status.EMFILE, message: 'too many open volumes on this connection' };
    }
    const handle = this.nextHandle++;
    this.handles.set(handle, vol);
    return {
      status: Status.OK,
      payload: encodeOpenInfo({ handle, readOnly: vol.readOnly, sizeBytes: vol.sizeBytes }),
    };
  }

  private async onWrite(r: Request): Promise<Outcome> {
    const vol = this.handles.get(r.handle);
    if (vol === undefined) return badHandle(r);
    if (vol.readOnly) return { status: Status.EPERM, message: `volume '${vol.name}' is read-only` };
    const offset = Number(r.offset);
    if (offset + r.length > vol.sizeBytes) {
      return {
        status: Status.ENOSPC,
        message: `write past the end of '${vol.name}' (${vol.sizeBytes} bytes)`,
      };
    }
    const fua = (r.flags & RequestFlag.fua) !== 0;
    const hostTimeUs = r.writeTimeUs === 0n ? undefined : timeUs(Number(r.writeTimeUs));
    await vol.write(offset, r.payload, hostTimeUs === undefined ? { fua } : { fua, hostTimeUs });
    return ok;
  }

  private async onRead(r: Request): Promise<Outcome> {
    const vol = this.handles.get(r.handle);
    if (vol === undefined) return badHandle(r);
    const offset = Number(r.offset);
    if (offset + r.length > vol.sizeBytes) {
      return {
        status: Status.EINVAL,
        message: `read past the end of '${vol.name}' (${vol.sizeBytes} bytes)`,
      };
    }
    const data = await vol.read(offset, r.length);
    if (data.length !== r.length) {
      this.log('error', 'native: short read from backend', {
        remote: this.remote,
        want: r.length,
        got: data.length,
      });
      return { status: Status.EIO, message: 'short read' };
    }
    return { status: Status.OK, payload: data };
  }

  private async onFlush(r: Request): Promise<Outcome> {
    const vol = this.handles.get(r.handle);
    if (vol === undefined) return badHandle(r);
    await vol.flush();
    return ok;
  }

  private onClose(r: Request): Outcome {
    if (!this.handles.delete(r.handle)) return badHandle(r);
    return ok;
  }

  /** Send the reply; the request leaves the window once the kernel has taken the bytes. */
  private reply(r: Request, o: Outcome, cost: number): void {
    const release = () => this.release(cost);
    if (this.state === 'ended' || this.socket.destroyed) {
      release();
      return;
    }
    if (o.status !== Status.OK) {
      this.counters.errorReplies++;
      this.socket.write(encodeErrorReply(r.type, o.status, r.cookie, o.message ?? ''), release);
      return;
    }
    const payload = o.payload ?? Buffer.alloc(0);
    const header = encodeReplyHeader(r.type, Status.OK, r.cookie, payload.length);
    if (payload.length === 0) {
      this.socket.write(header, release);
      return;
    }
    // Two writes, so READ data is not copied; stream writes complete in order.
    this.socket.cork();
    this.socket.write(header);
    this.socket.write(payload, release);
    this.socket.uncork();
  }

  private release(cost: number): void {
    this.inFlight--;
    this.inFlightBytes -= cost;
    this.pump();
    this.endIfIdle();
  }

  private protocolError(e: ProtocolError): void {
    this.counters.protocolErrors++;
    this.log('warn', 'native: malformed input, closing connection', {
      remote: this.remote,
      kind: e.kind,
      reason: e.message,
      inFlight: this.inFlight,
    });
    this.queue.take(this.queue.length);
    this.beginDrain();
    this.endIfIdle(); // when already draining, beginDrain() did nothing
  }

  /**
   * Stop reading. Requests already decoded and complete frames still buffered are answered
   * (the buffered ones with ESHUTDOWN); then the connection ends.
   */
  private beginDrain(): void {
    if (this.state !== 'ready' && this.state !== 'hello') return;
    clearTimeout(this.helloTimer);
    const wasHello = this.state === 'hello';
    this.state = 'draining';
    this.socket.pause();
    if (wasHello) {
      this.end();
      return;
    }
    this.pump();
    // pump() may have hit a framing error in what was buffered; its beginDrain() was a no-op.
    this.endIfIdle();
  }

  /** Half-close after the last reply; wait briefly for the peer to close its side, then force it. */
  private end(): void {
    if (this.state === 'ended') return;
    this.state = 'ended';
    this.queue.take(this.queue.length);
    this.socket.end();
    this.socket.resume(); // read and drop until the peer's FIN, so closing does not send a RST
    this.lingerTimer = setTimeout(() => this.socket.destroy(), NATIVE_CLOSE_LINGER_MS);
    this.lingerTimer.unref();
  }

  private onSocketClose(): void {
    this.state = 'ended';
    clearTimeout(this.helloTimer);
    clearTimeout(this.lingerTimer);
    this.handles.clear();
  }
}

/** Bytes of payload a request holds or asks for: what it costs in the in-flight window. */
function costOf(r: Request): number {
  return r.type === RequestType.write || r.type === RequestType.read ? r.length : 0;
}

function badHandle(r: Request): Outcome {
  return {
    status: Status.EBADF,
    message: `no open volume with handle ${r.handle} (${requestTypeName(r.type)})`,
  };
}

function shuttingDown(): Promise<Outcome> {
  return Promise.resolve({ status: Status.ESHUTDOWN, message: 'server is shutting down' });
}
