/**
 * The optional native addon (native/smartlayer.c, built at install time by native/build.mjs).
 * Loaded on first use only; absent, unloadable (built against another libdeflate, say) or turned
 * off with SMART_NATIVE=0, it is simply not there and callers fall back. nativeStatus says which,
 * and what would build it, for `smart version --verbose` and the one warning of a push.
 */
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** What native/smartlayer.c exports; each part only if its library was there at build time. */
export interface NativeBinding {
  /** One complete gzip member of `input`, compressed on the libuv pool. */
  gzipMember?(input: Buffer, level: number): Promise<Buffer>;
  readonly libdeflateVersion?: string;
  /** A streaming zstd context with `workers` threads of libzstd's own and jobs of `jobSize` bytes. */
  zstdCreate?(level: number, workers: number, jobSize: number): unknown;
  /** Compresses `input` (and ends the frame if `end`); calls on one context must not overlap. */
  zstdCompress?(context: unknown, input: Buffer, end: boolean): Promise<Buffer>;
  zstdFree?(context: unknown): void;
  readonly zstdVersion?: string;
  /** One complete gzip member of `input` by ISA-L's igzip (levels 0-3), on the libuv pool. */
  igzipMember?(input: Buffer, level: number): Promise<Buffer>;
  readonly isalVersion?: string;
  /** glibc's malloc keeps `topPad` bytes at the top of each heap (see retainHeap); false when refused. */
  heapRetain?(topPad: number): boolean;
  /** renameat2(2) RENAME_EXCHANGE: `a` and `b` swap names at once; 0, or the errno (Linux). */
  exchangePaths?(a: Buffer, b: Buffer): number;
  /** lsetxattr(2) on `path` itself: 0, or the errno (Linux). */
  setXattr?(path: Buffer, name: Buffer, value: Buffer): number;
  /** Small files made on the pool, in order (see smartlayer.c): [records made, errno, step], errno 0 when all were (Linux). */
  writeFiles?(records: Buffer, contents: Buffer[]): Promise<[number, number, number]>;
  /** The size of the fixed part of a writeFiles record (absent from addons older than its source records). */
  writeFilesRecordBytes?: number;
  /**
   * A run of a layer's small files in one directory made at once, from a tar's bytes (see
   * smartlayer.c): `out` gets [bytes consumed from `start`, files made, their bytes, the offset
   * of the last one's first header or -1] (Linux).
   *
   * With the last four, the run also fills a kept layer's copy in the layer store: each file's copy
   * at `files` + its number (params[6] the first's; params[7] 1: with the entry's owner), each
   * entry's index line written into `lines` from its start, as the prefix of names is `name` in
   * JSON; `offset` is where chunk[start] lies in the tar. `out[4]` gets the bytes of lines written,
   * `out[5]` 1 when the run stopped for want of room in `lines`.
   */
  extractFiles?(chunk: Buffer, start: number, dir: Buffer, prefix: Buffer, params: Int32Array, out: Int32Array, files?: Buffer, name?: Buffer, lines?: Buffer, offset?: number): void;
  /**
   * extractFiles's run for a layer laid from the layer store: from `start` in `text` (whole lines of
   * its index), the lines of small regular files named `prefix` (JSON text) + a base name, each
   * made at `dir` + that name from the store's file `files` + its number (see copy_stored_files).
   * params as extractFiles's (the largest content: the largest file read whole); out: bytes of
   * whole lines consumed, files made, their bytes.
   */
  copyStoredFiles?(text: Buffer, start: number, files: Buffer, dir: Buffer, prefix: Buffer, params: Int32Array, out: Int32Array): void;
  /** Whether extractFiles takes the kept layer's arguments (absent from older addons, which ignore them). */
  extractFilesKeeps?: boolean;
  /** A pipe of `bytes` capacity where the kernel allows it, both ends close-on-exec (Linux): [read end, write end]. */
  makePipe?(bytes: number): [number, number];
  /** sha256 on the libuv pool with the process's OpenSSL (where it has one): a context, */
  sha256Create?(): unknown;
  /** chunks hashed in order (not to be modified until it settles; calls must not overlap), */
  sha256Update?(context: unknown, chunks: Buffer[]): Promise<void>;
  /** the hex digest (the context is then done), */
  sha256Digest?(context: unknown): string;
  /** and a file's [hex digest, bytes read], stopping once past `limit` bytes. */
  sha256File?(path: string, limit: number): Promise<[string, number]>;
  /** ISA-L's inflate on the pool: a context reading the file `fd` (hashed, up to `limit` bytes), or, with -1, the chunks of each call; */
  gunzipCreate?(fd: number, limit: number, hash?: boolean): unknown;
  /** the next output, its status, the input taken so far, errno and the file's digest once done (see smartlayer.c); calls must not overlap. */
  gunzipRun?(context: unknown, chunks: Buffer[], end: boolean, outputBytes: number): Promise<[Buffer, number, number, number, string?]>;
}

/** dist/pipeline/native.js (or src/pipeline/native.ts) → the package root. */
const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const addonPath = path.join(packageRoot, 'native', 'build', 'smartlayer.node');

let binding: NativeBinding | null | undefined;
let loadError: string | undefined;

export function nativeBinding(): NativeBinding | null {
  if (binding !== undefined) return binding;
  if (process.env.SMART_NATIVE === '0') {
    loadError = 'SMART_NATIVE=0';
    return (binding = null);
  }
  try {
    binding = loadAddon();
  } catch (e) {
    loadError = (e as Error).message.split('\n')[0];
    binding = null;
  }
  return binding;
}

/**
 * The addon, its libraries' symbols bound to those libraries first (RTLD_DEEPBIND, where glibc has
 * it): Node's own builds from 22 on carry zstd (1.5.7) and export its functions, which a plain
 * load binds the addon's zstd calls to in place of the system's libzstd it was built with. A zstd
 * layer then had other bytes, and another digest, on Node 22+ than on 20 and than the zstd program
 * makes: the same image pushed from two CI runners was two images. Node's own symbols (N-API,
 * libuv), which no library of the addon defines, are still found in the process.
 */
function loadAddon(): NativeBinding {
  const { RTLD_DEEPBIND, RTLD_NOW } = os.constants.dlopen;
  if (RTLD_DEEPBIND === undefined || RTLD_NOW === undefined) return createRequire(import.meta.url)(addonPath) as NativeBinding;
  const addon = { exports: {} as NativeBinding };
  process.dlopen(addon, addonPath, RTLD_NOW | RTLD_DEEPBIND);
  return addon.exports;
}

/** What the heap keeps at its top once large buffers move through the process (see retainHeap). */
const HEAP_PAD = 8 * 1024 * 1024;

let heapRetained: boolean | undefined;

/**
 * Once, when a command starts moving large buffers through the process (gzip blocks compressed
 * here, blob bodies read in 1 MiB buffers: see bulk-get.ts): glibc's malloc takes buffers up to
 * 32 MiB from its heap, and keeps 8 MiB at the top of each heap, rather than mapping each one
 * afresh and giving it straight back to the kernel, to fault its pages in again for the next one
 * (on the virtual machines CI runs on a fault costs ~15-50 us). Measured here, interleaved: the
 * bench image's push 1.09 -> 0.98 s, through the API 1.41 -> 1.32 s, a 1 GB layer 4.77 -> 4.09 s;
 * peak RSS +11 to +20 MB (the 1 GB push 109 -> 130 MB). 16 MiB was ~2% faster still for another
 * 15 MB. Blob bodies read in 1 MiB buffers need it as much: a pull from the registry was slower
 * with them than with Node's 64 KiB chunks until they came from the heap (see bulk-get.ts). Only
 * in a process that bin/smart started (GLIBC_TUNABLES as its first line sets it): malloc is the
 * whole process's, so a program that embeds the library, or whoever tunes malloc themselves,
 * keeps its own settings. True when the heap is kept so (the caller may then use buffers past
 * glibc's own 128 KiB mapping threshold at no cost in faults).
 */
export function retainHeap(env: NodeJS.ProcessEnv = process.env): boolean {
  if (heapRetained !== undefined) return heapRetained;
  heapRetained = env.GLIBC_TUNABLES === BIN_TUNABLES && nativeBinding()?.heapRetain?.(HEAP_PAD) === true;
  return heapRetained;
}

/** What the first line of bin/*.js sets GLIBC_TUNABLES to when the caller did not. */
const BIN_TUNABLES = 'glibc.malloc.hugetlb=1';

/** Why the addon is not there (for diagnostics), or undefined when it is or was not looked for. */
export function nativeLoadError(): string | undefined {
  return loadError;
}

export interface NativeStatus {
  /** The file the addon is loaded from, or would be. */
  path: string;
  loaded: boolean;
  /** Turned off with SMART_NATIVE=0: the user's choice, nothing to warn of. */
  disabled: boolean;
  /** The versions of the libraries compiled in (absent: built without it, or not loaded). */
  libdeflate?: string;
  zstd?: string;
  /** ISA-L, for `--compression-level fast` only: its absence is nothing to warn of. */
  isal?: string;
  /** Why it is not loaded, or which library it was built without; absent when it has both. */
  reason?: string;
  /** The one command that builds it with both libraries here (absent when nothing is missing or it is disabled). */
  fix?: string;
}

/** What native/build.mjs recorded of its last run (native/build/status.json), if it could. */
function buildRecord(): { built: boolean; reason?: string } | undefined {
  try {
    return JSON.parse(fs.readFileSync(path.join(packageRoot, 'native', 'build', 'status.json'), 'utf8')) as { built: boolean; reason?: string };
  } catch {
    return undefined;
  }
}

/**
 * The command that installs what the addon builds with and builds it: from a clone (the README's
 * path) the setup script and `npm rebuild` (which runs the package's install script); from an
 * installed package, which has no setup script, the Debian packages and the build script itself.
 */
export function nativeFixCommand(): string {
  let here: string | undefined;
  try {
    here = path.resolve(process.cwd());
  } catch {
    here = undefined; // the current directory was removed
  }
  const inRoot = here === packageRoot ? '' : `cd ${packageRoot} && `;
  if (fs.existsSync(path.join(packageRoot, 'scripts', 'setup-debian.sh'))) return `${inRoot}scripts/setup-debian.sh && npm rebuild`;
  const sudo = process.getuid?.() === 0 ? '' : 'sudo ';
  return `${sudo}apt-get install gcc libc6-dev libdeflate-dev libzstd-dev libisal-dev && ${inRoot || `cd ${packageRoot} && `}node native/build.mjs`;
}

/** The addon as it is in this process: loaded (with which libraries), off, or why it is absent. */
export function nativeStatus(): NativeStatus {
  const b = nativeBinding();
  const disabled = process.env.SMART_NATIVE === '0';
  if (b) {
    const without = [b.libdeflateVersion ? null : 'libdeflate', b.zstdVersion ? null : 'zstd'].filter((n): n is string => n !== null);
    return {
      path: addonPath,
      loaded: true,
      disabled,
      ...(b.libdeflateVersion ? { libdeflate: b.libdeflateVersion } : {}),
      ...(b.zstdVersion ? { zstd: b.zstdVersion } : {}),
      ...(b.isalVersion ? { isal: b.isalVersion } : {}),
      ...(without.length ? { reason: `built without ${without.join(' and ')}`, fix: nativeFixCommand() } : {}),
    };
  }
  if (disabled) return { path: addonPath, loaded: false, disabled, reason: 'turned off (SMART_NATIVE=0)' };
  const reason = fs.existsSync(addonPath) ? `not loadable (${loadError ?? 'unknown error'})` : `not built (${whyNotBuilt(buildRecord())})`;
  return { path: addonPath, loaded: false, disabled, reason, fix: nativeFixCommand() };
}

/** Why the addon's file is not there, from what its build recorded (native/build/status.json), or from there being no record. */
function whyNotBuilt(record: { built: boolean; reason?: string } | undefined): string {
  if (!record) return 'its build never ran here, as npm install --ignore-scripts leaves it: no native/build/status.json';
  if (record.built) return `it was built, and ${addonPath} was removed since`;
  return record.reason ?? 'its build recorded no reason';
}

let warned = false;

/**
 * The warning of a compression that runs slower than it could because the addon lacks the
 * library of `format` (absent, unloadable, built without it): how it runs instead (`runs`, "on
 * Node's zlib, slower") and the command that fixes it. Once per process: undefined after the
 * first, and whenever nothing is missing or the user turned the addon off (SMART_NATIVE=0, a choice).
 */
export function nativeMissingWarning(format: 'gzip' | 'zstd', runs: string): string | undefined {
  if (warned) return undefined;
  const status = nativeStatus();
  if (status.disabled || (format === 'gzip' ? status.libdeflate : status.zstd) || !status.fix) return undefined;
  warned = true;
  return `native compressor ${status.reason}: ${format} runs ${runs}; to build it: ${status.fix} (SMART_NATIVE=0 silences this)`;
}
