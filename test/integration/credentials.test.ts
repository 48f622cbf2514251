/**
 * Where credentials go and what messages show of them, against the stock registry behind TLS with
 * a private CA (htpasswd, and Docker tokens from the test token server): explicit credentials
 * reach one registry only; a token realm gets them over TLS or where plain HTTP is allowed, and a
 * realm on another host is said; nothing a registry, a name or a credential helper echoes puts a
 * secret, a control character or a second line into the output.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixtures } from '../harness/fixtures.js';
import { writeHtpasswd } from '../harness/htpasswd.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { smart, type RunResult } from '../harness/run.js';
import { certDirFor, makeTestCA, type TestCA } from '../harness/tls.js';
import { startTokenServer, type RunningTokenServer } from '../harness/token-server.js';
import { haveTools } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';
import { lookupCredentials } from '../../src/transports/registry/credentials.js';

const PASSWORD = 'priv-s3cret:with-colon';
const BASIC = Buffer.from(`alice:${PASSWORD}`).toString('base64');

/** No run may answer from an earlier run's metadata cache. */
const fresh = async () => ({ cacheHome: await tempDir() });

function expectNoSecret(r: RunResult): void {
  for (const text of [r.stderr, r.stdout.toString()]) {
    expect(text).not.toContain(PASSWORD);
    expect(text).not.toContain('priv-s3cret');
    expect(text).not.toContain(BASIC.slice(0, 16));
  }
}

/** The error line of a failed run: exactly one line on stderr, no stack trace. */
function errorLine(r: RunResult): string {
  const lines = r.stderr.split('\n').filter((l) => l.trim());
  expect(lines.filter((l) => /^smart: error \[[A-Z_]+\]: /.test(l)), r.stderr).toHaveLength(1);
  expect(r.stderr).not.toMatch(/^\s+at /m);
  return lines.find((l) => /^smart: error \[[A-Z_]+\]: /.test(l))!;
}

describe.skipIf(!haveTools('docker-registry', 'openssl', 'htpasswd'))('credentials', () => {
  let work: string;
  let ca: TestCA;
  let certDir: string;
  let tokens: RunningTokenServer;
  /** Basic auth (htpasswd) behind TLS: alice's private registry. */
  let privateRegistry: RunningRegistry;
  /** Tokens behind TLS: anyone may pull, carol may push. */
  let publicRegistry: RunningRegistry;
  let privateName: string;
  let publicName: string;

  beforeAll(async () => {
    work = await tempDir();
    ca = await makeTestCA(path.join(work, 'ca'));
    certDir = await certDirFor(ca, path.join(work, 'certs'));
    const tls = { certFile: ca.certFile, keyFile: ca.keyFile, caFile: ca.caCertFile };
    const htpasswd = path.join(work, 'htpasswd');
    await writeHtpasswd(htpasswd, { alice: PASSWORD });
    tokens = await startTokenServer({
      dir: path.join(work, 'tokens'),
      users: { carol: 'carol-pass' },
      grants: (user, scope) => (scope.type !== 'repository' ? [] : scope.actions.filter((a) => a === 'pull' || (a === 'push' && user === 'carol'))),
    });
    [privateRegistry, publicRegistry] = await Promise.all([
      startRegistry({ configDir: path.join(work, 'private'), tls, auth: { htpasswd: { realm: 'private', path: htpasswd } } }),
      startRegistry({ configDir: path.join(work, 'public'), tls, auth: { token: tokens } }),
    ]);
    privateName = `docker://${privateRegistry.host}/team/app:v1`;
    publicName = `docker://${publicRegistry.host}/lib/app:v1`;
    const fx = fixtures();
    const seeded = await Promise.all([
      smart(['push', `oci:${fx.paths.ociBasic}:latest`, privateName, '--creds', `alice:${PASSWORD}`, '--cert-dir', certDir], await fresh()),
      smart(['push', `oci:${fx.paths.ociBasic}:latest`, publicName, '--creds', 'carol:carol-pass', '--cert-dir', certDir], await fresh()),
    ]);
    for (const r of seeded) expect(r.code, r.stderr).toBe(0);
  });

  afterAll(async () => {
    await Promise.all([privateRegistry?.stop(), publicRegistry?.stop()]);
    await tokens?.stop();
  });

  /** Token requests made during `run`, by the user they authenticated as (or tried to: `account`). */
  async function tokenRequestsOf(run: () => Promise<RunResult>) {
    const before = tokens.requests.length;
    const r = await run();
    return { r, requests: tokens.requests.slice(before) };
  }

  describe('explicit credentials go to one registry', () => {
    it('--creds with a registry on each side is refused before anything is sent', async () => {
      const { r, requests } = await tokenRequestsOf(async () =>
        smart(['push', publicName, privateName.replace(':v1', ':copied'), '--creds', `alice:${PASSWORD}`, '--cert-dir', certDir], await fresh()),
      );
      expect(r.code, r.stderr).toBe(2);
      expect(errorLine(r)).toMatch(/--creds would go to both registries \(127\.0\.0\.1:\d+ and 127\.0\.0\.1:\d+\).*--src-creds USER:PASSWORD for 127\.0\.0\.1:\d+, --dest-creds/);
      expect(requests).toEqual([]);
      expectNoSecret(r);
    });

    it('--dest-creds reaches the destination only: the source and its token server see none', async () => {
      const { r, requests } = await tokenRequestsOf(async () =>
        smart(['push', publicName, privateName.replace(':v1', ':copied'), '--dest-creds', `alice:${PASSWORD}`, '--cert-dir', certDir], await fresh()),
      );
      expect(r.code, r.stderr).toBe(0);
      expect(requests.length).toBeGreaterThan(0);
      expect(requests.every((q) => q.status === 200 && q.user === undefined && q.account === undefined)).toBe(true);
      expectNoSecret(r);
    });

    it('SMART_REGISTRY_AUTH with a registry on each side is left unused, with a warning', async () => {
      const { r, requests } = await tokenRequestsOf(async () =>
        smart(['push', publicName, privateName.replace(':v1', ':from-env'), '--dest-creds', `alice:${PASSWORD}`, '--cert-dir', certDir], {
          ...(await fresh()),
          env: { SMART_REGISTRY_AUTH: `alice:${PASSWORD}` },
        }),
      );
      expect(r.code, r.stderr).toBe(0);
      expect(r.stderr).toMatch(/warning: SMART_REGISTRY_AUTH is not used: this command talks to two registries/);
      expect(requests.every((q) => q.user === undefined && q.account === undefined)).toBe(true);
      expectNoSecret(r);
    });

    it('an authentication failure names the flag that reaches that side: --src-creds/--dest-creds between two registries, --creds with one', async () => {
      const toPrivate = await smart(['push', publicName, privateName.replace(':v1', ':no-creds'), '--cert-dir', certDir], await fresh());
      expect(toPrivate.code, toPrivate.stderr).toBe(1);
      expect(errorLine(toPrivate)).toMatch(/requires authentication .*\(log in with docker login, or pass --dest-creds USER:PASSWORD\)$/);
      const fromPrivate = await smart(['push', privateName, publicName.replace(':v1', ':no-creds'), '--dest-creds', 'carol:carol-pass', '--cert-dir', certDir], await fresh());
      expect(fromPrivate.code, fromPrivate.stderr).toBe(1);
      expect(errorLine(fromPrivate)).toMatch(/requires authentication .*\(log in with docker login, or pass --src-creds USER:PASSWORD\)$/);
      // A token registry answers 401 to a push its anonymous token may not make.
      const toPublic = await smart(['push', privateName, publicName.replace(':v1', ':anonymous'), '--src-creds', `alice:${PASSWORD}`, '--cert-dir', certDir], await fresh());
      expect(toPublic.code, toPublic.stderr).toBe(1);
      expect(errorLine(toPublic)).toMatch(/answered 401 .*\(check the credentials \(docker login, --dest-creds USER:PASSWORD\) and that they may access this repository\)$/);
      const one = await smart(['pull', privateName, `oci:${path.join(work, 'no-creds')}:v1`, '--cert-dir', certDir], await fresh());
      expect(one.code, one.stderr).toBe(1);
      expect(errorLine(one)).toMatch(/requires authentication .*\(log in with docker login, or pass --creds USER:PASSWORD\)$/);
    });

    it('--creds still serves a command with one registry, the same on both sides included', async () => {
      const r = await smart(['push', privateName, privateName.replace(':v1', ':retagged'), '--creds', `alice:${PASSWORD}`, '--cert-dir', certDir], await fresh());
      expect(r.code, r.stderr).toBe(0);
    });
  });

  describe('token realms', () => {
    it('says when credentials go to a token server on another host', async () => {
      // The registry named as localhost; its realm is 127.0.0.1 (the token server's address).
      const viaLocalhost = `docker://localhost:${publicRegistry.port}/lib/app:v1`;
      // A push: tokens for several scopes (pull, and pull+push), the warning once.
      const { r, requests } = await tokenRequestsOf(async () =>
        smart(['push', `oci:${fixtures().paths.ociBasic}:latest`, viaLocalhost.replace('lib/app:v1', 'lib/warned:v1'), '--creds', 'carol:carol-pass', '--cert-dir', certDir], await fresh()),
      );
      expect(r.code, r.stderr).toBe(0);
      expect(new Set(requests.map((q) => q.scopes.join(' '))).size).toBeGreaterThan(1);
      expect(r.stderr.match(new RegExp(`warning: credentials for localhost:${publicRegistry.port} go to the token server it names on another host, 127\\.0\\.0\\.1:\\d+`, 'g'))).toHaveLength(1);
      // Anonymous: nothing is sent, nothing to say; the same host: nothing to say.
      const anonymous = await smart(['pull', viaLocalhost, `oci:${path.join(work, 'realm-anonymous')}:v1`, '--cert-dir', certDir], await fresh());
      expect(anonymous.code, anonymous.stderr).toBe(0);
      expect(anonymous.stderr).not.toMatch(/token server/);
      const same = await smart(['pull', publicName, `oci:${path.join(work, 'realm-same')}:v1`, '--creds', 'carol:carol-pass', '--cert-dir', certDir], await fresh());
      expect(same.code, same.stderr).toBe(0);
      expect(same.stderr).not.toMatch(/token server/);
    });

    it('sends no credentials to a plain-HTTP realm on a host not allowed plain HTTP', async () => {
      // A registry behind TLS whose realm is plain HTTP on a host nobody allowed (it does not resolve: nothing could be sent there anyway).
      const far = await startRegistry({
        configDir: path.join(work, 'far-realm'),
        tls: { certFile: ca.certFile, keyFile: ca.keyFile, caFile: ca.caCertFile },
        auth: { token: { ...tokens, realm: 'http://token.invalid:5001/token' } },
      });
      try {
        const r = await smart(['pull', `docker://${far.host}/lib/app:v1`, `oci:${path.join(work, 'far')}:v1`, '--creds', `alice:${PASSWORD}`, '--cert-dir', certDir], await fresh());
        expect(r.code).toBe(1);
        expect(errorLine(r)).toMatch(
          /names a token server on plain HTTP \(http:\/\/token\.invalid:5001\): credentials are not sent in clear text \(if token\.invalid:5001 is trusted on this network, allow it with --insecure-registry token\.invalid:5001\)/,
        );
        expectNoSecret(r);
      } finally {
        await far.stop();
      }
    });
  });

  describe('secrets echoed back', () => {
    let proxy: RunningProxy;

    beforeAll(async () => {
      proxy = await startProxy({ target: privateRegistry.url, ca: ca.caPem });
      // A registry that echoes the request's headers in its errors: as JSON, and as raw text.
      proxy.setFaults((req) => {
        if (req.method !== 'GET' || !req.path.includes('/manifests/')) return undefined;
        // Authorization first, so that it falls before the cut of a long message.
        const dump = Object.entries(req.headers)
          .sort(([a], [b]) => Number(b === 'authorization') - Number(a === 'authorization'))
          .map(([k, v]) => `${k}: ${String(v)}`)
          .join('\r\n');
        if (req.path.endsWith(':json') || req.path.endsWith('/json')) {
          return { kind: 'status', status: 400, body: JSON.stringify({ errors: [{ code: 'DENIED', message: `request was\n${dump}` }] }) };
        }
        return { kind: 'status', status: 400, headers: { 'content-type': 'text/plain' }, body: `bad request\u001b[31m\r\n${dump}\r\n${'padding '.repeat(40)}` };
      });
    });

    afterAll(async () => {
      await proxy?.stop();
    });

    it('a registry error body is redacted, one line, capped', async () => {
      for (const tag of ['json', 'text']) {
        const r = await smart(['pull', `docker://${proxy.host}/team/app:${tag}`, `oci:${path.join(work, `echo-${tag}`)}:v1`, '--creds', `alice:${PASSWORD}`], await fresh());
        expect(r.code).toBe(1);
        const line = errorLine(r);
        expect(line).toMatch(/answered 400/);
        expect(line).toMatch(/authorization: \[redacted\]/i);
        expect(line).not.toMatch(/[\u0000-\u001f]/);
        expect(line.length).toBeLessThan(400);
        expectNoSecret(r);
      }
    });

    it('credentials typed into an image name are not echoed, and --creds is suggested', async () => {
      const r = await smart(['pull', `docker://alice:${PASSWORD}@${privateRegistry.host}/team/app:v1`, `oci:${path.join(work, 'typed')}:v1`], await fresh());
      expect(r.code).toBe(2);
      expect(errorLine(r)).toMatch(/invalid image name "docker:\/\/\[redacted\]@127\.0\.0\.1:\d+\/team\/app:v1": credentials do not go inside an image name \(pass them with --creds/);
      expectNoSecret(r);
      const store = await smart(['cache', 'index', `docker://alice:${PASSWORD}@${privateRegistry.host}`], await fresh());
      expect(store.code).toBe(2);
      expect(errorLine(store)).toMatch(/credentials do not go inside an image name/);
      expectNoSecret(store);
    });
  });

  it('a credential helper that exits without reading its input fails with one clear line', async () => {
    const bin = path.join(work, 'helper-bin');
    const config = path.join(work, 'helper-config');
    await fs.mkdir(bin, { recursive: true });
    await fs.mkdir(config, { recursive: true });
    // It never reads stdin: the server name written to it meets a closed pipe.
    // One builtin and out, so that it is gone before the name is written (the EPIPE of the issue).
    await fs.writeFile(path.join(bin, 'docker-credential-broken'), `#!/bin/sh\nprintf 'store locked: password=${PASSWORD}\\nsecond line\\n' >&2\nexit 3\n`, { mode: 0o755 });
    await fs.writeFile(path.join(config, 'config.json'), JSON.stringify({ credHelpers: { [privateRegistry.host]: 'broken' } }));
    const r = await smart(['pull', privateName, `oci:${path.join(work, 'helper')}:v1`, '--cert-dir', certDir], {
      ...(await fresh()),
      env: { DOCKER_CONFIG: config, PATH: `${bin}:${process.env.PATH ?? ''}` },
    });
    expect(r.code).toBe(1);
    const line = errorLine(r);
    expect(line).toMatch(
      new RegExp(`credential helper docker-credential-broken failed for ${privateRegistry.host.replace(/\./g, '\\.')} \\(exit 3\\): store locked: password=\\[redacted\\]`),
    );
    expect(line).not.toMatch(/EPIPE|second line/);
    expectNoSecret(r);
  });

  it("a helper's message is redacted as untrusted text before it is cut: tokens, mixed case, the word after 'secret'", async () => {
    const dir = await tempDir();
    const long = `store (denied reading the entry: ${'lorem ipsum '.repeat(10)}wrong: glpat-AbCdEfGhIjKlMnOpQrSt)`;
    const said = { gitlab: 'wrong: glpat-AbCdEfGhIjKlMnOpQrSt', mixed: 'failed: HelperLeakSecretLLL', prose: 'no creds; secret hunter2 rejected', long };
    for (const [name, text] of Object.entries(said)) {
      await fs.writeFile(path.join(dir, `docker-credential-${name}`), `#!/bin/sh\nprintf '%s\\n' '${text}' >&2\nexit 1\n`, { mode: 0o755 });
    }
    const saved = { PATH: process.env.PATH, DOCKER_CONFIG: process.env.DOCKER_CONFIG };
    process.env.PATH = `${dir}:${process.env.PATH ?? ''}`;
    process.env.DOCKER_CONFIG = dir;
    const failure = async (name: string): Promise<string> => {
      await fs.writeFile(path.join(dir, 'config.json'), JSON.stringify({ credHelpers: { 'registry.example:5000': name } }));
      return lookupCredentials('registry.example:5000').then(
        () => 'resolved',
        (e: Error) => e.message,
      );
    };
    try {
      const prefix = (name: string) => `credential helper docker-credential-${name} failed for registry.example:5000 (exit 1): `;
      expect(await failure('gitlab')).toBe(`${prefix('gitlab')}wrong: [redacted]`);
      expect(await failure('mixed')).toBe(`${prefix('mixed')}failed: [redacted]`);
      expect(await failure('prose')).toBe(`${prefix('prose')}no creds; secret [redacted] rejected`);
      const cut = await failure('long');
      expect(cut).toMatch(new RegExp(`^${prefix('long').replace(/[.()]/g, '\\$&')}store \\(denied reading the entry: (?:lorem|ipsum| )+…\\)$`));
      expect(cut).not.toMatch(/glpat|\[redacted\] glpat/);
    } finally {
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });

  it('a helper gone before its input is written: the lookup rejects, never an EPIPE crash', async () => {
    // In this process, where an unhandled EPIPE on the helper's stdin fails the test run; many
    // lookups, since whether the helper is gone before the write is a race.
    const dir = await tempDir();
    await fs.writeFile(path.join(dir, 'docker-credential-quick'), `#!/bin/sh\nprintf 'locked\\n' >&2\nexit 3\n`, { mode: 0o755 });
    await fs.writeFile(path.join(dir, 'config.json'), JSON.stringify({ credHelpers: { 'registry.example:5000': 'quick' } }));
    const saved = { PATH: process.env.PATH, DOCKER_CONFIG: process.env.DOCKER_CONFIG };
    process.env.PATH = `${dir}:${process.env.PATH ?? ''}`;
    process.env.DOCKER_CONFIG = dir;
    try {
      for (let i = 0; i < 10; i++) {
        await expect(lookupCredentials('registry.example:5000')).rejects.toThrow(
          'credential helper docker-credential-quick failed for registry.example:5000 (exit 3): locked',
        );
      }
    } finally {
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });

  describe('cache plan --image docker://… uses the registry settings', () => {
    it('with --cert-dir and --creds, and with --insecure-registry', async () => {
      const fx = fixtures();
      const store = path.join(work, 'plan-store');
      const cache = await fresh();
      const pushed = await smart(['push', `oci:${fx.paths.ociBasic}:latest`, `file:${store}#team/app:v1`], cache);
      expect(pushed.code, pushed.stderr).toBe(0);
      const plan = await smart(['cache', 'plan', `file:${store}`, '--image', privateName, '--creds', `alice:${PASSWORD}`, '--cert-dir', certDir, '--json'], cache);
      expect(plan.code, plan.stderr).toBe(0);
      expect((JSON.parse(plan.stdout.toString()) as { best?: { image: string } }).best?.image).toBe('team/app:v1');
      expectNoSecret(plan);
      const insecure = await smart(['cache', 'plan', `file:${store}`, '--image', privateName, '--creds', `alice:${PASSWORD}`, '--insecure-registry', privateRegistry.host, '--json'], cache);
      expect(insecure.code, insecure.stderr).toBe(0);
      // A store on the same registry as the image: one registry, so --creds serves both.
      const sameRegistry = await smart(['cache', 'plan', `docker://${privateRegistry.host}`, '--image', privateName, '--creds', `alice:${PASSWORD}`, '--cert-dir', certDir], await fresh());
      expect(sameRegistry.code, sameRegistry.stderr).toBe(0);
    });
  });
});
