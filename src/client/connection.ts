/**
 * The client side of one native-protocol connection: the hello, cookies, the in-flight window the
 * server announced, and matching replies to requests. src/client/index.ts builds the public
 * Client and Volume on top of it; the wire format is src/frontend/native/protocol.ts.
 *
 *   request() -> waiting (FIFO, when the window is full) -> socket -> server
 *   socket -> ByteQueue -> decodeReply -> pending[cookie] -> resolve / reject(NativeError)
 *
 * Requests are sent in call order, and any number may be outstanding up to the server's window
 * (maxInFlight requests, maxInFlightBytes of payload); beyond it they wait here, so the server
 * never has to stall the socket. Replies come back in completion order.
 */
import { connect as netConnect, type Socket } from 'node:net';
import {
  ByteQueue,
  decodeHello,
  decodeReply,
  encodeHello,
  encodeRequestHeader,
  type Hello,
  NATIVE_HELLO_TIMEOUT_MS,
  NATIVE_MAX_IN_FLIGHT,
  NATIVE_MAX_IN_FLIGHT_BYTES,
  NATIVE_MAX_PAYLOAD_BYTES,
  NATIVE_PROTOCOL_VERSION,
  type Reply,
  RequestType,
  Status,
  statusName,
} from '../frontend/native/protocol.js';

/**
 * Every failure the client reports. `code` is an errno-like name: a server status (EINVAL,
 * ENOSPC, EPERM, EIO, ENOTSUP, ESHUTDOWN, ENOENT = no such volume, EBADF = volume not open,
 * EMFILE = too many open volumes), or a connection-level one (ECONNREFUSED, ECONNRESET,
 * ETIMEDOUT, EPROTO = the server broke the protocol).
 */
export class NativeError extends Error {
  override name = 'NativeError';
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(`${code}: ${message}`);
  }
}

/** A request as the Volume layer builds it; the connection adds magic and cookie. */
export interface OutgoingRequest {
  readonly type: RequestType;
  readonly flags: number;
  readonly handle: number;
  readonly length: number;
  readonly offset: number;
  readonly writeTimeUs: number;
  readonly payload: Buffer;
}

interface Job {
  readonly req: OutgoingRequest;
  readonly cost: number;
  readonly resolve: (reply: Reply) => void;
  readonly reject: (err: NativeError) => void;
}

type State = 'ready' | 'closing' | 'closed';

export class ClientConnection {
  private state: State = 'ready';
  private readonly queue = new ByteQueue();
  private readonly pending = new Map<bigint, Job>();
  private readonly waiting: Job[] = [];
  private nextCookie = 1n;
  private inFlightBytes = 0;
  private idle: (() => void) | undefined;
  private readonly closed: Promise<void>;
  /** Why the connection failed, if it did: later requests reject with it. */
  private broken: NativeError | undefined;

  private constructor(
    private readonly socket: Socket,
    /** The limits the server announced in its hello. */
    readonly limits: Hello,
  ) {
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('close', () => {
      if (this.state !== 'closed')
        this.failAll(new NativeError('ECONNRESET', 'connection to the server closed'));
    });
  }

  /** Connect and complete the hello. Rejects with NativeError (ECONNREFUSED, ENOTSUP, ...). */
  static open(host: string, port: number): Promise<ClientConnection> {
    return new Promise((resolve, reject) => {
      const socket = netConnect({ host, port, noDelay: true });
      const queue = new ByteQueue();
      const fail = (err: NativeError) => {
        clearTimeout(timer);
        socket.destroy();
        reject(err);
      };
      const timer = setTimeout(
        () => fail(new NativeError('ETIMEDOUT', `no hello from ${host}:${port}`)),
        NATIVE_HELLO_TIMEOUT_MS,
      );
      socket.on('error', (err: NodeJS.ErrnoException) =>
        fail(new NativeError(err.code ?? 'EIO', err.message)),
      );
      socket.once('close', () => fail(new NativeError('ECONNRESET', 'server closed during hello')));
      socket.on('connect', () => socket.write(encodeHello(clientHello)));
      const onHelloData = (chunk: Buffer) => {
        queue.push(chunk);
        const d = decodeHello(queue);
        if (d.kind === 'incomplete') return;
        if (d.kind === 'error') return fail(new NativeError('EPROTO', d.error.message));
        const problem = checkServerHello(d.frame);
        if (problem !== undefined) return fail(problem);
        clearTimeout(timer);
        socket.off('data', onHelloData);
        socket.removeAllListeners('close');
        socket.removeAllListeners('error');
        socket.on('error', () => {}); // 'close' follows and fails what is pending
        const conn = new ClientConnection(socket, d.frame);
        // Replies cannot precede requests, but keep any bytes that came with the hello.
        if (queue.length > 0) conn.onData(queue.take(queue.length));
        resolve(conn);
      };
      socket.on('data', onHelloData);
    });
  }

  /** Send a request (now, or when the window has room); resolves with its OK reply. */
  request(req: OutgoingRequest): Promise<Reply> {
    if (this.broken !== undefined) return Promise.reject(this.broken);
    if (this.state !== 'ready') return Promise.reject(new NativeError('ESHUTDOWN', 'client is closed'));
    return new Promise((resolve, reject) => {
      this.waiting.push({ req, cost: costOf(req), resolve, reject });
      this.sendWaiting();
    });
  }

  /** Wait for every request to settle, then close the connection. */
  async close(): Promise<void> {
    if (this.state === 'ready') {
      this.state = 'closing';
      if (this.pending.size > 0 || this.waiting.length > 0) {
        await new Promise<void>((resolve) => {
          this.idle = resolve;
        });
      }
      this.state = 'closed';
      this.socket.end();
    }
    await this.closed;
  }

  private fits(cost: number): boolean {
    if (this.pending.size === 0) return true;
    return (
      this.pending.size < this.limits.maxInFlight && this.inFlightBytes + cost <= this.limits.maxInFlightBytes
    );
  }

  private sendWaiting(): void {
    while (this.waiting.length > 0 && this.fits(this.waiting[0]!.cost) && !this.socket.destroyed) {
      const job = this.waiting.shift()!;
      const cookie = this.nextCookie++;
      this.pending.set(cookie, job);
      this.inFlightBytes += job.cost;
      const { req } = job;
      const header = encodeRequestHeader({
        type: req.type,
        flags: req.flags,
        reserved: 0,
        cookie,
        handle: req.handle,
        length: req.length,
        offset: BigInt(req.offset),
        writeTimeUs: BigInt(req.writeTimeUs),
      });
      if (req.payload.length === 0) {
        this.socket.write(header);
        continue;
      }
      this.socket.cork();
      this.socket.write(header);
      this.socket.write(req.payload);
      this.socket.uncork();
    }
  }

  private onData(chunk: Buffer): void {
    this.queue.push(chunk);
    for (;;) {
      const d = decodeReply(this.queue);
      if (d.kind === 'incomplete') return;
      if (d.kind === 'error') {
        this.protocolError(d.error.message);
        return;
      }
      const job = this.pending.get(d.frame.cookie);
      if (job === undefined) {
        this.protocolError(`reply for unknown cookie ${d.frame.cookie}`);
        return;
      }
      this.pending.delete(d.frame.cookie);
      this.inFlightBytes -= job.cost;
      settle(job, d.frame);
      this.sendWaiting();
      this.checkIdle();
    }
  }

  private protocolError(message: string): void {
    this.failAll(new NativeError('EPROTO', message));
    this.socket.destroy();
  }

  private failAll(err: NativeError): void {
    if (this.state === 'ready') this.state = 'closing';
    this.broken ??= err;
    const jobs = [...this.pending.values(), ...this.waiting];
    this.pending.clear();
    this.waiting.length = 0;
    this.inFlightBytes = 0;
    for (const job of jobs) job.reject(err);
    this.checkIdle();
  }

  private checkIdle(): void {
    if (this.idle !== undefined && this.pending.size === 0 && this.waiting.length === 0) {
      const idle = this.idle;
      this.idle = undefined;
      idle();
    }
  }
}

const clientHello: Hello = {
  version: NATIVE_PROTOCOL_VERSION,
  status: 0,
  maxPayloadBytes: 0,
  maxInFlight: 0,
  maxInFlightBytes: 0,
};

function checkServerHello(h: Hello): NativeError | undefined {
  if (h.status !== Status.OK) {
    const code = statusName(h.status) ?? 'EPROTO';
    return new NativeError(
      code,
      `server refused the connection (protocol version ${NATIVE_PROTOCOL_VERSION})`,
    );
  }
  if (h.version !== NATIVE_PROTOCOL_VERSION) {
    return new NativeError('ENOTSUP', `server speaks protocol version ${h.version}`);
  }
  if (h.maxInFlight < 1 || h.maxInFlight > NATIVE_MAX_IN_FLIGHT * 1024) {
    return new NativeError('EPROTO', `server announced maxInFlight ${h.maxInFlight}`);
  }
  if (h.maxPayloadBytes < 1 || h.maxPayloadBytes > NATIVE_MAX_PAYLOAD_BYTES) {
    return new NativeError('EPROTO', `server announced maxPayloadBytes ${h.maxPayloadBytes}`);
  }
  if (h.maxInFlightBytes < h.maxPayloadBytes || h.maxInFlightBytes > NATIVE_MAX_IN_FLIGHT_BYTES * 1024) {
    return new NativeError('EPROTO', `server announced maxInFlightBytes ${h.maxInFlightBytes}`);
  }
  return undefined;
}

function settle(job: Job, reply: Reply): void {
  if (reply.status === Status.OK) {
    job.resolve(reply);
    return;
  }
  const code = statusName(reply.status) ?? 'EIO';
  const text = reply.payload.toString('utf8') || `status ${reply.status}`;
  job.reject(new NativeError(code, text));
}

/** The same cost the server charges: WRITE data and READ length. */
function costOf(req: OutgoingRequest): number {
  return req.type === RequestType.write || req.type === RequestType.read ? req.length : 0;
}
