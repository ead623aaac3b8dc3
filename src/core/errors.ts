/**
 * Stable error codes (fastify's FST_ERR_* table). Every operating error a user or a peer can see
 * carries one of these codes; README.md lists them, and test/unit/errors.test.ts keeps the two in
 * step. Never renumber or reuse a code: scripts match on them.
 */
export const ErrorCodes = {
  RC_ERR_CONFIG: 'invalid configuration file',
  RC_ERR_USAGE: 'invalid command-line usage',
  RC_ERR_VOLUME_SIZE: 'existing volume file has the wrong size',
  RC_ERR_JOURNAL_CORRUPT:
    'journal has a damaged record below its durable point, or (no durable point) one followed by valid ones, or lost a segment file',
  RC_ERR_JOURNAL_FULL: 'journal is full',
  RC_ERR_JOURNAL_IO: 'journal I/O error',
  RC_ERR_OUT_OF_RANGE: 'request is outside the volume',
  RC_ERR_READ_ONLY: 'volume is read-only here',
  RC_ERR_NO_SPACE: 'no space left on the device',
  RC_ERR_IO: 'volume I/O error',
  RC_ERR_PROTOCOL: 'malformed request from a client or peer',
  RC_ERR_UNKNOWN_VOLUME: 'no such volume on this node',
  RC_ERR_UNKNOWN_NODE: 'no such node in the configuration',
  RC_ERR_AUTH: 'authentication failed',
  RC_ERR_SHUTDOWN: 'node is shutting down',
  RC_ERR_LISTEN: 'cannot listen on a configured address',
  RC_ERR_TIMEOUT: 'a peer or an operation did not answer in time',
  RC_ERR_FENCED: 'a higher epoch of the group exists elsewhere: this node no longer acts as its source',
  RC_ERR_RESUME: 'source and target histories of a group do not join (a resync is needed)',
  RC_ERR_STATE: 'the group is not in a state that allows this operation',
  RC_ERR_MISMATCH: 'source and target differ',
  RC_ERR_SNAPSHOT: 'snapshot metadata is corrupt or does not match its volume',
  RC_ERR_UNKNOWN_SNAPSHOT: 'no such snapshot of this volume',
  RC_ERR_SNAPSHOT_NUMBER: 'a new snapshot needs a positive integer number above every existing one',
} as const;
export type ErrorCode = keyof typeof ErrorCodes;

/** An operating error with a stable code. Never used for programmer errors (see assert.ts). */
export class RemcopyError extends Error {
  override name = 'RemcopyError';
  constructor(
    readonly code: ErrorCode,
    detail: string,
  ) {
    super(`${code}: ${detail}`);
  }
}

/** CLI exit codes; README.md documents them. */
export const ExitCode = {
  ok: 0,
  /** A command ran but failed (verify mismatch, a node could not start, I/O error). */
  failure: 1,
  /** Bad usage or bad configuration: nothing was started or changed. */
  usage: 2,
} as const;
