/**
 * `smart cache pull`: exactly the layers a plan matched, into the local layer store or as the
 * truncated image (one per build step for buildah) at a destination; what makes each builder use
 * them (`cache warm --for`, the plan and its pull ahead of the next build, is in warm.ts).
 */
import path from 'node:path';
import { isSmartError, SmartError } from '../../errors.js';
import { shortDigest, type Digest } from '../../oci/digest.js';
import type { Image, ImageSource, Layer } from '../../oci/image.js';
import { isForeignLayer } from '../../oci/mediatypes.js';
import { parsePlatform, type Platform } from '../../oci/platform.js';
import type { LayerStore } from '../../cache/layer-store.js';
import { defaultJobs, TaskGroup } from '../../pipeline/concurrency.js';
import { resolveImage } from '../../pipeline/layers.js';
import { chainIds } from '../../trie/layer-trie.js';
import { openStore } from '../../transports/all.js';
import type { StoreAccess } from '../../transports/transport.js';
import { LayerStoreFiller } from './layer-fill.js';
import type { CacheBuilder, PlanOptions, PlanResult } from './plan.js';
import { platformOf, type CacheContext } from './session.js';

export interface CachePullResult {
  plan: PlanResult;
  /** Layers fetched (not already on the machine) and their compressed bytes. */
  fetched: number;
  bytes: number;
  /** Into the layer store: layers unpacked from the blobs a pull kept on this machine, not fetched. */
  fromKeptBlobs?: number;
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
  layerStore?: LayerStore;
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

export async function imageOf(store: StoreAccess, repository: string, manifest: Digest, platform: Platform): Promise<{ image: Image; source: ImageSource }> {
  const source = await store.source({ registry: '', repository, digest: manifest });
  return { image: await resolveImage(source, platform), source };
}

/**
 * The first of `layers` whose blob `source` cannot serve now (asked, not read: a link and a stat in
 * a `file:`/`s3:` store, one HEAD on a registry); undefined when it serves them all or cannot tell.
 * An image of the store that lost a blob (a link removed by hand, a cleanup gone wrong) is then
 * passed over before anything is fetched or written, not found out mid-copy: a `docker-archive:-`
 * already half on stdout could not be written again from another image. `needed` leaves out the
 * layers that will not be fetched (already in the layer store); foreign layers are not the store's.
 */
export async function missingLayer(
  source: ImageSource,
  layers: readonly Layer[],
  options: { jobs: number; signal?: AbortSignal | undefined; needed?: (layer: Layer) => Promise<boolean> },
): Promise<Layer | undefined> {
  const hasBlob = source.hasBlob?.bind(source);
  if (!hasBlob) return undefined;
  const group = new TaskGroup({ jobs: options.jobs, ...(options.signal ? { signal: options.signal } : {}) });
  const served = await group.all(layers, async (layer, signal) => {
    if (isForeignLayer(layer.descriptor.mediaType) || (options.needed && !(await options.needed(layer)))) return true;
    return hasBlob(layer.descriptor, { signal });
  });
  const i = served.indexOf(false);
  return i < 0 ? undefined : layers[i];
}

/** Why a stored image is passed over for a layer it cannot serve (`missingLayer`), as a stale best's reason says it. */
export function lacksLayer(layer: Layer): string {
  return `lacks its layer ${shortDigest(layer.descriptor.digest)} (the store would answer BLOB_UNKNOWN)`;
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

/**
 * How many history entries the matched prefix of `image` spans: through the entry of its last
 * layer, and with `emptyAfter` the empty entries after it (ENV, CMD, the classic builder's RUN
 * that changed nothing): the classic builder reuses those steps too, and one it does not build
 * next is simply not used.
 */
function prefixHistory(image: Image, keep: number, options: { emptyAfter?: boolean } = {}): number {
  let layers = 0;
  const history = image.config.history ?? [];
  for (let i = 0; i < history.length; i++) {
    if (history[i]!.empty_layer || ++layers !== keep) continue;
    let end = i + 1;
    while (options.emptyAfter && end < history.length && history[end]!.empty_layer) end++;
    return end;
  }
  return history.length;
}

/**
 * `tag` (`--tag`), the NAME:TAG a docker-archive is written under: refused before any work when a
 * `docker-archive:FILE:NAME:TAG` could not name it (it was read only once a layer matched), or
 * when `destination` names its image itself (the tag was not used).
 */
export async function checkArchiveTag(tag: string, destination: string | undefined): Promise<void> {
  const { parseImageName } = await import('../../transports/all.js');
  try {
    parseImageName(`docker-archive:-:${tag}`);
  } catch (e) {
    throw new SmartError('USAGE', `--tag takes NAME:TAG, as a docker-archive: name does: ${(e as Error).message}`, { input: tag });
  }
  const name = destination === undefined ? undefined : parseImageName(destination);
  if (name?.transport === 'docker-archive' && name.selection.kind === 'name') {
    throw new SmartError('USAGE', `--tag names the image of a docker-archive written, and ${destination} names it already (${name.selection.name})`, { input: '--tag' });
  }
}

/**
 * Fetches exactly the layers the plan matched (not one more): into the local layer store, or, with
 * `destination`, as the truncated image (the matched prefix) written there — or, `perStep`, as one
 * image per build step of the prefix. A best cache the store no longer holds as the plan names it
 * is NOT_FOUND (`pullForBuild` plans again without it instead).
 */
export async function pullPlanned(storeName: string, plan: PlanResult, ctx: CacheContext & CachePullOptions): Promise<CachePullResult> {
  const r = await pullUnlessStale(storeName, plan, ctx);
  if (!('stale' in r)) return r;
  const damaged = r.damaged === true;
  throw new SmartError('NOT_FOUND', `${r.stale}, the plan's best cache, ${r.reason}${damaged ? '' : '; the index is older than the store'}`, {
    input: r.stale,
    hint: damaged ? 'push that image to the store again, which links what it lacks' : `run smart cache index ${storeName}`,
    ...(r.cause !== undefined ? { cause: r.cause } : {}),
  });
}

/**
 * The plan of a build, then exactly its layers, as `pullPlanned` fetches them. The plan comes from
 * the index, a hint: its best cache may have been deleted from the store since (a registry's
 * cleanup between two crons of `cache index`). That is said in one warning and the build planned
 * again without it — the next image holding the layers, a shorter match, or nothing, as with an
 * empty cache: a cache never fails a build.
 */
export async function pullForBuild(storeName: string, options: PlanOptions, ctx: CacheContext & CachePullOptions): Promise<CachePullResult> {
  const { planBuild } = await import('./plan.js');
  const excluding: string[] = [];
  // Each round excludes one more image, which no plan offers again: it ends.
  for (;;) {
    const plan = await planBuild(storeName, { ...options, ...(excluding.length ? { excluding: [...excluding] } : {}) }, ctx);
    const r = await pullUnlessStale(storeName, plan, ctx);
    if (!('stale' in r)) return r;
    // A damaged image stays in the index (it is there, and its tag too): only a push repairs it.
    const remedy = r.damaged ? 'pushing that image to the store again repairs it' : `smart cache index ${storeName} refreshes the index`;
    ctx.onWarning?.(`${r.stale}, the plan's best cache, ${r.reason}; planned again without it (${remedy})`);
    excluding.push(r.excluded);
  }
}

/** The plan's best cache, named, and why the store does not hold it as the plan names it. */
interface StaleBest {
  stale: string;
  /** The same as `REPOSITORY@DIGEST`, as a plan excludes it (PlanOptions.excluding). */
  excluded: string;
  reason: string;
  /** It is in the store but cannot serve a layer: a newer index changes nothing. */
  damaged?: true;
  cause?: unknown;
}

async function pullUnlessStale(storeName: string, plan: PlanResult, ctx: CacheContext & CachePullOptions): Promise<CachePullResult | StaleBest> {
  const best = plan.best;
  if (!best || best.layers.length === 0) {
    // Nothing to use: a docker-archive is written all the same, of no image, so that `… | docker
    // load` loads nothing and the build goes on without cache (an empty stream made it fail).
    if (ctx.destination?.startsWith('docker-archive:')) {
      const { openDestination, parseImageName } = await import('../../transports/all.js');
      const { DockerArchiveWriter } = await import('../../transports/docker-archive/writer.js');
      const dest = await openDestination(parseImageName(ctx.destination), ctx.endpoints);
      if (dest instanceof DockerArchiveWriter) await dest.writeNone();
    }
    return { plan, fetched: 0, bytes: 0, destination: ctx.destination ?? 'layer store' };
  }
  const store = await openStore(storeName, ctx.endpoints);
  // The plan's platform (a FROM --platform's): its best layers are that platform's image's.
  const platform = plan.platform !== undefined ? parsePlatform(plan.platform) : platformOf(ctx);
  const repository = best.image.replace(/:[^:/]+$/, '');
  const named = `${best.image}@${best.manifest}`;
  const excluded = `${repository}@${best.manifest}`;
  let opened: { image: Image; source: ImageSource };
  try {
    opened = await imageOf(store, repository, best.manifest, platform);
  } catch (e) {
    await store.close();
    if (!isSmartError(e) || e.code !== 'NOT_FOUND') throw e;
    // The trie is a hint: the image it chose may have been deleted since the index ran.
    return { stale: named, excluded, reason: 'is no longer in the store', cause: e };
  }
  const { image, source } = opened;
  try {
    const keep = best.layers.length;
    // The plan comes from the trie, a hint: it is followed only as far as the stored image agrees.
    if (!holdsChain(image.layers.slice(0, keep), chainIds(best.layers.map((l) => l.diffId)).at(-1)!)) {
      return { stale: named, excluded, reason: `does not hold the ${keep} layers the plan names` };
    }
    // Into the layer store, the layers it holds already are not fetched: their blobs are not needed.
    const into = ctx.destination ? undefined : ctx.layerStore;
    const lost = await missingLayer(source, image.layers.slice(0, keep), {
      jobs: ctx.jobs ?? defaultJobs(),
      signal: ctx.endpoints.signal,
      ...(into ? { needed: async (l: Layer) => !(await into.has(l.diffId)) } : {}),
    });
    if (lost) return { stale: named, excluded, reason: lacksLayer(lost), damaged: true };
    if (ctx.destination) {
      const { openDestination, parseImageName } = await import('../../transports/all.js');
      const { isImageWriter } = await import('../../oci/image.js');
      const { copy } = await import('../copy.js');
      const { historyCutSource, stepCuts } = await import('./images.js');
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
        targets = [{ name, raw: ctx.destination, cut: historyCutSource(image, source, prefixHistory(image, keep, { emptyAfter: true }), { baseHistory, ...(tag ? { repoTags: [tag] } : {}) }) }];
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
    let fromKeptBlobs = 0;
    const signal = ctx.endpoints.signal;
    const group = new TaskGroup({ jobs: ctx.jobs ?? defaultJobs(), ...(signal ? { signal } : {}) });
    // What tells gc these layers are in use (else the next pull's --prune drops them), written
    // before they are filled: a prune meanwhile keeps them too.
    await layerStore.recordChain(best.image, image.layers.slice(0, keep).map((l) => l.diffId)).catch((e: unknown) => {
      throw layerStore.storageError(e, `the record of ${best.image}'s layers`);
    });
    const filler = new LayerStoreFiller(layerStore, ctx.onWarning);
    try {
      await group.all(image.layers.slice(0, keep), async (layer, s) => {
        const how = await filler.ensure(layer, s, best.image);
        if (how === 'kept') fromKeptBlobs++;
        if (how === 'fetched') {
          fetched++;
          bytes += layer.descriptor.size;
        }
      });
    } finally {
      await filler.release();
    }
    return { plan, fetched, bytes, fromKeptBlobs, destination: layerStore.dir };
  } finally {
    await source.close();
    await store.close();
  }
}

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
      const intoLayout = pulled.destination.startsWith('oci:');
      const images = intoLayout ? (pulled.images ?? []) : [];
      // Into a layout, no image means no build step matched (the base alone is no step's cache).
      if (images.length === 0) return none(intoLayout ? 'no build step matched: buildah has no step image to use (the base alone it pulls itself)' : 'buildah needs one image per step: write them with an oci:DIR destination');
      return { builder, commands: images.map((n) => `buildah pull ${n}`), flags: '--layers' };
    }
  }
}

/** True when `layers` (an image's first ones, from the store) are exactly the chain `chainId` names. */
export function holdsChain(layers: readonly { diffId: Digest }[], chainId: Digest): boolean {
  return layers.length > 0 && chainIds(layers.map((l) => l.diffId)).at(-1) === chainId;
}
