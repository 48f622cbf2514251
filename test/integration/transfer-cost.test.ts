/**
 * What moving a blob costs beyond its bytes. A blob copied as it is (no recompression) is hashed
 * once on its way: the source's stream is verified against its digest as it flows, and the
 * destination (the stock registry over its API, a `file:` store, s3rver behind an `s3://` store,
 * an OCI layout) keeps it only after that stream ended cleanly, without hashing it a second time
 * (measured by counting the bytes every sha256 in the process is fed, crypto's and the addon's,
 * on a layer large enough to dwarf manifests and configs). And a push into S3 asks once whether each blob is there: one
 * HEAD, no listing after its 404 (and one more HEAD before what names it is stored); a layer compressed on its way is moved to its address without a HEAD for its size, and
 * its link does not wait for its upload directory to be removed.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { copy } from '../../src/index.js';
import { sha256Digest } from '../../src/oci/digest.js';
import { fixtures } from '../harness/fixtures.js';
import { writeLayout } from '../harness/images.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { startS3, type RunningS3 } from '../harness/s3.js';
import { tempDir } from '../harness/tmp.js';
import { haveTools } from '../harness/tools.js';

const hashed = vi.hoisted(() => ({ bytes: 0 }));

vi.mock('node:crypto', async (importOriginal) => {
  const real = await importOriginal<typeof import('node:crypto')>();
  const createHash = ((algorithm: string, options?: object) => {
    const hash = real.createHash(algorithm, options as never);
    const update = hash.update.bind(hash) as (data: string | NodeJS.ArrayBufferView, encoding?: BufferEncoding) => typeof hash;
    hash.update = ((data: string | NodeJS.ArrayBufferView, encoding?: BufferEncoding) => {
      hashed.bytes += typeof data === 'string' ? Buffer.byteLength(data, encoding) : data.byteLength;
      return update(data, encoding);
    }) as typeof hash.update;
    return hash;
  }) as typeof real.createHash;
  return { ...real, createHash, default: { ...real, createHash } };
});

// And every byte the addon hashes on the thread pool (src/pipeline/sha256.ts), where it is built.
vi.mock('../../src/pipeline/native.js', async (importOriginal) => {
  const real = await importOriginal<typeof import('../../src/pipeline/native.js')>();
  let counting: ReturnType<typeof real.nativeBinding> | undefined;
  const nativeBinding = () => {
    const b = real.nativeBinding();
    if (!b?.sha256Update || !b.sha256File) return b;
    const { sha256Update, sha256File } = b;
    counting ??= Object.assign(Object.create(b) as typeof b, {
      sha256Update: (context: unknown, chunks: Buffer[]) => {
        for (const c of chunks) hashed.bytes += c.length;
        return sha256Update(context, chunks);
      },
      sha256File: async (file: string, limit: number) => {
        const result = await sha256File(file, limit);
        hashed.bytes += result[1];
        return result;
      },
    });
    return counting;
  };
  return { ...real, nativeBinding };
});

const LAYER_BYTES = 8 * 1024 * 1024;
type FsDriverImport = NonNullable<import('../../src/storage/fs-driver.js').FsDriver['importFile']>;

describe.skipIf(!haveTools('docker-registry'))('a blob copied as it is is hashed once', () => {
  let work: string;
  let layout: string;
  let registry: RunningRegistry;
  let s3: RunningS3;

  /** A one-layer layout; the layer's path. Random bytes do not compress: the gzip member is as large as the layer. */
  async function makeLayout(dir: string): Promise<string> {
    const tarBytes = randomBytes(LAYER_BYTES);
    const gz = gzipSync(tarBytes, { level: 0 });
    const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: [sha256Digest(tarBytes)] } }));
    await writeLayout(dir, [gz], config);
    return path.join(dir, 'blobs', 'sha256', sha256Digest(gz).slice(7));
  }

  beforeAll(async () => {
    work = await tempDir();
    layout = path.join(work, 'layout');
    await makeLayout(layout);
    [registry, s3] = await Promise.all([startRegistry({ configDir: work }), startS3(path.join(work, 's3'))]);
  });

  afterAll(async () => {
    await Promise.all([registry?.stop(), s3?.stop()]);
  });

  beforeEach(() => {
    hashed.bytes = 0;
  });

  const cases: [string, () => string, () => Record<string, string>][] = [
    ['the registry API', () => `docker://${registry.host}/once/app:1`, () => ({})],
    ['a file: store', () => `file:${path.join(work, 'store')}#once/app:1`, () => ({})],
    ['an s3:// store', () => `s3://${s3.bucket}/root#once/app:1`, () => s3.env],
    ['an OCI layout', () => `oci:${path.join(work, 'out')}:1`, () => ({})],
  ];
  for (const [where, destination, env] of cases) {
    it(`into ${where}`, async () => {
      const saved = { ...process.env };
      Object.assign(process.env, env());
      try {
        const summary = await copy(`oci:${layout}:latest`, destination(), { cacheDir: path.join(work, 'cache') });
        expect(summary.layers.pushed).toBe(1);
      } finally {
        process.env = saved;
      }
      // Once: the layer, plus manifests and the config (a few kB). Twice would be 2x the layer.
      expect(hashed.bytes).toBeGreaterThanOrEqual(LAYER_BYTES);
      expect(hashed.bytes).toBeLessThan(LAYER_BYTES * 1.1);
    });
  }

  it('copies a blob from a local file into a local destination in the kernel, then checks the copy', async () => {
    const { FsDriver } = await import('../../src/storage/fs-driver.js');
    const imported: string[] = [];
    const importFile = FsDriver.prototype.importFile as FsDriverImport | undefined;
    FsDriver.prototype.importFile = async function (this: InstanceType<typeof FsDriver>, ...args: Parameters<FsDriverImport>) {
      imported.push(args[1]);
      return importFile!.apply(this, args);
    };
    const events: { layer: string; bytes: number }[] = [];
    try {
      const store = `file:${path.join(work, 'kernel-store')}#once/app:1`;
      await copy(`oci:${layout}:latest`, store, { cacheDir: path.join(work, 'cache') });
      await copy(store, `oci:${path.join(work, 'kernel-out')}:1`, { cacheDir: path.join(work, 'cache'), onProgress: (e) => events.push(e) });
    } finally {
      FsDriver.prototype.importFile = importFile!;
    }
    // The layer, into the store and back out into a layout (the config and manifests are written whole).
    expect(imported.filter((p) => p.includes('/blobs/sha256/'))).toHaveLength(2);
    // Hashed once each way (the copy, not the source), and the progress of the pull still told.
    expect(hashed.bytes).toBeGreaterThanOrEqual(2 * LAYER_BYTES);
    expect(hashed.bytes).toBeLessThan(2 * LAYER_BYTES * 1.1);
    expect(events.reduce((n, e) => n + e.bytes, 0)).toBeGreaterThanOrEqual(LAYER_BYTES);
  });

  it('asks S3 once per blob whether it is there, and once more before the manifest naming it: HEADs, no listing after a 404', async () => {
    const { S3Client } = await import('@aws-sdk/client-s3');
    const sent: { command: string; input: Record<string, unknown> }[] = [];
    // A recording wrapper around every command the SDK sends, in this process.
    const original = S3Client.prototype.send as (...args: unknown[]) => Promise<unknown>;
    const send = vi.spyOn(S3Client.prototype, 'send').mockImplementation(function (this: InstanceType<typeof S3Client>, command: unknown, ...rest: unknown[]) {
      sent.push({ command: (command as object).constructor.name, input: (command as { input: Record<string, unknown> }).input });
      return original.call(this, command, ...rest);
    } as never);
    const saved = { ...process.env };
    Object.assign(process.env, s3.env);
    try {
      await copy(`oci:${layout}:latest`, `s3://${s3.bucket}/requests#once/app:1`, { cacheDir: path.join(work, 'cache') });
    } finally {
      process.env = saved;
      send.mockRestore();
    }
    const blobKeys = (command: string) => sent.filter((r) => r.command === command && /\/blobs\/sha256\/[0-9a-f]{2}\/[0-9a-f]{64}\/data\/?$/.test(String(r.input.Key ?? r.input.Prefix)));
    // Layer, config, manifest: each looked for once before it is written, and once more just before
    // what names it is stored (the manifest: before the tag), as the registry checks at a manifest
    // PUT: a garbage-collect may have removed it meanwhile. Never listed.
    const heads = blobKeys('HeadObjectCommand').map((r) => String(r.input.Key));
    expect(heads).toHaveLength(6);
    expect(new Set(heads).size).toBe(3);
    for (const key of new Set(heads)) expect(heads.filter((k) => k === key), key).toHaveLength(2);
    expect(blobKeys('ListObjectsV2Command')).toEqual([]);
  });

  it('moves layers compressed on their way into S3 without asking their size, and links them without waiting for their uploads to go', async () => {
    const { S3Client } = await import('@aws-sdk/client-s3');
    const sent: { command: string; input: Record<string, unknown> }[] = [];
    let linkedBeforeUploadGone = false;
    let layers = 0;
    const original = S3Client.prototype.send as (...args: unknown[]) => Promise<unknown>;
    const send = vi.spyOn(S3Client.prototype, 'send').mockImplementation(function (this: InstanceType<typeof S3Client>, command: unknown, ...rest: unknown[]) {
      const r = { command: (command as object).constructor.name, input: (command as { input: Record<string, unknown> }).input };
      sent.push(r);
      // The first layer's link goes out while its upload directory is still being removed (no DeleteObjects yet).
      if (r.command === 'PutObjectCommand' && /\/_layers\/sha256\/[0-9a-f]{64}\/link$/.test(String(r.input.Key))) {
        linkedBeforeUploadGone ||= !sent.some((q) => q.command === 'DeleteObjectsCommand');
      }
      return original.call(this, command, ...rest);
    } as never);
    const saved = { ...process.env };
    Object.assign(process.env, s3.env);
    try {
      // A docker save tar: its layers are compressed on their way, so their digests are known only at their ends.
      const summary = await copy(`docker-archive:${fixtures().paths.dockerArchiveBasic}`, `s3://${s3.bucket}/moved#once/app:1`, { cacheDir: path.join(work, 'cache-moved') });
      expect(summary.layers.pushed).toBe(summary.layers.total);
      layers = summary.layers.total;
    } finally {
      process.env = saved;
      send.mockRestore();
    }
    const uploads = (command: string) => sent.filter((r) => r.command === command && String(r.input.Key ?? r.input.CopySource ?? '').includes('/_uploads/'));
    // Written under _uploads, copied to its address, and never HEADed there: its size is known.
    expect(layers).toBeGreaterThan(0);
    expect(sent.filter((r) => r.command === 'CopyObjectCommand')).toHaveLength(layers);
    expect(uploads('HeadObjectCommand')).toEqual([]);
    expect(linkedBeforeUploadGone).toBe(true);
    // And nothing is left under _uploads once the copy returns.
    const { ListObjectsV2Command } = await import('@aws-sdk/client-s3');
    const left = await s3.client().send(new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: 'moved/docker/registry/v2/repositories/once/app/_uploads/' }));
    expect(left.Contents ?? []).toEqual([]);
  });

  it('still refuses a blob whose bytes do not match its digest, leaving nothing behind', async () => {
    const bad = path.join(work, 'bad');
    const blob = await makeLayout(bad);
    const hex = path.basename(blob);
    const bytes = await fs.readFile(blob);
    bytes[bytes.length >> 1]! ^= 0xff; // same size, other bytes
    await fs.writeFile(blob, bytes);
    const cacheDir = path.join(work, 'bad-cache');
    await expect(copy(`oci:${bad}:latest`, `docker://${registry.host}/bad/app:1`, { cacheDir })).rejects.toThrow(/hashes to/);
    await expect(fs.stat(path.join(registry.root, 'docker', 'registry', 'v2', 'blobs', 'sha256', hex.slice(0, 2), hex, 'data'))).rejects.toThrow();
    await expect(copy(`oci:${bad}:latest`, `file:${path.join(work, 'bad-store')}#bad/app:1`, { cacheDir })).rejects.toThrow(/hashes to/);
    await expect(fs.stat(path.join(work, 'bad-store', 'docker', 'registry', 'v2', 'blobs', 'sha256', hex.slice(0, 2), hex, 'data'))).rejects.toThrow();
    await expect(copy(`oci:${bad}:latest`, `oci:${path.join(work, 'bad-out')}:1`, { cacheDir })).rejects.toThrow(/hashes to/);
    await expect(fs.stat(path.join(work, 'bad-out', 'blobs', 'sha256', hex))).rejects.toThrow();
  });
});
