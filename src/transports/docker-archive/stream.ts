/**
 * Reads a `docker save` archive as a stream (stdin), never holding a layer in memory or on disk.
 * Docker writes manifest.json near the END, after the layers, so the image's shape is known only
 * when the stream is over: each layer is handed to the reader as it arrives (the copy compresses
 * and stores it at once), JSON members are kept, and the image is assembled at the end from
 * manifest.json (src/transports/streamed-archive.ts).
 */
import { type Readable, addAbortSignal } from 'node:stream';
import { SmartError, quoted } from '../../errors.js';
import { checkSize } from '../../limits.js';
import { MAX_CONFIG_BYTES, parseImageConfig } from '../../oci/config.js';
import type { StreamedImage, StreamedImageSource, StreamedLayer } from '../../oci/image.js';
import { archiveTarStream } from '../../pipeline/archive-stream.js';
import { missingLayer, readArchiveMembers } from '../streamed-archive.js';
import { MAX_ARCHIVE_MANIFEST_BYTES, parseArchiveManifest, selectArchiveEntry, type ArchiveSelection } from './manifest-json.js';

/** `docker-archive:-`: the image `input` carries, read once as it arrives. */
export function dockerArchiveStream(input: Readable, selection: ArchiveSelection, name: string): StreamedImageSource {
  return {
    name,
    streamed: true,
    read: async (visit, options = {}) => {
      if (options.signal) addAbortSignal(options.signal, input);
      // `docker save IMAGE | gzip` (or zstd, bzip2, xz), as `docker load` and skopeo take it. No
      // bound on the ratio: the tar inside ends at its end-of-archive blocks, and each layer in it
      // is checked against its digest.
      return readDockerArchiveStream(await archiveTarStream(input, name), selection, name, visit);
    },
  };
}

/** Reads the archive `input` carries, handing each layer to `onLayer` as it arrives (dockerArchiveStream's `read`); the image at its end. */
export async function readDockerArchiveStream<T>(
  input: Readable,
  selection: ArchiveSelection,
  name: string,
  onLayer: (layer: StreamedLayer) => Promise<T>,
): Promise<StreamedImage<T>> {
  const members = await readArchiveMembers(input, name, { kind: 'a docker-archive', limits: { 'manifest.json': MAX_ARCHIVE_MANIFEST_BYTES } }, onLayer);
  const { json, oversized, resolve } = members;
  const manifestBytes = json.get('manifest.json');
  if (!manifestBytes) {
    throw new SmartError('NOT_AN_IMAGE', `${name}: not a docker-archive (no manifest.json)`, {
      input: name,
      ...(json.has('index.json') || json.has('oci-layout') ? { hint: 'this looks like an OCI archive: use oci-archive:' } : {}),
    });
  }
  const entry = selectArchiveEntry(parseArchiveManifest(manifestBytes, name), selection, name);
  const configBytes = json.get(resolve(entry.Config));
  if (!configBytes) checkSize(oversized.get(resolve(entry.Config)) ?? 0, MAX_CONFIG_BYTES, `${name}: config ${quoted(entry.Config)}`, name);
  if (!configBytes) throw new SmartError('CORRUPT_ARCHIVE', `${name}: config ${quoted(entry.Config)} is not in the archive`, { input: name });
  const config = parseImageConfig(configBytes, `${name} config`);
  const layers = entry.Layers.map((l) => {
    const r = members.layers.get(resolve(l));
    if (r === undefined) throw missingLayer(members, l, `layer ${quoted(l)}`, name);
    return r;
  });
  return { configBytes, config, repoTags: entry.RepoTags ?? [], layers };
}
