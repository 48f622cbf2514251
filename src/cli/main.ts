/**
 * The `smart` command line: parses flags, calls the library, prints. The only place that catches
 * errors and chooses an exit code: 0 success, 2 usage error, 1 anything else.
 */
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import os from 'node:os';
import { SmartError, isSmartError } from '../errors.js';
import { Output, type OutputOptions } from './output.js';
import type { ProgressMode } from './progress.js';

const EXIT_HELP = `
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

interface CommonFlags {
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

function positiveInt(name: string, max: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1 || n > max) throw new InvalidArgumentError(`${name} must be an integer from 1 to ${max}`);
    return n;
  };
}

function addCommonOptions(cmd: Command): Command {
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

function pruneDays(v: string | boolean): number {
  if (v === true) return 7;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new SmartError('USAGE', `--prune takes a number of days, not "${String(v)}"`, { input: String(v) });
  return n;
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

async function remoteOptions(flags: CommonFlags) {
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

function progressMode(flags: CommonFlags): ProgressMode {
  if (flags.quiet || flags.progress === 'none') return 'none';
  if (flags.progress === 'json' || flags.progress === 'plain' || flags.progress === 'tty') return flags.progress;
  return process.stderr.isTTY ? 'tty' : 'plain';
}

function outputOptions(flags: CommonFlags): OutputOptions {
  return { json: !!flags.json, quiet: !!flags.quiet, debug: !!flags.debug };
}

async function runTransfer(mode: 'push' | 'pull', source: string, destination: string, flags: CommonFlags, out: Output): Promise<void> {
  if (flags.json && /^docker-archive:-(:|$)/.test(destination)) {
    throw new SmartError('USAGE', '--json cannot be used when the image itself goes to stdout (docker-archive:-)', { input: destination });
  }
  const { transfer } = await import('../ops/transfer.js');
  const { formatBytes } = await import('./output.js');
  const { ProgressDisplay } = await import('./progress.js');
  const progress = new ProgressDisplay(progressMode(flags));
  const started = performance.now();
  const timeout = flags.timeout ? setTimeout(() => cancel.abort(new SmartError('CANCELLED', `timed out after ${flags.timeout} s (--timeout)`)), flags.timeout * 1000) : undefined;
  const summary = await transfer({
    mode,
    source,
    destination,
    signal: cancel.signal,
    ...(flags.platform ? { platform: flags.platform } : {}),
    ...(flags.jobs ? { jobs: flags.jobs } : {}),
    ...(flags.allPlatforms ? { allPlatforms: true } : {}),
    ...(flags.compressionLevel ? { gzipLevel: flags.compressionLevel } : {}),
    cacheDir: flags.cacheDir ?? defaultCacheDir(),
    ...((flags.redis ?? process.env.SMART_REDIS_URL) ? { redisUrl: (flags.redis ?? process.env.SMART_REDIS_URL)! } : {}),
    ...(flags.layerStore ? { layerStoreDir: flags.layerStore } : {}),
    ...(flags.link ? { link: true } : {}),
    ...(flags.prune !== undefined ? { pruneAgeMs: pruneDays(flags.prune) * 86_400_000 } : {}),
    remote: await remoteOptions(flags),
    onLayer: progress.onLayer,
    onProgress: progress.onProgress,
    onWarning: (m) => progress.message(`warning: ${m}`),
  }).finally(() => {
    clearTimeout(timeout);
    progress.finish();
  });
  const seconds = (performance.now() - started) / 1000;
  const l = summary.layers;
  out.info(
    `${mode === 'push' ? 'pushed' : 'pulled'} ${summary.source} → ${summary.destination}: ` +
      `${l.pushed} layer${l.pushed === 1 ? '' : 's'} written (${formatBytes(l.bytesPushed)}), ${l.skipped} skipped${l.mounted ? ` (${l.mounted} mounted)` : ''}` +
      `${l.foreign ? `, ${l.foreign} foreign` : ''}; manifest ${summary.manifestDigest}${summary.converted ? ' (converted)' : ''} in ${seconds.toFixed(2)} s`,
  );
  if (flags.json) out.json({ ...summary, seconds: Number(seconds.toFixed(3)) });
}

export function buildProgram(): Command {
  const program = new Command('smart')
    .description('Fast container image push, pull and build cache, without the Docker daemon')
    .version('0.1.0')
    .showHelpAfterError('(run with --help for usage)')
    .addHelpText('after', EXIT_HELP);

  const transferAction = (mode: 'push' | 'pull') =>
    async function (this: Command, source: string, destination: string) {
      const flags = this.opts<CommonFlags>();
      await runTransfer(mode, source, destination, flags, new Output(outputOptions(flags)));
    };

  addCommonOptions(
    program
      .command('push')
      .description('copy an image into a store, skipping every blob already there')
      .argument('<source>', 'image to read, e.g. docker-archive:img.tar or oci:dir:tag')
      .argument('<destination>', 'store to write, e.g. file:/srv/registry#team/app:1.0')
      .addOption(new Option('--compression-level <1-9>', 'gzip level for layers that must be compressed').argParser(positiveInt('--compression-level', 9))),
  )
    .addHelpText('after', EXIT_HELP)
    .action(transferAction('push'));

  addCommonOptions(
    program
      .command('pull')
      .description('copy an image out of a store into a layout, an archive, a root filesystem or a runtime bundle')
      .argument('<source>', 'image to read, e.g. file:/srv/registry#team/app:1.0')
      .argument('<destination>', 'where to write it, e.g. bundle:./app or oci:dir:tag')
      .option('--layer-store <dir>', 'where unpacked layers are kept between pulls (default: CACHE_DIR/layer-store)')
      .option('--link', 'hardlink files from the layer store into rootfs:/bundle: (fast; the tree then shares inodes with the store: read-only uses)')
      .option('--prune [days]', 'after the pull, remove layers that no image pulled within DAYS (default 7) uses'),
  )
    .addHelpText('after', EXIT_HELP)
    .action(transferAction('pull'));

  program
    .command('cache')
    .description('the layer trie of a store and precise build-cache pulls (see smart cache --help)')
    .argument('[args...]')
    .action(() => {
      throw new SmartError('UNSUPPORTED', 'smart cache has no subcommands in this version yet', { hint: 'use smart push / smart pull' });
    });
  return program;
}

/** Runs the CLI on `argv` (as process.argv) and resolves to the exit code; never calls process.exit. */
export async function main(argv: string[], prog = 'smart'): Promise<number> {
  const program = buildProgram();
  program.exitOverride();
  program.commands.forEach((c) => c.exitOverride());
  const flagsOf = (): OutputOptions => {
    const args = argv.slice(2);
    return { json: args.includes('--json'), quiet: args.includes('-q') || args.includes('--quiet'), debug: args.includes('--debug') };
  };
  // Ctrl-C / SIGTERM cancel the work: in-flight transfers stop, temporary data is removed, nothing
  // half-written remains; then the exit status is 128 + the signal number. A second one exits at once.
  let signalled: 'SIGINT' | 'SIGTERM' | undefined;
  const onSignal = (sig: 'SIGINT' | 'SIGTERM') => {
    if (signalled) process.exit(sig === 'SIGINT' ? 130 : 143);
    signalled = sig;
    cancel.abort(new SmartError('CANCELLED', sig === 'SIGINT' ? 'interrupted' : 'terminated'));
  };
  const onInt = () => onSignal('SIGINT');
  const onTerm = () => onSignal('SIGTERM');
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onTerm);
  try {
    await program.parseAsync(argv);
    return signalled ? (signalled === 'SIGINT' ? 130 : 143) : 0;
  } catch (e) {
    if (signalled) {
      new Output(flagsOf()).error(prog, new SmartError('CANCELLED', signalled === 'SIGINT' ? 'interrupted' : 'terminated'));
      return signalled === 'SIGINT' ? 130 : 143;
    }
    if (e instanceof CommanderError) {
      // Commander printed its own message; help and version are successes.
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help') return 0;
      return 2;
    }
    const out = new Output(flagsOf());
    out.error(prog, cancel.signal.aborted && isSmartError(cancel.signal.reason) ? cancel.signal.reason : e);
    return isSmartError(e) ? e.exitCode : 1;
  } finally {
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onTerm);
  }
}

/** Aborted by a signal or by --timeout; the library stops its work through it. */
const cancel = new AbortController();

export function defaultCacheDir(): string {
  return process.env.XDG_CACHE_HOME ? `${process.env.XDG_CACHE_HOME}/smartlayer` : `${os.homedir()}/.cache/smartlayer`;
}
