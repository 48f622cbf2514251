/**
 * `oci-archive:FILE[:TAG]`: an OCI layout inside a tar. Read in place through a tar index (a pipe
 * or a compressed archive is streamed instead: stream.ts); written as a layout in a hidden sibling
 * directory, packed to a temporary file and renamed over FILE last, so FILE is either the old
 * archive or the complete new one.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { SmartError, rethrowRefusal } from '../../errors.js';
import { checkSize } from '../../limits.js';
import type { BlobDestination, BlobReuse, PutBlobInfo, StoredBlob } from '../../oci/image.js';
import type { Descriptor, ParsedManifest } from '../../oci/manifest.js';
import { markFileRange } from '../../pipeline/local-file.js';
import { FsDriver } from '../../storage/fs-driver.js';
import { specialFileAt } from '../../storage/archive-file.js';
import { asideName, sweepAside } from '../../storage/aside.js';
import type { Cleaned } from '../../storage/leftovers.js';
import { makeDirectories, type MadeDirectories } from '../../storage/made-directories.js';
import { TarIndex } from '../../tar/tar-index.js';
import { TarWriter, fileSink } from '../../tar/tar-writer.js';
import { OciLayoutDestination, OciLayoutSource, type LayoutFiles } from './layout.js';
import { layoutPath, memberName } from './paths.js';

export async function openOciArchiveSource(file: string, tag: string | undefined, name: string): Promise<OciLayoutSource> {
  // A pipe (/dev/stdin, <(…)) is not opened (with no writer, the open would wait forever) nor read
  // here, where a tar index seeks: the transport reads one as a stream (stream.ts).
  const special = specialFileAt(file);
  if (special) {
    throw new SmartError('USAGE', `${name}: ${file} is ${special}, which is read as a stream, not in place`, {
      input: file,
      hint: 'name it as oci-archive:PATH, which streams it',
    });
  }
  const index = await TarIndex.open(file, name);
  const files: LayoutFiles = {
    getContent: async (p, maxBytes) => {
      const member = index.get(p);
      if (!member) throw new SmartError('NOT_FOUND', `${name}: ${memberName(p)} not in the archive`, { input: file });
      if (maxBytes !== undefined) checkSize(member.size, maxBytes, `${name}: ${memberName(p)}`, file);
      return index.read(member);
    },
    reader: async (p) => {
      const member = index.get(p);
      if (!member) throw new SmartError('NOT_FOUND', `${name}: ${memberName(p)} not in the archive`, { input: file });
      // Marked as the range of the archive it is: a compressor reads it into its own blocks (see FileRange).
      const range = member.size > 0 ? index.rangeOf(member) : undefined;
      return range ? markFileRange(index.open(member), range) : index.open(member);
    },
  };
  return new OciLayoutSource(name, files, tag);
}

export class OciArchiveDestination implements BlobDestination {
  readonly layerCompression = 'preserve' as const;
  readonly cacheScope: string;
  private readonly staging: string;
  private readonly layout: OciLayoutDestination;
  /** The file's directory, made by prepare if missing (and taken away again, once empty, by a failed copy). */
  private parent: MadeDirectories | undefined;
  /** What killed runs into this file had left beside it, removed by prepare. */
  private swept: Cleaned[] = [];

  constructor(
    readonly name: string,
    private readonly file: string,
    tag: string | undefined,
  ) {
    this.staging = asideName(file);
    this.layout = new OciLayoutDestination(name, new FsDriver(this.staging, name), tag);
    this.cacheScope = `oci-archive:${file}`;
  }

  async prepare(): Promise<void> {
    this.parent = await makeDirectories(path.dirname(this.file));
    // What killed runs into this file left beside it: a staging layout, a nearly whole archive.
    this.swept = await sweepAside(this.file);
    await this.parent.entry(() => fs.mkdir(this.staging)).catch(rethrowRefusal(`cannot write ${this.name}`));
    await this.layout.prepare();
  }

  supportsManifestType(mediaType: string): boolean {
    return this.layout.supportsManifestType(mediaType);
  }

  reuseBlob(descriptor: Descriptor): Promise<BlobReuse | undefined> {
    return this.layout.reuseBlob(descriptor);
  }

  putBlob(stream: Readable, info: PutBlobInfo): Promise<StoredBlob> {
    return this.layout.putBlob(stream, info);
  }

  putManifest(manifest: ParsedManifest): Promise<void> {
    return this.layout.putManifest(manifest);
  }

  async commit(top: ParsedManifest): Promise<void> {
    await this.layout.commit(top);
    const tmp = asideName(this.file, '.tmp');
    let handle: fs.FileHandle | undefined;
    try {
      handle = await fs.open(tmp, 'w').catch(rethrowRefusal(`cannot write ${this.name}`));
      const writer = new TarWriter(fileSink(handle, this.name));
      const local = (p: string) => path.join(this.staging, memberName(p));
      for (const file of [layoutPath({ kind: 'layoutFile' }), layoutPath({ kind: 'index' })]) await writer.addBuffer(memberName(file), await fs.readFile(local(file)));
      const blobs = layoutPath({ kind: 'blobs' });
      await writer.addDirectory(memberName(layoutPath({ kind: 'blobsRoot' })));
      await writer.addDirectory(memberName(blobs));
      for (const hex of (await fs.readdir(local(blobs))).sort()) {
        const p = `${blobs}/${hex}`;
        const { size } = await fs.stat(local(p));
        const handle = await fs.open(local(p), 'r');
        try {
          await writer.addStream(memberName(p), handle.createReadStream({ highWaterMark: 256 * 1024 }), size);
        } finally {
          await handle.close().catch(() => undefined);
        }
      }
      await writer.finish();
      handle = undefined; // closed by finish
      await fs.rename(tmp, this.file);
    } catch (e) {
      await handle?.close().catch(() => undefined);
      await fs.rm(tmp, { force: true });
      throw e;
    } finally {
      await fs.rm(this.staging, { recursive: true, force: true });
    }
  }

  async cleaned(): Promise<Cleaned[]> {
    return this.swept;
  }

  async abort(): Promise<void> {
    await fs.rm(this.staging, { recursive: true, force: true });
    await this.parent?.undo();
  }

  async close(): Promise<void> {}
}
