/** BatchedFileWriter: the bytes as they came, in few writes; failures and destroys leave no open descriptor. */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import { BatchedFileWriter, openBatchedFileWriter } from '../../src/storage/batched-file-writer.js';
import { tempDir } from '../harness/tmp.js';

/** Deterministic chunks of the given sizes (each a buffer of its own, as a socket gives them). */
function chunks(sizes: number[]): Buffer[] {
  let seed = 1;
  return sizes.map((n) => {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = (seed = (seed * 1103515245 + 12345) >>> 0) >>> 24;
    return b;
  });
}

const openFds = () => fs.readdirSync('/proc/self/fd').length;

describe('BatchedFileWriter', () => {
  it('writes every byte in order, gathering small chunks into few writes', async () => {
    const dir = await tempDir();
    const file = path.join(dir, 'out');
    const parts = chunks([1, 65536, 7, 300_000, 65536, 65536, 1_500_000, 3, 65536, 0, 12345]);
    const calls: number[] = [];
    const writev = fs.writev;
    const spy = ((fd: number, buffers: NodeJS.ArrayBufferView[], cb: (e: NodeJS.ErrnoException | null) => void) => {
      calls.push(buffers.length);
      return writev(fd, buffers, cb);
    }) as typeof fs.writev;
    fs.writev = spy;
    try {
      await pipeline(Readable.from(parts, { objectMode: false }), await openBatchedFileWriter(file, 'wx'));
    } finally {
      fs.writev = writev;
    }
    const written = fs.readFileSync(file);
    expect(createHash('sha256').update(written).digest('hex')).toBe(createHash('sha256').update(Buffer.concat(parts)).digest('hex'));
    // 2.1 MB in 11 chunks: two full batches and the rest at the end.
    expect(calls.length).toBeGreaterThan(0);
    expect(calls.length).toBeLessThanOrEqual(3);
    await expect(openBatchedFileWriter(file, 'wx')).rejects.toMatchObject({ code: 'EEXIST' });
  });

  it('a write that fails fails the pipeline, and the descriptor is closed', async () => {
    const dir = await tempDir();
    const file = path.join(dir, 'read-only');
    fs.writeFileSync(file, '');
    const before = openFds();
    // Opened for reading: every write fails with EBADF.
    const writer = new BatchedFileWriter(fs.openSync(file, 'r'), 1024);
    await expect(pipeline(Readable.from(chunks([4096, 4096]), { objectMode: false }), writer)).rejects.toMatchObject({ code: 'EBADF' });
    await new Promise((resolve) => setImmediate(resolve));
    expect(writer.closed).toBe(true);
    expect(openFds()).toBe(before);
  });

  it("a failed write's error is worded by the writer's owner: which file of which store", async () => {
    // /dev/full: every write fails with ENOSPC, as on a full disk.
    const writer = new BatchedFileWriter(fs.openSync('/dev/full', 'w'), 1024, (e) => Object.assign(new Error(`file:/srv/store: cannot write /blob: ${e.message}`), { cause: e }));
    const failed = pipeline(Readable.from(chunks([4096]), { objectMode: false }), writer);
    await expect(failed).rejects.toThrow(/^file:\/srv\/store: cannot write \/blob: ENOSPC: no space left on device, write$/);
    await expect(failed).rejects.toMatchObject({ cause: { code: 'ENOSPC' } });
  });

  it('destroyed while a write is on the pool, it closes the descriptor once the write is back', async () => {
    const dir = await tempDir();
    const before = openFds();
    const writer = await openBatchedFileWriter(path.join(dir, 'cut'), 'wx');
    writer.write(chunks([2 * 1024 * 1024])[0]!);
    writer.destroy();
    await new Promise((resolve) => writer.once('close', resolve));
    expect(openFds()).toBe(before);
  });
});
