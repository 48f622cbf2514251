/** `push` and `pull`: one copy between any sensible pair of image names. */
import os from 'node:os';
import path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { SmartError } from '../errors.js';
import type { LayerEvent, ProgressEvent } from '../oci/image.js';
import { hostPlatform, parsePlatform, type Platform } from '../oci/platform.js';
import { parseImageName } from '../transports/names.js';
import { copyDockerArchiveStream, copyImage, writeImage, type CopySummary } from './copy.js';
import { openDestination, openSource, type EndpointContext, type RemoteOptions } from './endpoints.js';

export interface TransferRequest {
  mode: 'push' | 'pull';
  source: string;
  destination: string;
  /** `os/arch[/variant]`; the running platform when absent. */
  platform?: string | Platform;
  /** Copy every platform of a multi-platform image, keeping the index (stores only). */
  allPlatforms?: boolean;
  jobs?: number;
  gzipLevel?: number;
  stdin?: Readable;
  stdout?: Writable;
  signal?: AbortSignal;
  /** Local state (the metadata cache); none is kept when absent. */
  cacheDir?: string;
  /** Share the metadata cache in Redis (`redis://`, `rediss://`, `redis+cluster://`) instead of the disk. */
  redisUrl?: string;
  /** Registry and S3 settings. */
  remote?: RemoteOptions;
  /** The local layer store for root filesystems and bundles (default: CACHE_DIR/layer-store; none without a cache dir). */
  layerStoreDir?: string;
  /** Hardlink files from the layer store into root filesystems (read-only uses). */
  link?: boolean;
  /** After the pull, remove from the layer store what no image used within this many ms uses. */
  pruneAgeMs?: number;
  onLayer?: (event: LayerEvent) => void;
  onProgress?: (event: ProgressEvent) => void;
  onWarning?: (message: string) => void;
}

/** Parallel layers by default: transfers wait on I/O as much as on CPU, so at least 4. */
export function defaultJobs(): number {
  return Math.max(4, os.availableParallelism());
}

/** The metadata cache of a run: Redis when asked for, else on disk under the cache dir. */
export async function openCache(options: { cacheDir: string; redisUrl?: string; onWarning?: (m: string) => void }) {
  const { openMetadataCache } = await import('../cache/metadata-cache.js');
  return openMetadataCache({
    diskDir: path.join(options.cacheDir, 'metadata'),
    ...(options.redisUrl ? { redisUrl: options.redisUrl } : {}),
    onWarning: options.onWarning ?? (() => undefined),
  });
}

async function openLayerStore(dir: string) {
  const { LayerStore } = await import('../cache/layer-store.js');
  return new LayerStore(dir);
}

export async function transfer(req: TransferRequest): Promise<CopySummary> {
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
  const platform = typeof req.platform === 'string' ? parsePlatform(req.platform) : (req.platform ?? hostPlatform());
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
    ...(req.signal ? { signal: req.signal } : {}),
  };
  const options = {
    platform,
    jobs: req.jobs ?? defaultJobs(),
    ...(req.allPlatforms ? { allPlatforms: true } : {}),
    ...(req.gzipLevel !== undefined ? { gzipLevel: req.gzipLevel } : {}),
    ...(req.signal ? { signal: req.signal } : {}),
    ...(req.onLayer ? { onLayer: req.onLayer } : {}),
    ...(req.onProgress ? { onProgress: req.onProgress } : {}),
    ...(blobInfo ? { blobInfo } : {}),
  };
  const source = await openSource(src, ctx);
  let destination: Awaited<ReturnType<typeof openDestination>> | undefined;
  try {
    destination = await openDestination(dst, ctx, { source: src });
    if (source.kind === 'stream') {
      if (destination.kind !== 'blobs') throw new SmartError('INTERNAL', 'stream source with a whole-image destination');
      return await copyDockerArchiveStream(source.input, source.selection, source.name, destination.dest, options);
    }
    const summary =
      destination.kind === 'blobs' ? await copyImage(source.source, destination.dest, options) : await writeImage(source.source, destination.writer, options);
    const origins = source.source.origins?.();
    if (origins && Object.keys(origins).length) summary.details = { ...summary.details, origins };
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
