/**
 * A Distribution registry's storage, read and written directly through a StorageDriver, in the
 * order that never exposes a broken image: blob data → `_layers` links → manifest revision link →
 * tag index link → tag `current/link` last.
 */
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { SmartError, isSmartError } from '../../errors.js';
import { isDigest, sha256Digest, type Digest } from '../../oci/digest.js';
import { MAX_MANIFEST_BYTES } from '../../oci/manifest.js';
import { DigestStream, VerifyStream } from '../../pipeline/digest-stream.js';
import { localFileOf } from '../../pipeline/local-file.js';
import type { StorageDriver } from '../../storage/driver.js';
import { ownerOfTemporary } from '../../storage/fs-driver.js';
import { isStale, ownerTag, parseOwnerTag, type Cleaned } from '../../storage/leftovers.js';
import { linkContent, pathFor } from './layout.js';

export type LinkKind = 'layer' | 'manifest';

/**
 * A blob a manifest names, as the repository must hold it for the registry to serve the manifest:
 * its data, of this size, and its link of `kind` (a config or layer; an index's manifest). `what`
 * names it in messages (`layer`, `config`, `manifest`).
 */
export interface ReferencedBlob {
  digest: Digest;
  size: number;
  kind: LinkKind;
  what: string;
}

/** A link file holds 71 bytes; anything much larger is not one, and is not read. */
const MAX_LINK_BYTES = 4096;

/** How long a new tag that could not be set is tried to be taken away again (see `tag`). */
const TAG_CLEANUP_MS = 5_000;

export class DistributionStore {
  private readonly removed: Cleaned[] = [];
  /** Upload directories of blobs already stored, being removed (see `settled`). */
  private readonly removing: Promise<void>[] = [];

  constructor(readonly driver: StorageDriver) {}

  get name(): string {
    return this.driver.name;
  }

  private linkPath(repo: string, digest: Digest, kind: LinkKind): string {
    return pathFor(kind === 'layer' ? { kind: 'layerLink', repo, digest } : { kind: 'manifestRevisionLink', repo, digest });
  }

  /** Reads a link file, strictly: what the registry would refuse, we refuse too. */
  private async readLink(path: string, what: string): Promise<Digest> {
    const raw = (await this.driver.getContent(path, MAX_LINK_BYTES)).toString('utf8');
    if (!isDigest(raw)) {
      throw new SmartError('MANIFEST_INVALID', `${this.name}: malformed link file for ${what} (${JSON.stringify(raw.slice(0, 80))})`, {
        input: path,
      });
    }
    return raw;
  }

  async blobSize(digest: Digest): Promise<number | undefined> {
    return this.objectSize(pathFor({ kind: 'blobData', digest }));
  }

  /**
   * Whether `digest` is linked in `repo`: a link file of a link's length. One cut short is none, and
   * is written again: a push killed mid-write into an S3 server that writes objects in place (not
   * AWS, whose PUT is atomic) leaves an empty one, which the registry would refuse to serve.
   */
  async isLinked(repo: string, digest: Digest, kind: LinkKind): Promise<boolean> {
    return (await this.objectSize(this.linkPath(repo, digest, kind))) === linkContent(digest).length;
  }

  /** The size of the object at `path`; a directory there is none. One request on S3, where `stat` of a missing key lists too. */
  private async objectSize(path: string): Promise<number | undefined> {
    if (this.driver.objectSize) return this.driver.objectSize(path);
    const st = await this.driver.stat(path);
    return st && !st.isDirectory ? st.size : undefined;
  }

  async link(repo: string, digest: Digest, kind: LinkKind): Promise<void> {
    await this.putLink(this.linkPath(repo, digest, kind), digest);
  }

  /**
   * Writes the link file `file`. A writer of it killed before its rename left its temporary
   * file beside it (`link.tmp-…`), which the registry ignores and nothing else would ever remove:
   * swept from the link's directory meanwhile (only those of writers that are gone).
   */
  private async putLink(file: string, digest: Digest): Promise<void> {
    const sweep = this.driver.removeStaleTemporaries?.(path.posix.dirname(file)).then(
      (cleaned) => void this.removed.push(...cleaned),
      () => undefined,
    );
    await this.driver.putContent(file, linkContent(digest));
    await sweep;
  }

  /** Whether the link file at `path` names `digest` already; anything unreadable does not. */
  private async linkNames(path: string, digest: Digest): Promise<boolean> {
    const current = await this.driver.getContent(path, MAX_LINK_BYTES).catch(() => undefined);
    return current?.equals(linkContent(digest)) ?? false;
  }

  async openBlob(digest: Digest, offset = 0, length?: number): Promise<Readable> {
    return this.driver.reader(pathFor({ kind: 'blobData', digest }), offset, length);
  }

  /** A small blob whole (manifests); larger than `maxBytes` is LIMIT_EXCEEDED, before reading. */
  async getBlobContent(digest: Digest, maxBytes?: number): Promise<Buffer> {
    return this.driver.getContent(pathFor({ kind: 'blobData', digest }), maxBytes);
  }

  /**
   * Streams a blob into the store, hashed on the way. With the digest known, straight to its
   * content address, verified in the stream so that a mismatch fails before the writer commits
   * (nothing appears), or by the stream itself when `verified` says it checks itself against the
   * digest and size. Without it (a layer being compressed), into the repository's
   * `_uploads/<id>/data`, where the registry stages its own uploads and purges stale ones, then
   * moved to its address; the upload records its owner beside `startedat`, so that the next push
   * can tell one a killed run left from a live one. Returns the digest and size once the blob is at
   * its address; its upload directory is removed meanwhile, and nothing is left in `_uploads` once
   * `settled()` resolves (on S3 that removal is a listing and a delete or two: a blob's link and the
   * next blobs need not wait for it).
   */
  async writeBlob(
    repo: string,
    source: Readable,
    expected?: { digest?: Digest; size?: number; verified?: boolean; what: string },
    signal?: AbortSignal,
  ): Promise<{ digest: Digest; size: number; present?: true }> {
    const known = expected?.digest;
    const id = randomUUID();
    const target = known ? pathFor({ kind: 'blobData', digest: known }) : pathFor({ kind: 'uploadData', repo, id });
    let stored = false;
    try {
      if (known) {
        // A writer of this blob killed before: its temporary file is beside the one we make.
        this.removed.push(...((await this.driver.removeStaleTemporaries?.(pathFor({ kind: 'blob', digest: known }))) ?? []));
      } else {
        await Promise.all([
          this.driver.putContent(pathFor({ kind: 'uploadOwner', repo, id }), Buffer.from(ownerTag())),
          this.driver.putContent(pathFor({ kind: 'uploadStartedAt', repo, id }), Buffer.from(new Date().toISOString())),
        ]);
      }
      // A verified local file (from an OCI layout or another file: store): copied in the kernel, the copy checked.
      const file = known && expected?.verified && expected.size !== undefined && this.driver.importFile ? localFileOf(source) : undefined;
      if (file) {
        source.destroy();
        await this.driver.importFile!(file, target, { digest: known!, size: expected!.size!, what: expected!.what }, signal);
        return { digest: known!, size: expected!.size! };
      }
      const writer = await this.driver.writer(target);
      // Verified upstream (it errors in place of its end): not hashed again, only committed after a clean end.
      const verifiedSize = known && expected?.verified ? expected.size : undefined;
      const hash =
        verifiedSize !== undefined
          ? undefined
          : known
            ? new VerifyStream({ digest: known, ...(expected?.size !== undefined ? { size: expected.size } : {}), what: expected!.what })
            : // A layer compressed on its way here: the compressors hand on fresh buffers, hashed on the pool.
              new DigestStream({ offThread: true });
      try {
        await pipeline([source, ...(hash ? [hash] : []), writer.stream], ...(signal ? [{ signal }] : []));
      } catch (e) {
        await writer.cancel().catch(() => undefined);
        throw e;
      }
      await writer.commit();
      if (!hash) return { digest: known!, size: verifiedSize! };
      if (hash instanceof VerifyStream) return { digest: known!, size: hash.size };
      const digest = hash.digest;
      // The store may hold these bytes already (an earlier push, another writer meanwhile):
      // content addressing makes either copy right, and the one there stays.
      const present = (await this.blobSize(digest)) === hash.size;
      if (!present) await this.driver.move(target, pathFor({ kind: 'blobData', digest }), hash.size);
      stored = true;
      return { digest, size: hash.size, ...(present ? { present: true as const } : {}) };
    } finally {
      if (!known) {
        const removal = this.driver.delete(pathFor({ kind: 'upload', repo, id })).catch(() => undefined);
        if (stored) this.removing.push(removal);
        else await removal;
      }
    }
  }

  /** Resolves once the upload directories of the blobs stored so far are removed (never rejects). */
  async settled(): Promise<void> {
    while (this.removing.length) await Promise.all(this.removing.splice(0));
  }

  /** Leftovers of killed runs this store removed while writing blobs (see `removeStaleUploads` for the rest). */
  leftoversRemoved(): readonly Cleaned[] {
    return this.removed;
  }

  /**
   * Removes the uploads of `repo` that killed pushes of ours left: those whose owner is gone, or
   * that cannot be checked (another machine; another boot, which may be a twin machine's; a version
   * that recorded no owner) and started more than a day ago. Uploads of live runs, and the
   * registry's own (no owner record, no temporary file of ours), are left alone.
   */
  async removeStaleUploads(repo: string): Promise<Cleaned[]> {
    const removed: Cleaned[] = [];
    for (const id of await this.driver.list(pathFor({ kind: 'uploadsRoot', repo }))) {
      const dir = pathFor({ kind: 'upload', repo, id });
      const names = await this.driver.list(dir);
      const recorded = names.includes(path.posix.basename(pathFor({ kind: 'uploadOwner', repo, id })));
      // A push killed while it wrote its first files leaves their temporary names alone, each
      // naming its writer (`NAME.tmp-OWNER`): the registry's own uploads have none of those.
      const writer = names.map(ownerOfTemporary).find((o) => o) ?? undefined;
      if (!recorded && !writer && !names.some((n) => n.startsWith('data.tmp-'))) continue;
      // An owner record and a start time are a line each: anything larger is no record of ours.
      const read = async (p: string) => (await this.driver.getContent(p, MAX_LINK_BYTES).catch(() => undefined))?.toString('utf8') ?? '';
      const owner = recorded ? parseOwnerTag(await read(pathFor({ kind: 'uploadOwner', repo, id })))?.owner : writer;
      const startedAt = Date.parse(await read(pathFor({ kind: 'uploadStartedAt', repo, id })));
      // Other machines push into the store too: one of another boot may be a twin of this one (see leftovers.ts).
      if (!isStale(owner, Number.isNaN(startedAt) ? 0 : Date.now() - startedAt, { shared: true })) continue;
      let bytes = 0;
      for (const n of names) bytes += (await this.driver.stat(`${dir}/${n}`))?.size ?? 0;
      await this.driver.delete(dir);
      removed.push({ path: this.driver.location(dir), bytes });
    }
    return removed;
  }

  /**
   * Stores manifest bytes as a blob and links them as a revision of `repo` (not yet tagged), once
   * every blob it names (`references`) is still in the store and linked in `repo`: what the
   * registry checks at a manifest PUT. A blob written or found earlier in the push can be gone by
   * now (a `garbage-collect` running meanwhile removes the blobs no manifest named when it looked):
   * then nothing is written and the push fails (see `missing`). What is there already is not
   * written again (pushing an image again writes nothing); everything is read at once, and the blob
   * is written before its link.
   */
  async putManifest(repo: string, bytes: Buffer, references: readonly ReferencedBlob[] = []): Promise<Digest> {
    const digest = sha256Digest(bytes);
    const link = this.linkPath(repo, digest, 'manifest');
    const [size, linked, gone] = await Promise.all([this.blobSize(digest), this.linkNames(link, digest), this.missing(repo, references)]);
    if (gone.length > 0) throw this.removedMeanwhile(repo, gone);
    if (size !== bytes.length) await this.driver.putContent(pathFor({ kind: 'blobData', digest }), bytes);
    if (!linked) await this.putLink(link, digest);
    return digest;
  }

  /**
   * Those of `blobs` whose data is not in the store at its size: they cannot be put back without
   * their bytes, which the push may no longer have (a layer read from a stream). Asked all at once,
   * two small reads each (on S3 two HEADs), bounded by the manifest. When none is missing, one whose
   * link alone has gone is linked again, as reuseBlob links a blob another repository holds.
   */
  private async missing(repo: string, blobs: readonly ReferencedBlob[]): Promise<ReferencedBlob[]> {
    const unique = [...new Map(blobs.map((b) => [b.digest, b])).values()];
    const held = await Promise.all(
      unique.map(async (b) => {
        const [size, linked] = await Promise.all([this.blobSize(b.digest), this.isLinked(repo, b.digest, b.kind)]);
        return { blob: b, there: size === b.size, linked };
      }),
    );
    const gone = held.filter((h) => !h.there).map((h) => h.blob);
    if (gone.length === 0) await Promise.all(held.filter((h) => !h.linked).map((h) => this.link(repo, h.blob.digest, h.blob.kind)));
    return gone;
  }

  private removedMeanwhile(repo: string, gone: readonly ReferencedBlob[]): SmartError {
    const first = gone[0]!;
    const more = gone.length > 1 ? ` (and ${gone.length - 1} more)` : '';
    return new SmartError('NOT_FOUND', `${this.name}#${repo}: ${first.what} ${first.digest}${more} is no longer in the store: removed while this push ran (a garbage-collect?); nothing tagged`, {
      input: first.digest,
      hint: 'push again (it writes what is missing), and run garbage-collect only while nothing writes into the store',
    });
  }

  /**
   * Points `tag` at `digest`: the tag index link first, `current/link` last (the visible switch).
   * Both are read at once, and a link that names `digest` already is not written again. A new
   * tag whose `current/link` could not be written is taken away again: its directory alone would
   * be listed by the registry and serve nothing. With `manifest` (its bytes and the blobs it
   * names), whether the manifest is still stored and linked is read at the same time: a
   * `garbage-collect` since putManifest (its blob unnamed when it looked; with `--delete-untagged`,
   * its revision link untagged) took it away, and likely what it names: all checked again, the
   * manifest put back, or the push failed as putManifest fails, before the tag names it.
   */
  async tag(repo: string, tag: string, digest: Digest, manifest?: { bytes: Buffer; references: readonly ReferencedBlob[] }): Promise<void> {
    const index = pathFor({ kind: 'tagIndexLink', repo, tag, digest });
    const current = pathFor({ kind: 'tagCurrentLink', repo, tag });
    // What current/link holds: its bytes, 'absent' (NOT_FOUND), or 'unknown' (the store failed to say).
    const readCurrent = (): Promise<Buffer | 'absent' | 'unknown'> =>
      this.driver.getContent(current, MAX_LINK_BYTES).catch((e: unknown) => (isSmartError(e) && e.code === 'NOT_FOUND' ? 'absent' : 'unknown'));
    const stored = async (m: { bytes: Buffer }): Promise<boolean> => {
      const [size, linked] = await Promise.all([this.blobSize(digest), this.isLinked(repo, digest, 'manifest')]);
      return size === m.bytes.length && linked;
    };
    const [indexed, before, kept] = await Promise.all([this.linkNames(index, digest), readCurrent(), manifest ? stored(manifest) : true]);
    if (manifest && !kept) await this.putManifest(repo, manifest.bytes, manifest.references);
    if (!indexed) await this.putLink(index, digest);
    if (before instanceof Buffer && before.equals(linkContent(digest))) return;
    try {
      await this.putLink(current, digest);
    } catch (e) {
      // Only once the store has said no current/link is there, and while it shows none (a write
      // that failed may have landed; another push may have set it meanwhile): then the directory
      // is a tag that serves nothing.
      // The store that just refused a write may refuse these too: tried again for a few seconds.
      const tagDir = path.posix.join(pathFor({ kind: 'tagsRoot', repo }), tag);
      const until = Date.now() + TAG_CLEANUP_MS;
      let absent = before === 'absent';
      for (let attempt = 1; Date.now() < until; attempt++) {
        const now = await readCurrent();
        if (now instanceof Buffer) break;
        absent ||= now === 'absent';
        if (absent && (await this.driver.delete(tagDir).then(() => true, () => false))) break;
        await new Promise((resolve) => setTimeout(resolve, Math.min(100 * attempt, 1000)));
      }
      throw e;
    }
  }

  async resolveTag(repo: string, tag: string): Promise<Digest> {
    try {
      return await this.readLink(pathFor({ kind: 'tagCurrentLink', repo, tag }), `tag ${repo}:${tag}`);
    } catch (e) {
      if (isSmartError(e) && e.code === 'NOT_FOUND') {
        const known = await this.repositoryExists(repo);
        throw new SmartError('NOT_FOUND', known ? `tag "${tag}" not found in ${this.name}#${repo}` : `repository "${repo}" not found in ${this.name}`, {
          input: known ? `${repo}:${tag}` : repo,
          hint: known ? `tags there: ${(await this.resolvableTags(repo, 10)).join(', ') || 'none'}` : undefined,
        });
      }
      throw e;
    }
  }

  /** Manifest bytes of a revision of `repo`; the registry serves only linked revisions, so do we. */
  async getManifest(repo: string, digest: Digest): Promise<Buffer> {
    if (!(await this.isLinked(repo, digest, 'manifest'))) {
      throw new SmartError('NOT_FOUND', `manifest ${digest} not found in ${this.name}#${repo}`, { input: `${repo}@${digest}` });
    }
    try {
      return await this.getBlobContent(digest, MAX_MANIFEST_BYTES);
    } catch (e) {
      if (isSmartError(e) && e.code === 'NOT_FOUND') {
        throw new SmartError('NOT_FOUND', `${this.name}: manifest ${digest} of ${repo} is linked but its blob is missing`, { input: digest });
      }
      throw e;
    }
  }

  async repositoryExists(repo: string): Promise<boolean> {
    return (await this.driver.stat(`${pathFor({ kind: 'repository', repo })}/_manifests`)) !== undefined;
  }

  async listTags(repo: string): Promise<string[]> {
    return this.driver.list(pathFor({ kind: 'tagsRoot', repo }));
  }

  /**
   * Up to `max` tags of `repo` that name a manifest: a tag's directory without its current link
   * (a push killed between the two, which the registry lists too but cannot serve) is left out.
   */
  private async resolvableTags(repo: string, max: number): Promise<string[]> {
    const found: string[] = [];
    for (const tag of await this.listTags(repo)) {
      if (found.length === max) break;
      if (await this.driver.stat(pathFor({ kind: 'tagCurrentLink', repo, tag }))) found.push(tag);
    }
    return found;
  }

  /** Every repository, as the registry's catalog finds them: directories holding `_manifests`. */
  async listRepositories(): Promise<string[]> {
    const root = pathFor({ kind: 'repositoriesRoot' });
    const found: string[] = [];
    const walk = async (rel: string): Promise<void> => {
      const children = await this.driver.list(rel ? `${root}/${rel}` : root);
      if (children.includes('_manifests')) found.push(rel);
      for (const c of children) {
        if (c.startsWith('_')) continue;
        await walk(rel ? `${rel}/${c}` : c);
      }
    };
    await walk('');
    return found.filter((r) => r !== '').sort();
  }
}
