/**
 * The one retry loop of the registry client, and what is built on it: a request sent again on a
 * connection error or a 408/429/5xx answer (waiting what Retry-After asks), and a response body
 * read as one stream across broken connections (resumed with a Range request from the byte
 * reached). Every retry is told to `onRetry` before it happens: retries are visible, not silent.
 */
import { Readable, finished } from 'node:stream';
import { SmartError, quoted } from '../../errors.js';
import { isTransient, isTransientStatus, sleep } from '../../transient.js';
import { header, type Response } from './http.js';

export interface RetryOptions {
  /** Attempts after the first. */
  maxRetries: number;
  /** The first backoff delay; doubles per attempt. */
  delayMs: number;
  onRetry?: (message: string) => void;
}

/** What became of one attempt, as the loop needs to know it. */
export interface AttemptJudge<T> {
  /**
   * A result that asks for another attempt (a 408, 429 or 5xx answer): what to say, and the wait it
   * asks for (else the backoff). Undefined: the result is final. Its resources are freed by
   * `discard` before the wait.
   */
  again?(value: T): { message: string; delayMs?: number } | undefined;
  discard?(value: T): Promise<void>;
  /** A failure as it is to be thrown or told, and whether it may be outlived (default: isTransient of the error). */
  failure(e: unknown): { error: unknown; retry?: boolean };
  /** The retry warning for `message`, before a wait of `delayMs`. */
  told(message: string, delayMs: number): string;
}

const MAX_RETRY_AFTER_MS = 30_000;

/** A byte range of a resource, read from `offset` (absolute); a 206 answer starts there, a 200 at 0. */
export type OpenAt = (offset: number, signal: AbortSignal) => Promise<Response>;

export interface BodyOptions {
  /** The first byte wanted (0: the whole resource). */
  start?: number;
  /** How many bytes are wanted from `start`; undefined: to the end. A body that ends short of it is resumed. */
  length?: number;
  signal?: AbortSignal;
  /** The error a broken body is told and thrown as (its message goes into the retry warning). */
  failure(e: unknown): SmartError;
  /** What is read, for an answer that is not what was asked for (`registry HOST: blob sha256:… of REPO`). */
  what?: string;
}

/** The first byte a 206's `Content-Range: bytes FIRST-LAST/SIZE` holds; undefined when there is none that parses. */
function rangeStart(contentRange: string | undefined): number | undefined {
  const m = /^\s*bytes\s+(\d+)-\d+\/(?:\d+|\*)\s*$/i.exec(contentRange ?? '');
  return m ? Number(m[1]) : undefined;
}

export class Retry {
  constructor(readonly options: RetryOptions) {}

  /**
   * Runs `attempt` until it gives a final result, fails on something that cannot be outlived, or
   * the attempts are spent (the last result is then returned as it is, the last failure thrown).
   * `repeatable: false` makes one attempt only (a streamed request body cannot be sent twice).
   * Aborting `signal` ends the wait and the loop.
   */
  async run<T>(attempt: (n: number) => Promise<T>, judge: AttemptJudge<T>, options: { signal?: AbortSignal | undefined; repeatable?: boolean } = {}): Promise<T> {
    const { signal } = options;
    const attempts = options.repeatable === false ? 1 : this.options.maxRetries + 1;
    for (let n = 0; ; n++) {
      const last = n + 1 >= attempts;
      let delay = this.options.delayMs * 2 ** n;
      let message: string;
      try {
        const value = await attempt(n);
        const again = judge.again?.(value);
        if (!again || last) return value;
        if (again.delayMs !== undefined) delay = again.delayMs;
        await judge.discard?.(value);
        message = again.message;
      } catch (e) {
        const { error, retry = isTransient(error) } = judge.failure(e);
        if (!retry || last || signal?.aborted) throw error;
        message = (error as Error).message;
      }
      this.options.onRetry?.(judge.told(message, delay));
      await sleep(delay, signal);
    }
  }

  /**
   * Sends a request (`send`) until an answer comes that is not 408, 429 or 5xx, or the attempts
   * are spent (the last answer is then returned: the caller reads its body into the error). A
   * connection error is retried when transient; `failure` turns it into the error to throw.
   */
  send(what: string, send: () => Promise<Response>, options: { host: string; signal?: AbortSignal | undefined; repeatable?: boolean; failure: (e: unknown) => SmartError }): Promise<Response> {
    return this.run(send, {
      again: (res) => {
        if (!isTransientStatus(res.statusCode)) return undefined;
        const after = retryAfterMs(header(res.headers, 'retry-after'));
        return {
          message: `registry ${options.host} answered ${res.statusCode}`,
          ...(after !== undefined ? { delayMs: Math.min(after, MAX_RETRY_AFTER_MS) } : {}),
        };
      },
      discard: (res) => res.body.dump().catch(() => undefined),
      failure: (e) => {
        const error = options.failure(e);
        return { error, retry: isTransient(e) };
      },
      told: (message, delay) => `${what}: ${message}; retrying in ${(delay / 1000).toFixed(1)} s`,
    }, options);
  }

  /**
   * A response body as one stream. A body that breaks on something transient (a reset, a stall)
   * is opened again from the byte reached (`open(offset)`: a Range request; a server that ignores
   * ranges answers 200 and what was delivered is skipped), up to the retry limit. A failure to
   * open is not retried here: the request already was. The caller verifies the digest of the
   * whole; destroying the stream releases the connection.
   */
  body(open: OpenAt, options: BodyOptions): Readable {
    const start = options.start ?? 0;
    const { length } = options;
    /** The answer being read, resumed when the consumer asks for more (paused while it has enough). */
    let current: Readable | undefined;
    // The answer's chunks are pushed straight into `out` from its 'data' events, with pause and
    // resume for back-pressure: not through an async iterator into a PassThrough, which cost a
    // promise and two stream hops per 64 KiB chunk (a 50 MB blob from a loopback registry took
    // ~20 ms longer that way, in a process that has not warmed up).
    const out = new Readable({ highWaterMark: 256 * 1024, read: () => void current?.resume() });
    // The consumer gone (destroyed, or an error downstream): the attempt in flight stops reading.
    const stop = new AbortController();
    out.once('close', () => stop.abort(new SmartError('CANCELLED', 'body no longer read')));
    const signal = options.signal ? AbortSignal.any([options.signal, stop.signal]) : stop.signal;
    let delivered = 0;
    let reading = false;
    const attempt = async (): Promise<void> => {
      reading = false;
      const res = await open(start + delivered, signal);
      reading = true;
      const at = start + delivered;
      // A 200 is the whole: what was delivered is skipped. A 206 holds what its Content-Range
      // says, which a cache or proxy between may make another range than the one asked for:
      // earlier, the overlap is skipped; later, the bytes between are nowhere, and the read fails
      // (appended as they came, they made a blob of the wrong bytes or length).
      const first = res.statusCode === 206 ? rangeStart(header(res.headers, 'content-range')) : undefined;
      if (first !== undefined && first > at) {
        await res.body.dump().catch(() => undefined);
        throw new SmartError('REGISTRY', `${options.what ?? 'a ranged read'}: asked from byte ${at}, answered from byte ${first} (Content-Range ${quoted(header(res.headers, 'content-range') ?? '', 80)})`, {
          hint: 'a proxy or cache between may mangle ranges: retry, or pull without it',
        });
      }
      let skip = res.statusCode === 200 ? at : first !== undefined ? at - first : 0;
      const body = res.body;
      try {
        await new Promise<void>((resolve, reject) => {
          let settled = false;
          const settle = (e?: unknown) => {
            if (settled) return;
            settled = true;
            body.off('data', onData);
            signal.removeEventListener('abort', onAbort);
            cleanup();
            if (e === undefined) resolve();
            else reject(e as Error);
          };
          const onData = (chunk: Buffer) => {
            let c = chunk;
            if (skip > 0) {
              const drop = Math.min(skip, c.length);
              skip -= drop;
              c = c.subarray(drop);
            }
            if (length !== undefined && delivered + c.length > length) c = c.subarray(0, length - delivered);
            if (c.length > 0) {
              delivered += c.length;
              if (!out.push(c)) body.pause();
            }
            if (length !== undefined && delivered === length) settle();
          };
          // A paused answer that is already complete is not destroyed by the abort (see Http.send).
          const onAbort = () => settle(signal.reason);
          // End, error, or a close before the end (ERR_STREAM_PREMATURE_CLOSE), as for await would see them.
          const cleanup = finished(body, (e) => settle(e ?? undefined));
          signal.addEventListener('abort', onAbort, { once: true });
          if (signal.aborted) {
            onAbort();
            return;
          }
          current = body;
          body.on('data', onData);
        });
      } finally {
        current = undefined;
        body.destroy();
      }
      if (length !== undefined && delivered < length) {
        // A body cut short without an error is a connection closed early, as transient as a reset.
        throw Object.assign(new Error(`the answer ended after ${delivered} of the ${length} bytes asked for`), { code: 'ERR_STREAM_PREMATURE_CLOSE' });
      }
    };
    this.run(attempt, {
      failure: (e) => {
        const error = stop.signal.aborted ? stop.signal.reason : options.failure(e);
        return { error, retry: reading && !stop.signal.aborted && isTransient(e) };
      },
      told: (message) => `${message}; resuming from byte ${start + delivered}`,
    }, { signal }).then(
      () => out.push(null),
      (e: unknown) => {
        if (!out.destroyed) out.destroy(e as Error);
      },
    );
    return out;
  }
}

/**
 * Retry-After (RFC 9110 10.2.3) as milliseconds from now: delay-seconds, or an HTTP-date (what
 * rate limiters behind CDNs send); undefined when absent, unreadable or already past.
 */
export function retryAfterMs(value: string | undefined, now = Date.now()): number | undefined {
  if (value === undefined || value.trim() === '') return undefined;
  if (/^\s*\d+(\.\d+)?\s*$/.test(value)) {
    const seconds = Number(value);
    return seconds > 0 ? seconds * 1000 : undefined;
  }
  // Only the date forms: Date.parse alone takes "1" or "garbage 5" for dates too.
  if (!/^[A-Za-z]{3,9}, /.test(value.trim())) return undefined;
  const at = Date.parse(value);
  return Number.isFinite(at) && at > now ? at - now : undefined;
}
