/**
 * A forward HTTP proxy on loopback, as a CI runner's corporate proxy: CONNECT tunnels (https
 * targets) and absolute-form requests (http targets). It resolves names itself from `hosts`, so a
 * test can name a registry by a host name that resolves nowhere else: a request that reaches the
 * registry went through the proxy. Any other host is refused (502): no traffic leaves loopback.
 */
import http from 'node:http';
import net from 'node:net';

export interface ForwardProxyOptions {
  /** Host name → the address it stands for (127.0.0.1). */
  hosts: Record<string, string>;
  /** `user:password` the proxy demands (407 without it). */
  credentials?: string;
  /** The ports CONNECT may reach (403 to others), as a corporate proxy that tunnels to 443 alone; default: any. */
  connectPorts?: number[];
}

export interface RunningForwardProxy {
  port: number;
  /** `http://127.0.0.1:PORT`. */
  url: string;
  /** What it was asked, in order: `CONNECT host:port`, `GET http://host:port/path`. */
  seen: string[];
  stop(): Promise<void>;
}

export async function startForwardProxy(options: ForwardProxyOptions): Promise<RunningForwardProxy> {
  const seen: string[] = [];
  const sockets = new Set<net.Socket>();
  const allowed = (req: http.IncomingMessage) =>
    !options.credentials || req.headers['proxy-authorization'] === `Basic ${Buffer.from(options.credentials).toString('base64')}`;
  const server = http.createServer((req, res) => {
    seen.push(`${req.method} ${req.url}`);
    if (!allowed(req)) {
      res.writeHead(407, { 'proxy-authenticate': 'Basic realm="proxy"' }).end();
      return;
    }
    let target: URL;
    try {
      target = new URL(req.url ?? '');
    } catch {
      res.writeHead(400).end();
      return;
    }
    const address = options.hosts[target.hostname];
    if (!address || target.protocol !== 'http:') {
      res.writeHead(502).end();
      return;
    }
    const headers = { ...req.headers };
    delete headers['proxy-authorization'];
    const upstream = http.request({ host: address, port: Number(target.port || 80), path: `${target.pathname}${target.search}`, method: req.method, headers }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
    });
    upstream.on('error', () => res.destroy());
    req.pipe(upstream);
  });
  server.on('connect', (req: http.IncomingMessage, client: net.Socket, head: Buffer) => {
    seen.push(`CONNECT ${req.url}`);
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    client.on('error', () => undefined);
    if (!allowed(req)) {
      client.end('HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="proxy"\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    const [host, port] = [(req.url ?? '').replace(/:\d+$/, ''), Number(/:(\d+)$/.exec(req.url ?? '')?.[1] ?? 443)];
    const address = options.hosts[host];
    if (!address) {
      client.end('HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    if (options.connectPorts && !options.connectPorts.includes(port)) {
      client.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    const upstream = net.connect({ host: address, port }, () => {
      client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      if (head.length) upstream.write(head);
      upstream.pipe(client);
      client.pipe(upstream);
    });
    sockets.add(upstream);
    upstream.on('close', () => {
      sockets.delete(upstream);
      client.destroy();
    });
    upstream.on('error', () => client.destroy());
  });
  server.on('connection', (s: net.Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    seen,
    stop: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
