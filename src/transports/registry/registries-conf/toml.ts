/**
 * TOML for registries.conf: smol-toml reads the document (TOML 1.0 and the 1.1 additions it
 * knows); this module adds the line every key and table was written on, which messages about
 * the configuration name (`<file>:<line>: …`), and refuses dates and times, which no setting
 * takes. Syntax errors name the file and the line smol-toml gives, and the text at fault.
 */
import { TomlDate, TomlError, parse } from 'smol-toml';
import { SmartError, quoted } from '../../../errors.js';
import { MAX_JSON_DEPTH } from '../../../limits.js';
import type { TomlDocument, TomlTable, TomlValue } from './toml-document.js';

/** Reads `text` as TOML; errors are `USAGE` errors naming `<file>:<line>`. */
export function parseToml(text: string, file: string): TomlDocument {
  let root: TomlTable;
  try {
    // Arrays and inline tables nest as deep as JSON may (real files nest two or three).
    root = parse(text, { maxDepth: MAX_JSON_DEPTH }) as TomlTable;
  } catch (e) {
    if (!(e instanceof TomlError)) throw new SmartError('USAGE', `${file}: not valid TOML (${(e as Error).message})`, { input: file, cause: e });
    throw new SmartError('USAGE', `${file}:${e.line}: ${describe(e, text)}`, { input: file, cause: e });
  }
  try {
    return new LineFinder(text, root, file).document();
  } catch (e) {
    if (e instanceof SmartError) throw e;
    // The walk met text it did not expect: the values stand, messages name the file alone.
    if (containsDate(root)) throw new SmartError('USAGE', `${file}: dates and times are not supported`, { input: file });
    return { root, lineOf: () => undefined };
  }
}

function containsDate(v: TomlValue | TomlDate): boolean {
  if (v instanceof TomlDate) return true;
  return typeof v === 'object' && Object.values(v).some(containsDate);
}

const TOKEN = /[^\s,[\]{}#="']+/y;

/** smol-toml's message without its prefix and code excerpt, and the text it points at. */
function describe(e: TomlError, text: string): string {
  const message = e.message.split('\n')[0]!.replace(/^Invalid TOML document:\s*/, '');
  let start = 0;
  for (let line = 1; line < e.line; line++) start = text.indexOf('\n', start) + 1;
  const at = start + e.column - 1;
  // An escape is pointed at past its backslash.
  TOKEN.lastIndex = text[at - 1] === '\\' ? at - 1 : at;
  const token = TOKEN.exec(text)?.[0];
  return token ? `${message} (at ${quoted(token, 40)})` : message;
}

const BARE_KEY = /[A-Za-z0-9_-]+/y;
/** A number, a boolean, or a date or time (whose date and time may be separated by one space). */
const SCALAR = /[^\s,\]}#]+(?: (?=\d{2}:)[^\s,\]}#]+)?/y;

/**
 * Walks the text of a document smol-toml has read, beside the values it made, and notes the line
 * of each key and table. The text is known to be valid TOML: the walk only has to find where
 * things start (strings, scalars, arrays, inline tables and key paths), never to judge them.
 */
class LineFinder {
  private pos = 0;
  private readonly lineStarts: number[] = [0];
  private readonly keyLines = new WeakMap<TomlTable, Map<string, number>>();
  private readonly tableLines = new WeakMap<TomlTable, number>();
  /** Arrays of tables: how many of their `[[headers]]` have been passed, so a later header names the right element. */
  private readonly headersSeen = new WeakMap<TomlValue[], number>();

  constructor(
    private readonly text: string,
    private readonly root: TomlTable,
    private readonly file: string,
  ) {
    for (let i = 0; i < text.length; i++) if (text.charCodeAt(i) === 10) this.lineStarts.push(i + 1);
  }

  document(): TomlDocument {
    if (this.text.charCodeAt(0) === 0xfeff) this.pos = 1;
    let current = this.root;
    for (;;) {
      this.skipBlank();
      if (this.pos >= this.text.length) break;
      if (this.text[this.pos] === '[') current = this.header();
      else this.keyValue(current);
    }
    return {
      root: this.root,
      lineOf: (table, key) => (key === undefined ? this.tableLines.get(table) : this.keyLines.get(table)?.get(key)),
    };
  }

  private line(pos = this.pos): number {
    let lo = 0;
    let hi = this.lineStarts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.lineStarts[mid]! <= pos) lo = mid;
      else hi = mid - 1;
    }
    return lo + 1;
  }

  private noteKey(table: TomlTable, key: string, line: number): void {
    let lines = this.keyLines.get(table);
    if (!lines) this.keyLines.set(table, (lines = new Map()));
    if (!lines.has(key)) lines.set(key, line);
  }

  /** Spaces, tabs, newlines and comments. */
  private skipBlank(): void {
    for (;;) {
      const c = this.text[this.pos];
      if (c === ' ' || c === '\t' || c === '\r' || c === '\n') this.pos++;
      else if (c === '#') {
        const end = this.text.indexOf('\n', this.pos);
        this.pos = end < 0 ? this.text.length : end;
      } else return;
    }
  }

  /** A value within a table reached through `key` (an array of tables: its element of the header being read). */
  private descend(table: TomlTable, key: string): TomlTable {
    const v = table[key];
    if (Array.isArray(v)) return v[Math.max(0, (this.headersSeen.get(v) ?? v.length) - 1)] as TomlTable;
    return v as TomlTable;
  }

  private header(): TomlTable {
    const line = this.line();
    const isArray = this.text[this.pos + 1] === '[';
    this.pos += isArray ? 2 : 1;
    const keys = this.keyPath();
    this.skipBlank();
    this.pos += isArray ? 2 : 1;
    let table = this.root;
    for (const k of keys.slice(0, -1)) {
      this.noteKey(table, k, line);
      table = this.descend(table, k);
    }
    const last = keys[keys.length - 1]!;
    this.noteKey(table, last, line);
    let current: TomlTable;
    if (isArray) {
      const array = table[last] as TomlValue[];
      const seen = (this.headersSeen.get(array) ?? 0) + 1;
      this.headersSeen.set(array, seen);
      current = array[seen - 1] as TomlTable;
    } else {
      current = table[last] as TomlTable;
    }
    this.tableLines.set(current, line);
    return current;
  }

  /** `a.b = value` in `table`: the line of each key, then the value's own. */
  private keyValue(table: TomlTable): void {
    const line = this.line();
    const keys = this.keyPath();
    this.skipBlank();
    this.pos++; // '='
    this.skipBlank();
    let t = table;
    for (const k of keys.slice(0, -1)) {
      this.noteKey(t, k, line);
      t = t[k] as TomlTable;
    }
    const last = keys[keys.length - 1]!;
    this.noteKey(t, last, line);
    this.value(t[last]!);
  }

  private keyPath(): string[] {
    const keys: string[] = [];
    for (;;) {
      this.skipBlank();
      keys.push(this.key());
      this.skipBlank();
      if (this.text[this.pos] !== '.') return keys;
      this.pos++;
    }
  }

  private key(): string {
    const c = this.text[this.pos];
    if (c === '"' || c === "'") {
      const start = this.pos;
      this.string();
      const raw = this.text.slice(start, this.pos);
      // A quoted key means what the same string means as a value: smol-toml decodes its escapes.
      return c === "'" ? raw.slice(1, -1) : (parse(`k = ${raw}`) as { k: string }).k;
    }
    BARE_KEY.lastIndex = this.pos;
    const m = BARE_KEY.exec(this.text)?.[0] ?? '';
    this.pos += Math.max(1, m.length);
    return m;
  }

  /** Passes over a string of any of the four kinds. */
  private string(): void {
    const q = this.text[this.pos]!;
    const multi = this.text.startsWith(q.repeat(3), this.pos);
    this.pos += multi ? 3 : 1;
    while (this.pos < this.text.length) {
      const c = this.text[this.pos]!;
      if (c === '\\' && q === '"') this.pos += 2;
      else if (c !== q) this.pos++;
      else if (!multi) {
        this.pos++;
        return;
      } else if (this.text.startsWith(q.repeat(3), this.pos)) {
        // Up to two quotes of the content may stand just before the closing three.
        let n = 3;
        while (n < 5 && this.text[this.pos + n] === q) n++;
        this.pos += n;
        return;
      } else this.pos++;
    }
  }

  private value(v: TomlValue | TomlDate): void {
    const c = this.text[this.pos];
    if (c === '"' || c === "'") return this.string();
    if (c === '[') return this.array(v as TomlValue[]);
    if (c === '{') return this.inlineTable(v as TomlTable);
    SCALAR.lastIndex = this.pos;
    const token = SCALAR.exec(this.text)?.[0] ?? '';
    if (v instanceof TomlDate) {
      throw new SmartError('USAGE', `${this.file}:${this.line()}: dates and times are not supported (${quoted(token, 40)})`, { input: this.file });
    }
    this.pos += Math.max(1, token.length);
  }

  private array(values: TomlValue[]): void {
    this.pos++;
    for (const v of values) {
      this.skipBlank();
      this.value(v);
      this.skipBlank();
      if (this.text[this.pos] === ',') this.pos++;
    }
    this.skipBlank();
    this.pos++; // ']'
  }

  private inlineTable(table: TomlTable): void {
    this.tableLines.set(table, this.line());
    this.pos++;
    for (;;) {
      this.skipBlank();
      if (this.text[this.pos] === '}' || this.pos >= this.text.length) break;
      this.keyValue(table);
      this.skipBlank();
      if (this.text[this.pos] === ',') this.pos++;
    }
    this.pos++;
  }
}
