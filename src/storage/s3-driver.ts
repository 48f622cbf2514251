/**
 * The storage driver over an S3 bucket, with the Distribution registry's S3 driver key names: the
 * object for `/docker/registry/v2/...` is `<rootdirectory>/docker/registry/v2/...`.
 *
 * Written against AWS S3 and s3rver (the test server). s3rver's gaps shape a few choices here:
 * directory listings are flat (its `delimiter=/` listing misses prefixes whose objects are all two
 * or more levels deeper), an upload that cannot be aborted (AbortMultipartUpload answers 405) is
 * left behind quietly, moves are one CopyObject (it has no UploadPartCopy), and a DeleteObjects that
 * answers 500 is verified and retried. Every client made here sends checksums only when an operation
 * requires them: otherwise a stream body is sent `aws-chunked` and s3rver stores the framing.
 *
 * The `@aws-sdk/*` imports stay in this file: they are heavy, and the rest of the code loads this
 * module only when an `s3://` name is used.
 */
import { Readable, Transform, PassThrough, Writable, type TransformCallback } from 'node:stream';
import path from 'node:path';
import {
  AbortMultipartUploadCommand,
  CopyObjectCommand,
  DeleteObjectCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { guardStalls } from '../pipeline/stall.js';
import { SmartError, isSmartError } from '../errors.js';
import { remoteText } from '../redact.js';
import { checkSize } from '../limits.js';
import type { StorageDriver, StorageStat, StorageWriter } from './driver.js';

export interface S3Credentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

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
}

const MiB = 1024 * 1024;
const DEFAULT_PART_SIZE = 8 * MiB;
const MIN_PART_SIZE = 5 * MiB;
/** Largest object a single CopyObject accepts. */
const MAX_COPY_SIZE = 5 * 1024 * MiB;
const DELETE_BATCH = 1000;

/** The SDK warns on Node < 22 about releases it has not made yet; the version here is pinned. */
function quietly<T>(make: () => T): T {
  const name = 'AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED';
  const before = process.env[name];
  process.env[name] = 'true';
  try {
    return make();
  } finally {
    if (before === undefined) delete process.env[name];
    else process.env[name] = before;
  }
}

function envValue(name: string): string | undefined {
  const v = process.env[name];
  return v === undefined || v === '' ? undefined : v;
}

/** No byte either way on a request's connection for this long: the request fails (retryable) instead of hanging. */
const DEFAULT_STALL_MS = 30_000;

function makeClient(o: { endpoint?: string; region?: string; profile?: string; forcePathStyle?: boolean; credentials?: S3Credentials; stallTimeoutMs?: number }): S3Client {
  const endpoint = o.endpoint ?? envValue('AWS_ENDPOINT_URL_S3') ?? envValue('AWS_ENDPOINT_URL');
  const region = o.region ?? envValue('AWS_REGION') ?? envValue('AWS_DEFAULT_REGION') ?? 'us-east-1';
  const profile = o.profile ?? envValue('AWS_PROFILE');
  const config: S3ClientConfig = {
    region,
    forcePathStyle: o.forcePathStyle ?? endpoint !== undefined,
    // Without these two a PutObject with a stream body goes out `aws-chunked` with a checksum
    // trailer, and servers that do not speak it (s3rver) store the framing: silent corruption.
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    // The socket's idle timer is the stall detector of every request, uploads included: an
    // endpoint that stops reading a part (or stops answering) fails the request, which is retried.
    requestHandler: { socketTimeout: o.stallTimeoutMs ?? DEFAULT_STALL_MS },
    ...(endpoint !== undefined ? { endpoint } : {}),
    ...(profile !== undefined ? { profile } : {}),
    ...(o.credentials ? { credentials: o.credentials } : {}),
  };
  return quietly(() => new S3Client(config));
}

/**
 * A client from the standard AWS environment: endpoint from `AWS_ENDPOINT_URL_S3` or
 * `AWS_ENDPOINT_URL` (then path-style requests), region from `AWS_REGION` / `AWS_DEFAULT_REGION`
 * (default us-east-1), profile from `AWS_PROFILE`, credentials from the SDK's default chain.
 * Checksums are sent only when an operation requires them (see the module comment).
 */
export function s3ClientFromEnvironment(overrides: { endpoint?: string; region?: string; profile?: string; stallTimeoutMs?: number } = {}): S3Client {
  return makeClient(overrides);
}

/** What an SDK or network error says about itself. */
interface ErrorFacts {
  name: string;
  status: number | undefined;
  code: string | undefined;
  message: string;
}

const NETWORK_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENETDOWN',
  'ECONNABORTED',
  'ERR_STREAM_PREMATURE_CLOSE',
  'TimeoutError',
  'RequestTimeout',
  'RequestTimeoutException',
]);

function facts(e: unknown): ErrorFacts {
  const o = (typeof e === 'object' && e !== null ? e : {}) as {
    name?: unknown;
    Code?: unknown;
    code?: unknown;
    message?: unknown;
    $metadata?: { httpStatusCode?: unknown };
    errors?: unknown;
    cause?: unknown;
  };
  const status = typeof o.$metadata?.httpStatusCode === 'number' ? o.$metadata.httpStatusCode : undefined;
  let code = typeof o.code === 'string' ? o.code : undefined;
  // Node's happy-eyeballs connect gives an AggregateError; a cause may carry the errno.
  if (!code && Array.isArray(o.errors)) code = o.errors.map((x) => facts(x).code).find((c) => c !== undefined);
  if (!code && o.cause !== undefined && o.cause !== e) code = facts(o.cause).code;
  const name = typeof o.Code === 'string' ? o.Code : typeof o.name === 'string' ? o.name : 'Error';
  return { name, status, code, message: typeof o.message === 'string' ? o.message : String(e) };
}

function isServerError(e: unknown): boolean {
  const f = facts(e);
  return f.status !== undefined && f.status >= 500;
}

/** Removes user:password@ from an endpoint before it goes into a message. */
function safeUrl(u: string): string {
  try {
    const url = new URL(u);
    url.username = '';
    url.password = '';
    return url.toString().replace(/\/$/, '');
  } catch {
    return u.replace(/\/\/[^@/]*@/, '//');
  }
}

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

  constructor(options: S3DriverOptions) {
    if (!options.bucket) throw new SmartError('USAGE', 'an S3 storage needs a bucket name');
    this.bucket = options.bucket;
    this.stallTimeoutMs = options.stallTimeoutMs ?? 30_000;
    this.root = (options.rootDirectory ?? '')
      .split('/')
      .filter((s) => s !== '')
      .join('/');
    this.name = `s3://${this.bucket}${this.root ? `/${this.root}` : ''}`;
    this.endpointOption = options.endpoint;
    this.partSize = options.partSize ?? DEFAULT_PART_SIZE;
    this.queueSize = options.queueSize ?? 4;
    if (this.partSize < MIN_PART_SIZE) throw new SmartError('USAGE', `S3 part size ${this.partSize} is below the 5 MiB minimum`);
    if (this.queueSize < 1) throw new SmartError('USAGE', 'S3 upload queue size must be at least 1');
    if (options.client) {
      this.client = options.client;
      this.ownsClient = false;
    } else {
      this.client = makeClient({
        ...(options.endpoint !== undefined ? { endpoint: options.endpoint } : {}),
        ...(options.region !== undefined ? { region: options.region } : {}),
        ...(options.forcePathStyle !== undefined ? { forcePathStyle: options.forcePathStyle } : {}),
        ...(options.credentials ? { credentials: options.credentials } : {}),
        stallTimeoutMs: this.stallTimeoutMs,
      });
      this.ownsClient = true;
    }
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

  /** The prefix of everything "inside" a key. */
  private dirPrefix(key: string): string {
    return key === '' ? '' : `${key}/`;
  }

  private uri(key: string): string {
    return `s3://${this.bucket}${key ? `/${key}` : ''}`;
  }

  location(p: string): string {
    return this.uri(this.key(p));
  }

  private async endpointLabel(): Promise<string> {
    if (this.endpointOption) return safeUrl(this.endpointOption);
    try {
      const ep = await this.client.config.endpoint?.();
      if (ep) return safeUrl(`${ep.protocol}//${ep.hostname}${ep.port ? `:${ep.port}` : ''}${ep.path ?? ''}`);
    } catch {
      // fall through to the default
    }
    try {
      return `https://s3.${await this.client.config.region()}.amazonaws.com`;
    } catch {
      return 'https://s3.amazonaws.com';
    }
  }

  /** An SDK or network error as a SmartError naming `s3://bucket/key`, never credentials. */
  private async fail(e: unknown, op: string, key: string): Promise<SmartError> {
    if (isSmartError(e)) return e;
    const f = facts(e);
    const where = this.uri(key);
    const status = f.status !== undefined ? `, HTTP ${f.status}` : '';
    if (f.name === 'NoSuchKey' || f.name === 'NotFound' || (f.status === 404 && f.name !== 'NoSuchBucket' && f.name !== 'NoSuchUpload')) {
      return new SmartError('NOT_FOUND', `${where} not found`, { input: where, cause: e });
    }
    if (f.name === 'NoSuchBucket') {
      return new SmartError('STORAGE', `cannot ${op} ${where}: bucket "${this.bucket}" does not exist (NoSuchBucket${status})`, {
        input: where,
        hint: 'create the bucket or check --s3-endpoint',
        cause: e,
      });
    }
    if (f.code === 'ECONNREFUSED' || f.code === 'ENOTFOUND' || f.code === 'EAI_AGAIN') {
      const endpoint = await this.endpointLabel();
      return new SmartError('STORAGE', `cannot reach the S3 endpoint ${endpoint} (${f.code}) to ${op} ${where}`, {
        input: where,
        hint: 'check --s3-endpoint / AWS_ENDPOINT_URL_S3 and that the server runs',
        cause: e,
        retryable: f.code !== 'ENOTFOUND',
      });
    }
    if (f.name === 'TimeoutError' && /socket timed out/.test(f.message)) {
      return new SmartError('STORAGE', `cannot ${op} ${where}: no data for ${Number((this.stallTimeoutMs / 1000).toFixed(3))} s (stalled)`, { input: where, cause: e, retryable: true });
    }
    const network = (f.code !== undefined && NETWORK_CODES.has(f.code)) || NETWORK_CODES.has(f.name);
    const retryable = network || (f.status !== undefined && (f.status >= 500 || f.status === 429));
    let hint: string | undefined;
    if (f.status === 403 || f.name === 'AccessDenied' || f.name === 'InvalidAccessKeyId' || f.name === 'SignatureDoesNotMatch') {
      hint = 'check the AWS credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE) and their permissions on the bucket';
    } else if (f.status === 301 || f.name === 'PermanentRedirect' || f.name === 'AuthorizationHeaderMalformed') {
      hint = 'the bucket is in another region: set --s3-region / AWS_REGION';
    }
    // The error code and message are the endpoint's words: redacted, one line, bounded. An answer
    // the SDK could not parse (a proxy's or load balancer's error page) says nothing beyond its status.
    const code = remoteText(network ? (f.code ?? f.name) : f.name, { max: 60 });
    const message = /Deserialization error|XML parse error/.test(f.message ?? '') ? '' : remoteText((f.message ?? '').split('\n')[0] ?? '');
    const detail = message && message !== code && message !== 'UnknownError' ? `: ${message}` : '';
    const label = code === 'Error' && status ? status.slice(2) : `${code}${status}`;
    return new SmartError('STORAGE', `cannot ${op} ${where}: ${label}${detail}`, {
      input: where,
      cause: e,
      retryable,
      ...(hint ? { hint } : {}),
    });
  }

  // ---- objects ---------------------------------------------------------------------------------

  async getContent(p: string, maxBytes?: number): Promise<Buffer> {
    const key = this.key(p);
    try {
      const res = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: key }));
      if (!res.Body) return Buffer.alloc(0);
      if (maxBytes !== undefined && res.ContentLength !== undefined && res.ContentLength > maxBytes) {
        (res.Body as Readable).destroy();
        checkSize(res.ContentLength, maxBytes, this.uri(key));
      }
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
      throw await this.fail(e, 'read', key);
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

  async reader(p: string, offset = 0, length?: number): Promise<Readable> {
    const key = this.key(p);
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

  /**
   * A streamed multipart upload (lib-storage `Upload`, `partSize` parts, `queueSize` in flight).
   * The bytes written go through a PassThrough that the upload reads as it sends, so a slow
   * endpoint holds the writer back. What is held does not grow with the object: the parts in
   * flight, the next part being gathered, 2 MiB of stream buffers, and what the SDK keeps of
   * recent requests — measured at 17-35 MiB with 5 MiB × 1-4 parts, up to 75 MiB with the
   * default 8 MiB × 4.
   * The PassThrough is ended only by `commit()`: until then the last part (or, for a small
   * object, the single PutObject) cannot go out, so nothing appears before commit, and cancel
   * after a finished stream still leaves nothing.
   */
  async writer(p: string): Promise<StorageWriter> {
    const key = this.key(p);
    const where = this.uri(key);
    const inner = new PassThrough({ highWaterMark: MiB });
    inner.on('error', () => undefined); // errors reach the upload; never an unhandled 'error'
    let failure: SmartError | undefined;
    let pending: ((e?: Error | null) => void) | undefined;
    const release = (e?: Error | null) => {
      const cb = pending;
      pending = undefined;
      cb?.(e);
    };
    const failWith = (err: SmartError) => {
      if (failure) return;
      failure = err;
      release(err);
      inner.destroy(err); // the upload's readers stop; parts in flight finish; done() settles
    };
    inner.on('drain', () => release());
    // lib-storage closes its source when one of its part uploaders gives up; before commit ended
    // it, that is a failure, and a write waiting for 'drain' must not wait forever.
    inner.on('close', () => {
      if (!inner.writableEnded) failWith(new SmartError('STORAGE', `upload to ${where} stopped reading`, { input: where }));
    });

    // The upload's own client calls, watched: a failed part must stop the writer at once, not when
    // the other parts have gone out (lib-storage reports a failure only when every part settled).
    const base = this.client;
    const watched = Object.create(base) as S3Client;
    const send = base.send.bind(base) as (command: unknown, ...rest: unknown[]) => Promise<unknown>;
    Object.defineProperty(watched, 'send', {
      value: (command: unknown, ...rest: unknown[]) =>
        send(command, ...rest).catch(async (e: unknown) => {
          // Aborting is clean-up after a failure already recorded: s3rver answers it 405, and its
          // error would replace the real one in what lib-storage throws. The parts of an upload
          // that could not be aborted are never visible; on AWS a lifecycle rule expires them.
          if (command instanceof AbortMultipartUploadCommand) return {};
          failWith(await this.fail(e, 'upload', key));
          throw e;
        }),
    });
    const upload = new Upload({
      client: watched,
      params: { Bucket: this.bucket, Key: key, Body: inner, ContentType: 'application/octet-stream' },
      partSize: this.partSize,
      queueSize: this.queueSize,
      leavePartsOnError: false,
    });
    // Settles once every request of the upload has; never rejects.
    const settled: Promise<void> = upload.done().then(
      () => undefined,
      async (e: unknown) => {
        if (!failure) failWith(await this.fail(e, 'upload', key));
      },
    );

    const stream = new Writable({
      highWaterMark: 256 * 1024,
      write(chunk: Buffer, _encoding, callback) {
        if (failure) return callback(failure);
        if (inner.write(chunk)) return callback();
        pending = callback; // released by 'drain', or by a failure
      },
      final(callback) {
        callback(failure ?? null);
      },
    });

    const streamDone = (): Promise<void> =>
      new Promise((resolve, reject) => {
        if (stream.writableFinished) return resolve();
        if (stream.destroyed) return reject(stream.errored ?? new SmartError('STORAGE', `write to ${where} was interrupted`, { input: where }));
        const onFinish = () => {
          stream.off('error', onError);
          resolve();
        };
        const onError = (e: Error) => {
          stream.off('finish', onFinish);
          reject(e);
        };
        stream.once('finish', onFinish);
        stream.once('error', onError);
        if (!stream.writableEnded) stream.end();
      });

    let ended = false;
    return {
      stream,
      commit: async () => {
        if (ended) throw new SmartError('INTERNAL', `writer for ${where} already committed or cancelled`);
        ended = true;
        try {
          await streamDone();
        } catch (e) {
          failWith(isSmartError(e) ? e : await this.fail(e, 'write', key));
        }
        if (!failure) inner.end();
        await settled;
        if (failure) throw failure;
      },
      cancel: async () => {
        if (ended) return;
        ended = true;
        failWith(new SmartError('CANCELLED', `upload to ${where} cancelled`, { input: where }));
        if (!stream.destroyed) stream.destroy();
        await settled;
      },
    };
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
    try {
      const res = await this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: this.dirPrefix(key), MaxKeys: 1 }));
      return (res.Contents?.length ?? 0) > 0 ? { size: 0, isDirectory: true } : undefined;
    } catch (e) {
      throw await this.fail(e, 'stat', key);
    }
  }

  /** Pages of keys under `prefix`, flat (no delimiter), following continuation tokens. */
  private async *pages(prefix: string, opKey: string, op: string): AsyncGenerator<string[]> {
    let token: string | undefined;
    do {
      let res;
      try {
        res = await this.client.send(
          new ListObjectsV2Command({ Bucket: this.bucket, Prefix: prefix, ...(token ? { ContinuationToken: token } : {}) }),
        );
      } catch (e) {
        throw await this.fail(e, op, opKey);
      }
      yield (res.Contents ?? []).map((o) => o.Key).filter((k): k is string => typeof k === 'string');
      token = res.IsTruncated ? res.NextContinuationToken : undefined;
    } while (token);
  }

  async list(p: string): Promise<string[]> {
    const key = this.key(p);
    const prefix = this.dirPrefix(key);
    const names = new Set<string>();
    // Flat, not `delimiter=/`: s3rver's delimiter listing misses prefixes whose objects all lie two
    // or more levels deeper. Costs one entry per object below `path` instead of one per child.
    for await (const page of this.pages(prefix, key, 'list')) {
      for (const k of page) {
        if (!k.startsWith(prefix)) continue;
        const first = k.slice(prefix.length).split('/')[0];
        if (first) names.add(first);
      }
    }
    return [...names].sort();
  }

  async move(from: string, to: string): Promise<void> {
    const src = this.key(from);
    const dst = this.key(to);
    let size: number;
    try {
      const head = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: src }));
      size = head.ContentLength ?? 0;
    } catch (e) {
      throw await this.fail(e, 'move', src);
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
    await this.deleteOne(src);
  }

  async delete(p: string): Promise<void> {
    const key = this.key(p);
    const prefix = this.dirPrefix(key);
    let first = true;
    // s3rver can skip keys across pages (its walk order is not key order), and others may write
    // meanwhile: after a pass, look again, and pass again while something is left.
    for (let pass = 0; pass < 3; pass++) {
      let batch: string[] = first && key !== '' ? [key] : [];
      first = false;
      for await (const page of this.pages(prefix, key, 'delete')) {
        batch.push(...page);
        while (batch.length >= DELETE_BATCH) {
          await this.deleteKeys(batch.slice(0, DELETE_BATCH), key);
          batch = batch.slice(DELETE_BATCH);
        }
      }
      if (batch.length) await this.deleteKeys(batch, key);
      if (!(await this.anyUnder(prefix, key))) return;
    }
    throw new SmartError('STORAGE', `cannot delete ${this.uri(key)}: objects are still under it after three passes`, {
      input: this.uri(key),
      retryable: true,
    });
  }

  private async anyUnder(prefix: string, key: string): Promise<boolean> {
    try {
      const res = await this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: prefix, MaxKeys: 1 }));
      return (res.Contents?.length ?? 0) > 0;
    } catch (e) {
      throw await this.fail(e, 'delete', key);
    }
  }

  /** Which of `keys` (all equal to or under `key`) still exist, by listing. */
  private async stillThere(keys: string[], key: string): Promise<string[]> {
    const wanted = new Set(keys);
    const found: string[] = [];
    for await (const page of this.pages(key, key, 'delete')) for (const k of page) if (wanted.has(k)) found.push(k);
    return found;
  }

  /**
   * One DeleteObjects of up to 1000 keys. s3rver sometimes answers 500 though the objects are gone
   * (its parallel deletes race on removing empty directories): on a 5xx, list what is left and
   * try once more, then delete what still remains one by one.
   */
  private async deleteKeys(keys: string[], key: string): Promise<void> {
    let remaining = keys;
    for (let attempt = 0; attempt < 2 && remaining.length; attempt++) {
      try {
        const res = await this.client.send(
          new DeleteObjectsCommand({
            Bucket: this.bucket,
            Delete: { Objects: remaining.map((Key) => ({ Key })), Quiet: true },
          }),
        );
        remaining = (res.Errors ?? []).map((x) => x.Key).filter((k): k is string => typeof k === 'string');
        if (remaining.length) break; // per-key errors: one by one, for their own messages
      } catch (e) {
        if (!isServerError(e)) throw await this.fail(e, 'delete', key);
        remaining = await this.stillThere(remaining, key);
      }
    }
    for (const k of remaining) await this.deleteOne(k);
  }

  private async deleteOne(k: string): Promise<void> {
    try {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: k }));
    } catch (e) {
      if (isServerError(e)) {
        try {
          await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: k }));
        } catch (h) {
          if ((await this.fail(h, 'delete', k)).code === 'NOT_FOUND') return; // gone despite the 500
        }
      }
      throw await this.fail(e, 'delete', k);
    }
  }
}
