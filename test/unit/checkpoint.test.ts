/**
 * The coordinator's order of calls (src/mgmt/checkpoint.ts), against nodes that only record what
 * they are asked: every source is frozen before any is marked; the coordinator's own node (`local`,
 * reached in process) is frozen only after every other source answered and marked after them, so
 * its writes do not wait for a round trip; a source that cannot freeze fails the checkpoint with
 * every source thawed and none marked.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { stringify } from 'yaml';
import { checkpoint } from '../../src/mgmt/checkpoint.js';
import { parseConfig } from '../../src/node/config.js';
import { twoSiteConfig } from '../../src/testing/config-fixture.js';

/** Three source nodes a1..a3, each the source of one group to b1; one set over the three. */
function threeSources() {
  const cfg = twoSiteConfig();
  const node = (i: number) => ({
    dataDir: `./var/n${i}`,
    nbd: `127.0.0.1:${10900 + i}`,
    link: `127.0.0.1:${7900 + i}`,
    api: `127.0.0.1:${8900 + i}`,
    volumes: { v1: '1MiB', v2: '1MiB', v3: '1MiB' },
  });
  cfg.nodes = { a1: node(1), a2: node(2), a3: node(3), b1: node(4) };
  cfg.groups = {
    g1: { source: 'a1', target: 'b1', pairs: { v1: 'v1' } },
    g2: { source: 'a2', target: 'b1', pairs: { v2: 'v2' } },
    g3: { source: 'a3', target: 'b1', pairs: { v3: 'v3' } },
  };
  cfg.consistencySets = { s: ['g1', 'g2', 'g3'] };
  return parseConfig(stringify(cfg), '/srv', 'test.yaml', {});
}

function recorder(failFreezeOn?: string) {
  const calls: string[] = [];
  const call = async (node: string, _method: string, path: string): Promise<unknown> => {
    const action = path.split('/').at(-1)!;
    calls.push(`${action} ${node}`);
    // Remote answers come back later than the call (a round trip).
    await new Promise((r) => setTimeout(r, 2));
    if (action === 'freeze' && node === failFreezeOn) throw new Error('cannot freeze');
    if (action === 'freeze') return { lastMarker: node === 'a2' ? 4 : 3 };
    if (action === 'mark') return { freezeMs: 1 };
    if (action === 'wait-marker') return { outcome: 'snapshot' };
    return {};
  };
  return { calls, call };
}

test('the local source is frozen after the others answered and marked after them; n is 1 + the highest', async () => {
  const topo = threeSources();
  const { calls, call } = recorder();
  const r = await checkpoint(topo, 's', call, { reachTimeoutMs: 1000, local: 'a2' });
  assert.equal(r.marker, 5);
  assert.deepEqual(calls, [
    'freeze a1',
    'freeze a3',
    'freeze a2',
    'mark a1',
    'mark a3',
    'mark a2',
    'wait-marker b1',
  ]);
  assert.deepEqual(Object.keys(r.freezeMs).sort(), ['a1', 'a2', 'a3']);
});

test('the remote marks leave before the local mark runs (HTTP writes a request a tick after the call)', async () => {
  const topo = threeSources();
  const { calls, call } = recorder();
  const wire = (node: string, method: 'GET' | 'POST', path: string): Promise<unknown> => {
    if (node !== 'a2' && path.endsWith('/mark')) process.nextTick(() => calls.push(`sent ${node}`));
    return call(node, method, path);
  };
  await checkpoint(topo, 's', wire, { reachTimeoutMs: 1000, local: 'a2' });
  const marks = calls.filter((c) => c.startsWith('mark') || c.startsWith('sent'));
  assert.deepEqual(marks, ['mark a1', 'mark a3', 'sent a1', 'sent a3', 'mark a2']);
});

test('without a local node every source is frozen at once, then marked', async () => {
  const { calls, call } = recorder();
  await checkpoint(threeSources(), 's', call, { reachTimeoutMs: 1000 });
  assert.deepEqual(calls.slice(0, 6), [
    'freeze a1',
    'freeze a2',
    'freeze a3',
    'mark a1',
    'mark a2',
    'mark a3',
  ]);
});

test('a source that cannot freeze fails the checkpoint: every source thawed, none marked', async () => {
  const { calls, call } = recorder('a3');
  await assert.rejects(
    checkpoint(threeSources(), 's', call, { reachTimeoutMs: 1000, local: 'a1' }),
    /failed at freeze: a3: cannot freeze/,
  );
  assert.equal(calls.filter((c) => c.startsWith('mark')).length, 0);
  assert.deepEqual(calls.filter((c) => c.startsWith('thaw')).sort(), ['thaw a1', 'thaw a2', 'thaw a3']);
});

test('every source has its own freeze answer time: a slow answer shows on that node only', async () => {
  const { call } = recorder();
  // a1 answers its freeze 30 ms late, a3 within the same tick; a2 is the local node.
  const timed = async (node: string, method: 'GET' | 'POST', path: string): Promise<unknown> => {
    if (path.endsWith('/freeze') && node === 'a1') await new Promise((r) => setTimeout(r, 30));
    if (path.endsWith('/freeze') && node !== 'a1') {
      return { lastMarker: 3 };
    }
    return call(node, method, path);
  };
  const r = await checkpoint(threeSources(), 's', timed, { reachTimeoutMs: 1000, local: 'a2' });
  assert.deepEqual(Object.keys(r.freezeAnswerMs).sort(), ['a1', 'a2', 'a3']);
  // A timer never fires more than a millisecond early; the quick answers come before any timer.
  assert.ok(r.freezeAnswerMs.a1! >= 29, `a1 answered in ${r.freezeAnswerMs.a1} ms`);
  assert.ok(r.freezeAnswerMs.a3! < r.freezeAnswerMs.a1!, `a3 ${r.freezeAnswerMs.a3} ms`);
  assert.ok(r.freezeAnswerMs.a2! < r.freezeAnswerMs.a1!, `a2 ${r.freezeAnswerMs.a2} ms`);
});
