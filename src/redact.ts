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

/** Prefixes of tokens that services issue (GitLab, GitHub, Slack, OpenAI/Stripe, AWS, npm, DigitalOcean, Hugging Face, PyPI, Google). */
const TOKEN_PREFIX =
  /^(?:glpat-|glptt-|glrt-|gldt-|ghp_|gho_|ghu_|ghs_|ghr_|github_pat_|xox[abprs]-|sk-|sk_live_|sk_test_|rk_live_|pk_live_|AKIA|ASIA|npm_|dop_v1_|doo_v1_|hf_|pypi-|AIza|ya29\.|SG\.)\S{4,}/;
/** Words that say a secret follows: `secret hunter`, `password swordfish`, `token xyzzy`, `key k`. */
const SECRET_WORD = /^(?:secrets?|passwords?|passwd|passphrase|pw|pwd|tokens?|keys?|apikey|api[-_]key|pat|auth)$/i;
/** Words between such a word and its value: `password is swordfish`, `secret was x`. */
const LINKING_WORD = /^(?:is|was|=|:|of)$/i;
/** Prose that follows such a word and is no secret: `secret key`, `token rejected`, `password for alice`. */
const PROSE_AFTER_SECRET_WORD = new Set(
  ('a an the and or not no none for from in on to with by at as if it be been are were has had have does did do ' +
    'cannot could can must should may will would store stored file found missing required rejected invalid expired ' +
    'denied revoked incorrect wrong empty unknown unset given set mismatch error failed lookup helper manager ' +
    'locked needed provided').split(' '),
);
/** Names of errors and exceptions, as cloud helpers print them (`AccessDeniedException`, `NoCredentialProviders`): what to fix, no secret. */
const ERROR_NAME = /^(?:[A-Z][a-z]+)+(?:Exception|Error|Errors|Providers|Denied|NotFound|Failed|Expired|Unauthorized|Forbidden)$/;
/** `user:password` as one word (`ci:swordfish`), not a URL, a digest, a port or a `key:` label. */
const USER_COLON_PASSWORD = /^([a-z][\w.-]{0,63}):(?!\/\/)(?!\d+$)(\S{4,})$/i;
const NOT_A_USER = /^(?:sha\d+|md5|https?|file|docker|oci|s3|arn)$/i;
/** Technical words that mix letters with digits and hold no secret. */
const PLAIN_WITH_DIGITS = /^(?:base(?:32|64)|sha(?:1|224|256|384|512)|md5|utf-?(?:8|16)|ipv[46]|http[23]|oauth2|amd64|arm64|aarch64|x86_64|i[3-6]86|ppc64le|s390x|riscv64|v\d+(?:\.\d+)*)$/i;

/**
 * Whether `core` (a word without the punctuation around it) looks like a secret: a known token
 * prefix; letters mixed with digits, `+` or `=` (6 characters or more); or upper and lower case
 * mixed inside the word (`AbCdEf`, not `Error` or `HTTP`).
 */
function looksSecret(core: string): boolean {
  if (TOKEN_PREFIX.test(core)) return true;
  if (ERROR_NAME.test(core)) return false;
  if (core.length < 6) return false;
  if (/[A-Za-z]/.test(core) && /[0-9+=]/.test(core)) return !PLAIN_WITH_DIGITS.test(core);
  return /[a-z]/.test(core) && /[A-Z]/.test(core.slice(1));
}

/**
 * `text` with every word that looks like a secret replaced by `[redacted]`, the `keep` words (a host
 * name, a program) excepted: a known token prefix (`glpat-`, `ghp_`, `xoxb-`, `AKIA`…), letters
 * mixed with digits or with `+`/`=` (6 characters or more), upper and lower case mixed inside the
 * word, and the word that follows `secret`, `password`, `token` or `key` (unless it is plain prose:
 * `secret key`, `token rejected`). Prose words (all lower case, or one leading capital) stay. For
 * text that may hold a secret nobody told us, such as a credential helper's own message on failure
 * (the helper holds the secret): a word hidden wrongly costs less there than a secret shown.
 */
export function redactSecretLike(text: string, keep: readonly string[] = []): string {
  let afterSecretWord = false;
  return text.replace(/\S+/g, (word) => {
    const core = word.replace(/^[("'[{<]+|[)"'\]}>,;:.!?]+$/g, '');
    const follows = afterSecretWord;
    afterSecretWord = false;
    // A kept word (the registry's host) stays, also written with its scheme or a path (`https://host:5000/v2/`).
    if (!core || word.includes(REDACTED) || keep.some((k) => core === k || (k.length >= 4 && core.includes(k)))) return word;

    const lower = core.toLowerCase();
    if (SECRET_WORD.test(core) || (LINKING_WORD.test(core) && follows)) {
      // `password: hunter` ends the word with its colon: what follows is the value either way; a
      // comma or a full stop ends the clause (`No secret key, HTTP 401`).
      afterSecretWord = !/[,;.!?]$/.test(word);
      return word;
    }
    if (looksSecret(core) || (follows && !PROSE_AFTER_SECRET_WORD.has(lower))) return word.replace(core, REDACTED);
    const pair = USER_COLON_PASSWORD.exec(core);
    if (pair && !NOT_A_USER.test(pair[1]!)) return word.replace(core, `${pair[1]}:${REDACTED}`);
    return word;
  });
}

/**
 * At most `max` characters, cut at a word boundary (`…` marking the cut) and with every bracket
 * the kept text opened closed again after it: a cut never shows part of a word, nor leaves a `(`
 * open in the message around it.
 */
export function capAtWord(text: string, max: number): string {
  if (text.length <= max) return text;
  let kept = text.slice(0, max);
  while (kept) {
    // Drop the word the cut fell inside (a single word longer than the cap is cut where it must).
    const space = kept.lastIndexOf(' ');
    kept = space > 0 ? kept.slice(0, space).trimEnd() : kept.slice(0, -1).replace(/[\uD800-\uDBFF]$/, '');
    const closers = unclosed(kept);
    if (kept.length + 1 + closers.length <= max) return `${kept}…${closers}`;
  }
  return '…';
}

/** The brackets `text` leaves open, closed, innermost first. */
function unclosed(text: string): string {
  const pairs: Record<string, string> = { '(': ')', '[': ']', '{': '}' };
  const open: string[] = [];
  for (const c of text) {
    if (c in pairs) open.push(pairs[c]!);
    else if (open.at(-1) === c) open.pop();
  }
  return open.reverse().join('');
}

/**
 * Text from a party that holds secrets and may say one nobody told us (a credential helper's
 * stderr) as it may enter a message: `remoteText`'s work, then every word that looks like a secret
 * hidden (`redactSecretLike`, the `keep` words excepted), both before the cut, which falls between
 * words and closes the brackets it leaves open.
 */
export function untrustedText(text: string, options: { max?: number; keep?: readonly string[] } = {}): string {
  const max = options.max ?? 200;
  return capAtWord(redactSecretLike(redactSecrets(oneLine(bounded(text, max))), options.keep), max);
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
  return capLength(redactSecrets(oneLine(bounded(text, max)), options.known), max);
}

/**
 * The start of `text` that can show in `max` characters, with room to spare: bounds the work on a
 * large body. Nothing past the cut is shown, and a secret straddling this bound lies past the cut too.
 */
function bounded(text: string, max: number): string {
  return text.length > max * 8 ? text.slice(0, max * 8) : text;
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
