/**
 * Time limits for transfers. A StallGuard errors a stream whose source stops sending while the
 * connection stays open (a half-dead TCP connection, a registry that hangs mid-blob) and tells
 * that apart from a consumer that is merely slow. `withDeadline` bounds a whole operation.
 */
import { Transform, type TransformCallback, type TransformOptions } from 'node:stream';
import { performance } from 'node:perf_hooks';
import { SmartError } from '../errors.js';

/** setTimeout's limit; longer limits (24.8 days) count as none. */
const MAX_TIMER_MS = 2 ** 31 - 1;

function seconds(ms: number): string {
  const s = ms / 1000;
  return String(Number.isInteger(s) ? s : Number(s.toFixed(3)));
}

function usable(ms: number): boolean {
  return Number.isFinite(ms) && ms > 0 && ms <= MAX_TIMER_MS;
}

/**
 * Passes bytes through unchanged. When no chunk arrives for `ms` while the guard is waiting for the
 * source, the guard is destroyed with `SmartError('REGISTRY', '<what>: no data for <n> s (stalled)',
 * { retryable: true })` (in a `pipeline`, that tears down the source too).
 *
 * Only time spent waiting for the SOURCE counts. The clock runs from the moment the guard can take
 * more — the consumer asked for data (`_read`), or a chunk was just passed on and the readable
 * buffer still has room — until the next chunk arrives. It stops while the readable buffer is full
 * (the consumer applies back-pressure: the guard then withholds its write callback and the source
 * is held back by us, not stalled), and restarts at the consumer's next `_read`. Nothing is timed
 * before anyone reads or writes, after the source ends, or after destroy; `ms` of 0 or Infinity
 * disables the guard. One timer at most, never re-created per chunk, and cleared at the end.
 */
export class StallGuard extends Transform {
  readonly ms: number;
  readonly what: string;
  private timer: NodeJS.Timeout | undefined;
  private armed = false;
  private since = 0;
  private finished = false;

  constructor(ms: number, what: string, options: TransformOptions = {}) {
    super(options);
    this.ms = usable(ms) ? ms : 0;
    this.what = what;
  }

  /** Waiting for the source from now on. */
  private arm(): void {
    if (this.ms === 0 || this.finished) return;
    this.armed = true;
    this.since = performance.now();
    // A timer already pending (from an earlier arm) checks `since` when it fires and waits the rest.
    if (!this.timer) this.schedule(this.ms);
  }

  /** Held back by the consumer: the pending timer, if any, lapses without effect. */
  private disarm(): void {
    this.armed = false;
  }

  private schedule(delay: number): void {
    this.timer = setTimeout(() => this.check(), Math.max(1, Math.ceil(delay)));
  }

  private check(): void {
    this.timer = undefined;
    if (!this.armed || this.finished) return;
    const waited = performance.now() - this.since;
    if (waited < this.ms) {
      this.schedule(this.ms - waited);
      return;
    }
    this.stop();
    this.destroy(new SmartError('REGISTRY', `${this.what}: no data for ${seconds(this.ms)} s (stalled)`, { retryable: true }));
  }

  private stop(): void {
    this.finished = true;
    this.armed = false;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  override _read(size: number): void {
    // Arm first: super._read may release a held write callback and run the next _transform at once.
    this.arm();
    super._read(size);
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    cb(null, chunk);
    // After the push: room left means we wait for the source; a full buffer means the consumer is behind.
    if (this.readableLength < this.readableHighWaterMark) this.arm();
    else this.disarm();
  }

  override _flush(cb: TransformCallback): void {
    this.stop();
    cb();
  }

  override _destroy(error: Error | null, cb: (error?: Error | null) => void): void {
    this.stop();
    super._destroy(error, cb);
  }
}

export function stallGuard(ms: number, what: string, options?: TransformOptions): StallGuard {
  return new StallGuard(ms, what, options);
}

/**
 * `source` piped through a StallGuard, for returning to a caller who consumes it later (the
 * pattern of `verifiedStream`): an error that comes first is kept on the guard (`errored`) and
 * reaches the consumer when it pipes or iterates; source errors are forwarded; destroying the
 * guard (or its stall) destroys `source`.
 */
export function guardStalls(source: NodeJS.ReadableStream & { destroy(error?: Error): void }, ms: number, what: string): StallGuard {
  const guard = new StallGuard(ms, what);
  guard.on('error', () => undefined);
  source.on('error', (e: Error) => guard.destroy(e));
  guard.on('close', () => source.destroy());
  source.pipe(guard);
  return guard;
}

/**
 * `promise`, or a rejection with `SmartError('CANCELLED', '<what>: timed out after <n> s')` when it
 * has not settled within `ms` (an overall `--timeout`). The code is CANCELLED — there is no TIMEOUT
 * code — and the error is not retryable: the time allowed is spent. `onTimeout(error)` runs first,
 * to abort the work (e.g. `controller.abort(error)`); what the promise does afterwards is ignored.
 * The timer is cleared when the promise settles; `ms` of 0, Infinity or beyond setTimeout's range
 * means no deadline.
 */
export function withDeadline<T>(promise: PromiseLike<T>, ms: number, what: string, onTimeout?: (error: SmartError) => void): Promise<T> {
  if (!usable(ms)) return Promise.resolve(promise);
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => {
      const error = new SmartError('CANCELLED', `${what}: timed out after ${seconds(ms)} s`, { hint: 'allow more time (--timeout), or look for what is slow' });
      try {
        onTimeout?.(error);
      } catch {
        // The timeout is the error to report, whatever aborting it threw.
      }
      reject(error);
    }, ms);
    Promise.resolve(promise).then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(timer);
        reject(e);
      },
    );
  });
}
