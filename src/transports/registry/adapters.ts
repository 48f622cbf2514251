/** `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`: image source and destination over the Distribution API. */
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { SmartError } from '../../errors.js';
import { isDigest, shortDigest, type Digest } from '../../oci/digest.js';
import type { BlobDestination, BlobReuse, ImageSource, ManifestHead, OpenOptions, PutBlobInfo, StoredBlob } from '../../oci/image.js';
import { parseManifest, type Descriptor, type ParsedManifest } from '../../oci/manifest.js';
import { isImageManifestMediaType, isIndexMediaType } from '../../oci/mediatypes.js';
import { formatReference, type Reference } from '../../oci/reference.js';
import { verifiedStream } from '../../pipeline/digest-stream.js';
import type { RegistryClient } from './client.js';
import { isRegistryError } from './errors.js';

/** Manifest PUTs sent again when the registry finds a blob unknown (see sendManifest). */
const MANIFEST_BLOB_RETRIES = 2;

/** Where blobs were seen on a registry, so a push can mount instead of upload (a hint). */
export interface BlobLocations {
  locations(scope: string, digest: Digest): Promise<string[]>;
  recordLocation(scope: string, digest: Digest, repository: string): Promise<void>;
}

function nameOf(ref: Reference): string {
  return `docker://${formatReference(ref)}`;
}

export class RegistrySource implements ImageSource {
  readonly name: string;

  /** `sharedClient`: the client belongs to someone else, and `close` leaves it open. */
  constructor(
    private readonly client: RegistryClient,
    private readonly ref: Reference,
    private readonly options: { sharedClient?: boolean } = {},
  ) {
    this.name = nameOf(ref);
  }

  async getManifest(): Promise<ParsedManifest> {
    const reference = this.ref.digest ?? this.ref.tag!;
    return this.fetch(reference, this.ref.digest);
  }

  async getManifestByDigest(descriptor: Descriptor): Promise<ParsedManifest> {
    return this.fetch(descriptor.digest, descriptor.digest, descriptor.mediaType);
  }

  /**
   * One HEAD, of the tag or of the digest (whether this repository holds it); undefined when the
   * registry has no such manifest or does not say its digest.
   */
  async headManifest(): Promise<ManifestHead | undefined> {
    const head = await this.client.headManifest(this.ref.repository, this.ref.digest ?? this.ref.tag!);
    // Asked by digest, a registry may leave out Docker-Content-Digest: the 200 says it is there.
    const digest = this.ref.digest && !head?.digest ? this.ref.digest : head?.digest;
    if (!head || !digest || !isDigest(digest)) return undefined;
    return { digest, ...(head.mediaType ? { mediaType: head.mediaType } : {}), ...(head.size > 0 ? { size: head.size } : {}) };
  }

  private async fetch(reference: string, digest: Digest | undefined, declared?: string): Promise<ParsedManifest> {
    const { bytes, mediaType } = await this.client.getManifest(this.ref.repository, reference);
    const parsed = parseManifest(bytes, declared ?? mediaType, `${this.name} (${digest ? shortDigest(digest) : reference})`);
    if (digest && parsed.digest !== digest) {
      throw new SmartError('DIGEST_MISMATCH', `${this.name}: the registry sent a manifest hashing to ${parsed.digest}, not ${digest}`, { input: digest });
    }
    return parsed;
  }

  async getBlob(descriptor: Descriptor, options?: OpenOptions): Promise<Readable> {
    const raw = this.client.openBlob(this.ref.repository, descriptor.digest, options?.signal);
    // Hashed on the pool: every chunk of an answer's body is a buffer of its own, never written again.
    return verifiedStream(raw, { digest: descriptor.digest, size: descriptor.size, what: `blob ${shortDigest(descriptor.digest)} of ${this.name}` }, { offThread: true });
  }

  /** One HEAD: a 404 is none; a redirect (to a storage backend) is the registry serving it. */
  async hasBlob(descriptor: Descriptor, options?: { signal?: AbortSignal }): Promise<boolean> {
    return (await this.client.headBlob(this.ref.repository, descriptor.digest, options?.signal)) !== undefined;
  }

  getBlobRange(descriptor: Descriptor, start: number, endInclusive: number, options?: OpenOptions): Promise<Buffer[]> {
    return this.client.getBlobRange(this.ref.repository, descriptor.digest, start, endInclusive, options?.signal);
  }

  repoTags(): readonly string[] {
    return this.ref.tag && !this.ref.digest ? [`${this.ref.registry}/${this.ref.repository}:${this.ref.tag}`] : [];
  }

  async close(): Promise<void> {
    if (!this.options.sharedClient) await this.client.close();
  }
}

export interface RegistryDestinationOptions {
  /** A repository of the same registry the source image lives in: blobs can be mounted from it. */
  mountFrom?: string;
  locations?: BlobLocations;
}

export class RegistryDestination implements BlobDestination {
  readonly name: string;
  readonly cacheScope: string;
  readonly layerCompression = 'compress' as const;
  readonly namedDigest?: Digest;
  readonly repository: string;
  /** Blobs this destination stored or mounted into its repository. */
  private readonly placed = new Set<Digest>();
  /** With a tag: the manifest last put, not sent yet (see putManifest). */
  private held: ParsedManifest | undefined;
  /**
   * Repositories a mount from was refused (the account may not read them: another team's, in a
   * metadata cache or Redis shared with it): not asked again in this push.
   */
  private readonly unreadable = new Set<string>();
  /** currentDigest's answer, until the commit moves the tag. */
  private tagAsked: Promise<Digest | undefined> | undefined;

  constructor(
    private readonly client: RegistryClient,
    private readonly ref: Reference,
    private readonly options: RegistryDestinationOptions = {},
  ) {
    this.name = nameOf(ref);
    this.cacheScope = `docker://${ref.registry}`;
    this.repository = ref.repository;
    if (ref.digest) this.namedDigest = ref.digest;
  }

  storedSource(repository: string): ImageSource {
    return new RegistrySource(this.client, { registry: this.ref.registry, repository }, { sharedClient: true });
  }

  supportsManifestType(mediaType: string): boolean {
    return isImageManifestMediaType(mediaType) || isIndexMediaType(mediaType);
  }

  /**
   * Present here, else mounted from another repository of this registry. A blob the cache saw in
   * this repository is HEADed first (a push again: one HEAD). One it saw elsewhere (or that the
   * source's repository holds) is mounted at once, as skopeo mounts: a 201 says all a HEAD would,
   * one round trip sooner; only when no mount answers is this repository asked. (Blobs this
   * destination stored or mounted itself count as seen here, with or without a cache.)
   */
  async reuseBlob(descriptor: Descriptor): Promise<BlobReuse | undefined> {
    const repo = this.ref.repository;
    const seen = (await this.options.locations?.locations(this.cacheScope, descriptor.digest)) ?? [];
    if (this.placed.has(descriptor.digest)) seen.push(repo);
    const candidates = new Set<string>();
    if (this.options.mountFrom && this.options.mountFrom !== repo) candidates.add(this.options.mountFrom);
    for (const r of seen) if (r !== repo) candidates.add(r);
    const present = async () => {
      const size = await this.client.headBlob(repo, descriptor.digest);
      return size !== undefined && (size === descriptor.size || size < 0);
    };
    const headFirst = candidates.size === 0 || seen.includes(repo);
    if (headFirst && (await present())) return { how: 'present' };
    for (const from of candidates) {
      if (this.unreadable.has(from)) continue;
      const mount = await this.client.mountBlob(repo, descriptor.digest, from);
      if (mount === 'forbidden') this.unreadable.add(from);
      if (mount === 'mounted') {
        this.placed.add(descriptor.digest);
        await this.options.locations?.recordLocation(this.cacheScope, descriptor.digest, repo);
        return { how: 'mounted', from };
      }
    }
    if (!headFirst && (await present())) return { how: 'present' };
    return undefined;
  }

  async putBlob(stream: Readable, info: PutBlobInfo): Promise<StoredBlob> {
    const stored = await this.client.uploadBlob(
      this.ref.repository,
      stream,
      {
        ...(info.digest ? { digest: info.digest } : {}),
        ...(info.size !== undefined ? { size: info.size } : {}),
        ...(info.verified ? { verified: true } : {}),
        what: `blob ${info.digest ? shortDigest(info.digest) : '(new)'}`,
      },
      info.signal,
    );
    this.placed.add(stored.digest);
    await this.options.locations?.recordLocation(this.cacheScope, stored.digest, this.ref.repository);
    return stored;
  }

  /**
   * By digest: stored but not yet tagged; `commit` moves the tag. With a tag to move, the last
   * manifest put is held until the next put or the commit: a PUT by tag stores the manifest and
   * moves the tag in one request, so the top manifest goes once, by tag, instead of twice.
   */
  async putManifest(manifest: ParsedManifest): Promise<void> {
    if (this.ref.tag) {
      await this.putHeld();
      this.held = manifest;
      return;
    }
    await this.sendManifest(manifest.digest, manifest);
  }

  /** The manifest putManifest holds back, if any, stored by digest. */
  private async putHeld(): Promise<void> {
    const m = this.held;
    this.held = undefined;
    if (m) await this.sendManifest(m.digest, m);
  }

  /**
   * PUT of a manifest, sent again after a moment (twice at most) when the registry answers that one
   * of its blobs is unknown or its link unreadable. The stock registry writes a repository's link
   * files in place: while another push mounts or uploads the same blob into the same repository,
   * its manifest check can read that link empty (400 DIGEST_INVALID, MANIFEST_BLOB_UNKNOWN). Two
   * pushes of one image to two tags at once met it; a blob that is really missing still fails,
   * with the registry's answer, half a second later.
   */
  private async sendManifest(reference: string, m: ParsedManifest): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.client.putManifest(this.ref.repository, reference, m.bytes, m.mediaType);
      } catch (e) {
        const racing = isRegistryError(e) && e.status === 400 && e.codes.some((c) => c === 'MANIFEST_BLOB_UNKNOWN' || c === 'DIGEST_INVALID');
        if (!racing || attempt > MANIFEST_BLOB_RETRIES) throw e;
        await sleep(100 * 2 ** attempt);
      }
    }
  }

  currentDigest(): Promise<Digest | undefined> {
    this.tagAsked ??= this.headTag();
    return this.tagAsked;
  }

  private async headTag(): Promise<Digest | undefined> {
    if (!this.ref.tag || this.ref.digest) return undefined;
    const head = await this.client.headManifest(this.ref.repository, this.ref.tag);
    return head?.digest && isDigest(head.digest) ? head.digest : undefined;
  }

  async commit(top: ParsedManifest): Promise<void> {
    if (this.ref.digest && this.ref.digest !== top.digest) {
      throw new SmartError('DIGEST_MISMATCH', `${this.name}: the copied manifest is ${top.digest}, not the digest the destination names`, { input: this.ref.digest });
    }
    if (this.held?.digest !== top.digest) await this.putHeld();
    this.held = undefined;
    this.tagAsked = undefined;
    if (this.ref.tag) await this.sendManifest(this.ref.tag, top);
  }

  async abort(): Promise<void> {
    this.held = undefined;
    // Uploads close themselves on failure; blobs already sent are unreferenced, as with skopeo.
  }

  async close(): Promise<void> {
    await this.client.close();
  }
}

export interface PullEndpoint {
  client: RegistryClient;
  ref: Reference;
  mirror: boolean;
}

/**
 * An image read from the first of several endpoints that has it: registry mirrors in order, then
 * the upstream (registries.conf, --registry-mirror). A mirror that is down, answers an error or
 * does not hold the image is skipped with one warning. Blobs come from the endpoint that served
 * the manifest, else from the next that has them; where each came from is reported.
 */
export class MirroredSource implements ImageSource {
  readonly name: string;
  private chosen = 0;
  private readonly origin = new Map<string, string>();

  constructor(
    private readonly endpoints: PullEndpoint[],
    private readonly warn: (message: string) => void,
  ) {
    this.name = nameOf(endpoints[endpoints.length - 1]!.ref);
  }

  private async firstThatAnswers<T>(what: string, order: number[], attempt: (e: PullEndpoint) => Promise<T>): Promise<T> {
    let lastError: unknown;
    for (const i of order) {
      const e = this.endpoints[i]!;
      try {
        const result = await attempt(e);
        this.chosen = i;
        return result;
      } catch (err) {
        lastError = err;
        if (i !== order[order.length - 1]) {
          this.warn(`${e.mirror ? 'mirror' : 'registry'} ${e.ref.registry} failed for ${what} (${(err as Error).message}); trying ${this.endpoints[order[order.indexOf(i) + 1]!]!.ref.registry}`);
        }
      }
    }
    throw lastError;
  }

  private order(): number[] {
    const rest = this.endpoints.map((_, i) => i).filter((i) => i !== this.chosen);
    return [this.chosen, ...rest];
  }

  async getManifest(): Promise<ParsedManifest> {
    return this.firstThatAnswers(
      'the manifest',
      this.endpoints.map((_, i) => i),
      (e) => new RegistrySource(e.client, e.ref).getManifest(),
    );
  }

  async getManifestByDigest(descriptor: Descriptor): Promise<ParsedManifest> {
    return this.firstThatAnswers(`manifest ${shortDigest(descriptor.digest)}`, this.order(), (e) => new RegistrySource(e.client, e.ref).getManifestByDigest(descriptor));
  }

  /** One HEAD at the first endpoint that knows the manifest; undefined when none does (getManifest then says why). */
  async headManifest(): Promise<ManifestHead | undefined> {
    return this.firstThatAnswers(
      'the manifest',
      this.endpoints.map((_, i) => i),
      async (e) => {
        const head = await new RegistrySource(e.client, e.ref).headManifest();
        if (!head) throw new SmartError('NOT_FOUND', `no manifest ${formatReference(e.ref)} (HEAD)`, { input: formatReference(e.ref) });
        return head;
      },
    ).catch(() => undefined);
  }

  async getBlob(descriptor: Descriptor, options?: OpenOptions): Promise<Readable> {
    const self = this;
    const what = `blob ${shortDigest(descriptor.digest)}`;
    async function* bytes(): AsyncGenerator<Buffer> {
      const order = self.order();
      for (const [n, i] of order.entries()) {
        const e = self.endpoints[i]!;
        let delivered = false;
        try {
          for await (const chunk of e.client.openBlob(e.ref.repository, descriptor.digest, options?.signal)) {
            if (!delivered) self.origin.set(descriptor.digest, e.ref.registry);
            delivered = true;
            yield chunk as Buffer;
          }
          return;
        } catch (err) {
          // Once bytes have flowed, another endpoint cannot continue this stream: give up here.
          if (delivered || n === order.length - 1 || options?.signal?.aborted) throw err;
          self.warn(`${e.mirror ? 'mirror' : 'registry'} ${e.ref.registry} failed for ${what} (${(err as Error).message}); trying ${self.endpoints[order[n + 1]!]!.ref.registry}`);
        }
      }
    }
    const raw = Readable.from(bytes(), { objectMode: false, highWaterMark: 256 * 1024 });
    return verifiedStream(raw, { digest: descriptor.digest, size: descriptor.size, what: `${what} of ${this.name}` }, { offThread: true });
  }

  /** Which registry each blob read so far came from (digest → host). */
  origins(): Record<string, string> {
    return Object.fromEntries(this.origin);
  }

  repoTags(): readonly string[] {
    const ref = this.endpoints[this.endpoints.length - 1]!.ref;
    return ref.tag && !ref.digest ? [`${ref.registry}/${ref.repository}:${ref.tag}`] : [];
  }

  async close(): Promise<void> {
    await Promise.all(this.endpoints.map((e) => e.client.close()));
  }
}
