/**
 * Two kinds of entry that the tree writers once got wrong, each against the real `tar -x` and
 * umoci:
 * - times before 1970, as GNU tar writes them (base-256, two's complement) and as pax records: a
 *   negative time once reached Node's utimes, which reads it as "now", and a GNU one came a
 *   second late; a `--link` tree then saw its own store's file as modified on the next pull;
 * - a fifo or device node where a lower layer left a file (and a store's damaged layer laid again
 *   over what of it was laid): the `mknod` program's "File exists" was not known as EEXIST, so
 *   the path was never cleared and the pull failed.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { writeImageOfTars } from '../harness/images.js';
import { runOk, smart } from '../harness/run.js';
import { haveTools, inCI, isRoot } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';
import { describeTree } from '../harness/tree.js';

/** Whole seconds, rounded down (BigInt division rounds toward zero). */
const floorSeconds = (ns: bigint): number => Number(ns / 1_000_000_000n) - (ns < 0n && ns % 1_000_000_000n !== 0n ? 1 : 0);

/** `root`'s and every entry's modification time in whole seconds (the sub-second part is not what these tests are about). */
async function mtimes(root: string): Promise<Record<string, number>> {
  const out: Record<string, number> = { '.': floorSeconds((await fs.lstat(root, { bigint: true })).mtimeNs) };
  const walk = async (rel: string): Promise<void> => {
    for (const name of (await fs.readdir(path.join(root, rel))).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      const st = await fs.lstat(path.join(root, r), { bigint: true });
      out[r] = floorSeconds(st.mtimeNs);
      if (st.isDirectory()) await walk(r);
    }
  };
  await walk('');
  return out;
}

describe('times before 1970', () => {
  const ready = haveTools('umoci', 'tar') && isRoot;
  let work: string;

  beforeAll(async () => {
    work = await tempDir('smart-old-times-');
  });

  for (const format of ['gnu', 'pax'] as const) {
    it(`${format} tar: rootfs:, bundle:, the next bundle: from the store and two --link trees have the times tar -x gives`, async (ctx) => {
      if (!ready) {
        if (inCI) throw new Error('CI=true but umoci and tar (run as root) are missing');
        return ctx.skip();
      }
      const base = path.join(work, format);
      const src = path.join(base, 'src');
      await fs.mkdir(path.join(src, 'etc/old'), { recursive: true });
      await fs.writeFile(path.join(src, 'etc/old/file'), 'old\n');
      await fs.writeFile(path.join(src, 'etc/new'), 'new\n');
      await fs.symlink('old/file', path.join(src, 'etc/link'));
      await runOk('mkfifo', [path.join(src, 'etc/old/fifo')]);
      // -1 s (all ones in base-256), the 1960s, just before 1970, and after it.
      await runOk('touch', ['-h', '-d', '1969-12-31 23:59:59 UTC', path.join(src, 'etc/link')]);
      await runOk('touch', ['-d', '1960-01-01 00:00:00 UTC', path.join(src, 'etc/old/file')]);
      await runOk('touch', ['-d', '1969-07-20 20:17:40 UTC', path.join(src, 'etc/old/fifo')]);
      await runOk('touch', ['-d', '1969-12-31 23:59:59 UTC', path.join(src, 'etc/old')]);
      await runOk('touch', ['-d', '2001-02-03 04:05:06 UTC', path.join(src, 'etc/new'), path.join(src, 'etc')]);
      const tar = execFileSync('tar', ['-C', src, `--format=${format}`, '--sort=name', '--numeric-owner', '-cf', '-', 'etc']);
      const image = path.join(base, 'image');
      await writeImageOfTars(image, [tar]);
      const untarred = path.join(base, 'untarred');
      await fs.mkdir(untarred);
      execFileSync('tar', ['-C', untarred, '--warning=no-timestamp', '-xf', '-'], { input: tar });
      const want = await mtimes(path.join(untarred, 'etc'));
      expect(want['old/file']).toBe(-315619200);
      expect(want.link).toBe(-1);
      const umoci = path.join(base, 'umoci');
      await runOk('umoci', ['unpack', '--image', `${image}:latest`, umoci]);
      expect(await mtimes(path.join(umoci, 'rootfs', 'etc'))).toEqual(want);

      const cacheHome = path.join(base, 'cache');
      const linkCache = path.join(base, 'link-cache');
      for (const [dest, root, flags, home] of [
        [`rootfs:${base}/rootfs`, `${base}/rootfs`, [], cacheHome],
        [`bundle:${base}/bundle`, `${base}/bundle/rootfs`, [], cacheHome],
        [`bundle:${base}/again`, `${base}/again/rootfs`, [], cacheHome],
        // A --link tree shares its files with the store; the next one checks them against the
        // entries' times, which a time set to "now" would fail (then every other pull did).
        [`rootfs:${base}/link1`, `${base}/link1`, ['--link'], linkCache],
        [`rootfs:${base}/link2`, `${base}/link2`, ['--link'], linkCache],
        [`rootfs:${base}/link3`, `${base}/link3`, ['--link'], linkCache],
      ] as const) {
        const r = await smart(['pull', `oci:${image}:latest`, dest, ...flags, '--json'], { cacheHome: home });
        expect(r.code, r.stderr).toBe(0);
        expect(r.stderr, dest).not.toMatch(/damaged/);
        expect(await mtimes(path.join(root, 'etc')), dest).toEqual(want);
      }
    });
  }
});

describe('a fifo or device node where something was', () => {
  const ready = haveTools('umoci', 'tar', 'mknod', 'mkfifo') && isRoot;
  let work: string;

  beforeAll(async () => {
    work = await tempDir('smart-node-over-');
  });

  it('a layer that turns a file into a fifo and a device node, and one that turns them back: umoci\'s tree', async (ctx) => {
    if (!ready) {
      if (inCI) throw new Error('CI=true but umoci, tar and mknod (run as root) are missing');
      return ctx.skip();
    }
    const layers: Buffer[] = [];
    for (const [i, make] of [
      async (d: string) => {
        await fs.writeFile(path.join(d, 'p'), 'a file\n');
        await fs.writeFile(path.join(d, 'c'), 'a file\n');
        await fs.writeFile(path.join(d, 'q'), 'a file\n');
      },
      async (d: string) => {
        await runOk('mkfifo', [path.join(d, 'p')]);
        await runOk('mknod', [path.join(d, 'c'), 'c', '1', '3']);
        await runOk('mkfifo', [path.join(d, 'q')]);
      },
      async (d: string) => {
        await fs.writeFile(path.join(d, 'q'), 'a file again\n');
        await runOk('mkfifo', [path.join(d, 'c')]);
      },
    ].entries()) {
      const d = path.join(work, `layer${i}`, 'srv');
      await fs.mkdir(d, { recursive: true });
      await make(d);
      layers.push(execFileSync('tar', ['-C', path.dirname(d), '--sort=name', '--mtime=@1700000000', '--numeric-owner', '-cf', '-', 'srv']));
    }
    const image = path.join(work, 'image');
    await writeImageOfTars(image, layers);
    const umoci = path.join(work, 'umoci');
    await runOk('umoci', ['unpack', '--image', `${image}:latest`, umoci]);
    const want = await describeTree(path.join(umoci, 'rootfs'));
    expect(want['srv/q']?.type).toBe('file');
    expect(want['srv/p']?.type).toBe('other');
    const cacheHome = path.join(work, 'cache');
    for (const [dest, root] of [
      [`rootfs:${work}/rootfs`, `${work}/rootfs`],
      [`bundle:${work}/bundle`, `${work}/bundle/rootfs`],
      [`bundle:${work}/again`, `${work}/again/rootfs`],
    ] as const) {
      const r = await smart(['pull', `oci:${image}:latest`, dest, '--json'], { cacheHome });
      expect(r.code, r.stderr).toBe(0);
      expect(await describeTree(root), dest).toEqual(want);
    }
  });

  it('a stored layer found damaged is laid again over what of it was laid, its fifo and device node too', async (ctx) => {
    if (!ready) {
      if (inCI) throw new Error('CI=true but umoci, tar and mknod (run as root) are missing');
      return ctx.skip();
    }
    const d = path.join(work, 'damaged', 'srv');
    await fs.mkdir(d, { recursive: true });
    await runOk('mknod', [path.join(d, 'a_cdev'), 'c', '1', '3']);
    await runOk('mkfifo', [path.join(d, 'b_fifo')]);
    await fs.writeFile(path.join(d, 'z_file'), 'data\n');
    const tar = execFileSync('tar', ['-C', path.dirname(d), '--sort=name', '--mtime=@1700000000', '--numeric-owner', '-cf', '-', 'srv']);
    const image = path.join(work, 'damaged-image');
    await writeImageOfTars(image, [tar]);
    const umoci = path.join(work, 'damaged-umoci');
    await runOk('umoci', ['unpack', '--image', `${image}:latest`, umoci]);
    const want = await describeTree(path.join(umoci, 'rootfs'));
    const cacheHome = path.join(work, 'damaged-cache');
    const first = await smart(['pull', `oci:${image}:latest`, `rootfs:${work}/linked`, '--link'], { cacheHome });
    expect(first.code, first.stderr).toBe(0);
    // Written through the --link tree: the store's copy (the same inode) changes with it.
    await fs.appendFile(path.join(work, 'linked', 'srv', 'z_file'), 'tampered\n');
    const next = await smart(['pull', `oci:${image}:latest`, `rootfs:${work}/next`, '--link'], { cacheHome });
    expect(next.code, next.stderr).toBe(0);
    expect(next.stderr).toMatch(/damaged/);
    // A --link tree shares its files with the store (the repaired layer kept again): every file in a group.
    const unlinked = (t: Awaited<ReturnType<typeof describeTree>>) => Object.fromEntries(Object.entries(t).map(([p, { hardlinkGroup: _, ...e }]) => [p, e]));
    expect(unlinked(await describeTree(path.join(work, 'next')))).toEqual(unlinked(want));
  });
});
