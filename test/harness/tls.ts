/**
 * A throwaway certificate authority for tests: a self-signed CA and a server certificate it signs
 * for 127.0.0.1 and localhost, both valid for one day, made with the `openssl` CLI (node:crypto
 * cannot create X.509 certificates); and a TLS front that serves it for a plain server.
 */
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { runOk } from './run.js';

export interface TestCA {
  /** PEM of the self-signed CA: what clients trust (`ca`, `--*-cert-dir` as `ca.crt`). */
  caCertFile: string;
  /** PEM of the server certificate (SAN IP:127.0.0.1, DNS:localhost), signed by the CA. */
  certFile: string;
  /** PEM of the server certificate's private key (unencrypted). */
  keyFile: string;
  /** The CA certificate's PEM text. */
  caPem: string;
}

const EC_KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];

/**
 * Makes the CA and server certificate under `dir` (created if missing) and checks the pair with
 * `openssl verify`. Each call makes fresh keys. `names`: more DNS names the certificate holds.
 */
export async function makeTestCA(dir: string, names: string[] = []): Promise<TestCA> {
  await fs.mkdir(dir, { recursive: true });
  const caKey = path.join(dir, 'ca.key');
  const caCertFile = path.join(dir, 'ca.crt');
  const keyFile = path.join(dir, 'server.key');
  const csr = path.join(dir, 'server.csr');
  const certFile = path.join(dir, 'server.crt');
  const ext = path.join(dir, 'server.ext');

  await runOk('openssl', [
    'req', '-x509', ...EC_KEY, '-keyout', caKey, '-out', caCertFile, '-days', '1', '-subj', '/CN=smartlayer test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE',
    '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  await runOk('openssl', ['req', '-new', ...EC_KEY, '-keyout', keyFile, '-out', csr, '-subj', '/CN=127.0.0.1']);
  await fs.writeFile(
    ext,
    [
      'basicConstraints=critical,CA:FALSE',
      'keyUsage=critical,digitalSignature,keyEncipherment',
      'extendedKeyUsage=serverAuth',
      `subjectAltName=IP:127.0.0.1,DNS:localhost${names.map((n) => `,DNS:${n}`).join('')}`,
      '',
    ].join('\n'),
  );
  await runOk('openssl', [
    'x509', '-req', '-in', csr, '-CA', caCertFile, '-CAkey', caKey, '-CAcreateserial',
    '-out', certFile, '-days', '1', '-sha256', '-extfile', ext,
  ]);
  await runOk('openssl', ['verify', '-CAfile', caCertFile, certFile]);
  const caPem = await fs.readFile(caCertFile, 'utf8');
  return { caCertFile, certFile, keyFile, caPem };
}

/**
 * A directory holding the CA as `ca.crt`, as skopeo's `--src-cert-dir`/`--dest-cert-dir` and
 * containers' `certs.d` expect (every `*.crt` in it is trusted). Returns its path.
 */
export async function certDirFor(ca: TestCA, dir: string): Promise<string> {
  await fs.mkdir(dir, { recursive: true });
  await fs.writeFile(path.join(dir, 'ca.crt'), ca.caPem);
  return dir;
}

/**
 * A self-signed certificate and its key for signing (not serving): the token server's signing
 * pair, whose certificate the registry lists in `auth.token.rootcertbundle`.
 */
export async function makeSigningCert(dir: string, cn = 'smartlayer test token signer'): Promise<{ certFile: string; keyFile: string }> {
  await fs.mkdir(dir, { recursive: true });
  const keyFile = path.join(dir, 'signing.key');
  const certFile = path.join(dir, 'signing.crt');
  await runOk('openssl', [
    'req', '-x509', ...EC_KEY, '-keyout', keyFile, '-out', certFile, '-days', '1', '-subj', `/CN=${cn}`,
    '-addext', 'keyUsage=critical,digitalSignature',
  ]);
  return { certFile, keyFile };
}

/**
 * A TLS front on a free loopback port, passing each connection's bytes through to the plain server
 * on `port` (s3rver speaks HTTP only): a load balancer that ends TLS, keeps the Host and adds no
 * header (no X-Forwarded-Proto), so what is behind it cannot tell it was reached over TLS.
 */
export async function startTlsFront(ca: TestCA, port: number): Promise<{ port: number; endpoint: string; stop(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const [key, cert] = await Promise.all([fs.readFile(ca.keyFile), fs.readFile(ca.certFile)]);
  const server = tls.createServer({ key, cert }, (client) => {
    const upstream = net.connect(port, '127.0.0.1');
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => undefined);
      s.on('close', () => {
        sockets.delete(s);
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream).pipe(client);
  });
  server.on('tlsClientError', () => undefined);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const own = (server.address() as net.AddressInfo).port;
  return {
    port: own,
    endpoint: `https://127.0.0.1:${own}`,
    stop: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
