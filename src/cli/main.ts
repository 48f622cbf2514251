/**
 * The `smart` command line: parses flags, calls the library, prints. The only place that catches
 * errors and chooses an exit code: 0 success, 2 usage error, 1 anything else.
 */
import path from 'node:path';
import { SmartError, isSmartError } from '../errors.js';
import { declareShortLivedProcess } from '../runtime.js';
import { defaultCacheDir, outputOptions, parseTransferArgs, progressMode, pruneDays, remoteOptions, cancel, type CommonFlags } from './options.js';
import { Output, type OutputOptions } from './output.js';

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

export async function runTransfer(mode: 'push' | 'pull', source: string, destination: string, flags: CommonFlags, out: Output): Promise<void> {
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
    ...(flags.compression === 'zstd' ? { compression: 'zstd' as const } : {}),
    ...(flags.dockerfile ? { dockerfile: dockerfileOption(flags) } : {}),
    cacheDir: flags.cacheDir ?? defaultCacheDir(),
    ...((flags.redis ?? process.env.SMART_REDIS_URL) ? { redisUrl: (flags.redis ?? process.env.SMART_REDIS_URL)! } : {}),
    ...(flags.tagCacheTtl ? { tagCacheTtlS: flags.tagCacheTtl } : {}),
    ...(flags.layerStore ? { layerStoreDir: flags.layerStore } : {}),
    ...(flags.link ? { link: true } : {}),
    ...(flags.keepLayers !== undefined ? { keepLayers: flags.keepLayers } : {}),
    ...(flags.force ? { force: true } : {}),
    ...(flags.prune !== undefined ? { pruneAgeMs: pruneDays(flags.prune) * 86_400_000 } : {}),
    remote: await remoteOptions(flags, { read: [source], write: [destination] }, (m) => progress.message(`warning: ${m}`)),
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

/** Runs the CLI on `argv` (as process.argv) and resolves to the exit code; never calls process.exit. */
export async function main(argv: string[], prog = 'smart'): Promise<number> {
  declareShortLivedProcess();
  // Loaded with the program, only when commander parses the command line.
  let CommanderError: typeof import('commander').CommanderError | undefined;
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
    // The common `push SRC DEST [options]`: parsed without commander, which is slow to load.
    const fast = parseTransferArgs(argv.slice(2));
    if (fast) await runTransfer(fast.mode, fast.source, fast.destination, fast.flags, new Output(outputOptions(fast.flags)));
    else {
      const program = await import('./program.js');
      CommanderError = program.CommanderError;
      await program.buildProgram().parseAsync(argv);
    }
    return signalled ? (signalled === 'SIGINT' ? 130 : 143) : 0;
  } catch (e) {
    if (signalled) {
      new Output(flagsOf()).error(prog, new SmartError('CANCELLED', signalled === 'SIGINT' ? 'interrupted' : 'terminated'));
      return signalled === 'SIGINT' ? 130 : 143;
    }
    if (CommanderError && e instanceof CommanderError) {
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

