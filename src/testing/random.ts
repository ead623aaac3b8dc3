/**
 * Seeded randomness for tests, fuzzing and (later) the simulator: the same seed gives the same
 * run, so a failure printed with its seed replays exactly. mulberry32: small, fast, good enough
 * for test inputs (not for anything secret).
 */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Runs `run` for each seed from `base`; a failure names its seed and the command that replays it. */
export function forEachSeed(
  base: number,
  count: number,
  replay: (seed: number) => string,
  run: (seed: number) => void,
): void {
  for (let seed = base; seed < base + count; seed++) {
    try {
      run(seed);
    } catch (e) {
      throw new Error(`seed ${seed} failed; replay: ${replay(seed)}\n${String(e)}`, { cause: e });
    }
  }
}
