/**
 * `smart cache`: the layer trie over every image of a store, and what it answers — which stored
 * image's which layers are the best build cache for a Dockerfile (plan), fetching exactly those
 * (pull), prefetching the most shared chains (warm), and advice that makes builds cache (lint).
 * Reports through return values and callbacks; never prints.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { SmartError, isSmartError } from '../errors.js';
import type { Digest } from '../oci/digest.js';
import type { Image, ImageSource } from '../oci/image.js';
import { resolveImage } from '../pipeline/layers.js';
import { hostPlatform, parsePlatform, type Platform } from '../oci/platform.js';
import { parseReference, type Reference } from '../oci/reference.js';
import { trieKeys } from '../cache/keys.js';
import { CachedTrieStore, edgesOf, indexedImageOf } from '../cache/trie-store.js';
import { defaultJobs, TaskGroup } from '../pipeline/concurrency.js';
import type { MetadataCache } from '../cache/metadata-cache.js';
import {
  CONTENT_ANNOTATION,
  STEP_ANNOTATION,
  chainIds,
  matchBuild,
  nodesOf,
  type ImageBuilder,
  type ImageRef,
  type IndexedImage,
  type Match,
  type StepKey,
  type TrieNode,
} from '../trie/layer-trie.js';
import { openStore } from '../transports/all.js';
import type { OpenContext, StoreAccess } from '../transports/transport.js';


export interface CacheContext {
  cache: MetadataCache;
  endpoints: OpenContext;
  platform?: string | Platform;
  jobs?: number;
  onWarning?: (message: string) => void;
}

function platformOf(ctx: CacheContext): Platform {
  return typeof ctx.platform === 'string' ? parsePlatform(ctx.platform) : (ctx.platform ?? hostPlatform());
}

/** What made one layer: its key in the trie, and the other keys it is known under. */
export interface LayerKeys {
  step?: StepKey;
  also?: StepKey[];
}

/** COPY/ADD layers up to this size (stored bytes) are read at index time for the summary of their files. */
export const LAYER_SUMMARY_MAX_BYTES = 32 * 1024 * 1024;

/**
 * What the layers of an image were made by: layer descriptor annotations (ours) first, else the
 * image history's non-empty entries in order, in the normal form shared by every builder (a
 * COPY/ADD keyed by the content reference its builder wrote, when it wrote one). With
 * `summaries`, COPY/ADD layers up to `maxBytes` are read, and the summary of their files is a
 * key too (the step's own when the history gives no other): see trie/image-steps.ts.
 */
export async function layerKeysOfImage(image: Image, options: { summaries?: { maxBytes: number; jobs?: number } } = {}): Promise<LayerKeys[]> {
  const { historyLayerSteps, historyStepKey, layerEntries, summarizable, summaryStepKey } = await import('../trie/image-steps.js');
  const history = historyLayerSteps(image.config.history, image.layers.length);
  const summaries = options.summaries;
  // Independent reads: one that fails costs its layer its summary, not the others theirs.
  const reads = new TaskGroup({ jobs: summaries?.jobs ?? 2, failFast: false });
  return Promise.all(
    image.layers.map(async (layer, i): Promise<LayerKeys> => {
      const keys: StepKey[] = [];
      const a = layer.descriptor.annotations;
      if (a?.[STEP_ANNOTATION]) keys.push({ instruction: a[STEP_ANNOTATION], ...(a[CONTENT_ANNOTATION] ? { contentDigest: a[CONTENT_ANNOTATION] } : {}) });
      const h = history?.[i];
      if (h) {
        const fromHistory = historyStepKey(h);
        // Not a base image's root file system (`ADD rootfs.tar /` as the first layer): no build copies it.
        if (summaries && i > 0 && summarizable(h) && layer.descriptor.size <= summaries.maxBytes) {
          // A layer that cannot be read is no reason to fail the index: it simply gets no summary.
          const entries = await reads.run(async () => layerEntries(await layer.openUncompressed())).catch(() => undefined);
          const summary = entries && summaryStepKey(h, entries);
          if (summary) keys.push(summary);
        }
        if (fromHistory) keys.push(fromHistory);
      }
      const [step, ...also] = keys;
      return { ...(step ? { step } : {}), ...(also.length ? { also } : {}) };
    }),
  );
}

/** The primary key of each layer (what a push records). */
export async function stepsOfImage(image: Image): Promise<(StepKey | undefined)[]> {
  return (await layerKeysOfImage(image)).map((k) => k.step);
}

/**
 * What the trie records of an image besides its layers: whether it carries BuildKit's inline cache
 * (its config holds the metadata), and which builder made its own steps, from the way its last
 * history entries are written (BuildKit: `… # buildkit`; buildah: `FROM …` comments; the classic
 * builder: `#(nop)` entries without them).
 */
export function imageFacts(image: Pick<Image, 'config'>): Pick<ImageRef, 'inlineCache' | 'builder'> {
  const own = (image.config.history ?? []).filter((h) => h.created_by).slice(-3);
  let builder: ImageRef['builder'];
  if (own.some((h) => h.created_by!.endsWith(' # buildkit') || h.comment === 'buildkit.dockerfile.v0')) builder = 'buildkit';
  else if (own.some((h) => h.comment?.startsWith('FROM '))) builder = 'buildah';
  else if (own.some((h) => h.created_by!.includes('#(nop)'))) builder = 'docker';
  return {
    ...(Object.hasOwn(image.config, 'moby.buildkit.cache.v0') ? { inlineCache: true as const } : {}),
    ...(builder ? { builder } : {}),
  };
}

export async function indexedImage(image: Image, ref: { repository: string; tag?: string }, options: Parameters<typeof layerKeysOfImage>[1] = {}): Promise<IndexedImage> {
  const keys = await layerKeysOfImage(image, options);
  return indexedImageOf(
    ref,
    image.manifest.digest,
    image.layers,
    keys.map((k) => k.step),
    keys.map((k) => k.also),
    imageFacts(image),
  );
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

/** What an index record holds changed (layer summaries, builder references): older records are made again. */
const RECORD_VERSION = 2;
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
  const group = new TaskGroup({ jobs: ctx.jobs ?? defaultJobs(), signal });
  const repos = await store.repositories();
  const refs = (await group.all(repos, async (repository) => (await store.tags(repository)).map((tag) => ({ repository, tag })))).flat();
  const previous = await trie.getImageRecords(refs);
  const failed: IndexSummary['failed'] = [];
  let refreshed = 0;
  const images = await group.all(refs.map((ref, i) => ({ ref, i })), async ({ ref, i }): Promise<IndexedImage | undefined> => {
    const name = `${ref.repository}:${ref.tag}`;
    try {
      const digest = await store.tagDigest(ref.repository, ref.tag);
      if (!digest) return undefined;
      const prev = previous[i];
      // The record holds the top-level digest it was made from: unchanged tags cost one read.
      const record = prev as (IndexedImage & { top?: string; v?: number }) | undefined;
      if (record && record.top === digest && record.v === RECORD_VERSION) return prev;
      const source = await store.source({ registry: '', repository: ref.repository, digest });
      try {
        const image = await resolveImage(source, platform);
        refreshed++;
        const summaries = { maxBytes: LAYER_SUMMARY_MAX_BYTES, jobs: 2 };
        return { ...(await indexedImage(image, ref, { summaries })), top: digest, v: RECORD_VERSION } as IndexedImage;
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
  /** The image carries BuildKit's inline cache metadata (images that do are preferred). */
  inlineCache?: boolean;
  /** Layers that can be used as build cache: the base's and the matched steps'. */
  layers: { digest: Digest; diffId: Digest; size: number }[];
  baseLayers: number;
  steps: number;
  bytes: number;
}

export interface PlanResult {
  store: string;
  /** `history`: the base image's history entries (where a stored image's own steps begin). */
  base?: { ref: string; layers: number; inStore: number; storedAs?: string; resolvedVia?: BaseResolution; history?: number };
  steps: PlanStep[];
  best?: PlanCandidate;
  /** Other images holding the same matched chain. */
  alternatives: string[];
  naive?: { image: string; bytes: number };
}

/** The kind of image each builder can use as its cache. */
const BUILT_BY: Record<CacheBuilder, ImageBuilder> = { docker: 'docker', buildkit: 'buildkit', buildx: 'buildkit', buildah: 'buildah' };

/** Whether an image could serve as this builder's cache (an image of unknown making might). */
function usableBy(builder: CacheBuilder | undefined, image: ImageRef): boolean {
  return !builder || !image.builder || image.builder === BUILT_BY[builder];
}

/**
 * Images holding the chain, those the builder can use first, then those BuildKit can use as cache
 * (the layers are the same either way).
 */
function preferred(images: readonly ImageRef[], builder?: CacheBuilder): ImageRef[] {
  const usable = images.filter((i) => usableBy(builder, i));
  const rest = images.filter((i) => !usableBy(builder, i));
  return [...usable.filter((i) => i.inlineCache), ...usable.filter((i) => !i.inlineCache), ...rest];
}

function candidateOf(match: Match, builder?: CacheBuilder): PlanCandidate | undefined {
  const node = match.node;
  const img = node && preferred(node.images, builder)[0];
  if (!node || !img) return undefined;
  const layers = match.path.map((n) => ({ digest: n.blob.digest, diffId: n.diffId, size: n.blob.size }));
  return {
    image: `${img.repository}${img.tag ? `:${img.tag}` : ''}`,
    manifest: img.manifest,
    ...(img.inlineCache ? { inlineCache: true } : {}),
    layers,
    baseLayers: match.baseLayers,
    steps: match.steps,
    bytes: layers.reduce((n, l) => n + l.size, 0),
  };
}

/** How the FROM image was found: in the store, through its transport (`oci:DIR:TAG`...), or from its registry. */
export type BaseResolution = 'store' | 'transport' | 'registry';

/** FROM values naming an image through a transport, as buildah accepts them. */
const TRANSPORT_BASE = /^(oci|oci-archive|docker-archive):|^docker:\/\//;

/**
 * The FROM image: through its transport when it names one; else in the store, under its name and
 * the names it is mirrored under (`node:20` as `library/node:20`, then `node:20`; a registry's
 * mirrors from registries.conf when the store is that mirror); else from its registry over the
 * API, with the usual credentials, mirrors and registries.conf. Not found anywhere: no image (the
 * plan then matches nothing), and a warning saying why.
 */
async function resolveBase(store: StoreAccess, base: string, platform: Platform, ctx: CacheContext): Promise<{ image?: Image; storedAs?: string; via?: BaseResolution }> {
  if (base === 'scratch') return {};
  const { openSource, parseImageName } = await import('../transports/all.js');
  const { isStreamed } = await import('../oci/image.js');
  const resolveNamed = async (name: ReturnType<typeof parseImageName>): Promise<Image> => {
    const opened = await openSource(name, ctx.endpoints);
    if (isStreamed(opened)) throw new SmartError('USAGE', `FROM ${base}: a stream cannot be a base image`, { input: base });
    try {
      return await resolveImage(opened, platform);
    } finally {
      await opened.close();
    }
  };
  if (TRANSPORT_BASE.test(base)) {
    try {
      const name = parseImageName(base);
      return { image: await resolveNamed(name), storedAs: base, via: name.transport === 'docker' ? 'registry' : 'transport' };
    } catch (e) {
      ctx.onWarning?.(`FROM ${base}: ${(e as Error).message}`);
      return {};
    }
  }
  let ref: Reference;
  try {
    ref = parseReference(base);
  } catch {
    return {};
  }
  const candidates = [ref.repository];
  if (ref.registry === 'docker.io' && ref.repository.startsWith('library/')) candidates.push(ref.repository.slice('library/'.length));
  if (ref.registry !== 'docker.io') candidates.push(`${ref.registry}/${ref.repository}`.replace(/:\d+\//, '/'));
  const storeHost = /^docker:\/\/(.+)$/.exec(store.scope)?.[1];
  if (storeHost) {
    const { loadRegistriesConf, pullSources } = await import('../transports/registry/registries-conf.js');
    try {
      const mirrored = pullSources(await loadRegistriesConf(), ref, { dockerHub: ctx.endpoints.remote?.registryMirrors ?? [] });
      for (const m of mirrored) if (m.registry === storeHost && !candidates.includes(m.repository)) candidates.push(m.repository);
    } catch {
      // A registries.conf that blocks the name or cannot be read: the store names only.
    }
  }
  for (const repository of candidates) {
    const tag = ref.tag ?? 'latest';
    const digest = ref.digest ?? (await store.tagDigest(repository, tag));
    if (!digest) continue;
    const source = await store.source({ registry: '', repository, digest });
    try {
      return { image: await resolveImage(source, platform), storedAs: `${repository}${ref.digest ? `@${ref.digest}` : `:${tag}`}`, via: 'store' };
    } catch (e) {
      if (isSmartError(e) && e.code === 'NOT_FOUND') continue;
      throw e;
    } finally {
      await source.close();
    }
  }
  try {
    const image = await resolveNamed({ transport: 'docker' as const, ref, raw: `docker://${base}` });
    return { image, storedAs: `${ref.registry}/${ref.repository}${ref.digest ? `@${ref.digest}` : `:${ref.tag ?? 'latest'}`}`, via: 'registry' };
  } catch (e) {
    ctx.onWarning?.(`FROM ${base}: not in the store, and not found through its registry: ${(e as Error).message}`);
    return {};
  }
}

export interface PlanOptions {
  dockerfile: string;
  contextDir: string;
  stage?: string;
  buildArgs?: Record<string, string>;
  /** The repository being built, whose latest tag is the naive alternative. */
  repository?: string;
  /**
   * The builder the cache is for: only layers it could reuse are matched (its own history's content
   * references; BuildKit: what `push --dockerfile` recorded and the layers' files). Absent: any
   * builder's, and layers matched by their files alone.
   */
  builder?: CacheBuilder;
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
    const firstPass = await dockerfileSteps(df, {
      contextDir: options.contextDir,
      dockerfilePath: options.dockerfile,
      builderKeys: true,
      ...(options.stage ? { stage: options.stage } : {}),
      ...(options.buildArgs ? { buildArgs: options.buildArgs } : {}),
    });
    const { image: baseImage, storedAs, via } = await resolveBase(store, firstPass.base, platform, ctx);
    // Keys are computed as `push --dockerfile` computes them (without the base's ENV), so that
    // both sides of the comparison agree whatever the base defines.
    const build = firstPass;
    const layerSteps = build.steps.filter((s) => s.producesLayer && s.stage === build.stage);
    const trie = new CachedTrieStore(ctx.cache, store.scope);
    const baseChain = baseImage ? chainIds(baseImage.layers.map((l) => l.diffId)) : [];
    const match = await matchBuild(
      trie,
      baseChain,
      layerSteps.map((s) => ({
        line: s.line,
        key: { instruction: s.instruction, ...(s.contentDigest ? { contentDigest: s.contentDigest } : {}) },
        ...(s.alternatives ? { alternatives: s.alternatives.map((a) => a.key) } : {}),
        ...(s.layerOptional ? { optional: true } : {}),
      })),
      // For a builder: only through layers that images it could have made hold.
      options.builder ? { accept: (n) => n.images.some((i) => usableBy(options.builder, i)) } : {},
    );
    const best = candidateOf(match, options.builder);
    const result: PlanResult = {
      store: store.scope,
      ...(baseImage
        ? {
            base: {
              ref: build.base,
              layers: baseChain.length,
              inStore: match.baseLayers,
              ...(storedAs ? { storedAs } : {}),
              ...(via ? { resolvedVia: via } : {}),
              history: baseImage.config.history?.length ?? 0,
            },
          }
        : { base: { ref: build.base, layers: 0, inStore: 0 } }),
      steps: build.steps
        .filter((s) => s.stage === build.stage)
        .map((s) => {
          const k = layerSteps.indexOf(s);
          return { line: s.line, instruction: s.instruction, matched: match.matchedSteps.includes(k), ...(k < 0 ? { noLayer: true } : {}) };
        }),
      ...(best ? { best } : {}),
      alternatives: preferred(match.node?.images ?? [], options.builder).slice(1, 6).map((r) => `${r.repository}${r.tag ? `:${r.tag}` : ''}`),
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
// pull, warm, lint

export interface CachePullResult {
  plan: PlanResult;
  /** Layers fetched (not already on the machine) and their compressed bytes. */
  fetched: number;
  bytes: number;
  /** Where they went: the local layer store, or a destination image name. */
  destination: string;
  /** A truncated image written to a destination: its manifest digest (the last one, per step). */
  manifestDigest?: Digest;
  /** The names the written images carry (a docker-archive's, or each per-step image's `oci:DIR:TAG`). */
  images?: string[];
  /** What to give the builder, when asked for (`cacheFromInstructions`). */
  cacheFrom?: CacheFromInstructions;
}

export interface CachePullOptions {
  layerStore?: import('../cache/layer-store.js').LayerStore;
  /** Where the matched prefix goes as an image (default: its layers into the layer store). */
  destination?: string;
  /** The name a docker-archive is written under (default `smartcache/REPO:CHAIN`, see `defaultCacheTag`). */
  tag?: string;
  /**
   * One image per build step of the prefix (what buildah's `--layers` cache needs), into an OCI
   * layout (`oci:DIR[:NAME]`), tagged `NAME-1`, `NAME-2`... (NAME default `smartcache`).
   */
  perStep?: boolean;
}

async function imageOf(store: StoreAccess, repository: string, manifest: Digest, platform: Platform): Promise<{ image: Image; source: ImageSource }> {
  const source = await store.source({ registry: '', repository, digest: manifest });
  return { image: await resolveImage(source, platform), source };
}

/**
 * The name a docker-archive of the matched prefix carries by default: `smartcache/<repository>:<the
 * first 12 hex digits of the prefix's chain id>` (the same prefix, the same name; `docker load`
 * then tags it, and `--cache-from` names it).
 */
export function defaultCacheTag(plan: PlanResult): string | undefined {
  const best = plan.best;
  if (!best || best.layers.length === 0) return undefined;
  const chain = chainIds(best.layers.map((l) => l.diffId)).at(-1)!;
  return `smartcache/${best.image.replace(/:[^:/]+$/, '')}:${chain.slice(7, 19)}`;
}

/** How many history entries the matched prefix of `image` spans: through the entry of its last layer. */
function prefixHistory(image: Image, keep: number): number {
  let layers = 0;
  const history = image.config.history ?? [];
  for (let i = 0; i < history.length; i++) {
    if (!history[i]!.empty_layer && ++layers === keep) return i + 1;
  }
  return history.length;
}

/**
 * Fetches exactly the layers the plan matched (not one more): into the local layer store, or, with
 * `destination`, as the truncated image (the matched prefix) written there — or, `perStep`, as one
 * image per build step of the prefix.
 */
export async function pullPlanned(storeName: string, plan: PlanResult, ctx: CacheContext & CachePullOptions): Promise<CachePullResult> {
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
      const { openDestination, parseImageName } = await import('../transports/all.js');
      const { isImageWriter } = await import('../oci/image.js');
      const { copy } = await import('./copy.js');
      const { historyCutSource, stepCuts } = await import('./cache-images.js');
      const name = parseImageName(ctx.destination);
      const baseHistory = plan.base?.history ?? prefixHistory(image, best.baseLayers);
      // What to write: the prefix as one image, or one image per step, each to its own name.
      let targets: { name: typeof name; raw: string; cut: ImageSource }[];
      if (ctx.perStep) {
        if (name.transport !== 'oci') {
          throw new SmartError('USAGE', `${ctx.destination}: one image per step is written into an OCI layout; name one as oci:DIR[:NAME]`, { input: ctx.destination });
        }
        const dir = path.resolve(name.dir);
        const prefix = name.tag ?? 'smartcache';
        targets = stepCuts(image.config.history ?? [], baseHistory, keep).map((entries, i) => {
          const raw = `oci:${dir}:${prefix}-${i + 1}`;
          return { name: parseImageName(raw), raw, cut: historyCutSource(image, source, entries, { baseHistory }) };
        });
      } else {
        const named = name.transport === 'docker-archive' && name.selection.kind === 'name' ? name.selection.name : undefined;
        const tag = named ?? (name.transport === 'docker-archive' ? (ctx.tag ?? defaultCacheTag(plan)) : undefined);
        targets = [{ name, raw: ctx.destination, cut: historyCutSource(image, source, prefixHistory(image, keep), { baseHistory, ...(tag ? { repoTags: [tag] } : {}) }) }];
      }
      let bytes = 0;
      let fetched = 0;
      let manifestDigest: Digest | undefined;
      const counted = new Set<string>();
      const options = {
        platform,
        jobs: ctx.jobs ?? defaultJobs(),
        ...(ctx.endpoints.signal ? { signal: ctx.endpoints.signal } : {}),
        onLayer: (e: { status: string; bytes: number; digest: string }) => {
          // Per step, the same layer is written several times but fetched once.
          if (e.status === 'skipped' || counted.has(e.digest)) return;
          counted.add(e.digest);
          fetched++;
          bytes += e.bytes;
        },
      };
      const images: string[] = [];
      for (const t of targets) {
        const dest = await openDestination(t.name, ctx.endpoints);
        try {
          const summary = await copy(t.cut, dest, options);
          manifestDigest = summary.manifestDigest;
        } finally {
          if (!isImageWriter(dest)) await dest.close();
        }
        const tags = t.cut.repoTags();
        images.push(...(ctx.perStep ? [t.raw] : tags.length ? tags : [t.raw]));
      }
      return { plan, fetched, bytes, destination: ctx.destination, ...(manifestDigest ? { manifestDigest } : {}), images };
    }
    if (!ctx.layerStore) throw new SmartError('USAGE', 'cache pull needs a destination or a layer store (--cache-dir)');
    const layerStore = ctx.layerStore;
    let fetched = 0;
    let bytes = 0;
    const signal = ctx.endpoints.signal;
    const group = new TaskGroup({ jobs: ctx.jobs ?? defaultJobs(), ...(signal ? { signal } : {}) });
    await group.all(image.layers.slice(0, keep), async (layer, s) => {
      const how = await layerStore.ensure(layer.diffId, () => layer.openUncompressed({ signal: s }), s);
      if (how === 'fetched') {
        fetched++;
        bytes += layer.descriptor.size;
      }
    });
    return { plan, fetched, bytes, destination: layerStore.dir };
  } finally {
    await source.close();
    await store.close();
  }
}

/** The builders `--print-cache-from` knows. kaniko is not one: nothing here shows it would use what we could name. */
export const CACHE_BUILDERS = ['docker', 'buildkit', 'buildx', 'buildah'] as const;
export type CacheBuilder = (typeof CACHE_BUILDERS)[number];

export interface CacheFromInstructions {
  builder: CacheBuilder;
  /** Commands to run before the build (buildah: pull each per-step image into its storage). */
  commands: string[];
  /** The build flags, one string (empty when the builder can use nothing: `note` says why). */
  flags: string;
  note?: string;
}

/**
 * What makes a builder use what `pullPlanned` fetched:
 * - `docker` (the classic builder, `DOCKER_BUILDKIT=0`): `--cache-from` the docker-archive's name
 *   (after `docker load`); without an archive, the stored image's registry reference (to pull first);
 * - `buildkit` (`DOCKER_BUILDKIT=1 docker build`) and `buildx`: the registry reference of a stored
 *   image that carries BuildKit's inline cache — BuildKit reads its cache from the registry, and
 *   can use no other image (`note` says so);
 * - `buildah`: `buildah pull` of each per-step image, then `--layers`.
 * `registry` is the host serving the store (`docker://HOST` stores name it themselves).
 */
export function cacheFromInstructions(builder: CacheBuilder, pulled: CachePullResult, registry?: string): CacheFromInstructions {
  const best = pulled.plan.best;
  const none = (note: string): CacheFromInstructions => ({ builder, commands: [], flags: '', note });
  if (!best || best.layers.length === 0) return none('nothing in the store to use as cache');
  const repository = best.image.replace(/:[^:/]+$/, '');
  const tag = /:([^:/]+)$/.exec(best.image)?.[1];
  const host = registry ? `${registry}/` : '';
  switch (builder) {
    case 'docker': {
      const archive = pulled.destination.startsWith('docker-archive:') ? pulled.images?.[0] : undefined;
      if (archive) return { builder, commands: [], flags: `--cache-from ${archive}` };
      return {
        builder,
        commands: [],
        flags: `--cache-from ${host}${repository}@${best.manifest}`,
        note: 'the classic builder uses only images it has: docker pull this one first, or write the cache as docker-archive:- | docker load',
      };
    }
    case 'buildkit':
    case 'buildx': {
      if (!best.inlineCache) {
        return none(
          `BuildKit reads its cache from the registry, and ${best.image} carries no inline cache (none of the images holding these layers does): ` +
            'build the stored images with --build-arg BUILDKIT_INLINE_CACHE=1 (or buildx --cache-to type=inline)',
        );
      }
      if (!registry) return none('BuildKit reads its cache from the registry: name the registry serving this store with --registry HOST[:PORT]');
      const ref = `${host}${repository}${tag ? `:${tag}` : `@${best.manifest}`}`;
      return { builder, commands: [], flags: builder === 'buildx' ? `--cache-from type=registry,ref=${ref}` : `--cache-from ${ref}` };
    }
    case 'buildah': {
      const images = pulled.destination.startsWith('oci:') ? (pulled.images ?? []) : [];
      if (images.length === 0) return none('buildah needs one image per step: write them with an oci:DIR destination');
      return { builder, commands: images.map((n) => `buildah pull ${n}`), flags: '--layers' };
    }
  }
}

/**
 * `cache warm --for Dockerfile`: what the next build of this app will reuse, fetched ahead of it
 * (from cron on build machines): the plan, then exactly its layers, into the layer store or as
 * the cache image(s) at `destination` (an OCI layout keeps what it already has: a second run
 * fetches only what changed).
 */
export async function warmForBuild(storeName: string, options: PlanOptions, ctx: CacheContext & CachePullOptions): Promise<CachePullResult> {
  const plan = await planBuild(storeName, options, ctx);
  return pullPlanned(storeName, plan, ctx);
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
  remote?: import('../transports/transport.js').RemoteOptions;
  platform?: string;
  jobs?: number;
  signal?: AbortSignal;
  onWarning?: (m: string) => void;
}): Promise<CacheSession> {
  const { openCache, layerStoreDir } = await import('./local-state.js');
  const { LayerStore } = await import('../cache/layer-store.js');
  const cache = await openCache({ cacheDir: options.cacheDir, strict: true, ...(options.redisUrl ? { redisUrl: options.redisUrl } : {}), ...(options.onWarning ? { onWarning: options.onWarning } : {}) });
  const endpoints: OpenContext = {
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
    layerStore: new LayerStore(layerStoreDir(options.cacheDir, options.layerStoreDir)),
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
