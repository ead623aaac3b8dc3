/**
 * How a `remcopy node` process is started: `remcopy up`, the demo and the tests' real-process
 * layer all spawn it through nodeProcessArgs and nodeProcessEnv, so they run it the way the
 * `remcopy` bin does.
 *
 * NODE_PROCESS_V8_FLAGS: a node's JavaScript heap stays small (about 13 MB live) while megabytes
 * of buffers a second pass through it (payloads kept until the target reports them, frames kept
 * until applied). V8 sizes its old-generation limit from that small live size, and under such
 * load it then ran a full mark-compact every 40-80 ms: measured with --trace-gc, 118 full GCs in
 * 10 s of fio 1 MiB writes on the source node, 35% of its CPU in marking and sweeping (perf).
 * Starting with a larger initial heap keeps the limit above the churn: 14-26 full GCs instead,
 * and CPU per replicated record fell by about a quarter (bench/cost.ts: 1 MiB writes 10.1-10.7
 * -> 7.4-8.0 ms on a and b together; 4 KiB writes 81-105 -> 68-74 us). The heap still collects
 * as before; only full collections wait until 128 MB have been allocated in the old generation.
 * V8 takes this flag only on its command line (NODE_OPTIONS refuses it), so the bin's shebang
 * (src/cli/main.ts) carries the same flag: keep the two equal.
 */
import { fileURLToPath } from 'node:url';

export const NODE_PROCESS_V8_FLAGS: readonly string[] = ['--initial-heap-size=128'];

/**
 * NODE_PROCESS_MALLOC_TUNABLES: glibc's malloc gives the top of its heap back to the kernel once
 * 128 KiB of it are free, and serves allocations of 128 KiB and more (a threshold it raises only
 * slowly) with mmap. A node frees and allocates buffers at hundreds of MB/s (socket reads, payload
 * copies), so the same memory went back and forth: perf showed page faults under tcp_recvmsg in
 * 46% of a plain node's main thread under fio 1 MiB writes, each fault first touch of a page the
 * VM host had taken back. With up to 256 MiB kept on the heap and allocations below 32 MiB
 * served from it, measured over NBD (fio, 8 s, one run each way): the journal alone 32 221 ->
 * 42 506 IOPS rand4k, 1 639 -> 1 918 writes/s flush4k, 379 -> 406 MB/s seq1m; a plain volume
 * 946 -> 1 641 MB/s seq1m. Resident memory under those loads grew by about 10 MiB (238 -> 247).
 * The bin's shebang (src/cli/main.ts) sets the same, ahead of a GLIBC_TUNABLES of the user's own
 * (which then wins): keep the two equal.
 */
export const NODE_PROCESS_MALLOC_TUNABLES =
  'glibc.malloc.trim_threshold=268435456:glibc.malloc.mmap_threshold=33554432';

/** The environment of a node process: `env` with the malloc tunables ahead of its own. */
export function nodeProcessEnv(env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const own = env.GLIBC_TUNABLES ?? '';
  if (own.startsWith(NODE_PROCESS_MALLOC_TUNABLES)) return { ...env };
  return {
    ...env,
    GLIBC_TUNABLES: own === '' ? NODE_PROCESS_MALLOC_TUNABLES : `${NODE_PROCESS_MALLOC_TUNABLES}:${own}`,
  };
}

/** The CLI entry point (dist/src/cli/main.js). */
export const CLI_MAIN = fileURLToPath(new URL('./main.js', import.meta.url));

/** Arguments for process.execPath that run node `name` of `configFile` in the foreground. */
export function nodeProcessArgs(configFile: string, name: string): string[] {
  return [...NODE_PROCESS_V8_FLAGS, CLI_MAIN, 'node', '--config', configFile, '--node', name];
}
