/**
 * Writes an image as a `docker save` archive (the classic layout every `docker load` and skopeo
 * read): `<config hex>.json`, `manifest.json`, then one uncompressed `<diff id hex>.tar` per layer.
 * The metadata goes FIRST so that a streaming reader (ours, on a pipe) learns the image before
 * its layers. A file is written to a hidden sibling and renamed into place when complete; a pipe or
 * a device named by its path (/dev/stdout) is written straight (src/storage/archive-file.ts).
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { SmartError, cannotTakeMore, isErrno, readerGoneError, rethrowRefusal } from '../../errors.js';
import { digestHex, shortDigest } from '../../oci/digest.js';
import type { Image, ImageWriteOptions, ImageWriteResult, ImageWriter } from '../../oci/image.js';
import { archiveTarget, openArchiveOutput, openSpoolFile, spoolDir, spoolPlace } from '../../storage/archive-file.js';
import { Spool, SpoolBudget } from '../../pipeline/spool.js';
import { asideName, sweepAside } from '../../storage/aside.js';
import { makeDirectories, type MadeDirectories } from '../../storage/made-directories.js';
import { TarWriter, fileSink, streamSink } from '../../tar/tar-writer.js';

export interface DockerArchiveTarget {
  /** A file path, or a stream (stdout) for `docker-archive:-`. */
  file?: string;
  stream?: Writable;
  /** `NAME:TAG` to record in RepoTags; defaults to the source's tags. */
  repoTag?: string;
  onWarning?: (message: string) => void;
}

export class DockerArchiveWriter implements ImageWriter {
  /** The file's directory, made by `write` if missing (and taken away again, once empty, by abandon). */
  private parent: MadeDirectories | undefined;

  constructor(
    readonly name: string,
    private readonly target: DockerArchiveTarget,
  ) {}

  async abandon(): Promise<void> {
    await this.parent?.undo();
  }

  async write(image: Image, options: ImageWriteOptions): Promise<ImageWriteResult> {
    return this.writeArchive((writer, sizesFirst) => this.writeTo(writer, image, options, sizesFirst));
  }

  /**
   * An archive of no image (`manifest.json` an empty list), where the same destination would have
   * held one: what `docker load` reads as nothing to load, and succeeds (`cache pull … | docker
   * load` when nothing matched; an empty stream made it fail).
   */
  async writeNone(): Promise<ImageWriteResult> {
    return this.writeArchive(async (writer) => {
      await writer.addBuffer('manifest.json', Buffer.from('[]'));
      await writer.finish();
    });
  }

  private async writeArchive(body: (writer: TarWriter, sizesFirst: boolean) => Promise<void>): Promise<ImageWriteResult> {
    const { stream } = this.target;
    if (this.target.file) {
      const target = await archiveTarget(this.target.file, this.name, 'docker-archive: writes a tar file');
      if (target.how === 'stream') {
        // A pipe or a device (/dev/stdout, a named pipe): written straight, as to stdout; a terminal
        // refused as docker-archive:- is (src/cli/transfer.ts).
        const out = await openArchiveOutput(target.path, this.name, 'redirect it to a file, > image.tar, or pipe it: | docker load');
        try {
          await body(new TarWriter(streamSink(out, target.path)), true);
          out.end();
          await finished(out).catch(rethrowRefusal(`cannot write ${this.name}`));
        } catch (e) {
          out.destroy();
          if (isErrno(e, 'EPIPE')) throw readerGoneError(this.name, target.path, e);
          throw e;
        }
        return { details: { path: target.path } };
      }
      const file = target.path;
      // A file in a directory not there yet: made, as for the other destinations (taken away again if the copy fails).
      this.parent = await makeDirectories(path.dirname(file));
      // What killed runs into this file left beside it (a whole archive, nearly, each).
      const cleaned = await sweepAside(file);
      const tmp = asideName(file, '.tmp');
      const handle = await this.parent.entry(() => fs.open(tmp, 'w')).catch(rethrowRefusal(`cannot write ${this.name}`));
      try {
        await body(new TarWriter(fileSink(handle, this.name)), false);
        await fs.rename(tmp, file);
      } catch (e) {
        await handle.close().catch(() => undefined);
        await fs.rm(tmp, { force: true });
        throw e;
      }
      return { details: { path: file, ...(cleaned.length ? { cleaned } : {}) } };
    }
    if (!stream) throw new SmartError('INTERNAL', 'docker-archive writer without a target');
    await body(new TarWriter(streamSink(stream)), true);
    return { details: { path: '-' } };
  }

  private async writeTo(writer: TarWriter, image: Image, options: ImageWriteOptions, sizesFirst: boolean): Promise<void> {
    const configName = `${digestHex(image.manifest.manifest.config.digest)}.json`;
    const layerNames = image.layers.map((l) => `${digestHex(l.diffId)}.tar`);
    const repoTags = (this.target.repoTag ? [this.target.repoTag] : [...image.repoTags]).map(withTag);
    const manifestJson = Buffer.from(JSON.stringify([{ Config: configName, RepoTags: repoTags, Layers: layerNames }]));
    await writer.addBuffer(configName, image.configBytes);
    await writer.addBuffer('manifest.json', manifestJson);
    const written = new Set<string>();
    const budget = new SpoolBudget(SPOOL_MEMORY);
    let noSpool = false;
    const spoolRefused = (e: unknown): undefined => {
      const refusal = cannotTakeMore(e) ?? (isErrno(e, 'ENOENT') || isErrno(e, 'ENOTDIR') ? (e as NodeJS.ErrnoException) : undefined);
      if (!refusal) throw e;
      noSpool = true;
      this.target.onWarning?.(`no file for a spool in ${spoolDir()} (${refusal.code}): each layer is read twice, for its size first (set TMPDIR to a directory with room)`);
      return undefined;
    };
    const spoolFilledUp = (e: unknown): false => {
      const full = cannotTakeMore(e);
      if (!full) throw e;
      noSpool = true;
      this.target.onWarning?.(`${spoolDir()} filled up (${full.code}) while a layer was spooled for its size: it and the layers after it are read twice instead (set TMPDIR to a directory with room for the largest layer)`);
      return false;
    };
    for (const [i, layer] of image.layers.entries()) {
      const member = layerNames[i]!;
      if (written.has(member)) continue; // the same layer twice in one image is stored once
      written.add(member);
      options.signal?.throwIfAborted();
      let bytes: number;
      // A pipe cannot be rewound to fix a header, and the header comes first: the layer is taken
      // whole (fetched and checked once) into a spool, then written with the size it came to.
      const file = sizesFirst && !noSpool ? await openSpoolFile().catch(spoolRefused) : undefined;
      let spooled: number | undefined;
      if (file) {
        const what = `layer ${shortDigest(layer.descriptor.digest)} of ${image.name}`;
        const spool = new Spool(await layer.openUncompressed(options), { budget, what, waitingFor: 'its size is known (the tar header that gives it goes first)', where: spoolPlace(), openFile: async () => file });
        try {
          // $TMPDIR filling up midway: nothing of this member is written yet, so the layer is read
          // twice instead, as when no spool file can be had at all (docker save needs no spool).
          if (await spool.drained.then(() => true, spoolFilledUp)) spooled = await writer.addStream(member, spool.reader(), spool.received);
        } finally {
          await spool.destroy();
          await file.close().catch(() => undefined); // the spool's to close, once it had bytes
        }
      }
      if (spooled !== undefined) bytes = spooled;
      else if (sizesFirst) {
        // No file for a spool (a read-only container, a full disk): the size from a first pass over the layer, read twice.
        const size = await countBytes(await layer.openUncompressed(options));
        bytes = await writer.addStream(member, await layer.openUncompressed(options), size);
      } else bytes = await writer.addStream(member, await layer.openUncompressed(options));
      options.onLayer?.({ digest: layer.descriptor.digest, diffId: layer.diffId, status: 'written', bytes });
    }
    await writer.finish();
  }
}

/**
 * The spool of a layer bound for a pipe holds nothing in memory: it goes into a file, which the page
 * cache holds anyway. Measured on a 184 MB image from the registry: the same time as a 64 MiB
 * memory budget (1.07 s), at 137 MB peak RSS where that budget took 260 MB.
 */
const SPOOL_MEMORY = 0;

async function countBytes(stream: AsyncIterable<Buffer>): Promise<number> {
  let n = 0;
  for await (const chunk of stream) n += chunk.length;
  return n;
}

/**
 * A RepoTags entry as `docker save` writes one: NAME:TAG, a name without a tag given `latest`
 * (`docker load` refuses a bare name: "invalid tag"). The tag is after the last `/`'s last `:`.
 */
function withTag(name: string): string {
  const last = name.slice(name.lastIndexOf('/') + 1);
  return last.includes(':') || name.includes('@') ? name : `${name}:latest`;
}
