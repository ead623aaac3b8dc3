/**
 * The link under faults, with real node processes (issue 3, item 1):
 * - a link that goes silent (a proxy drops every byte, no FIN, no RST) is noticed by the session's
 *   heartbeat timeout in seconds; when the path heals the source reconnects with backoff, resumes
 *   from the target's durable seq, and the copy converges (verify identical);
 * - a target killed (kill -9) in mid-stream and restarted resumes with no gap and nothing applied
 *   twice (verify identical);
 * - links over TLS: replication works, and a plain-TCP peer is not let in; the management API of
 *   a node with TLS is HTTPS only (the CLI and a client trusting the CA get answers; plain HTTP and
 *   a client trusting another CA get none).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { promisify } from 'node:util';
import { connect } from '../../src/client/index.js';
import { encodeFrame, FrameType, newNonce } from '../../src/link/frames.js';
import { apiCall } from '../../src/node/api.js';
import { apiOf, copyJournalled, groupStatus, waitFor } from '../../src/testing/cluster.js';
import { FaultProxy } from '../../src/testing/fault-proxy.js';
import { CLI_MAIN, startNodeProcess, writeTopology } from '../../src/testing/proc.js';

const run = promisify(execFile);
const root = mkdtempSync(join(tmpdir(), 'rc-linkfault-'));
after(() => rmSync(root, { recursive: true, force: true }));

async function verify(configFile: string, group: string): Promise<string> {
  const { stdout } = await run(process.execPath, [
    CLI_MAIN,
    'verify',
    '--config',
    configFile,
    '--group',
    group,
  ]);
  return stdout;
}

/** Writes 4 KiB blocks with distinct content through the native client until `stop()`. */
async function writeLoop(port: number, stop: () => boolean, start: number): Promise<number> {
  const client = await connect({ host: '127.0.0.1', port });
  const vol = await client.open('v');
  let n = 0;
  try {
    while (!stop()) {
      const block = (start + n) % 2048;
      await vol.write(block * 4096, Buffer.alloc(4096, (start + n) % 251));
      n++;
    }
  } catch {
    // the source went away: the caller decides whether that was expected
  }
  await client.close().catch(() => {});
  return n;
}

test('a silent link is noticed within seconds; after it heals the copy converges', async (t) => {
  const dir = mkdtempSync(join(root, 'silent-'));
  const topo = await writeTopology(
    dir,
    { a: { volumes: { v: '8MiB' }, native: true }, b: { volumes: { v: '8MiB' } } },
    { g: ['a', 'b', 'v'] },
  );
  const realLink = topo.ports.get('b')!.link;
  const proxy = new FaultProxy(realLink);
  const proxyPort = await proxy.listen();
  // Node a reaches b's link through the proxy; b listens on the real port.
  const fileA = join(dir, 'remcopy-a.yaml');
  writeFileSync(
    fileA,
    readFileSync(topo.file, 'utf8').replace(`link: 127.0.0.1:${realLink}`, `link: 127.0.0.1:${proxyPort}`),
  );
  const B = await startNodeProcess(topo.file, 'b');
  const A = await startNodeProcess(fileA, 'a');
  const api = apiOf(topo.ports.get('a')!.api);
  try {
    await copyJournalled(api, topo.secret, 'g');
    await waitFor('the link up', async () =>
      (await groupStatus(api, topo.secret, 'g')).linkUp ? true : undefined,
    );
    let stop = false;
    const writing = writeLoop(topo.ports.get('a')!.native!, () => stop, 0);
    await new Promise((r) => setTimeout(r, 300));
    proxy.blackhole(true);
    const t0 = performance.now();
    // The bound is TCP's minutes versus the session's seconds, not a speed figure.
    const down = await waitFor(
      'the source to notice the silent link',
      async () => {
        const g = await groupStatus(api, topo.secret, 'g');
        return g.linkUp ? undefined : g;
      },
      20_000,
    );
    const noticedMs = performance.now() - t0;
    assert.ok(proxy.dropped > 0, 'heartbeats (at least) were dropped');
    assert.match(String((down as { lastError?: string }).lastError), /presumed dead|closed|connect/);
    const during = (await groupStatus(api, topo.secret, 'g')).seqWritten;
    proxy.blackhole(false);
    stop = true;
    const written = await writing;
    assert.ok(written > 0);
    const g = await waitFor(
      'the target to catch up after the link healed',
      async () => {
        const s = await groupStatus(api, topo.secret, 'g');
        return s.linkUp && s.seqApplied === s.seqWritten ? s : undefined;
      },
      30_000,
    );
    assert.ok(g.seqWritten >= during);
    assert.match(await verify(fileA, 'g'), /verify g: OK/);
    t.diagnostic(`silent link noticed after ${Math.round(noticedMs)} ms`);
  } finally {
    assert.equal(await A.stop(), 0);
    assert.equal(await B.stop(), 0);
    await proxy.close();
  }
});

test('a target killed in mid-stream resumes at its durable seq: no gap, nothing twice', async () => {
  const dir = mkdtempSync(join(root, 'kill-target-'));
  const topo = await writeTopology(
    dir,
    { a: { volumes: { v: '8MiB' }, native: true }, b: { volumes: { v: '8MiB' } } },
    { g: ['a', 'b', 'v'] },
  );
  const A = await startNodeProcess(topo.file, 'a');
  let B = await startNodeProcess(topo.file, 'b');
  const api = apiOf(topo.ports.get('a')!.api);
  try {
    await copyJournalled(api, topo.secret, 'g');
    let stop = false;
    const writing = writeLoop(topo.ports.get('a')!.native!, () => stop, 7);
    for (let i = 0; i < 3; i++) {
      await new Promise((r) => setTimeout(r, 300 + 200 * i));
      await B.kill9();
      await new Promise((r) => setTimeout(r, 300));
      B = await startNodeProcess(topo.file, 'b');
    }
    stop = true;
    assert.ok((await writing) > 0);
    const logs = () =>
      [...A.stderr, ...B.stderr]
        .filter((l) => /"level":(40|50)/.test(l))
        .slice(-20)
        .join('\n');
    await waitFor(
      'the target to catch up',
      async () => {
        const s = await groupStatus(api, topo.secret, 'g');
        return s.seqApplied === s.seqWritten && s.seqWritten > 0 ? s : undefined;
      },
      60_000,
    ).catch((e: Error) => assert.fail(`${e.message}\n${logs()}`));
    assert.match(await verify(topo.file, 'g'), /verify g: OK/, logs());
    assert.ok(
      !B.stderr.some((l) => /arrival refused|refused; nothing journalled/.test(l)),
      B.stderr.join('\n'),
    );
  } finally {
    assert.equal(await A.stop(), 0);
    assert.equal(await B.stop(), 0);
  }
});

async function makePki(dir: string): Promise<{ ca: string; cert: string; key: string }> {
  mkdirSync(dir);
  const p = (f: string) => join(dir, f);
  await run('openssl', [
    ...['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2'],
    ...['-keyout', p('ca-key.pem'), '-out', p('ca.pem'), '-subj', '/CN=remcopy link test CA'],
    ...['-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'],
  ]);
  await run('openssl', [
    ...['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', p('key.pem'), '-out', p('node.csr')],
    ...['-subj', '/CN=127.0.0.1'],
  ]);
  writeFileSync(p('ext.cnf'), 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n');
  await run('openssl', [
    ...['x509', '-req', '-in', p('node.csr'), '-CA', p('ca.pem'), '-CAkey', p('ca-key.pem')],
    ...['-CAcreateserial', '-out', p('cert.pem'), '-days', '2', '-extfile', p('ext.cnf')],
  ]);
  return { ca: p('ca.pem'), cert: p('cert.pem'), key: p('key.pem') };
}

test('links over TLS replicate; a plain-TCP peer is not let in; the API is HTTPS only', async () => {
  const dir = mkdtempSync(join(root, 'tls-'));
  const pki = await makePki(join(dir, 'pki'));
  const stranger = await makePki(join(dir, 'stranger'));
  const tls = `{ cert: ${pki.cert}, key: ${pki.key}, ca: ${pki.ca} }`;
  const topo = await writeTopology(
    dir,
    { a: { volumes: { v: '8MiB' }, native: true, tls }, b: { volumes: { v: '8MiB' }, tls } },
    { g: ['a', 'b', 'v'] },
  );
  const [A, B] = await Promise.all([startNodeProcess(topo.file, 'a'), startNodeProcess(topo.file, 'b')]);
  const api = apiOf(topo.ports.get('a')!.api, pki.ca);
  try {
    await copyJournalled(api, topo.secret, 'g');
    // No answer over plain HTTP (the secret would cross the wire in the clear), nor to a client
    // that does not trust the node's certificate.
    await assert.rejects(apiCall(apiOf(topo.ports.get('a')!.api), topo.secret, 'GET', '/v1/status'));
    await assert.rejects(
      apiCall(apiOf(topo.ports.get('a')!.api, stranger.ca), topo.secret, 'GET', '/v1/status'),
      /certificate|self.signed|verify/i,
    );
    let n = 0;
    await writeLoop(topo.ports.get('a')!.native!, () => ++n > 200, 3);
    await waitFor('the target to apply over TLS', async () => {
      const s = await groupStatus(api, topo.secret, 'g');
      return s.linkUp && s.seqApplied === s.seqWritten ? s : undefined;
    });
    assert.match(await verify(topo.file, 'g'), /verify g: OK/);
    // A peer speaking plain TCP gets no link session: its HELLO is not a TLS handshake.
    const sock = net.connect({ host: '127.0.0.1', port: topo.ports.get('b')!.link });
    await new Promise((r) => sock.once('connect', r));
    sock.write(
      encodeFrame({
        type: FrameType.hello,
        versionMin: 1,
        versionMax: 1,
        nonce: newNonce(),
        nodeName: 'a',
        clusterId: '',
        groups: ['g'],
      }),
    );
    const reply = await new Promise<Buffer>((resolve) => {
      const chunks: Buffer[] = [];
      sock.on('data', (c: Buffer) => chunks.push(c));
      sock.on('close', () => resolve(Buffer.concat(chunks)));
      sock.on('error', () => {});
    });
    assert.notEqual(
      reply.subarray(0, 4).toString('latin1'),
      'RCLK',
      'no link frame answers a plain-TCP peer',
    );
    assert.equal((await groupStatus(apiOf(topo.ports.get('b')!.api, pki.ca), topo.secret, 'g')).linkUp, true);
    const { stdout: status } = await run(process.execPath, [
      CLI_MAIN,
      'status',
      '--config',
      topo.file,
      '--json',
    ]);
    const nodes = JSON.parse(status) as { name: string; up: boolean }[];
    assert.deepEqual(
      nodes.map((x) => [x.name, x.up]),
      [
        ['a', true],
        ['b', true],
      ],
      status,
    );
  } finally {
    assert.equal(await A.stop(), 0);
    assert.equal(await B.stop(), 0);
  }
});
