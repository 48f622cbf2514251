/**
 * The OCI image layout (image-spec image-layout.md): the one owner of its file names, as the
 * registry's storage has `distribution/layout.ts`. Paths are driver paths (absolute,
 * `/`-separated, from the layout's root); `memberName` is the same file's name in an
 * `oci-archive:` tar. Nothing else spells these names.
 */
import { digestHex, type Digest } from '../../oci/digest.js';

export type LayoutPathSpec =
  | { kind: 'layoutFile' }
  | { kind: 'index' }
  | { kind: 'blobsRoot' }
  | { kind: 'blobs' }
  | { kind: 'blob'; digest: Digest }
  /** Ours: a blob being written, renamed to its content address once whole. */
  | { kind: 'temporaryBlob'; id: string };

export function layoutPath(spec: LayoutPathSpec): string {
  switch (spec.kind) {
    case 'layoutFile':
      return '/oci-layout';
    case 'index':
      return '/index.json';
    case 'blobsRoot':
      return '/blobs';
    case 'blobs':
      return '/blobs/sha256';
    case 'blob':
      return `/blobs/sha256/${digestHex(spec.digest)}`;
    case 'temporaryBlob':
      return `/.smart-tmp-${spec.id}`;
  }
}

/** The name of a layout file as a member of an `oci-archive:` tar (no leading slash). */
export function memberName(layoutPathName: string): string {
  return layoutPathName.replace(/^\/+/, '');
}

/** What `oci-layout` holds: the version of the layout. */
export const LAYOUT_FILE_CONTENT = Buffer.from('{"imageLayoutVersion":"1.0.0"}');

/** The annotation of an index.json entry that names its tag, as skopeo and umoci use it. */
export const REF_NAME = 'org.opencontainers.image.ref.name';
