/**
 * A registry answer's body read as one stream across broken connections (Retry.body in
 * transports/registry/retry.ts): pure stream logic over answers made here, no server. The
 * registry client's tests drive the same code against the stock registry behind a faulting proxy.
 */
import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { describe, expect, it } from 'vitest';
import { SmartError } from '../../src/errors.js';
import type { Response } from '../../src/transports/registry/http.js';
import { readBody } from '../../src/transports/registry/http.js';
import { Retry, retryAfterMs } from '../../src/transports/registry/retry.js';
import { tokenLifetimeSeconds } from '../../src/transports/registry/auth.js';

const BLOB = Buffer.from(Array.from({ length: 40 }, (_, i) => String.fromCharCode(97 + (i % 26))).join(''));

/** An answer: `bytes` in chunks of `chunk`, then an ECONNRESET when `cut`. */
function answer(status: number, bytes: Buffer, options: { chunk?: number; cut?: boolean } = {}): Response & { body: Readable } {
  const size = options.chunk ?? 4;
  const body = Readable.from(
    (async function* () {
      for (let i = 0; i < bytes.length; i += size) yield bytes.subarray(i, i + size);
      if (options.cut) throw Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' });
    })(),
    { objectMode: false },
  );
  return { statusCode: status, headers: {}, body: Object.assign(body, { dump: async () => void body.destroy() }) as unknown as Response['body'] };
}

const failure = (e: unknown) => new SmartError('REGISTRY', (e as Error).message, { retryable: true });

describe('Retry.body', () => {
  it('resumes from the byte reached; a server that ignores the range has what was delivered skipped', async () => {
    const told: string[] = [];
    const retry = new Retry({ maxRetries: 3, delayMs: 1, onRetry: (m) => told.push(m) });
    const asked: number[] = [];
    const out = retry.body(
      async (offset) => {
        asked.push(offset);
        // The first answer breaks after 10 bytes; the second ignores the range (200, from byte 0).
        return asked.length === 1 ? answer(200, BLOB.subarray(0, 10), { cut: true }) : answer(200, BLOB);
      },
      { failure },
    );
    expect((await buffer(out)).equals(BLOB)).toBe(true);
    expect(asked).toEqual([0, 10]);
    expect(told).toEqual([expect.stringMatching(/resuming from byte 10$/)]);
  });

  it('stops at the length asked for, and resumes a range short of it', async () => {
    const retry = new Retry({ maxRetries: 3, delayMs: 1 });
    const asked: number[] = [];
    const out = retry.body(
      async (offset) => {
        asked.push(offset);
        // A 206 that ends early without an error, then one longer than asked for.
        return asked.length === 1 ? answer(206, BLOB.subarray(5, 9)) : answer(206, BLOB.subarray(offset));
      },
      { start: 5, length: 20, failure },
    );
    expect((await buffer(out)).toString()).toBe(BLOB.subarray(5, 25).toString());
    expect(asked).toEqual([5, 9]);
  });

  it('a 206 holds what its Content-Range says: an earlier start has the overlap skipped, a later one fails naming the ranges', async () => {
    const ranged = (from: number, to: number) => Object.assign(answer(206, BLOB.subarray(from, to)), { headers: { 'content-range': `bytes ${from}-${to - 1}/${BLOB.length}` } });
    const retry = new Retry({ maxRetries: 3, delayMs: 1 });
    const asked: number[] = [];
    // Broken after 10 bytes; resumed from 10, answered from 0 (a proxy that dropped the range's start).
    const out = retry.body(async (offset) => (asked.push(offset), asked.length === 1 ? answer(200, BLOB.subarray(0, 10), { cut: true }) : ranged(0, BLOB.length)), { failure });
    expect((await buffer(out)).equals(BLOB)).toBe(true);
    expect(asked).toEqual([0, 10]);

    let opens = 0;
    const later = retry.body(async () => (opens++ === 0 ? answer(200, BLOB.subarray(0, 10), { cut: true }) : ranged(20, BLOB.length)), {
      failure,
      what: 'registry r:1: blob sha256:x of a/b',
    });
    await expect(buffer(later)).rejects.toThrow(/^registry r:1: blob sha256:x of a\/b: asked from byte 10, answered from byte 20 \(Content-Range "bytes 20-39\/40"\)$/);
    expect(opens).toBe(2);
  });

  it('pauses the answer while the consumer has enough, and reads on when it asks', async () => {
    const retry = new Retry({ maxRetries: 0, delayMs: 1 });
    const big = Buffer.alloc(4 * 1024 * 1024, 7);
    const res = answer(200, big, { chunk: 64 * 1024 });
    const out = retry.body(async () => res, { failure });
    // Nobody reads: the answer stops flowing once the stream's buffer is full, far short of 4 MiB.
    await new Promise((r) => setTimeout(r, 50));
    expect(res.body.isPaused()).toBe(true);
    expect(out.readableLength).toBeLessThan(1024 * 1024);
    expect((await buffer(out)).length).toBe(big.length);
  });

  it('a consumer that goes away mid-way (the answer paused) ends the attempt and frees the answer', async () => {
    const retry = new Retry({ maxRetries: 3, delayMs: 1 });
    let opens = 0;
    const res = answer(200, Buffer.alloc(4 * 1024 * 1024, 1), { chunk: 64 * 1024 });
    const out = retry.body(async () => (opens++, res), { failure });
    await new Promise((r) => setTimeout(r, 50));
    out.destroy();
    await new Promise((r) => res.body.once('close', r));
    expect(res.body.destroyed).toBe(true);
    expect(opens).toBe(1);
  });

  it('an error that is not transient ends the stream with it, without another attempt', async () => {
    const retry = new Retry({ maxRetries: 3, delayMs: 1 });
    let opens = 0;
    const out = retry.body(
      async () => {
        opens++;
        const res = answer(200, BLOB.subarray(0, 8));
        res.body.destroy(Object.assign(new Error('read EACCES'), { code: 'EACCES' }));
        return res;
      },
      { failure: (e) => new SmartError('REGISTRY', `broken: ${(e as Error).message}`) },
    );
    await expect(buffer(out)).rejects.toThrow('broken: read EACCES');
    expect(opens).toBe(1);
  });

  it('readBody: an answer past its limit fails naming what was read, the rest not read', async () => {
    const res = answer(200, Buffer.alloc(100, 1), { chunk: 10 });
    const refused = readBody(res.body, 50, 'registry r:1: manifest a/b@sha256:x');
    await expect(refused).rejects.toThrow(/^registry r:1: manifest a\/b@sha256:x: the answer is larger than 50 bytes, more than it can be$/);
    await expect(refused).rejects.toMatchObject({ code: 'LIMIT_EXCEEDED' });
    expect(res.body.destroyed).toBe(true);
  });
});

describe('Retry-After', () => {
  it('is read as seconds or as an HTTP-date, and nothing else', () => {
    const now = Date.parse('Mon, 07 Dec 2026 15:00:00 GMT');
    expect(retryAfterMs('3', now)).toBe(3000);
    expect(retryAfterMs('Mon, 07 Dec 2026 15:00:05 GMT', now)).toBe(5000);
    expect(retryAfterMs('Monday, 07-Dec-26 15:00:05 GMT', now)).toBe(5000); // RFC 850, obsolete but allowed
    for (const v of [undefined, '', '0', '-1', 'garbage', '1 garbage', 'Mon, 07 Dec 2026 14:59:00 GMT']) expect(retryAfterMs(v, now), String(v)).toBeUndefined();
  });
});

describe('a token\'s lifetime', () => {
  it('ends before the server\'s expires_in, a short one too; 60 s when none is given', () => {
    expect(tokenLifetimeSeconds(300)).toBe(295);
    expect(tokenLifetimeSeconds(20)).toBe(15);
    expect(tokenLifetimeSeconds(9)).toBeLessThan(9);
    expect(tokenLifetimeSeconds(3)).toBeLessThan(3);
    for (const none of [undefined, 0, -5, '300']) expect(tokenLifetimeSeconds(none)).toBe(55);
  });
});
