/**
 * Layers in the V7 tar format (`tar --format=v7`, and old tars: headers with no ustar or GNU
 * magic), which Go's archive/tar reads, so Docker, containerd and umoci unpack them. Laid into a
 * root filesystem, into a bundle that keeps its layer, and again from the layer store: umoci's
 * tree each time. A docker save archive written in V7 pushes from a file and from stdin alike.
 * A GNU volume label (`tar --label`, a header of no magic and typeflag 'V') is
 * refused in one line that names it, as umoci refuses it.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { writeImageOfTars } from '../harness/images.js';
import { run, runOk, smart } from '../harness/run.js';
import { haveTools, inCI, isRoot } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';
import { describeTree } from '../harness/tree.js';

describe('a layer in the V7 tar format', () => {
  const ready = haveTools('umoci', 'tar') && isRoot;
  let work: string;

  beforeAll(async () => {
    work = await tempDir('smart-v7-');
    // V7 names are at most 99 bytes, with no prefix; it has symlinks and hardlinks, no devices.
    const src = path.join(work, 'src');
    await fs.mkdir(path.join(src, 'etc/app'), { recursive: true });
    await fs.writeFile(path.join(src, 'etc/app/config'), 'key=value\n');
    await fs.chmod(path.join(src, 'etc/app/config'), 0o640);
    await fs.chown(path.join(src, 'etc/app/config'), 1000, 2000);
    await fs.writeFile(path.join(src, 'etc/app/run.sh'), '#!/bin/sh\necho hi\n');
    await fs.chmod(path.join(src, 'etc/app/run.sh'), 0o755);
    await fs.symlink('config', path.join(src, 'etc/app/link'));
    await fs.link(path.join(src, 'etc/app/run.sh'), path.join(src, 'etc/app/hard.sh'));
    for (let i = 0; i < 30; i++) await fs.writeFile(path.join(src, 'etc/app', `f${i}`), `${i}\n`.repeat(i));
  });

  it('rootfs:, bundle: (keeping the layer) and the next bundle: (from the layer store) are umoci\'s tree', async (ctx) => {
    if (!ready) {
      if (inCI) throw new Error('CI=true but umoci and tar (run as root) are missing');
      return ctx.skip();
    }
    const tar = execFileSync('tar', ['-C', path.join(work, 'src'), '--format=v7', '--sort=name', '--mtime=@1700000000', '--numeric-owner', '-cf', '-', 'etc']);
    // No header has a magic: the whole layer is V7.
    for (let at = 0; at + 512 <= tar.length; at += 512) expect(tar.subarray(at + 257, at + 263).toString('latin1')).not.toMatch(/^ustar/);
    const image = path.join(work, 'image');
    await writeImageOfTars(image, [tar]);
    const umoci = path.join(work, 'umoci');
    await runOk('umoci', ['unpack', '--image', `${image}:latest`, umoci]);
    const want = await describeTree(path.join(umoci, 'rootfs'));
    expect(Object.keys(want).length).toBeGreaterThan(30);
    const cacheHome = path.join(work, 'cache');
    for (const [dest, root] of [
      [`rootfs:${path.join(work, 'rootfs')}`, path.join(work, 'rootfs')],
      [`bundle:${path.join(work, 'bundle')}`, path.join(work, 'bundle', 'rootfs')],
      [`bundle:${path.join(work, 'again')}`, path.join(work, 'again', 'rootfs')],
    ] as const) {
      const r = await smart(['pull', `oci:${image}:latest`, dest, '--json'], { cacheHome });
      expect(r.code, r.stderr).toBe(0);
      expect(await describeTree(root), dest).toEqual(want);
      const { materialize } = JSON.parse(r.stdout.toString()).details as { materialize: string };
      if (dest.includes('again')) expect(materialize).not.toBe('stream');
    }
  });

  it('a docker save archive written as V7, pushed from a file and from stdin: the same image', async (ctx) => {
    if (!haveTools('skopeo', 'tar')) {
      if (inCI) throw new Error('CI=true but skopeo and tar are missing');
      return ctx.skip();
    }
    const tar = execFileSync('tar', ['-C', path.join(work, 'src'), '--format=v7', '--sort=name', '--mtime=@1700000000', '--numeric-owner', '-cf', '-', 'etc']);
    const image = path.join(work, 'saved-image');
    await writeImageOfTars(image, [tar]);
    const unpacked = path.join(work, 'saved');
    await fs.mkdir(unpacked);
    await runOk('skopeo', ['--insecure-policy', 'copy', '-q', `oci:${image}:latest`, `docker-archive:${path.join(work, 'saved.tar')}:v7/app:1`]);
    await runOk('tar', ['-C', unpacked, '-xf', path.join(work, 'saved.tar')]);
    const archive = path.join(work, 'saved-v7.tar');
    await runOk('tar', ['-C', unpacked, '--format=v7', '-cf', archive, ...(await fs.readdir(unpacked)).sort()]);
    const fromFile = await smart(['push', '-q', `docker-archive:${archive}`, `file:${path.join(work, 'store1')}#v7/app:1`], { cacheHome: path.join(work, 'cache-push1') });
    expect(fromFile.code, fromFile.stderr).toBe(0);
    const fromStdin = await smart(['push', '-q', 'docker-archive:-', `file:${path.join(work, 'store2')}#v7/app:1`], { input: await fs.readFile(archive), cacheHome: path.join(work, 'cache-push2') });
    expect(fromStdin.code, fromStdin.stderr).toBe(0);
    const digest = (out: Buffer) => /@(sha256:[0-9a-f]{64})/.exec(out.toString())?.[1];
    expect(digest(fromStdin.stdout)).toBeDefined();
    expect(digest(fromStdin.stdout)).toBe(digest(fromFile.stdout));
  });

  it('a GNU volume label is refused in one line naming it, as umoci refuses it', async (ctx) => {
    if (!ready) {
      if (inCI) throw new Error('CI=true but umoci and tar (run as root) are missing');
      return ctx.skip();
    }
    const tar = execFileSync('tar', ['-C', path.join(work, 'src'), '--label=BACKUP-1', '--sort=name', '-cf', '-', 'etc']);
    const image = path.join(work, 'labelled');
    await writeImageOfTars(image, [tar]);
    const refused = await run('umoci', ['unpack', '--image', `${image}:latest`, path.join(work, 'umoci-label')]);
    expect(refused.code).not.toBe(0);
    const target = path.join(work, 'label-rootfs');
    const r = await smart(['pull', `oci:${image}:latest`, `rootfs:${target}`], { cacheHome: path.join(work, 'cache-label') });
    expect(r.code).not.toBe(0);
    const lines = r.stderr.toString().trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/entry "BACKUP-1" has a tar type this tool does not extract \(typeflag 'V', a GNU volume label\)/);
    // Nothing where the user looks.
    await expect(fs.access(target)).rejects.toThrow();
  });
});
