/** Descriptors, image manifests and indexes of both families: types and validating parsers. */
import { SmartError, quoted } from '../errors.js';
import { checkJson } from '../limits.js';
import { parseDigest, sha256Digest, type Digest } from './digest.js';
import { isImageManifestMediaType, isIndexMediaType, MediaType } from './mediatypes.js';

/** What a descriptor in an index says it runs on (parsing and picking one: platform.ts). */
export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
  'os.version'?: string;
  'os.features'?: string[];
}

export interface Descriptor {
  mediaType: string;
  digest: Digest;
  size: number;
  urls?: string[];
  annotations?: Record<string, string>;
  platform?: Platform;
  artifactType?: string;
}

export interface ImageManifest {
  schemaVersion: 2;
  mediaType?: string;
  artifactType?: string;
  config: Descriptor;
  layers: Descriptor[];
  subject?: Descriptor;
  annotations?: Record<string, string>;
}

export interface ImageIndex {
  schemaVersion: 2;
  mediaType?: string;
  artifactType?: string;
  manifests: Descriptor[];
  subject?: Descriptor;
  annotations?: Record<string, string>;
}

/** Manifest bytes as stored, kept together with what they parse to, so copies can keep them byte for byte. */
export type ParsedManifest =
  | { kind: 'manifest'; mediaType: string; digest: Digest; bytes: Buffer; manifest: ImageManifest }
  | { kind: 'index'; mediaType: string; digest: Digest; bytes: Buffer; index: ImageIndex };

/** Larger manifests are refused (as the registry refuses them): no real one comes close, and the bytes are held in memory. */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

function invalid(what: string, input: string | undefined): SmartError {
  return new SmartError('MANIFEST_INVALID', `invalid manifest${input ? ` ${input}` : ''}: ${what}`, { input });
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function parseStringMap(v: unknown, where: string, input: string | undefined): Record<string, string> | undefined {
  if (v === undefined || v === null) return undefined;
  if (!isObject(v)) throw invalid(`${where} must be an object of strings`, input);
  for (const [k, s] of Object.entries(v)) {
    if (typeof s !== 'string') throw invalid(`${where}.${k} must be a string`, input);
  }
  return v as Record<string, string>;
}

export function parseDescriptor(v: unknown, where: string, input?: string): Descriptor {
  if (!isObject(v)) throw invalid(`${where} is not an object`, input);
  const { mediaType, digest, size } = v;
  if (typeof mediaType !== 'string' || mediaType === '') throw invalid(`${where}.mediaType is missing`, input);
  if (typeof digest !== 'string') throw invalid(`${where}.digest is missing`, input);
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) {
    throw invalid(`${where}.size must be a non-negative integer`, input);
  }
  let d: Digest;
  try {
    d = parseDigest(digest);
  } catch (e) {
    throw invalid(`${where}.digest: ${(e as Error).message}`, input);
  }
  const desc: Descriptor = { mediaType, digest: d, size };
  if (v.urls !== undefined) {
    if (!Array.isArray(v.urls) || !v.urls.every((u) => typeof u === 'string')) throw invalid(`${where}.urls must be strings`, input);
    desc.urls = v.urls as string[];
  }
  const annotations = parseStringMap(v.annotations, `${where}.annotations`, input);
  if (annotations) desc.annotations = annotations;
  if (v.platform !== undefined) {
    const p = v.platform;
    if (!isObject(p) || typeof p.os !== 'string' || typeof p.architecture !== 'string') {
      throw invalid(`${where}.platform needs os and architecture`, input);
    }
    desc.platform = p as unknown as Platform;
  }
  if (typeof v.artifactType === 'string') desc.artifactType = v.artifactType;
  return desc;
}

/**
 * Parses and validates manifest bytes. `declaredMediaType` is what the source said (a descriptor, a
 * Content-Type); when the bytes carry their own mediaType the two must agree.
 */
export function parseManifest(bytes: Buffer, declaredMediaType?: string, input?: string): ParsedManifest {
  checkJson(bytes, MAX_MANIFEST_BYTES, `manifest${input ? ` ${input}` : ''}`, input);
  let doc: unknown;
  try {
    doc = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw invalid('not JSON', input);
  }
  if (!isObject(doc)) throw invalid('not a JSON object', input);
  if (doc.schemaVersion === 1) {
    throw new SmartError('UNSUPPORTED', `Docker schema 1 manifests are not supported${input ? `: ${input}` : ''}`, {
      input,
      hint: 'convert the image with a current tool (e.g. re-push it with docker or skopeo)',
    });
  }
  if (doc.schemaVersion !== 2) throw invalid('schemaVersion must be 2', input);
  const inner = typeof doc.mediaType === 'string' ? doc.mediaType : undefined;
  const declared =
    declaredMediaType && (isIndexMediaType(declaredMediaType) || isImageManifestMediaType(declaredMediaType))
      ? declaredMediaType
      : undefined;
  if (inner && declared && inner !== declared) {
    throw invalid(`its mediaType ${quoted(inner, 100)} differs from the declared ${quoted(declared, 100)}`, input);
  }
  let mediaType = inner ?? declared;
  if (!mediaType) {
    // OCI makes mediaType optional: tell the two kinds apart by their fields, as the spec suggests.
    if (Array.isArray(doc.manifests)) mediaType = MediaType.OCI_INDEX;
    else if (isObject(doc.config) && Array.isArray(doc.layers)) mediaType = MediaType.OCI_MANIFEST;
    else throw invalid('neither an image manifest nor an index', input);
  }
  const digest = sha256Digest(bytes);
  const annotations = parseStringMap(doc.annotations, 'annotations', input);
  const subject = doc.subject === undefined ? undefined : parseDescriptor(doc.subject, 'subject', input);
  if (isIndexMediaType(mediaType)) {
    if (!Array.isArray(doc.manifests)) throw invalid('an index needs a manifests array', input);
    const index: ImageIndex = {
      schemaVersion: 2,
      ...(inner ? { mediaType: inner } : {}),
      manifests: doc.manifests.map((m, i) => parseDescriptor(m, `manifests[${i}]`, input)),
      ...(annotations ? { annotations } : {}),
      ...(subject ? { subject } : {}),
    };
    return { kind: 'index', mediaType, digest, bytes, index };
  }
  if (isImageManifestMediaType(mediaType)) {
    if (!Array.isArray(doc.layers)) throw invalid('a manifest needs a layers array', input);
    const manifest: ImageManifest = {
      schemaVersion: 2,
      ...(inner ? { mediaType: inner } : {}),
      config: parseDescriptor(doc.config, 'config', input),
      layers: doc.layers.map((l, i) => parseDescriptor(l, `layers[${i}]`, input)),
      ...(annotations ? { annotations } : {}),
      ...(subject ? { subject } : {}),
    };
    if (typeof doc.artifactType === 'string') manifest.artifactType = doc.artifactType;
    return { kind: 'manifest', mediaType, digest, bytes, manifest };
  }
  if (mediaType === MediaType.DOCKER_MANIFEST_V1 || mediaType === MediaType.DOCKER_MANIFEST_V1_SIGNED) {
    throw new SmartError('UNSUPPORTED', `Docker schema 1 manifests are not supported${input ? `: ${input}` : ''}`, { input });
  }
  throw new SmartError('UNSUPPORTED', `unsupported manifest media type ${quoted(mediaType, 100)}${input ? ` in ${input}` : ''}`, { input });
}

/**
 * Serialises a manifest we build ourselves. Two-space indented JSON like containerd; the digest
 * covers exactly these bytes, so they are produced once and never re-serialised.
 */
export function serializeManifest(doc: ImageManifest | ImageIndex): Buffer {
  return Buffer.from(JSON.stringify(doc, null, 2));
}
