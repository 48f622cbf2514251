/**
 * The README's first command ends in `npm run demo`: the demo itself, as a user runs it (the CLI
 * built by the test command before it), through to the bundle run by runc, and nothing left in
 * the temporary directory it worked in.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { tempDir } from '../harness/tmp.js';
import { haveTools, isRoot } from '../harness/tools.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

describe.skipIf(!haveTools('runc') || !isRoot)('npm run demo', () => {
  it('pushes, pushes again with nothing sent, plans, pulls a bundle and runs it under runc, and leaves nothing behind', async () => {
    const tmp = await tempDir('smart-demo-');
    const { code, stderr } = await new Promise<{ code: number | null; stderr: string }>((resolve, reject) => {
      const child = spawn(process.execPath, [path.join(root, 'scripts', 'demo.mjs')], { env: { ...process.env, TMPDIR: tmp }, stdio: ['ignore', 'ignore', 'pipe'] });
      let err = '';
      child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
      child.on('error', reject);
      child.on('close', (c) => resolve({ code: c, stderr: err }));
    });
    expect(code, stderr).toBe(0);
    expect(stderr).toContain('== run: the bundle under runc');
    expect(stderr).not.toContain('(skipped');
    expect(stderr).toContain('demo done.');
    expect(await fs.readdir(tmp)).toEqual([]);
  }, 60_000);
});
