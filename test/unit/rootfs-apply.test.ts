import { randomBytes } from 'node:crypto';
import { type BigIntStats, existsSync } from 'node:fs';
import { chmod, chown, lstat, mkdir, mkdtemp, readFile, readdir, readlink, rm, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import { execFileSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { pack, type Header } from 'tar-stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SmartError } from '../../src/errors.js';
import { StoredLayerDamage } from '../../src/cache/stored-layer-damage.js';
import { LayerStore } from '../../src/cache/layer-store.js';
import type { Digest } from '../../src/oci/digest.js';
import { RootfsApplier, normaliseEntryName, resolveInRoot, type ApplyOptions } from '../../src/transports/rootfs/apply.js';
import { nativeBinding } from '../../src/pipeline/native.js';
import { checksum } from '../../src/tar/header.js';
import { inCI } from '../harness/tools.js';
import { xattrsOf } from '../harness/xattrs.js';
import { gnuMember } from '../harness/tar-read.js';

const isRoot = process.getuid?.() === 0;

type TestEntry = Partial<Header> & { name: string; content?: string | Buffer };

async function tarOf(entries: TestEntry[]): Promise<Buffer> {
  const p = pack();
  const out: Buffer[] = [];
  p.on('data', (c) => out.push(c as Buffer));
  const ended = new Promise<void>((resolve, reject) => {
    p.on('end', () => resolve());
    p.on('error', reject);
  });
  for (const e of entries) {
    const { content, ...header } = e;
    const type = header.type ?? 'file';
    const body = type === 'file' ? Buffer.from(content ?? '') : Buffer.alloc(0);
    await new Promise<void>((resolve, reject) => {
      p.entry(
        {
          mode: type === 'directory' ? 0o755 : 0o644,
          mtime: new Date(1_600_000_000_000),
          ...header,
          type,
          size: body.length,
        },
        body,
        (err) => (err ? reject(err) : resolve()),
      );
    });
  }
  p.finalize();
  await ended;
  return Buffer.concat(out);
}

function streamOf(buf: Buffer, chunkSize = 0): Readable {
  if (chunkSize <= 0) return Readable.from([buf], { objectMode: false });
  const parts: Buffer[] = [];
  for (let i = 0; i < buf.length; i += chunkSize) parts.push(buf.subarray(i, i + chunkSize));
  return Readable.from(parts, { objectMode: false });
}

let tmp: string;
let root: string;
let outside: string;

beforeEach(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'smartlayer-apply-'));
  root = path.join(tmp, 'root');
  outside = path.join(tmp, 'outside');
  await mkdir(root);
  await mkdir(outside);
  await writeFile(path.join(outside, 'victim'), 'original');
});

afterEach(async () => {
  await rm(tmp, { recursive: true, force: true });
});

async function applyAll(layers: TestEntry[][], options: Partial<ApplyOptions> = {}) {
  const warnings: string[] = [];
  const a = new RootfsApplier(root, {
    preserveOwnership: isRoot,
    onWarning: (m) => warnings.push(m),
    ...options,
  });
  const stats = [];
  for (const [i, layer] of layers.entries()) stats.push(await a.applyLayer(streamOf(await tarOf(layer)), `layer ${i}`));
  await a.finish();
  return { stats, warnings };
}

async function applyError(layers: TestEntry[][]): Promise<SmartError> {
  try {
    await applyAll(layers);
  } catch (e) {
    expect(e).toBeInstanceOf(SmartError);
    return e as SmartError;
  }
  throw new Error('expected the apply to fail');
}

async function outsideUntouched() {
  expect((await readdir(outside)).sort()).toEqual(['victim']);
  expect(await readFile(path.join(outside, 'victim'), 'utf8')).toBe('original');
}

const r = (...p: string[]) => path.join(root, ...p);

/** Gives the root a mode and group before the layers are applied (a target below a set-group-ID directory). */
async function chmodRoot(mode: number, gid: number) {
  await chown(root, 0, gid);
  await chmod(root, mode);
}

describe('normaliseEntryName', () => {
  it('strips leading slashes and ./, cleans, and stops `..` at the root', () => {
    expect(normaliseEntryName('./a/b/')).toBe('a/b');
    expect(normaliseEntryName('/a//./b')).toBe('a/b');
    expect(normaliseEntryName('a/../b')).toBe('b');
    expect(normaliseEntryName('./')).toBe('');
    expect(normaliseEntryName('/')).toBe('');
    expect(normaliseEntryName('')).toBe('');
    expect(normaliseEntryName('../a')).toBe('a');
    expect(normaliseEntryName('a/../../b')).toBe('b');
    expect(normaliseEntryName('/../etc/passwd')).toBe('etc/passwd');
    expect(normaliseEntryName('..')).toBe('');
  });

  it('gives what the general clean gives for every name made of a few parts (its shortcut for clean names included)', () => {
    const general = (name: string) => path.posix.normalize(`/${name}`).slice(1).replace(/\/+$/, '');
    const parts = ['', '.', '..', 'a', '.a', 'a.', '..a', '...', '/', '//', './', '../'];
    let checked = 0;
    for (const p1 of parts) {
      for (const p2 of parts) {
        for (const p3 of parts) {
          for (const name of [p1 + p2 + p3, `${p1}/${p2}/${p3}`, `./${p1}${p2}/${p3}`, `${p1}/${p2}${p3}/`]) {
            expect(normaliseEntryName(name), name).toBe(general(name));
            checked++;
          }
        }
      }
    }
    expect(checked).toBe(parts.length ** 3 * 4);
  });
});

describe('resolveInRoot', () => {
  it('keeps absolute and relative symlinks inside the root', async () => {
    await mkdir(r('real'));
    await symlink(outside, r('abs'));
    await symlink('../../../../../../../../' + outside.slice(1), r('rel'));
    await symlink('/real', r('toreal'));
    expect(await resolveInRoot(root, 'abs/victim')).toBe(path.join(root, outside, 'victim'));
    expect(await resolveInRoot(root, 'rel/victim')).toBe(path.join(root, outside, 'victim'));
    expect(await resolveInRoot(root, '/toreal/x')).toBe(r('real/x'));
    expect(await resolveInRoot(root, '../../..')).toBe(root);
    expect(await resolveInRoot(root, 'toreal', { followLast: false })).toBe(r('toreal'));
    expect(await resolveInRoot(root, 'toreal')).toBe(r('real'));
  });

  it('stops symlink loops', async () => {
    await symlink('b', r('a'));
    await symlink('a', r('b'));
    await expect(resolveInRoot(root, 'a/x')).rejects.toMatchObject({ code: 'CORRUPT_ARCHIVE' });
  });
});

describe('RootfsApplier', () => {
  it('writes files, directories and symlinks with their modes and times', async () => {
    const mtime = new Date(1_500_000_000_000);
    const { stats } = await applyAll([
      [
        { name: './', type: 'directory', mode: 0o755, mtime },
        { name: './bin/', type: 'directory', mode: 0o755, mtime },
        { name: './bin/tool', content: 'hello', mode: 0o4755, mtime },
        { name: './bin/gtool', content: 'g', mode: 0o2711, mtime },
        { name: './tmp/', type: 'directory', mode: 0o1777, mtime },
        { name: './bin/sh', type: 'symlink', linkname: '/bin/tool', mtime },
        { name: './etc/ro', content: 'x', mode: 0o400, mtime },
      ],
    ]);
    expect(stats[0]).toEqual({ entries: 7, bytes: 7, whiteouts: 0 });
    expect(await readFile(r('bin/tool'), 'utf8')).toBe('hello');
    expect((await stat(r('bin/tool'))).mode & 0o7777).toBe(0o4755);
    expect((await stat(r('bin/gtool'))).mode & 0o7777).toBe(0o2711);
    expect((await stat(r('tmp'))).mode & 0o7777).toBe(0o1777);
    expect((await stat(r('etc/ro'))).mode & 0o7777).toBe(0o400);
    // a parent with no entry of its own is created 0755
    expect((await stat(r('etc'))).mode & 0o7777).toBe(0o755);
    expect(await readlink(r('bin/sh'))).toBe('/bin/tool');
    expect((await stat(r('bin/tool'))).mtimeMs).toBe(mtime.getTime());
    expect((await stat(r('bin'))).mtimeMs).toBe(mtime.getTime());
    expect((await stat(r('tmp'))).mtimeMs).toBe(mtime.getTime());
    expect((await stat(root)).mtimeMs).toBe(mtime.getTime());
    expect((await lstat(r('bin/sh'))).mtimeMs).toBe(mtime.getTime());
  });

  it('gives a directory the mtime of the last layer that wrote it', async () => {
    await applyAll([
      [
        { name: 'd/', type: 'directory', mtime: new Date(1_000_000_000_000) },
        { name: 'gone/', type: 'directory', mtime: new Date(1_000_000_000_000) },
      ],
      [
        { name: 'd/', type: 'directory', mode: 0o750, mtime: new Date(1_100_000_000_000) },
        { name: 'd/new', content: 'n', mtime: new Date(1_200_000_000_000) },
        { name: '.wh.gone' },
      ],
      [{ name: 'd/newer', content: 'n' }],
    ]);
    const st = await stat(r('d'));
    expect(st.mtimeMs).toBe(1_100_000_000_000);
    expect(st.mode & 0o7777).toBe(0o750);
    expect((await stat(r('d/new'))).mtimeMs).toBe(1_200_000_000_000);
    expect(existsSync(r('gone'))).toBe(false);
  });

  it('applies whiteouts and never creates the whiteout file', async () => {
    const { stats } = await applyAll([
      [
        { name: 'a/', type: 'directory' },
        { name: 'a/x', content: 'x' },
        { name: 'a/y', content: 'y' },
        { name: 'a/sub/', type: 'directory' },
        { name: 'a/sub/deep', content: 'd' },
      ],
      [{ name: 'a/.wh.x' }, { name: 'a/.wh.sub' }, { name: 'a/.wh.notthere' }],
    ]);
    expect(stats[1]?.whiteouts).toBe(3);
    expect((await readdir(r('a'))).sort()).toEqual(['y']);
  });

  it('applies an opaque marker that comes before the new children', async () => {
    await applyAll([
      [
        { name: 'd/', type: 'directory' },
        { name: 'd/old', content: 'o' },
        { name: 'd/sub/', type: 'directory' },
        { name: 'd/sub/old2', content: 'o' },
        { name: 'other', content: 'keep' },
      ],
      [
        { name: 'd/', type: 'directory' },
        { name: 'd/.wh..wh..opq' },
        { name: 'd/new', content: 'n' },
      ],
    ]);
    expect((await readdir(r('d'))).sort()).toEqual(['new']);
    expect(await readFile(r('other'), 'utf8')).toBe('keep');
  });

  it('applies an opaque marker that comes after the new children, keeping them', async () => {
    await applyAll([
      [
        { name: 'd/', type: 'directory' },
        { name: 'd/old', content: 'o' },
        { name: 'd/sub/', type: 'directory' },
        { name: 'd/sub/old2', content: 'o' },
        { name: 'd/keepdir/', type: 'directory' },
        { name: 'd/keepdir/lower', content: 'o' },
      ],
      [
        { name: 'd/', type: 'directory' },
        { name: 'd/new', content: 'n' },
        { name: 'd/sub/', type: 'directory' },
        { name: 'd/keepdir/upper', content: 'u' },
        { name: 'd/.wh..wh..opq' },
      ],
    ]);
    expect((await readdir(r('d'))).sort()).toEqual(['keepdir', 'new', 'sub']);
    // directories the layer kept lose what lower layers had in them
    expect(await readdir(r('d/sub'))).toEqual([]);
    expect(await readdir(r('d/keepdir'))).toEqual(['upper']);
  });

  it('keeps what a layer wrote into directories it created, whatever whiteouts follow', async () => {
    await applyAll([
      [
        { name: 'd/', type: 'directory' },
        { name: 'd/old', content: 'o' },
      ],
      [
        { name: 'd/made/deep/f', content: 'implicit parents' },
        { name: 'd/newdir/', type: 'directory' },
        { name: 'd/newdir/g', content: 'g' },
        { name: 'd/newdir/sub/', type: 'directory' },
        { name: 'd/newdir/.wh.g' },
        { name: 'd/newdir/sub/.wh..wh..opq' },
        { name: 'd/made/.wh..wh..opq' },
        { name: 'd/.wh..wh..opq' },
        { name: 'fresh/x', content: 'x' },
        { name: '.wh.fresh' },
      ],
    ]);
    expect((await readdir(r('d'))).sort()).toEqual(['made', 'newdir']);
    expect(await readFile(r('d/made/deep/f'), 'utf8')).toBe('implicit parents');
    expect((await readdir(r('d/newdir'))).sort()).toEqual(['g', 'sub']);
    expect(await readFile(r('fresh/x'), 'utf8')).toBe('x');
  });

  it('holds no per-file state for files in directories the layer creates, and bounds the rest', async () => {
    // 3000 files in new directories pass a bound of 100 paths: only the 30 directories count.
    const many = Array.from({ length: 30 }, (_, d) => Array.from({ length: 100 }, (_, i) => ({ name: `pkg${d}/file${i}`, content: '' }))).flat();
    await applyAll([many], { maxTrackedPaths: 100 });
    expect(await readdir(r('pkg29'))).toHaveLength(100);
    await rm(root, { recursive: true });
    await mkdir(root);
    // Files written into a directory of a lower layer are tracked (a later whiteout must spare them).
    const a = new RootfsApplier(root, { preserveOwnership: false, maxTrackedPaths: 100 });
    await a.applyLayer(streamOf(await tarOf([{ name: 'lib/', type: 'directory' }])), 'layer 0');
    const tooMany = Array.from({ length: 150 }, (_, i) => ({ name: `lib/f${i}`, content: '' }));
    const e = await a.applyLayer(streamOf(await tarOf(tooMany)), 'layer 1').catch((err: unknown) => err);
    expect(e).toBeInstanceOf(SmartError);
    expect((e as SmartError).code).toBe('LIMIT_EXCEEDED');
    expect((e as SmartError).message).toMatch(/^layer 1: more than 100 paths to keep in memory/);
  });

  it('ignores aufs metadata and what is below it', async () => {
    await applyAll([
      [
        { name: '.wh..wh.plnk/', type: 'directory' },
        { name: '.wh..wh.plnk/123.456', content: 'x' },
        { name: '.wh..wh.aufs', content: '' },
        { name: 'f', content: 'f' },
      ],
    ]);
    expect(await readdir(root)).toEqual(['f']);
  });

  it('changes a file into a directory and a directory into a file across layers', async () => {
    await applyAll([
      [
        { name: 'p', content: 'file' },
        { name: 'q/', type: 'directory' },
        { name: 'q/child', content: 'c' },
        { name: 's', content: 'file' },
      ],
      [
        { name: 'p/', type: 'directory' },
        { name: 'p/inner', content: 'i' },
        { name: 'q', content: 'now a file' },
        { name: 's', type: 'symlink', linkname: 'p' },
      ],
      [{ name: 'q/', type: 'directory', mode: 0o700 }],
    ]);
    expect((await lstat(r('p'))).isDirectory()).toBe(true);
    expect(await readFile(r('p/inner'), 'utf8')).toBe('i');
    expect((await lstat(r('q'))).isDirectory()).toBe(true);
    expect(await readdir(r('q'))).toEqual([]);
    expect(await readlink(r('s'))).toBe('p');
  });

  it('replaces a file without touching other hardlinks to it', async () => {
    await applyAll([
      [
        { name: 'f', content: 'old' },
        { name: 'h', type: 'link', linkname: 'f' },
      ],
      [{ name: 'f', content: 'new' }],
    ]);
    expect(await readFile(r('f'), 'utf8')).toBe('new');
    expect(await readFile(r('h'), 'utf8')).toBe('old');
  });

  it('makes hardlinks to files of lower layers and of the same layer', async () => {
    await applyAll([
      [{ name: 'usr/bin/a', content: 'lower' }],
      [
        { name: 'usr/bin/b', type: 'link', linkname: 'usr/bin/a' },
        { name: 'x/same', content: 'same' },
        { name: 'x/link', type: 'link', linkname: './x/same' },
      ],
    ]);
    expect((await stat(r('usr/bin/b'))).ino).toBe((await stat(r('usr/bin/a'))).ino);
    expect((await stat(r('x/link'))).ino).toBe((await stat(r('x/same'))).ino);
  });

  it('refuses hardlinks to missing files and to directories', async () => {
    expect((await applyError([[{ name: 'h', type: 'link', linkname: 'nothere' }]])).code).toBe('CORRUPT_ARCHIVE');
    const e = await applyError([[{ name: 'd/', type: 'directory' }, { name: 'h', type: 'link', linkname: 'd' }]]);
    expect(e.code).toBe('CORRUPT_ARCHIVE');
    expect(e.message).toMatch(/directory/);
  });

  it('follows a symlink to a directory for later entries, inside the root', async () => {
    await applyAll([
      [
        { name: 'real/', type: 'directory' },
        { name: 'rel', type: 'symlink', linkname: 'real' },
        { name: 'abs', type: 'symlink', linkname: '/real' },
        { name: 'rel/same-layer', content: '1' },
      ],
      [
        { name: 'abs/lower-layer', content: '2' },
        { name: 'abs/made/deeper', content: '3' },
      ],
    ]);
    expect((await readdir(r('real'))).sort()).toEqual(['lower-layer', 'made', 'same-layer']);
    expect(await readFile(r('real/made/deeper'), 'utf8')).toBe('3');
    expect(await readlink(r('rel'))).toBe('real');
  });

  it('keeps writes through escaping symlinks inside the root', async () => {
    const outsideRel = outside.slice(1);
    await applyAll([
      [
        { name: 'etc', type: 'symlink', linkname: outside },
        { name: 'up', type: 'symlink', linkname: '../'.repeat(30) + outsideRel },
        { name: 'dangling', type: 'symlink', linkname: '/no/such/dir' },
        { name: 'last', type: 'symlink', linkname: path.join(outside, 'victim') },
      ],
      [
        { name: 'etc/pwn-abs', content: 'x' },
        { name: 'up/pwn-rel', content: 'x' },
        { name: 'up/victim', content: 'overwritten?' },
        { name: 'dangling/pwn', content: 'x' },
        // the last component is never followed: this replaces the symlink itself
        { name: 'last', content: 'replaced' },
        { name: 'etc/hl', type: 'link', linkname: 'up/victim' },
      ],
      [{ name: 'up/.wh.victim' }, { name: 'etc/.wh..wh..opq' }],
    ]);
    await outsideUntouched();
    expect(existsSync(r(outsideRel, 'pwn-abs'))).toBe(false); // removed by the opaque marker
    expect((await lstat(r(outsideRel))).isDirectory()).toBe(true);
    expect(await readFile(r('no/such/dir/pwn'), 'utf8')).toBe('x');
    expect((await lstat(r('last'))).isFile()).toBe(true);
    expect(await readFile(r('last'), 'utf8')).toBe('replaced');
  });

  it('writes through escaping symlinks land inside the root', async () => {
    const outsideRel = outside.slice(1);
    await applyAll([
      [
        { name: 'etc', type: 'symlink', linkname: outside },
        { name: 'up', type: 'symlink', linkname: '../'.repeat(30) + outsideRel },
      ],
      [
        { name: 'etc/pwn-abs', content: 'a' },
        { name: 'up/pwn-rel', content: 'r' },
        { name: 'up/victim', content: 'inside' },
      ],
    ]);
    await outsideUntouched();
    expect(await readFile(r(outsideRel, 'pwn-abs'), 'utf8')).toBe('a');
    expect(await readFile(r(outsideRel, 'pwn-rel'), 'utf8')).toBe('r');
    expect(await readFile(r(outsideRel, 'victim'), 'utf8')).toBe('inside');
  });

  it('resolves entry names that climb inside the root, as containerd does', async () => {
    const names = ['../evil', 'a/../../evil2', '/../evil3', './../../evil4'];
    await applyAll([names.map((name) => ({ name, content: name }))]);
    expect((await readdir(root)).sort()).toEqual(['evil', 'evil2', 'evil3', 'evil4']);
    expect(await readFile(r('evil2'), 'utf8')).toBe('a/../../evil2');
    expect((await readdir(tmp)).sort()).toEqual(['outside', 'root']);
    await outsideUntouched();
  });

  it('resolves hardlink targets that climb inside the root', async () => {
    await writeFile(path.join(tmp, 'host-file'), 'host');
    await applyAll([[{ name: 'etc/passwd', content: 'inside' }, { name: 'pw', type: 'link', linkname: '../../../../etc/passwd' }]]);
    expect((await stat(r('pw'))).ino).toBe((await stat(r('etc/passwd'))).ino);
    const e = await applyError([[{ name: 'h', type: 'link', linkname: '../host-file' }]]);
    expect(e.code).toBe('CORRUPT_ARCHIVE');
    expect(e.message).toMatch(/"\.\.\/host-file", which does not exist/);
    expect(await readFile(path.join(tmp, 'host-file'), 'utf8')).toBe('host');
  });

  it('refuses hardlinks without a target or to the root', async () => {
    for (const linkname of ['', '/', '..', 'a/..', '.']) {
      expect((await applyError([[{ name: 'h', type: 'link', linkname }]])).code).toBe('CORRUPT_ARCHIVE');
    }
  });

  it('resolves hardlink targets inside the root through symlinks', async () => {
    await applyAll([
      [{ name: 'esc', type: 'symlink', linkname: outside }],
      [{ name: `${outside.slice(1)}/victim`, content: 'inner' }],
      [{ name: 'hl', type: 'link', linkname: 'esc/victim' }],
    ]);
    expect(await readFile(r('hl'), 'utf8')).toBe('inner');
    expect((await stat(r('hl'))).ino).not.toBe((await stat(path.join(outside, 'victim'))).ino);
    await outsideUntouched();
  });

  it('applies whiteouts that climb inside the root, and refuses ones that name no file', async () => {
    await writeFile(path.join(tmp, 'x'), 'keep');
    await applyAll([[{ name: 'x', content: 'inner' }], [{ name: '../.wh.x' }, { name: 'a/../../.wh.y' }]]);
    expect(await readdir(root)).toEqual([]);
    expect(await readFile(path.join(tmp, 'x'), 'utf8')).toBe('keep');
    for (const name of ['a/.wh...', '.wh..', '.wh...']) expect((await applyError([[{ name }]])).code).toBe('UNSAFE_ARCHIVE');
  });

  it('skips entries that would replace the root with a non-directory, with one warning', async () => {
    const { warnings } = await applyAll([
      [
        { name: './', type: 'symlink', linkname: '/' },
        { name: '..', type: 'symlink', linkname: '/etc' },
        { name: '', content: 'x' },
        { name: 'f', content: 'f' },
      ],
    ]);
    expect((await lstat(root)).isDirectory()).toBe(true);
    expect(await readdir(root)).toEqual(['f']);
    expect(warnings).toEqual([expect.stringMatching(/^layer 0: skipped 3 entries naming the root directory itself/)]);
  });

  it('fails on a symlink loop in a parent path', async () => {
    const e = await applyError([
      [
        { name: 'a', type: 'symlink', linkname: 'b' },
        { name: 'b', type: 'symlink', linkname: 'a' },
        { name: 'a/x', content: 'x' },
      ],
    ]);
    expect(e.code).toBe('CORRUPT_ARCHIVE');
  });

  it('fails when a parent is a regular file', async () => {
    const e = await applyError([[{ name: 'f', content: 'x' }, { name: 'f/g', content: 'y' }]]);
    expect(e.code).toBe('CORRUPT_ARCHIVE');
    expect(e.message).toMatch(/not a directory/);
  });

  it('handles long names and long link targets', async () => {
    const longDir = Array.from({ length: 12 }, (_, i) => `directory-number-${i}`).join('/');
    const longName = `${longDir}/${'f'.repeat(200)}`;
    expect(longName.length).toBeGreaterThan(255);
    const longTarget = `/${longDir}/${'t'.repeat(180)}`;
    await applyAll([
      [
        { name: longName, content: 'long' },
        { name: 'sym', type: 'symlink', linkname: longTarget },
        { name: 'hl', type: 'link', linkname: longName },
      ],
    ]);
    expect(await readFile(r(longName), 'utf8')).toBe('long');
    expect(await readlink(r('sym'))).toBe(longTarget);
    expect(await readFile(r('hl'), 'utf8')).toBe('long');
  });

  it('streams large files', async () => {
    const big = randomBytes(9 * 1024 * 1024 + 123);
    const tar = await tarOf([{ name: 'big', content: big }]);
    const a = new RootfsApplier(root, { preserveOwnership: false });
    const stats = await a.applyLayer(streamOf(tar, 64 * 1024), 'big layer');
    await a.finish();
    expect(stats.bytes).toBe(big.length);
    expect((await readFile(r('big'))).equals(big)).toBe(true);
  });

  it('reports a truncated tar as CORRUPT_ARCHIVE and destroys the input', async () => {
    const tar = await tarOf([
      { name: 'a', content: 'a'.repeat(5000) },
      { name: 'b', content: 'b'.repeat(5000) },
    ]);
    for (const cut of [700, 512 + 1024, 512 * 13 + 100]) {
      const input = streamOf(tar.subarray(0, cut), 256);
      const a = new RootfsApplier(root, { preserveOwnership: false });
      const err = await a.applyLayer(input, 'layer sha256:abc').catch((e: unknown) => e);
      expect(err).toBeInstanceOf(SmartError);
      expect((err as SmartError).code).toBe('CORRUPT_ARCHIVE');
      expect((err as SmartError).message).toMatch(/^layer sha256:abc: /);
      expect(input.destroyed).toBe(true);
    }
  });

  it('closes the file it was writing when the tar breaks mid-file', async () => {
    const big = randomBytes(2 * 1024 * 1024);
    const tar = await tarOf([{ name: 'big', content: big }]);
    const fds = () => readdir('/proc/self/fd').then((l) => l.length);
    const before = await fds();
    const input = streamOf(tar.subarray(0, 1024 * 1024), 64 * 1024);
    const a = new RootfsApplier(root, { preserveOwnership: false });
    await expect(a.applyLayer(input, 'layer big')).rejects.toMatchObject({ code: 'CORRUPT_ARCHIVE' });
    expect(input.destroyed).toBe(true);
    expect(await fds()).toBe(before);
  });

  it('reports garbage as CORRUPT_ARCHIVE', async () => {
    const a = new RootfsApplier(root, { preserveOwnership: false });
    await expect(a.applyLayer(streamOf(randomBytes(4096)), 'junk')).rejects.toMatchObject({ code: 'CORRUPT_ARCHIVE' });
  });

  it('says what the filesystem refused of an entry in its own words, not with the paths of our staging tree', async () => {
    const a = new RootfsApplier(root, { preserveOwnership: false });
    const name = `a/${'x'.repeat(300)}`; // a component past the 255 bytes a filesystem takes
    const e = (await a.applyLayer(streamOf(await tarOf([{ name, content: 'hi' }])), 'layer L').catch((x: unknown) => x)) as SmartError;
    expect(e).toMatchObject({ code: 'STORAGE', input: 'layer L' });
    expect(e.message).toMatch(/^layer L: entry "a\/x{198}…": ENAMETOOLONG: name too long$/);
  });

  it("passes on the input stream's SmartError, and wraps its other errors", async () => {
    const tar = await tarOf([{ name: 'a', content: 'a'.repeat(100_000) }]);
    for (const [error, code] of [
      [new SmartError('DIGEST_MISMATCH', 'layer x: digest mismatch'), 'DIGEST_MISMATCH'],
      [new Error('socket hang up'), 'CORRUPT_ARCHIVE'],
    ] as const) {
      const input = new PassThrough();
      const a = new RootfsApplier(root, { preserveOwnership: false });
      const p = a.applyLayer(input, 'layer y');
      input.write(tar.subarray(0, 20_000));
      setTimeout(() => input.destroy(error), 20);
      const err = (await p.catch((e: unknown) => e)) as SmartError;
      expect(err).toBeInstanceOf(SmartError);
      expect(err.code).toBe(code);
      if (code === 'DIGEST_MISMATCH') expect(err).toBe(error);
      else expect(err.message).toContain('socket hang up');
    }
  });

  it('fails when the input is destroyed without an error', async () => {
    const input = new PassThrough();
    const a = new RootfsApplier(root, { preserveOwnership: false });
    const p = a.applyLayer(input, 'layer z');
    input.write(Buffer.alloc(100));
    setTimeout(() => input.destroy(), 20);
    await expect(p).rejects.toMatchObject({ code: 'CORRUPT_ARCHIVE' });
  });

  it('refuses a second layer while one is applied', async () => {
    const a = new RootfsApplier(root, { preserveOwnership: false });
    const input = new PassThrough();
    const first = a.applyLayer(input, 'one');
    await expect(a.applyLayer(streamOf(await tarOf([])), 'two')).rejects.toMatchObject({ code: 'INTERNAL' });
    input.end(await tarOf([{ name: 'x', content: 'x' }]));
    await first;
  });

  it('sets extended attributes (with the addon), and warns once per layer about those it cannot set', async () => {
    const { warnings } = await applyAll([
      [
        { name: 'a', content: 'a', pax: { 'SCHILY.xattr.user.one': '1', 'SCHILY.xattr.user.two': '2' } },
        { name: 'd', type: 'directory', pax: { 'SCHILY.xattr.user.dir': 'yes', 'SCHILY.xattr.security.selinux': 'system_u:object_r:bin_t:s0' } },
        // Not a capability the kernel takes: refused (EINVAL), a warning, not a failed layer.
        { name: 'b', content: 'b', pax: { 'SCHILY.xattr.security.capability': 'x' } },
      ],
    ]);
    expect(warnings).toHaveLength(1);
    if (!nativeBinding()?.setXattr) {
      if (inCI) throw new Error('CI=true but the native addon (setXattr) is not built');
      expect(warnings[0]).toMatch(/^layer 0: 4 extended attribute\(s\) not set: setting them needs the native addon/);
      return;
    }
    expect(warnings[0]).toBe('layer 0: 1 extended attribute(s) not set: security.capability: EINVAL');
    expect(await xattrsOf(r('a'))).toEqual({ 'user.one': Buffer.from('1'), 'user.two': Buffer.from('2') });
    // The host's SELinux label is never set (as umoci).
    expect(await xattrsOf(r('d'))).toEqual({ 'user.dir': Buffer.from('yes') });
    expect(await xattrsOf(r('b'))).toEqual({});
  });

  it('names the typeflag of an entry of a type it does not extract (a GNU dump directory here)', async () => {
    const bytes = await tarOf([{ name: 'ok', content: 'ok' }, { name: 'dump', type: 'directory' }]);
    // The second header (after 'ok' and its one block of content) made a GNU dumpdir, its checksum made right again.
    const header = bytes.subarray(1024, 1536);
    header[156] = 'D'.charCodeAt(0);
    header.write(`${checksum(header).toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
    const a = new RootfsApplier(root, { preserveOwnership: false });
    await expect(a.applyLayer(streamOf(bytes), 'layer 0')).rejects.toMatchObject({
      code: 'CORRUPT_ARCHIVE',
      message: `layer 0: entry "dump" has a tar type this tool does not extract (typeflag 'D', a GNU incremental dump directory)`,
    });
  });

  it('uses pax mtimes with sub-second precision', async () => {
    await applyAll([[{ name: 'a', content: 'a', pax: { mtime: '1600000000.25' } }]]);
    expect((await stat(r('a'))).mtimeMs).toBe(1_600_000_000_250);
  });

  it('skips device nodes without preserveOwnership, with one warning, and makes fifos', async () => {
    const { warnings } = await applyAll(
      [
        [
          { name: 'dev/null', type: 'character-device', devmajor: 1, devminor: 3, mode: 0o666 },
          { name: 'dev/sda', type: 'block-device', devmajor: 8, devminor: 0, mode: 0o660 },
          { name: 'dev/fifo', type: 'fifo', mode: 0o600 },
          { name: 'dev/ok', content: 'ok' },
        ],
      ],
      { preserveOwnership: false },
    );
    expect(warnings).toEqual(['layer 0: skipped 2 device node(s): creating them needs root']);
    expect((await readdir(r('dev'))).sort()).toEqual(['fifo', 'ok']);
    const fifo = await lstat(r('dev/fifo'));
    expect(fifo.isFIFO()).toBe(true);
    expect(fifo.mode & 0o7777).toBe(0o600);
  });

  it.skipIf(!isRoot)('sets ownership and creates device nodes when running as root', async () => {
    await applyAll(
      [
        [
          { name: 'home/', type: 'directory', uid: 1000, gid: 1001 },
          { name: 'home/suid', content: 's', uid: 1234, gid: 5678, mode: 0o6755 },
          { name: 'home/link', type: 'symlink', linkname: '/nowhere', uid: 42, gid: 43 },
          { name: 'big-ids', content: 'b', pax: { uid: '3000000000', gid: '3000000001' } },
          { name: 'dev/null', type: 'character-device', devmajor: 1, devminor: 3, mode: 0o666, uid: 7, gid: 8 },
          { name: 'dev/fifo', type: 'fifo', mode: 0o640 },
        ],
      ],
      { preserveOwnership: true },
    );
    const home = await stat(r('home'));
    expect([home.uid, home.gid]).toEqual([1000, 1001]);
    const suid = await stat(r('home/suid'));
    expect([suid.uid, suid.gid, suid.mode & 0o7777]).toEqual([1234, 5678, 0o6755]);
    const link = await lstat(r('home/link'));
    expect([link.uid, link.gid]).toEqual([42, 43]);
    const big = await stat(r('big-ids'));
    expect([big.uid, big.gid]).toEqual([3000000000, 3000000001]);
    const dev = await lstat(r('dev/null'));
    expect(dev.isCharacterDevice()).toBe(true);
    expect(dev.rdev).toBe((1 << 8) | 3);
    expect([dev.uid, dev.gid, dev.mode & 0o7777]).toEqual([7, 8, 0o666]);
    const fifo = await lstat(r('dev/fifo'));
    expect(fifo.isFIFO()).toBe(true);
    expect(fifo.mode & 0o7777).toBe(0o640);
  });

  it.skipIf(!isRoot)("gives files this process's own owner and group only where a directory's set-group-ID bit would not change the group", async () => {
    // Files owned as the process creates them skip their chown; one made in a set-group-ID directory
    // would take the directory's group, so it gets its chown: in a directory whose entry sets the bit,
    // in one made below the root when the root has it, and never after a later entry clears it.
    await chmodRoot(0o2755, 4242);
    await applyAll(
      [
        [
          { name: 'shared/', type: 'directory', mode: 0o2775, uid: 0, gid: 50 },
          { name: 'shared/root-owned', content: 'r', uid: 0, gid: 0 },
          { name: 'shared/inherits', content: 'i', uid: 0, gid: 50 },
          { name: 'top-file', content: 't', uid: 0, gid: 0 },
          { name: 'plain/file', content: 'p', uid: 0, gid: 0 },
        ],
        [
          { name: 'shared/', type: 'directory', mode: 0o755, uid: 0, gid: 50 },
          { name: 'shared/later', content: 'l', uid: 0, gid: 0 },
        ],
      ],
      { preserveOwnership: true },
    );
    const owner = async (p: string) => {
      const st = await stat(r(p));
      return [st.uid, st.gid];
    };
    expect(await owner('shared/root-owned')).toEqual([0, 0]);
    expect(await owner('shared/inherits')).toEqual([0, 50]);
    expect(await owner('shared/later')).toEqual([0, 0]);
    expect(await owner('top-file')).toEqual([0, 0]);
    expect(await owner('plain/file')).toEqual([0, 0]);
  });

  it('gives files their exact mode whatever the umask, with and without a chmod', async () => {
    const old = process.umask(0o027);
    try {
      await applyAll([
        [
          { name: 'a', content: 'a', mode: 0o644 },
          { name: 'b', content: 'b', mode: 0o600 },
          { name: 'c', content: 'c', mode: 0o755 },
          { name: 'd', content: 'd', mode: 0o666 },
          { name: 'e', content: 'e', mode: 0o4750 },
          { name: 'f', content: 'f', mode: 0o400 },
        ],
      ]);
    } finally {
      process.umask(old);
    }
    const modes = await Promise.all(['a', 'b', 'c', 'd', 'e', 'f'].map(async (n) => (await stat(r(n))).mode & 0o7777));
    expect(modes).toEqual([0o644, 0o600, 0o755, 0o666, 0o4750, 0o400]);
  });

  it('gives directories their exact mode and owner whatever the umask, made with them or changed after', async () => {
    const dirs: [string, number, number, number][] = [
      ['plain/', 0o755, 0, 0],
      ['private/', 0o700, 0, 0],
      ['group-writable/', 0o775, 0, 0], // a umask of 027 clears g+w: a chmod
      ['sticky/', 0o1777, 0, 0],
      ['setgid/', 0o2755, 0, 1234],
      ['setgid/inner/', 0o755, 0, 0], // would take the set-group-ID bit and the group from its parent
      ['owned/', 0o755, 1000, 1001],
    ];
    // Directories no entry names, made on the way to a file: 0755, here and below the set-group-ID one.
    const implicit = ['implicit/a/', 'setgid/implicit/'];
    for (const umask of [0o027, 0o022]) {
      const dir = path.join(tmp, `umask-${umask.toString(8)}`);
      await mkdir(dir);
      const old = process.umask(umask);
      try {
        const a = new RootfsApplier(dir, { preserveOwnership: isRoot });
        const entries: TestEntry[] = [...dirs.map(([name, mode, uid, gid]): TestEntry => ({ name, type: 'directory', mode, uid, gid })), ...implicit.map((d) => ({ name: `${d}f`, content: 'f' }))];
        await a.applyLayer(streamOf(await tarOf(entries)), 'layer 0');
        await a.finish();
      } finally {
        process.umask(old);
      }
      for (const [name, mode, uid, gid] of dirs) {
        const st = await lstat(path.join(dir, name));
        expect([umask, name, st.mode & 0o7777]).toEqual([umask, name, isRoot ? mode : mode | 0o700]);
        if (isRoot) expect([umask, name, st.uid, st.gid]).toEqual([umask, name, uid, gid]);
      }
      for (const name of implicit) expect([umask, name, (await lstat(path.join(dir, name))).mode & 0o7777]).toEqual([umask, name, 0o755]);
    }
  });
});

describe('small files made in batches on the pool (file-batch.ts)', () => {
  /** Every entry of the tree under `dir`: type, content, mode, owner, times to the nanosecond (all read before any content is: a read moves the access time), hardlinks. */
  async function treeWithTimes(dir: string): Promise<Record<string, string>> {
    const stats: [string, BigIntStats][] = [];
    const walk = async (rel: string): Promise<void> => {
      for (const name of (await readdir(path.join(dir, rel))).sort()) {
        const p = rel ? `${rel}/${name}` : name;
        const st = await lstat(path.join(dir, p), { bigint: true });
        stats.push([p, st]);
        if (st.isDirectory()) await walk(p);
      }
    };
    await walk('');
    const out: Record<string, string> = {};
    const inodes = new Map<bigint, string>();
    for (const [p, st] of stats) {
      const kind = st.isDirectory() ? 'dir' : st.isSymbolicLink() ? `symlink ${await readlink(path.join(dir, p))}` : `file ${(await readFile(path.join(dir, p))).toString('hex')}`;
      const link = st.isFile() && st.nlink > 1n ? ` inode of ${inodes.get(st.ino) ?? (inodes.set(st.ino, p), p)}` : '';
      out[p] = `${kind} ${(st.mode & 0o7777n).toString(8)} ${st.uid}:${st.gid} m${st.mtimeNs} a${st.isSymbolicLink() ? '' : st.atimeNs}${link}`;
    }
    return out;
  }

  /** Applies `layers` into a fresh root with batching on or off; the tree, or the failure's code and message. */
  async function applyInto(name: string, layers: TestEntry[][], batchSmallFiles: boolean) {
    const dir = path.join(tmp, name);
    await mkdir(dir);
    const a = new RootfsApplier(dir, { preserveOwnership: isRoot, batchSmallFiles });
    try {
      for (const [i, layer] of layers.entries()) await a.applyLayer(streamOf(await tarOf(layer), 7000), `layer ${i}`);
      await a.finish();
    } catch (e) {
      return { failed: `${(e as SmartError).code}: ${(e as Error).message.replaceAll(dir, 'ROOT')}` };
    }
    return { tree: await treeWithTimes(dir) };
  }

  it('lays the same tree, to each mode, owner and nanosecond, as making each file in turn, however the entries of a layer meet', async () => {
    if (!nativeBinding()?.writeFiles) {
      if (inCI) throw new Error('CI=true but the native addon (writeFiles) is not built');
      return;
    }
    const many = Array.from({ length: 600 }, (_, i): TestEntry => ({ name: `a/many/f${i}`, content: `file ${i}\n`.repeat(i % 7) }));
    const layers: TestEntry[][] = [
      [
        { name: 'a/', type: 'directory', mode: 0o755 },
        { name: 'a/many/', type: 'directory' },
        ...many, // more than a batch
        { name: 'a/dup', content: 'first' },
        { name: 'a/dup', content: 'second: the one kept' },
        { name: 'a/sym', type: 'symlink', linkname: 'dup' },
        { name: 'a/sym', content: 'a file where a symlink of this layer was' },
        { name: 'a/x', content: 'a file a directory then replaces' },
        { name: 'a/x/', type: 'directory', mode: 0o700 },
        { name: 'a/x/in', content: 'inside' },
        { name: 'a/d/', type: 'directory' },
        { name: 'a/d', content: 'a file where a directory of this layer was' },
        { name: 'a/target', content: 'linked' },
        { name: 'a/h', type: 'link', linkname: 'a/target' },
        { name: 'a/modes/', type: 'directory' },
        { name: 'a/modes/setuid', content: 's', mode: 0o4755 },
        { name: 'a/modes/private', content: 'p', mode: 0o600 },
        { name: 'a/modes/open', content: 'o', mode: 0o777 },
        { name: 'a/owned', content: 'u', uid: 1000, gid: 1001 },
        { name: 'a/times', content: 't', pax: { mtime: '1704067200.123456789', atime: '1700000000.5' } },
        { name: 'a/old', content: 'before 1970', mtime: new Date(-86_400_000 * 3 + 250) },
        { name: 'late/f', content: 'made before its directory entry' },
        { name: 'late/', type: 'directory', mode: 0o2775, gid: 1234 },
        { name: 'late/g', content: 'takes the directory group' },
        { name: 'a/many/.wh.f5' },
        { name: 'big/', type: 'directory' },
        { name: 'big/file', content: randomBytes(600 * 1024) },
        { name: 'a/after-big', content: 'after a large file' },
      ],
      [
        { name: 'a/many/f7', content: 'replaced in a lower directory' },
        { name: 'b/', type: 'directory' },
        { name: 'b/c/', type: 'directory' },
        { name: 'b/c/new', content: 'new' },
        { name: 'a/many/.wh..wh..opq' },
        { name: 'a/many/only', content: 'all that is left' },
      ],
    ];
    const batched = await applyInto('batched', layers, true);
    const inTurn = await applyInto('in-turn', layers, false);
    expect(batched.failed).toBeUndefined();
    expect(batched.tree).toEqual(inTurn.tree);
    const tree = batched.tree!;
    expect(tree['a/dup']).toMatch(new RegExp(`^file ${Buffer.from('second: the one kept').toString('hex')} `));
    expect(tree['a/x']).toMatch(/^dir 700 /);
    expect(tree['a/d']).toMatch(/^file /);
    expect(tree['a/sym']).toMatch(/^file /);
    expect(tree['a/h']).toMatch(/ inode of a\/h$/);
    expect(tree['a/target']).toMatch(/ inode of a\/h$/);
    expect(tree['a/many/f5']).toBeUndefined();
    // The opaque marker keeps what its own layer wrote into the directory.
    expect(Object.keys(tree).filter((p) => p.startsWith('a/many/'))).toEqual(['a/many/f7', 'a/many/only']);
    // To the microsecond, and past it as this Node's libuv sets times (nanoseconds from 1.52, which
    // the batches follow too: the trees are equal above).
    expect(tree['a/times']).toMatch(process.versions.uv.localeCompare('1.52', undefined, { numeric: true }) < 0 ? / m1704067200123456000 a1700000000500000000$/ : / m1704067200123456\d{3} a1700000000500000000$/);
  });

  /** The tar GNU tar makes of `dir` in `format` (gnu: long names as 'L' entries; ustar: split into prefix and name; pax: records). */
  function gnuTar(dir: string, format: 'gnu' | 'ustar' | 'pax'): Buffer {
    return execFileSync('tar', ['-C', dir, `--format=${format}`, '--sort=name', '--numeric-owner', '-cf', '-', '.'], { maxBuffer: 64 << 20 });
  }

  /** Applies tars into a fresh root (runs of the addon's, batches, or each file in turn); the tree, or the failure's code and message. */
  async function applyTars(name: string, tars: Buffer[], how: 'runs' | 'in turn', chunkSize: number) {
    const dir = path.join(tmp, name);
    await mkdir(dir);
    const a = new RootfsApplier(dir, { preserveOwnership: isRoot, batchSmallFiles: how === 'runs' });
    try {
      for (const [i, tar] of tars.entries()) await a.applyLayer(streamOf(tar, chunkSize), `layer ${i}`);
      await a.finish();
    } catch (e) {
      return { failed: `${(e as SmartError).code}: ${(e as Error).message.replaceAll(dir, 'ROOT')}` };
    }
    return { tree: await treeWithTimes(dir) };
  }

  /** Counts the files the addon's runs make while `body` runs, and the calls of a kept layer's that ran out of room for its index lines. */
  async function countingRuns<T>(body: () => Promise<T>): Promise<{ result: T; made: number; full: number }> {
    const native = nativeBinding()!;
    const real = native.extractFiles!;
    let made = 0;
    let full = 0;
    native.extractFiles = (...args) => {
      real(...args);
      made += args[5][1]!;
      if (args.length > 6 && args[5][5] === 1) full++;
    };
    try {
      return { result: await body(), made, full };
    } finally {
      native.extractFiles = real;
    }
  }

  it('lays the same tree from runs of small files made by the addon (extractFiles) as making each file in turn, from GNU, ustar and pax tars cut anywhere', async () => {
    if (!nativeBinding()?.extractFiles) {
      if (inCI) throw new Error('CI=true but the native addon (extractFiles) is not built');
      return;
    }
    const src = path.join(tmp, 'src');
    const long = `${'deep/'.repeat(18)}end`; // past ustar's 100 bytes of name: a long name, or a prefix
    const files: [string, string | Buffer, number, number?][] = [
      ['a/one', 'one', 0o644],
      ['a/two', '', 0o644],
      ['a/private', 'p', 0o600],
      ['a/setuid', 's', 0o4755],
      ['a/open', 'o', 0o777],
      ['a/with space', 'space', 0o644],
      ['a/caf\u00e9', 'not ASCII: left to the applier', 0o644],
      ['a/.hidden', 'h', 0o644],
      ['a/...', 'dots', 0o644],
      ['a/sub/x', 'x', 0o640],
      ['a/sub/y', randomBytes(5000), 0o644],
      ['a/sub/big', randomBytes(600 * 1024), 0o644],
      ['a/sub/after-big', 'z', 0o644],
      ['a/zz', 'after the subdirectory', 0o644],
      [`${long}/f1`, 'f1', 0o644],
      [`${long}/${'n'.repeat(90)}`, 'a long base name', 0o644],
      [`${long}/f3`, 'f3', 0o644],
      ['b/owned', 'u', 0o644, 1000],
    ];
    for (let i = 0; i < 300; i++) files.push([`m/f${String(i).padStart(3, '0')}`, `file ${i}\n`.repeat(i % 9), 0o644]);
    for (const [rel, content, mode, owner] of files) {
      const p = path.join(src, rel);
      await mkdir(path.dirname(p), { recursive: true });
      await writeFile(p, content);
      await chmod(p, mode);
      if (owner !== undefined && isRoot) await chown(p, owner, owner + 1);
    }
    await mkdir(path.join(src, 'g'), { mode: 0o755 });
    await writeFile(path.join(src, 'g/takes-group'), 'g');
    if (isRoot) await chown(path.join(src, 'g'), 0, 1234);
    await chmod(path.join(src, 'g'), 0o2775);
    for (const [i, rel] of ['a/one', 'a/sub/x', 'm/f007', 'g/takes-group', 'g', 'a/sub', 'a'].entries()) {
      const t = new Date(1_600_000_000_000 + i * 86_400_000 + 123);
      await utimes(path.join(src, rel), t, t);
    }
    // A second layer: files of the first replaced, a whiteout, new files in a new directory.
    const upper = await tarOf([
      { name: 'a/one', content: 'replaced in a lower directory' },
      { name: 'a/sub/.wh.x' },
      { name: 'c/', type: 'directory' },
      { name: 'c/new', content: 'new' },
      { name: 'c/new2', content: 'new 2' },
    ]);
    let made = 0;
    for (const format of ['gnu', 'ustar', 'pax'] as const) {
      const tar = gnuTar(src, format);
      for (const chunkSize of [0, 7000, 512 * 3 + 100]) {
        const label = `${format}-${chunkSize}`;
        const runs = await countingRuns(() => applyTars(`runs-${label}`, [tar, upper], 'runs', chunkSize));
        const inTurn = await applyTars(`in-turn-${label}`, [tar, upper], 'in turn', chunkSize);
        expect(runs.result.failed, label).toBeUndefined();
        expect(runs.result.tree, label).toEqual(inTurn.tree);
        made += runs.made;
        if (chunkSize === 0) expect(runs.made, label).toBeGreaterThan(250);
      }
    }
    expect(made).toBeGreaterThan(0);
  });

  /**
   * Applies `tar` into a fresh root, keeping the layer in a fresh layer store (as a bundle's pull
   * does): the tree, the store's copies and its index; or the failure's code and message. With
   * `inTheWay`, a file is put where the store's copy of that number goes, first.
   */
  async function keepTar(name: string, tar: Buffer, how: 'runs' | 'in turn', chunkSize: number, inTheWay?: number) {
    const dir = path.join(tmp, name);
    await mkdir(dir);
    const store = new LayerStore(path.join(tmp, `${name}-store`));
    const hex = 'a'.repeat(64);
    const fill = await store.claim(`sha256:${hex}` as Digest);
    if (typeof fill === 'string') throw new Error(`claimed: ${fill}`);
    if (inTheWay !== undefined) await writeFile(path.join(fill.runTarget()!.files, String(inTheWay)), 'in the way');
    const a = new RootfsApplier(dir, { preserveOwnership: isRoot, batchSmallFiles: how === 'runs' });
    try {
      await a.applyLayer(streamOf(tar, chunkSize), 'layer 0', { keep: fill });
      await a.finish();
      await fill.commit();
    } catch (e) {
      await fill.abort();
      const words = (e as Error).message.replaceAll(dir, 'ROOT').replace(/\/tmp\/[^/\s'"]+\//g, '/tmp/FILL/').replaceAll(store.dir, 'STORE');
      return { failed: `${(e as SmartError).code}: ${words}` };
    }
    const layer = path.join(store.dir, 'layers', hex);
    return { tree: await treeWithTimes(dir), files: await treeWithTimes(path.join(layer, 'files')), entries: await readFile(path.join(layer, 'entries'), 'utf8') };
  }

  /** A ustar member with the fields a run reads into a kept layer's index; `pax` records go before it. */
  function member(name: string, content: string, fields: { type?: string; uname?: Buffer | string; gname?: string; linkname?: string; devmajor?: number; pax?: string[] } = {}): Buffer {
    const header = (n: string, type: string, size: number, f: typeof fields) => {
      const h = Buffer.alloc(512);
      h.write(n, 0, 'utf8');
      h.write('0000644\0', 100, 'latin1');
      h.write('0000000\0', 108, 'latin1');
      h.write('0000000\0', 116, 'latin1');
      h.write(`${size.toString(8).padStart(11, '0')}\0`, 124, 'latin1');
      h.write(`${(0o13300000000).toString(8)}\0`, 136, 'latin1');
      h.write(type, 156, 'latin1');
      if (f.linkname) h.write(f.linkname, 157, 'latin1');
      h.write('ustar\x0000', 257, 'latin1');
      Buffer.from(f.uname ?? '').copy(h, 265);
      h.write(f.gname ?? '', 297, 'latin1');
      h.write(`${(f.devmajor ?? 0).toString(8).padStart(7, '0')}\0`, 329, 'latin1');
      h.write('0000000\0', 337, 'latin1');
      h.write(`${checksum(h).toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
      return h;
    };
    const pad = (b: Buffer) => Buffer.concat([b, Buffer.alloc((512 - (b.length % 512)) % 512)]);
    const parts: Buffer[] = [];
    if (fields.pax) {
      const records = Buffer.from(
        fields.pax
          .map((kv) => {
            let len = kv.length + 3;
            while (`${len} ${kv}\n`.length !== len) len++;
            return `${len} ${kv}\n`;
          })
          .join(''),
      );
      parts.push(header('PaxHeaders/x', 'x', records.length, {}), pad(records));
    }
    parts.push(header(name, fields.type ?? '0', Buffer.byteLength(content), fields), pad(Buffer.from(content)));
    return Buffer.concat(parts);
  }

  /**
   * Layers whose small files a run meets in every form it takes or leaves: names not ASCII, with
   * quotes and backslashes, with control characters or U+FFFD; set-user-ID, private and other
   * owners' files; sub-second times (pax records); and entries whose header fields a kept layer's
   * index gives only as the reader decodes them. As GNU tar writes them (GNU, ustar, pax) and raw.
   */
  async function keptTars(): Promise<[string, Buffer][]> {
    const src = path.join(tmp, 'kept-src');
    const dirs = ['plain', 'caf\u00e9', 'q"uote\\back', 'ctl\u0001dir', 'fffd\uFFFD', 'sub/deeper'];
    for (const [i, d] of dirs.entries()) {
      await mkdir(path.join(src, d), { recursive: true });
      for (let j = 0; j < 20; j++) {
        const f = path.join(src, d, `f${j}${j % 7 === 0 ? ' "q\\' : ''}`);
        await writeFile(f, `${d} ${j}\n`.repeat((i * 20 + j) % 11));
        await chmod(f, j % 5 === 0 ? 0o4755 : j % 3 === 0 ? 0o600 : 0o644);
        if (isRoot && j % 4 === 0) await chown(f, 1000 + j, 2000 + j);
        // Sub-second times, which pax keeps in records.
        const t = new Date(1_600_000_000_000 + j * 1000 + (j % 3) * 250);
        await utimes(f, t, t);
      }
    }
    // Entries whose fields a run gives only when it can write them as the reader decodes them.
    const raw = Buffer.concat([
      gnuMember('r/', '5'),
      member('r/a', 'a', { uname: 'a"b\\c', gname: 'g' }),
      member('r/b', 'b', { uname: Buffer.from('\u00fc') }),
      member('r/c', 'c', { devmajor: 5 }),
      member('r/d', 'd', { linkname: 'x' }),
      member('r/e', 'e', { type: '7' }),
      member('r/f', 'f', { pax: ['path=r/f', 'mtime=1600000000.5', 'atime=1600000001.25', 'ctime=1600000002'] }),
      member('r/g', 'g', { pax: ['ctime=abc'] }),
      member('r/h', 'h', { pax: ['mtime=1600000003'] }),
      member('r/i', 'i'),
      Buffer.alloc(1024),
    ]);
    return [...(['gnu', 'ustar', 'pax'] as const).map((f): [string, Buffer] => [f, gnuTar(src, f)]), ['raw', raw]];
  }

  it("keeps a layer through its runs as in turn: the same store index byte for byte, the same copies and tree, from GNU, ustar and pax tars cut anywhere", async () => {
    if (!nativeBinding()?.extractFilesKeeps) {
      if (inCI) throw new Error('CI=true but the native addon (extractFiles keeping layers) is not built');
      return;
    }
    const tars = await keptTars();
    let made = 0;
    for (const [format, tar] of tars) {
      for (const chunkSize of [0, 7000, 512 * 3 + 100]) {
        const label = `${format}-${chunkSize}`;
        const runs = await countingRuns(() => keepTar(`kept-runs-${label}`, tar, 'runs', chunkSize));
        const inTurn = await keepTar(`kept-in-turn-${label}`, tar, 'in turn', chunkSize);
        expect(runs.result.failed, label).toBeUndefined();
        expect(inTurn.failed, label).toBeUndefined();
        // Not toEqual on the whole index: a difference is shown by line.
        expect(runs.result.entries!.split('\n'), label).toEqual(inTurn.entries!.split('\n'));
        expect(runs.result.files, label).toEqual(inTurn.files);
        expect(runs.result.tree, label).toEqual(inTurn.tree);
        made += runs.made;
        if (chunkSize === 0 && format !== 'raw') expect(runs.made, label).toBeGreaterThan(60);
      }
    }
    expect(made).toBeGreaterThan(0);
    // More index lines than one call has room for (RUN_LINES_BYTES): the run goes on with the next call.
    const many = Buffer.concat([gnuMember('many/', '5'), ...Array.from({ length: 2200 }, (_, j) => gnuMember(`many/${'e'.repeat(60)}${j}`, '0')), Buffer.alloc(1024)]);
    const runs = await countingRuns(() => keepTar('kept-many-runs', many, 'runs', 0));
    const inTurn = await keepTar('kept-many-in-turn', many, 'in turn', 0);
    expect(runs.result.entries!.split('\n')).toEqual(inTurn.entries!.split('\n'));
    expect(Object.keys(runs.result.files!).length).toBe(2200);
    expect(runs.made).toBe(2200);
    expect(runs.full).toBeGreaterThan(0);
  });

  it("leaves to the applier a kept file whose store copy a run cannot make, which then fails as in turn", async () => {
    if (!nativeBinding()?.extractFilesKeeps) {
      if (inCI) throw new Error('CI=true but the native addon (extractFiles keeping layers) is not built');
      return;
    }
    const tar = Buffer.concat([gnuMember('a/', '5'), ...Array.from({ length: 10 }, (_, i) => gnuMember(`a/f${i}`, '0', `file ${i}`)), Buffer.alloc(1024)]);
    // The copy of a/f4 (the store's file 4) meets a file at its name.
    const runs = await countingRuns(() => keepTar('kept-in-the-way-runs', tar, 'runs', 0, 4));
    const inTurn = await keepTar('kept-in-the-way-in-turn', tar, 'in turn', 0, 4);
    expect(runs.result.failed).toBe(inTurn.failed);
    expect(runs.result.failed).toMatch(/EEXIST/);
    // a/f0..a/f3 were the run's.
    expect(runs.made).toBe(4);
  });

  /** Lays the layers `diffIds` of `store` into a fresh root: through the addon's runs from the index's lines, or each entry in turn; the tree, or the failure. */
  async function layFromStore(name: string, store: LayerStore, diffIds: Digest[], how: 'runs' | 'in turn') {
    const dir = path.join(tmp, name);
    await mkdir(dir);
    const a = new RootfsApplier(dir, { preserveOwnership: isRoot, batchSmallFiles: how === 'runs' });
    try {
      for (const [i, diffId] of diffIds.entries()) await a.applyEntries(how === 'runs' ? store.indexChunks(diffId) : store.entries(diffId), `layer ${i}`, { link: false });
      await a.finish();
    } catch (e) {
      return { failed: `${e instanceof StoredLayerDamage ? 'damage' : (e as SmartError).code}: ${(e as Error).message.replaceAll(dir, 'ROOT').replaceAll(store.dir, 'STORE')}` };
    }
    return { tree: await treeWithTimes(dir) };
  }

  /** Counts the files the addon's runs from a layer store's index make while `body` runs. */
  async function countingStoredRuns<T>(body: () => Promise<T>): Promise<{ result: T; made: number }> {
    const native = nativeBinding()!;
    const real = native.copyStoredFiles!;
    let made = 0;
    native.copyStoredFiles = (...args) => {
      real(...args);
      made += args[6][1]!;
    };
    try {
      return { result: await body(), made };
    } finally {
      native.copyStoredFiles = real;
    }
  }

  /** The store's file that keeps the content of the entry named `name` in the layer `hex`. */
  async function storedFileOf(store: LayerStore, hex: string, name: string): Promise<string> {
    const layer = path.join(store.dir, 'layers', hex);
    for (const line of (await readFile(path.join(layer, 'entries'), 'utf8')).split('\n')) {
      const entry = line ? (JSON.parse(line) as { name: string; file?: string }) : undefined;
      if (entry?.file && entry.name.replace(/^\.\//, '') === name) return path.join(layer, 'files', entry.file);
    }
    throw new Error(`${name} is not kept`);
  }

  it('lays the same tree from the layer store through runs made by the addon (copyStoredFiles) as each entry in turn, and as the tar itself', async () => {
    if (!nativeBinding()?.copyStoredFiles) {
      if (inCI) throw new Error('CI=true but the native addon (copyStoredFiles) is not built');
      return;
    }
    const hex = 'a'.repeat(64);
    // The same name twice in a directory the layer made: the second replaces the first. A whiteout
    // there is no file (and what the layer itself made there stays).
    const twice = Buffer.concat([
      gnuMember('t/', '5'),
      gnuMember('t/a', '0', 'first'),
      gnuMember('t/b', '0', 'b'),
      gnuMember('t/a', '0', 'second'),
      gnuMember('t/c', '0', 'c'),
      gnuMember('t/.wh.b', '0'),
      gnuMember('t/d', '0', 'd'),
      Buffer.alloc(1024),
    ]);
    let made = 0;
    for (const [format, tar] of [...(await keptTars()), ['twice', twice] as [string, Buffer]]) {
      // Kept as a pull keeps it (its index as the applier writes it), and the tree the tar itself gives.
      const kept = await keepTar(`stored-${format}`, tar, 'in turn', 0);
      expect(kept.failed, format).toBeUndefined();
      const store = new LayerStore(path.join(tmp, `stored-${format}-store`));
      const runs = await countingStoredRuns(() => layFromStore(`stored-runs-${format}`, store, [`sha256:${hex}` as Digest], 'runs'));
      const inTurn = await layFromStore(`stored-in-turn-${format}`, store, [`sha256:${hex}` as Digest], 'in turn');
      expect(runs.result.failed, format).toBeUndefined();
      expect(runs.result.tree, format).toEqual(inTurn.tree);
      expect(runs.result.tree, format).toEqual(kept.tree);
      // The 60 files of plain/, q"uote\\back/ and sub/deeper/ (the other directories' names are not
      // printable ASCII); in t/, a and b, then c after the applier's second a (the run stopped
      // there); the whiteout and d after it are the applier's.
      if (format !== 'raw') expect(runs.made, format).toBe(format === 'twice' ? 3 : 60);
      made += runs.made;
    }
    expect(made).toBeGreaterThan(0);
  });

  it('takes from an index only the lines in the form the store writes them, and leaves the others to the applier', async () => {
    if (!nativeBinding()?.copyStoredFiles) {
      if (inCI) throw new Error('CI=true but the native addon (copyStoredFiles) is not built');
      return;
    }
    const hex = 'e'.repeat(64);
    const store = new LayerStore(path.join(tmp, 'hand-store'));
    const layer = path.join(store.dir, 'layers', hex);
    await mkdir(path.join(layer, 'files'), { recursive: true });
    const line = (name: string, fields: Record<string, unknown> = {}, file?: number) =>
      JSON.stringify({ name, mode: 0o644, uid: 0, gid: 0, size: 1, byteOffset: 0, mtime: 1_600_000_000_000, type: 'file', linkname: null, uname: '', gname: '', devmajor: 0, devminor: 0, pax: null, ...fields, ...(file === undefined ? {} : { file: String(file) }) });
    const lines = [JSON.stringify({ name: 'h/', mode: 0o755, uid: 0, gid: 0, size: 0, byteOffset: 0, mtime: 1_600_000_000_000, type: 'directory', linkname: null, uname: '', gname: '', devmajor: 0, devminor: 0, pax: null })];
    const odd: [string, Record<string, unknown>][] = [
      ['plain', {}],
      // A time of a fraction of a second without a pax record (not what a tar gives; an index may).
      ['millis', { mtime: 1_600_000_000_123 }],
      ['pax-time', { pax: { mtime: '1600000000.987654321', atime: '1600000001.5' } }],
      ['zero', { size: 0 }],
      ['user', { uid: 1000, gid: 1001, mode: 0o4750 }],
    ];
    for (const [i, [name, fields]] of odd.entries()) {
      lines.push(line(`h/${name}`, fields, i));
      await writeFile(path.join(layer, 'files', String(i)), 'x'.repeat((fields.size as number | undefined) ?? 1));
    }
    // Keys in another order: the line is the applier's.
    lines.push(JSON.stringify({ file: '5', ...JSON.parse(line('h/reordered')) }));
    await writeFile(path.join(layer, 'files', '5'), 'x');
    lines.push(line('h/after', {}, 6));
    await writeFile(path.join(layer, 'files', '6'), 'x');
    await writeFile(path.join(layer, 'entries'), `${lines.join('\n')}\n`);
    const runs = await countingStoredRuns(() => layFromStore('hand-runs', store, [`sha256:${hex}` as Digest], 'runs'));
    const inTurn = await layFromStore('hand-in-turn', store, [`sha256:${hex}` as Digest], 'in turn');
    expect(runs.result.failed).toBeUndefined();
    expect(runs.result.tree).toEqual(inTurn.tree);
    // plain (the directory starts the run); millis is the applier's, and starts another run:
    // pax-time, zero, user; reordered is the applier's, and after is the last run's.
    expect(runs.made).toBe(5);
    expect(Object.keys(runs.result.tree!)).toHaveLength(8);
  });

  it("reads the layer store's files without touching their access times, through runs, batches and one by one", async () => {
    if (!nativeBinding()?.copyStoredFiles) {
      if (inCI) throw new Error('CI=true but the native addon (copyStoredFiles) is not built');
      return;
    }
    const hex = 'a'.repeat(64);
    // Files whose access time is their modification time: relatime would update it at the first
    // read. A run reads a/'s files; b/x, after the directory b/ the walk made, is read one by one;
    // in turn, the files are batched.
    const tar = Buffer.concat([gnuMember('a/', '5'), ...Array.from({ length: 20 }, (_, i) => gnuMember(`a/f${i}`, '0', `file ${i}`)), gnuMember('b/x', '0', 'x'), Buffer.alloc(1024)]);
    expect((await keepTar('atimes', tar, 'in turn', 0)).failed).toBeUndefined();
    const store = new LayerStore(path.join(tmp, 'atimes-store'));
    const files = path.join(store.dir, 'layers', hex, 'files');
    const atimes = async () => Object.fromEntries(await Promise.all((await readdir(files)).map(async (f) => [f, (await stat(path.join(files, f), { bigint: true })).atimeNs] as const)));
    // As the store leaves them (keepTar's reading of them moved them on): the access time the modification time.
    for (const f of await readdir(files)) {
      const { mtime } = await stat(path.join(files, f));
      await utimes(path.join(files, f), mtime, mtime);
    }
    const before = await atimes();
    expect(Object.keys(before)).toHaveLength(21);
    for (const how of ['runs', 'in turn'] as const) {
      expect((await layFromStore(`atimes-${how.replace(' ', '-')}`, store, [`sha256:${hex}` as Digest], how)).failed, how).toBeUndefined();
      expect(await atimes(), how).toEqual(before);
    }
  });

  it('leaves to the applier a stored file a run cannot read whole, which then is the store\'s damage as in turn', async () => {
    if (!nativeBinding()?.copyStoredFiles) {
      if (inCI) throw new Error('CI=true but the native addon (copyStoredFiles) is not built');
      return;
    }
    const hex = 'a'.repeat(64);
    const tar = Buffer.concat([gnuMember('a/', '5'), ...Array.from({ length: 10 }, (_, i) => gnuMember(`a/f${i}`, '0', `file ${i}`)), Buffer.alloc(1024)]);
    for (const [what, damage] of [
      ['cut short', (f: string) => writeFile(f, 'file')],
      ['grown', (f: string) => writeFile(f, 'file 4 and more')],
      ['gone', (f: string) => rm(f)],
      ['a symlink', async (f: string) => { await rm(f); await symlink('/etc/hostname', f); }],
    ] as const) {
      const name = what.replace(/ /g, '-');
      expect((await keepTar(`damaged-${name}`, tar, 'in turn', 0)).failed).toBeUndefined();
      const store = new LayerStore(path.join(tmp, `damaged-${name}-store`));
      await damage(await storedFileOf(store, hex, 'a/f4'));
      const runs = await countingStoredRuns(() => layFromStore(`damaged-runs-${name}`, store, [`sha256:${hex}` as Digest], 'runs'));
      const inTurn = await layFromStore(`damaged-in-turn-${name}`, store, [`sha256:${hex}` as Digest], 'in turn');
      expect(runs.result.failed, what).toBe(inTurn.failed);
      expect(runs.result.failed, what).toMatch(/^damage: /);
      // a/f0..a/f3 were the run's (the directory's entry starts it).
      expect(runs.made, what).toBe(4);
    }
  });

  it('keeps a layer without runs where the addon is of a version whose runs keep nothing (no extractFilesKeeps)', async () => {
    const native = nativeBinding();
    if (!native?.extractFilesKeeps) {
      if (inCI) throw new Error('CI=true but the native addon (extractFiles keeping layers) is not built');
      return;
    }
    const tar = Buffer.concat([gnuMember('a/', '5'), ...Array.from({ length: 20 }, (_, i) => gnuMember(`a/f${i}`, '0', `file ${i}`)), Buffer.alloc(1024)]);
    const keeps = native.extractFilesKeeps;
    native.extractFilesKeeps = undefined;
    try {
      const old = await countingRuns(() => keepTar('kept-old-addon', tar, 'runs', 0));
      const inTurn = await keepTar('kept-old-addon-in-turn', tar, 'in turn', 0);
      expect(old.made).toBe(0);
      expect(old.result.entries).toBe(inTurn.entries);
      expect(old.result.files).toEqual(inTurn.files);
    } finally {
      native.extractFilesKeeps = keeps;
    }
  });

  it('leaves to the applier an entry a run cannot make, which then fails with its own words', async () => {
    if (!nativeBinding()?.extractFiles) {
      if (inCI) throw new Error('CI=true but the native addon (extractFiles) is not built');
      return;
    }
    // A GNU long name whose last part is too long for the filesystem: the run's open fails, the applier's too.
    const longTar = Buffer.concat([
      gnuMember('a/', '5'),
      gnuMember('a/fine', '0', 'x'),
      gnuMember(`a/${'n'.repeat(300)}`, '0', 'too long a name'),
      gnuMember('a/never', '0', 'y'),
      Buffer.alloc(1024),
    ]);
    const runs = await countingRuns(() => applyTars('runs', [longTar], 'runs', 0));
    const inTurn = await applyTars('in-turn', [longTar], 'in turn', 0);
    expect(runs.result.failed).toBe(inTurn.failed);
    expect(runs.result.failed).toMatch(/^STORAGE: layer 0: entry "a\/n+…": ENAMETOOLONG: name too long$/);
    // a/fine was the run's; the long name it left to the applier.
    expect(runs.made).toBe(1);
    // A tar cut short after a run names the run's last entry, as the applier does, whatever the format.
    const src = path.join(tmp, 'cut');
    // Names past 100 bytes from the tenth on: a long name, a prefix, a pax path.
    const d = `${'p'.repeat(60)}/d`;
    await mkdir(path.join(src, d), { recursive: true });
    for (let i = 0; i < 20; i++) await writeFile(path.join(src, d, `${i < 10 ? 'f' : 'l'.repeat(60)}${i}`), `content ${i}`.repeat(50));
    for (const format of ['gnu', 'ustar', 'pax'] as const) {
      const whole = gnuTar(src, format);
      const cut = whole.subarray(0, whole.length - 1024 - 600);
      const cutRuns = await countingRuns(() => applyTars(`runs-cut-${format}`, [cut], 'runs', 0));
      const cutInTurn = await applyTars(`in-turn-cut-${format}`, [cut], 'in turn', 0);
      expect(cutRuns.made, format).toBeGreaterThan(10);
      expect(cutRuns.result.failed, format).toBe(cutInTurn.failed);
      expect(cutRuns.result.failed, format).toMatch(/^CORRUPT_ARCHIVE: /);
    }
  });

  it("lays a layer store's small files in batches read on the pool: the same tree as in turn, and a stored file gone, cut, grown or a symlink is the store's damage", async () => {
    if (!nativeBinding()?.writeFiles) {
      if (inCI) throw new Error('CI=true but the native addon (writeFiles) is not built');
      return;
    }
    const storeDir = path.join(tmp, 'store');
    await mkdir(storeDir);
    const header = (name: string, size: number, extra: Partial<Header> = {}): Header =>
      ({ name, type: 'file', size, mode: 0o644, uid: 0, gid: 0, mtime: new Date(1_600_000_000_000), ...extra }) as Header;
    const stored = async (file: string, content: string | Buffer) => {
      await writeFile(path.join(storeDir, file), content);
      return path.join(storeDir, file);
    };
    const entries: { header: Header; file?: string }[] = [{ header: { name: 'd/', type: 'directory', mode: 0o755, mtime: new Date(1_600_000_000_000) } as Header }];
    for (let i = 0; i < 600; i++) entries.push({ header: header(`d/f${i}`, i % 50, { mode: i % 3 ? 0o644 : 0o4755, mtime: new Date(1_600_000_000_000 + i * 1000) }), file: await stored(`f${i}`, 'x'.repeat(i % 50)) });
    const apply = async (name: string, list: { header: Header; file?: string }[], batchSmallFiles: boolean) => {
      const dir = path.join(tmp, name);
      await mkdir(dir);
      const a = new RootfsApplier(dir, { preserveOwnership: isRoot, batchSmallFiles });
      async function* from() {
        yield* list;
      }
      try {
        await a.applyEntries(from(), 'layer 0', { link: false });
        await a.finish();
      } catch (e) {
        return { failed: e as Error };
      }
      return { tree: await treeWithTimes(dir) };
    };
    const batched = await apply('batched', entries, true);
    const inTurn = await apply('in-turn', entries, false);
    expect(batched.failed).toBeUndefined();
    expect(batched.tree).toEqual(inTurn.tree);
    // f301 keeps 1 byte.
    const damaged: [string, (file: string) => Promise<unknown>, RegExp][] = [
      ['gone', (f) => rm(f), /f301 is gone$/],
      ['cut', (f) => writeFile(f, ''), /f301 is not the size of the file it keeps$/],
      ['grown', (f) => writeFile(f, 'xx'), /f301 is not the size of the file it keeps$/],
      ['a symlink', async (f) => (await rm(f), symlink('/etc/passwd', f)), /f301 is not a file$/],
    ];
    for (const [what, damage, words] of damaged) {
      const f = path.join(storeDir, 'f301');
      await rm(f, { force: true });
      await writeFile(f, 'x');
      await damage(f);
      const r = await apply(`damaged-${what.replace(' ', '-')}`, entries, true);
      expect(r.failed, what).toBeInstanceOf(StoredLayerDamage);
      expect(r.failed!.message, what).toMatch(words);
    }
  });

  it('does not hand records to an addon built from another version (another record size): each file is made in turn', async () => {
    const native = nativeBinding();
    if (!native?.writeFiles) {
      if (inCI) throw new Error('CI=true but the native addon (writeFiles) is not built');
      return;
    }
    const { writeFiles, writeFilesRecordBytes } = native;
    let calls = 0;
    native.writeFilesRecordBytes = 40;
    native.writeFiles = (...args) => (calls++, writeFiles(...args));
    try {
      const entries: TestEntry[] = [
        { name: 'n/', type: 'directory' },
        { name: 'n/x', content: 'before' },
        ...Array.from({ length: 3 }, (_, i): TestEntry => ({ name: `n/sub${i}/`, type: 'directory' })),
        ...Array.from({ length: 300 }, (_, i) => ({ name: `n/sub${i % 3}/f${i}`, content: `${i}` })),
      ];
      const old = await applyInto('old-addon', [entries], true);
      const inTurn = await applyInto('old-addon-in-turn', [entries], false);
      expect(old.failed).toBeUndefined();
      expect(old.tree).toEqual(inTurn.tree);
      expect(calls).toBe(0);
    } finally {
      native.writeFilesRecordBytes = writeFilesRecordBytes;
      native.writeFiles = writeFiles;
    }
  });

  it('fails on the same entry with the same words as making each file in turn', async () => {
    if (!nativeBinding()?.writeFiles) {
      if (inCI) throw new Error('CI=true but the native addon (writeFiles) is not built');
      return;
    }
    const cases: [TestEntry[], RegExp][] = [
      [[{ name: 'a/', type: 'directory' }, { name: 'a/fine', content: 'x' }, { name: `a/${'n'.repeat(300)}`, content: 'too long a name' }, { name: 'a/never', content: 'y' }], /^STORAGE: layer 0: entry "a\/n+…": ENAMETOOLONG: name too long$/],
      // A file a later entry takes for a directory: the walk sees the file, made before it looks.
      [[{ name: 'a/', type: 'directory' }, { name: 'a/p', content: 'a file' }, { name: 'a/p/q', content: 'below a file' }], /^CORRUPT_ARCHIVE: layer 0: "a\/p": "\/a\/p" is not a directory$/],
      // The same through a symlink to the file.
      [[{ name: 'a/', type: 'directory' }, { name: 'a/b', content: 'a file' }, { name: 'a/l', type: 'symlink', linkname: 'b' }, { name: 'a/l/q', content: 'below a file' }], /^CORRUPT_ARCHIVE: layer 0: "a\/l": "\/a\/b" is not a directory$/],
    ];
    for (const [i, [entries, words]] of cases.entries()) {
      const batched = await applyInto(`batched-${i}`, [entries], true);
      const inTurn = await applyInto(`in-turn-${i}`, [entries], false);
      expect(batched.failed).toBe(inTurn.failed);
      expect(batched.failed).toMatch(words);
    }
  });
});
