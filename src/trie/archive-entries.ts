/**
 * `ADD app.tar.gz /opt/app/`: a local tar archive named as an ADD source is extracted into the
 * destination by every builder (BuildKit's and the classic builder's isArchivePath, buildah's
 * `--extract`), so the layer holds its members, never the archive. What an archive is, as they
 * decide it: a regular file that decompresses as gzip, bzip2, xz or zstd (or not at all) and whose
 * first tar header reads; anything else (a `.json.gz`, an empty tar) is copied as the file it is.
 * Given to the context's `collectCopyEntries` as its `unpack` (the context knows no decompressor).
 *
 * The builders key such a step on the archive's bytes, not on its members (the classic builder's
 * `ADD file:<tarsum of the archive>`, BuildKit's checksum of the context file): the same members
 * re-compressed, re-written as PAX or with another member time, and all three build the step again.
 * So each member carries the archive's sha256, and a step's digest with it.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import type { Readable } from 'node:stream';
import { archiveTarStream } from '../pipeline/archive-stream.js';
import { fsPath } from '../tar/byte-names.js';
import { cleanPath, contextRelative, type CopyEntry } from '../dockerfile/context.js';
import { layerEntries } from './image-steps.js';

/**
 * The entries an ADD of the archive at `abs` (context path `source`) places, relative to the
 * destination, or undefined when the file is not an archive to the builders. Members keep their
 * own modes; a hardlink is the file it links to; a directory a member needs and the archive does
 * not hold is made 0755, as extraction makes it; whiteouts and names leaving the destination
 * (which fail the build) are left out.
 */
export async function archiveCopyEntries(abs: string, source: string): Promise<CopyEntry[] | undefined> {
  let stream: Readable;
  try {
    stream = await archiveTarStream(createReadStream(fsPath(abs)), source);
  } catch {
    return undefined; // not readable: no builder extracts it either
  }
  let members;
  try {
    members = await layerEntries(stream);
  } catch {
    // Not a tar (its first header does not read), one the builder fails to extract, or one whose
    // decompressor this machine lacks: the file is what this summarises (a miss at worst).
    return undefined;
  }
  if (members.length === 0) return undefined; // Go's tar reader finds no first header: not an archive
  const archive = createHash('sha256');
  await pipeline(createReadStream(fsPath(abs)), archive);
  const archiveSha256 = archive.digest('hex');
  const byPath = new Map<string, CopyEntry>();
  for (const m of members) {
    const clean = cleanPath(m.path);
    if (clean === '..' || clean.startsWith('../')) continue;
    const rel = contextRelative(clean);
    if (rel === '' || rel.slice(rel.lastIndexOf('/') + 1).startsWith('.wh.')) continue;
    const entry: CopyEntry = { path: rel, source, type: m.type, mode: m.mode & 0o7777, size: 0, fromArchive: true, archiveSha256 };
    if (m.sha256 !== undefined) entry.sha256 = m.sha256;
    if (m.target !== undefined) entry.target = m.target;
    byPath.set(rel, entry);
  }
  for (const rel of [...byPath.keys()]) {
    for (let i = rel.lastIndexOf('/'); i > 0; i = rel.lastIndexOf('/', i - 1)) {
      const dir = rel.slice(0, i);
      if (!byPath.has(dir)) byPath.set(dir, { path: dir, source, type: 'dir', mode: 0o755, size: 0, fromArchive: true, archiveSha256 });
    }
  }
  return [...byPath.values()];
}
