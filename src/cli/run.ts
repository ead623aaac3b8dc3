/**
 * `remcopy node` (one node in the foreground) and `remcopy up` (every node of the file, each in
 * its own process, output prefixed with its name). SIGINT/SIGTERM stop cleanly: in-flight
 * requests are answered, the journal is synced, exit 0.
 */
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { ExitCode } from '../core/errors.js';
import { loadConfig } from '../node/config.js';
import { makeLog } from '../node/log.js';
import { RemcopyNode } from '../node/node.js';
import { nodeProcessArgs, nodeProcessEnv } from './node-process.js';

function waitForSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const on = (sig: NodeJS.Signals): void => {
      process.off('SIGINT', on);
      process.off('SIGTERM', on);
      resolve(sig);
    };
    process.on('SIGINT', on);
    process.on('SIGTERM', on);
  });
}

export async function runNode(configFile: string, nodeName: string): Promise<number> {
  const topo = loadConfig(configFile);
  const log = makeLog(nodeName);
  const signal = waitForSignal();
  const node = await RemcopyNode.start(topo, nodeName, log);
  const c = node.cfg;
  const native = node.ports.native ? ` native ${c.native?.host}:${node.ports.native}` : '';
  process.stdout.write(
    `remcopy node ${nodeName} ready: nbd ${c.nbd.host}:${node.ports.nbd} api ${c.api.host}:${node.ports.api}${native}\n`,
  );
  const sig = await signal;
  // A second signal while stopping would kill a half-synced node: say so instead.
  const again = (): void =>
    log('warn', 'already stopping; waiting for in-flight requests and the journal sync');
  process.on('SIGINT', again);
  process.on('SIGTERM', again);
  log('info', 'signal received', { signal: sig });
  await node.stop();
  return ExitCode.ok;
}

export async function runUp(configFile: string): Promise<number> {
  const topo = loadConfig(configFile);
  const children = [...topo.nodes.keys()].map((name) => {
    const child = spawn(process.execPath, nodeProcessArgs(configFile, name), {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: nodeProcessEnv(),
    });
    for (const stream of [child.stdout, child.stderr]) {
      createInterface({ input: stream }).on('line', (line) => process.stdout.write(`[${name}] ${line}\n`));
    }
    const exited = new Promise<number>((resolve) =>
      child.on('exit', (code, sig) => resolve(code ?? (sig ? 1 : 0))),
    );
    return { name, child, exited };
  });
  let stopping = false;
  const stopAll = (): void => {
    if (stopping) return;
    stopping = true;
    for (const c of children) c.child.kill('SIGTERM');
  };
  process.on('SIGINT', stopAll);
  process.on('SIGTERM', stopAll);
  // If one node dies on its own, stop the others: a half-running topology misleads.
  for (const c of children) {
    c.exited.then((code) => {
      if (!stopping) {
        process.stderr.write(`remcopy up: node ${c.name} exited with code ${code}; stopping the others\n`);
        stopAll();
      }
    });
  }
  const codes = await Promise.all(children.map((c) => c.exited));
  process.off('SIGINT', stopAll);
  process.off('SIGTERM', stopAll);
  return codes.every((c) => c === 0) ? ExitCode.ok : ExitCode.failure;
}
