/**
 * The NBD server: accepts connections (its own listener, or sockets a caller hands over) and runs
 * one NbdSession per connection against the node's ExportCatalog.
 *
 * Supported: fixed newstyle with NO_ZEROES; INFO/GO (EXPORT, NAME, DESCRIPTION, BLOCK_SIZE),
 * EXPORT_NAME, LIST, ABORT, STRUCTURED_REPLY, LIST/SET_META_CONTEXT (base:allocation), STARTTLS
 * (X.509, optional or required); READ, WRITE, FLUSH, TRIM, WRITE_ZEROES (NO_HOLE, FAST_ZERO),
 * CACHE, BLOCK_STATUS (REQ_ONE), DISC, FUA; CAN_MULTI_CONN (flush is per volume, see backend.ts).
 *
 * close() stops accepting, lets every request in flight finish and be answered, then closes the
 * connections; connections still in the handshake are closed at once.
 *
 * Connections are half-open (allowHalfOpen): a client may send its last requests and DISC, then
 * its FIN, and still read the replies (session.ts).
 */
import net from 'node:net';
import type tls from 'node:tls';
import type { ExportCatalog } from '../backend.js';
import { type NbdLogger, silentLogger } from './log.js';
import { NbdSession } from './session.js';
import { createTlsContext, type NbdTlsOptions } from './tls.js';

export type { NbdLogger, NbdLogLevel } from './log.js';
export type { NbdTlsOptions } from './tls.js';

export interface NbdServerOptions {
  readonly catalog: ExportCatalog;
  readonly tls?: NbdTlsOptions;
  readonly log?: NbdLogger;
}

export class NbdServer {
  private readonly catalog: ExportCatalog;
  private readonly tlsContext: tls.SecureContext | undefined;
  private readonly tlsRequired: boolean;
  private readonly log: NbdLogger;
  private readonly sessions = new Set<NbdSession>();
  private listener: net.Server | undefined;
  private closing = false;

  constructor(opts: NbdServerOptions) {
    this.catalog = opts.catalog;
    this.tlsContext = opts.tls ? createTlsContext(opts.tls) : undefined;
    this.tlsRequired = opts.tls?.required === true;
    this.log = opts.log ?? silentLogger;
  }

  /** Connections open now (handshake or transmission). */
  get connectionCount(): number {
    return this.sessions.size;
  }

  /** Listen on host:port (0 = an ephemeral port); resolves with the port actually bound. */
  listen(host: string, port: number): Promise<{ port: number }> {
    if (this.listener) return Promise.reject(new Error('NbdServer is already listening'));
    if (this.closing) return Promise.reject(new Error('NbdServer is closed'));
    const listener = net.createServer({ noDelay: true, allowHalfOpen: true }, (socket) =>
      this.handleSocket(socket),
    );
    this.listener = listener;
    return new Promise((resolve, reject) => {
      listener.once('error', reject);
      listener.listen(port, host, () => {
        listener.removeListener('error', reject);
        listener.on('error', (e) => this.log('error', 'listener error', { error: e.message }));
        const address = listener.address() as net.AddressInfo;
        this.log('info', 'NBD server listening', {
          host,
          port: address.port,
          tls: this.tlsContext !== undefined,
        });
        resolve({ port: address.port });
      });
    });
  }

  /** Serve an accepted socket. After close() the socket is destroyed instead. */
  handleSocket(socket: net.Socket): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    const session = new NbdSession(socket, {
      catalog: this.catalog,
      tlsContext: this.tlsContext,
      tlsRequired: this.tlsRequired,
      log: this.log,
      onClosed: (s) => this.sessions.delete(s),
    });
    this.sessions.add(session);
    session.start();
  }

  /** Stop accepting, answer requests in flight, close every connection. */
  async close(): Promise<void> {
    this.closing = true;
    const listener = this.listener;
    const stopped = listener
      ? new Promise<void>((resolve) => listener.close(() => resolve()))
      : Promise.resolve();
    await Promise.all([stopped, ...[...this.sessions].map((s) => s.shutdown())]);
  }
}
