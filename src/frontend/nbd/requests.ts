/**
 * The rules a transmission request must pass before it reaches the backend, as pure functions:
 * which flags each command takes, bounds, alignment, and the NBD errno for each refusal; and the
 * clamping of backend extents into a BLOCK_STATUS reply. transmission.ts applies them.
 *
 * Errno choices (doc/proto.md "Error values"): EPERM for WRITE/TRIM/WRITE_ZEROES on a read-only
 * export; EINVAL for unknown or inapplicable flags, misalignment, oversized READ/WRITE/CACHE,
 * and READ/TRIM/CACHE/BLOCK_STATUS past the end; ENOSPC for WRITE/WRITE_ZEROES past the end.
 */
import type { Extent } from '../backend.js';
import { BLOCK_SIZE_MIN_BYTES, Cmd, CmdFlag, NbdErrno, REQUEST_LENGTH_MAX_BYTES, TFlag } from './protocol.js';

export interface RequestRules {
  readonly sizeBytes: number;
  readonly readOnly: boolean;
  /** base:allocation was negotiated for this export (BLOCK_STATUS allowed). */
  readonly baseAllocation: boolean;
  /** Command flags allowed per command type (index = type). */
  readonly allowedFlags: readonly number[];
}

export interface ExtentOut {
  readonly length: number;
  readonly flags: number;
}

const COMMAND_NAMES = ['READ', 'WRITE', 'DISC', 'FLUSH', 'TRIM', 'CACHE', 'WRITE_ZEROES', 'BLOCK_STATUS'];

/**
 * Flags each command accepts, given the transmission flags we advertised: FUA on every command
 * if SEND_FUA (the spec says the server MUST accept it anywhere then); DF nowhere, since SEND_DF
 * is not advertised; NO_HOLE and FAST_ZERO (if advertised) on WRITE_ZEROES; REQ_ONE on
 * BLOCK_STATUS.
 */
export function allowedFlagsFor(transmissionFlags: number): number[] {
  const fua = (transmissionFlags & TFlag.SEND_FUA) !== 0 ? CmdFlag.FUA : 0;
  const fastZero = (transmissionFlags & TFlag.SEND_FAST_ZERO) !== 0 ? CmdFlag.FAST_ZERO : 0;
  const allowed: number[] = [];
  allowed[Cmd.READ] = fua;
  allowed[Cmd.WRITE] = fua;
  allowed[Cmd.DISC] = fua;
  allowed[Cmd.FLUSH] = fua;
  allowed[Cmd.TRIM] = fua;
  allowed[Cmd.CACHE] = fua;
  allowed[Cmd.WRITE_ZEROES] = fua | CmdFlag.NO_HOLE | fastZero;
  allowed[Cmd.BLOCK_STATUS] = fua | CmdFlag.REQ_ONE;
  return allowed;
}

/** 0 if a known, non-DISC request may run, else the NBD errno to answer with. */
export function checkRequest(
  r: RequestRules,
  type: number,
  flags: number,
  offset: number,
  length: number,
): number {
  const writes = type === Cmd.WRITE || type === Cmd.TRIM || type === Cmd.WRITE_ZEROES;
  if (writes && r.readOnly) return NbdErrno.EPERM;
  if ((flags & ~(r.allowedFlags[type] ?? 0)) !== 0) return NbdErrno.EINVAL;
  if (type === Cmd.FLUSH) return 0; // offset and length are reserved: ignored.
  if (type === Cmd.BLOCK_STATUS && (!r.baseAllocation || length === 0)) return NbdErrno.EINVAL;
  // Only requests whose length is reflected in a payload are bound by the maximum block size;
  // TRIM and WRITE_ZEROES are not (nbdcopy zeroes whole holes, as nbdkit allows).
  const bounded = type === Cmd.READ || type === Cmd.WRITE || type === Cmd.CACHE;
  if (bounded && length > REQUEST_LENGTH_MAX_BYTES) return NbdErrno.EINVAL;
  if (offset % BLOCK_SIZE_MIN_BYTES !== 0) return NbdErrno.EINVAL;
  // A BLOCK_STATUS length is only a hint: it need not be aligned.
  if (type !== Cmd.BLOCK_STATUS && length % BLOCK_SIZE_MIN_BYTES !== 0) return NbdErrno.EINVAL;
  if (offset + length > r.sizeBytes) {
    return type === Cmd.WRITE || type === Cmd.WRITE_ZEROES ? NbdErrno.ENOSPC : NbdErrno.EINVAL;
  }
  return 0;
}

/** A human-readable reason for a refusal, sent in structured ERROR chunks. */
export function describeRefusal(
  type: number,
  errno: number,
  offset: number,
  length: number,
  sizeBytes: number,
) {
  const cmd = COMMAND_NAMES[type] ?? `command ${type}`;
  const where = `offset ${offset} length ${length}`;
  switch (errno) {
    case NbdErrno.EPERM:
      return `${cmd}: export is read-only`;
    case NbdErrno.ENOSPC:
      return `${cmd}: ${where} is past the end (size ${sizeBytes})`;
    default:
      return `${cmd}: invalid request (${where}; check flags, alignment to ${BLOCK_SIZE_MIN_BYTES}, size ${sizeBytes})`;
  }
}

/**
 * The extents to report for a request of `length` bytes: at most `max`, each nonzero, adjacent
 * equal flags merged, their sum no more than `length`; one extent of status 0 if the backend gave
 * nothing usable (0 is always a safe status).
 */
export function clampExtents(extents: readonly Extent[], length: number, max: number): ExtentOut[] {
  const out: { length: number; flags: number }[] = [];
  let left = length;
  for (const e of extents) {
    if (left === 0) break;
    const len = Math.min(Math.floor(e.length), left);
    if (!(len > 0)) continue;
    const flags = e.flags >>> 0;
    const last = out[out.length - 1];
    if (last && last.flags === flags) last.length += len;
    else if (out.length < max) out.push({ length: len, flags });
    else break;
    left -= len;
  }
  if (out.length === 0) out.push({ length, flags: 0 });
  return out;
}
