/**
 * The layer store's gc beside pulls running at the same time (a cron job's prune on a build
 * machine, a CI job's pull): a pull records its image before it uses the store, and what a record
 * written while gc runs names is not removed; an expired record a pull renews meanwhile is kept.
 * The other run is played at a set point of gc's own reads (the file system is real).
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { LayerStore } from '../../src/cache/layer-store.js';
import type { Digest } from '../../src/oci/digest.js';
import { tempDir } from '../harness/tmp.js';

const hex = (c: string) => c.repeat(64);
const digest = (c: string) => `sha256:${hex(c)}` as Digest;
const DAY = 86_400_000;

/** A store holding layer `a` and blob `b`, both named by the image `m`'s record, last used two days ago. */
async function storeWithExpiredImage(): Promise<{ store: LayerStore; dir: string; record: string }> {
  const dir = path.join(await tempDir(), 'layer-store');
  await fs.mkdir(path.join(dir, 'layers', hex('a')), { recursive: true });
  await fs.writeFile(path.join(dir, 'layers', hex('a'), 'entries'), '');
  await fs.mkdir(path.join(dir, 'blobs', 'sha256'), { recursive: true });
  await fs.writeFile(path.join(dir, 'blobs', 'sha256', hex('b')), 'blob');
  await fs.mkdir(path.join(dir, 'images'), { recursive: true });
  const record = path.join(dir, 'images', hex('m'));
  await fs.writeFile(record, JSON.stringify({ name: 'app', diffIds: [digest('a')], blobs: [digest('b')], usedAt: new Date(Date.now() - 2 * DAY).toISOString() }));
  return { store: new LayerStore(dir), dir, record };
}

async function present(dir: string): Promise<{ layer: boolean; blob: boolean }> {
  const exists = (p: string) => fs.stat(p).then(() => true, () => false);
  return { layer: await exists(path.join(dir, 'layers', hex('a'))), blob: await exists(path.join(dir, 'blobs', 'sha256', hex('b'))) };
}

describe('the layer store gc beside a pull', () => {
  afterEach(() => vi.restoreAllMocks());

  it('removes an image unused for longer than the age, and what only it used', async () => {
    const { store, dir, record } = await storeWithExpiredImage();
    expect(await store.gc({ maxAgeMs: DAY })).toMatchObject({ removedImages: 1, removedLayers: 1, removedBlobs: 1 });
    expect(await present(dir)).toEqual({ layer: false, blob: false });
    await expect(fs.stat(record)).rejects.toThrow();
    expect(await fs.readdir(path.join(dir, 'images'))).toEqual([]);
    // The layer was moved aside under its lock, then removed: neither is left.
    expect(await fs.readdir(path.join(dir, 'tmp'))).toEqual([]);
    expect(await fs.readdir(path.join(dir, 'locks')).catch(() => [])).toEqual([]);
  });

  it('removes the record files a killed run left half written or half dropped once they are a day old, not before', async () => {
    const { store, dir } = await storeWithExpiredImage();
    const images = path.join(dir, 'images');
    const old = path.join(images, `${hex('m')}.0b7c4c1e-0000-4000-8000-000000000000.tmp`);
    const recent = path.join(images, `${hex('n')}.0b7c4c1e-0000-4000-8000-000000000001.tmp`);
    for (const f of [old, recent]) await fs.writeFile(f, '{"diffIds":[');
    const twoDaysAgo = new Date(Date.now() - 2 * DAY);
    await fs.utimes(old, twoDaysAgo, twoDaysAgo);
    expect(await store.gc({ maxAgeMs: DAY, dryRun: true })).toMatchObject({ removedImages: 1 });
    expect((await fs.readdir(images)).sort()).toEqual([hex('m'), path.basename(old), path.basename(recent)].sort());
    await store.gc({ maxAgeMs: DAY });
    expect(await fs.readdir(images)).toEqual([path.basename(recent)]);
  });

  it('leaves a layer that a run is filling (its lock held) to that run', async () => {
    const { store, dir } = await storeWithExpiredImage();
    await fs.mkdir(path.join(dir, 'locks'), { recursive: true });
    await fs.writeFile(path.join(dir, 'locks', hex('a')), '');
    expect(await store.gc({ maxAgeMs: DAY })).toMatchObject({ removedImages: 1, removedLayers: 0, removedBlobs: 1 });
    expect(await present(dir)).toEqual({ layer: true, blob: false });
  });

  it('keeps a record a pull renewed after gc read it expired, and the layer and blob it names', async () => {
    const { store, dir, record } = await storeWithExpiredImage();
    const readFile = fs.readFile.bind(fs);
    let renewed = false;
    vi.spyOn(fs, 'readFile').mockImplementation((async (file: string, ...rest: unknown[]) => {
      const read = await (readFile as (f: string, ...r: unknown[]) => Promise<unknown>)(file, ...rest);
      if (file === record && !renewed) {
        renewed = true; // gc has the old record in hand: the pull of the image records it now
        await new LayerStore(dir).recordImage(digest('m'), 'app', [digest('a')], [digest('b')]);
      }
      return read;
    }) as typeof fs.readFile);
    expect(await store.gc({ maxAgeMs: DAY })).toMatchObject({ removedImages: 0, removedLayers: 0, removedBlobs: 0 });
    expect(renewed).toBe(true);
    expect(await present(dir)).toEqual({ layer: true, blob: true });
    const kept = JSON.parse(await readFile(record, 'utf8')) as { usedAt: string };
    expect(Date.now() - Date.parse(kept.usedAt)).toBeLessThan(DAY);
    expect(await fs.readdir(path.join(dir, 'images'))).toEqual([hex('m')]); // nothing left aside
  });

  it('keeps a layer and a blob that a pull starting after gc read the records recorded as its own', async () => {
    const { store, dir } = await storeWithExpiredImage();
    const readdir = fs.readdir.bind(fs);
    let pulled = false;
    vi.spyOn(fs, 'readdir').mockImplementation((async (d: string, ...rest: unknown[]) => {
      if (d === path.join(dir, 'blobs', 'sha256') && !pulled) {
        pulled = true; // the records are read: another image using the same layer and blob is pulled now
        await new LayerStore(dir).recordImage(digest('n'), 'other', [digest('a')], [digest('b')]);
      }
      return (readdir as (p: string, ...r: unknown[]) => Promise<unknown>)(d, ...rest);
    }) as typeof fs.readdir);
    expect(await store.gc({ maxAgeMs: DAY })).toMatchObject({ removedImages: 1, removedLayers: 0, removedBlobs: 0 });
    expect(pulled).toBe(true);
    expect(await present(dir)).toEqual({ layer: true, blob: true });
    // Once that image too is unused for the age, they go.
    expect(await store.gc({ maxAgeMs: -1 })).toMatchObject({ removedImages: 1, removedLayers: 1, removedBlobs: 1 });
    expect(await present(dir)).toEqual({ layer: false, blob: false });
  });
});
