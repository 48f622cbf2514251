/**
 * The layer trie: every image of a store as a path of layer chains. A node is a chain id (the
 * OCI ChainID of the layers from the root down to it); its edge from the parent is the layer
 * (diff id, the stored blob) and, when known, the build step that made it. Pure data: the nodes
 * live in a key-value store (`TrieStore`, over the metadata cache), so a query reads only the
 * nodes it walks, never the whole trie.
 */
import { createHash } from 'node:crypto';
import type { Digest } from '../oci/digest.js';

/** OCI ChainID: ChainID(L1) = DiffID(L1); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln)). */
export function chainIds(diffIds: readonly Digest[]): Digest[] {
  const out: Digest[] = [];
  for (const d of diffIds) {
    const prev = out[out.length - 1];
    out.push(prev ? (`sha256:${createHash('sha256').update(`${prev} ${d}`).digest('hex')}` as Digest) : d);
  }
  return out;
}

/** Layer descriptor annotations written by `smart push --dockerfile`: the step that made the layer. */
export const STEP_ANNOTATION = 'org.smartlayer.step.instruction';
export const CONTENT_ANNOTATION = 'org.smartlayer.step.content';

/** The build step that made a layer, in the normal form shared by every builder. */
export interface StepKey {
  instruction: string;
  /** For COPY/ADD from the context: the digest of what was copied (as the builder chose the files). */
  contentDigest?: string;
  /**
   * The RUN instructions that made no layer right before this step, in order: the classic builder
   * records a RUN that changes nothing as an empty history entry, and reuses the steps after it
   * only for a build that has the same RUN there.
   */
  emptyBefore?: readonly string[];
}

/** One key for a step: equal keys mean a builder would reuse the layer. */
export function stepKeyString(step: StepKey): string {
  const own = step.contentDigest ? `${step.instruction}\u0000${step.contentDigest}` : step.instruction;
  return step.emptyBefore?.length ? `${step.emptyBefore.map((i) => `${i}\u0001`).join('')}\u0002${own}` : own;
}

export interface ImageRef {
  repository: string;
  tag?: string;
  manifest: Digest;
  /** The image carries BuildKit's inline cache metadata: BuildKit can use it as `--cache-from`. */
  inlineCache?: true;
  /** The builder that made the image's own steps, as its history tells (absent: unknown). */
  builder?: ImageBuilder;
  /**
   * The RUNs its history records as empty after its last layer (the classic builder's RUN that
   * changed nothing, as a last `RUN npm test`): kept on the node of its last layer only.
   */
  emptyAfter?: string[];
}

export type ImageBuilder = 'docker' | 'buildkit' | 'buildah';

export interface TrieNode {
  chainId: Digest;
  parent?: Digest;
  depth: number;
  diffId: Digest;
  /** The layer's blob in the store. */
  blob: { digest: Digest; size: number; mediaType: string };
  step?: StepKey;
  /**
   * Other keys the same layer is known under (another builder's history for the same layer, the
   * summary of its files, what `push --dockerfile` recorded): each is an edge to this node too.
   */
  also?: StepKey[];
  /** Some images that contain this chain, newest first (at most MAX_IMAGES_PER_NODE). */
  images: ImageRef[];
  /** How many images of the store contain this chain (as of the last index run; pushes add). */
  imageCount: number;
}

export const MAX_IMAGES_PER_NODE = 16;
/** Keys kept per node besides its step (a layer is rarely known under more than a few). */
export const MAX_KEYS_PER_NODE = 8;

/** What indexing one image contributes: its layers in order, with their blobs and steps. */
export interface IndexedImage {
  ref: ImageRef;
  layers: { diffId: Digest; blob: { digest: Digest; size: number; mediaType: string }; step?: StepKey; also?: StepKey[] }[];
}

/** Every key a node (or an indexed layer) is known under: its step first. */
export function keysOf(n: { step?: StepKey; also?: readonly StepKey[] }): StepKey[] {
  return [...(n.step ? [n.step] : []), ...(n.also ?? [])];
}

/** Keys without repeats (by `stepKeyString`), in order, at most `max`. */
function uniqueKeys(keys: readonly StepKey[], max: number): StepKey[] {
  const seen = new Set<string>();
  const out: StepKey[] = [];
  for (const k of keys) {
    const s = stepKeyString(k);
    if (seen.has(s) || out.length >= max) continue;
    seen.add(s);
    out.push(k);
  }
  return out;
}

/** The nodes of one image, given the nodes already known (merged: images listed, counts kept). */
export function nodesOf(image: IndexedImage, known: ReadonlyMap<string, TrieNode | undefined>, countNew: boolean): TrieNode[] {
  const ids = chainIds(image.layers.map((l) => l.diffId));
  return image.layers.map((layer, i) => {
    const chainId = ids[i]!;
    const prev = known.get(chainId);
    const { emptyAfter, ...rest } = image.ref;
    const ref = emptyAfter && i === image.layers.length - 1 ? image.ref : rest;
    const images = [ref, ...(prev?.images ?? []).filter((r) => !(r.repository === image.ref.repository && r.tag === image.ref.tag))].slice(0, MAX_IMAGES_PER_NODE);
    const listed = prev?.images.some((r) => r.repository === image.ref.repository && r.tag === image.ref.tag && r.manifest === image.ref.manifest);
    const step = layer.step ?? prev?.step;
    const also = uniqueKeys([...keysOf(layer), ...(prev ? keysOf(prev) : [])], MAX_KEYS_PER_NODE + 1).filter((k) => !step || stepKeyString(k) !== stepKeyString(step));
    return {
      chainId,
      ...(i > 0 ? { parent: ids[i - 1]! } : {}),
      depth: i + 1,
      diffId: layer.diffId,
      blob: layer.blob,
      ...(step ? { step } : {}),
      ...(also.length ? { also: also.slice(0, MAX_KEYS_PER_NODE) } : {}),
      images,
      imageCount: (prev?.imageCount ?? 0) + (countNew && !listed ? 1 : 0),
    };
  });
}

/** The key-value view of a trie (one per store). */
export interface TrieStore {
  getNodes(chainIds: readonly Digest[]): Promise<(TrieNode | undefined)[]>;
  putNodes(nodes: readonly TrieNode[]): Promise<void>;
  /** Children of a node made by a step with this key (several: non-reproducible builds). */
  getEdges(parents: readonly { chainId: Digest | undefined; step: string }[]): Promise<Digest[][]>;
  addEdges(edges: readonly { parent: Digest | undefined; step: string; child: Digest }[]): Promise<void>;
}

export interface MatchStep {
  /** Dockerfile line, for reports. */
  line?: number;
  key: StepKey;
  /** Other keys the builders may have recorded the same step under (their content references, the layer's files). */
  alternatives?: readonly StepKey[];
  /**
   * The builder may have made no layer for it (a WORKDIR: buildah's is an empty history entry):
   * skipped when unmatched, and matched as a step without a layer when the next layer is taken
   * after it (plan.ts then checks that layer ran under the working directory the build sets).
   */
  optional?: boolean;
  /**
   * A RUN: the classic builder makes no layer for one that changes nothing. Unmatched, it is
   * matched still when the next layer was made after it (its key's `emptyBefore` names it).
   */
  mayBeEmpty?: boolean;
  /**
   * A node whose own keys say it is another step (its builder's content reference, which this
   * step's does not equal): never matched, whatever other key (its files) it carries.
   */
  refuses?: (node: TrieNode) => boolean;
}

export interface Match {
  /** The deepest node reached; undefined when not even the base is in the store. */
  node: TrieNode | undefined;
  /** Base layers matched (the FROM image's chain, as far as the store has it). */
  baseLayers: number;
  /** Build steps matched after the base. */
  steps: number;
  /** The chain of nodes from the root to `node`. */
  path: TrieNode[];
  /** Indices (into the steps given) of the steps matched: with a layer, or (`emptySteps`) made none. */
  matchedSteps: number[];
  /** Of `matchedSteps`, those the stored image made no layer for (a RUN that changed nothing, an optional step skipped). */
  emptySteps: number[];
  /** The image the match must be taken from: the one whose history has the RUNs matched after its last layer. */
  image?: ImageRef;
  /**
   * Every match the walk reached, this one first, then the others best first (shorter ones, and
   * other branches of equal keys): for a caller that checks more than keys (plan.ts: the config
   * each step ran under) and takes the best that passes.
   */
  candidates?: Match[];
}

/** RUN steps that may have made no layer, left pending in a row at most (a walk branches on each). */
const MAX_PENDING_EMPTY = 8;
/** Key combinations asked for one step after pending empty RUNs (each RUN has one or two keys). */
const MAX_EMPTY_COMBINATIONS = 16;

/**
 * Walks the trie: first along `baseChain` (the FROM image's chain ids), then step by step along
 * edges whose step key equals the build's (or one of its alternatives). Several children can carry
 * the same key (a RUN rebuilt without cache gives a new diff id; two builders' layers for the same
 * step): every such branch is followed (`accept`: only through the nodes it accepts), an optional
 * step both taken and skipped (matched without a layer once a layer is taken after it), a RUN that may be empty both taken and left pending (matched when
 * the next layer found was made after it, see `StepKey.emptyBefore`, or an image ends with it,
 * see `ImageRef.emptyAfter`), and the deepest wins — among equals, the one that matched the most
 * steps, then the one an image with BuildKit's inline cache holds, then the one in most images.
 */
export async function matchBuild(
  store: TrieStore,
  baseChain: readonly Digest[],
  steps: readonly MatchStep[],
  options: {
    accept?: (node: TrieNode) => boolean;
    /** The images a match may be taken from (default: any). */
    acceptImage?: (image: ImageRef) => boolean;
    /** The base image's RUNs recorded as empty after its last layer: the first layer built on it was made after them. */
    baseEmptyRuns?: readonly string[];
  } = {},
): Promise<Match> {
  const baseNodes = baseChain.length ? await store.getNodes(baseChain) : [];
  let baseLayers = 0;
  while (baseLayers < baseNodes.length && baseNodes[baseLayers]) baseLayers++;
  const basePath = baseNodes.slice(0, baseLayers) as TrieNode[];
  if (baseLayers < baseChain.length) {
    // The store lacks part of the base: what matches is that prefix, no build step on top of it.
    return { node: basePath[basePath.length - 1], baseLayers, steps: 0, path: basePath, matchedSteps: [], emptySteps: [] };
  }
  /**
   * `pending`: RUN steps since the last layer taken as having made none, with the instructions each
   * may be recorded as; `skipped`: the optional steps since then, taken as having made none.
   */
  type Frontier = { path: TrieNode[]; matched: number[]; empty: number[]; pending: { index: number; instructions: string[] }[]; skipped: number[]; image?: ImageRef };
  // The base's own empty RUNs are pending from the start, as steps of no index (never counted as matched).
  const basePending = (options.baseEmptyRuns ?? []).map((instruction) => ({ index: -1, instructions: [instruction] }));
  let frontier: Frontier[] = [{ path: basePath, matched: [], empty: [], pending: basePending, skipped: [] }];
  const rank = (f: Frontier) => {
    const n = f.path.at(-1);
    return [f.path.length, f.matched.length, n?.images.some((i) => i.inlineCache) ? 1 : 0, n?.imageCount ?? 0];
  };
  const better = (a: Frontier, b: Frontier) => {
    const [x, y] = [rank(a), rank(b)];
    for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return x[i]! > y[i]!;
    return false;
  };
  let best: Frontier = frontier[0]!;
  /** Every entry reached, for `candidates`. */
  const reachedAll: Frontier[] = [best];
  for (const [i, step] of steps.entries()) {
    const stepKeys = [step.key, ...(step.alternatives ?? [])];
    // The keys each frontier entry asks for: the step's own, after its pending empty RUNs if any.
    const keysOfEntry = frontier.map((f) => [...new Set(emptyCombinations(f.pending).flatMap((before) => stepKeys.map((k) => stepKeyString(before ? { ...k, emptyBefore: before } : k))))]);
    const queries = frontier.flatMap((f, fi) => keysOfEntry[fi]!.map((key) => ({ chainId: f.path[f.path.length - 1]?.chainId, step: key })));
    const edges = await store.getEdges(queries);
    // Per frontier entry, the children reached by any of its keys (one child may be reached by several).
    let offset = 0;
    const reached = frontier.map((_, fi) => {
      const n = keysOfEntry[fi]!.length;
      const ids = [...new Set(edges.slice(offset, offset + n).flat())];
      offset += n;
      return ids;
    });
    const childIds = [...new Set(reached.flat())];
    const nodes = childIds.length ? await store.getNodes(childIds) : [];
    const byId = new Map(childIds.map((id, k) => [id, nodes[k]]));
    const next: Frontier[] = [];
    for (const [fi, f] of frontier.entries()) {
      for (const id of reached[fi]!) {
        const child = byId.get(id);
        // The node itself must carry the key: an edge is a hint, the node the fact.
        if (!child || !keysOf(child).some((k) => keysOfEntry[fi]!.includes(stepKeyString(k)))) continue;
        if (options.accept && !options.accept(child)) continue;
        if (step.refuses?.(child)) continue;
        const before = [...f.skipped, ...f.pending.map((p) => p.index).filter((index) => index >= 0)].sort((a, b) => a - b);
        next.push({ path: [...f.path, child], matched: [...f.matched, ...before, i], empty: [...f.empty, ...before], pending: [], skipped: [] });
      }
    }
    // An optional step (a WORKDIR that may have made no layer) is also skipped, on every branch.
    if (step.optional) next.push(...frontier.map((f) => ({ ...f, skipped: [...f.skipped, i] })));
    if (step.mayBeEmpty) {
      const instructions = [...new Set(stepKeys.map((k) => k.instruction))];
      for (const f of frontier) if (f.pending.length < MAX_PENDING_EMPTY) next.push({ ...f, pending: [...f.pending, { index: i, instructions }] });
    }
    if (next.length === 0) break;
    frontier = dedupe(next);
    reachedAll.push(...frontier);
    for (const f of frontier) if (better(f, best)) best = f;
  }
  // RUNs still pending where the walk ended are matched too where an image ends with them: its
  // history has them after its last layer, and a cache image cut from it keeps them.
  for (const f of frontier) {
    if (f.pending.length === 0 || f.pending.some((p) => p.index < 0)) continue;
    const image = f.path
      .at(-1)
      ?.images.find((r) => r.emptyAfter && r.emptyAfter.length >= f.pending.length && f.pending.every((p, k) => p.instructions.includes(r.emptyAfter![k]!)) && (options.acceptImage?.(r) ?? true));
    if (!image) continue;
    const ran = f.pending.map((p) => p.index);
    const whole: Frontier = { path: f.path, matched: [...f.matched, ...ran], empty: [...f.empty, ...ran], pending: [], skipped: f.skipped, image };
    reachedAll.push(whole);
    if (better(whole, best)) best = whole;
  }
  // Steps matched: counted in layers walked past the base (an optional step without a layer counts none).
  const asMatch = (f: Frontier): Match => ({
    node: f.path[f.path.length - 1],
    baseLayers,
    steps: f.path.length - baseLayers,
    path: f.path,
    matchedSteps: f.matched,
    emptySteps: f.empty,
    ...(f.image ? { image: f.image } : {}),
  });
  // Best first (a stable sort: among equals, the order the walk reached them in).
  const others = reachedAll.filter((f) => f !== best).sort((a, b) => (better(a, b) ? -1 : better(b, a) ? 1 : 0));
  return { ...asMatch(best), candidates: [best, ...others].map(asMatch) };
}

/** The `emptyBefore` lists pending empty RUNs may have been recorded as (one: `undefined`, when none are pending). */
function emptyCombinations(pending: readonly { instructions: readonly string[] }[]): (string[] | undefined)[] {
  if (pending.length === 0) return [undefined];
  let out: string[][] = [[]];
  for (const p of pending) out = out.flatMap((prefix) => p.instructions.map((i) => [...prefix, i])).slice(0, MAX_EMPTY_COMBINATIONS);
  return out;
}

/** One frontier entry per node reached and pending RUNs (the first, which matched the most steps on the way). */
function dedupe<T extends { path: TrieNode[]; matched: number[]; pending: readonly { index: number }[] }>(entries: readonly T[]): T[] {
  const byNode = new Map<string, T>();
  for (const e of entries) {
    const id = `${e.path.at(-1)?.chainId ?? ''} ${e.pending.map((p) => p.index).join(',')}`;
    const known = byNode.get(id);
    if (!known || e.matched.length > known.matched.length) byNode.set(id, e);
  }
  return [...byNode.values()];
}
