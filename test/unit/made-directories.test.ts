/**
 * A destination's directories and their undo, with two runs sharing a parent: the one that fails
 * takes the parent away while the other has not yet put anything in it.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { makeDirectories, mkdirLevelsSync, mkdirp, mkdirpSync } from '../../src/storage/made-directories.js';
import { tempDir } from '../harness/tmp.js';

const exists = (p: string) => fs.stat(p).then(() => true, () => false);

describe('made directories', () => {
  it('undo removes what this run made, up to the outermost, and keeps what was there', async () => {
    const root = await tempDir('smart-made-');
    const made = await makeDirectories(path.join(root, 'a', 'b', 'c'));
    expect(await exists(path.join(root, 'a', 'b', 'c'))).toBe(true);
    await made.undo();
    expect(await fs.readdir(root)).toEqual([]);

    const again = await makeDirectories(root); // there already: nothing to undo
    await again.undo();
    expect(await exists(root)).toBe(true);
  });

  it('undo stops quietly at a directory filled meanwhile', async () => {
    const root = await tempDir('smart-made-');
    const made = await makeDirectories(path.join(root, 'out', 'x'));
    await fs.writeFile(path.join(root, 'out', 'other'), '');
    await made.undo();
    expect(await fs.readdir(path.join(root, 'out'))).toEqual(['other']);
  });

  it("an entry put in after another run's undo took the directory: made again, as this run's own", async () => {
    const root = await tempDir('smart-made-');
    const out = path.join(root, 'out');
    const first = await makeDirectories(out); // makes out
    const second = await makeDirectories(out); // finds it
    await first.undo(); // the first run failed: out is empty, so it goes
    expect(await exists(out)).toBe(false);

    const staging = path.join(out, '.rootfs.smart-new');
    await second.entry(() => fs.mkdir(staging));
    expect(await exists(staging)).toBe(true);

    // The second run fails too: its undo now takes out, which it made again.
    await fs.rmdir(staging);
    await second.undo();
    expect(await fs.readdir(root)).toEqual([]);
  });

  it("an entry that failed in the instant another run's undo took the directory is tried again, even once a third run has made it again", async () => {
    const root = await tempDir('smart-made-');
    const out = path.join(root, 'out');
    const made = await makeDirectories(out);
    const staging = path.join(out, '.rootfs.smart-new');
    let calls = 0;
    await made.entry(async () => {
      if (++calls > 1) return fs.mkdir(staging);
      await fs.rmdir(out); // another run's undo
      const failed: unknown = await fs.mkdir(staging).then(() => undefined, (e: unknown) => e);
      await fs.mkdir(out); // a third run's
      throw failed;
    });
    expect(calls).toBe(2);
    expect(await exists(staging)).toBe(true);
  });

  it('an entry that fails for another reason, the directory being there, fails as it is, once', async () => {
    const root = await tempDir('smart-made-');
    const made = await makeDirectories(path.join(root, 'out'));
    let calls = 0;
    const missing = path.join(root, 'out', 'no', 'such');
    await expect(
      made.entry(() => {
        calls++;
        return fs.open(missing, 'r');
      }),
    ).rejects.toMatchObject({ code: 'ENOENT' });
    expect(calls).toBe(1);
  });
});

describe('mkdirp', () => {
  it('makes the missing levels and answers the first made, as a recursive mkdir does', async () => {
    const root = await tempDir();
    expect(await mkdirp(path.join(root, 'a/b/c'))).toBe(path.join(root, 'a'));
    expect(await mkdirp(path.join(root, 'a/b/c'))).toBeUndefined();
    expect(mkdirLevelsSync(path.join(root, 'a/x/y'), 0o700)).toBe(path.join(root, 'a/x'));
    expect((await fs.stat(path.join(root, 'a/x/y'))).mode & 0o777).toBe(0o700);
    await fs.writeFile(path.join(root, 'f'), '');
    await expect(mkdirp(path.join(root, 'f'))).rejects.toMatchObject({ code: 'ENOTDIR' });
    await expect(mkdirp(path.join(root, 'f/g'))).rejects.toMatchObject({ code: 'ENOTDIR' });
  });

  it('fails in one STORAGE error where a pseudo-filesystem makes no directory (Node\'s recursive mkdir spun there for ever, deaf to signals)', async () => {
    const refused = { code: 'STORAGE', message: 'cannot make the directory /proc/smart-nope/x: /proc/smart-nope cannot be made though its parent is there (ENOENT)' };
    await expect(mkdirp('/proc/smart-nope/x')).rejects.toMatchObject(refused);
    expect(() => mkdirpSync('/proc/smart-nope/x')).toThrow(refused.message);
  });
});
