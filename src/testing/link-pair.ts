/**
 * Link sessions for tests, in process: two ends of a loopback connection that run the real
 * handshake of src/link/session.ts, for tests of what sessions do once both are authenticated.
 */
import * as net from 'node:net';
import type { Frame } from '../link/frames.js';
import { LinkSession, type SessionOptions } from '../link/session.js';

export interface PairTiming {
  readonly heartbeatMs: number;
  readonly timeoutMs: number;
}

/** Session options for node `self` that accept only `peer`, with a fixed test secret. */
export function sessionOptions(
  self: string,
  peer: string,
  timing: PairTiming = { heartbeatMs: 1000, timeoutMs: 30_000 },
): SessionOptions {
  return {
    selfName: self,
    secret: 'test-secret-0123456789',
    groups: ['g'],
    knownPeer: (n) => n === peer,
    ...timing,
    nowUs: () => Math.round(performance.now() * 1000),
  };
}

/**
 * Two ready sessions, a (dialling) and b (accepting), over a loopback connection; `onFrame` gets
 * b's received frames, `onClosed` the reason either session closes with (before `end`).
 */
export async function readyPair(
  onFrame: (f: Frame) => void,
  opts: { timing?: PairTiming; onClosed?: (reason: string) => void } = {},
): Promise<{ a: LinkSession; b: LinkSession; end(): void }> {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
  const client = net.connect(port, '127.0.0.1');
  const serverSide = await accepted;
  let readyCount = 0;
  let ready!: () => void;
  const bothReady = new Promise<void>((r) => (ready = r));
  let ended = false;
  const events = (frame: (f: Frame) => void) => ({
    ready: () => {
      if (++readyCount === 2) ready();
    },
    frame,
    closed: (reason: string) => {
      if (!ended) opts.onClosed?.(reason);
    },
  });
  const a = new LinkSession(
    client,
    sessionOptions('a', 'b', opts.timing),
    events(() => {}),
  );
  const b = new LinkSession(serverSide, sessionOptions('b', 'a', opts.timing), events(onFrame));
  await bothReady;
  return {
    a,
    b,
    end() {
      ended = true;
      a.close('test done', false);
      b.close('test done', false);
      server.close();
    },
  };
}
