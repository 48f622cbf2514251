/**
 * The bulk GET of blob bodies (transports/registry/bulk-get.ts), against answers a raw server on
 * loopback writes byte by byte: the framings the stock registry never sends (chunked, to the close,
 * headers split across reads, a body cut short), and what a caller does to one (abort it, read it
 * slowly). The stock registry, behind the fault-injecting proxy, drives it in the registry client's
 * tests (resets, stalls, redirects).
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { buffer } from 'node:stream/consumers';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { BulkPool, bulkGet, parseHead } from '../../src/transports/registry/bulk-get.js';
import { Http } from '../../src/transports/registry/http.js';
import { makeTestCA } from '../harness/tls.js';

/** A server that answers each request with `answer` (given its text and the connection), which writes what it likes. */
async function rawServer(
  answer: (request: string, socket: net.Socket) => void | Promise<void>,
): Promise<{ url: string; requests: string[]; connections: () => number; close: () => Promise<void> }> {
  const requests: string[] = [];
  const sockets = new Set<net.Socket>();
  let connections = 0;
  const server = net.createServer((socket) => {
    connections++;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    let text = '';
    socket.on('data', (d) => {
      text += d.toString('latin1');
      for (let end = text.indexOf('\r\n\r\n'); end >= 0; end = text.indexOf('\r\n\r\n')) {
        const request = text.slice(0, end + 4);
        text = text.slice(end + 4);
        requests.push(request);
        void answer(request, socket);
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    connections: () => connections,
    close: () =>
      new Promise((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

const servers: { close: () => Promise<void> }[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

async function serve(answer: Parameters<typeof rawServer>[0]) {
  const s = await rawServer(answer);
  servers.push(s);
  return s;
}

const BLOB = Buffer.from(Array.from({ length: 300_000 }, (_, i) => (i * 7) % 251));

const pools: BulkPool[] = [];
afterEach(() => {
  for (const p of pools.splice(0)) p.close();
});

function get(url: string, extra: Partial<Parameters<typeof bulkGet>[0]> = {}) {
  const pool = new BulkPool();
  pools.push(pool);
  return bulkGet({ url: new URL('/v2/a/blobs/sha256:x', url), headers: { 'user-agent': 'test' }, stallMs: 5_000, connectMs: 5_000, signal: undefined, pool, ...extra });
}

describe('parseHead', () => {
  it('reads the status, the headers in lower case, how the body ends, and whether the connection stays', () => {
    expect(parseHead('HTTP/1.1 200 OK\r\nContent-Length: 12\r\nX-A: 1\r\nx-a: 2')).toEqual({ status: 200, headers: { 'content-length': '12', 'x-a': '1, 2' }, framing: 12, keepAlive: true });
    expect(parseHead('HTTP/1.0 400 Bad Request')).toEqual({ status: 400, headers: {}, framing: Infinity, keepAlive: false });
    expect(parseHead('HTTP/1.1 200 OK\r\nContent-Length: 12\r\nConnection: Close')?.keepAlive).toBe(false);
    expect(parseHead('HTTP/1.0 200 OK\r\nContent-Length: 12')?.keepAlive).toBe(false);
    expect(parseHead('HTTP/1.1 204 No Content')?.framing).toBe(0);
    expect(parseHead('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked')?.framing).toBe('elsewhere');
    expect(parseHead('HTTP/1.1 100 Continue')?.framing).toBe('elsewhere');
  });

  it('refuses what is not an answer: no status line, a header without a name, two lengths that differ', () => {
    expect(parseHead('SSH-2.0-OpenSSH')).toBeUndefined();
    expect(parseHead('HTTP/1.1 200 OK\r\n: x')).toBeUndefined();
    expect(parseHead('HTTP/1.1 200 OK\r\nbad name: x')).toBeUndefined();
    expect(parseHead('HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6')).toBeUndefined();
    expect(parseHead('HTTP/1.1 200 OK\r\nContent-Length: -1')).toBeUndefined();
  });
});

describe('bulkGet', () => {
  it('reads a body of Content-Length bytes whose headers and bytes come in small pieces, and sends the request it was given', async () => {
    const s = await serve(async (_req, socket) => {
      const head = Buffer.from(`HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: ${BLOB.length}\r\n\r\n`);
      const all = Buffer.concat([head, BLOB]);
      for (let i = 0; i < all.length; ) {
        const n = i < head.length + 10 ? 7 : 65_536;
        socket.write(all.subarray(i, i + n));
        i += n;
        if (i < head.length + 20) await sleep(1);
      }
    });
    const res = await get(s.url, { headers: { 'user-agent': 'test', authorization: 'Bearer t0ken', range: 'bytes=0-' } });
    expect(res?.statusCode).toBe(200);
    expect(res?.headers['content-type']).toBe('application/octet-stream');
    expect((await buffer(res!.body)).equals(BLOB)).toBe(true);
    const port = new URL(s.url).port;
    expect(s.requests[0]).toBe(`GET /v2/a/blobs/sha256:x HTTP/1.1\r\nhost: 127.0.0.1:${port}\r\nuser-agent: test\r\nauthorization: Bearer t0ken\r\nrange: bytes=0-\r\n\r\n`);
  });

  it('reads a body without a length to the close of the connection', async () => {
    const s = await serve((_req, socket) => {
      socket.end(Buffer.concat([Buffer.from('HTTP/1.0 200 OK\r\n\r\n'), BLOB]));
    });
    const res = await get(s.url);
    expect((await buffer(res!.body)).equals(BLOB)).toBe(true);
  });

  it('leaves a chunked answer to the usual client (undefined), having read none of its body', async () => {
    const s = await serve((_req, socket) => {
      socket.end('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n');
    });
    expect(await get(s.url)).toBeUndefined();
  });

  it('a body cut short fails with a connection error (ECONNRESET), which the caller resumes', async () => {
    const s = await serve((_req, socket) => {
      socket.end(Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: ${BLOB.length}\r\n\r\n`), BLOB.subarray(0, 1000)]));
    });
    const res = await get(s.url);
    await expect(buffer(res!.body)).rejects.toMatchObject({ code: 'ECONNRESET', message: expect.stringMatching(/closed the connection \d+ bytes before the end/) });
  });

  it('a connection closed before any answer, or an answer that is not HTTP, fails the request', async () => {
    const closed = await serve((_req, socket) => void socket.destroy());
    await expect(get(closed.url)).rejects.toMatchObject({ code: 'ECONNRESET' });
    const garbage = await serve((_req, socket) => void socket.end('SSH-2.0-OpenSSH_9.2\r\n\r\n'));
    await expect(get(garbage.url)).rejects.toThrow(/malformed HTTP answer/);
  });

  it('refuses a header value that would add a header of its own (a token with a line break)', async () => {
    const s = await serve((_req, socket) => void socket.end('HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n'));
    await expect(get(s.url, { headers: { authorization: 'Bearer x\r\nx-evil: 1' } })).rejects.toMatchObject({ code: 'ERR_INVALID_CHAR' });
    expect(s.requests).toEqual([]);
  });

  it('an abort before the answer rejects with its reason; after it, the body fails with an AbortError', async () => {
    const silent = await serve(() => undefined);
    const early = new AbortController();
    const pending = get(silent.url, { signal: early.signal });
    setTimeout(() => early.abort(new Error('stop now')), 20);
    await expect(pending).rejects.toThrow('stop now');

    const slow = await serve((_req, socket) => void socket.write(Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: ${BLOB.length}\r\n\r\n`), BLOB.subarray(0, 10)])));
    const late = new AbortController();
    const res = await get(slow.url, { signal: late.signal });
    setTimeout(() => late.abort(new Error('stop now')), 20);
    await expect(buffer(res!.body)).rejects.toMatchObject({ name: 'AbortError' });

    // A body nobody reads any more (its reader detached on the same abort) is closed without an
    // 'error' nobody listens for, which would end the process, as Node's own answers are.
    const unread = new AbortController();
    const left = await get(slow.url, { signal: unread.signal });
    unread.abort(new Error('stop now'));
    await sleep(20);
    expect(left!.body.destroyed).toBe(true);
  });

  it('a registry that falls silent mid-body is a stall; a reader that takes nothing for a while is not', async () => {
    const silent = await serve((_req, socket) => void socket.write(Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: ${BLOB.length}\r\n\r\n`), BLOB.subarray(0, 10)])));
    const res = await get(silent.url, { stallMs: 100 });
    await expect(buffer(res!.body)).rejects.toMatchObject({ code: 'SMART_HTTP_STALL' });

    const big = Buffer.alloc(16 << 20, 1);
    const steady = await serve((_req, socket) => void socket.end(Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: ${big.length}\r\n\r\n`), big])));
    // A longer stall time here: the server is this process, and on a loaded machine (CI's other
    // test files) its writes of 16 MB can pause for more than 100 ms of their own.
    const paused = await get(steady.url, { stallMs: 1_000 });
    await sleep(3_000); // the socket is paused by then: the reader has not asked
    expect((await buffer(paused!.body)).length).toBe(big.length);
  });

  it('a loop kept busy past the stall time is not a stall: bytes that arrived meanwhile are read before the verdict', async () => {
    // The registry is another process, so that it sends while this one's loop is blocked: the head
    // and 1 KiB at once, the rest 300 ms later.
    const server = spawn(process.execPath, ['-e', `
      const body = Buffer.alloc(1 << 20, 3);
      const s = require('node:net').createServer((c) => {
        c.once('data', () => {
          c.write(Buffer.concat([Buffer.from('HTTP/1.1 200 OK\\r\\nContent-Length: ' + body.length + '\\r\\n\\r\\n'), body.subarray(0, 1024)]));
          setTimeout(() => c.end(body.subarray(1024)), 300);
        });
      });
      s.listen(0, '127.0.0.1', () => console.log(s.address().port));
    `], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      const port = await new Promise<string>((resolve) => server.stdout!.once('data', (d: Buffer) => resolve(d.toString().trim())));
      const res = await get(`http://127.0.0.1:${port}`, { stallMs: 200 });
      let bytes = 0;
      for await (const chunk of res!.body as AsyncIterable<Buffer>) {
        bytes += chunk.length;
        if (bytes !== 1024) continue;
        // All that came is taken; then the loop is kept busy (a large synchronous write, a machine
        // too loaded to run us) past the stall time, while the rest arrives in the kernel.
        const until = Date.now() + 900;
        while (Date.now() < until) {
          // busy
        }
      }
      expect(bytes).toBe(1 << 20);
    } finally {
      server.kill();
    }
  });

  it('Http.close ends a bulk read under way', async () => {
    const s = await serve((_req, socket) => void socket.write(Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: ${BLOB.length}\r\n\r\n`), BLOB.subarray(0, 10)])));
    const http = new Http({ host: new URL(s.url).host, insecure: false, stallTimeoutMs: 5_000 });
    const res = await http.send({ origin: s.url, path: '/v2/a/blobs/sha256:x', method: 'GET', bulk: true }, undefined);
    const read = buffer(res.body);
    await http.close();
    await expect(read).rejects.toMatchObject({ code: 'ECONNRESET' });
  });

  it('over TLS: trusts what it is told to, reads the cleartext into its buffers, refuses an unknown CA', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'bulk-tls-'));
    try {
      const ca = await makeTestCA(dir);
      const server = tls.createServer({ key: await fs.readFile(ca.keyFile), cert: await fs.readFile(ca.certFile), ALPNProtocols: ['http/1.1'] }, (socket) => {
        socket.on('error', () => undefined);
        socket.once('data', () => socket.end(Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: ${BLOB.length}\r\n\r\n`), BLOB])));
      });
      server.on('tlsClientError', () => undefined);
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      servers.push({ close: () => new Promise((r) => server.close(() => r())) });
      const url = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
      const trusted = await get(url, { tls: { secureContext: tls.createSecureContext({ ca: ca.caPem }) } });
      expect((await buffer(trusted!.body)).equals(BLOB)).toBe(true);
      const insecure = await get(url, { tls: { rejectUnauthorized: false } });
      expect((await buffer(insecure!.body)).equals(BLOB)).toBe(true);
      await expect(get(url, { tls: {} })).rejects.toMatchObject({ code: expect.stringMatching(/VERIFY|CERT|SIGNED|ISSUER/) });
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it('keeps a connection whose answer had a length for the next GET to the same place, the body destroyed after its end or not', async () => {
    const answer = Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: ${BLOB.length}\r\n\r\n`), BLOB]);
    const s = await serve((_req, socket) => void socket.write(answer));
    const pool = new BulkPool();
    pools.push(pool);
    const again = () => get(s.url, { pool });
    for (let i = 0; i < 3; i++) {
      const res = await again();
      expect((await buffer(res!.body)).equals(BLOB)).toBe(true);
      res!.body.destroy(); // as the registry client's reader does after every answer
    }
    expect(s.connections()).toBe(1);
    expect(s.requests).toHaveLength(3);
  });

  it('does not keep one the server closes (Connection: close, HTTP/1.0, a body to the close)', async () => {
    for (const head of ['HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc', 'HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nabc', 'HTTP/1.1 200 OK\r\n\r\nabc']) {
      const s = await serve((_req, socket) => void (head.includes('Length') ? socket.write(head) : socket.end(head)));
      const pool = new BulkPool();
      pools.push(pool);
      for (let i = 0; i < 2; i++) expect((await buffer((await get(s.url, { pool }))!.body)).toString()).toBe('abc');
      expect(s.connections()).toBe(2);
    }
  });

  it('a kept connection the server has closed meanwhile: the GET goes on a new one, unseen', async () => {
    // Closed while idle: seen at once, the connection is not offered again.
    const idle = await serve((_req, socket) => {
      socket.write('HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc');
      setTimeout(() => socket.destroy(), 30);
    });
    const pool = new BulkPool();
    pools.push(pool);
    expect((await buffer((await get(idle.url, { pool }))!.body)).toString()).toBe('abc');
    await sleep(60);
    expect((await buffer((await get(idle.url, { pool }))!.body)).toString()).toBe('abc');
    expect(idle.connections()).toBe(2);

    // Closed as the next request arrives (its keep-alive ran out on the way): that request is asked again on a new connection.
    const served = new WeakMap<net.Socket, number>();
    const racing = await serve((_req, socket) => {
      const n = (served.get(socket) ?? 0) + 1;
      served.set(socket, n);
      if (n === 1) socket.write('HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc');
      else socket.destroy();
    });
    const pool2 = new BulkPool();
    pools.push(pool2);
    expect((await buffer((await get(racing.url, { pool: pool2 }))!.body)).toString()).toBe('abc');
    expect((await buffer((await get(racing.url, { pool: pool2 }))!.body)).toString()).toBe('abc');
    expect(racing.connections()).toBe(2);
    expect(racing.requests).toHaveLength(3);
  });
});
