/** `oci:DIR[:TAG]` and `oci-archive:FILE[:TAG]`: an OCI image layout, as a directory or in a tar (`-`: stdin or stdout). */
import path from 'node:path';
import { isStreamedArchive, streamedArchiveInput } from '../../storage/archive-file.js';
import { isValidTag } from '../../oci/reference.js';
import { invalidName, refuseNonDirectory, requireDirectory, splitPath, type Transport } from '../transport.js';

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
    // Named as the layout it is in its errors (the driver's default name is a store's, `file:`).
    return new OciLayoutSource(name.raw, new FsDriver(path.resolve(name.dir), `oci:${name.dir}`), name.tag);
  },
  async openDestination(name) {
    const { OciLayoutDestination } = await import('./layout.js');
    const { FsDriver } = await import('../../storage/fs-driver.js');
    const { makeDirectories } = await import('../../storage/made-directories.js');
    const dir = path.resolve(name.dir);
    await refuseNonDirectory(dir, name.raw, 'an OCI layout is a directory', 'a tar of one is oci-archive:FILE');
    // Taken away again, if this run made them, when the copy fails. (The layout's files are written
    // by a driver that makes their directories, so another run's undo cannot leave it without one.)
    const made = await makeDirectories(dir);
    const dest = new OciLayoutDestination(name.raw, new FsDriver(dir, `oci:${name.dir}`), name.tag, () => made.undo());
    // A layout that could not even begin (its oci-layout file refused: a full or read-only disk)
    // leaves no directory this run made.
    await dest.prepare().catch(async (e: unknown) => {
      await made.undo().catch(() => undefined);
      throw e;
    });
    return dest;
  },
  localPaths: (name) => [{ path: name.dir, what: 'the source layout' }],
};

export const ociArchive: Transport<OciArchiveName> = {
  name: 'oci-archive',
  form: 'oci-archive:FILE[:TAG]',
  help: 'OCI image layout in a tar file; FILE "-" is stdin or stdout',
  capabilities: { readsStdin: true, writesStdout: true, contentAddressed: true },
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
  async openDestination(name, ctx) {
    const { OciArchiveDestination } = await import('./archive.js');
    const { archiveTarget, openArchiveOutput } = await import('../../storage/archive-file.js');
    const terminal = 'redirect it to a file, > image.tar, or pipe it';
    let output: import('./archive.js').OciArchiveOutput;
    if (name.file === '-') output = { stream: ctx.stdout, path: 'stdout', owned: false };
    else {
      const target = await archiveTarget(path.resolve(name.file), name.raw, 'oci-archive: writes a tar file');
      // A pipe or a device (/dev/stdout, >(…), a named pipe): written straight, as stdout is.
      output = target.how === 'stream' ? { stream: await openArchiveOutput(target.path, name.raw, terminal), path: target.path, owned: true } : { file: target.path };
    }
    const dest = new OciArchiveDestination(name.raw, output, name.tag);
    await dest.prepare();
    return dest;
  },
  localPaths: (name) => (name.file === '-' ? [] : [{ path: name.file, what: 'the source archive' }]),
};
