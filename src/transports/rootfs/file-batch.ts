/**
 * A layer's small files made on the libuv pool, a batch at a time, while the main thread goes on
 * reading the tar (the native addon's writeFiles). A layer of many small files (a node_modules)
 * spent about a third of its pull in the open, write, futimes and close of each file, one after
 * another with the parsing of the next header; batched, the two overlap. Measured on 2 cores, a
 * layer of 47,656 files: 5-8% faster (V8's own threads take much of the second core), the tree the
 * same to the nanosecond; a layer of few files, no change.
 *
 * The applier batches only what cannot depend on what is still in a batch, and waits (drain)
 * before anything that might: a batched file lies in a directory this layer made, where nothing
 * of a lower layer can be in the way, and nothing but a file or a link of this layer can (a file
 * of the same name, or a symlink: unlinked and made again, as the applier's own replace does; a
 * directory of this layer at the name is never batched). Up to two batches run at once (IN_FLIGHT).
 *
 * Runs of small files in one such directory go to the addon whole instead, headers and all
 * (RootfsApplier.extractRun, extractFiles); a batch holds the files those runs leave. A warm
 * pull's small files are batched too, each with the layer store's file to read its content from
 * (on the pool as well): 45,000 files from the store into tmpfs took 1.0 s read and written on the
 * main thread, 0.76 s so.
 */
import { getSystemErrorMap } from 'node:util';
import { type NativeBinding, nativeBinding } from '../../pipeline/native.js';

export type WriteFiles = NonNullable<NativeBinding['writeFiles']>;

/** One small file to make: where, what, and the metadata the applier would give it. */
export interface BatchedFile {
  /** The full path, as the bytes of the name (fsPath). */
  path: string | Buffer;
  /** The root-relative path, for `pending`. */
  rel: string;
  /** Its content, or where it is to be read from (a file of the layer store: its name's bytes, fsPath) and the size it must have. */
  content: Buffer | { source: string | Buffer; size: number };
  /** The mode it is created with, and the one fchmod then gives it (-1: none). */
  openMode: number;
  chmodMode: number;
  /** The owner given by fchown (-1: none). */
  uid: number;
  gid: number;
  /** As fs.futimes takes them. */
  atime: number | Date;
  mtime: number | Date;
  /** The error to throw for a failed system call on this file (the applier names its entry). */
  fail: (e: NodeJS.ErrnoException) => Error;
  /** The error for a failed read of `source` (ENODATA: shorter than the content, EFBIG: longer). */
  sourceFail?: (e: NodeJS.ErrnoException) => Error;
  /** A file whose failure is not the batch's (a layer store's copy: best effort): told, and the files after it made all the same. */
  onFail?: (e: NodeJS.ErrnoException) => void;
}

/**
 * Batches on the pool at once. Two never hold the same path (a file whose name is pending is not
 * added: the applier waits first), so they may run side by side, a core each: a bundle's pull
 * writes each small file twice (the tree's, the layer store's copy): a layer of 45,000 of them into
 * tmpfs 1.29 -> 1.22 s (medians of 4; the two cores are then busy with it all).
 */
const IN_FLIGHT = 2;
/** A batch goes to the pool at this many files or bytes, whichever comes first. */
const BATCH_FILES = 256;
const BATCH_BYTES = 1024 * 1024;
/** The fixed part of a record (see native/smartlayer.c). */
const RECORD_BYTES = 48;
const NO_ID = 0xffffffff;
/** What writeFiles's `step` names, as Node's errors name the call. */
const STEPS = ['open', 'write', 'fchown', 'fchmod', 'futime', 'close', 'read'];
const READ_STEP = 6;

/**
 * The addon's writeFiles, where it reads the records this module writes: an addon built from
 * another version's source (a checkout rebuilt without `npm ci`) would read them wrong, and every
 * file would fail; then the files are made one by one instead.
 */
export function batchWriter(): WriteFiles | undefined {
  const native = nativeBinding();
  return native?.writeFiles && native.writeFilesRecordBytes === RECORD_BYTES ? native.writeFiles : undefined;
}

export class FileBatch {
  private filling: BatchedFile[] = [];
  private fillingBytes = 0;
  /** The batches on the pool, oldest first. */
  private readonly inFlight: Promise<void>[] = [];
  /** The failure of the earliest batch that failed, by the order batches were made. */
  private failure: { error: unknown; batch: number } | undefined;
  private launched = 0;
  /** The root-relative paths of the files added and not yet made. */
  private readonly pendingRels = new Set<string>();

  constructor(private readonly writeFiles: WriteFiles) {}

  /** Nothing added that is not made yet. */
  get empty(): boolean {
    return this.filling.length === 0 && this.inFlight.length === 0;
  }

  /** Whether a file added at `rel` is not made yet. */
  pending(rel: string): boolean {
    return this.pendingRels.has(rel);
  }

  /** Adds a file; a full batch is handed to the pool (once a place is free there: wait for it). */
  add(file: BatchedFile): Promise<void> | undefined {
    this.filling.push(file);
    this.pendingRels.add(file.rel);
    this.fillingBytes += contentSize(file);
    if (this.filling.length >= BATCH_FILES || this.fillingBytes >= BATCH_BYTES) return this.submit();
    return undefined;
  }

  /** Hands what was added to the pool now if a place is free there, without waiting (the tar reader is about to wait for bytes). */
  start(): void {
    if (this.inFlight.length < IN_FLIGHT && !this.failure) this.launch();
  }

  /** Hands what was added to the pool once a place is free there; throws a batch's failure. */
  async submit(): Promise<void> {
    while (this.inFlight.length >= IN_FLIGHT) await this.inFlight[0];
    if (this.failure) throw this.failure.error;
    this.launch();
  }

  private launch(): void {
    if (this.filling.length === 0) return;
    const files = this.filling;
    const batch = this.launched++;
    this.filling = [];
    this.fillingBytes = 0;
    const run = this.run(files).catch((e: unknown) => {
      if (!this.failure || batch < this.failure.batch) this.failure = { error: e, batch };
    });
    const flight = run.finally(() => {
      for (const f of files) this.pendingRels.delete(f.rel);
      this.inFlight.splice(this.inFlight.indexOf(flight), 1);
    });
    this.inFlight.push(flight);
  }

  /** Waits until every file added is made; throws the first failure (the earliest batch's). */
  async drain(): Promise<void> {
    await this.submit();
    await Promise.all(this.inFlight);
    if (this.failure) throw this.failure.error;
  }

  /**
   * After a failure elsewhere: waits for the batches on the pool (nothing may still be writing into
   * the tree when it is removed), drops the rest, and gives a batch's failure if there was one (it
   * came first in the layer).
   */
  async abandon(): Promise<unknown> {
    this.filling = [];
    this.pendingRels.clear();
    await Promise.all(this.inFlight);
    return this.failure?.error;
  }

  private async run(files: BatchedFile[]): Promise<void> {
    for (let from = 0; from < files.length; ) {
      const rest = from === 0 ? files : files.slice(from);
      const given: Buffer[] = [];
      for (const f of rest) if (Buffer.isBuffer(f.content)) given.push(f.content);
      const [done, errno, step] = await this.writeFiles(encodeRecords(rest), given);
      if (errno === 0) return;
      const file = rest[done]!;
      if (step === READ_STEP && !Buffer.isBuffer(file.content)) throw (file.sourceFail ?? file.fail)(errnoError(errno, 'read', file.content.source));
      const error = errnoError(errno, STEPS[step] ?? 'open', file.path);
      if (!file.onFail) throw file.fail(error);
      file.onFail(error);
      from += done + 1;
    }
  }
}

/** The records writeFiles reads (native/smartlayer.c): the fixed part of each, then its path and its source's. */
function encodeRecords(files: BatchedFile[]): Buffer {
  let size = 0;
  const length = (p: string | Buffer | undefined) => (p === undefined ? 0 : typeof p === 'string' ? Buffer.byteLength(p) : p.length);
  for (const f of files) size += RECORD_BYTES + length(f.path) + (Buffer.isBuffer(f.content) ? 0 : length(f.content.source));
  const out = Buffer.allocUnsafe(size);
  let at = 0;
  for (const f of files) {
    const pathAt = at + RECORD_BYTES;
    const pathBytes = typeof f.path === 'string' ? out.write(f.path, pathAt) : f.path.copy(out, pathAt);
    out.writeUInt32LE(pathBytes, at);
    out.writeUInt32LE(f.openMode, at + 4);
    out.writeInt32LE(f.chmodMode, at + 8);
    out.writeUInt32LE(f.uid < 0 ? NO_ID : f.uid, at + 12);
    out.writeUInt32LE(f.gid < 0 ? NO_ID : f.gid, at + 16);
    const sourceAt = pathAt + pathBytes;
    const source = Buffer.isBuffer(f.content) ? undefined : f.content.source;
    const sourceBytes = source === undefined ? 0 : typeof source === 'string' ? out.write(source, sourceAt) : source.copy(out, sourceAt);
    out.writeUInt32LE(sourceBytes, at + 20);
    out.writeDoubleLE(unixSeconds(f.atime), at + 24);
    out.writeDoubleLE(unixSeconds(f.mtime), at + 32);
    out.writeUInt32LE(Buffer.isBuffer(f.content) ? 0 : f.content.size, at + 40);
    out.writeUInt32LE(0, at + 44);
    at = sourceAt + sourceBytes;
  }
  return out;
}

function contentSize(f: BatchedFile): number {
  return Buffer.isBuffer(f.content) ? f.content.length : f.content.size;
}

/** A time as fs.futimes reads it (Node's toUnixTimestamp): a Date's seconds; a negative number is now. */
function unixSeconds(t: number | Date): number {
  if (typeof t !== 'number') return t.getTime() / 1000;
  return t < 0 ? Date.now() / 1000 : t;
}

/** An errno as Node's own errors of a file call are: `CODE: description, call 'path'`, with code, errno, syscall and path. */
function errnoError(errno: number, syscall: string, file: string | Buffer): NodeJS.ErrnoException {
  const [code, description] = getSystemErrorMap().get(-errno) ?? [`E${errno}`, `errno ${errno}`];
  const shown = String(file);
  return Object.assign(new Error(`${code}: ${description}, ${syscall} '${shown}'`), { errno: -errno, code, syscall, path: shown });
}
