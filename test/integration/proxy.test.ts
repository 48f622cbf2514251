/**
 * A registry reached through an HTTP proxy named by the environment (HTTPS_PROXY, HTTP_PROXY,
 * NO_PROXY), as a CI runner behind a corporate proxy gives it to every tool. The registry is named
 * `registry.smartlayer.test`, a name only the proxy resolves (test/harness/forward-proxy.ts): an
 * image that arrives went through it. skopeo, talking to the registry directly, is the oracle.
 */
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixtures } from '../harness/fixtures.js';
import { startForwardProxy, type RunningForwardProxy } from '../harness/forward-proxy.js';
import { freePort } from '../harness/ports.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { startS3, type RunningS3 } from '../harness/s3.js';
import { runOk, smart, type RunResult } from '../harness/run.js';
import { certDirFor, makeTestCA } from '../harness/tls.js';
import { haveTools } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';

const NAME = 'registry.smartlayer.test';
const S3_NAME = 's3.smartlayer.test';
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
