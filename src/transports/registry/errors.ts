/**
 * What goes wrong talking to a registry, as errors: an answer with an unexpected status (the
 * registry's own error codes kept, every one of them), and a connection that could not be made or
 * broke. What the registry wrote enters a message only through redact.ts, with the secrets the
 * client holds replaced.
 */
import { SmartError, refusalHint, type ErrorCode } from '../../errors.js';
import { redactUrl, remoteText } from '../../redact.js';
import { HTTP_CONNECT_TIMEOUT, HTTP_STALL, PLAIN_HTTP_ANSWER, errorCode, isOwnCode, isTransient, isTransientStatus, networkWords } from '../../transient.js';

/** One entry of the Distribution spec's error body: `{"errors": [{"code", "message", "detail"}]}`. */
export interface RegistryErrorDetail {
  /** `MANIFEST_UNKNOWN`, `DENIED`, `UNAUTHORIZED`…: the spec's codes, or whatever the registry wrote (one line, capped). */
  code: string;
  /** The registry's words, one line, secrets redacted, capped; '' when it gave none. */
  message: string;
}

export interface RegistryErrorOptions {
  input?: string;
  hint?: string;
  cause?: unknown;
  retryable?: boolean;
  /** The status of the answer; undefined when none came (the connection failed or broke). */
  status?: number;
  details?: readonly RegistryErrorDetail[];
  method?: string;
  /** The request's URL: redacted here before it is kept. */
  url?: string;
}

/** A failed exchange with a registry: a SmartError that keeps what a program may want to match on. */
export class RegistryError extends SmartError {
  /** The HTTP status answered; undefined when no answer came. */
  readonly status: number | undefined;
  /** Every error the registry listed in its body, in order; empty when it listed none. */
  readonly details: readonly RegistryErrorDetail[];
  readonly method: string | undefined;
  /** The request's URL with userinfo and secret parameters redacted (redact.ts). */
  readonly url: string | undefined;

  constructor(code: ErrorCode, message: string, options: RegistryErrorOptions = {}) {
    const { status, details, method, url, ...rest } = options;
    super(code, message, rest);
    this.name = 'RegistryError';
    this.status = status;
    this.details = details ?? [];
    this.method = method;
    this.url = url === undefined ? undefined : redactUrl(url);
  }

  /** The registry's error codes, in order (`['MANIFEST_UNKNOWN']`). */
  get codes(): string[] {
    return this.details.map((d) => d.code);
  }
}

export function isRegistryError(e: unknown): e is RegistryError {
  return e instanceof RegistryError;
}

/** What every error of one client says about the registry. */
export interface ErrorContext {
  /** `host[:port]` as the user named it. */
  host: string;
  /** Plain HTTP is allowed for this registry: a TLS error then gets no --insecure-registry hint. */
  allowHttp: boolean;
  stallTimeoutMs: number;
  /** The credentials and tokens the client holds, redacted from anything the registry echoes. */
  secrets(): string[];
  /** The flag that gives this registry its credentials, for hints (auth.ts AuthOptions): `--creds` when not given, none when null. */
  credentialsFlag?: string | null;
}

/** The flag a hint suggests for a registry's credentials: `--creds` unless the command says another, or none (null). */
export function credentialsFlagOf(flag: string | null | undefined): string | null {
  return flag === undefined ? '--creds' : flag;
}

export interface RequestFacts {
  /** What the request is about, for messages: `manifest team/app:1`, `blob sha256:… of team/app`. */
  what: string;
  method?: string;
  url?: string;
  /** `host[:port]` of another server the registry sent the request to (a redirect, an upload Location), which answered or failed. */
  elsewhere?: string;
}

/** The error entries of a spec error body, as written; undefined when the body is no such JSON. */
function parseDetails(body: Buffer): RegistryErrorDetail[] | undefined {
  let doc: { errors?: unknown };
  try {
    doc = JSON.parse(body.toString('utf8')) as { errors?: unknown };
  } catch {
    return undefined;
  }
  if (!Array.isArray(doc?.errors)) return [];
  return (doc.errors as { code?: unknown; message?: unknown }[]).map((e) => ({ code: asText(e?.code), message: asText(e?.message) }));
}

/**
 * A field of an error entry as text: a string as it is, a number or boolean as written, anything
 * else (an object, an array) as compact JSON, never `[object Object]`; '' when it is absent.
 */
function asText(value: unknown): string {
  if (value === undefined || value === null) return '';
  return typeof value === 'object' ? JSON.stringify(value) : String(value);
}

/**
 * A plain-text body as it follows `answered STATUS` in a message: '' when it only says the status
 * again (Go's `404 page not found`, `502 Bad Gateway`, `Not Found`), else as it is.
 */
function withoutStatus(text: string, status: number): string {
  const reason = (process.getBuiltinModule('node:http').STATUS_CODES[status] ?? '').toLowerCase();
  const rest = text.toLowerCase().replace(new RegExp(`^${status}\\b`), '').replace(/\bpage\b/, '').replace(/[\s.:-]+/g, ' ').trim();
  return rest === '' || rest === reason ? '' : text;
}

/** A registry's answer with an unexpected status, naming the registry, the request and the status, and every error code it gave. */
export function statusError(ctx: ErrorContext, status: number, body: Buffer | undefined, request: RequestFacts & { method: string }): RegistryError {
  const known = ctx.secrets();
  const raw = body?.length ? parseDetails(body) : [];
  // Redacted once, as a whole: redacting text already redacted garbles it.
  const detail =
    raw === undefined ? withoutStatus(remoteText(body!.toString('utf8'), { max: 120, known }), status) : remoteText(raw.filter((d) => d.code || d.message).map((d) => `${d.code}${d.message ? `: ${d.message}` : ''}`).join('; '), { known });
  const details = (raw ?? []).map((d) => ({ code: remoteText(d.code, { max: 60, known }), message: remoteText(d.message, { known }) }));
  const who = request.elsewhere ? `${request.elsewhere}, where registry ${ctx.host} sent it,` : `registry ${ctx.host}`;
  const message = `${who} answered ${status}${detail ? ` ${detail}` : ''} to ${request.method} ${request.what}`;
  const facts = { status, details, method: request.method, ...(request.url !== undefined ? { url: request.url } : {}) };
  if (status === 407) {
    // Only a proxy answers 407: the registry was never asked.
    return new RegistryError('REGISTRY', `the HTTP proxy between here and registry ${ctx.host} answered 407 Proxy Authentication Required to ${request.method} ${request.what}`, {
      ...facts,
      input: ctx.host,
      hint: 'give the proxy its credentials in HTTP_PROXY / HTTPS_PROXY (http://USER:PASSWORD@PROXY:PORT), or name the registry in NO_PROXY',
    });
  }
  if ((status === 401 || status === 403) && request.elsewhere) {
    // Not the registry's credentials at fault: that server is sent none of them (a pre-signed URL expired, a CDN's own rules).
    return new RegistryError('REGISTRY', message, { ...facts, input: ctx.host, hint: `${request.elsewhere} is not sent the registry's credentials: the registry's storage or CDN refused the request it signed` });
  }
  if (status === 401 || status === 403) {
    const flag = credentialsFlagOf(ctx.credentialsFlag);
    return new RegistryError('REGISTRY', message, {
      ...facts,
      input: ctx.host,
      hint: `check the credentials (docker login${flag ? `, ${flag} USER:PASSWORD` : ''}) and that they may access this repository`,
    });
  }
  if (status === 404) return new RegistryError('NOT_FOUND', message, { ...facts, input: request.what });
  return new RegistryError('REGISTRY', message, { ...facts, input: ctx.host, retryable: isTransientStatus(status) });
}

/** Errors that mean the registry could not be reached at all (as opposed to a connection that broke). */
// EPROXY: a proxy refused to carry the connection (src/proxy.ts).
const UNREACHABLE = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', HTTP_CONNECT_TIMEOUT, 'EPROXY']);

/** Node's codes for a certificate refused: OpenSSL's verdicts on the chain, and Node's own name and date checks. */
const CERTIFICATE_REFUSED = /CERT|SELF_SIGNED|UNABLE_TO_/;

/** A TLS failure proper: a protocol mismatch or a certificate problem (a bare reset is not one). */
function looksLikeTlsError(e: unknown): boolean {
  const err = e as NodeJS.ErrnoException | undefined;
  const code = err?.code ?? '';
  const msg = err?.message ?? '';
  return code === 'EPROTO' || code.startsWith('ERR_SSL_') || code.startsWith('ERR_TLS_') || /wrong version number|packet length too long|http request|certificate/i.test(msg) || CERTIFICATE_REFUSED.test(code);
}

/** OpenSSL's verdicts on a chain that ends in no CA this process trusts (Node's error codes). */
const UNTRUSTED_CERTIFICATE = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'UNABLE_TO_GET_ISSUER_CERT', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN', 'DEPTH_ZERO_SELF_SIGNED_CERT', 'CERT_UNTRUSTED',
]);

/** Which exchange a connection error happened in: the ping (over TLS, or plain HTTP), or any other. */
export type Phase = 'ping' | 'ping-http' | 'request';

/**
 * A failed connection as an error naming the registry and the request. A TLS hint is given for TLS
 * errors, and for a reset during the TLS ping (the first exchange: a plain HTTP server resets a TLS
 * hello), never for a plain HTTP one nor a connection that broke mid-request. A SmartError passes
 * unchanged.
 */
export function connectionError(ctx: ErrorContext, e: unknown, request: RequestFacts, phase: Phase = 'request'): SmartError {
  if (e instanceof SmartError) return e;
  const { what } = request;
  if ((e as Error)?.name === 'AbortError') return new SmartError('CANCELLED', `${what}: cancelled`, { cause: e });
  const facts = { ...(request.method !== undefined ? { method: request.method } : {}), ...(request.url !== undefined ? { url: request.url } : {}) };
  const code = errorCode(e);
  // No socket could be opened: this machine's limit, not the registry (Node's words for it name
  // an address of "undefined:undefined").
  if (code === 'EMFILE' || code === 'ENFILE') {
    const full = code === 'EMFILE' ? 'this process has too many files open' : "the system's table of open files is full";
    return new SmartError('STORAGE', `${what}: no connection to ${request.elsewhere ?? ctx.host} could be opened: ${full} (${code})`, { input: ctx.host, cause: e, ...refusalHint(e) });
  }
  // Node's words for a failed call (its code again) and OpenSSL's for a server that answered the
  // TLS hello in plain HTTP (a library path, an error queue, a line break), said plainly once.
  const msg = networkWords((e as Error)?.message ?? String(e), code, ctx.host);
  const plainServer = phase === 'ping' && msg === PLAIN_HTTP_ANSWER;
  if (code === HTTP_STALL) {
    const s = Math.round(ctx.stallTimeoutMs / 1000);
    return new RegistryError('REGISTRY', `registry ${ctx.host} stalled: no data for ${s} s (${what})`, { ...facts, input: ctx.host, cause: e, retryable: true });
  }
  // A certificate refused ends the connection before it carried anything: never "lost", whatever the request.
  const refused = CERTIFICATE_REFUSED.test(code ?? '');
  const unreachable = phase !== 'request' || UNREACHABLE.has(code ?? '') || refused;
  const tls = looksLikeTlsError(e) || (phase === 'ping' && code === 'ECONNRESET');
  const skip = `--insecure-registry ${ctx.host} skips the check`;
  const hint = UNTRUSTED_CERTIFICATE.has(code ?? '')
    ? `the registry's certificate is not signed by a CA trusted here: put the CA's .crt in /etc/docker/certs.d/${ctx.host}/ or pass --cert-dir DIR; ${skip}`
    : code === 'ERR_TLS_CERT_ALTNAME_INVALID'
      ? `the registry's certificate is not made out to ${ctx.host.replace(/:\d+$/, '')}: use a name it holds; ${skip}`
      : code === 'CERT_HAS_EXPIRED' || code === 'CERT_NOT_YET_VALID'
        ? `the registry's certificate is outside its validity dates (or this machine's clock is); ${skip}`
        : ctx.allowHttp
          ? 'check the registry TLS setup'
          : plainServer
            ? `a registry without TLS is reached with --insecure-registry ${ctx.host}`
            : 'for a registry without TLS or with a private CA, use --insecure-registry HOST or --cert-dir DIR';
  // Nothing listening, or no such name: the address is what to look at (a proxy's refusal names the proxy already).
  const where = request.elsewhere ?? ctx.host;
  const addressHint = /through the proxy/.test(msg)
    ? undefined
    : request.elsewhere && (code === 'ECONNREFUSED' || code === 'ENOTFOUND' || code === 'EAI_AGAIN')
      ? `the registry sent the request to ${request.elsewhere} (a redirect, an upload's Location, its token server), which cannot be reached from here: that address is what to check`
      : code === 'ECONNREFUSED'
        ? `nothing answers at ${ctx.host}: check the registry's address and port, and that it runs`
        : code === 'ENOTFOUND' || code === 'EAI_AGAIN'
          ? `the name ${ctx.host.replace(/:\d+$/, '')} does not resolve here: check it (and this machine's DNS)`
          : undefined;
  const server = request.elsewhere ? `${where}, where registry ${ctx.host} sent it` : `registry ${ctx.host}`;
  return new RegistryError('REGISTRY', `${unreachable ? 'cannot reach' : 'lost the connection to'} ${server}: ${code && !isOwnCode(code) ? `${code} ` : ''}${msg} (${what})`, {
    ...facts,
    input: ctx.host,
    cause: e,
    retryable: isTransient(e),
    ...(tls ? { hint } : addressHint ? { hint: addressHint } : {}),
  });
}
