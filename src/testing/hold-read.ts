/**
 * Orders the steps of a test around a read in flight: holds one read of a real device until the
 * test lets it go, so that what must happen during the read (a write, a preserve, a delete) does,
 * without any timing.
 */
import type { FileBlockDevice } from '../storage/blockdev.js';

/**
 * Holds the next read of `dev` that starts at `offset` (one of a snapshot read's runs, say) until
 * `open()`; `reached` resolves once it is issued. Other reads, a preserve's copy among them, pass.
 */
export function holdRead(dev: FileBlockDevice, offset: number): { reached: Promise<void>; open: () => void } {
  const read = dev.read.bind(dev);
  let open!: () => void;
  let reach!: () => void;
  const gate = new Promise<void>((resolve) => (open = resolve));
  const reached = new Promise<void>((resolve) => (reach = resolve));
  dev.read = async (o, l) => {
    if (o !== offset) return read(o, l);
    dev.read = read;
    reach();
    await gate;
    return read(o, l);
  };
  return { reached, open };
}
