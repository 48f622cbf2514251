/** redactSecretLike: words that look like secrets hidden, in text that may hold one nobody told us. */
import { describe, expect, it } from 'vitest';
import { redactSecretLike } from '../../src/redact.js';

describe('redactSecretLike', () => {
  it('hides words mixing letters with digits or + =, keeps plain words, short ones and the words kept', () => {
    expect(redactSecretLike('keychain locked; secret was he1per-S3cret:x/82b1+e6f')).toBe('keychain locked; secret was [redacted]');
    expect(redactSecretLike('token "ghp_abcdefgh12345678" rejected.')).toBe('token "[redacted]" rejected.');
    expect(redactSecretLike('dGhpcyBpcyBub3QgYSBzZWNyZXQ= (base64)')).toBe('[redacted] (base64)');
    expect(redactSecretLike('gpg: decryption failed: No secret key')).toBe('gpg: decryption failed: No secret key');
    expect(redactSecretLike('pass: error 2 at /usr/local/bin/docker-credential-pass')).toBe('pass: error 2 at /usr/local/bin/docker-credential-pass');
    expect(redactSecretLike('no credentials for registry-1.docker.io', ['registry-1.docker.io'])).toBe('no credentials for registry-1.docker.io');
    expect(redactSecretLike('store locked: password=[redacted]')).toBe('store locked: password=[redacted]');
    expect(redactSecretLike('127.0.0.1:5000 refused')).toBe('127.0.0.1:5000 refused');
  });
});
