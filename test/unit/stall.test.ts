/** StallGuard: a source that stops is caught, a slow consumer is not blamed, and no timer outlives the stream. */
import net from 'node:net';
import { PassThrough, Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { SmartError } from '../../src/errors.js';
import { StallGuard, guardStalls, stallGuard, withDeadline } from '../../src/pipeline/stall.js';

const MS = 150;
/** Generous: the event loop of a loaded CI machine may be late by this much. */
const MARGIN = 600;

function timers(): number {
  return process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
}

/** Pending timers must come back to where they were: the guard leaves none behind. */
let baseline = 0;
function markTimers(): void {
  baseline = timers();
}
async function expectNoTimersLeft(): Promise<void> {
  await sleep(0);
  expect(timers()).toBeLessThanOrEqual(baseline);
}

function sink(): Writable & { bytes: number } {
  const w = new Writable({
    write(chunk: Buffer, _enc, cb) {
      w.bytes += chunk.length;
      cb();
    },
  }) as Writable & { bytes: number };
  w.bytes = 0;
  return w;
}

async function failure(p: Promise<unknown>): Promise<{ error: SmartError; ms: number }> {
  const t0 = performance.now();
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(SmartError);
    return { error: e as SmartError, ms: performance.now() - t0 };
  }
  throw new Error('expected the pipeline to fail');
}

const servers: net.Server[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise<void>((r) => s.close(() => r()))));
});

describe('StallGuard', () => {
  it('errors when a socket stops sending but stays open, within the limit and a margin', async () => {
    markTimers();
    const held: net.Socket[] = [];
    const server = net.createServer((sock) => {
      held.push(sock);
      sock.write(Buffer.alloc(10_000, 1)); // some bytes, then silence with the connection open
    });
    servers.push(server);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const { port } = server.address() as net.AddressInfo;
    const socket = net.connect(port, '127.0.0.1');
    const out = sink();
    const { error, ms } = await failure(pipeline(socket, new StallGuard(MS, 'blob sha256:abc of team/app'), out));
    expect(error.code).toBe('REGISTRY');
    expect(error.retryable).toBe(true);
    expect(error.message).toBe('blob sha256:abc of team/app: no data for 0.15 s (stalled)');
    expect(out.bytes).toBe(10_000);
    expect(ms).toBeGreaterThanOrEqual(MS - 5);
    expect(ms).toBeLessThan(MS + MARGIN);
    expect(socket.destroyed).toBe(true); // pipeline tore the source down
    for (const s of held) s.destroy();
    await expectNoTimersLeft();
  });

  it('errors when a stream source sends nothing at all', async () => {
    markTimers();
    const source = new PassThrough(); // never written, never ended
    const { error, ms } = await failure(pipeline(source, stallGuard(MS, 'manifest'), sink()));
    expect(error.message).toBe('manifest: no data for 0.15 s (stalled)');
    expect(ms).toBeLessThan(MS + MARGIN);
    await expectNoTimersLeft();
  });

  it('is reset by every chunk: a slow but steady source is not a stall', async () => {
    markTimers();
    const source = new PassThrough();
    const done = pipeline(source, new StallGuard(MS, 'slow source'), sink());
    for (let i = 0; i < 8; i++) {
      source.write(Buffer.alloc(100));
      await sleep(MS / 2); // 8 × 75 ms = 600 ms in all, four times the limit
    }
    source.end();
    await done;
    await expectNoTimersLeft();
  });

  it('does not blame a fast source for a slow consumer', async () => {
    markTimers();
    let produced = 0;
    const total = 12;
    const source = new Readable({
      read() {
        // Always ready at once: the only waiting is the consumer's.
        this.push(produced++ < total ? Buffer.alloc(8192, produced) : null);
      },
    });
    let consumed = 0;
    const consumer = new Writable({
      highWaterMark: 1,
      write(chunk: Buffer, _enc, cb) {
        consumed += chunk.length;
        setTimeout(cb, MS * 1.5); // every chunk takes longer than the limit
      },
    });
    const t0 = performance.now();
    await pipeline(source, new StallGuard(MS, 'layer'), consumer);
    expect(consumed).toBe(total * 8192);
    // The consumer spent many times the limit in all, each pause longer than the limit.
    expect(performance.now() - t0).toBeGreaterThan(MS * 1.5 * total - 50);
    await expectNoTimersLeft();
  });

  it('does not blame a live source while the consumer pauses for longer than the limit', async () => {
    markTimers();
    let produced = 0;
    const total = 64;
    const source = new Readable({
      read() {
        this.push(produced++ < total ? Buffer.alloc(16 * 1024, 7) : null);
      },
    });
    const guard = new StallGuard(MS, 'paused');
    const errors: Error[] = [];
    guard.on('error', (e) => errors.push(e));
    let got = 0;
    guard.on('data', (c: Buffer) => (got += c.length));
    // At the first chunk the consumer pauses: the buffers fill up, then the source is held back by us, not stalled.
    guard.once('data', () => guard.pause());
    source.pipe(guard);
    await sleep(10);
    expect(guard.isPaused()).toBe(true);
    const before = got;
    await sleep(MS * 3);
    expect(errors).toEqual([]);
    expect(got).toBe(before);
    expect(got).toBeLessThan(total * 16 * 1024);
    guard.resume();
    await new Promise((r) => guard.on('end', r));
    expect(got).toBe(total * 16 * 1024);
    expect(errors).toEqual([]);
    await expectNoTimersLeft();
  });

  it('counts a quiet source as stalled even while the consumer is paused, when the guard has room', async () => {
    // The consumer took everything and paused; the source, with room to send, sends nothing.
    const source = new PassThrough();
    const guard = new StallGuard(MS, 'quiet');
    const errors: Error[] = [];
    guard.on('error', (e) => errors.push(e));
    guard.on('data', () => undefined);
    source.pipe(guard);
    source.write(Buffer.alloc(1000));
    await sleep(10);
    guard.pause();
    await sleep(MS + MARGIN / 2);
    expect(errors.map((e) => e.message)).toEqual(['quiet: no data for 0.15 s (stalled)']);
  });

  it('clears its timer on end and on destroy, and does nothing when disabled', async () => {
    markTimers();
    const a = new StallGuard(MS, 'a');
    a.resume(); // reading: the clock runs
    await sleep(5);
    const armed = timers();
    a.end(Buffer.from('x'));
    await new Promise((r) => a.on('end', r));
    expect(timers()).toBeLessThan(armed);
    expect(timers()).toBeLessThanOrEqual(baseline);

    const b = new StallGuard(MS, 'b');
    b.resume();
    await sleep(5);
    const armedB = timers();
    b.destroy();
    expect(timers()).toBeLessThan(armedB);
    expect(timers()).toBeLessThanOrEqual(baseline);

    for (const ms of [0, Infinity, -1, 2 ** 40]) {
      const c = new StallGuard(ms, 'c');
      c.resume();
      await sleep(MS + 50);
      expect(c.destroyed).toBe(false);
      expect(timers()).toBeLessThanOrEqual(baseline);
      c.end();
    }
    await expectNoTimersLeft();
  });

  it('guardStalls keeps an early stall for the consumer and destroys the source', async () => {
    markTimers();
    const source = new PassThrough();
    const guarded = guardStalls(source, MS, 'blob');
    guarded.resume();
    await sleep(MS + MARGIN / 2);
    expect(source.destroyed).toBe(true);
    expect(guarded.errored).toBeInstanceOf(SmartError);
    const { error } = await failure(pipeline(guarded, sink()));
    expect(error.message).toBe('blob: no data for 0.15 s (stalled)');
    await expectNoTimersLeft();
  });
});

describe('withDeadline', () => {
  it('passes the result through and clears its timer', async () => {
    markTimers();
    await expect(withDeadline(sleep(10).then(() => 42), 5_000, 'copy')).resolves.toBe(42);
    await expect(withDeadline(Promise.reject(new Error('own')), 5_000, 'copy')).rejects.toThrow('own');
    expect(timers()).toBeLessThanOrEqual(baseline);
  });

  it('rejects with CANCELLED at the deadline and calls onTimeout to abort the work', async () => {
    markTimers();
    const controller = new AbortController();
    const work = sleep(10_000, undefined, { signal: controller.signal });
    const t0 = performance.now();
    const { error } = await failure(withDeadline(work, MS, 'push docker://r/app:1', (e) => controller.abort(e)));
    expect(performance.now() - t0).toBeLessThan(MS + MARGIN);
    expect(error.code).toBe('CANCELLED');
    expect(error.message).toBe('push docker://r/app:1: timed out after 0.15 s');
    expect(controller.signal.aborted).toBe(true);
    await expectNoTimersLeft();
  });

  it('sets no deadline for 0 or Infinity', async () => {
    markTimers();
    const sleeping = sleep(20).then(() => 'ok');
    const withSleep = timers();
    const p = withDeadline(sleeping, 0, 'x');
    expect(timers()).toBe(withSleep); // no timer of its own
    await expect(p).resolves.toBe('ok');
    await expect(withDeadline(Promise.resolve(1), Infinity, 'x')).resolves.toBe(1);
  });
});
