/**
 * Shared settings of the fuzz tests. Property tests use fast-check, which prints the seed and the
 * shrunk counterexample of a failure; `SMART_FUZZ_SEED=N` replays a run, `SMART_FUZZ_RUNS=K`
 * multiplies the number of cases (CI runs the default, bounded to seconds per parser).
 */
import fc from 'fast-check';
import { expect } from 'vitest';
import { SmartError } from '../../src/errors.js';

const seed = process.env.SMART_FUZZ_SEED;
export const FUZZ_SEED: number = seed !== undefined && seed !== '' ? Number(seed) : (Date.now() ^ (Math.random() * 0x7fffffff)) | 0;
export const FUZZ_SCALE = Math.max(1, Number(process.env.SMART_FUZZ_RUNS ?? 1) || 1);

/**
 * fast-check parameters for a property of `runs` cases (scaled), with the run's seed. `examples`
 * run first, every time: the inputs that once broke a parser, so each fix stays tested.
 */
export function fuzzParams<T = unknown>(runs: number, examples: T[] = []): fc.Parameters<T> {
  return { numRuns: Math.round(runs * FUZZ_SCALE), seed: FUZZ_SEED, examples };
}

/** One call of a parser: no input may take longer than this (a hang or a catastrophic regexp). */
export const CALL_MS = 2000;

/**
 * Runs a parser on one input: its result, or the SmartError it threw. Any other exception fails
 * the property, and so does a call slower than CALL_MS.
 */
export function total<T>(parse: () => T): T | SmartError {
  const started = performance.now();
  let out: T | SmartError;
  try {
    out = parse();
  } catch (e) {
    if (!(e instanceof SmartError)) throw new Error(`not a SmartError: ${(e as Error)?.stack ?? String(e)}`);
    out = e;
  }
  expect(performance.now() - started, 'one call of the parser').toBeLessThan(CALL_MS);
  return out;
}

export async function totalAsync<T>(parse: () => Promise<T>): Promise<T | SmartError> {
  const started = performance.now();
  let out: T | SmartError;
  try {
    out = await parse();
  } catch (e) {
    if (!(e instanceof SmartError)) throw new Error(`not a SmartError: ${(e as Error)?.stack ?? String(e)}`);
    out = e;
  }
  expect(performance.now() - started, 'one call of the parser').toBeLessThan(CALL_MS * 5);
  return out;
}

/** Strings that parsers of names and text meet: printable ASCII, unicode, control characters. */
export const anyText = (maxLength = 200) =>
  fc.oneof(
    fc.string({ maxLength }),
    fc.string({ unit: 'binary', maxLength }),
    fc.string({ unit: fc.constantFrom(...'\0\t\n\r\u001b\u007f\u0085\u2028\ufeff\ud800 '), maxLength: 20 }),
  );

/** Joins pieces drawn from `parts` (grammar fragments, separators, junk) into one string. */
export const pieces = (parts: fc.Arbitrary<string>, maxLength = 12) => fc.array(parts, { maxLength }).map((a) => a.join(''));
