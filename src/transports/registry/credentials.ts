/**
 * Registry credentials, found as skopeo, podman and Docker find them: `--creds` (and the like)
 * first, then the files their logins write, in the order containers/image reads them
 * (pkg/docker/config): `--authfile` or `$REGISTRY_AUTH_FILE` alone when given; else
 * `$XDG_RUNTIME_DIR/containers/auth.json` (`/run/containers/UID/auth.json` without it),
 * `$XDG_CONFIG_HOME/containers/auth.json` (`~/.config/containers/auth.json`), then Docker's
 * `$DOCKER_CONFIG/config.json` (`~/.docker/config.json`). The first file that knows the host
 * answers: `credHelpers[host]` (running `docker-credential-NAME get`), `auths[host]`, and in
 * Docker's file its `credsStore`. An `identitytoken` (an OAuth2 refresh token, what `docker login`
 * keeps for an identity provider) is exchanged at the token endpoint, never sent to the registry.
 * Secrets stay inside this module and the auth header builder: they never reach a message, an
 * error or --debug output.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { SmartError, isErrno } from '../../errors.js';
import { homeDirectory } from '../../home.js';
import { untrustedText } from '../../redact.js';

export interface Credentials {
  username: string;
  /** Empty when the credential is an identity token. */
  password: string;
  /**
   * An OAuth2 refresh token (`identitytoken` in a config file, or a credential helper's answer for
   * the user `<token>`): exchanged at the registry's token endpoint for access tokens
   * (grant_type=refresh_token), never sent to the registry itself.
   */
  identityToken?: string;
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

/** Docker's config.json and the containers auth.json share this shape (auth.json has no credsStore). */
interface DockerConfig {
  auths?: Record<string, { auth?: string; username?: string; password?: string; identitytoken?: string }>;
  credHelpers?: Record<string, string>;
  credsStore?: string;
}

/** A credentials file to read: a containers auth.json, or Docker's config.json (whose credsStore counts). */
export interface CredentialFile {
  path: string;
  docker: boolean;
  /** Named by the user (`--authfile`, `$REGISTRY_AUTH_FILE`): it must exist. */
  named?: string;
}

/**
 * The files credentials are read from, in order (containers/image's getAuthFilePaths): the one the
 * user names alone, else the per-session auth.json, the per-user one, and Docker's config.
 */
export function credentialFiles(options: { authFile?: string } = {}, env: NodeJS.ProcessEnv = process.env): CredentialFile[] {
  const named = options.authFile ? { path: options.authFile, named: '--authfile' } : env.REGISTRY_AUTH_FILE ? { path: env.REGISTRY_AUTH_FILE, named: 'REGISTRY_AUTH_FILE' } : undefined;
  if (named) return [{ path: named.path, docker: false, named: named.named }];
  // No home (a user id with no entry, $HOME unset): the files under it are not there.
  const home = homeDirectory(env);
  const runtime = env.XDG_RUNTIME_DIR ? path.join(env.XDG_RUNTIME_DIR, 'containers', 'auth.json') : `/run/containers/${process.getuid?.() ?? 0}/auth.json`;
  return [
    { path: runtime, docker: false },
    ...(env.XDG_CONFIG_HOME || home ? [{ path: path.join(env.XDG_CONFIG_HOME || path.join(home!, '.config'), 'containers', 'auth.json'), docker: false }] : []),
    ...(env.DOCKER_CONFIG !== undefined || home ? [{ path: path.join(env.DOCKER_CONFIG ?? path.join(home!, '.docker'), 'config.json'), docker: true }] : []),
  ];
}

async function readCredentialFile(file: CredentialFile): Promise<DockerConfig | undefined> {
  let text: string;
  try {
    text = await fs.readFile(file.path, 'utf8');
  } catch (e) {
    if (isErrno(e, 'ENOENT') && !file.named) return undefined;
    const why = isErrno(e, 'ENOENT') ? 'no such file' : (e as Error).message;
    throw new SmartError('USAGE', `cannot read ${file.named ? `${file.named} ` : ''}${file.path}: ${why}`, { input: file.path });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new SmartError('USAGE', `${file.path} is not valid JSON`, { input: file.path });
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new SmartError('USAGE', `${file.path} is not a credential file: its JSON is ${Array.isArray(parsed) ? 'an array' : parsed === null ? 'null' : `a ${typeof parsed}`}, not an object of "auths"`, { input: file.path });
  }
  return parsed as DockerConfig;
}

const HELPER_TIMEOUT_MS = 30_000;

/**
 * Runs `docker-credential-NAME get` with the server on stdin, as the Docker CLI does. A helper that
 * fails is one line: its name, how it ended, and the first line of its stderr (redacted).
 */
async function runHelper(name: string, server: string): Promise<Credentials | undefined> {
  const program = `docker-credential-${name}`;
  // child_process is loaded only here: most commands never run a helper.
  const { execFile } = process.getBuiltinModule('node:child_process');
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
          new SmartError('REGISTRY', `credential helper ${program} failed for ${server} (${ended})${said ? `: ${untrustedText(said, { max: 160, keep: [server, program] })}` : ''}`, {
            input: program,
            hint: `check that ${program} works: echo ${server} | ${program} get`,
          }),
        );
        return;
      }
      try {
        const out = JSON.parse(stdout) as { Username?: string; Secret?: string };
        // The helper protocol's way to hand over an identity token: the user `<token>`.
        if (out.Secret && out.Username === '<token>') resolve({ username: '', password: '', identityToken: out.Secret });
        else resolve(out.Secret ? { username: out.Username ?? '', password: out.Secret } : undefined);
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

function fromAuthEntry(entry: NonNullable<DockerConfig['auths']>[string], where: string): Credentials | undefined {
  if (typeof entry !== 'object' || entry === null) return undefined;
  let username = entry.username ?? '';
  let password = entry.password ?? '';
  if (typeof entry.auth === 'string' && entry.auth) {
    // Not base64 (Node's decoder would skip what it cannot read): a login gone wrong, said so,
    // as skopeo says it, rather than a request without credentials answered "log in". Its value
    // is not shown: it is the secret.
    if (!/^[A-Za-z0-9+/]+={0,2}$/.test(entry.auth.trim())) {
      throw new SmartError('USAGE', `${where}: its "auth" value is not base64 of USER:PASSWORD`, { input: where, hint: 'log in again (docker login, podman login), or mend the entry' });
    }
    const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
    const i = decoded.indexOf(':');
    if (i > 0) {
      username = decoded.slice(0, i);
      password = decoded.slice(i + 1).replace(/\0+$/, '');
    }
  }
  // docker login with an identity provider keeps a refresh token (and the user, without a password).
  if (typeof entry.identitytoken === 'string' && entry.identitytoken) return { username, password: '', identityToken: entry.identitytoken };
  if (username && password) return { username, password };
  return undefined;
}

/** `https://host/v1/` → `host`; Docker Hub's names → `index.docker.io` (containers/image normalizeRegistry). */
function normalizeKey(key: string): string {
  const host = key.replace(/^https?:\/\//, '').split('/')[0]!;
  return host === 'docker.io' || host === 'registry-1.docker.io' ? 'index.docker.io' : host;
}

/** What one file knows of `host`: a helper's answer, an auths entry, or (Docker's file) its credsStore's. */
async function fromFile(config: DockerConfig, host: string, docker: boolean, path: string): Promise<Credentials | undefined> {
  const keys = configKeys(host);
  for (const key of keys) {
    const helper = config.credHelpers?.[key];
    if (typeof helper === 'string' && helper) return runHelper(helper, key);
  }
  const auths = typeof config.auths === 'object' && config.auths !== null ? config.auths : {};
  for (const key of keys) {
    const entry = auths[key];
    if (entry) {
      const creds = fromAuthEntry(entry, `${path}: the entry for ${key}`);
      if (creds) return creds;
    }
  }
  // Keys written as URLs (`https://host/v2/`, what older logins kept), matched by their host.
  const wanted = normalizeKey(host);
  for (const [key, entry] of Object.entries(auths)) {
    if (normalizeKey(key) !== wanted) continue;
    const creds = fromAuthEntry(entry, `${path}: the entry for ${key}`);
    if (creds) return creds;
  }
  if (docker && typeof config.credsStore === 'string' && config.credsStore) return runHelper(config.credsStore, keys[0]!);
  return undefined;
}

/**
 * Finds credentials for `host`. `explicit` (from --creds or SMART_REGISTRY_AUTH) wins; then the
 * credential files in order (credentialFiles), the first that knows the host answering; a host
 * nothing is configured for gets undefined (anonymous).
 */
export async function lookupCredentials(host: string, explicit?: Credentials, options: { authFile?: string } = {}): Promise<Credentials | undefined> {
  if (explicit) return explicit;
  for (const file of credentialFiles(options)) {
    const config = await readCredentialFile(file);
    if (!config) continue;
    const creds = await fromFile(config, host, file.docker, file.path);
    if (creds) return creds;
  }
  return undefined;
}
