/**
 * Defects the fault soak (fault-soak.test.ts) found, each pinned by the smallest case that shows it.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { fixtures } from '../harness/fixtures.js';
import { smart } from '../harness/run.js';
import { tempDir } from '../harness/tmp.js';

describe('found by the fault soak', () => {
  // A manifest read from a store or a layout whose bytes changed (a byte flipped on the way from
  // S3, or on disk) was parsed before its digest was checked: the error blamed its JSON ("invalid
  // manifest …: not JSON") instead of saying the bytes are not the manifest named.
  it('a manifest whose bytes changed is a digest mismatch, not invalid JSON: from a file: store and from an OCI layout', async () => {
    const work = await tempDir();
    const fx = fixtures();
    const manifest = fx.basic.manifest.digest;
    const store = path.join(work, 'store');
    const pushed = await smart(['push', `oci:${fx.paths.ociBasic}:latest`, `file:${store}#demo/app:1`]);
    expect(pushed.code, pushed.stderr).toBe(0);
    const layout = path.join(work, 'layout');
    await fs.cp(fx.paths.ociBasic, layout, { recursive: true });
    for (const [file, name] of [
      [path.join(store, 'docker/registry/v2/blobs/sha256', manifest.slice(7, 9), manifest.slice(7), 'data'), `file:${store}#demo/app:1`],
      [path.join(layout, 'blobs/sha256', manifest.slice(7)), `oci:${layout}:latest`],
    ] as const) {
      const bytes = await fs.readFile(file);
      bytes[0]! ^= 0xff; // no longer JSON
      await fs.writeFile(file, bytes);
      const r = await smart(['pull', name, `oci:${path.join(work, 'out')}:x`]);
      expect(r.code).toBe(1);
      expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(new RegExp(`^smart: error: .*manifest.* ${manifest} hashes to sha256:[0-9a-f]{64}`))]);
    }
  });
});
