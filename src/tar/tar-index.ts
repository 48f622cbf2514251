/**
 * Random access to the members of an uncompressed tar file: one pass over the headers (seeking
 * past the data), then any member opened as a byte range. This is how an image archive is read
 * without unpacking it to a temporary directory.
 *
 * The headers and small members are read with synchronous calls: each is one pread of a page the
 * kernel has cached, a few microseconds, where a call through the thread pool costs a round trip
 * of 0.2-0.5 ms here; a docker save tar took ~20 of them, one after the other, before its first
 * layer could move. The walk lets the event loop turn every HEADERS_PER_TURN headers.
 */
import { closeSync, createReadStream, existsSync, fstatSync, openSync, readSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { SmartError, isErrno } from '../errors.js';
import { MAX_ARCHIVE_MEMBERS, limitExceeded } from '../limits.js';
import { BLOCK, decodeHeader, entryType, isZeroBlock, linkedMemberName, normalizeMemberName, parsePax, readNumber, type TarEntryType } from './header.js';
import { MAX_SPARSE_SEGMENTS, checkLayout, holeChunk, parseDataMap, parseGnuEntries, parsePaxMap, paxRealSize, paxSparseKind } from './sparse.js';

/** An archive named where a directory is: an OCI layout meant as oci:DIR is said to be one. */
const directoryHint = (dir: string) => (existsSync(path.join(dir, 'oci-layout')) ? { hint: 'an OCI layout directory is named oci:DIR' } : {});

/** Headers read between two turns of the event loop (a tar of many members does not hold it long). */
const HEADERS_PER_TURN = 256;
/** Members up to this size are read in one synchronous call; larger ones through the pool. */
const SYNC_READ_BYTES = 1024 * 1024;

/** Reads `length` bytes at `position` into `buffer` (fewer only at the end of the file); the count read. */
function preadFully(fd: number, buffer: Buffer, length: number, position: number): number {
  let done = 0;
  while (done < length) {
    const n = readSync(fd, buffer, done, length - done, position + done);
    if (n === 0) break;
    done += n;
  }
  return done;
}

export interface TarMember {
  name: string;
  type: TarEntryType;
  size: number;
  /** Byte offset of the member's data in the file. */
  offset: number;
  linkname: string;
  /**
   * A sparse file's segments ([offset, length] flattened; src/tar/sparse.ts), its stored bytes
   * one after the other from `offset`; `size` is then its real size.
   */
  sparse?: number[];
}

export class TarIndex {
  private constructor(
    readonly path: string,
    readonly members: ReadonlyMap<string, TarMember>,
  ) {}

  /**
   * Indexes `file`. A file that is not a tar is NOT_AN_IMAGE; a truncated one CORRUPT_ARCHIVE; one
   * of more than `maxMembers` members LIMIT_EXCEEDED (each is held in memory).
   */
  static async open(file: string, what = file, maxMembers = MAX_ARCHIVE_MEMBERS): Promise<TarIndex> {
    let fd: number;
    try {
      fd = openSync(file, 'r');
    } catch (e) {
      // The path tried, where the name says more than it (`docker-archive:c:olon.tar` tries `c`).
      if (isErrno(e, 'ENOENT')) throw new SmartError('NOT_FOUND', `${what}: no such file${what.endsWith(file) ? '' : ` ${file}`}`, { input: file, cause: e });
      if (isErrno(e, 'EISDIR')) throw new SmartError('NOT_AN_IMAGE', `${what}: is a directory, not a tar archive`, { input: file, ...directoryHint(file), cause: e });
      throw new SmartError('STORAGE', `${what}: cannot open: ${(e as Error).message}`, { input: file, cause: e });
    }
    try {
      const stat = fstatSync(fd);
      // Linux opens a directory for reading; only the read would fail, as an internal error.
      if (stat.isDirectory()) throw new SmartError('NOT_AN_IMAGE', `${what}: is a directory, not a tar archive`, { input: file, ...directoryHint(file) });
      const fileSize = stat.size;
      const members = new Map<string, TarMember>();
      const block = Buffer.alloc(BLOCK);
      let pos = 0;
      let pax: Record<string, string> = {};
      let longName: string | undefined;
      let longLink: string | undefined;
      const readData = (offset: number, size: number): Buffer => {
        if (size > 1024 * 1024) throw new SmartError('CORRUPT_ARCHIVE', `${what}: oversized extended header at ${offset}`, { input: file });
        const buf = Buffer.alloc(size);
        preadFully(fd, buf, size, offset);
        return buf;
      };
      for (let headers = 1; ; headers++) {
        if (headers % HEADERS_PER_TURN === 0) await new Promise((resolve) => setImmediate(resolve));
        const bytesRead = preadFully(fd, block, BLOCK, pos);
        if (bytesRead === 0 && pos > 0) break; // archives without end blocks (some writers omit them)
        if (bytesRead < BLOCK) {
          throw new SmartError(pos === 0 ? 'NOT_AN_IMAGE' : 'CORRUPT_ARCHIVE', pos === 0 ? `${what}: not a tar archive` : `${what}: truncated tar archive`, {
            input: file,
          });
        }
        if (isZeroBlock(block)) break;
        const header = decodeHeader(block);
        if (!header) {
          throw new SmartError(pos === 0 ? 'NOT_AN_IMAGE' : 'CORRUPT_ARCHIVE', pos === 0 ? `${what}: not a tar archive` : `${what}: corrupt tar header at byte ${pos}`, {
            input: file,
          });
        }
        const extension = header.typeflag === 'x' || header.typeflag === 'g' || header.typeflag === 'L' || header.typeflag === 'K';
        // A pax size overrides the header's (files past the octal field's 8 GiB): it places the next header too.
        const paxSize = extension ? undefined : pax.size;
        if (paxSize !== undefined && !/^\d{1,15}$/.test(paxSize)) {
          throw new SmartError('CORRUPT_ARCHIVE', `${what}: corrupt tar header at byte ${pos} (pax size "${paxSize.slice(0, 20)}")`, { input: file });
        }
        const size = paxSize !== undefined ? Number(paxSize) : header.size;
        let dataOffset = pos + BLOCK;
        // An old GNU sparse file's map goes on in extension blocks between its header and its data.
        let gnuSparse: number[] | undefined;
        if (header.typeflag === 'S') {
          gnuSparse = [];
          try {
            parseGnuEntries(block, 386, 4, readNumber, gnuSparse);
            for (let extended = block[482] !== 0; extended; dataOffset += BLOCK) {
              const extension = readData(dataOffset, BLOCK);
              if (gnuSparse.length / 2 > MAX_SPARSE_SEGMENTS) throw new Error('too many segments');
              parseGnuEntries(extension, 0, 21, readNumber, gnuSparse);
              extended = extension[504] !== 0;
            }
          } catch {
            throw corruptSparse(what, header.name, file);
          }
        }
        if (dataOffset + size > fileSize) {
          throw new SmartError('CORRUPT_ARCHIVE', `${what}: truncated tar archive (member "${header.name}" runs past the end)`, { input: file });
        }
        pos = dataOffset + Math.ceil(size / BLOCK) * BLOCK;
        switch (header.typeflag) {
          case 'x':
            pax = parsePax(readData(dataOffset, size));
            continue;
          case 'g':
            continue;
          case 'L':
            longName = readData(dataOffset, size).toString('utf8').replace(/\0+$/, '');
            continue;
          case 'K':
            longLink = readData(dataOffset, size).toString('utf8').replace(/\0+$/, '');
            continue;
        }
        if (members.size >= maxMembers) throw limitExceeded(`${what}: holds more than ${maxMembers} members`, file);
        const name = normalizeMemberName(pax['GNU.sparse.name'] ?? pax.path ?? longName ?? header.name);
        const member: TarMember = {
          name,
          type: gnuSparse ? 'file' : entryType(header.typeflag),
          size,
          offset: dataOffset,
          linkname: pax.linkpath ?? longLink ?? header.linkname,
        };
        const sparseKind = member.type === 'file' && !gnuSparse ? safely(() => paxSparseKind(pax), what, name, file) : null;
        if (gnuSparse || sparseKind) {
          // A member tar --sparse wrote (an archive of a layout whose blobs have holes): read as the file it is.
          safely(() => {
            let mapBytes = 0;
            let segments = gnuSparse;
            let realSize = gnuSparse ? readNumber(block, 483, 12) : NaN;
            if (sparseKind === 'pax') segments = parsePaxMap(pax['GNU.sparse.map'] ?? '');
            if (sparseKind === 'data') {
              const map = parseDataMap(readData(dataOffset, Math.min(size, 1024 * 1024)));
              if (!map) throw new Error('no map');
              segments = map.segments;
              mapBytes = map.bytes;
            }
            if (sparseKind) realSize = paxRealSize(pax);
            if (mapBytes > size) throw new Error('map past the data');
            checkLayout({ segments: segments!, realSize }, size - mapBytes);
            member.sparse = segments!;
            member.offset = dataOffset + mapBytes;
            member.size = realSize;
          }, what, name, file);
        }
        members.set(name, member);
        pax = {};
        longName = longLink = undefined;
      }
      return new TarIndex(file, members);
    } finally {
      closeSync(fd);
    }
  }

  /** A member, following symlinks and hardlinks inside the archive (docker save links duplicate layers). */
  get(name: string): TarMember | undefined {
    let member = this.members.get(normalizeMemberName(name));
    for (let hops = 0; member && (member.type === 'symlink' || member.type === 'link') && hops < 16; hops++) {
      member = this.members.get(linkedMemberName(member.name, member.type, member.linkname));
    }
    return member && member.type === 'file' ? member : undefined;
  }

  async read(member: TarMember): Promise<Buffer> {
    if (member.sparse) return this.readSparse(member);
    const buf = Buffer.alloc(member.size);
    if (member.size <= SYNC_READ_BYTES) {
      const fd = openSync(this.path, 'r');
      try {
        preadFully(fd, buf, member.size, member.offset);
      } finally {
        closeSync(fd);
      }
      return buf;
    }
    const handle = await fs.open(this.path, 'r');
    try {
      await handle.read(buf, 0, member.size, member.offset);
      return buf;
    } finally {
      await handle.close();
    }
  }

  /** A sparse member's first `size` bytes (the holes zeros): its stored segments, each where it goes. */
  private readSparse(member: TarMember): Buffer {
    const buf = Buffer.alloc(member.size);
    const fd = openSync(this.path, 'r');
    try {
      const segments = member.sparse!;
      let stored = member.offset;
      for (let i = 0; i < segments.length && segments[i]! < member.size; i += 2) {
        const at = segments[i]!;
        preadFully(fd, buf.subarray(at), Math.min(segments[i + 1]!, member.size - at), stored);
        stored += segments[i + 1]!;
      }
    } finally {
      closeSync(fd);
    }
    return buf;
  }

  /**
   * Where the member's bytes from `start` are in the archive file (for readers that read them
   * themselves); undefined for a sparse member, whose bytes are not one range.
   */
  rangeOf(member: TarMember, start = 0): { path: string; offset: number; length: number } | undefined {
    if (member.sparse) return undefined;
    return { path: this.path, offset: member.offset + start, length: member.size - start };
  }

  /**
   * The member's bytes from `start`, in 256 KiB chunks: every stage a stream passes through may
   * hold two or three chunks, so larger ones multiply memory (measured with 8 MiB: +65 MB).
   */
  open(member: TarMember, start = 0): Readable {
    if (member.size === 0) return Readable.from([]);
    if (member.sparse) return Readable.from(this.sparseChunks(member, start), { objectMode: false });
    return createReadStream(this.path, { start: member.offset + start, end: member.offset + member.size - 1, highWaterMark: 256 * 1024 });
  }

  /** A sparse member's bytes from `start`: its stored segments read from the archive in 256 KiB chunks, zeros (views of one shared buffer) for the holes. */
  private async *sparseChunks(member: TarMember, start: number): AsyncGenerator<Buffer> {
    const handle = await fs.open(this.path, 'r');
    try {
      const segments = member.sparse!;
      let at = start;
      let stored = member.offset;
      for (let i = 0; i <= segments.length; i += 2) {
        const segmentAt = i < segments.length ? segments[i]! : member.size;
        const end = i < segments.length ? segmentAt + segments[i + 1]! : member.size;
        while (at < segmentAt) {
          const zeros = holeChunk(segmentAt - at);
          at += zeros.length;
          yield zeros;
        }
        while (at < end) {
          const n = Math.min(256 * 1024, end - at);
          const buf = Buffer.allocUnsafe(n);
          const { bytesRead } = await handle.read(buf, 0, n, stored + (at - segmentAt));
          if (bytesRead === 0) throw new SmartError('CORRUPT_ARCHIVE', `${this.path}: truncated tar archive (member "${member.name}" runs past the end)`, { input: this.path });
          at += bytesRead;
          yield buf.subarray(0, bytesRead);
        }
        if (i < segments.length) stored += segments[i + 1]!;
      }
    } finally {
      await handle.close();
    }
  }
}

function corruptSparse(what: string, name: string, file: string): SmartError {
  return new SmartError('CORRUPT_ARCHIVE', `${what}: member "${name}" has an invalid sparse file map (GNU tar --sparse)`, { input: file });
}

/** `f`'s value; a malformed sparse map it finds is the archive's damage, named. */
function safely<T>(f: () => T, what: string, name: string, file: string): T {
  try {
    return f();
  } catch (e) {
    if (e instanceof SmartError) throw e;
    throw corruptSparse(what, name, file);
  }
}

