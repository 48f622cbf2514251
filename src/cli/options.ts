/** Flags shared by the commands, and what they turn into. */
import { InvalidArgumentError, Option, type Command } from 'commander';
import os from 'node:os';
import { SmartError } from '../errors.js';
import type { OutputOptions } from './output.js';
import type { ProgressMode } from './progress.js';

export const EXIT_HELP = `
Image names (skopeo-style TRANSPORT:REFERENCE):
  oci:DIR[:TAG]                      OCI image layout directory
  oci-archive:FILE[:TAG]             OCI image layout in a tar file
  docker-archive:FILE[:NAME:TAG|:@N] docker save / docker load tar; FILE "-" is stdin or stdout
  docker://HOST[:PORT]/REPO[:TAG|@DIGEST]  a registry, over the OCI Distribution API
  file:ROOT#REPO[:TAG|@DIGEST]       a Distribution registry's storage on disk (ROOT = rootdirectory)
  s3://BUCKET[/ROOT]#REPO[:TAG|@DIGEST]  a Distribution registry's storage in S3 (ROOT = rootdirectory)
  rootfs:DIR                         (pull only) the flattened root filesystem
  bundle:DIR                         (pull only) an OCI runtime bundle for runc: DIR/config.json + DIR/rootfs

Exit status: 0 on success, 2 on a usage error (bad flags, malformed image name), 1 on any other error.
Environment: XDG_CACHE_HOME (local state under $XDG_CACHE_HOME/smartlayer, default ~/.cache/smartlayer);
  SMART_REGISTRY_AUTH=USER:PASSWORD, DOCKER_CONFIG (registry credentials); AWS_ENDPOINT_URL_S3,
  AWS_REGION, AWS_PROFILE, AWS_ACCESS_KEY_ID... (S3, as the AWS CLI reads them).`;

export interface CommonFlags {
  compression?: string;
  dockerfile?: string;
  context?: string;
  target?: string;
  buildArg?: string[];
  allPlatforms?: boolean;
  registryMirror?: string[];
  stallTimeout?: number;
  timeout?: number;
  redis?: string;
  progress?: string;
  layerStore?: string;
  link?: boolean;
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
  compressionLevel?: number;
}

export function positiveInt(name: string, max: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1 || n > max) throw new InvalidArgumentError(`${name} must be an integer from 1 to ${max}`);
    return n;
  };
}

export function addCommonOptions(cmd: Command): Command {
  return cmd
    .option('--json', 'print one machine-readable summary on stdout')
    .option('-q, --quiet', 'print nothing but errors (and the --json summary)')
    .option('--debug', 'print stack traces of errors')
    .addOption(new Option('--progress <mode>', 'progress on stderr: auto (live on a terminal, plain lines otherwise), tty, plain, json (one event a line), none').choices(['auto', 'tty', 'plain', 'json', 'none']).default('auto'))
    .addOption(new Option('--jobs <n>', 'layers in flight at once (default: from the core count)').argParser(positiveInt('--jobs', 256)))
    .option('--platform <os/arch[/variant]>', 'platform to pick from a multi-platform image (default: this machine)')
    .option('--all-platforms', 'copy every platform of a multi-platform image and the index itself, digests unchanged (into stores)')
    .option('--cache-dir <dir>', 'where local state lives (default: $XDG_CACHE_HOME/smartlayer)')
    .option('--redis <url>', 'share the metadata cache in Redis: redis://, rediss://, redis+cluster://h1:p1,h2:p2 (default: $SMART_REDIS_URL; else on disk)')
    .option('--creds <user:password>', 'registry credentials for source and destination (default: $SMART_REGISTRY_AUTH, then ~/.docker/config.json)')
    .option('--src-creds <user:password>', 'registry credentials for the source only')
    .option('--dest-creds <user:password>', 'registry credentials for the destination only')
    .option('--insecure-registry <host[:port]>', 'allow plain HTTP and unverified TLS for this registry (repeatable)', collect, [])
    .option('--cert-dir <dir>', 'directory of extra CA certificates (*.crt) for registries (repeatable)', collect, [])
    .option('--registry-mirror <host[:port]>', 'a Docker Hub mirror to pull from first (repeatable; registries.conf mirrors apply too)', collect, [])
    .addOption(new Option('--stall-timeout <seconds>', 'abort and retry a transfer that makes no progress for this long').argParser(positiveInt('--stall-timeout', 86_400)).default(30))
    .addOption(new Option('--timeout <seconds>', 'give up on the whole command after this long').argParser(positiveInt('--timeout', 31_536_000)))
    .option('--s3-endpoint <url>', 'S3 endpoint (default: $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL)')
    .option('--s3-region <region>', 'S3 region (default: $AWS_REGION, then us-east-1)');
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

export async function remoteOptions(flags: CommonFlags) {
  const { parseCredentials } = await import('../ops/credentials.js');
  const shared = flags.creds ?? process.env.SMART_REGISTRY_AUTH;
  const creds = (v: string | undefined, what: string) => (v ? parseCredentials(v, what) : undefined);
  const source = creds(flags.srcCreds, '--src-creds') ?? creds(shared, flags.creds ? '--creds' : 'SMART_REGISTRY_AUTH');
  const destination = creds(flags.destCreds, '--dest-creds') ?? creds(shared, flags.creds ? '--creds' : 'SMART_REGISTRY_AUTH');
  return {
    ...(source ? { sourceCredentials: source } : {}),
    ...(destination ? { destinationCredentials: destination } : {}),
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
  return process.stderr.isTTY ? 'tty' : 'plain';
}

export function outputOptions(flags: CommonFlags): OutputOptions {
  return { json: !!flags.json, quiet: !!flags.quiet, debug: !!flags.debug };
}

export function defaultCacheDir(): string {
  return process.env.XDG_CACHE_HOME ? `${process.env.XDG_CACHE_HOME}/smartlayer` : `${os.homedir()}/.cache/smartlayer`;
}

/** Aborted by a signal or by --timeout; the library stops its work through it. */
export const cancel = new AbortController();
