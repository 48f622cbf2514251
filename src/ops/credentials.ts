/**
 * Credentials as a command line gives them (`USER:PASSWORD`), and which registry gets which: a
 * credential typed once is meant for one registry, so it never goes to a second one.
 */
import { SmartError } from '../errors.js';
import { registryHost } from '../transports/all.js';
import { parseCredentials, type Credentials } from '../transports/registry/credentials.js';

export { parseCredentials, type Credentials };

/** The explicit credentials of a command, as typed. */
export interface ExplicitCredentials {
  /**
   * `--creds` (or the same from `--creds-file`, `--username` with `--password-stdin`), else
   * `$SMART_REGISTRY_AUTH`: one credential for the one registry the command talks to.
   */
  shared?: { value: string; from: '--creds' | '--creds-file' | '--password-stdin' | 'SMART_REGISTRY_AUTH' };
  /** `--src-creds`: for the registry the command reads. */
  source?: string;
  /** `--dest-creds`: for the registry the command writes. */
  destination?: string;
}

/** The names a command reads and writes (images, or whole stores such as `docker://HOST`). */
export interface CommandNames {
  read: readonly string[];
  write: readonly string[];
}

/** The registry host a name talks to; undefined for names that are no registry. */
export function registryOf(name: string): string | undefined {
  return registryHost(name);
}

/**
 * A secret as stdin or an environment variable holds it, without the one line's end (`\n` or
 * `\r\n`) after it: a file read into a CI secret, or an `echo` piped in, ends in one that is no part
 * of the password, as `docker login --password-stdin` reads it (`--creds-file` takes its first
 * line alike). `--creds` is taken as typed.
 */
export function withoutLineEnd(secret: string): string {
  return secret.replace(/\r?\n$/, '');
}

const PER_REGISTRY_HINT = 'log in to each registry with docker login: $DOCKER_CONFIG/config.json keeps credentials per registry';

const unique = (names: readonly string[]) => [...new Set(names.map(registryOf).filter((h): h is string => h !== undefined))];

/**
 * The flag that gives the registry read and the registry written credentials, for the hints of
 * their errors: none (`--creds`, the default) where the command talks to one registry;
 * `--src-creds`/`--dest-creds` where it talks to two, and `--creds` is refused; null where no flag
 * reaches the one registry alone (`cache plan` reading two).
 */
export function credentialFlags(names: CommandNames): { source?: string | null; destination?: string } {
  const read = unique(names.read);
  const write = unique(names.write);
  if (new Set([...read, ...write]).size <= 1) return {};
  return { source: read.length > 1 ? null : '--src-creds', destination: '--dest-creds' };
}

/**
 * Which explicit credentials go to the registry read and to the registry written. `--creds` (or
 * `$SMART_REGISTRY_AUTH`) goes to the registry the command talks to when there is one (the same
 * host on both sides counts as one); with two different registries `--creds` is refused (it
 * would reach both, token servers included) and `$SMART_REGISTRY_AUTH`, set once for many
 * commands rather than typed for this one, is left unused with a warning: each side then takes
 * `--src-creds`/`--dest-creds`, else the Docker config's credentials for its host.
 */
export function assignCredentials(
  explicit: ExplicitCredentials,
  names: CommandNames,
  onWarning: (message: string) => void = () => undefined,
): { sourceCredentials?: Credentials; destinationCredentials?: Credentials } {
  const read = unique(names.read);
  const write = unique(names.write);
  const all = [...new Set([...read, ...write])];
  // A credential typed for a command that reaches no registry would go nowhere: `--creds` on an
  // s3:// push looks as if it signed the S3 requests, which take the AWS SDK's credentials.
  const unused = (flag: string, what: string) =>
    new SmartError('USAGE', `${flag} is for a registry (docker://), and ${what}`, {
      input: flag,
      hint: 'leave it out: file: needs no credentials; s3:// takes the AWS SDK\'s: AWS_ACCESS_KEY_ID with AWS_SECRET_ACCESS_KEY, or AWS_PROFILE',
    });
  if (explicit.shared && explicit.shared.from !== 'SMART_REGISTRY_AUTH' && all.length === 0) throw unused(explicit.shared.from, 'this command talks to none');
  if (explicit.source && read.length === 0) throw unused('--src-creds', `what this command reads is none (${names.read.join(', ')})`);
  if (explicit.destination && write.length === 0) throw unused('--dest-creds', `what this command writes is none (${names.write.join(', ') || 'nothing'})`);
  // `cache plan STORE --image IMG` reads two registries: one --src-creds would reach both.
  if (explicit.source && read.length > 1) {
    throw new SmartError('USAGE', `--src-creds would go to two registries (${read.join(' and ')})`, { input: '--src-creds', hint: PER_REGISTRY_HINT });
  }
  let shared: Credentials | undefined;
  if (explicit.shared) {
    const { value, from } = explicit.shared;
    if (all.length <= 1) shared = parseCredentials(from === 'SMART_REGISTRY_AUTH' ? withoutLineEnd(value) : value, from);
    else if (from !== 'SMART_REGISTRY_AUTH') {
      throw new SmartError('USAGE', `${from} would go to both registries (${all.join(' and ')}): give each its own`, {
        input: from,
        hint: read.length > 1 ? PER_REGISTRY_HINT : `--src-creds USER:PASSWORD for ${read[0]}, --dest-creds USER:PASSWORD for ${write[0]}`,
      });
    } else if ((read.length && !explicit.source) || (write.length && !explicit.destination)) {
      onWarning(
        `SMART_REGISTRY_AUTH is not used: this command talks to two registries (${all.join(' and ')}); ` +
          'give each its own with --src-creds/--dest-creds (else the Docker config is used)',
      );
    }
  }
  const source = explicit.source ? parseCredentials(explicit.source, '--src-creds') : shared;
  const destination = explicit.destination ? parseCredentials(explicit.destination, '--dest-creds') : shared;
  return { ...(source ? { sourceCredentials: source } : {}), ...(destination ? { destinationCredentials: destination } : {}) };
}
