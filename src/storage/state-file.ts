/**
 * Small JSON state files (group epochs and pair states, a consistency set's apply state): written
 * atomically and durably (tmp, fsync, rename, fsync dir), read back with a caller's validator.
 * Writes to one file are serialized, so the file always holds the latest write that completed.
 */
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { RemcopyError } from '../core/errors.js';
import { fsyncDir } from './journal-state.js';

const chains = new Map<string, Promise<void>>();

/** Resolves once `value` is durable in `file`. Concurrent writes of one file happen in call order. */
export function writeJsonDurable(file: string, value: unknown): Promise<void> {
  return writeFileDurable(file, JSON.stringify(value, null, 1) + '\n');
}

/** Resolves once `data` is durable in `file` (atomically replaced); writes to one file in call order. */
export function writeFileDurable(file: string, text: string | Uint8Array): Promise<void> {
  const prev = chains.get(file) ?? Promise.resolve();
  const next = prev.catch(() => {}).then(() => writeNow(file, text));
  chains.set(file, next);
  void next.finally(() => {
    if (chains.get(file) === next) chains.delete(file);
  });
  return next;
}

async function writeNow(file: string, text: string | Uint8Array): Promise<void> {
  const dir = path.dirname(file);
  await fsp.mkdir(dir, { recursive: true });
  const tmp = `${file}.tmp`;
  const fh = await fsp.open(tmp, 'w');
  try {
    await fh.writeFile(text);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await fsp.rename(tmp, file);
  await fsyncDir(dir);
}

/**
 * The parsed content of `file`, or undefined when it does not exist. `check` returns the value or
 * a reason; a file that does not parse or fails the check is an RC_ERR_STATE error naming it
 * (a node refuses to start on state it cannot trust rather than guess).
 */
export function readJsonFile<T>(file: string, check: (v: unknown) => T | string): T | undefined {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw new RemcopyError('RC_ERR_STATE', `${file}: not valid JSON (${(e as Error).message})`);
  }
  const r = check(parsed);
  if (typeof r === 'string') throw new RemcopyError('RC_ERR_STATE', `${file}: ${r}`);
  return r;
}
