/**
 * The lock file around a short read-modify-write (an OCI layout's index.json): one holder at a
 * time, a dead holder's lock taken over, a live one waited for up to a bound; and the layout's
 * tags, written by copies at once, all kept.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { hostPlatform } from '../../src/oci/platform.js';
import { copy } from '../../src/ops/copy.js';
import { withFileLock } from '../../src/storage/file-lock.js';
import { currentOwner, ownerTag } from '../../src/storage/leftovers.js';
import { openDestination, openSource, parseImageName } from '../../src/transports/all.js';
import type { BlobDestination } from '../../src/oci/image.js';
import type { OpenContext } from '../../src/transports/transport.js';
import { fixtures } from '../harness/fixtures.js';
import { tempDir } from '../harness/tmp.js';

const pause = () => new Promise((r) => setTimeout(r, 1));

describe('file lock', () => {
  it('one holder at a time: concurrent read-modify-writes of a counter lose no update, and the lock goes at the end', async () => {
    const dir = await tempDir('smart-lock-');
    const counter = path.join(dir, 'counter');
    await fs.writeFile(counter, '0');
    const bump = () =>
      withFileLock(`${counter}.lock`, 'counter', async () => {
        const n = Number(await fs.readFile(counter, 'utf8'));
        await pause(); // a read and its write far apart, as with a real index
        await fs.writeFile(counter, String(n + 1));
      });
    await Promise.all(Array.from({ length: 20 }, bump));
    expect(await fs.readFile(counter, 'utf8')).toBe('20');
    expect(await fs.readdir(dir)).toEqual(['counter']);
  });

  it("takes over a dead holder's lock, and gives up on a live one after its patience, naming it", async () => {
    const dir = await tempDir('smart-lock-');
    const lock = path.join(dir, 'index.json.lock');
    await fs.writeFile(lock, ownerTag({ ...currentOwner(), boot: 'ffffffff' })); // an earlier boot's
    expect(await withFileLock(lock, 'index', async () => 'ran')).toBe('ran');
    expect(await fs.readdir(dir)).toEqual([]);

    await fs.writeFile(lock, ownerTag()); // this process: alive
    await expect(withFileLock(lock, 'oci:layout', async () => 'ran', { patienceMs: 200 })).rejects.toMatchObject({
      code: 'LOCKED',
      message: expect.stringContaining(`oci:layout: another run has held ${lock}`),
    });
  });

  it('copies tagging into one layout at once keep every tag', async () => {
    const fx = fixtures();
    const layout = path.join(await tempDir('smart-lock-'), 'layout');
    const ctx: OpenContext = { stdin: process.stdin, stdout: process.stdout };
    const first = (await openDestination(parseImageName(`oci:${layout}:base`), ctx)) as BlobDestination;
    await copy(await openSource(parseImageName(`oci:${fx.paths.ociBasic}:latest`), ctx), first, { platform: hostPlatform(), jobs: 2 });
    const tags = Array.from({ length: 8 }, (_, i) => `t${i}`);
    await Promise.all(
      tags.map(async (tag) => {
        const dest = (await openDestination(parseImageName(`oci:${layout}:${tag}`), ctx)) as BlobDestination;
        await copy(await openSource(parseImageName(`oci:${fx.paths.ociBasic}:latest`), ctx), dest, { platform: hostPlatform(), jobs: 2 });
      }),
    );
    const index = JSON.parse(await fs.readFile(path.join(layout, 'index.json'), 'utf8')) as { manifests: { annotations?: Record<string, string> }[] };
    expect(index.manifests.map((m) => m.annotations?.['org.opencontainers.image.ref.name']).sort()).toEqual(['base', ...tags].sort());
  });
});
