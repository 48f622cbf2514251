/**
 * A layer of the local layer store that cannot be laid down as it is: its index unreadable, or a
 * file it names gone (a cache directory restored in part by CI, a file removed by hand, another
 * run's gc meanwhile). Not a failure of the pull: the writer drops the layer from the store and
 * fetches it instead (rootfs/writer.ts). Its own module, so that the tree applier can say so
 * without loading the layer store.
 */
export class StoredLayerDamage extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'StoredLayerDamage';
  }
}
