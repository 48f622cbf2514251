/**
 * zstd compression of a layer (Node 20 has no zstd of its own): libzstd inside this process
 * through the native addon when it is built, else the `zstd` program. Both make the same frame
 * for the same level (a content checksum, multithreaded mode on every core with 4 MiB jobs, whose
 * output does not depend on the number of threads), so a layer pushed either way dedupes.
 */
import { spawn } from 'node:child_process';
import { Duplex, PassThrough, Transform, pipeline, type Readable, type TransformCallback } from 'node:stream';
import { SmartError } from '../errors.js';
import type { Digest } from '../oci/digest.js';
import { diffIdStage } from './digest-stream.js';
import type { CompressedLayerStream } from './layer-streams.js';
import { nativeBinding, type NativeBinding } from './native.js';
import { findProgram } from './programs.js';
import { coreCount } from './cores.js';

export const DEFAULT_ZSTD_LEVEL = 3;
/**
 * The multithreaded job size (the program's -B), the same for both engines so their frames are
 * identical. 4 MiB, not libzstd's default (8 MiB at level 3): measured with `zstd -3 -T2` on a
 * 185 MB image, peak memory 61 → 35 MB (a 770 MB layer: 72 → 39 MB) for 0.3% more output at the
 * same speed. Every worker holds a job's input and output.
 */
export const ZSTD_JOB_SIZE = 4 * 1024 * 1024;

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
      const diff = diffIdStage(verifiedDiffId);
      const stream = pipeline(tar, diff.stage, new NativeZstdStream(binding, level), () => undefined);
      return { stream, diffId: diff.diffId, uncompressedSize: diff.size };
    },
  };
}

/**
 * Each chunk goes to libzstd on a pool thread; libzstd's own workers compress (every core) and
 * what they have finished comes back. One call at a time per context, so the order is the input's.
 */
class NativeZstdStream extends Transform {
  private context: unknown;

  constructor(
    private readonly binding: Required<NativeBinding>,
    level: number,
  ) {
    super({ readableHighWaterMark: 256 * 1024 });
    this.context = binding.zstdCreate(level, coreCount(), ZSTD_JOB_SIZE);
  }

  private run(chunk: Buffer, end: boolean, cb: TransformCallback): void {
    this.binding.zstdCompress(this.context, chunk, end).then(
      (out) => {
        if (out.length) this.push(out);
        if (end) this.release();
        cb();
      },
      (e: Error) => {
        this.release();
        cb(new SmartError('INTERNAL', `zstd failed: ${e.message}`, { cause: e }));
      },
    );
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    if (chunk.length === 0) cb();
    else this.run(chunk, false, cb);
  }

  override _flush(cb: TransformCallback): void {
    this.run(Buffer.alloc(0), true, cb);
  }

  /** Frees libzstd's memory (and threads) now rather than at garbage collection; never mid-call. */
  private release(): void {
    if (this.context) this.binding.zstdFree(this.context);
    this.context = null;
  }

  override _destroy(err: Error | null, cb: (error?: Error | null) => void): void {
    // A call in flight still owns the context: the garbage collector frees it after.
    try {
      this.release();
    } catch {
      /* compressing: left to the finalizer */
    }
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
