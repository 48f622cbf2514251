/**
 * Transports end to end through the CLI: docker-archive written and read (file and pipe),
 * runtime bundles that runc runs, multi-platform picks, and pushes that skip what is there.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { fixtures } from '../harness/fixtures.js';
import { busyboxLayout } from '../harness/images.js';
import { run, runOk, smart, smartBin, type RunResult } from '../harness/run.js';
import { haveTools, inCI, isRoot } from '../harness/tools.js';
import { startRegistry } from '../harness/registry.js';
import { tempDir } from '../harness/tmp.js';

interface Summary {
  manifestDigest: string;
  converted: boolean;
  layers: { total: number; pushed: number; skipped: number; bytesPushed: number };
  config: string;
}

async function pushJson(args: string[], input?: Buffer): Promise<Summary> {
  const r = await smart([...args, '--json'], input ? { input } : {});
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout.toString()) as Summary;
}

describe('push into file: storage', () => {
  it('skips every blob already there, and links shared blobs into a new repository without copying', async () => {
    const fx = fixtures();
    const store = path.join(await tempDir(), 'store');
    const first = await pushJson(['push', `oci:${fx.paths.ociBasic}:latest`, `file:${store}#a/app:1`]);
    expect(first.layers).toMatchObject({ total: 3, pushed: 3, skipped: 0 });
    const again = await pushJson(['push', `oci:${fx.paths.ociBasic}:latest`, `file:${store}#a/app:1`]);
    expect(again.layers).toMatchObject({ total: 3, pushed: 0, skipped: 3, bytesPushed: 0 });
    expect(again.config).toBe('skipped');
    const other = await pushJson(['push', `oci:${fx.paths.ociBasic}:latest`, `file:${store}#b/other:2`]);
    expect(other.layers).toMatchObject({ pushed: 0, skipped: 3 });
    const link = await fs.readFile(
      path.join(store, 'docker/registry/v2/repositories/b/other/_layers/sha256', fx.basic.layers[0]!.digest.slice(7), 'link'),
    );
    expect(link.toString()).toBe(fx.basic.layers[0]!.digest); // exactly 71 bytes, no newline
    expect(link.length).toBe(71);
  });

  it('does not compress a docker-archive layer again that it compressed for this store before', async () => {
    const fx = fixtures();
    const work = await tempDir();
    const store = path.join(work, 'store');
    const cacheHome = path.join(work, 'cache');
    const push = async (repo: string) => {
      const r = await smart(['push', `docker-archive:${fx.paths.dockerArchiveBasic}`, `file:${store}#${repo}`, '--json'], { cacheHome });
      expect(r.code, r.stderr).toBe(0);
      return JSON.parse(r.stdout.toString()) as Summary;
    };
    const first = await push('c/app:1');
    expect(first.layers).toMatchObject({ pushed: 3, skipped: 0 });
    const second = await push('c/app:2');
    expect(second.layers).toMatchObject({ pushed: 0, skipped: 3, bytesPushed: 0 });
    expect(second.manifestDigest).toBe(first.manifestDigest);
    // The cache is a hint: with the blobs gone from the store, the layers are compressed again.
    await fs.rm(path.join(store, 'docker/registry/v2/blobs'), { recursive: true });
    const third = await push('c/app:3');
    expect(third.layers).toMatchObject({ pushed: 3, skipped: 0 });
    expect(third.manifestDigest).toBe(first.manifestDigest);
  });

  it.skipIf(!haveTools('zstd', 'skopeo', 'docker-registry'))('compresses with zstd on request, into an OCI manifest that skopeo and smart read back', async () => {
    const fx = fixtures();
    const work = await tempDir();
    const store = path.join(work, 'store');
    const pushed = await pushJson(['push', `docker-archive:${fx.paths.dockerArchiveBasic}`, `file:${store}#z/app:1`, '--compression', 'zstd']);
    expect(pushed).toMatchObject({ compression: { format: 'zstd', engine: 'zstd' } });
    const pulled = await smart(['pull', `file:${store}#z/app:1`, `docker-archive:${path.join(work, 'back.tar')}`]);
    expect(pulled.code, pulled.stderr).toBe(0);
    const config = JSON.parse((await runOk('skopeo', ['--insecure-policy', 'inspect', '--config', `docker-archive:${path.join(work, 'back.tar')}`])).stdout.toString()) as {
      rootfs: { diff_ids: string[] };
    };
    expect(config.rootfs.diff_ids).toEqual(fx.basic.diffIds);
    const registry = await startRegistry({ configDir: work, root: store });
    try {
      await runOk('skopeo', ['--insecure-policy', 'copy', '--src-tls-verify=false', `docker://${registry.host}/z/app:1`, `oci:${path.join(work, 'via-skopeo')}:x`]);
      const manifest = JSON.parse((await runOk('skopeo', ['--insecure-policy', 'inspect', '--raw', '--tls-verify=false', `docker://${registry.host}/z/app:1`])).stdout.toString()) as {
        mediaType: string;
        layers: { mediaType: string }[];
      };
      expect(manifest.mediaType).toBe('application/vnd.oci.image.manifest.v1+json');
      expect(manifest.layers.every((l) => l.mediaType === 'application/vnd.oci.image.layer.v1.tar+zstd')).toBe(true);
    } finally {
      await registry.stop();
    }
  });

  it('starts pushing layers from a docker-archive on stdin before the stream has ended', async () => {
    const fx = fixtures();
    const store = path.join(await tempDir(), 'store');
    const archive = await fs.readFile(fx.paths.dockerArchiveBasic);
    // Classic docker save writes manifest.json near the end: hold back the tail of the archive
    // (manifest.json and after) until a compressed layer blob has appeared in the store.
    const cut = archive.indexOf(Buffer.from('manifest.json'));
    expect(cut).toBeGreaterThan(0);
    const child = spawn(process.execPath, [smartBin, 'push', 'docker-archive:-', `file:${store}#stream/app:1`, '--json'], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number>((resolve) => child.once('close', (c) => resolve(c ?? 1)));
    child.stdin.write(archive.subarray(0, cut - 512 * 3));
    const blobs = path.join(store, 'docker/registry/v2/blobs/sha256');
    for (let i = 0; i < 600; i++) {
      const found = await fs.readdir(blobs).catch(() => []);
      if (found.length >= 3) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    expect((await fs.readdir(blobs)).length).toBeGreaterThanOrEqual(3);
    // Nothing is tagged while the archive is still arriving.
    await expect(fs.stat(path.join(store, 'docker/registry/v2/repositories/stream/app/_manifests/tags'))).rejects.toThrow();
    child.stdin.end(archive.subarray(cut - 512 * 3));
    expect(await exited, stderr).toBe(0);
    const summary = JSON.parse(stdout) as Summary;
    expect(summary.layers.pushed).toBe(3);
    // Same image as pushing the archive from its file: the same compressed bytes, the same digest.
    const fromFile = await pushJson(['push', `docker-archive:${fx.paths.dockerArchiveBasic}`, `file:${store}#stream/file:1`]);
    expect(fromFile.manifestDigest).toBe(summary.manifestDigest);
  });

  it('pushes the Docker 25+ docker-save layout from stdin too', async () => {
    const fx = fixtures();
    const store = path.join(await tempDir(), 'store');
    const summary = await pushJson(['push', 'docker-archive:-', `file:${store}#x/y:z`], await fs.readFile(fx.paths.dockerArchiveBasicOci));
    expect(summary.layers.pushed).toBe(3);
  });
});

describe('docker-archive output', () => {
  it.skipIf(!haveTools('skopeo'))('is read by skopeo and by smart push, from a file and through a pipe', async () => {
    const fx = fixtures();
    const work = await tempDir();
    const tarFile = path.join(work, 'image.tar');
    const pull = await smart(['pull', `oci:${fx.paths.ociBasic}:latest`, `docker-archive:${tarFile}:example.com/team/basic:v1`]);
    expect(pull.code, pull.stderr).toBe(0);
    const inspect = JSON.parse(
      (await runOk('skopeo', ['--insecure-policy', 'inspect', '--config', `docker-archive:${tarFile}`])).stdout.toString(),
    ) as { rootfs: { diff_ids: string[] } };
    expect(inspect.rootfs.diff_ids).toEqual(fx.basic.diffIds);
    await runOk('skopeo', ['--insecure-policy', 'copy', `docker-archive:${tarFile}`, `oci:${path.join(work, 'via-skopeo')}:v1`]);
    const manifestJson = JSON.parse((await runOk('tar', ['-xOf', tarFile, 'manifest.json'])).stdout.toString()) as { RepoTags: string[] }[];
    expect(manifestJson[0]!.RepoTags).toEqual(['example.com/team/basic:v1']);

    const store = path.join(work, 'store');
    const back = await pushJson(['push', `docker-archive:${tarFile}:example.com/team/basic:v1`, `file:${store}#rt/basic:v1`]);
    expect(back.layers.total).toBe(3);

    // Through a pipe: smart pull ... docker-archive:- | smart push docker-archive:- ...
    const piped = await smart(['pull', `oci:${fx.paths.ociBasic}:latest`, 'docker-archive:-']);
    expect(piped.code, piped.stderr).toBe(0);
    expect(piped.stdout.equals(await fs.readFile(tarFile))).toBe(false); // RepoTags differ...
    const viaPipe = await pushJson(['push', 'docker-archive:-', `file:${store}#rt/piped:v1`], piped.stdout);
    expect(viaPipe.manifestDigest).toBe(back.manifestDigest); // ...the image does not

    // NAME:TAG@DIGEST names the image by its digest: the tag, which may name another image, is not
    // written into RepoTags (docker pull of the same reference tags nothing either).
    const other = await pushJson(['push', `oci:${fx.paths.ociBasic}:latest`, `file:${store}#rt/basic:v2`]);
    expect(other.manifestDigest).not.toBe(back.manifestDigest);
    const byDigest = path.join(work, 'by-digest.tar');
    expect((await smart(['pull', `file:${store}#rt/basic:v2@${back.manifestDigest}`, `docker-archive:${byDigest}`])).code).toBe(0);
    const tagged = JSON.parse((await runOk('tar', ['-xOf', byDigest, 'manifest.json'])).stdout.toString()) as { RepoTags: string[] }[];
    expect(tagged[0]!.RepoTags).toEqual([]);
  });
});

describe('multi-platform images', () => {
  it('picks the running platform by default and another with --platform', async () => {
    const fx = fixtures();
    const work = await tempDir();
    const host = await smart(['pull', `oci:${fx.paths.ociMulti}:latest`, `rootfs:${path.join(work, 'host')}`]);
    expect(host.code, host.stderr).toBe(0);
    expect(await fs.readFile(path.join(work, 'host/etc/arch'), 'utf8')).toBe(process.arch === 'arm64' ? 'arm64\n' : 'amd64\n');
    const amd = await smart(['pull', `oci:${fx.paths.ociMulti}:latest`, `rootfs:${path.join(work, 'amd')}`, '--platform', 'linux/amd64']);
    expect(amd.code, amd.stderr).toBe(0);
    expect(await fs.readFile(path.join(work, 'amd/etc/arch'), 'utf8')).toBe('amd64\n');
    const arm = await smart(['pull', `oci:${fx.paths.ociMulti}:latest`, `rootfs:${path.join(work, 'arm')}`, '--platform', 'linux/arm64']);
    expect(arm.code, arm.stderr).toBe(0);
    expect(await fs.readFile(path.join(work, 'arm/etc/arch'), 'utf8')).toBe('arm64\n');
    const store = path.join(work, 'store');
    const pushed = await pushJson(['push', `oci:${fx.paths.ociMulti}:latest`, `file:${store}#m/img:arm`, '--platform', 'linux/arm64/v8']);
    expect(pushed.manifestDigest).toBe(fx.multi.platforms['linux/arm64/v8']!.manifest.digest);
    const none = await smart(['pull', `oci:${fx.paths.ociMulti}:latest`, `rootfs:${path.join(work, 'none')}`, '--platform', 'linux/s390x']);
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/no manifest for platform linux\/s390x.*available: linux\/amd64, linux\/arm64/);
  });
});

describe('runtime bundles', () => {
  it.skipIf(!haveTools('runc') || !isRoot)('are run by runc, which prints what the image prints, cold and laid from the layer store', async () => {
    const fx = fixtures();
    const work = await tempDir();
    const cacheHome = await tempDir();
    const store = path.join(work, 'store');
    expect((await smart(['push', `oci:${fx.paths.ociBasic}:latest`, `file:${store}#demo/basic:v1`])).code).toBe(0);
    // The first pull keeps the layers (a bundle's default); the second lays them from the store.
    for (const [i, from] of ['stream', expect.stringMatching(/^(copy|reflink)$/)].entries()) {
      const bundle = path.join(work, `bundle-${i}`);
      const pull = await smart(['pull', '--json', `file:${store}#demo/basic:v1`, `bundle:${bundle}`], { cacheHome });
      expect(pull.code, pull.stderr).toBe(0);
      expect(JSON.parse(pull.stdout.toString())).toMatchObject({ details: { materialize: from } });
      const spec = JSON.parse(await fs.readFile(path.join(bundle, 'config.json'), 'utf8')) as {
        process: { args: string[]; cwd: string; user: { uid: number; gid: number }; terminal: boolean };
      };
      expect(spec.process).toMatchObject({ args: ['/bin/hello', '--from-cmd'], cwd: '/srv', user: { uid: 1000, gid: 1000 }, terminal: false });
      const name = `smart-test-${process.pid}-${Date.now()}-${i}`;
      const state = path.join(work, 'runc-state');
      const r = await run('runc', ['--root', state, 'run', '--bundle', bundle, name]);
      await run('runc', ['--root', state, 'delete', '--force', name]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout.toString()).toBe(fx.basic.expectedStdout);
    }
  });

  /**
   * The README's recipe, `smart pull … bundle:./app && runc run --bundle ./app app`, by `runner`:
   * a busybox image whose process prints its ids, pulled cold and then laid from the layer store,
   * each bundle run by runc as the same user.
   */
  async function pullAndRun(work: string, runner: (cmd: string, args: string[]) => Promise<RunResult>): Promise<void> {
    const image = path.join(work, 'image');
    await busyboxLayout(image, ['sh', 'id'], { Cmd: ['/bin/sh', '-c', 'id'] });
    await runOk('chmod', ['-R', 'a+rX', image]);
    for (const [i, from] of ['stream', expect.stringMatching(/^(copy|reflink)$/)].entries()) {
      const bundle = path.join(work, `bundle-${i}`);
      const pull = await runner(process.execPath, [smartBin, 'pull', '--json', `oci:${image}:latest`, `bundle:${bundle}`]);
      expect(pull.code, pull.stderr).toBe(0);
      expect(JSON.parse(pull.stdout.toString())).toMatchObject({ details: { materialize: from } });
      const name = `smart-test-${process.pid}-${Date.now()}-${i}`;
      const state = path.join(work, 'runc-state');
      const r = await runner('runc', ['--root', state, 'run', '--bundle', bundle, name]);
      await runner('runc', ['--root', state, 'delete', '--force', name]);
      expect(r.code, r.stderr).toBe(0);
      // Root of the container: the one id a rootless runc maps, the runner's own.
      expect(r.stdout.toString()).toBe('uid=0(root) gid=0\n');
    }
  }

  it.skipIf(!haveTools('runc', 'setpriv', 'busybox') || !isRoot)("pulled by a user who is not root, are run by that user's rootless runc", async () => {
    const work = await tempDir();
    // The user writes here (its cache too) and reads the image and the repository, as any user can.
    await fs.chmod(work, 0o777);
    await pullAndRun(work, (cmd, args) =>
      run('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'env', '-i', `PATH=${process.env.PATH}`, `HOME=${work}`, `XDG_CACHE_HOME=${path.join(work, 'cache')}`, cmd, ...args]),
    );
  });

  it.skipIf(!haveTools('runc', 'unshare', 'busybox'))('pulled by root of a user namespace that maps only root (unshare -r), are run by runc in such a namespace', async (ctx) => {
    const probe = await run('unshare', ['--user', '--map-root-user', 'true']);
    if (probe.code !== 0) {
      if (inCI) throw new Error(`CI=true but no user namespace can be made (unshare --user): ${probe.stderr}`);
      return ctx.skip();
    }
    const work = await tempDir();
    await pullAndRun(work, (cmd, args) => run('unshare', ['--user', '--map-root-user', 'env', `XDG_CACHE_HOME=${path.join(work, 'cache')}`, cmd, ...args]));
  });
});

describe('oci-archive', () => {
  it.skipIf(!haveTools('skopeo'))('round-trips through an archive that skopeo reads, keeping the manifest digest', async () => {
    const fx = fixtures();
    const work = await tempDir();
    const file = path.join(work, 'out.tar');
    const r = await pushJson(['push', `oci:${fx.paths.ociBasic}:latest`, `oci-archive:${file}:v2`]);
    expect(r.manifestDigest).toBe(fx.basic.manifest.digest);
    const digest = (await runOk('skopeo', ['--insecure-policy', 'inspect', '--format', '{{.Digest}}', `oci-archive:${file}:v2`])).stdout.toString().trim();
    expect(digest).toBe(fx.basic.manifest.digest);
    expect((await fs.readdir(work)).sort()).toEqual(['out.tar']); // no staging left behind
  });
});
