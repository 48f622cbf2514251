/**
 * What we learned compressing a layer for a destination: diff id → the compressed blob we stored
 * there. Lets a push of an uncompressed layer (docker save output) that was pushed before skip
 * compressing it again. Fed only with facts verified in this process; checked against the
 * destination (it must still hold the blob) before use.
 */
import { parseDigest, type Digest } from '../oci/digest.js';
import type { Descriptor } from '../oci/manifest.js';
import type { MetadataCache } from './metadata-cache.js';

export class BlobInfoCache {
  constructor(private readonly cache: MetadataCache) {}

  private key(scope: string, diffId: Digest): string {
    return `compressed:v1:${scope}:${diffId}`;
  }

  async compressedFor(scope: string, diffId: Digest): Promise<Descriptor | undefined> {
    const raw = await this.cache.get(this.key(scope, diffId));
    if (!raw) return undefined;
    try {
      const d = JSON.parse(raw) as { mediaType: string; digest: string; size: number };
      if (typeof d.mediaType !== 'string' || !Number.isSafeInteger(d.size)) return undefined;
      return { mediaType: d.mediaType, digest: parseDigest(d.digest), size: d.size };
    } catch {
      return undefined;
    }
  }

  async record(scope: string, diffId: Digest, compressed: Descriptor): Promise<void> {
    await this.cache.set(this.key(scope, diffId), JSON.stringify({ mediaType: compressed.mediaType, digest: compressed.digest, size: compressed.size }));
  }

  /** Repositories of a registry where a blob was seen (newest first), to mount it from. */
  async locations(scope: string, digest: Digest): Promise<string[]> {
    const raw = await this.cache.get(`location:v1:${scope}:${digest}`);
    if (!raw) return [];
    try {
      const list = JSON.parse(raw) as unknown;
      return Array.isArray(list) ? list.filter((x): x is string => typeof x === 'string') : [];
    } catch {
      return [];
    }
  }

  async recordLocation(scope: string, digest: Digest, repository: string): Promise<void> {
    const known = await this.locations(scope, digest);
    if (known[0] === repository) return;
    const next = [repository, ...known.filter((r) => r !== repository)].slice(0, 5);
    await this.cache.set(`location:v1:${scope}:${digest}`, JSON.stringify(next));
  }
}
