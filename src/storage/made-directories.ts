/**
 * Directories made for a destination, and their undo: a write that fails into a new path leaves
 * nothing behind there, not even the empty directories made on the way to it.
 *
 * Two runs may share such a directory (pulls into `out/a` and `out/b`, both making `out`). The one
 * that fails takes `out` away while it is empty, which it may be for a moment while the other has
 * made it but not yet put anything in it. So the first entry a run puts into a directory goes
 * through `entry`, which makes the directory again when it went meanwhile. Once that entry is in,
 * no other run's undo can take the directory (a directory is removed only while empty). A third
 * run may have made it again by the time the entry's failure is looked into: the directory is
 * then there, but not the one the entry failed in, and the entry is tried again as well.
 */
import type { Stats } from 'node:fs';
import { chmodSync, mkdirSync, statSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { SmartError, isErrno, rethrowRefusal } from '../errors.js';

export interface MadeDirectories {
  /**
   * Runs `create`, which puts something into the directory. When that fails for want of the
   * directory (another run's undo took it), makes it again, as this run's own, and retries.
   */
  entry<T>(create: () => Promise<T>): Promise<T>;
  /**
   * Removes the directory and each parent up to the outermost one this run made, while each is
   * empty (one that is not, filled meanwhile, ends it quietly). Nothing when it was all there.
   */
  undo(): Promise<void>;
}

/** Each retry means another run took the directory away in the instant between; a few cover any real interleaving. */
const ENTRY_ATTEMPTS = 8;

/** Makes `dir` and its missing parents; see MadeDirectories. */
export async function makeDirectories(dir: string): Promise<MadeDirectories> {
  const target = path.resolve(dir);
  /** The outermost directory made by this run (the shortest path), if any. */
  let outermost: string | undefined;
  /** Which directory is at `target`: another made there after it went is another. */
  let made: string | undefined;
  const identity = (st: Stats | undefined) => (st ? `${st.dev}:${st.ino}:${st.birthtimeMs}` : undefined);
  const make = async () => {
    const first = await mkdirp(target).catch(rethrowRefusal(`cannot make the directory ${target}`));
    if (first !== undefined && (outermost === undefined || first.length < outermost.length)) outermost = first;
    made = identity(await fs.stat(target).catch(() => undefined));
  };
  await make();
  return {
    async entry<T>(create: () => Promise<T>): Promise<T> {
      for (let attempt = 1; ; attempt++) {
        try {
          return await create();
        } catch (e) {
          // ENOENT for another reason (the directory there all along) is the caller's to report.
          const gone = (e as NodeJS.ErrnoException).code === 'ENOENT' && identity(await fs.stat(target).catch(() => undefined)) !== made;
          if (!gone || attempt === ENTRY_ATTEMPTS) throw e;
          await make();
        }
      }
    },
    async undo(): Promise<void> {
      if (outermost === undefined) return;
      for (let d = target; ; d = path.dirname(d)) {
        try {
          await fs.rmdir(d);
        } catch {
          return;
        }
        if (d === outermost || path.dirname(d) === d) return;
      }
    },
  };
}

/**
 * `fs.mkdir(dir, { recursive: true })`, failing with the real reason (EROFS, EACCES, ENOSPC, as
 * the mkdir of the first missing directory gave it); a directory that cannot be made where its
 * parent is (a pseudo-filesystem: /proc/nope) is a STORAGE error saying so.
 */
export async function mkdirp(dir: string): Promise<string | undefined> {
  try {
    // Synchronous: a stat per level of a path that is mostly there, and a mkdir per missing one.
    return mkdirLevelsSync(dir);
  } catch (e) {
    throw mkdirFailure(dir, e);
  }
}

/** mkdirp, synchronous (for callers that write synchronously). */
export function mkdirpSync(dir: string): void {
  try {
    mkdirLevelsSync(dir);
  } catch (e) {
    throw mkdirFailure(dir, e);
  }
}

/**
 * `dir` made 0700 (its parents as mkdirp makes them), or narrowed to 0700 when it is there and
 * open to others (made so by an earlier version): for directories whose contents carry an
 * image's modes (a setuid-root program, a file capability), which no other user may reach.
 */
export async function mkdirPrivate(dir: string): Promise<void> {
  await mkdirp(path.dirname(dir));
  try {
    mkdirSync(dir, { mode: 0o700 });
    return;
  } catch (e) {
    if (!isErrno(e, 'EEXIST')) throw mkdirFailure(dir, e);
  }
  if (!narrowToOwner(dir)) throw notADirectory(dir, undefined);
}

/**
 * Takes group and other permissions off `dir` when this user owns it; another user's, or one on a
 * read-only filesystem, is left as it is. False when `dir` is not a directory (or not there).
 */
export function narrowToOwner(dir: string): boolean {
  const st = statSync(dir, { throwIfNoEntry: false });
  if (!st?.isDirectory()) return false;
  if ((st.mode & 0o077) !== 0 && st.uid === process.geteuid?.()) {
    try {
      chmodSync(dir, st.mode & 0o7700);
    } catch {
      // EROFS, EPERM (a filesystem that keeps its own modes): it stays as it was.
    }
  }
  return true;
}

function mkdirFailure(dir: string, e: unknown): unknown {
  if (isErrno(e, 'EEXIST')) return notADirectory(dir, e);
  if (!isErrno(e, 'ENOENT')) return e;
  const at = (e as NodeJS.ErrnoException).path ?? dir;
  return new SmartError('STORAGE', `cannot make the directory ${dir}: ${at} cannot be made though its parent is there (ENOENT)`, {
    input: dir,
    cause: e,
    hint: 'the filesystem there makes no directories (a path under /proc or /sys?): choose another',
  });
}

/**
 * A recursive mkdir fails EEXIST only where `dir` itself is there and is not a directory (a file in
 * its place; a file among its parents is ENOTDIR): said as ENOTDIR, which callers know as a
 * refusal of the machine to explain (machineRefusal), not as an internal failure.
 */
function notADirectory(dir: string, cause: unknown): NodeJS.ErrnoException {
  return Object.assign(new Error(`ENOTDIR: ${dir} exists and is not a directory, mkdir '${dir}'`), { code: 'ENOTDIR', errno: -20, syscall: 'mkdir', path: dir, cause });
}

/**
 * What `mkdir(dir, { recursive: true })` does, one level at a time. Node's own (20 to 24) loops for
 * ever, at full CPU and deaf to signals, where a pseudo-filesystem answers ENOENT to a mkdir under
 * a directory that exists (/proc/nope/x): every command whose cache or destination is there hung,
 * after its work, until SIGKILL. Answers the first directory made, or undefined when `dir` was
 * there. Errors as Node's: EEXIST where `dir` is not a directory, ENOTDIR where a parent is not,
 * else the mkdir's own (ENOENT, EROFS, EACCES). A parent taken away meanwhile (another run's undo)
 * is made again, a few times, not for ever.
 */
export function mkdirLevelsSync(dir: string, mode?: number): string | undefined {
  for (let attempt = 1; ; attempt++) {
    try {
      return mkdirLevelsSyncOnce(dir, mode);
    } catch (e) {
      if (!isErrno(e, 'ENOENT') || attempt === ENTRY_ATTEMPTS) throw e;
    }
  }
}

function mkdirLevelsSyncOnce(dir: string, mode?: number): string | undefined {
  const missing: string[] = [];
  for (let d = path.resolve(dir); ; d = path.dirname(d)) {
    const st = statSync(d, { throwIfNoEntry: false });
    if (st) {
      if (!st.isDirectory()) throw notMade(d, missing.length === 0 ? 'EEXIST' : 'ENOTDIR');
      break;
    }
    missing.push(d);
    if (path.dirname(d) === d) break;
  }
  let first: string | undefined;
  for (const d of missing.reverse()) {
    try {
      mkdirSync(d, mode === undefined ? undefined : { mode });
      first ??= d;
    } catch (e) {
      if (!(isErrno(e, 'EEXIST') && statSync(d, { throwIfNoEntry: false })?.isDirectory())) throw e;
    }
  }
  return first;
}

function notMade(at: string, code: 'EEXIST' | 'ENOTDIR'): NodeJS.ErrnoException {
  const words = code === 'EEXIST' ? 'file already exists' : 'not a directory';
  return Object.assign(new Error(`${code}: ${words}, mkdir '${at}'`), { code, errno: code === 'EEXIST' ? -17 : -20, syscall: 'mkdir', path: at });
}
