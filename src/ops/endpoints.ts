/**
 * Opens parsed image names as sources and destinations. The one place that knows every
 * transport; each is imported only when used, so a command loads just what it touches.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { SmartError } from '../errors.js';
import type { BlobDestination, ImageSource, ImageWriter } from '../oci/image.js';
import type { Reference } from '../oci/reference.js';
import type { ArchiveSelection } from '../transports/docker-archive/manifest-json.js';
import { defaultRepoTag, type ImageName } from '../transports/names.js';
import type { BlobInfoCache } from '../cache/blob-info.js';
import type { LayerStore } from '../cache/layer-store.js';
import type { Credentials } from '../transports/registry/credentials.js';

export interface RemoteOptions {
  /** Registry credentials for the source and the destination (else the Docker config's). */
  sourceCredentials?: Credentials;
  destinationCredentials?: Credentials;
  /** The containers auth.json to read instead of the default credential files (`--authfile`). */
  authFile?: string;
  /** Hosts allowed plain HTTP and unverified TLS (`--insecure-registry`). */
  insecureRegistries?: string[];
  /** Extra CA directories (`--cert-dir`). */
  certDirs?: string[];
  /** Docker Hub mirrors tried before it (`--registry-mirror`, as the Docker daemon's registry-mirrors). */
  registryMirrors?: string[];
  /** A transfer with no progress for this long is aborted and retried (default 30 s). */
  stallTimeoutMs?: number;
  /** S3 endpoint and region overrides; the AWS environment provides the rest. */
  s3Endpoint?: string;
  s3Region?: string;
}

export interface EndpointContext {
  stdin: Readable;
  stdout: Writable;
  onWarning?: (message: string) => void;
  remote?: RemoteOptions;
  blobInfo?: BlobInfoCache;
  /** The local layer store root filesystems are built from; none: layers stream into the tree. */
  layerStore?: LayerStore;
  /** Hardlink from the layer store rather than clone or copy. */
  link?: boolean;
  /** Keep fetched layers in the layer store (undefined: the writer's default). */
  keepLayers?: boolean;
  /** Let a root filesystem or bundle replace a non-empty directory no pull made. */
  force?: boolean;
  /** The command's cancellation (Ctrl-C, --timeout): every connection honours it. */
  signal?: AbortSignal;
}

async function registryClient(host: string, ctx: EndpointContext, credentials: Credentials | undefined, extra: { insecure?: boolean; mirror?: boolean } = {}) {
  const { RegistryClient } = await import('../transports/registry/client.js');
  const remote = ctx.remote ?? {};
  return new RegistryClient({
    host,
    insecure: extra.insecure || (remote.insecureRegistries ?? []).includes(host),
    ...(remote.insecureRegistries ? { insecureHosts: remote.insecureRegistries } : {}),
    ...(credentials ? { credentials } : {}),
    ...(remote.authFile ? { authFile: remote.authFile } : {}),
    ...(remote.certDirs ? { certDirs: remote.certDirs } : {}),
    ...(remote.stallTimeoutMs ? { stallTimeoutMs: remote.stallTimeoutMs } : {}),
    ...(ctx.signal ? { signal: ctx.signal } : {}),
    ...(ctx.onWarning ? { onRetry: ctx.onWarning, onWarning: ctx.onWarning } : {}),
    // A mirror that does not answer is skipped for the next source, not retried at length.
    ...(extra.mirror ? { maxRetries: 1 } : {}),
  });
}

/**
 * The registries to pull `ref` from, in order: mirrors (registries.conf, --registry-mirror for
 * Docker Hub), then the upstream (with a registries.conf location rewrite). Explicit credentials
 * go to the named registry only, never to a mirror.
 */
async function pullSource(ref: Reference, ctx: EndpointContext): Promise<ImageSource> {
  const { RegistrySource, MirroredSource } = await import('../transports/registry/adapters.js');
  const { loadRegistriesConf, pullSources } = await import('../transports/registry/registries-conf.js');
  const remote = ctx.remote ?? {};
  const sources = pullSources(await loadRegistriesConf(), ref, { dockerHub: remote.registryMirrors ?? [] });
  const only = sources.length === 1 ? sources[0]! : undefined;
  if (only && only.registry === ref.registry && only.repository === ref.repository) {
    return new RegistrySource(await registryClient(ref.registry, ctx, remote.sourceCredentials, { insecure: only.insecure }), ref);
  }
  const endpoints = await Promise.all(
    sources.map(async (s) => ({
      client: await registryClient(s.registry, ctx, s.registry === ref.registry ? remote.sourceCredentials : undefined, { insecure: s.insecure, mirror: s.mirror }),
      ref: { ...ref, registry: s.registry, repository: s.repository },
      mirror: s.mirror,
    })),
  );
  return new MirroredSource(endpoints, ctx.onWarning ?? (() => undefined));
}

async function distributionStore(name: ImageName & { transport: 'file' | 's3' }, ctx: EndpointContext, create: boolean) {
  const { DistributionStore } = await import('../transports/distribution/store.js');
  if (name.transport === 'file') {
    if (create) await fs.mkdir(name.root, { recursive: true });
    else await requireDirectory(name.root, name.raw, 'the registry storage root');
    const { FsDriver } = await import('../storage/fs-driver.js');
    return new DistributionStore(new FsDriver(path.resolve(name.root)));
  }
  const { S3Driver, s3ClientFromEnvironment } = await import('../storage/s3-driver.js');
  const client = s3ClientFromEnvironment({
    ...(ctx.remote?.s3Endpoint ? { endpoint: ctx.remote.s3Endpoint } : {}),
    ...(ctx.remote?.s3Region ? { region: ctx.remote.s3Region } : {}),
    ...(ctx.remote?.stallTimeoutMs ? { stallTimeoutMs: ctx.remote.stallTimeoutMs } : {}),
  });
  return new DistributionStore(
    new S3Driver({
      bucket: name.bucket,
      rootDirectory: name.root,
      client,
      ...(ctx.remote?.stallTimeoutMs ? { stallTimeoutMs: ctx.remote.stallTimeoutMs } : {}),
      ...(ctx.onWarning ? { onRetry: ctx.onWarning } : {}),
    }),
  );
}

export type OpenedSource =
  | { kind: 'random'; source: ImageSource }
  | { kind: 'stream'; input: Readable; selection: ArchiveSelection; name: string };

export type OpenedDestination = { kind: 'blobs'; dest: BlobDestination } | { kind: 'image'; writer: ImageWriter };

async function requireDirectory(p: string, raw: string, what: string): Promise<void> {
  const st = await fs.stat(p).catch(() => undefined);
  if (!st) throw new SmartError('NOT_FOUND', `${raw}: no such directory ${p}`, { input: raw });
  if (!st.isDirectory()) throw new SmartError('NOT_AN_IMAGE', `${raw}: ${p} is not a directory (${what})`, { input: raw });
}

export async function openSource(name: ImageName, ctx: EndpointContext): Promise<OpenedSource> {
  switch (name.transport) {
    case 'oci': {
      await requireDirectory(name.dir, name.raw, 'an OCI layout is a directory');
      const { OciLayoutSource } = await import('../transports/oci-layout/layout.js');
      const { FsDriver } = await import('../storage/fs-driver.js');
      return { kind: 'random', source: new OciLayoutSource(name.raw, new FsDriver(path.resolve(name.dir)), name.tag) };
    }
    case 'oci-archive': {
      const { openOciArchiveSource } = await import('../transports/oci-layout/archive.js');
      return { kind: 'random', source: await openOciArchiveSource(name.file, name.tag, name.raw) };
    }
    case 'docker-archive': {
      if (name.file === '-') return { kind: 'stream', input: ctx.stdin, selection: name.selection, name: name.raw };
      const { openDockerArchiveSource } = await import('../transports/docker-archive/source.js');
      return { kind: 'random', source: await openDockerArchiveSource(name.file, name.selection, name.raw) };
    }
    case 'file':
    case 's3': {
      if (!name.ref) {
        throw new SmartError('USAGE', `${name.raw} names a whole store; name an image as ${name.transport === 'file' ? 'file:ROOT' : 's3://BUCKET[/ROOT]'}#REPO[:TAG|@DIGEST]`, {
          input: name.raw,
        });
      }
      const { DistributionSource } = await import('../transports/distribution/adapters.js');
      return { kind: 'random', source: new DistributionSource(await distributionStore(name, ctx, false), name.ref) };
    }
    case 'docker':
      return { kind: 'random', source: await pullSource(name.ref, ctx) };
    case 'rootfs':
    case 'bundle':
      throw new SmartError('USAGE', `${name.raw}: ${name.transport}: is a destination only`, { input: name.raw });
  }
}

/** The local files or directories an image name reads, and what each is. */
function localPaths(name: ImageName): { path: string; what: string }[] {
  switch (name.transport) {
    case 'oci':
      return [{ path: name.dir, what: 'the source layout' }];
    case 'oci-archive':
      return [{ path: name.file, what: 'the source archive' }];
    case 'docker-archive':
      return name.file === '-' ? [] : [{ path: name.file, what: 'the source archive' }];
    case 'file':
      return [{ path: name.root, what: 'the source store' }];
    default:
      return [];
  }
}

export interface DestinationOptions {
  /** The source's name, for a docker-archive's RepoTags when the destination names none. */
  source?: ImageName;
}

export async function openDestination(name: ImageName, ctx: EndpointContext, options: DestinationOptions = {}): Promise<OpenedDestination> {
  switch (name.transport) {
    case 'oci': {
      const { OciLayoutDestination } = await import('../transports/oci-layout/layout.js');
      const { FsDriver } = await import('../storage/fs-driver.js');
      await fs.mkdir(name.dir, { recursive: true });
      const dest = new OciLayoutDestination(name.raw, new FsDriver(path.resolve(name.dir)), name.tag);
      await dest.prepare();
      return { kind: 'blobs', dest };
    }
    case 'oci-archive': {
      const { OciArchiveDestination } = await import('../transports/oci-layout/archive.js');
      const dest = new OciArchiveDestination(name.raw, path.resolve(name.file), name.tag);
      await dest.prepare();
      return { kind: 'blobs', dest };
    }
    case 'docker-archive': {
      const { DockerArchiveWriter } = await import('../transports/docker-archive/writer.js');
      if (name.selection.kind === 'index') throw new SmartError('USAGE', `${name.raw}: :@N selects an image to read; to write, name it :NAME:TAG`, { input: name.raw });
      const repoTag = name.selection.kind === 'name' ? name.selection.name : options.source ? defaultRepoTag(options.source) : undefined;
      const target = name.file === '-' ? { stream: ctx.stdout } : { file: path.resolve(name.file) };
      return { kind: 'image', writer: new DockerArchiveWriter(name.raw, { ...target, ...(repoTag ? { repoTag } : {}) }) };
    }
    case 'file':
    case 's3': {
      if (!name.ref) {
        throw new SmartError('USAGE', `${name.raw} names a whole store; name the image to write as ${name.transport === 'file' ? 'file:ROOT' : 's3://BUCKET[/ROOT]'}#REPO[:TAG]`, {
          input: name.raw,
        });
      }
      const { DistributionDestination } = await import('../transports/distribution/adapters.js');
      const dest = new DistributionDestination(await distributionStore(name, ctx, true), name.ref, ctx.onWarning ? { onWarning: ctx.onWarning } : {});
      dest.prepare();
      return { kind: 'blobs', dest };
    }
    case 'docker': {
      const { RegistryDestination } = await import('../transports/registry/adapters.js');
      const source = options.source;
      const mountFrom = source?.transport === 'docker' && source.ref.registry === name.ref.registry ? source.ref.repository : undefined;
      const client = await registryClient(name.ref.registry, ctx, ctx.remote?.destinationCredentials);
      return {
        kind: 'blobs',
        dest: new RegistryDestination(client, name.ref, { ...(mountFrom ? { mountFrom } : {}), ...(ctx.blobInfo ? { locations: ctx.blobInfo } : {}) }),
      };
    }
    case 'rootfs':
    case 'bundle': {
      const { RootfsWriter } = await import('../transports/rootfs/writer.js');
      const writer = new RootfsWriter(name.raw, name.dir, {
        bundle: name.transport === 'bundle',
        ...(ctx.onWarning ? { onWarning: ctx.onWarning } : {}),
        ...(ctx.layerStore ? { layerStore: ctx.layerStore } : {}),
        ...(ctx.link ? { link: true } : {}),
        ...(ctx.keepLayers !== undefined ? { keepLayers: ctx.keepLayers } : {}),
        ...(ctx.force ? { force: true } : {}),
        protect: [...(options.source ? localPaths(options.source) : []), ...(ctx.layerStore ? [{ path: ctx.layerStore.dir, what: 'the layer store' }] : [])],
      });
      // Refused before anything is fetched.
      await writer.prepare();
      return { kind: 'image', writer };
    }
  }
}
