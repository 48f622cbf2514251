/**
 * A client of the OCI Distribution API (the Docker registry v2 API), composed of layers as
 * go-containerregistry's remote/transport is: `http` (Node's http with a keep-alive pool, TLS, sending with abort),
 * `ping` (the scheme and the challenge), `auth` (Basic, Bearer tokens per scope), `retry` (the one
 * retry loop: connection errors, 408/429/5xx with Retry-After, blob bodies resumed with Range),
 * `errors` (RegistryError: the status, every error code of the registry, the method, a redacted
 * URL) and `api` (what is asked). This module wires them into one authenticated request per call.
 * Credentials and tokens never appear in an error message, and what a registry answers enters one
 * only through redact.ts.
 */
import { setMaxListeners } from 'node:events';
import { Readable } from 'node:stream';
import { SmartError } from '../../errors.js';
import { redactUrl, remoteText } from '../../redact.js';
import { RegistryApi, type RequestSpec } from './api.js';
import { Auth, parseChallenge } from './auth.js';
import type { Credentials } from './credentials.js';
import { connectionError, statusError, type ErrorContext } from './errors.js';
import { Http, USER_AGENT, header, isLoopback, plainHttpNamed, readBody, type Response } from './http.js';
import { looksLikeTlsMismatch, ping } from './ping.js';
import { Retry } from './retry.js';

export { MANIFEST_ACCEPT, type RequestSpec } from './api.js';
export { parseChallenge, type Challenge } from './auth.js';
export { RegistryError, isRegistryError, type RegistryErrorDetail } from './errors.js';

export interface RegistryClientOptions {
  /** `host[:port]` as in the image reference (`docker.io` for Docker Hub). */
  host: string;
  /** Allow plain HTTP and unverified TLS for this host (`--insecure-registry`), as Docker does. */
  insecure?: boolean;
  /** Every host allowed plain HTTP (`--insecure-registry`): a token realm on one of them may get credentials over plain HTTP. */
  insecureHosts?: readonly string[];
  /** From --creds / SMART_REGISTRY_AUTH; otherwise looked up in auth.json and the Docker config (credentials.ts). */
  credentials?: Credentials;
  /** The flag that gives this registry its credentials, for hints (auth.ts AuthOptions). */
  credentialsFlag?: string | null;
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
  /** How each registry answered its ping last time (see RegistryContact): a hint, kept by the caller. */
  schemes?: RegistrySchemes;
}

/**
 * What a registry's ping found, remembered between commands: the scheme it answered on (a choice
 * only where plain HTTP is allowed), and its challenge when that asks for no token (`none`, or
 * `basic`: credentials go to the registry itself). With a challenge remembered the ping is not
 * sent at all, as containerd never sends one: one round trip less per command, to a local
 * registry and to a far one alike. A Bearer challenge is pinged for every time: its token
 * server, which gets the credentials, is learned fresh.
 */
export interface RegistryContact {
  scheme: 'http' | 'https';
  challenge?: 'none' | 'basic';
}

/** Where each registry's contact is remembered between commands. Neither call throws. */
export interface RegistrySchemes {
  get(apiHost: string): Promise<RegistryContact | undefined>;
  set(apiHost: string, contact: RegistryContact): Promise<void>;
}

/** How long a clean-up request (an upload session closed) may take once the run is cancelled. */
const CLEANUP_DEADLINE_MS = 5_000;

export class RegistryClient extends RegistryApi {
  readonly host: string;
  /** Docker Hub's API lives on registry-1.docker.io. */
  readonly apiHost: string;
  protected readonly retry: Retry;
  protected readonly defaultSignal: AbortSignal | undefined;
  private readonly allowHttp: boolean;
  private readonly http: Http;
  private readonly auth: Auth;
  private readonly errors: ErrorContext;
  /** Where the API answers, once pinged (or remembered). */
  private base: string | undefined;
  private pinged: Promise<void> | undefined;
  /**
   * The base and challenge are remembered, not yet confirmed by an answer in this run: a request
   * that meets a TLS server with plain HTTP (or the reverse) makes the ping happen after all.
   */
  private remembered: RegistryContact | undefined;
  /** The memory was wrong once in this run: pinged from now on. */
  private distrustMemory = false;
  /** The one request sent first on a remembered contact, as the ping would be: the others wait for its answer. */
  private firstContact: Promise<void> | undefined;

  constructor(readonly options: RegistryClientOptions) {
    super();
    this.host = options.host;
    this.apiHost = options.host === 'docker.io' ? 'registry-1.docker.io' : options.host;
    const insecure = options.insecure ?? false;
    this.allowHttp = insecure || isLoopback(this.apiHost);
    this.defaultSignal = options.signal;
    // The command's signal, listened to by every request in flight (--jobs of them, and more):
    // past Node's 10 it warned of a leak ("MaxListenersExceededWarning") on machines of 11+ cores.
    if (options.signal) setMaxListeners(0, options.signal);
    const stallTimeoutMs = options.stallTimeoutMs ?? 30_000;
    this.http = new Http({ host: this.host, insecure, ...(options.certDirs ? { certDirs: options.certDirs } : {}), stallTimeoutMs });
    this.retry = new Retry({ maxRetries: options.maxRetries ?? 4, delayMs: options.retryDelayMs ?? 200, ...(options.onRetry ? { onRetry: options.onRetry } : {}) });
    this.errors = {
      host: this.host,
      allowHttp: this.allowHttp,
      stallTimeoutMs,
      secrets: () => this.auth.secrets(),
      ...(options.credentialsFlag !== undefined ? { credentialsFlag: options.credentialsFlag } : {}),
    };
    const deps = { http: this.http, retry: this.retry, errors: this.errors };
    this.auth = new Auth(
      {
        host: this.host,
        apiHost: this.apiHost,
        allowHttp: this.allowHttp,
        ...(options.insecureHosts ? { insecureHosts: options.insecureHosts } : {}),
        ...(options.credentials ? { credentials: options.credentials } : {}),
        ...(options.credentialsFlag !== undefined ? { credentialsFlag: options.credentialsFlag } : {}),
        ...(options.authFile ? { authFile: options.authFile } : {}),
        ...(options.onWarning ? { onWarning: options.onWarning } : {}),
      },
      deps,
    );
  }

  /** Ends every connection at once: at the end of a command nothing useful is in flight, and an
   * aborted connect (a registry that never answers) must not hold the process until it times out. */
  async close(): Promise<void> {
    await this.http.close();
  }

  /**
   * Pings once per client (again after a failed ping): the scheme, and the challenge. Unless the
   * registry's contact is remembered with its challenge: then nothing is sent (see RegistryContact).
   */
  private ping(signal: AbortSignal | undefined): Promise<void> {
    this.pinged ??= (async () => {
      const memory = this.distrustMemory ? undefined : await this.options.schemes?.get(this.apiHost);
      // Plain HTTP remembered counts only where it is still allowed.
      const known = memory && (memory.scheme === 'https' || this.allowHttp) ? memory : undefined;
      if (known?.challenge) {
        this.base = `${known.scheme}://${this.apiHost}`;
        if (known.challenge === 'basic') this.auth.challenge = { scheme: 'basic' };
        this.remembered = known;
        return;
      }
      const { base, challenge } = await ping(
        { http: this.http, retry: this.retry, errors: this.errors },
        { apiHost: this.apiHost, allowHttp: this.allowHttp, remembered: this.allowHttp ? known?.scheme : undefined },
        signal,
      );
      if (challenge.scheme !== 'none') this.auth.challenge = challenge;
      this.base = base;
      const contact: RegistryContact = { scheme: base.startsWith('http:') ? 'http' : 'https', ...(challenge.scheme !== 'bearer' ? { challenge: challenge.scheme } : {}) };
      if (contact.scheme !== memory?.scheme || contact.challenge !== memory?.challenge) await this.options.schemes?.set(this.apiHost, contact);
    })();
    this.pinged.catch(() => {
      this.pinged = undefined;
    });
    return this.pinged;
  }

  /**
   * A request sent on the remembered contact failed as a wrong scheme does (a TLS server's 400 to
   * plain HTTP, a plain server's answer to a TLS hello): the memory is dropped and the registry
   * pinged as if met for the first time. Concurrent requests share the one ping.
   */
  private async pingAfterAll(signal: AbortSignal | undefined): Promise<void> {
    if (this.remembered) {
      this.remembered = undefined;
      this.distrustMemory = true;
      this.pinged = undefined;
    }
    await this.ping(signal);
  }

  /**
   * On a remembered contact not yet confirmed, the first request goes alone (the others wait for
   * its answer, as they would for the ping): a wrong memory then costs one request, not one per
   * layer. Returns the release of the caller's turn as that first request, if it is.
   */
  private async awaitFirstContact(): Promise<(() => void) | undefined> {
    while (this.remembered && this.firstContact) await this.firstContact;
    if (!this.remembered) return undefined;
    let release!: () => void;
    this.firstContact = new Promise((resolve) => (release = resolve));
    return () => {
      this.firstContact = undefined;
      release();
    };
  }

  /** An answer came on the remembered contact: it holds for the rest of the run. A 401 makes the next command ping again. */
  private confirmRemembered(status: number): void {
    const contact = this.remembered;
    if (!contact) return;
    this.remembered = undefined;
    if (status === 401) void this.options.schemes?.set(this.apiHost, { scheme: contact.scheme });
  }

  /** A URL, or a Location the registry answered (relative to the request's), as the URL it names. */
  protected resolve(location: string, base?: string): URL {
    // Only a registry's Location can fail these checks (the URLs built here always pass).
    let url: URL | undefined;
    try {
      url = new URL(location, base ?? this.base);
    } catch {
      url = undefined;
    }
    if (!url || (url.protocol !== 'http:' && url.protocol !== 'https:')) {
      const what = url ? `a ${url.protocol} Location, not http(s)` : 'a Location that is not a URL';
      throw new SmartError('REGISTRY', `registry ${this.host} answered ${what}: ${remoteText(location, { max: 100 })}`, { input: this.host });
    }
    return url;
  }

  /**
   * A URL the registry answered (an upload's Location, a redirect) that would send `spec` in plain
   * HTTP where plain HTTP is not allowed is refused before anything is sent. On the registry's own
   * name the request would carry its credentials, and an upload the layer's bytes, in clear text:
   * what a registry behind a proxy that ends TLS without saying so (no X-Forwarded-Proto) answers,
   * its absolute URLs built on the scheme it was reached by, so to port 80. On another host a GET
   * (a blob's storage: no credentials go there, and the bytes are checked against their digest) is
   * followed, as containers/image follows it (Go's redirects); anything else would carry a layer's bytes.
   */
  private refusePlainHttp(url: URL, spec: RequestSpec): void {
    if (url.protocol !== 'http:' || plainHttpNamed(url, this.options.insecureHosts)) return;
    const own = url.hostname === new URL(this.base!).hostname;
    if (own ? this.allowHttp : spec.method === 'GET') return;
    const what = `registry ${this.host} answered a plain-HTTP URL (${redactUrl(url.origin)}) for ${spec.method} ${spec.what}`;
    throw own
      ? new SmartError('REGISTRY', `${what}, though it is reached over TLS: refused, neither credentials nor data sent`, {
          input: this.host,
          hint: "a proxy in front of it ends TLS without telling it: set http.relativeurls: true in the registry's config, or have the proxy send X-Forwarded-Proto: https",
        })
      : new SmartError('REGISTRY', `${what}: refused, nothing sent`, {
          input: this.host,
          hint: `plain HTTP goes only to loopback and to hosts named with --insecure-registry: if ${url.host} is trusted on this network, name it so`,
        });
  }

  protected connectionError(e: unknown, what: string): SmartError {
    return connectionError(this.errors, e, { what });
  }

  /** A registry's answer as a RegistryError naming the registry, the request and the status. */
  statusError(status: number, body: Buffer | undefined, what: string, method: string): SmartError {
    return statusError(this.errors, status, body, { what, method });
  }

  /**
   * One API request with authentication: a 401 refreshes the token (or asks for one) and the
   * request is sent once more when its body can be replayed. Connection errors and 408/429/5xx
   * answers are retried (see retry.ts) unless the body is a stream.
   */
  async request(spec: RequestSpec, expected: number[]): Promise<Response> {
    const signal = spec.cleanup
      ? AbortSignal.timeout(CLEANUP_DEADLINE_MS)
      : spec.signal && this.options.signal
        ? AbortSignal.any([spec.signal, this.options.signal])
        : (spec.signal ?? this.options.signal);
    await this.ping(signal);
    const first = await this.awaitFirstContact();
    try {
      // Pinged after all, if the first request found the memory wrong.
      if (!first) await this.ping(signal);
      return await this.authenticated(spec, expected, signal);
    } finally {
      first?.();
    }
  }

  private async authenticated(spec: RequestSpec, expected: number[], signal: AbortSignal | undefined): Promise<Response> {
    const repeatable = !(spec.body instanceof Readable);
    let url = this.resolve(spec.url);
    // Another server the registry sent the request to (a blob's redirect, an upload Location on
    // another host): it gets none of the registry's credentials, its 401 changes nothing of the
    // registry's authentication (a challenge there naming another token server would otherwise
    // have the registry's credentials sent to it), and its failures are said as its own.
    const isRegistry = (u: URL) => u.host === new URL(this.base!).host;
    const elsewhere = (u: URL) => (isRegistry(u) ? {} : { elsewhere: u.host });
    let request = { what: spec.what, method: spec.method, url: url.toString(), ...elsewhere(url) };
    let authRetried = false;
    for (;;) {
      this.refusePlainHttp(url, spec);
      const atRegistry = isRegistry(url);
      const auth = atRegistry ? await this.auth.authorization(spec.scopes, signal) : undefined;
      // identity: bytes as stored, which digests and sizes name (a proxy or CDN that compresses
      // what a client accepts would otherwise send a body of another length and digest).
      const headers: Record<string, string> = { 'user-agent': USER_AGENT, 'accept-encoding': 'identity', ...spec.headers, ...(auth ? { authorization: auth } : {}) };
      const send = () =>
        this.http.send({ origin: url.origin, path: `${url.pathname}${url.search}`, method: spec.method, headers, ...(spec.body !== undefined ? { body: spec.body } : {}), ...(spec.bulk ? { bulk: true } : {}) }, signal);
      // On a remembered contact the request itself meets a wrong scheme: the ping then happens
      // after all, and the request goes again where it found the API.
      const memory = this.allowHttp && repeatable && url.origin === this.base ? this.remembered : undefined;
      let res: Response | undefined;
      try {
        res = await this.retry.send(spec.what, send, { host: this.host, signal, repeatable, failure: (e) => connectionError(this.errors, e, request) });
      } catch (e) {
        if (!memory || signal?.aborted || !looksLikeTlsMismatch(e)) throw e;
      }
      if (res === undefined || (memory?.scheme === 'http' && res.statusCode === 400)) {
        await res?.body.dump();
        await this.pingAfterAll(signal);
        url = this.resolve(spec.url);
        request = { what: spec.what, method: spec.method, url: url.toString(), ...elsewhere(url) };
        continue;
      }
      if (url.origin === this.base) this.confirmRemembered(res.statusCode);
      // A token fetched for exactly these scopes that the registry finds insufficient: asking the
      // token server again gives the same grants (the account may not do this), so the 401 stands.
      const insufficient = auth?.startsWith('Bearer ') && parseChallenge(header(res.headers, 'www-authenticate')).error === 'insufficient_scope';
      if (res.statusCode === 401 && !authRetried && repeatable && atRegistry && !insufficient) {
        authRetried = true;
        await res.body.dump();
        await this.auth.rejected(header(res.headers, 'www-authenticate'), spec.scopes, spec.what);
        continue;
      }
      if (expected.includes(res.statusCode)) return res;
      const body = spec.method === 'HEAD' ? undefined : await readBody(res.body).catch(() => undefined);
      if (spec.method === 'HEAD') await res.body.dump();
      throw statusError(this.errors, res.statusCode, body, request);
    }
  }
}
