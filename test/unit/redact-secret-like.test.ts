/** redactSecretLike: words that look like secrets hidden, in text that may hold one nobody told us. */
import { describe, expect, it } from 'vitest';
import { redactSecretLike, untrustedText } from '../../src/redact.js';

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

describe('untrustedText', () => {
  it("hides what credential helpers were seen to leak: token prefixes, mixed case, a word after 'secret'", () => {
    expect(untrustedText('wrong: glpat-AbCdEfGhIjKlMnOpQrSt')).toBe('wrong: [redacted]');
    expect(untrustedText('failed: HelperLeakSecretLLL')).toBe('failed: [redacted]');
    expect(untrustedText('no creds; secret hunter2 rejected')).toBe('no creds; secret [redacted] rejected');
    expect(untrustedText('password is swordfish, token xyzzy rejected')).toBe('password is [redacted], token [redacted] rejected');
    for (const token of ['ghp_abcdefghijklmnop', 'github_pat_abcdefghijkl', 'xoxb-1234-abcdef', 'sk-abcdefghijkl', 'AKIAIOSFODNN7EXAMPLE', 'npm_abcdefghijkl', 'dop_v1_abcdefghijkl']) {
      expect(untrustedText(`rejected ${token} here`)).toBe('rejected [redacted] here');
    }
    // A user:password pair, and the word after `auth`; not a digest, a port or a URL.
    expect(untrustedText('login rejected for ci:swordfish; auth: swordfish')).toBe('login rejected for ci:[redacted]; auth: [redacted]');
    expect(untrustedText('dialing 10.0.0.1:5000 over https://registry.example.com for arn:aws')).toBe('dialing 10.0.0.1:5000 over https://registry.example.com for arn:aws');
    // What to fix stays: the names of errors and exceptions, and the registry kept, also with its scheme.
    expect(untrustedText('err: AccessDeniedException: NoCredentialProviders for https://127.0.0.1:6604', { keep: ['127.0.0.1:6604'] })).toBe(
      'err: AccessDeniedException: NoCredentialProviders for https://127.0.0.1:6604',
    );
    // Prose stays: lower case, one leading capital, upper case, and the words after a secret word that are prose.
    expect(untrustedText('Error: the keychain is locked, No secret key, HTTP 401 token expired')).toBe('Error: the keychain is locked, No secret key, HTTP 401 token expired');
  });

  it('redacts before it cuts, and cuts between words with the brackets it leaves open closed', () => {
    const said = `the credential store (keychain access denied while reading the entry: ${'lorem ipsum '.repeat(8)}wrong: glpat-AbCdEfGhIjKlMnOpQrSt)`;
    for (const max of [90, 100, 110, 120, 130, 140, 150, 160, 170, 200]) {
      const out = untrustedText(said, { max });
      expect(out.length).toBeLessThanOrEqual(max);
      expect(out).not.toMatch(/glpat|AbCd/);
      expect(out).toMatch(/^the credential store \(keychain access denied while reading .*(?:…\)|\[redacted\]\))$/);
      // Every word shown is a word of the text or the redaction, never part of one.
      for (const word of out.replace(/…\)$/, '').split(' ')) expect(`${said} [redacted])`.split(' ')).toContain(word);
    }
  });
});
