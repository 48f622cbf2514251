/**
 * Layers fetched in parallel into the layer store may finish in any order; the tree must be what
 * applying them in order gives. The test controls the arrival order (last layer first).
 */
import { createHash } from 'node:crypto';
import path from 'node:path';
import { Readable } from 'node:stream';
import tar from 'tar-stream';
import { describe, expect, it } from 'vitest';
import { LayerStore } from '../../src/cache/layer-store.js';
import type { Digest } from '../../src/oci/digest.js';
import type { Image, Layer } from '../../src/oci/image.js';
import { RootfsWriter } from '../../src/transports/rootfs/writer.js';
import { tempDir } from '../harness/tmp.js';
import { describeTree } from '../harness/tree.js';

type Entry = { name: string; type?: 'file' | 'directory' | 'symlink' | 'link'; body?: string; linkname?: string; mode?: number };

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
  ],
];

async function fakeImage(delaysMs: number[], arrived: number[] = []): Promise<Image> {
  const tars = await Promise.all(LAYERS.map(layerTar));
  const layers: Layer[] = tars.map((bytes, i) => {
    const diffId = `sha256:${createHash('sha256').update(bytes).digest('hex')}` as Digest;
    const open = async () => {
      await new Promise((r) => setTimeout(r, delaysMs[i]));
      arrived.push(i);
      return Readable.from([bytes]);
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

describe('root filesystems from the layer store', () => {
  it('equal applying the layers in order, whatever order they arrive in', async () => {
    const dir = await tempDir();
    const inOrder = path.join(dir, 'in-order');
    await new RootfsWriter('rootfs:in-order', inOrder, { bundle: false }).write(await fakeImage([0, 0, 0]), { jobs: 1 });

    const reversed = path.join(dir, 'reversed');
    const arrivals: number[] = [];
    const image = await fakeImage([300, 150, 0], arrivals); // the last layer arrives first
    const store = new LayerStore(path.join(dir, 'store'));
    const events: string[] = [];
    await new RootfsWriter('rootfs:reversed', reversed, { bundle: false, layerStore: store }).write(image, {
      jobs: 3,
      onLayer: (e) => events.push(e.diffId!),
    });
    expect(arrivals).toEqual([2, 1, 0]);
    expect(events).toEqual(image.layers.map((l) => l.diffId)); // laid down in layer order
    const tree = await describeTree(reversed);
    expect(tree).toEqual(await describeTree(inOrder));
    expect(tree['opt/thing']).toMatchObject({ type: 'file' });
    expect(tree['etc/gone']).toBeUndefined();
    expect(Object.keys(tree).filter((p) => p.startsWith('var/cache/'))).toEqual(['var/cache/new']);
    expect(tree['usr/lib/libx.so']).toMatchObject({ type: 'file' });
    expect(tree['lib']).toMatchObject({ type: 'symlink', target: 'usr/lib' });

    // Warm: everything from the store, hardlinked on request.
    const linked = path.join(dir, 'linked');
    await new RootfsWriter('rootfs:linked', linked, { bundle: false, layerStore: store, link: true }).write(await fakeImage([0, 0, 0]), { jobs: 3 });
    const linkedTree = await describeTree(linked);
    for (const [p, e] of Object.entries(tree)) expect({ ...linkedTree[p], hardlinkGroup: undefined }, p).toEqual({ ...e, hardlinkGroup: undefined });
  });
});
