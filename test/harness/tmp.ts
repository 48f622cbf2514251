/** Temporary directories that a test suite removes when it ends. */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll } from 'vitest';

const made: string[] = [];
let hooked = false;

export async function tempDir(prefix = 'smart-test-'): Promise<string> {
  if (!hooked) {
    hooked = true;
    afterAll(async () => {
      await Promise.all(made.splice(0).map((d) => fs.rm(d, { recursive: true, force: true })));
    });
  }
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), prefix));
  made.push(dir);
  return dir;
}
