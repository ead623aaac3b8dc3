/**
 * NativeServer: the TCP listener of the native host protocol (DESIGN.md §2: the front end for
 * hosts that send their own write time). It accepts connections and hands each to a
 * NativeConnection (connection.ts), which speaks the wire format of protocol.ts against the node's
 * ExportCatalog. The node daemon creates one per node; tests create one over an in-memory catalog.
 *
 * close(): stop accepting, let every connection answer what it has received (requests already
 * running complete normally, requests still buffered get ESHUTDOWN), then close the sockets.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { pino } from 'pino';
import type { ExportCatalog } from '../backend.js';
import { NativeConnection, type NativeCounters, type NativeLog } from './connection.js';

export type { NativeCounters, NativeLog } from './connection.js';

export interface NativeServerOptions {
  readonly catalog: ExportCatalog;
  /** Where connection events and malformed-input reasons go; a pino logger on stderr by default. */
  readonly log?: NativeLog;
}

export class NativeServer {
  private readonly catalog: ExportCatalog;
  private readonly log: NativeLog;
  private readonly listener: Server;
  private readonly connections = new Set<NativeConnection>();
  private closing: Promise<void> | undefined;
  /** Totals since start, for metrics and tests. */
  readonly counters: NativeCounters = { connections: 0, requests: 0, errorReplies: 0, protocolErrors: 0 };

  constructor(opts: NativeServerOptions) {
    this.catalog = opts.catalog;
    this.log = opts.log ?? defaultLog();
    // Half-open: a peer may send its requests and FIN, and still read the replies.
    this.listener = createServer({ allowHalfOpen: true }, (socket) => this.onConnection(socket));
    this.listener.on('error', (err) => this.log('error', 'native: listener error', { err: err.message }));
  }

  /** Listen on host:port (port 0 picks a free one); resolves with the port bound. */
  listen(host: string, port: number): Promise<{ port: number }> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error) => reject(err);
      this.listener.once('error', onError);
      this.listener.listen(port, host, () => {
        this.listener.off('error', onError);
        const addr = this.listener.address();
        const bound = typeof addr === 'object' && addr !== null ? addr.port : port;
        this.log('info', 'native: listening', { host, port: bound });
        resolve({ port: bound });
      });
    });
  }

  /** Stop accepting; answer in-flight requests; close every connection. Idempotent. */
  close(): Promise<void> {
    this.closing ??= this.closeNow();
    return this.closing;
  }

  private async closeNow(): Promise<void> {
    const listenerClosed = new Promise<void>((resolve) => this.listener.close(() => resolve()));
    await Promise.all([...this.connections].map((c) => c.shutdown()));
    await listenerClosed;
  }

  private onConnection(socket: Socket): void {
    if (this.closing !== undefined) {
      socket.destroy();
      return;
    }
    this.counters.connections++;
    const conn = new NativeConnection(socket, this.catalog, this.log, this.counters);
    this.connections.add(conn);
    void conn.closed.then(() => this.connections.delete(conn));
  }
}

/** JSON lines on stderr, like the node's own log. */
function defaultLog(): NativeLog {
  const p = pino({ name: 'native' }, pino.destination(2));
  return (level, msg, fields) => p[level](fields ?? {}, msg);
}
