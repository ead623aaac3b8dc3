/**
 * The management HTTP API of a node (JSON), authenticated with the cluster secret as a bearer
 * token (constant-time compare). Routes:
 *   GET  /v1/status                         node, volumes, groups, journal usage, write-path counters
 *   POST /v1/groups/:group/release  {uptoSeq} release journal records (what a target's durable
 *                                           report will do once replication ships them)
 *   GET  /v1/groups/:group/records?fromSeq=N&max=M   headers of retained journal records (no data):
 *                                           what was journalled, with its order key
 * Request bodies are bounded; bad input gets a 4xx with a JSON error and changes nothing.
 */
import { timingSafeEqual } from 'node:crypto';
import * as http from 'node:http';
import type { Log } from './log.js';

/** Largest request body accepted. */
const BODY_BYTES_MAX = 64 * 1024;

export interface ApiHandlers {
  status(): unknown;
  release(group: string, uptoSeq: number): Promise<unknown>;
  records(group: string, fromSeq: number, max: number): unknown;
}

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

export class ApiServer {
  private readonly server: http.Server;
  constructor(
    private readonly secret: string,
    private readonly handlers: ApiHandlers,
    private readonly log: Log,
  ) {
    this.server = http.createServer((req, res) => {
      this.route(req, res).catch((e) =>
        this.reply(res, e instanceof ApiError ? e.status : 500, { error: String(e.message ?? e) }),
      );
    });
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
    if (req.method === 'GET' && url.pathname === '/v1/status')
      return this.reply(res, 200, this.handlers.status());
    const r = /^\/v1\/groups\/([^/]+)\/records$/.exec(url.pathname);
    if (req.method === 'GET' && r) {
      const fromSeq = intParam(url, 'fromSeq', 1);
      const max = Math.min(intParam(url, 'max', 100), RECORDS_PER_REQUEST_MAX);
      return this.reply(res, 200, this.handlers.records(decodeURIComponent(r[1]!), fromSeq, max));
    }
    const m = /^\/v1\/groups\/([^/]+)\/release$/.exec(url.pathname);
    if (req.method === 'POST' && m) {
      const body = await readJson(req);
      const upto = (body as { uptoSeq?: unknown }).uptoSeq;
      if (typeof upto !== 'number' || !Number.isSafeInteger(upto) || upto < 0) {
        throw new ApiError(400, 'uptoSeq must be a non-negative integer');
      }
      return this.reply(res, 200, await this.handlers.release(decodeURIComponent(m[1]!), upto));
    }
    throw new ApiError(404, `no route ${req.method} ${url.pathname}`);
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

function intParam(url: URL, name: string, dflt: number): number {
  const v = url.searchParams.get(name);
  if (v === null) return dflt;
  const n = Number(v);
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(n))
    throw new ApiError(400, `${name} must be a non-negative integer`);
  return n;
}

function readJson(req: http.IncomingMessage): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      // Past the bound: keep draining (so the 413 reaches the client) but keep nothing.
      if (size > BODY_BYTES_MAX) reject(new ApiError(413, 'request body too large'));
      else chunks.push(c);
    });
    req.on('end', () => {
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}'));
      } catch {
        reject(new ApiError(400, 'body is not valid JSON'));
      }
    });
    req.on('error', reject);
  });
}

/** Client side: call a node's API (used by the CLI and tests). */
export async function apiCall(
  addr: { host: string; port: number },
  secret: string,
  method: 'GET' | 'POST',
  path: string,
  body?: unknown,
): Promise<unknown> {
  const host = addr.host.includes(':') ? `[${addr.host}]` : addr.host;
  const res = await fetch(`http://${host}:${addr.port}${path}`, {
    method,
    headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = (await res.json()) as unknown;
  if (!res.ok)
    throw new Error(`${method} ${path}: HTTP ${res.status}: ${(json as { error?: string }).error ?? ''}`);
  return json;
}
