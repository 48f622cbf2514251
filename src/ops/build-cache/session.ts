/**
 * What every `smart cache` command runs in: the metadata cache (disk or Redis, strict), the open
 * settings of its stores, the platform and jobs, the local layer store.
 */
import { SmartError } from '../../errors.js';
import { decompressionBound } from '../../limits.js';
import type { Image } from '../../oci/image.js';
import { configPlatform, formatPlatform, hostPlatform, normalizePlatform, parsePlatform, platformMatches, type Platform } from '../../oci/platform.js';
import type { MetadataCache } from '../../cache/metadata-cache.js';
import type { LayerStore } from '../../cache/layer-store.js';
import type { OpenContext, RemoteOptions } from '../../transports/transport.js';

export interface CacheContext {
  cache: MetadataCache;
  endpoints: OpenContext;
  platform?: string | Platform;
  jobs?: number;
  onWarning?: (message: string) => void;
}

export function platformOf(ctx: CacheContext): Platform {
  return typeof ctx.platform === 'string' ? parsePlatform(ctx.platform) : (ctx.platform ?? hostPlatform());
}

/**
 * Refuses an image whose config names another platform than `platform`, one a platform was asked
 * for (`--platform`, a FROM's `--platform`): PLATFORM_NOT_FOUND, as Docker refuses to pull it for
 * that platform. `resolveImage` picks an index's entry by platform, but takes a single image as it
 * is. The callers check only a platform asked for: on the machine's own, the builders build on
 * another platform's image (with a warning), and so its layers are that build's cache.
 */
export function checkImagePlatform(image: Image, platform: Platform): void {
  const have = configPlatform(image.config);
  if (!have || platformMatches(platform, have)) return;
  throw new SmartError('PLATFORM_NOT_FOUND', `${image.name} is a ${formatPlatform(have)} image, not ${formatPlatform(normalizePlatform(platform))}`, { input: image.name });
}

export interface CacheSession {
  ctx: CacheContext;
  layerStore: LayerStore;
  close(): Promise<void>;
}

/**
 * What every cache command needs: the metadata cache (disk or Redis), endpoints settings, the layer
 * store. The cache is strict: its trie is what these commands fill or read, so a cache that cannot
 * be reached or written is an error (SmartError STORAGE), where push and pull go on without it.
 */
export async function openCacheSession(options: {
  cacheDir: string;
  redisUrl?: string;
  layerStoreDir?: string;
  remote?: RemoteOptions;
  platform?: string;
  jobs?: number;
  signal?: AbortSignal;
  onWarning?: (m: string) => void;
}): Promise<CacheSession> {
  // Read only when a layer is unpacked: checked before any work, on every path.
  decompressionBound();
  const { openCache, layerStoreDir, registrySchemes } = await import('../local-state.js');
  const { LayerStore } = await import('../../cache/layer-store.js');
  const cache = await openCache({ cacheDir: options.cacheDir, strict: true, ...(options.redisUrl ? { redisUrl: options.redisUrl } : {}), ...(options.onWarning ? { onWarning: options.onWarning } : {}) });
  const endpoints: OpenContext = {
    stdin: process.stdin,
    stdout: process.stdout,
    ...(options.remote ? { remote: options.remote } : {}),
    registrySchemes: registrySchemes(options.cacheDir),
    ...(options.signal ? { signal: options.signal } : {}),
    ...(options.onWarning ? { onWarning: options.onWarning } : {}),
  };
  return {
    ctx: {
      cache,
      endpoints,
      ...(options.platform ? { platform: options.platform } : {}),
      ...(options.jobs ? { jobs: options.jobs } : {}),
      ...(options.onWarning ? { onWarning: options.onWarning } : {}),
    },
    layerStore: new LayerStore(layerStoreDir(options.cacheDir, options.layerStoreDir)),
    close: () => cache.close(),
  };
}
