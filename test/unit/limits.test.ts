/**
 * Resource bounds (src/limits.ts): each refused early with LIMIT_EXCEEDED naming the input, before
 * the input costs its size in memory or disk. The bombs are made here, small, with small bounds.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { pack } from 'tar-stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SmartError } from '../../src/errors.js';
import { FLOOR_ENV, MAX_JSON_DEPTH, RATIO_ENV, decompressionBound, jsonDepth, maxDecompressedBytes } from '../../src/limits.js';
import { parseImageConfig } from '../../src/oci/config.js';
import { MAX_MANIFEST_BYTES, parseManifest } from '../../src/oci/manifest.js';
import { decompress } from '../../src/pipeline/compression.js';
import { chooseGunzip } from '../../src/pipeline/parallel-gzip.js';
import { nativeBinding } from '../../src/pipeline/native.js';
import { FsDriver } from '../../src/storage/fs-driver.js';
import { TarIndex } from '../../src/tar/tar-index.js';
import { MAX_ARCHIVE_MANIFEST_BYTES, parseArchiveManifest } from '../../src/transports/docker-archive/manifest-json.js';
import { readDockerArchiveStream } from '../../src/transports/docker-archive/stream.js';
import { haveTools } from '../harness/tools.js';

const MiB = 1024 * 1024;

async function codeOf(p: Promise<unknown> | (() => unknown)): Promise<string | undefined> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    expect(e).toBeInstanceOf(SmartError);
    return (e as SmartError).code;
  }
  return undefined;
}

async function tarOf(entries: { name: string; body: Buffer | string }[]): Promise<Buffer> {
  const p = pack();
  const out: Buffer[] = [];
  p.on('data', (c) => out.push(c as Buffer));
  const ended = new Promise<void>((resolve) => p.on('end', () => resolve()));
  for (const e of entries) p.entry({ name: e.name }, e.body);
  p.finalize();
  await ended;
  return Buffer.concat(out);
}

let tmp: string;
beforeEach(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'smartlayer-limits-'));
});
afterEach(async () => {
  await rm(tmp, { recursive: true, force: true });
  delete process.env[RATIO_ENV];
  delete process.env[FLOOR_ENV];
});

describe('JSON depth and size', () => {
  it('counts nesting without parsing, brackets in strings aside', () => {
    expect(jsonDepth(Buffer.from('{"a":[1,{"b":[]}]}'))).toBe(4);
    expect(jsonDepth(Buffer.from('{"a":"[[[[\\"{{{{"}'))).toBe(1);
    expect(jsonDepth(Buffer.from('"x"'))).toBe(0);
    // stops counting past the bound: linear whatever the input
    expect(jsonDepth(Buffer.from('['.repeat(1_000_000)), 10)).toBe(11);
  });

  it('refuses deep and oversized manifests, configs and manifest.json as LIMIT_EXCEEDED', async () => {
    const deep = (n: number) => Buffer.from(`{"schemaVersion":2,"x":${'['.repeat(n)}${']'.repeat(n)}}`);
    expect(await codeOf(() => parseManifest(deep(MAX_JSON_DEPTH + 5)))).toBe('LIMIT_EXCEEDED');
    expect(await codeOf(() => parseManifest(deep(MAX_JSON_DEPTH - 5)))).toBe('MANIFEST_INVALID'); // parsed: neither manifest nor index
    expect(await codeOf(() => parseManifest(Buffer.alloc(MAX_MANIFEST_BYTES + 1, 0x20)))).toBe('LIMIT_EXCEEDED');
    const config = (extra: string) =>
      Buffer.from(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"x":${extra}}`);
    expect(parseImageConfig(config('[[1]]')).os).toBe('linux');
    expect(await codeOf(() => parseImageConfig(config('['.repeat(100_000) + ']'.repeat(100_000))))).toBe('LIMIT_EXCEEDED');
    const e = await codeOf(() => parseArchiveManifest(Buffer.alloc(MAX_ARCHIVE_MANIFEST_BYTES + 1, 0x20), 'docker-archive:x.tar'));
    expect(e).toBe('LIMIT_EXCEEDED');
    expect(await codeOf(() => parseArchiveManifest(Buffer.from('['.repeat(200)), 'docker-archive:x.tar'))).toBe('LIMIT_EXCEEDED');
  });

  it('refuses a large object before reading it (FsDriver.getContent)', async () => {
    await writeFile(path.join(tmp, 'index.json'), Buffer.alloc(2 * MiB, 0x20));
    const d = new FsDriver(tmp);
    const err = await d.getContent('/index.json', MiB).catch((e: unknown) => e as SmartError);
    expect(err).toMatchObject({ code: 'LIMIT_EXCEEDED' });
    expect((err as SmartError).message).toMatch(/index\.json is 2097152 bytes, more than the 1048576 allowed/);
    expect((await d.getContent('/index.json', 2 * MiB)).length).toBe(2 * MiB);
  });
});

describe('archives', () => {
  it('refuses an archive of more members than the index holds', async () => {
    const file = path.join(tmp, 'many.tar');
    await writeFile(file, await tarOf(Array.from({ length: 50 }, (_, i) => ({ name: `m${i}`, body: '' }))));
    expect((await TarIndex.open(file, 'many.tar', 50)).members.size).toBe(50);
    expect(await codeOf(TarIndex.open(file, 'many.tar', 49))).toBe('LIMIT_EXCEEDED');
  });

  it('refuses a streamed manifest.json past its bound without reading it', async () => {
    const big = Buffer.alloc(MAX_ARCHIVE_MANIFEST_BYTES + 1, 0x20);
    big[0] = 0x5b; // "[": classified as JSON
    const input = new PassThrough();
    input.end(await tarOf([{ name: 'manifest.json', body: big }]));
    const err = await readDockerArchiveStream(input, { kind: 'only' }, 'docker-archive:-', async () => undefined).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'LIMIT_EXCEEDED' });
    expect((err as SmartError).message).toMatch(/^docker-archive:-: manifest\.json is \d+ bytes, more than/);
  });
});

describe('decompression bombs', () => {
  it('bounds a layer to a ratio of its compressed size, with a floor, from the environment', () => {
    expect(decompressionBound({})).toEqual({ ratio: 100, floor: 256 * MiB });
    expect(maxDecompressedBytes(10 * MiB, { ratio: 100, floor: 256 * MiB })).toBe(1000 * MiB);
    expect(maxDecompressedBytes(1000, { ratio: 100, floor: 256 * MiB })).toBe(256 * MiB);
    expect(maxDecompressedBytes(1000, { ratio: 0, floor: 0 })).toBe(Infinity);
    expect(decompressionBound({ [RATIO_ENV]: '7', [FLOOR_ENV]: '1024' })).toEqual({ ratio: 7, floor: 1024 });
    expect(() => decompressionBound({ [RATIO_ENV]: 'lots' })).toThrow(/SMART_MAX_DECOMPRESSION_RATIO must be a non-negative number/);
  });

  for (const engine of ['zlib', 'igzip', 'isal'] as const) {
    it(`stops a gzip bomb at the bound and destroys its source (${engine})`, async (ctx) => {
      if (engine === 'igzip' && !haveTools('igzip')) return ctx.skip();
      if (engine === 'isal' && !nativeBinding()?.gunzipCreate) return ctx.skip();
      const gunzip = await chooseGunzip(engine);
      const bomb = gzipSync(Buffer.alloc(16 * MiB), { level: 9 }); // ~16 KiB
      process.env[RATIO_ENV] = '10';
      process.env[FLOOR_ENV] = String(MiB);
      const source = Readable.from([bomb]);
      let out = 0;
      const err = await (async () => {
        for await (const c of decompress(source, 'gzip', 'layer sha256:b0b', { compressedSize: bomb.length, gunzip })) out += (c as Buffer).length;
      })().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(SmartError);
      expect((err as SmartError).code).toBe('LIMIT_EXCEEDED');
      expect((err as SmartError).message).toMatch(/^layer sha256:b0b: decompresses to more than 1048576 bytes from \d+ \(over 10x\): refused as a decompression bomb/);
      expect((err as SmartError).hint).toMatch(/SMART_MAX_DECOMPRESSION_RATIO/);
      expect(out).toBeLessThanOrEqual(MiB);
      await new Promise((r) => setImmediate(r));
      expect(source.destroyed).toBe(true);
      // Without a declared size, or with the bound off, the same stream decompresses whole.
      process.env[RATIO_ENV] = '0';
      let whole = 0;
      for await (const c of decompress(Readable.from([bomb]), 'gzip', 'layer', { compressedSize: bomb.length, gunzip })) whole += (c as Buffer).length;
      expect(whole).toBe(16 * MiB);
    });
  }
});
