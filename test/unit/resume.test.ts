/** A download read as one stream across breaks (storage/resume.ts): pure stream logic, no server. */
import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { describe, expect, it } from 'vitest';
import { resumingReader } from '../../src/storage/resume.js';

const OBJECT = Buffer.from('0123456789abcdefghij');

/** The object from `offset`, broken (an ECONNRESET) after `cutAfter` bytes when given. */
function body(offset: number, cutAfter?: number, code = 'ECONNRESET'): Readable {
  const bytes = OBJECT.subarray(offset);
  if (cutAfter === undefined) return Readable.from([bytes]);
  return Readable.from(
    (async function* () {
      yield bytes.subarray(0, cutAfter);
      throw Object.assign(new Error(`read ${code}`), { code });
    })(),
  );
}

describe('resumingReader', () => {
  it('continues from the byte reached after each break, and tells each resumption', async () => {
    const opened: number[] = [];
    const told: string[] = [];
    const out = resumingReader(body(0, 5), async (from) => (opened.push(from), body(from, opened.length === 1 ? 3 : undefined)), {
      offset: 0,
      attempts: 5,
      delayMs: 1,
      onRetry: (m) => told.push(m),
    });
    expect((await buffer(out)).toString()).toBe(OBJECT.toString());
    expect(opened).toEqual([5, 8]);
    expect(told).toEqual([expect.stringMatching(/^read ECONNRESET; resuming from byte 5 in .* \(attempt 2 of 5\)$/), expect.stringMatching(/resuming from byte 8 .*\(attempt 3 of 5\)$/)]);
  });

  it('asks for what is left of a range', async () => {
    const asked: [number, number | undefined][] = [];
    const cut = Readable.from(
      (async function* () {
        yield OBJECT.subarray(4, 7);
        throw Object.assign(new Error('cut'), { code: 'ECONNRESET' });
      })(),
    );
    const reopen = async (from: number, length: number | undefined) => (asked.push([from, length]), Readable.from([OBJECT.subarray(from, from + length!)]));
    const out = resumingReader(cut, reopen, { offset: 4, length: 10, attempts: 3, delayMs: 1 });
    expect((await buffer(out)).toString()).toBe(OBJECT.subarray(4, 14).toString());
    expect(asked).toEqual([[7, 7]]);
  });

  it('a failure that is not transient, or the last attempt, ends the stream with it', async () => {
    const notTransient = resumingReader(body(0, 5, 'EACCES'), async () => body(0), { offset: 0, attempts: 5, delayMs: 1 });
    await expect(buffer(notTransient)).rejects.toThrow('read EACCES');
    let opens = 0;
    const spent = resumingReader(body(0, 2), async (from) => (opens++, body(from, 2)), { offset: 0, attempts: 3, delayMs: 1 });
    await expect(buffer(spent)).rejects.toThrow('read ECONNRESET');
    expect(opens).toBe(2);
  });
});
