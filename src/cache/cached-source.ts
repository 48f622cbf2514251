/**
 * An image source that answers from the metadata cache what is safe to answer from it: manifests
 * and configs by digest (content-addressed: each is verified against the digest it was asked for,
 * and a damaged or forged entry is a miss). Which image a tag names is always asked of the store
 * (one HEAD on a registry, one read of the tag's link in a store), so a tag that moved is followed
 * at once and nothing in the cache decides what a name pulls; whether the repository holds a digest
 * asked for is asked the same way. A warm pull of a known tag or digest then reads no manifest or
 * config from storage, only that one answer. Only `tagCacheTtlS` (an explicit
 * `--tag-cache-ttl`) trusts the cache's word for a tag, for that long.
 */
import { Readable } from 'node:stream';
import { SmartError } from '../errors.js';
import { isDigest, sha256Digest, type Digest } from '../oci/digest.js';
import type { ImageSource, ManifestHead, OpenOptions } from '../oci/image.js';
import { parseManifest, type Descriptor, type ParsedManifest } from '../oci/manifest.js';
import { MediaType } from '../oci/mediatypes.js';
import type { Reference } from '../oci/reference.js';
import { configKey, manifestKey, tagKey } from './keys.js';
import type { MetadataCache } from './metadata-cache.js';

/** How long the cache keeps what a tag was last seen to name: as far back as `--tag-cache-ttl` reaches. */
export const TAG_ENTRY_TTL_S = 86_400;
const MAX_CACHED_BLOB = 1024 * 1024;
const CONFIG_TYPES = new Set<string>([MediaType.OCI_CONFIG, MediaType.DOCKER_CONFIG]);

/** What a tag was last seen to name in a store, and when (ms since the epoch). */
interface TagEntry {
  digest: Digest;
  at: number;
}

/** Records what a tag names now (as resolved by its store, or written by our own push). */
export async function recordTag(cache: MetadataCache, scope: string, repository: string, tag: string, digest: Digest): Promise<void> {
  await cache.set(tagKey(scope, repository, tag), JSON.stringify({ digest, at: Date.now() } satisfies TagEntry), TAG_ENTRY_TTL_S);
}

function parseTagEntry(raw: string | undefined): TagEntry | undefined {
  if (!raw) return undefined;
  try {
    const e = JSON.parse(raw) as { digest?: unknown; at?: unknown };
    return typeof e.digest === 'string' && isDigest(e.digest) && typeof e.at === 'number' && Number.isFinite(e.at) ? { digest: e.digest, at: e.at } : undefined;
  } catch {
    return undefined;
  }
}

interface CachedManifest {
  mediaType: string;
  bytes: string;
}

/** Keeps a manifest in `cache` under its digest (read back by `cachedManifest`, verified). */
export async function rememberManifest(cache: MetadataCache, m: Pick<ParsedManifest, 'digest' | 'mediaType' | 'bytes'>): Promise<void> {
  await cache.set(manifestKey(m.digest), JSON.stringify({ mediaType: m.mediaType, bytes: m.bytes.toString('base64') } satisfies CachedManifest));
}

/**
 * The manifest of `digest` kept in `cache`, if its bytes hash to it (anything else, a damaged or
 * forged entry included, is a miss). `declaredMediaType`: the type the store declares, when known,
 * over the one stored beside the bytes.
 */
export async function cachedManifest(cache: MetadataCache, digest: Digest, name: string, declaredMediaType?: string): Promise<ParsedManifest | undefined> {
  const raw = await cache.get(manifestKey(digest));
  if (!raw) return undefined;
  try {
    const m = JSON.parse(raw) as CachedManifest;
    const bytes = Buffer.from(m.bytes, 'base64');
    if (sha256Digest(bytes) !== digest) return undefined;
    return parseManifest(bytes, declaredMediaType || m.mediaType, name);
  } catch {
    return undefined;
  }
}

export interface CachedSourceOptions {
  /**
   * Seconds for which a tag's digest learned before (by any machine sharing the cache) is used
   * without asking the store (`--tag-cache-ttl`). Default 0: every tag is resolved by the store.
   * A trade of freshness for one request, and of safety too: for that long the cache, and whoever
   * can write it, decides which image the tag pulls.
   */
  tagCacheTtlS?: number;
}

/**
 * A decorator: what it does not answer from the cache it asks the source it wraps, and it keeps
 * that source's optional abilities (ranged reads, a cheap HEAD, origins) rather than dropping them.
 */
export class CachedSource implements ImageSource {
  readonly name: string;
  private readonly tagCacheTtlMs: number;

  constructor(
    private readonly inner: ImageSource,
    private readonly cache: MetadataCache,
    private readonly scope: string,
    private readonly ref: Reference,
    options: CachedSourceOptions = {},
  ) {
    this.name = inner.name;
    this.tagCacheTtlMs = Math.max(0, options.tagCacheTtlS ?? 0) * 1000;
    // Ranged reads, HEADs and origins pass straight through, when the source has them.
    if (inner.getBlobRange) this.getBlobRange = inner.getBlobRange.bind(inner);
    if (inner.headManifest) this.headManifest = inner.headManifest.bind(inner);
    if (inner.origins) this.origins = inner.origins.bind(inner);
  }

  getBlobRange?: ImageSource['getBlobRange'];
  headManifest?: ImageSource['headManifest'];
  origins?: ImageSource['origins'];

  private cachedManifest(digest: Digest, declaredMediaType?: string): Promise<ParsedManifest | undefined> {
    return cachedManifest(this.cache, digest, this.name, declaredMediaType);
  }

  private remember(m: ParsedManifest): Promise<void> {
    return rememberManifest(this.cache, m);
  }

  /** The manifest a store answered `head` with: from the cache when there, else read by digest. */
  private async byHead(head: ManifestHead): Promise<ParsedManifest> {
    const hit = await this.cachedManifest(head.digest, head.mediaType);
    if (hit) return hit;
    const m = await this.inner.getManifestByDigest({ mediaType: head.mediaType ?? '', digest: head.digest, size: head.size ?? 0 });
    if (m.digest !== head.digest) throw new SmartError('DIGEST_MISMATCH', `${this.name}: manifest ${head.digest} hashes to ${m.digest}`, { input: head.digest });
    await this.remember(m);
    return m;
  }

  async getManifest(): Promise<ParsedManifest> {
    const { repository, tag, digest } = this.ref;
    if (digest || !tag) {
      const hit = digest ? await this.cachedManifest(digest) : undefined;
      // The cache knows a digest's bytes, not whether this repository holds them (the registry
      // answers MANIFEST_UNKNOWN for one it does not, and a repository that is not there holds
      // none): the store is asked, one HEAD or one link read, as for a tag.
      if (hit && (!this.inner.headManifest || (await this.inner.headManifest())?.digest === digest)) return hit;
      const m = await this.inner.getManifest();
      await this.remember(m);
      return m;
    }
    const seen = parseTagEntry(await this.cache.get(tagKey(this.scope, repository, tag)));
    if (seen && this.tagCacheTtlMs > 0 && Math.abs(Date.now() - seen.at) <= this.tagCacheTtlMs) {
      const hit = await this.cachedManifest(seen.digest);
      if (hit) return hit; // asked for: the cache's word, for this long
    }
    let m: ParsedManifest | undefined;
    // Seen before, so its manifest is likely cached: ask the store only what the tag names now.
    // Otherwise one read of the manifest itself costs less than a HEAD and then that read.
    if (seen && this.inner.headManifest) {
      const head = await this.inner.headManifest();
      if (head) m = await this.byHead(head);
    }
    if (!m) {
      m = await this.inner.getManifest();
      await this.remember(m);
    }
    await recordTag(this.cache, this.scope, repository, tag, m.digest);
    return m;
  }

  async getManifestByDigest(descriptor: Descriptor): Promise<ParsedManifest> {
    const hit = await this.cachedManifest(descriptor.digest, descriptor.mediaType);
    if (hit) return hit;
    const m = await this.inner.getManifestByDigest(descriptor);
    await this.remember(m);
    return m;
  }

  async getBlob(descriptor: Descriptor, options?: OpenOptions): Promise<Readable> {
    if (!CONFIG_TYPES.has(descriptor.mediaType) || descriptor.size > MAX_CACHED_BLOB) return this.inner.getBlob(descriptor, options);
    const raw = await this.cache.get(configKey(descriptor.digest));
    if (raw) {
      const bytes = Buffer.from(raw, 'base64');
      if (sha256Digest(bytes) === descriptor.digest) return Readable.from([bytes]);
    }
    const chunks: Buffer[] = [];
    for await (const c of await this.inner.getBlob(descriptor, options)) chunks.push(c as Buffer);
    const bytes = Buffer.concat(chunks); // verified by the inner source as it streamed
    await this.cache.set(configKey(descriptor.digest), bytes.toString('base64'));
    return Readable.from([bytes]);
  }

  repoTags(): readonly string[] {
    return this.inner.repoTags();
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
