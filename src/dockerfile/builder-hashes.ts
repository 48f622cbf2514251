/**
 * The content references the Docker classic builder and buildah write into the history of a
 * COPY/ADD (`/bin/sh -c #(nop) COPY file:<hex> in ./ `), computed from the build context, so that a
 * step of a Dockerfile can be matched with the layer those builders made for it without reading
 * the layer. Learnt from the builders' sources and checked against what the real programs write
 * (test/integration/builders.test.ts); a source this module cannot reproduce gives no reference
 * (undefined), never a guess.
 *
 * Docker classic builder (moby 20.10, builder/dockerfile/copy.go and builder/remotecontext): every
 * file of the context, as the client sent it (`.dockerignore` applied, owners forced to 0:0), has
 * a tarsum: sha256 over its tar header fields written as `name<v>mode<v>uid0gid0size<v>typeflag<v>
 * linkname<v>unamegnamedevmajor0devminor0` (mode with the file-type bits, name `/`-terminated for a
 * directory, user and group names blanked, no time), then the content. A path is looked up through
 * its symlinks (inside the context); a path that resolves to nothing stands for itself. A file
 * source is `file:<its sum>`; a directory `dir:<sha256 of the sorted sums of everything below it,
 * itself included unless it is the context root, joined by ",">`; a wildcard expands in walk order;
 * several sources (or matches) make `multi:<sha256 of their references joined by ",">`.
 *
 * buildah (1.28, add.go, copier/, digester.go): each item a source names (a glob's matches, in
 * order) is read as a tar stream — a file alone under its base name (or the destination's name when
 * buildah renames it), a directory's contents named relative to it — with owners and modes as on
 * disk (`--chown`/`--chmod` applied), user and group names looked up on this machine, and every
 * time zeroed, written as Go's archive/tar writes it (ustar, or a PAX header where ustar cannot hold
 * a name: not ASCII, or too long); the reference is `file:` or `dir:` and the sha256 of that
 * stream, or `multi:` as above over several items.
 */
import { createHash, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { SmartError } from '../errors.js';
import { BLOCK, checksum } from '../tar/header.js';
import { fsPath, nameBytes } from '../tar/byte-names.js';
import {
  cleanPath,
  contextRelative,
  descendants,
  expandWildcard,
  hasWildcards,
  resolveInContext,
  type ContextEntry,
  type ContextIndex,
} from './context.js';

/** User and group names by id, as the builder's host would look them up. */
export interface OwnerNames {
  user(uid: number): string;
  group(gid: number): string;
}

/** The names in this machine's /etc/passwd and /etc/group (none when they cannot be read). */
export async function loadOwnerNames(root = '/'): Promise<OwnerNames> {
  const read = async (file: string) => {
    const byId = new Map<number, string>();
    const text = await fs.readFile(path.join(root, 'etc', file), 'utf8').catch(() => '');
    for (const line of text.split('\n')) {
      const [name, , id] = line.split(':');
      const n = Number(id);
      if (name && id !== undefined && Number.isInteger(n) && !byId.has(n)) byId.set(n, name);
    }
    return byId;
  };
  const [users, groups] = await Promise.all([read('passwd'), read('group')]);
  return { user: (uid) => users.get(uid) ?? '', group: (gid) => groups.get(gid) ?? '' };
}

const sha256hex = (text: string) => createHash('sha256').update(text).digest('hex');

function joinedRef(kind: string, refs: readonly string[]): string {
  return `${kind}:${sha256hex(refs.join(','))}`;
}

async function hashFileInto(h: Hash, abs: string): Promise<number> {
  let n = 0;
  await new Promise<void>((resolve, reject) => {
    createReadStream(fsPath(abs))
      .on('data', (chunk) => {
        h.update(chunk as Buffer);
        n += chunk.length;
      })
      .on('error', (e) => reject(new SmartError('STORAGE', `cannot read ${abs}: ${e.message}`, { input: abs, cause: e })))
      .on('end', resolve);
  });
  return n;
}

/** A source as the builders trim it: a leading `/` then a leading `./` dropped, then cleaned. */
function trimSource(src: string): string {
  let s = src.startsWith('/') ? src.slice(1) : src;
  if (s.startsWith('./')) s = s.slice(2);
  return s === '' ? '' : contextRelative(s);
}

// ---------------------------------------------------------------------------------------------
// Docker classic builder

/** Per-context tarsums, computed once each (a plan hashes many COPY steps over one context). */
export class ClassicContextSums {
  private readonly sums = new Map<string, Promise<string | undefined>>();
  private firstLink?: Map<string, string>;

  constructor(private readonly index: ContextIndex) {}

  /** The path a hardlinked file is sent as a link to (the CLI's tar writes later names as links to the first). */
  private linkTarget(e: ContextEntry): string | undefined {
    if (!this.firstLink) {
      this.firstLink = new Map();
      for (const x of this.index.entries.values()) {
        if (x.type === 'dir' || (x.nlink ?? 1) < 2) continue;
        const id = String(x.ino);
        if (!this.firstLink.has(id)) this.firstLink.set(id, x.path);
      }
    }
    if (e.type === 'dir' || (e.nlink ?? 1) < 2) return undefined;
    const first = this.firstLink.get(String(e.ino));
    return first !== undefined && first !== e.path ? first : undefined;
  }

  /** The tarsum of one context entry's own header and content (undefined: not reproducible). */
  private entrySum(e: ContextEntry): Promise<string | undefined> {
    let p = this.sums.get(e.path);
    if (!p) {
      p = (async () => {
        if (e.type === 'other') return undefined;
        const link = this.linkTarget(e);
        const typeBits = e.type === 'dir' ? 0o040000 : e.type === 'symlink' ? 0o120000 : 0o100000;
        const typeflag = link !== undefined ? '1' : e.type === 'dir' ? '5' : e.type === 'symlink' ? '2' : '0';
        const size = e.type === 'file' && link === undefined ? e.size : 0;
        const fields: [string, string][] = [
          ['name', e.type === 'dir' ? `${e.path}/` : e.path],
          ['mode', String(e.mode | typeBits)],
          ['uid', '0'],
          ['gid', '0'],
          ['size', String(size)],
          ['typeflag', typeflag],
          ['linkname', link ?? (e.type === 'symlink' ? (e.target ?? '') : '')],
          ['uname', ''],
          ['gname', ''],
          ['devmajor', '0'],
          ['devminor', '0'],
        ];
        const h = createHash('sha256');
        // As Go hashes them: a name or link target that is not UTF-8 as its own bytes.
        for (const [k, v] of fields) h.update(k).update(nameBytes(v));
        if (e.type === 'file' && link === undefined) await hashFileInto(h, path.join(this.index.dir, e.path));
        return h.digest('hex');
      })();
      this.sums.set(e.path, p);
    }
    return p;
  }

  /** `Hash(path)` of the builder's context: the sum of what the path resolves to, or the path itself. */
  async hash(rel: string): Promise<string | undefined> {
    const resolved = resolveInContext(this.index, rel);
    if (!resolved || resolved.path === '') return rel;
    return this.entrySum(resolved);
  }

  /** The reference of one source item (a context path, wildcard-free). */
  private async itemRef(rel: string): Promise<string | undefined> {
    const resolved = resolveInContext(this.index, rel);
    if (!resolved) return undefined; // the build fails on it: no reference
    if (resolved.type !== 'dir') {
      const sum = await this.hash(rel);
      return sum === undefined ? undefined : `file:${sum}`;
    }
    const below = descendants(this.index, resolved.path);
    const paths = [...(resolved.path === '' ? [] : [resolved.path]), ...below.map((d) => d.path)];
    const sums = await Promise.all(paths.map((p) => this.hash(p)));
    if (sums.some((s) => s === undefined)) return undefined;
    return joinedRef('dir', (sums as string[]).sort());
  }

  /** What the classic builder writes for `COPY <sources>`: `file:`, `dir:` or `multi:` and a hex sha256. */
  async sourceRef(sources: readonly string[]): Promise<string | undefined> {
    const refs: string[] = [];
    for (const src of sources) {
      const rel = trimSource(src);
      const items = hasWildcards(rel) ? expandWildcard(this.index, rel) : [rel];
      for (const item of items) {
        const ref = await this.itemRef(item);
        if (ref === undefined) return undefined;
        refs.push(ref);
      }
    }
    if (refs.length === 0) return undefined;
    return refs.length === 1 ? refs[0] : joinedRef('multi', refs);
  }
}

// ---------------------------------------------------------------------------------------------
// buildah

export interface BuildahCopyOptions {
  /** `--chown=UID:GID` (numeric only: names are looked up in the image, which this module cannot see). */
  chown?: string;
  /** `--chmod=` octal. */
  chmod?: string;
  /** A single file source copied to a file name: buildah names it after the destination. */
  renameTo?: string;
  names: OwnerNames;
}

/**
 * The header Go's archive/tar writes for these fields (times zero): one ustar block, or, where ustar
 * cannot hold a field (a name that is not ASCII, one too long to split, a link target or owner
 * name too long or not ASCII), a PAX extended header (`dir/PaxHeaders.0/file`, typeflag `x`, its
 * records sorted by key) and the block, its fields with the bytes past ASCII dropped. Undefined
 * for what this does not reproduce (numbers past ustar's octal fields).
 */
function goTarHeader(h: { name: string; mode: number; uid: number; gid: number; size: number; typeflag: string; linkname: string; uname: string; gname: string }): Buffer | undefined {
  const max7 = 0o7777777;
  if (h.mode > max7 || h.uid > max7 || h.gid > max7 || h.size > 0o77777777777) return undefined;
  const name = Buffer.from(nameBytes(h.name));
  const linkname = Buffer.from(nameBytes(h.linkname));
  const uname = Buffer.from(h.uname, 'utf8');
  const gname = Buffer.from(h.gname, 'utf8');
  const ascii = (b: Buffer) => b.every((c) => c < 0x80);
  // Go's Header.allowedFormats: a field ustar cannot hold goes into a PAX record; ustar is still
  // written when the only such field is a long ASCII name it can split into prefix and name.
  const fields: [string, Buffer, number][] = [
    ['gname', gname, 32],
    ['linkpath', linkname, 100],
    ['path', name, 100],
    ['uname', uname, 32],
  ];
  const pax = fields.filter(([, value, size]) => !ascii(value) || value.length > size).map(([key, value]) => [key, value] as [string, Buffer]);
  const split = ascii(name) ? goSplitUstarPath(name) : undefined;
  if (pax.length === 0 || (pax.length === 1 && pax[0]![0] === 'path' && split)) return goHeaderBlock({ ...h, name: split?.[1] ?? name, prefix: split?.[0] ?? Buffer.alloc(0), linkname, uname, gname, typeflag: h.typeflag });
  // Go writes the records sorted by key: `fields` is in that order.
  const records = Buffer.concat(pax.map(([k, v]) => goPaxRecord(k, v)));
  const slash = name.lastIndexOf(0x2f);
  const paxName = goAscii(Buffer.from(path.posix.join(name.subarray(0, slash + 1).toString('latin1'), 'PaxHeaders.0', name.subarray(slash + 1).toString('latin1')), 'latin1'))
    .subarray(0, 100)
    .toString('latin1')
    .replace(/\/+$/, '');
  const extended = goHeaderBlock({ name: Buffer.from(paxName, 'latin1'), mode: 0, uid: 0, gid: 0, size: records.length, typeflag: 'x', v7Only: true });
  const padding = Buffer.alloc((BLOCK - (records.length % BLOCK)) % BLOCK);
  const main = goHeaderBlock({ ...h, name: goAscii(name), prefix: Buffer.alloc(0), linkname: goAscii(linkname), uname: goAscii(uname), gname: goAscii(gname), typeflag: h.typeflag });
  return Buffer.concat([extended, records, padding, main]);
}

/** Go's toASCII: the bytes past ASCII (and NUL) dropped. */
function goAscii(b: Buffer): Buffer {
  return Buffer.from(b.filter((c) => c > 0 && c < 0x80));
}

/** Go's formatPAXRecord: `<length> key=value\n`, the length counting itself. */
function goPaxRecord(key: string, value: Buffer): Buffer {
  const rest = Buffer.concat([Buffer.from(` ${key}=`, 'latin1'), value, Buffer.from('\n')]);
  let size = rest.length + String(rest.length).length;
  if (String(size).length + rest.length !== size) size = String(size).length + rest.length;
  return Buffer.concat([Buffer.from(String(size), 'latin1'), rest]);
}

/** Go's splitUSTARPath: the last `/` that leaves a prefix of at most 155 and a name of at most 100. */
function goSplitUstarPath(name: Buffer): [Buffer, Buffer] | undefined {
  if (name.length <= 100) return undefined;
  let i = Math.min(name.length - 1, 155);
  while (i > 0 && name[i] !== 0x2f) i--;
  if (i <= 0 || name.length - i - 1 > 100 || name.length - i - 1 === 0) return undefined;
  return [name.subarray(0, i), name.subarray(i + 1)];
}

/** One header block as Go's templateV7Plus (or, `v7Only`, writeRawFile) fills it, with the ustar magic and Go's checksum. */
function goHeaderBlock(h: { name: Buffer; mode: number; uid: number; gid: number; size: number; typeflag: string; linkname?: Buffer; uname?: Buffer; gname?: Buffer; prefix?: Buffer; v7Only?: boolean }): Buffer {
  const block = Buffer.alloc(BLOCK);
  // Go's formatString: what fits, NUL-terminated when shorter than the field.
  const str = (offset: number, length: number, value: Buffer) => value.copy(block, offset, 0, Math.min(value.length, length));
  const oct = (offset: number, length: number, value: number) => block.write(`${value.toString(8).padStart(length - 1, '0')}\0`, offset, length, 'latin1');
  str(0, 100, h.name);
  oct(100, 8, h.mode);
  oct(108, 8, h.uid);
  oct(116, 8, h.gid);
  oct(124, 12, h.size);
  oct(136, 12, 0);
  block[156] = h.typeflag.charCodeAt(0);
  if (h.linkname) str(157, 100, h.linkname);
  block.write('ustar\u000000', 257, 8, 'latin1');
  if (!h.v7Only) {
    str(265, 32, h.uname ?? Buffer.alloc(0));
    str(297, 32, h.gname ?? Buffer.alloc(0));
    oct(329, 8, 0);
    oct(337, 8, 0);
    str(345, 155, h.prefix ?? Buffer.alloc(0));
  }
  block.write(`${checksum(block).toString(8).padStart(6, '0')}\0 `, 148, 8, 'latin1');
  return block;
}

function numericOwner(chown: string | undefined): { uid: number; gid: number } | undefined | null {
  if (chown === undefined) return undefined;
  const m = /^(\d+):(\d+)$/.exec(chown);
  return m ? { uid: Number(m[1]), gid: Number(m[2]) } : null;
}

/** buildah's reference for one item: the sha256 of the tar stream of its entries. */
async function buildahItemDigest(index: ContextIndex, entries: readonly { entry: ContextEntry; name: string }[], o: BuildahCopyOptions): Promise<string | undefined> {
  const owner = numericOwner(o.chown);
  if (owner === null) return undefined;
  let chmod: number | undefined;
  if (o.chmod !== undefined) {
    if (!/^[0-7]{3,4}$/.test(o.chmod)) return undefined;
    chmod = parseInt(o.chmod, 8);
  }
  const h = createHash('sha256');
  const seen = new Map<string, string>();
  for (const { entry: e, name } of entries) {
    if (e.type === 'other') return undefined;
    let typeflag = e.type === 'dir' ? '5' : e.type === 'symlink' ? '2' : '0';
    let linkname = e.type === 'symlink' ? (e.target ?? '') : '';
    let size = e.type === 'file' ? e.size : 0;
    if (e.type === 'file' && (e.nlink ?? 1) > 1) {
      const id = `${e.dev}:${e.ino}`;
      const first = seen.get(id);
      if (first !== undefined) {
        typeflag = '1';
        linkname = first;
        size = 0;
      } else seen.set(id, name);
    }
    const uid = owner?.uid ?? e.uid ?? 0;
    const gid = owner?.gid ?? e.gid ?? 0;
    const header = goTarHeader({
      name,
      mode: chmod ?? (e.type === 'symlink' ? 0o777 : e.mode),
      uid,
      gid,
      size,
      typeflag,
      linkname,
      // copier looks the names up from the file's own owner, before --chown replaces the ids
      uname: o.names.user(e.uid ?? 0),
      gname: o.names.group(e.gid ?? 0),
    });
    if (!header) return undefined;
    h.update(header);
    if (typeflag === '0') {
      const n = await hashFileInto(h, path.join(index.dir, e.path));
      if (n !== size) return undefined; // changed while read
      if (n % BLOCK) h.update(Buffer.alloc(BLOCK - (n % BLOCK)));
    }
  }
  h.update(Buffer.alloc(2 * BLOCK));
  return h.digest('hex');
}

/**
 * What buildah writes for `COPY <sources>` (see the module comment); undefined when it cannot be
 * reproduced here (remote sources, `--chown` by name).
 */
export async function buildahSourceRef(index: ContextIndex, sources: readonly string[], o: BuildahCopyOptions): Promise<string | undefined> {
  const refs: string[] = [];
  for (const src of sources) {
    const rel = trimSource(src);
    const items = hasWildcards(rel) ? expandWildcard(index, rel) : [rel];
    for (const item of items) {
      const resolved = resolveInContext(index, item);
      if (!resolved) return undefined;
      let digest: string | undefined;
      if (resolved.type === 'dir') {
        const prefix = resolved.path === '' ? '' : `${resolved.path}/`;
        // An excluded directory listed only for what it re-includes is walked through, not written.
        const below = descendants(index, resolved.path).filter((d) => d.type !== 'dir' || !index.matcher.excluded(d.path));
        digest = await buildahItemDigest(index, below.map((d) => ({ entry: d, name: d.path.slice(prefix.length) })), o);
        if (digest !== undefined) refs.push(`dir:${digest}`);
      } else {
        const base = cleanPath(item).split('/').pop() ?? item;
        digest = await buildahItemDigest(index, [{ entry: resolved, name: o.renameTo ?? base }], o);
        if (digest !== undefined) refs.push(`file:${digest}`);
      }
      if (digest === undefined) return undefined;
    }
  }
  if (refs.length === 0) return undefined;
  return refs.length === 1 ? refs[0] : `multi:${sha256hex(refs.join(','))}`;
}
