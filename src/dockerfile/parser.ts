/**
 * A Dockerfile parser that reads what BuildKit's parser reads (moby/buildkit
 * frontend/dockerfile/parser), line for line: parser directives (`# escape=`, `# syntax=` kept
 * and ignored), line continuations with the escape character, comment lines and empty lines
 * inside continuations, builder flags (`--from=`, `--mount=`...), JSON (exec) vs shell form,
 * heredocs (`RUN <<EOF`, `COPY <<EOF /file`) kept as text, and stages with `ARG`s before the
 * first FROM substituted into FROM (`$VAR`, `${VAR}`, `${VAR:-default}`...), overridable by
 * build args.
 *
 * Malformed input throws `SmartError('USAGE', '<file>:<line>: ...')`.
 */
import { SmartError } from '../errors.js';
import { MAX_JSON_DEPTH } from '../limits.js';

export type EscapeChar = '\\' | '`';

/** A builder flag as written: `--chown=1000` is `{ name: 'chown', value: '1000' }`, `--link` has no value. */
export interface Flag {
  name: string;
  value: string | undefined;
  /** The flag as extracted (quotes and escapes processed), e.g. `--mount=type=cache,target=/x`. */
  raw: string;
}

export interface Heredoc {
  /** The terminator word, unquoted (`EOF` for `<<"EOF"`). */
  name: string;
  /** The lines up to the terminator, each with its line ending. */
  content: string;
  /** False when the word was quoted: the content is not variable-expanded. */
  expand: boolean;
  /** `<<-EOF`: leading tabs are removed from the content lines. */
  chomp: boolean;
  fd: number | undefined;
}

/** `ENV`, `LABEL` and `ARG` arguments; `value` is the raw text (quotes not yet processed). */
export interface KeyValue {
  key: string;
  value: string | undefined;
}

export interface Instruction {
  /** Upper-cased keyword (`RUN`, `COPY`...). */
  keyword: string;
  /** 1-based line of the keyword. */
  startLine: number;
  /** 1-based last line, heredoc bodies included. */
  endLine: number;
  /** The logical line: continuations joined as BuildKit joins them (BuildKit's `Node.Original`). */
  original: string;
  /** Everything after the keyword and the flags, trimmed. */
  args: string;
  flags: Flag[];
  /** JSON (exec) form: `RUN ["npm", "ci"]`. */
  json: boolean;
  /**
   * The parsed arguments: the JSON array's strings in exec form; whitespace-separated words for
   * FROM, COPY, ADD, VOLUME, EXPOSE; `[args]` for the shell form of RUN, CMD, ENTRYPOINT and
   * for WORKDIR, USER, STOPSIGNAL, MAINTAINER; `[type, ...command]` for HEALTHCHECK.
   */
  words: string[];
  /** ENV, LABEL, ARG. */
  pairs?: KeyValue[];
  heredocs: Heredoc[];
  /** ONBUILD: the instruction it registers. */
  trigger?: Instruction;
}

export interface Stage {
  index: number;
  /** `AS name`, lower-cased as BuildKit does. */
  name?: string;
  from: Instruction;
  /** The image as written (`node:${NODE_VERSION}`). */
  baseRaw: string;
  /** The image after substitution of the global ARGs (defaults, overridden by the build args given to the parser). */
  base: string;
  /** `--platform=` after substitution. */
  platform?: string;
  /** The stage's instructions after its FROM. */
  instructions: Instruction[];
}

export interface Dockerfile {
  file: string;
  escape: EscapeChar;
  /** Parser directives at the top (`syntax`, `escape`, `check`), lower-case names. */
  directives: Record<string, string>;
  /** ARG instructions before the first FROM. */
  globalArgs: Instruction[];
  stages: Stage[];
  /** Every instruction in order. */
  instructions: Instruction[];
  /** Non-fatal findings (empty continuation lines), `<file>:<line>: ...`. */
  warnings: string[];
}

export interface ParseOptions {
  /** `--build-arg` values: override the defaults of global ARGs used in FROM. */
  buildArgs?: Record<string, string>;
}

const KEYWORDS = new Set([
  'ADD',
  'ARG',
  'CMD',
  'COPY',
  'ENTRYPOINT',
  'ENV',
  'EXPOSE',
  'FROM',
  'HEALTHCHECK',
  'LABEL',
  'MAINTAINER',
  'ONBUILD',
  'RUN',
  'SHELL',
  'STOPSIGNAL',
  'USER',
  'VOLUME',
  'WORKDIR',
]);

/** The flags BuildKit accepts per instruction; `true` marks boolean flags (no value needed). */
const FLAGS: Record<string, Record<string, boolean>> = {
  FROM: { platform: false },
  RUN: { mount: false, network: false, security: false, device: false },
  COPY: { from: false, chown: false, chmod: false, link: true, parents: true, exclude: false },
  ADD: { chown: false, chmod: false, link: true, 'keep-git-dir': true, checksum: false, exclude: false, unpack: true },
  HEALTHCHECK: { interval: false, timeout: false, 'start-period': false, 'start-interval': false, retries: false },
};
/** Flags that may repeat. */
const REPEATABLE = new Set(['mount', 'exclude', 'device']);

const HEREDOC_KEYWORDS = new Set(['RUN', 'COPY', 'ADD']);
const WS = /[\t\v\f\r ]+/;
const STAGE_NAME = /^[a-z][a-z0-9-_.]*$/;

class ParseError extends Error {}

function usage(file: string, line: number, message: string): SmartError {
  return new SmartError('USAGE', `${file}:${line}: ${message}`, { input: file });
}

/** Parses a Dockerfile. `file` names it in errors (default `Dockerfile`). */
export function parseDockerfile(text: string, file = 'Dockerfile', options: ParseOptions = {}): Dockerfile {
  const lines = splitLines(text.replace(/^\uFEFF/, ''));
  const directives: Record<string, string> = {};
  let escape: EscapeChar = '\\';
  let directivesDone = false;
  const warnings: string[] = [];
  const instructions: Instruction[] = [];

  // Parser directives: comment lines `# key=value` at the very top, before anything else.
  const directiveRe = /^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$/;
  const directive = (raw: string, lineNo: number) => {
    if (directivesDone) return false;
    const m = directiveRe.exec(raw.trimStart());
    const key = m?.[1]?.toLowerCase();
    if (!m || !key || !['syntax', 'escape', 'check'].includes(key)) {
      directivesDone = true;
      return false;
    }
    if (key in directives) throw usage(file, lineNo, `only one ${key} parser directive can be used`);
    const value = m[2]!;
    if (key === 'escape') {
      if (value !== '\\' && value !== '`') throw usage(file, lineNo, `invalid escape token '${value}' does not match \` or \\`);
      escape = value;
    }
    directives[key] = value;
    return true;
  };

  let i = 0;
  while (i < lines.length) {
    const first = trimNewline(lines[i]!);
    i++;
    const startLine = i;
    directive(first, startLine);
    let line = first.trimStart();
    if (isComment(line)) line = '';
    let [joined, end] = trimContinuation(line, escape);
    if (end && joined.length === 0) continue;
    let emptyContinuation = false;
    while (!end && i < lines.length) {
      const raw = trimNewline(lines[i]!);
      i++;
      directive(raw, i);
      if (isComment(raw)) continue;
      if (raw.trim().length === 0) {
        emptyContinuation = true;
        continue;
      }
      const [part, e] = trimContinuation(raw, escape);
      joined += part;
      end = e;
    }
    if (emptyContinuation) warnings.push(`${file}:${i}: empty continuation line in: ${joined.trim()}`);
    let instr: Instruction;
    try {
      instr = parseLine(joined, escape, startLine, i);
    } catch (e) {
      if (e instanceof ParseError) throw usage(file, startLine, e.message);
      throw e;
    }
    // Heredocs: their bodies follow the instruction's (joined) line.
    const target = instr.trigger ?? instr;
    if (HEREDOC_KEYWORDS.has(target.keyword) && !target.json && joined.includes('<<')) {
      for (const doc of findHeredocs(joined)) {
        let content = '';
        let terminated = false;
        while (i < lines.length) {
          const raw = lines[i]!;
          i++;
          let candidate = trimNewline(raw);
          if (doc.chomp) candidate = candidate.replace(/^\t+/, '');
          if (candidate === doc.name) {
            terminated = true;
            break;
          }
          content += raw;
        }
        if (!terminated) throw usage(file, startLine, `unterminated heredoc <<${doc.name}`);
        target.heredocs.push({ ...doc, content });
      }
      instr.endLine = i;
      if (target !== instr) target.endLine = i;
    }
    instructions.push(instr);
  }
  if (instructions.length === 0) throw usage(file, Math.max(1, lines.length), 'file with no instructions');

  const df: Dockerfile = { file, escape, directives, globalArgs: [], stages: [], instructions, warnings };
  for (const instr of instructions) {
    validate(df, instr);
    if (instr.keyword === 'FROM') {
      df.stages.push(newStage(df, instr));
    } else if (df.stages.length === 0) {
      if (instr.keyword !== 'ARG') throw usage(file, instr.startLine, `no build stage in current context: ${instr.keyword} before the first FROM`);
      df.globalArgs.push(instr);
    } else {
      df.stages[df.stages.length - 1]!.instructions.push(instr);
    }
  }
  resolveStages(df, options.buildArgs ?? {});
  return df;
}

function splitLines(text: string): string[] {
  const out: string[] = [];
  let start = 0;
  for (let j = 0; j < text.length; j++) {
    if (text.charCodeAt(j) === 10) {
      out.push(text.slice(start, j + 1));
      start = j + 1;
    }
  }
  if (start < text.length) out.push(text.slice(start));
  return out;
}

function trimNewline(s: string): string {
  return s.replace(/[\r\n]+$/, '');
}

function isComment(s: string): boolean {
  return s.trimStart().startsWith('#');
}

/**
 * Removes a trailing escape token (the continuation) as BuildKit's lineContinuationRegex does:
 * the token must follow a character that is not itself the token, or stand alone on its line
 * (so `foo \\` — an escaped escape — ends the instruction).
 */
function trimContinuation(line: string, escape: EscapeChar): [string, boolean] {
  const body = line.replace(/[ \t]*$/, '');
  if (!body.endsWith(escape)) return [line, true];
  if (body.length === 1) return ['', false];
  if (body[body.length - 2] === escape) return [line, true];
  return [body.slice(0, -1), false];
}

/** Parses one logical line (no heredoc bodies). Exported for history strings that carry instruction text. */
export function parseInstructionLine(line: string, escape: EscapeChar = '\\', startLine = 1, endLine = startLine): Instruction {
  try {
    return parseLine(line, escape, startLine, endLine);
  } catch (e) {
    if (e instanceof ParseError) throw new SmartError('USAGE', e.message, { input: line });
    throw e;
  }
}

function parseLine(line: string, escape: EscapeChar, startLine: number, endLine: number): Instruction {
  const trimmed = line.trim();
  const sp = WS.exec(trimmed);
  const cmd = sp ? trimmed.slice(0, sp.index) : trimmed;
  const restWithFlags = sp ? trimmed.slice(sp.index + sp[0].length) : '';
  const keyword = cmd.toUpperCase();
  if (!KEYWORDS.has(keyword)) throw new ParseError(`unknown instruction: ${cmd}`);
  const [rest, flagWords] = extractFlags(restWithFlags, escape);
  const args = rest.trim();
  const flags = flagWords.map(parseFlag);
  const instr: Instruction = { keyword, startLine, endLine, original: line, args, flags, json: false, words: [], heredocs: [] };
  switch (keyword) {
    case 'RUN':
    case 'CMD':
    case 'ENTRYPOINT':
    case 'SHELL': {
      const json = args === '' ? undefined : tryJSON(args);
      if (json) {
        instr.json = true;
        instr.words = json;
      } else if (args !== '') instr.words = [args];
      break;
    }
    case 'COPY':
    case 'ADD':
    case 'VOLUME': {
      const json = tryJSON(args);
      if (json) {
        instr.json = true;
        instr.words = json;
      } else instr.words = splitWhitespace(args);
      break;
    }
    case 'FROM':
    case 'EXPOSE':
      instr.words = splitWhitespace(args);
      break;
    case 'WORKDIR':
    case 'USER':
    case 'STOPSIGNAL':
    case 'MAINTAINER':
      instr.words = args === '' ? [] : [args];
      break;
    case 'ENV':
    case 'LABEL':
      instr.pairs = parseNameVal(args, keyword, escape);
      break;
    case 'ARG':
      instr.pairs = parseWords(args, escape).map((w) => {
        const eq = w.indexOf('=');
        return eq < 0 ? { key: w, value: undefined } : { key: w.slice(0, eq), value: w.slice(eq + 1) };
      });
      break;
    case 'HEALTHCHECK': {
      const m = /^(\S+)\s*([\s\S]*)$/.exec(args);
      if (m) {
        const type = m[1]!;
        const json = m[2] === '' ? undefined : tryJSON(m[2]!);
        instr.json = json !== undefined;
        instr.words = [type, ...(json ?? (m[2] ? [m[2]] : []))];
      }
      break;
    }
    case 'ONBUILD': {
      if (args === '') throw new ParseError('ONBUILD requires at least one argument');
      const trigger = parseLine(args, escape, startLine, endLine);
      if (['ONBUILD', 'FROM', 'MAINTAINER'].includes(trigger.keyword)) {
        throw new ParseError(`${trigger.keyword} isn't allowed as an ONBUILD trigger`);
      }
      instr.trigger = trigger;
      instr.words = [args];
      break;
    }
  }
  return instr;
}

function splitWhitespace(s: string): string[] {
  return s.split(WS).filter((w) => w.length > 0);
}

/** JSON array of strings, or undefined when the text is not a JSON array (shell form). */
function tryJSON(rest: string): string[] | undefined {
  const t = rest.trimStart();
  if (!t.startsWith('[')) return undefined;
  let doc: unknown;
  try {
    doc = JSON.parse(t);
  } catch {
    return undefined;
  }
  if (!Array.isArray(doc)) return undefined;
  if (!doc.every((x) => typeof x === 'string')) {
    throw new ParseError('when using JSON array syntax, arrays must be comprised of strings only');
  }
  return doc as string[];
}

/** BuildKit's extractBuilderFlags: leading `--words`, quotes and escapes processed; `--` ends them. */
function extractFlags(line: string, escape: EscapeChar): [string, string[]] {
  const words: string[] = [];
  let pos = 0;
  for (;;) {
    while (pos < line.length && /\s/.test(line[pos]!)) pos++;
    if (pos >= line.length) return ['', words];
    if (!line.startsWith('--', pos)) return [line.slice(pos), words];
    let word = '';
    let quote = '';
    let blankOK = false;
    let j = pos;
    for (; j < line.length; j++) {
      const ch = line[j]!;
      if (quote) {
        if (ch === quote) {
          quote = '';
          continue;
        }
        if (ch === escape && j + 1 < line.length) {
          j++;
          word += line[j];
          continue;
        }
        word += ch;
        continue;
      }
      if (/\s/.test(ch)) break;
      if (ch === "'" || ch === '"') {
        quote = ch;
        blankOK = true;
        continue;
      }
      if (ch === escape) {
        if (j + 1 === line.length) continue;
        j++;
        word += line[j];
        continue;
      }
      word += ch;
    }
    if (word === '--') return [line.slice(j), words];
    if (blankOK || word.length > 0) words.push(word);
    pos = j;
  }
}

function parseFlag(word: string): Flag {
  const body = word.slice(2);
  const eq = body.indexOf('=');
  return eq < 0 ? { name: body, value: undefined, raw: word } : { name: body.slice(0, eq), value: body.slice(eq + 1), raw: word };
}

/** BuildKit's parseWords: whitespace-separated words, quotes kept (processed later), escapes kept. */
export function parseWords(rest: string, escape: EscapeChar = '\\'): string[] {
  const words: string[] = [];
  let word = '';
  let inWord = false;
  let quote = '';
  let blankOK = false;
  for (let j = 0; j < rest.length; j++) {
    const ch = rest[j]!;
    if (!inWord) {
      if (/\s/.test(ch)) continue;
      inWord = true;
    }
    if (quote) {
      if (ch === quote) quote = '';
      else if (ch === escape && quote !== "'") {
        if (j + 1 === rest.length) continue;
        word += ch;
        j++;
        word += rest[j];
        continue;
      }
      word += ch;
      continue;
    }
    if (/\s/.test(ch)) {
      if (blankOK || word.length > 0) words.push(word);
      word = '';
      inWord = false;
      blankOK = false;
      continue;
    }
    if (ch === "'" || ch === '"') {
      quote = ch;
      blankOK = true;
    }
    if (ch === escape) {
      if (j + 1 === rest.length) continue;
      word += ch;
      j++;
      word += rest[j];
      continue;
    }
    word += ch;
  }
  if (inWord && (blankOK || word.length > 0)) words.push(word);
  return words;
}

function parseNameVal(rest: string, keyword: string, escape: EscapeChar): KeyValue[] {
  const words = parseWords(rest, escape);
  if (words.length === 0) return [];
  if (!words[0]!.includes('=')) {
    // Legacy `ENV name value with spaces`: split at the first run of whitespace (BuildKit's
    // reWhitespace, ASCII only: a no-break space belongs to the name, as there).
    const sp = WS.exec(rest);
    if (!sp) throw new ParseError(`${keyword} must have two arguments`);
    return [{ key: rest.slice(0, sp.index), value: rest.slice(sp.index + sp[0].length) }];
  }
  return words.map((w) => {
    const eq = w.indexOf('=');
    if (eq < 0) throw new ParseError(`Syntax error - can't find = in "${w}". Must be of the form: name=value`);
    return { key: w.slice(0, eq), value: w.slice(eq + 1) };
  });
}

/** Heredoc words of a line (`<<EOF`, `<<-"EOF"`, `3<<EOF`), as BuildKit's heredocsFromLine. */
function findHeredocs(line: string): Omit<Heredoc, 'content'>[] {
  const out: Omit<Heredoc, 'content'>[] = [];
  for (const word of rawShellWords(line)) {
    const m = /^(\d*)<<(-?)\s*([^<]*)$/.exec(word);
    if (!m || m[3] === '') continue;
    const rest = m[3]!;
    const name = unquoteWord(rest);
    if (name === undefined || name === '' || /\s/.test(name)) continue;
    out.push({ name, expand: !/['"]/.test(rest), chomp: m[2] === '-', fd: m[1] ? Number(m[1]) : undefined });
  }
  return out;
}

/** Splits shell text into raw words (quotes kept); whitespace right after `<<` stays in the word. */
function rawShellWords(line: string): string[] {
  const words: string[] = [];
  let word = '';
  let quote = '';
  for (let j = 0; j < line.length; j++) {
    const ch = line[j]!;
    if (quote) {
      word += ch;
      if (ch === quote) quote = '';
      else if (ch === '\\' && quote === '"' && j + 1 < line.length) word += line[++j];
      continue;
    }
    if (ch === '\\' && j + 1 < line.length) {
      word += ch + line[++j];
      continue;
    }
    if (ch === "'" || ch === '"') {
      quote = ch;
      word += ch;
      continue;
    }
    if (/\s/.test(ch)) {
      if (word.endsWith('<<') || word.endsWith('<<-')) continue;
      if (word) words.push(word);
      word = '';
      continue;
    }
    word += ch;
  }
  if (word) words.push(word);
  return words;
}

function unquoteWord(raw: string): string | undefined {
  try {
    return new Lexer(raw, { lookup: () => undefined, skipUnset: true }).word();
  } catch {
    return undefined;
  }
}

function validate(df: Dockerfile, instr: Instruction): void {
  const fail = (msg: string) => usage(df.file, instr.startLine, msg);
  checkFlags(instr, fail);
  if (instr.trigger) checkFlags(instr.trigger, fail);
  const target = instr.trigger ?? instr;
  const n = target.words.length;
  switch (target.keyword) {
    case 'FROM':
      if (n !== 1 && !(n === 3 && target.words[1]!.toLowerCase() === 'as')) throw fail('FROM requires either one or three arguments');
      if (n === 3 && !STAGE_NAME.test(target.words[2]!.toLowerCase())) {
        throw fail(`invalid name for build stage: "${target.words[2]}", name can't start with a number or contain symbols`);
      }
      break;
    case 'RUN':
      if (n === 0 && !target.json) throw fail('RUN requires at least one argument');
      break;
    case 'COPY':
    case 'ADD':
      if (n < 2) throw fail(`${target.keyword} requires at least two arguments, but only one was provided. Destination could not be determined`);
      break;
    case 'SHELL':
      if (!target.json) throw fail('SHELL requires the arguments to be in JSON form');
      if (n === 0) throw fail('SHELL requires at least one argument');
      break;
    case 'ENV':
    case 'LABEL':
    case 'ARG':
      if (!target.pairs || target.pairs.length === 0) throw fail(`${target.keyword} requires at least one argument`);
      for (const p of target.pairs) if (p.key === '') throw fail(`${target.keyword} names can not be blank`);
      break;
    case 'WORKDIR':
    case 'USER':
    case 'STOPSIGNAL':
    case 'MAINTAINER':
    case 'EXPOSE':
    case 'VOLUME':
      if (n === 0 || (target.keyword === 'VOLUME' && target.words.some((w) => w.trim() === ''))) throw fail(`${target.keyword} requires at least one argument`);
      break;
    case 'HEALTHCHECK': {
      const type = target.words[0]?.toUpperCase();
      if (type !== 'NONE' && type !== 'CMD') throw fail('HEALTHCHECK requires NONE or CMD followed by a command');
      if (type === 'CMD' && n < 2) throw fail('HEALTHCHECK CMD requires a command');
      break;
    }
  }
}

function checkFlags(instr: Instruction, fail: (msg: string) => SmartError): void {
  const allowed = FLAGS[instr.keyword] ?? {};
  const seen = new Set<string>();
  for (const f of instr.flags) {
    if (!(f.name in allowed)) throw fail(`unknown flag: --${f.name}`);
    const isBool = allowed[f.name]!;
    if (isBool) {
      if (f.value !== undefined && !['true', 'false'].includes(f.value.toLowerCase())) {
        throw fail(`expecting boolean value for flag ${f.name}, not: ${f.value}`);
      }
    } else if (f.value === undefined) {
      throw fail(`missing a value on flag: --${f.name}`);
    }
    if (seen.has(f.name) && !REPEATABLE.has(f.name)) throw fail(`duplicate flag specified: --${f.name}`);
    seen.add(f.name);
  }
}

function newStage(df: Dockerfile, from: Instruction): Stage {
  const name = from.words.length === 3 ? from.words[2]!.toLowerCase() : undefined;
  if (name && df.stages.some((s) => s.name === name)) throw usage(df.file, from.startLine, `duplicate stage name "${name}"`);
  const stage: Stage = { index: df.stages.length, from, baseRaw: from.words[0]!, base: from.words[0]!, instructions: [] };
  if (name) stage.name = name;
  return stage;
}

// ---------------------------------------------------------------------------------------------
// Global ARGs and FROM substitution

/** Node's names of architectures in Go's (and OCI's) spelling. */
const GOARCH: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64', loong64: 'loong64' };

/**
 * The automatic platform ARGs of the global scope (BUILDPLATFORM, TARGETPLATFORM, TARGETOS,
 * TARGETARCH...): the build platform is this machine (Linux), the target defaults to it; a
 * `TARGETPLATFORM` build arg sets the TARGET* ones.
 */
export function platformArgs(buildArgs: Record<string, string> = {}): Record<string, string> {
  const arch = GOARCH[process.arch] ?? process.arch;
  const out: Record<string, string> = {};
  const set = (prefix: string, platform: string) => {
    const [os = 'linux', architecture = arch, variant = ''] = platform.split('/');
    out[`${prefix}PLATFORM`] = platform;
    out[`${prefix}OS`] = os;
    out[`${prefix}ARCH`] = architecture;
    out[`${prefix}VARIANT`] = variant;
  };
  set('BUILD', `linux/${arch}`);
  set('TARGET', buildArgs.TARGETPLATFORM ?? `linux/${arch}`);
  return out;
}

/**
 * The values of the global ARGs (before the first FROM): each default substituted with the
 * ARGs before it, a build arg overriding it. Automatic platform ARGs are included.
 */
export function globalArgValues(df: Dockerfile, buildArgs: Record<string, string> = {}): Map<string, string> {
  const values = new Map<string, string>(Object.entries(platformArgs(buildArgs)));
  for (const [k, v] of Object.entries(buildArgs)) if (/^(BUILD|TARGET)(PLATFORM|OS|ARCH|VARIANT)$/.test(k)) values.set(k, v);
  for (const instr of df.globalArgs) {
    for (const p of instr.pairs ?? []) {
      if (Object.hasOwn(buildArgs, p.key)) values.set(p.key, buildArgs[p.key]!);
      else if (p.value !== undefined) values.set(p.key, expandOrThrow(df, instr, p.value, (n) => values.get(n)));
    }
  }
  return values;
}

/** Substitutes the global ARGs into every stage's FROM (image and `--platform`). */
export function resolveStages(df: Dockerfile, buildArgs: Record<string, string> = {}): void {
  for (const stage of df.stages) {
    const { base, platform } = resolveStageBase(df, stage, buildArgs);
    stage.base = base;
    if (platform !== undefined) stage.platform = platform;
    else delete stage.platform;
  }
}

/** A stage's FROM image and `--platform` with the global ARGs substituted (the stage is not changed). */
export function resolveStageBase(df: Dockerfile, stage: Stage, buildArgs: Record<string, string> = {}): { base: string; platform?: string } {
  const values = globalArgValues(df, buildArgs);
  // Only ARGs declared before FROM (and the automatic ones) are visible to FROM.
  const declared = new Set([...Object.keys(platformArgs()), ...df.globalArgs.flatMap((a) => (a.pairs ?? []).map((p) => p.key))]);
  const lookup = (n: string) => (declared.has(n) ? values.get(n) : undefined);
  const base = expandOrThrow(df, stage.from, stage.baseRaw, lookup);
  if (base.trim() === '') throw usage(df.file, stage.from.startLine, `base name (${stage.baseRaw}) should not be blank`);
  const platformRaw = stage.from.flags.find((f) => f.name === 'platform')?.value;
  return platformRaw === undefined ? { base } : { base, platform: expandOrThrow(df, stage.from, platformRaw, lookup) };
}

function expandOrThrow(df: Dockerfile, instr: Instruction, word: string, lookup: (name: string) => string | undefined): string {
  return expandInstructionWord(df, instr, word, { lookup });
}

/** The stage named `nameOrIndex` (a stage name, case-insensitive, or its 0-based index); default the last. */
export function findStage(df: Dockerfile, nameOrIndex?: string | number): Stage {
  if (nameOrIndex === undefined) return df.stages[df.stages.length - 1]!;
  const byName = typeof nameOrIndex === 'string' ? df.stages.find((s) => s.name === nameOrIndex.toLowerCase()) : undefined;
  if (byName) return byName;
  const index = typeof nameOrIndex === 'number' ? nameOrIndex : /^\d+$/.test(nameOrIndex) ? Number(nameOrIndex) : NaN;
  const byIndex = df.stages[index];
  if (byIndex) return byIndex;
  throw new SmartError('USAGE', `${df.file}: no build stage "${nameOrIndex}"`, { input: String(nameOrIndex), hint: `stages: ${df.stages.map((s) => s.name ?? s.index).join(', ')}` });
}

export function getFlag(instr: Instruction, name: string): string | undefined {
  const f = instr.flags.find((x) => x.name === name);
  return f ? (f.value ?? 'true') : undefined;
}

export function getFlags(instr: Instruction, name: string): string[] {
  return instr.flags.filter((x) => x.name === name).map((x) => x.value ?? 'true');
}

// ---------------------------------------------------------------------------------------------
// Word expansion: BuildKit's shell lexer (ProcessWord) for what Docker substitutes itself.

export interface ExpandOptions {
  lookup: (name: string) => string | undefined;
  escape?: EscapeChar;
  /** Leave unset variables as written (`$X`, `${X:-y}`) instead of substituting the empty string. */
  skipUnset?: boolean;
  /** Quotes are plain characters (heredoc bodies): only variables and escapes are processed. */
  skipQuotes?: boolean;
}

/**
 * One word with variables substituted and quotes removed, as Docker does for FROM, COPY, ADD,
 * ENV, LABEL, ARG, WORKDIR, USER, EXPOSE, VOLUME, STOPSIGNAL: `$VAR`, `${VAR}`, `${VAR:-d}`,
 * `${VAR-d}`, `${VAR:+x}`, `${VAR+x}`, `${VAR:?msg}`, `${VAR#pat}`, `${VAR%pat}` (## %% greedy),
 * `${VAR/pat/repl}`; single quotes literal, double quotes substitute. Throws on bad syntax.
 */
export function expandWord(word: string, options: ExpandOptions): string {
  try {
    return new Lexer(word, options).word();
  } catch (e) {
    if (e instanceof ParseError) throw new SmartError('USAGE', e.message, { input: word });
    throw e;
  }
}

/** `expandWord` for a word of `instr`: errors name `<file>:<line>`. */
export function expandInstructionWord(df: Pick<Dockerfile, 'file' | 'escape'>, instr: Instruction, word: string, options: Omit<ExpandOptions, 'escape'>): string {
  try {
    return new Lexer(word, { ...options, escape: df.escape }).word();
  } catch (e) {
    if (e instanceof ParseError) throw usage(df.file, instr.startLine, e.message);
    throw e;
  }
}

class Lexer {
  private pos = 0;
  private readonly esc: string;
  /** `${...}` open at `pos`: bounded, as the lexer recurses into them. */
  private nesting = 0;

  constructor(
    private readonly src: string,
    private readonly opts: ExpandOptions,
  ) {
    this.esc = opts.escape ?? '\\';
  }

  word(): string {
    return this.until(undefined);
  }

  private peek(): string | undefined {
    return this.src[this.pos];
  }

  private next(): string | undefined {
    return this.src[this.pos++];
  }

  private until(stop: string | undefined): string {
    if (stop !== undefined && ++this.nesting > MAX_JSON_DEPTH) throw new ParseError(`variable substitutions nested deeper than ${MAX_JSON_DEPTH} levels`);
    let out = '';
    while (this.pos < this.src.length) {
      const ch = this.peek()!;
      if (stop !== undefined && ch === stop) {
        this.pos++;
        this.nesting--;
        return out;
      }
      if (ch === '$') out += this.dollar();
      else if (ch === "'" && !this.opts.skipQuotes) out += this.single();
      else if (ch === '"' && !this.opts.skipQuotes) out += this.double();
      else {
        this.pos++;
        if (ch === this.esc) {
          const n = this.next();
          if (n === undefined) break;
          out += n;
        } else out += ch;
      }
    }
    if (stop !== undefined) throw new ParseError(`unexpected end of statement while looking for matching ${stop}`);
    return out;
  }

  private single(): string {
    this.pos++;
    const end = this.src.indexOf("'", this.pos);
    if (end < 0) throw new ParseError('unexpected end of statement while looking for matching single-quote');
    const s = this.src.slice(this.pos, end);
    this.pos = end + 1;
    return s;
  }

  private double(): string {
    this.pos++;
    let out = '';
    for (;;) {
      const ch = this.peek();
      if (ch === undefined) throw new ParseError('unexpected end of statement while looking for matching double-quote');
      if (ch === '"') {
        this.pos++;
        return out;
      }
      if (ch === '$') {
        out += this.dollar();
        continue;
      }
      this.pos++;
      if (ch === this.esc) {
        const n = this.peek();
        if (n === undefined) continue;
        if (n === '"' || n === '$' || n === this.esc) {
          this.pos++;
          out += n;
          continue;
        }
      }
      out += ch;
    }
  }

  private name(): string {
    let name = '';
    const first = this.peek();
    if (first !== undefined && /[0-9]/.test(first)) {
      while (this.peek() !== undefined && /[0-9]/.test(this.peek()!)) name += this.next();
      return name;
    }
    if (first !== undefined && '@*#?-$!0'.includes(first)) return this.next()!;
    while (this.peek() !== undefined && /[\p{L}\p{N}_]/u.test(this.peek()!)) name += this.next();
    return name;
  }

  private get(name: string): string | undefined {
    return this.opts.lookup(name);
  }

  private dollar(): string {
    this.pos++;
    if (this.peek() !== '{') {
      const name = this.name();
      if (name === '') return '$';
      const v = this.get(name);
      if (v === undefined && this.opts.skipUnset) return `$${name}`;
      return v ?? '';
    }
    this.pos++;
    const p = this.peek();
    if (p === undefined) throw new ParseError("syntax error: missing '}'");
    if (p === '{' || p === '}' || p === ':') throw new ParseError('syntax error: bad substitution');
    const name = this.name();
    let ch = this.next();
    if (ch === undefined) throw new ParseError("syntax error: missing '}'");
    let mod = ch;
    if (ch === '}') {
      const v = this.get(name);
      if (v === undefined && this.opts.skipUnset) return `\${${name}}`;
      return v ?? '';
    }
    let nullIsUnset = false;
    if (ch === ':') {
      nullIsUnset = true;
      ch = this.next();
      if (ch === undefined) throw new ParseError("syntax error: missing '}'");
      mod += ch;
    }
    if ('+-?#%'.includes(ch)) {
      if (nullIsUnset && (ch === '#' || ch === '%')) throw new ParseError(`unsupported modifier (${mod}) in substitution`);
      const arg = this.until('}');
      const value = this.get(name);
      if (value === undefined && this.opts.skipUnset) return `\${${name}${mod}${arg}}`;
      const unset = value === undefined || (nullIsUnset && value === '');
      switch (ch) {
        case '-':
          return unset ? arg : value!;
        case '+':
          return unset ? '' : arg;
        case '?':
          if (value === undefined) throw new ParseError(`${name}: ${arg || 'is not allowed to be unset'}`);
          if (nullIsUnset && value === '') throw new ParseError(`${name}: ${arg || 'is not allowed to be empty'}`);
          return value;
        default: {
          const greedy = arg.startsWith(ch);
          const pattern = greedy ? arg.slice(1) : arg;
          return trimPattern(value ?? '', pattern, ch === '#' ? 'prefix' : 'suffix', greedy);
        }
      }
    }
    if (ch === '/' && !nullIsUnset) {
      const all = this.peek() === '/';
      if (all) this.pos++;
      const pattern = this.until('/');
      const replacement = this.until('}');
      const value = this.get(name);
      if (value === undefined && this.opts.skipUnset) return `\${${name}/${all ? '/' : ''}${pattern}/${replacement}}`;
      const re = new RegExp(shellPatternSource(pattern), all ? 'g' : '');
      return (value ?? '').replace(re, () => replacement);
    }
    throw new ParseError(`unsupported modifier (${mod}) in substitution`);
  }
}

/** A shell glob (`*`, `?`, `[...]`, `\x`) as regex source, unanchored. */
function shellPatternSource(pattern: string): string {
  let out = '';
  for (let j = 0; j < pattern.length; j++) {
    const ch = pattern[j]!;
    if (ch === '*') out += '[\\s\\S]*';
    else if (ch === '?') out += '[\\s\\S]';
    else if (ch === '[') {
      const end = pattern.indexOf(']', j + 2);
      if (end < 0) out += '\\[';
      else {
        let cls = pattern.slice(j + 1, end);
        if (cls.startsWith('!')) cls = '^' + cls.slice(1);
        out += '[' + cls.replace(/\\/g, '\\\\') + ']';
        j = end;
      }
    } else if (ch === '\\' && j + 1 < pattern.length) {
      out += escapeRegExp(pattern[++j]!);
    } else out += escapeRegExp(ch);
  }
  return out;
}

function trimPattern(value: string, pattern: string, side: 'prefix' | 'suffix', greedy: boolean): string {
  const re = new RegExp(`^${shellPatternSource(pattern)}$`);
  const lengths = [...Array(value.length + 1).keys()];
  if (greedy) lengths.reverse();
  for (const n of lengths) {
    const part = side === 'prefix' ? value.slice(0, n) : value.slice(value.length - n);
    if (re.test(part)) return side === 'prefix' ? value.slice(n) : value.slice(0, value.length - n);
  }
  return value;
}

export function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
}

/** A source ADD fetches instead of reading the context: http(s) URLs and git references. */
export function isRemote(src: string): boolean {
  return /^(https?:\/\/|git@|git:\/\/|ssh:\/\/)/i.test(src);
}
