/**
 * Root filesystems from layers fetched in parallel, which may arrive in any order: streamed
 * straight into the tree (those ahead of their turn spooled), taken from the layer store, or both;
 * the tree must be what applying them in order gives. Layers a pull fetches are kept in the store
 * when asked (or when that is free), then equal to what the store unpacks from the tars itself.
 * The tests control the arrival order (last layer first) and count the fetches.
 */
import { createHash, randomBytes } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import tar from 'tar-stream';
import { describe, expect, it } from 'vitest';
import { LayerStore, type StoredEntry } from '../../src/cache/layer-store.js';
import type { Digest } from '../../src/oci/digest.js';
import type { Image, Layer } from '../../src/oci/image.js';
import { RootfsWriter } from '../../src/transports/rootfs/writer.js';
import { tempDir } from '../harness/tmp.js';
import { describeTree } from '../harness/tree.js';

type Entry = { name: string; type?: 'file' | 'directory' | 'symlink' | 'link'; body?: string | Buffer; linkname?: string; mode?: number };

async function layerTar(entries: Entry[]): Promise<Buffer> {
  const pack = tar.pack();
  for (const e of entries) {
    pack.entry({ name: e.name, type: e.type ?? 'file', mode: e.mode ?? (e.type === 'directory' ? 0o755 : 0o644), mtime: new Date(1704067200000), ...(e.linkname ? { linkname: e.linkname } : {}) }, e.body ?? '');
  }
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack as unknown as AsyncIterable<Buffer>) chunks.push(c);
  return Buffer.concat(chunks);
}

const LAYERS: Entry[][] = [
  [
    { name: 'etc/', type: 'directory' },
    { name: 'etc/a', body: 'a1' },
    { name: 'etc/gone', body: 'x' },
    { name: 'opt/', type: 'directory' },
    { name: 'opt/thing', body: 'file first' },
    { name: 'var/', type: 'directory' },
    { name: 'var/cache/', type: 'directory' },
    { name: 'var/cache/old', body: 'old' },
    { name: 'lib', type: 'symlink', linkname: 'usr/lib' },
    { name: 'usr/', type: 'directory' },
    { name: 'usr/lib/', type: 'directory' },
  ],
  [
    { name: 'etc/', type: 'directory' },
    { name: 'etc/.wh.gone' },
    { name: 'etc/a', body: 'a2' },
    { name: 'opt/thing/', type: 'directory' },
    { name: 'opt/thing/inner', body: 'dir now' },
    { name: 'var/cache/', type: 'directory' },
    { name: 'var/cache/.wh..wh..opq' },
    { name: 'var/cache/new', body: 'new' },
    { name: 'lib/libx.so', body: 'through the lower symlink' },
    { name: 'etc/a-link', type: 'link', linkname: 'etc/a' },
  ],
  [
    { name: 'opt/thing', body: 'a file again' },
    { name: 'etc/a', body: 'a3' },
    // Larger than the spool's memory in the tests that make it small, and than a small file.
    { name: 'usr/lib/big.so', body: randomBytes(700 * 1024) },
    { name: 'usr/lib/locked', body: 'nobody may read me', mode: 0o000 },
  ],
];

interface FakeOptions {
  /** Delay before each layer's stream opens (ms). */
  delaysMs?: number[];
  /** Arrival order, filled in. */
  arrived?: number[];
  /** Fetches per layer, filled in. */
  opened?: number[];
  /** Layers whose stream fails after half of its bytes (as a digest mismatch would at the end). */
  failing?: number[];
}

async function fakeImage(options: FakeOptions = {}): Promise<Image> {
  const tars = await Promise.all(LAYERS.map(layerTar));
  const layers: Layer[] = tars.map((bytes, i) => {
    const diffId = `sha256:${createHash('sha256').update(bytes).digest('hex')}` as Digest;
    const open = async () => {
      await new Promise((r) => setTimeout(r, options.delaysMs?.[i] ?? 0));
      options.arrived?.push(i);
      if (options.opened) options.opened[i] = (options.opened[i] ?? 0) + 1;
      if (!options.failing?.includes(i)) return Readable.from([bytes.subarray(0, 1000), bytes.subarray(1000)]);
      const out = new PassThrough();
      out.write(bytes.subarray(0, bytes.length >> 1));
      setTimeout(() => out.destroy(new Error(`layer ${i}: content hashes to something else`)), 20);
      return out;
    };
    return { descriptor: { mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: diffId, size: bytes.length }, diffId, open, openUncompressed: open };
  });
  const config = { architecture: 'amd64', os: 'linux', rootfs: { type: 'layers' as const, diff_ids: layers.map((l) => l.diffId) } };
  return {
    name: 'test image',
    manifest: { kind: 'manifest', mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: layers[0]!.diffId, bytes: Buffer.from('{}'), manifest: { schemaVersion: 2, config: layers[0]!.descriptor, layers: layers.map((l) => l.descriptor) } },
    configBytes: Buffer.from(JSON.stringify(config)),
    config,
    layers,
    repoTags: [],
  };
}

/** Whether files clone (reflink) from `a` to `b`: then keeping layers is free, and the default. */
async function clones(a: string, b: string): Promise<boolean> {
  await fs.writeFile(path.join(a, 'probe'), 'x');
  return fs.copyFile(path.join(a, 'probe'), path.join(b, 'probe'), fsConstants.COPYFILE_FICLONE_FORCE).then(
    () => true,
    () => false,
  );
}

/** A stored layer as a list: each header (mtime as a number) with its stored file's content, mode and owner. */
async function storedLayer(store: LayerStore, diffId: Digest) {
  const out: unknown[] = [];
  for await (const e of store.entries(diffId) as AsyncIterable<StoredEntry>) {
    const st = e.file ? await fs.stat(e.file) : undefined;
    out.push({ header: { ...e.header, mtime: e.header.mtime?.getTime() }, ...(e.file && st ? { content: createHash('sha256').update(await fs.readFile(e.file).catch(() => Buffer.from('unreadable'))).digest('hex'), mode: st.mode & 0o7777, uid: st.uid, size: st.size, mtime: st.mtimeMs } : {}) });
  }
  return out;
}

const storedLayers = async (store: LayerStore) => (await fs.readdir(path.join(store.dir, 'layers')).catch(() => [] as string[])).sort();
const hex = (d: string) => d.slice('sha256:'.length);

describe('root filesystems from layers arriving in any order', () => {
  it('equal applying the layers in order: streamed straight in (spooled when early), from the layer store, or both', async () => {
    const dir = await tempDir();
    const inOrder = path.join(dir, 'in-order');
    await new RootfsWriter('rootfs:in-order', inOrder, { bundle: false }).write(await fakeImage({ delaysMs: [0, 0, 0] }), { jobs: 1 });
    const expected = await describeTree(inOrder);
    expect(expected['opt/thing']).toMatchObject({ type: 'file' });
    expect(expected['etc/gone']).toBeUndefined();
    expect(Object.keys(expected).filter((p) => p.startsWith('var/cache/'))).toEqual(['var/cache/new']);
    expect(expected['usr/lib/libx.so']).toMatchObject({ type: 'file' });
    expect(expected['lib']).toMatchObject({ type: 'symlink', target: 'usr/lib' });

    // Straight in, the last layer first, with so little memory that the early ones go to a file.
    const arrivals: number[] = [];
    const image = await fakeImage({ delaysMs: [300, 150, 0], arrived: arrivals });
    const events: string[] = [];
    const streamed = path.join(dir, 'streamed');
    const r = await new RootfsWriter('rootfs:streamed', streamed, { bundle: false, spoolMemory: 1000 }).write(image, { jobs: 3, onLayer: (e) => events.push(`${e.status} ${e.diffId}`) });
    expect(arrivals).toEqual([2, 1, 0]);
    expect(events).toEqual(image.layers.map((l) => `written ${l.diffId}`)); // laid down in layer order
    // The two layers ahead of the first were spooled past 1000 bytes into a file.
    expect(r.details).toMatchObject({ materialize: 'stream', spooled: { layers: 3, peakMemory: expect.any(Number), toFile: expect.any(Number) } });
    const spooled = r.details!.spooled as { peakMemory: number; toFile: number };
    expect(spooled.toFile).toBeGreaterThan(700 * 1024); // the big file of the last layer, which came first
    expect(spooled.peakMemory).toBeLessThanOrEqual(1000 + 4 * 1024 * 1024); // the budget, and the window of the layer being read
    expect(await describeTree(streamed)).toEqual(expected);
    expect((await fs.readdir(dir)).sort()).toEqual(['.in-order.smart-pull.json', '.streamed.smart-pull.json', 'in-order', 'streamed']); // no spool file left

    // Kept in a store as they stream in, then a warm pull from it, then a mixed one.
    const store = new LayerStore(path.join(dir, 'store'));
    const kept = path.join(dir, 'kept');
    await new RootfsWriter('rootfs:kept', kept, { bundle: false, layerStore: store, keepLayers: true, spoolMemory: 1000 }).write(await fakeImage({ delaysMs: [300, 150, 0] }), { jobs: 3 });
    expect(await describeTree(kept)).toEqual(expected);
    expect(await storedLayers(store)).toEqual(image.layers.map((l) => hex(l.diffId)).sort());
    const opened: number[] = [];
    const warm = path.join(dir, 'warm');
    const w = await new RootfsWriter('rootfs:warm', warm, { bundle: false, layerStore: store }).write(await fakeImage({ opened }), { jobs: 3 });
    expect(opened).toEqual([]);
    expect(w.details).toMatchObject({ materialize: expect.stringMatching(/^(copy|reflink)$/) });
    expect(await describeTree(warm)).toEqual(expected);

    await fs.rm(path.join(store.dir, 'layers', hex(image.layers[1]!.diffId)), { recursive: true });
    const mixedEvents: string[] = [];
    const mixed = path.join(dir, 'mixed');
    await new RootfsWriter('rootfs:mixed', mixed, { bundle: false, layerStore: store, keepLayers: false }).write(await fakeImage({ opened, delaysMs: [0, 100, 0] }), {
      jobs: 3,
      onLayer: (e) => mixedEvents.push(e.status),
    });
    expect(opened).toEqual([undefined, 1]); // only the layer missing from the store
    expect(mixedEvents).toEqual(['skipped', 'written', 'skipped']);
    expect(await describeTree(mixed)).toEqual(expected);
  });

  it("a reader that leaves a stored layer's entries early closes its index at once, not when collected", async () => {
    const dir = await tempDir();
    const store = new LayerStore(path.join(dir, 'store'));
    // An index larger than a read's buffer: the file is still open when the reader leaves.
    const first = 'ab'.repeat(32);
    const index = path.join(store.dir, 'layers', first, 'entries');
    await fs.mkdir(path.dirname(index), { recursive: true });
    const line = `${JSON.stringify({ name: 'd/', type: 'directory', mode: 0o755, uid: 0, gid: 0, size: 0, mtime: 0 })}\n`;
    await fs.writeFile(index, line.repeat(20_000));
    const openOnIndex = async () => {
      let n = 0;
      for (const fd of await fs.readdir('/proc/self/fd')) if ((await fs.readlink(`/proc/self/fd/${fd}`).catch(() => '')) === index) n++;
      return n;
    };
    for await (const _ of store.entries(`sha256:${first}` as Digest)) {
      expect(await openOnIndex()).toBe(1);
      break;
    }
    expect(await openOnIndex()).toBe(0);
  });

  it('a cold pull writes each file once: into the tree, nothing kept in a store whose filesystem copies (unless asked, or for a bundle)', async () => {
    const dir = await tempDir();
    const store = new LayerStore(path.join(dir, 'store'));
    await fs.mkdir(store.dir);
    const free = await clones(store.dir, dir);
    const r = await new RootfsWriter('rootfs:cold', path.join(dir, 'cold'), { bundle: false, layerStore: store }).write(await fakeImage(), { jobs: 3 });
    if (free) {
      expect(r.details).toMatchObject({ kept: { layers: 3, how: 'reflink' } });
      return;
    }
    expect(await storedLayers(store)).toEqual([]);
    expect(r.details).toMatchObject({ materialize: 'stream' });
    expect(r.details).not.toHaveProperty('kept');
    expect(await fs.readdir(path.join(store.dir, 'tmp')).catch(() => [])).toEqual([]);

    // A bundle is pulled to be run, and pulled again: its layers are kept by default.
    const b = await new RootfsWriter('bundle:b', path.join(dir, 'b'), { bundle: true, layerStore: store }).write(await fakeImage(), { jobs: 3 });
    expect(b.details).toMatchObject({ kept: { layers: 3, how: 'copy' } });
    expect(await storedLayers(store)).toHaveLength(3);
  });

  it('keeps each layer exactly as the store unpacks it from its tar, and the tree shares no inode with it but under link', async () => {
    const dir = await tempDir();
    const image = await fakeImage();
    const reference = new LayerStore(path.join(dir, 'reference'));
    for (const l of image.layers) await reference.ensure(l.diffId, () => l.openUncompressed());

    const store = new LayerStore(path.join(dir, 'store'));
    const tree = path.join(dir, 'tree');
    const r = await new RootfsWriter('rootfs:tree', tree, { bundle: false, layerStore: store, keepLayers: true }).write(image, { jobs: 3 });
    expect(r.details).toMatchObject({ kept: { layers: 3, how: expect.stringMatching(/^(copy|reflink)$/) } });
    expect(await store.verify()).toEqual([]);
    for (const l of image.layers) expect(await storedLayer(store, l.diffId)).toEqual(await storedLayer(reference, l.diffId));
    const storeInodes = new Set<number>();
    for (const x of image.layers) for await (const e of store.entries(x.diffId)) if (e.file) storeInodes.add((await fs.stat(e.file)).ino);
    const treeFiles = Object.entries(await describeTree(tree)).filter(([, e]) => e.type === 'file');
    expect(treeFiles.length).toBeGreaterThan(5);
    for (const [p] of treeFiles) expect(storeInodes.has((await fs.stat(path.join(tree, p))).ino), p).toBe(false);

    // --link: a cold pull keeps the layers by linking the files it writes into the store.
    const linkedStore = new LayerStore(path.join(dir, 'linked-store'));
    const linked = path.join(dir, 'linked');
    const l = await new RootfsWriter('rootfs:linked', linked, { bundle: false, layerStore: linkedStore, link: true }).write(await fakeImage(), { jobs: 3 });
    expect(l.details).toMatchObject({ materialize: 'stream', kept: { layers: 3, how: 'hardlink' } });
    expect(await linkedStore.verify()).toEqual([]);
    for (const x of image.layers) expect(await storedLayer(linkedStore, x.diffId)).toEqual(await storedLayer(reference, x.diffId));
    const big = (await fs.stat(path.join(linked, 'usr/lib/big.so'))).ino;
    const stored = [];
    for await (const e of linkedStore.entries(image.layers[2]!.diffId)) if (e.header.name === 'usr/lib/big.so') stored.push((await fs.stat(e.file!)).ino);
    expect(stored).toEqual([big]);
    const again = path.join(dir, 'linked-again');
    const opened: number[] = [];
    const a = await new RootfsWriter('rootfs:linked-again', again, { bundle: false, layerStore: linkedStore, link: true }).write(await fakeImage({ opened }), { jobs: 3 });
    expect(opened).toEqual([]);
    expect(a.details).toMatchObject({ materialize: 'hardlink' });
    expect((await fs.stat(path.join(again, 'usr/lib/big.so'))).ino).toBe(big);
  });

  it('two pulls at once into one store fetch each layer once, and both trees are whole', async () => {
    const dir = await tempDir();
    const store = new LayerStore(path.join(dir, 'store'));
    const opened: number[] = [];
    const pull = async (name: string) =>
      new RootfsWriter(`rootfs:${name}`, path.join(dir, name), { bundle: false, layerStore: store, keepLayers: true }).write(await fakeImage({ opened, delaysMs: [200, 200, 200] }), { jobs: 3 });
    await Promise.all([pull('one'), pull('two')]);
    expect(opened).toEqual([1, 1, 1]);
    expect(await describeTree(path.join(dir, 'two'))).toEqual(await describeTree(path.join(dir, 'one')));
    expect(await store.verify()).toEqual([]);
    expect(await fs.readdir(path.join(store.dir, 'locks'))).toEqual([]);
  });

  it('two pulls at once into one destination both succeed, the last one replacing the first, and the next pull finds a tree of its own', async () => {
    const dir = await tempDir();
    const pull = async () => new RootfsWriter('rootfs:same', path.join(dir, 'same'), { bundle: false }).write(await fakeImage({ delaysMs: [50, 50, 50] }), { jobs: 3 });
    for (let round = 0; round < 3; round++) {
      await Promise.all([pull(), pull()]);
      await pull(); // refused, were the mark beside naming a tree that is not the one there
    }
    const one = path.join(await tempDir(), 'one');
    await new RootfsWriter('rootfs:one', one, { bundle: false }).write(await fakeImage({}), { jobs: 3 });
    expect(await describeTree(path.join(dir, 'same'))).toEqual(await describeTree(one));
    expect((await fs.readdir(dir)).sort()).toEqual(['.same.smart-pull.json', 'same']);
  });

  it('a layer that fails leaves no tree, no spool, nothing of it in the store and no lock; the layers below it that were applied stay kept', async () => {
    const dir = await tempDir();
    const store = new LayerStore(path.join(dir, 'store'));
    const image = await fakeImage({ failing: [2], delaysMs: [0, 0, 300] });
    const write = new RootfsWriter('rootfs:broken', path.join(dir, 'broken'), { bundle: false, layerStore: store, keepLayers: true, spoolMemory: 1000 }).write(image, { jobs: 3 });
    await expect(write).rejects.toThrow('layer 2: content hashes to something else');
    expect(await fs.readdir(dir)).toEqual(['store']);
    expect(await storedLayers(store)).toEqual(image.layers.slice(0, 2).map((l) => hex(l.diffId)).sort());
    expect(await fs.readdir(path.join(store.dir, 'tmp'))).toEqual([]);
    expect(await fs.readdir(path.join(store.dir, 'locks'))).toEqual([]);

    // Failing before its turn (while spooled): everything stops, nothing is kept of the layers in flight.
    const early = new LayerStore(path.join(dir, 'early'));
    const failing = await fakeImage({ failing: [2], delaysMs: [500, 500, 0] });
    await expect(new RootfsWriter('rootfs:early', path.join(dir, 'e'), { bundle: false, layerStore: early, keepLayers: true, spoolMemory: 1000 }).write(failing, { jobs: 3 })).rejects.toThrow(
      'layer 2: content hashes to something else',
    );
    expect(await fs.readdir(dir)).toEqual(['early', 'store']);
    expect(await storedLayers(early)).toEqual([]);
    expect(await fs.readdir(path.join(early.dir, 'tmp'))).toEqual([]);
    expect(await fs.readdir(path.join(early.dir, 'locks'))).toEqual([]);
  });
});
