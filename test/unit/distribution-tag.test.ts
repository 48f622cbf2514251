/**
 * A tag is the last thing a push writes, and a push that stops before it leaves no tag: the
 * registry lists a tag by its directory, so a new tag whose `current/link` could not be written
 * is taken away again, where it would be listed and serve nothing (found by the fault soak, S3
 * answering errors to that one write).
 */
import fs from 'node:fs/promises';
import { afterAll, describe, expect, it } from 'vitest';
import type { StorageDriver } from '../../src/storage/driver.js';
import { FsDriver } from '../../src/storage/fs-driver.js';
import { DistributionStore } from '../../src/transports/distribution/store.js';
import type { Digest } from '../../src/oci/digest.js';
import { tempDir } from '../harness/tmp.js';

const DIGEST = `sha256:${'ab'.repeat(32)}` as Digest;
const OTHER = `sha256:${'cd'.repeat(32)}` as Digest;

/** The filesystem driver, with writes of a tag's current/link failing while `failing` is set. */
function flaky(root: string): { driver: StorageDriver; failing: { on: boolean } } {
  const failing = { on: true };
  const fsDriver = new FsDriver(root);
  const driver = new Proxy(fsDriver, {
    get(target, prop, receiver) {
      if (prop === 'putContent') {
        return async (p: string, content: Buffer) => {
          if (failing.on && p.endsWith('/current/link')) throw Object.assign(new Error('injected: 503 Slow Down'), { code: 'SMART_TEST' });
          return target.putContent(p, content);
        };
      }
      const v = Reflect.get(target, prop, receiver) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  return { driver, failing };
}

describe('DistributionStore.tag', () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const d of dirs) await fs.rm(d, { recursive: true, force: true });
  });

  it('a new tag whose current/link fails is not listed; a retry tags it', async () => {
    const root = await tempDir('smart-tag-');
    dirs.push(root);
    const { driver, failing } = flaky(root);
    const store = new DistributionStore(driver);
    await expect(store.tag('r', 't', DIGEST)).rejects.toThrow(/injected/);
    expect(await store.listTags('r')).toEqual([]);
    failing.on = false;
    await store.tag('r', 't', DIGEST);
    expect(await store.listTags('r')).toEqual(['t']);
    expect(await store.resolveTag('r', 't')).toBe(DIGEST);
  });

  it('a tag that was there keeps pointing where it did when moving it fails', async () => {
    const root = await tempDir('smart-tag-');
    dirs.push(root);
    const { driver, failing } = flaky(root);
    const store = new DistributionStore(driver);
    failing.on = false;
    await store.tag('r', 't', DIGEST);
    failing.on = true;
    await expect(store.tag('r', 't', OTHER)).rejects.toThrow(/injected/);
    expect(await store.listTags('r')).toEqual(['t']);
    expect(await store.resolveTag('r', 't')).toBe(DIGEST);
  });
});
