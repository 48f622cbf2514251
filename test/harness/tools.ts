/**
 * Real programs the integration tests drive. Locally a missing program skips its tests; under
 * CI=true it fails them, since CI installs every one (.ci/run).
 */
import { execFileSync } from 'node:child_process';

const cache = new Map<string, boolean>();

/** True when `name` is on PATH (looked up once); for programs a test can do without, even in CI. */
export function onPath(name: string): boolean {
  let found = cache.get(name);
  if (found === undefined) {
    try {
      execFileSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' });
      found = true;
    } catch {
      found = false;
    }
    cache.set(name, found);
  }
  return found;
}

export const inCI = process.env.CI === 'true' || process.env.CI === '1';

/**
 * True when every program is present. Under CI a missing one throws, failing the suite that
 * asked: a missing server is a failure there, never a skip.
 */
export function haveTools(...names: string[]): boolean {
  const missing = names.filter((n) => !onPath(n));
  if (missing.length && inCI) throw new Error(`CI=true but required programs are missing: ${missing.join(', ')} (see .ci/run)`);
  return missing.length === 0;
}

export const isRoot = process.getuid?.() === 0;
