/**
 * What a copy asks of its source and its destination: a push (which keeps an index where the
 * destination can hold one) reads the top manifest once, not once to see whether it is an index
 * and again to resolve the image (through the metadata cache the second read was a HEAD, a round
 * trip to a registry); a push of layers compressed before confirms what they became with a read
 * of the image that showed it, its config not read when it is the config being pushed; and the
 * config is stored first, beside the layers, a failure of it stopping the copy untagged; and a
 * layout another run took away meanwhile is not tagged.
 */
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { BlobInfoCache } from '../../src/cache/blob-info.js';
import { CachedSource } from '../../src/cache/cached-source.js';
import { DiskMetadataCache } from '../../src/cache/metadata-cache.js';
import { SmartError } from '../../src/errors.js';
import { isStreamed, type BlobDestination, type ImageSource, type OpenOptions } from '../../src/oci/image.js';
import type { Descriptor } from '../../src/oci/manifest.js';
import { MediaType } from '../../src/oci/mediatypes.js';
import { hostPlatform } from '../../src/oci/platform.js';
import { copy } from '../../src/ops/copy.js';
import { openDestination, openSource, parseImageName } from '../../src/transports/all.js';
import type { OpenContext } from '../../src/transports/transport.js';
import { fixtures } from '../harness/fixtures.js';
import { tempDir } from '../harness/tmp.js';

const ctx: OpenContext = { stdin: process.stdin, stdout: process.stdout };

async function open(name: string): Promise<ImageSource> {
  const s = await openSource(parseImageName(name), ctx);
  if (isStreamed(s)) throw new Error('a stream');
  return s;
}

/** `source` with a count of the calls made to it, by method. */
function counted(source: ImageSource): { source: ImageSource; calls: Map<string, number> } {
  const calls = new Map<string, number>();
  const proxy = new Proxy(source, {
    get(target, key, receiver) {
      const value = Reflect.get(target, key, receiver) as unknown;
      if (typeof value !== 'function' || typeof key !== 'string') return value;
      return (...args: unknown[]) => {
        calls.set(key, (calls.get(key) ?? 0) + 1);
        return (value as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
  return { source: proxy, calls };
}

describe('a copy reads the top manifest of its source once', () => {
  it('a push from a store, through the metadata cache, asks the store for the tag once', async () => {
    const fx = fixtures();
    const root = await tempDir();
    const from = `file:${root}#copy/basic:1`;
    await copy(await open(`oci:${fx.paths.ociBasic}:latest`), await openDestination(parseImageName(from), ctx), { platform: hostPlatform(), jobs: 2 });

    const { source, calls } = counted(await open(from));
    const cache = new DiskMetadataCache(path.join(await tempDir(), 'metadata'));
    const cached = new CachedSource(source, cache, `file:${root}`, { registry: '', repository: 'copy/basic', tag: '1' });
    const dest = await openDestination(parseImageName(`file:${root}#copy/again:1`), ctx);
    const summary = await copy(cached, dest, { platform: hostPlatform(), jobs: 2, allPlatforms: 'where-held' });
    expect(summary.manifestDigest).toBe(fx.basic.manifest.digest);
    expect(calls.get('getManifest')).toBe(1);
    expect(calls.get('headManifest') ?? 0).toBe(0);
  });
});

describe('a push of layers compressed before', () => {
  it('confirms what they became with one read of the image that showed it when that image has the same config', async () => {
    const fx = fixtures();
    const root = await tempDir();
    const metadata = new DiskMetadataCache(path.join(await tempDir(), 'metadata'));
    const archive = `docker-archive:${fx.paths.dockerArchiveBasic}`;
    const first = await copy(await open(archive), await openDestination(parseImageName(`file:${root}#learn/a:1`), ctx), { platform: hostPlatform(), jobs: 2, blobInfo: new BlobInfoCache(metadata) });
    expect(first.layers.pushed).toBeGreaterThan(0);

    // The second push, from another machine sharing the cache (its own disk knows nothing), to
    // another tag of the repository: what it reads of the store to believe the cache.
    const blobInfo = new BlobInfoCache(metadata, new DiskMetadataCache(path.join(await tempDir(), 'its-own-disk')));
    const reads: string[] = [];
    const dest = (await openDestination(parseImageName(`file:${root}#learn/a:2`), ctx)) as BlobDestination;
    const storedSource = dest.storedSource!.bind(dest);
    dest.storedSource = (repository) => {
      const stored = storedSource(repository);
      const getBlob = stored.getBlob.bind(stored);
      const getManifestByDigest = stored.getManifestByDigest.bind(stored);
      return Object.assign(stored, {
        getBlob: (d: Descriptor, options?: OpenOptions) => (reads.push(`blob ${d.mediaType}`), getBlob(d, options)),
        getManifestByDigest: (d: Descriptor) => (reads.push('manifest'), getManifestByDigest(d)),
      });
    };
    // And what it reads of the cache: each layer's entry once, though the copy asks for it twice
    // (whether the tag already names the image, which it does not here, then layer by layer).
    const asked = new Map<string, number>();
    const get = metadata.get.bind(metadata);
    metadata.get = (key) => (asked.set(key, (asked.get(key) ?? 0) + 1), get(key));
    const summary = await copy(await open(archive), dest, { platform: hostPlatform(), jobs: 2, blobInfo });
    expect(summary.layers.pushed).toBe(0);
    expect(summary.compression).toBeUndefined(); // nothing compressed again
    expect(reads).toEqual(['manifest']);
    const layerEntries = [...asked].filter(([key]) => fx.basic.layers.some((l) => key.includes(l.diffId)));
    expect(layerEntries.map(([, n]) => n)).toEqual(fx.basic.layers.map(() => 1));
  });
});

describe('the config of a copy', () => {
  const isConfig = (mediaType: string) => mediaType === MediaType.OCI_CONFIG || mediaType === MediaType.DOCKER_CONFIG;

  it('is stored beside the layers, not after them: a layer that waits for it is not left waiting', async () => {
    const fx = fixtures();
    const root = await tempDir();
    const dest = (await openDestination(parseImageName(`file:${root}#config/early:1`), ctx)) as BlobDestination;
    let configAsked!: () => void;
    const asked = new Promise<void>((resolve) => (configAsked = resolve));
    const late = new Promise<false>((resolve) => setTimeout(() => resolve(false), 3000).unref());
    const putBlob = dest.putBlob.bind(dest);
    dest.putBlob = async (stream, info) => {
      if (isConfig(info.mediaType)) configAsked();
      else if (!(await Promise.race([asked.then(() => true), late]))) throw new Error('the config was not asked for before the layers were stored');
      return putBlob(stream, info);
    };
    const summary = await copy(await open(`oci:${fx.paths.ociBasic}:latest`), dest, { platform: hostPlatform(), jobs: 1 });
    expect(summary.manifestDigest).toBe(fx.basic.manifest.digest);
    expect(summary.config).toBe('pushed');
  });

  it('that fails stops the copy with its error, and nothing is tagged', async () => {
    const fx = fixtures();
    const root = await tempDir();
    const name = `file:${root}#config/fails:1`;
    const dest = (await openDestination(parseImageName(name), ctx)) as BlobDestination;
    const putBlob = dest.putBlob.bind(dest);
    dest.putBlob = async (stream, info) => {
      if (isConfig(info.mediaType)) {
        stream.destroy();
        throw new SmartError('STORAGE', 'the store refused the config');
      }
      return putBlob(stream, info);
    };
    await expect(copy(await open(`oci:${fx.paths.ociBasic}:latest`), dest, { platform: hostPlatform(), jobs: 2 })).rejects.toThrow('the store refused the config');
    await expect(open(name).then((s) => s.getManifest())).rejects.toThrow();
  });
});

describe('a copy into a new OCI layout', () => {
  it('that another run into it, failing, took away meanwhile fails in its turn, and tags nothing', async () => {
    const fx = fixtures();
    const dir = path.join(await tempDir(), 'layout');
    // The other run found the directory empty: the layout is its own until it commits.
    const other = (await openDestination(parseImageName(`oci:${dir}:other`), ctx)) as BlobDestination;
    const dest = (await openDestination(parseImageName(`oci:${dir}:mine`), ctx)) as BlobDestination;
    const commit = dest.commit.bind(dest);
    dest.commit = async (top) => {
      await other.abort(); // the other run failed: it removes the layout it began, blobs and all
      return commit(top);
    };
    await expect(copy(await open(`oci:${fx.paths.ociBasic}:latest`), dest, { platform: hostPlatform(), jobs: 2 })).rejects.toMatchObject({
      code: 'NOT_FOUND',
      message: expect.stringContaining('were removed from the layout while it was written'),
    });
    await expect(fs.stat(path.join(dir, 'index.json'))).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('that another run took away before any blob was stored is whole when tagged, its oci-layout file put back', async () => {
    const fx = fixtures();
    const dir = path.join(await tempDir(), 'layout');
    const other = (await openDestination(parseImageName(`oci:${dir}:other`), ctx)) as BlobDestination;
    const dest = (await openDestination(parseImageName(`oci:${dir}:mine`), ctx)) as BlobDestination;
    const aborted = other.abort(); // before the first blob: it takes the oci-layout file, and the directory
    const putBlob = dest.putBlob.bind(dest);
    dest.putBlob = async (stream, info) => {
      await aborted;
      return putBlob(stream, info);
    };
    const summary = await copy(await open(`oci:${fx.paths.ociBasic}:latest`), dest, { platform: hostPlatform(), jobs: 2 });
    expect(await fs.readFile(path.join(dir, 'oci-layout'), 'utf8')).toContain('imageLayoutVersion');
    expect((await (await open(`oci:${dir}:mine`)).getManifest()).digest).toBe(summary.manifestDigest);
  });

  it("starts while another run is writing the layout's oci-layout file, and a failing run leaves the files another is writing", async () => {
    const fx = fixtures();
    const dir = path.join(await tempDir(), 'layout');
    await fs.mkdir(dir);
    const writing = path.join(dir, 'oci-layout.tmp-4242-1-2-0a1b2c3d'); // the other run's, before its rename
    await fs.writeFile(writing, '');
    const other = (await openDestination(parseImageName(`oci:${dir}:other`), ctx)) as BlobDestination; // not refused
    const blobBeingWritten = path.join(dir, '.smart-tmp-6f1d2c3b-0000-4000-8000-000000000000'); // a third run's
    await fs.writeFile(blobBeingWritten, 'partial');
    await fs.mkdir(path.join(dir, 'blobs', 'sha256'), { recursive: true });
    await other.abort();
    expect((await fs.readdir(dir)).sort()).toEqual([path.basename(blobBeingWritten), path.basename(writing)]);
    await fs.rm(blobBeingWritten);
    const dest = (await openDestination(parseImageName(`oci:${dir}:mine`), ctx)) as BlobDestination;
    const summary = await copy(await open(`oci:${fx.paths.ociBasic}:latest`), dest, { platform: hostPlatform(), jobs: 2 });
    expect((await (await open(`oci:${dir}:mine`)).getManifest()).digest).toBe(summary.manifestDigest);
  });
});

describe('a copy from a stream', () => {
  const isLayer = (mediaType: string) => mediaType.includes('.layer.');

  async function streamOf(file: string) {
    const s = await openSource(parseImageName('docker-archive:-'), { stdin: createReadStream(file), stdout: process.stdout });
    if (!isStreamed(s)) throw new Error('not a stream');
    return s;
  }

  /** `dest` whose putBlob stores each layer, then runs `after(n)` (n counts layers from 1) before it answers; in-flight puts counted. */
  function gated(dest: BlobDestination, after: (n: number) => Promise<void>): { inFlight: () => number } {
    const putBlob = dest.putBlob.bind(dest);
    let layers = 0;
    let inFlight = 0;
    dest.putBlob = async (stream, info) => {
      if (!isLayer(info.mediaType)) return putBlob(stream, info);
      const n = ++layers;
      inFlight++;
      try {
        const stored = await putBlob(stream, info); // the layer read whole
        await after(n);
        return stored;
      } finally {
        inFlight--;
      }
    };
    return { inFlight: () => inFlight };
  }

  it('reads the next layer while the one before, read whole, is still being stored', async () => {
    const fx = fixtures();
    const root = await tempDir();
    const dest = (await openDestination(parseImageName(`file:${root}#stream/overlap:1`), ctx)) as BlobDestination;
    let secondAsked!: () => void;
    const asked = new Promise<true>((resolve) => (secondAsked = () => resolve(true)));
    const late = new Promise<false>((resolve) => setTimeout(() => resolve(false), 10_000).unref());
    gated(dest, async (n) => {
      if (n === 2) secondAsked();
      // The first layer's end (a registry's PUT, a file's commit) waits until the second is being read.
      if (n === 1 && !(await Promise.race([asked, late]))) throw new Error('the next layer was not read before this one was stored');
    });
    const summary = await copy(await streamOf(fx.paths.dockerArchiveBasic), dest, { platform: hostPlatform(), jobs: 2 });
    expect(summary.layers.pushed).toBe(fx.basic.layers.length);
    expect((await (await open(`file:${root}#stream/overlap:1`)).getManifest()).digest).toBe(summary.manifestDigest);
  });

  it('that fails to store a layer read whole stops with that failure, once nothing else is being stored, and tags nothing', async () => {
    const fx = fixtures();
    const root = await tempDir();
    const name = `file:${root}#stream/fails:1`;
    const dest = (await openDestination(parseImageName(name), ctx)) as BlobDestination;
    let secondAsked!: () => void;
    const asked = new Promise<void>((resolve) => (secondAsked = resolve));
    const puts = gated(dest, async (n) => {
      if (n === 2) return secondAsked();
      // Fails while the next layer is being read: the read is stopped, and the failure is this one, not a cancellation.
      if (n === 1) {
        await asked;
        throw new SmartError('STORAGE', 'the store refused layer 1');
      }
    });
    const copying = copy(await streamOf(fx.paths.dockerArchiveBasic), dest, { platform: hostPlatform(), jobs: 2 });
    await expect(copying).rejects.toMatchObject({ code: 'STORAGE', message: 'the store refused layer 1' });
    expect(puts.inFlight()).toBe(0);
    await expect(open(name).then((s) => s.getManifest())).rejects.toThrow();
  });
});
