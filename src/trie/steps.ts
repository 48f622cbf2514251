/**
 * The build steps of a Dockerfile's target stage, each with the key the layer trie matches on:
 * the step's normal form (history.ts) and, for what is copied from the build context, the
 * content digest of exactly the files the builder would take (context.ts).
 *
 * Layers: RUN, COPY and ADD make one; WORKDIR (to anything but `/`) makes one too under BuildKit
 * (a mkdir file operation, committed with a layer since 2019 — dockerfile2llb dispatchWorkdir;
 * docker/buildx#1910), empty when the directory already exists, and the classic builder and
 * kaniko record it as an empty layer or none. So WORKDIR steps say `producesLayer: true,
 * layerOptional: true`: a matcher takes a non-empty WORKDIR history entry as this step, and
 * skips the step when the history has no layer for it. Every other instruction makes no layer.
 *
 * Keys: `stepKey` is sha256 over the step alone (normal form, content digest, what else changes
 * its result: `--from`, RUN flags); `key` chains it after the keys of the steps before it that
 * change what later steps see (RUN, COPY, ADD, WORKDIR, ENV, ARG, USER, SHELL — not LABEL, CMD,
 * EXPOSE...), starting from the FROM image: equal keys mean equal layers from there on.
 */
import { SmartError, isSmartError } from '../errors.js';
import { sha256Digest, type Digest } from '../oci/digest.js';
import {
  cleanPath,
  collectCopyEntries,
  contextRelative,
  digestCopyEntries,
  expandWildcard,
  hasWildcards,
  indexContext,
  inlineCopyEntries,
  loadDockerignore,
  resolveInContext,
  type ContextIndex,
  type ContextMatcher,
  type CopyEntry,
} from '../dockerfile/context.js';
import {
  expandInstructionWord,
  findStage,
  getFlag,
  getFlags,
  globalArgValues,
  isRemote,
  resolveStageBase,
  type Dockerfile,
  type Instruction,
  type Stage,
} from '../dockerfile/parser.js';
import { ClassicContextSums, buildahSourceRef, loadOwnerNames, type OwnerNames } from '../dockerfile/builder-hashes.js';
import { DEFAULT_SHELL, buildahExecRun, elidedCopyInstruction, normalizeInstruction } from '../dockerfile/history.js';
import { elidedSummaryDigest, nextWorkdir, resolveCopyDestination } from './image-steps.js';
import { archiveCopyEntries } from './archive-entries.js';
import type { StepKey } from './layer-trie.js';

export interface Step {
  /** Index of the stage the instruction is in (a target built on other stages lists theirs first). */
  stage: number;
  /** 1-based first and last line of the instruction. */
  line: number;
  endLine: number;
  keyword: string;
  /** The normal form (history.ts): what an image's history says for this step. */
  instruction: string;
  /** Whether the builder commits a layer for it (BuildKit's rule, see the module comment). */
  producesLayer: boolean;
  /** The layer may be absent or empty in an image (WORKDIR). */
  layerOptional?: true;
  /** COPY/ADD from the context (and heredocs), RUN bind mounts of the context: what the step reads. */
  contentDigest?: Digest;
  /** The step reads content this toolkit cannot see (`COPY --from`, remote ADD, bind mounts `from=`): keyed by its instruction only. */
  external?: true;
  /** `COPY --from=` (stage name or image), after substitution. */
  from?: string;
  /** COPY/ADD: the destination, absolute (a relative one resolved against the WORKDIR), `/`-terminated when written so. For `digestLayerEntries`. */
  destination?: string;
  /** RUN: the stage's ARGs and their values, as BuildKit records them (`|N K=V`). */
  buildArgs?: Record<string, string>;
  /**
   * COPY/ADD from the context, with `builderKeys`: the keys the same step has in images built
   * without `push --dockerfile` (the Docker classic builder's and buildah's content references,
   * the summary of a layer whose history elides the sources), each with the builder whose history
   * it is read from.
   */
  alternatives?: BuilderStepKey[];
  /**
   * What the build itself (not its base) set before this step and the builders run it under: ENV
   * values, the USER, the WORKDIR, each undefined when the build never set it, null when it is not
   * known here (named by a variable of the base's, or a WORKDIR relative to the base's). A RUN's
   * build args are `buildArgs`.
   * See `ownConfigAtLayers` (image-steps.ts) for the stored image's side; plan.ts compares them.
   */
  own?: OwnConfig;
  /** sha256 over this step alone. */
  stepKey: Digest;
  /** sha256 over the base and every earlier step that changes this one's result, and this step. */
  key: Digest;
}

export interface BuildSteps {
  /** The external image the target stage is built on (FROM, global ARGs substituted, stage names followed); `scratch` for none. */
  base: string;
  platform?: string;
  /** Target stage index, and the stages it is built on, root first. */
  stage: number;
  chain: number[];
  steps: Step[];
}

export interface StepsOptions {
  contextDir: string;
  /** Target stage: name or index (default: the last). */
  stage?: string | number;
  buildArgs?: Record<string, string>;
  /** Default: the `.dockerignore` Docker would use (`<dockerfilePath>.dockerignore` first). */
  matcher?: ContextMatcher;
  dockerfilePath?: string;
  /**
   * The base image's environment (`KEY=value` list or record), for `$VAR` substitution as the
   * builder does. Without it, variables not set in the Dockerfile stay as written in the normal
   * forms (COPY/ADD sources still read them as empty, as Docker does).
   */
  baseEnv?: Record<string, string> | string[];
  /** The base image's working directory (default `/`), for relative WORKDIRs. */
  baseWorkdir?: string;
  /** Content hashes cache (see context.ts). */
  hashCache?: Map<string, string>;
  /** Compute `Step.alternatives` (reads the COPY sources again: what plans need, pushes not). */
  builderKeys?: boolean;
}

/**
 * A key a step has in some images: `builder` names the builder whose history gives it (`docker`
 * the classic builder, `buildah`); none for the summary of a layer's files, which any builder's
 * layer can match (the builder itself could then not reuse it).
 */
export interface BuilderStepKey {
  key: StepKey;
  builder?: 'docker' | 'buildah';
  /**
   * What this key leaves unchecked that the step's own key checks (the files a RUN bind-mounts
   * from the context, the owner a COPY --chown sets): a layer found only under it is matched
   * without it, and the plan says so.
   */
  unchecked?: string;
  /**
   * Only for a plan for `builder`: the key is also what another builder writes for another step
   * (buildah's `/bin/sh -c` form of a RUN under another SHELL is every builder's default-shell RUN).
   */
  onlyForBuilder?: true;
}

export const STEP_KEY_VERSION = 'smartlayer-step-v1';

/** Instructions whose effect reaches later steps (they enter the key chain). */
const CHAINED = new Set(['RUN', 'COPY', 'ADD', 'WORKDIR', 'ENV', 'ARG', 'USER', 'SHELL']);

/** The config a build set itself before a step (Step.own). */
export interface OwnConfig {
  env: Record<string, string | null>;
  user?: string | null;
  workdir?: string | null;
}

interface StageState {
  env: Map<string, string>;
  workdir: string;
  shell: string[];
}

/** The steps of the target stage with their keys (see the module comment). */
export async function dockerfileSteps(df: Dockerfile, options: StepsOptions): Promise<BuildSteps> {
  const buildArgs = options.buildArgs ?? {};
  const target = findStage(df, options.stage);
  const chain = stageChain(df, target, buildArgs);
  const root = chain[0]!;
  const { base, platform } = resolveStageBase(df, root, buildArgs);
  const matcher = options.matcher ?? (await loadDockerignore(options.contextDir, options.dockerfilePath ? { dockerfile: options.dockerfilePath } : {}));
  let index: ContextIndex | undefined;
  const contextIndex = async () => (index ??= await indexContext(options.contextDir, matcher));
  const hashCache = options.hashCache ?? new Map<string, string>();
  let classicSums: ClassicContextSums | undefined;
  let ownerNames: OwnerNames | undefined;
  const globals = globalArgValues(df, buildArgs);
  const globalNames = new Set(df.globalArgs.flatMap((a) => (a.pairs ?? []).map((p) => p.key)));

  const baseEnv = new Map<string, string>(
    Array.isArray(options.baseEnv)
      ? options.baseEnv.map((kv) => {
          const eq = kv.indexOf('=');
          return eq < 0 ? [kv, ''] : [kv.slice(0, eq), kv.slice(eq + 1)];
        })
      : Object.entries(options.baseEnv ?? {}),
  );
  const knowBaseEnv = options.baseEnv !== undefined;
  const state: StageState = { env: baseEnv, workdir: options.baseWorkdir ?? '/', shell: [...DEFAULT_SHELL] };
  let parent = sha256Digest(JSON.stringify([STEP_KEY_VERSION, 'FROM', base, platform ?? null]));
  const steps: Step[] = [];
  /** What the context COPYs so far placed where (see `entriesLeftByDiffer`). */
  const placed = new Map<string, string>();
  /** Step.own as the walk goes (through the chain: a stage built on another inherits its config). */
  const ownConfig: { env: Map<string, string | null>; user?: string | null; workdir?: string | null } = { env: new Map() };

  for (const stage of chain) {
    const args = new Map<string, string | undefined>();
    const lookup = (name: string) => (state.env.has(name) ? state.env.get(name) : args.get(name));
    const expand = (instr: Instruction, word: string, strict = false, skipQuotes = false) =>
      expandInstructionWord(df, instr, word, { lookup, skipUnset: !strict && !knowBaseEnv, skipQuotes });
    for (const instr of stage.instructions) {
      const ctx = { lookup, skipUnset: !knowBaseEnv, workdir: state.workdir, shell: state.shell, escape: df.escape };
      const norm = () => located(df, instr, () => normalizeInstruction(instr, ctx));
      // What the step runs under: the config set before it (a WORKDIR's own layer comes before its directory is the working one).
      const ownBefore: OwnConfig = {
        env: Object.fromEntries(ownConfig.env),
        ...(ownConfig.user !== undefined ? { user: ownConfig.user } : {}),
        ...(ownConfig.workdir !== undefined ? { workdir: ownConfig.workdir } : {}),
      };
      let instruction: string;
      let producesLayer = false;
      let layerOptional = false;
      let contentDigest: Digest | undefined;
      let external = false;
      let from: string | undefined;
      let destination: string | undefined;
      let runArgs: Record<string, string> | undefined;
      let extra: Record<string, unknown> | undefined;
      let alternatives: BuilderStepKey[] | undefined;

      switch (instr.keyword) {
        case 'ARG': {
          const parts: string[] = [];
          for (const p of instr.pairs ?? []) {
            let value: string | undefined;
            if (Object.hasOwn(buildArgs, p.key)) value = buildArgs[p.key];
            else if (p.value !== undefined) value = expand(instr, p.value, true);
            else if (globalNames.has(p.key) || /^(BUILD|TARGET)(PLATFORM|OS|ARCH|VARIANT)$/.test(p.key)) value = globals.get(p.key);
            args.set(p.key, value);
            parts.push(value === undefined ? p.key : `${p.key}=${value}`);
          }
          instruction = `ARG ${parts.join(' ')}`;
          break;
        }
        case 'ENV': {
          instruction = norm();
          // Every pair is expanded against the variables from before the instruction (`ENV X=5
          // Y=$X` gives Y the old X), as the builders expand it; then all are set.
          const pairs = (instr.pairs ?? []).map((p) => {
            // A variable this walk does not know (the base's) makes the value unknown here; a `$`
            // the value holds otherwise (`ENV W="a\\$b"`) is the value.
            let unknown = false;
            const lookupNoting = (name: string) => {
              const v = lookup(name);
              if (v === undefined && !args.has(name) && !knowBaseEnv) unknown = true;
              return v;
            };
            const value = expandInstructionWord(df, instr, p.value ?? '', { lookup: lookupNoting, skipUnset: !knowBaseEnv });
            return [expand(instr, p.key), value, unknown] as const;
          });
          for (const [key, value, unknown] of pairs) {
            state.env.set(key, value);
            ownConfig.env.set(key, unknown ? null : value);
          }
          break;
        }
        case 'USER':
          instruction = norm();
          ownConfig.user = instruction.slice('USER '.length);
          // Named by a variable this walk does not know (the base's): not known here.
          if (ownConfig.user.includes('$')) ownConfig.user = null;
          break;
        case 'WORKDIR': {
          instruction = norm();
          const written = expand(instr, instr.words[0] ?? '', true);
          const resolved = cleanPath(instruction.slice('WORKDIR '.length));
          // Relative to the FROM image's own, which is not known here: below the unknown root (image-steps.ts).
          ownConfig.workdir = resolved.includes('$') ? null : nextWorkdir(ownConfig.workdir, written);
          state.workdir = instruction.slice('WORKDIR '.length);
          producesLayer = state.workdir !== '/';
          layerOptional = producesLayer;
          break;
        }
        case 'SHELL':
          instruction = norm();
          state.shell = [...instr.words];
          break;
        case 'RUN': {
          instruction = norm();
          producesLayer = true;
          runArgs = Object.fromEntries([...args].map(([k, v]) => [k, v ?? '']));
          const flags = instr.flags.map((f) => expand(instr, f.raw, true)).sort();
          if (flags.length > 0) extra = { flags };
          const mounts = getFlags(instr, 'mount').map((m) => parseMount(expand(instr, m, true)));
          const binds = mounts.filter((m) => m.type === 'bind');
          if (binds.some((m) => m.from !== undefined)) external = true;
          const local = binds.filter((m) => m.from === undefined);
          if (local.length > 0) {
            const lines: string[] = [];
            for (const m of local) {
              const entries = await collectCopyEntries(options.contextDir, [m.source], matcher, {
                index: await contextIndex(),
                hashCache,
                file: df.file,
                line: instr.startLine,
              });
              lines.push(`${m.target}\0${digestCopyEntries(entries)}`);
            }
            contentDigest = sha256Digest(lines.join('\n'));
            // BuildKit's history of such a RUN is its command alone (no mounts, no content): the
            // image it built is found by the instruction, the bound files left to the builder.
            alternatives = [{ key: { instruction }, unchecked: 'the files it bind-mounts from the context' }];
          }
          // buildah's history of an exec-form RUN is its JSON as written: `["/bin/sh", "-c", X]`
          // is not its `RUN X`, which the normal form is (the other builders run both alike).
          const buildahExec = instr.json ? buildahExecRun(instr.words) : undefined;
          if (buildahExec !== undefined && buildahExec !== instruction) alternatives = [...(alternatives ?? []), { key: { instruction: buildahExec }, builder: 'buildah' }];
          // buildah's history of a shell-form RUN says `/bin/sh -c …` whatever SHELL set (and
          // its cache goes by that history): its images hold the step under that form.
          if (!instr.json && state.shell.join('\0') !== DEFAULT_SHELL.join('\0')) {
            const asBuildahWrites = located(df, instr, () => normalizeInstruction(instr, { ...ctx, shell: DEFAULT_SHELL }));
            alternatives = [
              ...(alternatives ?? []),
              { key: { instruction: asBuildahWrites }, builder: 'buildah', onlyForBuilder: true, ...(contentDigest ? { unchecked: 'the files it bind-mounts from the context' } : {}) },
            ];
          }
          break;
        }
        case 'COPY':
        case 'ADD': {
          instruction = norm();
          producesLayer = true;
          const destWritten = expand(instr, instr.words[instr.words.length - 1]!, true);
          destination = resolveCopyDestination(state.workdir, destWritten);
          const fromFlag = getFlag(instr, 'from');
          if (fromFlag !== undefined) {
            from = expand(instr, fromFlag, true);
            external = true;
            extra = { from };
            break;
          }
          const srcWords = instr.words.slice(0, -1);
          const heredocs = new Map(instr.heredocs.map((d) => [d.name, d]));
          const inline: { name: string; content: string }[] = [];
          const local: string[] = [];
          for (const w of srcWords) {
            const doc = /^\d*<<-?\s*([^<]+)$/.exec(w);
            const name = doc?.[1]?.replace(/^(['"])([\s\S]*)\1$/, '$2');
            const hd = name !== undefined ? heredocs.get(name) : undefined;
            if (hd) {
              let content = hd.chomp ? hd.content.replace(/^\t+/gm, '') : hd.content;
              if (hd.expand) content = expand(instr, content, true, true);
              inline.push({ name: hd.name, content });
              continue;
            }
            const src = expand(instr, w, true);
            if (instr.keyword === 'ADD' && isRemote(src)) external = true;
            else local.push(src);
          }
          if (external) {
            const checksum = getFlag(instr, 'checksum');
            if (checksum !== undefined) extra = { checksum };
            break;
          }
          const chown = optional(getFlag(instr, 'chown'), (v) => expand(instr, v, true));
          const chmod = optional(getFlag(instr, 'chmod'), (v) => expand(instr, v, true));
          const exclude = getFlags(instr, 'exclude').map((v) => expand(instr, v, true));
          const parents = (getFlag(instr, 'parents') ?? 'false').toLowerCase() === 'true';
          let entries: CopyEntry[] = [];
          if (local.length > 0) {
            entries = await collectCopyEntries(options.contextDir, local, matcher, {
              index: await contextIndex(),
              hashCache,
              exclude,
              parents,
              ...(instr.keyword === 'ADD' && unpackFlag(getFlag(instr, 'unpack')) ? { unpack: archiveCopyEntries } : {}),
              file: df.file,
              line: instr.startLine,
            });
          }
          entries = [...entries, ...inlineCopyEntries(inline)];
          const flags = { ...(chown !== undefined ? { chown } : {}), ...(chmod !== undefined ? { chmod } : {}) };
          contentDigest = digestCopyEntries(entries, flags);
          // BuildKit (and the classic builder's dir:) key a directory source on its own mode too
          // (not the context root's), which no layer holds: in the step's own key, and the keys a
          // layer's files give say they leave it unchecked.
          const sourceDirs = local.length > 0 ? sourceDirectoryModes(await contextIndex(), local) : [];
          const filesDigest = contentDigest;
          if (sourceDirs.length > 0) contentDigest = sha256Digest(JSON.stringify([STEP_KEY_VERSION, 'source directory modes', filesDigest, sourceDirs]));
          const dirUnchecked = sourceDirs.length > 0 ? `the mode of ${sourceDirs.map(([dir]) => dir).join(', ')} itself, which BuildKit keys the step on and no layer holds` : undefined;
          if (options.builderKeys && local.length > 0 && inline.length === 0) {
            const index = await contextIndex();
            classicSums ??= new ClassicContextSums(index);
            ownerNames ??= await loadOwnerNames();
            const kw = instr.keyword;
            // buildah writes the destination as written, before substitution; the classic builder after it.
            const destRaw = instr.words[instr.words.length - 1]!;
            const keys: BuilderStepKey[] = [];
            const classic = await classicSums.sourceRef(local);
            if (classic) keys.push({ key: { instruction: elidedCopyInstruction(kw, destWritten, chown), contentDigest: classic }, builder: 'docker' });
            // buildah names a single file after a destination that is not a directory; whether it is
            // one depends on the image, so both names are tried.
            const single = local.length === 1 && !/[*?[]/.test(local[0]!) && entries.length === 1 && entries[0]!.type === 'file';
            const renames = single && !/\/\.?$/.test(destWritten) && destWritten !== '.' && destination !== state.workdir ? [undefined, destination.split('/').pop()!] : [undefined];
            // buildah's reference of an extracted archive is over its members as Go's tar writer
            // rewrites their headers (format, names, times as the archive has them): not
            // reproduced, so none; nor can the layer's files stand for the archive's bytes (the
            // summaries below carry them): such a step matches what `push --dockerfile` recorded.
            for (const renameTo of entries.some((e) => e.fromArchive) ? [] : renames) {
              const ref = await buildahSourceRef(index, local, { names: ownerNames, ...(chown !== undefined ? { chown } : {}), ...(chmod !== undefined ? { chmod } : {}), ...(renameTo ? { renameTo } : {}) });
              if (ref) keys.push({ key: { instruction: elidedCopyInstruction(kw, destRaw), contentDigest: ref }, builder: 'buildah' });
            }
            const files = elidedSummaryDigest(entries, chmod);
            keys.push({ key: { instruction: elidedCopyInstruction(kw, destWritten, chown), contentDigest: files } }, { key: { instruction: elidedCopyInstruction(kw, destRaw), contentDigest: files } });
            // BuildKit's history writes a COPY without its --chown and --chmod: the layer is then
            // known by the rest of the instruction and its files (their modes carry a --chmod; the
            // owner a --chown sets goes unchecked).
            const bare = chown !== undefined || chmod !== undefined ? instruction.replace(/ --(?:chown|chmod)=\S+/g, '') : undefined;
            const notChecked = [...(chown !== undefined ? [`the owner --chown=${chown} sets, which BuildKit's history leaves out`] : []), ...(dirUnchecked ? [dirUnchecked] : [])];
            const ownerUnchecked = notChecked.length > 0 ? { unchecked: notChecked.join('; ') } : {};
            const dirModeUnchecked = dirUnchecked ? { unchecked: dirUnchecked } : {};
            if (dirUnchecked) keys.push({ key: { instruction, contentDigest: filesDigest }, ...dirModeUnchecked });
            if (bare) keys.push({ key: { instruction: bare, contentDigest: files }, ...ownerUnchecked });
            const rest = entriesLeftByDiffer(entries, destination, placed, flags);
            if (rest) {
              keys.push({ key: { instruction, contentDigest: digestCopyEntries(rest, flags) }, ...dirModeUnchecked });
              if (bare) keys.push({ key: { instruction: bare, contentDigest: elidedSummaryDigest(rest, chmod) }, ...ownerUnchecked });
            }
            // One file to a destination that is not a directory: the layer holds it under the
            // destination's name (`COPY app.conf /etc/app/main.conf`), and its summary names it so
            // (digestLayerEntries): the same keys over the file renamed.
            const renamedTo = renames[1];
            if (renamedTo !== undefined && renamedTo !== entries[0]!.path) {
              const renamed = [{ ...entries[0]!, path: renamedTo }];
              const elided = elidedSummaryDigest(renamed, chmod);
              keys.push(
                { key: { instruction, contentDigest: digestCopyEntries(renamed, flags) } },
                { key: { instruction: elidedCopyInstruction(kw, destWritten, chown), contentDigest: elided } },
                { key: { instruction: elidedCopyInstruction(kw, destRaw), contentDigest: elided } },
              );
              if (bare) keys.push({ key: { instruction: bare, contentDigest: elided }, ...ownerUnchecked });
            }
            alternatives = keys;
          }
          recordPlaced(entries, destination, placed, flags);
          break;
        }
        default:
          instruction = norm();
      }

      const own = [instruction, contentDigest ?? null, extra ?? null];
      const stepKey = sha256Digest(JSON.stringify([STEP_KEY_VERSION, ...own]));
      const key = sha256Digest(JSON.stringify([STEP_KEY_VERSION, parent, ...own]));
      if (CHAINED.has(instr.keyword)) parent = key;
      const step: Step = { stage: stage.index, line: instr.startLine, endLine: instr.endLine, keyword: instr.keyword, instruction, producesLayer, stepKey, key };
      if (layerOptional) step.layerOptional = true;
      if (contentDigest) step.contentDigest = contentDigest;
      if (external) step.external = true;
      if (from !== undefined) step.from = from;
      if (destination !== undefined) step.destination = destination;
      if (runArgs) step.buildArgs = runArgs;
      if (alternatives) step.alternatives = alternatives;
      if (producesLayer) step.own = ownBefore;
      steps.push(step);
    }
  }
  return { base, ...(platform !== undefined ? { platform } : {}), stage: target.index, chain: chain.map((s) => s.index), steps };
}

/**
 * A COPY's entries as a layer made by diffing the tree holds them, when an earlier COPY of the
 * build placed some of them already: undefined when none. A differ that compares files
 * (containerd's, which BuildKit's export uses with Docker's overlay2 store) leaves out a file
 * the same as its parent's — same mode, owner, size and time, which a file copied again from the
 * same context file has — and a directory of the same mode, owner included, unless something
 * below it changed. So `COPY package.json ./` then `COPY . ./` makes a layer without
 * package.json, and the summary of the whole context never matched it. Only what a COPY of the
 * context placed is known here (a RUN between may have changed it: then this key misses).
 */
function entriesLeftByDiffer(entries: readonly CopyEntry[], to: string, placed: ReadonlyMap<string, string>, flags: { chown?: string; chmod?: string }): CopyEntry[] | undefined {
  const destination = destinationDirectory(entries, to);
  if (destination === undefined || placed.size === 0) return undefined;
  const same = (e: CopyEntry) => placed.get(placedPath(destination, e)) === placedSignature(e, flags);
  if (!entries.some((e) => e.type !== 'dir' && same(e))) return undefined;
  const changed = entries.filter((e) => !same(e));
  // A directory stays when it is new or changed, or holds something that is (its parent, in the layer).
  return entries.filter((e) => !same(e) || (e.type === 'dir' && changed.some((c) => c.path.startsWith(`${e.path}/`))));
}

/**
 * Records where a COPY of the context put its entries (a directory destination only: a single file
 * copied to a name is not followed), and the destination directory it made (0755, as builders make
 * one: `COPY src/ ./src/` then `COPY . ./` leaves `src` out of the second layer too).
 */
function recordPlaced(entries: readonly CopyEntry[], to: string, placed: Map<string, string>, flags: { chown?: string; chmod?: string }): void {
  const destination = destinationDirectory(entries, to);
  if (destination === undefined) return;
  const made = destination.slice(0, -1);
  if (made !== '' && !placed.has(made)) placed.set(made, placedSignature({ path: '', source: '', type: 'dir', mode: 0o755, size: 0 }, { ...(flags.chown !== undefined ? { chown: flags.chown } : {}) }));
  for (const e of entries) placed.set(placedPath(destination, e), placedSignature(e, flags));
}

/**
 * The directory a COPY puts its entries in, `/`-terminated: the destination when written so, or
 * when what is copied is a directory's contents (`COPY . /app`); undefined for one file copied to a
 * name (`COPY a.json /app/b.json`), which this does not follow.
 */
function destinationDirectory(entries: readonly CopyEntry[], destination: string): string | undefined {
  if (destination.endsWith('/')) return destination;
  const oneFile = entries.length === 1 && entries[0]!.type !== 'dir' && !entries[0]!.path.includes('/');
  return oneFile ? undefined : `${destination}/`;
}

function placedPath(destination: string, e: CopyEntry): string {
  return `${destination}${e.path}`;
}

/** What makes an entry the same to the differ: a directory by its mode and owner; a file or link by its context file too (its time, content and size). */
function placedSignature(e: CopyEntry, flags: { chown?: string; chmod?: string }): string {
  const owner = [flags.chown ?? null, flags.chmod ?? null];
  return JSON.stringify(e.type === 'dir' ? [e.type, e.mode, ...owner] : [e.type, e.source, e.mode, e.sha256 ?? e.target ?? '', ...owner]);
}

/** The stages a stage is built on, root first: `FROM <earlier stage name>` follows that stage. */
export function stageChain(df: Dockerfile, target: Stage, buildArgs: Record<string, string> = {}): Stage[] {
  const chain: Stage[] = [target];
  let cur = target;
  for (;;) {
    const { base } = resolveStageBase(df, cur, buildArgs);
    const parentStage = df.stages.slice(0, cur.index).find((s) => s.name !== undefined && s.name === base.toLowerCase());
    if (!parentStage) return chain;
    chain.unshift(parentStage);
    cur = parentStage;
  }
}

/** The directories a COPY's sources name (wildcards expanded, symlinks followed; not the context root), each with its permission bits. */
function sourceDirectoryModes(index: ContextIndex, sources: readonly string[]): [string, string][] {
  const out: [string, string][] = [];
  for (const src of sources) {
    const rel = contextRelative(src);
    for (const m of hasWildcards(rel) ? expandWildcard(index, rel) : [rel]) {
      const e = resolveInContext(index, m);
      if (e?.type === 'dir' && e.path !== '') out.push([m, (e.mode & 0o7777).toString(8).padStart(4, '0')]);
    }
  }
  return out;
}

/** `ADD --unpack[=BOOL]`: a local archive is extracted unless it says false (Go's ParseBool). */
function unpackFlag(v: string | undefined): boolean {
  return v === undefined || !['false', '0', 'f', 'F', 'FALSE', 'False'].includes(v);
}

function optional<T>(v: string | undefined, f: (v: string) => T): T | undefined {
  return v === undefined ? undefined : f(v);
}

interface Mount {
  type: string;
  source: string;
  target: string;
  from?: string;
}

/** `--mount=type=bind,source=x,target=/y[,from=z]` (type defaults to bind, source to the root). */
export function parseMount(spec: string): Mount {
  const m: Mount = { type: 'bind', source: '.', target: '' };
  for (const field of spec.split(',')) {
    const eq = field.indexOf('=');
    const k = (eq < 0 ? field : field.slice(0, eq)).trim().toLowerCase();
    const v = eq < 0 ? '' : field.slice(eq + 1).trim();
    if (k === 'type') m.type = v.toLowerCase();
    else if (k === 'source' || k === 'src') m.source = v || '.';
    else if (k === 'target' || k === 'dst' || k === 'destination') m.target = v;
    else if (k === 'from') m.from = v;
  }
  m.source = contextRelative(m.source) || '.';
  return m;
}

/** Runs `f`, naming the instruction's line in a USAGE error that does not name one. */
function located<T>(df: Dockerfile, instr: Instruction, f: () => T): T {
  try {
    return f();
  } catch (e) {
    if (isSmartError(e) && e.code === 'USAGE' && !e.message.startsWith(`${df.file}:`)) {
      throw new SmartError('USAGE', `${df.file}:${instr.startLine}: ${e.message}`, { input: e.input ?? df.file, cause: e });
    }
    throw e;
  }
}
