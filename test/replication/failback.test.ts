/**
 * Failback with real node processes (issue 4 "Show", DESIGN.md §3.7):
 * - a takeover after the source was cut off with writes the target never got; writes at the new
 *   source; `remcopy failback` (cut short once, with a kill -9 of the old source between its steps,
 *   then run again): the resync copies exactly the union of both sides' dirty chunks, the old source
 *   refuses reads while half-synced, a kill -9 of the new source mid-resync is survived,
 *   `remcopy verify` passes the new way round;
 * - then a planned `remcopy takeover` back: nothing the new source acknowledged is lost, it is
 *   fenced; `remcopy failback` again: only the chunks written since, verify passes the first way.
 * - host writes at the new source all through its failback: every acknowledged one is kept, and
 *   verify passes; another group, suspended at the old source, keeps tracking across the turn.
 * - bad input: a group of a set without --set, the old source down, malformed step bodies, a
 *   failback with nothing taken over: clear errors, nothing changes.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { apiCall } from '../../src/node/api.js';
import { apiOf, groupStatus, metricValue, waitFor } from '../../src/testing/cluster.js';
import { runCli, startNodeProcess } from '../../src/testing/proc.js';
import { mulberry32 } from '../../src/testing/random.js';
import { pairedSites, qemuIo, waitState } from '../../src/testing/sites.js';
import { nbdWriter } from '../../src/testing/nbd-writer.js';

const root = mkdtempSync(join(tmpdir(), 'rc-failback-'));
after(() => rmSync(root, { recursive: true, force: true }));

const cli = runCli;
const CHUNK = 64 * 1024;
const VOLUME = 32 * 1024 * 1024;

/** `n` distinct 4 KiB-aligned offsets of the volume, seeded. */
function offsets(seed: number, n: number): number[] {
  const rnd = mulberry32(seed);
  return [...new Set(Array.from({ length: n }, () => Math.floor(rnd() * (VOLUME / 4096)) * 4096))];
}

const chunksOf = (offs: readonly number[]): Set<number> => new Set(offs.map((o) => Math.floor(o / CHUNK)));

test('takeover, writes at both sides, failback (cut short once), planned takeover back, failback again', async () => {
  const sites = await pairedSites(
    root,
    'cycle-',
    { a: { volumes: { d: '32MiB' } }, b: { volumes: { d: '32MiB' } } },
    { gd: ['a', 'b', 'd', 'resyncRate: 1MiB'] },
  );
  const { topo, pa, pb } = sites;
  let { A, B } = sites;
  const uriA = `nbd://127.0.0.1:${pa.nbd}/d`;
  const uriB = `nbd://127.0.0.1:${pb.nbd}/d`;
  const apiA = apiOf(pa.api);
  const apiB = apiOf(pb.api);
  try {
    await qemuIo(uriA, ['write -P 0x11 0 1M']);
    await waitFor('b applied the first writes', async () => {
      const g = await groupStatus(apiA, topo.secret, 'gd');
      return g.seqApplied === g.seqWritten ? true : undefined;
    });
    // The link goes (b is down): a writes X, which b never gets; then a is lost (kill -9).
    await B.stop();
    const X = offsets(1, 48);
    await qemuIo(
      uriA,
      X.map((o) => `write -P 0x22 ${o} 4k`),
    );
    await A.kill9();
    B = await startNodeProcess(topo.file, 'b');
    const t = await cli('takeover', '--config', topo.file, '--group', 'gd');
    assert.equal(t.code, 0, t.out);
    assert.doesNotMatch(t.out, /planned/, 'a is down: an unplanned takeover');
    // b, the new source, writes Y.
    const Y = offsets(2, 48);
    await qemuIo(
      uriB,
      Y.map((o) => `write -P 0x33 ${o} 4k`),
    );
    const union = new Set([...chunksOf(X), ...chunksOf(Y)]);
    assert.equal((await groupStatus(apiB, topo.secret, 'gd')).dirtyBytes, chunksOf(Y).size * CHUNK);

    // a comes back: it learns the higher epoch and is fenced; its volume is read-only.
    A = await startNodeProcess(topo.file, 'a');
    await waitState(apiA, topo.secret, 'gd', 'fenced');
    await assert.rejects(qemuIo(uriA, ['write 0 4k']), 'a fenced source refuses writes');

    // A failback cut short after its first two steps, and a kill -9 of a in between.
    const st = (await groupStatus(apiB, topo.secret, 'gd')) as unknown as {
      epoch: number;
      takeoverSeq: number;
    };
    const demoted = (await apiCall(apiA, topo.secret, 'POST', '/v1/failback/demote', {
      groups: ['gd'],
      epoch: st.epoch,
      takeoverSeqs: { gd: st.takeoverSeq },
    })) as { groups: { dirtyBytes: number; lastSeq: number }[] };
    assert.equal(
      demoted.groups[0]!.dirtyBytes,
      chunksOf(X).size * CHUNK,
      'a hands over exactly the chunks b never got',
    );
    await apiCall(apiA, topo.secret, 'POST', '/v1/failback/accept', {
      groups: ['gd'],
      epoch: st.epoch,
      source: 'b',
      bases: { gd: demoted.groups[0]!.lastSeq + 5 },
    });
    await A.kill9();
    A = await startNodeProcess(topo.file, 'a');
    assert.equal(
      (await groupStatus(apiA, topo.secret, 'gd')).role,
      'target',
      'a stays the target of b after kill -9',
    );

    const resyncBefore =
      (await metricValue(apiB, topo.secret, 'remcopy_resync_bytes_total{group="gd"}')) ?? 0;
    const f = await cli('failback', '--config', topo.file, '--group', 'gd');
    assert.equal(f.code, 0, f.out);
    assert.match(
      f.out,
      new RegExp(
        `failback gd: b is the source, a its target \\(epoch 2\\); resync of ${union.size * CHUNK} bytes`,
      ),
    );
    // While the union is copied (1 MiB/s), a's image is half-synced: reads are refused.
    const half = await waitState(apiA, topo.secret, 'gd', 'resync');
    assert.equal(half.role, 'target');
    const refused = await qemuIo(uriA, ['read 0 4k'], true).catch(
      (e: { stdout?: string; stderr?: string }) => `${e.stdout ?? ''}${e.stderr ?? ''}`,
    );
    assert.match(refused, /read failed|Input\/output error/i, 'a half-synced image is not exposed');
    // b dies in the middle of the resync: after its restart the resync goes on from its bitmap.
    await B.kill9();
    B = await startNodeProcess(topo.file, 'b');
    assert.equal((await groupStatus(apiB, topo.secret, 'gd')).state, 'resync');
    await waitState(apiB, topo.secret, 'gd', 'pair', 90_000);
    await waitState(apiA, topo.secret, 'gd', 'pair');
    const resynced =
      ((await metricValue(apiB, topo.secret, 'remcopy_resync_bytes_total{group="gd"}')) ?? 0) - resyncBefore;
    assert.ok(
      resynced > 0 && resynced <= union.size * CHUNK,
      `resynced ${resynced} bytes, union of dirty chunks ${union.size * CHUNK}`,
    );
    const v1 = await cli('verify', '--config', topo.file, '--group', 'gd');
    assert.equal(v1.code, 0, v1.out);
    assert.match(v1.out, /b:d -> a:d/);
    // b's writes are on a; a's X writes, never replicated before the takeover, are gone from a too.
    assert.doesNotMatch(
      await qemuIo(
        uriA,
        Y.slice(0, 16).map((o) => `read -P 0x33 ${o} 4k`),
        true,
      ),
      /failed/,
    );
    const again = await cli('failback', '--config', topo.file, '--group', 'gd');
    assert.equal(again.code, 0, again.out);
    assert.match(again.out, /nothing to do; b is the source, a its target/);

    // b writes on (replicated), then a planned takeover back at a: nothing b acknowledged is lost.
    const W = offsets(3, 32);
    await qemuIo(
      uriB,
      W.map((o) => `write -P 0x44 ${o} 4k`),
    );
    const back = await cli('takeover', '--config', topo.file, '--group', 'gd');
    assert.equal(back.code, 0, back.out);
    assert.match(back.out, /takeover gd: a is now the source \(epoch 3\).*planned: b is fenced/);
    assert.doesNotMatch(
      await qemuIo(
        uriA,
        W.map((o) => `read -P 0x44 ${o} 4k`),
      ),
      /failed/,
    );
    assert.equal((await groupStatus(apiB, topo.secret, 'gd')).state, 'fenced');
    await assert.rejects(qemuIo(uriB, ['write 0 4k']), 'the old source is fenced at once');

    // a writes Z; failback makes b the target again: only Z's chunks are copied.
    const Z = offsets(4, 16);
    await qemuIo(
      uriA,
      Z.map((o) => `write -P 0x55 ${o} 4k`),
    );
    const f2 = await cli('failback', '--config', topo.file, '--group', 'gd');
    assert.equal(f2.code, 0, f2.out);
    assert.match(
      f2.out,
      new RegExp(
        `failback gd: a is the source, b its target \\(epoch 3\\); resync of ${chunksOf(Z).size * CHUNK} bytes`,
      ),
    );
    await waitState(apiA, topo.secret, 'gd', 'pair', 90_000);
    await waitState(apiB, topo.secret, 'gd', 'pair');
    const v2 = await cli('verify', '--config', topo.file, '--group', 'gd');
    assert.equal(v2.code, 0, v2.out);
    assert.match(v2.out, /a:d -> b:d/);
    // Replication goes on the first way round, across a restart of both.
    await Promise.all([A.stop(), B.stop()]);
    [A, B] = await Promise.all([startNodeProcess(topo.file, 'a'), startNodeProcess(topo.file, 'b')]);
    await qemuIo(uriA, ['write -P 0x66 4M 64k']);
    const v3 = await cli('verify', '--config', topo.file, '--group', 'gd');
    assert.equal(v3.code, 0, v3.out);
    assert.deepEqual(await Promise.all([A.stop(), B.stop()]), [0, 0], 'neither node crashed');
  } finally {
    await Promise.all([A.stop(), B.stop()]);
  }
});

test('failback refuses what it cannot do, with the reason, and changes nothing', async () => {
  const { topo, pa, pb, A, B } = await pairedSites(
    root,
    'refuse-',
    { a: { volumes: { d: '8MiB', l: '8MiB' } }, b: { volumes: { d: '8MiB', l: '8MiB' } } },
    { gd: ['a', 'b', 'd'], gl: ['a', 'b', 'l'] },
    { bank: ['gd', 'gl'] },
  );
  let a = A;
  try {
    const nothing = await cli('failback', '--config', topo.file, '--set', 'bank');
    assert.equal(nothing.code, 0, nothing.out);
    assert.match(nothing.out, /nothing to do; a is the source, b its target/);
    const one = await cli('failback', '--config', topo.file, '--group', 'gd');
    assert.notEqual(one.code, 0);
    assert.match(one.out, /gd is in consistency set bank.*use --set bank/);
    // Bad step bodies: 400, nothing changes.
    for (const [step, body] of [
      ['demote', { groups: ['gd'], epoch: 0, takeoverSeqs: {} }],
      ['demote', { groups: [], epoch: 2, takeoverSeqs: {} }],
      ['accept', { groups: ['gd'], epoch: 2, source: 'b' }],
      ['promote', { groups: ['gd'], bases: { gd: 1 }, peer: { gd: { chunkBytes: 'x', bitmaps: {} } } }],
      ['rewind', { groups: ['gd'] }],
    ] as const) {
      await assert.rejects(
        apiCall(apiOf(pb.api), topo.secret, 'POST', `/v1/failback/${step}`, body),
        /HTTP 400/,
      );
    }
    // A step on the wrong node, or of half a set: 409.
    await assert.rejects(
      apiCall(apiOf(pb.api), topo.secret, 'POST', '/v1/failback/demote', {
        groups: ['gd', 'gl'],
        epoch: 2,
        takeoverSeqs: { gd: 0, gl: 0 },
      }),
      /HTTP 409.*not the source of gd/,
    );
    await assert.rejects(
      apiCall(apiOf(pa.api), topo.secret, 'POST', '/v1/failback/demote', {
        groups: ['gd'],
        epoch: 2,
        takeoverSeqs: { gd: 0 },
      }),
      /HTTP 409.*fail back the whole set/,
    );
    await assert.rejects(
      apiCall(apiOf(pb.api), topo.secret, 'POST', '/v1/failback/promote', {
        groups: ['gd', 'gl'],
        bases: { gd: 1, gl: 1 },
        peer: {},
      }),
      /HTTP 409.*not taken over at b/,
    );
    assert.equal((await groupStatus(apiOf(pa.api), topo.secret, 'gd')).state, 'pair');
    // Takeover with a down: failback needs it back.
    await a.stop();
    const t = await cli('takeover', '--config', topo.file, '--set', 'bank');
    assert.equal(t.code, 0, t.out);
    const down = await cli('failback', '--config', topo.file, '--set', 'bank');
    assert.notEqual(down.code, 0);
    assert.match(down.out, /failback needs both nodes: .*a \(127/);
    a = await startNodeProcess(topo.file, 'a');
    const ok = await cli('failback', '--config', topo.file, '--set', 'bank');
    assert.equal(ok.code, 0, ok.out);
    for (const g of ['gd', 'gl']) {
      await waitState(apiOf(pb.api), topo.secret, g, 'pair');
      await waitState(apiOf(pa.api), topo.secret, g, 'pair');
      const v = await cli('verify', '--config', topo.file, '--group', g);
      assert.equal(v.code, 0, v.out);
    }
    assert.deepEqual(await Promise.all([a.stop(), B.stop()]), [0, 0], 'neither node crashed');
  } finally {
    await Promise.all([a.stop(), B.stop()]);
  }
});

test('host writes go on at the new source while the failback turns it around; nothing is lost', async () => {
  const sites = await pairedSites(
    root,
    'busy-',
    { a: { volumes: { d: '16MiB', o: '8MiB' } }, b: { volumes: { d: '16MiB', o: '8MiB' } } },
    { gd: ['a', 'b', 'd'], go: ['a', 'b', 'o'] },
  );
  const { topo, pa, pb, B } = sites;
  let A = sites.A;
  try {
    // Another group of a, suspended while a turns gd around: its tracking goes on across that.
    assert.equal((await cli('suspend', '--config', topo.file, '--group', 'go')).code, 0);
    await qemuIo(`nbd://127.0.0.1:${pa.nbd}/o`, ['write -P 0x21 0 64k']);
    await A.kill9();
    const t = await cli('takeover', '--config', topo.file, '--group', 'gd');
    assert.equal(t.code, 0, t.out);
    A = await startNodeProcess(topo.file, 'a');
    // One writer at b, each write acknowledged before the next: the last content of every block.
    const writer = await nbdWriter(`nbd://127.0.0.1:${pb.nbd}/d`);
    const last = new Map<number, number>();
    const rnd = mulberry32(77);
    let n = 0;
    let stop = false;
    const writing = (async () => {
      while (!stop) {
        const block = Math.floor(rnd() * 4096);
        n++;
        await writer.write(block * 4096, Buffer.alloc(4096, n % 251));
        last.set(block, n % 251);
      }
    })().then(
      () => undefined,
      (e: unknown) => {
        stop = true;
        return `write ${n} failed: ${String(e)}; b's log: ${B.stderr.slice(-5).join(' | ')}`;
      },
    );
    const f = await cli('failback', '--config', topo.file, '--group', 'gd');
    assert.equal(f.code, 0, f.out);
    await waitState(apiOf(pb.api), topo.secret, 'gd', 'pair');
    const during = n;
    await waitFor('writes after the failback', async () => (n > during + 50 || stop ? true : undefined));
    stop = true;
    assert.equal(await writing, undefined, 'every write at b is acknowledged');
    await writer.close();
    await waitState(apiOf(pa.api), topo.secret, 'gd', 'pair');
    const v = await cli('verify', '--config', topo.file, '--group', 'gd');
    assert.equal(v.code, 0, v.out);
    await qemuIo(`nbd://127.0.0.1:${pa.nbd}/o`, ['write -P 0x22 1M 64k']);
    const go = await groupStatus(apiOf(pa.api), topo.secret, 'go');
    assert.equal(go.state, 'suspended');
    assert.equal(go.dirtyBytes, 2 * CHUNK, 'go tracked its writes before and after a turned gd around');
    const r = await cli('resume', '--config', topo.file, '--group', 'go');
    assert.equal(r.code, 0, r.out);
    await waitState(apiOf(pa.api), topo.secret, 'go', 'pair');
    const vo = await cli('verify', '--config', topo.file, '--group', 'go');
    assert.equal(vo.code, 0, vo.out);
    // Every block holds its last acknowledged write (so, after verify, at a too).
    const sample = [...last].slice(0, 200);
    const out = await qemuIo(
      `nbd://127.0.0.1:${pb.nbd}/d`,
      sample.map(([block, p]) => `read -P ${p} ${block * 4096} 4k`),
    );
    assert.doesNotMatch(out, /failed/, `${n} writes, ${last.size} blocks`);
    assert.deepEqual(await Promise.all([A.stop(), B.stop()]), [0, 0], 'neither node crashed');
  } finally {
    await Promise.all([A.stop(), B.stop()]);
  }
});
