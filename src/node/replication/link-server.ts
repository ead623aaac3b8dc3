/**
 * The node's link listener: accepts connections from peers (plain TCP, or TLS when the node has a
 * certificate), runs the authenticating handshake of src/link/session.ts on each, and hands ready
 * sessions from sources to the target side. A peer that fails the handshake is logged and dropped;
 * nothing it sent reaches the journal.
 *
 *   TCP connection --admit: under the cap?--no--> destroyed at once (logged once per interval)
 *                        | yes
 *                        v
 *   (TLS handshake, bounded by the handshake deadline) --> LinkSession --ready--> target side
 *                                                                \--closed--> logged (rate-limited
 *                                                                             unless authenticated)
 *
 * Peers that have proved nothing are bounded in number as well as in what each can cost (the
 * session bounds their frames and handshake time): at most LINK_UNAUTHENTICATED_CONNECTIONS_MAX
 * connections are open that are not ready sessions, counted from TCP accept (so TLS handshakes in
 * progress count too). Ready sessions do not count: a flood never drops an authenticated peer,
 * though while it lasts a new peer may be turned away and retries with its backoff. Closes of
 * sessions that never authenticated, and cap refusals, go through a LogLimiter: the first lines of
 * each kind are logged, then a count per interval. Authenticated sessions' closes are all logged.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as tls from 'node:tls';
import type { ErrorCode } from '../../core/errors.js';
import { LogLimiter } from '../../core/log-limit.js';
import type { Frame } from '../../link/frames.js';
import { handshakeDeadlineMs, LinkSession } from '../../link/session.js';
import type { NodeConfig, Topology } from '../config.js';
import { nowUs } from '../clock.js';
import type { Log } from '../log.js';
import type { LinkTiming } from './source.js';
import type { TargetReplicator } from './target.js';

/**
 * Open link connections that are not authenticated sessions, at most; past it a new connection is
 * closed at once. A handshake takes milliseconds, so a few nodes reconnecting together are far
 * below it; with the session's bounds (LINK_HANDSHAKE_PAYLOAD_BYTES_MAX buffered, the handshake
 * deadline) unauthenticated peers hold at most about 64 x 65 KiB for at most 6 s each.
 */
export const LINK_UNAUTHENTICATED_CONNECTIONS_MAX = 64;
/** Interval of the log rate limits below. */
export const LINK_REFUSAL_LOG_INTERVAL_MS = 30_000;
/** Closes of unauthenticated sessions logged per kind (close code) and interval, at most. */
export const LINK_REFUSAL_LOG_BURST = 5;

/** Kinds of rate-limited lines: an unauthenticated session's close code, or its routine end. */
type RefusalKind = ErrorCode | 'closed';

export class LinkServer {
  private server: net.Server | undefined;
  private readonly sessions = new Set<LinkSession>();
  /** Sessions that are ready (authenticated); the rest of `connections` count against the cap. */
  private readonly readySessions = new Set<LinkSession>();
  /** TCP connections accepted and not yet closed (TLS handshakes included). */
  private connections = 0;
  private readonly refusalLog = new LogLimiter<RefusalKind>(
    LINK_REFUSAL_LOG_INTERVAL_MS,
    LINK_REFUSAL_LOG_BURST,
  );
  private readonly capLog = new LogLimiter<'cap'>(LINK_REFUSAL_LOG_INTERVAL_MS, 1);
  private flushTimer: NodeJS.Timeout | undefined;
  /** Sessions that ended in a refusal or a protocol error (status, tests). */
  refused = 0;
  /** Connections closed at once because LINK_UNAUTHENTICATED_CONNECTIONS_MAX were open. */
  refusedAtCap = 0;

  /**
   * `current` gives the topology and target side in force now: a failback replaces both while the
   * node runs (sessions opened before are dropped then, see dropSessions).
   */
  constructor(
    private readonly current: () => { topo: Topology; target: TargetReplicator | undefined },
    private readonly cfg: NodeConfig,
    private readonly timing: LinkTiming,
    private readonly log: Log,
  ) {}

  private get topo(): Topology {
    return this.current().topo;
  }

  /** Undefined while the node turns groups around: sessions are dropped then, and refused. */
  private get target(): TargetReplicator | undefined {
    return this.current().target;
  }

  /** Closes every session (the sources reconnect): the groups this node is the target of changed. */
  dropSessions(reason: string): void {
    for (const s of this.sessions) s.close(reason, true, 'RC_ERR_SHUTDOWN');
  }

  listen(): Promise<number> {
    const t = this.cfg.tls;
    // Both kinds of server emit 'connection' with the TCP socket (a TLS server after wrapping it
    // for its handshake, which a destroy here ends); sessions start on the plain socket or once
    // TLS is up.
    this.server = t
      ? tls.createServer(
          {
            cert: fs.readFileSync(t.certFile),
            key: fs.readFileSync(t.keyFile),
            handshakeTimeout: handshakeDeadlineMs(this.timing.timeoutMs),
          },
          (socket) => this.accept(socket),
        )
      : net.createServer();
    const server = this.server;
    server.on('connection', (socket: net.Socket) => {
      if (this.admit(socket) && !t) this.accept(socket);
    });
    this.flushTimer = setInterval(() => this.flushLogLimits(), LINK_REFUSAL_LOG_INTERVAL_MS);
    this.flushTimer.unref();
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.cfg.link.port, this.cfg.link.host, () => {
        server.off('error', reject);
        server.on('error', (e) => this.log('error', 'link listener error', { error: String(e) }));
        resolve((server.address() as net.AddressInfo).port);
      });
    });
  }

  /** Counts a new TCP connection, or closes it at once when the unauthenticated ones are at the cap. */
  private admit(socket: net.Socket): boolean {
    socket.on('error', () => {});
    const unauthenticated = this.connections - this.readySessions.size;
    if (unauthenticated >= LINK_UNAUTHENTICATED_CONNECTIONS_MAX) {
      this.refusedAtCap++;
      const remote = `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`;
      socket.destroy();
      const a = this.capLog.admit('cap', performance.now());
      if (a.log) {
        this.log('warn', 'link connection refused: too many unauthenticated connections', {
          remote,
          unauthenticated,
          max: LINK_UNAUTHENTICATED_CONNECTIONS_MAX,
          refusedAtCapTotal: this.refusedAtCap,
          ...(a.droppedBefore > 0 ? { notLoggedBefore: a.droppedBefore } : {}),
        });
      }
      return false;
    }
    this.connections++;
    socket.once('close', () => this.connections--);
    return true;
  }

  private accept(socket: net.Socket): void {
    socket.on('error', () => {});
    const session = new LinkSession(
      socket,
      {
        selfName: this.cfg.name,
        secret: this.topo.secret,
        groups: [...this.topo.groups.values()].filter((g) => g.target === this.cfg.name).map((g) => g.name),
        knownPeer: (n) => this.topo.nodes.has(n) && n !== this.cfg.name,
        heartbeatMs: this.timing.heartbeatMs,
        timeoutMs: this.timing.timeoutMs,
        nowUs,
      },
      {
        ready: (s) => {
          this.readySessions.add(s);
          const t = this.target;
          if (t) t.attach(s);
          else s.close('the node is turning groups around (failback); try again', true, 'RC_ERR_SHUTDOWN');
        },
        frame: (f: Frame, s) => {
          const t = this.target;
          if (t) t.onFrame(s, f);
          else s.close('the node is turning groups around (failback); try again', true, 'RC_ERR_SHUTDOWN');
        },
        closed: (reason, s) => {
          this.sessions.delete(s);
          this.readySessions.delete(s);
          this.target?.detach(s);
          this.onClosed(reason, s);
        },
      },
    );
    this.sessions.add(session);
  }

  /** Logs a session's end: always for an authenticated peer, rate-limited by kind otherwise. */
  private onClosed(reason: string, s: LinkSession): void {
    const routine = reason === 'connection closed by peer' || reason === 'node stopping';
    if (!routine) this.refused++;
    const msg = s.closeCode === 'RC_ERR_AUTH' ? 'link peer refused' : 'link session closed';
    const fields = { peer: s.peerName || undefined, remote: s.remote, reason };
    const level = routine ? 'info' : 'warn';
    if (s.peerName !== '') return this.log(level, msg, fields);
    const kind: RefusalKind = routine ? 'closed' : (s.closeCode ?? 'RC_ERR_PROTOCOL');
    const a = this.refusalLog.admit(kind, performance.now());
    if (!a.log) return;
    this.log(level, msg, a.droppedBefore > 0 ? { ...fields, notLoggedBefore: a.droppedBefore } : fields);
  }

  /** Reports how many lines each rate limit dropped in the intervals that ended. */
  private flushLogLimits(): void {
    const now = performance.now();
    for (const d of [...this.refusalLog.flush(now), ...this.capLog.flush(now)]) {
      this.log('warn', 'link refusals not logged (rate limit)', {
        kind: d.kind,
        notLogged: d.dropped,
        intervalMs: d.intervalMs,
      });
    }
  }

  async close(): Promise<void> {
    clearInterval(this.flushTimer);
    for (const s of this.sessions) s.close('node stopping', true, 'RC_ERR_SHUTDOWN');
    const server = this.server;
    if (!server) return;
    await new Promise<void>((r) => server.close(() => r()));
  }
}
