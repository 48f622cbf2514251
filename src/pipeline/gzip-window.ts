/**
 * The memory every parallel gzip stream of the process shares: the window of blocks in flight
 * beyond each stream's first, and the block buffers, reused.
 */
import { DEFAULT_PROCESS_BLOCK_SIZE } from './gzip-engines.js';
import { coreCount } from './cores.js';

/**
 * The blocks every stream holds beyond its first, shared by all the streams of the process: a
 * push compresses several layers at once, and per-stream windows alone would multiply memory by
 * the number of layers without making the cores any faster. Each stream may always hold one
 * block outside the budget, so a stream whose reader is not reading yet (a sequential writer that
 * takes layers one by one) cannot starve the others, nor they it.
 */
export class SharedWindow {
  private used = 0;
  private readonly waiters = new Set<() => void>();

  constructor(readonly capacity: number) {}

  tryTake(bytes: number, wake: () => void): boolean {
    if (this.used + bytes > this.capacity) {
      this.waiters.add(wake);
      return false;
    }
    this.waiters.delete(wake);
    this.used += bytes;
    return true;
  }

  /** Wakes the waiting streams on a later microtask: never inside the pump of the stream releasing. */
  release(bytes: number): void {
    if (bytes === 0) return;
    this.used -= bytes;
    if (this.waiters.size === 0) return;
    const waiting = [...this.waiters];
    this.waiters.clear();
    queueMicrotask(() => {
      for (const wake of waiting) wake();
    });
  }

  forget(wake: () => void): void {
    this.waiters.delete(wake);
  }

  get inUse(): number {
    return this.used;
  }
}

/** One more block than cores, in bytes of the default block size: enough to keep every core busy while a finished block waits for its turn. */
export const sharedWindow = new SharedWindow((coreCount() + 1) * DEFAULT_PROCESS_BLOCK_SIZE);

/** Bytes of the shared window held right now, every stream together (for tests). */
export function sharedWindowInUse(): number {
  return sharedWindow.inUse;
}

/**
 * Block buffers, reused: a fresh multi-MiB allocation per block costs page faults and zeroing on
 * the main thread, a copy into a buffer already mapped costs a memcpy. A few are kept per size:
 * as many as can be in flight at once across the process.
 */
const freeBlocks = new Map<number, Buffer[]>();
const MAX_FREE_BLOCKS = coreCount() + 2;

export function takeBlockBuffer(size: number): Buffer {
  return freeBlocks.get(size)?.pop() ?? Buffer.allocUnsafeSlow(size);
}

export function returnBlockBuffer(buffer: Buffer): void {
  if (buffer.length === 0) return;
  let free = freeBlocks.get(buffer.length);
  if (!free) freeBlocks.set(buffer.length, (free = []));
  if (free.length < MAX_FREE_BLOCKS) free.push(buffer);
}
