/** Pass-through stages that hash bytes as they flow: digests cost no extra pass and no buffer. */
import { Readable, Transform, type TransformCallback } from 'node:stream';
import { SmartError } from '../errors.js';
import type { Digest } from '../oci/digest.js';
import { chunkHasher, inThreadHasher, type ChunkHasher } from './sha256.js';
import { fileRangeOf, localFileOf, markFileRange, markLocalFile, verifyError, type VerifyExpectation } from './local-file.js';

/**
 * Hashes and counts what passes through; `digest` and `size` are final once the stream has ended.
 * `offThread`: hashed on the libuv pool where the addon can (src/pipeline/sha256.ts), for a
 * source whose chunks are never modified after they are passed on (a compressor's output).
 */
export class DigestStream extends Transform {
  private readonly hash: ChunkHasher;
  private bytes = 0;
  private result: Digest | undefined;

  constructor(options: { offThread?: boolean } = {}) {
    super();
    this.hash = options.offThread ? chunkHasher() : inThreadHasher();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length;
    if (this.hash.update(chunk)) cb(null, chunk);
    else this.hash.drained().then(() => cb(null, chunk), cb);
  }

  override _flush(cb: TransformCallback): void {
    this.hash.digest().then((hex) => {
      this.result = `sha256:${hex}` as Digest;
      cb();
    }, cb);
  }

  get size(): number {
    return this.bytes;
  }

  /** The sha256 of everything that passed; throws if read before the end. */
  get digest(): Digest {
    if (!this.result) throw new SmartError('INTERNAL', 'digest read before the stream ended');
    return this.result;
  }
}

export type { VerifyExpectation } from './local-file.js';

/**
 * Passes bytes through and checks them against a digest (and size). A mismatch errors the stream in
 * place of its end, so nothing downstream sees a clean end of bad bytes.
 */
export class VerifyStream extends Transform {
  private readonly hash: ChunkHasher;
  private bytes = 0;

  /**
   * `offThread`: hash on the libuv pool where the addon can (src/pipeline/sha256.ts), for a source
   * whose chunks are never modified after they are passed on (a decompressor's output, say: not a
   * reader that refills one buffer).
   */
  constructor(
    private readonly expect: VerifyExpectation,
    options: { offThread?: boolean } = {},
  ) {
    super();
    this.hash = options.offThread ? chunkHasher() : inThreadHasher();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length;
    if (this.expect.size !== undefined && this.bytes > this.expect.size) {
      cb(
        new SmartError('SIZE_MISMATCH', `${this.expect.what}: more bytes than the ${this.expect.size} its descriptor declares`, {
          input: this.expect.digest,
        }),
      );
      return;
    }
    if (this.hash.update(chunk)) cb(null, chunk);
    else this.hash.drained().then(() => cb(null, chunk), cb);
  }

  override _flush(cb: TransformCallback): void {
    this.hash.digest().then((hex) => cb(verifyError(this.expect, this.bytes, `sha256:${hex}` as Digest)), cb);
  }

  get size(): number {
    return this.bytes;
  }
}

/**
 * `raw` piped through a VerifyStream, for returning to a caller who consumes it later. An error
 * may come before the caller attaches (a small blob is read whole at once): it is kept on the
 * stream (`errored`) and reaches the consumer when it pipes or iterates, instead of crashing the
 * process as an unhandled 'error' event. Destroying the result destroys `raw`.
 */
export function verifiedStream(raw: NodeJS.ReadableStream & { destroy(error?: Error): void }, expect: VerifyExpectation, options: { offThread?: boolean } = {}): VerifyStream {
  const verify = new VerifyStream(expect, options);
  const file = raw instanceof Readable ? localFileOf(raw) : undefined;
  if (file) markLocalFile(verify, { ...file, what: expect.what, checks: [...(file.checks ?? []), expect] });
  const range = raw instanceof Readable ? fileRangeOf(raw) : undefined;
  if (range) markFileRange(verify, { ...range, checks: [...(range.checks ?? []), expect] });
  verify.on('error', () => undefined);
  raw.on('error', (e: Error) => verify.destroy(e));
  verify.on('close', () => raw.destroy());
  raw.pipe(verify);
  return verify;
}

/**
 * The diff id of a tar on its way into a compressor: hashed as it passes, or, when the caller
 * already verifies the stream against a known digest (a Layer's `open()` of an uncompressed blob
 * does), that digest, with the bytes only counted: hashing every byte twice costs a core-second
 * per ~1.5 GB.
 */
export function diffIdStage(verified?: Digest): { stage: Transform; diffId(): Digest; size(): number } {
  if (!verified) {
    const hash = new DigestStream();
    return { stage: hash, diffId: () => hash.digest, size: () => hash.size };
  }
  let bytes = 0;
  let ended = false;
  const stage = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      bytes += chunk.length;
      cb(null, chunk);
    },
    flush(cb) {
      ended = true;
      cb();
    },
  });
  return {
    stage,
    diffId: () => {
      if (!ended) throw new SmartError('INTERNAL', 'diff id read before the stream ended');
      return verified;
    },
    size: () => bytes,
  };
}
