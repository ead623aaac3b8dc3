/**
 * Proves that every kind of bad config is refused with a ConfigError (code RC_ERR_CONFIG) whose
 * message names the file and the key path, one line per problem, and that several problems are
 * all reported at once: wrong types and values for every key, unknown keys (with a suggestion),
 * names, references between sections, and clashes between nodes (ports, ids, directories, files).
 * YAML syntax errors name the line and column instead.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { stringify } from 'yaml';
import { RemcopyError } from '../../src/core/errors.js';
import { nodeIdOf } from '../../src/core/types.js';
import { ConfigError, parseConfig } from '../../src/node/config.js';
import { type ConfigFixture, twoSiteConfig } from '../../src/testing/config-fixture.js';

type Cfg = ConfigFixture;
const base = twoSiteConfig;

/** The problem lines of a config that must fail. */
function problems(cfg: Cfg | string, env: NodeJS.ProcessEnv = {}): string[] {
  const text = typeof cfg === 'string' ? cfg : stringify(cfg);
  try {
    parseConfig(text, '/srv/remcopy', 'test.yaml', env);
  } catch (e) {
    assert.ok(e instanceof ConfigError, `expected a ConfigError, got ${String(e)}`);
    assert.ok(e instanceof RemcopyError);
    assert.equal(e.code, 'RC_ERR_CONFIG');
    const lines = e.message.split('\n');
    assert.equal(lines.length, e.problems.length);
    for (const line of lines) assert.ok(line.startsWith('test.yaml: '), `names the file: ${line}`);
    return lines;
  }
  return assert.fail('expected a ConfigError');
}

/** Asserts the config fails with a line for `path` whose message matches `re`. */
function rejects(cfg: Cfg | string, path: string, re: RegExp, env: NodeJS.ProcessEnv = {}): void {
  const lines = problems(cfg, env);
  const prefix = path === '' ? 'test.yaml: ' : `test.yaml: ${path}: `;
  const hit = lines.some((l) => l.startsWith(prefix) && re.test(l.slice(prefix.length)));
  assert.ok(hit, `expected "${prefix}" matching ${re}, got:\n${lines.join('\n')}`);
}

/** Applies `edit` to a fresh base config and asserts the failure. */
function rejectsEdit(edit: (cfg: Cfg) => void, path: string, re: RegExp): void {
  const cfg = base();
  edit(cfg);
  rejects(cfg, path, re);
}

describe('the file as a whole', () => {
  test('YAML syntax errors name line and column', () => {
    rejects('nodes:\n  siteA: [1\n  siteB: 2\n', '', /^line 3, column \d+: /);
    const lines = problems('nodes:\n  siteA: {}\n  siteA: {}\n');
    assert.match(lines[0]!, /^test\.yaml: line 3, column 3: Map keys must be unique$/);
  });

  test('YAML that is valid but unsafe or ambiguous is refused', () => {
    rejects(
      'secret: x\n---\nnodes: {}\n',
      '',
      /^line 2, column 1: the file must hold one YAML document, not several$/,
    );
    rejects('nodes:\n\tsiteA: {}\n', '', /^line 2, column 1: Tabs are not allowed as indentation$/);
    let bomb = 'a: &a [x, x, x, x, x, x, x, x, x, x]\n';
    for (let i = 0, prev = 'a'; i < 5; prev = `b${i}`, i++)
      bomb += `b${i}: &b${i} [${Array(10).fill(`*${prev}`).join(', ')}]\n`;
    rejects(bomb, '', /resource exhaustion/);
  });

  test('an empty file, or one that is not a mapping', () => {
    rejects('', '', /the file is empty/);
    rejects('# only a comment\n', '', /the file is empty/);
    rejects('- a\n- b\n', '', /expected a mapping, got a list/);
    assert.equal(problems('- a\n').length, 1, 'no separate complaint about the secret');
    rejects('just text\n', '', /expected a mapping, got "just text"/);
  });

  test('nodes is required and not empty', () => {
    rejectsEdit((c) => delete c.nodes, 'nodes', /^missing \(expected a mapping\)$/);
    rejectsEdit(
      (c) => {
        c.nodes = {};
        c.groups = {};
        c.consistencySets = {};
      },
      'nodes',
      /at least one node/,
    );
  });

  test('unknown keys are errors, with the closest known key suggested', () => {
    rejectsEdit((c) => (c.node = {}), 'node', /^unknown key \(did you mean "nodes"\?\)$/);
    rejectsEdit((c) => (c.consistencysets = {}), 'consistencysets', /did you mean "consistencySets"/);
    rejectsEdit((c) => (c.nodes.siteA.dataDri = 'x'), 'nodes.siteA.dataDri', /did you mean "dataDir"/);
    rejectsEdit(
      (c) => (c.nodes.siteA.writetime = 'clock'),
      'nodes.siteA.writetime',
      /did you mean "writeTime"/,
    );
    rejectsEdit(
      (c) => (c.nodes.siteA.journal = { segmentsize: '64MiB' }),
      'nodes.siteA.journal.segmentsize',
      /"segmentSize"/,
    );
    rejectsEdit(
      (c) => (c.nodes.siteA.tls = { cert: 'a', key: 'b', requried: true }),
      'nodes.siteA.tls.requried',
      /"required"/,
    );
    rejectsEdit(
      (c) => (c.nodes.siteA.volumes.db = { size: '256MiB', fiel: 'x' }),
      'nodes.siteA.volumes.db.fiel',
      /"file"/,
    );
    rejectsEdit((c) => (c.groups['g-db'].tick = 5), 'groups.g-db.tick', /"tickMs"/);
    rejectsEdit(
      (c) => (c.colour = 'blue'),
      'colour',
      /^unknown key \(known keys: secret, nodes, groups, consistencySets\)$/,
    );
  });

  test('several problems are all reported, one line each, each naming its key', () => {
    const cfg = base();
    cfg.nodes.siteA.nbd = '10809';
    cfg.nodes.siteA.writeTime = 'clok';
    cfg.nodes.siteB.volumes.db = '1000';
    cfg.groups['g-db'].mode = 'asynch';
    const lines = problems(cfg);
    assert.deepEqual(lines, [
      'test.yaml: nodes.siteA.nbd: expected host:port, got "10809"',
      'test.yaml: nodes.siteA.writeTime: expected one of host-last, clock, counter, got "clok" (did you mean "clock"?)',
      'test.yaml: nodes.siteB.volumes.db: "1000" is not a multiple of 4096 bytes',
      'test.yaml: groups.g-db.mode: expected one of async, sync, got "asynch" (did you mean "async"?)',
    ]);
  });

  test('cross-key problems are all reported too', () => {
    const cfg = base();
    cfg.nodes.siteB.nbd = '127.0.0.1:10809';
    cfg.groups['g-db'].target = 'siteC';
    cfg.consistencySets.bank.push('g-nope');
    const lines = problems(cfg);
    assert.equal(lines.length, 3, lines.join('\n'));
  });
});

describe('secret', () => {
  test('required from the file or REMCOPY_SECRET', () => {
    rejectsEdit(
      (c) => delete c.secret,
      'secret',
      /^missing: set secret in the file or REMCOPY_SECRET in the environment$/,
    );
    const cfg = base();
    delete cfg.secret;
    rejects(cfg, 'secret', /missing/, { REMCOPY_SECRET: '' });
  });

  test('at least 8 characters, wherever it comes from', () => {
    rejectsEdit((c) => (c.secret = 'short'), 'secret', /8 to 1024 characters, got 5/);
    rejects(base(), 'REMCOPY_SECRET (environment)', /8 to 1024 characters, got 3/, { REMCOPY_SECRET: 'abc' });
    rejectsEdit((c) => (c.secret = 'x'.repeat(1025)), 'secret', /got 1025/);
  });

  test('must be a string: a YAML number is refused with a hint to quote it', () => {
    rejects(
      `${stringify({ ...base(), secret: undefined })}secret: 12345678\n`,
      'secret',
      /got 12345678 \(put it in quotes\)/,
    );
  });
});

describe('node keys', () => {
  test('node names', () => {
    const cfg = base();
    cfg.nodes['bad name'] = cfg.nodes.siteB;
    delete cfg.nodes.siteB;
    cfg.groups = {};
    cfg.consistencySets = {};
    rejects(cfg, 'nodes["bad name"]', /invalid node name "bad name"/);
    const long = base();
    long.nodes[`a${'b'.repeat(64)}`] = long.nodes.siteB;
    rejects(long, `nodes.a${'b'.repeat(64)}`, /invalid node name/);
    const dash = base();
    dash.nodes['-x'] = dash.nodes.siteB;
    rejects(dash, 'nodes.-x', /starting with a letter or digit/);
  });

  test('a node must be a mapping', () => {
    rejectsEdit((c) => (c.nodes.siteB = 'x'), 'nodes.siteB', /^expected a mapping, got "x"$/);
  });

  test('dataDir', () => {
    rejectsEdit(
      (c) => delete c.nodes.siteA.dataDir,
      'nodes.siteA.dataDir',
      /^missing \(expected a directory path\)$/,
    );
    rejectsEdit((c) => (c.nodes.siteA.dataDir = ''), 'nodes.siteA.dataDir', /empty string/);
    rejectsEdit(
      (c) => (c.nodes.siteA.dataDir = 5),
      'nodes.siteA.dataDir',
      /expected a directory path, got 5/,
    );
    rejectsEdit((c) => (c.nodes.siteA.dataDir = '~/remcopy'), 'nodes.siteA.dataDir', /"~" is not expanded/);
  });

  for (const key of ['nbd', 'link', 'api', 'native']) {
    test(`${key} address`, () => {
      const at = `nodes.siteA.${key}`;
      const set = (v: unknown) => (c: Cfg) => (c.nodes.siteA[key] = v);
      if (key !== 'native')
        rejectsEdit((c) => delete c.nodes.siteA[key], at, /^missing \(expected host:port\)$/);
      rejectsEdit(set(10809), at, /^expected host:port, got 10809$/);
      rejectsEdit(set('10809'), at, /^expected host:port, got "10809"$/);
      rejectsEdit(set('127.0.0.1'), at, /expected host:port/);
      rejectsEdit(set(':10809'), at, /missing host/);
      rejectsEdit(set('127.0.0.1:0'), at, /port must be a number from 1 to 65535, got "0"/);
      rejectsEdit(set('127.0.0.1:65536'), at, /got "65536"/);
      rejectsEdit(set('127.0.0.1:http'), at, /got "http"/);
      rejectsEdit(set('127.0.0.1:'), at, /got ""/);
      rejectsEdit(set('127.0.0.1:-1'), at, /got "-1"/);
      rejectsEdit(set('999.0.0.1:1'), at, /"999.0.0.1" is not a host name or IPv4 address/);
      rejectsEdit(set('bad_host!:1'), at, /not a host name/);
      rejectsEdit(set('::1:10809'), at, /IPv6 addresses need brackets/);
      rejectsEdit(set('[::1]10809'), at, /expected \[ipv6\]:port/);
      rejectsEdit(set('[nothost]:10809'), at, /"nothost" is not an IPv6 address/);
      rejectsEdit(set({ host: 'a', port: 1 }), at, /expected host:port, got a mapping/);
    });
  }

  test('writeTime', () => {
    rejectsEdit(
      (c) => (c.nodes.siteA.writeTime = 'host_last'),
      'nodes.siteA.writeTime',
      /did you mean "host-last"/,
    );
    rejectsEdit(
      (c) => (c.nodes.siteA.writeTime = 'wallclock'),
      'nodes.siteA.writeTime',
      /expected one of host-last, clock, counter/,
    );
  });

  test('volumes: names, sizes, files', () => {
    const vol =
      (v: unknown, name = 'db') =>
      (c: Cfg) =>
        (c.nodes.siteA.volumes[name] = v);
    rejectsEdit(
      (c) => (c.nodes.siteA.volumes = ['db']),
      'nodes.siteA.volumes',
      /expected a mapping, got a list/,
    );
    rejectsEdit(vol('4KiB', 'db@1'), 'nodes.siteA.volumes["db@1"]', /'@' is reserved for snapshots/);
    rejectsEdit(vol('4KiB', '.hidden'), 'nodes.siteA.volumes[".hidden"]', /invalid volume name/);
    rejectsEdit(vol(0), 'nodes.siteA.volumes.db', /too small/);
    rejectsEdit(vol('0MiB'), 'nodes.siteA.volumes.db', /too small/);
    rejectsEdit(vol(-4096), 'nodes.siteA.volumes.db', /must not be negative/);
    rejectsEdit(vol(4097), 'nodes.siteA.volumes.db', /not a multiple of 4096 bytes/);
    rejectsEdit(vol('1MB'), 'nodes.siteA.volumes.db', /not a multiple of 4096 bytes/);
    rejectsEdit(vol('lots'), 'nodes.siteA.volumes.db', /expected a size/);
    rejectsEdit(vol('1.5'), 'nodes.siteA.volumes.db', /not a whole number of bytes/);
    rejectsEdit(vol('16384TiB'), 'nodes.siteA.volumes.db', /too large/);
    rejectsEdit(
      vol(true),
      'nodes.siteA.volumes.db',
      /expected a size such as 256MiB or a mapping \{ size, file \}, got true/,
    );
    rejectsEdit(vol({ file: 'x.img' }), 'nodes.siteA.volumes.db.size', /^missing \(expected a size/);
    rejectsEdit(vol({ size: '1KiB' }), 'nodes.siteA.volumes.db.size', /not a multiple of 4096/);
    rejectsEdit(vol({ size: '4KiB', file: '' }), 'nodes.siteA.volumes.db.file', /empty string/);
    rejectsEdit(vol({ size: '4KiB', file: 3 }), 'nodes.siteA.volumes.db.file', /expected a file path, got 3/);
  });

  test('journal', () => {
    const j = (v: unknown) => (c: Cfg) => (c.nodes.siteA.journal = v);
    rejectsEdit(j('1GiB'), 'nodes.siteA.journal', /expected a mapping, got "1GiB"/);
    rejectsEdit(
      j({ size: '100MiB' }),
      'nodes.siteA.journal.size',
      /^100 MiB must hold at least two segments \(segmentSize is 64 MiB\)$/,
    );
    rejectsEdit(
      j({ size: '1GiB', segmentSize: '32MiB' }),
      'nodes.siteA.journal.segmentSize',
      /too small \(at least 33 MiB\)/,
    );
    rejectsEdit(
      j({ size: '4GiB', segmentSize: '2GiB' }),
      'nodes.siteA.journal.segmentSize',
      /too large \(at most 1 GiB\)/,
    );
    rejectsEdit(j({ size: 'big' }), 'nodes.siteA.journal.size', /expected a size/);
    rejectsEdit(j({ size: 0 }), 'nodes.siteA.journal.size', /too small/);
    rejectsEdit(
      j({ full: 'block' }),
      'nodes.siteA.journal.full',
      /expected one of throttle, suspend, got "block"/,
    );
    rejectsEdit(
      j({ throttleMaxDelay: 'forever' }),
      'nodes.siteA.journal.throttleMaxDelay',
      /expected a duration/,
    );
    rejectsEdit(
      j({ throttleMaxDelay: 0 }),
      'nodes.siteA.journal.throttleMaxDelay',
      /out of range \(1 ms to 60000 ms\)/,
    );
    rejectsEdit(j({ throttleMaxDelay: '2m' }), 'nodes.siteA.journal.throttleMaxDelay', /out of range/);
  });

  test('activityLog', () => {
    const al = (v: unknown) => (c: Cfg) => (c.nodes.siteA.activityLog = v);
    rejectsEdit(al(4096), 'nodes.siteA.activityLog', /expected a mapping, got 4096/);
    rejectsEdit(
      al({ extents: 31 }),
      'nodes.siteA.activityLog.extents',
      /not a whole number from 32 to 65536/,
    );
    rejectsEdit(al({ extents: 65537 }), 'nodes.siteA.activityLog.extents', /from 32 to 65536/);
    rejectsEdit(al({ extents: 1.5 }), 'nodes.siteA.activityLog.extents', /not a whole number/);
    rejectsEdit(al({ extents: '1k' }), 'nodes.siteA.activityLog.extents', /expected a whole number/);
    rejectsEdit(al({ extent: 64 }), 'nodes.siteA.activityLog.extent', /unknown key/);
  });

  test('tls', () => {
    const tls = (v: unknown) => (c: Cfg) => (c.nodes.siteA.tls = v);
    rejectsEdit(tls(true), 'nodes.siteA.tls', /expected a mapping, got true/);
    rejectsEdit(
      tls({ key: 'a.key' }),
      'nodes.siteA.tls.cert',
      /^missing \(expected a certificate file path\)$/,
    );
    rejectsEdit(
      tls({ cert: 'a.crt' }),
      'nodes.siteA.tls.key',
      /^missing \(expected a private key file path\)$/,
    );
    rejectsEdit(
      tls({ cert: 'a.crt', key: 'a.key', ca: 7 }),
      'nodes.siteA.tls.ca',
      /expected a CA certificate file path/,
    );
    rejectsEdit(
      tls({ cert: 'a.crt', key: 'a.key', required: 'yes' }),
      'nodes.siteA.tls.required',
      /expected true or false, got "yes"/,
    );
  });
});

describe('clashes between nodes', () => {
  test('two listeners on one host:port, across nodes or within one', () => {
    rejectsEdit(
      (c) => (c.nodes.siteB.link = '127.0.0.1:10809'),
      'nodes.siteB.link',
      /^address 127.0.0.1:10809 is also used by nodes.siteA.nbd$/,
    );
    rejectsEdit(
      (c) => (c.nodes.siteA.api = '127.0.0.1:7701'),
      'nodes.siteA.api',
      /also used by nodes.siteA.link/,
    );
    rejectsEdit(
      (c) => (c.nodes.siteB.native = '127.0.0.1:7801'),
      'nodes.siteB.native',
      /also used by nodes.siteA.api/,
    );
    rejectsEdit(
      (c) => {
        c.nodes.siteA.nbd = '[::1]:10809';
        c.nodes.siteB.nbd = '[::1]:10809';
      },
      'nodes.siteB.nbd',
      /address \[::1\]:10809 is also used/,
    );
  });

  test('the same port on different hosts is fine', () => {
    const cfg = base();
    cfg.nodes.siteB.nbd = '127.0.0.2:10809';
    assert.doesNotThrow(() => parseConfig(stringify(cfg), '/srv', 'test.yaml', {}));
  });

  test('node ids (hashes of the names) must not collide', () => {
    assert.equal(nodeIdOf('node-522789'), nodeIdOf('node-739192'), 'a known FNV-1a collision');
    const cfg = base();
    cfg.nodes['node-522789'] = cfg.nodes.siteA;
    cfg.nodes['node-739192'] = cfg.nodes.siteB;
    delete cfg.nodes.siteA;
    delete cfg.nodes.siteB;
    cfg.groups = {};
    cfg.consistencySets = {};
    rejects(cfg, 'nodes.node-739192', /collides with node "node-522789"; rename one of them/);
  });

  test('data directories must differ, also when spelled differently', () => {
    rejectsEdit(
      (c) => (c.nodes.siteB.dataDir = './var/../var/siteA/'),
      'nodes.siteB.dataDir',
      /directory \/srv\/remcopy\/var\/siteA is also used by nodes.siteA.dataDir/,
    );
    const cfg = base();
    cfg.nodes.siteB.dataDir = '/srv/remcopy/var/siteA';
    const lines = problems(cfg);
    assert.equal(
      lines.length,
      1,
      `the clashing default volume files are not reported again:\n${lines.join('\n')}`,
    );
  });

  test('volume files must differ', () => {
    rejectsEdit(
      (c) => (c.nodes.siteB.volumes.log = { size: '64MiB', file: 'var/siteA/volumes/log.img' }),
      'nodes.siteB.volumes.log',
      /volume file \/srv\/remcopy\/var\/siteA\/volumes\/log.img is also used by nodes.siteA.volumes.log/,
    );
    rejectsEdit(
      (c) => {
        c.nodes.siteA.volumes.db = { size: '256MiB', file: '/data/x.img' };
        c.nodes.siteA.volumes.log = { size: '64MiB', file: '/data/x.img' };
      },
      'nodes.siteA.volumes.log',
      /also used by nodes.siteA.volumes.db/,
    );
  });
});

describe('groups', () => {
  const g = (edit: (g: Cfg) => void) => (c: Cfg) => edit(c.groups['g-db']);

  test('group names and shape', () => {
    rejectsEdit((c) => (c.groups['g db'] = c.groups['g-db']), 'groups["g db"]', /invalid group name "g db"/);
    rejectsEdit(
      (c) => (c.groups['g-db'] = ['siteA', 'siteB']),
      'groups.g-db',
      /expected a mapping, got a list/,
    );
  });

  test('source and target are existing, different nodes', () => {
    rejectsEdit(
      g((x) => delete x.source),
      'groups.g-db.source',
      /^missing \(expected a node name\)$/,
    );
    rejectsEdit(
      g((x) => (x.source = 'siteZ')),
      'groups.g-db.source',
      /^no node named "siteZ"$/,
    );
    rejectsEdit(
      g((x) => (x.target = 'siteb')),
      'groups.g-db.target',
      /no node named "siteb" \(did you mean "siteB"\?\)/,
    );
    rejectsEdit(
      g((x) => (x.target = 'siteA')),
      'groups.g-db.target',
      /must differ from source \(both are "siteA"\)/,
    );
  });

  test('mode, transfer and their combination', () => {
    rejectsEdit(
      g((x) => (x.mode = 'semi-sync')),
      'groups.g-db.mode',
      /expected one of async, sync/,
    );
    rejectsEdit(
      g((x) => (x.transfer = 'poll')),
      'groups.g-db.transfer',
      /expected one of push, pull, got "poll"/,
    );
    rejectsEdit(
      g((x) => {
        x.mode = 'sync';
        x.transfer = 'pull';
      }),
      'groups.g-db.transfer',
      /pull is for mode async only/,
    );
  });

  test('tickMs', () => {
    rejectsEdit(
      g((x) => (x.tickMs = 0)),
      'groups.g-db.tickMs',
      /out of range \(1 ms to 60000 ms\)/,
    );
    rejectsEdit(
      g((x) => (x.tickMs = -5)),
      'groups.g-db.tickMs',
      /must not be negative/,
    );
    rejectsEdit(
      g((x) => (x.tickMs = 'often')),
      'groups.g-db.tickMs',
      /expected a duration/,
    );
    rejectsEdit(
      g((x) => (x.tickMs = 0.5)),
      'groups.g-db.tickMs',
      /not a whole number of milliseconds/,
    );
  });

  test('bitmapChunk, suspendAfter, resyncRate', () => {
    rejectsEdit(
      g((x) => (x.bitmapChunk = '48KiB')),
      'groups.g-db.bitmapChunk',
      /must be a power of two from 4 KiB to 64 MiB/,
    );
    rejectsEdit(
      g((x) => (x.bitmapChunk = '2KiB')),
      'groups.g-db.bitmapChunk',
      /must be a power of two/,
    );
    rejectsEdit(
      g((x) => (x.suspendAfter = 0)),
      'groups.g-db.suspendAfter',
      /out of range/,
    );
    rejectsEdit(
      g((x) => (x.resyncRate = '1KiB')),
      'groups.g-db.resyncRate',
      /too small/,
    );
  });

  test('pairs: present, not empty, existing volumes of equal size', () => {
    rejectsEdit(
      g((x) => delete x.pairs),
      'groups.g-db.pairs',
      /^missing \(expected a mapping\)$/,
    );
    rejectsEdit(
      g((x) => (x.pairs = {})),
      'groups.g-db.pairs',
      /at least one source volume/,
    );
    rejectsEdit(
      g((x) => (x.pairs = ['db'])),
      'groups.g-db.pairs',
      /expected a mapping, got a list/,
    );
    rejectsEdit(
      g((x) => (x.pairs = { dbx: 'db' })),
      'groups.g-db.pairs.dbx',
      /^no volume "dbx" on node "siteA" \(it has db, log\)$/,
    );
    rejectsEdit(
      g((x) => (x.pairs = { db: 'dbx' })),
      'groups.g-db.pairs.db',
      /^no volume "dbx" on node "siteB"/,
    );
    rejectsEdit(
      g((x) => (x.pairs = { db: 5 })),
      'groups.g-db.pairs.db',
      /expected a volume name, got 5/,
    );
    rejectsEdit(
      (c) => (c.nodes.siteB.volumes.db = '128MiB'),
      'groups.g-db.pairs.db',
      /^sizes differ: siteA\/db is 256 MiB, siteB\/db is 128 MiB$/,
    );
  });

  test('a volume is in at most one group on its node', () => {
    // The same source volume in two groups.
    rejectsEdit(
      (c) => (c.groups['g-log'].pairs = { log: 'log', db: 'db' }),
      'groups.g-log.pairs.db',
      /volume siteA\/db already belongs to group "g-db"/,
    );
    // Two source volumes of one group onto one target volume.
    rejectsEdit(
      (c) => {
        c.nodes.siteA.volumes.log = '256MiB';
        c.groups['g-db'].pairs = { db: 'db', log: 'db' };
        delete c.groups['g-log'];
        c.consistencySets.bank = ['g-db'];
      },
      'groups.g-db.pairs.log',
      /target volume "db" is already paired with source volume "db"/,
    );
    // A target volume that is also a source (a cascade through one volume).
    rejectsEdit(
      (c) => {
        c.nodes.siteC = { dataDir: 'c', nbd: 'c:1', link: 'c:2', api: 'c:3', volumes: { db: '256MiB' } };
        c.groups['g-c'] = { source: 'siteB', target: 'siteC', pairs: { db: 'db' } };
      },
      'groups.g-c.pairs.db',
      /volume siteB\/db already belongs to group "g-db"/,
    );
  });
});

describe('consistencySets', () => {
  test('set names and shape', () => {
    rejectsEdit(
      (c) => (c.consistencySets['my set'] = ['g-db']),
      'consistencySets["my set"]',
      /invalid consistency set name/,
    );
    rejectsEdit(
      (c) => (c.consistencySets.bank = 'g-db'),
      'consistencySets.bank',
      /expected a list of groups or a mapping \{ groups, cycleSeconds, freezeBound, keepSnapshots, resume, coordinator \}, got "g-db"/,
    );
    rejectsEdit(
      (c) => (c.consistencySets.bank = { groups: ['g-db'], cycleSecond: 2 }),
      'consistencySets.bank.cycleSecond',
      /unknown key \(did you mean "cycleSeconds"\?\)/,
    );
    rejectsEdit(
      (c) => (c.consistencySets.bank = { groups: ['g-db'], cycleSeconds: 0 }),
      'consistencySets.bank.cycleSeconds',
      /0 is out of range \(0.1 to 86400 seconds\)/,
    );
    rejectsEdit(
      (c) => (c.consistencySets.bank = { groups: ['g-db'], freezeBound: '20s' }),
      'consistencySets.bank.freezeBound',
      /out of range \(1 ms to 10000 ms\)/,
    );
    rejectsEdit(
      (c) => (c.consistencySets.bank = { groups: ['g-db'], keepSnapshots: 0 }),
      'consistencySets.bank.keepSnapshots',
      /not a whole number from 1 to 1000/,
    );
    rejectsEdit(
      (c) => (c.consistencySets.bank = { groups: ['g-db'], resume: 'manual' }),
      'consistencySets.bank.resume',
      /expected one of auto, coordinator, got "manual"/,
    );
    rejectsEdit(
      (c) => (c.consistencySets.bank = { groups: ['g-db', 'g-lgo'] }),
      'consistencySets.bank.groups[1]',
      /no group named "g-lgo"/,
    );
    rejectsEdit(
      (c) => (c.consistencySets.bank = { groups: ['g-db'], coordinator: 'siteZ' }),
      'consistencySets.bank.coordinator',
      /no node named "siteZ"/,
    );
    rejectsEdit((c) => (c.consistencySets.bank = []), 'consistencySets.bank', /must list at least one group/);
    rejectsEdit(
      (c) => (c.consistencySets.bank = [7]),
      'consistencySets.bank[0]',
      /expected a group name, got 7/,
    );
  });

  test('members are existing groups, each in at most one set', () => {
    rejectsEdit(
      (c) => (c.consistencySets.bank = ['g-db', 'g-lgo']),
      'consistencySets.bank[1]',
      /no group named "g-lgo" \(did you mean "g-log"\?\)/,
    );
    rejectsEdit(
      (c) => (c.consistencySets.bank = ['g-db', 'g-db']),
      'consistencySets.bank[1]',
      /group "g-db" is listed twice/,
    );
    rejectsEdit(
      (c) => (c.consistencySets.other = ['g-log']),
      'consistencySets.other[0]',
      /group "g-log" is already in set "bank"/,
    );
  });

  test('a set may span target nodes (markers line them up) and does not take the name of a group outside it', () => {
    const c = twoSiteConfig();
    c.nodes.siteC = {
      ...c.nodes.siteB,
      dataDir: './var/siteC',
      nbd: '127.0.0.1:10811',
      link: '127.0.0.1:7703',
      api: '127.0.0.1:7803',
    };
    c.groups['g-log'].target = 'siteC';
    c.consistencySets.bank = { groups: ['g-db', 'g-log'], cycleSeconds: 2 };
    const topo = parseConfig(stringify(c), '/srv', 'test.yaml', {});
    assert.deepEqual(topo.consistencySets.get('bank'), ['g-db', 'g-log']);
    assert.deepEqual(topo.setOptions.get('bank'), {
      cycleSeconds: 2,
      freezeBoundMs: 50,
      keepSnapshots: 8,
      resume: 'auto',
      coordinator: 'siteA',
    });
    rejectsEdit(
      (c) => {
        c.consistencySets = { 'g-db': ['g-log'] };
      },
      'consistencySets.g-db',
      /may not take the name of group "g-db"/,
    );
  });
});
