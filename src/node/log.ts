/**
 * Logging: one shape (`Log`) for every part, backed by pino (JSON lines on stderr, so stdout
 * stays free for command output). Tests pass their own `Log` to capture what was said.
 */
import { pino } from 'pino';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export type Log = (level: LogLevel, msg: string, fields?: object) => void;

export function makeLog(name: string, level: LogLevel = 'info'): Log {
  const p = pino(
    { level: process.env.REMCOPY_LOG_LEVEL ?? level, base: { node: name } },
    pino.destination(2),
  );
  return (lvl, msg, fields) => p[lvl](fields ?? {}, msg);
}

export const silentLog: Log = () => {};
