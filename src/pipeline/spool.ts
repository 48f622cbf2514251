/**
 * Spools: a layer fetched ahead of its turn is drained at once (its download never waits for the
 * layers below it) and read back when the tree reaches it; a layer written to a pipe as a
 * `docker save` member is drained whole first, for the size its tar header gives before its
 * bytes. Held in memory up to a budget shared by the spools of one pull, then in a file; once its
 * reader is attached, the spool passes bytes through with a small window of back-pressure. The
 * reader gets what is queued joined into chunks of up to 1 MiB: a pipe delivers 64 KiB at a time,
 * and each chunk costs the tree's writer more than the copy that joins them.
 */
import fs, { type FileHandle } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { SmartError, isErrno, refusalHint } from '../errors.js';

/** Memory shared by the spools of one pull: what they hold in memory together stays near `limit`. */
export class SpoolBudget {
  used = 0;
  /** The most held at once (for tests and measurements). */
  peak = 0;
  constructor(readonly limit: number) {}

  take(n: number): void {
    this.used += n;
    if (this.used > this.peak) this.peak = this.used;
  }
}

export interface SpoolOptions {
  budget: SpoolBudget;
  /** What is spooled, for messages: `layer sha256:… of IMAGE`. */
  what: string;
  /**
   * Opens the file the spool overflows into, called at most once, when the memory budget is spent.
   * The file must not be reachable by name once opened (unlinked), so that nothing of it outlives
   * the process; the spool closes it.
   */
  openFile: () => Promise<FileHandle>;
  /** Bytes held in memory for an attached reader before the source waits (default 4 MiB). */
  window?: number;
  /** What the spooled bytes wait for, for messages (default: `the layers below it are written`). */
  waitingFor?: string;
  /**
   * Where the overflow file lies when the user may not guess it (`$TMPDIR`, for an archive on a
   * pipe): a full disk is then named, with the variable that moves it, rather than `that filesystem`.
   */
  where?: { dir: string; hint: string };
}

/** How much the reader gets at once at most: of the file, or of the chunks queued in memory. */
const READ_CHUNK = 1024 * 1024;
const DEFAULT_WINDOW = 4 * 1024 * 1024;

/**
 * Drains `source` from construction on, in order: first into memory while the budget allows,
 * then (the budget spent) into the overflow file. `reader()` gives the bytes back in the same
 * order, waiting for the source when it catches up with it. The source's error reaches the reader
 * in place of the rest; `destroy` stops everything and closes the file.
 *
 * Memory: chunks held count against the shared budget; an attached reader whose overflow file is
 * read through may take up to `window` more, and the source then waits for it.
 */
export class Spool {
  private readonly mem: Buffer[] = [];
  private memBytes = 0;
  /** Bytes written to the overflow file, and how far the reader has read it. */
  #fileBytes = 0;
  private readPos = 0;
  private file: FileHandle | undefined;
  private attached = false;
  private ended = false;
  private error: unknown;
  private destroyed = false;
  /** Wakes the reader (data, end or error) and the source (room in the window). */
  private wakeReader: (() => void) | undefined;
  private wakeSource: (() => void) | undefined;
  private readonly window: number;
  #received = 0;
  /** Bytes taken from the source so far (all of it once `drained` has settled). */
  get received(): number {
    return this.#received;
  }
  /** Bytes that went to the overflow file (the memory budget was spent). */
  get fileBytes(): number {
    return this.#fileBytes;
  }

  /** Settles when the source has been read to its end (or failed): the download is over. */
  readonly drained: Promise<void>;

  constructor(
    private readonly source: Readable,
    private readonly options: SpoolOptions,
  ) {
    this.window = options.window ?? DEFAULT_WINDOW;
    this.drained = this.drain();
    // The reader (or whoever awaits `drained`) sees the failure; never an unhandled rejection.
    this.drained.catch(() => undefined);
  }

  /**
   * Takes the source's chunks as they come ('data' events: iterating a Readable would join what it
   * has buffered into one copy), pausing it while a chunk goes to the file or the window is full.
   */
  private drain(): Promise<void> {
    const source = this.source;
    return new Promise<void>((resolve, reject) => {
      let waiting = false;
      let ended = false;
      let settled = false;
      const settle = (e?: unknown) => {
        if (settled) return;
        settled = true;
        if (e === undefined) this.ended = true;
        else this.error ??= e;
        this.wake();
        if (e === undefined) resolve();
        else reject(e);
      };
      source.on('data', (chunk: Buffer) => {
        if (this.destroyed || settled) return;
        this.#received += chunk.length;
        const put = this.put(chunk);
        if (!put) return;
        waiting = true;
        source.pause();
        put.then(
          () => {
            waiting = false;
            if (ended) settle();
            else if (!this.destroyed) source.resume();
          },
          (e: unknown) => {
            source.destroy();
            settle(e);
          },
        );
      });
      source.once('end', () => {
        ended = true;
        if (!waiting) settle();
      });
      source.once('error', (e) => settle(e));
      source.once('close', () => {
        if (!ended) settle(this.error ?? new Error('the layer stream closed before its end'));
      });
    });
  }

  /** Keeps a chunk; a promise when the source must wait (a write to the file, or a full window). */
  private put(chunk: Buffer): Promise<void> | undefined {
    const budget = this.options.budget;
    // Order is kept: once bytes went to the file, the next ones follow them there until the reader
    // has caught up with the file.
    if (this.#fileBytes > this.readPos || (!this.attached && budget.used + chunk.length > budget.limit)) return this.putInFile(chunk);
    this.mem.push(chunk);
    this.memBytes += chunk.length;
    budget.take(chunk.length);
    this.wake();
    return this.attached && this.memBytes >= this.window ? this.roomInWindow() : undefined;
  }

  private async putInFile(chunk: Buffer): Promise<void> {
    try {
      this.file ??= await this.options.openFile();
      let off = 0;
      while (off < chunk.length) {
        const { bytesWritten } = await this.file.write(chunk, off, chunk.length - off, this.#fileBytes + off);
        off += bytesWritten;
      }
    } catch (e) {
      throw isErrno(e) ? this.storageError(e) : e;
    }
    this.#fileBytes += chunk.length;
    this.wake();
  }

  private async roomInWindow(): Promise<void> {
    while (this.attached && this.memBytes >= this.window && !this.destroyed) {
      await new Promise<void>((resolve) => (this.wakeSource = resolve));
    }
  }

  private storageError(e: NodeJS.ErrnoException): SmartError {
    // With the machine's advice where it is a refusal (a full disk: free space, or write elsewhere).
    const { where } = this.options;
    return new SmartError('STORAGE', `${this.options.what}: cannot spool it${where ? ` in ${where.dir}` : ''} while ${this.options.waitingFor ?? 'the layers below it are written'}: ${e.message}`, {
      input: this.options.what,
      cause: e,
      ...(where ? { hint: where.hint } : refusalHint(e)),
    });
  }

  private wake(): void {
    const reader = this.wakeReader;
    this.wakeReader = undefined;
    reader?.();
  }

  /** The spooled bytes then the rest of the source, in order; once. Destroying it destroys the spool. */
  reader(): Readable {
    if (this.attached) throw new Error('a spool is read once');
    this.attached = true;
    const out = Readable.from(this.read(), { objectMode: false, highWaterMark: 64 * 1024 });
    out.once('close', () => void this.destroy());
    return out;
  }

  private async *read(): AsyncGenerator<Buffer> {
    for (;;) {
      if (this.error !== undefined) throw this.error;
      // Never a clean end short of the source's: the bytes are verified upstream, at its end.
      if (this.destroyed) throw new Error('the spool was destroyed');
      if (this.mem.length > 0) {
        let n = this.mem[0]!.length;
        let k = 1;
        while (k < this.mem.length && n + this.mem[k]!.length <= READ_CHUNK) n += this.mem[k++]!.length;
        const parts = this.mem.splice(0, k);
        this.memBytes -= n;
        this.options.budget.used -= n;
        const source = this.wakeSource;
        this.wakeSource = undefined;
        source?.();
        yield k === 1 ? parts[0]! : Buffer.concat(parts, n);
        continue;
      }
      if (this.readPos < this.#fileBytes) {
        const want = Math.min(READ_CHUNK, this.#fileBytes - this.readPos);
        const buf = Buffer.allocUnsafe(want);
        let bytesRead: number;
        try {
          ({ bytesRead } = await this.file!.read(buf, 0, want, this.readPos));
        } catch (e) {
          throw isErrno(e) ? this.storageError(e) : e;
        }
        if (bytesRead === 0) throw new SmartError('INTERNAL', `${this.options.what}: its spool file ended early`);
        this.readPos += bytesRead;
        yield bytesRead === want ? buf : buf.subarray(0, bytesRead);
        continue;
      }
      if (this.ended) return;
      await new Promise<void>((resolve) => (this.wakeReader = resolve));
    }
  }

  /** Stops the source, frees the memory held and closes the overflow file. Idempotent. */
  async destroy(error?: unknown): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    if (error !== undefined) this.error ??= error;
    this.source.destroy();
    this.options.budget.used -= this.memBytes;
    this.mem.length = 0;
    this.memBytes = 0;
    this.wakeSource?.();
    this.wake();
    await this.drained.catch(() => undefined);
    await this.file?.close().catch(() => undefined);
  }
}

/**
 * A new file at `name`, opened for reading and writing and unlinked at once: what a spool overflows
 * into, of which nothing outlives the process.
 */
export async function openUnlinked(name: string): Promise<FileHandle> {
  const file = await fs.open(name, 'wx+', 0o600);
  try {
    await fs.unlink(name);
  } catch (e) {
    await file.close();
    throw e;
  }
  return file;
}
