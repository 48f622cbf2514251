/**
 * A file written in batches: chunks are gathered up to BATCH_BYTES and written with one writev.
 *
 * Why: each write is a job on the libuv pool, and waking a pool thread costs 20-50 µs on the VMs
 * CI runs on (a futex wake and an inter-processor interrupt), as much as writing a 64 KiB chunk
 * into the page cache. A 67 MB blob from a registry arrives in ~1,100 such chunks, and
 * fs.WriteStream writes each alone unless the one before is still being written.
 *
 * A chunk is acknowledged before it is written (that is how chunks gather), so it must not be
 * changed afterwards: the rule for every chunk pushed into a Readable, which is what pipes into
 * this. A failed write fails a later write or the end, so a pipeline into it rejects; callers
 * write a temporary file and rename it only after a clean end.
 */
import fs from 'node:fs';
import { Writable } from 'node:stream';

/** Bytes gathered before a write: 16 chunks of a socket or a file stream. */
const BATCH_BYTES = 1024 * 1024;

type Callback = (error?: Error | null) => void;

export class BatchedFileWriter extends Writable {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private writing = false;
  /** A destroy that came while a write was on the pool: the descriptor is closed once it is back. */
  private closeWhenWritten: (() => void) | undefined;

  /** `describe`: a failed write's error as the writer's owner words it (which file of which store). */
  constructor(
    private readonly fd: number,
    private readonly batchBytes = BATCH_BYTES,
    private readonly describe: (e: Error) => Error = (e) => e,
  ) {
    super({ highWaterMark: batchBytes });
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, cb: Callback): void {
    this.gather(chunk);
    this.writeIfFull(cb);
  }

  override _writev(chunks: { chunk: Buffer }[], cb: Callback): void {
    for (const { chunk } of chunks) this.gather(chunk);
    this.writeIfFull(cb);
  }

  override _final(cb: Callback): void {
    this.writeGathered(cb);
  }

  override _destroy(error: Error | null, cb: Callback): void {
    const close = () => fs.close(this.fd, (e) => cb(error ?? e ?? null));
    if (this.writing) this.closeWhenWritten = close;
    else close();
  }

  private gather(chunk: Buffer): void {
    this.pending.push(chunk);
    this.pendingBytes += chunk.length;
  }

  private writeIfFull(cb: Callback): void {
    if (this.pendingBytes >= this.batchBytes) this.writeGathered(cb);
    else cb();
  }

  private writeGathered(cb: Callback): void {
    const buffers = this.pending;
    this.pending = [];
    this.pendingBytes = 0;
    if (buffers.length === 0) {
      cb();
      return;
    }
    this.writing = true;
    // libuv writes all of them (a partial write is continued, IOV_MAX buffers at a time).
    fs.writev(this.fd, buffers, (e) => {
      this.writing = false;
      cb(e ? this.describe(e) : e);
      this.closeWhenWritten?.();
    });
  }
}

/** Opens `path` (flags as fs.open's, e.g. 'wx') for a BatchedFileWriter. Fails as fs.open does. */
export function openBatchedFileWriter(path: string, flags: string, describe?: (e: Error) => Error): Promise<BatchedFileWriter> {
  return new Promise((resolve, reject) => {
    fs.open(path, flags, (e, fd) => (e ? reject(e) : resolve(new BatchedFileWriter(fd, BATCH_BYTES, describe))));
  });
}
