/**
 * Proves STARTTLS with X.509 against GnuTLS-based clients: a CA and a server certificate for
 * 127.0.0.1 are made with openssl at test time; with TLS required, nbdinfo over nbds:// (trusting
 * only that CA) negotiates TLS and sees the export, a plain client is refused, a client trusting
 * another CA fails the TLS handshake and its connection is cleaned up, and qemu-io writes and
 * reads back a pattern over TLS; with TLS optional, plain and TLS clients both work. A client
 * (Node's TLS, written here) that sends writes and DISC, then closes its side (close_notify and
 * FIN) still gets every reply over TLS.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { NbdServer } from '../../src/frontend/nbd/server.js';
import { MemCatalog, MemExport } from '../../src/testing/mem-export.js';
import { nbdRequest, u32be } from '../../src/testing/wire.js';

const execFileP = promisify(execFile);
/** Every test fails (never hangs) if a client does not finish. */
const T = { timeout: 90_000 };
const MiB = 1024 * 1024;
const PACKAGES: Record<string, string> = {
  openssl: 'openssl',
  nbdinfo: 'libnbd-bin',
  'qemu-io': 'qemu-utils',
};

async function run(cmd: string, args: string[]): Promise<string> {
  try {
    const { stdout } = await execFileP(cmd, args, { timeout: 60_000 });
    return stdout;
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stdout?: string; stderr?: string };
    if (err.code === 'ENOENT')
      throw new Error(`${cmd} is not installed: install Debian package ${PACKAGES[cmd]}`, { cause: e });
    throw new Error(
      `${cmd} ${args.join(' ')} failed: ${err.message}\n${err.stdout ?? ''}\n${err.stderr ?? ''}`,
      { cause: e },
    );
  }
}

const dir = mkdtempSync(join(tmpdir(), 'rc-nbd-tls-'));
/** Server side: key and certificate. Client side (libnbd / qemu tls-certificates dir): ca-cert.pem. */
const pki = join(dir, 'pki');
const clientDir = join(dir, 'client');
/** A client directory trusting a different CA: the handshake must fail. */
const strangerDir = join(dir, 'stranger');

async function makeCertificates(): Promise<void> {
  mkdirSync(pki);
  mkdirSync(clientDir);
  mkdirSync(strangerDir);
  const p = (f: string) => join(pki, f);
  await run('openssl', [
    ...['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2'],
    ...['-keyout', p('ca-key.pem'), '-out', p('ca-cert.pem'), '-subj', '/CN=remcopy test CA'],
    ...['-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'],
  ]);
  await run('openssl', [
    ...['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', p('server-key.pem')],
    ...['-out', p('server.csr'), '-subj', '/CN=127.0.0.1'],
  ]);
  writeFileSync(
    p('ext.cnf'),
    'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' +
      'keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n',
  );
  await run('openssl', [
    ...['x509', '-req', '-in', p('server.csr'), '-CA', p('ca-cert.pem'), '-CAkey', p('ca-key.pem')],
    ...['-CAcreateserial', '-out', p('server-cert.pem'), '-days', '2', '-extfile', p('ext.cnf')],
  ]);
  copyFileSync(p('ca-cert.pem'), join(clientDir, 'ca-cert.pem'));
  await run('openssl', [
    ...['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=another CA'],
    ...['-keyout', join(strangerDir, 'ca-key.pem'), '-out', join(strangerDir, 'ca-cert.pem')],
  ]);
}

const vol = new MemExport({ name: 'vol', sizeBytes: 16 * MiB });
let required: NbdServer;
let optional: NbdServer;
let requiredPort = 0;
let optionalPort = 0;

before(async () => {
  await makeCertificates();
  const tls = {
    key: readFileSync(join(pki, 'server-key.pem')),
    cert: readFileSync(join(pki, 'server-cert.pem')),
  };
  required = new NbdServer({ catalog: new MemCatalog([vol]), tls: { ...tls, required: true } });
  optional = new NbdServer({ catalog: new MemCatalog([vol]), tls });
  requiredPort = (await required.listen('127.0.0.1', 0)).port;
  optionalPort = (await optional.listen('127.0.0.1', 0)).port;
});
after(async () => {
  await Promise.all([required?.close(), optional?.close()]);
  rmSync(dir, { recursive: true, force: true });
});

const tlsUri = (port: number) => `nbds://127.0.0.1:${port}/vol?tls-certificates=${clientDir}`;

test('TLS required: nbdinfo over nbds:// negotiates TLS; a plain client is refused', T, async () => {
  const info = JSON.parse(await run('nbdinfo', ['--json', tlsUri(requiredPort)]));
  assert.equal(info.TLS, true);
  assert.equal(info.structured, true);
  assert.equal(info.exports[0]['export-size'], 16 * MiB);
  assert.ok(info.exports[0].contexts.includes('base:allocation'), 'options after STARTTLS work');
  await assert.rejects(run('nbdinfo', [`nbd://127.0.0.1:${requiredPort}/vol`]), /TLS|not supported|failed/i);
});

test('TLS required: qemu-io writes and reads back a pattern over TLS', T, async () => {
  const out = await run('qemu-io', [
    ...['--object', `tls-creds-x509,id=tls0,endpoint=client,dir=${clientDir}`],
    ...['--image-opts', `driver=nbd,host=127.0.0.1,port=${requiredPort},export=vol,tls-creds=tls0`],
    ...['-c', 'write -P 0x3c 64k 128k', '-c', 'flush', '-c', 'read -P 0x3c 64k 128k'],
  ]);
  assert.match(out, /read 131072\/131072/);
  assert.ok(vol.data.subarray(65536, 65536 + 131072).equals(Buffer.alloc(131072, 0x3c)));
});

test(
  'a client that does not trust the certificate fails the handshake; the server cleans up',
  T,
  async () => {
    const stranger = `nbds://127.0.0.1:${requiredPort}/vol?tls-certificates=${strangerDir}`;
    await assert.rejects(run('nbdinfo', ['--json', stranger]));
    for (let i = 0; i < 100 && required.connectionCount > 0; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(required.connectionCount, 0);
  },
);

test('TLS optional: plain and TLS clients both connect', T, async () => {
  const plain = JSON.parse(await run('nbdinfo', ['--json', `nbd://127.0.0.1:${optionalPort}/vol`]));
  assert.equal(plain.TLS, false);
  const secure = JSON.parse(await run('nbdinfo', ['--json', tlsUri(optionalPort)]));
  assert.equal(secure.TLS, true);
});

/** Exact reads from a byte stream (a plain socket, then the TLS socket over it). */
class Reader {
  private buf = Buffer.alloc(0);
  private wake: (() => void) | undefined;
  ended = false;
  private readonly onData = (d: Buffer): void => {
    this.buf = Buffer.concat([this.buf, d]);
    this.wake?.();
  };
  constructor(private readonly stream: net.Socket) {
    stream.on('data', this.onData);
    stream.on('close', () => {
      this.ended = true;
      this.wake?.();
    });
  }
  async read(n: number): Promise<Buffer> {
    while (this.buf.length < n) {
      if (this.ended) throw new Error(`closed with ${this.buf.length} of ${n} bytes`);
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }
  detach(): void {
    assert.equal(this.buf.length, 0, 'nothing read past the STARTTLS reply');
    this.stream.removeListener('data', this.onData);
  }
}

/** An option, then its replies up to the final one; returns the final reply's type. */
async function negotiate(r: Reader, s: net.Socket, opt: number, data = Buffer.alloc(0)): Promise<number> {
  const h = Buffer.alloc(16);
  h.writeBigUInt64BE(0x49484156454f5054n, 0);
  h.writeUInt32BE(opt, 8);
  h.writeUInt32BE(data.length, 12);
  s.write(Buffer.concat([h, data]));
  for (;;) {
    const reply = await r.read(20);
    const type = reply.readUInt32BE(12);
    const len = reply.readUInt32BE(16);
    if (len > 0) await r.read(len);
    if (type === 1 || type >= 0x80000000) return type;
  }
}

test('over TLS, DISC then close_notify and FIN: every request in flight is answered', T, async () => {
  const n = 32;
  const slow = new MemExport({ name: 'slow', sizeBytes: 4 * MiB, latencyMs: 50 });
  const server = new NbdServer({
    catalog: new MemCatalog([slow]),
    tls: { key: readFileSync(join(pki, 'server-key.pem')), cert: readFileSync(join(pki, 'server-cert.pem')) },
  });
  const { port } = await server.listen('127.0.0.1', 0);
  try {
    const plain = net.connect(port, '127.0.0.1');
    plain.on('error', () => {});
    const pr = new Reader(plain);
    await pr.read(18);
    plain.write(u32be(3));
    assert.equal(await negotiate(pr, plain, 5 /* STARTTLS */), 1);
    pr.detach();
    const secure = tls.connect({
      socket: plain,
      ca: readFileSync(join(pki, 'ca-cert.pem')),
      host: '127.0.0.1',
    });
    secure.on('error', () => {});
    await new Promise((resolve) => secure.once('secureConnect', resolve));
    const r = new Reader(secure);
    const name = Buffer.from('slow');
    const go = Buffer.concat([u32be(name.length), name, Buffer.alloc(2)]);
    assert.equal(await negotiate(r, secure, 7 /* GO */, go), 1);
    const parts = [];
    for (let i = 0; i < n; i++)
      parts.push(nbdRequest(1, i, i * 65536, 65536, 1 /* FUA */), Buffer.alloc(65536, i + 1));
    secure.write(Buffer.concat([...parts, nbdRequest(2 /* DISC */, 999, 0, 0)]));
    secure.end();
    const handles = new Set<number>();
    for (let i = 0; i < n; i++) {
      const reply = await r.read(16);
      assert.equal(reply.readUInt32BE(4), 0, 'no error');
      handles.add(Number(reply.readBigUInt64BE(8)));
    }
    assert.equal(handles.size, n, 'every write answered once');
    for (let i = 0; i < n; i++) assert.equal(slow.data[i * 65536 + 65535], i + 1, `write ${i} is there`);
    // Then the server closes its side too (close_notify, FIN): the connection is gone.
    if (!secure.closed) await new Promise((resolve) => secure.once('close', resolve));
    for (let i = 0; i < 200 && server.connectionCount > 0; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(server.connectionCount, 0);
  } finally {
    await server.close();
  }
});
