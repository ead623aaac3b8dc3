/**
 * STARTTLS for the NBD server: the X.509 context, built once per server, and the in-place upgrade
 * of an accepted socket after the server has sent its ACK to NBD_OPT_STARTTLS.
 *
 * The upgrade stops reading the plain socket, puts back any bytes already read past the option
 * (the start of the client's TLS handshake, if it was quick), and wraps the same socket in a
 * server-side TLSSocket; Node feeds the put-back bytes to TLS before reading the socket again.
 *
 * The TLSSocket is half-open like the socket it wraps (Node copies allowHalfOpen from it): the
 * client's close_notify or FIN ends its input only, and replies still due go out encrypted; our
 * end() then sends close_notify and FIN (session.ts).
 */
import type net from 'node:net';
import tls from 'node:tls';
import { assert } from '../../core/assert.js';

export interface NbdTlsOptions {
  readonly key: Buffer | string;
  readonly cert: Buffer | string;
  readonly ca?: Buffer | string | ReadonlyArray<Buffer | string>;
  /** FORCEDTLS: refuse every option but STARTTLS and ABORT until TLS is up. */
  readonly required?: boolean;
}

/** NBD requires TLS 1.2 at least (doc/proto.md, "TLS versions"). */
const TLS_MIN_VERSION = 'TLSv1.2';

export function createTlsContext(opts: NbdTlsOptions): tls.SecureContext {
  return tls.createSecureContext({
    key: opts.key,
    cert: opts.cert,
    ca: opts.ca as tls.SecureContextOptions['ca'],
    minVersion: TLS_MIN_VERSION,
  });
}

/** Wrap `socket` (already sent the STARTTLS ACK) in server-side TLS. */
export function upgradeToTls(
  socket: net.Socket,
  leftover: Buffer,
  context: tls.SecureContext,
): tls.TLSSocket {
  socket.pause();
  if (leftover.length > 0) socket.unshift(leftover);
  const secure = new tls.TLSSocket(socket, { isServer: true, secureContext: context });
  assert(secure.allowHalfOpen === socket.allowHalfOpen, 'the TLS socket is half-open like the plain one');
  return secure;
}
