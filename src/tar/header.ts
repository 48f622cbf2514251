/** Tar (ustar/pax/GNU) header encoding and decoding, shared by the random-access reader and the writer. */
import { addPaxRecord } from './sparse.js';

export const BLOCK = 512;

export type TarEntryType = 'file' | 'directory' | 'symlink' | 'link' | 'other';

export interface RawHeader {
  name: string;
  size: number;
  typeflag: string;
  linkname: string;
  mode: number;
  mtime: number;
}

function readString(buf: Buffer, offset: number, length: number): string {
  const slice = buf.subarray(offset, offset + length);
  const end = slice.indexOf(0);
  return slice.subarray(0, end < 0 ? length : end).toString('utf8');
}

/** Numeric fields are octal text, or base-256 with the high bit set (GNU, for sizes ≥ 8 GiB). */
export function readNumber(buf: Buffer, offset: number, length: number): number {
  const first = buf[offset]!;
  if (first & 0x80) {
    let value = first & 0x7f;
    for (let i = 1; i < length; i++) value = value * 256 + buf[offset + i]!;
    return value;
  }
  const text = readString(buf, offset, length).trim();
  // Octal digits only: parseInt would read "-1" or "12zz" as numbers.
  return text === '' ? 0 : /^[0-7]+$/.test(text) ? parseInt(text, 8) : NaN;
}

export function checksum(block: Buffer): number {
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : block[i]!;
  return sum;
}

export function isZeroBlock(block: Buffer): boolean {
  for (let i = 0; i < BLOCK; i++) if (block[i] !== 0) return false;
  return true;
}

/** Decodes a header block; undefined when its checksum or its size is wrong (not a tar, or corrupt). */
export function decodeHeader(block: Buffer): RawHeader | undefined {
  const stored = readNumber(block, 148, 8);
  if (Number.isNaN(stored) || stored !== checksum(block)) return undefined;
  const size = readNumber(block, 124, 12);
  if (!Number.isSafeInteger(size)) return undefined;
  let name = readString(block, 0, 100);
  const magic = block.subarray(257, 263).toString('latin1');
  if (magic.startsWith('ustar')) {
    const prefix = readString(block, 345, 155);
    if (prefix && magic === 'ustar\u000000') name = `${prefix}/${name}`;
  }
  return {
    name,
    size,
    typeflag: String.fromCharCode(block[156] || 0x30),
    linkname: readString(block, 157, 100),
    mode: readNumber(block, 100, 8),
    mtime: readNumber(block, 136, 12),
  };
}

/** Parses pax extended header records (`"<len> key=value\n"`). */
export function parsePax(data: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  let pos = 0;
  while (pos < data.length) {
    const space = data.indexOf(0x20, pos);
    if (space < 0) break;
    const len = parseInt(data.subarray(pos, space).toString('latin1'), 10);
    if (!Number.isFinite(len) || len <= 0 || pos + len > data.length) break;
    const record = data.subarray(space + 1, pos + len - 1).toString('utf8');
    const eq = record.indexOf('=');
    if (eq > 0) addPaxRecord(out, record.slice(0, eq), record.slice(eq + 1));
    pos += len;
  }
  return out;
}

export function entryType(typeflag: string): TarEntryType {
  switch (typeflag) {
    case '0':
    case '\0':
    case '7':
      return 'file';
    case '5':
      return 'directory';
    case '2':
      return 'symlink';
    case '1':
      return 'link';
    default:
      return 'other';
  }
}

/** `./a/b/` → `a/b`: how archive member names are compared. */
export function normalizeMemberName(name: string): string {
  let n = name;
  while (n.startsWith('./')) n = n.slice(2);
  n = n.replace(/^\/+/, '').replace(/\/+$/, '');
  return n;
}

/**
 * The member a symlink or hardlink member of an archive names: a symlink's target is relative to
 * its own directory (`docker save` links a layer an image holds twice as `../<id>/layer.tar`), a
 * hardlink's to the archive's root; `..` resolves inside the archive and never climbs out of it.
 */
export function linkedMemberName(member: string, type: 'symlink' | 'link', linkname: string): string {
  const base = type === 'symlink' && !linkname.startsWith('/') ? member.split('/').slice(0, -1) : [];
  const out: string[] = [];
  for (const part of [...base, ...linkname.split('/')]) {
    if (part === '' || part === '.') continue;
    if (part === '..') out.pop();
    else out.push(part);
  }
  return out.join('/');
}

function writeString(block: Buffer, offset: number, length: number, value: string): void {
  block.write(value, offset, length, 'utf8');
}

function writeOctal(block: Buffer, offset: number, length: number, value: number): void {
  block.write(value.toString(8).padStart(length - 1, '0') + '\0', offset, length, 'latin1');
}

/** Encodes a ustar header for a regular file or directory; sizes past the octal range use base-256. */
export function encodeHeader(h: { name: string; size: number; mode: number; mtime: number; typeflag: '0' | '5' }): Buffer {
  if (Buffer.byteLength(h.name) > 100) throw new Error(`tar member name too long for ustar: ${h.name}`);
  const block = Buffer.alloc(BLOCK);
  writeString(block, 0, 100, h.name);
  writeOctal(block, 100, 8, h.mode);
  writeOctal(block, 108, 8, 0);
  writeOctal(block, 116, 8, 0);
  if (h.size < 0o77777777777) {
    writeOctal(block, 124, 12, h.size);
  } else {
    block[124] = 0x80;
    let v = h.size;
    for (let i = 135; i > 124; i--) {
      block[i] = v % 256;
      v = Math.floor(v / 256);
    }
  }
  writeOctal(block, 136, 12, h.mtime);
  block[156] = h.typeflag.charCodeAt(0);
  block.write('ustar\u000000', 257, 8, 'latin1');
  const sum = checksum(block);
  block.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8, 'latin1');
  return block;
}
