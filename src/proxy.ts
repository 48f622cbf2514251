/**
 * HTTP proxies, read from the environment as Go's net/http reads it, so that `smart` reaches a
 * registry (and S3) wherever skopeo, crane and the Docker daemon on the same machine do (a CI runner behind
 * a corporate proxy sets these for all of them): HTTPS_PROXY (or https_proxy) for https targets,
 * HTTP_PROXY (or http_proxy) for http ones, NO_PROXY (or no_proxy) for the hosts to reach directly.
 * localhost and loopback addresses are never proxied.
 *
 * An https target is reached through a CONNECT tunnel, TLS end to end (the proxy sees the name,
 * not the traffic); an http one is asked of the proxy in absolute form (`GET http://host/path`),
 * as Go does (many proxies refuse CONNECT to ports other than 443). `http://user:pass@proxy:3128`
 * sends the credentials as Proxy-Authorization; they never appear in a message (`shown`).
 */
import { isIP, type Socket } from 'node:net';
import { SmartError } from './errors.js';
import { isLoopbackHost } from './loopback.js';
import { HTTP_CONNECT_TIMEOUT, codedError } from './transient.js';

export interface ProxyRoute {
  /** The proxy's `host:port`. */
  host: string;
  port: number;
  /** The proxy as messages name it: `http://host:port`, never its credentials. */
  shown: string;
  /** `Basic …` when the proxy URL holds credentials. */
  authorization?: string;
}

/** The first set variable of `names` (Go reads the upper-case name first). */
function envAny(env: NodeJS.ProcessEnv, ...names: string[]): string | undefined {
  for (const n of names) {
    const v = env[n];
    if (v !== undefined && v !== '') return v;
  }
  return undefined;
}

/** A proxy URL as the variable holds it (`host:port` alone means http://). */
function parseProxy(raw: string, variable: string): ProxyRoute {
  let url: URL;
  try {
    url = new URL(/^[a-z][a-z0-9+.-]*:\/\//i.test(raw) ? raw : `http://${raw}`);
  } catch {
    throw new SmartError('USAGE', `${variable} is not a proxy URL`, { input: variable, hint: 'write it as http://HOST:PORT' });
  }
  if (url.protocol !== 'http:') {
    throw new SmartError('UNSUPPORTED', `${variable}: a ${url.protocol.slice(0, -1)} proxy is not supported`, { input: variable, hint: 'use an HTTP proxy (http://HOST:PORT)' });
  }
  const port = Number(url.port || 80);
  const host = url.hostname.replace(/^\[|\]$/g, '');
  const user = decodeURIComponent(url.username);
  const authorization = url.username || url.password ? `Basic ${Buffer.from(`${user}:${decodeURIComponent(url.password)}`).toString('base64')}` : undefined;
  return { host, port, shown: `http://${url.host}`, ...(authorization ? { authorization } : {}) };
}

/** An IPv4 address as a number; undefined for anything else. */
function ipv4(host: string): number | undefined {
  if (isIP(host) !== 4) return undefined;
  return host.split('.').reduce((n, part) => n * 256 + Number(part), 0);
}

/** Whether NO_PROXY's entries (comma or space separated) exclude `host` (lower case, no brackets) on `port`. */
export function bypassesProxy(noProxy: string, host: string, port: string): boolean {
  for (let entry of noProxy.toLowerCase().split(/[\s,]+/)) {
    if (!entry) continue;
    if (entry === '*') return true;
    // A CIDR range of IPv4 addresses.
    const cidr = /^(\d+\.\d+\.\d+\.\d+)\/(\d+)$/.exec(entry);
    if (cidr) {
      const [base, bits] = [ipv4(cidr[1]!), Number(cidr[2])];
      const addr = ipv4(host);
      if (base !== undefined && addr !== undefined && bits <= 32) {
        const mask = bits === 0 ? 0 : (~0 << (32 - bits)) >>> 0;
        if (((base & mask) >>> 0) === ((addr & mask) >>> 0)) return true;
      }
      continue;
    }
    // `host:port` applies to that port only (an IPv6 address is written in brackets).
    let entryPort = '';
    const withPort = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(entry);
    if (withPort) [entry, entryPort] = [withPort[1]!, withPort[2]!];
    entry = entry.replace(/^\[|\]$/g, '');
    if (entryPort && entryPort !== port) continue;
    if (isIP(entry)) {
      if (entry === host) return true;
      continue;
    }
    // `example.com` is the domain and its subdomains; `.example.com` and `*.example.com` the subdomains only.
    const subdomainsOnly = entry.startsWith('.') || entry.startsWith('*.');
    const domain = entry.replace(/^\*?\./, '');
    if (host.endsWith(`.${domain}`) || (!subdomainsOnly && host === domain)) return true;
  }
  return false;
}

/** The proxy a connection to `target` goes through, or undefined for a direct connection. */
export function proxyFor(target: URL, env: NodeJS.ProcessEnv = process.env): ProxyRoute | undefined {
  const https = target.protocol === 'https:';
  const names = https ? ['HTTPS_PROXY', 'https_proxy'] : ['HTTP_PROXY', 'http_proxy'];
  const raw = envAny(env, ...names);
  if (!raw) return undefined;
  const host = target.hostname.toLowerCase().replace(/^\[|\]$/g, '');
  if (isLoopbackHost(host)) return undefined;
  const port = target.port || (https ? '443' : '80');
  const noProxy = envAny(env, 'NO_PROXY', 'no_proxy');
  if (noProxy && bypassesProxy(noProxy, host, port)) return undefined;
  return parseProxy(raw, envAny(env, names[0]!) !== undefined ? names[0]! : names[1]!);
}

/** Whether `e` (or the error it wraps) is a connection that failed at the proxy, before it reached the server. */
export function isAtProxy(e: unknown): boolean {
  for (let c = e, depth = 0; c && depth < 4; c = (c as Error).cause, depth++) {
    if ((c as { atProxy?: unknown }).atProxy === true) return true;
  }
  return false;
}

/** What a proxy answered to CONNECT, as the error a connection failure is (it names the proxy). */
function refusal(proxy: ProxyRoute, target: string, statusLine: string): Error {
  const hint = / 407 /.test(statusLine) ? ' (the proxy wants credentials: http://USER:PASSWORD@HOST:PORT in the variable)' : '';
  return codedError(`the proxy ${proxy.shown} refused CONNECT ${target}: ${statusLine}${hint}`, 'EPROXY');
}

/**
 * A TCP connection to `host:port` through the proxy's CONNECT tunnel: the socket once the proxy
 * answered 200, ready for TLS. Fails with the proxy's answer, or the connection's error naming the
 * proxy; after `connectMs` with an HTTP_CONNECT_TIMEOUT error naming the proxy.
 */
function connectThrough(proxy: ProxyRoute, host: string, port: number, connectMs: number): Promise<Socket> {
  const target = `${host.includes(':') ? `[${host}]` : host}:${port}`;
  const net = process.getBuiltinModule('node:net');
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: proxy.host, port: proxy.port });
    let head = Buffer.alloc(0);
    // Accepted and silent: the proxy is named, not the server it was asked for (never reached).
    const timer = setTimeout(
      () => fail(codedError(`the proxy ${proxy.shown} did not answer CONNECT ${target} in ${Number((connectMs / 1000).toFixed(3))} s`, HTTP_CONNECT_TIMEOUT)),
      connectMs,
    );
    const done = () => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('error', onError);
      socket.off('close', onClose);
    };
    const fail = (e: Error) => {
      done();
      socket.destroy();
      // Marked: the connection failed at the proxy, before it reached the server (isAtProxy).
      reject(Object.assign(e, { atProxy: true }));
    };
    const onError = (e: NodeJS.ErrnoException) => {
      // The code kept (ECONNREFUSED is unreachable, ECONNRESET transient), the proxy named.
      fail(Object.assign(new Error(`through the proxy ${proxy.shown}: ${e.message}`), { code: e.code }));
    };
    const onClose = () => fail(codedError(`the proxy ${proxy.shown} closed the connection before answering CONNECT ${target}`, 'ECONNRESET'));
    const onData = (chunk: Buffer) => {
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) {
        if (head.length > 16 * 1024) fail(codedError(`the proxy ${proxy.shown} sent an answer to CONNECT ${target} without an end`, 'EPROXY'));
        return;
      }
      const statusLine = head.subarray(0, head.indexOf('\r\n')).toString('latin1');
      if (!/^HTTP\/1\.[01] 2\d\d/.test(statusLine)) return fail(refusal(proxy, target, statusLine.slice(0, 200)));
      done();
      // Bytes after the answer are the target's (none, before we speak first; kept all the same).
      const rest = head.subarray(end + 4);
      if (rest.length) socket.unshift(rest);
      resolve(socket);
    };
    socket.on('data', onData);
    socket.once('error', onError);
    socket.once('close', onClose);
    socket.once('connect', () => {
      const auth = proxy.authorization ? `Proxy-Authorization: ${proxy.authorization}\r\n` : '';
      socket.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n${auth}\r\n`);
    });
  });
}

/** Whether the environment names any proxy (then clients that build their own requests get routed agents). */
export function proxyConfigured(env: NodeJS.ProcessEnv = process.env): boolean {
  return envAny(env, 'HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy') !== undefined;
}

type Done = (e: Error | null, socket?: import('node:stream').Duplex) => void;
type Target = { host: string; port: number | string };

const route = (scheme: 'http' | 'https', o: Target) => proxyFor(new URL(`${scheme}://${o.host.includes(':') ? `[${o.host}]` : o.host}:${o.port}`));

/**
 * An https.Agent whose every connection goes through the proxy the environment names for its host
 * (proxyFor), TLS end to end over the CONNECT tunnel and the certificate checked against the
 * host's name, or straight (as https.Agent itself connects) where none applies.
 */
export function routedHttpsAgent(options: import('node:https').AgentOptions & { connectMs: number }): import('node:https').Agent {
  const https = process.getBuiltinModule('node:https');
  return new (class extends https.Agent {
    override createConnection(o: Target & import('node:tls').ConnectionOptions, done: Done) {
      const proxy = route('https', o);
      if (!proxy) return super.createConnection(o, done);
      connectThrough(proxy, o.host, Number(o.port), options.connectMs).then(
        (socket) => done(null, process.getBuiltinModule('node:tls').connect({ ...o, socket })),
        (e: Error) => done(e),
      );
      return undefined;
    }
  })(options);
}

/**
 * The same for plain HTTP, for a client that writes its requests itself in origin form (the S3
 * SDK): proxied connections go through a CONNECT tunnel too. (The registry client asks a proxy for
 * plain HTTP in absolute form instead, as Go does: http.ts.)
 */
export function routedHttpAgent(options: import('node:http').AgentOptions & { connectMs: number }): import('node:http').Agent {
  const http = process.getBuiltinModule('node:http');
  return new (class extends http.Agent {
    override createConnection(o: Target & import('node:net').NetConnectOpts, done: Done) {
      const proxy = route('http', o);
      if (!proxy) return super.createConnection(o, done);
      connectThrough(proxy, o.host, Number(o.port), options.connectMs).then((socket) => done(null, socket), (e: Error) => done(e));
      return undefined;
    }
  })(options);
}
