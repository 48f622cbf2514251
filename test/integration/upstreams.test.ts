/**
 * Slow and flaky upstreams: registry mirrors (registries.conf) with fall-back, a prefix rewrite,
 * stalled transfers resumed, a registry that never answers, Ctrl-C in the middle of a push and a
 * pull, and a whole multi-platform index copied between registries with its digests.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { fixtures } from '../harness/fixtures.js';
import { freePort } from '../harness/ports.js';
import { carriesBlobBytes, startProxy, type RunningProxy } from '../harness/proxy.js';
import { rawRequest, startRegistry, type RunningRegistry } from '../harness/registry.js';
import { smart, smartBin } from '../harness/run.js';
import { haveTools } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';
import { listAll } from '../harness/tree.js';

describe.skipIf(!haveTools('docker-registry'))('mirrors, stalls, timeouts and signals', () => {
  let work: string;
  let upstream: RunningRegistry;
  let mirror: RunningRegistry;
  let proxy: RunningProxy; // in front of the upstream

  const push = async (src: string, dest: string, extra: string[] = []) => {
    const r = await smart(['push', src, dest, ...extra]);
    expect(r.code, r.stderr).toBe(0);
  };
  const conf = async (text: string) => {
    const file = path.join(work, `registries-${Math.random().toString(36).slice(2)}.conf`);
    await fs.writeFile(file, text);
    return { CONTAINERS_REGISTRIES_CONF: file };
  };

  beforeAll(async () => {
    work = await tempDir();
    await fs.mkdir(path.join(work, 'up'));
    await fs.mkdir(path.join(work, 'mirror'));
    upstream = await startRegistry({ configDir: path.join(work, 'up') });
    mirror = await startRegistry({ configDir: path.join(work, 'mirror') });
    proxy = await startProxy({ target: upstream.url });
    const fx = fixtures();
    await push(`oci:${fx.paths.ociBasic}:latest`, `docker://${upstream.host}/lib/basic:1`);
    await push(`oci:${fx.paths.ociMulti}:latest`, `docker://${upstream.host}/lib/multi:1`, ['--all-platforms']);
    // The mirror holds a copy of basic only.
    await push(`docker://${upstream.host}/lib/basic:1`, `docker://${mirror.host}/lib/basic:1`);
  });

  afterAll(async () => {
    await proxy?.stop();
    await mirror?.stop();
    await upstream?.stop();
  });

  beforeEach(() => {
    proxy.setFaults(undefined);
    proxy.stats.clear();
  });

  it('pulls from the mirror what it holds, falls back to the upstream for the rest, and when the mirror is gone', async () => {
    const env = await conf(`[[registry]]\nprefix = "${proxy.host}"\nlocation = "${proxy.host}"\n[[registry.mirror]]\nlocation = "${mirror.host}"\n`);
    const fromMirror = await smart(['pull', `docker://${proxy.host}/lib/basic:1`, `oci:${path.join(work, 'm1')}:x`, '--json', '--cache-dir', await tempDir()], { env });
    expect(fromMirror.code, fromMirror.stderr).toBe(0);
    const origins = Object.values((JSON.parse(fromMirror.stdout.toString()) as { details: { origins: Record<string, string> } }).details.origins);
    expect(new Set(origins)).toEqual(new Set([mirror.host]));
    expect(proxy.stats.requests.filter((r) => r.path.includes('/blobs/'))).toEqual([]);

    const fallback = await smart(['pull', `docker://${proxy.host}/lib/multi:1`, `oci:${path.join(work, 'm2')}:x`, '--json'], { env });
    expect(fallback.code, fallback.stderr).toBe(0);
    expect(fallback.stderr).toMatch(/warning: mirror 127\.0\.0\.1:\d+ failed for the manifest .*trying 127\.0\.0\.1:\d+/);
    expect(fallback.stderr.match(/warning:/g)).toHaveLength(1);

    await mirror.stop();
    const mirrorDown = await smart(['pull', `docker://${proxy.host}/lib/basic:1`, `rootfs:${path.join(work, 'm3')}`, '--json'], { env, cacheHome: await tempDir() });
    expect(mirrorDown.code, mirrorDown.stderr).toBe(0);
    expect(new Set(Object.values((JSON.parse(mirrorDown.stdout.toString()) as { details: { origins: Record<string, string> } }).details.origins))).toEqual(
      new Set([proxy.host]),
    );
  });

  it('honours a registries.conf prefix rewrite', async () => {
    const env = await conf(`[[registry]]\nprefix = "images.example.invalid/team"\nlocation = "${upstream.host}/lib"\n`);
    const r = await smart(['pull', 'docker://images.example.invalid/team/basic:1', `oci:${path.join(work, 'rewritten')}:x`, '--json'], { env });
    expect(r.code, r.stderr).toBe(0);
    expect((JSON.parse(r.stdout.toString()) as { manifestDigest: string }).manifestDigest).toBe(fixtures().basic.manifest.digest);
  });

  it('applies registries.conf to a push as to a pull: a rewrite is followed, a blocked registry refuses before sending anything', async () => {
    const fx = fixtures();
    const rewrite = await conf(`[[registry]]\nprefix = "push.example.invalid/team"\nlocation = "${upstream.host}/pushed"\n`);
    const r = await smart(['push', `oci:${fx.paths.ociBasic}:latest`, 'docker://push.example.invalid/team/basic:2', '--json'], { env: rewrite, cacheHome: await tempDir() });
    expect(r.code, r.stderr).toBe(0);
    const tag = await rawRequest(`${upstream.url}/v2/pushed/basic/manifests/2`, { method: 'HEAD', headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } });
    expect(tag.status).toBe(200);
    expect(tag.headers['docker-content-digest']).toBe(fx.basic.manifest.digest);

    const blocked = await conf(`[[registry]]\nprefix = "${proxy.host}/locked"\nlocation = "${proxy.host}/locked"\nblocked = true\n`);
    const refused = await smart(['push', `oci:${fx.paths.ociBasic}:latest`, `docker://${proxy.host}/locked/basic:1`], { env: blocked, cacheHome: await tempDir() });
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/registry .*\/locked is blocked by .*registries-.*\.conf/);
    expect(proxy.stats.requests).toEqual([]);
  });

  it('resumes a blob download that stalls half-way from the byte it had reached', async () => {
    const fx = fixtures();
    const victim = fx.basic.layers[0]!.digest;
    let stalled = false;
    proxy.setFaults((req) => {
      if (stalled || req.method !== 'GET' || !req.path.endsWith(victim)) return undefined;
      stalled = true;
      return { kind: 'stall-mid-body', afterBytes: 600 };
    });
    const started = Date.now();
    const r = await smart(['pull', `docker://${proxy.host}/lib/basic:1`, `rootfs:${path.join(work, 'stalled')}`, '--stall-timeout', '2'], { cacheHome: await tempDir() });
    expect(r.code, r.stderr).toBe(0);
    expect(Date.now() - started).toBeLessThan(20_000); // the stall timeout (2 s) plus a wide margin: it did not hang
    const gets = proxy.stats.requests.filter((q) => q.method === 'GET' && q.path.endsWith(victim));
    expect(gets.length).toBe(2);
    expect(gets[1]!.responseBytes).toBe(fx.basic.layers[0]!.size - 600); // resumed with a Range, not restarted
    expect(r.stderr).toMatch(/warning: registry 127\.0\.0\.1:\d+ stalled: no data for 2 s .*resuming from byte 600/);
  });

  it('gives up with a clear error when --timeout is reached against a registry that never answers', async () => {
    const port = await freePort();
    const sockets: net.Socket[] = [];
    const silent = net.createServer((s) => sockets.push(s)); // accepts, never answers
    await new Promise<void>((r) => silent.listen(port, '127.0.0.1', r));
    try {
      const started = Date.now();
      const r = await smart(['pull', `docker://127.0.0.1:${port}/x/y:1`, `rootfs:${path.join(work, 'never')}`, '--timeout', '3']);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/smart: error \[[A-Z_]+\]: timed out after 3 s/);
      expect(Date.now() - started).toBeLessThan(15_000);
    } finally {
      for (const s of sockets) s.destroy();
      await new Promise((r) => silent.close(r));
    }
  });

  it('Ctrl-C in the middle of a push and of a pull: exit 130, nothing half-written, the next run completes', async () => {
    const fx = fixtures();
    const interrupt = async (args: string[], env: NodeJS.ProcessEnv = {}) => {
      const child = spawn(process.execPath, [smartBin, ...args], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env } });
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const code = new Promise<number | null>((resolve) => child.once('close', (c) => resolve(c)));
      // Up to 20 s (not 5): a Ctrl-C before the run has started its work (and its handler) is another test.
      for (let i = 0; i < 800 && !proxy.stats.requests.some((q) => q.fault === 'stall-mid-body' || q.fault === 'delay'); i++) await new Promise((r) => setTimeout(r, 25));
      child.kill('SIGINT');
      return { code: await code, stderr };
    };
    // Push: the upload of one blob hangs; Ctrl-C.
    proxy.setFaults((req) => (carriesBlobBytes(req) ? { kind: 'delay', ms: 60_000 } : undefined));
    const pushed = await interrupt(['push', `oci:${fx.paths.ociBasic}:latest`, `docker://${proxy.host}/sig/app:1`]);
    expect(pushed.code).toBe(130);
    expect(pushed.stderr).toMatch(/smart: error \[[A-Z_]+\]: interrupted/);
    expect((await rawRequest(`${upstream.url}/v2/sig/app/manifests/1`, { method: 'HEAD' })).status).toBe(404); // no tag
    proxy.setFaults(undefined);
    await push(`oci:${fx.paths.ociBasic}:latest`, `docker://${proxy.host}/sig/app:1`);

    // Pull into a root filesystem: one blob hangs; Ctrl-C.
    const cacheHome = await tempDir();
    const parent = path.join(work, 'sigpull');
    await fs.mkdir(parent);
    proxy.stats.clear();
    proxy.setFaults((req) => (req.method === 'GET' && req.path.endsWith(fx.basic.layers[1]!.digest) ? { kind: 'stall-mid-body', afterBytes: 10 } : undefined));
    const pulled = await interrupt(['pull', `docker://${proxy.host}/sig/app:1`, `rootfs:${path.join(parent, 'root')}`], { XDG_CACHE_HOME: cacheHome });
    expect(pulled.code).toBe(130);
    expect(await fs.readdir(parent)).toEqual([]); // no destination, no staging directory
    expect((await listAll(path.join(cacheHome, 'smartlayer', 'layer-store', 'tmp'))).length).toBe(0);
    proxy.setFaults(undefined);
    const again = await smart(['pull', `docker://${proxy.host}/sig/app:1`, `rootfs:${path.join(parent, 'root')}`], { cacheHome });
    expect(again.code, again.stderr).toBe(0);
  });

  it('copies a multi-platform index between registries, keeping the index digest and every manifest digest', async () => {
    const fx = fixtures();
    const target = await startRegistry({ configDir: work });
    try {
      const r = await smart(['push', `docker://${upstream.host}/lib/multi:1`, `docker://${target.host}/copy/multi:1`, '--all-platforms', '--json']);
      expect(r.code, r.stderr).toBe(0);
      expect((JSON.parse(r.stdout.toString()) as { manifestDigest: string }).manifestDigest).toBe(fx.multi.manifest.digest);
      const head = await rawRequest(`${target.url}/v2/copy/multi/manifests/1`, { method: 'HEAD', headers: { accept: 'application/vnd.oci.image.index.v1+json' } });
      expect(head.headers['docker-content-digest']).toBe(fx.multi.manifest.digest);
      for (const p of Object.values(fx.multi.platforms)) {
        const child = await rawRequest(`${target.url}/v2/copy/multi/manifests/${p.manifest.digest}`, { method: 'HEAD', headers: { accept: p.manifest.mediaType } });
        expect(child.status).toBe(200);
      }
      // Unchanged: a second copy is one manifest request and sends nothing.
      const again = await smart(['push', `docker://${upstream.host}/lib/multi:1`, `docker://${target.host}/copy/multi:1`, '--all-platforms', '--json']);
      expect(JSON.parse(again.stdout.toString())).toMatchObject({ layers: { pushed: 0 } });
    } finally {
      await target.stop();
    }
  });
});
