/**
 * Multi-platform images against the stock registry, with skopeo as the oracle: a push copies a
 * multi-platform index whole (every platform, the index bytes and digest kept), `--platform`
 * copies one; a copy whose image is not of the platform asked for fails, or with
 * `--platform-mismatch=warn` says so and goes on.
 */
import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixtures } from '../harness/fixtures.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { runOk, smart, type RunResult } from '../harness/run.js';
import { haveTools } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';

/** What the registry serves for a tag, as skopeo reads it: the raw bytes, their digest and the parsed document. */
async function inspectRaw(name: string): Promise<{ digest: string; doc: { mediaType?: string; manifests?: { digest: string; platform?: { architecture: string } }[] } }> {
  const r = await runOk('skopeo', ['--insecure-policy', 'inspect', '--raw', '--tls-verify=false', name]);
  return { digest: `sha256:${crypto.createHash('sha256').update(r.stdout).digest('hex')}`, doc: JSON.parse(r.stdout.toString()) };
}

/** The one error line of a failed run, its code named. */
function errorLine(r: RunResult): string {
  const lines = r.stderr.split('\n').filter((l) => l.startsWith('smart: error'));
  expect(lines, r.stderr).toHaveLength(1);
  expect(r.stderr).not.toMatch(/^\s+at /m);
  return lines[0]!;
}

describe.skipIf(!haveTools('docker-registry', 'skopeo'))('platforms', () => {
  let work: string;
  let store: string;
  let registry: RunningRegistry;

  beforeAll(async () => {
    work = await tempDir();
    store = path.join(work, 'store');
    await fs.mkdir(store);
    registry = await startRegistry(store, work);
  });

  afterAll(async () => {
    await registry?.stop();
  });

  it('a push copies a multi-platform index whole, as crane copy does: every platform, the index digest kept', async () => {
    const fx = fixtures();
    const r = await smart(['push', `oci:${fx.paths.ociMulti}:latest`, `docker://${registry.host}/multi/app:1`]);
    expect(r.code, r.stderr).toBe(0);
    // The pushed reference pins the index, as `crane push` prints it.
    expect(r.stdout.toString()).toBe(`${registry.host}/multi/app@${fx.multi.manifest.digest}\n`);
    const served = await inspectRaw(`docker://${registry.host}/multi/app:1`);
    expect(served.digest).toBe(fx.multi.manifest.digest);
    expect(served.doc.mediaType).toBe('application/vnd.oci.image.index.v1+json');
    expect(served.doc.manifests!.map((m) => m.digest).sort()).toEqual(Object.values(fx.multi.platforms).map((p) => p.manifest.digest).sort());
    // Each platform is whole in the registry: skopeo reads it by platform.
    for (const [platform, image] of Object.entries(fx.multi.platforms)) {
      const [os, arch, variant] = platform.split('/');
      const out = path.join(work, `skopeo-${arch}`);
      await runOk('skopeo', [
        '--insecure-policy', '--override-os', os!, '--override-arch', arch!, ...(variant ? ['--override-variant', variant] : []),
        'copy', '--src-tls-verify=false', `docker://${registry.host}/multi/app:1`, `oci:${out}:x`,
      ]);
      const index = JSON.parse(await fs.readFile(path.join(out, 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
      expect(index.manifests[0]!.digest).toBe(image.manifest.digest);
    }
  });

  it('a push into a registry store (file:) keeps the index too, and a pull --platform takes the platform asked for', async () => {
    const fx = fixtures();
    const pushed = await smart(['push', `oci:${fx.paths.ociMulti}:latest`, `file:${store}#multi/store:1`, '--json']);
    expect(pushed.code, pushed.stderr).toBe(0);
    const summary = JSON.parse(pushed.stdout.toString()) as { schemaVersion: number; reference: string; manifestDigest: string; details: { platforms: string[] } };
    expect(summary).toMatchObject({ schemaVersion: 1, manifestDigest: fx.multi.manifest.digest, reference: `file:${store}#multi/store@${fx.multi.manifest.digest}` });
    expect(summary.details.platforms).toEqual(['linux/amd64', 'linux/arm64']);
    expect((await inspectRaw(`docker://${registry.host}/multi/store:1`)).digest).toBe(fx.multi.manifest.digest);

    const arm = await smart(['pull', `docker://${registry.host}/multi/store:1`, `oci:${path.join(work, 'arm')}:x`, '--platform', 'linux/arm64', '--json']);
    expect(arm.code, arm.stderr).toBe(0);
    expect((JSON.parse(arm.stdout.toString()) as { manifestDigest: string }).manifestDigest).toBe(fx.multi.platforms['linux/arm64/v8']!.manifest.digest);
  });

  it('push --platform copies that platform alone', async () => {
    const fx = fixtures();
    const r = await smart(['push', `oci:${fx.paths.ociMulti}:latest`, `docker://${registry.host}/multi/arm:1`, '--platform', 'linux/arm64']);
    expect(r.code, r.stderr).toBe(0);
    const arm64 = fx.multi.platforms['linux/arm64/v8']!.manifest.digest;
    expect(r.stdout.toString()).toBe(`${registry.host}/multi/arm@${arm64}\n`);
    expect((await inspectRaw(`docker://${registry.host}/multi/arm:1`)).digest).toBe(arm64);
  });

  it('a platform the index does not hold fails with the platforms it does', async () => {
    const r = await smart(['pull', `docker://${registry.host}/multi/app:1`, `rootfs:${path.join(work, 's390x')}`, '--platform', 'linux/s390x']);
    expect(r.code).toBe(1);
    expect(errorLine(r)).toMatch(/^smart: error \[PLATFORM_NOT_FOUND\]: no manifest for platform linux\/s390x in docker:\/\/.*; available: linux\/amd64, linux\/arm64 /);
    await expect(fs.stat(path.join(work, 's390x'))).rejects.toThrow();
  });

  it('an index of indexes (as containerd reads it) is picked from through its nested indexes, in a layout and from the registry', async () => {
    // The fixture's index wrapped in another whose one entry names it without a platform.
    const fx = fixtures();
    const layout = path.join(work, 'nested');
    await fs.cp(fx.paths.ociMulti, layout, { recursive: true });
    const inner = (JSON.parse(await fs.readFile(path.join(layout, 'index.json'), 'utf8')) as { manifests: { mediaType: string; digest: string; size: number }[] }).manifests[0]!;
    const outer = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: [{ mediaType: inner.mediaType, digest: inner.digest, size: inner.size }] }));
    const outerDigest = `sha256:${crypto.createHash('sha256').update(outer).digest('hex')}`;
    await fs.writeFile(path.join(layout, 'blobs/sha256', outerDigest.slice(7)), outer);
    await fs.writeFile(path.join(layout, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: inner.mediaType, digest: outerDigest, size: outer.length, annotations: { 'org.opencontainers.image.ref.name': 'latest' } }] }));
    const arm64 = fx.multi.platforms['linux/arm64/v8']!.manifest.digest;
    const pushed = await smart(['push', `oci:${layout}:latest`, `docker://${registry.host}/nested/app:1`]);
    expect(pushed.code, pushed.stderr).toBe(0);
    expect((await inspectRaw(`docker://${registry.host}/nested/app:1`)).digest).toBe(outerDigest);
    for (const from of [`oci:${layout}:latest`, `docker://${registry.host}/nested/app:1`]) {
      const r = await smart(['pull', from, `oci:${path.join(work, 'nested-arm')}:x`, '--platform', 'linux/arm64', '--json']);
      expect(r.code, r.stderr).toBe(0);
      expect((JSON.parse(r.stdout.toString()) as { manifestDigest: string }).manifestDigest, from).toBe(arm64);
      // Not there: the platforms of the nested index are the ones named.
      const none = await smart(['pull', from, `rootfs:${path.join(work, 'nested-s390x')}`, '--platform', 'linux/s390x']);
      expect(errorLine(none)).toMatch(/; available: linux\/amd64, linux\/arm64 /);
    }
  });

  it('a single-platform image of another platform than --platform is refused, or with --platform-mismatch=warn copied with a warning', async () => {
    const fx = fixtures();
    const seeded = await smart(['push', `oci:${fx.paths.ociBasic}:latest`, `docker://${registry.host}/single/amd64:1`]);
    expect(seeded.code, seeded.stderr).toBe(0);

    const out = path.join(work, 'single');
    const refused = await smart(['pull', `docker://${registry.host}/single/amd64:1`, `oci:${out}:x`, '--platform', 'linux/arm64']);
    expect(refused.code).toBe(1);
    expect(errorLine(refused)).toMatch(/^smart: error \[PLATFORM_NOT_FOUND\]: docker:\/\/.*single\/amd64:1 is a linux\/amd64 image, not linux\/arm64 \(to copy it all the same: --platform linux\/amd64, or --platform-mismatch=warn\)$/);
    await expect(fs.stat(path.join(out, 'index.json'))).rejects.toThrow();

    const warned = await smart(['pull', `docker://${registry.host}/single/amd64:1`, `oci:${out}:x`, '--platform', 'linux/arm64', '--platform-mismatch', 'warn', '--json']);
    expect(warned.code, warned.stderr).toBe(0);
    expect(warned.stderr).toMatch(/^warning: docker:\/\/.* is a linux\/amd64 image, not linux\/arm64; copying it as it is$/m);
    expect((JSON.parse(warned.stdout.toString()) as { manifestDigest: string }).manifestDigest).toBe(fx.basic.manifest.digest);

    // A push with --platform is held to it too, also from a stream whose config comes last: nothing is tagged.
    const streamed = await smart(['push', 'docker-archive:-', `file:${store}#single/streamed:1`, '--platform', 'linux/arm64'], { input: await fs.readFile(fx.paths.dockerArchiveBasic) });
    expect(streamed.code).toBe(1);
    expect(errorLine(streamed)).toMatch(/\[PLATFORM_NOT_FOUND\]: docker-archive:- is a linux\/amd64 image, not linux\/arm64/);
    await expect(fs.stat(path.join(store, 'docker/registry/v2/repositories/single/streamed/_manifests/tags'))).rejects.toThrow();
  });

  it('cache index --platform reads a multi-platform tag again for another platform, not only when the tag moved', async () => {
    const fx = fixtures();
    const own = path.join(work, 'indexed-store');
    expect((await smart(['push', `oci:${fx.paths.ociMulti}:latest`, `file:${own}#multi/app:1`])).code).toBe(0);
    const cacheHome = await tempDir();
    const index = async (platform: string) => {
      const r = await smart(['cache', 'index', `file:${own}`, '--platform', platform, '--json'], { cacheHome });
      expect(r.code, r.stderr).toBe(0);
      const { refreshed, unchanged } = JSON.parse(r.stdout.toString()) as { refreshed: number; unchanged: number };
      return { refreshed, unchanged };
    };
    expect(await index('linux/amd64')).toEqual({ refreshed: 1, unchanged: 0 });
    expect(await index('linux/amd64')).toEqual({ refreshed: 0, unchanged: 1 });
    expect(await index('linux/arm64')).toEqual({ refreshed: 1, unchanged: 0 });
  });

  it('platform flags that cannot both hold, or ask what a destination cannot hold, are usage errors', async () => {
    const fx = fixtures();
    const both = await smart(['push', `oci:${fx.paths.ociMulti}:latest`, `file:${store}#x/y:1`, '--platform', 'linux/arm64', '--all-platforms']);
    expect(both.code).toBe(2);
    expect(errorLine(both)).toMatch(/\[USAGE\]: --platform copies one platform, --all-platforms every one/);
    const rootfs = await smart(['pull', `oci:${fx.paths.ociMulti}:latest`, `rootfs:${path.join(work, 'r')}`, '--all-platforms']);
    expect(rootfs.code).toBe(2);
    expect(errorLine(rootfs)).toMatch(/\[USAGE\]: rootfs:.* holds one image: --all-platforms needs a store or a layout/);
  });
});
