/**
 * Which gzip engine compresses: by default (`auto`) libdeflate in this process when the native
 * addon is built with it, else Node's zlib; or the one the user names (an error when it is
 * absent: they asked for it). A program per block is never chosen by default: measured on 2
 * cores, a 198 MB docker-save push took 5.2-5.6 s with the libdeflate-gzip program per 4 MiB
 * block, ~3 s with zlib in the process and 1.8 s with the same library in-process (the fork,
 * pipes and header rewrite of each block cost more than the library saves).
 */
import { SmartError } from '../errors.js';
import { memberEngine, nativeIgzipEngine, nativeLibdeflateEngine, zlibEngine, type GzipEngine, type GzipEngineName, type GzipEnginePreference } from './gzip-engines.js';
import { nativeBinding, nativeFixCommand, nativeStatus } from './native.js';
import { findProgram } from './programs.js';

/** The engine order of `chooseGzipEngine('auto')`: the first one present in this process wins (why: the measurements above and in gzip-engines.ts). */
export const DEFAULT_GZIP_ENGINE_ORDER: readonly GzipEngineName[] = ['libdeflate', 'zlib'];
const PROGRAMS: Record<'igzip' | 'libdeflate', string> = { igzip: 'igzip', libdeflate: 'libdeflate-gzip' };
const PACKAGES: Record<'igzip' | 'libdeflate', string> = { igzip: 'isal', libdeflate: 'libdeflate-tools' };

/** igzip inside this process, when the addon was built with ISA-L; else null. */
export function inProcessIgzip(): GzipEngine | null {
  const binding = nativeBinding();
  return binding?.igzipMember && binding.isalVersion ? nativeIgzipEngine({ igzipMember: binding.igzipMember, isalVersion: binding.isalVersion }) : null;
}

/**
 * The engine of that name if it is usable here, else null (zlib always is). libdeflate and igzip
 * are the native addon's when it has them, else their programs (`via: 'program'` asks for the
 * program even when the addon is there: tests compare the two).
 */
export async function findGzipEngine(name: GzipEngineName, via: 'best' | 'program' = 'best'): Promise<GzipEngine | null> {
  if (name === 'zlib') return zlibEngine;
  if (name === 'libdeflate' && via === 'best') {
    const binding = nativeBinding();
    if (binding?.gzipMember && binding.libdeflateVersion) return nativeLibdeflateEngine({ gzipMember: binding.gzipMember, libdeflateVersion: binding.libdeflateVersion });
  }
  if (name === 'igzip' && via === 'best') {
    const igzip = inProcessIgzip();
    if (igzip) return igzip;
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
 * The engine `auto` uses and why, in a phrase (for `smart version --verbose`): libdeflate through
 * the native addon when it has it, else zlib, never a program.
 */
export function autoGzipEngine(): { engine: GzipEngine; why: string } {
  const binding = nativeBinding();
  if (binding?.gzipMember && binding.libdeflateVersion) {
    return { engine: nativeLibdeflateEngine({ gzipMember: binding.gzipMember, libdeflateVersion: binding.libdeflateVersion }), why: 'the native addon has libdeflate' };
  }
  const status = nativeStatus();
  return { engine: zlibEngine, why: `the native addon is ${status.loaded ? 'built without libdeflate' : status.disabled ? 'turned off (SMART_NATIVE=0)' : 'absent'}; a program per block (libdeflate-gzip) is slower than zlib in this process and is used only when named` };
}

/**
 * 'auto': autoGzipEngine (libdeflate in this process, else zlib). A named engine that is absent
 * is an error: the user asked for it; a named libdeflate without the addon is its program.
 */
export async function chooseGzipEngine(preference: GzipEnginePreference = 'auto'): Promise<GzipEngine> {
  if (preference === 'auto') return autoGzipEngine().engine;
  if (preference === 'fast') {
    const igzip = inProcessIgzip();
    if (igzip) return igzip;
    const status = nativeStatus();
    throw new SmartError('UNSUPPORTED', `--compression-level fast needs the native addon built with ISA-L, and it is ${status.loaded ? 'built without it' : status.reason}`, {
      hint: status.disabled ? 'unset SMART_NATIVE' : `install libisal-dev and build the addon again: ${nativeFixCommand()}`,
    });
  }
  if (preference !== 'zlib' && preference !== 'igzip' && preference !== 'libdeflate') {
    throw new SmartError('USAGE', `unknown gzip engine "${String(preference)}" (auto, fast, zlib, igzip or libdeflate)`);
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
