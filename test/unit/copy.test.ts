/**
 * What a copy asks of its source: a push (which keeps an index where the destination can hold
 * one) reads the top manifest once, not once to see whether it is an index and again to resolve
 * the image; through the metadata cache the second read was a HEAD, a round trip to a registry.
 */
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { CachedSource } from '../../src/cache/cached-source.js';
import { DiskMetadataCache } from '../../src/cache/metadata-cache.js';
import { isStreamed, type ImageSource } from '../../src/oci/image.js';
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
