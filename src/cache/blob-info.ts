/**
 * What we learned compressing a layer for a destination: diff id → the compressed blob we stored
 * there. Lets a push of an uncompressed layer (docker save output) that was pushed before skip
 * compressing it again. Fed only with facts verified in this process, and never believed alone:
 * an entry names an image of the store that shows the fact (its manifest lists the blob where its
 * config lists the diff id), and is used only once that image, read from the store and verified
 * against its digests, confirms it. A forged or stale entry is a miss: the layer is compressed again.
 */
import { parseImageConfig } from '../oci/config.js';
import { parseDigest, sha256Digest, type Digest } from '../oci/digest.js';
import type { ImageSource } from '../oci/image.js';
import type { Descriptor } from '../oci/manifest.js';
import { layerCompression, layerMediaType } from '../oci/mediatypes.js';
import { readBlob } from '../oci/partial.js';
import { isValidRepository } from '../oci/reference.js';
import type { MetadataCache } from './metadata-cache.js';

/** An image the store holds that shows what a layer was compressed to: written and tagged by the push that compressed it. */
export interface LayerProof {
  repository: string;
  manifest: Digest;
}

/** What checking an entry needs of a destination: its scope, and a way to read an image it holds. */
export interface ProvingStore {
  readonly cacheScope: string;
  storedImage?(repository: string, digest: Digest): ImageSource;
}

interface Entry {
  digest: Digest;
  repository: string;
  manifest: Digest;
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

  constructor(private readonly cache: MetadataCache) {}

  private key(scope: string, diffId: Digest): string {
    return `compressed:v2:${scope}:${diffId}`;
  }

  /**
   * The blob `diffId` was compressed to at `dest`, if `dest` itself confirms it (see the module
   * comment); the descriptor is the store's. Whether the blob is still there is the caller's check.
   */
  async compressedFor(dest: ProvingStore, diffId: Digest): Promise<Descriptor | undefined> {
    const key = this.key(dest.cacheScope, diffId);
    const raw = await this.cache.get(key);
    if (!raw || !dest.storedImage) return undefined;
    this.seen.set(key, raw);
    const entry = parseEntry(raw);
    if (!entry) return undefined;
    const proof = await this.proofImage(dest, entry.repository, entry.manifest);
    const i = proof ? proof.layers.findIndex((l, i) => l.digest === entry.digest && proof.diffIds[i] === diffId) : -1;
    if (!proof || i < 0) return undefined;
    const { mediaType, digest, size } = proof.layers[i]!;
    // As it was compressed (OCI types): the manifest family is chosen when the image is written.
    const compression = layerCompression(mediaType);
    if (compression === undefined || compression === 'none') return undefined;
    return { mediaType: layerMediaType('oci', compression), digest, size };
  }

  private proofImage(dest: ProvingStore, repository: string, manifest: Digest): Promise<ProofImage | undefined> {
    const key = `${dest.cacheScope} ${repository}@${manifest}`;
    let p = this.proofs.get(key);
    if (!p) {
      p = readProof(dest, repository, manifest);
      this.proofs.set(key, p);
    }
    return p;
  }

  /**
   * Records what these diff ids were compressed to at `scope`, with the image that shows it (just
   * committed there). An entry that already says exactly this is not written again.
   */
  async record(scope: string, layers: readonly { diffId: Digest; descriptor: Descriptor }[], proof: LayerProof): Promise<void> {
    const entries = layers
      .map((l) => ({ key: this.key(scope, l.diffId), value: JSON.stringify({ digest: l.descriptor.digest, repository: proof.repository, manifest: proof.manifest } satisfies Entry) }))
      .filter((e) => this.seen.get(e.key) !== e.value);
    if (entries.length) await this.cache.setMany(entries);
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

function parseEntry(raw: string): Entry | undefined {
  try {
    const e = JSON.parse(raw) as { digest?: unknown; repository?: unknown; manifest?: unknown };
    if (typeof e.digest !== 'string' || typeof e.repository !== 'string' || !isValidRepository(e.repository) || typeof e.manifest !== 'string') return undefined;
    return { digest: parseDigest(e.digest), repository: e.repository, manifest: parseDigest(e.manifest) };
  } catch {
    return undefined;
  }
}

/** The proof image read from the store, manifest and config verified against their digests; undefined if it is not there. */
async function readProof(dest: ProvingStore, repository: string, manifest: Digest): Promise<ProofImage | undefined> {
  let source: ImageSource;
  try {
    source = dest.storedImage!(repository, manifest);
  } catch {
    return undefined; // a repository name the store refuses
  }
  try {
    const m = await source.getManifest();
    if (m.kind !== 'manifest' || m.digest !== manifest) return undefined;
    const configBytes = await readBlob(source, m.manifest.config, MAX_CONFIG);
    if (sha256Digest(configBytes) !== m.manifest.config.digest) return undefined;
    return { layers: m.manifest.layers, diffIds: parseImageConfig(configBytes).rootfs.diff_ids };
  } catch {
    return undefined; // gone, unreadable or not an image: the layer is compressed again
  } finally {
    await source.close().catch(() => undefined);
  }
}
