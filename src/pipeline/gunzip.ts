/**
 * The decompression side of gzip: ISA-L's inflate in this process where the native addon has it
 * (native-gunzip.ts), else `igzip -d` as a child process when it is present, else Node's zlib; all
 * report a corrupt or truncated stream as CORRUPT_ARCHIVE.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { Socket } from 'node:net';
import { Duplex, PassThrough, type Readable } from 'node:stream';
import zlib from 'node:zlib';
import { SmartError } from '../errors.js';
import { liveChildren } from './filter-process.js';
import { nativeBinding } from './native.js';
import { corruptGzip } from './native-gunzip.js';
import { findProgram } from './programs.js';

const KiB = 1024;

export type GunzipEngineName = 'zlib' | 'igzip' | 'isal';

export interface GunzipEngine {
  readonly name: GunzipEngineName;
  /** The program run per stream (igzip); null for the engines in this process. */
  readonly program: string | null;
}

const zlibGunzip: GunzipEngine = { name: 'zlib', program: null };

/**
 * 'auto': ISA-L's inflate in this process where the addon has it (no process, no pipe; a local
 * blob file is read by the same jobs), else `igzip -d` when it is on PATH (690 MB/s against
 * Node's 440 here), else Node's zlib. A named engine that is absent is an error.
 */
export async function chooseGunzip(preference: 'auto' | GunzipEngineName = 'auto'): Promise<GunzipEngine> {
  if (preference === 'zlib') return zlibGunzip;
  if (preference !== 'igzip') {
    const b = nativeBinding();
    if (b?.gunzipCreate && b.gunzipRun) return { name: 'isal', program: null };
    if (preference === 'isal') {
      throw new SmartError('UNSUPPORTED', 'gunzip engine isal asked for, but the native addon has no ISA-L inflate', { hint: 'build the addon with libisal-dev installed' });
    }
  }
  const program = await findProgram('igzip');
  if (program) return { name: 'igzip', program };
  if (preference === 'igzip') {
    throw new SmartError('UNSUPPORTED', 'gunzip engine igzip asked for, but igzip is not on PATH', {
      hint: 'install the isal package (apt-get install isal), or use the zlib engine',
    });
  }
  return zlibGunzip;
}

/**
 * The decompressor's output comes through a 1 MiB pipe where the addon can make one (Linux's
 * default most for an unprivileged process): Node gives a child a socket pair, through which
 * `igzip -d` stalls whenever the event loop does not read at once. 150 MB of a layer took 0.33 s
 * through the socket pair, 0.25 s through the pipe (igzip alone, to /dev/null: 0.25 s).
 */
const DECOMPRESSOR_PIPE_BYTES = 1024 * KiB;

/** A pipe for a child's stdout: its write end for spawn, and the read end as a stream once spawned. */
function outputPipe(): { childEnd: number; open(): Readable } | undefined {
  const fds = nativeBinding()?.makePipe?.(DECOMPRESSOR_PIPE_BYTES);
  if (!fds) return undefined;
  const [readFd, writeFd] = fds;
  return {
    childEnd: writeFd,
    open: () => {
      // The child has its own copy now: ours would hold the pipe open past its exit.
      closeSync(writeFd);
      return new Socket({ fd: readFd, readable: true, writable: false });
    },
  };
}

/**
 * Decompresses gzip bytes with `igzip -d -c`: a Duplex (write gzip, read the data) for a
 * pipeline. A corrupt or truncated stream errors with CORRUPT_ARCHIVE naming `what`, as
 * `decompress` does. Destroying it kills the process.
 */
export function igzipDecompressor(program: string, what: string): Duplex {
  const input = new PassThrough({ highWaterMark: 256 * KiB });
  let inputBytes = 0;
  input.on('data', (d: Buffer) => (inputBytes += d.length));
  const run = runIgzip(program, what, 'pipe', () => inputBytes);
  if (run.child.stdin) input.pipe(run.child.stdin);
  input.once('close', () => {
    // The writable side destroyed before its end (an upstream error): stop the child too.
    if (!input.writableFinished) run.kill();
  });
  const duplex = Duplex.from({ writable: input, readable: run.output });
  // Destroyed as a whole (the consumer gave up), it need not destroy its two sides: stop the child here too.
  duplex.once('close', run.kill);
  return duplex;
}

/**
 * The same for a local file of `size` bytes, which `igzip` reads itself (no byte of the gzip
 * through this process): its output ends only once `verified` (the file checked against its
 * digest, read alongside) has resolved, and errors with its rejection. Destroying it kills the
 * process.
 */
export function igzipFileDecompressor(program: string, what: string, file: { path: string; size: number; verified: Promise<void> }): Readable {
  const fd = openSync(file.path, 'r');
  let run: ReturnType<typeof runIgzip>;
  try {
    run = runIgzip(program, what, fd, () => file.size, file.verified);
  } finally {
    // The child has its own copy.
    closeSync(fd);
  }
  return run.output;
}

/**
 * Runs `igzip -d -c` with `stdin` as its input: its output as a stream that ends once the child
 * has exited well, all its output is through and `before` (if any) has resolved.
 */
function runIgzip(program: string, what: string, stdin: 'pipe' | number, inputBytes: () => number, before?: Promise<void>) {
  const output = new PassThrough({ highWaterMark: 256 * KiB });
  const pipe = outputPipe();
  let child: ChildProcess;
  try {
    child = spawn(program, ['-d', '-c'], { stdio: [stdin, pipe?.childEnd ?? 'pipe', 'pipe'] });
  } catch (e) {
    pipe?.open().destroy();
    throw e;
  }
  const stdout = pipe ? pipe.open() : child.stdout!;
  liveChildren.add(child);
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => {
    if (stderr.length < 4096) stderr += d.toString();
  });
  child.stdin?.on('error', () => {
    /* the exit status reports it */
  });
  // All the output is through once stdout has ended: on our own pipe that can come after 'close'.
  const drained = new Promise<void>((resolve) => stdout.once('end', resolve));
  stdout.on('error', (e: Error) => output.destroy(new SmartError('INTERNAL', `${what}: reading ${program}: ${e.message}`, { cause: e })));
  stdout.pipe(output, { end: false });
  // A check that fails stops everything at once; one that passes lets the output end.
  before?.catch((e: unknown) => output.destroy(e as Error));
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
    // A failure waits for the check of the input: a blob that is not what its digest says is the
    // cause to name (a cut-short file makes igzip fail too, as 'truncated gzip stream').
    const fail = (err: Error): void => {
      if (!before) output.destroy(err);
      else void before.then(() => !output.destroyed && output.destroy(err), () => undefined);
    };
    if (sig) fail(new SmartError('INTERNAL', `${what}: ${program} killed by ${sig}`));
    else if (inputBytes() === 0) fail(corruptGzip(what, true, ''));
    else if (code === 0 && !stderr.trim()) {
      void Promise.all([drained, before]).then(
        () => !output.destroyed && output.end(),
        () => undefined,
      );
    } else fail(corruptGzip(what, /complete gzip file|unexpected end|truncat/i.test(message), message || `exit status ${code}`));
  });
  const kill = (): void => {
    if (!exited) child.kill('SIGKILL');
    if (stdout !== child.stdout) stdout.destroy();
  };
  output.once('close', kill);
  return { child, output, kill };
}

/**
 * The bare decoder stage of `engine` (zlib errors are raw Z_ codes; igzip's are SmartErrors). The
 * isal engine has no bare stage: decompress() runs it, checks and all (native-gunzip.ts).
 */
export function gunzipDecoder(what: string, engine: GunzipEngine = zlibGunzip): Duplex {
  if (engine.name === 'igzip' && engine.program) return igzipDecompressor(engine.program, what);
  return zlib.createGunzip({ chunkSize: 64 * KiB });
}

