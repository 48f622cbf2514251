/**
 * OCI image layout (image-spec image-layout.md; its file names in paths.ts): `oci:DIR[:TAG]` reads
 * and writes a directory; `oci-archive:FILE[:TAG]` is the same layout in a tar. Tags are the
 * `org.opencontainers.image.ref.name` annotation of index.json entries, as skopeo uses it.
 */
import type { Readable } from 'node:stream';
import { SmartError, isSmartError, quoted } from '../../errors.js';
import { sha256Digest, shortDigest, type Digest } from '../../oci/digest.js';
import type { BlobDestination, BlobReuse, ImageSource, OpenOptions, PutBlobInfo, StoredBlob } from '../../oci/image.js';
import { MAX_MANIFEST_BYTES, parseManifest, serializeManifest, type Descriptor, type ImageIndex, type ParsedManifest } from '../../oci/manifest.js';
import { MediaType } from '../../oci/mediatypes.js';
import { holdsImage } from '../../oci/partial.js';
import { DigestStream, verifiedStream } from '../../pipeline/digest-stream.js';
import { localFileOf } from '../../pipeline/local-file.js';
import { ownedId, ownerOfId } from '../../storage/aside.js';
import { isTemporaryOf, type FsDriver } from '../../storage/fs-driver.js';
import { sweepLocal, type Cleaned } from '../../storage/leftovers.js';
import { NotRegularFile } from '../../storage/regular-file.js';
import { pipeline } from 'node:stream/promises';
import { LAYOUT_FILE_CONTENT, REF_NAME, layoutPath, memberName } from './paths.js';

const LAYOUT_FILE = layoutPath({ kind: 'layoutFile' });
const INDEX_FILE = layoutPath({ kind: 'index' });

/** The read side of a layout: a directory (FsDriver) or a tar archive. */
export interface LayoutFiles {
  /** Throws NOT_FOUND when absent, LIMIT_EXCEEDED (before reading) when larger than `maxBytes`. */
  getContent(path: string, maxBytes?: number): Promise<Buffer>;
  reader(path: string): Promise<Readable>;
}

function blobPath(digest: Digest): string {
  return layoutPath({ kind: 'blob', digest });
}

async function readIndex(files: LayoutFiles, name: string): Promise<ImageIndex> {
  let bytes: Buffer;
  try {
    // Both at once; either missing means the same: not a layout.
    [, bytes] = await Promise.all([files.getContent(LAYOUT_FILE, MAX_MANIFEST_BYTES), files.getContent(INDEX_FILE, MAX_MANIFEST_BYTES)]);
  } catch (e) {
    if (isSmartError(e) && e.code === 'NOT_FOUND') {
      const dockerSave = await files.getContent('/manifest.json', MAX_MANIFEST_BYTES).then(
        () => true,
        () => false,
      );
      throw new SmartError('NOT_AN_IMAGE', `${name}: not an OCI image layout (no oci-layout or index.json)`, {
        input: name,
        ...(dockerSave ? { hint: 'this holds the manifest.json of a docker save: docker-archive:FILE reads its tar' } : {}),
        cause: e,
      });
    }
    throw e;
  }
  const parsed = parseManifest(bytes, MediaType.OCI_INDEX, `${name} index.json`);
  if (parsed.kind !== 'index') throw new SmartError('MANIFEST_INVALID', `${name}: index.json is not an image index`, { input: name });
  return parsed.index;
}

/** readIndex found no layout there (nothing to keep when writing one); not a file of it that is no file (a pipe), which is refused. */
function isNoLayout(e: unknown): boolean {
  return isSmartError(e) && e.code === 'NOT_AN_IMAGE' && !(e instanceof NotRegularFile);
}

/**
 * The entry of a layout's index.json that `tag` names, or the only entry when no tag is given;
 * `name` is the layout's reference as given (no tag when there is none), for messages.
 */
export function pickIndexEntry(index: ImageIndex, tag: string | undefined, name: string): Descriptor {
  const tags = index.manifests.map((d) => d.annotations?.[REF_NAME]).filter(Boolean);
  if (tag !== undefined) {
    const found = index.manifests.filter((d) => d.annotations?.[REF_NAME] === tag);
    if (found.length === 0) {
      throw new SmartError('NOT_FOUND', `${name}: no image tagged "${tag}"`, {
        input: name,
        hint: tags.length ? `tags there: ${tags.join(', ')}` : 'the layout has no tagged images',
      });
    }
    // Two images under one tag (a tool that added an entry without removing the old one): which
    // was meant is not written anywhere, so none is guessed (umoci refuses it too; skopeo takes the first).
    const digests = [...new Set(found.map((d) => d.digest))];
    if (digests.length > 1) {
      throw new SmartError('MANIFEST_INVALID', `${name}: index.json tags ${digests.length} different images "${tag}" (${digests.map(shortDigest).join(', ')})`, {
        input: name,
        hint: 'keep one entry of that tag in index.json',
      });
    }
    return found[0]!;
  }
  // Nothing to name: a tag would not help (an index.json emptied, or written before its images).
  if (index.manifests.length === 0) throw new SmartError('NOT_AN_IMAGE', `${name}: index.json names no image`, { input: name });
  if (index.manifests.length !== 1) {
    throw new SmartError('USAGE', `${name}: the layout holds ${index.manifests.length} images; name one as ${name}:TAG`, {
      input: name,
      ...(tags.length ? { hint: `tags there: ${tags.join(', ')}` } : {}),
    });
  }
  return index.manifests[0]!;
}

export class OciLayoutSource implements ImageSource {
  constructor(
    readonly name: string,
    private readonly files: LayoutFiles,
    private readonly tag: string | undefined,
    private readonly onClose: () => Promise<void> = async () => undefined,
  ) {}

  /** The index.json entry the reference names: by tag, or the only entry when no tag is given. */
  private async entry(): Promise<Descriptor> {
    return pickIndexEntry(await readIndex(this.files, this.name), this.tag, this.name);
  }

  async getManifest(): Promise<ParsedManifest> {
    return this.getManifestByDigest(await this.entry());
  }

  async getManifestByDigest(descriptor: Descriptor): Promise<ParsedManifest> {
    const bytes = await this.readBlob(descriptor.digest, 'manifest');
    // The digest first: changed bytes are not the manifest named, whatever they parse to.
    const actual = sha256Digest(bytes);
    if (actual !== descriptor.digest) {
      throw new SmartError('DIGEST_MISMATCH', `${this.name}: manifest ${descriptor.digest} hashes to ${actual}`, { input: descriptor.digest });
    }
    return parseManifest(bytes, descriptor.mediaType, `${this.name} (${shortDigest(descriptor.digest)})`);
  }

  private async readBlob(d: Digest, what: string): Promise<Buffer> {
    try {
      return await this.files.getContent(blobPath(d), MAX_MANIFEST_BYTES);
    } catch (e) {
      if (isSmartError(e) && e.code === 'NOT_FOUND') {
        throw new SmartError('NOT_FOUND', `${this.name}: ${what} blob ${d} is missing`, { input: d, cause: e });
      }
      throw e;
    }
  }

  async getBlob(descriptor: Descriptor, _options?: OpenOptions): Promise<Readable> {
    const what = `blob ${shortDigest(descriptor.digest)} of ${this.name}`;
    let raw: Readable;
    try {
      raw = await this.files.reader(blobPath(descriptor.digest));
    } catch (e) {
      if (isSmartError(e) && e.code === 'NOT_FOUND') throw new SmartError('NOT_FOUND', `${what} is missing`, { input: descriptor.digest, cause: e });
      throw e;
    }
    return verifiedStream(raw, { digest: descriptor.digest, size: descriptor.size, what });
  }

  repoTags(): readonly string[] {
    return [];
  }

  close(): Promise<void> {
    return this.onClose();
  }
}

/**
 * Writes into a layout directory. Blobs are written to a temporary name in the layout's root and
 * renamed to their content address; index.json is replaced atomically in `commit`, last.
 */
export class OciLayoutDestination implements BlobDestination {
  readonly layerCompression = 'preserve' as const;
  readonly cacheScope: string;
  /** prepare() found an empty directory: the layout is this run's own until it commits. */
  private fresh = false;
  /** What killed runs had left in the layout, removed by prepare (see removeLeftovers). */
  private swept: Cleaned[] = [];

  /**
   * `unmakeDirectories`: takes away the directories this run made for the layout, once emptied,
   * when the copy fails (see abort).
   */
  constructor(
    readonly name: string,
    private readonly driver: FsDriver,
    private readonly tag: string | undefined,
    private readonly unmakeDirectories?: () => Promise<void>,
  ) {
    this.cacheScope = `oci:${driver.name}`;
  }

  /** Refuses a directory that holds something other than a layout; creates `oci-layout`. */
  async prepare(): Promise<void> {
    const layoutFile = memberName(LAYOUT_FILE);
    // An oci-layout file being written (another run starting the same layout) is the layout to be.
    const children = (await this.driver.list('/')).filter((c) => !isTemporaryOf(c, layoutFile));
    this.fresh = children.length === 0;
    if (children.length > 0 && !children.includes(layoutFile)) {
      throw new SmartError('USAGE', `${this.name}: the directory is not empty and is not an OCI layout; refusing to write into it`, {
        input: this.name,
      });
    }
    if (!children.includes(layoutFile)) await this.driver.putContent(LAYOUT_FILE, LAYOUT_FILE_CONTENT);
    else {
      await this.checkVersion();
      this.swept = await this.removeLeftovers();
    }
  }

  /**
   * A layout of another major version than 1 (what the image spec defines, and this writes) is not
   * written into: its readers would take what it holds for that version's, as umoci refuses it.
   */
  private async checkVersion(): Promise<void> {
    const text = (await this.driver.getContent(LAYOUT_FILE, 64 * 1024)).toString('utf8');
    let version: unknown;
    try {
      version = (JSON.parse(text) as { imageLayoutVersion?: unknown }).imageLayoutVersion;
    } catch {
      version = undefined;
    }
    if (typeof version === 'string' && /^1\.\d+\.\d+$/.test(version)) return;
    throw new SmartError('UNSUPPORTED', `${this.name}: its oci-layout file says imageLayoutVersion ${typeof version === 'string' ? quoted(version, 40) : 'nothing valid'}; only 1.x layouts are written into`, {
      input: this.name,
    });
  }

  /**
   * Removes what killed runs (kill -9, a CI job's timeout) left in the layout, each nearly a whole
   * blob at worst: blobs being written, and the files the driver writes under a temporary name
   * first. Never what a live run writes: its owner still runs.
   */
  private async removeLeftovers(): Promise<Cleaned[]> {
    const prefix = memberName(layoutPath({ kind: 'temporaryBlob', id: '' }));
    const blobs = await sweepLocal(this.driver.root, (name) => (name.startsWith(prefix) ? ownerOfId(name.slice(prefix.length)) : undefined), { shared: true });
    return [...blobs, ...(await this.driver.removeStaleTemporaries('/')), ...(await this.driver.removeStaleTemporaries(layoutPath({ kind: 'blobs' })))];
  }

  async cleaned(): Promise<Cleaned[]> {
    return this.swept;
  }

  supportsManifestType(mediaType: string): boolean {
    // The layout may hold any manifest, but skopeo and umoci read only OCI ones there (as skopeo, convert).
    return mediaType === MediaType.OCI_MANIFEST || mediaType === MediaType.OCI_INDEX;
  }

  async reuseBlob(descriptor: Descriptor): Promise<BlobReuse | undefined> {
    const st = await this.driver.stat(blobPath(descriptor.digest));
    return st !== undefined && st.size === descriptor.size ? { how: 'present' } : undefined;
  }

  localBlobFile(digest: Digest): string {
    return this.driver.location(blobPath(digest));
  }

  async putBlob(stream: Readable, info: PutBlobInfo): Promise<StoredBlob> {
    // A verified local file (a pull from a file: store or another layout): copied in the kernel, the copy checked.
    const file = info.verified && info.digest && info.size !== undefined ? localFileOf(stream) : undefined;
    if (file) {
      stream.destroy();
      await this.driver.importFile(file, blobPath(info.digest!), { digest: info.digest!, size: info.size!, what: `blob ${shortDigest(info.digest!)} for ${this.name}` }, info.signal);
      return { digest: info.digest!, size: info.size! };
    }
    const tmp = layoutPath({ kind: 'temporaryBlob', id: ownedId() });
    const writer = await this.driver.writer(tmp);
    // Verified upstream (it errors in place of its end): not hashed again, only kept after a clean end.
    const verified = info.verified && info.digest && info.size !== undefined ? { digest: info.digest, size: info.size } : undefined;
    const hash = verified ? undefined : new DigestStream();
    try {
      await pipeline([stream, ...(hash ? [hash] : []), writer.stream], ...(info.signal ? [{ signal: info.signal }] : []));
      await writer.commit();
    } catch (e) {
      await writer.cancel().catch(() => undefined);
      throw e;
    }
    const stored = verified ?? { digest: hash!.digest, size: hash!.size };
    try {
      if (info.digest && stored.digest !== info.digest) {
        throw new SmartError('DIGEST_MISMATCH', `blob for ${this.name}: content hashes to ${stored.digest}, not ${info.digest}`, { input: info.digest });
      }
      await this.driver.move(tmp, blobPath(stored.digest));
    } catch (e) {
      await this.driver.delete(tmp).catch(() => undefined);
      throw e;
    }
    return stored;
  }

  async putManifest(manifest: ParsedManifest): Promise<void> {
    await this.driver.putContent(blobPath(manifest.digest), manifest.bytes);
  }

  /** The digest tagged in index.json, if every blob it needs is in the layout (any may have been deleted). */
  async currentDigest(): Promise<Digest | undefined> {
    if (this.tag === undefined) return undefined;
    let entry: Descriptor | undefined;
    try {
      const index = await readIndex(this.driver, this.name);
      const found = index.manifests.filter((d) => d.annotations?.[REF_NAME] === this.tag);
      // Several images under the tag: not current (the commit leaves one entry of it).
      entry = new Set(found.map((d) => d.digest)).size === 1 ? found[0] : undefined;
    } catch (e) {
      if (isNoLayout(e)) return undefined;
      throw e;
    }
    if (!entry) return undefined;
    return (await this.holds(entry)) ? entry.digest : undefined;
  }

  /** Whether the layout holds the manifest `top` names and every blob it needs. */
  private holds(top: { digest: Digest; mediaType?: string }): Promise<boolean> {
    const manifest = async ({ digest: d, mediaType }: { digest: Digest; mediaType?: string }): Promise<ParsedManifest | undefined> => {
      try {
        return parseManifest(await this.driver.getContent(blobPath(d), MAX_MANIFEST_BYTES), mediaType, `${this.name} (${shortDigest(d)})`);
      } catch (e) {
        if (isSmartError(e) && (e.code === 'NOT_FOUND' || e.code === 'MANIFEST_INVALID' || e.code === 'UNSUPPORTED')) return undefined;
        throw e;
      }
    };
    const blob = async (d: Descriptor): Promise<boolean> => (await this.reuseBlob(d)) !== undefined;
    return holdsImage(top, manifest, blob);
  }

  /**
   * Adds the manifest to index.json under the tag (moving the tag off any other entry). Under the
   * layout's lock: two runs tagging into one layout at once would each write the index as they
   * read it, and the first tag would be lost.
   */
  async commit(top: ParsedManifest): Promise<void> {
    await this.exclusively(async () => {
      // A failing run into the same new layout takes the layout away (abort, under this lock too),
      // blobs this run stored or found there included: an image is tagged only when all there.
      if (!(await this.holds(top))) {
        throw new SmartError('NOT_FOUND', `${this.name}: blobs of ${shortDigest(top.digest)} were removed from the layout while it was written (by another run into the same new layout that failed, for one); nothing was tagged`, {
          input: this.name,
          hint: 'run the command again',
        });
      }
      if (!(await this.driver.stat(LAYOUT_FILE))) await this.driver.putContent(LAYOUT_FILE, LAYOUT_FILE_CONTENT);
      let index: ImageIndex;
      try {
        index = await readIndex(this.driver, this.name);
      } catch (e) {
        if (!isNoLayout(e)) throw e;
        index = { schemaVersion: 2, mediaType: MediaType.OCI_INDEX, manifests: [] };
      }
      const entry: Descriptor = { mediaType: top.mediaType, digest: top.digest, size: top.bytes.length };
      if (this.tag !== undefined) entry.annotations = { [REF_NAME]: this.tag };
      const kept = index.manifests.filter((d) =>
        this.tag !== undefined ? d.annotations?.[REF_NAME] !== this.tag : !(d.digest === top.digest && !d.annotations?.[REF_NAME]),
      );
      const next: ImageIndex = { schemaVersion: 2, mediaType: MediaType.OCI_INDEX, manifests: [...kept, entry] };
      if (index.annotations) next.annotations = index.annotations;
      await this.driver.putContent(INDEX_FILE, serializeManifest(next));
    });
  }

  async abort(): Promise<void> {
    // putBlob removes its own temporary file on failure. A layout this run began goes again, unless
    // another run has committed to it since, so that a failed copy leaves no half-made layout; in an
    // existing one, stored blobs stay unreferenced, as with skopeo.
    if (!this.fresh) return;
    await this.exclusively(async () => {
      if (await this.driver.stat(INDEX_FILE)) return;
      // What the layout is made of, not the temporary files beside: this run's own went with the
      // writes that failed (every one has stopped), any other is a run still writing into it. The
      // oci-layout file last: a run starting into the directory meanwhile finds a layout or
      // nothing, never a directory that holds something else (which it would refuse).
      await this.driver.delete(layoutPath({ kind: 'blobsRoot' }));
      await this.driver.delete(LAYOUT_FILE);
    });
    // A directory the run made for it goes too: a failed pull into a new path leaves no trace there.
    await this.unmakeDirectories?.();
  }

  /** Runs `fn` holding the layout's lock (on index.json, which it guards). */
  private exclusively<T>(fn: () => Promise<T>): Promise<T> {
    return this.driver.exclusive(INDEX_FILE, fn);
  }

  async close(): Promise<void> {}
}
