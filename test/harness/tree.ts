/**
 * A root filesystem described entry by entry (type, mode, owner, size, content digest, link
 * target), to compare what we unpack with what umoci unpacks. Modification times are left out:
 * tools differ on directory mtimes and the tests are about content.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

export interface TreeEntry {
  type: 'file' | 'dir' | 'symlink' | 'other';
  mode: string;
  uid: number;
  gid: number;
  size?: number;
  sha256?: string;
  target?: string;
  /** Files sharing an inode get the same group name (the first path of the group). */
  hardlinkGroup?: string;
}

export async function describeTree(root: string): Promise<Record<string, TreeEntry>> {
  const out: Record<string, TreeEntry> = {};
  const inodes = new Map<number, string>();
  const walk = async (rel: string): Promise<void> => {
    const names = (await fs.readdir(path.join(root, rel))).sort();
    for (const name of names) {
      const r = rel ? `${rel}/${name}` : name;
      const full = path.join(root, r);
      const st = await fs.lstat(full);
      const base = { mode: (st.mode & 0o7777).toString(8), uid: st.uid, gid: st.gid };
      if (st.isDirectory()) {
        out[r] = { type: 'dir', ...base };
        await walk(r);
      } else if (st.isSymbolicLink()) {
        out[r] = { type: 'symlink', ...base, target: await fs.readlink(full) };
      } else if (st.isFile()) {
        const entry: TreeEntry = { type: 'file', ...base, size: st.size, sha256: createHash('sha256').update(await fs.readFile(full)).digest('hex') };
        if (st.nlink > 1) {
          const first = inodes.get(st.ino) ?? r;
          inodes.set(st.ino, first);
          entry.hardlinkGroup = first;
        }
        out[r] = entry;
      } else {
        out[r] = { type: 'other', ...base };
      }
    }
  };
  await walk('');
  return out;
}

/** Every file and directory under `dir`, relative: to assert a destination holds nothing. */
export async function listAll(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (rel: string): Promise<void> => {
    let names: string[];
    try {
      names = await fs.readdir(path.join(dir, rel));
    } catch {
      return;
    }
    for (const n of names.sort()) {
      const r = rel ? `${rel}/${n}` : n;
      out.push(r);
      const st = await fs.lstat(path.join(dir, r));
      if (st.isDirectory()) await walk(r);
    }
  };
  await walk('');
  return out;
}

/**
 * A vendored tar archive as `ADD vendor.tar.gz /opt/vendor/` takes one (uncompressed here), the
 * same bytes on every call: a directory of its own mode (0750), a file (0640) with a hardlink to
 * it, a symlink, and a file whose directory the archive does not hold (extraction makes it 0755);
 * owner 1000:1000, times 0, made by GNU tar.
 */
export async function vendoredArchive(): Promise<Buffer> {
  const src = await fs.mkdtemp(path.join(os.tmpdir(), 'smart-vendored-'));
  try {
    await fs.mkdir(path.join(src, 'lib'));
    await fs.mkdir(path.join(src, 'bin'));
    await fs.writeFile(path.join(src, 'lib', 'a.txt'), 'vendored\n', { mode: 0o640 });
    await fs.link(path.join(src, 'lib', 'a.txt'), path.join(src, 'lib', 'c.txt'));
    await fs.symlink('a.txt', path.join(src, 'lib', 'b'));
    await fs.writeFile(path.join(src, 'bin', 'tool'), '#!/bin/sh\n', { mode: 0o755 });
    await fs.chmod(path.join(src, 'lib'), 0o750);
    return execFileSync('tar', ['-C', src, '--sort=name', '--mtime=@0', '--owner=1000', '--group=1000', '--numeric-owner', '-cf', '-', 'lib', 'bin/tool']);
  } finally {
    await fs.rm(src, { recursive: true, force: true });
  }
}
