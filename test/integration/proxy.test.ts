/**
 * A registry reached through an HTTP proxy named by the environment (HTTPS_PROXY, HTTP_PROXY,
 * NO_PROXY), as a CI runner behind a corporate proxy gives it to every tool. The registry is named
 * `registry.smartlayer.test`, a name only the proxy resolves (test/harness/forward-proxy.ts): an
 * image that arrives went through it. skopeo, talking to the registry directly, is the oracle.
 */
import fs from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixtures } from '../harness/fixtures.js';
import { startForwardProxy, type RunningForwardProxy } from '../harness/forward-proxy.js';
import { writeHtpasswd } from '../harness/htpasswd.js';
import { freePort } from '../harness/ports.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { startS3, type RunningS3 } from '../harness/s3.js';
import { runOk, smart, type RunResult } from '../harness/run.js';
import { certDirFor, makeTestCA, startTlsFront } from '../harness/tls.js';
import { haveTools } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';

const NAME = 'registry.smartlayer.test';
const S3_NAME = 's3.smartlayer.test';
const STORAGE_NAME = 'storage.smartlayer.test';
const SECRET = 'proxy-secret-3f9a';

/** The manifest digest skopeo reads for `ref` straight from the registry (no proxy). */
async function skopeoDigest(ref: string, certDir?: string): Promise<string> {
  const tls = certDir ? ['--cert-dir', certDir] : ['--tls-verify=false'];
  const r = await runOk('skopeo', ['inspect', ...tls, '--format', '{{.Digest}}', `docker://${ref}`], { env: { ...process.env, HTTPS_PROXY: '', HTTP_PROXY: '' } });
  return r.stdout.toString().trim();
}

function oneError(r: RunResult): string {
  expect(r.code, r.stderr).toBe(1);
  const lines = r.stderr.split('\n').filter((l) => l.trim() && !l.startsWith('warning: '));
  expect(lines, r.stderr).toHaveLength(1);
  return lines[0]!;
}

describe.skipIf(!haveTools('docker-registry', 'skopeo', 'openssl'))('a registry through an HTTP proxy from the environment', () => {
  let work: string;
  let secure: RunningRegistry;
  let plain: RunningRegistry;
  let proxy: RunningForwardProxy;
  let s3: RunningS3;
  let certDir: string;
  let n = 0;
  const cache = () => path.join(work, `cache-${++n}`);
  const noProxyEnv = { HTTPS_PROXY: '', https_proxy: '', HTTP_PROXY: '', http_proxy: '', NO_PROXY: '', no_proxy: '' };

  beforeAll(async () => {
    work = await tempDir('smart-proxy-');
    const ca = await makeTestCA(path.join(work, 'ca'), [NAME]);
    certDir = await certDirFor(ca, path.join(work, 'certs'));
    secure = await startRegistry({ configDir: path.join(work, 'secure'), tls: { certFile: ca.certFile, keyFile: ca.keyFile, caFile: ca.caCertFile } });
    plain = await startRegistry({ configDir: path.join(work, 'plain') });
    s3 = await startS3(path.join(work, 's3'));
    proxy = await startForwardProxy({ hosts: { [NAME]: '127.0.0.1', [S3_NAME]: '127.0.0.1' }, credentials: `smart:${SECRET}` });
  }, 60_000);

  afterAll(async () => {
    await proxy?.stop();
    await secure?.stop();
    await plain?.stop();
    await s3?.stop();
  });

  const viaProxy = (credentials = `smart:${SECRET}`) => ({ ...noProxyEnv, HTTPS_PROXY: `http://${credentials}@127.0.0.1:${proxy.port}`, HTTP_PROXY: `http://${credentials}@127.0.0.1:${proxy.port}` });

  it('pushes and pulls over TLS through the CONNECT tunnel, the certificate checked against the registry name', async () => {
    const fx = fixtures();
    proxy.seen.length = 0;
    const ref = `${NAME}:${secure.port}/team/app:1`;
    const push = await smart(['push', '--cert-dir', certDir, `oci:${fx.paths.ociBasic}:latest`, `docker://${ref}`], { cacheHome: cache(), env: viaProxy() });
    expect(push.code, push.stderr).toBe(0);
    expect(push.stderr).not.toContain(SECRET);
    // What skopeo reads straight from the registry is the image pushed.
    expect(await skopeoDigest(`127.0.0.1:${secure.port}/team/app:1`, certDir)).toBe(fx.basic.manifest.digest);
    const out = path.join(work, 'pulled');
    const pull = await smart(['pull', '--json', '--cert-dir', certDir, `docker://${ref}`, `oci:${out}:v1`], { cacheHome: cache(), env: viaProxy() });
    expect(pull.code, pull.stderr).toBe(0);
    expect(JSON.parse(pull.stdout.toString()).manifestDigest).toBe(fx.basic.manifest.digest);
    // Every connection was a tunnel to the registry's name, none went elsewhere.
    expect(proxy.seen.length).toBeGreaterThan(0);
    expect(new Set(proxy.seen)).toEqual(new Set([`CONNECT ${NAME}:${secure.port}`]));
  });

  it('asks for a plain-HTTP registry in absolute form, after the TLS attempt through the tunnel finds none', async () => {
    const fx = fixtures();
    proxy.seen.length = 0;
    const ref = `${NAME}:${plain.port}/team/plain:1`;
    const push = await smart(['push', '--insecure-registry', `${NAME}:${plain.port}`, `oci:${fx.paths.ociBasic}:latest`, `docker://${ref}`], { cacheHome: cache(), env: viaProxy() });
    expect(push.code, push.stderr).toBe(0);
    expect(await skopeoDigest(`127.0.0.1:${plain.port}/team/plain:1`)).toBe(fx.basic.manifest.digest);
    expect(proxy.seen).toContain(`PUT http://${NAME}:${plain.port}/v2/team/plain/manifests/1`);
    expect(proxy.seen.every((s) => s === `CONNECT ${NAME}:${plain.port}` || s.includes(` http://${NAME}:${plain.port}/v2/`)), proxy.seen.join('\n')).toBe(true);
    // Not allowed plain HTTP: refused, said plainly (not OpenSSL's error queue), with the flag that allows it.
    const refused = await smart(['push', `oci:${fx.paths.ociBasic}:latest`, `docker://${NAME}:${plain.port}/team/plain:2`], { cacheHome: cache(), env: viaProxy() });
    expect(oneError(refused)).toBe(
      `smart: error [REGISTRY]: cannot reach registry ${NAME}:${plain.port}: EPROTO the server answered in plain HTTP, not TLS (ping ${NAME}:${plain.port}) (a registry without TLS is reached with --insecure-registry ${NAME}:${plain.port})`,
    );
  });

  it('a proxy that tunnels to port 443 alone: a registry allowed plain HTTP is asked in absolute form, as skopeo asks it', async () => {
    const fx = fixtures();
    const strict = await startForwardProxy({ hosts: { [NAME]: '127.0.0.1' }, connectPorts: [443] });
    try {
      const env = { ...noProxyEnv, HTTPS_PROXY: strict.url, HTTP_PROXY: strict.url };
      const ref = `${NAME}:${plain.port}/team/strict:1`;
      const push = await smart(['push', '--insecure-registry', `${NAME}:${plain.port}`, `oci:${fx.paths.ociBasic}:latest`, `docker://${ref}`], { cacheHome: cache(), env });
      expect(push.code, push.stderr).toBe(0);
      expect(await skopeoDigest(`127.0.0.1:${plain.port}/team/strict:1`)).toBe(fx.basic.manifest.digest);
      expect(strict.seen[0]).toBe(`CONNECT ${NAME}:${plain.port}`);
      expect(strict.seen).toContain(`PUT http://${NAME}:${plain.port}/v2/team/strict/manifests/1`);
      // Not allowed plain HTTP, the registry is not asked so: the proxy's refusal, in one line.
      const refused = await smart(['push', `oci:${fx.paths.ociBasic}:latest`, `docker://${ref}`], { cacheHome: cache(), env });
      expect(oneError(refused)).toMatch(/^smart: error \[REGISTRY\]: cannot reach registry .*refused CONNECT .*403 Forbidden/);
    } finally {
      await strict.stop();
    }
  });

  it('reaches S3 through it too, each connection tunnelled to the endpoint', async () => {
    const fx = fixtures();
    proxy.seen.length = 0;
    const env = { ...s3.env, ...viaProxy(), AWS_ENDPOINT_URL: `http://${S3_NAME}:${s3.port}`, AWS_ENDPOINT_URL_S3: '' };
    const push = await smart(['push', '--json', `oci:${fx.paths.ociBasic}:latest`, `s3://${s3.bucket}#proxied/app:1`], { cacheHome: cache(), env });
    expect(push.code, push.stderr).toBe(0);
    expect(new Set(proxy.seen)).toEqual(new Set([`CONNECT ${S3_NAME}:${s3.port}`]));
    // Read back straight from the endpoint, no proxy: the image is there.
    const back = await smart(['pull', '--json', `s3://${s3.bucket}#proxied/app:1`, `oci:${work}/from-s3:v1`], { cacheHome: cache(), env: { ...s3.env, ...noProxyEnv } });
    expect(back.code, back.stderr).toBe(0);
    expect(JSON.parse(back.stdout.toString()).manifestDigest).toBe(fx.basic.manifest.digest);
  });

  it('never proxies loopback, and NO_PROXY names what goes straight', async () => {
    const fx = fixtures();
    const dead = `http://127.0.0.1:${await freePort()}`;
    // The proxy named is down: a push that touched it would fail.
    const loopback = await smart(['push', `oci:${fx.paths.ociBasic}:latest`, `docker://${plain.host}/team/direct:1`], { cacheHome: cache(), env: { ...noProxyEnv, HTTPS_PROXY: dead, HTTP_PROXY: dead } });
    expect(loopback.code, loopback.stderr).toBe(0);
    // NO_PROXY takes the registry's name off the proxy: it is then looked up directly, where it is no name at all.
    proxy.seen.length = 0;
    const direct = await smart(['pull', '--cert-dir', certDir, `docker://${NAME}:${secure.port}/team/app:1`, `oci:${work}/direct:v1`], {
      cacheHome: cache(),
      env: { ...viaProxy(), NO_PROXY: 'example.com, .smartlayer.test' },
    });
    expect(oneError(direct)).toMatch(new RegExp(`^smart: error \\[REGISTRY\\]: cannot reach registry ${NAME}:${secure.port}: (ENOTFOUND|EAI_AGAIN) `));
    expect(proxy.seen).toEqual([]);
  });

  it('a proxy that refuses or is down: one line naming it, never its credentials', async () => {
    const fx = fixtures();
    const ref = `docker://${NAME}:${secure.port}/team/app:1`;
    const refused = await smart(['pull', '--cert-dir', certDir, ref, `oci:${work}/refused:v1`], { cacheHome: cache(), env: viaProxy('smart:wrong-password') });
    const line = oneError(refused);
    expect(line).toMatch(new RegExp(`^smart: error \\[REGISTRY\\]: cannot reach registry ${NAME}:${secure.port}: EPROXY the proxy http://127\\.0\\.0\\.1:${proxy.port} refused CONNECT ${NAME}:${secure.port}: HTTP/1\\.1 407 `));
    expect(refused.stderr).not.toMatch(/wrong-password|smart:wrong/);
    const port = await freePort();
    const down = await smart(['push', `oci:${fx.paths.ociBasic}:latest`, ref], { cacheHome: cache(), env: { ...noProxyEnv, HTTPS_PROXY: `http://smart:${SECRET}@127.0.0.1:${port}` } });
    expect(oneError(down)).toMatch(new RegExp(`^smart: error \\[REGISTRY\\]: cannot reach registry ${NAME}:${secure.port}: ECONNREFUSED through the proxy http://127\\.0\\.0\\.1:${port}: connection refused \\(`));
    expect(down.stderr).not.toContain(SECRET);
    const socks = await smart(['push', `oci:${fx.paths.ociBasic}:latest`, ref], { cacheHome: cache(), env: { ...noProxyEnv, HTTPS_PROXY: 'socks5://127.0.0.1:1080' } });
    expect(oneError(socks)).toMatch(/^smart: error \[UNSUPPORTED\]: HTTPS_PROXY: a socks5 proxy is not supported/);
  });
});

/**
 * A registry served in plain HTTP behind a load balancer that ends TLS, keeps the Host and adds no
 * X-Forwarded-Proto: the stock registry then builds its upload Locations on the scheme it was
 * reached by, `http://NAME:PORT/v2/…`, where the client reached it over TLS. Its name resolves only
 * in the proxy, which logs every plain-HTTP request it is asked to forward: a request that went in
 * clear text, credentials and bytes with it, is there.
 */
describe.skipIf(!haveTools('docker-registry', 'openssl', 'htpasswd'))('a registry behind a TLS terminator that does not say so (no X-Forwarded-Proto)', () => {
  const PASSWORD = 'behind-tls-s3cret';
  let work: string;
  let certDir: string;
  let proxy: RunningForwardProxy;
  let registry: RunningRegistry;
  let relative: RunningRegistry;
  let faults: RunningProxy;
  const fronts: { stop(): Promise<void> }[] = [];
  /** `NAME:PORT` of the TLS front of each: the registry's, the registry's with relativeurls, and the registry's behind `faults`. */
  let direct: string;
  let relativeName: string;
  let faulty: string;
  let n = 0;
  const cache = () => path.join(work, `cache-${++n}`);
  const env = () => ({ HTTPS_PROXY: proxy.url, HTTP_PROXY: proxy.url, https_proxy: '', http_proxy: '', NO_PROXY: '', no_proxy: '' });
  /** What the proxy forwarded in plain HTTP (not a CONNECT tunnel). */
  const plainRequests = () => proxy.seen.filter((s) => !s.startsWith('CONNECT '));

  beforeAll(async () => {
    work = await tempDir('smart-behind-tls-');
    const ca = await makeTestCA(path.join(work, 'ca'), [NAME]);
    certDir = await certDirFor(ca, path.join(work, 'certs'));
    const htpasswd = path.join(work, 'htpasswd');
    await writeHtpasswd(htpasswd, { alice: PASSWORD });
    const auth = { htpasswd: { realm: 'behind-tls', path: htpasswd } };
    [registry, relative] = await Promise.all([
      startRegistry({ configDir: path.join(work, 'registry'), auth }),
      startRegistry({ configDir: path.join(work, 'relative'), auth, relativeUrls: true }),
    ]);
    faults = await startProxy({ target: registry.url });
    const [a, b, c] = await Promise.all([startTlsFront(ca, registry.port), startTlsFront(ca, relative.port), startTlsFront(ca, faults.port)]);
    fronts.push(a, b, c);
    [direct, relativeName, faulty] = [`${NAME}:${a.port}`, `${NAME}:${b.port}`, `${NAME}:${c.port}`];
    proxy = await startForwardProxy({ hosts: { [NAME]: '127.0.0.1', [STORAGE_NAME]: '127.0.0.1' } });
    // The image the pulls read, pushed on loopback (plain HTTP allowed there).
    const seeded = await smart(['push', `oci:${fixtures().paths.ociBasic}:latest`, `docker://${registry.host}/team/app:1`, '--creds', `alice:${PASSWORD}`], { cacheHome: cache() });
    expect(seeded.code, seeded.stderr).toBe(0);
  }, 60_000);

  afterAll(async () => {
    await proxy?.stop();
    for (const f of fronts) await f.stop();
    await faults?.stop();
    await registry?.stop();
    await relative?.stop();
  });

  it("a push is refused at the upload's plain-HTTP Location, before its credentials or bytes are sent, naming the registry's two fixes", async () => {
    proxy.seen.length = 0;
    const push = await smart(['push', '--cert-dir', certDir, '--creds', `alice:${PASSWORD}`, `oci:${fixtures().paths.ociBasic}:latest`, `docker://${direct}/team/pushed:1`], { cacheHome: cache(), env: env() });
    // Nothing went in clear text: no request forwarded but the tunnels.
    expect(proxy.seen.length).toBeGreaterThan(0);
    expect(plainRequests()).toEqual([]);
    expect(push.stderr).not.toContain(PASSWORD);
    expect(oneError(push)).toMatch(
      new RegExp(
        `^smart: error \\[REGISTRY\\]: registry ${direct} answered a plain-HTTP URL \\(http://${direct}\\) for (PUT|PATCH) upload of .* to team/pushed, though it is reached over TLS: refused, neither credentials nor data sent ` +
          `\\(a proxy in front of it ends TLS without telling it: set http\\.relativeurls: true in the registry's config, or have the proxy send X-Forwarded-Proto: https\\)$`,
      ),
    );
    // Nothing was tagged.
    const tags = await fetch(`${registry.url}/v2/team/pushed/tags/list`, { headers: { authorization: `Basic ${Buffer.from(`alice:${PASSWORD}`).toString('base64')}` } });
    expect(tags.status).toBe(404);
  });

  it('with http.relativeurls: true (the fix named) the same push and its pull go over TLS alone', async () => {
    const fx = fixtures();
    proxy.seen.length = 0;
    const ref = `docker://${relativeName}/team/pushed:1`;
    const push = await smart(['push', '--cert-dir', certDir, '--creds', `alice:${PASSWORD}`, `oci:${fx.paths.ociBasic}:latest`, ref], { cacheHome: cache(), env: env() });
    expect(push.code, push.stderr).toBe(0);
    const pull = await smart(['pull', '--json', '--cert-dir', certDir, '--creds', `alice:${PASSWORD}`, ref, `oci:${path.join(work, 'relative-pulled')}:1`], { cacheHome: cache(), env: env() });
    expect(pull.code, pull.stderr).toBe(0);
    expect(JSON.parse(pull.stdout.toString()).manifestDigest).toBe(fx.basic.manifest.digest);
    expect(new Set(proxy.seen)).toEqual(new Set([`CONNECT ${relativeName}`]));
  });

  it('a blob redirect to plain HTTP: refused on the registry\'s own name; followed to another host, which gets no credentials (as containers/image follows it)', async () => {
    const fx = fixtures();
    // A storage host serving the fixture's blobs in plain HTTP, recording the Authorization it is sent.
    const sent: (string | undefined)[] = [];
    const storage = http.createServer((req, res) => {
      sent.push(req.headers.authorization);
      fs.readFile(path.join(fx.paths.ociBasic, 'blobs/sha256', (req.url ?? '').split('/').pop()!)).then(
        (bytes) => res.end(bytes),
        () => res.writeHead(404).end(),
      );
    });
    await new Promise<void>((r) => storage.listen(0, '127.0.0.1', r));
    let target = faulty;
    faults.setFaults((req) => {
      const m = /\/blobs\/sha256:([0-9a-f]{64})$/.exec(req.path);
      return req.method === 'GET' && m ? { kind: 'status', status: 307, headers: { location: `http://${target}/blobs/${m[1]}` }, body: '' } : undefined;
    });
    try {
      const ref = `docker://${faulty}/team/app:1`;
      proxy.seen.length = 0;
      const own = await smart(['pull', '--cert-dir', certDir, '--creds', `alice:${PASSWORD}`, ref, `oci:${path.join(work, 'own')}:1`], { cacheHome: cache(), env: env() });
      expect(plainRequests()).toEqual([]);
      expect(oneError(own)).toMatch(new RegExp(`^smart: error \\[REGISTRY\\]: registry ${faulty} answered a plain-HTTP URL \\(http://${faulty}\\) for GET blob sha256:[0-9a-f]{64} of team/app, though it is reached over TLS: refused,`));
      target = `${STORAGE_NAME}:${(storage.address() as AddressInfo).port}`;
      proxy.seen.length = 0;
      const elsewhere = await smart(['pull', '--json', '--cert-dir', certDir, '--creds', `alice:${PASSWORD}`, ref, `oci:${path.join(work, 'elsewhere')}:1`], { cacheHome: cache(), env: env() });
      expect(elsewhere.code, elsewhere.stderr).toBe(0);
      expect(JSON.parse(elsewhere.stdout.toString()).manifestDigest).toBe(fx.basic.manifest.digest);
      expect(sent).toHaveLength(fx.basic.layers.length + 1); // the layers and the config
      expect(sent.every((h) => h === undefined)).toBe(true);
      expect(plainRequests().every((s) => s.startsWith(`GET http://${target}/blobs/`)), proxy.seen.join('\n')).toBe(true);
    } finally {
      faults.setFaults(undefined);
      await new Promise((r) => storage.close(r));
    }
  });

  it("an upload's Location on another host in plain HTTP is refused too: the layer's bytes would go in clear text", async () => {
    const elsewhere = `${STORAGE_NAME}:${await freePort()}`;
    faults.setFaults((req) =>
      req.method === 'POST' && req.path.endsWith('/blobs/uploads/') ? { kind: 'status', status: 202, headers: { location: `http://${elsewhere}/upload/1` }, body: '' } : undefined,
    );
    try {
      proxy.seen.length = 0;
      const push = await smart(['push', '--cert-dir', certDir, '--creds', `alice:${PASSWORD}`, `oci:${fixtures().paths.ociBasic}:latest`, `docker://${faulty}/team/elsewhere:1`], { cacheHome: cache(), env: env() });
      expect(plainRequests()).toEqual([]);
      expect(oneError(push)).toMatch(
        new RegExp(
          `^smart: error \\[REGISTRY\\]: registry ${faulty} answered a plain-HTTP URL \\(http://${elsewhere}\\) for PUT upload of .* to team/elsewhere: refused, nothing sent ` +
            `\\(plain HTTP goes only to loopback and to hosts named with --insecure-registry: if ${elsewhere} is trusted on this network, name it so\\)$`,
        ),
      );
    } finally {
      faults.setFaults(undefined);
    }
  });
});
