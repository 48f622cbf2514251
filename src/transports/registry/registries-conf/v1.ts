/**
 * The v1 format of registries.conf (`[registries.search]`, `[registries.insecure]`,
 * `[registries.block]`), converted to the v2 model as containers/image converts it.
 */
import type { RegistryEntry } from './model.js';
import type { ConfReader } from './reader.js';
import { isTable, type TomlTable, type TomlValue } from './toml-document.js';

/** Reads the `registries` table `v1` of `root` into `r.conf`. */
export function readV1(r: ConfReader, root: TomlTable, v1: TomlValue): void {
  if (!isTable(v1)) r.fail(root, 'registries', '"registries" must be a table ([registries.search], [registries.insecure], [registries.block])');
  const list = (name: string): string[] | undefined => {
    const t = v1[name];
    if (t === undefined) return undefined;
    if (!isTable(t)) r.fail(v1, name, `"registries.${name}" must be a table ([registries.${name}])`);
    r.warnUnknown(t, new Set(['registries']), ` in [registries.${name}]`);
    return r.strings(t, 'registries');
  };
  r.warnUnknown(v1, new Set(['search', 'insecure', 'block']), ' in [registries]');
  const search = list('search');
  const insecure = list('insecure') ?? [];
  const block = list('block') ?? [];
  if (search !== undefined) r.conf.unqualifiedSearchRegistries = search.map((s) => r.searchRegistry(v1['search'] as TomlTable, 'registries', s));
  // As containers/image converts: one [[registry]] per location, blocked first, then insecure.
  const byLocation = new Map<string, RegistryEntry>();
  const entry = (table: TomlTable, value: string): RegistryEntry => {
    const location = r.location(table, 'registries', value);
    let e = byLocation.get(location);
    if (!e) {
      e = { prefix: location, location, insecure: false, blocked: false, mirrorByDigestOnly: false, mirrors: [], file: r.file, line: r.doc.lineOf(table, 'registries') ?? 0 };
      byLocation.set(location, e);
    }
    return e;
  };
  for (const b of block) entry(v1['block'] as TomlTable, b).blocked = true;
  for (const i of insecure) entry(v1['insecure'] as TomlTable, i).insecure = true;
  r.conf.registries = [...byLocation.values()];
}
