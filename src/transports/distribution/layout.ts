/**
 * The Distribution registry's storage layout (registry/storage/paths.go): the one owner of every
 * path under `docker/registry/v2`. Drivers know nothing of it; nothing else builds these paths.
 */
import { digestHex, type Digest } from '../../oci/digest.js';

const V2 = '/docker/registry/v2';

export type PathSpec =
  | { kind: 'blob'; digest: Digest }
  | { kind: 'blobData'; digest: Digest }
  | { kind: 'repositoriesRoot' }
  | { kind: 'repository'; repo: string }
  | { kind: 'layerLink'; repo: string; digest: Digest }
  | { kind: 'manifestRevisionLink'; repo: string; digest: Digest }
  | { kind: 'tagsRoot'; repo: string }
  | { kind: 'tagCurrentLink'; repo: string; tag: string }
  | { kind: 'tagIndexLink'; repo: string; tag: string; digest: Digest }
  | { kind: 'uploadsRoot'; repo: string }
  | { kind: 'upload'; repo: string; id: string }
  | { kind: 'uploadData'; repo: string; id: string }
  | { kind: 'uploadStartedAt'; repo: string; id: string }
  | { kind: 'uploadOwner'; repo: string; id: string };

function blobDir(d: Digest): string {
  const hex = digestHex(d);
  return `sha256/${hex.slice(0, 2)}/${hex}`;
}

export function pathFor(spec: PathSpec): string {
  switch (spec.kind) {
    case 'blob':
      return `${V2}/blobs/${blobDir(spec.digest)}`;
    case 'blobData':
      return `${V2}/blobs/${blobDir(spec.digest)}/data`;
    case 'repositoriesRoot':
      return `${V2}/repositories`;
    case 'repository':
      return `${V2}/repositories/${spec.repo}`;
    case 'layerLink':
      return `${V2}/repositories/${spec.repo}/_layers/sha256/${digestHex(spec.digest)}/link`;
    case 'manifestRevisionLink':
      return `${V2}/repositories/${spec.repo}/_manifests/revisions/sha256/${digestHex(spec.digest)}/link`;
    case 'tagsRoot':
      return `${V2}/repositories/${spec.repo}/_manifests/tags`;
    case 'tagCurrentLink':
      return `${V2}/repositories/${spec.repo}/_manifests/tags/${spec.tag}/current/link`;
    case 'tagIndexLink':
      return `${V2}/repositories/${spec.repo}/_manifests/tags/${spec.tag}/index/sha256/${digestHex(spec.digest)}/link`;
    case 'uploadsRoot':
      return `${V2}/repositories/${spec.repo}/_uploads`;
    case 'upload':
      return `${V2}/repositories/${spec.repo}/_uploads/${spec.id}`;
    case 'uploadData':
      return `${V2}/repositories/${spec.repo}/_uploads/${spec.id}/data`;
    case 'uploadStartedAt':
      return `${V2}/repositories/${spec.repo}/_uploads/${spec.id}/startedat`;
    // Ours alone (the registry reads only `startedat` and `data` there): who writes the upload.
    case 'uploadOwner':
      return `${V2}/repositories/${spec.repo}/_uploads/${spec.id}/smartlayer-owner`;
  }
}

/**
 * Link files hold exactly `sha256:<hex>`, 71 bytes and no newline: the registry answers 500 for a
 * link with a trailing newline and garbage-collect aborts on it.
 */
export function linkContent(d: Digest): Buffer {
  return Buffer.from(d, 'utf8');
}
