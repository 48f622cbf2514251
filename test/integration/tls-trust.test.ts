/**
 * NODE_EXTRA_CA_CERTS as a user's shell gives it to the commands (bin/*.js run by their #! line):
 * Node starts without reading the file, and the CLI trusts it from the first TLS connection on,
 * for each TLS client it has: a registry, S3 (a TLS front on s3rver) and Redis (rediss://). The
 * servers' CA is named by that variable alone, so each command that works here fails without it.
 * A command that makes no TLS connection never reads the file, and the programs the CLI starts
 * (a credential helper) see the variable as the user set it.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { fixtures } from '../harness/fixtures.js';
import { writeHtpasswd } from '../harness/htpasswd.js';
import { startRedis, type RunningRedis } from '../harness/redis.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { repoRoot, run, type RunResult } from '../harness/run.js';
import { startS3, type RunningS3 } from '../harness/s3.js';
import { makeTestCA, startTlsFront, type TestCA } from '../harness/tls.js';
import { haveTools } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';

const PASSWORD = 'tls-trust-secret';

describe.skipIf(!haveTools('docker-registry', 'openssl', 'htpasswd', 'redis-server'))('NODE_EXTRA_CA_CERTS, read at the first TLS connection', () => {
  let work: string;
  let ca: TestCA;
  let plain: RunningRegistry;
  let secure: RunningRegistry;
  let redis: RunningRedis;
  let s3: RunningS3;
  let front: Awaited<ReturnType<typeof startTlsFront>>;
  let helperBin: string;
  let dockerConfig: string;
  let n = 0;

  /** bin/smart.js run as a command, with a cache of its own and `extra` as NODE_EXTRA_CA_CERTS (unset when undefined). */
  const command = async (args: string[], extra: string | undefined, env: NodeJS.ProcessEnv = {}): Promise<RunResult> =>
    run(path.join(repoRoot, 'bin', 'smart.js'), args, {
      env: {
        ...process.env,
        XDG_CACHE_HOME: path.join(work, `cache-${++n}`),
        CONTAINERS_REGISTRIES_CONF: inject('registriesConf'),
        DOCKER_CONFIG: dockerConfig,
        PATH: `${path.dirname(process.execPath)}:${helperBin}:${process.env.PATH ?? ''}`,
        // The runner's own flags are not the user's.
        NODE_OPTIONS: undefined,
        NODE_EXTRA_CA_CERTS: extra,
        SMART_DEFERRED_CA_CERTS: undefined,
        ...env,
      },
    });
  const source = () => `oci:${fixtures().paths.ociBasic}:latest`;

  beforeAll(async () => {
    work = await tempDir();
    ca = await makeTestCA(path.join(work, 'ca'));
    const serving = { certFile: ca.certFile, keyFile: ca.keyFile, caFile: ca.caCertFile };
    const htpasswd = path.join(work, 'htpasswd');
    await writeHtpasswd(htpasswd, { alice: PASSWORD });
    // A credential helper that answers alice's password and writes down the environment it got.
    helperBin = path.join(work, 'bin');
    dockerConfig = path.join(work, 'docker');
    await fs.mkdir(helperBin);
    await fs.mkdir(dockerConfig);
    await fs.writeFile(
      path.join(helperBin, 'docker-credential-recorder'),
      [
        '#!/bin/sh',
        `echo "NODE_EXTRA_CA_CERTS=\${NODE_EXTRA_CA_CERTS-unset} SMART_DEFERRED_CA_CERTS=\${SMART_DEFERRED_CA_CERTS-unset}" > ${path.join(work, 'helper-env')}`,
        'cat > /dev/null',
        `echo '{"Username":"alice","Secret":"${PASSWORD}"}'`,
        '',
      ].join('\n'),
      { mode: 0o755 },
    );
    [plain, secure, redis, s3] = await Promise.all([
      startRegistry({ configDir: work }),
      startRegistry({ configDir: work, tls: serving, auth: { htpasswd: { realm: 'private', path: htpasswd } } }),
      startRedis(path.join(work, 'redis'), { tls: { certFile: ca.certFile, keyFile: ca.keyFile } }),
      startS3(path.join(work, 's3')),
    ]);
    front = await startTlsFront(ca, s3.port);
    await fs.writeFile(path.join(dockerConfig, 'config.json'), JSON.stringify({ credHelpers: { [secure.host]: 'recorder' } }));
  });

  afterAll(async () => {
    await front?.stop();
    await Promise.all([plain?.stop(), secure?.stop(), redis?.stop(), s3?.stop()]);
  });

  it('a command that makes no TLS connection never reads the file, nor does the TLS probe of a loopback registry', async () => {
    const missing = path.join(work, 'no-such-ca.pem');
    const r = await command(['push', '-q', source(), `file:${path.join(work, 'store')}#lazy/app:v1`], missing);
    expect(r.code, r.stderr).toBe(0);
    // Node, had it read the file at start-up, would have warned that it is missing.
    expect(r.stderr).toBe('');
    // A registry met for the first time (its scheme not remembered) is asked over TLS first: a
    // bare handshake that needs no CA, so the file is still not read.
    const plainPush = await command(['push', '-q', source(), `docker://${plain.host}/lazy/app:v1`], missing);
    expect(plainPush.code, plainPush.stderr).toBe(0);
    expect(plainPush.stderr).toBe('');
  });

  it('a registry over TLS, and the credential helper it runs, get the file', async () => {
    const dest = `docker://${secure.host}/trust/app:v1`;
    const pushed = await command(['push', source(), dest], ca.caCertFile);
    expect(pushed.code, pushed.stderr).toBe(0);
    expect(await fs.readFile(path.join(work, 'helper-env'), 'utf8')).toBe(`NODE_EXTRA_CA_CERTS=${ca.caCertFile} SMART_DEFERRED_CA_CERTS=unset\n`);
    const pulled = await command(['pull', dest, `oci:${path.join(work, 'pulled')}:v1`], ca.caCertFile);
    expect(pulled.code, pulled.stderr).toBe(0);

    const without = await command(['push', source(), dest.replace(':v1', ':v2')], undefined);
    expect(without.code).toBe(1);
    expect(without.stderr).toMatch(/unable to verify the first certificate/);
    // A file that cannot be read: said once, as Node says it, and the command goes on without it.
    const unreadable = await command(['push', source(), dest.replace(':v1', ':v3')], path.join(work, 'no-such-ca.pem'));
    expect(unreadable.code).toBe(1);
    expect(unreadable.stderr.match(/^warning: ignoring extra certs from .*no-such-ca\.pem \(NODE_EXTRA_CA_CERTS\), load failed: ENOENT$/gm)).toHaveLength(1);
    expect(unreadable.stderr).toMatch(/unable to verify the first certificate/);

    // Where the launcher leaves the variable to Node (started by `node` rather than by the #! line,
    // or with NODE_OPTIONS choosing the CA store), the file is trusted all the same.
    const byNode = await run(process.execPath, [path.join(repoRoot, 'bin', 'smart.js'), 'push', source(), dest.replace(':v1', ':v4')], {
      env: { ...process.env, XDG_CACHE_HOME: path.join(work, 'cache-node'), DOCKER_CONFIG: dockerConfig, PATH: `${helperBin}:${process.env.PATH ?? ''}`, NODE_EXTRA_CA_CERTS: ca.caCertFile, NODE_OPTIONS: undefined },
    });
    expect(byNode.code, byNode.stderr).toBe(0);
    const chosenStore = await command(['push', source(), dest.replace(':v1', ':v5')], ca.caCertFile, { NODE_OPTIONS: '--use-openssl-ca' });
    expect(chosenStore.code, chosenStore.stderr).toBe(0);
    expect(await fs.readFile(path.join(work, 'helper-env'), 'utf8')).toBe(`NODE_EXTRA_CA_CERTS=${ca.caCertFile} SMART_DEFERRED_CA_CERTS=unset\n`);
  });

  it('S3 over TLS gets the file', async () => {
    const env = { ...s3.env, AWS_ENDPOINT_URL_S3: front.endpoint };
    const pushed = await command(['push', source(), `s3://${s3.bucket}#trust/app:v1`], ca.caCertFile, env);
    expect(pushed.code, pushed.stderr).toBe(0);
    const pulled = await command(['pull', `s3://${s3.bucket}#trust/app:v1`, `oci:${path.join(work, 'from-s3')}:v1`], ca.caCertFile, env);
    expect(pulled.code, pulled.stderr).toBe(0);
    const without = await command(['push', source(), `s3://${s3.bucket}#trust/app:v2`], undefined, env);
    expect(without.code).toBe(1);
    expect(without.stderr).toMatch(/certificate/);
  });

  it('Redis over TLS (rediss://) gets the file', async () => {
    const redisUrl = `rediss://127.0.0.1:${redis.port}`;
    await redis.cli('FLUSHALL');
    const without = await command(['pull', `docker://${plain.host}/none/app:v1`, `oci:${path.join(work, 'none')}:v1`, '--redis', redisUrl], undefined);
    expect(without.stderr).toMatch(/certificate/);
    expect(await redis.cli('DBSIZE')).toBe('0');

    const pushed = await command(['push', source(), `docker://${plain.host}/trust/app:v1`, '--redis', redisUrl], ca.caCertFile);
    expect(pushed.code, pushed.stderr).toBe(0);
    expect(pushed.stderr).not.toMatch(/warning/);
    expect(Number(await redis.cli('DBSIZE'))).toBeGreaterThan(0);
  });
});
