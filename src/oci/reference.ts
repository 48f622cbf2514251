/**
 * Image references, `[host[:port]/]path[:tag][@digest]`, with the grammar and the defaults of
 * Docker's distribution/reference: docker.io, library/ for one-component names, tag latest.
 */
import { SmartError, quoted } from '../errors.js';
import { redactImageName, userinfoEnd } from '../redact.js';
import { parseDigest, type Digest } from './digest.js';

export const DEFAULT_REGISTRY = 'docker.io';
export const DEFAULT_TAG = 'latest';

const PATH_COMPONENT = '[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*';
const REPOSITORY_RE = new RegExp(`^${PATH_COMPONENT}(?:/${PATH_COMPONENT})*$`);
const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const DOMAIN_COMPONENT = '(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])';
const HOST_RE = new RegExp(`^(?:${DOMAIN_COMPONENT}(?:\\.${DOMAIN_COMPONENT})*|\\[[0-9a-fA-F:.]+\\])(?::([0-9]+))?$`);
const MAX_NAME_LENGTH = 255;

export interface Reference {
  /** `host[:port]`; empty for references inside a store (`file:ROOT#repo`), which have no registry. */
  registry: string;
  repository: string;
  tag?: string;
  digest?: Digest;
}

/**
 * A registry `host[:port]` as Docker's grammar writes one, its port one that can be connected to
 * (1-65535: the grammar takes any digits, and a URL made of a larger one cannot even be built).
 */
export function isValidHost(s: string): boolean {
  const m = HOST_RE.exec(s);
  return !!m && !portOutOfRange(m[1]);
}

/** What is wrong with a `host[:port]` that is one by its grammar but whose port is not 1-65535. */
export function hostPortProblem(s: string): string | undefined {
  const port = HOST_RE.exec(s)?.[1];
  return portOutOfRange(port) ? `port ${port} is not 1-65535` : undefined;
}

function portOutOfRange(port: string | undefined): boolean {
  return port !== undefined && !(Number(port) >= 1 && Number(port) <= 65535);
}

export function isValidRepository(s: string): boolean {
  return s.length <= MAX_NAME_LENGTH && REPOSITORY_RE.test(s);
}

export function isValidTag(s: string): boolean {
  return TAG_RE.test(s);
}

/** Where credentials typed into an image name should go instead. */
export const CREDENTIALS_HINT = 'pass them with --creds USER:PASSWORD (--src-creds/--dest-creds for one side), or log in with docker login';

function bad(s: string, why: string): SmartError {
  // Credentials typed into a reference (user:pass@host/repo) are not shown, whatever else is wrong.
  if (userinfoEnd(s) >= 0) {
    const shown = redactImageName(s);
    return new SmartError('INVALID_REFERENCE', `invalid image reference "${shown}": credentials do not go inside an image name`, { input: shown, hint: CREDENTIALS_HINT });
  }
  return new SmartError('INVALID_REFERENCE', `invalid image reference ${quoted(s)}: ${why}`, { input: s });
}

/** Splits `name[:tag][@digest]`; the tag colon is the last one after the last slash. */
function splitTagDigest(s: string, input: string): { name: string; tag?: string; digest?: Digest } {
  let rest = s;
  let digest: Digest | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    try {
      digest = parseDigest(rest.slice(at + 1), input);
    } catch (e) {
      throw bad(input, (e as Error).message);
    }
    rest = rest.slice(0, at);
  }
  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!isValidTag(tag)) throw bad(input, `invalid tag "${tag}" (letters, digits, _ . -, at most 128, not starting with . or -)`);
  }
  return { name: rest, ...(tag !== undefined ? { tag } : {}), ...(digest ? { digest } : {}) };
}

function checkRepository(repo: string, input: string): void {
  if (repo === '') throw bad(input, 'empty repository name');
  if (repo.length > MAX_NAME_LENGTH) throw bad(input, `repository name longer than ${MAX_NAME_LENGTH} characters`);
  if (!REPOSITORY_RE.test(repo)) {
    throw bad(input, `invalid repository name "${repo}" (lowercase letters, digits and separators . _ __ - between path components)`);
  }
}

/**
 * Parses a registry reference (`docker://` form, without the transport). Applies Docker's
 * defaults: docker.io, library/ and, when neither tag nor digest is given, `latest`.
 */
export function parseReference(s: string): Reference {
  if (s === '') throw bad(s, 'empty');
  const { name, tag, digest } = splitTagDigest(s, s);
  let registry = DEFAULT_REGISTRY;
  let repository = name;
  const slash = name.indexOf('/');
  if (slash >= 0) {
    const first = name.slice(0, slash);
    // The first component is a host when it looks like one, exactly as Docker decides.
    if (first.includes('.') || first.includes(':') || first === 'localhost' || first !== first.toLowerCase()) {
      if (!isValidHost(first)) {
        const problem = hostPortProblem(first);
        throw bad(s, `invalid registry host "${first}"${problem ? `: ${problem}` : ''}`);
      }
      registry = first;
      repository = name.slice(slash + 1);
    }
  }
  if (registry === 'index.docker.io') registry = DEFAULT_REGISTRY;
  if (registry === DEFAULT_REGISTRY && !repository.includes('/')) repository = `library/${repository}`;
  checkRepository(repository, s);
  return { registry, repository, ...(tag !== undefined ? { tag } : {}), ...(digest ? { digest } : {}), ...(tag === undefined && !digest ? { tag: DEFAULT_TAG } : {}) };
}

/** Parses `repo[:tag][@digest]` inside a store (no registry host, no library/ prefix); tag defaults to latest. */
export function parseRepositoryReference(s: string, input = s): Reference {
  if (s === '') throw bad(input, 'empty repository');
  const { name, tag, digest } = splitTagDigest(s, input);
  checkRepository(name, input);
  return { registry: '', repository: name, ...(tag !== undefined ? { tag } : {}), ...(digest ? { digest } : {}), ...(tag === undefined && !digest ? { tag: DEFAULT_TAG } : {}) };
}

export function formatReference(r: Reference): string {
  let s = r.registry ? `${r.registry}/${r.repository}` : r.repository;
  if (r.tag) s += `:${r.tag}`;
  if (r.digest) s += `@${r.digest}`;
  return s;
}
