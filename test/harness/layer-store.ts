/** The layer store a test's smart runs kept, seen from outside: its indexes rewritten as older versions wrote them. */
import fs from 'node:fs/promises';
import path from 'node:path';

/** Rewrites the index of every layer kept under `cacheHome` with `rewrite`; returns how many it changed. */
export async function rewriteStoredIndexes(cacheHome: string, rewrite: (text: string) => string): Promise<number> {
  const layersDir = path.join(cacheHome, 'smartlayer', 'layer-store', 'layers');
  let changed = 0;
  for (const hex of await fs.readdir(layersDir)) {
    const index = path.join(layersDir, hex, 'entries');
    const text = await fs.readFile(index, 'utf8');
    const old = rewrite(text);
    if (old === text) continue;
    changed++;
    await fs.writeFile(index, old);
  }
  return changed;
}
