/**
 * The optional native addon (native/smartlayer.c, built at install time by native/build.mjs).
 * Loaded on first use only; absent, unloadable (built against another libdeflate, say) or turned
 * off with SMART_NATIVE=0, it is simply not there and callers fall back.
 */
import { createRequire } from 'node:module';

/** What native/smartlayer.c exports; each part only if its library was there at build time. */
export interface NativeBinding {
  /** One complete gzip member of `input`, compressed on the libuv pool. */
  gzipMember?(input: Buffer, level: number): Promise<Buffer>;
  readonly libdeflateVersion?: string;
  /** A streaming zstd context with `workers` threads of libzstd's own and jobs of `jobSize` bytes. */
  zstdCreate?(level: number, workers: number, jobSize: number): unknown;
  /** Compresses `input` (and ends the frame if `end`); calls on one context must not overlap. */
  zstdCompress?(context: unknown, input: Buffer, end: boolean): Promise<Buffer>;
  zstdFree?(context: unknown): void;
  readonly zstdVersion?: string;
}

let binding: NativeBinding | null | undefined;
let loadError: string | undefined;

export function nativeBinding(): NativeBinding | null {
  if (binding !== undefined) return binding;
  if (process.env.SMART_NATIVE === '0') {
    loadError = 'SMART_NATIVE=0';
    return (binding = null);
  }
  try {
    // dist/pipeline/native.js → native/build/smartlayer.node at the package root.
    binding = createRequire(import.meta.url)('../../native/build/smartlayer.node') as NativeBinding;
  } catch (e) {
    loadError = (e as Error).message.split('\n')[0];
    binding = null;
  }
  return binding;
}

/** Why the addon is not there (for diagnostics), or undefined when it is or was not looked for. */
export function nativeLoadError(): string | undefined {
  return loadError;
}
