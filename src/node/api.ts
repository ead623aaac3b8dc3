/**
 * The management HTTP API of a node (JSON), authenticated with the cluster secret as a bearer
 * token (constant-time compare), on every route including /metrics; HTTPS only when the node has
 * `tls` (the token must not cross the network in the clear). Routes:
 *   GET  /v1/status                          node, volumes, groups (source and target side), journal
 *   GET  /metrics                            Prometheus text format, names prefixed remcopy_
 *   GET  /v1/groups/:group/records?fromSeq=N&max=M   headers of retained journal records (no data)
 *   POST /v1/groups/:group/takeover {force?} takeover at this (target) node: DESIGN.md §3.7
 *   POST /v1/sets/:set/takeover {force?, snapshot?}  every group of the set here at one cut, or
 *                                           at snapshot N (required when the set spans nodes)
 *   POST /v1/groups/:group/fence {epoch, by?}  a planned takeover elsewhere: stop acting as source
 *   POST /v1/failback/:step {...}            demote | accept | promote | done: see src/node/failback.ts
 *   POST /v1/groups/:group/suspend           suspend a source group: writes tracked in the dirty bitmap
 *   POST /v1/groups/:group/resume {force?}   resume it: delta resync of the dirty chunks
 *   POST /v1/groups/:group/hold {ms}         hold new host writes of a source group (verify), bounded
 *   POST /v1/groups/:group/unhold
 *   POST /v1/groups/:group/wait-applied {timeoutMs}  until the target applied all written so far
 *   GET  /v1/volumes/:volume/checksums?chunk=N        per-chunk checksums (target: at a completed cut)
 *   POST /v1/sets/:set/read {reads: [{volume, offset, length}]}  bytes of several target volumes
 *                                            read at one completed cut (dependent-write checks)
 *   Markers (DESIGN.md §3.4; src/node/markers.ts, src/mgmt/checkpoint.ts):
 *   POST /v1/sets/:set/freeze {id, boundMs}  hold the set's host writes here, bounded; -> lastMarker
 *   POST /v1/sets/:set/mark {id, marker}     put marker N into the set's groups here and thaw
 *   POST /v1/sets/:set/thaw {id}             thaw without a marker
 *   POST /v1/sets/:set/wait-marker {marker, timeoutMs}  until this target dealt with marker N
 *   POST /v1/sets/:set/go {marker}           a target waiting after its snapshot goes on (fig 19)
 *   POST /v1/sets/:set/abandon {marker}      the checkpoint failed elsewhere: no snapshot N here
 *   GET  /v1/sets/:set/markers               the set's marker state here (source and target)
 *   GET  /v1/volumes/:volume/snapshots       the snapshots of a target volume
 *   POST /v1/volumes/:volume/delete-snapshot {number}
 * Request bodies are bounded; bad input gets a 4xx with a JSON error and changes nothing.
 */
import { timingSafeEqual } from 'node:crypto';
import * as http from 'node:http';
import * as https from 'node:https';
import { readFileSync } from 'node:fs';
import { RemcopyError } from '../core/errors.js';
import type { NodeConfig } from './config.js';
import type { Log } from './log.js';

/** Largest request body accepted. */
const BODY_BYTES_MAX = 64 * 1024;

export interface ApiHandlers {
  status(): unknown;
  metrics(): Promise<string>;
  records(group: string, fromSeq: number, max: number): unknown;
  takeover(kind: 'group' | 'set', name: string, force: boolean, snapshot?: number): Promise<unknown>;
  fence(group: string, epoch: number, by: string): Promise<unknown>;
  failback(step: string, body: unknown): Promise<unknown>;
  suspend(group: string): Promise<unknown>;
  resume(group: string, force: boolean): Promise<unknown>;
  hold(group: string, ms: number): unknown;
  unhold(group: string): unknown;
  waitApplied(group: string, timeoutMs: number): Promise<unknown>;
  checksums(volume: string, chunkBytes: number): Promise<unknown>;
  markers(set: string, action: string, body: Record<string, unknown>): Promise<unknown>;
  snapshots(volume: string, action: string, body: Record<string, unknown>): Promise<unknown>;
  readAtCut(
    set: string,
    reads: readonly { volume: string; offset: number; length: number }[],
  ): Promise<unknown>;
}

/** Bytes one read-at-cut request returns, at most. */
export const READ_AT_CUT_BYTES_MAX = 16 * 1024 * 1024;

/** Most record headers one records request returns. */
export const RECORDS_PER_REQUEST_MAX = 1000;

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** A node's API as a caller reaches it: HTTPS trusting `tls.ca` (Node's roots without one) when set. */
export interface ApiEndpoint {
  readonly host: string;
  readonly port: number;
  readonly tls?: { readonly ca?: Buffer } | undefined;
}

const caCache = new Map<string, Buffer>();

/**
 * How a caller reaches `node`'s API: HTTPS when the node has `tls`, trusting `caFile` (the
 * caller's own CA, for a node calling a peer), else the node's configured `ca`, else Node's roots.
 */
export function endpointOf(node: NodeConfig, caFile?: string): ApiEndpoint {
  if (!node.tls) return node.api;
  const file = caFile ?? node.tls.caFile;
  if (file === undefined) return { ...node.api, tls: {} };
  let ca = caCache.get(file);
  if (ca === undefined) {
    try {
      ca = readFileSync(file);
    } catch (e) {
      throw new RemcopyError(
        'RC_ERR_CONFIG',
        `cannot read the CA certificate ${file} to reach ${node.name}'s API: ${(e as Error).message}`,
      );
    }
    caCache.set(file, ca);
  }
  return { ...node.api, tls: { ca } };
}

export class ApiServer {
  private readonly server: http.Server;
  /**
   * With `tls` (the node's certificate and key) the API is served over HTTPS only: the bearer
   * secret, which also lets a peer open links, never crosses the network in the clear.
   */
  constructor(
    private readonly secret: string,
    private readonly handlers: ApiHandlers,
    private readonly log: Log,
    tls?: { readonly cert: Buffer; readonly key: Buffer },
  ) {
    const onRequest = (req: http.IncomingMessage, res: http.ServerResponse): void => {
      this.route(req, res).catch((e) =>
        this.reply(res, e instanceof ApiError ? e.status : 500, { error: String(e.message ?? e) }),
      );
    };
    this.server = tls
      ? https.createServer({ cert: tls.cert, key: tls.key }, onRequest)
      : http.createServer(onRequest);
    // A client that fails the TLS handshake (plain HTTP, an untrusted certificate) is only logged.
    this.server.on('tlsClientError', (e: Error) =>
      this.log('warn', 'management API: TLS handshake failed', { error: e.message }),
    );
  }

  listen(host: string, port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        // A listener error after start must not take the node down: log it.
        this.server.on('error', (e) =>
          this.log('error', 'management API listener error', { error: e.message }),
        );
        resolve((this.server.address() as { port: number }).port);
      });
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }

  private async route(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (!this.authorized(req)) {
      this.log('warn', 'management API request refused: bad or missing secret', { url: req.url });
      throw new ApiError(401, 'RC_ERR_AUTH: missing or wrong bearer token');
    }
    const url = new URL(req.url ?? '/', 'http://x');
    const h = this.handlers;
    if (req.method === 'GET' && url.pathname === '/v1/status') return this.reply(res, 200, h.status());
    if (req.method === 'GET' && url.pathname === '/metrics') {
      const text = await h.metrics();
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' });
      res.end(text);
      return;
    }
    const fb = /^\/v1\/failback\/([a-z]+)$/.exec(url.pathname);
    if (req.method === 'POST' && fb) {
      return this.reply(res, 200, await h.failback(fb[1]!, await readJson(req, FAILBACK_BODY_BYTES_MAX)));
    }
    const m = /^\/v1\/(groups|sets|volumes)\/([^/]+)\/([a-z-]+)$/.exec(url.pathname);
    if (!m) throw new ApiError(404, `no route ${req.method} ${url.pathname}`);
    const [, kind, rawName, action] = m;
    const name = decodeURIComponent(rawName!);
    const route = `${req.method} ${kind}/${action}`;
    switch (route) {
      case 'GET groups/records': {
        const fromSeq = intParam(url, 'fromSeq', 1);
        const max = Math.min(intParam(url, 'max', 100), RECORDS_PER_REQUEST_MAX);
        return this.reply(res, 200, h.records(name, fromSeq, max));
      }
      case 'POST groups/takeover':
      case 'POST sets/takeover': {
        const body = (await readJson(req)) as { force?: unknown; snapshot?: unknown };
        if (body.force !== undefined && typeof body.force !== 'boolean')
          throw new ApiError(400, 'force must be a boolean');
        if (body.snapshot !== undefined && kind !== 'sets')
          throw new ApiError(400, 'snapshot is for a set takeover (POST /v1/sets/S/takeover)');
        const snapshot =
          body.snapshot === undefined ? undefined : numberField(body, 'snapshot', 1, 2 ** 53 - 1);
        return this.reply(
          res,
          200,
          await h.takeover(kind === 'sets' ? 'set' : 'group', name, body.force === true, snapshot),
        );
      }
      case 'POST groups/fence': {
        const body = await readJson(req);
        const epoch = numberField(body, 'epoch', 1, 0xffffffff);
        const by = (body as { by?: unknown }).by;
        if (by !== undefined && typeof by !== 'string') throw new ApiError(400, 'by must be a string');
        return this.reply(res, 200, await h.fence(name, epoch, by ?? 'an operator'));
      }
      case 'POST groups/suspend':
        await readJson(req);
        return this.reply(res, 200, await h.suspend(name));
      case 'POST groups/resume': {
        const body = (await readJson(req)) as { force?: unknown };
        if (body.force !== undefined && typeof body.force !== 'boolean')
          throw new ApiError(400, 'force must be a boolean');
        return this.reply(res, 200, await h.resume(name, body.force === true));
      }
      case 'POST groups/hold': {
        const ms = numberField(await readJson(req), 'ms', 1, HOLD_MS_MAX);
        return this.reply(res, 200, h.hold(name, ms));
      }
      case 'POST groups/unhold':
        await readJson(req);
        return this.reply(res, 200, h.unhold(name));
      case 'POST groups/wait-applied': {
        const timeoutMs = numberField(await readJson(req), 'timeoutMs', 1, HOLD_MS_MAX);
        return this.reply(res, 200, await h.waitApplied(name, timeoutMs));
      }
      case 'GET volumes/checksums': {
        const chunk = intParam(url, 'chunk', 1024 * 1024);
        if (chunk < 4096 || chunk % 4096 !== 0 || chunk > 64 * 1024 * 1024) {
          throw new ApiError(400, 'chunk must be a multiple of 4096 between 4 KiB and 64 MiB');
        }
        return this.reply(res, 200, await h.checksums(name, chunk));
      }
      case 'POST sets/freeze':
      case 'POST sets/mark':
      case 'POST sets/thaw':
      case 'POST sets/wait-marker':
      case 'POST sets/go':
      case 'POST sets/abandon':
        return this.reply(
          res,
          200,
          await h.markers(name, action!, (await readJson(req)) as Record<string, unknown>),
        );
      case 'GET sets/markers':
        return this.reply(res, 200, await h.markers(name, action!, {}));
      case 'GET volumes/snapshots':
        return this.reply(res, 200, await h.snapshots(name, action!, {}));
      case 'POST volumes/delete-snapshot':
        return this.reply(
          res,
          200,
          await h.snapshots(name, action!, (await readJson(req)) as Record<string, unknown>),
        );
      case 'POST sets/read': {
        const body = (await readJson(req)) as { reads?: unknown };
        return this.reply(res, 200, await h.readAtCut(name, parseReads(body.reads)));
      }
      default:
        throw new ApiError(404, `no route ${req.method} ${url.pathname}`);
    }
  }

  private authorized(req: http.IncomingMessage): boolean {
    const given = Buffer.from(req.headers.authorization ?? '');
    const want = Buffer.from(`Bearer ${this.secret}`);
    return given.length === want.length && timingSafeEqual(given, want);
  }

  private reply(res: http.ServerResponse, status: number, body: unknown): void {
    if (res.headersSent) return;
    const headers: http.OutgoingHttpHeaders = { 'content-type': 'application/json' };
    if (status === 413) headers.connection = 'close';
    res.writeHead(status, headers);
    res.end(`${JSON.stringify(body)}\n`);
  }
}

/** Longest hold of a group's writes (and longest wait-applied) one request may ask for. */
export const HOLD_MS_MAX = 120_000;

export function numberField(body: unknown, name: string, min: number, max: number): number {
  const v = (body as Record<string, unknown>)[name];
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) {
    throw new ApiError(400, `${name} must be an integer from ${min} to ${max}`);
  }
  return v;
}

function parseReads(v: unknown): { volume: string; offset: number; length: number }[] {
  if (!Array.isArray(v) || v.length === 0 || v.length > 4096)
    throw new ApiError(400, 'reads must be a list of 1..4096 ranges');
  let total = 0;
  return v.map((r: unknown, i) => {
    const o = r as Record<string, unknown>;
    const volume = o?.volume;
    if (typeof volume !== 'string') throw new ApiError(400, `reads[${i}].volume must be a string`);
    const offset = numberField(o, 'offset', 0, Number.MAX_SAFE_INTEGER);
    const length = numberField(o, 'length', 1, READ_AT_CUT_BYTES_MAX);
    total += length;
    if (total > READ_AT_CUT_BYTES_MAX)
      throw new ApiError(400, `reads ask for more than ${READ_AT_CUT_BYTES_MAX} bytes`);
    return { volume, offset, length };
  });
}

function intParam(url: URL, name: string, dflt: number): number {
  const v = url.searchParams.get(name);
  if (v === null) return dflt;
  const n = Number(v);
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(n))
    throw new ApiError(400, `${name} must be a non-negative integer`);
  return n;
}

/** Largest failback request: it carries the old source's dirty bitmaps (base64). */
const FAILBACK_BODY_BYTES_MAX = 64 * 1024 * 1024;

function readJson(req: http.IncomingMessage, bytesMax = BODY_BYTES_MAX): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      // Past the bound: keep draining (so the 413 reaches the client) but keep nothing.
      if (size > bytesMax) reject(new ApiError(413, 'request body too large'));
      else chunks.push(c);
    });
    req.on('end', () => {
      try {
        const v: unknown = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
        if (typeof v !== 'object' || v === null || Array.isArray(v)) {
          reject(new ApiError(400, 'body must be a JSON object'));
        } else resolve(v);
      } catch {
        reject(new ApiError(400, 'body is not valid JSON'));
      }
    });
    req.on('error', reject);
  });
}

/**
 * Connections kept open between calls: a consistency cycle calls every node of its set twice
 * inside the freeze, and a fresh TCP connection (or fetch's heavier client) would be part of
 * every freeze time. Idle sockets do not keep a process alive.
 */
const keepAlive = new http.Agent({ keepAlive: true, maxSockets: 16, maxFreeSockets: 4 });
const keepAliveTls = new https.Agent({ keepAlive: true, maxSockets: 16, maxFreeSockets: 4 });

/** Client side: call a node's API (used by the CLI, the cycle coordinator and tests). */
export async function apiCall(
  addr: ApiEndpoint,
  secret: string,
  method: 'GET' | 'POST',
  path: string,
  body?: unknown,
): Promise<unknown> {
  const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
  try {
    return await apiRequest(addr, secret, method, path, payload);
  } catch (e) {
    // A kept-alive connection the server closed as idle just as this request went out: the server
    // never read the request (it closes only idle connections), so sending it again is safe.
    if (!(e instanceof StaleConnection)) throw e;
    return apiRequest(addr, secret, method, path, payload);
  }
}

class StaleConnection extends Error {}

function apiRequest(
  addr: ApiEndpoint,
  secret: string,
  method: 'GET' | 'POST',
  path: string,
  payload: Buffer | undefined,
): Promise<unknown> {
  return new Promise((resolve, reject) => {
    let answered = false;
    const request = addr.tls ? https.request : http.request;
    const req = request(
      {
        host: addr.host,
        port: addr.port,
        path,
        method,
        ...(addr.tls ? { agent: keepAliveTls, ca: addr.tls.ca } : { agent: keepAlive }),
        headers: {
          authorization: `Bearer ${secret}`,
          'content-type': 'application/json',
          ...(payload ? { 'content-length': payload.length } : {}),
        },
      },
      (res) => {
        answered = true;
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let json: unknown;
          try {
            json = JSON.parse(text);
          } catch {
            reject(new Error(`${method} ${path}: HTTP ${res.statusCode}: not JSON: ${text.slice(0, 200)}`));
            return;
          }
          const status = res.statusCode ?? 0;
          if (status < 200 || status > 299) {
            const error = (json as { error?: string } | null)?.error ?? '';
            reject(new Error(`${method} ${path}: HTTP ${status}: ${error}`));
          } else resolve(json);
        });
      },
    );
    req.on('error', (e: NodeJS.ErrnoException) => {
      const stale = req.reusedSocket && !answered && (e.code === 'ECONNRESET' || e.code === 'EPIPE');
      reject(stale ? new StaleConnection(e.message) : e);
    });
    req.end(payload);
  });
}
