/**
 * What every `smart cache` command runs in: the metadata cache (disk or Redis, strict), the open
 * settings of its stores, the platform and jobs, the local layer store.
 */
import { decompressionBound } from '../../limits.js';
import { hostPlatform, parsePlatform, type Platform } from '../../oci/platform.js';
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
