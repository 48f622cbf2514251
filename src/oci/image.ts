/**
 * The image model every transport adapts to, after go-containerregistry's v1 package: an image is
 * a manifest, a config and layers; a layer knows its digests and opens its streams.
 */
import type { Readable } from 'node:stream';
import type { Digest } from './digest.js';
import type { ImageConfig } from './config.js';
import type { Descriptor, ImageManifest, ParsedManifest, Platform } from './manifest.js';
import type { Compression } from './mediatypes.js';

export interface OpenOptions {
  signal?: AbortSignal;
  /** Told of each chunk of stored (compressed) bytes read, for progress. */
  onBytes?: (bytes: number) => void;
  /**
   * Compressed blobs kept on this machine: a layer's blob is read from there when it is there, and
   * a blob fetched from elsewhere than a local file is kept there as it passes when `keep`.
   */
  localBlobs?: { blobs: LocalBlobs; keep: boolean };
}

/** Compressed blobs kept on this machine, so that a pull never fetches one twice (cache/blob-cache.ts). */
export interface LocalBlobs {
  /** The path of a copy of the blob checked against its digest now; undefined when there is none (a damaged one is removed). */
  find(descriptor: Descriptor, what: string): Promise<string | undefined>;
  /** `blob` (which errors in place of ending when its bytes are not the descriptor's) passed on as it is, and kept once it has ended. */
  keep(blob: Readable, descriptor: Descriptor): Readable;
  /**
   * Keeps a file a destination wrote of a blob `keep` was given (a layout's blob, checked as it was
   * written), as a hardlink: no second write. Nothing when `keep` was not given the blob.
   */
  adopt?(file: string, descriptor: Descriptor): Promise<void>;
}

/**
 * One layer of an image.
 *
 * Contract: every stream a layer opens is verified while it flows. `open()` checks the stored bytes
 * against `descriptor.digest` and `descriptor.size`; `openUncompressed()` checks the tar against
 * `diffId`. On a mismatch the stream errors in place of ending, so a consumer that commits only
 * after a clean end never keeps bad bytes. The caller owns the stream and must consume or destroy it.
 */
export interface Layer {
  /** The blob as the source stores it. For a docker-archive layer it is the uncompressed tar, digest = diff id. */
  readonly descriptor: Descriptor;
  /** sha256 of the uncompressed tar, from the image config. */
  readonly diffId: Digest;
  open(options?: OpenOptions): Promise<Readable>;
  openUncompressed(options?: OpenOptions): Promise<Readable>;
}

/** A single-platform image whose manifest and config are already fetched and verified. */
export interface Image {
  /** The source, for messages (`oci:dir:tag`). */
  readonly name: string;
  /** The manifest as stored: its bytes, digest and parsed form. */
  readonly manifest: ParsedManifest & { kind: 'manifest'; manifest: ImageManifest };
  readonly configBytes: Buffer;
  readonly config: ImageConfig;
  readonly layers: readonly Layer[];
  /** Tags the source knows for this image, e.g. `RepoTags` of a docker-archive, `repo:tag` of a store. */
  readonly repoTags: readonly string[];
}

/**
 * A random-access image source: what a transport alone can answer. Everything else (platform
 * choice, config parsing, layer objects) is derived by `resolveImage` in `pipeline/layers.ts`.
 *
 * Contract: `getBlob` returns a stream verified against `descriptor` (digest and size), erroring
 * instead of ending on a mismatch. `close` releases files and connections; it is always called.
 */
export interface ImageSource {
  readonly name: string;
  /** The top-level manifest the reference names: an image manifest or an index. */
  getManifest(): Promise<ParsedManifest>;
  /** A manifest named by an index. */
  getManifestByDigest(descriptor: Descriptor): Promise<ParsedManifest>;
  /**
   * What the reference names now, without reading the manifest: one HEAD on a registry, one read
   * of the tag's link in a store. Undefined when the source cannot tell that cheaply (then
   * `getManifest` answers). Present on sources whose tags move (stores), so that a cache of
   * manifests by digest can serve a tag and still follow it.
   */
  headManifest?(): Promise<ManifestHead | undefined>;
  getBlob(descriptor: Descriptor, options?: OpenOptions): Promise<Readable>;
  /**
   * Whether `getBlob` would find the blob now, asked without reading it (a store's link and blob
   * file, a registry's HEAD): present on stores, so that one of their images that lost a blob is
   * passed over before its first byte is used (a cache candidate), not found out mid-copy.
   */
  hasBlob?(descriptor: Descriptor, options?: { signal?: AbortSignal }): Promise<boolean>;
  /**
   * Bytes `start`..`endInclusive` of a blob, unverified (the caller verifies the whole): present
   * on sources where reading ranges at once pays (registries, S3; not local files, read whole),
   * for large blobs fetched in parallel.
   * In order, as the chunks they arrived in, not joined: each must not change once given (they
   * are hashed on another thread), and a large blob's bytes are not copied again.
   */
  getBlobRange?(descriptor: Descriptor, start: number, endInclusive: number, options?: OpenOptions): Promise<Buffer[]>;
  /** Tags this source gives the image it names (for docker-archive output); may be empty. */
  repoTags(): readonly string[];
  /** Where each blob read so far came from (digest → registry), for sources with several (mirrors). */
  origins?(): Record<string, string>;
  close(): Promise<void>;
}

/**
 * A layer whose digests are known only once its bytes have been read, as go-containerregistry's
 * `stream.Layer`: a member of a docker-archive read from a pipe. Its bytes can be read once.
 */
export interface StreamedLayer {
  /** Its name in the stream (an archive member): progress is told under it until its digest is known. */
  readonly member: string;
  /** For messages: `layer MEMBER of NAME`. */
  readonly what: string;
  /** As its first bytes show. */
  readonly compression: Compression;
  /** Its size in the stream (compressed, when it is), where the stream says: bounds what it may decompress to. */
  readonly size?: number;
  /**
   * The sha256 its name states for its bytes (`blobs/sha256/<hex>` as Docker 25+ saves,
   * `<hex>.tar` as containers/image and our writer do): a claim, checked when the bytes are read.
   */
  readonly namedDigest?: Digest;
  /**
   * A blob of an OCI archive that is no layer and too large, or not JSON, to keep in memory (an
   * attestation's SBOM, a signature): stored as it is under `namedDigest`, for an index copied
   * whole; never compressed, never taken as a layer.
   */
  readonly opaque?: true;
  /** The bytes, verified by nothing yet: consumed (or destroyed) by the reader before the next layer can arrive. */
  readonly stream: Readable;
}

/** What a streamed image turned out to be, once its stream has ended. */
export interface StreamedImage<T> {
  configBytes: Buffer;
  config: ImageConfig;
  repoTags: string[];
  /** What the reader returned for each layer, in the image's order (the archive's may differ). */
  layers: T[];
  /**
   * The image's manifest as the stream holds it (an OCI archive's; a docker-archive has none):
   * kept byte for byte where its layers are stored as they are.
   */
  manifest?: ParsedManifest & { kind: 'manifest' };
  /** The index the manifest was picked from by platform (an OCI archive's), if it was one. */
  index?: StreamedIndex;
}

/** An index read from a stream: a copy of it whole finds its layers stored by the reader, the rest in `source`. */
export interface StreamedIndex {
  top: ParsedManifest & { kind: 'index' };
  /** The index's manifests, configs and other small JSON blobs as the stream held them; layers are not readable here. */
  source: ImageSource;
}

/** How a stream is read: `signal` stops it (destroying the input); `platform` picks an image from an index. */
export interface StreamReadOptions {
  signal?: AbortSignal;
  platform?: Platform;
  /**
   * True for an index the reader will copy whole: one that names no image for `platform` (an
   * arm64 build pushed from an amd64 runner) is then no error (see StreamedIndexOnly).
   */
  wholeIndex?: (top: ParsedManifest & { kind: 'index' }) => boolean;
}

/** A stream's index that names no image for the platform asked, read to copy it whole: `unpicked` says why there is no image. */
export interface StreamedIndexOnly {
  index: StreamedIndex;
  unpicked: Error;
}

/**
 * An image read from a stream (`docker-archive:-`, `oci-archive:-`): each layer becomes known as
 * its bytes arrive, the config and the order of the layers only at the end. Read once, never
 * reopened.
 */
export interface StreamedImageSource {
  readonly name: string;
  readonly streamed: true;
  /**
   * Reads the stream, handing each layer to `visit` as it arrives (one at a time, in the archive's
   * order), and resolves to the image with what `visit` returned for each of its layers.
   */
  read<T>(visit: (layer: StreamedLayer) => Promise<T>, options?: StreamReadOptions): Promise<StreamedImage<T> | StreamedIndexOnly>;
}

/** What a copy reads: a random-access source, whose layers are known up front, or a stream. */
export type Source = ImageSource | StreamedImageSource;

export function isStreamed(source: Source): source is StreamedImageSource {
  return 'streamed' in source && source.streamed === true;
}

/** A top-level manifest as a store names it, before its bytes are read. */
export interface ManifestHead {
  digest: Digest;
  /** As the store declares it, when it does. */
  mediaType?: string;
  size?: number;
}

/** What a destination does to layers (as containers/image's DesiredLayerCompression). */
export type LayerCompressionPolicy = 'compress' | 'preserve' | 'decompress';

/** How a destination came to hold a blob without receiving its bytes. */
export interface BlobReuse {
  how: 'present' | 'mounted';
  /** The repository it was mounted from, when one. */
  from?: string;
}

/** Result of storing one blob. */
export interface StoredBlob {
  digest: Digest;
  size: number;
  /** The destination held these bytes already (found once their digest was known, at their end): nothing was written. */
  present?: true;
}

export interface PutBlobInfo {
  mediaType: string;
  /** When known, the destination verifies the bytes against it and refuses a mismatch. */
  digest?: Digest;
  size?: number;
  /**
   * The stream is verified upstream against `digest` and `size` (a Layer's `open()`, an
   * ImageSource's `getBlob`): it errors in place of its end on a mismatch, so the destination need
   * not hash it again, only keep nothing unless it ends cleanly. Hashing every byte twice costs a
   * core-second per ~2.5 GB here, on a path whose peers hash once.
   */
  verified?: boolean;
  /** Aborting it stops the write and removes what was written, as any other failure does. */
  signal?: AbortSignal;
}

/**
 * A content-addressed destination (registry storage, OCI layout): blobs, then manifests, then the tag.
 *
 * Contract (as containers/image's ImageDestination): blobs are stored before any manifest that names
 * them; `putBlob` consumes the stream and, if it errors or the bytes do not match `info.digest`,
 * fails AND leaves nothing visible. Nothing a user looks at (a tag, an index entry) changes before
 * `commit`. After a failure the caller calls `abort`, which removes temporary data.
 */
export interface BlobDestination {
  readonly name: string;
  /** Names the blob namespace (a whole store, not one repository) for facts cached about it. */
  readonly cacheScope: string;
  readonly layerCompression: LayerCompressionPolicy;
  /** The repository written, in destinations that have repositories (registries and their storage). */
  readonly repository?: string;
  /** The manifest digest the destination's name requires (`REPO@sha256:…`): a copy of another is refused. */
  readonly namedDigest?: Digest;
  /**
   * A source over `repository` of this same store, to check a cached fact against what the store
   * holds: manifests by digest (`getManifestByDigest`) and blobs, verified as any source's. It
   * names no image (`getManifest` is not for it). Closing it leaves the destination's connections open.
   */
  storedSource?(repository: string): ImageSource;
  supportsManifestType(mediaType: string): boolean;
  /**
   * If the blob is already there, or can be made available without its bytes (linked or mounted
   * into this repository from another), does so and says how; undefined when it must be sent.
   */
  reuseBlob(descriptor: Descriptor): Promise<BlobReuse | undefined>;
  putBlob(stream: Readable, info: PutBlobInfo): Promise<StoredBlob>;
  /** The local file a blob put here is (an OCI layout on this machine), for LocalBlobs.adopt. */
  localBlobFile?(digest: Digest): string;
  /**
   * Stores manifest bytes (an image manifest or an index); does not tag them. A registry, and its
   * storage written directly, refuse a manifest naming a blob the repository no longer holds (one
   * removed since it was stored, by a garbage collection).
   */
  putManifest(manifest: ParsedManifest): Promise<void>;
  /**
   * The digest the destination's tag points at (undefined: no tag, or not known cheaply), as first
   * asked in this copy: a copy asks at its start and again before it commits, one request.
   * A destination only tags manifests whose blobs it holds, so an equal digest means nothing to do.
   */
  currentDigest?(): Promise<Digest | undefined>;
  /** Makes the top-level manifest visible under the destination's tag, last. */
  commit(top: ParsedManifest): Promise<void>;
  abort(): Promise<void>;
  /** What this destination removed of the leftovers of killed runs (for `--json`); after commit. */
  cleaned?(): Promise<{ path: string; bytes: number }[]>;
  /** Releases connections and files; called once at the end, after commit or abort. */
  close(): Promise<void>;
}

/**
 * A destination that consumes a whole resolved image (docker-archive, rootfs, bundle): the narrow
 * variant of a destination for formats that are not content-addressed. Contract: nothing is
 * visible at the destination until `write` resolves (built aside, renamed into place), and a
 * failure leaves it as it was.
 */
export interface ImageWriter {
  readonly name: string;
  write(image: Image, options: ImageWriteOptions): Promise<ImageWriteResult>;
  /** The copy failed (in `write` or before it): takes away what opening the writer made, such as the directories on the way to it. */
  abandon?(): Promise<void>;
}

/** Where a copy writes: blob by blob, or a whole image at once. */
export type Destination = BlobDestination | ImageWriter;

export function isImageWriter(dest: Destination): dest is ImageWriter {
  return 'write' in dest;
}

export interface ImageWriteOptions {
  signal?: AbortSignal;
  jobs: number;
  /** The machine's kept blobs, read (and kept) as layers are opened (see OpenOptions.localBlobs). */
  localBlobs?: { blobs: LocalBlobs; keep: boolean };
  onLayer?: (event: LayerEvent) => void;
  /** Bytes of a layer's stored blob read so far (a delta), for progress displays. */
  onProgress?: (event: ProgressEvent) => void;
}

export interface ProgressEvent {
  /**
   * The layer as the source names it: its digest there, or its member in an archive read as a
   * stream (whose digest is known only at its end). LayerEvent.layer names it the same way.
   */
  layer: string;
  /** Bytes read since the last event of this layer. */
  bytes: number;
  /** The blob's size when known. */
  total?: number;
}

export interface ImageWriteResult {
  /** Extra facts for `--json`, e.g. the path written. */
  details?: Record<string, unknown>;
}

export interface LayerEvent {
  /** The layer's blob at the destination. */
  digest: string;
  /** The layer as its progress events named it (ProgressEvent.layer), when that is not `digest` (a layer compressed on the way). */
  layer?: string;
  diffId?: string;
  status: 'pushed' | 'skipped' | 'written' | 'foreign';
  /** For skipped blobs: already present, or mounted/linked from another repository. */
  reuse?: BlobReuse;
  /** Bytes that crossed to the destination (0 when skipped). */
  bytes: number;
  mediaType?: string;
}
