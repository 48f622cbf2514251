/**
 * A destination the machine refuses: a full disk (a CI runner's, more often than any other fault)
 * and a read-only one. Each command fails with one STORAGE line that says what could not be
 * written and what to do about it, exits 1, and leaves nothing on that disk. The same for stdout
 * redirected to a full disk (`> image.tar`), which must not end as a success or a stack trace.
 * A cache directory on such a disk (a container's read-only home) is only a cache: pulls go on.
 * The filesystems are tmpfs mounts of a fixed size, made and unmounted by the test (root, or
 * `sudo -n`).
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixtures } from '../harness/fixtures.js';
import { startRegistry } from '../harness/registry.js';
import { layerTar, writeImageOfTars } from '../harness/images.js';
import { run, runOk, smart, smartBin, type RunResult } from '../harness/run.js';
import { inCI, isRoot } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';
import { listAll } from '../harness/tree.js';

const sudo = (cmd: string, args: string[]) => (isRoot ? run(cmd, args) : run('sudo', ['-n', cmd, ...args]));

/** Whether this test can mount a tmpfs; in CI it must. */
async function canMount(dir: string): Promise<boolean> {
  const probe = path.join(dir, 'probe');
  await fs.mkdir(probe);
  const r = await sudo('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', probe]);
  if (r.code !== 0) {
    if (inCI) throw new Error(`CI=true but a tmpfs cannot be mounted (root or sudo -n): ${r.stderr}`);
    return false;
  }
  await sudo('umount', [probe]);
  return true;
}

/** The one error line of a failed command, checked: exit 1, code STORAGE, no stack trace. */
function storageError(r: RunResult, message: RegExp): string {
  expect(r.code, r.stderr).toBe(1);
  const lines = r.stderr.split('\n').filter((l) => l.trim() && !/^(layer [0-9a-f]{12}: |warning: |pulled |pushed |read )/.test(l));
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(/^smart: error \[STORAGE\]: /);
  expect(lines[0]).toMatch(message);
  return lines[0]!;
}

describe('a full or read-only destination', () => {
  let work: string;
  let full: string;
  let readOnly: string;
  let image: string;
  let mounted = false;

  beforeAll(async () => {
    work = await tempDir('smart-full-');
    if (!(await canMount(work))) return;
    // One layer of ~3 MB of hex text, ~1.6 MB compressed: more than the full disk's 1 MiB.
    let block = Buffer.from('smartlayer');
    const parts: string[] = [];
    for (let i = 0; i < 48_000; i++) parts.push((block = createHash('sha256').update(block).digest()).toString('hex'));
    image = path.join(work, 'image');
    await writeImageOfTars(image, [await layerTar({ 'data/blob.txt': parts.join('') })]);
    full = path.join(work, 'full');
    readOnly = path.join(work, 'ro');
    await fs.mkdir(full);
    await fs.mkdir(readOnly);
    await runOk(isRoot ? 'mount' : 'sudo', [...(isRoot ? [] : ['-n', 'mount']), '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', full]);
    mounted = true;
    await runOk(isRoot ? 'mount' : 'sudo', [...(isRoot ? [] : ['-n', 'mount']), '-t', 'tmpfs', '-o', 'size=64k,ro', 'tmpfs', readOnly]);
  }, 60_000);

  afterAll(async () => {
    if (!mounted) return;
    await sudo('umount', [full]);
    await sudo('umount', [readOnly]);
  });

  const cacheHome = () => path.join(work, 'cache');

  /**
   * Pushes the image to a registry of its own as `full/REPO:1`, pulls it to `dest` with the cache
   * on the full disk, and hands the pull to `check`; the registry stopped and that cache removed after.
   */
  async function pullFromRegistry(repo: string, dest: string, check: (r: RunResult) => Promise<void>): Promise<void> {
    const registry = await startRegistry({ configDir: work });
    try {
      const pushed = await smart(['push', `oci:${image}`, `docker://${registry.host}/full/${repo}:1`], { cacheHome: cacheHome() });
      expect(pushed.code, pushed.stderr).toBe(0);
      const r = await smart(['pull', '--json', `docker://${registry.host}/full/${repo}:1`, dest], { cacheHome: path.join(full, 'cache') });
      expect(r.code, r.stderr).toBe(0);
      await check(r);
    } finally {
      await registry.stop();
      await fs.rm(path.join(full, 'cache'), { recursive: true, force: true });
    }
  }

  it('a full disk: each destination fails in one line, saying so, and leaves no file on it', async (ctx) => {
    if (!mounted) return ctx.skip();
    const cases: [string, string][] = [
      ['pull', `oci:${full}/layout`],
      ['pull', `docker-archive:${full}/image.tar`],
      ['pull', `oci-archive:${full}/image-oci.tar`],
      ['pull', `rootfs:${full}/rootfs`],
      ['pull', `bundle:${full}/bundle`],
      ['push', `file:${full}/store#app:1`],
    ];
    for (const [mode, dest] of cases) {
      const r = await smart([mode, `oci:${image}`, dest], { cacheHome: cacheHome() });
      storageError(r, /no space left on device.* \(free space on that filesystem, or write somewhere else\)$/);
      // Nothing stays, but in the store: blobs stored whole before the disk filled (content-addressed,
      // kept as the registry keeps them), and the directories of its layout. No tag, no upload.
      const left: string[] = [];
      for (const p of await listAll(full)) if (!(await fs.lstat(path.join(full, p))).isDirectory()) left.push(p);
      const whole = /^store\/docker\/registry\/v2\/(blobs\/sha256\/[0-9a-f]{2}\/[0-9a-f]{64}\/data|repositories\/app\/_layers\/sha256\/[0-9a-f]{64}\/link)$/;
      expect(left.filter((p) => !whole.test(p)), `${dest}: ${left.join(', ')}`).toEqual([]);
      await fs.rm(path.join(full, 'store'), { recursive: true, force: true });
      expect(await fs.readdir(full), dest).toEqual([]);
    }
    // Streamed from stdin: the write that failed is the store's, not a fault of the archive read.
    const archive = path.join(work, 'image.tar');
    expect((await smart(['pull', `oci:${image}`, `docker-archive:${archive}`], { cacheHome: cacheHome() })).code).toBe(0);
    const r = await run('sh', ['-c', `"${process.execPath}" "${smartBin}" push docker-archive:- file:${full}/store#app:1 < ${archive}`], { env: { ...process.env, XDG_CACHE_HOME: cacheHome() } });
    storageError(r, new RegExp(`file:${full}/store: cannot write /docker/registry/v2/.*: ENOSPC`));
    for (const p of await listAll(full)) expect(p).not.toMatch(/_uploads\/.*\/|_manifests\/tags\//);
    await fs.rm(path.join(full, 'store'), { recursive: true, force: true });

    // Full before the run begins: a layout that cannot write even its oci-layout file leaves no
    // directory it made (a directory needs no data block on tmpfs, so it could be made).
    const filler = path.join(full, 'filler');
    await run('sh', ['-c', `cat /dev/zero > ${filler}`]);
    try {
      const layout = await smart(['pull', `oci:${image}`, `oci:${full}/new/layout`], { cacheHome: cacheHome() });
      storageError(layout, new RegExp(`oci:${full}/new/layout: cannot write /oci-layout: ENOSPC`));
      expect(await fs.readdir(full)).toEqual(['filler']);
    } finally {
      await fs.rm(filler);
    }
  });

  it('a full layer store: a bundle pull keeps what fits, says so once, and writes the whole tree', async (ctx) => {
    if (!mounted) return ctx.skip();
    const bundle = path.join(work, 'bundle');
    const r = await smart(['pull', '--json', `oci:${image}`, `bundle:${bundle}`], { cacheHome: path.join(full, 'cache') });
    expect(r.code, r.stderr).toBe(0);
    const warnings = r.stderr.split('\n').filter((l) => l.startsWith('warning: '));
    expect(warnings).toEqual([
      `warning: bundle:${bundle}: the layer store ${full}/cache/smartlayer/layer-store cannot keep layers (ENOSPC: no space left on device: free space on that filesystem, or write somewhere else); the layers this pull fetches are not kept for the next pulls`,
    ]);
    const details = (JSON.parse(r.stdout.toString()) as { details: { notKept?: unknown; kept?: unknown } }).details;
    expect(details.notKept).toEqual({ layers: 1, why: 'ENOSPC: no space left on device' });
    expect(details.kept).toBeUndefined();
    // The tree is whole: the layer's one file, every byte.
    const data = await fs.readFile(path.join(bundle, 'rootfs', 'data', 'blob.txt'), 'utf8');
    expect(data).toHaveLength(48_000 * 64);
    expect(data.slice(0, 64)).toBe(createHash('sha256').update('smartlayer').digest('hex'));
    // Nothing half-kept stays in the store: no unpacking layer, no lock.
    const store = path.join(full, 'cache', 'smartlayer', 'layer-store');
    for (const sub of ['tmp', 'locks', 'layers']) expect(await fs.readdir(path.join(store, sub)).catch(() => []), sub).toEqual([]);
    await fs.rm(path.join(full, 'cache'), { recursive: true, force: true });
    await fs.rm(bundle, { recursive: true, force: true });
  });

  it("a full layer store: a bundle pull of many small files (the addon's runs keep them) stops keeping, says so once, and writes the whole tree", async (ctx) => {
    if (!mounted) return ctx.skip();
    // 600 files of 2 KB: a page each, more than the full disk's 1 MiB holds beside the tree's own.
    const files: Record<string, string> = {};
    for (let i = 0; i < 600; i++) files[`small/f${String(i).padStart(3, '0')}`] = `${i}`.padEnd(2048, '.');
    const smallImage = path.join(work, 'small-image');
    await writeImageOfTars(smallImage, [await layerTar(files)]);
    const bundle = path.join(work, 'small-bundle');
    try {
      const r = await smart(['pull', '--json', `oci:${smallImage}`, `bundle:${bundle}`], { cacheHome: path.join(full, 'cache') });
      expect(r.code, r.stderr).toBe(0);
      expect(r.stderr.split('\n').filter((l) => l.startsWith('warning: '))).toEqual([
        `warning: bundle:${bundle}: the layer store ${full}/cache/smartlayer/layer-store cannot keep layers (ENOSPC: no space left on device: free space on that filesystem, or write somewhere else); the layers this pull fetches are not kept for the next pulls`,
      ]);
      expect((JSON.parse(r.stdout.toString()) as { details: { notKept?: unknown } }).details.notKept).toEqual({ layers: 1, why: 'ENOSPC: no space left on device' });
      // Every file whole, the ones made after the store filled too.
      const names = (await fs.readdir(path.join(bundle, 'rootfs', 'small'))).sort();
      expect(names).toEqual(Object.keys(files).map((f) => f.slice('small/'.length)));
      for (const name of [names[0]!, names[299]!, names[599]!]) expect(await fs.readFile(path.join(bundle, 'rootfs', 'small', name), 'utf8')).toBe(files[`small/${name}`]);
      const store = path.join(full, 'cache', 'smartlayer', 'layer-store');
      for (const sub of ['tmp', 'locks', 'layers']) expect(await fs.readdir(path.join(store, sub)).catch(() => []), sub).toEqual([]);
    } finally {
      await fs.rm(path.join(full, 'cache'), { recursive: true, force: true });
      await fs.rm(bundle, { recursive: true, force: true });
      await fs.rm(smallImage, { recursive: true, force: true });
    }
  });

  it('a full layer store: a rootfs pull from a registry keeps no blob half, says so once, and writes the whole tree', async (ctx) => {
    if (!mounted) return ctx.skip();
    const dest = path.join(work, 'rootfs-from-registry');
    await pullFromRegistry('app', `rootfs:${dest}`, async (r) => {
      // The layer's blob (~1.6 MB) does not fit in the 1 MiB the store has.
      expect(r.stderr.split('\n').filter((l) => l.startsWith('warning: '))).toEqual([
        `warning: rootfs:${dest}: the layer store ${full}/cache/smartlayer/layer-store cannot keep layers (ENOSPC: no space left on device: free space on that filesystem, or write somewhere else); the layers this pull fetches are not kept for the next pulls`,
      ]);
      const details = (JSON.parse(r.stdout.toString()) as { details: { notKept?: unknown; blobs?: unknown } }).details;
      expect(details.notKept).toEqual({ layers: 1, why: 'ENOSPC: no space left on device' });
      expect(details.blobs).toBeUndefined();
      expect(await fs.readFile(path.join(dest, 'data', 'blob.txt'), 'utf8')).toHaveLength(48_000 * 64);
      // Nothing half-kept: no blob, no temporary file.
      const store = path.join(full, 'cache', 'smartlayer', 'layer-store');
      for (const sub of ['tmp', 'blobs/sha256']) expect(await fs.readdir(path.join(store, sub)).catch(() => []), sub).toEqual([]);
    });
  });

  it('a full layer store on another filesystem than the layout a pull writes: the copy it keeps is never half, said once, and the layout is whole', async (ctx) => {
    if (!mounted) return ctx.skip();
    const dest = path.join(work, 'layout-from-registry');
    await pullFromRegistry('layout', `oci:${dest}:x`, async (r) => {
      const store = path.join(full, 'cache', 'smartlayer', 'layer-store');
      // The layer's blob (~1.6 MB) is linked nowhere (another filesystem), and its copy does not fit in the 1 MiB.
      expect(r.stderr.split('\n').filter((l) => l.startsWith('warning: '))).toEqual([
        `warning: the layer store ${store} cannot keep blobs (ENOSPC: no space left on device: free space on that filesystem, or write somewhere else); the layers this pull fetches are not kept for the next pulls`,
      ]);
      for (const sub of ['tmp', 'blobs/sha256']) expect(await fs.readdir(path.join(store, sub)).catch(() => []), sub).toEqual([]);
      expect((await runOk('skopeo', ['inspect', '--raw', `oci:${dest}:x`])).stdout.toString()).toContain('"layers"');
      await runOk('umoci', ['unpack', '--image', `${dest}:x`, path.join(work, 'layout-unpacked')]);
      expect(await fs.readFile(path.join(work, 'layout-unpacked', 'rootfs', 'data', 'blob.txt'), 'utf8')).toHaveLength(48_000 * 64);
    });
  });

  it('a read-only cache directory (a container whose home is read-only): rootfs: and bundle: pulls write the whole tree, each warning says the real reason', async (ctx) => {
    if (!mounted) return ctx.skip();
    for (const kind of ['rootfs', 'bundle']) {
      const dest = path.join(work, `ro-cache-${kind}`);
      const r = await smart(['pull', `oci:${image}`, `${kind}:${dest}`], { cacheHome: readOnly });
      expect(r.code, r.stderr).toBe(0);
      // A bundle keeps its layers by default: it cannot here, and says so; a rootfs on tmpfs keeps none.
      const warnings = r.stderr.split('\n').filter((l) => l.startsWith('warning: '));
      expect(warnings).toEqual(
        kind === 'bundle'
          ? [`warning: bundle:${dest}: the layer store ${readOnly}/smartlayer/layer-store cannot keep layers (EROFS: read-only file system: that filesystem is mounted read-only: write somewhere else); the layers this pull fetches are not kept for the next pulls`]
          : [],
      );
      const data = await fs.readFile(path.join(dest, ...(kind === 'bundle' ? ['rootfs'] : []), 'data', 'blob.txt'), 'utf8');
      expect(data).toHaveLength(48_000 * 64);
      await fs.rm(dest, { recursive: true, force: true });
    }
    // A run that writes the metadata cache (a file: source) warns with the real reason, not Node's ENOENT.
    const store = path.join(work, 'ro-cache-store');
    expect((await smart(['push', `oci:${image}`, `file:${store}#app:1`], { cacheHome: cacheHome() })).code).toBe(0);
    const r = await smart(['pull', `file:${store}#app:1`, `oci:${path.join(work, 'ro-cache-oci')}`], { cacheHome: readOnly });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr.split('\n').filter((l) => l.startsWith('warning: '))).toEqual([
      `warning: metadata cache unavailable, going on without it: EROFS: read-only file system, mkdir '${readOnly}/smartlayer'`,
    ]);
  });

  it('stdout redirected to a full disk: the image stream fails with a STORAGE error, not a success or a stack', async (ctx) => {
    if (!mounted) return ctx.skip();
    const env = { ...process.env, XDG_CACHE_HOME: cacheHome() };
    const archive = await run('sh', ['-c', `"${process.execPath}" "${smartBin}" pull oci:${image} docker-archive:- > ${full}/out.tar`], { env });
    storageError(archive, /cannot write to stdout: ENOSPC: no space left on device/);
    await fs.rm(path.join(full, 'out.tar'));
    // /dev/full: every write fails with ENOSPC, the short summaries too.
    const fx = fixtures();
    for (const args of [['version'], ['pull', '--json', `oci:${fx.paths.ociBasic}:latest`, `oci:${work}/json-layout`], ['pull', `oci:${fx.paths.ociBasic}:latest`, 'docker-archive:-']]) {
      const r = await run('sh', ['-c', `"${process.execPath}" "${smartBin}" ${args.join(' ')} > /dev/full`], { env });
      storageError(r, /^smart: error \[STORAGE\]: cannot write to stdout: ENOSPC: no space left on device, write \(free space on that filesystem, or write somewhere else\)$/);
    }
  });

  it('$TMPDIR filling up under an archive written to a pipe: docker-archive reads the layer twice instead; oci-archive names $TMPDIR', async (ctx) => {
    if (!mounted) return ctx.skip();
    const env = { ...process.env, XDG_CACHE_HOME: cacheHome(), TMPDIR: full };
    const whole = await smart(['pull', `oci:${image}`, `docker-archive:${work}/whole.tar`], { cacheHome: cacheHome() });
    expect(whole.code, whole.stderr).toBe(0);
    // The layer (3 MB) is spooled for its size before its tar header; $TMPDIR holds 1 MiB.
    const piped = await run('bash', ['-c', `set -o pipefail; "${process.execPath}" "${smartBin}" pull --progress plain oci:${image} docker-archive:- | cat > ${work}/piped.tar`], { env });
    expect(piped.code, piped.stderr).toBe(0);
    expect(piped.stderr.split('\n').filter((l) => l.startsWith('warning: '))).toEqual([
      `warning: ${full} filled up (ENOSPC) while a layer was spooled for its size: it and the layers after it are read twice instead (set TMPDIR to a directory with room for the largest layer)`,
    ]);
    // Compared as digests: vitest's deep equality walks a 3 MB buffer byte by byte for seconds.
    const sha = async (file: string) => createHash('sha256').update(await fs.readFile(path.join(work, file))).digest('hex');
    expect(await sha('piped.tar')).toBe(await sha('whole.tar'));
    // oci-archive on a pipe checks each blob whole before it goes out: no second read, but the place is named.
    const oci = await run('sh', ['-c', `"${process.execPath}" "${smartBin}" pull -q oci:${image} oci-archive:- > /dev/null`], { env });
    const line = storageError(oci, new RegExp(`cannot spool it in ${full} while the blob before it goes into the archive: ENOSPC`));
    expect(line).toMatch(/\(free space there, or set TMPDIR to a directory with room for the largest layer\)$/);
    expect(await fs.readdir(full)).toEqual([]);
  });

  it('a read-only disk: each destination fails in one line naming it, with the reason the system gave', async (ctx) => {
    if (!mounted) return ctx.skip();
    const cases: [string, string, RegExp][] = [
      ['pull', `oci:${readOnly}/layout`, new RegExp(`cannot make the directory ${readOnly}/layout: EROFS`)],
      ['pull', `oci:${readOnly}`, new RegExp(`oci:${readOnly}: cannot write /oci-layout: EROFS`)],
      ['pull', `docker-archive:${readOnly}/image.tar`, new RegExp(`cannot write docker-archive:${readOnly}/image.tar: EROFS`)],
      ['pull', `docker-archive:${readOnly}/new/image.tar`, new RegExp(`cannot make the directory ${readOnly}/new: EROFS`)],
      ['pull', `oci-archive:${readOnly}/image.tar`, new RegExp(`cannot write oci-archive:${readOnly}/image.tar: EROFS`)],
      ['pull', `rootfs:${readOnly}/rootfs`, new RegExp(`cannot write rootfs:${readOnly}/rootfs: EROFS`)],
      ['push', `file:${readOnly}/store#app:1`, new RegExp(`cannot make the directory ${readOnly}/store: EROFS`)],
    ];
    for (const [mode, dest, message] of cases) {
      const r = await smart([mode, `oci:${image}`, dest], { cacheHome: cacheHome() });
      storageError(r, message);
      expect(r.stderr).toMatch(/\(that filesystem is mounted read-only: write somewhere else\)\n$/);
    }
  });
});
