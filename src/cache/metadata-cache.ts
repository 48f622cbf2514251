/**
 * The metadata cache: small facts (diff id → compressed digest, and later tags and manifests) kept
 * between runs. A hint, never the truth: every fact is re-checked against the store before it is
 * used, a miss or a stale entry changes speed and never the result, and a cache that fails is
 * reported once and then ignored.
 */
import { createHash, randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { isErrno } from '../errors.js';

export interface MetadataCache {
  get(key: string): Promise<string | undefined>;
  /** `ttlSeconds` absent: kept until evicted. */
  set(key: string, value: string, ttlSeconds?: number): Promise<void>;
}

interface Entry {
  k: string;
  v: string;
  exp?: number;
}

/**
 * The embedded default: one small file per key under `dir` (sharded by the key's hash), written to
 * a temporary name and renamed, so concurrent runs on one machine never see a torn entry.
 */
export class DiskMetadataCache implements MetadataCache {
  constructor(readonly dir: string) {}

  private file(key: string): string {
    const h = createHash('sha256').update(key).digest('hex');
    return path.join(this.dir, h.slice(0, 2), h);
  }

  async get(key: string): Promise<string | undefined> {
    let raw: string;
    try {
      raw = await fs.readFile(this.file(key), 'utf8');
    } catch (e) {
      if (isErrno(e, 'ENOENT')) return undefined;
      throw e;
    }
    let entry: Entry;
    try {
      entry = JSON.parse(raw) as Entry;
    } catch {
      return undefined; // a damaged entry is a miss
    }
    if (entry.k !== key || (entry.exp !== undefined && entry.exp < Date.now())) return undefined;
    return entry.v;
  }

  async set(key: string, value: string, ttlSeconds?: number): Promise<void> {
    const file = this.file(key);
    const entry: Entry = { k: key, v: value, ...(ttlSeconds !== undefined ? { exp: Date.now() + ttlSeconds * 1000 } : {}) };
    await fs.mkdir(path.dirname(file), { recursive: true });
    const tmp = `${file}.${randomUUID()}.tmp`;
    try {
      await fs.writeFile(tmp, JSON.stringify(entry));
      await fs.rename(tmp, file);
    } catch (e) {
      await fs.rm(tmp, { force: true });
      throw e;
    }
  }
}

/** Wraps a cache so that its failures become one warning and then silence: the cache is optional. */
export function forgivingCache(cache: MetadataCache, warn: (message: string) => void): MetadataCache {
  let warned = false;
  let broken = false;
  const fail = (e: unknown): undefined => {
    if (!warned) {
      warned = true;
      warn(`metadata cache unavailable, going on without it: ${(e as Error).message}`);
    }
    broken = true;
    return undefined;
  };
  return {
    get: async (key) => (broken ? undefined : cache.get(key).catch(fail)),
    set: async (key, value, ttl) => {
      if (!broken) await cache.set(key, value, ttl).catch(fail);
    },
  };
}
