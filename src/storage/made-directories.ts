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
import { mkdirSync, rmdirSync, statSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { isErrno, rethrowRefusal } from '../errors.js';

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
 * `fs.mkdir(dir, { recursive: true })`, failing with the real reason. Node's recursive mkdir
 * reports ENOENT when a directory cannot be made on a read-only filesystem (and the like): then
 * the first missing directory, made alone, gives the reason (EROFS, EACCES, ENOSPC).
 */
export async function mkdirp(dir: string): Promise<string | undefined> {
  try {
    return await fs.mkdir(dir, { recursive: true });
  } catch (e) {
    if (isErrno(e, 'EEXIST')) throw notADirectory(dir, e);
    if (!isErrno(e, 'ENOENT')) throw e;
    const first = firstMissing(dir);
    throw await fs.mkdir(first).then(
      // Made now (the cause went meanwhile): not this call's to keep, nor to explain.
      () => fs.rmdir(first).then(() => e, () => e),
      (real: unknown) => real,
    );
  }
}

/** mkdirp, synchronous (for callers that write synchronously): the real reason, not Node's ENOENT. */
export function mkdirpSync(dir: string): void {
  try {
    mkdirSync(dir, { recursive: true });
  } catch (e) {
    if (isErrno(e, 'EEXIST')) throw notADirectory(dir, e);
    if (!isErrno(e, 'ENOENT')) throw e;
    const first = firstMissing(dir);
    mkdirSync(first); // throws the real reason
    // Made now (the cause went meanwhile): not this call's to keep, nor to explain.
    try {
      rmdirSync(first);
    } catch {
      // another run's by now
    }
    throw e;
  }
}

/**
 * A recursive mkdir fails EEXIST only where `dir` itself is there and is not a directory (a file in
 * its place; a file among its parents is ENOTDIR): said as ENOTDIR, which callers know as a
 * refusal of the machine to explain (machineRefusal), not as an internal failure.
 */
function notADirectory(dir: string, cause: unknown): NodeJS.ErrnoException {
  return Object.assign(new Error(`ENOTDIR: ${dir} exists and is not a directory, mkdir '${dir}'`), { code: 'ENOTDIR', errno: -20, syscall: 'mkdir', path: dir, cause });
}

/** The outermost directory of `dir` that does not exist (an error path: a stat per level). */
function firstMissing(dir: string): string {
  let first = path.resolve(dir);
  while (path.dirname(first) !== first && !statSync(path.dirname(first), { throwIfNoEntry: false })) first = path.dirname(first);
  return first;
}
