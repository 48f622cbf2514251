/**
 * The engines of the parallel gzip (parallel-gzip.ts): what each one does with one block, its
 * levels, its default block size and concurrency, and the bounds every stream of the process
 * shares. zlib makes raw deflate chained by preset dictionaries (one stream); libdeflate, in this
 * process or as a program, and igzip make one gzip member a block.
 */
import zlib from 'node:zlib';
import { SmartError } from '../errors.js';
import { TaskGroup } from './concurrency.js';
import { runFilter } from './filter-process.js';
import { retainHeap, type NativeBinding } from './native.js';
import { coreCount } from './cores.js';

export type GzipEngineName = 'zlib' | 'igzip' | 'libdeflate';
/** 'fast': igzip in this process (`--compression-level fast`), a few percent larger than the default for about three times its speed. */
export type GzipEnginePreference = 'auto' | 'fast' | GzipEngineName;

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

export const KiB = 1024;
const MiB = 1024 * KiB;
/** The deflate window: the dictionary a zlib block is primed with is the tail this long of the block before. */
export const WINDOW = 32 * KiB;

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
 * skopeo's speed in-process (0.89 CPU s against skopeo's 1.87): the default wherever the addon
 * has libdeflate. As a program it is only named, never chosen (1.02x alone here, but in a whole
 * push a process per block loses to zlib: gzip-choice.ts). Without it, zlib level 3 (1.1% larger,
 * 1.16x) is the best zlib setting; level 1 is 4.9% larger.
 * Block size and window, same run, libdeflate level 1 in-process: 1 / 2 / 4 / 8 MiB blocks at
 * concurrency 3: 281 / 292 / 301 / 273 MB/s, output within 0.2% of each other; 4 MiB at
 * concurrency 1 / 2 / 4: 199 / 306 / 318. zlib level 3 at concurrency 1 / 2 / 4 / 8: 96.7 / 149.7
 * / 165.9 / 175.3; 256 KiB / 1 MiB / 4 MiB blocks: 163.3 / 172.8 / 167.4.
 */
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
export const GZIP_HEADER = Buffer.from([0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0x00, 0xff]);
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
  defaultConcurrency: (blockSize) => windowCap(blockSize, Math.min(4 * coreCount(), 2 * libuvPoolSize())),
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

/**
 * Compressor processes of the whole process, every layer together: layers compressed at once
 * share the cores rather than each starting a full set (oversubscription costs time and memory).
 */
const processSlots = new TaskGroup({ jobs: coreCount() + 1, failFast: false });

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

/** An engine that runs `program` once a block (igzip, or libdeflate-gzip when the addon is not built). */
export function memberEngine(name: 'igzip' | 'libdeflate', program: string): GzipEngine {
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
    defaultConcurrency: (blockSize) => windowCap(blockSize, coreCount() + 1),
    async compressBlock(block, job) {
      if (block.length === 0) return Buffer.from(EMPTY_MEMBER);
      // igzip: -c to stdout, stdin as input; single-threaded by default (its -T is off).
      const args = name === 'igzip' ? [`-${job.level}`, '-c', '-n'] : [`-${job.level}`, '-c'];
      const member = await processSlots.run(() => runFilter(program, args, block, job.signal));
      return normalizeMember(member, block.length, name);
    },
  };
}

/**
 * libdeflate inside this process (the native addon): the same bytes as the libdeflate-gzip
 * program, without a process per block. Blocks run on the libuv pool, at most `nativeSlots` at
 * once for the whole process, which leaves pool threads free for the file reads that feed them.
 */
export function nativeLibdeflateEngine(binding: Required<Pick<NativeBinding, 'gzipMember' | 'libdeflateVersion'>>): GzipEngine {
  // The same block size as the program engine: the same bytes, so the same digests, either way.
  return nativeMemberEngine('libdeflate', `in-process ${binding.libdeflateVersion}`, { min: 1, max: 12, default: DEFAULT_LIBDEFLATE_LEVEL }, binding.gzipMember);
}

/**
 * ISA-L's igzip inside this process (the native addon built with libisal-dev): what
 * `--compression-level fast` uses. Measured here: igzip level 1 compresses ~3.5x faster than
 * libdeflate level 1 for 4.8-8% more bytes, so it is never the default (which stays within 3% of
 * skopeo's size). One stateless call a block, so the bytes depend on the block alone, never on the
 * concurrency; they may differ between ISA-L versions and CPU families (its code is chosen by
 * CPU), which the diff id → digest memory covers as it does for any other engine.
 */
export function nativeIgzipEngine(binding: Required<Pick<NativeBinding, 'igzipMember' | 'isalVersion'>>): GzipEngine {
  return nativeMemberEngine('igzip', `in-process isa-l ${binding.isalVersion}`, { min: 0, max: 3, default: DEFAULT_IGZIP_LEVEL }, binding.igzipMember);
}

/** An engine of the addon: one gzip member a block, made on the libuv pool within `nativeSlots`. */
function nativeMemberEngine(
  name: 'libdeflate' | 'igzip',
  implementation: string,
  levels: { min: number; max: number; default: number },
  member: (input: Buffer, level: number) => Promise<Buffer>,
): GzipEngine {
  return {
    name,
    program: null,
    implementation,
    minLevel: levels.min,
    maxLevel: levels.max,
    defaultLevel: levels.default,
    defaultBlockSize: DEFAULT_PROCESS_BLOCK_SIZE,
    framing: 'members',
    defaultConcurrency: (blockSize) => windowCap(blockSize, coreCount() + 1),
    async compressBlock(block, job) {
      if (block.length === 0) return Buffer.from(EMPTY_MEMBER);
      if (job.signal.aborted) throw new SmartError('CANCELLED', 'gzip block not started: the stream was destroyed');
      retainHeap();
      let compressed: Buffer;
      try {
        compressed = await nativeSlots.run(() => member(block, job.level));
      } catch (e) {
        throw new SmartError('INTERNAL', `${name} failed to compress a block (${(e as Error).message})`, { cause: e });
      }
      return normalizeMember(compressed, block.length, name);
    },
  };
}

/** Compressions on the libuv pool at once, every stream together: the cores, and one pool thread always left for I/O. */
const nativeSlots = new TaskGroup({ jobs: Math.max(1, Math.min(coreCount(), libuvPoolSize() - 1)), failFast: false });
