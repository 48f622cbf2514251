/**
 * Resource bounds on untrusted input: manifests, configs and archives are read whole, layers are
 * decompressed and unpacked, so each gets a bound that no real image comes near. Past one the
 * input is refused early with LIMIT_EXCEEDED, naming the input and the bound, before it costs
 * memory or disk; nothing built from it is kept.
 */
import { SmartError } from './errors.js';

/** Nesting of JSON arrays and objects: real manifests and configs stay under 10. */
export const MAX_JSON_DEPTH = 64;

/** Members of an archive indexed in memory (docker-archive and oci-archive files). */
export const MAX_ARCHIVE_MEMBERS = 100_000;

/**
 * Paths a root filesystem build keeps in memory: directories (their modes and times are set last),
 * and per layer what its whiteouts must spare (src/transports/rootfs/apply.ts). Files in
 * directories the layer creates are not counted: a layer of a million files in new directories
 * holds only the directories.
 */
export const MAX_TRACKED_PATHS = 1_000_000;

/** Bytes of JSON members a streamed docker-archive keeps until its manifest.json arrives. */
export const MAX_ARCHIVE_JSON_BYTES = 64 * 1024 * 1024;

export function limitExceeded(message: string, input: string | undefined, hint?: string): SmartError {
  return new SmartError('LIMIT_EXCEEDED', message, { ...(input !== undefined ? { input } : {}), ...(hint ? { hint } : {}) });
}

/** Refuses `size` bytes of `what` past `max` (checked before the bytes are read). */
export function checkSize(size: number, max: number, what: string, input?: string): void {
  if (size > max) throw limitExceeded(`${what} is ${size} bytes, more than the ${max} allowed`, input ?? what);
}

/**
 * How deeply `bytes` (JSON text) nest arrays and objects, counted without parsing: brackets inside
 * strings do not count. Stops counting past `max` (so the scan is linear and the answer `max + 1`).
 */
export function jsonDepth(bytes: Uint8Array, max = MAX_JSON_DEPTH): number {
  let depth = 0;
  let deepest = 0;
  let inString = false;
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i]!;
    if (inString) {
      if (b === 0x5c) i++; // backslash: skip the escaped character
      else if (b === 0x22) inString = false;
    } else if (b === 0x22) inString = true;
    else if (b === 0x5b || b === 0x7b) {
      if (++depth > deepest && (deepest = depth) > max) return deepest;
    } else if (b === 0x5d || b === 0x7d) depth--;
  }
  return deepest;
}

/** Refuses JSON bytes larger than `maxBytes` or nested deeper than {@link MAX_JSON_DEPTH}. */
export function checkJson(bytes: Uint8Array, maxBytes: number, what: string, input?: string): void {
  checkSize(bytes.length, maxBytes, what, input);
  if (jsonDepth(bytes) > MAX_JSON_DEPTH) throw limitExceeded(`${what} nests JSON deeper than ${MAX_JSON_DEPTH} levels`, input ?? what);
}

/**
 * The bound on what a compressed layer may decompress to: `ratio` times its compressed size, and
 * never less than `floor` bytes (small layers of zeros are real). A layer past it is refused as
 * a decompression bomb. `ratio` 0 means no bound.
 */
export interface DecompressionBound {
  ratio: number;
  floor: number;
}

export const DEFAULT_DECOMPRESSION_BOUND: DecompressionBound = { ratio: 100, floor: 256 * 1024 * 1024 };

export const RATIO_ENV = 'SMART_MAX_DECOMPRESSION_RATIO';
export const FLOOR_ENV = 'SMART_MIN_DECOMPRESSION_BYTES';

function envNumber(env: NodeJS.ProcessEnv, name: string, fallback: number): number {
  const raw = env[name];
  if (raw === undefined || raw.trim() === '') return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < 0) throw new SmartError('USAGE', `${name} must be a non-negative number, not "${raw}"`, { input: name });
  return n;
}

/** The bound in force: the defaults, or $SMART_MAX_DECOMPRESSION_RATIO and $SMART_MIN_DECOMPRESSION_BYTES. */
export function decompressionBound(env: NodeJS.ProcessEnv = process.env): DecompressionBound {
  return { ratio: envNumber(env, RATIO_ENV, DEFAULT_DECOMPRESSION_BOUND.ratio), floor: envNumber(env, FLOOR_ENV, DEFAULT_DECOMPRESSION_BOUND.floor) };
}

/** The most bytes a layer of `compressedSize` may decompress to; Infinity when unbounded. */
export function maxDecompressedBytes(compressedSize: number, bound: DecompressionBound = decompressionBound()): number {
  return bound.ratio === 0 ? Infinity : Math.max(bound.floor, Math.ceil(bound.ratio * compressedSize));
}

/** The error for a layer that decompressed past its bound. */
export function decompressionBomb(what: string, compressedSize: number, max: number, bound: DecompressionBound): SmartError {
  return limitExceeded(
    `${what}: decompresses to more than ${max} bytes from ${compressedSize} (over ${bound.ratio}x): refused as a decompression bomb`,
    what,
    `if the layer is genuine, raise ${RATIO_ENV} (0: no bound) or ${FLOOR_ENV}`,
  );
}
