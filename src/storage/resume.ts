/**
 * A download read as one stream across broken connections: a body cut or stalled mid-way is opened
 * again from the byte reached (a range read), as the registry client resumes a blob. The bytes are
 * verified above it (a blob against its digest), never here: what was delivered is kept, not read
 * twice, so a layer streaming into a tree never sees the break.
 */
import { PassThrough, type Readable } from 'node:stream';
import { once } from 'node:events';
import { isTransient, sleep } from '../transient.js';

export interface ResumeOptions {
  /** The first byte of the object the first stream starts at. */
  offset: number;
  /** Bytes wanted from `offset`; undefined: to the end. */
  length?: number;
  /** Reads in all, the first included. */
  attempts: number;
  /** The first wait before a resumption; doubles each time. */
  delayMs: number;
  /** Each resumption, told before its wait: the failure and the byte it resumes from. */
  onRetry?: (message: string) => void;
}

/**
 * `first` (already open, so that an absent object fails the caller at once), continued by
 * `open(offset, length)` from the byte reached each time it breaks on something transient, up to
 * `attempts` reads. A failure to open again, a failure that is not transient, or the last one ends
 * the stream with that error. Destroying the returned stream stops the read in flight.
 */
export function resumingReader(first: Readable, open: (offset: number, length: number | undefined) => Promise<Readable>, options: ResumeOptions): Readable {
  const out = new PassThrough({ highWaterMark: 256 * 1024 });
  const stop = new AbortController();
  let current = first;
  out.once('close', () => {
    stop.abort();
    current.destroy();
  });
  let delivered = 0;
  const run = async (): Promise<void> => {
    for (let n = 0; ; n++) {
      try {
        for await (const chunk of current) {
          delivered += (chunk as Buffer).length;
          if (!out.write(chunk)) await once(out, 'drain', { signal: stop.signal });
        }
        return;
      } catch (e) {
        current.destroy();
        if (stop.signal.aborted || !isTransient(e) || n + 1 >= options.attempts) throw e;
        // Broken after its last byte: nothing is left to read.
        if (options.length !== undefined && delivered >= options.length) return;
        const delay = options.delayMs * 2 ** n;
        const from = options.offset + delivered;
        options.onRetry?.(`${(e as Error).message}; resuming from byte ${from} in ${(delay / 1000).toFixed(1)} s (attempt ${n + 2} of ${options.attempts})`);
        await sleep(delay, stop.signal);
        current = await open(from, options.length === undefined ? undefined : options.length - delivered);
        if (stop.signal.aborted) current.destroy();
      }
    }
  };
  run().then(
    () => out.end(),
    (e: unknown) => {
      if (!out.destroyed) out.destroy(e as Error);
    },
  );
  return out;
}
