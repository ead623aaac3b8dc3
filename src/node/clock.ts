/** The node's wall clock in microseconds (write times in `clock` mode, link heartbeats). */
import type { TimeUs } from '../core/types.js';
import { timeUs } from '../core/types.js';

export function nowUs(): TimeUs {
  return timeUs(Math.floor((performance.timeOrigin + performance.now()) * 1000));
}
