/**
 * Names for what a run writes before putting it in place (an archive's temporary file, its staging
 * directory, a layout's blob being written), tagged with the run's owner; and the sweep that
 * removes what killed runs left (kill -9, a CI job's timeout), run by the next run into the same
 * place. Never what a live run uses: its owner still runs.
 */
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import { ownerTag, parseOwnerTag, sweepLocal, type Cleaned, type Owner } from './leftovers.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/**
 * A fresh id that names this run as its owner, OWNER-XXXXXXXX: what every name of a leftover-to-be
 * carries (the driver's temporary files, a tree being built, a layer being unpacked, the names here).
 */
export function ownedId(): string {
  return `${ownerTag()}-${randomUUID().slice(0, 8)}`;
}

/**
 * The owner an id from `ownedId` names; null for a bare UUID (what earlier versions wrote, with no
 * owner: it goes by its age); undefined for anything else.
 */
export function ownerOfId(id: string): Owner | null | undefined {
  if (UUID.test(id)) return null;
  const parsed = parseOwnerTag(id);
  return parsed && /^-[0-9a-f]{8}$/.test(parsed.rest) ? parsed.owner : undefined;
}

/** A fresh name beside the file `target` for this run: `.NAME.smart-OWNER-XXXXXXXX` and `suffix`. */
export function asideName(target: string, suffix = ''): string {
  return path.join(path.dirname(target), `.${path.basename(target)}.smart-${ownedId()}${suffix}`);
}

/**
 * Removes what killed runs left beside the file `target`: names from `asideName` (with or without
 * `.tmp`), and those of earlier versions (`.NAME.smart-UUID`, `.NAME.smart-UUID.tmp`,
 * `NAME.smart-UUID.tmp`) once a day old.
 */
export function sweepAside(target: string): Promise<Cleaned[]> {
  const base = path.basename(target);
  return sweepLocal(path.dirname(target), (name) => {
    const hidden = `.${base}.smart-`;
    if (name.startsWith(hidden)) return ownerOfId(name.slice(hidden.length).replace(/\.tmp$/, ''));
    const plain = `${base}.smart-`;
    if (name.startsWith(plain) && name.endsWith('.tmp')) return ownerOfId(name.slice(plain.length, -'.tmp'.length)) === null ? null : undefined;
    return undefined;
  });
}
