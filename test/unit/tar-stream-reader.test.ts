/**
 * The layer applier's tar reader (src/tar/stream-reader.ts) reads every tar as tar-stream's
 * extract does, the parser docker-archive streams still use: same entries,
 * same contents, same errors, however the bytes are cut into chunks and whether an entry's content
 * is read whole, in pieces or skipped. Mutated archives are compared in fuzz-tar.test.ts.
 */
import { PassThrough, Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { encodeName } from '../../src/tar/byte-names.js';
import { BLOCK, checksum } from '../../src/tar/header.js';
import { TAR_MESSAGES, TarStreamReader, decodePaxRecords } from '../../src/tar/stream-reader.js';
import { pieces, readWithStreamReader, readWithTarStream, skippedLikeReader, tarOf } from '../harness/tar-read.js';

const pad = (b: Buffer) => Buffer.concat([b, Buffer.alloc((BLOCK - (b.length % BLOCK)) % BLOCK)]);

/** A GNU-format header ('ustar  '), as GNU tar writes one. */
function gnuHeader(name: string, size: number, type: string): Buffer {
  const b = Buffer.alloc(BLOCK);
  b.write(name, 0, 100, 'utf8');
  b.write('0000644\0', 100, 'latin1');
  b.write('0000000\0', 108, 'latin1');
  b.write('0000000\0', 116, 'latin1');
  b.write(`${size.toString(8).padStart(11, '0')}\0`, 124, 'latin1');
  b.write('14000000000\0', 136, 'latin1');
  b.write(type, 156, 'latin1');
  b.write('ustar  \0', 257, 'latin1');
  b.write('root', 265, 'latin1');
  b.write(`${checksum(b).toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return b;
}

/** A GNU long name ('L') or link name ('K') member, then the member it names. */
function gnuLong(kind: 'L' | 'K', long: string, member: Buffer): Buffer {
  const data = Buffer.from(`${long}\0`);
  return Buffer.concat([gnuHeader('././@LongLink', data.length, kind), pad(data), member]);
}

const END = Buffer.alloc(2 * BLOCK);

async function expectSameAsTarStream(bytes: Buffer): Promise<void> {
  const theirs = await readWithTarStream(bytes);
  expect(theirs).toBeDefined();
  for (const sizes of [[bytes.length], [1], [7], [511], [512], [513], [65536], [100, 3000, 1, 512]]) {
    const chunks = pieces(bytes, sizes);
    expect(await readWithStreamReader(chunks, 'pieces'), `pieces of ${sizes.join(',')}`).toEqual(theirs);
    expect(await readWithStreamReader(chunks, 'whole'), `whole, chunks of ${sizes.join(',')}`).toEqual(theirs);
    expect(await readWithStreamReader(chunks, 'skip'), `skipping, chunks of ${sizes.join(',')}`).toEqual(skippedLikeReader(theirs!));
  }
}

describe('TarStreamReader reads as tar-stream does', () => {
  it('ustar and pax: long names, link names, sizes, ids, times, xattrs, global records', async () => {
    const body = Buffer.alloc(70_000, 'x');
    const archive = await tarOf([
      { name: 'etc/', type: 'directory' },
      { name: 'etc/passwd', body: 'root:x:0:0::/root:/bin/sh\n' },
      { name: `${'long-directory-name/'.repeat(12)}file`, body },
      { name: 'etc/link', type: 'symlink', linkname: `/${'target/'.repeat(30)}x` },
      { name: 'etc/hard', type: 'link', linkname: 'etc/passwd' },
      { name: 'ids', body: 'x', pax: { uid: '3000000000', gid: '7', mtime: '1600000000.5', 'SCHILY.xattr.user.a': 'b' } },
      { name: 'empty' },
    ]);
    await expectSameAsTarStream(archive);
    // A global pax header (typeflag g) is merged into the next entry's own records.
    const globalRecords = Buffer.from('17 comment=hello\n');
    const g = gnuHeader('pax_global_header', globalRecords.length, 'g');
    g.write('ustar\x0000', 257, 'latin1');
    g.write(`${checksum(g).toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
    await expectSameAsTarStream(Buffer.concat([g, pad(globalRecords), archive]));
  });

  it('GNU long names: a file whose 100-byte name field ends in a slash is a file, not a directory', async () => {
    const long = `${'d'.repeat(99)}/file.js`;
    const member = Buffer.concat([gnuHeader(long.slice(0, 100), 5, '0'), pad(Buffer.from('hello'))]);
    const linked = gnuLong('K', `/${'t'.repeat(200)}`, Buffer.concat([gnuHeader('link', 0, '2')]));
    const archive = Buffer.concat([gnuLong('L', long, member), linked, END]);
    const read = await readWithStreamReader([archive]);
    expect(read).toMatchObject({ entries: [{ name: long, type: 'file', size: 5 }, { name: 'link', type: 'symlink', linkname: `/${'t'.repeat(200)}` }] });
    await expectSameAsTarStream(archive);
  });

  it('zero blocks between entries are skipped, and a directory has no content whatever its size says', async () => {
    const dir = gnuHeader('d/', 0, '5');
    dir.write(`${(1024).toString(8).padStart(11, '0')}\0`, 124, 'latin1');
    dir.write(`${checksum(dir).toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
    const file = Buffer.concat([gnuHeader('d/f', 3, '0'), pad(Buffer.from('abc'))]);
    const archive = Buffer.concat([dir, Buffer.alloc(BLOCK), file, Buffer.alloc(3 * BLOCK), file, END]);
    await expectSameAsTarStream(archive);
    expect(await readWithStreamReader([archive])).toMatchObject({ entries: [{ name: 'd/', size: 1024 }, { name: 'd/f' }, { name: 'd/f' }] });
  });

  it('a tar cut anywhere, or with a broken header, stops with the message tar-stream gives', async () => {
    const archive = await tarOf([
      { name: 'a', body: 'x'.repeat(1500) },
      { name: `${'long/'.repeat(30)}b`, body: 'y' },
      { name: 'c', body: 'z'.repeat(600) },
    ]);
    for (let at = 0; at < archive.length; at += 97) await expectSameAsTarStream(archive.subarray(0, at));
    const broken = Buffer.from(archive);
    broken[2048 + 10]! ^= 1;
    await expectSameAsTarStream(broken);
    expect(await readWithStreamReader([Buffer.alloc(BLOCK, 'x')])).toEqual({ error: TAR_MESSAGES.checksum });
  });

  it('a header without ustar\'s or GNU\'s magic is V7\'s (tar --format=v7, old tars), as Go and tar-stream read it: no prefix', async () => {
    /** `header` with the magic and version replaced (`magic` of 8 bytes), its prefix field holding `prefix`. */
    const remagic = (header: Buffer, magic: string, prefix = '') => {
      const h = Buffer.from(header);
      h.fill(0, 257, 265);
      h.write(magic, 257, 8, 'latin1');
      h.fill(0, 345, 500);
      h.write(prefix, 345, 'latin1');
      h.write(`${checksum(h).toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
      return h;
    };
    const v7 = Buffer.concat([remagic(gnuHeader('etc/old', 3, '0'), ''), pad(Buffer.from('abc'))]);
    const dir = remagic(gnuHeader('etc/', 0, '5'), '');
    // Another magic, and a prefix field that only POSIX ustar has: not part of the name.
    const other = Buffer.concat([remagic(gnuHeader('odd', 2, '0'), 'xyzzy\0\0\0', 'not/a/prefix'), pad(Buffer.from('hi'))]);
    const label = remagic(gnuHeader('VOLUME', 0, 'V'), '');
    const archive = Buffer.concat([label, dir, v7, other, END]);
    await expectSameAsTarStream(archive);
    expect(await readWithStreamReader([archive])).toMatchObject({
      entries: [{ name: 'VOLUME', type: null }, { name: 'etc/', type: 'directory' }, { name: 'etc/old', type: 'file', size: 3 }, { name: 'odd', size: 2 }],
    });
  });

  it('a size that is no number, or an extended header over 4 MiB, is an error, never a hang', async () => {
    const member = gnuHeader('f', 0, '0');
    member.write('\x81', 124, 'latin1'); // base-256 marker with an invalid first byte
    member.write(`${checksum(member).toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
    expect(await readWithStreamReader([member, END])).toEqual({ error: TAR_MESSAGES.size });
    const huge = gnuHeader('././@LongLink', 5 * 1024 * 1024, 'L');
    expect(await readWithStreamReader([huge, END])).toEqual({ error: TAR_MESSAGES.longHeader });
  });

  it('an empty extended header is read as no records, at the end of a tar too', async () => {
    const g = (name: string) => {
      const h = gnuHeader(name, 0, 'g');
      h.write('ustar\x0000', 257, 'latin1');
      h.write(`${checksum(h).toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
      return h;
    };
    const file = Buffer.concat([gnuHeader('f', 3, '0'), pad(Buffer.from('abc'))]);
    for (const sizes of [[1 << 20], [512], [1]]) {
      expect(await readWithStreamReader(pieces(Buffer.concat([g('a'), file, g('b')]), sizes))).toMatchObject({ entries: [{ name: 'f', size: 3, pax: null }] });
      expect(await readWithStreamReader(pieces(Buffer.concat([file, g('c'), END]), sizes))).toMatchObject({ entries: [{ name: 'f' }] });
    }
  });

  it('pax records as tar-stream reads them, stopping at the first malformed one', () => {
    expect(decodePaxRecords(Buffer.from('12 path=abc\n15 linkpath=xy\n'))).toEqual({ path: 'abc', linkpath: 'xy' });
    expect(decodePaxRecords(Buffer.from('11 a=b=c=d\n0 x=y\n'))).toEqual({ a: 'b=c=d' });
    expect(decodePaxRecords(Buffer.from('-5 a=b\n'))).toEqual({});
    expect(decodePaxRecords(Buffer.from('9 noequal\n'))).toEqual({});
  });
});

describe('TarStreamReader and its source', () => {
  it('pauses the source while it holds 2 MiB, and reads on when its content is taken', async () => {
    let produced = 0;
    const entry = await tarOf([{ name: 'big', body: Buffer.alloc(8 * 1024 * 1024, 1) }]);
    const chunks = pieces(entry, [64 * 1024]);
    const source = Readable.from(
      (function* () {
        for (const c of chunks) {
          produced += c.length;
          yield c;
        }
      })(),
    );
    const reader = new TarStreamReader(source);
    const h = await reader.next();
    for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
    // The high-water mark, plus what the stream itself buffers (16 chunks of an object-mode Readable.from).
    expect(produced).toBeLessThan(2 * 1024 * 1024 + 20 * 64 * 1024);
    let bytes = 0;
    for await (const c of reader.contentChunks()) bytes += c.length;
    expect(bytes).toBe(h!.size);
    expect(await reader.next()).toBeNull();
    expect(produced).toBe(entry.length);
  });

  it("gives the source's own error, and an early close as one", async () => {
    const archive = await tarOf([{ name: 'a', body: 'x'.repeat(3000) }]);
    const failing = new PassThrough();
    const reader = new TarStreamReader(failing);
    failing.write(archive.subarray(0, 1024));
    const h = await reader.next();
    expect(h?.name).toBe('a');
    const boom = new Error('download failed');
    setImmediate(() => failing.destroy(boom));
    await expect(reader.content()).rejects.toBe(boom);

    const closing = new PassThrough();
    const early = new TarStreamReader(closing);
    closing.write(archive.subarray(0, 1024));
    await early.next();
    setImmediate(() => closing.destroy());
    await expect(early.content()).rejects.toThrow('the stream closed before its end');
  });
});

describe('names that are not UTF-8: kept byte for byte (src/tar/byte-names.ts)', () => {
  const latin1 = (s: string) => Buffer.from(s, 'latin1');
  /** A GNU header whose name (and link name) fields hold these bytes as they are. */
  function rawHeader(name: Buffer, size: number, type: string, linkname?: Buffer): Buffer {
    const b = gnuHeader('x', size, type);
    b.fill(0, 0, 100);
    name.copy(b, 0);
    if (linkname) linkname.copy(b, 157);
    b.write(`${checksum(b).toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
    return b;
  }
  /** A pax header ('x') of these records, values as bytes. */
  function paxMember(records: [string, Buffer][]): Buffer {
    const data = Buffer.concat(
      records.map(([key, value]) => {
        const body = Buffer.concat([Buffer.from(` ${key}=`), value, Buffer.from('\n')]);
        let len = body.length + 1;
        while (String(len).length + body.length !== len) len = String(len).length + body.length;
        return Buffer.concat([Buffer.from(String(len)), body]);
      }),
    );
    return Buffer.concat([rawHeader(Buffer.from('PaxHeaders/x'), data.length, 'x'), pad(data)]);
  }
  const file = (name: Buffer) => Buffer.concat([rawHeader(name, 1, '0'), pad(Buffer.from('x'))]);
  /** The first entry's name and link target as the bytes they are to become, and its pax records. */
  async function firstEntry(bytes: Buffer): Promise<{ name: Buffer; linkname: Buffer | null; pax: Record<string, string> | undefined }> {
    const reader = new TarStreamReader(Readable.from([Buffer.concat([bytes, END])]));
    const h = await reader.next();
    return { name: encodeName(h!.name), linkname: h!.linkname ? encodeName(h!.linkname) : null, pax: h!.pax as Record<string, string> | undefined };
  }

  it('UTF-8 names, ASCII or not, read as before; a latin-1 name in the header or a link target keeps its bytes', async () => {
    const reader = new TarStreamReader(Readable.from([Buffer.concat([file(Buffer.from('café/naïve.txt')), END])]));
    expect((await reader.next())!.name).toBe('café/naïve.txt');
    expect((await firstEntry(file(latin1('caf\xe9.txt')))).name).toEqual(latin1('caf\xe9.txt'));
    const link = rawHeader(Buffer.from('link'), 0, '2', latin1('/t\xe9'));
    expect((await firstEntry(link)).linkname).toEqual(latin1('/t\xe9'));
  });

  it('the name the entry ends with counts: a header name cut inside a character, replaced by a long name, is the long one', async () => {
    const cut = Buffer.from('é'.repeat(60)).subarray(0, 99); // the last character cut in half
    const long = Buffer.concat([Buffer.from('é'.repeat(60)), Buffer.from('\0')]);
    const member = Buffer.concat([rawHeader(Buffer.from('././@LongLink'), long.length, 'L'), pad(long), file(cut)]);
    expect((await firstEntry(member)).name).toEqual(Buffer.from('é'.repeat(60)));
    const badLong = Buffer.concat([latin1('long-\xff\0')]);
    expect((await firstEntry(Buffer.concat([rawHeader(Buffer.from('././@LongLink'), badLong.length, 'L'), pad(badLong), file(Buffer.from('ok'))]))).name).toEqual(latin1('long-\xff'));
  });

  it('pax: a latin-1 path or link path keeps its bytes, and so does a binary xattr', async () => {
    const capability = Buffer.from([0x01, 0x00, 0x00, 0x02, 0xff, 0xfe, 0x80, 0x00]);
    const withXattr = await firstEntry(Buffer.concat([paxMember([['SCHILY.xattr.security.capability', capability], ['path', Buffer.from('bin/ping')]]), file(Buffer.from('bin/ping'))]));
    expect(withXattr.name).toEqual(Buffer.from('bin/ping'));
    expect(encodeName(withXattr.pax!['SCHILY.xattr.security.capability']!)).toEqual(capability);
    const bad = await firstEntry(Buffer.concat([paxMember([['path', latin1('caf\xe9')]]), file(Buffer.from('cafe'))]));
    expect(bad.name).toEqual(latin1('caf\xe9'));
    const badLink = await firstEntry(Buffer.concat([paxMember([['linkpath', latin1('\xe9')]]), rawHeader(Buffer.from('l'), 0, '2', Buffer.from('e'))]));
    expect(badLink.linkname).toEqual(latin1('\xe9'));
    // A latin-1 header name that a UTF-8 pax path replaces: the entry's name is the pax one.
    const replaced = await firstEntry(Buffer.concat([paxMember([['path', Buffer.from('café')]]), file(latin1('caf\xe9'))]));
    expect(replaced.name).toEqual(Buffer.from('café'));
  });
});
