/**
 * zstd compression of a layer (Node 20 has no zstd of its own): libzstd inside this process
 * through the native addon when it is built, else the `zstd` program. Both make the same frame
 * for the same level (a content checksum, multithreaded mode on every core with 4 MiB jobs, whose
 * output does not depend on the number of threads), so a layer pushed either way dedupes.
 */
import { spawn } from 'node:child_process';
import fs, { type FileHandle } from 'node:fs/promises';
import { Duplex, PassThrough, Readable, Transform, pipeline, type TransformCallback } from 'node:stream';
import { SmartError } from '../errors.js';
import type { Digest } from '../oci/digest.js';
import { diffIdStage } from './digest-stream.js';
import type { CompressedLayerStream } from './layer-streams.js';
import { fileRangeOf, rangeCheckError, rangeEndedError, tieRangeReader, type FileRange } from './local-file.js';
import { nativeBinding, type NativeBinding } from './native.js';
import { findProgram } from './programs.js';
import { coreCount } from './cores.js';
import { chunkHasher } from './sha256.js';

export const DEFAULT_ZSTD_LEVEL = 3;
/**
 * The multithreaded job size (the program's -B), the same for both engines so their frames are
 * identical. 4 MiB, not libzstd's default (8 MiB at level 3): measured with `zstd -3 -T2` on a
 * 185 MB image, peak memory 61 → 35 MB (a 770 MB layer: 72 → 39 MB) for 0.3% more output at the
 * same speed. Every worker holds a job's input and output.
 */
export const ZSTD_JOB_SIZE = 4 * 1024 * 1024;
/**
 * The in-process engine is given its input in calls of at least this many bytes (smaller chunks
 * are gathered first), and a file range is read in blocks of this size. Each call is a hand-off
 * to the pool and back, during which libzstd takes no input: 100 MB of a layer given in 64 KiB
 * calls took 0.30 s, in 1 MiB calls 0.21 s (2 cores, level 3).
 */
const CALL_BYTES = 1024 * 1024;
/** Blocks of a file range read and hashed ahead of the one being compressed. */
const READ_AHEAD = 2;

export interface ZstdEngine {
  /** 'in-process 1.5.4' or the program's path, for `--json`. */
  readonly implementation: string;
  /** tar → [diff id] → zstd on all cores, streamed with back-pressure both ways. */
  layerStream(tar: Readable, level: number, verifiedDiffId?: Digest): CompressedLayerStream;
}

/**
 * The in-process engine if the addon has zstd, else the program; fails early and clearly when
 * zstd is asked for and neither is there. `via: 'program'` asks for the program (tests compare).
 */
export async function requireZstd(via: 'best' | 'program' = 'best'): Promise<ZstdEngine> {
  const binding = via === 'best' ? nativeBinding() : null;
  if (binding?.zstdCreate) return nativeZstdEngine(binding as Required<NativeBinding>);
  const zstd = await findProgram('zstd');
  if (!zstd) throw new SmartError('UNSUPPORTED', '--compression zstd needs the zstd program, which is not installed', { hint: 'apt-get install zstd' });
  return programZstdEngine(zstd);
}

function nativeZstdEngine(binding: Required<NativeBinding>): ZstdEngine {
  return {
    implementation: `in-process ${binding.zstdVersion}`,
    layerStream(tar, level, verifiedDiffId) {
      const range = fileRangeOf(tar);
      if (range && !tar.readableDidRead) return zstdFileRange(binding, tar, range, level, verifiedDiffId);
      const diff = diffIdStage(verifiedDiffId);
      const stream = pipeline(tar, diff.stage, new NativeZstdStream(binding, level), () => undefined);
      return { stream, diffId: diff.diffId, uncompressedSize: diff.size };
    },
  };
}

/**
 * Each call goes to libzstd on a pool thread; libzstd's own workers compress (every core) and
 * what they have finished comes back. One call at a time per context, so the order is the input's.
 * Chunks smaller than CALL_BYTES are copied into a gathering buffer first: libzstd copies its input
 * into its jobs' buffers, so the one given to a call is free again once the call is done.
 */
class NativeZstdStream extends Transform {
  private readonly compressor: ZstdCalls;
  private gather: Buffer | undefined;
  private spare: Buffer | undefined;
  private gathered = 0;

  constructor(binding: Required<NativeBinding>, level: number) {
    super({ readableHighWaterMark: 256 * 1024 });
    this.compressor = new ZstdCalls(binding, level);
  }

  /** Compresses `input`; `done` once the call is over and its output pushed. */
  private run(input: Buffer, end: boolean, done: (e?: Error) => void): void {
    this.compressor.call(input, end).then((out) => {
      if (out.length) this.push(out);
      done();
    }, done);
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    if (this.gathered === 0 && chunk.length >= CALL_BYTES) {
      this.run(chunk, false, cb);
      return;
    }
    let offset = 0;
    const fill = (e?: Error): void => {
      if (e) return cb(e);
      while (offset < chunk.length) {
        this.gather ??= this.spare ?? Buffer.allocUnsafe(CALL_BYTES);
        this.spare = undefined;
        const n = chunk.copy(this.gather, this.gathered, offset);
        this.gathered += n;
        offset += n;
        if (this.gathered === CALL_BYTES) {
          const full = this.gather;
          this.gather = undefined;
          this.gathered = 0;
          this.run(full, false, (err) => {
            this.spare = full;
            fill(err);
          });
          return;
        }
      }
      cb();
    };
    fill();
  }

  override _flush(cb: TransformCallback): void {
    // What is gathered goes in a call of its own before the end: a first call that also ends the
    // frame would have libzstd write the content size into the frame's header, and a small layer
    // would get bytes of its own (another digest than the program's, or the file range's).
    const rest = this.gather?.subarray(0, this.gathered);
    if (!rest?.length) return this.run(Buffer.alloc(0), true, cb);
    this.run(rest, false, (e) => (e ? cb(e) : this.run(Buffer.alloc(0), true, cb)));
  }

  override _destroy(err: Error | null, cb: (error?: Error | null) => void): void {
    this.compressor.release();
    cb(err);
  }
}

/** The calls of one libzstd context, one at a time; its memory (and threads) freed at the end, or when let go. */
class ZstdCalls {
  private context: unknown;
  private busy = false;
  private released = false;

  constructor(
    private readonly binding: Required<NativeBinding>,
    level: number,
  ) {
    this.context = binding.zstdCreate(level, coreCount(), ZSTD_JOB_SIZE);
  }

  /** The compressed bytes libzstd has finished after taking `input` (all of them once `end`). */
  async call(input: Buffer, end: boolean): Promise<Buffer> {
    if (this.released) throw new SmartError('CANCELLED', 'zstd compression stopped');
    this.busy = true;
    try {
      const out = await this.binding.zstdCompress(this.context, input, end);
      if (end) this.free();
      return out;
    } catch (e) {
      this.free();
      throw new SmartError('INTERNAL', `zstd failed: ${(e as Error).message}`, { cause: e });
    } finally {
      this.busy = false;
      if (this.released) this.free();
    }
  }

  /** No more calls: the context is freed now, or as soon as the call in flight is done (never mid-call). */
  release(): void {
    this.released = true;
    if (!this.busy) this.free();
  }

  private free(): void {
    if (this.context) this.binding.zstdFree(this.context);
    this.context = null;
  }
}

/**
 * The layer from `range` of a local file (a docker-save member), read by the compressor itself in
 * place of `tar`'s chunks: blocks of CALL_BYTES read on the pool, hashed there (chunkHasher) while
 * the block before is compressed, and the frame ended only once the range checks out against every
 * digest it is marked with and `verifiedDiffId`, so a bad layer never ends cleanly. Its diff id is
 * the sha256 of the range. `tar` is never read; destroying it stops the compression (tieRangeReader).
 */
function zstdFileRange(binding: Required<NativeBinding>, tar: Readable, range: FileRange, level: number, verifiedDiffId: Digest | undefined): CompressedLayerStream {
  const checks = [...(range.checks ?? [])];
  if (verifiedDiffId && !checks.some((c) => c.digest === verifiedDiffId)) checks.push({ digest: verifiedDiffId, what: `layer ${verifiedDiffId} (uncompressed)` });
  const reader = new ZstdRangeReader(binding, level, { ...range, checks });
  tieRangeReader(tar, reader, () => reader.digest !== undefined);
  return {
    stream: reader,
    diffId: () => {
      if (!reader.digest) throw new SmartError('INTERNAL', 'diff id read before the layer was read');
      return reader.digest;
    },
    uncompressedSize: () => range.length,
  };
}

class ZstdRangeReader extends Readable {
  private readonly compressor: ZstdCalls;
  private readonly hash = chunkHasher();
  private handle: FileHandle | undefined;
  private position: number;
  private remaining: number;
  /** Blocks read and hashed, waiting for their call. */
  private readonly ready: Buffer[] = [];
  /** Blocks compressed, free again once the hasher is past them; and blocks free to read into. */
  private compressed: Buffer[] = [];
  private readonly free: Buffer[] = [];
  private blocks = 0;
  private reading = false;
  private compressing = false;
  private checking = false;
  private ended = false;
  /** The consumer has room for more output. */
  private wanted = false;
  /** The sha256 of the range, once read whole and checked. */
  digest: Digest | undefined;

  constructor(
    binding: Required<NativeBinding>,
    level: number,
    private readonly range: FileRange,
  ) {
    super({ highWaterMark: 256 * 1024 });
    this.compressor = new ZstdCalls(binding, level);
    this.position = range.offset;
    this.remaining = range.length;
    process.nextTick(() => this.pump());
  }

  override _read(): void {
    this.wanted = true;
    this.pump();
  }

  private pump(): void {
    if (this.destroyed) return;
    if (!this.reading && this.remaining > 0 && this.ready.length < READ_AHEAD) void this.readBlock();
    // Read whole: checked at once, whether or not anyone reads the output yet.
    if (this.remaining === 0 && !this.reading && !this.checking) void this.check();
    if (this.compressing || !this.wanted) return;
    const block = this.ready.shift();
    if (block) this.compress(block, false);
    else if (this.digest && !this.ended) {
      this.ended = true;
      this.compress(Buffer.alloc(0), true);
    }
  }

  private async readBlock(): Promise<void> {
    this.reading = true;
    try {
      if (!this.handle) {
        const opened = await fs.open(this.range.path, 'r');
        if (this.destroyed) {
          await opened.close();
          return;
        }
        this.handle = opened;
      }
      const handle = this.handle;
      const want = Math.min(CALL_BYTES, this.remaining);
      const block = (await this.freeBlock()).subarray(0, want);
      for (let off = 0; off < want; ) {
        // Destroyed meanwhile: the handle is closed (or closing) and nothing wants the rest.
        if (this.destroyed) return;
        const { bytesRead } = await handle.read(block, off, want - off, this.position + off);
        if (bytesRead === 0) throw rangeEndedError(this.range, this.position + off - this.range.offset);
        off += bytesRead;
      }
      if (this.destroyed) return;
      this.position += want;
      this.remaining -= want;
      this.range.onBytes?.(want);
      if (!this.hash.update(block)) await this.hash.drained();
      this.ready.push(block);
    } catch (e) {
      this.destroy(e as Error);
      return;
    } finally {
      this.reading = false;
    }
    this.pump();
  }

  /**
   * A block to read into: one the hasher and the compressor are both done with (libzstd copies its
   * input; the hasher reads a block on the pool after update returns), else a new one while fewer
   * than READ_AHEAD + 2 exist. A fresh block for every read is freed only by a collection, which
   * the pool's reads and hashes did not bring soon enough: a 1 GB layer's push peaked at 1.17 GB
   * that way (3.7 s), at 134-136 MB with the blocks reused (2.65 s).
   */
  private async freeBlock(): Promise<Buffer> {
    if (!this.free.length && this.compressed.length && this.blocks >= READ_AHEAD + 2) {
      await this.hash.flushed();
      this.free.push(...this.compressed);
      this.compressed = [];
    }
    const block = this.free.pop();
    if (block) return block;
    this.blocks++;
    return Buffer.allocUnsafe(CALL_BYTES);
  }

  private compress(input: Buffer, end: boolean): void {
    this.compressing = true;
    this.compressor.call(input, end).then(
      (out) => {
        this.compressing = false;
        if (input.length) this.compressed.push(input);
        if (this.destroyed) return;
        if (out.length && !this.push(out)) this.wanted = false;
        if (end) this.push(null);
        else this.pump();
      },
      (e: Error) => {
        this.compressing = false;
        this.destroy(e);
      },
    );
  }

  /** Read whole: the file closed and the range checked; the frame's end may follow. */
  private async check(): Promise<void> {
    this.checking = true;
    this.closeFile();
    let hex: string;
    try {
      hex = await this.hash.digest();
    } catch (e) {
      this.destroy(e as Error);
      return;
    }
    if (this.destroyed) return;
    const digest = `sha256:${hex}` as Digest;
    const failed = rangeCheckError(this.range, digest);
    if (failed) {
      this.destroy(failed);
      return;
    }
    this.digest = digest;
    this.pump();
  }

  private closeFile(): void {
    const handle = this.handle;
    this.handle = undefined;
    void handle?.close().catch(() => undefined);
  }

  override _destroy(err: Error | null, cb: (error?: Error | null) => void): void {
    this.closeFile();
    this.compressor.release();
    cb(err);
  }
}

function programZstdEngine(program: string): ZstdEngine {
  return {
    implementation: program,
    layerStream(tar, level, verifiedDiffId) {
      const diff = diffIdStage(verifiedDiffId);
      const child = spawn(program, [`-${level}`, '-T0', `-B${ZSTD_JOB_SIZE}`, '-q', '-c', '--no-progress'], { stdio: ['pipe', 'pipe', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.stdin.on('error', () => undefined); // reported through the exit status
      const out = new PassThrough({ highWaterMark: 256 * 1024 });
      child.stdout.pipe(out, { end: false });
      child.once('close', (code) => {
        if (code === 0) out.end();
        else out.destroy(new SmartError('INTERNAL', `zstd failed (${stderr.trim().split('\n').pop() || `exit ${code}`})`));
      });
      out.once('close', () => {
        if (child.exitCode === null) child.kill();
      });
      const engine = Duplex.from({ writable: child.stdin, readable: out });
      const stream = pipeline(tar, diff.stage, engine, () => undefined);
      return { stream, diffId: diff.diffId, uncompressedSize: diff.size };
    },
  };
}
