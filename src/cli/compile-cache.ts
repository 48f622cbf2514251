/**
 * V8's code cache for the modules a command loads (its own chunks, the S3 SDK), kept on this
 * machine so that a command does not parse and compile the same JavaScript on every start.
 *
 * Node 22.1+ does this itself (`module.enableCompileCache`), and is asked to. On Node 20 the
 * CommonJS modules of packages (a path under a `node_modules` directory: the process is the
 * command's, so every such module is one of its dependencies) and the command's own chunks (the
 * directory `ownChunks` that the command's entry names, src/cli/boot.ts) are compiled here
 * instead: with the cache of an earlier run when there is one, else from their text; the cache is
 * written as the process exits, once the command has run, so that it holds the functions the
 * command compiled on its way (V8 compiles most functions only when first called), not just the
 * top of each module. Either way it is turned on before the command's chunks load (boot.ts).
 *
 * Measured on 2 cores, medians of 30 alternated runs: a warm push to `s3://` 302.6 -> 271.9 ms; the
 * first run of a machine, which writes the cache, 296.4 -> 309.3 ms. The command's own chunks
 * (300 kB, compiled by every push and pull): a warm push to `file:` from an OCI layout
 * 61.9 -> 53.3 ms, from a docker save tar 70.5 -> 65.1 ms, a pull to `oci:` 59.6 -> 54.4 ms
 * (medians of 31 alternated runs); the first run of a machine 59.3 -> 64.6 ms. An earlier measure
 * found no gain for them; the cache was then turned on after they had loaded.
 *
 * The cache is keyed by V8's version, the architecture, and each module's path and text (V8 itself
 * checks only the text's length: an upgraded package is compiled afresh). V8 refuses a cache made
 * with other flags; the module is then compiled from its text and its cache made again. A file
 * carries the checksum of its data, checked before V8 sees it (see readCache), and is written whole
 * under a temporary name, then renamed: a reader never sees half of one.
 *
 * Where: `$XDG_CACHE_HOME/smartlayer/compile-cache` (default `~/.cache/smartlayer/...`), from the
 * environment alone, since it starts before the arguments are read. SMART_COMPILE_CACHE=0 turns it
 * off. Nothing here fails a command: a cache that cannot be read or written is no cache.
 *
 * It does not grow without end (pruneStale): every upgrade of a package, of smartlayer or of Node
 * leaves entries that no run reads again, so what has not been written for STALE_MS goes, unless
 * the run that prunes has just used it. A command whose entries went compiles as a first run does,
 * once.
 */
import fs from 'node:fs';
import Module from 'node:module';
import path from 'node:path';
import type * as vmTypes from 'node:vm';
import { defaultCacheDir, mkdirLevelsSync, noCacheDirReason } from '../ops/local-state.js';

/** The parts of CommonJS's Module this relies on, as Node builds a module's `require` (v8-compile-cache relied on the same). */
interface CjsModule {
  exports: unknown;
  require(id: string): unknown;
}
interface CjsModuleClass {
  prototype: { _compile(this: CjsModule, content: string, filename: string, format?: string): unknown };
  wrap(script: string): string;
  _resolveFilename(request: string, parent: CjsModule, isMain: boolean, options?: unknown): string;
  _resolveLookupPaths(request: string, parent: CjsModule): string[] | null;
  _extensions: unknown;
  _cache: unknown;
  /** Node 22.1+. */
  enableCompileCache?: (dir: string) => { status?: number; message?: string; directory?: string } | undefined;
  constants?: { compileCacheStatus?: { FAILED?: number; DISABLED?: number } };
}

/** Whether this process keeps compiled code, where, and why (as `smart version --verbose` says it). */
export interface CompileCacheStatus {
  on: boolean;
  /** Who keeps it: Node itself (22.1+), or this module (the command's chunks, the CommonJS modules of packages). */
  by?: 'node' | 'smartlayer';
  dir?: string;
  why: string;
}

let status: CompileCacheStatus | undefined;

/** Entries, and the caches of other Node or V8 versions, not written for this long are removed. */
const STALE_MS = 30 * 24 * 3600 * 1000;
/** A temporary file this old was left by a run killed while it wrote the cache. */
const ABANDONED_MS = 3600 * 1000;

export function compileCacheStatus(): CompileCacheStatus {
  return status ?? { on: false, why: 'not turned on in this process (only the command does)' };
}

/**
 * Turns the cache on for this process. Called by the command's entry before its chunks and any
 * package load; `ownChunks` is the directory of the command's chunks (kept too, on Node 20).
 */
export function enableCompileCache(ownChunks?: string): void {
  if (status) return;
  if (process.env.SMART_COMPILE_CACHE === '0') {
    status = { on: false, why: 'SMART_COMPILE_CACHE=0' };
    return;
  }
  const M = Module as unknown as CjsModuleClass;
  // From the environment alone (XDG_CACHE_HOME), as it starts before the arguments are read.
  const cacheDir = defaultCacheDir();
  if (cacheDir === undefined) {
    status = { on: false, why: `no cache directory (${noCacheDirReason()})` };
    return;
  }
  const dir = path.join(cacheDir, 'compile-cache');
  if (typeof M.enableCompileCache === 'function') {
    try {
      // Made here first: Node's recursive mkdir of it (22 and 24) loops for ever where a
      // pseudo-filesystem answers ENOENT under a directory that exists (a cache under /proc): the
      // command hung at full CPU before it began (see mkdirLevelsSync).
      mkdirLevelsSync(dir, 0o700);
      const r = M.enableCompileCache(dir);
      const codes = M.constants?.compileCacheStatus;
      if (r?.status !== undefined && r.status === codes?.FAILED) status = { on: false, why: `Node could not turn its compile cache on: ${r.message ?? 'no reason given'}` };
      else if (r?.status !== undefined && r.status === codes?.DISABLED) status = { on: false, why: "Node's compile cache is disabled (NODE_DISABLE_COMPILE_CACHE)" };
      else {
        status = { on: true, by: 'node', dir: r?.directory ?? dir, why: `Node ${process.versions.node} keeps compiled code itself (module.enableCompileCache)` };
        // Node keeps one directory per version of itself, and removes none: the others are ours to clear.
        const current = r?.directory;
        if (current) process.once('exit', () => pruneStale(dir, current, new Set(), Date.now()));
      }
    } catch (e) {
      // A command runs the same without it.
      status = { on: false, why: `Node could not turn its compile cache on: ${(e as Error).message}` };
    }
    return;
  }
  // Source maps asked for (--enable-source-maps): Node's own compile registers them; leave it to it.
  if (process.sourceMapsEnabled) {
    status = { on: false, why: 'source maps are on (--enable-source-maps), which Node registers as it compiles' };
    return;
  }
  const versionDir = path.join(dir, `v8-${process.versions.v8}-${process.arch}`);
  status = {
    on: true,
    by: 'smartlayer',
    dir: versionDir,
    why: `Node ${process.versions.node} has no compile cache of its own (22.1+ has): ${ownChunks ? "the command's chunks and " : ''}the packages' CommonJS modules are compiled with V8's code cache here`,
  };
  const packages = `${path.sep}node_modules${path.sep}`;
  const compile = M.prototype._compile;
  const pending: { file: string; script: vmTypes.Script }[] = [];
  /** The entries this run read: kept by a prune, however old. */
  const used = new Set<string>();

  M.prototype._compile = function (this: CjsModule, content: string, filename: string, format?: string): unknown {
    if ((format !== undefined && format !== 'commonjs') || !(filename.includes(packages) || (ownChunks !== undefined && path.dirname(filename) === ownChunks))) {
      return compile.call(this, content, filename, format);
    }
    // Loaded here, by the first package: a command that loads none pays nothing for them.
    const crypto = process.getBuiltinModule('node:crypto');
    const vm = process.getBuiltinModule('node:vm');
    const file = path.join(versionDir, crypto.createHash('sha256').update(filename).update('\0').update(content).digest('hex'));
    const cachedData = readCache(file, crypto);
    let script: vmTypes.Script;
    try {
      script = new vm.Script(M.wrap(content), {
        filename,
        ...(cachedData ? { cachedData } : {}),
        // import() inside the module goes to Node's loader, as it does from a module Node compiled.
        importModuleDynamically: vm.constants.USE_MAIN_CONTEXT_DEFAULT_LOADER,
      });
    } catch {
      // Not CommonJS after all (an ES module Node would recognise), or a syntax error Node words
      // better: Node's own compile takes it from here.
      return compile.call(this, content, filename, format);
    }
    if (!cachedData || script.cachedDataRejected) pending.push({ file, script });
    else used.add(file);
    const wrapper = script.runInThisContext({ displayErrors: true }) as (...args: unknown[]) => unknown;
    return wrapper.call(this.exports, this.exports, makeRequire(M, this), this, filename, path.dirname(filename));
  };

  process.once('exit', () => {
    if (pending.length === 0) return;
    try {
      mkdirLevelsSync(versionDir, 0o700);
    } catch {
      return; // a read-only disk: the next run compiles as this one did
    }
    for (const { file, script } of pending) {
      const temporary = `${file}.${process.pid}.tmp`;
      try {
        const data = script.createCachedData();
        const crypto = process.getBuiltinModule('node:crypto');
        fs.writeFileSync(temporary, Buffer.concat([crypto.createHash('sha256').update(data).digest(), data]), { mode: 0o600 });
        fs.renameSync(temporary, file);
      } catch {
        // A full disk: no half file left behind (and nothing thrown from an exit handler).
        try {
          fs.rmSync(temporary, { force: true });
        } catch {
          // nothing more to do
        }
      }
    }
    // Only a run that writes prunes: the cache grows only then, and a run that reads pays nothing.
    for (const { file } of pending) used.add(file);
    pruneStale(dir, versionDir, used, Date.now());
  });
}

/**
 * Removes from `dir` what has not been written for STALE_MS: the directories beside `current`
 * (other V8 versions, or Node's own caches of other versions of itself), and, when `current` is
 * ours, its entries that this run did not use. Ages come from mtimes, set when an entry is written
 * and never by a read (a read-only run stays free of writes): an entry still in use by a command
 * this run did not run is compiled again by that command's next run, once in STALE_MS.
 * Temporary files of a run killed while writing go after ABANDONED_MS. Never throws.
 */
export function pruneStale(dir: string, current: string, used: ReadonlySet<string>, now: number): void {
  const keep = path.relative(dir, current).split(path.sep)[0];
  const old = (p: string, age: number): boolean => {
    try {
      return fs.lstatSync(p).mtimeMs < now - age;
    } catch {
      return false; // gone already: another run pruned it
    }
  };
  const remove = (p: string): void => {
    try {
      fs.rmSync(p, { recursive: true, force: true });
    } catch {
      // in use by a run that is writing it, or not ours to remove: left for the next prune
    }
  };
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return;
  }
  for (const name of names) if (name !== keep && old(path.join(dir, name), STALE_MS)) remove(path.join(dir, name));
  if (path.dirname(current) !== dir || !path.basename(current).startsWith('v8-')) return;
  try {
    names = fs.readdirSync(current);
  } catch {
    return;
  }
  for (const name of names) {
    const file = path.join(current, name);
    if (used.has(file)) continue;
    if (old(file, name.endsWith('.tmp') ? ABANDONED_MS : STALE_MS)) remove(file);
  }
}

/**
 * A cache file's data, once its checksum holds. V8 checks a cache's version, flags and source
 * length, but in a release build not its bytes: a damaged file would be run. So each file starts
 * with the sha256 of the rest (Node 22's own cache carries a checksum too).
 */
function readCache(file: string, crypto: typeof import('node:crypto')): Buffer | undefined {
  let bytes: Buffer;
  try {
    bytes = fs.readFileSync(file);
  } catch {
    return undefined;
  }
  const data = bytes.subarray(32);
  if (bytes.length <= 32 || !crypto.createHash('sha256').update(data).digest().equals(bytes.subarray(0, 32))) return undefined;
  return data;
}

/** The `require` a CommonJS module is given, as Node builds it. */
function makeRequire(M: CjsModuleClass, mod: CjsModule): NodeJS.Require {
  const require = ((id: string) => mod.require(id)) as NodeJS.Require;
  const resolve = ((request: string, options?: unknown) => M._resolveFilename(request, mod, false, options)) as NodeJS.RequireResolve;
  resolve.paths = (request: string) => M._resolveLookupPaths(request, mod);
  require.resolve = resolve;
  require.main = process.mainModule;
  require.extensions = M._extensions as NodeJS.RequireExtensions;
  require.cache = M._cache as NodeJS.Dict<NodeJS.Module>;
  return require;
}
