/**
 * Reads a `docker save` archive as a stream (stdin), never holding a layer in memory or on disk.
 * Docker writes manifest.json near the END, after the layers, so the image's shape is known only
 * when the stream is over: each layer is handed to the reader as it arrives (the copy compresses
 * and stores it at once), JSON members are kept, and the image is assembled at the end.
 */
import { Readable, addAbortSignal, pipeline } from 'node:stream';
import tar from 'tar-stream';
import { SmartError, isCancellation, isSmartError, quoted } from '../../errors.js';
import { MAX_ARCHIVE_JSON_BYTES, checkSize, limitExceeded } from '../../limits.js';
import { MAX_CONFIG_BYTES, parseImageConfig } from '../../oci/config.js';
import { archiveTarStream } from '../../pipeline/archive-stream.js';
import type { Digest } from '../../oci/digest.js';
import type { StreamedImage, StreamedImageSource, StreamedLayer } from '../../oci/image.js';
import { sniffCompression } from '../../oci/mediatypes.js';
import { tarParseError } from '../../tar/errors.js';
import { normalizeMemberName } from '../../tar/header.js';
import { hasSparseRecords } from '../../tar/sparse.js';
import { MAX_ARCHIVE_MANIFEST_BYTES, parseArchiveManifest, selectArchiveEntry, type ArchiveSelection } from './manifest-json.js';

/** `docker-archive:-`: the image `input` carries, read once as it arrives. */
export function dockerArchiveStream(input: Readable, selection: ArchiveSelection, name: string): StreamedImageSource {
  return {
    name,
    streamed: true,
    read: async (visit, signal) => {
      if (signal) addAbortSignal(signal, input);
      // `docker save IMAGE | gzip` (or zstd, bzip2, xz), as `docker load` and skopeo take it. No
      // bound on the ratio: the tar inside ends at its end-of-archive blocks, and each layer in it
      // is checked against its diff id.
      return readDockerArchiveStream(await archiveTarStream(input, name), selection, name, visit);
    },
  };
}

/** JSON members (config, manifest.json, v1 json) up to this size are kept, up to MAX_ARCHIVE_JSON_BYTES in all. */
const MAX_JSON_MEMBER = Math.max(MAX_CONFIG_BYTES, MAX_ARCHIVE_MANIFEST_BYTES);

/**
 * What a member is, from its first block: a layer (a tar: ustar magic, or the all-zero block of an
 * empty layer; or a compressed stream), JSON (config, manifest.json, v1 json), or something else
 * (VERSION files) that is skipped.
 */
function classifyMember(head: Buffer): 'layer' | 'json' | 'other' {
  if (sniffCompression(head) !== 'none') return 'layer';
  if (head.length >= 512) {
    if (head.subarray(257, 262).toString('latin1') === 'ustar') return 'layer';
    if (head.subarray(0, 512).every((b) => b === 0)) return 'layer';
  }
  for (const b of head) {
    if (b === 0x20 || b === 0x0a || b === 0x0d || b === 0x09) continue;
    return b === 0x7b || b === 0x5b ? 'json' : 'other'; // { or [
  }
  return 'other';
}

/**
 * The digest a member's name states for its bytes: `blobs/sha256/<hex>` (Docker 25+, an OCI
 * layout inside), `<hex>.tar` (containers/image, ours: the diff id of the layer it holds).
 * Docker's older `<v1 id>/layer.tar` states none.
 */
export function namedDigest(member: string): Digest | undefined {
  const m = /^(?:blobs\/sha256\/([0-9a-f]{64})|([0-9a-f]{64})\.tar)$/.exec(member);
  return m ? (`sha256:${m[1] ?? m[2]}` as Digest) : undefined;
}

/** Reads the archive `input` carries, handing each layer to `onLayer` as it arrives (dockerArchiveStream's `read`); the image at its end. */
export async function readDockerArchiveStream<T>(
  input: Readable,
  selection: ArchiveSelection,
  name: string,
  onLayer: (layer: StreamedLayer) => Promise<T>,
): Promise<StreamedImage<T>> {
  const extract = tar.extract();
  const json = new Map<string, Buffer>();
  let jsonBytes = 0;
  /** JSON members too large to keep: named in the error if the image needs one. */
  const oversized = new Map<string, number>();
  const layerResults = new Map<string, T>();
  const aliases = new Map<string, string>();
  let sawEntry = false;
  /** The first member of a type tar-stream does not know (an old GNU sparse file is one): named if a layer is then missing. */
  let sparse: string | undefined;
  // The last member read whole: where an archive that breaks broke.
  let lastMember: string | undefined;
  let inputError: unknown;
  pipeline(input, extract as unknown as NodeJS.WritableStream, (e) => {
    if (e) inputError = e;
  });
  try {
    for await (const entry of extract) {
      sawEntry = true;
      const header = entry.header;
      // tar --sparse (a file with holes: an uncompressed layer can be one): tar-stream reads such a
      // member as a plain file, so it is refused by name rather than read as other bytes.
      if (header.type === null || hasSparseRecords(header)) {
        sparse ??= header.name;
        if (header.type !== null) {
          throw new SmartError('UNSUPPORTED', `${name}: member ${quoted((header.pax as Record<string, string> | undefined)?.['GNU.sparse.name'] ?? header.name)} is a sparse file (GNU tar --sparse), which a streamed archive cannot hold`, {
            input: name,
            hint: 'give the archive as a file (docker-archive:PATH reads sparse members), or write it without --sparse',
          });
        }
      }
      const member = normalizeMemberName(header.name);
      if (header.type === 'symlink' || header.type === 'link') {
        const base = header.type === 'symlink' ? member.split('/').slice(0, -1) : [];
        aliases.set(member, normalizeMemberName([...base, header.linkname ?? ''].join('/')));
        entry.resume();
        lastMember = header.name;
        continue;
      }
      if (header.type !== 'file' || !header.size) {
        entry.resume();
        lastMember = header.name;
        continue;
      }
      // Gather the first block: enough to tell a tar (or a compressed tar) from JSON and the rest.
      const it = entry[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
      const headChunks: Buffer[] = [];
      let headLength = 0;
      let ended = false;
      while (headLength < 512) {
        const r = await it.next();
        if (r.done) {
          ended = true;
          break;
        }
        headChunks.push(r.value);
        headLength += r.value.length;
      }
      const head = Buffer.concat(headChunks);
      const kind = classifyMember(head);
      if (kind !== 'layer') {
        if (member === 'manifest.json') checkSize(header.size, MAX_ARCHIVE_MANIFEST_BYTES, `${name}: manifest.json`, name);
        const keep = kind === 'json' && header.size <= MAX_JSON_MEMBER;
        if (kind === 'json' && !keep) oversized.set(member, header.size);
        if (keep && (jsonBytes += header.size) > MAX_ARCHIVE_JSON_BYTES) {
          throw limitExceeded(`${name}: holds more than ${MAX_ARCHIVE_JSON_BYTES} bytes of JSON members`, name);
        }
        const chunks: Buffer[] = [head];
        for (let r = ended ? undefined : await it.next(); r && !r.done; r = await it.next()) {
          if (keep) chunks.push(r.value);
        }
        if (keep) json.set(member, Buffer.concat(chunks));
        lastMember = header.name;
        continue;
      }
      const body = Readable.from(
        (async function* () {
          yield head;
          if (ended) return;
          for (let r = await it.next(); !r.done; r = await it.next()) yield r.value;
        })(),
        { objectMode: false },
      );
      const named = namedDigest(member);
      layerResults.set(member, await onLayer({ member, what: `layer ${member} of ${name}`, compression: sniffCompression(head), size: header.size, ...(named ? { namedDigest: named } : {}), stream: body }));
      // onLayer must have drained it; if it did not, skip the rest so the archive can go on.
      body.destroy();
      lastMember = header.name;
    }
  } catch (e) {
    extract.destroy();
    input.destroy();
    if (isSmartError(e)) throw e;
    throw corrupt(name, inputError ?? e, lastMember);
  }
  if (inputError) throw corrupt(name, inputError, lastMember);
  if (!sawEntry) throw new SmartError('NOT_AN_IMAGE', `${name}: empty input, not a docker-archive`, { input: name });

  const resolve = (m: string): string => {
    let n = normalizeMemberName(m);
    for (let i = 0; i < 16 && aliases.has(n); i++) n = aliases.get(n)!;
    return n;
  };
  const manifestBytes = json.get('manifest.json');
  if (!manifestBytes) {
    throw new SmartError('NOT_AN_IMAGE', `${name}: not a docker-archive (no manifest.json)`, {
      input: name,
      ...(json.has('index.json') || json.has('oci-layout') ? { hint: 'this looks like an OCI archive: save it to a file and use oci-archive:FILE' } : {}),
    });
  }
  const entry = selectArchiveEntry(parseArchiveManifest(manifestBytes, name), selection, name);
  const configBytes = json.get(resolve(entry.Config));
  if (!configBytes) checkSize(oversized.get(resolve(entry.Config)) ?? 0, MAX_CONFIG_BYTES, `${name}: config ${quoted(entry.Config)}`, name);
  if (!configBytes) throw new SmartError('CORRUPT_ARCHIVE', `${name}: config ${quoted(entry.Config)} is not in the archive`, { input: name });
  const config = parseImageConfig(configBytes, `${name} config`);
  const layers = entry.Layers.map((l) => {
    const r = layerResults.get(resolve(l));
    if (r === undefined) {
      throw new SmartError('CORRUPT_ARCHIVE', `${name}: layer ${quoted(l)} is not in the archive`, {
        input: name,
        ...(sparse !== undefined ? { hint: `member ${quoted(sparse)} is of a type a streamed archive cannot hold (an old GNU sparse file, from tar --sparse?): give the archive as a file (docker-archive:PATH)` } : {}),
      });
    }
    return r;
  });
  return { configBytes, config, repoTags: entry.RepoTags ?? [], layers };
}

/** Why the archive could not be read: a cancellation as it is, else what the tar parser says (src/tar/errors.ts). */
function corrupt(name: string, e: unknown, lastMember: string | undefined): unknown {
  if (isCancellation(e)) return e;
  return tarParseError(e, { what: name, ...(lastMember !== undefined ? { after: lastMember } : {}) });
}
