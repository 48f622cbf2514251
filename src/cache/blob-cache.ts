/**
 * The compressed blobs of the layers a pull fetched and did not keep unpacked in the layer store
 * (a `rootfs:` on a filesystem that copies: ext4, tmpfs), kept beside it so that no pull fetches a
 * layer twice. Keeping a blob as it passes costs one write of its compressed bytes; keeping it
 * unpacked there costs a second copy of every file, two to three times a cold pull's time on ext4.
 * The next pull reads it as a local file (decompressed by the same jobs that read it) in place of
 * fetching it. Under the layer store's DIR:
 *
 *   blobs/sha256/<hex>    a blob, checked against its digest before it was kept and before each use
 *   tmp/<owner tag>-<id>  a blob being kept; renamed into blobs/ once its source has checked it;
 *                         or a pin: a hardlink to a kept blob a pull is reading (see `find`);
 *                         tmp/ is the layer store's, 0700 (layers are unpacked there too)
 *
 * The layer store's records of the images pulled name their blobs: its gc removes the others.
 * Keeping is for the next pull's sake: a blob that cannot be written (the disk full) is not kept,
 * and the pull goes on; a kept blob found damaged (a CI cache restored in part) is removed and
 * fetched.
 */
import { once } from 'node:events';
import { constants as fsConstants } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { isErrno, isSmartError } from '../errors.js';
import { digestHex, type Digest } from '../oci/digest.js';
import type { LocalBlobs } from '../oci/image.js';
import type { Descriptor } from '../oci/manifest.js';
import { verifyFile } from '../pipeline/local-file.js';
import { ownedId } from '../storage/aside.js';
import { openBatchedFileWriter, type BatchedFileWriter } from '../storage/batched-file-writer.js';
import { mkdirPrivate, mkdirp } from '../storage/made-directories.js';

/** The path of a blob kept under the layer store `storeDir`. */
export function keptBlobPath(storeDir: string, digest: Digest): string {
  return path.join(storeDir, 'blobs', 'sha256', digestHex(digest));
}

export interface BlobCacheEvents {
  /** A blob could not be kept (its write failed): said once by the caller; nothing more is kept by this pull. */
  notKept(error: unknown): void;
  /** A kept blob failed its check and was removed (it is fetched instead). */
  damaged(what: string, why: string): void;
}

export class BlobCache implements LocalBlobs {
  /** What this pull did with the machine's blobs: read from it, kept in it, found damaged there. */
  readonly counts = { read: 0, kept: 0, repaired: 0 };
  /** The blobs this pull read from the machine or kept there: what the record of its image names (for gc). */
  readonly used = new Set<Digest>();
  private stopped = false;
  /** The pins `find` made: removed by `release`. */
  private readonly pins: string[] = [];
  /** Blobs `keep` was given when adopting: kept by `adopt` once the destination holds them. */
  private readonly toAdopt = new Set<Digest>();

  /**
   * `adopting`: `keep` writes nothing, and `adopt` links the destination's file of the blob in its
   * place (a pull into an OCI layout on this machine: no second write of what it fetched), or
   * copies it where the destination is on another filesystem.
   */
  constructor(
    readonly storeDir: string,
    private readonly events: BlobCacheEvents,
    private readonly adopting = false,
  ) {}

  /**
   * The path of the kept copy of a blob, checked now, to be read until `release`; undefined when
   * none is kept (or it was damaged: removed). What is returned is a pin, a hardlink in tmp/: the
   * gc of another run (`--prune`) may remove the blob meanwhile, and the path must still read what
   * was checked. A pin's name carries its owner, so that one a killed run left is swept as stale.
   */
  async find(descriptor: Descriptor, what: string): Promise<string | undefined> {
    if (!descriptor.digest.startsWith('sha256:')) return undefined;
    const file = keptBlobPath(this.storeDir, descriptor.digest);
    const st = await fs.stat(file).catch(() => undefined);
    if (!st?.isFile()) return undefined;
    const pin = await this.pin(file);
    if (pin === null) return undefined; // gone since
    const use = pin ?? file;
    try {
      // Checked before it is used: a layer laid half from a bad copy could not be taken back.
      await verifyFile(use, { digest: descriptor.digest, size: descriptor.size, what: file });
    } catch (e) {
      if (pin) await this.unpin(pin);
      // Another user's store this process may not read: fetched, and left where it is.
      if (!isSmartError(e) || (e.code !== 'DIGEST_MISMATCH' && e.code !== 'SIZE_MISMATCH')) return undefined;
      this.events.damaged(what, e.message);
      await fs.rm(file, { force: true }).catch(() => undefined);
      this.counts.repaired++;
      return undefined;
    }
    this.counts.read++;
    this.used.add(descriptor.digest);
    return use;
  }

  async adopt(file: string, descriptor: Descriptor): Promise<void> {
    if (!this.toAdopt.delete(descriptor.digest) || this.stopped) return;
    const final = keptBlobPath(this.storeDir, descriptor.digest);
    try {
      await mkdirp(path.dirname(final));
      await fs.link(file, final);
    } catch (e) {
      if (isErrno(e, 'EEXIST')) {
        this.used.add(descriptor.digest); // kept by another pull meanwhile
        return;
      }
      // Another filesystem (a layout in a tmpfs /tmp, or on a volume the cache is not on), or one
      // without hardlinks: kept as a copy, one write of the compressed bytes, as a root filesystem's
      // pull keeps what it fetches; so that no pull fetches the layer again.
      const linkRefused = isErrno(e, 'EXDEV') || isErrno(e, 'EPERM') || isErrno(e, 'EMLINK') || isErrno(e, 'ENOTSUP');
      const failed = linkRefused ? await this.copyIn(file, final) : { error: e };
      if (failed) {
        this.stopped = true;
        this.events.notKept(failed.error);
        return;
      }
    }
    this.counts.kept++;
    this.used.add(descriptor.digest);
  }

  /** Copies `file` (a clone where the filesystem can) to `final` through tmp/; the failure when it cannot (nothing is left then). */
  private async copyIn(file: string, final: string): Promise<{ error: unknown } | undefined> {
    const tmp = path.join(this.storeDir, 'tmp', ownedId());
    try {
      await mkdirPrivate(path.dirname(tmp));
      await fs.copyFile(file, tmp, fsConstants.COPYFILE_EXCL | fsConstants.COPYFILE_FICLONE);
      await fs.rename(tmp, final);
      return undefined;
    } catch (error) {
      await fs.rm(tmp, { force: true }).catch(() => undefined);
      return { error };
    }
  }

  /** Removes the pins `find` made: once nothing reads the paths it returned. */
  async release(): Promise<void> {
    await Promise.all(this.pins.splice(0).map((p) => fs.rm(p, { force: true }).catch(() => undefined)));
  }

  private async unpin(pin: string): Promise<void> {
    this.pins.splice(this.pins.indexOf(pin), 1);
    await fs.rm(pin, { force: true }).catch(() => undefined);
  }

  /** A hardlink to `file` in tmp/; null when `file` is gone; undefined when no link can be made there (the file is read as it is). */
  private async pin(file: string): Promise<string | null | undefined> {
    const pin = path.join(this.storeDir, 'tmp', ownedId());
    try {
      await mkdirPrivate(path.dirname(pin));
    } catch {
      return undefined;
    }
    try {
      await fs.link(file, pin);
    } catch (e) {
      return isErrno(e, 'ENOENT') ? null : undefined;
    }
    this.pins.push(pin);
    return pin;
  }

  keep(blob: Readable, descriptor: Descriptor): Readable {
    if (this.stopped || !descriptor.digest.startsWith('sha256:')) return blob;
    if (this.adopting) {
      this.toAdopt.add(descriptor.digest);
      return blob;
    }
    const final = keptBlobPath(this.storeDir, descriptor.digest);
    const tmp = path.join(this.storeDir, 'tmp', ownedId());
    let file: BatchedFileWriter | undefined;
    let failed = false;
    let renamed = false;
    const fail = (e: unknown): void => {
      if (failed) return;
      failed = true;
      if (!this.stopped) {
        this.stopped = true;
        this.events.notKept(e);
      }
    };
    const opening = mkdirPrivate(path.dirname(tmp))
      .then(() => openBatchedFileWriter(tmp, 'wx'))
      .then((w) => {
        file = w;
        w.on('error', fail);
      }, fail);
    const cleanUp = async (): Promise<void> => {
      await opening;
      file?.destroy();
      if (!renamed) await fs.rm(tmp, { force: true }).catch(() => undefined);
    };
    const tee = new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        void opening.then(() => {
          if (failed || !file || file.write(chunk)) return callback(null, chunk);
          // The disk is a batch behind the download: it waits for the disk (or its failure).
          const go = (): void => {
            file!.off('drain', go).off('error', go).off('close', go);
            callback(null, chunk);
          };
          file.once('drain', go).once('error', go).once('close', go);
        });
      },
      // Reached only once the source has checked every byte (it errors in place of ending).
      flush: (callback) => {
        void (async () => {
          await opening;
          if (!failed && file) {
            try {
              const closed = once(file, 'close'); // rejects with the error of a write that failed
              file.end();
              await closed;
              await mkdirp(path.dirname(final));
              await fs.rename(tmp, final);
              renamed = true;
              this.counts.kept++;
              this.used.add(descriptor.digest);
            } catch (e) {
              fail(e);
            }
          }
          await cleanUp();
          callback();
        })();
      },
    });
    tee.on('error', () => undefined); // reaches the consumer through the stream
    blob.on('error', (e) => tee.destroy(e));
    tee.on('close', () => {
      blob.destroy();
      if (!renamed) {
        failed = true; // nothing more is written; what was is removed
        void cleanUp();
      }
    });
    blob.pipe(tee);
    return tee;
  }
}
