/**
 * gunzip in this process, on the libuv pool, where the native addon has ISA-L's inflate (the code
 * of the igzip program): the engine `isal`. A local blob file is read and hashed by the same jobs,
 * so its bytes never pass through JavaScript, and a layer's diff id is checked in the stream
 * itself (no stage of its own). Against an igzip process it saves the fork (~10 ms of the main
 * thread each, with a large heap), two kernel copies of every byte through the pipe, and the main
 * thread's work per 64 KiB chunk: the output comes in 2 MiB chunks.
 *
 * Errors are the other engines' (gunzip.ts): CORRUPT_ARCHIVE "truncated gzip stream" or "corrupt
 * gzip stream (…)"; a file that is not what its digest says fails as its VerifyStream would, and
 * that is the cause named when the gzip inside is bad too. Bytes after the last member that are
 * not another member are ignored, as igzip and gzip do (the data is whole, and the diff id covers it).
 */
import fs from 'node:fs';
import { Duplex, Readable } from 'node:stream';
import { getSystemErrorName } from 'node:util';
import { SmartError } from '../errors.js';
import type { Digest } from '../oci/digest.js';
import { verifyError, type VerifyExpectation } from './local-file.js';
import { chunkHasher, type ChunkHasher } from './sha256.js';
import { nativeBinding, type NativeBinding } from './native.js';
import { coreCount } from './cores.js';

const KiB = 1024;
/** Output per job: a huge page (the addon maps each output on its own, 2 MiB-aligned). */
const OUTPUT_BYTES = 2048 * KiB;
/** Input gathered before a job runs on it (a network source delivers 16-64 KiB at a time). */
const INPUT_BATCH = 256 * KiB;

const NEED_INPUT = 0;
const MORE = 1;
const DONE = 2;
const TRUNCATED = -100;
const NOT_GZIP = -101;
const READ_ERROR = -102;
const TOO_LONG = -103;

/** ISA-L's error codes (igzip_lib.h), as a corrupt stream's detail. */
const ISAL_ERRORS: Record<number, string> = {
  [-1]: 'invalid deflate block',
  [-2]: 'invalid deflate symbol',
  [-3]: 'invalid lookback distance',
  [-4]: 'invalid gzip header',
  [-5]: 'unsupported compression method',
  [-6]: 'incorrect checksum',
};

/** A corrupt or truncated gzip stream of `what`, as every engine reports it. */
export function corruptGzip(what: string, truncated: boolean, detail: string, cause?: unknown): SmartError {
  return new SmartError('CORRUPT_ARCHIVE', `${what}: ${truncated ? 'truncated gzip stream' : `corrupt gzip stream (${detail})`}`, {
    ...(cause === undefined ? {} : { cause }),
  });
}

type Native = Required<Pick<NativeBinding, 'gunzipCreate' | 'gunzipRun'>>;

/** The addon's inflate, when it has one. */
export function nativeInflate(): Native | undefined {
  const b = nativeBinding();
  return b?.gunzipCreate && b.gunzipRun ? (b as Native) : undefined;
}

export interface NativeGunzipOptions {
  /** What the stream is, for messages (`layer sha256:… of IMAGE`). */
  what: string;
  /** Called with the running total of output; throws to stop the stream (the decompression bound). */
  limit?: (total: number) => void;
  /** The digest the output must have (a layer's diff id): checked before the stream ends. */
  verify?: VerifyExpectation;
}

/**
 * Decoding jobs run at most as many at once as there are cores, the earliest-opened stream's
 * first. A pull opens its layers in order and spools those ahead of their turn: with a job for
 * every layer at once, the later layers' decoders took the cores from the layer being written,
 * whose tree then waited for it. Ranked, the layer being written is decoded first and the later
 * ones in the time it leaves. (On 2 cores, pull of a 190 MB image to a tree: one job at a time
 * 1.02 s, two 0.95 s, three or eight 0.96 s, medians of 10.)
 */
export class DecodeSlots {
  private running = 0;
  /** Jobs waiting for a slot, earliest stream first. */
  private readonly waiting: { rank: number; start: () => void }[] = [];
  private opened = 0;

  constructor(private readonly slots: number) {}

  /** The rank of a stream opened now: later than every stream opened before it. */
  rank(): number {
    return this.opened++;
  }

  run<T>(rank: number, job: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const start = (): void => {
        this.running++;
        job()
          .then(resolve, reject)
          .finally(() => {
            this.running--;
            if (this.running < this.slots) this.waiting.shift()?.start();
          });
      };
      if (this.running < this.slots) return start();
      let i = this.waiting.length;
      while (i > 0 && this.waiting[i - 1]!.rank > rank) i--;
      this.waiting.splice(i, 0, { rank, start });
    });
  }
}

const slots = new DecodeSlots(coreCount());

type RunResult = [output: Buffer, status: number, inputBytes: number, errno: number, inputHex?: string];

function failure(status: number, what: string, errno: number, path?: string): Error {
  if (status === TRUNCATED) return corruptGzip(what, true, '');
  if (status === NOT_GZIP) return corruptGzip(what, false, 'not in gzip format');
  if (status === READ_ERROR) {
    const name = errno ? getSystemErrorName(-errno) : 'EIO';
    return new SmartError('STORAGE', `${what}: reading ${path ?? 'its blob'}: ${name}`, { ...(path ? { input: path } : {}) });
  }
  return corruptGzip(what, false, ISAL_ERRORS[status] ?? `ISA-L error ${status}`);
}

/**
 * The output's digest check, when one is asked for: hashed by jobs on the pool that run beside the
 * next inflate (the outputs are fresh buffers, never touched again).
 */
class OutputCheck {
  private readonly hasher: ChunkHasher | undefined;
  private bytes = 0;

  constructor(private readonly options: NativeGunzipOptions) {
    this.hasher = options.verify ? chunkHasher() : undefined;
  }

  /** Takes an output chunk: checks the bound, queues it for hashing; a promise when to wait for the hashing. */
  add(chunk: Buffer): Promise<void> | undefined {
    this.options.limit?.((this.bytes += chunk.length));
    if (!this.hasher || this.hasher.update(chunk)) return undefined;
    return this.hasher.drained();
  }

  /** Once the output is whole: the error to end with instead, if any. */
  async error(): Promise<Error | undefined> {
    if (!this.hasher || !this.options.verify) return undefined;
    return verifyError(this.options.verify, this.bytes, `sha256:${await this.hasher.digest()}` as Digest);
  }
}

/**
 * gzip in, data out (a Duplex for a pipeline), inflated on the pool in jobs of up to
 * 256 KiB of input and 2 MiB of output, one at a time.
 */
export class NativeGunzip extends Duplex {
  private readonly context: unknown;
  private readonly rank = slots.rank();
  private readonly check: OutputCheck;
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  /** Wakes the job loop once the reader wants more. */
  private wantMore: (() => void) | undefined;

  constructor(
    private readonly native: Native,
    private readonly options: NativeGunzipOptions,
  ) {
    super({ readableHighWaterMark: 2 * OUTPUT_BYTES, writableHighWaterMark: INPUT_BATCH });
    this.context = native.gunzipCreate(-1, 0);
    this.check = new OutputCheck(options);
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (error?: Error | null) => void): void {
    this.pending.push(chunk);
    this.pendingBytes += chunk.length;
    if (this.pendingBytes < INPUT_BATCH) cb();
    else this.run(false).then(() => cb(), cb);
  }

  override _final(cb: (error?: Error | null) => void): void {
    this.run(true).then(() => cb(), cb);
  }

  override _read(): void {
    const wake = this.wantMore;
    this.wantMore = undefined;
    wake?.();
  }

  override _destroy(error: Error | null, cb: (error?: Error | null) => void): void {
    this._read(); // a job loop waiting for the reader sees `destroyed` and stops
    cb(error);
  }

  /** Inflates what is pending (and, with `end`, to the end of the stream). */
  private async run(end: boolean): Promise<void> {
    let input = this.pending;
    this.pending = [];
    this.pendingBytes = 0;
    for (;;) {
      const chunks = input;
      input = [];
      const [output, status] = (await slots.run(this.rank, () => this.native.gunzipRun(this.context, chunks, end, OUTPUT_BYTES))) as RunResult;
      if (this.destroyed) return;
      if (status < 0) throw failure(status, this.options.what, 0);
      if (output.length > 0) {
        await this.check.add(output);
        if (!this.push(output)) await new Promise<void>((resolve) => (this.wantMore = resolve));
        if (this.destroyed) return;
      }
      if (status === DONE) {
        const failed = await this.check.error();
        if (failed) throw failed;
        this.push(null);
        return;
      }
      if (status === NEED_INPUT) {
        if (end) throw new SmartError('INTERNAL', `${this.options.what}: the decompressor asked for input after its end`);
        return;
      }
      // MORE: the output was full; go on with what the context holds.
    }
  }
}

export interface NativeGunzipFileOptions extends NativeGunzipOptions {
  /**
   * The blob file: its path, and what it must be (digest, size, and what to call it). `checked`:
   * the file was checked against them just before (a kept blob, LocalFile.shared): not hashed again.
   */
  file: { path: string; check: VerifyExpectation & { size: number }; checked?: boolean; onBytes?: (bytes: number) => void };
}

/**
 * A local gzip file decompressed on the pool, where each job reads, hashes and inflates the next
 * part of the file itself: the output stream of a verified blob file, with no byte of the gzip
 * through JavaScript. The file is checked against its digest and size by the time the output ends.
 */
export class NativeGunzipFile extends Readable {
  private fd = -1;
  private context: unknown;
  private readonly rank = slots.rank();
  private readonly check: OutputCheck;
  /** The job running, or the hashing it waits for: the file stays open until it is over. */
  private job: Promise<void> | undefined;
  private reported = 0;

  constructor(
    private readonly native: Native,
    private readonly options: NativeGunzipFileOptions,
  ) {
    super({ highWaterMark: 2 * OUTPUT_BYTES });
    this.check = new OutputCheck(options);
  }

  override _construct(cb: (error?: Error | null) => void): void {
    fs.open(this.options.file.path, 'r', (err, fd) => {
      if (err) return cb(err);
      this.fd = fd;
      try {
        this.context = this.native.gunzipCreate(fd, this.options.file.check.size, !this.options.file.checked);
      } catch (e) {
        return cb(e as Error);
      }
      cb();
    });
  }

  override _read(): void {
    if (this.job) return;
    this.job = this.next().then(
      (more) => {
        this.job = undefined;
        if (more) this._read();
      },
      (e: unknown) => {
        this.job = undefined;
        this.destroy(e as Error);
      },
    );
  }

  /** One job and what follows from it; true when the reader wants more at once. */
  private async next(): Promise<boolean> {
    // Not run at all if destroyed while it waited for a slot: the file is then closed.
    const run = (await slots.run(this.rank, async () => (this.destroyed ? undefined : this.native.gunzipRun(this.context, [], false, OUTPUT_BYTES)))) as RunResult | undefined;
    if (!run || this.destroyed) return false;
    const [output, status, inputBytes, errno, inputHex] = run;
    const { file, what } = this.options;
    const taken = Math.min(inputBytes, file.check.size);
    if (file.onBytes && taken > this.reported) file.onBytes(taken - this.reported);
    this.reported = taken;
    // The file itself first: one that is not what its digest says is the cause to name.
    if (status === TOO_LONG || inputBytes > file.check.size) {
      throw new SmartError('SIZE_MISMATCH', `${file.check.what}: more bytes than the ${file.check.size} its descriptor declares`, { input: file.check.digest });
    }
    if (inputHex !== undefined) {
      const bad = verifyError(file.check, inputBytes, `sha256:${inputHex}` as Digest);
      if (bad) throw bad;
    }
    if (status < 0) throw failure(status, what, errno, file.path);
    if (status !== MORE && status !== DONE) throw new SmartError('INTERNAL', `${what}: the decompressor of a file asked for input`);
    if (output.length > 0) await this.check.add(output);
    if (this.destroyed) return false;
    if (status === DONE) {
      const failed = await this.check.error();
      if (failed) throw failed;
      if (output.length > 0) this.push(output);
      this.push(null);
      return false;
    }
    return output.length === 0 || this.push(output);
  }

  override _destroy(error: Error | null, cb: (error?: Error | null) => void): void {
    // A job still running reads the file: it is closed once the job is over.
    const close = (): void => {
      if (this.fd < 0) return cb(error);
      fs.close(this.fd, () => cb(error));
      this.fd = -1;
    };
    if (this.job) void this.job.then(close, close);
    else close();
  }
}
