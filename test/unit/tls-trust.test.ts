/**
 * How the deferred NODE_EXTRA_CA_CERTS file reaches the contexts node:tls makes, on a stand-in for
 * node:tls (the real one is process-wide; test/integration/tls-trust.test.ts proves the outcome
 * with real servers).
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { DEFERRED_CA_CERTS_ENV, contextTrusting, deferExtraCaCerts, trustDeferredCaCerts } from '../../src/tls-trust.js';
import { tempDir } from '../harness/tmp.js';

interface FakeContext {
  options: Record<string, unknown> | undefined;
  added: string[];
  context: { addCACert(pem: string): void };
}

/** node:tls as far as tls-trust uses it: contexts that remember how they were made. */
function fakeTls() {
  const made: FakeContext[] = [];
  const tls = {
    rootCertificates: ['ROOT-1', 'ROOT-2'],
    DEFAULT_CIPHERS: 'DEFAULT:CIPHERS',
    createSecureContext(options?: Record<string, unknown>): FakeContext {
      const c: FakeContext = { options, added: [], context: { addCACert: (pem) => c.added.push(pem) } };
      made.push(c);
      return c;
    },
  };
  return { tls, made, make: (options?: Record<string, unknown>) => tls.createSecureContext(options) };
}

describe('tls-trust', () => {
  let file: string;
  beforeAll(async () => {
    file = path.join(await tempDir(), 'extra.pem');
    await fs.writeFile(file, 'EXTRA-PEM');
  });

  const defer = (value: string | undefined) => {
    const env: NodeJS.ProcessEnv = value === undefined ? {} : { [DEFERRED_CA_CERTS_ENV]: value };
    const warnings: string[] = [];
    deferExtraCaCerts(env, (m) => warnings.push(m));
    return { env, warnings };
  };

  it('gives NODE_EXTRA_CA_CERTS back to the environment, and does nothing when bin/*.js set nothing aside', () => {
    expect(defer(undefined).env).toEqual({});
    const fake = fakeTls();
    const before = fake.tls.createSecureContext;
    trustDeferredCaCerts(fake.tls as never);
    expect(fake.tls.createSecureContext).toBe(before);
    expect(defer(file).env).toEqual({ NODE_EXTRA_CA_CERTS: file });
    // Taken by the first TLS client; the ones after find nothing left to do.
    trustDeferredCaCerts(fakeTls().tls as never);
    const later = fakeTls();
    const untouched = later.tls.createSecureContext;
    trustDeferredCaCerts(later.tls as never);
    expect(later.tls.createSecureContext).toBe(untouched);
  });

  it('reads the file at the first context, not before, and shares one context among the default ones', () => {
    defer(file);
    const fake = fakeTls();
    trustDeferredCaCerts(fake.tls as never);
    expect(fake.made).toHaveLength(0);
    const a = fake.make({ host: '127.0.0.1', servername: 'x', rejectUnauthorized: true, ciphers: 'DEFAULT:CIPHERS' });
    const b = fake.make(undefined);
    expect(b).toBe(a);
    expect(a.added).toEqual(['EXTRA-PEM']);
    expect(fake.made).toHaveLength(1);
  });

  it('an option that changes the context gets a context of its own, with the file; an explicit ca replaces both, as in Node', () => {
    defer(file);
    const fake = fakeTls();
    trustDeferredCaCerts(fake.tls as never);
    const withCert = fake.make({ cert: 'CERT', key: 'KEY' });
    expect(withCert.options).toMatchObject({ cert: 'CERT', key: 'KEY' });
    expect(withCert.added).toEqual(['EXTRA-PEM']);
    const otherCiphers = fake.make({ ciphers: 'HIGH' });
    expect(otherCiphers.added).toEqual(['EXTRA-PEM']);
    const explicit = fake.make({ ca: ['MINE'] });
    expect(explicit.options).toEqual({ ca: ['MINE'] });
    expect(explicit.added).toEqual([]);
  });

  it('without the native addCACert, the roots and the file go in as `ca`', () => {
    defer(file);
    const fake = fakeTls();
    const plain = fake.tls.createSecureContext;
    fake.tls.createSecureContext = (options) => ({ ...plain(options), context: {} as FakeContext['context'] });
    trustDeferredCaCerts(fake.tls as never);
    expect(fake.make(undefined).options).toEqual({ ca: ['ROOT-1', 'ROOT-2', 'EXTRA-PEM'] });
  });

  it("a registry's own CAs go into a context of their own, beside the default trust: the roots and the file, never the shared context", () => {
    defer(file);
    const fake = fakeTls();
    trustDeferredCaCerts(fake.tls as never);
    const shared = fake.make(undefined);
    const own = contextTrusting(fake.tls as never, ['REGISTRY-CA', 'OTHER-CA']) as unknown as FakeContext;
    expect(own).not.toBe(shared);
    // Node's roots are the context's own (no `ca` that would parse them again), then the file, then the registry's.
    expect(own.options).toBeUndefined();
    expect(own.added).toEqual(['EXTRA-PEM', 'REGISTRY-CA', 'OTHER-CA']);
    expect(shared.added).toEqual(['EXTRA-PEM']);
    expect(fake.make(undefined)).toBe(shared);
    // No file set aside (a program embedding the library, or none named): the roots and the registry's.
    const plain = fakeTls();
    const alone = contextTrusting(plain.tls as never, ['REGISTRY-CA']) as unknown as FakeContext;
    expect([alone.options, alone.added]).toEqual([undefined, ['REGISTRY-CA']]);
    // A Node without addCACert: all of them as `ca`.
    const bare = fakeTls();
    const make = bare.tls.createSecureContext;
    bare.tls.createSecureContext = (options) => ({ ...make(options), context: {} as FakeContext['context'] });
    expect((contextTrusting(bare.tls as never, ['REGISTRY-CA']) as unknown as FakeContext).options).toEqual({ ca: ['ROOT-1', 'ROOT-2', 'REGISTRY-CA'] });
  });

  it('a file that cannot be read is said once, and contexts are made as without it', () => {
    const { warnings } = defer(path.join(path.dirname(file), 'missing.pem'));
    const fake = fakeTls();
    trustDeferredCaCerts(fake.tls as never);
    const a = fake.make({ servername: 'x' });
    const b = fake.make(undefined);
    expect(a).not.toBe(b);
    expect([...a.added, ...b.added]).toEqual([]);
    expect(warnings).toEqual([`ignoring extra certs from ${path.join(path.dirname(file), 'missing.pem')} (NODE_EXTRA_CA_CERTS), load failed: ENOENT`]);
  });
});
