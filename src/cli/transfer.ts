/**
 * `smart push`, `smart pull` and `smart copy`: the flags turned into a transfer, its progress and
 * its summary printed (a line, the stored reference, or the --json document).
 */
import path from 'node:path';
import { SmartError, isSmartError } from '../errors.js';
import { PULL_OPTIONS, PUSH_OPTIONS, optionNames, progressMode, pruneDays, refuseIgnoredOptions, remoteOptions, cancel, type CommonFlags, type OptionRule } from './options.js';
import { imageGoesToStdout, type Output } from './output.js';

function dockerfileOption(flags: CommonFlags) {
  const file = path.resolve(flags.dockerfile!);
  const buildArgs: Record<string, string> = {};
  for (const kv of flags.buildArg ?? []) {
    const eq = kv.indexOf('=');
    if (eq <= 0) throw new SmartError('USAGE', `--build-arg takes KEY=VALUE, not "${kv}"`, { input: kv });
    buildArgs[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  return {
    path: file,
    contextDir: path.resolve(flags.context ?? path.dirname(file)),
    ...(flags.target ? { stage: flags.target } : {}),
    ...(Object.keys(buildArgs).length ? { buildArgs } : {}),
  };
}

/**
 * `docker-archive:-` and `oci-archive:-` as a destination: the image goes to stdout; as a source:
 * it comes from stdin.
 * Spelled here, not read off the transport map, so that a command refused for it loads nothing;
 * test/unit/transports.test.ts holds both to the map's `writesStdout`, `readsStdin` and `isStdio`.
 */
const STDIO_ARCHIVE = /^docker-archive:-(:|$)|^oci-archive:-(:[^:]*)?$/;
export const toStdout = (name: string | undefined): boolean => name !== undefined && STDIO_ARCHIVE.test(name);
export const fromStdin = (name: string | undefined): boolean => name !== undefined && STDIO_ARCHIVE.test(name);

/**
 * An image bound for stdout owns it: --json, whose document would go down the same pipe (into
 * `docker load`), is refused, and the refusal's own document is not printed there either.
 */
export function refuseJsonWithImageOnStdout(json: boolean | undefined, destination: string | undefined): void {
  if (!toStdout(destination)) return;
  imageGoesToStdout();
  if (json) throw new SmartError('USAGE', `--json cannot be used when the image itself goes to stdout (${destination})`, { input: destination });
}

/**
 * Refuses, as `docker save` and `docker load` do, to write an archive to a terminal (bytes no one
 * can read, and a terminal they can confuse) or to wait on a terminal for one (a command that
 * seems to hang while it waits for a `docker save` that was never piped in).
 */
export function refuseTerminals(source: string | undefined, destination: string | undefined): void {
  // docker load takes a docker-archive; Docker before 25 cannot load an oci-archive.
  const pipeIt = destination?.startsWith('docker-archive:') ? 'pipe it: | docker load' : 'pipe it';
  if (toStdout(destination) && process.stdout.isTTY) {
    throw new SmartError('USAGE', `${destination} writes the image archive to stdout, which is a terminal`, {
      input: destination,
      hint: `redirect it to a file, > image.tar, or ${pipeIt}`,
    });
  }
  if (toStdout(destination) && stdoutWasClosed()) {
    // As docker save fails: the whole image would go nowhere, and the run say it succeeded.
    throw new SmartError('USAGE', `${destination} writes the image archive to stdout, which was closed (>&-)`, {
      input: destination,
      hint: `redirect it to a file, > image.tar, or ${pipeIt}`,
    });
  }
  if (fromStdin(source) && process.stdin.isTTY) {
    throw new SmartError('USAGE', `${source} reads the image archive from stdin, which is a terminal`, {
      input: source,
      hint: 'pipe it in, docker save IMAGE | smart push docker-archive:- …, or name the archive file',
    });
  }
}

/**
 * Whether the command was started with stdout closed (`>&-`): Node then opens /dev/null in its
 * place, for reading and writing, where a user's `> /dev/null` opens it for writing only. Linux
 * says which through /proc; elsewhere, or when it cannot be read, not closed.
 */
function stdoutWasClosed(): boolean {
  try {
    const fs = process.getBuiltinModule('node:fs');
    if (fs.fstatSync(1).rdev !== fs.statSync('/dev/null').rdev) return false;
    const flags = /^flags:\s*([0-7]+)$/m.exec(fs.readFileSync('/proc/self/fdinfo/1', 'utf8'))?.[1];
    return flags !== undefined && (parseInt(flags, 8) & 3) === fs.constants.O_RDWR; // 3: O_ACCMODE
  } catch {
    return false;
  }
}

type CopySummary = import('../ops/copy.js').CopySummary;

/**
 * The --json document of a push or a pull, in its own words: a push `pushed` layers
 * (`bytesPushed`) and a config, a pull `written` ones (`bytesWritten`).
 */
export function transferDocument(mode: 'push' | 'pull', summary: CopySummary, extra: { seconds: number; reference?: string | undefined }) {
  const { source, destination, manifestDigest, manifestMediaType, converted, layers: l, config, compression, details } = summary;
  const rest = { skipped: l.skipped, mounted: l.mounted, foreign: l.foreign };
  return {
    command: mode,
    source,
    destination,
    ...(extra.reference ? { reference: extra.reference } : {}),
    manifestDigest,
    manifestMediaType,
    converted,
    layers: mode === 'push' ? { total: l.total, pushed: l.pushed, ...rest, bytesPushed: l.bytesPushed } : { total: l.total, written: l.pushed, ...rest, bytesWritten: l.bytesPushed },
    config: mode === 'pull' && config === 'pushed' ? 'written' : config,
    ...(compression ? { compression } : {}),
    ...(details ? { details } : {}),
    seconds: Number(extra.seconds.toFixed(3)),
  };
}

export async function runTransfer(command: 'push' | 'pull' | 'copy', source: string, destination: string, flags: CommonFlags, out: Output): Promise<void> {
  const { copyMode, storedReference, transfer } = await import('../ops/transfer.js');
  const { defaultCacheDir, noCacheDirReason } = await import('../ops/local-state.js');
  const mode = command === 'copy' ? copyMode(destination) : command;
  refuseIgnoredTransferOptions(command, mode, destination, flags);
  refuseJsonWithImageOnStdout(flags.json, destination);
  refuseTerminals(source, destination);
  if (flags.digestfile !== undefined) await digestFileDirectory(flags.digestfile);
  const { formatBytes, guardedStdout } = await import('./output.js');
  const { ProgressDisplay } = await import('./progress.js');
  const progress = new ProgressDisplay(progressMode(flags), { command: mode, source, destination });
  const { foreignOutputTo } = await import('./foreign-output.js');
  foreignOutputTo((m) => progress.warning(m));
  const timeout = flags.timeout ? setTimeout(() => cancel.abort(new SmartError('CANCELLED', `timed out after ${flags.timeout} s (--timeout)`)), flags.timeout * 1000) : undefined;
  // No home to keep a cache in: the run goes on, and says what it cannot keep.
  const cacheDir = flags.cacheDir ?? defaultCacheDir();
  if (cacheDir === undefined) progress.warning(`no cache directory (${noCacheDirReason()}): nothing is kept for the next run; set XDG_CACHE_HOME or pass --cache-dir`);
  let summary: CopySummary;
  try {
    const remote = await remoteOptions(flags, { read: [source], write: [destination] }, (m) => progress.warning(m));
    summary = await transfer({
      mode,
      source,
      destination,
      signal: cancel.signal,
      ...(toStdout(destination) ? { stdout: guardedStdout() } : {}),
      ...(flags.platform ? { platform: flags.platform } : {}),
      ...(flags.platformMismatch ? { platformMismatch: flags.platformMismatch as 'warn' | 'error' } : {}),
      ...(flags.jobs ? { jobs: flags.jobs } : {}),
      ...(flags.allPlatforms ? { allPlatforms: true } : {}),
      ...(flags.compressionLevel ? { gzipLevel: flags.compressionLevel } : {}),
      ...(flags.compression === 'zstd' ? { compression: 'zstd' as const } : {}),
      ...(flags.dockerfile ? { dockerfile: dockerfileOption(flags) } : {}),
      ...(cacheDir !== undefined ? { cacheDir } : {}),
      ...((flags.redis ?? process.env.SMART_REDIS_URL) ? { redisUrl: (flags.redis ?? process.env.SMART_REDIS_URL)! } : {}),
      ...(flags.tagCacheTtl ? { tagCacheTtlS: flags.tagCacheTtl } : {}),
      ...(flags.layerStore ? { layerStoreDir: flags.layerStore } : {}),
      ...(flags.link ? { link: true } : {}),
      ...(flags.keepLayers !== undefined ? { keepLayers: flags.keepLayers } : {}),
      ...(flags.force ? { force: true } : {}),
      ...(flags.prune !== undefined ? { pruneAgeMs: pruneDays(flags.prune) * 86_400_000 } : {}),
      remote,
      onLayer: progress.onLayer,
      onProgress: progress.onProgress,
      onWarning: (m) => progress.warning(m),
    });
  } catch (e) {
    // A cancelled run (a signal, --timeout) fails with what its streams threw (an AbortError): its
    // end event carries the reason, as its error line and --json do (cli/main.ts).
    progress.finish({ ok: false, error: cancel.signal.aborted && isSmartError(cancel.signal.reason) ? cancel.signal.reason : e });
    throw e;
  } finally {
    clearTimeout(timeout);
  }
  const seconds = progress.seconds();
  progress.finish({ ok: true, manifestDigest: summary.manifestDigest });
  const l = summary.layers;
  // With --progress json stderr holds events only: the end event (and --json) carry the result.
  const info = (line: string) => progress.mode !== 'json' && out.info(line);
  info(
    `${mode === 'push' ? 'pushed' : 'pulled'} ${summary.source} → ${summary.destination}: ` +
      `${l.pushed} layer${l.pushed === 1 ? '' : 's'} written (${formatBytes(l.bytesPushed)}), ${l.skipped} skipped${l.mounted ? ` (${l.mounted} mounted)` : ''}` +
      `${l.foreign ? `, ${l.foreign} foreign` : ''}; ${platformsOf(summary) ? `index ${summary.manifestDigest} (${platformsOf(summary)!.join(', ')})` : `manifest ${summary.manifestDigest}`}` +
      `${summary.converted ? ' (converted)' : ''} in ${seconds.toFixed(2)} s`,
  );
  // Throughput: what was read from the source (for a docker save stream, the uncompressed layers),
  // and for layers compressed here how much smaller they were stored.
  const read = progress.bytesRead();
  if (read > 0) {
    // Of the layers stored: a stream's layers found already there are read (hashed) too.
    const ratio = summary.compression && l.bytesPushed > 0 ? `; stored ${formatBytes(l.bytesPushed)}, compressed ${(progress.bytesRead({ stored: true }) / l.bytesPushed).toFixed(2)}:1 (${summary.compression.format}, ${summary.compression.engine} level ${summary.compression.level})` : '';
    info(`read ${formatBytes(read)} in ${seconds.toFixed(2)} s (${formatBytes(read / Math.max(seconds, 0.001))}/s)${ratio}`);
  }
  if (flags.digestfile) await writeDigestFile(flags.digestfile, summary.manifestDigest);
  const reference = mode === 'push' ? storedReference(destination, summary.manifestDigest) : undefined;
  if (flags.json) out.json(transferDocument(mode, summary, { seconds, reference }));
  else if (reference) out.result(reference);
}

/** The platforms of a multi-platform index copied whole. */
function platformsOf(summary: CopySummary): string[] | undefined {
  const platforms = summary.details?.platforms;
  return Array.isArray(platforms) ? (platforms as string[]) : undefined;
}

/**
 * `--digestfile FILE` is written last, once the tag is: a directory that is not there, or a FILE
 * that is a directory, fails the run before anything is written (not with the tag written and
 * the status saying it failed).
 */
async function digestFileDirectory(file: string): Promise<void> {
  const fs = await import('node:fs/promises');
  const dir = path.dirname(path.resolve(file));
  const st = await fs.stat(dir).catch(() => undefined);
  if (!st?.isDirectory()) throw new SmartError('USAGE', `--digestfile ${file}: ${st ? `${dir} is not a directory` : `no such directory ${dir}`}`, { input: file });
  if ((await fs.stat(file).catch(() => undefined))?.isDirectory()) throw new SmartError('USAGE', `--digestfile ${file}: is a directory, not a file to write the digest to`, { input: file });
}

/** `--digestfile FILE`: the digest of what was written, as skopeo writes it (no newline). */
async function writeDigestFile(file: string, digest: string): Promise<void> {
  const fs = await import('node:fs/promises');
  try {
    await fs.writeFile(file, digest);
  } catch (e) {
    throw new SmartError('STORAGE', `cannot write --digestfile ${file}: ${(e as Error).message}`, { input: file, cause: e });
  }
}

/** What a transfer's options are checked against: the mode it runs (copy: by the destination) and where it writes. */
interface TransferCase {
  mode: 'push' | 'pull';
  destination: string;
  flags: CommonFlags;
}

const unpacks = (c: TransferCase): boolean => c.mode === 'pull' && /^(rootfs|bundle):/.test(c.destination);
const withDockerfile = (c: TransferCase): boolean => c.flags.dockerfile !== undefined;
/** A registry or its storage: where uncompressed layers are compressed (a layout or an archive keeps them as they are). */
const intoStore = (c: TransferCase): boolean => /^(docker:\/\/|file:|s3:\/\/)/.test(c.destination);

/**
 * `smart copy` takes push's and pull's options: those of the mode it is not running would be
 * ignored. (push and pull are not offered the other's.)
 */
function modeRules(mode: 'push' | 'pull'): OptionRule<TransferCase>[] {
  const own = mode === 'push' ? PUSH_OPTIONS : PULL_OPTIONS;
  const other = mode === 'push' ? PULL_OPTIONS : PUSH_OPTIONS;
  return own
    .filter((spec) => !other.includes(spec))
    .map((spec) => ({
      key: optionNames(spec).key,
      applies: (c: TransferCase) => c.mode === mode,
      where: mode === 'push' ? 'pushes' : 'pulls',
      hint: (flag: string) => `copy into ${mode === 'pull' ? 'an OCI layout, an archive, rootfs: or bundle:' : 'a registry, file: or s3://'} to ${mode}, or leave ${flag} out`,
    }));
}

/** The options of push, pull and copy that are read only in some cases of their mode. */
const CASE_RULES: readonly OptionRule<TransferCase>[] = [
  { key: 'link', applies: unpacks, where: 'pulls into rootfs: or bundle:' },
  { key: 'force', applies: unpacks, where: 'pulls into rootfs: or bundle:' },
  // --no-keep-layers keeps no blob of any pull; --keep-layers asks for the layers unpacked.
  { key: 'keepLayers', applies: (c, value) => unpacks(c) || (c.mode === 'pull' && value === false), where: 'pulls into rootfs: or bundle:' },
  ...(['context', 'target', 'buildArg'] as const).map((key) => ({ key, applies: withDockerfile, where: 'pushes with --dockerfile', situation: 'no --dockerfile was given' })),
  ...(['compression', 'compressionLevel'] as const).map((key) => ({ key, applies: intoStore, where: 'pushes into a registry, file: or s3:// (a layout or an archive keeps each layer as it is)' })),
];

/** The options of push, pull and copy that are read only in some cases: by mode (copy), then by case. */
const TRANSFER_RULES: readonly OptionRule<TransferCase>[] = [...modeRules('push'), ...modeRules('pull'), ...CASE_RULES];

/**
 * Where a push's or a pull's option that only some cases read applies (`--link`: pulls into rootfs:
 * or bundle:), its reason left out, for a command that takes none. Not for `--no-X`: `--no-keep-layers`
 * applies to every pull.
 */
export function transferOptionWhere(flag: string): string | undefined {
  if (flag.startsWith('--no-')) return undefined;
  const key = flag.slice(2).replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());
  return CASE_RULES.find((r) => r.key === key)?.where.replace(/ \(.*\)$/, '');
}

function refuseIgnoredTransferOptions(command: 'push' | 'pull' | 'copy', mode: 'push' | 'pull', destination: string, flags: CommonFlags): void {
  const doing = command === 'copy' ? `smart copy ${mode === 'push' ? 'pushes' : 'pulls'} into` : `smart ${mode} writes`;
  refuseIgnoredOptions(flags, { mode, destination, flags }, TRANSFER_RULES, `${doing} ${destination}`);
}
