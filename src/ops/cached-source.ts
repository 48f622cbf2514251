/**
 * An image source that answers from the metadata cache what it can: a tag's digest (for a short
 * while: tags move), manifests and configs by digest (forever: content-addressed). A warm pull of
 * a known tag then reads no manifest or config from storage. The cache is a hint: what it returns
 * is verified like anything read from storage, and a miss reads the store and fills the cache.
 */
import { Readable } from 'node:stream';
import type { MetadataCache } from '../cache/metadata-cache.js';
import { sha256Digest, type Digest } from '../oci/digest.js';
import type { ImageSource, OpenOptions } from '../oci/image.js';
import { parseManifest, type Descriptor, type ParsedManifest } from '../oci/manifest.js';
import { MediaType } from '../oci/mediatypes.js';
import type { Reference } from '../oci/reference.js';

/** How long a tag's digest is trusted without asking the store (our own pushes rewrite it). */
export const TAG_TTL_S = 60;
const MAX_CACHED_BLOB = 1024 * 1024;
const CONFIG_TYPES = new Set<string>([MediaType.OCI_CONFIG, MediaType.DOCKER_CONFIG]);

export function tagKey(scope: string, repository: string, tag: string): string {
  return `tag:v1:${scope}:${repository}:${tag}`;
}

function manifestKey(digest: string): string {
  return `manifest:v1:${digest}`;
}

function blobKey(digest: string): string {
  return `config:v1:${digest}`;
}

interface CachedManifest {
  mediaType: string;
  bytes: string;
}

export class CachedSource implements ImageSource {
  readonly name: string;

  constructor(
    private readonly inner: ImageSource,
    private readonly cache: MetadataCache,
    private readonly scope: string,
    private readonly ref: Reference,
  ) {
    this.name = inner.name;
    // Ranged reads pass straight through, when the source has them.
    if (inner.getBlobRange) this.getBlobRange = inner.getBlobRange.bind(inner);
  }

  getBlobRange?: ImageSource['getBlobRange'];

  private async cachedManifest(digest: Digest): Promise<ParsedManifest | undefined> {
    const raw = await this.cache.get(manifestKey(digest));
    if (!raw) return undefined;
    try {
      const m = JSON.parse(raw) as CachedManifest;
      const bytes = Buffer.from(m.bytes, 'base64');
      if (sha256Digest(bytes) !== digest) return undefined; // a damaged entry is a miss
      return parseManifest(bytes, m.mediaType, this.name);
    } catch {
      return undefined;
    }
  }

  private async remember(m: ParsedManifest): Promise<void> {
    await this.cache.set(manifestKey(m.digest), JSON.stringify({ mediaType: m.mediaType, bytes: m.bytes.toString('base64') } satisfies CachedManifest));
  }

  async getManifest(): Promise<ParsedManifest> {
    const { repository, tag, digest } = this.ref;
    const known = digest ?? (tag ? ((await this.cache.get(tagKey(this.scope, repository, tag))) as Digest | undefined) : undefined);
    if (known) {
      const hit = await this.cachedManifest(known);
      if (hit) return hit;
    }
    const m = await this.inner.getManifest();
    await this.remember(m);
    if (tag && !digest) await this.cache.set(tagKey(this.scope, repository, tag), m.digest, TAG_TTL_S);
    return m;
  }

  async getManifestByDigest(descriptor: Descriptor): Promise<ParsedManifest> {
    const hit = await this.cachedManifest(descriptor.digest);
    if (hit) return hit;
    const m = await this.inner.getManifestByDigest(descriptor);
    await this.remember(m);
    return m;
  }

  async getBlob(descriptor: Descriptor, options?: OpenOptions): Promise<Readable> {
    if (!CONFIG_TYPES.has(descriptor.mediaType) || descriptor.size > MAX_CACHED_BLOB) return this.inner.getBlob(descriptor, options);
    const raw = await this.cache.get(blobKey(descriptor.digest));
    if (raw) {
      const bytes = Buffer.from(raw, 'base64');
      if (sha256Digest(bytes) === descriptor.digest) return Readable.from([bytes]);
    }
    const chunks: Buffer[] = [];
    for await (const c of await this.inner.getBlob(descriptor, options)) chunks.push(c as Buffer);
    const bytes = Buffer.concat(chunks); // verified by the inner source as it streamed
    await this.cache.set(blobKey(descriptor.digest), bytes.toString('base64'));
    return Readable.from([bytes]);
  }

  repoTags(): readonly string[] {
    return this.inner.repoTags();
  }

  origins(): Record<string, string> {
    return this.inner.origins?.() ?? {};
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
