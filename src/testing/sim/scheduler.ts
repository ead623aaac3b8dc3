/**
 * Virtual time for the simulator: an event queue ordered by (time, insertion order), so that two
 * events at the same microsecond always run in the order they were scheduled. There are no real
 * timers: `run` pops events until the queue is empty, the end time is reached or `stop` is called.
 *
 * Time is an integer number of microseconds since the start of the run.
 */
interface Scheduled {
  readonly atUs: number;
  readonly order: number;
  readonly fn: () => void;
}

const before = (a: Scheduled, b: Scheduled): boolean =>
  a.atUs < b.atUs || (a.atUs === b.atUs && a.order < b.order);

export class Scheduler {
  private heap: Scheduled[] = [];
  private scheduledCount = 0;
  private nowUsNow = 0;
  private stopped = false;
  /** Events run so far (a cheap measure of how much a run did). */
  eventsRun = 0;

  get nowUs(): number {
    return this.nowUsNow;
  }

  get nowMs(): number {
    return this.nowUsNow / 1000;
  }

  /** Runs `fn` after `delayUs` (rounded to whole microseconds, at least 0). */
  after(delayUs: number, fn: () => void): void {
    this.push({ atUs: this.nowUsNow + Math.max(0, Math.round(delayUs)), order: this.scheduledCount++, fn });
  }

  /** Runs `fn` every `periodUs` while `fn` returns true. */
  every(periodUs: number, fn: () => boolean): void {
    const loop = (): void => {
      if (fn()) this.after(periodUs, loop);
    };
    this.after(periodUs, loop);
  }

  stop(): void {
    this.stopped = true;
  }

  /** Runs events up to and including `endUs`, or until stop(). Returns true if stopped. */
  runUntil(endUs: number): boolean {
    this.stopped = false;
    while (!this.stopped && this.heap.length > 0 && this.heap[0]!.atUs <= endUs) {
      const e = this.pop();
      this.nowUsNow = e.atUs;
      this.eventsRun++;
      e.fn();
    }
    if (!this.stopped) this.nowUsNow = Math.max(this.nowUsNow, endUs);
    return this.stopped;
  }

  private push(e: Scheduled): void {
    const h = this.heap;
    h.push(e);
    let i = h.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!before(h[i]!, h[parent]!)) break;
      [h[i], h[parent]] = [h[parent]!, h[i]!];
      i = parent;
    }
  }

  private pop(): Scheduled {
    const h = this.heap;
    const top = h[0]!;
    const last = h.pop()!;
    if (h.length > 0) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && before(h[l]!, h[m]!)) m = l;
        if (r < h.length && before(h[r]!, h[m]!)) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m]!, h[i]!];
        i = m;
      }
    }
    return top;
  }
}
