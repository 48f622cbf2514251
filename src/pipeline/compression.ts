/**
 * Decompressing layer streams (the engine is chosen here, callers name only the format), and a tap
 * that learns the diff id of a compressed stream without changing its bytes.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { Duplex, PassThrough, Readable, Transform, pipeline, type TransformCallback } from 'node:stream';
import { SmartError, isSmartError } from '../errors.js';
import { decompressionBomb, decompressionBound, maxDecompressedBytes } from '../limits.js';
import type { Digest } from '../oci/digest.js';
import type { ArchiveCompression, Compression } from '../oci/mediatypes.js';
import { igzipFileDecompressor } from './gunzip.js';
import { verifiedStream } from './digest-stream.js';
import { localFileOf, verifyFile, type VerifyExpectation } from './local-file.js';
import { NativeGunzip, NativeGunzipFile, nativeInflate } from './native-gunzip.js';
import { gunzipDecoder, type GunzipEngine } from './parallel-gzip.js';
import { findProgram } from './programs.js';

export interface DecompressOptions {
  /**
   * The gzip decoder: Node's zlib when absent; `await chooseGunzip()` (parallel-gzip.ts) gives
   * `igzip -d` as a child process when it is installed (faster), zlib otherwise.
   */
  gunzip?: GunzipEngine;
  /**
   * The compressed size, where the source declares one (a descriptor's size, a tar member's): the
   * output is then bounded relative to it (src/limits.ts `maxDecompressedBytes`), and a stream that
   * decompresses past the bound is stopped there with LIMIT_EXCEEDED, a decompression bomb.
   */
  compressedSize?: number;
  /**
   * The digest the decompressed bytes must have (a layer's diff id): the result is then checked
   * against it, and errors in place of its end when it differs (the isal engine hashes in its own
   * jobs; the others through a VerifyStream hashing on the pool).
   */
  verify?: VerifyExpectation;
}

/**
 * Decompresses `source` as `compression`. gzip through Node's zlib or `options.gunzip` (several
 * members read as one stream, as the format allows); zstd, bzip2 and xz (bzip2 and xz: whole
 * archives, never a layer) through their programs, since Node 20 has none of them. A corrupt or
 * truncated stream errors with CORRUPT_ARCHIVE naming `what`; errors of `source` pass through
 * unchanged. Destroying the result destroys `source`.
 */
export function decompress(source: Readable, compression: ArchiveCompression, what: string, options: DecompressOptions = {}): Readable {
  if (compression === 'none') return options.verify ? verifiedStream(source, options.verify, { offThread: true }) : source;
  let limit: ((total: number) => void) | undefined;
  const size = options.compressedSize;
  if (size !== undefined) {
    const bound = decompressionBound();
    const max = maxDecompressedBytes(size, bound);
    limit = (total) => {
      if (total > max) throw decompressionBomb(what, size, max, bound);
    };
  }
  const inflate = compression === 'gzip' && options.gunzip?.name === 'isal' ? nativeInflate() : undefined;
  if (inflate) return nativeDecompress(inflate, source, what, limit, options.verify);
  const program = compression === 'gzip' && options.gunzip?.name === 'igzip' ? options.gunzip.program : null;
  const file = program ? localFileOf(source) : undefined;
  const check = file?.checks?.length === 1 ? file.checks[0] : undefined;
  let out: Readable;
  if (program && file && check?.size !== undefined && !source.readableDidRead) {
    // A local file checked against one digest: igzip reads the file itself, checked alongside
    // through one reused buffer (the gzip bytes no longer pass through this process on their way
    // to igzip: ~50 ms of a 190 MB pull's main thread were those writes alone).
    const expect = { digest: check.digest, size: check.size, what: file.what ?? check.what };
    // A kept blob was checked as it was handed over (LocalFile.shared): not read a second time.
    const verified = file.shared ? Promise.resolve(file.onBytes?.(check.size)) : verifyFile(file.path, expect, file.onBytes);
    verified.catch(() => undefined);
    out = igzipFileDecompressor(program, what, { path: file.path, size: check.size, verified });
    source.on('error', () => undefined);
    // Nothing reads `source` now; destroyed with the output (an abort signal on it still stops both).
    source.once('close', () => out.destroy(source.errored ?? undefined));
    out.once('close', () => source.destroy());
  } else {
    const engine = compression === 'gzip' ? gunzipDecoder(what, options.gunzip) : programDecompressor(compression, what);
    out = pipeline(source, engine, () => {
      /* errors surface through the iterator below */
    });
  }
  const renamed = Readable.from(renameErrors(out, what, compression, limit), { objectMode: false, highWaterMark: 64 * 1024 });
  // The decompressors hand on fresh buffers, never touched again: they may be hashed on the pool.
  return options.verify ? verifiedStream(renamed, options.verify, { offThread: true }) : renamed;
}

/**
 * gzip through ISA-L's inflate on the pool (native-gunzip.ts), the output checked by hashing jobs
 * that run beside it. A local blob file checked against one digest is read by the jobs themselves.
 */
function nativeDecompress(inflate: NonNullable<ReturnType<typeof nativeInflate>>, source: Readable, what: string, limit: ((total: number) => void) | undefined, verify: VerifyExpectation | undefined): Readable {
  const options = { what, ...(limit ? { limit } : {}), ...(verify ? { verify } : {}) };
  const file = localFileOf(source);
  const check = file?.checks?.length === 1 ? file.checks[0] : undefined;
  if (!file || check?.size === undefined || source.readableDidRead) {
    return pipeline(source, new NativeGunzip(inflate, options), () => {
      /* the error reaches the reader through the stream */
    });
  }
  const out = new NativeGunzipFile(inflate, {
    ...options,
    file: {
      path: file.path,
      check: { digest: check.digest, size: check.size, what: file.what ?? check.what },
      ...(file.shared ? { checked: true } : {}),
      ...(file.onBytes ? { onBytes: file.onBytes } : {}),
    },
  });
  source.on('error', () => undefined);
  // Nothing reads `source` now; destroyed with the output (an abort signal on it still stops both).
  source.once('close', () => out.destroy(source.errored ?? undefined));
  out.once('close', () => source.destroy());
  return out;
}

/** Passes the chunks on, naming the decoder's errors; `limit` sees the running total and may throw. */
async function* renameErrors(stream: AsyncIterable<Buffer>, what: string, format: string, limit?: (total: number) => void): AsyncGenerator<Buffer> {
  let total = 0;
  try {
    for await (const chunk of stream) {
      if (limit) limit((total += chunk.length));
      yield chunk;
    }
  } catch (e) {
    if (isSmartError(e)) throw e;
    const err = e as NodeJS.ErrnoException;
    if (typeof err.code === 'string' && err.code.startsWith('Z_')) {
      const truncated = err.code === 'Z_BUF_ERROR' || /unexpected end/i.test(err.message);
      throw new SmartError('CORRUPT_ARCHIVE', `${what}: ${truncated ? `truncated ${format} stream` : `corrupt ${format} stream (${err.message})`}`, {
        cause: e,
      });
    }
    throw e;
  }
}

/** The program that decompresses each format Node cannot, with its Debian package. */
const DECOMPRESSORS = {
  zstd: { program: 'zstd', args: ['-d', '-c', '-q'], pkg: 'zstd' },
  // bzip2 -q would say nothing at all of a corrupt stream.
  bzip2: { program: 'bzip2', args: ['-d', '-c'], pkg: 'bzip2' },
  xz: { program: 'xz', args: ['-d', '-c', '-q'], pkg: 'xz-utils' },
} as const;

function programDecompressor(format: keyof typeof DECOMPRESSORS, what: string): Duplex {
  const { program, args, pkg } = DECOMPRESSORS[format];
  const input = new PassThrough();
  const output = new PassThrough();
  void (async () => {
    const found = await findProgram(program);
    if (!found) {
      throw new SmartError('UNSUPPORTED', `${what} is ${format}-compressed and no ${format} decompressor is available`, {
        hint: `install the ${pkg} package (apt-get install ${pkg})`,
      });
    }
    const child = spawn(found, [...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stdin.on('error', () => {
      /* the exit status reports it */
    });
    input.pipe(child.stdin);
    output.once('close', () => child.kill());
    child.stdout.pipe(output, { end: false });
    const code = await new Promise<number>((resolve, reject) => {
      child.once('error', reject);
      child.once('close', (c) => resolve(c ?? 1));
    });
    if (code !== 0) {
      // The first line says what went wrong (bzip2 follows it with paragraphs of advice).
      const said = stderr.trim().split('\n')[0]!.trim().replace(/;$/, '');
      throw new SmartError('CORRUPT_ARCHIVE', `${what}: corrupt or truncated ${format} stream (${said || `exit ${code}`})`);
    }
    output.end();
  })().catch((e: unknown) => output.destroy(e as Error));
  return Duplex.from({ writable: input, readable: output });
}

/**
 * Passes compressed bytes through unchanged while decompressing a copy to hash the tar inside.
 * The end of the stream waits for the side branch, so `diffId()` is valid once it has ended; a
 * corrupt compressed stream errors the main stream.
 */
export class DiffIdTap extends Transform {
  private readonly hash = createHash('sha256');
  private readonly feed = new PassThrough();
  private readonly branchDone: Promise<void>;
  private result: Digest | undefined;

  /**
   * `compressedSize`, where known, bounds what the side branch may decompress to (decompress());
   * `gunzip`: its gzip decoder (`chooseGunzip()`: ISA-L on the pool where the addon has it).
   */
  constructor(compression: Compression, what: string, compressedSize?: number, gunzip?: GunzipEngine) {
    super();
    const branch = decompress(this.feed, compression, what, { ...(compressedSize !== undefined ? { compressedSize } : {}), ...(gunzip ? { gunzip } : {}) });
    this.branchDone = (async () => {
      for await (const chunk of branch) this.hash.update(chunk as Buffer);
    })();
    // Never an unhandled rejection: the error is delivered through _transform/_flush.
    this.branchDone.catch(() => undefined);
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.push(chunk);
    if (this.feed.write(chunk)) cb();
    else {
      // The side branch is slower (it decompresses): wait for it, or for its failure.
      const onDrain = () => cb();
      this.feed.once('drain', onDrain);
      this.branchDone.catch((e: Error) => {
        this.feed.off('drain', onDrain);
        cb(e);
      });
    }
  }

  override _flush(cb: TransformCallback): void {
    this.feed.end();
    this.branchDone.then(
      () => {
        this.result = `sha256:${this.hash.digest('hex')}` as Digest;
        cb();
      },
      (e: Error) => cb(e),
    );
  }

  override _destroy(err: Error | null, cb: (error?: Error | null) => void): void {
    this.feed.destroy();
    cb(err);
  }

  diffId(): Digest {
    if (!this.result) throw new SmartError('INTERNAL', 'diff id read before the stream ended');
    return this.result;
  }
}
