/**
 * freePorts (src/testing/proc.ts) gives distinct ports that can be bound, below the kernel's
 * ephemeral range, so no outgoing connection of a concurrent test can take one before its node
 * binds it.
 */
import assert from 'node:assert/strict';
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
