/**
 * `rootfs:DIR` and `bundle:DIR`: the image flattened into a root filesystem (a bundle adds the
 * runtime `config.json` that `runc run` reads). Built in a hidden sibling directory (0700: no other
 * user reaches the image's setuid programs through it) and renamed into place only when complete,
 * so a failed or killed pull leaves the old DIR as it was and no partial one; the next pull
 * removes what a killed one left beside DIR. A bundle stays 0700, as umoci makes it.
 *
 * Layers already in the local layer store are laid down from it (cloned, copied or hardlinked);
 * the others stream straight into the tree as they arrive, fetched in parallel, those that arrive
 * before their turn spooled (spool.ts), so a cold pull writes each file once. A fetched layer is
 * also kept in the store when that is free (a clone, or a hardlink with `link`), for bundles, or
 * when asked (`keepLayers`).
 *
 * DIR is replaced only when that loses nothing: it is new, empty, or a previous result of a pull
 * (marked: `DIR/.smart-pull.json` in a bundle, beside `config.json`; `.DIR.smart-pull.json` next
 * to a root filesystem, naming the directory by inode and birth time, so that the tree a container
 * sees holds nothing of ours; a bundle only while it holds no more than its pull made, config.json
 * unchanged: runc bundles are used by editing it), or `force` is set. Never `/`, the current
 * directory or one holding it, nor a directory that holds a protected path (the source, the layer
 * store) or lies inside one, real paths compared.
 *
 * A destination that is a mount point (a tmpfs, or a volume a container was given: `docker run -v
 * …:/out`, a pod's emptyDir) cannot be renamed: the tree is built in a hidden directory inside it
 * instead, and put in place by moving its top-level entries up once complete (the previous
 * result's moved aside first, then removed), so only that swap is not one step.
 */
import { setMaxListeners } from 'node:events';
import { randomUUID } from 'node:crypto';
import { constants as fsConstants, type BigIntStats } from 'node:fs';
import fs, { type FileHandle } from 'node:fs/promises';
import { PassThrough, type Readable } from 'node:stream';
import type { KeepHow, LayerFill, LayerStore } from '../../cache/layer-store.js';
import { StoredLayerDamage } from '../../cache/stored-layer-damage.js';
import path from 'node:path';
import { SmartError, cannotTakeMore, isErrno, machineRefusal, rethrowRefusal, systemWords } from '../../errors.js';
import { TaskGroup } from '../../pipeline/concurrency.js';
import { nativeBinding } from '../../pipeline/native.js';
import { isStale, sweepLocal, type Cleaned, type Owner } from '../../storage/leftovers.js';
import { ownedId, ownerOfId } from '../../storage/aside.js';
import { withFileLock } from '../../storage/file-lock.js';
import { makeDirectories, mkdirp, type MadeDirectories } from '../../storage/made-directories.js';
import { sha256Digest, shortDigest } from '../../oci/digest.js';
import type { Image, ImageWriteOptions, ImageWriteResult, ImageWriter, Layer, OpenOptions } from '../../oci/image.js';
import { makeRuntimeSpec, thisProcessRunner } from './runtime-spec.js';
import { RootfsApplier } from './apply.js';
import { Spool, SpoolBudget, openUnlinked } from '../../pipeline/spool.js';
import { BlobCache } from '../../cache/blob-cache.js';

export interface RootfsWriterOptions {
  /** Write a runtime bundle (DIR/config.json + DIR/rootfs) instead of a bare root filesystem. */
  bundle: boolean;
  onWarning?: (message: string) => void;
  /** Where layers are kept between pulls; without one, every layer streams straight into the tree. */
  layerStore?: LayerStore;
  /** Hardlink files from the layer store instead of cloning or copying them (read-only uses). */
  link?: boolean;
  /**
   * Keep the layers this pull fetches unpacked in the layer store (`--keep-layers`). Default: when
   * that costs no second copy of the files (the store's filesystem clones them, or `link`), and for
   * bundles; a root filesystem on a filesystem that copies is written once, and the compressed
   * blobs fetched from a registry or S3 are kept instead (cache/blob-cache.ts). False: nothing is
   * kept, not even those.
   */
  keepLayers?: boolean;
  /** Bytes of layers fetched ahead of their turn held in memory; beyond, they are spooled to a file beside DIR (default 64 MiB). */
  spoolMemory?: number;
  /** Replace a non-empty directory that no pull made (`--force`). */
  force?: boolean;
  /** Paths the destination must neither hold nor lie inside, and what each is: the source, the layer store. */
  protect?: readonly { path: string; what: string }[];
}

/** The mark of a pull's result: inside a bundle, beside its config.json. */
const BUNDLE_MARK = '.smart-pull.json';

interface PullMark {
  pulledBy: 'smartlayer';
  manifest: string;
  pulledAt: string;
  /** A root filesystem's mark lies outside it: it names the directory (`identity`), or both while they swap. */
  dirs?: string[];
  /** A bundle's: the sha256 of the config.json written beside it, which the user may edit since (a mount added). */
  config?: string;
}

/** What a bundle holds that its pull made: anything else beside them is the user's. */
const BUNDLE_ENTRIES = new Set(['config.json', 'rootfs', BUNDLE_MARK]);

/** `names` in a message: the first few, then how many more. */
function someNames(names: string[]): string {
  const shown = names.slice(0, 3).join(', ');
  return names.length > 3 ? `${shown} and ${names.length - 3} more` : shown;
}

/** A directory as a root filesystem's mark names it: device, inode and birth time (an inode number is soon reused). */
function identity(st: BigIntStats): string {
  return `${st.dev}:${st.ino}:${st.birthtimeNs}`;
}


/** Whether `inner` is `outer` or lies inside it (both real, absolute paths). */
function within(inner: string, outer: string): boolean {
  return inner === outer || inner.startsWith(outer.endsWith(path.sep) ? outer : `${outer}${path.sep}`);
}

/** The real path of `p`, which need not exist: the real path of its nearest existing ancestor, then the rest. */
async function realPath(p: string): Promise<string> {
  const abs = path.resolve(p);
  const rest: string[] = [];
  for (let at = abs; ; at = path.dirname(at)) {
    try {
      return path.join(await fs.realpath(at), ...rest.reverse());
    } catch (e) {
      if (at === path.dirname(at)) throw e;
      rest.push(path.basename(at));
    }
  }
}

/** How files from the layer store are put into the tree, for --json: 'stream' when no layer came from the store. */
export type Materialize = KeepHow | 'stream';

/** What spools hold in memory at most by default, all layers together. */
const SPOOL_MEMORY = 64 * 1024 * 1024;

/** What is known of a layer when its turn comes: in the store, or a stream (kept in the store when `fill`). */
type LayerPlan = { from: 'store'; how: 'present' | 'waited' } | { from: 'stream'; read: () => Readable; fill?: LayerFill };

export class RootfsWriter implements ImageWriter {
  /** The destination: the path given, or, when that is a symlink to a directory, the directory it names (from prepare). */
  private target: string;
  private prepared: Promise<Cleaned[]> | undefined;
  /** The destination's parent, made by prepare if missing (and taken away again by abandon, once empty). */
  private parent: MadeDirectories | undefined;
  /** The destination is a mount point: the tree is built inside it and moved up (see the file's comment). */
  private inPlace = false;

  constructor(
    readonly name: string,
    private readonly dir: string,
    private readonly options: RootfsWriterOptions,
  ) {
    this.target = path.resolve(dir);
  }

  private get markBeside(): string {
    return path.join(path.dirname(this.target), `.${path.basename(this.target)}.smart-pull.json`);
  }

  /**
   * The lock held while a pull puts its tree in place (see write): beside the destination, or, in
   * a mount point, inside it (its parent may be read-only: `docker run --read-only -v vol:/out`).
   */
  private get lock(): string {
    if (this.inPlace) return path.join(this.target, IN_PLACE_LOCK);
    return path.join(path.dirname(this.target), `.${path.basename(this.target)}.smart-lock`);
  }

  /** A name beside the destination for something of this run: `new` (being built) or `old` (the previous result, moved aside). */
  private aside(kind: 'new' | 'old'): string {
    return path.join(path.dirname(this.target), `.${path.basename(this.target)}.smart-${kind}-${ownedId()}`);
  }

  /**
   * Checks that the destination may be written (before anything is fetched) and removes what killed
   * pulls left beside it and in the layer store. Called by `write` when not called before.
   */
  prepare(): Promise<Cleaned[]> {
    this.prepared ??= (async () => {
      // A symlink to a directory (`out -> /scratch/out`) is followed, as tar -C follows it: the tree
      // replaces the directory it names and the link stays; renamed onto the link, it would replace the link.
      const real = await realPath(this.target);
      if ((await fs.lstat(this.target).catch(() => undefined))?.isSymbolicLink() && (await fs.stat(real).catch(() => undefined))?.isDirectory()) this.target = real;
      const target = this.target;
      // None when it was removed: process.cwd() then throws (ENOENT, uv_cwd), before any promise.
      const cwd = await Promise.resolve()
        .then(() => realPath(process.cwd()))
        .catch(() => undefined);
      if (real === path.parse(real).root || (cwd !== undefined && within(cwd, real))) {
        throw new SmartError('USAGE', `${this.name}: refusing to replace ${target}, which is / or holds the current directory`, { input: this.dir });
      }
      for (const p of this.options.protect ?? []) {
        const other = await realPath(p.path);
        if (within(other, real) || within(real, other)) {
          const how = within(other, real) ? 'holds' : 'lies inside';
          throw new SmartError('USAGE', `${this.name}: refusing to replace ${target}, which ${how} ${p.what} ${p.path}`, {
            input: this.dir,
            hint: `pull into a directory outside ${p.what}`,
          });
        }
      }
      this.parent = await makeDirectories(path.dirname(target));
      this.inPlace = await isMountPoint(target);
      const cleaned = await this.removeLeftovers();
      await this.checkReplaceable();
      if (this.options.layerStore) cleaned.push(...(await this.options.layerStore.removeStale()));
      return cleaned;
    })();
    return this.prepared;
  }

  /**
   * Refuses a destination whose replacement would lose what no pull made (unless forced): anything
   * but a directory; a non-empty directory without the mark of a pull; a bundle holding more than
   * its pull made, or whose config.json was changed since. A root filesystem a pull made is the
   * image's tree: replaced whole, with what was written into it.
   */
  private async checkReplaceable(): Promise<BigIntStats | undefined> {
    const existing = await fs.lstat(this.target, { bigint: true }).catch(() => undefined);
    if (!existing) return undefined;
    if (!existing.isDirectory()) {
      throw new SmartError('USAGE', `${this.name}: ${this.target} exists and is not a directory`, { input: this.dir });
    }
    if (this.options.force) return existing;
    // Inside a mount point, the trees pulls are building there are not the user's, nor its filesystem's lost+found.
    const children: string[] = [];
    for (const name of await fs.readdir(this.target)) if (!(this.inPlace && (await leftInMountPoint(this.target, name)))) children.push(name);
    if (children.length === 0) return existing;
    const made = await this.pullResult(existing);
    if (!made) {
      throw new SmartError('USAGE', `${this.name}: ${this.target} is not empty and was not made by smart pull; refusing to replace it`, {
        input: this.dir,
        hint: 'pull into a new or empty directory, or pass --force to replace this one',
      });
    }
    if (made.kind === 'bundle') {
      const lost = await this.notOfPull(children, made);
      if (lost.length > 0) {
        throw new SmartError('USAGE', `${this.name}: refusing to replace the bundle ${this.target}, which holds what its pull did not make and would be lost: ${someNames(lost)}`, {
          input: this.dir,
          hint: 'move that out of it, or pass --force to replace it all the same',
        });
      }
    }
    return existing;
  }

  /** The directory as a previous result of a pull: a bundle (its mark inside), or a root filesystem (its mark beside, naming it). */
  private async pullResult(st: BigIntStats): Promise<{ kind: 'bundle'; mark: Partial<PullMark>; markFile: BigIntStats } | { kind: 'rootfs' } | undefined> {
    const read = async (file: string): Promise<Partial<PullMark> | undefined> => {
      try {
        return JSON.parse(await fs.readFile(file, 'utf8')) as Partial<PullMark>;
      } catch {
        return undefined;
      }
    };
    const inside = path.join(this.target, BUNDLE_MARK);
    const mark = await read(inside);
    const markFile = await fs.lstat(inside, { bigint: true }).catch(() => undefined);
    if (mark?.pulledBy === 'smartlayer' && markFile) return { kind: 'bundle', mark, markFile };
    const beside = await read(this.markBeside);
    return beside?.pulledBy === 'smartlayer' && (beside.dirs ?? []).includes(identity(st)) ? { kind: 'rootfs' } : undefined;
  }

  /**
   * What a bundle holds that its pull did not make, as the message names it: entries beside
   * config.json, rootfs/ and the mark (a file of notes, a script); a config.json changed since the
   * pull wrote it (a mount added), by its digest in the mark, or, in a mark of an earlier version
   * that recorded none, by a modification time later than the mark's (the pull wrote it first).
   */
  private async notOfPull(children: string[], made: { mark: Partial<PullMark>; markFile: BigIntStats }): Promise<string[]> {
    const lost = children.filter((name) => !BUNDLE_ENTRIES.has(name));
    const rootfs = await fs.lstat(path.join(this.target, 'rootfs')).catch(() => undefined);
    if (rootfs && !rootfs.isDirectory()) lost.push('rootfs (not the directory its pull made)');
    const configFile = path.join(this.target, 'config.json');
    const config = await fs.lstat(configFile, { bigint: true }).catch(() => undefined);
    if (config) {
      const changed =
        !config.isFile() ||
        (typeof made.mark.config === 'string' ? sha256Digest(await fs.readFile(configFile)) !== made.mark.config : config.mtimeNs > made.markFile.mtimeNs);
      if (changed) lost.push('config.json (changed since the pull wrote it)');
    }
    return lost;
  }

  /** Writes a root filesystem's mark beside it, naming these directories (atomically: a temporary name, then a rename). */
  private async markRootfs(manifest: string, dirs: BigIntStats[]): Promise<void> {
    const mark: PullMark = { pulledBy: 'smartlayer', manifest, pulledAt: new Date().toISOString(), dirs: dirs.map(identity) };
    const tmp = this.aside('new');
    await fs.writeFile(tmp, `${JSON.stringify(mark)}\n`);
    await fs.rename(tmp, this.markBeside);
  }

  /**
   * Removes what killed pulls into this destination left beside it: trees being built, and
   * previous results moved aside (put back instead, when the destination itself is missing).
   * Never what a live pull uses; entries of versions that recorded no owner go after a day.
   */
  private async removeLeftovers(): Promise<Cleaned[]> {
    const parent = path.dirname(this.target);
    const prefix = `.${path.basename(this.target)}.smart-`;
    const kindOf = (name: string): { kind: 'new' | 'old'; owner: Owner | null } | undefined => {
      if (!name.startsWith(prefix)) return undefined;
      const rest = name.slice(prefix.length);
      const m = /^(new|old)-(.*)$/.exec(rest);
      const owner = m ? ownerOfId(m[2]!) : undefined;
      if (owner) return { kind: m![1] as 'new' | 'old', owner };
      // Earlier versions' names, with no owner: a bare UUID (being built), old-UUID (moved aside).
      if (owner === null && m![1] === 'old') return { kind: 'old', owner: null };
      if (ownerOfId(rest) === null) return { kind: 'new', owner: null };
      return undefined;
    };
    // A killed replacement may have moved the previous result aside and not put the new one in place.
    if (!(await fs.lstat(this.target).catch(() => undefined))) {
      for (const name of await fs.readdir(parent).catch(() => [] as string[])) {
        const found = kindOf(name);
        if (found?.kind !== 'old') continue;
        const st = await fs.lstat(path.join(parent, name)).catch(() => undefined);
        if (!st || !isStale(found.owner ?? undefined, Date.now() - st.mtimeMs)) continue;
        await fs.rename(path.join(parent, name), this.target);
        this.options.onWarning?.(`${this.name}: put back ${this.target}, which a killed pull had moved aside to ${name}`);
        break;
      }
    }
    const cleaned = await sweepLocal(parent, (name) => {
      const found = kindOf(name);
      return found ? found.owner : undefined;
    });
    // Built inside a mount point: what a killed pull left there, which the tree would show.
    if (this.inPlace) cleaned.push(...(await sweepLocal(this.target, (name) => (IN_PLACE_ASIDE.test(name) ? ownerOfId(name.replace(IN_PLACE_ASIDE, '')) : undefined))));
    return cleaned;
  }

  async abandon(): Promise<void> {
    await this.parent?.undo();
  }

  async write(image: Image, options: ImageWriteOptions): Promise<ImageWriteResult> {
    const cleaned = await this.prepare();
    const target = this.target;
    const inPlace = this.inPlace;
    // The tree is built where no other user reaches it (it holds the image's setuid-root programs
    // and file capabilities, which another user could run): in `rootfs/` of a 0700 directory. That
    // directory is the bundle (0700, as umoci makes it); a root filesystem is its `rootfs/` alone,
    // put in place with the mode the image gives its root.
    const staging = inPlace ? path.join(target, `.smart-new-${ownedId()}`) : this.aside('new');
    if (inPlace) await fs.mkdir(staging, { mode: 0o700 }).catch(rethrowRefusal(`cannot write ${this.name}`));
    // The first entry in the parent: another pull's undo may have taken the parent meanwhile.
    else await this.parent!.entry(() => fs.mkdir(staging, { mode: 0o700 })).catch(rethrowRefusal(`cannot write ${this.name}`));
    const details: Record<string, unknown> = {};
    try {
      const rootfs = path.join(staging, 'rootfs');
      /** What is put in place: the bundle, or the root filesystem alone. */
      const built = this.options.bundle ? staging : rootfs;
      await fs.mkdir(rootfs, { mode: 0o755 });
      // The tree's root is 0755 (as Docker's always is) whatever this process's umask (027 made it
      // 0750, where the image's user could not look a path up); an image's own `./` entry still sets it.
      await fs.chmod(rootfs, 0o755);
      const applier = new RootfsApplier(rootfs, {
        preserveOwnership: process.getuid?.() === 0,
        ...(this.options.onWarning ? { onWarning: this.options.onWarning } : {}),
      });
      Object.assign(details, await this.layDown(image, applier, staging, options));
      await applier.finish();
      const manifest = image.manifest.digest;
      if (this.options.bundle) {
        const onWarning = this.options.onWarning;
        const spec = await makeRuntimeSpec(image.config, rootfs, {
          // For runc as the user pulling it (README: smart pull … bundle:./app && runc run --bundle ./app app).
          runner: thisProcessRunner(),
          ...(onWarning ? { onWarning: (message: string) => onWarning(`${this.name}: ${message}`) } : {}),
        });
        const specText = `${JSON.stringify(spec, null, 2)}\n`;
        await fs.writeFile(path.join(staging, 'config.json'), specText);
        // The config's digest: the next pull replaces the bundle only while config.json is as written here.
        const mark: PullMark = { pulledBy: 'smartlayer', manifest, pulledAt: new Date().toISOString(), config: sha256Digest(specText) };
        await fs.writeFile(path.join(staging, BUNDLE_MARK), `${JSON.stringify(mark)}\n`);
      }
      // One swap at a time into this destination: two pulls into it at once both found it missing
      // (the second rename then failed, ENOTEMPTY), or the second's mark beside it replaced the
      // first's and named a tree that never got there. Under the lock the last pull replaces the
      // tree of the one before, as when they run one after the other.
      const old = inPlace ? path.join(target, `.smart-old-${ownedId()}`) : this.aside('old');
      const replaced = await withFileLock(this.lock, this.name, async () => {
        // Again, now: the directory may have been filled while the image was fetched.
        const existing = await this.checkReplaceable();
        if (inPlace) {
          // The mount point stays the tree's directory: its mark names it, before and after. Where
          // its parent is read-only there is none: said, as the next pull into it then needs --force.
          if (!this.options.bundle) {
            await this.markRootfs(manifest, [existing!]).catch((e: unknown) => {
              const refused = ['EROFS', 'EACCES', 'EPERM'].find((code) => isErrno(e, code));
              if (!refused) throw e;
              this.options.onWarning?.(`${this.name}: no mark of this pull could be written beside ${target} (${refused}): the next pull into it needs --force`);
            });
          }
          await replaceContents(built, target, old, this.options.onWarning);
          // A root filesystem's mark from before goes, where the parent lets it (a bundle's is inside).
          if (this.options.bundle) await fs.rm(this.markBeside, { force: true }).catch(() => undefined);
          return true;
        }
        const tree = await fs.stat(built, { bigint: true });
        // Both directories carry the mark while they swap, so that a pull killed in between leaves a marked one.
        if (!this.options.bundle) await this.markRootfs(manifest, existing ? [existing, tree] : [tree]);
        await replaceDirectory(built, target, existing !== undefined, old);
        if (!this.options.bundle && existing) await this.markRootfs(manifest, [tree]);
        if (this.options.bundle) await fs.rm(this.markBeside, { force: true });
        return existing !== undefined;
      });
      // The previous tree, out of the way: removed without holding the lock (a large tree takes a while).
      if (replaced) await fs.rm(old, { recursive: true, force: true });
      // What held a root filesystem while it was built (empty now; the old tree, where the
      // exchange could not move it on). A bundle's is the bundle, renamed or moved up: gone.
      await fs.rm(staging, { recursive: true, force: true });
    } catch (e) {
      await fs.rm(staging, { recursive: true, force: true });
      throw e;
    }
    return {
      details: {
        path: target,
        ...(this.options.bundle ? { rootfs: path.join(target, 'rootfs'), config: path.join(target, 'config.json') } : {}),
        ...details,
        ...(cleaned.length ? { cleaned } : {}),
      },
    };
  }

  /**
   * Lays the image's layers down in order. A layer in the layer store is laid from it; the others
   * are fetched (up to `jobs` at once) and applied as they stream in, one that arrives before its
   * turn drained into a spool meanwhile, so that no download waits for the tree. A fetched layer is
   * kept in the store when `keep` (see RootfsWriterOptions.keepLayers): under its lock, taken before
   * the fetch, so that two pulls at once fetch it once (the second waits, then lays it from the
   * store), and committed once applied and verified. The result is what applying the layers in
   * order gives, whatever order the downloads end in. Returns the facts for --json.
   */
  private async layDown(image: Image, applier: RootfsApplier, staging: string, options: ImageWriteOptions): Promise<Record<string, unknown>> {
    const store = this.options.layerStore;
    const probed = store ? await probeFill(store.dir, staging, this.options.link ?? false) : undefined;
    // A store that cannot be made (the cache directory read-only or full, as a container's home
    // may be) holds nothing to lay from and keeps nothing: the tree is written all the same.
    const refused = typeof probed === 'object' ? probed.refused : undefined;
    const how: KeepHow | undefined = typeof probed === 'object' ? 'copy' : probed;
    if (store && this.options.link && !refused && how !== 'hardlink') this.options.onWarning?.(`${this.name}: cannot hardlink files of the layer store ${store.dir} (another filesystem): copying them`);
    // Another user's store (its layers/ is 0700): none of its layers is found there, and all are fetched.
    const othersStore = await store?.unreadable();
    if (othersStore) this.options.onWarning?.(`${this.name}: the layer store ${store!.dir} holds layers this user cannot read (${othersStore.message}; kept by another user?): they are fetched instead`);
    const keep = store !== undefined && how !== undefined && (this.options.keepLayers ?? (how !== 'copy' || this.options.bundle));
    const controller = new AbortController();
    const signal = options.signal ? AbortSignal.any([options.signal, controller.signal]) : controller.signal;
    // Every layer fetched at once listens on it (its stream, its request): past 10, Node warns of a leak.
    setMaxListeners(0, signal);
    // The first failure is the one reported: layers aborted because of it fail too, later, and
    // the loop below may meet one of those first (it awaits the layers in order).
    let first: { error: unknown } | undefined;
    const spools: Spool[] = [];
    const fail = (e: unknown) => {
      if (first) return;
      first = { error: e };
      controller.abort(e);
      // Streams that do not heed the signal stop too, and the layer being applied with them.
      for (const spool of spools) void spool.destroy(e);
    };
    // A bound alone: the first failure is handled by `fail` above, which also stops the spools.
    const slots = new TaskGroup({ jobs: options.jobs, failFast: false });
    const budget = new SpoolBudget(this.options.spoolMemory ?? SPOOL_MEMORY);
    const fills: LayerFill[] = [];
    const tasks: Promise<void>[] = [];
    // Keeping is for the next pull's sake: a layer store that cannot take more (its disk full) is
    // said once, and the tree is written all the same.
    let notKept: { layers: number; why: string } | undefined;
    const cannotKeep = (e: unknown, layers = 1): boolean => {
      const refusal = cannotTakeMore(e);
      if (!refusal) return false;
      if (!notKept) {
        const advice = machineRefusal(refusal)?.hint;
        const why = systemWords(refusal);
        notKept = { layers: 0, why };
        this.options.onWarning?.(`${this.name}: the layer store ${store!.dir} cannot keep layers (${why}${advice ? `: ${advice}` : ''}); the layers this pull fetches are not kept for the next pulls`);
      }
      notKept.layers += layers;
      return true;
    };
    // Said once, where keeping or linking was asked for; each layer is then counted as not kept.
    if (refused && (keep || this.options.link)) cannotKeep(refused, 0);
    // A layer not kept unpacked is kept as its compressed blob (one write of what was fetched), so
    // that no pull fetches it twice; unless nothing is to be kept (--no-keep-layers).
    const blobs =
      store && !refused
        ? new BlobCache(store.dir, {
            notKept: (e) => {
              if (!cannotKeep(e)) this.options.onWarning?.(`${this.name}: the layer store ${store.dir} cannot keep blobs (${e instanceof Error ? systemWords(e) : String(e)}); the layers this pull fetches are not kept for the next pulls`);
            },
            damaged: (what, why) => this.options.onWarning?.(`${this.name}: ${what} kept on this machine is damaged (${why}): removed, and fetched`),
          })
        : undefined;
    const keepBlobs = this.options.keepLayers !== false;
    const openOptions = (layer: Layer, fill: LayerFill | undefined): OpenOptions => ({
      ...progressOptions(layer, options, signal),
      ...(blobs ? { localBlobs: { blobs, keep: keepBlobs && !fill && !notKept } } : {}),
    });
    // What tells gc the image's layers and blobs are in use, recorded before the store is used, not
    // once the tree is laid: a prune that another run makes meanwhile then keeps what this pull is
    // about to lay from the store (its layers found present) or read there (its kept blobs, pinned
    // as they are read besides). A store this process may not write (refused) records nothing. A
    // record it cannot write (the disk full) costs no layer kept, only gc's knowledge of them.
    const recordedNew =
      store && !refused
        ? await store.recordImage(image.manifest.digest, image.name, image.layers.map((l) => l.diffId), image.layers.map((l) => l.descriptor.digest)).catch((e: unknown) => {
            if (!cannotKeep(e, 0)) throw e;
            return false;
          })
        : false;
    // A layer the image holds more than once (two steps that made the same change) is fetched
    // once: each later occurrence follows the first's plan, a copy of its stream spooled until
    // its turn (or laid from the store like it).
    type Settle = { resolve: (p: LayerPlan) => void; reject: (e: unknown) => void };
    const followersOf = new Map<string, Settle[]>();
    const plans = image.layers.map((layer) => {
      const what = `layer ${shortDigest(layer.descriptor.digest)} of ${image.name}`;
      let settle!: Settle;
      const plan = new Promise<LayerPlan>((resolve, reject) => (settle = { resolve, reject }));
      plan.catch(() => undefined); // reported through `fail`
      const followers = followersOf.get(layer.diffId);
      if (followers) {
        followers.push(settle);
        return plan;
      }
      const settles = [settle];
      followersOf.set(layer.diffId, settles);
      const task = slots.run(async () => {
        signal.throwIfAborted();
        const fromStore = (how: 'present' | 'waited') => {
          for (const s of settles) s.resolve({ from: 'store', how });
        };
        if (store && (await store.has(layer.diffId))) return fromStore('present');
        let fill: LayerFill | undefined;
        if (store && keep && !notKept) {
          const claimed = await store.claim(layer.diffId, { signal, what, keep: how, bestEffort: true }).catch((e: unknown) => {
            if (cannotKeep(e)) return undefined;
            throw e;
          });
          if (typeof claimed === 'string') return fromStore(claimed);
          if (claimed) fills.push((fill = claimed));
        } else if (store && keep) notKept!.layers++;
        const stream = await layer.openUncompressed(openOptions(layer, fill));
        // Spooled even when its turn has come: its reader then takes it as it comes, in larger chunks.
        const made = teeStream(stream, settles.length).map((copy) => new Spool(copy, { budget, what, openFile: () => this.spoolFile() }));
        spools.push(...made);
        if (first) for (const spool of made) void spool.destroy(first.error);
        settles.forEach((s, k) => s.resolve({ from: 'stream', read: () => made[k]!.reader(), ...(fill && k === 0 ? { fill } : {}) }));
        await Promise.all(made.map((spool) => spool.drained)); // the job's slot is held until the download is over
      }).catch((e: unknown) => {
        for (const s of settles) s.reject(e);
        fail(e);
      });
      tasks.push(task);
      return plan;
    });
    let fromStore = 0;
    let kept = 0;
    /** Layers the store held damaged, fetched instead. */
    let repaired = 0;
    /** Layers of the store this process may not read, fetched instead. */
    let unreadable = 0;
    try {
      for (const [i, layer] of image.layers.entries()) {
        const plan = await plans[i]!;
        if (first) throw first.error;
        const what = `layer ${shortDigest(layer.descriptor.digest)} of ${image.name}`;
        const { digest } = layer.descriptor;
        if (plan.from === 'store') {
          try {
            const link = how === 'hardlink';
            if (link) store!.markLinked(layer.diffId);
            // Files a tree shares (--link, now or before) are checked: that tree may have been written to.
            await applier.applyEntries(store!.indexChunks(layer.diffId), what, { link, check: link || store!.linkedOut(layer.diffId) });
            fromStore++;
            options.onLayer?.({ digest, diffId: layer.diffId, status: 'skipped', reuse: { how: 'present' }, bytes: 0 });
            continue;
          } catch (e) {
            if (!(e instanceof StoredLayerDamage)) throw e;
            // A cache that lost part of a layer must not fail every pull after it: the layer goes
            // from the store, and is fetched and laid over what of it was laid (the whole layer
            // writes every path it holds again, as its first application would have). One this
            // process may not read (another user's store) is fetched too, and left where it is.
            if (e.notReadable) {
              if (unreadable++ === 0) this.options.onWarning?.(`${this.name}: the layer store ${store!.dir} holds files this user cannot read (${e.message}; kept by another user?): such layers are fetched instead`);
            } else {
              this.options.onWarning?.(`${this.name}: ${what} in the layer store is damaged (${e.message}): removed from the store, and fetched`);
              await store!.discard(layer.diffId);
              repaired++;
            }
            // Kept again as it is fetched, where this pull keeps layers: else the next pull fetched
            // it once more (another run that kept it meanwhile: only laid).
            let refill: LayerFill | undefined;
            if (!e.notReadable && keep && !notKept) {
              const claimed = await store!.claim(layer.diffId, { signal, what, keep: how!, bestEffort: true }).catch((err: unknown) => {
                if (cannotKeep(err)) return undefined;
                throw err;
              });
              if (claimed && typeof claimed !== 'string') fills.push((refill = claimed));
            }
            const stats = await applier.applyLayer(await layer.openUncompressed(openOptions(layer, refill)), what, refill ? { keep: refill } : {});
            if (refill) {
              if (await refill.commit()) kept++;
              else cannotKeep(refill.notKept);
            }
            options.onLayer?.({ digest, diffId: layer.diffId, status: 'written', bytes: stats.bytes });
            continue;
          }
        }
        const stats = await applier.applyLayer(plan.read(), what, plan.fill ? { keep: plan.fill } : {});
        if (plan.fill) {
          if (await plan.fill.commit()) kept++;
          else cannotKeep(plan.fill.notKept);
        }
        options.onLayer?.({ digest, diffId: layer.diffId, status: 'written', bytes: stats.bytes });
      }
    } catch (e) {
      fail(e);
      // A pull that fails leaves no record of an image it never had (one it had stays, used now).
      if (recordedNew) await store!.forgetImage(image.manifest.digest).catch(() => undefined);
      throw first!.error;
    } finally {
      // Nothing outlives the pull: downloads stopped, spool files closed, unfinished layers dropped from the store.
      await Promise.all(spools.map((s) => s.destroy()));
      await Promise.allSettled(tasks);
      await Promise.all([...spools.map((s) => s.destroy()), ...fills.map((f) => f.abort())]);
      await blobs?.release();
    }
    const blobCounts = blobs?.counts;
    const usedBlobs = blobCounts ? blobCounts.read + blobCounts.kept : 0;
    const spooledToFile = spools.reduce((n, s) => n + s.fileBytes, 0);
    return {
      materialize: fromStore > 0 ? how! : 'stream',
      ...(kept > 0 ? { kept: { layers: kept, how: how! } } : {}),
      ...(notKept ? { notKept } : {}),
      ...(repaired > 0 ? { repaired: { layers: repaired } } : {}),
      ...(blobCounts && usedBlobs + blobCounts.repaired > 0 ? { blobs: blobCounts } : {}),
      ...(spools.length > 0 ? { spooled: { layers: spools.length, peakMemory: budget.peak, toFile: spooledToFile } } : {}),
    };
  }

  /** A file to spool a layer into, beside the destination, already unlinked (a leftover's name if we die before that). */
  private spoolFile(): Promise<FileHandle> {
    return openUnlinked(this.aside('new'));
  }
}

/**
 * How files can move between the layer store and the tree: hardlinked (when `link` asks for it
 * and both lie on one filesystem), cloned (reflink: btrfs and XFS can, ext4 and tmpfs cannot), or
 * copied; or `refused`, the reason the store's directory cannot be made (read-only, full, not ours).
 */
async function probeFill(storeDir: string, tree: string, link: boolean): Promise<KeepHow | { refused: unknown }> {
  try {
    await mkdirp(storeDir);
  } catch (e) {
    if (cannotTakeMore(e)) return { refused: e };
    rethrowRefusal(`cannot write the layer store ${storeDir}`)(e);
  }
  const a = path.join(storeDir, `.reflink-probe-${randomUUID()}`);
  const b = path.join(tree, `.reflink-probe-${randomUUID()}`);
  try {
    try {
      await fs.writeFile(a, 'x');
    } catch (e) {
      // A store this process may not write (another user's, read-only, full): it keeps nothing, and links nothing.
      if (cannotTakeMore(e)) return { refused: e };
      throw e;
    }
    if (link) {
      try {
        await fs.link(a, b);
        return 'hardlink';
      } catch {
        // another filesystem: a clone cannot cross it either, but try
      }
    }
    await fs.copyFile(a, b, fsConstants.COPYFILE_FICLONE_FORCE);
    return 'reflink';
  } catch {
    return 'copy';
  } finally {
    await fs.rm(a, { force: true });
    await fs.rm(b, { force: true });
  }
}

/**
 * `n` copies of `source`, each taking every chunk (the same buffers: none is written to). The
 * source goes at the pace of the slowest copy; its error reaches every copy, and a copy closed
 * before its end stops it.
 */
function teeStream(source: Readable, n: number): Readable[] {
  if (n === 1) return [source];
  const copies = Array.from({ length: n }, () => new PassThrough());
  for (const copy of copies) {
    source.pipe(copy);
    copy.once('close', () => {
      if (!copy.writableFinished) source.destroy();
    });
  }
  source.on('error', () => undefined); // reaches the copies as the source closes
  source.once('close', () => {
    if (source.readableEnded) return;
    const error = source.errored ?? new Error('the layer stream closed before its end');
    for (const copy of copies) copy.destroy(error);
  });
  return copies;
}

function progressOptions(layer: Layer, options: ImageWriteOptions, signal: AbortSignal | undefined): OpenOptions {
  const { onProgress } = options;
  const { digest, size } = layer.descriptor;
  return { ...(signal ? { signal } : {}), ...(onProgress ? { onBytes: (bytes: number) => onProgress({ layer: digest, bytes, total: size }) } : {}) };
}

/** What a pull into a mount point makes inside it (the tree being built, the previous one moved aside), before its owner id. */
const IN_PLACE_ASIDE = /^\.smart-(?:new|old)-/;
/** The lock of pulls into a mount point, inside it while one puts its tree in place. */
const IN_PLACE_LOCK = '.smart-lock';

/**
 * What a pull leaves where it is in a mount point: what pulls make there, and the lost+found of
 * the filesystem mounted (an ext4 volume's: the tree then has it, as root filesystems on ext4 do).
 * `name` may be bytes (a name that is not UTF-8).
 */
async function leftInMountPoint(dir: string, name: string | Buffer): Promise<boolean> {
  const text = name.toString();
  if (IN_PLACE_ASIDE.test(text) || text === IN_PLACE_LOCK) return true;
  return text === LOST_FOUND && isFilesystemLostFound(path.join(dir, LOST_FOUND));
}

const LOST_FOUND = 'lost+found';
/** The inode mke2fs gives lost+found (EXT2_GOOD_OLD_FIRST_INO): the first after the reserved ones. */
const EXT_LOST_FOUND_INODE = 11n;

/**
 * Whether `dir` is the filesystem's own lost+found, made with it (ext2/3/4: inode 11), which fsck
 * fills and a pull must leave alone; a lost+found an image brought (tarred from a filesystem) is
 * the tree's, replaced with the rest of it (it was kept, and the next image's failed to move up).
 */
async function isFilesystemLostFound(dir: string): Promise<boolean> {
  const st = await fs.lstat(dir, { bigint: true }).catch(() => undefined);
  return st !== undefined && st.isDirectory() && st.ino === EXT_LOST_FOUND_INODE;
}

/** `dir`/`name` for a name read as bytes (kept byte for byte, as a name that is not UTF-8 must be). */
function joinBytes(dir: string, name: Buffer): Buffer {
  return Buffer.concat([Buffer.from(`${dir}/`), name]);
}

/** Whether `dir` is a mount point: another filesystem than its parent's, or listed in /proc/self/mountinfo (a bind mount of the same one). */
async function isMountPoint(dir: string): Promise<boolean> {
  const st = await fs.stat(dir).catch(() => undefined);
  if (!st?.isDirectory()) return false;
  const parent = await fs.stat(path.dirname(dir)).catch(() => undefined);
  if (parent && parent.dev !== st.dev) return true;
  const real = await fs.realpath(dir).catch(() => dir);
  const mountinfo = await fs.readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
  // Field 5 is the mount point, with space, tab, newline and backslash escaped in octal.
  return mountinfo.split('\n').some((line) => line.split(' ')[4]?.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))) === real);
}

/**
 * Puts the tree built in `staging` (inside `target`, a mount point) in place: `target`'s other
 * entries are moved into `old` (inside it too, for the caller to remove after), then `staging`'s
 * moved up, then `staging` removed. On a failure, what moved is moved back. The trees other pulls
 * are building there stay where they are.
 */
async function replaceContents(staging: string, target: string, old: string, onWarning?: (message: string) => void): Promise<void> {
  await fs.mkdir(old, { mode: 0o700 });
  // Names as bytes: a name that is not UTF-8, read as a string, names no file to rename.
  const movedAside: Buffer[] = [];
  const movedUp: Buffer[] = [];
  let keptLostFound = false;
  try {
    for (const name of await fs.readdir(target, { encoding: 'buffer' })) {
      if (await leftInMountPoint(target, name)) {
        keptLostFound ||= name.toString() === LOST_FOUND;
        continue;
      }
      await fs.rename(joinBytes(target, name), joinBytes(old, name));
      movedAside.push(name);
    }
    for (const name of await fs.readdir(staging, { encoding: 'buffer' })) {
      if (keptLostFound && name.toString() === LOST_FOUND) {
        // The filesystem's own stays (fsck's); the image's, tarred from another filesystem, is left out.
        const brought = await fs.readdir(joinBytes(staging, name)).catch(() => []);
        if (brought.length > 0) onWarning?.(`${target}: the image's /lost+found (${brought.length} entries) is left out: the filesystem mounted there has its own, which stays`);
        await fs.rm(joinBytes(staging, name), { recursive: true, force: true });
        continue;
      }
      await fs.rename(joinBytes(staging, name), joinBytes(target, name));
      movedUp.push(name);
    }
  } catch (e) {
    for (const name of movedUp) await fs.rename(joinBytes(target, name), joinBytes(staging, name)).catch(() => undefined);
    for (const name of movedAside) await fs.rename(joinBytes(old, name), joinBytes(target, name)).catch(() => undefined);
    throw e;
  }
  // The tree's root is the mount point now: it takes the mode, owner and times the image gave
  // staging, where this user may give them (a mount point another user owns keeps its own).
  const root = await fs.lstat(staging);
  if (process.getuid?.() === 0) await fs.chown(target, root.uid, root.gid).catch(() => undefined);
  await fs.chmod(target, root.mode & 0o7777).catch(() => undefined);
  await fs.rmdir(staging);
  await fs.utimes(target, root.atime, root.mtime).catch(() => undefined);
}

/**
 * Puts `staging` at `target`, the old directory moved aside (to `old`), for the caller to remove
 * after. In one step where the system can (renameat2's RENAME_EXCHANGE, in the native addon): two
 * renames leave a moment with no directory at `target`, and a pull killed in it left none (the
 * next pull put the old one back). The old tree then lies at `staging` until renamed to `old`: a
 * pull killed in between leaves it there, a tree being built as far as the next pull's sweep knows.
 */
async function replaceDirectory(staging: string, target: string, exists: boolean, old: string): Promise<void> {
  if (!exists) {
    await fs.rename(staging, target);
    return;
  }
  const exchange = nativeBinding()?.exchangePaths;
  if (exchange && exchange(Buffer.from(staging), Buffer.from(target)) === 0) {
    // The new tree is in place: what is left is the old one's removal, which a failure here must
    // not turn into a failed pull (the caller removes `old`; a tree left at `staging`, the next
    // pull's sweep).
    await fs.rename(staging, old).catch(() => fs.rm(staging, { recursive: true, force: true }).catch(() => undefined));
    return;
  }
  await fs.rename(target, old);
  try {
    await fs.rename(staging, target);
  } catch (e) {
    await fs.rename(old, target).catch(() => undefined);
    throw e;
  }
}
