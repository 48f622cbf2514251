/** One answer to "may another attempt outlive this failure?", shared by the registry client and the S3 driver. */
import { describe, expect, it } from 'vitest';
import { SmartError } from '../../src/errors.js';
import { errorCode, isTransient, isTransientStatus, sleep } from '../../src/transient.js';

const errno = (code: string) => Object.assign(new Error(code), { code });

describe('sleep', () => {
  it('waits, and stops at once with the reason when the signal aborts, before or during the wait', async () => {
    await sleep(5);
    const reason = new SmartError('CANCELLED', 'stop');
    await expect(sleep(60_000, AbortSignal.abort(reason))).rejects.toBe(reason);
    const c = new AbortController();
    const waiting = sleep(60_000, c.signal);
    c.abort(reason);
    await expect(waiting).rejects.toBe(reason);
  });
});

describe('isTransient', () => {
  it('takes a SmartError at its word', () => {
    expect(isTransient(new SmartError('REGISTRY', 'x', { retryable: true }))).toBe(true);
    expect(isTransient(new SmartError('STORAGE', 'x'))).toBe(false);
  });

  it('retries connection failures, the registry client\'s stalls and connect timeouts, and the AWS SDK timeouts', () => {
    for (const code of ['ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ETIMEDOUT', 'EAI_AGAIN', 'ENETDOWN', 'ERR_STREAM_PREMATURE_CLOSE', 'SMART_HTTP_STALL', 'SMART_HTTP_CONNECT_TIMEOUT']) {
      expect(isTransient(errno(code)), code).toBe(true);
    }
    expect(isTransient(Object.assign(new Error('slow'), { name: 'TimeoutError' }))).toBe(true);
    expect(isTransient(Object.assign(new Error('slow'), { name: 'S3ServiceException', Code: 'RequestTimeout', $metadata: { httpStatusCode: 400 } }))).toBe(true);
    for (const code of ['ENOTFOUND', 'ABORT_ERR', 'SMART_HTTP_CLOSED', 'EACCES']) expect(isTransient(errno(code)), code).toBe(false);
  });

  it('finds the code in an AggregateError (happy-eyeballs connect) and in a cause', () => {
    const aggregate = new AggregateError([errno('ECONNREFUSED'), errno('ECONNREFUSED')], 'connect failed');
    expect(errorCode(aggregate)).toBe('ECONNREFUSED');
    expect(isTransient(aggregate)).toBe(true);
    expect(isTransient(new Error('wrapped', { cause: errno('ECONNRESET') }))).toBe(true);
  });

  it('retries 408, 429 and server errors, except 501 and 505', () => {
    expect([408, 429, 500, 502, 503, 504, 520].every(isTransientStatus)).toBe(true);
    expect([400, 401, 403, 404, 416, 501, 505].some(isTransientStatus)).toBe(false);
    expect(isTransient(Object.assign(new Error('InternalError'), { $metadata: { httpStatusCode: 503 } }))).toBe(true);
    expect(isTransient(Object.assign(new Error('NotImplemented'), { $metadata: { httpStatusCode: 501 } }))).toBe(false);
  });

  it('never retries a cancellation or the end of the time allowed', () => {
    expect(isTransient(Object.assign(new Error('stop'), { name: 'AbortError', code: 'ECONNRESET' }))).toBe(false);
    expect(isTransient(new SmartError('CANCELLED', 'stop'))).toBe(false);
    expect(isTransient(new DOMException('The operation was aborted due to timeout', 'TimeoutError'))).toBe(false);
  });
});
