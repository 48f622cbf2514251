/**
 * A layer with a file name that is not UTF-8 (latin-1 `café.txt`, as old systems and some test
 * suites have): valid tar, kept byte for byte by tar, umoci and Docker. A JavaScript string cannot
 * hold those bytes, so a tree written by name would get other names (U+FFFD), two of them possibly
 * one. smart refuses to lay such a layer into a tree or keep it in the layer store, in one line
 * naming the entry, and writes nothing there; `oci:` keeps the layer as it is, and umoci unpacks
 * it with the name intact.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { beforeAll, describe, expect, it } from 'vitest';
import { LayerStore } from '../../src/cache/layer-store.js';
import { isSmartError } from '../../src/errors.js';
import { sha256Digest } from '../../src/oci/digest.js';
import { BLOCK, checksum } from '../../src/tar/header.js';
import { layerTar, writeImageOfTars } from '../harness/images.js';
import { runOk, smart } from '../harness/run.js';
import { haveTools, inCI, isRoot } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';

/** `layerTar`, with the byte `X` of each entry name that has one turned into `byte` (checksums made again). */
async function layerWithByte(files: Record<string, string>, byte: number): Promise<Buffer> {
  const tar = await layerTar(files);
  for (let off = 0; off + BLOCK <= tar.length; off += BLOCK) {
    const block = tar.subarray(off, off + BLOCK);
    const name = block.subarray(0, 100);
    const at = name.indexOf('X');
    // A header block: its checksum field holds the checksum of its bytes.
    if (at < 0 || parseInt(block.toString('latin1', 148, 155), 8) !== checksum(block)) continue;
    block[at] = byte;
    block.write(`${checksum(block).toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  }
  return tar;
}

describe('a file name that is not UTF-8', () => {
  let work: string;
  let image: string;
  let layer: Buffer;

  beforeAll(async () => {
    work = await tempDir('smart-names-');
    layer = await layerWithByte({ 'cafX.txt': 'latin-1 name\n', 'ok.txt': 'ok\n' }, 0xe9);
    image = path.join(work, 'image');
    const { layers } = await writeImageOfTars(image, [layer]);
    expect(layers).toHaveLength(1);
  });

  it('rootfs: and bundle: refuse it in one line naming the entry, and write no tree', async () => {
    for (const kind of ['rootfs', 'bundle']) {
      const dest = path.join(work, kind);
      const r = await smart(['pull', `oci:${image}`, `${kind}:${dest}`], { cacheHome: path.join(work, `cache-${kind}`) });
      expect(r.code, r.stderr).toBe(1);
      const lines = r.stderr.split('\n').filter((l) => l.startsWith('smart: '));
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(/^smart: error \[UNSUPPORTED\]: layer sha256:[0-9a-f]{12} of oci:.*: entry "caf\uFFFD\.txt": its name is not UTF-8 \(shown with U\+FFFD\), and smart writes root filesystems with UTF-8 names only \(pull to oci: or docker-archive:, which keep the layer byte for byte, and unpack it with umoci or tar\)$/);
      expect(r.stderr).not.toMatch(/\n\s+at /);
      await expect(fs.lstat(dest)).rejects.toMatchObject({ code: 'ENOENT' });
    }
  });

  it('the layer store does not keep it under another name', async () => {
    const store = new LayerStore(path.join(work, 'store'));
    const diffId = sha256Digest(layer);
    const e = await store.ensure(diffId, async () => Readable.from([layer])).catch((x: unknown) => x);
    expect(isSmartError(e) && e.code).toBe('UNSUPPORTED');
    expect(await store.has(diffId)).toBe(false);
  });

  it('oci: keeps the layer byte for byte, and umoci unpacks it with the name intact', async (ctx) => {
    if (!haveTools('umoci') || !isRoot) {
      if (inCI) throw new Error('CI=true but umoci (run as root) is missing');
      return ctx.skip();
    }
    const copy = path.join(work, 'copy');
    const r = await smart(['pull', `oci:${image}`, `oci:${copy}:latest`], { cacheHome: path.join(work, 'cache-oci') });
    expect(r.code, r.stderr).toBe(0);
    const bundle = path.join(work, 'umoci');
    await runOk('umoci', ['unpack', '--image', `${copy}:latest`, bundle]);
    const names = (await fs.readdir(path.join(bundle, 'rootfs'), { encoding: 'buffer' })).map((n) => n.toString('latin1')).sort();
    expect(names).toEqual(['caf\xe9.txt', 'ok.txt']);
  });
});
