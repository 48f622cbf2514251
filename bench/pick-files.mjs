/**
 * The files a benchmark layer is made of: regular files under `roots`, walked in name order, up to
 * about `budgetBytes` (and `maxFiles`), each inode once. Deterministic on a given machine, so
 * bench/run.mjs and bench/compression.mjs build the same shared-library layer.
 */
import fs from 'node:fs';
import path from 'node:path';

export function pickFiles(roots, budgetBytes, maxFiles = Infinity, filter = () => true) {
  const picked = [];
  const inodes = new Set();
  let total = 0;
  const walk = (dir) => {
    let entries;
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1));
    } catch {
      return;
    }
    for (const e of entries) {
      if (total >= budgetBytes || picked.length >= maxFiles) return;
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile() && filter(p)) {
        const { size, ino } = fs.statSync(p);
        // A hardlinked file is stored once by tar: count it once.
        if (inodes.has(ino) || total + size > budgetBytes * 1.02) continue;
        inodes.add(ino);
        picked.push(p.slice(1));
        total += size;
      }
    }
  };
  for (const r of roots) walk(r);
  return { files: picked, bytes: total };
}

/** The shared-library layer of the bench image (~150 MB of .so files). */
export const LIBRARY_ROOTS = ['/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu', '/usr/lib'];
export const isLibrary = (p) => /\.so/.test(p);
