/**
 * The build context as a builder sees it: `.dockerignore` read and matched with Docker's
 * semantics (moby/patternmatcher and its ignorefile reader), the context walked with those
 * exclusions, and the content digest of what a `COPY <sources> <dest>` takes from it.
 *
 * `.dockerignore` semantics: one pattern a line; lines starting with `#` are comments; patterns
 * are trimmed, cleaned like Go's filepath.Clean and lose a leading `/`; `*` and `?` never match
 * `/`, `[...]` is a class, `\` escapes, `**` matches any number of directories; a pattern that
 * matches a directory matches everything below it; `!pattern` re-includes; the last pattern
 * that matches decides. The Dockerfile and the `.dockerignore` are sent to the builder even
 * when excluded, but COPY does not see them then (Docker's documented behaviour).
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { isErrno, SmartError } from '../errors.js';
import type { Digest } from '../oci/digest.js';
import { decodeName, decodeNames, fsPath } from '../tar/byte-names.js';

// ---------------------------------------------------------------------------------------------
// Paths

/** Go's path.Clean for `/`-separated paths: `a//b/./c/..` → `a/b`, `` → `.`. */
export function cleanPath(p: string): string {
  if (p === '') return '.';
  const rooted = p.startsWith('/');
  const out: string[] = [];
  for (const seg of p.split('/')) {
    if (seg === '' || seg === '.') continue;
    if (seg === '..') {
      if (out.length > 0 && out[out.length - 1] !== '..') out.pop();
      else if (!rooted) out.push('..');
      continue;
    }
    out.push(seg);
  }
  const s = out.join('/');
  return rooted ? `/${s}` : s || '.';
}

/** A source path as builders resolve it: relative to the context root and never above it (`''` is the root). */
export function contextRelative(p: string): string {
  const c = cleanPath(`/${p}`);
  return c === '/' ? '' : c.slice(1);
}

// ---------------------------------------------------------------------------------------------
// .dockerignore

export interface IgnoreRule {
  /** The cleaned pattern, without `!`. */
  pattern: string;
  /** `!pattern`: re-includes what earlier patterns excluded. */
  exclusion: boolean;
  /** 1-based line in the ignore file, when read from one. */
  line?: number;
  /** Whether the pattern matches this path itself (parents not considered). */
  matches(relPath: string): boolean;
}

export interface ContextMatcher {
  readonly rules: readonly IgnoreRule[];
  /** The ignore file the rules come from, if any. */
  readonly source?: string;
  /** Context-relative paths sent even when excluded (the Dockerfile and the ignore file). */
  readonly alwaysSent: readonly string[];
  /** Whether the rules exclude this context-relative path (a pattern matching a parent counts). */
  excluded(relPath: string): boolean;
  /** Whether the path is sent to the builder: not excluded, or always sent. */
  sent(relPath: string): boolean;
  /**
   * For an excluded directory: whether a later `!` pattern (or an always-sent file) could
   * re-include something inside it. When false, a walk may skip the directory.
   */
  mayIncludeInside(dirRelPath: string): boolean;
}

export interface DockerignoreLine {
  pattern: string;
  line: number;
}

/**
 * The patterns of a `.dockerignore` as Docker reads them: BOM dropped, `#` lines skipped,
 * trimmed, cleaned (filepath.Clean), a leading `/` removed, `!` kept in front.
 */
export function parseDockerignore(text: string): DockerignoreLine[] {
  const out: DockerignoreLine[] = [];
  const lines = text.replace(/^\uFEFF/, '').split(/\r?\n/);
  lines.forEach((raw, i) => {
    if (raw.startsWith('#')) return;
    const pattern = normalizeIgnorePattern(raw);
    if (pattern !== undefined) out.push({ pattern, line: i + 1 });
  });
  return out;
}

/** One pattern as Docker's ignore-file reader normalises it (undefined for a blank line). */
export function normalizeIgnorePattern(raw: string): string | undefined {
  let p = raw.trim();
  if (p === '') return undefined;
  const invert = p.startsWith('!');
  if (invert) p = p.slice(1).trim();
  if (p.length > 0) {
    p = cleanPath(p);
    if (p.length > 1 && p.startsWith('/')) p = p.slice(1);
  }
  return invert ? `!${p}` : p;
}

export interface MatcherOptions {
  alwaysSent?: string[];
  source?: string;
}

/**
 * A matcher over patterns: lines of `parseDockerignore`, or strings written as in a
 * `.dockerignore` (`!` prefix for exceptions; normalised the same way, no comments).
 */
export function createMatcher(patterns: readonly (string | DockerignoreLine)[], options: MatcherOptions = {}): ContextMatcher {
  const rules: IgnoreRule[] = [];
  for (const item of patterns) {
    const { pattern: written, line } = typeof item === 'string' ? { pattern: normalizeIgnorePattern(item) ?? '', line: undefined } : item;
    let p = written.trim();
    if (p === '') continue;
    p = cleanPath(p);
    const where = `${options.source ?? '.dockerignore'}${line ? `:${line}` : ''}`;
    let exclusion = false;
    if (p.startsWith('!')) {
      if (p.length === 1) throw new SmartError('USAGE', `${where}: illegal exclusion pattern: "!"`, { input: written });
      exclusion = true;
      p = p.slice(1);
    }
    let matches: (s: string) => boolean;
    try {
      goMatchTokens(p, false); // syntax check, as filepath.Match(p, ".") in patternmatcher
      matches = compileIgnorePattern(p);
    } catch {
      throw new SmartError('USAGE', `${where}: syntax error in pattern "${written}"`, { input: written });
    }
    rules.push({ pattern: p, exclusion, ...(line ? { line } : {}), matches });
  }
  const alwaysSent = (options.alwaysSent ?? []).map(contextRelative).filter((p) => p !== '');
  const always = new Set(alwaysSent);
  const segmentsOf = rules.map((r) => r.pattern.split('/'));

  const ruleMatches = (r: IgnoreRule, file: string): boolean => {
    if (r.matches(file)) return true;
    const dirs = file.split('/');
    for (let i = 1; i < dirs.length; i++) if (r.matches(dirs.slice(0, i).join('/'))) return true;
    return false;
  };
  const excluded = (relPath: string): boolean => {
    const file = cleanPath(relPath);
    if (file === '.' || file === '' || rules.length === 0) return false;
    let matched = false;
    for (const r of rules) {
      if (r.exclusion !== matched) continue;
      if (ruleMatches(r, file)) matched = !r.exclusion;
    }
    return matched;
  };
  return {
    rules,
    ...(options.source ? { source: options.source } : {}),
    alwaysSent,
    excluded,
    sent: (relPath) => always.has(cleanPath(relPath)) || !excluded(relPath),
    mayIncludeInside(dirRelPath) {
      const dir = cleanPath(dirRelPath);
      if (alwaysSent.some((a) => a.startsWith(`${dir}/`))) return true;
      // Only `!` patterns after the last pattern that matches the directory can change what is below it.
      let last = -1;
      rules.forEach((r, i) => {
        if (ruleMatches(r, dir)) last = i;
      });
      const segs = dir.split('/');
      return rules.some((r, i) => i > last && r.exclusion && couldMatchBelow(segmentsOf[i]!, segs));
    },
  };
}

/** Whether a pattern could match a path strictly below the directory `segs` (conservative: true when unsure). */
function couldMatchBelow(patternSegs: readonly string[], segs: readonly string[]): boolean {
  for (let i = 0; ; i++) {
    if (i === patternSegs.length) return false;
    const ps = patternSegs[i]!;
    if (ps.includes('**')) return true;
    if (i === segs.length) return true;
    let tokens: Glob[];
    try {
      tokens = goMatchTokens(ps, true);
    } catch {
      return true;
    }
    if (!globMatch(tokens, segs[i]!)) return false;
  }
}

/**
 * A compiled pattern: what Docker compiles to a Go regexp (RE2, linear time) is matched here by an
 * automaton in time linear in path × pattern, never by a backtracking RegExp (where `a*a*a*...c`
 * against a long name takes exponential time).
 */
type Glob =
  | { k: 'lit'; c: string }
  /** One character but `/` (`?`). */
  | { k: 'one' }
  | { k: 'class'; negated: boolean; ranges: [string, string][] }
  /** Any run of characters but `/` (`*`). */
  | { k: 'star' }
  /** Any run of characters (a trailing `**`). */
  | { k: 'all' }
  /** Nothing, or any run ending in `/` (`**` followed by more). */
  | { k: 'dirs' }
  /** Matches nothing, only at the start: a `^` in the middle of a pattern is an anchor in Docker's regexp. */
  | { k: 'start' };

function inClass(t: Extract<Glob, { k: 'class' }>, ch: string): boolean {
  return t.ranges.some(([lo, hi]) => ch >= lo && ch <= hi) !== t.negated;
}

/** Whether `s` matches the tokens whole. States: i = before token i (n: done), n+1+i = inside the run of `dirs` token i. */
function globMatch(tokens: readonly Glob[], s: string): boolean {
  const n = tokens.length;
  const closure = (set: Set<number>, first: number, pos: number) => {
    const stack = [first];
    while (stack.length > 0) {
      const st = stack.pop()!;
      if (set.has(st)) continue;
      set.add(st);
      const t = st < n ? tokens[st]! : undefined;
      if (t && (t.k === 'star' || t.k === 'all' || t.k === 'dirs' || (t.k === 'start' && pos === 0))) stack.push(st + 1);
    }
  };
  let current = new Set<number>();
  closure(current, 0, 0);
  for (let pos = 0; pos < s.length; pos++) {
    const ch = s[pos]!;
    const next = new Set<number>();
    for (const st of current) {
      if (st > n) {
        closure(next, st, pos + 1);
        if (ch === '/') closure(next, st - n, pos + 1);
        continue;
      }
      const t = tokens[st];
      if (!t) continue;
      if (t.k === 'lit' ? ch === t.c : t.k === 'one' ? ch !== '/' : t.k === 'class' ? inClass(t, ch) : false) closure(next, st + 1, pos + 1);
      else if ((t.k === 'star' && ch !== '/') || t.k === 'all') closure(next, st, pos + 1);
      else if (t.k === 'dirs') {
        closure(next, n + 1 + st, pos + 1);
        if (ch === '/') closure(next, st + 1, pos + 1);
      }
    }
    if (next.size === 0) return false;
    current = next;
  }
  return current.has(n);
}

/**
 * patternmatcher's compile: exact, prefix (`dir/**`), suffix (`**\/name`) or a match of the whole
 * path. A class is read as filepath.Match reads it (Docker's regexp differs only for a `*` or
 * `?` inside brackets, which it turns into regexp syntax there).
 */
function compileIgnorePattern(pattern: string): (path: string) => boolean {
  const tokens: Glob[] = [];
  let type: 'exact' | 'prefix' | 'suffix' | 'regexp' = 'exact';
  let pos = 0;
  for (let i = 0; pos < pattern.length; i++) {
    const ch = pattern[pos++]!;
    if (ch === '*') {
      if (pattern[pos] === '*') {
        pos++;
        if (pattern[pos] === '/') pos++;
        if (pos >= pattern.length) {
          if (type === 'exact') type = 'prefix';
          else {
            tokens.push({ k: 'all' });
            type = 'regexp';
          }
        } else {
          tokens.push({ k: 'dirs' });
          type = 'regexp';
        }
        if (i === 0) type = 'suffix';
      } else {
        tokens.push({ k: 'star' });
        type = 'regexp';
      }
    } else if (ch === '?') {
      tokens.push({ k: 'one' });
      type = 'regexp';
    } else if (ch === '\\') {
      if (pos < pattern.length) {
        tokens.push({ k: 'lit', c: pattern[pos++]! });
        type = 'regexp';
      } else tokens.push({ k: 'lit', c: '\\' });
    } else if (ch === '[') {
      const cls = parseClass(pattern, pos);
      tokens.push(cls.token);
      pos = cls.next;
      type = 'regexp';
    } else if (ch === ']') {
      tokens.push({ k: 'lit', c: ']' });
      type = 'regexp';
    } else tokens.push(ch === '^' ? { k: 'start' } : { k: 'lit', c: ch });
  }
  switch (type) {
    case 'exact':
      return (p) => p === pattern;
    case 'prefix': {
      const prefix = pattern.slice(0, -2);
      return (p) => p.startsWith(prefix);
    }
    case 'suffix': {
      const suffix = pattern.slice(2);
      return (p) => p.endsWith(suffix) || (suffix.startsWith('/') && p === suffix.slice(1));
    }
    default:
      return (p) => globMatch(tokens, p);
  }
}

/** A filepath.Match class whose `[` is just before `j`: `[^a-z\]]`. Throws on a malformed one. */
function parseClass(pattern: string, j: number): { token: Glob; next: number } {
  const ranges: [string, string][] = [];
  let negated = false;
  if (pattern[j] === '^') {
    negated = true;
    j++;
  }
  for (;;) {
    if (j >= pattern.length) throw new Error('bad pattern');
    if (pattern[j] === ']' && ranges.length > 0) break;
    const lo = classChar(pattern, j);
    j = lo.next;
    if (pattern[j] === '-') {
      const hi = classChar(pattern, j + 1);
      if (hi.ch < lo.ch) throw new Error('bad pattern');
      ranges.push([lo.ch, hi.ch]);
      j = hi.next;
    } else ranges.push([lo.ch, lo.ch]);
  }
  return { token: { k: 'class', negated, ranges }, next: j + 1 };
}

/**
 * Go's filepath.Match pattern as tokens: `*` and `?` stop at `/`, `[^a-z]` classes, `\` escapes.
 * Throws on a malformed pattern (ErrBadPattern). `segment`: `/` may not appear.
 */
function goMatchTokens(pattern: string, segment: boolean): Glob[] {
  const tokens: Glob[] = [];
  for (let i = 0; i < pattern.length; i++) {
    const ch = pattern[i]!;
    if (ch === '*') tokens.push({ k: 'star' });
    else if (ch === '?') tokens.push({ k: 'one' });
    else if (ch === '\\') {
      if (i + 1 >= pattern.length) throw new Error('bad pattern');
      tokens.push({ k: 'lit', c: pattern[++i]! });
    } else if (ch === '[') {
      const cls = parseClass(pattern, i + 1);
      tokens.push(cls.token);
      i = cls.next - 1;
    } else if (segment && ch === '/') throw new Error('bad pattern');
    else tokens.push({ k: 'lit', c: ch });
  }
  return tokens;
}

function classChar(pattern: string, j: number): { ch: string; next: number } {
  const c = pattern[j];
  if (c === undefined || c === '-' || c === ']') throw new Error('bad pattern');
  if (c === '\\') {
    const e = pattern[j + 1];
    if (e === undefined) throw new Error('bad pattern');
    return { ch: e, next: j + 2 };
  }
  return { ch: c, next: j + 1 };
}

/** Whether a source path holds `*`, `?` or `[` not escaped by a backslash: Docker expands it as a wildcard. */
export function hasWildcards(p: string): boolean {
  for (let i = 0; i < p.length; i++) {
    const ch = p[i]!;
    if (ch === '\\') i++;
    else if (ch === '*' || ch === '?' || ch === '[') return true;
  }
  return false;
}

export interface LoadIgnoreOptions {
  /** The Dockerfile's path (absolute, or relative to the context): `<Dockerfile>.dockerignore` beside it wins over the context's `.dockerignore`. */
  dockerfile?: string;
}

/** Reads the ignore file Docker would use for this context (none: a matcher that excludes nothing). */
export async function loadDockerignore(contextDir: string, options: LoadIgnoreOptions = {}): Promise<ContextMatcher> {
  const root = path.resolve(contextDir);
  const dockerfileAbs = options.dockerfile ? path.resolve(root, options.dockerfile) : path.join(root, 'Dockerfile');
  const dockerfileRel = path.relative(root, dockerfileAbs);
  const alwaysSent = ['.dockerignore'];
  if (!dockerfileRel.startsWith('..') && !path.isAbsolute(dockerfileRel)) alwaysSent.push(dockerfileRel.split(path.sep).join('/'));
  const candidates = options.dockerfile ? [`${dockerfileAbs}.dockerignore`, path.join(root, '.dockerignore')] : [path.join(root, '.dockerignore')];
  for (const file of candidates) {
    let text: string;
    try {
      text = await fs.readFile(file, 'utf8');
    } catch (e) {
      if (isErrno(e, 'ENOENT') || isErrno(e, 'ENOTDIR')) continue;
      throw new SmartError('NOT_FOUND', `cannot read ${file}: ${(e as Error).message}`, { input: file, cause: e });
    }
    return createMatcher(parseDockerignore(text), { alwaysSent, source: file });
  }
  return createMatcher([], { alwaysSent });
}

// ---------------------------------------------------------------------------------------------
// Walking the context

export type EntryType = 'file' | 'dir' | 'symlink' | 'other';

export interface ContextEntry {
  /** Context-relative, `/`-separated. */
  path: string;
  type: EntryType;
  /** Permission bits (mode & 0o7777). */
  mode: number;
  /** Bytes, for files (0 otherwise). */
  size: number;
  /** Symlink target as stored. */
  target?: string;
  /** For change detection only (content hashes are cached on it); never part of a digest. */
  mtimeMs: number;
  ino: number;
  /** Owner, device and link count: what the builders' own source hashes read (builder-hashes.ts). */
  uid?: number;
  gid?: number;
  dev?: number;
  nlink?: number;
}

export interface ListOptions {
  /** Include the Dockerfile and ignore file even when excluded, as sent to the builder (default true). False: what COPY sees. */
  buildFiles?: boolean;
}

/**
 * Every entry of the context that is sent, in walk order (directories before their contents,
 * names sorted). Excluded directories are skipped without reading them unless a later `!`
 * pattern could re-include something inside; an excluded directory that holds re-included
 * entries is listed (the builder receives it as their parent).
 */
export async function listContext(dir: string, matcher: ContextMatcher, options: ListOptions = {}): Promise<ContextEntry[]> {
  const root = path.resolve(dir);
  const st = await statRoot(root);
  if (!st.isDirectory()) throw new SmartError('NOT_FOUND', `build context ${dir} is not a directory`, { input: dir });
  const buildFiles = options.buildFiles ?? true;
  const always = new Set(buildFiles ? matcher.alwaysSent : []);
  const isSent = (rel: string) => always.has(rel) || !matcher.excluded(rel);
  const out: ContextEntry[] = [];
  const walk = async (abs: string, rel: string, into: ContextEntry[]): Promise<void> => {
    let names: string[];
    try {
      // As bytes: a name that is not UTF-8 is still the file it names (src/tar/byte-names.ts).
      names = decodeNames(await fs.readdir(fsPath(abs), { encoding: 'buffer' })).sort();
    } catch (e) {
      throw new SmartError('STORAGE', `cannot read ${abs}: ${(e as Error).message}`, { input: abs, cause: e });
    }
    const children = await Promise.all(names.map((name) => entryOf(path.join(abs, name), rel ? `${rel}/${name}` : name)));
    for (const entry of children) {
      if (!entry) continue;
      const childRel = entry.path;
      const childAbs = path.join(root, ...childRel.split('/'));
      const sent = isSent(childRel);
      if (entry.type === 'dir') {
        if (sent) {
          into.push(entry);
          await walk(childAbs, childRel, into);
        } else if (matcher.mayIncludeInside(childRel) || [...always].some((a) => a.startsWith(`${childRel}/`))) {
          const inside: ContextEntry[] = [];
          await walk(childAbs, childRel, inside);
          if (inside.length > 0) into.push(entry, ...inside);
        }
      } else if (sent) into.push(entry);
    }
  };
  await walk(root, '', out);
  return out;
}

async function statRoot(root: string) {
  try {
    return await fs.stat(root);
  } catch (e) {
    throw new SmartError('NOT_FOUND', `build context ${root} not found`, { input: root, cause: e });
  }
}

async function entryOf(abs: string, rel: string): Promise<ContextEntry | undefined> {
  let st;
  try {
    st = await fs.lstat(fsPath(abs));
  } catch (e) {
    if (isErrno(e, 'ENOENT')) return undefined; // removed while walking
    throw new SmartError('STORAGE', `cannot stat ${abs}: ${(e as Error).message}`, { input: abs, cause: e });
  }
  const type: EntryType = st.isDirectory() ? 'dir' : st.isFile() ? 'file' : st.isSymbolicLink() ? 'symlink' : 'other';
  const entry: ContextEntry = {
    path: rel,
    type,
    mode: st.mode & 0o7777,
    size: type === 'file' ? st.size : 0,
    mtimeMs: st.mtimeMs,
    ino: st.ino,
    uid: st.uid,
    gid: st.gid,
    dev: st.dev,
    nlink: st.nlink,
  };
  if (type === 'symlink') entry.target = decodeName(await fs.readlink(fsPath(abs), { encoding: 'buffer' }));
  return entry;
}

/** Bytes of the files sent to the builder. */
export async function contextSize(dir: string, matcher: ContextMatcher): Promise<number> {
  let total = 0;
  for (const e of await listContext(dir, matcher)) total += e.size;
  return total;
}

// ---------------------------------------------------------------------------------------------
// What COPY takes

/** The context as COPY sees it, indexed by path. */
export interface ContextIndex {
  dir: string;
  matcher: ContextMatcher;
  entries: Map<string, ContextEntry>;
  /** Directory (context-relative, `''` the root) → names of its entries, sorted. */
  children: Map<string, string[]>;
}

export async function indexContext(dir: string, matcher: ContextMatcher): Promise<ContextIndex> {
  const root = path.resolve(dir);
  const list = await listContext(root, matcher, { buildFiles: false });
  const entries = new Map<string, ContextEntry>();
  const children = new Map<string, string[]>([['', []]]);
  for (const e of list) {
    entries.set(e.path, e);
    const slash = e.path.lastIndexOf('/');
    const parent = slash < 0 ? '' : e.path.slice(0, slash);
    const name = e.path.slice(slash + 1);
    let kids = children.get(parent);
    if (!kids) children.set(parent, (kids = []));
    kids.push(name);
    if (e.type === 'dir' && !children.has(e.path)) children.set(e.path, []);
  }
  return { dir: root, matcher, entries, children };
}

/** One file of a COPY, named where it lands relative to the destination directory. */
export interface CopyEntry {
  /** Destination-relative path: a file source by its base name, a directory source's contents relative to it (`--parents`: the context path). */
  path: string;
  /** The context path it is read from. */
  source: string;
  type: EntryType;
  mode: number;
  size: number;
  target?: string;
  /** Hex sha256 of a file's content (when hashed). */
  sha256?: string;
  /** A member of an archive the ADD extracts (`source` is the archive's context path). */
  fromArchive?: true;
  /** Such a member: the hex sha256 of the archive's bytes, on which the builders key the step (trie/archive-entries.ts). */
  archiveSha256?: string;
}

export interface CopyOptions {
  chown?: string;
  chmod?: string;
  /** `COPY --exclude=` patterns, matched against destination-relative paths. */
  exclude?: string[];
  /** `COPY --parents`: keep the sources' context paths under the destination. */
  parents?: boolean;
  /** Name the Dockerfile line in errors: `<file>:<line>: ...`. */
  file?: string;
  line?: number;
  /** Reuse an index of the context (what `indexContext` returns for the same matcher). */
  index?: ContextIndex;
  /** Content hashes by file identity (path, size, mtime, inode): pass one map to several calls. */
  hashCache?: Map<string, string>;
  /** Skip reading file contents (lint): entries carry no sha256. */
  hash?: boolean;
  /**
   * ADD: a tar archive named as a source (not one inside a directory source) is extracted into
   * the destination, as builders do: its members are the entries, as this gives them for a
   * context file (trie/archive-entries.ts), or undefined for a file that is no archive. Not with
   * `hash: false`, which reads no file.
   */
  unpack?: (absolutePath: string, contextPath: string) => Promise<CopyEntry[] | undefined>;
}

const MAX_SYMLINKS = 32;

/** Resolves a context path, following symlinks in every component, inside the context. */
export function resolveInContext(index: ContextIndex, rel: string): ContextEntry | undefined {
  let segs = rel === '' ? [] : rel.split('/');
  let hops = 0;
  for (let i = 0; i < segs.length; i++) {
    const cur = segs.slice(0, i + 1).join('/');
    const e = index.entries.get(cur);
    if (!e) return undefined;
    if (e.type === 'symlink') {
      if (++hops > MAX_SYMLINKS) return undefined;
      const t = e.target ?? '';
      const parent = segs.slice(0, i).join('/');
      const joined = t.startsWith('/') ? t : `${parent}/${t}`;
      const resolved = contextRelative(joined);
      segs = [...(resolved === '' ? [] : resolved.split('/')), ...segs.slice(i + 1)];
      i = -1;
    }
  }
  const final = segs.join('/');
  if (final === '') return { path: '', type: 'dir', mode: 0o755, size: 0, mtimeMs: 0, ino: 0 };
  return index.entries.get(final);
}

/** Context paths matching a COPY wildcard source, segment by segment (filepath.Match), in walk order. */
export function expandWildcard(index: ContextIndex, rel: string): string[] {
  let current = [''];
  for (const seg of rel.split('/')) {
    const next: string[] = [];
    let tokens: Glob[] | undefined;
    try {
      tokens = hasWildcards(seg) ? goMatchTokens(seg, true) : undefined;
    } catch {
      throw new SmartError('USAGE', `COPY source "${rel}": syntax error in pattern "${seg}"`, { input: rel });
    }
    for (const dir of current) {
      const kids = index.children.get(dir) ?? [];
      for (const name of kids) {
        if (tokens ? globMatch(tokens, name) : name === seg.replace(/\\(.)/g, '$1')) next.push(dir ? `${dir}/${name}` : name);
      }
    }
    current = next;
  }
  return current;
}

/** Every entry below a context directory, in walk order (a directory before its contents, names sorted). */
export function descendants(index: ContextIndex, dir: string): ContextEntry[] {
  const out: ContextEntry[] = [];
  const visit = (d: string) => {
    for (const name of index.children.get(d) ?? []) {
      const p = d ? `${d}/${name}` : name;
      const e = index.entries.get(p);
      if (!e) continue;
      out.push(e);
      if (e.type === 'dir') visit(p);
    }
  };
  visit(dir);
  return out;
}

/**
 * The entries `COPY <sources> <dest>` takes from the context, as Docker chooses them: sources
 * relative to the context root (never above it), wildcards expanded per path segment, a
 * directory copied by its contents, symlinks named as sources followed (inside the context),
 * symlinks inside directories kept as symlinks; sorted by destination path.
 */
export async function collectCopyEntries(contextDir: string, sources: readonly string[], matcher: ContextMatcher, options: CopyOptions = {}): Promise<CopyEntry[]> {
  const index = options.index ?? (await indexContext(contextDir, matcher));
  const where = options.file ? `${options.file}${options.line ? `:${options.line}` : ''}: ` : options.line ? `line ${options.line}: ` : '';
  const exclude = options.exclude && options.exclude.length > 0 ? createMatcher(options.exclude, { source: '--exclude' }) : undefined;
  const byPath = new Map<string, CopyEntry>();
  const add = (destPath: string, e: ContextEntry, source: string) => {
    if (destPath === '' || exclude?.excluded(destPath)) return;
    const entry: CopyEntry = { path: destPath, source, type: e.type, mode: e.mode, size: e.size };
    if (e.target !== undefined) entry.target = e.target;
    byPath.set(destPath, entry);
  };
  for (const src of sources) {
    const rel = contextRelative(src);
    let matches: string[];
    try {
      matches = hasWildcards(rel) ? expandWildcard(index, rel) : [rel];
    } catch (e) {
      // A pattern that does not parse (`COPY ["a.txt", "/"`, unclosed, is the shell form's `["a.txt",`): the line named.
      if (where && e instanceof SmartError && e.code === 'USAGE') throw new SmartError('USAGE', `${where}${e.message}`, { input: src, cause: e });
      throw e;
    }
    if (matches.length === 0) {
      throw new SmartError('NOT_FOUND', `${where}COPY source "${src}": no file in the build context matches`, { input: src });
    }
    for (const m of matches) {
      const e = resolveInContext(index, m);
      if (!e) {
        const onDisk = await fs.lstat(fsPath(path.join(index.dir, m))).then(
          () => true,
          () => false,
        );
        throw new SmartError('NOT_FOUND', `${where}COPY source "${src}" not found in the build context`, {
          input: src,
          ...(onDisk ? { hint: `${m} is excluded by ${index.matcher.source ?? '.dockerignore'}` } : {}),
        });
      }
      if (e.type === 'dir') {
        for (const d of descendants(index, e.path)) {
          const sub = e.path === '' ? d.path : d.path.slice(e.path.length + 1);
          add(options.parents ? (m === '' ? sub : `${m}/${sub}`) : sub, d, d.path);
        }
      } else {
        const members = options.unpack && options.hash !== false && e.type === 'file' ? await options.unpack(path.join(index.dir, e.path), e.path) : undefined;
        if (members) {
          for (const member of members) if (!exclude?.excluded(member.path)) byPath.set(member.path, member);
        } else add(options.parents ? m : m.slice(m.lastIndexOf('/') + 1), e, e.path);
      }
    }
  }
  const entries = [...byPath.values()].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  if (options.hash !== false) await hashFiles(index, entries, options.hashCache);
  return entries;
}

async function hashFiles(index: ContextIndex, entries: CopyEntry[], cache?: Map<string, string>): Promise<void> {
  // An archive's members are hashed as it is read.
  const files = entries.filter((e) => e.type === 'file' && e.sha256 === undefined);
  let next = 0;
  const worker = async () => {
    while (next < files.length) {
      const e = files[next++]!;
      const ce = index.entries.get(e.source)!;
      const abs = path.join(index.dir, e.source);
      const key = `${abs}\0${ce.size}\0${ce.mtimeMs}\0${ce.ino}`;
      const known = cache?.get(key);
      if (known) {
        e.sha256 = known;
        continue;
      }
      e.sha256 = await sha256File(abs);
      cache?.set(key, e.sha256);
    }
  };
  await Promise.all(Array.from({ length: Math.min(16, files.length) }, worker));
}

function sha256File(abs: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(fsPath(abs))
      .on('data', (chunk) => h.update(chunk))
      .on('error', (e) => reject(new SmartError('STORAGE', `cannot read ${abs}: ${e.message}`, { input: abs, cause: e })))
      .on('end', () => resolve(h.digest('hex')));
  });
}

export const COPY_DIGEST_VERSION = 'smartlayer-copy-v1';

/**
 * One sha256 over copy entries: a header with `--chown`/`--chmod`, then per entry (sorted by
 * destination path) its path, type, permission bits, and content sha256 (files) or target
 * (symlinks), and an archive's member the archive's sha256. Owners and times are not part of it. An octal `--chmod` replaces the bits of
 * files and directories, as the builder applies it, so a layer's entries digest the same.
 */
export function digestCopyEntries(entries: readonly CopyEntry[], options: Pick<CopyOptions, 'chown' | 'chmod'> = {}): Digest {
  const h = createHash('sha256');
  h.update(`${JSON.stringify({ v: COPY_DIGEST_VERSION, chown: options.chown ?? null, chmod: options.chmod ?? null })}\n`);
  const forced = options.chmod !== undefined && /^[0-7]{3,4}$/.test(options.chmod) ? parseInt(options.chmod, 8) : undefined;
  const sorted = [...entries].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  for (const e of sorted) {
    if (e.type === 'file' && e.sha256 === undefined) throw new SmartError('INTERNAL', `copy entry ${e.path} was not hashed`);
    const data = e.type === 'file' ? e.sha256! : e.type === 'symlink' ? (e.target ?? '') : '';
    const mode = forced !== undefined && (e.type === 'file' || e.type === 'dir') ? forced : e.mode;
    // An archive's member also by the archive's bytes: no layer's files can then stand for it.
    const fields = [e.path, e.type, mode.toString(8).padStart(4, '0'), data, ...(e.archiveSha256 !== undefined ? [e.archiveSha256] : [])];
    h.update(`${JSON.stringify(fields)}\n`);
  }
  return `sha256:${h.digest('hex')}` as Digest;
}

/** An entry of a layer tar, as a matcher reads it (owners and times are not needed). */
export interface LayerEntry {
  /** As in the tar (`app/src/x.js`, `./app/...`, `/app/...` all accepted). */
  path: string;
  type: EntryType;
  /** Permission bits. */
  mode: number;
  /** Symlink target. */
  target?: string;
  /** Hex sha256 of a file's content. */
  sha256?: string;
}

/**
 * The content digest of a COPY computed from the layer it made: the entries below the step's
 * destination directory (`Step.destination`), named relative to it — the destination itself,
 * its parents and whiteouts left out; or, where the step wrote one file at a destination not
 * written as a directory, that file named by the destination's last element. Equal to
 * `copySourcesDigest` of the context the layer was built from (for a file copied under another
 * name, to the plan's key over it renamed).
 */
export function digestLayerEntries(entries: readonly LayerEntry[], destination: string, options: Pick<CopyOptions, 'chown' | 'chmod'> = {}): Digest {
  const dest = contextRelative(destination);
  const prefix = dest === '' ? '' : `${dest}/`;
  const picked: CopyEntry[] = [];
  /** The destination itself, when the step wrote a file there (`COPY app.conf /etc/app/main.conf`). */
  let itself: LayerEntry | undefined;
  for (const e of entries) {
    const p = contextRelative(e.path);
    if (p === dest && dest !== '' && !destination.endsWith('/') && e.type !== 'dir') itself = e;
    if (p === '' || p === dest || !p.startsWith(prefix)) continue;
    const rel = p.slice(prefix.length);
    if (rel.slice(rel.lastIndexOf('/') + 1).startsWith('.wh.')) continue;
    const entry: CopyEntry = { path: rel, source: p, type: e.type, mode: e.mode & 0o7777, size: 0 };
    if (e.target !== undefined) entry.target = e.target;
    if (e.sha256 !== undefined) entry.sha256 = e.sha256;
    picked.push(entry);
  }
  // A file at the destination: it alone, named as the destination names it (a plan names the
  // source so when the names agree, and tries the destination's name besides: steps.ts).
  if (itself && picked.length === 0) {
    const name = dest.slice(dest.lastIndexOf('/') + 1);
    const entry: CopyEntry = { path: name, source: dest, type: itself.type, mode: itself.mode & 0o7777, size: 0 };
    if (itself.target !== undefined) entry.target = itself.target;
    if (itself.sha256 !== undefined) entry.sha256 = itself.sha256;
    picked.push(entry);
  }
  return digestCopyEntries(picked, options);
}

/**
 * The content digest of what `COPY <sources> <dest>` would take from the context (see
 * `collectCopyEntries` and `digestCopyEntries`). Same files, modes and contents → same digest,
 * whatever the mtimes and owners. A missing source throws NOT_FOUND naming the line.
 */
export async function copySourcesDigest(contextDir: string, sources: readonly string[], matcher: ContextMatcher, options: CopyOptions = {}): Promise<Digest> {
  const entries = await collectCopyEntries(contextDir, sources, matcher, { ...options, hash: true });
  return digestCopyEntries(entries, options);
}

/** Inline files (COPY heredocs) as copy entries: mode 0644, named by the heredoc word. */
export function inlineCopyEntries(files: readonly { name: string; content: string }[]): CopyEntry[] {
  return files.map((f) => ({
    path: f.name,
    source: `<<${f.name}`,
    type: 'file' as const,
    mode: 0o644,
    size: Buffer.byteLength(f.content),
    sha256: createHash('sha256').update(f.content).digest('hex'),
  }));
}
