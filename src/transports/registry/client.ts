/**
 * A client of the OCI Distribution API (the Docker registry v2 API) over undici: manifests, blobs
 * (streamed both ways, resumed with Range when a download breaks), cross-repository mounts, and
 * Docker's authentication (anonymous, Basic, Bearer tokens per scope). Requests that can be
 * repeated are retried with backoff on connection errors, 429 and 5xx. Credentials and tokens
 * never appear in an error message, and what a registry answers enters one only through
 * redact.ts. Credentials go to a token server over TLS, or over plain HTTP only where plain HTTP is
 * allowed (see `checkRealm`).
 */
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { Readable } from 'node:stream';
import tls from 'node:tls';
import type { Dispatcher } from 'undici';
import { Agent } from './http-agent.js';
import { SmartError, isCancellation, isErrno, isSmartError } from '../../errors.js';
import { sha256Digest, type Digest } from '../../oci/digest.js';
import { MediaType } from '../../oci/mediatypes.js';
import { DigestStream, VerifyStream } from '../../pipeline/digest-stream.js';
import { redactUrl, remoteText } from '../../redact.js';
import { lookupCredentials, type Credentials } from './credentials.js';

export const MANIFEST_ACCEPT = [
  MediaType.OCI_INDEX,
  MediaType.OCI_MANIFEST,
  MediaType.DOCKER_MANIFEST_LIST,
  MediaType.DOCKER_MANIFEST,
  MediaType.DOCKER_MANIFEST_V1_SIGNED,
].join(', ');

export interface RegistryClientOptions {
  /** `host[:port]` as in the image reference (`docker.io` for Docker Hub). */
  host: string;
  /** Allow plain HTTP and unverified TLS for this host (`--insecure-registry`), as Docker does. */
  insecure?: boolean;
  /** Every host allowed plain HTTP (`--insecure-registry`): a token realm on one of them may get credentials over plain HTTP. */
  insecureHosts?: readonly string[];
  /** From --creds / SMART_REGISTRY_AUTH; otherwise looked up in auth.json and the Docker config (credentials.ts). */
  credentials?: Credentials;
  /** The containers auth.json read instead of the default credential files (`--authfile`). */
  authFile?: string;
  /** Directories of extra CA certificates (`*.crt`), e.g. skopeo's --cert-dir. */
  certDirs?: string[];
  maxRetries?: number;
  /** No byte for this long (waiting for an answer, or between body chunks): the attempt is aborted and retried. Default 30 s. */
  stallTimeoutMs?: number;
  /** Told of each retry (a reset, a 5xx, a stall) before it happens: retries are visible, not silent. */
  onRetry?: (message: string) => void;
  /** Told of what the user should know but that does not stop the work (credentials sent to a token server on another host). */
  onWarning?: (message: string) => void;
  /** Cancels every request of this client (the command's Ctrl-C / --timeout). */
  signal?: AbortSignal;
  /** First backoff delay; doubles per attempt. */
  retryDelayMs?: number;
}

type Body = Buffer | Readable | undefined;

interface Challenge {
  scheme: 'basic' | 'bearer' | 'none';
  realm?: string;
  service?: string;
}

interface RequestSpec {
  method: 'GET' | 'HEAD' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  /** `/v2/...` on the registry, or an absolute URL (upload locations, redirects). */
  url: string;
  headers?: Record<string, string>;
  body?: Body;
  /** Token scopes the request needs, e.g. `repository:team/app:pull`. */
  scopes: string[];
  /** What the request is about, for messages: `team/app`, `blob sha256:…`. */
  what: string;
  signal?: AbortSignal;
}

const RETRY_STATUS = new Set([408, 429, 500, 502, 503, 504]);
const USER_AGENT = 'smartlayer/0.1';

function isLoopback(host: string): boolean {
  const h = host.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
  return h === 'localhost' || h === '::1' || /^127\./.test(h);
}

/**
 * Whether `other` is `host`, or within `host`'s parent domain (auth.docker.io for
 * registry-1.docker.io, gitlab.com for registry.gitlab.com): where registries keep their own token
 * servers. An address is only ever itself.
 */
function withinSite(host: string, other: string): boolean {
  if (host === other) return true;
  const bare = (h: string) => h.replace(/^\[|\]$/g, '');
  if (net.isIP(bare(host)) || net.isIP(bare(other))) return false;
  const parent = host.split('.').slice(1);
  // A parent of one label is a top-level domain (io, com): everybody's.
  if (parent.length < 2) return false;
  const domain = parent.join('.');
  return other === domain || other.endsWith(`.${domain}`);
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => {
      clearTimeout(t);
      reject(signal.reason as Error);
    }, { once: true });
  });
}

/** Parses `Bearer realm="...",service="...",scope="..."` (quoted values may hold commas). */
export function parseChallenge(header: string | undefined): Challenge {
  if (!header) return { scheme: 'none' };
  const m = /^\s*(\w+)\s*(.*)$/.exec(header);
  if (!m) return { scheme: 'none' };
  const scheme = m[1]!.toLowerCase();
  const params: Record<string, string> = {};
  for (const p of m[2]!.matchAll(/(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))/g)) params[p[1]!.toLowerCase()] = p[2] ?? p[3] ?? '';
  if (scheme === 'bearer') return { scheme, ...(params.realm ? { realm: params.realm } : {}), ...(params.service ? { service: params.service } : {}) };
  if (scheme === 'basic') return { scheme };
  return { scheme: 'none' };
}

interface RegistryErrorBody {
  errors?: { code?: string; message?: string; detail?: unknown }[];
}

async function readBody(body: Dispatcher.ResponseData['body'], limit = 1 << 20): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of body) {
    n += (c as Buffer).length;
    if (n > limit) {
      body.destroy();
      throw new SmartError('REGISTRY', `response larger than ${limit} bytes`);
    }
    chunks.push(c as Buffer);
  }
  return Buffer.concat(chunks);
}

export class RegistryClient {
  readonly host: string;
  /** Docker Hub's API lives on registry-1.docker.io. */
  readonly apiHost: string;
  private readonly allowHttp: boolean;
  private readonly insecure: boolean;
  private readonly maxRetries: number;
  private readonly retryDelayMs: number;
  private base: string | undefined;
  private agentPromise: Promise<Agent> | undefined;
  private pinged: Promise<void> | undefined;
  private challenge: Challenge = { scheme: 'none' };
  private credentials: Promise<Credentials | undefined> | undefined;
  /** The credentials once known: redacted from any message built from what the registry answers. */
  private knownCredentials: Credentials | undefined;
  private readonly tokens = new Map<string, { token: string; expires: number }>();
  /** The origin of the token realm already checked (and warned about, when on another host). */
  private checkedRealm: string | undefined;

  constructor(readonly options: RegistryClientOptions) {
    this.host = options.host;
    this.apiHost = options.host === 'docker.io' ? 'registry-1.docker.io' : options.host;
    this.insecure = options.insecure ?? false;
    this.allowHttp = this.insecure || isLoopback(this.apiHost);
    this.maxRetries = options.maxRetries ?? 4;
    this.retryDelayMs = options.retryDelayMs ?? 200;
  }

  private agent(): Promise<Agent> {
    this.agentPromise ??= (async () => {
      const extra: string[] = [];
      const dirs = [...(this.options.certDirs ?? []), ...defaultCertDirs(this.host)];
      for (const dir of dirs) {
        const names = await fs.readdir(dir).catch(() => [] as string[]);
        for (const n of names.filter((x) => x.endsWith('.crt'))) extra.push(await fs.readFile(path.join(dir, n), 'utf8'));
      }
      const stall = this.options.stallTimeoutMs ?? 30_000;
      return new Agent({
        connections: 16,
        keepAliveTimeout: 10_000,
        // undici's own idle timers are the stall detector: no headers, or no body bytes, for this long.
        headersTimeout: stall,
        bodyTimeout: stall,
        connectTimeout: Math.min(stall, 10_000),
        connect: {
          ...(extra.length ? { ca: [...tls.rootCertificates, ...extra] } : {}),
          ...(this.insecure ? { rejectUnauthorized: false } : {}),
        },
      });
    })();
    return this.agentPromise;
  }

  /** Ends every connection at once: at the end of a command nothing useful is in flight, and an
   * aborted connect (a registry that never answers) must not hold the process until it times out. */
  async close(): Promise<void> {
    if (this.agentPromise) await (await this.agentPromise).destroy();
  }

  private creds(): Promise<Credentials | undefined> {
    this.credentials ??= lookupCredentials(this.host, this.options.credentials, { ...(this.options.authFile ? { authFile: this.options.authFile } : {}) }).then((c) => (this.knownCredentials = c));
    return this.credentials;
  }

  /** Every secret this client holds, as redact.ts takes them: echoed back by a registry, they are replaced. */
  private secrets(): string[] {
    const c = this.knownCredentials ?? this.options.credentials;
    return [...(c ? [c.password, `${c.username}:${c.password}`, ...(c.identityToken ? [c.identityToken] : [])] : []), ...[...this.tokens.values()].map((t) => t.token)];
  }

  /**
   * Basic credentials go to whatever realm the registry names, so the realm is checked first: over
   * plain HTTP they go only where plain HTTP is allowed for the registry itself (loopback,
   * --insecure-registry) and for the realm's host too (the registry's own host, loopback, or
   * --insecure-registry), never in clear text to a host the user did not name. A realm on another
   * host than the registry's (beyond its parent domain, as auth.docker.io is for
   * registry-1.docker.io) is said once through `onWarning`.
   */
  private checkRealm(realm: URL): void {
    if (this.checkedRealm === realm.origin) return;
    const registry = new URL(`https://${this.apiHost}`);
    if (realm.protocol === 'http:') {
      const insecure = this.options.insecureHosts ?? [];
      const realmAllowed = isLoopback(realm.host) || realm.hostname === registry.hostname || insecure.includes(realm.host) || insecure.includes(realm.hostname);
      if (!this.allowHttp || !realmAllowed) {
        throw new SmartError('REGISTRY', `${this.host} names a token server on plain HTTP (${redactUrl(realm.origin)}): credentials are not sent in clear text`, {
          input: this.host,
          hint: this.allowHttp
            ? `if ${realm.host} is trusted on this network, allow it with --insecure-registry ${realm.host}`
            : 'the registry should name an https:// token realm',
        });
      }
    }
    if (!withinSite(registry.hostname, realm.hostname)) {
      this.options.onWarning?.(`credentials for ${this.host} go to the token server it names on another host, ${redactUrl(realm.host)}`);
    }
    this.checkedRealm = realm.origin;
  }

  /** `GET /v2/`: chooses https or (loopback / --insecure-registry only) http, and learns the auth scheme. */
  private ping(signal: AbortSignal | undefined = this.options.signal): Promise<void> {
    this.pinged ??= (async () => {
      const agent = await this.agent();
      const attempt = async (scheme: 'https' | 'http', repeat: boolean) => {
        const res = await this.withRetries(
          `ping ${this.host}`,
          repeat,
          signal,
          () => send(agent, { origin: `${scheme}://${this.apiHost}`, path: '/v2/', method: 'GET', headers: { 'user-agent': USER_AGENT } }, signal),
          'ping',
        );
        await res.body.dump();
        if (res.statusCode === 401) this.challenge = parseChallenge(header(res.headers, 'www-authenticate'));
        else if (res.statusCode !== 200 && res.statusCode !== 404) {
          // 404: some registries do not implement /v2/ alone; the next request will tell.
          throw this.statusError(res.statusCode, undefined, `ping ${this.host}`, 'GET');
        }
        this.base = `${scheme}://${this.apiHost}`;
      };
      try {
        // Where plain HTTP is allowed, one TLS attempt decides: a plain server resets or answers garbage.
        await attempt('https', !this.allowHttp);
      } catch (e) {
        if (!this.allowHttp || !looksLikeTlsMismatch(e)) throw e;
        await attempt('http', true);
      }
    })();
    this.pinged.catch(() => {
      this.pinged = undefined;
    });
    return this.pinged;
  }

  private async authorization(scopes: string[], signal?: AbortSignal): Promise<string | undefined> {
    if (this.challenge.scheme === 'basic') {
      const c = await this.creds();
      if (c?.identityToken) {
        throw new SmartError('REGISTRY', `the credentials for ${this.host} are an identity token, which only a registry with a token server takes (this one asks for Basic auth)`, {
          input: this.host,
          hint: 'log in with a user name and password (docker login, podman login), or pass --creds USER:PASSWORD',
        });
      }
      return c ? `Basic ${Buffer.from(`${c.username}:${c.password}`).toString('base64')}` : undefined;
    }
    if (this.challenge.scheme !== 'bearer') return undefined;
    const key = [...scopes].sort().join(' ');
    const cached = this.tokens.get(key);
    if (cached && cached.expires > Date.now()) return `Bearer ${cached.token}`;
    const token = await this.fetchToken(scopes, signal);
    this.tokens.set(key, token);
    return `Bearer ${token.token}`;
  }

  private async fetchToken(scopes: string[], signal: AbortSignal | undefined = this.options.signal): Promise<{ token: string; expires: number }> {
    const { realm, service } = this.challenge;
    if (!realm) throw new SmartError('REGISTRY', `${this.host} asks for a token but names no realm`, { input: this.host });
    const url = URL.canParse(realm) ? new URL(realm) : undefined;
    if (!url || (url.protocol !== 'https:' && url.protocol !== 'http:')) {
      throw new SmartError('REGISTRY', `${this.host} names a token realm that is no http(s) URL: ${remoteText(realm, { max: 100 })}`, { input: this.host });
    }
    // The realm as named (its own query kept), for the form POST; the GET carries its parameters in the query.
    const realmPath = `${url.pathname}${url.search}`;
    if (service) url.searchParams.set('service', service);
    for (const s of scopes) url.searchParams.append('scope', s);
    const c = await this.creds();
    const headers: Record<string, string> = { 'user-agent': USER_AGENT };
    // An identity token is an OAuth2 refresh token: POSTed as a form (the token spec's OAuth2 flow,
    // as the Docker client does), the scopes space-separated.
    let form: Buffer | undefined;
    if (c?.identityToken) {
      this.checkRealm(url);
      const fields = new URLSearchParams({ grant_type: 'refresh_token', refresh_token: c.identityToken, client_id: 'smartlayer' });
      if (service) fields.set('service', service);
      if (scopes.length) fields.set('scope', scopes.join(' '));
      form = Buffer.from(fields.toString());
      headers['content-type'] = 'application/x-www-form-urlencoded';
    } else if (c) {
      this.checkRealm(url);
      headers.authorization = `Basic ${Buffer.from(`${c.username}:${c.password}`).toString('base64')}`;
      url.searchParams.set('account', c.username);
    }
    const agent = await this.agent();
    const res = await this.withRetries(`token for ${this.host}`, true, signal, () =>
      form
        ? send(agent, { origin: url.origin, path: realmPath, method: 'POST', headers, body: form }, signal)
        : send(agent, { origin: url.origin, path: `${url.pathname}${url.search}`, method: 'GET', headers }, signal),
    );
    const body = await readBody(res.body);
    if (res.statusCode === 401 || res.statusCode === 403) {
      const who = c?.identityToken ? ' with its identity token' : c ? ` for user ${c.username}` : '';
      throw new SmartError('REGISTRY', `authentication to ${this.host} failed${who} (the token server answered ${res.statusCode})`, {
        input: this.host,
        hint: c?.identityToken ? 'the identity token may have expired or been revoked: log in again' : c ? 'check the username and password' : 'log in with docker login, or pass --creds USER:PASSWORD',
      });
    }
    if (res.statusCode !== 200) throw this.statusError(res.statusCode, body, `token for ${this.host}`, 'GET');
    let doc: { token?: string; access_token?: string; expires_in?: number };
    try {
      doc = JSON.parse(body.toString('utf8')) as typeof doc;
    } catch {
      throw new SmartError('REGISTRY', `the token server of ${this.host} answered something that is not JSON`, { input: this.host });
    }
    const token = doc.token ?? doc.access_token;
    if (!token) throw new SmartError('REGISTRY', `the token server of ${this.host} answered no token`, { input: this.host });
    // Renew a little before the server's expiry; 60 s is the spec's default lifetime.
    const lifetime = Math.max(10, (doc.expires_in ?? 60) - 5);
    return { token, expires: Date.now() + lifetime * 1000 };
  }

  /**
   * Retries `send` on connection errors and 429/5xx answers, when the request can be repeated.
   * `phase` is 'ping' for the first exchange with the registry (see `connectionError`).
   */
  private async withRetries(
    what: string,
    repeatable: boolean,
    signal: AbortSignal | undefined,
    send: () => Promise<Dispatcher.ResponseData>,
    phase: 'ping' | 'request' = 'request',
  ): Promise<Dispatcher.ResponseData> {
    for (let attempt = 0; ; attempt++) {
      let res: Dispatcher.ResponseData | undefined;
      let error: unknown;
      try {
        res = await send();
      } catch (e) {
        error = e;
      }
      const retryable = res ? RETRY_STATUS.has(res.statusCode) : !signal?.aborted && isTransient(error);
      if (!retryable || !repeatable || attempt >= this.maxRetries) {
        if (res) return res;
        throw this.connectionError(error, what, phase);
      }
      let delay = this.retryDelayMs * 2 ** attempt;
      if (res) {
        const after = Number(header(res.headers, 'retry-after'));
        if (Number.isFinite(after) && after > 0) delay = Math.min(after * 1000, 30_000);
        await res.body.dump().catch(() => undefined);
      }
      this.options.onRetry?.(`${what}: ${res ? `registry ${this.host} answered ${res.statusCode}` : this.connectionError(error, what, phase).message}; retrying in ${(delay / 1000).toFixed(1)} s`);
      await sleep(delay, signal);
    }
  }

  /**
   * A failed connection as a SmartError naming the registry and the request. A TLS hint is given
   * for TLS errors, and for a reset during the ping (the first exchange: a plain HTTP server resets
   * a TLS hello), never for a connection that broke mid-request.
   */
  private connectionError(e: unknown, what: string, phase: 'ping' | 'request' = 'request'): SmartError {
    if (isSmartError(e)) return e;
    if ((e as Error)?.name === 'AbortError') return new SmartError('CANCELLED', `${what}: cancelled`, { cause: e });
    const msg = (e as Error)?.message ?? String(e);
    const code = (e as NodeJS.ErrnoException)?.code;
    if (code === 'UND_ERR_BODY_TIMEOUT' || code === 'UND_ERR_HEADERS_TIMEOUT') {
      const s = Math.round((this.options.stallTimeoutMs ?? 30_000) / 1000);
      return new SmartError('REGISTRY', `registry ${this.host} stalled: no data for ${s} s (${what})`, { input: this.host, cause: e, retryable: true });
    }
    const unreachable = phase === 'ping' || UNREACHABLE.has(code ?? '');
    const tls = looksLikeTlsError(e) || (phase === 'ping' && code === 'ECONNRESET');
    return new SmartError('REGISTRY', `${unreachable ? 'cannot reach' : 'lost the connection to'} registry ${this.host}: ${code ? `${code} ` : ''}${msg} (${what})`, {
      input: this.host,
      cause: e,
      retryable: isTransient(e),
      ...(tls ? { hint: this.allowHttp ? 'check the registry TLS setup' : 'for a registry without TLS or with a private CA, use --insecure-registry HOST or --cert-dir DIR' } : {}),
    });
  }

  /** A registry's answer as a SmartError naming the registry, the request and the status. */
  statusError(status: number, body: Buffer | undefined, what: string, method: string): SmartError {
    let detail = '';
    if (body?.length) {
      try {
        const doc = JSON.parse(body.toString('utf8')) as RegistryErrorBody;
        const first = doc.errors?.[0];
        if (first) detail = remoteText(`${String(first.code ?? '')}${first.message ? `: ${String(first.message)}` : ''}`, { known: this.secrets() });
      } catch {
        detail = remoteText(body.toString('utf8'), { max: 120, known: this.secrets() });
      }
    }
    const message = `registry ${this.host} answered ${status}${detail ? ` ${detail}` : ''} to ${method} ${what}`;
    if (status === 401 || status === 403) {
      return new SmartError('REGISTRY', message, {
        input: this.host,
        hint: 'check the credentials (docker login, --creds USER:PASSWORD) and that they may access this repository',
      });
    }
    if (status === 404) return new SmartError('NOT_FOUND', message, { input: what });
    return new SmartError('REGISTRY', message, { input: this.host, retryable: RETRY_STATUS.has(status) });
  }

  /**
   * One API request with authentication: a 401 refreshes the token (or asks for one) and the
   * request is sent once more when its body can be replayed.
   */
  async request(spec: RequestSpec, expected: number[]): Promise<Dispatcher.ResponseData> {
    if (!spec.signal && this.options.signal) spec = { ...spec, signal: this.options.signal };
    else if (spec.signal && this.options.signal) spec = { ...spec, signal: AbortSignal.any([spec.signal, this.options.signal]) };
    await this.ping(spec.signal);
    const agent = await this.agent();
    const url = new URL(spec.url, this.base);
    const repeatable = !(spec.body instanceof Readable);
    for (let authAttempt = 0; ; authAttempt++) {
      const auth = url.host === new URL(this.base!).host ? await this.authorization(spec.scopes, spec.signal) : undefined;
      const headers: Record<string, string> = { 'user-agent': USER_AGENT, ...spec.headers, ...(auth ? { authorization: auth } : {}) };
      const res = await this.withRetries(spec.what, repeatable, spec.signal, () =>
        send(
          agent,
          {
            origin: url.origin,
            path: `${url.pathname}${url.search}`,
            method: spec.method,
            headers,
            ...(spec.body !== undefined ? { body: spec.body } : {}),
          },
          spec.signal,
        ),
      );
      if (res.statusCode === 401 && authAttempt === 0 && repeatable) {
        await res.body.dump();
        const challenge = parseChallenge(header(res.headers, 'www-authenticate'));
        if (challenge.scheme !== 'none') this.challenge = challenge;
        this.tokens.delete([...spec.scopes].sort().join(' '));
        if (challenge.scheme === 'basic' && !(await this.creds())) {
          throw new SmartError('REGISTRY', `registry ${this.host} requires authentication (${spec.what})`, {
            input: this.host,
            hint: 'log in with docker login, or pass --creds USER:PASSWORD',
          });
        }
        continue;
      }
      if (expected.includes(res.statusCode)) return res;
      const body = spec.method === 'HEAD' ? undefined : await readBody(res.body).catch(() => undefined);
      if (spec.method === 'HEAD') await res.body.dump();
      throw this.statusError(res.statusCode, body, spec.what, spec.method);
    }
  }

  // ------------------------------------------------------------------ manifests

  async getManifest(repo: string, reference: string, signal?: AbortSignal): Promise<{ bytes: Buffer; mediaType: string | undefined }> {
    const res = await this.request(
      { method: 'GET', url: `/v2/${repo}/manifests/${reference}`, headers: { accept: MANIFEST_ACCEPT }, scopes: [`repository:${repo}:pull`], what: `manifest ${repo}:${reference}`, ...(signal ? { signal } : {}) },
      [200],
    );
    const bytes = await readBody(res.body, 4 * 1024 * 1024);
    const declared = header(res.headers, 'docker-content-digest');
    if (declared && declared.startsWith('sha256:') && declared !== sha256Digest(bytes)) {
      throw new SmartError('DIGEST_MISMATCH', `registry ${this.host} sent manifest ${repo}:${reference} whose bytes hash to ${sha256Digest(bytes)}, not the ${declared} it declares`, {
        input: `${repo}:${reference}`,
      });
    }
    const contentType = header(res.headers, 'content-type')?.split(';')[0]?.trim();
    return { bytes, mediaType: contentType };
  }

  /** The digest a tag points at, or undefined when the manifest does not exist. */
  async headManifest(repo: string, reference: string): Promise<{ digest: string | undefined; mediaType: string | undefined; size: number } | undefined> {
    const res = await this.request(
      { method: 'HEAD', url: `/v2/${repo}/manifests/${reference}`, headers: { accept: MANIFEST_ACCEPT }, scopes: [`repository:${repo}:pull`], what: `manifest ${repo}:${reference}` },
      [200, 404],
    );
    await res.body.dump();
    if (res.statusCode === 404) return undefined;
    return {
      digest: header(res.headers, 'docker-content-digest'),
      mediaType: header(res.headers, 'content-type')?.split(';')[0]?.trim(),
      size: Number(header(res.headers, 'content-length') ?? 0),
    };
  }

  async putManifest(repo: string, reference: string, bytes: Buffer, mediaType: string, signal?: AbortSignal): Promise<void> {
    const res = await this.request(
      {
        method: 'PUT',
        url: `/v2/${repo}/manifests/${reference}`,
        headers: { 'content-type': mediaType, 'content-length': String(bytes.length) },
        body: bytes,
        scopes: [`repository:${repo}:pull,push`],
        what: `manifest ${repo}:${reference}`,
        ...(signal ? { signal } : {}),
      },
      [200, 201, 202],
    );
    await res.body.dump();
  }

  // ------------------------------------------------------------------ blobs

  async headBlob(repo: string, digest: Digest, signal?: AbortSignal): Promise<number | undefined> {
    const res = await this.request(
      { method: 'HEAD', url: `/v2/${repo}/blobs/${digest}`, scopes: [`repository:${repo}:pull`], what: `blob ${digest} in ${repo}`, ...(signal ? { signal } : {}) },
      [200, 307, 302, 404],
    );
    await res.body.dump();
    if (res.statusCode === 404) return undefined;
    const len = header(res.headers, 'content-length');
    return len === undefined ? -1 : Number(len);
  }

  /** One GET of a blob from `offset`, following redirects (without our credentials when they leave the registry). */
  private async getBlobResponse(repo: string, digest: Digest, offset: number, signal?: AbortSignal, endInclusive?: number): Promise<Dispatcher.ResponseData> {
    let url = `/v2/${repo}/blobs/${digest}`;
    const range: Record<string, string> =
      endInclusive !== undefined ? { range: `bytes=${offset}-${endInclusive}` } : offset > 0 ? { range: `bytes=${offset}-` } : {};
    for (let hops = 0; hops < 6; hops++) {
      const res = await this.request(
        { method: 'GET', url, headers: range, scopes: [`repository:${repo}:pull`], what: `blob ${digest} of ${repo}`, ...(signal ? { signal } : {}) },
        [200, 206, 301, 302, 303, 307, 308],
      );
      if (res.statusCode < 300) return res;
      await res.body.dump();
      const location = header(res.headers, 'location');
      if (!location) throw new SmartError('REGISTRY', `registry ${this.host} redirected blob ${digest} nowhere`, { input: digest });
      url = new URL(location, new URL(url, this.base)).toString();
    }
    throw new SmartError('REGISTRY', `registry ${this.host}: too many redirects for blob ${digest}`, { input: digest });
  }

  /**
   * A blob's bytes as one stream. A connection that breaks mid-way is resumed from the last byte
   * received with a Range request (or, if the server ignores ranges, by skipping what was already
   * delivered), up to the retry limit. The caller verifies the digest over the whole stream.
   */
  openBlob(repo: string, digest: Digest, signal: AbortSignal | undefined = this.options.signal): Readable {
    const client = this;
    async function* bytes(): AsyncGenerator<Buffer> {
      let delivered = 0;
      for (let attempt = 0; ; attempt++) {
        const res = await client.getBlobResponse(repo, digest, delivered, signal);
        let skip = delivered > 0 && res.statusCode === 200 ? delivered : 0;
        try {
          for await (const chunk of res.body) {
            let c = chunk as Buffer;
            if (skip > 0) {
              const drop = Math.min(skip, c.length);
              skip -= drop;
              c = c.subarray(drop);
              if (c.length === 0) continue;
            }
            delivered += c.length;
            yield c;
          }
          return;
        } catch (e) {
          res.body.destroy();
          if (signal?.aborted || !isTransient(e) || attempt >= client.maxRetries) throw client.connectionError(e, `blob ${digest} of ${repo}`);
          client.options.onRetry?.(`${client.connectionError(e, `blob ${digest} of ${repo}`).message}; resuming from byte ${delivered}`);
          await sleep(client.retryDelayMs * 2 ** attempt, signal);
        }
      }
    }
    return Readable.from(bytes(), { objectMode: false, highWaterMark: 256 * 1024 });
  }

  /** Bytes `start`..`endInclusive` of a blob (206), retried whole on a transient failure. */
  async getBlobRange(repo: string, digest: Digest, start: number, endInclusive: number, signal: AbortSignal | undefined = this.options.signal): Promise<Buffer> {
    const want = endInclusive - start + 1;
    for (let attempt = 0; ; attempt++) {
      try {
        const res = await this.getBlobResponse(repo, digest, start, signal, endInclusive);
        const body = await readBody(res.body, res.statusCode === 206 ? want : Number.MAX_SAFE_INTEGER);
        // A registry that ignores Range sends the whole blob: take our part of it.
        const part = res.statusCode === 206 ? body : body.subarray(start, endInclusive + 1);
        if (part.length !== want) throw new SmartError('REGISTRY', `registry ${this.host} sent ${part.length} bytes for a range of ${want}`, { retryable: true });
        return part;
      } catch (e) {
        if (signal?.aborted || !isTransient(e) || attempt >= this.maxRetries) throw isSmartError(e) ? e : this.connectionError(e, `blob ${digest} of ${repo}`);
        await sleep(this.retryDelayMs * 2 ** attempt, signal);
      }
    }
  }

  /**
   * Mounts a blob from another repository of this registry. True when the registry linked it
   * (201); false when it opened an upload instead (202, the mount was refused), which is closed.
   */
  async mountBlob(repo: string, digest: Digest, from: string, signal?: AbortSignal): Promise<boolean> {
    const res = await this.request(
      {
        method: 'POST',
        url: `/v2/${repo}/blobs/uploads/?mount=${encodeURIComponent(digest)}&from=${encodeURIComponent(from)}`,
        headers: { 'content-length': '0' },
        scopes: [`repository:${repo}:pull,push`, `repository:${from}:pull`],
        what: `mount of blob ${digest} into ${repo}`,
        ...(signal ? { signal } : {}),
      },
      [201, 202],
    );
    await res.body.dump();
    if (res.statusCode === 201) return true;
    const location = header(res.headers, 'location');
    if (location) {
      await this.request({ method: 'DELETE', url: new URL(location, this.base).toString(), scopes: [`repository:${repo}:pull,push`], what: `upload of ${repo}` }, [200, 202, 204, 404]).then(
        (r) => r.body.dump(),
        () => undefined,
      );
    }
    return false;
  }

  /**
   * Streams a blob into `repo`: POST opens an upload, one PATCH carries the bytes as they are
   * produced (chunked transfer encoding, no temporary file), PUT `?digest=` closes it. With the
   * digest known the bytes are verified as they pass, so a mismatch aborts before the PUT.
   */
  async uploadBlob(repo: string, source: Readable, expected: { digest?: Digest; size?: number; what: string }, signal?: AbortSignal): Promise<{ digest: Digest; size: number }> {
    const scopes = [`repository:${repo}:pull,push`];
    const start = await this.request(
      { method: 'POST', url: `/v2/${repo}/blobs/uploads/`, headers: { 'content-length': '0' }, scopes, what: `upload to ${repo}`, ...(signal ? { signal } : {}) },
      [202],
    );
    await start.body.dump();
    let location = header(start.headers, 'location');
    if (!location) throw new SmartError('REGISTRY', `registry ${this.host} opened an upload without a Location`, { input: repo });
    const hash = expected.digest
      ? new VerifyStream({ digest: expected.digest, ...(expected.size !== undefined ? { size: expected.size } : {}), what: expected.what })
      : new DigestStream();
    // undici pulls the body as the socket drains: back-pressure reaches the source.
    const patchBody = Readable.from(hashedChunks(source, hash), { objectMode: false });
    let patch: Dispatcher.ResponseData;
    try {
      patch = await this.request(
        {
          method: 'PATCH',
          url: new URL(location, this.base).toString(),
          headers: { 'content-type': 'application/octet-stream' },
          body: patchBody,
          scopes,
          what: `upload of ${expected.what} to ${repo}`,
          ...(signal ? { signal } : {}),
        },
        [202, 204],
      );
    } catch (e) {
      patchBody.destroy();
      source.destroy(); // whatever produces the bytes (a file, a download, a compressor) stops now
      await this.cancelUpload(location, scopes);
      // When the bytes themselves failed (the source broke, or they do not match the digest), that
      // is the cause; otherwise the request's (a reset, a stall, a 5xx: retryable, so the caller
      // can send the blob again). Abandoning the body aborts the hash too, and that says nothing.
      const bytesError = hash.errored && !isCancellation(hash.errored) ? hash.errored : undefined;
      throw bytesError ?? e;
    }
    await patch.body.dump();
    location = header(patch.headers, 'location') ?? location;
    const digest = hash instanceof VerifyStream ? expected.digest! : hash.digest;
    const done = new URL(location, this.base);
    done.searchParams.set('digest', digest);
    const put = await this.request(
      { method: 'PUT', url: done.toString(), headers: { 'content-length': '0' }, scopes, what: `upload of ${expected.what} to ${repo}`, ...(signal ? { signal } : {}) },
      [201, 204],
    );
    await put.body.dump();
    return { digest, size: hash.size };
  }

  private async cancelUpload(location: string, scopes: string[]): Promise<void> {
    await this.request({ method: 'DELETE', url: new URL(location, this.base).toString(), scopes, what: 'upload' }, [200, 202, 204, 404]).then(
      (r) => r.body.dump(),
      () => undefined,
    );
  }

  // ------------------------------------------------------------------ listings

  /** A JSON answer; anything else fails naming the request, without echoing what came (JSON.parse would). */
  private json<T>(body: Buffer, what: string): T {
    try {
      return JSON.parse(body.toString('utf8')) as T;
    } catch {
      throw new SmartError('REGISTRY', `registry ${this.host} answered something that is not JSON to GET ${what}`, { input: this.host });
    }
  }

  async listTags(repo: string): Promise<string[]> {
    const out: string[] = [];
    let url: string | undefined = `/v2/${repo}/tags/list?n=1000`;
    while (url) {
      const res = await this.request({ method: 'GET', url, scopes: [`repository:${repo}:pull`], what: `tags of ${repo}` }, [200]);
      const doc = this.json<{ tags?: string[] | null }>(await readBody(res.body), `tags of ${repo}`);
      out.push(...(doc.tags ?? []));
      url = nextLink(header(res.headers, 'link'));
    }
    return out;
  }

  async catalog(): Promise<string[]> {
    const out: string[] = [];
    let url: string | undefined = '/v2/_catalog?n=1000';
    while (url) {
      const res = await this.request({ method: 'GET', url, scopes: ['registry:catalog:*'], what: 'catalog' }, [200]);
      const doc = this.json<{ repositories?: string[] }>(await readBody(res.body), 'catalog');
      out.push(...(doc.repositories ?? []));
      url = nextLink(header(res.headers, 'link'));
    }
    return out;
  }
}

/** Passes `source` through `hash` and yields what comes out, so the hash sees every byte sent. */
async function* hashedChunks(source: Readable, hash: DigestStream | VerifyStream): AsyncGenerator<Buffer> {
  source.on('error', (e) => hash.destroy(e));
  source.pipe(hash);
  for await (const c of hash) yield c as Buffer;
}

/**
 * `agent.request`, settled as soon as `signal` aborts: undici does not interrupt a connection still
 * being set up (TCP or TLS), and a Ctrl-C or --timeout must not wait for its connect timeout. The
 * abandoned attempt ends when the client is closed.
 */
function send(agent: Agent, options: Dispatcher.RequestOptions, signal: AbortSignal | undefined): Promise<Dispatcher.ResponseData> {
  if (!signal) return agent.request(options);
  signal.throwIfAborted();
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(signal.reason instanceof Error ? signal.reason : new Error('aborted'));
    signal.addEventListener('abort', onAbort, { once: true });
    agent.request({ ...options, signal }).then(
      (res) => {
        signal.removeEventListener('abort', onAbort);
        resolve(res);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}

function header(headers: Dispatcher.ResponseData['headers'], name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v[0] : v;
}

function nextLink(link: string | undefined): string | undefined {
  const m = link ? /<([^>]+)>\s*;\s*rel="?next"?/.exec(link) : null;
  return m ? m[1] : undefined;
}

/** Certificate directories Docker and containers tools use for `host`. */
function defaultCertDirs(host: string): string[] {
  const home = process.env.HOME ?? '';
  return [`/etc/containers/certs.d/${host}`, `/etc/docker/certs.d/${host}`, ...(home ? [`${home}/.config/containers/certs.d/${host}`] : [])];
}

function isTransient(e: unknown): boolean {
  if (isSmartError(e)) return e.retryable;
  const code = (e as NodeJS.ErrnoException)?.code ?? '';
  return (
    ['ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ETIMEDOUT', 'EAI_AGAIN', 'ENETUNREACH', 'EHOSTUNREACH'].includes(code) ||
    code.startsWith('UND_ERR_') && code !== 'UND_ERR_ABORTED' ||
    isErrno(e, 'ECONNABORTED')
  );
}

/** Errors that mean the registry could not be reached at all (as opposed to a connection that broke). */
const UNREACHABLE = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'UND_ERR_CONNECT_TIMEOUT']);

/** A TLS failure proper: a protocol mismatch or a certificate problem (a bare reset is not one). */
function looksLikeTlsError(e: unknown): boolean {
  const err = (isSmartError(e) ? e.cause : e) as NodeJS.ErrnoException | undefined;
  const code = err?.code ?? '';
  const msg = err?.message ?? '';
  return code === 'EPROTO' || code.startsWith('ERR_SSL_') || code.startsWith('ERR_TLS_') || /wrong version number|packet length too long|http request|certificate/i.test(msg) || /CERT|SELF_SIGNED/.test(code);
}

/** What a plain server answers to a TLS hello (or a TLS server to plain HTTP): decides the ping's fall-back to http. */
function looksLikeTlsMismatch(e: unknown): boolean {
  const err = (isSmartError(e) ? e.cause : e) as NodeJS.ErrnoException | undefined;
  const code = err?.code ?? '';
  const msg = err?.message ?? '';
  return code === 'EPROTO' || code === 'ERR_SSL_WRONG_VERSION_NUMBER' || /wrong version number|packet length too long|http request/i.test(msg) || code === 'ECONNRESET';
}
