/**
 * `smart cache warm`: the layer chains most shared across a store, prefetched into the layer store;
 * or, `--for` a Dockerfile, what the next build of that app will reuse. Either may then prune the
 * layer store (what the cron that warms keeps bounded).
 */
import type { GcResult, LayerStore } from '../../cache/layer-store.js';
import { defaultJobs } from '../../pipeline/concurrency.js';
import { CachedTrieStore } from '../../cache/trie-store.js';
import { isSmartError } from '../../errors.js';
import type { Image, ImageSource, Layer } from '../../oci/image.js';
import type { Platform } from '../../oci/platform.js';
import type { ImageRef, TrieNode } from '../../trie/layer-trie.js';
import type { StoreAccess } from '../../transports/transport.js';
import { openStore } from '../../transports/all.js';
import { LayerStoreFiller } from './layer-fill.js';
import { holdsChain, imageOf, lacksLayer, missingLayer, pullForBuild, type CachePullOptions, type CachePullResult } from './pull.js';
import type { PlanOptions } from './plan.js';
import { platformOf, type CacheContext } from './session.js';

export interface WarmResult {
  chains: number;
  layers: number;
  fetched: number;
  bytes: number;
  /** Layers unpacked from the blobs a pull kept on this machine, not fetched. */
  fromKeptBlobs: number;
  /** With `pruneAgeMs`: what the layer store's gc removed after the warm. */
  prune?: GcResult;
}

export interface WarmOptions {
  /**
   * After the warm (which counts as a use of what it made present), remove from the layer store
   * what nothing pulled or warmed within this many ms uses: the cron that warms keeps it bounded.
   */
  pruneAgeMs?: number;
}

/**
 * Prefetches into the local layer store the chains most shared across the store (as the last
 * `cache index` counted them): what cron runs on build machines so the next build finds its cache.
 * The trie only chooses: each chain is read from the image the store holds (by manifest digest,
 * verified), and a chain that image does not hold (an index older than the store, or a forged
 * entry) or cannot serve (it lost a layer's blob) is taken from the next image the index names as
 * holding it, or skipped with a warning: the other chains are warmed all the same. Stops (throws
 * the reason) when `ctx.endpoints.signal` aborts.
 */
export async function warmStore(storeName: string, top: number, ctx: CacheContext & WarmOptions & { layerStore: LayerStore }): Promise<WarmResult> {
  const startedAt = Date.now();
  const store = await openStore(storeName, ctx.endpoints);
  const platform = platformOf(ctx);
  const signal = ctx.endpoints.signal;
  const filler = new LayerStoreFiller(ctx.layerStore, ctx.onWarning);
  try {
    const trie = new CachedTrieStore(ctx.cache, store.scope);
    const indexed = await trie.getTop();
    // An index where no chain is in two images (a store of one image) has nothing to warm: not a warning.
    if (indexed === undefined) ctx.onWarning?.(`the metadata cache holds no index of ${store.scope}: run smart cache index ${storeName} first`);
    const chosen = (indexed ?? []).slice(0, top);
    const nodes = (await trie.getNodes(chosen)).filter((n): n is TrieNode => n !== undefined);
    const result: WarmResult = { chains: 0, layers: 0, fetched: 0, bytes: 0, fromKeptBlobs: 0 };
    const done = new Set<string>();
    for (const node of nodes) {
      signal?.throwIfAborted();
      const holder = await holderOf(store, node, platform, {
        jobs: ctx.jobs ?? defaultJobs(),
        signal,
        needed: async (l) => !done.has(l.diffId) && !(await ctx.layerStore.has(l.diffId)),
      });
      if ('damaged' in holder) {
        ctx.onWarning?.(`no image the index names as holding the chain ${node.chainId} can serve it now (${holder.damaged}); skipped: pushing that image to the store again repairs it`);
        continue;
      }
      if ('gone' in holder) {
        ctx.onWarning?.(`no image the index names as holding the chain ${node.chainId} holds it now (deleted or changed since the index); skipped: run smart cache index ${storeName}`);
        continue;
      }
      const { ref, layers, source } = holder;
      try {
        result.chains++;
        // What tells gc these layers are in use (else the next pull's --prune drops them), written
        // before they are filled: a prune meanwhile keeps them too.
        const name = `${ref.repository}@${ref.manifest}`;
        await ctx.layerStore.recordChain(name, layers.map((l) => l.diffId)).catch((e: unknown) => {
          throw ctx.layerStore.storageError(e, `the record of ${name}'s layers`);
        });
        for (const layer of layers) {
          if (done.has(layer.diffId)) continue;
          done.add(layer.diffId);
          result.layers++;
          const how = await filler.ensure(layer, signal, `${ref.repository}@${ref.manifest}`);
          if (how === 'kept') result.fromKeptBlobs++;
          if (how === 'fetched') {
            result.fetched++;
            result.bytes += layer.descriptor.size;
          }
        }
      } finally {
        await source.close();
      }
    }
    // What this warm made present counts as used, whatever the age asked (--prune 0).
    if (ctx.pruneAgeMs !== undefined) result.prune = await ctx.layerStore.gc({ maxAgeMs: ctx.pruneAgeMs, keepUsedSince: startedAt });
    return result;
  } finally {
    await filler.release();
    await store.close();
  }
}

/**
 * The first image the index names as holding `node`'s chain that the store still holds, with the
 * chain's layers, open (the caller closes its source); `gone` when none does, `damaged` (naming
 * the first such image and the layer it lost) when those that hold it cannot serve one of its
 * `needed` layers. The index is a hint: an image deleted from the store since (a registry's
 * cleanup between two crons), a tag that moved, or an image that lost a blob is passed over for
 * the next, not the end of the warm.
 */
async function holderOf(
  store: StoreAccess,
  node: TrieNode,
  platform: Platform,
  options: { jobs: number; signal: AbortSignal | undefined; needed: (layer: Layer) => Promise<boolean> },
): Promise<{ ref: ImageRef; layers: Layer[]; source: ImageSource } | { gone: true } | { damaged: string }> {
  const signal = options.signal;
  let damaged: string | undefined;
  for (const ref of node.images) {
    signal?.throwIfAborted();
    let opened: { image: Image; source: ImageSource };
    try {
      opened = await imageOf(store, ref.repository, ref.manifest, platform);
    } catch (e) {
      if (isSmartError(e) && e.code === 'NOT_FOUND') continue;
      throw e;
    }
    const layers = opened.image.layers.slice(0, node.depth);
    if (holdsChain(layers, node.chainId)) {
      const lost = await missingLayer(opened.source, layers, options).catch(async (e: unknown) => {
        await opened.source.close();
        throw e;
      });
      if (!lost) return { ref, layers, source: opened.source };
      damaged ??= `${ref.repository}@${ref.manifest} ${lacksLayer(lost)}`;
    }
    await opened.source.close();
  }
  return damaged !== undefined ? { damaged } : { gone: true };
}

/**
 * `cache warm --for Dockerfile`: what the next build of this app will reuse, fetched ahead of it
 * (from cron on build machines): the plan, then exactly its layers, into the layer store or as
 * the cache image(s) at `destination` (an OCI layout keeps what it already has: a second run
 * fetches only what changed). A best cache deleted since the index is passed over (`pullForBuild`).
 */
export async function warmForBuild(storeName: string, options: PlanOptions, ctx: CacheContext & CachePullOptions & WarmOptions): Promise<CachePullResult & { prune?: GcResult }> {
  const startedAt = Date.now();
  const pulled = await pullForBuild(storeName, options, ctx);
  return ctx.pruneAgeMs !== undefined && ctx.layerStore ? { ...pulled, prune: await ctx.layerStore.gc({ maxAgeMs: ctx.pruneAgeMs, keepUsedSince: startedAt }) } : pulled;
}
