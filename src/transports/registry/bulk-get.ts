/**
 * A GET of a blob's bytes, read on a connection of its own straight into large buffers, past
 * Node's HTTP client: from the registry, or from where it redirects to, over plain HTTP or TLS.
 *
 * Why: Node's client copies every chunk of an answer's body out of the socket's buffer into a new
 * 64 KiB Buffer, and runs each through its parser and two streams. Receiving the bench image's two
 * largest blobs (68 MB) from the stock registry on loopback took 0.09-0.16 s and ~0.15 s of CPU
 * that way, against 0.04-0.06 s and ~0.05 s read into 1 MiB buffers; a whole pull of the bench
 * image into an OCI layout went from 345 to 286 ms (medians of 40 alternated runs, 2 cores; skopeo
 * 326 ms), its CPU from 0.40 to 0.28 s. The 1 MiB buffers pay only on a heap that malloc keeps
 * (retainHeap): otherwise each is a fresh mapping, faulted in page by page, and the pull was slower
 * than Node's own way (401 ms). Without it they stay under glibc's mapping threshold (120 KiB: a
 * pull without the addon 472 -> 452 ms). Over TLS the same pull went from 504 to 416 ms.
 *
 * What it frames: a status line, headers, then a body of Content-Length bytes, or to the close of
 * the connection (asked with `connection: close`: one blob, one connection, as a download tool
 * does; the handshake is a round trip or two, the body megabytes). An answer in chunked encoding,
 * or an interim 1xx, is not framed here: the caller asks again the usual way (undefined). Over
 * TLS the cleartext goes into the same buffers, with the trust of the registry's agent.
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { Socket } from 'node:net';
import { Readable } from 'node:stream';
import type { ConnectionOptions, SecureContext } from 'node:tls';
import { retainHeap } from '../../pipeline/native.js';
import { HTTP_CONNECT_TIMEOUT, HTTP_STALL } from '../../transient.js';

/** Reads go into the free end of a buffer this large, passed on when full: where malloc keeps its heap (retainHeap), */
const LARGE_BUFFER = 1 << 20;
/** else under glibc's 128 KiB threshold, past which each buffer would be a fresh mapping. */
const SMALL_BUFFER = 120 * 1024;
/** A status line and headers longer than this are not an answer worth reading. */
const HEAD_LIMIT = 64 * 1024;

/** The TLS options of every connection to a registry, through Http's agent or not. */
export interface TlsTrust {
  secureContext?: SecureContext;
  rejectUnauthorized?: boolean;
}

/** An answer: its body a byte stream that can be dumped (Http.send's Response, from below its http module). */
export interface BulkAnswer {
  statusCode: number;
  headers: IncomingHttpHeaders;
  body: Readable & { dump(): Promise<void> };
}

export interface BulkGetOptions {
  url: URL;
  /** Lower-case names; values checked here (a token from a token server must not add a header). */
  headers: Record<string, string>;
  /** No byte for this long while the registry has something to send: HTTP_STALL. */
  stallMs: number;
  connectMs: number;
  signal: AbortSignal | undefined;
  /** Told of the socket while it is open (Http.close ends it). */
  track: (socket: Socket, open: boolean) => void;
  /** For an https URL: what the connection trusts (Http's, as its agent's). */
  tls?: TlsTrust;
}

function codedError(message: string, code: string): Error {
  return Object.assign(new Error(message), { code });
}

/**
 * Sends the GET; settles with the answer's status and headers, its body a stream still to be read
 * (one that breaks fails with a coded connection error, as Node's would: transient, so resumed),
 * or undefined for an answer not framed here (sent again the usual way by the caller).
 */
export function bulkGet(options: BulkGetOptions): Promise<BulkAnswer | undefined> {
  const { url, signal } = options;
  let request = `GET ${url.pathname}${url.search} HTTP/1.1\r\nhost: ${url.host}\r\nconnection: close\r\n`;
  for (const [name, value] of Object.entries(options.headers)) {
    if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name) || /[\r\n\0]/.test(value)) return Promise.reject(codedError(`invalid header ${JSON.stringify(name)}`, 'ERR_INVALID_CHAR'));
    request += `${name}: ${value}\r\n`;
  }
  request += '\r\n';
  const size = retainHeap() ? LARGE_BUFFER : SMALL_BUFFER;
  const net = process.getBuiltinModule('node:net');
  const secure = url.protocol === 'https:';
  const host = url.hostname.replace(/^\[|\]$/g, '');
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason instanceof Error ? signal.reason : new Error('aborted'));
    let settled = false;
    let buf = Buffer.allocUnsafe(size);
    /** Bytes of `buf` filled, and where the body bytes not yet passed on start. */
    let used = 0;
    let start = 0;
    /** Body bytes at `start` not yet passed on. */
    let held = 0;
    let head: Buffer | undefined;
    /** Body bytes still to come (Infinity: to the close). */
    let remaining = Infinity;
    let body: BulkBody | undefined;

    const onread = {
      buffer: () => {
        if (used === size) {
          buf = Buffer.allocUnsafe(size);
          used = start = 0;
        }
        return buf.subarray(used);
      },
      callback: (n: number): boolean => {
        used += n;
        let fresh = n;
        if (!body) {
          const read = buf.subarray(used - n, used);
          head = head ? Buffer.concat([head, read]) : read;
          const end = head.indexOf('\r\n\r\n');
          if (end < 0) {
            if (head.length > HEAD_LIMIT) fail(codedError('the answer has no end of headers', 'HPE_HEADER_OVERFLOW'));
            else if (used === size) head = Buffer.from(head); // its buffer is about to be replaced
            return true;
          }
          const parsed = parseHead(head.subarray(0, end).toString('latin1'));
          if (!parsed) return fail(codedError('malformed HTTP answer', 'HPE_INVALID_CONSTANT')), false;
          if (parsed.framing === 'elsewhere') {
            settled = true;
            socket.destroy();
            resolve(undefined);
            return false;
          }
          remaining = parsed.framing;
          fresh = head.length - end - 4;
          start = used - fresh;
          head = undefined;
          body = new BulkBody(socket, size);
          settled = true;
          resolve({ statusCode: parsed.status, headers: parsed.headers, body });
        }
        fresh = Math.min(fresh, remaining);
        remaining -= fresh;
        held += fresh;
        let more = true;
        // Passed on when the buffer is full, else once this turn of the event loop has read what there was.
        if (used === size || remaining === 0) more = pass();
        else if (held > 0) body.later(pass);
        if (remaining === 0) {
          body.push(null);
          done();
          return false;
        }
        if (!more) body.paused = true; // false: Node stops reading the socket until resumed
        return more;
      },
    };
    // TLS: the cleartext is read into the same buffers; HTTP/1.1 asked for by ALPN, the name sent by SNI (not for an address).
    const socket: Socket = secure
      ? process.getBuiltinModule('node:tls').connect({
          host,
          port: Number(url.port || 443),
          ...(net.isIP(host) ? {} : { servername: host }),
          ALPNProtocols: ['http/1.1'],
          ...options.tls,
          // Documented for tls.connect as for net's; @types/node lists it for net's only.
          ...({ onread } as ConnectionOptions),
        })
      : net.connect({ host, port: Number(url.port || 80), onread });
    options.track(socket, true);

    const pass = (): boolean => {
      if (held === 0 || !body) return true;
      const chunk = buf.subarray(start, start + held);
      start += held;
      held = 0;
      return body.push(chunk);
    };
    const done = () => {
      signal?.removeEventListener('abort', onAbort);
      socket.destroy();
    };
    /** Fails the request, or once answered the body. */
    const fail = (e: Error) => {
      if (!settled) {
        settled = true;
        reject(e);
      } else body?.destroy(e);
      done();
    };
    const onAbort = () => {
      if (!settled) fail(signal!.reason instanceof Error ? signal!.reason : new Error('aborted'));
      else fail(Object.assign(new Error('the operation was aborted', { cause: signal!.reason }), { name: 'AbortError', code: 'ABORT_ERR' }));
    };
    signal?.addEventListener('abort', onAbort, { once: true });

    const connectTimer = setTimeout(() => fail(codedError('connect timed out', HTTP_CONNECT_TIMEOUT)), options.connectMs);
    socket.once(secure ? 'secureConnect' : 'connect', () => {
      clearTimeout(connectTimer);
      socket.write(request);
    });
    // A stall is the registry's: quiet while our reader has not taken what came is looked at again a period later.
    socket.setTimeout(options.stallMs);
    socket.on('timeout', () => {
      if (body && (body.readableLength > 0 || body.paused)) socket.setTimeout(options.stallMs);
      else fail(codedError(`no data for ${Math.round(options.stallMs / 1000)} s`, HTTP_STALL));
    });
    socket.on('error', (e) => fail(e));
    socket.on('close', () => {
      clearTimeout(connectTimer);
      options.track(socket, false);
      if (!settled) fail(codedError('the registry closed the connection before answering', 'ECONNRESET'));
      else if (body && !body.destroyed && remaining !== 0) {
        if (remaining === Infinity) {
          pass();
          body.push(null);
        } else body.destroy(codedError(`the registry closed the connection ${remaining} bytes before the end of the body`, 'ECONNRESET'));
      }
      signal?.removeEventListener('abort', onAbort);
    });
  });
}

/**
 * The status and headers (names in lower case, repeated ones joined as Node joins them), and how
 * the body ends: after so many bytes, at the close (Infinity), or framed in a way not read here.
 */
export function parseHead(text: string): { status: number; headers: IncomingHttpHeaders; framing: number | 'elsewhere' } | undefined {
  const lines = text.split('\r\n');
  const m = /^HTTP\/1\.[01] (\d{3})(?: |$)/.exec(lines[0] ?? '');
  if (!m) return undefined;
  const headers: Record<string, string> = {};
  for (const line of lines.slice(1)) {
    const i = line.indexOf(':');
    if (i <= 0) return undefined;
    const name = line.slice(0, i).toLowerCase();
    if (!/^[!#$%&'*+.^_`|~0-9a-z-]+$/.test(name)) return undefined;
    const value = line.slice(i + 1).trim();
    headers[name] = headers[name] !== undefined ? `${headers[name]}, ${value}` : value;
  }
  const status = Number(m[1]);
  if (status < 200 || headers['transfer-encoding'] !== undefined) return { status, headers, framing: 'elsewhere' };
  const length = headers['content-length'];
  if (length === undefined) return { status, headers, framing: status === 204 || status === 304 ? 0 : Infinity };
  // Two lengths that differ, or one that is not a number, frame nothing (Node's parser refuses them too).
  if (!/^\d{1,15}$/.test(length)) return undefined;
  return { status, headers, framing: Number(length) };
}

/** The body: chunks pushed by the socket's reads; the socket paused while the reader has enough, resumed when it asks. */
class BulkBody extends Readable {
  private scheduled = false;
  /** The socket is not read until the reader asks for more. */
  paused = false;

  constructor(
    private readonly socket: Socket,
    bufferSize: number,
  ) {
    super({ highWaterMark: 4 * bufferSize });
  }

  /** `pass` once the reads of this turn of the event loop are in (one chunk for them all). */
  later(pass: () => boolean): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      if (!this.destroyed && !pass()) {
        this.paused = true;
        this.socket.pause();
      }
    });
  }

  override _read(): void {
    if (!this.paused) return;
    this.paused = false;
    this.socket.resume();
  }

  override _destroy(e: Error | null, cb: (e?: Error | null) => void): void {
    this.socket.destroy();
    // As Node's IncomingMessage does: the error is told to whoever listens for it, and to nobody
    // else (not thrown as an unhandled 'error'): a body whose reader let go on the same abort that
    // ends it (retry.ts) has nobody left to tell, and the run reports the cause itself.
    cb(this.listenerCount('error') > 0 ? e : null);
  }

  /** What is left is not read: the connection is one of its own, closed. */
  dump(): Promise<void> {
    this.destroy();
    return Promise.resolve();
  }
}
