/**
 * The storage driver over an S3 bucket, with the Distribution registry's S3 driver key names: the
 * object for `/docker/registry/v2/...` is `<rootdirectory>/docker/registry/v2/...`.
 *
 * Written against AWS S3 and s3rver (the test server). s3rver's gaps shape a few choices:
 * directory listings are flat (s3-listing.ts), an upload that cannot be aborted
 * (AbortMultipartUpload answers 405) is left behind quietly (s3-writer.ts), moves are one
 * CopyObject (it has no UploadPartCopy), and a DeleteObjects that answers 500 is verified and
 * retried (s3-delete.ts). Clients are made in s3-client.ts, errors mapped in s3-errors.ts.
 *
 * The `@aws-sdk/*` imports stay in this module and those s3-*.ts files: they are heavy, and the
 * rest of the code loads this module only when an `s3://` name is used.
 */
import { Readable, Transform, type TransformCallback } from 'node:stream';
import path from 'node:path';
import { CopyObjectCommand, GetObjectCommand, HeadObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { guardStalls } from '../pipeline/stall.js';
import { SmartError } from '../errors.js';
import { sleep } from '../transient.js';
import { checkSize } from '../limits.js';
import type { StorageDriver, StorageEntry, StorageStat, StorageWriter } from './driver.js';
import { DEFAULT_STALL_MS, makeS3Client, type S3Bucket, type S3Credentials } from './s3-client.js';
import { deleteObject, deleteTree } from './s3-delete.js';
import { endpointLabel, facts, s3Error } from './s3-errors.js';
import { anyUnder, childNames, dirPrefix, objectPages } from './s3-listing.js';
import { s3Writer } from './s3-writer.js';
import { resumingReader } from './resume.js';

export { s3ClientFromEnvironment, type S3Credentials } from './s3-client.js';

export interface S3DriverOptions {
  /** No byte of a download for this long: it fails (retryable) instead of hanging. Default 30 s. */
  stallTimeoutMs?: number;
  bucket: string;
  /** Key prefix of the registry tree (the registry's `rootdirectory` without slashes); '' for the bucket root. */
  rootDirectory?: string;
  /** A ready client; else one is made from the options below and the AWS environment. */
  client?: S3Client;
  endpoint?: string;
  region?: string;
  /** Path-style requests (`http://host/bucket/key`); default: true when `endpoint` is set. */
  forcePathStyle?: boolean;
  credentials?: S3Credentials;
  /** Part size of streamed uploads, bytes (>= 5 MiB). Default 8 MiB. */
  partSize?: number;
  /** Parts of one streamed upload in flight at once. Default 4. */
  queueSize?: number;
  /** A download resumed after it broke: the failure, as one line. */
  onRetry?: (message: string) => void;
}

const MiB = 1024 * 1024;
/**
 * 8 MiB parts, 4 in flight per object (DEFAULT_QUEUE_SIZE), chosen by measurement: the bench image's
 * 68 MB of blobs into s3rver on loopback (2 cores, median of 5, bench/s3-limit.mjs and smart alike)
 * took 1.82 s with 8 MiB × 4, 1.83 s with 5 MiB × 4, 2.28 s with 16 MiB × 2 and 2.61 s with one
 * 64 MiB part (a PutObject per blob); smart's push 2.20 / 2.26 / 2.22 / 3.19 s. On AWS S3 the floor
 * is 5 MiB and the limit 10,000 parts: 8 MiB parts carry a layer of up to 78 GiB.
 */
const DEFAULT_PART_SIZE = 8 * MiB;
const DEFAULT_QUEUE_SIZE = 4;
const MIN_PART_SIZE = 5 * MiB;
/** Reads of one download, the first included, across breaks: a registry request's attempts. */
const READ_ATTEMPTS = 5;
/** The first wait before a download is resumed; doubles each time. */
const RESUME_DELAY_MS = 300;
/** Largest object a single CopyObject accepts. */
const MAX_COPY_SIZE = 5 * 1024 * MiB;

/** Each key segment percent-encoded, slashes kept (s3rver does not decode %2F in a copy source). */
function encodeKey(key: string): string {
  return key.split('/').map(encodeURIComponent).join('/');
}

/** Counts the bytes of a response body and fails a body that ends short of its Content-Length. */
class LengthCheck extends Transform {
  private seen = 0;

  constructor(
    private readonly expected: number | undefined,
    private readonly fail: (seen: number, expected: number) => SmartError,
  ) {
    super({ highWaterMark: 256 * 1024 });
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.seen += chunk.length;
    callback(null, chunk);
  }

  override _flush(callback: TransformCallback): void {
    if (this.expected !== undefined && this.seen !== this.expected) callback(this.fail(this.seen, this.expected));
    else callback();
  }
}

export class S3Driver implements StorageDriver {
  private readonly stallTimeoutMs: number;
  readonly name: string;
  readonly bucket: string;
  /** Key prefix, no leading or trailing slash; '' for the bucket root. */
  readonly root: string;
  readonly client: S3Client;
  private readonly ownsClient: boolean;
  private readonly endpointOption: string | undefined;
  private readonly partSize: number;
  private readonly queueSize: number;
  private readonly onRetry: ((message: string) => void) | undefined;
  /** What the s3-*.ts modules share of this driver. */
  private readonly s3: S3Bucket;

  constructor(options: S3DriverOptions) {
    if (!options.bucket) throw new SmartError('USAGE', 'an S3 storage needs a bucket name');
    this.bucket = options.bucket;
    this.stallTimeoutMs = options.stallTimeoutMs ?? DEFAULT_STALL_MS;
    this.root = (options.rootDirectory ?? '')
      .split('/')
      .filter((s) => s !== '')
      .join('/');
    this.name = `s3://${this.bucket}${this.root ? `/${this.root}` : ''}`;
    this.endpointOption = options.endpoint;
    this.partSize = options.partSize ?? DEFAULT_PART_SIZE;
    this.queueSize = options.queueSize ?? DEFAULT_QUEUE_SIZE;
    this.onRetry = options.onRetry;
    if (this.partSize < MIN_PART_SIZE) throw new SmartError('USAGE', `S3 part size ${this.partSize} is below the 5 MiB minimum`);
    if (this.queueSize < 1) throw new SmartError('USAGE', 'S3 upload queue size must be at least 1');
    if (options.client) {
      this.client = options.client;
      this.ownsClient = false;
    } else {
      this.client = makeS3Client({
        ...(options.endpoint !== undefined ? { endpoint: options.endpoint } : {}),
        ...(options.region !== undefined ? { region: options.region } : {}),
        ...(options.forcePathStyle !== undefined ? { forcePathStyle: options.forcePathStyle } : {}),
        ...(options.credentials ? { credentials: options.credentials } : {}),
        stallTimeoutMs: this.stallTimeoutMs,
        ...(options.onRetry ? { onWarning: options.onRetry } : {}),
      });
      this.ownsClient = true;
    }
    this.s3 = { client: this.client, bucket: this.bucket, uri: (key) => this.uri(key), fail: (e, op, key) => this.fail(e, op, key) };
  }

  /** Closes the client's connections when this driver made the client. */
  destroy(): void {
    if (this.ownsClient) this.client.destroy();
  }

  // ---- keys and errors -------------------------------------------------------------------------

  /** The object key of a driver path: root + path, no leading slash. */
  key(p: string): string {
    // Paths come from the layout, never from users; still refuse anything that would climb.
    if (p.split('/').includes('..')) throw new SmartError('INTERNAL', `storage path climbs: ${p}`);
    const parts = path.posix.normalize(`/${p}`).split('/').filter((s) => s !== '' && s !== '.');
    return [...(this.root ? [this.root] : []), ...parts].join('/');
  }

  private uri(key: string): string {
    return `s3://${this.bucket}${key ? `/${key}` : ''}`;
  }

  location(p: string): string {
    return this.uri(this.key(p));
  }

  /** An SDK or network error as a SmartError naming `s3://bucket/key`, never credentials. */
  private fail(e: unknown, op: string, key: string): Promise<SmartError> {
    return s3Error(e, { op, where: this.uri(key), bucket: this.bucket, stallTimeoutMs: this.stallTimeoutMs, endpoint: () => endpointLabel(this.client, this.endpointOption) });
  }

  // ---- objects ---------------------------------------------------------------------------------

  /**
   * The whole object. A body cut or stalled mid-way is read again, up to READ_ATTEMPTS reads, each
   * told to `onRetry` (a failed request was already retried by the client, and is not again here).
   */
  async getContent(p: string, maxBytes?: number): Promise<Buffer> {
    const key = this.key(p);
    for (let n = 0; ; n++) {
      let reading = false;
      try {
        const res = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: key }));
        if (!res.Body) return Buffer.alloc(0);
        if (maxBytes !== undefined && res.ContentLength !== undefined && res.ContentLength > maxBytes) {
          (res.Body as Readable).destroy();
          checkSize(res.ContentLength, maxBytes, this.uri(key));
        }
        reading = true;
        const bytes = await res.Body.transformToByteArray();
        const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
        if (res.ContentLength !== undefined && buf.length !== res.ContentLength) {
          throw new SmartError('STORAGE', `cannot read ${this.uri(key)}: got ${buf.length} of ${res.ContentLength} bytes`, {
            input: this.uri(key),
            retryable: true,
          });
        }
        return buf;
      } catch (e) {
        const error = await this.fail(e, 'read', key);
        if (!reading || !error.retryable || n + 1 >= READ_ATTEMPTS) throw error;
        const delay = RESUME_DELAY_MS * 2 ** n;
        this.onRetry?.(`${error.message}; reading it again in ${(delay / 1000).toFixed(1)} s (attempt ${n + 2} of ${READ_ATTEMPTS})`);
        await sleep(delay);
      }
    }
  }

  async putContent(p: string, content: Buffer): Promise<void> {
    const key = this.key(p);
    try {
      await this.client.send(
        new PutObjectCommand({
          Bucket: this.bucket,
          Key: key,
          Body: content,
          ContentLength: content.length,
          ContentType: 'application/octet-stream',
        }),
      );
    } catch (e) {
      throw await this.fail(e, 'write', key);
    }
  }

  /**
   * A download cut or stalled mid-way is resumed from the byte reached (a range GET), up to
   * READ_ATTEMPTS reads, each told to `onRetry`: the client retries a request, not a body that breaks.
   */
  async reader(p: string, offset = 0, length?: number): Promise<Readable> {
    const key = this.key(p);
    const first = await this.readRange(key, offset, length);
    return resumingReader(first, (from, rest) => this.readRange(key, from, rest), {
      offset,
      ...(length !== undefined ? { length } : {}),
      attempts: READ_ATTEMPTS,
      delayMs: RESUME_DELAY_MS,
      ...(this.onRetry ? { onRetry: this.onRetry } : {}),
    });
  }

  /** One GET of `key` from `offset`: the body, its length checked, guarded against stalls. */
  private async readRange(key: string, offset: number, length: number | undefined): Promise<Readable> {
    let res;
    try {
      res = await this.client.send(
        new GetObjectCommand({
          Bucket: this.bucket,
          Key: key,
          ...(length !== undefined ? { Range: `bytes=${offset}-${offset + length - 1}` } : offset > 0 ? { Range: `bytes=${offset}-` } : {}),
        }),
      );
    } catch (e) {
      // 416 InvalidRange: the object exists and `offset` is at (or past) its end. The registry's
      // own S3 driver answers an empty reader there too.
      const f = facts(e);
      if (offset > 0 && (f.status === 416 || f.name === 'InvalidRange')) return Readable.from([]);
      throw await this.fail(e, 'read', key);
    }
    if (offset > 0 && res.$metadata.httpStatusCode !== 206) {
      (res.Body as Readable | undefined)?.destroy();
      throw new SmartError('STORAGE', `cannot read ${this.uri(key)} from offset ${offset}: the S3 endpoint ignored the Range header`, {
        input: this.uri(key),
      });
    }
    const body = res.Body as Readable | undefined;
    if (!body) return Readable.from([]);
    const check = new LengthCheck(res.ContentLength, (seen, expected) =>
      new SmartError('STORAGE', `cannot read ${this.uri(key)}: the response ended after ${seen} of ${expected} bytes`, {
        input: this.uri(key),
        retryable: true,
      }),
    );
    body.on('error', (e: unknown) => {
      void this.fail(e, 'read', key).then((err) => check.destroy(err));
    });
    // The consumer stopping early must release the connection.
    check.once('close', () => {
      if (!body.destroyed) body.destroy();
    });
    body.pipe(check);
    // A download that stops moving (the socket open, no bytes) is an error, never a hang.
    return guardStalls(check, this.stallTimeoutMs, `reading ${this.uri(key)}`);
  }

  /** A streamed multipart upload, visible once committed (s3-writer.ts). */
  async writer(p: string): Promise<StorageWriter> {
    return s3Writer(this.s3, this.key(p), { partSize: this.partSize, queueSize: this.queueSize });
  }

  async stat(p: string): Promise<StorageStat | undefined> {
    const key = this.key(p);
    if (key !== '') {
      try {
        const head = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key }));
        return { size: head.ContentLength ?? 0, isDirectory: false };
      } catch (e) {
        const err = await this.fail(e, 'stat', key);
        if (err.code !== 'NOT_FOUND') throw err;
      }
    }
    return (await anyUnder(this.s3, dirPrefix(key), key, 'stat')) ? { size: 0, isDirectory: true } : undefined;
  }

  /** One HEAD: a 404 is no object, with no listing to tell a directory from nothing (see StorageDriver.objectSize). */
  async objectSize(p: string): Promise<number | undefined> {
    const key = this.key(p);
    try {
      const head = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key }));
      return head.ContentLength ?? 0;
    } catch (e) {
      const err = await this.fail(e, 'stat', key);
      if (err.code !== 'NOT_FOUND') throw err;
      return undefined;
    }
  }

  async list(p: string): Promise<string[]> {
    return childNames(this.s3, this.key(p));
  }

  async *walk(p: string): AsyncIterable<StorageEntry> {
    const key = this.key(p);
    const prefix = dirPrefix(key);
    const rootPrefix = dirPrefix(this.root);
    for await (const page of objectPages(this.s3, prefix, key, 'list')) {
      for (const o of page) if (o.key.startsWith(prefix)) yield { path: `/${o.key.slice(rootPrefix.length)}`, size: o.size };
    }
  }

  async move(from: string, to: string, knownSize?: number): Promise<void> {
    const src = this.key(from);
    const dst = this.key(to);
    let size: number;
    if (knownSize !== undefined && src !== dst) size = knownSize;
    else {
      try {
        const head = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: src }));
        size = head.ContentLength ?? 0;
      } catch (e) {
        throw await this.fail(e, 'move', src);
      }
    }
    if (src === dst) return;
    if (size > MAX_COPY_SIZE) {
      throw new SmartError(
        'STORAGE',
        `cannot move ${this.uri(src)} (${size} bytes): objects over 5 GiB need a multipart copy (UploadPartCopy), which this driver does not do`,
        { input: this.uri(src) },
      );
    }
    try {
      await this.client.send(
        new CopyObjectCommand({ Bucket: this.bucket, Key: dst, CopySource: `${encodeURIComponent(this.bucket)}/${encodeKey(src)}` }),
      );
    } catch (e) {
      throw await this.fail(e, `copy to ${this.uri(dst)} from`, src);
    }
    await deleteObject(this.s3, src);
  }

  async delete(p: string): Promise<void> {
    await deleteTree(this.s3, this.key(p));
  }
}
