/**
 * Client-side wire helpers for tests that talk raw protocol bytes to our servers. The NBD request
 * encoder is written here independently of src/frontend/nbd on purpose: a test must not encode
 * with the code it tests.
 */
import type { Request } from '../frontend/native/protocol.js';

export function u32be(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n, 0);
  return b;
}

/** An NBD transmission request header (doc/proto.md): magic, flags, type, handle, offset, length. */
export function nbdRequest(type: number, handle: number, offset: number, length: number, flags = 0): Buffer {
  const b = Buffer.alloc(28);
  b.writeUInt32BE(0x25609513, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(BigInt(handle), 8);
  b.writeBigUInt64BE(BigInt(offset), 16);
  b.writeUInt32BE(length, 24);
  return b;
}

/** A native-protocol request with every field not given set to its neutral value. */
export function nativeRequest(fields: Partial<Request> & Pick<Request, 'type'>): Request {
  return {
    flags: 0,
    reserved: 0,
    cookie: 1n,
    handle: 0,
    length: fields.payload?.length ?? 0,
    offset: 0n,
    writeTimeUs: 0n,
    payload: Buffer.alloc(0),
    ...fields,
  };
}
