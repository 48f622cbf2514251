/** Reading OCI layouts in tests. */
import fs from 'node:fs/promises';
import path from 'node:path';

/** Every blob of a layout, by its hex digest: to compare layouts byte for byte. */
export async function blobFiles(layoutDir: string): Promise<Map<string, Buffer>> {
  const dir = path.join(layoutDir, 'blobs', 'sha256');
  const out = new Map<string, Buffer>();
  for (const hex of await fs.readdir(dir)) out.set(hex, await fs.readFile(path.join(dir, hex)));
  return out;
}
