/** `smart push` and `smart pull`: the flags turned into a transfer, its progress and its summary printed. */
import path from 'node:path';
import { SmartError } from '../errors.js';
import { defaultCacheDir, progressMode, pruneDays, remoteOptions, cancel, type CommonFlags } from './options.js';
import type { Output } from './output.js';

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
