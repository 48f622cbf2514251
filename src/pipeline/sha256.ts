/**
 * sha256 off the main thread, where the native addon can (native/smartlayer.c: Node's own OpenSSL
 * on the libuv pool): a pull checks every byte twice, the blob and the tar inside it, and on the
 * main thread that cost a layer of 200 MB about 0.12 s of the time the tree's writes need. Where
 * the addon is absent, the same interfaces hash in this thread with crypto.
 */
import { createHash } from 'node:crypto';
import { nativeBinding } from './native.js';

/** Bytes queued for hashing before `update` asks the caller to wait. */
const QUEUE_BYTES = 8 * 1024 * 1024;
/**
 * Bytes gathered before a batch goes to the pool: a batch costs the main thread about 25 µs
 * (a promise, a reference, a pool thread woken and the completion sent back), as much as hashing
 * 40 KB, so one per 64 KiB chunk of a decompressor would give back half of what is saved.
 */
const BATCH_BYTES = 1024 * 1024;

/** A sha256 of chunks that arrive in order. */
export interface ChunkHasher {
  /**
   * Adds a chunk, which must not be modified afterwards (it is hashed later, on another thread).
   * False when enough is queued that the caller should await `drained()` before the next.
   */
  update(chunk: Buffer): boolean;
  /** Settles once what is queued is below the bound (rejects if hashing failed). */
  drained(): Promise<void>;
  /** Settles once every chunk added so far is hashed: they may then be modified (rejects if hashing failed). */
  flushed(): Promise<void>;
  /** The hex digest of all chunks, once they are hashed; the hasher is done. */
  digest(): Promise<string>;
}

class InThreadHasher implements ChunkHasher {
  private readonly hash = createHash('sha256');
  update(chunk: Buffer): boolean {
    this.hash.update(chunk);
    return true;
  }
  async drained(): Promise<void> {}
  async flushed(): Promise<void> {}
  async digest(): Promise<string> {
    return this.hash.digest('hex');
  }
}

type Native = Required<Pick<NonNullable<ReturnType<typeof nativeBinding>>, 'sha256Create' | 'sha256Update' | 'sha256Digest'>>;

/** Chunks queued while a batch is hashed on the pool; the next batch is all of them. */
class PoolHasher implements ChunkHasher {
  private readonly context: unknown;
  private queue: Buffer[] = [];
  private queued = 0;
  private running: Promise<void> | undefined;
  private failure: { error: unknown } | undefined;
  private waiters: (() => void)[] = [];

  constructor(private readonly native: Native) {
    this.context = native.sha256Create();
  }

  update(chunk: Buffer): boolean {
    if (this.failure) throw this.failure.error;
    this.queue.push(chunk);
    this.queued += chunk.length;
    if (!this.running && this.queued >= BATCH_BYTES) this.pump();
    return this.queued < QUEUE_BYTES;
  }

  private pump(): void {
    const batch = this.queue;
    this.queue = [];
    this.queued = 0;
    this.running = this.native.sha256Update(this.context, batch).then(
      () => {
        this.running = undefined;
        if (this.queued >= BATCH_BYTES || (this.queue.length > 0 && this.waiters.length > 0)) this.pump();
        this.wake();
      },
      (error: unknown) => {
        this.running = undefined;
        this.failure ??= { error };
        this.wake();
      },
    );
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  async drained(): Promise<void> {
    while (!this.failure && this.queued >= QUEUE_BYTES) {
      if (!this.running) this.pump();
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
    if (this.failure) throw this.failure.error;
  }

  async flushed(): Promise<void> {
    while (!this.failure && (this.running || this.queue.length > 0)) {
      if (!this.running) this.pump();
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
    if (this.failure) throw this.failure.error;
  }

  async digest(): Promise<string> {
    await this.flushed();
    return this.native.sha256Digest(this.context);
  }
}

/** A hasher in this thread (crypto). */
export function inThreadHasher(): ChunkHasher {
  return new InThreadHasher();
}

/** A hasher on the libuv pool when the addon has one, else in this thread. */
export function chunkHasher(): ChunkHasher {
  const native = nativeBinding();
  if (native?.sha256Create && native.sha256Update && native.sha256Digest) return new PoolHasher(native as Native);
  return new InThreadHasher();
}

/**
 * The sha256 of the file at `path` and its size, read and hashed on the pool; reading stops once
 * past `limit` bytes (then `bytes` > `limit` and the digest means nothing). Undefined when the addon
 * cannot, for the caller to read it itself. Fails as fs does (an Error with `code`).
 */
export async function sha256FileOffThread(path: string, limit: number): Promise<{ hex: string; bytes: number } | undefined> {
  const file = nativeBinding()?.sha256File;
  if (!file) return undefined;
  const [hex, bytes] = await file(path, limit);
  return { hex, bytes };
}
