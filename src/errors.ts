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
  | 'LOCKED' // another run holds the lock of the work asked for (cache index --fail-if-locked), or this run lost it
  | 'ADVICE' // smart cache lint --strict found something to say (exit 1)
  | 'INCONSISTENT' // smart store check found a problem in the store (exit 1)
  | 'INTERNAL';

export interface SmartErrorOptions {
  /** The input at fault, as the user wrote it or as close to it as we know (path, reference, digest). */
  input?: string;
  /** One short sentence telling the user what to do about it. */
  hint?: string;
  cause?: unknown;
  /** A transient failure (connection reset, 429, 5xx): trying the same step again may succeed. */
  retryable?: boolean;
  /**
   * A transient failure its step already tried again as often as it may (an S3 request that
   * stalled on each of its attempts): `retryable` still speaks to whoever runs the command again
   * later; a loop around the step does not try it again, which would multiply the wait.
   */
  attemptsSpent?: boolean;
}

export class SmartError extends Error {
  readonly code: ErrorCode;
  readonly input: string | undefined;
  readonly hint: string | undefined;
  readonly retryable: boolean;
  readonly attemptsSpent: boolean;

  constructor(code: ErrorCode, message: string, options: SmartErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'SmartError';
    this.code = code;
    this.input = options.input;
    this.hint = options.hint;
    this.retryable = options.retryable ?? false;
    this.attemptsSpent = options.attemptsSpent ?? false;
  }

  /** Usage errors exit 2, everything else 1 (documented in `smart --help`). */
  get exitCode(): number {
    return this.code === 'USAGE' || this.code === 'INVALID_REFERENCE' ? 2 : 1;
  }
}

export function isSmartError(e: unknown): e is SmartError {
  return e instanceof SmartError;
}

const readersGone = new WeakSet<SmartError>();

/**
 * An archive written into a pipe whose reader went away (`docker-archive:/dev/stdout | head`): a
 * STORAGE error to the library's callers, which the CLI ends quietly with 141, as `-` and as
 * `tar cf /dev/stdout` (killed by SIGPIPE) do: the reader's choice, said by the status alone.
 */
export function readerGoneError(name: string, pipe: string, cause: unknown): SmartError {
  const e = new SmartError('STORAGE', `cannot write ${name}: its reader closed ${pipe} (EPIPE)`, { input: pipe, cause });
  readersGone.add(e);
  return e;
}

/** Whether `e`, or an error it wraps, is a readerGoneError. */
export function isReaderGone(e: unknown): boolean {
  for (let c = e, depth = 0; c && depth < 8; c = (c as Error).cause, depth++) if (c instanceof SmartError && readersGone.has(c)) return true;
  return false;
}

// C0 and C1 controls, DEL, the Unicode line and paragraph separators, and the bidirectional
// overrides and isolates (which can make text read differently from what it is).
// A lone U+DC80..U+DCFF is a byte of a name that is not UTF-8 (src/tar/byte-names.ts): shown as `\xE9`.
const UNPRINTABLE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]|(?<![\uD800-\uDBFF])[\uDC80-\uDCFF]/g;

function escapeChar(c: string): string {
  if (c === '\n') return '\\n';
  if (c === '\r') return '\\r';
  if (c === '\t') return '\\t';
  let code = c.charCodeAt(0);
  if (code >= 0xdc80 && code <= 0xdcff) code -= 0xdc00;
  return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
}

/**
 * `text` with every control character (and anything that could break or disguise a line on a
 * terminal) written as an escape (`\n`, `\x1b`, `\u202e`): safe to put in a one-line message.
 */
export function printable(text: string): string {
  return text.replace(UNPRINTABLE, escapeChar);
}

/**
 * An untrusted string (a name from an archive, a digest from a manifest, a reference typed by a
 * user) as it goes into a message: in double quotes, escaped as `printable` does, quotes and
 * backslashes escaped too, and cut at `max` characters.
 */
export function quoted(text: string, max = 200): string {
  const cut = text.length > max ? `${text.slice(0, max)}…` : text;
  return `"${printable(cut.replace(/[\\"]/g, (c) => `\\${c}`))}"`;
}

/**
 * An error that only says work was stopped (an AbortError, or CANCELLED): the consequence of
 * another failure or of the user's wish, never the cause of a failure to report in its place.
 */
export function isCancellation(e: unknown): boolean {
  if (isSmartError(e)) return e.code === 'CANCELLED';
  return (e as Error)?.name === 'AbortError' || (e as NodeJS.ErrnoException)?.code === 'ABORT_ERR';
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

/**
 * What the machine refuses, whatever the program does: a full or read-only disk, a path not ours
 * to write, a failing device, no file descriptors left. With the advice for each. Other errno codes
 * (ENOENT, EEXIST, ENOTEMPTY) stay unclassified: they mean a wrong path, which the caller words, or
 * a race between runs, which is a bug of ours to report as one.
 */
const REFUSALS: Record<string, string> = {
  ENOSPC: 'free space on that filesystem, or write somewhere else',
  EDQUOT: 'the disk quota is used up: free space under it, or write somewhere else',
  EFBIG: 'the file is larger than that filesystem allows: write somewhere else',
  EROFS: 'that filesystem is mounted read-only: write somewhere else',
  EACCES: 'check the permissions of that path',
  EPERM: 'check the permissions of that path',
  EIO: 'the device reported an I/O error: check the disk',
  EMFILE: 'too many open files: raise the limit (ulimit -n) or lower --jobs',
  ENFILE: "the system's table of open files is full: try again later",
  ENOTDIR: 'a part of that path is a file, not a directory: name another path',
};

/**
 * `e`, when it is such a refusal of the machine, as a STORAGE error: `what` (the destination, the
 * file being written) first, then the system's own message, and the advice as the hint. Anything
 * else: undefined.
 */
export function machineRefusal(e: unknown, what?: string): SmartError | undefined {
  if (!isErrno(e) || isSmartError(e)) return undefined;
  const hint = REFUSALS[e.code!];
  if (!hint) return undefined;
  const input = typeof e.path === 'string' ? e.path : undefined;
  return new SmartError('STORAGE', what ? `${what}: ${e.message}` : e.message, { ...(input ? { input } : {}), hint, cause: e });
}

/** A `.catch` handler: rethrows `e` as machineRefusal(e, what) when it is one, else as it is. */
export function rethrowRefusal(what: string): (e: unknown) => never {
  return (e) => {
    throw machineRefusal(e, what) ?? e;
  };
}

/** The advice for a refusal of the machine, as SmartErrorOptions to spread: `{ hint }`, or nothing. */
export function refusalHint(e: unknown): { hint?: string } {
  const hint = machineRefusal(e)?.hint;
  return hint ? { hint } : {};
}

/** What says a place cannot take more writes: its disk full, read-only, or not ours to write. */
const CANNOT_TAKE_MORE = new Set(['ENOSPC', 'EDQUOT', 'EFBIG', 'EROFS', 'EACCES', 'EPERM']);

/**
 * The system's error in `e` (or in an error it wraps) that says the place written cannot take
 * more, if it is one. For writes that are a favour, not the work asked for (the layer store a pull
 * keeps layers in for the next pull's sake): they stop, and the work goes on.
 */
export function cannotTakeMore(e: unknown): NodeJS.ErrnoException | undefined {
  for (let c = e, depth = 0; c && depth < 8; c = (c as Error).cause, depth++) {
    if (!isSmartError(c) && isErrno(c) && CANNOT_TAKE_MORE.has(c.code!)) return c;
  }
  return undefined;
}

/**
 * A system error's own words without the call and the paths Node appends (`ENOSPC: no space left
 * on device, copyfile '/a' -> '/b'` → `ENOSPC: no space left on device`): for a message that
 * names the file itself, in the user's terms rather than a temporary name of ours.
 */
export function systemWords(e: Error): string {
  return e.message.replace(/^([A-Z][A-Z0-9_]*: [^,]*), .*$/s, '$1');
}
