/** The shape of a compressing stage for layers (parallel-gzip.ts, zstd.ts): the bytes out, the diff id of the tar in. */
import type { Readable } from 'node:stream';
import type { Digest } from '../oci/digest.js';

export interface CompressedLayerStream {
  /** The compressed bytes; its consumer hashes them (the destination does, to name the blob). */
  stream: Readable;
  /** sha256 of the tar that went in: valid once `stream` has ended. */
  diffId(): Digest;
  uncompressedSize(): number;
}
