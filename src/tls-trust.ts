/**
 * NODE_EXTRA_CA_CERTS, loaded at the first TLS connection instead of when Node starts.
 *
 * Node 20 reads that file, and builds the root store it adds it to, before any JS runs: 35-50 ms
 * of every command where the environment names a CA bundle (CI images often name the system's,
 * some 140 certificates), a third of Node's start-up here, though most commands talk plain HTTP
 * to a registry on loopback, or to no network at all. So the launchers (the first line of
 * bin/*.js) start Node with the variable moved to SMART_DEFERRED_CA_CERTS, the CLI hands it here
 * (deferExtraCaCerts), and each TLS client of the library (registry, S3, Redis) calls
 * trustDeferredCaCerts before it connects. That makes tls.createSecureContext trust what Node
 * would have trusted: the bundled roots and the file's certificates, in every context made
 * without an explicit `ca` (an explicit `ca` replaces both, as it does in Node). The AWS SDK's
 * own clients (credentials from STS or SSO) make their contexts through it too.
 *
 * A program that embeds the library never calls deferExtraCaCerts: Node loaded its file already.
 */
import { readFileSync } from 'node:fs';
import type { SecureContext, SecureContextOptions } from 'node:tls';

type Tls = typeof import('node:tls');

/** Where bin/*.js puts NODE_EXTRA_CA_CERTS before starting Node. */
export const DEFERRED_CA_CERTS_ENV = 'SMART_DEFERRED_CA_CERTS';

/**
 * The options of tls.createSecureContext, other than `ca`, that make a context differ from the
 * default one (Node 20-24). A context asked for with any of them is made afresh, with the roots
 * and the file's certificates; the others share one.
 */
const CONTEXT_OPTIONS = [
  'allowPartialTrustChain', 'cert', 'ciphers', 'clientCertEngine', 'crl', 'dhparam', 'ecdhCurve',
  'honorCipherOrder', 'key', 'maxVersion', 'minVersion', 'passphrase', 'pfx', 'privateKeyEngine',
  'privateKeyIdentifier', 'secureOptions', 'secureProtocol', 'sessionIdContext', 'sessionTimeout',
  'sigalgs', 'ticketKeys',
] as const;

/** Whether a context made with `options` is the same as one made with none (tls.connect sets `ciphers` to the default). */
function isDefault(tls: Tls, options: SecureContextOptions): boolean {
  const given = options as Record<string, unknown>;
  return CONTEXT_OPTIONS.every((k) => given[k] === undefined || (k === 'ciphers' && given[k] === tls.DEFAULT_CIPHERS));
}

let deferred: { file: string; onWarning: (message: string) => void } | undefined;

/** A context of its own with the default trust (roots and the deferred file), for each node:tls that trustDeferredCaCerts changed. */
const freshDefaults = new WeakMap<Tls, () => SecureContext>();

/** The native context's addCACert, where Node has it (20-24 do): certificates added to this context alone. */
function addCACertOf(context: SecureContext): ((pem: string) => void) | undefined {
  const native = (context as unknown as { context?: { addCACert?: (pem: string) => void } }).context;
  return typeof native?.addCACert === 'function' ? (pem) => native.addCACert!(pem) : undefined;
}

/**
 * Takes the file bin/*.js set aside (if it did) and puts NODE_EXTRA_CA_CERTS back into `env`, for
 * the programs this one starts (credential helpers, builders). `onWarning` hears, once, that the
 * file could not be loaded; Node says the same at start-up and goes on without it.
 */
export function deferExtraCaCerts(env: NodeJS.ProcessEnv, onWarning: (message: string) => void): void {
  const file = env[DEFERRED_CA_CERTS_ENV];
  if (file === undefined) return;
  delete env[DEFERRED_CA_CERTS_ENV];
  env.NODE_EXTRA_CA_CERTS = file;
  if (file !== '') deferred = { file, onWarning };
}

/**
 * Makes `tls` trust the deferred CA file (read at the first context made, once). Every TLS client
 * of the library calls this with node:tls before it may connect; without a deferred file, or
 * after the first call, it does nothing.
 */
export function trustDeferredCaCerts(tls: Tls): void {
  if (!deferred) return;
  const { file, onWarning } = deferred;
  deferred = undefined;
  const original = tls.createSecureContext;
  // A context as Node makes one with the file: the roots, then the file's certificates. Added the
  // way the `ca` option adds them (the native context's addCACert), on a copy of Node's root store
  // (parsed once per process): ~30 ms less than `ca: [...tls.rootCertificates, text]`, which
  // parses the roots again. The public form stays for a Node without that method.
  const make = (options: SecureContextOptions | undefined, text: string): SecureContext => {
    const context = original(options);
    const add = addCACertOf(context);
    if (!add) return original({ ...options, ca: [...tls.rootCertificates, text] });
    add(text);
    return context;
  };
  // The file's text: undefined until the first context is asked for, null if it cannot be used.
  let pem: string | null | undefined;
  let shared: SecureContext | undefined;
  const load = (): boolean => {
    if (pem === undefined) {
      try {
        const text = readFileSync(file, 'utf8');
        // A file that cannot be read is said once, here. Text that is not PEM adds nothing, as
        // the `ca` option and Node at start-up treat it.
        shared = make(undefined, text);
        pem = text;
      } catch (e) {
        const why = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
        onWarning(`ignoring extra certs from ${file} (NODE_EXTRA_CA_CERTS), load failed: ${why}`);
        pem = null;
      }
    }
    return pem !== null;
  };
  // Called per connection (https.Agent, ioredis and the SDK pass no context of their own): the
  // default one is made once and shared, as Node shares its root store.
  tls.createSecureContext = (options?: SecureContextOptions): SecureContext => {
    if (options?.ca !== undefined || !load()) return original(options);
    return options && !isDefault(tls, options) ? make(options, pem!) : shared!;
  };
  freshDefaults.set(tls, () => (load() ? make(undefined, pem!) : original()));
}

/**
 * One context trusting what Node trusts by default (its roots, and NODE_EXTRA_CA_CERTS) and
 * `extra` (PEM), for all the connections of a client (--cert-dir, certs.d, a Redis CA), as skopeo
 * adds a certs.d directory to the system's pool. Passed as `secureContext`, because a `ca` option
 * is parsed again for every new connection. The certificates are added to a context of its own
 * (addCACert: Node copies the shared root store for it first), not given as
 * `ca: [...tls.rootCertificates, ...extra]`, which turns Node's parsed roots back into text and
 * parses them again: 33 ms instead of 68 ms here (what is left is Node parsing its roots, once per
 * process, as any verified connection does), paid by every command that trusts a registry's own CA.
 * The public form stays for a Node without that method.
 */
export function contextTrusting(tls: Tls, extra: readonly string[]): SecureContext {
  const context = (freshDefaults.get(tls) ?? (() => tls.createSecureContext()))();
  const add = addCACertOf(context);
  if (!add) return tls.createSecureContext({ ca: [...tls.rootCertificates, ...extra] });
  for (const pem of extra) add(pem);
  return context;
}
