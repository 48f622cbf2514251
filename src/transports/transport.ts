/**
 * What a transport is, after containers/image's `types.ImageTransport`: a name, a parser of what
 * follows `NAME:`, the factories it supports, its capabilities and its line of help. Each folder
 * here implements it in one `transport.ts`, which loads the implementation only when a factory
 * runs; `all.ts` holds the one map that parsing, opening, help and errors read.
 */
import fs from 'node:fs/promises';
import type { Readable, Writable } from 'node:stream';
import { SmartError } from '../errors.js';
import type { Digest } from '../oci/digest.js';
import type { Destination, ImageSource, Source } from '../oci/image.js';
import { CREDENTIALS_HINT, type Reference } from '../oci/reference.js';
import { redactImageName, userinfoEnd } from '../redact.js';
import type { BlobInfoCache } from '../cache/blob-info.js';
import type { LayerStore } from '../cache/layer-store.js';
import type { RegistrySchemes } from './registry/client.js';
import type { Credentials } from './registry/credentials.js';

/** A parsed image name: the transport, the name as typed, and what the transport made of the rest. */
export interface ImageNameBase {
  readonly transport: string;
  readonly raw: string;
}

export interface TransportCapabilities {
  /** `NAME:-` reads the image from stdin, as a stream: its layers become known as they arrive. */
  readsStdin?: boolean;
  /** `NAME:-` writes the image to stdout. */
  writesStdout?: boolean;
  /** A destination of `pull` only (a root filesystem, a bundle): `push` refuses it. */
  pullOnly?: boolean;
  /** A destination that holds one image (a root filesystem, a bundle, a docker-archive): one platform of an index, never all. */
  holdsOneImage?: boolean;
  /** A name without a repository names a whole store (`file:ROOT`), as the cache commands take it. */
  namesStore?: boolean;
  /**
   * A content-addressed destination (blobs, then manifests, then the tag): the only kind a
   * streamed source can be copied into, since nothing else can take layers before the image.
   */
  contentAddressed?: boolean;
}

/** A local file or directory a name reads, and what it is (a destination must not replace it). */
export interface LocalPath {
  path: string;
  what: string;
}

/** Registry and S3 settings of a command, given the same way to every client it makes. */
export interface RemoteOptions {
  /** Registry credentials for the source and the destination (else the Docker config's). */
  sourceCredentials?: Credentials;
  destinationCredentials?: Credentials;
  /**
   * The flag that gives the source's and the destination's registry credentials, for hints:
   * `--creds` when not given; null where no flag reaches that registry alone (ops/credentials.ts credentialFlags).
   */
  sourceCredentialsFlag?: string | null;
  destinationCredentialsFlag?: string | null;
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

/** What opening a name may need besides the name: the command's streams, settings and local state. */
export interface OpenContext {
  stdin: Readable;
  stdout: Writable;
  /** Told of retries, stalls, mirror fall-backs: what does not stop the work but the user should see. */
  onWarning?: (message: string) => void;
  remote?: RemoteOptions;
  /** What scheme registries allowed plain HTTP answered on last time (local-state.ts). */
  registrySchemes?: RegistrySchemes;
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

/** What a destination is told of the source it is written from. */
export interface SourceFacts {
  name: ImageNameBase;
  /** `repo:tag` the source names, for a docker-archive's RepoTags when the destination names none. */
  repoTag?: string;
  /** Local paths the source reads: a destination that replaces a directory must not hold them. */
  localPaths: readonly LocalPath[];
  /** The registry the source is read from (`docker://` sources): blobs may be mounted from its repository. */
  registry?: { host: string; repository: string };
}

/**
 * A whole store (`file:ROOT`, `s3://BUCKET[/ROOT]`, `docker://HOST`) as the cache commands see it:
 * its repositories, their tags, what a tag points at, and an image source for any of them.
 */
export interface StoreAccess {
  /** `file:/abs/root`, `s3://bucket/root`, `docker://host`: the scope of cached facts about it. */
  readonly scope: string;
  repositories(): Promise<string[]>;
  tags(repository: string): Promise<string[]>;
  /** What the tag points at now (undefined: gone). */
  tagDigest(repository: string, tag: string): Promise<Digest | undefined>;
  /** A source over one image of the store; closing it leaves the store open. */
  source(ref: Reference): Promise<ImageSource>;
  close(): Promise<void>;
}

/** Where the facts cached about a name are kept: the store's scope, and the image in it (if the name names one). */
export interface StoreScope {
  scope: string;
  ref?: Reference;
}

/**
 * One transport. Contract: `parse` is pure (no I/O) and throws INVALID_REFERENCE (exit 2) with the
 * name as typed (credentials never echoed); a factory the transport lacks is a capability it has
 * not (`openSource` absent: a destination only). Factories load their implementation when called.
 */
export interface Transport<N extends ImageNameBase = ImageNameBase, S extends ImageNameBase = N> {
  /** What precedes the first `:` of its names (`oci`, `docker`). */
  readonly name: string;
  /** How its names are written: `oci:DIR[:TAG]`. */
  readonly form: string;
  /** One line of help: what a name of this transport is. */
  readonly help: string;
  readonly capabilities: TransportCapabilities;
  /** Parses `raw`, whose part after `NAME:` is `rest`. */
  parse(rest: string, raw: string): N;
  /**
   * A whole store in this transport's own form where it differs from an image name
   * (`docker://HOST[:PORT][/]`); undefined when `raw` is not one.
   */
  parseStore?(rest: string, raw: string): S | undefined;
  /** Whether this name is stdin (a source) or stdout (a destination): `docker-archive:-`. */
  isStdio?(name: N): boolean;
  openSource?(name: N, ctx: OpenContext): Promise<Source>;
  openDestination?(name: N, ctx: OpenContext, source?: SourceFacts): Promise<Destination>;
  openStore?(name: S, ctx: OpenContext): Promise<StoreAccess>;
  /** Where facts cached about this name's store are kept; undefined: the cache does not follow its images. */
  storeScope?(name: N): StoreScope | undefined;
  /** The `repo:tag` this name gives an image (RepoTags of a docker-archive written from it). */
  repoTag?(name: N): string | undefined;
  /** Local files and directories the name reads. */
  localPaths?(name: N): LocalPath[];
  /**
   * The reference of what a push to this name stored, as `crane push` prints it
   * (`HOST/REPO@sha256:…`, `file:ROOT#REPO@sha256:…`); undefined where the digest says it all
   * (layouts and archives are files).
   */
  storedReference?(name: N, digest: Digest): string | undefined;
  /** The registry host this name talks to, which decides the credentials it gets. */
  registryHost?(name: N | S): string | undefined;
}

/** A malformed name: a usage error (exit 2) naming it, credentials typed into a URL form hidden. */
export function invalidName(raw: string, why: string, hint?: string): SmartError {
  // Only the URL forms have an authority where credentials could have been typed.
  const shown = /^[a-z0-9]+:\/\//.test(raw) ? redactImageName(raw) : raw;
  return new SmartError('INVALID_REFERENCE', `invalid image name "${shown}": ${why}`, { input: shown, hint });
}

/** `docker://user:pass@host/…`: refused before anything echoes the name, the credentials not shown. */
export function refuseUserinfo(raw: string, hint = CREDENTIALS_HINT): void {
  if (userinfoEnd(raw) >= 0) throw invalidName(raw, 'credentials do not go inside an image name', hint);
}

/** Splits `PATH[:REST]` at the first colon, as skopeo does (paths cannot contain one). */
export function splitPath(rest: string): [string, string | undefined] {
  const i = rest.indexOf(':');
  return i < 0 ? [rest, undefined] : [rest.slice(0, i), rest.slice(i + 1)];
}

/** Fails unless `p` is a directory: NOT_FOUND when nothing is there (a typo), NOT_AN_IMAGE for anything else. */
/**
 * A destination directory, made when missing: what is there and is not a directory (a file named
 * by mistake) is refused in one line, before anything is written, rather than as mkdir's EEXIST.
 */
export async function refuseNonDirectory(p: string, raw: string, what: string, hint?: string): Promise<void> {
  const st = await fs.stat(p).catch(() => undefined);
  if (st && !st.isDirectory()) throw new SmartError('USAGE', `${raw}: ${p} exists and is not a directory (${what})`, { input: raw, ...(hint ? { hint } : {}) });
}

export async function requireDirectory(p: string, raw: string, what: string, hint?: string): Promise<void> {
  const st = await fs.stat(p).catch(() => undefined);
  if (!st) throw new SmartError('NOT_FOUND', `${raw}: no such directory ${p}`, { input: raw });
  if (!st.isDirectory()) throw new SmartError('NOT_AN_IMAGE', `${raw}: ${p} is not a directory (${what})`, { input: raw, ...(hint && st.isFile() ? { hint } : {}) });
}
