/**
 * `remcopy status`: asks every node of the file for its status over the management API and
 * prints one table (or JSON). A node that does not answer is shown as down, not as an error.
 */
import { ExitCode } from '../core/errors.js';
import { apiCall } from '../node/api.js';
import { loadConfig } from '../node/config.js';

interface NodeStatus {
  node: string;
  volumes: { name: string; sizeBytes: number; role: string; group?: string }[];
  groups: { name: string; role: string; seqWritten: number }[];
  journal: { usedBytes: number; bytesMax: number; records: number };
  writePath: { recordsAppended: number; throttling: boolean; rejectedJournalFull: number };
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
            status: (await apiCall(n.api, topo.secret, 'GET', '/v1/status')) as NodeStatus,
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
    for (const g of s.groups)
      lines.push(`  group ${g.name.padEnd(16)} ${g.role.padEnd(7)} seq written ${g.seqWritten}`);
    for (const v of s.volumes) {
      lines.push(
        `  volume ${v.name.padEnd(15)} ${mib(v.sizeBytes).padStart(12)}  ${v.role}${v.group ? ` of ${v.group}` : ''}`,
      );
    }
  }
  return `${lines.join('\n')}\n`;
}
