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
 * This module is the block pipeline (the Transform). The engines are in gzip-engines.ts, the
 * choice among them in gzip-choice.ts, the memory shared by every stream in gzip-window.ts, the
 * programs run as filters in filter-process.ts, and the decompression side (`chooseGunzip`,
 * `gunzipDecoder`, used by `decompress` in compression.ts) in gunzip.ts; what they export is
 * exported here too.
 */
import fs, { type FileHandle } from 'node:fs/promises';
import { Transform, pipeline, type Readable, type TransformCallback } from 'node:stream';
import zlib from 'node:zlib';
import { SmartError, isSmartError } from '../errors.js';
import type { Digest } from '../oci/digest.js';
import { diffIdStage } from './digest-stream.js';
import { chunkHasher, type ChunkHasher } from './sha256.js';
import { GZIP_HEADER, KiB, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, WINDOW, type GzipEngine, type GzipEngineName } from './gzip-engines.js';
import { returnBlockBuffer, sharedWindow, takeBlockBuffer } from './gzip-window.js';
import type { CompressedLayerStream } from './layer-streams.js';
import { fileRangeOf, rangeCheckError, rangeEndedError, tieRangeReader, type FileRange } from './local-file.js';

export {
  DEFAULT_IGZIP_LEVEL,
  DEFAULT_LIBDEFLATE_LEVEL,
  DEFAULT_PROCESS_BLOCK_SIZE,
  DEFAULT_ZLIB_BLOCK_SIZE,
  DEFAULT_ZLIB_LEVEL,
  MAX_BLOCK_SIZE,
  MAX_DEFAULT_WINDOW_BYTES,
  MIN_BLOCK_SIZE,
  zlibEngine,
  type BlockJob,
  type GzipEngine,
  type GzipEngineName,
  type GzipEnginePreference,
} from './gzip-engines.js';
export { DEFAULT_GZIP_ENGINE_ORDER, availableGzipEngines, chooseGzipEngine, findGzipEngine } from './gzip-choice.js';
export { sharedWindowInUse } from './gzip-window.js';
export { liveChildProcessCount } from './filter-process.js';
export { chooseGunzip, gunzipDecoder, igzipDecompressor, type GunzipEngine, type GunzipEngineName } from './gunzip.js';

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

/** The input read from a file range (see `readFileRange`). */
interface FileInput {
  range: FileRange;
  handle?: FileHandle;
  /** The next byte to read, and how many are left. */
  position: number;
  remaining: number;
  reading: boolean;
  /** The range's sha256, on the pool where the addon can: its blocks are compressed meanwhile. */
  hash: ChunkHasher;
  /** Read whole: its digest is being checked (see finishFile). */
  finishing?: boolean;
  /** The sha256 of the range, once read whole and checked. */
  digest?: Digest;
}

interface Job {
  length: number;
  done: boolean;
  output?: Buffer;
  /** Bytes of the shared window this block holds (0 for a stream's first block in flight). */
  shared: number;
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
  private file: FileInput | null = null;
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

  /**
   * Takes the input from `range` of a local file in place of writes (nothing may be written then):
   * read a block at a time straight into the pooled block buffers that are compressed, hashed as
   * read and checked against `range.checks` before the last block is compressed. A stream hands
   * over its bytes in fresh 256 KiB buffers, each then copied into a block: on a 190 MB push those
   * allocations and copies were ~0.11 s of the main thread, and its ~750 reads as many pool
   * hand-offs, against ~50 here. The sha256 of the range is `fileDigest` at the end.
   */
  readFileRange(range: FileRange): this {
    this.file = { range, position: range.offset, remaining: range.length, reading: false, hash: chunkHasher() };
    process.nextTick(() => this.pump());
    return this;
  }

  /** The sha256 of the file range read (see readFileRange), once it has been read whole. */
  get fileDigest(): Digest {
    if (!this.file?.digest) throw new SmartError('INTERNAL', 'file digest read before the range was read');
    return this.file.digest;
  }

  /** Counts input bytes taken (and folds them into the CRC of a single stream). */
  private took(bytes: Buffer): void {
    if (this.engine.framing === 'single-stream') this.crc = zlib.crc32(bytes, this.crc);
    this.counters.bytesIn += bytes.length;
    this.counters.heldInput += bytes.length;
    this.counters.maxBufferedInput = Math.max(this.counters.maxBufferedInput, this.bufferedInput);
    this.counters.maxHeldInput = Math.max(this.counters.maxHeldInput, this.counters.heldInput);
  }

  /** Reads the next block of the file range, when none is waiting to be cut and none is being read. */
  private readBlock(file: FileInput): void {
    if (file.reading || file.finishing || this.ready.length > 0 || this.destroyed) return;
    file.reading = true;
    const buffer = takeBlockBuffer(this.blockSize);
    const want = Math.min(this.blockSize, file.remaining);
    this.readInto(file, buffer, want).then(
      () => {
        file.reading = false;
        if (this.destroyed) {
          returnBlockBuffer(buffer);
          return;
        }
        const block = buffer.subarray(0, want);
        file.hash.update(block);
        file.range.onBytes?.(want);
        file.position += want;
        file.remaining -= want;
        if (file.remaining > 0) {
          // A full block with more input after it.
          this.ready.push(buffer);
          this.took(block);
          this.pump();
          return;
        }
        // The last block: compressed only once the range checks out, so a bad layer never ends cleanly.
        this.filling = buffer;
        this.fillLength = want;
        this.took(block);
        this.finishFile(file);
      },
      (e: unknown) => {
        file.reading = false;
        returnBlockBuffer(buffer);
        if (!this.destroyed) this.destroy(e as Error);
      },
    );
  }

  private async readInto(file: FileInput, buffer: Buffer, want: number): Promise<void> {
    if (!file.handle) {
      const handle = await fs.open(file.range.path, 'r');
      if (this.destroyed) {
        await handle.close();
        throw new SmartError('CANCELLED', 'gzip input not read: the stream was destroyed');
      }
      file.handle = handle;
    }
    for (let off = 0; off < want; ) {
      // Destroyed meanwhile: its handle is closed (or closing) and nothing wants the rest.
      if (!file.handle) throw new SmartError('CANCELLED', 'gzip input not read: the stream was destroyed');
      const { bytesRead } = await file.handle.read(buffer, off, want - off, file.position + off);
      if (bytesRead === 0) throw rangeEndedError(file.range, file.position + off - file.range.offset);
      off += bytesRead;
    }
  }

  /** The range is read whole: check it, close the file, and end the input. */
  private finishFile(file: FileInput): void {
    file.finishing = true;
    const handle = file.handle;
    file.handle = undefined;
    void handle?.close().catch(() => undefined);
    file.hash.digest().then(
      (hex) => {
        if (this.destroyed) return;
        const digest = `sha256:${hex}` as Digest;
        const failed = rangeCheckError(file.range, digest);
        if (failed) {
          this.destroy(failed);
          return;
        }
        file.digest = digest;
        this.end();
      },
      (e: unknown) => {
        if (!this.destroyed) this.destroy(e as Error);
      },
    );
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    if (this.file) {
      cb(new SmartError('INTERNAL', 'a gzip stream reading a file range was written to'));
      return;
    }
    if (chunk.length) {
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
      this.took(chunk);
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
    // A read in flight finishes first (close waits for it), then returns its buffer.
    const handle = this.file?.handle;
    if (this.file) this.file.handle = undefined;
    void handle?.close().catch(() => undefined);
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
    // A block read from a file is hashed on the pool: its buffer goes back once that is done too.
    const hashing = this.file?.hash;
    const giveBack = (): void => {
      if (hashing) hashing.flushed().then(() => returnBlockBuffer(buffer), () => returnBlockBuffer(buffer));
      else returnBlockBuffer(buffer);
    };
    this.engine.compressBlock(block, { level: this.level, dictionary, last, signal: this.abort.signal }).then(
      (output) => {
        giveBack();
        job.done = true;
        job.output = output;
        this.pump();
      },
      (e: unknown) => {
        giveBack();
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
    if (this.file && this.ready.length === 0) this.readBlock(this.file);
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
  const range = fileRangeOf(tar);
  if (range && !tar.readableDidRead) return gzipFileRange(tar, range, options);
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

/**
 * The same, with the tar read by the compressor from the file range `tar` is marked as (see
 * readFileRange): its diff id is the sha256 of the range, checked there against what `tar` would
 * have checked. `tar` itself is never read; it is kept until the compressed stream closes so that
 * destroying it (an abort signal attached to it) still stops the compression, and destroyed then.
 */
function gzipFileRange(tar: Readable, range: FileRange, options: ParallelGzipOptions & { verifiedDiffId?: Digest }): ParallelCompressedLayerStream {
  // The diff id a caller says it verified is checked here too: the mark carries every check it knows of.
  const checks = [...(range.checks ?? [])];
  const verified = options.verifiedDiffId;
  if (verified && !checks.some((c) => c.digest === verified)) checks.push({ digest: verified, what: `layer ${verified} (uncompressed)` });
  const gz = new ParallelGzip(options).readFileRange({ ...range, checks });
  tieRangeReader(tar, gz, () => gz.writableFinished);
  return {
    stream: gz,
    diffId: () => gz.fileDigest,
    uncompressedSize: () => gz.stats.bytesIn,
    engine: gz.engine.name,
    level: gz.level,
    blockSize: gz.blockSize,
  };
}
