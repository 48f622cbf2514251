/**
 * The layer trie of one store, kept in the metadata cache (on disk by default, Redis when shared),
 * under the keys `trieKeys` builds (keys.ts draws them): nodes (JSON), the child chain ids a step
 * reaches from a parent, and what the last index saw of each tag. Like everything in the metadata
 * cache it is a hint: a lost edge or a stale node changes the quality of a plan, never what a pull
 * verifies.
 */
import type { Digest } from '../oci/digest.js';
import type { Descriptor } from '../oci/manifest.js';
import { chainIds, keysOf, nodesOf, stepKeyString, type IndexedImage, type ImageRef, type StepKey, type TrieNode, type TrieStore } from '../trie/layer-trie.js';
import { trieKeys } from './keys.js';
import type { MetadataCache } from './metadata-cache.js';

export class CachedTrieStore implements TrieStore {
  private readonly keys: ReturnType<typeof trieKeys>;

  constructor(
    private readonly cache: MetadataCache,
    scope: string,
  ) {
    this.keys = trieKeys(scope);
  }

  private nodeKey(id: Digest): string {
    return this.keys.node(id);
  }

  private edgeKey(parent: Digest | undefined, step: string): string {
    return this.keys.edge(parent, step);
  }

  private imageKey(repository: string, tag: string): string {
    return this.keys.image(repository, tag);
  }

  async getNodes(chainIds: readonly Digest[]): Promise<(TrieNode | undefined)[]> {
    const raw = await this.cache.getMany(chainIds.map((id) => this.nodeKey(id)));
    return raw.map((r) => (r ? parseOr<TrieNode>(r) : undefined));
  }

  async putNodes(nodes: readonly TrieNode[]): Promise<void> {
    if (nodes.length === 0) return;
    await this.cache.setMany(nodes.map((n) => ({ key: this.nodeKey(n.chainId), value: JSON.stringify(n) })));
  }

  async getEdges(parents: readonly { chainId: Digest | undefined; step: string }[]): Promise<Digest[][]> {
    const raw = await this.cache.getMany(parents.map((p) => this.edgeKey(p.chainId, p.step)));
    return raw.map((r) => (r ? (parseOr<Digest[]>(r) ?? []) : []));
  }

  async addEdges(edges: readonly { parent: Digest | undefined; step: string; child: Digest }[]): Promise<void> {
    if (edges.length === 0) return;
    const keys = edges.map((e) => this.edgeKey(e.parent, e.step));
    const current = await this.cache.getMany(keys);
    const merged = new Map<string, { set: Set<string>; was: string | undefined }>();
    edges.forEach((e, i) => {
      const key = keys[i]!;
      const entry = merged.get(key) ?? { set: new Set(current[i] ? (parseOr<string[]>(current[i]!) ?? []) : []), was: current[i] };
      entry.set.add(e.child);
      merged.set(key, entry);
    });
    // Edges already there (the same image pushed again) are not written again.
    const changed = [...merged].map(([key, { set, was }]) => ({ key, value: JSON.stringify([...set]), was })).filter((e) => e.value !== e.was);
    if (changed.length) await this.cache.setMany(changed.map(({ key, value }) => ({ key, value })));
  }

  /**
   * Adds one image to the trie (what every push does for what it pushed): its nodes merged with
   * those known, its edges, its record. Writes only the entries that change, so that pushing an
   * image again costs reads. `record` is the image's current record when the caller has read it.
   */
  async addImage(image: IndexedImage, record?: { current: IndexedImage | undefined }): Promise<void> {
    const ids = chainIds(image.layers.map((l) => l.diffId));
    const known = await this.getNodes(ids);
    const nodes = nodesOf(image, new Map(ids.map((id, i) => [id, known[i]])), true);
    await this.putNodes(nodes.filter((n, i) => !known[i] || JSON.stringify(known[i]) !== JSON.stringify(n)));
    await this.addEdges(edgesOf(nodes));
    if (!image.ref.tag) return;
    const current = record ? record.current : (await this.getImageRecords([{ repository: image.ref.repository, tag: image.ref.tag }]))[0];
    if (!current || JSON.stringify(current) !== JSON.stringify(image)) await this.putImageRecords([image]);
  }

  async getImageRecords(refs: readonly { repository: string; tag: string }[]): Promise<(IndexedImage | undefined)[]> {
    const raw = await this.cache.getMany(refs.map((r) => this.imageKey(r.repository, r.tag)));
    return raw.map((r) => (r ? parseOr<IndexedImage>(r) : undefined));
  }

  async putImageRecords(images: readonly IndexedImage[]): Promise<void> {
    if (!images.some((i) => i.ref.tag)) return;
    await this.cache.setMany(images.filter((i) => i.ref.tag).map((i) => ({ key: this.imageKey(i.ref.repository, i.ref.tag!), value: JSON.stringify(i) })));
  }

  /**
   * The chains most shared across the store, as the last full index counted them: none when no
   * chain is in two images; undefined when the cache holds no index of the store (never run, or
   * lost: a Redis restarted empty, another machine's disk cache).
   */
  async getTop(): Promise<Digest[] | undefined> {
    const raw = await this.cache.get(this.keys.top);
    return raw ? (parseOr<Digest[]>(raw) ?? []) : undefined;
  }

  async putTop(chainIds: readonly Digest[]): Promise<void> {
    await this.cache.set(this.keys.top, JSON.stringify(chainIds));
  }
}

function parseOr<T>(raw: string): T | undefined {
  try {
    return JSON.parse(raw) as T;
  } catch {
    return undefined;
  }
}

/** The edges that lead to `nodes`: one per key each is known under. */
export function edgesOf(nodes: readonly TrieNode[]): { parent: Digest | undefined; step: string; child: Digest }[] {
  return nodes.flatMap((n) => keysOf(n).map((k) => ({ parent: n.parent, step: stepKeyString(k), child: n.chainId })));
}

/**
 * What indexing records of an image at `ref`: its layers as stored (blob descriptors) with the
 * build step that made each, when known. One construction for pushes and index runs alike.
 */
export function indexedImageOf(
  ref: { repository: string; tag?: string },
  manifest: Digest,
  layers: readonly { diffId: Digest; descriptor: Descriptor }[],
  steps: readonly (StepKey | undefined)[],
  also: readonly (readonly StepKey[] | undefined)[] = [],
  extra: Pick<ImageRef, 'inlineCache' | 'builder'> = {},
): IndexedImage {
  return {
    ref: { repository: ref.repository, ...(ref.tag ? { tag: ref.tag } : {}), manifest, ...extra },
    layers: layers.map((l, i) => ({
      diffId: l.diffId,
      blob: { digest: l.descriptor.digest, size: l.descriptor.size, mediaType: l.descriptor.mediaType },
      ...(steps[i] ? { step: steps[i] } : {}),
      ...(also[i]?.length ? { also: [...also[i]!] } : {}),
    })),
  };
}
