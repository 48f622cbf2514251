/**
 * Listing an S3 bucket for the storage driver. Listings are flat (no delimiter): s3rver's
 * `delimiter=/` listing misses prefixes whose objects all lie two or more levels deeper.
 */
import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import type { S3Bucket } from './s3-client.js';

/** The prefix of everything "inside" a key. */
export function dirPrefix(key: string): string {
  return key === '' ? '' : `${key}/`;
}

/** Pages of keys under `prefix`, following continuation tokens; a failure names `op` on `opKey`. */
export async function* keyPages(s3: S3Bucket, prefix: string, opKey: string, op: string): AsyncGenerator<string[]> {
  let token: string | undefined;
  do {
    let res;
    try {
      res = await s3.client.send(new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: prefix, ...(token ? { ContinuationToken: token } : {}) }));
    } catch (e) {
      throw await s3.fail(e, op, opKey);
    }
    yield (res.Contents ?? []).map((o) => o.Key).filter((k): k is string => typeof k === 'string');
    token = res.IsTruncated ? res.NextContinuationToken : undefined;
  } while (token);
}

/** Whether any object's key starts with `prefix` (one request); a failure names `op` on `opKey`. */
export async function anyUnder(s3: S3Bucket, prefix: string, opKey: string, op: string): Promise<boolean> {
  try {
    const res = await s3.client.send(new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: prefix, MaxKeys: 1 }));
    return (res.Contents?.length ?? 0) > 0;
  } catch (e) {
    throw await s3.fail(e, op, opKey);
  }
}

/**
 * The names of the children of `key` (files and "directories"), sorted. Costs one entry per
 * object below `key` instead of one per child (the listing is flat).
 */
export async function childNames(s3: S3Bucket, key: string): Promise<string[]> {
  const prefix = dirPrefix(key);
  const names = new Set<string>();
  for await (const page of keyPages(s3, prefix, key, 'list')) {
    for (const k of page) {
      if (!k.startsWith(prefix)) continue;
      const first = k.slice(prefix.length).split('/')[0];
      if (first) names.add(first);
    }
  }
  return [...names].sort();
}
