/**
 * `smart cache`: the layer trie over every image of a store, and what it answers — which stored
 * image's which layers are the best build cache for a Dockerfile (plan), fetching exactly those
 * (pull), prefetching the most shared chains (warm), and advice that makes builds cache (lint).
 * Reports through return values and callbacks; never prints.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import pLimit from 'p-limit';
import { SmartError, isSmartError } from '../errors.js';
import { parseImageConfig, type ImageConfig } from '../oci/config.js';
import { sha256Digest, type Digest } from '../oci/digest.js';
import type { Image, ImageSource, OpenOptions } from '../oci/image.js';
import { parseManifest, serializeManifest, type Descriptor, type ImageManifest, type ParsedManifest } from '../oci/manifest.js';
import { configMediaType, manifestFamily } from '../oci/mediatypes.js';
import { resolveImage } from '../oci/partial.js';
import { hostPlatform, parsePlatform, type Platform } from '../oci/platform.js';
import { parseReference, type Reference } from '../oci/reference.js';
import { CachedTrieStore, edgesOf, indexedImageOf } from '../cache/trie-store.js';
import type { MetadataCache } from '../cache/metadata-cache.js';
import {
  CONTENT_ANNOTATION,
  STEP_ANNOTATION,
  chainIds,
  matchBuild,
  nodesOf,
  type IndexedImage,
  type Match,
  type StepKey,
  type TrieNode,
} from '../trie/layer-trie.js';
import type { EndpointContext } from './endpoints.js';
import { openStore, type StoreAccess } from './stores.js';


export interface CacheContext {
  cache: MetadataCache;
  endpoints: EndpointContext;
  platform?: string | Platform;
  jobs?: number;
  onWarning?: (message: string) => void;
}

function platformOf(ctx: CacheContext): Platform {
  return typeof ctx.platform === 'string' ? parsePlatform(ctx.platform) : (ctx.platform ?? hostPlatform());
}

/**
 * What the layers of an image were made by: layer descriptor annotations (ours) first, else the
 * image history's non-empty entries in order, in the normal form shared by every builder.
 */
export async function stepsOfImage(image: Image): Promise<(StepKey | undefined)[]> {
  const { normalizeCreatedBy } = await import('../trie/history.js');
  const history = (image.config.history ?? []).filter((h) => !h.empty_layer);
  const aligned = history.length === image.layers.length;
  return image.layers.map((layer, i) => {
    const a = layer.descriptor.annotations;
    if (a?.[STEP_ANNOTATION]) return { instruction: a[STEP_ANNOTATION], ...(a[CONTENT_ANNOTATION] ? { contentDigest: a[CONTENT_ANNOTATION] } : {}) };
    if (!aligned) return undefined;
    const step = normalizeCreatedBy(history[i]?.created_by ?? '');
    // A COPY whose history does not name its sources cannot be compared: no step key.
    if (!step || step.sourcesElided) return undefined;
    return { instruction: step.instruction };
  });
}

export async function indexedImage(image: Image, ref: { repository: string; tag?: string }): Promise<IndexedImage> {
  return indexedImageOf(ref, image.manifest.digest, image.layers, await stepsOfImage(image));
}

export interface IndexSummary {
  store: string;
  repositories: number;
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
    const { acquireLease } = await import('../cache/lease.js');
    const got = await acquireLease(ctx.cache, `trie:v1:${store.scope}:lock`, {
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
  const limit = pLimit(Math.max(1, ctx.jobs ?? 8));
  const repos = await store.repositories();
  const refs = (
    await Promise.all(
      repos.map((repository) =>
        limit(async () => {
          signal.throwIfAborted();
          return (await store.tags(repository)).map((tag) => ({ repository, tag }));
        }),
      ),
    )
  ).flat();
  const previous = await trie.getImageRecords(refs);
  const failed: IndexSummary['failed'] = [];
  let refreshed = 0;
  const images = await Promise.all(
    refs.map((ref, i) =>
      limit(async (): Promise<IndexedImage | undefined> => {
        const name = `${ref.repository}:${ref.tag}`;
        signal.throwIfAborted();
        try {
          const digest = await store.tagDigest(ref.repository, ref.tag);
          if (!digest) return undefined;
          const prev = previous[i];
          // The record holds the top-level digest it was made from: unchanged tags cost one read.
          if (prev && (prev as IndexedImage & { top?: string }).top === digest) return prev;
          const source = await store.source({ registry: '', repository: ref.repository, digest });
          try {
            const image = await resolveImage(source, platform);
            refreshed++;
            return { ...(await indexedImage(image, ref)), top: digest } as IndexedImage;
          } finally {
            await source.close();
          }
        } catch (e) {
          if (signal.aborted) throw signal.reason;
          // An image of another platform only, or a broken one: the rest of the store is indexed.
          failed.push({ image: name, error: (e as Error).message });
          return undefined;
        }
      }),
    ),
  );
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
  await trie.putImageRecords(present);
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
    tags: refs.length,
    refreshed,
    unchanged: present.length - refreshed,
    failed,
    nodes: all.length,
  };
}

// ---------------------------------------------------------------------------------------------
// plan

export interface PlanStep {
  line: number;
  instruction: string;
  matched: boolean;
  /** The step changes nothing the trie records (ENV, CMD...) or has no layer (WORKDIR /). */
  noLayer?: boolean;
}

export interface PlanCandidate {
  image: string;
  manifest: Digest;
  /** Layers that can be used as build cache: the base's and the matched steps'. */
  layers: { digest: Digest; diffId: Digest; size: number }[];
  baseLayers: number;
  steps: number;
  bytes: number;
}

export interface PlanResult {
  store: string;
  base?: { ref: string; layers: number; inStore: number; storedAs?: string };
  steps: PlanStep[];
  best?: PlanCandidate;
  /** Other images holding the same matched chain. */
  alternatives: string[];
  naive?: { image: string; bytes: number };
}

function candidateOf(match: Match): PlanCandidate | undefined {
  const node = match.node;
  const img = node?.images[0];
  if (!node || !img) return undefined;
  const layers = match.path.map((n) => ({ digest: n.blob.digest, diffId: n.diffId, size: n.blob.size }));
  return {
    image: `${img.repository}${img.tag ? `:${img.tag}` : ''}`,
    manifest: img.manifest,
    layers,
    baseLayers: match.baseLayers,
    steps: match.steps,
    bytes: layers.reduce((n, l) => n + l.size, 0),
  };
}

/** The FROM image in the store: `node:20` is looked for as `library/node:20`, then `node:20`. */
async function resolveBase(store: StoreAccess, base: string, platform: Platform): Promise<{ image?: Image; storedAs?: string }> {
  if (base === 'scratch') return {};
  let ref: Reference;
  try {
    ref = parseReference(base);
  } catch {
    return {};
  }
  const candidates = [ref.repository];
  if (ref.registry === 'docker.io' && ref.repository.startsWith('library/')) candidates.push(ref.repository.slice('library/'.length));
  if (ref.registry !== 'docker.io') candidates.push(`${ref.registry}/${ref.repository}`.replace(/:\d+\//, '/'));
  for (const repository of candidates) {
    const tag = ref.tag ?? 'latest';
    const digest = ref.digest ?? (await store.tagDigest(repository, tag));
    if (!digest) continue;
    const source = await store.source({ registry: '', repository, digest });
    try {
      return { image: await resolveImage(source, platform), storedAs: `${repository}${ref.digest ? `@${ref.digest}` : `:${tag}`}` };
    } catch (e) {
      if (isSmartError(e) && e.code === 'NOT_FOUND') continue;
      throw e;
    } finally {
      await source.close();
    }
  }
  return {};
}

export interface PlanOptions {
  dockerfile: string;
  contextDir: string;
  stage?: string;
  buildArgs?: Record<string, string>;
  /** The repository being built, whose latest tag is the naive alternative. */
  repository?: string;
}

export async function planBuild(storeName: string, options: PlanOptions, ctx: CacheContext): Promise<PlanResult> {
  const { parseDockerfile } = await import('../trie/dockerfile.js');
  const { dockerfileSteps } = await import('../trie/steps.js');
  let text: string;
  try {
    text = await fs.readFile(options.dockerfile, 'utf8');
  } catch (e) {
    throw new SmartError('NOT_FOUND', `${options.dockerfile}: no such file`, { input: options.dockerfile, cause: e });
  }
  const df = parseDockerfile(text, options.dockerfile);
  const platform = platformOf(ctx);
  const store = await openStore(storeName, ctx.endpoints);
  try {
    const firstPass = await dockerfileSteps(df, { contextDir: options.contextDir, dockerfilePath: options.dockerfile, ...(options.stage ? { stage: options.stage } : {}), ...(options.buildArgs ? { buildArgs: options.buildArgs } : {}) });
    const { image: baseImage, storedAs } = await resolveBase(store, firstPass.base, platform);
    // Keys are computed as `push --dockerfile` computes them (without the base's ENV), so that
    // both sides of the comparison agree whatever the base defines.
    const build = firstPass;
    const layerSteps = build.steps.filter((s) => s.producesLayer && s.stage === build.stage);
    const trie = new CachedTrieStore(ctx.cache, store.scope);
    const baseChain = baseImage ? chainIds(baseImage.layers.map((l) => l.diffId)) : [];
    const match = await matchBuild(
      trie,
      baseChain,
      layerSteps.map((s) => ({ line: s.line, key: { instruction: s.instruction, ...(s.contentDigest ? { contentDigest: s.contentDigest } : {}) }, ...(s.layerOptional ? { optional: true } : {}) })),
    );
    const best = candidateOf(match);
    const result: PlanResult = {
      store: store.scope,
      ...(baseImage ? { base: { ref: build.base, layers: baseChain.length, inStore: match.baseLayers, ...(storedAs ? { storedAs } : {}) } } : { base: { ref: build.base, layers: 0, inStore: 0 } }),
      steps: build.steps
        .filter((s) => s.stage === build.stage)
        .map((s) => {
          const k = layerSteps.indexOf(s);
          return { line: s.line, instruction: s.instruction, matched: match.matchedSteps.includes(k), ...(k < 0 ? { noLayer: true } : {}) };
        }),
      ...(best ? { best } : {}),
      alternatives: (match.node?.images ?? []).slice(1, 6).map((r) => `${r.repository}${r.tag ? `:${r.tag}` : ''}`),
    };
    const naiveRepo = options.repository ?? match.node?.images[0]?.repository;
    if (naiveRepo) {
      const digest = await store.tagDigest(naiveRepo, 'latest');
      if (digest) {
        const source = await store.source({ registry: '', repository: naiveRepo, digest });
        try {
          const latest = await resolveImage(source, platform);
          result.naive = { image: `${naiveRepo}:latest`, bytes: latest.layers.reduce((n, l) => n + l.descriptor.size, 0) };
        } finally {
          await source.close();
        }
      }
    }
    return result;
  } finally {
    await store.close();
  }
}

/** `--image SRC`: which stored images share most of a built image's layers. */
export async function planForImage(storeName: string, image: Image, ctx: CacheContext): Promise<PlanResult> {
  const store = await openStore(storeName, ctx.endpoints);
  try {
    const trie = new CachedTrieStore(ctx.cache, store.scope);
    const ids = chainIds(image.layers.map((l) => l.diffId));
    const nodes = await trie.getNodes(ids);
    let depth = 0;
    while (depth < nodes.length && nodes[depth]) depth++;
    const path = nodes.slice(0, depth) as TrieNode[];
    const best = candidateOf({ node: path[path.length - 1], baseLayers: depth, steps: 0, path, matchedSteps: [] });
    return {
      store: store.scope,
      steps: [],
      ...(best ? { best } : {}),
      alternatives: (path[path.length - 1]?.images ?? []).slice(1, 6).map((r) => `${r.repository}${r.tag ? `:${r.tag}` : ''}`),
    };
  } finally {
    await store.close();
  }
}

// ---------------------------------------------------------------------------------------------
// pull: the matched prefix of the best image, as a truncated image

/**
 * The first `keep` layers of an image as an image of their own: the manifest cut to them, the
 * config's diff ids cut to match and its history cut after the last kept layer's entry. A builder
 * reusing it as cache finds exactly the matched steps.
 */
export function truncatedSource(image: Image, source: ImageSource, keep: number): ImageSource {
  const config: ImageConfig = parseImageConfig(image.configBytes);
  let seen = 0;
  const history = [];
  for (const h of config.history ?? []) {
    if (!h.empty_layer) {
      if (seen === keep) break;
      seen++;
    }
    history.push(h);
  }
  const cut = { ...config, rootfs: { type: 'layers' as const, diff_ids: config.rootfs.diff_ids.slice(0, keep) }, ...(config.history ? { history } : {}) };
  const configBytes = Buffer.from(JSON.stringify(cut));
  const family = manifestFamily(image.manifest.mediaType);
  const doc: ImageManifest = {
    schemaVersion: 2,
    mediaType: image.manifest.mediaType,
    config: { mediaType: image.manifest.manifest.config.mediaType ?? configMediaType(family), digest: sha256Digest(configBytes), size: configBytes.length },
    layers: image.manifest.manifest.layers.slice(0, keep),
  };
  const manifest = parseManifest(serializeManifest(doc), doc.mediaType, `${image.name} (first ${keep} layers)`);
  return {
    name: `${image.name} (first ${keep} layers)`,
    getManifest: async (): Promise<ParsedManifest> => manifest,
    getManifestByDigest: async () => manifest,
    getBlob: async (d: Descriptor, o?: OpenOptions) => (d.digest === doc.config.digest ? Readable.from([configBytes]) : source.getBlob(d, o)),
    repoTags: () => [],
    close: () => source.close(),
  };
}


// ---------------------------------------------------------------------------------------------
// pull, warm, lint

export interface CachePullResult {
  plan: PlanResult;
  /** Layers fetched (not already on the machine) and their compressed bytes. */
  fetched: number;
  bytes: number;
  /** Where they went: the local layer store, or a destination image name. */
  destination: string;
  /** A truncated image written to a destination: its manifest digest. */
  manifestDigest?: Digest;
}

async function imageOf(store: StoreAccess, repository: string, manifest: Digest, platform: Platform): Promise<{ image: Image; source: ImageSource }> {
  const source = await store.source({ registry: '', repository, digest: manifest });
  return { image: await resolveImage(source, platform), source };
}

/**
 * Fetches exactly the layers the plan matched (not one more): into the local layer store, or, with
 * `destination`, as the truncated image (the matched prefix) written there.
 */
export async function pullPlanned(
  storeName: string,
  plan: PlanResult,
  ctx: CacheContext & { layerStore?: import('../cache/layer-store.js').LayerStore; destination?: string },
): Promise<CachePullResult> {
  const best = plan.best;
  if (!best || best.layers.length === 0) {
    return { plan, fetched: 0, bytes: 0, destination: ctx.destination ?? 'layer store' };
  }
  const store = await openStore(storeName, ctx.endpoints);
  const platform = platformOf(ctx);
  const repository = best.image.replace(/:[^:/]+$/, '');
  const { image, source } = await imageOf(store, repository, best.manifest, platform);
  try {
    const keep = best.layers.length;
    // The plan comes from the trie, a hint: it is followed only as far as the stored image agrees.
    if (!holdsChain(image.layers.slice(0, keep), chainIds(best.layers.map((l) => l.diffId)).at(-1)!)) {
      throw new SmartError('NOT_FOUND', `${best.image}@${best.manifest} does not hold the ${keep} layers the plan names (the index is older than the store)`, {
        input: `${best.image}@${best.manifest}`,
        hint: `run smart cache index ${storeName}`,
      });
    }
    if (ctx.destination) {
      const { parseImageName } = await import('../transports/names.js');
      const { openDestination } = await import('./endpoints.js');
      const { copyImage, writeImage } = await import('./copy.js');
      const cut = truncatedSource(image, source, keep);
      const dest = await openDestination(parseImageName(ctx.destination), ctx.endpoints);
      let bytes = 0;
      let fetched = 0;
      const options = {
        platform,
        jobs: ctx.jobs ?? 4,
        ...(ctx.endpoints.signal ? { signal: ctx.endpoints.signal } : {}),
        onLayer: (e: { status: string; bytes: number }) => {
          if (e.status !== 'skipped') fetched++;
          bytes += e.bytes;
        },
      };
      try {
        const summary = dest.kind === 'blobs' ? await copyImage(cut, dest.dest, options) : await writeImage(cut, dest.writer, options);
        return { plan, fetched, bytes, destination: ctx.destination, manifestDigest: summary.manifestDigest };
      } finally {
        if (dest.kind === 'blobs') await dest.dest.close();
      }
    }
    if (!ctx.layerStore) throw new SmartError('USAGE', 'cache pull needs a destination or a layer store (--cache-dir)');
    const layerStore = ctx.layerStore;
    let fetched = 0;
    let bytes = 0;
    const limit = pLimit(Math.max(1, ctx.jobs ?? 4));
    await Promise.all(
      image.layers.slice(0, keep).map((layer) =>
        limit(async () => {
          const signal = ctx.endpoints.signal;
          const how = await layerStore.ensure(layer.diffId, () => layer.openUncompressed(signal ? { signal } : {}), signal);
          if (how === 'fetched') {
            fetched++;
            bytes += layer.descriptor.size;
          }
        }),
      ),
    );
    return { plan, fetched, bytes, destination: layerStore.dir };
  } finally {
    await source.close();
    await store.close();
  }
}

/** The flags that make a builder use the planned image as its cache. */
export function cacheFromFlags(builder: string, imageRef: string): string {
  switch (builder) {
    case 'docker':
      return `--cache-from ${imageRef}`;
    case 'buildx':
      return `--cache-from type=registry,ref=${imageRef}`;
    case 'buildah':
      return `--layers --cache-from ${imageRef.replace(/[:@][^/]*$/, '')}`;
    case 'kaniko':
      return `--cache=true --cache-repo=${imageRef.replace(/[:@][^/]*$/, '')}`;
    default:
      throw new SmartError('USAGE', `unknown builder "${builder}": docker, buildx, buildah or kaniko`, { input: builder });
  }
}

export interface WarmResult {
  chains: number;
  layers: number;
  fetched: number;
  bytes: number;
}

/**
 * Prefetches into the local layer store the chains most shared across the store (as the last
 * `cache index` counted them): what cron runs on build machines so the next build finds its cache.
 * The trie only chooses: each chain is read from the image the store holds (by manifest digest,
 * verified), and a chain that image does not hold (an index older than the store, or a forged
 * entry) is skipped with a warning. Stops (throws the reason) when `ctx.endpoints.signal` aborts.
 */
export async function warmStore(storeName: string, top: number, ctx: CacheContext & { layerStore: import('../cache/layer-store.js').LayerStore }): Promise<WarmResult> {
  const store = await openStore(storeName, ctx.endpoints);
  const platform = platformOf(ctx);
  const signal = ctx.endpoints.signal;
  try {
    const trie = new CachedTrieStore(ctx.cache, store.scope);
    const chosen = (await trie.getTop()).slice(0, top);
    if (chosen.length === 0) ctx.onWarning?.(`the metadata cache holds no index of ${store.scope}: run smart cache index ${storeName} first`);
    const nodes = (await trie.getNodes(chosen)).filter((n): n is TrieNode => n !== undefined);
    const result: WarmResult = { chains: 0, layers: 0, fetched: 0, bytes: 0 };
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
          if ((await ctx.layerStore.ensure(layer.diffId, () => layer.openUncompressed(signal ? { signal } : {}), signal)) === 'fetched') {
            result.fetched++;
            result.bytes += layer.descriptor.size;
          }
        }
      } finally {
        await source.close();
      }
    }
    return result;
  } finally {
    await store.close();
  }
}

/** True when `layers` (an image's first ones, from the store) are exactly the chain `chainId` names. */
function holdsChain(layers: readonly { diffId: Digest }[], chainId: Digest): boolean {
  return layers.length > 0 && chainIds(layers.map((l) => l.diffId)).at(-1) === chainId;
}

export async function lint(dockerfile: string, contextDir: string) {
  const { parseDockerfile } = await import('../trie/dockerfile.js');
  const { lintBuild } = await import('../trie/lint.js');
  let text: string;
  try {
    text = await fs.readFile(dockerfile, 'utf8');
  } catch (e) {
    throw new SmartError('NOT_FOUND', `${dockerfile}: no such file`, { input: dockerfile, cause: e });
  }
  const advice = await lintBuild(parseDockerfile(text, dockerfile), contextDir, { dockerfilePath: dockerfile });
  return { advice: [...advice], contextSizes: advice.contextSizes };
}


export interface CacheSession {
  ctx: CacheContext;
  layerStore: import('../cache/layer-store.js').LayerStore;
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
  remote?: import('./endpoints.js').RemoteOptions;
  platform?: string;
  jobs?: number;
  signal?: AbortSignal;
  onWarning?: (m: string) => void;
}): Promise<CacheSession> {
  const { openCache } = await import('./transfer.js');
  const { LayerStore } = await import('../cache/layer-store.js');
  const cache = await openCache({ cacheDir: options.cacheDir, strict: true, ...(options.redisUrl ? { redisUrl: options.redisUrl } : {}), ...(options.onWarning ? { onWarning: options.onWarning } : {}) });
  const endpoints: EndpointContext = {
    stdin: process.stdin,
    stdout: process.stdout,
    ...(options.remote ? { remote: options.remote } : {}),
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
    layerStore: new LayerStore(options.layerStoreDir ?? path.join(options.cacheDir, 'layer-store')),
    close: () => cache.close(),
  };
}

/**
 * `smart push --dockerfile F --context DIR`: which Dockerfile step made which layer of the image.
 * The target stage's layer-producing steps are the image's last layers; a WORKDIR may have made a
 * layer or not, which the history tells (a non-empty WORKDIR entry). Aligned from the end; the
 * layers before them are the base's and get no step.
 */
export async function stepsForPush(image: Image, options: { dockerfile: string; contextDir: string; stage?: string; buildArgs?: Record<string, string> }): Promise<(StepKey | undefined)[]> {
  const { parseDockerfile } = await import('../trie/dockerfile.js');
  const { dockerfileSteps } = await import('../trie/steps.js');
  const { normalizeCreatedBy } = await import('../trie/history.js');
  let text: string;
  try {
    text = await fs.readFile(options.dockerfile, 'utf8');
  } catch (e) {
    throw new SmartError('NOT_FOUND', `${options.dockerfile}: no such file`, { input: options.dockerfile, cause: e });
  }
  const build = await dockerfileSteps(parseDockerfile(text, options.dockerfile), {
    contextDir: options.contextDir,
    dockerfilePath: options.dockerfile,
    ...(options.stage ? { stage: options.stage } : {}),
    ...(options.buildArgs ? { buildArgs: options.buildArgs } : {}),
  });
  const steps = build.steps.filter((s) => s.producesLayer && s.stage === build.stage);
  const history = (image.config.history ?? []).filter((h) => !h.empty_layer);
  const aligned = history.length === image.layers.length;
  const out: (StepKey | undefined)[] = image.layers.map(() => undefined);
  let layer = image.layers.length - 1;
  for (let s = steps.length - 1; s >= 0 && layer >= 0; s--) {
    const step = steps[s]!;
    if (step.layerOptional) {
      const h = aligned ? normalizeCreatedBy(history[layer]?.created_by ?? '') : undefined;
      if (!h || !h.instruction.startsWith('WORKDIR')) continue; // this WORKDIR made no layer
    }
    out[layer--] = { instruction: step.instruction, ...(step.contentDigest ? { contentDigest: step.contentDigest } : {}) };
  }
  return out;
}
