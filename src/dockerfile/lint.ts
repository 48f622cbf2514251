/**
 * Advice about a build's cacheability and context, from the Dockerfile and the context
 * directory (nothing is built or run):
 *
 * - COPY_BEFORE_INSTALL: a COPY takes a dependency manifest (package.json, requirements.txt,
 *   go.mod, Gemfile, pom.xml...) together with other files before the RUN that installs the
 *   dependencies, so any source change reruns the install;
 * - DOCKERIGNORE_MISSING / DOCKERIGNORE_WEAK: `.git`, `node_modules`, `__pycache__`, `.venv`,
 *   `target`, `dist` in the context and sent to the builder (no `.dockerignore`, or one that does
 *   not exclude them), with the bytes they add — unless a COPY names them;
 * - APT_UPDATE_ALONE: `apt-get update` in a RUN without an install (its cached layer makes later
 *   installs use stale lists);
 * - ADD_REMOTE_URL: ADD of an http(s) URL without `--checksum`;
 * - UNPINNED_BASE: FROM an image with no tag or `latest`, and no digest;
 * - COPY_SOURCE_MISSING: a COPY/ADD source that is not in the context (the build would fail).
 *
 * The result is the advice list, sorted by line, carrying `contextSizes`: bytes of the context's
 * files before and after `.dockerignore`. (`JSON.stringify` drops array properties: serialise
 * `{ advice: [...result], contextSizes: result.contextSizes }`.)
 */
import { isSmartError } from '../errors.js';
import { collectCopyEntries, contextRelative, createMatcher, indexContext, listContext, loadDockerignore, type ContextIndex, type ContextMatcher } from './context.js';
import { expandWord, getFlag, isRemote, resolveStageBase, type Dockerfile, type Instruction } from './parser.js';
import { runCommandText } from './history.js';

export interface Advice {
  line?: number;
  code: string;
  message: string;
  /** DOCKERIGNORE_*: the context path concerned. */
  path?: string;
  /** DOCKERIGNORE_*: bytes of it sent to the builder. */
  bytes?: number;
}

export interface ContextSizes {
  /** Bytes of every file in the context directory. */
  before: number;
  /** Bytes of the files sent after `.dockerignore`. */
  after: number;
}

export type LintResult = Advice[] & { contextSizes: ContextSizes };

export interface LintOptions {
  buildArgs?: Record<string, string>;
  /** Default: the `.dockerignore` Docker would use. */
  matcher?: ContextMatcher;
  dockerfilePath?: string;
}

/** Directories that rarely belong in a build context. */
export const HEAVY_DIRS = ['.git', 'node_modules', '__pycache__', '.venv', 'target', 'dist'];

interface Ecosystem {
  name: string;
  install: RegExp;
  manifests: RegExp;
  /** Files that may travel with the manifest without hurting the cache (locks, package manager settings). */
  companions: RegExp;
}

const ECOSYSTEMS: Ecosystem[] = [
  {
    name: 'npm',
    install: /\b(?:npm\s+(?:ci|install|i)\b|pnpm\s+(?:install|i)\b|yarn(?:\s+install\b|\s*(?:$|&&|;|\|\||\n)))/,
    manifests: /^package\.json$/,
    companions: /^(?:package-lock\.json|npm-shrinkwrap\.json|yarn\.lock|pnpm-lock\.yaml|pnpm-workspace\.yaml|\.npmrc|\.yarnrc(?:\.yml)?)$/,
  },
  {
    name: 'pip',
    install: /\b(?:(?:pip3?|python3?\s+-m\s+pip)\s+install\b[^\n;&|]*\s(?:-r|--requirement)\b|pipenv\s+install\b|poetry\s+install\b|uv\s+sync\b)/,
    manifests: /^(?:requirements[\w.-]*\.txt|Pipfile|pyproject\.toml)$/,
    companions: /^(?:requirements[\w.-]*\.txt|Pipfile\.lock|poetry\.lock|uv\.lock|constraints[\w.-]*\.txt)$/,
  },
  { name: 'bundler', install: /\bbundle\s+install\b/, manifests: /^Gemfile$/, companions: /^(?:Gemfile\.lock|\.ruby-version)$/ },
  { name: 'go', install: /\bgo\s+mod\s+download\b/, manifests: /^go\.mod$/, companions: /^(?:go\.sum|go\.work(?:\.sum)?)$/ },
  { name: 'maven', install: /\bmvnw?\b/, manifests: /^pom\.xml$/, companions: /^(?:\.mvn|mvnw|settings\.xml)$/ },
  { name: 'gradle', install: /\bgradlew?\b/, manifests: /^(?:build|settings)\.gradle(?:\.kts)?$/, companions: /^(?:gradle\.properties|gradlew|gradle-wrapper\.(?:jar|properties))$/ },
  { name: 'cargo', install: /\bcargo\s+(?:build|fetch)\b/, manifests: /^Cargo\.toml$/, companions: /^Cargo\.lock$/ },
  { name: 'composer', install: /\bcomposer\s+install\b/, manifests: /^composer\.json$/, companions: /^composer\.lock$/ },
];

const APT_UPDATE = /\bapt(?:-get)?\s+(?:-\S+\s+)*update\b/;
const APT_INSTALL = /\bapt(?:-get)?\s+(?:-\S+\s+)*(?:install|upgrade|dist-upgrade|full-upgrade)\b/;

export async function lintBuild(df: Dockerfile, contextDir: string, options: LintOptions = {}): Promise<LintResult> {
  const buildArgs = options.buildArgs ?? {};
  const matcher = options.matcher ?? (await loadDockerignore(contextDir, options.dockerfilePath ? { dockerfile: options.dockerfilePath } : {}));
  const advice: Advice[] = [];

  // Context sizes and heavy directories.
  const all = await listContext(contextDir, createMatcher([]));
  const sent = await listContext(contextDir, matcher);
  const sum = (list: { size: number }[]) => list.reduce((n, e) => n + e.size, 0);
  const contextSizes: ContextSizes = { before: sum(all), after: sum(sent) };
  const named = copiedNames(df);
  const heavy = new Map<string, number>();
  for (const e of sent) {
    const segs = e.path.split('/');
    const i = segs.findIndex((s, k) => HEAVY_DIRS.includes(s) && (k < segs.length - 1 || e.type === 'dir'));
    if (i < 0) continue;
    const root = segs.slice(0, i + 1).join('/');
    heavy.set(root, (heavy.get(root) ?? 0) + e.size);
  }
  for (const [dir, bytes] of heavy) {
    if (named.some((n) => n === dir || n.startsWith(`${dir}/`))) continue;
    const name = dir.slice(dir.lastIndexOf('/') + 1);
    const pattern = dir.includes('/') ? `**/${name}` : name;
    advice.push(
      matcher.source === undefined
        ? {
            code: 'DOCKERIGNORE_MISSING',
            path: dir,
            bytes,
            message: `${dir} (${bytes} bytes) is sent to the builder with the build context: there is no .dockerignore; create one that lists ${pattern}`,
          }
        : {
            code: 'DOCKERIGNORE_WEAK',
            path: dir,
            bytes,
            message: `${dir} (${bytes} bytes) is sent to the builder with the build context: add ${pattern} to ${matcher.source}`,
          },
    );
  }

  // Instructions.
  let index: ContextIndex | undefined;
  const contextIndex = async () => (index ??= await indexContext(contextDir, matcher));
  const stageNames = new Set<string>();
  for (const stage of df.stages) {
    let base: string | undefined;
    try {
      base = resolveStageBase(df, stage, buildArgs).base;
    } catch (e) {
      if (!isSmartError(e)) throw e;
    }
    if (base !== undefined && !stageNames.has(base.toLowerCase())) {
      const why = unpinned(base);
      if (why) {
        advice.push({
          line: stage.from.startLine,
          code: 'UNPINNED_BASE',
          message: `FROM ${base}: ${why}, so the base (and every cached layer on it) changes whenever the tag moves; pin a version tag, and a digest (@sha256:...) for reproducible builds`,
        });
      }
    }
    if (stage.name) stageNames.add(stage.name);

    const copies: { instr: Instruction; files: string[]; reported: boolean }[] = [];
    for (const instr of stage.instructions) {
      const words = (w: string) => expandLoose(w);
      if (instr.keyword === 'ADD') {
        for (const src of instr.words.slice(0, -1).map(words)) {
          if (/^https?:\/\//i.test(src) && getFlag(instr, 'checksum') === undefined) {
            advice.push({
              line: instr.startLine,
              code: 'ADD_REMOTE_URL',
              message: `ADD ${src}: the file is fetched again on every build and the layer changes whenever the remote does; download it in a RUN (curl/wget, checked against a known sha256) or pin it with ADD --checksum=sha256:...`,
            });
          }
        }
      }
      if ((instr.keyword === 'COPY' || instr.keyword === 'ADD') && getFlag(instr, 'from') === undefined) {
        const srcs = instr.words
          .slice(0, -1)
          .filter((w) => !/^\d*<<-?\s*\S/.test(w))
          .map(words)
          .filter((s) => !isRemote(s));
        // Sources built from variables are left to the build (their values are not known here).
        if (srcs.length === 0 || srcs.some((s) => s.includes('$'))) continue;
        try {
          const entries = await collectCopyEntries(contextDir, srcs, matcher, { index: await contextIndex(), hash: false, file: df.file, line: instr.startLine });
          copies.push({ instr, files: entries.filter((e) => e.type === 'file').map((e) => e.source), reported: false });
        } catch (e) {
          if (!isSmartError(e) || e.code !== 'NOT_FOUND') throw e;
          advice.push({ line: instr.startLine, code: 'COPY_SOURCE_MISSING', message: e.hint ? `${e.message} (${e.hint})` : e.message });
        }
      }
      if (instr.keyword === 'RUN') {
        const text = instr.json ? instr.words.join(' ') : runCommandText(instr) + instr.heredocs.map((h) => `\n${h.content}`).join('');
        if (APT_UPDATE.test(text) && !APT_INSTALL.test(text)) {
          advice.push({
            line: instr.startLine,
            code: 'APT_UPDATE_ALONE',
            message: 'apt-get update without an install in the same RUN: its layer is cached, so a later RUN apt-get install works from stale package lists; run apt-get update && apt-get install -y ... in one RUN',
          });
        }
        for (const eco of ECOSYSTEMS) {
          if (!eco.install.test(text)) continue;
          for (const copy of copies) {
            if (copy.reported) continue;
            const base = (p: string) => p.slice(p.lastIndexOf('/') + 1);
            const manifests = copy.files.filter((f) => eco.manifests.test(base(f)));
            if (manifests.length === 0) continue;
            const others = copy.files.filter((f) => !eco.manifests.test(base(f)) && !eco.companions.test(base(f)));
            if (others.length === 0) continue;
            copy.reported = true;
            const m = [...new Set(manifests.map(base))].join(', ');
            advice.push({
              line: copy.instr.startLine,
              code: 'COPY_BEFORE_INSTALL',
              message: `${copy.instr.keyword} ${copy.instr.args} copies ${m} with ${others.length} other file${others.length === 1 ? '' : 's'} before the dependency install at line ${instr.startLine}: any change to them reruns the install. Copy ${m} (and the lock file) first, run the install, then copy the rest`,
            });
          }
        }
      }
    }
  }

  advice.sort((a, b) => (a.line ?? Infinity) - (b.line ?? Infinity));
  return Object.assign(advice, { contextSizes });
}

/** Why a base reference is not pinned, or undefined when it is (or is scratch / unresolved). */
function unpinned(base: string): string | undefined {
  if (base === 'scratch' || base.includes('$')) return undefined;
  if (base.includes('@')) return undefined;
  const last = base.slice(base.lastIndexOf('/') + 1);
  const colon = last.indexOf(':');
  if (colon < 0) return 'no tag (it means :latest)';
  if (last.slice(colon + 1) === 'latest') return 'the latest tag';
  return undefined;
}

/** Context paths COPY/ADD instructions name explicitly (a named heavy directory is wanted). */
function copiedNames(df: Dockerfile): string[] {
  const out: string[] = [];
  for (const stage of df.stages) {
    for (const instr of stage.instructions) {
      if ((instr.keyword !== 'COPY' && instr.keyword !== 'ADD') || getFlag(instr, 'from') !== undefined) continue;
      for (const w of instr.words.slice(0, -1)) {
        const rel = contextRelative(expandLoose(w));
        if (rel !== '' && !/[*?[]/.test(rel)) out.push(rel);
      }
    }
  }
  return out;
}

function expandLoose(word: string): string {
  try {
    return expandWord(word, { lookup: () => undefined, skipUnset: true });
  } catch {
    return word;
  }
}
