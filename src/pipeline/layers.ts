/**
 * Layers of a random-access source, their streams verified as they flow (go-containerregistry's
 * `partial`, the part that streams; the pure part is oci/partial.ts): a layer's blob against its
 * digest and size, read in parallel ranges when the source can; its tar, decompressed here, against
 * its diff id. And `resolveImage`, the single-platform image a source names, made of such layers.
 * The decompressors and the ranged reader are loaded when a layer is first opened: a push that
 * finds every blob in place never opens one.
 */
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import { Transform, addAbortSignal, type Readable } from 'node:stream';
import { SmartError, quoted } from '../errors.js';
import { MAX_CONFIG_BYTES, parseImageConfig } from '../oci/config.js';
import { sha256Digest, shortDigest, type Digest } from '../oci/digest.js';
import type { Image, ImageSource, Layer, OpenOptions } from '../oci/image.js';
import type { Descriptor, ParsedManifest } from '../oci/manifest.js';
import { layerCompression, sniffCompression, type Compression } from '../oci/mediatypes.js';
import { checkContainerImage, checkLayersMatchConfig, readBlob, resolvePlatformManifest } from '../oci/partial.js';
import type { Platform } from '../oci/platform.js';
import { peek } from './archive-stream.js';
import { verifiedStream } from './digest-stream.js';
import type { GunzipEngine } from './gunzip.js';
import { fileRangeOf, localFileOf, markFileRange, markLocalFile } from './local-file.js';

/** Compressed layers smaller than this are gunzipped by Node's zlib rather than by an igzip process. */
export const IN_PROCESS_GUNZIP_BELOW = 256 * 1024;

/**
 * The gunzip engine for a blob of `size` bytes: `engine`, except that a small blob is gunzipped by
 * zlib (undefined) rather than by an igzip process: starting one costs the main thread about what
 * zlib takes for a few hundred KiB, and images often have several tiny layers.
 */
export function gunzipEngineFor(engine: GunzipEngine, size: number): GunzipEngine | undefined {
  return engine.program && size < IN_PROCESS_GUNZIP_BELOW ? undefined : engine;
}

/** A layer whose streams come from `source.getBlob` (verified by the source) and are decompressed here. */
export function layerFromDescriptor(source: ImageSource, descriptor: Descriptor, diffId: Digest): Layer {
  const what = `layer ${shortDigest(descriptor.digest)} of ${source.name}`;
  return {
    descriptor,
    diffId,
    open: async (options?: OpenOptions) => abortable(counted(await openLocalOrFetch(source, descriptor, what, options), options?.onBytes), options?.signal),
    openUncompressed: async (options?: OpenOptions) => {
      if (layerCompression(descriptor.mediaType) === undefined) {
        throw new SmartError('UNSUPPORTED', `${what}: unknown layer media type ${quoted(descriptor.mediaType, 100)}`, { input: descriptor.digest });
      }
      // Decompressed as its bytes are compressed, whatever its media type says (a gzip blob typed
      // as a plain tar): as containerd unpacks a layer, and as a stream's layers are read here.
      const { decompress } = await import('./compression.js');
      const opened = abortable(counted(await openLocalOrFetch(source, descriptor, what, options), options?.onBytes), options?.signal);
      const { compression, blob } = await sniffedBlob(opened);
      const gunzip = compression === 'gzip' ? gunzipEngineFor(await (await import('./parallel-gzip.js')).chooseGunzip(), descriptor.size) : undefined;
      // The tar is checked against its diff id as it streams.
      const verify = { digest: diffId, what: `${what} (uncompressed)` };
      return decompress(blob, compression, what, { compressedSize: descriptor.size, verify, ...(gunzip ? { gunzip } : {}) });
    },
  };
}

/** Enough first bytes for sniffCompression to tell gzip and zstd from a tar. */
const LAYER_MAGIC_BYTES = 4;

/**
 * How `blob` is compressed, by its first bytes (gzip, zstd, else a tar), and the stream to read it
 * from. A stream marked as a local file or a range of one is told by reading the file there, not
 * the stream: a decompressor may then still read the file itself. What fails the stream meanwhile
 * is kept for its reader (`errored`), as peek keeps it.
 */
export async function sniffedBlob(blob: Readable): Promise<{ compression: Compression; blob: Readable }> {
  const file = localFileOf(blob);
  const range = file ? undefined : fileRangeOf(blob);
  if (file || range) {
    blob.on('error', () => undefined);
    // A file that cannot be read here is read through the stream, which says why.
    const head = await readHead((file ?? range)!.path, range?.offset ?? 0, Math.min(LAYER_MAGIC_BYTES, range?.length ?? LAYER_MAGIC_BYTES)).catch(() => undefined);
    if (head) return { compression: sniffCompression(head), blob };
  }
  const { head, stream } = await peek(blob, LAYER_MAGIC_BYTES);
  return { compression: sniffCompression(head), blob: stream };
}

async function readHead(file: string, offset: number, length: number): Promise<Buffer> {
  const handle = await fs.open(file, 'r');
  try {
    const head = Buffer.alloc(length);
    const { bytesRead } = await handle.read(head, 0, length, offset);
    return head.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

/**
 * A layer's blob, verified: from the machine's own copy when `options.localBlobs` holds one (read
 * as the local file it is, so decompressors read it themselves), else from the source, and kept
 * on the machine as it passes when asked, unless the source is a local file already.
 */
async function openLocalOrFetch(source: ImageSource, descriptor: Descriptor, what: string, options: OpenOptions | undefined): Promise<Readable> {
  const local = options?.localBlobs;
  const file = await local?.blobs.find(descriptor, what);
  if (file !== undefined) {
    const raw = markLocalFile(createReadStream(file), { path: file, shared: true });
    return verifiedStream(raw, { digest: descriptor.digest, size: descriptor.size, what: `blob ${shortDigest(descriptor.digest)} kept on this machine (${file})` });
  }
  const blob = await openBlob(source, descriptor, options);
  return local?.keep && !localFileOf(blob) && !fileRangeOf(blob) ? local.blobs.keep(blob, descriptor) : blob;
}

/**
 * A blob's verified stream: a large one, where the source can read ranges, whole while one
 * connection is fast, else the rest in parallel ranges (wholeThenRanged).
 */
async function openBlob(source: ImageSource, descriptor: Descriptor, options?: OpenOptions): Promise<Readable> {
  if (!source.getBlobRange) return source.getBlob(descriptor, options);
  const { FAST_ENOUGH, PROBE_BYTES, RANGED_CHUNK_SIZE, RANGED_CONCURRENCY, RANGED_MIN_SIZE, wholeThenRanged } = await import('./ranged.js');
  if (descriptor.size < RANGED_MIN_SIZE) return source.getBlob(descriptor, options);
  return wholeThenRanged(
    () => source.getBlob(descriptor, options),
    (start, end) => source.getBlobRange!(descriptor, start, end, options),
    {
      chunkSize: RANGED_CHUNK_SIZE,
      concurrency: RANGED_CONCURRENCY,
      ...(options?.signal ? { signal: options.signal } : {}),
      expect: { digest: descriptor.digest, size: descriptor.size, what: `blob ${shortDigest(descriptor.digest)} of ${source.name}` },
      probeBytes: PROBE_BYTES,
      fastEnough: FAST_ENOUGH,
    },
  );
}

/** Destroys `stream` when `signal` aborts: every source then stops promptly (Ctrl-C, --timeout). */
function abortable(stream: Readable, signal: AbortSignal | undefined): Readable {
  return signal ? addAbortSignal(signal, stream) : stream;
}

/** `stream` as it is, or passed through a counter telling `onBytes` of every chunk. */
export function counted(stream: Readable, onBytes: ((n: number) => void) | undefined): Readable {
  if (!onBytes) return stream;
  const counter = new Transform({
    transform(chunk: Buffer, _e, cb) {
      onBytes(chunk.length);
      cb(null, chunk);
    },
  });
  counter.on('error', () => undefined); // delivered to the consumer through `errored`
  stream.on('error', (e) => counter.destroy(e));
  counter.on('close', () => stream.destroy());
  // Piped at the consumer's first read, not now: a reader that takes a marked file below reads it
  // itself and never reads this stream, and what a pipe started now would have read ahead (a few
  // hundred KiB) would be counted as well as the file's bytes.
  let piped = false;
  const read = counter._read.bind(counter);
  counter._read = (size: number) => {
    if (!piped) {
      piped = true;
      stream.pipe(counter);
    }
    read(size);
  };
  const file = localFileOf(stream);
  // A writer that copies the file in the kernel tells the bytes it verifies instead.
  if (file) markLocalFile(counter, { ...file, onBytes: file.onBytes ? (n) => (file.onBytes!(n), onBytes(n)) : onBytes });
  const range = fileRangeOf(stream);
  if (range) markFileRange(counter, { ...range, onBytes: range.onBytes ? (n) => (range.onBytes!(n), onBytes(n)) : onBytes });
  return counter;
}

/**
 * Resolves a source to a single-platform image with its config fetched, verified and parsed.
 * `top`: the source's top manifest when the caller has read it already (not read again: a second
 * read costs a registry a round trip, and could answer differently).
 */
export async function resolveImage(source: ImageSource, platform: Platform, top?: ParsedManifest): Promise<Image> {
  const manifest = await resolvePlatformManifest(source, platform, top);
  checkContainerImage(source.name, manifest.manifest);
  const configBytes = await readBlob(source, manifest.manifest.config, MAX_CONFIG_BYTES);
  if (sha256Digest(configBytes) !== manifest.manifest.config.digest) {
    throw new SmartError('DIGEST_MISMATCH', `${source.name}: config does not match ${manifest.manifest.config.digest}`);
  }
  const config = parseImageConfig(configBytes, `${source.name} config ${shortDigest(manifest.manifest.config.digest)}`);
  checkLayersMatchConfig(source.name, manifest.manifest, config);
  const layers = manifest.manifest.layers.map((d, i) => layerFromDescriptor(source, d, config.rootfs.diff_ids[i]!));
  return { name: source.name, manifest, configBytes, config, layers, repoTags: source.repoTags() };
}
