/**
 * containerd's breakout cases (`archive/tar_test.go`, TestBreakouts), rebuilt against our applier:
 * the same tar entries (named as Go's tar.FileInfoHeader names them: a directory gets a trailing
 * slash), the same tree beforehand where containerd applies one, and containerd's own check of the
 * result. The first fourteen are the cases of its original test; the rest were added since.
 *
 * A hardlink to a symlink links the symlink itself: containerd has done so since 2018 (PR #2458,
 * "allow hardlink to softlink file"), and its checks for HardlinkSymlinkRelative/Absolute were
 * changed to match (the link is a symlink, and resolving it inside the root reaches /etc/passwd).
 * Every case also checks that nothing outside the root changed.
 */
import { chmod, link, lstat, mkdir, mkdtemp, readFile, readdir, readlink, rm, stat, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pack, type Header } from 'tar-stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SmartError } from '../../src/errors.js';
import { RootfsApplier, resolveInRoot } from '../../src/transports/rootfs/apply.js';

type TarEntry = Partial<Header> & { name: string; content?: string };

/** containerd's TarContext: File, Dir, Symlink(target, name), Link(target, name). */
const tc = {
  file: (name: string, content: string, mode = 0o644): TarEntry => ({ name, type: 'file', mode, content }),
  dir: (name: string, mode = 0o755): TarEntry => ({ name: name.endsWith('/') ? name : `${name}/`, type: 'directory', mode }),
  symlink: (target: string, name: string): TarEntry => ({ name, type: 'symlink', linkname: target, mode: 0o777 }),
  link: (target: string, name: string): TarEntry => ({ name, type: 'link', linkname: target, mode: 0o777 }),
};

async function tarOf(entries: TarEntry[]): Promise<Buffer> {
  const p = pack();
  const out: Buffer[] = [];
  p.on('data', (c) => out.push(c as Buffer));
  const ended = new Promise<void>((resolve, reject) => {
    p.on('end', () => resolve());
    p.on('error', reject);
  });
  for (const { content, ...header } of entries) {
    const body = Buffer.from(content ?? '');
    p.entry({ mtime: new Date(1_700_000_000_000), ...header, size: body.length }, body);
  }
  p.finalize();
  await ended;
  return Buffer.concat(out);
}

/** fstest's appliers: the tree containerd writes before it applies the tar. */
type Setup = (root: string) => Promise<void>;
const fst = {
  dir: (p: string, mode = 0o755): Setup => async (root) => {
    await mkdir(path.join(root, p), { recursive: true });
    await chmod(path.join(root, p), mode);
  },
  file: (p: string, content: string, mode = 0o644): Setup => async (root) => {
    await writeFile(path.join(root, p), content);
    await chmod(path.join(root, p), mode);
  },
  symlink: (target: string, p: string): Setup => (root) => symlink(target, path.join(root, p)),
  link: (target: string, p: string): Setup => (root) => link(path.join(root, target), path.join(root, p)),
};

/** A validator: the root, and the directory beside it that must not change. */
type Check = (root: string, outside: string) => Promise<void>;

const unbroken: Check = async (root) => expect(await readFile(path.join(root, 'etc', 'unbroken'), 'utf8')).toBe('unbroken');

/** containerd's sameFile: both paths resolved inside the root (fs.RootPath), then stat'ed. */
async function identity(root: string, p: string): Promise<string> {
  const st = await stat(await resolveInRoot(root, p));
  return `${st.dev}:${st.ino}`;
}
const sameFile = (a: string, b: string): Check => async (root) => expect(await identity(root, a)).toBe(await identity(root, b));
const notSameFile = (a: string, b: string): Check => async (root) => expect(await identity(root, a)).not.toBe(await identity(root, b));
const sameSymlink = (a: string, b: string): Check => async (root) => {
  for (const p of [a, b]) expect((await lstat(path.join(root, p))).isSymbolicLink(), `${p} is a symlink`).toBe(true);
  expect(await readlink(path.join(root, a))).toBe(await readlink(path.join(root, b)));
};
const fileValue = (p: string, content: string): Check => async (root) => expect(await readFile(path.join(root, p), 'utf8')).toBe(content);
const fileNotExists = (p: string): Check => async (root) => expect(await lstat(path.join(root, p)).catch(() => null)).toBeNull();
const all = (...checks: Check[]): Check => async (root, outside) => {
  for (const c of checks) await c(root, outside);
};

interface Breakout {
  name: string;
  before?: Setup[];
  entries: TarEntry[] | ((outside: string) => TarEntry[]);
  /** containerd's validator; absent when it expects errInvalidArchive. */
  check?: Check;
  invalid?: true;
}

const BREAKOUTS: Breakout[] = [
  // The fourteen cases of the original TestBreakouts.
  { name: 'SymlinkAbsolute', entries: [tc.dir('etc'), tc.symlink('/etc', 'localetc'), tc.file('/localetc/unbroken', 'unbroken')], check: unbroken },
  {
    name: 'SymlinkUpAndOut',
    entries: [tc.dir('etc'), tc.dir('dummy'), tc.symlink('/dummy/../etc', 'localetc'), tc.file('/localetc/unbroken', 'unbroken')],
    check: unbroken,
  },
  {
    name: 'SymlinkMultipleAbsolute',
    entries: [tc.dir('etc'), tc.dir('dummy'), tc.symlink('/etc', '/dummy/etc'), tc.symlink('/dummy/etc', 'localetc'), tc.file('/dummy/etc/unbroken', 'unbroken')],
    check: unbroken,
  },
  {
    name: 'SymlinkMultipleRelative',
    entries: [tc.dir('etc'), tc.dir('dummy'), tc.symlink('/etc', '/dummy/etc'), tc.symlink('./dummy/etc', 'localetc'), tc.file('/dummy/etc/unbroken', 'unbroken')],
    check: unbroken,
  },
  {
    name: 'SymlinkEmptyFile',
    entries: [tc.dir('etc'), tc.file('etc/emptied', 'notempty'), tc.symlink('/etc', 'localetc'), tc.file('/localetc/emptied', '')],
    check: fileValue('etc/emptied', ''),
  },
  {
    name: 'HardlinkRelative',
    entries: [tc.dir('etc', 0o770), tc.file('/etc/passwd', 'inside'), tc.dir('breakouts'), tc.symlink('../../etc', 'breakouts/d1'), tc.link('/breakouts/d1/passwd', 'breakouts/mypasswd')],
    check: sameFile('/breakouts/mypasswd', '/etc/passwd'),
  },
  {
    name: 'HardlinkDownAndOut',
    entries: [
      tc.dir('etc', 0o770),
      tc.file('/etc/passwd', 'inside'),
      tc.dir('breakouts'),
      tc.dir('downandout'),
      tc.symlink('../downandout/../../etc', 'breakouts/d1'),
      tc.link('/breakouts/d1/passwd', 'breakouts/mypasswd'),
    ],
    check: sameFile('/breakouts/mypasswd', '/etc/passwd'),
  },
  {
    name: 'HardlinkAbsolute',
    entries: [tc.dir('etc', 0o770), tc.file('/etc/passwd', 'inside'), tc.symlink('/etc', 'localetc'), tc.link('/localetc/passwd', 'localpasswd')],
    check: sameFile('localpasswd', '/etc/passwd'),
  },
  {
    name: 'HardlinkRelativeLong',
    entries: [tc.dir('etc', 0o770), tc.file('/etc/passwd', 'inside'), tc.symlink('../../../../../../../etc', 'localetc'), tc.link('/localetc/passwd', 'localpasswd')],
    check: sameFile('localpasswd', '/etc/passwd'),
  },
  {
    name: 'HardlinkRelativeUpAndOut',
    entries: [tc.dir('etc', 0o770), tc.file('/etc/passwd', 'inside'), tc.symlink('upandout/../../../etc', 'localetc'), tc.link('/localetc/passwd', 'localpasswd')],
    check: sameFile('localpasswd', '/etc/passwd'),
  },
  {
    name: 'HardlinkDirectRelative',
    entries: [tc.dir('etc', 0o770), tc.file('/etc/passwd', 'inside'), tc.link('../../../../../etc/passwd', 'localpasswd')],
    check: sameFile('localpasswd', '/etc/passwd'),
  },
  {
    name: 'HardlinkDirectAbsolute',
    entries: [tc.dir('etc', 0o770), tc.file('/etc/passwd', 'inside'), tc.link('/etc/passwd', 'localpasswd')],
    check: sameFile('localpasswd', '/etc/passwd'),
  },
  {
    name: 'HardlinkSymlinkRelative',
    entries: [tc.dir('etc', 0o770), tc.file('/etc/passwd', 'inside'), tc.symlink('../../../../../etc/passwd', 'passwdlink'), tc.link('/passwdlink', 'localpasswd')],
    check: all(sameSymlink('/localpasswd', '/passwdlink'), sameFile('/localpasswd', '/etc/passwd')),
  },
  {
    name: 'HardlinkSymlinkAbsolute',
    entries: [tc.dir('etc', 0o770), tc.file('/etc/passwd', 'inside'), tc.symlink('/etc/passwd', 'passwdlink'), tc.link('/passwdlink', 'localpasswd')],
    check: all(sameSymlink('/localpasswd', '/passwdlink'), sameFile('/localpasswd', '/etc/passwd')),
  },
  // Added to containerd's test since.
  {
    name: 'SymlinkParentDirectory',
    entries: [tc.dir('etc', 0o770), tc.file('/etc/passwd', 'inside'), tc.symlink('/etc/', '..'), tc.link('/etc/passwd', 'localpasswd')],
    check: sameFile('/localpasswd', '/etc/passwd'),
  },
  {
    name: 'SymlinkEmptyFilename',
    entries: [tc.dir('etc', 0o770), tc.file('/etc/passwd', 'inside'), tc.symlink('/etc/', ''), tc.link('/etc/passwd', 'localpasswd')],
    check: sameFile('/localpasswd', '/etc/passwd'),
  },
  {
    name: 'SymlinkParentRelative',
    entries: [tc.dir('etc', 0o770), tc.file('/etc/passwd', 'inside'), tc.symlink('/etc/', 'localetc/sub/..'), tc.link('/etc/passwd', '/localetc/localpasswd')],
    check: sameFile('/localetc/localpasswd', '/etc/passwd'),
  },
  {
    name: 'SymlinkSlashEnded',
    entries: [tc.dir('etc', 0o770), tc.file('/etc/passwd', 'inside'), tc.dir('localetc/', 0o770), tc.link('/etc/passwd', '/localetc/localpasswd')],
    check: sameFile('/localetc/localpasswd', '/etc/passwd'),
  },
  {
    name: 'SymlinkOverrideDirectory',
    before: [fst.dir('/etc/'), fst.file('/etc/passwd', 'inside'), fst.dir('/localetc/')],
    entries: [tc.symlink('/etc', 'localetc'), tc.link('/etc/passwd', '/localetc/localpasswd')],
    check: sameFile('/localetc/localpasswd', '/etc/passwd'),
  },
  {
    name: 'SymlinkOverrideDirectoryRelative',
    before: [fst.dir('/etc/'), fst.file('/etc/passwd', 'inside'), fst.dir('/localetc/')],
    entries: [tc.symlink('../../etc', 'localetc'), tc.link('/etc/passwd', '/localetc/localpasswd')],
    check: sameFile('/localetc/localpasswd', '/etc/passwd'),
  },
  {
    name: 'DirectoryOverrideSymlink',
    before: [fst.dir('/etc/'), fst.file('/etc/passwd', 'inside'), fst.symlink('/etc', 'localetc')],
    entries: [tc.dir('/localetc/'), tc.link('/etc/passwd', '/localetc/localpasswd')],
    check: sameFile('/localetc/localpasswd', '/etc/passwd'),
  },
  {
    name: 'DirectoryOverrideSymlinkAndHardlink',
    before: [fst.dir('/etc/'), fst.file('/etc/passwd', 'inside'), fst.symlink('etc', 'localetc'), fst.link('/etc/passwd', '/localetc/localpasswd')],
    entries: [tc.dir('/localetc/'), tc.file('/localetc/localpasswd', 'different')],
    check: notSameFile('/localetc/localpasswd', '/etc/passwd'),
  },
  { name: 'WhiteoutRootParent', before: [fst.dir('/etc/'), fst.file('/etc/passwd', 'inside')], entries: [tc.file('.wh...', '')], invalid: true },
  { name: 'WhiteoutParent', before: [fst.dir('/etc/'), fst.file('/etc/passwd', 'inside')], entries: [tc.file('etc/.wh...', '')], invalid: true },
  { name: 'WhiteoutRoot', before: [fst.dir('/etc/'), fst.file('/etc/passwd', 'inside')], entries: [tc.file('.wh..', '')], invalid: true },
  { name: 'WhiteoutCurrentDirectory', before: [fst.dir('/etc/'), fst.file('/etc/passwd', 'inside')], entries: [tc.file('etc/.wh..', '')], invalid: true },
  {
    name: 'WhiteoutSymlink',
    before: [fst.dir('/etc/'), fst.file('/etc/passwd', 'all users'), fst.symlink('/etc', 'localetc')],
    entries: [tc.file('.wh.localetc', '')],
    check: all(fileValue('etc/passwd', 'all users'), fileNotExists('localetc')),
  },
  {
    name: 'WhiteoutSymlinkPath',
    before: [fst.dir('/etc/'), fst.file('/etc/passwd', 'all users'), fst.file('/etc/whitedout', 'ahhhh whiteout'), fst.symlink('/etc', 'localetc')],
    entries: [tc.file('localetc/.wh.whitedout', '')],
    check: all(fileValue('etc/passwd', 'all users'), fileNotExists('etc/whitedout')),
  },
  {
    name: 'WhiteoutDirectoryName',
    before: [fst.dir('/etc/'), fst.file('/etc/passwd', 'all users'), fst.file('/etc/whitedout', 'ahhhh whiteout'), fst.symlink('/etc', 'localetc')],
    entries: [tc.file('.wh.etc/somefile', 'non-empty')],
    check: all(fileValue('etc/passwd', 'all users'), fileValue('.wh.etc/somefile', 'non-empty')),
  },
  {
    name: 'WhiteoutDeadSymlinkParent',
    before: [fst.dir('/etc/'), fst.file('/etc/passwd', 'all users'), fst.symlink('/dne', 'localetc')],
    entries: [tc.file('localetc/.wh.etc', '')],
    check: fileValue('etc/passwd', 'all users'),
  },
  {
    name: 'WhiteoutRelativePath',
    before: [fst.dir('/etc/'), fst.file('/etc/passwd', 'all users'), fst.symlink('/dne', 'localetc')],
    entries: [tc.file('dne/../.wh.etc', '')],
    check: fileNotExists('etc/passwd'),
  },
  {
    name: 'HardlinkSymlinkBeforeCreateTarget',
    entries: [tc.dir('etc', 0o770), tc.symlink('/etc/passwd', 'localpasswd'), tc.link('localpasswd', 'localpasswd-dup'), tc.file('/etc/passwd', 'after')],
    check: sameFile('localpasswd-dup', '/etc/passwd'),
  },
  {
    // A symlink planted at an absolute name of the host (scoped into the root), then a hardlink to
    // it: the file the symlink names outside the root keeps its mode.
    name: 'HardlinkSymlinkChmod',
    entries: (outside) => [tc.symlink(path.join(outside, 'perm400'), path.join(outside, 'also-exists-outside-root')), tc.link(path.join(outside, 'also-exists-outside-root'), 'sketchylink')],
    check: async (_root, outside) => expect((await lstat(path.join(outside, 'perm400'))).mode & 0o777).toBe(0o400),
  },
];

let tmp: string;
let root: string;
let outside: string;

beforeEach(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'smartlayer-breakouts-'));
  root = path.join(tmp, 'root');
  outside = path.join(tmp, 'outside');
  await mkdir(root);
  await mkdir(outside);
  await writeFile(path.join(outside, 'victim'), 'original');
  await writeFile(path.join(outside, 'perm400'), '...', { mode: 0o400 });
  await writeFile(path.join(outside, 'also-exists-outside-root'), '...', { mode: 0o640 });
});

afterEach(async () => {
  await rm(tmp, { recursive: true, force: true });
});

/** Everything in the temporary directory but the root: names, types, modes, contents. */
async function outsideState(): Promise<string[]> {
  const out: string[] = [];
  const walk = async (dir: string): Promise<void> => {
    for (const name of (await readdir(dir)).sort()) {
      const full = path.join(dir, name);
      if (full === root) continue;
      const st = await lstat(full);
      const what = st.isDirectory() ? 'dir' : st.isSymbolicLink() ? `-> ${await readlink(full)}` : await readFile(full, 'utf8');
      out.push(`${path.relative(tmp, full)} ${(st.mode & 0o7777).toString(8)} ${st.nlink} ${what}`);
      if (st.isDirectory()) await walk(full);
    }
  };
  await walk(tmp);
  return out;
}

describe("containerd's TestBreakouts", () => {
  it.each(BREAKOUTS.map((b) => [b.name, b] as const))('%s', async (_name, b) => {
    for (const setup of b.before ?? []) await setup(root);
    const before = await outsideState();
    const entries = typeof b.entries === 'function' ? b.entries(outside) : b.entries;
    const applier = new RootfsApplier(root, { preserveOwnership: process.getuid?.() === 0 });
    const applied = applier.applyLayer(Readable.from([await tarOf(entries)]), 'layer 0').then(() => applier.finish());
    if (b.invalid) {
      const e = await applied.catch((err: unknown) => err);
      expect(e).toBeInstanceOf(SmartError);
      expect((e as SmartError).code).toBe('UNSAFE_ARCHIVE');
    } else {
      await applied;
      await b.check!(root, outside);
    }
    expect(await outsideState()).toEqual(before);
  });

  it('covers the fourteen original cases and every case added since', () => {
    expect(BREAKOUTS).toHaveLength(33);
  });
});
