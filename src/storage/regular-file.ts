/**
 * How a local source opens a file it reads as a file (an OCI layout's blob, index.json or
 * oci-layout; a `file:` store's link or blob data): whatever else is found at that path is refused
 * before a byte is read. A named pipe there would hold the open itself for ever (waiting for a
 * writer, on a thread of the pool that no cancellation reaches); a device such as /dev/zero would be
 * read without end, its size being 0 to stat. So the open does not wait (O_NONBLOCK: a pipe's
 * returns at once; a regular file ignores the flag), the handle is stat'ed, and anything but a
 * regular file is closed again and refused in one line saying what it is. Symlinks are followed:
 * a symlink to a regular file is one.
 */
import type { Stats } from 'node:fs';
import fs from 'node:fs/promises';
import { SmartError, isErrno } from '../errors.js';
import { checkSize, limitExceeded } from '../limits.js';

/** What a file that is neither a regular file nor a directory is, for messages; undefined for those two. */
export function specialKind(st: Stats): string | undefined {
  if (st.isFIFO()) return 'a pipe';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isSocket()) return 'a socket';
  return undefined;
}

/** What `st` is when it is no regular file: a directory, a pipe, a device...; undefined for a regular file. */
export function notRegularKind(st: Stats): string | undefined {
  if (st.isFile()) return undefined;
  return st.isDirectory() ? 'a directory' : (specialKind(st) ?? 'no regular file');
}

/**
 * The refusal of `file`, which is `kind` (notRegularKind) where a file is read: NOT_AN_IMAGE, as
 * anything else a layout or a store holds in place of what it should (store check reports it as
 * `not-a-file`). `what` names it as the user knows it (`oci:dir: /path/of/the/blob`).
 */
export class NotRegularFile extends SmartError {
  constructor(
    file: string,
    what: string,
    /** What is there: a pipe, a character device, a directory... */
    readonly kind: string,
  ) {
    super('NOT_AN_IMAGE', `${what} is ${kind}, not a regular file`, {
      input: file,
      hint: 'a layout or a store holds regular files only, or symlinks to them: put back the file that belongs there',
    });
  }
}

const OPEN_FLAGS = fs.constants.O_RDONLY | fs.constants.O_NONBLOCK | fs.constants.O_NOCTTY;

/**
 * Opens the regular file `file` for reading, with its size; refuses anything else (NotRegularFile)
 * without waiting on it or reading it. Errors of the open (ENOENT...) are thrown as they are, for
 * the caller to word; a socket, which cannot be opened (ENXIO), is refused as what it is.
 */
export async function openRegularFile(file: string, what: string): Promise<{ handle: fs.FileHandle; size: number }> {
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(file, OPEN_FLAGS);
  } catch (e) {
    const st = isErrno(e, 'ENXIO') ? await fs.stat(file).catch(() => undefined) : undefined;
    const kind = st && notRegularKind(st);
    throw kind ? new NotRegularFile(file, what, kind) : e;
  }
  try {
    const st = await handle.stat();
    const kind = notRegularKind(st);
    if (kind) throw new NotRegularFile(file, what, kind);
    return { handle, size: st.size };
  } catch (e) {
    await handle.close().catch(() => undefined);
    throw e;
  }
}

/**
 * The whole of an open regular file of `size` bytes (as stat'ed), refused past `maxBytes`: by its
 * size before a byte is read, and by what is read (never more than maxBytes + 1 bytes), whatever
 * stat said (a file that grows meanwhile).
 */
export async function readBounded(handle: fs.FileHandle, size: number, maxBytes: number, what: string, input: string): Promise<Buffer> {
  checkSize(size, maxBytes, what, input);
  // One byte more than the file holds: a read that fills it has found the file longer than stat said.
  let buffer = Buffer.allocUnsafe(Math.min(size, maxBytes) + 1);
  let length = 0;
  for (;;) {
    if (length === buffer.length) {
      if (length > maxBytes) throw limitExceeded(`${what} is more than the ${maxBytes} bytes allowed`, input);
      const grown = Buffer.allocUnsafe(Math.min(buffer.length * 2, maxBytes + 1));
      buffer.copy(grown, 0, 0, length);
      buffer = grown;
    }
    const { bytesRead } = await handle.read(buffer, length, buffer.length - length, length);
    if (bytesRead === 0) return buffer.subarray(0, length);
    length += bytesRead;
  }
}
