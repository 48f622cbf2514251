/**
 * Registry authentication as Docker does it, against the stock registry: Basic (htpasswd) behind
 * TLS with a private CA, and Bearer tokens from a token server issuing scoped tokens. Secrets
 * never appear in what smart prints, --debug included.
 */
import fs from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { gzipSync } from 'node:zlib';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixtures } from '../harness/fixtures.js';
import { startProxy } from '../harness/proxy.js';
import { writeHtpasswd } from '../harness/htpasswd.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { runOk, smart, type RunResult } from '../harness/run.js';
import { certDirFor, makeTestCA } from '../harness/tls.js';
import { startTokenServer, type RunningTokenServer } from '../harness/token-server.js';
import { haveTools } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';

const PASSWORD = 's3cret:with-colon';

/** Auth is what these tests are about: no run may answer from an earlier run's metadata cache. */
const fresh = async () => ({ cacheHome: await tempDir() });

function expectNoSecret(r: RunResult, secret = PASSWORD): void {
  expect(r.stderr).not.toContain(secret);
  expect(r.stdout.toString()).not.toContain(secret);
  expect(r.stderr).not.toContain(Buffer.from(`alice:${secret}`).toString('base64'));
}

describe.skipIf(!haveTools('docker-registry', 'skopeo', 'openssl', 'htpasswd'))('Basic auth behind TLS with a private CA', () => {
  let work: string;
  let registry: RunningRegistry;
  let certDir: string;
  let caCertFile: string;

  beforeAll(async () => {
    work = await tempDir();
    const ca = await makeTestCA(path.join(work, 'ca'));
    caCertFile = ca.caCertFile;
    certDir = await certDirFor(ca, path.join(work, 'certs'));
    const htpasswd = path.join(work, 'htpasswd');
    await writeHtpasswd(htpasswd, { alice: PASSWORD });
    registry = await startRegistry({
      configDir: work,
      tls: { certFile: ca.certFile, keyFile: ca.keyFile, caFile: ca.caCertFile },
      auth: { htpasswd: { realm: 'test', path: htpasswd } },
    });
  });

  afterAll(async () => {
    await registry?.stop();
  });

  it('pushes and pulls with --creds and --cert-dir; skopeo reads what was pushed', async () => {
    const fx = fixtures();
    const name = `docker://${registry.host}/team/basic:v1`;
    const push = await smart(['push', `oci:${fx.paths.ociBasic}:latest`, name, '--creds', `alice:${PASSWORD}`, '--cert-dir', certDir, '--debug'], await fresh());
    expect(push.code, push.stderr).toBe(0);
    expectNoSecret(push);
    const digest = (
      await runOk('skopeo', ['--insecure-policy', 'inspect', '--cert-dir', certDir, '--creds', `alice:${PASSWORD}`, '--format', '{{.Digest}}', name])
    ).stdout.toString().trim();
    expect(digest).toBe(fx.basic.manifest.digest);
    const pull = await smart(['pull', name, `oci:${path.join(work, 'out')}:v1`, '--creds', `alice:${PASSWORD}`, '--cert-dir', certDir], await fresh());
    expect(pull.code, pull.stderr).toBe(0);
  });

  it('reads credentials from the Docker config ($DOCKER_CONFIG/config.json)', async () => {
    const dockerConfig = path.join(work, 'docker-config');
    await fs.mkdir(dockerConfig, { recursive: true });
    const auth = Buffer.from(`alice:${PASSWORD}`).toString('base64');
    await fs.writeFile(path.join(dockerConfig, 'config.json'), JSON.stringify({ auths: { [registry.host]: { auth } } }));
    const r = await smart(['pull', `docker://${registry.host}/team/basic:v1`, `rootfs:${path.join(work, 'rootfs')}`, '--cert-dir', certDir], {
      env: { DOCKER_CONFIG: dockerConfig },
      cacheHome: await tempDir(),
    });
    expect(r.code, r.stderr).toBe(0);
  });

  it('a wrong password, no credentials, and an unknown CA each fail with one clear line', async () => {
    const name = `docker://${registry.host}/team/basic:v1`;
    const dest = `rootfs:${path.join(work, 'never')}`;
    const wrong = await smart(['pull', name, dest, '--creds', 'alice:wrong-password', '--cert-dir', certDir, '--debug'], await fresh());
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toMatch(/smart: error \[[A-Z_]+\]: registry 127\.0\.0\.1:\d+ answered 401 UNAUTHORIZED.*\(check the credentials/);
    expect(wrong.stderr).not.toContain('wrong-password');
    const anonymous = await smart(['pull', name, dest, '--cert-dir', certDir], await fresh());
    expect(anonymous.code).toBe(1);
    expect(anonymous.stderr).toMatch(/requires authentication.*--creds/);
    const untrusted = await smart(['pull', name, dest, '--creds', `alice:${PASSWORD}`], await fresh());
    expect(untrusted.code).toBe(1);
    expect(untrusted.stderr).toMatch(/certificate/i);
    expectNoSecret(untrusted);
    await expect(fs.stat(path.join(work, 'never'))).rejects.toThrow();
  });

  it('remembers that the registry asks for Basic: the next commands send no ping, and still fail clearly on a wrong password', async () => {
    // Through a plain proxy on loopback, which sees every request.
    const proxy = await startProxy({ target: registry.url, ca: await fs.readFile(caCertFile) });
    try {
      const name = `docker://${proxy.host}/team/basic:v1`;
      const cache = await fresh();
      const pings = () => proxy.stats.requests.filter((r) => r.path === '/v2/').length;
      const first = await smart(['pull', name, `oci:${path.join(work, 'remembered')}:v1`, '--creds', `alice:${PASSWORD}`], cache);
      expect(first.code, first.stderr).toBe(0);
      expect(pings()).toBe(1);
      // The contact, under the cache dir: the scheme and the challenge's kind, no credentials.
      const metadata = path.join(cache.cacheHome, 'smartlayer', 'metadata');
      const files = (await fs.readdir(metadata, { recursive: true, withFileTypes: true })).filter((d) => d.isFile()).map((d) => path.join(d.parentPath, d.name));
      const contents = await Promise.all(files.map((f) => fs.readFile(f, 'utf8')));
      expect(contents.map((c) => (JSON.parse(c) as { v: unknown }).v)).toContain('http basic');
      for (const c of contents) expect(c).not.toContain(PASSWORD);

      proxy.stats.clear();
      const again = await smart(['pull', name, `oci:${path.join(work, 'remembered')}:v1`, '--creds', `alice:${PASSWORD}`, '--debug'], cache);
      expect(again.code, again.stderr).toBe(0);
      expect(proxy.stats.requests.length).toBeGreaterThan(0);
      expect(pings()).toBe(0);
      expect(proxy.stats.requests.every((r) => r.status !== 401)).toBe(true);
      expectNoSecret(again);

      const wrong = await smart(['pull', name, `rootfs:${path.join(work, 'never-remembered')}`, '--creds', 'alice:wrong-password'], cache);
      expect(wrong.code).toBe(1);
      // The manifest's digest is cached by the first pull: a HEAD asks for it, and a HEAD's 401 has no body to quote.
      expect(wrong.stderr).toMatch(/smart: error \[[A-Z_]+\]: registry 127\.0\.0\.1:\d+ answered 401 to HEAD manifest.*\(check the credentials/);
      expect(wrong.stderr.trim().split('\n')).toHaveLength(1);
      expect(wrong.stderr).not.toContain('wrong-password');
    } finally {
      await proxy.stop();
    }
  });
});

describe.skipIf(!haveTools('docker-registry', 'openssl'))('Bearer tokens from a token server', () => {
  let work: string;
  let tokens: RunningTokenServer;
  let registry: RunningRegistry;

  beforeAll(async () => {
    work = await tempDir();
    tokens = await startTokenServer({
      dir: path.join(work, 'tokens'),
      users: { alice: PASSWORD, bob: 'bob-pass', carol: 'carol-pass' },
      // alice may push and pull under team/, bob may only pull there; carol may push and pull
      // under carol/ only; nobody anywhere else.
      grants: (user, scope) => {
        if (scope.type === 'repository' && user === 'carol' && scope.name.startsWith('carol/')) return scope.actions.filter((a) => a === 'pull' || a === 'push');
        if (scope.type !== 'repository' || !scope.name.startsWith('team/')) return [];
        if (user === 'alice') return scope.actions.filter((a) => a === 'pull' || a === 'push');
        if (user === 'bob') return scope.actions.filter((a) => a === 'pull');
        return [];
      },
    });
    registry = await startRegistry({ configDir: work, auth: { token: tokens } });
  });

  afterAll(async () => {
    await registry?.stop();
    await tokens?.stop();
  });

  it('pushes and pulls with tokens scoped to the repository', async () => {
    const fx = fixtures();
    const name = `docker://${registry.host}/team/app:v1`;
    const push = await smart(['push', `oci:${fx.paths.ociBasic}:latest`, name, '--creds', `alice:${PASSWORD}`, '--debug'], await fresh());
    expect(push.code, push.stderr).toBe(0);
    expectNoSecret(push);
    expect(tokens.requests.some((r) => r.user === 'alice' && r.scopes.includes('repository:team/app:pull,push'))).toBe(true);
    const pull = await smart(['pull', name, `rootfs:${path.join(work, 'rootfs')}`, '--creds', 'bob:bob-pass'], await fresh());
    expect(pull.code, pull.stderr).toBe(0);
    expect(tokens.requests.some((r) => r.user === 'bob' && r.scopes.includes('repository:team/app:pull'))).toBe(true);
  });

  it('follows a blob redirect to another host without sending it the registry token', async () => {
    const fx = fixtures();
    // A "storage host" that serves blobs of the fixture layout and records what it was sent.
    const seen: (string | undefined)[] = [];
    const storage = http.createServer((req, res) => {
      seen.push(req.headers.authorization);
      const hex = (req.url ?? '').split('/').pop()!;
      fs.readFile(path.join(fx.paths.ociBasic, 'blobs/sha256', hex)).then(
        (bytes) => res.end(bytes),
        () => res.writeHead(404).end(),
      );
    });
    await new Promise<void>((r) => storage.listen(0, '127.0.0.1', r));
    const storageUrl = `http://127.0.0.1:${(storage.address() as AddressInfo).port}`;
    const proxy = await startProxy({ target: registry.url });
    proxy.setFaults((req) => {
      const m = /\/blobs\/sha256:([0-9a-f]{64})$/.exec(req.path);
      return req.method === 'GET' && m ? { kind: 'status', status: 307, headers: { location: `${storageUrl}/blobs/${m[1]}` }, body: '' } : undefined;
    });
    try {
      const r = await smart(['pull', `docker://${proxy.host}/team/app:v1`, `oci:${path.join(work, 'redirected')}:v1`, '--creds', 'bob:bob-pass'], await fresh());
      expect(r.code, r.stderr).toBe(0);
      expect(seen.length).toBe(fx.basic.layers.length + 1); // the layers and the config
      expect(seen.every((h) => h === undefined)).toBe(true);
    } finally {
      await proxy.stop();
      await new Promise((r) => storage.close(r));
    }
  });

  it("never sends the registry's credentials where a redirect target's 401 points, and names that server, not the registry, when it fails", async () => {
    // A "thief" token server, named by the challenge of the host the registry redirects blobs to.
    const stolen: string[] = [];
    const thief = http.createServer((req, res) => {
      stolen.push(`${req.url} ${req.headers.authorization ?? ''}`);
      res.writeHead(404).end();
    });
    await new Promise<void>((r) => thief.listen(0, '127.0.0.1', r));
    // Its first answer a 401 naming the thief, then the blobs: a run that took that challenge for
    // the registry's asked the thief for its next token, with the registry's credentials.
    const fx = fixtures();
    let answered = 0;
    const storage = http.createServer((req, res) => {
      if (answered++ === 0) {
        res.writeHead(401, { 'www-authenticate': `Bearer realm="http://127.0.0.1:${(thief.address() as AddressInfo).port}/steal",service="x"`, 'content-length': '2' }).end('{}');
        return;
      }
      const hex = (req.url ?? '').split('?')[0]!.split('/').pop()!;
      fs.readFile(path.join(fx.paths.ociBasic, 'blobs/sha256', hex)).then(
        (bytes) => res.end(bytes),
        () => res.writeHead(404).end(),
      );
    });
    await new Promise<void>((r) => storage.listen(0, '127.0.0.1', r));
    const storageHost = `127.0.0.1:${(storage.address() as AddressInfo).port}`;
    const dead = http.createServer();
    await new Promise<void>((r) => dead.listen(0, '127.0.0.1', r));
    const deadHost = `127.0.0.1:${(dead.address() as AddressInfo).port}`;
    await new Promise((r) => dead.close(r));
    let target = storageHost;
    const proxy = await startProxy({ target: registry.url });
    proxy.setFaults((req) => {
      const m = /\/blobs\/sha256:([0-9a-f]{64})$/.exec(req.path);
      return req.method === 'GET' && m ? { kind: 'status', status: 307, headers: { location: `http://${target}/blobs/${m[1]}?sig=1` }, body: '' } : undefined;
    });
    try {
      const r = await smart(['pull', `docker://${proxy.host}/team/app:v1`, `oci:${path.join(work, 'refused')}:v1`, '--creds', 'bob:bob-pass'], await fresh());
      expect(r.code).toBe(1);
      expect(stolen).toEqual([]);
      expect(r.stderr.trim().split('\n')).toEqual([
        expect.stringMatching(new RegExp(`^smart: error \\[REGISTRY\\]: ${storageHost}, where registry ${proxy.host} sent it, answered 401 to GET blob sha256:[0-9a-f]{64} of team/app \\(${storageHost} is not sent the registry's credentials: .*\\)$`)),
      ]);
      target = deadHost;
      const gone = await smart(['pull', `docker://${proxy.host}/team/app:v1`, `oci:${path.join(work, 'unreachable')}:v1`, '--creds', 'bob:bob-pass'], await fresh());
      expect(gone.code).toBe(1);
      // Retried (a connection refused may be a restart), each retry a warning, then one error line.
      expect(gone.stderr.trim().split('\n').filter((l) => !l.startsWith('warning: '))).toEqual([
        expect.stringMatching(new RegExp(`^smart: error \\[REGISTRY\\]: cannot reach ${deadHost}, where registry ${proxy.host} sent it: ECONNREFUSED .*\\(the registry sent the request to ${deadHost} \\(a redirect, an upload's Location, its token server\\), which cannot be reached from here: .*\\)$`)),
      ]);
    } finally {
      await proxy.stop();
      await new Promise((r) => storage.close(r));
      await new Promise((r) => thief.close(r));
    }
  });

  it("a token server of its own that fails is named as itself, not as the registry", async () => {
    const broken = http.createServer((_, res) => res.writeHead(500, { 'content-type': 'text/html' }).end('<html>token service down</html>'));
    await new Promise<void>((r) => broken.listen(0, '127.0.0.1', r));
    const tokenHost = `127.0.0.1:${(broken.address() as AddressInfo).port}`;
    const proxy = await startProxy({ target: registry.url });
    proxy.setFaults(() => ({ kind: 'status', status: 401, headers: { 'www-authenticate': `Bearer realm="http://${tokenHost}/token",service="test"` }, body: '' }));
    try {
      const r = await smart(['pull', `docker://${proxy.host}/team/app:v1`, `oci:${path.join(work, 'no-token')}:v1`, '--creds', 'bob:bob-pass'], await fresh());
      expect(r.code).toBe(1);
      expect(r.stderr.trim().split('\n').filter((l) => !l.startsWith('warning: '))).toEqual([
        expect.stringMatching(new RegExp(`^smart: error \\[REGISTRY\\]: ${tokenHost}, where registry ${proxy.host} sent it, answered 500 .*token service down.* to GET token for ${proxy.host}`)),
      ]);
    } finally {
      await proxy.stop();
      await new Promise((r) => broken.close(r));
    }
  });

  it('asks for blobs as stored (identity): a CDN that compresses what a client accepts serves them unchanged; one that compresses all the same is said as such', async () => {
    const fx = fixtures();
    let always = false;
    const cdn = http.createServer((req, res) => {
      const hex = (req.url ?? '').split('?')[0]!.split('/').pop()!;
      fs.readFile(path.join(fx.paths.ociBasic, 'blobs/sha256', hex)).then(
        (bytes) => {
          // Absent, Accept-Encoding means any coding will do (RFC 9110 12.5.3).
          const accepts = req.headers['accept-encoding'];
          if (always || accepts === undefined || /gzip/.test(accepts)) res.writeHead(200, { 'content-encoding': 'gzip' }).end(gzipSync(bytes));
          else res.end(bytes);
        },
        () => res.writeHead(404).end(),
      );
    });
    await new Promise<void>((r) => cdn.listen(0, '127.0.0.1', r));
    const proxy = await startProxy({ target: registry.url });
    proxy.setFaults((req) => {
      const m = /\/blobs\/sha256:([0-9a-f]{64})$/.exec(req.path);
      return req.method === 'GET' && m ? { kind: 'status', status: 307, headers: { location: `http://127.0.0.1:${(cdn.address() as AddressInfo).port}/blobs/${m[1]}` }, body: '' } : undefined;
    });
    try {
      const r = await smart(['pull', `docker://${proxy.host}/team/app:v1`, `oci:${path.join(work, 'through-cdn')}:v1`, '--creds', 'bob:bob-pass'], await fresh());
      expect(r.code, r.stderr).toBe(0);
      always = true;
      const encoded = await smart(['pull', `docker://${proxy.host}/team/app:v1`, `oci:${path.join(work, 'encoded')}:v1`, '--creds', 'bob:bob-pass'], await fresh());
      expect(encoded.code).toBe(1);
      expect(encoded.stderr.trim().split('\n')).toEqual([
        expect.stringMatching(/^smart: error \[REGISTRY\]: registry 127\.0\.0\.1:\d+ answered blob sha256:[0-9a-f]{64} encoded \(Content-Encoding: gzip\), though only its bytes as stored were accepted \(a proxy or CDN in between compresses what it serves: have it pass blobs unchanged\)$/),
      ]);
    } finally {
      await proxy.stop();
      await new Promise((r) => cdn.close(r));
    }
  });

  it("uploads a blob whose mount is refused: the metadata cache (here one machine's, or a shared Redis) knows it from a repository this account may not read", async () => {
    const fx = fixtures();
    const shared = await fresh();
    const carol = await smart(['push', `oci:${fx.paths.ociBasic}:latest`, `docker://${registry.host}/carol/app:1`, '--creds', 'carol:carol-pass'], shared);
    expect(carol.code, carol.stderr).toBe(0);
    const asked = tokens.requests.length;
    const alice = await smart(['push', `oci:${fx.paths.ociBasic}:latest`, `docker://${registry.host}/team/from-carol:1`, '--creds', `alice:${PASSWORD}`], shared);
    expect(alice.code, alice.stderr).toBe(0);
    // The mount from carol/app asked for once, not again once refused; and no set of scopes asked
    // for twice (the layers' requests in parallel share one token request).
    const scopeSets = tokens.requests.slice(asked).map((r) => r.scopes.join(' '));
    expect(scopeSets.filter((s) => s.includes('repository:carol/app:pull'))).toHaveLength(1);
    expect(new Set(scopeSets).size).toBe(scopeSets.length);
    const pull = await smart(['pull', `docker://${registry.host}/team/from-carol:1`, `oci:${path.join(work, 'from-carol')}:1`, '--creds', 'bob:bob-pass'], await fresh());
    expect(pull.code, pull.stderr).toBe(0);
  });

  it('refuses a push the token does not cover, and a wrong password at the token server', async () => {
    const fx = fixtures();
    const bobPush = await smart(['push', `oci:${fx.paths.ociBasic}:latest`, `docker://${registry.host}/team/app:bob`, '--creds', 'bob:bob-pass'], await fresh());
    expect(bobPush.code).toBe(1);
    expect(bobPush.stderr).toMatch(/smart: error \[[A-Z_]+\]: registry 127\.0\.0\.1:\d+ answered 401/);
    const outside = await smart(['push', `oci:${fx.paths.ociBasic}:latest`, `docker://${registry.host}/other/app:v1`, '--creds', `alice:${PASSWORD}`], await fresh());
    expect(outside.code).toBe(1);
    expect(outside.stderr).toMatch(/answered 401/);
    const wrong = await smart(['pull', `docker://${registry.host}/team/app:v1`, `rootfs:${path.join(work, 'x')}`, '--creds', 'alice:nope'], await fresh());
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toMatch(/authentication to 127\.0\.0\.1:\d+ failed for user alice/);
  });
});
