/**
 * How this process compresses layers for stores, chosen once per format and level: the engine is
 * part of every layer it makes (its bytes, hence its digest), so every layer of a run uses the same.
 */
import type { Readable } from 'node:stream';
import { SmartError } from '../errors.js';
import type { Digest } from '../oci/digest.js';
import { MediaType } from '../oci/mediatypes.js';
import type { CompressedLayerStream } from './layer-streams.js';

export type CompressionFormat = 'gzip' | 'zstd';

export interface LayerCompressor {
  format: CompressionFormat;
  /** What a layer becomes: the OCI media type of its compressed blob. */
  mediaType: string;
  engine: string;
  /** How the engine runs here: in-process, a program's path, node-zlib. */
  implementation: string;
  level: number;
  /** `verifiedDiffId`: the tar is verified against it upstream, so it is not hashed again. */
  compress(tar: Readable, verifiedDiffId?: Digest): CompressedLayerStream;
}

const chosen = new Map<string, Promise<LayerCompressor>>();

/** The zstd levels a push takes: libzstd's without `--ultra`. */
const ZSTD_LEVELS = { min: 1, max: 19 } as const;

/**
 * A level the engine of `format` on this machine cannot use (gzip 15 where libdeflate takes 1-12):
 * a usage error before anything is read or written, whether or not a layer turns out to need
 * compressing (a push whose layers were all known took any level, and the next one failed).
 */
export async function checkCompressionLevel(format: CompressionFormat = 'gzip', level?: number | 'fast'): Promise<void> {
  if (typeof level !== 'number') return;
  let range: { name: string; min: number; max: number } = { name: 'zstd', ...ZSTD_LEVELS };
  if (format === 'gzip') {
    const { engine } = (await import('./gzip-choice.js')).autoGzipEngine();
    range = { name: engine.name, min: engine.minLevel, max: engine.maxLevel };
  }
  if (!Number.isInteger(level) || level < range.min || level > range.max) {
    throw new SmartError('USAGE', `${format} level ${level} is out of range for ${range.name} (${range.min}-${range.max})`, { input: String(level) });
  }
}

/**
 * gzip on every core in fixed blocks (libdeflate in-process or as a program, else Node's zlib, with
 * output that does not depend on the core count), or zstd (libzstd in-process, else its program).
 * `level` absent: the engine's default; 'fast': igzip in this process for gzip (ISA-L in the addon),
 * level 1 for zstd. Each engine is loaded only when first asked for: a push that sends nothing
 * never loads one.
 */
export function layerCompressor(format: CompressionFormat = 'gzip', level?: number | 'fast'): Promise<LayerCompressor> {
  const key = `${format}:${level ?? ''}`;
  let c = chosen.get(key);
  if (!c) {
    c = (async (): Promise<LayerCompressor> => {
      if (format === 'zstd') {
        const { requireZstd, DEFAULT_ZSTD_LEVEL } = await import('./zstd.js');
        const zstd = await requireZstd();
        const at = level === 'fast' ? 1 : (level ?? DEFAULT_ZSTD_LEVEL);
        return { format, mediaType: MediaType.OCI_LAYER_ZSTD, engine: 'zstd', implementation: zstd.implementation, level: at, compress: (tar, verifiedDiffId) => zstd.layerStream(tar, at, verifiedDiffId) };
      }
      const { chooseGzipEngine, gzipLayerStreamParallel } = await import('./parallel-gzip.js');
      const engine = await chooseGzipEngine(level === 'fast' ? 'fast' : 'auto');
      const at = typeof level === 'number' ? level : engine.defaultLevel;
      return {
        format,
        mediaType: MediaType.OCI_LAYER_GZIP,
        engine: engine.name,
        implementation: engine.implementation,
        level: at,
        compress: (tar, verifiedDiffId) => gzipLayerStreamParallel(tar, { engine, level: at, ...(verifiedDiffId ? { verifiedDiffId } : {}) }),
      };
    })();
    chosen.set(key, c);
    c.catch(() => chosen.delete(key));
  }
  return c;
}
