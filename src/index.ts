/**
 * smartlayer as a library (`import { push, pull } from 'smartlayer'`): the verbs the CLI runs,
 * for a Node program, and the model types they speak in. Images are named as on the command line
 * (`docker-archive:img.tar`, `file:/srv/registry#team/app:1.0`, `docker://host/repo:tag`...).
 * Nothing here prints or exits: a failure is a `SmartError` (a stable `code`, the `input` at
 * fault, a `hint`), and progress, warnings and each layer's outcome come through callbacks.
 */
import { copyMode, transfer, type TransferRequest } from './ops/transfer.js';
import type { CopySummary } from './ops/copy.js';

/** What `push`, `pull` and `copy` take besides the two names (all optional; see TransferRequest). */
export type TransferOptions = Omit<TransferRequest, 'mode' | 'source' | 'destination'>;

/**
 * Copies `source` into a store (`file:`, `s3://`, `docker://`, `oci:`, `oci-archive:`,
 * `docker-archive:`), skipping every blob already there; refuses `rootfs:` and `bundle:`. The tag
 * is written last. With `cacheDir` (or `redisUrl`), what it learns is kept for the next run.
 */
export function push(source: string, destination: string, options: TransferOptions = {}): Promise<CopySummary> {
  return transfer({ ...options, mode: 'push', source, destination });
}

/** Copies `source` into any destination, root filesystems and runtime bundles included. */
export function pull(source: string, destination: string, options: TransferOptions = {}): Promise<CopySummary> {
  return transfer({ ...options, mode: 'pull', source, destination });
}

/**
 * Copies any sensible pair, as `smart copy` does: a push when `destination` names an image in a
 * store (`docker://`, `file:`, `s3://`: a multi-platform index is kept whole), else a pull.
 */
export function copy(source: string, destination: string, options: TransferOptions = {}): Promise<CopySummary> {
  return transfer({ ...options, mode: copyMode(destination), source, destination });
}

export type { CopySummary } from './ops/copy.js';
export type { TransferRequest } from './ops/transfer.js';

// The build cache: open a session (the metadata cache, the layer store), then index, plan, pull, warm.
export {
  CACHE_BUILDERS,
  cacheFromInstructions,
  defaultCacheTag,
  indexStore,
  lint,
  openCacheSession,
  planBuild,
  planForImage,
  pullForBuild,
  pullPlanned,
  warmForBuild,
  warmStore,
  type CacheBuilder,
  type CacheContext,
  type CacheFromInstructions,
  type CachePullOptions,
  type CachePullResult,
  type CacheSession,
  type IndexOptions,
  type IndexSummary,
  type PlanOptions,
  type PlanResult,
  type WarmResult,
} from './ops/cache.js';

// A read-only consistency check of a registry's storage or an OCI layout (`smart store check`).
export { checkStore, type StoreCheckOptions, type StoreCheckReport, type StoreProblem, type StoreProblemKind } from './ops/store-check.js';

// Names and the transports that read them.
export { parseImageName, TRANSPORTS, type ImageName } from './transports/all.js';
export type { RemoteOptions, Transport, TransportCapabilities } from './transports/transport.js';

// The model.
export type {
  BlobDestination,
  BlobReuse,
  Destination,
  Image,
  ImageSource,
  ImageWriter,
  Layer,
  LayerEvent,
  OpenOptions,
  ProgressEvent,
  Source,
  StreamedImageSource,
  StreamedLayer,
} from './oci/image.js';
export type { Descriptor, ImageIndex, ImageManifest, ParsedManifest, Platform } from './oci/manifest.js';
export type { ImageConfig } from './oci/config.js';
export type { Digest } from './oci/digest.js';
export { formatReference, parseReference, type Reference } from './oci/reference.js';
export { formatPlatform, hostPlatform, parsePlatform } from './oci/platform.js';
export { SmartError, isSmartError, type ErrorCode } from './errors.js';
