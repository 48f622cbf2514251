/**
 * Foreign (non-distributable) layers stay where their URLs point; one that names no URL cannot be
 * fetched from anywhere, and a push that tagged it would leave a manifest whose blob is nowhere:
 * refused, naming the layer, whether one platform is copied or a whole index.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { writeImage } from '../harness/images.js';
import { smart } from '../harness/run.js';
import { tempDir } from '../harness/tmp.js';

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const NONDISTRIBUTABLE = 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip';

/**
 * An OCI layout whose first layer is made foreign (with `urls`, or none) and its blob taken out, as
 * a Windows base layer comes; with `index`, tagged through a one-platform index.
 */
async function foreignImage(dir: string, options: { urls?: string[]; index?: boolean }): Promise<{ foreign: string }> {
  const made = await writeImage(dir, {
    layers: [
      { files: { 'base.txt': 'the base\n' }, createdBy: 'ADD base /' },
      { files: { 'app.txt': 'the app\n' }, createdBy: 'COPY app.txt /' },
    ],
  });
  const blob = (d: string) => path.join(dir, 'blobs', 'sha256', d.slice(7));
  const manifest = JSON.parse(await fs.readFile(blob(made.manifest), 'utf8')) as { layers: { mediaType: string; digest: string; urls?: string[] }[] };
  const foreign = manifest.layers[0]!;
  foreign.mediaType = NONDISTRIBUTABLE;
  if (options.urls) foreign.urls = options.urls;
  await fs.rm(blob(foreign.digest));
  const bytes = Buffer.from(JSON.stringify(manifest));
  await fs.writeFile(blob(sha(bytes)), bytes);
  let top = { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: sha(bytes), size: bytes.length };
  if (options.index) {
    const index = Buffer.from(
      JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: [{ ...top, platform: { os: 'linux', architecture: 'amd64' } }] }),
    );
    await fs.writeFile(blob(sha(index)), index);
    top = { mediaType: 'application/vnd.oci.image.index.v1+json', digest: sha(index), size: index.length };
  }
  await fs.writeFile(path.join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ ...top, annotations: { 'org.opencontainers.image.ref.name': 'latest' } }] }));
  return { foreign: foreign.digest };
}

describe('foreign layers', () => {
  it('one without URLs is refused, naming it, and nothing is tagged; one with URLs is kept as it is', async () => {
    const work = await tempDir();
    const store = path.join(work, 'store');
    const tags = (repo: string) => fs.readdir(path.join(store, 'docker/registry/v2/repositories', repo, '_manifests/tags')).catch(() => []);
    for (const index of [false, true]) {
      const dir = path.join(work, `no-urls-${index}`);
      const { foreign } = await foreignImage(dir, { index });
      const r = await smart(['push', `oci:${dir}:latest`, `file:${store}#f/none:${index ? 'all' : 'one'}`, ...(index ? ['--all-platforms'] : ['--platform', 'linux/amd64'])]);
      expect(r.code, r.stderr).toBe(1);
      const lines = r.stderr.trim().split('\n');
      expect(lines.at(-1)).toMatch(new RegExp(`^smart: error \\[[A-Z_]+\\]: layer ${foreign} is foreign .*names no URLs`));
      expect(await tags('f/none')).toEqual([]);
    }

    const dir = path.join(work, 'with-urls');
    await foreignImage(dir, { urls: ['https://example.invalid/base.tar.gz'] });
    const r = await smart(['push', `oci:${dir}:latest`, `file:${store}#f/urls:1`, '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout.toString())).toMatchObject({ layers: { total: 2, pushed: 1, foreign: 1 } });
    expect(await tags('f/urls')).toEqual(['1']);
  });
});
