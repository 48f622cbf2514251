/**
 * The copy engine behind `smart push` and `smart pull`: moves one image from a source to a
 * destination, layer by layer in parallel, reusing every blob the destination already has,
 * compressing or converting only when the destination needs it, and writing the manifest, then
 * the tag, last. Reports through callbacks; never prints.
 */
import { Readable, pipeline } from 'node:stream';
import { SmartError, isCancellation, isSmartError } from '../errors.js';
import { sha256Digest, shortDigest, type Digest } from '../oci/digest.js';
import type { BlobDestination, Image, ImageSource, ImageWriter, Layer, LayerEvent, OpenOptions, ProgressEvent, StreamedImageSource } from '../oci/image.js';
import { parseManifest, serializeManifest, type Descriptor, type ImageManifest, type ParsedManifest } from '../oci/manifest.js';
import {
  configMediaType,
  isForeignLayer,
  layerCompression,
  layerMediaType,
  manifestFamily,
  manifestMediaType,
  MediaType,
  type ManifestFamily,
} from '../oci/mediatypes.js';
import { resolveImage } from '../oci/partial.js';
import type { Platform } from '../oci/platform.js';
import type { CompressedLayerStream } from '../pipeline/layer-streams.js';
import { DigestStream } from '../pipeline/digest-stream.js';
import type { BlobInfoCache } from '../cache/blob-info.js';
import { CONTENT_ANNOTATION, STEP_ANNOTATION, type StepKey } from '../trie/layer-trie.js';

export interface CopyOptions {
  platform: Platform;
  /** Copy a whole multi-platform index (every manifest it names, the index bytes kept) instead of one platform. */
  allPlatforms?: boolean;
  /** Layers in flight at once. */
  jobs: number;
  gzipLevel?: number;
  /** What uncompressed layers are compressed to for stores (default gzip). */
  compression?: 'gzip' | 'zstd';
  signal?: AbortSignal;
  onLayer?: (event: LayerEvent) => void;
  onProgress?: (event: ProgressEvent) => void;
  /** The build steps that made the layers (`push --dockerfile`): written as layer annotations. */
  layerSteps?: (image: Image) => Promise<(StepKey | undefined)[]>;
  /** Told of the image as it now is at the destination (for the layer trie). */
  onCopied?: (copied: { image: Image; layers: Descriptor[]; manifest: ParsedManifest }) => Promise<void>;
  /** Remembers what uncompressed layers became at a destination, to skip compressing them again. */
  blobInfo?: BlobInfoCache;
  /** Told of each blob transfer started again after a transient failure, with the failure: retries are visible, not silent. */
  onRetry?: (message: string) => void;
}

export interface CopySummary {
  source: string;
  destination: string;
  manifestDigest: Digest;
  manifestMediaType: string;
  /** True when the manifest had to be rewritten (layers compressed, media types converted). */
  converted: boolean;
  layers: { total: number; pushed: number; skipped: number; mounted: number; foreign: number; bytesPushed: number };
  config: 'pushed' | 'skipped';
  /** How layers compressed here were compressed (absent: none was). */
  compression?: { format: 'gzip' | 'zstd'; engine: string; implementation: string; level: number };
  details?: Record<string, unknown>;
}

interface Tally {
  /** Set when layers were compressed here: which engine and level made them. */
  compression?: { format: 'gzip' | 'zstd'; engine: string; implementation: string; level: number };
  pushed: number;
  skipped: number;
  mounted: number;
  foreign: number;
  bytes: number;
  /** Uncompressed layers the destination now holds compressed (compressed here, or found compressed before). */
  compressedHere?: { diffId: Digest; descriptor: Descriptor }[];
}

function record(tally: Tally, event: LayerEvent, options: CopyOptions): void {
  if (event.status === 'pushed' || event.status === 'written') {
    tally.pushed++;
    tally.bytes += event.bytes;
  } else if (event.status === 'skipped') {
    tally.skipped++;
    if (event.reuse?.how === 'mounted') tally.mounted++;
  }
  else tally.foreign++;
  options.onLayer?.(event);
}

/** Does the work for each distinct digest once, however many times an image lists it. */
function singleFlight<T>(): (key: string, work: () => Promise<T>) => Promise<T> {
  const inFlight = new Map<string, Promise<T>>();
  return (key, work) => {
    let p = inFlight.get(key);
    if (!p) {
      p = work();
      inFlight.set(key, p);
    }
    return p;
  };
}

/** How this process compresses layers, chosen once: the engine is part of every layer it makes. */
interface Compressor {
  mediaType: string;
  engine: string;
  /** How the engine runs here: in-process, a program's path, node-zlib. */
  implementation: string;
  level: number;
  /** `verifiedDiffId`: the tar is verified against it upstream, so it is not hashed again. */
  compress(tar: Readable, verifiedDiffId?: Digest): CompressedLayerStream;
}

const compressors = new Map<string, Promise<Compressor>>();

/**
 * gzip on every core in fixed blocks (libdeflate in-process or as a program, else Node's zlib,
 * with output that does not depend on the core count), or zstd (libzstd in-process, else its
 * program).
 */
function compressorFor(options: CopyOptions): Promise<Compressor> {
  const key = `${options.compression ?? 'gzip'}:${options.gzipLevel ?? ''}`;
  let c = compressors.get(key);
  if (!c) {
    c = (async (): Promise<Compressor> => {
      if (options.compression === 'zstd') {
        const { requireZstd, DEFAULT_ZSTD_LEVEL } = await import('../pipeline/zstd.js');
        const zstd = await requireZstd();
        const level = options.gzipLevel ?? DEFAULT_ZSTD_LEVEL;
        return { mediaType: MediaType.OCI_LAYER_ZSTD, engine: 'zstd', implementation: zstd.implementation, level, compress: (tar, verifiedDiffId) => zstd.layerStream(tar, level, verifiedDiffId) };
      }
      const { chooseGzipEngine, gzipLayerStreamParallel } = await import('../pipeline/parallel-gzip.js');
      const engine = await chooseGzipEngine('auto');
      const level = options.gzipLevel ?? engine.defaultLevel;
      return { mediaType: MediaType.OCI_LAYER_GZIP, engine: engine.name, implementation: engine.implementation, level, compress: (tar, verifiedDiffId) => gzipLayerStreamParallel(tar, { engine, level, ...(verifiedDiffId ? { verifiedDiffId } : {}) }) };
    })();
    compressors.set(key, c);
    c.catch(() => compressors.delete(key));
  }
  return c;
}


/**
 * Runs `work` for every item, `jobs` at a time. The first failure aborts the others (through the
 * signal they get) and is thrown once all have stopped, so nothing still writes when the caller
 * cleans up and reports. What the others fail with once aborted never replaces it; nor does a
 * cancellation that came first from elsewhere replace a real failure (unless the caller cancelled).
 */
async function allOrNothing<I, T>(items: readonly I[], jobs: number, outer: AbortSignal | undefined, work: (item: I, signal: AbortSignal) => Promise<T>): Promise<T[]> {
  const controller = new AbortController();
  const signal = outer ? AbortSignal.any([outer, controller.signal]) : controller.signal;
  let failed = false;
  let firstError: unknown;
  const results = new Array<T>(items.length);
  let next = 0;
  // `jobs` workers taking the items in order (p-limit's package resolution alone cost a warm push ~3 ms).
  const worker = async (): Promise<void> => {
    for (let i = next++; i < items.length; i = next++) {
      if (signal.aborted) continue; // stopped by the first failure or by the caller
      try {
        results[i] = await work(items[i]!, signal);
      } catch (e) {
        if (!failed) {
          failed = true;
          firstError = e;
          controller.abort(e);
        } else if (isCancellation(firstError) && !isCancellation(e) && !outer?.aborted) {
          firstError = e;
        }
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(Math.max(1, jobs), items.length) }, worker));
  if (failed) throw firstError;
  // Cancelled by the caller between items: some were skipped, so there is no whole result.
  signal.throwIfAborted();
  return results;
}

/** Transfers of one blob, the first included: as many as the registry client's attempts at one request. */
const TRANSFER_ATTEMPTS = 5;

/**
 * Runs a blob transfer again, from the start (its source reopened, a new upload session), when it
 * failed on something transient: a connection reset or a stall mid-upload, a 5xx the client's own
 * retries did not outlast. Each new attempt is told to `onRetry` with the failure that caused it.
 * `what` names the blob (`layer sha256:…`).
 */
async function retrying<T>(what: string, signal: AbortSignal | undefined, options: { onRetry?: (message: string) => void }, work: () => Promise<T>): Promise<T> {
  for (let i = 0; ; i++) {
    try {
      return await work();
    } catch (e) {
      if (!isSmartError(e) || !e.retryable || signal?.aborted || i >= TRANSFER_ATTEMPTS - 1) throw e;
      const delay = 300 * 2 ** i;
      options.onRetry?.(`${what}: ${e.message}; sending it again in ${(delay / 1000).toFixed(1)} s (attempt ${i + 2} of ${TRANSFER_ATTEMPTS})`);
      await new Promise<void>((resolve, reject) => {
        const onAbort = () => {
          clearTimeout(timer);
          reject(signal!.reason as Error);
        };
        const timer = setTimeout(() => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        }, delay);
        signal?.addEventListener('abort', onAbort, { once: true });
      });
    }
  }
}

function openOptions(layer: Layer, options: { onProgress?: (e: ProgressEvent) => void }, signal: AbortSignal): OpenOptions {
  const { onProgress } = options;
  const { digest, size } = layer.descriptor;
  return onProgress ? { signal, onBytes: (bytes) => onProgress({ digest, bytes, total: size }) } : { signal };
}

/**
 * A foreign (Windows base) layer stays where its URLs point, as every registry client leaves it.
 * One that names no URL can be fetched from nowhere: unless the destination holds it already, the
 * copy would tag a manifest whose blob exists nowhere, so it is refused.
 */
async function keepForeignLayer(d: Descriptor, dest: BlobDestination, options: CopyOptions, tally: Tally): Promise<void> {
  if (d.urls?.length) {
    record(tally, { digest: d.digest, status: 'foreign', bytes: 0, mediaType: d.mediaType }, options);
    return;
  }
  const reuse = await dest.reuseBlob(d);
  if (!reuse) {
    throw new SmartError('UNSUPPORTED', `layer ${d.digest} is foreign (${d.mediaType}) and names no URLs: ${dest.name} would get a manifest whose blob is nowhere`, {
      input: d.digest,
      hint: 'give the layer its URLs in the manifest, or make it a regular layer',
    });
  }
  record(tally, { digest: d.digest, status: 'skipped', reuse, bytes: 0, mediaType: d.mediaType }, options);
}

/** The descriptor of one layer at the destination. */
async function transferLayer(layer: Layer, dest: BlobDestination, options: CopyOptions, tally: Tally, signal: AbortSignal): Promise<Descriptor> {
  const desc = layer.descriptor;
  if (isForeignLayer(desc.mediaType)) {
    await keepForeignLayer(desc, dest, options, tally);
    return desc;
  }
  const compression = layerCompression(desc.mediaType);
  if (compression === 'none' && dest.layerCompression === 'compress') {
    // Compressed for this destination before (as an image there confirms)? Then it only has to still be there.
    const known = await options.blobInfo?.compressedFor(dest, layer.diffId, signal);
    const reuse = known && (await dest.reuseBlob(known));
    if (known && reuse) {
      record(tally, { digest: known.digest, diffId: layer.diffId, status: 'skipped', reuse, bytes: 0, mediaType: known.mediaType }, options);
      (tally.compressedHere ??= []).push({ diffId: layer.diffId, descriptor: known });
      return { ...desc, ...known };
    }
    const compressor = await compressorFor(options);
    tally.compression = { format: options.compression ?? 'gzip', engine: compressor.engine, implementation: compressor.implementation, level: compressor.level };
    // An uncompressed blob is its tar: open() verifies it against its digest, which is therefore the diff id.
    const gz = compressor.compress(await layer.open(openOptions(layer, options, signal)), desc.digest);
    const stored = await dest.putBlob(gz.stream, { mediaType: compressor.mediaType, signal });
    const compressed: Descriptor = { ...desc, mediaType: compressor.mediaType, digest: stored.digest, size: stored.size };
    (tally.compressedHere ??= []).push({ diffId: gz.diffId(), descriptor: compressed });
    // At once, not only with the image: a push killed before its manifest still spares the next one the work.
    if (dest.repository) await options.blobInfo?.recordStored(dest.cacheScope, dest.repository, gz.diffId(), compressed);
    record(tally, { digest: stored.digest, diffId: gz.diffId(), status: 'pushed', bytes: stored.size, mediaType: compressor.mediaType }, options);
    return compressed;
  }
  const reuse = await dest.reuseBlob(desc);
  if (reuse) {
    record(tally, { digest: desc.digest, diffId: layer.diffId, status: 'skipped', reuse, bytes: 0, mediaType: desc.mediaType }, options);
    return desc;
  }
  const stored = await dest.putBlob(await layer.open(openOptions(layer, options, signal)), { mediaType: desc.mediaType, digest: desc.digest, size: desc.size, signal });
  record(tally, { digest: desc.digest, diffId: layer.diffId, status: 'pushed', bytes: stored.size, mediaType: desc.mediaType }, options);
  return desc;
}

/** Stores the config blob, sent again (it is in memory) on a transient failure, as layers are. */
async function putConfig(dest: BlobDestination, bytes: Buffer, descriptor: Descriptor, options: CopyOptions): Promise<'pushed' | 'skipped'> {
  return retrying(`config ${shortDigest(descriptor.digest)}`, options.signal, options, async () => {
    if (await dest.reuseBlob(descriptor)) return 'skipped';
    await dest.putBlob(Readable.from([bytes]), { mediaType: descriptor.mediaType, digest: descriptor.digest, size: descriptor.size, ...(options.signal ? { signal: options.signal } : {}) });
    return 'pushed';
  });
}

/** The manifest family to write: the source's when the destination takes it, else the other. */
function targetFamily(dest: BlobDestination, preferred: ManifestFamily): ManifestFamily {
  if (dest.supportsManifestType(manifestMediaType(preferred))) return preferred;
  const other: ManifestFamily = preferred === 'oci' ? 'docker' : 'oci';
  if (dest.supportsManifestType(manifestMediaType(other))) return other;
  throw new SmartError('UNSUPPORTED', `${dest.name} accepts neither OCI nor Docker manifests`);
}

function convertLayerDescriptor(d: Descriptor, family: ManifestFamily): Descriptor {
  if (isForeignLayer(d.mediaType)) {
    const mediaType = family === 'docker' ? MediaType.DOCKER_FOREIGN_LAYER : MediaType.OCI_LAYER_NONDIST_GZIP;
    return { ...d, mediaType };
  }
  return { ...d, mediaType: layerMediaType(family, layerCompression(d.mediaType) ?? 'gzip') };
}

/** Builds (and validates) a manifest for `family` over the given config and layers. */
export function buildManifest(
  family: ManifestFamily,
  config: Descriptor,
  layers: Descriptor[],
  annotations?: Record<string, string>,
): ParsedManifest & { kind: 'manifest' } {
  const doc: ImageManifest = {
    schemaVersion: 2,
    mediaType: manifestMediaType(family),
    config: { mediaType: configMediaType(family), digest: config.digest, size: config.size },
    layers: layers.map((l) => convertLayerDescriptor(l, family)),
    ...(annotations && family === 'oci' ? { annotations } : {}),
  };
  const parsed = parseManifest(serializeManifest(doc), doc.mediaType);
  if (parsed.kind !== 'manifest') throw new SmartError('INTERNAL', 'built a manifest that parses as an index');
  return parsed as ParsedManifest & { kind: 'manifest' };
}

async function finishImage(
  dest: BlobDestination,
  image: { manifest?: ParsedManifest & { kind: 'manifest' }; family: ManifestFamily; configBytes: Buffer },
  layers: Descriptor[],
  options: CopyOptions,
): Promise<{ manifest: ParsedManifest; converted: boolean; config: 'pushed' | 'skipped' }> {
  const source = image.manifest;
  const configDescriptor: Descriptor = source?.manifest.config ?? {
    mediaType: configMediaType(image.family),
    digest: sha256Digest(image.configBytes),
    size: image.configBytes.length,
  };
  const config = await putConfig(dest, image.configBytes, configDescriptor, options);
  const unchanged =
    source !== undefined &&
    source.manifest.layers.every(
      (l, i) => l.digest === layers[i]?.digest && l.mediaType === layers[i]?.mediaType && JSON.stringify(l.annotations) === JSON.stringify(layers[i]?.annotations),
    );
  let manifest: ParsedManifest;
  let converted = false;
  if (source && unchanged && dest.supportsManifestType(source.mediaType)) {
    manifest = source; // byte for byte: digests and repo@sha256 pins survive the copy
  } else {
    // Docker's schema 2 has no zstd layer type: zstd layers go in an OCI manifest (as containers/image does).
    const preferred = layers.some((l) => layerCompression(l.mediaType) === 'zstd') ? 'oci' : image.family;
    const family = targetFamily(dest, preferred);
    manifest = buildManifest(family, configDescriptor, layers, source?.manifest.annotations);
    converted = true;
  }
  await dest.putManifest(manifest);
  await dest.commit(manifest);
  return { manifest, converted, config };
}

/**
 * Tells the blob-info cache what uncompressed layers became at the destination, with the image
 * just committed there as the proof a later push checks before believing it.
 */
async function recordCompressed(dest: BlobDestination, tally: Tally, manifest: ParsedManifest, options: CopyOptions): Promise<void> {
  if (!options.blobInfo || !dest.repository || !tally.compressedHere?.length || manifest.kind !== 'manifest') return;
  await options.blobInfo.recordProven(dest.cacheScope, tally.compressedHere, { repository: dest.repository, manifest: manifest.digest });
}

/** Layer descriptors with the step that made each written as annotations. */
function annotate(layers: Descriptor[], steps: (StepKey | undefined)[]): Descriptor[] {
  return layers.map((d, i) => {
    const step = steps[i];
    if (!step) return d;
    return { ...d, annotations: { ...d.annotations, [STEP_ANNOTATION]: step.instruction, ...(step.contentDigest ? { [CONTENT_ANNOTATION]: step.contentDigest } : {}) } };
  });
}

/**
 * True when the copy would keep the manifest byte for byte and the destination's tag already
 * points at it: one manifest request instead of one per blob (the cron job keeping copies fresh).
 */
async function alreadyThere(image: Image, dest: BlobDestination): Promise<boolean> {
  if (!dest.currentDigest || !dest.supportsManifestType(image.manifest.mediaType)) return false;
  const needsCompression = dest.layerCompression === 'compress' && image.layers.some((l) => layerCompression(l.descriptor.mediaType) === 'none');
  if (needsCompression) return false;
  return (await dest.currentDigest()) === image.manifest.digest;
}

/**
 * Copies an index and everything it names, byte for byte (the index digest and every platform's
 * manifest digest survive): blobs first, each manifest after its blobs, the index last.
 */
async function copyIndexAsIs(source: ImageSource, dest: BlobDestination, top: ParsedManifest & { kind: 'index' }, options: CopyOptions, tally: Tally): Promise<CopySummary> {
  if (!dest.supportsManifestType(top.mediaType)) {
    throw new SmartError('UNSUPPORTED', `${dest.name} cannot hold a ${top.mediaType}; copy one platform (omit --all-platforms)`, { input: dest.name });
  }
  const base = { source: source.name, destination: dest.name, manifestDigest: top.digest, manifestMediaType: top.mediaType, converted: false };
  if (dest.currentDigest && (await dest.currentDigest()) === top.digest) {
    return { ...base, layers: { total: 0, pushed: 0, skipped: 0, mounted: 0, foreign: 0, bytesPushed: 0 }, config: 'skipped' };
  }
  const once = singleFlight<void>();
  let total = 0;
  const copyBlob = async (d: Descriptor, signal: AbortSignal): Promise<void> => {
    if (isForeignLayer(d.mediaType)) {
      await keepForeignLayer(d, dest, options, tally);
      return;
    }
    const reuse = await dest.reuseBlob(d);
    if (reuse) {
      record(tally, { digest: d.digest, status: 'skipped', reuse, bytes: 0, mediaType: d.mediaType }, options);
      return;
    }
    const stored = await dest.putBlob(await source.getBlob(d, { signal }), { mediaType: d.mediaType, digest: d.digest, size: d.size, signal });
    record(tally, { digest: d.digest, status: 'pushed', bytes: stored.size, mediaType: d.mediaType }, options);
  };
  const copyManifest = async (descriptor: Descriptor): Promise<void> => {
    const m = await source.getManifestByDigest(descriptor);
    if (m.digest !== descriptor.digest) throw new SmartError('DIGEST_MISMATCH', `${source.name}: manifest ${descriptor.digest} hashes to ${m.digest}`);
    if (m.kind === 'index') {
      for (const child of m.index.manifests) await copyManifest(child);
    } else {
      // Config and layers as opaque blobs: attestations and artifacts go along unchanged.
      const blobs = [m.manifest.config, ...m.manifest.layers];
      total += m.manifest.layers.length;
      await allOrNothing(blobs, options.jobs, options.signal, (d, signal) =>
        once(d.digest, () => retrying(`blob ${shortDigest(d.digest)}`, signal, options, () => copyBlob(d, signal))),
      );
    }
    await dest.putManifest(m);
  };
  for (const child of top.index.manifests) await copyManifest(child);
  await dest.putManifest(top);
  await dest.commit(top);
  return { ...base, layers: { total, pushed: tally.pushed, skipped: tally.skipped, mounted: tally.mounted, foreign: tally.foreign, bytesPushed: tally.bytes }, config: 'pushed' };
}

/** Copies the image `source` names (one platform of an index, or all with `allPlatforms`) into a content-addressed destination. */
export async function copyImage(source: ImageSource, dest: BlobDestination, options: CopyOptions): Promise<CopySummary> {
  const tally: Tally = { pushed: 0, skipped: 0, mounted: 0, foreign: 0, bytes: 0 };
  try {
    if (options.allPlatforms) {
      const top = await source.getManifest();
      if (top.kind === 'index') return await copyIndexAsIs(source, dest, top, options, tally);
    }
    const image = await resolveImage(source, options.platform);
    if (await alreadyThere(image, dest)) {
      for (const layer of image.layers) {
        record(tally, { digest: layer.descriptor.digest, diffId: layer.diffId, status: 'skipped', reuse: { how: 'present' }, bytes: 0, mediaType: layer.descriptor.mediaType }, options);
      }
      return summary(source.name, dest.name, { manifest: image.manifest, converted: false, config: 'skipped' }, image.layers.length, tally);
    }
    const once = singleFlight<Descriptor>();
    let layers = await allOrNothing(image.layers, options.jobs, options.signal, (layer, signal) =>
      once(layer.descriptor.digest, () => retrying(`layer ${shortDigest(layer.descriptor.digest)}`, signal, options, () => transferLayer(layer, dest, options, tally, signal))),
    );
    if (options.layerSteps) layers = annotate(layers, await options.layerSteps(image));
    const done = await finishImage(dest, { manifest: image.manifest, family: manifestFamily(image.manifest.mediaType), configBytes: image.configBytes }, layers, options);
    await recordCompressed(dest, tally, done.manifest, options);
    await options.onCopied?.({ image, layers, manifest: done.manifest });
    return summary(source.name, dest.name, done, image.layers.length, tally);
  } catch (e) {
    await dest.abort().catch(() => undefined);
    throw e;
  }
}

function summary(
  source: string,
  destination: string,
  done: { manifest: ParsedManifest; converted: boolean; config: 'pushed' | 'skipped' },
  total: number,
  tally: Tally,
): CopySummary {
  return {
    source,
    destination,
    manifestDigest: done.manifest.digest,
    manifestMediaType: done.manifest.mediaType,
    converted: done.converted,
    layers: { total, pushed: tally.pushed, skipped: tally.skipped, mounted: tally.mounted, foreign: tally.foreign, bytesPushed: tally.bytes },
    config: done.config,
    ...(tally.compression ? { compression: tally.compression } : {}),
  };
}

/**
 * Copies a `docker save` stream (stdin) into a content-addressed destination while it arrives:
 * each layer is compressed and stored as soon as its bytes come, before the archive has ended;
 * the manifest (which the archive reveals only at its end) is written last.
 */
export async function copyDockerArchiveStream(source: StreamedImageSource, dest: BlobDestination, options: CopyOptions): Promise<CopySummary> {
  const tally: Tally = { pushed: 0, skipped: 0, mounted: 0, foreign: 0, bytes: 0 };
  const sourceName = source.name;
  try {
    // Loaded here: it pulls in every compressor, which a push that sends nothing never needs.
    const { DiffIdTap } = await import('../pipeline/layer-streams.js');
    const streamed = await source.read(async (layer) => {
      const what = layer.what;
      if (layer.compression === 'none') {
        const compress = dest.layerCompression === 'compress';
        const compressor = compress ? await compressorFor(options) : undefined;
        if (compressor) tally.compression = { format: options.compression ?? 'gzip', engine: compressor.engine, implementation: compressor.implementation, level: compressor.level };
        const gz = compressor?.compress(layer.stream);
        const hash = gz ? undefined : new DigestStream();
        const body = gz ? gz.stream : pipeline(layer.stream, hash!, () => undefined);
        const mediaType = compressor?.mediaType ?? MediaType.OCI_LAYER;
        const stored = await dest.putBlob(body, { mediaType }).catch((e: unknown) => Promise.reject(unrepeatable(e, sourceName)));
        const diffId = gz ? gz.diffId() : hash!.digest;
        if (compress) {
          const compressed: Descriptor = { mediaType, digest: stored.digest, size: stored.size };
          (tally.compressedHere ??= []).push({ diffId, descriptor: compressed });
          if (dest.repository) await options.blobInfo?.recordStored(dest.cacheScope, dest.repository, diffId, compressed);
        }
        record(tally, { digest: stored.digest, diffId, status: 'pushed', bytes: stored.size, mediaType }, options);
        return { diffId, descriptor: { mediaType, digest: stored.digest, size: stored.size } satisfies Descriptor };
      }
      const tap = new DiffIdTap(layer.compression, what);
      const mediaType = layerMediaType('oci', layer.compression);
      const stored = await dest.putBlob(pipeline(layer.stream, tap, () => undefined), { mediaType }).catch((e: unknown) => Promise.reject(unrepeatable(e, sourceName)));
      record(tally, { digest: stored.digest, diffId: tap.diffId(), status: 'pushed', bytes: stored.size, mediaType }, options);
      return { diffId: tap.diffId(), descriptor: { mediaType, digest: stored.digest, size: stored.size } satisfies Descriptor };
    }, options.signal);
    streamed.layers.forEach((l, i) => {
      const want = streamed.config.rootfs.diff_ids[i];
      if (l.diffId !== want) {
        throw new SmartError('DIGEST_MISMATCH', `${sourceName}: layer ${i + 1} hashes to ${l.diffId}, but the config says ${want ?? 'nothing'}`, {
          input: sourceName,
        });
      }
    });
    // The image as it stands at the destination, for step annotations and the layer trie.
    const unopenable = async (): Promise<Readable> => {
      throw new SmartError('INTERNAL', `${sourceName}: a streamed layer cannot be read again`);
    };
    const image: Image = {
      name: sourceName,
      manifest: buildManifest('docker', { mediaType: configMediaType('docker'), digest: sha256Digest(streamed.configBytes), size: streamed.configBytes.length }, streamed.layers.map((l) => l.descriptor)),
      configBytes: streamed.configBytes,
      config: streamed.config,
      layers: streamed.layers.map((l) => ({ descriptor: l.descriptor, diffId: l.diffId, open: unopenable, openUncompressed: unopenable })),
      repoTags: streamed.repoTags,
    };
    let layers = streamed.layers.map((l) => l.descriptor);
    if (options.layerSteps) layers = annotate(layers, await options.layerSteps(image));
    const done = await finishImage(dest, { family: 'docker', configBytes: streamed.configBytes }, layers, options);
    await recordCompressed(dest, tally, done.manifest, options);
    await options.onCopied?.({ image, layers, manifest: done.manifest });
    return summary(sourceName, dest.name, done, streamed.layers.length, tally);
  } catch (e) {
    await dest.abort().catch(() => undefined);
    throw e;
  }
}

/**
 * A transient failure of a layer read from a stream, which cannot be read again: no longer
 * retryable, with a hint that says what to do instead.
 */
function unrepeatable(e: unknown, sourceName: string): unknown {
  if (!isSmartError(e) || !e.retryable) return e;
  return new SmartError(e.code, e.message, {
    ...(e.input !== undefined ? { input: e.input } : {}),
    cause: e,
    hint: `a layer read from ${sourceName} cannot be sent twice: run the push again, or save the archive to a file first (uploads from files are retried)`,
  });
}

/** Resolves the image and hands it to a whole-image writer (docker-archive, rootfs, bundle). */
export async function writeImage(source: ImageSource, writer: ImageWriter, options: CopyOptions): Promise<CopySummary> {
  const tally: Tally = { pushed: 0, skipped: 0, mounted: 0, foreign: 0, bytes: 0 };
  const image: Image = await resolveImage(source, options.platform);
  const result = await writer.write(image, {
    jobs: options.jobs,
    ...(options.signal ? { signal: options.signal } : {}),
    ...(options.onProgress ? { onProgress: options.onProgress } : {}),
    onLayer: (e) => record(tally, e, options),
  });
  return {
    source: source.name,
    destination: writer.name,
    manifestDigest: image.manifest.digest,
    manifestMediaType: image.manifest.mediaType,
    converted: false,
    layers: { total: image.layers.length, pushed: tally.pushed, skipped: tally.skipped, mounted: tally.mounted, foreign: tally.foreign, bytesPushed: tally.bytes },
    config: 'pushed',
    ...(result.details ? { details: result.details } : {}),
  };
}

