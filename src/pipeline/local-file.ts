/**
 * Streams that are a whole local file as it is, marked with the file: a writer on the same machine
 * may then copy the file in the kernel (copy_file_range, or a clone where the filesystem can) and
 * verify the copy, in place of moving every byte through the process. Here every fresh buffer a
 * stream allocates costs page faults: reading 50 MB through a stream took ~200 ms of system time,
 * into one reused buffer 18 ms. Stages that pass the bytes unchanged (verification, counting) carry
 * the mark to their output; a reader that does not know it reads the stream as before.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { SmartError } from '../errors.js';
import type { Digest } from '../oci/digest.js';
import { sha256FileOffThread } from './sha256.js';

export interface LocalFile {
  /** The file's path; the stream is its whole content. */
  path: string;
  /** Told of the bytes as a copy is verified, in place of the stream's progress (see `counted`). */
  onBytes?: (bytes: number) => void;
  /** What the bytes are, as the stream's verification names them (`blob sha256:… of oci:dir`): a copy that fails its check is named so. */
  what?: string;
  /** The digests the stream checks the bytes against (verifiedStream), for a reader that reads the file itself. */
  checks?: VerifyExpectation[];
  /**
   * The machine's own kept copy of a blob (cache/blob-cache.ts, checked before each use, this one
   * included): a writer on its filesystem may hardlink it in place of copying it, and need not check
   * that inode again. Never a file of a store or a layout someone else reads: what shares its inode
   * must be ours to check.
   */
  shared?: boolean;
}

const marks = new WeakMap<Readable, LocalFile>();

/** Marks `stream` as the whole of `file`; returns it. */
export function markLocalFile<T extends Readable>(stream: T, file: LocalFile): T {
  marks.set(stream, file);
  return stream;
}

/** The file `stream` is the whole of, when it is marked so. */
export function localFileOf(stream: Readable): LocalFile | undefined {
  return marks.get(stream);
}

export interface VerifyExpectation {
  digest: Digest;
  /** Known size: more bytes error at once, fewer at the end. */
  size?: number;
  /** What the bytes are, for the message: "layer sha256:… of oci:dir". */
  what: string;
}

/**
 * A stream that is a byte range of a local file as it is (a layer tar inside a docker-save
 * archive), marked so: a compressor may then read the range itself, straight into the buffers it
 * compresses, in place of taking the stream's chunks (fresh buffers, each copied once more). The
 * stages that pass the bytes unchanged carry the mark with what they would have done: the digests
 * they check the bytes against (`checks`, every one of them), and whom they tell of the bytes.
 */
export interface FileRange {
  path: string;
  offset: number;
  length: number;
  checks?: VerifyExpectation[];
  onBytes?: (bytes: number) => void;
}

const rangeMarks = new WeakMap<Readable, FileRange>();

/** Marks `stream` as the bytes of `range`; returns it. */
export function markFileRange<T extends Readable>(stream: T, range: FileRange): T {
  rangeMarks.set(stream, range);
  return stream;
}

/** The file range `stream` is, when it is marked so. */
export function fileRangeOf(stream: Readable): FileRange | undefined {
  return rangeMarks.get(stream);
}

/**
 * What a reader of `range` fails with when the file ends `got` bytes into it (cut short under
 * the reader): the size mismatch of its first check, as VerifyStream would name it, else a
 * truncated member.
 */
export function rangeEndedError(range: FileRange, got: number): SmartError {
  const check = range.checks?.[0];
  return check
    ? verifyError({ ...check, size: range.length }, got, check.digest)!
    : new SmartError('CORRUPT_ARCHIVE', `${range.path}: ended ${got} bytes into a ${range.length}-byte member (truncated?)`);
}

/** What the whole of `range`, read and hashed to `digest`, fails the first of its checks with; undefined when it passes them all. */
export function rangeCheckError(range: FileRange, digest: Digest): SmartError | undefined {
  for (const check of range.checks ?? []) {
    const failed = verifyError(check, range.length, digest);
    if (failed) return failed;
  }
  return undefined;
}

/**
 * Ties `reader`, which reads the range `tar` is marked as in place of `tar` itself, to `tar`:
 * destroying `tar` (an abort signal attached to it) stops `reader` unless `finished()` (the
 * range read whole and checked), and `tar`, never read, is destroyed once `reader` closes. A small
 * range can be read, found bad and destroyed before its consumer attaches: the error is kept on
 * `reader` (`errored`) and reaches the consumer when it pipes or iterates, as from a pipeline,
 * instead of crashing the process as an unhandled 'error' event.
 */
export function tieRangeReader(tar: Readable, reader: Readable, finished: () => boolean): void {
  reader.on('error', () => undefined);
  const stop = (): void => {
    if (!reader.destroyed && !finished()) reader.destroy(tar.errored ?? new SmartError('CANCELLED', 'layer read cancelled'));
  };
  tar.on('error', () => undefined);
  tar.once('close', stop);
  reader.once('close', () => {
    tar.off('close', stop);
    tar.destroy();
  });
}

/**
 * Checks the file at `path` against a digest and size, read through one reused buffer; `onBytes`
 * is told of the bytes as they are hashed. Throws SIZE_MISMATCH or DIGEST_MISMATCH as VerifyStream does.
 */
export async function verifyFile(path: string, expect: { digest: Digest; size: number; what: string }, onBytes?: (bytes: number) => void): Promise<void> {
  // Read and hashed on the pool where the addon can (progress is then told once, at the end).
  const offThread = await sha256FileOffThread(path, expect.size);
  if (offThread) {
    if (offThread.bytes > expect.size) throw tooLong(expect);
    onBytes?.(offThread.bytes);
    const failed = verifyError(expect, offThread.bytes, `sha256:${offThread.hex}` as Digest);
    if (failed) throw failed;
    return;
  }
  const hash = createHash('sha256');
  const buffer = Buffer.allocUnsafe(1 << 20);
  let total = 0;
  const handle = await fs.open(path, 'r');
  try {
    for (let n; (n = (await handle.read(buffer, 0, buffer.length, null)).bytesRead) > 0; ) {
      total += n;
      if (total > expect.size) break;
      hash.update(buffer.subarray(0, n));
      onBytes?.(n);
    }
  } finally {
    await handle.close();
  }
  // The messages of VerifyStream: a copy fails as the stream it replaces would have.
  if (total > expect.size) throw tooLong(expect);
  const failed = verifyError(expect, total, `sha256:${hash.digest('hex')}` as Digest);
  if (failed) throw failed;
}

function tooLong(expect: { digest: Digest; size: number; what: string }): SmartError {
  return new SmartError('SIZE_MISMATCH', `${expect.what}: more bytes than the ${expect.size} its descriptor declares`, { input: expect.digest });
}

/**
 * What VerifyStream fails with at the end of `bytes` bytes that hash to `got`, checked against
 * `expect`; undefined when they match. Shared by every reader that checks bytes in its place.
 */
export function verifyError(expect: VerifyExpectation, bytes: number, got: Digest): SmartError | undefined {
  const { size, digest, what } = expect;
  if (size !== undefined && bytes !== size) return new SmartError('SIZE_MISMATCH', `${what}: ${bytes} bytes, but its descriptor declares ${size} (truncated?)`, { input: digest });
  if (got !== digest) return new SmartError('DIGEST_MISMATCH', `${what}: content hashes to ${got}, not ${digest}`, { input: digest });
  return undefined;
}
