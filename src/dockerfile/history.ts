/**
 * One normal form for build steps, from an image's history (`created_by`, whichever builder
 * wrote it) and from a parsed Dockerfile instruction, so the two can be compared.
 *
 * What the builders write (checked against their sources):
 * - classic builder: `/bin/sh -c #(nop)  CMD ["x"]`, `/bin/sh -c #(nop) WORKDIR /app`,
 *   `/bin/sh -c #(nop) COPY file:<hex> in /app ` (sources replaced by a content reference:
 *   `file:`, `dir:`, `multi:`), `/bin/sh -c apt-get update` (RUN: the argv joined by spaces, so
 *   an exec-form RUN is the bare argv), `|1 ARG=val /bin/sh -c ...` when build args are set;
 * - BuildKit: `RUN /bin/sh -c npm ci # buildkit` (exec form: `RUN npm ci # buildkit`; build
 *   args: `RUN |2 A=1 B=2 /bin/sh -c ...`), `COPY [--parents] [--chown=..] [--chmod=..] src...
 *   dest # buildkit` (never `--from`: a stage copy reads like a context copy), `WORKDIR /app`
 *   (absolute), `ENV A=b`, `CMD ["node" "x"]` (Go %q lists), `EXPOSE [80/tcp]`...;
 * - buildah: `/bin/sh -c #(nop) COPY file:<sha256> in ./ `, `/bin/sh -c <the RUN line as
 *   written, flags and JSON included>`, `/bin/sh -c #(nop) <instruction as written>`;
 * - kaniko: the instruction as written (`RUN npm ci`, `COPY --from=build /out /app`).
 *
 * Normal forms: `RUN npm ci` (shell form under the default `/bin/sh -c`, and the exec form
 * `["/bin/sh", "-c", "npm ci"]`, which runs the same argv: the command text with whitespace runs
 * outside quotes collapsed); `RUN ["npm","ci"]` (exec form: the argv, each element whole; a
 * history's space-joined argv split on whitespace); `RUN ["/bin/bash","-c","npm","ci"]` (another
 * shell: split on whitespace, as the histories join it);
 * `COPY --chown=1000 src/ /app/` (only the flags BuildKit records: `--chmod`, `--chown`,
 * `--parents`, sorted; `--from`, `--link` and the rest dropped); `WORKDIR /app`; `ENV A=b`;
 * `CMD ["node","x"]` / `CMD node x`; `EXPOSE 80/tcp`; `VOLUME ["/data"]`...
 */
import { cleanPath } from './context.js';
import { expandWord, parseInstructionLine, type EscapeChar, type Instruction } from './parser.js';

export interface HistoryStep {
  /** The normal form. */
  instruction: string;
  /** The builder's own content reference (`file:<hex>`, `dir:<hex>`, `multi:<hex>`), classic builder and buildah. */
  contentRef?: string;
  /** COPY/ADD whose sources the history does not name (classic builder, buildah): `instruction` is `COPY <dest>`; compare with `instructionsMatch`. */
  sourcesElided?: true;
  /** COPY/ADD destination as written in the history. */
  destination?: string;
  /** `--chown` of a COPY/ADD whose sources are elided (the classic builder records it). */
  chown?: string;
  /** Build args the history records for a RUN (`|N K=V ...`). */
  buildArgs?: Record<string, string>;
  /** `--from=` of a COPY when the history names it (kaniko). */
  from?: string;
}

export interface NormalizeContext {
  /** Variables in scope (ENV, ARG). Without it, variables are left as written. */
  lookup?: (name: string) => string | undefined;
  /** Leave variables the lookup does not know as written (default: only when there is no lookup). */
  skipUnset?: boolean;
  /** The working directory before this instruction: a relative WORKDIR is resolved against it. */
  workdir?: string;
  /** The SHELL in effect (default `["/bin/sh", "-c"]`). */
  shell?: string[];
  escape?: EscapeChar;
}

export const DEFAULT_SHELL = ['/bin/sh', '-c'];
const BUILDKIT_SUFFIX = ' # buildkit';
/** Instruction text in a history: keywords are upper case there (a lower-case word is a command). */
const KEYWORD_RE = /^(ADD|ARG|CMD|COPY|ENTRYPOINT|ENV|EXPOSE|FROM|HEALTHCHECK|LABEL|MAINTAINER|ONBUILD|RUN|SHELL|STOPSIGNAL|USER|VOLUME|WORKDIR)(\s|$)/;
/** Flags of COPY/ADD that BuildKit writes into the history (they change the layer). */
const KEPT_COPY_FLAGS = ['chmod', 'chown', 'parents'];

/**
 * The normal form of a history `created_by` string, or undefined when it is not a build step
 * we can read (empty, or a comment such as `# debian.sh ...`).
 */
export function normalizeCreatedBy(createdBy: string): HistoryStep | undefined {
  let s = createdBy.trim();
  if (s === '') return undefined;
  let buildkit = false;
  if (s.endsWith(BUILDKIT_SUFFIX)) {
    buildkit = true;
    s = s.slice(0, -BUILDKIT_SUFFIX.length).trim();
  }

  if (buildkit && /^RUN\s/.test(s)) {
    const { args, rest } = splitBuildArgs(s.slice(4).trimStart());
    return withArgs(runFromArgv(rest, false), args);
  }
  if (buildkit) return fromInstructionText(s);

  const { args, rest } = splitBuildArgs(s);
  // `... #(nop) X`: the first `#` of the text opens `#(nop)` (found without a regexp, which
  // took time quadratic in the length of a long line with no `#(nop)` in it).
  const hash = rest.indexOf('#');
  if (hash >= 0 && rest.startsWith('#(nop)', hash)) {
    const inner = rest.slice(hash + '#(nop)'.length).trim();
    // The classic builder writes `COPY --chown=1000:1000file:<hex> in /app ` (no space after the owner).
    const elided = /^(COPY|ADD)\s+(?:--chown=(\S*?)\s*)?((?:file|dir|multi):[0-9a-fA-F]+)\s+in\s+([\s\S]+)$/.exec(inner);
    if (elided) {
      const destination = elided[4]!.trim();
      const chown = elided[2];
      return {
        instruction: elidedCopyInstruction(elided[1]!, destination, chown),
        contentRef: elided[3]!,
        sourcesElided: true,
        destination,
        ...(chown ? { chown } : {}),
      };
    }
    return withArgs(fromInstructionText(inner), args);
  }
  if (args || !KEYWORD_RE.test(rest)) {
    if (rest.startsWith('#')) return undefined;
    return withArgs(runFromArgv(rest, true), args);
  }
  return fromInstructionText(rest);
}

function withArgs(step: HistoryStep | undefined, args: Record<string, string> | undefined): HistoryStep | undefined {
  if (step && args) step.buildArgs = args;
  return step;
}

/**
 * A RUN whose history is the argv joined by spaces (classic, BuildKit, buildah): `/bin/sh -c X`
 * is the shell form; anything else an exec form (or another shell), kept as argv tokens.
 * `buildahFlags`: after `/bin/sh -c`, buildah writes the RUN line as written (flags, JSON form).
 */
function runFromArgv(text: string, buildahFlags: boolean): HistoryStep {
  const sh = /^\/bin\/sh -c(?:\s([\s\S]*))?$/.exec(text);
  if (!sh) return { instruction: formatExec(text.split(/\s+/).filter((t) => t.length > 0)) };
  let cmd = sh[1] ?? '';
  if (buildahFlags) {
    let bind = false;
    for (;;) {
      const f = /^\s*(--\S+)/.exec(cmd);
      if (!f) break;
      const flag = f[1]!;
      if (flag.startsWith('--mount=')) {
        const type = /(?:^|,)type=([^,]*)/.exec(flag.slice(8))?.[1];
        if (type === undefined || type === 'bind') bind = true;
      }
      cmd = cmd.slice(f[0].length);
    }
    if (bind) cmd = cmd.replace(/(?::(?:sha256:)?[0-9a-f]{64})+\s*$/, '');
    const json = jsonStrings(cmd.trim());
    if (json) return { instruction: formatExec(json) };
  }
  return { instruction: formatShellRun(cmd, DEFAULT_SHELL) };
}

/** `|N K=V K2=V2 rest`: the build args prefix of RUN histories. Values may hold spaces. */
function splitBuildArgs(s: string): { args?: Record<string, string>; rest: string } {
  const m = /^\|(\d+)\s+/.exec(s);
  if (!m) return { rest: s };
  const n = Number(m[1]);
  const tokens = s.slice(m[0].length).split(' ');
  const group = (k: number): Record<string, string> | undefined => {
    const out: [string, string][] = [];
    for (const t of tokens.slice(0, k)) {
      const eq = /^([^=\s]+)=([\s\S]*)$/.exec(t);
      if (eq) out.push([eq[1]!, eq[2]!]);
      else if (out.length > 0) out[out.length - 1]![1] += ` ${t}`;
      else return undefined;
    }
    return out.length <= n ? Object.fromEntries(out) : undefined;
  };
  // The shell (or `#(nop)`) starts after the args; buildah counts words, not pairs, in N.
  for (let k = 1; k < tokens.length; k++) {
    const startsShell = (tokens[k] === '/bin/sh' && tokens[k + 1] === '-c') || tokens[k] === '#(nop)';
    if (!startsShell || k < n) continue;
    const args = group(k);
    if (args) return { args, rest: tokens.slice(k).join(' ') };
  }
  const args = n <= tokens.length ? group(n) : undefined;
  return args ? { args, rest: tokens.slice(n).join(' ') } : { rest: s };
}

/** History text that is an instruction as written (kaniko, buildah's `#(nop)`, BuildKit metadata). */
function fromInstructionText(text: string): HistoryStep | undefined {
  let instr: Instruction;
  try {
    instr = parseInstructionLine(text);
  } catch {
    return lenientInstruction(text);
  }
  const from = instr.flags.find((f) => f.name === 'from')?.value;
  try {
    const step: HistoryStep = { instruction: normalize(instr, {}, true) };
    if (from !== undefined && (instr.keyword === 'COPY' || instr.keyword === 'ADD')) step.from = from;
    return step;
  } catch {
    return lenientInstruction(text);
  }
}

/** Metadata instructions in builders' own formats that the Dockerfile grammar refuses (`ENV A=two words`). */
function lenientInstruction(text: string): HistoryStep | undefined {
  const m = /^(\S+)\s*([\s\S]*)$/.exec(text);
  if (!m) return undefined;
  const keyword = m[1]!.toUpperCase();
  const rest = m[2]!.trim();
  if (keyword === 'ENV' || keyword === 'LABEL' || keyword === 'ARG') {
    const pairs = rest.split(/\s+(?=[^\s=]+=)/).map((p) => p.trim());
    return { instruction: `${keyword} ${pairs.join(' ')}`.trim() };
  }
  if (!KEYWORD_RE.test(text)) return undefined;
  return { instruction: `${keyword} ${collapse(rest)}`.trim() };
}

/**
 * The normal form of a COPY/ADD whose history names a content reference in place of its sources
 * (classic builder, buildah): the keyword, the owner and the destination as written there.
 */
export function elidedCopyInstruction(keyword: string, destination: string, chown?: string): string {
  return `${keyword}${chown ? ` --chown=${chown}` : ''} ${destination}`;
}

/**
 * Whether a history step and a normal form (from `normalizeInstruction`) name the same step.
 * For a COPY/ADD whose history elides the sources, the keyword and destination must agree (the
 * content must then be checked another way: `contentRef` or the layer itself).
 */
export function instructionsMatch(history: HistoryStep, instruction: string): boolean {
  if (!history.sourcesElided) return history.instruction === instruction;
  const words = instruction.split(/\s+/);
  const keyword = words[0];
  if (keyword !== history.instruction.split(' ')[0]) return false;
  return words.length >= 3 && words[words.length - 1] === history.destination;
}

/** The normal form of a parsed Dockerfile instruction (see the module comment). */
export function normalizeInstruction(instr: Instruction, ctx: NormalizeContext = {}): string {
  return normalize(instr, ctx, false);
}

function normalize(instr: Instruction, ctx: NormalizeContext, fromHistory: boolean): string {
  const expand = (word: string) =>
    expandWord(word, { lookup: ctx.lookup ?? (() => undefined), skipUnset: ctx.skipUnset ?? ctx.lookup === undefined, escape: ctx.escape ?? '\\' });
  const shell = ctx.shell ?? DEFAULT_SHELL;
  const kw = instr.keyword;
  switch (kw) {
    case 'RUN': {
      if (instr.json) return fromHistory ? formatExec(instr.words) : formatExecRun(instr.words);
      return formatShellRun(runCommandText(instr), shell);
    }
    case 'COPY':
    case 'ADD': {
      const flags = instr.flags
        .filter((f) => KEPT_COPY_FLAGS.includes(f.name))
        .filter((f) => f.value === undefined || f.value.toLowerCase() !== 'false')
        .map((f) => (f.value === undefined || f.name === 'parents' ? `--${f.name}` : `--${f.name}=${expand(f.value)}`))
        .sort();
      const words = instr.words.map((w) => ({ w, doc: heredocWord(w) }));
      const dest = words[words.length - 1]!;
      const srcs = words.slice(0, -1);
      const plain = srcs.filter((x) => !x.doc).map((x) => expand(x.w));
      const docs = srcs.filter((x) => x.doc).map((x) => `<<${x.doc}`);
      return [kw, ...flags, ...plain, ...docs, dest.doc ? dest.w : expand(dest.w)].join(' ');
    }
    case 'WORKDIR':
      return `WORKDIR ${resolveWorkdir(ctx.workdir, expand(instr.words[0] ?? ''))}`;
    case 'ENV':
    case 'LABEL':
    case 'ARG': {
      const pairs = (instr.pairs ?? []).map((p) => {
        const key = expand(p.key);
        return p.value === undefined ? key : `${key}=${expand(p.value)}`;
      });
      return `${kw} ${pairs.join(' ')}`;
    }
    case 'CMD':
    case 'ENTRYPOINT': {
      const list = instr.json ? instr.words : fromHistory ? historyList(instr.args) : undefined;
      if (list) {
        if (list.length === 3 && list[0] === DEFAULT_SHELL[0] && list[1] === DEFAULT_SHELL[1]) return `${kw} ${collapse(list[2]!)}`;
        return `${kw} ${JSON.stringify(list)}`;
      }
      if (shell.join(' ') === DEFAULT_SHELL.join(' ')) return `${kw} ${collapse(instr.args)}`;
      return `${kw} ${JSON.stringify([...shell, instr.args])}`;
    }
    case 'SHELL': {
      const list = instr.json ? instr.words : (historyList(instr.args) ?? instr.args.split(/\s+/));
      return `SHELL ${JSON.stringify(list)}`;
    }
    case 'VOLUME': {
      const list = instr.json ? instr.words : fromHistory ? (historyList(instr.args) ?? instr.words) : instr.words;
      return `VOLUME ${JSON.stringify(list.map(expand))}`;
    }
    case 'EXPOSE': {
      const words = fromHistory ? (historyList(instr.args) ?? instr.words) : instr.words;
      const ports = new Set(
        words
          .map((w) => expand(w).replace(/:\{\}$/, ''))
          .filter(Boolean)
          .map((p) => (p.includes('/') ? p.toLowerCase() : `${p}/tcp`)),
      );
      return `EXPOSE ${[...ports].sort().join(' ')}`;
    }
    case 'USER':
    case 'STOPSIGNAL':
      return `${kw} ${collapse(expand(instr.args))}`;
    case 'FROM':
      return `FROM ${instr.words.map(expand).join(' ')}`;
    default:
      return `${kw} ${collapse(instr.args)}`.trim();
  }
}

/**
 * The shell command a RUN hands to the shell, as BuildKit builds it: with heredocs, a lone
 * `<<EOF` becomes the document's text (a `#!` document becomes the file `/dev/pipes/EOF`), and
 * anything else the line followed by each document and its terminator.
 */
export function runCommandText(instr: Instruction): string {
  const cmd = instr.words[0] ?? '';
  if (instr.heredocs.length === 0) return cmd;
  const lone = /^(\d*)<<(-?)\s*([^<]*)$/.exec(cmd.trim());
  const first = instr.heredocs[0]!;
  if (instr.heredocs.length === 1 && lone) {
    const data = first.chomp ? first.content.replace(/^\t+/gm, '') : first.content;
    return data.startsWith('#!') ? `/dev/pipes/${first.name}` : data;
  }
  return cmd + instr.heredocs.map((d) => `\n${d.content}${d.name}`).join('');
}

function heredocWord(word: string): string | undefined {
  const m = /^\d*<<-?\s*([^<]+)$/.exec(word);
  if (!m) return undefined;
  return m[1]!.replace(/^(['"])([\s\S]*)\1$/, '$2');
}

function resolveWorkdir(current: string | undefined, requested: string): string {
  const p = requested.startsWith('/') || current === undefined ? requested : `${current.replace(/\/$/, '')}/${requested}`;
  return cleanPath(p);
}

/** An argv as it is, each element whole (a history's space-joined argv is split before it comes here). */
function formatExec(argv: readonly string[]): string {
  return `RUN ${JSON.stringify(argv)}`;
}

/**
 * A Dockerfile's exec-form RUN: `["/bin/sh", "-c", X]` is the argv the shell form `RUN X` runs,
 * and the classic builder and BuildKit write and cache both alike (`/bin/sh -c X`); any other
 * argv as it is, so that `["a b"]` is not `["a", "b"]` (both histories read `a b`: a history can
 * match only the argv whose elements hold no white space). buildah writes the JSON as written:
 * its key is `buildahExecRun`.
 */
function formatExecRun(argv: readonly string[]): string {
  if (argv.length === 3 && argv[0] === DEFAULT_SHELL[0] && argv[1] === DEFAULT_SHELL[1]) return formatShellRun(argv[2]!, DEFAULT_SHELL);
  return formatExec(argv);
}

/** The key buildah's history gives an exec-form RUN (`/bin/sh -c ["/bin/sh", "-c", "x"]`): the argv as written, whatever it runs. */
export function buildahExecRun(argv: readonly string[]): string {
  return formatExec(argv);
}

function formatShellRun(cmd: string, shell: readonly string[]): string {
  if (shell.length === DEFAULT_SHELL.length && shell.every((s, i) => s === DEFAULT_SHELL[i])) return `RUN ${collapse(cmd)}`;
  // Another shell: the histories join the argv by spaces, and so is it split to compare.
  return formatExec([...shell, cmd].flatMap((a) => a.split(/\s+/)).filter((t) => t.length > 0));
}

/** A JSON array of strings, or undefined. */
function jsonStrings(text: string): string[] | undefined {
  if (!text.startsWith('[')) return undefined;
  try {
    const v: unknown = JSON.parse(text);
    return Array.isArray(v) && v.every((x) => typeof x === 'string') ? (v as string[]) : undefined;
  } catch {
    return undefined;
  }
}

/** Lists as builders print them: JSON, Go's %q (`["a" "b"]`), Go's %v (`[a b]`, `map[80/tcp:{}]`). */
function historyList(text: string): string[] | undefined {
  const t = text.trim();
  const json = jsonStrings(t);
  if (json) return json;
  if (/^\[\s*(?:"(?:[^"\\]|\\.)*"\s*)*\]$/.test(t)) {
    return [...t.matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((m) => goUnquote(m[1]!));
  }
  const v = /^(?:map)?\[([\s\S]*)\]$/.exec(t);
  if (v) return v[1]!.split(/\s+/).filter(Boolean);
  return undefined;
}

/** The body of a Go double-quoted string literal. */
function goUnquote(body: string): string {
  const simple: Record<string, string> = { a: '\x07', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t', v: '\v', '\\': '\\', '"': '"', "'": "'" };
  return body.replace(/\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[0-7]{3}|.)/g, (_, e: string) => {
    if (e.length === 1) return simple[e] ?? e;
    if (e[0] === 'x' || e[0] === 'u' || e[0] === 'U') return String.fromCodePoint(parseInt(e.slice(1), 16));
    return String.fromCodePoint(parseInt(e, 8));
  });
}

/**
 * Whitespace runs outside quotes collapsed to one space (a run holding a newline to one newline),
 * the ends trimmed; quoted text kept as it is.
 */
export function collapse(text: string): string {
  let out = '';
  let quote = '';
  let pending = '';
  const flush = () => {
    if (pending && out.length > 0) out += pending;
    pending = '';
  };
  for (let i = 0; i < text.length; i++) {
    const ch = text[i]!;
    if (quote) {
      out += ch;
      if (ch === quote) quote = '';
      else if (ch === '\\' && quote === '"' && i + 1 < text.length) out += text[++i];
      continue;
    }
    if (ch === '\n') {
      pending = '\n';
      continue;
    }
    if (/[ \t\r\f\v]/.test(ch)) {
      if (pending !== '\n') pending = ' ';
      continue;
    }
    flush();
    if (ch === '\\' && i + 1 < text.length && text[i + 1] !== '\n') {
      out += ch + text[++i];
      continue;
    }
    if (ch === "'" || ch === '"') quote = ch;
    out += ch;
  }
  return out;
}
