/**
 * Credentials the way skopeo and podman users have them, against the stock registry behind TLS
 * (htpasswd, and Docker tokens from the test token server): the containers auth.json that
 * `skopeo login` writes, found where containers/image looks (`--authfile`, `$REGISTRY_AUTH_FILE`,
 * `$XDG_RUNTIME_DIR/containers/auth.json`, `~/.config/containers/auth.json`, then Docker's
 * config); Docker's `identitytoken` exchanged at the token endpoint (grant_type=refresh_token);
 * `--password-stdin` and `--creds-file`, which keep the secret off the command line.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixtures } from '../harness/fixtures.js';
import { writeHtpasswd } from '../harness/htpasswd.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { runOk, smart, type RunResult } from '../harness/run.js';
import { certDirFor, makeTestCA } from '../harness/tls.js';
import { startTokenServer, type RunningTokenServer } from '../harness/token-server.js';
import { haveTools } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';

const PASSWORD = 'auth-file-s3cret';
const REFRESH = 'refresh-token-of-carol-0123456789';

function expectNoSecret(r: RunResult): void {
  for (const text of [r.stderr, r.stdout.toString()]) {
    expect(text).not.toContain(PASSWORD);
    expect(text).not.toContain(REFRESH);
  }
}

const auth = (user: string, password: string) => Buffer.from(`${user}:${password}`).toString('base64');

describe.skipIf(!haveTools('docker-registry', 'openssl', 'htpasswd', 'skopeo'))('credential files and secrets off the command line', () => {
  let work: string;
  let certDir: string;
  let tokens: RunningTokenServer;
  let basic: RunningRegistry;
  let token: RunningRegistry;
  let n = 0;

  /**
   * A home of its own per run: no credential file but those the test writes. `files` maps a path
   * under the home (`runtime/containers/auth.json`, `.config/containers/auth.json`,
   * `docker/config.json`) to its content; XDG_RUNTIME_DIR is `HOME/runtime`, DOCKER_CONFIG `HOME/docker`.
   */
  async function home(files: Record<string, unknown> = {}) {
    const dir = await tempDir();
    for (const [rel, content] of Object.entries(files)) {
      await fs.mkdir(path.dirname(path.join(dir, rel)), { recursive: true });
      await fs.writeFile(path.join(dir, rel), typeof content === 'string' ? content : JSON.stringify(content));
    }
    await fs.mkdir(path.join(dir, 'runtime'), { recursive: true });
    return {
      dir,
      env: { HOME: dir, XDG_RUNTIME_DIR: path.join(dir, 'runtime'), XDG_CONFIG_HOME: '', DOCKER_CONFIG: path.join(dir, 'docker'), REGISTRY_AUTH_FILE: '', SMART_REGISTRY_AUTH: '' },
      cacheHome: path.join(dir, 'cache'),
    };
  }

  /** Pushes the basic image to a new tag of the htpasswd registry with `args` and this home. */
  async function pushBasic(h: Awaited<ReturnType<typeof home>>, args: string[] = [], input?: Buffer) {
    const fx = fixtures();
    return smart(['push', `oci:${fx.paths.ociBasic}:latest`, `docker://${basic.host}/team/app:t${++n}`, '--cert-dir', certDir, ...args], {
      env: h.env,
      cacheHome: h.cacheHome,
      ...(input ? { input } : {}),
    });
  }

  beforeAll(async () => {
    work = await tempDir();
    const ca = await makeTestCA(path.join(work, 'ca'));
    certDir = await certDirFor(ca, path.join(work, 'certs'));
    const tls = { certFile: ca.certFile, keyFile: ca.keyFile, caFile: ca.caCertFile };
    const htpasswd = path.join(work, 'htpasswd');
    await writeHtpasswd(htpasswd, { alice: PASSWORD });
    tokens = await startTokenServer({
      dir: path.join(work, 'tokens'),
      users: { carol: 'carol-password' },
      refreshTokens: { [REFRESH]: 'carol' },
      grants: (user, scope) => (scope.type !== 'repository' ? [] : scope.actions.filter((a) => a === 'pull' || (a === 'push' && user === 'carol'))),
    });
    [basic, token] = await Promise.all([
      startRegistry({ configDir: path.join(work, 'basic'), tls, auth: { htpasswd: { realm: 'basic', path: htpasswd } } }),
      startRegistry({ configDir: path.join(work, 'token'), tls, auth: { token: tokens } }),
    ]);
  });

  afterAll(async () => {
    await Promise.all([basic?.stop(), token?.stop()]);
    await tokens?.stop();
  });

  it('reads the auth.json skopeo login writes in $XDG_RUNTIME_DIR/containers', async () => {
    const h = await home();
    // skopeo 1.9 logs in to $DOCKER_CONFIG when it is set: here it is not.
    const { DOCKER_CONFIG: _, ...env } = { ...process.env, ...h.env };
    await runOk('skopeo', ['login', '--cert-dir', certDir, '-u', 'alice', '--password-stdin', basic.host], { input: Buffer.from(`${PASSWORD}\n`), env });
    const written = JSON.parse(await fs.readFile(path.join(h.dir, 'runtime/containers/auth.json'), 'utf8')) as { auths: Record<string, unknown> };
    expect(Object.keys(written.auths)).toEqual([basic.host]);
    const r = await pushBasic(h);
    expect(r.code, r.stderr).toBe(0);
    expectNoSecret(r);
  });

  it('then ~/.config/containers/auth.json, then Docker\'s config: the first file that knows the registry answers', async () => {
    const good = { auths: { [basic.host]: { auth: auth('alice', PASSWORD) } } };
    const bad = { auths: { [basic.host]: { auth: auth('alice', 'wrong-password') } } };
    const other = { auths: { 'registry.example.com': { auth: auth('bob', 'x') } } };
    // Only in the per-user file.
    expect((await pushBasic(await home({ '.config/containers/auth.json': good }))).code).toBe(0);
    // Only in Docker's config.
    expect((await pushBasic(await home({ 'docker/config.json': good }))).code).toBe(0);
    // The per-session file knows the registry (wrongly): it wins over the right one after it.
    const first = await pushBasic(await home({ 'runtime/containers/auth.json': bad, '.config/containers/auth.json': good }));
    expect(first.code).toBe(1);
    expect(first.stderr).toMatch(/^smart: error \[REGISTRY\]: registry 127\.0\.0\.1:\d+ answered 401/m);
    // A file that does not know it is passed over.
    expect((await pushBasic(await home({ 'runtime/containers/auth.json': other, 'docker/config.json': good }))).code).toBe(0);
  });

  it('--authfile, else $REGISTRY_AUTH_FILE, is the only file read', async () => {
    const good = { auths: { [basic.host]: { auth: auth('alice', PASSWORD) } } };
    const h = await home({ 'docker/config.json': good, 'elsewhere.json': { auths: {} }, 'named.json': good });
    const named = path.join(h.dir, 'named.json');
    const elsewhere = path.join(h.dir, 'elsewhere.json');
    // REGISTRY_AUTH_FILE names a file without the registry: Docker's config is not read.
    const envOnly = await smart(['push', `oci:${fixtures().paths.ociBasic}:latest`, `docker://${basic.host}/team/app:env`, '--cert-dir', certDir], {
      env: { ...h.env, REGISTRY_AUTH_FILE: elsewhere },
      cacheHome: h.cacheHome,
    });
    expect(envOnly.code).toBe(1);
    expect(envOnly.stderr).toMatch(/requires authentication|answered 401/);
    // --authfile wins over REGISTRY_AUTH_FILE.
    const flag = await smart(['push', `oci:${fixtures().paths.ociBasic}:latest`, `docker://${basic.host}/team/app:flag`, '--cert-dir', certDir, '--authfile', named], {
      env: { ...h.env, REGISTRY_AUTH_FILE: elsewhere },
      cacheHome: h.cacheHome,
    });
    expect(flag.code, flag.stderr).toBe(0);
    // A named file that is not there is an error, not an anonymous pull.
    const missing = await pushBasic(h, ['--authfile', path.join(h.dir, 'no-such.json')]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/^smart: error \[USAGE\]: cannot read --authfile .*no-such\.json: no such file$/m);
    // An entry whose auth is not base64 (a login gone wrong): said so, naming the file and the
    // registry but not the value, where a request without credentials was told to log in.
    const garbled = path.join(h.dir, 'garbled.json');
    await fs.writeFile(garbled, JSON.stringify({ auths: { [basic.host]: { auth: '!!not-base64' } } }));
    const bad = await pushBasic(h, ['--authfile', garbled]);
    expect(bad.code).toBe(2);
    expect(bad.stderr.trim().split('\n')).toEqual([
      `smart: error [USAGE]: ${garbled}: the entry for ${basic.host}: its "auth" value is not base64 of USER:PASSWORD (log in again (docker login, podman login), or mend the entry)`,
    ]);
    expect(bad.stderr).not.toContain('not-base64');
    // JSON that is no object: said so, not "not valid JSON".
    const array = path.join(h.dir, 'array.json');
    await fs.writeFile(array, '[1,2]');
    const notObject = await pushBasic(h, ['--authfile', array]);
    expect(notObject.code).toBe(2);
    expect(notObject.stderr.trim()).toBe(`smart: error [USAGE]: ${array} is not a credential file: its JSON is an array, not an object of "auths"`);
  });

  it('--username with --password-stdin, and --creds-file, keep the secret off the command line', async () => {
    const h = await home();
    const stdin = await pushBasic(h, ['--username', 'alice', '--password-stdin'], Buffer.from(`${PASSWORD}\n`));
    expect(stdin.code, stdin.stderr).toBe(0);
    const file = path.join(h.dir, 'creds');
    await fs.writeFile(file, `alice:${PASSWORD}\n`, { mode: 0o600 });
    const fromFile = await pushBasic(h, ['--creds-file', file]);
    expect(fromFile.code, fromFile.stderr).toBe(0);
    for (const r of [stdin, fromFile]) expectNoSecret(r);
    // Both reading stdin: refused before anything is read.
    const clash = await smart(['push', 'docker-archive:-', `docker://${basic.host}/team/app:clash`, '--username', 'alice', '--password-stdin'], {
      env: h.env,
      cacheHome: h.cacheHome,
      input: Buffer.from(`${PASSWORD}\n`),
    });
    expect(clash.code).toBe(2);
    expect(clash.stderr).toMatch(/^smart: error \[USAGE\]: --password-stdin and docker-archive:- would both read stdin/m);
    const twice = await pushBasic(h, ['--creds-file', file, '--creds', `alice:${PASSWORD}`]);
    expect(twice.code).toBe(2);
    const alone = await pushBasic(h, ['--username', 'alice']);
    expect(alone.code).toBe(2);
    expect(alone.stderr).toMatch(/--username goes with --password-stdin/);
  });

  it("SMART_REGISTRY_AUTH ending in a line's end (a secret read from a file) is taken without it, as --password-stdin takes it", async () => {
    const h = await home();
    for (const end of ['\n', '\r\n']) {
      const r = await smart(['push', `oci:${fixtures().paths.ociBasic}:latest`, `docker://${basic.host}/team/app:t${++n}`, '--cert-dir', certDir], {
        env: { ...h.env, SMART_REGISTRY_AUTH: `alice:${PASSWORD}${end}` },
        cacheHome: h.cacheHome,
      });
      expect(r.code, `${JSON.stringify(end)}: ${r.stderr}`).toBe(0);
      expectNoSecret(r);
    }
    // One line's end only: a password may end in other white space, which is sent as it is.
    const spaced = await smart(['push', `oci:${fixtures().paths.ociBasic}:latest`, `docker://${basic.host}/team/app:t${++n}`, '--cert-dir', certDir], {
      env: { ...h.env, SMART_REGISTRY_AUTH: `alice:${PASSWORD} \n` },
      cacheHome: h.cacheHome,
    });
    expect(spaced.code).toBe(1);
    expect(spaced.stderr).toMatch(/^smart: error \[REGISTRY\]: registry 127\.0\.0\.1:\d+ answered 401/m);
  });

  it("Docker's identitytoken is exchanged at the token endpoint (POST, grant_type=refresh_token), never sent as a password", async () => {
    const fx = fixtures();
    const h = await home({ 'docker/config.json': { auths: { [token.host]: { auth: auth('carol', ''), identitytoken: REFRESH } } } });
    const before = tokens.requests.length;
    const r = await smart(['push', `oci:${fx.paths.ociBasic}:latest`, `docker://${token.host}/lib/refreshed:1`, '--cert-dir', certDir], { env: h.env, cacheHome: h.cacheHome });
    expect(r.code, r.stderr).toBe(0);
    const requests = tokens.requests.slice(before);
    expect(requests.length).toBeGreaterThan(0);
    // Pushing needs carol: the refresh token stood for her, in the OAuth2 form.
    expect(requests.every((q) => q.method === 'POST' && q.grant === 'refresh_token' && q.user === 'carol' && q.status === 200)).toBe(true);
    expect(requests.some((q) => q.access?.some((a) => a.actions.includes('push')))).toBe(true);
    expectNoSecret(r);
    // A credential helper hands one over as the user <token>.
    const helped = await home({
      'docker/config.json': { credHelpers: { [token.host]: 'tok' } },
      'bin/docker-credential-tok': `#!/bin/sh\ncat >/dev/null\nprintf '{"ServerURL":"%s","Username":"<token>","Secret":"${REFRESH}"}' "${token.host}"\n`,
    });
    await fs.chmod(path.join(helped.dir, 'bin/docker-credential-tok'), 0o755);
    const viaHelper = await smart(['push', `oci:${fx.paths.ociBasic}:latest`, `docker://${token.host}/lib/helped:1`, '--cert-dir', certDir], {
      env: { ...helped.env, PATH: `${path.join(helped.dir, 'bin')}:${process.env.PATH ?? ''}` },
      cacheHome: helped.cacheHome,
    });
    expect(viaHelper.code, viaHelper.stderr).toBe(0);
    expect(tokens.requests.at(-1)).toMatchObject({ method: 'POST', grant: 'refresh_token', user: 'carol', status: 200 });
    expectNoSecret(viaHelper);
    // The same in a containers auth.json; and a token the server does not know fails in one line, unshown.
    const revoked = await home({ 'runtime/containers/auth.json': { auths: { [token.host]: { identitytoken: `${REFRESH}-revoked` } } } });
    const failed = await smart(['pull', `docker://${token.host}/lib/refreshed:1`, `oci:${path.join(revoked.dir, 'out')}:x`, '--cert-dir', certDir], {
      env: revoked.env,
      cacheHome: revoked.cacheHome,
    });
    expect(failed.code).toBe(1);
    expect(failed.stderr).toMatch(/^smart: error \[REGISTRY\]: authentication to 127\.0\.0\.1:\d+ failed with its identity token \(the token server answered 401\) \(the identity token may have expired or been revoked: log in again\)$/m);
    expectNoSecret(failed);
  });
});
