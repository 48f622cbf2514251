/**
 * Sparse files in tars, as GNU tar writes them with `--sparse` (a root filesystem tarred so, or a
 * `lastlog` of 20 MB holding 4 KiB): the data stored is only the file's non-hole segments, and a
 * map says where each goes. Four layouts exist and Go's archive/tar (so Docker and umoci) reads
 * the three pax ones:
 * - old GNU: typeflag `S`, four map entries in the header itself and more in extension blocks
 *   after it, the real size in the header;
 * - pax 0.0: `GNU.sparse.offset` / `GNU.sparse.numbytes` records repeated, `GNU.sparse.size`;
 * - pax 0.1: `GNU.sparse.map` (`offset,length,…`), `GNU.sparse.name`, `GNU.sparse.size`;
 * - pax 1.0: `GNU.sparse.major=1`, `GNU.sparse.minor=0`, `GNU.sparse.name`,
 *   `GNU.sparse.realsize`, and the map as decimal lines at the start of the data, padded to a block.
 * Read as a plain file, each gives wrong content or a `GNUSparseFile.N/` path. The reader expands
 * them instead (src/tar/stream-reader.ts): the entry is a regular file of its real size whose
 * content has zeros in the holes, given as views of one shared zero buffer, which the file writer
 * here skips, so a hole stays a hole on disk (as `tar -x` and Docker leave it). The header keeps
 * the segments (`sparseMap`, stored with it in the layer store's index), so a copy of the file
 * (into the layer store, or out of it) copies the segments only.
 */
import { closeSync, ftruncateSync, openSync, readSync, writeSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import type { Header } from 'tar-stream';

/** Message of every malformed sparse map (src/tar/errors.ts says what it means). */
export const SPARSE_MESSAGE = 'Invalid sparse file map';

/** The layout of a sparse entry: its stored segments ([offset, length] flattened) and real size. */
export interface SparseLayout {
  segments: number[];
  realSize: number;
}

/** A header of the reader's: a sparse file's carries its segments. */
export type SparseHeader = Header & { sparseMap?: number[] };

/** The stored segments ([offset, length] flattened) of a sparse file's entry; undefined for any other entry. */
export function sparseSegments(h: Header): number[] | undefined {
  return (h as SparseHeader).sparseMap;
}

/** True when `h` has pax records of a sparse file (`GNU.sparse.*`), as an older smart kept them without expanding it. */
export function hasSparseRecords(h: Header): boolean {
  const pax = h.pax;
  return pax !== null && pax !== undefined && typeof pax === 'object' && Object.keys(pax).some((k) => k.startsWith('GNU.sparse.'));
}

/** The most map entries read (each a data segment): far more than any real file has. */
export const MAX_SPARSE_SEGMENTS = 1_000_000;
/**
 * The largest real size taken: 16 TiB, ext4's largest file (a `lastlog` for uid 2^32-2 is
 * 1.25 TB). A few map bytes could claim any size, and its holes still cost a step per MiB.
 */
export const MAX_SPARSE_SIZE = 2 ** 44;

const HOLE_BYTES = 1024 * 1024;
let hole: Buffer | undefined;

/** `n` zero bytes (n ≤ 1 MiB) of a hole, as a view of the shared zero buffer: never written to. */
export function holeChunk(n: number): Buffer {
  hole ??= Buffer.alloc(HOLE_BYTES);
  return hole.subarray(0, Math.min(n, HOLE_BYTES));
}

/** True for a chunk `holeChunk` gave: zeros that need not be written. */
export function isHole(chunk: Buffer): boolean {
  return hole !== undefined && chunk.buffer === hole.buffer;
}

function corrupt(): Error {
  return new Error(SPARSE_MESSAGE);
}

/** A map number: decimal digits only, a safe integer. */
function mapNumber(text: string): number {
  if (!/^[0-9]{1,16}$/.test(text)) throw corrupt();
  const n = Number(text);
  if (!Number.isSafeInteger(n)) throw corrupt();
  return n;
}

/**
 * Checks a layout against the bytes stored for it: a real size up to MAX_SPARSE_SIZE, segments in
 * order, none overlapping, none past the real size, and their lengths adding up to exactly the stored data (Go's archive/tar checks
 * the same), so content is never read from the next entry's bytes nor left over.
 */
export function checkLayout(layout: SparseLayout, storedBytes: number): SparseLayout {
  const { segments, realSize } = layout;
  if (!Number.isSafeInteger(realSize) || realSize < 0 || realSize > MAX_SPARSE_SIZE || segments.length % 2 !== 0) throw corrupt();
  let end = 0;
  let sum = 0;
  for (let i = 0; i < segments.length; i += 2) {
    const offset = segments[i]!;
    const length = segments[i + 1]!;
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < end || length < 0 || offset + length > realSize) throw corrupt();
    end = offset + length;
    sum += length;
  }
  if (sum !== storedBytes) throw corrupt();
  return layout;
}

/**
 * Adds a pax record to `records`, as both tar readers keep them: the repeated
 * `GNU.sparse.offset` / `GNU.sparse.numbytes` records of a pax 0.0 sparse file gathered, in
 * order, into one `GNU.sparse.map` (as 0.1 writes it); any other key's last value kept.
 */
export function addPaxRecord(records: Record<string, string>, key: string, value: string): void {
  if (key === 'GNU.sparse.offset' || key === 'GNU.sparse.numbytes') {
    const map = records['GNU.sparse.map'];
    records['GNU.sparse.map'] = map === undefined ? value : `${map},${value}`;
  } else records[key] = value;
}

/** The segments of a pax 0.0 / 0.1 map (`offset,length,…`). */
export function parsePaxMap(map: string): number[] {
  if (map === '') return [];
  const parts = map.split(',');
  if (parts.length % 2 !== 0 || parts.length / 2 > MAX_SPARSE_SEGMENTS) throw corrupt();
  return parts.map(mapNumber);
}

/** The pax records' sparse layout kind: 'pax' (map in records), 'data' (1.0: map in the content), or null (not sparse). */
export function paxSparseKind(pax: Record<string, string>): 'pax' | 'data' | null {
  const major = pax['GNU.sparse.major'];
  const minor = pax['GNU.sparse.minor'];
  if (major !== undefined || minor !== undefined) {
    if (major === '1' && minor === '0') return 'data';
    if (major === '0' && (minor === '0' || minor === '1')) return 'pax';
    throw corrupt();
  }
  return pax['GNU.sparse.map'] !== undefined ? 'pax' : null;
}

/** The real size a pax sparse entry gives (0.x: GNU.sparse.size; 1.0: GNU.sparse.realsize). */
export function paxRealSize(pax: Record<string, string>): number {
  const text = pax['GNU.sparse.realsize'] ?? pax['GNU.sparse.size'];
  if (text === undefined) throw corrupt();
  return mapNumber(text);
}

/**
 * A pax 1.0 map from the bytes at the start of the entry's content: undefined when `available`
 * does not hold it all yet, else the segments and how many bytes (whole blocks) the map takes.
 */
export function parseDataMap(available: Buffer): { segments: number[]; bytes: number } | undefined {
  const numbers: number[] = [];
  let want = -1;
  let start = 0;
  for (let i = 0; i < available.length; i++) {
    if (available[i] !== 0x0a) continue;
    numbers.push(mapNumber(available.toString('latin1', start, i)));
    start = i + 1;
    if (want === -1) {
      if (numbers[0]! > MAX_SPARSE_SEGMENTS) throw corrupt();
      want = 1 + 2 * numbers[0]!;
    }
    if (numbers.length === want) return { segments: numbers.slice(1), bytes: Math.ceil(start / 512) * 512 };
  }
  // No newline for longer than a number can be: not a map.
  if (available.length - start > 17) throw corrupt();
  return undefined;
}

/** The segments of an old GNU sparse map: 24-byte entries from `off`, `count` of them, stopping at the first empty one. */
export function parseGnuEntries(block: Buffer, off: number, count: number, decodeNumber: (b: Buffer, o: number, l: number) => number | null, into: number[]): void {
  for (let i = 0; i < count; i++) {
    const at = off + 24 * i;
    if (block[at] === 0) return;
    const offset = decodeNumber(block, at, 12);
    const length = decodeNumber(block, at + 12, 12);
    if (offset === null || length === null || !Number.isSafeInteger(offset) || !Number.isSafeInteger(length)) throw corrupt();
    if (into.length / 2 >= MAX_SPARSE_SEGMENTS) throw corrupt();
    into.push(offset, length);
  }
}

/**
 * Copies the sparse file `from` to the new file `to` (which must not exist): only the bytes of
 * `segments`, each where it lies, then the size set; the holes between stay holes. False when
 * `from` ends before a segment does (the copy is then short: the caller's to call damage).
 */
export function copySparseFileSync(from: string | Buffer, to: string | Buffer, segments: number[], size: number): boolean {
  const src = openSync(from, 'r');
  try {
    const dst = openSync(to, 'wx', 0o600);
    try {
      const buf = Buffer.allocUnsafe(Math.min(HOLE_BYTES, Math.max(1, segments.reduce((m, v, i) => (i % 2 === 1 ? Math.max(m, v) : m), 0))));
      for (let i = 0; i < segments.length; i += 2) {
        let at = segments[i]!;
        const end = at + segments[i + 1]!;
        while (at < end) {
          const n = readSync(src, buf, 0, Math.min(buf.length, end - at), at);
          if (n === 0) return false;
          for (let off = 0; off < n; ) off += writeSync(dst, buf, off, n - off, at + off);
          at += n;
        }
      }
      ftruncateSync(dst, size);
      return true;
    } finally {
      closeSync(dst);
    }
  } finally {
    closeSync(src);
  }
}

/** Bytes of a large file gathered before they are written. */
const WRITE_BATCH = 1024 * 1024;

/** Writes all of `parts` at `position` in one call, looping over a short write. */
async function writeAllAt(fh: FileHandle, parts: Buffer[], position: number): Promise<void> {
  const total = parts.reduce((n, p) => n + p.length, 0);
  let done = (await fh.writev(parts, position)).bytesWritten;
  if (done === total) return;
  const rest = Buffer.concat(parts).subarray(done);
  for (let off = 0; off < rest.length; ) {
    const { bytesWritten } = await fh.write(rest, off, rest.length - off, position + done);
    off += bytesWritten;
    done += bytesWritten;
  }
}

/**
 * Writes a file's content as it streams, from the start of a new file: chunks gathered into
 * writes of about 1 MiB (a thread-pool round trip each: fewer is faster), holes (`isHole`) skipped
 * and the file's size set at the end, so they stay holes. Returns the bytes of content.
 */
export async function writeFileChunks(fh: FileHandle, chunks: AsyncIterable<Buffer>): Promise<number> {
  let position = 0;
  let batch: Buffer[] = [];
  let batched = 0;
  let written = 0;
  const flush = async () => {
    await writeAllAt(fh, batch, position);
    position += batched;
    written = position;
    batch = [];
    batched = 0;
  };
  for await (const chunk of chunks) {
    if (isHole(chunk)) {
      if (batched > 0) await flush();
      position += chunk.length;
      continue;
    }
    batch.push(chunk);
    batched += chunk.length;
    if (batched >= WRITE_BATCH) await flush();
  }
  if (batched > 0) await flush();
  if (position > written) await fh.truncate(position);
  return position;
}
