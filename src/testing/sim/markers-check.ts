/**
 * Checkers of the markers simulation (markers.ts, doc/simulator.md "Markers across nodes"): pure
 * functions over what a run recorded, so each can be shown to fail on a made-up history too
 * (test/sim/markers.test.ts).
 *
 * - marker-cut: every snapshot n a target took holds, for every group on that target, exactly the
 *   source's volumes after the group's records before its marker n (nothing newer, nothing lost).
 * - dependent-writes: for every marker n that every target snapshotted, no cross-node pair (W1 on
 *   one source acknowledged before W2 was issued on another) has W2 before marker n without W1.
 * - freeze-point: a marker placed under a freeze lies exactly at the freeze: every write submitted
 *   to that node before the freeze is before it, every write the freeze held or submitted after
 *   the mark is after it.
 * - monotonic-markers: a target's marker outcomes (snapshot or incomplete) have increasing numbers,
 *   and what it releases never goes back (restarts included).
 * - convergence: after the workload and a final checkpoint, every target reached the final marker
 *   and its volumes equal its sources' (a target that never gets there has stalled).
 * - no-loss: every write submitted was journalled at its source and acknowledged (held writes too).
 */
import type { RecordHeader } from '../../core/types.js';
import { RecordKind } from '../../core/types.js';

export const MARKER_CHECKERS = [
  'marker-cut',
  'dependent-writes',
  'freeze-point',
  'monotonic-markers',
  'convergence',
  'no-loss',
  'protocol',
  'exception',
] as const;
export type MarkerCheckerName = (typeof MARKER_CHECKERS)[number];

export interface MarkerViolation {
  readonly checker: MarkerCheckerName;
  readonly message: string;
}

/** A journal record of the simulation: the header, and for data the id of the write it carries. */
export interface SimRecord {
  readonly h: RecordHeader;
  /** The write's id for a data record (a block holds the id of its last write); 0 for a marker. */
  readonly writeId: number;
}

/** Block contents: the id of the last write applied to each block, 0 if none. */
export type Volumes = ReadonlyMap<string, readonly number[]>;

export interface WriteRec {
  readonly writeId: number;
  readonly source: string;
  readonly group: string;
  readonly volume: string;
  readonly block: number;
  readonly submitUs: number;
  /** Node-local order of submits, freezes and marks (ties at one microsecond told apart). */
  readonly submitIdx: number;
  /** The freeze that held it (queued until the thaw), if any. */
  heldBy: number | undefined;
  seq: number | undefined;
  ackUs: number | undefined;
}

/** W1 acknowledged before W2 was issued, on different source nodes. */
export interface Pair {
  readonly w1: number;
  readonly w2: number;
}

export interface Placement {
  readonly source: string;
  readonly marker: number;
  /** The freeze the marker was placed under (undefined: marked without a freeze). */
  readonly freezeId: number | undefined;
  readonly freezeIdx: number | undefined;
  readonly markIdx: number;
}

export interface GroupShape {
  readonly name: string;
  readonly source: string;
  readonly target: string;
  readonly volumes: readonly { readonly name: string; readonly blocks: number }[];
}

export interface TargetEnd {
  readonly name: string;
  readonly up: boolean;
  readonly volumes: Volumes;
  readonly snapshots: ReadonlyMap<number, Volumes>;
  /** Marker outcomes in the order they happened. */
  readonly outcomes: readonly { readonly marker: number; readonly kind: 'snapshot' | 'incomplete' }[];
  /** Every value `released` took, in order (restarts included). */
  readonly releasedTrace: readonly number[];
  readonly released: number;
}

/** Per group: marker number -> its seq in the group's source journal. */
export function markerSeqs(
  journals: ReadonlyMap<string, readonly SimRecord[]>,
): Map<string, Map<number, number>> {
  const out = new Map<string, Map<number, number>>();
  for (const [g, recs] of journals) {
    const m = new Map<number, number>();
    for (const r of recs) if (r.h.kind === RecordKind.marker) m.set(r.h.markerNo, r.h.seq);
    out.set(g, m);
  }
  return out;
}

/** The group's volumes after its data records with seq below `seqBefore` (Infinity: all). */
export function foldGroup(
  g: GroupShape,
  records: readonly SimRecord[],
  seqBefore: number,
): Map<string, number[]> {
  const vols = new Map(g.volumes.map((v) => [v.name, new Array<number>(v.blocks).fill(0)]));
  for (const r of records) {
    if (r.h.seq >= seqBefore) break;
    if (r.h.kind !== RecordKind.data) continue;
    vols.get(r.h.volume)![r.h.offset] = r.writeId;
  }
  return vols;
}

function diffVolumes(
  expected: ReadonlyMap<string, readonly number[]>,
  actual: Volumes,
  names: readonly string[],
): string | undefined {
  for (const v of names) {
    const e = expected.get(v);
    const a = actual.get(v);
    if (e === undefined || a === undefined) return `${v}: missing (${e === undefined ? 'source' : 'target'})`;
    for (let b = 0; b < e.length; b++) {
      if (e[b] !== a[b]) return `${v} block ${b}: holds write ${a[b]}, the source has ${e[b]}`;
    }
  }
  return undefined;
}

export function checkMarkerCut(
  groups: readonly GroupShape[],
  journals: ReadonlyMap<string, readonly SimRecord[]>,
  targets: readonly TargetEnd[],
): MarkerViolation[] {
  const out: MarkerViolation[] = [];
  const seqs = markerSeqs(journals);
  for (const t of targets) {
    for (const [n, snap] of t.snapshots) {
      for (const g of groups.filter((x) => x.target === t.name)) {
        const at = seqs.get(g.name)?.get(n);
        if (at === undefined) {
          out.push({
            checker: 'marker-cut',
            message: `${t.name} snapshot ${n}: ${g.name} has no marker ${n}`,
          });
          continue;
        }
        const diff = diffVolumes(
          foldGroup(g, journals.get(g.name)!, at),
          snap,
          g.volumes.map((v) => v.name),
        );
        if (diff !== undefined) {
          out.push({
            checker: 'marker-cut',
            message: `${t.name} snapshot ${n}, ${g.name} (marker at seq ${at}): ${diff}`,
          });
        }
      }
    }
  }
  return out;
}

export function checkDependent(
  journals: ReadonlyMap<string, readonly SimRecord[]>,
  targets: readonly TargetEnd[],
  writes: ReadonlyMap<number, WriteRec>,
  pairs: readonly Pair[],
): MarkerViolation[] {
  const out: MarkerViolation[] = [];
  const seqs = markerSeqs(journals);
  const first = targets[0];
  if (first === undefined) return out;
  const everywhere = [...first.snapshots.keys()].filter((n) => targets.every((t) => t.snapshots.has(n)));
  for (const n of everywhere) {
    for (const p of pairs) {
      const w1 = writes.get(p.w1)!;
      const w2 = writes.get(p.w2)!;
      const m1 = seqs.get(w1.group)?.get(n);
      const m2 = seqs.get(w2.group)?.get(n);
      if (m1 === undefined || m2 === undefined || w2.seq === undefined) continue;
      const in2 = w2.seq < m2;
      const in1 = w1.seq !== undefined && w1.seq < m1;
      if (in2 && !in1) {
        out.push({
          checker: 'dependent-writes',
          message:
            `snapshot ${n}: write ${w2.writeId} (${w2.group} seq ${w2.seq}, before marker at ${m2}) is in it, ` +
            `but write ${w1.writeId} (${w1.group} seq ${w1.seq}, marker at ${m1}), acknowledged before it was issued, is not`,
        });
      }
    }
  }
  return out;
}

export function checkFreezePoint(
  journals: ReadonlyMap<string, readonly SimRecord[]>,
  placements: readonly Placement[],
  writes: ReadonlyMap<number, WriteRec>,
): MarkerViolation[] {
  const out: MarkerViolation[] = [];
  const seqs = markerSeqs(journals);
  for (const p of placements) {
    if (p.freezeIdx === undefined) continue;
    for (const w of writes.values()) {
      if (w.source !== p.source || w.seq === undefined) continue;
      const at = seqs.get(w.group)?.get(p.marker);
      if (at === undefined) continue;
      const before = w.seq < at;
      const mustBefore = w.submitIdx < p.freezeIdx && w.heldBy !== p.freezeId;
      const mustAfter = w.heldBy === p.freezeId || w.submitIdx > p.markIdx;
      if ((mustBefore && !before) || (mustAfter && before)) {
        out.push({
          checker: 'freeze-point',
          message:
            `${p.source} marker ${p.marker}: write ${w.writeId} (${w.group} seq ${w.seq}) was ` +
            `${mustBefore ? 'submitted before the freeze' : w.heldBy === p.freezeId ? 'held by the freeze' : 'submitted after the mark'} ` +
            `but lies ${before ? 'before' : 'after'} the marker (seq ${at})`,
        });
      }
    }
  }
  return out;
}

export function checkMonotonic(targets: readonly TargetEnd[]): MarkerViolation[] {
  const out: MarkerViolation[] = [];
  for (const t of targets) {
    for (let i = 1; i < t.outcomes.length; i++) {
      const a = t.outcomes[i - 1]!;
      const b = t.outcomes[i]!;
      if (b.marker <= a.marker) {
        out.push({
          checker: 'monotonic-markers',
          message: `${t.name}: marker ${b.marker} (${b.kind}) after marker ${a.marker} (${a.kind})`,
        });
      }
    }
    for (let i = 1; i < t.releasedTrace.length; i++) {
      if (t.releasedTrace[i]! < t.releasedTrace[i - 1]!) {
        out.push({
          checker: 'monotonic-markers',
          message: `${t.name}: released went back from ${t.releasedTrace[i - 1]} to ${t.releasedTrace[i]}`,
        });
      }
    }
  }
  return out;
}

export function checkConvergence(
  groups: readonly GroupShape[],
  journals: ReadonlyMap<string, readonly SimRecord[]>,
  targets: readonly TargetEnd[],
  finalMarker: number | undefined,
  stalled: string | undefined,
): MarkerViolation[] {
  const out: MarkerViolation[] = [];
  if (finalMarker === undefined) {
    return [
      { checker: 'convergence', message: `no final checkpoint completed${stalled ? `: ${stalled}` : ''}` },
    ];
  }
  for (const t of targets) {
    if (!t.up) out.push({ checker: 'convergence', message: `${t.name} is down at the end` });
    if (!t.snapshots.has(finalMarker) || t.released < finalMarker) {
      out.push({
        checker: 'convergence',
        message: `${t.name} did not reach the final marker ${finalMarker} (released ${t.released})${stalled ? `: ${stalled}` : ''}`,
      });
      continue;
    }
    for (const g of groups.filter((x) => x.target === t.name)) {
      const diff = diffVolumes(
        foldGroup(g, journals.get(g.name)!, Infinity),
        t.volumes,
        g.volumes.map((v) => v.name),
      );
      if (diff !== undefined) out.push({ checker: 'convergence', message: `${t.name} ${g.name}: ${diff}` });
    }
  }
  return out;
}

export function checkNoLoss(
  journals: ReadonlyMap<string, readonly SimRecord[]>,
  writes: ReadonlyMap<number, WriteRec>,
): MarkerViolation[] {
  const out: MarkerViolation[] = [];
  for (const w of writes.values()) {
    const rec = w.seq === undefined ? undefined : journals.get(w.group)?.[w.seq - 1];
    const held = w.heldBy === undefined ? '' : ` (held by freeze ${w.heldBy})`;
    if (rec === undefined || rec.writeId !== w.writeId) {
      out.push({
        checker: 'no-loss',
        message: `write ${w.writeId} to ${w.group} is not in its journal${held}`,
      });
    } else if (w.ackUs === undefined) {
      out.push({
        checker: 'no-loss',
        message: `write ${w.writeId} to ${w.group} was never acknowledged${held}`,
      });
    }
  }
  return out;
}
