/**
 * Messages stay one line and say what is wrong in our words: control characters escaped, untrusted
 * strings quoted, tar-stream's errors and unusable header values mapped (src/tar/errors.ts).
 */
import type { Header } from 'tar-stream';
import { describe, expect, it } from 'vitest';
import { SmartError, isCancellation, printable, quoted } from '../../src/errors.js';
import { entryMeta, tarParseError } from '../../src/tar/errors.js';

const header = (extra: Partial<Header> = {}): Header =>
  ({ name: 'etc/a', size: 0, mode: 0o644, mtime: new Date(0), type: 'file', linkname: '', uid: 0, gid: 0, uname: '', gname: '', devmajor: 0, devminor: 0, pax: null, ...extra }) as Header;
const context = { what: 'layer sha256:0123456789ab of oci:x' };

describe('printable and quoted', () => {
  it('escapes what would break or disguise a line, and nothing else', () => {
    expect(printable('a\nb\r\tc\u001b[2Jd\u007f\u0085\u2028\u202ee')).toBe('a\\nb\\r\\tc\\x1b[2Jd\\x7f\\x85\\u2028\\u202ee');
    expect(printable('plain/ascii:é ü 日本 \\ "')).toBe('plain/ascii:é ü 日本 \\ "');
  });

  it('quotes, escapes quotes and backslashes, and cuts long strings', () => {
    expect(quoted('a"b\\c\nd')).toBe('"a\\"b\\\\c\\nd"');
    expect(quoted('x'.repeat(10), 4)).toBe('"xxxx…"');
  });

  it('tells a cancellation from a failure', () => {
    expect(isCancellation(new DOMException('stopped', 'AbortError'))).toBe(true);
    expect(isCancellation(new SmartError('CANCELLED', 'interrupted'))).toBe(true);
    expect(isCancellation(new SmartError('REGISTRY', 'reset', { retryable: true }))).toBe(false);
    expect(isCancellation(new Error('The operation was aborted'))).toBe(false);
  });
});

describe('tar errors', () => {
  it("maps each of tar-stream's errors to CORRUPT_ARCHIVE saying where", () => {
    const cases: [string, string][] = [
      ['Invalid tar header. Maybe the tar is corrupted or it needs to be gunzipped?', 'wrong header checksum'],
      ['Header exceeds max size', 'extended header (pax or GNU long name) over the 1 MiB allowed'],
      ['Invalid header', 'invalid entry size'],
      ['Unexpected end of data', 'truncated'],
    ];
    for (const [raw, meaning] of cases) {
      const e = tarParseError(new Error(raw), { ...context, after: 'etc/\nx' });
      expect(e.code).toBe('CORRUPT_ARCHIVE');
      expect(e.message).toBe(`${context.what}: corrupt tar: ${meaning} in the entry after "etc/\\nx"`);
      expect(e.cause).toBeInstanceOf(Error);
    }
    expect(tarParseError(new Error(cases[0]![0]), context).message).toMatch(/in its first entry$/);
    expect(tarParseError(new Error(cases[0]![0]), context).hint).toMatch(/is it a tar at all/);
    const passed = new SmartError('DIGEST_MISMATCH', 'x');
    expect(tarParseError(passed, context)).toBe(passed);
  });

  it('refuses owners and times no filesystem call takes, naming the entry', () => {
    expect(entryMeta(header({ uid: 1000, gid: 1000 }), context)).toMatchObject({ uid: 1000, gid: 1000 });
    expect(entryMeta(header({ pax: { uid: '4294967294', gid: '7' } }), context)).toMatchObject({ uid: 4294967294, gid: 7 });
    expect(() => entryMeta(header({ pax: { uid: '99999999999' } }), context)).toThrow(`${context.what}: entry "etc/a": uid 99999999999 is out of range`);
    expect(() => entryMeta(header({ gid: Number.NaN }), context)).toThrow('gid is not a number');
    expect(() => entryMeta(header({ uid: -1 }), context)).toThrow('uid -1 is out of range');
    expect(() => entryMeta(header({ pax: { uid: 'root' } }), context)).toThrow('its pax uid record "root" is not a number');

    expect(entryMeta(header({ pax: { mtime: '1704067200.5' } }), context)).toMatchObject({ atime: 1704067200.5, mtime: 1704067200.5 });
    expect(() => entryMeta(header({ mtime: new Date(Number.NaN) }), context)).toThrow('its modification time is not a valid time');
    expect(() => entryMeta(header({ pax: { mtime: 'yesterday' } }), context)).toThrow('its pax mtime record "yesterday" is not a number');
    expect(() => entryMeta(header({ pax: { atime: '1e20' } }), context)).toThrow('its access time is not a valid time');
    try {
      entryMeta(header({ mtime: new Date(Number.NaN) }), context);
    } catch (e) {
      expect((e as SmartError).code).toBe('CORRUPT_ARCHIVE');
    }
  });
});
