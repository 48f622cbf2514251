/**
 * `rootfs:DIR` and `bundle:DIR`: the image flattened into a root filesystem (a bundle adds the
 * runtime `config.json` that `runc run` reads). Built in a hidden sibling directory and renamed
 * into place only when complete, so a failed or killed pull leaves the old DIR as it was and no
 * partial one.
 */
import { randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { SmartError } from '../../errors.js';
import { shortDigest } from '../../oci/digest.js';
import type { Image, ImageWriteOptions, ImageWriteResult, ImageWriter } from '../../oci/image.js';
import { makeRuntimeSpec } from './runtime-spec.js';
import { RootfsApplier } from './apply.js';

export interface RootfsWriterOptions {
  /** Write a runtime bundle (DIR/config.json + DIR/rootfs) instead of a bare root filesystem. */
  bundle: boolean;
  onWarning?: (message: string) => void;
}

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
    try {
      const rootfs = this.options.bundle ? path.join(staging, 'rootfs') : staging;
      if (this.options.bundle) await fs.mkdir(rootfs, { mode: 0o755 });
      const applier = new RootfsApplier(rootfs, {
        preserveOwnership: process.getuid?.() === 0,
        ...(this.options.onWarning ? { onWarning: this.options.onWarning } : {}),
      });
      for (const layer of image.layers) {
        options.signal?.throwIfAborted();
        const what = `layer ${shortDigest(layer.descriptor.digest)} of ${image.name}`;
        const stats = await applier.applyLayer(await layer.openUncompressed(options), what);
        options.onLayer?.({ digest: layer.descriptor.digest, diffId: layer.diffId, status: 'written', bytes: stats.bytes });
      }
      await applier.finish();
      if (this.options.bundle) {
        const spec = await makeRuntimeSpec(image.config, rootfs);
        await fs.writeFile(path.join(staging, 'config.json'), `${JSON.stringify(spec, null, 2)}\n`);
      }
      await replaceDirectory(staging, target, existing !== undefined);
    } catch (e) {
      await fs.rm(staging, { recursive: true, force: true });
      throw e;
    }
    return { details: { path: target, ...(this.options.bundle ? { rootfs: path.join(target, 'rootfs'), config: path.join(target, 'config.json') } : {}) } };
  }
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
