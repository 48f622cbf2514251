/**
 * `s3://`: a registry's storage in S3, written and read directly. The stock registry on its S3
 * driver serves what we wrote into the bucket, skopeo pulls it byte for byte, and images move
 * between s3:, file: and docker:// in every direction keeping their digests.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { gzipSync } from 'node:zlib';
import { GetObjectCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { sha256Digest } from '../../src/oci/digest.js';
import { fixtures } from '../harness/fixtures.js';
import { writeLayout } from '../harness/images.js';
import { blobFiles } from '../harness/layout.js';
import { startProxy } from '../harness/proxy.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { runOk, smart, smartBin, testCacheHome } from '../harness/run.js';
import { freePort } from '../harness/ports.js';
import { registryS3Config, startS3, type RunningS3 } from '../harness/s3.js';
import { haveTools } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';

interface Summary {
  manifestDigest: string;
  layers: { total: number; pushed: number; skipped: number };
}


describe.skipIf(!haveTools('docker-registry', 'skopeo'))('s3:// registry storage', () => {
  let work: string;
  let s3: RunningS3;
  let s3Registry: RunningRegistry;
  let plainRegistry: RunningRegistry;

  const run = (args: string[], options: { input?: Buffer; cacheHome?: string } = {}) => smart(args, { ...options, env: s3.env });
  const ok = async (args: string[], options: { input?: Buffer; cacheHome?: string } = {}): Promise<Summary> => {
    const r = await run([...args, '--json'], options);
    expect(r.code, r.stderr).toBe(0);
    return JSON.parse(r.stdout.toString()) as Summary;
  };
  const keys = async (prefix: string): Promise<string[]> => {
    const out = await s3.client().send(new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: prefix }));
    return (out.Contents ?? []).map((o) => o.Key!);
  };

  beforeAll(async () => {
    work = await tempDir();
    s3 = await startS3(path.join(work, 's3'));
    // The registry's S3 driver on the same bucket: the storage section without its header and indent.
    const storageYaml = registryS3Config(s3, '/').slice(1).map((l) => l.replace(/^ {2}/, ''));
    await fs.mkdir(path.join(work, 'reg-s3'));
    await fs.mkdir(path.join(work, 'reg-plain'));
    s3Registry = await startRegistry({ configDir: path.join(work, 'reg-s3'), storageYaml });
    plainRegistry = await startRegistry({ configDir: path.join(work, 'reg-plain') });
  });

  afterAll(async () => {
    await s3Registry?.stop();
    await plainRegistry?.stop();
    await s3?.stop();
  });

  it('writes the registry layout into the bucket; the registry on S3 serves it and skopeo pulls it byte for byte', async () => {
    const fx = fixtures();
    const pushed = await ok(['push', `oci:${fx.paths.ociBasic}:latest`, `s3://${s3.bucket}#demo/basic:v1`]);
    expect(pushed.manifestDigest).toBe(fx.basic.manifest.digest);
    expect(await keys('docker/registry/v2/repositories/demo/basic/_manifests/tags/v1/current/link')).toHaveLength(1);
    expect(await keys('docker/registry/v2/repositories/demo/basic/_uploads/')).toEqual([]);

    const out = path.join(work, 'skopeo-out');
    await runOk('skopeo', ['--insecure-policy', 'copy', '--src-tls-verify=false', `docker://${s3Registry.host}/demo/basic:v1`, `oci:${out}:v1`]);
    const original = await blobFiles(fx.paths.ociBasic);
    const theirs = await blobFiles(out);
    expect([...theirs.keys()].sort()).toEqual([...original.keys()].sort());
    for (const [hex, bytes] of theirs) expect(bytes.equals(original.get(hex)!), hex).toBe(true);

    const back = path.join(work, 'smart-out');
    expect((await ok(['pull', `s3://${s3.bucket}#demo/basic:v1`, `oci:${back}:v1`])).manifestDigest).toBe(fx.basic.manifest.digest);
    for (const [hex, bytes] of await blobFiles(back)) expect(bytes.equals(original.get(hex)!), hex).toBe(true);

    const again = await ok(['push', `oci:${fx.paths.ociBasic}:latest`, `s3://${s3.bucket}#demo/basic:v1`]);
    expect(again.layers).toMatchObject({ pushed: 0, skipped: 3 });
  });

  it('takes an OCI archive from a pipe, its manifest kept: the registry on S3 serves it to skopeo', async () => {
    const fx = fixtures();
    const pushed = await ok(['push', 'oci-archive:-', `s3://${s3.bucket}#demo/streamed:v1`], { input: await fs.readFile(fx.paths.ociArchiveBasic) });
    expect(pushed).toMatchObject({ manifestDigest: fx.basic.manifest.digest, layers: { total: 3 } });
    const digest = (await runOk('skopeo', ['inspect', '--no-tags', '--tls-verify=false', '--format', '{{.Digest}}', `docker://${s3Registry.host}/demo/streamed:v1`])).stdout.toString().trim();
    expect(digest).toBe(fx.basic.manifest.digest);
    const again = await ok(['push', 'oci-archive:-', `s3://${s3.bucket}#demo/streamed:v2`], { input: await fs.readFile(fx.paths.ociArchiveBasic) });
    expect(again.layers).toMatchObject({ pushed: 0, skipped: 3 });
  });

  it('moves an image between s3:, file: and docker:// in every direction, keeping its digest', async () => {
    const fx = fixtures();
    const digest = fx.basic.manifest.digest;
    const store = path.join(work, 'file-store');
    const reg = plainRegistry.host;
    const hops: [string, string][] = [
      [`oci:${fx.paths.ociBasic}:latest`, `s3://${s3.bucket}/nested/root#hop/a:1`],
      [`s3://${s3.bucket}/nested/root#hop/a:1`, `file:${store}#hop/b:1`],
      [`file:${store}#hop/b:1`, `s3://${s3.bucket}/nested/root#hop/c:1`],
      [`s3://${s3.bucket}/nested/root#hop/c:1`, `docker://${reg}/hop/d:1`],
      [`docker://${reg}/hop/d:1`, `s3://${s3.bucket}/nested/root#hop/e:1`],
      [`file:${store}#hop/b:1`, `docker://${reg}/hop/f:1`],
      [`docker://${reg}/hop/f:1`, `file:${store}#hop/g:1`],
    ];
    for (const [src, dest] of hops) {
      const r = await ok(['push', src, dest]);
      expect(r.manifestDigest, `${src} → ${dest}`).toBe(digest);
    }
    // Into a root filesystem, twice: the second pull reads the blobs the first kept (where the
    // layers were not kept unpacked: a filesystem that clones), none from the bucket.
    const cacheHome = await tempDir();
    const pulls: { details: { kept?: unknown; blobs?: unknown } }[] = [];
    for (const tree of ['from-s3', 'from-s3-again']) {
      const rootfs = path.join(work, tree);
      const r = await run(['pull', '--json', `s3://${s3.bucket}/nested/root#hop/e:1`, `rootfs:${rootfs}`], { cacheHome });
      expect(r.code, r.stderr).toBe(0);
      expect(await fs.readFile(path.join(rootfs, 'etc/app.conf'), 'utf8')).toBe('greeting=hi\n');
      pulls.push(JSON.parse(r.stdout.toString()) as (typeof pulls)[number]);
    }
    const layers = fx.basic.layers.length;
    if (pulls[0]!.details.kept === undefined) {
      expect(pulls.map((p) => p.details.blobs)).toEqual([
        { read: 0, kept: layers, repaired: 0 },
        { read: layers, kept: 0, repaired: 0 },
      ]);
    }
  });

  it('after a push killed mid-way no tag points at a missing blob; running it again sends only what is missing', async () => {
    const fx = fixtures();
    const cacheHome = await tempDir();
    const archive = await fs.readFile(fx.paths.dockerArchiveBasic);
    const dest = `s3://${s3.bucket}/killed#k/app:v1`;
    const child = spawn(process.execPath, [smartBin, 'push', '-q', 'docker-archive:-', dest], {
      stdio: ['pipe', 'ignore', 'ignore'],
      env: { ...process.env, ...s3.env, XDG_CACHE_HOME: cacheHome },
    });
    const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
    // Everything but the end of the archive: the first layers get pushed, then the push waits.
    child.stdin.write(archive.subarray(0, archive.indexOf(Buffer.from('manifest.json')) - 1536));
    // The three layers are done when the metadata cache holds what they were compressed to.
    const cached = async () => {
      const dir = path.join(cacheHome, 'smartlayer', 'metadata');
      const shards = await fs.readdir(dir).catch(() => [] as string[]);
      let n = 0;
      for (const s of shards) n += (await fs.readdir(path.join(dir, s))).filter((f) => !f.endsWith('.tmp')).length;
      return n;
    };
    for (let i = 0; i < 400 && (await cached()) < 3; i++) await new Promise((r) => setTimeout(r, 50));
    expect(await cached()).toBeGreaterThanOrEqual(3);
    expect((await keys('killed/docker/registry/v2/blobs/')).filter((k) => k.endsWith('/data')).length).toBeGreaterThanOrEqual(3);
    child.kill('SIGKILL');
    await exited;
    expect(await keys('killed/docker/registry/v2/repositories/k/app/_manifests/')).toEqual([]);

    const rerun = await ok(['push', `docker-archive:${fx.paths.dockerArchiveBasic}`, dest], { cacheHome });
    expect(rerun.layers.skipped).toBe(3);
    expect(rerun.layers.pushed).toBe(0);
    expect(await keys('killed/docker/registry/v2/repositories/k/app/_manifests/tags/v1/current/link')).toHaveLength(1);
  });

  it('a layer link cut short (a push killed mid-write into a server that writes objects in place) is written again by the next push', async () => {
    const fx = fixtures();
    const dest = `s3://${s3.bucket}/cut#c/app:v1`;
    await ok(['push', `oci:${fx.paths.ociBasic}:latest`, dest]);
    const links = (await keys('cut/docker/registry/v2/repositories/c/app/_layers/')).filter((k) => k.endsWith('/link'));
    expect(links.length).toBeGreaterThan(0);
    await s3.client().send(new PutObjectCommand({ Bucket: s3.bucket, Key: links[0]!, Body: Buffer.alloc(0) }));
    expect((await run(['store', 'check', `s3://${s3.bucket}/cut`])).code).toBe(1);
    await ok(['push', `oci:${fx.paths.ociBasic}:latest`, dest]);
    const body = await (await s3.client().send(new GetObjectCommand({ Bucket: s3.bucket, Key: links[0]! }))).Body!.transformToString();
    expect(body).toBe(`sha256:${links[0]!.split('/').at(-2)}`);
    const check = await run(['store', 'check', `s3://${s3.bucket}/cut`]);
    expect(check.code, check.stderr).toBe(0);
  });

  it('an upload the endpoint stops reading fails and is sent again instead of hanging; one it refuses fails on one line naming the object', async () => {
    const fx = fixtures();
    const proxy = await startProxy({ target: s3.endpoint });
    try {
      const env = { ...s3.env, AWS_ENDPOINT_URL_S3: proxy.url, AWS_ENDPOINT_URL: proxy.url };
      let stalls = 0;
      // The first two blob uploads of a store of its own (its blobs are not there yet).
      proxy.setFaults((q) => (q.method === 'PUT' && q.path.includes('/blobs/') && stalls++ < 2 ? { kind: 'stall-mid-request', afterBytes: 100 } : undefined));
      const started = Date.now();
      // --timeout: a hang fails the test in bounded time.
      const r = await smart(['push', `oci:${fx.paths.ociBasic}:latest`, `s3://${s3.bucket}/stalled#s/basic:v1`, '--stall-timeout', '2', '--timeout', '60'], { env });
      expect(r.code, r.stderr).toBe(0);
      expect(Date.now() - started).toBeLessThan(40_000);
      expect(proxy.stats.requests.filter((q) => q.fault === 'stall-mid-request')).toHaveLength(2);
      const out = path.join(work, 'stalled-out');
      await ok(['pull', `s3://${s3.bucket}/stalled#s/basic:v1`, `oci:${out}:v1`]);
      const original = await blobFiles(fx.paths.ociBasic);
      for (const [hex, bytes] of await blobFiles(out)) expect(bytes.equals(original.get(hex)!), hex).toBe(true);

      // An answer the SDK cannot parse (not S3's XML): the status, not the parser's two-line complaint.
      proxy.setFaults((q) => (q.method === 'PUT' ? { kind: 'status', status: 400 } : undefined));
      const refused = await smart(['push', `oci:${fx.paths.ociBasic}:latest`, `s3://${s3.bucket}/refused#r/basic:v1`], { env });
      expect(refused.code).toBe(1);
      expect(refused.stderr).toMatch(/^smart: error \[[A-Z_]+\]: cannot upload s3:\/\/smart-test\/refused\/docker\/registry\/v2\/blobs\/sha256\/[0-9a-f]{2}\/[0-9a-f]{64}\/data: HTTP 400\n$/);
    } finally {
      await proxy.stop();
    }
  });

  it('names the bucket when it is not there', async () => {
    const fx = fixtures();
    const r = await run(['push', `oci:${fx.paths.ociBasic}:latest`, 's3://no-such-bucket#x/y:z']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/smart: error \[[A-Z_]+\]: .*no-such-bucket/);
  });

  it('a push that fails says so in one line: the sweep of leftovers failing for the same cause adds no warning', async () => {
    const fx = fixtures();
    const down = `http://127.0.0.1:${await freePort()}`;
    for (const [dest, extra] of [['s3://no-such-bucket/root#team/app:2', []], [`s3://${s3.bucket}/root#team/app:2`, ['--s3-endpoint', down]]] as const) {
      const r = await run(['push', `oci:${fx.paths.ociBasic}:latest`, dest, ...extra]);
      expect(r.code).toBe(1);
      expect(r.stderr.trim().split('\n'), r.stderr).toEqual([expect.stringMatching(/^smart: error \[STORAGE\]: /)]);
    }
  });
});

// A request that stalled was sent again by the AWS SDK, silently, up to five times, inside each
// of the five attempts of the blob transfer around it: with --stall-timeout 2, a push whose
// endpoint froze mid-upload failed a minute later, its first warning after 23 s, each warning
// saying `no data for 2 s`; a pull frozen from the start failed after 11 s with no warning at all.
// Now the S3 client sends a stalled request again itself, each time told, AWS_MAX_ATTEMPTS times
// in all (5 by default), and nothing above it sends it again.
describe('s3:// with its endpoint frozen (SIGSTOP)', () => {
  const STALL_S = 2;
  const ATTEMPTS = 5;
  let work: string;
  let s3: RunningS3;

  beforeAll(async () => {
    work = await tempDir();
    s3 = await startS3(path.join(work, 's3'));
  });

  afterAll(async () => {
    await s3?.stop();
  });

  /** The warnings of stalled requests, `cannot OP s3://…: no data for 2 s (stalled); …`, by request: the attempts each told. */
  const stallWarnings = (warnings: string[], attempts: number): Map<string, number[]> => {
    const byRequest = new Map<string, number[]>();
    for (const w of warnings) {
      const m = new RegExp(`^(cannot .* s3://\\S+): no data for ${STALL_S} s \\(stalled\\); sending it again in \\d+\\.\\d s \\(attempt (\\d+) of ${attempts}\\)$`).exec(w);
      expect(m, w).not.toBeNull();
      byRequest.set(m![1]!, [...(byRequest.get(m![1]!) ?? []), Number(m![2])]);
    }
    return byRequest;
  };

  it('a push frozen mid-upload fails once each stalled request has had its attempts, each stall told; the layer is not sent again around them', async () => {
    // One layer of 64 MiB that does not compress: eight parts, still going out when the server freezes.
    const layout = path.join(work, 'big');
    const noise = randomBytes(64 * 1024 * 1024);
    await writeLayout(layout, [gzipSync(noise, { level: 0 })], Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: [sha256Digest(noise)] } })));
    const child = spawn(process.execPath, [smartBin, 'push', `oci:${layout}:latest`, `s3://${s3.bucket}/frozen#team/big:1`, '--stall-timeout', String(STALL_S), '--progress', 'json'], {
      env: { ...process.env, XDG_CACHE_HOME: testCacheHome(), CONTAINERS_REGISTRIES_CONF: inject('registriesConf'), ...s3.env },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    const exit = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
    const events: { event?: string; message?: string; error?: { message: string } }[] = [];
    let frozen = false;
    try {
      for await (const line of createInterface({ input: child.stderr! })) {
        if (!line.startsWith('{')) continue;
        const event = JSON.parse(line) as (typeof events)[number];
        events.push(event);
        // Its first bytes are on their way: the server stops answering, its connections stay open.
        if (event.event === 'progress' && !frozen) {
          s3.freeze();
          frozen = true;
        }
      }
      // How long it took is the machine's; that the stalls were not multiplied is what the
      // warnings below say: each request sent at most ATTEMPTS times, no layer sent again around them.
      expect(await exit).toBe(1);
      const warnings = events.filter((e) => e.event === 'warning').map((e) => e.message!);
      // Each stalled request told each time it is sent again (2, 3… of 5: one still going when the
      // push failed has told fewer), and no blob sent again around them (every warning is one of these).
      const told = stallWarnings(warnings, ATTEMPTS);
      for (const [request, attempts] of told) expect(attempts, request).toEqual(Array.from({ length: attempts.length }, (_, i) => i + 2));
      expect([...told.values()].some((attempts) => attempts.length === ATTEMPTS - 1)).toBe(true);
      // The request that spent its attempts first (a part of the layer, the config's link…) is the error.
      const end = events.find((e) => e.event === 'end');
      expect(end?.error?.message).toMatch(new RegExp(`^cannot [a-z ]+ s3://${s3.bucket}/frozen/docker/registry/v2/\\S+: no data for ${STALL_S} s on each of ${ATTEMPTS} attempts \\(stalled\\)$`));
    } finally {
      child.kill('SIGKILL');
      s3.thaw();
    }
  });

  it('a pull frozen from the start: the tag read AWS_MAX_ATTEMPTS times (5 by default), each stall told', async () => {
    const pushed = await smart(['push', `oci:${fixtures().paths.ociBasic}:latest`, `s3://${s3.bucket}/frozen#team/basic:1`], { env: s3.env });
    expect(pushed.code, pushed.stderr).toBe(0);
    const link = `s3://${s3.bucket}/frozen/docker/registry/v2/repositories/team/basic/_manifests/tags/1/current/link`;
    s3.freeze();
    try {
      for (const [maxAttempts, attempts] of [[undefined, ATTEMPTS], ['2', 2]] as const) {
        const r = await smart(['pull', `s3://${s3.bucket}/frozen#team/basic:1`, `oci:${path.join(work, 'out')}:x`, '--stall-timeout', String(STALL_S)], {
          cacheHome: await tempDir(),
          env: { ...s3.env, ...(maxAttempts ? { AWS_MAX_ATTEMPTS: maxAttempts } : {}) },
        });
        expect(r.code).toBe(1);
        const lines = r.stderr.trim().split('\n');
        const told = stallWarnings(lines.filter((l) => l.startsWith('warning: ')).map((l) => l.slice('warning: '.length)), attempts);
        expect([...told]).toEqual([[`cannot read ${link}`, Array.from({ length: attempts - 1 }, (_, i) => i + 2)]]);
        expect(lines.at(-1)).toBe(`smart: error [STORAGE]: cannot read ${link}: no data for ${STALL_S} s on each of ${attempts} attempts (stalled)`);
      }
    } finally {
      s3.thaw();
    }
  });
});
