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
import { sleep } from '../transient.js';
import { StalledRequest, isSocketStall, stallMessage } from './s3-errors.js';

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
/** The first wait before a stalled request is sent again; doubles each time, as a download resumes. */
const STALL_RETRY_DELAY_MS = 300;

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

/** What each S3 call does, in the words of the driver's messages (`cannot stat s3://…`). */
const OPS: Record<string, string> = {
  HeadObjectCommand: 'stat',
  GetObjectCommand: 'read',
  PutObjectCommand: 'write',
  CopyObjectCommand: 'copy to',
  ListObjectsV2Command: 'list',
  DeleteObjectCommand: 'delete',
  DeleteObjectsCommand: 'delete',
  CreateMultipartUploadCommand: 'upload',
  CompleteMultipartUploadCommand: 'upload',
};

/**
 * A request that stalls (the socket timer: no byte either way for the stall timeout) is sent again
 * here, up to `attempts` in all, each time told to `onRetry` with the wait it cost; the last stall
 * is thrown as a StalledRequest, which the SDK does not send again and whose error (s3-errors.ts)
 * the blob transfer around it does not send again either (src/ops/copy.ts). Left to the SDK, a
 * stall was sent again silently, inside each attempt of that transfer: a push to a frozen endpoint
 * failed after 25 stall timeouts, its warnings telling of 5. The SDK still sends again what fails
 * fast (5xx, throttling, resets). Clean-up after a failure (AbortMultipartUpload, whose failure
 * s3-writer.ts ignores) goes once; a body that cannot be sent twice is the SDK's to refuse. Placed
 * after signing, inside the SDK's own retries: the signed request is sent again as it is.
 */
function resendStalls(client: S3Client, o: { attempts: number; stallTimeoutMs: number; onRetry?: ((message: string) => void) | undefined }): void {
  client.middlewareStack.add(
    (next, context) => async (args) => {
      for (let n = 1; ; n++) {
        try {
          return await next(args);
        } catch (e) {
          if (!isSocketStall(e)) throw e;
          const command = context.commandName ?? '';
          const body = (args.request as { body?: unknown }).body as { pipe?: unknown } | undefined;
          if (typeof body?.pipe === 'function') throw e;
          if (n >= o.attempts || command === 'AbortMultipartUploadCommand') throw new StalledRequest(n);
          const input = args.input as { Bucket?: string; Key?: string; Prefix?: string; PartNumber?: number };
          const key = input.Key ?? input.Prefix ?? '';
          const where = `s3://${input.Bucket ?? ''}${key ? `/${key}` : ''}`;
          const delay = STALL_RETRY_DELAY_MS * 2 ** (n - 1);
          // The parts of one upload in flight at once stall together: each is named.
          const op = command === 'UploadPartCommand' ? `upload part ${input.PartNumber} of` : (OPS[command] ?? `send ${command.replace(/Command$/, '')} to`);
          o.onRetry?.(`${stallMessage(op, where, o.stallTimeoutMs)}; sending it again in ${(delay / 1000).toFixed(1)} s (attempt ${n + 1} of ${o.attempts})`);
          await sleep(delay);
        }
      }
    },
    { step: 'deserialize', priority: 'low', name: 'resendStalls' },
  );
}

/**
 * A client for the storage driver (see the module comment). `onWarning`: what the SDK warns of
 * (sdkLogger), and each stalled request sent again (resendStalls).
 */
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
  const stallTimeoutMs = o.stallTimeoutMs ?? DEFAULT_STALL_MS;
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
    // endpoint that stops reading a part (or stops answering) fails the request, which
    // resendStalls sends again.
    // Behind a proxy (HTTPS_PROXY and the rest, as for registries): each connection through it or
    // straight, as proxyFor says for its host; else the SDK's own agents.
    requestHandler: {
      socketTimeout: stallTimeoutMs,
      ...(proxyConfigured()
        ? { httpAgent: routedHttpAgent({ keepAlive: true, maxSockets: 50, connectMs: 10_000 }), httpsAgent: routedHttpsAgent({ keepAlive: true, maxSockets: 50, connectMs: 10_000 }) }
        : {}),
    },
    ...(endpoint !== undefined ? { endpoint } : {}),
    ...(profile !== undefined ? { profile } : {}),
    ...(o.credentials ? { credentials: o.credentials } : {}),
    logger: sdkLogger(o.onWarning),
  };
  const client = quietly(() => new S3Client(config));
  resendStalls(client, { attempts: checkedMaxAttempts() ?? MAX_ATTEMPTS, stallTimeoutMs, onRetry: o.onWarning });
  return client;
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
