/**
 * The S3 driver's writer: an object streamed up as a multipart upload, visible only once
 * committed, and nothing left visible when cancelled or failed.
 */
import { PassThrough, Writable } from 'node:stream';
import { AbortMultipartUploadCommand, type S3Client } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { SmartError, isSmartError } from '../errors.js';
import type { StorageWriter } from './driver.js';
import type { S3Bucket } from './s3-client.js';

const MiB = 1024 * 1024;

/**
 * A writer of `key`: a streamed multipart upload (lib-storage `Upload`, `partSize` parts,
 * `queueSize` in flight). The bytes written go through a PassThrough that the upload reads as it
 * sends, so a slow endpoint holds the writer back. What is held does not grow with the object:
 * the parts in flight, the next part being gathered, 2 MiB of stream buffers, and what the SDK
 * keeps of recent requests — measured at 17-35 MiB with 5 MiB × 1-4 parts, up to 75 MiB with the
 * default 8 MiB × 4.
 * The PassThrough is ended only by `commit()`: until then the last part (or, for a small
 * object, the single PutObject) cannot go out, so nothing appears before commit, and cancel
 * after a finished stream still leaves nothing.
 */
export function s3Writer(s3: S3Bucket, key: string, options: { partSize: number; queueSize: number }): StorageWriter {
  const where = s3.uri(key);
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
  const base = s3.client;
  const watched = Object.create(base) as S3Client;
  const send = base.send.bind(base) as (command: unknown, ...rest: unknown[]) => Promise<unknown>;
  Object.defineProperty(watched, 'send', {
    value: (command: unknown, ...rest: unknown[]) =>
      send(command, ...rest).catch(async (e: unknown) => {
        // Aborting is clean-up after a failure already recorded: s3rver answers it 405, and its
        // error would replace the real one in what lib-storage throws. The parts of an upload
        // that could not be aborted are never visible; on AWS a lifecycle rule expires them.
        if (command instanceof AbortMultipartUploadCommand) return {};
        failWith(await s3.fail(e, 'upload', key));
        throw e;
      }),
  });
  const upload = new Upload({
    client: watched,
    params: { Bucket: s3.bucket, Key: key, Body: inner, ContentType: 'application/octet-stream' },
    partSize: options.partSize,
    queueSize: options.queueSize,
    leavePartsOnError: false,
  });
  // Settles once every request of the upload has; never rejects.
  const settled: Promise<void> = upload.done().then(
    () => undefined,
    async (e: unknown) => {
      if (!failure) failWith(await s3.fail(e, 'upload', key));
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
        failWith(isSmartError(e) ? e : await s3.fail(e, 'write', key));
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
