/**
 * S3 clients for the storage driver, made from its options and the standard AWS environment.
 * Every client made here sends checksums only when an operation requires them: otherwise a
 * stream body is sent `aws-chunked` and s3rver stores the framing. S3Bucket is what the driver's
 * modules share of one bucket.
 */
import { S3Client, type S3ClientConfig } from '@aws-sdk/client-s3';
import tls from 'node:tls';
import { proxyConfigured, routedHttpAgent, routedHttpsAgent } from '../proxy.js';
import { trustDeferredCaCerts } from '../tls-trust.js';
import { SmartError, quoted } from '../errors.js';
import { redactImageName, remoteText } from '../redact.js';

export interface S3Credentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

/** A bucket as the driver's modules share it: the client, the bucket, and how they name keys and failures. */
export interface S3Bucket {
  readonly client: S3Client;
  readonly bucket: string;
  /** `s3://bucket/key`, for messages. */
  uri(key: string): string;
  /** An SDK or network error as a SmartError naming `s3://bucket/key` and the operation (s3-errors.ts). */
  fail(e: unknown, op: string, key: string): Promise<SmartError>;
}

/** The SDK warns on Node < 22 about releases it has not made yet; the version here is pinned. */
function quietly<T>(make: () => T): T {
  const name = 'AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED';
  const before = process.env[name];
  process.env[name] = 'true';
  try {
    return make();
  } finally {
    if (before === undefined) delete process.env[name];
    else process.env[name] = before;
  }
}

/**
 * The SDK's logger: what it warns of (AWS_PROFILE set beside AWS_ACCESS_KEY_ID and its secret, in
 * nine lines on stderr) goes to `onWarning` in one line, secrets redacted; nothing is printed.
 * Its info (each request) and error (each failure, which is thrown and reported as ours) go nowhere.
 */
export function sdkLogger(onWarning?: (message: string) => void): NonNullable<S3ClientConfig['logger']> {
  const none = (): void => undefined;
  // Its own prefix (`@aws-sdk/credential-provider-node - defaultProvider::fromEnv WARNING:`) says nothing to a user.
  const text = (args: unknown[]) => remoteText(args.map(String).join(' ').replace(/^@aws-sdk\/\S+ - \S+ WARNING:\s*/, ''), { max: 400 });
  return { debug: none, info: none, error: none, warn: (...args: unknown[]) => onWarning?.(`S3: ${text(args)}`) };
}

function envValue(name: string): string | undefined {
  const v = process.env[name];
  return v === undefined || v === '' ? undefined : v;
}

/** Attempts at one S3 request (unless AWS_MAX_ATTEMPTS says otherwise): a registry request's. */
const MAX_ATTEMPTS = 5;

/** AWS_MAX_ATTEMPTS, refused when it is no count (the SDK took `abc` silently, for its default). */
function checkedMaxAttempts(): number | undefined {
  const v = envValue('AWS_MAX_ATTEMPTS');
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v.trim()) || Number(v) < 1) {
    throw new SmartError('USAGE', `AWS_MAX_ATTEMPTS must be a whole number of attempts, 1 or more, not ${quoted(v, 40)}`, { input: 'AWS_MAX_ATTEMPTS' });
  }
  return Number(v);
}

/** No byte either way on a request's connection for this long: the request fails (retryable) instead of hanging. */
export const DEFAULT_STALL_MS = 30_000;

/**
 * An S3 endpoint as the SDK takes it, or a USAGE error naming where it came from (`from`: the
 * option or the variable): an http:// or https:// URL with a host and no credentials in it. Its
 * credentials are never shown: the endpoint is shown with them replaced, or not at all.
 */
function checkedEndpoint(endpoint: string | undefined, from: string): string | undefined {
  if (endpoint === undefined) return undefined;
  const shown = quoted(redactImageName(endpoint), 100);
  const usage = (why: string) =>
    new SmartError('USAGE', `${from} ${shown} ${why}`, { input: from, hint: 'name the endpoint as http://HOST:PORT or https://HOST' });
  let url: URL;
  try {
    url = new URL(endpoint);
  } catch {
    throw usage('is not a URL');
  }
  if (url.username || url.password) {
    throw new SmartError('USAGE', `${from} holds credentials (USER:PASSWORD@ before the host), which are not sent from there`, {
      input: from,
      hint: 'give S3 credentials as AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE',
    });
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw usage('is not http:// or https://');
  if (!url.hostname) throw usage('names no host');
  return endpoint;
}

export function makeS3Client(o: {
  endpoint?: string;
  region?: string;
  profile?: string;
  forcePathStyle?: boolean;
  credentials?: S3Credentials;
  stallTimeoutMs?: number;
  onWarning?: (message: string) => void;
}): S3Client {
  // Before the SDK connects: to the endpoint, or (credentials from STS or SSO) elsewhere over TLS.
  trustDeferredCaCerts(tls);
  const from = o.endpoint !== undefined ? '--s3-endpoint' : envValue('AWS_ENDPOINT_URL_S3') !== undefined ? 'AWS_ENDPOINT_URL_S3' : 'AWS_ENDPOINT_URL';
  const endpoint = checkedEndpoint(o.endpoint ?? envValue('AWS_ENDPOINT_URL_S3') ?? envValue('AWS_ENDPOINT_URL'), from);
  const region = o.region ?? envValue('AWS_REGION') ?? envValue('AWS_DEFAULT_REGION') ?? 'us-east-1';
  const profile = o.profile ?? envValue('AWS_PROFILE');
  const config: S3ClientConfig = {
    region,
    forcePathStyle: o.forcePathStyle ?? endpoint !== undefined,
    // Without these two a PutObject with a stream body goes out `aws-chunked` with a checksum
    // trailer, and servers that do not speak it (s3rver) store the framing: silent corruption.
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    // Five attempts, as a registry request gets, not the SDK's three: three 503 SlowDown in a row
    // are S3 asking to slow down, not a reason to fail a push. AWS_MAX_ATTEMPTS still decides.
    ...(checkedMaxAttempts() === undefined ? { maxAttempts: MAX_ATTEMPTS } : {}),
    // The socket's idle timer is the stall detector of every request, uploads included: an
    // endpoint that stops reading a part (or stops answering) fails the request, which is retried.
    // Behind a proxy (HTTPS_PROXY and the rest, as for registries): each connection through it or
    // straight, as proxyFor says for its host; else the SDK's own agents.
    requestHandler: {
      socketTimeout: o.stallTimeoutMs ?? DEFAULT_STALL_MS,
      ...(proxyConfigured()
        ? { httpAgent: routedHttpAgent({ keepAlive: true, maxSockets: 50, connectMs: 10_000 }), httpsAgent: routedHttpsAgent({ keepAlive: true, maxSockets: 50, connectMs: 10_000 }) }
        : {}),
    },
    ...(endpoint !== undefined ? { endpoint } : {}),
    ...(profile !== undefined ? { profile } : {}),
    ...(o.credentials ? { credentials: o.credentials } : {}),
    logger: sdkLogger(o.onWarning),
  };
  return quietly(() => new S3Client(config));
}

/**
 * A client from the standard AWS environment: endpoint from `AWS_ENDPOINT_URL_S3` or
 * `AWS_ENDPOINT_URL` (then path-style requests), region from `AWS_REGION` / `AWS_DEFAULT_REGION`
 * (default us-east-1), profile from `AWS_PROFILE`, credentials from the SDK's default chain.
 * Checksums are sent only when an operation requires them (see the module comment).
 */
export function s3ClientFromEnvironment(overrides: { endpoint?: string; region?: string; profile?: string; stallTimeoutMs?: number; onWarning?: (message: string) => void } = {}): S3Client {
  return makeS3Client(overrides);
}
