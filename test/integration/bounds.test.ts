/**
 * Resource bounds through the CLI, on inputs made here: a gzip bomb (a layer of zeros, small
 * bounds set in the environment), an oversized manifest.json, an index.json nested too deep.
 * Each is refused with one line naming it and the bound, and nothing is left at the destination.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { pack } from 'tar-stream';
import { beforeAll, describe, expect, it } from 'vitest';
import { layerTar, writeLayout } from '../harness/images.js';
import { smart, type RunResult } from '../harness/run.js';
import { tempDir } from '../harness/tmp.js';
import { listAll } from '../harness/tree.js';

const MiB = 1024 * 1024;
const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
/** A bound small enough for a quick test: 10 times the compressed size, at least 1 MiB. */
const SMALL_BOUND = { SMART_MAX_DECOMPRESSION_RATIO: '10', SMART_MIN_DECOMPRESSION_BYTES: String(MiB) };

async function tarOf(members: [string, Buffer][]): Promise<Buffer> {
  const p = pack();
  const chunks: Buffer[] = [];
  p.on('data', (c) => chunks.push(c as Buffer));
  const done = new Promise<void>((resolve) => p.on('end', () => resolve()));
  for (const [name, body] of members) p.entry({ name }, body);
  p.finalize();
  await done;
  return Buffer.concat(chunks);
}

function expectLimitLine(r: RunResult, pattern: RegExp): void {
  expect(r.code, r.stderr).toBe(1);
  const lines = r.stderr.trim().split('\n');
  expect(lines.filter((l) => l.startsWith('smart: error [LIMIT_EXCEEDED]: '))).toHaveLength(1);
  expect(lines.at(-1)).toMatch(/^smart: error \[LIMIT_EXCEEDED\]: /);
  expect(lines.at(-1)).toMatch(pattern);
  expect(r.stderr).not.toMatch(/\n\s+at /);
}

describe('resource bounds', () => {
  let work: string;
  let bombLayout: string;
  let bombTar: Buffer;
  let bombGz: Buffer;

  beforeAll(async () => {
    work = await tempDir();
    // 24 MiB of zeros in one file: about 24 KiB gzipped, a thousand times smaller.
    bombTar = await layerTar({ 'zeros.bin': '\0'.repeat(24 * MiB) });
    bombGz = gzipSync(bombTar, { level: 9 });
    const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [sha(bombTar)] } }));
    bombLayout = path.join(work, 'bomb');
    await writeLayout(bombLayout, [bombGz], config);
  });

  it('stops a gzip bomb pulled into a root filesystem, and leaves nothing', async () => {
    const cacheHome = await tempDir();
    const parent = path.join(work, 'rootfs-parent');
    await fs.mkdir(parent);
    const r = await smart(['pull', `oci:${bombLayout}:latest`, `rootfs:${path.join(parent, 'root')}`], { cacheHome, env: SMALL_BOUND });
    expectLimitLine(r, /decompresses to more than 1048576 bytes from \d+ \(over 10x\): refused as a decompression bomb \(if the layer is genuine, raise SMART_MAX_DECOMPRESSION_RATIO/);
    expect(await fs.readdir(parent)).toEqual([]);
    // The store's own directories may stay; nothing of the layer does.
    expect((await listAll(path.join(cacheHome, 'smartlayer', 'layer-store'))).filter((p) => !['locks', 'tmp', 'images'].includes(p))).toEqual([]);
    // With the default bound (256 MiB at least) the same genuine-but-sparse layer is fine.
    const ok = await smart(['pull', `oci:${bombLayout}:latest`, `rootfs:${path.join(parent, 'root')}`], { cacheHome });
    expect(ok.code, ok.stderr).toBe(0);
    expect((await fs.stat(path.join(parent, 'root', 'zeros.bin'))).size).toBe(24 * MiB);
  });

  it.each([
    ['SMART_MAX_DECOMPRESSION_RATIO', 'abc'],
    ['SMART_MAX_DECOMPRESSION_RATIO', '-1'],
    ['SMART_MIN_DECOMPRESSION_BYTES', '-1'],
  ])('refuses %s=%s before any work, also where no layer is decompressed', async (variable, ratio) => {
    const store = path.join(work, `${variable}-store${ratio}`);
    const seed = await smart(['push', `oci:${bombLayout}:latest`, `file:${store}#bomb/app:1`]);
    expect(seed.code, seed.stderr).toBe(0);
    const out = path.join(work, `${variable}-out${ratio}`);
    for (const args of [
      ['push', `oci:${bombLayout}:latest`, `file:${store}#bomb/app:2`],
      ['pull', `file:${store}#bomb/app:1`, `oci:${out}:x`],
      ['cache', 'index', `file:${store}`],
      ['store', 'check', `file:${store}`],
    ]) {
      const r = await smart(args, { env: { [variable]: ratio } });
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(2);
      expect(r.stderr).toBe(`smart: error [USAGE]: ${variable} must be a non-negative number, not "${ratio}"\n`);
    }
    await expect(fs.stat(out)).rejects.toThrow(/ENOENT/);
    await expect(fs.stat(path.join(store, 'docker/registry/v2/repositories/bomb/app/_manifests/tags/2'))).rejects.toThrow(/ENOENT/);
  });

  it('stops a gzip bomb written to a docker-archive, and leaves no file', async () => {
    const out = path.join(work, 'out.tar');
    const r = await smart(['pull', `oci:${bombLayout}:latest`, `docker-archive:${out}`], { env: SMALL_BOUND });
    expectLimitLine(r, /decompression bomb/);
    expect((await fs.readdir(work)).filter((n) => n.includes('out.tar'))).toEqual([]);
  });

  it('stops a gzip-compressed layer of a streamed docker-archive, and tags nothing', async () => {
    const store = path.join(work, 'store');
    const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [sha(bombTar)] } }));
    const manifest = Buffer.from(JSON.stringify([{ Config: 'config.json', RepoTags: ['bomb:1'], Layers: ['layer.tar.gz'] }]));
    const archive = await tarOf([['layer.tar.gz', bombGz], ['config.json', config], ['manifest.json', manifest]]);
    const r = await smart(['push', 'docker-archive:-', `file:${store}#demo/bomb:1`], { input: archive, env: SMALL_BOUND });
    expectLimitLine(r, /layer layer\.tar\.gz of docker-archive:-: decompresses to more than 1048576 bytes/);
    expect(await fs.readdir(path.join(store, 'docker/registry/v2/repositories/demo/bomb/_manifests/tags')).catch(() => [])).toEqual([]);
  });

  it('refuses an oversized manifest.json before reading it', async () => {
    const file = path.join(work, 'big-manifest.tar');
    const big = Buffer.alloc(9 * MiB, 0x20);
    big[0] = 0x5b;
    big[big.length - 1] = 0x5d;
    const archive = await tarOf([['manifest.json', big]]);
    await fs.writeFile(file, archive);
    for (const src of [`docker-archive:${file}`, 'docker-archive:-']) {
      const r = await smart(['push', src, `file:${path.join(work, 'store2')}#demo/big:1`], src.endsWith('-') ? { input: archive } : {});
      expectLimitLine(r, /manifest\.json is 9437184 bytes, more than the 8388608 allowed/);
    }
  });

  it('refuses an index.json nested too deep', async () => {
    const dir = path.join(work, 'deep');
    await fs.mkdir(dir);
    await fs.writeFile(path.join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
    await fs.writeFile(path.join(dir, 'index.json'), `{"schemaVersion":2,"manifests":[],"x":${'['.repeat(100_000)}${']'.repeat(100_000)}}`);
    const r = await smart(['pull', `oci:${dir}:latest`, `oci:${path.join(work, 'deep-out')}:x`]);
    expectLimitLine(r, /index\.json nests JSON deeper than 64 levels/);
    expect(await fs.readdir(path.join(work, 'deep-out')).catch(() => [])).toEqual([]);
  });

  it('refuses a layout manifest over 4 MiB, naming the layout as an OCI layout (not a file: store)', async () => {
    const dir = path.join(work, 'big-manifest');
    const manifest = Buffer.alloc(4 * MiB + 1, ' ');
    const hex = sha(manifest).slice(7);
    await fs.mkdir(path.join(dir, 'blobs', 'sha256'), { recursive: true });
    await fs.writeFile(path.join(dir, 'blobs', 'sha256', hex), manifest);
    await fs.writeFile(path.join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
    const descriptor = { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: `sha256:${hex}`, size: manifest.length, annotations: { 'org.opencontainers.image.ref.name': 'latest' } };
    await fs.writeFile(path.join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [descriptor] }));
    const r = await smart(['pull', `oci:${dir}:latest`, `oci:${path.join(work, 'big-out')}:x`]);
    expectLimitLine(r, new RegExp(`^smart: error \\[LIMIT_EXCEEDED\\]: oci:${dir}: /blobs/sha256/${hex} is 4194305 bytes, more than the 4194304 allowed`));
  });
});
