/**
 * A `garbage-collect` of the registry running while a push writes into its storage. The collector
 * removes every blob that no manifest named when it looked: the blobs a push has just written, or
 * found and linked, before that push stores its manifest. The registry's API refuses such a
 * manifest at its PUT (MANIFEST_BLOB_UNKNOWN); a push into the storage directly must not tag it
 * either. The collector runs, deterministically, at the moment the race puts it: between the blob
 * phase and the manifest (the stock `docker-registry garbage-collect` on a `file:` store; the blob
 * deleted from the bucket as it would on `s3://`), or between the manifest and the tag.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { DeleteObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isImageWriter, isStreamed, type BlobDestination } from '../../src/oci/image.js';
import type { ParsedManifest } from '../../src/oci/manifest.js';
import { hostPlatform } from '../../src/oci/platform.js';
import { copy, type CopySummary } from '../../src/ops/copy.js';
import { openDestination, openSource, parseImageName } from '../../src/transports/all.js';
import type { StoreCheckReport } from '../../src/ops/store-check.js';
import { writeImage } from '../harness/images.js';
import { runOk, smart } from '../harness/run.js';
import { startS3, type RunningS3 } from '../harness/s3.js';
import { haveTools } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';

const V2 = 'docker/registry/v2';
const blobData = (d: string) => `${V2}/blobs/sha256/${d.slice(7, 9)}/${d.slice(7)}/data`;
const layerLink = (repo: string, d: string) => `${V2}/repositories/${repo}/_layers/sha256/${d.slice(7)}/link`;
const currentLink = (repo: string, tag: string) => `${V2}/repositories/${repo}/_manifests/tags/${tag}/current/link`;

type Step = 'putManifest' | 'commit';

/**
 * Copies the OCI layout `layout` into `to` through the library, as `smart push` does, running
 * `meanwhile` just before the destination is asked to store the manifest or to tag it.
 */
async function pushWith(layout: string, to: string, at: Step, meanwhile: (top: ParsedManifest) => Promise<void>): Promise<CopySummary> {
  const ctx = { stdin: process.stdin, stdout: process.stdout };
  const source = await openSource(parseImageName(`oci:${layout}:latest`), ctx);
  const dest = await openDestination(parseImageName(to), ctx);
  if (isStreamed(source) || isImageWriter(dest)) throw new Error('expected a layout source and a store destination');
  let ran = false;
  const step = async (m: ParsedManifest): Promise<void> => {
    if (!ran) {
      ran = true;
      await meanwhile(m);
    }
    return dest[at](m);
  };
  // The destination itself for everything else (its own `this`).
  const hooked = new Proxy(dest, {
    get(target, prop) {
      if (prop === at) return step;
      const v = Reflect.get(target, prop, target) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  }) as BlobDestination;
  try {
    return await copy(source, hooked, { platform: hostPlatform(), jobs: 4 });
  } finally {
    expect(ran).toBe(true);
    await dest.close();
    await source.close();
  }
}

async function rejection(p: Promise<unknown>): Promise<Error & { code?: string; hint?: string }> {
  try {
    await p;
  } catch (e) {
    return e as Error & { code?: string };
  }
  throw new Error('resolved, expected a rejection');
}

const exists = (p: string) => fs.access(p).then(() => true, () => false);

describe.skipIf(!haveTools('docker-registry'))('garbage-collect while a push writes into the storage', () => {
  let work: string;
  let n = 0;

  /** A fresh image (nothing of it in any store), as an OCI layout. */
  const freshImage = async () => {
    const dir = path.join(work, `image-${++n}`);
    const image = await writeImage(dir, { layers: [{ files: { 'base.txt': `base ${n}\n` }, createdBy: 'COPY base.txt /' }, { files: { 'app.txt': `app ${n}\n` }, createdBy: 'COPY app.txt /' }] });
    return { dir, ...image };
  };

  /** Runs the stock registry's garbage-collect over the `file:` store at `root`. */
  const collect = async (root: string, ...flags: string[]) => {
    const config = path.join(work, `gc-${path.basename(root)}.yml`);
    await fs.writeFile(config, `version: 0.1\nstorage:\n  filesystem: {rootdirectory: ${JSON.stringify(root)}}\n  delete: {enabled: true}\nhttp: {addr: 127.0.0.1:0}\n`);
    await runOk('docker-registry', ['garbage-collect', ...flags, config]);
  };

  const checked = async (store: string, env?: NodeJS.ProcessEnv): Promise<StoreCheckReport> => {
    const r = await smart(['store', 'check', store, '--json'], { killAfterS: 60, ...(env ? { env } : {}) });
    return JSON.parse(r.stdout.toString()) as StoreCheckReport;
  };

  beforeAll(async () => {
    work = await tempDir();
  });

  it('blobs removed between their write and the manifest: the push fails on one line and tags nothing; the next push puts them back', async () => {
    const root = path.join(work, 'store-1');
    const image = await freshImage();
    const e = await rejection(pushWith(image.dir, `file:${root}#team/app:1`, 'putManifest', () => collect(root)));
    // The collector removed all it could: the config and both layers (no manifest named them yet).
    for (const d of [image.config.digest, ...image.layers.map((l) => l.digest)]) expect(await exists(path.join(root, blobData(d)))).toBe(false);
    expect(e.code).toBe('NOT_FOUND');
    expect(e.message).toMatch(/^file:.*#team\/app: (config|layer) sha256:[0-9a-f]{64} \(and 2 more\) is no longer in the store: removed while this push ran \(a garbage-collect\?\); nothing tagged$/);
    expect(e.hint).toMatch(/push again/);
    expect(await exists(path.join(root, currentLink('team/app', '1')))).toBe(false);
    expect(await exists(path.join(root, blobData(image.manifest)))).toBe(false);
    // What is left is what garbage-collect leaves: links to removed blobs, information only.
    expect((await checked(`file:${root}`)).consistent).toBe(true);

    // A rerun writes them again, and the image is whole.
    const again = await smart(['push', `oci:${image.dir}:latest`, `file:${root}#team/app:1`, '--json']);
    expect(again.code, again.stderr).toBe(0);
    expect((JSON.parse(again.stdout.toString()) as CopySummary).layers.pushed).toBe(2);
    const report = await checked(`file:${root}`);
    expect(report.problems).toEqual([]);
    expect(report.consistent).toBe(true);
  });

  it('a blob found in the store, then removed before the manifest: refused the same way', async () => {
    const root = path.join(work, 'store-2');
    const image = await freshImage();
    // Its blobs stored by an earlier push whose manifest was never stored (killed): nothing names them.
    const first = await rejection(pushWith(image.dir, `file:${root}#team/app:1`, 'putManifest', async () => {
      throw new Error('killed before the manifest');
    }));
    expect(first.message).toBe('killed before the manifest');
    let summary: CopySummary | undefined;
    const e = await rejection(
      pushWith(image.dir, `file:${root}#team/app:1`, 'putManifest', () => collect(root)).then((s) => {
        summary = s;
      }),
    );
    expect(summary).toBeUndefined();
    expect(e.code).toBe('NOT_FOUND');
    expect(await exists(path.join(root, currentLink('team/app', '1')))).toBe(false);
  });

  it('a layer link alone taken away before the manifest (the blob is there): linked again, the image whole', async () => {
    const root = path.join(work, 'store-3');
    const image = await freshImage();
    const layer = image.layers[1]!.digest;
    await pushWith(image.dir, `file:${root}#team/app:1`, 'putManifest', () => fs.rm(path.join(root, layerLink('team/app', layer))));
    expect(await exists(path.join(root, layerLink('team/app', layer)))).toBe(true);
    expect((await checked(`file:${root}`)).problems).toEqual([]);
  });

  it('the manifest removed between its write and the tag (its blob unnamed when the collector looked): written again, then tagged', async () => {
    const root = path.join(work, 'store-4');
    const image = await freshImage();
    await pushWith(image.dir, `file:${root}#team/app:1`, 'commit', (top) => fs.rm(path.join(root, blobData(top.digest))));
    expect(await fs.readFile(path.join(root, currentLink('team/app', '1')), 'utf8')).toBe(image.manifest);
    expect(await exists(path.join(root, blobData(image.manifest)))).toBe(true);
    expect((await checked(`file:${root}`)).problems).toEqual([]);
  });

  it('garbage-collect --delete-untagged between the manifest and the tag (the manifest untagged, its blobs with it): nothing tagged', async () => {
    const root = path.join(work, 'store-5');
    // garbage-collect --delete-untagged (2.8) stops at a repository without tags: one tagged already.
    const tagged = await freshImage();
    expect((await smart(['push', `oci:${tagged.dir}:latest`, `file:${root}#team/app:0`])).code).toBe(0);
    const image = await freshImage();
    const e = await rejection(pushWith(image.dir, `file:${root}#team/app:1`, 'commit', () => collect(root, '--delete-untagged')));
    expect(await exists(path.join(root, blobData(image.layers[0]!.digest)))).toBe(false);
    expect(e.code).toBe('NOT_FOUND');
    expect(e.message).toMatch(/is no longer in the store: removed while this push ran/);
    expect(await exists(path.join(root, currentLink('team/app', '1')))).toBe(false);
    const report = await checked(`file:${root}`);
    expect(report.consistent).toBe(true);
    expect(report.tags).toBe(1);
  });

  describe('into S3', () => {
    let s3: RunningS3;
    const saved = { ...process.env };

    beforeAll(async () => {
      s3 = await startS3(path.join(work, 's3'));
      Object.assign(process.env, s3.env);
    });

    afterAll(async () => {
      process.env = saved;
      await s3?.stop();
    });

    it('a layer deleted from the bucket before the manifest: refused, nothing tagged; the next push puts it back', async () => {
      const image = await freshImage();
      const layer = image.layers[0]!.digest;
      const store = `s3://${s3.bucket}/gc#team/app:1`;
      const e = await rejection(pushWith(image.dir, store, 'putManifest', async () => {
        await s3.client().send(new DeleteObjectCommand({ Bucket: s3.bucket, Key: `gc/${blobData(layer)}` }));
      }));
      expect(e.code).toBe('NOT_FOUND');
      expect(e.message).toBe(`s3://${s3.bucket}/gc#team/app: layer ${layer} is no longer in the store: removed while this push ran (a garbage-collect?); nothing tagged`);
      const report = await checked(`s3://${s3.bucket}/gc`, s3.env);
      expect(report.consistent).toBe(true);
      expect(report.tags).toBe(0);
      const again = await smart(['push', `oci:${image.dir}:latest`, store], { env: s3.env });
      expect(again.code, again.stderr).toBe(0);
      expect((await checked(`s3://${s3.bucket}/gc`, s3.env)).problems).toEqual([]);
    });
  });
});
