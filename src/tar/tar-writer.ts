/**
 * Writes a tar archive member by member, streaming each member's data. On a seekable file a member
 * of unknown size is written with a placeholder header that is patched once its data has passed,
 * so a layer can be decompressed straight into the archive in one pass. On a pipe the size must
 * be known up front.
 */
import fs from 'node:fs/promises';
import type { Readable, Writable } from 'node:stream';
import { SmartError, isErrno, machineRefusal } from '../errors.js';
import { BLOCK, encodeHeader } from './header.js';

/** Where the bytes go: sequential writes, and positional rewrites when the sink is a file. */
export interface TarSink {
  write(data: Buffer): Promise<void>;
  /** Present only for seekable sinks. */
  rewrite?(data: Buffer, position: number): Promise<void>;
  /** Cuts what was written back to `position` (seekable sinks only). */
  truncate?(position: number): Promise<void>;
  close(): Promise<void>;
}

/**
 * A sink over an open file. `what` names it in errors: a write the machine refuses (a full disk)
 * is a STORAGE error that says which archive, not a bare ENOSPC.
 */
export function fileSink(handle: fs.FileHandle, what: string): TarSink {
  const refused = (e: unknown) => machineRefusal(e, `cannot write ${what}`) ?? e;
  /** Where the next write goes: the end of what is written (a file opened afresh, from 0). */
  let next = 0;
  return {
    write: async (data) => {
      try {
        let off = 0;
        while (off < data.length) {
          const { bytesWritten } = await handle.write(data, off, data.length - off, next);
          off += bytesWritten;
          next += bytesWritten;
        }
      } catch (e) {
        throw refused(e);
      }
    },
    rewrite: async (data, position) => {
      await handle.write(data, 0, data.length, position).catch((e: unknown) => Promise.reject(refused(e)));
    },
    truncate: async (position) => {
      // The writes go on from the file's offset, which truncating does not move: each write gives its own.
      await handle.truncate(position).catch((e: unknown) => Promise.reject(refused(e)));
      next = position;
    },
    close: () => handle.close().catch((e: unknown) => Promise.reject(refused(e))),
  };
}

/**
 * A sink over a Writable (stdout): waits for 'drain', so the producer never outruns the pipe. A
 * closed pipe (EPIPE) fails the write as it is (the reader went away: its choice); any other
 * failure (stdout a file on a full disk) as a STORAGE error naming `what`.
 */
export function streamSink(stream: Writable, what = 'stdout'): TarSink {
  const wrap = (e: Error): Error =>
    isErrno(e, 'EPIPE') ? e : (machineRefusal(e, `cannot write to ${what}`) ?? new SmartError('STORAGE', `cannot write to ${what}: ${e.message}`, { cause: e }));
  // A write that fails does so after it returned (on a later tick); the stream keeps the error and
  // is destroyed, so the writes after it fail with that first error, not "write after destroy".
  const settled = (wait: 'drain' | undefined) =>
    new Promise<void>((resolve, reject) => {
      const end = (e?: Error) => {
        stream.off('error', end);
        stream.off('drain', drained);
        const failure = (stream.errored as Error | null) ?? e;
        if (failure) reject(wrap(failure));
        else resolve();
      };
      const drained = () => end();
      if (stream.errored) return end();
      stream.once('error', end);
      if (wait) stream.once('drain', drained);
      else setImmediate(drained);
    });
  return {
    write: async (data) => {
      if (stream.errored) throw wrap(stream.errored as Error);
      if (!stream.write(data)) await settled('drain');
    },
    close: async () => {
      // stdout is not ours to end: what is buffered is flushed, and the last write's failure seen.
      await settled(stream.writableNeedDrain ? 'drain' : undefined);
    },
  };
}

const ZERO = Buffer.alloc(BLOCK * 2);

export class TarWriter {
  private position = 0;
  private readonly mtime: number;

  constructor(
    private readonly sink: TarSink,
    options: { mtime?: number } = {},
  ) {
    this.mtime = options.mtime ?? 0;
  }

  private async put(data: Buffer): Promise<void> {
    await this.sink.write(data);
    this.position += data.length;
  }

  /** Bytes written so far. */
  get written(): number {
    return this.position;
  }

  /** Whether `rewind` can take members back (a file: yes; a pipe: what is sent is gone). */
  get rewindable(): boolean {
    return this.sink.truncate !== undefined;
  }

  /** Takes back what was written after `position` (a member that failed part written), on a file. */
  async rewind(position: number): Promise<void> {
    if (!this.sink.truncate) throw new SmartError('INTERNAL', 'a tar on a stream cannot be rewound');
    await this.sink.truncate(position);
    this.position = position;
  }

  async addDirectory(name: string): Promise<void> {
    await this.put(encodeHeader({ name: name.endsWith('/') ? name : `${name}/`, size: 0, mode: 0o755, mtime: this.mtime, typeflag: '5' }));
  }

  async addBuffer(name: string, data: Buffer): Promise<void> {
    await this.put(encodeHeader({ name, size: data.length, mode: 0o644, mtime: this.mtime, typeflag: '0' }));
    await this.put(data);
    await this.pad(data.length);
  }

  /**
   * Streams `data` as member `name`. With `size` known the stream must match it; without, the
   * sink must be seekable and the header is rewritten with the real size at the end.
   */
  async addStream(name: string, data: Readable, size?: number): Promise<number> {
    if (size === undefined && !this.sink.rewrite) {
      throw new SmartError('INTERNAL', `tar member ${name}: size unknown on a non-seekable output`);
    }
    const headerAt = this.position;
    await this.put(encodeHeader({ name, size: size ?? 0, mode: 0o644, mtime: this.mtime, typeflag: '0' }));
    let written = 0;
    for await (const chunk of data) {
      const buf = chunk as Buffer;
      written += buf.length;
      if (size !== undefined && written > size) throw new SmartError('SIZE_MISMATCH', `tar member ${name}: more than the ${size} bytes announced`);
      await this.put(buf);
    }
    if (size !== undefined && written !== size) throw new SmartError('SIZE_MISMATCH', `tar member ${name}: ${written} bytes, ${size} announced`);
    await this.pad(written);
    if (size === undefined) {
      await this.sink.rewrite!(encodeHeader({ name, size: written, mode: 0o644, mtime: this.mtime, typeflag: '0' }), headerAt);
    }
    return written;
  }

  private async pad(size: number): Promise<void> {
    const rest = size % BLOCK;
    if (rest) await this.put(Buffer.alloc(BLOCK - rest));
  }

  /** Writes the end-of-archive blocks and closes the sink. */
  async finish(): Promise<void> {
    await this.put(ZERO);
    await this.sink.close();
  }
}
