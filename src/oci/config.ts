/** The image configuration (OCI image-spec config.md; Docker's is the same JSON). */
import { SmartError } from '../errors.js';
import { checkJson } from '../limits.js';
import { parseDigest, type Digest } from './digest.js';

export interface ContainerConfig {
  User?: string;
  ExposedPorts?: Record<string, object>;
  Env?: string[];
  Entrypoint?: string[] | null;
  Cmd?: string[] | null;
  Volumes?: Record<string, object>;
  WorkingDir?: string;
  Labels?: Record<string, string>;
  StopSignal?: string;
}

export interface HistoryEntry {
  created?: string;
  created_by?: string;
  author?: string;
  comment?: string;
  empty_layer?: boolean;
}

export interface ImageConfig {
  created?: string;
  author?: string;
  architecture: string;
  os: string;
  variant?: string;
  config?: ContainerConfig;
  rootfs: { type: 'layers'; diff_ids: Digest[] };
  history?: HistoryEntry[];
  [key: string]: unknown;
}

export const MAX_CONFIG_BYTES = 8 * 1024 * 1024;

/** Parses and validates a config blob; the diff ids are what layers are verified against. */
export function parseImageConfig(bytes: Buffer, input?: string): ImageConfig {
  const bad = (why: string) =>
    new SmartError('MANIFEST_INVALID', `invalid image config${input ? ` ${input}` : ''}: ${why}`, { input });
  checkJson(bytes, MAX_CONFIG_BYTES, `image config${input ? ` ${input}` : ''}`, input);
  let doc: unknown;
  try {
    doc = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw bad('not JSON');
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw bad('not a JSON object');
  const c = doc as Record<string, unknown>;
  const rootfs = c.rootfs as { type?: unknown; diff_ids?: unknown } | undefined;
  if (!rootfs || rootfs.type !== 'layers') throw bad('rootfs is missing or not of type "layers"');
  // An image of no layer (`FROM scratch` and a LABEL): Docker's classic builder leaves diff_ids
  // out, BuildKit writes null; Docker and skopeo read both as none, as Go reads a missing list.
  const listed = rootfs.diff_ids ?? [];
  if (!Array.isArray(listed)) throw bad('rootfs.diff_ids is not a list');
  const diffIds = listed.map((d: unknown, i) => {
    if (typeof d !== 'string') throw bad(`rootfs.diff_ids[${i}] is not a string`);
    try {
      return parseDigest(d);
    } catch (e) {
      throw bad(`rootfs.diff_ids[${i}]: ${(e as Error).message}`);
    }
  });
  if (typeof c.os !== 'string' || typeof c.architecture !== 'string') throw bad('os and architecture are required');
  const why = shapeError(c);
  if (why) throw bad(why);
  return { ...(c as object), rootfs: { type: 'layers', diff_ids: diffIds } } as ImageConfig;
}

type Kind = 'string' | 'boolean' | 'strings' | 'object' | 'stringMap';

function is(v: unknown, kind: Kind): boolean {
  if (v === undefined || v === null) return true; // Go reads null as the zero value
  switch (kind) {
    case 'string':
    case 'boolean':
      return typeof v === kind;
    case 'strings':
      return Array.isArray(v) && v.every((x) => typeof x === 'string');
    case 'object':
      return typeof v === 'object' && !Array.isArray(v);
    case 'stringMap':
      return typeof v === 'object' && !Array.isArray(v) && Object.values(v as object).every((x) => typeof x === 'string');
  }
}

const CONTAINER_FIELDS: Record<string, Kind> = {
  User: 'string',
  Env: 'strings',
  Entrypoint: 'strings',
  Cmd: 'strings',
  WorkingDir: 'string',
  StopSignal: 'string',
  ExposedPorts: 'object',
  Volumes: 'object',
  Labels: 'stringMap',
};
const HISTORY_FIELDS: Record<string, Kind> = { created: 'string', created_by: 'string', author: 'string', comment: 'string', empty_layer: 'boolean' };

/**
 * The fields the toolkit reads (a bundle's process, history steps) must have their spec types, as
 * Go's json.Unmarshal into the spec's structs demands: what does not is named, never used.
 */
function shapeError(c: Record<string, unknown>): string | undefined {
  for (const k of ['created', 'author', 'variant'] as const) if (!is(c[k], 'string')) return `${k} must be a string`;
  if (!is(c.config, 'object')) return 'config must be an object';
  const cc = (c.config ?? {}) as Record<string, unknown>;
  for (const [k, kind] of Object.entries(CONTAINER_FIELDS)) {
    if (!is(cc[k], kind)) return `config.${k} must be ${kind === 'strings' ? 'an array of strings' : kind === 'stringMap' ? 'an object of strings' : `a${kind === 'object' ? 'n' : ''} ${kind}`}`;
  }
  if (c.history !== undefined && c.history !== null) {
    if (!Array.isArray(c.history)) return 'history must be an array';
    for (const [i, h] of c.history.entries()) {
      if (typeof h !== 'object' || h === null || Array.isArray(h)) return `history[${i}] must be an object`;
      for (const [k, kind] of Object.entries(HISTORY_FIELDS)) if (!is((h as Record<string, unknown>)[k], kind)) return `history[${i}].${k} must be a ${kind}`;
    }
  }
  return undefined;
}
