#!/usr/bin/env node
/**
 * The limit of an S3 push: the same blobs uploaded with the AWS SDK alone (lib-storage `Upload`,
 * the way smart's S3 writer sends them), nothing hashed, nothing read back, nothing else asked.
 * bench/run.mjs pairs its S3 rows with this.
 *
 *   node bench/s3-limit.mjs [--part-mib N] [--queue N] [--jobs N] BUCKET PREFIX FILE...
 *
 * Endpoint, region and credentials from the AWS environment (AWS_ENDPOINT_URL_S3...), with the
 * client settings smart uses against s3rver (path style, checksums only when required).
 * --part-mib/--queue: part size and parts in flight per object (default: smart's); --jobs: objects
 * at once (default 4, smart's --jobs on 2 cores). Each FILE goes to PREFIX/<its base name>.
 */
import fs from 'node:fs';
import path from 'node:path';
import { S3Client } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';

const args = process.argv.slice(2);
const option = (name, fallback) => {
  const i = args.indexOf(name);
  if (i < 0) return fallback;
  const [, value] = args.splice(i, 2);
  return Number(value);
};
const partMiB = option('--part-mib', 8);
const queueSize = option('--queue', 4);
const jobs = option('--jobs', 4);
const [bucket, prefix, ...files] = args;
if (!bucket || prefix === undefined || files.length === 0) {
  console.error('usage: s3-limit.mjs [--part-mib N] [--queue N] [--jobs N] BUCKET PREFIX FILE...');
  process.exit(2);
}
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';
const endpoint = process.env.AWS_ENDPOINT_URL_S3 || process.env.AWS_ENDPOINT_URL || undefined;
const client = new S3Client({
  region: process.env.AWS_REGION || 'us-east-1',
  forcePathStyle: endpoint !== undefined,
  requestChecksumCalculation: 'WHEN_REQUIRED',
  responseChecksumValidation: 'WHEN_REQUIRED',
  ...(endpoint ? { endpoint } : {}),
});
const queue = [...files];
const started = performance.now();
await Promise.all(
  Array.from({ length: Math.min(jobs, queue.length) }, async () => {
    for (let file = queue.shift(); file !== undefined; file = queue.shift()) {
      const Key = `${prefix.replace(/\/$/, '')}/${path.basename(file)}`;
      await new Upload({ client, params: { Bucket: bucket, Key, Body: fs.createReadStream(file, { highWaterMark: 256 * 1024 }) }, partSize: partMiB * 1024 * 1024, queueSize }).done();
    }
  }),
);
client.destroy();
process.stderr.write(`s3-limit: ${files.length} objects, ${(performance.now() - started).toFixed(0)} ms (part ${partMiB} MiB, ${queueSize} in flight per object, ${jobs} objects at once)\n`);
