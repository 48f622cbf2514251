/**
 * What a run keeps on this machine under its cache directory (`--cache-dir`, default
 * `$XDG_CACHE_HOME/smartlayer`): `metadata/`, the metadata cache on disk (unless it is in Redis),
 * and `layer-store/`, the unpacked layers root filesystems are built from. The one owner of that
 * layout.
 */
import path from 'node:path';

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

/** Where the local layer store is: `--layer-store`, else under the cache dir. */
export function layerStoreDir(cacheDir: string, explicit?: string): string {
  return explicit ?? path.join(cacheDir, 'layer-store');
}
