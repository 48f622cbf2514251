/**
 * Reads a tar with the layer applier's reader (src/tar/stream-reader.ts) and with tar-stream's
 * extract, into the same plain form: each entry's header (its time as a number, so that two
 * invalid dates compare equal) and a digest of its content, or the message the read stopped with.
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { extract, pack, type Header } from 'tar-stream';
import { encodeName } from '../../src/tar/byte-names.js';
import { checksum } from '../../src/tar/header.js';
import { TarStreamReader } from '../../src/tar/stream-reader.js';

export type TarRead = { entries: Record<string, unknown>[] } | { error: string };

function plain(h: Header, content: Buffer[]): Record<string, unknown> {
  const hash = createHash('sha256');
  for (const c of content) hash.update(c);
  return { ...h, mtime: h.mtime?.getTime(), content: hash.digest('hex') };
}

/** Our reader's header with its names, and its pax keys and values, as tar-stream decodes the same bytes (U+FFFD where they are not UTF-8; ours keep them). */
function asTarStreamDecodes(h: Header): Header {
  const utf8 = (s: string) => encodeName(s).toString('utf8');
  const pax = h.pax ? Object.fromEntries(Object.entries(h.pax).map(([k, v]) => [utf8(k), utf8(v)])) : h.pax;
  return { ...h, name: utf8(h.name), ...(h.linkname ? { linkname: utf8(h.linkname) } : {}), ...(pax ? { pax } : {}) };
}

/** `bytes` cut into pieces of the given sizes, in turn (the last size repeats). */
export function pieces(bytes: Buffer, sizes: number[]): Buffer[] {
  const out: Buffer[] = [];
  for (let off = 0, i = 0; off < bytes.length; i++) {
    const n = Math.max(1, sizes[Math.min(i, sizes.length - 1)]!);
    out.push(bytes.subarray(off, off + n));
    off += n;
  }
  return out;
}

/** With our reader; every other entry's content left unread, or taken whole, or in pieces. */
export async function readWithStreamReader(chunks: Buffer[], how: 'whole' | 'pieces' | 'skip' = 'pieces'): Promise<TarRead> {
  const reader = new TarStreamReader(Readable.from(chunks));
  const entries: Record<string, unknown>[] = [];
  try {
    for (let i = 0; ; i++) {
      const h = reader.nextSync() ?? (await reader.next());
      if (h === null) return { entries };
      let content: Buffer[] = [];
      if (how === 'whole') content = [await reader.content()];
      else if (how === 'skip' && i % 2 === 1) content = [];
      else for await (const c of reader.contentChunks()) content.push(Buffer.from(c));
      const asTarStream = asTarStreamDecodes(h);
      // A skipped entry is compared by its header alone.
      entries.push(how === 'skip' && i % 2 === 1 ? { ...plain(asTarStream, []), content: 'skipped' } : plain(asTarStream, content));
    }
  } catch (e) {
    return { error: (e as Error).message };
  }
}

/** With tar-stream; undefined if it gives no answer within `ms` (it waits forever on some broken sizes). */
export async function readWithTarStream(bytes: Buffer, ms = 1000): Promise<TarRead | undefined> {
  // As src/transports/streamed-archive.ts reads (an option extract.js reads and its types leave out).
  const options = { allowUnknownFormat: true } as Parameters<typeof extract>[0];
  const ex = extract(options);
  const read = (async (): Promise<TarRead> => {
    const entries: Record<string, unknown>[] = [];
    try {
      Readable.from([bytes]).pipe(ex as unknown as NodeJS.WritableStream);
      for await (const entry of ex) {
        const content: Buffer[] = [];
        // A directory's stream never ends when its size is not 0 (its size is not content); the applier never read it.
        if (entry.header.type !== 'directory') for await (const c of entry) content.push(c as Buffer);
        entries.push(plain(entry.header, content));
      }
      return { entries };
    } catch (e) {
      return { error: (e as Error).message };
    }
  })();
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), ms)));
  const out = await Promise.race([read, late]);
  clearTimeout(timer);
  if (out === undefined) ex.destroy();
  return out;
}

/** Marks the entries of a read as skipped where `readWithStreamReader(…, 'skip')` skips them. */
export function skippedLikeReader(read: TarRead): TarRead {
  if ('error' in read) return read;
  return { entries: read.entries.map((e, i) => (i % 2 === 1 ? { ...e, content: 'skipped' } : e)) };
}

/** An entry for `tarOf`: a file unless it says otherwise. */
export type TarEntry = { name: string; type?: 'file' | 'directory' | 'symlink' | 'link' | 'character-device' | 'fifo'; body?: Buffer | string; linkname?: string; pax?: Record<string, string>; mode?: number; uid?: number; gid?: number };

/** A tar of `entries`, written by tar-stream's pack (pax records where they are needed). */
export async function tarOf(entries: TarEntry[]): Promise<Buffer> {
  const p = pack();
  const out: Buffer[] = [];
  p.on('data', (c) => out.push(c as Buffer));
  const ended = new Promise<void>((resolve) => p.on('end', () => resolve()));
  for (const e of entries) {
    const body = e.type && e.type !== 'file' ? Buffer.alloc(0) : Buffer.from(e.body ?? '');
    p.entry({ mtime: new Date(1_700_000_000_000), mode: 0o644, ...e, type: e.type ?? 'file', size: body.length }, body);
  }
  p.finalize();
  await ended;
  return Buffer.concat(out);
}

/**
 * One member as GNU tar writes it (magic 'ustar  '), by hand: a long name ('L' member) first when
 * the name is past 100 bytes (tar-stream writes pax instead).
 */
export function gnuMember(name: string, typeflag: string, content: string | Buffer = '', mtime = 0o13300000000): Buffer {
  const body = Buffer.from(content);
  const header = (n: Buffer, type: string, size: number) => {
    const h = Buffer.alloc(512);
    n.copy(h, 0, 0, Math.min(n.length, 100));
    h.write(typeflag === '5' ? '0000755\0' : '0000644\0', 100, 'latin1');
    h.write('0000000\0', 108, 'latin1');
    h.write('0000000\0', 116, 'latin1');
    h.write(`${size.toString(8).padStart(11, '0')}\0`, 124, 'latin1');
    h.write(`${mtime.toString(8).padStart(11, '0')}\0`, 136, 'latin1');
    h.write(type, 156, 'latin1');
    h.write('ustar  \0', 257, 'latin1');
    h.write(`${checksum(h).toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
    return h;
  };
  const pad = (b: Buffer) => Buffer.concat([b, Buffer.alloc((512 - (b.length % 512)) % 512)]);
  const bytes = Buffer.from(name);
  const parts: Buffer[] = [];
  if (bytes.length > 100) {
    const long = Buffer.concat([bytes, Buffer.of(0)]);
    parts.push(header(Buffer.from('././@LongLink'), 'L', long.length), pad(long));
  }
  parts.push(header(bytes, typeflag, body.length), pad(body));
  return Buffer.concat(parts);
}
