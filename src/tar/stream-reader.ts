/**
 * A streaming tar reader for the layer applier: entries are read straight out of the chunks the
 * stream delivers, with no stream, event or buffer list per entry. A layer is mostly small files;
 * with tar-stream's extract each one cost a Readable, a promise hand-off per chunk and a copy, and
 * that was most of the main thread's JavaScript on a pull into a tree.
 *
 * It reads tars exactly as tar-stream 3's extract does with allowUnknownFormat (`docker save`
 * streams still use it, and both must agree on every tar): the same header decoding (ustar, GNU,
 * V7 (no magic), pax
 * with global records merged into the next entry's, GNU long names and link names), a directory's
 * size field ignored, a zero block skipped wherever it appears, and the same error messages, which
 * src/tar/errors.ts turns into CORRUPT_ARCHIVE. Where tar-stream would read a header whose size is
 * not a number as no content at all, or hang on it, this reader stops with "Invalid header"; and
 * a name, link target or pax value that is not UTF-8 keeps its bytes (src/tar/byte-names.ts) where
 * tar-stream's has U+FFFD.
 */
import type { Readable } from 'node:stream';
import type { Header } from 'tar-stream';
import { decodeName } from './byte-names.js';
import { SPARSE_MESSAGE, addPaxRecord, checkLayout, type SparseHeader, holeChunk, paxRealSize, paxSparseKind, parseDataMap, parseGnuEntries, parsePaxMap } from './sparse.js';

const BLOCK = 512;
/** The largest pax or GNU long-name header read (as tar-stream). */
const MAX_LONG_HEADER = 4 * 1024 * 1024;
/** Bytes held from the source before it is paused. */
const HIGH_WATER = 2 * 1024 * 1024;
const EMPTY = Buffer.alloc(0);

/** tar-stream's messages, which src/tar/errors.ts maps to what they mean. */
export const TAR_MESSAGES = {
  checksum: 'Invalid tar header. Maybe the tar is corrupted or it needs to be gunzipped?',
  longHeader: 'Header exceeds max size',
  size: 'Invalid header',
  truncated: 'Unexpected end of data',
  /** Ours: tar-stream reads a sparse file as a plain one (src/tar/sparse.ts). */
  sparse: SPARSE_MESSAGE,
} as const;

function padding(size: number): number {
  const rest = size % BLOCK;
  return rest === 0 ? 0 : BLOCK - rest;
}

/** Bytes from `off` up to the first NUL within `len`, as UTF-8. */
function decodeString(buf: Buffer, off: number, len: number): string {
  return buf.toString('utf8', off, stringEnd(buf, off, len));
}

/** A name's bytes from `off` up to the first NUL within `len`, exact (src/tar/byte-names.ts). */
function decodeNameField(buf: Buffer, off: number, len: number): string {
  return decodeName(buf, off, stringEnd(buf, off, len));
}

function stringEnd(buf: Buffer, off: number, len: number): number {
  let end = off;
  const stop = off + len;
  while (end < stop && buf[end] !== 0) end++;
  return end;
}

/** Base-256 (first byte 0x80 positive, 0xff negative in two's complement); null for any other first byte. */
function decodeBase256(buf: Buffer, off: number, len: number): number | null {
  const first = buf[off];
  if (first !== 0x80 && first !== 0xff) return null;
  const positive = first === 0x80;
  let sum = 0;
  let scale = 1;
  for (let i = off + len - 1; i > off; i--) {
    sum += (positive ? buf[i]! : 0xff - buf[i]!) * scale;
    scale *= 256;
  }
  // Negative: two's complement, so the complemented bytes read one less than the magnitude
  // (0xff… is -1, not 0). GNU tar writes times before 1970 so.
  return positive ? sum : -sum - 1;
}

/**
 * A numeric field: base-256 when the high bit of its first byte is set; else octal text after
 * leading spaces then NULs, up to the first space (parseInt's reading of it: the octal digits of
 * its start, NaN if none). Plain digits, the usual case, are read without making a string.
 */
function decodeNumber(buf: Buffer, off: number, len: number): number | null {
  if (buf[off]! & 0x80) return decodeBase256(buf, off, len);
  const stop = off + len;
  let i = off;
  while (i < stop && buf[i] === 0x20) i++;
  let end = i;
  while (end < stop && buf[end] !== 0x20) end++;
  while (i < end && buf[i] === 0) i++;
  if (i === end) return 0;
  const c = buf[i]!;
  if (c < 0x30 || c > 0x37) return parseInt(buf.toString('utf8', i, end), 8);
  let value = 0;
  for (; i < end; i++) {
    const d = buf[i]! - 0x30;
    if (d < 0 || d > 7) break;
    value = value * 8 + d;
  }
  return value;
}

const TYPES: Record<number, string> = {
  0: 'file',
  1: 'link',
  2: 'symlink',
  3: 'character-device',
  4: 'block-device',
  5: 'directory',
  6: 'fifo',
  7: 'contiguous-file',
  72: 'pax-header',
  55: 'pax-global-header',
  27: 'gnu-long-link-path',
  28: 'gnu-long-path',
  30: 'gnu-long-path',
};

/** POSIX ustar's magic: "ustar" then NUL, at offset 257 (GNU's has a space there). */
function isPosixMagic(buf: Buffer): boolean {
  return buf[257] === 0x75 && buf[258] === 0x73 && buf[259] === 0x74 && buf[260] === 0x61 && buf[261] === 0x72 && buf[262] === 0;
}

/** One header block, as tar-stream decodes it; null for a block that is all zeros but for its checksum. */
export function decodeTarHeader(buf: Buffer): Header | null {
  let sum = 8 * 0x20;
  for (let i = 0; i < 148; i++) sum += buf[i]!;
  for (let i = 156; i < BLOCK; i++) sum += buf[i]!;
  if (sum === 8 * 0x20) return null;
  if (sum !== decodeNumber(buf, 148, 8)) throw new Error(TAR_MESSAGES.checksum);
  let name = decodeNameField(buf, 0, 100);
  // POSIX ustar has a prefix; GNU's magic, and none at all (the V7 header `tar --format=v7` and old
  // tars write, or a label's), have not. A header of any other magic with a right checksum is read
  // as V7, as Go's archive/tar (Docker, containerd, umoci) and tar-stream's extract with
  // allowUnknownFormat read it.
  if (isPosixMagic(buf) && buf[345] !== 0) name = `${decodeNameField(buf, 345, 155)}/${name}`;
  // No directory is inferred from a trailing slash: the header's own name may be a long name cut
  // at 100 bytes (tar-stream's rule for it sets a flag it no longer reads).
  const typeflag = buf[156] === 0 ? 0 : buf[156]! - 0x30;
  return {
    name,
    mode: decodeNumber(buf, 100, 8),
    uid: decodeNumber(buf, 108, 8),
    gid: decodeNumber(buf, 116, 8),
    size: decodeNumber(buf, 124, 12),
    byteOffset: 0,
    mtime: new Date(1000 * (decodeNumber(buf, 136, 12) as number)),
    type: TYPES[typeflag] ?? null,
    linkname: buf[157] === 0 ? null : decodeNameField(buf, 157, 100),
    uname: decodeString(buf, 265, 32),
    gname: decodeString(buf, 297, 32),
    devmajor: decodeNumber(buf, 329, 8),
    devminor: decodeNumber(buf, 337, 8),
    pax: null,
  } as unknown as Header;
}

/** The name of the entry whose first header (a GNU long name's, its pax records', or its own) is at `at` in `chunk`, as this reader gives it. */
export function entryNameAt(chunk: Buffer, at: number): string {
  const h = decodeTarHeader(chunk.subarray(at, at + BLOCK));
  const type = h?.type as string | null | undefined;
  if (h === null || (type !== 'gnu-long-path' && type !== 'pax-header') || typeof h.size !== 'number') return h?.name ?? '';
  const data = chunk.subarray(at + BLOCK, at + BLOCK + h.size);
  const name = type === 'gnu-long-path' ? decodeNameField(data, 0, data.length) : decodePaxRecords(data).path;
  return name || entryNameAt(chunk, at + BLOCK + h.size + padding(h.size));
}

/**
 * pax records (`LEN KEY=VALUE\n`), read as tar-stream reads them: up to the first malformed record.
 * Values are decoded as names are (a `path` or `linkpath` keeps its bytes; src/tar/byte-names.ts).
 * The repeated `GNU.sparse.offset` / `GNU.sparse.numbytes` records of a pax 0.0 sparse file are
 * gathered, in order, into one `GNU.sparse.map` (as 0.1 writes it).
 */
export function decodePaxRecords(buf: Buffer): Record<string, string> {
  const result: Record<string, string> = {};
  let rest = buf;
  while (rest.length > 0) {
    let i = 0;
    while (i < rest.length && rest[i] !== 0x20) i++;
    const len = parseInt(rest.toString('utf8', 0, i), 10);
    // A length that is not a positive number ends the records (tar-stream's stops at 0 or NaN).
    if (!(len > 0)) return result;
    const record = decodeName(rest, i + 1, Math.max(i + 1, Math.min(len - 1, rest.length)));
    const eq = record.indexOf('=');
    if (eq === -1) return result;
    addPaxRecord(result, record.slice(0, eq), record.slice(eq + 1));
    rest = rest.subarray(len);
  }
  return result;
}

/** The typeflag of headers of a type tar-stream's decoding has no name for (their `type` is null): for messages. */
const unknownTypeflags = new WeakMap<Header, string>();

/**
 * What an entry of no known type is, for a message: its typeflag, and what GNU tar means by it
 * where it is one of GNU's; undefined for an entry of a known type (or one read from elsewhere).
 */
export function unknownTypeOf(h: Header): string | undefined {
  const flag = unknownTypeflags.get(h);
  if (flag === undefined) return undefined;
  const gnu: Record<string, string> = { D: 'a GNU incremental dump directory', V: 'a GNU volume label', M: 'a GNU multi-volume continuation', N: 'an old GNU long name' };
  const shown = /^[\x21-\x7e]$/.test(flag) ? `'${flag}'` : `0x${flag.charCodeAt(0).toString(16).padStart(2, '0')}`;
  return gnu[flag] ? `typeflag ${shown}, ${gnu[flag]}` : `typeflag ${shown}`;
}

/** A sparse file's map, read with its header. */
interface PendingSparse {
  segments: number[];
  realSize: number;
  /** Old GNU extension blocks after the header (not content). */
  extensionBytes: number;
  /** Bytes of a 1.0 map at the start of the content. */
  mapBytes: number;
}

/** The sparse file being read: its layout, the content offset reached, and the segment it is in or before. */
interface SparseState {
  segments: number[];
  realSize: number;
  at: number;
  segment: number;
}

/**
 * Reads a tar from a byte stream, entry by entry. `next()` gives the next entry's header (null at
 * the end) without a promise when its bytes are already here; the entry's content is then taken
 * with `content()` (whole) or `contentChunks()`, or left: the next `next()` skips what is left.
 * The source is paused while more than 2 MiB are held; content comes as views of the source's
 * chunks (no copy unless it spans two), so the source must not reuse the buffers it emits.
 *
 * Failures: a malformed tar throws an Error with tar-stream's message (TAR_MESSAGES); the source's
 * own error is thrown as it is (the caller, which listens to the source, names it).
 */
export class TarStreamReader {
  private readonly chunks: Buffer[] = [];
  /** The first chunk not yet read whole, and how far into it. */
  private head = 0;
  private offset = 0;
  private buffered = 0;
  /** Bytes of the tar read so far (a header's byteOffset, as tar-stream). */
  private shifted = 0;
  private ended = false;
  private failure: { error: unknown } | undefined;
  private wake: (() => void) | undefined;
  private paused = false;
  /** Content of the current entry not yet taken, then the padding after it. */
  private contentLeft = 0;
  private paddingLeft = 0;
  private paxGlobal: Record<string, string> | null = null;
  private pax: Record<string, string> | null = null;
  private gnuLongPath: string | null = null;
  private gnuLongLinkPath: string | null = null;
  /** The current entry's sparse layout and how far its content has been given, when it is a sparse file. */
  private sparse: SparseState | null = null;

  constructor(private readonly source: Readable) {
    source.on('data', (chunk: Buffer) => {
      if (chunk.length === 0) return;
      this.chunks.push(chunk);
      this.buffered += chunk.length;
      if (this.buffered > HIGH_WATER && !this.paused) {
        this.paused = true;
        source.pause();
      }
      this.notify();
    });
    source.once('end', () => {
      this.ended = true;
      this.notify();
    });
    source.once('error', (error) => {
      this.failure ??= { error };
      this.notify();
    });
    source.once('close', () => {
      if (!this.ended) this.failure ??= { error: new Error('the stream closed before its end') };
      this.notify();
    });
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  /** Waits for more bytes; throws the source's error, or TAR_MESSAGES.truncated at its end. */
  private async more(): Promise<void> {
    const before = this.buffered;
    await this.fill();
    if (this.buffered > before) return;
    if (this.failure) throw this.failure.error;
    throw new Error(TAR_MESSAGES.truncated);
  }

  /** Drops `n` buffered bytes (n ≤ buffered). */
  private drop(n: number): void {
    this.buffered -= n;
    this.shifted += n;
    if (this.paused && this.buffered <= HIGH_WATER / 2) {
      this.paused = false;
      this.source.resume();
    }
    while (n > 0) {
      const chunk = this.chunks[this.head]!;
      const left = chunk.length - this.offset;
      if (n < left) {
        this.offset += n;
        return;
      }
      n -= left;
      this.releaseHead();
    }
  }

  private releaseHead(): void {
    this.chunks[this.head++] = undefined as unknown as Buffer;
    this.offset = 0;
    if (this.head > 64 && this.head * 2 > this.chunks.length) {
      this.chunks.splice(0, this.head);
      this.head = 0;
    }
  }

  /** The next `n` buffered bytes (n ≤ buffered), consumed: a view when they lie in one chunk. */
  private take(n: number): Buffer {
    if (n === 0) return EMPTY;
    const chunk = this.chunks[this.head]!;
    if (chunk.length - this.offset >= n) {
      const view = chunk.subarray(this.offset, this.offset + n);
      this.drop(n);
      return view;
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    let i = this.head;
    let off = this.offset;
    while (filled < n) {
      const c = this.chunks[i++]!;
      const k = Math.min(c.length - off, n - filled);
      c.copy(out, filled, off, off + k);
      filled += k;
      off = 0;
    }
    this.drop(n);
    return out;
  }

  /** Skips what is left of the current entry's content and padding; false when more bytes are needed. */
  private skipRest(): boolean {
    const left = this.contentLeft + this.paddingLeft;
    const n = Math.min(left, this.buffered);
    if (n > 0) {
      this.drop(n);
      const fromContent = Math.min(n, this.contentLeft);
      this.contentLeft -= fromContent;
      this.paddingLeft -= n - fromContent;
    }
    return this.contentLeft + this.paddingLeft === 0;
  }

  /**
   * The next entry's header, or null at the end of the tar; undefined when its bytes have not
   * arrived yet (then `await fill()` and call again). What is left of the previous entry is skipped.
   */
  nextSync(): Header | null | undefined {
    for (;;) {
      if (!this.skipRest()) return this.needMore();
      if (this.buffered < BLOCK) {
        if (this.buffered === 0 && this.ended && !this.failure) return null;
        return this.needMore();
      }
      const block = this.peekBlock();
      const h = decodeTarHeader(block);
      if (h === null) {
        this.drop(BLOCK);
        continue;
      }
      const size = h.size as number | null;
      // Extended headers are types of their own in tar-stream's decoding, not among Header's.
      const type = h.type as string | null;
      switch (type) {
        case 'gnu-long-path':
        case 'gnu-long-link-path':
        case 'pax-global-header':
        case 'pax-header': {
          if (size === null || !Number.isSafeInteger(size) || size < 0) throw new Error(TAR_MESSAGES.size);
          if (size > MAX_LONG_HEADER) throw new Error(TAR_MESSAGES.longHeader);
          // The whole extended header at once, or nothing of it yet.
          if (this.buffered < BLOCK + size) return this.needMore();
          this.drop(BLOCK);
          this.readLongHeader(type, this.take(size));
          this.paddingLeft = padding(size);
          continue;
        }
      }
      // A sparse file's map may follow its header: all of it here, or wait with nothing taken.
      const map = this.sparseMap(block);
      if (map === undefined) return this.needMore();
      this.drop(BLOCK + (map?.extensionBytes ?? 0));
      (h as { byteOffset?: number }).byteOffset = this.shifted;
      const pax = this.pax;
      this.applyLongHeaders(h);
      if (h.size === null || !Number.isSafeInteger(h.size) || h.size < 0) throw new Error(TAR_MESSAGES.size);
      this.sparse = null;
      if (h.type === null) unknownTypeflags.set(h, String.fromCharCode(block[156]!));
      if (map) this.startSparse(h, map, pax);
      else if (h.type !== 'directory') {
        this.contentLeft = h.size;
        this.paddingLeft = padding(h.size);
      }
      return h;
    }
  }

  /**
   * The sparse map of the entry whose header is `block` (src/tar/sparse.ts): null when it is no
   * sparse file, undefined when the map's bytes after the header have not all arrived.
   */
  private sparseMap(block: Buffer): PendingSparse | null | undefined {
    if (block[156] === 0x53 /* 'S': old GNU */) {
      const segments: number[] = [];
      parseGnuEntries(block, 386, 4, decodeNumber, segments);
      let extended = block[482] !== 0;
      let extensionBytes = 0;
      while (extended) {
        if (extensionBytes >= MAX_LONG_HEADER) throw new Error(TAR_MESSAGES.sparse);
        if (this.buffered < BLOCK + extensionBytes + BLOCK) return undefined;
        const extension = this.peek(BLOCK + extensionBytes, BLOCK);
        parseGnuEntries(extension, 0, 21, decodeNumber, segments);
        extended = extension[504] !== 0;
        extensionBytes += BLOCK;
      }
      return { segments, realSize: decodeNumber(block, 483, 12) ?? NaN, extensionBytes, mapBytes: 0 };
    }
    // pax sparse records count on regular files only (as Go's archive/tar reads them).
    const pax = this.pax;
    const type = block[156];
    if (pax === null || !(type === 0 || type === 0x30 || type === 0x37)) return null;
    const kind = paxSparseKind(pax);
    if (kind === null) return null;
    if (kind === 'pax') return { segments: parsePaxMap(pax['GNU.sparse.map'] ?? ''), realSize: paxRealSize(pax), extensionBytes: 0, mapBytes: 0 };
    // 1.0: the map is the start of the content, whole blocks of decimal lines.
    const look = Math.min(this.buffered - BLOCK, MAX_LONG_HEADER);
    const map = look > 0 ? parseDataMap(this.peek(BLOCK, look)) : undefined;
    if (map === undefined) {
      if (look >= MAX_LONG_HEADER) throw new Error(TAR_MESSAGES.sparse);
      return undefined;
    }
    return { segments: map.segments, realSize: paxRealSize(pax), extensionBytes: 0, mapBytes: map.bytes };
  }

  /** Makes `h` the regular file of its real size that the sparse entry holds; its content is then given with the holes as zeros. */
  private startSparse(h: Header, map: PendingSparse, pax: Record<string, string> | null): void {
    const stored = h.size! - map.mapBytes;
    if (stored < 0) throw new Error(TAR_MESSAGES.sparse);
    const { segments, realSize } = checkLayout({ segments: map.segments, realSize: map.realSize }, stored);
    // The map of a 1.0 entry is content: taken now (it is all here: sparseMap waited for it).
    if (map.mapBytes > 0) this.drop(map.mapBytes);
    this.contentLeft = stored;
    this.paddingLeft = padding(h.size!);
    const name = pax?.['GNU.sparse.name'];
    if (name) h.name = name;
    h.type = 'file';
    h.size = realSize;
    (h as SparseHeader).sparseMap = segments;
    this.sparse = { segments, realSize, at: 0, segment: 0 };
  }

  /** `n` bytes from `at` bytes past the read position, copied (at + n ≤ buffered). */
  private peek(at: number, n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    let skip = at;
    let filled = 0;
    for (let i = this.head, off = this.offset; filled < n; i++, off = 0) {
      const c = this.chunks[i]!;
      const avail = c.length - off;
      if (skip >= avail) {
        skip -= avail;
        continue;
      }
      filled += c.copy(out, filled, off + skip, Math.min(c.length, off + skip + n - filled));
      skip = 0;
    }
    return out;
  }

  /** Undefined (wait for more bytes) while the source goes on; else why no more will come. */
  private needMore(): undefined {
    if (this.failure) throw this.failure.error;
    if (this.ended) throw new Error(TAR_MESSAGES.truncated);
    return undefined;
  }

  /** The next entry's header, or null at the end of the tar. */
  async next(): Promise<Header | null> {
    for (;;) {
      const h = this.nextSync();
      if (h !== undefined) return h;
      await this.fill();
    }
  }

  /** Waits until more bytes have arrived (or the source has ended or failed). */
  async fill(): Promise<void> {
    if (this.paused) {
      this.paused = false;
      this.source.resume();
    }
    if (this.failure || this.ended) return;
    const before = this.buffered;
    while (this.buffered === before && !this.failure && !this.ended) await new Promise<void>((resolve) => (this.wake = resolve));
  }

  private peekBlock(): Buffer {
    const chunk = this.chunks[this.head]!;
    if (chunk.length - this.offset >= BLOCK) return chunk.subarray(this.offset, this.offset + BLOCK);
    const block = Buffer.allocUnsafe(BLOCK);
    let filled = 0;
    for (let i = this.head, off = this.offset; filled < BLOCK; i++, off = 0) {
      const c = this.chunks[i]!;
      filled += c.copy(block, filled, off, Math.min(c.length, off + BLOCK - filled));
    }
    return block;
  }

  /**
   * The bytes from the next header on, as far as they lie in one chunk, for a caller that reads
   * whole entries itself (the applier's runs of small files: native extractFiles), then says how
   * many it took (`advance`). Undefined where the next entry's reading depends on what this reader
   * holds (pax records, a long name, global records) or not one header's bytes are here. `offset`
   * is where `start` lies in the tar (a header's byteOffset counts from there).
   */
  entryBytes(): { chunk: Buffer; start: number; offset: number } | undefined {
    if (!this.skipRest() || this.pax !== null || this.paxGlobal !== null || this.gnuLongPath !== null || this.gnuLongLinkPath !== null) return undefined;
    if (this.buffered < BLOCK) return undefined;
    const chunk = this.chunks[this.head]!;
    if (chunk.length - this.offset < BLOCK) return undefined;
    return { chunk, start: this.offset, offset: this.shifted };
  }

  /** Takes `n` bytes of whole entries given by `entryBytes` (n ≤ what it gave). */
  advance(n: number): void {
    if (n > 0) this.drop(n);
  }

  private readLongHeader(type: string, data: Buffer): void {
    switch (type) {
      case 'gnu-long-path':
        this.gnuLongPath = decodeNameField(data, 0, data.length);
        break;
      case 'gnu-long-link-path':
        this.gnuLongLinkPath = decodeNameField(data, 0, data.length);
        break;
      case 'pax-global-header':
        this.paxGlobal = decodePaxRecords(data);
        break;
      default: {
        const own = decodePaxRecords(data);
        this.pax = this.paxGlobal === null ? own : { ...this.paxGlobal, ...own };
      }
    }
  }

  private applyLongHeaders(h: Header): void {
    // An empty long name (its first byte NUL) leaves the header's own, as in tar-stream.
    if (this.gnuLongPath) {
      h.name = this.gnuLongPath;
      this.gnuLongPath = null;
    }
    if (this.gnuLongLinkPath) {
      h.linkname = this.gnuLongLinkPath;
      this.gnuLongLinkPath = null;
    }
    const pax = this.pax;
    if (pax) {
      if (pax.path) h.name = pax.path;
      if (pax.linkpath) h.linkname = pax.linkpath;
      if (pax.size) h.size = parseInt(pax.size, 10);
      h.pax = pax;
      this.pax = null;
    }
  }

  /** Bytes of the current entry's content not yet taken. */
  get remaining(): number {
    return this.contentLeft;
  }

  /**
   * The rest of the current entry's content, whole, when it is all here already; else undefined.
   * A sparse file's is its whole content (holes as zeros), taken before any of it was.
   */
  contentSync(): Buffer | undefined {
    const n = this.contentLeft;
    if (this.buffered < n) return undefined;
    this.contentLeft = 0;
    const sparse = this.sparse;
    if (sparse === null) return this.take(n);
    this.sparse = null;
    const stored = this.take(n);
    const whole = Buffer.alloc(sparse.realSize);
    let from = 0;
    for (let i = 0; i < sparse.segments.length; i += 2) {
      const length = sparse.segments[i + 1]!;
      stored.copy(whole, sparse.segments[i]!, from, from + length);
      from += length;
    }
    return whole;
  }

  /** The rest of the current entry's content, whole (for entries small enough to hold). */
  async content(): Promise<Buffer> {
    for (;;) {
      const whole = this.contentSync();
      if (whole !== undefined) return whole;
      await this.more();
    }
  }

  /** The rest of the current entry's content, in the pieces it arrives in. */
  async *contentChunks(): AsyncGenerator<Buffer> {
    if (this.sparse !== null) {
      yield* this.sparseChunks(this.sparse);
      return;
    }
    while (this.contentLeft > 0) {
      if (this.buffered === 0) await this.more();
      const chunk = this.chunks[this.head]!;
      const n = Math.min(chunk.length - this.offset, this.contentLeft);
      const view = chunk.subarray(this.offset, this.offset + n);
      this.drop(n);
      this.contentLeft -= n;
      yield view;
    }
  }

  /** A sparse file's content: its stored segments where they go, and views of one zero buffer for the holes between. */
  private async *sparseChunks(s: SparseState): AsyncGenerator<Buffer> {
    const { segments, realSize } = s;
    while (s.at < realSize || s.segment < segments.length) {
      const next = s.segment < segments.length ? segments[s.segment]! : realSize;
      if (s.at < next) {
        const zeros = holeChunk(next - s.at);
        s.at += zeros.length;
        yield zeros;
        continue;
      }
      const left = next + segments[s.segment + 1]! - s.at;
      if (left === 0) {
        s.segment += 2;
        continue;
      }
      if (this.buffered === 0) await this.more();
      const chunk = this.chunks[this.head]!;
      const n = Math.min(chunk.length - this.offset, left);
      const view = chunk.subarray(this.offset, this.offset + n);
      this.drop(n);
      this.contentLeft -= n;
      s.at += n;
      yield view;
    }
  }

  /** Skips the rest of the current entry's content. */
  async skipContent(): Promise<void> {
    while (!this.skipRest()) await this.more();
  }
}
