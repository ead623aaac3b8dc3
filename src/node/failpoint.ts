/**
 * Crash points for the real-process tests: with REMCOPY_FAILPOINT=<name> in its environment, a node
 * dies at that point as if killed (SIGKILL: no cleanup, nothing flushed), so a test can restart it
 * from a state no clean stop leaves. Unset, a failpoint costs one comparison.
 */
export function failpoint(name: string): void {
  if (process.env.REMCOPY_FAILPOINT === name) process.kill(process.pid, 'SIGKILL');
}
