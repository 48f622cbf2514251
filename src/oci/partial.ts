/**
 * What every random-access source shares, derived from its few methods (go-containerregistry's
 * `partial`), the pure part: choosing a platform out of an index, reading a small blob whole,
 * checking a manifest against its config, and whether a store holds a whole image. The part that
 * opens layer streams (verified, decompressed, ranged) is pipeline/layers.ts.
 */
import { SmartError, quoted } from '../errors.js';
import { checkSize } from '../limits.js';
import type { ImageConfig } from './config.js';
import type { Digest } from './digest.js';
import type { ImageSource } from './image.js';
import type { Descriptor, ImageIndex, ImageManifest, ParsedManifest } from './manifest.js';
import { MediaType, isForeignLayer, isIndexMediaType, layerCompression } from './mediatypes.js';
import { pickPlatform, type Platform } from './platform.js';

/** Reads a small blob (config) whole, verified. */
export async function readBlob(source: ImageSource, descriptor: Descriptor, limit: number): Promise<Buffer> {
  checkSize(descriptor.size, limit, `${source.name}: blob ${descriptor.digest}`, descriptor.digest);
  const chunks: Buffer[] = [];
  for await (const chunk of await source.getBlob(descriptor)) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** How deep indexes of indexes are followed (containerd follows them; a loop of them must end). */
const MAX_INDEX_DEPTH = 4;

/**
 * The manifest of one platform: the top manifest itself (`known`, when already read), or the pick
 * out of an index. An index whose entries are indexes (an index of indexes, which containerd
 * reads) is picked from as the manifests they hold, in order, the first match winning.
 */
export async function resolvePlatformManifest(
  source: ImageSource,
  platform: Platform,
  known?: ParsedManifest,
): Promise<ParsedManifest & { kind: 'manifest' }> {
  const top = known ?? (await source.getManifest());
  if (top.kind === 'manifest') return top;
  const index = top.index.manifests.some((d) => isIndexMediaType(d.mediaType)) ? await withNestedFlattened(source, top.index, 1) : top.index;
  const picked = pickPlatform(index, platform, source.name);
  const child = await verifiedManifest(source, picked);
  if (child.kind !== 'manifest') {
    throw new SmartError('UNSUPPORTED', `${source.name}: indexes nested deeper than ${MAX_INDEX_DEPTH} at ${picked.digest}`, { input: picked.digest });
  }
  return child;
}

async function verifiedManifest(source: ImageSource, d: Descriptor): Promise<ParsedManifest> {
  const m = await source.getManifestByDigest(d);
  if (m.digest !== d.digest) throw new SmartError('DIGEST_MISMATCH', `${source.name}: manifest ${d.digest} hashes to ${m.digest}`, { input: d.digest });
  return m;
}

/** `index` with each entry that is an index replaced by the entries it holds, down to MAX_INDEX_DEPTH. */
async function withNestedFlattened(source: ImageSource, index: ImageIndex, depth: number): Promise<ImageIndex> {
  const manifests: Descriptor[] = [];
  for (const d of index.manifests) {
    const nested = isIndexMediaType(d.mediaType) && depth <= MAX_INDEX_DEPTH ? await verifiedManifest(source, d) : undefined;
    if (nested?.kind === 'index') manifests.push(...(await withNestedFlattened(source, nested.index, depth + 1)).manifests);
    else manifests.push(d);
  }
  return { ...index, manifests };
}

/**
 * What makes a manifest an artifact (a signature, an SBOM, a Helm chart, an attestation) rather
 * than a container image: its config's media type when that is no image config (OCI's or
 * Docker's), else that of its first layer that is no layer tar; undefined for a container image.
 * A registry, a store or a layout holds an artifact as it is; nothing unpacks it.
 */
function artifactMark(m: ImageManifest): string | undefined {
  if (m.config.mediaType !== MediaType.OCI_CONFIG && m.config.mediaType !== MediaType.DOCKER_CONFIG) return m.config.mediaType;
  return m.layers.find((l) => layerCompression(l.mediaType) === undefined && !isForeignLayer(l.mediaType))?.mediaType;
}

export function isContainerImage(m: ImageManifest): boolean {
  return artifactMark(m) === undefined;
}

/** UNSUPPORTED unless `m` is a container image: what cannot be unpacked or converted, said as such. */
export function checkContainerImage(name: string, m: ImageManifest): void {
  const mark = artifactMark(m);
  if (mark === undefined) return;
  throw new SmartError('UNSUPPORTED', `${name} is not a container image but an artifact (${quoted(m.artifactType ?? mark, 100)}): it can be copied into a registry, a store or a layout, not unpacked or converted`, {
    input: name,
  });
}

export function checkLayersMatchConfig(name: string, manifest: ImageManifest, config: ImageConfig): void {
  if (manifest.layers.length !== config.rootfs.diff_ids.length) {
    throw new SmartError(
      'MANIFEST_INVALID',
      `${name}: the manifest has ${manifest.layers.length} layers but the config lists ${config.rootfs.diff_ids.length} diff ids`,
    );
  }
  for (const l of manifest.layers) {
    if (layerCompression(l.mediaType) === undefined && !isForeignLayer(l.mediaType)) {
      throw new SmartError('UNSUPPORTED', `${name}: layer ${l.digest} has unsupported media type ${quoted(l.mediaType, 100)}`, { input: l.digest });
    }
  }
}

/**
 * Whether a destination holds everything the manifest `digest` needs: the manifest itself (and,
 * for an index, every manifest it names, recursively) and every blob they reference (foreign
 * layers excepted). `manifest` answers undefined for a manifest that is not there (or not
 * readable as one: the full copy then decides); `blob` whether a blob is there in full. For destinations whose blobs can go
 * missing behind their back (a registry's storage, a layout directory): a tag that points at an
 * incomplete image is not "already there".
 */
export async function holdsImage(
  top: { digest: Digest; mediaType?: string },
  manifest: (descriptor: { digest: Digest; mediaType?: string }) => Promise<ParsedManifest | undefined>,
  blob: (descriptor: Descriptor) => Promise<boolean>,
  depth = 0,
): Promise<boolean> {
  const m = await manifest(top);
  if (!m || m.digest !== top.digest) return false;
  if (m.kind === 'index') {
    // Content addressing rules out cycles; the bound only stops absurd nesting.
    if (depth >= 4) return false;
    const children = await Promise.all(m.index.manifests.map((d) => holdsImage(d, manifest, blob, depth + 1)));
    return children.every(Boolean);
  }
  const blobs = [m.manifest.config, ...m.manifest.layers.filter((l) => !isForeignLayer(l.mediaType))];
  return (await Promise.all(blobs.map(blob))).every(Boolean);
}
