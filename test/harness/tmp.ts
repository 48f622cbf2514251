/** Temporary directories that a test suite removes when it ends. */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll } from 'vitest';

const made: string[] = [];

// Registered as the test file that imports this module is collected, so that it runs whatever
// made a directory: vitest never runs an afterAll registered from inside a beforeAll or a test,
// where most directories are made.
afterAll(async () => {
  await Promise.all(made.splice(0).map((d) => fs.rm(d, { recursive: true, force: true })));
});

export async function tempDir(prefix = 'smart-test-'): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), prefix));
  made.push(dir);
  return dir;
}
