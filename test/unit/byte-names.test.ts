/**
 * Names as bytes (src/tar/byte-names.ts): any bytes decode to a string that encodes back to the
 * same bytes, a UTF-8 name decodes exactly as Node's UTF-8 decoding does (nothing changes for the
 * names nearly every layer has), and a message shows an escaped byte as `\xE9`.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { printable, quoted } from '../../src/errors.js';
import { decodeName, encodeName, fsPath, hasEscapedBytes } from '../../src/tar/byte-names.js';
import { fuzzParams } from '../harness/fuzz.js';

describe('names as bytes', () => {
  it('any bytes: decoded, then encoded, are the same bytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
        const buf = Buffer.from(bytes);
        expect(encodeName(decodeName(buf))).toEqual(buf);
        expect(hasEscapedBytes(decodeName(buf))).toBe(buf.toString('utf8') !== decodeName(buf));
      }),
      fuzzParams(2000),
    );
  });

  it('UTF-8, astral characters whose low surrogate lies in U+DC80..U+DCFF included: as Node decodes it, nothing escaped', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'grapheme', maxLength: 20 }), (text) => {
        const buf = Buffer.from(text, 'utf8');
        expect(decodeName(buf)).toBe(buf.toString('utf8'));
        expect(fsPath(decodeName(buf))).toBe(decodeName(buf));
      }),
      fuzzParams(2000),
    );
    const astral = String.fromCodePoint(0x10080); // \uD800\uDC80
    expect(hasEscapedBytes(astral)).toBe(false);
    expect(encodeName(astral)).toEqual(Buffer.from(astral, 'utf8'));
    expect(printable(astral)).toBe(astral);
  });

  it('each byte outside valid UTF-8 is escaped on its own: a lead byte cut short, an overlong form, a surrogate, past U+10FFFF', () => {
    const cases: [number[], string][] = [
      [[0x63, 0x61, 0x66, 0xe9], 'caf\udce9'],
      [[0xe2, 0x82, 0x41], '\udce2\udc82A'],
      [[0xc0, 0xaf], '\udcc0\udcaf'],
      [[0xed, 0xa0, 0x80], '\udced\udca0\udc80'],
      [[0xf4, 0x90, 0x80, 0x80], '\udcf4\udc90\udc80\udc80'],
      [[0xe2, 0x82, 0xac, 0xff], '€\udcff'],
    ];
    for (const [bytes, name] of cases) {
      expect(decodeName(Buffer.from(bytes))).toBe(name);
      expect(fsPath(name)).toEqual(Buffer.from(bytes));
    }
  });

  it('a message shows an escaped byte as \\xHH', () => {
    const name = decodeName(Buffer.from('caf\xe9.txt', 'latin1'));
    expect(quoted(name)).toBe('"caf\\xe9.txt"');
  });
});
