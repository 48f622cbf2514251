/**
 * Servers a test process starts (registries, dockerd, redis-server): a test worker that crashes or
 * is killed must not leave them running, so whatever is still alive is killed when it exits.
 */
import type { ChildProcess } from 'node:child_process';

const live = new Set<ChildProcess>();
let exitHooked = false;

/**
 * Owns `child`: it is killed if the test process exits first. Resolves once the child has ended,
 * or failed to start (ENOENT: no 'exit' follows an 'error').
 */
export function ownChild(child: ChildProcess): Promise<void> {
  live.add(child);
  if (!exitHooked) {
    exitHooked = true;
    process.once('exit', () => {
      for (const c of live) c.kill('SIGKILL');
    });
  }
  const ended = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else {
      child.once('exit', () => resolve());
      child.once('error', () => resolve());
    }
  });
  void ended.then(() => live.delete(child));
  return ended;
}
