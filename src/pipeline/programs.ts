/** Finding optional helper programs (zstd, igzip...) on PATH, once per process. */
import { access, constants } from 'node:fs/promises';
import path from 'node:path';

const found = new Map<string, Promise<string | null>>();

export function findProgram(name: string): Promise<string | null> {
  let p = found.get(name);
  if (!p) {
    p = (async () => {
      for (const dir of (process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin').split(path.delimiter)) {
        if (!dir) continue;
        const candidate = path.join(dir, name);
        try {
          await access(candidate, constants.X_OK);
          return candidate;
        } catch {
          // not here
        }
      }
      return null;
    })();
    found.set(name, p);
  }
  return p;
}
