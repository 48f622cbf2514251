/**
 * Sources that wrap a source keep what it can do: the metadata cache's CachedSource and the cut of
 * an image `cache pull` writes offer ranged reads, a cheap HEAD and origins exactly when the source
 * they wrap does, and answer them from it. Over a real `file:` store (DistributionSource, which has
 * HEAD, and ranges when its driver is not one of local files: the store is read here as S3 would
 * be) and a real OCI layout (which has neither).
 */
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { CachedSource } from '../../src/cache/cached-source.js';
import { DiskMetadataCache } from '../../src/cache/metadata-cache.js';
import { isStreamed, type ImageSource } from '../../src/oci/image.js';
import type { Descriptor } from '../../src/oci/manifest.js';
import { parseDigest } from '../../src/oci/digest.js';
import { resolveImage } from '../../src/pipeline/layers.js';
import { hostPlatform } from '../../src/oci/platform.js';
import { historyCutSource } from '../../src/ops/build-cache/images.js';
import { copy } from '../../src/ops/copy.js';
import { openDestination, openSource, parseImageName } from '../../src/transports/all.js';
import type { OpenContext } from '../../src/transports/transport.js';
import { FsDriver } from '../../src/storage/fs-driver.js';
import type { StorageDriver } from '../../src/storage/driver.js';
import { DistributionSource } from '../../src/transports/distribution/adapters.js';
import { DistributionStore } from '../../src/transports/distribution/store.js';
import { fixtures } from '../harness/fixtures.js';
import { tempDir } from '../harness/tmp.js';

/** A fixture's descriptor as the library types it. */
const asDescriptor = (d: { mediaType: string; digest: string; size: number }): Descriptor => ({ mediaType: d.mediaType, digest: parseDigest(d.digest), size: d.size });

const ctx: OpenContext = { stdin: process.stdin, stdout: process.stdout };

/** A `file:` store's source as a remote store's is (S3): with ranged reads (StorageDriver.localFiles off). */
function rangedSource(root: string, repository: string, tag: string): ImageSource {
  const driver = Object.create(new FsDriver(root), { localFiles: { value: false } }) as StorageDriver;
  return new DistributionSource(new DistributionStore(driver), { registry: '', repository, tag });
}

async function open(name: string): Promise<ImageSource> {
  const s = await openSource(parseImageName(name), ctx);
  if (isStreamed(s)) throw new Error('a stream');
  return s;
}

describe('decorators keep the optional abilities of what they wrap', () => {
  it('CachedSource over a file: store offers its ranges and HEAD; over a layout, neither', async () => {
    const fx = fixtures();
    const root = await tempDir();
    const store = `file:${root}#deco/basic:1`;
    const dest = await openDestination(parseImageName(store), ctx);
    await copy(await open(`oci:${fx.paths.ociBasic}:latest`), dest, { platform: hostPlatform(), jobs: 2 });
    const cache = new DiskMetadataCache(path.join(await tempDir(), 'metadata'));

    // A store of local files is read whole, never in ranges; the same store read as S3 would be, in ranges.
    expect((await open(store)).getBlobRange).toBeUndefined();
    const inner = rangedSource(root, 'deco/basic', '1');
    const cached = new CachedSource(inner, cache, `file:${root}`, { registry: '', repository: 'deco/basic', tag: '1' });
    expect(typeof inner.headManifest).toBe('function');
    expect(typeof cached.headManifest).toBe('function');
    expect((await cached.headManifest!())?.digest).toBe(fx.basic.manifest.digest);
    const layer = asDescriptor(fx.basic.layers[0]!);
    const bytes = Buffer.concat(await cached.getBlobRange!(layer, 0, 9));
    expect(bytes.equals(Buffer.concat(await inner.getBlobRange!(layer, 0, 9)))).toBe(true);
    expect(bytes).toHaveLength(10);

    const layout = await open(`oci:${fx.paths.ociBasic}:latest`);
    const plain = new CachedSource(layout, cache, 'oci', { registry: '', repository: 'x', tag: 'latest' });
    expect(plain.headManifest).toBeUndefined();
    expect(plain.getBlobRange).toBeUndefined();
    expect(plain.origins).toBeUndefined();
  });

  it('the cut of an image keeps the ranged reads of its source, the cut config served from memory', async () => {
    const fx = fixtures();
    const root = await tempDir();
    const store = `file:${root}#deco/cut:1`;
    await copy(await open(`oci:${fx.paths.ociBasic}:latest`), await openDestination(parseImageName(store), ctx), { platform: hostPlatform(), jobs: 2 });
    const source = rangedSource(root, 'deco/cut', '1');
    const image = await resolveImage(source, hostPlatform());
    const cut = historyCutSource(image, source, 1);
    const top = await cut.getManifest();
    const config = top.kind === 'manifest' ? top.manifest.config : undefined;
    expect(typeof cut.getBlobRange).toBe('function');
    const layer = asDescriptor(fx.basic.layers[0]!);
    expect(Buffer.concat(await cut.getBlobRange!(layer, 0, 3)).equals(Buffer.concat(await source.getBlobRange!(layer, 0, 3)))).toBe(true);
    const whole = await cut.getBlob(config!);
    const chunks: Buffer[] = [];
    for await (const c of whole) chunks.push(c as Buffer);
    expect(Buffer.concat(await cut.getBlobRange!(config!, 0, 4)).equals(Buffer.concat(chunks).subarray(0, 5))).toBe(true);
  });
});
