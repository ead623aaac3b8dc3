/**
 * The `remcopy` command as a user meets it, with real processes: `up` runs every node and exits 0
 * on SIGINT after stopping them cleanly; `status --json` reports each node and `status` exits 1
 * when one is down; bad configuration and an unknown node exit 2 with a message naming the key;
 * `demo` needs no arguments, survives its kill -9 and ends with PASS and exit 0.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, test } from 'node:test';
import { CLI_MAIN, writeTopology } from '../../src/testing/proc.js';

const dir = mkdtempSync(join(tmpdir(), 'rc-cli-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function remcopy(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const opts = { timeout: 60_000, env: { ...process.env, ...env } };
    execFile(process.execPath, [CLI_MAIN, ...args], opts, (err, stdout, stderr) => {
      const code = err ? (err as { code?: unknown }).code : 0;
      resolve({ code: typeof code === 'number' ? code : -1, stdout, stderr });
    });
  });
}

test('up runs every node; status --json sees them; SIGINT stops them and exits 0', async () => {
  const sub = join(dir, 'up');
  mkdirSync(sub);
  const topo = await writeTopology(
    sub,
    { a: { volumes: { v: '8MiB' } }, b: { volumes: { v: '8MiB' } } },
    { g: ['a', 'b', 'v'] },
  );
  const up = spawn(process.execPath, [CLI_MAIN, 'up', '--config', topo.file], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise<number | null>((r) => up.on('exit', (code) => r(code)));
  const ready = new Set<string>();
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('nodes not ready')), 20_000);
    createInterface({ input: up.stdout! }).on('line', (l) => {
      const m = /^\[(\w+)\] remcopy node \w+ ready/.exec(l);
      if (m) ready.add(m[1]!);
      if (ready.size === 2) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  const st = await remcopy(['status', '--config', topo.file, '--json']);
  assert.equal(st.code, 0, st.stderr);
  const nodes = JSON.parse(st.stdout) as {
    name: string;
    up: boolean;
    status: { groups: { role: string }[] };
  }[];
  assert.deepEqual(
    nodes.map((n) => [n.name, n.up, n.status.groups[0]!.role]),
    [
      ['a', true, 'source'],
      ['b', true, 'target'],
    ],
  );
  up.kill('SIGINT');
  assert.equal(await exited, 0, 'up exits 0 after a clean stop');
  const down = await remcopy(['status', '--config', topo.file]);
  assert.equal(down.code, 1, 'a node that does not answer makes status exit 1');
  assert.match(down.stdout, /a: DOWN/);
});

test('bad configuration, an unknown node and bad usage exit 2 with a clear message', async () => {
  const bad = join(dir, 'bad.yaml');
  writeFileSync(bad, 'secret: long-enough-secret\nnodes:\n  a:\n    dataDir: ./a\n    nbd: nowhere\n');
  const r = await remcopy(['node', '--config', bad, '--node', 'a']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /nodes\.a\.nbd/);
  const sub = join(dir, 'unknown');
  mkdirSync(sub);
  const topo = await writeTopology(sub, { a: { volumes: { v: '8MiB' } } });
  const u = await remcopy(['node', '--config', topo.file, '--node', 'zz']);
  assert.equal(u.code, 2);
  assert.match(u.stderr, /zz/);
  const usage = await remcopy(['node']);
  assert.equal(usage.code, 2, 'a missing required option is a usage error');
  assert.match(usage.stderr, /--config/);
});

test('demo needs no arguments and ends with PASS', async () => {
  const r = await remcopy(['demo'], { REMCOPY_DEMO_SECONDS: '8' });
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /siteB killed \(kill -9\)/);
  assert.match(r.stdout, /siteB cut: \d+ transfers, \d in flight, consistent/);
  assert.match(r.stdout, /g-credits: 64 chunks at seq \d+: identical/);
  assert.match(r.stdout, /PASS: \d+ transfers, \d+ live cuts of siteB consistent/);
});
