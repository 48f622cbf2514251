/**
 * The stock Distribution registry (`docker-registry` 2.8.2, Debian), started on a free loopback
 * port over a storage the test chooses (a filesystem root, or a storage section such as S3), with
 * optional TLS and optional auth (htpasswd or Docker token), and stopped by it.
 *
 *   startRegistry(root, configDir)                       // the original form: plain HTTP, no auth
 *   startRegistry({ configDir, root?, storageYaml?, tls?, auth? })
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';
import { ownChild } from './children.js';
import { freePort } from './ports.js';

export type RegistryAuth =
  | { htpasswd: { realm: string; path: string } }
  | { token: { realm: string; service: string; issuer: string; rootCertBundle: string } };

export interface RegistryOptions {
  /** Where the config file (and, without `root`/`storageYaml`, the storage) goes. */
  configDir: string;
  /** Filesystem storage root. Default: a fresh `registry-PORT-storage` directory in `configDir`. */
  root?: string;
  /**
   * Replaces the filesystem storage driver: lines of the `storage:` section's body, written
   * without the section's indentation, e.g. `['s3:', '  bucket: b', ..., 'redirect: {disable: true}']`.
   * The defaults `delete`, `cache` and `maintenance` are kept unless these lines set them.
   */
  storageYaml?: string[];
  /** Serve HTTPS with this certificate. `caFile` (the issuing CA) lets readiness verify it. */
  tls?: { certFile: string; keyFile: string; caFile?: string };
  auth?: RegistryAuth;
  /** Registry log level (default `warn`). */
  logLevel?: 'error' | 'warn' | 'info' | 'debug';
  /** `catalog.maxentries`: the largest page `_catalog` answers (the registry's default: 1000). */
  catalogMaxEntries?: number;
  /** `http.relativeurls`: Locations relative (`/v2/…`), not absolute URLs built on the scheme and Host it was reached by. */
  relativeUrls?: boolean;
  /** Runs it as this user (and group of the same number), as a registry of a package runs as its own user: only root can. */
  uid?: number;
}

export interface RunningRegistry {
  /** `127.0.0.1:PORT`, as used in `docker://` names. */
  host: string;
  port: number;
  /** `https://127.0.0.1:PORT` with `tls`, else `http://127.0.0.1:PORT` (no trailing slash). */
  url: string;
  /** Filesystem storage root; `''` when `storageYaml` replaced the filesystem driver. */
  root: string;
  /** The YAML config file it runs with. */
  config: string;
  /** The last 16 kB of its stderr (its log). */
  log(): string;
  /** SIGTERM, wait for the exit (SIGKILL after 5 s). Idempotent. */
  stop(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// A minimal HTTP(S) client with a custom CA, for readiness and for tests that want to see raw
// answers (status, headers, body) without a registry client's retries or auth handling.

export interface RawResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

export interface RawRequestOptions {
  method?: string;
  headers?: Record<string, string>;
  body?: Buffer | string;
  /** PEM of CAs to trust for `https:` URLs. */
  ca?: string | Buffer;
  /** Skip certificate verification (readiness without a CA). */
  insecure?: boolean;
  timeoutMs?: number;
}

/** A failed `rawRequest`: what arrived before the failure, if anything. */
export interface RawRequestError extends Error {
  code?: string;
  /** Status of the response, when its head had arrived. */
  status?: number;
  /** Body bytes received before the failure. */
  partial: Buffer;
}

/**
 * One request, whole body buffered. Rejects (with a `RawRequestError`) on a network error: reset,
 * refused, a body cut short of its Content-Length, or `timeoutMs` of silence.
 */
export function rawRequest(url: string, options: RawRequestOptions = {}): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const mod = u.protocol === 'https:' ? https : http;
    const chunks: Buffer[] = [];
    let response: http.IncomingMessage | undefined;
    let settled = false;
    const fail = (e: Error) => {
      if (settled) return;
      settled = true;
      const err = e as RawRequestError;
      err.partial = Buffer.concat(chunks);
      if (response) err.status = response.statusCode ?? 0;
      reject(err);
    };
    const req = mod.request(
      u,
      {
        method: options.method ?? 'GET',
        headers: options.headers,
        agent: false,
        ...(u.protocol === 'https:' ? { ca: options.ca, rejectUnauthorized: !options.insecure } : {}),
      },
      (res) => {
        response = res;
        res.on('data', (d: Buffer) => chunks.push(d));
        res.once('error', fail);
        res.once('close', () => {
          if (!res.complete) fail(Object.assign(new Error('response body cut short'), { code: 'ECONNRESET' }));
        });
        res.once('end', () => {
          if (settled) return;
          settled = true;
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) });
        });
      },
    );
    req.once('error', fail);
    if (options.timeoutMs) req.setTimeout(options.timeoutMs, () => req.destroy(Object.assign(new Error('timeout'), { code: 'ETIMEDOUT' })));
    req.end(options.body);
  });
}

// ---------------------------------------------------------------------------------------------

/** The header each registry answers with (`http.headers`), its value its own: how readiness tells it from another server on its port. */
const ID_HEADER = 'X-Smart-Test-Registry';

async function waitReady(url: string, okStatus: number, id: string, child: ChildProcess, log: () => string, tls: RawRequestOptions): Promise<void> {
  const deadline = Date.now() + 15_000;
  let last = '';
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`docker-registry exited (${child.exitCode ?? child.signalCode}): ${log()}`);
    try {
      const res = await rawRequest(url, { ...tls, timeoutMs: 2000 });
      // Another process's server, which took the port before this registry could: not ready (it exits, address in use).
      if (res.headers[ID_HEADER.toLowerCase()] !== id) last = `status ${res.status} from another server`;
      else if (res.status === okStatus) return;
      else last = `status ${res.status}`;
    } catch (e) {
      last = (e as Error).message; // not listening yet
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`docker-registry did not answer ${url} with ${okStatus} in 15 s (last: ${last}): ${log()}`);
}

function q(s: string): string {
  return JSON.stringify(s);
}

function configYaml(port: number, id: string, root: string, o: RegistryOptions): string {
  const storage: string[] = [];
  const own = new Set<string>();
  if (o.storageYaml) {
    for (const line of o.storageYaml) {
      const key = /^([A-Za-z_]+):/.exec(line)?.[1];
      if (key) own.add(key);
      storage.push(`  ${line}`);
    }
  } else {
    storage.push(`  filesystem: {rootdirectory: ${q(root)}}`);
  }
  if (!own.has('delete')) storage.push('  delete: {enabled: true}');
  if (!own.has('cache')) storage.push('  cache: {blobdescriptor: inmemory}');
  if (!own.has('maintenance')) storage.push('  maintenance: {uploadpurging: {enabled: false}}');

  const lines = [
    'version: 0.1',
    'log:',
    `  level: ${o.logLevel ?? 'warn'}`,
    '  accesslog: {disabled: true}',
    'storage:',
    ...storage,
    'http:',
    `  addr: 127.0.0.1:${port}`,
    // A fixed secret: several registries over one storage accept each other's upload state.
    '  secret: smartlayer-test-secret',
    '  headers:',
    `    ${ID_HEADER}: [${q(id)}]`,
  ];
  if (o.relativeUrls) lines.push('  relativeurls: true');
  if (o.catalogMaxEntries !== undefined) lines.push('catalog:', `  maxentries: ${o.catalogMaxEntries}`);
  if (o.tls) lines.push('  tls:', `    certificate: ${q(o.tls.certFile)}`, `    key: ${q(o.tls.keyFile)}`);
  if (o.auth && 'htpasswd' in o.auth) {
    lines.push('auth:', '  htpasswd:', `    realm: ${q(o.auth.htpasswd.realm)}`, `    path: ${q(o.auth.htpasswd.path)}`);
  } else if (o.auth && 'token' in o.auth) {
    const t = o.auth.token;
    lines.push(
      'auth:',
      '  token:',
      `    realm: ${q(t.realm)}`,
      `    service: ${q(t.service)}`,
      `    issuer: ${q(t.issuer)}`,
      `    rootcertbundle: ${q(t.rootCertBundle)}`,
    );
  }
  return lines.join('\n') + '\n';
}

export async function startRegistry(root: string, configDir: string): Promise<RunningRegistry>;
export async function startRegistry(options: RegistryOptions): Promise<RunningRegistry>;
export async function startRegistry(a: string | RegistryOptions, b?: string): Promise<RunningRegistry> {
  const o: RegistryOptions = typeof a === 'string' ? { root: a, configDir: b! } : a;
  if (!o.configDir) throw new Error('startRegistry: configDir is required');
  let lastError: unknown;
  // freePort() closes its probe before the registry binds: another process may take the port between.
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await spawnRegistry(o, await freePort());
    } catch (e) {
      lastError = e;
      if (!/address already in use/.test(String((e as Error).message))) break;
    }
  }
  throw lastError;
}

async function spawnRegistry(o: RegistryOptions, port: number): Promise<RunningRegistry> {
  const id = randomUUID();
  let root = '';
  if (!o.storageYaml) {
    root = o.root ?? path.join(o.configDir, `registry-${port}-storage`);
    await fs.mkdir(root, { recursive: true });
  }
  const config = path.join(o.configDir, `registry-${port}.yml`);
  await fs.writeFile(config, configYaml(port, id, root, o));

  const env = { ...process.env };
  delete env.AWS_CA_BUNDLE; // the registry panics at start when it is set
  const child = spawn('docker-registry', ['serve', config], { env, stdio: ['ignore', 'ignore', 'pipe'], ...(o.uid !== undefined ? { uid: o.uid, gid: o.uid } : {}) });
  const exited = ownChild(child);
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-16_000);
  });
  const spawnError = new Promise<never>((_, reject) => child.once('error', reject));
  spawnError.catch(() => undefined);

  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    }
  };

  const scheme = o.tls ? 'https' : 'http';
  const url = `${scheme}://127.0.0.1:${port}`;
  try {
    const tlsOpts: RawRequestOptions = o.tls ? (o.tls.caFile ? { ca: await fs.readFile(o.tls.caFile) } : { insecure: true }) : {};
    await Promise.race([waitReady(`${url}/v2/`, o.auth ? 401 : 200, id, child, () => stderr, tlsOpts), spawnError]);
  } catch (e) {
    child.kill('SIGKILL');
    await exited;
    throw e;
  }
  return { host: `127.0.0.1:${port}`, port, url, root, config, log: () => stderr, stop };
}
