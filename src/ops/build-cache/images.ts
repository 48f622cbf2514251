/**
 * Images made from a stored image for a builder to use as its cache: the matched prefix as one
 * image (what the Docker classic builder's `--cache-from` reads), and one image per build step of
 * that prefix (what buildah's `--layers` looks for: a local image whose history ends with the step).
 */
import { Readable } from 'node:stream';
import { parseImageConfig, type HistoryEntry, type ImageConfig } from '../../oci/config.js';
import { sha256Digest } from '../../oci/digest.js';
import type { Image, ImageSource, OpenOptions } from '../../oci/image.js';
import { parseManifest, serializeManifest, type Descriptor, type ImageManifest, type ParsedManifest } from '../../oci/manifest.js';
import { configMediaType, manifestFamily } from '../../oci/mediatypes.js';

/**
 * The image cut after its first `historyEntries` history entries: the manifest and the config's
 * diff ids cut to the layers those entries made, the config's own settings as they were at that
 * step (`configAtStep`). `repoTags`: the names a docker-archive written from it carries.
 */
export function historyCutSource(image: Image, source: ImageSource, historyEntries: number, options: { repoTags?: readonly string[]; baseHistory?: number } = {}): ImageSource {
  const config: ImageConfig = parseImageConfig(image.configBytes);
  const history = (config.history ?? []).slice(0, historyEntries);
  const keep = history.filter((h) => !h.empty_layer).length;
  const cut: ImageConfig = {
    ...config,
    ...(config.config ? { config: configAtStep(config, historyEntries, options.baseHistory ?? 0) } : {}),
    rootfs: { type: 'layers' as const, diff_ids: config.rootfs.diff_ids.slice(0, keep) },
    history,
  };
  return sourceOf(image, source, cut, keep, `${image.name} (first ${historyEntries} steps)`, options.repoTags ?? []);
}

function sourceOf(image: Image, source: ImageSource, cut: ImageConfig, keep: number, name: string, repoTags: readonly string[]): ImageSource {
  const configBytes = Buffer.from(JSON.stringify(cut));
  const family = manifestFamily(image.manifest.mediaType);
  const doc: ImageManifest = {
    schemaVersion: 2,
    mediaType: image.manifest.mediaType,
    config: { mediaType: image.manifest.manifest.config.mediaType ?? configMediaType(family), digest: sha256Digest(configBytes), size: configBytes.length },
    layers: image.manifest.manifest.layers.slice(0, keep),
  };
  const manifest = parseManifest(serializeManifest(doc), doc.mediaType, name);
  const { getBlobRange, origins } = source;
  return {
    name,
    getManifest: async (): Promise<ParsedManifest> => manifest,
    getManifestByDigest: async () => manifest,
    getBlob: async (d: Descriptor, o?: OpenOptions) => (d.digest === doc.config.digest ? Readable.from([configBytes]) : source.getBlob(d, o)),
    // The layers are the stored image's: its ranged reads and origins serve them as they are.
    ...(getBlobRange
      ? { getBlobRange: async (d: Descriptor, start: number, end: number, o?: OpenOptions) => (d.digest === doc.config.digest ? [configBytes.subarray(start, end + 1)] : getBlobRange.call(source, d, start, end, o)) }
      : {}),
    ...(origins ? { origins: origins.bind(source) } : {}),
    repoTags: () => repoTags,
    // The stored image's source is shared by every cut: its owner closes it.
    close: async () => undefined,
  };
}

/**
 * How many history entries each per-step image keeps: one image per entry after the base's,
 * through the entry of the last kept layer and the empty entries (ENV, CMD...) that follow it.
 */
export function stepCuts(history: readonly HistoryEntry[], baseHistory: number, keepLayers: number): number[] {
  const out: number[] = [];
  let layers = 0;
  for (let i = 0; i < history.length; i++) {
    const h = history[i]!;
    if (!h.empty_layer) {
      if (layers === keepLayers) break;
      layers++;
    }
    if (i + 1 > baseHistory) out.push(i + 1);
  }
  return out;
}

type ContainerConfig = NonNullable<ImageConfig['config']> & Record<string, unknown>;

/**
 * The container settings an image had after `historyEntries` of its history, as far as the
 * history tells them: the image's final settings with what the steps after the base set undone
 * (a setting the base and a later step both set loses the base's value: history does not keep
 * it), then the steps up to the cut replayed. ENV, WORKDIR, USER, CMD and ENTRYPOINT are followed;
 * other settings (labels, ports, volumes) stay as in the final image.
 */
export function configAtStep(config: ImageConfig, historyEntries: number, baseHistory: number): ContainerConfig {
  const final = { ...(config.config ?? {}) } as ContainerConfig;
  const steps = (config.history ?? []).slice(baseHistory).map((h) => settingOf(h.created_by ?? ''));
  const env = new Map<string, string>();
  for (const kv of (final.Env as string[] | undefined) ?? []) {
    const eq = kv.indexOf('=');
    env.set(eq < 0 ? kv : kv.slice(0, eq), eq < 0 ? '' : kv.slice(eq + 1));
  }
  const out: ContainerConfig = { ...final };
  for (const s of steps) {
    if (!s) continue;
    if (s.kind === 'ENV') for (const [k] of s.pairs) env.delete(k);
    if (s.kind === 'WORKDIR') delete out.WorkingDir;
    if (s.kind === 'USER') delete out.User;
    if (s.kind === 'CMD') delete out.Cmd;
    if (s.kind === 'ENTRYPOINT') delete out.Entrypoint;
  }
  for (const s of steps.slice(0, Math.max(0, historyEntries - baseHistory))) {
    if (!s) continue;
    if (s.kind === 'ENV') for (const [k, v] of s.pairs) env.set(k, v);
    if (s.kind === 'WORKDIR') out.WorkingDir = s.value;
    if (s.kind === 'USER') out.User = s.value;
    if (s.kind === 'CMD') out.Cmd = s.list;
    if (s.kind === 'ENTRYPOINT') out.Entrypoint = s.list;
  }
  if (final.Env !== undefined || env.size) out.Env = [...env].map(([k, v]) => `${k}=${v}`);
  return out;
}

type Setting = { kind: 'ENV'; pairs: [string, string][] } | { kind: 'WORKDIR' | 'USER'; value: string } | { kind: 'CMD' | 'ENTRYPOINT'; list: string[] };

/** The setting a history entry makes, read from its text as the builders write it. */
function settingOf(createdBy: string): Setting | undefined {
  const m = /^(?:\/bin\/sh -c #\(nop\)\s*)?(ENV|WORKDIR|USER|CMD|ENTRYPOINT)\s+([\s\S]*?)(?:\s+# buildkit)?\s*$/.exec(createdBy.trim());
  if (!m) return undefined;
  const kind = m[1] as Setting['kind'];
  const rest = m[2]!;
  if (kind === 'ENV') {
    const pairs: [string, string][] = [];
    for (const p of rest.split(/\s+(?=[^\s=]+=)/)) {
      const eq = p.indexOf('=');
      if (eq > 0) pairs.push([p.slice(0, eq), p.slice(eq + 1).replace(/^"([\s\S]*)"$/, '$1')]);
    }
    return { kind, pairs };
  }
  if (kind === 'WORKDIR' || kind === 'USER') return { kind, value: rest };
  return { kind, list: listOf(rest) };
}

/** `["a" "b"]` (Go's %q), `["a","b"]` (JSON), or a shell form run by `/bin/sh -c`. */
function listOf(text: string): string[] {
  const t = text.trim();
  if (t.startsWith('[')) {
    try {
      const v: unknown = JSON.parse(t);
      if (Array.isArray(v)) return v.map(String);
    } catch {
      const words = [...t.matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((x) => JSON.parse(`"${x[1]!}"`) as string);
      if (words.length) return words;
    }
  }
  return ['/bin/sh', '-c', t];
}
