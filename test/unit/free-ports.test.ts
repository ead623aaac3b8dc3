/**
 * freePorts (src/testing/proc.ts) gives distinct ports that can be bound, below the kernel's
 * ephemeral range, so no outgoing connection of a concurrent test can take one before its node
 * binds it; and a port one process picked is not handed to another while the first lives (a node
 * of one test file restarting on its port must not find a concurrent test's node there).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as net from 'node:net';
import { test } from 'node:test';
import { freePorts } from '../../src/testing/proc.js';

test('freePorts: distinct, bindable, below the ephemeral range', async () => {
  const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
  const ports = await freePorts(40);
  assert.equal(ports.length, 40);
  assert.equal(new Set(ports).size, 40, 'distinct');
  for (const p of ports) assert.ok(p >= 10_000 && p < low, `${p} below ${low}`);
  const servers = await Promise.all(
    ports.map(
      (p) =>
        new Promise<net.Server>((resolve, reject) => {
          const s = net.createServer();
          s.once('error', reject);
          s.listen(p, '127.0.0.1', () => resolve(s));
        }),
    ),
  );
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
});

test('freePorts: a port reserved by a live process is not given to another, nor twice to one', async () => {
  const proc = new URL('../../src/testing/proc.js', import.meta.url).href;
  // The child picks its ports, prints them and lives on (its ports closed, only reserved) until
  // its stdin ends.
  const child = spawn(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      `const { freePorts } = await import(${JSON.stringify(proc)});
       console.log(JSON.stringify(await freePorts(500)));
       process.stdin.resume(); process.stdin.on('end', () => process.exit(0));`,
    ],
    { stdio: ['pipe', 'pipe', 'inherit'] },
  );
  const exited = new Promise<number | null>((r) => child.on('exit', r));
  try {
    const line = await new Promise<string>((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('\n')) resolve(out.trim());
      });
      child.on('exit', (code) => reject(new Error(`child exited ${code}: ${out}`)));
    });
    const theirs = new Set(JSON.parse(line) as number[]);
    assert.equal(theirs.size, 500);
    const first = await freePorts(500);
    const second = await freePorts(500);
    // 500 ports each out of about 22 000: picked at random alone, some would be shared.
    assert.deepEqual(
      first.filter((p) => theirs.has(p)),
      [],
      'no port of the live child handed out',
    );
    assert.deepEqual(
      second.filter((p) => first.includes(p)),
      [],
      'no port handed out twice in one process',
    );
  } finally {
    child.stdin.end();
    assert.equal(await exited, 0);
  }
});
