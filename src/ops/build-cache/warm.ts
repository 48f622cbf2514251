/** `smart cache warm`: the layer chains most shared across a store, prefetched into the layer store. */
import type { LayerStore } from '../../cache/layer-store.js';
import { CachedTrieStore } from '../../cache/trie-store.js';
import type { TrieNode } from '../../trie/layer-trie.js';
import { openStore } from '../../transports/all.js';
import { LayerStoreFiller } from './layer-fill.js';
import { holdsChain, imageOf } from './pull.js';
import { platformOf, type CacheContext } from './session.js';

export interface WarmResult {
  chains: number;
  layers: number;
  fetched: number;
  bytes: number;
  /** Layers unpacked from the blobs a pull kept on this machine, not fetched. */
  fromKeptBlobs: number;
}

/**
 * Prefetches into the local layer store the chains most shared across the store (as the last
 * `cache index` counted them): what cron runs on build machines so the next build finds its cache.
 * The trie only chooses: each chain is read from the image the store holds (by manifest digest,
 * verified), and a chain that image does not hold (an index older than the store, or a forged
 * entry) is skipped with a warning. Stops (throws the reason) when `ctx.endpoints.signal` aborts.
 */
export async function warmStore(storeName: string, top: number, ctx: CacheContext & { layerStore: LayerStore }): Promise<WarmResult> {
  const store = await openStore(storeName, ctx.endpoints);
  const platform = platformOf(ctx);
  const signal = ctx.endpoints.signal;
  const filler = new LayerStoreFiller(ctx.layerStore, ctx.onWarning);
  try {
    const trie = new CachedTrieStore(ctx.cache, store.scope);
    const chosen = (await trie.getTop()).slice(0, top);
    if (chosen.length === 0) ctx.onWarning?.(`the metadata cache holds no index of ${store.scope}: run smart cache index ${storeName} first`);
    const nodes = (await trie.getNodes(chosen)).filter((n): n is TrieNode => n !== undefined);
    const result: WarmResult = { chains: 0, layers: 0, fetched: 0, bytes: 0, fromKeptBlobs: 0 };
    const done = new Set<string>();
    for (const node of nodes) {
      signal?.throwIfAborted();
      const ref = node.images[0];
      if (!ref) continue;
      const { image, source } = await imageOf(store, ref.repository, ref.manifest, platform);
      try {
        const layers = image.layers.slice(0, node.depth);
        if (!holdsChain(layers, node.chainId)) {
          ctx.onWarning?.(`${ref.repository}@${ref.manifest} does not hold the chain the index names (${node.chainId}); skipped: run smart cache index ${storeName}`);
          continue;
        }
        result.chains++;
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
        // Else the next pull's --prune would drop what this run warmed.
        const name = `${ref.repository}@${ref.manifest}`;
        await ctx.layerStore.recordChain(name, layers.map((l) => l.diffId)).catch((e: unknown) => {
          throw ctx.layerStore.storageError(e, `the record of ${name}'s layers`);
        });
      } finally {
        await source.close();
      }
    }
    return result;
  } finally {
    await filler.release();
    await store.close();
  }
}
