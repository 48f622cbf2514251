/** `oci:DIR[:TAG]` and `oci-archive:FILE[:TAG]`: an OCI image layout, as a directory or in a tar (`-`: read from stdin). */
import path from 'node:path';
import { SmartError } from '../../errors.js';
import { isStreamedArchive, streamedArchiveInput } from '../../storage/archive-file.js';
import { isValidTag } from '../../oci/reference.js';
import { invalidName, requireDirectory, splitPath, type Transport } from '../transport.js';

export interface OciName {
  transport: 'oci';
  dir: string;
  tag?: string;
  raw: string;
}

export interface OciArchiveName {
  transport: 'oci-archive';
  file: string;
  tag?: string;
  raw: string;
}

/** `PATH[:TAG]`, the tag checked. */
function pathAndTag(rest: string, raw: string): { path: string; tag?: string } {
  const [p, tag] = splitPath(rest);
  if (!p) throw invalidName(raw, 'missing path');
  if (tag !== undefined && !isValidTag(tag)) throw invalidName(raw, `invalid tag "${tag}"`);
  return { path: p, ...(tag !== undefined ? { tag } : {}) };
}

export const oci: Transport<OciName> = {
  name: 'oci',
  form: 'oci:DIR[:TAG]',
  help: 'OCI image layout directory',
  capabilities: { contentAddressed: true },
  parse(rest, raw) {
    const { path: dir, tag } = pathAndTag(rest, raw);
    return { transport: 'oci', dir, ...(tag !== undefined ? { tag } : {}), raw };
  },
  async openSource(name) {
    await requireDirectory(name.dir, name.raw, 'an OCI layout is a directory', 'a tar of one is oci-archive:FILE, a docker save tar docker-archive:FILE');
    const { OciLayoutSource } = await import('./layout.js');
    const { FsDriver } = await import('../../storage/fs-driver.js');
    return new OciLayoutSource(name.raw, new FsDriver(path.resolve(name.dir)), name.tag);
  },
  async openDestination(name) {
    const { OciLayoutDestination } = await import('./layout.js');
    const { FsDriver } = await import('../../storage/fs-driver.js');
    const { makeDirectories } = await import('../../storage/made-directories.js');
    const dir = path.resolve(name.dir);
    // Taken away again, if this run made them, when the copy fails. (The layout's files are written
    // by a driver that makes their directories, so another run's undo cannot leave it without one.)
    const made = await makeDirectories(dir);
    const dest = new OciLayoutDestination(name.raw, new FsDriver(dir), name.tag, () => made.undo());
    await dest.prepare();
    return dest;
  },
  localPaths: (name) => [{ path: name.dir, what: 'the source layout' }],
};

export const ociArchive: Transport<OciArchiveName> = {
  name: 'oci-archive',
  form: 'oci-archive:FILE[:TAG]',
  help: 'OCI image layout in a tar file; FILE "-" is stdin',
  capabilities: { readsStdin: true, contentAddressed: true },
  parse(rest, raw) {
    const { path: file, tag } = pathAndTag(rest, raw);
    return { transport: 'oci-archive', file, ...(tag !== undefined ? { tag } : {}), raw };
  },
  // `-` is stdin; a pipe named by its path is read as stdin is, and so is a compressed archive
  // (see isStreamedArchive), as docker-archive: reads them.
  isStdio: (name) => isStreamedArchive(name.file),
  async openSource(name, ctx) {
    if (isStreamedArchive(name.file)) {
      // Loaded here: tar parsing of a pipe is needed only for archives on a pipe.
      const { ociArchiveStream } = await import('./stream.js');
      return ociArchiveStream(await streamedArchiveInput(name.file, name.raw, ctx.stdin), name.tag, name.raw);
    }
    const { openOciArchiveSource } = await import('./archive.js');
    return openOciArchiveSource(name.file, name.tag, name.raw);
  },
  async openDestination(name) {
    // Not a file named "-" made in the current directory while the image was meant for stdout.
    if (name.file === '-') {
      throw new SmartError('USAGE', `${name.raw}: an OCI archive is written in place, not to stdout`, {
        input: name.raw,
        hint: 'use docker-archive:- to stream an image, or ./- for a file named "-"',
      });
    }
    const { OciArchiveDestination } = await import('./archive.js');
    const { archiveTarget } = await import('../../storage/archive-file.js');
    const target = await archiveTarget(path.resolve(name.file), name.raw, 'oci-archive: writes a tar file');
    if (target.how === 'stream') {
      // As oci-archive:- is refused: staged whole first, it is no stream.
      throw new SmartError('USAGE', `${name.raw}: ${name.file} is ${target.kind}; an OCI archive is written in place, not streamed`, {
        input: name.raw,
        hint: 'use docker-archive: to stream an image, or name a file',
      });
    }
    const dest = new OciArchiveDestination(name.raw, target.path, name.tag);
    await dest.prepare();
    return dest;
  },
  localPaths: (name) => (name.file === '-' ? [] : [{ path: name.file, what: 'the source archive' }]),
};
