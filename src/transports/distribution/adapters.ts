/** `file:ROOT#REPO[:TAG|@DIGEST]` (and later `s3:`): image source and destination over a DistributionStore. */
import type { Readable } from 'node:stream';
import { SmartError, isSmartError } from '../../errors.js';
import type { Digest } from '../../oci/digest.js';
import { sha256Digest, shortDigest } from '../../oci/digest.js';
import type { BlobDestination, BlobReuse, ImageSource, ManifestHead, OpenOptions, PutBlobInfo, StoredBlob } from '../../oci/image.js';
import { parseManifest, type Descriptor, type ParsedManifest } from '../../oci/manifest.js';
import { isForeignLayer, isImageManifestMediaType, isIndexMediaType } from '../../oci/mediatypes.js';
import { formatReference, type Reference } from '../../oci/reference.js';
import { holdsImage } from '../../oci/partial.js';
import { verifiedStream } from '../../pipeline/digest-stream.js';
import type { Cleaned } from '../../storage/leftovers.js';
import type { DistributionStore, ReferencedBlob } from './store.js';

function refName(store: DistributionStore, ref: Reference): string {
  return `${store.name}#${formatReference(ref)}`;
}

export class DistributionSource implements ImageSource {
  readonly name: string;
  /** Ranged reads, for large blobs fetched in parallel: from S3, not from local files (StorageDriver.localFiles). */
  readonly getBlobRange?: ImageSource['getBlobRange'];

  constructor(
    private readonly store: DistributionStore,
    private readonly ref: Reference,
  ) {
    this.name = refName(store, ref);
    if (!store.driver.localFiles) this.getBlobRange = (descriptor, start, endInclusive) => this.readRange(descriptor, start, endInclusive);
  }

  async getManifest(): Promise<ParsedManifest> {
    const { repository, tag, digest } = this.ref;
    const d: Digest = digest ?? (await this.store.resolveTag(repository, tag!));
    return this.readManifest(d, undefined);
  }

  async getManifestByDigest(descriptor: Descriptor): Promise<ParsedManifest> {
    return this.readManifest(descriptor.digest, descriptor.mediaType);
  }

  /** The tag's `current/link`, or the digest's revision link (whether the repository holds it): one small read. Undefined when not linked. */
  async headManifest(): Promise<ManifestHead | undefined> {
    const { repository, tag, digest } = this.ref;
    if (digest) return (await this.store.isLinked(repository, digest, 'manifest')) ? { digest } : undefined;
    return { digest: await this.store.resolveTag(repository, tag!) };
  }

  private async readManifest(digest: Digest, mediaType: string | undefined): Promise<ParsedManifest> {
    const bytes = await this.store.getManifest(this.ref.repository, digest);
    // The digest first: bytes changed on the way or on disk are not the manifest named, whatever they parse to.
    const actual = sha256Digest(bytes);
    if (actual !== digest) throw new SmartError('DIGEST_MISMATCH', `${this.name}: manifest blob ${digest} hashes to ${actual}`, { input: digest });
    return parseManifest(bytes, mediaType, `${this.name} (${shortDigest(digest)})`);
  }

  async getBlob(descriptor: Descriptor, _options?: OpenOptions): Promise<Readable> {
    const what = `blob ${shortDigest(descriptor.digest)} of ${this.name}`;
    // The registry serves a blob to a repository only through its link; a store it would refuse, we refuse.
    if (!(await this.store.isLinked(this.ref.repository, descriptor.digest, 'layer'))) {
      throw new SmartError('NOT_FOUND', `${what} is not linked in the repository (the registry would answer BLOB_UNKNOWN)`, {
        input: descriptor.digest,
      });
    }
    let raw: Readable;
    try {
      raw = await this.store.openBlob(descriptor.digest);
    } catch (e) {
      if (isSmartError(e) && e.code === 'NOT_FOUND') {
        throw new SmartError('NOT_FOUND', `${what} is missing from the store`, { input: descriptor.digest });
      }
      throw e;
    }
    // Hashed on the pool: every chunk a driver reads (a file's, an S3 answer's) is a buffer of its own, never written again.
    return verifiedStream(raw, { digest: descriptor.digest, size: descriptor.size, what }, { offThread: true });
  }

  /** Linked in the repository (as the registry requires to serve it) and in the store. */
  async hasBlob(descriptor: Descriptor): Promise<boolean> {
    return (await this.store.isLinked(this.ref.repository, descriptor.digest, 'layer')) && (await this.store.blobSize(descriptor.digest)) !== undefined;
  }

  private async readRange(descriptor: Descriptor, start: number, endInclusive: number): Promise<Buffer[]> {
    const chunks: Buffer[] = [];
    let length = 0;
    for await (const c of await this.store.openBlob(descriptor.digest, start, endInclusive - start + 1)) {
      chunks.push(c as Buffer);
      length += (c as Buffer).length;
    }
    if (length !== endInclusive - start + 1) {
      throw new SmartError('SIZE_MISMATCH', `blob ${shortDigest(descriptor.digest)} of ${this.name}: short read at ${start}`, { input: descriptor.digest, retryable: true });
    }
    return chunks;
  }

  repoTags(): readonly string[] {
    return this.ref.tag && !this.ref.digest ? [`${this.ref.repository}:${this.ref.tag}`] : [];
  }

  async close(): Promise<void> {}
}

/**
 * What the repository must hold for `manifest` to be served whole: an index's manifests, linked as
 * revisions; an image's config and layers, linked as layers. A foreign layer with URLs is fetched
 * from them, never from the store.
 */
function referencedBlobs(manifest: ParsedManifest): ReferencedBlob[] {
  if (manifest.kind === 'index') return manifest.index.manifests.map((d) => ({ digest: d.digest, size: d.size, kind: 'manifest', what: 'manifest' }));
  const { config, layers } = manifest.manifest;
  return [
    { digest: config.digest, size: config.size, kind: 'layer', what: 'config' },
    ...layers.filter((l) => !(isForeignLayer(l.mediaType) && l.urls?.length)).map((l): ReferencedBlob => ({ digest: l.digest, size: l.size, kind: 'layer', what: 'layer' })),
  ];
}

export class DistributionDestination implements BlobDestination {
  readonly name: string;
  readonly cacheScope: string;
  readonly layerCompression = 'compress' as const;
  readonly namedDigest?: Digest;
  /** What the sweep of killed pushes' uploads removed, or why it could not. */
  private sweep: Promise<Cleaned[] | Error> | undefined;
  /** currentDigest's answer, until the commit moves the tag. */
  private tagAsked: Promise<Digest | undefined> | undefined;
  readonly repository: string;

  constructor(
    private readonly store: DistributionStore,
    private readonly ref: Reference,
    private readonly options: { onWarning?: (message: string) => void; onAbort?: () => Promise<void> } = {},
  ) {
    this.name = refName(store, ref);
    this.cacheScope = store.name;
    this.repository = ref.repository;
    if (ref.digest) this.namedDigest = ref.digest;
  }

  storedSource(repository: string): ImageSource {
    return new DistributionSource(this.store, { registry: '', repository });
  }

  /**
   * Starts removing what killed pushes left in the repository's uploads, alongside the copy (a
   * push that sends nothing waits for no listing). A failure there does not stop the push: it is
   * a warning once the push succeeded (cleaned), and nothing when the push fails, whose error
   * (most often the same cause: a wrong key, no bucket, the endpoint down) is the one line to say.
   */
  prepare(): void {
    this.sweep ??= this.store.removeStaleUploads(this.ref.repository).catch((e: unknown) => (e instanceof Error ? e : new Error(String(e))));
  }

  async cleaned(): Promise<Cleaned[]> {
    const swept = await this.sweep;
    if (swept instanceof Error) this.options.onWarning?.(`${this.name}: could not remove the leftovers of killed pushes: ${swept.message}`);
    return [...(Array.isArray(swept) ? swept : []), ...this.store.leftoversRemoved()];
  }

  supportsManifestType(mediaType: string): boolean {
    return isImageManifestMediaType(mediaType) || isIndexMediaType(mediaType);
  }

  async reuseBlob(descriptor: Descriptor): Promise<BlobReuse | undefined> {
    const repo = this.ref.repository;
    // Both asked at once (on S3 each is a request). A link without data would make the registry
    // fail the pull: the data decides.
    const [size, linked] = await Promise.all([this.store.blobSize(descriptor.digest), this.store.isLinked(repo, descriptor.digest, 'layer')]);
    if (size !== descriptor.size) return undefined;
    if (linked) return { how: 'present' };
    // Present for another repository: link it here, as a cross-repository mount does.
    await this.store.link(repo, descriptor.digest, 'layer');
    return { how: 'mounted' };
  }

  async putBlob(stream: Readable, info: PutBlobInfo): Promise<StoredBlob> {
    const stored = await this.store.writeBlob(this.ref.repository, stream, {
      ...(info.digest ? { digest: info.digest } : {}),
      ...(info.size !== undefined ? { size: info.size } : {}),
      ...(info.verified ? { verified: true } : {}),
      what: `blob ${info.digest ? shortDigest(info.digest) : '(new)'} for ${this.name}`,
    }, info.signal);
    await this.store.link(this.ref.repository, stored.digest, 'layer');
    return stored;
  }

  async putManifest(manifest: ParsedManifest): Promise<void> {
    await this.store.putManifest(this.ref.repository, manifest.bytes, referencedBlobs(manifest));
  }

  /**
   * The digest the tag points at, if the image there is whole: storage can lose a blob or a link
   * behind the registry's back (a cleanup by hand, a collection racing a push), and a push must
   * then put it back rather than find the tag unchanged and stop.
   */
  currentDigest(): Promise<Digest | undefined> {
    this.tagAsked ??= this.wholeTagged();
    return this.tagAsked;
  }

  private async wholeTagged(): Promise<Digest | undefined> {
    if (!this.ref.tag || this.ref.digest) return undefined;
    const repo = this.ref.repository;
    let digest: Digest;
    try {
      digest = await this.store.resolveTag(repo, this.ref.tag);
    } catch (e) {
      // A tag link that is not one (empty: a push killed while it wrote it into an S3 server that
      // writes objects in place) points nowhere: the push writes it again.
      if (isSmartError(e) && (e.code === 'NOT_FOUND' || e.code === 'MANIFEST_INVALID')) return undefined;
      throw e;
    }
    const manifest = async ({ digest: d, mediaType }: { digest: Digest; mediaType?: string }): Promise<ParsedManifest | undefined> => {
      try {
        return parseManifest(await this.store.getManifest(repo, d), mediaType, `${this.name} (${shortDigest(d)})`);
      } catch (e) {
        if (isSmartError(e) && (e.code === 'NOT_FOUND' || e.code === 'MANIFEST_INVALID' || e.code === 'UNSUPPORTED')) return undefined;
        throw e;
      }
    };
    // What the registry needs to serve a blob to the repository: its data, whole, and its link.
    const blob = async (d: Descriptor): Promise<boolean> => (await this.store.blobSize(d.digest)) === d.size && (await this.store.isLinked(repo, d.digest, 'layer'));
    return (await holdsImage({ digest }, manifest, blob)) ? digest : undefined;
  }

  async commit(top: ParsedManifest): Promise<void> {
    if (this.ref.digest && this.ref.digest !== top.digest) {
      throw new SmartError('DIGEST_MISMATCH', `${this.name}: the copied manifest is ${top.digest}, not the digest the destination names`, {
        input: this.ref.digest,
      });
    }
    this.tagAsked = undefined;
    if (this.ref.tag) await this.store.tag(this.ref.repository, this.ref.tag, top.digest, { bytes: top.bytes, references: referencedBlobs(top) });
  }

  async abort(): Promise<void> {
    // writeBlob removes its own upload directory on failure; blobs already stored are
    // content-addressed and unreferenced by any tag, as the registry leaves them too.
    await this.options.onAbort?.();
  }

  async close(): Promise<void> {
    await Promise.all([this.sweep, this.store.settled()]);
  }
}
