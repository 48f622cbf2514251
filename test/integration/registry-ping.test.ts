/**
 * The ping's scheme, remembered: a registry allowed plain HTTP (loopback here) that answered on it
 * is asked over plain HTTP first the next time, with no TLS attempt (what every such command paid:
 * loading TLS and a failed handshake); a registry that has since moved to TLS on the same address
 * is still reached, over TLS, and remembered so. A TCP relay in front of the stock registry records
 * how each connection begins (a TLS handshake opens with byte 0x16). And a TLS registry whose CA is
 * not trusted here fails at once, in one line that says how to trust it.
 */
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixtures } from '../harness/fixtures.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { smart } from '../harness/run.js';
import { certDirFor, makeTestCA } from '../harness/tls.js';
import { haveTools } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';

/**
 * A TCP relay on a free loopback port to `target` (changeable), recording each connection's first
 * byte, and the request lines sent in plain HTTP (`GET /v2/`).
 */
async function startRelay() {
  let target = 0;
  const firstBytes: ('tls' | 'plain')[] = [];
  const requests: string[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    sockets.add(client);
    client.once('data', (chunk) => {
      const tls = chunk[0] === 0x16;
      firstBytes.push(tls ? 'tls' : 'plain');
      const upstream = net.connect(target, '127.0.0.1');
      sockets.add(upstream);
      const record = (c: Buffer) => {
        for (const m of c.toString('latin1').matchAll(/^(GET|HEAD|POST|PUT|PATCH|DELETE) (\S+) HTTP\/1\.1\r$/gm)) requests.push(`${m[1]} ${m[2]!.replace(/\?.*$/, '')}`);
      };
      if (!tls) {
        record(chunk);
        client.on('data', record);
      }
      upstream.write(chunk);
      client.pipe(upstream).on('error', () => client.destroy());
      upstream.pipe(client).on('error', () => upstream.destroy());
      upstream.on('error', () => client.destroy());
      upstream.on('close', () => client.destroy());
    });
    client.on('error', () => undefined);
    client.on('close', () => sockets.delete(client));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    host: `127.0.0.1:${port}`,
    firstBytes,
    /** The connections made since the last call, by how they began. */
    take: () => firstBytes.splice(0),
    /** The plain HTTP requests sent since the last call: `METHOD path` (no query). */
    takeRequests: () => requests.splice(0),
    to: (registry: RunningRegistry) => {
      target = Number(registry.host.split(':')[1]);
    },
    stop: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

describe.skipIf(!haveTools('docker-registry', 'openssl'))('the ping of a registry allowed plain HTTP', () => {
  let work: string;
  let plain: RunningRegistry;
  let secure: RunningRegistry;
  let certDir: string;
  let relay: Awaited<ReturnType<typeof startRelay>>;

  beforeAll(async () => {
    work = await tempDir();
    const ca = await makeTestCA(path.join(work, 'ca'));
    certDir = await certDirFor(ca, path.join(work, 'certs'));
    plain = await startRegistry({ configDir: work });
    secure = await startRegistry({ configDir: work, tls: { certFile: ca.certFile, keyFile: ca.keyFile, caFile: ca.caCertFile } });
    relay = await startRelay();
  });

  afterAll(async () => {
    await relay?.stop();
    await plain?.stop();
    await secure?.stop();
  });

  it('tries TLS once, then goes straight to plain HTTP; a registry moved to TLS is still reached', async () => {
    const cacheHome = path.join(work, 'cache');
    const source = `oci:${fixtures().paths.ociBasic}:latest`;
    const dest = `docker://${relay.host}/ping/basic:v1`;
    relay.to(plain);

    const first = await smart(['push', source, dest], { cacheHome });
    expect(first.code, first.stderr).toBe(0);
    const firstConnections = relay.take();
    expect(firstConnections[0]).toBe('tls');
    expect(firstConnections.slice(1)).not.toContain('tls');

    expect(relay.takeRequests()).toContain('GET /v2/');

    // Remembered with its challenge (none): no TLS attempt, and no ping either.
    const again = await smart(['push', source, dest], { cacheHome });
    expect(again.code, again.stderr).toBe(0);
    const againConnections = relay.take();
    expect(againConnections.length).toBeGreaterThan(0);
    expect(againConnections).not.toContain('tls');
    const againRequests = relay.takeRequests();
    expect(againRequests.length).toBeGreaterThan(0);
    expect(againRequests).not.toContain('GET /v2/');

    // The same address now speaks TLS: the one request sent first in plain HTTP (the others wait
    // for its answer) is answered 400, the registry is pinged after all, and TLS is used and remembered.
    relay.to(secure);
    relay.takeRequests();
    const moved = await smart(['push', source, dest, '--cert-dir', certDir], { cacheHome });
    expect(moved.code, moved.stderr).toBe(0);
    const movedConnections = relay.take();
    expect(movedConnections[0]).toBe('plain');
    expect(movedConnections.slice(1)).not.toContain('plain');
    expect(movedConnections.slice(1).length).toBeGreaterThan(0);
    expect(relay.takeRequests()).toHaveLength(1);

    const secureAgain = await smart(['pull', dest, `oci:${path.join(work, 'out')}:v1`, '--cert-dir', certDir], { cacheHome });
    expect(secureAgain.code, secureAgain.stderr).toBe(0);
    const secureConnections = relay.take();
    expect(secureConnections.length).toBeGreaterThan(0);
    expect(secureConnections).not.toContain('plain');

    // Remembered as TLS: asked over TLS at once, without a bare handshake before it. A push that
    // finds everything there, one layer at a time, then keeps to one connection.
    const warmSecure = await smart(['push', source, dest, '--cert-dir', certDir, '--jobs', '1'], { cacheHome });
    expect(warmSecure.code, warmSecure.stderr).toBe(0);
    expect(relay.take()).toEqual(['tls']);
  });

  it('a certificate signed by no CA trusted here: one line saying so and how to trust it, at once, nothing written', async () => {
    // Every kind of destination, in directories not there yet: none of them is left behind.
    const out = path.join(work, 'untrusted');
    await fs.mkdir(out);
    const destinations = [`oci:${out}/a/layout:v1`, `oci-archive:${out}/b/c/image.tar`, `docker-archive:${out}/d/image.tar`, `rootfs:${out}/e/f/root`, `bundle:${out}/g/bundle`];
    const host = secure.host.replace(/\./g, '\\.');
    for (const dest of destinations) {
      const r = await smart(['pull', `docker://${secure.host}/ping/basic:v1`, dest], { cacheHome: path.join(work, 'cache-untrusted') });
      expect(r.code, dest).not.toBe(0);
      expect(r.stderr.trimEnd().split('\n'), dest).toEqual([
        expect.stringMatching(
          new RegExp(
            `^smart: error \\[REGISTRY\\]: cannot reach registry ${host}: (UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT_LOCALLY|SELF_SIGNED_CERT_IN_CHAIN) .*` +
              `\\(the registry's certificate is not signed by a CA trusted here: put the CA's \\.crt in /etc/docker/certs\\.d/${host}/ or pass --cert-dir DIR; --insecure-registry ${host} skips the check\\)$`,
          ),
        ),
      ]);
      expect(await fs.readdir(out), dest).toEqual([]);
    }
    // Trusted, the same pulls (of the image the test above pushed) make those directories and write there.
    for (const dest of destinations) {
      const r = await smart(['pull', `docker://${secure.host}/ping/basic:v1`, dest, '--cert-dir', certDir], { cacheHome: path.join(work, 'cache-untrusted') });
      expect(r.code, `${dest}: ${r.stderr}`).toBe(0);
    }
    expect((await fs.readdir(out)).sort()).toEqual(['a', 'b', 'd', 'e', 'g']);
  });
});
