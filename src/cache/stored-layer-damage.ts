/**
 * A layer of the local layer store that cannot be laid down as it is: its index unreadable, or a
 * file it names gone (a cache directory restored in part by CI, a file removed by hand, another
 * run's gc meanwhile). Not a failure of the pull: the writer drops the layer from the store and
 * fetches it instead (rootfs/writer.ts). Its own module, so that the tree applier can say so
 * without loading the layer store.
 */
import { accessSync, constants as fsConstants } from 'node:fs';

export class StoredLayerDamage extends Error {
  /**
   * The layer may be whole, but this process may not read it: a store another user filled (a
   * root pull's /etc/shadow is mode 0640). The writer fetches the layer and leaves the store be.
   */
  readonly notReadable: boolean;

  constructor(message: string, options?: { cause?: unknown; notReadable?: boolean }) {
    super(message, options);
    this.name = 'StoredLayerDamage';
    this.notReadable = options?.notReadable ?? false;
  }
}

/** Whether `e`, from reading `file` of the layer store, is a refusal to read it (not damage). */
export function refusedToRead(e: unknown, file: string): boolean {
  const code = (e as NodeJS.ErrnoException)?.code;
  if (code !== 'EACCES' && code !== 'EPERM') return false;
  // copyFileSync names the source as the path whichever side failed: ask the source itself.
  try {
    accessSync(file, fsConstants.R_OK);
    return false;
  } catch {
    return true;
  }
}
