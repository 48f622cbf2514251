/**
 * `oci-archive:-`: an OCI archive read once from a pipe, whatever order its writer put the members
 * in (skopeo and this project: blobs first; the fixtures' writer: index.json first; `tar -C
 * layout -cf - .`: as the directory lists them, `./` names), into a store and through the stock
 * registry, as skopeo then reads it; written to stdout and read back; and what a stream cannot do,
 * said in one line.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { fixtures } from '../harness/fixtures.js';
import { runOk, smart } from '../harness/run.js';
import { startRegistry } from '../harness/registry.js';
import { tempDir } from '../harness/tmp.js';
import { haveTools } from '../harness/tools.js';

interface Summary {
  manifestDigest: string;
  manifestMediaType: string;
  converted: boolean;
  layers: { total: number; pushed: number; skipped: number; bytesPushed: number };
}

async function pushStream(file: string, dest: string, extra: string[] = [], cacheHome?: string, source = 'oci-archive:-'): Promise<Summary> {
  const r = await smart(['push', source, dest, '--json', ...extra], { input: createReadStream(file), ...(cacheHome ? { cacheHome } : {}) });
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout.toString()) as Summary;
}

/**
 * The error line of a failed run: its only error, and its last line (progress of layers done before
 * it may come first). `asFile`: stdin is the file itself (`< FILE`), read faster than a pipe gives it.
 */
async function failure(file: string, args: string[], asFile = false): Promise<{ code: number; line: string }> {
  const r = await smart(args, { input: asFile ? { file } : createReadStream(file) });
  const lines = r.stderr.trim().split('\n');
  expect(lines.filter((l) => l.startsWith('smart: error')), r.stderr).toHaveLength(1);
  expect(r.stderr).not.toMatch(/\n\s+at /);
  return { code: r.code, line: lines.at(-1)! };
}

const INDEX = 'application/vnd.oci.image.index.v1+json';

/** Writes `bytes` into the layout as a blob; the descriptor naming it. */
async function putBlob(layout: string, bytes: Buffer, mediaType: string): Promise<{ mediaType: string; digest: string; size: number }> {
  const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
  await fs.writeFile(path.join(layout, 'blobs/sha256', digest.slice(7)), bytes);
  return { mediaType, digest, size: bytes.length };
}

/** The layout with index.json naming `top` alone, as a tar at `file` (its members as `tar -C layout .` lists them). */
async function archiveOf(layout: string, top: { mediaType: string; digest: string; size: number }, file: string): Promise<string> {
  await fs.writeFile(path.join(layout, 'index.json'), JSON.stringify({ schemaVersion: 2, mediaType: INDEX, manifests: [top] }));
  await runOk('tar', ['-C', layout, '-cf', file, '.']);
  return file;
}

const tagLink = (store: string, repo: string, tag: string) => path.join(store, 'docker/registry/v2/repositories', repo, '_manifests/tags', tag, 'current/link');

describe('oci-archive:- (a stream)', () => {
  it.skipIf(!haveTools('skopeo', 'docker-registry'))(
    'takes an archive in any member order, keeps the manifest byte for byte, and the registry serves it to skopeo',
    async () => {
      const fx = fixtures();
      const work = await tempDir();
      // skopeo writes blobs first, index.json last; tar of the layout names members ./…; the fixture has index.json first.
      const skopeoArchive = path.join(work, 'skopeo.tar');
      await runOk('skopeo', ['--insecure-policy', 'copy', `oci:${fx.paths.ociBasic}:latest`, `oci-archive:${skopeoArchive}:latest`]);
      const tarred = path.join(work, 'tarred.tar');
      await runOk('tar', ['-C', fx.paths.ociBasic, '-cf', tarred, '.']);
      const gzipped = path.join(work, 'ours.tar.gz');
      await fs.writeFile(gzipped, gzipSync(await fs.readFile(fx.paths.ociArchiveBasic)));
      const store = path.join(work, 'store');
      for (const [i, file] of [fx.paths.ociArchiveBasic, skopeoArchive, tarred].entries()) {
        const own = path.join(work, `store-${i}`);
        const r = await pushStream(file, `file:${own}#app:1`);
        expect(r.manifestDigest, file).toBe(fx.basic.manifest.digest);
        expect(r).toMatchObject({ converted: false, layers: { pushed: 3, skipped: 0 } });
        expect(await fs.readFile(tagLink(own, 'app', '1'), 'utf8')).toBe(fx.basic.manifest.digest);
      }
      // A compressed archive named by its path is read as a stream, decompressed as it passes.
      const r = await smart(['push', `oci-archive:${gzipped}`, `file:${store}#app:1`, '--json']);
      expect(r.code, r.stderr).toBe(0);
      expect((JSON.parse(r.stdout.toString()) as Summary).manifestDigest).toBe(fx.basic.manifest.digest);
      const registry = await startRegistry({ configDir: work });
      try {
        const viaApi = await pushStream(skopeoArchive, `docker://${registry.host}/s/app:1`);
        expect(viaApi.manifestDigest).toBe(fx.basic.manifest.digest);
        const digest = (await runOk('skopeo', ['inspect', '--tls-verify=false', '--format', '{{.Digest}}', `docker://${registry.host}/s/app:1`])).stdout.toString().trim();
        expect(digest).toBe(fx.basic.manifest.digest);
        await runOk('skopeo', ['--insecure-policy', 'copy', '--src-tls-verify=false', `docker://${registry.host}/s/app:1`, `oci:${path.join(work, 'back')}:x`]);
      } finally {
        await registry.stop();
      }
    },
  );

  it.skipIf(!haveTools('skopeo', 'docker-registry', 'umoci'))('goes out on stdout too: from the stock registry, one image or a whole index, into a pipe and back, digests kept', async () => {
    const fx = fixtures();
    const work = await tempDir();
    const registry = await startRegistry({ configDir: work });
    try {
      await runOk('skopeo', ['--insecure-policy', 'copy', '--all', '--dest-tls-verify=false', `oci:${fx.paths.ociMulti}`, `docker://${registry.host}/m/app:1`]);
      await runOk('skopeo', ['--insecure-policy', 'copy', '--dest-tls-verify=false', `oci:${fx.paths.ociBasic}:latest`, `docker://${registry.host}/b/app:1`]);
      for (const [from, extra, digest] of [
        [`docker://${registry.host}/b/app:1`, [], fx.basic.manifest.digest],
        [`docker://${registry.host}/m/app:1`, ['--all-platforms'], fx.multi.manifest.digest],
      ] as const) {
        const pulled = await smart(['pull', '-q', from, 'oci-archive:-:v1', ...extra]);
        expect(pulled.code, pulled.stderr).toBe(0);
        // oci-layout first, index.json last: a reader of the stream learns the image at its end.
        const file = path.join(work, `${digest.slice(7, 19)}.tar`);
        await fs.writeFile(file, pulled.stdout);
        const names = (await runOk('tar', ['-tf', file])).stdout.toString().trim().split('\n');
        expect([names[0], names.at(-1)]).toEqual(['oci-layout', 'index.json']);
        expect((await runOk('skopeo', ['inspect', '--raw', `oci-archive:${file}:v1`])).stdout.toString()).toBe((await runOk('skopeo', ['inspect', '--raw', '--tls-verify=false', from])).stdout.toString());
        const pushed = await pushStream(file, `file:${path.join(work, 'store')}#back/app:${digest.slice(7, 19)}`);
        expect(pushed.manifestDigest).toBe(digest);
      }
      // umoci reads the layout the archive holds: the image unpacked is the fixture's.
      const layout = path.join(work, 'layout');
      await fs.mkdir(layout);
      await runOk('tar', ['-C', layout, '-xf', path.join(work, `${fx.basic.manifest.digest.slice(7, 19)}.tar`)]);
      await runOk('umoci', ['unpack', '--rootless', '--image', `${layout}:v1`, path.join(work, 'bundle')]);
      expect(await fs.readFile(path.join(work, 'bundle/rootfs/etc/app.conf'), 'utf8')).toBe('greeting=hi\n');
    } finally {
      await registry.stop();
    }
  });

  it('pushes again by hashing only: every layer the store holds is skipped by the name it carries', async () => {
    const fx = fixtures();
    const store = path.join(await tempDir(), 'store');
    await pushStream(fx.paths.ociArchiveBasic, `file:${store}#app:1`);
    const again = await pushStream(fx.paths.ociArchiveBasic, `file:${store}#app:2`);
    expect(again.layers).toMatchObject({ total: 3, pushed: 0, skipped: 3, bytesPushed: 0 });
    expect(again.manifestDigest).toBe(fx.basic.manifest.digest);
  });

  it.skipIf(!haveTools('skopeo', 'docker-registry'))(
    'copies a multi-platform index whole into a store, as from the file; --platform picks one; --all-platforms takes it whole into a layout',
    async () => {
      const fx = fixtures();
      const work = await tempDir();
      const archive = path.join(work, 'multi.tar');
      await runOk('skopeo', ['--insecure-policy', 'copy', '--all', `oci:${fx.paths.ociMulti}`, `oci-archive:${archive}`]);
      const registry = await startRegistry({ configDir: work });
      try {
        const whole = await pushStream(archive, `docker://${registry.host}/m/app:1`);
        expect(whole.manifestDigest).toBe(fx.multi.manifest.digest);
        const raw = JSON.parse((await runOk('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${registry.host}/m/app:1`])).stdout.toString()) as { manifests: { digest: string }[] };
        expect(raw.manifests.map((m) => m.digest).sort()).toEqual(Object.values(fx.multi.platforms).map((p) => p.manifest.digest).sort());
        // Each platform's manifest is served by its digest, as a client that picks one asks for it.
        for (const p of Object.values(fx.multi.platforms)) {
          const digest = (await runOk('skopeo', ['inspect', '--tls-verify=false', '--format', '{{.Digest}}', `docker://${registry.host}/m/app@${p.manifest.digest}`])).stdout.toString().trim();
          expect(digest).toBe(p.manifest.digest);
        }
        const one = await pushStream(archive, `docker://${registry.host}/m/app:arm`, ['--platform', 'linux/arm64']);
        expect(one.manifestDigest).toBe(fx.multi.platforms['linux/arm64/v8']!.manifest.digest);
      } finally {
        await registry.stop();
      }
      // --all-platforms: into a layout too, which a pull otherwise gives this machine's platform alone.
      const all = await smart(['pull', 'oci-archive:-', `oci:${path.join(work, 'layout')}:x`, '--all-platforms', '--json'], { input: createReadStream(archive) });
      expect(all.code, all.stderr).toBe(0);
      expect((JSON.parse(all.stdout.toString()) as Summary).manifestDigest).toBe(fx.multi.manifest.digest);
    },
  );

  it('copies whole an index that names no image of this machine (built for arm64 only), as from the file', async () => {
    const fx = fixtures();
    const work = await tempDir();
    const layout = path.join(work, 'layout');
    await fs.cp(fx.paths.ociMulti, layout, { recursive: true });
    // The fixture's index, its amd64 entry left out.
    const whole = JSON.parse(await fs.readFile(path.join(layout, 'blobs/sha256', fx.multi.manifest.digest.slice(7)), 'utf8')) as { manifests: { platform?: { architecture: string } }[] };
    const armOnly = await putBlob(layout, Buffer.from(JSON.stringify({ ...whole, manifests: whole.manifests.filter((m) => m.platform?.architecture !== 'amd64') })), INDEX);
    const digest = armOnly.digest;
    const archive = await archiveOf(layout, armOnly, path.join(work, 'arm.tar'));
    const streamed = await pushStream(archive, `file:${path.join(work, 'store')}#arm/app:1`, ['--platform-mismatch', 'error']);
    expect(streamed.manifestDigest).toBe(digest);
    const fromFile = await smart(['push', `oci-archive:${archive}`, `file:${path.join(work, 'store')}#arm/app:2`, '--json']);
    expect(fromFile.code, fromFile.stderr).toBe(0);
    expect((JSON.parse(fromFile.stdout.toString()) as Summary).manifestDigest).toBe(digest);
    // One platform asked for that it has not: refused in one line, as from the file.
    const refused = await failure(archive, ['push', 'oci-archive:-', `file:${path.join(work, 'store')}#arm/app:3`, '--platform', 'linux/amd64']);
    expect(refused.line).toMatch(/^smart: error \[PLATFORM_NOT_FOUND\]: /);
  });

  it('compresses uncompressed layers for a store (a new manifest for them) and checks each against the config', async () => {
    const fx = fixtures();
    // Docker 25+'s `docker save` is an OCI layout too, its layers uncompressed.
    const store = path.join(await tempDir(), 'store');
    const r = await pushStream(fx.paths.dockerArchiveBasicOci, `file:${store}#app:1`);
    expect(r).toMatchObject({ converted: true, layers: { pushed: 3 } });
    const pulled = await smart(['pull', `file:${store}#app:1`, `oci:${path.join(path.dirname(store), 'back')}:x`, '--json']);
    expect(pulled.code, pulled.stderr).toBe(0);
    const manifest = JSON.parse(await fs.readFile(path.join(store, 'docker/registry/v2/blobs/sha256', r.manifestDigest.slice(7, 9), r.manifestDigest.slice(7), 'data'), 'utf8')) as {
      layers: { mediaType: string }[];
    };
    expect(manifest.layers.map((l) => l.mediaType)).toEqual(fx.basic.layers.map(() => 'application/vnd.oci.image.layer.v1.tar+gzip'));
  });

  it('copies one platform, and says why, where an index names a layer it had to compress on the way; a layout takes the manifest as it is', async () => {
    const fx = fixtures();
    const work = await tempDir();
    // Docker 25+'s save (uncompressed layers) with its manifest put in an index, as a multi-platform build's would be.
    const layout = path.join(work, 'layout');
    await fs.mkdir(layout);
    await runOk('tar', ['-C', layout, '-xf', fx.paths.dockerArchiveBasicOci]);
    const top = JSON.parse(await fs.readFile(path.join(layout, 'index.json'), 'utf8')) as { manifests: { digest: string; mediaType: string; size: number }[] };
    const only = top.manifests[0]!;
    const index = await putBlob(
      layout,
      Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: INDEX, manifests: [{ mediaType: only.mediaType, digest: only.digest, size: only.size, platform: { architecture: 'amd64', os: 'linux' } }] })),
      INDEX,
    );
    const archive = await archiveOf(layout, index, path.join(work, 'index.tar'));
    const store = path.join(work, 'store');
    const r = await smart(['push', 'oci-archive:-', `file:${store}#app:1`, '--json'], { input: createReadStream(archive) });
    expect(r.code, r.stderr).toBe(0);
    const warnings = r.stderr.split('\n').filter((l) => l.startsWith('warning: '));
    expect(warnings).toEqual([
      'warning: oci-archive:-: copying linux/amd64 only, not its whole index: 3 blobs were compressed here as the stream passed, and an index is copied byte for byte',
    ]);
    const pushed = JSON.parse(r.stdout.toString()) as Summary;
    expect(pushed).toMatchObject({ converted: true, manifestMediaType: 'application/vnd.oci.image.manifest.v1+json' });
    // --all-platforms cannot have it whole there: said in one line, nothing tagged.
    const refused = await failure(archive, ['push', 'oci-archive:-', `file:${path.join(work, 'store-all')}#app:1`, '--all-platforms']);
    expect(refused.code).toBe(1);
    expect(refused.line).toMatch(/^smart: error \[UNSUPPORTED\]: oci-archive:-: cannot copy the whole index into file:.*: 3 blobs were compressed here as the stream passed, and an index is copied byte for byte \(save the archive to a file first/);
    await expect(fs.stat(tagLink(path.join(work, 'store-all'), 'app', '1'))).rejects.toThrow();
    // A layout keeps layers as they are: a pull into one takes this machine's platform, its manifest byte for byte.
    const toLayout = await smart(['pull', 'oci-archive:-', `oci:${path.join(work, 'copy')}:x`, '--json', '--platform', 'linux/amd64'], { input: createReadStream(archive) });
    expect(toLayout.code, toLayout.stderr).toBe(0);
    expect(toLayout.stderr).not.toMatch(/warning/);
    expect((JSON.parse(toLayout.stdout.toString()) as Summary).manifestDigest).toBe(only.digest);
  });

  it('copies an index whole with its attestation: a JSON blob too large to hold and a blob that is not JSON go as they are', async () => {
    const fx = fixtures();
    const work = await tempDir();
    const layout = path.join(work, 'layout');
    await fs.cp(fx.paths.ociBasic, layout, { recursive: true });
    const put = (bytes: Buffer, mediaType: string) => putBlob(layout, bytes, mediaType);
    // An SBOM larger than the JSON a stream keeps in memory (8 MiB), and a signature that is no JSON.
    const sbom = await put(Buffer.from(JSON.stringify({ spdxVersion: 'SPDX-2.3', packages: 'p'.repeat(9 * 1024 * 1024) })), 'application/vnd.in-toto+json');
    const signature = await put(Buffer.from('signed by nobody\n'), 'text/plain');
    const empty = await put(Buffer.from('{}'), 'application/vnd.oci.empty.v1+json');
    const attestation = await put(
      Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          config: empty,
          layers: [sbom, signature],
          annotations: { 'vnd.docker.reference.type': 'attestation-manifest', 'vnd.docker.reference.digest': fx.basic.manifest.digest },
        }),
      ),
      'application/vnd.oci.image.manifest.v1+json',
    );
    const index = await put(
      Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: INDEX,
          manifests: [
            { ...fx.basic.manifest, platform: { architecture: 'amd64', os: 'linux' } },
            { ...attestation, platform: { architecture: 'unknown', os: 'unknown' } },
          ],
        }),
      ),
      INDEX,
    );
    const archive = await archiveOf(layout, index, path.join(work, 'attested.tar'));
    const store = path.join(work, 'store');
    const whole = await pushStream(archive, `file:${store}#app:1`);
    expect(whole.manifestDigest).toBe(index.digest);
    for (const blob of [sbom, signature, empty, attestation]) {
      const stat = await fs.stat(path.join(store, 'docker/registry/v2/blobs/sha256', blob.digest.slice(7, 9), blob.digest.slice(7), 'data'));
      expect(stat.size, blob.mediaType).toBe(blob.size);
    }
    // As the same archive as a file gives it.
    const fromFile = await smart(['push', `oci-archive:${archive}`, `file:${path.join(work, 'store-file')}#app:1`, '--json']);
    expect(fromFile.code, fromFile.stderr).toBe(0);
    expect((JSON.parse(fromFile.stdout.toString()) as Summary).manifestDigest).toBe(index.digest);
  });

  it('refuses an image its index.json does not name before storing a blob, when index.json comes first', async () => {
    const fx = fixtures();
    const work = await tempDir();
    const layout = path.join(work, 'layout');
    await fs.cp(fx.paths.ociBasic, layout, { recursive: true });
    const index = JSON.parse(await fs.readFile(path.join(layout, 'index.json'), 'utf8')) as { manifests: { annotations?: Record<string, string> }[] };
    index.manifests.push({ ...index.manifests[0]!, annotations: { 'org.opencontainers.image.ref.name': 'other' } });
    await fs.writeFile(path.join(layout, 'index.json'), JSON.stringify(index));
    const archive = path.join(work, 'index-first.tar');
    await runOk('tar', ['-C', layout, '-cf', archive, 'index.json', 'oci-layout', 'blobs']);
    const store = path.join(work, 'store');
    const two = await failure(archive, ['push', 'oci-archive:-', `file:${store}#app:1`]);
    expect([two.code, two.line]).toEqual([2, 'smart: error [USAGE]: oci-archive:-: the layout holds 2 images; name one as oci-archive:-:TAG (tags there: latest, other)']);
    const none = await failure(archive, ['push', 'oci-archive:-:nope', `file:${store}#app:1`]);
    expect([none.code, none.line]).toEqual([1, 'smart: error [NOT_FOUND]: oci-archive:-:nope: no image tagged "nope" (tags there: latest, other)']);
    // Nothing stored: no blob, no repository the registry would list, not even the store's root it made.
    await expect(fs.stat(store)).rejects.toThrow();
    expect((await pushStream(archive, `file:${store}#app:1`, [], undefined, 'oci-archive:-:other')).manifestDigest).toBe(fx.basic.manifest.digest);
  });

  it('takes the last index.json of an archive that holds two (tar -r appended an updated one), as from the file; one naming no image says so', async () => {
    const fx = fixtures();
    const work = await tempDir();
    const empty = path.join(work, 'empty');
    await fs.mkdir(empty);
    await fs.writeFile(path.join(empty, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [] }));
    // Blobs, an index.json naming nothing, then the layout's own appended: `tar x` keeps the last.
    const appended = path.join(work, 'appended.tar');
    await runOk('tar', ['-C', fx.paths.ociBasic, '-cf', appended, 'oci-layout', 'blobs']);
    await runOk('tar', ['-C', empty, '-rf', appended, 'index.json']);
    await runOk('tar', ['-C', fx.paths.ociBasic, '-rf', appended, 'index.json']);
    // The empty one first, ahead of the blobs (a placeholder written before the images): not refused early either.
    const placeholder = path.join(work, 'placeholder.tar');
    await runOk('tar', ['-C', empty, '-cf', placeholder, 'index.json']);
    await runOk('tar', ['-C', fx.paths.ociBasic, '-rf', placeholder, 'oci-layout', 'blobs', 'index.json']);
    for (const archive of [appended, placeholder]) {
      const fromFile = await smart(['push', `oci-archive:${archive}`, `file:${path.join(work, 'store-file')}#app:1`, '--json']);
      expect(fromFile.code, fromFile.stderr).toBe(0);
      expect((JSON.parse(fromFile.stdout.toString()) as Summary).manifestDigest).toBe(fx.basic.manifest.digest);
      expect((await pushStream(archive, `file:${path.join(work, 'store')}#app:1`)).manifestDigest).toBe(fx.basic.manifest.digest);
    }
    // Only the empty one: nothing to name, said so, with no advice to name a tag.
    const nothing = path.join(work, 'nothing.tar');
    await runOk('tar', ['-C', fx.paths.ociBasic, '-cf', nothing, 'oci-layout', 'blobs']);
    await runOk('tar', ['-C', empty, '-rf', nothing, 'index.json']);
    const none = await failure(nothing, ['push', 'oci-archive:-', `file:${path.join(work, 'store-none')}#app:1`]);
    expect([none.code, none.line]).toEqual([1, 'smart: error [NOT_AN_IMAGE]: oci-archive:-: index.json names no image']);
    const noneFromFile = await smart(['push', `oci-archive:${nothing}`, `file:${path.join(work, 'store-none')}#app:1`]);
    expect(noneFromFile.stderr.toString().trim()).toBe(`smart: error [NOT_AN_IMAGE]: oci-archive:${nothing}: index.json names no image`);
  });

  it('follows a blob stored as a hard link to an earlier member, as from the file, and says which it cannot read back (docker-archive:- alike)', async () => {
    const fx = fixtures();
    const work = await tempDir();
    const layout = path.join(work, 'layout');
    await fs.cp(fx.paths.ociBasic, layout, { recursive: true });
    // A second name of a layer's file: GNU tar stores the blob, which comes after it, as a hard link to it.
    await fs.link(path.join(layout, 'blobs/sha256', fx.basic.layers[0]!.digest.slice(7)), path.join(layout, 'zz'));
    const linked = path.join(work, 'linked.tar');
    await runOk('tar', ['-C', layout, '-cf', linked, 'oci-layout', 'zz', 'blobs', 'index.json']);
    expect((await runOk('tar', ['-tvf', linked])).stdout.toString()).toMatch(/^h.* link to zz$/m);
    const fromFile = await smart(['push', `oci-archive:${linked}`, `file:${path.join(work, 'store-file')}#app:1`, '--json']);
    expect(fromFile.code, fromFile.stderr).toBe(0);
    expect((JSON.parse(fromFile.stdout.toString()) as Summary).manifestDigest).toBe(fx.basic.manifest.digest);
    const streamed = await pushStream(linked, `file:${path.join(work, 'store')}#app:1`);
    expect(streamed).toMatchObject({ manifestDigest: fx.basic.manifest.digest, converted: false });

    // A blob that is no layer (a signature in an index copied whole), linked from a name that is no
    // blob's: the stream passed its bytes by, unkept.
    await fs.rm(path.join(layout, 'zz'));
    const signature = Buffer.from('signed by nobody\n');
    await fs.writeFile(path.join(layout, 'zz'), signature);
    const sig = await putBlob(layout, signature, 'text/plain');
    await fs.rm(path.join(layout, 'blobs/sha256', sig.digest.slice(7)));
    await fs.link(path.join(layout, 'zz'), path.join(layout, 'blobs/sha256', sig.digest.slice(7)));
    const empty = await putBlob(layout, Buffer.from('{}'), 'application/vnd.oci.empty.v1+json');
    const artifact = await putBlob(layout, Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: empty, layers: [sig] })), 'application/vnd.oci.image.manifest.v1+json');
    const index = await putBlob(
      layout,
      Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: INDEX, manifests: [{ ...fx.basic.manifest, platform: { architecture: 'amd64', os: 'linux' } }, { ...artifact, platform: { architecture: 'unknown', os: 'unknown' } }] })),
      INDEX,
    );
    await fs.writeFile(path.join(layout, 'index.json'), JSON.stringify({ schemaVersion: 2, mediaType: INDEX, manifests: [index] }));
    const unkept = path.join(work, 'unkept.tar');
    await runOk('tar', ['-C', layout, '-cf', unkept, 'oci-layout', 'zz', 'blobs', 'index.json']);
    const wholeFromFile = await smart(['push', `oci-archive:${unkept}`, `file:${path.join(work, 'store-file')}#app:2`, '--json']);
    expect(wholeFromFile.code, wholeFromFile.stderr).toBe(0);
    expect((JSON.parse(wholeFromFile.stdout.toString()) as Summary).manifestDigest).toBe(index.digest);
    const refused = await failure(unkept, ['push', 'oci-archive:-', `file:${path.join(work, 'store')}#app:2`]);
    expect(refused.line).toBe(`smart: error [UNSUPPORTED]: oci-archive:-: blobs/sha256/${sig.digest.slice(7)} is stored as a hard link to "zz", which a stream cannot read back (pass the archive as a file)`);
    await expect(fs.stat(tagLink(path.join(work, 'store'), 'app', '2'))).rejects.toThrow();

    // A docker save whose layer is a hard link to a file the stream passed by as no layer.
    const saved = path.join(work, 'saved');
    await fs.mkdir(saved);
    await runOk('tar', ['-C', saved, '-xf', fx.paths.dockerArchiveBasic]);
    const layerTar = (JSON.parse(await fs.readFile(path.join(saved, 'manifest.json'), 'utf8')) as { Layers: string[] }[])[0]!.Layers[0]!;
    await fs.writeFile(path.join(saved, 'zz'), 'not a tar\n');
    await fs.rm(path.join(saved, layerTar));
    await fs.link(path.join(saved, 'zz'), path.join(saved, layerTar));
    const dockerSave = path.join(work, 'docker-save.tar');
    await runOk('tar', ['-C', saved, '-cf', dockerSave, 'zz', ...(await fs.readdir(saved)).filter((n) => n !== 'zz')]);
    const docker = await failure(dockerSave, ['push', 'docker-archive:-', `file:${path.join(work, 'store')}#docker:1`]);
    expect(docker.line).toBe(`smart: error [UNSUPPORTED]: docker-archive:-: layer "${layerTar}" is stored as a hard link to "zz", which a stream cannot read back (pass the archive as a file)`);
  });

  it('names a damaged copy of a blob member that comes twice, whichever comes last (the file reads the last)', async () => {
    const fx = fixtures();
    const work = await tempDir();
    const layer = `blobs/sha256/${fx.basic.layers[0]!.digest.slice(7)}`;
    const damaged = path.join(work, 'damaged');
    await fs.mkdir(path.join(damaged, 'blobs/sha256'), { recursive: true });
    await fs.writeFile(path.join(damaged, layer), Buffer.alloc(fx.basic.layers[0]!.size, 'x'));
    // The layout, then a damaged copy of a layer appended (tar -r): the last is what tar x leaves.
    const appended = path.join(work, 'appended.tar');
    await runOk('tar', ['-C', fx.paths.ociBasic, '-cf', appended, 'oci-layout', 'blobs']);
    await runOk('tar', ['-C', damaged, '-rf', appended, layer]);
    await runOk('tar', ['-C', fx.paths.ociBasic, '-rf', appended, 'index.json']);
    const fromFile = await smart(['push', `oci-archive:${appended}`, `file:${path.join(work, 'store-file')}#app:1`]);
    expect(fromFile.stderr.toString()).toMatch(/^smart: error \[DIGEST_MISMATCH\]: blob sha256:[0-9a-f]{12} of oci-archive:.*: content hashes to sha256:[0-9a-f]{64}, not /m);
    const said = `^smart: error \\[CORRUPT_ARCHIVE\\]: blob ${layer} of oci-archive:-: its bytes hash to sha256:[0-9a-f]{64}, not the ${fx.basic.layers[0]!.digest} its name says$`;
    // Whatever the pace: read from a pipe, or from the file as stdin (`< FILE`), where the archive
    // ended before the damaged copy's check did and the end said the layer was no tar.
    for (const asFile of [false, true]) {
      expect((await failure(appended, ['push', 'oci-archive:-', `file:${path.join(work, 'store')}#app:1`], asFile)).line).toMatch(new RegExp(said));
    }
    // The damaged copy first and the good one last: the good one is the layer; the damaged one, which
    // a stream cannot take back once it passed, is named so.
    const first = path.join(work, 'first.tar');
    await runOk('tar', ['-C', damaged, '-cf', first, layer]);
    await runOk('tar', ['-C', fx.paths.ociBasic, '-rf', first, 'oci-layout', 'blobs', 'index.json']);
    const firstFromFile = await smart(['push', `oci-archive:${first}`, `file:${path.join(work, 'store-file')}#app:2`]);
    expect(firstFromFile.code, firstFromFile.stderr.toString()).toBe(0);
    for (const asFile of [false, true]) {
      expect((await failure(first, ['push', 'oci-archive:-', `file:${path.join(work, 'store')}#app:2`], asFile)).line).toMatch(new RegExp(said));
    }
    await expect(fs.stat(tagLink(path.join(work, 'store'), 'app', '1'))).rejects.toThrow();
    await expect(fs.stat(tagLink(path.join(work, 'store'), 'app', '2'))).rejects.toThrow();
  });

  it('refuses, in one line and with no tag written, a blob that is not what its name says, a docker save, and a tree as the destination', async () => {
    const fx = fixtures();
    const work = await tempDir();
    // A layer's gzip header time changed: the same tar (its diff id still matches), another blob than its name.
    const layout = path.join(work, 'layout');
    await fs.cp(fx.paths.ociBasic, layout, { recursive: true });
    const blob = path.join(layout, 'blobs/sha256', fx.basic.layers[0]!.digest.slice(7));
    const bytes = await fs.readFile(blob);
    bytes[4] = (bytes[4]! + 1) & 0xff;
    await fs.writeFile(blob, bytes);
    const lying = path.join(work, 'lying.tar');
    await runOk('tar', ['-C', layout, '-cf', lying, '.']);
    const store = path.join(work, 'store');
    const said = new RegExp(`^smart: error \\[CORRUPT_ARCHIVE\\]: layer blobs/sha256/${fx.basic.layers[0]!.digest.slice(7)} of oci-archive:-: its bytes hash to sha256:[0-9a-f]{64}, not the ${fx.basic.layers[0]!.digest} its name says$`);
    const bad = await failure(lying, ['push', 'oci-archive:-', `file:${store}#app:1`]);
    expect(bad.code).toBe(1);
    expect(bad.line).toMatch(said);
    // The same from a layout, which checks the bytes as it stores them: said alike, no layout left.
    const intoLayout = await failure(lying, ['pull', 'oci-archive:-', `oci:${path.join(work, 'never-layout')}:x`]);
    expect(intoLayout.line).toMatch(said);
    await expect(fs.stat(path.join(work, 'never-layout'))).rejects.toThrow();
    await expect(fs.stat(tagLink(store, 'app', '1'))).rejects.toThrow();

    const dockerSave = await failure(fx.paths.dockerArchiveBasic, ['push', 'oci-archive:-', `file:${store}#app:1`]);
    expect(dockerSave.line).toMatch(/^smart: error \[NOT_AN_IMAGE\]: oci-archive:-: not an OCI image layout \(no oci-layout or index\.json\) \(this holds the manifest\.json of a docker save: docker-archive:/);
    const tree = await failure(fx.paths.ociArchiveBasic, ['pull', 'oci-archive:-', `rootfs:${path.join(work, 'tree')}`]);
    expect(tree.line).toMatch(/^smart: error \[USAGE\]: oci-archive:- \(a stream\) can only be copied into a store/);
    await expect(fs.stat(path.join(work, 'tree'))).rejects.toThrow();
  });
});
