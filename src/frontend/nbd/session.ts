/**
 * One NBD connection: wires a socket to the handshake state machine, then to the transmission
 * phase, and performs their effects (writes, the STARTTLS upgrade, pausing, closing).
 *
 *   accepted socket ─▶ greeting ─▶ Handshake.feed() ─┬─ send ─▶ socket.write
 *                                                    ├─ starttls ─▶ TLSSocket, feed() again
 *                                                    ├─ transmit ─▶ Transmission.onData()
 *                                                    └─ close ─▶ end()
 *
 * Closing is always clean from our side: replies queued so far are flushed, the socket is ended
 * (TLS close_notify first), and destroyed after CLOSE_LINGER_MS if the client never closes.
 *
 * The client closing its side (FIN, or TLS close_notify) ends only its input: the socket is
 * half-open, so requests in flight are still answered. proto.md on NBD_CMD_DISC: "The server MUST
 * handle all outstanding requests ... and close the TCP session", and clients send DISC, then
 * shut down their write side, then read. Without half-open sockets Node ended ours on their FIN
 * and every reply still to come was dropped. In the handshake nothing is in flight: a FIN closes
 * the connection at once. In transmission it stops reading, and the connection closes once every
 * request in flight is answered, DISC or not (a FIN never leaves the socket half-open).
 */
import type net from 'node:net';
import type tls from 'node:tls';
import type { ErrorCode } from '../../core/errors.js';
import type { ExportCatalog } from '../backend.js';
import { Handshake, type Negotiated } from './handshake.js';
import type { NbdLogger, NbdLogLevel } from './log.js';
import { CLOSE_LINGER_MS, encodeGreeting, HANDSHAKE_TIMEOUT_MS } from './protocol.js';
import { ReplyWriter } from './replies.js';
import { upgradeToTls } from './tls.js';
import { Transmission, type TransmissionHost } from './transmission.js';

const PROTOCOL_ERROR: ErrorCode = 'RC_ERR_PROTOCOL';

export interface SessionDeps {
  readonly catalog: ExportCatalog;
  readonly tlsContext: tls.SecureContext | undefined;
  readonly tlsRequired: boolean;
  readonly log: NbdLogger;
  readonly onClosed: (session: NbdSession) => void;
}

export class NbdSession {
  /** Resolves when the socket has closed. */
  readonly closed: Promise<void>;
  private sock: net.Socket;
  private readonly handshake: Handshake;
  private tx: Transmission | undefined;
  private replies: ReplyWriter | undefined;
  private ending = false;
  private isClosed = false;
  private lingerTimer: NodeJS.Timeout | undefined;
  private handshakeTimer: NodeJS.Timeout | undefined;
  private resolveClosed: () => void = () => {};
  private readonly remote: string;

  private readonly onData = (chunk: Buffer): void => {
    if (this.ending) return;
    if (this.tx) this.tx.onData(chunk);
    else this.onHandshakeData(chunk);
  };
  private readonly onEnd = (): void => {
    if (this.ending) return;
    if (this.tx) this.tx.onInputEnd();
    else this.end('client closed its side during the handshake', 'debug');
  };
  private readonly onDrain = (): void => this.tx?.resume();
  private readonly onError = (e: Error): void => {
    this.log('debug', 'socket error', { error: e.message });
  };
  private readonly onClose = (): void => {
    if (this.isClosed) return;
    this.isClosed = true;
    clearTimeout(this.lingerTimer);
    clearTimeout(this.handshakeTimer);
    this.log('debug', 'connection closed', {});
    this.resolveClosed();
    this.deps.onClosed(this);
  };

  private readonly host: TransmissionHost = {
    pauseInput: () => this.sock.pause(),
    resumeInput: () => this.sock.resume(),
    outputQueuedBytes: () => this.sock.writableLength,
    finish: (reason, level) => this.end(reason, level),
    log: (level, msg, fields) => this.log(level, msg, fields),
  };

  constructor(
    socket: net.Socket,
    private readonly deps: SessionDeps,
  ) {
    this.sock = socket;
    this.remote = `${socket.remoteAddress}:${socket.remotePort}`;
    this.handshake = new Handshake({
      catalog: deps.catalog,
      tlsAvailable: deps.tlsContext !== undefined,
      tlsRequired: deps.tlsContext !== undefined && deps.tlsRequired,
    });
    this.closed = new Promise((resolve) => {
      this.resolveClosed = resolve;
    });
  }

  start(): void {
    const s = this.sock;
    // Sockets a caller hands over may not come from our listener: the client's FIN must not end
    // our side while replies are due (see the header). Settable until 'end' is emitted.
    s.allowHalfOpen = true;
    s.setNoDelay(true);
    this.attach(s);
    if (s.destroyed) {
      this.onClose();
      return;
    }
    this.handshakeTimer = setTimeout(() => this.end('handshake timed out', 'info'), HANDSHAKE_TIMEOUT_MS);
    this.handshakeTimer.unref();
    s.write(encodeGreeting());
  }

  /** Server shutdown: answer what is in flight, then close; a connection in handshake closes now. */
  shutdown(): Promise<void> {
    if (this.tx) this.tx.beginShutdown();
    else {
      this.handshake.beginShutdown();
      this.end('server shutting down', 'info');
    }
    return this.closed;
  }

  private attach(s: net.Socket): void {
    s.on('data', this.onData);
    s.on('end', this.onEnd);
    s.on('error', this.onError);
    s.on('close', this.onClose);
  }

  private onHandshakeData(chunk: Buffer): void {
    const { effects, leftover } = this.handshake.feed(chunk);
    const s = this.sock;
    s.cork();
    try {
      for (const e of effects) {
        switch (e.kind) {
          case 'send':
            s.write(e.data);
            break;
          case 'log':
            this.log('debug', e.msg, e.fields);
            break;
          case 'starttls':
            s.uncork(); // the ACK goes out in plain text before the socket is wrapped
            this.startTls(leftover);
            return;
          case 'transmit':
            this.startTransmission(e.negotiated, leftover);
            return;
          case 'close':
            this.end(e.reason, e.level);
            return;
        }
      }
    } finally {
      s.uncork();
    }
  }

  private startTls(leftover: Buffer): void {
    const plain = this.sock;
    const context = this.deps.tlsContext;
    if (!context) {
      this.end('STARTTLS without a TLS context', 'error');
      return;
    }
    plain.removeListener('data', this.onData);
    // The client's FIN now reaches the TLS socket, which is half-open like the plain one (tls.ts).
    plain.removeListener('end', this.onEnd);
    const secure = upgradeToTls(plain, leftover, context);
    this.sock = secure;
    this.attach(secure);
    secure.once('secure', () => this.log('debug', 'TLS established', { protocol: secure.getProtocol() }));
    this.handshake.tlsStarted();
  }

  private startTransmission(negotiated: Negotiated, leftover: Buffer): void {
    clearTimeout(this.handshakeTimer);
    this.replies = new ReplyWriter(this.sock);
    this.tx = new Transmission(negotiated, this.replies, this.host);
    this.sock.on('drain', this.onDrain);
    this.log('info', 'client entered transmission', {
      export: negotiated.export.name,
      structuredReplies: negotiated.structuredReplies,
      baseAllocation: negotiated.baseAllocation,
      tls: this.handshake.tls,
    });
    if (leftover.length > 0) this.tx.onData(leftover);
  }

  /** Flush queued replies, end the socket, destroy it if the client has not closed in time. */
  private end(reason: string, level: NbdLogLevel): void {
    if (this.ending) return;
    this.ending = true;
    // Warn-level closes are always a client breaking the protocol (bad magic, flags, lengths).
    this.log(level, 'closing connection', level === 'warn' ? { reason, code: PROTOCOL_ERROR } : { reason });
    this.replies?.flush();
    const s = this.sock;
    s.end();
    // Keep reading so the client's FIN (or close_notify) is seen and 'close' fires.
    s.resume();
    if (this.isClosed) return;
    this.lingerTimer = setTimeout(() => s.destroy(), CLOSE_LINGER_MS);
  }

  private log(level: NbdLogLevel, msg: string, fields: Record<string, unknown>): void {
    this.deps.log(level, msg, { remote: this.remote, ...fields });
  }
}
