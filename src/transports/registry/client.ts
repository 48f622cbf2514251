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
import { Readable } from 'node:stream';
import type { SmartError } from '../../errors.js';
import { RegistryApi, type RequestSpec } from './api.js';
import { Auth } from './auth.js';
import type { Credentials } from './credentials.js';
import { connectionError, statusError, type ErrorContext } from './errors.js';
import { Http, USER_AGENT, header, isLoopback, readBody, type Response } from './http.js';
import { ping } from './ping.js';
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
  /** The scheme each registry allowed plain HTTP answered on last time (see ping.ts): a hint, kept by the caller. */
  schemes?: RegistrySchemes;
}

/** Where the scheme a registry answered on is remembered between commands. Neither call throws. */
export interface RegistrySchemes {
  get(apiHost: string): Promise<'http' | 'https' | undefined>;
  set(apiHost: string, scheme: 'http' | 'https'): Promise<void>;
}

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
  /** Where the API answers, once pinged. */
  private base: string | undefined;
  private pinged: Promise<void> | undefined;

  constructor(readonly options: RegistryClientOptions) {
    super();
    this.host = options.host;
    this.apiHost = options.host === 'docker.io' ? 'registry-1.docker.io' : options.host;
    const insecure = options.insecure ?? false;
    this.allowHttp = insecure || isLoopback(this.apiHost);
    this.defaultSignal = options.signal;
    const stallTimeoutMs = options.stallTimeoutMs ?? 30_000;
    this.http = new Http({ host: this.host, insecure, ...(options.certDirs ? { certDirs: options.certDirs } : {}), stallTimeoutMs });
    this.retry = new Retry({ maxRetries: options.maxRetries ?? 4, delayMs: options.retryDelayMs ?? 200, ...(options.onRetry ? { onRetry: options.onRetry } : {}) });
    this.errors = { host: this.host, allowHttp: this.allowHttp, stallTimeoutMs, secrets: () => this.auth.secrets() };
    const deps = { http: this.http, retry: this.retry, errors: this.errors };
    this.auth = new Auth(
      {
        host: this.host,
        apiHost: this.apiHost,
        allowHttp: this.allowHttp,
        ...(options.insecureHosts ? { insecureHosts: options.insecureHosts } : {}),
        ...(options.credentials ? { credentials: options.credentials } : {}),
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

  /** Pings once per client (again after a failed ping): the scheme, and the challenge. */
  private ping(signal: AbortSignal | undefined): Promise<void> {
    this.pinged ??= (async () => {
      // Only where plain HTTP is allowed is there a choice to remember.
      const schemes = this.allowHttp ? this.options.schemes : undefined;
      const remembered = await schemes?.get(this.apiHost);
      const { base, challenge } = await ping(
        { http: this.http, retry: this.retry, errors: this.errors },
        { apiHost: this.apiHost, allowHttp: this.allowHttp, remembered },
        signal,
      );
      if (challenge.scheme !== 'none') this.auth.challenge = challenge;
      this.base = base;
      const scheme = base.startsWith('http:') ? 'http' : 'https';
      if (scheme !== remembered) await schemes?.set(this.apiHost, scheme);
    })();
    this.pinged.catch(() => {
      this.pinged = undefined;
    });
    return this.pinged;
  }

  protected resolve(location: string, base?: string): URL {
    return new URL(location, base ?? this.base);
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
    const signal = spec.signal && this.options.signal ? AbortSignal.any([spec.signal, this.options.signal]) : (spec.signal ?? this.options.signal);
    await this.ping(signal);
    const url = this.resolve(spec.url);
    const repeatable = !(spec.body instanceof Readable);
    const request = { what: spec.what, method: spec.method, url: url.toString() };
    for (let authAttempt = 0; ; authAttempt++) {
      const auth = url.host === new URL(this.base!).host ? await this.auth.authorization(spec.scopes, signal) : undefined;
      const headers: Record<string, string> = { 'user-agent': USER_AGENT, ...spec.headers, ...(auth ? { authorization: auth } : {}) };
      const send = () =>
        this.http.send({ origin: url.origin, path: `${url.pathname}${url.search}`, method: spec.method, headers, ...(spec.body !== undefined ? { body: spec.body } : {}) }, signal);
      const res = await this.retry.send(spec.what, send, { host: this.host, signal, repeatable, failure: (e) => connectionError(this.errors, e, request) });
      if (res.statusCode === 401 && authAttempt === 0 && repeatable) {
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
