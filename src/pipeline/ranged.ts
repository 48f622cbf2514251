/**
 * One blob fetched as several byte ranges at once and delivered in order: one stream from S3 or a
 * far registry tops out well below what several give. Memory is bounded by the ranges in flight
 * (concurrency × chunk size), never by the blob's size.
 */
import { Readable } from 'node:stream';

export interface RangedOptions {
  chunkSize: number;
  concurrency: number;
  signal?: AbortSignal;
}

/** Blobs at least this large are fetched in ranges (when the source can). */
export const RANGED_MIN_SIZE = 64 * 1024 * 1024;
export const RANGED_CHUNK_SIZE = 8 * 1024 * 1024;
export const RANGED_CONCURRENCY = 4;

export function rangedStream(size: number, fetchRange: (start: number, endInclusive: number) => Promise<Buffer[]>, options: RangedOptions): Readable {
  const { chunkSize, concurrency, signal } = options;
  async function* chunks(): AsyncGenerator<Buffer> {
    const pending: Promise<Buffer[]>[] = [];
    let next = 0;
    const schedule = () => {
      while (pending.length < concurrency && next < size) {
        const start = next;
        const end = Math.min(size, start + chunkSize) - 1;
        next = end + 1;
        const p = fetchRange(start, end);
        p.catch(() => undefined); // awaited in order below; an early failure must not go unhandled
        pending.push(p);
      }
    };
    schedule();
    while (pending.length) {
      signal?.throwIfAborted();
      const range = await pending.shift()!;
      schedule();
      yield* range;
    }
  }
  return Readable.from(chunks(), { objectMode: false });
}
