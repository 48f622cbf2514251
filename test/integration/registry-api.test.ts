/**
 * `docker://` against the stock registry over its API, through a proxy that counts the bytes and
 * injects faults: what we push skopeo reads byte for byte, what skopeo pushes we read back, a
 * second push sends no blob bytes, another repository mounts, and transient failures are outlived:
 * an upload that breaks, stalls or is refused mid-way is started again, its cause in the warning.
 */
import crypto, { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { fixtures } from '../harness/fixtures.js';
import { blobFiles } from '../harness/layout.js';
import { writeImage } from '../harness/images.js';
import { carriesBlobBytes, startProxy, type Fault, type RunningProxy } from '../harness/proxy.js';
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
    // Every blob's digest is known: each goes in one PUT that closes its upload, no PATCH.
    const uploads = proxy.stats.requests.filter((r) => r.path.includes('/blobs/uploads/'));
    expect(uploads.filter((r) => r.method === 'PATCH')).toEqual([]);
    expect(uploads.filter((r) => r.method === 'PUT' && r.status === 201 && r.requestBytes > 0)).toHaveLength(fx.basic.layers.length + 1);

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

  it('mounts at once, without a HEAD first, and puts the manifest once, by its tag', async () => {
    const fx = fixtures();
    const cacheHome = await tempDir();
    const archive = `docker-archive:${fx.paths.dockerArchiveBasic}`;
    await ok(['push', archive, `docker://${reg}/api/count-src:v1`], { cacheHome });
    const seen = () => proxy.stats.requests.map((r) => `${r.method} ${r.path}`);
    const blobs = fx.basic.layers.length + 1; // and the config

    proxy.stats.clear();
    const other = await ok(['push', archive, `docker://${reg}/api/count-dst:v1`], { cacheHome });
    expect(other.layers).toMatchObject({ pushed: 0, mounted: fx.basic.layers.length });
    // The cache saw every blob in count-src: each is mounted straight away (201), as skopeo
    // mounts. Besides: /v2/, and the manifest and config of the image that proves what the
    // archive's layers were compressed to (two reads).
    expect(seen().filter((r) => r.startsWith('HEAD '))).toEqual([]);
    expect(proxy.stats.requests.filter((r) => r.method === 'POST' && r.url.includes('mount=')).map((r) => r.status)).toEqual(Array(blobs).fill(201));
    expect(seen().filter((r) => r.startsWith('PUT '))).toEqual(['PUT /v2/api/count-dst/manifests/v1']);
    expect(proxy.stats.requests.length).toBeLessThanOrEqual(1 + 2 + blobs + 1);

    // Pushed again: the cache knows every layer's blob there, proven by the manifest this push
    // would write, which the tag still names: one HEAD of the tag is all (besides /v2/).
    proxy.stats.clear();
    const again = await ok(['push', archive, `docker://${reg}/api/count-dst:v1`], { cacheHome });
    expect(again).toMatchObject({ manifestDigest: other.manifestDigest, layers: { pushed: 0, skipped: fx.basic.layers.length, mounted: 0 } });
    expect(seen().filter((r) => r !== 'GET /v2/')).toEqual(['HEAD /v2/api/count-dst/manifests/v1']);

    // The tag moved behind its back (skopeo pushed another image to it): the push asks the tag,
    // then checks each blob and puts the manifest back.
    await skopeo('copy', '--dest-tls-verify=false', `oci:${fx.paths.ociMulti}:latest`, `docker://${registry.host}/api/count-dst:v1`);
    proxy.stats.clear();
    const moved = await ok(['push', archive, `docker://${reg}/api/count-dst:v1`], { cacheHome });
    expect(moved).toMatchObject({ manifestDigest: other.manifestDigest, layers: { pushed: 0, skipped: fx.basic.layers.length } });
    expect(seen().filter((r) => r.startsWith('HEAD ') && r.includes('/blobs/'))).toHaveLength(blobs);
    expect(seen().filter((r) => r.startsWith('PUT ') || r.startsWith('POST '))).toEqual(['PUT /v2/api/count-dst/manifests/v1']);
    expect(seen().filter((r) => r.includes('/manifests/v1') && r.startsWith('HEAD '))).toEqual(['HEAD /v2/api/count-dst/manifests/v1']);
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

  it('uploads to a registry whose upload Locations are relative to the request (UUID?_state=…), by one PUT and by PATCH and PUT', async () => {
    const fx = fixtures();
    const relative = await startProxy({ target: registry.url, relativeUploadLocations: true });
    try {
      // A layout's blobs have their digests: one PUT each. A docker save is compressed on its way: PATCH, then PUT.
      const put = await ok(['push', `oci:${fx.paths.ociBasic}:latest`, `docker://${relative.host}/api/relative:v1`], { cacheHome: await tempDir() });
      expect(put.layers.pushed).toBe(3);
      const patched = await ok(['push', 'docker-archive:-', `docker://${relative.host}/api/relative-stdin:v1`], { input: await fs.readFile(fx.paths.dockerArchiveBasic), cacheHome: await tempDir() });
      expect(patched.layers.pushed).toBe(3);
      expect(relative.stats.requests.some((r) => r.method === 'PATCH' && r.status === 202)).toBe(true);
      for (const repo of ['relative', 'relative-stdin']) {
        const config = JSON.parse((await skopeo('inspect', '--config', '--tls-verify=false', `docker://${registry.host}/api/${repo}:v1`)).stdout.toString()) as { rootfs: { diff_ids: string[] } };
        expect(config.rootfs.diff_ids, repo).toEqual(fx.basic.diffIds);
      }
    } finally {
      await relative.stop();
    }
  });

  it('a push cancelled mid-upload (--timeout, Ctrl-C) closes its upload sessions on the registry', async () => {
    const fx = fixtures();
    // Every blob's bytes stall after 10 bytes: the run waits in its uploads until --timeout ends it.
    proxy.setFaults((req) => (carriesBlobBytes(req) ? { kind: 'stall-mid-request', afterBytes: 10 } : undefined));
    const r = await smart(['push', `oci:${fx.paths.ociBasic}:latest`, `docker://${reg}/api/cancelled:v1`, '--timeout', '2'], { cacheHome: await tempDir() });
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n').at(-1)).toBe('smart: error [CANCELLED]: timed out after 2 s (--timeout)');
    const opened = proxy.stats.requests.filter((q) => q.method === 'POST' && q.path.endsWith('/blobs/uploads/')).length;
    expect(opened).toBeGreaterThan(0);
    // Each session opened was closed (the DELETEs went, though the run's own signal had fired).
    expect(proxy.stats.requests.filter((q) => q.method === 'DELETE' && q.path.includes('/blobs/uploads/') && q.status === 204)).toHaveLength(opened);
    const uploads = path.join(registry.root, 'docker/registry/v2/repositories/api/cancelled/_uploads');
    // The bytes went with the sessions. (The registry may still write a session's hash state as it
    // unwinds the PUT cut short, after the DELETE: a few bytes of its own.)
    expect((await listAll(uploads).catch(() => [] as string[])).filter((p) => p.endsWith('/data'))).toEqual([]);
  });

  it('outlives dropped connections and 503s, on push and on pull', async () => {
    const fx = fixtures();
    // Deterministic trouble: of each kind of request, the 1st and every 3rd after it fails —
    // uploads reset mid-way, blob downloads cut after 100 bytes, everything else a 503.
    const seen = new Map<string, number>();
    proxy.setFaults((req) => {
      const kind = carriesBlobBytes(req) ? 'upload' : req.method === 'GET' && req.path.includes('/blobs/') ? 'download' : 'other';
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

  it('smart cache over a whole registry retries as push and pull do: each retry a warning, a stall cut by --stall-timeout', async () => {
    const fx = fixtures();
    await ok(['push', `oci:${fx.paths.ociBasic}:latest`, `docker://${reg}/cron/basic:v1`], { cacheHome: await tempDir() });
    proxy.setFaults((req, n) => {
      if (req.method === 'GET' && req.path === '/v2/_catalog' && n === 1) return { kind: 'status', status: 503 };
      if (req.method === 'HEAD' && req.path === '/v2/cron/basic/manifests/v1' && n === 1) return { kind: 'delay', ms: 60_000 };
      return undefined;
    });
    const started = Date.now();
    const r = await smart(['cache', 'index', `docker://${reg}`, '--stall-timeout', '2', '--json'], { cacheHome: await tempDir() });
    expect(r.code, r.stderr).toBe(0);
    expect((JSON.parse(r.stdout.toString()) as { tags: number }).tags).toBeGreaterThanOrEqual(1);
    expect(r.stderr).toMatch(/warning: catalog: .*answered 503; retrying in/);
    // A registry silent for longer than --stall-timeout (2 s), not only the default 30 s, is tried again:
    // well before 30 s (a run waiting out the default, or the delay, takes longer), with room for a
    // loaded machine's Node start (the run took 3.5 s here beside another CI run, of a bound of 8).
    expect(r.stderr).toMatch(/warning: .*cron\/basic.*retrying in/);
    expect(Date.now() - started).toBeLessThan(20_000);
  });

  it('cache index over a registry with a repository it cannot list: that one failed, the others indexed, exit 0', async () => {
    const fx = fixtures();
    for (const repo of ['listed/ok', 'listed/broken']) await ok(['push', `oci:${fx.paths.ociBasic}:latest`, `docker://${reg}/${repo}:v1`], { cacheHome: await tempDir() });
    // As the stock registry answers for a repository whose name it cannot take (every retry alike).
    proxy.setFaults((req) => (req.method === 'GET' && req.path === '/v2/listed/broken/tags/list' ? { kind: 'status', status: 500 } : undefined));
    const r = await smart(['cache', 'index', `docker://${reg}`, '--json'], { cacheHome: await tempDir() });
    expect(r.code, r.stderr).toBe(0);
    const summary = JSON.parse(r.stdout.toString()) as { failed: { image: string; error: string }[]; tags: number };
    expect(summary.failed).toEqual([{ image: 'listed/broken', error: expect.stringMatching(/answered 500 .*to GET tags of listed\/broken/) }]);
    expect(summary.tags).toBeGreaterThanOrEqual(1);
  });

  it('cache index over a registry holding a repository of blobs and no tag (an interrupted first push): none of its tags, no failure', async () => {
    const fx = fixtures();
    await ok(['push', `oci:${fx.paths.ociBasic}:latest`, `docker://${reg}/half/whole:v1`], { cacheHome: await tempDir() });
    // One blob uploaded, no manifest: listed by _catalog, its tags answered 404 NAME_UNKNOWN.
    const blob = Buffer.from('hello');
    const started = await fetch(`${registry.url}/v2/half/blobs-only/blobs/uploads/`, { method: 'POST' });
    expect(started.status).toBe(202);
    const at = new URL(started.headers.get('location')!, registry.url);
    at.searchParams.set('digest', `sha256:${createHash('sha256').update(blob).digest('hex')}`);
    expect((await fetch(at, { method: 'PUT', body: blob })).status).toBe(201);
    expect((await fetch(`${registry.url}/v2/half/blobs-only/tags/list`)).status).toBe(404);
    const r = await smart(['cache', 'index', `docker://${reg}`, '--json'], { cacheHome: await tempDir() });
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout.toString())).toMatchObject({ failed: [] });
    expect(r.stderr).not.toMatch(/blobs-only/);
  });

  it('--jobs 16 over 16 layers, pushed and pulled into a root filesystem: no leak warning of Node (as on a machine of 16 cores)', async () => {
    const layout = path.join(work, 'sixteen');
    await writeImage(layout, { layers: Array.from({ length: 16 }, (_, i) => ({ files: { [`f${i}`]: `layer ${i}\n` }, createdBy: `COPY f${i} /` })) });
    const pushed = await smart(['push', `oci:${layout}:latest`, `docker://${reg}/jobs/sixteen:1`, '--jobs', '16'], { cacheHome: await tempDir() });
    expect(pushed.code, pushed.stderr).toBe(0);
    const pulled = await smart(['pull', `docker://${reg}/jobs/sixteen:1`, `rootfs:${path.join(work, 'sixteen-rootfs')}`, '--jobs', '16'], { cacheHome: await tempDir() });
    expect(pulled.code, pulled.stderr).toBe(0);
    // "Possible EventTarget memory leak detected. 11 abort listeners added to [AbortSignal]"
    expect(pushed.stderr + pulled.stderr).not.toMatch(/MaxListeners|memory leak/);
  });

  describe('uploads that break', () => {
    const pushArgs = (src: string, repo: string, extra: string[] = []) => ['push', src, `docker://${reg}/${repo}:v1`, ...extra];
    /** Faults the first `count` requests that carry a blob's bytes (the config's goes first). */
    const firstUploads = (count: number, fault: Fault) => {
      let n = 0;
      proxy.setFaults((req) => (carriesBlobBytes(req) && ++n <= count ? fault : undefined));
    };
    const faulted = () => proxy.stats.requests.filter((r) => r.fault);
    /** skopeo copies the image out of the registry itself (it verifies every digest) and the blobs are the layout's. */
    const skopeoReadsBack = async (repo: string, layout: string) => {
      const out = await tempDir();
      await skopeo('copy', '--src-tls-verify=false', `docker://${registry.host}/${repo}:v1`, `oci:${out}:v1`);
      const original = await blobFiles(layout);
      const copied = await blobFiles(out);
      expect([...copied.keys()].sort()).toEqual([...original.keys()].sort());
      for (const [hex, bytes] of copied) expect(bytes.equals(original.get(hex)!), hex).toBe(true);
    };
    const retryWarnings = (stderr: string) => stderr.split('\n').filter((l) => /^warning: (layer|config) sha256:[0-9a-f]{12}: .*; sending it again in/.test(l));

    it('starts an upload again when the connection resets mid-body, from a layout and from a docker-archive compressed on the way', async () => {
      const fx = fixtures();
      firstUploads(2, { kind: 'reset-mid-request', afterBytes: 100 });
      const r = await smart(pushArgs(`oci:${fx.paths.ociBasic}:latest`, 'retry/reset'), { cacheHome: await tempDir() });
      expect(r.code, r.stderr).toBe(0);
      expect(faulted().map((q) => q.status)).toEqual([0, 0]); // both cut: no answer reached the client
      const warnings = retryWarnings(r.stderr);
      expect(warnings, r.stderr).toHaveLength(2);
      for (const w of warnings) expect(w).toMatch(/lost the connection to registry 127\.0\.0\.1:\d+: .*\(upload of blob sha256:[0-9a-f]{12} to retry\/reset\); sending it again in 0\.3 s \(attempt 2 of 5\)$/);
      expect(r.stderr).not.toMatch(/aborted|TLS/);
      await skopeoReadsBack('retry/reset', fx.paths.ociBasic);

      proxy.stats.clear();
      firstUploads(2, { kind: 'reset-mid-request', afterBytes: 100 });
      const archive = await smart(pushArgs(`docker-archive:${fx.paths.dockerArchiveBasic}`, 'retry/reset-archive'), { cacheHome: await tempDir() });
      expect(archive.code, archive.stderr).toBe(0);
      expect(retryWarnings(archive.stderr), archive.stderr).toHaveLength(2);
      const config = JSON.parse((await skopeo('inspect', '--config', '--tls-verify=false', `docker://${registry.host}/retry/reset-archive:v1`)).stdout.toString()) as {
        rootfs: { diff_ids: string[] };
      };
      expect(config.rootfs.diff_ids).toEqual(fx.basic.diffIds);
      await skopeo('copy', '--src-tls-verify=false', `docker://${registry.host}/retry/reset-archive:v1`, `oci:${await tempDir()}:v1`);
    });

    it('starts an upload again when it stalls mid-body, the sender held back by the registry', async () => {
      // Layers larger than the socket buffers: the sender is blocked when the proxy stops reading.
      const layout = path.join(await tempDir(), 'big');
      const noise = (n: number) => crypto.randomBytes(n).toString('base64');
      await writeImage(layout, { layers: [{ files: { 'a/noise': noise(6 << 20) }, createdBy: 'a' }, { files: { 'b/noise': noise(3 << 20) }, createdBy: 'b' }] });
      // The first upload of each blob: the config's is over before the point where the stall starts.
      firstUploads(3, { kind: 'stall-mid-request', afterBytes: 64 * 1024 });
      const started = Date.now();
      const r = await smart(pushArgs(`oci:${layout}:latest`, 'retry/stall', ['--stall-timeout', '2']), { cacheHome: await tempDir() });
      expect(r.code, r.stderr).toBe(0);
      expect(Date.now() - started).toBeLessThan(30_000);
      const warnings = retryWarnings(r.stderr);
      expect(warnings, r.stderr).toHaveLength(2);
      for (const w of warnings) expect(w).toMatch(/registry 127\.0\.0\.1:\d+ stalled: no data for 2 s \(upload of blob sha256:[0-9a-f]{12} to retry\/stall\); sending it again/);
      await skopeoReadsBack('retry/stall', layout);
    });

    it('sends the config again when its upload answers 503', async () => {
      const fx = fixtures();
      // The config's first upload (its one PUT names its digest), whichever request comes first:
      // the config goes beside the layers, not in one of the --jobs slots.
      let n = 0;
      const config = fx.basic.config.digest.slice('sha256:'.length);
      proxy.setFaults((req) => (carriesBlobBytes(req) && req.url.includes(config) && ++n === 1 ? { kind: 'status', status: 503 } : undefined));
      const r = await smart(pushArgs(`oci:${fx.paths.ociBasic}:latest`, 'retry/config', ['--jobs', '1']), { cacheHome: await tempDir() });
      expect(r.code, r.stderr).toBe(0);
      expect(faulted().map((q) => q.requestBytes)).toEqual([fx.basic.config.size]);
      expect(retryWarnings(r.stderr), r.stderr).toEqual([
        expect.stringMatching(/^warning: config sha256:[0-9a-f]{12}: registry 127\.0\.0\.1:\d+ answered 503 UNAVAILABLE: injected 503 to PUT upload of blob sha256:[0-9a-f]{12} to retry\/config; sending it again/),
      ]);
      await skopeoReadsBack('retry/config', fx.paths.ociBasic);
    });

    it('gives up after five attempts with the reset as the cause, not an abort and not a TLS hint', async () => {
      const fx = fixtures();
      // Every layer upload breaks (the config, which goes beside the one layer in flight, does not).
      const config = fx.basic.config.digest.slice('sha256:'.length);
      proxy.setFaults((req) => (carriesBlobBytes(req) && !req.url.includes(config) ? { kind: 'reset-mid-request', afterBytes: 100 } : undefined));
      const r = await smart(pushArgs(`oci:${fx.paths.ociBasic}:latest`, 'retry/never', ['--jobs', '1']), { cacheHome: await tempDir() });
      expect(r.code).toBe(1);
      const lines = r.stderr.trim().split('\n');
      expect(lines.filter((l) => l.includes('(attempt 5 of 5)'))).toHaveLength(1);
      expect(lines.at(-1)).toMatch(/^smart: error \[[A-Z_]+\]: lost the connection to registry 127\.0\.0\.1:\d+: \S+ .* \(upload of blob sha256:[0-9a-f]{12} to retry\/never\)$/);
      expect(r.stderr).not.toMatch(/aborted|TLS/);
      // Every attempt opened a session of its own and closed it.
      expect(proxy.stats.requests.filter((q) => q.method === 'PUT' && q.fault)).toHaveLength(5);
    });
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

  it('a layout blob whose bytes do not match its digest: its one PUT is cut before the last chunk, nothing is stored or tagged', async () => {
    // A layer of many chunks (incompressible), one byte of its blob flipped in the middle: the
    // size is right, only the hash at the end tells.
    const layout = path.join(await tempDir(), 'flipped');
    const image = await writeImage(layout, { layers: [{ files: { 'a/noise': crypto.randomBytes(3 << 20).toString('base64') }, createdBy: 'a' }] });
    const victim = image.layers[0]!;
    const file = path.join(layout, 'blobs/sha256', victim.digest.slice('sha256:'.length));
    const bytes = await fs.readFile(file);
    const middle = bytes.length >> 1;
    bytes.writeUInt8(bytes.readUInt8(middle) ^ 0xff, middle);
    await fs.writeFile(file, bytes);
    // The config goes beside the layer; its PUT is held so that it is still on its way when the
    // layer fails, as it can be on a loaded machine: its upload must be closed too. (Where the
    // config's task stands when the layer fails is up to the scheduler: its PUT is usually out,
    // but it may not be, so what is checked of it holds either way.)
    const configHex = image.config.digest.slice('sha256:'.length);
    proxy.setFaults((req) => (req.method === 'PUT' && req.url.includes(configHex) ? { kind: 'delay', ms: 2000 } : undefined));
    const r = await smart(['push', `oci:${layout}:latest`, `docker://${reg}/api/mismatch:v1`, '--jobs', '1'], { cacheHome: await tempDir() });
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n').at(-1)).toMatch(/^smart: error \[DIGEST_MISMATCH\]: blob sha256:[0-9a-f]{12} .*: content hashes to sha256:[0-9a-f]{64}, not sha256:/);
    // The PUT names the digest, and its last chunk waits for our check, which failed: the
    // registry never had the whole body, so it stored nothing; its upload was closed, and so was
    // the config's.
    const puts = proxy.stats.requests.filter((q) => q.method === 'PUT' && q.url.includes(victim.digest.slice('sha256:'.length)));
    expect(puts).toHaveLength(1);
    expect(puts[0]!.requestBytes).toBeGreaterThan(0);
    expect(puts[0]!.requestBytes).toBeLessThan(victim.size);
    expect(puts[0]!.path).toContain('/blobs/uploads/');
    const deletes = proxy.stats.requests.filter((q) => q.method === 'DELETE').map((q) => q.path);
    expect(deletes).toContain(puts[0]!.path);
    for (const configPut of proxy.stats.requests.filter((q) => q.method === 'PUT' && q.url.includes(configHex))) expect(deletes).toContain(configPut.path);
    expect(deletes.length).toBeLessThanOrEqual(2);
    expect(deletes.every((p) => p.includes('/blobs/uploads/'))).toBe(true);
    const v2 = path.join(registry.root, 'docker/registry/v2');
    await expect(fs.stat(path.join(v2, 'blobs/sha256', victim.digest.slice(7, 9), victim.digest.slice(7), 'data'))).rejects.toThrow();
    await expect(fs.stat(path.join(v2, 'blobs/sha256', configHex.slice(0, 2), configHex, 'data'))).rejects.toThrow();
    await expect(fs.stat(path.join(v2, 'repositories/api/mismatch/_manifests/tags'))).rejects.toThrow();
  });

  it('a registry message holding a newline or escape sequences stays on one line, in a retry warning and in the error', async () => {
    const fx = fixtures();
    const body = JSON.stringify({ errors: [{ code: 'UNAVAILABLE', message: 'down\nsmart: error: forged\u001b[2J' }] });
    let uploads = 0;
    proxy.setFaults((req) => (carriesBlobBytes(req) && ++uploads === 1 ? { kind: 'status', status: 503, body } : undefined));
    const pushed = await smart(['push', `oci:${fx.paths.ociBasic}:latest`, `docker://${reg}/api/escaped:v1`], { cacheHome: await tempDir() });
    expect(pushed.code, pushed.stderr).toBe(0);
    expect(pushed.stderr).not.toContain('\u001b');
    expect(pushed.stderr.split('\n').filter((l) => l.startsWith('warning: '))).toEqual([
      // The registry's words are made one line where they enter the message (control characters become spaces).
      expect.stringMatching(/answered 503 UNAVAILABLE: down smart: error: forged \[2J to PUT .*; sending it again/),
    ]);
    expect(pushed.stderr).not.toMatch(/^smart: error: forged/m);

    proxy.setFaults((req) => (req.method === 'GET' && req.path.includes('/manifests/') ? { kind: 'status', status: 403, body } : undefined));
    const pulled = await smart(['pull', `docker://${reg}/api/escaped:v1`, `oci:${path.join(work, 'escaped-out')}:v1`]);
    expect(pulled.code).toBe(1);
    expect(pulled.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^smart: error \[[A-Z_]+\]: .*answered 403 UNAVAILABLE: down smart: error: forged \[2J to GET manifest api\/escaped:v1/)]);
  });

  it('indexes a registry whose catalog pages are smaller than the 1,000 asked for (catalog.maxentries), page by page', async () => {
    const small = await startRegistry({ configDir: await tempDir(), catalogMaxEntries: 2 });
    try {
      for (const repo of ['pages/a', 'pages/b', 'pages/c']) await ok(['push', `oci:${fixtures().paths.ociBasic}:latest`, `docker://${small.host}/${repo}:1`]);
      // The registry refuses n=1000 (PAGINATION_NUMBER_INVALID): every page is asked again at its own size.
      const r = await smart(['cache', 'index', `docker://${small.host}`, '--json'], { cacheHome: path.join(work, 'pages-cache') });
      expect(r.code, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout.toString())).toMatchObject({ repositories: 3, tags: 3, failed: [] });
    } finally {
      await small.stop();
    }
  });

  it('says clearly when the image is not there', async () => {
    const r = await smart(['pull', `docker://${reg}/api/absent:v1`, `rootfs:${path.join(work, 'absent')}`]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/smart: error \[[A-Z_]+\]: registry 127\.0\.0\.1:\d+ answered 404 MANIFEST_UNKNOWN.* manifest api\/absent:v1/);
  });
});
