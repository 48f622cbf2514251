/**
 * A GET of a blob's bytes, read straight into large buffers past Node's HTTP client, on
 * connections of its own: to the registry, or to where it redirects, over plain HTTP or TLS.
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
 * the connection. An answer in chunked encoding, or an interim 1xx, is not framed here: the caller
 * asks again the usual way (undefined). A connection whose answer was framed by its length, and
 * that the server keeps open, is kept for the next GET to the same place (BulkPool), as Node's
 * agent keeps its own: an image of many layers from a registry far away pays a handshake per
 * connection, not per blob. One reused that turns out closed before any byte of its answer is
 * asked again on a new one. Over TLS the cleartext goes into the same buffers, with the trust of
 * the registry's agent.
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { Socket } from 'node:net';
import { Readable } from 'node:stream';
import type { ConnectionOptions, SecureContext } from 'node:tls';
import { retainHeap } from '../../pipeline/native.js';
import { abortError, abortReason, afterQuietTurn, closedError, codedError, connectTimeoutError, stallError } from './connection-errors.js';

/** Reads go into the free end of a buffer this large, passed on when full: where malloc keeps its heap (retainHeap), */
const LARGE_BUFFER = 1 << 20;
/** else under glibc's 128 KiB threshold, past which each buffer would be a fresh mapping. */
const SMALL_BUFFER = 120 * 1024;
/** A status line and headers longer than this are not an answer worth reading. */
const HEAD_LIMIT = 64 * 1024;
/** An idle connection is closed after this long (and never holds the process open). */
const IDLE_MS = 5_000;

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
  /** Where connections come from and go back to (Http's: Http.close ends them). */
  pool: BulkPool;
  /** For an https URL: what the connection trusts (Http's, as its agent's). */
  tls?: TlsTrust;
}

/**
 * Sends the GET; settles with the answer's status and headers, its body a stream still to be read
 * (one that breaks fails with a coded connection error, as Node's would: transient, so resumed),
 * or undefined for an answer not framed here (sent again the usual way by the caller).
 */
export async function bulkGet(options: BulkGetOptions): Promise<BulkAnswer | undefined> {
  const { url } = options;
  let request = `GET ${url.pathname}${url.search} HTTP/1.1\r\nhost: ${url.host}\r\n`;
  for (const [name, value] of Object.entries(options.headers)) {
    if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name) || /[\r\n\0]/.test(value)) throw codedError(`invalid header ${JSON.stringify(name)}`, 'ERR_INVALID_CHAR');
    request += `${name}: ${value}\r\n`;
  }
  request += '\r\n';
  options.signal?.throwIfAborted();
  const idle = options.pool.take(url.origin);
  if (idle) {
    try {
      return await idle.exchange(request, options);
    } catch (e) {
      // Closed by the server while idle (its keep-alive timed out): asked again on a new connection.
      if (!(e instanceof StaleConnection)) throw e;
    }
  }
  return options.pool.connect(url, options).exchange(request, options);
}

/** A kept connection found closed before any byte of its answer. */
class StaleConnection extends Error {}

/** The bulk connections of one Http: idle ones by origin, reused for the next GET there; all of them ended by close. */
export class BulkPool {
  private readonly idle = new Map<string, BulkConnection[]>();
  private readonly all = new Set<BulkConnection>();
  private closed = false;

  /** An idle connection to `origin`, if one is still open. */
  take(origin: string): BulkConnection | undefined {
    const list = this.idle.get(origin);
    while (list?.length) {
      const c = list.pop()!;
      if (c.open) return c;
    }
    return undefined;
  }

  connect(url: URL, options: Pick<BulkGetOptions, 'connectMs' | 'tls'>): BulkConnection {
    if (this.closed) throw closedError();
    const c = new BulkConnection(url, options, this);
    this.all.add(c);
    return c;
  }

  /** A connection done with its answer: kept when it can be reused, else ended. */
  release(c: BulkConnection, reusable: boolean): void {
    if (this.closed || !reusable) {
      c.end();
      return;
    }
    const list = this.idle.get(c.origin) ?? [];
    list.push(c);
    this.idle.set(c.origin, list);
    c.rest();
  }

  forget(c: BulkConnection): void {
    this.all.delete(c);
    const list = this.idle.get(c.origin);
    const i = list?.indexOf(c) ?? -1;
    if (i >= 0) list!.splice(i, 1);
  }

  close(): void {
    this.closed = true;
    for (const c of this.all) c.end();
    this.idle.clear();
  }
}

/** The state of the answer being read on a connection. */
interface Exchange {
  resolve: (answer: BulkAnswer | undefined) => void;
  reject: (e: Error) => void;
  settled: boolean;
  /** Any byte of the answer seen (a reused connection that closes before is stale, not failed). */
  answered: boolean;
  head: Buffer | undefined;
  /** Body bytes still to come (Infinity: to the close). */
  remaining: number;
  /** The connection may carry another answer after this one. */
  keepAlive: boolean;
  body: BulkBody | undefined;
  signal: AbortSignal | undefined;
  onAbort: () => void;
  stallMs: number;
}

/** One connection, reading every answer on it into large buffers (see the top of this file). */
class BulkConnection {
  readonly origin: string;
  private readonly socket: Socket;
  private readonly size: number;
  private buf: Buffer;
  /** Bytes of `buf` filled, where the body bytes not yet passed on start, and how many there are. */
  private used = 0;
  private start = 0;
  private held = 0;
  private connected = false;
  /** Sent once the connection is up. */
  private pending = '';
  /** It has been idle in the pool. */
  private reused = false;
  private current: Exchange | undefined;
  private connectTimer: NodeJS.Timeout | undefined;

  constructor(
    url: URL,
    options: Pick<BulkGetOptions, 'connectMs' | 'tls'>,
    private readonly pool: BulkPool,
  ) {
    this.origin = url.origin;
    this.size = retainHeap() ? LARGE_BUFFER : SMALL_BUFFER;
    this.buf = Buffer.allocUnsafe(this.size);
    const onread = { buffer: () => this.nextBuffer(), callback: (n: number) => this.onBytes(n) };
    const host = url.hostname.replace(/^\[|\]$/g, '');
    const net = process.getBuiltinModule('node:net');
    // TLS: the cleartext is read into the same buffers; HTTP/1.1 asked for by ALPN, the name sent by SNI (not for an address).
    this.socket =
      url.protocol === 'https:'
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
    this.connectTimer = setTimeout(() => this.fail(connectTimeoutError()), options.connectMs);
    this.socket.once(url.protocol === 'https:' ? 'secureConnect' : 'connect', () => {
      clearTimeout(this.connectTimer);
      this.connected = true;
      if (this.current) this.socket.write(this.pending);
    });
    this.socket.on('timeout', () => this.onQuiet());
    this.socket.on('error', (e) => this.fail(e, true));
    this.socket.on('close', () => this.onClose());
  }

  get open(): boolean {
    return !this.socket.destroyed;
  }

  /** Sends `request` and reads its answer (see bulkGet). */
  exchange(request: string, options: Pick<BulkGetOptions, 'signal' | 'stallMs'>): Promise<BulkAnswer | undefined> {
    const { signal } = options;
    return new Promise((resolve, reject) => {
      const x: Exchange = {
        resolve,
        reject,
        settled: false,
        answered: false,
        head: undefined,
        remaining: Infinity,
        keepAlive: false,
        body: undefined,
        signal,
        stallMs: options.stallMs,
        onAbort: () => {
          if (!x.settled) this.fail(abortReason(signal!));
          else this.fail(abortError(signal!));
        },
      };
      this.current = x;
      this.start = this.used;
      this.held = 0;
      signal?.addEventListener('abort', x.onAbort, { once: true });
      this.socket.ref();
      this.socket.setTimeout(options.stallMs);
      if (this.connected) this.socket.write(request);
      else this.pending = request;
    });
  }

  private nextBuffer(): Buffer {
    if (this.used === this.size) {
      this.buf = Buffer.allocUnsafe(this.size);
      this.used = this.start = 0;
    }
    return this.buf.subarray(this.used);
  }

  private onBytes(n: number): boolean {
    this.used += n;
    const x = this.current;
    if (!x) {
      // Bytes nobody asked for (on an idle connection): not one to send another request on.
      this.end();
      return false;
    }
    x.answered = true;
    let fresh = n;
    if (!x.body) {
      const read = this.buf.subarray(this.used - n, this.used);
      x.head = x.head ? Buffer.concat([x.head, read]) : read;
      const end = x.head.indexOf('\r\n\r\n');
      if (end < 0) {
        if (x.head.length > HEAD_LIMIT) this.fail(codedError('the answer has no end of headers', 'HPE_HEADER_OVERFLOW'));
        else if (this.used === this.size) x.head = Buffer.from(x.head); // its buffer is about to be replaced
        return true;
      }
      const parsed = parseHead(x.head.subarray(0, end).toString('latin1'));
      if (!parsed) {
        this.fail(codedError('malformed HTTP answer', 'HPE_INVALID_CONSTANT'));
        return false;
      }
      if (parsed.framing === 'elsewhere') {
        this.done(x);
        this.end();
        x.resolve(undefined);
        return false;
      }
      x.remaining = parsed.framing;
      x.keepAlive = parsed.keepAlive;
      fresh = x.head.length - end - 4;
      this.start = this.used - fresh;
      x.head = undefined;
      x.body = new BulkBody(this.socket, this.size);
      x.settled = true;
      x.resolve({ statusCode: parsed.status, headers: parsed.headers, body: x.body });
    }
    const body = x.body;
    if (fresh > x.remaining) x.keepAlive = false; // more than the answer: not a connection to trust again
    fresh = Math.min(fresh, x.remaining);
    x.remaining -= fresh;
    this.held += fresh;
    let more = true;
    // Passed on when the buffer is full, else once this turn of the event loop has read what there was.
    if (this.used === this.size || x.remaining === 0) more = this.pass(body);
    else if (this.held > 0) body.later(() => this.pass(body));
    if (x.remaining === 0) {
      body.complete = true;
      body.paused = false;
      body.push(null);
      this.done(x);
      this.pool.release(this, x.keepAlive);
      // Read on while idle: a close by the server is seen at once.
      return this.open;
    }
    if (!more) body.paused = true; // false: Node stops reading the socket until resumed
    return more;
  }

  /** Passes the held body bytes on; false when the reader has enough. */
  private pass(body: BulkBody): boolean {
    if (this.held === 0 || this.current?.body !== body) return true;
    const chunk = this.buf.subarray(this.start, this.start + this.held);
    this.start += this.held;
    this.held = 0;
    return body.push(chunk);
  }

  /** The exchange no longer needs the connection's watch. */
  private done(x: Exchange): void {
    x.signal?.removeEventListener('abort', x.onAbort);
    if (this.current === x) this.current = undefined;
  }

  /** Idle in the pool: unreferenced (the process may end), closed after a while. */
  rest(): void {
    this.reused = true;
    this.socket.unref();
    this.socket.setTimeout(IDLE_MS);
  }

  end(): void {
    this.socket.destroy();
  }

  /**
   * No byte for a stall period: the registry's stall, unless our reader is the slow one; idle,
   * closed. The verdict waits one turn of the event loop (afterQuietTurn): bytes may be waiting.
   */
  private onQuiet(): void {
    const x = this.current;
    if (!x) return this.end();
    if (x.body && (x.body.readableLength > 0 || x.body.paused)) this.socket.setTimeout(x.stallMs);
    else afterQuietTurn(this.socket, () => this.current === x && this.fail(stallError(x.stallMs)));
  }

  /**
   * Fails the exchange under way (the request, or once answered its body) and ends the connection.
   * `lost`: the connection broke; a kept one that broke before any byte of its answer is stale.
   */
  private fail(e: Error, lost = false): void {
    const x = this.current;
    this.end();
    if (!x) return;
    this.done(x);
    if (!x.settled) {
      x.settled = true;
      x.reject(lost && this.reused && !x.answered ? new StaleConnection(e.message) : e);
    } else x.body?.destroy(e);
  }

  private onClose(): void {
    clearTimeout(this.connectTimer);
    this.pool.forget(this);
    const x = this.current;
    if (!x) return;
    if (!x.settled) return this.fail(codedError('the registry closed the connection before answering', 'ECONNRESET'), true);
    const body = x.body!;
    if (!body.destroyed) {
      if (x.remaining === Infinity) {
        this.pass(body);
        body.push(null);
      } else body.destroy(codedError(`the registry closed the connection ${x.remaining} bytes before the end of the body`, 'ECONNRESET'));
    }
    this.done(x);
  }
}

/**
 * The status and headers (names in lower case, repeated ones joined as Node joins them), how the
 * body ends (after so many bytes, at the close: Infinity, or framed in a way not read here), and
 * whether the connection may carry another answer (HTTP/1.1 that does not say `close`).
 */
export function parseHead(text: string): { status: number; headers: IncomingHttpHeaders; framing: number | 'elsewhere'; keepAlive: boolean } | undefined {
  const lines = text.split('\r\n');
  const m = /^HTTP\/1\.([01]) (\d{3})(?: |$)/.exec(lines[0] ?? '');
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
  const status = Number(m[2]);
  const keepAlive = m[1] === '1' && !/(?:^|,)\s*close\s*(?:,|$)/i.test(headers.connection ?? '');
  if (status < 200 || headers['transfer-encoding'] !== undefined) return { status, headers, framing: 'elsewhere', keepAlive: false };
  const length = headers['content-length'];
  if (length === undefined) return status === 204 || status === 304 ? { status, headers, framing: 0, keepAlive } : { status, headers, framing: Infinity, keepAlive: false };
  // Two lengths that differ, or one that is not a number, frame nothing (Node's parser refuses them too).
  if (!/^\d{1,15}$/.test(length)) return undefined;
  return { status, headers, framing: Number(length), keepAlive };
}

/** The body: chunks pushed by the socket's reads; the socket paused while the reader has enough, resumed when it asks. */
class BulkBody extends Readable {
  private scheduled = false;
  /** The socket is not read until the reader asks for more. */
  paused = false;
  /** The whole answer is pushed: the connection is no longer this body's (destroying it leaves the connection to the pool). */
  complete = false;

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
    // Before the whole answer came, the connection goes with it (the rest is not read); after, it is the pool's.
    if (!this.complete) this.socket.destroy();
    // As Node's IncomingMessage does: the error is told to whoever listens for it, and to nobody
    // else (not thrown as an unhandled 'error'): a body whose reader let go on the same abort that
    // ends it (retry.ts) has nobody left to tell, and the run reports the cause itself.
    cb(this.listenerCount('error') > 0 ? e : null);
  }

  /** What is left is not read: the connection is closed (unless the answer was whole: it is the pool's). */
  dump(): Promise<void> {
    this.destroy();
    return Promise.resolve();
  }
}
