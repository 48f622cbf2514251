/**
 * One contract for every transport that can be a source, as go-containerregistry's `validate`:
 * the manifest hashes to what names it and reads again by digest; the config and every layer read
 * back verified, a layer's blob to its digest and size and its tar to the diff id the config lists;
 * a blob asked for with the wrong size or a digest the source does not hold is an error, never a
 * clean end; ranges (where offered) are slices of the blob; a HEAD (where offered) names the
 * manifest. Run against real stores: OCI layouts and archives, docker-archives as files and as a
 * stream, `file:`, `s3://` (s3rver) and `docker://` (the stock registry).
 */
import fs from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import { parseDigest } from '../../src/oci/digest.js';
import { isStreamed, type ImageSource } from '../../src/oci/image.js';
import type { Descriptor } from '../../src/oci/manifest.js';
import { resolveImage } from '../../src/pipeline/layers.js';
import { hostPlatform } from '../../src/oci/platform.js';
import { openSource, parseImageName } from '../../src/transports/all.js';
import { fixtures } from '../harness/fixtures.js';
import { tempDir } from '../harness/tmp.js';
import { ctx, haveServers, libraryCopy, openRandom, readAll, rejection, sha256, startServers } from './stores.js';

interface SourceCase {
  name: string;
  /** The manifest digest the source must answer (kept byte for byte), when it keeps the pushed one. */
  manifest?: string;
  /** Whether the top manifest is an index (a multi-platform image). */
  index?: boolean;
}

const asDescriptor = (d: { mediaType: string; digest: string; size: number }): Descriptor => ({ mediaType: d.mediaType, digest: parseDigest(d.digest), size: d.size });

/** The whole contract, on one source. */
async function validateSource(source: ImageSource, c: SourceCase): Promise<void> {
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
      expect(slice.equals(blob.subarray(7, 20))).toBe(true);
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

describe.skipIf(!haveServers)('the source contract', () => {
  const cases: SourceCase[] = [];

  beforeAll(async () => {
    const fx = fixtures();
    const { registry, s3 } = await startServers();
    const root = await tempDir('smart-contract-file-');
    const basic = `oci:${fx.paths.ociBasic}:latest`;
    const multi = `oci:${fx.paths.ociMulti}:latest`;
    const stores = [`file:${root}`, `s3://${s3.bucket}/contract`, `docker://${registry.host}`];
    for (const store of stores) {
      const at = (repo: string) => (store.startsWith('docker://') ? `${store}/${repo}` : `${store}#${repo}`);
      await libraryCopy(basic, at('contract/basic:1'));
      await libraryCopy(multi, at('contract/multi:1'), { allPlatforms: true });
      cases.push({ name: at('contract/basic:1'), manifest: fx.basic.manifest.digest }, { name: at('contract/multi:1'), manifest: fx.multi.manifest.digest, index: true });
    }
    cases.push(
      { name: basic, manifest: fx.basic.manifest.digest },
      { name: multi, manifest: fx.multi.manifest.digest, index: true },
      { name: `oci-archive:${fx.paths.ociArchiveBasic}:latest`, manifest: fx.basic.manifest.digest },
      { name: `docker-archive:${fx.paths.dockerArchiveBasic}` },
      { name: `docker-archive:${fx.paths.dockerArchiveBasicOci}` },
    );
  });

  it('holds for every random-access source: layouts, archives, file:, s3://, docker://', async () => {
    expect(cases.length).toBe(11);
    for (const c of cases) {
      const source = await openRandom(c.name);
      await validateSource(source, c).catch((e: unknown) => {
        throw new Error(`${c.name}: ${(e as Error).message}`, { cause: e });
      });
    }
  });

  it('holds for a stream (docker-archive:-): each layer read once as it arrives, hashing to the diff id the config lists at the end', async () => {
    const fx = fixtures();
    for (const file of [fx.paths.dockerArchiveBasic, fx.paths.dockerArchiveBasicOci]) {
      const source = await openSource(parseImageName('docker-archive:-'), ctx(fs.createReadStream(file)));
      expect(isStreamed(source)).toBe(true);
      if (!isStreamed(source)) return;
      let seen = 0;
      const image = await source.read(async (layer) => {
        seen++;
        expect(layer.compression).toBe('none');
        return sha256(await readAll(layer.stream));
      });
      expect(seen).toBe(image.layers.length);
      expect(image.layers).toEqual(image.config.rootfs.diff_ids);
      expect(image.layers).toEqual(fx.basic.diffIds);
      expect(image.repoTags).toEqual([fx.basic.dockerArchive.repoTag]);
    }
  });

  it('a blob that is not what its descriptor says is refused by every kind of store', async () => {
    const fx = fixtures();
    // The config asked for as if it were a layer of another size: every source refuses the bytes.
    const config = asDescriptor(fx.basic.config);
    for (const c of cases.filter((x) => !x.index && x.manifest)) {
      const source = await openRandom(c.name);
      try {
        expect((await rejection(source.getBlob({ ...config, size: config.size + 1 }).then(readAll))).code, c.name).toBe('SIZE_MISMATCH');
      } finally {
        await source.close();
      }
    }
  });
});
