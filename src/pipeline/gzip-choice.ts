/**
 * Which gzip engine compresses: the first present of DEFAULT_GZIP_ENGINE_ORDER, or the one the
 * user names (an error when it is absent: they asked for it).
 */
import { SmartError } from '../errors.js';
import { memberEngine, nativeLibdeflateEngine, zlibEngine, type GzipEngine, type GzipEngineName, type GzipEnginePreference } from './gzip-engines.js';
import { nativeBinding } from './native.js';
import { findProgram } from './programs.js';

/** The engine order of `chooseGzipEngine('auto')`: the first one present wins (why: the measurements in gzip-engines.ts). */
export const DEFAULT_GZIP_ENGINE_ORDER: readonly GzipEngineName[] = ['libdeflate', 'zlib'];
const PROGRAMS: Record<'igzip' | 'libdeflate', string> = { igzip: 'igzip', libdeflate: 'libdeflate-gzip' };
const PACKAGES: Record<'igzip' | 'libdeflate', string> = { igzip: 'isal', libdeflate: 'libdeflate-tools' };

/**
 * The engine of that name if it is usable here, else null (zlib always is). libdeflate is the
 * native addon when it is built, else the libdeflate-gzip program (`via: 'program'` asks for the
 * program even when the addon is there: tests compare the two).
 */
export async function findGzipEngine(name: GzipEngineName, via: 'best' | 'program' = 'best'): Promise<GzipEngine | null> {
  if (name === 'zlib') return zlibEngine;
  if (name === 'libdeflate' && via === 'best') {
    const binding = nativeBinding();
    if (binding?.gzipMember && binding.libdeflateVersion) return nativeLibdeflateEngine({ gzipMember: binding.gzipMember, libdeflateVersion: binding.libdeflateVersion });
  }
  const program = await findProgram(PROGRAMS[name]);
  return program ? memberEngine(name, program) : null;
}

/** Every engine usable on this machine, zlib last. */
export async function availableGzipEngines(): Promise<GzipEngine[]> {
  const found = await Promise.all((['igzip', 'libdeflate'] as const).map((n) => findGzipEngine(n)));
  return [...found.filter((e): e is GzipEngine => e !== null), zlibEngine];
}

/**
 * 'auto': the first of DEFAULT_GZIP_ENGINE_ORDER that is present (zlib is always). A named
 * engine that is absent is an error: the user asked for it.
 */
export async function chooseGzipEngine(preference: GzipEnginePreference = 'auto'): Promise<GzipEngine> {
  if (preference === 'auto') {
    for (const name of DEFAULT_GZIP_ENGINE_ORDER) {
      const engine = await findGzipEngine(name);
      if (engine) return engine;
    }
    return zlibEngine;
  }
  if (preference !== 'zlib' && preference !== 'igzip' && preference !== 'libdeflate') {
    throw new SmartError('USAGE', `unknown gzip engine "${String(preference)}" (auto, zlib, igzip or libdeflate)`);
  }
  const engine = await findGzipEngine(preference);
  if (!engine) {
    const p = preference as 'igzip' | 'libdeflate';
    throw new SmartError('UNSUPPORTED', `gzip engine ${p} asked for, but ${PROGRAMS[p]} is not on PATH${p === 'libdeflate' ? ' and the native addon is not built' : ''}`, {
      hint: `install the ${PACKAGES[p]} package (apt-get install ${PACKAGES[p]}), or use the zlib engine`,
    });
  }
  return engine;
}
