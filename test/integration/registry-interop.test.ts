/**
 * Interoperability with the stock Distribution registry, skopeo and umoci: what `smart push`
 * writes straight into registry storage is served by the registry and read by skopeo byte for
 * byte; what skopeo pushes through the registry is read back by `smart pull`.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixtures } from '../harness/fixtures.js';
import { blobFiles } from '../harness/layout.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { runOk, smart } from '../harness/run.js';
import { haveTools, inCI, isRoot } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';
import { describeTree } from '../harness/tree.js';

const SKOPEO = ['skopeo', '--insecure-policy'];

async function skopeo(...args: string[]) {
  return runOk(SKOPEO[0]!, [...SKOPEO.slice(1), ...args]);
}


async function tagOf(layoutDir: string, tag: string): Promise<string> {
  const index = JSON.parse(await fs.readFile(path.join(layoutDir, 'index.json'), 'utf8')) as {
    manifests: { digest: string; annotations?: Record<string, string> }[];
  };
  const entry = index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === tag);
  if (!entry) throw new Error(`no ${tag} in ${layoutDir}`);
  return entry.digest;
}

describe.skipIf(!haveTools('docker-registry', 'skopeo', 'umoci'))('stock registry, skopeo and umoci', () => {
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

  it('serves an image smart pushed into its storage, and skopeo pulls it byte for byte', async () => {
    const fx = fixtures();
    const push = await smart(['push', `oci:${fx.paths.ociBasic}:latest`, `file:${store}#demo/basic:v1`, '--json']);
    expect(push.code, push.stderr).toBe(0);
    const summary = JSON.parse(push.stdout.toString()) as { manifestDigest: string; converted: boolean; layers: { pushed: number } };
    expect(summary.manifestDigest).toBe(fx.basic.manifest.digest);
    expect(summary.converted).toBe(false);
    expect(summary.layers.pushed).toBe(3);

    const out = path.join(work, 'skopeo-pulled');
    await skopeo('copy', '--src-tls-verify=false', `docker://${registry.host}/demo/basic:v1`, `oci:${out}:v1`);
    expect(await tagOf(out, 'v1')).toBe(fx.basic.manifest.digest);
    const ours = await blobFiles(fx.paths.ociBasic);
    const theirs = await blobFiles(out);
    expect([...theirs.keys()].sort()).toEqual([...ours.keys()].sort());
    for (const [hex, bytes] of theirs) expect(bytes.equals(ours.get(hex)!), hex).toBe(true);

    // The registry lists what we wrote behind its back.
    const tags = (await (await fetch(`http://${registry.host}/v2/demo/basic/tags/list`)).json()) as { tags: string[] };
    expect(tags.tags).toEqual(['v1']);
  });

  it('serves a docker-archive smart compressed and pushed, under the digest smart reported', async () => {
    const fx = fixtures();
    const push = await smart(['push', `docker-archive:${fx.paths.dockerArchiveBasic}`, `file:${store}#demo/from-archive:v1`, '--json']);
    expect(push.code, push.stderr).toBe(0);
    const summary = JSON.parse(push.stdout.toString()) as { manifestDigest: string; manifestMediaType: string };
    expect(summary.manifestMediaType).toBe('application/vnd.docker.distribution.manifest.v2+json');
    const raw = await skopeo('inspect', '--raw', '--tls-verify=false', `docker://${registry.host}/demo/from-archive:v1`);
    const { createHash } = await import('node:crypto');
    expect(`sha256:${createHash('sha256').update(raw.stdout).digest('hex')}`).toBe(summary.manifestDigest);
    const config = JSON.parse((await skopeo('inspect', '--config', '--tls-verify=false', `docker://${registry.host}/demo/from-archive:v1`)).stdout.toString()) as {
      rootfs: { diff_ids: string[] };
    };
    expect(config.rootfs.diff_ids).toEqual(fx.basic.diffIds);
    // skopeo can copy it whole, which verifies every blob against the manifest.
    await skopeo('copy', '--src-tls-verify=false', `docker://${registry.host}/demo/from-archive:v1`, `oci:${path.join(work, 'from-archive')}:v1`);
  });

  it('reads back byte for byte an image skopeo pushed through the registry, and unpacks it as umoci does', async () => {
    const fx = fixtures();
    await skopeo('copy', '--dest-tls-verify=false', `oci:${fx.paths.ociBasic}:latest`, `docker://${registry.host}/skopeo/basic:v1`);

    const out = path.join(work, 'smart-pulled');
    const pull = await smart(['pull', `file:${store}#skopeo/basic:v1`, `oci:${out}:v1`]);
    expect(pull.code, pull.stderr).toBe(0);
    const pushedDigest = (await skopeo('inspect', '--tls-verify=false', '--format', '{{.Digest}}', `docker://${registry.host}/skopeo/basic:v1`)).stdout.toString().trim();
    expect(await tagOf(out, 'v1')).toBe(pushedDigest);
    const ours = await blobFiles(out);
    const original = await blobFiles(fx.paths.ociBasic);
    for (const [hex, bytes] of ours) expect(bytes.equals(original.get(hex)!), hex).toBe(true);

    const rootfs = path.join(work, 'smart-rootfs');
    const unpack = await smart(['pull', `file:${store}#skopeo/basic:v1`, `rootfs:${rootfs}`]);
    expect(unpack.code, unpack.stderr).toBe(0);
    const bundle = path.join(work, 'umoci-bundle');
    await runOk('umoci', ['unpack', '--image', `${fx.paths.ociBasic}:latest`, bundle]);
    expect(await describeTree(rootfs)).toEqual(await describeTree(path.join(bundle, 'rootfs')));
  });

  it('unpacks every layout of the fixture (OCI, OCI archive, both docker-archive formats) to the same tree as umoci', async () => {
    const fx = fixtures();
    const bundle = path.join(work, 'umoci-reference');
    await runOk('umoci', ['unpack', '--image', `${fx.paths.ociBasic}:latest`, bundle]);
    const expected = await describeTree(path.join(bundle, 'rootfs'));
    expect(Object.keys(expected).length).toBeGreaterThan(30);
    for (const src of [
      `oci-archive:${fx.paths.ociArchiveBasic}:latest`,
      `docker-archive:${fx.paths.dockerArchiveBasic}`,
      `docker-archive:${fx.paths.dockerArchiveBasicOci}`,
    ]) {
      const dir = path.join(work, `rootfs-${path.basename(src.split(':')[1]!)}`);
      const r = await smart(['pull', src, `rootfs:${dir}`]);
      expect(r.code, r.stderr).toBe(0);
      expect(await describeTree(dir), src).toEqual(expected);
    }
  });
});

/**
 * README, "Ownership": what smart writes into a store has the user's umask, whatever the mode of
 * what it came from, so that a registry running as another user reads it. A layout's 0600 blobs
 * (or kept blobs of a pull under umask 077) copied or linked as they were kept the registry,
 * running as another user, from reading them: it answered 200 and cut the body.
 */
describe.skipIf(!haveTools('docker-registry', 'skopeo'))("store files have the user's umask, not their source's mode", () => {
  let work: string;
  let layout: string;

  /** Each file under `root`, by its path under `root`, with its mode in octal. */
  async function modes(root: string): Promise<Record<string, string>> {
    const out: Record<string, string> = {};
    for (const entry of await fs.readdir(root, { recursive: true, withFileTypes: true })) {
      if (!entry.isFile()) continue;
      const file = path.join(entry.parentPath, entry.name);
      out[path.relative(root, file)] = ((await fs.stat(file)).mode & 0o7777).toString(8);
    }
    return out;
  }

  const every = (found: Record<string, string>, mode: string) => Object.fromEntries(Object.keys(found).map((k) => [k, mode]));

  beforeAll(async () => {
    work = await tempDir('smart-modes-');
    await fs.chmod(work, 0o755);
    layout = path.join(work, 'layout');
    await fs.cp(fixtures().paths.ociBasic, layout, { recursive: true });
    const blobs = path.join(layout, 'blobs', 'sha256');
    for (const name of await fs.readdir(blobs)) await fs.chmod(path.join(blobs, name), 0o600);
  });

  it.each([
    ['022', '644'],
    ['002', '664'],
  ])('a push of 0600 blobs under umask %s writes files %s, into a file: store and an oci: layout', async (umask, mode) => {
    const store = path.join(work, `store-${umask}`);
    const push = await smart(['push', `oci:${layout}:latest`, `file:${store}#modes/a:1`], { umask });
    expect(push.code, push.stderr).toBe(0);
    const found = await modes(store);
    expect(Object.keys(found).filter((p) => p.endsWith('/data'))).toHaveLength(5);
    expect(found).toEqual(every(found, mode));

    const copy = path.join(work, `layout-${umask}`);
    const write = await smart(['push', `oci:${layout}:latest`, `oci:${copy}:a`], { umask });
    expect(write.code, write.stderr).toBe(0);
    const copied = await modes(copy);
    expect(Object.keys(copied).filter((p) => p.startsWith('blobs/'))).toHaveLength(5);
    expect(copied).toEqual(every(copied, mode));
  });

  it("blobs a pull kept under umask 077 are copied into a layout written under 022, not linked with their 0600", async () => {
    const registry = await startRegistry(path.join(work, 'store-022'), work);
    try {
      const cacheHome = path.join(work, 'cache-077');
      const source = `docker://${registry.host}/modes/a:1`;
      const keep = await smart(['pull', '--insecure-registry', registry.host, source, `rootfs:${path.join(work, 'rootfs')}`], { umask: '077', cacheHome });
      expect(keep.code, keep.stderr).toBe(0);
      const kept = await modes(path.join(cacheHome, 'smartlayer', 'layer-store', 'blobs'));
      expect(Object.keys(kept)).toHaveLength(3);
      expect(kept).toEqual(every(kept, '600'));
      const out = path.join(work, 'from-kept');
      const pull = await smart(['pull', '--insecure-registry', registry.host, source, `oci:${out}:a`], { umask: '022', cacheHome });
      expect(pull.code, pull.stderr).toBe(0);
      const found = await modes(out);
      expect(found).toEqual(every(found, '644'));
    } finally {
      await registry.stop();
    }
  });

  it('a registry running as another user (nobody) serves the store pushed under umask 022, and skopeo copies the image whole', async (ctx) => {
    if (!isRoot) {
      if (inCI) throw new Error('CI=true but the registry cannot run as another user: not root');
      return ctx.skip();
    }
    const registry = await startRegistry({ root: path.join(work, 'store-022'), configDir: work, uid: 65534 });
    try {
      const out = path.join(work, 'skopeo-pulled');
      await skopeo('copy', '--src-tls-verify=false', `docker://${registry.host}/modes/a:1`, `oci:${out}:a`);
      expect(await tagOf(out, 'a')).toBe(fixtures().basic.manifest.digest);
    } finally {
      await registry.stop();
    }
  });
});
