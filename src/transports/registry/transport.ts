/**
 * `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`: a registry over the OCI Distribution API, with
 * registries.conf applied both ways (mirrors and rewrites when reading; rewrites, `blocked` and
 * `insecure` when writing), and `docker://HOST[:PORT]` the whole registry for the cache commands.
 * Every client is made by `clientFor`, so each gets the command's remote settings the same way.
 */
import { isDigest } from '../../oci/digest.js';
import { parseReference, type Reference } from '../../oci/reference.js';
import { invalidName, refuseUserinfo, type OpenContext, type RemoteOptions, type StoreAccess, type Transport } from '../transport.js';
import type { Credentials } from './credentials.js';

export interface DockerName {
  transport: 'docker';
  ref: Reference;
  raw: string;
}

/** `docker://HOST[:PORT][/]`: a whole registry. */
export interface DockerStoreName {
  transport: 'docker';
  host: string;
  raw: string;
}

/**
 * A client of `host` with the command's settings: TLS (`--cert-dir`, `--insecure-registry`), the
 * stall timeout, cancellation, and retries and warnings told to `ctx.onWarning`. `mirror`: a
 * mirror that does not answer is skipped for the next endpoint, not retried at length.
 */
async function clientFor(host: string, ctx: OpenContext, credentials: Credentials | undefined, extra: { insecure?: boolean; mirror?: boolean; credentialsFlag?: string | null } = {}) {
  const { RegistryClient } = await import('./client.js');
  const remote = ctx.remote ?? {};
  return new RegistryClient({
    host,
    insecure: extra.insecure || (remote.insecureRegistries ?? []).includes(host),
    ...(remote.insecureRegistries ? { insecureHosts: remote.insecureRegistries } : {}),
    ...(credentials ? { credentials } : {}),
    ...(extra.credentialsFlag !== undefined ? { credentialsFlag: extra.credentialsFlag } : {}),
    ...(remote.authFile ? { authFile: remote.authFile } : {}),
    ...(remote.certDirs ? { certDirs: remote.certDirs } : {}),
    ...(remote.stallTimeoutMs ? { stallTimeoutMs: remote.stallTimeoutMs } : {}),
    ...(ctx.signal ? { signal: ctx.signal } : {}),
    ...(ctx.onWarning ? { onRetry: ctx.onWarning, onWarning: ctx.onWarning } : {}),
    ...(extra.mirror ? { maxRetries: 1 } : {}),
    ...(ctx.registrySchemes ? { schemes: ctx.registrySchemes } : {}),
  });
}

/** The flag that gives the source's registry its credentials, for the client's hints, when not `--creds`. */
function sourceFlag(remote: RemoteOptions): { credentialsFlag?: string | null } {
  return remote.sourceCredentialsFlag !== undefined ? { credentialsFlag: remote.sourceCredentialsFlag } : {};
}

/**
 * registries.conf, read while the modules that talk to the registry load. Not through the barrel
 * registries-conf.js, which loads the TOML parser that only a file present needs. Handled at once
 * (awaited later): a failure of the read must not count as unhandled while the modules load.
 */
function registriesConf() {
  const conf = import('./registries-conf/load.js').then((m) => m.loadRegistriesConf());
  conf.catch(() => undefined);
  return conf;
}

/**
 * The registries to pull `ref` from, in order: mirrors (registries.conf, --registry-mirror for
 * Docker Hub), then the upstream (with a registries.conf location rewrite). Explicit credentials
 * go to the named registry only, never to a mirror.
 */
async function pullSource(ref: Reference, ctx: OpenContext) {
  const conf = registriesConf();
  const [{ RegistrySource, MirroredSource }, { pullSources }] = await Promise.all([import('./adapters.js'), import('./registries-conf/endpoints.js'), import('./client.js')]);
  const remote = ctx.remote ?? {};
  const sources = pullSources(await conf, ref, { dockerHub: remote.registryMirrors ?? [] });
  const only = sources.length === 1 ? sources[0]! : undefined;
  if (only && only.registry === ref.registry && only.repository === ref.repository) {
    return new RegistrySource(await clientFor(ref.registry, ctx, remote.sourceCredentials, { insecure: only.insecure, ...sourceFlag(remote) }), ref);
  }
  const endpoints = await Promise.all(
    sources.map(async (s) => ({
      client: await clientFor(s.registry, ctx, s.registry === ref.registry ? remote.sourceCredentials : undefined, {
        insecure: s.insecure,
        mirror: s.mirror,
        ...(s.registry === ref.registry ? sourceFlag(remote) : { credentialsFlag: null }),
      }),
      ref: { ...ref, registry: s.registry, repository: s.repository },
      mirror: s.mirror,
    })),
  );
  return new MirroredSource(endpoints, ctx.onWarning ?? (() => undefined));
}

export const docker: Transport<DockerName, DockerStoreName> = {
  name: 'docker',
  form: 'docker://HOST[:PORT]/REPO[:TAG|@DIGEST]',
  help: 'a registry, over the OCI Distribution API',
  capabilities: { namesStore: true, contentAddressed: true },
  parse(rest, raw) {
    if (!rest.startsWith('//')) throw invalidName(raw, 'write docker://HOST/REPO[:TAG|@DIGEST]');
    if (!rest.slice(2).replace(/\/+$/, '')) {
      throw invalidName(raw, 'it names no image', 'write docker://HOST[:PORT]/REPO[:TAG|@DIGEST], e.g. docker://registry.example.com/team/app:1.0; docker://busybox is Docker Hub\'s library/busybox:latest');
    }
    refuseUserinfo(raw);
    const name = rest.slice(2);
    // `docker://registry.internal:5000` reads as Docker Hub's library/registry.internal, tag 5000,
    // which exists on no registry (Docker Hub's own images have no dot in their name): the
    // registry the user meant was never asked, and --creds would go to Docker Hub instead.
    const host = name.split('@')[0]!;
    if (!name.includes('/') && (host.split(':')[0]!.includes('.') || host.split(':')[0] === 'localhost')) {
      throw invalidName(raw, `it names a registry (${host}) but no repository`, `write docker://${host}/REPO[:TAG|@DIGEST]`);
    }
    return { transport: 'docker', ref: parseReference(name), raw };
  },
  parseStore(rest, raw) {
    const m = /^\/\/([^/]+)\/?$/.exec(rest);
    if (!m) return undefined;
    refuseUserinfo(raw);
    return { transport: 'docker', host: m[1]!, raw };
  },
  openSource: (name, ctx) => pullSource(name.ref, ctx),
  /**
   * registries.conf applies as it does to pulls, without mirrors: the location rewrite, `blocked`
   * (refused before anything is sent) and `insecure`. Explicit credentials go to the named
   * registry only, never to the one a rewrite leads to; blobs are mounted from the source's
   * repository when it lives on the same registry.
   */
  async openDestination(name, ctx, source) {
    const conf = registriesConf();
    const [{ pushDestination }, { RegistryDestination }] = await Promise.all([import('./registries-conf/endpoints.js'), import('./adapters.js'), import('./client.js')]);
    const target = pushDestination(await conf, name.ref);
    const ref: Reference = { ...name.ref, registry: target.registry, repository: target.repository };
    const named = target.registry === name.ref.registry;
    const credentials = named ? ctx.remote?.destinationCredentials : undefined;
    const flag = named ? ctx.remote?.destinationCredentialsFlag : null;
    const mountFrom = source?.registry?.host === ref.registry ? source.registry.repository : undefined;
    return new RegistryDestination(await clientFor(ref.registry, ctx, credentials, { insecure: target.insecure, ...(flag !== undefined ? { credentialsFlag: flag } : {}) }), ref, {
      ...(mountFrom ? { mountFrom } : {}),
      ...(ctx.blobInfo ? { locations: ctx.blobInfo } : {}),
    });
  },
  async openStore(name, ctx): Promise<StoreAccess> {
    const { RegistrySource } = await import('./adapters.js');
    const host = name.host;
    const client = await clientFor(host, ctx, ctx.remote?.sourceCredentials, sourceFlag(ctx.remote ?? {}));
    return {
      scope: `docker://${host}`,
      repositories: () => client.catalog(),
      tags: (repo) => client.listTags(repo),
      tagDigest: async (repo, tag) => {
        const head = await client.headManifest(repo, tag);
        return head?.digest && isDigest(head.digest) ? head.digest : undefined;
      },
      // One client for the whole store: closing one image must not close it for the others.
      source: async (ref) => new RegistrySource(client, { ...ref, registry: host }, { sharedClient: true }),
      close: () => client.close(),
    };
  },
  storeScope: (name) => ({ scope: `docker://${name.ref.registry}`, ref: name.ref }),
  storedReference: (name, digest) => `${name.ref.registry}/${name.ref.repository}@${digest}`,
  repoTag(name) {
    // NAME:TAG@DIGEST is the image of the digest, which the tag may not name: Docker tags nothing.
    if (!name.ref.tag || name.ref.digest) return undefined;
    // Docker's familiar form, as `docker save` writes it: busybox:latest, not docker.io/library/busybox:latest.
    const { registry, repository, tag } = name.ref;
    if (registry !== 'docker.io') return `${registry}/${repository}:${tag}`;
    return `${repository.replace(/^library\//, '')}:${tag}`;
  },
  registryHost: (name) => ('host' in name ? name.host : name.ref.registry),
};
