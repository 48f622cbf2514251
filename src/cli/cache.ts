/** `smart cache ...`: thin commands over ops/cache.ts. */
import { Command, Option } from 'commander';
import fs from 'node:fs/promises';
import path from 'node:path';
import { SmartError } from '../errors.js';
import { cancel, collect, outputOptions, positiveInt, pruneDays, refuseIgnoredOptions, remoteOptions, type CommonFlags, type OptionRule } from './options.js';
import { addCommonOptions, commanderParser } from './commander-options.js';
import { Output, formatBytes, guardedStderr, guardedStdout, plural } from './output.js';
import { refuseJsonWithImageOnStdout, refuseTerminals, toStdout } from './transfer.js';

interface CacheFlags extends CommonFlags {
  file?: string;
  image?: string;
  repo?: string;
  target?: string;
  buildArg?: string[];
  printCacheFrom?: string;
  printCacheFromFile?: string;
  builder?: string;
  tag?: string;
  for?: string;
  registry?: string;
  top?: number;
  strict?: boolean;
  failIfLocked?: boolean;
  lease?: number;
}

/** What a cache command's options are checked against (refuseIgnoredOptions): the command, and what it writes. */
interface CacheCase {
  command: 'index' | 'plan' | 'pull' | 'warm';
  destination: string | undefined;
  flags: CacheFlags;
}

const writesImage = (c: CacheCase): boolean => c.destination !== undefined;
const never = (): boolean => false;
const warmsFor = (c: CacheCase): boolean => c.command !== 'warm' || c.flags.for !== undefined;

/** The options the cache commands take (most of them the common ones of every command) that only some cases read. */
const CACHE_RULES: readonly OptionRule<CacheCase>[] = [
  ...(['digestfile', 'allPlatforms', 'platformMismatch'] as const).map((key) => ({ key, applies: never, where: 'push, pull and copy' })),
  // Nothing written: the credentials are the store's (--creds, --src-creds).
  { key: 'destCreds', applies: writesImage, where: 'a cache pull or warm --for that writes an image to a destination', hint: () => 'give the store\'s credentials with --creds or --src-creds' },
  { key: 'top', applies: (c) => !c.flags.for, where: 'cache warm without --for', situation: 'cache warm --for warms what its plan matched' },
  ...(['target', 'buildArg', 'repo'] as const).map((key) => ({ key, applies: warmsFor, where: 'a plan (cache plan, cache pull, cache warm --for)', situation: 'cache warm has no --for' })),
  { key: 'tag', applies: (c) => /^docker-archive:/.test(c.destination ?? ''), where: 'a cache pull into a docker-archive:', situation: 'this cache pull writes none' },
  { key: 'registry', applies: (c) => c.flags.printCacheFrom !== undefined, where: 'cache pull --print-cache-from', situation: 'no --print-cache-from was given' },
];

/** The options typed for this command (not their defaults), refused where they would be ignored. */
function refuseIgnoredCacheOptions(cmd: Command, command: CacheCase['command'], destination: string | undefined): void {
  const flags = cmd.opts<CacheFlags>();
  const typed = Object.fromEntries(Object.entries(flags).filter(([key]) => cmd.getOptionValueSource(key) !== 'default'));
  refuseIgnoredOptions(typed, { command, destination, flags }, CACHE_RULES, `this is smart cache ${command}${destination ? ` into ${destination}` : ''}`);
}

/** How long work that was cancelled gets to stop by itself (release a lease, close a store) before the command ends anyway. */
const CANCEL_GRACE_MS = 3000;

/**
 * A cache command's action under `--timeout` and Ctrl-C, as push and pull run theirs: both abort
 * `cancel.signal`, which the library's loops and connections honour, so the work stops and cleans
 * up (the index lock is released). Work that does not stop within a short grace (hashing a large
 * build context) is left behind: the command ends with the cancellation all the same.
 */
function cancellable<A extends unknown[]>(action: (this: Command, ...args: A) => Promise<void>) {
  return async function (this: Command, ...args: A): Promise<void> {
    const flags = this.opts<CacheFlags>();
    const timeout = flags.timeout ? setTimeout(() => cancel.abort(new SmartError('CANCELLED', `timed out after ${flags.timeout} s (--timeout)`)), flags.timeout * 1000) : undefined;
    let rejectCancelled: (reason: unknown) => void = () => undefined;
    const cancelled = new Promise<never>((_, reject) => (rejectCancelled = reject));
    let grace: NodeJS.Timeout | undefined;
    const onAbort = () => {
      grace = setTimeout(() => rejectCancelled(cancel.signal.reason), CANCEL_GRACE_MS);
    };
    if (cancel.signal.aborted) onAbort();
    else cancel.signal.addEventListener('abort', onAbort, { once: true });
    try {
      await Promise.race([action.apply(this, args), cancelled]);
    } catch (e) {
      // The work's own error after a cancellation is the cancellation's doing: report that.
      throw cancel.signal.aborted ? cancel.signal.reason : e;
    } finally {
      clearTimeout(timeout);
      clearTimeout(grace);
      cancel.signal.removeEventListener('abort', onAbort);
    }
  };
}

function buildArgs(list: string[] | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const kv of list ?? []) {
    const eq = kv.indexOf('=');
    if (eq <= 0) throw new SmartError('USAGE', `--build-arg takes KEY=VALUE, not "${kv}"`, { input: kv });
    out[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  return out;
}

/** `names`: the store and images the command reads and writes (which registry gets which credentials). */
async function session(flags: CacheFlags, out: Output, names: { read: string[]; write: string[] }) {
  const { openCacheSession } = await import('../ops/cache.js');
  const { defaultCacheDir, noCacheDirReason } = await import('../ops/local-state.js');
  // The index and the layer store live there: without one there is nothing to work on.
  const cacheDir = flags.cacheDir ?? defaultCacheDir();
  if (cacheDir === undefined) {
    throw new SmartError('USAGE', `smart cache keeps its index in a cache directory, and there is none: ${noCacheDirReason()}`, { hint: 'set XDG_CACHE_HOME or pass --cache-dir' });
  }
  const redisUrl = flags.redis ?? process.env.SMART_REDIS_URL;
  return openCacheSession({
    cacheDir,
    ...(redisUrl ? { redisUrl } : {}),
    ...(flags.layerStore ? { layerStoreDir: flags.layerStore } : {}),
    remote: await remoteOptions(flags, names, (m) => out.warn(m)),
    ...(flags.platform ? { platform: flags.platform } : {}),
    ...(flags.jobs ? { jobs: flags.jobs } : {}),
    signal: cancel.signal,
    onWarning: (m) => out.warn(m),
  });
}

function planOptions(flags: CacheFlags, context: string | undefined, dockerfile = flags.file, builder = flags.builder ?? flags.printCacheFrom) {
  const contextDir = path.resolve(context ?? '.');
  return {
    dockerfile: path.resolve(dockerfile ?? path.join(contextDir, 'Dockerfile')),
    contextDir,
    ...(flags.target ? { stage: flags.target } : {}),
    ...(flags.buildArg?.length ? { buildArgs: buildArgs(flags.buildArg) } : {}),
    ...(flags.repo ? { repository: flags.repo } : {}),
    ...(builder ? { builder: builder as (typeof BUILDERS)[number] } : {}),
  };
}

/** The builders a plan can be made for (and `--print-cache-from` prints for). */
const BUILDERS = ['docker', 'buildkit', 'buildx', 'buildah'] as const;

type PlanResult = Awaited<ReturnType<typeof import('../ops/cache.js').planBuild>>;
type PullResult = Awaited<ReturnType<typeof import('../ops/cache.js').pullPlanned>>;
type PruneResult = NonNullable<Awaited<ReturnType<typeof import('../ops/cache.js').warmStore>>['prune']>;

function printPruned(r: PruneResult | undefined, days: string | boolean | undefined, out: Output): void {
  if (r) out.info(`pruned ${plural(r.removedLayers, 'layer')} and ${plural(r.removedBlobs, 'kept blob')} that nothing used within ${pruneDays(days ?? true)} days (${formatBytes(r.freedBytes)})`);
}

/** The layers unpacked from blobs a pull kept, said after those fetched (when there are any). */
function fromKept(layers: number | undefined): string {
  return layers ? `, ${layers} from blobs kept on this machine` : '';
}

const RESOLVED_VIA = { store: 'as', transport: 'read from', registry: 'from the registry as' } as const;

/**
 * What to do when the store holds the base (its tag names it there) but the index has not seen all
 * its layers: another client moved the tag since the last index, whose layers the plan cannot offer.
 */
function unindexedBase(plan: PlanResult): string {
  const b = plan.base!;
  if ((b.resolvedVia ?? 'store') !== 'store' || !b.storedAs || b.inStore >= b.layers) return '';
  return `; the index has not seen ${b.inStore === 0 ? 'them' : 'the others'} yet (smart cache index ${plan.store} adds them)`;
}

function printPlan(plan: PlanResult, out: Output): void {
  if (plan.base) {
    const b = plan.base;
    out.info(
      b.layers
        ? `base ${b.ref}: ${b.inStore} of ${b.layers} layers in the store${b.storedAs ? ` (${RESOLVED_VIA[b.resolvedVia ?? 'store']} ${b.storedAs})` : ''}${unindexedBase(plan)}`
        : `base ${b.ref}: not in the store`,
    );
  }
  for (const s of plan.steps) {
    // A step matched without checking all it reads says what: the builder may still find it changed.
    const unchecked = s.unchecked ? `   (not checked: ${s.unchecked}; the builder checks it)` : '';
    const empty = s.matched && s.noLayer ? '   (made no layer)' : '';
    out.info(`  line ${String(s.line).padStart(3)}  ${s.matched ? '✓' : s.noLayer ? ' ' : '✗'}  ${s.instruction}${empty}${unchecked}`);
  }
  if (!plan.best) {
    out.info('no stored image shares a layer with this build');
    return;
  }
  const b = plan.best;
  const which = plan.base ? ` (${b.baseLayers} of the base, ${plural(b.steps, 'build step')})` : ' shared';
  out.info(`best cache: ${b.image}@${b.manifest}: ${plural(b.layers.length, 'layer')}${which}, ${formatBytes(b.bytes)} to fetch${b.inlineCache ? ' (with BuildKit inline cache)' : ''}`);
  if (plan.naive) out.info(`a naive pull of ${plan.naive.image}: ${formatBytes(plan.naive.bytes)}`);
  if (plan.alternatives.length) out.info(`also holding these layers: ${plan.alternatives.join(', ')}`);
}

/**
 * The builder's commands and flags: to `--print-cache-from-file`, else to stdout — or to stderr when
 * stdout carries the image or the JSON summary (which then holds them too, as `cacheFrom`).
 */
async function printCacheFrom(r: PullResult, flags: CacheFlags, out: Output, stdoutTaken: boolean): Promise<void> {
  const c = r.cacheFrom!;
  if (c.note) out.warn(`${c.builder}: ${c.note}`);
  const lines = [...c.commands, ...(c.flags ? [c.flags] : [])];
  const text = lines.length ? `${lines.join('\n')}\n` : '';
  if (flags.printCacheFromFile) await fs.writeFile(flags.printCacheFromFile, text);
  // With --progress json, stderr holds events alone: the --json document holds them (cacheFrom).
  else if (stdoutTaken) {
    if (!(out.options.progressJson && flags.json)) guardedStderr().write(text);
  }
  else guardedStdout().write(text);
}

export function addCacheCommands(program: Command): void {
  const cache = program.command('cache').description('the layer trie of a store: build-cache plans, precise cache pulls, warming, lint');

  addCommonOptions(
    cache
      .command('index')
      .description('build or refresh the layer trie of a whole store (safe from cron: one run per store at a time)')
      .argument('<store>', 'file:ROOT, s3://BUCKET[/ROOT] or docker://HOST[:PORT]')
      .option('--fail-if-locked', 'exit 1 (not 0) when another run holds the store\'s index lock')
      .addOption(
        new Option('--lease <seconds>', 'the index lock\'s lease: renewed while the run lives, released when it ends; a killed run blocks others this long')
          .argParser(commanderParser(positiveInt('--lease', 3600)))
          .default(30),
      ),
  ).action(
    cancellable(async function (this: Command, store: string) {
      refuseIgnoredCacheOptions(this, 'index', undefined);
      const flags = this.opts<CacheFlags>();
      const out = new Output(outputOptions(flags));
      const { indexStore } = await import('../ops/cache.js');
      const s = await session(flags, out, { read: [store], write: [] });
      try {
        const r = await indexStore(store, s.ctx, { ...(flags.lease ? { leaseSeconds: flags.lease } : {}) });
        if (r.skipped) {
          const message = `${r.store}: another index run holds the lock${r.lockedBy ? ` (pid ${r.lockedBy.pid} on ${r.lockedBy.host})` : ''}; nothing done`;
          if (flags.json) out.json(r);
          if (flags.failIfLocked) throw new SmartError('LOCKED', message, { input: store, hint: 'it is released when that run ends, or one lease after it was killed' });
          out.info(message);
          return;
        }
        out.info(
          `${r.store}: ${plural(r.tags, 'tag')} in ${plural(r.repositories, 'repository', 'repositories')}; ${r.refreshed} refreshed, ${r.unchanged} unchanged, ${r.failed.length} failed; ${plural(r.nodes, 'layer chain')}`,
        );
        for (const f of r.failed) out.warn(`${f.image}: ${f.error}`);
        if (flags.json) out.json(r);
      } finally {
        await s.close();
      }
    }),
  );

  const planLike = (cmd: Command) =>
    addCommonOptions(
      cmd
        .option('-f, --file <Dockerfile>', 'the Dockerfile (default: CONTEXT/Dockerfile)')
        .option('--target <stage>', 'the stage to build (default: the last)')
        .option('--build-arg <key=value>', 'a build argument (repeatable)', collect, [])
        .option('--repo <repository>', "the repository being built: its latest tag is the naive alternative")
        .addOption(new Option('--builder <builder>', 'match only layers this builder could reuse: docker (classic builder), buildkit, buildx or buildah').choices(BUILDERS)),
    );

  planLike(
    cache
      .command('plan')
      .description('which stored image\'s which layers are the best build cache for a Dockerfile (or --image)')
      .argument('<store>', 'file:ROOT, s3://BUCKET[/ROOT] or docker://HOST[:PORT]')
      .argument('[context]', 'the build context (default: .)')
      .option('--image <source>', 'plan for a built image instead: which stored images share most of its layers'),
  ).action(cancellable(async function (this: Command, store: string, context: string | undefined) {
    refuseIgnoredCacheOptions(this, 'plan', undefined);
    const flags = this.opts<CacheFlags>();
    const out = new Output(outputOptions(flags));
    const ops = await import('../ops/cache.js');
    const s = await session(flags, out, { read: [store, ...(flags.image ? [flags.image] : [])], write: [] });
    try {
      let plan: PlanResult;
      if (flags.image) {
        const { resolveImageByName } = await import('../ops/transfer.js');
        // The image is read with the command's registry settings (--cert-dir, --creds, --insecure-registry...).
        const resolved = await resolveImageByName(flags.image, { ...(flags.platform ? { platform: flags.platform } : {}), ctx: s.ctx.endpoints });
        try {
          plan = await ops.planForImage(store, resolved.image, s.ctx);
        } finally {
          await resolved.close();
        }
      } else {
        plan = await ops.planBuild(store, planOptions(flags, context), s.ctx);
      }
      printPlan(plan, out);
      if (flags.json) out.json(plan);
    } finally {
      await s.close();
    }
  }));

  planLike(
    cache
      .command('pull')
      .description('fetch exactly the layers the plan matched: into the layer store, or as the truncated image to DEST')
      .argument('<store>', 'file:ROOT, s3://BUCKET[/ROOT] or docker://HOST[:PORT]')
      .argument('[context]', 'the build context (default: .)')
      .argument('[destination]', 'where to write the truncated image, e.g. docker-archive:- for docker load, oci:DIR for buildah (default: the layer store)')
      .addOption(
        new Option('--print-cache-from <builder>', 'print what makes this builder use the cache (and plan for it): docker (classic builder), buildkit, buildx or buildah').choices(BUILDERS),
      )
      .option('--print-cache-from-file <file>', 'write those flags (and commands) to FILE instead')
      .option('--tag <name:tag>', 'the name of a docker-archive written (default: smartcache/REPO:CHAIN, what --print-cache-from docker names)')
      .option('--registry <host[:port]>', 'the registry serving this store, for --print-cache-from (default: the store\'s for docker://)')
      .option('--layer-store <dir>', 'where unpacked layers are kept (default: CACHE_DIR/layer-store)'),
  ).action(cancellable(async function (this: Command, store: string, context: string | undefined, destination: string | undefined) {
    const flags = this.opts<CacheFlags>();
    // `cache pull STORE DEST` (context omitted): an image name is never a directory.
    if (context && !destination && /^[a-z0-9-]+:/.test(context) && !context.startsWith('/')) {
      destination = context;
      context = undefined;
    }
    refuseIgnoredCacheOptions(this, 'pull', destination);
    const imageOnStdout = toStdout(destination);
    refuseJsonWithImageOnStdout(flags.json, destination);
    refuseTerminals(undefined, destination);
    // A reader that goes away (`| head`) ends the command quietly (main: EXIT_BROKEN_PIPE).
    if (imageOnStdout) guardedStdout();
    if (flags.printCacheFromFile && !flags.printCacheFrom) throw new SmartError('USAGE', '--print-cache-from-file needs --print-cache-from BUILDER');
    const out = new Output(outputOptions(flags));
    const ops = await import('../ops/cache.js');
    if (flags.tag !== undefined) await ops.checkArchiveTag(flags.tag, destination);
    const s = await session(flags, out, { read: [store], write: destination ? [destination] : [] });
    try {
      // BuildKit reads its cache from the registry itself: nothing to fetch for it, unless asked to write somewhere.
      const planOnly = !destination && (flags.printCacheFrom === 'buildkit' || flags.printCacheFrom === 'buildx');
      const r: PullResult = planOnly
        ? { plan: await ops.planBuild(store, planOptions(flags, context), s.ctx), fetched: 0, bytes: 0, destination: 'nothing (BuildKit fetches from the registry)' }
        : await ops.pullForBuild(store, planOptions(flags, context), {
            ...s.ctx,
            layerStore: s.layerStore,
            ...(destination ? { destination } : {}),
            ...(flags.tag ? { tag: flags.tag } : {}),
            ...(flags.printCacheFrom === 'buildah' ? { perStep: true } : {}),
          });
      // The plan followed (planned again when its best cache had gone from the store).
      printPlan(r.plan, out);
      out.info(`fetched ${plural(r.fetched, 'layer')} (${formatBytes(r.bytes)})${fromKept(r.fromKeptBlobs)} into ${r.destination}${r.manifestDigest ? ` as ${r.manifestDigest}` : ''}`);
      if (r.images?.length === 1) out.info(`named ${r.images[0]}`);
      else if (r.images?.length) out.info(`${r.images.length} images, one per step: ${r.images.join(', ')}`);
      if (flags.printCacheFrom) {
        const registry = flags.registry ?? /^docker:\/\/([^/]+)/.exec(store)?.[1];
        r.cacheFrom = ops.cacheFromInstructions(flags.printCacheFrom as (typeof ops.CACHE_BUILDERS)[number], r, registry);
        await printCacheFrom(r, flags, out, imageOnStdout || Boolean(flags.json));
      }
      if (flags.json) out.json(r);
    } finally {
      await s.close();
    }
  }));

  addCommonOptions(
    cache
      .command('warm')
      .description('prefetch what builds will reuse, for cron on build machines: the layer chains most shared across the store, or --for a Dockerfile its plan\'s layers')
      .argument('<store>', 'file:ROOT, s3://BUCKET[/ROOT] or docker://HOST[:PORT]')
      .argument('[context]', 'with --for: the build context (default: the Dockerfile\'s directory)')
      .argument('[destination]', 'with --for: where to write the cache image, as cache pull (default: the layer store)')
      .addOption(new Option('--top <n>', 'how many chains').argParser(commanderParser(positiveInt('--top', 10_000))).default(10))
      .option('--for <Dockerfile>', 'prefetch what the next build of this Dockerfile will reuse (its plan), not the most shared chains')
      .option('--target <stage>', 'with --for: the stage to build (default: the last)')
      .option('--build-arg <key=value>', 'with --for: a build argument (repeatable)', collect, [])
      .option('--repo <repository>', 'with --for: the repository being built')
      .option('--layer-store <dir>', 'where unpacked layers are kept (default: CACHE_DIR/layer-store)')
      .option('--prune [days]', 'then remove from the layer store the layers and kept blobs that nothing pulled or warmed within DAYS (default 7) uses'),
  ).action(cancellable(async function (this: Command, store: string, context: string | undefined, destination: string | undefined) {
    refuseIgnoredCacheOptions(this, 'warm', destination);
    const flags = this.opts<CacheFlags>();
    const out = new Output(outputOptions(flags));
    if (!flags.for && (context || destination)) throw new SmartError('USAGE', 'cache warm takes a context and a destination only with --for DOCKERFILE', { input: context ?? destination });
    refuseJsonWithImageOnStdout(flags.json, destination);
    refuseTerminals(undefined, destination);
    if (toStdout(destination)) guardedStdout();
    const pruneAgeMs = flags.prune !== undefined ? pruneDays(flags.prune) * 86_400_000 : undefined;
    const ops = await import('../ops/cache.js');
    const s = await session(flags, out, { read: [store], write: destination ? [destination] : [] });
    try {
      if (flags.for) {
        const dockerfile = path.resolve(flags.for);
        const r = await ops.warmForBuild(store, planOptions(flags, context ?? path.dirname(dockerfile), dockerfile), {
          ...s.ctx,
          layerStore: s.layerStore,
          ...(destination ? { destination } : {}),
          ...(pruneAgeMs !== undefined ? { pruneAgeMs } : {}),
        });
        printPlan(r.plan, out);
        out.info(`warmed ${plural(r.plan.best?.layers.length ?? 0, 'layer')} for ${flags.for}: ${r.fetched} fetched (${formatBytes(r.bytes)})${fromKept(r.fromKeptBlobs)} into ${r.destination}`);
        printPruned(r.prune, flags.prune, out);
        if (flags.json) out.json(r);
        return;
      }
      const r = await ops.warmStore(store, flags.top ?? 10, { ...s.ctx, layerStore: s.layerStore, ...(pruneAgeMs !== undefined ? { pruneAgeMs } : {}) });
      out.info(`warmed ${plural(r.chains, 'chain')}: ${plural(r.layers, 'layer')}, ${r.fetched} fetched (${formatBytes(r.bytes)})${fromKept(r.fromKeptBlobs)}`);
      printPruned(r.prune, flags.prune, out);
      if (flags.json) out.json(r);
    } finally {
      await s.close();
    }
  }));

  cache
    .command('lint')
    .description('advice that makes builds cache well (exit 1 with --strict when there is any)')
    .argument('[context]', 'the build context (default: .)')
    .option('-f, --file <Dockerfile>', 'the Dockerfile (default: CONTEXT/Dockerfile)')
    .option('--strict', 'exit 1 when there is advice')
    .option('--json', 'print the advice as JSON on stdout')
    .option('-q, --quiet', 'print nothing but errors')
    .option('--debug', 'print stack traces of errors')
    .action(async function (this: Command, context: string | undefined) {
      const flags = this.opts<CacheFlags>();
      const out = new Output(outputOptions(flags));
      const contextDir = path.resolve(context ?? '.');
      const { lint } = await import('../ops/cache.js');
      const r = await lint(path.resolve(flags.file ?? path.join(contextDir, 'Dockerfile')), contextDir);
      for (const a of r.advice) out.info(`${a.line ? `line ${a.line}: ` : ''}${a.message} [${a.code}]`);
      out.info(`context: ${formatBytes(r.contextSizes.before)} before .dockerignore, ${formatBytes(r.contextSizes.after)} after`);
      if (flags.json) out.json(r);
      if (flags.strict && r.advice.length) throw new SmartError('ADVICE', `${r.advice.length} piece${r.advice.length === 1 ? '' : 's'} of advice (--strict)`);
    });

  // Options all commands share that a cache command always refuses: out of its help and its
  // completion (typed, they are still refused in one line naming where they apply).
  const refused = new Set(CACHE_RULES.filter((r) => r.applies === never).map((r) => r.key as string));
  for (const sub of cache.commands) for (const option of sub.options) if (refused.has(option.attributeName())) option.hideHelp();
}
