/**
 * Directories made for a destination, and their undo: a write that fails into a new path leaves
 * nothing behind there, not even the empty directories made on the way to it.
 */
import fs from 'node:fs/promises';
import path from 'node:path';

/**
 * Makes `dir` and its missing parents. Returns what removes them again: `dir` and each parent up to
 * the first one made here, while each is empty (one that is not, filled meanwhile, ends it
 * quietly). Nothing to remove when `dir` was there already.
 */
export async function makeDirectories(dir: string): Promise<() => Promise<void>> {
  const target = path.resolve(dir);
  const first = await fs.mkdir(target, { recursive: true });
  if (first === undefined) return async () => {};
  return async () => {
    for (let d = target; ; d = path.dirname(d)) {
      try {
        await fs.rmdir(d);
      } catch {
        return;
      }
      if (d === first || path.dirname(d) === d) return;
    }
  };
}
