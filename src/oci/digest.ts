/** Content digests: `sha256:<64 lowercase hex>`, the only algorithm the toolkit writes. */
import { createHash } from 'node:crypto';
import { SmartError, quoted } from '../errors.js';

/** A validated digest string. The brand keeps unchecked strings from being passed as digests. */
export type Digest = string & { readonly __brand: 'Digest' };

const SHA256_RE = /^sha256:[a-f0-9]{64}$/;
// The OCI grammar allows other algorithms; we recognise them to give a precise error.
const ANY_DIGEST_RE = /^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;

export function isDigest(s: string): s is Digest {
  return SHA256_RE.test(s);
}

/** Validates `s` as a sha256 digest, throwing INVALID_DIGEST naming `input` (or `s`). */
export function parseDigest(s: string, input?: string): Digest {
  if (SHA256_RE.test(s)) return s as Digest;
  if (ANY_DIGEST_RE.test(s) && !s.startsWith('sha256:')) {
    throw new SmartError('UNSUPPORTED', `unsupported digest algorithm in ${quoted(s, 100)}: only sha256 is supported`, {
      input: input ?? s,
    });
  }
  throw new SmartError('INVALID_DIGEST', `invalid digest ${quoted(s, 100)}: expected sha256:<64 lowercase hex digits>`, {
    input: input ?? s,
  });
}

/** The hex part of a digest, as used in storage paths. */
export function digestHex(d: Digest): string {
  return d.slice('sha256:'.length);
}


export function sha256Digest(data: Uint8Array | string): Digest {
  return `sha256:${createHash('sha256').update(data).digest('hex')}` as Digest;
}


/** Short form for human output: `sha256:0123456789ab`. */
export function shortDigest(d: string): string {
  return d.startsWith('sha256:') ? d.slice(0, 7 + 12) : d;
}
