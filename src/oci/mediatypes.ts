/** Media types of the OCI and Docker schema-2 families, and what they say about a blob. */

export const MediaType = {
  OCI_MANIFEST: 'application/vnd.oci.image.manifest.v1+json',
  OCI_INDEX: 'application/vnd.oci.image.index.v1+json',
  OCI_CONFIG: 'application/vnd.oci.image.config.v1+json',
  OCI_LAYER: 'application/vnd.oci.image.layer.v1.tar',
  OCI_LAYER_GZIP: 'application/vnd.oci.image.layer.v1.tar+gzip',
  OCI_LAYER_ZSTD: 'application/vnd.oci.image.layer.v1.tar+zstd',
  OCI_LAYER_NONDIST: 'application/vnd.oci.image.layer.nondistributable.v1.tar',
  OCI_LAYER_NONDIST_GZIP: 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
  OCI_LAYER_NONDIST_ZSTD: 'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd',
  DOCKER_MANIFEST: 'application/vnd.docker.distribution.manifest.v2+json',
  DOCKER_MANIFEST_LIST: 'application/vnd.docker.distribution.manifest.list.v2+json',
  DOCKER_CONFIG: 'application/vnd.docker.container.image.v1+json',
  DOCKER_LAYER_GZIP: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  // Not in Docker's spec, but what containers/image names an uncompressed docker-archive layer.
  DOCKER_LAYER_TAR: 'application/vnd.docker.image.rootfs.diff.tar',
  DOCKER_LAYER_ZSTD: 'application/vnd.docker.image.rootfs.diff.tar.zstd',
  DOCKER_FOREIGN_LAYER: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
  // Docker's schema 1 is long deprecated; recognised only to refuse it clearly.
  DOCKER_MANIFEST_V1: 'application/vnd.docker.distribution.manifest.v1+json',
  DOCKER_MANIFEST_V1_SIGNED: 'application/vnd.docker.distribution.manifest.v1+prettyjws',
} as const;

export type Compression = 'gzip' | 'zstd' | 'none';

/**
 * The compression a blob's first bytes announce (gzip or zstd magic; anything else is taken as
 * uncompressed). Here rather than with the decompressors, so that telling costs no pipeline load.
 */
export function sniffCompression(head: Uint8Array): Compression {
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head.length >= 4 && head[0] === 0x28 && head[1] === 0xb5 && head[2] === 0x2f && head[3] === 0xfd) return 'zstd';
  return 'none';
}

/**
 * How a whole archive (a `docker save` tar, a build context's tar) is compressed: what Docker's
 * own reader takes (gzip, bzip2, xz, zstd), by its first bytes; anything else is taken as a tar.
 */
export type ArchiveCompression = Compression | 'bzip2' | 'xz';

/** Enough first bytes for `sniffArchiveCompression` to tell each format. */
export const ARCHIVE_MAGIC_BYTES = 6;

export function sniffArchiveCompression(head: Uint8Array): ArchiveCompression {
  const layer = sniffCompression(head);
  if (layer !== 'none') return layer;
  // "BZh" and the block size digit.
  if (head.length >= 4 && head[0] === 0x42 && head[1] === 0x5a && head[2] === 0x68 && head[3]! >= 0x31 && head[3]! <= 0x39) return 'bzip2';
  if (head.length >= 6 && head[0] === 0xfd && head[1] === 0x37 && head[2] === 0x7a && head[3] === 0x58 && head[4] === 0x5a && head[5] === 0x00) return 'xz';
  return 'none';
}

export type ManifestFamily = 'oci' | 'docker';

export function isIndexMediaType(mt: string | undefined): boolean {
  return mt === MediaType.OCI_INDEX || mt === MediaType.DOCKER_MANIFEST_LIST;
}

export function isImageManifestMediaType(mt: string | undefined): boolean {
  return mt === MediaType.OCI_MANIFEST || mt === MediaType.DOCKER_MANIFEST;
}

export function manifestFamily(mt: string): ManifestFamily {
  return mt.startsWith('application/vnd.docker.') ? 'docker' : 'oci';
}

/** Compression of a layer blob, from its media type; undefined when the type is not a layer we know. */
export function layerCompression(mt: string): Compression | undefined {
  switch (mt) {
    case MediaType.OCI_LAYER:
    case MediaType.OCI_LAYER_NONDIST:
    case MediaType.DOCKER_LAYER_TAR:
      return 'none';
    case MediaType.OCI_LAYER_GZIP:
    case MediaType.OCI_LAYER_NONDIST_GZIP:
    case MediaType.DOCKER_LAYER_GZIP:
    case MediaType.DOCKER_FOREIGN_LAYER:
      return 'gzip';
    case MediaType.OCI_LAYER_ZSTD:
    case MediaType.OCI_LAYER_NONDIST_ZSTD:
    case MediaType.DOCKER_LAYER_ZSTD:
      return 'zstd';
    default:
      return undefined;
  }
}

/** Foreign / non-distributable layers are never copied between registries (as skopeo and crane do). */
export function isForeignLayer(mt: string): boolean {
  return mt === MediaType.DOCKER_FOREIGN_LAYER || mt.startsWith('application/vnd.oci.image.layer.nondistributable.');
}

/** The layer media type of `compression` in a manifest of `family`. */
export function layerMediaType(family: ManifestFamily, compression: Compression): string {
  if (family === 'docker') {
    if (compression === 'gzip') return MediaType.DOCKER_LAYER_GZIP;
    if (compression === 'zstd') return MediaType.DOCKER_LAYER_ZSTD;
    return MediaType.DOCKER_LAYER_TAR;
  }
  if (compression === 'gzip') return MediaType.OCI_LAYER_GZIP;
  if (compression === 'zstd') return MediaType.OCI_LAYER_ZSTD;
  return MediaType.OCI_LAYER;
}

export function manifestMediaType(family: ManifestFamily): string {
  return family === 'docker' ? MediaType.DOCKER_MANIFEST : MediaType.OCI_MANIFEST;
}

export function configMediaType(family: ManifestFamily): string {
  return family === 'docker' ? MediaType.DOCKER_CONFIG : MediaType.OCI_CONFIG;
}
