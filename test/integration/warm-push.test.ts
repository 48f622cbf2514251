/**
 * A push of what the destination already holds writes nothing, and still notices what went
 * missing behind its back: a blob or a link deleted from the store, a blob deleted from a layout.
 * A `docker save` stream's layers the store holds are hashed, not compressed again.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { fixtures } from '../harness/fixtures.js';
import { startProxy } from '../harness/proxy.js';
import { startRegistry } from '../harness/registry.js';
import { repoRoot, runOk, smart } from '../harness/run.js';
import { tarOf, type TarEntry } from '../harness/tar-read.js';
import { tempDir } from '../harness/tmp.js';
import { extract } from 'tar-stream';
import { currentOwner, ownerTag } from '../../src/storage/leftovers.js';

interface Summary {
  manifestDigest: string;
  layers: { total: number; pushed: number; skipped: number; mounted: number; bytesPushed: number };
}

async function push(args: string[], cacheHome: string, input?: Buffer): Promise<Summary> {
  const r = await smart(['push', ...args, '--json'], { cacheHome, ...(input ? { input } : {}) });
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout.toString()) as Summary;
}

/** The members of a tar (files, directories, symlinks), in order. */
async function membersOf(bytes: Buffer): Promise<TarEntry[]> {
  const out: TarEntry[] = [];
  const x = extract();
  const done = (async () => {
    for await (const e of x) {
      const chunks: Buffer[] = [];
      for await (const c of e) chunks.push(c as Buffer);
      const h = e.header;
      out.push({ name: h.name, type: h.type as TarEntry['type'], body: Buffer.concat(chunks), ...(h.linkname ? { linkname: h.linkname } : {}) });
    }
  })();
  x.end(bytes);
  await done;
  return out;
}

const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');

/** Every file under `dir` with its content and modification time. */
async function snapshot(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const e of await fs.readdir(dir, { recursive: true, withFileTypes: true })) {
    if (!e.isFile()) continue;
    const p = path.join(e.parentPath, e.name);
    const st = await fs.stat(p);
    out.set(path.relative(dir, p), `${st.mtimeMs} ${(await fs.readFile(p)).toString('base64')}`);
  }
  return out;
}

/** A store and a cache home of their own, the basic `docker save` tar pushed once into `file:STORE#w/NAME:1`. */
async function pushedOnce(name: string) {
  const fx = fixtures();
  const work = await tempDir();
  const store = path.join(work, 'store');
  const cacheHome = path.join(work, 'cache');
  const args = [`docker-archive:${fx.paths.dockerArchiveBasic}`, `file:${store}#w/${name}:1`];
  const first = await push(args, cacheHome);
  return { fx, work, store, cacheHome, args, first };
}

describe('pushing again', () => {
  it('from a machine that never pushed it (a cold cache): the layers it compresses to bytes the store holds are told as already there, and not written', async () => {
    const { store, work, args, first } = await pushedOnce('cold');
    const before = await snapshot(path.join(store, 'docker/registry/v2/blobs'));
    const again = await push([args[0]!, args[1]!.replace(':1', ':2')], path.join(work, 'another-machine'));
    expect(again.manifestDigest).toBe(first.manifestDigest);
    expect(again.layers).toMatchObject({ total: 3, pushed: 0, skipped: 3, bytesPushed: 0 });
    expect(await snapshot(path.join(store, 'docker/registry/v2/blobs'))).toEqual(before);
  });

  it('changes nothing in the store or the metadata cache', async () => {
    const { store, cacheHome, args, first } = await pushedOnce('app');
    const before = { store: await snapshot(store), cache: await snapshot(path.join(cacheHome, 'smartlayer')) };
    const again = await push(args, cacheHome);
    expect(again.manifestDigest).toBe(first.manifestDigest);
    expect(again.layers).toMatchObject({ pushed: 0, skipped: first.layers.total });
    expect(await snapshot(store)).toEqual(before.store);
    // The cache knew every layer's blob, proven by the manifest the tag still names: nothing written.
    expect(await snapshot(path.join(cacheHome, 'smartlayer'))).toEqual(before.cache);
  });

  it('refuses a --compression-level the gzip engine cannot use also when no layer needs compressing, and writes nothing', async () => {
    const { fx, store, cacheHome, args: warm } = await pushedOnce('level');
    const before = await snapshot(store);
    // Every layer known (a warm push), and layers compressed already (an OCI layout): none compressed here.
    for (const args of [warm, [`oci:${fx.paths.ociBasic}:latest`, `file:${store}#w/level:2`]]) {
      const r = await smart(['push', ...args, '--compression-level', '15'], { cacheHome });
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr).toMatch(/^smart: error \[USAGE\]: gzip level 15 is out of range for \S+ \(\d+-(9|12)\)\n$/);
    }
    expect(await snapshot(store)).toEqual(before);
  });

  it('loads the command as a few CommonJS chunks, not module by module, and no ES module (scripts/bundle-cli.mjs)', async () => {
    const { work, cacheHome, args } = await pushedOnce('app');
    // What Node loads, written down from inside the command: CommonJS modules from require's cache
    // as it exits, ES modules by a loader hook registered before the command starts.
    const cjsLoaded = path.join(work, 'cjs.txt');
    const esmLoaded = path.join(work, 'esm.txt');
    const preload = path.join(work, 'preload.cjs');
    const hooks = path.join(work, 'hooks.mjs');
    const register = path.join(work, 'register.mjs');
    await fs.writeFile(preload, `process.on('exit', () => require('node:fs').writeFileSync(${JSON.stringify(cjsLoaded)}, Object.keys(require.cache).join('\\n')));\n`);
    await fs.writeFile(
      hooks,
      `import fs from 'node:fs';\nexport async function load(url, context, next) {\n  const r = await next(url, context);\n  fs.appendFileSync(${JSON.stringify(esmLoaded)}, url + ' ' + r.format + '\\n');\n  return r;\n}\n`,
    );
    await fs.writeFile(register, `import { register } from 'node:module';\nregister(${JSON.stringify(pathToFileURL(hooks).href)});\n`);
    const r = await smart(['push', ...args, '--json'], {
      cacheHome,
      env: { NODE_OPTIONS: `--require=${preload} --import=${pathToFileURL(register).href}` },
    });
    expect(r.code, r.stderr).toBe(0);
    expect((JSON.parse(r.stdout.toString()) as Summary).layers).toMatchObject({ pushed: 0 });
    const ours = (await fs.readFile(cjsLoaded, 'utf8')).split('\n').filter((f) => f.startsWith(`${repoRoot}/`));
    // bin/smart.js, the entry, the boot chunk (the compile cache), the cli chunk, the runtime, the
    // core chunk; was 49 modules, each resolved, read and compiled on its own.
    expect(ours.length, ours.join('\n')).toBeLessThanOrEqual(6);
    expect(ours.filter((f) => f.includes('/node_modules/'))).toEqual([]);
    // Starting Node's ES module loader costs every command ~8 ms: none of ours is an ES module. (With
    // --import, Node 20 hands the entry to that loader, which sees it is CommonJS.)
    const esm = (await fs.readFile(esmLoaded, 'utf8').catch(() => '')).split('\n').filter((l) => l.startsWith(`${pathToFileURL(repoRoot).href}/`));
    expect(esm.filter((l) => !l.endsWith(' commonjs'))).toEqual([]);
  });

  it("hashes a docker save stream's layers the store holds, as their names tell (Docker 25+, skopeo's, the older names once read), and stores none again", async () => {
    const fx = fixtures();
    // skopeo's docker-archive names each layer `<diff id hex>.tar`.
    const skopeoArchive = path.join(await tempDir(), 'skopeo.tar');
    await runOk('skopeo', ['--insecure-policy', 'copy', '-q', `oci:${fx.paths.ociBasic}:latest`, `docker-archive:${skopeoArchive}:w/app:1`]);
    for (const archive of [fx.paths.dockerArchiveBasicOci, skopeoArchive, fx.paths.dockerArchiveBasic]) {
      const work = await tempDir();
      const store = path.join(work, 'store');
      const cacheHome = path.join(work, 'cache');
      const bytes = await fs.readFile(archive);
      const first = await push(['docker-archive:-', `file:${store}#w/app:1`], cacheHome, bytes);
      expect(first.layers).toMatchObject({ pushed: 3, skipped: 0 });
      const blobs = await snapshot(path.join(store, 'docker/registry/v2/blobs'));
      const again = await push(['docker-archive:-', `file:${store}#w/app:2`], cacheHome, bytes);
      expect(again.manifestDigest).toBe(first.manifestDigest);
      expect(again.layers, archive).toMatchObject({ pushed: 0, skipped: 3, bytesPushed: 0 });
      expect(await snapshot(path.join(store, 'docker/registry/v2/blobs'))).toEqual(blobs);
    }

    // Through the registry API alike: the blob is confirmed there (the image that showed it), not
    // sent. And a docker save of a containerd image store, which holds the layers compressed as
    // pulled: found under their own digests, not sent again.
    const work = await tempDir();
    const registry = await startRegistry({ configDir: work });
    try {
      const cacheHome = path.join(work, 'cache');
      const bytes = await fs.readFile(fx.paths.dockerArchiveBasicOci);
      expect((await push(['docker-archive:-', `docker://${registry.host}/w/app:1`], cacheHome, bytes)).layers).toMatchObject({ pushed: 3 });
      expect((await push(['docker-archive:-', `docker://${registry.host}/w/app:2`], cacheHome, bytes)).layers).toMatchObject({ pushed: 0, skipped: 3, bytesPushed: 0 });
      const blob = (d: string) => `blobs/sha256/${d.slice(7)}`;
      const layout = await membersOf(await fs.readFile(fx.paths.ociArchiveBasic));
      const manifestJson = JSON.stringify([{ Config: blob(fx.basic.config.digest), RepoTags: ['w/app:1'], Layers: fx.basic.layers.map((l) => blob(l.digest)) }]);
      const containerd = await tarOf([...layout, { name: 'manifest.json', body: manifestJson }]);
      // (Not the blobs w/app got: those were compressed here, these by the fixture's gzip.)
      const once = await push(['docker-archive:-', `docker://${registry.host}/w/gz:1`], cacheHome, containerd);
      expect(once.layers).toMatchObject({ pushed: 3 });
      const again = await push(['docker-archive:-', `docker://${registry.host}/w/gz:2`], cacheHome, containerd);
      expect(again.layers).toMatchObject({ pushed: 0, skipped: 3, bytesPushed: 0 });
      expect(again.manifestDigest).toBe(once.manifestDigest);
    } finally {
      await registry.stop();
    }
  });

  it("from a new runner (nothing cached) to a registry tag: the layers of the tag's image are neither compressed nor sent, its manifest not put again; a changed image sends only its new layer", async () => {
    const fx = fixtures();
    const work = await tempDir();
    const registry = await startRegistry({ configDir: work });
    const proxy = await startProxy({ target: registry.url });
    try {
      const fresh = () => tempDir(); // each push a runner of its own
      const dest = `docker://${proxy.host}/runner/app:main`;
      const first = await push([`docker-archive:${fx.paths.dockerArchiveBasic}`, dest], await fresh());
      expect(first.layers).toMatchObject({ pushed: 3 });
      const uploads = () => proxy.stats.requests.filter((q) => q.method === 'POST' || q.method === 'PUT' || q.method === 'PATCH').map((q) => `${q.method} ${q.path}`);
      // From the file and from a Docker 25+ stream: the same image, nothing written.
      for (const [source, input] of [
        [`docker-archive:${fx.paths.dockerArchiveBasic}`, undefined],
        ['docker-archive:-', await fs.readFile(fx.paths.dockerArchiveBasicOci)],
      ] as const) {
        proxy.stats.clear();
        const again = await push([source, dest], await fresh(), input);
        expect(again.manifestDigest).toBe(first.manifestDigest);
        expect(again.layers, source).toMatchObject({ pushed: 0, skipped: 3, bytesPushed: 0 });
        expect(uploads(), source).toEqual([]);
      }
      // The next commit's image: one layer changed, the others the tag's.
      const layout = path.join(work, 'next');
      await runOk('skopeo', ['--insecure-policy', 'copy', '-q', `docker-archive:${fx.paths.dockerArchiveBasic}`, `oci:${layout}:x`]);
      const ociLayout = JSON.parse(await fs.readFile(path.join(layout, 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
      const blobOf = (d: string) => path.join(layout, 'blobs/sha256', d.slice(7));
      const m = JSON.parse(await fs.readFile(blobOf(ociLayout.manifests[0]!.digest), 'utf8')) as { config: { digest: string }; layers: { digest: string; size: number; mediaType: string }[] };
      const config = JSON.parse(await fs.readFile(blobOf(m.config.digest), 'utf8')) as { rootfs: { diff_ids: string[] } };
      const changed = await tarOf([{ name: 'etc/next', body: 'next commit\n' }]);
      await fs.writeFile(blobOf(`sha256:${sha256(changed)}`), changed);
      m.layers[2] = { mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: `sha256:${sha256(changed)}`, size: changed.length };
      config.rootfs.diff_ids[2] = `sha256:${sha256(changed)}`;
      const configBytes = Buffer.from(JSON.stringify(config));
      await fs.writeFile(blobOf(`sha256:${sha256(configBytes)}`), configBytes);
      const manifestBytes = Buffer.from(JSON.stringify({ ...m, config: { ...m.config, digest: `sha256:${sha256(configBytes)}`, size: configBytes.length } }));
      await fs.writeFile(blobOf(`sha256:${sha256(manifestBytes)}`), manifestBytes);
      await fs.writeFile(path.join(layout, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: `sha256:${sha256(manifestBytes)}`, size: manifestBytes.length, annotations: { 'org.opencontainers.image.ref.name': 'x' } }] }));
      const next = path.join(work, 'next.tar');
      await runOk('skopeo', ['--insecure-policy', 'copy', '-q', `oci:${layout}:x`, `docker-archive:${next}:runner/app:main`]);
      const pushedNext = await push([`docker-archive:${next}`, dest], await fresh());
      expect(pushedNext.layers).toMatchObject({ pushed: 1, skipped: 2 });
      // The stock registry serves it whole: skopeo checks every digest on the way.
      await runOk('skopeo', ['--insecure-policy', 'copy', '-q', '--src-tls-verify=false', `docker://${registry.host}/runner/app:main`, `oci:${path.join(work, 'check')}:x`]);
    } finally {
      await proxy.stop();
      await registry.stop();
    }
  });

  it('compresses again for a push that asks another format than the last, and never hands one format for the other', async () => {
    // A layer pushed as zstd once, then pushed with gzip (the default), must come out gzip in a
    // Docker v2 manifest, not mounted or linked as the zstd blob (an OCI image older Docker and
    // containerd cannot pull); and each format's blob stays reusable after the other's push.
    const fx = fixtures();
    const work = await tempDir();
    const store = path.join(work, 'store');
    const registry = await startRegistry({ configDir: work });
    try {
      const layerTypes = async (ref: string) => {
        const raw = await runOk('skopeo', ['inspect', '--raw', '--tls-verify=false', ref]);
        const m = JSON.parse(raw.stdout.toString()) as { mediaType: string; layers: { mediaType: string }[] };
        return [m.mediaType, ...new Set(m.layers.map((l) => l.mediaType))];
      };
      const gzip = ['application/vnd.docker.distribution.manifest.v2+json', 'application/vnd.docker.image.rootfs.diff.tar.gzip'];
      const zstd = ['application/vnd.oci.image.manifest.v1+json', 'application/vnd.oci.image.layer.v1.tar+zstd'];
      const bytes = await fs.readFile(fx.paths.dockerArchiveBasic);
      for (const [n, [source, input]] of (
        [
          [`docker-archive:${fx.paths.dockerArchiveBasic}`, undefined],
          ['docker-archive:-', bytes],
        ] as const
      ).entries()) {
        // A cache of its own: what the first source's pushes recorded is not this one's to find.
        const cacheHome = path.join(work, `cache${n}`);
        const to = (tag: string) => [`docker://${registry.host}/f${n}/${tag}:1`, `file:${store}${n}#f${n}/${tag}:1`];
        for (const dest of to('z')) expect((await push([source, dest, '--compression', 'zstd'], cacheHome, input)).layers).toMatchObject({ pushed: 3 });
        for (const dest of to('g')) expect((await push([source, dest], cacheHome, input)).layers, dest).toMatchObject({ pushed: 3, mounted: 0 });
        for (const dest of to('g2')) expect((await push([source, dest, '--compression', 'gzip'], cacheHome, input)).layers, dest).toMatchObject({ pushed: 0, skipped: 3 });
        for (const dest of to('z2')) expect((await push([source, dest, '--compression', 'zstd'], cacheHome, input)).layers, dest).toMatchObject({ pushed: 0, skipped: 3 });
        expect(await layerTypes(`docker://${registry.host}/f${n}/z:1`)).toEqual(zstd);
        expect(await layerTypes(`docker://${registry.host}/f${n}/z2:1`)).toEqual(zstd);
        expect(await layerTypes(`docker://${registry.host}/f${n}/g:1`)).toEqual(gzip);
        expect(await layerTypes(`docker://${registry.host}/f${n}/g2:1`)).toEqual(gzip);
      }
      // What the file: store holds, the registry serves (same repositories' formats).
      const served = await startRegistry(`${store}1`, work);
      try {
        expect(await layerTypes(`docker://${served.host}/f1/g:1`)).toEqual(gzip);
        expect(await layerTypes(`docker://${served.host}/f1/g2:1`)).toEqual(gzip);
        expect(await layerTypes(`docker://${served.host}/f1/z2:1`)).toEqual(zstd);
      } finally {
        await served.stop();
      }
    } finally {
      await registry.stop();
    }
  });

  it('refuses a streamed layer whose bytes are not what its name says, and tags nothing', async () => {
    const fx = fixtures();
    const work = await tempDir();
    const store = path.join(work, 'store');
    const cacheHome = path.join(work, 'cache');
    const tagLink = (tag: string) => path.join(store, 'docker/registry/v2/repositories/w/app/_manifests/tags', tag);
    // Docker 25+: a blob named by the digest of other bytes, the config saying those bytes (so
    // only the name lies). A store without the layer stores what the config says; one with it must
    // not take the name's word.
    const oci = await membersOf(await fs.readFile(fx.paths.dockerArchiveBasicOci));
    const [l1, l2] = [fx.basic.layers[0]!.diffId.slice(7), fx.basic.layers[1]!.diffId.slice(7)];
    const body = (name: string) => oci.find((e) => e.name === name)!.body as Buffer;
    const lying = oci.map((e) => (e.name === `blobs/sha256/${l2}` ? { ...e, body: body(`blobs/sha256/${l1}`) } : e));
    const configName = (JSON.parse(body('manifest.json').toString()) as { Config: string }[])[0]!.Config;
    const config = JSON.parse(body(configName).toString()) as { rootfs: { diff_ids: string[] } };
    config.rootfs.diff_ids[1] = `sha256:${l1}`;
    const configBytes = Buffer.from(JSON.stringify(config));
    const newConfig = `blobs/sha256/${sha256(configBytes)}`;
    const manifest = body('manifest.json').toString().replaceAll(configName, newConfig);
    const archive = await tarOf(
      lying.flatMap((e) => (e.name === configName ? [{ ...e, name: newConfig, body: configBytes }] : e.name === 'manifest.json' ? [{ ...e, body: manifest }] : e.name === 'index.json' ? [] : [e])),
    );
    await push([`docker-archive:${fx.paths.dockerArchiveBasicOci}`, `file:${store}#w/app:1`], cacheHome);
    const r = await smart(['push', '-q', 'docker-archive:-', `file:${store}#w/app:2`], { cacheHome, input: archive });
    expect(r.code).not.toBe(0);
    expect(r.stderr.trim().split('\n'), r.stderr).toHaveLength(1);
    expect(r.stderr).toMatch(new RegExp(`CORRUPT_ARCHIVE.*blobs/sha256/${l2}.*hash to sha256:${l1}, not the sha256:${l2} its name says`));
    await expect(fs.stat(tagLink('2'))).rejects.toThrow();

    // The same with the layers compressed (a containerd image store's save): the name is the blob's
    // digest. Another gzip header time makes other bytes of the same size and the same tar.
    const blob = (d: string) => `blobs/sha256/${d.slice(7)}`;
    const gz = await membersOf(await fs.readFile(fx.paths.ociArchiveBasic));
    const g2 = blob(fx.basic.layers[1]!.digest);
    const gzArchive = (members: TarEntry[]) =>
      tarOf([...members, { name: 'manifest.json', body: JSON.stringify([{ Config: blob(fx.basic.config.digest), Layers: fx.basic.layers.map((l) => blob(l.digest)) }]) }]);
    await push(['docker-archive:-', `file:${store}#w/gz:1`], cacheHome, await gzArchive(gz));
    const retimed = Buffer.from(gz.find((e) => e.name === g2)!.body as Buffer);
    retimed[4]! ^= 1;
    const gzRefused = await smart(['push', '-q', 'docker-archive:-', `file:${store}#w/gz:2`], { cacheHome, input: await gzArchive(gz.map((e) => (e.name === g2 ? { ...e, body: retimed } : e))) });
    expect(gzRefused.code).not.toBe(0);
    expect(gzRefused.stderr).toMatch(new RegExp(`CORRUPT_ARCHIVE.*${g2}.*hash to sha256:${sha256(retimed)}, not the sha256:${g2.slice(13)} its name says`));
    await expect(fs.stat(path.join(store, 'docker/registry/v2/repositories/w/gz/_manifests/tags/2'))).rejects.toThrow();

    // Docker's older names: what `<v1 id>/layer.tar` held when last read is recorded; an archive
    // whose member of that name holds other bytes fails once, and the record is dropped.
    const legacy = await membersOf(await fs.readFile(fx.paths.dockerArchiveBasic));
    await push(['docker-archive:-', `file:${store}#w/legacy:1`], cacheHome, await tarOf(legacy));
    const ids = (JSON.parse((legacy.find((e) => e.name === 'manifest.json')!.body as Buffer).toString()) as { Config: string; Layers: string[] }[])[0]!;
    const other = await tarOf([{ name: 'other.txt', body: 'not the layer the name was read as\n' }]);
    const oldConfig = JSON.parse((legacy.find((e) => e.name === ids.Config)!.body as Buffer).toString()) as { rootfs: { diff_ids: string[] } };
    oldConfig.rootfs.diff_ids[2] = `sha256:${sha256(other)}`;
    const changed = Buffer.from(JSON.stringify(oldConfig));
    const changedName = `${sha256(changed)}.json`;
    const swapped = await tarOf(
      legacy.map((e) =>
        e.name === ids.Layers[2] ? { ...e, body: other } : e.name === ids.Config ? { ...e, name: changedName, body: changed } : e.name === 'manifest.json' ? { ...e, body: (e.body as Buffer).toString().replaceAll(ids.Config, changedName) } : e,
      ),
    );
    const refused = await smart(['push', 'docker-archive:-', `file:${store}#w/legacy:2`], { cacheHome, input: swapped });
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/DIGEST_MISMATCH.*not the sha256:[0-9a-f]{64} a push read under that name before \(that record is dropped: push again\)/);
    await expect(fs.stat(path.join(store, 'docker/registry/v2/repositories/w/legacy/_manifests/tags/2'))).rejects.toThrow();
    expect((await push(['docker-archive:-', `file:${store}#w/legacy:2`], cacheHome, swapped)).layers).toMatchObject({ pushed: 1, skipped: 2 });
  });

  it('puts back a blob or a link deleted from the store since, from a layout and from a docker save tar', async () => {
    const fx = fixtures();
    for (const source of [`oci:${fx.paths.ociBasic}:latest`, `docker-archive:${fx.paths.dockerArchiveBasic}`]) {
      const work = await tempDir();
      const store = path.join(work, 'store');
      const cacheHome = path.join(work, 'cache');
      const args = [source, `file:${store}#w/app:1`];
      const first = await push(args, cacheHome);
      const manifest = JSON.parse(await fs.readFile(path.join(store, 'docker/registry/v2/blobs/sha256', first.manifestDigest.slice(7, 9), first.manifestDigest.slice(7), 'data'), 'utf8')) as { layers: { digest: string }[] };
      const layer = manifest.layers[0]!.digest.slice(7);
      await fs.rm(path.join(store, 'docker/registry/v2/blobs/sha256', layer.slice(0, 2), layer), { recursive: true });
      expect((await push(args, cacheHome)).layers, source).toMatchObject({ pushed: 1 });
      await fs.stat(path.join(store, 'docker/registry/v2/blobs/sha256', layer.slice(0, 2), layer, 'data'));
      await fs.rm(path.join(store, 'docker/registry/v2/repositories/w/app/_layers/sha256', layer), { recursive: true });
      expect((await push(args, cacheHome)).layers, source).toMatchObject({ pushed: 0, mounted: 1 });
      expect((await push(args, cacheHome)).layers, source).toMatchObject({ pushed: 0, mounted: 0 });
    }
  });

  it("removes the temporary file of a link a killed push never renamed, when it writes that link (the registry ignores it; nothing else would)", async () => {
    const fx = fixtures();
    const work = await tempDir();
    const store = path.join(work, 'store');
    const cacheHome = path.join(work, 'cache');
    const first = await push([`oci:${fx.paths.ociBasic}:latest`, `file:${store}#w/app:1`], cacheHome);
    const repo = path.join(store, 'docker/registry/v2/repositories/w/app');
    // Killed just before its renames: a layer's link and a new tag's current link are temporary files only.
    const dead = ownerTag({ ...currentOwner(), start: currentOwner().start + 1 });
    const layerDir = path.join(repo, '_layers/sha256', fx.basic.layers[0]!.digest.slice(7));
    await fs.rm(path.join(layerDir, 'link'));
    const tagDir = path.join(repo, '_manifests/tags/2/current');
    await fs.mkdir(tagDir, { recursive: true });
    for (const dir of [layerDir, tagDir]) await fs.writeFile(path.join(dir, `link.tmp-${dead}-0a1b2c3d`), first.manifestDigest);
    // A live writer's temporary file is left alone.
    await fs.writeFile(path.join(tagDir, `link.tmp-${ownerTag()}-0a1b2c3e`), '');
    const again = await push([`oci:${fx.paths.ociBasic}:latest`, `file:${store}#w/app:2`], cacheHome);
    expect(again.manifestDigest).toBe(first.manifestDigest);
    expect(await fs.readdir(layerDir)).toEqual(['link']);
    expect((await fs.readdir(tagDir)).sort()).toEqual(['link', `link.tmp-${ownerTag()}-0a1b2c3e`]);
  });

  it('writes again a tag link left empty (a push killed while an S3 server wrote it in place)', async () => {
    const fx = fixtures();
    const work = await tempDir();
    const store = path.join(work, 'store');
    const cacheHome = path.join(work, 'cache');
    const args = [`oci:${fx.paths.ociBasic}:latest`, `file:${store}#w/app:1`];
    const first = await push(args, cacheHome);
    const current = path.join(store, 'docker/registry/v2/repositories/w/app/_manifests/tags/1/current/link');
    await fs.writeFile(current, '');
    expect((await push(args, cacheHome)).manifestDigest).toBe(first.manifestDigest);
    expect(await fs.readFile(current, 'utf8')).toBe(first.manifestDigest);
  });

  it('puts back a blob deleted from an OCI layout since', async () => {
    const fx = fixtures();
    const work = await tempDir();
    const layout = path.join(work, 'layout');
    const cacheHome = path.join(work, 'cache');
    const args = [`oci:${fx.paths.ociBasic}:latest`, `oci:${layout}:v1`];
    await push(args, cacheHome);
    const layer = fx.basic.layers[1]!.digest.slice(7);
    await fs.rm(path.join(layout, 'blobs/sha256', layer));
    expect((await push(args, cacheHome)).layers).toMatchObject({ pushed: 1 });
    await fs.stat(path.join(layout, 'blobs/sha256', layer));
  });
});
