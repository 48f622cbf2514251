/**
 * The public library API, used the way a Node program uses it: a script imports `smartlayer` by
 * its package name (package.json `exports`, after `npm run build`), pushes into a real `file:`
 * store, copies into the stock registry, pulls back into a layout and a root filesystem, indexes
 * the store for the build cache, and gets a SmartError with its code for a refused copy.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixtures } from '../harness/fixtures.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { repoRoot, run } from '../harness/run.js';
import { tempDir } from '../harness/tmp.js';
import { haveTools } from '../harness/tools.js';

describe.skipIf(!haveTools('docker-registry'))('the library, imported as smartlayer', () => {
  let work: string;
  let registry: RunningRegistry;

  beforeAll(async () => {
    work = await tempDir();
    registry = await startRegistry({ configDir: work });
  });

  afterAll(async () => {
    await registry?.stop();
  });

  it('pushes and pulls through the exported verbs, against a file: store and the stock registry', async () => {
    const fx = fixtures();
    const names = {
      layout: fx.paths.ociBasic,
      multi: fx.paths.ociMulti,
      store: path.join(work, 'store'),
      registry: registry.host,
      out: path.join(work, 'out'),
      rootfs: path.join(work, 'rootfs'),
      cacheDir: path.join(work, 'cache'),
    };
    const r = await run(process.execPath, [path.join(repoRoot, 'test', 'integration', 'library', 'consumer.mjs'), JSON.stringify(names)], { cwd: work });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toBe('');
    const steps = Object.fromEntries(
      r.stdout
        .toString()
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as { step: string } & Record<string, unknown>)
        .map((s) => [s.step, s]),
    );
    const digest = fx.basic.manifest.digest;
    expect(steps['push to file:']).toMatchObject({ manifestDigest: digest, pushed: 3, events: ['pushed', 'pushed', 'pushed'] });
    expect(steps['push again']).toMatchObject({ manifestDigest: digest, pushed: 0, skipped: 3 });
    expect(steps['copy to docker://']).toMatchObject({ manifestDigest: digest });
    expect(steps['copy an index to file:']).toMatchObject({ manifestDigest: fx.multi.manifest.digest, platforms: ['linux/amd64', 'linux/arm64'] });
    expect(steps['pull to oci:']).toMatchObject({ manifestDigest: digest });
    expect(steps['pull to rootfs:']).toMatchObject({ path: names.rootfs });
    expect(steps['cache index']).toMatchObject({ tags: 2, repositories: 2 });
    expect(steps['push to rootfs:']).toMatchObject({ smartError: true, code: 'USAGE' });
    expect(steps.names).toMatchObject({ transport: 'file', transports: ['oci', 'oci-archive', 'docker-archive', 'docker', 'file', 's3', 'rootfs', 'bundle'] });
    const index = JSON.parse(await fs.readFile(path.join(names.out, 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
    expect(index.manifests.map((m) => m.digest)).toEqual([digest]);
    await fs.access(path.join(names.rootfs, 'etc'));
  });
});
