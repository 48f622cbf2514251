/**
 * Docker's registry authentication: the challenge a registry answers with, Basic credentials, and
 * Bearer tokens fetched from the token server it names, cached per set of scopes until they
 * expire. Credentials go to a token server over TLS, or over plain HTTP only where plain HTTP is
 * allowed (see `checkRealm`); they never appear in a message.
 */
import net from 'node:net';
import { isCancellation, SmartError } from '../../errors.js';
import { redactUrl, remoteText } from '../../redact.js';
import { lookupCredentials, type Credentials } from './credentials.js';
import { connectionError, credentialsFlagOf, RegistryError, statusError, type ErrorContext } from './errors.js';
import { USER_AGENT, plainHttpNamed, readBody, type Http } from './http.js';
import type { Retry } from './retry.js';

export interface Challenge {
  scheme: 'basic' | 'bearer' | 'none';
  realm?: string;
  service?: string;
  /** A Bearer challenge's `error` (RFC 6750): `insufficient_scope`, `invalid_token`. */
  error?: string;
}

/** Parses `Bearer realm="...",service="...",scope="..."` (quoted values may hold commas). */
export function parseChallenge(header: string | undefined): Challenge {
  if (!header) return { scheme: 'none' };
  const m = /^\s*(\w+)\s*(.*)$/.exec(header);
  if (!m) return { scheme: 'none' };
  const scheme = m[1]!.toLowerCase();
  const params: Record<string, string> = {};
  for (const p of m[2]!.matchAll(/(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))/g)) params[p[1]!.toLowerCase()] = p[2] ?? p[3] ?? '';
  if (scheme === 'bearer') return { scheme, ...(params.realm ? { realm: params.realm } : {}), ...(params.service ? { service: params.service } : {}), ...(params.error ? { error: params.error } : {}) };
  if (scheme === 'basic') return { scheme };
  return { scheme: 'none' };
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

function basic(c: Credentials): string {
  return `Basic ${Buffer.from(`${c.username}:${c.password}`).toString('base64')}`;
}

export interface AuthOptions {
  /** `host[:port]` as in the image reference: whose credentials are looked up. */
  host: string;
  /** Where the API answers (registry-1.docker.io for docker.io). */
  apiHost: string;
  /** Plain HTTP is allowed for the registry itself (loopback, --insecure-registry). */
  allowHttp: boolean;
  /** Every host allowed plain HTTP (`--insecure-registry`): a token realm on one of them may get credentials over plain HTTP. */
  insecureHosts?: readonly string[];
  /** Given explicitly; otherwise looked up in auth.json and the Docker config (credentials.ts). */
  credentials?: Credentials;
  /**
   * The flag that gives this registry its credentials, which hints suggest: `--creds` when not
   * given; `--src-creds`/`--dest-creds` where `--creds` is refused (a registry on each side); null
   * where no flag reaches this registry (a mirror, two registries read).
   */
  credentialsFlag?: string | null;
  /** The containers auth.json read instead of the default credential files (`--authfile`). */
  authFile?: string;
  /** Told once of a token realm on another host than the registry's. */
  onWarning?: (message: string) => void;
}

/** The authentication state of one registry client. */
export class Auth {
  /** What the registry asked for, at the ping or in a 401 since. */
  challenge: Challenge = { scheme: 'none' };
  private credentials: Promise<Credentials | undefined> | undefined;
  /** The credentials once known: redacted from any message built from what the registry answers. */
  private knownCredentials: Credentials | undefined;
  private readonly tokens = new Map<string, { token: string; expires: number }>();
  /** Token requests under way, by the same key as `tokens`. */
  private readonly fetching = new Map<string, Promise<{ token: string; expires: number }>>();
  /** The origin of the token realm already checked (and warned about, when on another host). */
  private checkedRealm: string | undefined;

  constructor(
    private readonly options: AuthOptions,
    private readonly deps: { http: Http; retry: Retry; errors: ErrorContext },
  ) {}

  creds(): Promise<Credentials | undefined> {
    this.credentials ??= lookupCredentials(this.options.host, this.options.credentials, { ...(this.options.authFile ? { authFile: this.options.authFile } : {}) }).then((c) => (this.knownCredentials = c));
    return this.credentials;
  }

  /** Every secret held, as redact.ts takes them: echoed back by a registry, they are replaced. */
  secrets(): string[] {
    const c = this.knownCredentials ?? this.options.credentials;
    return [...(c ? [c.password, `${c.username}:${c.password}`, ...(c.identityToken ? [c.identityToken] : [])] : []), ...[...this.tokens.values()].map((t) => t.token)];
  }

  /** The Authorization header for a request needing `scopes`, fetching a token when none is cached. */
  async authorization(scopes: string[], signal?: AbortSignal): Promise<string | undefined> {
    if (this.challenge.scheme === 'basic') {
      const c = await this.creds();
      if (c?.identityToken) {
        throw new SmartError('REGISTRY', `the credentials for ${this.options.host} are an identity token, which only a registry with a token server takes (this one asks for Basic auth)`, {
          input: this.options.host,
          hint: this.loginHint('log in with a user name and password (docker login, podman login)'),
        });
      }
      return c ? basic(c) : undefined;
    }
    if (this.challenge.scheme !== 'bearer') return undefined;
    const key = [...scopes].sort().join(' ');
    const cached = this.tokens.get(key);
    if (cached && cached.expires > Date.now()) return `Bearer ${cached.token}`;
    // Requests that start together (a push HEADs and mounts its layers in parallel) share one
    // token request for their scopes, as one would follow another.
    let fetching = this.fetching.get(key);
    if (!fetching) {
      fetching = this.fetchToken(scopes, signal)
        .then((token) => (this.tokens.set(key, token), token))
        .finally(() => this.fetching.delete(key));
      this.fetching.set(key, fetching);
    }
    try {
      return `Bearer ${(await fetching).token}`;
    } catch (e) {
      // The request that started the fetch was cancelled, not this one: fetch for this one.
      if (!isCancellation(e) || signal?.aborted) throw e;
      const token = await this.fetchToken(scopes, signal);
      this.tokens.set(key, token);
      return `Bearer ${token.token}`;
    }
  }

  /**
   * A request needing `scopes` was answered 401 with `challenge`: the challenge is learned and the
   * token for those scopes forgotten, so the next attempt asks again. Basic without credentials
   * cannot succeed: that is an error now.
   */
  async rejected(challengeHeader: string | undefined, scopes: string[], what: string): Promise<void> {
    const challenge = parseChallenge(challengeHeader);
    if (challenge.scheme !== 'none') this.challenge = challenge;
    this.tokens.delete([...scopes].sort().join(' '));
    if (challenge.scheme === 'basic' && !(await this.creds())) {
      throw new SmartError('REGISTRY', `registry ${this.options.host} requires authentication (${what})`, {
        input: this.options.host,
        hint: this.loginHint(),
      });
    }
  }

  /** How to give this registry credentials: `login`, and the flag that reaches it where there is one. */
  private loginHint(login = 'log in with docker login'): string {
    const flag = credentialsFlagOf(this.options.credentialsFlag);
    return flag ? `${login}, or pass ${flag} USER:PASSWORD` : login;
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
    const { host, allowHttp } = this.options;
    const registry = new URL(`https://${this.options.apiHost}`);
    if (realm.protocol === 'http:') {
      const realmAllowed = realm.hostname === registry.hostname || plainHttpNamed(realm, this.options.insecureHosts);
      if (!allowHttp || !realmAllowed) {
        throw new SmartError('REGISTRY', `${host} names a token server on plain HTTP (${redactUrl(realm.origin)}): credentials are not sent in clear text`, {
          input: host,
          hint: allowHttp ? `if ${realm.host} is trusted on this network, allow it with --insecure-registry ${realm.host}` : 'the registry should name an https:// token realm',
        });
      }
    }
    if (!withinSite(registry.hostname, realm.hostname)) {
      this.options.onWarning?.(`credentials for ${host} go to the token server it names on another host, ${redactUrl(realm.host)}`);
    }
    this.checkedRealm = realm.origin;
  }

  private async fetchToken(scopes: string[], signal: AbortSignal | undefined): Promise<{ token: string; expires: number }> {
    const { host } = this.options;
    const { realm, service } = this.challenge;
    if (!realm) throw new SmartError('REGISTRY', `${host} asks for a token but names no realm`, { input: host });
    const url = URL.canParse(realm) ? new URL(realm) : undefined;
    if (!url || (url.protocol !== 'https:' && url.protocol !== 'http:')) {
      throw new SmartError('REGISTRY', `${host} names a token realm that is no http(s) URL: ${remoteText(realm, { max: 100 })}`, { input: host });
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
      headers.authorization = basic(c);
      url.searchParams.set('account', c.username);
    }
    const what = `token for ${host}`;
    const method = form ? 'POST' : 'GET';
    // A token server of its own (the realm on another host): its failures are said as its own.
    const request = { what, method, url: url.toString(), ...(url.host !== host ? { elsewhere: url.host } : {}) };
    const res = await this.deps.retry.send(
      what,
      () =>
        form
          ? this.deps.http.send({ origin: url.origin, path: realmPath, method, headers, body: form }, signal)
          : this.deps.http.send({ origin: url.origin, path: `${url.pathname}${url.search}`, method, headers }, signal),
      { host, signal, failure: (e) => connectionError(this.deps.errors, e, request) },
    );
    const body = await readBody(res.body).catch((e: unknown) => {
      throw connectionError(this.deps.errors, e, request);
    });
    if (res.statusCode === 401 || res.statusCode === 403) {
      const who = c?.identityToken ? ' with its identity token' : c ? ` for user ${c.username}` : '';
      throw new RegistryError('REGISTRY', `authentication to ${host} failed${who} (the token server answered ${res.statusCode})`, {
        input: host,
        hint: c?.identityToken ? 'the identity token may have expired or been revoked: log in again' : c ? 'check the username and password' : this.loginHint(),
        status: res.statusCode,
        method,
        url: url.toString(),
      });
    }
    if (res.statusCode !== 200) throw statusError(this.deps.errors, res.statusCode, body, request);
    let doc: { token?: string; access_token?: string; expires_in?: number };
    try {
      doc = JSON.parse(body.toString('utf8')) as typeof doc;
    } catch {
      throw new SmartError('REGISTRY', `the token server of ${host} answered something that is not JSON`, { input: host });
    }
    const token = doc.token ?? doc.access_token;
    if (!token) throw new SmartError('REGISTRY', `the token server of ${host} answered no token`, { input: host });
    return { token, expires: Date.now() + tokenLifetimeSeconds(doc.expires_in) * 1000 };
  }
}

/**
 * How long a token is used: a little less than the server's `expires_in` (60 s, the spec's
 * default, when it gives none), so that it is renewed before it ends; a short-lived one in time
 * too (one of 9 s was used for 10, past its end, and a streamed upload sent with it was refused,
 * with nothing to send again).
 */
export function tokenLifetimeSeconds(expiresIn: unknown): number {
  const given = typeof expiresIn === 'number' && expiresIn > 0 ? expiresIn : 60;
  return given >= 20 ? given - 5 : given * 0.75;
}
