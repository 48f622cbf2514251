/**
 * What the soak and concurrency tests share: a seeded random source (the seed printed with every
 * failure, `SMART_SOAK_SEED` to replay one), the scale (`SMART_SOAK=full` for the full-size run of
 * `npm run soak`, a smaller one in CI), a bounded pool of processes, and `smart` runs that can be
 * killed and that are killed (and said to hang) past a hard bound.
 */
import { spawn } from 'node:child_process';
import { inject } from 'vitest';
import { smartBin, testCacheHome } from './run.js';

/** `SMART_SOAK=full`: the full-scale run (`npm run soak`); otherwise the CI scale. */
export const FULL_SCALE = process.env.SMART_SOAK === 'full';

/** The seed of this run: `SMART_SOAK_SEED`, else a fresh one. */
export function soakSeed(): number {
  const given = process.env.SMART_SOAK_SEED;
  if (given !== undefined && given !== '') {
    const n = Number(given);
    if (!Number.isSafeInteger(n)) throw new Error(`SMART_SOAK_SEED must be an integer, not ${given}`);
    return n >>> 0;
  }
  return Math.floor(Math.random() * 0xffffffff) >>> 0;
}

export interface Random {
  readonly seed: number;
  /** [0, 1) */
  next(): number;
  /** An integer in [0, n). */
  int(n: number): number;
  /** An integer in [min, max]. */
  between(min: number, max: number): number;
  pick<T>(items: readonly T[]): T;
  chance(p: number): boolean;
  /** A shuffled copy. */
  shuffle<T>(items: readonly T[]): T[];
}

/** mulberry32: small, fast, and the same sequence for the same seed everywhere. */
export function seeded(seed: number): Random {
  let state = seed >>> 0;
  const next = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const r: Random = {
    seed,
    next,
    int: (n) => Math.floor(next() * n),
    between: (min, max) => min + Math.floor(next() * (max - min + 1)),
    pick: (items) => items[Math.floor(next() * items.length)]!,
    chance: (p) => next() < p,
    shuffle: (items) => {
      const out = [...items];
      for (let i = out.length - 1; i > 0; i--) {
        const j = Math.floor(next() * (i + 1));
        [out[i], out[j]] = [out[j]!, out[i]!];
      }
      return out;
    },
  };
  return r;
}

/** A stable 32-bit hash of strings: fault decisions that depend on the request, not on arrival order. */
export function hash32(...parts: (string | number)[]): number {
  let h = 0x811c9dc5;
  for (const ch of parts.join('\u0000')) {
    h ^= ch.codePointAt(0)!;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  // FNV-1a alone barely moves the high bits for a change in the last character (request 1, 2, 3
  // of a path): murmur3's finaliser spreads every bit over the whole word.
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * Runs `work` over `items`, at most `concurrency` at once (a new one starts as one ends). After a
 * failure no new item starts, and the first failure is thrown only once the running ones have
 * ended: a test's cleanup must not race commands still writing into its directory.
 */
export async function pool<T, R>(items: readonly T[], concurrency: number, work: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let nextIndex = 0;
  let failed = false;
  const worker = async () => {
    for (let i = nextIndex++; i < items.length && !failed; i = nextIndex++) {
      try {
        results[i] = await work(items[i]!, i);
      } catch (e) {
        failed = true;
        throw e;
      }
    }
  };
  const settled = await Promise.allSettled(Array.from({ length: Math.min(concurrency, items.length) }, worker));
  const failure = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (failure) throw failure.reason;
  return results;
}

export interface SmartRun {
  /** Exit code; null when killed by a signal. */
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
  /** Killed by the hard bound: it would have hung. */
  hung: boolean;
}

export interface BackgroundSmart {
  pid: number;
  kill(signal?: NodeJS.Signals): void;
  done: Promise<SmartRun>;
}

/**
 * `smart ARGS` in the background, as `run.ts`'s `smart` runs it (XDG_CACHE_HOME of the run, the
 * empty registries.conf), SIGKILLed after `boundMs` (then `hung`).
 */
export function startSmart(args: string[], options: { env?: NodeJS.ProcessEnv; cacheHome?: string; boundMs: number }): BackgroundSmart {
  const env = { ...process.env, XDG_CACHE_HOME: options.cacheHome ?? testCacheHome(), CONTAINERS_REGISTRIES_CONF: inject('registriesConf'), ...options.env };
  const started = performance.now();
  const child = spawn(process.execPath, [smartBin, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  let hung = false;
  const timer = setTimeout(() => {
    hung = true;
    child.kill('SIGKILL');
  }, options.boundMs);
  const done = new Promise<SmartRun>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, ms: performance.now() - started, hung });
    });
  });
  return { pid: child.pid!, kill: (signal = 'SIGKILL') => child.kill(signal), done };
}

/** `smart ARGS` to its end (bounded). */
export function runSmart(args: string[], options: { env?: NodeJS.ProcessEnv; cacheHome?: string; boundMs: number }): Promise<SmartRun> {
  return startSmart(args, options).done;
}

/**
 * A failed run's stderr must end in exactly one error line, with no stack trace; warnings before
 * it are allowed. Returns that line, or a description of what is wrong.
 */
export function oneErrorLine(stderr: string): { ok: true; line: string } | { ok: false; why: string } {
  const lines = stderr.split('\n').filter((l) => l.trim() !== '');
  const errors = lines.filter((l) => /^smart: error \[[A-Z_]+\]: /.test(l));
  if (errors.length !== 1) return { ok: false, why: `${errors.length} error lines` };
  if (lines.at(-1) !== errors[0]) return { ok: false, why: 'the error line is not the last line' };
  if (lines.some((l) => /^\s+at /.test(l))) return { ok: false, why: 'a stack trace' };
  // Besides it: warnings, and the plain progress display's lines.
  const other = lines.filter((l) => l !== errors[0] && !/^(warning: |layer [0-9a-f]{12}: |progress: |(pushed|pulled) )/.test(l));
  if (other.length) return { ok: false, why: `unexpected lines: ${other.slice(0, 3).join(' | ')}` };
  return { ok: true, line: errors[0]! };
}
