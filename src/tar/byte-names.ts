/**
 * File names as bytes. A tar entry's name (and a symlink's target) is bytes, not text: Linux and
 * tar take any bytes but NUL, and old systems and some test suites have latin-1 names (`caf\xE9`).
 * A JavaScript string decoded as UTF-8 turns each bad sequence into U+FFFD, so a tree written by
 * name would get other names, two of them possibly one.
 *
 * Names are therefore decoded the way Python's `surrogateescape` decodes them (PEP 383): valid
 * UTF-8 as text, and each byte that is not part of valid UTF-8 as the lone surrogate U+DC80..U+DCFF
 * holding it. UTF-8 cannot encode a surrogate, so a name that is UTF-8 never holds one alone and
 * decodes exactly as before; every other name decodes to a string that still works with the
 * string code (joins, prefixes, sets) and is turned back into its exact bytes where it meets the
 * filesystem (`fsPath`). The layer store's JSON index keeps such strings as they are (JSON writes a
 * lone surrogate as `\udcXX`).
 */
import { isUtf8 } from 'node:buffer';

/** A lone low surrogate in U+DC80..U+DCFF: one escaped byte (not the second half of a pair). */
const ESCAPED_BYTE = /(?<![\uD800-\uDBFF])[\uDC80-\uDCFF]/;

/** The length of the valid UTF-8 sequence starting at `i`, or 0 if none does (RFC 3629's table). */
function sequenceAt(buf: Uint8Array, i: number, end: number): number {
  const b = buf[i]!;
  if (b < 0x80) return 1;
  let n: number;
  let lo = 0x80;
  let hi = 0xbf;
  if (b >= 0xc2 && b <= 0xdf) n = 2;
  else if (b >= 0xe0 && b <= 0xef) {
    n = 3;
    if (b === 0xe0) lo = 0xa0; // no overlong forms
    if (b === 0xed) hi = 0x9f; // no surrogates
  } else if (b >= 0xf0 && b <= 0xf4) {
    n = 4;
    if (b === 0xf0) lo = 0x90;
    if (b === 0xf4) hi = 0x8f; // nothing past U+10FFFF
  } else return 0;
  if (i + n > end) return 0;
  const second = buf[i + 1]!;
  if (second < lo || second > hi) return 0;
  for (let k = 2; k < n; k++) if ((buf[i + k]! & 0xc0) !== 0x80) return 0;
  return n;
}

/** `buf[start, end)` as a name: UTF-8 decoded, each byte outside valid UTF-8 escaped as U+DC80+byte. */
export function decodeName(buf: Buffer, start = 0, end = buf.length): string {
  // Most names are ASCII: a scan of their bytes costs less than the view isUtf8 needs.
  let i = start;
  while (i < end && buf[i]! < 0x80) i++;
  if (i === end || isUtf8(buf.subarray(start, end))) return buf.toString('utf8', start, end);
  let out = '';
  let run = start; // the start of the valid text not yet added
  for (let i = start; i < end; ) {
    const n = sequenceAt(buf, i, end);
    if (n > 0) {
      i += n;
      continue;
    }
    out += buf.toString('utf8', run, i) + String.fromCharCode(0xdc00 + buf[i]!);
    run = ++i;
  }
  return out + buf.toString('utf8', run, end);
}

/** Whether `name` holds an escaped byte: it is not UTF-8 as bytes. */
export function hasEscapedBytes(name: string): boolean {
  return ESCAPED_BYTE.test(name);
}

/** The exact bytes of a name `decodeName` gave. */
export function encodeName(name: string): Buffer {
  const parts: Buffer[] = [];
  let run = 0;
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (c < 0xdc80 || c > 0xdcff) continue;
    const prev = i > 0 ? name.charCodeAt(i - 1) : 0;
    if (prev >= 0xd800 && prev <= 0xdbff) continue; // the second half of a pair
    parts.push(Buffer.from(name.slice(run, i), 'utf8'), Buffer.of(c - 0xdc00));
    run = i + 1;
  }
  parts.push(Buffer.from(name.slice(run), 'utf8'));
  return Buffer.concat(parts);
}

/**
 * A name as its exact bytes, for a filesystem call or a hash: itself when it is UTF-8 (nearly
 * always; Node encodes a string as UTF-8), else a Buffer of its bytes.
 */
export function nameBytes(name: string): string | Buffer {
  return hasEscapedBytes(name) ? encodeName(name) : name;
}

/** A path for a filesystem call, as its exact bytes (`nameBytes`). */
export const fsPath = nameBytes;

/** Names as `readdir` gives them in bytes, decoded as names. */
export function decodeNames(names: Buffer[]): string[] {
  return names.map((n) => decodeName(n));
}
