/**
 * Registry credentials, found as Docker finds them: `--creds`/`SMART_REGISTRY_AUTH` first, then
 * `$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`): `credHelpers[host]`, `auths[host]`,
 * then `credsStore`, running `docker-credential-NAME get`. Secrets stay inside this module and
 * the auth header builder: they never reach a message, an error or --debug output.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { SmartError, isErrno } from '../../errors.js';
import { redactSecretLike, remoteText } from '../../redact.js';

export interface Credentials {
  username: string;
  password: string;
}

/** Parses `USER:PASS` (the password may contain colons). */
export function parseCredentials(s: string, what: string): Credentials {
  const i = s.indexOf(':');
  if (i <= 0) throw new SmartError('USAGE', `${what} must be USER:PASSWORD`, { input: what });
  return { username: s.slice(0, i), password: s.slice(i + 1) };
}

/** The keys a docker config may use for `host`; Docker Hub is stored under its v1 index URL. */
export function configKeys(host: string): string[] {
  if (host === 'docker.io' || host === 'registry-1.docker.io' || host === 'index.docker.io') {
    return ['https://index.docker.io/v1/', 'index.docker.io', 'docker.io', 'registry-1.docker.io'];
  }
  return [host, `https://${host}`, `http://${host}`, `https://${host}/v1/`, `https://${host}/v2/`];
}

interface DockerConfig {
  auths?: Record<string, { auth?: string; username?: string; password?: string; identitytoken?: string }>;
  credHelpers?: Record<string, string>;
  credsStore?: string;
}

function dockerConfigPath(): string {
  const dir = process.env.DOCKER_CONFIG ?? path.join(os.homedir(), '.docker');
  return path.join(dir, 'config.json');
}

async function readDockerConfig(): Promise<DockerConfig | undefined> {
  const file = dockerConfigPath();
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (e) {
    if (isErrno(e, 'ENOENT')) return undefined;
    throw new SmartError('USAGE', `cannot read ${file}: ${(e as Error).message}`, { input: file });
  }
  try {
    return JSON.parse(text) as DockerConfig;
  } catch {
    throw new SmartError('USAGE', `${file} is not valid JSON`, { input: file });
  }
}

const HELPER_TIMEOUT_MS = 30_000;

/**
 * Runs `docker-credential-NAME get` with the server on stdin, as the Docker CLI does. A helper that
 * fails is one line: its name, how it ended, and the first line of its stderr (redacted).
 */
async function runHelper(name: string, server: string): Promise<Credentials | undefined> {
  const program = `docker-credential-${name}`;
  // child_process is loaded only here: most commands never run a helper.
  const { execFile } = await import('node:child_process');
  return new Promise((resolve, reject) => {
    const child = execFile(program, ['get'], { timeout: HELPER_TIMEOUT_MS }, (err, stdout, stderr) => {
      if (err) {
        if (isErrno(err, 'ENOENT')) {
          reject(new SmartError('USAGE', `credential helper ${program} is not installed`, { input: program }));
          return;
        }
        // The protocol's "not found" is a normal answer: no credentials for this server.
        if (/credentials not found/i.test(`${stdout}${stderr}`)) {
          resolve(undefined);
          return;
        }
        const ended =
          typeof err.code === 'number'
            ? `exit ${err.code}`
            : err.killed && err.signal === 'SIGTERM'
              ? `no answer in ${HELPER_TIMEOUT_MS / 1000} s`
              : err.signal
                ? `killed by ${err.signal}`
                : `cannot run it: ${String(err.code ?? err.message)}`;
        const said = stderr.split('\n').find((line) => line.trim());
        reject(
          // The helper holds the secret and may say it: what looks like one is hidden too.
          new SmartError('REGISTRY', `credential helper ${program} failed for ${server} (${ended})${said ? `: ${redactSecretLike(remoteText(said, { max: 160 }), [server, program])}` : ''}`, {
            input: program,
            hint: `check that ${program} works: echo ${server} | ${program} get`,
          }),
        );
        return;
      }
      try {
        const out = JSON.parse(stdout) as { Username?: string; Secret?: string };
        resolve(out.Secret ? { username: out.Username ?? '', password: out.Secret } : undefined);
      } catch {
        reject(new SmartError('REGISTRY', `credential helper ${program} answered something that is not JSON`, { input: program }));
      }
    });
    // A helper that exits without reading its input closes the pipe under our write (EPIPE): how it
    // ended, reported above, is the error to give, not the write's.
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(server);
  });
}

function fromAuthEntry(entry: NonNullable<DockerConfig['auths']>[string]): Credentials | undefined {
  if (entry.auth) {
    const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
    const i = decoded.indexOf(':');
    if (i > 0) return { username: decoded.slice(0, i), password: decoded.slice(i + 1) };
  }
  if (entry.username && entry.password) return { username: entry.username, password: entry.password };
  return undefined;
}

/**
 * Finds credentials for `host`. `explicit` (from --creds or SMART_REGISTRY_AUTH) wins; a host
 * with nothing configured gets undefined (anonymous).
 */
export async function lookupCredentials(host: string, explicit?: Credentials): Promise<Credentials | undefined> {
  if (explicit) return explicit;
  const config = await readDockerConfig();
  if (!config) return undefined;
  const keys = configKeys(host);
  for (const key of keys) {
    const helper = config.credHelpers?.[key];
    if (helper) return runHelper(helper, key);
  }
  for (const key of keys) {
    const entry = config.auths?.[key];
    if (entry) {
      const creds = fromAuthEntry(entry);
      if (creds) return creds;
    }
  }
  if (config.credsStore) {
    for (const key of keys.slice(0, 1)) {
      const creds = await runHelper(config.credsStore, key);
      if (creds) return creds;
    }
  }
  return undefined;
}
