/**
 * Which failures are transient — trying the same step again may succeed — for every network
 * client of the library alike: the registry client (Node's http) and the S3 driver (the AWS SDK).
 * Cancellations never are: the user or another failure stopped the work. And the wait before
 * another attempt, cut short by an abort.
 */
import { isCancellation, isSmartError } from './errors.js';

/** The registry client's own: no byte for the stall timeout, and a connection not made in time (registry/http.ts). */
export const HTTP_STALL = 'SMART_HTTP_STALL';
export const HTTP_CONNECT_TIMEOUT = 'SMART_HTTP_CONNECT_TIMEOUT';

/** A code of this library's making (SMART_…): it tells failures apart in the code, and is no word for a message. */
export function isOwnCode(code: string | undefined): boolean {
  return code?.startsWith('SMART_') === true;
}

/** An error coded as Node codes its own, so that what is transient and what to say are told by the code alone. */
export function codedError(message: string, code: string): Error {
  return Object.assign(new Error(message), { code });
}

/** A connection not made in time (to a registry, an S3 endpoint, a proxy). */
export function connectTimeoutError(): Error {
  return codedError('connect timed out', HTTP_CONNECT_TIMEOUT);
}

/** What a server that answered a TLS hello in plain HTTP is said to have done, as skopeo says it. */
export const PLAIN_HTTP_ANSWER = 'the server answered in plain HTTP, not TLS';

/** OpenSSL's words (deep in its error queue) for a server that answered the TLS hello in plain HTTP. */
export function answeredPlainHttp(message: string): boolean {
  return /wrong version number|http request/i.test(message);
}

/** The network codes of Node's socket calls, in words. */
const NETWORK_WORDS: Record<string, string> = {
  ECONNREFUSED: 'connection refused',
  ECONNRESET: 'connection reset',
  ECONNABORTED: 'connection aborted',
  EPIPE: 'connection closed while writing',
  ETIMEDOUT: 'connection timed out',
  ENOTFOUND: 'no such host',
  EAI_AGAIN: 'the name could not be resolved for now',
  EHOSTUNREACH: 'no route to host',
  ENETUNREACH: 'network unreachable',
  ENETDOWN: 'network down',
};

/**
 * A network error's message for a line that shows its code before it: Node's own (`connect
 * ECONNREFUSED 127.0.0.1:5000`, `getaddrinfo ENOTFOUND host`) says the code again after the call's
 * name, said once here in words (`connection refused`), the address kept only where `shown` (the
 * rest of the line) does not name it; OpenSSL's error queue for a plain HTTP answer to TLS is said
 * in words too (PLAIN_HTTP_ANSWER). Other messages stay as they are.
 */
export function networkWords(message: string, code: string | undefined, shown = ''): string {
  if (answeredPlainHttp(message)) return PLAIN_HTTP_ANSWER;
  if (!code || !/^E[A-Z_]+$/.test(code)) return message;
  const words = NETWORK_WORDS[code] ?? code;
  const out = message.replace(new RegExp(`\\b[a-zA-Z]+ ${code}(?: (\\S+))?`), (_m, address: string | undefined) => {
    const named = address !== undefined && (shown.includes(address) || message.split(address).length > 2);
    return address && !named ? `${words} (${address})` : words;
  });
  return out.trim() || words;
}

/**
 * Connection-level failures: refused, reset, cut or timed out on the way (as errno codes, Node's
 * stream codes, the registry client's timeouts and the names the AWS SDK gives its own). A host
 * that does not resolve (ENOTFOUND) is not among them: it will not resolve on the next attempt either.
 */
const TRANSIENT_CODES = new Set([
  HTTP_STALL,
  HTTP_CONNECT_TIMEOUT,
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EAI_AGAIN',
  'ENETUNREACH',
  'ENETDOWN',
  'EHOSTUNREACH',
  'ERR_STREAM_PREMATURE_CLOSE',
  'TimeoutError',
  'RequestTimeout',
  'RequestTimeoutException',
]);

/**
 * An HTTP status that asks for another attempt: a timeout (408), too many requests (429), or a
 * server error other than 501 (not implemented) and 505 (HTTP version), which stay as they are.
 */
export function isTransientStatus(status: number): boolean {
  return status === 408 || status === 429 || (status >= 500 && status <= 599 && status !== 501 && status !== 505);
}

/** The errno-like code of an error, looked for in an AggregateError's errors and in the cause too (Node's happy-eyeballs connect). */
export function errorCode(e: unknown, depth = 0): string | undefined {
  if (typeof e !== 'object' || e === null || depth > 4) return undefined;
  const o = e as { code?: unknown; errors?: unknown; cause?: unknown };
  if (typeof o.code === 'string') return o.code;
  if (Array.isArray(o.errors)) {
    for (const x of o.errors as unknown[]) {
      const c = errorCode(x, depth + 1);
      if (c !== undefined) return c;
    }
  }
  return o.cause !== undefined && o.cause !== e ? errorCode(o.cause, depth + 1) : undefined;
}

/** The HTTP status an error carries: the AWS SDK's `$metadata.httpStatusCode`, or `statusCode`. */
export function errorStatus(e: unknown): number | undefined {
  if (typeof e !== 'object' || e === null) return undefined;
  const o = e as { $metadata?: { httpStatusCode?: unknown }; statusCode?: unknown };
  const status = o.$metadata?.httpStatusCode ?? o.statusCode;
  return typeof status === 'number' ? status : undefined;
}

/**
 * Whether another attempt may outlive `e`: a SmartError says so itself (`retryable`); a raw error
 * is transient when it is a connection failure or a stall (see TRANSIENT_CODES), or an HTTP
 * answer with a transient status. An abort signal's reason (an AbortError, a DOMException TimeoutError
 * from `AbortSignal.timeout`) never is: the time allowed is spent.
 */
export function isTransient(e: unknown): boolean {
  if (isSmartError(e)) return e.retryable;
  if (isCancellation(e) || e instanceof DOMException) return false;
  const code = errorCode(e) ?? '';
  if (TRANSIENT_CODES.has(code)) return true;
  const o = (typeof e === 'object' && e !== null ? e : {}) as { name?: unknown; Code?: unknown };
  if ((typeof o.Code === 'string' && TRANSIENT_CODES.has(o.Code)) || (typeof o.name === 'string' && TRANSIENT_CODES.has(o.name))) return true;
  const status = errorStatus(e);
  return status !== undefined && isTransientStatus(status);
}

/** Waits `ms` before another attempt; rejects with the signal's reason as soon as it aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason as Error);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason as Error);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
