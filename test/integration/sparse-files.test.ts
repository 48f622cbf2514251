/**
 * Layers holding sparse files, made by GNU tar `--sparse` from a real tree (a root filesystem
 * tarred so, a `lastlog` of 20 MiB holding a few bytes): smart lays each down as the file it is,
 * with its name, size and content, and with its holes left holes, in all four of GNU tar's
 * layouts, cold and warm from the layer store (copied, or --link). umoci, which reads the three
 * pax layouts, is the oracle for those; GNU tar's own extraction for the old GNU one (which umoci
 * refuses). An image archive tar --sparse wrote (its uncompressed layer blob has holes) is read
 * from its file as the archive it is, and refused by name when streamed.
 */
import { createHash } from 'node:crypto';
import { closeSync, ftruncateSync, mkdirSync, openSync, writeSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { writeImageOfTars, writeLayout } from '../harness/images.js';
import { rewriteStoredIndexes } from '../harness/layer-store.js';
import { runOk, smart } from '../harness/run.js';
import { haveTools, inCI } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';

const MiB = 1024 * 1024;

/** Makes sparse files under `dir`: name → [offset, text][] written, then the size. */
function makeSparse(dir: string, files: Record<string, { data: [number, string][]; size: number }>): void {
  for (const [name, { data, size }] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(dir, name)), { recursive: true });
    const fd = openSync(path.join(dir, name), 'w');
    for (const [at, text] of data) writeSync(fd, Buffer.from(text), 0, text.length, at);
    ftruncateSync(fd, size);
    closeSync(fd);
  }
}

async function gnuTar(dir: string, out: string, args: string[]): Promise<Buffer> {
  await runOk('tar', [...args, '--sparse', '--sort=name', '--mtime=@1700000000', '--owner=0', '--group=0', '--numeric-owner', '-C', dir, '-cf', out, '.']);
  return fs.readFile(out);
}

/** Every regular file of a tree: its path, size and content digest. */
async function listing(root: string): Promise<string[]> {
  const out: string[] = [];
  for (const rel of (await fs.readdir(root, { recursive: true })).sort()) {
    const st = await fs.lstat(path.join(root, rel));
    if (st.isFile()) out.push(`${rel} ${st.size} ${createHash('sha256').update(await fs.readFile(path.join(root, rel))).digest('hex').slice(0, 12)}`);
  }
  return out;
}

/** Bytes the filesystem holds for `file` (its holes hold none). */
async function allocated(file: string): Promise<number> {
  return (await fs.stat(file)).blocks * 512;
}

describe('sparse files in layers', () => {
  let work: string;
  let paxImage: string;
  let gnuImage: string;
  let umociTree: string[] = [];
  let tarTree: string[] = [];
  const ready = haveTools('umoci', 'tar', 'skopeo', 'fallocate');

  beforeAll(async () => {
    work = await tempDir('smart-sparse-');
    if (!ready) return;
    const trees = ['l1', 'l2', 'l3', 'l4'].map((t) => path.join(work, t));
    makeSparse(trees[0]!, { 'var/log/lastlog': { data: [[10 * MiB, 'end']], size: 20 * MiB }, mixed: { data: [[0, 'A'.repeat(5000)], [MiB, 'B'.repeat(7000)]], size: MiB + 7000 } });
    makeSparse(trees[1]!, { 'zero/holes': { data: [[3 * MiB, 'pax 0.0']], size: 4 * MiB } });
    makeSparse(trees[2]!, { 'one/holes': { data: [[2 * MiB, 'pax 0.1']], size: 5 * MiB } });
    // More segments than an old GNU header holds (4): the map goes on in extension blocks.
    makeSparse(trees[3]!, {
      'gnu/many': { data: Array.from({ length: 30 }, (_, i) => [i * 200_000, `segment ${i}`] as [number, string]), size: 8 * MiB },
      'gnu/lastlog': { data: [[6 * MiB, 'gnu']], size: 12 * MiB },
    });
    const tar = (i: number, args: string[]) => gnuTar(trees[i]!, path.join(work, `l${i}.tar`), args);
    paxImage = path.join(work, 'pax-image');
    await writeImageOfTars(paxImage, [await tar(0, ['--format=posix', '--sparse-version=1.0']), await tar(1, ['--format=posix', '--sparse-version=0.0']), await tar(2, ['--format=posix', '--sparse-version=0.1'])]);
    const gnuLayer = await tar(3, ['--format=gnu']);
    gnuImage = path.join(work, 'gnu-image');
    await writeImageOfTars(gnuImage, [gnuLayer]);
    await runOk('umoci', ['raw', 'unpack', '--rootless', '--image', `${paxImage}:latest`, path.join(work, 'umoci')]);
    umociTree = await listing(path.join(work, 'umoci'));
    mkdirSync(path.join(work, 'untarred'));
    await runOk('tar', ['-xf', path.join(work, 'l3.tar'), '-C', path.join(work, 'untarred')]);
    tarTree = await listing(path.join(work, 'untarred'));
  });

  const skipUnlessReady = (ctx: { skip: () => void }) => {
    if (ready) return false;
    if (inCI) throw new Error('CI=true but umoci, tar, skopeo or fallocate is missing');
    ctx.skip();
    return true;
  };

  it('the oracles read the files whole (the layers are sparse ones)', async (ctx) => {
    if (skipUnlessReady(ctx)) return;
    expect(umociTree.map((l) => l.split(' ').slice(0, 2).join(' '))).toEqual(['mixed 1055576', 'one/holes 5242880', 'var/log/lastlog 20971520', 'zero/holes 4194304']);
    expect(tarTree.map((l) => l.split(' ').slice(0, 2).join(' '))).toEqual(['gnu/lastlog 12582912', 'gnu/many 8388608']);
    for (const i of [0, 1, 2, 3]) expect((await fs.readFile(path.join(work, `l${i}.tar`))).length).toBeLessThan(MiB);
  });

  it('rootfs: and bundle:, cold and then warm from the layer store (copied or --link), give umoci\'s files with their holes kept', async (ctx) => {
    if (skipUnlessReady(ctx)) return;
    const cacheHome = path.join(work, 'cache');
    const pulls: [string, string[]][] = [
      ['rootfs', ['--keep-layers']], // cold: straight into the tree, layers kept
      ['bundle', []], // warm: copied from the store
      ['rootfs', ['--link']], // warm: hardlinked from the store
      ['rootfs', ['--no-keep-layers']],
    ];
    for (const [i, [kind, flags]] of pulls.entries()) {
      const dest = path.join(work, `out-${i}`);
      const r = await smart(['pull', ...flags, `oci:${paxImage}`, `${kind}:${dest}`], { cacheHome });
      expect(r.code, r.stderr).toBe(0);
      expect(r.stderr).not.toMatch(/warning/i);
      const root = kind === 'bundle' ? path.join(dest, 'rootfs') : dest;
      expect(await listing(root), `${kind} ${flags.join(' ')}`).toEqual(umociTree);
      expect(await allocated(path.join(root, 'var/log/lastlog')), `${kind} ${flags.join(' ')}`).toBeLessThan(MiB);
      expect(await allocated(path.join(root, 'one/holes'))).toBeLessThan(MiB);
    }
    // The store keeps them sparse too.
    const store = path.join(cacheHome, 'smartlayer', 'layer-store');
    const { stdout } = await runOk('du', ['-s', '--block-size=1', store]);
    expect(Number(stdout.toString().split('\t')[0])).toBeLessThan(2 * MiB);
  });

  it('old GNU sparse entries (typeflag S, extension blocks) give what GNU tar extracts', async (ctx) => {
    if (skipUnlessReady(ctx)) return;
    const cacheHome = path.join(work, 'cache-gnu');
    for (const [i, flags] of [['--keep-layers'], ['--link']].entries()) {
      const dest = path.join(work, `gnu-${i}`);
      const r = await smart(['pull', ...flags, `oci:${gnuImage}`, `rootfs:${dest}`], { cacheHome });
      expect(r.code, r.stderr).toBe(0);
      expect(await listing(dest)).toEqual(tarTree);
      expect(await allocated(path.join(dest, 'gnu/lastlog'))).toBeLessThan(MiB);
    }
  });

  it('an oci-archive or docker-archive that tar --sparse wrote (an uncompressed layer with holes) is read as the archive it is', async (ctx) => {
    if (skipUnlessReady(ctx)) return;
    // An image whose one layer is uncompressed: its blob is mostly the zeros of the 20 MiB lastlog.
    await runOk('tar', ['--format=posix', '--sort=name', '--mtime=@1700000000', '--owner=0', '--group=0', '--numeric-owner', '-C', path.join(work, 'l1'), '-cf', path.join(work, 'plain-l1.tar'), '.']);
    const layer = await fs.readFile(path.join(work, 'plain-l1.tar'));
    const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
    const layout = path.join(work, 'raw-layout');
    const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: [sha(layer)] } }));
    await writeLayout(layout, [layer], config, 'application/vnd.oci.image.layer.v1.tar');
    // The blob's zeros made holes (as a tool that writes blobs sparse leaves them), then archived with --sparse.
    for (const blob of await fs.readdir(path.join(layout, 'blobs', 'sha256'))) await runOk('fallocate', ['--dig-holes', path.join(layout, 'blobs', 'sha256', blob)]);
    const expectedTree = await listing(path.join(work, 'l1'));
    const plain = await smart(['push', '--json', `oci:${layout}:latest`, `file:${path.join(work, 'raw-store')}#raw/image:plain`]);
    expect(plain.code, plain.stderr).toBe(0);
    const digest = (JSON.parse(plain.stdout.toString()) as { manifestDigest: string }).manifestDigest;
    for (const format of ['posix', 'gnu']) {
      const archive = path.join(work, `raw-${format}.tar`);
      await runOk('tar', [`--format=${format}`, '--sparse', '-C', layout, '-cf', archive, '.']);
      expect((await fs.stat(archive)).size).toBeLessThan(MiB);
      const pushed = await smart(['push', '--json', `oci-archive:${archive}:latest`, `file:${path.join(work, 'raw-store')}#raw/image:${format}`]);
      expect(pushed.code, pushed.stderr).toBe(0);
      expect((JSON.parse(pushed.stdout.toString()) as { manifestDigest: string }).manifestDigest).toBe(digest);
      const dest = path.join(work, `raw-${format}-tree`);
      const pulled = await smart(['pull', `oci-archive:${archive}:latest`, `rootfs:${dest}`]);
      expect(pulled.code, pulled.stderr).toBe(0);
      expect(await listing(dest)).toEqual(expectedTree);
    }
    // skopeo (Go's archive/tar) reads the pax one too: the archive is a good one.
    await runOk('skopeo', ['copy', '-q', `oci-archive:${path.join(work, 'raw-posix.tar')}:latest`, `dir:${path.join(work, 'raw-skopeo')}`]);
    // A docker-archive so: read from its file; on stdin, where it is streamed, refused by name.
    const saved = path.join(work, 'raw-docker.tar');
    expect((await smart(['push', `oci:${layout}:latest`, `docker-archive:${saved}:raw/image:1`])).code).toBe(0);
    const unpacked = path.join(work, 'raw-docker');
    mkdirSync(unpacked);
    await runOk('tar', ['-xf', saved, '-C', unpacked]);
    for (const f of await fs.readdir(unpacked, { recursive: true })) {
      if ((await fs.stat(path.join(unpacked, f))).size > MiB) await runOk('fallocate', ['--dig-holes', path.join(unpacked, f)]);
    }
    const sparseSaved = path.join(work, 'raw-docker-sparse.tar');
    await runOk('tar', ['--format=posix', '--sparse', '-C', unpacked, '-cf', sparseSaved, '.']);
    const fromFile = path.join(work, 'raw-docker-tree');
    const r = await smart(['pull', `docker-archive:${sparseSaved}`, `rootfs:${fromFile}`]);
    expect(r.code, r.stderr).toBe(0);
    expect(await listing(fromFile)).toEqual(expectedTree);
    const streamed = await smart(['push', 'docker-archive:-', `file:${path.join(work, 'raw-store')}#raw/image:stdin`], { input: await fs.readFile(sparseSaved) });
    expect(streamed.code).not.toBe(0);
    expect(streamed.stderr).toMatch(/^smart: error \[UNSUPPORTED\]: docker-archive:-: member "[^"]+\.tar" is a sparse file \(GNU tar --sparse\), which a streamed archive cannot hold/m);
  });

  it('a layer an older smart kept without expanding its sparse files is fetched again, not laid down as it was kept', async (ctx) => {
    if (skipUnlessReady(ctx)) return;
    const cacheHome = path.join(work, 'cache-old');
    const first = await smart(['pull', '--keep-layers', `oci:${paxImage}`, `rootfs:${path.join(work, 'old-0')}`], { cacheHome });
    expect(first.code, first.stderr).toBe(0);
    // What versions before this wrote: the header as a plain reading gives it, with no map.
    const mangled = await rewriteStoredIndexes(cacheHome, (text) => text.replace(/,"sparseMap":\[[0-9,]*\]/g, ''));
    expect(mangled).toBe(3);
    const dest = path.join(work, 'old-1');
    const r = await smart(['pull', `oci:${paxImage}`, `rootfs:${dest}`], { cacheHome });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/in the layer store is damaged \(.*did not expand sparse files.*\): removed from the store, and fetched/);
    expect(await listing(dest)).toEqual(umociTree);
  });
});
