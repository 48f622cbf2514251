/**
 * The metadata cache is a hint: it changes speed, never which image a name means. Against the stock
 * registry (behind the fault proxy, which counts requests), skopeo moving tags through the
 * registry's API, and a real redis-server: a tag that moved is followed at once, by every machine,
 * with the disk cache and with Redis (one HEAD, no manifest read); `--tag-cache-ttl` trades that
 * away only when asked. A digest the cache and the layer store know is pulled only from a
 * repository that holds it (the registry's HEAD, the store's link). Entries forged into the cache (a tag entry with a self-consistent manifest
 * and config, damaged entries under the real digests, diff id → blob entries naming another layer)
 * do not change what a `bundle:` pull runs, what a store-to-store push copies, or which layer a
 * push records.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DiskMetadataCache } from '../../src/cache/metadata-cache.js';
import { fixtures } from '../harness/fixtures.js';
import { layerTar, writeImage, writeLayout } from '../harness/images.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { startRedis, type RunningRedis } from '../harness/redis.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { runOk, smart } from '../harness/run.js';
import { haveTools } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';

const sha = (b: Buffer | string) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

describe.skipIf(!haveTools('docker-registry', 'skopeo', 'redis-server', 'redis-cli'))('the metadata cache decides no image', () => {
  let work: string;
  let store: string;
  let registry: RunningRegistry;
  let proxy: RunningProxy;
  let redis: RunningRedis;
  const images: Record<'a' | 'b', { dir: string; manifest: string }> = {} as never;

  async function pull(source: string, args: string[], cacheHome: string): Promise<string> {
    const r = await smart(['pull', source, `oci:${path.join(await tempDir(), 'out')}:x`, '--json', ...args], { cacheHome });
    expect(r.code, r.stderr).toBe(0);
    return (JSON.parse(r.stdout.toString()) as { manifestDigest: string }).manifestDigest;
  }

  /** Moves a registry tag through the registry's own API (as another tool or machine would). */
  async function skopeoPush(image: 'a' | 'b', ref: string): Promise<void> {
    await runOk('skopeo', ['--insecure-policy', 'copy', '--dest-tls-verify=false', `oci:${images[image].dir}:latest`, `docker://${registry.url.replace(/^https?:\/\//, '')}/${ref}`]);
  }

  beforeAll(async () => {
    work = await tempDir();
    store = path.join(work, 'store');
    for (const name of ['a', 'b'] as const) {
      const dir = path.join(work, 'images', name);
      const made = await writeImage(dir, { layers: [{ files: { 'etc/which': `${name}\n` }, createdBy: `COPY ${name} /etc/which` }] });
      images[name] = { dir, manifest: made.manifest };
    }
    const seed = await smart(['push', `oci:${fixtures().paths.ociBasic}:latest`, `file:${store}#team/app:v1`], { cacheHome: await tempDir() });
    expect(seed.code, seed.stderr).toBe(0);
    await fs.mkdir(path.join(work, 'reg'));
    registry = await startRegistry({ configDir: path.join(work, 'reg'), root: store });
    proxy = await startProxy({ target: registry.url });
    redis = await startRedis(await tempDir());
  });

  afterAll(async () => {
    await redis?.stop();
    await proxy?.stop();
    await registry?.stop();
  });

  it('a file: tag that moved is followed at once with the disk cache; --tag-cache-ttl keeps the old one as asked', async () => {
    const src = `file:${store}#team/moving:1`;
    const push = async (image: 'a' | 'b') => {
      const r = await smart(['push', `oci:${images[image].dir}:latest`, src], { cacheHome: await tempDir() }); // another machine
      expect(r.code, r.stderr).toBe(0);
    };
    const home = await tempDir();
    await push('a');
    expect(await pull(src, [], home)).toBe(images.a.manifest);
    await push('b');
    expect(await pull(src, [], home)).toBe(images.b.manifest);
    await push('a');
    expect(await pull(src, ['--tag-cache-ttl', '600'], home)).toBe(images.b.manifest); // the cache's word, as asked
    expect(await pull(src, [], home)).toBe(images.a.manifest);
  });

  it('a registry tag moved by skopeo is followed by every machine sharing Redis, at the cost of one HEAD', async () => {
    const src = `docker://${proxy.host}/team/moving:2`;
    const [m1, m2] = [await tempDir(), await tempDir()];
    const cache = ['--redis', redis.url];
    await skopeoPush('a', 'team/moving:2');
    expect(await pull(src, cache, m1)).toBe(images.a.manifest);
    expect(await pull(src, cache, m2)).toBe(images.a.manifest);
    await skopeoPush('b', 'team/moving:2');
    proxy.stats.clear();
    expect(await pull(src, cache, m2)).toBe(images.b.manifest);
    expect(await pull(src, cache, m1)).toBe(images.b.manifest);
    // The first machine after the move: HEAD, then the new manifest by digest; the second: HEAD only.
    expect(proxy.stats.requests.filter((q) => q.path.includes('/manifests/')).map((q) => `${q.method} ${q.path}`)).toEqual([
      'HEAD /v2/team/moving/manifests/2',
      `GET /v2/team/moving/manifests/${images.b.manifest}`,
      'HEAD /v2/team/moving/manifests/2',
    ]);
    // Asked to trust the cache for a while: no manifest request at all, and the image it knows.
    await skopeoPush('a', 'team/moving:2');
    proxy.stats.clear();
    expect(await pull(src, [...cache, '--tag-cache-ttl', '600'], m1)).toBe(images.b.manifest);
    expect(proxy.stats.requests.filter((q) => q.path.includes('/manifests/'))).toEqual([]);
    expect(await pull(src, cache, m1)).toBe(images.a.manifest);
  });

  it('a digest the cache and the layer store know is pulled only from a repository that holds it: one HEAD, or one link read', async () => {
    const home = await tempDir();
    await skopeoPush('a', 'team/holds:1');
    const bundle = async (source: string) => smart(['pull', source, `bundle:${path.join(await tempDir(), 'b')}`], { cacheHome: home });
    const digest = images.a.manifest;
    const first = await bundle(`docker://${proxy.host}/team/holds@${digest}`);
    expect(first.code, first.stderr).toBe(0);
    // Warm: the manifest and config from the cache, the layers from the layer store; the registry is asked only whether the repository holds it.
    proxy.stats.clear();
    const warm = await bundle(`docker://${proxy.host}/team/holds@${digest}`);
    expect(warm.code, warm.stderr).toBe(0);
    expect(proxy.stats.requests.map((q) => `${q.method} ${q.path}`).filter((q) => !q.endsWith('/v2/'))).toEqual([`HEAD /v2/team/holds/manifests/${digest}`]);
    // A repository that does not hold it, and one that is not there, say so as the registry does, warm as they are.
    for (const source of [`docker://${proxy.host}/team/app@${digest}`, `docker://${proxy.host}/team/nowhere@${digest}`, `file:${store}#team/app@${digest}`, `file:${store}#team/nowhere@${digest}`]) {
      const r = await bundle(source);
      expect(r.code, `${source}: ${r.stderr}`).toBe(1);
      expect(r.stderr.trim().split('\n').at(-1)).toMatch(/^smart: error \[NOT_FOUND\]: .*(MANIFEST_UNKNOWN|manifest sha256:[0-9a-f]{64} not found in file:)/);
    }
    const viaFile = await bundle(`file:${store}#team/holds@${digest}`);
    expect(viaFile.code, viaFile.stderr).toBe(0);
  });

  for (const backend of ['redis', 'disk'] as const) {
    it(`a forged tag entry with a self-consistent manifest and config (${backend}) changes neither a bundle: pull nor a store-to-store push`, async () => {
      const home = await tempDir();
      const cache = backend === 'redis' ? ['--redis', redis.url] : [];
      const docker = `docker://${proxy.host}/team/app:v1`;
      const file = `file:${store}#team/app:v1`;
      // A legitimate pull first: the cache holds the real tag, manifest and config, as in a fleet.
      const real = await pull(docker, cache, home);
      const realManifest = JSON.parse(await fs.readFile(blobPath(store, real), 'utf8')) as { mediaType: string; config: { digest: string; size: number } };
      const realConfig = JSON.parse(await fs.readFile(blobPath(store, realManifest.config.digest), 'utf8')) as { config: Record<string, unknown> };

      // The forgery: the real layers, a config that runs the forger's command, a manifest naming it.
      const forgedConfig = Buffer.from(JSON.stringify({ ...realConfig, config: { ...realConfig.config, Entrypoint: ['/bin/sh'], Cmd: ['-c', 'echo forged'] } }));
      const forgedManifest = Buffer.from(JSON.stringify({ ...realManifest, config: { ...realManifest.config, digest: sha(forgedConfig), size: forgedConfig.length } }));
      const manifestEntry = (bytes: Buffer) => JSON.stringify({ mediaType: realManifest.mediaType, bytes: bytes.toString('base64') });
      const tagEntry = JSON.stringify({ digest: sha(forgedManifest), at: Date.now() });
      const entries: [string, string][] = [
        [`manifest:v1:${sha(forgedManifest)}`, manifestEntry(forgedManifest)],
        [`config:v1:${sha(forgedConfig)}`, forgedConfig.toString('base64')],
        // Under the real digests too: bytes that do not hash to them.
        [`manifest:v1:${real}`, manifestEntry(forgedManifest)],
        [`config:v1:${realManifest.config.digest}`, forgedConfig.toString('base64')],
      ];
      for (const scope of [`docker://${proxy.host}`, `file:${store}`]) {
        entries.push([`tag:v2:${scope}:team/app:v1`, tagEntry], [`tag:v1:${scope}:team/app:v1`, sha(forgedManifest)]);
      }
      if (backend === 'redis') {
        for (const [k, v] of entries) await redis.cli('SET', `smartlayer:${k}`, v);
      } else {
        const disk = new DiskMetadataCache(path.join(home, 'smartlayer', 'metadata'));
        for (const [k, v] of entries) await disk.set(k, v);
      }

      const bundle = path.join(await tempDir(), 'bundle');
      const r = await smart(['pull', docker, `bundle:${bundle}`, ...cache], { cacheHome: home });
      expect(r.code, r.stderr).toBe(0);
      const spec = JSON.parse(await fs.readFile(path.join(bundle, 'config.json'), 'utf8')) as { process: { args: string[] } };
      expect(spec.process.args).toEqual(['/bin/hello', '--from-cmd']);

      for (const source of [docker, file]) {
        const copy = await smart(['push', source, `file:${path.join(await tempDir(), 'store')}#copy:v1`, '--json', ...cache], { cacheHome: home });
        expect(copy.code, copy.stderr).toBe(0);
        expect((JSON.parse(copy.stdout.toString()) as { manifestDigest: string }).manifestDigest, source).toBe(real);
      }
    });
  }

  it('a forged diff id → blob entry does not make a push record another layer; a true one still spares the compression', async () => {
    const fx = fixtures();
    const s2 = path.join(await tempDir(), 'store');
    const home = await tempDir();
    const cache = ['--redis', redis.url];
    const other = await smart(['push', `oci:${images.a.dir}:latest`, `file:${s2}#other:1`, ...cache], { cacheHome: home });
    expect(other.code, other.stderr).toBe(0);
    const otherManifest = JSON.parse(await fs.readFile(blobPath(s2, images.a.manifest), 'utf8')) as { layers: { digest: string; size: number }[] };
    const y = otherManifest.layers[0]!;
    // Every layer of the archive "was compressed to" the other image's layer: in the format of
    // before, and in today's two forms: with a proof naming a real image of the store (the first
    // layer), and as just stored, the blob itself the evidence (the others).
    const gzip = 'application/vnd.oci.image.layer.v1.tar+gzip';
    for (const [i, diffId] of fx.basic.diffIds.entries()) {
      await redis.cli('SET', `smartlayer:compressed:v1:file:${s2}:${diffId}`, JSON.stringify({ mediaType: gzip, digest: y.digest, size: y.size }));
      const claim = { digest: y.digest, size: y.size, mediaType: gzip, repository: 'other', ...(i === 0 ? { manifest: images.a.manifest } : {}) };
      await redis.cli('SET', `smartlayer:compressed:v2:file:${s2}:${diffId}`, JSON.stringify(claim));
    }
    const r = await smart(['push', `docker-archive:${fx.paths.dockerArchiveBasic}`, `file:${s2}#app:1`, '--json', ...cache], { cacheHome: home });
    expect(r.code, r.stderr).toBe(0);
    const pushed = JSON.parse(r.stdout.toString()) as { manifestDigest: string; layers: { pushed: number; skipped: number } };
    expect(pushed.layers).toMatchObject({ pushed: fx.basic.diffIds.length, skipped: 0 });
    const manifest = JSON.parse(await fs.readFile(blobPath(s2, pushed.manifestDigest), 'utf8')) as { layers: { digest: string }[] };
    expect(manifest.layers.map((l) => l.digest)).not.toContain(y.digest);
    // Unpacking checks every layer against its diff id: the image is whole.
    const rootfs = await smart(['pull', `file:${s2}#app:1`, `rootfs:${path.join(await tempDir(), 'rootfs')}`], { cacheHome: await tempDir() });
    expect(rootfs.code, rootfs.stderr).toBe(0);

    // The push recorded what it did, with app:1 as the proof: another repository reuses the blobs.
    const again = await smart(['push', `docker-archive:${fx.paths.dockerArchiveBasic}`, `file:${s2}#app2:1`, '--json', ...cache], { cacheHome: await tempDir() });
    expect(again.code, again.stderr).toBe(0);
    expect(JSON.parse(again.stdout.toString())).toMatchObject({ manifestDigest: pushed.manifestDigest, layers: { pushed: 0, skipped: fx.basic.diffIds.length } });
  });

  it('an image in another repository whose config lies about its layers, named in Redis as a proof, does not make a push record its layer', async () => {
    const fx = fixtures();
    const d0 = fx.basic.diffIds[0]!;
    // Pushed by whoever can push to some repository of the store: a layer of their making, its
    // config saying it is the first layer of the fixture's archive (the registry checks no diff id).
    const evilDir = path.join(await tempDir(), 'evil');
    const x = gzipSync(await layerTar({ EVIL: 'evil\n' }));
    const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: [d0] }, history: [{ created_by: 'crafted' }] }));
    const evilManifest = sha(await writeLayout(evilDir, [x], config));
    await runOk('skopeo', ['--insecure-policy', 'copy', '--dest-tls-verify=false', `oci:${evilDir}:latest`, `docker://${registry.url.replace(/^https?:\/\//, '')}/evil/x:1`]);
    const gzip = 'application/vnd.oci.image.layer.v1.tar+gzip';
    const claim = JSON.stringify({ digest: sha(x), size: x.length, mediaType: gzip, repository: 'evil/x', manifest: evilManifest });
    for (const [scope, dest] of [
      [`file:${store}`, `file:${store}#victim/one:1`],
      [`docker://${proxy.host}`, `docker://${proxy.host}/victim/two:1`],
    ] as const) {
      // A database of its own: what these pushes record is no other test's business.
      await redis.cli('-n', '3', 'SET', `smartlayer:compressed:v2:${scope}:${d0}`, claim);
      await redis.cli('-n', '3', 'SET', `smartlayer:location:v1:${scope}:${sha(x)}`, JSON.stringify(['evil/x']));
      const r = await smart(['push', `docker-archive:${fx.paths.dockerArchiveBasic}`, dest, '--json', '--redis', `${redis.url}/3`], { cacheHome: await tempDir() });
      expect(r.code, r.stderr).toBe(0);
      const pushed = JSON.parse(r.stdout.toString()) as { manifestDigest: string; layers: { pushed: number; skipped: number } };
      // The blob read back from evil/x did not decompress to the layer: compressed here instead.
      expect(pushed.layers, dest).toMatchObject({ pushed: fx.basic.diffIds.length, skipped: 0 });
      const manifest = JSON.parse(await fs.readFile(blobPath(store, pushed.manifestDigest), 'utf8')) as { layers: { digest: string }[] };
      expect(manifest.layers.map((l) => l.digest), dest).not.toContain(sha(x));
    }
  });

  it("a push again takes its proof image's manifest from this machine's disk, never from Redis", async () => {
    const fx = fixtures();
    const cache = ['--redis', redis.url];
    const home = await tempDir();
    const archive = `docker-archive:${fx.paths.dockerArchiveBasic}`;
    const push = async (repo: string, cacheHome: string) => {
      proxy.stats.clear();
      const r = await smart(['push', archive, `docker://${proxy.host}/proof/${repo}:1`, '--json', ...cache], { cacheHome });
      expect(r.code, r.stderr).toBe(0);
      const summary = JSON.parse(r.stdout.toString()) as { manifestDigest: string; layers: { pushed: number; skipped: number } };
      const manifestReads = proxy.stats.requests.filter((q) => q.method === 'GET' && /\/manifests\/sha256:/.test(q.path)).length;
      const blobReads = proxy.stats.requests.filter((q) => q.method === 'GET' && /\/blobs\/sha256:/.test(q.path)).length;
      return { summary, manifestReads, blobReads };
    };
    const first = await push('one', home);
    expect(first.summary.layers.pushed).toBe(fx.basic.diffIds.length);
    // Another repository from the same machine: the layers mounted on the proof of the first push,
    // its manifest read from the disk cache.
    const mounted = await push('two', home);
    expect(mounted.summary.layers).toMatchObject({ pushed: 0, skipped: fx.basic.diffIds.length });
    expect(mounted.manifestReads).toBe(0);
    expect(mounted.blobReads).toBe(0);
    // Another machine sharing Redis: the same entries, but neither the manifest planted in Redis
    // under the proof's digest (bytes that hash to it, as a writer of Redis could plant any
    // manifest of their own making) nor the proof image itself, in another repository (its config
    // is the word of whoever pushed there), is believed: each blob is read back and decompressed.
    const proof = (await fs.readFile(blobPath(store, first.summary.manifestDigest))).toString('base64');
    await redis.cli('SET', `smartlayer:manifest:v1:${first.summary.manifestDigest}`, JSON.stringify({ mediaType: 'application/vnd.oci.image.manifest.v1+json', bytes: proof }));
    const elsewhere = await push('three', await tempDir());
    expect(elsewhere.summary.layers).toMatchObject({ pushed: 0, skipped: fx.basic.diffIds.length });
    expect(elsewhere.blobReads).toBe(fx.basic.diffIds.length);
    expect(elsewhere.manifestReads).toBe(0);
    // Into the proof's own repository, another machine believes the proof: one read of its manifest.
    const same = await smart(['push', archive, `docker://${proxy.host}/proof/one:2`, '--json', ...cache], { cacheHome: await tempDir() });
    expect(same.code, same.stderr).toBe(0);
    expect(JSON.parse(same.stdout.toString())).toMatchObject({ layers: { pushed: 0, skipped: fx.basic.diffIds.length } });
  });
});

function blobPath(root: string, digest: string): string {
  const hex = digest.slice('sha256:'.length);
  return path.join(root, 'docker', 'registry', 'v2', 'blobs', 'sha256', hex.slice(0, 2), hex, 'data');
}
