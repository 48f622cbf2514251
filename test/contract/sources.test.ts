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
import { isStreamed } from '../../src/oci/image.js';
import { openSource, parseImageName } from '../../src/transports/all.js';
import { fixtures } from '../harness/fixtures.js';
import { tempDir } from '../harness/tmp.js';
import { asDescriptor, ctx, haveServers, libraryCopy, openRandom, readAll, rejection, sha256, startServers, validateSource, type SourceCase } from './stores.js';

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
      if ('unpicked' in image) throw image.unpicked;
      expect(seen).toBe(image.layers.length);
      expect(image.layers).toEqual(image.config.rootfs.diff_ids);
      expect(image.layers).toEqual(fx.basic.diffIds);
      expect(image.repoTags).toEqual([fx.basic.dockerArchive.repoTag]);
    }
  });

  it('holds for a stream of an OCI archive (oci-archive:-): its layer blobs read once, the manifest as the archive holds it', async () => {
    const fx = fixtures();
    const source = await openSource(parseImageName('oci-archive:-:latest'), ctx(fs.createReadStream(fx.paths.ociArchiveBasic)));
    expect(isStreamed(source)).toBe(true);
    if (!isStreamed(source)) return;
    const image = await source.read(async (layer) => {
      expect(layer.compression).toBe('gzip');
      expect(layer.namedDigest).toBe(sha256(await readAll(layer.stream)));
      return layer.namedDigest;
    });
    if ('unpicked' in image) throw image.unpicked;
    expect(image.layers).toEqual(fx.basic.layers.map((l) => l.digest));
    expect(image.manifest?.digest).toBe(fx.basic.manifest.digest);
    expect(image.config.rootfs.diff_ids).toEqual(fx.basic.diffIds);
    expect(image.index).toBeUndefined();
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
