/** `push` and `pull`: one copy between any sensible pair of image names. */
import path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { SmartError, cannotTakeMore, machineRefusal, systemWords } from '../errors.js';
import type { Digest } from '../oci/digest.js';
import type { LayerEvent, ProgressEvent } from '../oci/image.js';
import { hostPlatform, parsePlatform, type Platform } from '../oci/platform.js';
import { openDestination, openSource, parseImageName, storeScope, transportOf, TRANSPORTS, type ImageName } from '../transports/all.js';
import type { OpenContext, RemoteOptions } from '../transports/transport.js';
import { copy, type CopyOptions, type CopySummary } from './copy.js';
import { layerStoreDir, localMetadata, openCache, registrySchemes } from './local-state.js';
import { defaultJobs } from '../pipeline/concurrency.js';
import { isImageWriter, isStreamed, type Image } from '../oci/image.js';
import type { MetadataCache } from '../cache/metadata-cache.js';
import { compressedFileAt } from '../storage/archive-file.js';
import { mkdirp } from '../storage/made-directories.js';
import { checkCompressionLevel } from '../pipeline/compressor.js';
import { decompressionBound } from '../limits.js';

export interface TransferRequest {
  mode: 'push' | 'pull';
  source: string;
  destination: string;
  /** `os/arch[/variant]`: copy this platform only (see choosePlatforms); absent: a push copies every platform, a pull the running machine's. */
  platform?: string | Platform;
  /** Copy every platform of a multi-platform image, keeping the index (what a push does by default; stores and layouts only). */
  allPlatforms?: boolean;
  /** A single-platform image of another platform than the one wanted: refused or let through with a warning (default: see choosePlatforms). */
  platformMismatch?: 'error' | 'warn';
  jobs?: number;
  /** The compression level; 'fast' (`--compression-level fast`): see CopyOptions. */
  gzipLevel?: number | 'fast';
  /** What uncompressed layers become in stores: gzip (default) or zstd. */
  compression?: 'gzip' | 'zstd';
  stdin?: Readable;
  stdout?: Writable;
  signal?: AbortSignal;
  /** Local state (the metadata cache); none is kept when absent. */
  cacheDir?: string;
  /** Share the metadata cache in Redis (`redis://`, `rediss://`, `redis+cluster://`) instead of the disk. */
  redisUrl?: string;
  /**
   * Use what the metadata cache learned of a source's tag within this many seconds without asking
   * the store (see CachedSourceOptions: the cache then decides which image the tag means). Default 0.
   */
  tagCacheTtlS?: number;
  /** Registry and S3 settings. */
  remote?: RemoteOptions;
  /** The local layer store for root filesystems and bundles (default: CACHE_DIR/layer-store; none without a cache dir). */
  layerStoreDir?: string;
  /** Hardlink files from the layer store into root filesystems (read-only uses). */
  link?: boolean;
  /** Keep the layers a root filesystem or bundle pull fetches in the layer store (default: see RootfsWriterOptions.keepLayers). */
  keepLayers?: boolean;
  /** Let `rootfs:`/`bundle:` replace a non-empty directory that no pull made. */
  force?: boolean;
  /** After the pull, remove from the layer store what no image used within this many ms uses. */
  pruneAgeMs?: number;
  /** The Dockerfile (and context) the image was built from: each layer is annotated with its step. */
  dockerfile?: { path: string; contextDir: string; stage?: string; buildArgs?: Record<string, string> };
  onLayer?: (event: LayerEvent) => void;
  onProgress?: (event: ProgressEvent) => void;
  onWarning?: (message: string) => void;
}

/** What a copy does with platforms: the one decision, taken before anything is read. */
export interface PlatformChoice {
  /** Copy a multi-platform index whole (`where-held`: when the destination holds its media type). */
  all: boolean | 'where-held';
  /** The platform picked from an index when not copying it whole, and checked against a single-platform image. */
  platform: Platform;
  /** A single-platform image of another platform: refused, let through with a warning, or copied as it is (nothing was asked). */
  mismatch: 'error' | 'warn' | 'ignore';
}

/**
 * Which platforms a copy takes. A push copies a multi-platform index whole (every platform, the
 * index bytes and digest kept: what `repo@sha256:` pins name), as `crane copy` does, and a
 * single-platform image as it is. `--platform` copies that platform only: picked from an index,
 * and a single-platform image of another platform is refused (`--platform-mismatch=warn` lets it
 * through with a warning), as `docker pull --platform` refuses it. A pull picks the running
 * machine's platform from an index (`--all-platforms` keeps the index, into a store or a layout);
 * a single-platform image of another platform than the machine's is pulled with a warning, since
 * that platform was a default, not a request (`--platform-mismatch=error` refuses it). Root
 * filesystems, bundles and docker-archives hold one image: always one platform.
 */
export function choosePlatforms(req: Pick<TransferRequest, 'mode' | 'platform' | 'allPlatforms' | 'platformMismatch'>, destination: ImageName): PlatformChoice {
  const oneImage = transportOf(destination).capabilities.holdsOneImage === true;
  if (req.allPlatforms && req.platform !== undefined) throw new SmartError('USAGE', '--platform copies one platform, --all-platforms every one: give one of them', { input: '--all-platforms' });
  if (req.allPlatforms && oneImage) {
    throw new SmartError('USAGE', `${destination.raw} holds one image: --all-platforms needs a store or a layout`, { input: '--all-platforms', hint: 'pick one with --platform OS/ARCH[/VARIANT]' });
  }
  if (req.platform !== undefined) {
    const platform = typeof req.platform === 'string' ? parsePlatform(req.platform) : req.platform;
    return { all: false, platform, mismatch: req.platformMismatch ?? 'error' };
  }
  const platform = hostPlatform();
  if (req.allPlatforms) return { all: true, platform, mismatch: 'ignore' };
  if (req.mode === 'push') return { all: oneImage ? false : 'where-held', platform, mismatch: req.platformMismatch ?? 'ignore' };
  return { all: false, platform, mismatch: req.platformMismatch ?? 'warn' };
}

async function stepsFor(image: Image, dockerfile: NonNullable<TransferRequest['dockerfile']>) {
  const { stepsForPush } = await import('./build-cache/steps.js');
  return stepsForPush(image, { dockerfile: dockerfile.path, contextDir: dockerfile.contextDir, ...(dockerfile.stage ? { stage: dockerfile.stage } : {}), ...(dockerfile.buildArgs ? { buildArgs: dockerfile.buildArgs } : {}) });
}

async function indexCopied(cache: MetadataCache, scope: string, ref: { repository: string; tag?: string }, copied: Parameters<NonNullable<CopyOptions['onCopied']>>[0]) {
  const { recordTag } = await import('../cache/cached-source.js');
  const { CachedTrieStore, indexedImageOf } = await import('../cache/trie-store.js');
  // What a push leaves in the store, as the trie records it (every push keeps the trie fresh).
  const trie = new CachedTrieStore(cache, scope);
  const layers = copied.image.layers.map((l, i) => ({ ...l, descriptor: copied.layers[i] ?? l.descriptor }));
  const [current] = await Promise.all([
    ref.tag ? trie.getImageRecords([{ repository: ref.repository, tag: ref.tag }]).then((r) => r[0]) : undefined,
    // Our own push moved the tag: what the cache last saw of it moves too (only `--tag-cache-ttl`
    // trusts that entry; everyone else asks the store).
    ref.tag ? recordTag(cache, scope, ref.repository, ref.tag, copied.manifest.digest) : undefined,
  ]);
  // The steps follow from the manifest and its config alone: the tag pushed again with the same
  // manifest keeps those its record holds, without loading the Dockerfile parser to find them.
  // (A damaged record is a miss, like any cache entry.)
  const again =
    current?.ref?.manifest === copied.manifest.digest &&
    Array.isArray(current.layers) &&
    current.layers.length === layers.length &&
    current.layers.every((l, i) => l?.diffId === layers[i]!.diffId);
  const steps = again
    ? current.layers.map((l) => l.step)
    : await (await import('./build-cache/steps.js')).stepsOfImage({ ...copied.image, manifest: copied.manifest as Image['manifest'], layers });
  const at = { repository: ref.repository, ...(ref.tag ? { tag: ref.tag } : {}) };
  const { imageFacts } = await import('./build-cache/steps.js');
  await trie.addImage(indexedImageOf(at, copied.manifest.digest, layers, steps, [], await imageFacts(copied.image)), { current });
}

async function openLayerStore(dir: string) {
  const { LayerStore } = await import('../cache/layer-store.js');
  return new LayerStore(dir);
}

export async function transfer(request: TransferRequest): Promise<CopySummary> {
  // Warnings (retries, stalls, mirror fall-backs, a cache gone) go to the caller as they happen
  // and into the summary, so that --json shows them too.
  const warnings: string[] = [];
  const req: TransferRequest = {
    ...request,
    onWarning: (m) => {
      warnings.push(m);
      request.onWarning?.(m);
    },
  };
  const summary = await transferOnce(req);
  if (warnings.length) summary.details = { ...summary.details, warnings };
  return summary;
}

/** `oci:`, `docker://`...: how the names of these transports begin, for messages. */
function prefixes(transports: readonly { form: string }[]): string {
  return transports.map((t) => t.form.slice(0, t.form.indexOf(':') + 1) + (t.form.includes('://') ? '//' : '')).join(', ');
}

/** The command that decompresses an archive beside itself, keeping it. */
const UNPACK_COMMAND = { gzip: 'gunzip -k', zstd: 'zstd -d', bzip2: 'bunzip2 -k', xz: 'unxz -k' } as const;

async function transferOnce(req: TransferRequest): Promise<CopySummary> {
  // What this run records as used from here on is its own, kept by its --prune whatever the age.
  const startedAt = Date.now();
  const src = parseImageName(req.source);
  const dst = parseImageName(req.destination);
  if (req.mode === 'push' && transportOf(dst).capabilities.pullOnly) {
    throw new SmartError('USAGE', `push writes images into stores; to unpack into ${dst.transport}: use smart pull`, { input: req.destination });
  }
  const streaming = transportOf(src).isStdio?.(src) ?? false;
  if (streaming && !transportOf(dst).capabilities.contentAddressed) {
    const stores = TRANSPORTS.filter((t) => t.capabilities.contentAddressed);
    const file = (src.transport === 'docker-archive' || src.transport === 'oci-archive') && 'file' in src && src.file !== '-' ? src.file : undefined;
    const compressed = file !== undefined ? compressedFileAt(file) : undefined;
    const what = compressed ? `a ${compressed}-compressed archive, read as a stream` : 'a stream';
    const then = compressed ? `decompress it to a file first (${UNPACK_COMMAND[compressed]} ${file})` : 'save it to a file first';
    throw new SmartError('USAGE', `${req.source} (${what}) can only be copied into a store (${prefixes(stores)}); ${then}`, {
      input: req.source,
    });
  }
  const platforms = choosePlatforms(req, dst);
  // Values that only some paths read, checked on every path before anything is written.
  if (req.mode === 'push') await checkCompressionLevel(req.compression, req.gzipLevel);
  decompressionBound();
  if (req.dockerfile) await (await import('./build-cache/steps.js')).checkPushDockerfile(req.dockerfile);
  const cache = req.cacheDir ? await openCache({ cacheDir: req.cacheDir, ...(req.redisUrl ? { redisUrl: req.redisUrl } : {}), ...(req.onWarning ? { onWarning: req.onWarning } : {}) }) : undefined;
  // Proof images' manifests are kept on this machine's disk, never in a shared cache (see BlobInfoCache).
  const blobInfo = cache ? new (await import('../cache/blob-info.js')).BlobInfoCache(cache, req.redisUrl ? await localMetadata(req.cacheDir!) : cache) : undefined;
  const storeDir = req.cacheDir ? layerStoreDir(req.cacheDir, req.layerStoreDir) : req.layerStoreDir;
  const { pullOnly, namesStore } = transportOf(dst).capabilities;
  // A pull from a registry or S3 into a layout or an archive keeps the blobs it fetches, and reads
  // those kept (by any pull) in place of fetching them: no layer is fetched twice (a root
  // filesystem's writer does so itself, beside its unpacked layers). One from this machine's files
  // reads them where they are.
  const remoteSource = src.transport === 'docker' || src.transport === 's3';
  const keepsBlobs = req.mode === 'pull' && remoteSource && !pullOnly && !namesStore && storeDir !== undefined;
  const layerStore = storeDir && (pullOnly || keepsBlobs) ? await openLayerStore(storeDir) : undefined;
  // Into an OCI layout, a blob fetched is kept as a hardlink to the layout's file: no second write
  // (a copy where the layout is on another filesystem than the store).
  const blobCache = keepsBlobs && layerStore ? await openBlobCache(layerStore.dir, req.onWarning, dst.transport === 'oci') : undefined;
  const ctx: OpenContext = {
    // Read only by a name `-`: process.stdin makes its stream (a socket, a tty) when first read.
    get stdin() {
      return req.stdin ?? process.stdin;
    },
    stdout: req.stdout ?? process.stdout,
    ...(req.onWarning ? { onWarning: req.onWarning } : {}),
    ...(req.remote ? { remote: req.remote } : {}),
    ...(req.cacheDir ? { registrySchemes: registrySchemes(req.cacheDir) } : {}),
    ...(blobInfo ? { blobInfo } : {}),
    ...(layerStore ? { layerStore } : {}),
    ...(req.link ? { link: true } : {}),
    ...(req.keepLayers !== undefined ? { keepLayers: req.keepLayers } : {}),
    ...(req.force ? { force: true } : {}),
    ...(req.signal ? { signal: req.signal } : {}),
  };
  // Every push into a store keeps that store's layer trie fresh for what it pushed.
  const indexed = cache ? storeScope(dst)?.ref : undefined;
  let destinationScope = '';
  let destinationRepository = '';
  const options = {
    platform: platforms.platform,
    jobs: req.jobs ?? defaultJobs(),
    ...(platforms.all ? { allPlatforms: platforms.all } : {}),
    platformMismatch: platforms.mismatch,
    ...(req.gzipLevel !== undefined ? { gzipLevel: req.gzipLevel } : {}),
    ...(req.compression ? { compression: req.compression } : {}),
    ...(req.signal ? { signal: req.signal } : {}),
    ...(req.onLayer ? { onLayer: req.onLayer } : {}),
    ...(req.onProgress ? { onProgress: req.onProgress } : {}),
    ...(req.onWarning ? { onRetry: req.onWarning, onWarning: req.onWarning } : {}),
    ...(blobInfo ? { blobInfo } : {}),
    ...(blobCache ? { localBlobs: { blobs: blobCache, keep: req.keepLayers !== false } } : {}),
    ...(req.dockerfile ? { layerSteps: (image: Image) => stepsFor(image, req.dockerfile!) } : {}),
    ...(cache && indexed
      ? {
          onCopied: (copied: Parameters<NonNullable<CopyOptions['onCopied']>>[0]) =>
            indexCopied(cache, destinationScope, { repository: destinationRepository, ...(indexed.tag ? { tag: indexed.tag } : {}) }, copied),
        }
      : {}),
  };
  let source = await openSource(src, ctx);
  const cached = cache && !isStreamed(source) ? storeScope(src) : undefined;
  if (cache && cached?.ref && !isStreamed(source)) {
    const { CachedSource } = await import('../cache/cached-source.js');
    source = new CachedSource(source, cache, cached.scope, cached.ref, { ...(req.tagCacheTtlS ? { tagCacheTtlS: req.tagCacheTtlS } : {}) });
  }
  let destination: Awaited<ReturnType<typeof openDestination>> | undefined;
  // What killed pulls left in the layer store's tmp/ (blobs half fetched, of every kind of pull),
  // swept while this one runs: a root filesystem's writer sweeps it itself, nothing else did.
  const swept = blobCache && layerStore ? layerStore.removeStale().catch(() => []) : undefined;
  try {
    destination = await openDestination(dst, ctx, src);
    if (!isImageWriter(destination)) {
      destinationScope = destination.cacheScope;
      destinationRepository = destination.repository ?? indexed?.repository ?? '';
    }
    const summary = await copy(source, destination, options);
    const origins = isStreamed(source) ? undefined : source.origins?.();
    if (origins && Object.keys(origins).length) summary.details = { ...summary.details, origins };
    // What killed runs left there and this one removed (a whole-image writer reports its own).
    const cleaned = [...((!isImageWriter(destination) ? await destination.cleaned?.() : undefined) ?? []), ...((await swept) ?? [])];
    if (cleaned.length) summary.details = { ...summary.details, cleaned: [...((summary.details?.cleaned as typeof cleaned | undefined) ?? []), ...cleaned] };
    if (blobCache && layerStore) {
      const { counts, used } = blobCache;
      if (counts.read + counts.kept + counts.repaired > 0) summary.details = { ...summary.details, blobs: { ...counts } };
      // What tells gc the blobs are in use; none the less kept without it.
      if (used.size > 0) await layerStore.recordBlobs(summary.manifestDigest, source.name, [...used]).catch((e: unknown) => req.onWarning?.(`the layer store ${layerStore.dir} cannot record the blobs this pull used (${e instanceof Error ? e.message : String(e)})`));
    }
    if (layerStore && req.pruneAgeMs !== undefined) summary.details = { ...summary.details, prune: await layerStore.gc({ maxAgeMs: req.pruneAgeMs, keepUsedSince: startedAt }) };
    return summary;
  } finally {
    // Open connections would keep the process alive for their keep-alive time.
    if (destination && !isImageWriter(destination)) await destination.close().catch(() => undefined);
    if (!isStreamed(source)) await source.close().catch(() => undefined);
    await blobCache?.release();
    await swept;
    await cache?.close();
  }
}

/** The kept blobs of the layer store `dir` for a pull that is not a root filesystem's; what goes wrong with them is said, once. */
async function openBlobCache(dir: string, onWarning: ((message: string) => void) | undefined, adopting: boolean) {
  // A store that cannot be made (the cache directory read-only, as a container's home may be) holds
  // nothing to read and keeps nothing: said once already, by the metadata cache beside it.
  if (!(await mkdirp(path.join(dir, 'blobs', 'sha256')).then(() => true, () => false))) return undefined;
  const { BlobCache } = await import('../cache/blob-cache.js');
  return new BlobCache(
    dir,
    {
      notKept: (e) => {
        const refusal = cannotTakeMore(e);
        const advice = refusal ? machineRefusal(refusal)?.hint : undefined;
        onWarning?.(`the layer store ${dir} cannot keep blobs (${e instanceof Error ? systemWords(e) : String(e)}${advice ? `: ${advice}` : ''}); the layers this pull fetches are not kept for the next pulls`);
      },
      damaged: (what, why) => onWarning?.(`${what} kept on this machine is damaged (${why}): removed, and fetched`),
    },
    adopting,
  );
}
export type { LayerEvent, ProgressEvent } from '../oci/image.js';
export { transportPrefixes } from '../transports/all.js';

/**
 * The reference of what a push stored, as `crane push` prints it: `HOST/REPO@sha256:…` for a
 * registry, the store's name with `#REPO@sha256:…` for `file:`/`s3://`; undefined for other
 * destinations (layouts and archives are files: their digest says it all).
 */
export function storedReference(destination: string, digest: Digest): string | undefined {
  const name = parseImageName(destination);
  return transportOf(name).storedReference?.(name, digest);
}

/** `smart copy SRC DEST`: a push when DEST names an image in a store (a registry, `file:`, `s3://`), else a pull. */
export function copyMode(destination: string): 'push' | 'pull' {
  return transportOf(parseImageName(destination)).capabilities.namesStore ? 'push' : 'pull';
}

/** Opens any image name and resolves it (one platform): for commands that inspect rather than copy. */
export async function resolveImageByName(name: string, options: { platform?: string; ctx?: Partial<OpenContext> } = {}) {
  const parsed = parseImageName(name);
  const source = await openSource(parsed, {
    get stdin() {
      return process.stdin;
    },
    stdout: process.stdout,
    ...options.ctx,
  });
  if (isStreamed(source)) throw new SmartError('USAGE', `${name}: a stream cannot be inspected; save it to a file first`, { input: name });
  try {
    const { resolveImage } = await import('../pipeline/layers.js');
    const image = await resolveImage(source, options.platform ? parsePlatform(options.platform) : hostPlatform());
    return { image, close: () => source.close() };
  } catch (e) {
    await source.close();
    throw e;
  }
}
