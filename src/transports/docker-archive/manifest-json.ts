/** The `manifest.json` of a `docker save` archive (classic and Docker 25+ layouts both carry it). */
import { SmartError, printable } from '../../errors.js';
import { checkJson } from '../../limits.js';
import { parseReference } from '../../oci/reference.js';

export interface ArchiveEntry {
  Config: string;
  RepoTags: string[] | null;
  Layers: string[];
}

/** A larger manifest.json is refused before it is read: `docker save` of hundreds of images stays far below. */
export const MAX_ARCHIVE_MANIFEST_BYTES = 8 * 1024 * 1024;

/** Which image of an archive: by name (`NAME:TAG`), by position (`@N`), or the only one. */
export type ArchiveSelection = { kind: 'only' } | { kind: 'name'; name: string } | { kind: 'index'; index: number };

export function parseArchiveManifest(bytes: Buffer, what: string): ArchiveEntry[] {
  checkJson(bytes, MAX_ARCHIVE_MANIFEST_BYTES, `${what}: manifest.json`, what);
  let doc: unknown;
  try {
    doc = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw new SmartError('NOT_AN_IMAGE', `${what}: manifest.json is not JSON`, { input: what });
  }
  if (!Array.isArray(doc) || doc.length === 0) throw new SmartError('NOT_AN_IMAGE', `${what}: manifest.json lists no image`, { input: what });
  return doc.map((e: unknown, i) => {
    const entry = e as Partial<ArchiveEntry>;
    if (typeof entry?.Config !== 'string' || !Array.isArray(entry.Layers) || !entry.Layers.every((l) => typeof l === 'string')) {
      throw new SmartError('NOT_AN_IMAGE', `${what}: manifest.json entry ${i} has no Config or Layers`, { input: what });
    }
    const tags = Array.isArray(entry.RepoTags) ? entry.RepoTags.filter((t): t is string => typeof t === 'string') : [];
    return { Config: entry.Config, RepoTags: tags, Layers: entry.Layers };
  });
}

/** `busybox:latest`, `docker.io/library/busybox:latest` and `library/busybox` name the same image. */
function sameName(a: string, b: string): boolean {
  try {
    const x = parseReference(a);
    const y = parseReference(b);
    return x.registry === y.registry && x.repository === y.repository && x.tag === y.tag;
  } catch {
    return a === b;
  }
}

export function selectArchiveEntry(entries: ArchiveEntry[], selection: ArchiveSelection, what: string): ArchiveEntry {
  if (selection.kind === 'index') {
    const e = entries[selection.index];
    if (!e) throw new SmartError('NOT_FOUND', `${what}: no image @${selection.index} (the archive holds ${entries.length})`, { input: what });
    return e;
  }
  if (selection.kind === 'name') {
    const found = entries.filter((x) => (x.RepoTags ?? []).some((t) => sameName(t, selection.name)));
    const e = found[0];
    // Two different images under one name: which was meant is written nowhere, so none is guessed
    // (as for an OCI layout's tag; `docker load` would leave the name on the last).
    const images = new Set(found.map((x) => `${x.Config}\n${x.Layers.join('\n')}`));
    if (images.size > 1) {
      throw new SmartError('MANIFEST_INVALID', `${what}: manifest.json names ${images.size} different images ${printable(selection.name)} (${found.map((x) => `@${entries.indexOf(x)}`).join(', ')})`, {
        input: what,
        hint: 'select one with :@N',
      });
    }
    if (!e) {
      const all = entries.flatMap((x) => x.RepoTags ?? []);
      throw new SmartError('NOT_FOUND', `${what}: no image named ${selection.name}`, {
        input: what,
        hint: all.length ? `names there: ${printable(all.join(', '))}` : 'the archive holds only untagged images; select one with :@N',
      });
    }
    return e;
  }
  if (entries.length > 1) {
    const all = entries.map((x, i) => (x.RepoTags?.length ? x.RepoTags.join(', ') : `@${i}`));
    throw new SmartError('USAGE', `${what}: the archive holds ${entries.length} images; name one as docker-archive:FILE:NAME:TAG or :@N`, {
      input: what,
      hint: `images there: ${all.join('; ')}`,
    });
  }
  return entries[0]!;
}
