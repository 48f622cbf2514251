/**
 * Composite stages for layers: the shape of a compressing stage (parallel-gzip.ts, zstd.ts), and a
 * tap that learns the diff id of a stream that is already compressed without changing its bytes.
 */
import { createHash } from 'node:crypto';
import { PassThrough, Transform, type Readable, type TransformCallback } from 'node:stream';
import { SmartError } from '../errors.js';
import type { Digest } from '../oci/digest.js';
import type { Compression } from '../oci/mediatypes.js';
import { decompress } from './compression.js';

export interface CompressedLayerStream {
  /** The gzip bytes; its consumer hashes them (the destination does, to name the blob). */
  stream: Readable;
  /** sha256 of the tar that went in: valid once `stream` has ended. */
  diffId(): Digest;
  uncompressedSize(): number;
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

  /** `compressedSize`, where known, bounds what the side branch may decompress to (decompress()). */
  constructor(compression: Compression, what: string, compressedSize?: number) {
    super();
    const branch = decompress(this.feed, compression, what, compressedSize !== undefined ? { compressedSize } : {});
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
