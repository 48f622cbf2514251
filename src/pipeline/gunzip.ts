/**
 * The decompression side of gzip: `igzip -d` as a child process when it is present (faster),
 * Node's zlib otherwise; both report a corrupt or truncated stream as CORRUPT_ARCHIVE.
 */
import { spawn } from 'node:child_process';
import { Duplex, PassThrough } from 'node:stream';
import zlib from 'node:zlib';
import { SmartError } from '../errors.js';
import { liveChildren } from './filter-process.js';
import { findProgram } from './programs.js';

const KiB = 1024;

export type GunzipEngineName = 'zlib' | 'igzip';

export interface GunzipEngine {
  readonly name: GunzipEngineName;
  readonly program: string | null;
}

const zlibGunzip: GunzipEngine = { name: 'zlib', program: null };

/**
 * 'auto': `igzip -d` when it is on PATH (690 MB/s against Node's 440 here), else Node's zlib.
 * A named engine that is absent is an error.
 */
export async function chooseGunzip(preference: 'auto' | GunzipEngineName = 'auto'): Promise<GunzipEngine> {
  if (preference === 'zlib') return zlibGunzip;
  const program = await findProgram('igzip');
  if (program) return { name: 'igzip', program };
  if (preference === 'igzip') {
    throw new SmartError('UNSUPPORTED', 'gunzip engine igzip asked for, but igzip is not on PATH', {
      hint: 'install the isal package (apt-get install isal), or use the zlib engine',
    });
  }
  return zlibGunzip;
}

function corrupt(what: string, truncated: boolean, detail: string, cause?: unknown): SmartError {
  return new SmartError('CORRUPT_ARCHIVE', `${what}: ${truncated ? 'truncated gzip stream' : `corrupt gzip stream (${detail})`}`, {
    ...(cause === undefined ? {} : { cause }),
  });
}

/**
 * Decompresses gzip bytes with `igzip -d -c`: a Duplex (write gzip, read the data) for a
 * pipeline. A corrupt or truncated stream errors with CORRUPT_ARCHIVE naming `what`, as
 * `decompress` does. Destroying it kills the process.
 */
export function igzipDecompressor(program: string, what: string): Duplex {
  const input = new PassThrough({ highWaterMark: 256 * KiB });
  const output = new PassThrough({ highWaterMark: 256 * KiB });
  const child = spawn(program, ['-d', '-c'], { stdio: ['pipe', 'pipe', 'pipe'] });
  liveChildren.add(child);
  let inputBytes = 0;
  let stderr = '';
  input.on('data', (d: Buffer) => (inputBytes += d.length));
  child.stderr.on('data', (d: Buffer) => {
    if (stderr.length < 4096) stderr += d.toString();
  });
  child.stdin.on('error', () => {
    /* the exit status reports it */
  });
  input.pipe(child.stdin);
  child.stdout.pipe(output, { end: false });
  let exited = false;
  child.once('error', (e) => {
    exited = true;
    liveChildren.delete(child);
    output.destroy(new SmartError('INTERNAL', `${what}: could not run ${program}: ${e.message}`, { cause: e }));
  });
  child.once('close', (code, sig) => {
    exited = true;
    liveChildren.delete(child);
    if (output.destroyed) return;
    const message = stderr.trim().split('\n').pop() ?? '';
    // Node's zlib calls an empty input truncated, igzip accepts it: zlib's answer wins here.
    // Trailing garbage after the last member igzip ignores silently (as `gzip -d` does, with a
    // warning), where zlib calls it corrupt: the data is whole either way.
    if (sig) output.destroy(new SmartError('INTERNAL', `${what}: ${program} killed by ${sig}`));
    else if (inputBytes === 0) output.destroy(corrupt(what, true, ''));
    else if (code === 0 && !stderr.trim()) output.end();
    else output.destroy(corrupt(what, /complete gzip file|unexpected end|truncat/i.test(message), message || `exit status ${code}`));
  });
  const kill = () => {
    if (!exited) child.kill('SIGKILL');
  };
  output.once('close', kill);
  input.once('close', () => {
    // The writable side destroyed before its end (an upstream error): stop the child too.
    if (!input.writableFinished) kill();
  });
  return Duplex.from({ writable: input, readable: output });
}

/** The bare decoder stage of `engine` (zlib errors are raw Z_ codes; igzip's are SmartErrors). */
export function gunzipDecoder(what: string, engine: GunzipEngine = zlibGunzip): Duplex {
  if (engine.name === 'igzip' && engine.program) return igzipDecompressor(engine.program, what);
  return zlib.createGunzip({ chunkSize: 64 * KiB });
}

