/**
 * What registries.conf says, once read: the model of containers-registries.conf(5) version 2
 * (version 1 files are converted to it), how a drop-in folds into what came before, and the
 * syntax of the host names it holds.
 */
import { isValidHost } from '../../../oci/reference.js';

export type PullFromMirror = 'all' | 'digest-only' | 'tag-only';
export type ShortNameMode = 'enforcing' | 'permissive' | 'disabled';

export interface RegistryMirror {
  /** `host[:port][/path]`, the mirror of the entry's prefix. */
  location: string;
  insecure: boolean;
  /** `all` when not set. */
  pullFromMirror: PullFromMirror;
}

export interface RegistryEntry {
  /** `host[:port][/path][:tag|@digest]` or `*.domain`; defaults to `location`. */
  prefix: string;
  /** `host[:port][/path]` that serves the prefix; '' only with a wildcard prefix (no rewrite). */
  location: string;
  insecure: boolean;
  blocked: boolean;
  mirrorByDigestOnly: boolean;
  mirrors: RegistryMirror[];
  /** Where the entry was written, for messages. */
  file: string;
  line: number;
}

export interface RegistriesConf {
  /** `undefined`: not set by any file read. Kept, not used: references get Docker's defaults. */
  unqualifiedSearchRegistries?: string[];
  /** Kept, not used (same reason). */
  shortNameMode?: ShortNameMode;
  /** Kept, not used: credentials come from the Docker config. */
  credentialHelpers?: string[];
  /** `[aliases]`: short name → fully qualified name. Kept, not used. */
  aliases: Record<string, string>;
  registries: RegistryEntry[];
  /** The files read, in order. */
  files: string[];
  /** Ignored keys and duplicate prefixes, `<file>:<line>: ...`, for a caller that wants to show them. */
  warnings: string[];
}

export function emptyRegistriesConf(): RegistriesConf {
  return { aliases: {}, registries: [], files: [], warnings: [] };
}

/**
 * Folds a drop-in into a configuration, as containers/image does: `[[registry]]` entries replace
 * those of the same prefix, scalar settings and lists replace earlier ones when set, aliases merge.
 */
export function mergeRegistriesConf(base: RegistriesConf, update: RegistriesConf): RegistriesConf {
  const byPrefix = new Map(base.registries.map((r) => [r.prefix, r] as const));
  for (const r of update.registries) byPrefix.set(r.prefix, r);
  const unqualifiedSearchRegistries = update.unqualifiedSearchRegistries ?? base.unqualifiedSearchRegistries;
  const shortNameMode = update.shortNameMode ?? base.shortNameMode;
  const credentialHelpers = update.credentialHelpers ?? base.credentialHelpers;
  return {
    ...(unqualifiedSearchRegistries !== undefined ? { unqualifiedSearchRegistries } : {}),
    ...(shortNameMode !== undefined ? { shortNameMode } : {}),
    ...(credentialHelpers !== undefined ? { credentialHelpers } : {}),
    aliases: { ...base.aliases, ...update.aliases },
    registries: [...byPrefix.values()],
    files: [...base.files, ...update.files],
    warnings: [...base.warnings, ...update.warnings],
  };
}

const DOMAIN_COMPONENT = '(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])';
export const WILDCARD_RE = new RegExp(`^\\*(?:\\.${DOMAIN_COMPONENT})+$`);
export const DIGEST_RE = /^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;

/** `host[:port]` as Docker tells a registry host from a first path component. */
export function looksLikeHost(s: string): boolean {
  return isValidHost(s) && (s.includes('.') || s.includes(':') || s === 'localhost' || s.startsWith('['));
}

export function hostOf(name: string): string {
  const slash = name.indexOf('/');
  return slash < 0 ? name : name.slice(0, slash);
}
