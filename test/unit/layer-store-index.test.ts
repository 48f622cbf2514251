/**
 * A kept layer's index (`layers/<diff id>/entries`, one JSON line an entry) read back in batches
 * (LayerStore.entryBatches and indexChunks, which a warm pull uses): every line whole, whatever
 * falls across the chunks it is read in (a name's multi-byte character, a line longer than a
 * chunk), the same entries as parsing each line; a line that is not an entry is the store's damage.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Header } from 'tar-stream';
import { describe, expect, it } from 'vitest';
import { LayerStore } from '../../src/cache/layer-store.js';
import { StoredLayerDamage } from '../../src/cache/stored-layer-damage.js';
import type { Digest } from '../../src/oci/digest.js';
import { tempDir } from '../harness/tmp.js';

const hex = 'c'.repeat(64);
const diffId = `sha256:${hex}` as Digest;

/** A store whose layer's index is `text`, as written. */
async function storeWithIndex(text: string): Promise<{ store: LayerStore; layer: string }> {
  const dir = path.join(await tempDir(), 'layer-store');
  const layer = path.join(dir, 'layers', hex);
  await fs.mkdir(path.join(layer, 'files'), { recursive: true });
  await fs.writeFile(path.join(layer, 'entries'), text);
  return { store: new LayerStore(dir), layer };
}

async function allEntries(store: LayerStore) {
  const batches: number[] = [];
  const entries: { header: Header; file?: string }[] = [];
  for await (const batch of store.entryBatches(diffId)) {
    batches.push(batch.length);
    entries.push(...batch);
  }
  return { batches, entries };
}

describe('LayerStore.entryBatches', () => {
  it('gives each line of an index of many chunks as parsing it alone would, names of multi-byte characters and lines longer than a chunk too', async () => {
    const lines: string[] = [];
    for (let i = 0; i < 4000; i++) {
      // Three-byte and four-byte characters throughout: some fall across a chunk's end.
      const name = `d\u20ac${i}/${'\u20ac'.repeat(i % 37)}\u{1F600}${i}`;
      const header = { name, mode: 0o644, uid: i, gid: 0, size: i, byteOffset: 512 * i, mtime: 1_600_000_000_000 + i, type: 'file', linkname: null, uname: '', gname: '', devmajor: 0, devminor: 0, pax: null };
      lines.push(JSON.stringify(i % 3 === 0 ? { ...header, type: 'directory' } : { ...header, file: String(i) }));
    }
    // A line longer than a chunk (pax records of extended attributes), then a blank line, and a last line without its newline.
    lines.push(JSON.stringify({ name: 'big', mode: 0o644, uid: 0, gid: 0, size: 1, mtime: 0, type: 'file', linkname: null, uname: '', gname: '', devmajor: 0, devminor: 0, pax: { 'SCHILY.xattr.user.big': 'x'.repeat(600_000) }, file: '4000' }));
    lines.push('');
    lines.push(JSON.stringify({ name: 'last', mode: 0o755, uid: 0, gid: 0, size: 0, mtime: 5000, type: 'directory', linkname: null, uname: '', gname: '', devmajor: 0, devminor: 0, pax: null }));
    const text = lines.join('\n');
    const { store, layer } = await storeWithIndex(text);
    const { batches, entries } = await allEntries(store);
    expect(batches.length).toBeGreaterThan(2);
    const expected = lines.filter((l) => l).map((line) => {
      const { file, ...header } = JSON.parse(line) as Header & { file?: string; mtime: number };
      return { header: { ...header, mtime: new Date(header.mtime) }, ...(file ? { file: path.join(layer, 'files', file) } : {}) };
    });
    expect(entries.length).toBe(expected.length);
    for (let i = 0; i < expected.length; i++) expect(entries[i], `entry ${i}`).toEqual(expected[i]);
    // entries() gives the same, one at a time.
    let i = 0;
    for await (const e of store.entries(diffId)) expect(e, `entry ${i}`).toEqual(expected[i++]);
    expect(i).toBe(expected.length);
    // indexChunks (a warm pull's runs read the lines as bytes): whole lines, each chunk ending in a
    // newline, the index's bytes in order, the last line given its newline.
    const chunks: Buffer[] = [];
    for await (const chunk of store.indexChunks(diffId)) {
      expect(chunk.text.at(-1)).toBe(10);
      expect(chunk.files).toBe(path.join(layer, 'files') + path.sep);
      chunks.push(chunk.text);
    }
    expect(chunks.length).toBeGreaterThan(2);
    expect(Buffer.concat(chunks).equals(Buffer.from(`${text}\n`))).toBe(true);
  });

  it('says a line that is not an entry, and an index that cannot be read, are the store damage', async () => {
    const good = JSON.stringify({ name: 'a', mode: 0o644, uid: 0, gid: 0, size: 0, mtime: 0, type: 'file', linkname: null, uname: '', gname: '', devmajor: 0, devminor: 0, pax: null, file: '0' });
    for (const bad of ['{"name":"cut', 'null', '7', '{"mode":1}']) {
      const { store } = await storeWithIndex(`${good}\n${bad}\n`);
      await expect(allEntries(store), bad).rejects.toBeInstanceOf(StoredLayerDamage);
    }
    const { store, layer } = await storeWithIndex('');
    await fs.rm(path.join(layer, 'entries'));
    const gone = await allEntries(store).catch((e: unknown) => e);
    expect(gone).toBeInstanceOf(StoredLayerDamage);
    expect((gone as Error).message).toMatch(/its index .*entries cannot be read: ENOENT/);
  });
});
