/**
 * Loads the topology file (DESIGN.md §5; every key is in doc/config.md) into a normalised,
 * checked `Topology`: sizes in bytes, durations in ms, absolute paths, defaults filled in.
 *
 *   YAML text --yaml--> plain value --configSchema (config-schema.ts)--> per-key checked value
 *             --assemble (here)--> Topology, after the checks that relate keys to each other
 *
 * Bad input never gets past here: every problem found becomes one line `file: key.path: what`
 * of a ConfigError (code RC_ERR_CONFIG; the CLI prints it and exits 2). All problems of a stage
 * are reported together; the cross-key checks run only once every key is well-formed on its own.
 * Relative paths (dataDir, volume files, TLS files) are resolved against the config file's
 * directory, so the same file works from any working directory.
 */
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { LineCounter, parseDocument } from 'yaml';
import { RemcopyError } from '../core/errors.js';
import type { NodeId, WriteTimeMode } from '../core/types.js';
import { nodeIdOf } from '../core/types.js';
import { formatBytes } from '../core/units.js';
import {
  DEFAULT_FREEZE_BOUND_MS,
  DEFAULT_KEEP_SNAPSHOTS,
  type Address,
  type ConfigProblem,
  closest,
  configSchema,
  formatPath,
  type ParsedConfig,
  problemsFromIssues,
} from './config-schema.js';

export type { Address, ConfigProblem } from './config-schema.js';

/** The shortest cluster secret accepted (from the file or REMCOPY_SECRET). */
export const SECRET_CHARS_MIN = 8;
export const SECRET_CHARS_MAX = 1024;
export const SECRET_ENV = 'REMCOPY_SECRET';

export interface VolumeConfig {
  name: string;
  sizeBytes: number;
  /** Absolute: `<dataDir>/volumes/<name>.img` unless the file gives `file`. */
  path: string;
}

export interface JournalConfig {
  bytesMax: number;
  segmentBytes: number;
  fullPolicy: 'throttle' | 'suspend';
  throttleMaxDelayMs: number;
}

export interface TlsConfig {
  certFile: string;
  keyFile: string;
  caFile?: string;
  /** Refuse clients and peers that do not use TLS (default true when `tls` is given). */
  required: boolean;
}

export interface NodeConfig {
  name: string;
  nodeId: NodeId;
  /** Absolute; a relative dataDir in the file is relative to the config file's directory. */
  dataDir: string;
  nbd: Address;
  link: Address;
  api: Address;
  native?: Address;
  writeTime: WriteTimeMode;
  volumes: Map<string, VolumeConfig>;
  journal: JournalConfig;
  /** How many volume extents the activity log can name (src/storage/activity-log.ts). */
  activityLogExtents: number;
  tls?: TlsConfig;
}

export interface GroupConfig {
  name: string;
  source: string;
  target: string;
  mode: 'async' | 'sync';
  transfer: 'push' | 'pull';
  /** Source volume -> target volume, in file order. */
  pairs: Map<string, string>;
  tickMs: number;
  /** Dirty bitmap chunk size in bytes (power of two). */
  bitmapChunkBytes: number;
  /** A link down this long suspends the pair. */
  suspendAfterMs: number;
  /** Resync journalling rate limit in bytes per second; undefined: unlimited. */
  resyncRateBps: number | undefined;
}

export interface Topology {
  /** The config file: absolute for loadConfig, the given source name for parseConfig. */
  file: string;
  /** Absolute directory that relative paths were resolved against. */
  baseDir: string;
  /** REMCOPY_SECRET when set and non-empty, else the file's `secret`. */
  secret: string;
  nodes: Map<string, NodeConfig>;
  groups: Map<string, GroupConfig>;
  /** Set name -> its group names, in file order. */
  consistencySets: Map<string, string[]>;
  /** Set name -> its consistency-cycle settings (defaults when the file lists only groups). */
  setOptions: Map<string, SetOptions>;
}

/** A consistency set's markers, snapshots and cycles (DESIGN.md §3.4; config `consistencySets`). */
export interface SetOptions {
  /** Seconds between consistency cycles run by the coordinator node; undefined: none. */
  readonly cycleSeconds: number | undefined;
  /** Longest a source node holds host writes for one marker; past it, it thaws and the cycle fails. */
  readonly freezeBoundMs: number;
  /** Snapshots kept per target volume: creating one more deletes the oldest. */
  readonly keepSnapshots: number;
  /** After its snapshot a target goes on by itself (`auto`), or when the coordinator says so. */
  readonly resume: 'auto' | 'coordinator';
  /** The node that runs the cycles: given, or the source node of the set's first group. */
  readonly coordinator: string;
}

/** A bad config file. `message` is one line per problem: `file: key.path: what is wrong`. */
export class ConfigError extends RemcopyError {
  override name = 'ConfigError';
  constructor(
    readonly file: string,
    readonly problems: readonly ConfigProblem[],
  ) {
    const lines = problems.map((p) =>
      p.path === '' ? `${file}: ${p.message}` : `${file}: ${p.path}: ${p.message}`,
    );
    super('RC_ERR_CONFIG', lines.join('\n'));
    this.message = lines.join('\n');
  }
}

/** Reads and checks the config file at `path`. Throws ConfigError. */
export function loadConfig(path: string, env: NodeJS.ProcessEnv = process.env): Topology {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const why = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message;
    throw new ConfigError(path, [{ path: '', message: `cannot read the config file: ${why}` }]);
  }
  return build(text, dirname(resolve(path)), path, resolve(path), env);
}

/**
 * Checks config text. `baseDir` is what relative paths are relative to (the file's directory),
 * `sourceName` names the file in messages. Throws ConfigError.
 */
export function parseConfig(
  text: string,
  baseDir: string,
  sourceName: string,
  env: NodeJS.ProcessEnv = process.env,
): Topology {
  return build(text, resolve(baseDir), sourceName, sourceName, env);
}

function build(
  text: string,
  baseDir: string,
  sourceName: string,
  file: string,
  env: NodeJS.ProcessEnv,
): Topology {
  const raw = parseYaml(text, sourceName);
  const problems: ConfigProblem[] = [];
  const secret = checkSecret(raw, env, problems);
  const parsed = configSchema.safeParse(raw, { reportInput: true });
  if (!parsed.success) {
    problems.push(...problemsFromIssues(parsed.error.issues));
    throw new ConfigError(sourceName, problems);
  }
  const topology = assemble(parsed.data, { file, baseDir, secret: secret ?? '' }, problems);
  if (problems.length > 0) throw new ConfigError(sourceName, problems);
  return topology;
}

function parseYaml(text: string, sourceName: string): unknown {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true, merge: true });
  if (doc.errors.length > 0) {
    const problems = doc.errors.map((e) => {
      const { line, col } = lineCounter.linePos(e.pos[0]);
      const what =
        e.code === 'MULTIPLE_DOCS'
          ? 'the file must hold one YAML document, not several'
          : e.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '');
      return { path: `line ${line}, column ${col}`, message: what };
    });
    throw new ConfigError(sourceName, problems);
  }
  let value: unknown;
  try {
    value = doc.toJS({ maxAliasCount: 100 });
  } catch (err) {
    // Alias bombs ("billion laughs") and the like: refused, not expanded.
    throw new ConfigError(sourceName, [{ path: '', message: (err as Error).message.split('\n')[0]! }]);
  }
  if (value === null || value === undefined) {
    throw new ConfigError(sourceName, [
      { path: '', message: 'the file is empty (expected a mapping with nodes)' },
    ]);
  }
  return value;
}

/** The effective secret: REMCOPY_SECRET wins over the file. Type errors in the file are the schema's. */
function checkSecret(raw: unknown, env: NodeJS.ProcessEnv, problems: ConfigProblem[]): string | undefined {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return undefined; // the schema says why
  const fromEnv = env[SECRET_ENV];
  const fromFile = (raw as Record<string, unknown>)['secret'];
  const [secret, key] =
    fromEnv !== undefined && fromEnv !== '' ? [fromEnv, `${SECRET_ENV} (environment)`] : [fromFile, 'secret'];
  if (secret === undefined) {
    problems.push({
      path: 'secret',
      message: `missing: set secret in the file or ${SECRET_ENV} in the environment`,
    });
    return undefined;
  }
  if (typeof secret !== 'string') return undefined;
  if (secret.length < SECRET_CHARS_MIN || secret.length > SECRET_CHARS_MAX) {
    const message = `must be ${SECRET_CHARS_MIN} to ${SECRET_CHARS_MAX} characters, got ${secret.length}`;
    problems.push({ path: key, message });
    return undefined;
  }
  return secret;
}

interface Frame {
  file: string;
  baseDir: string;
  secret: string;
}

function assemble(data: ParsedConfig, frame: Frame, problems: ConfigProblem[]): Topology {
  const nodes = new Map<string, NodeConfig>();
  for (const [name, raw] of Object.entries(data.nodes))
    nodes.set(name, assembleNode(name, raw, frame.baseDir, problems));
  if (nodes.size === 0) problems.push({ path: 'nodes', message: 'must define at least one node' });
  checkNodeClashes(nodes, problems);
  const groups = new Map<string, GroupConfig>();
  for (const [name, raw] of Object.entries(data.groups)) {
    const group = assembleGroup(name, raw, nodes, problems);
    if (group !== undefined) groups.set(name, group);
  }
  checkVolumeMembership(groups, problems);
  const { sets: consistencySets, options: setOptions } = assembleSets(
    data.consistencySets,
    data.groups,
    Object.keys(data.nodes),
    problems,
  );
  return {
    file: frame.file,
    baseDir: frame.baseDir,
    secret: frame.secret,
    nodes,
    groups,
    consistencySets,
    setOptions,
  };
}

type RawNode = ParsedConfig['nodes'][string];

function assembleNode(name: string, raw: RawNode, baseDir: string, problems: ConfigProblem[]): NodeConfig {
  const dataDir = resolve(baseDir, raw.dataDir);
  const volumes = new Map<string, VolumeConfig>();
  for (const [vol, spec] of Object.entries(raw.volumes)) {
    const [sizeBytes, file] = typeof spec === 'number' ? [spec, undefined] : [spec.size, spec.file];
    const path = file === undefined ? defaultVolumePath(dataDir, vol) : resolve(baseDir, file);
    volumes.set(vol, { name: vol, sizeBytes, path });
  }
  const j = raw.journal;
  if (j.size < 2 * j.segmentSize) {
    const message = `${formatBytes(j.size)} must hold at least two segments (segmentSize is ${formatBytes(j.segmentSize)})`;
    problems.push({ path: formatPath(['nodes', name, 'journal', 'size']), message });
  }
  const node: NodeConfig = {
    name,
    nodeId: nodeIdOf(name),
    dataDir,
    nbd: raw.nbd,
    link: raw.link,
    api: raw.api,
    writeTime: raw.writeTime,
    volumes,
    journal: {
      bytesMax: j.size,
      segmentBytes: j.segmentSize,
      fullPolicy: j.full,
      throttleMaxDelayMs: j.throttleMaxDelay,
    },
    activityLogExtents: raw.activityLog.extents,
  };
  if (raw.native !== undefined) node.native = raw.native;
  if (raw.tls !== undefined) {
    const { cert, key, ca, required } = raw.tls;
    node.tls = { certFile: resolve(baseDir, cert), keyFile: resolve(baseDir, key), required };
    if (ca !== undefined) node.tls.caFile = resolve(baseDir, ca);
  }
  return node;
}

const defaultVolumePath = (dataDir: string, volume: string): string =>
  join(dataDir, 'volumes', `${volume}.img`);

const LISTENERS = ['nbd', 'link', 'api', 'native'] as const;

/** Node ids, listen addresses, data directories and volume files must all be distinct. */
function checkNodeClashes(nodes: Map<string, NodeConfig>, problems: ConfigProblem[]): void {
  const ids = new Map<NodeId, string>();
  const listeners = new Map<string, string>();
  const dataDirs = new Map<string, string>();
  const files = new Map<string, string>();
  const clash = (seen: Map<string, string>, key: string, path: string, what: string): void => {
    const first = seen.get(key);
    if (first === undefined) seen.set(key, path);
    else problems.push({ path, message: `${what} is also used by ${first}` });
  };
  for (const node of nodes.values()) {
    const other = ids.get(node.nodeId);
    if (other === undefined) ids.set(node.nodeId, node.name);
    else {
      const message = `node id ${node.nodeId} (a hash of the name) collides with node "${other}"; rename one of them`;
      problems.push({ path: formatPath(['nodes', node.name]), message });
    }
    for (const l of LISTENERS) {
      const a = node[l];
      if (a === undefined) continue;
      const shown = a.host.includes(':') ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
      clash(
        listeners,
        `${a.host.toLowerCase()} ${a.port}`,
        formatPath(['nodes', node.name, l]),
        `address ${shown}`,
      );
    }
    const before = problems.length;
    clash(dataDirs, node.dataDir, formatPath(['nodes', node.name, 'dataDir']), `directory ${node.dataDir}`);
    const dataDirClashed = problems.length > before;
    for (const v of node.volumes.values()) {
      // A shared dataDir already explains why its default volume files clash: say it once.
      if (dataDirClashed && v.path === defaultVolumePath(node.dataDir, v.name)) continue;
      clash(files, v.path, formatPath(['nodes', node.name, 'volumes', v.name]), `volume file ${v.path}`);
    }
  }
}

type RawGroup = ParsedConfig['groups'][string];

function assembleGroup(
  name: string,
  raw: RawGroup,
  nodes: Map<string, NodeConfig>,
  problems: ConfigProblem[],
): GroupConfig | undefined {
  const at = (...rest: string[]): string => formatPath(['groups', name, ...rest]);
  const before = problems.length;
  const source = findNode(raw.source, nodes, at('source'), problems);
  const target = findNode(raw.target, nodes, at('target'), problems);
  if (source !== undefined && source === target) {
    problems.push({ path: at('target'), message: `must differ from source (both are "${raw.source}")` });
  }
  if (raw.mode === 'sync' && raw.transfer === 'pull') {
    const message = 'pull is for mode async only (a sync write is pushed before it is acknowledged)';
    problems.push({ path: at('transfer'), message });
  }
  const pairs = new Map(Object.entries(raw.pairs));
  if (pairs.size === 0)
    problems.push({ path: at('pairs'), message: 'must map at least one source volume to a target volume' });
  const targetsSeen = new Map<string, string>();
  for (const [srcVol, dstVol] of pairs) {
    const sv = source?.volumes.get(srcVol);
    const tv = target?.volumes.get(dstVol);
    if (source !== undefined && sv === undefined)
      problems.push({ path: at('pairs', srcVol), message: noVolume(srcVol, source) });
    if (target !== undefined && tv === undefined)
      problems.push({ path: at('pairs', srcVol), message: noVolume(dstVol, target) });
    const firstSource = targetsSeen.get(dstVol);
    if (firstSource !== undefined) {
      const message = `target volume "${dstVol}" is already paired with source volume "${firstSource}"`;
      problems.push({ path: at('pairs', srcVol), message });
    } else targetsSeen.set(dstVol, srcVol);
    if (sv !== undefined && tv !== undefined && sv.sizeBytes !== tv.sizeBytes) {
      const message = `sizes differ: ${raw.source}/${srcVol} is ${formatBytes(sv.sizeBytes)}, ${raw.target}/${dstVol} is ${formatBytes(tv.sizeBytes)}`;
      problems.push({ path: at('pairs', srcVol), message });
    }
  }
  if (problems.length > before) return undefined;
  const { mode, transfer, tickMs } = raw;
  return {
    name,
    source: raw.source,
    target: raw.target,
    mode,
    transfer,
    pairs,
    tickMs,
    bitmapChunkBytes: raw.bitmapChunk,
    suspendAfterMs: raw.suspendAfter,
    resyncRateBps: raw.resyncRate,
  };
}

function findNode(
  name: string,
  nodes: Map<string, NodeConfig>,
  path: string,
  problems: ConfigProblem[],
): NodeConfig | undefined {
  const node = nodes.get(name);
  if (node === undefined)
    problems.push({ path, message: `no node named "${name}"${hint(name, [...nodes.keys()])}` });
  return node;
}

function noVolume(volume: string, node: NodeConfig): string {
  const names = [...node.volumes.keys()];
  const has = names.length === 0 ? 'it has none' : `it has ${names.join(', ')}`;
  return `no volume "${volume}" on node "${node.name}" (${has})`;
}

function hint(word: string, candidates: readonly string[]): string {
  const guess = closest(word, candidates);
  return guess === undefined ? '' : ` (did you mean "${guess}"?)`;
}

/** A volume belongs to at most one group on its node, as source or as target. */
function checkVolumeMembership(groups: Map<string, GroupConfig>, problems: ConfigProblem[]): void {
  const owner = new Map<string, string>();
  for (const g of groups.values()) {
    for (const [srcVol, dstVol] of g.pairs) {
      for (const [node, vol] of [
        [g.source, srcVol],
        [g.target, dstVol],
      ] as const) {
        const key = `${node}/${vol}`;
        const first = owner.get(key);
        if (first === undefined) owner.set(key, g.name);
        else {
          const message = `volume ${key} already belongs to group "${first}" (a volume is in at most one group on its node)`;
          problems.push({ path: formatPath(['groups', g.name, 'pairs', srcVol]), message });
        }
      }
    }
  }
}

function assembleSets(
  raw: ParsedConfig['consistencySets'],
  groups: ParsedConfig['groups'],
  nodeNames: readonly string[],
  problems: ConfigProblem[],
): { sets: Map<string, string[]>; options: Map<string, SetOptions> } {
  const sets = new Map<string, string[]>();
  const options = new Map<string, SetOptions>();
  const setOf = new Map<string, string>();
  const groupNames = Object.keys(groups);
  for (const [name, entry] of Object.entries(raw)) {
    const members = Array.isArray(entry) ? entry : entry.groups;
    const listPath = Array.isArray(entry) ? ['consistencySets', name] : ['consistencySets', name, 'groups'];
    members.forEach((group, i) => {
      const path = formatPath([...listPath, i]);
      const first = setOf.get(group);
      if (!Object.hasOwn(groups, group))
        problems.push({ path, message: `no group named "${group}"${hint(group, groupNames)}` });
      else if (first === name) problems.push({ path, message: `group "${group}" is listed twice` });
      else if (first !== undefined)
        problems.push({ path, message: `group "${group}" is already in set "${first}"` });
      else setOf.set(group, name);
    });
    sets.set(name, [...members]);
    // A set may span source and target nodes: each target node applies its part of the set, and
    // markers line the parts up at one consistent point (DESIGN.md §3.4).
    const first = Object.hasOwn(groups, members[0]!) ? groups[members[0]!]!.source : nodeNames[0]!;
    const o = Array.isArray(entry) ? undefined : entry;
    if (o?.coordinator !== undefined && !nodeNames.includes(o.coordinator)) {
      problems.push({
        path: formatPath(['consistencySets', name, 'coordinator']),
        message: `no node named "${o.coordinator}"${hint(o.coordinator, nodeNames)}`,
      });
    }
    options.set(name, {
      cycleSeconds: o?.cycleSeconds,
      freezeBoundMs: o?.freezeBound ?? DEFAULT_FREEZE_BOUND_MS,
      keepSnapshots: o?.keepSnapshots ?? DEFAULT_KEEP_SNAPSHOTS,
      resume: o?.resume ?? 'auto',
      coordinator: o?.coordinator ?? first,
    });
    // A group in no set is applied as a set of its own, named after it.
    if (Object.hasOwn(groups, name) && !members.includes(name)) {
      problems.push({
        path: formatPath(['consistencySets', name]),
        message: `a set may not take the name of group "${name}" unless that group is in it`,
      });
    }
  }
  return { sets, options };
}

/** The groups a node takes part in, in file order. Unknown nodes have none. */
export function groupsOfNode(
  t: Topology,
  node: string,
): { asSource: GroupConfig[]; asTarget: GroupConfig[] } {
  const groups = [...t.groups.values()];
  return {
    asSource: groups.filter((g) => g.source === node),
    asTarget: groups.filter((g) => g.target === node),
  };
}

/** What a node's volume does: the source or target side of a group's pair, or nothing. */
export function volumeRole(
  t: Topology,
  node: string,
  volume: string,
): { group?: string; role: 'source' | 'target' | 'none' } {
  for (const g of t.groups.values()) {
    if (g.source === node && g.pairs.has(volume)) return { group: g.name, role: 'source' };
    if (g.target === node && [...g.pairs.values()].includes(volume)) return { group: g.name, role: 'target' };
  }
  return { role: 'none' };
}

/**
 * The topology as it stands after failbacks (DESIGN.md §3.7): a group whose source is now
 * `sourceOf(group)` instead of the config's source has source and target swapped, and its pairs
 * inverted (still source volume -> target volume). Everything else is the config's.
 */
export function effectiveTopology(t: Topology, sourceOf: (group: string) => string | undefined): Topology {
  let changed = false;
  const groups = new Map<string, GroupConfig>();
  for (const [name, g] of t.groups) {
    const src = sourceOf(name);
    if (src === undefined || src === g.source || src !== g.target) {
      groups.set(name, g);
      continue;
    }
    changed = true;
    groups.set(name, reversedGroup(g));
  }
  return changed ? { ...t, groups } : t;
}

/** The group running the other way: source and target swapped, pairs inverted. */
export function reversedGroup(g: GroupConfig): GroupConfig {
  const pairs = new Map([...g.pairs].map(([s, d]) => [d, s] as const));
  return { ...g, source: g.target, target: g.source, pairs };
}

/**
 * The groups of consistency set `set`; a group in no set is a set of its own, named after it.
 * Undefined when the topology has neither.
 */
export function setMembers(t: Topology, set: string): readonly string[] | undefined {
  return t.consistencySets.get(set) ?? (t.groups.has(set) ? [set] : undefined);
}

/** The consistency set a group belongs to, if any. */
export function consistencySetOf(t: Topology, group: string): string | undefined {
  for (const [name, members] of t.consistencySets) if (members.includes(group)) return name;
  return undefined;
}

/** The named node, or RC_ERR_UNKNOWN_NODE (for `remcopy node --node NAME`). */
export function nodeOf(t: Topology, name: string): NodeConfig {
  const node = t.nodes.get(name);
  if (node === undefined) {
    const known = [...t.nodes.keys()].join(', ');
    throw new RemcopyError(
      'RC_ERR_UNKNOWN_NODE',
      `no node "${name}" in ${t.file}${hint(name, [...t.nodes.keys()])} (nodes: ${known})`,
    );
  }
  return node;
}
