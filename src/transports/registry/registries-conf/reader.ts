/**
 * Reading the settings of one registries.conf file, for the v1 and the v2 format alike: each value
 * of the expected type, locations and prefixes in the syntax containers/image accepts, and every
 * error and warning naming the file and the line.
 */
import { SmartError } from '../../../errors.js';
import { hostPortProblem, isValidHost, isValidRepository, isValidTag } from '../../../oci/reference.js';
import { DIGEST_RE, WILDCARD_RE, emptyRegistriesConf, hostOf, looksLikeHost, type RegistriesConf } from './model.js';
import { isTable, type TomlDocument, type TomlTable } from './toml-document.js';

/** One file being read: its document, and the configuration it makes. */
export class ConfReader {
  readonly conf: RegistriesConf = emptyRegistriesConf();

  constructor(
    readonly doc: TomlDocument,
    readonly file: string,
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
    const portProblem = hostPortProblem(host);
    if (portProblem) this.fail(table, key, `${key} "${value}": ${portProblem}`);
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

  /** An `unqualified-search-registries` entry: `host[:port]`. */
  searchRegistry(table: TomlTable, key: string, value: string): string {
    const s = this.trimLocation(table, key, value);
    if (!isValidHost(s)) this.fail(table, key, `invalid unqualified-search-registries entry "${value}" (host[:port] expected)`);
    return s;
  }
}
