/**
 * The management API client (apiCall) keeps connections alive between calls. A server closes an
 * idle one after its keep-alive timeout; when that happens just as the next call goes out on it,
 * the call must be sent again on a new connection, not fail (a consistency cycle would fail, and
 * a CLI command report a reset it had nothing to do with). A reset after the server answered, or
 * on a fresh connection, is a real failure and is reported. endpointOf picks HTTPS and the CA to
 * trust for a node with tls.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { stringify } from 'yaml';
import { RemcopyError } from '../../src/core/errors.js';
import { apiCall, endpointOf } from '../../src/node/api.js';
import { parseConfig } from '../../src/node/config.js';
import { twoSiteConfig } from '../../src/testing/config-fixture.js';

function response(body: object): string {
  const text = JSON.stringify(body);
  return `HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${text.length}\r\nconnection: keep-alive\r\n\r\n${text}`;
}

/**
 * A raw HTTP server: `onRequest(connectionIndex, requestIndexOnIt, socket)` answers or resets.
 * Counts requests per connection from the request lines it sees.
 */
async function rawServer(
  onRequest: (conn: number, nth: number, socket: net.Socket) => void,
): Promise<{ port: number; close(): Promise<void>; requests: string[] }> {
  const requests: string[] = [];
  let conns = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    const conn = conns++;
    let nth = 0;
    let buf = '';
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    socket.on('data', (d) => {
      buf += d.toString('latin1');
      for (;;) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = buf.slice(0, end);
        const len = Number(/content-length: (\d+)/i.exec(head)?.[1] ?? 0);
        if (buf.length < end + 4 + len) return;
        requests.push(`${conn}:${head.split('\r\n')[0]}`);
        buf = buf.slice(end + 4 + len);
        onRequest(conn, nth++, socket);
      }
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: (server.address() as net.AddressInfo).port,
    requests,
    close: async () => {
      for (const s of sockets) s.destroy();
      server.close();
      await once(server, 'close');
    },
  };
}

test('a call on a kept-alive connection the server reset as idle is sent again on a new one', async () => {
  // Connection 0 answers its first request and resets at its second, as a server does when its
  // keep-alive timer fires just as the request arrives; every other connection answers.
  const srv = await rawServer((conn, nth, socket) => {
    if (conn === 0 && nth === 1) socket.resetAndDestroy();
    else socket.write(response({ conn, nth }));
  });
  try {
    const addr = { host: '127.0.0.1', port: srv.port };
    assert.deepEqual(await apiCall(addr, 's', 'GET', '/v1/status'), { conn: 0, nth: 0 });
    assert.deepEqual(await apiCall(addr, 's', 'POST', '/v1/sets/x/freeze', { id: 'a' }), { conn: 1, nth: 0 });
    assert.deepEqual(srv.requests, [
      '0:GET /v1/status HTTP/1.1',
      '0:POST /v1/sets/x/freeze HTTP/1.1',
      '1:POST /v1/sets/x/freeze HTTP/1.1',
    ]);
  } finally {
    await srv.close();
  }
});

test('a reset on a fresh connection is an error, and the request is not sent twice', async () => {
  const srv = await rawServer((_conn, _nth, socket) => socket.resetAndDestroy());
  try {
    const addr = { host: '127.0.0.1', port: srv.port };
    await assert.rejects(apiCall(addr, 's', 'POST', '/v1/sets/x/mark', { id: 'a', marker: 3 }), /ECONNRESET/);
    assert.equal(srv.requests.length, 1);
  } finally {
    await srv.close();
  }
});

test('a reset after the answer began is an error, not a second request', async () => {
  // Connection 0 answers its first request; on the second it sends part of a response and resets.
  const srv = await rawServer((conn, nth, socket) => {
    if (nth === 0) socket.write(response({ conn }));
    else {
      socket.write('HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{"par');
      setTimeout(() => socket.resetAndDestroy(), 20);
    }
  });
  try {
    const addr = { host: '127.0.0.1', port: srv.port };
    await apiCall(addr, 's', 'GET', '/v1/status');
    await assert.rejects(apiCall(addr, 's', 'POST', '/v1/sets/x/mark', { id: 'a', marker: 3 }));
    assert.equal(srv.requests.length, 2);
  } finally {
    await srv.close();
  }
});

test('endpointOf: plain for a node without tls; HTTPS trusting the caller CA, else the node CA', () => {
  const dir = mkdtempSync(join(tmpdir(), 'rc-endpoint-'));
  try {
    writeFileSync(join(dir, 'node-ca.pem'), 'node CA');
    writeFileSync(join(dir, 'own-ca.pem'), 'own CA');
    const cfg = twoSiteConfig();
    cfg.nodes.siteB!.tls = { cert: 'b.pem', key: 'b.key', ca: 'node-ca.pem' };
    const topo = parseConfig(stringify(cfg), dir, 'test.yaml', {});
    const a = topo.nodes.get('siteA')!;
    const b = topo.nodes.get('siteB')!;
    assert.deepEqual(endpointOf(a), a.api, 'no tls: plain HTTP');
    assert.equal(endpointOf(b).tls?.ca?.toString(), 'node CA');
    assert.equal(endpointOf(b, join(dir, 'own-ca.pem')).tls?.ca?.toString(), 'own CA');
    assert.throws(
      () => endpointOf(b, join(dir, 'missing.pem')),
      (e: unknown) =>
        e instanceof RemcopyError && e.code === 'RC_ERR_CONFIG' && /missing\.pem.*siteB/.test(e.message),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
