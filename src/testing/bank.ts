/**
 * The bank-transfer workload of seed 001 [0003], as dependent writes over two volumes, and its
 * checker (TESTING.md "Dependent writes"). Used by the demo and the real-process tests.
 *
 * Layout: worker w owns blocks w*K .. w*K+K-1 of both volumes (K = blocksPerWorker). Its transfer
 * i writes the debit block b = w*K + (i mod K) on the debit volume, waits for the acknowledgement,
 * then writes the same block on the credit volume. Each block holds a self-describing header:
 *
 *   0 "BANK"  4 worker u32  8 transfer id (f64, from 1)  16 amount f64  24 crc32c of bytes 0..23
 *
 * Invariant at every consistent image: a credit of transfer i is only visible where the debit of
 * transfer i, or a later one of the same worker on that block, is visible (the debit was
 * acknowledged before the credit was issued). Money in flight is at most one transfer per worker.
 */
import { crc32c } from '@node-rs/crc32';

export const BANK_BLOCK_BYTES = 4096;
const MAGIC = 0x4b4e4142; // "BANK" little-endian

export interface BankLayout {
  readonly workers: number;
  readonly blocksPerWorker: number;
}

/** A writer of one block: the native client's Volume.write, or an NBD write; resolves on ack. */
export type BlockWriter = (offset: number, data: Buffer, transfer: number) => Promise<void>;

export function bankBlock(worker: number, transfer: number, amount: number): Buffer {
  const b = Buffer.alloc(BANK_BLOCK_BYTES);
  b.writeUInt32LE(MAGIC, 0);
  b.writeUInt32LE(worker, 4);
  b.writeDoubleLE(transfer, 8);
  b.writeDoubleLE(amount, 16);
  b.writeUInt32LE(crc32c(b.subarray(0, 24)), 24);
  return b;
}

/** The transfer id a block holds (0 for a never-written block); throws on a torn or foreign block. */
export function transferOf(
  block: Buffer,
  where: string,
): { worker: number; transfer: number; amount: number } {
  if (block.readUInt32LE(0) === 0 && block.subarray(0, 28).every((x) => x === 0)) {
    return { worker: -1, transfer: 0, amount: 0 };
  }
  if (block.readUInt32LE(0) !== MAGIC || block.readUInt32LE(24) !== crc32c(block.subarray(0, 24))) {
    throw new Error(`${where}: not a whole bank block (torn or foreign data)`);
  }
  return { worker: block.readUInt32LE(4), transfer: block.readDoubleLE(8), amount: block.readDoubleLE(16) };
}

export interface BankProgress {
  /** Transfers whose credit was acknowledged. */
  completed: number;
  /** Errors that stopped a worker (a crashed node ends the workload this way). */
  errors: string[];
}

/**
 * Runs transfers until `stop()` says so or a write fails. `debit` and `credit` write one block
 * each. Returns when every worker has stopped.
 */
export async function runBank(
  layout: BankLayout,
  debit: BlockWriter,
  credit: BlockWriter,
  stop: () => boolean,
  progress: BankProgress,
): Promise<void> {
  const worker = async (w: number): Promise<void> => {
    for (let i = 1; !stop(); i++) {
      const block = w * layout.blocksPerWorker + ((i - 1) % layout.blocksPerWorker);
      const amount = 1 + ((i * 7919 + w * 104729) % 1000);
      const data = bankBlock(w, i, amount);
      try {
        await debit(block * BANK_BLOCK_BYTES, data, i);
        await credit(block * BANK_BLOCK_BYTES, data, i);
      } catch (e) {
        progress.errors.push(`worker ${w}: ${(e as Error).message}`);
        return;
      }
      progress.completed++;
    }
  };
  await Promise.all(Array.from({ length: layout.workers }, (_, w) => worker(w)));
}

export interface BankCheck {
  readonly ok: boolean;
  /** Blocks with a credit visible. */
  readonly credits: number;
  /** Transfers the image shows complete: per worker, its newest credit visible. */
  readonly transfers: number;
  /** Debits visible without their credit: money in flight at this image. */
  readonly inFlight: number;
  readonly violations: readonly string[];
}

/** Checks one image of both volumes' worker blocks (bytes from block 0 on). */
export function checkBank(layout: BankLayout, debits: Buffer, credits: Buffer): BankCheck {
  const violations: string[] = [];
  let creditCount = 0;
  let inFlight = 0;
  const newest = new Array<number>(layout.workers).fill(0);
  const blocks = layout.workers * layout.blocksPerWorker;
  for (let b = 0; b < blocks; b++) {
    const at = b * BANK_BLOCK_BYTES;
    let d: ReturnType<typeof transferOf>;
    let c: ReturnType<typeof transferOf>;
    try {
      d = transferOf(debits.subarray(at, at + BANK_BLOCK_BYTES), `debit block ${b}`);
      c = transferOf(credits.subarray(at, at + BANK_BLOCK_BYTES), `credit block ${b}`);
    } catch (e) {
      violations.push((e as Error).message);
      continue;
    }
    if (c.transfer > 0) creditCount++;
    const w = Math.floor(b / layout.blocksPerWorker);
    newest[w] = Math.max(newest[w]!, c.transfer);
    if (d.transfer > c.transfer) inFlight++;
    if (c.transfer > d.transfer) {
      violations.push(`block ${b}: credit of transfer ${c.transfer} visible, debit only up to ${d.transfer}`);
    }
  }
  if (inFlight > layout.workers)
    violations.push(`${inFlight} transfers in flight, at most ${layout.workers} possible`);
  const transfers = newest.reduce((x, y) => x + y, 0);
  return { ok: violations.length === 0, credits: creditCount, transfers, inFlight, violations };
}
