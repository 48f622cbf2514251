/** Runs the built CLI and other programs as a user would, capturing their output. */
import { spawn } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, symlinkSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { inject } from 'vitest';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const smartBin = path.join(repoRoot, 'bin', 'smart.js');

export interface RunResult {
  code: number;
  stdout: Buffer;
  stderr: string;
}

/**
 * What a program reads on stdin: bytes or a stream through a pipe, or `{ file }`: the file itself,
 * as `cmd < FILE` gives it (read as fast as the disk answers, where a pipe paces the reader).
 */
export type RunInput = Buffer | NodeJS.ReadableStream | { file: string };

export function run(cmd: string, args: string[], options: { input?: RunInput; env?: NodeJS.ProcessEnv; cwd?: string } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const input = options.input;
    const stdinFile = input && !Buffer.isBuffer(input) && 'file' in input ? openSync(input.file, 'r') : undefined;
    const child = spawn(cmd, args, { env: options.env ?? process.env, cwd: options.cwd, stdio: [stdinFile ?? 'pipe', 'pipe', 'pipe'] });
    if (stdinFile !== undefined) closeSync(stdinFile);
    const out: Buffer[] = [];
    let err = '';
    child.stdout!.on('data', (d: Buffer) => out.push(d));
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    child.once('error', reject);
    if (stdinFile === undefined) {
      child.stdin!.on('error', () => undefined);
      if (Buffer.isBuffer(input)) child.stdin!.end(input);
      else if (input) (input as NodeJS.ReadableStream).pipe(child.stdin!);
      else child.stdin!.end();
    }
    child.once('close', (code) => resolve({ code: code ?? 1, stdout: Buffer.concat(out), stderr: err }));
  });
}

let fileCacheHome: string | undefined;

/**
 * XDG_CACHE_HOME for the runs of this test file (see file-cache-home.ts): a directory of its own
 * under the run's `cacheHome`. Files run side by side, and what one file's pulls keep there (the
 * metadata, the blobs a pull keeps and the next reads) must not change what another's see; within
 * a file, tests run in order. The packages' compiled code (compile-cache) is shared.
 */
export function testCacheHome(): string {
  if (fileCacheHome) return fileCacheHome;
  const shared = inject('cacheHome');
  const home = mkdtempSync(path.join(shared, 'file-'));
  mkdirSync(path.join(shared, 'smartlayer', 'compile-cache'), { recursive: true });
  mkdirSync(path.join(home, 'smartlayer'));
  symlinkSync(path.join(shared, 'smartlayer', 'compile-cache'), path.join(home, 'smartlayer', 'compile-cache'));
  return (fileCacheHome = home);
}

/**
 * `smart ARGS`; XDG_CACHE_HOME is pointed at `cacheHome` (default: this file's) so tests never touch the user's cache.
 * `umask` (octal, `'022'`): run under it, through a shell, in place of this process's.
 */
export function smart(
  args: string[],
  /**
   * `node`: the Node binary to run it with (another LTS line: node-lines.test.ts); this one's by default.
   * `killAfterS`: killed (SIGKILL, by timeout(1)) after that many seconds: a run that would hang
   * fails its test, and is not left behind. A killed run has printed no error line of its own.
   */
  options: { input?: RunInput; cacheHome?: string; env?: NodeJS.ProcessEnv; umask?: string; node?: string; killAfterS?: number } = {},
): Promise<RunResult> {
  const env = { ...process.env, XDG_CACHE_HOME: options.cacheHome ?? testCacheHome(), CONTAINERS_REGISTRIES_CONF: inject('registriesConf'), ...options.env };
  const input = options.input ? { input: options.input } : {};
  const node = options.node ?? process.execPath;
  const bounded = options.killAfterS !== undefined ? ['timeout', '-s', 'KILL', String(options.killAfterS)] : [];
  if (options.umask !== undefined) return run('sh', ['-c', `umask ${options.umask} && exec "$@"`, 'sh', ...bounded, node, smartBin, ...args], { ...input, env });
  if (bounded.length) return run(bounded[0]!, [...bounded.slice(1), node, smartBin, ...args], { ...input, env });
  return run(node, [smartBin, ...args], { ...input, env });
}

/** Runs a program and fails with its stderr when it exits non-zero. */
export async function runOk(cmd: string, args: string[], options: Parameters<typeof run>[2] = {}): Promise<RunResult> {
  const r = await run(cmd, args, options);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return r;
}
