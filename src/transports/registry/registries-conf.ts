/**
 * containers-registries.conf(5), the registry configuration that podman, skopeo and buildah read:
 * prefix → location rewrites, mirrors, insecure and blocked registries. Version 2 of the format,
 * and version 1 (`[registries.search]`, `[registries.insecure]`, `[registries.block]`) converted
 * to it as containers/image does. The TOML reader below knows the subset such files use
 * (comments, strings, booleans, numbers, arrays, tables, arrays of tables, inline tables); dates
 * are refused.
 *
 * Mirrors are for pulls only: a push goes to the (rewritten) location, never to a mirror.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { SmartError, isErrno } from '../../errors.js';
import { MAX_JSON_DEPTH } from '../../limits.js';
import { formatReference, isValidRepository, isValidTag, parseReference, type Reference } from '../../oci/reference.js';

// ───────────────────────────── TOML subset ─────────────────────────────

export type TomlValue = string | number | boolean | TomlValue[] | TomlTable;
export interface TomlTable {
  [key: string]: TomlValue;
}

export interface TomlDocument {
  root: TomlTable;
  /** The line a key was set on (1-based), or the line of a table's header when `key` is omitted. */
  lineOf(table: TomlTable, key?: string): number | undefined;
}

function isTable(v: TomlValue | undefined): v is TomlTable {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function newTable(): TomlTable {
  return Object.create(null) as TomlTable;
}

function describeChar(c: string | undefined): string {
  if (c === undefined) return 'the end of the file';
  if (c === '\n' || c === '\r') return 'the end of the line';
  return JSON.stringify(c);
}

const BARE_KEY = /[A-Za-z0-9_-]+/y;
const VALUE_TOKEN = /[^\s,\]}#]+/y;
const DEC_INT = /^[+-]?(?:0|[1-9](?:_?[0-9])*)$/;
const HEX_INT = /^0x[0-9A-Fa-f](?:_?[0-9A-Fa-f])*$/;
const OCT_INT = /^0o[0-7](?:_?[0-7])*$/;
const BIN_INT = /^0b[01](?:_?[01])*$/;
const FLOAT = /^[+-]?(?:0|[1-9](?:_?[0-9])*)(?:\.[0-9](?:_?[0-9])*)?(?:[eE][+-]?[0-9](?:_?[0-9])*)?$/;
const DATE_OR_TIME = /^(?:\d{4}-\d{2}-\d{2}|\d{2}:\d{2})/;

class TomlReader {
  private pos = 0;
  /** Arrays and inline tables open at `pos`: bounded, as the parser recurses into them. */
  private nesting = 0;
  private readonly lineStarts: number[] = [0];
  readonly root: TomlTable = newTable();
  private readonly keyLines = new WeakMap<TomlTable, Map<string, number>>();
  private readonly headerLines = new WeakMap<TomlTable, number>();
  /** Tables opened by a `[header]` or `[[header]]`: never opened again. */
  private readonly explicit = new WeakSet<TomlTable>();
  /** Tables made by dotted keys (`a.b = 1`): extended by more dotted keys only. */
  private readonly dotted = new WeakSet<TomlTable>();
  /** Inline tables and arrays written as values: closed once written. */
  private readonly closed = new WeakSet<object>();
  /** Arrays made by `[[header]]`: the only arrays a header may append to. */
  private readonly tableArrays = new WeakSet<TomlValue[]>();

  constructor(
    private readonly text: string,
    private readonly file: string,
  ) {
    for (let i = 0; i < text.length; i++) if (text.charCodeAt(i) === 10) this.lineStarts.push(i + 1);
  }

  document(): TomlDocument {
    this.parse();
    return {
      root: this.root,
      lineOf: (table, key) => (key === undefined ? this.headerLines.get(table) : this.keyLines.get(table)?.get(key)),
    };
  }

  lineAt(pos: number): number {
    let lo = 0;
    let hi = this.lineStarts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.lineStarts[mid]! <= pos) lo = mid;
      else hi = mid - 1;
    }
    return lo + 1;
  }

  private fail(pos: number, message: string): never {
    throw new SmartError('USAGE', `${this.file}:${this.lineAt(pos)}: ${message}`, { input: this.file });
  }

  private peek(offset = 0): string | undefined {
    return this.text[this.pos + offset];
  }

  private atNewline(): boolean {
    const c = this.peek();
    return c === '\n' || (c === '\r' && this.peek(1) === '\n');
  }

  private skipNewline(): void {
    this.pos += this.peek() === '\r' ? 2 : 1;
  }

  private skipWs(): void {
    for (;;) {
      const c = this.peek();
      if (c === ' ' || c === '\t') this.pos++;
      else return;
    }
  }

  private skipComment(): void {
    while (this.pos < this.text.length && !this.atNewline()) this.pos++;
  }

  /** Whitespace, newlines and comments: what may separate the items of an array. */
  private skipBlank(): void {
    for (;;) {
      this.skipWs();
      if (this.peek() === '#') this.skipComment();
      else if (this.atNewline()) this.skipNewline();
      else return;
    }
  }

  private endOfLine(): void {
    this.skipWs();
    if (this.peek() === '#') this.skipComment();
    if (this.pos >= this.text.length) return;
    if (!this.atNewline()) this.fail(this.pos, `expected the end of the line, found ${describeChar(this.peek())}`);
    this.skipNewline();
  }

  private parse(): void {
    if (this.text.charCodeAt(0) === 0xfeff) this.pos = 1;
    let current = this.root;
    while (this.pos < this.text.length) {
      this.skipWs();
      const c = this.peek();
      if (c === undefined) break;
      if (c === '#') {
        this.skipComment();
        continue;
      }
      if (this.atNewline()) {
        this.skipNewline();
        continue;
      }
      if (c === '[') current = this.header();
      else this.keyValue(current);
      this.endOfLine();
    }
  }

  private setLine(table: TomlTable, key: string, pos: number): void {
    let lines = this.keyLines.get(table);
    if (!lines) this.keyLines.set(table, (lines = new Map()));
    lines.set(key, this.lineAt(pos));
  }

  private header(): TomlTable {
    const start = this.pos;
    const isArray = this.peek(1) === '[';
    this.pos += isArray ? 2 : 1;
    this.skipWs();
    const keys = this.key();
    this.skipWs();
    const close = isArray ? ']]' : ']';
    if (!this.text.startsWith(close, this.pos)) this.fail(this.pos, `expected "${close}" to close the table header, found ${describeChar(this.peek())}`);
    this.pos += close.length;
    const name = keys.join('.');

    let table = this.root;
    for (const k of keys.slice(0, -1)) {
      const v = table[k];
      if (v === undefined) {
        const t = newTable();
        table[k] = t;
        this.setLine(table, k, start);
        table = t;
      } else if (Array.isArray(v) && this.tableArrays.has(v)) {
        table = v[v.length - 1] as TomlTable;
      } else if (isTable(v) && !this.closed.has(v)) {
        table = v;
      } else {
        this.fail(start, `cannot open table [${name}]: "${k}" is already set to a value`);
      }
    }
    const last = keys[keys.length - 1]!;
    const existing = table[last];
    const fresh = newTable();
    this.headerLines.set(fresh, this.lineAt(start));
    this.explicit.add(fresh);
    if (isArray) {
      if (existing === undefined) {
        const arr: TomlValue[] = [fresh];
        this.tableArrays.add(arr);
        table[last] = arr;
        this.setLine(table, last, start);
      } else if (Array.isArray(existing) && this.tableArrays.has(existing)) {
        existing.push(fresh);
      } else {
        this.fail(start, `cannot add to [[${name}]]: "${name}" is already defined as something other than an array of tables`);
      }
      return fresh;
    }
    if (existing === undefined) {
      table[last] = fresh;
      this.setLine(table, last, start);
      return fresh;
    }
    if (isTable(existing) && !this.explicit.has(existing) && !this.dotted.has(existing) && !this.closed.has(existing)) {
      // A table made implicitly by an earlier header ([a.b] makes a): it may be opened once.
      this.explicit.add(existing);
      this.headerLines.set(existing, this.lineAt(start));
      return existing;
    }
    if (Array.isArray(existing) && this.tableArrays.has(existing)) this.fail(start, `table [${name}] is already an array of tables ([[${name}]])`);
    if (!isTable(existing)) this.fail(start, `cannot open table [${name}]: "${name}" is already set to a value`);
    return this.fail(start, `table [${name}] is defined twice`);
  }

  private keyValue(table: TomlTable): void {
    const start = this.pos;
    const keys = this.key();
    this.skipWs();
    if (this.peek() !== '=') this.fail(this.pos, `expected "=" after the key "${keys.join('.')}", found ${describeChar(this.peek())}`);
    this.pos++;
    this.skipWs();
    const value = this.value();
    let t = table;
    for (const k of keys.slice(0, -1)) {
      const v = t[k];
      if (v === undefined) {
        const sub = newTable();
        this.dotted.add(sub);
        t[k] = sub;
        this.setLine(t, k, start);
        t = sub;
      } else if (isTable(v) && this.dotted.has(v) && !this.closed.has(v)) {
        t = v;
      } else {
        this.fail(start, `cannot set "${keys.join('.')}": "${k}" is already defined`);
      }
    }
    const last = keys[keys.length - 1]!;
    if (last in t) this.fail(start, `duplicate key "${keys.join('.')}"`);
    t[last] = value;
    this.setLine(t, last, start);
  }

  private key(): string[] {
    const keys = [this.simpleKey()];
    for (;;) {
      const save = this.pos;
      this.skipWs();
      if (this.peek() !== '.') {
        this.pos = save;
        return keys;
      }
      this.pos++;
      this.skipWs();
      keys.push(this.simpleKey());
    }
  }

  private simpleKey(): string {
    const c = this.peek();
    if (c === '"') {
      if (this.text.startsWith('"""', this.pos)) this.fail(this.pos, 'a key cannot be a multi-line string');
      return this.basicString();
    }
    if (c === "'") {
      if (this.text.startsWith("'''", this.pos)) this.fail(this.pos, 'a key cannot be a multi-line string');
      return this.literalString();
    }
    BARE_KEY.lastIndex = this.pos;
    const m = BARE_KEY.exec(this.text);
    if (!m) this.fail(this.pos, `expected a key, found ${describeChar(c)}`);
    this.pos += m[0].length;
    return m[0];
  }

  private value(): TomlValue {
    const c = this.peek();
    if (c === '"') return this.text.startsWith('"""', this.pos) ? this.multiLineBasicString() : this.basicString();
    if (c === "'") return this.text.startsWith("'''", this.pos) ? this.multiLineLiteralString() : this.literalString();
    if (c === '[') return this.array();
    if (c === '{') return this.inlineTable();
    const start = this.pos;
    VALUE_TOKEN.lastIndex = this.pos;
    const m = VALUE_TOKEN.exec(this.text);
    if (!m) return this.fail(start, `expected a value, found ${describeChar(c)}`);
    const token = m[0];
    this.pos += token.length;
    if (token === 'true') return true;
    if (token === 'false') return false;
    const digits = token.replace(/_/g, '');
    let n: number | undefined;
    if (DEC_INT.test(token)) n = Number(digits);
    else if (HEX_INT.test(token)) n = parseInt(digits.slice(2), 16);
    else if (OCT_INT.test(token)) n = parseInt(digits.slice(2), 8);
    else if (BIN_INT.test(token)) n = parseInt(digits.slice(2), 2);
    if (n !== undefined) {
      if (!Number.isSafeInteger(n)) this.fail(start, `integer ${token} is out of range`);
      return n;
    }
    if (FLOAT.test(token)) return Number(digits);
    if (/^[+-]?inf$/.test(token)) return token.startsWith('-') ? -Infinity : Infinity;
    if (/^[+-]?nan$/.test(token)) return NaN;
    if (DATE_OR_TIME.test(token)) this.fail(start, `dates and times are not supported ("${token}")`);
    return this.fail(start, `invalid value "${token}" (strings need quotes)`);
  }

  private array(): TomlValue[] {
    const start = this.pos;
    this.enter(start);
    this.pos++;
    const arr: TomlValue[] = [];
    for (;;) {
      this.skipBlank();
      if (this.pos >= this.text.length) this.fail(start, 'unterminated array (no closing "]")');
      if (this.peek() === ']') break;
      arr.push(this.value());
      this.skipBlank();
      if (this.peek() === ',') {
        this.pos++;
        continue;
      }
      if (this.peek() === ']') break;
      if (this.pos >= this.text.length) this.fail(start, 'unterminated array (no closing "]")');
      this.fail(this.pos, `expected "," or "]" in the array, found ${describeChar(this.peek())}`);
    }
    this.pos++;
    this.nesting--;
    this.closed.add(arr);
    return arr;
  }

  private enter(start: number): void {
    if (++this.nesting > MAX_JSON_DEPTH) this.fail(start, `arrays and inline tables nested deeper than ${MAX_JSON_DEPTH} levels`);
  }

  private inlineTable(): TomlTable {
    const start = this.pos;
    this.enter(start);
    this.pos++;
    const t = newTable();
    // Newlines and a trailing comma are accepted (TOML 1.1).
    for (;;) {
      this.skipBlank();
      if (this.pos >= this.text.length) this.fail(start, 'unterminated inline table (no closing "}")');
      if (this.peek() === '}') break;
      this.keyValue(t);
      this.skipBlank();
      if (this.peek() === ',') {
        this.pos++;
        continue;
      }
      if (this.peek() === '}') break;
      if (this.pos >= this.text.length) this.fail(start, 'unterminated inline table (no closing "}")');
      this.fail(this.pos, `expected "," or "}" in the inline table, found ${describeChar(this.peek())}`);
    }
    this.pos++;
    this.nesting--;
    const close = (x: TomlTable): void => {
      this.closed.add(x);
      for (const v of Object.values(x)) if (isTable(v)) close(v);
    };
    close(t);
    return t;
  }

  private controlChar(code: number): boolean {
    return (code < 0x20 && code !== 9) || code === 0x7f;
  }

  private escape(): string {
    const at = this.pos;
    const c = this.text[this.pos + 1];
    this.pos += 2;
    const simple: Record<string, string> = { b: '\b', t: '\t', n: '\n', f: '\f', r: '\r', e: '\x1b', '"': '"', '\\': '\\' };
    if (c !== undefined && c in simple) return simple[c]!;
    const width = c === 'u' ? 4 : c === 'U' ? 8 : c === 'x' ? 2 : 0;
    if (width === 0) return this.fail(at, `invalid escape "\\${c ?? ''}" in a string`);
    const hex = this.text.slice(this.pos, this.pos + width);
    if (!new RegExp(`^[0-9A-Fa-f]{${width}}$`).test(hex)) this.fail(at, `invalid escape "\\${c}${hex}": expected ${width} hex digits`);
    this.pos += width;
    const code = parseInt(hex, 16);
    if (code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) this.fail(at, `invalid escape "\\${c}${hex}": not a Unicode scalar value`);
    return String.fromCodePoint(code);
  }

  private basicString(): string {
    const start = this.pos;
    this.pos++;
    let out = '';
    for (;;) {
      const c = this.peek();
      if (c === undefined || c === '\n' || c === '\r') return this.fail(start, 'unterminated string (no closing " on its line)');
      if (c === '"') {
        this.pos++;
        return out;
      }
      if (c === '\\') {
        out += this.escape();
        continue;
      }
      if (this.controlChar(c.charCodeAt(0))) this.fail(this.pos, `control character U+${c.charCodeAt(0).toString(16).padStart(4, '0')} in a string`);
      out += c;
      this.pos++;
    }
  }

  private literalString(): string {
    const start = this.pos;
    this.pos++;
    const from = this.pos;
    for (;;) {
      const c = this.peek();
      if (c === undefined || c === '\n' || c === '\r') return this.fail(start, "unterminated string (no closing ' on its line)");
      if (c === "'") {
        this.pos++;
        return this.text.slice(from, this.pos - 1);
      }
      if (this.controlChar(c.charCodeAt(0))) this.fail(this.pos, `control character U+${c.charCodeAt(0).toString(16).padStart(4, '0')} in a string`);
      this.pos++;
    }
  }

  /** At a run of 3-5 closing quotes: the extra ones belong to the content. */
  private closingRun(q: string): string | undefined {
    let n = 0;
    while (this.peek(n) === q) n++;
    if (n < 3) return undefined;
    if (n > 5) this.fail(this.pos, `too many ${q} in a row in a multi-line string`);
    this.pos += n;
    return q.repeat(n - 3);
  }

  private multiLineBasicString(): string {
    const start = this.pos;
    this.pos += 3;
    if (this.atNewline()) this.skipNewline();
    let out = '';
    for (;;) {
      const c = this.peek();
      if (c === undefined) return this.fail(start, 'unterminated multi-line string (no closing """)');
      if (c === '"') {
        const extra = this.closingRun('"');
        if (extra !== undefined) return out + extra;
        out += c;
        this.pos++;
        continue;
      }
      if (c === '\\') {
        // A backslash at the end of a line trims the newline and the whitespace after it.
        let p = this.pos + 1;
        while (this.text[p] === ' ' || this.text[p] === '\t') p++;
        if (this.text[p] === '\n' || (this.text[p] === '\r' && this.text[p + 1] === '\n')) {
          this.pos = p;
          while (this.peek() === ' ' || this.peek() === '\t' || this.atNewline()) {
            if (this.atNewline()) this.skipNewline();
            else this.pos++;
          }
          continue;
        }
        out += this.escape();
        continue;
      }
      if (this.atNewline()) {
        out += '\n';
        this.skipNewline();
        continue;
      }
      if (this.controlChar(c.charCodeAt(0))) this.fail(this.pos, `control character U+${c.charCodeAt(0).toString(16).padStart(4, '0')} in a string`);
      out += c;
      this.pos++;
    }
  }

  private multiLineLiteralString(): string {
    const start = this.pos;
    this.pos += 3;
    if (this.atNewline()) this.skipNewline();
    let out = '';
    for (;;) {
      const c = this.peek();
      if (c === undefined) return this.fail(start, "unterminated multi-line string (no closing ''')");
      if (c === "'") {
        const extra = this.closingRun("'");
        if (extra !== undefined) return out + extra;
      } else if (this.atNewline()) {
        out += '\n';
        this.skipNewline();
        continue;
      } else if (this.controlChar(c.charCodeAt(0))) {
        this.fail(this.pos, `control character U+${c.charCodeAt(0).toString(16).padStart(4, '0')} in a string`);
      }
      out += c;
      this.pos++;
    }
  }
}

/** Reads TOML (the subset described at the top); errors are `USAGE` errors naming `<file>:<line>`. */
export function parseToml(text: string, file: string): TomlDocument {
  return new TomlReader(text, file).document();
}

// ───────────────────────────── the model ─────────────────────────────

export type PullFromMirror = 'all' | 'digest-only' | 'tag-only';
export type ShortNameMode = 'enforcing' | 'permissive' | 'disabled';

export interface RegistryMirror {
  /** `host[:port][/path]`, the mirror of the entry's prefix. */
  location: string;
  insecure: boolean;
  /** `all` when not set. */
  pullFromMirror: PullFromMirror;
}

export interface RegistryEntry {
  /** `host[:port][/path][:tag|@digest]` or `*.domain`; defaults to `location`. */
  prefix: string;
  /** `host[:port][/path]` that serves the prefix; '' only with a wildcard prefix (no rewrite). */
  location: string;
  insecure: boolean;
  blocked: boolean;
  mirrorByDigestOnly: boolean;
  mirrors: RegistryMirror[];
  /** Where the entry was written, for messages. */
  file: string;
  line: number;
}

export interface RegistriesConf {
  /** `undefined`: not set by any file read. Kept, not used: references get Docker's defaults. */
  unqualifiedSearchRegistries?: string[];
  /** Kept, not used (same reason). */
  shortNameMode?: ShortNameMode;
  /** Kept, not used: credentials come from the Docker config. */
  credentialHelpers?: string[];
  /** `[aliases]`: short name → fully qualified name. Kept, not used. */
  aliases: Record<string, string>;
  registries: RegistryEntry[];
  /** The files read, in order. */
  files: string[];
  /** Ignored keys and duplicate prefixes, `<file>:<line>: ...`, for a caller that wants to show them. */
  warnings: string[];
}

export function emptyRegistriesConf(): RegistriesConf {
  return { aliases: {}, registries: [], files: [], warnings: [] };
}

const DOMAIN_COMPONENT = '(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])';
const HOST_RE = new RegExp(`^(?:${DOMAIN_COMPONENT}(?:\\.${DOMAIN_COMPONENT})*|\\[[0-9a-fA-F:.]+\\])(?::[0-9]+)?$`);
const WILDCARD_RE = new RegExp(`^\\*(?:\\.${DOMAIN_COMPONENT})+$`);
const DIGEST_RE = /^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;

/** `host[:port]` as Docker tells a registry host from a first path component. */
function looksLikeHost(s: string): boolean {
  return HOST_RE.test(s) && (s.includes('.') || s.includes(':') || s === 'localhost' || s.startsWith('['));
}

function hostOf(name: string): string {
  const slash = name.indexOf('/');
  return slash < 0 ? name : name.slice(0, slash);
}

const V2_KEYS = new Set(['registry', 'unqualified-search-registries', 'short-name-mode', 'credential-helpers', 'aliases', 'additional-layer-store-auth-helper']);
const REGISTRY_KEYS = new Set(['prefix', 'location', 'insecure', 'blocked', 'mirror-by-digest-only', 'mirror', 'pull-from-mirror']);
const MIRROR_KEYS = new Set(['location', 'insecure', 'pull-from-mirror']);

class ConfBuilder {
  readonly conf: RegistriesConf = emptyRegistriesConf();

  constructor(
    private readonly doc: TomlDocument,
    private readonly file: string,
  ) {
    this.conf.files.push(file);
  }

  private where(table: TomlTable, key?: string): string {
    const line = (key !== undefined ? this.doc.lineOf(table, key) : undefined) ?? this.doc.lineOf(table);
    return line === undefined ? this.file : `${this.file}:${line}`;
  }

  fail(table: TomlTable, key: string | undefined, message: string): never {
    throw new SmartError('USAGE', `${this.where(table, key)}: ${message}`, { input: this.file });
  }

  warnUnknown(table: TomlTable, known: Set<string>, context: string): void {
    for (const k of Object.keys(table)) if (!known.has(k)) this.conf.warnings.push(`${this.where(table, k)}: unknown key "${k}"${context} ignored`);
  }

  string(table: TomlTable, key: string): string | undefined {
    const v = table[key];
    if (v === undefined) return undefined;
    if (typeof v !== 'string') this.fail(table, key, `"${key}" must be a string`);
    return v;
  }

  bool(table: TomlTable, key: string): boolean {
    const v = table[key];
    if (v === undefined) return false;
    if (typeof v !== 'boolean') this.fail(table, key, `"${key}" must be true or false`);
    return v;
  }

  strings(table: TomlTable, key: string): string[] | undefined {
    const v = table[key];
    if (v === undefined) return undefined;
    if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) this.fail(table, key, `"${key}" must be an array of strings`);
    return v as string[];
  }

  tables(table: TomlTable, key: string, header: string): TomlTable[] {
    const v = table[key];
    if (v === undefined) return [];
    if (!Array.isArray(v) || v.some((x) => !isTable(x))) this.fail(table, key, `"${key}" must be an array of tables (${header})`);
    return v as TomlTable[];
  }

  /** containers/image's parseLocation: trailing slashes dropped, no URL scheme. */
  private trimLocation(table: TomlTable, key: string, value: string): string {
    const trimmed = value.replace(/\/+$/, '');
    if (/^[a-zA-Z][a-zA-Z0-9+.-]*:\/\//.test(trimmed)) this.fail(table, key, `${key} "${value}": URL schemes are not supported (write host[:port][/path])`);
    return trimmed;
  }

  /** A `location`: `host[:port][/path]`, the host as Docker recognises one. */
  location(table: TomlTable, key: string, value: string): string {
    const loc = this.trimLocation(table, key, value);
    const host = hostOf(loc);
    const repo = loc.slice(host.length + 1);
    if (!looksLikeHost(host)) this.fail(table, key, `${key} "${value}" must start with a registry host (with a dot or a port, or localhost)`);
    if (loc.length > host.length && !isValidRepository(repo)) this.fail(table, key, `${key} "${value}": invalid repository path "${repo}"`);
    return loc;
  }

  /** A `prefix`: a location, optionally ending in `:tag` or `@digest`, or `*.domain`. */
  prefix(table: TomlTable, value: string): string {
    const p = this.trimLocation(table, 'prefix', value);
    if (p.startsWith('*')) {
      if (!WILDCARD_RE.test(p)) this.fail(table, 'prefix', `prefix "${value}": a wildcard prefix must be of the form *.example.com (no port, no path)`);
      return p;
    }
    let name = p;
    const at = name.indexOf('@');
    if (at >= 0) {
      if (!DIGEST_RE.test(name.slice(at + 1))) this.fail(table, 'prefix', `prefix "${value}": invalid digest "${name.slice(at + 1)}"`);
      name = name.slice(0, at);
    }
    const colon = name.lastIndexOf(':');
    const slash = name.indexOf('/');
    if (slash >= 0 && colon > name.lastIndexOf('/')) {
      if (!isValidTag(name.slice(colon + 1))) this.fail(table, 'prefix', `prefix "${value}": invalid tag "${name.slice(colon + 1)}"`);
      name = name.slice(0, colon);
    }
    if (name !== p && slash < 0) this.fail(table, 'prefix', `prefix "${value}": a tag or digest needs a repository before it`);
    this.location(table, 'prefix', name);
    return p;
  }

  build(): RegistriesConf {
    const root = this.doc.root;
    const v1 = root['registries'];
    const v2Key = Object.keys(root).find((k) => V2_KEYS.has(k));
    if (v1 !== undefined) {
      if (v2Key !== undefined) {
        this.fail(root, v2Key, `mixing the v1 format ([registries.search], [registries.insecure], [registries.block], line ${this.doc.lineOf(root, 'registries') ?? '?'}) and the v2 format ("${v2Key}") is not supported`);
      }
      this.buildV1(root, v1);
    } else {
      this.buildV2(root);
    }
    this.warnUnknown(root, new Set([...V2_KEYS, 'registries']), '');
    this.checkConflicts();
    return this.conf;
  }

  private buildV1(root: TomlTable, v1: TomlValue): void {
    if (!isTable(v1)) this.fail(root, 'registries', '"registries" must be a table ([registries.search], [registries.insecure], [registries.block])');
    const list = (name: string): string[] | undefined => {
      const t = v1[name];
      if (t === undefined) return undefined;
      if (!isTable(t)) this.fail(v1, name, `"registries.${name}" must be a table ([registries.${name}])`);
      this.warnUnknown(t, new Set(['registries']), ` in [registries.${name}]`);
      return this.strings(t, 'registries');
    };
    this.warnUnknown(v1, new Set(['search', 'insecure', 'block']), ' in [registries]');
    const search = list('search');
    const insecure = list('insecure') ?? [];
    const block = list('block') ?? [];
    if (search !== undefined) this.conf.unqualifiedSearchRegistries = search.map((s) => this.searchRegistry(v1['search'] as TomlTable, 'registries', s));
    // As containers/image converts: one [[registry]] per location, blocked first, then insecure.
    const byLocation = new Map<string, RegistryEntry>();
    const entry = (table: TomlTable, value: string): RegistryEntry => {
      const location = this.location(table, 'registries', value);
      let e = byLocation.get(location);
      if (!e) {
        e = { prefix: location, location, insecure: false, blocked: false, mirrorByDigestOnly: false, mirrors: [], file: this.file, line: this.doc.lineOf(table, 'registries') ?? 0 };
        byLocation.set(location, e);
      }
      return e;
    };
    for (const b of block) entry(v1['block'] as TomlTable, b).blocked = true;
    for (const i of insecure) entry(v1['insecure'] as TomlTable, i).insecure = true;
    this.conf.registries = [...byLocation.values()];
  }

  private searchRegistry(table: TomlTable, key: string, value: string): string {
    const s = this.trimLocation(table, key, value);
    if (!HOST_RE.test(s)) this.fail(table, key, `invalid unqualified-search-registries entry "${value}" (host[:port] expected)`);
    return s;
  }

  private buildV2(root: TomlTable): void {
    const search = this.strings(root, 'unqualified-search-registries');
    if (search !== undefined) this.conf.unqualifiedSearchRegistries = search.map((s) => this.searchRegistry(root, 'unqualified-search-registries', s));
    const mode = this.string(root, 'short-name-mode');
    if (mode !== undefined) {
      if (mode !== 'enforcing' && mode !== 'permissive' && mode !== 'disabled') this.fail(root, 'short-name-mode', `invalid short-name-mode "${mode}" (enforcing, permissive or disabled)`);
      this.conf.shortNameMode = mode;
    }
    const helpers = this.strings(root, 'credential-helpers');
    if (helpers !== undefined) this.conf.credentialHelpers = helpers;
    this.string(root, 'additional-layer-store-auth-helper');
    const aliases = root['aliases'];
    if (aliases !== undefined) {
      if (!isTable(aliases)) this.fail(root, 'aliases', '"aliases" must be a table ([aliases])');
      for (const k of Object.keys(aliases)) this.conf.aliases[k] = this.string(aliases, k)!;
    }
    const seen = new Map<string, RegistryEntry>();
    for (const t of this.tables(root, 'registry', '[[registry]]')) {
      const e = this.registry(t);
      const first = seen.get(e.prefix);
      if (first) {
        // containers/image keeps the first and ignores the others; say so.
        this.conf.warnings.push(`${this.file}:${e.line}: [[registry]] with prefix "${e.prefix}" already defined on line ${first.line}; this one is ignored`);
        continue;
      }
      seen.set(e.prefix, e);
      this.conf.registries.push(e);
    }
  }

  private registry(t: TomlTable): RegistryEntry {
    this.warnUnknown(t, REGISTRY_KEYS, ' in [[registry]]');
    const rawLocation = this.string(t, 'location');
    const rawPrefix = this.string(t, 'prefix');
    const location = rawLocation === undefined || rawLocation === '' ? '' : this.location(t, 'location', rawLocation);
    let prefix: string;
    if (rawPrefix === undefined || rawPrefix === '') {
      if (location === '') this.fail(t, undefined, '[[registry]] needs a "location" or a "prefix"');
      prefix = location;
    } else {
      prefix = this.prefix(t, rawPrefix);
      if (location === '' && !prefix.startsWith('*.')) this.fail(t, 'prefix', `[[registry]] with prefix "${prefix}" needs a "location" (only a *.example.com prefix may go without)`);
    }
    if (t['pull-from-mirror'] !== undefined) this.fail(t, 'pull-from-mirror', `"pull-from-mirror" belongs in a [[registry.mirror]], not in the [[registry]] with prefix "${prefix}"`);
    const mirrorByDigestOnly = this.bool(t, 'mirror-by-digest-only');
    const mirrors = this.tables(t, 'mirror', '[[registry.mirror]]').map((m) => this.mirror(m, prefix, mirrorByDigestOnly));
    return {
      prefix,
      location,
      insecure: this.bool(t, 'insecure'),
      blocked: this.bool(t, 'blocked'),
      mirrorByDigestOnly,
      mirrors,
      file: this.file,
      line: this.doc.lineOf(t) ?? this.doc.lineOf(this.doc.root, 'registry') ?? 0,
    };
  }

  private mirror(m: TomlTable, prefix: string, byDigestOnly: boolean): RegistryMirror {
    this.warnUnknown(m, MIRROR_KEYS, ' in [[registry.mirror]]');
    const raw = this.string(m, 'location');
    if (raw === undefined || raw.replace(/\/+$/, '') === '') this.fail(m, 'location', `[[registry.mirror]] of "${prefix}" needs a "location"`);
    const location = this.location(m, 'location', raw);
    const pull = this.string(m, 'pull-from-mirror');
    if (pull !== undefined && pull !== '') {
      if (byDigestOnly) this.fail(m, 'pull-from-mirror', `"pull-from-mirror" of mirror "${location}" cannot be set when its [[registry]] "${prefix}" has mirror-by-digest-only = true`);
      if (pull !== 'all' && pull !== 'digest-only' && pull !== 'tag-only') this.fail(m, 'pull-from-mirror', `invalid pull-from-mirror "${pull}" (all, digest-only or tag-only)`);
    }
    return { location, insecure: this.bool(m, 'insecure'), pullFromMirror: (pull || 'all') as PullFromMirror };
  }

  /** Entries for the same location must agree on insecure and blocked (as containers/image checks). */
  private checkConflicts(): void {
    const byLocation = new Map<string, RegistryEntry>();
    for (const e of this.conf.registries) {
      const key = e.location || e.prefix;
      const other = byLocation.get(key);
      if (!other) {
        byLocation.set(key, e);
        continue;
      }
      for (const field of ['insecure', 'blocked'] as const) {
        if (e[field] !== other[field]) {
          throw new SmartError('USAGE', `${this.file}:${e.line}: registry "${key}" is defined multiple times with conflicting "${field}" settings (also on line ${other.line})`, {
            input: this.file,
          });
        }
      }
    }
  }
}

/** Parses one registries.conf file (v2, or v1 converted to v2). Errors: `USAGE`, `<file>:<line>: ...`. */
export function parseRegistriesConf(text: string, file: string): RegistriesConf {
  return new ConfBuilder(parseToml(text, file), file).build();
}

/**
 * Folds a drop-in into a configuration, as containers/image does: `[[registry]]` entries replace
 * those of the same prefix, scalar settings and lists replace earlier ones when set, aliases merge.
 */
export function mergeRegistriesConf(base: RegistriesConf, update: RegistriesConf): RegistriesConf {
  const byPrefix = new Map(base.registries.map((r) => [r.prefix, r] as const));
  for (const r of update.registries) byPrefix.set(r.prefix, r);
  const unqualifiedSearchRegistries = update.unqualifiedSearchRegistries ?? base.unqualifiedSearchRegistries;
  const shortNameMode = update.shortNameMode ?? base.shortNameMode;
  const credentialHelpers = update.credentialHelpers ?? base.credentialHelpers;
  return {
    ...(unqualifiedSearchRegistries !== undefined ? { unqualifiedSearchRegistries } : {}),
    ...(shortNameMode !== undefined ? { shortNameMode } : {}),
    ...(credentialHelpers !== undefined ? { credentialHelpers } : {}),
    aliases: { ...base.aliases, ...update.aliases },
    registries: [...byPrefix.values()],
    files: [...base.files, ...update.files],
    warnings: [...base.warnings, ...update.warnings],
  };
}

// ───────────────────────────── loading ─────────────────────────────

export const SYSTEM_REGISTRIES_CONF = '/etc/containers/registries.conf';

export interface LoadRegistriesConfOptions {
  /** A file to read instead of the usual ones (like CONTAINERS_REGISTRIES_CONF); it must exist. */
  path?: string;
  /** Where CONTAINERS_REGISTRIES_CONF (or the older REGISTRIES_CONFIG_PATH) and HOME are read; default process.env. */
  env?: NodeJS.ProcessEnv;
  /** The system file; default /etc/containers/registries.conf (tests point it elsewhere). */
  systemPath?: string;
}

async function readIfExists(file: string, required: boolean, why: string): Promise<string | undefined> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (e) {
    if (isErrno(e, 'ENOENT') && !required) return undefined;
    if (isErrno(e, 'ENOENT')) throw new SmartError('USAGE', `${file}: no such file (named by ${why})`, { input: file, cause: e });
    throw new SmartError('USAGE', `${file}: cannot read the registries configuration: ${(e as Error).message}`, { input: file, cause: e });
  }
}

async function dropIns(dir: string): Promise<string[]> {
  try {
    const entries = await fs.readdir(dir, { withFileTypes: true });
    return entries
      .filter((e) => !e.isDirectory() && e.name.endsWith('.conf'))
      .map((e) => e.name)
      .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))
      .map((n) => path.join(dir, n));
  } catch (e) {
    if (isErrno(e, 'ENOENT') || isErrno(e, 'ENOTDIR')) return [];
    throw new SmartError('USAGE', `${dir}: cannot read the registries drop-in directory: ${(e as Error).message}`, { input: dir, cause: e });
  }
}

async function exists(file: string): Promise<boolean> {
  try {
    await fs.stat(file);
    return true;
  } catch {
    return false;
  }
}

/**
 * The configuration containers tools would use:
 * - `options.path`, else `$CONTAINERS_REGISTRIES_CONF` (else `$REGISTRIES_CONFIG_PATH`): that
 *   file alone (it must exist), then the `registries.conf.d/*.conf` next to it;
 * - else `$HOME/.config/containers/registries.conf` if it exists, then
 *   `$HOME/.config/containers/registries.conf.d/*.conf`;
 * - else `/etc/containers/registries.conf` (missing: empty), then
 *   `/etc/containers/registries.conf.d/*.conf`, then `$HOME/.config/containers/registries.conf.d/*.conf`.
 * Drop-ins are read in name order, each overriding the previous by prefix; they must be v2.
 */
export async function loadRegistriesConf(options: LoadRegistriesConfOptions = {}): Promise<RegistriesConf> {
  const env = options.env ?? process.env;
  const named = options.path
    ? { file: options.path, why: 'the caller' }
    : env.CONTAINERS_REGISTRIES_CONF
      ? { file: env.CONTAINERS_REGISTRIES_CONF, why: 'CONTAINERS_REGISTRIES_CONF' }
      : env.REGISTRIES_CONFIG_PATH
        ? { file: env.REGISTRIES_CONFIG_PATH, why: 'REGISTRIES_CONFIG_PATH' }
        : undefined;
  const home = env.HOME || os.homedir();
  const userFile = path.join(home, '.config', 'containers', 'registries.conf');
  const userDir = path.join(home, '.config', 'containers', 'registries.conf.d');
  let main: string;
  let dirs: string[];
  let required = false;
  let why = '';
  if (named) {
    main = path.resolve(named.file);
    dirs = [path.join(path.dirname(main), 'registries.conf.d')];
    required = true;
    why = named.why;
  } else if (await exists(userFile)) {
    main = userFile;
    dirs = [userDir];
  } else {
    main = options.systemPath ?? SYSTEM_REGISTRIES_CONF;
    dirs = [path.join(path.dirname(main), 'registries.conf.d'), userDir];
  }
  const text = await readIfExists(main, required, why);
  let conf = text === undefined ? emptyRegistriesConf() : parseRegistriesConf(text, main);
  for (const dir of [...new Set(dirs)]) {
    for (const file of await dropIns(dir)) {
      const t = await readIfExists(file, false, '');
      if (t === undefined) continue; // removed since the listing
      const doc = parseToml(t, file);
      if (doc.root['registries'] !== undefined) {
        throw new SmartError('USAGE', `${file}:${doc.lineOf(doc.root, 'registries') ?? 1}: a drop-in file must use the v2 format ([[registry]]), not [registries.*]`, { input: file });
      }
      conf = mergeRegistriesConf(conf, new ConfBuilder(doc, file).build());
    }
  }
  return conf;
}

// ───────────────────────────── sources and destinations ─────────────────────────────

export interface PullSource {
  /** `host[:port]` (`docker.io` for Docker Hub, as in references). */
  registry: string;
  repository: string;
  /** Plain HTTP and unverified TLS allowed for this endpoint (the caller may add --insecure-registry). */
  insecure: boolean;
  /** A mirror (tag and digest of the reference unchanged); false for the upstream location. */
  mirror: boolean;
}

export interface PushDestination {
  registry: string;
  repository: string;
  insecure: boolean;
}

export interface ExtraMirrors {
  /** Docker daemon `--registry-mirror` values (`HOST[:PORT]` or `https://HOST[:PORT]`), for docker.io only. */
  dockerHub?: string[];
}

/** `registry/repository[:tag][@digest]`, what prefixes are matched against. */
function refString(ref: Reference): string {
  return `${ref.registry}/${ref.repository}${ref.tag !== undefined ? `:${ref.tag}` : ''}${ref.digest !== undefined ? `@${ref.digest}` : ''}`;
}

/**
 * How much of `s` (`host[:port]`, a name, or a whole reference) the prefix matches, or -1. The
 * prefix must end where a component does: before `/`, `@`, or the `:` of a tag (a `:` after a bare
 * host is a port: `example.com` does not match `example.com:5000/x`, unlike containers/image).
 * `*.example.com` matches any host (any port) under example.com and consumes the `host[:port]`.
 */
function matchPrefix(s: string, prefix: string): number {
  if (prefix.startsWith('*.')) {
    const host = hostOf(s);
    const bare = host.replace(/:\d+$/, '');
    const domain = prefix.slice(1).toLowerCase();
    return bare.length > domain.length && bare.toLowerCase().endsWith(domain) ? host.length : -1;
  }
  if (!s.startsWith(prefix)) return -1;
  if (s.length === prefix.length) return prefix.length;
  const c = s[prefix.length];
  if (c === '/' || c === '@' || (c === ':' && prefix.includes('/'))) return prefix.length;
  return -1;
}

/** The `[[registry]]` for `s`: the longest prefix that matches; on a tie an exact prefix beats a wildcard. */
function findEntry(conf: RegistriesConf, s: string): { entry: RegistryEntry; length: number } | undefined {
  let best: { entry: RegistryEntry; length: number } | undefined;
  for (const entry of conf.registries) {
    const length = matchPrefix(s, entry.prefix);
    if (length < 0) continue;
    const better =
      !best || entry.prefix.length > best.entry.prefix.length || (entry.prefix.length === best.entry.prefix.length && best.entry.prefix.startsWith('*.') && !entry.prefix.startsWith('*.'));
    if (better) best = { entry, length };
  }
  return best;
}

/** The `[[registry]]` that applies to an image reference, if any (longest prefix). */
export function findRegistry(conf: RegistriesConf, ref: Reference): RegistryEntry | undefined {
  return findEntry(conf, refString(ref))?.entry;
}

function blockedError(entry: RegistryEntry, ref: Reference): SmartError {
  const label = entry.prefix;
  return new SmartError('USAGE', `registry ${label} is blocked by ${entry.file}`, {
    input: formatReference(ref),
    hint: `remove "blocked = true" from the [[registry]] with prefix "${label}" (line ${entry.line}) if this image may be used`,
  });
}

/** The settings of a physical host: the [[registry]] whose prefix is that host (or a wildcard over it). */
function hostEntry(conf: RegistriesConf, host: string): RegistryEntry | undefined {
  return findEntry(conf, host)?.entry;
}

/** `location` + what follows the matched prefix in the name; Docker's defaults applied again. */
function rewrite(location: string, ref: Reference, matched: number, entry: RegistryEntry): { registry: string; repository: string } {
  if (location === '') return { registry: ref.registry, repository: ref.repository };
  const name = `${ref.registry}/${ref.repository}`;
  const target = location + (matched < name.length ? name.slice(matched) : '');
  try {
    const r = parseReference(target);
    return { registry: r.registry, repository: r.repository };
  } catch (e) {
    throw new SmartError(
      'USAGE',
      `${entry.file}:${entry.line}: [[registry]] with prefix "${entry.prefix}" rewrites ${formatReference(ref)} to "${target}", which is not a valid image name (${(e as Error).message})`,
      { input: formatReference(ref), cause: e },
    );
  }
}

/** A Docker daemon `registry-mirrors` value: `[http[s]://]host[:port][/]`, nothing more. */
export function parseDockerMirror(value: string): { host: string; insecure: boolean } {
  const bad = (why: string) =>
    new SmartError('USAGE', `invalid registry mirror "${value}": ${why}`, { input: value, hint: 'a mirror is HOST[:PORT] or https://HOST[:PORT] (Docker Hub mirrors serve the same paths)' });
  let v = value.trim();
  let insecure = false;
  const scheme = /^([a-zA-Z][a-zA-Z0-9+.-]*):\/\//.exec(v);
  if (scheme) {
    const s = scheme[1]!.toLowerCase();
    if (s !== 'http' && s !== 'https') throw bad(`unsupported scheme "${s}"`);
    insecure = s === 'http';
    let url: URL;
    try {
      url = new URL(v);
    } catch {
      throw bad('not a URL');
    }
    if (url.username || url.password) throw bad('credentials do not belong in a mirror URL');
    if ((url.pathname !== '/' && url.pathname !== '') || url.search || url.hash) throw bad('a path, query or fragment is not supported');
    v = url.host;
  } else {
    v = v.replace(/\/+$/, '');
  }
  if (!HOST_RE.test(v)) throw bad('not a host[:port]');
  return { host: v, insecure };
}

/**
 * Where to pull `ref` from, in the order to try: `--registry-mirror` mirrors (docker.io references
 * only, same repository path), then the mirrors of the matching `[[registry]]` (a pull by tag skips
 * digest-only mirrors, a pull by digest skips tag-only ones), then its location (prefix
 * rewritten), or the reference's own registry when no entry matches. Endpoints on a host that is
 * itself blocked are left out; a blocked match throws `USAGE`.
 */
export function pullSources(conf: RegistriesConf, ref: Reference, extraMirrors: ExtraMirrors = {}): PullSource[] {
  if (!ref.registry) throw new SmartError('INTERNAL', `pullSources: ${formatReference(ref)} names no registry`);
  const found = findEntry(conf, refString(ref));
  if (found?.entry.blocked) throw blockedError(found.entry, ref);
  const byDigest = ref.digest !== undefined;
  const out: PullSource[] = [];
  let blockedHost: RegistryEntry | undefined;
  const add = (registry: string, repository: string, insecure: boolean, mirror: boolean) => {
    const host = hostEntry(conf, registry);
    if (host?.blocked) {
      blockedHost ??= host;
      return;
    }
    if (out.some((s) => s.registry === registry && s.repository === repository)) return;
    out.push({ registry, repository, insecure: insecure || (host?.insecure ?? false), mirror });
  };
  if (ref.registry === 'docker.io') {
    for (const m of extraMirrors.dockerHub ?? []) {
      const { host, insecure } = parseDockerMirror(m);
      add(host, ref.repository, insecure, true);
    }
  }
  if (found) {
    const { entry, length } = found;
    for (const m of entry.mirrors) {
      const use = entry.mirrorByDigestOnly ? byDigest : m.pullFromMirror === 'digest-only' ? byDigest : m.pullFromMirror === 'tag-only' ? !byDigest : true;
      if (!use) continue;
      const r = rewrite(m.location, ref, length, entry);
      add(r.registry, r.repository, m.insecure, true);
    }
    const r = rewrite(entry.location, ref, length, entry);
    add(r.registry, r.repository, entry.insecure, false);
  } else {
    add(ref.registry, ref.repository, false, false);
  }
  if (out.length === 0) throw blockedError(blockedHost!, ref);
  return out;
}

/** Where to push `ref`: the location rewrite and the blocked check only; never a mirror. */
export function pushDestination(conf: RegistriesConf, ref: Reference): PushDestination {
  if (!ref.registry) throw new SmartError('INTERNAL', `pushDestination: ${formatReference(ref)} names no registry`);
  const found = findEntry(conf, refString(ref));
  if (found?.entry.blocked) throw blockedError(found.entry, ref);
  const r = found ? rewrite(found.entry.location, ref, found.length, found.entry) : { registry: ref.registry, repository: ref.repository };
  const host = hostEntry(conf, r.registry);
  if (host?.blocked) throw blockedError(host, ref);
  return { ...r, insecure: (found?.entry.insecure ?? false) || (host?.insecure ?? false) };
}
