/**
 * `file:ROOT#REPO[:TAG|@DIGEST]` and `s3://BUCKET[/ROOT]#REPO[:TAG|@DIGEST]`: a Distribution
 * registry's own storage, on disk or in S3, read and written in the registry's layout. Without
 * `#REPO` the name is the whole store.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { SmartError, isSmartError, rethrowRefusal } from '../../errors.js';
import { parseRepositoryReference, type Reference } from '../../oci/reference.js';
import { invalidName, refuseNonDirectory, refuseUserinfo, requireDirectory, type OpenContext, type StoreAccess, type Transport } from '../transport.js';
import type { MadeDirectories } from '../../storage/made-directories.js';
import type { DistributionStore } from './store.js';

export interface FileName {
  transport: 'file';
  root: string;
  /** Absent: the whole store. */
  ref?: Reference;
  raw: string;
}

export interface S3Name {
  transport: 's3';
  bucket: string;
  /** The key prefix of the registry tree, without leading or trailing slashes; '' for the bucket root. */
  root: string;
  /** Absent: the whole store. */
  ref?: Reference;
  raw: string;
}

type StoreName = FileName | S3Name;

// S3 bucket names: 3-63 lowercase letters, digits, dots and hyphens.
const BUCKET_RE = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

const form = (name: StoreName) => (name.transport === 'file' ? 'file:ROOT' : 's3://BUCKET[/ROOT]');

/** The store as a name's scope spells it, as its driver names itself: `file:/abs/root`, `s3://bucket/root`. */
function scopeOf(name: StoreName): string {
  return name.transport === 'file' ? `file:${path.resolve(name.root)}` : `s3://${name.bucket}${name.root ? `/${name.root}` : ''}`;
}

/**
 * The store a name names over its driver. `create`: a `file:` root is made when missing (a push);
 * otherwise a root that is not there is an error, not an empty store (a typo in a cron line).
 */
async function openDistributionStore(name: StoreName, ctx: OpenContext, create: boolean): Promise<{ store: DistributionStore; madeRoot?: MadeDirectories }> {
  const { DistributionStore } = await import('./store.js');
  if (name.transport === 'file') {
    let madeRoot: MadeDirectories | undefined;
    if (create) {
      await refuseNonDirectory(name.root, name.raw, 'the registry storage root');
      const { makeDirectories } = await import('../../storage/made-directories.js');
      madeRoot = await makeDirectories(name.root).catch(rethrowRefusal(`${name.raw}: cannot make the directory ${name.root}`));
    } else await requireDirectory(name.root, name.raw, 'the registry storage root');
    const { FsDriver } = await import('../../storage/fs-driver.js');
    return { store: new DistributionStore(new FsDriver(path.resolve(name.root))), ...(madeRoot ? { madeRoot } : {}) };
  }
  const { S3Driver, s3ClientFromEnvironment } = await import('../../storage/s3-driver.js');
  const remote = ctx.remote ?? {};
  const stall = remote.stallTimeoutMs ? { stallTimeoutMs: remote.stallTimeoutMs } : {};
  const client = s3ClientFromEnvironment({
    ...(remote.s3Endpoint ? { endpoint: remote.s3Endpoint } : {}),
    ...(remote.s3Region ? { region: remote.s3Region } : {}),
    ...stall,
    ...(ctx.onWarning ? { onWarning: ctx.onWarning } : {}),
  });
  return { store: new DistributionStore(new S3Driver({ bucket: name.bucket, rootDirectory: name.root, client, ...stall, ...(ctx.onWarning ? { onRetry: ctx.onWarning } : {}) })) };
}

function imageRef(name: StoreName, what: string): Reference {
  if (!name.ref) throw new SmartError('USAGE', `${name.raw} names a whole store; name ${what} as ${form(name)}#REPO[:TAG${what === 'an image' ? '|@DIGEST' : ''}]`, { input: name.raw });
  return name.ref;
}

const factories: Pick<Transport<StoreName>, 'openSource' | 'openDestination' | 'openStore' | 'storeScope' | 'storedReference'> = {
  async openSource(name, ctx) {
    const ref = imageRef(name, 'an image');
    const { DistributionSource } = await import('./adapters.js');
    return new DistributionSource((await openDistributionStore(name, ctx, false)).store, ref);
  },
  async openDestination(name, ctx) {
    const ref = imageRef(name, 'the image to write');
    const { DistributionDestination } = await import('./adapters.js');
    // A push that fails before it writes anything leaves no store root it made (MadeDirectories.undo: only while empty).
    const { store, madeRoot } = await openDistributionStore(name, ctx, true);
    const dest = new DistributionDestination(store, ref, { ...(ctx.onWarning ? { onWarning: ctx.onWarning } : {}), ...(madeRoot ? { onAbort: () => madeRoot.undo() } : {}) });
    dest.prepare();
    return dest;
  },
  async openStore(name, ctx): Promise<StoreAccess> {
    // The cache commands work on every image of a store: an image named here would be ignored.
    if (name.ref) {
      throw new SmartError('USAGE', `${name.raw} names an image, and a whole store is wanted here (file:DIR, s3://BUCKET/ROOT): give ${name.raw.slice(0, name.raw.lastIndexOf('#'))}`, {
        input: name.raw,
      });
    }
    const { store } = await openDistributionStore(name, ctx, false);
    const { DistributionSource } = await import('./adapters.js');
    return {
      scope: store.name,
      repositories: () => store.listRepositories(),
      tags: (repo) => store.listTags(repo),
      // A tag that is not there is none; a link the registry cannot read either (malformed, an
      // I/O error) is said, not taken for a missing tag: `cache index` skipped such a tag silently.
      tagDigest: async (repo, tag) =>
        store.resolveTag(repo, tag).catch((e: unknown) => {
          if (isSmartError(e) && e.code === 'NOT_FOUND') return undefined;
          throw e;
        }),
      source: async (ref) => new DistributionSource(store, ref),
      close: async () => undefined,
    };
  },
  storeScope: (name) => ({ scope: scopeOf(name), ...(name.ref ? { ref: name.ref } : {}) }),
  storedReference: (name, digest) => (name.ref ? `${name.raw.slice(0, name.raw.lastIndexOf('#'))}#${name.ref.repository}@${digest}` : undefined),
};

export const file: Transport<FileName> = {
  name: 'file',
  form: 'file:ROOT#REPO[:TAG|@DIGEST]',
  help: "a Distribution registry's storage on disk (ROOT = rootdirectory)",
  capabilities: { namesStore: true, contentAddressed: true },
  parse(rest, raw) {
    const hash = rest.lastIndexOf('#');
    const root = hash < 0 ? rest : rest.slice(0, hash);
    if (!root) throw invalidName(raw, 'missing store root directory', 'write file:ROOT#REPO[:TAG]');
    // A "#" in a directory's name is allowed, but one in a root that is not there is a typo
    // (file:/srv/store#app:1#x), which a push would otherwise make as a new store.
    if (root.includes('#') && !existsSync(root)) throw invalidName(raw, `"#" twice, and the store root before the last one (${root}) does not exist`, 'write file:ROOT#REPO[:TAG]');
    if (hash < 0) return { transport: 'file', root, raw };
    return { transport: 'file', root, ref: parseRepositoryReference(rest.slice(hash + 1), raw), raw };
  },
  ...(factories as Pick<Transport<FileName>, keyof typeof factories>),
  localPaths: (name) => [{ path: name.root, what: 'the source store' }],
  repoTag: (name) => (name.ref?.tag && !name.ref.digest ? `${name.ref.repository}:${name.ref.tag}` : undefined),
};

export const s3: Transport<S3Name> = {
  name: 's3',
  form: 's3://BUCKET[/ROOT]#REPO[:TAG|@DIGEST]',
  help: "a Distribution registry's storage in S3 (ROOT = rootdirectory)",
  capabilities: { namesStore: true, contentAddressed: true },
  parse(rest, raw) {
    if (!rest.startsWith('//')) throw invalidName(raw, 'write s3://BUCKET[/ROOT]#REPO[:TAG|@DIGEST]');
    refuseUserinfo(raw, 'S3 credentials come from the AWS environment (AWS_ACCESS_KEY_ID, AWS_PROFILE...), as the AWS CLI reads them');
    const hash = rest.lastIndexOf('#');
    const location = (hash < 0 ? rest : rest.slice(0, hash)).slice(2);
    const slash = location.indexOf('/');
    const bucket = slash < 0 ? location : location.slice(0, slash);
    const root = slash < 0 ? '' : location.slice(slash + 1).replace(/^\/+|\/+$/g, '');
    if (!BUCKET_RE.test(bucket)) throw invalidName(raw, `invalid bucket name "${bucket}"`);
    if (root.split('/').some((p) => p === '..' || p === '.')) throw invalidName(raw, 'the root directory may not contain . or ..');
    if (hash < 0) return { transport: 's3', bucket, root, raw };
    return { transport: 's3', bucket, root, ref: parseRepositoryReference(rest.slice(hash + 1), raw), raw };
  },
  ...(factories as Pick<Transport<S3Name>, keyof typeof factories>),
  repoTag: (name) => (name.ref?.tag && !name.ref.digest ? `${name.ref.repository}:${name.ref.tag}` : undefined),
};
