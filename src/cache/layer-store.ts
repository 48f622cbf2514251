/**
 * The local layer store: every verified layer kept once per machine, unpacked and ready to be laid
 * into a root filesystem, so a layer is never fetched twice and a warm pull only copies (or
 * clones) files. Layout under DIR:
 *
 *   layers/<diff id hex>/entries    the layer's tar headers, one JSON object a line, in tar order
 *   layers/<diff id hex>/files/<n>  the content of the n-th regular file, with its mode and times
 *   layers/<diff id hex>/linked     present once a tree shares the layer's files (--link): they
 *                                   are checked before each use (a tree may have been written to)
 *   images/<manifest digest hex>    {name, diffIds, blobs, usedAt}: what pulled images use (for gc)
 *   images/chain-<chain id hex>     {name, diffIds, usedAt}: a chain made present for the builds to
 *                                   come (cache warm, cache pull): kept by gc as an image's layers
 *   images/blobs-<manifest hex>     {name, blobs, usedAt}: the kept blobs a pull into a layout or an
 *                                   archive used
 *   locks/<diff id hex>             held (O_EXCL, its owner's tag inside) while one process fetches a layer
 *   tmp/<owner tag>-<random>/       a layer being unpacked; renamed into layers/ once verified
 *
 * layers/ and tmp/ are 0700: their files carry the image's modes, setuid-root programs and file
 * capabilities included, and another user who could reach one could run it (the store may lie in
 * a shared directory: `--layer-store`, `--cache-dir`, an XDG_CACHE_HOME such as /var/cache). A
 * store an earlier version made 0755 is narrowed when this user, its owner, first uses it;
 * another user's pulls cannot read it and fetch its layers instead (`unreadable`).
 *
 * Paths from the tar are never used as paths here (files are numbered), so unpacking a hostile
 * layer into the store cannot write anywhere but its own directory; the names are checked again
 * when the layer is laid into a root filesystem.
 *
 * A layer enters the store through a `LayerFill` (`claim`): from its tar (`ensure`), or kept while
 * a pull lays it straight into a root filesystem, each file then cloned, hardlinked or copied from
 * the file just written into the tree (`keepFile`) rather than unpacked a second time.
 */
import { randomUUID } from 'node:crypto';
import { chmodSync, chownSync, closeSync, constants as fsConstants, copyFileSync, existsSync, linkSync, openSync, utimesSync, writeFileSync, writeSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import type { Header } from 'tar-stream';
import { SmartError, cannotTakeMore, isCancellation, isErrno, isSmartError, refusalHint } from '../errors.js';
import { idMap } from '../id-map.js';
import { digestHex, type Digest } from '../oci/digest.js';
import { ownedId } from '../storage/aside.js';
import { tryLockFile } from '../storage/file-lock.js';
import { mkdirPrivate, mkdirp, narrowToOwner } from '../storage/made-directories.js';
import { StoredLayerDamage, refusedToRead } from './stored-layer-damage.js';
import { currentOwner, isStale, parseOwnerTag, sweepLocal, type Cleaned, type Owner } from '../storage/leftovers.js';
import { entryXattrs, setXattrs } from '../storage/xattrs.js';
import { fsPath } from '../tar/byte-names.js';
import { type EntryMeta, entryMeta, tarParseError } from '../tar/errors.js';
import { copySparseFileSync, hasSparseRecords, sparseSegments, writeFileChunks } from '../tar/sparse.js';
import { TarStreamReader } from '../tar/stream-reader.js';
import { chainIds } from '../trie/layer-trie.js';

/**
 * Whether an entry's name or link target holds U+FFFD. Names that are not UTF-8 are kept with
 * their bytes (src/tar/byte-names.ts); versions before that kept U+FFFD in their place, so a
 * layer whose index holds U+FFFD without the mark new indexes give it is fetched again.
 */
function holdsFffd(h: Pick<Header, 'name' | 'linkname'>): boolean {
  return h.name.includes('\uFFFD') || (h.linkname?.includes('\uFFFD') ?? false);
}

/** A layer entry kept in the store: its tar header, and where a regular file's content is. */
export interface StoredEntry {
  header: Header;
  file?: string;
}

/** The index is read this many bytes at a time (LayerStore.indexChunks). */
const INDEX_READ_BYTES = 256 * 1024;
const NEWLINE = Buffer.from('\n');

/** Whole lines of a layer's index (LayerStore.indexChunks), each ending in a newline, and where the layer's files are. */
export class StoredIndexChunk {
  private filesBytes?: Buffer;

  constructor(
    readonly text: Buffer,
    /** The layer's files directory, with its separator. */
    readonly files: string,
    private readonly damaged: (e: unknown) => StoredLayerDamage,
  ) {}

  /** The entry of a line (without its newline). */
  entryOf(line: string): StoredEntry {
    return storedEntry(line, this.files, this.damaged);
  }

  /** The files directory as the addon takes it. */
  get filesPath(): Buffer {
    return (this.filesBytes ??= Buffer.from(this.files));
  }
}

/**
 * One line of a layer's index (LayerFill.add's JSON) as the entry it keeps; `files` is the layer's
 * files directory with its separator. The header is the object JSON.parse made: its last keys
 * (`fffdInName`, `file`) are deleted, which keeps the shape V8 gave it, where a copy without them
 * cost a second object per entry.
 */
function storedEntry(line: string, files: string, damaged: (e: unknown) => StoredLayerDamage): StoredEntry {
  let r: Header & { mtime: number | Date; file?: string; fffdInName?: boolean };
  try {
    r = JSON.parse(line) as typeof r;
  } catch (e) {
    throw damaged(e);
  }
  if (typeof r !== 'object' || r === null || typeof r.name !== 'string') throw damaged(new Error('a line that is not an entry'));
  const { file, fffdInName } = r;
  delete r.file;
  delete r.fffdInName;
  if (!fffdInName && holdsFffd(r)) {
    throw new StoredLayerDamage(`its index holds a name with U+FFFD unmarked: kept by an older smart, which stored bytes that are not UTF-8 as U+FFFD`);
  }
  if (hasSparseRecords(r) && sparseSegments(r) === undefined) {
    throw new StoredLayerDamage(`its index holds a sparse file kept by an older smart, which did not expand sparse files`);
  }
  r.mtime = new Date(r.mtime);
  return file ? { header: r, file: files + file } : { header: r };
}

export interface GcResult {
  removedImages: number;
  removedLayers: number;
  /** Compressed blobs kept beside the layers (cache/blob-cache.ts). */
  removedBlobs: number;
  freedBytes: number;
}

const LOCK_POLL_MS = 100;
/** The file in a layer's directory that says a tree shares its files (LayerStore.markLinked). */
const LINKED_MARK = 'linked';
/** Files up to this size are gathered and written in one synchronous call. */
const SMALL_FILE = 512 * 1024;
/** Entry lines are written out in batches of about this many characters: none is held longer. */
const ENTRIES_BATCH = 256 * 1024;

/**
 * The owner of a lock's content or of a tmp/ entry's name: an owner tag, or the bare PID that
 * versions before owner tags wrote (a process of this machine and boot, its start time unknown).
 */
function ownerIn(text: string, rest: RegExp): Owner | undefined {
  const parsed = parseOwnerTag(text);
  if (parsed) return rest.test(parsed.rest) ? parsed.owner : undefined;
  const pid = /^(\d{1,10})(?=-|$)/.exec(text);
  return pid && rest.test(text.slice(pid[0].length)) ? { ...currentOwner(), pid: Number(pid[1]), start: 0 } : undefined;
}

async function exists(p: string): Promise<boolean> {
  return fs.stat(p).then(
    () => true,
    () => false,
  );
}

/** What an image record holds (LayerStore.writeRecord). */
interface ImageRecord {
  diffIds?: string[];
  blobs?: string[];
  usedAt?: string;
}

async function readRecord(file: string): Promise<ImageRecord | undefined> {
  try {
    return JSON.parse(await fs.readFile(file, 'utf8')) as ImageRecord;
  } catch {
    return undefined;
  }
}

/** More than a kernel tick (1-10 ms) of file times: a directory changed this shortly before it was read may change again without its time moving. */
const COARSE_TIME_NS = 50_000_000n;

/** Removes a file of no known owner once it is older than a leftover may be (isStale). */
async function removeIfStale(file: string): Promise<void> {
  const st = await fs.lstat(file).catch(() => undefined);
  if (st && isStale(undefined, Date.now() - st.mtimeMs)) await fs.rm(file, { force: true });
}

async function dirSize(p: string): Promise<number> {
  let n = 0;
  const walk = async (d: string): Promise<void> => {
    for (const e of await fs.readdir(d, { withFileTypes: true }).catch(() => [])) {
      const full = path.join(d, e.name);
      if (e.isDirectory()) await walk(full);
      else n += (await fs.lstat(full).catch(() => ({ size: 0 }))).size;
    }
  };
  await walk(p);
  return n;
}

export class LayerStore {
  /** Whether layers/ and tmp/ were narrowed to their owner, as made by an earlier version (see the file's comment). */
  private narrowed = false;

  constructor(readonly dir: string) {}

  private get layersDir(): string {
    return path.join(this.dir, 'layers');
  }

  private get tmpDir(): string {
    return path.join(this.dir, 'tmp');
  }

  private layerDir(diffId: Digest): string {
    return path.join(this.layersDir, digestHex(diffId));
  }

  /** Once per store: layers/ and tmp/ that an earlier version made 0755 are made 0700 (where this user owns them). */
  private narrowOnce(): void {
    if (this.narrowed) return;
    this.narrowed = true;
    narrowToOwner(this.layersDir);
    narrowToOwner(this.tmpDir);
  }

  async has(diffId: Digest): Promise<boolean> {
    this.narrowOnce();
    return exists(path.join(this.layerDir(diffId), 'entries'));
  }

  /**
   * Why this process cannot look into the store's layers (another user's store: layers/ is 0700),
   * or undefined: a pull then fetches every layer, and says so once.
   */
  async unreadable(): Promise<NodeJS.ErrnoException | undefined> {
    try {
      await fs.access(this.layersDir, fsConstants.X_OK);
      return undefined;
    } catch (e) {
      return isErrno(e, 'EACCES') || isErrno(e, 'EPERM') ? (e as NodeJS.ErrnoException) : undefined;
    }
  }

  /**
   * Marks a layer as shared with a tree (its files hardlinked into it), before the links are
   * made: from then on its files are checked before each use (linkedOut). Best effort: a store
   * this process cannot write is not linked from (the writer's probe refuses it, and copies), and
   * the pull that links checks the files it links whether or not the mark was written.
   */
  markLinked(diffId: Digest): void {
    try {
      writeFileSync(path.join(this.layerDir(diffId), LINKED_MARK), '', { flag: 'a' });
    } catch {
      // Left unmarked: the pull still checks the files it links now (the writer asks it to).
    }
  }

  /** Whether a tree has shared this layer's files (markLinked): they may have been written to since. */
  linkedOut(diffId: Digest): boolean {
    return existsSync(path.join(this.layerDir(diffId), LINKED_MARK));
  }

  /**
   * Makes the layer present: already there → 'present'; fetched and unpacked by us → 'fetched';
   * fetched by another process while we waited for its lock → 'waited'. `fetch` must return the
   * uncompressed tar, verified against `diffId` as it streams (an error in place of its end).
   * `what` names the layer in errors (`layer sha256:… of IMAGE`).
   */
  async ensure(diffId: Digest, fetch: () => Promise<Readable>, signal?: AbortSignal, what = `layer ${diffId}`): Promise<'present' | 'fetched' | 'waited'> {
    const claimed = await this.claim(diffId, { signal, what });
    if (typeof claimed === 'string') return claimed;
    try {
      await this.ingest(claimed, await fetch(), what);
      await claimed.commit();
    } finally {
      await claimed.abort();
    }
    return 'fetched';
  }

  /**
   * Takes the layer's lock to fill it in: 'present' when it is already there; 'waited' when
   * another process held the lock and stored it meanwhile (we wait as long as that process lives);
   * else a LayerFill holding the lock, which the caller must `commit` or `abort` (both release it).
   * `keep` says how a fill from a tree keeps files (see LayerFill.keepFile; default 'copy').
   */
  async claim(diffId: Digest, options: { signal?: AbortSignal | undefined; what?: string; keep?: KeepHow; bestEffort?: boolean } = {}): Promise<'present' | 'waited' | LayerFill> {
    if (await this.has(diffId)) return 'present';
    let waited = false;
    for (;;) {
      options.signal?.throwIfAborted();
      if (await this.tryLock(diffId)) {
        let fill: LayerFill | undefined;
        const tmp = path.join(this.tmpDir, ownedId());
        try {
          if (await this.has(diffId)) return waited ? 'waited' : 'present';
          await mkdirPrivate(this.tmpDir);
          await mkdirp(path.join(tmp, 'files'));
          fill = new LayerFill(this, diffId, tmp, options.keep ?? 'copy', options.what ?? `layer ${diffId}`, options.bestEffort ?? false);
          return fill;
        } catch (e) {
          await fs.rm(tmp, { recursive: true, force: true });
          throw this.storageError(e, options.what ?? `layer ${diffId}`);
        } finally {
          if (!fill) await fs.rm(this.lockPath(diffId), { force: true });
        }
      }
      waited = true;
      await new Promise((r) => setTimeout(r, LOCK_POLL_MS));
      if (await this.has(diffId)) return 'waited';
    }
  }

  /** A failure to write the store, in our words (a SmartError or a cancellation passes through). */
  storageError(e: unknown, what: string): unknown {
    if (isSmartError(e) || isCancellation(e) || !isErrno(e) || !(e as NodeJS.ErrnoException).syscall) return e;
    return new SmartError('STORAGE', `${what}: cannot write the layer store ${this.dir}: ${(e as Error).message}`, { input: this.dir, cause: e, ...refusalHint(e) });
  }

  /** @internal the lock file of a layer (LayerFill releases it). */
  lockPath(diffId: Digest): string {
    return path.join(this.dir, 'locks', digestHex(diffId));
  }

  /** Takes the layer's lock, or takes over one whose holder died (kill -9 leaves them). */
  private async tryLock(diffId: Digest): Promise<boolean> {
    const lock = this.lockPath(diffId);
    await mkdirp(path.dirname(lock));
    return tryLockFile(lock, (text) => ownerIn(text, /^$/));
  }

  /** Unpacks a verified layer tar into the fill's directory (the caller commits it). */
  private async ingest(fill: LayerFill, tarStream: Readable, what: string): Promise<void> {
    let lastEntry: string | undefined; // where a tar that breaks broke
    // The applier's reader (src/tar/stream-reader.ts): the store and a tree read every layer alike.
    const reader = new TarStreamReader(tarStream);
    // Stays attached: an error the input emits after we are done must not go unhandled.
    tarStream.on('error', () => undefined);
    const context = { what };
    let ok = false;
    try {
      for (let h = reader.nextSync() ?? (await reader.next()); h !== null; h = reader.nextSync() ?? (await reader.next())) {
        // Checked for every entry, as applying it would: values no filesystem call takes fail here, named.
        const meta = entryMeta(h, context);
        const file = fill.add(h);
        if (file !== undefined) {
          // Most files of a layer are small: one synchronous write beats a stream's round trips.
          if ((h.size ?? 0) <= SMALL_FILE) fill.keepContent(file, reader.contentSync() ?? (await reader.content()), h, meta);
          else await fill.keepBody(file, reader.contentChunks(), h, meta);
        }
        lastEntry = h.name;
      }
      ok = true;
    } catch (e) {
      // Stopped (another layer failed, or Ctrl-C): that is no fault of this layer's tar.
      if (isSmartError(e) || isCancellation(e)) throw e;
      if (isErrno(e) && (e as NodeJS.ErrnoException).syscall) throw this.storageError(e, what);
      throw tarParseError(e, { what, input: fill.diffId, ...(lastEntry !== undefined ? { after: lastEntry } : {}) });
    } finally {
      if (!ok) tarStream.destroy();
    }
  }

  /** The layer's entries in tar order, with the paths of stored contents. */
  async *entries(diffId: Digest): AsyncGenerator<StoredEntry> {
    for await (const batch of this.entryBatches(diffId)) yield* batch;
  }

  /**
   * The layer's entries as `entries` gives them, a batch at a time: the index read in chunks and
   * split into lines here, with no stream, readline or generator step per entry. A warm pull of a
   * layer of 45,000 small files into tmpfs spent about 120 ms of its main thread reading the index
   * line by line; read so, the pull took 0.63 s instead of 0.70 s (medians of 6, alternated).
   */
  async *entryBatches(diffId: Digest): AsyncGenerator<StoredEntry[]> {
    for await (const chunk of this.indexChunks(diffId)) {
      const text = chunk.text.toString('utf8');
      const batch: StoredEntry[] = [];
      for (let at = 0; at < text.length; ) {
        const found = text.indexOf('\n', at);
        const nl = found < 0 ? text.length : found;
        if (nl > at) batch.push(chunk.entryOf(text.slice(at, nl)));
        at = nl + 1;
      }
      if (batch.length > 0) yield batch;
    }
  }

  /**
   * The layer's index as it is stored, a chunk of whole lines at a time (each ends in a newline;
   * the file's last line is given one): for a warm pull, whose runs of small files the addon makes
   * straight from the lines (copyStoredFiles), and for entryBatches.
   */
  async *indexChunks(diffId: Digest): AsyncGenerator<StoredIndexChunk> {
    const dir = this.layerDir(diffId);
    const index = path.join(dir, 'entries');
    const files = `${path.join(dir, 'files')}${path.sep}`;
    const damaged = (e: unknown) => new StoredLayerDamage(`its index ${index} cannot be read: ${(e as Error).message}`, { cause: e, notReadable: refusedToRead(e, index) });
    let fh: fs.FileHandle;
    try {
      fh = await fs.open(index, 'r');
    } catch (e) {
      throw damaged(e);
    }
    try {
      let buf = Buffer.allocUnsafe(INDEX_READ_BYTES);
      // Bytes at the start of `buf` after the last whole line given: a line not all read yet.
      let rest = 0;
      for (;;) {
        // A line longer than the buffer: a larger one.
        if (rest === buf.length) buf = Buffer.concat([buf, Buffer.allocUnsafe(buf.length)]);
        let bytesRead: number;
        try {
          ({ bytesRead } = await fh.read(buf, rest, buf.length - rest, null));
        } catch (e) {
          throw damaged(e);
        }
        const filled = rest + bytesRead;
        if (bytesRead === 0) {
          // At the end, the last line needs no newline.
          if (filled > 0) yield new StoredIndexChunk(Buffer.concat([buf.subarray(0, filled), NEWLINE]), files, damaged);
          return;
        }
        const end = buf.lastIndexOf(10, filled - 1) + 1;
        if (end > 0) {
          // A copy: `buf` is read into again while the chunk is used.
          yield new StoredIndexChunk(Buffer.from(buf.subarray(0, end)), files, damaged);
          buf.copy(buf, 0, end, filled);
        }
        rest = filled - end;
      }
    } finally {
      // Left early too (the layer failed, the pull was cancelled): the index file is closed now, not at GC.
      await fh.close();
    }
  }

  /**
   * Removes a layer (found damaged: StoredLayerDamage; or unused: gc), under its lock so that no
   * run is filling it meanwhile (then it is left to that run). Moved aside first: a reader never
   * meets half of it. Says whether it was removed.
   */
  async discard(diffId: Digest): Promise<boolean> {
    if (!(await this.tryLock(diffId).catch(() => false))) return false;
    try {
      const aside = path.join(this.tmpDir, ownedId());
      await mkdirPrivate(this.tmpDir);
      if (!(await fs.rename(this.layerDir(diffId), aside).then(() => true, () => false))) return false;
      await fs.rm(aside, { recursive: true, force: true });
      return true;
    } finally {
      await fs.rm(this.lockPath(diffId), { force: true });
    }
  }

  /**
   * Records that an image uses these layers and these kept blobs (now): what gc keeps. True when
   * there was no record of it before (a pull that then fails takes it back: `forgetImage`).
   */
  async recordImage(manifestDigest: Digest, name: string, diffIds: Digest[], blobs: Digest[] = []): Promise<boolean> {
    const existed = await exists(path.join(this.dir, 'images', digestHex(manifestDigest)));
    await this.writeRecord(digestHex(manifestDigest), { name, diffIds, blobs });
    return !existed;
  }

  /** Removes the record of an image (one a failed pull made: it used nothing). */
  async forgetImage(manifestDigest: Digest): Promise<void> {
    await fs.rm(path.join(this.dir, 'images', digestHex(manifestDigest)), { force: true });
  }

  /**
   * Records that a pull of an image into a layout or an archive used these kept blobs (now): what
   * gc keeps. Under its own name: it must not take the place of the record of a root filesystem
   * pull of the same image, which names its unpacked layers too.
   */
  async recordBlobs(manifestDigest: Digest, name: string, blobs: Digest[]): Promise<void> {
    await this.writeRecord(`blobs-${digestHex(manifestDigest)}`, { name, diffIds: [], blobs });
  }

  /**
   * Records that a chain of layers (an image's first `diffIds`) was made present for the builds to
   * come (now): gc keeps it as it keeps an image's layers. Under its own name, not the image's: a
   * chain is a prefix, and must not take the place of the record of a pull of the whole image.
   */
  async recordChain(name: string, diffIds: Digest[]): Promise<void> {
    const top = chainIds(diffIds).at(-1);
    if (top) await this.writeRecord(`chain-${digestHex(top)}`, { name, diffIds });
  }

  private async writeRecord(key: string, record: { name: string; diffIds: Digest[]; blobs?: Digest[] }): Promise<void> {
    const file = path.join(this.dir, 'images', key);
    await mkdirp(path.dirname(file));
    const tmp = `${file}.${randomUUID()}.tmp`;
    await fs.writeFile(tmp, JSON.stringify({ ...record, usedAt: new Date().toISOString() }));
    await fs.rename(tmp, file);
  }

  /**
   * Removes the layers being unpacked that killed runs left in tmp/ (their owner gone, or unknown
   * and a day old); never one a live run is unpacking. Returns what went (`dryRun`: what would).
   */
  async removeStale(options: { dryRun?: boolean } = {}): Promise<Cleaned[]> {
    return sweepLocal(this.tmpDir, (name) => ownerIn(name, /^-[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}$|^-[0-9a-f]{8}$/), options);
  }

  /**
   * Drops image records unused for `maxAgeMs`, then every layer and kept blob (cache/blob-cache.ts)
   * no remaining record uses, and the leftovers of runs that died (tmp dirs of dead processes).
   * Locked layers are left alone.
   *
   * Pulls run meanwhile (a cron job's prune beside a CI job's pull): a pull records its image
   * before it uses the store, so the records are read again before each removal whenever one was
   * written since they were read; an expired record a pull renews meanwhile is put back, not lost.
   */
  async gc(options: { maxAgeMs: number; dryRun?: boolean; keepUsedSince?: number }): Promise<GcResult> {
    const result: GcResult = { removedImages: 0, removedLayers: 0, removedBlobs: 0, freedBytes: 0 };
    const used = new Set<string>();
    const usedBlobs = new Set<string>();
    const imagesDir = path.join(this.dir, 'images');
    // What the run that prunes used itself (`keepUsedSince`, its start) is in use, whatever the age
    // asked: `--prune 0` after a warm removed every layer the warm had just fetched.
    const expired = (record: ImageRecord): boolean => {
      const usedAt = Date.parse(record.usedAt ?? '');
      if (options.keepUsedSince !== undefined && usedAt >= options.keepUsedSince) return false;
      return Date.now() - usedAt > options.maxAgeMs;
    };
    const take = (record: ImageRecord): void => {
      for (const d of record.diffIds ?? []) used.add(d.replace(/^sha256:/, ''));
      for (const d of record.blobs ?? []) usedBlobs.add(d.replace(/^sha256:/, ''));
    };
    /** The directory's change time when the records were last read, and when that was (ns). */
    let seen: { mtimeNs: bigint; readAtNs: bigint } | undefined;
    const readRecords = async (drop: boolean): Promise<void> => {
      const st = await fs.stat(imagesDir, { bigint: true }).catch(() => undefined);
      seen = st ? { mtimeNs: st.mtimeNs, readAtNs: BigInt(Date.now()) * 1_000_000n } : undefined;
      for (const name of await fs.readdir(imagesDir).catch(() => [] as string[])) {
        const file = path.join(imagesDir, name);
        if (name.endsWith('.tmp')) {
          // A record a killed run was writing or dropping: gone once it is a day old.
          if (drop && !options.dryRun) await removeIfStale(file);
          continue;
        }
        const record = await readRecord(file);
        if (!record) continue;
        if (!expired(record)) take(record);
        else if (drop && (options.dryRun || (await this.dropRecord(file, expired, take)))) result.removedImages++;
      }
    };
    // Read again when the directory changed since (a record is renamed into it), or when it had
    // changed so shortly before the last read that a change after it could show the same time
    // (file times advance by the kernel's tick, not by the nanosecond).
    const readAgainIfChanged = async (): Promise<void> => {
      const st = await fs.stat(imagesDir, { bigint: true }).catch(() => undefined);
      if (!st) return;
      if (seen && st.mtimeNs === seen.mtimeNs && seen.readAtNs - seen.mtimeNs > COARSE_TIME_NS) return;
      await readRecords(false);
    };
    await readRecords(true);
    const blobsDir = path.join(this.dir, 'blobs', 'sha256');
    for (const hex of await fs.readdir(blobsDir).catch(() => [] as string[])) {
      if (usedBlobs.has(hex)) continue;
      const blob = path.join(blobsDir, hex);
      const size = (await fs.stat(blob).catch(() => undefined))?.size ?? 0;
      await readAgainIfChanged();
      if (usedBlobs.has(hex)) continue;
      result.removedBlobs++;
      result.freedBytes += size;
      if (!options.dryRun) await fs.rm(blob, { force: true });
    }
    const layersDir = this.layersDir;
    for (const hex of await fs.readdir(layersDir).catch(() => [] as string[])) {
      if (used.has(hex) || (await exists(path.join(this.dir, 'locks', hex)))) continue;
      const size = await dirSize(path.join(layersDir, hex));
      await readAgainIfChanged();
      if (used.has(hex)) continue;
      // Moved out of layers/ at once, under its lock: a pull never finds it half removed, nor
      // does the next one when this gc is killed (what it left in tmp/ goes as a dead run's).
      if (!options.dryRun && !(await this.discard(`sha256:${hex}` as Digest))) continue;
      result.removedLayers++;
      result.freedBytes += size;
    }
    for (const c of await this.removeStale(options.dryRun ? { dryRun: true } : {})) result.freedBytes += c.bytes;
    return result;
  }

  /**
   * Removes an expired record: moved aside first, then read again. A pull that renewed it between
   * gc's read and the move made it fresh: it is put back (unless a newer one took its place) and
   * its layers taken as used. Says whether it was removed.
   */
  private async dropRecord(file: string, expired: (r: ImageRecord) => boolean, take: (r: ImageRecord) => void): Promise<boolean> {
    const aside = `${file}.${randomUUID()}.tmp`;
    try {
      await fs.rename(file, aside);
    } catch {
      return false; // gone meanwhile
    }
    const record = await readRecord(aside);
    if (record && !expired(record)) {
      take(record);
      await fs.link(aside, file).catch(() => undefined); // EEXIST: a newer record is there
      await fs.rm(aside, { force: true });
      return false;
    }
    await fs.rm(aside, { force: true });
    return true;
  }

  /**
   * Checks every committed layer: its index parses and every stored file it names exists with the
   * size its header declares. Returns the problems found (none: an empty list).
   */
  async verify(): Promise<string[]> {
    const problems: string[] = [];
    const layersDir = this.layersDir;
    for (const hex of await fs.readdir(layersDir).catch(() => [] as string[])) {
      const diffId = `sha256:${hex}` as Digest;
      try {
        for await (const e of this.entries(diffId)) {
          if (!e.file) continue;
          const st = await fs.stat(e.file).catch(() => undefined);
          if (!st || st.size !== (e.header.size ?? 0)) problems.push(`${hex}: ${e.header.name}: stored content missing or of the wrong size`);
        }
      } catch (err) {
        problems.push(`${hex}: unreadable index (${(err as Error).message})`);
      }
    }
    return problems;
  }
}

/** How a fill from a tree keeps each file: a hardlink to the tree's (`--link`), a clone (reflink), or a copy. */
export type KeepHow = 'hardlink' | 'reflink' | 'copy';

/** An entry's owner and times, checked (src/tar/errors.ts). */

const isRoot = process.getuid?.() === 0;

/** The stored file carries the entry's metadata (checked), so that a hardlinked root filesystem has it too. */
/** The owner (-1: left as made), mode and times a stored file is given. */
function storedMeta(h: Header, { uid, gid, atime, mtime }: EntryMeta): { uid: number; gid: number; mode: number; atime: number | Date; mtime: number | Date } {
  // In a user namespace, an owner it does not map stays this process's, as in the tree (src/id-map.ts).
  const owned = isRoot && idMap().maps(uid, gid);
  return { uid: owned ? uid : -1, gid: owned ? gid : -1, mode: (h.mode ?? 0o644) & 0o7777, atime, mtime };
}

function setMeta(file: string, h: Header, meta: EntryMeta): void {
  const { uid, gid, mode, atime, mtime } = storedMeta(h, meta);
  if (uid >= 0) chownSync(file, uid, gid);
  // After chown, which clears a file capability, and before the mode, which may take the write
  // permission a user attribute needs; what cannot be set here the tree's pull says.
  setXattrs(file, entryXattrs(h.pax), { notSet: 0 });
  chmodSync(file, mode);
  utimesSync(file, atime, mtime);
}

/**
 * A layer being written into the store, its lock held (from `LayerStore.claim`): entries are
 * added in tar order (`add`), each regular file's content put where `add` says (`keepContent`, or
 * `keepFile` from a file already written elsewhere), and the whole made visible at once by
 * `commit` (its directory renamed into layers/). `abort` (a no-op after commit) removes it.
 * Either releases the lock; until then the layer is invisible to every reader.
 *
 * `bestEffort` (a pull into a tree, which keeps the layer for the next pull's sake): when the
 * store cannot take more (cannotTakeMore: a full disk), the fill stops keeping, quietly, the
 * tree goes on being written, and commit drops what was kept and says false.
 */
export class LayerFill {
  /** Entry lines not yet written (as they come: a layer of a million small files must not hold a line per file). */
  private batch = '';
  private entriesFd: number;
  private files = 0;
  private done = false;
  /** Why a best-effort fill stopped keeping, once it did. */
  notKept: unknown;

  constructor(
    private readonly store: LayerStore,
    readonly diffId: Digest,
    private readonly tmp: string,
    /** How `keepFile` keeps files. */
    readonly keep: KeepHow,
    private readonly what: string,
    private readonly bestEffort = false,
  ) {
    this.entriesFd = openSync(path.join(tmp, 'entries'), 'wx');
    // Its files will be the tree's own (one inode): what is written into the tree changes them.
    if (keep === 'hardlink') writeFileSync(path.join(tmp, LINKED_MARK), '');
  }

  /** A failure to keep: a best-effort fill stops keeping when the store cannot take more; else thrown. */
  private spare(e: unknown): void {
    if (!this.bestEffort || !cannotTakeMore(e)) throw e;
    this.notKept ??= e;
    this.batch = '';
    this.closeEntries();
  }

  private flush(): void {
    if (this.entriesFd >= 0 && this.batch) writeSync(this.entriesFd, this.batch);
    this.batch = '';
  }

  private closeEntries(): void {
    // Once: the number may belong to another file afterwards (an unpacking still running after a failure).
    if (this.entriesFd >= 0) closeSync(this.entriesFd);
    this.entriesFd = -1;
  }

  /** Records the next entry; for a regular file, returns the path its content must be put at. */
  add(h: Header): string | undefined {
    if (this.notKept !== undefined) return undefined;
    const record: Record<string, unknown> = { ...h, mtime: h.mtime ? h.mtime.getTime() : 0 };
    // A real U+FFFD, told apart from the U+FFFD older versions stored in place of bytes (entries()).
    if (holdsFffd(h)) record.fffdInName = true;
    let file: string | undefined;
    if (h.type === 'file' || h.type === 'contiguous-file') {
      const name = String(this.files++);
      record.file = name;
      file = path.join(this.tmp, 'files', name);
    }
    this.batch += `${JSON.stringify(record)}\n`;
    try {
      if (this.batch.length >= ENTRIES_BATCH) this.flush();
    } catch (e) {
      this.spare(e);
      return undefined;
    }
    return file;
  }

  /**
   * Where a run of small files made elsewhere (the addon's extractFiles) keeps its copies: the
   * files directory and the number the run's first file gets; then `keptRun`. Undefined where the
   * run cannot keep them as `add` and `keepContent` would: the fill keeps no copies (hardlinks,
   * clones) or nothing any more, or the store's owners depend on the id map (root in a user
   * namespace that maps only some ids: storedMeta).
   */
  runTarget(): { files: string; next: number; chown: boolean } | undefined {
    if (this.keep !== 'copy' || this.notKept !== undefined || (isRoot && idMap().partial)) return undefined;
    return { files: `${path.join(this.tmp, 'files')}${path.sep}`, next: this.files, chown: isRoot };
  }

  /** A run kept its `files` copies and wrote their entries' index lines (the first `length` bytes of `lines`), in tar order after the entries added so far. */
  keptRun(lines: Buffer, length: number, files: number): void {
    this.files += files;
    if (this.notKept !== undefined || length === 0) return;
    try {
      this.flush();
      for (let at = 0; at < length && this.entriesFd >= 0; ) at += writeSync(this.entriesFd, lines, at, length - at);
    } catch (e) {
      this.spare(e);
    }
  }

  /**
   * What the copy of a file read whole is given (setMeta's owner, mode and times), for a caller
   * that writes it itself, off the main thread (the applier's batches: file-batch.ts), in place of
   * keepContent; then `failedCopy` for its failure. Undefined where keepContent must do it: the
   * fill keeps no copies (hardlinks, clones), keeps nothing any more, or the entry has extended
   * attributes.
   */
  copyMeta(h: Header, meta: EntryMeta): ReturnType<typeof storedMeta> | undefined {
    if (this.keep !== 'copy' || this.notKept !== undefined || entryXattrs(h.pax).length > 0) return undefined;
    return storedMeta(h, meta);
  }

  /** A copy written elsewhere (copyMeta) failed: as keepContent's own failure (a full store stops the keeping; else thrown). */
  failedCopy(e: unknown): void {
    if (this.notKept === undefined) this.spare(e);
  }

  /** Writes a file's content (read whole) at `file` (from `add`), with the entry's metadata. */
  keepContent(file: string, content: Buffer, h: Header, meta: EntryMeta): void {
    if (this.notKept !== undefined) return;
    try {
      writeFileSync(file, content, { flag: 'wx' });
      setMeta(file, h, meta);
    } catch (e) {
      this.spare(e);
    }
  }

  /** Writes a file's content as it streams at `file` (from `add`), with the entry's metadata. */
  async keepBody(file: string, body: AsyncIterable<Buffer>, h: Header, meta: EntryMeta): Promise<void> {
    if (this.notKept !== undefined) return; // the content left unread is skipped with the next entry
    try {
      // Its holes stay holes when it is a sparse file (src/tar/sparse.ts).
      const fh = await fs.open(file, 'wx');
      try {
        await writeFileChunks(fh, body);
      } finally {
        await fh.close();
      }
      setMeta(file, h, meta);
    } catch (e) {
      this.spare(e);
    }
  }

  /**
   * Keeps the regular file just written at `tree` (its content complete) as `file` (from `add`):
   * hardlinked (the store then shares the inode, and the metadata the tree gives it), cloned, or
   * copied (a clone where the filesystem can) and given the entry's metadata. `content`, when the
   * file was read whole, is written instead of copying. Called before the tree file gets its final
   * mode, which may forbid reading it.
   */
  async keepFile(file: string, tree: string, h: Header, meta: EntryMeta, content?: Buffer): Promise<void> {
    if (this.notKept !== undefined) return;
    try {
      const treeFs = fsPath(tree);
      if (this.keep === 'hardlink') {
        linkSync(treeFs, file);
        return;
      }
      if (content && this.keep === 'copy') return this.keepContent(file, content, h, meta);
      // A sparse file's segments only: a copy of the whole would write its holes out as zeros.
      const segments = sparseSegments(h);
      if (segments) copySparseFileSync(treeFs, file, segments, h.size ?? 0);
      else if ((h.size ?? 0) <= SMALL_FILE) copyFileSync(treeFs, file, fsConstants.COPYFILE_EXCL | fsConstants.COPYFILE_FICLONE);
      else await fs.copyFile(treeFs, file, fsConstants.COPYFILE_EXCL | fsConstants.COPYFILE_FICLONE);
      setMeta(file, h, meta);
    } catch (e) {
      this.spare(e);
    }
  }

  /**
   * Makes the layer visible (its entries written, its directory renamed into layers/) and releases
   * the lock. False when a best-effort fill could not keep it (notKept says why): dropped instead.
   */
  async commit(): Promise<boolean> {
    if (this.done) throw new SmartError('INTERNAL', 'a layer fill committed twice or after abort');
    if (this.notKept !== undefined) {
      await this.abort();
      return false;
    }
    this.done = true;
    try {
      this.flush();
      this.closeEntries();
      const final = path.join(this.store.dir, 'layers', digestHex(this.diffId));
      await mkdirPrivate(path.dirname(final));
      try {
        await fs.rename(this.tmp, final);
      } catch (e) {
        // Someone else committed it meanwhile (without our lock: an older tool, or a taken-over lock).
        if (!isErrno(e, 'ENOTEMPTY') && !isErrno(e, 'EEXIST')) throw e;
        await fs.rm(this.tmp, { recursive: true, force: true });
      }
    } catch (e) {
      this.closeEntries();
      await fs.rm(this.tmp, { recursive: true, force: true });
      if (this.bestEffort && cannotTakeMore(e)) {
        this.notKept = e;
        return false;
      }
      throw this.store.storageError(e, this.what);
    } finally {
      await fs.rm(this.store.lockPath(this.diffId), { force: true });
    }
    return true;
  }

  /** Drops what was written and releases the lock; nothing after a commit. */
  async abort(): Promise<void> {
    if (this.done) return;
    this.done = true;
    this.closeEntries();
    await fs.rm(this.tmp, { recursive: true, force: true });
    await fs.rm(this.store.lockPath(this.diffId), { force: true });
  }
}
