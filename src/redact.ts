/**
 * Text that came from elsewhere — a registry's error body, an S3 error, a credential helper's
 * stderr, an image name with credentials typed into it — made fit for a one-line message: secrets
 * replaced by `[redacted]`, control characters and line breaks gone, the length capped. Every
 * message the library builds from text it did not write goes through here first.
 */

export const REDACTED = '[redacted]';

/** Headers whose whole value is a credential, echoed raw (`Authorization: Basic …`), as JSON or as a Go map. */
const SECRET_HEADER =
  /\b(authorization|proxy-authorization|x-registry-auth|x-registry-token|x-auth-token|x-amz-security-token|cookie|set-cookie)(["']?\s*[:=]\s*\[?\s*["']?)((?:[A-Za-z][A-Za-z0-9-]*\s+)?[^\s"'\],;]+)/gi;
/** `Basic <credentials>` / `Bearer <token>` wherever they stand; `Bearer realm="…"` (a challenge) is no secret. */
const AUTH_SCHEME = /\b(basic|bearer)(\s+)([A-Za-z0-9._~+/-]+=*)/gi;
/** JSON fields that hold secrets: `"password": "…"`, `"Secret"`, `"access_token"`, docker config's `"auth"`. */
const SECRET_JSON = /("(?:[A-Za-z0-9_-]*(?:password|passwd|secret|token)[A-Za-z0-9_-]*|auth)"\s*:\s*)("(?:[^"\\]|\\.)*"?|[^\s,}\]]+)/gi;
/** `password=…`, `X-Amz-Signature=…`, `access_token=…` in query strings, forms and prose. */
const SECRET_PARAM = /\b([A-Za-z0-9_-]*(?:password|passwd|secret|token|signature|credential)[A-Za-z0-9_-]*|sig)(=)([^\s&"',;]+)/gi;
/** `password: …` as YAML, logs and Go maps print it. */
const SECRET_COLON = /\b([A-Za-z0-9_-]*(?:password|passwd|secret)[A-Za-z0-9_-]*)(\s*:\s*)(?!\[redacted\])([^\s"',;\]}]+)/gi;
/** `scheme://user:password@host`: the whole userinfo (not `docker://busybox@sha256:…`, a digest). */
const URL_USERINFO = /\b([a-z][a-z0-9+.-]*:\/\/)[^\s/?#]*@(?![a-z0-9]+:[a-fA-F0-9]{32,})/gi;
const JWT = /\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*/g;
const AWS_KEY_ID = /\b(?:AKIA|ASIA)[A-Z0-9]{16}\b/g;
const PRIVATE_KEY = /-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)/g;
/** C0 and C1 controls, zero-width and bidirectional formatting characters, line and paragraph separators. */
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2069\ufeff]+/g;

/**
 * `text` with every secret it is seen to hold replaced by `[redacted]`: credentials in
 * Authorization-like headers, `Basic`/`Bearer` values, password/secret/token fields (JSON, query
 * strings, `key: value`), URL userinfo, JWTs, AWS key ids, private keys, and any of the `known`
 * secrets (the credentials and tokens the caller holds, also in base64 and URL-encoded forms).
 */
export function redactSecrets(text: string, known: readonly string[] = []): string {
  let out = text;
  for (const secret of expandKnown(known)) out = out.split(secret).join(REDACTED);
  return out
    .replace(PRIVATE_KEY, REDACTED)
    .replace(URL_USERINFO, `$1${REDACTED}@`)
    .replace(SECRET_HEADER, (_m, name: string, sep: string) => `${name}${sep}${REDACTED}`)
    .replace(AUTH_SCHEME, (m, scheme: string, space: string, value: string, at: number, all: string) =>
      // `Basic realm="…"` is a challenge, and `basic authentication` prose: neither is a credential.
      all[at + m.length] === '"' || /^[a-z]+$/.test(value) ? m : `${scheme}${space}${REDACTED}`,
    )
    .replace(SECRET_JSON, (_m, key: string, value: string) => `${key}${value.startsWith('"') ? `"${REDACTED}"` : REDACTED}`)
    .replace(SECRET_PARAM, (m, name: string, eq: string, value: string) => (value === REDACTED ? m : `${name}${eq}${REDACTED}`))
    .replace(SECRET_COLON, (_m, name: string, sep: string) => `${name}${sep}${REDACTED}`)
    .replace(JWT, REDACTED)
    .replace(AWS_KEY_ID, REDACTED);
}

/**
 * `text` with every word that looks like a secret (8 characters or more, letters mixed with digits
 * or with `+`/`=`) replaced by `[redacted]`, the `keep` words (a host name, a program) excepted. For
 * text that may hold a secret nobody told us, such as a credential helper's own message on
 * failure (the helper holds the secret): a word hidden wrongly costs less there than a secret shown.
 */
export function redactSecretLike(text: string, keep: readonly string[] = []): string {
  return text.replace(/\S{8,}/g, (word) => {
    const core = word.replace(/^[("'[{<]+|[)"'\]}>,;:.!?]+$/g, '');
    if (core.length < 8 || word.includes(REDACTED) || keep.includes(core)) return word;
    const secretLike = /[A-Za-z]/.test(core) && /[0-9+=]/.test(core);
    return secretLike ? word.replace(core, REDACTED) : word;
  });
}

/** The forms a known secret may be echoed in: as is, base64 (a Basic header), URL-encoded. */
function expandKnown(known: readonly string[]): string[] {
  const forms = new Set<string>();
  for (const s of known) {
    // Too short to tell from ordinary text: replacing it would garble the message, not protect anything.
    if (s.length < 4) continue;
    forms.add(s);
    forms.add(Buffer.from(s).toString('base64').replace(/=+$/, ''));
    forms.add(encodeURIComponent(s));
  }
  // Longest first, so a secret inside another's encoded form is not cut in half.
  return [...forms].filter((f) => f.length >= 4).sort((a, b) => b.length - a.length);
}

/** One line: control characters and line breaks become spaces, runs of blanks one space. */
export function oneLine(text: string): string {
  return text.replace(CONTROL, ' ').replace(/\s+/g, ' ').trim();
}

/** At most `max` characters, `…` marking a cut (never inside a surrogate pair). */
export function capLength(text: string, max: number): string {
  if (text.length <= max) return text;
  let end = Math.max(0, max - 1);
  const code = text.charCodeAt(end);
  if (code >= 0xdc00 && code <= 0xdfff) end--;
  return `${text.slice(0, end)}…`;
}

/**
 * Text from a remote party (or a program's output) as it may enter a message: one line, secrets
 * redacted, at most `max` characters (default 200). Redaction runs before the cut, so a secret
 * is never half-shown because the cut fell inside it.
 */
export function remoteText(text: string, options: { max?: number; known?: readonly string[] } = {}): string {
  const max = options.max ?? 200;
  // Bound the work on a large body: nothing past the cut is shown, and a secret straddling this
  // bound lies past the cut too.
  const bounded = text.length > max * 8 ? text.slice(0, max * 8) : text;
  return capLength(redactSecrets(oneLine(bounded), options.known), max);
}

/** A URL for a message: its userinfo and secret query parameters redacted. */
export function redactUrl(url: string): string {
  return redactSecrets(oneLine(url));
}

/** `docker://`, `s3://`: a name's transport when an authority (where userinfo could stand) follows. */
const SCHEME = /^[a-z][a-z0-9+.-]*:\/\//i;
/** What follows the `@` of `busybox@sha256:…`: a digest, even a malformed one. */
const DIGEST_START = /^(?:sha256|sha384|sha512|blake3)[:+]/i;

/**
 * Where credentials were typed into an image name (`docker://user:pass@host/repo`,
 * `user:pass@host/repo`, `s3://key:secret@bucket#repo`): the index of the `@` ending them, else -1.
 * Before the first `/`, an `@` followed by a digest ends a name (`busybox@sha256:…`); without a
 * transport, `name@x` with no `/` and no `user:` is taken for a bad digest too.
 */
export function userinfoEnd(name: string): number {
  const scheme = SCHEME.exec(name)?.[0].length;
  const start = scheme ?? 0;
  const slash = name.indexOf('/', start);
  const authority = slash < 0 ? name.slice(start) : name.slice(start, slash);
  const at = authority.lastIndexOf('@');
  if (at < 0) return -1;
  if (slash < 0) {
    if (DIGEST_START.test(authority.slice(at + 1))) return -1;
    if (scheme === undefined && !authority.slice(0, at).includes(':')) return -1;
  }
  return start + at;
}

/** An image name for a message: credentials typed into it replaced by `[redacted]`; one line. */
export function redactImageName(name: string): string {
  const at = userinfoEnd(name);
  const scheme = SCHEME.exec(name)?.[0] ?? '';
  return oneLine(at < 0 ? name : `${scheme}${REDACTED}${name.slice(at)}`);
}
