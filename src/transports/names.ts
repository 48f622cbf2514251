/**
 * Image names as users write them, skopeo-style `transport:reference`, parsed into a typed form.
 * Parsing only: opening a name is the job of `ops/endpoints.ts`.
 */
import { SmartError } from '../errors.js';
import { CREDENTIALS_HINT, isValidTag, parseReference, parseRepositoryReference, type Reference } from '../oci/reference.js';
import { redactImageName, userinfoEnd } from '../redact.js';
import type { ArchiveSelection } from './docker-archive/manifest-json.js';

export type ImageName =
  | { transport: 'oci'; dir: string; tag?: string; raw: string }
  | { transport: 'oci-archive'; file: string; tag?: string; raw: string }
  | { transport: 'docker-archive'; file: string; selection: ArchiveSelection; raw: string }
  | { transport: 'file'; root: string; ref?: Reference; raw: string }
  | { transport: 'docker'; ref: Reference; raw: string }
  | { transport: 's3'; bucket: string; root: string; ref?: Reference; raw: string }
  | { transport: 'rootfs'; dir: string; raw: string }
  | { transport: 'bundle'; dir: string; raw: string };

// S3 bucket names: 3-63 lowercase letters, digits, dots and hyphens.
const BUCKET_RE = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

function usage(raw: string, why: string, hint?: string): SmartError {
  // Only the URL forms have an authority where credentials could have been typed.
  const shown = /^(docker|s3):\/\//.test(raw) ? redactImageName(raw) : raw;
  return new SmartError('INVALID_REFERENCE', `invalid image name "${shown}": ${why}`, { input: shown, hint });
}

/** `docker://user:pass@host/…`: refused before anything echoes the name, the credentials not shown. */
function refuseUserinfo(raw: string, hint = CREDENTIALS_HINT): void {
  if (userinfoEnd(raw) >= 0) throw usage(raw, 'credentials do not go inside an image name', hint);
}

const FORMS =
  'docker://HOST/REPO[:TAG|@DIGEST], oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE|-[:NAME:TAG|:@N], ' +
  'file:ROOT#REPO[:TAG|@DIGEST], s3://BUCKET[/ROOT]#REPO[:TAG|@DIGEST], rootfs:DIR, bundle:DIR';

/** Splits `PATH[:REST]` at the first colon, as skopeo does (paths cannot contain one). */
function splitPath(rest: string): [string, string | undefined] {
  const i = rest.indexOf(':');
  return i < 0 ? [rest, undefined] : [rest.slice(0, i), rest.slice(i + 1)];
}

export function parseImageName(raw: string): ImageName {
  const colon = raw.indexOf(':');
  const transport = colon < 0 ? '' : raw.slice(0, colon);
  const rest = colon < 0 ? '' : raw.slice(colon + 1);
  switch (transport) {
    case 'oci':
    case 'oci-archive': {
      const [p, tag] = splitPath(rest);
      if (!p) throw usage(raw, 'missing path');
      if (tag !== undefined && !isValidTag(tag)) throw usage(raw, `invalid tag "${tag}"`);
      return transport === 'oci'
        ? { transport, dir: p, ...(tag !== undefined ? { tag } : {}), raw }
        : { transport, file: p, ...(tag !== undefined ? { tag } : {}), raw };
    }
    case 'docker-archive': {
      const [p, ref] = splitPath(rest);
      if (!p) throw usage(raw, 'missing path (use - for stdin/stdout)');
      let selection: ArchiveSelection = { kind: 'only' };
      if (ref !== undefined) {
        if (/^@\d+$/.test(ref)) selection = { kind: 'index', index: Number(ref.slice(1)) };
        else {
          const parsed = parseReference(ref);
          if (parsed.digest) throw usage(raw, 'a docker-archive name takes NAME:TAG, not a digest');
          selection = { kind: 'name', name: ref };
        }
      }
      return { transport, file: p, selection, raw };
    }
    case 'file': {
      const hash = rest.lastIndexOf('#');
      const root = hash < 0 ? rest : rest.slice(0, hash);
      if (!root) throw usage(raw, 'missing store root directory', 'write file:ROOT#REPO[:TAG]');
      if (hash < 0) return { transport, root, raw };
      return { transport, root, ref: parseRepositoryReference(rest.slice(hash + 1), raw), raw };
    }
    case 'rootfs':
    case 'bundle':
      if (!rest) throw usage(raw, 'missing directory');
      return { transport, dir: rest, raw };
    case 'docker': {
      if (!rest.startsWith('//')) throw usage(raw, 'write docker://HOST/REPO[:TAG|@DIGEST]');
      if (!rest.slice(2).replace(/\/+$/, '')) {
        throw usage(raw, 'it names no image', 'write docker://HOST[:PORT]/REPO[:TAG|@DIGEST], e.g. docker://registry.example.com/team/app:1.0; docker://busybox is Docker Hub\'s library/busybox:latest');
      }
      refuseUserinfo(raw);
      return { transport, ref: parseReference(rest.slice(2)), raw };
    }
    case 's3': {
      if (!rest.startsWith('//')) throw usage(raw, 'write s3://BUCKET[/ROOT]#REPO[:TAG|@DIGEST]');
      refuseUserinfo(raw, 'S3 credentials come from the AWS environment (AWS_ACCESS_KEY_ID, AWS_PROFILE...), as the AWS CLI reads them');
      const hash = rest.lastIndexOf('#');
      const location = (hash < 0 ? rest : rest.slice(0, hash)).slice(2);
      const slash = location.indexOf('/');
      const bucket = slash < 0 ? location : location.slice(0, slash);
      const root = slash < 0 ? '' : location.slice(slash + 1).replace(/^\/+|\/+$/g, '');
      if (!BUCKET_RE.test(bucket)) throw usage(raw, `invalid bucket name "${bucket}"`);
      if (root.split('/').some((p) => p === '..' || p === '.')) throw usage(raw, 'the root directory may not contain . or ..');
      if (hash < 0) return { transport, bucket, root, raw };
      return { transport, bucket, root, ref: parseRepositoryReference(rest.slice(hash + 1), raw), raw };
    }
    default:
      throw usage(raw, transport ? `unknown transport "${transport}"` : 'no transport', `write TRANSPORT:REFERENCE, one of ${FORMS}`);
  }
}

/**
 * `docker://HOST[:PORT][/]`, a whole registry as the cache commands name a store: its host; undefined
 * for any other name.
 */
export function parseRegistryStore(raw: string): string | undefined {
  const m = /^docker:\/\/([^/]+)\/?$/.exec(raw);
  if (!m) return undefined;
  refuseUserinfo(raw);
  return m[1];
}

/** `repo:tag` from a name, for RepoTags in docker-archive output; undefined when the name has none. */
export function defaultRepoTag(name: ImageName): string | undefined {
  if ((name.transport === 'file' || name.transport === 's3') && name.ref?.tag) return `${name.ref.repository}:${name.ref.tag}`;
  if (name.transport === 'docker' && name.ref.tag) {
    // Docker's familiar form, as `docker save` writes it: busybox:latest, not docker.io/library/busybox:latest.
    const { registry, repository, tag } = name.ref;
    if (registry !== 'docker.io') return `${registry}/${repository}:${tag}`;
    return `${repository.replace(/^library\//, '')}:${tag}`;
  }
  if (name.transport === 'docker-archive' && name.selection.kind === 'name') return name.selection.name;
  return undefined;
}
