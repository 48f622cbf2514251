/**
 * Parallel gzip of one layer into ONE standard gzip stream whose bytes depend only on the input,
 * the engine and the level — never on the number of cores or workers — so the same layer
 * compressed on a 2-core and on a 64-core machine gets the same digest and dedupes.
 *
 * The input is cut into blocks of a fixed size (the last one shorter) and the blocks are
 * compressed concurrently, emitted strictly in order:
 *
 * - zlib engine (always present): the pigz scheme. Each block is compressed by Node's async
 *   `deflateRaw` (it runs in the libuv thread pool) primed with the last 32 KiB of the previous
 *   block as a preset dictionary and ended with a sync flush (the last block with Z_FINISH), so
 *   the concatenation is one deflate stream; one gzip header and a trailer (CRC32 of the input,
 *   ISIZE) wrap it. The pool has UV_THREADPOOL_SIZE threads, 4 by default; the variable is read
 *   once, when the pool starts, so a library cannot raise it (nor should it: the pool is the
 *   process's). The default window of this engine is twice the pool size, 8 blocks (measured: more
 *   than the pool keeps every thread busy; file reads queue behind at most one block each).
 *   Engine throughput is therefore capped by the pool: ~4 cores' worth unless the application
 *   sets UV_THREADPOOL_SIZE before the pool starts.
 * - libdeflate in this process (native/smartlayer.c, when `npm ci` could build it): each block
 *   becomes its own gzip member, compressed on the libuv pool. libdeflate takes no preset
 *   dictionary; a gzip file of several members is standard: every mainstream reader (zlib, Go,
 *   gzip, pigz, busybox) reads it as one stream.
 * - igzip (Debian `isal`) and libdeflate-gzip (Debian `libdeflate-tools`): the same scheme with a
 *   short-lived process per block (libdeflate-gzip makes exactly the in-process bytes). The member
 *   header a tool writes (igzip puts the current time in it) is replaced by a fixed one. Starting
 *   a process forks this one, a few ms on the main thread. igzip is not reproducible: fed the
 *   same block from here it once made a member one byte longer than in every other run (content
 *   right), so it is never the default and its digests must not be relied on to dedupe.
 *
 * Blocks are copied into pooled buffers as input arrives; each stream may hold one block in flight
 * and more from a window shared by every stream of the process (see SharedWindow).
 *
 * Memory is bounded: at most `concurrency` blocks are in flight (compressing, or compressed and
 * waiting for their turn or for the reader), plus the block being filled; while the window is
 * full the Transform does not take more input (back-pressure both ways).
 *
 * The decompression side (`chooseGunzip`, `gunzipDecoder`, used by `decompress` in compression.ts) runs `igzip -d` as a child process when
 * it is present, Node's zlib otherwise.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import os from 'node:os';
import { TaskGroup } from './concurrency.js';
import { Duplex, PassThrough, Readable, Transform, pipeline, type TransformCallback } from 'node:stream';
import zlib from 'node:zlib';
import { SmartError, isSmartError } from '../errors.js';
import type { Digest } from '../oci/digest.js';
import { diffIdStage } from './digest-stream.js';
import type { CompressedLayerStream } from './layer-streams.js';
import { nativeBinding, type NativeBinding } from './native.js';
import { findProgram } from './programs.js';

// ---------------------------------------------------------------------------------------------
// Engines

export type GzipEngineName = 'zlib' | 'igzip' | 'libdeflate';
export type GzipEnginePreference = 'auto' | GzipEngineName;

export interface BlockJob {
  level: number;
  /** The last 32 KiB of the input before this block (single-stream engines only; null for the first block). */
  dictionary: Buffer | null;
  /** The final block of the stream (may be empty only when the whole input is empty). */
  last: boolean;
  /** Aborted when the stream is destroyed: child processes are killed. */
  signal: AbortSignal;
}

export interface GzipEngine {
  readonly name: GzipEngineName;
  /** The program run per block (child-process engines), null for zlib and in-process engines. */
  readonly program: string | null;
  /** How the engine runs here, for `--json`: 'node-zlib', 'in-process 1.14' (the native addon), or the program's path. */
  readonly implementation: string;
  readonly minLevel: number;
  readonly maxLevel: number;
  /** The level used when the caller names none (chosen by bench/compression.mjs). */
  readonly defaultLevel: number;
  /** The block size used when the caller names none. Part of the output's identity: changing it changes the bytes. */
  readonly defaultBlockSize: number;
  /**
   * 'single-stream': blocks chained by preset dictionaries into one deflate stream; compressBlock
   * returns raw deflate and the stream adds one gzip header and trailer.
   * 'members': compressBlock returns a complete gzip member for each block.
   */
  readonly framing: 'single-stream' | 'members';
  /** How many blocks to compress at once when the caller names no concurrency. */
  defaultConcurrency(blockSize: number): number;
  compressBlock(block: Buffer, job: BlockJob): Promise<Buffer>;
}

const KiB = 1024;
const MiB = 1024 * KiB;
const WINDOW = 32 * KiB;

/*
 * Defaults, from one run of `node bench/compression.mjs --runs 3` on this 2-core machine (Node
 * 20.20, a 150.7 MB tar of shared libraries in page cache; MB/s of uncompressed input, median of 3
 * (best); the parallel rows include the sha256 of input and output, as a push does; skopeo's time
 * includes reading the archive and writing the blob):
 *
 *   skopeo 1.9.3 copy docker-archive: → oci: (reference)            149.5 (152.9)  50.15 MB
 *   Node zlib one stream, level 6 / 1                             49.2 / 108       48.13 / 52.62 MB
 *   parallel zlib, 1 MiB blocks, level 1 / 3 / 6           199.3 / 172.8 / 95.5    52.60 / 50.71 / 48.12 MB
 *   parallel igzip program, 4 MiB members, level 1 / 2 / 3  190.1 / 194.1 / 168.9   54.13 / 53.32 / 52.58 MB
 *   parallel libdeflate in-process, 4 MiB, level 1 / 4 / 6 292.1 / 203.8 / 145.7   50.98 / 47.83 / 46.54 MB
 *   parallel libdeflate-gzip program, 4 MiB, level 1               152.4            50.98 MB (same bytes)
 *   pigz -6 -p 2                                                    60.6            47.03 MB
 *
 * The rule: the fastest setting no more than 3% larger than skopeo's output and faster than it,
 * preferring an engine present here. igzip is 4.8-8% larger: out (and its program was seen,
 * rarely, to make other bytes for the same block). libdeflate level 1 is 1.7% larger at 1.95x
 * skopeo's speed in-process (0.89 CPU s against skopeo's 1.87): the default wherever libdeflate
 * is, in-process or (1.02x) as a program. Without it, zlib level 3 (1.1% larger, 1.16x) is the
 * best zlib setting; level 1 is 4.9% larger.
 * Block size and window, same run, libdeflate level 1 in-process: 1 / 2 / 4 / 8 MiB blocks at
 * concurrency 3: 281 / 292 / 301 / 273 MB/s, output within 0.2% of each other; 4 MiB at
 * concurrency 1 / 2 / 4: 199 / 306 / 318. zlib level 3 at concurrency 1 / 2 / 4 / 8: 96.7 / 149.7
 * / 165.9 / 175.3; 256 KiB / 1 MiB / 4 MiB blocks: 163.3 / 172.8 / 167.4.
 */
/** The engine order of `chooseGzipEngine('auto')`: the first one present wins. */
export const DEFAULT_GZIP_ENGINE_ORDER: readonly GzipEngineName[] = ['libdeflate', 'zlib'];
export const DEFAULT_ZLIB_LEVEL = 3;
export const DEFAULT_LIBDEFLATE_LEVEL = 1;
export const DEFAULT_IGZIP_LEVEL = 1;
/** 1 MiB: 256 KiB blocks lose ~10% to per-block overhead; 4 MiB gain nothing but memory. */
export const DEFAULT_ZLIB_BLOCK_SIZE = 1 * MiB;
/**
 * The block of the member engines (libdeflate in-process or as a program, igzip): 4 MiB. In
 * process, 1-8 MiB blocks run at the same speed (per-block cost is a pool hand-off) and the output
 * grows by 0.1% from 8 to 1 MiB; memory grows with the block. The program engines pay a fork per
 * block and would rather have 8 MiB (9% faster than 4), but both libdeflate forms must cut the
 * same blocks to make the same bytes, and the in-process one is the one that matters.
 */
export const DEFAULT_PROCESS_BLOCK_SIZE = 4 * MiB;

export const MIN_BLOCK_SIZE = WINDOW;
export const MAX_BLOCK_SIZE = 256 * MiB;

/** The fixed gzip header of every member we write: no name, mtime 0, XFL 0, OS 255 (unknown). */
const GZIP_HEADER = Buffer.from([0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0x00, 0xff]);
/** A whole gzip member of no data: header, an empty final fixed-Huffman block, CRC 0, ISIZE 0. */
const EMPTY_MEMBER = Buffer.concat([GZIP_HEADER, Buffer.from([0x03, 0x00]), Buffer.alloc(8)]);

/** The default window never holds more than this much input, however many cores there are. */
export const MAX_DEFAULT_WINDOW_BYTES = 128 * MiB;

function windowCap(blockSize: number, wanted: number): number {
  return Math.max(1, Math.min(wanted, Math.floor(MAX_DEFAULT_WINDOW_BYTES / blockSize)));
}

function libuvPoolSize(): number {
  // Read by libuv when the pool starts (first use), so this is a best guess, not a setting.
  const n = Number(process.env.UV_THREADPOOL_SIZE);
  return Number.isInteger(n) && n > 0 ? Math.min(n, 1024) : 4;
}

function deflateRawAsync(block: Buffer, options: zlib.ZlibOptions): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    zlib.deflateRaw(block, options, (err, out) => (err ? reject(err) : resolve(out)));
  });
}

export const zlibEngine: GzipEngine = {
  name: 'zlib',
  program: null,
  implementation: 'node-zlib',
  minLevel: 0,
  maxLevel: 9,
  defaultLevel: DEFAULT_ZLIB_LEVEL,
  defaultBlockSize: DEFAULT_ZLIB_BLOCK_SIZE,
  framing: 'single-stream',
  // Twice the pool: a block queued behind the ones compressing starts the moment a thread frees
  // (measured above: 8 in flight beat 4 on a pool of 4). Never more than 4 per core.
  defaultConcurrency: (blockSize) => windowCap(blockSize, Math.min(4 * os.availableParallelism(), 2 * libuvPoolSize())),
  async compressBlock(block, job) {
    try {
      return await deflateRawAsync(block, {
        level: job.level,
        // Output sized to the whole block in one go: fewer round trips into the pool.
        chunkSize: Math.max(64 * KiB, Math.min(block.length + 4 * KiB, 4 * MiB)),
        ...(job.dictionary ? { dictionary: job.dictionary } : {}),
        finishFlush: job.last ? zlib.constants.Z_FINISH : zlib.constants.Z_SYNC_FLUSH,
      });
    } catch (e) {
      throw new SmartError('INTERNAL', `zlib failed to compress a block (${(e as Error).message})`, { cause: e });
    }
  },
};

/** Child processes started by the member engines and not yet exited (a test hook). */
const liveChildren = new Set<ChildProcess>();

/**
 * Compressor processes of the whole process, every layer together: layers compressed at once
 * share the cores rather than each starting a full set (oversubscription costs time and memory).
 */
const processSlots = new TaskGroup({ jobs: os.availableParallelism() + 1, failFast: false });

/** How many compressor/decompressor child processes of this module are running (for tests). */
export function liveChildProcessCount(): number {
  return liveChildren.size;
}

/** Runs `program args` with `input` on stdin; resolves with stdout. Killed when `signal` aborts. */
function runFilter(program: string, args: string[], input: Buffer, signal: AbortSignal): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(new SmartError('CANCELLED', `${program} not started: the stream was destroyed`));
      return;
    }
    const child = spawn(program, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    liveChildren.add(child);
    const out: Buffer[] = [];
    let stderr = '';
    const onAbort = () => child.kill('SIGKILL');
    signal.addEventListener('abort', onAbort, { once: true });
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => {
      if (stderr.length < 4096) stderr += d.toString();
    });
    child.stdin.on('error', () => {
      /* EPIPE and the like: the exit status reports it */
    });
    let settled = false;
    const done = (err: Error | null, value?: Buffer) => {
      if (settled) return;
      settled = true;
      liveChildren.delete(child);
      signal.removeEventListener('abort', onAbort);
      if (err) reject(err);
      else resolve(value as Buffer);
    };
    child.once('error', (e) => {
      done(new SmartError('INTERNAL', `could not run ${program}: ${e.message}`, { cause: e }));
    });
    child.once('close', (code, sig) => {
      if (signal.aborted) done(new SmartError('CANCELLED', `${program} killed: the stream was destroyed`));
      else if (code === 0) done(null, Buffer.concat(out));
      else {
        const why = stderr.trim().split('\n').pop() || (sig ? `signal ${sig}` : `exit status ${code}`);
        done(new SmartError('INTERNAL', `${program} ${args.join(' ')} failed: ${why}`));
      }
    });
    child.stdin.end(input);
  });
}

/** Replaces the header of one gzip member by GZIP_HEADER (the tools put a time or a name in theirs). */
function normalizeMember(member: Buffer, blockLength: number, program: string): Buffer {
  const bad = (why: string) => new SmartError('INTERNAL', `${program} wrote an unexpected gzip member (${why})`);
  if (member.length < 18 || member[0] !== 0x1f || member[1] !== 0x8b || member[2] !== 8) throw bad('no gzip header');
  if (member.readUInt32LE(member.length - 4) !== blockLength >>> 0) throw bad('ISIZE does not match the block');
  const flags = member[3]!;
  if (flags === 0) {
    GZIP_HEADER.copy(member, 0);
    return member;
  }
  let p = 10;
  if (flags & 0x04) p += 2 + member.readUInt16LE(p);
  if (flags & 0x08) p = member.indexOf(0, p) + 1;
  if (flags & 0x10) p = member.indexOf(0, p) + 1;
  if (flags & 0x02) p += 2;
  if (p <= 0 || p > member.length - 8) throw bad('malformed header');
  return Buffer.concat([GZIP_HEADER, member.subarray(p)]);
}

function memberEngine(name: 'igzip' | 'libdeflate', program: string): GzipEngine {
  const [minLevel, maxLevel, defaultLevel] = name === 'igzip' ? [0, 3, DEFAULT_IGZIP_LEVEL] : [1, 12, DEFAULT_LIBDEFLATE_LEVEL];
  return {
    name,
    program,
    implementation: program,
    minLevel,
    maxLevel,
    defaultLevel,
    defaultBlockSize: DEFAULT_PROCESS_BLOCK_SIZE,
    framing: 'members',
    // One more process than cores: a finished block waiting for the one before it leaves a core idle otherwise.
    defaultConcurrency: (blockSize) => windowCap(blockSize, os.availableParallelism() + 1),
    async compressBlock(block, job) {
      if (block.length === 0) return Buffer.from(EMPTY_MEMBER);
      // igzip: -c to stdout, stdin as input; single-threaded by default (its -T is off).
      const args = name === 'igzip' ? [`-${job.level}`, '-c', '-n'] : [`-${job.level}`, '-c'];
      const member = await processSlots.run(() => runFilter(program, args, block, job.signal));
      return normalizeMember(member, block.length, name);
    },
  };
}

const PROGRAMS: Record<'igzip' | 'libdeflate', string> = { igzip: 'igzip', libdeflate: 'libdeflate-gzip' };
const PACKAGES: Record<'igzip' | 'libdeflate', string> = { igzip: 'isal', libdeflate: 'libdeflate-tools' };

/**
 * libdeflate inside this process (the native addon): the same bytes as the libdeflate-gzip
 * program, without a process per block. Blocks run on the libuv pool, at most `nativeSlots` at
 * once for the whole process, which leaves pool threads free for the file reads that feed them.
 */
function nativeLibdeflateEngine(binding: Required<Pick<NativeBinding, 'gzipMember' | 'libdeflateVersion'>>): GzipEngine {
  return {
    name: 'libdeflate',
    program: null,
    implementation: `in-process ${binding.libdeflateVersion}`,
    minLevel: 1,
    maxLevel: 12,
    defaultLevel: DEFAULT_LIBDEFLATE_LEVEL,
    // The same block size as the program engine: the same bytes, so the same digests, either way.
    defaultBlockSize: DEFAULT_PROCESS_BLOCK_SIZE,
    framing: 'members',
    defaultConcurrency: (blockSize) => windowCap(blockSize, os.availableParallelism() + 1),
    async compressBlock(block, job) {
      if (block.length === 0) return Buffer.from(EMPTY_MEMBER);
      if (job.signal.aborted) throw new SmartError('CANCELLED', 'gzip block not started: the stream was destroyed');
      let member: Buffer;
      try {
        member = await nativeSlots.run(() => binding.gzipMember(block, job.level));
      } catch (e) {
        throw new SmartError('INTERNAL', `libdeflate failed to compress a block (${(e as Error).message})`, { cause: e });
      }
      return normalizeMember(member, block.length, 'libdeflate');
    },
  };
}

/** Compressions on the libuv pool at once, every stream together: the cores, and one pool thread always left for I/O. */
const nativeSlots = new TaskGroup({ jobs: Math.max(1, Math.min(os.availableParallelism(), libuvPoolSize() - 1)), failFast: false });

/**
 * The engine of that name if it is usable here, else null (zlib always is). libdeflate is the
 * native addon when it is built, else the libdeflate-gzip program (`via: 'program'` asks for the
 * program even when the addon is there: tests compare the two).
 */
export async function findGzipEngine(name: GzipEngineName, via: 'best' | 'program' = 'best'): Promise<GzipEngine | null> {
  if (name === 'zlib') return zlibEngine;
  if (name === 'libdeflate' && via === 'best') {
    const binding = nativeBinding();
    if (binding?.gzipMember && binding.libdeflateVersion) return nativeLibdeflateEngine({ gzipMember: binding.gzipMember, libdeflateVersion: binding.libdeflateVersion });
  }
  const program = await findProgram(PROGRAMS[name]);
  return program ? memberEngine(name, program) : null;
}

/** Every engine usable on this machine, zlib last. */
export async function availableGzipEngines(): Promise<GzipEngine[]> {
  const found = await Promise.all((['igzip', 'libdeflate'] as const).map((n) => findGzipEngine(n)));
  return [...found.filter((e): e is GzipEngine => e !== null), zlibEngine];
}

/**
 * 'auto': the first of DEFAULT_GZIP_ENGINE_ORDER that is present (zlib is always). A named
 * engine that is absent is an error: the user asked for it.
 */
export async function chooseGzipEngine(preference: GzipEnginePreference = 'auto'): Promise<GzipEngine> {
  if (preference === 'auto') {
    for (const name of DEFAULT_GZIP_ENGINE_ORDER) {
      const engine = await findGzipEngine(name);
      if (engine) return engine;
    }
    return zlibEngine;
  }
  if (preference !== 'zlib' && preference !== 'igzip' && preference !== 'libdeflate') {
    throw new SmartError('USAGE', `unknown gzip engine "${String(preference)}" (auto, zlib, igzip or libdeflate)`);
  }
  const engine = await findGzipEngine(preference);
  if (!engine) {
    const p = preference as 'igzip' | 'libdeflate';
    throw new SmartError('UNSUPPORTED', `gzip engine ${p} asked for, but ${PROGRAMS[p]} is not on PATH${p === 'libdeflate' ? ' and the native addon is not built' : ''}`, {
      hint: `install the ${PACKAGES[p]} package (apt-get install ${PACKAGES[p]}), or use the zlib engine`,
    });
  }
  return engine;
}

// ---------------------------------------------------------------------------------------------
// CRC32 (zlib.crc32 is Node 20.15+; package.json allows 20.10)

let crcTable: Uint32Array | undefined;
function crc32js(data: Uint8Array, value: number): number {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let c = ~value >>> 0;
  for (let i = 0; i < data.length; i++) c = crcTable[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}
const crc32: (data: Uint8Array, value: number) => number =
  typeof (zlib as { crc32?: unknown }).crc32 === 'function' ? (d, v) => zlib.crc32(d, v) : crc32js;

// ---------------------------------------------------------------------------------------------
// The Transform

export interface ParallelGzipOptions {
  engine: GzipEngine;
  /** Defaults to the engine's defaultLevel. */
  level?: number;
  /** Fixed block size: part of the output's identity. Defaults to the engine's defaultBlockSize. */
  blockSize?: number;
  /** Blocks compressed at once (and the window of blocks held). Does not change the output. */
  concurrency?: number;
}

/** What the stream holds, for tests and diagnostics. */
export interface ParallelGzipStats {
  /** Blocks submitted whose output has not been handed to the reader yet. */
  blocksInFlight: number;
  maxBlocksInFlight: number;
  /** Input bytes accepted and not yet cut into a block. */
  bufferedInput: number;
  maxBufferedInput: number;
  /** Input bytes accepted whose compressed output has not been handed to the reader yet. */
  heldInput: number;
  maxHeldInput: number;
  blocks: number;
  bytesIn: number;
  bytesOut: number;
}

interface Job {
  length: number;
  done: boolean;
  output?: Buffer;
  /** Bytes of the shared window this block holds (0 for a stream's first block in flight). */
  shared: number;
}

/**
 * The blocks every stream holds beyond its first, shared by all the streams of the process: a
 * push compresses several layers at once, and per-stream windows alone would multiply memory by
 * the number of layers without making the cores any faster. Each stream may always hold one
 * block outside the budget, so a stream whose reader is not reading yet (a sequential writer that
 * takes layers one by one) cannot starve the others, nor they it.
 */
class SharedWindow {
  private used = 0;
  private readonly waiters = new Set<() => void>();

  constructor(readonly capacity: number) {}

  tryTake(bytes: number, wake: () => void): boolean {
    if (this.used + bytes > this.capacity) {
      this.waiters.add(wake);
      return false;
    }
    this.waiters.delete(wake);
    this.used += bytes;
    return true;
  }

  /** Wakes the waiting streams on a later microtask: never inside the pump of the stream releasing. */
  release(bytes: number): void {
    if (bytes === 0) return;
    this.used -= bytes;
    if (this.waiters.size === 0) return;
    const waiting = [...this.waiters];
    this.waiters.clear();
    queueMicrotask(() => {
      for (const wake of waiting) wake();
    });
  }

  forget(wake: () => void): void {
    this.waiters.delete(wake);
  }

  get inUse(): number {
    return this.used;
  }
}

/** One more block than cores, in bytes of the default block size: enough to keep every core busy while a finished block waits for its turn. */
const sharedWindow = new SharedWindow((os.availableParallelism() + 1) * DEFAULT_PROCESS_BLOCK_SIZE);

/** Bytes of the shared window held right now, every stream together (for tests). */
export function sharedWindowInUse(): number {
  return sharedWindow.inUse;
}

/**
 * Block buffers, reused: a fresh multi-MiB allocation per block costs page faults and zeroing on
 * the main thread, a copy into a buffer already mapped costs a memcpy. A few are kept per size:
 * as many as can be in flight at once across the process.
 */
const freeBlocks = new Map<number, Buffer[]>();
const MAX_FREE_BLOCKS = os.availableParallelism() + 2;

function takeBlockBuffer(size: number): Buffer {
  return freeBlocks.get(size)?.pop() ?? Buffer.allocUnsafeSlow(size);
}

function returnBlockBuffer(buffer: Buffer): void {
  if (buffer.length === 0) return;
  let free = freeBlocks.get(buffer.length);
  if (!free) freeBlocks.set(buffer.length, (free = []));
  if (free.length < MAX_FREE_BLOCKS) free.push(buffer);
}

export class ParallelGzip extends Transform {
  readonly engine: GzipEngine;
  readonly level: number;
  readonly blockSize: number;
  readonly concurrency: number;

  /** The block being filled (a pool buffer) and how much of it is. */
  private filling: Buffer | null = null;
  private fillLength = 0;
  /** Full blocks with more input after them, waiting for room in the window. */
  private readonly ready: Buffer[] = [];
  private readonly queue: Job[] = [];
  private dictionary: Buffer | null = null;
  private crc = 0;
  private submitted = 0;
  private headerSent = false;
  private ending = false;
  private lastSubmitted = false;
  private canPush = true;
  private waitingWrite: TransformCallback | null = null;
  private flushCallback: TransformCallback | null = null;
  private readonly abort = new AbortController();
  private readonly counters = { maxBlocksInFlight: 0, maxBufferedInput: 0, heldInput: 0, maxHeldInput: 0, bytesIn: 0, bytesOut: 0 };

  constructor(options: ParallelGzipOptions) {
    super({ readableHighWaterMark: 256 * KiB });
    const { engine } = options;
    this.engine = engine;
    this.level = options.level ?? engine.defaultLevel;
    this.blockSize = options.blockSize ?? engine.defaultBlockSize;
    this.concurrency = options.concurrency ?? engine.defaultConcurrency(this.blockSize);
    if (!Number.isInteger(this.level) || this.level < engine.minLevel || this.level > engine.maxLevel) {
      throw new SmartError('USAGE', `gzip level ${this.level} is out of range for ${engine.name} (${engine.minLevel}-${engine.maxLevel})`);
    }
    if (!Number.isInteger(this.blockSize) || this.blockSize < MIN_BLOCK_SIZE || this.blockSize > MAX_BLOCK_SIZE) {
      throw new SmartError('USAGE', `gzip block size ${this.blockSize} is out of range (${MIN_BLOCK_SIZE}-${MAX_BLOCK_SIZE} bytes)`);
    }
    if (!Number.isInteger(this.concurrency) || this.concurrency < 1) {
      throw new SmartError('USAGE', `gzip concurrency must be a positive integer, not ${this.concurrency}`);
    }
  }

  get stats(): ParallelGzipStats {
    return {
      blocksInFlight: this.queue.length,
      maxBlocksInFlight: this.counters.maxBlocksInFlight,
      bufferedInput: this.bufferedInput,
      maxBufferedInput: this.counters.maxBufferedInput,
      heldInput: this.counters.heldInput,
      maxHeldInput: this.counters.maxHeldInput,
      blocks: this.submitted,
      bytesIn: this.counters.bytesIn,
      bytesOut: this.counters.bytesOut,
    };
  }

  private get bufferedInput(): number {
    return this.ready.length * this.blockSize + this.fillLength;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    if (chunk.length) {
      if (this.engine.framing === 'single-stream') this.crc = crc32(chunk, this.crc);
      // Copied into pooled block buffers: one cheap copy into memory already mapped, instead of
      // cutting blocks out of the input chunks (a fresh allocation per block, page faults and
      // all) or asking the source for block-sized chunks (which every stage before this one
      // would then hold two or three of).
      for (let offset = 0; offset < chunk.length; ) {
        if (this.filling && this.fillLength === this.blockSize) {
          // A full block is handed on only once more input follows it, so the last block is
          // always the one compressed as the end of the stream.
          this.ready.push(this.filling);
          this.filling = null;
        }
        if (!this.filling) {
          this.filling = takeBlockBuffer(this.blockSize);
          this.fillLength = 0;
        }
        const n = chunk.copy(this.filling, this.fillLength, offset);
        this.fillLength += n;
        offset += n;
      }
      this.counters.bytesIn += chunk.length;
      this.counters.heldInput += chunk.length;
      this.counters.maxBufferedInput = Math.max(this.counters.maxBufferedInput, this.bufferedInput);
      this.counters.maxHeldInput = Math.max(this.counters.maxHeldInput, this.counters.heldInput);
    }
    this.waitingWrite = cb;
    this.pump();
  }

  override _flush(cb: TransformCallback): void {
    this.ending = true;
    this.flushCallback = cb;
    this.pump();
  }

  override _read(size: number): void {
    this.canPush = true;
    this.pump();
    super._read(size);
  }

  override _destroy(err: Error | null, cb: (error?: Error | null) => void): void {
    this.abort.abort();
    sharedWindow.forget(this.wake);
    for (const job of this.queue) sharedWindow.release(job.shared);
    this.queue.length = 0;
    // Blocks not submitted go back to the pool; submitted ones return when their compression settles.
    for (const block of this.ready.splice(0)) returnBlockBuffer(block);
    if (this.filling) returnBlockBuffer(this.filling);
    this.filling = null;
    this.fillLength = 0;
    this.waitingWrite = null;
    this.flushCallback = null;
    cb(err);
  }

  private readonly wake = (): void => this.pump();

  /** Room for one more block: the first in flight always; more within the stream's window and the shared one. */
  private reserve(): number | false {
    if (this.queue.length === 0) return 0;
    if (this.queue.length >= this.concurrency) return false;
    return sharedWindow.tryTake(this.blockSize, this.wake) ? this.blockSize : false;
  }

  /**
   * Starts compressing `buffer` (a pool buffer; its first `length` bytes are the block). The buffer
   * goes back to the pool when the engine is done with it, whatever became of the stream.
   */
  private submit(buffer: Buffer, last: boolean, shared: number, length = buffer.length): void {
    const block = length === buffer.length ? buffer : buffer.subarray(0, length);
    const job: Job = { length, done: false, shared };
    this.queue.push(job);
    this.submitted++;
    this.counters.maxBlocksInFlight = Math.max(this.counters.maxBlocksInFlight, this.queue.length);
    const dictionary = this.engine.framing === 'single-stream' ? this.dictionary : null;
    if (this.engine.framing === 'single-stream' && !last) {
      // Blocks are at least 32 KiB: the window is the tail of this block alone. A copy: the
      // block's buffer is reused once compressed.
      this.dictionary = Buffer.from(block.subarray(block.length - WINDOW));
    }
    if (last) this.lastSubmitted = true;
    this.engine.compressBlock(block, { level: this.level, dictionary, last, signal: this.abort.signal }).then(
      (output) => {
        returnBlockBuffer(buffer);
        job.done = true;
        job.output = output;
        this.pump();
      },
      (e: unknown) => {
        returnBlockBuffer(buffer);
        if (!this.destroyed) this.destroy(isSmartError(e) ? e : new SmartError('INTERNAL', `gzip block failed: ${String(e)}`, { cause: e }));
      },
    );
  }

  private pushOut(buf: Buffer): void {
    this.counters.bytesOut += buf.length;
    if (!this.push(buf)) this.canPush = false;
  }

  /** Moves everything that can move: finished blocks out in order, new blocks in, callbacks released. */
  private pump(): void {
    if (this.destroyed) return;
    for (;;) {
      let progressed = false;
      // 1. Hand finished blocks to the reader, in order, while it wants more.
      while (this.canPush && this.queue[0]?.done) {
        const job = this.queue.shift()!;
        sharedWindow.release(job.shared);
        this.counters.heldInput -= job.length;
        const output = job.output!;
        if (this.engine.framing === 'single-stream' && !this.headerSent) {
          this.headerSent = true;
          this.pushOut(Buffer.concat([GZIP_HEADER, output]));
        } else this.pushOut(output);
        if (this.destroyed) return;
        progressed = true;
      }
      // 2. Cut and submit blocks while the window has room. A full block is cut only once more
      // input follows it (or at the end), so the last block is always the one with Z_FINISH.
      while (!this.lastSubmitted && (this.ready.length > 0 || this.ending)) {
        const shared = this.reserve();
        if (shared === false) break;
        if (this.ready.length > 0) this.submit(this.ready.shift()!, false, shared);
        else {
          const last = this.filling;
          this.filling = null;
          this.submit(last ?? Buffer.alloc(0), true, shared, this.fillLength);
          this.fillLength = 0;
        }
        progressed = true;
      }
      if (!progressed) break;
    }
    // 3. Take more input once no whole block is waiting to be cut.
    if (this.waitingWrite && this.ready.length === 0) {
      const cb = this.waitingWrite;
      this.waitingWrite = null;
      cb();
    }
    // 4. The end: every block out, then the trailer.
    if (this.flushCallback && this.lastSubmitted && this.queue.length === 0) {
      const cb = this.flushCallback;
      this.flushCallback = null;
      if (this.engine.framing === 'single-stream') {
        const trailer = Buffer.alloc(8);
        trailer.writeUInt32LE(this.crc >>> 0, 0);
        trailer.writeUInt32LE(this.counters.bytesIn % 2 ** 32, 4);
        this.pushOut(trailer);
      }
      cb();
    }
  }
}

/** Input uncompressed bytes, output one gzip stream (see the module comment). */
export function parallelGzipStream(options: ParallelGzipOptions): ParallelGzip {
  return new ParallelGzip(options);
}

export interface ParallelCompressedLayerStream extends CompressedLayerStream {
  /** The engine and level that made the bytes (for `--json`). */
  engine: GzipEngineName;
  level: number;
  blockSize: number;
}

/**
 * tar → [diff id] → parallel gzip, in one pass with back-pressure; the same shape as
 * `gzipLayerStream` in layer-streams.ts. The diff id is the sha256 of the input as it passes, or
 * `verifiedDiffId` when the input is already verified against it upstream (see diffIdStage).
 */
export function gzipLayerStreamParallel(tar: Readable, options: ParallelGzipOptions & { verifiedDiffId?: Digest }): ParallelCompressedLayerStream {
  const diff = diffIdStage(options.verifiedDiffId);
  const gz = new ParallelGzip(options);
  const out = pipeline(tar, diff.stage, gz, () => {
    /* errors reach the consumer through `out` */
  });
  return {
    stream: out,
    diffId: diff.diffId,
    uncompressedSize: diff.size,
    engine: gz.engine.name,
    level: gz.level,
    blockSize: gz.blockSize,
  };
}

// ---------------------------------------------------------------------------------------------
// Decompression

export type GunzipEngineName = 'zlib' | 'igzip';

export interface GunzipEngine {
  readonly name: GunzipEngineName;
  readonly program: string | null;
}

const zlibGunzip: GunzipEngine = { name: 'zlib', program: null };

/**
 * 'auto': `igzip -d` when it is on PATH (690 MB/s against Node's 440 here), else Node's zlib.
 * A named engine that is absent is an error.
 */
export async function chooseGunzip(preference: 'auto' | GunzipEngineName = 'auto'): Promise<GunzipEngine> {
  if (preference === 'zlib') return zlibGunzip;
  const program = await findProgram('igzip');
  if (program) return { name: 'igzip', program };
  if (preference === 'igzip') {
    throw new SmartError('UNSUPPORTED', 'gunzip engine igzip asked for, but igzip is not on PATH', {
      hint: 'install the isal package (apt-get install isal), or use the zlib engine',
    });
  }
  return zlibGunzip;
}

function corrupt(what: string, truncated: boolean, detail: string, cause?: unknown): SmartError {
  return new SmartError('CORRUPT_ARCHIVE', `${what}: ${truncated ? 'truncated gzip stream' : `corrupt gzip stream (${detail})`}`, {
    ...(cause === undefined ? {} : { cause }),
  });
}

/**
 * Decompresses gzip bytes with `igzip -d -c`: a Duplex (write gzip, read the data) for a
 * pipeline. A corrupt or truncated stream errors with CORRUPT_ARCHIVE naming `what`, as
 * `decompress` does. Destroying it kills the process.
 */
export function igzipDecompressor(program: string, what: string): Duplex {
  const input = new PassThrough({ highWaterMark: 256 * KiB });
  const output = new PassThrough({ highWaterMark: 256 * KiB });
  const child = spawn(program, ['-d', '-c'], { stdio: ['pipe', 'pipe', 'pipe'] });
  liveChildren.add(child);
  let inputBytes = 0;
  let stderr = '';
  input.on('data', (d: Buffer) => (inputBytes += d.length));
  child.stderr.on('data', (d: Buffer) => {
    if (stderr.length < 4096) stderr += d.toString();
  });
  child.stdin.on('error', () => {
    /* the exit status reports it */
  });
  input.pipe(child.stdin);
  child.stdout.pipe(output, { end: false });
  let exited = false;
  child.once('error', (e) => {
    exited = true;
    liveChildren.delete(child);
    output.destroy(new SmartError('INTERNAL', `${what}: could not run ${program}: ${e.message}`, { cause: e }));
  });
  child.once('close', (code, sig) => {
    exited = true;
    liveChildren.delete(child);
    if (output.destroyed) return;
    const message = stderr.trim().split('\n').pop() ?? '';
    // Node's zlib calls an empty input truncated, igzip accepts it: zlib's answer wins here.
    // Trailing garbage after the last member igzip ignores silently (as `gzip -d` does, with a
    // warning), where zlib calls it corrupt: the data is whole either way.
    if (sig) output.destroy(new SmartError('INTERNAL', `${what}: ${program} killed by ${sig}`));
    else if (inputBytes === 0) output.destroy(corrupt(what, true, ''));
    else if (code === 0 && !stderr.trim()) output.end();
    else output.destroy(corrupt(what, /complete gzip file|unexpected end|truncat/i.test(message), message || `exit status ${code}`));
  });
  const kill = () => {
    if (!exited) child.kill('SIGKILL');
  };
  output.once('close', kill);
  input.once('close', () => {
    // The writable side destroyed before its end (an upstream error): stop the child too.
    if (!input.writableFinished) kill();
  });
  return Duplex.from({ writable: input, readable: output });
}

/** The bare decoder stage of `engine` (zlib errors are raw Z_ codes; igzip's are SmartErrors). */
export function gunzipDecoder(what: string, engine: GunzipEngine = zlibGunzip): Duplex {
  if (engine.name === 'igzip' && engine.program) return igzipDecompressor(engine.program, what);
  return zlib.createGunzip({ chunkSize: 64 * KiB });
}

