#!/usr/bin/env -S GLIBC_TUNABLES=glibc.malloc.trim_threshold=268435456:glibc.malloc.mmap_threshold=33554432:${GLIBC_TUNABLES} node --initial-heap-size=128
/**
 * The `remcopy` command. Exit codes (README.md): 0 ok, 1 a command ran and failed, 2 bad usage or
 * bad configuration (nothing was started or changed).
 */
import type { FailbackOptions } from './failback.js';
import { runFailback } from './failback.js';
import { Command, CommanderError } from 'commander';
import { ExitCode, RemcopyError } from '../core/errors.js';
import { runDemo } from './demo.js';
import type { PairOptions, TakeoverOptions, VerifyOptions } from './manage.js';
import { runPairCommand, runTakeover, runVerify } from './manage.js';
import { runNode, runUp } from './run.js';
import { runStatus } from './status.js';
import type { CheckpointOptions, SnapshotsOptions } from './markers.js';
import { runCheckpoint, runSnapshots } from './markers.js';

function program(setCode: (code: number) => void): Command {
  const run =
    <A extends unknown[]>(f: (...a: A) => Promise<number>) =>
    async (...a: A): Promise<void> => {
      setCode(await f(...a));
    };
  const p = new Command('remcopy')
    .description('consistent remote copy of block volumes')
    .exitOverride()
    .showHelpAfterError();
  p.command('node')
    .description('run one node of the configuration in the foreground')
    .requiredOption('--config <file>', 'topology YAML file')
    .requiredOption('--node <name>', 'which node of the file to run')
    .action(run((o: { config: string; node: string }) => runNode(o.config, o.node)));
  p.command('up')
    .description('run every node of the configuration on this machine (Ctrl-C stops them cleanly)')
    .requiredOption('--config <file>', 'topology YAML file')
    .action(run((o: { config: string }) => runUp(o.config)));
  p.command('status')
    .description('per node: volumes, groups, sequence numbers, journal usage')
    .requiredOption('--config <file>', 'topology YAML file')
    .option('--json', 'print JSON')
    .option('--watch', 'refresh every second until Ctrl-C')
    .action(run((o: { config: string; json?: boolean; watch?: boolean }) => runStatus(o.config, o)));
  p.command('takeover')
    .description(
      'promote the target of a group (or of every group of a set, at one cut): writable, epoch + 1',
    )
    .requiredOption('--config <file>', 'topology YAML file')
    .option('--group <name>', 'the group to take over')
    .option('--set <name>', 'take over every group of this consistency set at one cut')
    .option(
      '--snapshot <n>',
      'with --set: take over at marker snapshot N (a set across nodes takes the newest every target has)',
    )
    .option(
      '--force',
      "take over at the target's last cut even when the source answers, or while the copy or a resync is incomplete (the image may not be consistent)",
    )
    .option('--json', 'print JSON')
    .action(run((o: TakeoverOptions & { config: string }) => runTakeover(o.config, o)));
  p.command('failback')
    .description(
      'after a takeover: the old source becomes the target of the new one; only the chunks either side changed since are copied',
    )
    .requiredOption('--config <file>', 'topology YAML file')
    .option('--group <name>', 'the group to fail back')
    .option('--set <name>', 'fail back every group of this consistency set')
    .option('--json', 'print JSON')
    .action(run((o: FailbackOptions & { config: string }) => runFailback(o.config, o)));
  p.command('suspend')
    .description(
      'suspend a group: its writes are tracked in a dirty bitmap at the source, nothing is shipped',
    )
    .requiredOption('--config <file>', 'topology YAML file')
    .requiredOption('--group <name>', 'the group to suspend')
    .option('--json', 'print JSON')
    .action(run((o: PairOptions & { config: string }) => runPairCommand(o.config, 'suspend', o)));
  p.command('resume')
    .description('resume a suspended group: a delta resync copies the dirty chunks, then it is a pair again')
    .requiredOption('--config <file>', 'topology YAML file')
    .requiredOption('--group <name>', 'the group to resume')
    .option('--force', 'resume even while the link to the target is down')
    .option('--json', 'print JSON')
    .action(run((o: PairOptions & { config: string }) => runPairCommand(o.config, 'resume', o)));
  p.command('verify')
    .description('compare source and target of a group at one consistent point; exit 1 on a mismatch')
    .requiredOption('--config <file>', 'topology YAML file')
    .requiredOption('--group <name>', 'the group to verify')
    .option('--chunk <bytes>', 'checksum chunk size in bytes', '1048576')
    .option('--timeout <ms>', 'how long the target may take to catch up (writes are held meanwhile)', '30000')
    .option('--json', 'print JSON')
    .action(run((o: VerifyOptions & { config: string }) => runVerify(o.config, o)));
  p.command('checkpoint')
    .description('one consistent point across every node of a consistency set: prints its marker number N')
    .requiredOption('--config <file>', 'topology YAML file')
    .requiredOption('--set <name>', 'the consistency set')
    .option('--timeout <ms>', 'how long every target may take to reach the marker', '60000')
    .option('--json', 'print JSON')
    .action(run((o: CheckpointOptions & { config: string }) => runCheckpoint(o.config, o)));
  p.command('snapshots')
    .description('list the snapshots of the target volumes of a consistency set; delete some')
    .requiredOption('--config <file>', 'topology YAML file')
    .requiredOption('--set <name>', 'the consistency set')
    .option('--delete <N>', "delete marker N's snapshots")
    .option('--keep <K>', 'delete all but the newest K snapshots of each volume')
    .option('--json', 'print JSON')
    .action(run((o: SnapshotsOptions & { config: string }) => runSnapshots(o.config, o)));
  p.command('demo')
    .description(
      'two sites in a temporary directory: bank transfers replicated, checked at live cuts, verified, taken over',
    )
    .option('--keep', 'keep the temporary directory')
    .action(run((o: { keep?: boolean }) => runDemo(o)));
  return p;
}

export async function main(argv: string[]): Promise<number> {
  try {
    let code: number = ExitCode.ok;
    await program((c) => {
      code = c;
    }).parseAsync(argv, { from: 'user' });
    return code;
  } catch (e) {
    return reportError(e);
  }
}

function reportError(e: unknown): number {
  if (e instanceof CommanderError) {
    return e.exitCode === 0 ? ExitCode.ok : ExitCode.usage;
  }
  if (e instanceof RemcopyError) {
    process.stderr.write(`remcopy: ${e.message}\n`);
    return e.code === 'RC_ERR_CONFIG' || e.code === 'RC_ERR_USAGE' || e.code === 'RC_ERR_UNKNOWN_NODE'
      ? ExitCode.usage
      : ExitCode.failure;
  }
  process.stderr.write(`remcopy: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  return ExitCode.failure;
}

const code = await main(process.argv.slice(2));
process.exitCode = code;
