/**
 * Every transport, in one map (containers/image's `alltransports`): parsing a name, opening it,
 * the help text, the "unknown transport" error and the README's table all read this list. Each
 * entry is light; what it opens is loaded only when it opens it.
 */
import { SmartError } from '../errors.js';
import type { Destination, Source } from '../oci/image.js';
import { dockerArchive } from './docker-archive/transport.js';
import { file, s3 } from './distribution/transport.js';
import { oci, ociArchive } from './oci-layout/transport.js';
import { docker } from './registry/transport.js';
import { bundle, rootfs } from './rootfs/transport.js';
import { invalidName, type ImageNameBase, type OpenContext, type SourceFacts, type StoreAccess, type StoreScope, type Transport } from './transport.js';

/** In the order help and the README list them. */
export const TRANSPORTS = [oci, ociArchive, dockerArchive, docker, file, s3, rootfs, bundle] as const;

type AnyTransport = (typeof TRANSPORTS)[number];

/** A parsed image name, whichever transport it names. */
export type ImageName = ReturnType<AnyTransport['parse']>;

const BY_NAME = new Map<string, Transport<ImageNameBase>>(TRANSPORTS.map((t) => [t.name, t as unknown as Transport<ImageNameBase>]));

/** The transport of a parsed name. */
export function transportOf(name: ImageNameBase): Transport<ImageNameBase> {
  const t = BY_NAME.get(name.transport);
  if (!t) throw new SmartError('INTERNAL', `no transport ${name.transport}`);
  return t;
}

/** `TRANSPORT:REFERENCE, ...`: every form, for hints. */
export function transportForms(): string {
  return TRANSPORTS.map((t) => t.form).join(', ');
}

/** The help lines, one per transport: its form and what it is. */
export function transportHelp(): { form: string; help: string }[] {
  return TRANSPORTS.map((t) => ({ form: t.form, help: t.help }));
}

/**
 * What an image name of each transport starts with (`oci:`, `docker://`), and whether a path
 * follows it (`oci:DIR`, `file:ROOT`): read off the forms, for shell completion.
 */
export function transportPrefixes(): { prefix: string; takesPath: boolean }[] {
  return TRANSPORTS.map((t) => ({ prefix: /^[a-z0-9-]+:(\/\/)?/.exec(t.form)![0], takesPath: /^[a-z0-9-]+:(DIR|FILE|ROOT)\b/.test(t.form) }));
}

/** Levenshtein distance: how many single-character edits turn `a` into `b`. */
function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) row[j] = Math.min(prev[j]! + 1, row[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = row;
  }
  return prev[b.length]!;
}

/** The known transport a mistyped one most likely meant: the nearest within a third of its length (case aside). */
function nearestTransport(typed: string): string | undefined {
  let best: { name: string; distance: number } | undefined;
  for (const t of TRANSPORTS) {
    const distance = editDistance(typed.toLowerCase(), t.name);
    if (!best || distance < best.distance) best = { name: t.name, distance };
  }
  return best && best.distance <= Math.max(1, Math.floor(best.name.length / 3)) ? best.name : undefined;
}

/** The transport `raw` names and what follows its `NAME:`; a usage error (with a guess) when none. */
function split(raw: string): { transport: Transport<ImageNameBase>; rest: string } {
  const colon = raw.indexOf(':');
  const name = colon < 0 ? '' : raw.slice(0, colon);
  const transport = BY_NAME.get(name);
  if (transport) return { transport, rest: raw.slice(colon + 1) };
  const guess = name ? nearestTransport(name) : undefined;
  const forms = `write TRANSPORT:REFERENCE, one of ${transportForms()}`;
  throw invalidName(raw, name ? `unknown transport "${name}"` : 'no transport', guess ? `did you mean "${guess}:"? ${forms}` : forms);
}

/** Parses a skopeo-style `transport:reference` name. Throws INVALID_REFERENCE (exit 2). */
export function parseImageName(raw: string): ImageName {
  const { transport, rest } = split(raw);
  return transport.parse(rest, raw) as ImageName;
}

/** Opens a name as a source; a transport that can only be written says so. */
export async function openSource(name: ImageName, ctx: OpenContext): Promise<Source> {
  const t = transportOf(name);
  if (!t.openSource) throw new SmartError('USAGE', `${name.raw}: ${t.name}: is a destination only`, { input: name.raw });
  return t.openSource(name, ctx);
}

/** What a destination is told of its source (its tag, its local paths, its registry). */
export function sourceFacts(source: ImageName): SourceFacts {
  const t = transportOf(source);
  const repoTag = t.repoTag?.(source);
  const store = t.storeScope?.(source);
  const host = t.registryHost?.(source);
  return {
    name: source,
    ...(repoTag ? { repoTag } : {}),
    localPaths: t.localPaths?.(source) ?? [],
    ...(host && store?.ref ? { registry: { host, repository: store.ref.repository } } : {}),
  };
}

/** Opens a name as a destination written from `source` (when known). */
export async function openDestination(name: ImageName, ctx: OpenContext, source?: ImageName): Promise<Destination> {
  const t = transportOf(name);
  if (!t.openDestination) throw new SmartError('USAGE', `${name.raw}: ${t.name}: is a source only`, { input: name.raw });
  return t.openDestination(name, ctx, source ? sourceFacts(source) : undefined);
}

/** A whole store named as the cache commands name one: `file:ROOT`, `s3://BUCKET[/ROOT]`, `docker://HOST[:PORT]`. */
export async function openStore(raw: string, ctx: OpenContext): Promise<StoreAccess> {
  const { transport, rest } = split(raw);
  // A transport with a store form of its own (`docker://HOST`) names a store only in that form.
  const name = transport.parseStore ? transport.parseStore(rest, raw) : transport.capabilities.namesStore ? transport.parse(rest, raw) : undefined;
  if (!name || !transport.openStore) {
    const stores = TRANSPORTS.filter((t) => t.capabilities.namesStore).map((t) => t.form.replace(/#.*|\/REPO.*/, ''));
    throw new SmartError('USAGE', `${raw} is not a store: name one as ${stores.slice(0, -1).join(', ')} or ${stores.at(-1)}`, { input: raw });
  }
  return transport.openStore(name, ctx);
}

/** Where facts cached about a name's store are kept (and the image it names there); undefined for names the cache does not follow. */
export function storeScope(name: ImageName): StoreScope | undefined {
  return transportOf(name).storeScope?.(name);
}

/** The registry host a name (an image or a whole registry) talks to; undefined for names that are no registry. */
export function registryHost(raw: string): string | undefined {
  const colon = raw.indexOf(':');
  const transport = colon < 0 ? undefined : BY_NAME.get(raw.slice(0, colon));
  if (!transport?.registryHost) return undefined;
  const rest = raw.slice(colon + 1);
  return transport.registryHost(transport.parseStore?.(rest, raw) ?? transport.parse(rest, raw));
}
