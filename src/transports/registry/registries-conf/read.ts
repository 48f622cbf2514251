/**
 * The configuration one registries.conf document makes: the v1 format or the v2 one (never both
 * in one file), unknown keys warned about, and entries for the same location that disagree
 * refused.
 */
import { SmartError } from '../../../errors.js';
import type { RegistriesConf, RegistryEntry } from './model.js';
import { ConfReader } from './reader.js';
import type { TomlDocument } from './toml-document.js';
import { readV1 } from './v1.js';
import { V2_KEYS, readV2 } from './v2.js';

/** The configuration `doc` (the TOML of `file`) makes. Errors: `USAGE`, `<file>:<line>: ...`. */
export function readRegistriesConf(doc: TomlDocument, file: string): RegistriesConf {
  const r = new ConfReader(doc, file);
  const root = doc.root;
  const v1 = root['registries'];
  const v2Key = Object.keys(root).find((k) => V2_KEYS.has(k));
  if (v1 !== undefined) {
    if (v2Key !== undefined) {
      r.fail(root, v2Key, `mixing the v1 format ([registries.search], [registries.insecure], [registries.block], line ${doc.lineOf(root, 'registries') ?? '?'}) and the v2 format ("${v2Key}") is not supported`);
    }
    readV1(r, root, v1);
  } else {
    readV2(r, root);
  }
  r.warnUnknown(root, new Set([...V2_KEYS, 'registries']), '');
  checkConflicts(r.conf.registries, file);
  return r.conf;
}

/** Entries for the same location must agree on insecure and blocked (as containers/image checks). */
function checkConflicts(registries: RegistryEntry[], file: string): void {
  const byLocation = new Map<string, RegistryEntry>();
  for (const e of registries) {
    const key = e.location || e.prefix;
    const other = byLocation.get(key);
    if (!other) {
      byLocation.set(key, e);
      continue;
    }
    for (const field of ['insecure', 'blocked'] as const) {
      if (e[field] !== other[field]) {
        throw new SmartError('USAGE', `${file}:${e.line}: registry "${key}" is defined multiple times with conflicting "${field}" settings (also on line ${other.line})`, {
          input: file,
        });
      }
    }
  }
}
