/**
 * Layers made present in the local layer store for the builds to come (`cache pull`, `cache warm`):
 * unpacked from the compressed blob a root filesystem pull kept on this machine when there is one
 * (cache/blob-cache.ts), else fetched. A layer on the machine is never fetched twice: a cron warm
 * after a pull reads the disk, not the registry.
 */
import { BlobCache } from '../../cache/blob-cache.js';
import type { LayerStore } from '../../cache/layer-store.js';
import { shortDigest } from '../../oci/digest.js';
import type { Layer, LocalBlobs } from '../../oci/image.js';

/** Where a layer came from: there already (or filled meanwhile by another run), a kept blob, the store it was read from. */
export type LayerFillHow = 'present' | 'kept' | 'fetched';

export class LayerStoreFiller {
  private readonly blobs: BlobCache;

  constructor(
    private readonly store: LayerStore,
    onWarning?: (message: string) => void,
  ) {
    this.blobs = new BlobCache(store.dir, {
      notKept: () => undefined, // nothing is kept here: the layer store keeps the layer itself
      damaged: (what, why) => onWarning?.(`${what} kept on this machine is damaged (${why}): removed, and fetched`),
    });
  }

  async ensure(layer: Layer, signal: AbortSignal | undefined, source: string): Promise<LayerFillHow> {
    const what = `layer ${shortDigest(layer.descriptor.digest)} of ${source}`;
    let kept = false;
    // Told, per layer, whether its blob was found here (the jobs of one filler run in parallel).
    const blobs: LocalBlobs = {
      find: async (descriptor, w) => {
        const file = await this.blobs.find(descriptor, w);
        kept = file !== undefined;
        return file;
      },
      keep: (blob) => blob,
    };
    const how = await this.store.ensure(layer.diffId, () => layer.openUncompressed({ ...(signal ? { signal } : {}), localBlobs: { blobs, keep: false } }), signal, what);
    return how !== 'fetched' ? 'present' : kept ? 'kept' : 'fetched';
  }

  /** Once no layer is being filled: the blobs read here are no longer pinned. */
  release(): Promise<void> {
    return this.blobs.release();
  }
}
