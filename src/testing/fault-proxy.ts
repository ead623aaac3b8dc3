/**
 * A TCP proxy between two nodes for real-process fault tests (TESTING.md: the kernel here has no
 * netem). It forwards bytes both ways until told otherwise:
 *   blackhole(true)  every byte is dropped silently and the connections stay open: a peer that
 *                    vanished without a FIN or RST, which TCP alone notices only after minutes;
 *   cut()            every connection is reset at once;
 *   blackhole(false) forwarding resumes (for new connections and old ones).
 */
import * as net from 'node:net';

export class FaultProxy {
  private server: net.Server | undefined;
  private readonly sockets = new Set<net.Socket>();
  private dropping = false;
  /** Bytes dropped while blackholed. */
  dropped = 0;

  constructor(
    private readonly upstreamPort: number,
    private readonly upstreamHost = '127.0.0.1',
  ) {}

  listen(port = 0): Promise<number> {
    this.server = net.createServer((down) => this.accept(down));
    const server = this.server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => resolve((server.address() as net.AddressInfo).port));
    });
  }

  private accept(down: net.Socket): void {
    const up = net.connect({ host: this.upstreamHost, port: this.upstreamPort });
    for (const [from, to] of [
      [down, up],
      [up, down],
    ] as const) {
      this.sockets.add(from);
      from.on('data', (chunk: Buffer) => {
        if (this.dropping) this.dropped += chunk.length;
        else to.write(chunk);
      });
      from.on('error', () => to.destroy());
      from.on('close', () => {
        this.sockets.delete(from);
        to.destroy();
      });
    }
  }

  blackhole(on: boolean): void {
    this.dropping = on;
  }

  cut(): void {
    for (const s of this.sockets) s.resetAndDestroy();
  }

  async close(): Promise<void> {
    this.cut();
    const server = this.server;
    if (server) await new Promise<void>((r) => server.close(() => r()));
  }
}
