/**
 * What every random-access source shares, derived from its few methods (go-containerregistry's
 * `partial`): choosing a platform out of an index, fetching and checking the config, and making
 * Layer objects whose streams are verified. The compression and ranged-read pipelines are loaded
 * when a layer is first opened: a push that finds every blob in place never opens one.
 */
import { Transform, addAbortSignal, type Readable } from 'node:stream';
import { SmartError, quoted } from '../errors.js';
import { verifiedStream } from '../pipeline/digest-stream.js';
import { checkSize } from '../limits.js';
import { MAX_CONFIG_BYTES, parseImageConfig, type ImageConfig } from './config.js';
import { sha256Digest, shortDigest, type Digest } from './digest.js';
import type { Image, ImageSource, Layer, OpenOptions } from './image.js';
import type { Descriptor, ImageManifest, ParsedManifest } from './manifest.js';
import { isForeignLayer, layerCompression } from './mediatypes.js';
import { pickPlatform, type Platform } from './platform.js';

/** Reads a small blob (config) whole, verified. */
export async function readBlob(source: ImageSource, descriptor: Descriptor, limit: number): Promise<Buffer> {
  checkSize(descriptor.size, limit, `${source.name}: blob ${descriptor.digest}`, descriptor.digest);
  const chunks: Buffer[] = [];
  for await (const chunk of await source.getBlob(descriptor)) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** The manifest of one platform: the top manifest itself, or the pick out of an index. */
export async function resolvePlatformManifest(
  source: ImageSource,
  platform: Platform,
): Promise<ParsedManifest & { kind: 'manifest' }> {
  const top = await source.getManifest();
  if (top.kind === 'manifest') return top;
  const picked = pickPlatform(top.index, platform, source.name);
  const child = await source.getManifestByDigest(picked);
  if (child.digest !== picked.digest) {
    throw new SmartError('DIGEST_MISMATCH', `${source.name}: manifest ${picked.digest} hashes to ${child.digest}`, { input: picked.digest });
  }
  if (child.kind !== 'manifest') {
    throw new SmartError('UNSUPPORTED', `${source.name}: nested index ${picked.digest} for ${picked.platform?.architecture}`, { input: picked.digest });
  }
  return child;
}

/** A layer whose streams come from `source.getBlob` (verified by the source) and are decompressed here. */
export function layerFromDescriptor(source: ImageSource, descriptor: Descriptor, diffId: Digest): Layer {
  const what = `layer ${shortDigest(descriptor.digest)} of ${source.name}`;
  return {
    descriptor,
    diffId,
    open: async (options?: OpenOptions) => abortable(counted(await openBlob(source, descriptor, options), options?.onBytes), options?.signal),
    openUncompressed: async (options?: OpenOptions) => {
      const compression = layerCompression(descriptor.mediaType);
      if (compression === undefined) {
        throw new SmartError('UNSUPPORTED', `${what}: unknown layer media type ${quoted(descriptor.mediaType, 100)}`, { input: descriptor.digest });
      }
      const { decompress } = await import('../pipeline/compression.js');
      const gunzip = compression === 'gzip' ? await (await import('../pipeline/parallel-gzip.js')).chooseGunzip() : undefined;
      const blob = abortable(counted(await openBlob(source, descriptor, options), options?.onBytes), options?.signal);
      return verifyUncompressed(decompress(blob, compression, what, { compressedSize: descriptor.size, ...(gunzip ? { gunzip } : {}) }), diffId, what);
    },
  };
}

/** A blob's verified stream: large ones in parallel ranges where the source can read ranges. */
async function openBlob(source: ImageSource, descriptor: Descriptor, options?: OpenOptions): Promise<Readable> {
  if (!source.getBlobRange) return source.getBlob(descriptor, options);
  const { RANGED_CHUNK_SIZE, RANGED_CONCURRENCY, RANGED_MIN_SIZE, rangedStream } = await import('../pipeline/ranged.js');
  if (descriptor.size < RANGED_MIN_SIZE) return source.getBlob(descriptor, options);
  const raw = rangedStream(descriptor.size, (start, end) => source.getBlobRange!(descriptor, start, end, options), {
    chunkSize: RANGED_CHUNK_SIZE,
    concurrency: RANGED_CONCURRENCY,
    ...(options?.signal ? { signal: options.signal } : {}),
  });
  return verifiedStream(raw, { digest: descriptor.digest, size: descriptor.size, what: `blob ${shortDigest(descriptor.digest)} of ${source.name}` });
}

/** Destroys `stream` when `signal` aborts: every source then stops promptly (Ctrl-C, --timeout). */
function abortable(stream: Readable, signal: AbortSignal | undefined): Readable {
  return signal ? addAbortSignal(signal, stream) : stream;
}

/** `stream` as it is, or passed through a counter telling `onBytes` of every chunk. */
export function counted(stream: Readable, onBytes: ((n: number) => void) | undefined): Readable {
  if (!onBytes) return stream;
  const counter = new Transform({
    transform(chunk: Buffer, _e, cb) {
      onBytes(chunk.length);
      cb(null, chunk);
    },
  });
  counter.on('error', () => undefined); // delivered to the consumer through `errored`
  stream.on('error', (e) => counter.destroy(e));
  counter.on('close', () => stream.destroy());
  return stream.pipe(counter);
}

/** Verifies an uncompressed layer against its diff id as it streams. */
export function verifyUncompressed(tar: Readable, diffId: Digest, what: string): Readable {
  return verifiedStream(tar, { digest: diffId, what: `${what} (uncompressed)` });
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

/** Resolves a source to a single-platform image with its config fetched, verified and parsed. */
export async function resolveImage(source: ImageSource, platform: Platform): Promise<Image> {
  const manifest = await resolvePlatformManifest(source, platform);
  const configBytes = await readBlob(source, manifest.manifest.config, MAX_CONFIG_BYTES);
  if (sha256Digest(configBytes) !== manifest.manifest.config.digest) {
    throw new SmartError('DIGEST_MISMATCH', `${source.name}: config does not match ${manifest.manifest.config.digest}`);
  }
  const config = parseImageConfig(configBytes, `${source.name} config ${shortDigest(manifest.manifest.config.digest)}`);
  checkLayersMatchConfig(source.name, manifest.manifest, config);
  const layers = manifest.manifest.layers.map((d, i) => layerFromDescriptor(source, d, config.rootfs.diff_ids[i]!));
  return { name: source.name, manifest, configBytes, config, layers, repoTags: source.repoTags() };
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
