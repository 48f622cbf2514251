/**
 * `oci-archive:-`: an OCI layout in a tar, read once as it arrives (BuildKit's `--output
 * type=oci,dest=-`, a tar of a layout piped over ssh), never holding a layer in memory or on disk.
 * Writers order the members differently (containers/image and this project: blobs, then
 * index.json; a tar of a layout directory: as the directory lists them), so nothing is assumed:
 * every layer blob goes to the reader as it passes, the JSON blobs are kept, and at the end the
 * image is picked from them as from a layout (by tag and platform, layout.ts). Blobs of other images in the
 * archive (other platforms, attestations) are stored too, as they pass: which ones the picked image
 * needs, or whether the whole index is copied, is known only at the end. So is every blob that is
 * neither a layer nor JSON small enough to hold (an SBOM of many MiB, a signature): stored as it is.
 */
import { Readable, addAbortSignal } from 'node:stream';
import { SmartError, isSmartError } from '../../errors.js';
import { checkSize } from '../../limits.js';
import { MAX_CONFIG_BYTES } from '../../oci/config.js';
import type { Image, StreamReadOptions, StreamedImage, StreamedImageSource, StreamedIndexOnly, StreamedLayer } from '../../oci/image.js';
import { MAX_MANIFEST_BYTES, parseManifest, type ParsedManifest, type Platform } from '../../oci/manifest.js';
import { MediaType, isForeignLayer } from '../../oci/mediatypes.js';
import { hostPlatform } from '../../oci/platform.js';
import { archiveTarStream } from '../../pipeline/archive-stream.js';
import { resolveImage } from '../../pipeline/layers.js';
import { missingLayer, readArchiveMembers, unkeptLink, type ArchiveMembers } from '../streamed-archive.js';
import { OciLayoutSource, pickIndexEntry, type LayoutFiles } from './layout.js';
import { layoutPath, memberName } from './paths.js';

/** `oci-archive:-` (or a pipe, or a compressed archive): the image `input` carries, read once as it arrives. */
export function ociArchiveStream(input: Readable, tag: string | undefined, name: string): StreamedImageSource {
  return {
    name,
    streamed: true,
    read: async (visit, options = {}) => {
      if (options.signal) addAbortSignal(options.signal, input);
      return readOciArchiveStream(await archiveTarStream(input, name), tag, name, visit, options.platform ?? hostPlatform(), options.wholeIndex);
    },
  };
}

/** Reads the archive `input` carries, handing each layer blob to `onLayer` as it arrives; the image `tag` and `platform` pick, at its end. */
export async function readOciArchiveStream<T>(
  input: Readable,
  tag: string | undefined,
  name: string,
  onLayer: (layer: StreamedLayer) => Promise<T>,
  platform: Platform,
  wholeIndex?: StreamReadOptions['wholeIndex'],
): Promise<StreamedImage<T> | StreamedIndexOnly> {
  const indexMember = memberName(layoutPath({ kind: 'index' }));
  // index.json ahead of the blobs (a tar of a layout directory may list it first): an image it
  // does not name (no such tag, or several images and no tag) is refused before a blob is stored,
  // with the error the end would give. Refused when the next blob comes, not at once: until then a
  // later index.json may replace it (`tar -r` appends an updated one; the archive as a file, as
  // `tar x`, takes the last), and one that came after every blob is left to the end. One that names
  // no image at all (a placeholder written before the images) is never refused early, nor is one
  // that does not parse: the end judges them, by the last index.json.
  let refusal: { error: unknown } | undefined;
  const earlyChoice = (member: string, bytes: Buffer): void => {
    if (member !== indexMember) return;
    refusal = undefined;
    let parsed: ParsedManifest;
    try {
      parsed = parseManifest(bytes, MediaType.OCI_INDEX, `${name} index.json`);
    } catch {
      return;
    }
    if (parsed.kind !== 'index' || parsed.index.manifests.length === 0) return;
    try {
      pickIndexEntry(parsed.index, tag, name);
    } catch (e) {
      refusal = { error: e };
    }
  };
  const onBlob = async (layer: StreamedLayer): Promise<T> => {
    if (refusal) throw refusal.error;
    return onLayer(layer);
  };
  const members = await readArchiveMembers(input, name, { kind: 'an OCI archive', limits: { [indexMember]: MAX_MANIFEST_BYTES }, opaqueBlobs: true, onJson: earlyChoice }, onBlob);
  // The JSON kept, read as a layout is: the same choice of image, the same checks, the same errors.
  const source = new OciLayoutSource(name, keptFiles(members, name), tag);
  const top = await source.getManifest();
  let image: Image;
  try {
    image = await resolveImage(source, platform, top);
  } catch (e) {
    // An index copied whole needs no image of this machine's platform (a cross-built one has none).
    if (top.kind === 'index' && isSmartError(e) && e.code === 'PLATFORM_NOT_FOUND' && wholeIndex?.(top)) return { index: { top, source }, unpicked: e };
    throw e;
  }
  const layers = image.manifest.manifest.layers.map((d) => {
    const member = memberName(layoutPath({ kind: 'blob', digest: d.digest }));
    // Through a link too: GNU tar stores a second name of one file (a layout with a blob linked
    // elsewhere) as a hard link to the first it wrote.
    const held = members.resolve(member);
    const r = members.opaque.has(held) ? undefined : members.layers.get(held);
    if (r !== undefined) return r;
    if (isForeignLayer(d.mediaType)) {
      throw new SmartError('UNSUPPORTED', `${name}: layer ${d.digest} is foreign (${d.mediaType}), which a streamed archive cannot carry`, { input: name, hint: 'give the archive as a file' });
    }
    throw missingLayer(members, member, `layer ${d.digest}`, name);
  });
  return {
    configBytes: image.configBytes,
    config: image.config,
    repoTags: [],
    layers,
    manifest: image.manifest,
    ...(top.kind === 'index' ? { index: { top, source } } : {}),
  };
}

/** The layout's small files as the archive held them: index.json, oci-layout, manifests, configs. */
function keptFiles(members: ArchiveMembers<unknown>, name: string): LayoutFiles {
  const getContent = async (p: string, maxBytes?: number): Promise<Buffer> => {
    const member = members.resolve(memberName(p));
    const bytes = members.json.get(member);
    if (bytes) {
      if (maxBytes !== undefined) checkSize(bytes.length, maxBytes, `${name}: ${member}`, name);
      return bytes;
    }
    const size = members.oversized.get(member);
    if (size !== undefined) checkSize(size, Math.min(maxBytes ?? MAX_CONFIG_BYTES, MAX_CONFIG_BYTES), `${name}: ${member}`, name);
    const linked = unkeptLink(members, memberName(p), memberName(p), name);
    if (linked) throw linked;
    throw new SmartError('NOT_FOUND', `${name}: ${member} not in the archive`, { input: name });
  };
  return { getContent, reader: async (p) => Readable.from([await getContent(p)]) };
}
