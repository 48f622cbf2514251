/**
 * A whole store (`file:ROOT`, `s3://BUCKET[/ROOT]`, `docker://HOST`) as the cache commands see it:
 * its repositories, their tags, what a tag points at, and an image source for any of them.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { SmartError } from '../errors.js';
import { isDigest, type Digest } from '../oci/digest.js';
import type { ImageSource } from '../oci/image.js';
import type { Reference } from '../oci/reference.js';
import { parseImageName, parseRegistryStore } from '../transports/names.js';
import type { EndpointContext } from './endpoints.js';

export interface StoreAccess {
  /** `file:/abs/root`, `s3://bucket/root`, `docker://host`: the scope of cached facts about it. */
  readonly scope: string;
  repositories(): Promise<string[]>;
  tags(repository: string): Promise<string[]>;
  /** What the tag points at now (undefined: gone). */
  tagDigest(repository: string, tag: string): Promise<Digest | undefined>;
  source(ref: Reference): Promise<ImageSource>;
  close(): Promise<void>;
}

export async function openStore(name: string, ctx: EndpointContext): Promise<StoreAccess> {
  const registry = parseRegistryStore(name);
  if (registry) return openRegistry(registry, ctx);
  const parsed = parseImageName(name);
  if (parsed.transport === 'file' || parsed.transport === 's3') {
    const { DistributionStore } = await import('../transports/distribution/store.js');
    const { DistributionSource } = await import('../transports/distribution/adapters.js');
    let store;
    if (parsed.transport === 'file') {
      // A store that is not there is an error, not an empty store (a typo in a cron line).
      const st = await fs.stat(parsed.root).catch(() => undefined);
      if (!st) throw new SmartError('NOT_FOUND', `${name}: no such directory ${parsed.root}`, { input: name });
      if (!st.isDirectory()) throw new SmartError('NOT_AN_IMAGE', `${name}: ${parsed.root} is not a directory (the registry storage root)`, { input: name });
      const { FsDriver } = await import('../storage/fs-driver.js');
      store = new DistributionStore(new FsDriver(path.resolve(parsed.root)));
    } else {
      const { S3Driver, s3ClientFromEnvironment } = await import('../storage/s3-driver.js');
      const client = s3ClientFromEnvironment({
        ...(ctx.remote?.s3Endpoint ? { endpoint: ctx.remote.s3Endpoint } : {}),
        ...(ctx.remote?.s3Region ? { region: ctx.remote.s3Region } : {}),
        ...(ctx.remote?.stallTimeoutMs ? { stallTimeoutMs: ctx.remote.stallTimeoutMs } : {}),
      });
      store = new DistributionStore(new S3Driver({ bucket: parsed.bucket, rootDirectory: parsed.root, client, ...(ctx.remote?.stallTimeoutMs ? { stallTimeoutMs: ctx.remote.stallTimeoutMs } : {}) }));
    }
    return {
      scope: store.name,
      repositories: () => store.listRepositories(),
      tags: (repo) => store.listTags(repo),
      tagDigest: async (repo, tag) => store.resolveTag(repo, tag).catch(() => undefined),
      source: async (ref) => new DistributionSource(store, ref),
      close: async () => undefined,
    };
  }
  throw new SmartError('USAGE', `${name} is not a store: name one as file:ROOT, s3://BUCKET[/ROOT] or docker://HOST[:PORT]`, { input: name });
}

async function openRegistry(host: string, ctx: EndpointContext): Promise<StoreAccess> {
  {
    const { RegistryClient } = await import('../transports/registry/client.js');
    const { RegistrySource } = await import('../transports/registry/adapters.js');
    const client = new RegistryClient({
      host,
      insecure: (ctx.remote?.insecureRegistries ?? []).includes(host),
      ...(ctx.remote?.insecureRegistries ? { insecureHosts: ctx.remote.insecureRegistries } : {}),
      ...(ctx.remote?.sourceCredentials ? { credentials: ctx.remote.sourceCredentials } : {}),
      ...(ctx.remote?.certDirs ? { certDirs: ctx.remote.certDirs } : {}),
      ...(ctx.signal ? { signal: ctx.signal } : {}),
      ...(ctx.onWarning ? { onWarning: ctx.onWarning } : {}),
    });
    return {
      scope: `docker://${host}`,
      repositories: () => client.catalog(),
      tags: (repo) => client.listTags(repo),
      tagDigest: async (repo, tag) => {
        const head = await client.headManifest(repo, tag);
        return head?.digest && isDigest(head.digest) ? head.digest : undefined;
      },
      source: async (ref) => {
        // One client for the whole store: closing one image must not close it for the others.
        const s = new RegistrySource(client, { ...ref, registry: host });
        return {
          name: s.name,
          getManifest: () => s.getManifest(),
          getManifestByDigest: (d) => s.getManifestByDigest(d),
          getBlob: (d, o) => s.getBlob(d, o),
          repoTags: () => s.repoTags(),
          close: async () => undefined,
        };
      },
      close: () => client.close(),
    };
  }
}
