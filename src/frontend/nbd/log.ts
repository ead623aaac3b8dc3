/**
 * The NBD server's logging hook. The daemon passes its logger in; tests pass a collector. Fields
 * always include `remote` (the client address) for connection-level events.
 */
export type NbdLogLevel = 'debug' | 'info' | 'warn' | 'error';

export type NbdLogger = (level: NbdLogLevel, msg: string, fields: Record<string, unknown>) => void;

export const silentLogger: NbdLogger = () => {};
