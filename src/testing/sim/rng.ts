/**
 * The simulator's randomness: one seeded stream (mulberry32, src/testing/random.ts) per run, split
 * into independent sub-streams per component (network, disks, workload, faults) so that a change
 * in how one component draws numbers does not reshuffle what the others do for the same seed.
 * Nothing in the simulator may use Math.random.
 */
import { mulberry32 } from '../random.js';

export class Rng {
  private readonly next: () => number;

  constructor(seed: number) {
    this.next = mulberry32(seed);
  }

  /** An integer in [lo, hi], both included. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }

  chance(p: number): boolean {
    return this.next() < p;
  }

  pick<T>(xs: readonly T[]): T {
    if (xs.length === 0) throw new Error('pick from an empty list');
    return xs[Math.floor(this.next() * xs.length)]!;
  }

  /** An independent stream seeded from this one. */
  fork(): Rng {
    return new Rng(Math.floor(this.next() * 0x1_0000_0000));
  }
}
