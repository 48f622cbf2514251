/** The storage driver over a local directory (the registry's `filesystem` driver `rootdirectory`). */
import { createReadStream } from 'node:fs';
import type { Readable } from 'node:stream';
import fs from 'node:fs/promises';
import path from 'node:path';
import { SmartError, isErrno, isSmartError, refusalHint } from '../errors.js';
import type { Digest } from '../oci/digest.js';
import { markLocalFile, verifyFile, type LocalFile } from '../pipeline/local-file.js';
import type { StorageDriver, StorageEntry, StorageStat, StorageWriter } from './driver.js';
import { openBatchedFileWriter } from './batched-file-writer.js';
import { withFileLock } from './file-lock.js';
import { ownedId, ownerOfId } from './aside.js';
import { sweepLocal, type Cleaned, type Owner } from './leftovers.js';
import { mkdirp } from './made-directories.js';
import { notRegularKind, openRegularFile, readBounded } from './regular-file.js';

const TMP = '.tmp-';

/** Whether `name` is a temporary name `putContent` or a writer gives a file before it becomes `target` (names in one directory). */
export function isTemporaryOf(name: string, target: string): boolean {
  return name.startsWith(`${target}${TMP}`);
}

/** The writer a temporary name (`NAME.tmp-OWNER-XXXXXXXX`) names; null for an untagged one of older versions; undefined when it is none. */
export function ownerOfTemporary(name: string): Owner | null | undefined {
  const at = name.lastIndexOf(TMP);
  return at > 0 ? ownerOfId(name.slice(at + TMP.length)) : undefined;
}

/**
 * The mode a file this process creates gets (0666 less the umask): what a blob copied or linked into
 * a store must have too, and not its source's (a layout's 0600 blob would keep a registry running
 * as another user from reading the store's copy). The umask is read once: this process never sets it.
 */
let createdMode: number | undefined;
function fileMode(): number {
  return (createdMode ??= 0o666 & ~process.umask());
}

/** Links `from` at `to` when it already has the mode a file written here would get; false when it has another, or cannot be linked. */
async function linkWithMode(from: string, to: string, mode: number): Promise<boolean> {
  const st = await fs.stat(from).catch(() => undefined);
  if (!st || (st.mode & 0o7777) !== mode) return false;
  return fs.link(from, to).then(() => true, () => false);
}

/** A temporary name beside `target`, tagged with its owner so that a killed run's can be told from a live one's. */
function tmpName(target: string): string {
  return `${target}${TMP}${ownedId()}`;
}

export class FsDriver implements StorageDriver {
  readonly name: string;
  readonly localFiles = true;

  /** `name`: what errors call it, when not `file:ROOT` (an archive's staging layout: the archive). */
  constructor(
    readonly root: string,
    name?: string,
  ) {
    this.name = name ?? `file:${root}`;
  }

  private full(p: string): string {
    // Paths come from the layout, never from users; still refuse anything that would climb.
    const normal = path.posix.normalize(`/${p}`);
    if (normal.split('/').includes('..')) throw new SmartError('INTERNAL', `storage path climbs: ${p}`);
    return path.join(this.root, normal);
  }

  location(p: string): string {
    return this.full(p);
  }

  private fail(e: unknown, op: string, p: string): never {
    throw this.failure(e, op, p);
  }

  private failure(e: unknown, op: string, p: string): SmartError {
    if (isErrno(e, 'ENOENT') || isErrno(e, 'ENOTDIR')) {
      return new SmartError('NOT_FOUND', `${this.name}: ${p} not found`, { input: p, cause: e });
    }
    return new SmartError('STORAGE', `${this.name}: cannot ${op} ${p}: ${(e as Error).message}`, { input: p, cause: e, ...refusalHint(e) });
  }

  /** What messages call the file at `p`: the store or layout, and where the file is. */
  private fileName(p: string): string {
    return `${this.name}: ${this.full(p)}`;
  }

  async getContent(p: string, maxBytes?: number): Promise<Buffer> {
    let handle: fs.FileHandle | undefined;
    try {
      const opened = await openRegularFile(this.full(p), this.fileName(p));
      handle = opened.handle;
      return maxBytes === undefined ? await handle.readFile() : await readBounded(handle, opened.size, maxBytes, `${this.name}: ${p}`, p);
    } catch (e) {
      if (isSmartError(e)) throw e;
      return this.fail(e, 'read', p);
    } finally {
      await handle?.close();
    }
  }

  async putContent(p: string, content: Buffer): Promise<void> {
    const target = this.full(p);
    const tmp = tmpName(target);
    try {
      await mkdirp(path.dirname(target));
      await fs.writeFile(tmp, content);
      await fs.rename(tmp, target);
    } catch (e) {
      await fs.rm(tmp, { force: true }).catch(() => undefined);
      this.fail(e, 'write', p);
    }
  }

  async reader(p: string, offset = 0, length?: number): Promise<Readable> {
    const full = this.full(p);
    let handle: fs.FileHandle;
    try {
      handle = (await openRegularFile(full, this.fileName(p))).handle;
    } catch (e) {
      if (isSmartError(e)) throw e;
      this.fail(e, 'open', p);
    }
    const stream = createReadStream('', { fd: handle, start: offset, ...(length !== undefined ? { end: offset + length - 1 } : {}), highWaterMark: 256 * 1024 });
    return offset === 0 && length === undefined ? markLocalFile(stream, { path: full }) : stream;
  }

  /**
   * A clone where the filesystem can (btrfs, XFS), else copy_file_range: no byte through the
   * process; then the copy is hashed through one reused buffer, and renamed into place.
   */
  async importFile(file: LocalFile, p: string, expect: { digest: Digest; size: number; what: string }, signal?: AbortSignal): Promise<void> {
    const target = this.full(p);
    const tmp = tmpName(target);
    try {
      signal?.throwIfAborted();
      await mkdirp(path.dirname(target));
      // A kept blob is linked where it can be (no second copy on the disk): the inode its cache has
      // just checked, not read again, when its mode is the one a file written here gets (an inode
      // has one mode). Else copied, given that mode (a copy keeps its source's), and checked.
      const mode = fileMode();
      const linked = file.shared ? await linkWithMode(file.path, tmp, mode) : false;
      if (linked) file.onBytes?.(expect.size);
      else {
        await fs.copyFile(file.path, tmp, fs.constants.COPYFILE_EXCL | fs.constants.COPYFILE_FICLONE);
        await fs.chmod(tmp, mode);
        await verifyFile(tmp, { ...expect, what: file.what ?? expect.what }, file.onBytes);
      }
      // A copy whose command failed meanwhile (another layer refused, Ctrl-C) does not appear.
      signal?.throwIfAborted();
      await fs.rename(tmp, target);
    } catch (e) {
      await fs.rm(tmp, { force: true }).catch(() => undefined);
      if (isSmartError(e) || signal?.aborted) throw e;
      this.fail(e, 'write', p);
    }
  }

  async writer(p: string): Promise<StorageWriter> {
    const target = this.full(p);
    const tmp = tmpName(target);
    await mkdirp(path.dirname(target)).catch((e: unknown) => this.fail(e, 'create', p));
    const stream = await openBatchedFileWriter(tmp, 'wx', (e) => this.failure(e, 'write', p)).catch((e: unknown) => this.fail(e, 'create', p));
    const closed = (): Promise<void> =>
      new Promise((resolve) => {
        if (stream.closed) resolve();
        else stream.once('close', () => resolve());
      });
    return {
      stream,
      commit: async () => {
        if (!stream.writableFinished) {
          await new Promise<void>((resolve, reject) => {
            stream.once('error', reject);
            stream.end(() => resolve());
          });
        }
        await closed();
        await fs.rename(tmp, target).catch((e: unknown) => this.fail(e, 'write', p));
      },
      cancel: async () => {
        stream.destroy();
        await closed();
        await fs.rm(tmp, { force: true });
      },
    };
  }

  /**
   * Removes the temporary files of writers that died (kill -9) from the directory `p`: those whose
   * owner is gone, and untagged ones of older versions after a day. Never one a live writer uses: a
   * store (a registry's storage, a layout) may be written by other machines too (`shared`).
   */
  async removeStaleTemporaries(p: string): Promise<Cleaned[]> {
    return sweepLocal(this.full(p), ownerOfTemporary, { shared: true });
  }

  async stat(p: string): Promise<StorageStat | undefined> {
    try {
      const st = await fs.stat(this.full(p));
      const kind = notRegularKind(st);
      return { size: st.size, isDirectory: st.isDirectory(), ...(kind && !st.isDirectory() ? { special: kind } : {}) };
    } catch (e) {
      if (isErrno(e, 'ENOENT') || isErrno(e, 'ENOTDIR')) return undefined;
      this.fail(e, 'stat', p);
    }
  }

  /**
   * Runs `fn` while no other process of this machine runs one for the same `path`, for a short
   * read-modify-write of it (an OCI layout's index.json): a lock file beside it, `PATH.lock`.
   */
  exclusive<T>(p: string, fn: () => Promise<T>): Promise<T> {
    return withFileLock(`${this.full(p)}.lock`, `${this.name}: ${p}`, fn);
  }

  async list(p: string): Promise<string[]> {
    try {
      return (await fs.readdir(this.full(p))).sort();
    } catch (e) {
      if (isErrno(e, 'ENOENT') || isErrno(e, 'ENOTDIR')) return [];
      this.fail(e, 'list', p);
    }
  }

  /**
   * Symlinks are followed, to directories too, as the registry's filesystem driver follows them
   * (its Stat and List open the path) and as every read here does: a repository directory that is
   * a symlink is walked as the repository a pull reads. A symlink to a directory it has been
   * reached through already (a loop) is not followed again. What is neither a file nor a directory
   * (a pipe, a device) is an entry with `special`; a symlink to nothing is nothing.
   */
  async *walk(p: string): AsyncIterable<StorageEntry> {
    const base = path.posix.normalize(`/${p}`).replace(/\/$/, '');
    // Gone meanwhile, or a symlink to nothing (or to itself): nothing there.
    const stat = (rel: string) => fs.stat(this.full(rel)).catch((e: unknown) => (isErrno(e, 'ENOENT') || isErrno(e, 'ENOTDIR') || isErrno(e, 'ELOOP') ? undefined : this.fail(e, 'stat', rel)));
    const identity = (st: { dev: number; ino: number }) => `${st.dev}:${st.ino}`;
    // Per directory to walk: the directories reached through symlinks on its way (and the base).
    type Followed = { id: string; up: Followed } | undefined;
    const top = await stat(base);
    const dirs: { dir: string; followed: Followed }[] = [{ dir: base, followed: top ? { id: identity(top), up: undefined } : undefined }];
    for (let next = dirs.pop(); next !== undefined; next = dirs.pop()) {
      const { dir, followed } = next;
      let entries;
      try {
        entries = await fs.readdir(this.full(dir), { withFileTypes: true });
      } catch (e) {
        // Gone meanwhile, or `p` names no directory: nothing under it.
        if (isErrno(e, 'ENOENT') || isErrno(e, 'ENOTDIR')) continue;
        this.fail(e, 'list', dir);
      }
      for (const entry of entries) {
        const child = `${dir}/${entry.name}`;
        if (entry.isDirectory()) {
          dirs.push({ dir: child, followed });
          continue;
        }
        const st = await stat(child);
        if (!st) continue;
        if (st.isDirectory()) {
          const id = identity(st);
          let loop = false;
          for (let f = followed; f && !loop; f = f.up) loop = f.id === id;
          if (!loop) dirs.push({ dir: child, followed: { id, up: followed } });
        } else if (st.isFile()) yield { path: child, size: st.size };
        else yield { path: child, size: st.size, special: notRegularKind(st)! };
      }
    }
  }

  async move(from: string, to: string): Promise<void> {
    const target = this.full(to);
    try {
      await mkdirp(path.dirname(target));
      await fs.rename(this.full(from), target);
    } catch (e) {
      this.fail(e, 'move', from);
    }
  }

  async delete(p: string): Promise<void> {
    try {
      await fs.rm(this.full(p), { recursive: true, force: true });
    } catch (e) {
      this.fail(e, 'delete', p);
    }
  }
}
