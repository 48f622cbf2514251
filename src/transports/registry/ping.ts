/**
 * The first exchange with a registry, `GET /v2/`: it chooses the scheme (https, or plain http
 * where that is allowed: loopback, --insecure-registry) and learns the authentication challenge.
 * Not sent when both are remembered from an earlier command (RegistryContact in client.ts).
 */
import { isIP } from 'node:net';
import { SmartError } from '../../errors.js';
import { parseChallenge, type Challenge } from './auth.js';
import { connectionError, statusError, type ErrorContext } from './errors.js';
import { USER_AGENT, header, type Http } from './http.js';
import type { Retry } from './retry.js';
import { isAtProxy, proxyFor } from '../../proxy.js';

export interface PingResult {
  /** `https://host[:port]` or `http://…`: where the API answers. */
  base: string;
  /** What a 401 to the ping asked for; `none` when the registry answered without one. */
  challenge: Challenge;
}

/** What a plain server answers to a TLS hello (or a TLS server to plain HTTP): decides the fall-back to http. */
export function looksLikeTlsMismatch(e: unknown): boolean {
  const err = (e instanceof SmartError ? e.cause : e) as NodeJS.ErrnoException | undefined;
  const code = err?.code ?? '';
  const msg = err?.message ?? '';
  return code === 'EPROTO' || code === 'ERR_SSL_WRONG_VERSION_NUMBER' || /wrong version number|packet length too long|http request/i.test(msg) || code === 'ECONNRESET';
}

/**
 * Whether the server at `apiHost` completes a TLS handshake, asked with a context that trusts
 * nothing and checks nothing, and closed at once (nothing is sent): true if it does, false if it
 * answers as a plain server does (looksLikeTlsMismatch), undefined for any other failure, which
 * the usual attempt then meets and reports. Why: the usual attempt builds the context that
 * verifies, Node's root store and NODE_EXTRA_CA_CERTS's file (20-45 ms here), only to learn that
 * a registry on loopback speaks plain HTTP.
 */
async function answersTls(apiHost: string, signal: AbortSignal | undefined): Promise<boolean | undefined> {
  const tls = process.getBuiltinModule('node:tls');
  const { hostname, port } = new URL(`https://${apiHost}`);
  const host = hostname.replace(/^\[(.*)\]$/, '$1');
  return new Promise((resolve) => {
    const socket = tls.connect({
      host,
      port: Number(port || 443),
      ...(isIP(host) ? {} : { servername: host }),
      secureContext: tls.createSecureContext({ ca: [] }),
      rejectUnauthorized: false,
    });
    const done = (answer: boolean | undefined) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', abort);
      socket.destroy();
      resolve(answer);
    };
    const abort = () => done(undefined);
    const timer = setTimeout(abort, PROBE_MS);
    signal?.addEventListener('abort', abort, { once: true });
    socket.once('secureConnect', () => done(true));
    socket.once('error', (e) => done(looksLikeTlsMismatch(e) ? false : undefined));
    socket.once('close', () => done(undefined));
  });
}

/**
 * A probe that takes longer leaves the decision to the usual attempt (a slow registry is no plain
 * one). A handshake takes milliseconds on loopback and a few round trips elsewhere; a server that
 * hangs costs this much more than before the probe, before the usual attempt reports it.
 */
const PROBE_MS = 2_000;

/**
 * Pings `apiHost`. Where plain HTTP is allowed, TLS is tried first and a plain server's answer to
 * it (a reset, garbage) makes http the next try: asked first with a bare handshake (answersTls),
 * then, unless that showed a plain server, with the usual attempt. Elsewhere https alone, retried
 * as any request. A 404 is taken for an answer (some registries do not implement `/v2/` alone:
 * the next request will tell).
 *
 * `remembered: 'http'` (a registry that answered on plain HTTP last time, where that is allowed):
 * one plain attempt first, which spares the TLS attempt its cost (loading TLS and failing a
 * handshake: ~20 ms of every command). Any failure of it (a TLS server's 400 to plain HTTP, a
 * reset, a registry down) and the ping is done as if nothing were remembered. It sends nothing
 * secret and chooses nothing that the TLS attempt failing would not choose. `remembered: 'https'`:
 * the usual TLS attempt at once, without the bare handshake (a registry since moved to plain HTTP
 * fails it as a plain server does, and http follows).
 */
export async function ping(
  deps: { http: Http; retry: Retry; errors: ErrorContext },
  target: { apiHost: string; allowHttp: boolean; remembered?: 'http' | 'https' | undefined },
  signal: AbortSignal | undefined,
): Promise<PingResult> {
  const { http, retry, errors } = deps;
  const what = `ping ${errors.host}`;
  const attempt = async (scheme: 'https' | 'http', repeatable: boolean): Promise<PingResult> => {
    const base = `${scheme}://${target.apiHost}`;
    const request = { what, method: 'GET', url: `${base}/v2/` };
    const res = await retry.send(what, () => http.send({ origin: base, path: '/v2/', method: 'GET', headers: { 'user-agent': USER_AGENT } }, signal), {
      host: errors.host,
      signal,
      repeatable,
      failure: (e) => connectionError(errors, e, request, scheme === 'https' ? 'ping' : 'ping-http'),
    });
    await res.body.dump();
    if (res.statusCode === 401) return { base, challenge: parseChallenge(header(res.headers, 'www-authenticate')) };
    if (res.statusCode !== 200 && res.statusCode !== 404) throw statusError(errors, res.statusCode, undefined, request);
    return { base, challenge: { scheme: 'none' } };
  };
  if (target.allowHttp && target.remembered === 'http') {
    try {
      return await attempt('http', false);
    } catch (e) {
      if (signal?.aborted) throw e;
    }
  }
  signal?.throwIfAborted();
  // A registry that answered over TLS last time is asked over TLS at once: no bare handshake first.
  // Through a proxy the bare handshake cannot be asked (it connects straight): the usual attempt decides.
  if (target.allowHttp && target.remembered !== 'https' && !proxyFor(new URL(`https://${target.apiHost}`)) && (await answersTls(target.apiHost, signal)) === false) {
    signal?.throwIfAborted();
    return attempt('http', true);
  }
  try {
    return await attempt('https', !target.allowHttp);
  } catch (e) {
    if (!target.allowHttp) throw e;
    if (looksLikeTlsMismatch(e)) return attempt('http', true);
    // The proxy would not carry TLS to it (a proxy that tunnels to port 443 alone): plain HTTP,
    // allowed for this registry, goes its own way (HTTP_PROXY, or straight), as skopeo and Docker
    // try it. Failing that too, the proxy's refusal is what to fix.
    if (!isAtProxy(e)) throw e;
    return attempt('http', true).catch(() => Promise.reject(e));
  }
}
