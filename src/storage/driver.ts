/**
 * Byte stores with no image knowledge, after the Distribution registry's storage driver: the
 * layout above decides every path; a driver only moves bytes. Paths are absolute, `/`-separated,
 * relative to the driver's root (`/docker/registry/v2/...`).
 */
import type { Readable, Writable } from 'node:stream';
import type { Digest } from '../oci/digest.js';
import type { LocalFile } from '../pipeline/local-file.js';
import type { Cleaned } from './leftovers.js';

export interface StorageStat {
  size: number;
  isDirectory: boolean;
  /**
   * What is there when it is neither a file nor a directory (a local store's pipe or device: see
   * storage/regular-file.ts): nothing that can be read as an object, and reads refuse it.
   */
  special?: string;
}

/** An object found by `walk`: its driver path and size; `special` as StorageStat's (such an entry is no object to read). */
export interface StorageEntry {
  path: string;
  size: number;
  special?: string;
}

/**
 * A streaming writer. Contract: nothing is visible at `path` until `commit()` resolves, and then
 * the whole object appears at once (a temporary file renamed; an S3 upload completed); `cancel()`
 * discards what was written. Exactly one of them is called, after the stream has finished or failed.
 */
export interface StorageWriter {
  readonly stream: Writable;
  commit(): Promise<void>;
  cancel(): Promise<void>;
}

export interface StorageDriver {
  /** For messages: `file:/srv/registry`, `s3://bucket/root`. */
  readonly name: string;
  /**
   * The objects are files on this machine: a blob is read whole, as the file it is (a decompressor
   * reads it itself, a layout copies it in the kernel). Reading it in ranges at once gains nothing
   * there and loses that: a 100 MB layer from `file:` into a root filesystem took 0.62-0.76 s in
   * ranges, 0.25-0.31 s whole.
   */
  readonly localFiles?: boolean;
  /**
   * Whole small objects (links, manifests). Throws NOT_FOUND when absent, LIMIT_EXCEEDED, before
   * reading it, when the object is larger than `maxBytes`, and NOT_AN_IMAGE when what is there is
   * no file (a pipe, a device, a directory: see storage/regular-file.ts), unopened or unread.
   */
  getContent(path: string, maxBytes?: number): Promise<Buffer>;
  /** Replaces the object atomically: a reader sees the old bytes or the new, never a mix. */
  putContent(path: string, content: Buffer): Promise<void>;
  /** Streams an object from `offset` (`length` bytes, or to the end). Throws NOT_FOUND when absent, NOT_AN_IMAGE as getContent. */
  reader(path: string, offset?: number, length?: number): Promise<Readable>;
  writer(path: string): Promise<StorageWriter>;
  /** undefined when nothing is at `path`. A "directory" is a prefix with objects under it. */
  stat(path: string): Promise<StorageStat | undefined>;
  /**
   * The size of the object (file) at `path`, undefined when there is none, a directory included:
   * for paths that name objects only (blob data, links), where `stat` would also ask whether a
   * missing object is a directory (on S3 a listing after every 404).
   */
  objectSize?(path: string): Promise<number | undefined>;
  /** Names (not paths) of the direct children of `path`; empty when it does not exist. */
  list(path: string): Promise<string[]>;
  /**
   * Moves an object, replacing any object at `to`. `size`, when the caller knows the object's size
   * (it has just written it), spares a driver the request that would ask it.
   */
  move(from: string, to: string, size?: number): Promise<void>;
  /** Removes an object or a whole prefix; no error when absent. */
  delete(path: string): Promise<void>;
  /** Where `path` is, for what a user reads: a local path, `s3://bucket/key`. */
  location(path: string): string;
  /**
   * Stores a copy of the local file `file` at `path`, checked against `expect` (the copy is hashed,
   * `file.onBytes` told as it is), visible only once whole and checked, as a writer's commit is.
   * Present where the driver can copy a local file without moving its bytes through the process.
   * Aborting `signal` before the copy appears removes it, as a writer's cancel does.
   */
  importFile?(file: LocalFile, path: string, expect: { digest: Digest; size: number; what: string }, signal?: AbortSignal): Promise<void>;
  /**
   * Removes from the directory `path` the driver's own temporaries that writers killed mid-way left
   * (never one a live writer uses), and says what went. Absent where a killed writer leaves nothing
   * visible.
   */
  removeStaleTemporaries?(path: string): Promise<Cleaned[]>;
  /**
   * Every object under `path`, at any depth, in no particular order (empty when nothing is there):
   * one pass, where `list` would cost a request per directory. Objects written or removed during
   * the walk may or may not be seen. What is there and no object (`special`) is found too.
   */
  walk?(path: string): AsyncIterable<StorageEntry>;
}

/** Joins driver path segments: `joinPath('/a', 'b/c')` is `/a/b/c`. */
export function joinPath(...parts: string[]): string {
  return `/${parts
    .join('/')
    .split('/')
    .filter((p) => p !== '')
    .join('/')}`;
}
