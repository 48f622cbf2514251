/**
 * The real stores the contract suites run against, each started by the suite and stopped by it:
 * a `file:` store in a temp dir, an `s3://` store in s3rver, the stock registry for `docker://`,
 * OCI layouts and archives, docker-archives as files and as a stream. Everything is opened through
 * the library's transport map, in this process, exactly as the CLI opens it.
 */
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { afterAll, expect } from 'vitest';
import { isStreamed, isImageWriter, type BlobDestination, type ImageSource, type Source } from '../../src/oci/image.js';
import { parseDigest } from '../../src/oci/digest.js';
import type { Descriptor } from '../../src/oci/manifest.js';
import { hostPlatform } from '../../src/oci/platform.js';
import { resolveImage } from '../../src/pipeline/layers.js';
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

const started: Servers[] = [];

// Registered as the test file is collected: an afterAll registered inside its beforeAll never runs.
afterAll(async () => {
  await Promise.all(started.splice(0).flatMap(({ registry, s3 }) => [registry.stop(), s3.stop()]));
});

/** Starts the stock registry and s3rver for the file; both stopped after it. The S3 settings go into this process's environment, as the AWS CLI reads them. */
export async function startServers(): Promise<Servers> {
  const work = await tempDir('smart-contract-');
  const [registry, s3] = await Promise.all([startRegistry({ configDir: work }), startS3(`${work}/s3`)]);
  started.push({ registry, s3 });
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

/** A source the source contract reads, and what it must answer. */
export interface SourceCase {
  name: string;
  /** The manifest digest the source must answer (kept byte for byte), when it keeps the pushed one. */
  manifest?: string;
  /** Whether the top manifest is an index (a multi-platform image). */
  index?: boolean;
}

export const asDescriptor = (d: { mediaType: string; digest: string; size: number }): Descriptor => ({ mediaType: d.mediaType, digest: parseDigest(d.digest), size: d.size });

/** The whole contract, on one source. */
export async function validateSource(source: ImageSource, c: SourceCase): Promise<void> {
  const top = await source.getManifest();
  expect(sha256(top.bytes)).toBe(top.digest);
  if (c.manifest) expect(top.digest).toBe(c.manifest);
  expect(top.kind).toBe(c.index ? 'index' : 'manifest');
  const again = await source.getManifestByDigest({ mediaType: top.mediaType, digest: top.digest, size: top.bytes.length });
  expect(again.bytes.equals(top.bytes)).toBe(true);

  const image = await resolveImage(source, hostPlatform());
  expect(sha256(image.configBytes)).toBe(image.manifest.manifest.config.digest);
  expect(image.layers.map((l) => l.diffId)).toEqual(image.config.rootfs.diff_ids);
  for (const layer of image.layers) {
    const blob = await readAll(await layer.open());
    expect(sha256(blob), `blob of ${layer.descriptor.digest}`).toBe(layer.descriptor.digest);
    expect(blob.length).toBe(layer.descriptor.size);
    const tar = await readAll(await layer.openUncompressed());
    expect(sha256(tar), `tar of ${layer.descriptor.digest}`).toBe(layer.diffId);
    if (source.getBlobRange && layer.descriptor.size > 20) {
      const slice = await source.getBlobRange(layer.descriptor, 7, 19);
      expect(Buffer.concat(slice).equals(blob.subarray(7, 20))).toBe(true);
    }
  }

  // Wrong facts about a blob are errors while it streams (or before), never a clean end.
  const first = image.layers[0]!.descriptor;
  const short = await rejection(source.getBlob({ ...first, size: first.size - 1 }).then(readAll));
  expect(short.code).toMatch(/SIZE_MISMATCH|DIGEST_MISMATCH/);
  const absent = { ...first, digest: parseDigest(sha256(Buffer.from('no such blob'))) };
  expect((await rejection(source.getBlob(absent).then(readAll))).code).toMatch(/NOT_FOUND|DIGEST_MISMATCH|SIZE_MISMATCH|REGISTRY/);

  if (source.headManifest) expect((await source.headManifest())?.digest).toBe(top.digest);
  expect(Array.isArray(source.repoTags())).toBe(true);
  await source.close();
}
