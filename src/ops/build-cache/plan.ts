/**
 * `smart cache plan`: which stored image's which layers are the best build cache for a Dockerfile
 * (or for a built image): the trie walked along the Dockerfile's steps from its FROM image, found
 * in the store, through its transport, or from its registry.
 */
import { SmartError, isSmartError } from '../../errors.js';
import type { Digest } from '../../oci/digest.js';
import type { Image, ImageSource } from '../../oci/image.js';
import { parseReference } from '../../oci/reference.js';
import { formatPlatform, parsePlatform, type Platform } from '../../oci/platform.js';
import { CachedTrieStore } from '../../cache/trie-store.js';
import { resolveImage } from '../../pipeline/layers.js';
import { chainIds, keysOf, matchBuild, stepKeyString, type ImageBuilder, type ImageRef, type Match, type MatchStep, type TrieNode } from '../../trie/layer-trie.js';
import type { Dockerfile } from '../../dockerfile/parser.js';
import type { Step } from '../../trie/steps.js';
import type { HistoryOwnConfig } from '../../trie/image-steps.js';
import { openStore } from '../../transports/all.js';
import type { StoreAccess } from '../../transports/transport.js';
import { checkImagePlatform, platformOf, type CacheContext } from './session.js';
import { readDockerfile } from './steps.js';

/** The builders `--print-cache-from` knows. kaniko is not one: nothing here shows it would use what we could name. */
export const CACHE_BUILDERS = ['docker', 'buildkit', 'buildx', 'buildah'] as const;
export type CacheBuilder = (typeof CACHE_BUILDERS)[number];

export interface PlanStep {
  line: number;
  instruction: string;
  matched: boolean;
  /**
   * The step changes nothing the trie records (ENV, CMD...) or has no layer (WORKDIR /), or,
   * matched, the stored image has no layer for it (the classic builder's RUN that changed nothing).
   */
  noLayer?: boolean;
  /**
   * What the match could not check, and the builder will: all the step reads from outside the
   * context (`COPY --from` a stage or an image, a remote ADD, a RUN mount `from=`), or what the
   * only key the layer is known by leaves out (BuildKit's history of a RUN that bind-mounts
   * context files, of a COPY --chown). When it differs, the builder rebuilds the step and those
   * after it.
   */
  unchecked?: string;
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
  /** A Dockerfile's plan: the platform it is for (`os/arch[/variant]`), the FROM's `--platform`, else `--platform`, else this machine's. `cache pull` fetches it. */
  platform?: string;
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

/** What a plan may offer: for a builder, and not the images found gone from the store (`PlanOptions.excluding`). */
interface Offer {
  builder?: CacheBuilder;
  excluding?: readonly string[];
}

/** Whether an image could serve as this builder's cache (an image of unknown making might). */
function usableBy(builder: CacheBuilder | undefined, image: ImageRef): boolean {
  return !builder || !image.builder || image.builder === BUILT_BY[builder];
}

const offered = (image: ImageRef, offer: Offer) => !offer.excluding?.includes(`${image.repository}@${image.manifest}`);

/**
 * Images holding the chain, those the builder can use first, then those BuildKit can use as cache
 * (the layers are the same either way); never one excluded.
 */
function preferred(images: readonly ImageRef[], offer: Offer = {}): ImageRef[] {
  const kept = images.filter((i) => offered(i, offer));
  const usable = kept.filter((i) => usableBy(offer.builder, i));
  const rest = kept.filter((i) => !usableBy(offer.builder, i));
  return [...usable.filter((i) => i.inlineCache), ...usable.filter((i) => !i.inlineCache), ...rest];
}

function candidateOf(match: Match, offer: Offer = {}): PlanCandidate | undefined {
  const node = match.node;
  const img = (match.image && offered(match.image, offer) ? match.image : undefined) ?? (node && preferred(node.images, offer)[0]);
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
 * plan then matches nothing), and a warning saying why. An image without `platform` (an index
 * that names none of it; with `asked`, a single image of another platform) is PLATFORM_NOT_FOUND,
 * wherever it was found: the build fails alike.
 */
async function resolveBase(
  store: StoreAccess,
  base: string,
  platform: Platform,
  ctx: CacheContext,
  asked: boolean,
): Promise<{ image?: Image; storedAs?: string; via?: BaseResolution }> {
  if (base === 'scratch') return {};
  const { openSource, parseImageName } = await import('../../transports/all.js');
  const { isStreamed } = await import('../../oci/image.js');
  const resolveOf = async (source: ImageSource): Promise<Image> => {
    const image = await resolveImage(source, platform);
    if (asked) checkImagePlatform(image, platform);
    return image;
  };
  const resolveNamed = async (name: ReturnType<typeof parseImageName>): Promise<Image> => {
    const opened = await openSource(name, ctx.endpoints);
    if (isStreamed(opened)) throw new SmartError('USAGE', `FROM ${base}: a stream cannot be a base image`, { input: base });
    try {
      return await resolveOf(opened);
    } finally {
      await opened.close();
    }
  };
  const platformMissing = (e: unknown) => isSmartError(e) && e.code === 'PLATFORM_NOT_FOUND';
  if (TRANSPORT_BASE.test(base)) {
    try {
      const name = parseImageName(base);
      return { image: await resolveNamed(name), storedAs: base, via: name.transport === 'docker' ? 'registry' : 'transport' };
    } catch (e) {
      if (platformMissing(e)) throw e;
      ctx.onWarning?.(`FROM ${base}: ${(e as Error).message}`);
      return {};
    }
  }
  // Checked by planBuild (checkFromReference): a FROM naming no image fails the plan there.
  const ref = parseReference(base);
  const candidates = [ref.repository];
  if (ref.registry === 'docker.io' && ref.repository.startsWith('library/')) candidates.push(ref.repository.slice('library/'.length));
  if (ref.registry !== 'docker.io') candidates.push(`${ref.registry}/${ref.repository}`.replace(/:\d+\//, '/'));
  const storeHost = /^docker:\/\/(.+)$/.exec(store.scope)?.[1];
  if (storeHost) {
    const { loadRegistriesConf, pullSources } = await import('../../transports/registry/registries-conf.js');
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
      return { image: await resolveOf(source), storedAs: `${repository}${ref.digest ? `@${ref.digest}` : `:${tag}`}`, via: 'store' };
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
    if (platformMissing(e)) throw e;
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
  /**
   * Images never to offer, as `REPOSITORY@DIGEST`: found gone from the store since the index named
   * them (`pullForBuild` plans again without each). The same image in another repository is still offered.
   */
  excluding?: readonly string[];
}

export async function planBuild(storeName: string, options: PlanOptions, ctx: CacheContext): Promise<PlanResult> {
  const { parseDockerfile } = await import('../../dockerfile/parser.js');
  const { dockerfileSteps } = await import('../../trie/steps.js');
  const text = await readDockerfile(options.dockerfile);
  const df = parseDockerfile(text, options.dockerfile);
  const store = await openStore(storeName, ctx.endpoints);
  try {
    const firstPass = await dockerfileSteps(df, {
      contextDir: options.contextDir,
      dockerfilePath: options.dockerfile,
      builderKeys: true,
      ...(options.stage ? { stage: options.stage } : {}),
      ...(options.buildArgs ? { buildArgs: options.buildArgs } : {}),
    });
    checkFromReference(df, firstPass);
    // `FROM --platform=linux/arm64 img` builds on that platform's image whatever the build's
    // platform, as the builders do: its layers are the cache (the machine's are not).
    const fromPlatform = firstPass.platform !== undefined ? parseFromPlatform(firstPass.platform, firstPass.base) : undefined;
    const platform = fromPlatform ?? platformOf(ctx);
    // A platform asked for (not the machine's by default): the images used must be of it.
    const asked = fromPlatform !== undefined || ctx.platform !== undefined;
    const { image: baseImage, storedAs, via } = await resolveBase(store, firstPass.base, platform, ctx, asked).catch((e: unknown) => {
      // The builders fail alike (docker: no matching manifest): not a plan on another platform's layers.
      if (asked && isSmartError(e) && e.code === 'PLATFORM_NOT_FOUND') {
        const [from, named] = fromPlatform ? [`FROM --platform=${firstPass.platform} ${firstPass.base}`, 'its FROM --platform names'] : [`FROM ${firstPass.base}`, '--platform names'];
        throw new SmartError('PLATFORM_NOT_FOUND', `${from}: ${e.message}`, { input: firstPass.base, hint: `the build fails alike: ${named} a platform the image does not hold`, cause: e });
      }
      throw e;
    });
    // Keys are computed as `push --dockerfile` computes them (without the base's ENV), so that
    // both sides of the comparison agree whatever the base defines.
    const build = firstPass;
    const layerSteps = build.steps.filter((s) => s.producesLayer && build.chain.includes(s.stage));
    const trie = new CachedTrieStore(ctx.cache, store.scope);
    const { trailingEmptyRuns } = await import('../../trie/image-steps.js');
    const offer: Offer = { ...(options.builder ? { builder: options.builder } : {}), ...(options.excluding ? { excluding: options.excluding } : {}) };
    const acceptable = (i: ImageRef) => usableBy(options.builder, i) && offered(i, offer);
    const baseChain = baseImage ? chainIds(baseImage.layers.map((l) => l.diffId)) : [];
    const keyMatch = await matchBuild(
      trie,
      baseChain,
      layerSteps.map((s) => ({
        line: s.line,
        key: { instruction: s.instruction, ...(s.contentDigest ? { contentDigest: s.contentDigest } : {}) },
        ...(s.alternatives ? { alternatives: s.alternatives.filter((a) => !a.onlyForBuilder || a.builder === options.builder).map((a) => a.key) } : {}),
        ...(s.layerOptional ? { optional: true } : {}),
        ...(s.keyword === 'RUN' ? { mayBeEmpty: true } : {}),
        ...refusedByOwnReference(s),
      })),
      {
        // For a builder: only through layers that images it could have made hold; never through an image excluded.
        ...(options.builder || options.excluding?.length ? { accept: (n: TrieNode) => n.images.some(acceptable), acceptImage: acceptable } : {}),
        ...(baseImage ? { baseEmptyRuns: trailingEmptyRuns(baseImage.config.history) } : {}),
      },
    );
    // Keys say what each step is, not what it ran under: the best match whose image ran every
    // matched step under the config the build will (ENV, USER, WORKDIR, a RUN's build args).
    const match = await configMatch(keyMatch, layerSteps, store, { platform, asked }, baseImage?.config.history?.length ?? 0, offer);
    // The node of each matched step that made a layer, in order (a RUN matched as empty has none).
    const withLayers = match.matchedSteps.filter((k) => !match.emptySteps.includes(k));
    const best = candidateOf(match, offer);
    const result: PlanResult = {
      store: store.scope,
      platform: formatPlatform(platform),
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
        .filter((s) => build.chain.includes(s.stage))
        .map((s) => {
          const k = layerSteps.indexOf(s);
          const matched = match.matchedSteps.includes(k);
          const empty = match.emptySteps.includes(k);
          const unchecked = matched && !empty ? uncheckedBy(s, match.path[match.baseLayers + withLayers.indexOf(k)]) : undefined;
          return {
            line: s.line,
            // The normal form leaves `--from` out (BuildKit's history does); the reader is told it.
            instruction: s.from !== undefined ? s.instruction.replace(/^(COPY|ADD) /, `$1 --from=${s.from} `) : s.instruction,
            matched,
            ...(k < 0 || empty ? { noLayer: true } : {}),
            ...(unchecked ? { unchecked } : {}),
          };
        }),
      ...(best ? { best } : {}),
      // The others: not the best again (taken from its history's RUNs, it may not be the first).
      alternatives: preferred(match.node?.images ?? [], offer)
        .map((r) => `${r.repository}${r.tag ? `:${r.tag}` : ''}`)
        .filter((name) => name !== best?.image)
        .slice(0, 5),
    };
    if (!best) await warnIfNotIndexed(trie, storeName, store.scope, ctx);
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

/**
 * A COPY/ADD whose classic-builder reference the plan computed: a layer of an image that builder
 * made, whose history names another reference for the same instruction, is another step, even
 * where its files summarise alike. Its `dir:` covers the source directory's own mode, which no
 * layer holds (`chmod 700 src`, and it builds `COPY src/ /src/` again, where the layer's files
 * matched). Not buildah's: its reference names owners as the machine that built looked them up,
 * and buildah reuses that step.
 */
function refusedByOwnReference(s: Step): Pick<MatchStep, 'refuses'> {
  const refs = (s.alternatives ?? []).filter((a) => a.builder === 'docker' && CONTENT_REFERENCE.test(a.key.contentDigest ?? ''));
  if (refs.length === 0) return {};
  const instructions = new Set(refs.map((a) => a.key.instruction));
  const mine = new Set(refs.map((a) => stepKeyString(a.key)));
  return {
    refuses: (node) => {
      if (node.images.length === 0 || !node.images.every((i) => i.builder === 'docker')) return false;
      const theirs = keysOf(node).filter((k) => instructions.has(k.instruction) && CONTENT_REFERENCE.test(k.contentDigest ?? ''));
      return theirs.length > 0 && !theirs.some((k) => mine.has(stepKeyString({ instruction: k.instruction, contentDigest: k.contentDigest! })));
    },
  };
}

/** The content references the classic builder and buildah write into a COPY/ADD's history. */
const CONTENT_REFERENCE = /^(?:file|dir|multi):[0-9a-f]{64}$/;

/**
 * A FROM image named by Docker's grammar (not `scratch`, not a transport's name) that does not
 * parse, as an ARG left empty makes it (`FROM lib/base:${V}` is `lib/base:`): INVALID_REFERENCE
 * naming its line, as the builders refuse the build ("invalid reference format") and the parser a
 * blank one. Taken as an image not in the store, it made a plan of nothing, exit 0.
 */
function checkFromReference(df: Dockerfile, build: { base: string; chain: number[] }): void {
  if (build.base === 'scratch' || TRANSPORT_BASE.test(build.base)) return;
  try {
    parseReference(build.base);
  } catch (e) {
    const root = df.stages[build.chain[0]!]!;
    throw new SmartError('INVALID_REFERENCE', `${df.file}:${root.from.startLine}: FROM ${root.baseRaw}: ${(e as Error).message}`, {
      input: build.base,
      hint: 'the build fails alike: invalid reference format',
      cause: e,
    });
  }
}

/** A FROM's `--platform` value, a USAGE error naming it when it is no platform. */
function parseFromPlatform(value: string, base: string): Platform {
  try {
    return parsePlatform(value);
  } catch (e) {
    if (isSmartError(e) && e.code === 'USAGE') throw new SmartError('USAGE', `FROM --platform=${value} ${base}: ${e.message}`, { input: value, cause: e });
    throw e;
  }
}

/**
 * Candidate matches whose image's history is read to check their config, at most, and how many
 * are read at once. A store holds many images of one Dockerfile built with other args or ENV (a
 * build matrix): the walk matches each, and one among them ran alike, often past the sixth (the
 * limit was 6, and a matrix of 8 found its own image for 6 of them only).
 */
const MAX_CONFIG_CHECKS = 64;
const CONFIG_READS_AT_ONCE = 8;

/**
 * The best of the walk's matches (`Match.candidates`, best first) whose image ran each matched
 * step that made a layer under the config the build runs it under: what the build itself set
 * (after its base) of ENV, USER and WORKDIR, and a RUN's build args. The builders check those
 * before they reuse a step (the classic builder compares the config, BuildKit keys a RUN by its
 * environment), while the trie's keys are the steps' texts alone: a RUN after a changed
 * `ENV VERSION=2` matched, and was fetched for nothing. An image whose history cannot be lined up
 * with its layers, or that cannot be read, is taken as its keys say. Past MAX_CONFIG_CHECKS
 * images, the base alone.
 */
async function configMatch(
  match: Match,
  steps: readonly Step[],
  store: StoreAccess,
  { platform, asked }: { platform: Platform; asked: boolean },
  ownFrom: number,
  offer: Offer,
): Promise<Match> {
  const { ownConfigAtLayers, belowUnknownWorkdir } = await import('../../trie/image-steps.js');
  const read = new Map<string, Promise<HistoryOwnConfig[] | undefined>>();
  const ownConfigOf = (img: ImageRef) => {
    const key = `${img.repository}@${img.manifest}`;
    let p = read.get(key);
    if (!p) {
      p = (async () => {
        const source = await store.source({ registry: '', repository: img.repository, digest: img.manifest });
        try {
          const image = await resolveImage(source, platform);
          if (asked) checkImagePlatform(image, platform);
          return ownConfigAtLayers(image.config.history, image.layers.length, ownFrom, image.config.config?.Env);
        } finally {
          await source.close();
        }
      })();
      read.set(key, p);
    }
    return p;
  };
  const candidates = match.candidates ?? [match];
  // Each candidate's verdict, best first; the images' histories read a few at once ahead of it.
  const verdicts: (() => Promise<boolean>)[] = [];
  let checks = 0;
  for (const c of candidates) {
    const withLayers = c.matchedSteps.filter((k) => !c.emptySteps.includes(k));
    if (withLayers.length === 0) {
      verdicts.push(async () => true);
      continue;
    }
    const img = (c.image && offered(c.image, offer) ? c.image : undefined) ?? (c.node && preferred(c.node.images, offer)[0]);
    if (!img) {
      verdicts.push(async () => false);
      continue;
    }
    if (checks++ >= MAX_CONFIG_CHECKS) break;
    // An image that cannot be read now (gone since the index, the registry down) is taken as its
    // keys say, as before this check: `cache pull` then says what is wrong with it. One that is
    // not of the build's platform is no cache of it.
    verdicts.push(async () => {
      const own = await ownConfigOf(img).catch((e: unknown) => (isSmartError(e) && e.code === 'PLATFORM_NOT_FOUND' ? ('another platform' as const) : undefined));
      if (own === 'another platform') return false;
      return !own || withLayers.every((k, t) => ranAlike(steps[k]!, own[c.baseLayers + t], belowUnknownWorkdir));
    });
  }
  // The best alone first (it usually ran alike: one read, as before), then the rest a batch at a time.
  for (let at = 0, size = 1; at < verdicts.length; at += size, size = CONFIG_READS_AT_ONCE) {
    const batch = await Promise.all(verdicts.slice(at, at + size).map((v) => v()));
    const first = batch.indexOf(true);
    if (first >= 0) return candidates[at + first]!;
  }
  return candidates.find((c) => c.matchedSteps.every((k) => c.emptySteps.includes(k))) ?? { ...match, node: match.path[match.baseLayers - 1], steps: 0, path: match.path.slice(0, match.baseLayers), matchedSteps: [], emptySteps: [] };
}

/**
 * Whether a stored layer's step ran under the config the build runs `step` under (what each side
 * cannot know is not compared). Only where the layer's history entry is that step: a history that
 * does not record the build's steps (the layer known by our annotation, or by its files) is no
 * record of what they ran under either.
 */
function ranAlike(step: Step, stored: HistoryOwnConfig | undefined, belowUnknownWorkdir: (dir: string) => boolean): boolean {
  const own = step.own;
  if (!stored || !own || stored.keyword !== step.keyword) return true;
  for (const key of new Set([...Object.keys(own.env), ...stored.env.keys()])) {
    const mine = own.env[key];
    const theirs = stored.env.get(key);
    if (mine !== null && theirs !== null && mine !== theirs) return false;
  }
  if (own.user !== null && own.user !== stored.user) return false;
  // A working directory below the FROM image's (unknown to both sides) is compared only with another such.
  const comparable = typeof own.workdir !== 'string' || typeof stored.workdir !== 'string' || belowUnknownWorkdir(own.workdir) === belowUnknownWorkdir(stored.workdir);
  if (own.workdir !== null && stored.workdir !== null && comparable && own.workdir !== stored.workdir) return false;
  if (step.keyword === 'RUN') {
    // An ARG with no value is recorded by no builder: empty here, absent there, alike.
    const mine = step.buildArgs ?? {};
    const theirs = stored.args ?? {};
    for (const key of new Set([...Object.keys(mine), ...Object.keys(theirs)])) {
      if ((mine[key] ?? '') !== (theirs[key] ?? '')) return false;
    }
  }
  return true;
}

/**
 * What a matched step reads that the match did not check, if anything: all it reads from outside
 * the context (COPY --from, a remote ADD, a RUN mount from=), or what the only keys of it the layer
 * carries leave out (a RUN's bind-mounted context files, a COPY's --chown).
 */
function uncheckedBy(s: Step, node: TrieNode | undefined): string | undefined {
  if (s.external) return s.from !== undefined ? `what it copies --from=${s.from}` : s.keyword === 'RUN' ? 'what it mounts from=' : 'what it fetches';
  const partial = s.alternatives?.filter((a) => a.unchecked !== undefined) ?? [];
  if (partial.length === 0 || !node) return undefined;
  const carried = new Set(keysOf(node).map(stepKeyString));
  const whole = [{ instruction: s.instruction, ...(s.contentDigest ? { contentDigest: s.contentDigest } : {}) }, ...(s.alternatives ?? []).filter((a) => a.unchecked === undefined).map((a) => a.key)];
  if (whole.some((key) => carried.has(stepKeyString(key)))) return undefined;
  return partial.find((a) => carried.has(stepKeyString(a.key)))?.unchecked;
}

/**
 * Nothing matched: when the cache holds no index of the store (never run here, or lost: a Redis
 * restarted empty, a new build machine's disk cache), that is the likelier reason, said.
 */
async function warnIfNotIndexed(trie: CachedTrieStore, storeName: string, scope: string, ctx: CacheContext): Promise<void> {
  if ((await trie.getTop()) === undefined) ctx.onWarning?.(`the metadata cache holds no index of ${scope}, only what pushes through it recorded: run smart cache index ${storeName}`);
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
    const best = candidateOf({ node: path[path.length - 1], baseLayers: depth, steps: 0, path, matchedSteps: [], emptySteps: [] });
    if (!best) await warnIfNotIndexed(trie, storeName, store.scope, ctx);
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
