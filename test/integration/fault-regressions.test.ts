/**
 * Defects the fault soak (fault-soak.test.ts) found, each pinned by the smallest case that shows it.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { fixtures } from '../harness/fixtures.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { smart } from '../harness/run.js';
import { startS3, type RunningS3 } from '../harness/s3.js';
import { haveTools } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';

describe('found by the fault soak', () => {
  // A manifest read from a store or a layout whose bytes changed (a byte flipped on the way from
  // S3, or on disk) was parsed before its digest was checked: the error blamed its JSON ("invalid
  // manifest …: not JSON") instead of saying the bytes are not the manifest named.
  it('a manifest whose bytes changed is a digest mismatch, not invalid JSON: from a file: store and from an OCI layout', async () => {
    const work = await tempDir();
    const fx = fixtures();
    const manifest = fx.basic.manifest.digest;
    const store = path.join(work, 'store');
    const pushed = await smart(['push', `oci:${fx.paths.ociBasic}:latest`, `file:${store}#demo/app:1`]);
    expect(pushed.code, pushed.stderr).toBe(0);
    const layout = path.join(work, 'layout');
    await fs.cp(fx.paths.ociBasic, layout, { recursive: true });
    for (const [file, name] of [
      [path.join(store, 'docker/registry/v2/blobs/sha256', manifest.slice(7, 9), manifest.slice(7), 'data'), `file:${store}#demo/app:1`],
      [path.join(layout, 'blobs/sha256', manifest.slice(7)), `oci:${layout}:latest`],
    ] as const) {
      const bytes = await fs.readFile(file);
      bytes[0]! ^= 0xff; // no longer JSON
      await fs.writeFile(file, bytes);
      // A cache of its own: the suite's shared one may hold this manifest, read from elsewhere.
      const r = await smart(['pull', name, `oci:${path.join(work, 'out')}:x`], { cacheHome: await tempDir() });
      expect(r.code).toBe(1);
      expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(new RegExp(`^smart: error \\[DIGEST_MISMATCH\\]: .*manifest.* ${manifest} hashes to sha256:[0-9a-f]{64}`))]);
    }
  });

  describe.skipIf(!haveTools('docker-registry'))('against the registry behind the fault proxy', () => {
    let registry: RunningRegistry;
    let proxy: RunningProxy;

    beforeAll(async () => {
      registry = await startRegistry({ configDir: await tempDir() });
      proxy = await startProxy({ target: registry.url });
      const r = await smart(['push', `oci:${fixtures().paths.ociBasic}:latest`, `docker://${registry.host}/found/basic:1`]);
      expect(r.code, r.stderr).toBe(0);
    });

    afterAll(async () => {
      await proxy?.stop();
      await registry?.stop();
    });

    beforeEach(() => proxy.setFaults(undefined));

    // Each wait between two attempts left a listener on the command's abort signal: past ten
    // retries in one run, Node printed a MaxListenersExceededWarning (two lines, mid-output).
    it('many retries in one run leave nothing on stderr but their warnings', async () => {
      // Every blob's first three HEADs answer 503: twelve waits in one push.
      proxy.setFaults((req, n) => (req.method === 'HEAD' && req.path.includes('/blobs/') && n <= 3 ? { kind: 'status', status: 503 } : undefined));
      const r = await smart(['push', `oci:${fixtures().paths.ociBasic}:latest`, `docker://${proxy.host}/found/retries:1`, '--jobs', '4'], { cacheHome: await tempDir() });
      expect(r.code, r.stderr).toBe(0);
      expect(proxy.stats.requests.filter((q) => q.fault)).toHaveLength(12);
      expect(r.stderr).not.toMatch(/MaxListeners|\(node:\d+\)/);
      for (const line of r.stderr.trim().split('\n')) expect(line).toMatch(/^(warning: |layer [0-9a-f]{12}: |progress: |pushed |read )/);
    });

    // Two pushes of one image to two tags of a repository at once: the stock registry rewrites a
    // link file in place while the other push mounts the same blob, and a manifest PUT in that
    // moment was refused (400 DIGEST_INVALID, MANIFEST_BLOB_UNKNOWN), failing the push.
    it('a manifest PUT refused for a blob unknown is sent again; refused every time, the registry\'s answer is the error', async () => {
      const racing = JSON.stringify({
        errors: [
          { code: 'DIGEST_INVALID', message: 'provided digest did not match uploaded content', detail: null },
          { code: 'MANIFEST_BLOB_UNKNOWN', message: 'blob unknown to registry', detail: 'sha256:0' },
        ],
      });
      const manifestPut = (q: { method: string; path: string }) => q.method === 'PUT' && q.path.includes('/manifests/');
      proxy.setFaults((req, n) => (manifestPut(req) && n <= 1 ? { kind: 'status', status: 400, body: racing } : undefined));
      const r = await smart(['push', `oci:${fixtures().paths.ociBasic}:latest`, `docker://${proxy.host}/found/race:1`], { cacheHome: await tempDir() });
      expect(r.code, r.stderr).toBe(0);
      expect(proxy.stats.requests.filter((q) => manifestPut(q) && q.path.endsWith('/race/manifests/1'))).toHaveLength(2);

      proxy.setFaults((req) => (manifestPut(req) ? { kind: 'status', status: 400, body: racing } : undefined));
      const refused = await smart(['push', `oci:${fixtures().paths.ociBasic}:latest`, `docker://${proxy.host}/found/race:2`], { cacheHome: await tempDir() });
      expect(refused.code).toBe(1);
      expect(refused.stderr).toMatch(/^smart: error \[REGISTRY\]: registry 127\.0\.0\.1:\d+ answered 400 DIGEST_INVALID: .*MANIFEST_BLOB_UNKNOWN/m);
      expect(proxy.stats.requests.filter((q) => manifestPut(q) && q.path.endsWith('/race/manifests/2'))).toHaveLength(3);
    });

    // A manifest whose body was cut short (a reset mid-body) failed the pull at once, with Node's
    // bare "read ECONNRESET" as the whole message: not retried, and naming neither registry nor manifest.
    it('a manifest body cut short is fetched again; cut every time, the error names the registry and the manifest', async () => {
      const fx = fixtures();
      const manifestGet = (q: { method: string; path: string }) => q.method === 'GET' && q.path === '/v2/found/basic/manifests/1';
      proxy.setFaults((req, n) => (manifestGet(req) && n <= 2 ? { kind: 'reset-mid-body', afterBytes: 20 } : undefined));
      const out = path.join(await tempDir(), 'out');
      const r = await smart(['pull', `docker://${proxy.host}/found/basic:1`, `oci:${out}:x`, '--json'], { cacheHome: await tempDir() });
      expect(r.code, r.stderr).toBe(0);
      expect((JSON.parse(r.stdout.toString()) as { manifestDigest: string }).manifestDigest).toBe(fx.basic.manifest.digest);
      expect(r.stderr).toMatch(/^warning: .*manifest found\/basic:1.*retrying in/m);

      proxy.setFaults((req) => (manifestGet(req) ? { kind: 'reset-mid-body', afterBytes: 20 } : undefined));
      const broken = await smart(['pull', `docker://${proxy.host}/found/basic:1`, `oci:${path.join(await tempDir(), 'out')}:x`], { cacheHome: await tempDir() });
      expect(broken.code).toBe(1);
      const errors = broken.stderr.split('\n').filter((l) => l.startsWith('smart: error ['));
      expect(errors).toEqual([expect.stringMatching(/^smart: error \[REGISTRY\]: lost the connection to registry 127\.0\.0\.1:\d+: .*\(manifest found\/basic:1\)$/)]);
    });

    // A registry on plain HTTP (loopback) whose every connection resets: the error hinted at the
    // TLS setup, which plain HTTP has none of; only the TLS attempt's reset can be about TLS.
    it('every connection reset: one line naming the registry, no TLS hint for plain HTTP', async () => {
      proxy.setFaults(() => ({ kind: 'reset' }));
      const r = await smart(['pull', `docker://${proxy.host}/found/basic:1`, `oci:${path.join(await tempDir(), 'out')}:x`], { cacheHome: await tempDir() });
      expect(r.code).toBe(1);
      const errors = r.stderr.split('\n').filter((l) => l.startsWith('smart: error ['));
      expect(errors).toEqual([expect.stringMatching(/^smart: error \[REGISTRY\]: cannot reach registry 127\.0\.0\.1:\d+: ECONNRESET .*\(ping 127\.0\.0\.1:\d+\)$/)]);
    });
  });

  // S3 requests had the SDK's default three attempts, where a registry's get five: three 503
  // SlowDown answers in a row (S3 asking to slow down) failed a pull a registry would outlive.
  describe('against S3 behind the fault proxy', () => {
    let s3: RunningS3;
    let proxy: RunningProxy;

    beforeAll(async () => {
      s3 = await startS3(path.join(await tempDir(), 's3'));
      proxy = await startProxy({ target: s3.endpoint });
      const r = await smart(['push', `oci:${fixtures().paths.ociBasic}:latest`, `s3://${s3.bucket}/reg#found/basic:1`], { env: s3.env });
      expect(r.code, r.stderr).toBe(0);
    });

    afterAll(async () => {
      await proxy?.stop();
      await s3?.stop();
    });

    it('four 503 SlowDown answers in a row to one request are outlived, as from a registry', async () => {
      const slowDown = '<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>';
      proxy.setFaults((req, n) =>
        req.method === 'GET' && req.path.endsWith('/_manifests/tags/1/current/link') && n <= 4
          ? { kind: 'status', status: 503, headers: { 'content-type': 'application/xml' }, body: slowDown }
          : undefined,
      );
      const r = await smart(['pull', `s3://${s3.bucket}/reg#found/basic:1`, `oci:${path.join(await tempDir(), 'out')}:x`, '--json'], {
        cacheHome: await tempDir(),
        env: { ...s3.env, AWS_ENDPOINT_URL_S3: proxy.url },
      });
      expect(r.code, r.stderr).toBe(0);
      expect(proxy.stats.requests.filter((q) => q.fault)).toHaveLength(4);
      expect((JSON.parse(r.stdout.toString()) as { manifestDigest: string }).manifestDigest).toBe(fixtures().basic.manifest.digest);
    });

    // A layer read from S3 for a root filesystem was read once: a download cut mid-way failed the
    // pull, where a pull into a layout sent the blob again (and a registry's client resumes it).
    // The S3 driver now resumes a broken download from the byte reached, below the digest check:
    // the layer streaming into the tree never sees the break, and nothing is written twice.
    it('a root filesystem pull outlives a layer download cut mid-way: resumed from the byte reached', async () => {
      const layer = fixtures().basic.layers[2]!.digest.slice(7);
      const layerGet = (q: { method: string; path: string }) => q.method === 'GET' && q.path.endsWith(`${layer}/data`);
      const ranges: (string | undefined)[] = [];
      proxy.setFaults((req, n) => {
        if (!layerGet(req)) return undefined;
        ranges.push(req.headers.range);
        return n <= 2 ? { kind: 'reset-mid-body', afterBytes: 10 } : undefined;
      });
      const dest = path.join(await tempDir(), 'root');
      const r = await smart(['pull', `s3://${s3.bucket}/reg#found/basic:1`, `rootfs:${dest}`], {
        cacheHome: await tempDir(),
        env: { ...s3.env, AWS_ENDPOINT_URL_S3: proxy.url },
      });
      expect(r.code, r.stderr).toBe(0);
      expect(proxy.stats.requests.filter((q) => q.fault && layerGet(q))).toHaveLength(2);
      expect(ranges).toEqual([undefined, 'bytes=10-', 'bytes=20-']);
      const told = r.stderr.split('\n').filter((l) => l.startsWith('warning: '));
      expect(told).toEqual([
        expect.stringMatching(new RegExp(`^warning: .*s3://${s3.bucket}/reg/.*${layer}/data.*; resuming from byte 10 in 0\\.3 s \\(attempt 2 of 5\\)$`)),
        expect.stringMatching(/; resuming from byte 20 in 0\.6 s \(attempt 3 of 5\)$/),
      ]);
      expect(await fs.readFile(path.join(dest, 'etc/app.conf'), 'utf8')).toBe('greeting=hi\n');
    });

    // A manifest or a link file read whole from S3 was read once: a body cut mid-way failed the
    // pull (the SDK retries a request that fails, not a body that breaks after its headers).
    it('a manifest and a tag link whose bodies are cut mid-way are read again', async () => {
      const manifest = fixtures().basic.manifest.digest.slice(7);
      const cut = (q: { method: string; path: string }) => q.method === 'GET' && (q.path.endsWith(`${manifest}/data`) || q.path.endsWith('/_manifests/tags/1/current/link'));
      proxy.setFaults((req, n) => (cut(req) && n <= 2 ? { kind: 'reset-mid-body', afterBytes: 10 } : undefined));
      const r = await smart(['pull', `s3://${s3.bucket}/reg#found/basic:1`, `oci:${path.join(await tempDir(), 'out')}:x`, '--json'], {
        cacheHome: await tempDir(),
        env: { ...s3.env, AWS_ENDPOINT_URL_S3: proxy.url },
      });
      expect(r.code, r.stderr).toBe(0);
      expect(proxy.stats.requests.filter((q) => q.fault === 'reset-mid-body' && cut(q))).toHaveLength(4);
      expect(r.stderr.split('\n').filter((l) => /^warning: .*s3:\/\/.*; reading it again in 0\.[36] s \(attempt [23] of 5\)$/.test(l))).toHaveLength(4);
      expect((JSON.parse(r.stdout.toString()) as { manifestDigest: string }).manifestDigest).toBe(fixtures().basic.manifest.digest);
    });
  });
});
