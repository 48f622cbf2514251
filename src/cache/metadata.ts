/**
 * What every metadata cache backend answers (the disk, Redis: metadata-cache.ts opens one). Small
 * facts kept between runs, each a hint re-checked against the store before it is used.
 */

export interface MetadataCache {
  get(key: string): Promise<string | undefined>;
  /**
   * `ttlSeconds` absent (or Infinity): kept until evicted; zero or less (or NaN): the entry is
   * already expired (removed). Redis rounds a fractional TTL up to the millisecond.
   */
  set(key: string, value: string, ttlSeconds?: number): Promise<void>;
  /**
   * One answer per key, in the order asked (a key asked twice is answered twice). On Redis this is
   * one pipelined round trip (on a cluster: one per node, in parallel).
   */
  getMany(keys: string[]): Promise<(string | undefined)[]>;
  /** Writes every entry (one round trip on Redis, one per node on a cluster); not atomic. */
  setMany(entries: MetadataCacheEntry[]): Promise<void>;
  /**
   * Writes each entry (kept until evicted) whose key still holds `was` (undefined: nothing); one
   * answer per entry, true when it was written. What a long run writes back over entries it read
   * when it began, so that an entry another process wrote meanwhile is kept. Atomic per key on
   * Redis (a script); on disk, see `DiskMetadataCache`.
   */
  setManyIfUnchanged(entries: MetadataCacheReplacement[]): Promise<boolean[]>;
  /** Removes the key; a key that is not there is no error. */
  delete(key: string): Promise<void>;
  /**
   * Sets `key` only if it holds nothing (or an expired entry); true when this call set it. With
   * `renewIfEqual` and `deleteIfEqual`, the atomic steps of a lease (src/cache/lease.ts): one
   * `cache index` run per store at a time.
   */
  setIfAbsent(key: string, value: string, ttlSeconds: number): Promise<boolean>;
  /**
   * Gives `key` a new time to live of `ttlSeconds` if it still holds `value` (unexpired); true when
   * it did. Atomic on Redis (a script); on disk, see `DiskMetadataCache`.
   */
  renewIfEqual(key: string, value: string, ttlSeconds: number): Promise<boolean>;
  /** Removes `key` if it still holds `value`; true when it did. Atomic like `renewIfEqual`. */
  deleteIfEqual(key: string, value: string): Promise<boolean>;
  /** Releases connections so that the process can exit; the cache is not used afterwards. */
  close(): Promise<void>;
}

export interface MetadataCacheEntry {
  key: string;
  value: string;
  /** Absent: kept until evicted. */
  ttlSeconds?: number;
}

export interface MetadataCacheReplacement {
  key: string;
  value: string;
  /** What the key held when it was read (undefined: nothing). */
  was: string | undefined;
}
