/**
 * The bottom layer of the registry client: undici's connection pool for one registry (TLS, extra
 * CA certificates, the stall timeouts), one request sent with an abort signal that settles at
 * once, and the small helpers every layer above reads answers with.
 *
 * undici's connection pool and request API are loaded without the rest of undici. Its index
 * module also loads fetch, WebSocket, caches and mocks: ~70 ms at every start of a command that
 * talks to a registry, against ~24 ms for the two parts used here. The version is pinned
 * (package.json), and the same composition as undici's index (the request API mixed into the
 * dispatcher) is done here.
 */
import fs from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import tls from 'node:tls';
import { setFlagsFromString } from 'node:v8';
import type { Agent as UndiciAgent, Dispatcher } from 'undici';
import { SmartError } from '../../errors.js';
import { isShortLivedProcess } from '../../runtime.js';

// In a short-lived command (see runtime.ts), WebAssembly stays on the baseline compiler so that the
// exit does not wait for undici's parser to be optimized. Set here, when a registry is first used,
// not at start-up: a flag changed at start-up makes V8 refuse the code cache of every Node module
// loaded after it (~10 ms on a push that never talks HTTP).
if (isShortLivedProcess()) setFlagsFromString('--liftoff-only');

const require = createRequire(import.meta.url);
const DispatcherClass = require('undici/lib/dispatcher/dispatcher.js') as { prototype: object };
const api = require('undici/lib/api/index.js') as object;
Object.assign(DispatcherClass.prototype, api);

const Agent = require('undici/lib/dispatcher/agent.js') as typeof UndiciAgent;
type Agent = UndiciAgent;

export type Response = Dispatcher.ResponseData;
export type RequestOptions = Dispatcher.RequestOptions;

export const USER_AGENT = 'smartlayer/0.1';

export function isLoopback(host: string): boolean {
  const h = host.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
  return h === 'localhost' || h === '::1' || /^127\./.test(h);
}

export function header(headers: Response['headers'], name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v[0] : v;
}

/** A whole body, at most `limit` bytes (more is an error, the rest not read). */
export async function readBody(body: Response['body'], limit = 1 << 20): Promise<Buffer> {
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

export interface HttpOptions {
  /** `host[:port]` as in the image reference: where Docker and containers tools keep its certificates. */
  host: string;
  /** Unverified TLS (`--insecure-registry`). */
  insecure: boolean;
  /** Directories of extra CA certificates (`*.crt`), e.g. skopeo's --cert-dir. */
  certDirs?: string[];
  /** No byte for this long (waiting for an answer, or between body chunks): the request fails with undici's timeout. */
  stallTimeoutMs: number;
}

/** The connections to one registry (and the token servers and redirect targets it names). */
export class Http {
  private agentPromise: Promise<Agent> | undefined;

  constructor(private readonly options: HttpOptions) {}

  private agent(): Promise<Agent> {
    this.agentPromise ??= (async () => {
      const extra: string[] = [];
      const dirs = [...(this.options.certDirs ?? []), ...defaultCertDirs(this.options.host)];
      for (const dir of dirs) {
        const names = await fs.readdir(dir).catch(() => [] as string[]);
        for (const n of names.filter((x) => x.endsWith('.crt'))) extra.push(await fs.readFile(path.join(dir, n), 'utf8'));
      }
      const stall = this.options.stallTimeoutMs;
      return new Agent({
        connections: 16,
        keepAliveTimeout: 10_000,
        // undici's own idle timers are the stall detector: no headers, or no body bytes, for this long.
        headersTimeout: stall,
        bodyTimeout: stall,
        connectTimeout: Math.min(stall, 10_000),
        connect: {
          ...(extra.length ? { ca: [...tls.rootCertificates, ...extra] } : {}),
          ...(this.options.insecure ? { rejectUnauthorized: false } : {}),
        },
      });
    })();
    return this.agentPromise;
  }

  /**
   * One request, settled as soon as `signal` aborts: undici does not interrupt a connection still
   * being set up (TCP or TLS), and a Ctrl-C or --timeout must not wait for its connect timeout. The
   * abandoned attempt ends when the connections are closed.
   */
  async send(options: RequestOptions, signal: AbortSignal | undefined): Promise<Response> {
    const agent = await this.agent();
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

  /** Ends every connection at once (see RegistryClient.close). */
  async close(): Promise<void> {
    if (this.agentPromise) await (await this.agentPromise).destroy();
  }
}

/** Certificate directories Docker and containers tools use for `host`. */
function defaultCertDirs(host: string): string[] {
  const home = process.env.HOME ?? '';
  return [`/etc/containers/certs.d/${host}`, `/etc/docker/certs.d/${host}`, ...(home ? [`${home}/.config/containers/certs.d/${host}`] : [])];
}
