/**
 * Deleting from an S3 bucket for the storage driver, and what a delete leaves behind: s3rver can
 * skip keys across pages (its walk order is not key order), others may write meanwhile, and a
 * DeleteObjects sometimes answers 500 though the objects are gone. So a tree is deleted in passes
 * until nothing is left under it, and a 5xx is checked against what is really still there.
 */
import { DeleteObjectCommand, DeleteObjectsCommand, HeadObjectCommand } from '@aws-sdk/client-s3';
import { SmartError } from '../errors.js';
import type { S3Bucket } from './s3-client.js';
import { isServerError } from './s3-errors.js';
import { anyUnder, dirPrefix, keyPages } from './s3-listing.js';

/** Keys one DeleteObjects takes at most. */
const DELETE_BATCH = 1000;

/** Deletes `key` and everything under it; what is still there after three passes is an error (retryable). */
export async function deleteTree(s3: S3Bucket, key: string): Promise<void> {
  const prefix = dirPrefix(key);
  let first = true;
  for (let pass = 0; pass < 3; pass++) {
    let batch: string[] = first && key !== '' ? [key] : [];
    first = false;
    for await (const page of keyPages(s3, prefix, key, 'delete')) {
      batch.push(...page);
      while (batch.length >= DELETE_BATCH) {
        await deleteKeys(s3, batch.slice(0, DELETE_BATCH), key);
        batch = batch.slice(DELETE_BATCH);
      }
    }
    if (batch.length) await deleteKeys(s3, batch, key);
    if (!(await anyUnder(s3, prefix, key, 'delete'))) return;
  }
  throw new SmartError('STORAGE', `cannot delete ${s3.uri(key)}: objects are still under it after three passes`, {
    input: s3.uri(key),
    retryable: true,
  });
}

/** Which of `keys` (all equal to or under `key`) still exist, by listing. */
async function stillThere(s3: S3Bucket, keys: string[], key: string): Promise<string[]> {
  const wanted = new Set(keys);
  const found: string[] = [];
  for await (const page of keyPages(s3, key, key, 'delete')) for (const k of page) if (wanted.has(k)) found.push(k);
  return found;
}

/**
 * One DeleteObjects of up to 1000 keys. s3rver sometimes answers 500 though the objects are gone
 * (its parallel deletes race on removing empty directories): on a 5xx, list what is left and
 * try once more, then delete what still remains one by one.
 */
async function deleteKeys(s3: S3Bucket, keys: string[], key: string): Promise<void> {
  let remaining = keys;
  for (let attempt = 0; attempt < 2 && remaining.length; attempt++) {
    try {
      const res = await s3.client.send(
        new DeleteObjectsCommand({
          Bucket: s3.bucket,
          Delete: { Objects: remaining.map((Key) => ({ Key })), Quiet: true },
        }),
      );
      remaining = (res.Errors ?? []).map((x) => x.Key).filter((k): k is string => typeof k === 'string');
      if (remaining.length) break; // per-key errors: one by one, for their own messages
    } catch (e) {
      if (!isServerError(e)) throw await s3.fail(e, 'delete', key);
      remaining = await stillThere(s3, remaining, key);
    }
  }
  for (const k of remaining) await deleteObject(s3, k);
}

/** Deletes one object; a 5xx for an object that is gone all the same is success. */
export async function deleteObject(s3: S3Bucket, k: string): Promise<void> {
  try {
    await s3.client.send(new DeleteObjectCommand({ Bucket: s3.bucket, Key: k }));
  } catch (e) {
    if (isServerError(e)) {
      try {
        await s3.client.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: k }));
      } catch (h) {
        if ((await s3.fail(h, 'delete', k)).code === 'NOT_FOUND') return; // gone despite the 500
      }
    }
    throw await s3.fail(e, 'delete', k);
  }
}
