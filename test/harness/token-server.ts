/**
 * A small Docker token server: the Bearer flow of the Distribution token spec, for a registry
 * started with `auth.token` (test/harness/registry.ts).
 *
 *   GET /token?service=S&scope=repository:NAME:pull,push&scope=...&account=U   (HTTP Basic optional)
 *   POST /token   (OAuth2 form: grant_type=password, username, password, service, scope;
 *                  or grant_type=refresh_token, refresh_token: an identity token of `refreshTokens`)
 *
 * Answers `{token, access_token, expires_in, issued_at}`: a JWT signed ES256 (default) or RS256
 * with node:crypto, whose header carries `x5c: [the signing certificate]`. The signing certificate
 * is self-signed and is the registry's `rootcertbundle`: distribution 2.8 verifies the x5c chain
 * against that bundle, then the signature with the leaf's key.
 */
import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { runOk } from './run.js';

export interface TokenScope {
  /** `repository`, `registry`, ... (a resource class such as `repository(plugin)` is kept as is). */
  type: string;
  name: string;
  actions: string[];
}

export interface TokenRequestLog {
  /** The authenticated user; undefined for an anonymous request (and for a refused one). */
  user?: string;
  /** The scope strings as asked, one per scope (`repository:a/b:pull,push`). */
  scopes: string[];
  service?: string;
  account?: string;
  method: string;
  /** The OAuth2 grant of a POST (`password`, `refresh_token`). */
  grant?: string;
  /** 200 issued, 401 bad credentials, 400 bad request. */
  status: number;
  /** What the token granted (after `grants`), when one was issued. */
  access?: TokenScope[];
}

export interface TokenServerOptions {
  /** Working directory for the signing key and certificate (created if missing). */
  dir: string;
  /** HTTP Basic users: name → password. A request without credentials is anonymous. */
  users: Record<string, string>;
  /** Identity tokens (OAuth2 refresh tokens) the POST flow takes: token → the user it stands for. */
  refreshTokens?: Record<string, string>;
  /** The actions granted to `user` (undefined: anonymous) for one requested scope; `'*'` grants all asked. */
  grants: (user: string | undefined, scope: TokenScope) => string[];
  /** `aud` and the expected `service` parameter. Default `smartlayer-test-registry`. */
  service?: string;
  /** `iss`. Default `smartlayer-test-token-server`. */
  issuer?: string;
  /** Token lifetime in seconds (`expires_in`, `exp - iat`). Default 300. */
  expiresIn?: number;
  /** Signature algorithm. Default `ES256` (P-256). */
  alg?: 'ES256' | 'RS256';
}

export interface RunningTokenServer {
  /** `http://127.0.0.1:PORT/token`: the registry's `auth.token.realm`. */
  realm: string;
  service: string;
  issuer: string;
  /** PEM file of the signing certificate: the registry's `auth.token.rootcertbundle`. */
  rootCertBundle: string;
  /** Every token request, in order. */
  requests: TokenRequestLog[];
  /** Mints a token directly (no HTTP, no `grants`): for tests that need a hand-made one. */
  mint(user: string | undefined, access: TokenScope[], overrides?: { exp?: number; nbf?: number; aud?: string; iss?: string }): string;
  stop(): Promise<void>;
}

const b64url = (b: Buffer | string) => Buffer.from(b).toString('base64url');

/** `type:name:actions`; the name may itself hold ':' (a host:port), the actions never. */
export function parseScope(s: string): TokenScope | undefined {
  const first = s.indexOf(':');
  const last = s.lastIndexOf(':');
  if (first <= 0 || last <= first) return undefined;
  const actions = s
    .slice(last + 1)
    .split(',')
    .map((a) => a.trim())
    .filter(Boolean);
  return { type: s.slice(0, first), name: s.slice(first + 1, last), actions };
}

function pemToDer(pem: string): Buffer {
  const m = /-----BEGIN CERTIFICATE-----([\s\S]+?)-----END CERTIFICATE-----/.exec(pem);
  if (!m) throw new Error('no certificate in PEM');
  return Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64');
}

function basicUser(header: string | undefined): { user: string; password: string } | undefined | null {
  if (!header) return undefined;
  const m = /^Basic\s+(\S+)$/i.exec(header);
  if (!m) return null;
  const text = Buffer.from(m[1]!, 'base64').toString('utf8');
  const i = text.indexOf(':');
  if (i < 0) return null;
  return { user: text.slice(0, i), password: text.slice(i + 1) };
}

function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && crypto.timingSafeEqual(x, y);
}

export async function startTokenServer(options: TokenServerOptions): Promise<RunningTokenServer> {
  const service = options.service ?? 'smartlayer-test-registry';
  const issuer = options.issuer ?? 'smartlayer-test-token-server';
  const expiresIn = options.expiresIn ?? 300;
  const alg = options.alg ?? 'ES256';

  await fs.mkdir(options.dir, { recursive: true });
  const keyFile = path.join(options.dir, 'token-signing.key');
  const certFile = path.join(options.dir, 'token-signing.crt');
  const newkey = alg === 'ES256' ? ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256'] : ['-newkey', 'rsa:2048'];
  await runOk('openssl', [
    'req', '-x509', ...newkey, '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '1',
    '-subj', '/CN=smartlayer test token signer', '-addext', 'keyUsage=critical,digitalSignature',
  ]);
  const key = crypto.createPrivateKey(await fs.readFile(keyFile));
  const x5c = pemToDer(await fs.readFile(certFile, 'utf8')).toString('base64'); // standard base64, not url
  const header = b64url(JSON.stringify({ typ: 'JWT', alg, x5c: [x5c] }));

  const mint: RunningTokenServer['mint'] = (user, access, overrides = {}) => {
    const now = Math.floor(Date.now() / 1000);
    const claims = {
      iss: overrides.iss ?? issuer,
      sub: user ?? '',
      // distribution 2.8 decodes `aud` as a single string: an array makes every token invalid.
      aud: overrides.aud ?? service,
      exp: overrides.exp ?? now + expiresIn,
      nbf: overrides.nbf ?? now - 1,
      iat: now,
      jti: crypto.randomBytes(16).toString('hex'),
      access,
    };
    const signingInput = `${header}.${b64url(JSON.stringify(claims))}`;
    // JOSE ES256 wants the raw r||s pair, not node's default DER.
    const sig = crypto.sign('sha256', Buffer.from(signingInput), alg === 'ES256' ? { key, dsaEncoding: 'ieee-p1363' } : key);
    return `${signingInput}.${b64url(sig)}`;
  };

  const requests: TokenRequestLog[] = [];

  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (d: Buffer) => chunks.push(d));
    req.on('end', () => {
      const u = new URL(req.url ?? '/', 'http://x');
      const json = (status: number, body: unknown, extra: Record<string, string> = {}) => {
        res.writeHead(status, { 'content-type': 'application/json', ...extra });
        res.end(JSON.stringify(body));
      };
      if (u.pathname !== '/token' || (req.method !== 'GET' && req.method !== 'POST')) {
        json(404, { errors: [{ code: 'NOT_FOUND', message: `${req.method} ${u.pathname}` }] });
        return;
      }
      let params = u.searchParams;
      let creds = basicUser(req.headers.authorization);
      // A refresh token stands for its user without a password (null: one the server never issued).
      let refreshed: string | null | undefined;
      if (req.method === 'POST') {
        params = new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
        if (params.get('grant_type') === 'password') creds = { user: params.get('username') ?? '', password: params.get('password') ?? '' };
        if (params.get('grant_type') === 'refresh_token') {
          const token = params.get('refresh_token') ?? '';
          refreshed = Object.hasOwn(options.refreshTokens ?? {}, token) ? options.refreshTokens![token]! : null;
          creds = undefined;
        }
      }
      const scopeStrings = params.getAll('scope').flatMap((s) => s.split(' ')).filter(Boolean);
      const entry: TokenRequestLog = { scopes: scopeStrings, method: req.method, status: 0 };
      const grant = params.get('grant_type');
      if (req.method === 'POST' && grant !== null) entry.grant = grant;
      const svc = params.get('service');
      if (svc !== null) entry.service = svc;
      const account = params.get('account') ?? params.get('username');
      if (account !== null) entry.account = account;
      requests.push(entry);

      if (refreshed === null || creds === null || (creds && !(Object.hasOwn(options.users, creds.user) && safeEqual(options.users[creds.user]!, creds.password)))) {
        entry.status = 401;
        json(401, { errors: [{ code: 'UNAUTHORIZED', message: 'invalid username or password' }] }, { 'www-authenticate': 'Basic realm="smartlayer test token server"' });
        return;
      }
      if (svc !== null && svc !== service) {
        entry.status = 400;
        json(400, { errors: [{ code: 'INVALID_REQUEST', message: `unknown service ${svc}` }] });
        return;
      }
      const user = refreshed ?? creds?.user;
      if (user !== undefined) entry.user = user;
      if (account !== null && user !== undefined && account !== user) {
        entry.status = 400;
        json(400, { errors: [{ code: 'INVALID_REQUEST', message: `account ${account} is not the authenticated user ${user}` }] });
        return;
      }

      const access: TokenScope[] = [];
      for (const s of scopeStrings) {
        const scope = parseScope(s);
        if (!scope) {
          entry.status = 400;
          json(400, { errors: [{ code: 'INVALID_REQUEST', message: `bad scope ${s}` }] });
          return;
        }
        const allowed = options.grants(user, scope);
        const actions = allowed.includes('*') ? scope.actions : scope.actions.filter((a) => allowed.includes(a));
        if (actions.length) access.push({ ...scope, actions });
      }
      const token = mint(user, access);
      entry.status = 200;
      entry.access = access;
      json(200, { token, access_token: token, expires_in: expiresIn, issued_at: new Date().toISOString() });
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  let stopped: Promise<void> | undefined;
  return {
    realm: `http://127.0.0.1:${port}/token`,
    service,
    issuer,
    rootCertBundle: certFile,
    requests,
    mint,
    stop: () =>
      (stopped ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      })),
  };
}
