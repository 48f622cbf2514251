/**
 * Proves the registry test harness against the real programs: the stock registry plain, with TLS
 * and htpasswd, and with Docker token auth (our token server); skopeo pushing and pulling through
 * each; the fault-injecting proxy as a plain HTTP client sees it.
 */
import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixtures } from '../harness/fixtures.js';
import { writeHtpasswd } from '../harness/htpasswd.js';
import { startProxy, type Fault, type RunningProxy } from '../harness/proxy.js';
import { rawRequest, startRegistry, type RawRequestError, type RunningRegistry } from '../harness/registry.js';
import { run, runOk } from '../harness/run.js';
import { certDirFor, makeTestCA, type TestCA } from '../harness/tls.js';
import { startTokenServer, type RunningTokenServer } from '../harness/token-server.js';
import { haveTools } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';

const skopeo = (...args: string[]) => run('skopeo', ['--insecure-policy', ...args]);
const skopeoOk = (...args: string[]) => runOk('skopeo', ['--insecure-policy', ...args]);
const basic = (user: string, password: string) => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
const sha256 = (b: Buffer) => `sha256:${crypto.createHash('sha256').update(b).digest('hex')}`;

async function rejection(p: Promise<unknown>): Promise<RawRequestError> {
  try {
    await p;
  } catch (e) {
    return e as RawRequestError;
  }
  throw new Error('expected the request to fail');
}

/** `Bearer realm="...",service="...",scope="..."` → its parameters. */
function challenge(header: string | string[] | undefined): Record<string, string> {
  const text = String(header ?? '');
  const out: Record<string, string> = {};
  for (const m of text.matchAll(/(\w+)="([^"]*)"/g)) out[m[1]!] = m[2]!;
  out.scheme = text.split(' ')[0] ?? '';
  return out;
}

describe.skipIf(!haveTools('docker-registry', 'skopeo', 'openssl', 'htpasswd'))('registry test harness', () => {
  let work: string;
  let ca: TestCA;
  let certDir: string;
  let plain: RunningRegistry;
  let legacy: RunningRegistry;
  let basicAuth: RunningRegistry;
  let tokens: RunningTokenServer;
  let tokenAuth: RunningRegistry;
  let behind: RunningRegistry;
  let proxy: RunningProxy;
  const stoppers: (() => Promise<void>)[] = [];

  beforeAll(async () => {
    work = await tempDir('smart-harness-');
    ca = await makeTestCA(path.join(work, 'ca'));
    certDir = await certDirFor(ca, path.join(work, 'certs'));
    const tls = { certFile: ca.certFile, keyFile: ca.keyFile, caFile: ca.caCertFile };

    const htpasswd = path.join(work, 'htpasswd');
    await writeHtpasswd(htpasswd, { alice: 'alice-secret', bob: 'b:o:b pass' });

    tokens = await startTokenServer({
      dir: path.join(work, 'token'),
      users: { alice: 'alice-secret', carol: 'carol-secret' },
      // alice: everything under harness/; carol: pull on harness/a only; anonymous: nothing.
      grants: (user, scope) => {
        if (scope.type !== 'repository') return [];
        if (user === 'alice' && scope.name.startsWith('harness/')) return ['pull', 'push'];
        if (user === 'carol' && scope.name === 'harness/a') return ['pull'];
        return [];
      },
    });
    stoppers.push(() => tokens.stop());

    const legacyRoot = path.join(work, 'legacy-root');
    await fs.mkdir(legacyRoot);
    const started = await Promise.all([
      startRegistry({ configDir: work }),
      startRegistry(legacyRoot, work), // the original positional form
      startRegistry({ configDir: work, tls, auth: { htpasswd: { realm: 'harness', path: htpasswd } } }),
      startRegistry({ configDir: work, tls, auth: { token: tokens } }),
      startRegistry({ configDir: work }),
    ]);
    [plain, legacy, basicAuth, tokenAuth, behind] = started as [RunningRegistry, RunningRegistry, RunningRegistry, RunningRegistry, RunningRegistry];
    for (const r of started) stoppers.push(() => r.stop());
    proxy = await startProxy({ target: behind.url });
    stoppers.push(() => proxy.stop());
  });

  afterAll(async () => {
    await Promise.all(stoppers.map((s) => s()));
  });

  it('makes a CA whose server certificate openssl and node verify for 127.0.0.1', async () => {
    await runOk('openssl', ['verify', '-CAfile', ca.caCertFile, ca.certFile]);
    const text = (await runOk('openssl', ['x509', '-in', ca.certFile, '-noout', '-ext', 'subjectAltName'])).stdout.toString();
    expect(text).toContain('IP Address:127.0.0.1');
    expect(text).toContain('DNS:localhost');
    // Without the CA the registry's certificate is refused: TLS is really verified.
    const e = await rejection(rawRequest(`${basicAuth.url}/v2/`));
    expect(e.code).toMatch(/UNABLE_TO_VERIFY_LEAF_SIGNATURE|SELF_SIGNED|UNABLE_TO_GET_ISSUER/);
  });

  it('starts each registry ready, with the URL and answer its mode implies', async () => {
    expect(plain.url).toBe(`http://${plain.host}`);
    expect(legacy.url).toBe(`http://${legacy.host}`);
    expect(legacy.root).toBe(path.join(work, 'legacy-root'));
    expect(basicAuth.url).toBe(`https://${basicAuth.host}`);
    expect(tokenAuth.url).toBe(`https://${tokenAuth.host}`);

    expect((await rawRequest(`${plain.url}/v2/`)).status).toBe(200);
    expect((await rawRequest(`${legacy.url}/v2/`)).status).toBe(200);

    const b = await rawRequest(`${basicAuth.url}/v2/`, { ca: ca.caPem });
    expect(b.status).toBe(401);
    expect(challenge(b.headers['www-authenticate'])).toMatchObject({ scheme: 'Basic', realm: 'harness' });
    expect((await rawRequest(`${basicAuth.url}/v2/`, { ca: ca.caPem, headers: { authorization: basic('alice', 'alice-secret') } })).status).toBe(200);
    expect((await rawRequest(`${basicAuth.url}/v2/`, { ca: ca.caPem, headers: { authorization: basic('bob', 'b:o:b pass') } })).status).toBe(200);
    expect((await rawRequest(`${basicAuth.url}/v2/`, { ca: ca.caPem, headers: { authorization: basic('alice', 'wrong') } })).status).toBe(401);

    const t = await rawRequest(`${tokenAuth.url}/v2/`, { ca: ca.caPem });
    expect(t.status).toBe(401);
    expect(challenge(t.headers['www-authenticate'])).toMatchObject({ scheme: 'Bearer', realm: tokens.realm, service: tokens.service });
  });

  it('skopeo pushes to the plain registry and pulls back the same manifest', async () => {
    const fx = fixtures();
    await skopeoOk('copy', '--dest-tls-verify=false', `oci:${fx.paths.ociBasic}:latest`, `docker://${plain.host}/harness/basic:v1`);
    const m = await rawRequest(`${plain.url}/v2/harness/basic/manifests/v1`, { headers: { accept: fx.basic.manifest.mediaType } });
    expect(m.status).toBe(200);
    expect(sha256(m.body)).toBe(fx.basic.manifest.digest);
  });

  it('takes a storage section as YAML lines, keeping the defaults it does not set', async () => {
    const root = path.join(work, 'yaml-root');
    const r = await startRegistry({ configDir: work, storageYaml: ['filesystem:', `  rootdirectory: ${JSON.stringify(root)}`, 'delete: {enabled: false}'] });
    try {
      expect(r.root).toBe('');
      const fx = fixtures();
      await skopeoOk('copy', '--dest-tls-verify=false', `oci:${fx.paths.ociBasic}:latest`, `docker://${r.host}/harness/yaml:v1`);
      await fs.access(path.join(root, 'docker/registry/v2/repositories/harness/yaml/_manifests/tags/v1/current/link'));
      // delete: {enabled: false} replaced the default: deleting a manifest is unsupported.
      const del = await rawRequest(`${r.url}/v2/harness/yaml/manifests/${fx.basic.manifest.digest}`, { method: 'DELETE' });
      expect(del.status).toBe(405);
      expect(await fs.readFile(r.config, 'utf8')).toContain('cache: {blobdescriptor: inmemory}');
    } finally {
      await r.stop();
    }
    // stopped: the port no longer answers
    await expect(rawRequest(`${r.url}/v2/`)).rejects.toMatchObject({ code: 'ECONNREFUSED' });
  });

  it('proxies an https registry (trusting the CA) and rewrites its https Location URLs', async () => {
    const p = await startProxy({ target: basicAuth.url, ca: ca.caPem });
    try {
      const auth = { authorization: basic('alice', 'alice-secret') };
      expect((await rawRequest(`${p.url}/v2/`, { headers: auth })).status).toBe(200);
      expect((await rawRequest(`${p.url}/v2/`)).status).toBe(401);
      const post = await rawRequest(`${p.url}/v2/harness/via-https/blobs/uploads/`, { method: 'POST', headers: auth });
      expect(post.status).toBe(202);
      expect(post.headers.location).toMatch(new RegExp(`^${p.url}/v2/harness/via-https/blobs/uploads/`));
    } finally {
      await p.stop();
    }
  });

  it('skopeo pushes through TLS + htpasswd with the right credentials only', async () => {
    const fx = fixtures();
    const src = `oci:${fx.paths.ociBasic}:latest`;
    const dest = `docker://${basicAuth.host}/harness/basic:v1`;
    const bad = await skopeo('copy', '--dest-creds', 'alice:wrong', '--dest-cert-dir', certDir, src, dest);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/unauthorized|authentication required|401/i);
    const anon = await skopeo('copy', '--dest-cert-dir', certDir, src, dest);
    expect(anon.code).not.toBe(0);

    await skopeoOk('copy', '--dest-creds', 'alice:alice-secret', '--dest-cert-dir', certDir, src, dest);
    const out = path.join(work, 'pulled-basic-auth');
    await skopeoOk('copy', '--src-creds', 'bob:b:o:b pass', '--src-cert-dir', certDir, `docker://${basicAuth.host}/harness/basic:v1`, `oci:${out}:v1`);
    const index = JSON.parse(await fs.readFile(path.join(out, 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
    expect(index.manifests[0]?.digest).toBe(fx.basic.manifest.digest);
  });

  describe('token auth', () => {
    async function token(user: string | undefined, password: string | undefined, ...scopes: string[]) {
      const q = new URLSearchParams({ service: tokens.service });
      for (const s of scopes) q.append('scope', s);
      if (user) q.set('account', user);
      return rawRequest(`${tokens.realm}?${q}`, user ? { headers: { authorization: basic(user, password!) } } : {});
    }
    const bearer = (body: Buffer) => ({ authorization: `Bearer ${(JSON.parse(body.toString()) as { token: string }).token}` });

    it('issues JWTs in the shape the spec describes, with only the granted actions', async () => {
      const r = await token('carol', 'carol-secret', 'repository:harness/a:pull,push', 'repository:harness/b:pull');
      expect(r.status).toBe(200);
      const body = JSON.parse(r.body.toString()) as { token: string; access_token: string; expires_in: number; issued_at: string };
      expect(body.access_token).toBe(body.token);
      expect(body.expires_in).toBe(300);
      expect(Number.isNaN(Date.parse(body.issued_at))).toBe(false);
      const [h, c] = body.token.split('.').slice(0, 2).map((p) => JSON.parse(Buffer.from(p, 'base64url').toString()) as Record<string, unknown>) as [
        Record<string, unknown>,
        Record<string, unknown>,
      ];
      expect(h).toMatchObject({ typ: 'JWT', alg: 'ES256' });
      expect((h.x5c as string[]).length).toBe(1);
      expect(c).toMatchObject({ iss: tokens.issuer, sub: 'carol', aud: tokens.service, access: [{ type: 'repository', name: 'harness/a', actions: ['pull'] }] });
      expect((c.exp as number) - (c.iat as number)).toBe(300);
      expect(typeof c.jti).toBe('string');
      expect(tokens.requests.at(-1)).toMatchObject({ user: 'carol', scopes: ['repository:harness/a:pull,push', 'repository:harness/b:pull'], status: 200 });

      expect((await token('carol', 'wrong', 'repository:harness/a:pull')).status).toBe(401);
      expect(tokens.requests.at(-1)).toMatchObject({ status: 401 });
      expect((await token('nobody', 'x', 'repository:harness/a:pull')).status).toBe(401);

      // The OAuth2 form (POST, grant_type=password) answers the same way.
      const form = new URLSearchParams({ grant_type: 'password', username: 'carol', password: 'carol-secret', service: tokens.service, scope: 'repository:harness/a:pull', client_id: 'test' });
      const post = await rawRequest(tokens.realm, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: form.toString() });
      expect(post.status).toBe(200);
      expect(tokens.requests.at(-1)).toMatchObject({ method: 'POST', user: 'carol', access: [{ name: 'harness/a', actions: ['pull'] }] });
      form.set('password', 'wrong');
      expect((await rawRequest(tokens.realm, { method: 'POST', body: form.toString() })).status).toBe(401);
    });

    it('the registry accepts a token for the repository it names and refuses it for another', async () => {
      const forA = await token('carol', 'carol-secret', 'repository:harness/a:pull');
      const a = await rawRequest(`${tokenAuth.url}/v2/harness/a/tags/list`, { ca: ca.caPem, headers: bearer(forA.body) });
      expect(a.status, a.body.toString()).toBe(404);
      expect(a.body.toString()).toContain('NAME_UNKNOWN');

      const forB = await token('alice', 'alice-secret', 'repository:harness/b:pull');
      const b = await rawRequest(`${tokenAuth.url}/v2/harness/a/tags/list`, { ca: ca.caPem, headers: bearer(forB.body) });
      expect(b.status).toBe(401);
      expect(challenge(b.headers['www-authenticate'])).toMatchObject({ scheme: 'Bearer', scope: 'repository:harness/a:pull' });

      // A token with no access at all (anonymous) is valid but grants nothing.
      const anon = await token(undefined, undefined, 'repository:harness/a:pull');
      expect(anon.status).toBe(200);
      expect((await rawRequest(`${tokenAuth.url}/v2/harness/a/tags/list`, { ca: ca.caPem, headers: bearer(anon.body) })).status).toBe(401);

      // Hand-made tokens: expired, or for another audience, are refused.
      const access = [{ type: 'repository', name: 'harness/a', actions: ['pull'] }];
      const now = Math.floor(Date.now() / 1000);
      for (const t of [tokens.mint('carol', access, { exp: now - 3600, nbf: now - 7200 }), tokens.mint('carol', access, { aud: 'elsewhere' })]) {
        const r = await rawRequest(`${tokenAuth.url}/v2/harness/a/tags/list`, { ca: ca.caPem, headers: { authorization: `Bearer ${t}` } });
        expect(r.status).toBe(401);
      }
      const good = tokens.mint('carol', access);
      expect((await rawRequest(`${tokenAuth.url}/v2/harness/a/tags/list`, { ca: ca.caPem, headers: { authorization: `Bearer ${good}` } })).status).toBe(404);
    });

    it('skopeo pushes with --dest-creds and pulls with an auth file; wrong credentials are refused', async () => {
      const fx = fixtures();
      const src = `oci:${fx.paths.ociBasic}:latest`;
      const dest = `docker://${tokenAuth.host}/harness/a:v1`;
      const bad = await skopeo('copy', '--dest-creds', 'alice:wrong', '--dest-cert-dir', certDir, src, dest);
      expect(bad.code).not.toBe(0);
      // carol may pull but not push harness/a.
      const carol = await skopeo('copy', '--dest-creds', 'carol:carol-secret', '--dest-cert-dir', certDir, src, dest);
      expect(carol.code).not.toBe(0);

      const before = tokens.requests.length;
      await skopeoOk('copy', '--dest-creds', 'alice:alice-secret', '--dest-cert-dir', certDir, src, dest);
      const pushes = tokens.requests.slice(before);
      expect(pushes.length).toBeGreaterThan(0);
      expect(pushes.every((r) => r.user === 'alice' && r.status === 200)).toBe(true);
      expect(pushes.flatMap((r) => r.scopes)).toContain('repository:harness/a:pull,push');

      const authfile = path.join(work, 'auth.json');
      await fs.writeFile(authfile, JSON.stringify({ auths: { [tokenAuth.host]: { auth: Buffer.from('carol:carol-secret').toString('base64') } } }));
      const out = path.join(work, 'pulled-token');
      await skopeoOk('copy', '--authfile', authfile, '--src-cert-dir', certDir, `docker://${tokenAuth.host}/harness/a:v1`, `oci:${out}:v1`);
      const index = JSON.parse(await fs.readFile(path.join(out, 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
      expect(index.manifests[0]?.digest).toBe(fx.basic.manifest.digest);
      expect(tokens.requests.at(-1)).toMatchObject({ user: 'carol', status: 200 });

      const anon = await skopeo('copy', '--src-cert-dir', certDir, `docker://${tokenAuth.host}/harness/a:v1`, `oci:${path.join(work, 'anon')}:v1`);
      expect(anon.code).not.toBe(0);
    });
  });

  describe('proxy', () => {
    let blob: { digest: string; size: number };
    let blobUrl: string;
    let blobPath: string;
    let original: Buffer;

    it('carries a skopeo push whole, uploads included, and counts the bytes', async () => {
      const fx = fixtures();
      proxy.stats.clear();
      await skopeoOk('copy', '--dest-tls-verify=false', `oci:${fx.paths.ociBasic}:latest`, `docker://${proxy.host}/harness/proxied:v1`);
      const layerBytes = fx.basic.layers.reduce((s, l) => s + l.size, 0) + fx.basic.config.size;
      expect(proxy.stats.bytesUp()).toBeGreaterThan(0);
      expect(proxy.stats.bytesUp()).toBe(layerBytes);
      // The registry's absolute upload Locations came back through the proxy: the PATCH and PUT
      // of every blob went through it.
      const reqs = proxy.stats.requests;
      expect(reqs.filter((r) => r.method === 'PATCH' && r.path.includes('/blobs/uploads/')).length).toBe(fx.basic.layers.length + 1);
      expect(reqs.filter((r) => r.method === 'PUT' && r.path.includes('/blobs/uploads/') && r.status === 201).length).toBe(fx.basic.layers.length + 1);
      expect(reqs.find((r) => r.method === 'PUT' && r.path === '/v2/harness/proxied/manifests/v1')?.status).toBe(201);

      const post = await rawRequest(`${proxy.url}/v2/harness/proxied/blobs/uploads/`, { method: 'POST' });
      expect(post.status).toBe(202);
      expect(post.headers.location).toMatch(new RegExp(`^${proxy.url}/v2/harness/proxied/blobs/uploads/`));

      const largest = [...fx.basic.layers].sort((a, b) => b.size - a.size)[0]!;
      blob = { digest: largest.digest, size: largest.size };
      expect(blob.size).toBeGreaterThan(1000);
      blobPath = `/v2/harness/proxied/blobs/${blob.digest}`;
      blobUrl = `${proxy.url}${blobPath}`;
      original = (await rawRequest(blobUrl)).body;
      expect(sha256(original)).toBe(blob.digest);
      expect(proxy.stats.bytesDown()).toBe(blob.size);
    });

    it('answers an injected status a given number of times, then forwards', async () => {
      // A fresh object per call: `times` counts faults by their contents.
      proxy.setFaults((r): Fault | undefined => (r.method === 'GET' && r.path === blobPath ? { kind: 'status', status: 503, times: 2 } : undefined));
      proxy.stats.clear();
      const statuses = [];
      for (let i = 0; i < 3; i++) statuses.push((await rawRequest(blobUrl)).status);
      expect(statuses).toEqual([503, 503, 200]);
      expect(proxy.stats.requests.map((r) => r.fault)).toEqual(['status', 'status', undefined]);
      // Other requests are untouched.
      expect((await rawRequest(`${proxy.url}/v2/`)).status).toBe(200);
    });

    it('targets the n-th matching request', async () => {
      proxy.setFaults((r, n) => (r.method === 'GET' && r.path === blobPath && n === 2 ? { kind: 'status', status: 500 } : undefined));
      const statuses = [];
      for (let i = 0; i < 3; i++) statuses.push((await rawRequest(blobUrl)).status);
      expect(statuses).toEqual([200, 500, 200]);
      proxy.setFaults((r, n) => (r.path === blobPath && n === 1 ? { kind: 'delay', ms: 300 } : undefined));
      const t0 = Date.now();
      expect(sha256((await rawRequest(blobUrl)).body)).toBe(blob.digest);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(290);
    });

    it('resets the connection before answering', async () => {
      proxy.setFaults((r) => (r.path === blobPath ? { kind: 'reset' } : undefined));
      const e = await rejection(rawRequest(blobUrl));
      expect(e.code).toBe('ECONNRESET');
      expect(e.status).toBeUndefined();
    });

    it('cuts the body after N bytes with a reset', async () => {
      proxy.setFaults((r) => (r.path === blobPath ? { kind: 'reset-mid-body', afterBytes: 1000 } : undefined));
      proxy.stats.clear();
      const e = await rejection(rawRequest(blobUrl));
      expect(e.status).toBe(200);
      expect(e.partial.length).toBe(1000);
      expect(e.partial.equals(original.subarray(0, 1000))).toBe(true);
      expect(proxy.stats.requests[0]).toMatchObject({ status: 200, responseBytes: 1000, fault: 'reset-mid-body' });

      proxy.setFaults((r) => (r.path === blobPath ? { kind: 'reset-mid-body', afterBytes: 0 } : undefined));
      const z = await rejection(rawRequest(blobUrl));
      expect(z.status).toBe(200);
      expect(z.partial.length).toBe(0);
    });

    it('stalls mid-body, keeping the connection open', async () => {
      proxy.setFaults((r) => (r.path === blobPath ? { kind: 'stall-mid-body', afterBytes: 500 } : undefined));
      const started = Date.now();
      const e = await rejection(rawRequest(blobUrl, { timeoutMs: 1500 }));
      expect(e.code).toBe('ETIMEDOUT');
      expect(Date.now() - started).toBeGreaterThanOrEqual(1400);
      expect(e.status).toBe(200);
      expect(e.partial.equals(original.subarray(0, 500))).toBe(true);
    });

    it('breaks or stalls an upload after N bytes of the request body', async () => {
      const session = async () => String((await rawRequest(`${proxy.url}/v2/harness/proxied/blobs/uploads/`, { method: 'POST' })).headers.location);
      const body = crypto.randomBytes(256 * 1024);
      proxy.setFaults((r) => (r.method === 'PATCH' ? { kind: 'reset-mid-request', afterBytes: 1000 } : undefined));
      proxy.stats.clear();
      const reset = await rejection(rawRequest(await session(), { method: 'PATCH', body }));
      expect(['ECONNRESET', 'EPIPE']).toContain(reset.code);
      expect(reset.status).toBeUndefined();
      const patch = proxy.stats.requests.find((r) => r.method === 'PATCH')!;
      expect(patch).toMatchObject({ status: 0, fault: 'reset-mid-request' });
      expect(patch.requestBytes).toBeGreaterThanOrEqual(1000);

      proxy.setFaults((r) => (r.method === 'PATCH' ? { kind: 'stall-mid-request', afterBytes: 1000 } : undefined));
      const started = Date.now();
      const stalled = await rejection(rawRequest(await session(), { method: 'PATCH', body, timeoutMs: 1500 }));
      expect(stalled.code).toBe('ETIMEDOUT');
      expect(Date.now() - started).toBeGreaterThanOrEqual(1400);

      // A body no longer than the limit goes whole: the upload completes.
      proxy.setFaults((r) => (r.method === 'PATCH' ? { kind: 'reset-mid-request', afterBytes: body.length } : undefined));
      const whole = await rawRequest(await session(), { method: 'PATCH', body });
      expect(whole.status).toBe(202);
      expect(whole.headers.range).toBe(`0-${body.length - 1}`);
      proxy.setFaults(undefined);
    });

    it('flips one byte of the body, keeping its length', async () => {
      proxy.setFaults((r) => (r.path === blobPath ? { kind: 'corrupt-body', offset: 777 } : undefined));
      const r = await rawRequest(blobUrl);
      expect(r.status).toBe(200);
      expect(r.body.length).toBe(blob.size);
      expect(sha256(r.body)).not.toBe(blob.digest);
      const diffs = [...r.body.keys()].filter((i) => r.body[i] !== original[i]);
      expect(diffs).toEqual([777]);

      proxy.setFaults((q) => (q.path === blobPath ? { kind: 'corrupt-body', offset: 1e9 } : undefined));
      const last = await rawRequest(blobUrl);
      expect([...last.body.keys()].filter((i) => last.body[i] !== original[i])).toEqual([blob.size - 1]);
      proxy.setFaults(undefined);
      expect(sha256((await rawRequest(blobUrl)).body)).toBe(blob.digest);
    });

    it('skopeo pulls through the proxy; a corrupted layer makes it fail on the digest', async () => {
      const fx = fixtures();
      proxy.setFaults(undefined);
      proxy.stats.clear();
      await skopeoOk('copy', '--src-tls-verify=false', `docker://${proxy.host}/harness/proxied:v1`, `oci:${path.join(work, 'via-proxy')}:v1`);
      expect(proxy.stats.bytesDown()).toBe(fx.basic.layers.reduce((s, l) => s + l.size, 0) + fx.basic.config.size);

      proxy.setFaults((r) => (r.path === blobPath ? { kind: 'corrupt-body' } : undefined));
      const corrupt = await skopeo('copy', '--src-tls-verify=false', `docker://${proxy.host}/harness/proxied:v1`, `oci:${path.join(work, 'via-proxy-bad')}:v1`);
      expect(corrupt.code).not.toBe(0);
      expect(corrupt.stderr).toMatch(/digest/i);
      proxy.setFaults(undefined);
    });
  });
});
