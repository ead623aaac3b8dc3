/**
 * `remcopy status`: asks every node of the file for its status over the management API and
 * prints one table (or JSON). A node that does not answer is shown as down, not as an error.
 */
import { ExitCode } from '../core/errors.js';
import { apiCall, endpointOf } from '../node/api.js';
import { loadConfig } from '../node/config.js';

/** A group as a node reports it: the source side (seqWritten...) or the target side (seqArrived...). */
export interface GroupLine {
  name: string;
  role: 'source' | 'target' | 'promoted';
  state: string;
  epoch: number;
  linkUp: boolean;
  seqWritten?: number;
  seqSent?: number;
  seqArrived: number;
  seqApplied: number;
  lagRecords?: number;
  lagBytes?: number;
  lagMs?: number;
  recordsUnapplied?: number;
  copy?: { bytesDone: number; bytesTotal: number };
  dirtyBytes?: number;
  resync?: { bytesDone: number; bytesTotal: number; rateBytesPerSec: number; etaSeconds?: number };
  lastError?: string;
  reason?: string;
}

interface NodeStatus {
  node: string;
  volumes: { name: string; sizeBytes: number; role: string; group?: string }[];
  groups: GroupLine[];
  journal: { usedBytes: number; bytesMax: number; records: number };
  writePath: { recordsAppended: number; throttling: boolean; rejectedJournalFull: number };
  markers?: {
    sets: {
      set: string;
      reached: number;
      waiting: Record<string, number>;
      awaitingGo?: number;
      abnormal?: string;
      snapshots: { volume: string; numbers: number[]; usedBytes: number }[];
    }[];
  };
  cycles?: {
    set: string;
    cycleSeconds: number;
    cycles: number;
    failures: number;
    lastMarker?: number;
    lastError?: string;
    lastErrorAgeMs?: number;
    cycleMs: { p50?: number; p99?: number };
    freezeMs: { p50?: number; p99?: number };
    nodes?: Record<
      string,
      { freezeMs: { p50?: number; p99?: number }; freezeAnswerMs: { p50?: number; p99?: number } }
    >;
    consistentPointAgeMs?: number;
  }[];
}

const ms = (v: number | undefined): string => (v === undefined ? '-' : `${v.toFixed(1)} ms`);

/** Marker lines of a node: per set its last snapshot and snapshots; per coordinated set its cycles. */
function markerLines(s: NodeStatus): string[] {
  const lines: string[] = [];
  for (const m of s.markers?.sets ?? []) {
    const waits = Object.entries(m.waiting)
      .map(([g, n]) => `${g}@${n}`)
      .join(' ');
    const snaps = m.snapshots.map((v) => `${v.volume}: ${v.numbers.length} (${mib(v.usedBytes)})`).join(', ');
    lines.push(
      `  set ${m.set.padEnd(14)} snapshot @${m.reached}${waits ? `  waiting ${waits}` : ''}${m.awaitingGo ? `  awaiting go @${m.awaitingGo}` : ''}${snaps ? `  snapshots ${snaps}` : ''}${m.abnormal ? `  ABNORMAL: ${m.abnormal}` : ''}`,
    );
  }
  for (const c of s.cycles ?? []) {
    const age =
      c.consistentPointAgeMs === undefined ? '-' : `${(c.consistentPointAgeMs / 1000).toFixed(1)} s`;
    lines.push(
      `  cycles ${c.set.padEnd(11)} every ${c.cycleSeconds} s: ${c.cycles} done, ${c.failures} failed, last marker ${c.lastMarker ?? '-'}, cycle p50 ${ms(c.cycleMs.p50)}, freeze p50 ${ms(c.freezeMs.p50)} p99 ${ms(c.freezeMs.p99)}, consistent point age ${age}${c.lastError ? `  last failure ${((c.lastErrorAgeMs ?? 0) / 1000).toFixed(0)} s ago: ${c.lastError}` : ''}`,
    );
    for (const [n, v] of Object.entries(c.nodes ?? {})) {
      lines.push(
        `    ${n.padEnd(12)} freeze p50 ${ms(v.freezeMs.p50)} p99 ${ms(v.freezeMs.p99)}, freeze answered p50 ${ms(v.freezeAnswerMs.p50)} p99 ${ms(v.freezeAnswerMs.p99)}`,
      );
    }
  }
  return lines;
}

export async function runStatus(configFile: string, o: { json?: boolean; watch?: boolean }): Promise<number> {
  const topo = loadConfig(configFile);
  for (;;) {
    const all = await Promise.all(
      [...topo.nodes.values()].map(async (n) => {
        try {
          return {
            name: n.name,
            up: true as const,
            status: (await apiCall(endpointOf(n), topo.secret, 'GET', '/v1/status')) as NodeStatus,
          };
        } catch (e) {
          return { name: n.name, up: false as const, error: String((e as Error).message) };
        }
      }),
    );
    if (o.json) process.stdout.write(`${JSON.stringify(all, null, 2)}\n`);
    else {
      if (o.watch) process.stdout.write('\x1b[2J\x1b[H');
      process.stdout.write(render(all));
    }
    if (!o.watch) return all.every((a) => a.up) ? ExitCode.ok : ExitCode.failure;
    await new Promise((r) => setTimeout(r, 1000));
  }
}

export function mib(bytes: number): string {
  return `${(bytes / 1048576).toFixed(1)} MiB`;
}

function render(
  all: ({ name: string; up: true; status: NodeStatus } | { name: string; up: false; error: string })[],
): string {
  const lines: string[] = [];
  for (const a of all) {
    if (!a.up) {
      lines.push(`${a.name}: DOWN (${a.error})`);
      continue;
    }
    const s = a.status;
    const j = s.journal;
    lines.push(
      `${a.name}: up  journal ${mib(j.usedBytes)} / ${mib(j.bytesMax)} (${j.records} records)  writes journalled ${s.writePath.recordsAppended}${s.writePath.throttling ? '  THROTTLING' : ''}`,
    );
    for (const g of s.groups) lines.push(`  group ${g.name.padEnd(12)} ${groupLine(g)}`);
    lines.push(...markerLines(s));
    for (const v of s.volumes) {
      lines.push(
        `  volume ${v.name.padEnd(15)} ${mib(v.sizeBytes).padStart(12)}  ${v.role}${v.group ? ` of ${v.group}` : ''}`,
      );
    }
  }
  return `${lines.join('\n')}\n`;
}

/** One line per group: state, link, the seq pipeline, lag, copy progress, the last error. */
export function groupLine(g: GroupLine): string {
  const parts = [`${g.role.padEnd(6)} ${g.state.padEnd(8)} e${g.epoch} link ${g.linkUp ? 'up  ' : 'DOWN'}`];
  if (g.role === 'source') {
    parts.push(
      `seq written ${g.seqWritten} sent ${g.seqSent} arrived ${g.seqArrived} applied ${g.seqApplied}`,
    );
    parts.push(`lag ${g.lagRecords} rec ${mib(g.lagBytes ?? 0)} ${g.lagMs} ms`);
    if (g.copy && g.state === 'copy') {
      parts.push(`copy ${Math.floor((100 * g.copy.bytesDone) / Math.max(1, g.copy.bytesTotal))}%`);
    }
    if (g.resync) {
      const r = g.resync;
      const pct = r.bytesTotal === 0 ? 100 : Math.floor((100 * r.bytesDone) / r.bytesTotal);
      const eta = r.etaSeconds === undefined ? '?' : `${r.etaSeconds} s`;
      parts.push(`resync ${pct}% of ${mib(r.bytesTotal)} at ${mib(r.rateBytesPerSec)}/s eta ${eta}`);
    } else if (g.dirtyBytes) parts.push(`dirty ${mib(g.dirtyBytes)}`);
  } else {
    parts.push(`seq arrived ${g.seqArrived} applied ${g.seqApplied} (${g.recordsUnapplied ?? 0} to apply)`);
  }
  const why = g.lastError ?? g.reason;
  if (why) parts.push(`(${why})`);
  return parts.join('  ');
}
