/**
 * Every key of the metadata cache, built here and nowhere else. A `scope` names a store as its
 * facts are kept (`file:/srv/registry`, `s3://bucket/root`, `docker://host:port`); Redis puts
 * `smartlayer:` (or `--redis`'s prefix) before every key, the disk cache nothing. A key's `vN` is
 * the version of what its value holds: a change of form takes a new version, and the old entries
 * are simply never read again (misses).
 *
 *   manifest:v1:<digest>                      manifest bytes and media type, checked against the digest on read
 *   config:v1:<digest>                        config bytes, checked likewise
 *   tag:v2:<scope>:<repo>:<tag>               what a tag named when last resolved or pushed, and when
 *   compressed:v2:<scope>:<diff id>           the blob a layer was compressed to there, and its proof
 *   location:v1:<scope>:<digest>              repositories of a registry that hold a blob (mount sources)
 *   proof:v1:<scope>:<repo>@<digest>          an image this machine's own push committed as a proof of its layers (on the local disk only)
 *   scheme:v1:<host[:port]>                   http|https: what a registry allowed plain HTTP answered on (on the local disk only)
 *   member:v1:<v1 id>                         the diff id of `<v1 id>/layer.tar` in Docker's older `docker save` (on the local disk only)
 *   trie:v1:<scope>:
 *     ├─ n:<chain id>                         a node of the layer trie
 *     ├─ e:<parent chain id | root>:<h>       the nodes a step (hashed: h) leads to from a parent
 *     ├─ i:<repo>:<tag>                       what the last index saw of a tag
 *     ├─ top                                  the chains most shared across the store
 *     └─ lock                                 the lease of the one `cache index` run of the store
 */
import { createHash } from 'node:crypto';

/** A manifest by its digest (content-addressed: the bytes are checked against it when read). */
export function manifestKey(digest: string): string {
  return `manifest:v1:${digest}`;
}

/** A config blob by its digest (content-addressed, like a manifest). */
export function configKey(digest: string): string {
  return `config:v1:${digest}`;
}

/** What a tag of a store was last seen to name, and when. */
export function tagKey(scope: string, repository: string, tag: string): string {
  return `tag:v2:${scope}:${repository}:${tag}`;
}

/**
 * What a layer (by diff id) was compressed to in a store, one entry per format: a push asked for
 * gzip must never be answered with the zstd blob an earlier push made (its image would change
 * format), and pushes of both formats must not take each other's entry. gzip keeps the key it had.
 */
export function compressedKey(scope: string, diffId: string, format: 'gzip' | 'zstd' = 'gzip'): string {
  return `compressed:v2:${scope}:${diffId}${format === 'gzip' ? '' : `:${format}`}`;
}

/**
 * The diff id a layer Docker's older `docker save` names `<v1 id>/layer.tar` held when last read.
 * Docker derives that id from the layer's chain id (and, for an image's top layer, its config), so
 * the name stands for the same bytes in every archive; a hint all the same, checked on every read.
 */
export function archiveMemberKey(v1Id: string): string {
  return `member:v1:${v1Id}`;
}

/**
 * A proof image this machine's own push committed (see BlobInfoCache): its layers' diff ids were
 * known here, not taken from the config of whoever pushed it.
 */
export function provenHereKey(scope: string, repository: string, manifest: string): string {
  return `proof:v1:${scope}:${repository}@${manifest}`;
}

/** Where in a registry a blob was seen. */
export function locationKey(scope: string, digest: string): string {
  return `location:v1:${scope}:${digest}`;
}

/**
 * The scheme a registry allowed plain HTTP answered on from this machine. Kept on the local disk
 * even when the cache is in Redis: `localhost:5000` is another registry on every machine.
 */
export function schemeKey(apiHost: string): string {
  return `scheme:v1:${apiHost}`;
}

/** The keys of one store's layer trie. */
export function trieKeys(scope: string) {
  const prefix = `trie:v1:${scope}:`;
  return {
    node: (chainId: string) => `${prefix}n:${chainId}`,
    /** The step's key is hashed: steps are long, keys had better not be. */
    edge: (parent: string | undefined, step: string) => `${prefix}e:${parent ?? 'root'}:${createHash('sha256').update(step).digest('hex').slice(0, 32)}`,
    image: (repository: string, tag: string) => `${prefix}i:${repository}:${tag}`,
    top: `${prefix}top`,
    /** When the last full index of the store began (ms): records it did not see since are of tags gone. */
    indexedSince: `${prefix}since`,
    lock: `${prefix}lock`,
  };
}
