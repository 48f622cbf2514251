/**
 * How a failed connection to a registry reads (connectionError): certificate failures are "cannot
 * reach" whatever the request, each with the fix that applies to it. Errors made here with Node's
 * codes; test/integration/registry-ping.test.ts shows the untrusted case from a real TLS registry.
 */
import { describe, expect, it } from 'vitest';
import { connectTimeoutError } from '../../src/transient.js';
import { connectionError, statusError, type ErrorContext } from '../../src/transports/registry/errors.js';

const ctx: ErrorContext = { host: 'registry.example:5000', allowHttp: false, stallTimeoutMs: 30_000, secrets: () => [] };

function nodeError(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}

const asRead = (e: Error) => {
  const err = connectionError(ctx, e, { what: 'manifest team/app:1' });
  return { message: err.message, hint: err.hint, retryable: err.retryable };
};

describe('connection errors of a registry', () => {
  it('no socket to be had (ulimit -n): this machine said as STORAGE with what to do, not the registry lost', () => {
    // What Node says when connect() finds the process's files used up.
    const e = connectionError(ctx, Object.assign(new Error('connect EMFILE 127.0.0.1:5000 - Local (undefined:undefined)'), { code: 'EMFILE', errno: -24, syscall: 'connect' }), { what: 'blob sha256:abc of team/app' });
    expect({ code: e.code, message: e.message, hint: e.hint }).toEqual({
      code: 'STORAGE',
      message: 'blob sha256:abc of team/app: no connection to registry.example:5000 could be opened: this process has too many files open (EMFILE)',
      hint: 'too many open files: raise the limit (ulimit -n) or lower --jobs',
    });
  });

  it('a certificate signed by no trusted CA: cannot reach, put the CA in certs.d or --cert-dir', () => {
    for (const code of ['UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'SELF_SIGNED_CERT_IN_CHAIN', 'DEPTH_ZERO_SELF_SIGNED_CERT', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY']) {
      expect(asRead(nodeError(code, 'unable to verify the first certificate'))).toEqual({
        message: `cannot reach registry registry.example:5000: ${code} unable to verify the first certificate (manifest team/app:1)`,
        hint: "the registry's certificate is not signed by a CA trusted here: put the CA's .crt in /etc/docker/certs.d/registry.example:5000/ or pass --cert-dir DIR; --insecure-registry registry.example:5000 skips the check",
        retryable: false,
      });
    }
  });

  it('a certificate for another name, or out of its dates: cannot reach, and why', () => {
    expect(asRead(nodeError('ERR_TLS_CERT_ALTNAME_INVALID', "Hostname/IP does not match certificate's altnames"))).toMatchObject({
      message: expect.stringMatching(/^cannot reach registry registry\.example:5000: ERR_TLS_CERT_ALTNAME_INVALID /),
      hint: "the registry's certificate is not made out to registry.example: use a name it holds; --insecure-registry registry.example:5000 skips the check",
      retryable: false,
    });
    expect(asRead(nodeError('CERT_HAS_EXPIRED', 'certificate has expired'))).toMatchObject({
      message: expect.stringMatching(/^cannot reach registry registry\.example:5000: CERT_HAS_EXPIRED /),
      hint: "the registry's certificate is outside its validity dates (or this machine's clock is); --insecure-registry registry.example:5000 skips the check",
    });
  });

  it('a connection that breaks mid-request is lost, and may be tried again; no TLS hint', () => {
    expect(asRead(nodeError('ECONNRESET', 'socket hang up'))).toEqual({
      message: 'lost the connection to registry registry.example:5000: ECONNRESET socket hang up (manifest team/app:1)',
      hint: undefined,
      retryable: true,
    });
  });
});

describe('status errors of a registry', () => {
  const said = (status: number, body: string) => statusError(ctx, status, Buffer.from(body), { method: 'GET', what: 'manifest a:1' });

  it('an error entry whose code or message is no string is shown as compact JSON, capped, never [object Object]', () => {
    const e = said(400, '{"errors":[{"code":{"nested":true},"message":{"a":"b"}}]}');
    expect(e.message).toBe('registry registry.example:5000 answered 400 {"nested":true}: {"a":"b"} to GET manifest a:1');
    expect(e.codes).toEqual(['{"nested":true}']);
    expect(said(400, '{"errors":[{"code":7,"message":["x"]},{"code":null}]}').message).toBe('registry registry.example:5000 answered 400 7: ["x"] to GET manifest a:1');
    const big = said(400, JSON.stringify({ errors: [{ code: 'DENIED', message: { password: 'hunter2', pad: 'x'.repeat(500) } }] }));
    expect(big.message).not.toContain('hunter2');
    expect(big.message.length).toBeLessThan(300);
  });
});

describe('network failures are said once, in words, with no code of ours', () => {
  it("Node's call and code repeated after the code are said in words, the address kept where the line does not name it", () => {
    expect(asRead(nodeError('ECONNREFUSED', 'connect ECONNREFUSED registry.example:5000')).message).toBe(
      'cannot reach registry registry.example:5000: ECONNREFUSED connection refused (manifest team/app:1)',
    );
    expect(asRead(nodeError('ECONNREFUSED', 'connect ECONNREFUSED 10.0.0.5:5000')).message).toBe(
      'cannot reach registry registry.example:5000: ECONNREFUSED connection refused (10.0.0.5:5000) (manifest team/app:1)',
    );
    expect(asRead(nodeError('ENOTFOUND', 'getaddrinfo ENOTFOUND registry.example')).message).toBe(
      'cannot reach registry registry.example:5000: ENOTFOUND no such host (manifest team/app:1)',
    );
    // What to look at: the address (not the proxy's refusal, which names the proxy).
    expect(asRead(nodeError('ECONNREFUSED', 'connect ECONNREFUSED registry.example:5000')).hint).toBe("nothing answers at registry.example:5000: check the registry's address and port, and that it runs");
    expect(asRead(nodeError('ENOTFOUND', 'getaddrinfo ENOTFOUND registry.example')).hint).toBe("the name registry.example does not resolve here: check it (and this machine's DNS)");
    expect(asRead(nodeError('ECONNREFUSED', 'through the proxy http://127.0.0.1:3128: connect ECONNREFUSED 127.0.0.1:3128')).hint).toBeUndefined();
    expect(asRead(nodeError('ECONNREFUSED', 'through the proxy http://127.0.0.1:3128: connect ECONNREFUSED 127.0.0.1:3128')).message).toBe(
      'cannot reach registry registry.example:5000: ECONNREFUSED through the proxy http://127.0.0.1:3128: connection refused (manifest team/app:1)',
    );
  });

  it('a connect timeout shows no internal code', () => {
    expect(asRead(connectTimeoutError()).message).toBe('cannot reach registry registry.example:5000: connect timed out (manifest team/app:1)');
  });

  it("a plain-text body that only says the status again is left out; other text stays", () => {
    expect(statusError(ctx, 404, Buffer.from('404 page not found\n'), { method: 'GET', what: 'manifest a:1' }).message).toBe('registry registry.example:5000 answered 404 to GET manifest a:1');
    expect(statusError(ctx, 502, Buffer.from('502 Bad Gateway'), { method: 'GET', what: 'manifest a:1' }).message).toBe('registry registry.example:5000 answered 502 to GET manifest a:1');
    expect(statusError(ctx, 404, Buffer.from('no route for /v2/x'), { method: 'GET', what: 'manifest a:1' }).message).toBe('registry registry.example:5000 answered 404 no route for /v2/x to GET manifest a:1');
  });

  it('a 407 is the proxy\'s, not the registry\'s: said so, with where its credentials go', () => {
    const e = statusError(ctx, 407, Buffer.from('Proxy Authentication Required'), { method: 'GET', what: 'ping' });
    expect([e.message, e.hint]).toEqual([
      'the HTTP proxy between here and registry registry.example:5000 answered 407 Proxy Authentication Required to GET ping',
      'give the proxy its credentials in HTTP_PROXY / HTTPS_PROXY (http://USER:PASSWORD@PROXY:PORT), or name the registry in NO_PROXY',
    ]);
  });
});
