/**
 * remcopy's native client library (`import { connect } from 'remcopy/client'`): the host side of
 * the native host protocol, for applications that have their own clock and want it on every
 * write (DESIGN.md §2, §3.1: the patent's "mainframe" host). Plain hosts use NBD instead.
 *
 *   const client = await connect('127.0.0.1:10900');
 *   const vol = await client.open('db');
 *   await vol.write(0, data, { writeTime: new Date(), fua: true });
 *   const back = await vol.read(0, data.length);
 *   await vol.close();
 *   await client.close();
 *
 * Calls may be issued without waiting: they are pipelined on one connection and resolve as the
 * server completes them. As on any block device, the order in which overlapping writes that are in
 * flight together land is undefined; a write issued after another has resolved is ordered after it,
 * here and at every remote copy. Failures reject with NativeError, whose `code` is errno-like.
 * doc/native-protocol.md describes the wire format.
 */
import { decodeOpenInfo, RequestFlag, RequestType } from '../frontend/native/protocol.js';
import { ClientConnection, NativeError, type OutgoingRequest } from './connection.js';

export { NativeError } from './connection.js';

export interface WriteOptions {
  /**
   * The host's write time in microseconds since the Unix epoch: an integer in [0, 2^53).
   * 0 is the same as no time (the node then derives one by its writeTime mode).
   */
  readonly writeTimeUs?: number;
  /** The host's write time as a Date (millisecond precision). Give this or writeTimeUs, not both. */
  readonly writeTime?: Date;
  /** Durable on the node before the promise resolves (NBD FUA). */
  readonly fua?: boolean;
}

/** `'host:port'`, `'[v6addr]:port'`, or `{ host, port }`. */
export type Address = string | { readonly host: string; readonly port: number };

/** Connect to a node's native front end and complete the hello. */
export async function connect(address: Address): Promise<Client> {
  const { host, port } = parseAddress(address);
  return new Client(await ClientConnection.open(host, port));
}

/** One connection to a node; open any number of its volumes on it. */
export class Client {
  /** @internal Use connect(). */
  constructor(private readonly conn: ClientConnection) {}

  /** Open a volume by name. Rejects ENOENT when the node has no such volume. */
  async open(volume: string): Promise<Volume> {
    const payload = Buffer.from(volume, 'utf8');
    const reply = await this.conn.request({
      ...noFields,
      type: RequestType.open,
      length: payload.length,
      payload,
    });
    const info = decodeOpenInfo(reply.payload);
    if ('kind' in info) throw new NativeError('EPROTO', info.message);
    return new Volume(this.conn, volume, info.handle, info.sizeBytes, info.readOnly);
  }

  /** Wait for outstanding requests, then close the connection (open volumes go with it). */
  close(): Promise<void> {
    return this.conn.close();
  }
}

/** An open volume. Offsets and lengths are in bytes. */
export class Volume {
  /** @internal Use Client.open(). */
  constructor(
    private readonly conn: ClientConnection,
    readonly name: string,
    private readonly handle: number,
    readonly sizeBytes: number,
    readonly readOnly: boolean,
  ) {}

  /**
   * Write `data` at `offset`. Resolves when the node has journalled it (and made it durable with
   * `fua`). Do not modify `data` until the promise settles: it is sent without a copy.
   * Rejects EPERM on a read-only volume, ENOSPC past its end, EINVAL on bad arguments.
   */
  async write(offset: number, data: Uint8Array, opts: WriteOptions = {}): Promise<void> {
    checkOffset(offset);
    if (!(data instanceof Uint8Array)) throw new NativeError('EINVAL', 'data must be a Uint8Array');
    checkLength(data.byteLength, this.conn.limits.maxPayloadBytes);
    const payload = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    await this.conn.request({
      type: RequestType.write,
      flags: opts.fua === true ? RequestFlag.fua : 0,
      handle: this.handle,
      length: payload.length,
      offset,
      writeTimeUs: writeTimeUsOf(opts),
      payload,
    });
  }

  /** Read `length` bytes at `offset`. Rejects EINVAL past the end of the volume. */
  async read(offset: number, length: number): Promise<Buffer> {
    checkOffset(offset);
    checkLength(length, this.conn.limits.maxPayloadBytes);
    const reply = await this.conn.request({
      ...noFields,
      type: RequestType.read,
      handle: this.handle,
      offset,
      length,
    });
    return reply.payload;
  }

  /** Resolves when every write resolved before this call is durable on the node. */
  async flush(): Promise<void> {
    await this.conn.request({ ...noFields, type: RequestType.flush, handle: this.handle });
  }

  /** Release the handle; later calls on this Volume reject EBADF. */
  async close(): Promise<void> {
    await this.conn.request({ ...noFields, type: RequestType.close, handle: this.handle });
  }
}

const noFields: Omit<OutgoingRequest, 'type'> = {
  flags: 0,
  handle: 0,
  length: 0,
  offset: 0,
  writeTimeUs: 0,
  payload: Buffer.alloc(0),
};

const MAX_SAFE = Number.MAX_SAFE_INTEGER;

function checkOffset(offset: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0) {
    throw new NativeError('EINVAL', `offset must be a non-negative integer, got ${offset}`);
  }
}

function checkLength(length: number, maxPayloadBytes: number): void {
  if (!Number.isSafeInteger(length) || length < 1 || length > maxPayloadBytes) {
    throw new NativeError('EINVAL', `length must be an integer in [1, ${maxPayloadBytes}], got ${length}`);
  }
}

/** The wire's writeTimeUs for these options: 0 when none was given. */
function writeTimeUsOf(opts: WriteOptions): number {
  const { writeTime, writeTimeUs } = opts;
  if (writeTime !== undefined && writeTimeUs !== undefined) {
    throw new NativeError('EINVAL', 'give writeTime or writeTimeUs, not both');
  }
  if (writeTime !== undefined) {
    if (!(writeTime instanceof Date)) {
      throw new NativeError(
        'EINVAL',
        'writeTime must be a Date; use writeTimeUs for a number of microseconds',
      );
    }
    const ms = writeTime.getTime();
    if (!Number.isFinite(ms) || ms < 0 || ms * 1000 >= MAX_SAFE) {
      throw new NativeError('EINVAL', `writeTime ${String(writeTime)} is not a time after the Unix epoch`);
    }
    return ms * 1000;
  }
  if (writeTimeUs !== undefined) {
    if (!Number.isSafeInteger(writeTimeUs) || writeTimeUs < 0) {
      throw new NativeError('EINVAL', `writeTimeUs must be an integer in [0, 2^53), got ${writeTimeUs}`);
    }
    return writeTimeUs;
  }
  return 0;
}

function parseAddress(address: Address): { host: string; port: number } {
  if (typeof address !== 'string')
    return checkPort(address.host, address.port, `${address.host}:${address.port}`);
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(address) ?? /^([^:]+):(\d+)$/.exec(address);
  if (m === null) throw new NativeError('EINVAL', `address '${address}' is not host:port or [v6addr]:port`);
  return checkPort(m[1]!, Number(m[2]), address);
}

function checkPort(host: string, port: number, text: string): { host: string; port: number } {
  if (host === '' || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new NativeError('EINVAL', `bad address '${text}'`);
  }
  return { host, port };
}
