/**
 * The bottom layer of the registry client: Node's own HTTP client with a keep-alive connection
 * pool for one registry (TLS, extra CA certificates, the stall timeouts), one request sent with an
 * abort signal that settles at once, and the small helpers every layer above reads answers with.
 *
 * Node's http module, not a client library: it is part of the runtime (its parser is llhttp in
 * C++), so a command that talks to a registry pays ~10 ms to load it and nothing to compile a
 * parser. undici, used before, cost ~40 ms to load and ~25 ms more at the first request (its
 * parser is WebAssembly, compiled then), on every command: a warm push of the bench image through
 * the API took 0.27 s with it, 0.22 s without. https and tls are loaded only for a registry that
 * speaks TLS, with process.getBuiltinModule rather than import(): an import of a builtin builds its
 * ES module facade, reading every export (loading both took 15.5 ms that way here, 10.5 ms this).
 * The one exception: a blob's bytes are read past it (bulk-get.ts).
 */
import fs from 'node:fs/promises';
import http, { type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import type { Agent as HttpsAgent } from 'node:https';
import path from 'node:path';
import { Readable, pipeline } from 'node:stream';
import { SmartError } from '../../errors.js';
import { isLoopbackHost } from '../../loopback.js';
import { contextTrusting, trustDeferredCaCerts } from '../../tls-trust.js';
import type { BulkPool, TlsTrust } from './bulk-get.js';
import { abortError, abortReason, afterQuietTurn, closedError, connectTimeoutError, stallError } from './connection-errors.js';
import { proxyFor, routedHttpsAgent } from '../../proxy.js';

export const USER_AGENT = 'smartlayer/0.1';

/** At most this many connections to one origin at once (layers go in parallel). */
const CONNECTIONS = 16;
/** An answer's body that a dump would read further than this is not worth its connection: closed instead. */
const DUMP_LIMIT = 256 * 1024;

export interface RequestOptions {
  /** `scheme://host[:port]`. */
  origin: string;
  /** Path and query. */
  path: string;
  method: string;
  headers?: Record<string, string>;
  /** A Buffer is sent with its length; a stream chunked, as it is read (back-pressure reaches it). */
  body?: Buffer | Readable;
  /** A GET of a blob's bytes: read past Node's client, on connections of its own (see bulk-get.ts). */
  bulk?: boolean;
}

/** An answer's body: its bytes as a stream, and `dump` to discard the rest (the connection is then reused). */
export type ResponseBody = IncomingMessage & { dump(): Promise<void> };

export interface Response {
  statusCode: number;
  headers: IncomingHttpHeaders;
  body: ResponseBody;
}

/** Whether a registry `host[:port]` (an IPv6 address in brackets) is this machine's loopback (src/loopback.ts). */
export function isLoopback(host: string): boolean {
  const bracketed = /^\[([^\]]*)\](?::\d+)?$/.exec(host);
  return isLoopbackHost(bracketed ? bracketed[1]! : host.replace(/:\d+$/, ''));
}

/**
 * Whether plain HTTP may go to `url`'s host whoever names it: this machine's loopback, or a host
 * named with --insecure-registry (as `host:port` or bare). A registry's own host may be allowed
 * it by the registry's setting too (`insecure`, a registries.conf entry).
 */
export function plainHttpNamed(url: URL, insecureHosts: readonly string[] = []): boolean {
  return isLoopback(url.host) || insecureHosts.includes(url.host) || insecureHosts.includes(url.hostname);
}

export function header(headers: Response['headers'], name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v[0] : v;
}

/** A whole body, at most `limit` bytes (more is an error naming `what`, the rest not read). */
export async function readBody(body: Response['body'], limit = 1 << 20, what = 'an answer'): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of body) {
    n += (c as Buffer).length;
    if (n > limit) {
      body.destroy();
      // A bound on hostile input, as a manifest over 4 MiB read from a file is (README: LIMIT_EXCEEDED).
      throw new SmartError('LIMIT_EXCEEDED', `${what}: the answer is larger than ${limit} bytes, more than it can be`);
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
  /** No byte either way for this long while the registry has something to do (see send): the request fails with HTTP_STALL. */
  stallTimeoutMs: number;
}

/**
 * Reads the rest of `res` to reuse its connection, or closes it when there is too much left. Even
 * an answer already complete (a HEAD's) holds its connection until its stream has ended.
 */
function dumpBody(res: IncomingMessage): Promise<void> {
  if (res.readableEnded || res.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    let read = 0;
    const done = () => {
      res.off('data', count);
      resolve();
    };
    const count = (c: Buffer) => {
      read += c.length;
      if (read > DUMP_LIMIT) {
        res.destroy();
        done();
      }
    };
    res.on('data', count);
    res.once('end', done);
    res.once('close', done);
    res.once('error', done);
    res.resume();
  });
}

/** The connections to one registry (and the token servers and redirect targets it names). */
export class Http {
  private httpAgent: http.Agent | undefined;
  private httpsAgent: Promise<HttpsAgent> | undefined;
  private trust: Promise<TlsTrust> | undefined;
  private closed = false;
  /** The connections of bulk GETs (bulk-get.ts). */
  private bulk: BulkPool | undefined;

  constructor(private readonly options: HttpOptions) {}

  private agentFor(protocol: string): http.Agent | Promise<HttpsAgent> {
    // Plain HTTP through a proxy is asked of the proxy in absolute form (send), on connections to it.
    if (protocol === 'http:') return (this.httpAgent ??= new http.Agent({ keepAlive: true, maxSockets: CONNECTIONS }));
    // https (and tls) only when a registry speaks it; each connection straight or through the
    // proxy the environment names for its host (src/proxy.ts).
    this.httpsAgent ??= (async () =>
      routedHttpsAgent({ keepAlive: true, maxSockets: CONNECTIONS, connectMs: Math.min(this.options.stallTimeoutMs, 10_000), ...(await this.tlsTrust()) }))();
    return this.httpsAgent;
  }

  /** What a TLS connection here trusts: the extra CA certificates of the registry's directories; nothing checked when insecure. */
  private tlsTrust(): Promise<TlsTrust> {
    this.trust ??= (async () => {
      const extra: string[] = [];
      const dirs = [...(this.options.certDirs ?? []), ...defaultCertDirs(this.options.host)];
      for (const dir of dirs) {
        const names = await fs.readdir(dir).catch(() => [] as string[]);
        for (const n of names.filter((x) => x.endsWith('.crt'))) extra.push(await fs.readFile(path.join(dir, n), 'utf8'));
      }
      const tls = process.getBuiltinModule('node:tls');
      trustDeferredCaCerts(tls);
      return {
        ...(extra.length ? { secureContext: contextTrusting(tls, extra) } : {}),
        ...(this.options.insecure ? { rejectUnauthorized: false } : {}),
      };
    })();
    return this.trust;
  }

  /**
   * One request; settles with the answer's status and headers (its body still to be read), or
   * fails: at once when `signal` aborts (with its reason), and with HTTP_CONNECT_TIMEOUT or
   * HTTP_STALL when the registry does not connect or answer in time. A body read after the
   * answer fails the same way (an AbortError once aborted).
   */
  async send(options: RequestOptions, signal: AbortSignal | undefined): Promise<Response> {
    signal?.throwIfAborted();
    const url = new URL(options.path, options.origin);
    const proxy = proxyFor(url);
    const agent = await this.agentFor(url.protocol);
    signal?.throwIfAborted();
    if (this.closed) throw closedError();
    const { body } = options;
    const stall = this.options.stallTimeoutMs;
    // Through a proxy, blob bytes take the usual way: the bulk reader connects straight to the registry.
    if (options.bulk && options.method === 'GET' && body === undefined && !proxy) {
      const { BulkPool, bulkGet } = await import('./bulk-get.js');
      const tls = url.protocol === 'https:' ? await this.tlsTrust() : undefined;
      this.bulk ??= new BulkPool();
      const answer = await bulkGet({ url, headers: options.headers ?? {}, stallMs: stall, connectMs: Math.min(stall, 10_000), signal, pool: this.bulk, ...(tls ? { tls } : {}) });
      // Read by the layers above as an IncomingMessage's stream is: they use no more of it.
      if (answer) return answer as unknown as Response;
      if (this.closed) throw closedError();
    }
    const transport = url.protocol === 'http:' ? http : process.getBuiltinModule('node:https');
    return new Promise<Response>((resolve, reject) => {
      let res: IncomingMessage | undefined;
      let settled = false;
      const fail = (e: Error) => {
        if (!settled) {
          settled = true;
          reject(e);
        }
      };
      const req =
        proxy && url.protocol === 'http:'
          ? http.request({
              host: proxy.host,
              port: proxy.port,
              path: url.href,
              method: options.method,
              headers: { ...options.headers, host: url.host, ...(proxy.authorization ? { 'proxy-authorization': proxy.authorization } : {}) },
              agent: agent as http.Agent,
            })
          : transport.request(url, { method: options.method, headers: options.headers, agent: agent as http.Agent });
      // One failure for the request and its answer's body, whichever is being read.
      const stop = (e: Error) => {
        if (res && !res.complete) res.destroy(e);
        req.destroy(e);
      };
      const onAbort = () => {
        fail(abortReason(signal!));
        stop(abortError(signal!));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      const release = () => signal?.removeEventListener('abort', onAbort);
      req.on('error', (e) => {
        release();
        fail(e);
      });
      req.on('close', () => {
        if (!res) release();
      });
      req.on('socket', (socket) => {
        if (socket.connecting) {
          const timer = setTimeout(() => stop(connectTimeoutError()), Math.min(stall, 10_000));
          socket.once('connect', () => clearTimeout(timer));
          socket.once('close', () => clearTimeout(timer));
        }
        // A stall is the registry's: no byte either way for `stall` ms while it has something to
        // do. Quiet because our own side is slow (a request body whose producer has nothing yet,
        // an answer whose reader has not taken what came) is looked at again a period later.
        const onIdle = () => {
          const sending = !req.writableFinished;
          const ours = sending ? req.writableLength === 0 && socket.writableLength === 0 : res !== undefined && !res.readableEnded && res.readableLength > 0;
          if (ours) socket.setTimeout(stall);
          else afterQuietTurn(socket, () => watching && stop(stallError(stall)));
        };
        let watching = true;
        socket.setTimeout(stall);
        socket.on('timeout', onIdle);
        // The socket goes back to the pool for the next request: this one no longer watches it.
        const detach = () => {
          watching = false;
          socket.off('timeout', onIdle);
        };
        req.once('close', detach);
        req.once('response', (answer: IncomingMessage) => answer.once('end', detach));
      });
      req.on('response', (answer: IncomingMessage) => {
        res = answer;
        answer.once('close', release);
        settled = true;
        const out = answer as ResponseBody;
        out.dump = () => dumpBody(answer);
        resolve({ statusCode: answer.statusCode ?? 0, headers: answer.headers, body: out });
      });
      if (body instanceof Readable) {
        // The request ends when the stream does; a stream that fails destroys the request with its error.
        pipeline(body, req, () => undefined);
      } else {
        req.end(body);
      }
    });
  }

  /** Ends every connection at once (see RegistryClient.close). */
  async close(): Promise<void> {
    this.closed = true;
    this.bulk?.close();
    this.httpAgent?.destroy();
    if (this.httpsAgent) (await this.httpsAgent.catch(() => undefined))?.destroy();
  }
}

/** Certificate directories Docker and containers tools use for `host`. */
function defaultCertDirs(host: string): string[] {
  const home = process.env.HOME ?? '';
  return [`/etc/containers/certs.d/${host}`, `/etc/docker/certs.d/${host}`, ...(home ? [`${home}/.config/containers/certs.d/${host}`] : [])];
}
