/**
 * The real stores the contract suites run against, each started by the suite and stopped by it:
 * a `file:` store in a temp dir, an `s3://` store in s3rver, the stock registry for `docker://`,
 * OCI layouts and archives, docker-archives as files and as a stream. Everything is opened through
 * the library's transport map, in this process, exactly as the CLI opens it.
 */
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { afterAll } from 'vitest';
import { isStreamed, isImageWriter, type BlobDestination, type ImageSource, type Source } from '../../src/oci/image.js';
import { hostPlatform } from '../../src/oci/platform.js';
import type { BlobInfoCache } from '../../src/cache/blob-info.js';
import { copy, type CopySummary } from '../../src/ops/copy.js';
import { openDestination, openSource, parseImageName } from '../../src/transports/all.js';
import type { OpenContext } from '../../src/transports/transport.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { startS3, type RunningS3 } from '../harness/s3.js';
import { tempDir } from '../harness/tmp.js';
import { haveTools } from '../harness/tools.js';

/** Whether the programs the suites start are here (under CI their absence fails, see haveTools). */
export const haveServers = haveTools('docker-registry');

export interface Servers {
  registry: RunningRegistry;
  s3: RunningS3;
}

/** Starts the stock registry and s3rver for the file; both stopped after it. The S3 settings go into this process's environment, as the AWS CLI reads them. */
export async function startServers(): Promise<Servers> {
  const work = await tempDir('smart-contract-');
  const [registry, s3] = await Promise.all([startRegistry({ configDir: work }), startS3(`${work}/s3`)]);
  afterAll(async () => {
    await Promise.all([registry.stop(), s3.stop()]);
  });
  Object.assign(process.env, s3.env);
  return { registry, s3 };
}

export const ctx = (stdin?: Readable): OpenContext => ({ stdin: stdin ?? process.stdin, stdout: process.stdout });

export async function openRandom(name: string): Promise<ImageSource> {
  const s = await openSource(parseImageName(name), ctx());
  if (isStreamed(s)) throw new Error(`${name} opened as a stream`);
  return s;
}

export async function openBlobDestination(name: string, blobInfo?: BlobInfoCache): Promise<BlobDestination> {
  const d = await openDestination(parseImageName(name), { ...ctx(), ...(blobInfo ? { blobInfo } : {}) });
  if (isImageWriter(d)) throw new Error(`${name} is a whole-image destination`);
  return d;
}

/** Copies `from` into `to` through the library (as `smart push`), closing both. */
export async function libraryCopy(from: string, to: string | BlobDestination, options: { allPlatforms?: boolean; blobInfo?: BlobInfoCache } = {}): Promise<CopySummary> {
  const source: Source = await openSource(parseImageName(from), ctx());
  const dest = typeof to === 'string' ? await openDestination(parseImageName(to), { ...ctx(), ...(options.blobInfo ? { blobInfo: options.blobInfo } : {}) }, parseImageName(from)) : to;
  try {
    return await copy(source, dest, { platform: hostPlatform(), jobs: 4, ...options });
  } finally {
    if (!isImageWriter(dest)) await dest.close();
    if (!isStreamed(source)) await source.close();
  }
}

export async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

export const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** What a promise rejects with (fails the test if it resolves). */
export async function rejection(p: Promise<unknown>): Promise<Error & { code?: string }> {
  try {
    await p;
  } catch (e) {
    return e as Error & { code?: string };
  }
  throw new Error('resolved, expected a rejection');
}
