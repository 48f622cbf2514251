/**
 * Spools keep a layer fetched ahead of its turn: the bytes come back whole and in order, in memory
 * up to the shared budget and in an (unlinked) file beyond it, and a failure reaches the reader.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { Spool, SpoolBudget } from '../../src/pipeline/spool.js';
import { tempDir } from '../harness/tmp.js';

async function readAll(r: Readable): Promise<Buffer> {
  const out: Buffer[] = [];
  for await (const c of r) out.push(c as Buffer);
  return Buffer.concat(out);
}

/** An overflow file as the writer makes one: created, then unlinked at once. */
function fileOpener(dir: string) {
  const opened: string[] = [];
  return {
    opened,
    open: async () => {
      const name = path.join(dir, `spool-${opened.length}`);
      opened.push(name);
      const file = await fs.open(name, 'wx+');
      await fs.unlink(name);
      return file;
    },
  };
}

const tick = () => new Promise((r) => setImmediate(r));

describe('Spool', () => {
  it('gives back what a source sent before it was read, from memory and from its file past the budget', async () => {
    const dir = await tempDir();
    const chunks = Array.from({ length: 40 }, () => randomBytes(10_000));
    const budget = new SpoolBudget(100_000);
    const files = fileOpener(dir);
    const spool = new Spool(Readable.from(chunks), { budget, what: 'layer x', openFile: files.open });
    await spool.drained;
    expect(budget.peak).toBeLessThanOrEqual(100_000);
    expect(files.opened).toHaveLength(1);
    expect(await fs.readdir(dir)).toEqual([]); // the file has no name
    expect((await readAll(spool.reader())).equals(Buffer.concat(chunks))).toBe(true);
    expect(budget.used).toBe(0);
  });

  it('keeps the order when the reader comes mid-way, catches up with the file, then takes the rest as it arrives', async () => {
    const dir = await tempDir();
    const source = new PassThrough();
    const budget = new SpoolBudget(25_000);
    const files = fileOpener(dir);
    const spool = new Spool(source, { budget, what: 'layer x', openFile: files.open, window: 20_000 });
    const sent: Buffer[] = [];
    const send = async (n: number) => {
      for (let i = 0; i < n; i++) {
        const c = randomBytes(7_000);
        sent.push(c);
        source.write(c);
        await tick();
      }
    };
    await send(10); // 3 in memory, the rest in the file
    const reading = readAll(spool.reader());
    await send(30); // after the file is read through, straight through memory
    source.end();
    expect((await reading).equals(Buffer.concat(sent))).toBe(true);
    expect(files.opened).toHaveLength(1);
    expect(budget.used).toBe(0);
  });

  it('never opens a file while the budget holds everything', async () => {
    const files = fileOpener(await tempDir());
    const budget = new SpoolBudget(1_000_000);
    const chunks = Array.from({ length: 10 }, () => randomBytes(10_000));
    const spool = new Spool(Readable.from(chunks), { budget, what: 'layer x', openFile: files.open });
    await spool.drained;
    expect(budget.peak).toBe(100_000);
    expect((await readAll(spool.reader())).equals(Buffer.concat(chunks))).toBe(true);
    expect(files.opened).toEqual([]);
  });

  it('a file it cannot write (a full disk) fails the reader in one STORAGE error, with the advice', async () => {
    const full = Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
    const openFile = async () => ({ write: () => Promise.reject(full), close: async () => undefined }) as unknown as fs.FileHandle;
    const spool = new Spool(Readable.from([randomBytes(1000)]), { budget: new SpoolBudget(0), what: 'blob x', waitingFor: 'the blob before it goes into the archive', openFile });
    // No reader yet: the bytes go to the file, which refuses them.
    const e = await spool.drained.then(
      () => undefined,
      (x: unknown) => x as { code: string; message: string; hint?: string },
    );
    expect(e).toMatchObject({ code: 'STORAGE', message: 'blob x: cannot spool it while the blob before it goes into the archive: ENOSPC: no space left on device, write' });
    expect(e?.hint).toMatch(/free space/);
    await expect(readAll(spool.reader())).rejects.toMatchObject({ code: 'STORAGE' });
    await spool.destroy();
  });

  it("passes the source's error to the reader in place of the rest, even with bytes still held", async () => {
    const source = new PassThrough();
    const spool = new Spool(source, { budget: new SpoolBudget(1_000_000), what: 'layer x', openFile: fileOpener(await tempDir()).open });
    source.write(randomBytes(1000));
    await tick();
    source.destroy(new Error('digest mismatch'));
    await expect(spool.drained).rejects.toThrow('digest mismatch');
    await expect(readAll(spool.reader())).rejects.toThrow('digest mismatch');
  });

  it('destroyed, it stops its source and its reader fails rather than end short', async () => {
    const source = new PassThrough();
    const budget = new SpoolBudget(1_000_000);
    const spool = new Spool(source, { budget, what: 'layer x', openFile: fileOpener(await tempDir()).open });
    source.write(randomBytes(1000));
    const reading = readAll(spool.reader());
    await tick();
    await spool.destroy();
    expect(source.destroyed).toBe(true);
    await expect(reading).rejects.toThrow();
    expect(budget.used).toBe(0);
  });

  it('holds an attached reader to its window: the source waits for it', async () => {
    const source = new PassThrough({ highWaterMark: 1 });
    const spool = new Spool(source, { budget: new SpoolBudget(0), what: 'layer x', openFile: fileOpener(await tempDir()).open, window: 50_000 });
    const reader = spool.reader();
    for (let i = 0; i < 20; i++) source.write(randomBytes(10_000));
    for (let i = 0; i < 20; i++) await tick();
    // Nobody reads: the spool took the window's worth (and the chunk that filled it), no more.
    expect(source.readableLength + source.writableLength).toBeGreaterThan(100_000);
    source.end();
    expect((await readAll(reader)).length).toBe(200_000);
  });
});
