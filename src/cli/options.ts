/** Flags shared by the commands, and what they turn into. */
import { SmartError } from '../errors.js';
import type { OutputOptions } from './output.js';
import type { ProgressMode } from './progress.js';

export const EXIT_HELP = `
Image names (skopeo-style TRANSPORT:REFERENCE):
  oci:DIR[:TAG]                      OCI image layout directory
  oci-archive:FILE[:TAG]             OCI image layout in a tar file; FILE "-" is stdin or stdout
  docker-archive:FILE[:NAME:TAG|:@N] docker save / docker load tar; FILE "-" is stdin or stdout
  docker://HOST[:PORT]/REPO[:TAG|@DIGEST]  a registry, over the OCI Distribution API
  file:ROOT#REPO[:TAG|@DIGEST]       a Distribution registry's storage on disk (ROOT = rootdirectory)
  s3://BUCKET[/ROOT]#REPO[:TAG|@DIGEST]  a Distribution registry's storage in S3 (ROOT = rootdirectory)
  rootfs:DIR                         (pull only) the flattened root filesystem
  bundle:DIR                         (pull only) an OCI runtime bundle for runc: DIR/config.json + DIR/rootfs

Exit status: 0 on success, 2 on a usage error (bad flags, malformed image name), 1 on any other error,
  130/143/129 interrupted (SIGINT/SIGTERM/SIGHUP), 141 when the reader of an image on stdout went away (| head).
Errors: one line on stderr, "smart: error [CODE]: message (hint)"; with --json also a document on stdout.
Environment: XDG_CACHE_HOME (local state under $XDG_CACHE_HOME/smartlayer, default ~/.cache/smartlayer;
  also the compiled code of the packages a command loads, unless SMART_COMPILE_CACHE=0);
  SMART_REGISTRY_AUTH=USER:PASSWORD (as --creds; unused when a command talks to two registries);
  REGISTRY_AUTH_FILE (as --authfile), XDG_RUNTIME_DIR, XDG_CONFIG_HOME, DOCKER_CONFIG (registry credentials:
  containers auth.json, then Docker's config.json); AWS_ENDPOINT_URL_S3, AWS_REGION, AWS_PROFILE,
  AWS_ACCESS_KEY_ID... (S3, as the AWS CLI reads them);
  SMART_MAX_DECOMPRESSION_RATIO (default 100; 0: no bound) and SMART_MIN_DECOMPRESSION_BYTES (default
  256 MiB): a compressed layer that decompresses past both is refused as a decompression bomb.`;

export interface CommonFlags {
  compression?: string;
  dockerfile?: string;
  context?: string;
  target?: string;
  buildArg?: string[];
  allPlatforms?: boolean;
  platformMismatch?: string;
  digestfile?: string;
  authfile?: string;
  credsFile?: string;
  username?: string;
  passwordStdin?: boolean;
  registryMirror?: string[];
  stallTimeout?: number;
  timeout?: number;
  redis?: string;
  progress?: string;
  layerStore?: string;
  link?: boolean;
  keepLayers?: boolean;
  force?: boolean;
  prune?: string | boolean;
  creds?: string;
  srcCreds?: string;
  destCreds?: string;
  insecureRegistry?: string[];
  certDir?: string[];
  s3Endpoint?: string;
  s3Region?: string;
  json?: boolean;
  quiet?: boolean;
  debug?: boolean;
  jobs?: number;
  platform?: string;
  cacheDir?: string;
  compressionLevel?: number | 'fast';
  tagCacheTtl?: number;
}

/**
 * One command-line option, declared once: the commander program (help, errors, every command) is
 * built from these, and so is the fast path that parses a plain `push`/`pull` without loading
 * commander at all (it is a good part of the start-up time of a push that has nothing to send).
 */
export interface OptionSpec {
  /** As commander takes them: `-q, --quiet`, `--jobs <n>`, `--prune [days]`. */
  flags: string;
  description: string;
  choices?: readonly string[];
  default?: unknown;
  /** Turns the value into what the command gets; throws an Error whose message explains a bad one. */
  parse?: (value: string) => unknown;
  /** Repeatable: every value is kept, in order (default []). */
  repeatable?: boolean;
}

export function positiveInt(name: string, max: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1 || n > max) throw new Error(`${name} must be an integer from 1 to ${max}`);
    return n;
  };
}

export const COMMON_OPTIONS: readonly OptionSpec[] = [
  { flags: '--json', description: 'print the result, or the error, as one JSON document on stdout' },
  { flags: '-q, --quiet', description: 'print nothing but errors (and the --json document, or the reference a push stored)' },
  { flags: '--debug', description: 'print stack traces of errors' },
  {
    flags: '--progress <mode>',
    description: 'progress on stderr: auto (live on a terminal, plain lines otherwise), tty, plain, json (one event a line), none',
    choices: ['auto', 'tty', 'plain', 'json', 'none'],
    default: 'auto',
  },
  { flags: '--jobs <n>', description: 'layers in flight at once (default: from the core count)', parse: positiveInt('--jobs', 256) },
  {
    flags: '--platform <os/arch[/variant]>',
    description: 'copy this platform only: picked from a multi-platform image, checked against a single-platform one (default: push copies every platform, pull picks this machine\'s)',
  },
  { flags: '--all-platforms', description: 'copy every platform of a multi-platform image and the index itself, digests unchanged (what push does by default; a pull into a store or layout does it on request)' },
  {
    flags: '--platform-mismatch <action>',
    description: 'a single-platform image of another platform than the one wanted: error, or warn and copy it (default: error with --platform, warn for the machine\'s own)',
    choices: ['error', 'warn'],
  },
  { flags: '--digestfile <file>', description: 'after the copy, write the digest of the manifest (or index) written to FILE, as skopeo does' },
  { flags: '--cache-dir <dir>', description: 'where local state lives (default: $XDG_CACHE_HOME/smartlayer)' },
  { flags: '--redis <url>', description: 'share the metadata cache in Redis: redis://, rediss://, redis+cluster://h1:p1,h2:p2 (default: $SMART_REDIS_URL; else on disk)' },
  {
    flags: '--creds <user:password>',
    description: 'credentials for the registry the command talks to; with two registries use --src-creds/--dest-creds (default: $SMART_REGISTRY_AUTH, then auth.json and ~/.docker/config.json)',
  },
  { flags: '--creds-file <file>', description: 'as --creds, read from FILE (USER:PASSWORD on its first line): the secret stays out of ps and logs' },
  { flags: '--username <user>', description: 'with --password-stdin: the user of the credentials' },
  { flags: '--password-stdin', description: 'as --creds, the password read from stdin (with --username), as docker login --password-stdin' },
  {
    flags: '--authfile <file>',
    description: 'the containers auth.json to read credentials from, as podman/skopeo login write it, instead of the default files (default: $REGISTRY_AUTH_FILE)',
  },
  { flags: '--src-creds <user:password>', description: 'registry credentials for the source only' },
  { flags: '--dest-creds <user:password>', description: 'registry credentials for the destination only' },
  { flags: '--insecure-registry <host[:port]>', description: 'allow plain HTTP and unverified TLS for this registry (repeatable)', repeatable: true },
  { flags: '--cert-dir <dir>', description: 'directory of extra CA certificates (*.crt) for registries (repeatable)', repeatable: true },
  { flags: '--registry-mirror <host[:port]>', description: 'a Docker Hub mirror to pull from first (repeatable; registries.conf mirrors apply too)', repeatable: true },
  {
    flags: '--stall-timeout <seconds>',
    description: 'abort and retry a transfer that makes no progress for this long',
    parse: positiveInt('--stall-timeout', 86_400),
    default: 30,
  },
  { flags: '--timeout <seconds>', description: 'give up on the whole command after this long', parse: positiveInt('--timeout', 31_536_000) },
  { flags: '--s3-endpoint <url>', description: 'S3 endpoint (default: $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL)' },
  { flags: '--s3-region <region>', description: 'S3 region (default: $AWS_REGION, then us-east-1)' },
];

/** Which image a source's tag names: asked of the store every time, unless the user trades that away. */
const TAG_CACHE_TTL_OPTION: OptionSpec = {
  flags: '--tag-cache-ttl <seconds>',
  description:
    "use what the metadata cache learned of a source tag within this long instead of asking the store; the cache, and whoever can write it, then decides which image the tag means (default 0: always ask the store)",
  parse: (v: string): number => {
    const n = Number(v);
    if (!/^\d+$/.test(v) || n > 86_400) throw new Error('--tag-cache-ttl must be an integer from 0 to 86400 (seconds)');
    return n;
  },
};

/** `push`'s own options, before the common ones. */
export const PUSH_OPTIONS: readonly OptionSpec[] = [
  // No default of its own (gzip is the library's): a value present was typed, and is refused where no layer is compressed.
  { flags: '--compression <format>', description: 'what layers that must be compressed become (default: gzip)', choices: ['gzip', 'zstd'] },
  {
    flags: '--compression-level <n>',
    description: 'level for layers that must be compressed (gzip 1-12 with libdeflate, 1-9 with zlib; zstd 1-19; default: chosen by measurement), or fast: gzip by ISA-L (a few percent larger, ~3x faster), zstd 1',
    parse: (v: string): number | 'fast' => {
      if (v === 'fast') return 'fast';
      const n = Number(v);
      if (!Number.isInteger(n) || n < 1 || n > 19) throw new Error('--compression-level must be an integer from 1 to 19, or fast');
      return n;
    },
  },
  { flags: '--dockerfile <file>', description: 'the Dockerfile the image was built from: each layer is annotated with its step, for smart cache' },
  { flags: '--context <dir>', description: 'the build context of --dockerfile (default: its directory)' },
  { flags: '--target <stage>', description: 'the stage of --dockerfile that was built (default: the last)' },
  { flags: '--build-arg <key=value>', description: 'a build argument the image was built with (repeatable)', repeatable: true },
  TAG_CACHE_TTL_OPTION,
];

/** `pull`'s own options, before the common ones. */
export const PULL_OPTIONS: readonly OptionSpec[] = [
  { flags: '--layer-store <dir>', description: 'where layers are kept between pulls, unpacked or as the compressed blobs fetched (default: CACHE_DIR/layer-store)' },
  { flags: '--link', description: 'hardlink files from the layer store into rootfs:/bundle: (fast; the tree then shares inodes with the store: read-only uses)' },
  {
    flags: '--keep-layers',
    description: 'keep the layers a rootfs:/bundle: pull fetches unpacked in the layer store, for the next pulls (default: for bundles, and whenever the filesystem clones files or with --link; else the compressed blobs fetched from a registry or S3 are kept)',
  },
  { flags: '--no-keep-layers', description: 'keep nothing this pull fetches in the layer store, not even the compressed blobs a pull from a registry or S3 keeps by default (what is kept is still read)' },
  { flags: '--prune [days]', description: 'after the pull, remove layers and kept blobs that nothing pulled or warmed within DAYS (default 7) uses' },
  { flags: '--force', description: 'let rootfs:/bundle: replace a non-empty directory that smart pull did not make (its contents are lost)' },
  TAG_CACHE_TTL_OPTION,
];

/**
 * `copy`'s options: push's and pull's (the mode is chosen by the destination, and the options of
 * the other mode are refused), with no defaults of their own: a value present was typed.
 */
export const COPY_OPTIONS: readonly OptionSpec[] = [
  ...PUSH_OPTIONS.map(({ default: _, ...spec }) => (spec.flags === TAG_CACHE_TTL_OPTION.flags ? TAG_CACHE_TTL_OPTION : spec)),
  ...PULL_OPTIONS.filter((spec) => spec !== TAG_CACHE_TTL_OPTION),
];

/**
 * An option read only in some cases (by command, destination, or the other options given): given in
 * another, it would be ignored without a word, so it is refused there in one usage line naming the
 * option as it was typed and where it applies. The commands list theirs (transfer.ts, cache.ts).
 */
export interface OptionRule<C> {
  /** The option's key in the parsed flags. */
  key: string;
  /** Whether the option is read in this case, with this value. */
  applies(context: C, value: unknown): boolean;
  /** Where it is read: `pulls into rootfs: or bundle:`. */
  where: string;
  /** The case it was given in, when not the command's: `no --dockerfile was given`. */
  situation?: string;
  hint?: (flag: string, context: C) => string;
}

/** The option as it was typed: `--keep-layers`, or `--no-keep-layers` for false. */
function flagAsTyped(key: string, value: unknown): string {
  const long = key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
  return value === false ? `--no-${long}` : `--${long}`;
}

/** Refuses the first option of `flags` (typed: no default holds a value) that a rule says is not read in `context`; `situation`: the case, for the message. */
export function refuseIgnoredOptions<C>(flags: object, context: C, rules: readonly OptionRule<C>[], situation: string): void {
  for (const rule of rules) {
    const value = (flags as Record<string, unknown>)[rule.key];
    if (value === undefined || (Array.isArray(value) && value.length === 0) || rule.applies(context, value)) continue;
    const flag = flagAsTyped(rule.key, value);
    throw new SmartError('USAGE', `${flag} applies to ${rule.where}, and ${rule.situation ?? situation}`, { input: flag, ...(rule.hint ? { hint: rule.hint(flag, context) } : {}) });
  }
}

/** An option's long flag and its key in the parsed flags. */
export function optionNames(spec: OptionSpec): { long: string; key: string } {
  const { long, key } = parseFlags(spec.flags);
  return { long, key };
}

interface ParsedFlags {
  short?: string;
  long: string;
  /** The key in the parsed flags: the long name in camelCase, as commander names it (without `no-`). */
  key: string;
  value: 'none' | 'required' | 'optional';
  /** `--no-X`: sets X to false. */
  negate: boolean;
}

function parseFlags(flags: string): ParsedFlags {
  const m = /^(?:(-[a-zA-Z]), )?(--[a-z0-9-]+)(?: ([<[]).*)?$/.exec(flags);
  if (!m) throw new Error(`option flags not understood: ${flags}`);
  const long = m[2]!;
  const negate = long.startsWith('--no-');
  const key = long.slice(negate ? 5 : 2).replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());
  return { ...(m[1] ? { short: m[1] } : {}), long, key, value: m[3] === '<' ? 'required' : m[3] === '[' ? 'optional' : 'none', negate };
}

/** `smart push|pull|copy SOURCE DESTINATION [options]`, parsed as commander would parse it. */
export interface TransferArgs {
  mode: 'push' | 'pull' | 'copy';
  source: string;
  destination: string;
  flags: CommonFlags;
}

/**
 * Parses the common form of `push` and `pull` (two image names, options among the declared ones)
 * to exactly what commander would give the command; anything else — help, a flag it does not
 * know, a value it would reject, a third argument — gives undefined, and commander then parses
 * (and reports) the whole command line as it always did.
 */
export function parseTransferArgs(args: readonly string[]): TransferArgs | undefined {
  const mode = args[0];
  if (mode !== 'push' && mode !== 'pull' && mode !== 'copy') return undefined;
  const specs = [...(mode === 'push' ? PUSH_OPTIONS : mode === 'pull' ? PULL_OPTIONS : COPY_OPTIONS), ...COMMON_OPTIONS];
  const known = new Map<string, { spec: OptionSpec; flags: ParsedFlags }>();
  const flags: Record<string, unknown> = {};
  for (const spec of specs) {
    const f = parseFlags(spec.flags);
    known.set(f.long, { spec, flags: f });
    if (f.short) known.set(f.short, { spec, flags: f });
    if (spec.repeatable) flags[f.key] = [];
    else if (spec.default !== undefined) flags[f.key] = spec.default;
  }
  const positional: string[] = [];
  for (let i = 1; i < args.length; i++) {
    const arg = args[i]!;
    if (!arg.startsWith('-')) {
      positional.push(arg);
      continue;
    }
    const eq = arg.startsWith('--') ? arg.indexOf('=') : -1;
    const option = known.get(eq > 0 ? arg.slice(0, eq) : arg);
    if (!option || option.flags.value === 'optional') return undefined;
    const { spec, flags: f } = option;
    if (f.value === 'none') {
      if (eq > 0) return undefined;
      flags[f.key] = !f.negate;
      continue;
    }
    let value: string | undefined;
    if (eq > 0) value = arg.slice(eq + 1);
    else {
      value = args[++i];
      // A value that looks like a flag (or none at all): commander decides what that means.
      if (value === undefined || value.startsWith('-')) return undefined;
    }
    // An empty value, a choice not offered: commander refuses them (program.ts).
    if (value === '' || (spec.choices && !spec.choices.includes(value))) return undefined;
    let parsed: unknown = value;
    if (spec.parse) {
      try {
        parsed = spec.parse(value);
      } catch {
        return undefined;
      }
    }
    flags[f.key] = spec.repeatable ? [...(flags[f.key] as string[]), parsed] : parsed;
  }
  if (positional.length !== 2) return undefined;
  return { mode, source: positional[0]!, destination: positional[1]!, flags: flags as CommonFlags };
}

export function pruneDays(v: string | boolean): number {
  if (v === true) return 7;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new SmartError('USAGE', `--prune takes a number of days, not "${String(v)}"`, { input: String(v) });
  return n;
}

export function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

/** The most a password on stdin may be: a token, not a file. */
const MAX_STDIN_PASSWORD = 64 * 1024;

async function readPasswordFromStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  let length = 0;
  for await (const chunk of process.stdin) {
    chunks.push(chunk as Buffer);
    length += (chunk as Buffer).length;
    if (length > MAX_STDIN_PASSWORD) throw new SmartError('USAGE', `--password-stdin: more than ${MAX_STDIN_PASSWORD} bytes on stdin`, { input: '--password-stdin' });
  }
  const { withoutLineEnd } = await import('../ops/credentials.js');
  return withoutLineEnd(Buffer.concat(chunks).toString('utf8'));
}

/**
 * The one credential typed for this command, wherever it was typed: `--creds`, `--creds-file`
 * (its first line), `--username` with `--password-stdin`, else `$SMART_REGISTRY_AUTH`. The last
 * two keep the secret out of `ps` and of CI logs.
 */
async function sharedCredentials(flags: CommonFlags, names: { read: string[] }) {
  const typed = [flags.creds ? '--creds' : '', flags.credsFile ? '--creds-file' : '', flags.passwordStdin ? '--password-stdin' : ''].filter(Boolean);
  if (typed.length > 1) throw new SmartError('USAGE', `${typed.join(' and ')} each give the credentials: choose one`, { input: typed[1] });
  if (flags.username && !flags.passwordStdin) {
    throw new SmartError('USAGE', '--username goes with --password-stdin', { input: '--username', hint: 'pipe the password in with --password-stdin, or give USER:PASSWORD in --creds-file FILE' });
  }
  if (flags.passwordStdin) {
    if (!flags.username) throw new SmartError('USAGE', '--password-stdin needs --username USER', { input: '--password-stdin' });
    if (names.read.some((n) => /^docker-archive:-(:|$)/.test(n))) {
      throw new SmartError('USAGE', '--password-stdin and docker-archive:- would both read stdin', {
        input: '--password-stdin',
        hint: 'give the credentials in --creds-file FILE, or read the archive from a file',
      });
    }
    const password = await readPasswordFromStdin();
    if (!password) throw new SmartError('USAGE', '--password-stdin: no password on stdin', { input: '--password-stdin' });
    return { value: `${flags.username}:${password}`, from: '--password-stdin' as const };
  }
  if (flags.credsFile) {
    let text: string;
    try {
      text = await (await import('node:fs/promises')).readFile(flags.credsFile, 'utf8');
    } catch (e) {
      throw new SmartError('USAGE', `cannot read --creds-file ${flags.credsFile}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, { input: flags.credsFile });
    }
    const line = text.split(/\r?\n/)[0] ?? '';
    if (line.indexOf(':') <= 0) throw new SmartError('USAGE', `--creds-file ${flags.credsFile} must hold USER:PASSWORD on its first line`, { input: flags.credsFile });
    return { value: line, from: '--creds-file' as const };
  }
  if (flags.creds) return { value: flags.creds, from: '--creds' as const };
  const env = process.env.SMART_REGISTRY_AUTH;
  return env ? { value: env, from: 'SMART_REGISTRY_AUTH' as const } : undefined;
}

/**
 * Registry and S3 settings from the flags. `names`: what the command reads and writes, which
 * decides the registry each explicit credential goes to (ops/credentials.ts assignCredentials).
 */
export async function remoteOptions(flags: CommonFlags, names: { read: string[]; write: string[] }, onWarning?: (message: string) => void) {
  const shared = await sharedCredentials(flags, names);
  // The credentials module is loaded only when there are credentials to give, or registries to give them to.
  const credentials = shared || flags.srcCreds || flags.destCreds || [...names.read, ...names.write].some((n) => n.startsWith('docker://')) ? await import('../ops/credentials.js') : undefined;
  const { sourceCredentials: source, destinationCredentials: destination } =
    credentials && (shared || flags.srcCreds || flags.destCreds)
      ? credentials.assignCredentials(
          { ...(shared ? { shared } : {}), ...(flags.srcCreds ? { source: flags.srcCreds } : {}), ...(flags.destCreds ? { destination: flags.destCreds } : {}) },
          names,
          onWarning,
        )
      : {};
  const flagsFor = credentials?.credentialFlags(names) ?? {};
  return {
    ...(source ? { sourceCredentials: source } : {}),
    ...(destination ? { destinationCredentials: destination } : {}),
    ...(flagsFor.source !== undefined ? { sourceCredentialsFlag: flagsFor.source } : {}),
    ...(flagsFor.destination !== undefined ? { destinationCredentialsFlag: flagsFor.destination } : {}),
    ...(flags.authfile ? { authFile: flags.authfile } : {}),
    ...(flags.insecureRegistry?.length ? { insecureRegistries: flags.insecureRegistry } : {}),
    ...(flags.certDir?.length ? { certDirs: flags.certDir } : {}),
    ...(flags.registryMirror?.length ? { registryMirrors: flags.registryMirror } : {}),
    ...(flags.stallTimeout ? { stallTimeoutMs: flags.stallTimeout * 1000 } : {}),
    ...(flags.s3Endpoint ? { s3Endpoint: flags.s3Endpoint } : {}),
    ...(flags.s3Region ? { s3Region: flags.s3Region } : {}),
  };
}

export function progressMode(flags: CommonFlags): ProgressMode {
  if (flags.quiet || flags.progress === 'none') return 'none';
  if (flags.progress === 'json' || flags.progress === 'plain' || flags.progress === 'tty') return flags.progress;
  // A terminal that cannot move its cursor (TERM=dumb: Emacs's shell, some CI consoles) gets lines.
  return process.stderr.isTTY && process.env.TERM !== 'dumb' ? 'tty' : 'plain';
}

export function outputOptions(flags: CommonFlags): OutputOptions {
  // --progress none is nothing on stderr but errors, as -q (README): not the summary lines either.
  return { json: !!flags.json, quiet: !!flags.quiet || flags.progress === 'none', debug: !!flags.debug, progressJson: flags.progress === 'json' };
}

/** Aborted by a signal or by --timeout; the library stops its work through it. */
export const cancel = new AbortController();
