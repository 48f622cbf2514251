/**
 * Where an image is pulled from and pushed to under a registries.conf: the entry whose prefix
 * matches (the longest), its location rewrite, its mirrors (pulls only), and the blocked and
 * insecure settings of every host on the way. Docker's `--registry-mirror` mirrors come first
 * for Docker Hub.
 */
import { SmartError } from '../../../errors.js';
import { formatReference, hostPortProblem, isValidHost, parseReference, type Reference } from '../../../oci/reference.js';
import { hostOf, type RegistriesConf, type RegistryEntry } from './model.js';

export interface PullSource {
  /** `host[:port]` (`docker.io` for Docker Hub, as in references). */
  registry: string;
  repository: string;
  /** Plain HTTP and unverified TLS allowed for this endpoint (the caller may add --insecure-registry). */
  insecure: boolean;
  /** A mirror (tag and digest of the reference unchanged); false for the upstream location. */
  mirror: boolean;
}

export interface PushDestination {
  registry: string;
  repository: string;
  insecure: boolean;
}

export interface ExtraMirrors {
  /** Docker daemon `--registry-mirror` values (`HOST[:PORT]` or `https://HOST[:PORT]`), for docker.io only. */
  dockerHub?: string[];
}

/** `registry/repository[:tag][@digest]`, what prefixes are matched against. */
function refString(ref: Reference): string {
  return `${ref.registry}/${ref.repository}${ref.tag !== undefined ? `:${ref.tag}` : ''}${ref.digest !== undefined ? `@${ref.digest}` : ''}`;
}

/**
 * How much of `s` (`host[:port]`, a name, or a whole reference) the prefix matches, or -1. The
 * prefix must end where a component does: before `/`, `@`, or the `:` of a tag (a `:` after a bare
 * host is a port: `example.com` does not match `example.com:5000/x`, unlike containers/image).
 * `*.example.com` matches any host (any port) under example.com and consumes the `host[:port]`.
 */
function matchPrefix(s: string, prefix: string): number {
  if (prefix.startsWith('*.')) {
    const host = hostOf(s);
    const bare = host.replace(/:\d+$/, '');
    const domain = prefix.slice(1).toLowerCase();
    return bare.length > domain.length && bare.toLowerCase().endsWith(domain) ? host.length : -1;
  }
  if (!s.startsWith(prefix)) return -1;
  if (s.length === prefix.length) return prefix.length;
  const c = s[prefix.length];
  if (c === '/' || c === '@' || (c === ':' && prefix.includes('/'))) return prefix.length;
  return -1;
}

/** The `[[registry]]` for `s`: the longest prefix that matches; on a tie an exact prefix beats a wildcard. */
function findEntry(conf: RegistriesConf, s: string): { entry: RegistryEntry; length: number } | undefined {
  let best: { entry: RegistryEntry; length: number } | undefined;
  for (const entry of conf.registries) {
    const length = matchPrefix(s, entry.prefix);
    if (length < 0) continue;
    const better =
      !best || entry.prefix.length > best.entry.prefix.length || (entry.prefix.length === best.entry.prefix.length && best.entry.prefix.startsWith('*.') && !entry.prefix.startsWith('*.'));
    if (better) best = { entry, length };
  }
  return best;
}

/** The `[[registry]]` that applies to an image reference, if any (longest prefix). */
export function findRegistry(conf: RegistriesConf, ref: Reference): RegistryEntry | undefined {
  return findEntry(conf, refString(ref))?.entry;
}

function blockedError(entry: RegistryEntry, ref: Reference): SmartError {
  const label = entry.prefix;
  return new SmartError('USAGE', `registry ${label} is blocked by ${entry.file}`, {
    input: formatReference(ref),
    hint: `remove "blocked = true" from the [[registry]] with prefix "${label}" (line ${entry.line}) if this image may be used`,
  });
}

/** The settings of a physical host: the [[registry]] whose prefix is that host (or a wildcard over it). */
function hostEntry(conf: RegistriesConf, host: string): RegistryEntry | undefined {
  return findEntry(conf, host)?.entry;
}

/** `location` + what follows the matched prefix in the name; Docker's defaults applied again. */
function rewrite(location: string, ref: Reference, matched: number, entry: RegistryEntry): { registry: string; repository: string } {
  if (location === '') return { registry: ref.registry, repository: ref.repository };
  const name = `${ref.registry}/${ref.repository}`;
  const target = location + (matched < name.length ? name.slice(matched) : '');
  try {
    const r = parseReference(target);
    return { registry: r.registry, repository: r.repository };
  } catch (e) {
    throw new SmartError(
      'USAGE',
      `${entry.file}:${entry.line}: [[registry]] with prefix "${entry.prefix}" rewrites ${formatReference(ref)} to "${target}", which is not a valid image name (${(e as Error).message})`,
      { input: formatReference(ref), cause: e },
    );
  }
}

/** A Docker daemon `registry-mirrors` value: `[http[s]://]host[:port][/]`, nothing more. */
export function parseDockerMirror(value: string): { host: string; insecure: boolean } {
  const bad = (why: string) =>
    new SmartError('USAGE', `invalid registry mirror "${value}": ${why}`, { input: value, hint: 'a mirror is HOST[:PORT] or https://HOST[:PORT] (Docker Hub mirrors serve the same paths)' });
  let v = value.trim();
  let insecure = false;
  const scheme = /^([a-zA-Z][a-zA-Z0-9+.-]*):\/\//.exec(v);
  if (scheme) {
    const s = scheme[1]!.toLowerCase();
    if (s !== 'http' && s !== 'https') throw bad(`unsupported scheme "${s}"`);
    insecure = s === 'http';
    let url: URL;
    try {
      url = new URL(v);
    } catch {
      throw bad('not a URL');
    }
    if (url.username || url.password) throw bad('credentials do not belong in a mirror URL');
    if ((url.pathname !== '/' && url.pathname !== '') || url.search || url.hash) throw bad('a path, query or fragment is not supported');
    v = url.host;
  } else {
    v = v.replace(/\/+$/, '');
  }
  if (!isValidHost(v)) throw bad(hostPortProblem(v) ?? 'not a host[:port]');
  return { host: v, insecure };
}

/**
 * Where to pull `ref` from, in the order to try: `--registry-mirror` mirrors (docker.io references
 * only, same repository path), then the mirrors of the matching `[[registry]]` (a pull by tag skips
 * digest-only mirrors, a pull by digest skips tag-only ones), then its location (prefix
 * rewritten), or the reference's own registry when no entry matches. Endpoints on a host that is
 * itself blocked are left out; a blocked match throws `USAGE`.
 */
export function pullSources(conf: RegistriesConf, ref: Reference, extraMirrors: ExtraMirrors = {}): PullSource[] {
  if (!ref.registry) throw new SmartError('INTERNAL', `pullSources: ${formatReference(ref)} names no registry`);
  const found = findEntry(conf, refString(ref));
  if (found?.entry.blocked) throw blockedError(found.entry, ref);
  const byDigest = ref.digest !== undefined;
  const out: PullSource[] = [];
  let blockedHost: RegistryEntry | undefined;
  const add = (registry: string, repository: string, insecure: boolean, mirror: boolean) => {
    const host = hostEntry(conf, registry);
    if (host?.blocked) {
      blockedHost ??= host;
      return;
    }
    if (out.some((s) => s.registry === registry && s.repository === repository)) return;
    out.push({ registry, repository, insecure: insecure || (host?.insecure ?? false), mirror });
  };
  if (ref.registry === 'docker.io') {
    for (const m of extraMirrors.dockerHub ?? []) {
      const { host, insecure } = parseDockerMirror(m);
      add(host, ref.repository, insecure, true);
    }
  }
  if (found) {
    const { entry, length } = found;
    for (const m of entry.mirrors) {
      const use = entry.mirrorByDigestOnly ? byDigest : m.pullFromMirror === 'digest-only' ? byDigest : m.pullFromMirror === 'tag-only' ? !byDigest : true;
      if (!use) continue;
      const r = rewrite(m.location, ref, length, entry);
      add(r.registry, r.repository, m.insecure, true);
    }
    const r = rewrite(entry.location, ref, length, entry);
    add(r.registry, r.repository, entry.insecure, false);
  } else {
    add(ref.registry, ref.repository, false, false);
  }
  if (out.length === 0) throw blockedError(blockedHost!, ref);
  return out;
}

/** Where to push `ref`: the location rewrite and the blocked check only; never a mirror. */
export function pushDestination(conf: RegistriesConf, ref: Reference): PushDestination {
  if (!ref.registry) throw new SmartError('INTERNAL', `pushDestination: ${formatReference(ref)} names no registry`);
  const found = findEntry(conf, refString(ref));
  if (found?.entry.blocked) throw blockedError(found.entry, ref);
  const r = found ? rewrite(found.entry.location, ref, found.length, found.entry) : { registry: ref.registry, repository: ref.repository };
  const host = hostEntry(conf, r.registry);
  if (host?.blocked) throw blockedError(host, ref);
  return { ...r, insecure: (found?.entry.insecure ?? false) || (host?.insecure ?? false) };
}
