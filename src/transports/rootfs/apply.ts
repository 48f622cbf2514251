/**
 * Applies OCI layer tars onto a directory, the way `umoci unpack` and containerd do (image-spec
 * layer.md): whiteouts and opaque directories remove what lower layers left, a path may change type
 * between layers, and nothing is ever written outside the root.
 *
 * Safety rests on one rule: every path of a layer — entry names, hardlink targets, the parents of
 * whiteouts — is resolved inside the root as if chrooted, exactly as containerd does (its
 * `archive/tar_test.go` TestBreakouts cases are this module's tests): names are cleaned with `..`
 * stopping at the root, and every parent is resolved with symlinks SCOPED to the root (as Go's
 * securejoin / containerd's `fs.RootPath`): an absolute link target is taken relative to the root
 * and `..` never climbs above it. The last component of a path is never followed: files are created
 * with O_EXCL, directories with mkdir, links with symlink/link, none of which follow a final symlink
 * (so a hardlink to a symlink links the symlink itself, as link(2), GNU tar and containerd do).
 *
 * Metadata calls (lstat, mkdir, chmod, small files...) are synchronous on purpose: a layer is mostly
 * small files, and a thread-pool round trip per call costs ten times the call itself. They never
 * block for long; large files are streamed with asynchronous writes, and trees are removed with
 * the asynchronous rm.
 */
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import {
  chmodSync,
  copyFileSync,
  closeSync,
  constants as fsConstants,
  fchmodSync,
  fchownSync,
  futimesSync,
  lchownSync,
  linkSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  readFileSync,
  readSync,
  readdirSync,
  readlinkSync,
  renameSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { open, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import type { Header } from 'tar-stream';
import { SmartError, isCancellation, isErrno, isSmartError, quoted, refusalHint, systemWords } from '../../errors.js';
import type { LayerFill, StoredEntry, StoredIndexChunk } from '../../cache/layer-store.js';
import { StoredLayerDamage, refusedToRead } from '../../cache/stored-layer-damage.js';
import { decodeName, decodeNames, fsPath, hasEscapedBytes } from '../../tar/byte-names.js';
import { type EntryMeta, entryMeta, tarParseError } from '../../tar/errors.js';
import { TarStreamReader, entryNameAt, unknownTypeOf } from '../../tar/stream-reader.js';
import { copySparseFileSync, sparseSegments, writeFileChunks } from '../../tar/sparse.js';
import { entryXattrs, setXattrs, type XattrTally } from '../../storage/xattrs.js';
import { type NativeBinding, nativeBinding } from '../../pipeline/native.js';
import { type BatchedFile, FileBatch, batchWriter } from './file-batch.js';
import { idMap, type IdMap } from '../../id-map.js';
import { MAX_TRACKED_PATHS, limitExceeded } from '../../limits.js';

export interface ApplyOptions {
  /** chown entries and create device nodes / fifos: only when running as root. */
  preserveOwnership: boolean;
  onWarning?: (message: string) => void;
  /** The bound on paths held in memory (default MAX_TRACKED_PATHS); past it, LIMIT_EXCEEDED. */
  maxTrackedPaths?: number;
  /** Small files made in batches on the pool where the addon can (file-batch.ts; default true); false makes each in turn. */
  batchSmallFiles?: boolean;
  /** Runs of small files in a directory the layer made laid down by the addon, headers and all (extractFiles; default: batchSmallFiles). */
  extractRuns?: boolean;
}

export interface LayerApplyStats {
  /** Tar entries read (whiteouts and skipped entries included). */
  entries: number;
  /** Bytes of regular file content written. */
  bytes: number;
  /** Whiteout and opaque-directory markers applied. */
  whiteouts: number;
}

/** Symlinks followed in one resolution before it is called a loop (as Go's securejoin; Linux stops at 40). */
export const MAX_SYMLINK_FOLLOWS = 255;

/** The set-group-ID bit (not among Node's fs.constants). */
const S_ISGID = 0o2000;

const WHITEOUT_PREFIX = '.wh.';
const WHITEOUT_META_PREFIX = '.wh..wh.';
const WHITEOUT_OPAQUE = '.wh..wh..opq';

/**
 * Normalises a tar entry name to a root-relative path, as containerd does (a lexical clean, then
 * the parent resolved with `fs.RootPath`): `.`, duplicate slashes and a trailing slash dropped,
 * `..` resolved lexically and never above the root (`../x` and `/../x` are `x`), an absolute name
 * taken relative to the root; `''` is the root itself.
 */
export function normaliseEntryName(name: string): string {
  // Nearly every name is clean already but for a leading `./` or a trailing `/` (GNU tar's and
  // Docker's); taking those off is the whole normalisation then, without the general one's cost.
  let clean = name.startsWith('./') ? name.slice(2) : name;
  if (clean.endsWith('/')) clean = clean.slice(0, -1);
  if (isCleanRelative(clean)) return clean;
  return path.posix.normalize(`/${name}`).slice(1).replace(/\/+$/, '');
}

/** Whether `p` is a non-empty relative path that normalisation leaves as it is: no empty, `.` or `..` component. */
function isCleanRelative(p: string): boolean {
  if (p === '' || p.charCodeAt(0) === 0x2f || p.endsWith('/')) return false;
  if (p === '.' || p === '..' || p.startsWith('./') || p.startsWith('../') || p.endsWith('/.') || p.endsWith('/..')) return false;
  return !p.includes('//') && !p.includes('/./') && !p.includes('/../');
}

/** A system call's failure on an entry, as a pull says it: STORAGE, naming the layer and the entry. */
function entryStorageError(what: string, name: string, e: NodeJS.ErrnoException): SmartError {
  return new SmartError('STORAGE', `${what}: entry ${quoted(name)}: ${systemWords(e)}`, { input: what, cause: e, ...refusalHint(e) });
}

/**
 * Where a run of small files after an entry would go (RootfsApplier.extractRun): into the
 * directory a file lies in, or that a directory entry is, when the entry's name spells it plainly
 * (its root-relative path, perhaps after "./"), names it where the walk found it (no symlink on
 * the way), and is UTF-8, so that the entries in it share the name's bytes up to its last '/'.
 */
function runFrom(name: string, rel: string, targetRel: string, directory: boolean): RunFrom | undefined {
  if (targetRel !== rel || hasEscapedBytes(name)) return undefined;
  const spelled = name.startsWith('./') ? name.slice(2) : name;
  if (directory) {
    if (spelled !== rel && spelled !== `${rel}/`) return undefined;
    return { dirRel: rel, prefix: spelled === rel ? `${name}/` : name };
  }
  const slash = rel.lastIndexOf('/');
  if (spelled !== rel || slash < 0) return undefined;
  return { dirRel: rel.slice(0, slash), prefix: name.slice(0, name.length - rel.length + slash + 1) };
}

function parentOf(rel: string): string {
  const i = rel.lastIndexOf('/');
  return i < 0 ? '' : rel.slice(0, i);
}

function joinRel(dir: string, name: string): string {
  return dir === '' ? name : `${dir}/${name}`;
}

function components(p: string): string[] {
  return p.split('/').filter((c) => c !== '' && c !== '.');
}

interface WalkOptions {
  /** Follow a symlink in the last component too. */
  followLast: boolean;
  /** Root-relative paths known to be real directories (every ancestor too); read and extended. */
  knownDirs?: Set<string>;
  /** Create missing components as directories (mode 0755); a non-directory in the way is an error. */
  create?: boolean;
  /** This process's umask, when known: a directory made where neither it nor a set-group-ID parent changes 0755 needs no chmod. */
  umask?: number;
  /** Told of each directory `create` made. */
  onCreate?: (rel: string) => void;
  /** Existing directories found with the set-group-ID bit are added here. */
  setgidDirs?: Set<string>;
  /** For messages. */
  what?: string;
  /** Paths not to look at yet (small files still being made: file-batch.ts): the walk throws WalkReachedPending there, before touching one. */
  pending?: (rel: string) => boolean;
}

/** A walk stopped at a path whose file is still being made; what it made before stays (walking again goes on from there). */
class WalkReachedPending extends Error {}

/**
 * The one scoped resolver: resolves `unsafePath` (absolute or relative; taken relative to `root`)
 * to a root-relative path whose components are real directories (or missing), following symlinks
 * as if `root` were `/`. Returns the root-relative result ('' = the root).
 */
function walkInRoot(root: string, unsafePath: string, options: WalkOptions): string {
  const { followLast, knownDirs, create } = options;
  // A stack: the next component is at the end.
  const todo = components(unsafePath).reverse();
  let cur = '';
  let follows = 0;
  while (todo.length > 0) {
    const c = todo.pop() as string;
    if (c === '..') {
      cur = parentOf(cur);
      continue;
    }
    const next = joinRel(cur, c);
    const last = todo.length === 0;
    if (last && !followLast) {
      cur = next;
      break;
    }
    if (knownDirs?.has(next)) {
      cur = next;
      continue;
    }
    if (options.pending?.(next)) throw new WalkReachedPending(next);
    const full = fsPath(path.join(root, next));
    let st;
    try {
      st = lstatSync(full);
    } catch (e) {
      if (!isErrno(e, 'ENOENT') && !isErrno(e, 'ENOTDIR')) throw e;
      if (create) {
        mkdirSync(full, 0o755);
        // 0755 whatever the umask, and without the set-group-ID bit a parent would pass on.
        if (options.umask === undefined || (options.umask & 0o755) !== 0 || options.setgidDirs?.has(cur)) chmodSync(full, 0o755);
        knownDirs?.add(next);
        options.onCreate?.(next);
      }
      // Missing: the rest is joined lexically (it cannot exist either, unless `..` climbs back).
      cur = next;
      continue;
    }
    if (st.isSymbolicLink()) {
      if (++follows > MAX_SYMLINK_FOLLOWS) {
        throw new SmartError(
          'CORRUPT_ARCHIVE',
          `${options.what ? `${options.what}: ` : ''}${quoted(unsafePath)}: too many levels of symbolic links`,
          { input: unsafePath },
        );
      }
      const target = decodeName(readlinkSync(full, { encoding: 'buffer' }));
      if (target.startsWith('/')) cur = '';
      const more = components(target);
      for (let i = more.length - 1; i >= 0; i--) todo.push(more[i] as string);
      continue;
    }
    if (st.isDirectory()) {
      knownDirs?.add(next);
      if (st.mode & S_ISGID) options.setgidDirs?.add(next);
    } else if (create) {
      throw new SmartError(
        'CORRUPT_ARCHIVE',
        `${options.what ? `${options.what}: ` : ''}${quoted(unsafePath)}: ${quoted(`/${next}`)} is not a directory`,
        { input: unsafePath },
      );
    }
    cur = next;
  }
  return cur;
}

/**
 * Resolves `relPath` inside `root` with symlinks scoped to the root (Go's securejoin, containerd's
 * `fs.RootPath`): an absolute link target is relative to the root, `..` never climbs above it, and
 * more than {@link MAX_SYMLINK_FOLLOWS} links is an error. With `followLast: false` a symlink in the
 * last component is left as it is (for lstat, unlink, creation). Missing components are joined
 * lexically. Returns an absolute path inside `root`.
 */
export async function resolveInRoot(
  root: string,
  relPath: string,
  options: { followLast?: boolean } = {},
): Promise<string> {
  const abs = path.resolve(root);
  const rel = walkInRoot(abs, relPath, { followLast: options.followLast ?? true });
  return path.join(abs, rel);
}

/** Marks an error of reading the tar (as opposed to writing the tree). */
class StreamFailure extends Error {
  constructor(readonly original: unknown) {
    super(original instanceof Error ? original.message : String(original));
  }
}

interface DirMeta {
  mode: number;
  atime: number | Date;
  mtime: number | Date;
}

interface LayerState {
  what: string;
  /** The name of the last entry applied whole: where a tar that breaks broke. */
  lastEntry?: string;
  stats: LayerApplyStats;
  /**
   * What opaque markers and whiteouts keep: the paths this layer wrote, with their ancestors, but
   * not those inside directories the layer created (RootfsApplier.freshDirs), which hold nothing
   * of lower layers. A layer of many files in new directories then tracks only the directories.
   */
  written: Set<string>;
  skippedSpecial: number;
  /** Non-directory entries naming the root itself. */
  skippedRoot: number;
  /** Extended attributes not set: the addon's absence, the filesystem or the user refused them (src/storage/xattrs.ts). */
  xattrs: XattrTally;
  /** Where the layer is being kept as it is applied (the layer store), if anywhere. */
  keep?: LayerFill;
  /** Small files being made on the pool (file-batch.ts): waited for before anything that might depend on them. */
  batch?: FileBatch;
  /** The addon's extractFiles, where this layer's runs of small files go to it. */
  extract?: ExtractFiles;
  /** The addon's copyStoredFiles, where this layer (laid from the layer store) has its runs of small files made by it. */
  copyStored?: CopyStoredFiles;
  /** Set by the entry just applied: the directory the entries after it may lie in, for a run (extractRun). */
  runFrom?: RunFrom;
}

type ExtractFiles = NonNullable<NativeBinding['extractFiles']>;
type CopyStoredFiles = NonNullable<NativeBinding['copyStoredFiles']>;

/** Where a run of small files goes: the directory (root-relative, made by this layer), and how the entries in it spell it. */
interface RunFrom {
  dirRel: string;
  /** Their names' common start, up to and with the last '/'. */
  prefix: string;
}

type PaxRecords = Record<string, string>;

function pax(h: Header): PaxRecords | null {
  const p = h.pax;
  return p && typeof p === 'object' ? (p as PaxRecords) : null;
}


function runMknod(target: string, kind: 'c' | 'b' | 'p', major: number, minor: number): Promise<void> {
  const args = kind === 'p' ? [target, 'p'] : [target, kind, String(major), String(minor)];
  return new Promise((resolve, reject) => {
    execFile('mknod', args, { timeout: 30_000 }, (err, _stdout, stderr) => {
      if (!err) return resolve();
      const detail = String(stderr).trim() || err.message;
      reject(Object.assign(new Error(`mknod: ${detail}`), { code: 'EMKNOD' }));
    });
  });
}

/**
 * mknod at `target`, a path inside `root`. A name that is not UTF-8 cannot be an argument (Node
 * passes arguments as UTF-8): the node is made under a name of our own in the root, then renamed.
 */
async function mknodAt(root: string, target: string, kind: 'c' | 'b' | 'p', major: number, minor: number): Promise<void> {
  const targetFs = fsPath(target);
  // As mknod(2) would: what is in the way is the caller's to remove (RootfsApplier.replace), which
  // knows it by EEXIST; the program's own failure says it only in words.
  if (lstatOrNull(targetFs)) throw Object.assign(new Error(`EEXIST: ${target}`), { code: 'EEXIST' });
  if (!hasEscapedBytes(target)) return runMknod(target, kind, major, minor);
  const made = path.join(root, `.smart-mknod-${randomUUID()}`);
  await runMknod(made, kind, major, minor);
  try {
    renameSync(made, targetFs);
  } catch (e) {
    rmSync(made, { force: true });
    throw e;
  }
}

/**
 * A regular file's extended attributes, and the tally of those not set. They are set after the
 * chown, which clears a file capability, and before the final mode: a user attribute needs write
 * permission on the file, which a read-only file's mode (0444) takes from a user without
 * CAP_DAC_OVERRIDE, so set after it, it would fail EACCES in a pull as any other user than root.
 */
interface EntryXattrs {
  list: [Buffer, Buffer][];
  tally: XattrTally;
}

/** A regular file of a kept layer: the fill, and where it keeps this file. */
interface KeptFile {
  fill: LayerFill;
  file: string;
}

/**
 * An entry's content as the applier reads it: from the tar being read (what an entry leaves
 * unread is skipped when the next one is read), or none (an entry from the layer store).
 */
interface EntryBody {
  /** The whole content, for an entry small enough to hold: without a promise when it is all here. */
  whole(): Buffer | Promise<Buffer>;
  /** The content in the pieces it arrives in. */
  chunks(): AsyncIterable<Buffer>;
}

const EMPTY = Buffer.alloc(0);
const EMPTY_BODY: EntryBody = { whole: () => EMPTY, chunks: async function* () {} };

/** The current entry of `reader`, its failures marked as the tar's. */
function tarBody(reader: TarStreamReader): EntryBody {
  return {
    whole() {
      let content: Buffer | undefined;
      try {
        content = reader.contentSync();
      } catch (e) {
        throw new StreamFailure(e);
      }
      return content ?? reader.content().catch((e: unknown) => Promise.reject(new StreamFailure(e)));
    },
    chunks: () => chunks(reader.contentChunks()),
  };
}

/** Files up to this size are read whole, then written with one synchronous burst. */
const SMALL_FILE_BYTES = 512 * 1024;
/**
 * Room for a kept layer's index lines from one call of extractFiles. A line is about 250 bytes and
 * its name; a full buffer only ends the call early (the run goes on with the next).
 */
const RUN_LINES_BYTES = 512 * 1024;

/** Linux's open flag that leaves a file's access time as it is (0 where there is none). */
const O_NOATIME = (fsConstants as { O_NOATIME?: number }).O_NOATIME ?? 0;
/** Files of the layer store up to this size are read and written, not copied (see placeStoredFile). */
const STORED_READ_BYTES = 64 * 1024;

/** A file's bytes, reading one more than `size` if there are more: its length then tells whether it is what the store kept. */
/**
 * A stored file's bytes: up to `size` + 1 of them (the caller tells a file of another size), read
 * without touching its access time where this user may (see read_source_at in native/smartlayer.c).
 */
function readWhole(file: string, size: number): Buffer {
  const at = fsPath(file);
  let fd: number;
  try {
    fd = openSync(at, fsConstants.O_RDONLY | O_NOATIME);
  } catch (e) {
    if (!O_NOATIME || !isErrno(e, 'EPERM')) throw e;
    fd = openSync(at, 'r');
  }
  try {
    const buf = Buffer.allocUnsafe(size + 1);
    let n = 0;
    for (let got; n < buf.length && (got = readSync(fd, buf, n, buf.length - n, n)) > 0; ) n += got;
    return buf.subarray(0, n);
  } finally {
    closeSync(fd);
  }
}

function writeAllSync(fd: number, data: Buffer): void {
  let off = 0;
  while (off < data.length) off += writeSync(fd, data, off, data.length - off);
}

/** Reads an entry to its end, marking a failure as the tar's. */
async function* chunks(entry: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  const it = entry[Symbol.asyncIterator]();
  for (;;) {
    let r: IteratorResult<Buffer>;
    try {
      r = await it.next();
    } catch (e) {
      throw new StreamFailure(e);
    }
    if (r.done) return;
    yield r.value;
  }
}

/** lstat, or null when nothing is there. */
function lstatOrNull(full: string | Buffer) {
  try {
    return lstatSync(typeof full === 'string' ? fsPath(full) : full);
  } catch (e) {
    if (isErrno(e, 'ENOENT') || isErrno(e, 'ENOTDIR')) return null;
    throw e;
  }
}

/** A regular file's content in the layer store: linked or copied into the tree, checked first or not (storedFileChange). */
interface StoredFile {
  path: string;
  link: boolean;
  check: boolean;
}

/** How far apart a stored file's modification time and its entry's may be: filesystems that keep whole seconds (or two) round it. */
const MTIME_SLACK_MS = 2000;

/**
 * How a stored file of the layer store differs from the entry it keeps, if it does (undefined:
 * it does not, as far as its size, mode, owner and modification time tell). A tree pulled with
 * --link shares its files with the store: a container that writes into it (runc's root
 * filesystem is writable) or a chmod changes the stored file, and a later pull must not lay the
 * changed file down as the layer's.
 */
function storedFileChange(file: string, h: Header, meta: EntryMeta, owners: boolean): string | undefined {
  const st = lstatSync(file, { throwIfNoEntry: false });
  if (!st) return 'is gone';
  const since = 'since it was kept (a tree pulled with --link shares its files with the store: use such a tree read-only)';
  if (!st.isFile()) return `is no longer a regular file ${since}`;
  if (st.size !== (h.size ?? 0)) return `changed size ${since}`;
  if (typeof h.mode === 'number' && (st.mode & 0o7777) !== (h.mode & 0o7777)) return `changed mode ${since}`;
  if (owners && (st.uid !== meta.uid || st.gid !== meta.gid)) return `changed owner ${since}`;
  const mtimeMs = meta.mtime instanceof Date ? meta.mtime.getTime() : meta.mtime * 1000;
  if (Math.abs(st.mtimeMs - mtimeMs) >= MTIME_SLACK_MS) return `was modified ${since}`;
  return undefined;
}

/** The names in a directory, as names (bytes that are not UTF-8 kept: src/tar/byte-names.ts). */
function readNames(dir: string): string[] {
  return decodeNames(readdirSync(fsPath(dir), { encoding: 'buffer' }));
}

export class RootfsApplier {
  private readonly root: string;
  /** `root` and a slash: the full path of a normalised root-relative path is this and the path. */
  private readonly rootSlash: string;
  private readonly preserveOwnership: boolean;
  /** The ids this process can give files (a user namespace maps only some: src/id-map.ts). */
  private readonly ids: IdMap;
  /** Entries of the current layer whose owner the id map leaves out: how many, and the first owner. */
  private unmapped = { entries: 0, first: '' };
  private readonly onWarning: ((message: string) => void) | undefined;
  /** Bits added to directory modes while layers are applied, so a non-root user can write into them. */
  private readonly dirWriteBits: number;
  /** Root-relative paths known to be real directories, every ancestor included; dropped on removal. */
  private readonly knownDirs = new Set<string>();
  /** Directory metadata to set in finish(), last writer wins; dropped when the directory is removed. */
  private readonly dirMeta = new Map<string, DirMeta>();
  /** Directories the current layer created: all they hold is the layer's own. */
  private readonly freshDirs = new Set<string>();
  /**
   * Directories that may have the set-group-ID bit (files made in them take the directory's group):
   * the root if it has it, those found with it, and those whose entry gives it. A directory made
   * otherwise gets mode 0755 at once. A path here that no longer has it only costs a chown.
   */
  private readonly setgidDirs = new Set<string>();
  /** Who owns what this process creates (outside set-group-ID directories), and its umask when the applier is made (undefined if unknown). */
  private readonly creator = { uid: process.geteuid?.() ?? -1, gid: process.getegid?.() ?? -1 };
  private readonly umask = processUmask();
  private readonly maxTrackedPaths: number;
  private readonly batchSmallFiles: boolean;
  private readonly extractRuns: boolean;
  /** extractFiles's parameters and results (smartlayer.c's RUN_ enums), made once. */
  private readonly runParams = new Int32Array(8);
  private readonly runOut = new Int32Array(6);
  /** Where a run of a kept layer writes its entries' index lines, made at the first. */
  private runLines: Buffer | undefined;
  private busy = false;
  private finished = false;

  constructor(root: string, options: ApplyOptions) {
    this.root = path.resolve(root);
    this.rootSlash = this.root === '/' ? '/' : `${this.root}/`;
    this.preserveOwnership = options.preserveOwnership;
    this.ids = idMap();
    this.onWarning = options.onWarning;
    this.dirWriteBits = process.getuid?.() === 0 ? 0 : 0o700;
    this.maxTrackedPaths = options.maxTrackedPaths ?? MAX_TRACKED_PATHS;
    this.batchSmallFiles = options.batchSmallFiles ?? true;
    this.extractRuns = options.extractRuns ?? this.batchSmallFiles;
    const rootStat = lstatOrNull(this.root);
    if (!rootStat || rootStat.mode & S_ISGID) this.setgidDirs.add('');
  }

  /**
   * Applies one UNCOMPRESSED layer tar on top of the tree. Called in layer order, one at a time.
   * `what` names the layer in errors. With `keep`, every entry is also added to that layer-store
   * fill, each regular file kept from the tree file just written (the caller commits or aborts it).
   */
  async applyLayer(tar: Readable, what: string, options: { keep?: LayerFill } = {}): Promise<LayerApplyStats> {
    if (this.busy || this.finished) {
      tar.destroy();
      throw new SmartError(
        'INTERNAL',
        this.finished ? 'applyLayer called after finish' : 'applyLayer called while another layer is being applied',
      );
    }
    this.busy = true;
    this.freshDirs.clear();
    this.unmapped = { entries: 0, first: '' };
    const state: LayerState = {
      what,
      stats: { entries: 0, bytes: 0, whiteouts: 0 },
      written: new Set(),
      skippedSpecial: 0,
      skippedRoot: 0,
      xattrs: { notSet: 0 },
      ...(options.keep ? { keep: options.keep } : {}),
    };
    // A layer kept by hardlinks or clones of the tree's files reads them back as they are written:
    // none is batched. One kept as copies has its small files' copies batched beside them.
    const writeFiles = (options.keep && options.keep.keep !== 'copy') || !this.batchSmallFiles ? undefined : batchWriter();
    if (writeFiles) state.batch = new FileBatch(writeFiles);
    // Not where owners are given only to some ids: the run has no id map to count those against.
    // A kept layer's runs fill its copy too, where the addon can (and the fill keeps copies).
    const native = nativeBinding();
    const runsKeep = !options.keep || (options.keep.keep === 'copy' && native?.extractFilesKeeps === true);
    const extract = !runsKeep || !this.extractRuns || (this.preserveOwnership && this.ids.partial) ? undefined : native?.extractFiles;
    if (extract) state.extract = extract;
    let inputError: unknown;
    // Stays attached: an error the input emits after we are done must not go unhandled.
    tar.on('error', (e) => {
      inputError ??= e;
    });
    const reader = new TarStreamReader(tar);
    const body = tarBody(reader);
    let ok = false;
    try {
      for (;;) {
        let h: Header | null | undefined;
        try {
          h = reader.nextSync();
        } catch (e) {
          throw new StreamFailure(e);
        }
        if (h === undefined) {
          // The files batched so far are made while the next bytes come.
          state.batch?.start();
          try {
            h = await reader.next();
          } catch (e) {
            throw new StreamFailure(e);
          }
        }
        if (h === null) break;
        state.stats.entries++;
        await this.applyEntry(h, body, state);
        state.lastEntry = h.name;
        if (state.runFrom) await this.extractRun(reader, state);
      }
      await state.batch?.drain();
      ok = true;
    } catch (e) {
      // A batched file's failure came before whatever failed after it; and nothing may still be writing.
      const earlier = await state.batch?.abandon();
      throw this.toLayerError(earlier ?? e, inputError, what, state.lastEntry);
    } finally {
      if (!ok) tar.destroy();
      this.busy = false;
    }
    if (state.skippedSpecial > 0) {
      this.onWarning?.(this.specialWarning(state));
    }
    if (state.skippedRoot > 0) this.onWarning?.(rootWarning(state));
    this.xattrWarning(state);
    this.unmappedWarning(what);
    return state.stats;
  }

  /**
   * Applies one layer given as entries already unpacked elsewhere (the local layer store): the same
   * semantics as `applyLayer`, with each regular file's content taken from `file` — cloned
   * (reflink) where the filesystem can, copied where it cannot, or hardlinked with `link` (the
   * tree then shares inodes with the store: for read-only uses). With `check`, each stored file is
   * first checked against its entry (storedFileChange): a change is StoredLayerDamage.
   */
  async applyEntries(entries: AsyncIterable<StoredEntry | StoredEntry[] | StoredIndexChunk>, what: string, options: { link: boolean; check?: boolean }): Promise<LayerApplyStats> {
    if (this.busy || this.finished) throw new SmartError('INTERNAL', 'applyEntries called while busy or after finish');
    this.busy = true;
    this.freshDirs.clear();
    this.unmapped = { entries: 0, first: '' };
    const state: LayerState = { what, stats: { entries: 0, bytes: 0, whiteouts: 0 }, written: new Set(), skippedSpecial: 0, skippedRoot: 0, xattrs: { notSet: 0 } };
    // Small files read from the store here are written on the pool, as a cold pull's are.
    const writeFiles = this.batchSmallFiles && !options.link ? batchWriter() : undefined;
    if (writeFiles) state.batch = new FileBatch(writeFiles);
    // Runs of small files made by the addon from the index's lines, as a cold pull's are from the
    // tar's bytes (extractRun): not where each stored file is checked first, nor where owners are
    // given only to some ids.
    const copyStored = writeFiles && this.extractRuns && !options.check && !(this.preserveOwnership && this.ids.partial) ? nativeBinding()?.copyStoredFiles : undefined;
    const storedFile = (entry: StoredEntry): StoredFile | undefined => (entry.file ? { path: entry.file, link: options.link, check: options.check ?? false } : undefined);
    try {
      // Entries one by one, in batches (LayerStore.entryBatches), or as the index's own lines (LayerStore.indexChunks).
      for await (const item of entries) {
        // Told apart by shape: the layer store's module is loaded only where a store is used.
        if (!Array.isArray(item) && 'text' in item) {
          state.copyStored = copyStored;
          await this.applyIndexChunk(item, state, storedFile);
          continue;
        }
        // Entries given parsed have no lines for a run.
        state.copyStored = undefined;
        for (const entry of Array.isArray(item) ? item : [item]) {
          state.stats.entries++;
          await this.applyEntry(entry.header, EMPTY_BODY, state, storedFile(entry));
        }
      }
      await state.batch?.drain();
    } catch (e) {
      // A batched file's failure came before whatever failed after it; and nothing may still be writing.
      throw (await state.batch?.abandon()) ?? e;
    } finally {
      this.busy = false;
    }
    if (state.skippedSpecial > 0) this.onWarning?.(this.specialWarning(state));
    if (state.skippedRoot > 0) this.onWarning?.(rootWarning(state));
    this.xattrWarning(state);
    this.unmappedWarning(what);
    return state.stats;
  }

  /** The layer's one warning about extended attributes it could not set, if any. */
  private xattrWarning(state: LayerState): void {
    const { notSet, why } = state.xattrs;
    if (notSet > 0) this.onWarning?.(`${state.what}: ${notSet} extended attribute(s) not set: ${why}`);
  }

  /** After the last layer: set directory modes and mtimes (writing children changes them). */
  async finish(): Promise<void> {
    if (this.finished) return;
    if (this.busy) throw new SmartError('INTERNAL', 'finish called while a layer is being applied');
    this.finished = true;
    try {
      for (const [rel, meta] of this.dirMeta) {
        const full = fsPath(path.join(this.root, rel));
        const st = lstatOrNull(full);
        if (!st?.isDirectory()) continue;
        if (this.dirWriteBits !== 0 && meta.mode !== (st.mode & 0o7777)) chmodSync(full, meta.mode);
        lutimesSync(full, meta.atime, meta.mtime);
      }
    } catch (e) {
      if (isSmartError(e)) throw e;
      throw new SmartError('STORAGE', `setting directory times under ${this.root}: ${(e as Error).message}`, {
        input: this.root,
        cause: e,
      });
    } finally {
      this.dirMeta.clear();
      this.knownDirs.clear();
    }
  }

  /** Why a layer could not be applied: the input's failure first (a download, a digest check, a cancellation), then ours. */
  private toLayerError(e: unknown, inputError: unknown, what: string, lastEntry: string | undefined): unknown {
    if (inputError !== undefined) {
      if (isSmartError(inputError) || isCancellation(inputError)) return inputError;
      return new SmartError('CORRUPT_ARCHIVE', `${what}: ${(inputError as Error)?.message ?? String(inputError)}`, {
        input: what,
        cause: inputError,
      });
    }
    if (isSmartError(e) || isCancellation(e)) return e;
    const original = e instanceof StreamFailure ? e.original : e;
    if (!(e instanceof StreamFailure) && isErrno(e)) {
      return new SmartError('STORAGE', `${what}: ${e.message}`, { input: what, cause: e, ...refusalHint(e) });
    }
    return tarParseError(original, { what, ...(lastEntry !== undefined ? { after: lastEntry } : {}) });
  }

  private async applyEntry(h: Header, body: EntryBody, state: LayerState, stored?: StoredFile): Promise<void> {
    const { what } = state;
    const name = h.name;
    if (name.includes('\0')) {
      throw new SmartError('CORRUPT_ARCHIVE', `${what}: entry name ${quoted(name)} holds a NUL byte`, { input: what });
    }
    const rel = normaliseEntryName(name);
    const xattrs = entryXattrs(pax(h));
    // Values no filesystem call takes (a uid past 32 bits, a time that is not one) stop the layer
    // here, named, rather than as Node's argument errors in the middle of writing.
    const meta = entryMeta(h, state);
    // Where the layer store keeps this entry's content (a regular file's), when the layer is kept.
    const keptAt = state.keep?.add(h);
    try {
      const slash = rel.lastIndexOf('/');
      const base = rel.slice(slash + 1);
      const smallFile = (h.type === 'file' || h.type === 'contiguous-file') && !stored && (h.size ?? 0) <= SMALL_FILE_BYTES;
      const batch = state.batch;
      // Whiteouts, hardlinks and the root wait for the files batched before them: they may remove,
      // link to or hold one of them (any other entry waits where its own name might: see below).
      if (batch && !batch.empty && (rel === '' || base.startsWith(WHITEOUT_PREFIX) || h.type === 'link')) await batch.drain();
      if (base.startsWith(WHITEOUT_PREFIX)) {
        await this.skipContent(h, body, meta, state, keptAt);
        await this.whiteout(rel, name, state);
        return;
      }
      // aufs metadata (.wh..wh.plnk/...) is never materialised, nor anything below it.
      if (rel.includes(`/${WHITEOUT_META_PREFIX}`) || rel.startsWith(WHITEOUT_META_PREFIX)) {
        await this.skipContent(h, body, meta, state, keptAt);
        return;
      }

      if (rel === '') {
        // The root itself (`./`, `..`, `""`): a directory gives it its metadata (as umoci); anything
        // else cannot replace it and is skipped, as containerd skips what resolves to the root.
        if (h.type === 'directory') this.applyDirMeta('', h, meta);
        else {
          await this.skipContent(h, body, meta, state, keptAt);
          state.skippedRoot++;
        }
        return;
      }

      if (h.type === 'character-device' || h.type === 'block-device') {
        // Only root outside a user namespace makes device nodes (mknod fails EPERM elsewhere); a
        // fifo needs no privilege, and is made by any user (as umoci's rootless unpacking makes it).
        if (!this.preserveOwnership || this.ids.partial) {
          state.skippedSpecial++;
          return;
        }
      }

      // Small files are read before anything is created: nothing to clean up if the tar breaks.
      let content: Buffer | undefined;
      if (smallFile) {
        const whole = body.whole();
        content = whole instanceof Promise ? await whole : whole;
      }

      const dir = rel.slice(0, Math.max(slash, 0));
      // A known directory's ancestors are all known real directories, so the walk would end there:
      // one lookup instead of one per component (a layer's entries mostly share their directory).
      let dirRel = dir;
      if (dir !== '' && !this.knownDirs.has(dir)) {
        const walk = (pending?: (rel: string) => boolean) =>
          walkInRoot(this.root, dir, {
            followLast: true,
            knownDirs: this.knownDirs,
            create: true,
            onCreate: (rel) => this.created(rel, state),
            setgidDirs: this.setgidDirs,
            what,
            ...(this.umask !== undefined ? { umask: this.umask } : {}),
            ...(pending ? { pending } : {}),
          });
        try {
          dirRel = walk(batch && !batch.empty ? (rel) => batch.pending(rel) : undefined);
        } catch (e) {
          if (!(e instanceof WalkReachedPending)) throw e;
          // It would look at a batched file: once made, the walk sees it as it is.
          await batch!.drain();
          dirRel = walk();
        }
      }
      const targetRel = joinRel(dirRel, base);
      // Normalised and not the root: no join needed.
      const target = this.rootSlash + targetRel;
      // In a directory this layer made, only this layer's entries can be at the entry's name: when
      // it is neither a directory of them nor a batched file, the batched files do not matter to it.
      const apart = batch !== undefined && this.freshDirs.has(dirRel) && !this.knownDirs.has(targetRel) && !batch.pending(targetRel);
      if (batch && !batch.empty && !apart && h.type !== 'directory') await batch.drain();

      const keep = state.keep && keptAt !== undefined ? { fill: state.keep, file: keptAt } : undefined;
      switch (h.type) {
        case 'file':
        case 'contiguous-file': {
          this.markWritten(targetRel, state);
          state.runFrom = (state.extract || state.copyStored) && this.freshDirs.has(dirRel) ? runFrom(name, rel, targetRel, false) : undefined;
          // What can be in the way of it there (a file or a link of this layer) is replaced as here.
          // Not batched before a run, which would wait for it.
          // A kept file's copy goes in the batch too, where the fill keeps copies (copyMeta).
          const copy = keep?.fill.copyMeta(h, meta);
          if (batch && apart && content && xattrs.length === 0 && !state.runFrom && (!keep || copy)) {
            await this.batchSmallFile(batch, target, targetRel, dirRel, h, meta, content, name, what);
            if (keep && copy) {
              const { fill, file } = keep;
              await batch.add({
                path: file,
                // Not a path of the tree: never asked for.
                rel: `\0${file}`,
                content,
                openMode: 0o600,
                chmodMode: copy.mode,
                uid: copy.uid,
                gid: copy.gid,
                atime: copy.atime,
                mtime: copy.mtime,
                fail: (e) => e,
                onFail: (e) => fill.failedCopy(e),
              });
            }
            state.stats.bytes += content.length;
            return;
          }
          const attrs = { list: xattrs, tally: state.xattrs };
          state.stats.bytes += stored
            ? await this.placeStoredFile(target, targetRel, h, meta, stored, attrs, batch && apart && xattrs.length === 0 && !state.runFrom ? { batch, dirRel, name, what } : undefined)
            : content
              ? await this.writeSmallFile(target, targetRel, h, meta, content, attrs, keep)
              : await this.writeLargeFile(target, targetRel, h, meta, body, attrs, keep);
          return;
        }
        case 'directory':
          this.markWritten(targetRel, state);
          await this.makeDir(target, targetRel, h, meta, state);
          setXattrs(fsPath(target), xattrs, state.xattrs);
          if ((state.extract || state.copyStored) && this.freshDirs.has(targetRel)) state.runFrom = runFrom(name, rel, targetRel, true);
          return;
        case 'symlink': {
          if (!h.linkname || h.linkname.includes('\0')) {
            throw new SmartError('CORRUPT_ARCHIVE', `${what}: symlink ${quoted(name)} has ${h.linkname ? 'a NUL byte in its target' : 'no target'}`, { input: what });
          }
          this.markWritten(targetRel, state);
          const targetFs = fsPath(target);
          await this.replace(target, targetRel, () => symlinkSync(fsPath(h.linkname!), targetFs));
          if (this.owns(meta)) {
            const { uid, gid } = meta;
            lchownSync(targetFs, uid, gid);
          }
          setXattrs(targetFs, xattrs, state.xattrs);
          const { atime, mtime } = meta;
          lutimesSync(targetFs, atime, mtime);
          return;
        }
        case 'link':
          await this.hardlink(target, targetRel, name, h, state);
          return;
        case 'character-device':
        case 'block-device':
        case 'fifo': {
          this.markWritten(targetRel, state);
          const kind = h.type === 'fifo' ? 'p' : h.type === 'block-device' ? 'b' : 'c';
          await this.replace(target, targetRel, () => mknodAt(this.root, target, kind, h.devmajor ?? 0, h.devminor ?? 0));
          const targetFs = fsPath(target);
          if (this.owns(meta)) {
            const { uid, gid } = meta;
            lchownSync(targetFs, uid, gid);
          }
          setXattrs(targetFs, xattrs, state.xattrs);
          chmodSync(targetFs, h.mode & 0o7777);
          const { atime, mtime } = meta;
          lutimesSync(targetFs, atime, mtime);
          return;
        }
        default:
          throw new SmartError(
            'CORRUPT_ARCHIVE',
            `${what}: entry ${quoted(name)} has a tar type this tool does not extract (${unknownTypeOf(h) ?? (h.type === null ? 'a type no reader names' : quoted(String(h.type), 40))})`,
            { input: what },
          );
      }
    } catch (e) {
      if (isSmartError(e) || e instanceof StreamFailure || !isErrno(e)) throw e;
      throw entryStorageError(what, name, e);
    }
  }

  /**
   * The entries after the one just applied, while they are small files in the directory it named
   * or lies in, made by the addon (extractFiles) straight from the tar's bytes: what applyEntry
   * would make of each, in the same calls. It stops before anything else, and leaves that entry
   * to applyEntry: one it cannot make (a name in use, a failed call) too, which then replaces what
   * is there or fails with the applier's own words. In a kept layer the run also makes each file's
   * copy in the layer store and writes its index line (LayerFill.runTarget, keptRun), as applyEntry
   * would: a bundle's pull of 45,000 small files into tmpfs took 1.18 s with each entry applied in
   * turn, 0.86 s so (medians of 5; a rootfs's, which keeps nothing, 0.56 s).
   */
  private async extractRun(reader: TarStreamReader, state: LayerState): Promise<void> {
    const from = state.runFrom!;
    const extract = state.extract!;
    state.runFrom = undefined;
    // A batched file could be one of the run's names, made after it.
    if (state.batch && !state.batch.empty) await state.batch.drain();
    const params = this.runParamsFor(from, SMALL_FILE_BYTES);
    const dir = Buffer.from(`${this.rootSlash}${from.dirRel}/`);
    const prefix = Buffer.from(from.prefix);
    const out = this.runOut;
    // A kept layer (while its fill keeps): each file's copy and index line made by the run too. A
    // prefix holding U+FFFD would need the line's mark of it (LayerFill.add): not run.
    const fill = state.keep?.notKept === undefined ? state.keep : undefined;
    const target = fill?.runTarget();
    if (fill && (!target || from.prefix.includes('\uFFFD'))) return;
    const keep = target && {
      files: Buffer.from(target.files),
      name: Buffer.from(JSON.stringify(from.prefix).slice(1, -1)),
      lines: (this.runLines ??= Buffer.allocUnsafe(RUN_LINES_BYTES)),
    };
    if (target) params[7] = target.chown ? 1 : 0;
    for (;;) {
      const at = reader.entryBytes();
      if (!at) return;
      if (keep) {
        params[6] = fill!.runTarget()?.next ?? -1;
        if (params[6] < 0) return;
        extract(at.chunk, at.start, dir, prefix, params, out, keep.files, keep.name, keep.lines, at.offset);
        fill!.keptRun(keep.lines, out[4]!, out[1]!);
      } else {
        extract(at.chunk, at.start, dir, prefix, params, out);
      }
      const consumed = out[0]!;
      if (consumed === 0) return;
      state.stats.entries += out[1]!;
      state.stats.bytes += out[2]!;
      state.lastEntry = entryNameAt(at.chunk, out[3]!);
      reader.advance(consumed);
      // Stopped before an entry, not at the chunk's end: applyEntry's (unless only the lines' room ran out).
      if (at.start + consumed < at.chunk.length && !(keep && out[5] === 1)) return;
    }
  }

  /** What a run of the addon's is told (extractFiles, copyStoredFiles): how to make the files of `from`'s directory, up to `maxSize` bytes each. */
  private runParamsFor(from: RunFrom, maxSize: number): Int32Array {
    const params = this.runParams;
    params[0] = this.umask ?? -1;
    params[1] = this.preserveOwnership ? 1 : 0;
    params[2] = this.creator.uid;
    params[3] = this.creator.gid;
    params[4] = this.setgidDirs.has(from.dirRel) ? 1 : 0;
    params[5] = maxSize;
    return params;
  }

  /**
   * Applies the entries of whole lines of a stored layer's index: each line as applyEntries applies
   * its entry, but for the runs after an entry that starts one (state.runFrom), whose small files
   * the addon makes straight from the lines and the store's files (copyStoredRun).
   */
  private async applyIndexChunk(chunk: StoredIndexChunk, state: LayerState, storedFile: (entry: StoredEntry) => StoredFile | undefined): Promise<void> {
    const { text } = chunk;
    for (let at = 0; at < text.length; ) {
      if (state.runFrom) {
        at += await this.copyStoredRun(chunk, at, state);
        if (at >= text.length) return;
      }
      // Every line ends in a newline (indexChunks); a last one without is read to the end all the same.
      const found = text.indexOf(10, at);
      const nl = found < 0 ? text.length : found;
      if (nl > at) {
        const entry = chunk.entryOf(text.toString('utf8', at, nl));
        state.stats.entries++;
        await this.applyEntry(entry.header, EMPTY_BODY, state, storedFile(entry));
      }
      at = nl + 1;
    }
  }

  /**
   * The run of small files from `at` in the chunk's lines, made by the addon (copyStoredFiles) into
   * the directory state.runFrom names, as applyEntry would make each (placeStoredFile); the bytes of
   * the lines it took. The run goes on into the next chunk when it took all of this one's.
   */
  private async copyStoredRun(chunk: StoredIndexChunk, at: number, state: LayerState): Promise<number> {
    const from = state.runFrom!;
    state.runFrom = undefined;
    // A name with U+FFFD is judged line by line (storedEntry: the index's mark of it).
    if (from.prefix.includes('\uFFFD')) return 0;
    // A batched file could be one of the run's names, made after it.
    if (state.batch && !state.batch.empty) await state.batch.drain();
    const out = this.runOut;
    const prefix = Buffer.from(JSON.stringify(from.prefix).slice(1, -1));
    state.copyStored!(chunk.text, at, chunk.filesPath, Buffer.from(`${this.rootSlash}${from.dirRel}/`), prefix, this.runParamsFor(from, STORED_READ_BYTES), out);
    const consumed = out[0]!;
    state.stats.entries += out[1]!;
    state.stats.bytes += out[2]!;
    if (at + consumed === chunk.text.length) state.runFrom = from;
    return consumed;
  }

  /** writeSmallFile's work, handed to the batch: the same calls, with the same modes, owner and times. */
  private batchSmallFile(
    batch: FileBatch,
    target: string,
    targetRel: string,
    dirRel: string,
    h: Header,
    meta: EntryMeta,
    content: BatchedFile['content'],
    name: string,
    what: string,
    sourceFail?: (e: NodeJS.ErrnoException) => Error,
  ): Promise<void> | undefined {
    const mode = h.mode & 0o7777;
    const createdWithMode = this.umask !== undefined && (mode & 0o7000) === 0 && (mode & this.umask) === 0;
    const chown = this.preserveOwnership && !this.createdAs(meta, dirRel) && this.owns(meta);
    return batch.add({
      path: fsPath(target),
      rel: targetRel,
      content,
      openMode: createdWithMode ? mode : 0o600,
      chmodMode: createdWithMode ? -1 : mode,
      uid: chown ? meta.uid : -1,
      gid: chown ? meta.gid : -1,
      atime: meta.atime,
      mtime: meta.mtime,
      fail: (e) => entryStorageError(what, name, e),
      ...(sourceFail ? { sourceFail } : {}),
    });
  }

  /** Consumes the content of an entry that is not written into the tree; a kept layer keeps it all the same. */
  private async skipContent(h: Header, body: EntryBody, meta: EntryMeta, state: LayerState, keptAt: string | undefined): Promise<void> {
    if (!state.keep || keptAt === undefined) return; // left unread: skipped with the next entry
    if ((h.size ?? 0) <= SMALL_FILE_BYTES) state.keep.keepContent(keptAt, await body.whole(), h, meta);
    else await state.keep.keepBody(keptAt, body.chunks(), h, meta);
  }

  /** Adds `rel` and its ancestors to the paths this layer wrote, unless its directory is fresh. */
  private markWritten(rel: string, state: LayerState): void {
    if (this.freshDirs.has(parentOf(rel))) return;
    let r = rel;
    while (r !== '' && !state.written.has(r)) {
      state.written.add(r);
      r = parentOf(r);
    }
    this.checkTracked(state);
  }

  /** A directory the layer made where nothing was: written, and fresh. */
  private created(rel: string, state: LayerState): void {
    this.markWritten(rel, state);
    this.freshDirs.add(rel);
    this.checkTracked(state);
  }

  /** Bounds what is held per path: every directory (knownDirs; dirMeta and freshDirs are subsets), and `written`. */
  private checkTracked(state: LayerState): void {
    if (state.written.size + this.knownDirs.size > this.maxTrackedPaths) {
      throw limitExceeded(`${state.what}: more than ${this.maxTrackedPaths} paths to keep in memory (directories, and what the layer writes into directories of lower layers)`, state.what);
    }
  }

  /** Forgets cached facts about `rel` and everything below it. */
  private forget(rel: string): void {
    if (rel === '') {
      this.knownDirs.clear();
      this.dirMeta.clear();
      this.freshDirs.clear();
      return;
    }
    const prefix = `${rel}/`;
    for (const set of [this.knownDirs, this.freshDirs]) {
      set.delete(rel);
      for (const k of set) if (k.startsWith(prefix)) set.delete(k);
    }
    this.dirMeta.delete(rel);
    for (const k of this.dirMeta.keys()) if (k.startsWith(prefix)) this.dirMeta.delete(k);
  }

  /** Removes whatever is at `rel` (recursively, never following a symlink). */
  private async removeExisting(full: string, rel: string, isDir: boolean): Promise<void> {
    if (isDir) {
      this.forget(rel);
      await rm(fsPath(full), { recursive: true, force: true });
    } else {
      try {
        unlinkSync(fsPath(full));
      } catch (e) {
        if (!isErrno(e, 'ENOENT')) throw e;
      }
    }
  }

  /** Runs `create`; if something is in the way, removes it and runs `create` again. */
  private async replace<T>(full: string, rel: string, create: () => T | Promise<T>): Promise<T> {
    try {
      return await create();
    } catch (e) {
      if (!isErrno(e, 'EEXIST')) throw e;
    }
    return this.removeAndCreate(full, rel, create);
  }

  /** `replace` for a synchronous `create`: no promise unless something is in the way (a layer's files mostly land where nothing is). */
  private replaceSync<T>(full: string, rel: string, create: () => T): T | Promise<T> {
    try {
      return create();
    } catch (e) {
      if (!isErrno(e, 'EEXIST')) throw e;
    }
    return this.removeAndCreate(full, rel, create);
  }

  private async removeAndCreate<T>(full: string, rel: string, create: () => T | Promise<T>): Promise<T> {
    const st = lstatSync(fsPath(full));
    await this.removeExisting(full, rel, st.isDirectory());
    return create();
  }

  /**
   * Writes a small file whole. Most layer files are small and most are owned by root with a plain
   * mode, so the calls that would change nothing are left out: the chown of a file that is created
   * with the owner and group it is to have, and the chmod of one created with its mode (no
   * setuid/setgid/sticky bit, none cleared by the umask, no layer copy to read it first). A pull of
   * the bench image (4,500 files) makes 34,000 system calls instead of 43,000.
   */
  private async writeSmallFile(target: string, rel: string, h: Header, meta: EntryMeta, content: Buffer, attrs: EntryXattrs, keep?: KeptFile): Promise<number> {
    const mode = h.mode & 0o7777;
    const createdWithMode = !keep && attrs.list.length === 0 && this.umask !== undefined && (mode & 0o7000) === 0 && (mode & this.umask) === 0;
    const opened = this.replaceSync(target, rel, () => openSync(fsPath(target), CREATE_FLAGS, createdWithMode ? mode : 0o600));
    const fd = typeof opened === 'number' ? opened : await opened;
    try {
      writeAllSync(fd, content);
      // Before its final mode, which may forbid reading it; a hardlink gets that mode with the tree's file.
      if (keep) await keep.fill.keepFile(keep.file, target, h, meta, content);
      if (this.preserveOwnership && !this.createdAs(meta, parentOf(rel)) && this.owns(meta)) {
        const { uid, gid } = meta;
        fchownSync(fd, uid, gid);
      }
      if (attrs.list.length > 0) setXattrs(fsPath(target), attrs.list, attrs.tally);
      // After chown: chown clears setuid/setgid.
      if (!createdWithMode) fchmodSync(fd, mode);
      const { atime, mtime } = meta;
      futimesSync(fd, atime, mtime);
    } finally {
      closeSync(fd);
    }
    return content.length;
  }

  /**
   * A file whose content is already on disk: cloned or copied (then given its metadata), or linked.
   * A small one is read whole and written as a cold pull writes it: here, or read and written by
   * the batch when `batched` (the file is apart from what the batch holds: applyEntry's rule).
   */
  private async placeStoredFile(
    target: string,
    rel: string,
    h: Header,
    meta: EntryMeta,
    stored: StoredFile,
    attrs: EntryXattrs,
    batched?: { batch: FileBatch; dirRel: string; name: string; what: string },
  ): Promise<number> {
    // The stored file gone (or unreadable) is the store's damage, not the tree's: the writer fetches the layer instead.
    const damage = (e: unknown): StoredLayerDamage | undefined => {
      if (isErrno(e, 'ENOENT') && e.path === stored.path) return new StoredLayerDamage(`${stored.path} is gone`, { cause: e });
      if (refusedToRead(e, stored.path)) return new StoredLayerDamage(`${stored.path}: ${systemWords(e as NodeJS.ErrnoException)}`, { cause: e, notReadable: true });
      return undefined;
    };
    const fromStore = <T,>(place: () => T) => (): T => {
      try {
        return place();
      } catch (e) {
        throw damage(e) ?? e;
      }
    };
    const change = stored.check ? storedFileChange(stored.path, h, meta, this.preserveOwnership && this.ids.maps(meta.uid, meta.gid)) : undefined;
    if (change) throw new StoredLayerDamage(`${stored.path} ${change}`);
    const targetFs = fsPath(target);
    if (stored.link) {
      // The stored file already carries the entry's mode, owner, times and attributes; a link shares them
      // (an owner the id map leaves out is counted all the same: the store could not give it either).
      this.owns(meta);
      await this.replace(target, rel, fromStore(() => linkSync(stored.path, targetFs)));
      return h.size ?? 0;
    }
    // A sparse file's segments only, so its holes stay holes (src/tar/sparse.ts).
    const segments = sparseSegments(h);
    const size = h.size ?? 0;
    if (!segments && size <= STORED_READ_BYTES) {
      // Read and written as a cold pull writes it: most layer files are this small, and a copy
      // (two opens, a clone tried, then a chmod, chown and utimes by path) makes twelve system
      // calls where this makes seven. 55,000 files of a few dozen bytes from the store into tmpfs:
      // 3.22 -> 3.07 s (medians of 5); the bench image's warm pull the same (0.82 s). Each call
      // costs 5-10 us on the VMs measured, and a cold pull of those files takes 2.3 s.
      if (batched) {
        // Read on the pool too (writeFiles reads the source first): what is not that size is the store's damage.
        const { batch, dirRel, name, what } = batched;
        const sourceFail = (e: NodeJS.ErrnoException): Error => {
          if (e.code === 'ENODATA' || e.code === 'EFBIG') return new StoredLayerDamage(`${stored.path} is not the size of the file it keeps`, { cause: e });
          if (e.code === 'ELOOP') return new StoredLayerDamage(`${stored.path} is not a file`, { cause: e });
          return damage(Object.assign(e, { path: stored.path })) ?? entryStorageError(what, name, e);
        };
        await this.batchSmallFile(batch, target, rel, dirRel, h, meta, { source: fsPath(stored.path), size }, name, what, sourceFail);
        return size;
      }
      const content = fromStore(() => readWhole(stored.path, size))();
      if (content.length !== size) throw new StoredLayerDamage(`${stored.path} is not the size of the file it keeps`);
      return this.writeSmallFile(target, rel, h, meta, content, attrs);
    }
    const copy = segments
      ? () => {
          if (!copySparseFileSync(stored.path, targetFs, segments, size)) throw new StoredLayerDamage(`${stored.path} is shorter than the file it keeps`);
        }
      : () => copyFileSync(stored.path, targetFs, fsConstants.COPYFILE_EXCL | fsConstants.COPYFILE_FICLONE);
    await this.replace(target, rel, fromStore(copy));
    // A stored file cut short or grown (a cache restored in part) is the store's damage, not the layer.
    if (!segments && lstatSync(targetFs).size !== size) throw new StoredLayerDamage(`${stored.path} is not the size of the file it keeps`);
    if (this.owns(meta)) {
      const { uid, gid } = meta;
      lchownSync(targetFs, uid, gid);
    }
    setXattrs(targetFs, attrs.list, attrs.tally);
    chmodSync(targetFs, h.mode & 0o7777);
    const { atime, mtime } = meta;
    lutimesSync(targetFs, atime, mtime);
    return h.size ?? 0;
  }

  private async writeLargeFile(
    target: string,
    rel: string,
    h: Header,
    meta: EntryMeta,
    body: EntryBody,
    attrs: EntryXattrs,
    keep?: KeptFile,
  ): Promise<number> {
    const file = await this.replace(target, rel, () => open(fsPath(target), CREATE_FLAGS, 0o600));
    let bytes = 0;
    try {
      // A sparse file's holes stay holes (src/tar/sparse.ts).
      bytes = await writeFileChunks(file, body.chunks());
      if (keep) await keep.fill.keepFile(keep.file, target, h, meta);
      if (this.owns(meta)) {
        const { uid, gid } = meta;
        await file.chown(uid, gid);
      }
      if (attrs.list.length > 0) setXattrs(fsPath(target), attrs.list, attrs.tally);
      // After chown: chown clears setuid/setgid.
      await file.chmod(h.mode & 0o7777);
      const { atime, mtime } = meta;
      await file.utimes(atime, mtime);
    } catch (e) {
      await file.close().catch(() => undefined);
      throw e;
    }
    await file.close();
    return bytes;
  }

  private async makeDir(target: string, rel: string, h: Header, meta: EntryMeta, state: LayerState): Promise<void> {
    // A batched file of the name is made first (this replaces it), and so are those made in a
    // directory whose set-group-ID bit or group changes now (they take its group as it is).
    const batch = state.batch;
    if (batch && !batch.empty && (batch.pending(rel) || this.setgidDirs.has(rel) || (h.mode & S_ISGID) !== 0)) await batch.drain();
    // Made with its mode where nothing would change it (no special bit, none the umask clears, no
    // set-group-ID bit from its parent), and by its owner: then no chmod nor chown follows.
    const mode = (h.mode & 0o7777) | this.dirWriteBits;
    const parentSetgid = this.setgidDirs.has(parentOf(rel));
    const withMode = (mode & 0o7000) === 0 && this.umask !== undefined && (mode & this.umask) === 0 && !parentSetgid;
    let made = false;
    if (!this.knownDirs.has(rel)) {
      made = true;
      const targetFs = fsPath(target);
      try {
        mkdirSync(targetFs, withMode ? mode : 0o700);
      } catch (e) {
        if (!isErrno(e, 'EEXIST')) throw e;
        if (!lstatSync(targetFs).isDirectory()) {
          await this.removeExisting(target, rel, false);
          mkdirSync(targetFs, withMode ? mode : 0o700);
        } else made = false;
      }
      this.knownDirs.add(rel);
      if (made) this.created(rel, state);
    }
    this.applyDirMeta(rel, h, meta, made && withMode, made && !parentSetgid && meta.uid === this.creator.uid && meta.gid === this.creator.gid);
  }

  /**
   * Whether to give an entry its owner: when running as root, and the id map has its ids (else it
   * keeps this process's, counted for the layer's warning).
   */
  private owns(meta: EntryMeta): boolean {
    if (!this.preserveOwnership) return false;
    if (this.ids.maps(meta.uid, meta.gid)) return true;
    if (this.unmapped.entries++ === 0) this.unmapped.first = `${meta.uid}:${meta.gid}`;
    return false;
  }

  /** Why the layer's device nodes were not made. */
  private specialWarning(state: LayerState): string {
    const why = this.preserveOwnership ? 'a user namespace cannot create them' : 'creating them needs root';
    return `${state.what}: skipped ${state.skippedSpecial} device node(s): ${why}`;
  }

  /** The warning for the entries of a layer whose owners the id map left out, if any; the count starts again. */
  private unmappedWarning(what: string): void {
    const { entries, first } = this.unmapped;
    this.unmapped = { entries: 0, first: '' };
    if (entries === 0) return;
    this.onWarning?.(`${what}: ${entries} entr${entries === 1 ? 'y keeps' : 'ies keep'} this process's owner: this user namespace does not map the ids the image gives (${first}${entries > 1 ? ' first' : ''}; see /proc/self/uid_map and gid_map)`);
  }

  /** Whether a file made now in `dirRel` gets `meta`'s owner and group without a chown. */
  private createdAs(meta: EntryMeta, dirRel: string): boolean {
    return meta.uid === this.creator.uid && meta.gid === this.creator.gid && !this.setgidDirs.has(dirRel);
  }

  /** A directory's owner and mode now, its times at finish(); `hasMode`, `hasOwner`: it was just made with them. */
  private applyDirMeta(rel: string, h: Header, meta: EntryMeta, hasMode = false, hasOwner = false): void {
    const full = fsPath(path.join(this.root, rel));
    if (!hasOwner && this.owns(meta)) {
      const { uid, gid } = meta;
      lchownSync(full, uid, gid);
    }
    const mode = h.mode & 0o7777;
    if (!hasMode) chmodSync(full, mode | this.dirWriteBits);
    if (mode & S_ISGID) this.setgidDirs.add(rel);
    else this.setgidDirs.delete(rel);
    const { atime, mtime } = meta;
    this.dirMeta.set(rel, { mode, atime, mtime });
  }

  private async hardlink(target: string, targetRel: string, name: string, h: Header, state: LayerState): Promise<void> {
    const { what } = state;
    const linkname = h.linkname ?? '';
    if (linkname === '' || linkname.includes('\0')) {
      throw new SmartError('CORRUPT_ARCHIVE', `${what}: hardlink ${quoted(name)} has ${linkname ? 'a NUL byte in its target' : 'no target'}`, { input: what });
    }
    // As containerd's hardlinkRootPath: the target's parent is resolved inside the root (`..` stops
    // at the root, symlinks are scoped to it), its last component is not followed: a hardlink to
    // a symlink links the symlink. A last component of `.` or `..` (or none) names a directory.
    const slash = linkname.lastIndexOf('/');
    const base = linkname.slice(slash + 1);
    const srcRel =
      base === '' || base === '.' || base === '..'
        ? walkInRoot(this.root, linkname, { followLast: true, knownDirs: this.knownDirs, what })
        : joinRel(walkInRoot(this.root, linkname.slice(0, Math.max(slash, 0)), { followLast: true, knownDirs: this.knownDirs, what }), base);
    const src = path.join(this.root, srcRel);
    const st = lstatOrNull(src);
    if (!st) {
      throw new SmartError('CORRUPT_ARCHIVE', `${what}: hardlink ${quoted(name)} points to ${quoted(linkname)}, which does not exist`, {
        input: what,
      });
    }
    if (st.isDirectory()) {
      throw new SmartError('CORRUPT_ARCHIVE', `${what}: hardlink ${quoted(name)} points to a directory (${quoted(linkname)})`, {
        input: what,
      });
    }
    this.markWritten(targetRel, state);
    if (srcRel === targetRel) return; // a link to itself: already there
    await this.replace(target, targetRel, () => linkSync(fsPath(src), fsPath(target)));
  }

  /** `DIR/.wh.NAME` removes DIR/NAME; `DIR/.wh..wh..opq` empties DIR of what lower layers put there. */
  private async whiteout(rel: string, name: string, state: LayerState): Promise<void> {
    const { what } = state;
    const slash = rel.lastIndexOf('/');
    const base = rel.slice(slash + 1);
    const parentRel = slash < 0 ? '' : rel.slice(0, slash);
    if (base !== WHITEOUT_OPAQUE && base.startsWith(WHITEOUT_META_PREFIX)) return; // aufs metadata
    const victim = base.slice(WHITEOUT_PREFIX.length);
    if (base !== WHITEOUT_OPAQUE && (victim === '' || victim === '.' || victim === '..')) {
      throw new SmartError('UNSAFE_ARCHIVE', `${what}: whiteout ${quoted(name)} names no file in its directory`, { input: what });
    }
    const dirRel = walkInRoot(this.root, parentRel, { followLast: true, knownDirs: this.knownDirs, what });
    state.stats.whiteouts++;
    if (base === WHITEOUT_OPAQUE) {
      const st = lstatOrNull(path.join(this.root, dirRel));
      if (!st?.isDirectory()) return;
      for (const child of readNames(path.join(this.root, dirRel))) await this.removeLower(joinRel(dirRel, child), state);
      return;
    }
    await this.removeLower(joinRel(dirRel, victim), state);
  }

  /**
   * Removes `rel` as a lower layer left it. What the current layer wrote stays (a whiteout applies
   * to lower layers only), but lower-layer contents of a directory it kept go.
   */
  private async removeLower(rel: string, state: LayerState): Promise<void> {
    if (this.freshDirs.has(rel) || this.freshDirs.has(parentOf(rel))) return; // all the layer's own
    const full = path.join(this.root, rel);
    const st = lstatOrNull(full);
    if (!st) return;
    if (!state.written.has(rel)) {
      await this.removeExisting(full, rel, st.isDirectory());
      return;
    }
    if (!st.isDirectory()) return;
    for (const child of readNames(full)) await this.removeLower(joinRel(rel, child), state);
  }
}

function rootWarning(state: LayerState): string {
  return `${state.what}: skipped ${state.skippedRoot} entr${state.skippedRoot === 1 ? 'y' : 'ies'} naming the root directory itself (only a directory can)`;
}

const CREATE_FLAGS = fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW;

/** This process's umask, read without changing it (process.umask() with no argument is deprecated: it sets it twice); undefined where /proc says nothing. */
function processUmask(): number | undefined {
  try {
    const m = /^Umask:\s*([0-7]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
    return m ? parseInt(m[1]!, 8) : undefined;
  } catch {
    return undefined;
  }
}
