/**
 * `rootfs:DIR` and `bundle:DIR`: the image flattened into a root filesystem (a bundle adds the
 * runtime `config.json` that `runc run` reads). Built in a hidden sibling directory and renamed
 * into place only when complete, so a failed or killed pull leaves the old DIR as it was and no
 * partial one.
 */
import { randomUUID } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import fs from 'node:fs/promises';
import pLimit from 'p-limit';
import type { LayerStore } from '../../cache/layer-store.js';
import path from 'node:path';
import { SmartError } from '../../errors.js';
import { shortDigest } from '../../oci/digest.js';
import type { Image, ImageWriteOptions, ImageWriteResult, ImageWriter, Layer, OpenOptions } from '../../oci/image.js';
import { makeRuntimeSpec } from './runtime-spec.js';
import { RootfsApplier } from './apply.js';

export interface RootfsWriterOptions {
  /** Write a runtime bundle (DIR/config.json + DIR/rootfs) instead of a bare root filesystem. */
  bundle: boolean;
  onWarning?: (message: string) => void;
  /** Where layers are kept between pulls; without one, layers stream straight into the tree. */
  layerStore?: LayerStore;
  /** Hardlink files from the layer store instead of cloning or copying them (read-only uses). */
  link?: boolean;
}

/** How files from the layer store are put into the tree, for --json. */
export type Materialize = 'reflink' | 'copy' | 'hardlink' | 'stream';

export class RootfsWriter implements ImageWriter {
  constructor(
    readonly name: string,
    private readonly dir: string,
    private readonly options: RootfsWriterOptions,
  ) {}

  async write(image: Image, options: ImageWriteOptions): Promise<ImageWriteResult> {
    const target = path.resolve(this.dir);
    if (target === path.parse(target).root || process.cwd().startsWith(`${target}${path.sep}`) || process.cwd() === target) {
      throw new SmartError('USAGE', `${this.name}: refusing to replace ${target}, which is / or holds the current directory`, { input: this.dir });
    }
    const existing = await fs.lstat(target).catch(() => undefined);
    if (existing && !existing.isDirectory()) {
      throw new SmartError('USAGE', `${this.name}: ${target} exists and is not a directory`, { input: this.dir });
    }
    const parent = path.dirname(target);
    await fs.mkdir(parent, { recursive: true });
    const staging = path.join(parent, `.${path.basename(target)}.smart-${randomUUID()}`);
    await fs.mkdir(staging, { mode: 0o755 });
    const details: Record<string, unknown> = {};
    try {
      const rootfs = this.options.bundle ? path.join(staging, 'rootfs') : staging;
      if (this.options.bundle) await fs.mkdir(rootfs, { mode: 0o755 });
      const applier = new RootfsApplier(rootfs, {
        preserveOwnership: process.getuid?.() === 0,
        ...(this.options.onWarning ? { onWarning: this.options.onWarning } : {}),
      });
      let materialize: Materialize = 'stream';
      if (this.options.layerStore) {
        materialize = this.options.link ? 'hardlink' : await probeReflink(this.options.layerStore.dir, staging);
        await this.viaLayerStore(image, applier, this.options.layerStore, options);
      } else {
        for (const layer of image.layers) {
          options.signal?.throwIfAborted();
          const what = `layer ${shortDigest(layer.descriptor.digest)} of ${image.name}`;
          const stats = await applier.applyLayer(await layer.openUncompressed(progressOptions(layer, options, options.signal)), what);
          options.onLayer?.({ digest: layer.descriptor.digest, diffId: layer.diffId, status: 'written', bytes: stats.bytes });
        }
      }
      await applier.finish();
      details.materialize = materialize;
      if (this.options.bundle) {
        const spec = await makeRuntimeSpec(image.config, rootfs);
        await fs.writeFile(path.join(staging, 'config.json'), `${JSON.stringify(spec, null, 2)}\n`);
      }
      await replaceDirectory(staging, target, existing !== undefined);
    } catch (e) {
      await fs.rm(staging, { recursive: true, force: true });
      throw e;
    }
    return {
      details: { path: target, ...(this.options.bundle ? { rootfs: path.join(target, 'rootfs'), config: path.join(target, 'config.json') } : {}), ...details },
    };
  }

  /**
   * Every layer is fetched, verified and unpacked into the layer store at once (up to `jobs` in
   * flight, in whatever order they finish), while the tree is built from them strictly in layer
   * order: layer i is laid down as soon as it and every layer below it are in the store. The
   * result is what applying the layers in order gives, whatever order the downloads end in.
   */
  private async viaLayerStore(image: Image, applier: RootfsApplier, store: LayerStore, options: ImageWriteOptions): Promise<void> {
    const controller = new AbortController();
    const signal = options.signal ? AbortSignal.any([options.signal, controller.signal]) : controller.signal;
    const limit = pLimit(Math.max(1, options.jobs));
    const fetched = image.layers.map((layer) =>
      limit(async () => {
        signal.throwIfAborted();
        return store.ensure(layer.diffId, () => layer.openUncompressed(progressOptions(layer, options, signal)), signal, `layer ${shortDigest(layer.descriptor.digest)} of ${image.name}`);
      }),
    );
    // The first failure is the one reported: layers aborted because of it fail too, later, and
    // the loop below may meet one of those first (it awaits the layers in order).
    let first: { error: unknown } | undefined;
    const fail = (e: unknown) => {
      if (first) return;
      first = { error: e };
      controller.abort(e);
    };
    for (const p of fetched) p.catch(fail);
    try {
      for (const [i, layer] of image.layers.entries()) {
        const how = await fetched[i]!;
        const what = `layer ${shortDigest(layer.descriptor.digest)} of ${image.name}`;
        const stats = await applier.applyEntries(store.entries(layer.diffId), what, { link: this.options.link ?? false });
        options.onLayer?.(
          how === 'fetched'
            ? { digest: layer.descriptor.digest, diffId: layer.diffId, status: 'written', bytes: stats.bytes }
            : { digest: layer.descriptor.digest, diffId: layer.diffId, status: 'skipped', reuse: { how: 'present' }, bytes: 0 },
        );
      }
    } catch (e) {
      fail(e);
      await Promise.allSettled(fetched);
      throw first!.error;
    }
    await store.recordImage(image.manifest.digest, image.name, image.layers.map((l) => l.diffId));
  }
}

/** Whether files of the store can be cloned (reflink) into the tree: btrfs and XFS can, ext4 and tmpfs copy. */
async function probeReflink(storeDir: string, tree: string): Promise<Materialize> {
  await fs.mkdir(storeDir, { recursive: true });
  const a = path.join(storeDir, `.reflink-probe-${randomUUID()}`);
  const b = path.join(tree, `.reflink-probe-${randomUUID()}`);
  try {
    await fs.writeFile(a, 'x');
    await fs.copyFile(a, b, fsConstants.COPYFILE_FICLONE_FORCE);
    return 'reflink';
  } catch {
    return 'copy';
  } finally {
    await fs.rm(a, { force: true });
    await fs.rm(b, { force: true });
  }
}

function progressOptions(layer: Layer, options: ImageWriteOptions, signal: AbortSignal | undefined): OpenOptions {
  const { onProgress } = options;
  const { digest, size } = layer.descriptor;
  return { ...(signal ? { signal } : {}), ...(onProgress ? { onBytes: (bytes: number) => onProgress({ digest, bytes, total: size }) } : {}) };
}

/** Puts `staging` at `target`: the old directory is moved aside first and removed only after. */
async function replaceDirectory(staging: string, target: string, exists: boolean): Promise<void> {
  if (!exists) {
    await fs.rename(staging, target);
    return;
  }
  const old = path.join(path.dirname(target), `.${path.basename(target)}.smart-old-${randomUUID()}`);
  await fs.rename(target, old);
  try {
    await fs.rename(staging, target);
  } catch (e) {
    await fs.rename(old, target).catch(() => undefined);
    throw e;
  }
  await fs.rm(old, { recursive: true, force: true });
}
