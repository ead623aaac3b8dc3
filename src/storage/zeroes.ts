/** Zero detection over buffers, for the journal's recovery, the initial copy, apply and BLOCK_STATUS. */

const ZEROES = Buffer.alloc(64 * 1024);

/** True when buf[from, to) is all zero; compares slice by slice with a zero buffer (native memcmp). */
export function isZero(buf: Buffer, from = 0, to = buf.length): boolean {
  for (let at = from; at < to; at += ZEROES.length) {
    const n = Math.min(ZEROES.length, to - at);
    if (!buf.subarray(at, at + n).equals(ZEROES.subarray(0, n))) return false;
  }
  return true;
}
