/**
 * `docker-archive:FILE[:NAME:TAG|:@N]` as a source, read in place through a tar index. The image
 * is presented with a Docker schema-2 manifest made from manifest.json and the config: layers
 * stored uncompressed appear as uncompressed blobs (digest = diff id), compressed ones as they are.
 */
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { SmartError, quoted } from '../../errors.js';
import { checkSize } from '../../limits.js';
import { MAX_CONFIG_BYTES, parseImageConfig } from '../../oci/config.js';
import { sha256Digest, shortDigest, type Digest } from '../../oci/digest.js';
import type { ImageSource, OpenOptions } from '../../oci/image.js';
import { parseManifest, serializeManifest, type Descriptor, type ImageManifest, type ParsedManifest } from '../../oci/manifest.js';
import { MediaType, layerMediaType, sniffCompression } from '../../oci/mediatypes.js';
import { verifiedStream } from '../../pipeline/digest-stream.js';
import { markFileRange } from '../../pipeline/local-file.js';
import { TarIndex, type TarMember } from '../../tar/tar-index.js';
import { MAX_ARCHIVE_MANIFEST_BYTES, parseArchiveManifest, selectArchiveEntry, type ArchiveSelection } from './manifest-json.js';

async function hashMember(index: TarIndex, member: TarMember): Promise<Digest> {
  const hash = createHash('sha256');
  for await (const chunk of index.open(member)) hash.update(chunk as Buffer);
  return `sha256:${hash.digest('hex')}` as Digest;
}

export async function openDockerArchiveSource(file: string, selection: ArchiveSelection, name: string): Promise<ImageSource> {
  const index = await TarIndex.open(file, name);
  const manifestMember = index.get('manifest.json');
  if (!manifestMember) {
    throw new SmartError('NOT_AN_IMAGE', `${name}: not a docker-archive (no manifest.json)`, {
      input: file,
      hint: index.get('index.json') ? 'this looks like an OCI archive: use oci-archive:' : undefined,
    });
  }
  checkSize(manifestMember.size, MAX_ARCHIVE_MANIFEST_BYTES, `${name}: manifest.json`, file);
  const entry = selectArchiveEntry(parseArchiveManifest(await index.read(manifestMember), name), selection, name);
  const member = (p: string): TarMember => {
    const m = index.get(p);
    if (!m) throw new SmartError('CORRUPT_ARCHIVE', `${name}: manifest.json names ${quoted(p)}, which is not in the archive`, { input: file });
    return m;
  };
  const configMember = member(entry.Config);
  checkSize(configMember.size, MAX_CONFIG_BYTES, `${name}: config ${entry.Config}`, file);
  const configBytes = await index.read(configMember);
  const config = parseImageConfig(configBytes, `${name} config`);
  if (config.rootfs.diff_ids.length !== entry.Layers.length) {
    throw new SmartError('MANIFEST_INVALID', `${name}: manifest.json lists ${entry.Layers.length} layers, the config ${config.rootfs.diff_ids.length}`);
  }
  const blobs = new Map<string, TarMember>();
  const configDigest = sha256Digest(configBytes);
  blobs.set(configDigest, member(entry.Config));
  const members = entry.Layers.map(member);
  // Every layer's first bytes at once: one read each, side by side rather than in turn.
  const heads = await Promise.all(members.map((m) => (m.size >= 4 ? readHead(index, m) : Buffer.alloc(0))));
  const layers: Descriptor[] = [];
  for (const [i, m] of members.entries()) {
    const compression = sniffCompression(heads[i]!);
    // An uncompressed layer is its own blob with digest = diff id (checked as it streams);
    // a compressed one (some tools write them) is kept as it is, hashed here once.
    const digest = compression === 'none' ? config.rootfs.diff_ids[i]! : await hashMember(index, m);
    blobs.set(digest, m);
    layers.push({ mediaType: layerMediaType('docker', compression), digest, size: m.size });
  }
  const manifest: ImageManifest = {
    schemaVersion: 2,
    mediaType: MediaType.DOCKER_MANIFEST,
    config: { mediaType: MediaType.DOCKER_CONFIG, digest: configDigest, size: configBytes.length },
    layers,
  };
  const parsed = parseManifest(serializeManifest(manifest), MediaType.DOCKER_MANIFEST, name);
  const repoTags = entry.RepoTags ?? [];
  return {
    name,
    getManifest: async (): Promise<ParsedManifest> => parsed,
    getManifestByDigest: async (d: Descriptor): Promise<ParsedManifest> => {
      if (d.digest !== parsed.digest) throw new SmartError('NOT_FOUND', `${name}: no manifest ${d.digest}`, { input: d.digest });
      return parsed;
    },
    getBlob: async (d: Descriptor, _options?: OpenOptions): Promise<Readable> => {
      const m = blobs.get(d.digest);
      if (!m) throw new SmartError('NOT_FOUND', `${name}: no blob ${d.digest}`, { input: d.digest });
      // Marked as the range of the archive it is: a compressor reads it into its own blocks (see FileRange).
      const range = m.size > 0 ? index.rangeOf(m) : undefined;
      const raw = range ? markFileRange(index.open(m), range) : index.open(m);
      return verifiedStream(raw, { digest: d.digest, size: d.size, what: `layer ${shortDigest(d.digest)} of ${name}` });
    },
    repoTags: () => repoTags,
    close: async () => undefined,
  };
}

async function readHead(index: TarIndex, m: TarMember): Promise<Buffer> {
  const full = await index.read({ ...m, size: Math.min(m.size, 8) });
  return full;
}
