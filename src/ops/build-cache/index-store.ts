/**
 * `smart cache index`: the layer trie of a whole store, built or refreshed incrementally, one run
 * per store at a time.
 */
import { trieKeys } from '../../cache/keys.js';
import { CachedTrieStore, edgesOf } from '../../cache/trie-store.js';
import { defaultJobs, TaskGroup } from '../../pipeline/concurrency.js';
import { resolveImage } from '../../pipeline/layers.js';
import { formatPlatform } from '../../oci/platform.js';
import { nodesOf, type IndexedImage, type TrieNode } from '../../trie/layer-trie.js';
import { openStore } from '../../transports/all.js';
import type { StoreAccess } from '../../transports/transport.js';
import { checkImagePlatform, platformOf, type CacheContext } from './session.js';
import { indexedImage, LAYER_SUMMARY_MAX_BYTES } from './steps.js';

export interface IndexSummary {
  store: string;
  repositories: number;
  /** Tags listed, but those deleted before they were read: `refreshed + unchanged` and the tags under `failed`. */
  tags: number;
  /** Tags whose manifest changed since the last run (fetched again). */
  refreshed: number;
  /** Tags unchanged (not fetched). */
  unchanged: number;
  failed: { image: string; error: string }[];
  nodes: number;
  /** Another run holds the store's index lock: nothing was done. */
  skipped?: 'locked';
  /** Who holds it, as its lock entry says. */
  lockedBy?: { pid: number; host: string };
}

/**
 * What an index record holds changed (layer summaries, builder references, the empty RUNs before
 * and after a layer; 5: a BuildKit COPY to a destination with a space summarised under it; 6: the
 * builder read from the image's own entries, not its base's; 7: with `--platform`, an image whose
 * config names another platform is not recorded, where it was recorded as of the one asked):
 * older records are made again.
 */
const RECORD_VERSION = 7;
/** How long the index lock lasts without renewal: what a killed run costs the next one. */
export const INDEX_LEASE_S = 30;

export interface IndexOptions {
  /** The index lock's lease in seconds (default INDEX_LEASE_S); renewed every third of it while the run lives. */
  leaseSeconds?: number;
}

/**
 * Builds or refreshes the trie of a whole store. Incremental: a tag whose manifest digest is the
 * one the last run saw is not fetched again. Runs exclusively per store: a lease in the metadata
 * cache (src/cache/lease.ts), renewed while the run lives and released when it ends, however it
 * ends; a run started meanwhile reports `skipped: 'locked'`. Writes only complete nodes, so cron
 * runs and pushes never corrupt it. Stops (throws the reason) when `ctx.endpoints.signal` aborts or
 * the lease is lost. The cache is written through: open it strict, so that a cache that cannot be
 * written fails the run (`openCacheSession`).
 */
export async function indexStore(storeName: string, ctx: CacheContext, options: IndexOptions = {}): Promise<IndexSummary> {
  const store = await openStore(storeName, ctx.endpoints);
  try {
    const trie = new CachedTrieStore(ctx.cache, store.scope);
    const { acquireLease } = await import('../../cache/lease.js');
    const got = await acquireLease(ctx.cache, trieKeys(store.scope).lock, {
      ttlSeconds: options.leaseSeconds ?? INDEX_LEASE_S,
      what: `the index lock of ${store.scope}`,
      ...(ctx.onWarning ? { onWarning: ctx.onWarning } : {}),
    });
    if ('heldBy' in got) {
      return { store: store.scope, repositories: 0, tags: 0, refreshed: 0, unchanged: 0, failed: [], nodes: 0, skipped: 'locked', ...(got.heldBy ? { lockedBy: got.heldBy } : {}) };
    }
    const signal = ctx.endpoints.signal ? AbortSignal.any([ctx.endpoints.signal, got.lease.signal]) : got.lease.signal;
    try {
      return await buildIndex(store, trie, ctx, signal);
    } finally {
      await got.lease.release();
    }
  } finally {
    await store.close();
  }
}

async function buildIndex(store: StoreAccess, trie: CachedTrieStore, ctx: CacheContext, signal: AbortSignal): Promise<IndexSummary> {
  const platform = platformOf(ctx);
  const platformName = formatPlatform(platform);
  // Asked for (not the machine's by default): an image of another platform is not recorded as of it.
  const asked = ctx.platform !== undefined;
  // Before the tags are listed: a tag pushed from now on is seen by this run or recorded after it began.
  const startedAt = Date.now();
  const group = new TaskGroup({ jobs: ctx.jobs ?? defaultJobs(), signal });
  const repos = await store.repositories();
  const failed: IndexSummary['failed'] = [];
  const listed = await group.all(repos, async (repository) => {
    try {
      return (await store.tags(repository)).map((tag) => ({ repository, tag }));
    } catch (e) {
      if (signal.aborted) throw signal.reason;
      // A repository whose tags cannot be listed (a registry answering 500 for it) is one failure, as a broken image is.
      failed.push({ image: repository, error: (e as Error).message });
      return [];
    }
  });
  const refs = listed.flat();
  const unlisted = failed.length > 0;
  const previous = await trie.readImageRecords(refs);
  let refreshed = 0;
  // Tags listed that named nothing once read: gone since they were listed (deleted), not counted.
  let gone = 0;
  const listedAgain = new Map<string, Promise<string[]>>();
  const images = await group.all(refs.map((ref, i) => ({ ref, i })), async ({ ref, i }): Promise<IndexedImage | undefined> => {
    const name = `${ref.repository}:${ref.tag}`;
    try {
      const digest = await store.tagDigest(ref.repository, ref.tag);
      if (!digest) {
        // Still listed, it is a tag that names no image (its directory without its current link,
        // which the registry lists too): a failure to say, not a tag to skip without a word.
        let again = listedAgain.get(ref.repository);
        if (!again) listedAgain.set(ref.repository, (again = store.tags(ref.repository)));
        if ((await again).includes(ref.tag)) throw new Error('listed, but names no image (a push that stopped before writing the tag, or one writing it now)');
        gone++;
        return undefined;
      }
      const prev = previous[i]!.record;
      // The record holds the top-level digest it was made from: unchanged tags cost one read.
      const record = prev as (IndexedImage & { top?: string; v?: number; platform?: string }) | undefined;
      // ... and the platform it was read for: a multi-platform tag indexed for another is read again.
      if (record && record.top === digest && record.v === RECORD_VERSION && record.platform === platformName) return prev;
      const source = await store.source({ registry: '', repository: ref.repository, digest });
      try {
        const image = await resolveImage(source, platform);
        if (asked) checkImagePlatform(image, platform);
        refreshed++;
        const summaries = { maxBytes: LAYER_SUMMARY_MAX_BYTES, jobs: 2 };
        return { ...(await indexedImage(image, ref, { summaries })), top: digest, v: RECORD_VERSION, platform: platformName } as IndexedImage;
      } finally {
        await source.close();
      }
    } catch (e) {
      if (signal.aborted) throw signal.reason;
      // An image of another platform only, or a broken one: the rest of the store is indexed.
      failed.push({ image: name, error: (e as Error).message });
      return undefined;
    }
  });
  const present = images.filter((x): x is IndexedImage => x !== undefined);
  // The whole trie from scratch, in memory: counts are exact after a full run.
  const nodes = new Map<string, TrieNode>();
  for (const image of present) for (const n of nodesOf(image, nodes, true)) nodes.set(n.chainId, n);
  const all = [...nodes.values()];
  for (let i = 0; i < all.length; i += 1000) {
    signal.throwIfAborted();
    await trie.putNodes(all.slice(i, i + 1000));
  }
  const edges = edgesOf(all);
  for (let i = 0; i < edges.length; i += 1000) {
    signal.throwIfAborted();
    await trie.addEdges(edges.slice(i, i + 1000));
  }
  signal.throwIfAborted();
  // Not over a record a push wrote since the records were read: the tag it names is newer.
  await trie.putIndexRecords(
    images.flatMap((image, i) => (image ? [{ image, stored: previous[i]!.stored }] : [])),
    startedAt,
  );
  // Last: a record this run did not write is now of a tag gone (its image no longer offered by a
  // plan). Not when a repository could not be listed: its tags were not seen, not found gone.
  if (!unlisted) await trie.putIndexedSince(startedAt);
  // The most shared chains, deepest first among equals: what `cache warm --top` fetches.
  const top = all
    .filter((n) => n.imageCount > 1)
    .sort((a, b) => b.imageCount * b.depth - a.imageCount * a.depth)
    .slice(0, 100)
    .map((n) => n.chainId);
  await trie.putTop(top);
  return {
    store: store.scope,
    repositories: repos.length,
    tags: refs.length - gone,
    refreshed,
    unchanged: present.length - refreshed,
    failed,
    nodes: all.length,
  };
}
