/**
 * The node's link listener: accepts connections from peers (plain TCP, or TLS when the node has a
 * certificate), runs the authenticating handshake of src/link/session.ts on each, and hands ready
 * sessions from sources to the target side. A peer that fails the handshake is logged and dropped;
 * nothing it sent reaches the journal.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as tls from 'node:tls';
import type { Frame } from '../../link/frames.js';
import { LinkSession } from '../../link/session.js';
import type { NodeConfig, Topology } from '../config.js';
import { nowUs } from '../clock.js';
import type { Log } from '../log.js';
import type { LinkTiming } from './source.js';
import type { TargetReplicator } from './target.js';

export class LinkServer {
  private server: net.Server | undefined;
  private readonly sessions = new Set<LinkSession>();
  /** Sessions that ended in a refusal or a protocol error (status, tests). */
  refused = 0;

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
    const onSocket = (socket: net.Socket): void => this.accept(socket);
    const t = this.cfg.tls;
    this.server = t
      ? tls.createServer({ cert: fs.readFileSync(t.certFile), key: fs.readFileSync(t.keyFile) }, onSocket)
      : net.createServer(onSocket);
    const server = this.server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.cfg.link.port, this.cfg.link.host, () => {
        server.off('error', reject);
        server.on('error', (e) => this.log('error', 'link listener error', { error: String(e) }));
        resolve((server.address() as net.AddressInfo).port);
      });
    });
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
          this.target?.detach(s);
          const level =
            reason === 'connection closed by peer' || reason === 'node stopping' ? 'info' : 'warn';
          if (level === 'warn') this.refused++;
          const msg = s.closeCode === 'RC_ERR_AUTH' ? 'link peer refused' : 'link session closed';
          this.log(level, msg, { peer: s.peerName || undefined, remote: s.remote, reason });
        },
      },
    );
    this.sessions.add(session);
  }

  async close(): Promise<void> {
    for (const s of this.sessions) s.close('node stopping', true, 'RC_ERR_SHUTDOWN');
    const server = this.server;
    if (!server) return;
    await new Promise<void>((r) => server.close(() => r()));
  }
}
