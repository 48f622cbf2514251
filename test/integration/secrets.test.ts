/**
 * Secrets kept: pushes, pulls and cache commands run with known secrets of every kind smart is
 * given — a password for an htpasswd registry (by --creds, SMART_REGISTRY_AUTH, a docker config
 * `auth` entry, a credential helper), a token server's password and the tokens it issues, S3 keys,
 * a Redis password, an identity token in the docker config (exchanged for tokens; a revoked one too) — in every
 * output mode (plain, --debug, --json, --progress json, -q), succeeding and failing. Then every
 * place a secret could land is searched for each one, as it is, base64-encoded (also as the
 * `user:password` of a Basic header), and URL-encoded: stdout and stderr of every run, every file
 * of the cache directory (metadata cache, layer store), every Redis key and value (read plain, and
 * DUMPed), and every file and object name of the stores written (file: and S3) besides their blobs.
 * The coverage (which secrets went through which command in which mode, and where each was
 * searched) is printed at the end.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { GetObjectCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixtures } from '../harness/fixtures.js';
import { writeHtpasswd } from '../harness/htpasswd.js';
import { startRedis, type RunningRedis } from '../harness/redis.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { smart, type RunResult } from '../harness/run.js';
import { startS3, type RunningS3 } from '../harness/s3.js';
import { pool } from '../harness/soak.js';
import { certDirFor, makeTestCA } from '../harness/tls.js';
import { startTokenServer, type RunningTokenServer } from '../harness/token-server.js';
import { haveTools } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';

/** Each secret is distinct, long, and holds characters that URL- and base64-encode differently. */
const SECRET = {
  basicPassword: 'b4sic-P@ss:w0rd/7f3a+9c2',
  configPassword: 'c0nfig-P@ss:w0rd/51e8+0d4',
  helperSecret: 'he1per-S3cret:x/82b1+e6f',
  tokenPassword: 't0ken-P@ss:w0rd/3d9e+a71',
  wrongPassword: 'wr0ng-P@ss:w0rd/c4a2+5b8',
  redisPassword: 'r3dis-P@ss:w0rd/9a0f+2c6',
  s3AccessKeyId: 'AKIASOAKTEST7F3A9C21',
  s3SecretKey: 's3Secret/K3y+with=signs7f3a9c2e1b',
  s3UnknownKeyId: 'AKIASOAKUNKNOWN00042',
  identityToken: 'identity-t0ken.7f3a9c2e1b.refresh',
  revokedIdentityToken: 'rev0ked-identity.5c1d8e2a4f.refresh',
} as const;

const USERS = { basicPassword: 'alice', configPassword: 'dave', helperSecret: 'erin', tokenPassword: 'carol', wrongPassword: 'alice' } as const;

type SecretName = keyof typeof SECRET | 'issuedToken';

/** The forms a secret could be written in: as is, base64 (padded or not, alone or as a Basic header's user:secret), URL-encoded. */
function forms(name: string, secret: string): { form: string; text: string }[] {
  const out = new Map<string, string>();
  const add = (form: string, text: string) => {
    if (text.length >= 8 && !out.has(text)) out.set(text, form);
  };
  add('plain', secret);
  add('base64', Buffer.from(secret).toString('base64'));
  add('base64', Buffer.from(secret).toString('base64').replace(/=+$/, ''));
  add('base64url', Buffer.from(secret).toString('base64url'));
  add('url-encoded', encodeURIComponent(secret));
  const user = (USERS as Record<string, string>)[name];
  if (user) add('basic header', Buffer.from(`${user}:${secret}`).toString('base64').replace(/=+$/, ''));
  // A JWT's signature alone is as good as the token: look for it too.
  if (secret.split('.').length === 3) add('jwt signature', secret.split('.')[2]!);
  return [...out].map(([text, form]) => ({ form, text }));
}

interface Run {
  what: string;
  mode: string;
  secrets: SecretName[];
  expect: 'ok' | 'fail';
  r: RunResult;
}

const MODES: Record<string, string[]> = {
  plain: [],
  debug: ['--debug'],
  json: ['--json'],
  'progress-json': ['--progress', 'json'],
  quiet: ['-q'],
  'debug+json+progress-json': ['--debug', '--json', '--progress', 'json'],
};

describe.skipIf(!haveTools('docker-registry', 'openssl', 'htpasswd', 'redis-server'))('secrets stay out of every output, cache, key and store', () => {
  let work: string;
  let cacheHome: string;
  let certDir: string;
  let basic: RunningRegistry;
  let tokens: RunningTokenServer;
  let tokenRegistry: RunningRegistry;
  let redis: RunningRedis;
  let s3: RunningS3;
  let fileStore: string;
  /** A docker config with an `auth` entry for the htpasswd registry, and an identity token for the token registry. */
  let dockerConfig: string;
  /** A docker config with an identity token the token server does not know (revoked). */
  let revokedConfig: string;
  /** A docker config whose credHelpers send the htpasswd registry to docker-credential-soak. */
  let helperConfig: string;
  let helperBin: string;
  const runs: Run[] = [];

  beforeAll(async () => {
    work = await tempDir('smart-secrets-');
    cacheHome = path.join(work, 'cache-home');
    const ca = await makeTestCA(path.join(work, 'ca'));
    certDir = await certDirFor(ca, path.join(work, 'certs'));
    const tls = { certFile: ca.certFile, keyFile: ca.keyFile, caFile: ca.caCertFile };
    const htpasswd = path.join(work, 'htpasswd');
    await writeHtpasswd(htpasswd, { alice: SECRET.basicPassword, dave: SECRET.configPassword, erin: SECRET.helperSecret });
    tokens = await startTokenServer({
      dir: path.join(work, 'tokens'),
      users: { carol: SECRET.tokenPassword },
      refreshTokens: { [SECRET.identityToken]: 'carol' },
      grants: (user, scope) => (scope.type !== 'repository' ? (user ? ['*'] : []) : scope.actions.filter((a) => a === 'pull' || (a === 'push' && user === 'carol'))),
    });
    [basic, tokenRegistry, redis, s3] = await Promise.all([
      startRegistry({ configDir: path.join(work, 'basic'), tls, auth: { htpasswd: { realm: 'secrets', path: htpasswd } } }),
      startRegistry({ configDir: path.join(work, 'token'), tls, auth: { token: tokens } }),
      startRedis(path.join(work, 'redis'), { args: ['--requirepass', SECRET.redisPassword], password: SECRET.redisPassword }),
      startS3(path.join(work, 's3'), { accessKeyId: SECRET.s3AccessKeyId, secretAccessKey: SECRET.s3SecretKey }),
    ]);
    fileStore = path.join(work, 'store');
    dockerConfig = path.join(work, 'docker-config');
    await fs.mkdir(dockerConfig);
    await fs.writeFile(
      path.join(dockerConfig, 'config.json'),
      JSON.stringify({
        auths: {
          [basic.host]: { auth: Buffer.from(`dave:${SECRET.configPassword}`).toString('base64') },
          [tokenRegistry.host]: { identitytoken: SECRET.identityToken },
        },
      }),
    );
    revokedConfig = path.join(work, 'revoked-config');
    await fs.mkdir(revokedConfig);
    await fs.writeFile(path.join(revokedConfig, 'config.json'), JSON.stringify({ auths: { [tokenRegistry.host]: { identitytoken: SECRET.revokedIdentityToken } } }));
    helperBin = path.join(work, 'helper-bin');
    await fs.mkdir(helperBin);
    await fs.writeFile(path.join(helperBin, 'docker-credential-soak'), `#!/bin/sh\nread server\nprintf '{"ServerURL":"%s","Username":"erin","Secret":"${SECRET.helperSecret}"}\\n' "$server"\n`, { mode: 0o755 });
    // A helper that fails, saying the secret on its stderr (as a broken keychain tool might).
    await fs.writeFile(path.join(helperBin, 'docker-credential-leaky'), `#!/bin/sh\nprintf 'keychain locked; secret was ${SECRET.helperSecret}\\n' >&2\nexit 4\n`, { mode: 0o755 });
    helperConfig = path.join(work, 'helper-config');
    await fs.mkdir(helperConfig);
    await fs.writeFile(path.join(helperConfig, 'config.json'), JSON.stringify({ credHelpers: { [basic.host]: 'soak' } }));
  });

  afterAll(async () => {
    await Promise.all([basic?.stop(), tokenRegistry?.stop(), redis?.stop(), s3?.stop()]);
    await tokens?.stop();
  });

  const redisUrl = () => `redis://:${encodeURIComponent(SECRET.redisPassword)}@127.0.0.1:${redis.port}`;

  /** One run, recorded with the secrets it was given, in one mode. */
  async function go(what: string, mode: keyof typeof MODES, args: string[], secrets: SecretName[], expectOutcome: 'ok' | 'fail', env: NodeJS.ProcessEnv = {}): Promise<RunResult> {
    const r = await smart([...args, ...MODES[mode]!], { cacheHome, env: { DOCKER_CONFIG: path.join(work, 'no-docker-config'), ...env } });
    runs.push({ what, mode, secrets, expect: expectOutcome, r });
    if (expectOutcome === 'ok') expect(r.code, `${what} (${mode}): ${r.stderr}`).toBe(0);
    else expect(r.code, `${what} (${mode}) should fail: ${r.stderr}`).not.toBe(0);
    return r;
  }

  const basicRef = (repo: string) => `docker://${basic.host}/${repo}`;
  const tokenRef = (repo: string) => `docker://${tokenRegistry.host}/${repo}`;
  const src = () => `oci:${fixtures().paths.ociBasic}:latest`;
  const out = (name: string) => `oci:${path.join(work, 'out', name)}:x`;
  const cert = () => ['--cert-dir', certDir];

  it('runs every kind of secret through every command and mode, succeeding and failing', async () => {
    type Spec = [what: string, mode: keyof typeof MODES, args: string[], secrets: SecretName[], outcome: 'ok' | 'fail', env?: NodeJS.ProcessEnv];
    const withRedis = () => ['--redis', redisUrl()];
    const creds = (user: string, secret: string) => ['--creds', `${user}:${secret}`];
    const helperEnv = () => ({ DOCKER_CONFIG: helperConfig, PATH: `${helperBin}:${process.env.PATH ?? ''}` });
    const wrongRedis = `redis://:${encodeURIComponent(SECRET.wrongPassword)}@127.0.0.1:${redis.port}`;
    const modes = Object.keys(MODES) as (keyof typeof MODES)[];
    // First what later runs read: images in both registries, in S3, and in the file: store.
    const seeds: Spec[] = [
      ...modes.map((mode, i): Spec => ['push --creds (htpasswd) --redis', mode, ['push', src(), basicRef(`creds/app:${i}`), ...creds('alice', SECRET.basicPassword), ...cert(), ...withRedis()], ['basicPassword', 'redisPassword'], 'ok']),
      ...(['plain', 'debug', 'debug+json+progress-json'] as const).map((mode, i): Spec => ['push token auth --creds', mode, ['push', src(), tokenRef(`lib/app:${i}`), ...creds('carol', SECRET.tokenPassword), ...cert()], ['tokenPassword', 'issuedToken'], 'ok']),
      ...(['debug', 'progress-json'] as const).map((mode): Spec => ['push SMART_REGISTRY_AUTH', mode, ['push', src(), basicRef(`env/app:${mode}`), ...cert()], ['basicPassword'], 'ok', { SMART_REGISTRY_AUTH: `alice:${SECRET.basicPassword}` }]),
      ...(['json', 'debug'] as const).map((mode): Spec => ['push docker config auth', mode, ['push', src(), basicRef(`config/app:${mode}`), ...cert()], ['configPassword', 'identityToken'], 'ok', { DOCKER_CONFIG: dockerConfig }]),
      ...(['plain', 'debug+json+progress-json'] as const).map((mode, i): Spec => ['push credential helper', mode, ['push', src(), basicRef(`helper/app:${i}`), ...cert()], ['helperSecret'], 'ok', helperEnv()]),
      ...(['debug', 'json', 'progress-json'] as const).map((mode, i): Spec => ['push into s3: with keys, --redis', mode, ['push', src(), `s3://${s3.bucket}/reg#team/app:${i}`, ...withRedis()], ['s3AccessKeyId', 's3SecretKey', 'redisPassword'], 'ok', s3.env]),
      ['pull into file: --creds --redis', 'json', ['pull', basicRef('creds/app:0'), `file:${fileStore}#team/app:1`, ...creds('alice', SECRET.basicPassword), ...cert(), ...withRedis()], ['basicPassword', 'redisPassword'], 'ok'],
    ];
    const rest: Spec[] = [
      ...(['plain', 'debug', 'quiet'] as const).map((mode, i): Spec => ['pull --creds (htpasswd) → rootfs, --redis', mode, ['pull', basicRef(`creds/app:${i}`), `rootfs:${path.join(work, 'out', `rootfs-${i}`)}`, ...creds('alice', SECRET.basicPassword), ...cert(), ...withRedis()], ['basicPassword', 'redisPassword'], 'ok']),
      ...(['debug', 'debug+json+progress-json'] as const).map((mode): Spec => ['pull --creds, a wrong password', mode, ['pull', basicRef('creds/app:0'), out(`wrong-${mode}`), ...creds('alice', SECRET.wrongPassword), ...cert()], ['wrongPassword'], 'fail']),
      ['pull --creds, the registry unreachable', 'debug', ['pull', 'docker://127.0.0.1:9/x/y:1', out('refused'), ...creds('alice', SECRET.basicPassword)], ['basicPassword'], 'fail'],
      ['pull SMART_REGISTRY_AUTH, a wrong password', 'debug', ['pull', basicRef('env/app:debug'), out('env-wrong'), ...cert()], ['wrongPassword'], 'fail', { SMART_REGISTRY_AUTH: `alice:${SECRET.wrongPassword}` }],
      ...(['debug', 'json'] as const).map((mode): Spec => ['pull, an identity token in the docker config', mode, ['pull', tokenRef('lib/app:0'), out(`identity-${mode}`), ...cert()], ['configPassword', 'identityToken', 'issuedToken'], 'ok', { DOCKER_CONFIG: dockerConfig }]),
      ...(['plain', 'debug+json+progress-json'] as const).map((mode): Spec => ['pull, a revoked identity token in the docker config', mode, ['pull', tokenRef('lib/app:0'), out(`revoked-${mode}`), ...cert()], ['revokedIdentityToken'], 'fail', { DOCKER_CONFIG: revokedConfig }]),
      ...(['plain', 'debug'] as const).map((mode): Spec => ['push token auth, a wrong password', mode, ['push', src(), tokenRef('lib/app:wrong'), ...creds('carol', SECRET.wrongPassword), ...cert()], ['wrongPassword'], 'fail']),
      ['copy --src-creds --dest-creds', 'debug+json+progress-json', ['push', basicRef('creds/app:0'), tokenRef('lib/copied:1'), '--src-creds', `alice:${SECRET.basicPassword}`, '--dest-creds', `carol:${SECRET.tokenPassword}`, ...cert()], ['basicPassword', 'tokenPassword', 'issuedToken'], 'ok'],
      ...(['plain', 'debug+json+progress-json'] as const).map((mode, i): Spec => ['pull from s3: with keys', mode, ['pull', `s3://${s3.bucket}/reg#team/app:${i}`, out(`s3-${mode}`)], ['s3AccessKeyId', 's3SecretKey'], 'ok', s3.env]),
      ...(['plain', 'debug'] as const).map((mode): Spec => ['pull from s3:, an unknown access key', mode, ['pull', `s3://${s3.bucket}/reg#team/app:0`, out(`s3-bad-${mode}`)], ['s3UnknownKeyId', 's3SecretKey'], 'fail', { ...s3.env, AWS_ACCESS_KEY_ID: SECRET.s3UnknownKeyId }]),
      ['store check s3:', 'debug', ['store', 'check', `s3://${s3.bucket}/reg`, '--json'], ['s3AccessKeyId', 's3SecretKey'], 'ok', s3.env],
      ['push, a wrong Redis password (a warning)', 'debug+json+progress-json', ['push', src(), `file:${fileStore}#redis/wrong:1`, '--redis', wrongRedis], ['wrongPassword'], 'ok'],
      ...(['plain', 'debug'] as const).map((mode): Spec => ['cache index, a wrong Redis password', mode, ['cache', 'index', `file:${fileStore}`, '--redis', wrongRedis], ['wrongPassword'], 'fail']),
      ['cache index, SMART_REDIS_URL', 'debug', ['cache', 'index', `file:${fileStore}`, '--json'], ['redisPassword'], 'ok', { SMART_REDIS_URL: redisUrl() }],
      ...(['plain', 'json'] as const).map((mode): Spec => ['cache index docker:// --creds --redis', mode, ['cache', 'index', `docker://${basic.host}`, ...creds('alice', SECRET.basicPassword), ...cert(), ...withRedis()], ['basicPassword', 'redisPassword'], 'ok']),
      ['cache warm docker:// --creds --redis', 'debug+json+progress-json', ['cache', 'warm', `docker://${basic.host}`, '--top', '2', ...creds('alice', SECRET.basicPassword), ...cert(), ...withRedis()], ['basicPassword', 'redisPassword'], 'ok'],
      ['cache plan --image docker:// --creds --redis', 'json', ['cache', 'plan', `file:${fileStore}`, '--image', basicRef('creds/app:0'), ...creds('alice', SECRET.basicPassword), ...cert(), ...withRedis()], ['basicPassword', 'redisPassword'], 'ok'],
      ['cache index docker://, a wrong password', 'debug', ['cache', 'index', `docker://${basic.host}`, ...creds('alice', SECRET.wrongPassword), ...cert()], ['wrongPassword'], 'fail'],
      // Failures with the right secrets: an image that is not there, each way of giving them.
      ['pull a missing tag, a docker config auth', 'debug', ['pull', basicRef('config/app:missing'), out('missing-config'), ...cert()], ['configPassword', 'identityToken'], 'fail', { DOCKER_CONFIG: dockerConfig }],
      ['pull a missing tag, a credential helper', 'debug+json+progress-json', ['pull', basicRef('helper/app:missing'), out('missing-helper'), ...cert()], ['helperSecret'], 'fail', helperEnv()],
      ['pull a missing tag, token auth --creds', 'debug', ['pull', tokenRef('lib/app:missing'), out('missing-token'), ...creds('carol', SECRET.tokenPassword), ...cert()], ['tokenPassword', 'issuedToken'], 'fail'],
      ['pull a missing tag from s3:, --redis', 'debug+json+progress-json', ['pull', `s3://${s3.bucket}/reg#team/app:missing`, out('missing-s3'), ...withRedis()], ['s3AccessKeyId', 's3SecretKey', 'redisPassword'], 'fail', s3.env],
      ['credentials typed into an image name', 'debug', ['pull', `docker://alice:${encodeURIComponent(SECRET.basicPassword)}@${basic.host}/creds/app:0`, out('typed')], ['basicPassword'], 'fail'],
      ['a Redis URL with a password that does not parse', 'debug', ['push', src(), `file:${fileStore}#typed/app:1`, '--redis', `redis://:${SECRET.redisPassword}@127.0.0.1:${redis.port}?x=1`], ['redisPassword'], 'fail'],
    ];
    // Runs at once, as CI machines run them; four at a time on these 2 cores.
    const runAll = (specs: Spec[]) => pool(specs, 4, ([what, mode, args, secrets, outcome, env]) => go(what, mode, args, secrets, outcome, env));
    await runAll(seeds);
    await runAll(rest);
    // Last: the failing credential helper replaces the working one in its config.
    await fs.writeFile(path.join(helperConfig, 'config.json'), JSON.stringify({ credHelpers: { [basic.host]: 'leaky' } }));
    await runAll((['plain', 'debug+json+progress-json'] as const).map((mode): Spec => ['pull, a credential helper failing with the secret on its stderr', mode, ['pull', basicRef('helper/app:0'), out(`leaky-${mode}`), ...cert()], ['helperSecret'], 'fail', helperEnv()]));
    expect(tokens.issued.length).toBeGreaterThan(0);
  });

  it('finds no secret, in any form, in any output, cache file, Redis key or value, or store file', async () => {
    const all: { name: SecretName; secret: string }[] = [
      ...(Object.entries(SECRET) as [keyof typeof SECRET, string][]).map(([name, secret]) => ({ name, secret })),
      ...tokens.issued.map((secret) => ({ name: 'issuedToken' as const, secret })),
    ];
    const needles = all.flatMap(({ name, secret }) => forms(name, secret).map((f) => ({ name, ...f })));
    const found: string[] = [];
    const search = (where: string, text: string) => {
      for (const n of needles) if (text.includes(n.text)) found.push(`${n.name} (${n.form}) in ${where}`);
    };
    const searched: Record<string, number> = {};
    const count = (where: string) => (searched[where] = (searched[where] ?? 0) + 1);

    for (const run of runs) {
      search(`stdout of ${run.what} (${run.mode})`, run.r.stdout.toString('latin1'));
      search(`stderr of ${run.what} (${run.mode})`, run.r.stderr);
      count('stdout and stderr of runs');
    }
    const files = async (dir: string): Promise<string[]> => {
      const entries = await fs.readdir(dir, { withFileTypes: true, recursive: true }).catch(() => []);
      return entries.filter((e) => e.isFile()).map((e) => path.join(e.parentPath, e.name));
    };
    for (const file of await files(cacheHome)) {
      search(`cache file ${path.relative(cacheHome, file)}`, (await fs.readFile(file)).toString('latin1'));
      search('cache file names', file);
      count(file.includes('layer-store') ? 'layer store files' : 'cache files');
    }
    for (const file of await files(fileStore)) {
      search(`file: store name ${file}`, file);
      count('file: store names');
      if (!/\/blobs\//.test(file)) {
        search(`file: store file ${file}`, (await fs.readFile(file)).toString('latin1'));
        count('file: store non-blob files');
      }
    }
    const client = s3.client();
    let token: string | undefined;
    do {
      const page = await client.send(new ListObjectsV2Command({ Bucket: s3.bucket, ...(token ? { ContinuationToken: token } : {}) }));
      for (const o of page.Contents ?? []) {
        search(`S3 key ${o.Key}`, o.Key!);
        count('S3 keys');
        if (!o.Key!.includes('/blobs/')) {
          const body = await (await client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: o.Key! }))).Body!.transformToByteArray();
          search(`S3 object ${o.Key}`, Buffer.from(body).toString('latin1'));
          count('S3 non-blob objects');
        }
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    const r = new Redis({ host: '127.0.0.1', port: redis.port, password: SECRET.redisPassword, lazyConnect: true });
    try {
      await r.connect();
      const keys = await r.keysBuffer('*');
      expect(keys.length).toBeGreaterThan(0);
      for (const key of keys) {
        const k = key.toString('latin1');
        search(`Redis key ${k}`, k);
        const type = await r.type(key);
        const values: Buffer[] =
          type === 'string'
            ? [(await r.getBuffer(key))!]
            : type === 'hash'
              ? Object.entries(await r.hgetallBuffer(key)).flatMap(([f, v]) => [Buffer.from(f), v])
              : type === 'set'
                ? await r.smembersBuffer(key)
                : type === 'zset'
                  ? await r.zrangeBuffer(key, 0, -1)
                  : type === 'list'
                    ? await r.lrangeBuffer(key, 0, -1)
                    : [];
        for (const v of values) search(`Redis value of ${k}`, v.toString('latin1'));
        const dump = await r.dumpBuffer(key);
        if (dump) search(`Redis DUMP of ${k}`, dump.toString('latin1'));
        count(`Redis keys (${type})`);
      }
    } finally {
      r.disconnect();
    }

    // The coverage, for the record: secret × mode × outcome, and where each was searched.
    const matrix = new Map<string, Set<string>>();
    for (const run of runs) for (const s of run.secrets) (matrix.get(s) ?? matrix.set(s, new Set()).get(s)!).add(`${run.mode}/${run.expect === 'ok' ? 'success' : 'failure'}`);
    console.log(
      `secrets: ${all.length} secrets (${tokens.issued.length} issued tokens) in ${needles.length} forms, ${runs.length} runs; searched: ${Object.entries(searched)
        .map(([k, n]) => `${n} ${k}`)
        .join(', ')}\n  ${[...matrix].map(([s, m]) => `${s}: ${[...m].sort().join(', ')}`).join('\n  ')}`,
    );
    expect(found).toEqual([]);
  });
});
