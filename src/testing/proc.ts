/**
 * Real-process test support: free loopback ports, a topology file, and `remcopy node` as a child
 * process that can be stopped cleanly (SIGTERM) or killed (SIGKILL). Used by the crash and
 * interop tests and the benchmarks; everything binds to 127.0.0.1.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { CLI_MAIN, nodeProcessArgs, nodeProcessEnv } from '../cli/node-process.js';

export { CLI_MAIN };

/** Lowest port tests pick; below the ephemeral range (see freePorts). */
const TEST_PORT_MIN = 10_000;

/** The first port of the kernel's ephemeral range (32768 when it cannot be read). */
function ephemeralLow(): number {
  try {
    const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    return Number.isSafeInteger(low) && low > 0 ? low : 32_768;
  } catch {
    return 32_768;
  }
}

function bindable(port: number): Promise<net.Server | undefined> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(undefined));
    s.listen(port, '127.0.0.1', () => resolve(s));
  });
}

/**
 * Ports handed out by any live process on this machine, one file per port named after it and
 * holding the owner's pid. A port only free when picked can be taken by a concurrent test file
 * while its own test has a node down between a kill and a restart (CI saw EADDRINUSE), so a port
 * stays reserved for the life of the process that picked it.
 */
const PORT_DIR = join(tmpdir(), 'remcopy-test-ports');
const reserved = new Set<number>();
process.on('exit', () => {
  for (const p of reserved) rmSync(join(PORT_DIR, String(p)), { force: true });
});

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Reserve `port` for this process; false if a live process (this one included) holds it. */
function reserve(port: number): boolean {
  if (reserved.has(port)) return false;
  const file = join(PORT_DIR, String(port));
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      writeFileSync(file, String(process.pid), { flag: 'wx' });
      reserved.add(port);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    let owner: number;
    try {
      owner = Number(readFileSync(file, 'utf8'));
    } catch {
      // Being written or removed by its owner right now: count it as held.
      return false;
    }
    // An owner killed without its exit handler leaves its files behind; a file cut short (an
    // owner killed while writing it) reads as 0 and is stale too.
    if (Number.isSafeInteger(owner) && owner > 0 && alive(owner)) return false;
    rmSync(file, { force: true });
  }
  return false;
}

/**
 * `n` distinct ports free right now and reserved for this process (see PORT_DIR), picked at
 * random below the kernel's ephemeral range: a port from that range, free when picked, can be
 * taken as the source port of any outgoing connection (another test's API call, link or NBD
 * client) before the node binds it (CI saw EADDRINUSE). Falls back to kernel-chosen ports when the
 * range leaves no room below it.
 */
export async function freePorts(n: number): Promise<number[]> {
  const high = ephemeralLow();
  mkdirSync(PORT_DIR, { recursive: true });
  const held: net.Server[] = [];
  try {
    for (let tries = 0; held.length < n; tries++) {
      if (tries > 100 * n) throw new Error(`no ${n} free ports between ${TEST_PORT_MIN} and ${high}`);
      const wanted =
        high - TEST_PORT_MIN < 1000 ? 0 : TEST_PORT_MIN + Math.floor(Math.random() * (high - TEST_PORT_MIN));
      if (wanted !== 0 && reserved.has(wanted)) continue;
      const s = await bindable(wanted);
      if (s === undefined) continue;
      if (reserve((s.address() as net.AddressInfo).port)) held.push(s);
      else await new Promise((r) => s.close(r));
    }
    return held.map((s) => (s.address() as net.AddressInfo).port);
  } finally {
    await Promise.all(held.map((s) => new Promise((r) => s.close(r))));
  }
}

export interface TestNodeSpec {
  volumes: Record<string, string>;
  native?: boolean;
  journal?: string;
  /** A YAML flow mapping for `activityLog`, e.g. `{ extents: 64 }`. */
  activityLog?: string;
  writeTime?: 'host-last' | 'clock' | 'counter';
  /** A YAML flow mapping for `tls`, e.g. `{ cert: ..., key: ..., ca: ... }`. */
  tls?: string;
}

export interface TestTopology {
  file: string;
  secret: string;
  ports: Map<string, { nbd: number; link: number; api: number; native?: number }>;
}

/**
 * Write a topology with the given nodes; `groups` maps group name to [source, target, volume] and
 * optionally more group keys as YAML flow text (`suspendAfter: 1s, resyncRate: 8MiB`). Each pair
 * uses the same volume name on both nodes.
 */
export async function writeTopology(
  dir: string,
  nodes: Record<string, TestNodeSpec>,
  groups: Record<string, [string, string, string] | [string, string, string, string]> = {},
  /** Set name -> its groups, or a YAML flow mapping (`{ groups: [g1, g2], cycleSeconds: 1 }`). */
  sets: Record<string, string[] | string> = {},
): Promise<TestTopology> {
  const secret = 'test-secret-0123456789';
  const ports = new Map<string, { nbd: number; link: number; api: number; native?: number }>();
  const lines = [`secret: ${secret}`, 'nodes:'];
  // All at once: ports taken one node at a time are released in between, and the kernel may then
  // hand a later node a port an earlier one was given.
  const free = await freePorts(4 * Object.keys(nodes).length);
  for (const [i, [name, spec]] of Object.entries(nodes).entries()) {
    const [nbd, link, api, native] = free.slice(4 * i, 4 * i + 4) as [number, number, number, number];
    ports.set(name, { nbd, link, api, native: spec.native ? native : undefined });
    lines.push(
      `  ${name}:`,
      `    dataDir: ./${name}`,
      `    nbd: 127.0.0.1:${nbd}`,
      `    link: 127.0.0.1:${link}`,
    );
    lines.push(`    api: 127.0.0.1:${api}`);
    if (spec.native) lines.push(`    native: 127.0.0.1:${native}`);
    if (spec.writeTime) lines.push(`    writeTime: ${spec.writeTime}`);
    if (spec.journal) lines.push(`    journal: ${spec.journal}`);
    if (spec.activityLog) lines.push(`    activityLog: ${spec.activityLog}`);
    if (spec.tls) lines.push(`    tls: ${spec.tls}`);
    const vols = Object.entries(spec.volumes).map(([v, size]) => `${v}: ${size}`);
    lines.push(`    volumes: { ${vols.join(', ')} }`);
  }
  if (Object.keys(groups).length > 0) {
    lines.push('groups:');
    for (const [g, [source, target, vol, extra]] of Object.entries(groups)) {
      const more = extra === undefined ? '' : `, ${extra}`;
      lines.push(`  ${g}: { source: ${source}, target: ${target}, pairs: { ${vol}: ${vol} }${more} }`);
    }
  }
  if (Object.keys(sets).length > 0) {
    lines.push('consistencySets:');
    for (const [set, gs] of Object.entries(sets)) {
      lines.push(`  ${set}: ${typeof gs === 'string' ? gs : `[${gs.join(', ')}]`}`);
    }
  }
  const file = join(dir, 'remcopy.yaml');
  writeFileSync(file, `${lines.join('\n')}\n`);
  return { file, secret, ports };
}

export interface NodeProcess {
  readonly child: ChildProcess;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  readonly stderr: string[];
  /** SIGTERM and wait; resolves to the exit code. */
  stop(): Promise<number | null>;
  /** SIGKILL and wait. */
  kill9(): Promise<void>;
}

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

/** Start `remcopy node` and wait for its ready line; rejects with its stderr if it exits first. */
export function startNodeProcess(
  configFile: string,
  node: string,
  timeoutMs = 15000,
  env: Readonly<Record<string, string>> = {},
): Promise<NodeProcess> {
  const child = spawn(process.execPath, nodeProcessArgs(configFile, node), {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: nodeProcessEnv({ ...process.env, ...env }),
  });
  const stderr: string[] = [];
  createInterface({ input: child.stderr! }).on('line', (l) => stderr.push(l));
  // A test that fails half-way must not leave nodes running after its file's process ends.
  live.add(child);
  child.on('exit', () => live.delete(child));

  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })),
  );
  const proc: NodeProcess = {
    child,
    exited,
    stderr,
    async stop() {
      child.kill('SIGTERM');
      return (await exited).code;
    },
    async kill9() {
      child.kill('SIGKILL');
      await exited;
    },
  };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`node ${node} not ready in ${timeoutMs} ms: ${stderr.slice(-5).join('\n')}`));
    }, timeoutMs);
    createInterface({ input: child.stdout! }).on('line', (l) => {
      if (l.includes(' ready: ')) {
        clearTimeout(timer);
        resolve(proc);
      }
    });
    void exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(
        new Error(`node ${node} exited (${code ?? signal}) before ready: ${stderr.slice(-5).join('\n')}`),
      );
    });
  });
}

/** Runs the remcopy CLI; resolves with its exit code and its stdout and stderr together. */
export function runCli(...args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI_MAIN, ...args], (e, stdout, stderr) => {
      const code = e === null ? 0 : typeof e.code === 'number' ? e.code : -1;
      resolve({ code, out: `${stdout}${stderr}` });
    });
  });
}
