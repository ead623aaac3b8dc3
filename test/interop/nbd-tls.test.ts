/**
 * Proves STARTTLS with X.509 against GnuTLS-based clients: a CA and a server certificate for
 * 127.0.0.1 are made with openssl at test time; with TLS required, nbdinfo over nbds:// (trusting
 * only that CA) negotiates TLS and sees the export, a plain client is refused, a client trusting
 * another CA fails the TLS handshake and its connection is cleaned up, and qemu-io writes and
 * reads back a pattern over TLS; with TLS optional, plain and TLS clients both work.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import { NbdServer } from '../../src/frontend/nbd/server.js';
import { MemCatalog, MemExport } from '../../src/testing/mem-export.js';

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
