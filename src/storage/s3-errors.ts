/**
 * S3 failures as SmartErrors: what the SDK or the network said, mapped to NOT_FOUND or STORAGE
 * with the object (`s3://bucket/key`) and the operation named, a hint where one helps, and the
 * retryable flag of transient.ts. The endpoint's own words are redacted, one line, bounded; no
 * credential enters a message.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { SmartError, isSmartError, quoted } from '../errors.js';
import { isAtProxy } from '../proxy.js';
import { remoteText } from '../redact.js';
import { PLAIN_HTTP_ANSWER, answeredPlainHttp, errorCode, errorStatus, isOwnCode, isTransient, networkWords } from '../transient.js';

/** What an SDK or network error says about itself. */
export interface ErrorFacts {
  /** The S3 error code (`NoSuchKey`, `AccessDenied`), else the error's name. */
  name: string;
  status: number | undefined;
  /** The errno-like code, from the error, its AggregateError parts or its cause. */
  code: string | undefined;
  message: string;
}

export function facts(e: unknown): ErrorFacts {
  const o = (typeof e === 'object' && e !== null ? e : {}) as { name?: unknown; Code?: unknown; message?: unknown };
  const name = typeof o.Code === 'string' ? o.Code : typeof o.name === 'string' ? o.name : 'Error';
  return { name, status: errorStatus(e), code: errorCode(e), message: typeof o.message === 'string' ? o.message : String(e) };
}

/** The SDK's socket timer fired: no byte either way on the request's connection for the stall timeout. */
export function isSocketStall(e: unknown): boolean {
  const f = facts(e);
  return f.name === 'TimeoutError' && /socket timed out/.test(f.message);
}

/**
 * A request that stalled on each of its `attempts` (s3-client.ts sends a stalled request again
 * itself, each time told). It has no `cause`: the SDK would find the TimeoutError there and send
 * the request again, silently, as many times more.
 */
export class StalledRequest extends Error {
  constructor(readonly attempts: number) {
    super(`the request stalled (${attempts} attempts)`);
    this.name = 'StalledRequest';
  }
}

/** `cannot OP WHERE: no data for N s (stalled)`, and how many attempts waited that long each when more than one did. */
export function stallMessage(op: string, where: string, stallTimeoutMs: number, attempts = 1): string {
  const s = Number((stallTimeoutMs / 1000).toFixed(3));
  return `cannot ${op} ${where}: no data for ${s} s${attempts > 1 ? ` on each of ${attempts} attempts` : ''} (stalled)`;
}

/** A 5xx answer: s3rver gives them for deletes that succeeded (see s3-delete.ts). */
export function isServerError(e: unknown): boolean {
  const status = errorStatus(e);
  return status !== undefined && status >= 500;
}

/** Removes user:password@ from an endpoint before it goes into a message. */
function safeUrl(u: string): string {
  try {
    const url = new URL(u);
    url.username = '';
    url.password = '';
    return url.toString().replace(/\/$/, '');
  } catch {
    return u.replace(/\/\/[^@/]*@/, '//');
  }
}

/** The endpoint a client talks to, for a message: the option given, the client's, or AWS's for its region. */
export async function endpointLabel(client: S3Client, endpointOption: string | undefined): Promise<string> {
  if (endpointOption) return safeUrl(endpointOption);
  try {
    const ep = await client.config.endpoint?.();
    if (ep) return safeUrl(`${ep.protocol}//${ep.hostname}${ep.port ? `:${ep.port}` : ''}${ep.path ?? ''}`);
  } catch {
    // fall through to the default
  }
  try {
    return `https://s3.${await client.config.region()}.amazonaws.com`;
  } catch {
    return 'https://s3.amazonaws.com';
  }
}

export interface S3ErrorContext {
  /** What was being done: `read`, `write`, `upload`, `delete`… */
  op: string;
  /** `s3://bucket/key`. */
  where: string;
  bucket: string;
  stallTimeoutMs: number;
  /** Asked only when the endpoint cannot be reached. */
  endpoint(): Promise<string>;
}

/** An SDK or network error as a SmartError naming `s3://bucket/key`, never credentials. A SmartError passes unchanged. */
export async function s3Error(e: unknown, ctx: S3ErrorContext): Promise<SmartError> {
  if (isSmartError(e)) return e;
  const { op, where } = ctx;
  // Sent again as often as it may be already: a loop around the step would multiply the wait.
  if (e instanceof StalledRequest) {
    return new SmartError('STORAGE', stallMessage(op, where, ctx.stallTimeoutMs, e.attempts), { input: where, cause: e, retryable: true, attemptsSpent: true });
  }
  const f = facts(e);
  const status = f.status !== undefined ? `, HTTP ${f.status}` : '';
  if (f.name === 'NoSuchKey' || f.name === 'NotFound' || (f.status === 404 && f.name !== 'NoSuchBucket' && f.name !== 'NoSuchUpload')) {
    return new SmartError('NOT_FOUND', `${where} not found`, { input: where, cause: e });
  }
  if (f.name === 'NoSuchBucket') {
    return new SmartError('STORAGE', `cannot ${op} ${where}: bucket "${ctx.bucket}" does not exist (NoSuchBucket${status})`, {
      input: where,
      hint: 'create the bucket or check --s3-endpoint',
      cause: e,
    });
  }
  // A proxy that could not be reached, refused CONNECT or never answered: the proxy is named (its
  // message does, without its credentials, src/proxy.ts), not the endpoint it never reached.
  if (f.status === undefined && isAtProxy(e)) {
    const code = f.code && !isOwnCode(f.code) ? `${f.code} ` : '';
    return new SmartError('STORAGE', `cannot reach the S3 endpoint ${await ctx.endpoint()} to ${op} ${where}: ${code}${remoteText(networkWords(f.message, f.code))}`, {
      input: where,
      hint: 'check HTTPS_PROXY / HTTP_PROXY and that the proxy runs, or name the endpoint in NO_PROXY',
      cause: e,
      retryable: isTransient(e),
    });
  }
  if (f.name === 'CredentialsProviderError') {
    const profile = process.env.AWS_PROFILE;
    return new SmartError('STORAGE', `cannot ${op} ${where}: no AWS credentials found${profile ? ` for the profile ${quoted(profile, 60)} (AWS_PROFILE)` : ''}`, {
      input: where,
      hint: profile
        ? `check that the profile ${quoted(profile, 60)} is in ~/.aws/config or ~/.aws/credentials, or the files AWS_CONFIG_FILE and AWS_SHARED_CREDENTIALS_FILE name`
        : 'set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE',
      cause: e,
    });
  }
  if (f.code === 'ECONNREFUSED' || f.code === 'ENOTFOUND' || f.code === 'EAI_AGAIN') {
    return new SmartError('STORAGE', `cannot reach the S3 endpoint ${await ctx.endpoint()} (${f.code}) to ${op} ${where}`, {
      input: where,
      hint: 'check --s3-endpoint / AWS_ENDPOINT_URL_S3 and that the server runs',
      cause: e,
      retryable: isTransient(e),
    });
  }
  if (f.status === undefined && answeredPlainHttp(f.message)) {
    return new SmartError('STORAGE', `cannot reach the S3 endpoint ${await ctx.endpoint()}: ${PLAIN_HTTP_ANSWER} (${f.code ?? 'EPROTO'}) to ${op} ${where}`, {
      input: where,
      hint: 'name an endpoint without TLS with http://, in --s3-endpoint or AWS_ENDPOINT_URL_S3',
      cause: e,
    });
  }
  // A body that stalled after its headers (the request's own stalls are StalledRequest).
  if (isSocketStall(e)) return new SmartError('STORAGE', stallMessage(op, where, ctx.stallTimeoutMs), { input: where, cause: e, retryable: true });
  // No HTTP answer, and a code: a connection-level failure, named by its code.
  const network = f.status === undefined && f.code !== undefined;
  let hint: string | undefined;
  if (f.status === 403 || f.name === 'AccessDenied' || f.name === 'InvalidAccessKeyId' || f.name === 'SignatureDoesNotMatch') {
    hint = 'check the AWS credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE) and their permissions on the bucket';
  } else if (f.status === 301 || f.name === 'PermanentRedirect' || f.name === 'AuthorizationHeaderMalformed') {
    hint = 'the bucket is in another region: set --s3-region / AWS_REGION';
  }
  // The error code and message are the endpoint's words: redacted, one line, bounded. An answer
  // the SDK could not parse (a proxy's or load balancer's error page) says nothing beyond its status.
  // A network error's code is shown once, before its message in words (never a code of ours).
  const code = network && isOwnCode(f.code) ? '' : remoteText(network ? (f.code ?? f.name) : f.name, { max: 60 });
  const said = network ? networkWords(f.message ?? '', f.code) : (f.message ?? '');
  const message = /Deserialization error|XML parse error/.test(said) ? '' : remoteText(said.split('\n')[0] ?? '');
  const detail = message && message !== code && message !== 'UnknownError' ? `: ${message}` : '';
  const label = code === 'Error' && status ? status.slice(2) : `${code}${status}`;
  return new SmartError('STORAGE', `cannot ${op} ${where}: ${label ? `${label}${detail}` : message}`, {
    input: where,
    cause: e,
    retryable: isTransient(e),
    ...(hint ? { hint } : {}),
  });
}
