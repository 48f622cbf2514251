/**
 * Layers with file names that are not UTF-8 (latin-1 `café.txt`, as old systems and some test
 * suites have): valid tar, kept byte for byte by tar, umoci and Docker. smart lays them into a
 * root filesystem with the same bytes (names, link targets, hardlinks, whiteouts and opaque
 * directories naming them), keeps them so in the layer store, and a warm pull from the store
 * gives the same tree. The layers are made by GNU tar from a real directory (pax and GNU formats),
 * and umoci's unpacking of the same image is the oracle.
 */
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { linkSync, mkdirSync, renameSync, symlinkSync, writeFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { writeImageOfTars } from '../harness/images.js';
import { rewriteStoredIndexes } from '../harness/layer-store.js';
import { runOk, smart } from '../harness/run.js';
import { haveTools, inCI, isRoot } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';

const latin1 = (s: string) => Buffer.from(s, 'latin1');

/** Makes `tree` under `dir`: names (latin-1) to contents; `->T` a symlink to T, `=>T` a hardlink to T, `/` a directory, `|` a fifo. */
function makeTree(dir: string, tree: [string, string][]): void {
  const at = (name: string) => Buffer.concat([Buffer.from(`${dir}/`), latin1(name)]);
  mkdirSync(dir, { recursive: true });
  for (const [name, what] of tree) {
    if (what === '/') mkdirSync(at(name), { recursive: true });
    else if (what.startsWith('->')) symlinkSync(latin1(what.slice(2)), at(name));
    else if (what.startsWith('=>')) linkSync(at(what.slice(2)), at(name));
    else if (what === '|') {
      // mkfifo's argument would be passed as UTF-8: made under an ASCII name, then renamed.
      execFileSync('mkfifo', [path.join(dir, 'fifo.tmp')]);
      renameSync(path.join(dir, 'fifo.tmp'), at(name));
    }
    else writeFileSync(at(name), what);
  }
}

/** A layer tar of `dir`, made by GNU tar in `format`, deterministic. */
async function gnuTar(dir: string, out: string, format: 'posix' | 'gnu'): Promise<Buffer> {
  await runOk('tar', [`--format=${format}`, '--sort=name', '--mtime=@1700000000', '--owner=0', '--group=0', '--numeric-owner', '-C', dir, '-cf', out, '.']);
  return fs.readFile(out);
}

/** Every entry of a tree, its path and link target as latin-1 (their exact bytes), for comparing trees. */
async function listing(root: string): Promise<string[]> {
  const out: { line: string; ino?: number }[] = [];
  const walk = async (rel: Buffer): Promise<void> => {
    const dir = Buffer.concat([Buffer.from(root), rel]);
    for (const name of (await fs.readdir(dir, { encoding: 'buffer' })).sort(Buffer.compare)) {
      const childRel = Buffer.concat([rel, Buffer.from('/'), name]);
      const full = Buffer.concat([Buffer.from(root), childRel]);
      const st = await fs.lstat(full);
      let line = `${childRel.toString('latin1')} ${(st.mode & 0o170000).toString(8)} ${(st.mode & 0o7777).toString(8)}`;
      if (st.isSymbolicLink()) line += ` -> ${(await fs.readlink(full, { encoding: 'buffer' })).toString('latin1')}`;
      if (st.isFile()) line += ` ${createHash('sha256').update(await fs.readFile(full)).digest('hex').slice(0, 12)}`;
      out.push({ line, ...(st.isFile() ? { ino: st.ino } : {}) });
      if (st.isDirectory()) await walk(childRel);
    }
  };
  await walk(Buffer.alloc(0));
  // Files hardlinked within the tree: each names the first path of its inode (links out of the tree, as --link makes, do not count).
  const first = new Map<number, string>();
  const count = new Map<number, number>();
  for (const e of out) if (e.ino !== undefined) count.set(e.ino, (count.get(e.ino) ?? 0) + 1);
  return out.map((e) => {
    if (e.ino === undefined || count.get(e.ino)! < 2) return e.line;
    if (!first.has(e.ino)) first.set(e.ino, e.line.split(' ')[0]!);
    return `${e.line} inode of ${first.get(e.ino)}`;
  });
}

describe('file names that are not UTF-8', () => {
  let work: string;
  let image: string;
  let umociTree: string[] = [];
  const ready = haveTools('umoci', 'tar') && isRoot;

  beforeAll(async () => {
    work = await tempDir('smart-names-');
    // Layer 1 in pax format (GNU tar puts such a name in a pax record with hdrcharset=BINARY when
    // it is long), layer 2 in GNU format: whiteouts of a latin-1 name, an opaque directory
    // emptying a latin-1 child, and a new file in a latin-1 directory.
    const long = `long/${'x'.repeat(110)}\xe9`;
    makeTree(path.join(work, 'l1'), [
      ['caf\xe9.txt', 'latin-1 name\n'],
      ['ok.txt', 'ok\n'],
      ['d\xe9', '/'],
      ['d\xe9/inner', 'inner\n'],
      ['lnk', '->caf\xe9.txt'],
      ['hard', '=>caf\xe9.txt'],
      ['o', '/'],
      ['o/child\xe9', 'lower\n'],
      ['gone\xe9', 'to be whited out\n'],
      ['long', '/'],
      [long, 'long name\n'],
      ...(isRoot ? ([['f\xe9', '|']] as [string, string][]) : []),
    ]);
    makeTree(path.join(work, 'l2'), [
      ['.wh.gone\xe9', ''],
      ['o', '/'],
      ['o/.wh..wh..opq', ''],
      ['o/new', 'upper\n'],
      ['d\xe9', '/'],
      ['d\xe9/inner2', 'inner2\n'],
    ]);
    const layers = [await gnuTar(path.join(work, 'l1'), path.join(work, 'l1.tar'), 'posix'), await gnuTar(path.join(work, 'l2'), path.join(work, 'l2.tar'), 'gnu')];
    image = path.join(work, 'image');
    await writeImageOfTars(image, layers);
    if (ready) {
      const bundle = path.join(work, 'umoci');
      await runOk('umoci', ['unpack', '--image', `${image}:latest`, bundle]);
      umociTree = await listing(path.join(bundle, 'rootfs'));
    }
  });

  it('umoci unpacks the layers with the names intact (the oracle is what it should be)', (ctx) => {
    if (!ready) {
      if (inCI) throw new Error('CI=true but umoci and tar (run as root) are missing');
      return ctx.skip();
    }
    const names = umociTree.map((l) => l.split(' ')[0]);
    expect(names).toEqual(expect.arrayContaining(['/caf\xe9.txt', '/d\xe9/inner', '/d\xe9/inner2', '/o/new', `/long/${'x'.repeat(110)}\xe9`, '/f\xe9']));
    expect(names).not.toContain('/gone\xe9');
    expect(names).not.toContain('/o/child\xe9');
    expect(umociTree).toContain('/lnk 120000 777 -> caf\xe9.txt');
  });

  it('rootfs: and bundle:, cold and then warm from the layer store (copied or --link), give the tree umoci gives', async (ctx) => {
    if (!ready) {
      if (inCI) throw new Error('CI=true but umoci and tar (run as root) are missing');
      return ctx.skip();
    }
    const cacheHome = path.join(work, 'cache');
    const pulls: [string, string[]][] = [
      ['rootfs', ['--keep-layers']], // cold: straight into the tree, layers kept
      ['bundle', []], // warm: from the store
      ['rootfs', ['--link']], // warm: hardlinked from the store
    ];
    for (const [i, [kind, flags]] of pulls.entries()) {
      const dest = path.join(work, `out-${i}`);
      const r = await smart(['pull', ...flags, `oci:${image}`, `${kind}:${dest}`], { cacheHome });
      expect(r.code, r.stderr).toBe(0);
      expect(r.stderr).not.toMatch(/warning/i);
      expect(await listing(kind === 'bundle' ? path.join(dest, 'rootfs') : dest), `${kind} ${flags.join(' ')}`).toEqual(umociTree);
    }
  });

  it('a layer an older smart kept with U+FFFD in place of the bytes is fetched again, not laid down with the wrong names', async (ctx) => {
    if (!ready) {
      if (inCI) throw new Error('CI=true but umoci and tar (run as root) are missing');
      return ctx.skip();
    }
    const cacheHome = path.join(work, 'cache-old');
    const first = await smart(['pull', '--keep-layers', `oci:${image}`, `rootfs:${path.join(work, 'old-0')}`], { cacheHome });
    expect(first.code, first.stderr).toBe(0);
    // What versions before names kept their bytes wrote: U+FFFD for each byte, and no mark.
    const mangled = await rewriteStoredIndexes(cacheHome, (text) => text.replace(/\\udc[89a-f][0-9a-f]/g, '\uFFFD').replace(/,"fffdInName":true/g, ''));
    expect(mangled).toBe(2);
    const dest = path.join(work, 'old-1');
    const r = await smart(['pull', `oci:${image}`, `rootfs:${dest}`], { cacheHome });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/in the layer store is damaged \(.*U\+FFFD.*\): removed from the store, and fetched/);
    expect(await listing(dest)).toEqual(umociTree);
  });

  it('into a mount point (built inside it, moved up): the names at its top intact, and a pull over them replaces them', async (ctx) => {
    if (!ready) {
      if (inCI) throw new Error('CI=true but umoci and tar (run as root) are missing');
      return ctx.skip();
    }
    const dest = path.join(work, 'mounted');
    await fs.mkdir(dest);
    await runOk('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', dest]);
    try {
      for (const round of [1, 2]) {
        const r = await smart(['pull', `oci:${image}`, `rootfs:${dest}`], { cacheHome: path.join(work, 'cache-mounted') });
        expect(r.code, `round ${round}: ${r.stderr}`).toBe(0);
        expect(await listing(dest), `round ${round}`).toEqual(umociTree);
      }
    } finally {
      await runOk('umount', [dest]);
    }
  });
});
