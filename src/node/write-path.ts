/**
 * The write path of a node: turns host writes into journal records, applies them to volumes,
 * and acknowledges them (DESIGN.md §3.1, §3.2, §6).
 *
 *   front end --submit()--> pending batch --(setImmediate)--> sequencer.next() per record
 *      --> journal.append(batch)   one writev into the page cache (a large run into a new
 *                                  segment: O_DIRECT on the thread pool, see journal.ts)
 *      --> apply to the volume     once the batch's bytes are in the journal (whenWritten);
 *                                  < 64 KiB inline (writeSync); larger on the thread pool
 *      --> resolve                 (FUA writes also wait for journal.sync(): group commit)
 *
 * Ordering contract: a write is acknowledged only after its record is in the journal and its data
 * in the volume, so a later read sees it and a FLUSH (journal.sync) makes it durable. Records are
 * appended in the order they are sequenced; volume writes that overlap one still in flight wait for
 * it (InflightRanges), so each block ends as the journal order says. The journal is thus a redo log
 * of the volumes: on start every retained record is replayed. A record is released only after
 * the volume writes issued so far are done and the volumes synced (release()), so the redo log
 * never has a hole.
 *
 * Journal full (policy `throttle`): a batch that does not fit waits for space (records to be
 * released), at most `throttleMaxDelayMs` per write. Past that the owner is told (onThrottleExpired)
 * and suspends the groups of the writes that waited that long, which track(): those writes go on,
 * tracked. A write whose group was not suspended (none of it can be, e.g. in its initial copy, or
 * no owner) fails with ENOSPC and nothing is changed: the volume and the journal stay as they were,
 * the seq is not consumed. Policy `suspend`: the owner is told (onJournalFull) at once.
 *
 * Suspended groups (track()): their writes are not journalled and take no seq. Each waits until the
 * suspension is in force (the volumes hold every journalled record durably), marks its chunks in the
 * group's dirty bitmap durably, then goes to the volume, and only then is acknowledged (a FUA write
 * after the volume's sync). It holds its range in InflightRanges meanwhile, so a later write or a
 * resync copy of the same bytes comes after it.
 */
import { assert } from '../core/assert.js';
import { RemcopyError } from '../core/errors.js';
import type { Sequencer } from '../core/sequencer.js';
import type { RecordHeader, RecordKind, Seq, TimeUs } from '../core/types.js';
import { byteOffset, RecordKind as Kind } from '../core/types.js';
import { BackendError } from '../frontend/backend.js';
import type { BlockDevice } from '../storage/blockdev.js';
import { isZero } from '../storage/zeroes.js';

/** What the write path needs of a journal (src/storage/journal.ts implements it). */
export interface JournalPort {
  /** Returns each record's encoded header and names, checksum set (journal.ts). */
  append(
    records: ReadonlyArray<{ header: RecordHeader; payload?: Buffer | undefined }>,
  ): (Buffer | undefined)[];
  sync(): Promise<void>;
  release(group: string, uptoSeq: Seq): void;
  /** Grows with every append (see journal.ts). */
  readonly appendGeneration: number;
  /**
   * Resolves once the bytes of the batches appended up to generation `gen` are in the journal's
   * files; undefined when they are already (journal.ts).
   */
  whenWritten(gen: number): Promise<void> | undefined;
}

/**
 * What the write path needs of an activity log (src/storage/activity-log.ts): a volume write whose
 * record was appended at journal gen `gen` waits for the promise admit() returns, if any.
 */
export interface ActivityLogPort {
  admit(volume: string, offset: number, length: number, gen: number): Promise<void> | undefined;
}

/** Volume writes at least this large are applied on the thread pool. */
export const ASYNC_APPLY_BYTES_MIN = 64 * 1024;

/** Where a suspended group's writes are tracked: resolves once the range's bits are durable. */
export interface TrackPort {
  mark(volume: string, offset: number, length: number): Promise<void>;
  /** A write that arrived at `arrivedMs` (nowMs clock) is tracked instead of journalled. */
  tracking?(arrivedMs: number): void;
}

export interface WriteRequest {
  readonly group: string;
  readonly kind: RecordKind;
  readonly volume: string;
  readonly device: BlockDevice;
  readonly offset: number;
  readonly length: number;
  readonly payload?: Buffer;
  readonly hostTimeUs?: TimeUs;
  readonly fua: boolean;
  /** `payload` never changes after submit (WriteOptions.payloadStable): it may be kept as it is. */
  readonly payloadStable?: boolean;
}

interface Pending extends WriteRequest {
  readonly arrivedMs: number;
  readonly resolve: () => void;
  readonly reject: (e: BackendError) => void;
}

export interface WritePathOptions {
  readonly sequencer: Sequencer;
  readonly journal: JournalPort;
  readonly epochOf: (group: string) => number;
  readonly nowUs: () => TimeUs;
  readonly nowMs: () => number;
  readonly throttleMaxDelayMs: number;
  /** How often a throttled batch retries when no release wakes it. */
  readonly throttleRetryMs?: number;
  readonly log: (level: 'info' | 'warn' | 'error', msg: string, fields?: object) => void;
  /**
   * Called after records were appended (the replication sender wakes up and notes the batch for
   * lag figures); `arrivedMs` is when the batch's oldest write arrived (nowMs clock).
   */
  readonly onAppended?: (records: readonly AppendedRecord[], arrivedMs: number) => void;
  /**
   * The journal is full and the policy is `suspend`: the owner suspends what it can of `groups`
   * (calling track() before it returns); writes of groups it did not suspend are throttled.
   */
  readonly onJournalFull?: (groups: ReadonlySet<string>) => void;
  /**
   * Policy `throttle`: writes of `groups` have waited `throttleMaxDelayMs` for journal space. The
   * owner suspends what it can of them (calling track() before it returns); the writes of groups it
   * did not suspend fail with ENOSPC.
   */
  readonly onThrottleExpired?: (groups: ReadonlySet<string>) => void;
  /**
   * Volume extents written ahead of a durable journal record are logged here first, so that a
   * restart after a power loss knows where a volume may be ahead of its journal.
   */
  readonly activityLog?: ActivityLogPort;
}

/**
 * A record just appended; `payload` is the caller's buffer, valid only during the call. `head` is
 * its header and names as journalled (checksum over them and the payload set): a source ships it
 * as it is instead of encoding and checksumming the record again.
 */
export interface AppendedRecord {
  readonly header: RecordHeader;
  readonly payload?: Buffer | undefined;
  head?: Buffer | undefined;
  /** The payload never changes (WriteRequest.payloadStable): keep it without a copy. */
  readonly payloadStable?: boolean;
}

/** How copyChunk reads its range. */
export interface CopyRead {
  /** True when the range is known to read as zeroes: it is not read at all. */
  knownZero?: () => boolean;
  /**
   * Read through the page cache (a delta resync: its chunks were written lately, so they are
   * mostly cached, and a direct read would first write each one back). By default the read goes
   * around the cache (BlockDevice.readForCopy).
   */
  cached?: boolean;
}

/** What copyChunk journalled: a copy record with the bytes, or a zero record for a zero range. */
export interface CopiedChunk {
  readonly seq: Seq;
  readonly zero: boolean;
}

export interface WritePathStats {
  recordsAppended: number;
  batches: number;
  throttledWrites: number;
  throttleDelayMsTotal: number;
  rejectedJournalFull: number;
  /** Writes of suspended groups: tracked in the dirty bitmap, not journalled. */
  trackedWrites: number;
  /** copyChunk reads done on the thread pool and journalled as read. */
  copyReadsAsync: number;
  /** copyChunk reads thrown away because a write to their range was issued while they ran. */
  copyReadsRetried: number;
}

/** Reads of one chunk on the thread pool before copyChunk reads it synchronously instead. */
export const COPY_READ_TRIES = 2;

/** A copy read in flight: `written` once a volume write overlapping it has been issued. */
interface CopyWatch {
  readonly device: BlockDevice;
  readonly start: number;
  readonly end: number;
  written: boolean;
}

interface Tracking {
  readonly port: TrackPort;
  readonly ready: Promise<void>;
  readonly devices: Set<BlockDevice>;
  readonly inflight: Set<Promise<void>>;
}

export class WritePath {
  private pending: Pending[] = [];
  /** Groups whose new writes wait, with why (a verify's hold, a marker's freeze): all must end. */
  private readonly held = new Map<string, Set<string>>();
  private readonly tracked = new Map<string, Tracking>();
  private heldWrites: Pending[] = [];
  private scheduled = false;
  private readonly inflight = new Map<BlockDevice, InflightRanges>();
  private readonly copyWatches = new Set<CopyWatch>();
  private throttleTimer: NodeJS.Timeout | undefined;
  private closed = false;
  readonly stats: WritePathStats = {
    recordsAppended: 0,
    batches: 0,
    throttledWrites: 0,
    throttleDelayMsTotal: 0,
    rejectedJournalFull: 0,
    trackedWrites: 0,
    copyReadsAsync: 0,
    copyReadsRetried: 0,
  };

  constructor(private readonly o: WritePathOptions) {}

  submit(req: WriteRequest): Promise<void> {
    if (this.closed) return Promise.reject(new BackendError('ESHUTDOWN', 'node is shutting down'));
    return new Promise((resolve, reject) => {
      // Built field by field, not by spreading `req`: requests come in several shapes (payload and
      // hostTimeUs are optional), and V8's generic object spread cost 7% of a source's main thread.
      const p: Pending = {
        group: req.group,
        kind: req.kind,
        volume: req.volume,
        device: req.device,
        offset: req.offset,
        length: req.length,
        payload: req.payload,
        hostTimeUs: req.hostTimeUs,
        fua: req.fua,
        payloadStable: req.payloadStable === true,
        arrivedMs: this.o.nowMs(),
        resolve,
        reject,
      };
      if (this.tracked.has(req.group)) return this.trackedWrite(p);
      if (this.held.has(req.group)) {
        this.heldWrites.push(p);
        return;
      }
      this.pending.push(p);
      this.schedule();
    });
  }

  /**
   * From now on writes of `group` are tracked in its dirty bitmap (`port`) instead of the journal;
   * they wait for `ready` (the owner has made the journalled ones durable in the volumes). Writes of
   * the group submitted but not yet journalled follow the new rule too.
   */
  track(group: string, port: TrackPort, ready: Promise<void>): void {
    assert(!this.tracked.has(group), `${group} is tracked already`);
    // A failed suspension fails the writes waiting on it, not the process.
    ready.catch(() => {});
    this.tracked.set(group, { port, ready, devices: new Set(), inflight: new Set() });
    const mine = this.pending.filter((p) => p.group === group);
    if (mine.length === 0) return;
    this.pending = this.pending.filter((p) => p.group !== group);
    for (const p of mine) this.trackedWrite(p);
    if (this.pending.length === 0 && this.throttleTimer) {
      // They were waiting for journal space: nothing does any more.
      clearTimeout(this.throttleTimer);
      this.throttleTimer = undefined;
    }
  }

  isTracked(group: string): boolean {
    return this.tracked.has(group);
  }

  /**
   * Writes of `group` are journalled again once its suspension is in force (at once, normally: a
   * group is resumed only after that). Resolves once every tracked write is on its
   * volume and the volumes are synced, so a resync that starts then reads all of them, and a later
   * FLUSH (a journal sync) covers them.
   */
  async untrack(group: string): Promise<void> {
    const t = this.tracked.get(group);
    if (t === undefined) return;
    // Until the suspension is in force its writes are not among the volume writes in flight, so a
    // journalled write could pass them: writes stay tracked until then.
    await t.ready.catch(() => {});
    if (this.tracked.get(group) !== t) return;
    this.tracked.delete(group);
    await Promise.allSettled([...t.inflight]);
    await Promise.all([...t.devices].map((d) => d.sync()));
  }

  /** FLUSH of a volume of `group`: the journal, and the volume itself while writes bypass the journal. */
  async flushGroup(group: string, device: BlockDevice): Promise<void> {
    await this.flush();
    if (!this.tracked.has(group)) return;
    await device.sync().catch((e) => {
      throw new BackendError('EIO', `volume sync failed: ${(e as Error).message}`);
    });
  }

  private trackedWrite(p: Pending): void {
    const t = this.tracked.get(p.group)!;
    t.port.tracking?.(p.arrivedMs);
    if (this.copyWatches.size > 0) this.wroteUnderCopy(p.device, p.offset, p.offset + p.length);
    t.devices.add(p.device);
    this.stats.trackedWrites++;
    // The write joins the volume's writes in flight only once the suspension is in force: the
    // suspension drains those (settle()) before `ready`, and a tracked write among them would wait
    // for itself (a write pending when track() was called: the suspension and the write hung).
    // Writes that wait for the same `ready` join in the order they were submitted.
    const done = t.ready.then(() =>
      this.inflightOf(p.device).run(p.offset, p.offset + p.length, async () => {
        await t.port.mark(p.volume, p.offset, p.length);
        await applyToDeviceAsync(p.device, p.kind, p.offset, p.length, p.payload);
        if (p.fua) await p.device.sync();
      }),
    );
    t.inflight.add(done);
    done.then(
      () => {
        t.inflight.delete(done);
        p.resolve();
      },
      (e) => {
        t.inflight.delete(done);
        this.o.log('error', 'write of a suspended group failed', { volume: p.volume, error: String(e) });
        p.reject(new BackendError('EIO', `write failed: ${String(e)}`));
      },
    );
  }

  /**
   * Holds new writes of `group` (queued, not failed) until unhold() with the same `reason`: the
   * group's journal stops growing, so a target can catch up to one point (verify), or a marker
   * goes in at one point (freeze). Writes already submitted go on. Holds for different reasons
   * stack: the writes go on when the last one ends.
   */
  hold(group: string, reason = 'operator'): void {
    let reasons = this.held.get(group);
    if (reasons === undefined) this.held.set(group, (reasons = new Set()));
    reasons.add(reason);
  }

  /**
   * Freeze for a marker (DESIGN.md §3.4; patent fig 15 steps 1600-1602): new writes of `groups`
   * wait (queued, not failed), and every write submitted before now that can be journalled is
   * journalled now, so a marker appended next follows every write acknowledged before the freeze.
   * A write that waits for journal space (throttle) was never acknowledged: it may land on either
   * side of the marker. thaw() ends it.
   */
  freeze(groups: readonly string[]): void {
    for (const g of groups) this.hold(g, 'freeze');
    if (!this.throttleTimer && !this.closed) this.runBatch();
  }

  thaw(groups: readonly string[]): void {
    for (const g of groups) this.unhold(g, 'freeze');
  }

  /**
   * Appends one marker record per group in one step (patent figs 15-17: a marker takes a seq like
   * data and is never written to a volume). `prev` is the group's marker before it, carried in the
   * record's offset. Throws RC_ERR_JOURNAL_FULL (nothing appended, no seq taken) when it does not fit.
   */
  appendMarkers(markers: ReadonlyArray<{ group: string; markerNo: number; prev: number }>): RecordHeader[] {
    assert(!this.closed, 'appendMarkers on a closed write path');
    const records = this.journalNow(() =>
      markers.map((m) => ({
        header: {
          ...this.headerOf({
            group: m.group,
            kind: Kind.marker,
            volume: '',
            offset: m.prev,
            length: 0,
            hostTimeUs: undefined,
          }),
          markerNo: m.markerNo,
        },
      })),
    );
    return records.map((r) => r.header);
  }

  /**
   * Sequences and appends the records `make` builds (it calls headerOf), in one step; when the
   * append throws, the sequencer is rolled back (no seq taken) and the error passed on. Not for
   * host writes: those are applied and acknowledged too (appendAll).
   */
  private journalNow(make: () => AppendedRecord[]): AppendedRecord[] {
    const snap = this.o.sequencer.snapshot();
    const records = make();
    try {
      this.append(records);
    } catch (e) {
      this.o.sequencer.restore(snap);
      throw e;
    }
    this.stats.recordsAppended += records.length;
    this.o.onAppended?.(records, this.o.nowMs());
    return records;
  }

  /**
   * The group stopped being a source here (fenced): writes of it that wait in a hold or a batch
   * fail with `err` and change nothing. Writes already journalled go on.
   */
  dropQueued(group: string, err: BackendError): void {
    this.held.delete(group);
    const drop = (list: Pending[]): Pending[] => {
      for (const p of list) if (p.group === group) p.reject(err);
      return list.filter((p) => p.group !== group);
    };
    this.heldWrites = drop(this.heldWrites);
    this.pending = drop(this.pending);
  }

  unhold(group: string, reason = 'operator'): void {
    const reasons = this.held.get(group);
    if (reasons === undefined || !reasons.delete(reason) || reasons.size > 0) return;
    this.held.delete(group);
    const mine = this.heldWrites.filter((p) => p.group === group);
    this.heldWrites = this.heldWrites.filter((p) => p.group !== group);
    if (mine.length === 0) return;
    for (const p of mine) {
      if (this.tracked.has(group)) this.trackedWrite(p);
      else this.pending.push(p);
    }
    this.schedule();
  }

  /**
   * Journals the current content of a volume range as one record of `group` (initial copy,
   * DESIGN.md §3.6): a zero record when the range reads as zeroes, else a copy record. The record
   * must hold every write sequenced before it and none after it (those follow it at the target
   * too), so the read and the append must see one state of the range. The volume itself is not
   * written. Throws RC_ERR_JOURNAL_FULL (nothing journalled) when the journal has no room; the
   * caller waits and tries again.
   *
   * The read runs on the thread pool, so host requests go on meanwhile (a synchronous 1 MiB read
   * held every one of them for the device's read time, chunk after chunk). A write to the range
   * sequenced while it runs is seen (copyWatches): the bytes are then read again, and after
   * COPY_READ_TRIES such reads once more synchronously, in the same step as the append.
   */
  async copyChunk(
    group: string,
    volume: string,
    device: BlockDevice,
    offset: number,
    length: number,
    how: CopyRead = {},
  ): Promise<CopiedChunk> {
    assert(!this.closed, 'copyChunk on a closed write path');
    const ranges = this.inflightOf(device);
    const end = offset + length;
    for (let attempt = 1; ; attempt++) {
      while (ranges.overlaps(offset, end)) await ranges.drain();
      if (this.closed) throw new RemcopyError('RC_ERR_SHUTDOWN', 'the write path closed during a copy');
      if (this.tracked.has(group)) {
        throw new RemcopyError('RC_ERR_STATE', `${group} is suspended: no copy records are journalled`);
      }
      // knownZero is asked in the same synchronous step as the append: no write can slip between.
      if (how.knownZero?.() === true) return this.journalCopy(group, volume, offset, length, undefined);
      if (attempt > COPY_READ_TRIES) {
        const data =
          how.cached === true ? device.readSync(offset, length) : device.readForCopySync(offset, length);
        return this.journalCopy(group, volume, offset, length, data);
      }
      const watch: CopyWatch = { device, start: offset, end, written: false };
      this.copyWatches.add(watch);
      let data: Buffer;
      try {
        data = await (how.cached === true ? device.read(offset, length) : device.readForCopy(offset, length));
      } finally {
        this.copyWatches.delete(watch);
      }
      // No volume write to the range was issued since the read began (every one is marked in the
      // step that sequences it; those sequenced before were drained above): the bytes read are its
      // content now.
      if (!watch.written && !this.closed && !this.tracked.has(group)) {
        this.stats.copyReadsAsync++;
        return this.journalCopy(group, volume, offset, length, data);
      }
      this.stats.copyReadsRetried++;
    }
  }

  /** The copy or zero record of copyChunk, sequenced and appended in one step. */
  private journalCopy(
    group: string,
    volume: string,
    offset: number,
    length: number,
    data: Buffer | undefined,
  ): CopiedChunk {
    const zero = data === undefined || isZero(data);
    const [record] = this.journalNow(() => [
      {
        header: this.headerOf({
          group,
          kind: zero ? Kind.zero : Kind.copy,
          volume,
          offset,
          length,
          hostTimeUs: undefined,
        }),
        payload: zero ? undefined : data,
      },
    ]);
    return { seq: record!.header.seq, zero };
  }

  /** Durable point for FLUSH: every acknowledged write is in the fsynced journal. */
  flush(): Promise<void> {
    return this.o.journal.sync().catch((e) => {
      throw new BackendError('EIO', `journal sync failed: ${(e as Error).message}`);
    });
  }

  /** Every volume write issued so far on `devices` is done and synced. */
  async settle(devices: readonly BlockDevice[]): Promise<void> {
    await this.drain(devices);
    await Promise.all(devices.map((d) => d.sync()));
  }

  /** Records of `group` up to `uptoSeq` are no longer needed: sync their volumes, then release. */
  async release(group: string, uptoSeq: Seq, devices: readonly BlockDevice[]): Promise<void> {
    assert(uptoSeq <= this.o.sequencer.seqOf(group), 'release beyond the last appended seq');
    if (uptoSeq <= 0) return;
    await this.drain(devices);
    await Promise.all(devices.map((d) => d.sync()));
    // The node may have begun to stop while the volumes synced: the journal is closed then.
    if (this.closed) return;
    this.o.journal.release(group, uptoSeq);
    if (this.throttleTimer) this.retryThrottled();
  }

  get throttling(): boolean {
    return this.throttleTimer !== undefined;
  }

  /** Stop taking writes; append what is pending (or fail it), then resolve. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.throttleTimer) clearTimeout(this.throttleTimer);
    this.throttleTimer = undefined;
    for (const p of this.heldWrites.splice(0)) {
      if (this.tracked.has(p.group)) this.trackedWrite(p);
      else this.pending.push(p);
    }
    this.held.clear();
    if (this.pending.length > 0) this.runBatch();
    for (const p of this.pending.splice(0)) p.reject(new BackendError('ESHUTDOWN', 'node is shutting down'));
    await this.drain(this.inflight.keys());
    await Promise.allSettled([...this.tracked.values()].flatMap((t) => [...t.inflight]));
    await this.o.journal.sync();
  }

  private schedule(): void {
    if (this.scheduled || this.throttleTimer) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      if (!this.throttleTimer) this.runBatch();
    });
  }

  private runBatch(): void {
    const batch = this.pending;
    this.pending = [];
    if (batch.length === 0) return;
    const appended = this.appendAll(batch);
    if (appended < batch.length) {
      let rest = batch.slice(appended);
      if (this.o.onJournalFull) {
        this.o.onJournalFull(new Set(rest.map((p) => p.group)));
        for (const p of rest) if (this.tracked.has(p.group)) this.trackedWrite(p);
        rest = rest.filter((p) => !this.tracked.has(p.group));
        if (rest.length === 0) return;
      }
      // Journal full: keep the rest, oldest first, and wait for space.
      this.pending = rest.concat(this.pending);
      this.startThrottle();
    }
  }

  /** Append and apply `batch` in order; returns how many were appended (all, unless full). */
  private appendAll(batch: Pending[]): number {
    const snap = this.o.sequencer.snapshot();
    const records: AppendedRecord[] = batch.map((p) => ({
      header: this.headerOf(p),
      payload: p.payload,
      head: undefined,
      payloadStable: p.payloadStable,
    }));
    try {
      this.append(records);
    } catch (e) {
      this.o.sequencer.restore(snap);
      if (!(e instanceof RemcopyError && e.code === 'RC_ERR_JOURNAL_FULL') || batch.length === 1) {
        return this.failAppend(batch, e);
      }
      return this.appendOneByOne(batch);
    }
    this.stats.batches++;
    this.applyAndAck(batch);
    this.o.onAppended?.(records, batch[0]!.arrivedMs);
    return batch.length;
  }

  /** The batch did not fit whole: append a prefix record by record, as far as space allows. */
  private appendOneByOne(batch: Pending[]): number {
    let i = 0;
    for (; i < batch.length; i++) {
      const p = batch[i]!;
      const snap = this.o.sequencer.snapshot();
      const records: AppendedRecord[] = [
        { header: this.headerOf(p), payload: p.payload, head: undefined, payloadStable: p.payloadStable },
      ];
      try {
        this.append(records);
      } catch (e) {
        this.o.sequencer.restore(snap);
        if (e instanceof RemcopyError && e.code === 'RC_ERR_JOURNAL_FULL') break;
        this.failAppend([p], e);
        continue;
      }
      this.applyAndAck([p]);
      this.o.onAppended?.(records, p.arrivedMs);
    }
    this.stats.batches++;
    return i;
  }

  /** journal.append, keeping the encoded heads it returns on the records. */
  private append(records: AppendedRecord[]): void {
    const heads = this.o.journal.append(records);
    for (let i = 0; i < records.length; i++) records[i]!.head = heads[i];
  }

  /** A full journal returns 0 (the caller throttles); any other error fails the writes. */
  private failAppend(batch: Pending[], e: unknown): number {
    if (e instanceof RemcopyError && e.code === 'RC_ERR_JOURNAL_FULL') return 0;
    const errno = errnoOf(e);
    this.o.log('error', 'journal append failed; writes rejected, nothing changed', { error: String(e) });
    for (const p of batch) p.reject(new BackendError(errno, `journal append failed: ${String(e)}`));
    return batch.length;
  }

  private headerOf(
    p: Pick<WriteRequest, 'group' | 'kind' | 'volume' | 'offset' | 'length' | 'hostTimeUs'>,
  ): RecordHeader {
    const f = this.o.sequencer.next(p.group, p.hostTimeUs, this.o.nowUs());
    return {
      kind: p.kind,
      group: p.group,
      seq: f.seq,
      writeTimeUs: f.writeTimeUs,
      hostTimeUs: f.hostTimeUs,
      nodeId: f.nodeId,
      ordinal: f.ordinal,
      epoch: this.o.epochOf(p.group),
      volume: p.volume,
      offset: byteOffset(p.offset),
      length: p.length,
      markerNo: 0,
    };
  }

  /**
   * Issue the batch's volume writes (overlapping ones in journal order, the rest in parallel on the
   * thread pool) and acknowledge each when its write is done, and for FUA when the journal is synced.
   */
  private applyAndAck(batch: Pending[]): void {
    this.stats.recordsAppended += batch.length;
    const gen = this.o.journal.appendGeneration;
    const written = this.o.journal.whenWritten(gen);
    let durable: Promise<void> | undefined;
    for (const p of batch) {
      if (p.fua && durable === undefined) durable = this.o.journal.sync();
      const applied = this.apply(p, gen, written);
      const done = p.fua ? Promise.all([applied, durable]) : applied;
      done.then(
        () => p.resolve(),
        (e) => this.failApplied(p, e),
      );
    }
  }

  /**
   * Small writes go to the page cache right here (a thread-pool round trip costs more than the
   * copy); large ones go to the pool, so their copy runs beside the next batch's journal append.
   * Either way a write waits for an overlapping one in flight, keeping journal order on the volume,
   * for the activity log when its extents are new there (`gen`: the journal's when appended), and
   * for its record's bytes to be in the journal (`written`, when they are not yet): a volume page
   * never holds a write its journal lacks. It joins the writes in flight at once all the same, so a
   * copy of its range (copyChunk) waits for it.
   */
  private apply(p: Pending, gen: number, written: Promise<void> | undefined): Promise<void> {
    const ranges = this.inflightOf(p.device);
    const end = p.offset + p.length;
    if (this.copyWatches.size > 0) this.wroteUnderCopy(p.device, p.offset, end);
    const logged = this.o.activityLog?.admit(p.volume, p.offset, p.length, gen);
    const before =
      logged === undefined ? written : written === undefined ? logged : Promise.all([written, logged]);
    if (before !== undefined) {
      return ranges.run(p.offset, end, () =>
        before.then(() => applyToDeviceAsync(p.device, p.kind, p.offset, p.length, p.payload)),
      );
    }
    if (p.length < ASYNC_APPLY_BYTES_MIN && !ranges.overlaps(p.offset, end)) {
      try {
        applyToDevice(p.device, p.kind, p.offset, p.length, p.payload);
        return Promise.resolve();
      } catch (e) {
        return Promise.reject(e);
      }
    }
    return ranges.run(p.offset, end, () =>
      applyToDeviceAsync(p.device, p.kind, p.offset, p.length, p.payload),
    );
  }

  /** A volume write of [start, end) was issued: a copy read of an overlapping range is stale. */
  private wroteUnderCopy(device: BlockDevice, start: number, end: number): void {
    for (const w of this.copyWatches)
      if (w.device === device && w.start < end && start < w.end) w.written = true;
  }

  private failApplied(p: Pending, e: unknown): void {
    // The record is placed in the journal, so a restart redoes it if its bytes were written there
    // (a journal that failed to write them holds none after); the host is told it failed.
    this.o.log('error', 'write failed after journalling', { volume: p.volume, error: String(e) });
    p.reject(new BackendError(errnoOf(e), `write failed: ${String(e)}`));
  }

  private inflightOf(device: BlockDevice): InflightRanges {
    let r = this.inflight.get(device);
    if (r === undefined) {
      r = new InflightRanges();
      this.inflight.set(device, r);
    }
    return r;
  }

  /** Resolves when every volume write issued so far on these devices has completed. */
  private drain(devices: Iterable<BlockDevice>): Promise<void> {
    const waits: Promise<void>[] = [];
    for (const d of devices) {
      const r = this.inflight.get(d);
      if (r) waits.push(r.drain());
    }
    return Promise.all(waits).then(() => {});
  }

  private startThrottle(): void {
    const now = this.o.nowMs();
    this.expireThrottled(now);
    if (this.pending.length === 0) return;
    this.o.log('warn', 'journal full: delaying host writes', { waiting: this.pending.length });
    this.throttleTimer = setTimeout(() => this.retryThrottled(), this.o.throttleRetryMs ?? 5);
  }

  private retryThrottled(): void {
    if (this.throttleTimer) clearTimeout(this.throttleTimer);
    this.throttleTimer = undefined;
    const first = this.pending[0];
    this.runBatch();
    if (first && this.pending[0] !== first) {
      const waitedMs = this.o.nowMs() - first.arrivedMs;
      this.stats.throttledWrites++;
      this.stats.throttleDelayMsTotal += waitedMs;
    }
  }

  /**
   * Writes that waited longer than the bound: their groups are suspended where the owner can
   * (track() takes their writes out of `pending`); the others fail with ENOSPC, nothing of them
   * written.
   */
  private expireThrottled(now: number): void {
    const expired = new Set<string>();
    for (const p of this.pending) if (now - p.arrivedMs >= this.o.throttleMaxDelayMs) expired.add(p.group);
    if (expired.size === 0) return;
    this.o.onThrottleExpired?.(expired);
    const keep: Pending[] = [];
    for (const p of this.pending) {
      if (now - p.arrivedMs >= this.o.throttleMaxDelayMs) {
        this.stats.rejectedJournalFull++;
        p.reject(new BackendError('ENOSPC', 'journal full: write not accepted (no data changed)'));
      } else keep.push(p);
    }
    this.pending = keep;
  }
}

/** What the host is told of a journal error: ENOSPC when the disk is full (named anywhere), else EIO. */
function errnoOf(e: unknown): 'ENOSPC' | 'EIO' {
  return (e as NodeJS.ErrnoException | null)?.code === 'ENOSPC' || /ENOSPC/.test(String(e))
    ? 'ENOSPC'
    : 'EIO';
}

/** Apply one record's effect to a volume on the thread pool (host writes). */
export function applyToDeviceAsync(
  device: BlockDevice,
  kind: RecordKind,
  offset: number,
  length: number,
  payload: Buffer | undefined,
): Promise<void> {
  if (kind === Kind.data || kind === Kind.copy) {
    assert(payload !== undefined && payload.length === length, 'payload length');
    return device.write(offset, payload);
  }
  if (kind === Kind.zero) return device.zero(offset, length);
  return Promise.resolve();
}

/**
 * Volume writes in flight on one device. Writes to disjoint ranges run in parallel; a write that
 * overlaps one in flight starts after it, so the volume ends up as the journal order says (a later
 * write never lands under an earlier one). Bounded by the front ends' in-flight limits.
 */
export class InflightRanges {
  private readonly entries = new Set<{ start: number; end: number; done: Promise<void> }>();

  run(start: number, end: number, op: () => Promise<void>): Promise<void> {
    const before: Promise<void>[] = [];
    for (const e of this.entries) if (e.start < end && start < e.end) before.push(e.done);
    const result = before.length === 0 ? op() : Promise.all(before).then(op);
    const entry = { start, end, done: result.then(noop, noop) };
    this.entries.add(entry);
    void entry.done.then(() => this.entries.delete(entry));
    return result;
  }

  get size(): number {
    return this.entries.size;
  }

  overlaps(start: number, end: number): boolean {
    for (const e of this.entries) if (e.start < end && start < e.end) return true;
    return false;
  }

  drain(): Promise<void> {
    return Promise.all([...this.entries].map((e) => e.done)).then(noop);
  }
}

const noop = (): void => {};

/**
 * Apply one record's effect to a volume synchronously: redo at start. A copy record (initial copy,
 * delta resync) goes around the page cache where it can (BlockDevice.writeForCopySync).
 */
export function applyToDevice(
  device: BlockDevice,
  kind: RecordKind,
  offset: number,
  length: number,
  payload: Buffer | undefined,
): void {
  if (kind === Kind.data || kind === Kind.copy) {
    assert(payload !== undefined && payload.length === length, 'payload length');
    if (kind === Kind.copy) device.writeForCopySync(offset, payload);
    else device.writeSync(offset, payload);
  } else if (kind === Kind.zero) {
    device.zeroSync(offset, length);
  }
}
