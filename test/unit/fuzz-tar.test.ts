/**
 * Property-based tests of the tar readers, on archives mutated from real ones: ustar, pax (long
 * names, sizes, ids, times), GNU long names, base-256 sizes, every entry type. Bytes are flipped
 * (mostly in headers), numeric fields rewritten, archives cut short. Every reader gives a
 * SmartError or a correct result, never another exception or a hang: the header decoder, the
 * random-access index (docker-archive and oci-archive files), the streaming docker-archive
 * reader, and the layer applier, which never writes outside its root and whose tar reader reads
 * every mutated layer as tar-stream does.
 */
import { createHash } from 'node:crypto';
import { lstat, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LayerStore } from '../../src/cache/layer-store.js';
import { SmartError } from '../../src/errors.js';
import type { Digest } from '../../src/oci/digest.js';
import { BLOCK, checksum, decodeHeader, normalizeMemberName, parsePax } from '../../src/tar/header.js';
import { TarIndex } from '../../src/tar/tar-index.js';
import { readDockerArchiveStream } from '../../src/transports/docker-archive/stream.js';
import { readOciArchiveStream } from '../../src/transports/oci-layout/stream.js';
import { fixtures } from '../harness/fixtures.js';
import { RootfsApplier } from '../../src/transports/rootfs/apply.js';
import { fuzzParams, total, totalAsync } from '../harness/fuzz.js';
import { gnuMember, pieces, readWithStreamReader, readWithTarStream, tarOf } from '../harness/tar-read.js';
import { TAR_MESSAGES, decodeTarHeader } from '../../src/tar/stream-reader.js';
import { nativeBinding } from '../../src/pipeline/native.js';
import { inCI } from '../harness/tools.js';

/** Mutations of an archive: byte flips (headers first), numeric fields rewritten, cuts, spliced blocks. */
function mutated(seed: Buffer): fc.Arbitrary<Buffer> {
  const blocks = Math.max(1, Math.floor(seed.length / BLOCK));
  const field = fc.constantFrom([100, 8], [108, 8], [116, 8], [124, 12], [136, 12], [148, 8], [156, 1], [345, 155], [0, 100], [157, 100]);
  const junkNumber = fc.oneof(
    fc.constantFrom('77777777777\0', '\x80\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff', '\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff', 'zz', '-1', ' ', '', '0x10', '1e10', 'L', 'x', 'g', 'K', '7', '3', '4', '6', 'S', 'V', '5'),
    fc.string({ maxLength: 12 }),
  );
  const mutation = fc.oneof(
    fc.record({ kind: fc.constant('flip' as const), at: fc.nat(seed.length - 1), to: fc.integer({ min: 0, max: 255 }) }),
    fc.record({ kind: fc.constant('field' as const), block: fc.nat(blocks - 1), field, text: junkNumber, fix: fc.boolean() }),
    fc.record({ kind: fc.constant('cut' as const), at: fc.nat(seed.length) }),
    fc.record({ kind: fc.constant('splice' as const), from: fc.nat(blocks - 1), to: fc.nat(blocks - 1) }),
  );
  return fc.array(mutation, { minLength: 1, maxLength: 4 }).map((ms) => {
    let b = Buffer.from(seed);
    for (const m of ms) {
      if (m.kind === 'flip' && m.at < b.length) b[m.at] = m.to;
      else if (m.kind === 'field' && (m.block + 1) * BLOCK <= b.length) {
        const h = b.subarray(m.block * BLOCK, (m.block + 1) * BLOCK);
        const off = m.field[0];
        const len = m.field[1];
        h.fill(0, off, off + len);
        h.write(m.text, off, len, 'latin1');
        // Mostly with a right checksum, so that readers go past the header check.
        if (m.fix) h.write(`${checksum(h).toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
      } else if (m.kind === 'cut') b = b.subarray(0, m.at);
      else if (m.kind === 'splice' && (Math.max(m.from, m.to) + 1) * BLOCK <= b.length) b.copy(b, m.to * BLOCK, m.from * BLOCK, (m.from + 1) * BLOCK);
    }
    return b;
  });
}

/** `seed` with a header field rewritten (and the checksum made right again). */
function withField(seed: Buffer, block: number, offset: number, length: number, text: string): Buffer {
  const b = Buffer.from(seed);
  const h = b.subarray(block * BLOCK, (block + 1) * BLOCK);
  h.fill(0, offset, offset + length);
  h.write(text, offset, length, 'latin1');
  h.write(`${checksum(h).toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return b;
}

/**
 * Whether a block of `bytes` is an extended header (pax or GNU long name) of size 0. tar-stream
 * then goes on as if one were still pending, and takes the next member's size in bytes for it, so
 * it is no oracle for such an archive.
 */
/** A tar whose pax record `zid=7` has its key's first byte replaced by `byte`. */
async function withPaxKeyByte(byte: number): Promise<Buffer> {
  const bytes = await tarOf([{ name: 'a', body: 'x', pax: { zid: '7' } }]);
  bytes[bytes.indexOf('zid=7')] = byte;
  return bytes;
}

function hasEmptyExtendedHeader(bytes: Buffer): boolean {
  for (let off = 0; off + BLOCK <= bytes.length; off += BLOCK) {
    try {
      const h = decodeTarHeader(bytes.subarray(off, off + BLOCK));
      if (h && ['pax-header', 'pax-global-header', 'gnu-long-path', 'gnu-long-link-path'].includes(h.type as string) && !h.size) return true;
    } catch {
      // not a header
    }
  }
  return false;
}

/** True when a header block is typeflag 'S' (an old GNU sparse file, which the reader expands where tar-stream reads it as no known type). */
function hasSparseHeader(bytes: Buffer): boolean {
  for (let off = 0; off + BLOCK <= bytes.length; off += BLOCK) {
    if (bytes[off + 156] !== 0x53) continue;
    try {
      if (decodeTarHeader(bytes.subarray(off, off + BLOCK))) return true;
    } catch {
      // not a header
    }
  }
  return false;
}

/**
 * True when a header's numeric field (mode, uid, gid, size, mtime) is a negative base-256 number
 * (first byte 0xff): read as two's complement, as GNU tar and Go read it (all 0xff is -1), where
 * tar-stream reads one less in magnitude (-0); the two readers then differ by design.
 */
function hasNegativeBase256(bytes: Buffer): boolean {
  for (let off = 0; off + BLOCK <= bytes.length; off += BLOCK) {
    if (![100, 108, 116, 124, 136].some((field) => bytes[off + field] === 0xff)) continue;
    try {
      if (decodeTarHeader(bytes.subarray(off, off + BLOCK))) return true;
    } catch {
      // not a header
    }
  }
  return false;
}

let work: string;
let layerSeeds: Buffer[];
let archiveSeeds: Buffer[];
let runSeeds: Buffer[];

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'smartlayer-fuzz-tar-'));
  const long = `${'dir-with-a-long-name/'.repeat(8)}file`;
  layerSeeds = [
    await tarOf([
      { name: 'etc/', type: 'directory', mode: 0o755 },
      { name: 'etc/passwd', body: 'root:x:0:0::/root:/bin/sh\n' },
      { name: 'etc/link', type: 'symlink', linkname: '/etc/passwd' },
      { name: 'etc/hard', type: 'link', linkname: 'etc/passwd' },
      { name: 'etc/.wh.gone' },
      { name: 'tmp/.wh..wh..opq' },
      { name: long, body: 'long' },
      { name: 'big-ids', body: 'x', pax: { uid: '3000000000', gid: '7', mtime: '1600000000.5', 'SCHILY.xattr.user.a': 'b' } },
      { name: 'dev/null', type: 'character-device', mode: 0o666 },
    ]),
    Buffer.concat([gnuMember(`${'g'.repeat(150)}/name`, '0', 'gnu body', 0o14000000000), Buffer.alloc(2 * BLOCK)]),
  ];
  // Runs of small files in directories the layer makes, as GNU tar and as a pax writer lay them out
  // (the addon's extractFiles reads these itself).
  const runDir = `r/${'x'.repeat(90)}/`;
  runSeeds = [
    Buffer.concat([
      gnuMember('r/', '5'),
      ...Array.from({ length: 6 }, (_, i) => gnuMember(`r/f${i}`, '0', `file ${i}\n`.repeat(i * 30))),
      gnuMember(runDir, '5'),
      ...Array.from({ length: 4 }, (_, i) => gnuMember(`${runDir}long-${i}`, '0', `long ${i}`)),
      gnuMember('r/after', '0', 'back up'),
      Buffer.alloc(2 * BLOCK),
    ]),
    await tarOf([
      { name: 'p/', type: 'directory', mode: 0o755 },
      ...Array.from({ length: 6 }, (_, i) => ({ name: `p/f${i}`, body: `file ${i}`, pax: { mtime: `1700000000.${i}25`, atime: '1600000000', ctime: '1' } })),
      { name: `p/${'y'.repeat(120)}`, body: 'a pax path' },
      { name: 'p/g', body: 'g', mode: 0o4755 },
    ]),
  ];
  const config = JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [`sha256:${'a'.repeat(64)}`] } });
  archiveSeeds = [
    await tarOf([
      { name: 'layer.tar', body: layerSeeds[0] },
      { name: 'config.json', body: config },
      { name: 'manifest.json', body: JSON.stringify([{ Config: 'config.json', RepoTags: ['x:1'], Layers: ['layer.tar'] }]) },
      { name: 'alias.tar', type: 'symlink', linkname: 'layer.tar' },
    ]),
  ];
});

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

describe('tar headers', () => {
  it('decodeHeader, parsePax and normalizeMemberName: a header or nothing, never an exception', () => {
    const block = fc.oneof(fc.uint8Array({ minLength: BLOCK, maxLength: BLOCK }).map((a) => Buffer.from(a)), fc.constant(null));
    fc.assert(
      fc.property(block, fc.uint8Array({ maxLength: 600 }), fc.string({ maxLength: 50 }), (raw, paxData, name) => {
        const b = raw ?? layerSeeds[0]!.subarray(0, BLOCK);
        const h = total(() => decodeHeader(b));
        if (h && !(h instanceof SmartError)) expect(typeof h.name).toBe('string');
        total(() => parsePax(Buffer.from(paxData)));
        total(() => normalizeMemberName(name));
      }),
      fuzzParams(500),
    );
  });
});

describe('tar readers on mutated archives', () => {
  it('TarIndex: a SmartError, or members whose bytes lie inside the file', async () => {
    let n = 0;
    await fc.assert(
      fc.asyncProperty(fc.nat(1).chain((i) => mutated([...archiveSeeds, ...layerSeeds][i]!)), async (bytes) => {
        const file = path.join(work, `index-${n++}.tar`);
        await writeFile(file, bytes);
        const index = await totalAsync(() => TarIndex.open(file, 'docker-archive:fuzz'));
        if (!(index instanceof SmartError)) {
          for (const m of index.members.values()) {
            expect(Number.isSafeInteger(m.size) && m.size >= 0, `size of ${m.name}`).toBe(true);
            expect(m.offset + m.size).toBeLessThanOrEqual(bytes.length);
            await totalAsync(() => index.read(m));
          }
        }
        await rm(file);
      }),
      // A size field of "-1" (parseInt read it), and pax sizes the index took as they came.
      fuzzParams(200, [
        [withField(layerSeeds[0]!, 0, 124, 12, '-1')],
        [await tarOf([{ name: 'a', body: 'x', pax: { size: '99999999999' } }])],
        [await tarOf([{ name: 'a', body: 'x', pax: { size: 'abc' } }])],
      ]),
    );
  });

  it('the streaming docker-archive reader: a SmartError or the image', async () => {
    await fc.assert(
      fc.asyncProperty(mutated(archiveSeeds[0]!), async (bytes) => {
        const input = new PassThrough();
        input.end(bytes);
        await totalAsync(() =>
          readDockerArchiveStream(input, { kind: 'only' }, 'docker-archive:-', async (layer) => {
            for await (const _ of layer.stream) {
              // drained
            }
            return layer.member;
          }),
        );
      }),
      fuzzParams(300),
    );
  });

  it('the streaming OCI archive reader: a member whose size field no one can read is refused, not waited on for ever', async () => {
    const seed = await readFile(fixtures().paths.ociArchiveBasic);
    // The first member's size in base-256 garbage and its type unknown, as a mutation once made
    // them: tar-stream handed the entry on with no size and then waited for ever.
    const garbled = withField(withField(seed, 0, 124, 12, '\xcd\xffb\x10\xff\x9dp\'T\x9d\xcb\x12'), 0, 156, 1, '\xff');
    const input = new PassThrough();
    input.end(garbled);
    const e = await readOciArchiveStream(input, undefined, 'oci-archive:-', async (layer) => layer.member, { architecture: 'amd64', os: 'linux' }).then(
      () => undefined,
      (x: unknown) => x as SmartError,
    );
    expect(e).toBeInstanceOf(SmartError);
    expect(e!.code).toBe('CORRUPT_ARCHIVE');
  }, 10_000);

  it('the streaming OCI archive reader: a SmartError or the image', async () => {
    const seed = await readFile(fixtures().paths.ociArchiveBasic);
    await fc.assert(
      fc.asyncProperty(mutated(seed), async (bytes) => {
        const input = new PassThrough();
        input.end(bytes);
        await totalAsync(() =>
          readOciArchiveStream(
            input,
            undefined,
            'oci-archive:-',
            async (layer) => {
              for await (const _ of layer.stream) {
                // drained
              }
              return layer.member;
            },
            { architecture: 'amd64', os: 'linux' },
          ),
        );
      }),
      fuzzParams(300),
    );
  });

  it("the applier's tar reader: what tar-stream reads, entry for entry, or the same error", async () => {
    await fc.assert(
      fc.asyncProperty(fc.nat(layerSeeds.length - 1).chain((i) => mutated(layerSeeds[i]!)), fc.array(fc.integer({ min: 1, max: 1500 }), { minLength: 1, maxLength: 4 }), async (bytes, sizes) => {
        const ours = await readWithStreamReader(pieces(bytes, sizes));
        // Stricter than tar-stream where a size is no number (it reads no content, or waits forever).
        if ('error' in ours && ours.error === TAR_MESSAGES.size) return;
        if ('error' in ours) expect(Object.values(TAR_MESSAGES)).toContain(ours.error);
        if (!hasEmptyExtendedHeader(bytes) && !hasSparseHeader(bytes) && !hasNegativeBase256(bytes)) expect(ours).toEqual(await readWithTarStream(bytes));
      }),
      // A pax key holding a byte that is not UTF-8 (a mutation once made one: the harness compared only values as tar-stream decodes them).
      // A mode field of eight 0xff bytes: base-256 -1 (a mutation made one; see hasNegativeBase256).
      fuzzParams(300, [
        [await withPaxKeyByte(0xff), [1500]],
        [Buffer.concat([layerSeeds[0]!.subarray(0, 100), Buffer.alloc(8, 0xff), layerSeeds[0]!.subarray(108)]), [1]],
      ]),
    );
  });

  it('the layer applier on layers of hostile names and pax records: a SmartError or a tree inside the root', async () => {
    const outside = path.join(work, 'outside');
    await mkdir(outside, { recursive: true });
    await writeFile(path.join(outside, 'victim'), 'original');
    const name = fc.oneof(
      fc.constantFrom('a', 'a/b', '../a', '/abs', '', '.', '..', './', 'dir/', 'outside/victim', '../outside/victim', '.wh.a', 'a/.wh..wh..opq', '.wh..wh.plnk/x', 'x\0y', 'a'.repeat(300)),
      fc.string({ maxLength: 20 }),
    );
    const junk = fc.oneof(fc.constantFrom('', '0', '-1', '1.5', '1e400', 'NaN', '99999999999999999999', '4294967296', '3000000000', 'abc', '../../x', '/etc'), fc.string({ maxLength: 12 }));
    const entry = fc.record({
      name,
      type: fc.constantFrom('file' as const, 'directory' as const, 'symlink' as const, 'link' as const, 'fifo' as const),
      linkname: fc.oneof(name, fc.constant(path.join(outside, 'victim'))),
      body: fc.string({ maxLength: 20 }),
      pax: fc.dictionary(fc.constantFrom('path', 'linkpath', 'uid', 'gid', 'mtime', 'atime', 'uname', 'SCHILY.xattr.user.x'), junk, { maxKeys: 3 }),
    });
    let n = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(fc.array(entry, { maxLength: 6 }), { minLength: 1, maxLength: 2 }), async (layers) => {
        const root = path.join(work, `root-${n++}`);
        await mkdir(root);
        const applier = new RootfsApplier(root, { preserveOwnership: process.getuid?.() === 0 });
        await totalAsync(async () => {
          for (const [i, l] of layers.entries()) await applier.applyLayer(Readable.from([await tarOf(l.map((e) => ({ ...e, ...(Object.keys(e.pax).length ? {} : { pax: undefined }) })))]), `layer ${i}`);
          await applier.finish();
        });
        expect(await readdir(outside)).toEqual(['victim']);
        expect(await readFile(path.join(outside, 'victim'), 'utf8')).toBe('original');
        await rm(root, { recursive: true, force: true });
      }),
      fuzzParams(100),
    );
  });

  it('the layer store, then the applier from it: a SmartError or a tree inside the root', async () => {
    const outside = path.join(work, 'outside');
    await mkdir(outside, { recursive: true });
    await writeFile(path.join(outside, 'victim'), 'original');
    const store = new LayerStore(path.join(work, 'store'));
    let n = 0;
    await fc.assert(
      fc.asyncProperty(fc.nat(layerSeeds.length - 1).chain((i) => mutated(layerSeeds[i]!)), async (bytes) => {
        const diffId = `sha256:${createHash('sha256').update(bytes).digest('hex')}` as Digest;
        const root = path.join(work, `root-${n++}`);
        await mkdir(root);
        await totalAsync(async () => {
          await store.ensure(diffId, async () => Readable.from([bytes]));
          const applier = new RootfsApplier(root, { preserveOwnership: false });
          await applier.applyEntries(store.entries(diffId), 'layer 0', { link: false });
          await applier.finish();
        });
        expect(await readdir(outside)).toEqual(['victim']);
        expect(await readFile(path.join(outside, 'victim'), 'utf8')).toBe('original');
        await rm(root, { recursive: true, force: true });
      }),
      fuzzParams(100),
    );
    expect(await readdir(path.join(work, 'store', 'tmp')).catch(() => [])).toEqual([]);
  });

  it("the layer applier's runs of small files (the addon's extractFiles, and copyStoredFiles from the kept layer): the same tree (and kept layer) or the same failure as each entry in turn", async () => {
    if (!nativeBinding()?.extractFiles) {
      if (inCI) throw new Error('CI=true but the native addon (extractFiles) is not built');
      return;
    }
    /**
     * The tree under `root`: each path's type, mode, size, times and content; or the failure's
     * words. With `keep`, the layer is kept in a layer store as it is applied (a bundle's pull):
     * the store's index and copies too.
     */
    const apply = async (bytes: Buffer, root: string, runs: boolean, chunk: number, keep: boolean): Promise<string> => {
      await mkdir(root);
      const applier = new RootfsApplier(root, { preserveOwnership: process.getuid?.() === 0, batchSmallFiles: runs });
      const store = new LayerStore(`${root}-store`);
      const diffId = `sha256:${'b'.repeat(64)}` as Digest;
      const fill = keep ? await store.claim(diffId) : undefined;
      if (typeof fill === 'string') throw new Error(`claimed: ${fill}`);
      const failed = await totalAsync(async () => {
        try {
          await applier.applyLayer(Readable.from(pieces(bytes, [chunk])), 'layer 0', fill ? { keep: fill } : {});
          await applier.finish();
          await fill?.commit();
        } finally {
          await fill?.abort();
        }
      });
      if (failed instanceof SmartError) return `${failed.code}: ${failed.message.replaceAll(store.dir, 'STORE').replaceAll(root, 'ROOT').replace(/\/tmp\/[^/\s'"]+\//g, '/tmp/FILL/')}`;
      const lines: string[] = [];
      // Names as bytes: a mutated name need not be UTF-8.
      const walk = async (top: string, dir: Buffer): Promise<void> => {
        const names = (await readdir(dir, { encoding: 'buffer' })).sort(Buffer.compare);
        for (const name of names) {
          const p = Buffer.concat([dir, Buffer.from('/'), name]);
          const st = await lstat(p, { bigint: true });
          const content = st.isFile() ? createHash('sha256').update(await readFile(p)).digest('hex') : '';
          // A directory no entry gave made by the walk has the time it was made: not compared.
          const times = st.isDirectory() ? '' : `m${st.mtimeNs} a${st.isSymbolicLink() ? '' : st.atimeNs}`;
          lines.push(`${p.subarray(top.length).toString('latin1')} ${st.mode.toString(8)} ${st.uid}:${st.gid} ${st.isDirectory() ? '' : st.size} ${times} ${content}`);
          if (st.isDirectory()) await walk(top, p);
        }
      };
      await walk(root, Buffer.from(root));
      if (keep) {
        const layer = path.join(store.dir, 'layers', 'b'.repeat(64));
        lines.push(await readFile(path.join(layer, 'entries'), 'utf8'));
        await walk(layer, Buffer.from(path.join(layer, 'files')));
        // Then laid from the store (a warm pull): through the addon's runs from the index's lines (copyStoredFiles), or each entry in turn.
        const again = `${root}-again`;
        await mkdir(again);
        const fromStore = new RootfsApplier(again, { preserveOwnership: process.getuid?.() === 0, batchSmallFiles: runs });
        const failedAgain = await totalAsync(async () => {
          await fromStore.applyEntries(runs ? store.indexChunks(diffId) : store.entries(diffId), 'layer 0', { link: false });
          await fromStore.finish();
        });
        if (failedAgain instanceof Error) lines.push(`from the store: ${failedAgain.message.replaceAll(store.dir, 'STORE').replaceAll(again, 'AGAIN')}`);
        else await walk(again, Buffer.from(again));
      }
      return lines.join('\n');
    };
    let n = 0;
    await fc.assert(
      fc.asyncProperty(fc.nat(runSeeds.length - 1).chain((i) => mutated(runSeeds[i]!)), fc.constantFrom(1 << 20, 1500, 4096), fc.boolean(), async (bytes, chunk, keep) => {
        const i = n++;
        try {
          const withRuns = await apply(bytes, path.join(work, `runs-${i}`), true, chunk, keep);
          const inTurn = await apply(bytes, path.join(work, `in-turn-${i}`), false, chunk, keep);
          expect(withRuns).toBe(inTurn);
        } finally {
          for (const dir of [`runs-${i}`, `in-turn-${i}`, `runs-${i}-store`, `in-turn-${i}-store`, `runs-${i}-again`, `in-turn-${i}-again`]) await rm(path.join(work, dir), { recursive: true, force: true });
        }
      }),
      fuzzParams(150, [[runSeeds[0]!, 1 << 20, false], [runSeeds[1]!, 1500, false], [runSeeds[0]!, 1 << 20, true], [runSeeds[1]!, 1500, true]]),
    );
  });

  it('the layer applier: a SmartError or a tree, never a write outside the root', async () => {
    const outside = path.join(work, 'outside');
    await mkdir(outside, { recursive: true });
    await writeFile(path.join(outside, 'victim'), 'original');
    let n = 0;
    await fc.assert(
      fc.asyncProperty(fc.nat(layerSeeds.length - 1).chain((i) => mutated(layerSeeds[i]!)), async (bytes) => {
        const root = path.join(work, `root-${n++}`);
        await mkdir(root);
        const applier = new RootfsApplier(root, { preserveOwnership: false });
        await totalAsync(async () => {
          await applier.applyLayer(Readable.from([bytes]), 'layer 0');
          await applier.finish();
        });
        expect((await readdir(work)).filter((x) => !/^(root-\d+|outside|store|index-\d+\.tar)$/.test(x))).toEqual([]);
        expect(await readdir(outside)).toEqual(['victim']);
        expect(await readFile(path.join(outside, 'victim'), 'utf8')).toBe('original');
        await rm(root, { recursive: true, force: true });
      }),
      fuzzParams(200),
    );
  });
});
