/**
 * Assertions that stay on in production (TigerBeetle's TIGER_STYLE).
 *
 * `assert` is for programmer errors: a broken invariant crashes the process, because continuing
 * could corrupt a copy. Operating errors (a bad frame from a peer, ENOSPC, a torn journal tail)
 * are never asserted: they are typed results, handled, counted and logged.
 */
export class AssertionError extends Error {
  override name = 'AssertionError';
}

export function assert(cond: unknown, message: string): asserts cond {
  if (!cond) throw new AssertionError(`assertion failed: ${message}`);
}

/** Exhaustiveness check for switches over unions. */
export function unreachable(x: never): never {
  throw new AssertionError(`unreachable: ${JSON.stringify(x)}`);
}
