/**
 * The metadata cache: small facts (diff id → compressed digest, and later tags and manifests) kept
 * between runs. A hint, never the truth: every fact is re-checked against the store before it is
 * used, a miss or a stale entry changes speed and never the result, and a cache that fails is
 * reported once and then ignored (except by the commands that exist to fill or read it: `strict`).
 */
import { createHash, randomUUID } from 'node:crypto';
import fsSync from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { SmartError, isErrno, isSmartError, refusalHint } from '../errors.js';
import { TaskGroup } from '../pipeline/concurrency.js';
import type { MetadataCache, MetadataCacheEntry, MetadataCacheReplacement } from './metadata.js';
import { mkdirp, mkdirpSync } from '../storage/made-directories.js';

export type { MetadataCache, MetadataCacheEntry, MetadataCacheReplacement } from './metadata.js';

export interface OpenMetadataCacheOptions {
  /**
   * Use Redis instead of the disk (`--redis URL` / `SMART_REDIS_URL`). Forms:
   * `redis://[user:pass@]host:port[/db]`, `rediss://...` (TLS), and for a cluster
   * `redis+cluster://[user:pass@]host1:port1,host2:port2` (or `rediss+cluster://`): any reachable
   * nodes of the cluster; the others are learned from it. See src/cache/redis-cache.ts.
   */
  redisUrl?: string;
  /** The on-disk cache's directory, used when `redisUrl` is not set. */
  diskDir: string;
  /** Prepended to every key (default `smartlayer:` on Redis, none on disk). */
  keyPrefix?: string;
  /** Extra CA certificates (PEM text) trusted for `rediss://`, besides the system's. */
  redisCa?: string[];
  /** Called at most once, when the cache fails: the run then goes on without it. */
  onWarning: (message: string) => void;
  /**
   * For the commands whose job is the cache itself (`smart cache`): a cache that fails is an error
   * (SmartError STORAGE naming the cache), not a warning and silence.
   */
  strict?: boolean;
}

/**
 * The cache a command uses: Redis when `redisUrl` is set, else the disk, behind `forgivingCache`
 * (a cache that fails is one warning, then silence), or with `strict` behind `strictCache` (a cache
 * that fails is an error). Throws only for a `redisUrl` that does not parse (SmartError USAGE); a
 * Redis that is down is the warning (strict: the first operation's error). The Redis client
 * (ioredis) is loaded only here and only then. Call `close()` when the command ends.
 */
export async function openMetadataCache(options: OpenMetadataCacheOptions): Promise<MetadataCache> {
  let cache: MetadataCache;
  let where: string;
  if (options.redisUrl) {
    const { createRedisMetadataCache } = await import('./redis-cache.js');
    const redis = await createRedisMetadataCache({
      url: options.redisUrl,
      ...(options.keyPrefix !== undefined ? { keyPrefix: options.keyPrefix } : {}),
      ...(options.redisCa ? { ca: options.redisCa } : {}),
    });
    cache = redis;
    where = `redis ${redis.where}`;
  } else {
    cache = new DiskMetadataCache(options.diskDir, options.keyPrefix ?? '');
    where = options.diskDir;
  }
  return options.strict ? strictCache(cache, where) : forgivingCache(cache, options.onWarning);
}

const DISK_PARALLEL = 32;

/** How old a takeover claim must be before it counts as left by a taker that died holding it. */
const CLAIM_STALE_MS = 10_000;

/** Makes `claim` with O_EXCL: true if this call made it (or freed a stale one and then made it). */
async function takeClaim(claim: string): Promise<boolean> {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      await fs.writeFile(claim, '', { flag: 'wx' });
      return true;
    } catch (e) {
      if (!isErrno(e, 'EEXIST')) throw e;
    }
    const stat = await fs.stat(claim).catch(() => undefined);
    if (stat && Date.now() - stat.mtimeMs < CLAIM_STALE_MS) return false;
    await fs.rm(claim, { force: true });
  }
  return false;
}

async function readIfThere(file: string): Promise<string | undefined> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (e) {
    if (isErrno(e, 'ENOENT')) return undefined;
    throw e;
  }
}

/** `readIfThere` with one synchronous read (see DiskMetadataCache: why its entries are read and written so). */
function readIfThereSync(file: string): string | undefined {
  try {
    return fsSync.readFileSync(file, 'utf8');
  } catch (e) {
    if (isErrno(e, 'ENOENT')) return undefined;
    throw e;
  }
}

interface Entry {
  k: string;
  v: string;
  exp?: number;
}

/**
 * The embedded default: one small file per key under `dir` (sharded by the key's hash), written to
 * a temporary name and renamed, so concurrent runs on one machine never see a torn entry.
 *
 * `get`, `set` and `delete` make their system calls synchronously: an entry is a few hundred
 * bytes in the page cache, read or written in microseconds, while each asynchronous call is a
 * round trip to libuv's thread pool (0.2-0.5 ms on the VMs CI runs on), and `fs.promises`
 * spends four of them on a read and five on a write. A push makes a dozen or more of these; every
 * one of them was a wait on its way in or out. The leases (`setIfAbsent` and the rest) keep their
 * asynchronous calls: they are few, and race other processes.
 */
export class DiskMetadataCache implements MetadataCache {
  /** `keyPrefix` is prepended to every key: two prefixes over one directory never see each other's entries. */
  constructor(
    readonly dir: string,
    readonly keyPrefix = '',
  ) {}

  private file(key: string): string {
    const h = createHash('sha256').update(this.keyPrefix + key).digest('hex');
    return path.join(this.dir, h.slice(0, 2), h);
  }

  async get(key: string): Promise<string | undefined> {
    const raw = readIfThereSync(this.file(key));
    return raw === undefined ? undefined : this.live(key, raw);
  }

  async set(key: string, value: string, ttlSeconds?: number): Promise<void> {
    if (ttlSeconds !== undefined && !(ttlSeconds > 0)) return this.delete(key); // born expired
    this.writeSync(key, value, ttlSeconds);
  }

  private writeSync(key: string, value: string, ttlSeconds?: number): void {
    const file = this.file(key);
    const expires = ttlSeconds !== undefined && ttlSeconds !== Infinity;
    const entry: Entry = { k: this.keyPrefix + key, v: value, ...(expires ? { exp: Date.now() + ttlSeconds * 1000 } : {}) };
    const text = JSON.stringify(entry);
    const tmp = `${file}.${randomUUID()}.tmp`;
    try {
      try {
        fsSync.writeFileSync(tmp, text);
      } catch (e) {
        // The shard's directory, made by its first entry.
        if (!isErrno(e, 'ENOENT')) throw e;
        mkdirpSync(path.dirname(file));
        fsSync.writeFileSync(tmp, text);
      }
      fsSync.renameSync(tmp, file);
    } catch (e) {
      fsSync.rmSync(tmp, { force: true });
      throw e;
    }
  }

  getMany(keys: string[]): Promise<(string | undefined)[]> {
    return new TaskGroup({ jobs: DISK_PARALLEL }).all(keys, (k) => this.get(k));
  }

  async setMany(entries: MetadataCacheEntry[]): Promise<void> {
    // A key given twice: the last entry wins, as on Redis (parallel writes would race).
    const last = new Map(entries.map((e) => [e.key, e]));
    await new TaskGroup({ jobs: DISK_PARALLEL }).all([...last.values()], (e) => this.set(e.key, e.value, e.ttlSeconds));
  }

  /**
   * Read, compare, write, per key: atomic within this process (nothing runs between the read and
   * the rename: both are synchronous), not against another, where the window is that read and
   * write of a few hundred bytes.
   */
  async setManyIfUnchanged(entries: MetadataCacheReplacement[]): Promise<boolean[]> {
    return entries.map(({ key, value, was }) => {
      const raw = readIfThereSync(this.file(key));
      if ((raw === undefined ? undefined : this.live(key, raw)) !== was) return false;
      this.writeSync(key, value);
      return true;
    });
  }

  async delete(key: string): Promise<void> {
    fsSync.rmSync(this.file(key), { force: true });
  }

  /**
   * O_EXCL decides between racing processes. An expired (or damaged) entry is taken over through a
   * claim: a file named after that entry's bytes, made with O_EXCL, so of the takers that read the
   * same expired entry exactly one holds its claim; it checks the entry is still those bytes and
   * replaces it (temporary name + rename), the others get false. (Moving the entry aside first, as
   * before, let a slow taker move a winner's new entry away: 144 of 300 races of 20 takers had two
   * winners or none.) A claim left by a taker that died holding it is freed after CLAIM_STALE_MS.
   */
  async setIfAbsent(key: string, value: string, ttlSeconds: number): Promise<boolean> {
    const file = this.file(key);
    const text = JSON.stringify({ k: this.keyPrefix + key, v: value, exp: Date.now() + ttlSeconds * 1000 } satisfies Entry);
    await mkdirp(path.dirname(file));
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        await fs.writeFile(file, text, { flag: 'wx' });
        return true;
      } catch (e) {
        if (!isErrno(e, 'EEXIST')) throw e;
      }
      const seen = await readIfThere(file);
      if (seen === undefined) continue; // gone meanwhile: try again
      if (this.live(key, seen) !== undefined) return false;
      const claim = `${file}.${createHash('sha256').update(seen).digest('hex').slice(0, 16)}.claim`;
      if (!(await takeClaim(claim))) return false; // another taker replaces this expired entry
      try {
        const now = await readIfThere(file);
        if (now === undefined) continue; // removed meanwhile (its holder's delete): create it afresh
        if (now !== seen) return false; // already replaced by a taker that read it before us
        const tmp = `${file}.${randomUUID()}.tmp`;
        try {
          await fs.writeFile(tmp, text);
          await fs.rename(tmp, file);
        } catch (e) {
          await fs.rm(tmp, { force: true });
          throw e;
        }
        return true;
      } finally {
        await fs.rm(claim, { force: true });
      }
    }
    return false;
  }

  /** The value an entry file's text holds for `key`, if it is that key's and unexpired. */
  private live(key: string, raw: string): string | undefined {
    let entry: Entry;
    try {
      entry = JSON.parse(raw) as Entry;
    } catch {
      return undefined; // a damaged entry is a miss
    }
    if (entry.k !== this.keyPrefix + key || (entry.exp !== undefined && entry.exp < Date.now())) return undefined;
    return entry.v;
  }

  /**
   * Read, compare, write (temporary name + rename). Not atomic against another process: the entry
   * is a lease its holder renews well before it expires, so only a holder stalled past its own
   * expiry races a taker here, and the lease helper stops renewing once its expiry has passed.
   */
  async renewIfEqual(key: string, value: string, ttlSeconds: number): Promise<boolean> {
    if ((await this.get(key)) !== value) return false;
    await this.set(key, value, ttlSeconds);
    return true;
  }

  /** Read, compare, remove; not atomic against another process (see `renewIfEqual`). */
  async deleteIfEqual(key: string, value: string): Promise<boolean> {
    if ((await this.get(key)) !== value) return false;
    await this.delete(key);
    return true;
  }

  async close(): Promise<void> {}
}

/**
 * Wraps a cache so that its failures become one warning and then silence: the cache is optional.
 * After the first failure every operation answers at once (misses, no-ops) without touching the
 * cache; `close()` still closes it (and never throws).
 */
export function forgivingCache(cache: MetadataCache, warn: (message: string) => void): MetadataCache {
  let warned = false;
  let broken = false;
  const fail = (e: unknown): undefined => {
    if (!warned) {
      warned = true;
      warn(`metadata cache unavailable, going on without it: ${e instanceof Error ? e.message : String(e)}`);
    }
    broken = true;
    return undefined;
  };
  /** Runs `op` unless the cache failed before; a failure (even a synchronous throw) gives `fallback()`. */
  const guard = async <T>(fallback: () => T, op: () => Promise<T>): Promise<T> => {
    if (broken) return fallback();
    try {
      return await op();
    } catch (e) {
      fail(e);
      return fallback();
    }
  };
  const nothing = (): void => undefined;
  return {
    get: (key) => guard(() => undefined, () => cache.get(key)),
    set: (key, value, ttl) => guard(nothing, () => cache.set(key, value, ttl)),
    getMany: (keys) =>
      guard(
        () => keys.map((): string | undefined => undefined),
        async () => {
          const values = await cache.getMany(keys);
          if (values.length !== keys.length) throw new Error(`getMany answered ${values.length} values for ${keys.length} keys`);
          return values;
        },
      ),
    setMany: (entries) => guard(nothing, () => cache.setMany(entries)),
    setManyIfUnchanged: (entries) => guard(() => entries.map(() => false), () => cache.setManyIfUnchanged(entries)),
    delete: (key) => guard(nothing, () => cache.delete(key)),
    // Without a working cache there is nothing to coordinate through: go ahead.
    setIfAbsent: (key, value, ttl) => guard(() => true, () => cache.setIfAbsent(key, value, ttl)),
    renewIfEqual: (key, value, ttl) => guard(() => true, () => cache.renewIfEqual(key, value, ttl)),
    deleteIfEqual: (key, value) => guard(() => true, () => cache.deleteIfEqual(key, value)),
    close: async () => {
      try {
        await cache.close();
      } catch {
        // closing a broken cache may fail too; nothing to do about it
      }
    },
  };
}

/**
 * Wraps a cache so that its failures are errors the command reports: SmartError STORAGE naming the
 * cache (`where`: its directory, or the Redis servers), for the commands whose whole job is the
 * cache (`smart cache index` fills it; plan, pull and warm read nothing else). Redis errors are
 * already SmartErrors that name the server and are kept as they are.
 */
export function strictCache(cache: MetadataCache, where: string): MetadataCache {
  const guard = async <T>(op: () => Promise<T>): Promise<T> => {
    try {
      return await op();
    } catch (e) {
      if (isSmartError(e)) throw e;
      throw new SmartError('STORAGE', `metadata cache ${where}: ${e instanceof Error ? e.message : String(e)}`, { input: where, cause: e, ...refusalHint(e) });
    }
  };
  return {
    get: (key) => guard(() => cache.get(key)),
    set: (key, value, ttl) => guard(() => cache.set(key, value, ttl)),
    getMany: (keys) =>
      guard(async () => {
        const values = await cache.getMany(keys);
        if (values.length !== keys.length) throw new Error(`getMany answered ${values.length} values for ${keys.length} keys`);
        return values;
      }),
    setMany: (entries) => guard(() => cache.setMany(entries)),
    setManyIfUnchanged: (entries) => guard(() => cache.setManyIfUnchanged(entries)),
    delete: (key) => guard(() => cache.delete(key)),
    setIfAbsent: (key, value, ttl) => guard(() => cache.setIfAbsent(key, value, ttl)),
    renewIfEqual: (key, value, ttl) => guard(() => cache.renewIfEqual(key, value, ttl)),
    deleteIfEqual: (key, value) => guard(() => cache.deleteIfEqual(key, value)),
    close: () => cache.close(),
  };
}
