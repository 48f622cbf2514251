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
  if (!rootfs || rootfs.type !== 'layers' || !Array.isArray(rootfs.diff_ids)) throw bad('rootfs.diff_ids is missing');
  const diffIds = rootfs.diff_ids.map((d, i) => {
    if (typeof d !== 'string') throw bad(`rootfs.diff_ids[${i}] is not a string`);
    try {
      return parseDigest(d);
    } catch (e) {
      throw bad(`rootfs.diff_ids[${i}]: ${(e as Error).message}`);
    }
  });
  if (typeof c.os !== 'string' || typeof c.architecture !== 'string') throw bad('os and architecture are required');
  return { ...(c as object), rootfs: { type: 'layers', diff_ids: diffIds } } as ImageConfig;
}
