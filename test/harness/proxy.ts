/**
 * A reverse HTTP proxy in front of a registry, for fault injection and byte counting.
 *
 * Clients talk plain HTTP to the proxy; it forwards each request to `target` (http: or https:)
 * with `Host` set to the target's host, streams bodies both ways with back-pressure, and rewrites
 * `Location` headers that point at the target so they point at the proxy (the registry answers
 * absolute upload URLs built from `Host`: without the rewrite an upload's PATCH/PUT would bypass
 * the proxy).
 *
 * Faults: `setFaults((req, n) => Fault | undefined)` is asked once per request, where `n` is the
 * 1-based count of requests with this method and path (query excluded) since the last
 * `setFaults` (or start), this one included. "The 2nd GET of /v2/x/blobs/sha256:abc" is
 * `(r, n) => r.method === 'GET' && r.path === '/v2/x/blobs/sha256:abc' && n === 2 ? f : undefined`.
 * A fault with `times` applies to at most that many requests; faults with equal contents share
 * the count (so `() => ({ kind: 'reset', times: 2 })`, a fresh object each call, still stops after
 * two), and `setFaults` restarts it.
 */
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';

export type Fault = (
  /** Answer `status` (default body: a registry-style JSON error) without forwarding. */
  | { kind: 'status'; status: number; headers?: Record<string, string>; body?: string }
  /** Reset (RST) the client's connection before answering; nothing is forwarded. */
  | { kind: 'reset' }
  /**
   * Forward, send the status, headers (Content-Length intact) and the first `afterBytes` body
   * bytes, then reset the client's connection. A body no longer than `afterBytes` goes whole.
   */
  | { kind: 'reset-mid-body'; afterBytes: number }
  /** Forward, send the headers and `afterBytes` body bytes, then send nothing more, keeping the connection open until `stop()`. */
  | { kind: 'stall-mid-body'; afterBytes: number }
  /** Forward, flipping (XOR 0xff) the body byte at `offset` (default 0; clamped to Content-Length - 1). Same length. */
  | { kind: 'corrupt-body'; offset?: number }
  /** Wait `ms` before forwarding. */
  | { kind: 'delay'; ms: number }
  /** Forward, sending the response body `bytes` bytes every `everyMs` (a slow-loris server: never silent, never done). */
  | { kind: 'slow-body'; bytes: number; everyMs: number }
  /**
   * Forward, and once `afterBytes` bytes of the REQUEST body have been forwarded, reset the
   * client's connection and abort the forwarded request (an upload broken mid-way). A request
   * body no longer than `afterBytes` goes whole.
   */
  | { kind: 'reset-mid-request'; afterBytes: number }
  /**
   * Forward, and once `afterBytes` bytes of the request body have been forwarded, read no more of
   * it and never answer, keeping the connection open until `stop()` (an upload that hangs); the
   * forwarded request is aborted.
   */
  | { kind: 'stall-mid-request'; afterBytes: number }
) & {
  /** Apply this fault to at most this many requests (counted by its contents); later ones pass through. */
  times?: number;
};

export interface ProxiedRequest {
  method: string;
  /** Path without the query string. */
  path: string;
  /** Path and query, as the client sent it. */
  url: string;
  headers: http.IncomingHttpHeaders;
}

export type FaultFn = (req: ProxiedRequest, n: number) => Fault | undefined;

/**
 * A request that carries a blob's bytes into an upload: a PATCH, or a PUT that closes the upload
 * with them (a blob whose digest is known goes in one PUT); not the empty PUT after a PATCH.
 */
export function carriesBlobBytes(req: Pick<ProxiedRequest, 'method' | 'path' | 'headers'>): boolean {
  if (!req.path.includes('/blobs/uploads/')) return false;
  if (req.method === 'PATCH') return true;
  return req.method === 'PUT' && (req.headers['transfer-encoding'] !== undefined || Number(req.headers['content-length'] ?? 0) > 0);
}

export interface ProxyRequestStat {
  method: string;
  /** Path without the query string. */
  path: string;
  url: string;
  /** Status sent to the client; 0 when none was sent (reset before answering). */
  status: number;
  /** Request body bytes received from the client. */
  requestBytes: number;
  /** Response body bytes sent to the client. */
  responseBytes: number;
  /** The fault applied, if any. */
  fault?: Fault['kind'];
}

export interface ProxyStats {
  /** Every request in arrival order; an entry is updated while its request is in flight. */
  requests: ProxyRequestStat[];
  /** Request body bytes of blob uploads: PATCH/PUT/POST with a body under `/blobs/uploads`. */
  bytesUp(): number;
  /** Response body bytes of blob GETs (`/blobs/sha256:...`). */
  bytesDown(): number;
  /** Forgets the requests seen so far. */
  clear(): void;
}

export interface ProxyOptions {
  /** `http://127.0.0.1:PORT` or `https://...` (then `ca` is trusted). */
  target: string;
  ca?: string | Buffer;
  faults?: FaultFn;
  /**
   * Answer an upload's Location as a reference relative to the request's URL with no leading
   * slash (`UUID?_state=…`), as some registries do, instead of the registry's absolute URL.
   */
  relativeUploadLocations?: boolean;
}

export interface RunningProxy {
  /** `http://127.0.0.1:PORT`. */
  url: string;
  /** `127.0.0.1:PORT`, as used in `docker://` names. */
  host: string;
  port: number;
  stats: ProxyStats;
  /** Replaces the fault function (undefined: none) and restarts the per-(method, path) counts and the `times` counts. */
  setFaults(f: FaultFn | undefined): void;
  /** Closes the listener and every connection, stalled ones included. */
  stop(): Promise<void>;
}

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding', 'upgrade']);

function endToEnd(headers: http.IncomingHttpHeaders): http.OutgoingHttpHeaders {
  const out: http.OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(headers)) if (v !== undefined && !HOP_BY_HOP.has(k)) out[k] = v;
  return out;
}

function resetSocket(socket: Socket): void {
  if (socket.destroyed) return;
  if (typeof socket.resetAndDestroy === 'function') socket.resetAndDestroy();
  else socket.destroy();
}

/** Resolves once the socket's pending writes have left the process (or it closed). */
async function flushed(socket: Socket): Promise<void> {
  while (!socket.destroyed && socket.writableLength > 0) await new Promise((r) => setTimeout(r, 5));
  // Give the peer a moment to read what is in flight before an RST could discard it.
  await new Promise((r) => setTimeout(r, 30));
}

export async function startProxy(options: ProxyOptions): Promise<RunningProxy> {
  const target = new URL(options.target);
  const targetOrigin = target.origin;
  const targetHost = target.host;
  const isHttps = target.protocol === 'https:';
  const agent = isHttps ? new https.Agent({ keepAlive: true, ca: options.ca }) : new http.Agent({ keepAlive: true });

  let faultFn = options.faults;
  let counts = new Map<string, number>();
  let used = new Map<string, number>();
  const requests: ProxyRequestStat[] = [];
  let origin = '';

  const pickFault = (info: ProxiedRequest): Fault | undefined => {
    const key = `${info.method} ${info.path}`;
    const n = (counts.get(key) ?? 0) + 1;
    counts.set(key, n);
    const f = faultFn?.(info, n);
    if (!f) return undefined;
    if (f.times !== undefined) {
      const id = JSON.stringify(f);
      const k = used.get(id) ?? 0;
      if (k >= f.times) return undefined;
      used.set(id, k + 1);
    }
    return f;
  };

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse) => {
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const info: ProxiedRequest = { method: req.method ?? 'GET', path: q < 0 ? url : url.slice(0, q), url, headers: req.headers };
    const stat: ProxyRequestStat = { method: info.method, path: info.path, url, status: 0, requestBytes: 0, responseBytes: 0 };
    requests.push(stat);
    req.on('data', (d: Buffer) => (stat.requestBytes += d.length));
    const fault = pickFault(info);
    if (fault) stat.fault = fault.kind;

    if (fault?.kind === 'reset') {
      resetSocket(req.socket);
      return;
    }
    if (fault?.kind === 'status') {
      req.resume(); // drain (and count) the body so the client can read the answer
      const body = fault.body ?? JSON.stringify({ errors: [{ code: 'UNAVAILABLE', message: `injected ${fault.status}`, detail: null }] });
      stat.status = fault.status;
      stat.responseBytes = info.method === 'HEAD' ? 0 : Buffer.byteLength(body);
      res.writeHead(fault.status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...fault.headers });
      res.end(info.method === 'HEAD' ? undefined : body);
      return;
    }
    if (fault?.kind === 'delay') {
      req.pause();
      await new Promise((r) => setTimeout(r, fault.ms));
      if (req.socket.destroyed) return;
    }

    const headers = endToEnd(req.headers);
    headers.host = targetHost;
    const upReq = (isHttps ? https : http).request({
      protocol: target.protocol,
      hostname: target.hostname,
      port: target.port,
      method: info.method,
      path: url,
      headers,
      agent,
    });
    let finished = false;
    res.once('finish', () => (finished = true));
    res.once('close', () => {
      if (!finished) upReq.destroy();
    });
    let cut = false;
    upReq.once('error', (e) => {
      if (cut) return; // we cut the upstream ourselves
      if (res.headersSent) resetSocket(req.socket);
      else {
        const body = JSON.stringify({ errors: [{ code: 'PROXY', message: `upstream: ${e.message}` }] });
        stat.status = 502;
        res.writeHead(502, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }).end(body);
      }
    });
    upReq.once('response', (upRes) => {
      const out = endToEnd(upRes.headers);
      const loc = upRes.headers.location;
      if (typeof loc === 'string' && loc.startsWith(targetOrigin)) out.location = origin + loc.slice(targetOrigin.length);
      if (options.relativeUploadLocations && typeof out.location === 'string' && out.location.includes('/blobs/uploads/')) {
        out.location = out.location.split('/blobs/uploads/')[1]!;
      }
      stat.status = upRes.statusCode ?? 0;
      res.writeHead(upRes.statusCode ?? 502, upRes.statusMessage, out);

      const declared = Number(upRes.headers['content-length']);
      let corruptAt = -1;
      if (fault?.kind === 'corrupt-body') {
        corruptAt = fault.offset ?? 0;
        if (Number.isFinite(declared) && declared > 0) corruptAt = Math.min(corruptAt, declared - 1);
      }
      const cutAt = fault?.kind === 'reset-mid-body' || fault?.kind === 'stall-mid-body' ? Math.max(0, fault.afterBytes) : -1;
      let sent = 0;

      const doCut = async () => {
        cut = true;
        upRes.destroy(); // the registry's side is no longer needed
        res.flushHeaders();
        if (fault?.kind === 'reset-mid-body') {
          await flushed(req.socket);
          resetSocket(req.socket);
        }
        // stall-mid-body: leave the client's connection open; stop() closes it.
      };

      if (cutAt === 0 && info.method !== 'HEAD' && declared !== 0) {
        void doCut();
        return;
      }
      if (fault?.kind === 'slow-body') {
        // A queue drained `bytes` at a time; the registry's side is paused while it is full.
        const queue: Buffer[] = [];
        let queued = 0;
        let ended = false;
        const tick = setInterval(() => {
          let budget = Math.max(1, fault.bytes);
          while (budget > 0 && queue.length) {
            const head = queue[0]!;
            const piece = head.subarray(0, budget);
            if (piece.length === head.length) queue.shift();
            else queue[0] = head.subarray(piece.length);
            queued -= piece.length;
            budget -= piece.length;
            sent += piece.length;
            stat.responseBytes = sent;
            res.write(piece);
          }
          if (queued < 64 * 1024) upRes.resume();
          if (ended && !queue.length) {
            clearInterval(tick);
            res.end();
          }
        }, Math.max(1, fault.everyMs));
        res.once('close', () => clearInterval(tick));
        upRes.on('data', (chunk: Buffer) => {
          queue.push(chunk);
          queued += chunk.length;
          if (queued >= 64 * 1024) upRes.pause();
        });
        upRes.once('end', () => (ended = true));
        upRes.once('error', () => {
          clearInterval(tick);
          resetSocket(req.socket);
        });
        return;
      }
      upRes.on('data', (chunk: Buffer) => {
        if (cut) return;
        let piece = chunk;
        if (corruptAt >= sent && corruptAt < sent + chunk.length) {
          piece = Buffer.from(chunk);
          piece[corruptAt - sent]! ^= 0xff;
        }
        let last = false;
        if (cutAt >= 0 && sent + piece.length > cutAt) {
          piece = piece.subarray(0, cutAt - sent);
          last = true;
        }
        sent += piece.length;
        stat.responseBytes = sent;
        const ok = piece.length ? res.write(piece) : true;
        if (last) void doCut();
        else if (!ok) {
          upRes.pause();
          res.once('drain', () => upRes.resume());
        }
      });
      upRes.once('end', () => {
        if (!cut) res.end();
      });
      upRes.once('error', () => {
        if (!cut) resetSocket(req.socket);
      });
    });
    if (fault?.kind === 'delay') req.resume();
    if (fault?.kind === 'reset-mid-request' || fault?.kind === 'stall-mid-request') {
      const limit = Math.max(0, fault.afterBytes);
      let forwarded = 0;
      const onData = (chunk: Buffer) => {
        if (cut) return;
        const piece = chunk.subarray(0, Math.max(0, limit - forwarded));
        forwarded += piece.length;
        if (piece.length && !upReq.write(piece)) {
          req.pause();
          upReq.once('drain', () => req.resume());
        }
        if (forwarded < limit || piece.length === chunk.length && forwarded === limit) return;
        // The next byte would pass the limit: the upload breaks here.
        cut = true;
        req.off('data', onData);
        upReq.destroy();
        if (fault.kind === 'reset-mid-request') resetSocket(req.socket);
        else req.pause(); // read nothing more; stop() closes the connection
      };
      req.on('data', onData);
      req.once('end', () => {
        if (!cut) upReq.end();
      });
      return;
    }
    req.pipe(upReq);
  };

  const server = http.createServer((req, res) => {
    handle(req, res).catch(() => resetSocket(req.socket));
  });
  // Clients that time out or go away must not crash the test process.
  server.on('clientError', (_e, socket) => socket.destroy());
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  origin = `http://127.0.0.1:${port}`;

  let stopped: Promise<void> | undefined;
  return {
    url: origin,
    host: `127.0.0.1:${port}`,
    port,
    stats: {
      requests,
      bytesUp: () =>
        requests
          .filter((r) => (r.method === 'PATCH' || r.method === 'PUT' || r.method === 'POST') && r.path.includes('/blobs/uploads'))
          .reduce((s, r) => s + r.requestBytes, 0),
      bytesDown: () =>
        requests.filter((r) => r.method === 'GET' && /\/blobs\/[a-z0-9]+:[a-f0-9]+$/.test(r.path)).reduce((s, r) => s + r.responseBytes, 0),
      clear: () => {
        requests.length = 0;
      },
    },
    setFaults: (f) => {
      faultFn = f;
      counts = new Map();
      used = new Map();
    },
    stop: () =>
      (stopped ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
        agent.destroy();
      })),
  };
}
