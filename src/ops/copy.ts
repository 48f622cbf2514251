/**
 * The copy engine behind `smart push`, `smart pull` and `smart cache pull`, after containers/image's
 * copy.go → single.go → blob.go: one image from any source to any destination. The layers of a
 * random-access source are known up front and move in parallel; those of a stream become known as
 * they arrive (go-containerregistry's stream.Layer) and move as they do. Every blob goes through the
 * same step: reuse, else put, then record. Blobs the destination has are reused, layers are
 * compressed only when it needs them compressed, and the manifest, then the tag, is written last.
 * Whole-image destinations (docker-archive, rootfs, bundle) take the resolved image at once.
 * Reports through callbacks; never prints.
 */
import { createHash } from 'node:crypto';
import { Readable, pipeline } from 'node:stream';
import { SmartError, isCancellation, isSmartError } from '../errors.js';
import { sha256Digest, shortDigest, type Digest } from '../oci/digest.js';
import {
  isImageWriter,
  isStreamed,
  type BlobDestination,
  type BlobReuse,
  type Destination,
  type Image,
  type ImageSource,
  type ImageWriter,
  type Layer,
  type LayerEvent,
  type LocalBlobs,
  type OpenOptions,
  type ProgressEvent,
  type Source,
  type StoredBlob,
  type StreamedImage,
  type StreamedImageSource,
  type StreamedIndexOnly,
  type StreamedIndex,
  type StreamedLayer,
} from '../oci/image.js';
import { parseManifest, serializeManifest, type Descriptor, type ImageManifest, type ParsedManifest } from '../oci/manifest.js';
import { configMediaType, isForeignLayer, layerCompression, layerMediaType, manifestFamily, manifestMediaType, MediaType, type Compression, type ManifestFamily } from '../oci/mediatypes.js';
import type { ImageConfig } from '../oci/config.js';
import { isContainerImage } from '../oci/partial.js';
import { configPlatform, formatPlatform, normalizePlatform, platformMatches, type Platform } from '../oci/platform.js';
import { layerCompressor, type CompressionFormat, type LayerCompressor } from '../pipeline/compressor.js';
import { TaskGroup } from '../pipeline/concurrency.js';
import { DigestStream } from '../pipeline/digest-stream.js';
import { counted, gunzipEngineFor, resolveImage, sniffedBlob } from '../pipeline/layers.js';
import type { GunzipEngine } from '../pipeline/parallel-gzip.js';
import type { BlobInfoCache, KnownConfig } from '../cache/blob-info.js';
import { CONTENT_ANNOTATION, STEP_ANNOTATION, type StepKey } from '../trie/layer-trie.js';
import { sleep } from '../transient.js';

export interface CopyOptions {
  /** The platform to pick from an index (unless `allPlatforms`), and to check a single-platform image against (`platformMismatch`). */
  platform: Platform;
  /**
   * Copy a whole multi-platform index (every manifest it names, the index bytes kept) instead of
   * one platform. `where-held`: only into a destination that holds the index's media type (an OCI
   * layout holds no Docker manifest list), else `platform` alone, said through `onWarning`.
   */
  allPlatforms?: boolean | 'where-held';
  /**
   * A single-platform image whose config names another platform than `platform`: refused
   * (`error`), copied with a warning (`warn`), or copied as it is (`ignore`, the default).
   */
  platformMismatch?: 'error' | 'warn' | 'ignore';
  /** Told of what the user should know that does not stop the copy (a platform mismatch let through). */
  onWarning?: (message: string) => void;
  /** Layers in flight at once. */
  jobs: number;
  /** The level of layers compressed here; 'fast': igzip in-process for gzip (ISA-L in the addon), level 1 for zstd. */
  gzipLevel?: number | 'fast';
  /** What uncompressed layers are compressed to for stores (default gzip). */
  compression?: CompressionFormat;
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
  /** The machine's kept blobs: a layer kept there is read there, and one fetched is kept when `keep` (see OpenOptions.localBlobs). */
  localBlobs?: { blobs: LocalBlobs; keep: boolean };
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
  compression?: { format: CompressionFormat; engine: string; implementation: string; level: number };
  details?: Record<string, unknown>;
}

/** A layer as it is at the destination: its blob there, and the tar inside. */
interface CopiedLayer {
  descriptor: Descriptor;
  diffId: Digest;
}

/** One copy under way: the tally of what each blob became, the events it tells, the compressor it chose. */
class CopyRun {
  pushed = 0;
  skipped = 0;
  mounted = 0;
  foreign = 0;
  bytes = 0;
  /** Set when layers were compressed here: which engine and level made them. */
  compression?: CopySummary['compression'];
  /** Uncompressed layers the destination now holds compressed (compressed here, or found compressed before). */
  readonly compressedHere: { diffId: Digest; descriptor: Descriptor }[] = [];
  /** The config of the image being copied (verified against its digest), once resolved: a proof image that names it needs no read of it. */
  config?: KnownConfig;

  constructor(readonly options: CopyOptions) {}

  /** What uncompressed layers are compressed to: a blob of another format is never reused for them. */
  get format(): CompressionFormat {
    return this.options.compression ?? 'gzip';
  }

  /** Blobs already told of (a stream's layers, stored as they passed): found again as present, they are not counted twice. */
  private told?: Set<string>;

  alreadyTold(digests: Set<string>): void {
    this.told = digests;
  }

  record(event: LayerEvent): void {
    if (event.status === 'skipped' && this.told?.has(event.digest)) return;
    if (event.status === 'pushed' || event.status === 'written') {
      this.pushed++;
      this.bytes += event.bytes;
    } else if (event.status === 'skipped') {
      this.skipped++;
      if (event.reuse?.how === 'mounted') this.mounted++;
    } else this.foreign++;
    this.options.onLayer?.(event);
  }

  async compressor(): Promise<LayerCompressor> {
    const c = await layerCompressor(this.options.compression, this.options.gzipLevel);
    this.compression = { format: c.format, engine: c.engine, implementation: c.implementation, level: c.level };
    if (this.options.onWarning) {
      // Said once per process (native.ts): compression runs slower than it could here, and what fixes it.
      const { nativeMissingWarning } = await import('../pipeline/native.js');
      const warning = nativeMissingWarning(c.format, c.format === 'zstd' ? 'in the zstd program' : c.engine === 'zlib' ? "on Node's zlib, slower" : `on ${c.implementation}`);
      if (warning) this.options.onWarning(warning);
    }
    return c;
  }

  summary(source: string, destination: string, done: { manifest: { digest: Digest; mediaType: string }; converted: boolean; config: 'pushed' | 'skipped' }, total: number): CopySummary {
    return {
      source,
      destination,
      manifestDigest: done.manifest.digest,
      manifestMediaType: done.manifest.mediaType,
      converted: done.converted,
      layers: { total, pushed: this.pushed, skipped: this.skipped, mounted: this.mounted, foreign: this.foreign, bytesPushed: this.bytes },
      config: done.config,
      ...(this.compression ? { compression: this.compression } : {}),
    };
  }
}

/**
 * Copies the image `source` names (one platform of an index, or all with `allPlatforms`) into
 * `dest`. A streamed source goes into content-addressed destinations only (a whole-image writer
 * needs the image before its layers). On failure a blob destination is aborted: nothing is tagged.
 */
export async function copy(source: Source, dest: Destination, options: CopyOptions): Promise<CopySummary> {
  const run = new CopyRun(options);
  if (isImageWriter(dest)) {
    if (isStreamed(source)) throw new SmartError('USAGE', `${source.name} (a stream) can only be copied into a store; save it to a file first`, { input: source.name });
    try {
      return await writeWhole(source, dest, run);
    } catch (e) {
      await dest.abandon?.().catch(() => undefined);
      throw e;
    }
  }
  try {
    if (isStreamed(source)) return await copyStream(source, dest, run);
    // Read here for every copy (resolveImage would read it; once is one round trip to a registry).
    const top = await source.getManifest();
    if (top.kind === 'index' && options.allPlatforms) {
      if (options.allPlatforms === true || dest.supportsManifestType(top.mediaType)) return await copyAsIs(source, dest, top, run);
      options.onWarning?.(`${dest.name} cannot hold a ${top.mediaType}: copying ${formatPlatform(normalizePlatform(options.platform))} only (--platform chooses another)`);
    }
    // An artifact (a signature, an SBOM, a chart) goes as it is, as in an index copied whole.
    if (top.kind === 'manifest' && !isContainerImage(top.manifest)) return await copyAsIs(source, dest, top, run);
    const image = await resolveImage(source, options.platform, top);
    checkPlatform(image.config, source.name, options);
    // An image copied as it is must be the one a REPO@DIGEST destination names: known now, before a blob is written.
    if (keepsManifest(image, dest) && !options.layerSteps) refuseUnnamed(dest, image.manifest.digest);
    run.config = { digest: image.manifest.manifest.config.digest, diffIds: image.config.rootfs.diff_ids };
    // With --dockerfile the image is written again with its steps (annotations, the trie's keys):
    // the same image already under the tag without them is not what this push writes.
    if (!options.layerSteps && (await alreadyThere(image, dest))) {
      for (const layer of image.layers) {
        run.record({ digest: layer.descriptor.digest, diffId: layer.diffId, status: 'skipped', reuse: { how: 'present' }, bytes: 0, mediaType: layer.descriptor.mediaType });
      }
      return run.summary(source.name, dest.name, { manifest: image.manifest, converted: false, config: 'skipped' }, image.layers.length);
    }
    const unchanged = options.layerSteps ? undefined : await convertedAlreadyThere(image, dest, run);
    if (unchanged) {
      image.layers.forEach((layer, i) => {
        const { descriptor } = unchanged.layers[i]!;
        run.record({ digest: descriptor.digest, layer: layer.descriptor.digest, diffId: layer.diffId, status: 'skipped', reuse: { how: 'present' }, bytes: 0, mediaType: descriptor.mediaType });
      });
      return run.summary(source.name, dest.name, { manifest: unchanged.manifest, converted: true, config: 'skipped' }, image.layers.length);
    }
    const group = new TaskGroup({ jobs: options.jobs, ...(options.signal ? { signal: options.signal } : {}) });
    // The config is in memory from the start: stored first, beside the layers, rather than after
    // them (to a registry a HEAD, or a POST and a PUT, fewer at the end), before the manifest
    // as ever. A task of the group, so a failure of either stops the other; but not one of the
    // --jobs layers in flight: holding a slot, it held the last layer of a four-layer image back
    // by its round trip (a mount push of the bench image: the fourth mount waited for it).
    const config = group.run((signal) => putConfig(dest, image.configBytes, image.manifest.manifest.config, options, signal), undefined, { slot: false });
    const layers = await group.all(
      image.layers,
      (layer, signal) => retrying(`layer ${shortDigest(layer.descriptor.digest)}`, signal, options, () => copyLayer(layer, dest, run, signal)),
      (layer) => layer.descriptor.digest,
    );
    return await finish(source.name, dest, image, layers, run, image.manifest, await config);
  } catch (e) {
    await dest.abort().catch(() => undefined);
    throw e;
  }
}

/**
 * A stream's layers, each stored as it arrives (compressed on the way when the destination wants
 * it), before the archive has ended; the image, which the archive reveals at its end, last.
 */
async function copyStream(source: StreamedImageSource, dest: BlobDestination, run: CopyRun): Promise<CopySummary> {
  const { options } = run;
  const members: { member: string; diffId: Digest }[] = [];
  /** The blobs the destination now holds of every layer the stream carried (other platforms' too). */
  const held = new Set<Digest>();
  /** Blobs the stream carried that the destination holds as something else: tars compressed on the way. */
  const changed = new Set<Digest>();
  // A layer holds the stream only until its bytes are read: its end (the compressor's last blocks,
  // the registry's PUT that checks and moves the blob, a file's commit) goes on in the group while
  // the next layer arrives. Each layer waited for the one before it to be stored: `docker save |
  // smart push docker://` of the bench image took 1.29 s against 1.05 s from the file.
  const group = new TaskGroup({ jobs: options.jobs, ...(options.signal ? { signal: options.signal } : {}) });
  const signal = group.signal;
  let streamed: StreamedImage<{ copying: Promise<StreamedCopy> }> | StreamedIndexOnly;
  try {
    streamed = await source.read(
      async (layer) => {
        const copying = group.run(async (s) => {
          const copied = await copyStreamedLayer(layer, dest, run, s).catch((e: unknown) => Promise.reject(unrepeatable(e, source.name)));
          if (copied.diffId) members.push({ member: layer.member, diffId: copied.diffId });
          held.add(copied.descriptor.digest);
          if (layer.namedDigest && copied.descriptor.digest !== layer.namedDigest) changed.add(layer.namedDigest);
          return copied;
        });
        // Read to its end (the reader may go on), or failed: then the read stops with its error.
        await Promise.race([readToEnd(layer.stream), copying]);
        // Boxed, so that the reader does not wait for it.
        return { copying };
      },
      { signal, platform: options.platform, wholeIndex: (top) => wholeIndex(top, dest, options) },
    );
    await group.settle();
  } catch (e) {
    // Nothing may still write when the caller aborts the destination: every layer stops first.
    group.fail(e);
    const first = await group.settle().then(
      () => e,
      (f: unknown) => f,
    );
    // The read stopped because a layer failed (or the caller cancelled): that is the cause.
    throw isCancellation(e) ? first : e;
  }
  if ('unpicked' in streamed) {
    // No image of this platform: the index whole, or nothing.
    if ((await blobsNamed(streamed.index, changed)).length > 0) throw streamed.unpicked;
    run.alreadyTold(held);
    return copyAsIs(streamed.index.source, dest, streamed.index.top, run);
  }
  const stored = await Promise.all(streamed.layers.map((l) => l.copying));
  const layers = stored.map((l, i): CopiedLayer => {
    const want = streamed.config.rootfs.diff_ids[i];
    if (want === undefined || (l.diffId !== undefined && l.diffId !== want)) {
      throw new SmartError('DIGEST_MISMATCH', `${source.name}: layer ${i + 1} hashes to ${l.diffId ?? l.descriptor.digest}, but the config says ${want ?? 'nothing'}`, { input: source.name });
    }
    return { descriptor: l.descriptor, diffId: want };
  });
  // What older `docker save` members held: for the next push of an image that shares them, or of
  // this one again (under another tag).
  await options.blobInfo?.recordArchiveMembers(members).catch(() => undefined);
  // Known only now, at the end of the stream: nothing is tagged yet, so a refusal leaves nothing behind.
  checkPlatform(streamed.config, source.name, options);
  // An index, as from the archive as a file, copied whole where the destination holds its type:
  // its blobs are stored by now, its manifests and configs in hand. Unless a blob it names went
  // into the destination compressed: the index cannot name it so.
  const index = streamed.index;
  if (index && wholeIndex(index.top, dest, options)) {
    const unsendable = await blobsNamed(index, changed);
    if (unsendable.length === 0) {
      run.alreadyTold(held);
      return copyAsIs(index.source, dest, index.top, run);
    }
    const why = `${unsendable.length === 1 ? `blob ${shortDigest(unsendable[0]!)} was` : `${unsendable.length} blobs were`} compressed here as the stream passed, and an index is copied byte for byte`;
    if (options.allPlatforms === true) {
      throw new SmartError('UNSUPPORTED', `${source.name}: cannot copy the whole index into ${dest.name}: ${why}`, { input: source.name, hint: 'save the archive to a file first, or pick one with --platform OS/ARCH[/VARIANT]' });
    }
    options.onWarning?.(`${source.name}: copying ${formatPlatform(normalizePlatform(options.platform))} only, not its whole index: ${why}`);
  }
  // The layers as the stream's manifest lists them where they are stored as they were (media type
  // and annotations kept, so that its bytes can be); as stored here where they were compressed.
  const manifest = streamed.manifest;
  const copied = layers.map((l, i): CopiedLayer => {
    const listed = manifest?.manifest.layers[i];
    if (!listed || listed.digest !== l.descriptor.digest) return l;
    if (listed.size !== l.descriptor.size) {
      throw new SmartError('MANIFEST_INVALID', `${source.name}: the manifest gives layer ${listed.digest} ${listed.size} bytes, the archive holds ${l.descriptor.size}`, { input: source.name });
    }
    return { descriptor: listed, diffId: l.diffId };
  });
  // The image as it stands at the destination, for step annotations and the layer trie.
  const unopenable = async (): Promise<Readable> => {
    throw new SmartError('INTERNAL', `${source.name}: a streamed layer cannot be read again`);
  };
  const config = manifest?.manifest.config ?? { mediaType: configMediaType('docker'), digest: sha256Digest(streamed.configBytes), size: streamed.configBytes.length };
  const image: Image = {
    name: source.name,
    manifest: manifest ?? buildManifest('docker', config, copied.map((l) => l.descriptor)),
    configBytes: streamed.configBytes,
    config: streamed.config,
    layers: copied.map((l) => ({ descriptor: l.descriptor, diffId: l.diffId, open: unopenable, openUncompressed: unopenable })),
    repoTags: streamed.repoTags,
  };
  return finish(source.name, dest, image, copied, run, manifest);
}

/** Whether an index goes whole into `dest`: asked for (`--all-platforms`), or by default where the destination holds its type. */
function wholeIndex(top: ParsedManifest, dest: BlobDestination, options: CopyOptions): boolean {
  return options.allPlatforms === true || (options.allPlatforms === 'where-held' && dest.supportsManifestType(top.mediaType));
}

/** The blobs of `among` that an index names, through its manifests (as the stream held them). */
async function blobsNamed(index: StreamedIndex, among: Set<Digest>): Promise<Digest[]> {
  const named: Digest[] = [];
  const walk = async (d: Descriptor): Promise<void> => {
    const m = await index.source.getManifestByDigest(d);
    if (m.kind === 'index') {
      for (const child of m.index.manifests) await walk(child);
      return;
    }
    for (const b of [m.manifest.config, ...m.manifest.layers]) if (among.has(b.digest)) named.push(b.digest);
  };
  if (among.size > 0) for (const child of index.top.index.manifests) await walk(child);
  return named;
}

/** Resolves the image and hands it to a whole-image writer, which fetches its layers itself. */
async function writeWhole(source: ImageSource, writer: ImageWriter, run: CopyRun): Promise<CopySummary> {
  const { options } = run;
  const image = await resolveImage(source, options.platform);
  checkPlatform(image.config, source.name, options);
  const result = await writer.write(image, {
    jobs: options.jobs,
    ...(options.signal ? { signal: options.signal } : {}),
    ...(options.localBlobs ? { localBlobs: options.localBlobs } : {}),
    ...(options.onProgress ? { onProgress: options.onProgress } : {}),
    onLayer: (e) => run.record(e),
  });
  const summary = run.summary(source.name, writer.name, { manifest: image.manifest, converted: false, config: 'pushed' }, image.layers.length);
  return result.details ? { ...summary, details: result.details } : summary;
}

/**
 * The last steps of a copy into a blob destination: the step annotations, the config (unless
 * `configStored`: stored beside the layers), the manifest (the source's bytes when nothing
 * changed), the tag; then what the cache learns.
 */
async function finish(
  sourceName: string,
  dest: BlobDestination,
  image: Image,
  copied: CopiedLayer[],
  run: CopyRun,
  manifest: Image['manifest'] | undefined,
  configStored?: 'pushed' | 'skipped',
): Promise<CopySummary> {
  const { options } = run;
  let layers = copied.map((l) => l.descriptor);
  if (options.layerSteps) layers = annotate(layers, await options.layerSteps(image));
  const family = manifest ? manifestFamily(manifest.mediaType) : 'docker';
  // Mounted here from another repository: no image of the tag held it, so the tag names another.
  const done = await commitImage(dest, { ...(manifest ? { manifest } : {}), family, configBytes: image.configBytes }, layers, options, configStored, run.pushed === 0 && run.mounted === 0);
  // What uncompressed layers became here, with the image just committed as the proof a later push
  // checks; and what the caller keeps of the image (the layer trie). Both at once: each is a few
  // small writes, which in Redis are round trips, added up on the way out of every push.
  const proven =
    options.blobInfo && dest.repository && run.compressedHere.length && done.manifest.kind === 'manifest'
      ? options.blobInfo.recordProven(dest.cacheScope, run.compressedHere, { repository: dest.repository, manifest: done.manifest.digest }, done.manifest)
      : undefined;
  const recorded = await Promise.allSettled([proven, options.onCopied?.({ image, layers, manifest: done.manifest })]);
  for (const r of recorded) if (r.status === 'rejected') throw r.reason;
  return run.summary(sourceName, dest.name, done, copied.length);
}

// ---------------------------------------------------------------------------------------------
// One blob: reuse, else put, then record.

/** The bytes of a blob to send: opened only when the destination does not have it. */
type Opener = (signal: AbortSignal | undefined) => Promise<Readable>;

/**
 * The destination's copy of `d` when it has one or can make one without the bytes, else the blob
 * stored from `open`. `verified`: what `open` gives is verified against `d` as it flows (a Layer's
 * open(), a source's getBlob), so the destination does not hash it again.
 */
async function reuseElsePut(d: Descriptor, open: Opener, dest: BlobDestination, signal: AbortSignal | undefined, verified: boolean): Promise<{ reuse: BlobReuse } | { stored: StoredBlob }> {
  const reuse = await dest.reuseBlob(d);
  if (reuse) return { reuse };
  return { stored: await dest.putBlob(await open(signal), { mediaType: d.mediaType, digest: d.digest, size: d.size, verified, ...(signal ? { signal } : {}) }) };
}

/** A blob that goes as it is (a layer the destination takes as stored, a blob of an index copied whole), recorded as a layer. */
async function sendBlob(d: Descriptor, open: Opener, dest: BlobDestination, run: CopyRun, signal: AbortSignal | undefined, diffId?: Digest): Promise<void> {
  if (isForeignLayer(d.mediaType)) return keepForeignLayer(d, dest, run);
  const r = await reuseElsePut(d, open, dest, signal, true);
  const known = { digest: d.digest, ...(diffId ? { diffId } : {}), mediaType: d.mediaType };
  run.record('reuse' in r ? { ...known, status: 'skipped', reuse: r.reuse, bytes: 0 } : { ...known, status: 'pushed', bytes: r.stored.size });
}

/**
 * A foreign (Windows base) layer stays where its URLs point, as every registry client leaves it.
 * One that names no URL can be fetched from nowhere: unless the destination holds it already, the
 * copy would tag a manifest whose blob exists nowhere, so it is refused.
 */
async function keepForeignLayer(d: Descriptor, dest: BlobDestination, run: CopyRun): Promise<void> {
  if (d.urls?.length) {
    run.record({ digest: d.digest, status: 'foreign', bytes: 0, mediaType: d.mediaType });
    return;
  }
  const reuse = await dest.reuseBlob(d);
  if (!reuse) {
    throw new SmartError('UNSUPPORTED', `layer ${d.digest} is foreign (${d.mediaType}) and names no URLs: ${dest.name} would get a manifest whose blob is nowhere`, {
      input: d.digest,
      hint: 'give the layer its URLs in the manifest, or make it a regular layer',
    });
  }
  run.record({ digest: d.digest, status: 'skipped', reuse, bytes: 0, mediaType: d.mediaType });
}

/**
 * A layer read from a stream, as the destination now holds it. No diff id for a compressed blob
 * that went as it is: the config's is taken, as for every source (see copyStreamedLayer).
 */
interface StreamedCopy {
  descriptor: Descriptor;
  diffId?: Digest;
}

/**
 * One layer of a stream into the destination, as it passes: skipped where the destination holds
 * what its name says (only hashed then), else stored, compressed on the way where the destination
 * wants it. Its name is a claim checked either way: an OCI manifest names the blob by it.
 */
async function copyStreamedLayer(layer: StreamedLayer, dest: BlobDestination, run: CopyRun, signal: AbortSignal | undefined): Promise<StreamedCopy> {
  // Progress: the bytes read from the stream, under the member's name (the digest comes at the end).
  const onProgress = run.options.onProgress;
  const bytes = onProgress ? counted(layer.stream, (n) => onProgress({ layer: layer.member, bytes: n })) : layer.stream;
  if (layer.opaque) return copyOpaqueBlob(layer, bytes, dest, run, signal);
  const reused = await reuseStreamedLayer(layer, bytes, dest, run, signal);
  if (reused) return reused;
  const named = layer.namedDigest;
  let copied: StreamedCopy;
  if (layer.compression !== 'none' && named) {
    // A compressed blob named by its digest (an OCI archive's, a containerd image store's save)
    // goes as it is, checked against that digest only: as from a file or a registry, the tar inside
    // is checked against the config's diff id where it is unpacked, not decompressed here to hash
    // it (that tripled the time of a push from a pipe).
    // Its digest told the destination: a registry takes it in one PUT (no PATCH, no hash state kept
    // between them), and every destination checks the bytes against it before keeping them.
    const mediaType = layerMediaType('oci', layer.compression);
    const stored = await dest.putBlob(bytes, { mediaType, digest: named, ...(layer.size !== undefined ? { size: layer.size } : {}), ...(signal ? { signal } : {}) }).catch((e: unknown) => {
      throw isSmartError(e) && (e.code === 'DIGEST_MISMATCH' || e.code === 'SIZE_MISMATCH') ? lyingName(layer, e) : e;
    });
    run.record({ digest: stored.digest, layer: layer.member, status: 'pushed', bytes: stored.size, mediaType });
    copied = { descriptor: { mediaType, digest: stored.digest, size: stored.size } };
  } else {
    copied = await putLayer(bytes, { compression: layer.compression, what: layer.what, named: layer.member, ...(layer.size !== undefined ? { size: layer.size } : {}) }, dest, run, signal);
  }
  const got = layer.compression === 'none' ? copied.diffId : copied.descriptor.digest;
  if (named && got !== named) throw lyingName(layer, got ?? 'nothing');
  return copied;
}

/** A streamed member whose bytes are not what its name says they are: `got` is their digest, or the destination's refusal of them. */
function lyingName(layer: StreamedLayer, got: string | SmartError): SmartError {
  // A destination's refusal names the digest it found, in its words: told in ours where it can be read.
  const found = typeof got === 'string' ? got : /hashes to (sha256:[0-9a-f]{64})/.exec(got.message)?.[1];
  const cause = typeof got === 'string' ? {} : { cause: got };
  if (found === undefined) {
    return new SmartError('CORRUPT_ARCHIVE', `${layer.what}: its bytes are not the ${layer.namedDigest} its name says (${(got as SmartError).message})`, { input: layer.member, ...cause });
  }
  return new SmartError('CORRUPT_ARCHIVE', `${layer.what}: its bytes hash to ${found}, not the ${layer.namedDigest} its name says`, { input: layer.member, ...cause });
}

/**
 * A blob of an OCI archive that is no layer (see StreamedLayer.opaque): as it is, under the digest
 * its name says, unless the destination holds it (then only hashed).
 */
async function copyOpaqueBlob(layer: StreamedLayer, bytes: Readable, dest: BlobDestination, run: CopyRun, signal: AbortSignal | undefined): Promise<StreamedCopy> {
  const named = layer.namedDigest;
  if (!named || layer.size === undefined) throw new SmartError('INTERNAL', `${layer.what}: an opaque blob is named by its digest and sized`);
  const descriptor: Descriptor = { mediaType: 'application/octet-stream', digest: named, size: layer.size };
  const reuse = await dest.reuseBlob(descriptor);
  const stored = reuse ? undefined : await dest.putBlob(bytes, { mediaType: descriptor.mediaType, ...(signal ? { signal } : {}) });
  const got = stored ? stored.digest : await hashStreamedLayer(bytes);
  if (got !== named) throw lyingName(layer, got);
  run.record(reuse ? { digest: named, status: 'skipped', reuse, bytes: 0, mediaType: descriptor.mediaType } : { digest: named, status: 'pushed', bytes: stored!.size, mediaType: descriptor.mediaType });
  return { descriptor };
}

/** One layer into the destination: the descriptor it has there, and its diff id. */
async function copyLayer(layer: Layer, dest: BlobDestination, run: CopyRun, signal: AbortSignal | undefined): Promise<CopiedLayer> {
  const desc = layer.descriptor;
  const open = (s: AbortSignal | undefined) => layer.open(openOptions(layer, run.options, s));
  const asItIs = async (): Promise<CopiedLayer> => {
    await sendBlob(desc, open, dest, run, signal, layer.diffId);
    // The destination's file of a blob fetched is kept as it is, in place of a second write of it.
    const kept = run.options.localBlobs?.blobs;
    if (kept?.adopt && dest.localBlobFile) await kept.adopt(dest.localBlobFile(desc.digest), desc);
    return { descriptor: desc, diffId: layer.diffId };
  };
  if (isForeignLayer(desc.mediaType) || layerCompression(desc.mediaType) !== 'none' || dest.layerCompression !== 'compress') return asItIs();
  // Compressed for this destination before (as an image there confirms)? Then it only has to still be there.
  const known = await run.options.blobInfo?.compressedFor(dest, layer.diffId, run.format, signal, run.config);
  const reuse = known && (await dest.reuseBlob(known));
  if (known && reuse) {
    run.record({ digest: known.digest, layer: desc.digest, diffId: layer.diffId, status: 'skipped', reuse, bytes: 0, mediaType: known.mediaType });
    run.compressedHere.push({ diffId: layer.diffId, descriptor: known });
    return { descriptor: { ...desc, ...known }, diffId: layer.diffId };
  }
  const { compression, blob } = await sniffedBlob(await open(signal));
  if (compression !== 'none') {
    // Compressed bytes under a media type that says plain tar: they go as they are, under their
    // descriptor (a reader decompresses by the first bytes, as containerd and every pull here do),
    // not compressed once more into a blob whose tar would be a gzip, not the config's diff id.
    blob.destroy();
    return asItIs();
  }
  // An uncompressed blob is its tar: open() verifies it against its digest, which is therefore the diff id.
  const stored = await putLayer(blob, { compression: 'none', verifiedDiffId: desc.digest, what: `layer ${shortDigest(desc.digest)}`, named: desc.digest }, dest, run, signal);
  return { descriptor: { ...desc, ...stored.descriptor }, diffId: stored.diffId };
}

/**
 * A streamed layer the destination holds already, as its name tells (Docker 25+ and
 * containers/image name a layer by its digest: of the tar, or of the compressed blob that a
 * containerd image store saves as it is; Docker's older `<v1 id>/layer.tar`, by what a push read
 * under that name before): its bytes are hashed as they pass, not compressed nor stored nor sent.
 * They must hash to what the name claimed, or the push fails: the stream cannot be read again.
 * Undefined when the layer has to be stored (then nothing of it has been read).
 */
async function reuseStreamedLayer(layer: StreamedLayer, bytes: Readable, dest: BlobDestination, run: CopyRun, signal: AbortSignal | undefined): Promise<StreamedCopy | undefined> {
  if (layer.size === undefined) return undefined;
  const compressed = layer.compression !== 'none';
  const blobInfo = run.options.blobInfo;
  const claimed = layer.namedDigest ?? (compressed ? undefined : await blobInfo?.archiveMemberDiffId(layer.member));
  if (!claimed) return undefined;
  // A compressed layer is stored as it is, under its own digest; a tar, compressed where the destination wants it so.
  const descriptor: Descriptor | undefined = compressed
    ? { mediaType: layerMediaType('oci', layer.compression), digest: claimed, size: layer.size }
    : dest.layerCompression === 'compress'
      ? await blobInfo?.compressedFor(dest, claimed, run.format, signal)
      : { mediaType: MediaType.OCI_LAYER, digest: claimed, size: layer.size };
  const reuse = descriptor && (await dest.reuseBlob(descriptor));
  if (!descriptor || !reuse) return undefined;
  const blob = await hashStreamedLayer(bytes);
  if (blob !== claimed) {
    if (layer.namedDigest) throw lyingName(layer, blob);
    await blobInfo?.forgetArchiveMember(layer.member);
    throw new SmartError('DIGEST_MISMATCH', `${layer.what}: its bytes hash to ${blob}, not the ${claimed} a push read under that name before (that record is dropped: push again)`, { input: layer.member });
  }
  // An uncompressed layer's blob is its tar; a compressed one's diff id is the config's (see copyStreamedLayer).
  const diffId = compressed ? undefined : blob;
  run.record({ digest: descriptor.digest, layer: layer.member, ...(diffId ? { diffId } : {}), status: 'skipped', reuse, bytes: 0, mediaType: descriptor.mediaType });
  if (diffId && dest.layerCompression === 'compress') run.compressedHere.push({ diffId, descriptor });
  return { descriptor, ...(diffId ? { diffId } : {}) };
}

/** Resolves once `stream` has been read to its end; never if it is destroyed first (its reader's failure tells why). */
function readToEnd(stream: Readable): Promise<void> {
  return stream.readableEnded ? Promise.resolve() : new Promise((resolve) => stream.once('end', () => resolve()));
}

/** The digest of a streamed layer's bytes, read to the end. */
async function hashStreamedLayer(bytes: Readable): Promise<Digest> {
  // In this thread: it has nothing else to do meanwhile (measured: faster than the pool's hasher here).
  const blob = createHash('sha256');
  for await (const chunk of bytes as AsyncIterable<Buffer>) blob.update(chunk);
  return `sha256:${blob.digest('hex')}` as Digest;
}

/**
 * Puts a layer's bytes whose blob digest is not known yet: compressed on the way when the
 * destination wants layers compressed (the diff id hashed as the tar passes, unless verified
 * upstream), else as they are (the diff id learned by hashing, or by a decompressing tap). Then
 * records it, and what it was compressed to (at once, not only with the image: a push killed
 * before its manifest still spares the next one the work).
 */
async function putLayer(
  bytes: Readable,
  layer: { compression: Compression; verifiedDiffId?: Digest; what: string; named: string; size?: number },
  dest: BlobDestination,
  run: CopyRun,
  signal: AbortSignal | undefined,
): Promise<CopiedLayer> {
  const compressing = layer.compression === 'none' && dest.layerCompression === 'compress';
  let body: Readable;
  let mediaType: string;
  let diffIdOf: () => Digest;
  if (compressing) {
    const compressor = await run.compressor();
    const out = compressor.compress(bytes, layer.verifiedDiffId);
    [body, mediaType, diffIdOf] = [out.stream, compressor.mediaType, out.diffId];
  } else if (layer.compression === 'none') {
    const hash = new DigestStream();
    [body, mediaType, diffIdOf] = [pipeline(bytes, hash, () => undefined), MediaType.OCI_LAYER, () => hash.digest];
  } else {
    // Loaded here: it pulls in every decompressor, which a push that sends nothing never needs.
    const { DiffIdTap } = await import('../pipeline/compression.js');
    const tap = new DiffIdTap(layer.compression, layer.what, layer.size, await gunzipFor(layer.compression, layer.size));
    [body, mediaType, diffIdOf] = [pipeline(bytes, tap, () => undefined), layerMediaType('oci', layer.compression), () => tap.diffId()];
  }
  const stored = await dest.putBlob(body, { mediaType, ...(signal ? { signal } : {}) });
  const descriptor: Descriptor = { mediaType, digest: stored.digest, size: stored.size };
  const diffId = diffIdOf();
  if (compressing) {
    run.compressedHere.push({ diffId, descriptor });
    if (dest.repository) await run.options.blobInfo?.recordStored(dest.cacheScope, dest.repository, diffId, descriptor);
  }
  const named = layer.named !== stored.digest ? { layer: layer.named } : {};
  // Compressed here to the bytes the destination held already: told as found there, not as written.
  run.record(
    stored.present
      ? { digest: stored.digest, ...named, diffId, status: 'skipped', reuse: { how: 'present' }, bytes: 0, mediaType }
      : { digest: stored.digest, ...named, diffId, status: 'pushed', bytes: stored.size, mediaType },
  );
  return { descriptor, diffId };
}

/** The gzip decoder for a layer of `size` compressed bytes (see gunzipEngineFor); none for another format. */
async function gunzipFor(compression: Compression, size: number | undefined): Promise<GunzipEngine | undefined> {
  if (compression !== 'gzip') return undefined;
  const { chooseGunzip } = await import('../pipeline/parallel-gzip.js');
  return gunzipEngineFor(await chooseGunzip(), size ?? Number.MAX_SAFE_INTEGER);
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

function openOptions(layer: Layer, options: Pick<CopyOptions, 'onProgress' | 'localBlobs'>, signal: AbortSignal | undefined): OpenOptions {
  const { onProgress, localBlobs } = options;
  const { digest, size } = layer.descriptor;
  return {
    ...(signal ? { signal } : {}),
    ...(onProgress ? { onBytes: (bytes: number) => onProgress({ layer: digest, bytes, total: size }) } : {}),
    ...(localBlobs ? { localBlobs } : {}),
  };
}

/** Transfers of one blob, the first included: as many as the registry client's attempts at one request. */
const TRANSFER_ATTEMPTS = 5;

/**
 * Runs a blob transfer again, from the start (its source reopened, a new upload session), when it
 * failed on something transient: a connection reset or a stall mid-upload, a 5xx the client's own
 * retries did not outlast (not one whose step spent its attempts already: an S3 request that
 * stalled on each, sent again by the S3 client). Each new attempt is told to `onRetry` with the
 * failure that caused it.
 * `what` names the blob (`layer sha256:…`).
 */
async function retrying<T>(what: string, signal: AbortSignal | undefined, options: { onRetry?: (message: string) => void }, work: () => Promise<T>): Promise<T> {
  for (let i = 0; ; i++) {
    try {
      return await work();
    } catch (e) {
      if (!isSmartError(e) || !e.retryable || e.attemptsSpent || signal?.aborted || i >= TRANSFER_ATTEMPTS - 1) throw e;
      const delay = 300 * 2 ** i;
      options.onRetry?.(`${what}: ${e.message}; sending it again in ${(delay / 1000).toFixed(1)} s (attempt ${i + 2} of ${TRANSFER_ATTEMPTS})`);
      await sleep(delay, signal);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The image: config, manifest, tag.

/** Stores the config blob, sent again (it is in memory) on a transient failure, as layers are. */
async function putConfig(dest: BlobDestination, bytes: Buffer, descriptor: Descriptor, options: CopyOptions, signal = options.signal): Promise<'pushed' | 'skipped'> {
  return retrying(`config ${shortDigest(descriptor.digest)}`, signal, options, async () => {
    const r = await reuseElsePut(descriptor, async () => Readable.from([bytes]), dest, signal, false);
    return 'reuse' in r ? 'skipped' : 'pushed';
  });
}

/**
 * The config (unless `configStored`: stored already, beside the layers), then the manifest (the
 * source's, byte for byte, when the layers are as they were and the destination takes its type;
 * else one built for the layers as they are now), then the tag. `noBlobWritten`: every layer was
 * there already; then, when the config was too and the tag names this very manifest, nothing is
 * written (a push of an unchanged `docker save` stream, which cannot know its manifest before its
 * end, nor ask the tag first as a push from a file does: no PUT of the tag again on every run,
 * which needs push rights and which a registry of immutable tags refuses).
 */
async function commitImage(
  dest: BlobDestination,
  image: { manifest?: Image['manifest']; family: ManifestFamily; configBytes: Buffer },
  layers: Descriptor[],
  options: CopyOptions,
  configStored?: 'pushed' | 'skipped',
  noBlobWritten = false,
): Promise<{ manifest: ParsedManifest; converted: boolean; config: 'pushed' | 'skipped' }> {
  const source = image.manifest;
  const configDescriptor: Descriptor = source?.manifest.config ?? {
    mediaType: configMediaType(image.family),
    digest: sha256Digest(image.configBytes),
    size: image.configBytes.length,
  };
  const config = configStored ?? (await putConfig(dest, image.configBytes, configDescriptor, options));
  const { manifest, converted } = manifestFor(dest, image, configDescriptor, layers);
  if (noBlobWritten && config === 'skipped' && dest.currentDigest && (await dest.currentDigest()) === manifest.digest) return { manifest, converted, config };
  await dest.putManifest(manifest);
  await dest.commit(manifest);
  return { manifest, converted, config };
}

/**
 * The manifest that commits `layers` to `dest`: the source's, byte for byte, when the layers are as
 * they were and the destination takes its type; else one built for the layers as they are now.
 */
function manifestFor(
  dest: BlobDestination,
  image: { manifest?: Image['manifest']; family: ManifestFamily },
  configDescriptor: Descriptor,
  layers: Descriptor[],
): { manifest: ParsedManifest; converted: boolean } {
  const source = image.manifest;
  const unchanged =
    source !== undefined &&
    source.manifest.layers.every(
      (l, i) => l.digest === layers[i]?.digest && l.mediaType === layers[i]?.mediaType && JSON.stringify(l.annotations) === JSON.stringify(layers[i]?.annotations),
    );
  // byte for byte: digests and repo@sha256 pins survive the copy
  if (source && unchanged && dest.supportsManifestType(source.mediaType)) return { manifest: source, converted: false };
  // Docker's schema 2 has no zstd layer type: zstd layers go in an OCI manifest (as containers/image does).
  const preferred = layers.some((l) => layerCompression(l.mediaType) === 'zstd') ? 'oci' : image.family;
  return { manifest: buildManifest(targetFamily(dest, preferred), configDescriptor, layers, source?.manifest), converted: true };
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
  if (!dest.currentDigest || !keepsManifest(image, dest)) return false;
  return (await dest.currentDigest()) === image.manifest.digest;
}

/** Whether `image` goes into `dest` under its own manifest: of a type it holds, no layer to compress on the way. */
function keepsManifest(image: Image, dest: BlobDestination): boolean {
  if (!dest.supportsManifestType(image.manifest.mediaType)) return false;
  return !(dest.layerCompression === 'compress' && image.layers.some((l) => layerCompression(l.descriptor.mediaType) === 'none'));
}

/** Refuses, before anything is written, a manifest other than the one the destination's name requires (`REPO@sha256:…`). */
function refuseUnnamed(dest: BlobDestination, digest: Digest): void {
  if (dest.namedDigest && dest.namedDigest !== digest) {
    throw new SmartError('DIGEST_MISMATCH', `${dest.name}: the image is ${digest}, not the digest the destination names (nothing written)`, { input: dest.namedDigest });
  }
}

/**
 * alreadyThere for an image whose layers are compressed on the way (a `docker save` tar): the
 * manifest this copy would write, when the cache knows every layer's blob at the destination,
 * all of them proven by that very manifest committed to this repository (by an earlier push of
 * the same image), and the tag names it still. One manifest request in place of one per blob and
 * the manifest's PUT: CI pushes the `docker save` of an unchanged image on every run. Undefined,
 * having asked the destination nothing, unless the cache says it was so.
 */
async function convertedAlreadyThere(image: Image, dest: BlobDestination, run: CopyRun): Promise<{ manifest: ParsedManifest; layers: CopiedLayer[] } | undefined> {
  const { blobInfo, signal } = run.options;
  if (!blobInfo || !dest.currentDigest || !dest.repository || dest.layerCompression !== 'compress') return undefined;
  const toCompress = image.layers.filter((l) => !isForeignLayer(l.descriptor.mediaType) && layerCompression(l.descriptor.mediaType) === 'none');
  if (toCompress.length === 0) return undefined; // alreadyThere's case
  const known = new Map<Layer, Descriptor | undefined>();
  await Promise.all(toCompress.map(async (l) => known.set(l, await blobInfo.compressedFor(dest, l.diffId, run.format, signal, run.config))));
  const copied: CopiedLayer[] = [];
  for (const layer of image.layers) {
    const compressed = known.has(layer) ? known.get(layer) : layer.descriptor;
    if (!compressed) return undefined;
    copied.push({ descriptor: { ...layer.descriptor, ...compressed }, diffId: layer.diffId });
  }
  const proof = blobInfo.provenTogether(
    dest.cacheScope,
    toCompress.map((l) => l.diffId),
    run.format,
  );
  if (proof?.repository !== dest.repository) return undefined;
  let layers = copied.map((l) => l.descriptor);
  if (run.options.layerSteps) layers = annotate(layers, await run.options.layerSteps(image));
  const { manifest } = manifestFor(dest, { manifest: image.manifest, family: manifestFamily(image.manifest.mediaType) }, image.manifest.manifest.config, layers);
  if (manifest.digest !== proof.manifest || (await dest.currentDigest()) !== manifest.digest) return undefined;
  return { manifest, layers: copied };
}

/**
 * An index with every manifest it names, or one manifest that is not a container image (an
 * artifact), copied byte for byte (the index digest and every platform's manifest digest
 * survive): every blob opaque and first, each manifest after its blobs, the top one last.
 */
async function copyAsIs(source: ImageSource, dest: BlobDestination, top: ParsedManifest, run: CopyRun): Promise<CopySummary> {
  const { options } = run;
  if (!dest.supportsManifestType(top.mediaType)) {
    throw new SmartError('UNSUPPORTED', `${dest.name} cannot hold a ${top.mediaType}`, {
      input: dest.name,
      ...(top.kind === 'index' ? { hint: 'copy one platform: --platform OS/ARCH[/VARIANT]' } : {}),
    });
  }
  refuseUnnamed(dest, top.digest);
  const details = top.kind === 'index' ? { details: { platforms: indexPlatforms(top) } } : {};
  if (dest.currentDigest && (await dest.currentDigest()) === top.digest) {
    return { ...run.summary(source.name, dest.name, { manifest: top, converted: false, config: 'skipped' }, 0), ...details };
  }
  // One group for the whole index: a blob two platforms share is sent once.
  const group = new TaskGroup({ jobs: options.jobs, ...(options.signal ? { signal: options.signal } : {}) });
  let total = 0;
  const copyBlobs = (m: ParsedManifest & { kind: 'manifest' }) => {
    // Config and layers as opaque blobs: attestations and artifacts go along unchanged.
    total += m.manifest.layers.length;
    return group.all(
      [m.manifest.config, ...m.manifest.layers],
      (d, signal) => retrying(`blob ${shortDigest(d.digest)}`, signal, options, () => sendBlob(d, (s) => openIndexBlob(source, d, options, s), dest, run, signal)),
      (d) => d.digest,
    );
  };
  const copyManifest = async (descriptor: Descriptor): Promise<void> => {
    const m = await source.getManifestByDigest(descriptor);
    if (m.digest !== descriptor.digest) throw new SmartError('DIGEST_MISMATCH', `${source.name}: manifest ${descriptor.digest} hashes to ${m.digest}`);
    if (m.kind === 'index') {
      for (const child of m.index.manifests) await copyManifest(child);
    } else {
      await copyBlobs(m);
    }
    await dest.putManifest(m);
  };
  if (top.kind === 'index') {
    for (const child of top.index.manifests) await copyManifest(child);
  } else {
    await copyBlobs(top);
  }
  await dest.putManifest(top);
  await dest.commit(top);
  return { ...run.summary(source.name, dest.name, { manifest: top, converted: false, config: 'pushed' }, total), ...details };
}

/** A blob of an index copied whole, its bytes told to `onProgress` as they are read. */
async function openIndexBlob(source: ImageSource, d: Descriptor, options: CopyOptions, signal: AbortSignal | undefined): Promise<Readable> {
  const { onProgress } = options;
  return counted(await source.getBlob(d, signal ? { signal } : {}), onProgress && ((bytes) => onProgress({ layer: d.digest, bytes, total: d.size })));
}

/** The platforms an index names, attestations (`unknown/unknown`) left out. */
function indexPlatforms(top: ParsedManifest & { kind: 'index' }): string[] {
  return top.index.manifests.map((d) => (d.platform ? formatPlatform(normalizePlatform(d.platform)) : undefined)).filter((p): p is string => p !== undefined && p !== 'unknown/unknown');
}

/**
 * Checks the platform an image's config names against the one wanted, as
 * `options.platformMismatch` says: `error` refuses it, `warn` says so and lets it through, `ignore`
 * (no platform was asked for) lets it be. A config that names no platform is let be.
 */
export function checkPlatform(config: ImageConfig, name: string, options: Pick<CopyOptions, 'platform' | 'platformMismatch' | 'onWarning'>): void {
  const mismatch = options.platformMismatch ?? 'ignore';
  const have = configPlatform(config);
  if (mismatch === 'ignore' || !have || platformMatches(options.platform, have)) return;
  const message = `${name} is a ${formatPlatform(have)} image, not ${formatPlatform(normalizePlatform(options.platform))}`;
  if (mismatch === 'warn') {
    options.onWarning?.(`${message}; copying it as it is`);
    return;
  }
  throw new SmartError('PLATFORM_NOT_FOUND', message, {
    input: name,
    hint: `to copy it all the same: --platform ${formatPlatform(have)}, or --platform-mismatch=warn`,
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

/**
 * Builds (and validates) a manifest for `family` over the given config and layers. `from`: the
 * manifest it replaces, whose annotations, `subject` and `artifactType` an OCI manifest keeps (a
 * signature or attestation whose layers were compressed on the way still names the image it is
 * about, as containers/image keeps it); Docker's schema 2 has none of them.
 */
export function buildManifest(
  family: ManifestFamily,
  config: Descriptor,
  layers: Descriptor[],
  from?: Pick<ImageManifest, 'annotations' | 'subject' | 'artifactType'>,
): ParsedManifest & { kind: 'manifest' } {
  const kept = family === 'oci' ? from : undefined;
  const doc: ImageManifest = {
    schemaVersion: 2,
    mediaType: manifestMediaType(family),
    ...(kept?.artifactType !== undefined ? { artifactType: kept.artifactType } : {}),
    config: { mediaType: configMediaType(family), digest: config.digest, size: config.size },
    layers: layers.map((l) => convertLayerDescriptor(l, family)),
    ...(kept?.subject ? { subject: kept.subject } : {}),
    ...(kept?.annotations ? { annotations: kept.annotations } : {}),
  };
  const parsed = parseManifest(serializeManifest(doc), doc.mediaType);
  if (parsed.kind !== 'manifest') throw new SmartError('INTERNAL', 'built a manifest that parses as an index');
  return parsed as ParsedManifest & { kind: 'manifest' };
}
