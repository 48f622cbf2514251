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

  /**
   * Nodes as live images hold them: a node names the images it was seen in, and a tag moved since
   * (its record names another manifest) or gone (no record, or one no index has seen since the
   * last began) no longer holds it. Without that, a plan chose an image the store no longer has,
   * and `cache pull` failed on every run, a new index run included. A node no live image names is
   * as good as absent (its chain may still be in images past the few a node lists: a missed
   * reuse, never a wrong one).
   */
  async getNodes(chainIds: readonly Digest[]): Promise<(TrieNode | undefined)[]> {
    return (await this.liveNodes(chainIds)).nodes;
  }

  /**
   * What this command read of the tags' records (by `repository:tag`) and of when the last index
   * began: a plan's steps name the same few images over and over, and within one command they do
   * not change, so each is read once, not once per step.
   */
  private readonly seenRecords = new Map<string, StoredRecord | undefined>();
  private seenSince?: { value: number | undefined };

  private async liveNodes(chainIds: readonly Digest[]): Promise<{ nodes: (TrieNode | undefined)[]; indexedSince: number | undefined }> {
    const raw = await this.cache.getMany(chainIds.map((id) => this.nodeKey(id)));
    const nodes = raw.map((r) => (r ? parseOr<TrieNode>(r) : undefined));
    const tagOf = (repository: string, tag: string) => `${repository}:${tag}`;
    const unread = new Map<string, { repository: string; tag: string }>();
    for (const n of nodes) {
      for (const r of n?.images ?? []) if (r.tag && !this.seenRecords.has(tagOf(r.repository, r.tag))) unread.set(tagOf(r.repository, r.tag), { repository: r.repository, tag: r.tag });
    }
    const refs = [...unread.values()];
    if (refs.length > 0 || !this.seenSince) {
      const [since, ...records] = await this.cache.getMany([this.keys.indexedSince, ...refs.map((r) => this.imageKey(r.repository, r.tag))]);
      this.seenSince ??= { value: since !== undefined && Number.isFinite(Number(since)) ? Number(since) : undefined };
      refs.forEach((r, i) => this.seenRecords.set(tagOf(r.repository, r.tag), records[i] ? parseOr<StoredRecord>(records[i]!) : undefined));
    }
    const indexedSince = this.seenSince.value;
    const live = (r: ImageRef): boolean => {
      if (!r.tag) return true;
      const record = this.seenRecords.get(tagOf(r.repository, r.tag));
      // Never indexed: what pushes recorded is all there is to go by.
      if (!record) return indexedSince === undefined;
      return record.ref?.manifest === r.manifest && (indexedSince === undefined || (record.seen ?? 0) >= indexedSince);
    };
    return {
      nodes: nodes.map((n) => {
        if (!n) return n;
        const images = n.images.filter(live);
        return images.length === n.images.length ? n : images.length ? { ...n, images } : undefined;
      }),
      indexedSince,
    };
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
    // The images the nodes name that are gone or moved are dropped as the nodes are written again.
    const { nodes: known, indexedSince } = await this.liveNodes(ids);
    const nodes = nodesOf(image, new Map(ids.map((id, i) => [id, known[i]])), true);
    await this.putNodes(nodes.filter((n, i) => !known[i] || JSON.stringify(known[i]) !== JSON.stringify(n)));
    await this.addEdges(edgesOf(nodes));
    if (!image.ref.tag) return;
    const current = (record ? record.current : (await this.getImageRecords([{ repository: image.ref.repository, tag: image.ref.tag }]))[0]) as StoredRecord | undefined;
    // Seen now: live until an index that begins later does not see it. (A clock behind the
    // index's makes a tag pushed during an index run wait for the next: a missed reuse only.)
    const seen = Math.max(Date.now(), indexedSince ?? 0);
    const stale = indexedSince !== undefined && (current?.seen ?? 0) < indexedSince;
    const { seen: _was, ...kept } = current ?? {};
    if (!current || stale || JSON.stringify(kept) !== JSON.stringify(image)) await this.putImageRecords([image], seen);
  }

  async getImageRecords(refs: readonly { repository: string; tag: string }[]): Promise<(IndexedImage | undefined)[]> {
    return (await this.readImageRecords(refs)).map((r) => r.record);
  }

  /** The tags' records, each with its entry as stored (`putIndexRecords` writes over it only while it holds that). */
  async readImageRecords(refs: readonly { repository: string; tag: string }[]): Promise<{ record: IndexedImage | undefined; stored: string | undefined }[]> {
    const raw = await this.cache.getMany(refs.map((r) => this.imageKey(r.repository, r.tag)));
    return raw.map((r) => ({ record: r ? parseOr<IndexedImage>(r) : undefined, stored: r }));
  }

  /**
   * What an index run that began at `startedAt` saw of the tags, as their records, each written
   * unless its entry is no longer what the run read (`stored`): a push that moved the tag
   * meanwhile knows better than what the run read before it. That record is kept, and its image
   * merged again into the nodes: the run wrote them from the images it saw, over the push's, and
   * a chain the pushed image shared only with the one its tag named before was offered by none.
   */
  async putIndexRecords(entries: readonly { image: IndexedImage; stored: string | undefined }[], startedAt: number): Promise<void> {
    const tagged = entries.filter((e) => e.image.ref.tag);
    const written = await this.cache.setManyIfUnchanged(
      tagged.map(({ image, stored }) => ({ key: this.imageKey(image.ref.repository, image.ref.tag!), value: JSON.stringify({ ...image, seen: startedAt }), was: stored })),
    );
    const pushed = tagged.filter((_, i) => !written[i]).map((e) => e.image.ref);
    for (const { record } of await this.readImageRecords(pushed.map((r) => ({ repository: r.repository, tag: r.tag! })))) {
      if (!record) continue;
      const { seen: _seen, ...image } = record as StoredRecord;
      await this.addImage(image, { current: record });
    }
  }

  /** Writes what was seen of tags, `seen` when (ms; see getNodes). */
  async putImageRecords(images: readonly IndexedImage[], seen: number): Promise<void> {
    if (!images.some((i) => i.ref.tag)) return;
    await this.cache.setMany(images.filter((i) => i.ref.tag).map((i) => ({ key: this.imageKey(i.ref.repository, i.ref.tag!), value: JSON.stringify({ ...i, seen }) })));
  }

  /** A full index that began at `startedAt` (ms) has written the records of every tag it saw: those it did not are of tags gone. */
  async putIndexedSince(startedAt: number): Promise<void> {
    await this.cache.set(this.keys.indexedSince, String(startedAt));
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

/** A tag's record as kept: the image, and when it was last seen in the store (ms). */
type StoredRecord = IndexedImage & { seen?: number };

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
