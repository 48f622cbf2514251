/**
 * The machine's kept blobs (src/cache/blob-cache.ts): a blob is kept only once its source ended
 * (having checked it), never half; keeping never stops the pull it serves, and one failure to write
 * stops the keeping for the rest of the pull, said once; a kept blob is checked before each use.
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { BlobCache, keptBlobPath } from '../../src/cache/blob-cache.js';
import { LayerStore } from '../../src/cache/layer-store.js';
import { currentOwner, ownerTag } from '../../src/storage/leftovers.js';
import type { Digest } from '../../src/oci/digest.js';
import type { Descriptor } from '../../src/oci/manifest.js';
import { MediaType } from '../../src/oci/mediatypes.js';
import { tempDir } from '../harness/tmp.js';

function blobOf(bytes: Buffer): Descriptor {
  return { mediaType: MediaType.OCI_LAYER_GZIP, digest: `sha256:${createHash('sha256').update(bytes).digest('hex')}` as Digest, size: bytes.length };
}

/** The chunks of `bytes` as a stream of 64 KiB chunks; `failAt`: errors in place of the chunk at that offset. */
function chunked(bytes: Buffer, failAt?: number): Readable {
  return Readable.from(
    (async function* () {
      for (let i = 0; i < bytes.length; i += 65536) {
        if (failAt !== undefined && i >= failAt) throw new Error('the source broke');
        yield bytes.subarray(i, i + 65536);
      }
    })(),
  );
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

function cache(dir: string) {
  const events = { notKept: [] as unknown[], damaged: [] as string[] };
  const blobs = new BlobCache(dir, { notKept: (e) => events.notKept.push(e), damaged: (what, why) => events.damaged.push(`${what}: ${why}`) });
  return { blobs, events };
}

describe('the blobs kept on this machine', () => {
  it('keep a blob as it passes, once it has ended, and find it checked', async () => {
    const dir = await tempDir();
    const { blobs, events } = cache(dir);
    const bytes = randomBytes(3 * 1024 * 1024 + 5);
    const d = blobOf(bytes);
    expect((await readAll(blobs.keep(chunked(bytes), d))).equals(bytes)).toBe(true); // not toEqual: element by element, 20 s for 3 MB
    expect((await fs.readFile(keptBlobPath(dir, d.digest))).equals(bytes)).toBe(true);
    expect(await fs.readdir(path.join(dir, 'tmp'))).toEqual([]);
    const found = await blobs.find(d, 'layer');
    expect((await fs.readFile(found!)).equals(bytes)).toBe(true);
    expect(blobs.counts).toEqual({ read: 1, kept: 1, repaired: 0 });
    expect(events).toEqual({ notKept: [], damaged: [] });
    await blobs.release();
    expect(await fs.readdir(path.join(dir, 'tmp'))).toEqual([]);
  });

  it('a blob found stays readable until released, when the gc of another run removes it meanwhile', async () => {
    const dir = await tempDir();
    const { blobs } = cache(dir);
    const bytes = randomBytes(300_000);
    const d = blobOf(bytes);
    await readAll(blobs.keep(chunked(bytes), d));
    const found = await blobs.find(d, 'layer');
    // No image record names the blob: a prune (any age) removes it from blobs/, and leaves the
    // pin of this live run in tmp/.
    const store = new LayerStore(dir);
    expect(await store.gc({ maxAgeMs: 0 })).toMatchObject({ removedBlobs: 1 });
    await expect(fs.stat(keptBlobPath(dir, d.digest))).rejects.toMatchObject({ code: 'ENOENT' });
    expect((await fs.readFile(found!)).equals(bytes)).toBe(true);
    await blobs.release();
    expect(await fs.readdir(path.join(dir, 'tmp'))).toEqual([]);
    // A pin a killed run left (its owner gone: an earlier boot's) is swept as stale.
    await readAll(blobs.keep(chunked(bytes), d));
    const again = cache(dir).blobs;
    const pin = (await again.find(d, 'layer'))!;
    const dead = path.join(dir, 'tmp', `${ownerTag({ ...currentOwner(), boot: 'ffffffff' })}-0123abcd`);
    await fs.rename(pin, dead);
    expect((await store.removeStale()).map((c) => c.path)).toEqual([dead]);
  });

  it('keep nothing of a blob whose source failed midway, and leave nothing behind', async () => {
    const dir = await tempDir();
    const { blobs, events } = cache(dir);
    const bytes = randomBytes(2 * 1024 * 1024);
    const d = blobOf(bytes);
    await expect(readAll(blobs.keep(chunked(bytes, 1024 * 1024), d))).rejects.toThrow('the source broke');
    // The clean-up runs after the close: waited for, not assumed done within a fixed 50 ms (a loaded machine may take longer).
    const tmp = path.join(dir, 'tmp');
    for (let i = 0; i < 100 && (await fs.readdir(tmp).catch(() => [])).length > 0; i++) await new Promise((r) => setTimeout(r, 50));
    await expect(fs.stat(keptBlobPath(dir, d.digest))).rejects.toMatchObject({ code: 'ENOENT' });
    expect(await fs.readdir(tmp)).toEqual([]);
    expect(events.notKept).toEqual([]); // a failed source is not a store that cannot keep
  });

  it('pass a blob on whole when they cannot be written, said once, and keep nothing more for that pull', async () => {
    const dir = await tempDir();
    const file = path.join(dir, 'a-file');
    await fs.writeFile(file, '');
    const { blobs, events } = cache(path.join(file, 'store')); // under a file: ENOTDIR
    const bytes = randomBytes(1024 * 1024);
    const first = blobs.keep(chunked(bytes), blobOf(bytes));
    expect((await readAll(first)).equals(bytes)).toBe(true);
    const source = chunked(bytes);
    expect(blobs.keep(source, blobOf(bytes))).toBe(source);
    expect(events.notKept).toHaveLength(1);
    expect(blobs.counts.kept).toBe(0);
  });

  it('remove a kept blob that fails its check, and say so', async () => {
    const dir = await tempDir();
    const { blobs, events } = cache(dir);
    const bytes = randomBytes(100_000);
    const d = blobOf(bytes);
    await readAll(blobs.keep(chunked(bytes), d));
    await fs.truncate(keptBlobPath(dir, d.digest), 1000); // a restore that stopped midway
    expect(await blobs.find(d, 'layer')).toBeUndefined();
    expect(events.damaged).toHaveLength(1);
    await expect(fs.stat(keptBlobPath(dir, d.digest))).rejects.toMatchObject({ code: 'ENOENT' });
    expect(await blobs.find(d, 'layer')).toBeUndefined(); // not there now: nothing more said
    expect(events.damaged).toHaveLength(1);
    expect(blobs.counts).toEqual({ read: 0, kept: 1, repaired: 1 });
  });
});
