/**
 * A destination that is a mount point: a tmpfs mounted for the tree, or a volume a container was
 * given (`docker run -v $PWD/out:/out`, a bind mount of the same filesystem; a pod's emptyDir).
 * It cannot be renamed, so `rootfs:` and `bundle:` build the tree inside it and move it up: the
 * result is the tree a pull into a plain directory gives, with nothing of ours left in it, and
 * the rules for replacing it are the same. Needs root (mount).
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { currentOwner, ownerTag } from '../../src/storage/leftovers.js';
import { fixtures } from '../harness/fixtures.js';
import { writeImage } from '../harness/images.js';
import { run, runOk, smart } from '../harness/run.js';
import { inCI, isRoot } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';
import { describeTree } from '../harness/tree.js';

describe('pulling into a mount point', () => {
  let work: string;
  let image: string;
  let plainTree: Awaited<ReturnType<typeof describeTree>>;
  const mounted: string[] = [];

  const skipUnlessRoot = (ctx: { skip: () => void }) => {
    if (isRoot) return false;
    if (inCI) throw new Error('CI=true but mounting needs root');
    ctx.skip();
    return true;
  };

  /** A fresh mount at `dir`: a tmpfs, or a bind mount of a directory of the same filesystem. */
  const mountAt = async (dir: string, kind: 'tmpfs' | 'bind') => {
    await fs.mkdir(dir, { recursive: true });
    if (kind === 'tmpfs') await runOk('mount', ['-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', dir]);
    else {
      const source = `${dir}-source`;
      await fs.mkdir(source, { recursive: true });
      await runOk('mount', ['--bind', source, dir]);
    }
    mounted.push(dir);
  };

  beforeAll(async () => {
    work = await tempDir('smart-mount-');
    image = `oci:${fixtures().paths.ociBasic}:latest`;
    if (!isRoot) return;
    const plain = path.join(work, 'plain');
    const r = await smart(['pull', image, `rootfs:${plain}`], { cacheHome: path.join(work, 'cache') });
    expect(r.code, r.stderr).toBe(0);
    plainTree = await describeTree(plain);
  });

  afterAll(async () => {
    for (const dir of mounted.reverse()) await run('umount', [dir]);
  });

  for (const kind of ['tmpfs', 'bind'] as const) {
    it(`${kind}: rootfs: gives the tree a plain directory gets, nothing of ours in it, and a second pull replaces it`, async (ctx) => {
      if (skipUnlessRoot(ctx)) return;
      const dest = path.join(work, `${kind}-rootfs`);
      await mountAt(dest, kind);
      for (const round of [1, 2]) {
        const r = await smart(['pull', image, `rootfs:${dest}`], { cacheHome: path.join(work, 'cache') });
        expect(r.code, `round ${round}: ${r.stderr}`).toBe(0);
        expect(await describeTree(dest), `round ${round}`).toEqual(plainTree);
        expect(await fs.readFile(path.join(work, `.${kind}-rootfs.smart-pull.json`), 'utf8')).toMatch(/"pulledBy":"smartlayer"/);
      }
    });
  }

  it('bundle: into a bind mount, over a root filesystem pulled there before; a mount holding the user\'s files is refused', async (ctx) => {
    if (skipUnlessRoot(ctx)) return;
    const dest = path.join(work, 'bind-bundle');
    await mountAt(dest, 'bind');
    expect((await smart(['pull', image, `rootfs:${dest}`], { cacheHome: path.join(work, 'cache') })).code).toBe(0);
    const r = await smart(['pull', image, `bundle:${dest}`], { cacheHome: path.join(work, 'cache') });
    expect(r.code, r.stderr).toBe(0);
    expect((await fs.readdir(dest)).sort()).toEqual(['.smart-pull.json', 'config.json', 'rootfs']);
    expect(await describeTree(path.join(dest, 'rootfs'))).toEqual(plainTree);

    const users = path.join(work, 'users');
    await mountAt(users, 'tmpfs');
    await fs.writeFile(path.join(users, 'notes.txt'), 'mine');
    const refused = await smart(['pull', image, `rootfs:${users}`], { cacheHome: path.join(work, 'cache') });
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/is not empty and was not made by smart pull; refusing to replace it/);
    expect(await fs.readdir(users)).toEqual(['notes.txt']);
  });

  it('a mount point whose parent is read-only (docker run --read-only -v vol:/out): bundles pull again and again; a root filesystem, with no mark beside it, says the next pull needs --force', async (ctx) => {
    if (skipUnlessRoot(ctx)) return;
    const parent = path.join(work, 'read-only');
    const dest = path.join(parent, 'out');
    await fs.mkdir(dest, { recursive: true });
    await runOk('mount', ['--bind', parent, parent]);
    mounted.push(parent);
    await runOk('mount', ['-o', 'remount,bind,ro', parent]);
    await mountAt(dest, 'tmpfs');
    const cacheHome = path.join(work, 'cache');
    const first = await smart(['pull', image, `rootfs:${dest}`], { cacheHome });
    expect(first.code, first.stderr).toBe(0);
    expect(first.stderr).toMatch(/warning: rootfs:.*: no mark of this pull could be written beside .* \(EROFS\): the next pull into it needs --force/);
    expect(await describeTree(dest)).toEqual(plainTree);
    const again = await smart(['pull', image, `rootfs:${dest}`], { cacheHome });
    expect(again.code).not.toBe(0);
    expect(again.stderr).toMatch(/is not empty and was not made by smart pull/);
    for (const flags of [['--force'], []]) {
      const r = await smart(['pull', ...flags, image, `bundle:${dest}`], { cacheHome });
      expect(r.code, r.stderr).toBe(0);
      expect((await fs.readdir(dest)).sort()).toEqual(['.smart-pull.json', 'config.json', 'rootfs']);
    }
  });

  it("an ext4 volume's own lost+found is left where it is, not taken for the user's files; one an image brought goes with its tree", async (ctx) => {
    if (skipUnlessRoot(ctx)) return;
    // A real ext4 (mkfs makes lost+found as inode 11, which tells it from a directory of that name).
    const dest = path.join(work, 'ext4');
    await fs.mkdir(dest);
    const disk = path.join(work, 'ext4.img');
    await runOk('truncate', ['-s', '16M', disk]);
    await runOk('mkfs.ext4', ['-q', disk]);
    await runOk('mount', ['-o', 'loop', disk, dest]);
    mounted.push(dest);
    const cacheHome = path.join(work, 'cache');
    for (const round of [1, 2]) {
      const r = await smart(['pull', image, `rootfs:${dest}`], { cacheHome });
      expect(r.code, `round ${round}: ${r.stderr}`).toBe(0);
      const { 'lost+found': lostFound, ...tree } = await describeTree(dest);
      expect(lostFound, `round ${round}`).toBeDefined();
      expect((await fs.stat(path.join(dest, 'lost+found'))).ino, `round ${round}`).toBe(11);
      expect(tree, `round ${round}`).toEqual(plainTree);
    }

    // Images tarred from a filesystem carry a /lost+found: it is theirs, replaced with the rest of
    // the tree (kept, it showed in the next image's tree, and an image with one could not be pulled after).
    const withLostFound = async (name: string) => {
      const dir = path.join(work, name);
      await writeImage(dir, { layers: [{ files: { [`lost+found/from-${name}`]: name, [`file-${name}`]: name }, createdBy: `ADD ${name}` }] });
      return `oci:${dir}:latest`;
    };
    const a = await withLostFound('a');
    const b = await withLostFound('b');
    const tmpfs = path.join(work, 'brought');
    await mountAt(tmpfs, 'tmpfs');
    for (const [source, names] of [
      [a, ['file-a', 'lost+found/from-a']],
      [image, Object.keys(plainTree)],
      [a, ['file-a', 'lost+found/from-a']],
      [b, ['file-b', 'lost+found/from-b']],
    ] as const) {
      const r = await smart(['pull', source, `rootfs:${tmpfs}`], { cacheHome });
      expect(r.code, `${source}: ${r.stderr}`).toBe(0);
      const tree = Object.keys(await describeTree(tmpfs)).filter((p) => p !== 'lost+found');
      expect(tree.sort(), source).toEqual([...names].filter((p) => p !== 'lost+found').sort());
    }
  });

  it('what a killed pull left inside the mount point is removed by the next, not shown in the tree', async (ctx) => {
    if (skipUnlessRoot(ctx)) return;
    const dest = path.join(work, 'killed');
    await mountAt(dest, 'tmpfs');
    // A tree a pull was building when it was killed: its owner (this machine, a process gone) is dead.
    const dead = ownerTag({ ...currentOwner(), pid: 4_194_303, start: 1 });
    const left = `.smart-new-${dead}-0123abcd`;
    await fs.mkdir(path.join(dest, left, 'etc'), { recursive: true });
    const r = await smart(['pull', image, `rootfs:${dest}`], { cacheHome: path.join(work, 'cache') });
    expect(r.code, r.stderr).toBe(0);
    expect(await fs.readdir(dest)).not.toContain(left);
    expect(await describeTree(dest)).toEqual(plainTree);
  });
});
