/**
 * `smart store check`: a read-only consistency check of a registry's storage (`file:ROOT`,
 * `s3://BUCKET[/ROOT]`) or of an OCI layout (`oci:DIR`). Every object is listed once, every blob
 * rehashed (unless `quick`), every link read; nothing is written. What makes a reader fail or a
 * name lie is a problem: a blob whose bytes are not its name, a link that is malformed or points at
 * nothing, a tag or manifest whose image is not whole (manifest, config, every layer present with
 * its declared size and linked in the repository, recursively for indexes). What is only unused
 * (orphan blobs and links, untagged manifests, uploads and temporary files of runs) is information.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Writable } from 'node:stream';
import { SmartError, isSmartError, quoted } from '../errors.js';
import { decompressionBound } from '../limits.js';
import { isDigest, sha256Digest, type Digest } from '../oci/digest.js';
import { MAX_MANIFEST_BYTES, parseManifest, type Descriptor, type ParsedManifest } from '../oci/manifest.js';
import { MediaType, isForeignLayer } from '../oci/mediatypes.js';
import type { StorageDriver, StorageEntry } from '../storage/driver.js';
import { NotRegularFile } from '../storage/regular-file.js';
import { TaskGroup } from '../pipeline/concurrency.js';
import { parseImageName } from '../transports/all.js';
import { pathFor } from '../transports/distribution/layout.js';

export type StoreProblemKind =
  /** A blob's bytes do not hash to the digest it is stored under. */
  | 'blob-mismatch'
  /** A file where only blobs go, at a path that is no content address. */
  | 'blob-misplaced'
  /** An image names a blob (manifest, config, layer) that the store does not hold. */
  | 'blob-missing'
  /** A blob's size differs from the size an image declares for it. */
  | 'blob-size'
  /** A link file that is not exactly `sha256:<64 hex>` (no newline). */
  | 'link-malformed'
  /** A link stored under one digest that names another. */
  | 'link-mismatch'
  /**
   * A link to a blob that is not there: a tag's, a manifest revision's, or a `_layers` link that a
   * manifest of its repository uses (an unused one is what the registry's garbage-collect leaves: information).
   */
  | 'link-dangling'
  /** An image's config, layer or child manifest not linked in its repository: the registry answers 404 for it. */
  | 'link-missing'
  /** A tag directory without its `current/link`: listed by the registry, served by nothing. */
  | 'tag-unset'
  /** A manifest or index that does not parse, or is too large to be one. */
  | 'manifest-invalid'
  /** An OCI layout whose `oci-layout` or `index.json` is unreadable. */
  | 'layout-invalid'
  /** A pipe, a device or a socket where a blob, a link or a layout's file is: nothing reads it as one (a reader refuses it). */
  | 'not-a-file';

export interface StoreProblem {
  kind: StoreProblemKind;
  /** Where: a local path or `s3://bucket/key`. */
  path: string;
  message: string;
  digest?: string;
  repository?: string;
  tag?: string;
}

export interface StoreCheckReport {
  store: string;
  format: 'distribution' | 'oci-layout';
  /** No problem found. */
  consistent: boolean;
  /** Blobs were not rehashed: only sizes (and the manifests read whole) were checked. */
  quick: boolean;
  blobs: { count: number; bytes: number; rehashed: number };
  repositories: number;
  tags: number;
  /** Manifests and indexes checked as whole images (tagged or not). */
  manifests: number;
  links: number;
  problems: StoreProblem[];
  /** Information, not errors: what nothing uses. */
  orphans: {
    /** Blobs no link and no image names. */
    blobs: { digest: string; size: number }[];
    /**
     * `_layers` links that no manifest of their repository uses; `dangling` when their blob is gone
     * too, as the registry's garbage-collect leaves them (the registry answers 404 for such a blob).
     */
    layerLinks: { repository: string; digest: string; dangling?: true }[];
    /** Manifests of a repository that no tag reaches (pullable by digest). */
    untaggedManifests: { repository: string; digest: string }[];
    /**
     * A tag's history (`tags/<tag>/index/`) naming manifests removed since: the registry's DELETE
     * and garbage-collect leave those links, and the registry never reads them to serve the tag.
     */
    tagHistory: { repository: string; tag: string; digest: string }[];
  };
  /** Uploads in `_uploads` (a registry's in flight or stale ones, or a killed run's). */
  uploads: { repository: string; id: string }[];
  /** Temporary files of writers (live, or killed: the next run of ours into the same place removes them). */
  temporaries: string[];
  /** Objects the layout has no place for, left as they are. */
  unrecognised: string[];
}

export interface StoreCheckOptions {
  /** Blobs hashed at once (default 4). */
  jobs?: number;
  /** Sizes only: no blob is rehashed (manifests are still read and hashed). */
  quick?: boolean;
  signal?: AbortSignal;
  s3Endpoint?: string;
  s3Region?: string;
  stallTimeoutMs?: number;
}

type Limiter = <T>(work: () => Promise<T>) => Promise<T>;

/** Runs work `jobs` at a time (4 when unset); each failure is its own task's (the check reports, it does not stop). */
function limiter(jobs: number | undefined): Limiter {
  const group = new TaskGroup({ jobs: Math.max(1, jobs ?? 4), failFast: false });
  return (work) => group.run(() => work());
}

const HEX_LENGTH: Record<string, number> = { sha256: 64, sha384: 96, sha512: 128 };
const LINK_RE = /^sha256:[0-9a-f]{64}$/;
/** A link file is 71 bytes; one far larger is not read whole. */
const MAX_LINK_BYTES = 4096;
/** Index nesting deeper than this is refused as manifest-invalid (content addressing rules out cycles). */
const MAX_DEPTH = 8;

/**
 * Checks the store or layout `name` (`file:ROOT`, `s3://BUCKET[/ROOT]`, `oci:DIR`) and returns what
 * it found. Throws for what keeps the check from running (a usage error, a store that is not
 * there, a storage error), never for an inconsistency: the report's `consistent` says that.
 */
export async function checkStore(name: string, options: StoreCheckOptions = {}): Promise<StoreCheckReport> {
  // No layer is decompressed here, but a bad bound is refused by every command that reads a store,
  // before any work: a CI job's variable found wrong by its push, not already accepted by its check.
  decompressionBound();
  const parsed = parseImageName(name);
  const whole = 'name the whole store, without #REPO or :TAG';
  if (parsed.transport === 'oci') {
    if (parsed.tag !== undefined) throw new SmartError('USAGE', `store check reads a whole layout: ${name} names one image`, { input: name, hint: whole });
    const dir = path.resolve(parsed.dir);
    await existingDirectory(dir, name);
    const { FsDriver } = await import('../storage/fs-driver.js');
    return new LayoutCheck(name, new FsDriver(dir, `oci:${parsed.dir}`), options).run();
  }
  if (parsed.transport === 'file') {
    if (parsed.ref) throw new SmartError('USAGE', `store check reads a whole store: ${name} names one image`, { input: name, hint: whole });
    const root = path.resolve(parsed.root);
    await existingDirectory(root, name);
    const { FsDriver } = await import('../storage/fs-driver.js');
    return new DistributionCheck(name, new FsDriver(root), options).run();
  }
  if (parsed.transport === 's3') {
    if (parsed.ref) throw new SmartError('USAGE', `store check reads a whole store: ${name} names one image`, { input: name, hint: whole });
    const { S3Driver } = await import('../storage/s3-driver.js');
    const driver = new S3Driver({
      bucket: parsed.bucket,
      rootDirectory: parsed.root,
      ...(options.s3Endpoint ? { endpoint: options.s3Endpoint } : {}),
      ...(options.s3Region ? { region: options.s3Region } : {}),
      ...(options.stallTimeoutMs ? { stallTimeoutMs: options.stallTimeoutMs } : {}),
    });
    try {
      return await new DistributionCheck(name, driver, options).run();
    } finally {
      driver.destroy();
    }
  }
  throw new SmartError('USAGE', `${name} is not a store: store check reads file:ROOT, s3://BUCKET[/ROOT] or oci:DIR`, { input: name });
}

async function existingDirectory(dir: string, name: string): Promise<void> {
  const st = await fs.stat(dir).catch(() => undefined);
  if (!st) throw new SmartError('NOT_FOUND', `${name}: no such directory ${dir}`, { input: name });
  if (!st.isDirectory()) throw new SmartError('NOT_AN_IMAGE', `${name}: ${dir} is not a directory`, { input: name });
}

/** Every object under `base`: the driver's one-pass walk, else a walk over `list` and `stat`. */
async function* walk(driver: StorageDriver, base: string): AsyncIterable<StorageEntry> {
  if (driver.walk) {
    yield* driver.walk(base);
    return;
  }
  const dirs = [base];
  for (let dir = dirs.pop(); dir !== undefined; dir = dirs.pop()) {
    for (const child of await driver.list(dir)) {
      const p = `${dir}/${child}`;
      const st = await driver.stat(p);
      if (st?.isDirectory) dirs.push(p);
      else if (st) yield { path: p, size: st.size, ...(st.special ? { special: st.special } : {}) };
    }
  }
}

interface Blob {
  /** Driver path of the bytes. */
  path: string;
  size: number;
  algorithm: string;
  /** Hashed already (a manifest read whole): not rehashed. */
  verified?: boolean;
  /** No file but this (a pipe, a device): reported as not-a-file, never read. */
  special?: string;
}

/** What both checks share: the blob inventory, rehashing, problems and the report. */
abstract class Check {
  protected readonly blobs = new Map<string, Blob>();
  protected readonly referenced = new Set<string>();
  protected readonly problems: StoreProblem[] = [];
  private readonly seenProblems = new Set<string>();
  protected readonly temporaries: string[] = [];
  protected readonly unrecognised: string[] = [];
  protected readonly limit: Limiter;
  protected manifestsChecked = 0;
  private rehashed = 0;

  constructor(
    protected readonly name: string,
    protected readonly driver: StorageDriver,
    protected readonly options: StoreCheckOptions,
  ) {
    this.limit = limiter(options.jobs);
  }

  protected problem(p: StoreProblem): void {
    const key = `${p.kind} ${p.path} ${p.repository ?? ''} ${p.tag ?? ''}`;
    if (this.seenProblems.has(key)) return;
    this.seenProblems.add(key);
    this.problems.push(p);
  }

  protected where(p: string): string {
    return this.driver.location(p);
  }

  /** `p` is `special` (a pipe, a device: StorageEntry), not the file it should be. */
  protected notAFile(p: string, special: string): void {
    this.problem({ kind: 'not-a-file', path: this.where(p), message: `${special}, not a regular file` });
  }

  /**
   * Records a read of `p` that found no file there (replaced since the walk), true then; false for
   * any other error. What the walk found already is reported once.
   */
  protected readNoFile(e: unknown, p: string): boolean {
    if (!(e instanceof NotRegularFile)) return false;
    this.notAFile(p, e.kind);
    return true;
  }

  protected abortable(): void {
    this.options.signal?.throwIfAborted();
  }

  /** Where the bytes of blob `digest` are, in the driver's paths. */
  protected abstract blobPath(digest: string): string;

  /** The blob `digest`: from the inventory, else looked up (a listing may miss what was written meanwhile). */
  protected async findBlob(digest: string): Promise<Blob | undefined> {
    const known = this.blobs.get(digest);
    if (known) return known;
    const p = this.blobPath(digest);
    const st = await this.driver.stat(p);
    if (!st || st.isDirectory) return undefined;
    const blob: Blob = { path: p, size: st.size, algorithm: digest.slice(0, digest.indexOf(':')), ...(st.special ? { special: st.special } : {}) };
    if (st.special) this.notAFile(p, st.special);
    this.blobs.set(digest, blob);
    return blob;
  }

  /**
   * The bytes of manifest `d` (a descriptor's or a link's digest), hashed, parsed: undefined, with
   * the problem recorded, when it is missing, too large, not its digest or not a manifest.
   */
  protected async readManifest(d: { digest: string; size?: number; mediaType?: string }, context: Pick<StoreProblem, 'repository' | 'tag'>): Promise<ParsedManifest | undefined> {
    const blob = await this.findBlob(d.digest);
    this.referenced.add(d.digest);
    const at = this.where(this.blobPath(d.digest));
    if (!blob) {
      this.problem({ kind: 'blob-missing', path: at, digest: d.digest, ...context, message: `manifest ${d.digest} is missing` });
      return undefined;
    }
    if (blob.special) return undefined; // not-a-file, reported
    if (d.size !== undefined && blob.size !== d.size) {
      this.problem({ kind: 'blob-size', path: at, digest: d.digest, ...context, message: `manifest ${d.digest} has ${blob.size} bytes, not the ${d.size} declared` });
      return undefined;
    }
    if (blob.size > MAX_MANIFEST_BYTES) {
      this.problem({ kind: 'manifest-invalid', path: at, digest: d.digest, ...context, message: `manifest ${d.digest} has ${blob.size} bytes, more than any manifest (${MAX_MANIFEST_BYTES})` });
      return undefined;
    }
    let bytes: Buffer;
    try {
      bytes = await this.driver.getContent(blob.path, MAX_MANIFEST_BYTES);
    } catch (e) {
      if (isSmartError(e) && e.code === 'LIMIT_EXCEEDED') {
        this.problem({ kind: 'manifest-invalid', path: at, digest: d.digest, ...context, message: `manifest ${d.digest}: ${e.message}` });
        return undefined;
      }
      if (this.readNoFile(e, blob.path)) return undefined;
      if (!(isSmartError(e) && e.code === 'NOT_FOUND')) throw e;
      this.problem({ kind: 'blob-missing', path: at, digest: d.digest, ...context, message: `manifest ${d.digest} is missing` });
      return undefined;
    }
    if (!blob.verified) {
      blob.verified = true;
      this.rehashed++;
      const actual = sha256Digest(bytes);
      if (actual !== d.digest) {
        this.problem({ kind: 'blob-mismatch', path: at, digest: d.digest, ...context, message: `blob ${d.digest} hashes to ${actual}` });
        return undefined;
      }
    }
    try {
      return parseManifest(bytes, d.mediaType, d.digest);
    } catch (e) {
      if (!isSmartError(e)) throw e;
      this.problem({ kind: 'manifest-invalid', path: at, digest: d.digest, ...context, message: e.message });
      return undefined;
    }
  }

  /** A config or layer an image needs: present, with its declared size. */
  protected async needBlob(d: Descriptor, what: string, context: Pick<StoreProblem, 'repository' | 'tag'>): Promise<boolean> {
    this.referenced.add(d.digest);
    const blob = await this.findBlob(d.digest);
    const at = this.where(this.blobPath(d.digest));
    if (!blob) {
      this.problem({ kind: 'blob-missing', path: at, digest: d.digest, ...context, message: `${what} ${d.digest} is missing` });
      return false;
    }
    if (blob.special) return false; // not-a-file, reported
    if (blob.size !== d.size) {
      this.problem({ kind: 'blob-size', path: at, digest: d.digest, ...context, message: `${what} ${d.digest} has ${blob.size} bytes, not the ${d.size} declared` });
      return false;
    }
    return true;
  }

  /** Rehashes every blob not yet verified, `jobs` at a time; in quick mode, none. */
  protected async rehashAll(): Promise<void> {
    if (this.options.quick) return;
    await Promise.all(
      [...this.blobs].map(([digest, blob]) =>
        this.limit(async () => {
          if (blob.verified || blob.special) return;
          this.abortable();
          blob.verified = true;
          const hash = createHash(blob.algorithm);
          let size = 0;
          try {
            await pipeline(
              await this.driver.reader(blob.path),
              new Writable({
                highWaterMark: 1 << 20,
                write(chunk: Buffer, _e, cb) {
                  hash.update(chunk);
                  size += chunk.length;
                  cb();
                },
              }),
              ...(this.options.signal ? [{ signal: this.options.signal }] : []),
            );
          } catch (e) {
            if (isSmartError(e) && e.code === 'NOT_FOUND') return; // removed meanwhile: nothing to verify
            if (this.readNoFile(e, blob.path)) return; // replaced meanwhile
            throw e;
          }
          this.rehashed++;
          const actual = `${blob.algorithm}:${hash.digest('hex')}`;
          if (actual !== digest) {
            this.problem({ kind: 'blob-mismatch', path: this.where(blob.path), digest, message: `blob ${digest} (${size} bytes) hashes to ${actual}` });
          }
        }),
      ),
    );
  }

  protected report(
    format: StoreCheckReport['format'],
    found: Pick<StoreCheckReport, 'repositories' | 'tags' | 'links' | 'uploads'> & Omit<StoreCheckReport['orphans'], 'blobs'>,
  ): StoreCheckReport {
    let bytes = 0;
    for (const b of this.blobs.values()) bytes += b.size;
    const orphanBlobs = [...this.blobs]
      .filter(([d]) => !this.referenced.has(d))
      .map(([digest, b]) => ({ digest, size: b.size }))
      .sort((a, b) => a.digest.localeCompare(b.digest));
    const order: StoreProblemKind[] = ['blob-mismatch', 'blob-missing', 'blob-size', 'link-malformed', 'link-mismatch', 'link-dangling', 'link-missing', 'tag-unset', 'manifest-invalid', 'layout-invalid', 'not-a-file', 'blob-misplaced'];
    return {
      store: this.name,
      format,
      consistent: this.problems.length === 0,
      quick: Boolean(this.options.quick),
      blobs: { count: this.blobs.size, bytes, rehashed: this.rehashed },
      repositories: found.repositories,
      tags: found.tags,
      manifests: this.manifestsChecked,
      links: found.links,
      problems: this.problems.sort((a, b) => order.indexOf(a.kind) - order.indexOf(b.kind) || a.path.localeCompare(b.path)),
      orphans: { blobs: orphanBlobs, layerLinks: found.layerLinks, untaggedManifests: found.untaggedManifests, tagHistory: found.tagHistory },
      uploads: found.uploads,
      temporaries: this.temporaries.sort(),
      unrecognised: this.unrecognised.sort(),
    };
  }
}

const V2 = '/docker/registry/v2';
const BLOB_DATA = /^\/docker\/registry\/v2\/blobs\/sha256\/([0-9a-f]{2})\/([0-9a-f]{64})\/data$/;
const REPO_PART = /^\/docker\/registry\/v2\/repositories\/(.+?)\/(_layers|_manifests|_uploads)\/(.+)$/;
/** Temporary files of our writers beside their targets (storage/fs-driver.ts): `data.tmp-…`, `link.tmp-…`, `index.json.tmp-…`. */
const TEMPORARY = /\/[^/]+\.tmp-[^/]+$/;

interface LinkFile {
  path: string;
  repository: string;
  kind: 'layer' | 'revision' | 'tag-current' | 'tag-index';
  /** The digest the path names (none for `current/link`). */
  named?: string;
  tag?: string;
  /** What the file holds, once read and well formed. */
  target?: Digest;
  /** Its target blob is not there. */
  dangling?: boolean;
}

/** A Distribution registry's storage, through its driver: the layout of transports/distribution/layout.ts. */
class DistributionCheck extends Check {
  private readonly links: LinkFile[] = [];
  private readonly repositories = new Set<string>();
  private readonly tagDirs = new Map<string, Set<string>>();
  private readonly uploads = new Map<string, { repository: string; id: string }>();
  /** Per repository: what its manifests use (config and layers), and which manifests tags reach. */
  private readonly used = new Map<string, Set<string>>();
  private readonly reached = new Map<string, Set<string>>();
  private readonly checked = new Map<string, Promise<boolean>>();

  protected blobPath(digest: string): string {
    return isDigest(digest) ? pathFor({ kind: 'blobData', digest }) : `${V2}/blobs/${digest.replace(':', '/')}/data`;
  }

  /** The link of that kind, read and well formed (a malformed link links nothing: the registry fails on it). */
  private linked(kind: LinkFile['kind'], repository: string, key: string): LinkFile | undefined {
    const link = this.linkIndex.get(`${kind} ${repository} ${key}`);
    return link?.target ? link : undefined;
  }

  private readonly linkIndex = new Map<string, LinkFile>();

  private classify(entry: StorageEntry): void {
    const p = entry.path;
    const m = REPO_PART.exec(p);
    if (m?.[2] === '_uploads') {
      const id = m[3]!.split('/')[0]!;
      this.repositories.add(m[1]!);
      this.uploads.set(`${m[1]}/${id}`, { repository: m[1]!, id });
      return;
    }
    if (TEMPORARY.test(p)) {
      this.temporaries.push(this.where(p));
      return;
    }
    const blob = BLOB_DATA.exec(p);
    if (blob) {
      if (blob[2]!.startsWith(blob[1]!)) this.blobs.set(`sha256:${blob[2]}`, { path: p, size: entry.size, algorithm: 'sha256', ...(entry.special ? { special: entry.special } : {}) });
      else this.problem({ kind: 'blob-misplaced', path: this.where(p), message: `blob data under ${blob[1]}/, not under the first two digits of its name` });
      return;
    }
    if (p.startsWith(`${V2}/blobs/`)) {
      if (p.endsWith('/data')) this.problem({ kind: 'blob-misplaced', path: this.where(p), message: 'blob data at a path that is no sha256 content address' });
      else this.unrecognised.push(this.where(p));
      return;
    }
    if (!m) {
      this.unrecognised.push(this.where(p));
      return;
    }
    const [, repository, section, rest] = m as unknown as [string, string, string, string];
    this.repositories.add(repository);
    const parts = rest.split('/');
    const add = (link: LinkFile) => {
      this.links.push(link);
      this.linkIndex.set(`${link.kind} ${repository} ${link.named ?? link.tag}`, link);
    };
    const hex = (s: string | undefined) => s !== undefined && /^[0-9a-f]{64}$/.test(s);
    if (section === '_layers' && parts.length === 3 && parts[0] === 'sha256' && hex(parts[1]) && parts[2] === 'link') {
      add({ path: p, repository, kind: 'layer', named: `sha256:${parts[1]}` });
    } else if (section === '_manifests' && parts.length === 4 && parts[0] === 'revisions' && parts[1] === 'sha256' && hex(parts[2]) && parts[3] === 'link') {
      add({ path: p, repository, kind: 'revision', named: `sha256:${parts[2]}` });
    } else if (section === '_manifests' && parts[0] === 'tags' && parts.length >= 3) {
      const tag = parts[1]!;
      if (!this.tagDirs.has(repository)) this.tagDirs.set(repository, new Set());
      this.tagDirs.get(repository)!.add(tag);
      if (parts.length === 4 && parts[2] === 'current' && parts[3] === 'link') add({ path: p, repository, kind: 'tag-current', tag });
      else if (parts.length === 6 && parts[2] === 'index' && parts[3] === 'sha256' && hex(parts[4]) && parts[5] === 'link') {
        this.links.push({ path: p, repository, kind: 'tag-index', named: `sha256:${parts[4]}`, tag });
      } else this.unrecognised.push(this.where(p));
    } else this.unrecognised.push(this.where(p));
  }

  /** Reads a link: well formed, naming what its path names, and pointing at a present blob. */
  private async readLink(link: LinkFile): Promise<void> {
    const at = this.where(link.path);
    const context = { repository: link.repository, ...(link.tag !== undefined ? { tag: link.tag } : {}) };
    let raw: Buffer;
    try {
      raw = await this.driver.getContent(link.path, MAX_LINK_BYTES);
    } catch (e) {
      if (isSmartError(e) && e.code === 'NOT_FOUND') return; // removed meanwhile
      if (this.readNoFile(e, link.path)) return;
      if (!(isSmartError(e) && e.code === 'LIMIT_EXCEEDED')) throw e;
      this.problem({ kind: 'link-malformed', path: at, ...context, message: `link file of more than ${MAX_LINK_BYTES} bytes, not sha256:<64 hex digits>` });
      return;
    }
    const text = raw.toString('latin1');
    if (!LINK_RE.test(text)) {
      this.problem({ kind: 'link-malformed', path: at, ...context, message: `link holds ${quoted(text, 80)}, not exactly sha256:<64 hex digits> without a newline` });
      return;
    }
    if (link.named !== undefined && text !== link.named) {
      this.problem({ kind: 'link-mismatch', path: at, ...context, message: `link for ${link.named} names ${text}` });
      return;
    }
    link.target = text as Digest;
    if (await this.findBlob(text)) return;
    link.dangling = true;
    // A `_layers` link is a problem only if an image needs it: decided once the images are checked.
    // A tag's history naming a manifest deleted since is what the registry itself leaves.
    if (link.kind !== 'layer' && link.kind !== 'tag-index') this.problem({ kind: 'link-dangling', path: at, digest: text, ...context, message: `link to ${text}, a blob that is not there` });
  }

  /**
   * Whether manifest `digest` of `repository` is a whole image: its blob a manifest, linked as a
   * revision (`requireRevision`), its config and layers present with their sizes and linked in the
   * repository, an index's children likewise. Each (repository, manifest) is checked once.
   */
  private checkImage(repository: string, d: { digest: string; size?: number; mediaType?: string }, context: Pick<StoreProblem, 'repository' | 'tag'>, depth = 0): Promise<boolean> {
    const key = `${repository}@${d.digest}`;
    let done = this.checked.get(key);
    if (!done) {
      done = this.checkImageOnce(repository, d, context, depth);
      this.checked.set(key, done);
    }
    return done;
  }

  private async checkImageOnce(repository: string, d: { digest: string; size?: number; mediaType?: string }, context: Pick<StoreProblem, 'repository' | 'tag'>, depth: number): Promise<boolean> {
    this.abortable();
    this.manifestsChecked++;
    const m = await this.readManifest(d, context);
    if (!m) return false;
    if (depth > MAX_DEPTH) {
      this.problem({ kind: 'manifest-invalid', path: this.where(this.blobPath(d.digest)), digest: d.digest, ...context, message: `indexes nested more than ${MAX_DEPTH} deep` });
      return false;
    }
    const uses = this.used.get(repository) ?? new Set<string>();
    this.used.set(repository, uses);
    const linkedHere = (digest: Digest, kind: 'layer' | 'revision', what: string): boolean => {
      if (this.linked(kind, repository, digest)) return true;
      const spec = kind === 'layer' ? pathFor({ kind: 'layerLink', repo: repository, digest }) : pathFor({ kind: 'manifestRevisionLink', repo: repository, digest });
      this.problem({ kind: 'link-missing', path: this.where(spec), digest, ...context, message: `${what} ${digest} is not linked in ${repository}` });
      return false;
    };
    if (m.kind === 'index') {
      const results = await Promise.all(
        m.index.manifests.map(async (child) => {
          this.reachedIn(repository).add(child.digest);
          const linked = linkedHere(child.digest, 'revision', 'manifest');
          return (await this.checkImage(repository, child, context, depth + 1)) && linked;
        }),
      );
      return results.every(Boolean);
    }
    const needed = [
      { d: m.manifest.config, what: 'config' },
      ...m.manifest.layers.filter((l) => !isForeignLayer(l.mediaType)).map((l) => ({ d: l, what: 'layer' })),
    ];
    const results = await Promise.all(
      needed.map(async ({ d: blob, what }) => {
        uses.add(blob.digest);
        const linked = linkedHere(blob.digest, 'layer', what);
        return (await this.needBlob(blob, what, context)) && linked;
      }),
    );
    return results.every(Boolean);
  }

  private reachedIn(repository: string): Set<string> {
    let s = this.reached.get(repository);
    if (!s) this.reached.set(repository, (s = new Set()));
    return s;
  }

  async run(): Promise<StoreCheckReport> {
    let any = false;
    for await (const entry of walk(this.driver, V2)) {
      any = true;
      if (entry.special) this.notAFile(entry.path, entry.special);
      this.classify(entry);
    }
    if (!any) {
      throw new SmartError('NOT_FOUND', `${this.name}: no registry storage there (nothing under docker/registry/v2)`, {
        input: this.name,
        hint: 'name the registry\'s rootdirectory: the directory or S3 prefix that holds docker/',
      });
    }
    this.abortable();
    await Promise.all(this.links.map((l) => this.limit(() => this.readLink(l))));
    this.abortable();

    // Every tag names a whole image; every tag directory has its current link.
    let tags = 0;
    const tagged: (() => Promise<boolean>)[] = [];
    for (const [repository, names] of this.tagDirs) {
      for (const tag of names) {
        tags++;
        const current = this.linkIndex.get(`tag-current ${repository} ${tag}`);
        if (!current) {
          const at = this.where(pathFor({ kind: 'tagCurrentLink', repo: repository, tag }));
          this.problem({ kind: 'tag-unset', path: at, repository, tag, message: `tag ${repository}:${tag} has no current link (a push stopped before it): listed, but no image` });
          continue;
        }
        if (!current.target) continue; // malformed: reported
        this.reachedIn(repository).add(current.target);
        if (!this.linked('revision', repository, current.target)) {
          const at = this.where(pathFor({ kind: 'manifestRevisionLink', repo: repository, digest: current.target }));
          this.problem({ kind: 'link-missing', path: at, repository, tag, digest: current.target, message: `tag ${repository}:${tag} names manifest ${current.target}, which is not linked in ${repository}` });
        }
        tagged.push(() => this.checkImage(repository, { digest: current.target! }, { repository, tag }));
      }
    }
    // Top-level checks `jobs` at a time; an index's children within its own.
    const images = limiter(this.options.jobs);
    await Promise.all(tagged.map((check) => images(check)));
    // Every manifest a repository links is whole too: it can be pulled by digest.
    const revisions = this.links.filter((l) => l.kind === 'revision' && l.target);
    await Promise.all(revisions.map((l) => images(() => this.checkImage(l.repository, { digest: l.target! }, { repository: l.repository }))));
    for (const l of this.links) if (l.target) this.referenced.add(l.target);
    await this.rehashAll();

    const layerLinks: StoreCheckReport['orphans']['layerLinks'] = [];
    for (const l of this.links) {
      if (l.kind !== 'layer' || !l.target) continue;
      if (this.used.get(l.repository)?.has(l.target)) {
        if (l.dangling) this.problem({ kind: 'link-dangling', path: this.where(l.path), digest: l.target, repository: l.repository, message: `link to ${l.target}, a blob that is not there` });
      } else layerLinks.push({ repository: l.repository, digest: l.target, ...(l.dangling ? { dangling: true as const } : {}) });
    }
    const untaggedManifests = revisions.filter((l) => !this.reached.get(l.repository)?.has(l.target!)).map((l) => ({ repository: l.repository, digest: l.target! }));
    const tagHistory = this.links.filter((l) => l.kind === 'tag-index' && l.dangling).map((l) => ({ repository: l.repository, tag: l.tag!, digest: l.target! }));
    const byName = <T extends { repository: string; digest?: string; id?: string }>(list: T[]) =>
      list.sort((a, b) => a.repository.localeCompare(b.repository) || (a.digest ?? a.id ?? '').localeCompare(b.digest ?? b.id ?? ''));
    return this.report('distribution', {
      repositories: this.repositories.size,
      tags,
      links: this.links.length,
      layerLinks: byName(layerLinks),
      untaggedManifests: byName(untaggedManifests),
      tagHistory: byName(tagHistory),
      uploads: byName([...this.uploads.values()]),
    });
  }
}

const LAYOUT_BLOB = /^\/blobs\/([a-z0-9]+)\/([0-9a-f]+)$/;

/** An OCI image layout: `oci-layout`, `index.json`, `blobs/<alg>/<hex>`. */
class LayoutCheck extends Check {
  private readonly checked = new Map<string, Promise<void>>();

  protected blobPath(digest: string): string {
    return `/blobs/${digest.replace(':', '/')}`;
  }

  private checkImage(d: Descriptor, context: Pick<StoreProblem, 'tag'>, depth = 0): Promise<void> {
    let done = this.checked.get(d.digest);
    if (!done) {
      done = this.checkImageOnce(d, context, depth);
      this.checked.set(d.digest, done);
    }
    return done;
  }

  private async checkImageOnce(d: Descriptor, context: Pick<StoreProblem, 'tag'>, depth: number): Promise<void> {
    this.abortable();
    this.manifestsChecked++;
    const m = await this.readManifest(d, context);
    if (!m) return;
    if (depth > MAX_DEPTH) {
      this.problem({ kind: 'manifest-invalid', path: this.where(this.blobPath(d.digest)), digest: d.digest, ...context, message: `indexes nested more than ${MAX_DEPTH} deep` });
      return;
    }
    if (m.kind === 'index') {
      await Promise.all(m.index.manifests.map((child) => this.checkImage(child, context, depth + 1)));
      return;
    }
    const needed = [{ d: m.manifest.config, what: 'config' }, ...m.manifest.layers.filter((l) => !isForeignLayer(l.mediaType)).map((l) => ({ d: l, what: 'layer' }))];
    await Promise.all(needed.map(({ d: blob, what }) => this.needBlob(blob, what, context)));
  }

  async run(): Promise<StoreCheckReport> {
    for await (const entry of walk(this.driver, '/')) {
      if (entry.special) this.notAFile(entry.path, entry.special);
      const blob = LAYOUT_BLOB.exec(entry.path);
      if (blob && HEX_LENGTH[blob[1]!] === blob[2]!.length) {
        this.blobs.set(`${blob[1]}:${blob[2]}`, { path: entry.path, size: entry.size, algorithm: blob[1]!, ...(entry.special ? { special: entry.special } : {}) });
      }
      else if (/^\/\.smart-tmp-[^/]+$/.test(entry.path) || TEMPORARY.test(entry.path)) this.temporaries.push(this.where(entry.path));
      else if (entry.path !== '/oci-layout' && entry.path !== '/index.json') this.unrecognised.push(this.where(entry.path));
    }
    // The file's bytes; undefined when it is missing; null when it is no file (not-a-file, reported).
    const read = async (p: string): Promise<Buffer | undefined | null> => {
      try {
        return await this.driver.getContent(p, MAX_MANIFEST_BYTES);
      } catch (e) {
        if (isSmartError(e) && e.code === 'NOT_FOUND') return undefined;
        if (this.readNoFile(e, p)) return null;
        if (!(isSmartError(e) && e.code === 'LIMIT_EXCEEDED')) throw e;
        this.problem({ kind: 'layout-invalid', path: this.where(p), message: e.message });
        return Buffer.alloc(0);
      }
    };
    const [marker, indexBytes] = await Promise.all([read('/oci-layout'), read('/index.json')]);
    if (marker === undefined && indexBytes === undefined) throw new SmartError('NOT_AN_IMAGE', `${this.name}: not an OCI image layout (no oci-layout or index.json)`, { input: this.name });
    let version: unknown;
    try {
      version = marker ? (JSON.parse(marker.toString('utf8')) as { imageLayoutVersion?: unknown }).imageLayoutVersion : undefined;
    } catch {
      version = undefined;
    }
    if (typeof version !== 'string' && marker !== null) {
      this.problem({ kind: 'layout-invalid', path: this.where('/oci-layout'), message: marker ? 'oci-layout is not {"imageLayoutVersion": "…"}' : 'oci-layout is missing' });
    }
    let tags = 0;
    if (indexBytes === undefined) this.problem({ kind: 'layout-invalid', path: this.where('/index.json'), message: 'index.json is missing' });
    else if (indexBytes !== null) {
      let index: ParsedManifest | undefined;
      try {
        index = parseManifest(indexBytes, MediaType.OCI_INDEX, 'index.json');
      } catch (e) {
        if (!isSmartError(e)) throw e;
        this.problem({ kind: 'layout-invalid', path: this.where('/index.json'), message: e.message });
      }
      if (index?.kind === 'index') {
        const tagged = new Map<string, Set<string>>();
        for (const entry of index.index.manifests) {
          const tag = entry.annotations?.['org.opencontainers.image.ref.name'];
          if (tag !== undefined) {
            tags++;
            tagged.set(tag, (tagged.get(tag) ?? new Set()).add(entry.digest));
          }
          await this.checkImage(entry, tag !== undefined ? { tag } : {});
        }
        // A tag on several images: a pull of it is refused, as no one can say which was meant.
        for (const [tag, digests] of tagged) {
          if (digests.size > 1) this.problem({ kind: 'layout-invalid', path: this.where('/index.json'), message: `tag "${tag}" names ${digests.size} different images` });
        }
      }
    }
    await this.rehashAll();
    return this.report('oci-layout', { repositories: 0, tags, links: 0, layerLinks: [], untaggedManifests: [], tagHistory: [], uploads: [] });
  }
}
