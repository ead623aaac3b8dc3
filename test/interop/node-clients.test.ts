/**
 * End-to-end with real processes and real clients against a journalled node (`remcopy node`):
 * nbdcopy a file in (multi-conn), qemu-img compare; fio randwrite with crc32c verify; qemu-io FUA,
 * zero and discard; every write lands in the journal (records and seq grow); after a clean stop
 * (exit 0) and restart the volume still compares equal; a target volume is exported read-only;
 * a second node on the same data directory is refused. Complements the NBD-layer interop tests,
 * which run the server in-process over memory.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import { apiCall } from '../../src/node/api.js';
import { apiOf, copyJournalled } from '../../src/testing/cluster.js';
import {
  type NodeProcess,
  startNodeProcess,
  type TestTopology,
  writeTopology,
} from '../../src/testing/proc.js';

const run = promisify(execFile);
const dir = mkdtempSync(join(tmpdir(), 'rc-node-interop-'));
let topo: TestTopology;
let node: NodeProcess;
let uri: string;

interface Status {
  groups: { name: string; role: string; epoch: number; seqWritten: number }[];
  journal: { records: number; usedBytes: number };
  volumes: { name: string; role: string; readOnly: boolean }[];
  eventLoopDelayMs?: { p50: number; p99: number; max: number };
}
const status = async (): Promise<Status> =>
  (await apiCall(
    { host: '127.0.0.1', port: topo.ports.get('a')!.api },
    topo.secret,
    'GET',
    '/v1/status',
  )) as Status;

before(async () => {
  topo = await writeTopology(
    dir,
    {
      a: { volumes: { vol: '32MiB', plain: '8MiB', back: '8MiB' } },
      b: { volumes: { vol: '32MiB', back: '8MiB' } },
    },
    { g: ['a', 'b', 'vol'], gback: ['b', 'a', 'back'] },
  );
  node = await startNodeProcess(topo.file, 'a');
  uri = `nbd://127.0.0.1:${topo.ports.get('a')!.nbd}`;
});
after(async () => {
  await node?.stop();
  rmSync(dir, { recursive: true, force: true });
});

test('nbdcopy in, qemu-img compare equal; every write is journalled', async () => {
  const src = join(dir, 'src.img');
  const data = Buffer.alloc(32 * 1024 * 1024);
  for (let i = 0; i < data.length; i += 4096)
    if ((i / 4096) % 3 !== 0) data.fill((i / 4096) & 0xff, i, i + 4096);
  writeFileSync(src, data);
  const before = await status();
  await run('nbdcopy', [src, `${uri}/vol`]);
  await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, `${uri}/vol`]);
  const after = await status();
  const g = (s: Status) => s.groups.find((x) => x.name === 'g')!.seqWritten;
  assert.ok(g(after) > g(before), 'nbdcopy writes took sequence numbers');
  assert.ok(after.journal.records > before.journal.records, 'and are journal records');
  // Status reports how late the node's event loop ran (sampled every 1 ms since start).
  const d = after.eventLoopDelayMs;
  assert.ok(d !== undefined, 'status has eventLoopDelayMs');
  assert.ok(d.p50 > 0 && d.p50 <= d.p99 && d.p99 <= d.max, `ordered percentiles: ${JSON.stringify(d)}`);
});

test('fio randwrite with crc32c verification', async () => {
  const { stdout } = await run('fio', [
    '--name=v',
    '--ioengine=nbd',
    `--uri=${uri}/vol`,
    '--rw=randwrite',
    '--bs=4k',
    '--iodepth=16',
    '--size=8M',
    '--verify=crc32c',
    '--do_verify=1',
    '--output-format=json',
  ]);
  const job = JSON.parse(stdout.slice(stdout.indexOf('{'))).jobs[0];
  assert.equal(job.error, 0, 'fio reports no error (verification passed)');
  assert.ok(job.write.total_ios >= 2048, `wrote ${job.write.total_ios} blocks`);
});

test('qemu-io FUA, zeroes, discard; state survives a clean stop and restart', async () => {
  const io = (cmds: string[]) =>
    run('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), `${uri}/vol`]);
  await io([
    'write -f -P 0x5a 0 128k',
    'write -z 128k 64k',
    'discard 192k 64k',
    'aio_write -P 0x6b 1M 64k',
    'aio_flush',
  ]);
  assert.equal(await node.stop(), 0, 'clean stop exits 0');
  node = await startNodeProcess(topo.file, 'a');
  const { stdout } = await io(['read -P 0x5a 0 128k', 'read -P 0 128k 128k', 'read -P 0x6b 1M 64k']);
  assert.doesNotMatch(stdout, /Pattern verification failed/);
  assert.match(stdout, /read 65536\/65536 bytes at offset 1048576/);
});

test('a target volume is exported read-only, a volume in no group read-write', async () => {
  const { stdout } = await run('nbdinfo', ['--json', '--list', uri]);
  const exports = JSON.parse(stdout).exports as { 'export-name': string; is_read_only: boolean }[];
  const ro = new Map(exports.map((e) => [e['export-name'], e.is_read_only]));
  assert.equal(ro.get('vol'), false);
  assert.equal(ro.get('plain'), false);
  assert.equal(ro.get('back'), true, 'target of group gback');
  await assert.rejects(run('qemu-io', ['-f', 'raw', '-c', 'write 0 4k', `${uri}/back`]));
});

test('a second node on the same data directory is refused with a clear message', async () => {
  await assert.rejects(startNodeProcess(topo.file, 'a', 5000), /is in use by process/);
});

test('bad management API input gets a 4xx, changes nothing, and the node keeps serving', async () => {
  const port = topo.ports.get('a')!.api;
  const post = (path: string, body: string, auth = `Bearer ${topo.secret}`) =>
    fetch(`http://127.0.0.1:${port}${path}`, {
      method: 'POST',
      headers: { authorization: auth, 'content-type': 'application/json' },
      body,
    });
  await copyJournalled(apiOf(port), topo.secret, 'g');
  const before = await status();
  assert.equal((await post('/v1/groups/g/hold', '{not json')).status, 400);
  assert.equal((await post('/v1/groups/g/hold', '[]')).status, 400, 'a body must be an object');
  assert.equal((await post('/v1/groups/g/hold', '{"ms": -3}')).status, 400);
  assert.equal((await post('/v1/groups/g/hold', '{"ms": 1e15}')).status, 400, 'past the longest hold');
  assert.equal((await post('/v1/groups/nope/hold', '{"ms": 1}')).status, 404);
  assert.equal((await post('/v1/groups/gback/hold', '{"ms": 1}')).status, 409, 'not a source group here');
  assert.equal((await post('/v1/groups/g/takeover', '{"force": "yes"}')).status, 400);
  assert.equal((await post('/v1/groups/g/takeover', '{}')).status, 409, 'not the target of g');
  assert.equal((await post('/v1/sets/nope/takeover', '{}')).status, 404);
  assert.equal((await post('/v1/sets/g/read', '{"reads": []}')).status, 400);
  assert.equal(
    (await post('/v1/sets/g/read', '{"reads": [{"volume": "vol", "offset": 0, "length": 1}]}')).status,
    409,
  );
  assert.equal((await post('/v1/nowhere', '{}')).status, 404);
  assert.equal((await post('/v1/groups/g/hold', 'x'.repeat(100_000))).status, 413);
  assert.equal((await post('/v1/groups/g/hold', '{"ms": 1}', 'Bearer wrong')).status, 401);
  const after = await status();
  const fixed = (st: Status) => st.groups.map((g) => [g.name, g.role, g.epoch, g.seqWritten]);
  assert.deepEqual(fixed(after), fixed(before));
  assert.equal(after.journal.records, before.journal.records, 'nothing changed in the journal');
});
