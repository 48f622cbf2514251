/**
 * The v2 format of registries.conf: `[[registry]]` entries with their `[[registry.mirror]]`s,
 * `unqualified-search-registries`, `short-name-mode`, `credential-helpers` and `[aliases]`.
 */
import type { PullFromMirror, RegistryEntry, RegistryMirror } from './model.js';
import type { ConfReader } from './reader.js';
import { isTable, type TomlTable } from './toml-document.js';

export const V2_KEYS = new Set(['registry', 'unqualified-search-registries', 'short-name-mode', 'credential-helpers', 'aliases', 'additional-layer-store-auth-helper']);
const REGISTRY_KEYS = new Set(['prefix', 'location', 'insecure', 'blocked', 'mirror-by-digest-only', 'mirror', 'pull-from-mirror']);
const MIRROR_KEYS = new Set(['location', 'insecure', 'pull-from-mirror']);

/** Reads the v2 settings of `root` into `r.conf`; of duplicate prefixes the first is kept, the others warned about. */
export function readV2(r: ConfReader, root: TomlTable): void {
  const search = r.strings(root, 'unqualified-search-registries');
  if (search !== undefined) r.conf.unqualifiedSearchRegistries = search.map((s) => r.searchRegistry(root, 'unqualified-search-registries', s));
  const mode = r.string(root, 'short-name-mode');
  if (mode !== undefined) {
    if (mode !== 'enforcing' && mode !== 'permissive' && mode !== 'disabled') r.fail(root, 'short-name-mode', `invalid short-name-mode "${mode}" (enforcing, permissive or disabled)`);
    r.conf.shortNameMode = mode;
  }
  const helpers = r.strings(root, 'credential-helpers');
  if (helpers !== undefined) r.conf.credentialHelpers = helpers;
  r.string(root, 'additional-layer-store-auth-helper');
  const aliases = root['aliases'];
  if (aliases !== undefined) {
    if (!isTable(aliases)) r.fail(root, 'aliases', '"aliases" must be a table ([aliases])');
    for (const k of Object.keys(aliases)) r.conf.aliases[k] = r.string(aliases, k)!;
  }
  const seen = new Map<string, RegistryEntry>();
  for (const t of r.tables(root, 'registry', '[[registry]]')) {
    const e = readRegistry(r, t);
    const first = seen.get(e.prefix);
    if (first) {
      // containers/image keeps the first and ignores the others; say so.
      r.conf.warnings.push(`${r.file}:${e.line}: [[registry]] with prefix "${e.prefix}" already defined on line ${first.line}; this one is ignored`);
      continue;
    }
    seen.set(e.prefix, e);
    r.conf.registries.push(e);
  }
}

function readRegistry(r: ConfReader, t: TomlTable): RegistryEntry {
  r.warnUnknown(t, REGISTRY_KEYS, ' in [[registry]]');
  const rawLocation = r.string(t, 'location');
  const rawPrefix = r.string(t, 'prefix');
  const location = rawLocation === undefined || rawLocation === '' ? '' : r.location(t, 'location', rawLocation);
  let prefix: string;
  if (rawPrefix === undefined || rawPrefix === '') {
    if (location === '') r.fail(t, undefined, '[[registry]] needs a "location" or a "prefix"');
    prefix = location;
  } else {
    prefix = r.prefix(t, rawPrefix);
    if (location === '' && !prefix.startsWith('*.')) r.fail(t, 'prefix', `[[registry]] with prefix "${prefix}" needs a "location" (only a *.example.com prefix may go without)`);
  }
  if (t['pull-from-mirror'] !== undefined) r.fail(t, 'pull-from-mirror', `"pull-from-mirror" belongs in a [[registry.mirror]], not in the [[registry]] with prefix "${prefix}"`);
  const mirrorByDigestOnly = r.bool(t, 'mirror-by-digest-only');
  const mirrors = r.tables(t, 'mirror', '[[registry.mirror]]').map((m) => readMirror(r, m, prefix, mirrorByDigestOnly));
  return {
    prefix,
    location,
    insecure: r.bool(t, 'insecure'),
    blocked: r.bool(t, 'blocked'),
    mirrorByDigestOnly,
    mirrors,
    file: r.file,
    line: r.doc.lineOf(t) ?? r.doc.lineOf(r.doc.root, 'registry') ?? 0,
  };
}

function readMirror(r: ConfReader, m: TomlTable, prefix: string, byDigestOnly: boolean): RegistryMirror {
  r.warnUnknown(m, MIRROR_KEYS, ' in [[registry.mirror]]');
  const raw = r.string(m, 'location');
  if (raw === undefined || raw.replace(/\/+$/, '') === '') r.fail(m, 'location', `[[registry.mirror]] of "${prefix}" needs a "location"`);
  const location = r.location(m, 'location', raw);
  const pull = r.string(m, 'pull-from-mirror');
  if (pull !== undefined && pull !== '') {
    if (byDigestOnly) r.fail(m, 'pull-from-mirror', `"pull-from-mirror" of mirror "${location}" cannot be set when its [[registry]] "${prefix}" has mirror-by-digest-only = true`);
    if (pull !== 'all' && pull !== 'digest-only' && pull !== 'tag-only') r.fail(m, 'pull-from-mirror', `invalid pull-from-mirror "${pull}" (all, digest-only or tag-only)`);
  }
  return { location, insecure: r.bool(m, 'insecure'), pullFromMirror: (pull || 'all') as PullFromMirror };
}
