/**
 * Sparse files as GNU tar writes them (`--sparse`, in all four of its layouts): the applier's tar
 * reader gives each as the regular file it is, with its real name, size and content, however the
 * tar's bytes are cut; the file writer keeps its holes; and a map that does not add up is refused
 * as the tar's damage, never read into the next entry's bytes.
 */
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { openSync, closeSync, writeSync, ftruncateSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BLOCK, checksum } from '../../src/tar/header.js';
import { tarParseError } from '../../src/tar/errors.js';
import { copySparseFileSync, isHole, sparseSegments, writeFileChunks } from '../../src/tar/sparse.js';
import { TAR_MESSAGES, TarStreamReader } from '../../src/tar/stream-reader.js';
import { TarIndex } from '../../src/tar/tar-index.js';
import { pieces, readWithStreamReader, tarOf } from '../harness/tar-read.js';
import { fuzzParams } from '../harness/fuzz.js';
import { tempDir } from '../harness/tmp.js';

const MiB = 1024 * 1024;

/** Files of the tree: name → [offset, bytes][] written, and the size. */
const FILES: Record<string, { data: [number, string][]; size: number }> = {
  allhole: { data: [], size: 2 * MiB },
  lastlog: { data: [[MiB, 'end']], size: 3 * MiB },
  many: { data: Array.from({ length: 30 }, (_, i) => [i * 70_000, String.fromCharCode(65 + (i % 26)).repeat(900 + i)] as [number, string]), size: 30 * 70_000 + 4096 },
  mixed: { data: [[0, 'A'.repeat(5000)], [MiB, 'B'.repeat(7000)]], size: MiB + 7000 },
  small: { data: [[50_000, 'small']], size: 100_000 },
};

const FORMATS = [
  { name: 'pax 0.0', args: ['--format=posix', '--sparse-version=0.0'] },
  { name: 'pax 0.1', args: ['--format=posix', '--sparse-version=0.1'] },
  { name: 'pax 1.0', args: ['--format=posix', '--sparse-version=1.0'] },
  { name: 'old GNU', args: ['--format=gnu'] },
];

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('sparse files in tars', () => {
  let work: string;
  let tree: string;
  const tars = new Map<string, Buffer>();
  const expected = new Map<string, string>();

  beforeAll(async () => {
    work = await tempDir('smart-sparse-');
    tree = path.join(work, 'tree');
    mkdirSync(tree);
    for (const [name, { data, size }] of Object.entries(FILES)) {
      const fd = openSync(path.join(tree, name), 'w');
      for (const [at, text] of data) writeSync(fd, Buffer.from(text), 0, text.length, at);
      ftruncateSync(fd, size);
      closeSync(fd);
      expected.set(`./${name}`, sha(readFileSync(path.join(tree, name))));
    }
    for (const f of FORMATS) {
      const out = path.join(work, `${f.name.replace(/ /g, '-')}.tar`);
      execFileSync('tar', [...f.args, '--sparse', '--sort=name', '--mtime=@1700000000', '--owner=0', '--group=0', '--numeric-owner', '-C', tree, '-cf', out, '.']);
      tars.set(f.name, readFileSync(out));
    }
  });

  afterAll(async () => {
    await fs.rm(work, { recursive: true, force: true });
  });

  for (const f of FORMATS) {
    it(`${f.name}: each file has its real name, size and content, however the bytes arrive`, async () => {
      const bytes = tars.get(f.name)!;
      // GNU tar did write this layout: a plain reading would give other names or content.
      expect(bytes.includes(Buffer.from(f.name === 'old GNU' ? 'ustar  ' : 'GNU.sparse'))).toBe(true);
      for (const sizes of [[bytes.length], [1], [7, 512, 1500], [511, 513], [65536]]) {
        for (const how of ['pieces', 'whole', 'skip'] as const) {
          const read = await readWithStreamReader(pieces(bytes, sizes), how);
          expect('entries' in read, `${how}, pieces of ${sizes.join(',')}: ${JSON.stringify(read).slice(0, 200)}`).toBe(true);
          const entries = (read as { entries: Record<string, unknown>[] }).entries;
          expect(entries.map((e) => e.name)).toEqual(['./', ...Object.keys(FILES).map((n) => `./${n}`)]);
          for (const [i, e] of entries.slice(1).entries()) {
            const name = e.name as string;
            expect(e.type).toBe('file');
            expect(e.size).toBe(FILES[name.slice(2)]!.size);
            if (how === 'skip' && i % 2 === 0) continue; // entries 1, 3, 5 of the tar are skipped
            expect(e.content, `${name} (${how}, pieces of ${sizes.join(',')})`).toBe(expected.get(name));
          }
        }
      }
    });

    it(`${f.name}: written through the reader, the file keeps its holes; copied by its map, so does the copy`, async () => {
      const reader = new TarStreamReader(Readable.from(pieces(tars.get(f.name)!, [4096])));
      const dir = path.join(work, `out-${f.name.replace(/ /g, '-')}`);
      mkdirSync(dir);
      for (let h = await reader.next(); h !== null; h = await reader.next()) {
        if (h.type !== 'file') continue;
        const out = path.join(dir, path.basename(h.name));
        const fh = await fs.open(out, 'wx');
        let holes = 0;
        const counted = async function* (chunks: AsyncIterable<Buffer>) {
          for await (const c of chunks) {
            if (isHole(c)) holes += c.length;
            yield c;
          }
        };
        expect(await writeFileChunks(fh, counted(reader.contentChunks()))).toBe(h.size);
        await fh.close();
        const { data, size } = FILES[path.basename(h.name)]!;
        expect(sha(readFileSync(out))).toBe(expected.get(h.name));
        expect(statSync(out).size).toBe(size);
        // At least the MiB holes were never written (GNU tar stores the data a block at a time).
        const written = data.reduce((n, [, t]) => n + Math.ceil(t.length / 4096) * 4096, 0);
        expect(holes).toBeGreaterThanOrEqual(size - written - 8192 * (data.length + 1));
        if (size - written >= MiB) expect(statSync(out).blocks * 512).toBeLessThan(size / 2);
        const copy = `${out}.copy`;
        expect(copySparseFileSync(out, copy, sparseSegments(h)!, h.size!)).toBe(true);
        expect(sha(readFileSync(copy))).toBe(expected.get(h.name));
        if (size - written >= MiB) expect(statSync(copy).blocks * 512).toBeLessThan(size / 2);
      }
    });
  }

  for (const f of FORMATS) {
    it(`${f.name}: an archive file's sparse members are read at random as the files they are (oci-archive, docker-archive)`, async () => {
      const file = path.join(work, `${f.name.replace(/ /g, '-')}.tar`);
      const index = await TarIndex.open(file);
      for (const [name, { size }] of Object.entries(FILES)) {
        const member = index.get(name)!;
        expect(member, name).toBeDefined();
        expect(member.size).toBe(size);
        // Not one byte range of the archive: readers that read ranges themselves take the stream.
        expect(index.rangeOf(member)).toBeUndefined();
        expect(sha(await index.read(member)), name).toBe(expected.get(`./${name}`));
        const whole: Buffer[] = [];
        for await (const c of index.open(member)) whole.push(Buffer.from(c as Buffer));
        expect(sha(Buffer.concat(whole)), name).toBe(expected.get(`./${name}`));
        // From an offset (a resumed read), and only the head (as the archive readers sniff a member).
        const start = Math.floor(size / 3);
        const rest: Buffer[] = [];
        for await (const c of index.open(member, start)) rest.push(Buffer.from(c as Buffer));
        expect(Buffer.concat(rest).equals(readFileSync(path.join(tree, name)).subarray(start)), name).toBe(true);
        expect((await index.read({ ...member, size: 8 })).equals(readFileSync(path.join(tree, name)).subarray(0, 8))).toBe(true);
      }
    });
  }

  it('an archive file whose sparse map does not add up is CORRUPT_ARCHIVE, naming the member', async () => {
    const file = path.join(work, 'bad-map.tar');
    await fs.writeFile(file, await tarOf([{ name: 'x', body: 'abc', pax: { 'GNU.sparse.name': 'blobs/sha256/x', 'GNU.sparse.map': '0,2', 'GNU.sparse.size': '10' } }]));
    await expect(TarIndex.open(file, 'oci-archive:bad-map.tar')).rejects.toMatchObject({
      code: 'CORRUPT_ARCHIVE',
      message: 'oci-archive:bad-map.tar: member "blobs/sha256/x" has an invalid sparse file map (GNU tar --sparse)',
    });
  });

  it('a map that does not add up, overlaps, or reaches past the size is the tar damage, named so', async () => {
    const entry = (pax: Record<string, string>, body = 'abc') => tarOf([{ name: 'x', body, pax: { 'GNU.sparse.name': 'real', ...pax } }, { name: 'next', body: 'next' }]);
    const bad: Record<string, string>[] = [
      { 'GNU.sparse.map': '0,2', 'GNU.sparse.size': '10' }, // 2 bytes mapped, 3 stored
      { 'GNU.sparse.map': '0,2,1,1', 'GNU.sparse.size': '10' }, // overlapping
      { 'GNU.sparse.map': '8,3', 'GNU.sparse.size': '10' }, // past the size
      { 'GNU.sparse.map': '0,x,1,2', 'GNU.sparse.size': '10' }, // not a number
      { 'GNU.sparse.map': '0,3' }, // no size
      { 'GNU.sparse.map': '0,3', 'GNU.sparse.size': '10', 'GNU.sparse.major': '2', 'GNU.sparse.minor': '0' }, // unknown version
      { 'GNU.sparse.map': '0,3', 'GNU.sparse.size': String(2 ** 44 + 1) }, // past 16 TiB
    ];
    for (const pax of bad) {
      const read = await readWithStreamReader([await entry(pax)]);
      expect(read, JSON.stringify(pax)).toEqual({ error: TAR_MESSAGES.sparse });
    }
    // 1.0: a map in the data that is not numbers, or claims more than is stored.
    for (const body of ['x\nabc', `1\n0\n600\n${'\0'.repeat(506)}abc`]) {
      const read = await readWithStreamReader([await entry({ 'GNU.sparse.major': '1', 'GNU.sparse.minor': '0', 'GNU.sparse.realsize': '10' }, body)]);
      expect(read).toEqual({ error: TAR_MESSAGES.sparse });
    }
    const e = tarParseError(new Error(TAR_MESSAGES.sparse), { what: 'layer sha256:abc', after: 'etc/' });
    expect(e.code).toBe('CORRUPT_ARCHIVE');
    expect(e.message).toBe('layer sha256:abc: corrupt tar: invalid sparse file map (GNU tar --sparse) in the entry after "etc/"');
  });

  it('mutated sparse tars (maps, sizes, extension blocks): entries or a tar error, never another exception or a hang', async () => {
    const names = FORMATS.map((f) => f.name);
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...names),
        fc.array(fc.record({ at: fc.nat(16 * BLOCK - 1), to: fc.integer({ min: 0, max: 255 }), fix: fc.boolean() }), { minLength: 1, maxLength: 4 }),
        fc.array(fc.integer({ min: 1, max: 1500 }), { minLength: 1, maxLength: 3 }),
        async (name, flips, sizes) => {
          const bytes = Buffer.from(tars.get(name)!);
          for (const { at, to, fix } of flips) {
            bytes[at] = to;
            // A header flip with its checksum made right again reaches the map, not the checksum test.
            const block = bytes.subarray(at - (at % BLOCK), at - (at % BLOCK) + BLOCK);
            if (fix && block.subarray(257, 262).toString('latin1') === 'ustar') block.write(`${checksum(block).toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
          }
          const reader = new TarStreamReader(Readable.from(pieces(bytes, sizes)));
          try {
            for (let h = await reader.next(); h !== null; h = await reader.next()) {
              // Content read (holes counted, not held) up to 64 MiB: a flipped size may claim terabytes.
              if ((h.size ?? 0) > 64 * MiB) continue;
              let n = 0;
              for await (const c of reader.contentChunks()) n += c.length;
              if (h.type === 'file') expect(n).toBe(h.size);
            }
          } catch (e) {
            expect(Object.values(TAR_MESSAGES)).toContain((e as Error).message);
          }
        },
      ),
      fuzzParams(200),
    );
  });

  it('a map that adds up gives the content with zeros in the holes, and the next entry after it', async () => {
    const bytes = await tarOf([
      { name: 'x', body: 'abc', pax: { 'GNU.sparse.name': 'real', 'GNU.sparse.map': '2,3,8,0', 'GNU.sparse.size': '10' } },
      { name: 'y', body: `2\n1\n1\n4\n2\n${'\0'.repeat(502)}abc`, pax: { 'GNU.sparse.name': 'one', 'GNU.sparse.major': '1', 'GNU.sparse.minor': '0', 'GNU.sparse.realsize': '6' } },
      { name: 'next', body: 'next' },
    ]);
    for (const how of ['pieces', 'whole'] as const) {
      const read = (await readWithStreamReader(pieces(bytes, [100]), how)) as { entries: Record<string, unknown>[] };
      expect(read.entries.map((e) => [e.name, e.size, e.content])).toEqual([
        ['real', 10, sha(Buffer.from('\0\0abc\0\0\0\0\0'))],
        ['one', 6, sha(Buffer.from('\0a\0\0bc'))],
        ['next', 4, sha(Buffer.from('next'))],
      ]);
    }
  });
});
