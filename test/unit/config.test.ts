/**
 * Proves that a good config file loads into the normalised Topology the daemon relies on: both
 * shipped examples load; defaults are filled in; sizes and durations are converted; relative paths
 * are resolved against the config file's directory (not the working directory); REMCOPY_SECRET
 * overrides the file's secret; and the topology helpers answer who plays which role.
 * (config-errors.test.ts proves the other half: every bad key is reported by its path.)
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, describe, test } from 'node:test';
import { stringify } from 'yaml';
import { RemcopyError } from '../../src/core/errors.js';
import { nodeIdOf } from '../../src/core/types.js';
import { GiB, MiB } from '../../src/core/units.js';
import {
  ConfigError,
  consistencySetOf,
  groupsOfNode,
  loadConfig,
  nodeOf,
  parseConfig,
  type Topology,
  volumeRole,
} from '../../src/node/config.js';
import { twoSiteConfig } from '../../src/testing/config-fixture.js';

const examples = join(process.cwd(), 'examples');

const base = twoSiteConfig;

function parse(cfg: object, env: NodeJS.ProcessEnv = {}, baseDir = '/srv/remcopy'): Topology {
  return parseConfig(stringify(cfg), baseDir, 'test.yaml', env);
}

describe('examples', () => {
  test('two-site.yaml is the DESIGN.md §5 topology', () => {
    const t = loadConfig(join(examples, 'two-site.yaml'), {});
    assert.equal(t.file, join(examples, 'two-site.yaml'));
    assert.equal(t.secret, 'change-me');
    assert.deepEqual([...t.nodes.keys()], ['siteA', 'siteB']);
    const a = t.nodes.get('siteA')!;
    assert.equal(a.dataDir, join(examples, 'var', 'siteA'));
    assert.deepEqual(a.nbd, { host: '127.0.0.1', port: 10809 });
    assert.deepEqual(a.link, { host: '127.0.0.1', port: 7701 });
    assert.deepEqual(a.api, { host: '127.0.0.1', port: 7801 });
    assert.equal(a.writeTime, 'host-last');
    assert.equal(a.volumes.get('db')!.sizeBytes, 256 * MiB);
    assert.equal(a.volumes.get('log')!.sizeBytes, 64 * MiB);
    assert.deepEqual(t.nodes.get('siteB')!.nbd, { host: '127.0.0.1', port: 10810 });
    assert.deepEqual([...t.groups.keys()], ['g-db', 'g-log']);
    assert.deepEqual([...t.groups.get('g-db')!.pairs], [['db', 'db']]);
    assert.deepEqual(t.consistencySets.get('bank'), ['g-db', 'g-log']);
  });

  test('one-node.yaml has one node, two volumes and no groups', () => {
    const t = loadConfig(join(examples, 'one-node.yaml'), {});
    assert.equal(t.nodes.size, 1);
    const [node] = [...t.nodes.values()];
    assert.equal(node!.volumes.size, 2);
    assert.equal(t.groups.size, 0);
    assert.equal(t.consistencySets.size, 0);
    for (const v of node!.volumes.values()) assert.ok(v.path.startsWith(join(examples, 'var')), v.path);
  });
});

describe('defaults and normalisation', () => {
  test('optional keys get their documented defaults', () => {
    const t = parse(base());
    const a = t.nodes.get('siteA')!;
    assert.equal(a.writeTime, 'host-last');
    assert.equal(a.native, undefined);
    assert.equal(a.tls, undefined);
    assert.deepEqual(a.journal, {
      bytesMax: GiB,
      segmentBytes: 64 * MiB,
      fullPolicy: 'throttle',
      throttleMaxDelayMs: 2000,
    });
    assert.equal(a.activityLogExtents, 16384);
    const g = t.groups.get('g-db')!;
    assert.equal(g.mode, 'async');
    assert.equal(g.transfer, 'push');
    assert.equal(g.tickMs, 100);
    assert.equal(g.bitmapChunkBytes, 64 * 1024);
    assert.equal(g.suspendAfterMs, 60_000);
    assert.equal(g.resyncRateBps, undefined);
  });

  test('groups, consistencySets and volumes may be left out', () => {
    const cfg = base();
    delete cfg.groups;
    delete cfg.consistencySets;
    delete cfg.nodes.siteB.volumes;
    const t = parse(cfg);
    assert.equal(t.groups.size, 0);
    assert.equal(t.consistencySets.size, 0);
    assert.equal(t.nodes.get('siteB')!.volumes.size, 0);
  });

  test('every key given explicitly', () => {
    const cfg = base();
    Object.assign(cfg.nodes.siteA, {
      native: '[::1]:7601',
      writeTime: 'counter',
      journal: { size: '2GiB', segmentSize: '128MiB', full: 'suspend', throttleMaxDelay: '1.5s' },
      activityLog: { extents: 4096 },
      tls: { cert: 'tls/a.crt', key: '/etc/remcopy/a.key', ca: 'tls/ca.crt', required: false },
    });
    cfg.groups['g-db'] = {
      source: 'siteA',
      target: 'siteB',
      mode: 'sync',
      transfer: 'push',
      pairs: { db: 'db' },
      tickMs: '250ms',
      bitmapChunk: '1MiB',
      suspendAfter: '5m',
      resyncRate: '100MiB',
    };
    cfg.groups['g-log'].transfer = 'pull';
    cfg.groups['g-log'].tickMs = 50;
    const t = parse(cfg);
    const a = t.nodes.get('siteA')!;
    assert.deepEqual(a.native, { host: '::1', port: 7601 });
    assert.equal(a.writeTime, 'counter');
    assert.deepEqual(a.journal, {
      bytesMax: 2 * GiB,
      segmentBytes: 128 * MiB,
      fullPolicy: 'suspend',
      throttleMaxDelayMs: 1500,
    });
    assert.equal(a.activityLogExtents, 4096);
    assert.deepEqual(a.tls, {
      certFile: '/srv/remcopy/tls/a.crt',
      keyFile: '/etc/remcopy/a.key',
      caFile: '/srv/remcopy/tls/ca.crt',
      required: false,
    });
    assert.deepEqual(
      { ...t.groups.get('g-db')!, pairs: undefined },
      {
        name: 'g-db',
        source: 'siteA',
        target: 'siteB',
        mode: 'sync',
        transfer: 'push',
        pairs: undefined,
        tickMs: 250,
        bitmapChunkBytes: MiB,
        suspendAfterMs: 300_000,
        resyncRateBps: 100 * MiB,
      },
    );
    assert.equal(t.groups.get('g-log')!.transfer, 'pull');
    assert.equal(t.groups.get('g-log')!.tickMs, 50);
  });

  test('tls.required defaults to true and ca is optional', () => {
    const cfg = base();
    cfg.nodes.siteA.tls = { cert: 'a.crt', key: 'a.key' };
    const tls = parse(cfg).nodes.get('siteA')!.tls!;
    assert.equal(tls.required, true);
    assert.equal(tls.caFile, undefined);
    assert.ok(!('caFile' in tls), 'no caFile key at all');
  });

  test('sizes as integer bytes, IPv6 and host names in addresses', () => {
    const cfg = base();
    cfg.nodes.siteA.volumes = { db: 268435456, log: '64M', tiny: 4096 };
    cfg.nodes.siteA.nbd = '[::1]:10809';
    cfg.nodes.siteA.api = 'localhost:7801';
    const a = parse(cfg).nodes.get('siteA')!;
    assert.equal(a.volumes.get('db')!.sizeBytes, 256 * MiB);
    assert.equal(a.volumes.get('log')!.sizeBytes, 64 * MiB);
    assert.equal(a.volumes.get('tiny')!.sizeBytes, 4096);
    assert.deepEqual(a.nbd, { host: '::1', port: 10809 });
    assert.deepEqual(a.api, { host: 'localhost', port: 7801 });
  });

  test('YAML anchors and merge keys work', () => {
    const text = [
      'secret: file-secret',
      'nodes:',
      '  a: &a { dataDir: ./a, nbd: "h:1", link: "h:2", api: "h:3", volumes: { db: 4KiB } }',
      '  b: { <<: *a, dataDir: ./b, nbd: "h:4", link: "h:5", api: "h:6" }',
    ].join('\n');
    const t = parseConfig(text, '/srv', 'test.yaml', {});
    assert.equal(t.nodes.get('b')!.volumes.get('db')!.path, '/srv/b/volumes/db.img');
  });

  test('node ids are nodeIdOf(name)', () => {
    const t = parse(base());
    for (const n of t.nodes.values()) assert.equal(n.nodeId, nodeIdOf(n.name));
  });

  test('maps keep file order', () => {
    const cfg = base();
    cfg.nodes.siteA.volumes = { zeta: '4KiB', alpha: '4KiB', mid: '4KiB' };
    cfg.groups = {};
    cfg.consistencySets = {};
    assert.deepEqual([...parse(cfg).nodes.get('siteA')!.volumes.keys()], ['zeta', 'alpha', 'mid']);
  });
});

describe('paths', () => {
  const dir = mkdtempSync(join(tmpdir(), 'remcopy-config-test-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  test('relative paths resolve against the config file, not the working directory', () => {
    mkdirSync(join(dir, 'etc'), { recursive: true });
    const cfg = base();
    cfg.nodes.siteA.volumes = { db: '256MiB', log: { size: '64MiB', file: '../disks/log.img' } };
    cfg.nodes.siteB.dataDir = '/abs/siteB';
    cfg.nodes.siteA.tls = { cert: 'a.crt', key: 'keys/a.key' };
    writeFileSync(join(dir, 'etc', 'remcopy.yaml'), stringify(cfg));
    const cwd = process.cwd();
    assert.notEqual(resolve(cwd), resolve(dir, 'etc'));
    const t = loadConfig(join(dir, 'etc', 'remcopy.yaml'), {});
    const a = t.nodes.get('siteA')!;
    assert.equal(a.dataDir, join(dir, 'etc', 'var', 'siteA'));
    assert.equal(a.volumes.get('db')!.path, join(dir, 'etc', 'var', 'siteA', 'volumes', 'db.img'));
    assert.equal(a.volumes.get('log')!.path, join(dir, 'disks', 'log.img'));
    assert.equal(a.tls!.certFile, join(dir, 'etc', 'a.crt'));
    assert.equal(a.tls!.keyFile, join(dir, 'etc', 'keys', 'a.key'));
    assert.equal(t.nodes.get('siteB')!.dataDir, '/abs/siteB');
    assert.equal(t.nodes.get('siteB')!.volumes.get('db')!.path, '/abs/siteB/volumes/db.img');
    assert.equal(t.baseDir, join(dir, 'etc'));
  });

  test('parseConfig resolves against the baseDir it is given, made absolute', () => {
    const t = parse(base(), {}, 'conf');
    assert.equal(t.baseDir, resolve('conf'));
    assert.equal(t.nodes.get('siteA')!.dataDir, resolve('conf', 'var', 'siteA'));
    assert.equal(t.file, 'test.yaml');
  });

  test('a missing file is a ConfigError naming it', () => {
    const missing = join(dir, 'nope.yaml');
    assert.throws(
      () => loadConfig(missing, {}),
      (e: unknown) =>
        e instanceof ConfigError && e.message === `${missing}: cannot read the config file: no such file`,
    );
  });
});

describe('secret', () => {
  test('the file secret is used when REMCOPY_SECRET is unset or empty', () => {
    assert.equal(parse(base(), {}).secret, 'file-secret');
    assert.equal(parse(base(), { REMCOPY_SECRET: '' }).secret, 'file-secret');
  });

  test('REMCOPY_SECRET overrides the file', () => {
    assert.equal(parse(base(), { REMCOPY_SECRET: 'from-the-env' }).secret, 'from-the-env');
  });

  test('REMCOPY_SECRET alone is enough, and a short file secret does not matter then', () => {
    const cfg = base();
    delete cfg.secret;
    assert.equal(parse(cfg, { REMCOPY_SECRET: 'from-the-env' }).secret, 'from-the-env');
    cfg.secret = 'short';
    assert.equal(parse(cfg, { REMCOPY_SECRET: 'from-the-env' }).secret, 'from-the-env');
  });

  test('the default env is process.env', () => {
    const saved = process.env['REMCOPY_SECRET'];
    process.env['REMCOPY_SECRET'] = 'process-env-secret';
    try {
      assert.equal(parseConfig(stringify(base()), '/srv', 'test.yaml').secret, 'process-env-secret');
    } finally {
      if (saved === undefined) delete process.env['REMCOPY_SECRET'];
      else process.env['REMCOPY_SECRET'] = saved;
    }
  });
});

describe('helpers', () => {
  function cascade(): Topology {
    const cfg = base();
    cfg.nodes.siteC = {
      dataDir: './var/siteC',
      nbd: '127.0.0.1:10811',
      link: '127.0.0.1:7703',
      api: '127.0.0.1:7803',
      volumes: { db2: '256MiB' },
    };
    cfg.nodes.siteB.volumes.extra = '256MiB';
    cfg.groups['g-c'] = { source: 'siteB', target: 'siteC', pairs: { extra: 'db2' } };
    return parse(cfg);
  }

  test('groupsOfNode splits groups by side', () => {
    const t = cascade();
    const names = (gs: { name: string }[]): string[] => gs.map((g) => g.name);
    assert.deepEqual(names(groupsOfNode(t, 'siteA').asSource), ['g-db', 'g-log']);
    assert.deepEqual(names(groupsOfNode(t, 'siteA').asTarget), []);
    assert.deepEqual(names(groupsOfNode(t, 'siteB').asSource), ['g-c']);
    assert.deepEqual(names(groupsOfNode(t, 'siteB').asTarget), ['g-db', 'g-log']);
    assert.deepEqual(groupsOfNode(t, 'nobody'), { asSource: [], asTarget: [] });
  });

  test('volumeRole names the group and side of a volume', () => {
    const t = cascade();
    assert.deepEqual(volumeRole(t, 'siteA', 'db'), { group: 'g-db', role: 'source' });
    assert.deepEqual(volumeRole(t, 'siteB', 'db'), { group: 'g-db', role: 'target' });
    assert.deepEqual(volumeRole(t, 'siteB', 'extra'), { group: 'g-c', role: 'source' });
    assert.deepEqual(volumeRole(t, 'siteC', 'db2'), { group: 'g-c', role: 'target' });
    assert.deepEqual(volumeRole(t, 'siteC', 'db'), { role: 'none' });
    assert.deepEqual(volumeRole(t, 'nobody', 'db'), { role: 'none' });
  });

  test('consistencySetOf and nodeOf', () => {
    const t = cascade();
    assert.equal(consistencySetOf(t, 'g-db'), 'bank');
    assert.equal(consistencySetOf(t, 'g-c'), undefined);
    assert.equal(nodeOf(t, 'siteC').name, 'siteC');
    assert.throws(
      () => nodeOf(t, 'siteD'),
      (e: unknown) =>
        e instanceof RemcopyError &&
        e.code === 'RC_ERR_UNKNOWN_NODE' &&
        /siteA, siteB, siteC/.test(e.message),
    );
  });
});
