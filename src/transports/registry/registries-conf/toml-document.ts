/**
 * A TOML document as the registries.conf readers see it, and a reader for the plain files most
 * machines carry, without the TOML parser. Every command that names a registry reads
 * registries.conf, and Debian's containers-common ships a main file of comments and a
 * `shortnames.conf` drop-in of `"name" = "image"` lines under `[aliases]`: loading smol-toml and
 * parsing those two took 15 ms of a command's start (import 8-9 ms, first parse 6 ms, measured).
 * A file with anything else in it goes to the full parser (toml.ts) as before.
 */

export type TomlValue = string | number | boolean | TomlValue[] | TomlTable;
export interface TomlTable {
  [key: string]: TomlValue;
}

export interface TomlDocument {
  root: TomlTable;
  /** The line a key was set on (1-based), or the line of a table's header (or of the `{` of an inline table) when `key` is omitted. */
  lineOf(table: TomlTable, key?: string): number | undefined;
}

export function isTable(v: TomlValue | undefined): v is TomlTable {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

// TOML's pieces, no wider than the specification: whitespace is space and tab; a basic string
// holds no quote, no backslash (escapes go to the full parser) and no control character but tab;
// a comment holds no control character but tab.
const WS = '[ \\t]*';
const BASIC = '"([^"\\\\\\x00-\\x08\\x0a-\\x1f\\x7f]*)"';
const COMMENT = '(?:#[^\\x00-\\x08\\x0a-\\x1f\\x7f]*)?';
const BLANK_LINE = new RegExp(`^${WS}${COMMENT}$`);
const TABLE_HEADER = new RegExp(`^${WS}\\[${WS}(?:([A-Za-z0-9_-]+)|${BASIC})${WS}\\]${WS}${COMMENT}$`);
const KEY_VALUE = new RegExp(`^${WS}(?:([A-Za-z0-9_-]+)|${BASIC})${WS}=${WS}${BASIC}${WS}${COMMENT}$`);

/**
 * The document of `text` when it is made only of comments, blank lines, `key = "string"` lines
 * (bare or basic-string keys, strings without escapes) and headers of one-level tables (each
 * once, not holding or held by another key of the same name); undefined for anything else, which
 * the full parser reads (and judges). Reads what smol-toml reads for such a file, lines included.
 */
export function simpleTomlDocument(text: string): TomlDocument | undefined {
  const root: TomlTable = {};
  const keyLines = new Map<TomlTable, Map<string, number>>([[root, new Map()]]);
  const tableLines = new Map<TomlTable, number>();
  let table = root;
  const lines = (text.startsWith('\ufeff') ? text.slice(1) : text).split('\n');
  for (let i = 0; i < lines.length; i++) {
    let line = lines[i]!;
    // A carriage return only as the first half of a CRLF (not at the end of the text).
    if (i < lines.length - 1 && line.endsWith('\r')) line = line.slice(0, -1);
    if (BLANK_LINE.test(line)) continue;
    const header = TABLE_HEADER.exec(line);
    if (header) {
      const name = header[1] ?? header[2]!;
      // A table named twice, or named like a key of the root, is for the full parser to refuse.
      if (name === '__proto__' || Object.hasOwn(root, name)) return undefined;
      table = {};
      root[name] = table;
      keyLines.get(root)!.set(name, i + 1);
      keyLines.set(table, new Map());
      tableLines.set(table, i + 1);
      continue;
    }
    const kv = KEY_VALUE.exec(line);
    if (!kv) return undefined;
    const key = kv[1] ?? kv[2]!;
    if (key === '__proto__' || Object.hasOwn(table, key)) return undefined;
    table[key] = kv[3]!;
    keyLines.get(table)!.set(key, i + 1);
  }
  return {
    root,
    lineOf: (t, key) => (key === undefined ? tableLines.get(t) : keyLines.get(t)?.get(key)),
  };
}
