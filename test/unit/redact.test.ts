/**
 * What may enter a message from elsewhere (redact.ts), credentials typed into image names, and
 * which registry an explicit credential goes to (ops/credentials.ts): pure logic, no server.
 */
import { describe, expect, it } from 'vitest';
import { SmartError } from '../../src/errors.js';
import { assignCredentials } from '../../src/ops/credentials.js';
import { parseImageName } from '../../src/transports/all.js';
import { parseReference } from '../../src/oci/reference.js';
import { capLength, oneLine, redactImageName, redactSecrets, remoteText, userinfoEnd } from '../../src/redact.js';

function thrown(f: () => unknown): SmartError {
  try {
    f();
  } catch (e) {
    if (e instanceof SmartError) return e;
    throw e;
  }
  throw new Error('did not throw');
}

describe('redactSecrets', () => {
  it.each([
    ['Authorization: Basic YWxpY2U6czNjcmV0 User-Agent: x', 'YWxpY2U6czNjcmV0'],
    ['Authorization: Bearer abc.def.ghi', 'abc.def.ghi'],
    ['Authorization: sometoken123', 'sometoken123'],
    ['{"headers":{"Authorization":["Basic YWxpY2U6czNjcmV0"]}}', 'YWxpY2U6czNjcmV0'],
    ['map[Authorization:[Basic YWxpY2U6czNjcmV0] Accept:[*/*]]', 'YWxpY2U6czNjcmV0'],
    ['the header was Basic YWxpY2U6czNjcmV0', 'YWxpY2U6czNjcmV0'],
    ['token eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl expired', 'eyJhbGciOiJFUzI1NiJ9'],
    ['{"username":"alice","password":"hunter2"}', 'hunter2'],
    ['{"Username":"alice","Secret":"hunter2"}', 'hunter2'],
    ['{"auths":{"h":{"auth":"YWxpY2U6aHVudGVyMg=="}}}', 'YWxpY2U6aHVudGVyMg'],
    ['{"access_token":"tok-123456","token":"tok-123456"}', 'tok-123456'],
    ['https://alice:hunter2@registry.example.com/v2/', 'hunter2'],
    ['GET /token?account=alice&password=hunter2&scope=x', 'hunter2'],
    ['https://b.s3.amazonaws.com/k?X-Amz-Credential=AK%2F1&X-Amz-Signature=deadbeef01', 'deadbeef01'],
    ['store locked: password=hunter2', 'hunter2'],
    ['config: password: hunter2', 'hunter2'],
    ['key AKIAIOSFODNN7EXAMPLE is unknown', 'AKIAIOSFODNN7EXAMPLE'],
    ['-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY-----', 'MIIEvQIBADANBg'],
  ])('%s', (text, secret) => {
    const out = redactSecrets(text);
    expect(out).not.toContain(secret);
    expect(out).toContain('[redacted]');
  });

  it('keeps what is no secret: challenges, prose, digests', () => {
    for (const text of [
      'Basic realm="registry" and basic authentication required',
      'Bearer realm="https://auth.docker.io/token",service="registry.docker.io"',
      'invalid token: signature is invalid',
      'docker://busybox@sha256:9ae97d36d26566ff84e8893c64a6dc4fe8ca6d1144bf5b87b2b85a32def253c7',
      'manifest unknown: team/app:v1',
    ]) {
      expect(redactSecrets(text)).toBe(text);
    }
  });

  it('replaces the secrets the caller holds, also as base64 and URL-encoded', () => {
    const password = 's3cret:with @colon';
    const text = `echo: ${password} / ${Buffer.from(`alice:${password}`).toString('base64')} / ${encodeURIComponent(password)}`;
    const out = redactSecrets(text, [password, `alice:${password}`]);
    expect(out).not.toContain('s3cret');
    expect(out).not.toContain(Buffer.from(`alice:${password}`).toString('base64').slice(0, 20));
  });
});

describe('remoteText', () => {
  it('is one line, without control or bidi characters, capped, secrets redacted before the cut', () => {
    const body = `line one\r\nline two\u0000\u001b[31m\u202eevil\u2028next ${'x'.repeat(300)}`;
    const out = remoteText(body, { max: 100 });
    expect(out).not.toMatch(/[\u0000-\u001f\u007f-\u009f\u202e\u2028]/);
    expect(out.length).toBeLessThanOrEqual(100);
    expect(out.endsWith('…')).toBe(true);
    // A secret the cut falls inside is redacted whole, not shown in part.
    const cut = remoteText(`${'y'.repeat(80)} password=hunter2hunter2hunter2`, { max: 95 });
    expect(cut).not.toContain('hunter');
  });

  it('oneLine and capLength', () => {
    expect(oneLine('  a\n\tb\r\n c  ')).toBe('a b c');
    expect(capLength('abcdef', 4)).toBe('abc…');
    expect(capLength('ab😀cd', 4)).toBe('ab…');
  });
});

describe('credentials typed into image names', () => {
  it.each([
    'docker://alice:hunter2@127.0.0.1:5000/team/app:v1',
    'docker://alice:hunter2@registry.example.com',
    'docker://tok3n@host:5000/r',
    'alice:hunter2@host/repo',
    'alice:hunter2@busybox',
    's3://AK:SK@bucket#repo',
  ])('%s is refused without showing them', (name) => {
    expect(userinfoEnd(name)).toBe(name.indexOf('@'));
    expect(redactImageName(name)).not.toMatch(/hunter2|tok3n|AK:SK/);
  });

  it.each(['docker://busybox@sha256:9ae9', 'busybox:1.0@sha256:ab', 'docker://localhost:5000/a@sha256:ab', 'busybox@junk', 'oci:/a@b/c'])('%s has none', (name) => {
    expect(userinfoEnd(name)).toBe(-1);
  });

  it('parse errors do not echo them and say where credentials go', () => {
    for (const name of ['docker://alice:hunter2@127.0.0.1:5000/team/app:v1', 'docker://alice:hunter2@busybox', 'docker-archive:x.tar:alice:hunter2@host/r:t', 's3://AK:hunter2@bucket#r']) {
      const e = thrown(() => parseImageName(name));
      expect(e.code).toBe('INVALID_REFERENCE');
      expect(`${e.message} ${e.hint} ${e.input}`).not.toContain('hunter2');
      expect(e.message).toContain('credentials do not go inside an image name');
    }
    expect(thrown(() => parseImageName('docker://alice:hunter2@h/r')).hint).toMatch(/--creds/);
    expect(thrown(() => parseReference('alice:hunter2@host:5000/r')).message).not.toContain('hunter2');
  });
});

describe('assignCredentials: an explicit credential goes to one registry', () => {
  const A = 'docker://a.example.com/team/app:v1';
  const B = 'docker://b.example.com/team/app:v1';
  const alice = { username: 'alice', password: 'pw' };

  it('--creds goes to the one registry of a command', () => {
    expect(assignCredentials({ shared: { value: 'alice:pw', from: '--creds' } }, { read: ['oci:/x'], write: [B] })).toEqual({
      sourceCredentials: alice,
      destinationCredentials: alice,
    });
    // One registry on both sides is still one registry.
    expect(assignCredentials({ shared: { value: 'alice:pw', from: '--creds' } }, { read: [A], write: ['docker://a.example.com/team/app:v2'] }).sourceCredentials).toEqual(alice);
    expect(assignCredentials({ shared: { value: 'alice:pw', from: '--creds' } }, { read: ['docker://a.example.com'], write: [] }).sourceCredentials).toEqual(alice);
  });

  it('--creds with two registries is a usage error naming --src-creds/--dest-creds', () => {
    const e = thrown(() => assignCredentials({ shared: { value: 'alice:pw', from: '--creds' }, destination: 'bob:x' }, { read: [A], write: [B] }));
    expect(e.code).toBe('USAGE');
    expect(e.message).toMatch(/--creds would go to both registries \(a\.example\.com and b\.example\.com\)/);
    expect(e.hint).toMatch(/--src-creds USER:PASSWORD for a\.example\.com, --dest-creds USER:PASSWORD for b\.example\.com/);
    // cache plan STORE --image IMG: two registries read.
    expect(thrown(() => assignCredentials({ shared: { value: 'alice:pw', from: '--creds' } }, { read: ['docker://a.example.com', B], write: [] })).hint).toMatch(/docker login/);
    expect(thrown(() => assignCredentials({ source: 'alice:pw' }, { read: ['docker://a.example.com', B], write: [] })).message).toMatch(/--src-creds would go to two registries/);
  });

  it('SMART_REGISTRY_AUTH with two registries is left unused, with a warning', () => {
    const warnings: string[] = [];
    const r = assignCredentials({ shared: { value: 'alice:pw', from: 'SMART_REGISTRY_AUTH' }, destination: 'bob:x' }, { read: [A], write: [B] }, (m) => warnings.push(m));
    expect(r).toEqual({ destinationCredentials: { username: 'bob', password: 'x' } });
    expect(warnings).toEqual([expect.stringMatching(/^SMART_REGISTRY_AUTH is not used: this command talks to two registries/)]);
    // Both sides given their own: nothing to say.
    const quiet: string[] = [];
    assignCredentials({ shared: { value: 'alice:pw', from: 'SMART_REGISTRY_AUTH' }, source: 'a:1', destination: 'b:2' }, { read: [A], write: [B] }, (m) => quiet.push(m));
    expect(quiet).toEqual([]);
  });

  it('a credential typed for a command that reaches no registry is refused, not dropped', () => {
    // --creds on an s3:// push looked as if it signed the S3 requests.
    const e = thrown(() => assignCredentials({ shared: { value: 'alice:pw', from: '--creds' } }, { read: ['docker-archive:app.tar'], write: ['s3://bucket/registry#team/app:1'] }));
    expect(e.code).toBe('USAGE');
    expect(e.message).toBe('--creds is for a registry (docker://), and this command talks to none');
    expect(e.hint).toMatch(/s3:\/\/ takes the AWS SDK's/);
    expect(thrown(() => assignCredentials({ shared: { value: 'alice:pw', from: '--creds-file' } }, { read: ['file:/srv#a:1'], write: [] })).message).toMatch(/^--creds-file is for a registry/);
    expect(thrown(() => assignCredentials({ source: 'a:1' }, { read: ['oci:/x:1'], write: [B] })).message).toBe('--src-creds is for a registry (docker://), and what this command reads is none (oci:/x:1)');
    expect(thrown(() => assignCredentials({ destination: 'b:2' }, { read: [A], write: ['oci:/x:1'] })).input).toBe('--dest-creds');
    // Set once for many commands, not typed for this one: no registry, nothing to say.
    expect(() => assignCredentials({ shared: { value: 'alice:pw', from: 'SMART_REGISTRY_AUTH' } }, { read: ['oci:/x:1'], write: ['file:/srv#a:1'] })).not.toThrow();
  });

  it('--src-creds and --dest-creds go to their side only', () => {
    expect(assignCredentials({ source: 'a:1', destination: 'b:2' }, { read: [A], write: [B] })).toEqual({
      sourceCredentials: { username: 'a', password: '1' },
      destinationCredentials: { username: 'b', password: '2' },
    });
  });
});
