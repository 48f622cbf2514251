/**
 * What we learned compressing a layer for a destination: diff id → the compressed blob we stored
 * there. Lets a push of an uncompressed layer (docker save output) that was pushed before skip
 * compressing it again. Fed only with facts verified in this process, and never believed alone,
 * since a shared cache can be written by others: an entry is used only once the store confirms it
 * (and the proof image is taken from a cache only from this machine's own, see `local`).
 *
 * - Recorded with a proof (once the push that compressed the layer has committed its image): the
 *   entry names that image; it is believed when the image, verified against its digests, lists the
 *   blob where its config lists the diff id. Two small reads per image, from the store; none when
 *   the image is the one being pushed again and its manifest is in this machine's own cache (see
 *   `local`).
 * - Recorded as each layer is stored (a push killed before its manifest leaves only these): the
 *   entry is believed when the blob, read back from the store, decompresses to the diff id. Costs a
 *   read of the blob, still less than compressing and sending it again.
 *
 * A proof image's config is the word of whoever pushed it (a registry does not check diff ids), so
 * an entry from a shared cache (Redis) is believed on its proof only when that image is in the
 * repository being pushed to (who can push there can change its tags anyway) or this machine's own
 * push committed it (`provenHereKey`, on the local disk); otherwise its blob is read back, as an
 * entry without a proof is. Else whoever can write Redis and push to any one repository of the
 * store could have a push record a layer of their making: an image whose config lies about its
 * layers would be proof enough.
 *
 * A forged or stale entry is a miss: the layer is compressed again.
 */
import { finished } from 'node:stream/promises';
import { parseImageConfig } from '../oci/config.js';
import { parseDigest, sha256Digest, type Digest } from '../oci/digest.js';
import type { ImageSource } from '../oci/image.js';
import type { Descriptor, ParsedManifest } from '../oci/manifest.js';
import { layerCompression, layerMediaType } from '../oci/mediatypes.js';
import { readBlob } from '../oci/partial.js';
import type { CompressionFormat } from '../pipeline/compressor.js';
import { layerFromDescriptor } from '../pipeline/layers.js';
import { isValidRepository } from '../oci/reference.js';
import { cachedManifest, rememberManifest } from './cached-source.js';
import { archiveMemberKey, compressedKey, locationKey, provenHereKey } from './keys.js';
import type { MetadataCache } from './metadata-cache.js';

/** An image the store holds that shows what its layers were compressed to: written and tagged by the push that compressed them. */
export interface LayerProof {
  repository: string;
  manifest: Digest;
}

/** The proof image's manifest as committed, kept in the local cache (see BlobInfoCache's `local`). */
export type ProofManifest = Pick<ParsedManifest, 'digest' | 'mediaType' | 'bytes'>;

/** What checking an entry needs of a destination: its scope, and a way to read what it holds. */
export interface ProvingStore {
  readonly cacheScope: string;
  /** The repository being written, where the store has repositories. */
  readonly repository?: string;
  /** The manifest the destination's tag names now, when it holds it whole (see BlobDestination). */
  currentDigest?(): Promise<Digest | undefined>;
  storedSource?(repository: string): ImageSource;
}

interface Entry {
  digest: Digest;
  size: number;
  mediaType: string;
  /** The repository that holds the blob (and the proof image, when there is one). */
  repository: string;
  /** The proof image's manifest; absent: the blob itself is the evidence. */
  manifest?: Digest;
}

/** A config the caller holds, verified against its digest: a proof image naming it is read without reading it again. */
export interface KnownConfig {
  digest: Digest;
  diffIds: readonly Digest[];
}

/** A proof image as the store holds it: its layer blobs and, index for index, their diff ids. */
interface ProofImage {
  layers: readonly Descriptor[];
  diffIds: readonly Digest[];
}

const MAX_CONFIG = 8 * 1024 * 1024;

export class BlobInfoCache {
  /** Proof images read in this process (one read per image however many layers it shows). */
  private readonly proofs = new Map<string, Promise<ProofImage | undefined>>();
  /** Entries as read, so that recording the same fact again writes nothing. */
  private readonly seen = new Map<string, string>();
  /** compressedFor's answers, by key, until an entry is written there. */
  private readonly found = new Map<string, Promise<Descriptor | undefined>>();
  /** The layers of the image each destination's tag named when first asked (see inTaggedImage). */
  private readonly tagged = new WeakMap<ProvingStore, Promise<Map<Digest, Descriptor> | undefined>>();

  /**
   * `local`: the metadata cache on this machine's disk, which only this user's own runs write
   * (the same cache as `cache` unless that one is Redis, shared). A proof image's manifest is read
   * from it when there, verified against its digest: the bytes the store would answer, without the
   * round trip on the way to the first layer. Never from a shared cache, where whoever can write it
   * could name a manifest of their own making; the blob itself is still asked of the store (a
   * HEAD or a mount) before it is used. The manifest of every image recorded as a proof goes there,
   * and, when `cache` is shared, a mark that this machine committed it (see `believesProof`).
   * Absent, `cache` is taken to be shared.
   */
  constructor(
    private readonly cache: MetadataCache,
    private readonly local?: MetadataCache,
  ) {}

  private key(scope: string, diffId: Digest, format: CompressionFormat): string {
    return compressedKey(scope, diffId, format);
  }

  /**
   * The blob `diffId` was compressed to in `format` at `dest`, if `dest` itself confirms it (see
   * the module comment), as it was compressed (OCI media type: the manifest's family is chosen
   * when the image is written). A blob of another format is no answer: the push asked for this one. Whether the blob is still linked where it is needed is the caller's check.
   * `config`: the config of the image being pushed; a proof image that names it (the same image
   * pushed before, the usual case) is confirmed with one read, of its manifest.
   *
   * Asked once per diff id in this process until an entry for it is written: a push asks first
   * whether the tag already names the image (copy's convertedAlreadyThere), then, when it does
   * not, layer by layer; the second asking reads nothing again (no round trip to Redis, no
   * blob's head read from the store a second time).
   */
  compressedFor(dest: ProvingStore, diffId: Digest, format: CompressionFormat, signal?: AbortSignal, config?: KnownConfig): Promise<Descriptor | undefined> {
    const key = this.key(dest.cacheScope, diffId, format);
    let found = this.found.get(key);
    if (!found) {
      found = this.confirmCompressed(dest, key, diffId, format, signal, config);
      this.found.set(key, found);
      // A failure (a cancelled read) is not an answer: the next asking tries again.
      found.catch(() => this.found.get(key) === found && this.found.delete(key));
    }
    return found;
  }

  private async confirmCompressed(
    dest: ProvingStore,
    key: string,
    diffId: Digest,
    format: CompressionFormat,
    signal: AbortSignal | undefined,
    config: KnownConfig | undefined,
  ): Promise<Descriptor | undefined> {
    if (!dest.storedSource) return undefined;
    const raw = await this.cache.get(key);
    if (raw) this.seen.set(key, raw);
    return (raw ? await this.confirmEntry(dest, raw, diffId, format, signal, config) : undefined) ?? (await this.inTaggedImage(dest, diffId, format));
  }

  /** What an entry of the cache says `diffId` was compressed to, when the store confirms it. */
  private async confirmEntry(
    dest: ProvingStore,
    raw: string,
    diffId: Digest,
    format: CompressionFormat,
    signal: AbortSignal | undefined,
    config: KnownConfig | undefined,
  ): Promise<Descriptor | undefined> {
    const entry = parseEntry(raw);
    // An entry of another format under this key (written by an older version, or forged): a miss.
    if (!entry || layerCompression(entry.mediaType) !== format) return undefined;
    let found: Descriptor | undefined;
    if (entry.manifest && (await this.believesProof(dest, entry.repository, entry.manifest))) {
      const proof = await this.proofImage(dest, entry.repository, entry.manifest, config);
      const i = proof ? proof.layers.findIndex((l, i) => l.digest === entry.digest && proof.diffIds[i] === diffId) : -1;
      found = proof && i >= 0 ? proof.layers[i] : undefined;
    } else {
      const claimed = { mediaType: entry.mediaType, digest: entry.digest, size: entry.size };
      found = (await decompressesTo(dest, entry.repository, claimed, diffId, signal)) ? claimed : undefined;
    }
    return inFormat(found, format);
  }

  /**
   * The blob of `diffId` in the image the destination's tag names now, in the repository being
   * pushed to (a proof there is believed: see the module comment). A cache that knows nothing (a
   * new CI runner, no Redis) thus still spares compressing and sending again what the last push of
   * this tag stored: one read of the tag, its manifest and its config, once per push.
   */
  private async inTaggedImage(dest: ProvingStore, diffId: Digest, format: CompressionFormat): Promise<Descriptor | undefined> {
    let tagged = this.tagged.get(dest);
    if (!tagged) {
      tagged = taggedLayers(dest);
      this.tagged.set(dest, tagged);
    }
    return inFormat((await tagged)?.get(diffId), format);
  }

  /** Whether a proof image named by an entry may stand for its layers' diff ids (see the module comment). */
  private async believesProof(dest: ProvingStore, repository: string, manifest: Digest): Promise<boolean> {
    if (!this.shared || repository === dest.repository) return true;
    return (await this.local?.get(provenHereKey(dest.cacheScope, repository, manifest)).catch(() => undefined)) !== undefined;
  }

  /** Whether the entries come from a cache others may write (Redis), not only this user's own runs. */
  private get shared(): boolean {
    return this.local !== this.cache;
  }

  /**
   * The image that proved every one of `diffIds` at `scope` in `format`, when one image proved
   * them all, as the entries compressedFor read in this process say (no read of its own).
   */
  provenTogether(scope: string, diffIds: readonly Digest[], format: CompressionFormat): { repository: string; manifest: Digest } | undefined {
    let proof: { repository: string; manifest: Digest } | undefined;
    for (const diffId of diffIds) {
      const raw = this.seen.get(this.key(scope, diffId, format));
      const entry = raw === undefined ? undefined : parseEntry(raw);
      if (!entry?.manifest) return undefined;
      if (proof && (proof.repository !== entry.repository || proof.manifest !== entry.manifest)) return undefined;
      proof = { repository: entry.repository, manifest: entry.manifest };
    }
    return proof;
  }

  private proofImage(dest: ProvingStore, repository: string, manifest: Digest, config: KnownConfig | undefined): Promise<ProofImage | undefined> {
    // The same whichever way it is read: a config is the same bytes wherever its digest is.
    const key = `${dest.cacheScope} ${repository}@${manifest}`;
    let p = this.proofs.get(key);
    if (!p) {
      p = (async () => {
        const kept = this.local ? await cachedManifest(this.local, manifest, `${repository}@${manifest}`).catch(() => undefined) : undefined;
        if (kept?.kind === 'manifest' && config && kept.manifest.config.digest === config.digest) return { layers: kept.manifest.layers, diffIds: config.diffIds };
        return readProof(dest, repository, manifest, config);
      })();
      this.proofs.set(key, p);
    }
    return p;
  }

  /** Records, as soon as it is stored in `repository`, what a layer was compressed to (evidence: the blob itself). */
  async recordStored(scope: string, repository: string, diffId: Digest, compressed: Descriptor): Promise<void> {
    const format = compressedFormat(compressed);
    if (!format) return;
    await this.write([{ key: this.key(scope, diffId, format), entry: { digest: compressed.digest, size: compressed.size, mediaType: compressed.mediaType, repository } }]);
  }

  /**
   * Records what these diff ids were compressed to at `scope`, with the image that shows it (just
   * committed there). An entry that already says exactly this is not written again.
   */
  async recordProven(scope: string, layers: readonly { diffId: Digest; descriptor: Descriptor }[], proof: LayerProof, manifest?: ProofManifest): Promise<void> {
    // Written once: a push that changes nothing writes nothing.
    const local = this.local;
    const kept =
      manifest && local
        ? Promise.all([
            cachedManifest(local, manifest.digest, `${proof.repository}@${manifest.digest}`).then((there) => (there ? undefined : rememberManifest(local, manifest))),
            this.shared ? markProvenHere(local, provenHereKey(scope, proof.repository, manifest.digest)) : undefined,
          ]).catch(() => undefined)
        : undefined;
    await this.write(
      layers.flatMap((l) => {
        const format = compressedFormat(l.descriptor);
        return format ? [{ l, format }] : [];
      }).map(({ l, format }) => ({
        key: this.key(scope, l.diffId, format),
        entry: { digest: l.descriptor.digest, size: l.descriptor.size, mediaType: l.descriptor.mediaType, repository: proof.repository, manifest: proof.manifest },
      })),
    );
    await kept;
  }

  private async write(entries: { key: string; entry: Entry }[]): Promise<void> {
    const changed = entries.map(({ key, entry }) => ({ key, value: JSON.stringify(entry) })).filter((e) => this.seen.get(e.key) !== e.value);
    for (const e of changed) {
      this.seen.set(e.key, e.value);
      this.found.delete(e.key);
    }
    if (changed.length) await this.cache.setMany(changed);
  }

  /**
   * The diff id an older `docker save` member (`<v1 id>/layer.tar`) held when a push last read it
   * whole, from this machine's own cache: a hint, which the caller checks against the bytes.
   */
  async archiveMemberDiffId(member: string): Promise<Digest | undefined> {
    const v1Id = legacyMemberId(member);
    const raw = v1Id ? await (this.local ?? this.cache).get(archiveMemberKey(v1Id)) : undefined;
    try {
      return raw ? parseDigest(raw) : undefined;
    } catch {
      return undefined;
    }
  }

  /** Records what older `docker save` members held, as a push read them whole (other names are not recorded). */
  async recordArchiveMembers(members: readonly { member: string; diffId: Digest }[]): Promise<void> {
    const entries = members.flatMap(({ member, diffId }) => {
      const v1Id = legacyMemberId(member);
      return v1Id ? [{ key: archiveMemberKey(v1Id), value: diffId }] : [];
    });
    if (entries.length) await (this.local ?? this.cache).setMany(entries);
  }

  /** Forgets what a member was recorded to hold (its bytes said otherwise). */
  async forgetArchiveMember(member: string): Promise<void> {
    const v1Id = legacyMemberId(member);
    if (v1Id) await (this.local ?? this.cache).delete(archiveMemberKey(v1Id));
  }

  /** Repositories of a registry where a blob was seen (newest first), to mount it from. */
  async locations(scope: string, digest: Digest): Promise<string[]> {
    const raw = await this.cache.get(locationKey(scope, digest));
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
    await this.cache.set(locationKey(scope, digest), JSON.stringify(next));
  }
}

/** A stored blob as compressedFor answers it: in the format asked (OCI media type), else none. */
function inFormat(found: Descriptor | undefined, format: CompressionFormat): Descriptor | undefined {
  if (!found || layerCompression(found.mediaType) !== format) return undefined;
  return { mediaType: layerMediaType('oci', format), digest: found.digest, size: found.size };
}

/** Marks a proof image as this machine's own, once. */
async function markProvenHere(local: MetadataCache, key: string): Promise<void> {
  if ((await local.get(key)) === undefined) await local.set(key, '1');
}

/** The format a layer blob was compressed to, when one a push compresses to. */
function compressedFormat(blob: Descriptor): CompressionFormat | undefined {
  const c = layerCompression(blob.mediaType);
  return c === 'gzip' || c === 'zstd' ? c : undefined;
}

/** The v1 id of an older `docker save` layer member (`<v1 id>/layer.tar`). */
function legacyMemberId(member: string): string | undefined {
  return /^([0-9a-f]{64})\/layer\.tar$/.exec(member)?.[1];
}

function parseEntry(raw: string): Entry | undefined {
  try {
    const e = JSON.parse(raw) as Partial<Record<keyof Entry, unknown>>;
    if (typeof e.digest !== 'string' || typeof e.mediaType !== 'string' || !Number.isSafeInteger(e.size)) return undefined;
    if (typeof e.repository !== 'string' || !isValidRepository(e.repository)) return undefined;
    if (e.manifest !== undefined && typeof e.manifest !== 'string') return undefined;
    return {
      digest: parseDigest(e.digest),
      size: e.size as number,
      mediaType: e.mediaType,
      repository: e.repository,
      ...(e.manifest !== undefined ? { manifest: parseDigest(e.manifest as string) } : {}),
    };
  } catch {
    return undefined;
  }
}

/** Runs `read` over a source of `repository` in the store; any failure (gone, unreadable, not so) is undefined. */
async function reading<T>(dest: ProvingStore, repository: string, read: (source: ImageSource) => Promise<T | undefined>): Promise<T | undefined> {
  let source: ImageSource;
  try {
    source = dest.storedSource!(repository);
  } catch {
    return undefined;
  }
  try {
    return await read(source);
  } catch {
    return undefined;
  } finally {
    await source.close().catch(() => undefined);
  }
}

/**
 * The proof image read from the store, manifest and config verified against their digests; the
 * config not read when it is `known` (the manifest names the very config the caller verified).
 */
function readProof(dest: ProvingStore, repository: string, manifest: Digest, known: KnownConfig | undefined): Promise<ProofImage | undefined> {
  return reading(dest, repository, async (source) => {
    const m = await source.getManifestByDigest({ mediaType: '', digest: manifest, size: 0 });
    if (m.kind !== 'manifest' || m.digest !== manifest) return undefined;
    if (known && m.manifest.config.digest === known.digest) return { layers: m.manifest.layers, diffIds: known.diffIds };
    const configBytes = await readBlob(source, m.manifest.config, MAX_CONFIG);
    if (sha256Digest(configBytes) !== m.manifest.config.digest) return undefined;
    return { layers: m.manifest.layers, diffIds: parseImageConfig(configBytes).rootfs.diff_ids };
  });
}

/** Diff id → blob of the image the destination's tag names, read from the store; undefined when none can be read. */
async function taggedLayers(dest: ProvingStore): Promise<Map<Digest, Descriptor> | undefined> {
  if (!dest.repository || !dest.currentDigest) return undefined;
  const repository = dest.repository;
  const digest = await dest.currentDigest().catch(() => undefined);
  const image = digest ? await readProof(dest, repository, digest, undefined) : undefined;
  if (!image) return undefined;
  const layers = new Map<Digest, Descriptor>();
  image.layers.forEach((l, i) => {
    const diffId = image.diffIds[i];
    if (diffId) layers.set(diffId, l);
  });
  return layers;
}

/** Whether the stored blob `claimed` (digest and size verified as it streams) decompresses to `diffId`. */
async function decompressesTo(dest: ProvingStore, repository: string, claimed: Descriptor, diffId: Digest, signal?: AbortSignal): Promise<boolean> {
  const compression = layerCompression(claimed.mediaType);
  if (compression === undefined || compression === 'none') return false;
  const ok = await reading(dest, repository, async (source) => {
    const tar = await layerFromDescriptor(source, claimed, diffId).openUncompressed(signal ? { signal } : {});
    tar.resume();
    await finished(tar); // verified against the diff id: a mismatch errors instead of ending
    return true;
  });
  return ok === true;
}
