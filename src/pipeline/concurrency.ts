/**
 * Work side by side, bounded: the one helper behind every place that runs tasks at once (layers of
 * a copy, images of an index, blocks of a compressor, files of a cache). At most `jobs` tasks run
 * at once; a task with a key (a digest) runs once however often it is asked for; and the first
 * real failure stops the rest.
 */
import { setMaxListeners } from 'node:events';
import os from 'node:os';
import { isCancellation } from '../errors.js';
import { coreCount } from './cores.js';

/**
 * Layers (or images) in flight at once when `--jobs` does not say: the core count, and at least 4,
 * since a transfer waits on the network and the disk as much as on a core.
 */
export function defaultJobs(): number {
  // Four CPUs or fewer in the mask: 4 whatever the quota, and the cgroup files go unread (~1 ms).
  return os.availableParallelism() <= 4 ? 4 : Math.max(4, coreCount());
}

export interface TaskGroupOptions {
  /** Tasks running at once (at least one). */
  jobs: number;
  /** The caller's cancellation: stops the group as a failure does. */
  signal?: AbortSignal;
  /**
   * Default true: the first failure aborts the other tasks (through the signal each gets) and is
   * what `settle` throws. False: a pool of independent tasks, each failure its own task's alone.
   */
  failFast?: boolean;
}

/**
 * A bounded group of tasks. With `failFast` (the default): the first failure aborts the others and
 * is thrown by `settle` once every task has stopped, so nothing still writes when the caller cleans
 * up and reports. What the others fail with once aborted never replaces it; nor does a
 * cancellation that came first from elsewhere replace a real failure, unless the caller cancelled.
 * A task not yet started when the group stops never starts.
 */
export class TaskGroup {
  /** Aborted when the group stops: by its first failure, or by the caller's signal. */
  readonly signal: AbortSignal;
  private readonly controller = new AbortController();
  private readonly jobs: number;
  private readonly failFast: boolean;
  private readonly outer: AbortSignal | undefined;
  private running = 0;
  private readonly waiting: (() => void)[] = [];
  private readonly byKey = new Map<string, Promise<unknown>>();
  private readonly pending = new Set<Promise<unknown>>();
  private failure: { error: unknown } | undefined;

  constructor(options: TaskGroupOptions) {
    this.jobs = Math.max(1, Math.floor(options.jobs) || 1);
    this.failFast = options.failFast ?? true;
    this.outer = options.signal;
    this.signal = options.signal ? AbortSignal.any([options.signal, this.controller.signal]) : this.controller.signal;
    // Each running task listens on it several times over (its streams, its requests, its pipelines).
    setMaxListeners(Math.max(10, this.jobs * 8), this.signal);
  }

  /**
   * Runs `work` when a slot is free, with the group's signal. With a `key`, work already asked for
   * under it is not run again: its promise is answered (single-flight). `slot: false`: at once,
   * beside the tasks `jobs` counts (a small task that must not hold one of them back), still
   * stopped with the group and failing it.
   */
  run<T>(work: (signal: AbortSignal) => Promise<T>, key?: string, options: { slot?: boolean } = {}): Promise<T> {
    if (key !== undefined) {
      const known = this.byKey.get(key);
      if (known) return known as Promise<T>;
    }
    const slot = options.slot ?? true;
    const task = (async () => {
      if (slot) await this.acquire();
      try {
        this.signal.throwIfAborted(); // stopped meanwhile: never started
        return await work(this.signal);
      } catch (e) {
        if (this.failFast) this.fail(e);
        throw e;
      } finally {
        if (slot) this.release();
      }
    })();
    // Reported through `settle` or the caller's own await, never as an unhandled rejection.
    task.catch(() => undefined);
    if (key !== undefined) this.byKey.set(key, task);
    this.pending.add(task);
    void task.finally(() => this.pending.delete(task)).catch(() => undefined);
    return task;
  }

  /**
   * Stops the group with `error` (a failure outside its tasks, such as the step that uses their
   * results): running tasks are aborted, waiting ones never start, and `settle` throws it unless a
   * task failed first.
   */
  fail(error: unknown): void {
    if (!this.failure) {
      this.failure = { error };
      this.controller.abort(error);
    } else if (isCancellation(this.failure.error) && !isCancellation(error) && !this.outer?.aborted) {
      this.failure = { error };
    }
  }

  /** Waits for every task asked for so far to stop; throws the group's failure, or the caller's cancellation. */
  async settle(): Promise<void> {
    while (this.pending.size) await Promise.allSettled([...this.pending]);
    if (this.failure) throw this.failure.error;
    // Cancelled by the caller between tasks: some never ran, so there is no whole result.
    this.outer?.throwIfAborted();
  }

  /** `work` for every item (single-flight on `keyOf`), then `settle`: the results in the items' order. */
  async all<I, T>(items: readonly I[], work: (item: I, signal: AbortSignal) => Promise<T>, keyOf?: (item: I) => string): Promise<T[]> {
    const tasks = items.map((item) => this.run((signal) => work(item, signal), keyOf?.(item)));
    await this.settle();
    return Promise.all(tasks);
  }

  private acquire(): Promise<void> {
    if (this.running < this.jobs) {
      this.running++;
      return Promise.resolve();
    }
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  private release(): void {
    const next = this.waiting.shift();
    if (next) next();
    else this.running--;
  }
}
