/**
 * Pulls into root filesystems through the local layer store, against the stock registry behind a
 * counting proxy: layers kept (`--keep-layers`) are fetched once per machine, concurrent pulls do
 * not fetch twice or corrupt the store, and a pull killed mid-way leaves a store the next pull
 * completes; without `--keep-layers` a root filesystem pull keeps the compressed blobs it fetched
 * (where files copy), so that the next pull fetches none either.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { LayerStore } from '../../src/cache/layer-store.js';
import type { Digest } from '../../src/oci/digest.js';
import { fixtures } from '../harness/fixtures.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { runOk, smart, smartBin } from '../harness/run.js';
import { haveTools } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';
import { describeTree } from '../harness/tree.js';

describe.skipIf(!haveTools('docker-registry'))('the local layer store', () => {
  let work: string;
  let registry: RunningRegistry;
  let proxy: RunningProxy;

  beforeAll(async () => {
    work = await tempDir();
    registry = await startRegistry({ configDir: work });
    proxy = await startProxy({ target: registry.url });
    const fx = fixtures();
    for (const [platform, tag] of [['linux/amd64', 'amd64'], ['linux/arm64', 'arm64']]) {
      const r = await smart(['push', `oci:${fx.paths.ociMulti}:latest`, `docker://${registry.host}/multi/app:${tag}`, '--platform', platform!]);
      expect(r.code, r.stderr).toBe(0);
    }
    const r = await smart(['push', `oci:${fx.paths.ociBasic}:latest`, `docker://${registry.host}/basic/app:v1`]);
    expect(r.code, r.stderr).toBe(0);
  });

  afterAll(async () => {
    await proxy?.stop();
    await registry?.stop();
  });

  beforeEach(() => {
    proxy.setFaults(undefined);
    proxy.stats.clear();
  });

  it('fetches only the layers not already on the machine', async () => {
    const fx = fixtures();
    const cacheHome = await tempDir();
    const amd = fx.multi.platforms['linux/amd64']!;
    const arm = fx.multi.platforms['linux/arm64/v8']!;
    expect(amd.layers[0]!.digest).toBe(arm.layers[0]!.digest); // the shared base layer

    const first = await smart(['pull', `docker://${proxy.host}/multi/app:amd64`, `rootfs:${path.join(work, 'amd')}`, '--keep-layers'], { cacheHome });
    expect(first.code, first.stderr).toBe(0);
    expect(proxy.stats.bytesDown()).toBe(amd.config.size + amd.layers.reduce((n, l) => n + l.size, 0));

    proxy.stats.clear();
    const second = await smart(['pull', `docker://${proxy.host}/multi/app:arm64`, `rootfs:${path.join(work, 'arm')}`, '--keep-layers'], { cacheHome });
    expect(second.code, second.stderr).toBe(0);
    // The config and the arm64 layer; the base layer comes from the store.
    expect(proxy.stats.bytesDown()).toBe(arm.config.size + arm.layers[1]!.size);
    expect(await fs.readFile(path.join(work, 'arm/etc/os-release'), 'utf8')).toBe('ID=smartlayer\n');
    expect(await fs.readFile(path.join(work, 'arm/etc/arch'), 'utf8')).toBe('arm64\n');

    proxy.stats.clear();
    const warm = await smart(['pull', `docker://${proxy.host}/multi/app:arm64`, `rootfs:${path.join(work, 'arm2')}`, '--json'], { cacheHome });
    expect(warm.code, warm.stderr).toBe(0);
    // Warm: the layers from the layer store, the manifest and config from the metadata cache; the
    // tag is asked of the registry (one HEAD), since it may have moved.
    expect(proxy.stats.bytesDown()).toBe(0);
    expect(proxy.stats.requests.filter((r) => r.path.includes('/manifests/') || r.path.includes('/blobs/')).map((r) => `${r.method} ${r.path}`)).toEqual([
      'HEAD /v2/multi/app/manifests/arm64',
    ]);
    expect(JSON.parse(warm.stdout.toString())).toMatchObject({ layers: { skipped: 2, written: 0 }, details: { materialize: expect.stringMatching(/^(copy|reflink)$/) } });
    expect(await describeTree(path.join(work, 'arm2'))).toEqual(await describeTree(path.join(work, 'arm')));

    // Without --keep-layers, a cold pull writes its files once, into the tree; the store gains
    // nothing where files would have to be copied into it (a clone is free, and then kept).
    const other = await tempDir();
    const cold = await smart(['pull', `docker://${proxy.host}/basic/app:v1`, `rootfs:${path.join(work, 'cold')}`, '--json'], { cacheHome: other });
    expect(cold.code, cold.stderr).toBe(0);
    const details = (JSON.parse(cold.stdout.toString()) as { details: { materialize: string; kept?: { how: string } } }).details;
    expect(details.materialize).toBe('stream');
    const kept = await fs.readdir(path.join(other, 'smartlayer', 'layer-store', 'layers')).catch(() => []);
    expect(kept).toHaveLength(details.kept ? fx.basic.layers.length : 0);
    if (details.kept) expect(details.kept.how).toBe('reflink');
    expect(await fs.readFile(path.join(work, 'cold/etc/app.conf'), 'utf8')).toBe('greeting=hi\n');
  });

  it('a root filesystem pull keeps what it fetched: unpacked where that is free, else as the compressed blobs; the next pull fetches none, and a damaged blob is fetched again', async () => {
    const fx = fixtures();
    const cacheHome = await tempDir();
    const blobsDir = path.join(cacheHome, 'smartlayer', 'layer-store', 'blobs', 'sha256');
    const pull = async (tree: string, ...flags: string[]) => {
      proxy.stats.clear();
      const r = await smart(['pull', `docker://${proxy.host}/basic/app:v1`, `rootfs:${path.join(work, tree)}`, '--json', ...flags], { cacheHome });
      expect(r.code, r.stderr).toBe(0);
      const fetched = proxy.stats.requests.filter((q) => q.method === 'GET' && fx.basic.layers.some((l) => q.path.endsWith(l.digest))).map((q) => q.path.split('/').pop());
      return { ...r, details: (JSON.parse(r.stdout.toString()) as { details: Record<string, unknown> }).details, fetched };
    };
    const first = await pull('kept-1');
    expect(new Set(first.fetched)).toEqual(new Set(fx.basic.layers.map((l) => l.digest)));
    // A filesystem that clones keeps the layers unpacked (for free); one that copies (ext4, tmpfs) keeps their blobs.
    const unpacked = first.details.kept !== undefined;
    expect(await fs.readdir(blobsDir).catch(() => [])).toHaveLength(unpacked ? 0 : fx.basic.layers.length);
    if (!unpacked) expect(first.details.blobs).toEqual({ read: 0, kept: fx.basic.layers.length, repaired: 0 });

    const second = await pull('kept-2');
    expect(second.fetched).toEqual([]);
    expect(proxy.stats.bytesDown()).toBe(0); // the config and manifest from the metadata cache
    expect(await describeTree(path.join(work, 'kept-2'))).toEqual(await describeTree(path.join(work, 'kept-1')));
    if (unpacked) return;
    expect(second.details.blobs).toEqual({ read: fx.basic.layers.length, kept: 0, repaired: 0 });
    // The blobs were read through pins (hardlinks another run's gc cannot take away), gone with the pull.
    expect(await fs.readdir(path.join(cacheHome, 'smartlayer', 'layer-store', 'tmp'))).toEqual([]);

    // One blob damaged in place (a CI cache restored wrong): checked before it is used, removed, and fetched.
    const damaged = fx.basic.layers[1]!;
    const file = path.join(blobsDir, damaged.digest.slice(7));
    const bytes = await fs.readFile(file);
    bytes[bytes.length >> 1]! ^= 0xff;
    await fs.writeFile(file, bytes);
    const third = await pull('kept-3');
    expect(third.fetched).toEqual([damaged.digest]);
    expect(third.stderr.toString()).toMatch(new RegExp(`^warning: .*: layer ${damaged.digest.slice(0, 19)} of .* kept on this machine is damaged \\(.*\\): removed, and fetched$`, 'm'));
    expect(third.details.blobs).toEqual({ read: fx.basic.layers.length - 1, kept: 1, repaired: 1 });
    expect(await describeTree(path.join(work, 'kept-3'))).toEqual(await describeTree(path.join(work, 'kept-1')));
    const served = await fs.readFile(path.join(registry.root, 'docker/registry/v2/blobs/sha256', damaged.digest.slice(7, 9), damaged.digest.slice(7), 'data'));
    expect((await fs.readFile(file)).equals(served)).toBe(true); // kept again, as the registry serves it

    // --no-keep-layers keeps nothing, not even blobs; a pull with --prune drops the blobs no recent image uses.
    const none = await tempDir();
    const r = await smart(['pull', `docker://${proxy.host}/basic/app:v1`, `rootfs:${path.join(work, 'kept-none')}`, '--no-keep-layers'], { cacheHome: none });
    expect(r.code, r.stderr).toBe(0);
    expect(await fs.readdir(path.join(none, 'smartlayer', 'layer-store', 'blobs')).catch(() => [])).toEqual([]);
    const store = new LayerStore(path.join(cacheHome, 'smartlayer', 'layer-store'));
    expect(await store.gc({ maxAgeMs: 86_400_000 })).toMatchObject({ removedBlobs: 0 });
    expect(await store.gc({ maxAgeMs: -1 })).toMatchObject({ removedImages: 1, removedBlobs: fx.basic.layers.length });
    expect(await fs.readdir(blobsDir)).toEqual([]);
  });

  it('a pull into a layout or an archive keeps the blobs it fetches (a layout\'s as hardlinks) and reads those kept: the next pull of any kind fetches none', async () => {
    const fx = fixtures();
    const cacheHome = await tempDir();
    const out = await tempDir();
    const blobsDir = path.join(cacheHome, 'smartlayer', 'layer-store', 'blobs', 'sha256');
    const pull = async (destination: string, ...flags: string[]) => {
      proxy.stats.clear();
      const r = await smart(['pull', `docker://${proxy.host}/basic/app:v1`, destination, '-q', ...flags], { cacheHome });
      expect(r.code, r.stderr).toBe(0);
      expect(r.stderr.toString()).toBe(''); // no warning
      return proxy.stats.requests.filter((q) => q.method === 'GET' && fx.basic.layers.some((l) => q.path.endsWith(l.digest))).length;
    };
    // Into an OCI layout: every layer fetched once, kept as a hardlink to the layout's file (no second write).
    expect(await pull(`oci:${path.join(out, 'layout-1')}:x`)).toBe(fx.basic.layers.length);
    for (const l of fx.basic.layers) {
      const inLayout = await fs.stat(path.join(out, 'layout-1', 'blobs', 'sha256', l.digest.slice(7)));
      expect((await fs.stat(path.join(blobsDir, l.digest.slice(7)))).ino).toBe(inLayout.ino);
    }
    // The layout may go: the kept blobs stay. Then no pull fetches a layer again, into whatever it writes.
    await fs.rm(path.join(out, 'layout-1'), { recursive: true });
    expect(await pull(`oci:${path.join(out, 'layout-2')}:x`)).toBe(0);
    // Laid into the layout as hardlinks too (checked, not copied).
    for (const l of fx.basic.layers) {
      const inLayout = await fs.stat(path.join(out, 'layout-2', 'blobs', 'sha256', l.digest.slice(7)));
      expect((await fs.stat(path.join(blobsDir, l.digest.slice(7)))).ino).toBe(inLayout.ino);
    }
    expect(await pull(`docker-archive:${path.join(out, 'kept.tar')}:basic/app:v1`)).toBe(0);
    expect(await pull(`oci-archive:${path.join(out, 'kept-oci.tar')}:x`)).toBe(0);
    expect(await pull(`rootfs:${path.join(out, 'tree')}`)).toBe(0);
    // What was read from the machine is what the registry serves: the same archive as a pull that keeps and reads nothing.
    const fresh = await smart(['pull', `docker://${proxy.host}/basic/app:v1`, `docker-archive:${path.join(out, 'fetched.tar')}:basic/app:v1`, '--no-keep-layers'], { cacheHome: await tempDir() });
    expect(fresh.code, fresh.stderr).toBe(0);
    expect((await fs.readFile(path.join(out, 'kept.tar'))).equals(await fs.readFile(path.join(out, 'fetched.tar')))).toBe(true);
    expect((await runOk('skopeo', ['inspect', '--raw', `oci:${path.join(out, 'layout-2')}:x`])).stdout.toString()).toContain(fx.basic.layers[0]!.digest);
    // An archive's pull keeps what it fetches too (written as it passes); --no-keep-layers keeps nothing.
    const other = await tempDir();
    const archived = await smart(['pull', `docker://${proxy.host}/basic/app:v1`, `oci-archive:${path.join(out, 'a.tar')}:x`, '--json'], { cacheHome: other });
    expect(JSON.parse(archived.stdout.toString())).toMatchObject({ details: { blobs: { read: 0, kept: fx.basic.layers.length, repaired: 0 } } });
    const none = await tempDir();
    expect((await smart(['pull', `docker://${proxy.host}/basic/app:v1`, `oci:${path.join(out, 'layout-3')}:x`, '--no-keep-layers'], { cacheHome: none })).code).toBe(0);
    expect(await fs.readdir(path.join(none, 'smartlayer', 'layer-store', 'blobs', 'sha256')).catch(() => [])).toEqual([]);
    // A cache directory that cannot be made (a read-only home): the pull goes on, said once (by the metadata cache).
    const blocked = path.join(await tempDir(), 'a-file');
    await fs.writeFile(blocked, '');
    const unkept = await smart(['pull', `docker://${proxy.host}/basic/app:v1`, `oci:${path.join(out, 'layout-4')}:x`, '--cache-dir', path.join(blocked, 'cache')]);
    expect(unkept.code, unkept.stderr).toBe(0);
    expect(unkept.stderr.split('\n').filter((l) => l.startsWith('warning:')), unkept.stderr).toHaveLength(1);
    // gc keeps them while a recent pull used them, and no longer.
    const store = new LayerStore(path.join(cacheHome, 'smartlayer', 'layer-store'));
    expect(await store.gc({ maxAgeMs: 86_400_000 })).toMatchObject({ removedBlobs: 0 });
    expect(await store.gc({ maxAgeMs: -1 })).toMatchObject({ removedBlobs: fx.basic.layers.length });
  });

  it('a pull into a layout on another filesystem than the layer store (a tmpfs) keeps a copy of what it fetches: the next pull fetches none', async () => {
    const fx = fixtures();
    const cacheHome = await tempDir();
    const blobsDir = path.join(cacheHome, 'smartlayer', 'layer-store', 'blobs', 'sha256');
    const shm = await fs.mkdtemp('/dev/shm/smart-test-');
    try {
      expect((await fs.stat(shm)).dev).not.toBe((await fs.stat(cacheHome)).dev);
      const pull = async (layout: string) => {
        proxy.stats.clear();
        const r = await smart(['pull', `docker://${proxy.host}/basic/app:v1`, `oci:${path.join(shm, layout)}:x`, '--json'], { cacheHome });
        expect(r.code, r.stderr).toBe(0);
        expect(r.stderr.toString()).not.toMatch(/^warning:/m);
        const fetched = proxy.stats.requests.filter((q) => q.method === 'GET' && fx.basic.layers.some((l) => q.path.endsWith(l.digest))).length;
        return { fetched, blobs: (JSON.parse(r.stdout.toString()) as { details: { blobs?: unknown } }).details.blobs };
      };
      expect(await pull('layout-1')).toEqual({ fetched: fx.basic.layers.length, blobs: { read: 0, kept: fx.basic.layers.length, repaired: 0 } });
      for (const l of fx.basic.layers) {
        const kept = await fs.readFile(path.join(blobsDir, l.digest.slice(7)));
        expect(kept.equals(await fs.readFile(path.join(shm, 'layout-1', 'blobs', 'sha256', l.digest.slice(7))))).toBe(true);
      }
      expect(await fs.readdir(path.join(cacheHome, 'smartlayer', 'layer-store', 'tmp'))).toEqual([]);
      await fs.rm(path.join(shm, 'layout-1'), { recursive: true });
      expect(await pull('layout-2')).toEqual({ fetched: 0, blobs: { read: fx.basic.layers.length, kept: 0, repaired: 0 } });
      expect((await runOk('skopeo', ['inspect', '--raw', `oci:${path.join(shm, 'layout-2')}:x`])).stdout.toString()).toContain(fx.basic.layers[0]!.digest);
    } finally {
      await fs.rm(shm, { recursive: true, force: true });
    }
  });

  it('cache warm unpacks into the layer store the blobs a pull kept, and fetches none of them', async () => {
    const amd = fixtures().multi.platforms['linux/amd64']!;
    const cacheHome = await tempDir();
    const pulled = await smart(['pull', `docker://${proxy.host}/multi/app:amd64`, `rootfs:${path.join(work, 'warm-kept')}`, '--json'], { cacheHome });
    expect(pulled.code, pulled.stderr).toBe(0);
    // A filesystem that clones keeps the layers unpacked already: nothing for warm to do here.
    if ((JSON.parse(pulled.stdout.toString()) as { details: { kept?: unknown } }).details.kept) return;
    expect((await smart(['cache', 'index', `docker://${proxy.host}`], { cacheHome })).code).toBe(0);
    proxy.stats.clear();
    // The most shared chain: the base layer both platforms of multi/app have.
    const warm = await smart(['cache', 'warm', `docker://${proxy.host}`, '--top', '1', '--json'], { cacheHome });
    expect(warm.code, warm.stderr).toBe(0);
    expect(JSON.parse(warm.stdout.toString())).toMatchObject({ chains: 1, layers: 1, fetched: 0, bytes: 0, fromKeptBlobs: 1 });
    expect(proxy.stats.requests.filter((q) => q.method === 'GET' && q.path.includes('/blobs/')).map((q) => q.path.split('/').pop())).not.toContain(amd.layers[0]!.digest);
    expect(warm.stderr.toString()).toMatch(/, 1 from blobs kept on this machine$/m);
    // Unpacked: the next pull lays that layer from the store, and the tree is the same.
    const next = await smart(['pull', `docker://${proxy.host}/multi/app:amd64`, `rootfs:${path.join(work, 'warm-kept-2')}`, '--json'], { cacheHome });
    expect(JSON.parse(next.stdout.toString())).toMatchObject({ layers: { skipped: 1, written: 1 } });
    expect(await describeTree(path.join(work, 'warm-kept-2'))).toEqual(await describeTree(path.join(work, 'warm-kept')));
    expect(await fs.readdir(path.join(cacheHome, 'smartlayer', 'layer-store', 'tmp'))).toEqual([]);
  });

  /** A cache home whose layer store holds the basic image's layers (a pull kept them), and the tree that pull wrote. */
  const keptLayers = async (tree: string) => {
    const cacheHome = await tempDir();
    const store = new LayerStore(path.join(cacheHome, 'smartlayer', 'layer-store'));
    const first = await smart(['pull', `docker://${proxy.host}/basic/app:v1`, `rootfs:${path.join(work, tree)}`, '--keep-layers'], { cacheHome });
    expect(first.code, first.stderr).toBe(0);
    return { cacheHome, store, want: await describeTree(path.join(work, tree)) };
  };

  /** Cuts the last non-empty stored file of `layer` to `size` bytes (its size less one by default). */
  const cutStoredFile = async (store: LayerStore, layer: { diffId: string }, size?: number) => {
    let file: string | undefined;
    for await (const e of store.entries(layer.diffId as Digest)) if (e.file && (await fs.stat(e.file)).size > 0) file = e.file;
    await fs.truncate(file!, size ?? (await fs.stat(file!)).size - 1);
  };

  it('a layer the store lost part of (a CI cache restored in part) is fetched again, not a failure of every pull after', async () => {
    const fx = fixtures();
    const { cacheHome, store, want } = await keptLayers('whole');
    // One layer loses a file it holds, another its index.
    const [lost, garbled] = [fx.basic.layers[1]!, fx.basic.layers[2]!];
    let lostFile: string | undefined; // the last regular file (the first ones may be whiteouts, whose content is never read)
    for await (const e of store.entries(lost.diffId as Digest)) if (e.file) lostFile = e.file;
    await fs.rm(lostFile!);
    await fs.writeFile(path.join(store.dir, 'layers', garbled.diffId.slice(7), 'entries'), '{"name": "etc/\n');
    // And a third a file cut short (a restore that stopped mid-file): laid down as it is, it was a wrong tree.
    const cut = fx.basic.layers[0]!;
    await cutStoredFile(store, cut);
    for (const [n, link] of [[1, false], [2, true]] as const) {
      proxy.stats.clear();
      const dest = path.join(work, `repaired-${n}`);
      const r = await smart(['pull', `docker://${proxy.host}/basic/app:v1`, `rootfs:${dest}`, '--json', ...(link ? ['--link'] : [])], { cacheHome });
      expect(r.code, r.stderr).toBe(0);
      // --link: the tree's files share their inodes with the store's, so every file is in a group.
      const unlinked = (t: Awaited<ReturnType<typeof describeTree>>) => Object.fromEntries(Object.entries(t).map(([p, { hardlinkGroup: _, ...e }]) => [p, e]));
      if (link) expect(unlinked(await describeTree(dest))).toEqual(unlinked(want));
      else expect(await describeTree(dest)).toEqual(want);
      const fetched = proxy.stats.requests.filter((q) => q.method === 'GET' && q.path.includes('/blobs/')).map((q) => q.path.split('/').pop());
      if (n === 1) {
        // The three damaged layers were fetched, dropped from the store, and said so; nothing else was fetched.
        expect(new Set(fetched)).toEqual(new Set([lost.digest, garbled.digest, cut.digest]));
        expect(JSON.parse(r.stdout.toString()).details.repaired).toEqual({ layers: 3 });
        expect(r.stderr.match(/^warning: .* in the layer store is damaged \(.*\): removed from the store, and fetched$/gm)).toHaveLength(3);
        expect(r.stderr).toMatch(/is not the size of the file it keeps/);
        expect(await store.has(lost.diffId as Digest)).toBe(false);
      } else {
        // The first repair left nothing damaged: the store serves the rest, the three are fetched and kept again.
        expect(r.stderr).not.toMatch(/damaged/);
      }
    }
    expect(await store.verify()).toEqual([]);
  });

  it('a pull that keeps layers keeps a repaired one again: the next pull fetches nothing', async () => {
    const fx = fixtures();
    const { cacheHome, store, want } = await keptLayers('rekept');
    const cut = fx.basic.layers[0]!;
    await cutStoredFile(store, cut);
    const blobGets = () => proxy.stats.requests.filter((q) => q.method === 'GET' && q.path.includes('/blobs/')).map((q) => q.path.split('/').pop());
    proxy.stats.clear();
    const repair = await smart(['pull', `docker://${proxy.host}/basic/app:v1`, `rootfs:${path.join(work, 'rekept-1')}`, '--json', '--link'], { cacheHome });
    expect(repair.code, repair.stderr).toBe(0);
    expect(blobGets()).toEqual([cut.digest]);
    expect(JSON.parse(repair.stdout.toString()).details).toMatchObject({ repaired: { layers: 1 }, kept: { layers: 1, how: 'hardlink' } });
    expect(await store.has(cut.diffId as Digest)).toBe(true);
    proxy.stats.clear();
    const next = await smart(['pull', `docker://${proxy.host}/basic/app:v1`, `rootfs:${path.join(work, 'rekept-2')}`, '--json', '--link'], { cacheHome });
    expect(next.code, next.stderr).toBe(0);
    expect(blobGets()).toEqual([]);
    expect(next.stderr).not.toMatch(/damaged/);
    const unlinked = (t: Awaited<ReturnType<typeof describeTree>>) => Object.fromEntries(Object.entries(t).map(([p, { hardlinkGroup: _, ...e }]) => [p, e]));
    for (const tree of ['rekept-1', 'rekept-2']) expect(unlinked(await describeTree(path.join(work, tree))), tree).toEqual(unlinked(want));
    expect(await store.verify()).toEqual([]);
  });

  it('a stored file cut short is not linked into a --link tree as the layer\'s: the layer is fetched again', async () => {
    const fx = fixtures();
    const { cacheHome, store, want } = await keptLayers('kept-for-link');
    // Kept, never yet shared with a tree: a --link pull checks each file it links all the same.
    const cut = fx.basic.layers[0]!;
    await cutStoredFile(store, cut, 0);
    proxy.stats.clear();
    const dest = path.join(work, 'linked-after-cut');
    const r = await smart(['pull', `docker://${proxy.host}/basic/app:v1`, `rootfs:${dest}`, '--link'], { cacheHome });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/^warning: .* in the layer store is damaged \(.* changed size since it was kept .*\): removed from the store, and fetched$/m);
    const unlinked = (t: Awaited<ReturnType<typeof describeTree>>) => Object.fromEntries(Object.entries(t).map(([p, { hardlinkGroup: _, ...e }]) => [p, e]));
    expect(unlinked(await describeTree(dest))).toEqual(unlinked(want));
    const fetched = proxy.stats.requests.filter((q) => q.method === 'GET' && q.path.includes('/blobs/')).map((q) => q.path.split('/').pop());
    expect(fetched).toEqual([cut.digest]);
  });

  it('a tree pulled with --link and then written into (as a container writes into its root filesystem) does not change what the next pull lays down', async () => {
    const fx = fixtures();
    const cacheHome = await tempDir();
    const ref = path.join(work, 'linked-ref');
    const cold = await smart(['pull', `docker://${proxy.host}/basic/app:v1`, `rootfs:${ref}`, '--no-keep-layers'], { cacheHome: await tempDir() });
    expect(cold.code, cold.stderr).toBe(0);
    const want = await describeTree(ref);
    const used = path.join(work, 'linked-used');
    const first = await smart(['pull', `docker://${proxy.host}/basic/app:v1`, `rootfs:${used}`, '--link'], { cacheHome });
    expect(first.code, first.stderr).toBe(0);
    // The layers that hold a file about to change: those, and only those, are to be fetched again.
    const store = new LayerStore(path.join(cacheHome, 'smartlayer', 'layer-store'));
    const changed: string[] = [];
    for (const l of fx.basic.layers) {
      for await (const e of store.entries(l.diffId as Digest)) if (e.file && ['etc/app.conf', 'etc/secret'].includes(e.header.name.replace(/^\.?\//, ''))) changed.push(l.digest);
    }
    expect(changed.length).toBeGreaterThan(0);
    // The tree's files are the store's (one inode): an append, and a chmod, change both.
    await fs.appendFile(path.join(used, 'etc/app.conf'), 'written by the container\n');
    await fs.chmod(path.join(used, 'etc/secret'), 0o644);
    proxy.stats.clear();
    // The next pull copies (no --link): the store's mark says a tree shared these files, so they are checked.
    const next = path.join(work, 'linked-next');
    const r = await smart(['pull', `docker://${proxy.host}/basic/app:v1`, `rootfs:${next}`], { cacheHome });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/^warning: .* in the layer store is damaged \(.* (was modified|changed size|changed mode) since it was kept \(a tree pulled with --link shares its files with the store: use such a tree read-only\)\): removed from the store, and fetched$/m);
    expect(await describeTree(next)).toEqual(want);
    expect(await fs.readFile(path.join(next, 'etc/app.conf'), 'utf8')).toBe('greeting=hi\n');
    expect((await fs.stat(path.join(next, 'etc/secret'))).mode & 0o777).toBe(0o600);
    // Only the changed layers were fetched again.
    const fetched = proxy.stats.requests.filter((q) => q.method === 'GET' && fx.basic.layers.some((l) => q.path.endsWith(l.digest))).map((q) => q.path.split('/').pop());
    expect(new Set(fetched)).toEqual(new Set(changed));
  });

  it('two pulls at once into one store both succeed, fetch each layer once, and leave a store that verifies', async () => {
    const fx = fixtures();
    const cacheHome = await tempDir();
    // Slow every blob download down so that the two pulls overlap for real.
    proxy.setFaults((req) => (req.method === 'GET' && req.path.includes('/blobs/') ? { kind: 'delay', ms: 300 } : undefined));
    const [a, b] = await Promise.all([
      smart(['pull', `docker://${proxy.host}/basic/app:v1`, `rootfs:${path.join(work, 'c1')}`, '--keep-layers'], { cacheHome }),
      smart(['pull', `docker://${proxy.host}/basic/app:v1`, `rootfs:${path.join(work, 'c2')}`, '--keep-layers'], { cacheHome }),
    ]);
    expect(a.code, a.stderr).toBe(0);
    expect(b.code, b.stderr).toBe(0);
    const layerGets = proxy.stats.requests.filter((r) => r.method === 'GET' && fx.basic.layers.some((l) => r.path.endsWith(l.digest)));
    expect(layerGets.length).toBe(fx.basic.layers.length);
    expect(await new LayerStore(path.join(cacheHome, 'smartlayer', 'layer-store')).verify()).toEqual([]);
    expect(await describeTree(path.join(work, 'c1'))).toEqual(await describeTree(path.join(work, 'c2')));
  });

  it('a prune by another run while a pull lays layers from the store keeps those layers: the pull records its image before it uses the store', async () => {
    const fx = fixtures();
    const amd = fx.multi.platforms['linux/amd64']!;
    const arm = fx.multi.platforms['linux/arm64/v8']!;
    const cacheHome = await tempDir();
    const storeDir = path.join(cacheHome, 'smartlayer', 'layer-store');
    const store = new LayerStore(storeDir);
    const first = await smart(['pull', `docker://${proxy.host}/multi/app:amd64`, `rootfs:${path.join(work, 'prune-amd')}`, '--keep-layers'], { cacheHome });
    expect(first.code, first.stderr).toBe(0);
    // That pull is eight days old now: its layers are what a prune removes.
    for (const name of await fs.readdir(path.join(storeDir, 'images'))) {
      const file = path.join(storeDir, 'images', name);
      const record = JSON.parse(await fs.readFile(file, 'utf8')) as Record<string, unknown>;
      await fs.writeFile(file, JSON.stringify({ ...record, usedAt: new Date(Date.now() - 8 * 86_400_000).toISOString() }));
    }
    // A pull of arm64 lays the shared base layer from the store, and stalls on its own layer.
    const own = arm.layers[1]!.digest;
    proxy.setFaults((req) => (req.method === 'GET' && req.path.endsWith(own) ? { kind: 'stall-mid-body', afterBytes: 10 } : undefined));
    const child = spawn(process.execPath, [smartBin, 'pull', '-q', `docker://${proxy.host}/multi/app:arm64`, `rootfs:${path.join(work, 'prune-arm')}`, '--keep-layers'], {
      stdio: 'ignore',
      env: { ...process.env, XDG_CACHE_HOME: cacheHome },
    });
    const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
    try {
      for (let i = 0; i < 200 && !proxy.stats.requests.some((r) => r.fault === 'stall-mid-body'); i++) await new Promise((r) => setTimeout(r, 50));
      expect(proxy.stats.requests.some((r) => r.fault === 'stall-mid-body')).toBe(true);
      // The prune (another run's, meanwhile) removes amd64's own layer, not the base the pull uses.
      expect(await store.gc({ maxAgeMs: 7 * 86_400_000 })).toMatchObject({ removedLayers: 1 });
      expect(await store.has(amd.diffIds[0] as Digest)).toBe(true);
      expect(await store.has(amd.diffIds[1] as Digest)).toBe(false);
    } finally {
      child.kill('SIGKILL');
      await exited;
      proxy.setFaults(undefined);
    }
  });

  it('a pull killed mid-way (kill -9) is completed by the next one, and the store verifies', async () => {
    const fx = fixtures();
    const cacheHome = await tempDir();
    const victim = fx.basic.layers[2]!.digest;
    // One layer stalls half-way: the pull is stuck there, with the other layers already stored.
    proxy.setFaults((req) => (req.method === 'GET' && req.path.endsWith(victim) ? { kind: 'stall-mid-body', afterBytes: 50 } : undefined));
    const dest = path.join(work, 'killed');
    const child = spawn(process.execPath, [smartBin, 'pull', '-q', `docker://${proxy.host}/basic/app:v1`, `rootfs:${dest}`, '--keep-layers'], {
      stdio: 'ignore',
      env: { ...process.env, XDG_CACHE_HOME: cacheHome },
    });
    const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
    const storeDir = path.join(cacheHome, 'smartlayer', 'layer-store');
    for (let i = 0; i < 200; i++) {
      const stored = await fs.readdir(path.join(storeDir, 'layers')).catch(() => []);
      if (stored.length >= 2 && proxy.stats.requests.some((r) => r.fault === 'stall-mid-body')) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    child.kill('SIGKILL');
    await exited;
    await expect(fs.stat(dest)).rejects.toThrow(); // no partial destination
    proxy.setFaults(undefined);
    const again = await smart(['pull', `docker://${proxy.host}/basic/app:v1`, `rootfs:${dest}`, '--keep-layers'], { cacheHome });
    expect(again.code, again.stderr).toBe(0);
    expect(await fs.readFile(path.join(dest, 'etc/app.conf'), 'utf8')).toBe('greeting=hi\n');
    const store = new LayerStore(storeDir);
    expect((await fs.readdir(path.join(storeDir, 'layers'))).length).toBe(fx.basic.layers.length);
    expect(await store.verify()).toEqual([]);
    // What the killed run left (its temporary unpacking) goes with the next gc.
    await store.gc({ maxAgeMs: 86_400_000 });
    expect(await fs.readdir(path.join(storeDir, 'tmp')).catch(() => [])).toEqual([]);
  });

  it('a layer an image holds twice is fetched once into a root filesystem or bundle, kept or not, and laid down at each of its places', async () => {
    const { layerTar, writeImageOfTars } = await import('../harness/images.js');
    const { randomBytes } = await import('node:crypto');
    // A, then B over A's file, then A again (two steps that made the same change): the last word is A's.
    const a = await layerTar({ 'etc/which': 'A\n', 'data/a.bin': randomBytes(3 * 1024 * 1024).toString('latin1') });
    const b = await layerTar({ 'etc/which': 'B\n', 'etc/b': 'b\n' });
    const made = await writeImageOfTars(path.join(work, 'repeated-image'), [a, b, a]);
    const pushed = await smart(['push', `oci:${path.join(work, 'repeated-image')}:latest`, `docker://${registry.host}/repeated/app:1`]);
    expect(pushed.code, pushed.stderr).toBe(0);
    const twice = made.layers[0]!.digest;
    expect(made.layers[2]!.digest).toBe(twice);
    const gets = () => proxy.stats.requests.filter((q) => q.method === 'GET' && q.path.endsWith(twice)).length;
    for (const [dest, flags] of [
      ['rootfs', []],
      ['rootfs', ['--no-keep-layers']],
      ['rootfs', ['--keep-layers']],
      ['bundle', []],
    ] as const) {
      proxy.stats.clear();
      const tree = path.join(work, `repeated-${dest}-${flags.join('')}`);
      const r = await smart(['pull', `docker://${proxy.host}/repeated/app:1`, `${dest}:${tree}`, '--json', ...flags], { cacheHome: await tempDir() });
      expect(r.code, r.stderr).toBe(0);
      expect(gets(), `${dest} ${flags.join(' ')}`).toBe(1);
      expect(JSON.parse(r.stdout.toString())).toMatchObject({ layers: { total: 3, written: 3 } });
      const root = dest === 'bundle' ? path.join(tree, 'rootfs') : tree;
      expect(await fs.readFile(path.join(root, 'etc/which'), 'utf8')).toBe('A\n');
      expect(await fs.readFile(path.join(root, 'etc/b'), 'utf8')).toBe('b\n');
    }
    // Its bytes damaged in transit: the pull fails, on its digest or on the gzip inside (whichever
    // the stream meets first), in one line, and leaves no tree nor spool beside the destination.
    proxy.stats.clear();
    proxy.setFaults((q) => (q.method === 'GET' && q.path.endsWith(twice) ? { kind: 'corrupt-body', offset: 1000 } : undefined));
    const parent = path.join(work, 'repeated-bad');
    const r = await smart(['pull', `docker://${proxy.host}/repeated/app:1`, `rootfs:${path.join(parent, 'out')}`, '--no-keep-layers'], { cacheHome: await tempDir() });
    expect(r.code).not.toBe(0);
    expect(r.stderr.toString()).toMatch(/^smart: error \[(DIGEST_MISMATCH|CORRUPT_ARCHIVE)\]: .*(hashes to|corrupt gzip stream)/);
    expect(r.stderr.toString().trim().split('\n')).toHaveLength(1);
    expect(await fs.readdir(parent).catch(() => [])).toEqual([]);
  });

  it('fetches a large layer as one stream, the rest in parallel ranges once that stream proves slow, verified whole', async () => {
    const { writeImage } = await import('../harness/images.js');
    const { randomBytes } = await import('node:crypto');
    const dir = path.join(work, 'big-image');
    // Incompressible: the blob stays above the size from which ranges may be used (64 MiB).
    const big = randomBytes(70 * 1024 * 1024).toString('latin1');
    const made = await writeImage(dir, { layers: [{ files: { 'data/blob.bin': big }, createdBy: 'ADD blob.bin /data/' }] });
    const pushed = await smart(['push', `oci:${dir}:latest`, `docker://${registry.host}/big/app:1`]);
    expect(pushed.code, pushed.stderr).toBe(0);
    const layer = made.layers[0]!;
    const gets = () => proxy.stats.requests.filter((q) => q.method === 'GET' && q.path.endsWith(layer.digest));
    const inLayout = (out: string) => fs.readFile(path.join(work, out, 'blobs', 'sha256', layer.digest.slice(7)));
    // On loopback it starts as one GET of the whole blob. Whether it stays one depends on how fast
    // its first 8 MiB come, a matter of the machine's load: not asserted here (the decision itself
    // is the unit test's, test/unit/streams.test.ts); the bytes are.
    proxy.stats.clear();
    const fast = await smart(['pull', `docker://${proxy.host}/big/app:1`, `oci:${path.join(work, 'big-out')}:x`], { cacheHome: await tempDir() });
    expect(fast.code, fast.stderr).toBe(0);
    expect(gets().length).toBeGreaterThanOrEqual(1);
    const served = await fs.readFile(path.join(registry.root, 'docker/registry/v2/blobs/sha256', layer.digest.slice(7, 9), layer.digest.slice(7), 'data'));
    expect((await inLayout('big-out')).equals(served)).toBe(true);
    // A slow one (1 MiB every 20 ms): past its first 8 MiB, the rest comes in ranges of 8 MiB, several at once.
    proxy.stats.clear();
    proxy.setFaults((q, n) => (q.method === 'GET' && q.path.endsWith(layer.digest) && n === 1 ? { kind: 'slow-body', bytes: 1024 * 1024, everyMs: 20 } : undefined));
    const slow = await smart(['pull', `docker://${proxy.host}/big/app:1`, `oci:${path.join(work, 'big-out-2')}:x`], { cacheHome: await tempDir() });
    expect(slow.code, slow.stderr).toBe(0);
    const [first, ...ranges] = gets();
    expect(first!.fault).toBe('slow-body');
    expect(first!.responseBytes).toBeGreaterThanOrEqual(8 * 1024 * 1024);
    expect(first!.responseBytes).toBeLessThan(layer.size);
    expect(ranges.length).toBeGreaterThanOrEqual(Math.ceil((layer.size - first!.responseBytes) / (8 * 1024 * 1024)));
    expect(ranges.length).toBeLessThanOrEqual(Math.ceil((layer.size - 8 * 1024 * 1024) / (8 * 1024 * 1024)));
    expect((await inLayout('big-out-2')).equals(await inLayout('big-out'))).toBe(true);
  });
});
