/**
 * How node processes are started (src/cli/node-process.ts): the bin's shebang and nodeProcessEnv
 * give them the same glibc malloc tunables and V8 flags, the tunables really reach glibc through
 * the shebang's `env -S`, and a GLIBC_TUNABLES of the user's own is kept (after ours, so it wins).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import {
  CLI_MAIN,
  NODE_PROCESS_MALLOC_TUNABLES,
  NODE_PROCESS_V8_FLAGS,
  nodeProcessEnv,
} from '../../src/cli/node-process.js';

/** What the kernel runs for the bin: `/usr/bin/env -S <rest of the shebang> main.js`. */
function shebang(): { interpreter: string; rest: string } {
  const first = readFileSync(CLI_MAIN, 'utf8').split('\n')[0]!;
  const m = /^#!(\S+) -S (.*)$/.exec(first);
  assert.ok(m, `shebang: ${first}`);
  return { interpreter: m[1]!, rest: m[2]! };
}

test('the bin runs node with the same V8 flags and malloc tunables as nodeProcessArgs/Env', () => {
  const { rest } = shebang();
  assert.equal(
    rest,
    `GLIBC_TUNABLES=${NODE_PROCESS_MALLOC_TUNABLES}:\${GLIBC_TUNABLES} node ${NODE_PROCESS_V8_FLAGS.join(' ')}`,
  );
});

test("the shebang's tunables are in effect in glibc, with and without the user's own", () => {
  const { interpreter, rest } = shebang();
  // The dynamic loader lists the tunables in effect; run it the way the shebang runs node.
  const loader = '/lib64/ld-linux-x86-64.so.2';
  const listed = (env: NodeJS.ProcessEnv): string =>
    execFileSync(interpreter, ['-S', rest.replace(/ node .*$/, ` ${loader} --list-tunables`)], {
      env,
      encoding: 'utf8',
    });
  const { GLIBC_TUNABLES: _drop, ...plain } = process.env;
  const ours = listed(plain);
  assert.match(ours, /glibc\.malloc\.trim_threshold: 0x10000000 /);
  assert.match(ours, /glibc\.malloc\.mmap_threshold: 0x2000000 /);
  const user = listed({ ...plain, GLIBC_TUNABLES: 'glibc.malloc.trim_threshold=4096' });
  assert.match(user, /glibc\.malloc\.trim_threshold: 0x1000 /, "the user's value wins");
  assert.match(user, /glibc\.malloc\.mmap_threshold: 0x2000000 /);
});

test('nodeProcessEnv puts the tunables ahead of the caller environment, once', () => {
  assert.equal(nodeProcessEnv({}).GLIBC_TUNABLES, NODE_PROCESS_MALLOC_TUNABLES);
  const env = nodeProcessEnv({ PATH: '/bin', GLIBC_TUNABLES: 'glibc.malloc.arena_max=2' });
  assert.equal(env.PATH, '/bin');
  assert.equal(env.GLIBC_TUNABLES, `${NODE_PROCESS_MALLOC_TUNABLES}:glibc.malloc.arena_max=2`);
  // A node started by `remcopy up` (itself started by the bin) gets them once, not twice.
  assert.deepEqual(nodeProcessEnv(env), env);
});
