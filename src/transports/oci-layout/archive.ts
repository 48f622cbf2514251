/**
 * `oci-archive:FILE[:TAG]`: an OCI layout inside a tar. Read in place through a tar index (a pipe
 * or a compressed archive is streamed instead: stream.ts); written in one pass, blob by blob as
 * they arrive, index.json last (OciArchiveDestination).
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { addAbortSignal, pipeline, type Readable, type Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { SmartError, isErrno, readerGoneError, rethrowRefusal } from '../../errors.js';
import { checkSize } from '../../limits.js';
import type { BlobDestination, BlobReuse, PutBlobInfo, StoredBlob } from '../../oci/image.js';
import { serializeManifest, type Descriptor, type ParsedManifest } from '../../oci/manifest.js';
import { MediaType } from '../../oci/mediatypes.js';
import { shortDigest, type Digest } from '../../oci/digest.js';
import { DigestStream } from '../../pipeline/digest-stream.js';
import { Spool, SpoolBudget, openUnlinked } from '../../pipeline/spool.js';
import { markFileRange } from '../../pipeline/local-file.js';
import { openSpoolFile, specialFileAt, spoolDir, spoolPlace } from '../../storage/archive-file.js';
import { asideName, ownedId, sweepAside } from '../../storage/aside.js';
import type { Cleaned } from '../../storage/leftovers.js';
import { makeDirectories, type MadeDirectories } from '../../storage/made-directories.js';
import { TarIndex } from '../../tar/tar-index.js';
import { TarWriter, fileSink, streamSink, type TarSink } from '../../tar/tar-writer.js';
import { OciLayoutSource, type LayoutFiles } from './layout.js';
import { LAYOUT_FILE_CONTENT, REF_NAME, layoutPath, memberName } from './paths.js';

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

/** Where an archive is written: a file (beside it, then renamed onto it), or a stream written straight (stdout, a pipe named by its path). */
export type OciArchiveOutput = { file: string } | { stream: Writable; path: string; owned: boolean };

/**
 * Writes the layout as a tar in one pass, each blob a member as it arrives: `oci-layout`, then the
 * blobs in the order they come (one at a time; one that arrives while another is written is
 * spooled to an unlinked file meanwhile, so that no download waits), the manifests, and index.json
 * last, as skopeo orders it: a reader of the stream learns the image at its end. Into a file, the
 * archive is written beside it and renamed onto it when complete, so FILE is either the old archive
 * or the whole new one; into a stream, a failed copy leaves it cut short, which every reader refuses.
 */
export class OciArchiveDestination implements BlobDestination {
  readonly layerCompression = 'preserve' as const;
  readonly cacheScope: string;
  private writer: TarWriter | undefined;
  /** The file being written beside the archive, until renamed onto it. */
  private tmp: { path: string; handle: fs.FileHandle | undefined } | undefined;
  /** The file's directory, made by prepare if missing (and taken away again, once empty, by a failed copy). */
  private parent: MadeDirectories | undefined;
  /** What killed runs into this file had left beside it, removed by prepare. */
  private swept: Cleaned[] = [];
  /** The member being written, or the last: the next waits for it. */
  private last: Promise<unknown> = Promise.resolve();
  /** A member that failed part written: every later write fails with it. */
  private broken: { error: unknown } | undefined;
  /** Blobs in the archive, and their sizes. */
  private readonly written = new Map<Digest, number>();
  /** Spools hold nothing in memory: the file is in the page cache anyway (as docker-archive's writer measured). */
  private readonly budget = new SpoolBudget(0);

  constructor(
    readonly name: string,
    private readonly output: OciArchiveOutput,
    private readonly tag: string | undefined,
  ) {
    this.cacheScope = `oci-archive:${'file' in output ? output.file : output.path}`;
  }

  async prepare(): Promise<void> {
    let sink: TarSink;
    if ('file' in this.output) {
      const file = this.output.file;
      this.parent = await makeDirectories(path.dirname(file));
      // What killed runs into this file left beside it: a nearly whole archive, an older run's staging layout.
      this.swept = await sweepAside(file);
      const tmp = asideName(file, '.tmp');
      const handle = await this.parent.entry(() => fs.open(tmp, 'w')).catch(rethrowRefusal(`cannot write ${this.name}`));
      this.tmp = { path: tmp, handle };
      sink = fileSink(handle, this.name);
    } else sink = streamSink(this.output.stream, this.output.path);
    this.writer = new TarWriter(sink);
    await this.member(async (w) => {
      await w.addBuffer(memberName(layoutPath({ kind: 'layoutFile' })), LAYOUT_FILE_CONTENT);
      await w.addDirectory(memberName(layoutPath({ kind: 'blobsRoot' })));
      await w.addDirectory(memberName(layoutPath({ kind: 'blobs' })));
    });
  }

  /**
   * Runs `write` once the members before it are written. One that fails part written is taken back
   * out of a file (the blob can be sent again: a retried download); on a stream, what is sent is
   * gone, and the archive is broken for every later write.
   */
  private member<T>(write: (w: TarWriter) => Promise<T>): Promise<T> {
    const mine = this.last.then(async () => {
      if (this.broken) throw this.broken.error;
      const w = this.writer!;
      const at = w.written;
      try {
        return await write(w);
      } catch (e) {
        const error = isErrno(e, 'EPIPE') && 'stream' in this.output ? readerGoneError(this.name, this.output.path, e) : e;
        if (w.written === at) throw error;
        if (w.rewindable) {
          await w.rewind(at);
          throw error;
        }
        // Not to be retried: the member cannot be taken back.
        this.broken = { error: new SmartError('STORAGE', `${this.name}: the archive broke while a member was written: ${error instanceof Error ? error.message : String(error)}`, { input: this.name, cause: error }) };
        throw this.broken.error;
      }
    });
    this.last = mine.catch(() => undefined);
    return mine;
  }

  supportsManifestType(mediaType: string): boolean {
    // As a layout: skopeo and umoci read only OCI manifests there.
    return mediaType === MediaType.OCI_MANIFEST || mediaType === MediaType.OCI_INDEX;
  }

  async reuseBlob(descriptor: Descriptor): Promise<BlobReuse | undefined> {
    return this.written.get(descriptor.digest) === descriptor.size ? { how: 'present' } : undefined;
  }

  async putBlob(stream: Readable, info: PutBlobInfo): Promise<StoredBlob> {
    const known = info.digest && info.size !== undefined ? { digest: info.digest, size: info.size } : undefined;
    // Verified upstream (it errors in place of its end): not hashed again.
    const hash = info.verified && known ? undefined : new DigestStream();
    const source = hash ? pipeline(stream, hash, () => undefined) : stream;
    if (info.signal) addAbortSignal(info.signal, source);
    const what = `blob ${known ? shortDigest(known.digest) : '(digest to come)'} for ${this.name}`;
    const spool = new Spool(source, {
      budget: this.budget,
      what,
      waitingFor: 'the blob before it goes into the archive',
      openFile: () => this.spoolFile(),
      // Beside an archive file, the archive's own disk; on a pipe, $TMPDIR, which the user may not think of.
      ...('file' in this.output ? {} : { where: spoolPlace() }),
    });
    try {
      const mismatch = () => new SmartError('DIGEST_MISMATCH', `blob for ${this.name}: content hashes to ${hash!.digest}, not ${known!.digest}`, { input: known!.digest });
      // On a stream, a blob goes out only once whole and checked: a download that fails midway is
      // then fetched again, not cut into the archive. So does one whose size or digest is known only at its end.
      if (!known || 'stream' in this.output) {
        await spool.drained;
        if (known && spool.received !== known.size) throw new SmartError('SIZE_MISMATCH', `blob for ${this.name}: ${spool.received} bytes, not the ${known.size} of ${known.digest}`, { input: known.digest });
        if (known && hash && hash.digest !== known.digest) throw mismatch();
      }
      return await this.member(async (w) => {
        const digest = known?.digest ?? hash!.digest;
        const size = known?.size ?? spool.received;
        if (this.written.has(digest)) return { digest, size };
        await w.addStream(memberName(layoutPath({ kind: 'blob', digest })), spool.reader(), size);
        if (known && hash && hash.digest !== digest) throw mismatch();
        this.written.set(digest, size);
        return { digest, size };
      });
    } finally {
      await spool.destroy();
    }
  }

  /**
   * The unlinked file a blob waiting for its turn goes into: beside the archive when it is a file
   * (where there must be room for it anyway: a container's read-only /tmp does not matter), else in
   * $TMPDIR or /var/tmp.
   */
  private spoolFile(): Promise<fs.FileHandle> {
    if ('file' in this.output) {
      const dir = path.dirname(this.output.file);
      return openUnlinked(path.join(dir, `.smart-spool-${ownedId()}`)).catch(rethrowRefusal(`cannot write ${this.name}`));
    }
    return openSpoolFile().catch(rethrowRefusal(`no file for a spool in ${spoolDir()} (set TMPDIR to a directory with room)`));
  }

  async putManifest(manifest: ParsedManifest): Promise<void> {
    await this.member(async (w) => {
      if (this.written.has(manifest.digest)) return;
      await w.addBuffer(memberName(layoutPath({ kind: 'blob', digest: manifest.digest })), manifest.bytes);
      this.written.set(manifest.digest, manifest.bytes.length);
    });
  }

  /** index.json, naming `top` under the tag, and the end of the archive; a file is renamed into place. */
  async commit(top: ParsedManifest): Promise<void> {
    const entry: Descriptor = { mediaType: top.mediaType, digest: top.digest, size: top.bytes.length, ...(this.tag !== undefined ? { annotations: { [REF_NAME]: this.tag } } : {}) };
    const index = serializeManifest({ schemaVersion: 2, mediaType: MediaType.OCI_INDEX, manifests: [entry] });
    await this.member(async (w) => {
      await w.addBuffer(memberName(layoutPath({ kind: 'index' })), index);
      await w.finish();
    });
    if (this.tmp) {
      this.tmp.handle = undefined; // closed by finish
      await fs.rename(this.tmp.path, (this.output as { file: string }).file).catch(rethrowRefusal(`cannot write ${this.name}`));
      this.tmp = undefined;
    } else if ('stream' in this.output && this.output.owned) {
      const out = this.output.stream;
      out.end();
      await finished(out).catch(rethrowRefusal(`cannot write ${this.name}`));
    }
  }

  async cleaned(): Promise<Cleaned[]> {
    return this.swept;
  }

  async abort(): Promise<void> {
    // Whatever is being written stops at its next write; none comes after.
    this.broken ??= { error: new SmartError('CANCELLED', `${this.name}: the copy failed`) };
    await this.last;
    if (this.tmp) {
      await this.tmp.handle?.close().catch(() => undefined);
      await fs.rm(this.tmp.path, { force: true });
      this.tmp = undefined;
    } else if ('stream' in this.output && this.output.owned) this.output.stream.destroy();
    await this.parent?.undo();
  }

  async close(): Promise<void> {}
}
