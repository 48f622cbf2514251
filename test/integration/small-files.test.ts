/**
 * A layer of many small files in new directories (a node_modules), as GNU tar writes it in its gnu
 * and pax formats (long names as 'L' members or pax path records, pax times): laid down by the
 * addon's runs (`rootfs:`), by the runs that also write the layer store's copies and index lines
 * beside the tree's files (`bundle:`, which keeps its layers), and again from the store by batches
 * that read the stored files on the pool (the next pull, which reads the index the runs wrote).
 * Each is the tree umoci unpacks from the same image, to the file modification times.
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

/** Each regular file's modification time (describeTree leaves times out: tools differ on directories'). */
async function fileTimes(root: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (rel: string): Promise<void> => {
    for (const name of (await fs.readdir(path.join(root, rel))).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      const st = await fs.lstat(path.join(root, r), { bigint: true });
      if (st.isDirectory()) await walk(r);
      else if (st.isFile()) out[r] = String(st.mtimeNs);
    }
  };
  await walk('');
  return out;
}

describe('a layer of many small files (the addon\'s runs, batches, the layer store)', () => {
  const ready = haveTools('umoci', 'tar') && isRoot;
  let work: string;

  beforeAll(async () => {
    work = await tempDir('smart-small-files-');
    const src = path.join(work, 'src');
    // Packages whose paths pass ustar's 100 bytes, files of a few sizes, modes and owners, a
    // symlink and a hardlink among them: what breaks a run and what does not.
    for (let p = 0; p < 12; p++) {
      const pkg = path.join(src, 'app/node_modules', `${'a-package-with-a-long-name-'.repeat(2)}${p}`, 'lib');
      await fs.mkdir(pkg, { recursive: true });
      for (let f = 0; f < 40; f++) {
        const file = path.join(pkg, `${f % 7 === 0 ? 'module-with-a-longer-file-name-' : 'f'}${f}.js`);
        await fs.writeFile(file, `module.exports = ${p * 100 + f};\n`.repeat((p * f) % 50));
        await fs.chmod(file, f % 5 === 0 ? 0o755 : f % 11 === 0 ? 0o600 : 0o644);
        if (f % 13 === 0) await fs.chown(file, 1000 + p, 2000 + p);
        const t = new Date(Date.UTC(2024, 0, 1 + p, 0, f, 0));
        await fs.utimes(file, t, t);
      }
      await fs.symlink('f1.js', path.join(pkg, 'link.js'));
      await fs.link(path.join(pkg, 'f2.js'), path.join(pkg, 'hard.js'));
    }
    await fs.writeFile(path.join(src, 'app/package.json'), '{}\n');
    // Whole seconds: a pax time's nanoseconds are set to the microsecond, as Node's futimes sets them.
    for (const d of ['app/package.json', 'app/node_modules', 'app']) await fs.utimes(path.join(src, d), new Date(Date.UTC(2024, 1, 1)), new Date(Date.UTC(2024, 1, 1)));
  });

  for (const format of ['gnu', 'pax'] as const) {
    it(`${format} format: rootfs: (runs), bundle: (runs that keep the layer) and the next bundle: (from the store) are umoci's tree`, async (ctx) => {
      if (!ready) {
        if (inCI) throw new Error('CI=true but umoci and tar (run as root) are missing');
        return ctx.skip();
      }
      const tar = execFileSync('tar', ['-C', path.join(work, 'src'), `--format=${format}`, '--sort=name', '--numeric-owner', '-cf', '-', 'app'], { maxBuffer: 64 << 20 });
      const image = path.join(work, `image-${format}`);
      await writeImageOfTars(image, [tar]);
      const umoci = path.join(work, `umoci-${format}`);
      await runOk('umoci', ['unpack', '--image', `${image}:latest`, umoci]);
      const want = await describeTree(path.join(umoci, 'rootfs'));
      const wantTimes = await fileTimes(path.join(umoci, 'rootfs'));
      expect(Object.keys(want).length).toBeGreaterThan(500);

      const cacheHome = path.join(work, `cache-${format}`);
      for (const [dest, root] of [
        [`rootfs:${path.join(work, `rootfs-${format}`)}`, path.join(work, `rootfs-${format}`)],
        [`bundle:${path.join(work, `bundle-${format}`)}`, path.join(work, `bundle-${format}`, 'rootfs')],
        [`bundle:${path.join(work, `again-${format}`)}`, path.join(work, `again-${format}`, 'rootfs')],
      ] as const) {
        const r = await smart(['pull', `oci:${image}:latest`, dest, '--json'], { cacheHome });
        expect(r.code, r.stderr).toBe(0);
        expect(await describeTree(root), dest).toEqual(want);
        expect(await fileTimes(root), dest).toEqual(wantTimes);
        // Streamed the first two times; the third laid from the layer store the second kept.
        const { materialize } = JSON.parse(r.stdout.toString()).details as { materialize: string };
        if (dest.includes('again-')) expect(materialize).not.toBe('stream');
        else expect(materialize).toBe('stream');
      }
    });
  }
});
