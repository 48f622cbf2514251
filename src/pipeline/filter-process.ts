/**
 * Programs run as filters by the gzip engines (igzip, libdeflate-gzip): one block in on stdin,
 * its member out on stdout, killed when the stream they work for is destroyed. Every child is
 * counted until it exits, so tests can check that nothing is left running.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { SmartError } from '../errors.js';

/** Child processes started by the gzip engines and the igzip decoder and not yet exited (a test hook). */
export const liveChildren = new Set<ChildProcess>();

/** How many compressor/decompressor child processes (gzip engines, igzip decoder) are running (for tests). */
export function liveChildProcessCount(): number {
  return liveChildren.size;
}

/** Runs `program args` with `input` on stdin; resolves with stdout. Killed when `signal` aborts. */
export function runFilter(program: string, args: string[], input: Buffer, signal: AbortSignal): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(new SmartError('CANCELLED', `${program} not started: the stream was destroyed`));
      return;
    }
    const child = spawn(program, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    liveChildren.add(child);
    const out: Buffer[] = [];
    let stderr = '';
    const onAbort = () => child.kill('SIGKILL');
    signal.addEventListener('abort', onAbort, { once: true });
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => {
      if (stderr.length < 4096) stderr += d.toString();
    });
    child.stdin.on('error', () => {
      /* EPIPE and the like: the exit status reports it */
    });
    let settled = false;
    const done = (err: Error | null, value?: Buffer) => {
      if (settled) return;
      settled = true;
      liveChildren.delete(child);
      signal.removeEventListener('abort', onAbort);
      if (err) reject(err);
      else resolve(value as Buffer);
    };
    child.once('error', (e) => {
      done(new SmartError('INTERNAL', `could not run ${program}: ${e.message}`, { cause: e }));
    });
    child.once('close', (code, sig) => {
      if (signal.aborted) done(new SmartError('CANCELLED', `${program} killed: the stream was destroyed`));
      else if (code === 0) done(null, Buffer.concat(out));
      else {
        const why = stderr.trim().split('\n').pop() || (sig ? `signal ${sig}` : `exit status ${code}`);
        done(new SmartError('INTERNAL', `${program} ${args.join(' ')} failed: ${why}`));
      }
    });
    child.stdin.end(input);
  });
}
