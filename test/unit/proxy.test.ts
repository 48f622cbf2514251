/** Which connections go through a proxy, read from the environment as Go's net/http reads it. */
import { describe, expect, it } from 'vitest';
import { bypassesProxy, proxyFor, routedHttpsAgent } from '../../src/proxy.js';
import { isLoopback } from '../../src/transports/registry/http.js';

describe('proxyFor', () => {
  const env = { HTTPS_PROXY: 'http://u:p%40ss@proxy.corp:3128', HTTP_PROXY: 'proxy.corp:8080' };

  it('takes HTTPS_PROXY for https, HTTP_PROXY for http (a bare host:port is http://), upper case first', () => {
    expect(proxyFor(new URL('https://registry.example.com/v2/'), env)).toEqual({ host: 'proxy.corp', port: 3128, shown: 'http://proxy.corp:3128', authorization: `Basic ${Buffer.from('u:p@ss').toString('base64')}` });
    expect(proxyFor(new URL('http://registry.example.com:5000/v2/'), env)).toEqual({ host: 'proxy.corp', port: 8080, shown: 'http://proxy.corp:8080' });
    expect(proxyFor(new URL('https://r.example.com/'), { https_proxy: 'http://lower:1', HTTPS_PROXY: 'http://upper:2' })?.host).toBe('upper');
    expect(proxyFor(new URL('https://r.example.com/'), { https_proxy: 'http://lower:1' })?.host).toBe('lower');
    expect(proxyFor(new URL('https://r.example.com/'), { HTTP_PROXY: 'http://p:1' })).toBeUndefined();
    expect(proxyFor(new URL('https://r.example.com/'), {})).toBeUndefined();
  });

  it('never proxies localhost nor loopback addresses', () => {
    for (const u of ['https://localhost:5000/', 'https://127.0.0.1:5000/', 'https://127.8.9.10/', 'https://[::1]:5000/', 'https://x.localhost/', 'https://[0:0:0:0:0:0:0:1]:5000/', 'https://[::ffff:127.0.0.1]/']) {
      expect(proxyFor(new URL(u), env), u).toBeUndefined();
    }
  });

  it('takes every spelling of a loopback registry for loopback (plain HTTP allowed), and nothing else', () => {
    for (const host of ['localhost:5000', '127.0.0.1', '127.8.9.10:1', '[::1]:5000', '[0:0:0:0:0:0:0:1]:5000', '[::ffff:127.0.0.1]:6201', '[::FFFF:7f00:1]', 'x.localhost']) expect(isLoopback(host), host).toBe(true);
    for (const host of ['10.0.0.1:5000', '[::ffff:10.0.0.1]:5000', '[::2]', 'localhost.example.com', '127.0.0.1.nip.io', '[fe80::1]']) expect(isLoopback(host), host).toBe(false);
  });

  it('names the proxy without its credentials in what it shows, and refuses what is not an HTTP proxy', () => {
    expect(proxyFor(new URL('https://r.example.com/'), env)?.shown).not.toMatch(/u|p%40ss/);
    expect(() => proxyFor(new URL('https://r.example.com/'), { HTTPS_PROXY: 'socks5://127.0.0.1:1080' })).toThrow(/HTTPS_PROXY: a socks5 proxy is not supported/);
    expect(() => proxyFor(new URL('https://r.example.com/'), { https_proxy: 'http://[bad' })).toThrow(/https_proxy is not a proxy URL/);
  });
});

describe('NO_PROXY', () => {
  const cases: [noProxy: string, host: string, port: string, bypass: boolean][] = [
    ['*', 'anything.example', '443', true],
    ['example.com', 'example.com', '443', true],
    ['example.com', 'registry.example.com', '443', true],
    ['example.com', 'notexample.com', '443', false],
    ['.example.com', 'example.com', '443', false],
    ['.example.com', 'a.b.example.com', '443', true],
    ['*.example.com', 'a.example.com', '443', true],
    ['*.example.com', 'example.com', '443', false],
    ['example.com:5000', 'example.com', '5000', true],
    ['example.com:5000', 'example.com', '443', false],
    ['10.0.0.0/8', '10.1.2.3', '443', true],
    ['10.0.0.0/8', '11.1.2.3', '443', false],
    ['192.168.1.7', '192.168.1.7', '443', true],
    ['192.168.1.7', '192.168.1.8', '443', false],
    ['[fd00::1]:5000', 'fd00::1', '5000', true],
    ['EXAMPLE.com', 'example.com', '443', true],
    ['a.test, b.test  c.test', 'c.test', '443', true],
    ['', 'example.com', '443', false],
  ];
  for (const [noProxy, host, port, bypass] of cases) {
    it(`${JSON.stringify(noProxy)} ${bypass ? 'bypasses' : 'keeps'} ${host}:${port}`, () => {
      expect(bypassesProxy(noProxy, host, port)).toBe(bypass);
    });
  }

  it('is read beside the proxy, in either case', () => {
    const url = new URL('https://registry.internal:5000/');
    expect(proxyFor(url, { HTTPS_PROXY: 'http://p:1', NO_PROXY: 'other.internal' })).toBeDefined();
    expect(proxyFor(url, { HTTPS_PROXY: 'http://p:1', no_proxy: '.internal' })).toBeUndefined();
  });
});

describe('a proxy that accepts and never answers CONNECT', () => {
  it('fails the connection after connectMs naming the proxy, not the server it never reached', async () => {
    const net = await import('node:net');
    const https = await import('node:https');
    const silent = net.createServer(() => undefined);
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const port = (silent.address() as import('node:net').AddressInfo).port;
    const saved = process.env.HTTPS_PROXY;
    process.env.HTTPS_PROXY = `http://127.0.0.1:${port}`;
    const agent = routedHttpsAgent({ connectMs: 200 });
    try {
      const e = await new Promise<NodeJS.ErrnoException>((resolve) => https.get('https://registry.example:5000/v2/', { agent }, () => resolve(new Error('answered'))).on('error', resolve));
      expect(e.message).toBe(`the proxy http://127.0.0.1:${port} did not answer CONNECT registry.example:5000 in 0.2 s`);
      expect(e.code).toBe('SMART_HTTP_CONNECT_TIMEOUT');
    } finally {
      if (saved === undefined) delete process.env.HTTPS_PROXY;
      else process.env.HTTPS_PROXY = saved;
      agent.destroy();
      silent.close();
    }
  });
});
