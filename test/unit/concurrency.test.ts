/**
 * The one concurrency helper: at most `jobs` at once, each key once, and the first real failure
 * is the one reported once every task has stopped (a sibling's abort never replaces it; the
 * caller's cancellation does).
 */
import { describe, expect, it } from 'vitest';
import { SmartError } from '../../src/errors.js';
import { TaskGroup, defaultJobs } from '../../src/pipeline/concurrency.js';

const tick = (ms = 5) => new Promise((r) => setTimeout(r, ms));

/** Rejects with the signal's reason when it aborts, as a transfer does. */
const abortable = (signal: AbortSignal, ms: number) =>
  new Promise<void>((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => {
      clearTimeout(t);
      reject(new DOMException('aborted', 'AbortError'));
    });
  });

describe('TaskGroup', () => {
  it('runs at most `jobs` tasks at once and answers in the items\' order', async () => {
    let running = 0;
    let most = 0;
    const group = new TaskGroup({ jobs: 3 });
    const out = await group.all([5, 1, 4, 2, 3, 1, 2], async (n) => {
      most = Math.max(most, ++running);
      await tick(n);
      running--;
      return n * 10;
    });
    expect(out).toEqual([50, 10, 40, 20, 30, 10, 20]);
    expect(most).toBe(3);
  });

  it('runs the work of a key once, however often it is asked for', async () => {
    let calls = 0;
    const group = new TaskGroup({ jobs: 4 });
    const out = await group.all(['a', 'b', 'a', 'a'], async (k) => `${k}${++calls}`, (k) => k);
    expect(out).toEqual(['a1', 'b2', 'a1', 'a1']);
  });

  it('stops the others at the first failure, starts nothing more, and throws that failure once all have stopped', async () => {
    const started: number[] = [];
    let stopped = 0;
    const real = new SmartError('STORAGE', 'disk full');
    const group = new TaskGroup({ jobs: 2 });
    const done = group.all([0, 1, 2, 3], async (i, signal) => {
      started.push(i);
      if (i === 1) {
        await tick(5);
        throw real;
      }
      try {
        await abortable(signal, 1000);
      } finally {
        stopped++;
      }
    });
    await expect(done).rejects.toBe(real);
    expect(started).toEqual([0, 1]);
    expect(stopped).toBe(1);
  });

  it('keeps a real failure over a cancellation a sibling failed with first', async () => {
    const real = new SmartError('REGISTRY', 'answered 500');
    const group = new TaskGroup({ jobs: 2 });
    const done = group.all([0, 1], async (i) => {
      if (i === 0) throw new SmartError('CANCELLED', 'stopped');
      await tick(5);
      throw real;
    });
    await expect(done).rejects.toBe(real);
  });

  it('reports the caller\'s cancellation as it is, and runs nothing once cancelled', async () => {
    const caller = new AbortController();
    const cancelled = new SmartError('CANCELLED', 'interrupted');
    let ran = 0;
    const group = new TaskGroup({ jobs: 1, signal: caller.signal });
    const done = group.all([0, 1, 2], async (_i, signal) => {
      ran++;
      if (ran === 1) caller.abort(cancelled);
      signal.throwIfAborted();
    });
    await expect(done).rejects.toBe(cancelled);
    expect(ran).toBe(1);
  });

  it('a failure outside the tasks (fail) stops them too', async () => {
    const group = new TaskGroup({ jobs: 1 });
    const first = group.run((signal) => abortable(signal, 1000));
    const second = group.run(async () => 'never');
    const outside = new Error('applying a layer failed');
    group.fail(outside);
    await expect(group.settle()).rejects.toBe(outside);
    await expect(first).rejects.toThrow();
    await expect(second).rejects.toBe(outside);
  });

  it('as a pool (failFast false), a failure is its own task\'s alone', async () => {
    const pool = new TaskGroup({ jobs: 1, failFast: false });
    const bad = pool.run(async () => {
      throw new Error('one block');
    });
    const good = pool.run(async () => 'next block');
    await expect(bad).rejects.toThrow('one block');
    await expect(good).resolves.toBe('next block');
  });

  it('has one default for --jobs: the core count, at least 4', () => {
    expect(defaultJobs()).toBeGreaterThanOrEqual(4);
  });
});
