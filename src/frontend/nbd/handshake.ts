/**
 * The NBD handshake as a pure state machine: bytes in, effects out (STYLE.md 1).
 *
 * The session (session.ts) feeds it every byte the client sends until it returns a terminal
 * effect, and performs the effects in order: `send` writes bytes, `starttls` upgrades the socket
 * (the ACK was the preceding `send`), `transmit` enters the transmission phase, `close` ends the
 * connection. After a terminal effect the handshake consumes nothing more: unconsumed bytes come
 * back as `leftover` (TLS records or the first requests), for whoever reads next.
 *
 *   greeting ─▶ client flags ─▶ options* ─┬─ EXPORT_NAME / GO ─▶ transmit
 *                                 ▲        ├─ STARTTLS ─▶ starttls ─▶ tlsStarted() (state reset)
 *                                 └────────┴─ ABORT / bad input ─▶ close
 *
 * Decoding never throws: malformed options get NBD_REP_ERR_INVALID, unknown ones
 * NBD_REP_ERR_UNSUP with their data skipped, and only unrecoverable input (bad magic, unknown
 * client flags, an absurd option length) closes the connection with a reason.
 */
import type { ExportCatalog, VolumeExport } from '../backend.js';
import {
  CLIENT_FLAGS_KNOWN,
  CONTEXT_BASE_ALLOCATION,
  CONTEXT_ID_BASE_ALLOCATION,
  contextsMatching,
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeString,
  encodeExportNameReply,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeMetaContext,
  encodeOptionError,
  encodeOptionReply,
  encodeServerEntry,
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  IHAVEOPT,
  Info,
  OPTION_HEADER_BYTES,
  OPTION_LENGTH_MAX_BYTES,
  OPTION_SKIP_MAX_BYTES,
  OPTIONS_PER_CONNECTION_MAX,
  Opt,
  Rep,
  transmissionFlagsFor,
} from './protocol.js';

/** What a connection negotiated, handed to the transmission phase. */
export interface Negotiated {
  readonly export: VolumeExport;
  readonly transmissionFlags: number;
  readonly structuredReplies: boolean;
  /** base:allocation was selected for this export: BLOCK_STATUS is allowed. */
  readonly baseAllocation: boolean;
}

export type HandshakeEffect =
  | { readonly kind: 'send'; readonly data: Buffer }
  | { readonly kind: 'starttls' }
  | { readonly kind: 'transmit'; readonly negotiated: Negotiated }
  | { readonly kind: 'close'; readonly reason: string; readonly level: 'debug' | 'info' | 'warn' }
  | { readonly kind: 'log'; readonly msg: string; readonly fields: Record<string, unknown> };

export interface HandshakeResult {
  readonly effects: HandshakeEffect[];
  /** Bytes after a terminal effect, not consumed. Empty unless the handshake finished. */
  readonly leftover: Buffer;
}

export interface HandshakeConfig {
  readonly catalog: ExportCatalog;
  /** STARTTLS is offered. */
  readonly tlsAvailable: boolean;
  /** Every option but STARTTLS and ABORT is refused with ERR_TLS_REQD until TLS is up. */
  readonly tlsRequired: boolean;
}

const EMPTY = Buffer.alloc(0);

/** The export a name selects: the catalog's, or for '' the only export if there is just one. */
export function resolveExport(catalog: ExportCatalog, name: string): VolumeExport | undefined {
  const found = catalog.get(name);
  if (found || name !== '') return found;
  const all = catalog.list();
  return all.length === 1 ? all[0] : undefined;
}

export class Handshake {
  private buf: Buffer = EMPTY;
  private phase: 'flags' | 'options' | 'done' = 'flags';
  private noZeroes = false;
  private fixedNewstyle = false;
  private tlsActive = false;
  private structured = false;
  /** The export that SET_META_CONTEXT selected base:allocation for, if any. */
  private metaExport: VolumeExport | undefined;
  private optionsSeen = 0;
  /** An oversized option being skipped: bytes left, and the reply to send once skipped. */
  private skip: { left: number; option: number; reply: number } | undefined;
  private effects: HandshakeEffect[] = [];
  private shuttingDown = false;

  constructor(private readonly config: HandshakeConfig) {}

  /** Refuse further options with ERR_SHUTDOWN (server closing). */
  beginShutdown(): void {
    this.shuttingDown = true;
  }

  /** TLS is up: forget everything negotiated before it, then read options again. */
  tlsStarted(): void {
    this.tlsActive = true;
    this.structured = false;
    this.metaExport = undefined;
    this.phase = 'options';
  }

  get tls(): boolean {
    return this.tlsActive;
  }

  feed(chunk: Buffer): HandshakeResult {
    this.effects = [];
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    while (this.phase !== 'done' && this.step()) {
      // step() consumed one message (or part of a skipped option); go on.
    }
    let leftover: Buffer = EMPTY;
    if (this.phase === 'done') {
      leftover = this.buf;
      this.buf = EMPTY;
    }
    return { effects: this.effects, leftover };
  }

  /** Consume one unit of input if complete; false when more bytes are needed or we are done. */
  private step(): boolean {
    if (this.skip) return this.stepSkip(this.skip);
    if (this.phase === 'flags') return this.stepClientFlags();
    if (this.buf.length < OPTION_HEADER_BYTES) return false;
    if (this.buf.readBigUInt64BE(0) !== IHAVEOPT) return this.close('bad option magic', 'warn');
    const option = this.buf.readUInt32BE(8);
    const length = this.buf.readUInt32BE(12);
    if (++this.optionsSeen > OPTIONS_PER_CONNECTION_MAX) return this.close('too many options', 'warn');
    if (length > OPTION_LENGTH_MAX_BYTES) {
      if (length > OPTION_SKIP_MAX_BYTES) return this.close(`option length ${length} too large`, 'warn');
      this.buf = this.buf.subarray(OPTION_HEADER_BYTES);
      this.skip = { left: length, option, reply: isKnownOption(option) ? Rep.ERR_TOO_BIG : Rep.ERR_UNSUP };
      return true;
    }
    if (this.buf.length < OPTION_HEADER_BYTES + length) return false;
    const data = this.buf.subarray(OPTION_HEADER_BYTES, OPTION_HEADER_BYTES + length);
    this.buf = this.buf.subarray(OPTION_HEADER_BYTES + length);
    this.onOption(option, data);
    return true;
  }

  private stepSkip(skip: { left: number; option: number; reply: number }): boolean {
    if (this.buf.length === 0) return false;
    const n = Math.min(skip.left, this.buf.length);
    this.buf = this.buf.subarray(n);
    skip.left -= n;
    if (skip.left > 0) return false;
    this.skip = undefined;
    this.error(skip.option, skip.reply, 'option data too long');
    return true;
  }

  private stepClientFlags(): boolean {
    if (this.buf.length < 4) return false;
    const flags = this.buf.readUInt32BE(0);
    this.buf = this.buf.subarray(4);
    if ((flags & ~CLIENT_FLAGS_KNOWN) !== 0)
      return this.close(`unknown client flags 0x${flags.toString(16)}`, 'warn');
    this.noZeroes = (flags & FLAG_C_NO_ZEROES) !== 0;
    this.fixedNewstyle = (flags & FLAG_C_FIXED_NEWSTYLE) !== 0;
    // Without fixed newstyle there is no TLS (spec: NOTLS mode), so a TLS-only server must refuse.
    if (!this.fixedNewstyle && this.config.tlsRequired)
      return this.close('client cannot do STARTTLS', 'info');
    this.phase = 'options';
    return true;
  }

  private onOption(option: number, data: Buffer): void {
    const tlsAllowed = this.config.tlsAvailable && this.fixedNewstyle;
    if (this.config.tlsRequired && !this.tlsActive && option !== Opt.STARTTLS && option !== Opt.ABORT) {
      if (option === Opt.EXPORT_NAME) this.close('EXPORT_NAME before STARTTLS', 'info');
      else this.error(option, Rep.ERR_TLS_REQD, 'TLS is required: send NBD_OPT_STARTTLS first');
      return;
    }
    if (this.shuttingDown && option !== Opt.ABORT) {
      if (option === Opt.EXPORT_NAME) this.close('server shutting down', 'info');
      else this.error(option, Rep.ERR_SHUTDOWN, 'server is shutting down');
      return;
    }
    switch (option) {
      case Opt.EXPORT_NAME:
        this.onExportName(data);
        return;
      case Opt.ABORT:
        this.reply(option, Rep.ACK);
        this.close('client sent NBD_OPT_ABORT', 'debug');
        return;
      case Opt.LIST:
        this.onList(data);
        return;
      case Opt.STARTTLS:
        this.onStartTls(data, tlsAllowed);
        return;
      case Opt.INFO:
      case Opt.GO:
        this.onInfoOrGo(option, data);
        return;
      case Opt.STRUCTURED_REPLY:
        if (data.length !== 0) {
          this.error(option, Rep.ERR_INVALID, 'STRUCTURED_REPLY takes no data');
          return;
        }
        this.structured = true;
        this.reply(option, Rep.ACK);
        return;
      case Opt.LIST_META_CONTEXT:
      case Opt.SET_META_CONTEXT:
        this.onMetaContext(option, data);
        return;
      default:
        // Includes EXTENDED_HEADERS: known, deliberately unsupported.
        this.error(option, Rep.ERR_UNSUP, `option ${option} is not supported`);
        return;
    }
  }

  private onExportName(data: Buffer): void {
    const name = decodeString(data, 0, data.length);
    if (!name.ok) return void this.close(`EXPORT_NAME: ${name.reason}`, 'info');
    const exp = resolveExport(this.config.catalog, name.value);
    if (!exp) return void this.close(`EXPORT_NAME: no export named '${name.value}'`, 'info');
    const flags = transmissionFlagsFor(exp.readOnly);
    this.send(encodeExportNameReply(exp.sizeBytes, flags, this.noZeroes));
    this.transmit(exp, flags);
  }

  private onList(data: Buffer): void {
    if (data.length !== 0) {
      this.error(Opt.LIST, Rep.ERR_INVALID, 'LIST takes no data');
      return;
    }
    for (const exp of this.config.catalog.list()) {
      this.reply(Opt.LIST, Rep.SERVER, encodeServerEntry(exp.name, exp.description));
    }
    this.reply(Opt.LIST, Rep.ACK);
  }

  private onStartTls(data: Buffer, tlsAllowed: boolean): void {
    if (!tlsAllowed) {
      this.error(Opt.STARTTLS, Rep.ERR_UNSUP, 'TLS is not configured');
      return;
    }
    if (data.length !== 0) {
      this.error(Opt.STARTTLS, Rep.ERR_INVALID, 'STARTTLS takes no data');
      return;
    }
    if (this.tlsActive) {
      this.error(Opt.STARTTLS, Rep.ERR_INVALID, 'TLS is already active');
      return;
    }
    this.reply(Opt.STARTTLS, Rep.ACK);
    this.effects.push({ kind: 'starttls' });
    this.phase = 'done';
  }

  private onInfoOrGo(option: number, data: Buffer): void {
    const req = decodeInfoRequest(data);
    if (!req.ok) {
      this.error(option, Rep.ERR_INVALID, req.reason);
      return;
    }
    const exp = resolveExport(this.config.catalog, req.value.name);
    if (!exp) {
      this.error(option, Rep.ERR_UNKNOWN, `no export named '${req.value.name}'`);
      return;
    }
    const flags = transmissionFlagsFor(exp.readOnly);
    this.reply(option, Rep.INFO, encodeInfoExport(exp.sizeBytes, flags));
    this.reply(option, Rep.INFO, encodeInfoBlockSize());
    if (req.value.infos.includes(Info.NAME))
      this.reply(option, Rep.INFO, encodeInfoString(Info.NAME, exp.name));
    if (req.value.infos.includes(Info.DESCRIPTION)) {
      this.reply(option, Rep.INFO, encodeInfoString(Info.DESCRIPTION, exp.description));
    }
    this.reply(option, Rep.ACK);
    if (option === Opt.GO) this.transmit(exp, flags);
  }

  private onMetaContext(option: number, data: Buffer): void {
    const set = option === Opt.SET_META_CONTEXT;
    // SET replaces the selection even when it fails.
    if (set) this.metaExport = undefined;
    if (set && !this.structured) {
      this.error(option, Rep.ERR_INVALID, 'negotiate structured replies first');
      return;
    }
    const req = decodeMetaContextRequest(data);
    if (!req.ok) {
      this.error(option, Rep.ERR_INVALID, req.reason);
      return;
    }
    const exp = resolveExport(this.config.catalog, req.value.exportName);
    if (!exp) {
      this.error(option, Rep.ERR_UNKNOWN, `no export named '${req.value.exportName}'`);
      return;
    }
    const queries = req.value.queries;
    const names = new Set<string>();
    if (!set && queries.length === 0) names.add(CONTEXT_BASE_ALLOCATION);
    for (const q of queries) for (const c of contextsMatching(q, !set)) names.add(c);
    for (const name of names) {
      // LIST replies carry id 0 (reserved); SET replies carry the id BLOCK_STATUS will use.
      this.reply(option, Rep.META_CONTEXT, encodeMetaContext(set ? CONTEXT_ID_BASE_ALLOCATION : 0, name));
    }
    if (set && names.has(CONTEXT_BASE_ALLOCATION)) this.metaExport = exp;
    this.reply(option, Rep.ACK);
  }

  private transmit(exp: VolumeExport, flags: number): void {
    const negotiated: Negotiated = {
      export: exp,
      transmissionFlags: flags,
      structuredReplies: this.structured,
      baseAllocation: this.structured && this.metaExport === exp,
    };
    this.effects.push({ kind: 'transmit', negotiated });
    this.phase = 'done';
  }

  private send(data: Buffer): void {
    this.effects.push({ kind: 'send', data });
  }

  private reply(option: number, type: number, data?: Buffer): void {
    this.send(encodeOptionReply(option, type, data));
  }

  private error(option: number, type: number, message: string): void {
    this.effects.push({ kind: 'log', msg: 'option refused', fields: { option, reply: type, message } });
    this.send(encodeOptionError(option, type, message));
  }

  private close(reason: string, level: 'debug' | 'info' | 'warn'): false {
    this.effects.push({ kind: 'close', reason, level });
    this.phase = 'done';
    return false;
  }
}

function isKnownOption(option: number): boolean {
  return option >= Opt.EXPORT_NAME && option <= Opt.SET_META_CONTEXT && option !== 4;
}
