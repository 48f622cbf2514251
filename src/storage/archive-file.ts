/**
 * Where an archive named by a path is read from or written to, when the path is not a plain file:
 * `/dev/stdout` (a symlink to /proc/self/fd/1, a pipe or a terminal), `/dev/stdin`, a process
 * substitution's `/dev/fd/63`, a named pipe, `/dev/null`, or a symlink the user made to a file
 * elsewhere. A regular file is written beside and renamed into place (nothing half-written where
 * the user looks); renamed onto such a path, it would replace the symlink itself (`/dev/stdout`
 * made a regular file in /dev, for every later program) and never reach the pipe. So a special
 * file is written straight, in order, as skopeo writes one; a symlink to a regular file has the
 * file it names replaced, the link kept.
 */
import { closeSync, constants as fsConstants, open as openFd, openSync, readSync, statSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { SmartError, isErrno, rethrowRefusal } from '../errors.js';
import { openUnlinked } from '../pipeline/spool.js';
import { ownedId } from './aside.js';
import { specialKind } from './regular-file.js';
import { ARCHIVE_MAGIC_BYTES, sniffArchiveCompression, type ArchiveCompression } from '../oci/mediatypes.js';

/**
 * What `file` is (symlinks followed) when it is a pipe, a device or a socket: such a path is read
 * as a stream, from its start, once. Undefined for anything else (a missing path included).
 */
export function specialFileAt(file: string): string | undefined {
  try {
    return specialKind(statSync(file));
  } catch {
    return undefined;
  }
}

/** How a regular file at `file` is compressed (gzip, zstd, bzip2, xz), by its first bytes; undefined for a plain one or none there. */
export function compressedFileAt(file: string): Exclude<ArchiveCompression, 'none'> | undefined {
  let fd: number | undefined;
  try {
    fd = openSync(file, 'r');
    const head = Buffer.alloc(ARCHIVE_MAGIC_BYTES);
    const n = readSync(fd, head, 0, head.length, 0);
    const c = sniffArchiveCompression(head.subarray(0, n));
    return c === 'none' ? undefined : c;
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/**
 * Where a write of an archive to `file` goes:
 * - `replace`: a regular file (there or not yet): written beside `path` (symlinks resolved) and renamed onto it;
 * - `stream`: a pipe or a device (`kind`): opened and written straight, in order.
 * A directory, or a symlink to nothing, is refused (USAGE): `writes` says what the transport writes.
 */
export async function archiveTarget(file: string, name: string, writes: string): Promise<{ how: 'replace'; path: string } | { how: 'stream'; path: string; kind: string }> {
  const link = await fs.lstat(file).catch((e: unknown) => {
    if (isErrno(e, 'ENOENT') || isErrno(e, 'ENOTDIR')) return undefined;
    throw e;
  });
  if (!link) return { how: 'replace', path: file };
  const st = link.isSymbolicLink() ? await fs.stat(file).catch(() => undefined) : link;
  if (!st) {
    throw new SmartError('USAGE', `${name}: ${file} is a symlink to nothing (${await fs.readlink(file).catch(() => '?')})`, {
      input: file,
      hint: 'make the file it names exist, or remove the link',
    });
  }
  if (st.isDirectory()) throw new SmartError('USAGE', `${name}: ${file} is a directory; ${writes}`, { input: file });
  const kind = specialKind(st);
  if (kind === 'a socket') throw socketRefused(file, name);
  if (kind) return { how: 'stream', path: file, kind };
  return { how: 'replace', path: link.isSymbolicLink() ? await fs.realpath(file) : file };
}

/**
 * A socket cannot be opened by its path (ENXIO): what /dev/stdout names under a program started
 * with its output on a socket (a service's journal, a parent's child_process pipe).
 */
export function socketRefused(file: string, name: string): SmartError {
  return new SmartError('USAGE', `${name}: ${file} is a socket, which cannot be opened by its path`, {
    input: file,
    hint: /^(docker|oci)-archive:/.test(name) ? `use ${name.split(':')[0]}:- for stdin or stdout` : 'name a file',
  });
}

/**
 * True when an archive source named `file` is read as a stream, once, in order: `-` (stdin), a
 * pipe or a device named by its path (/dev/stdin, a process substitution's /dev/fd/63, a named
 * pipe), or a compressed archive (`docker save | gzip > image.tar.gz`, which docker load and skopeo
 * read), decompressed as it is read. A plain file is read in place.
 */
export function isStreamedArchive(file: string): boolean {
  return file === '-' || specialFileAt(file) !== undefined || compressedFileAt(file) !== undefined;
}

/** The bytes of an archive source that isStreamedArchive: stdin for `-`, else the file opened for one read. A socket is refused. */
export async function streamedArchiveInput(file: string, name: string, stdin: Readable): Promise<Readable> {
  if (file === '-') return stdin;
  const special = specialFileAt(file);
  if (special === 'a socket') throw socketRefused(file, name);
  if (special === 'a pipe') return openPipe(file, name);
  // A terminal (docker-archive:/dev/stdin with nothing piped in) is refused as `-` is on one: a
  // command that seems to hang, waiting for an archive nobody will type.
  const handle = await fs.open(file, 'r').catch(rethrowRefusal(`cannot read ${name}`));
  if (process.getBuiltinModule('node:tty').isatty(handle.fd)) {
    await handle.close();
    throw new SmartError('USAGE', `${name}: ${file} is a terminal`, { input: file, hint: 'pipe the archive in, docker save IMAGE | smart push docker-archive:- …, or name the archive file' });
  }
  return handle.createReadStream({ highWaterMark: 256 * 1024 }); // closes the handle when it closes
}

/**
 * A named pipe (or /dev/stdin, /dev/fd/63 on one) read as a socket is: opened without waiting for
 * a writer (a blocking open would hold a thread of the pool until one comes, and no Ctrl-C or
 * --timeout could end the command meanwhile), then read as the event loop is told it is readable,
 * so that a pipe nobody writes to waits until the command is cancelled, and no longer.
 */
async function openPipe(file: string, name: string): Promise<Readable> {
  const fd = await new Promise<number>((resolve, reject) => openFd(file, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK | fsConstants.O_NOCTTY, (e, n) => (e ? reject(e) : resolve(n)))).catch(
    rethrowRefusal(`cannot read ${name}`),
  );
  // node:net loaded here, as node:tty below: only the commands that read a pipe need it.
  return new (process.getBuiltinModule('node:net').Socket)({ fd, readable: true, writable: false });
}

/** Where a spool's file goes: $TMPDIR, else /var/tmp (as skopeo puts its big temporary files: /tmp is often a tmpfs, in memory). */
export const spoolDir = (): string => process.env.TMPDIR || '/var/tmp';

/** Where a spool's file goes, for its messages: a full $TMPDIR named, with the variable that moves it. */
export const spoolPlace = (): { dir: string; hint: string } => ({
  dir: spoolDir(),
  hint: 'free space there, or set TMPDIR to a directory with room for the largest layer',
});

/** A file a blob bound for an archive on a pipe is spooled into, unlinked at once (see pipeline/spool.ts). */
export function openSpoolFile(): Promise<fs.FileHandle> {
  return openUnlinked(path.join(spoolDir(), `.smart-spool-${ownedId()}`));
}

/**
 * Opens a pipe or a device an archive is written straight into (archiveTarget's `stream`): its
 * failures reach the writes through the sink, never as an unhandled event. A terminal is refused:
 * bytes no one can read, which it can be confused by.
 */
export async function openArchiveOutput(file: string, name: string, terminalHint: string): Promise<Writable> {
  const handle = await fs.open(file, 'w').catch(rethrowRefusal(`cannot write ${name}`));
  // node:tty loaded here, by the one command that needs it: loading it costs every command ~1.5 ms.
  if (process.getBuiltinModule('node:tty').isatty(handle.fd)) {
    await handle.close();
    throw new SmartError('USAGE', `${name}: ${file} is a terminal`, { input: file, hint: terminalHint });
  }
  const out = handle.createWriteStream(); // closes the handle when it closes
  out.on('error', () => undefined);
  return out;
}
