/**
 * Suspension, dirty bitmaps and delta resync with real node processes (issue 4 "Show"):
 * - suspend; 1 MiB of 4 KiB writes at random places; kill -9 of the suspended source and a restart
 *   (the bits and the tracked writes survive, and the redo does not put older journalled data over
 *   them); resume: the resync copies at most the dirty chunks (`remcopy_resync_bytes_total`), the
 *   target refuses reads and takeover while it is half-synced, then `remcopy verify` passes.
 * - a link down longer than `suspendAfter` suspends the pair by itself, with the reason in status.
 * - a full journal under policy `suspend` suspends the pair instead of failing host writes.
 * - the lag status reports is never below the truth (TESTING.md): it counts writes tracked while
 *   suspended, through a kill -9 and the resync, and records retained across a kill -9 of the
 *   source from before it.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, test } from 'node:test';
import { apiCall } from '../../src/node/api.js';
import type { Api } from '../../src/testing/cluster.js';
import { apiOf, groupStatus, metricValue, waitFor } from '../../src/testing/cluster.js';
import type { TestTopology } from '../../src/testing/proc.js';
import { runCli, startNodeProcess } from '../../src/testing/proc.js';
import { mulberry32 } from '../../src/testing/random.js';
import { pairedSites, qemuIo, waitState } from '../../src/testing/sites.js';

const root = mkdtempSync(join(tmpdir(), 'rc-delta-'));
after(() => rmSync(root, { recursive: true, force: true }));

const cli = runCli;

const CHUNK = 64 * 1024;
const VOLUME = 64 * 1024 * 1024;

/** Once the link is up, `remcopy resume`, wait for `pair` again, and `remcopy verify` passes. */
async function resumeAndVerify(topo: TestTopology, api: Api, group: string): Promise<void> {
  await waitFor('the link up again', async () =>
    (await groupStatus(api, topo.secret, group)).linkUp ? true : undefined,
  );
  const r = await cli('resume', '--config', topo.file, '--group', group);
  assert.equal(r.code, 0, r.out);
  await waitState(api, topo.secret, group, 'pair', 90_000);
  const v = await cli('verify', '--config', topo.file, '--group', group);
  assert.equal(v.code, 0, v.out);
}

test('suspend, writes tracked across a kill -9, resume resyncs only the dirty chunks; verify passes', async () => {
  const sites = await pairedSites(
    root,
    'suspend-',
    { a: { volumes: { d: '64MiB' } }, b: { volumes: { d: '64MiB' } } },
    { gd: ['a', 'b', 'd', 'resyncRate: 4MiB'] },
  );
  const { topo, pa, pb, B } = sites;
  let A = sites.A;
  const srcUri = `nbd://127.0.0.1:${pa.nbd}/d`;
  try {
    // 1 MiB as 256 writes of 4 KiB at random 4 KiB-aligned places; first as pattern 0x11, journalled
    // and retained (records are released a second after the target's ACK), then again as 0x22
    // while suspended: a redo of the retained records after the kill would put 0x11 back.
    const rnd = mulberry32(4242);
    const offsets = [
      ...new Set(Array.from({ length: 256 }, () => Math.floor(rnd() * (VOLUME / 4096)) * 4096)),
    ];
    const chunks = new Set(offsets.map((o) => Math.floor(o / CHUNK)));
    const dirtyMax = chunks.size * CHUNK;
    await qemuIo(
      srcUri,
      offsets.map((o) => `write -P 0x11 ${o} 4k`),
    );
    const before = await groupStatus(apiOf(pa.api), topo.secret, 'gd');

    const s = await cli('suspend', '--config', topo.file, '--group', 'gd');
    assert.equal(s.code, 0, s.out);
    assert.match(s.out, /suspend gd: suspended/);
    await waitState(apiOf(pb.api), topo.secret, 'gd', 'suspended');
    await qemuIo(
      srcUri,
      offsets.map((o) => `write -P 0x22 ${o} 4k`),
    );
    // Every tracked write was acknowledged by now: from here on the target has lacked them for at
    // least the time since (TESTING.md: reported lag is never less than the true lag).
    const trackedAckedBy = Date.now();
    const lagAtLeast = async (what: string): Promise<void> => {
      const floorMs = Date.now() - trackedAckedBy;
      const st = await groupStatus(apiOf(pa.api), topo.secret, 'gd');
      assert.ok(
        st.lagMs >= floorMs,
        `${what}: lag ${st.lagMs} ms reported, the target lacks writes ${floorMs} ms old`,
      );
      assert.ok(
        st.lagBytes >= (st.dirtyBytes ?? 0),
        `${what}: lag ${st.lagBytes} bytes, ${st.dirtyBytes} dirty`,
      );
    };
    await sleep(1500);
    await lagAtLeast('suspended');
    const suspended = await groupStatus(apiOf(pa.api), topo.secret, 'gd');
    assert.equal(suspended.state, 'suspended');
    assert.equal(suspended.reason, 'operator');
    assert.equal(suspended.seqWritten, before.seqWritten, 'writes of a suspended group take no seq');
    assert.equal(suspended.dirtyBytes, dirtyMax, 'one dirty bit per chunk written');
    assert.equal(await metricValue(apiOf(pa.api), topo.secret, 'remcopy_pair_suspended{group="gd"}'), 1);
    // A second suspend is harmless and says so.
    assert.match((await cli('suspend', '--config', topo.file, '--group', 'gd')).out, /suspended already/);

    await A.kill9();
    A = await startNodeProcess(topo.file, 'a');
    const restarted = await groupStatus(apiOf(pa.api), topo.secret, 'gd');
    assert.equal(restarted.state, 'suspended', 'the suspension survives a kill -9');
    await lagAtLeast('restarted');
    assert.equal(restarted.dirtyBytes, dirtyMax, 'the dirty bits survive a kill -9');
    const readBack = await qemuIo(
      srcUri,
      offsets.slice(0, 32).map((o) => `read -P 0x22 ${o} 4k`),
    );
    assert.doesNotMatch(readBack, /Pattern verification failed|failed/, 'tracked writes survive the restart');
    // More tracked writes after the restart land in chunks already dirty.
    await qemuIo(
      srcUri,
      offsets.slice(0, 8).map((o) => `write -P 0x33 ${o} 4k`),
    );

    const resyncBefore =
      (await metricValue(apiOf(pa.api), topo.secret, 'remcopy_resync_bytes_total{group="gd"}')) ?? 0;
    const r = await cli('resume', '--config', topo.file, '--group', 'gd');
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, new RegExp(`resync of ${dirtyMax} dirty bytes started`));

    // While half-synced (4 MiB/s against ~16 MiB dirty), the target's image is not exposed.
    const half = await waitState(apiOf(pb.api), topo.secret, 'gd', 'resync');
    assert.equal(half.role, 'target');
    const tgtRead = await qemuIo(`nbd://127.0.0.1:${pb.nbd}/d`, ['read 0 4k'], true).catch(
      (e: { stdout?: string; stderr?: string }) => `${e.stdout ?? ''}${e.stderr ?? ''}`,
    );
    assert.match(tgtRead, /read failed|Input\/output error/i, 'a half-synced target volume refuses reads');
    const tk = await cli('takeover', '--config', topo.file, '--group', 'gd');
    assert.notEqual(tk.code, 0);
    assert.match(tk.out, /resync is running/);
    const progress = await groupStatus(apiOf(pa.api), topo.secret, 'gd');
    assert.equal(progress.state, 'resync');
    await lagAtLeast('resync');
    assert.ok(progress.resync && progress.resync.bytesTotal === dirtyMax, JSON.stringify(progress.resync));

    await waitState(apiOf(pa.api), topo.secret, 'gd', 'pair', 60_000);
    await waitState(apiOf(pb.api), topo.secret, 'gd', 'pair');
    const resynced =
      ((await metricValue(apiOf(pa.api), topo.secret, 'remcopy_resync_bytes_total{group="gd"}')) ?? 0) -
      resyncBefore;
    assert.ok(resynced > 0 && resynced <= dirtyMax, `resynced ${resynced} bytes, dirty chunks ${dirtyMax}`);

    const v = await cli('verify', '--config', topo.file, '--group', 'gd');
    assert.equal(v.code, 0, v.out);
    const tgtCheck = await qemuIo(
      `nbd://127.0.0.1:${pb.nbd}/d`,
      [
        ...offsets.slice(0, 8).map((o) => `read -P 0x33 ${o} 4k`),
        ...offsets.slice(8, 40).map((o) => `read -P 0x22 ${o} 4k`),
      ],
      true,
    );
    assert.doesNotMatch(tgtCheck, /Pattern verification failed|failed/);
    await waitFor('the dirty bits to be cleared', async () =>
      (await groupStatus(apiOf(pa.api), topo.secret, 'gd')).dirtyBytes === 0 ? true : undefined,
    );
    // Back in pair with everything applied (verify waited for it): the tracked writes no longer count.
    const caughtUp = await groupStatus(apiOf(pa.api), topo.secret, 'gd');
    assert.equal(caughtUp.state, 'pair');
    assert.deepEqual(
      [caughtUp.lagRecords, caughtUp.lagBytes, caughtUp.lagMs],
      [0, 0, 0],
      JSON.stringify(caughtUp),
    );
  } finally {
    await Promise.all([A.stop(), B.stop()]);
  }
});

test('a link down longer than suspendAfter suspends the pair; after resume the copy is whole', async () => {
  const sites = await pairedSites(
    root,
    'linkdown-',
    { a: { volumes: { d: '16MiB' } }, b: { volumes: { d: '16MiB' } } },
    { gd: ['a', 'b', 'd', 'suspendAfter: 1s'] },
  );
  const { topo, pa, A } = sites;
  let B = sites.B;
  const srcUri = `nbd://127.0.0.1:${pa.nbd}/d`;
  try {
    await B.kill9();
    const g = await waitState(apiOf(pa.api), topo.secret, 'gd', 'suspended', 15_000);
    assert.match(g.reason ?? '', /link to b down/);
    await qemuIo(srcUri, ['write -P 0x44 1M 3M', 'write -z 8M 64k']);
    const refused = await cli('resume', '--config', topo.file, '--group', 'gd');
    assert.notEqual(refused.code, 0, 'resume with the link down is refused');
    assert.match(refused.out, /link to b is down/);
    B = await startNodeProcess(topo.file, 'b');
    await resumeAndVerify(topo, apiOf(pa.api), 'gd');
  } finally {
    await Promise.all([A.stop(), B.stop()]);
  }
});

test('records retained across a kill -9 of the source count in its lag from before the restart', async () => {
  const sites = await pairedSites(
    root,
    'lagrestart-',
    { a: { volumes: { d: '16MiB' } }, b: { volumes: { d: '16MiB' } } },
    { gd: ['a', 'b', 'd'] },
  );
  const { topo, pa } = sites;
  let { A, B } = sites;
  try {
    await B.stop();
    await qemuIo(`nbd://127.0.0.1:${pa.nbd}/d`, ['write -P 0x61 0 1M']);
    const ackedBy = Date.now();
    await sleep(1000);
    await A.kill9();
    A = await startNodeProcess(topo.file, 'a');
    const floorMs = Date.now() - ackedBy;
    const g = await groupStatus(apiOf(pa.api), topo.secret, 'gd');
    assert.ok(g.lagMs >= floorMs, `lag ${g.lagMs} ms reported, the target lacks writes ${floorMs} ms old`);
    assert.ok(g.lagBytes >= 1024 * 1024, `lag ${g.lagBytes} bytes, 1 MiB not shipped`);
    B = await startNodeProcess(topo.file, 'b');
    await waitFor('the target to apply everything', async () => {
      const s = await groupStatus(apiOf(pa.api), topo.secret, 'gd');
      return s.lagRecords === 0 ? s : undefined;
    });
    const caughtUp = await groupStatus(apiOf(pa.api), topo.secret, 'gd');
    assert.deepEqual([caughtUp.lagBytes, caughtUp.lagMs], [0, 0]);
  } finally {
    await Promise.all([A.stop(), B.stop()]);
  }
});

/**
 * 96 MiB written with the target away, more than the 80 MiB journal holds: no host write fails,
 * the pair is suspended for `reason`, and a resume brings the target level again. Returns how long
 * the slowest of the three writes took.
 */
async function fullJournalSuspends(prefix: string, journal: string, reason: RegExp): Promise<number> {
  const sites = await pairedSites(
    root,
    prefix,
    { a: { volumes: { d: '128MiB' }, journal }, b: { volumes: { d: '128MiB' } } },
    { gd: ['a', 'b', 'd'] },
  );
  const { topo, pa, A } = sites;
  let B = sites.B;
  const srcUri = `nbd://127.0.0.1:${pa.nbd}/d`;
  try {
    await B.stop();
    let slowestMs = 0;
    for (const [i, byte] of ['0x55', '0x56', '0x57'].entries()) {
      const t0 = performance.now();
      const out = await qemuIo(srcUri, [`write -P ${byte} ${32 * i}M 32M`]);
      slowestMs = Math.max(slowestMs, performance.now() - t0);
      assert.doesNotMatch(out, /failed/, 'no host write fails');
    }
    const g = await groupStatus(apiOf(pa.api), topo.secret, 'gd');
    assert.equal(g.state, 'suspended');
    assert.match(g.reason ?? '', reason);
    assert.ok((g.dirtyBytes ?? 0) > 0);
    const st = (await apiCall(apiOf(pa.api), topo.secret, 'GET', '/v1/status')) as {
      writePath: { rejectedJournalFull: number; trackedWrites: number };
    };
    assert.equal(st.writePath.rejectedJournalFull, 0);
    assert.ok(st.writePath.trackedWrites > 0);
    B = await startNodeProcess(topo.file, 'b');
    await resumeAndVerify(topo, apiOf(pa.api), 'gd');
    return slowestMs;
  } finally {
    await Promise.all([A.stop(), B.stop()]);
  }
}

test('a full journal under policy suspend suspends the pair instead of failing writes', async () => {
  await fullJournalSuspends('full-', '{ size: 80MiB, segmentSize: 40MiB, full: suspend }', /^journal full$/);
});

test('a full journal under policy throttle (the default) delays writes, then suspends the pair instead of failing them', async () => {
  const slowestMs = await fullJournalSuspends(
    'throttle-',
    '{ size: 80MiB, segmentSize: 40MiB, throttleMaxDelay: 300ms }',
    /^journal full for 300 ms \(throttleMaxDelay\)$/,
  );
  assert.ok(
    slowestMs >= 300,
    `the write that did not fit waited the bound first (${slowestMs.toFixed(0)} ms)`,
  );
});

test('after a takeover the promoted side tracks its writes in a dirty bitmap that survives kill -9', async () => {
  const sites = await pairedSites(
    root,
    'promoted-',
    { a: { volumes: { d: '16MiB' } }, b: { volumes: { d: '16MiB' } } },
    { gd: ['a', 'b', 'd'] },
  );
  const { topo, pb, A } = sites;
  let B = sites.B;
  try {
    await A.stop();
    const t = await cli('takeover', '--config', topo.file, '--group', 'gd');
    assert.equal(t.code, 0, t.out);
    const tgtUri = `nbd://127.0.0.1:${pb.nbd}/d`;
    // Three chunks: two writes in chunk 0, one across the boundary of chunks 4 and 5.
    await qemuIo(tgtUri, [
      'write -P 0x61 0 4k',
      'write -P 0x62 8k 4k',
      `write -P 0x63 ${5 * CHUNK - 2048} 4k`,
    ]);
    const g = await groupStatus(apiOf(pb.api), topo.secret, 'gd');
    assert.equal(g.role, 'promoted');
    assert.equal(g.dirtyBytes, 3 * CHUNK);
    await B.kill9();
    B = await startNodeProcess(topo.file, 'b');
    assert.equal((await groupStatus(apiOf(pb.api), topo.secret, 'gd')).dirtyBytes, 3 * CHUNK);
    await qemuIo(tgtUri, [`write -P 0x64 ${10 * CHUNK} 4k`]);
    assert.equal((await groupStatus(apiOf(pb.api), topo.secret, 'gd')).dirtyBytes, 4 * CHUNK);
  } finally {
    await B.stop();
  }
});

test('the groups of a consistency set are suspended and resumed together', async () => {
  const { topo, pa, A, B } = await pairedSites(
    root,
    'set-',
    { a: { volumes: { d: '8MiB', l: '8MiB' } }, b: { volumes: { d: '8MiB', l: '8MiB' } } },
    { gd: ['a', 'b', 'd'], gl: ['a', 'b', 'l'] },
    { bank: ['gd', 'gl'] },
  );
  try {
    const s = await cli('suspend', '--config', topo.file, '--group', 'gd');
    assert.equal(s.code, 0, s.out);
    assert.match(s.out, /with gl of its consistency set/);
    const gl = await waitState(apiOf(pa.api), topo.secret, 'gl', 'suspended');
    assert.match(gl.reason ?? '', /with gd, same consistency set/);
    await qemuIo(`nbd://127.0.0.1:${pa.nbd}/d`, ['write -P 0x71 0 1M']);
    await qemuIo(`nbd://127.0.0.1:${pa.nbd}/l`, ['write -P 0x72 4M 64k']);
    assert.equal((await groupStatus(apiOf(pa.api), topo.secret, 'gl')).dirtyBytes, CHUNK);
    const r = await cli('resume', '--config', topo.file, '--group', 'gd');
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, new RegExp(`resync of ${1024 * 1024 + CHUNK} dirty bytes`));
    for (const g of ['gd', 'gl']) {
      await waitState(apiOf(pa.api), topo.secret, g, 'pair');
      const v = await cli('verify', '--config', topo.file, '--group', g);
      assert.equal(v.code, 0, v.out);
    }
  } finally {
    await Promise.all([A.stop(), B.stop()]);
  }
});
