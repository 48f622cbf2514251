/**
 * The one error type of the library. The CLI is the only place that catches it and turns it into
 * a one-line message and an exit code; library code throws it and never prints.
 */

/** Stable error codes. Scripts may match on them; keep them stable. */
export type ErrorCode =
  | 'USAGE' // the command line is wrong (exit 2)
  | 'INVALID_REFERENCE' // an image name, tag or digest that does not parse (exit 2)
  | 'INVALID_DIGEST'
  | 'NOT_FOUND' // a path, repository, tag or blob that is not there
  | 'MANIFEST_INVALID' // a manifest, index or config that is not what it claims
  | 'NOT_AN_IMAGE' // an archive or directory that holds no image
  | 'DIGEST_MISMATCH' // bytes that do not hash to the digest they were named by
  | 'SIZE_MISMATCH'
  | 'CORRUPT_ARCHIVE' // a truncated or malformed tar or compressed stream
  | 'UNSAFE_ARCHIVE' // a tar entry that would write outside its root
  | 'LIMIT_EXCEEDED' // an input past a resource bound (size, JSON depth, decompression ratio, entry count): src/limits.ts
  | 'UNSUPPORTED' // a valid input we do not handle (media type, platform, transport)
  | 'PLATFORM_NOT_FOUND'
  | 'STORAGE' // an I/O error of a storage backend
  | 'REGISTRY' // an error answered by a registry
  | 'CANCELLED'
  | 'ADVICE' // smart cache lint --strict found something to say (exit 1)
  | 'INTERNAL';

export interface SmartErrorOptions {
  /** The input at fault, as the user wrote it or as close to it as we know (path, reference, digest). */
  input?: string;
  /** One short sentence telling the user what to do about it. */
  hint?: string;
  cause?: unknown;
  /** A transient failure (connection reset, 429, 5xx): trying the same step again may succeed. */
  retryable?: boolean;
}

export class SmartError extends Error {
  readonly code: ErrorCode;
  readonly input: string | undefined;
  readonly hint: string | undefined;
  readonly retryable: boolean;

  constructor(code: ErrorCode, message: string, options: SmartErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'SmartError';
    this.code = code;
    this.input = options.input;
    this.hint = options.hint;
    this.retryable = options.retryable ?? false;
  }

  /** Usage errors exit 2, everything else 1 (documented in `smart --help`). */
  get exitCode(): number {
    return this.code === 'USAGE' || this.code === 'INVALID_REFERENCE' ? 2 : 1;
  }
}

export function isSmartError(e: unknown): e is SmartError {
  return e instanceof SmartError;
}

/** Node's fs errors carry a code; this narrows to them. */
export function isErrno(e: unknown, code?: string): e is NodeJS.ErrnoException {
  return (
    typeof e === 'object' &&
    e !== null &&
    'code' in e &&
    typeof (e as { code: unknown }).code === 'string' &&
    (code === undefined || (e as { code: string }).code === code)
  );
}
