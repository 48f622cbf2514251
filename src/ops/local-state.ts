/**
 * What a run keeps on this machine under its cache directory (`--cache-dir`, default
 * `$XDG_CACHE_HOME/smartlayer`): `metadata/`, the metadata cache on disk (unless it is in Redis;
 * the facts about this machine alone stay there even then), and `layer-store/`, the unpacked layers
 * root filesystems are built from. The one owner of that layout.
 */
import path from 'node:path';
import { homeDirectory } from '../home.js';
import type { MetadataCache } from '../cache/metadata.js';
import type { RegistrySchemes } from '../transports/registry/client.js';
/** For the CLI's compile cache, which makes its directory before the library loads (made-directories.ts). */
export { mkdirLevelsSync } from '../storage/made-directories.js';

/**
 * The cache directory a run uses unless told (`--cache-dir`): `$XDG_CACHE_HOME/smartlayer` (an
 * absolute XDG_CACHE_HOME), else `~/.cache/smartlayer`; undefined when there is no home to put it in (see homeDirectory). Read
 * from the environment alone: the compile cache asks before the arguments are read.
 */
export function defaultCacheDir(env: NodeJS.ProcessEnv = process.env): string | undefined {
  // A relative XDG_CACHE_HOME is invalid and ignored, as the XDG spec says: it would put the
  // cache under whatever directory each run starts in.
  if (env.XDG_CACHE_HOME && path.isAbsolute(env.XDG_CACHE_HOME)) return path.join(env.XDG_CACHE_HOME, 'smartlayer');
  const home = homeDirectory(env);
  return home === undefined ? undefined : path.join(home, '.cache', 'smartlayer');
}

/** Why defaultCacheDir found none. */
export function noCacheDirReason(): string {
  const uid = process.getuid?.();
  return `$HOME is unset and ${uid === undefined ? 'this user' : `user ${uid}`} has no home directory`;
}

function metadataDir(cacheDir: string): string {
  return path.join(cacheDir, 'metadata');
}

/** The metadata cache of a run: Redis when asked for, else on disk under the cache dir (`strict`: see openMetadataCache). */
export async function openCache(options: { cacheDir: string; redisUrl?: string; strict?: boolean; onWarning?: (m: string) => void }) {
  const { openMetadataCache } = await import('../cache/metadata-cache.js');
  return openMetadataCache({
    diskDir: metadataDir(options.cacheDir),
    ...(options.redisUrl ? { redisUrl: options.redisUrl } : {}),
    ...(options.strict ? { strict: true } : {}),
    onWarning: options.onWarning ?? (() => undefined),
  });
}

/**
 * The metadata cache on this machine's disk, whatever the command's metadata cache is: for what
 * only this user's own runs may write (a proof image's manifest, see BlobInfoCache). Its reads and
 * writes may fail; callers take a failure for a miss.
 */
export async function localMetadata(cacheDir: string): Promise<MetadataCache> {
  const { DiskMetadataCache } = await import('../cache/metadata-cache.js');
  return new DiskMetadataCache(metadataDir(cacheDir));
}

/** Where the local layer store is: `--layer-store`, else under the cache dir. */
export function layerStoreDir(cacheDir: string, explicit?: string): string {
  return explicit ?? path.join(cacheDir, 'layer-store');
}

/**
 * How each registry answered its ping (RegistryContact in registry/client.ts), on the local disk
 * whatever the metadata cache is: what the memory chooses is the one machine's business, and a
 * shared cache must not tell it where to send credentials. A hint: a read or write that fails is a
 * miss, silently (the cost is a ping), and the registry's answers decide. Stored as `SCHEME` or
 * `SCHEME CHALLENGE` (`http none`); an older version reads the second form as nothing known.
 */
export function registrySchemes(cacheDir: string): RegistrySchemes {
  let disk: Promise<MetadataCache> | undefined;
  const open = () => (disk ??= localMetadata(cacheDir));
  return {
    async get(apiHost) {
      const { schemeKey } = await import('../cache/keys.js');
      const value = await (await open()).get(schemeKey(apiHost)).catch(() => undefined);
      const [scheme, challenge, ...rest] = (value ?? '').split(' ');
      if ((scheme !== 'http' && scheme !== 'https') || rest.length > 0) return undefined;
      if (challenge === undefined) return { scheme };
      return challenge === 'none' || challenge === 'basic' ? { scheme, challenge } : undefined;
    },
    async set(apiHost, contact) {
      const { schemeKey } = await import('../cache/keys.js');
      await (await open()).set(schemeKey(apiHost), contact.challenge ? `${contact.scheme} ${contact.challenge}` : contact.scheme).catch(() => undefined);
    },
  };
}
