/**
 * The layer trie of one store, kept in the metadata cache (on disk by default, Redis when shared):
 *   trie:v1:<scope>:n:<chain id>              a node (JSON)
 *   trie:v1:<scope>:e:<parent chain id>:<h>   child chain ids reached from the parent by a step
 *                                             whose key hashes to h ("root" for no parent)
 *   trie:v1:<scope>:i:<repo>:<tag>            what the last index saw for a tag (manifest, layers)
 * Like everything in the metadata cache it is a hint: a lost edge or a stale node changes the
 * quality of a plan, never what a pull verifies.
 */
import { createHash } from 'node:crypto';
import type { Digest } from '../oci/digest.js';
import type { IndexedImage, TrieNode, TrieStore } from '../trie/layer-trie.js';
import type { MetadataCache } from './metadata-cache.js';

const hashStep = (step: string) => createHash('sha256').update(step).digest('hex').slice(0, 32);

export class CachedTrieStore implements TrieStore {
  private readonly prefix: string;

  constructor(
    private readonly cache: MetadataCache,
    scope: string,
  ) {
    this.prefix = `trie:v1:${scope}:`;
  }

  private nodeKey(id: Digest): string {
    return `${this.prefix}n:${id}`;
  }

  private edgeKey(parent: Digest | undefined, step: string): string {
    return `${this.prefix}e:${parent ?? 'root'}:${hashStep(step)}`;
  }

  private imageKey(repository: string, tag: string): string {
    return `${this.prefix}i:${repository}:${tag}`;
  }

  async getNodes(chainIds: readonly Digest[]): Promise<(TrieNode | undefined)[]> {
    const raw = await this.cache.getMany(chainIds.map((id) => this.nodeKey(id)));
    return raw.map((r) => (r ? parseOr<TrieNode>(r) : undefined));
  }

  async putNodes(nodes: readonly TrieNode[]): Promise<void> {
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
    const merged = new Map<string, Set<string>>();
    edges.forEach((e, i) => {
      const key = keys[i]!;
      const set = merged.get(key) ?? new Set(current[i] ? (parseOr<string[]>(current[i]!) ?? []) : []);
      set.add(e.child);
      merged.set(key, set);
    });
    await this.cache.setMany([...merged].map(([key, set]) => ({ key, value: JSON.stringify([...set]) })));
  }

  async getImageRecords(refs: readonly { repository: string; tag: string }[]): Promise<(IndexedImage | undefined)[]> {
    const raw = await this.cache.getMany(refs.map((r) => this.imageKey(r.repository, r.tag)));
    return raw.map((r) => (r ? parseOr<IndexedImage>(r) : undefined));
  }

  async putImageRecords(images: readonly IndexedImage[]): Promise<void> {
    await this.cache.setMany(images.filter((i) => i.ref.tag).map((i) => ({ key: this.imageKey(i.ref.repository, i.ref.tag!), value: JSON.stringify(i) })));
  }

  /** The chains most shared across the store, as the last full index counted them. */
  async getTop(): Promise<Digest[]> {
    const raw = await this.cache.get(`${this.prefix}top`);
    return raw ? (parseOr<Digest[]>(raw) ?? []) : [];
  }

  async putTop(chainIds: readonly Digest[]): Promise<void> {
    await this.cache.set(`${this.prefix}top`, JSON.stringify(chainIds));
  }
}

function parseOr<T>(raw: string): T | undefined {
  try {
    return JSON.parse(raw) as T;
  } catch {
    return undefined;
  }
}
