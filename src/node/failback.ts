/**
 * Failback (DESIGN.md §3.7, issue 4): after a takeover, the node that took over (N, promoted) becomes
 * the source of the old source (O), which becomes its target. `remcopy failback` drives four steps
 * through the two nodes' APIs; each is idempotent, so a failback cut short is finished by running it
 * again:
 *
 *   demote  (O)  fence the group at the takeover's epoch, drain its host writes, persist its dirty
 *                set = its bitmap + the chunks of every journalled record the takeover did not apply
 *                (seq > takeoverSeq); answer that set and the group's last seq.
 *   accept  (O)  release the old direction's records durably, start an empty target journal and
 *                apply state after seq `base`, record N as the source, announce `resync` (the image
 *                is half-synced: reads refused), turn the replication around. Answers the base in
 *                force (an accept repeated keeps the first one's).
 *   promote (N)  add O's dirty set to its own bitmap (writes since the takeover), continue the
 *                group's seqs after `base`, record itself as the source with a resync pending, turn
 *                the replication around: the resync copies the union as copy records.
 *   done    (O)  clear its handed-over bitmap.
 *
 * `base` is above every seq either node has journalled for the group, so the target accepts the new
 * source's records and no old record is ever taken for a new one. The epoch stays the takeover's:
 * a node with a lower one cannot act as source (it is fenced), so the two never both are.
 */
import { DirtyBitmap } from '../core/dirty-bitmap.js';
import { RemcopyError } from '../core/errors.js';
import { seq } from '../core/types.js';
import * as fs from 'node:fs';
import * as z from 'zod';
import { join } from 'node:path';
import { writeBitmapFile } from '../storage/bitmap-file.js';
import { Journal } from '../storage/journal.js';
import { ApiError } from './api.js';
import type { GroupConfig } from './config.js';
import type { RemcopyNode } from './node.js';
import { applyStateFile, resetApplyState } from './replication/apply.js';
import type { GroupBitmaps } from './replication/bitmaps.js';
import { bitmapsOn } from './replication/bitmaps.js';
import { setOf } from './replication/target.js';

/** One group's dirty set as demote answers it: bits per volume of the old source, base64. */
export interface DemotedGroup {
  group: string;
  lastSeq: number;
  chunkBytes: number;
  dirtyBytes: number;
  bitmaps: Record<string, string>;
}

const seqs = z.record(z.string(), z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER));
const groupList = z.array(z.string().min(1)).min(1).max(1024);
const stepSchema = z.discriminatedUnion('step', [
  z.object({
    step: z.literal('demote'),
    groups: groupList,
    epoch: z.number().int().min(1),
    takeoverSeqs: seqs,
  }),
  z.object({
    step: z.literal('accept'),
    groups: groupList,
    epoch: z.number().int().min(1),
    source: z.string().min(1),
    bases: seqs,
  }),
  z.object({
    step: z.literal('promote'),
    groups: groupList,
    bases: seqs,
    peer: z.record(
      z.string(),
      z.object({ chunkBytes: z.number().int().positive(), bitmaps: z.record(z.string(), z.string()) }),
    ),
  }),
  z.object({ step: z.literal('done'), groups: groupList }),
]);

export type FailbackStep = z.infer<typeof stepSchema>;

/** A failback request body for `step`, checked; a 400 naming what is wrong otherwise. */
export function parseFailbackStep(step: string, body: unknown): FailbackStep {
  const r = stepSchema.safeParse({ ...(body as object), step });
  if (!r.success) {
    throw new ApiError(
      400,
      r.error.issues.map((i) => `${i.path.join('.') || 'step'}: ${i.message}`).join('; '),
    );
  }
  return r.data;
}

export class Failback {
  constructor(private readonly node: RemcopyNode) {}

  /** Step 1, on the old source. */
  async demote(
    groups: readonly string[],
    epoch: number,
    takeoverSeqs: ReadonlyMap<string, number>,
  ): Promise<unknown> {
    const { node } = this;
    const me = node.cfg.name;
    const list = groups.map((name) => this.group(name));
    this.wholeSets(list);
    for (const g of list) {
      const st = node.groupState.get(g.name);
      if (st.demoted?.epoch === epoch) continue;
      if (g.source !== me)
        throw conflict(`${me} is not the source of ${g.name}: nothing to fail back from here`);
      if (st.role === 'promoted') throw conflict(`${g.name} was taken over at ${me}`);
      if (st.epoch > epoch) {
        throw conflict(`${g.name} is at epoch ${st.epoch} here, newer than the takeover's ${epoch}`);
      }
      if (st.role !== 'fenced' && st.epoch === epoch) {
        throw conflict(`${g.name} is an active source at epoch ${epoch} here: no takeover at a newer epoch`);
      }
      if (!takeoverSeqs.has(g.name)) throw new ApiError(400, `takeoverSeqs.${g.name} is missing`);
    }
    const out: DemotedGroup[] = [];
    for (const g of list) {
      const st = node.groupState.get(g.name);
      const by = `failback of ${g.name} to ${g.target}`;
      if (st.demoted?.epoch === epoch) {
        out.push(describe(g.name, st.demoted.lastSeq, this.bitmapsOf(g)));
        continue;
      }
      const bitmaps = (await node.source?.quiesce(g.name, epoch, by)) ?? this.bitmapsOf(g);
      node.setGroupRole(g.name, 'fenced');
      if (!node.groupState.has(g.name) || st.copy?.state === 'copy') {
        // The initial copy never finished: the target never held the whole volume.
        await bitmaps.markAll(
          [...g.pairs.keys()].map((v) => ({ volume: v, offset: 0, length: volumeSize(node, v) })),
        );
      } else {
        // The records journalled past the takeover: the target never applied them.
        await bitmaps.markJournalled(node.journal, g.name, takeoverSeqs.get(g.name)!);
      }
      const lastSeq = node.journal.lastSeq(g.name);
      await node.groupState.update(g.name, {
        epoch,
        role: 'fenced',
        reason: by,
        demoted: { epoch, lastSeq },
      });
      node.log('warn', 'failback: group fenced here, its changes since the takeover are handed over', {
        group: g.name,
        epoch,
        dirtyBytes: bitmaps.dirtyBytes,
      });
      out.push(describe(g.name, lastSeq, bitmaps));
    }
    return { node: me, groups: out };
  }

  /** Step 2, on the old source: it becomes the target of `source`. */
  async accept(
    groups: readonly string[],
    epoch: number,
    source: string,
    bases: ReadonlyMap<string, number>,
  ): Promise<unknown> {
    const { node } = this;
    const me = node.cfg.name;
    const list = groups.map((name) => this.group(name));
    this.wholeSets(list);
    const todo = list.filter((g) => !(g.target === me && g.source === source));
    for (const g of todo) {
      const st = node.groupState.get(g.name);
      if (st.demoted?.epoch !== epoch) throw conflict(`${g.name} was not demoted at epoch ${epoch} here`);
      if (g.target !== source) throw conflict(`${source} is not the peer of ${me} for ${g.name}`);
      const base = bases.get(g.name);
      if (base === undefined || base < st.demoted.lastSeq) {
        throw new ApiError(400, `bases.${g.name} must be at least ${st.demoted.lastSeq}`);
      }
    }
    const inForce = (): Record<string, number> =>
      Object.fromEntries(
        list.map((g) => [g.name, node.groupState.get(g.name).demoted?.base ?? bases.get(g.name)!]),
      );
    if (todo.length === 0) {
      // Done before; the turn-around itself may have failed half-way: do it again.
      if (!node.target || !node.source) await node.reconfigure();
      return { node: me, groups: list.map((g) => g.name), bases: inForce(), already: true };
    }
    for (const g of todo) {
      // The volumes hold every record (demote synced them): no redo may replay them over N's data.
      await node.journal.releaseAll(g.name);
      const dir = join(node.cfg.dataDir, 'in', g.name);
      fs.rmSync(dir, { recursive: true, force: true });
      const j = await Journal.open({
        dir,
        bytesMax: node.cfg.journal.bytesMax,
        segmentBytes: node.cfg.journal.segmentBytes,
        log: node.log,
      });
      try {
        await j.resumeGroup(g.name, seq(bases.get(g.name)!));
      } finally {
        await j.close();
      }
    }
    for (const set of new Set(todo.map((g) => setOf(node.topo, g.name)))) {
      const members = todo.filter((g) => setOf(node.topo, g.name) === set);
      await resetApplyState(
        applyStateFile(node.cfg.dataDir, set),
        new Map(members.map((g) => [g.name, bases.get(g.name)!])),
      );
    }
    const st = (name: string) => node.groupState.get(name).demoted!;
    for (const g of todo) {
      await node.groupState.update(g.name, {
        epoch,
        role: undefined,
        reason: `failback: target of ${source}`,
        source,
        copy: undefined,
        delta: undefined,
        takeoverSeq: undefined,
        takeoverMarker: undefined,
        announced: { state: 'resync', copyEndSeq: 0, after: 'resync' },
        demoted: { ...st(g.name), base: bases.get(g.name)! },
      });
    }
    await node.reconfigure();
    node.log(
      'warn',
      'failback: this node is now the target; its image is half-synced until the resync ends',
      {
        groups: todo.map((g) => g.name),
        source,
      },
    );
    return { node: me, groups: list.map((g) => g.name), bases: inForce() };
  }

  /** Step 3, on the node that took over: it becomes the source again, of the old source. */
  async promote(
    groups: readonly string[],
    bases: ReadonlyMap<string, number>,
    peerBits: ReadonlyMap<string, { chunkBytes: number; bitmaps: Record<string, string> }>,
  ): Promise<unknown> {
    const { node } = this;
    const me = node.cfg.name;
    const list = groups.map((name) => this.group(name));
    this.wholeSets(list);
    const todo = list.filter((g) => node.groupState.get(g.name).role === 'promoted');
    const figures = [];
    for (const g of list) {
      if (todo.includes(g)) continue;
      if (g.source !== me) throw conflict(`${g.name} was not taken over at ${me}`);
    }
    // Check every input before anything changes.
    const ranges = new Map<string, { volume: string; offset: number; length: number }[]>();
    for (const g of todo) {
      const base = bases.get(g.name);
      if (base === undefined || base < node.journal.lastSeq(g.name)) {
        throw new ApiError(400, `bases.${g.name} must be at least ${node.journal.lastSeq(g.name)}`);
      }
      const bits = peerBits.get(g.name);
      if (bits === undefined) throw new ApiError(400, `the old source's bitmaps of ${g.name} are missing`);
      ranges.set(g.name, peerRanges(node, g, bits));
    }
    for (const g of todo) {
      const st = node.groupState.get(g.name);
      const bitmaps = node.promoted.get(g.name)!;
      const own = bitmaps.dirtyBytes;
      await bitmaps.markAll(ranges.get(g.name)!);
      const base = seq(bases.get(g.name)!);
      await node.journal.releaseAll(g.name);
      await node.journal.resumeGroup(g.name, base);
      node.sequencer.resumeGroup(g.name, base);
      await node.groupState.update(g.name, {
        role: undefined,
        reason: undefined,
        source: me,
        takeoverSeq: undefined,
        takeoverMarker: undefined,
        announced: undefined,
        copy: undefined,
        delta: {
          state: 'resync',
          reason: `failback to ${g.source}`,
          since: new Date().toISOString(),
          redoFloor: base,
          resyncEndSeq: 0,
          resyncs: (st.delta?.resyncs ?? 0) + 1,
        },
      });
      figures.push({
        group: g.name,
        epoch: st.epoch,
        base,
        ownDirtyBytes: own,
        dirtyBytes: bitmaps.dirtyBytes,
      });
    }
    if (todo.length > 0 || !node.target || !node.source) {
      await node.reconfigure();
      for (const g of todo) node.promoted.delete(g.name);
      node.log('warn', 'failback: this node is the source again; the resync of both sides changes runs', {
        groups: figures,
      });
    }
    return { node: me, groups: figures, already: todo.length === 0 };
  }

  /** Step 4, on the old source: its dirty set is held by the new source; forget it. */
  async done(groups: readonly string[]): Promise<unknown> {
    const { node } = this;
    for (const g of groups.map((name) => this.group(name))) {
      const st = node.groupState.get(g.name);
      if (st.demoted === undefined) continue;
      if (g.target !== node.cfg.name) throw conflict(`${node.cfg.name} is not the target of ${g.name}`);
      const clean = new Map(
        [...g.pairs.values()].map((v) => [v, new DirtyBitmap(volumeSize(node, v), g.bitmapChunkBytes)]),
      );
      await writeBitmapFile(
        join(node.cfg.dataDir, 'bitmaps', `${g.name}.bmp`),
        g.name,
        g.bitmapChunkBytes,
        clean,
      );
      await node.groupState.update(g.name, { demoted: undefined });
    }
    return { node: node.cfg.name, groups };
  }

  private group(name: string): GroupConfig {
    const g = this.node.topo.groups.get(name);
    if (!g) throw new ApiError(404, `no group ${name}`);
    if (g.source !== this.node.cfg.name && g.target !== this.node.cfg.name) {
      throw conflict(`${this.node.cfg.name} is neither source nor target of ${name}`);
    }
    return g;
  }

  /**
   * The groups of a consistency set change direction together: every group of the set this node
   * is source or target of is in the request (a set whose groups span nodes fails back pair of
   * nodes by pair of nodes).
   */
  private wholeSets(list: readonly GroupConfig[]): void {
    const names = new Set(list.map((g) => g.name));
    const me = this.node.cfg.name;
    const mine = (m: string): boolean => {
      const c = this.node.topo.groups.get(m);
      return c !== undefined && (c.source === me || c.target === me);
    };
    for (const g of list) {
      const set = setOf(this.node.topo, g.name);
      const missing = (this.node.topo.consistencySets.get(set) ?? []).filter((m) => mine(m) && !names.has(m));
      if (missing.length > 0) {
        throw conflict(
          `${g.name} is in consistency set ${set}: fail back the whole set (missing ${missing.join(', ')})`,
        );
      }
    }
  }

  /** The group's bitmaps on this node's own volumes (open on the source side if it runs here). */
  private bitmapsOf(g: GroupConfig): GroupBitmaps {
    return this.node.source?.bitmapsOf(g.name) ?? bitmapsOn(this.node.cfg, g);
  }
}

function conflict(message: string): ApiError {
  return new ApiError(409, `RC_ERR_STATE: ${message}`);
}

function volumeSize(node: RemcopyNode, volume: string): number {
  const v = node.cfg.volumes.get(volume);
  if (!v) throw new RemcopyError('RC_ERR_CONFIG', `no volume ${volume} on ${node.cfg.name}`);
  return v.sizeBytes;
}

function describe(group: string, lastSeq: number, b: GroupBitmaps): DemotedGroup {
  return {
    group,
    lastSeq,
    chunkBytes: b.chunkBytes,
    dirtyBytes: b.dirtyBytes,
    bitmaps: Object.fromEntries(
      [...b.maps].map(([v, bm]) => [v, Buffer.from(bm.toBytes()).toString('base64')]),
    ),
  };
}

/**
 * The old source's dirty chunks as ranges of this node's volumes (the group's pairs map the old
 * source's volume names to ours). A bitmap of the wrong size or chunk is refused, naming it.
 */
function peerRanges(
  node: RemcopyNode,
  g: GroupConfig,
  bits: { chunkBytes: number; bitmaps: Record<string, string> },
): { volume: string; offset: number; length: number }[] {
  if (bits.chunkBytes !== g.bitmapChunkBytes) {
    throw new ApiError(
      400,
      `${g.name}: the old source's chunk is ${bits.chunkBytes} bytes, here ${g.bitmapChunkBytes}`,
    );
  }
  const out = [];
  for (const [theirs, b64] of Object.entries(bits.bitmaps)) {
    const mine = g.pairs.get(theirs);
    if (mine === undefined) throw new ApiError(400, `${g.name}: ${theirs} is not a volume of the old source`);
    const size = volumeSize(node, mine);
    const raw = Buffer.from(b64, 'base64');
    if (raw.length !== DirtyBitmap.byteLength(size, bits.chunkBytes)) {
      throw new ApiError(
        400,
        `${g.name}: the bitmap of ${theirs} has ${raw.length} bytes, not ${DirtyBitmap.byteLength(size, bits.chunkBytes)}`,
      );
    }
    const bm = new DirtyBitmap(size, bits.chunkBytes, raw);
    for (let c = bm.nextDirty(0); c >= 0; c = bm.nextDirty(c + 1)) out.push({ volume: mine, ...bm.range(c) });
  }
  return out;
}
