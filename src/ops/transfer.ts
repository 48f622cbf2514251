/** `push` and `pull`: one copy between any sensible pair of image names. */
import os from 'node:os';
import path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { SmartError } from '../errors.js';
import type { LayerEvent, ProgressEvent } from '../oci/image.js';
import { hostPlatform, parsePlatform, type Platform } from '../oci/platform.js';
import { parseImageName, type ImageName } from '../transports/names.js';
import { copyDockerArchiveStream, copyImage, writeImage, type CopyOptions, type CopySummary } from './copy.js';
import type { Image } from '../oci/image.js';
import type { Reference } from '../oci/reference.js';
import type { MetadataCache } from '../cache/metadata-cache.js';
import { openDestination, openSource, type EndpointContext, type RemoteOptions } from './endpoints.js';

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

/** Parallel layers by default: transfers wait on I/O as much as on CPU, so at least 4. */
export function defaultJobs(): number {
  return Math.max(4, os.availableParallelism());
}

/** The metadata cache of a run: Redis when asked for, else on disk under the cache dir (`strict`: see openMetadataCache). */
export async function openCache(options: { cacheDir: string; redisUrl?: string; strict?: boolean; onWarning?: (m: string) => void }) {
  const { openMetadataCache } = await import('../cache/metadata-cache.js');
  return openMetadataCache({
    diskDir: path.join(options.cacheDir, 'metadata'),
    ...(options.redisUrl ? { redisUrl: options.redisUrl } : {}),
    ...(options.strict ? { strict: true } : {}),
    onWarning: options.onWarning ?? (() => undefined),
  });
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
  const oneImage = destination.transport === 'rootfs' || destination.transport === 'bundle' || destination.transport === 'docker-archive';
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

function sourceScope(name: ImageName): string {
  if (name.transport === 'file') return `file:${path.resolve(name.root)}`;
  if (name.transport === 's3') return `s3://${name.bucket}${name.root ? `/${name.root}` : ''}`;
  return name.raw;
}

async function stepsFor(image: Image, dockerfile: NonNullable<TransferRequest['dockerfile']>) {
  const { stepsForPush } = await import('./cache.js');
  return stepsForPush(image, { dockerfile: dockerfile.path, contextDir: dockerfile.contextDir, ...(dockerfile.stage ? { stage: dockerfile.stage } : {}), ...(dockerfile.buildArgs ? { buildArgs: dockerfile.buildArgs } : {}) });
}

async function indexCopied(cache: MetadataCache, scope: string, ref: Reference, copied: Parameters<NonNullable<CopyOptions['onCopied']>>[0]) {
  const { recordTag } = await import('./cached-source.js');
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
    : await (await import('./cache.js')).stepsOfImage({ ...copied.image, manifest: copied.manifest as Image['manifest'], layers });
  const at = { repository: ref.repository, ...(ref.tag ? { tag: ref.tag } : {}) };
  const { imageFacts } = await import('./cache.js');
  await trie.addImage(indexedImageOf(at, copied.manifest.digest, layers, steps, [], imageFacts(copied.image)), { current });
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

async function transferOnce(req: TransferRequest): Promise<CopySummary> {
  const src = parseImageName(req.source);
  const dst = parseImageName(req.destination);
  if (req.mode === 'push' && (dst.transport === 'rootfs' || dst.transport === 'bundle')) {
    throw new SmartError('USAGE', `push writes images into stores; to unpack into ${dst.transport}: use smart pull`, { input: req.destination });
  }
  const streaming = src.transport === 'docker-archive' && src.file === '-';
  if (streaming && !['file', 's3', 'docker', 'oci', 'oci-archive'].includes(dst.transport)) {
    throw new SmartError('USAGE', `${req.source} (a stream) can only be copied into a store (docker://, file:, s3://, oci:, oci-archive:); save it to a file first`, {
      input: req.source,
    });
  }
  const platforms = choosePlatforms(req, dst);
  const cache = req.cacheDir ? await openCache({ cacheDir: req.cacheDir, ...(req.redisUrl ? { redisUrl: req.redisUrl } : {}), ...(req.onWarning ? { onWarning: req.onWarning } : {}) }) : undefined;
  const blobInfo = cache ? new (await import('../cache/blob-info.js')).BlobInfoCache(cache) : undefined;
  const layerStoreDir = req.layerStoreDir ?? (req.cacheDir ? path.join(req.cacheDir, 'layer-store') : undefined);
  const layerStore = layerStoreDir && (dst.transport === 'rootfs' || dst.transport === 'bundle') ? await openLayerStore(layerStoreDir) : undefined;
  const ctx: EndpointContext = {
    stdin: req.stdin ?? process.stdin,
    stdout: req.stdout ?? process.stdout,
    ...(req.onWarning ? { onWarning: req.onWarning } : {}),
    ...(req.remote ? { remote: req.remote } : {}),
    ...(blobInfo ? { blobInfo } : {}),
    ...(layerStore ? { layerStore } : {}),
    ...(req.link ? { link: true } : {}),
    ...(req.keepLayers !== undefined ? { keepLayers: req.keepLayers } : {}),
    ...(req.force ? { force: true } : {}),
    ...(req.signal ? { signal: req.signal } : {}),
  };
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
    ...(req.dockerfile ? { layerSteps: (image: Image) => stepsFor(image, req.dockerfile!) } : {}),
    // Every push into a store keeps that store's layer trie fresh for what it pushed.
    ...(cache && (dst.transport === 'file' || dst.transport === 's3' || dst.transport === 'docker') && dst.ref
      ? { onCopied: (copied: Parameters<NonNullable<CopyOptions['onCopied']>>[0]) => indexCopied(cache, destinationScope, dst.ref!, copied) }
      : {}),
  };
  let destinationScope = '';
  const source = await openSource(src, ctx);
  if (cache && source.kind === 'random' && (src.transport === 'file' || src.transport === 's3' || src.transport === 'docker') && src.ref) {
    const { CachedSource } = await import('./cached-source.js');
    const scope = src.transport === 'docker' ? `docker://${src.ref.registry}` : sourceScope(src);
    source.source = new CachedSource(source.source, cache, scope, src.ref, { ...(req.tagCacheTtlS ? { tagCacheTtlS: req.tagCacheTtlS } : {}) });
  }
  let destination: Awaited<ReturnType<typeof openDestination>> | undefined;
  try {
    destination = await openDestination(dst, ctx, { source: src });
    if (destination.kind === 'blobs') destinationScope = destination.dest.cacheScope;
    let summary: CopySummary;
    if (source.kind === 'stream') {
      if (destination.kind !== 'blobs') throw new SmartError('INTERNAL', 'stream source with a whole-image destination');
      summary = await copyDockerArchiveStream(source.input, source.selection, source.name, destination.dest, options);
    } else {
      summary = destination.kind === 'blobs' ? await copyImage(source.source, destination.dest, options) : await writeImage(source.source, destination.writer, options);
      const origins = source.source.origins?.();
      if (origins && Object.keys(origins).length) summary.details = { ...summary.details, origins };
    }
    // What killed runs left there and this one removed (a whole-image writer reports its own).
    const cleaned = destination.kind === 'blobs' ? await destination.dest.cleaned?.() : undefined;
    if (cleaned?.length) summary.details = { ...summary.details, cleaned };
    if (layerStore && req.pruneAgeMs !== undefined) summary.details = { ...summary.details, prune: await layerStore.gc({ maxAgeMs: req.pruneAgeMs }) };
    return summary;
  } finally {
    // Open connections would keep the process alive for their keep-alive time.
    if (destination?.kind === 'blobs') await destination.dest.close().catch(() => undefined);
    if (source.kind === 'random') await source.source.close().catch(() => undefined);
    await cache?.close();
  }
}
export type { LayerEvent, ProgressEvent } from '../oci/image.js';

/**
 * The reference of what a push stored, as `crane push` prints it: `HOST/REPO@sha256:…` for a
 * registry, the store's name with `#REPO@sha256:…` for `file:`/`s3://`; undefined for other
 * destinations (layouts and archives are files: their digest says it all).
 */
export function storedReference(destination: string, digest: string): string | undefined {
  const name = parseImageName(destination);
  if (name.transport === 'docker') return `${name.ref.registry}/${name.ref.repository}@${digest}`;
  if ((name.transport === 'file' || name.transport === 's3') && name.ref) return `${name.raw.slice(0, name.raw.lastIndexOf('#'))}#${name.ref.repository}@${digest}`;
  return undefined;
}

/** Opens any image name and resolves it (one platform): for commands that inspect rather than copy. */
export async function resolveImageByName(name: string, options: { platform?: string; ctx?: Partial<EndpointContext> } = {}) {
  const parsed = parseImageName(name);
  const source = await openSource(parsed, { stdin: process.stdin, stdout: process.stdout, ...options.ctx });
  if (source.kind !== 'random') throw new SmartError('USAGE', `${name}: a stream cannot be inspected; save it to a file first`, { input: name });
  try {
    const { resolveImage } = await import('../oci/partial.js');
    const image = await resolveImage(source.source, options.platform ? parsePlatform(options.platform) : hostPlatform());
    return { image, close: () => source.source.close() };
  } catch (e) {
    await source.source.close();
    throw e;
  }
}
