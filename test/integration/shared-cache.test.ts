/**
 * A cache directory another user filled: a root pull (`sudo -E smart pull … bundle:`, a CI job run
 * as root before one run as a user, a cache volume shared by both) keeps layers whose files have
 * their image modes, in a layers/ only root enters (0700: an image's setuid programs lie there),
 * and stores of earlier versions hold files such as `etc/secret` (0600, root's) that the next user
 * cannot read. That user's pull must still give the whole tree: the layers it cannot read
 * are fetched, the store is left as it is, and it says so once; a store it cannot write keeps
 * nothing and is not called "another filesystem" when --link is asked for. Runs as another user
 * with setpriv (root, or `sudo -n`; required under CI).
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { fixtures } from '../harness/fixtures.js';
import { run, smart, smartBin, type RunResult } from '../harness/run.js';
import { inCI, isRoot } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';
import { describeTree } from '../harness/tree.js';

/** The tree without owners: a pull by a user who is not root owns every file it writes. */
async function withoutOwners(root: string) {
  return Object.fromEntries(Object.entries(await describeTree(root)).map(([p, { uid: _u, gid: _g, ...e }]) => [p, e]));
}

describe('a layer store another user filled', () => {
  let work: string;
  let image: string;
  let cacheHome: string;
  let able = false;
  const uid = 65534;

  /** Runs smart as `uid`, with the shared cache directory. */
  const asUser = (args: string[]): Promise<RunResult> => {
    const command = ['setpriv', `--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', 'env', '-i', `PATH=${process.env.PATH}`, `HOME=${work}`, `XDG_CACHE_HOME=${cacheHome}`, process.execPath, smartBin, ...args];
    return isRoot ? run(command[0]!, command.slice(1), { cwd: work }) : run('sudo', ['-n', ...command], { cwd: work });
  };

  beforeAll(async () => {
    work = await tempDir('smart-shared-');
    await fs.chmod(work, 0o777);
    const probe = await (isRoot ? run('setpriv', [`--reuid=${uid}`, '--clear-groups', 'true']) : run('sudo', ['-n', 'setpriv', `--reuid=${uid}`, '--clear-groups', 'true']));
    if (probe.code !== 0 || !isRoot) {
      if (inCI) throw new Error(`CI=true but commands cannot run as root and as another user (setpriv): ${probe.stderr}`);
      return;
    }
    able = true;
    // The image where the user can read it; the cache filled by root.
    image = path.join(work, 'image');
    await fs.cp(fixtures().paths.ociBasic, image, { recursive: true });
    await run('chmod', ['-R', 'a+rX', image]);
    cacheHome = path.join(work, 'cache');
    const root = await smart(['pull', '--keep-layers', `oci:${image}:latest`, `rootfs:${path.join(work, 'by-root')}`], { cacheHome });
    expect(root.code, root.stderr).toBe(0);
  }, 60_000);

  it('the user pulls the whole tree, fetching the layers it cannot read, and says so once', async (ctx) => {
    if (!able) return ctx.skip();
    const dest = path.join(work, 'by-user');
    const r = await asUser(['pull', `oci:${image}:latest`, `rootfs:${dest}`]);
    expect(r.code, r.stderr).toBe(0);
    const warnings = r.stderr.split('\n').filter((l) => l.startsWith('warning: '));
    expect(warnings, r.stderr).toHaveLength(1);
    // Its layers/ is root's and 0700 (an image's setuid programs lie there): none can be read.
    expect(warnings[0]).toMatch(/^warning: rootfs:.*: the layer store .* holds layers this user cannot read \(EACCES: permission denied, access '.*\/layers'; kept by another user\?\): they are fetched instead$/);
    expect(await withoutOwners(dest)).toEqual(await withoutOwners(path.join(work, 'by-root')));
    expect(await fs.readFile(path.join(dest, 'etc/secret'), 'utf8')).toBe('not really a secret\n');
  });

  it("a store an earlier version made 0755, not used by its owner since: the user lays what it can read, and fetches the layers holding files it cannot", async (ctx) => {
    if (!able) return ctx.skip();
    const layers = path.join(cacheHome, 'smartlayer', 'layer-store', 'layers');
    await fs.chmod(layers, 0o755);
    try {
      const dest = path.join(work, 'by-user-old-store');
      const r = await asUser(['pull', `oci:${image}:latest`, `rootfs:${dest}`]);
      expect(r.code, r.stderr).toBe(0);
      const warnings = r.stderr.split('\n').filter((l) => l.startsWith('warning: '));
      expect(warnings, r.stderr).toHaveLength(1);
      expect(warnings[0]).toMatch(/^warning: rootfs:.*: the layer store .* holds files this user cannot read \(.*: EACCES: permission denied; kept by another user\?\): such layers are fetched instead$/);
      expect(await withoutOwners(dest)).toEqual(await withoutOwners(path.join(work, 'by-root')));
      // Not the user's to narrow: as it was.
      expect((await fs.stat(layers)).mode & 0o777).toBe(0o755);
    } finally {
      await fs.chmod(layers, 0o700);
    }
  });

  it("a root pull killed while it unpacked a layer leaves it in the store's tmp/, which the user cannot remove: the user's pull goes on", async (ctx) => {
    if (!able) return ctx.skip();
    // What kill -9 leaves: a process (root) that took a layer's lock and began unpacking it into
    // tmp/, then died. Made by the library itself, in a process that exits without cleaning up.
    const layerStore = new URL('../../dist/cache/layer-store.js', import.meta.url).href;
    const store = path.join(cacheHome, 'smartlayer', 'layer-store');
    const script = `const { LayerStore } = await import(${JSON.stringify(layerStore)});
      const fill = await new LayerStore(${JSON.stringify(store)}).claim('sha256:${'ab'.repeat(32)}');
      fill.keepContent(fill.add({ name: 'etc/x', type: 'file', size: 1, mode: 0o600, mtime: new Date(0) }), Buffer.from('x'), { mode: 0o600 }, { uid: 0, gid: 0, atime: 0, mtime: 0 });
      process.exit(0);`;
    const died = await run(process.execPath, ['--input-type=module', '-e', script]);
    expect(died.code, died.stderr).toBe(0);
    const storeTmp = path.join(store, 'tmp');
    expect((await fs.readdir(storeTmp)).length).toBe(1);

    const dest = path.join(work, 'by-user-after-kill');
    const r = await asUser(['pull', `oci:${image}:latest`, `rootfs:${dest}`]);
    expect(r.code, r.stderr).toBe(0);
    expect(await withoutOwners(dest)).toEqual(await withoutOwners(path.join(work, 'by-root')));
    expect((await fs.readdir(storeTmp)).length).toBe(1);
    // Root's leftovers are root's to remove: its next pull does.
    const again = await smart(['pull', `oci:${image}:latest`, `rootfs:${path.join(work, 'by-root-again')}`], { cacheHome });
    expect(again.code, again.stderr).toBe(0);
    expect(await fs.readdir(storeTmp)).toEqual([]);
  });

  it('with --link: the store, which the user cannot write, keeps nothing and is not called another filesystem', async (ctx) => {
    if (!able) return ctx.skip();
    const dest = path.join(work, 'by-user-link');
    const r = await asUser(['pull', '--link', `oci:${image}:latest`, `rootfs:${dest}`]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).not.toMatch(/another filesystem/);
    expect(r.stderr).toMatch(/^warning: rootfs:.*: the layer store .* cannot keep layers \(EACCES: permission denied/m);
    expect(await withoutOwners(dest)).toEqual(await withoutOwners(path.join(work, 'by-root')));
    // The root's store is as it was: nothing removed as damage.
    expect((await fs.readdir(path.join(cacheHome, 'smartlayer', 'layer-store', 'layers'))).length).toBe(fixtures().basic.layers.length);
  });
});
