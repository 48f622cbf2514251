/**
 * Root in a user namespace (rootless podman or Docker, a CI runner's rootless container,
 * `unshare -r`): chown to an id the namespace does not map fails with EINVAL, and mknod of a device
 * node with EPERM. A pull to rootfs: or bundle: must still give the tree: such entries keep the
 * owner this process gives, said once per layer, as umoci's rootless unpacking does; the layer
 * store keeps them the same way, so that a warm or --link pull neither fails nor calls them damage.
 * The commands run under `unshare --user --map-root-user` (root or unprivileged user namespaces;
 * required under CI). A user who is not root (setpriv, as root) may not make device nodes either,
 * but fifos, as any user.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { fixtures } from '../harness/fixtures.js';
import { writeImageOfTars } from '../harness/images.js';
import { run, runOk, smart, smartBin, type RunResult } from '../harness/run.js';
import { haveTools, inCI, isRoot } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';
import { describeTree } from '../harness/tree.js';

/** The tree without owners, and without hardlink groups (a --link tree shares every file with the store). */
async function withoutOwners(root: string, links = false) {
  return Object.fromEntries(Object.entries(await describeTree(root)).map(([p, { uid: _u, gid: _g, hardlinkGroup, ...e }]) => [p, links ? e : { ...e, ...(hardlinkGroup ? { hardlinkGroup } : {}) }]));
}

/** An image of one layer GNU tar makes of a real device node (dev/null2) and a fifo; mknod needs root outside a namespace. */
async function devicesImage(work: string): Promise<string> {
  const dir = path.join(work, 'devices');
  await fs.mkdir(path.join(dir, 'dev'), { recursive: true });
  execFileSync('mknod', [path.join(dir, 'dev', 'null2'), 'c', '1', '3']);
  execFileSync('mkfifo', [path.join(dir, 'fifo')]);
  const image = path.join(work, 'devices-image');
  await writeImageOfTars(image, [execFileSync('tar', ['-C', dir, '-cf', '-', '.'])]);
  return image;
}

describe('root in a user namespace that maps only itself', () => {
  let work: string;
  let able = false;
  let cacheHome: string;

  /** smart as root of a new user namespace that maps uid and gid 0 only. */
  const inNamespace = (args: string[]): Promise<RunResult> =>
    run('unshare', ['--user', '--map-root-user', 'env', `XDG_CACHE_HOME=${cacheHome}`, process.execPath, smartBin, ...args]);

  beforeAll(async () => {
    work = await tempDir('smart-userns-');
    cacheHome = path.join(work, 'cache');
    const probe = await run('unshare', ['--user', '--map-root-user', 'true']);
    if (probe.code !== 0) {
      if (inCI) throw new Error(`CI=true but no user namespace can be made (unshare --user): ${probe.stderr}`);
      return;
    }
    able = true;
    const host = await smart(['pull', `oci:${fixtures().paths.ociBasic}:latest`, `rootfs:${path.join(work, 'host')}`], { cacheHome: await tempDir() });
    expect(host.code, host.stderr).toBe(0);
  });

  it('rootfs:, then bundle: and --link from the layer store: the whole tree, the unmapped owner said once a layer, no damage', async (ctx) => {
    if (!able) return ctx.skip();
    const host = path.join(work, 'host');
    for (const [i, args] of [['rootfs', '--keep-layers'], ['bundle'], ['rootfs', '--link'], ['rootfs', '--link']].entries()) {
      const dest = path.join(work, `ns-${i}`);
      const r = await inNamespace(['pull', ...args.slice(1), `oci:${fixtures().paths.ociBasic}:latest`, `${args[0]}:${dest}`]);
      expect(r.code, r.stderr).toBe(0);
      const warnings = r.stderr.split('\n').filter((l) => l.startsWith('warning: '));
      // The basic image's one file owned by 1000:1000 (srv/owned-by-app); and its user, 1000:1000,
      // which the bundle's spec for runc in such a namespace cannot map either.
      expect(warnings, r.stderr).toEqual([
        expect.stringMatching(/^warning: layer sha256:[0-9a-f]{12} of oci:.*: 1 entry keeps this process's owner: this user namespace does not map the ids the image gives \(1000:1000; see \/proc\/self\/uid_map and gid_map\)$/),
        ...(args[0] === 'bundle' ? [`warning: bundle:${dest}: config.json runs the image's process as root of its user namespace, not as the image's user 1000:1000, which rootless runc cannot map (it maps uid 0 alone, to root); pull and run as root to keep the image's user`] : []),
      ]);
      const link = args.includes('--link');
      expect(await withoutOwners(args[0] === 'bundle' ? path.join(dest, 'rootfs') : dest, link), args.join(' ')).toEqual(await withoutOwners(host, link));
    }
  });

  it('a device node is skipped, said once; a fifo is made', async (ctx) => {
    if (!able || !isRoot) return ctx.skip();
    const image = await devicesImage(work);
    const dest = path.join(work, 'ns-devices');
    const r = await inNamespace(['pull', `oci:${image}:latest`, `rootfs:${dest}`]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr.split('\n').filter((l) => l.startsWith('warning: '))).toEqual([expect.stringMatching(/: skipped 1 device node\(s\): a user namespace cannot create them$/)]);
    expect((await fs.lstat(path.join(dest, 'fifo'))).isFIFO()).toBe(true);
    await expect(fs.lstat(path.join(dest, 'dev', 'null2'))).rejects.toMatchObject({ code: 'ENOENT' });
  });
});

describe('a user who is not root', () => {
  it.skipIf(!isRoot || !haveTools('setpriv'))('makes fifos, cold and from the layer store; a device node is skipped, said once a layer', async () => {
    const work = await tempDir('smart-nonroot-');
    // The user writes here (its cache too) and reads the image and the repository, as any user can.
    await fs.chmod(work, 0o777);
    const image = await devicesImage(work);
    await runOk('chmod', ['-R', 'a+rX', image]);
    const asNobody = (args: string[]) =>
      run('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'env', '-i', `PATH=${process.env.PATH}`, `HOME=${work}`, `XDG_CACHE_HOME=${path.join(work, 'cache')}`, process.execPath, smartBin, ...args]);
    // Cold into a bundle (which keeps the layer), then from the layer store, copied and linked.
    const laid = ['stream', expect.stringMatching(/^(copy|reflink)$/), 'hardlink'];
    for (const [i, args] of [['bundle'], ['rootfs'], ['rootfs', '--link']].entries()) {
      const dest = path.join(work, `nobody-${i}`);
      const r = await asNobody(['pull', '--json', ...args.slice(1), `oci:${image}:latest`, `${args[0]}:${dest}`]);
      expect(r.code, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout.toString()), args.join(' ')).toMatchObject({ details: { materialize: laid[i] } });
      // Said where the layer is read: a warm pull reads it again from the layer store.
      expect(r.stderr.split('\n').filter((l) => l.startsWith('warning: ')), args.join(' ')).toEqual([expect.stringMatching(/: skipped 1 device node\(s\): creating them needs root$/)]);
      const root = args[0] === 'bundle' ? path.join(dest, 'rootfs') : dest;
      const fifo = await fs.lstat(path.join(root, 'fifo'));
      expect(fifo.isFIFO(), args.join(' ')).toBe(true);
      expect(fifo.uid).toBe(65534);
      await expect(fs.lstat(path.join(root, 'dev', 'null2'))).rejects.toMatchObject({ code: 'ENOENT' });
    }
  });
});
