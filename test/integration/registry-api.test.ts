/**
 * `docker://` against the stock registry over its API, through a proxy that counts the bytes and
 * injects faults: what we push skopeo reads byte for byte, what skopeo pushes we read back, a
 * second push sends no blob bytes, another repository mounts, and transient failures are outlived.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { fixtures } from '../harness/fixtures.js';
import { blobFiles } from '../harness/layout.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { runOk, smart } from '../harness/run.js';
import { haveTools } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';
import { listAll } from '../harness/tree.js';

interface Summary {
  manifestDigest: string;
  layers: { total: number; pushed: number; skipped: number; mounted: number; bytesPushed: number };
}

async function ok(args: string[], options: Parameters<typeof smart>[1] = {}): Promise<Summary> {
  const r = await smart([...args, '--json'], options);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout.toString()) as Summary;
}


const skopeo = (...args: string[]) => runOk('skopeo', ['--insecure-policy', ...args]);

describe.skipIf(!haveTools('docker-registry', 'skopeo'))('docker:// over the Distribution API', () => {
  let work: string;
  let registry: RunningRegistry;
  let proxy: RunningProxy;
  let reg: string; // the proxy's host: every request of ours goes through it

  beforeAll(async () => {
    work = await tempDir();
    registry = await startRegistry({ configDir: work });
    proxy = await startProxy({ target: registry.url });
    reg = proxy.host;
  });

  afterAll(async () => {
    await proxy?.stop();
    await registry?.stop();
  });

  beforeEach(() => {
    proxy.setFaults(undefined);
    proxy.stats.clear();
  });

  it('pushes an image skopeo then pulls byte for byte; a second push sends no blob bytes', async () => {
    const fx = fixtures();
    const first = await ok(['push', `oci:${fx.paths.ociBasic}:latest`, `docker://${reg}/api/basic:v1`]);
    expect(first.manifestDigest).toBe(fx.basic.manifest.digest);
    expect(first.layers.pushed).toBe(3);
    expect(proxy.stats.bytesUp()).toBe(fx.basic.layers.reduce((n, l) => n + l.size, 0) + fx.basic.config.size);

    const out = path.join(work, 'skopeo-out');
    await skopeo('copy', '--src-tls-verify=false', `docker://${registry.host}/api/basic:v1`, `oci:${out}:v1`);
    const ours = await blobFiles(fx.paths.ociBasic);
    for (const [hex, bytes] of await blobFiles(out)) expect(bytes.equals(ours.get(hex)!), hex).toBe(true);

    proxy.stats.clear();
    const again = await ok(['push', `oci:${fx.paths.ociBasic}:latest`, `docker://${reg}/api/basic:v1`]);
    expect(again.layers).toMatchObject({ pushed: 0, skipped: 3, bytesPushed: 0 });
    expect(proxy.stats.bytesUp()).toBe(0);
    // Unchanged: the tag already names this manifest, so one HEAD of it is all (besides /v2/).
    expect(proxy.stats.requests.filter((r) => r.path !== '/v2/').map((r) => `${r.method} ${r.path}`)).toEqual(['HEAD /v2/api/basic/manifests/v1']);
  });

  it('mounts blobs into another repository of the same registry instead of uploading them', async () => {
    const fx = fixtures();
    await ok(['push', `oci:${fx.paths.ociBasic}:latest`, `docker://${reg}/api/source:v1`]);
    proxy.stats.clear();
    const other = await ok(['push', `oci:${fx.paths.ociBasic}:latest`, `docker://${reg}/api/elsewhere:v1`]);
    expect(other.layers).toMatchObject({ pushed: 0, mounted: 3 });
    expect(proxy.stats.bytesUp()).toBe(0);
    expect(proxy.stats.requests.filter((r) => r.method === 'POST' && r.url.includes('mount=')).length).toBeGreaterThanOrEqual(3);
    // Registry to registry: the source repository is the mount source, no cache needed.
    proxy.stats.clear();
    const copy = await ok(['push', `docker://${reg}/api/source:v1`, `docker://${reg}/api/third:v1`], { cacheHome: await tempDir() });
    expect(copy.layers.mounted).toBe(3);
    expect(proxy.stats.bytesUp()).toBe(0);
  });

  it('reads back byte for byte an image skopeo pushed, into a layout and a root filesystem', async () => {
    const fx = fixtures();
    await skopeo('copy', '--dest-tls-verify=false', `oci:${fx.paths.ociBasic}:latest`, `docker://${registry.host}/api/by-skopeo:v1`);
    const out = path.join(work, 'smart-out');
    const pulled = await ok(['pull', `docker://${reg}/api/by-skopeo:v1`, `oci:${out}:v1`]);
    expect(pulled.manifestDigest).toBe(fx.basic.manifest.digest);
    const original = await blobFiles(fx.paths.ociBasic);
    for (const [hex, bytes] of await blobFiles(out)) expect(bytes.equals(original.get(hex)!), hex).toBe(true);
    const r = await smart(['pull', `docker://${reg}/api/by-skopeo:v1`, `rootfs:${path.join(work, 'rootfs')}`]);
    expect(r.code, r.stderr).toBe(0);
    expect(await fs.readFile(path.join(work, 'rootfs/etc/app.conf'), 'utf8')).toBe('greeting=hi\n');
  });

  it('streams docker save output from stdin into the registry, compressing on the way', async () => {
    const fx = fixtures();
    const pushed = await ok(['push', 'docker-archive:-', `docker://${reg}/api/stdin:v1`], { input: await fs.readFile(fx.paths.dockerArchiveBasic) });
    const raw = (await skopeo('inspect', '--raw', '--tls-verify=false', `docker://${registry.host}/api/stdin:v1`)).stdout;
    expect(`sha256:${createHash('sha256').update(raw).digest('hex')}`).toBe(pushed.manifestDigest);
    const config = JSON.parse((await skopeo('inspect', '--config', '--tls-verify=false', `docker://${registry.host}/api/stdin:v1`)).stdout.toString()) as {
      rootfs: { diff_ids: string[] };
    };
    expect(config.rootfs.diff_ids).toEqual(fx.basic.diffIds);
  });

  it('outlives dropped connections and 503s, on push and on pull', async () => {
    const fx = fixtures();
    // Deterministic trouble: of each kind of request, the 1st and every 3rd after it fails —
    // uploads reset mid-way, blob downloads cut after 100 bytes, everything else a 503.
    const seen = new Map<string, number>();
    proxy.setFaults((req) => {
      const kind = req.method === 'PATCH' ? 'upload' : req.method === 'GET' && req.path.includes('/blobs/') ? 'download' : 'other';
      const n = (seen.get(kind) ?? 0) + 1;
      seen.set(kind, n);
      if (n % 3 !== 1) return undefined;
      if (kind === 'upload') return { kind: 'reset' };
      return kind === 'download' ? { kind: 'reset-mid-body', afterBytes: 100 } : { kind: 'status', status: 503 };
    });
    const pushed = await ok(['push', `oci:${fx.paths.ociBasic}:latest`, `docker://${reg}/api/flaky:v1`], { cacheHome: await tempDir() });
    expect(pushed.manifestDigest).toBe(fx.basic.manifest.digest);
    const out = path.join(work, 'flaky-out');
    await ok(['pull', `docker://${reg}/api/flaky:v1`, `oci:${out}:v1`]);
    const original = await blobFiles(fx.paths.ociBasic);
    for (const [hex, bytes] of await blobFiles(out)) expect(bytes.equals(original.get(hex)!), hex).toBe(true);
    expect(proxy.stats.requests.some((r) => r.fault)).toBe(true);
    await ok(['pull', `docker://${reg}/api/flaky:v1`, `rootfs:${path.join(work, 'flaky-rootfs')}`]);
  });

  it('fails naming the digest when the registry serves a blob with wrong bytes, leaving nothing behind', async () => {
    const fx = fixtures();
    await ok(['push', `oci:${fx.paths.ociBasic}:latest`, `docker://${reg}/api/corrupt:v1`]);
    const victim = fx.basic.layers[1]!.digest;
    proxy.setFaults((req) => (req.method === 'GET' && req.path.endsWith(victim) ? { kind: 'corrupt-body' } : undefined));
    const parent = path.join(work, 'corrupt');
    await fs.mkdir(parent);
    for (const dest of [`rootfs:${path.join(parent, 'rootfs')}`, `docker-archive:${path.join(parent, 'img.tar')}`]) {
      const r = await smart(['pull', `docker://${reg}/api/corrupt:v1`, dest], { cacheHome: await tempDir() });
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(victim.slice(0, 19));
      expect(await listAll(parent)).toEqual([]);
    }
    const store = path.join(parent, 'store');
    const r = await smart(['pull', `docker://${reg}/api/corrupt:v1`, `file:${store}#x/y:z`]);
    expect(r.code).toBe(1);
    await expect(fs.stat(path.join(store, 'docker/registry/v2/repositories/x/y/_manifests/tags'))).rejects.toThrow();
  });

  it('says clearly when the image is not there', async () => {
    const r = await smart(['pull', `docker://${reg}/api/absent:v1`, `rootfs:${path.join(work, 'absent')}`]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/smart: error: registry 127\.0\.0\.1:\d+ answered 404 MANIFEST_UNKNOWN.* manifest api\/absent:v1/);
  });
});
