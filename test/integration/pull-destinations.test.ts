/**
 * What a pull into `rootfs:` or `bundle:` may replace: a new or empty directory, or a previous
 * result of a pull (marked); any other non-empty directory only with --force; never the source
 * (an OCI layout, an archive, a `file:` store), a directory holding it or one inside it, the layer
 * store, nor the current directory: real paths compared, so a symlinked parent is no way round.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { beforeAll, describe, expect, it, inject } from 'vitest';
import { fixtures } from '../harness/fixtures.js';
import { run, smart, smartBin, testCacheHome, type RunResult } from '../harness/run.js';
import { writeImage, writeImageOfTars } from '../harness/images.js';
import { tarOf } from '../harness/tar-read.js';
import { isRoot } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';
import { listAll } from '../harness/tree.js';

function expectRefused(r: RunResult, pattern: RegExp): void {
  expect(r.code, r.stderr).toBe(2);
  const lines = r.stderr.trim().split('\n');
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(/^smart: error \[[A-Z_]+\]: /);
  expect(lines[0]).toMatch(pattern);
}

/** `smart ARGS` run from `cwd`. */
function smartIn(cwd: string, args: string[]): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [smartBin, ...args], {
      cwd,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, XDG_CACHE_HOME: testCacheHome(), CONTAINERS_REGISTRIES_CONF: inject('registriesConf') },
    });
    const out: Buffer[] = [];
    let err = '';
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code: code ?? 1, stdout: Buffer.concat(out), stderr: err }));
  });
}

describe('pull destinations', () => {
  let work: string;
  let store: string;
  const image = () => `file:${store}#demo/basic:v1`;

  beforeAll(async () => {
    work = await tempDir();
    store = path.join(work, 'store');
    const r = await smart(['push', `oci:${fixtures().paths.ociBasic}:latest`, image()]);
    expect(r.code, r.stderr).toBe(0);
  });

  it('refuses a non-empty directory that no pull made, in one line naming it with a hint of --force; --force replaces it', async () => {
    for (const transport of ['rootfs', 'bundle']) {
      const dir = path.join(work, `mine-${transport}`);
      await fs.mkdir(path.join(dir, 'notes'), { recursive: true });
      await fs.writeFile(path.join(dir, 'notes', 'todo.txt'), 'precious\n');
      const r = await smart(['pull', image(), `${transport}:${dir}`]);
      expectRefused(r, new RegExp(`${transport}:.*${dir}.* is not empty and was not made by smart pull.*--force`));
      expect(await fs.readFile(path.join(dir, 'notes', 'todo.txt'), 'utf8')).toBe('precious\n');
      expect((await fs.readdir(work)).filter((n) => n.startsWith(`.mine-${transport}.`))).toEqual([]);

      const forced = await smart(['pull', image(), `${transport}:${dir}`, '--force']);
      expect(forced.code, forced.stderr).toBe(0);
      await expect(fs.stat(path.join(dir, 'notes'))).rejects.toThrow();
      const rootfs = transport === 'bundle' ? path.join(dir, 'rootfs') : dir;
      expect(await fs.readFile(path.join(rootfs, 'etc/app.conf'), 'utf8')).toBe('greeting=hi\n');
    }
  });

  it('replaces a new directory, an empty one and its own previous results; a directory made again in place of one is not one', async () => {
    const rootfs = path.join(work, 'r');
    const bundle = path.join(work, 'b');
    await fs.mkdir(bundle); // empty
    for (let i = 0; i < 2; i++) {
      for (const dest of [`rootfs:${rootfs}`, `bundle:${bundle}`]) {
        const r = await smart(['pull', image(), dest]);
        expect(r.code, `${dest}: ${r.stderr}`).toBe(0);
      }
    }
    // The marks: inside a bundle beside config.json; beside a root filesystem, never in the tree a container sees.
    expect((await fs.readdir(bundle)).sort()).toEqual(['.smart-pull.json', 'config.json', 'rootfs']);
    expect((await listAll(rootfs)).filter((p) => p.includes('smart'))).toEqual([]);
    expect((await fs.readdir(work)).filter((n) => n.startsWith('.r.') || n.startsWith('.b.'))).toEqual(['.r.smart-pull.json']);
    // The user removes the root filesystem and makes a directory of their own there: it is theirs.
    await fs.rm(rootfs, { recursive: true });
    await fs.mkdir(rootfs);
    await fs.writeFile(path.join(rootfs, 'mine.txt'), 'mine\n');
    expectRefused(await smart(['pull', image(), `rootfs:${rootfs}`]), /is not empty and was not made by smart pull/);
    expect(await fs.readFile(path.join(rootfs, 'mine.txt'), 'utf8')).toBe('mine\n');
  });

  it("replaces its own bundle only while it holds nothing the pull did not make: a file beside config.json, or config.json edited, is named and kept; --force replaces it", async () => {
    const bundle = path.join(work, 'edited');
    const pull = (...extra: string[]) => smart(['pull', image(), `bundle:${bundle}`, ...extra]);
    expect((await pull()).code).toBe(0);
    const configFile = path.join(bundle, 'config.json');
    const written = await fs.readFile(configFile, 'utf8');
    // As runc bundles are used: a mount added to the config, notes kept beside it.
    const config = JSON.parse(written) as { mounts: unknown[] };
    config.mounts.push({ destination: '/data', type: 'bind', source: '/srv/data', options: ['rbind'] });
    const edited = `${JSON.stringify(config, null, 2)}\n`;
    await fs.writeFile(configFile, edited);
    await fs.writeFile(path.join(bundle, 'notes.txt'), 'x\n');
    expectRefused(await pull(), new RegExp(`bundle:.*${bundle}.*would be lost: notes\\.txt, config\\.json \\(changed since the pull wrote it\\).*--force`));
    expect(await fs.readFile(configFile, 'utf8')).toBe(edited);
    expect(await fs.readFile(path.join(bundle, 'notes.txt'), 'utf8')).toBe('x\n');
    await fs.rm(path.join(bundle, 'notes.txt'));
    expectRefused(await pull(), /would be lost: config\.json \(changed since the pull wrote it\) \(.*--force/);
    // The config as the pull wrote it again, byte for byte: nothing is lost, the bundle is replaced.
    await fs.writeFile(configFile, written);
    expect((await pull()).code).toBe(0);
    expect((await fs.readdir(bundle)).sort()).toEqual(['.smart-pull.json', 'config.json', 'rootfs']);

    // A bundle an earlier version made: its mark has no digest of the config, which goes by its time.
    const markFile = path.join(bundle, '.smart-pull.json');
    const { config: _digest, ...oldMark } = JSON.parse(await fs.readFile(markFile, 'utf8')) as Record<string, unknown>;
    await fs.writeFile(markFile, JSON.stringify(oldMark)); // after the config, as that pull wrote them
    expect((await pull()).code).toBe(0);
    await fs.writeFile(markFile, JSON.stringify(oldMark));
    await fs.writeFile(configFile, edited);
    await fs.utimes(configFile, new Date(), new Date(Date.now() + 10_000)); // edited later, whatever the clock's tick
    expectRefused(await pull(), /would be lost: config\.json \(changed since the pull wrote it\)/);

    const forced = await pull('--force');
    expect(forced.code, forced.stderr).toBe(0);
    expect(await fs.readFile(configFile, 'utf8')).toBe(written);
  });

  it('never replaces the source, a directory holding it or one inside it, nor the layer store, even with --force', async () => {
    const fx = fixtures();
    const holder = path.join(work, 'sources');
    const layout = path.join(holder, 'layout');
    await fs.cp(fx.paths.ociBasic, layout, { recursive: true });
    const ociArchive = path.join(holder, 'image.oci.tar');
    const dockerArchive = path.join(holder, 'image.docker.tar');
    await fs.copyFile(fx.paths.ociArchiveBasic, ociArchive);
    await fs.copyFile(fx.paths.dockerArchiveBasic, dockerArchive);
    const storeParent = path.join(work, 'stores');
    const store2 = path.join(storeParent, 'store');
    expect((await smart(['push', `oci:${layout}:latest`, `file:${store2}#demo/basic:v1`])).code).toBe(0);
    const before = await listAll(work);

    const cases: [string, string, RegExp][] = [
      [`oci:${layout}:latest`, layout, /which holds the source layout/],
      [`oci:${layout}:latest`, holder, /which holds the source layout/],
      [`oci:${layout}:latest`, path.join(layout, 'blobs', 'unpacked'), /which lies inside the source layout/],
      [`oci-archive:${ociArchive}:latest`, holder, /which holds the source archive/],
      [`docker-archive:${dockerArchive}`, holder, /which holds the source archive/],
      [`file:${store2}#demo/basic:v1`, store2, /which holds the source store/],
      [`file:${store2}#demo/basic:v1`, storeParent, /which holds the source store/],
      [`file:${store2}#demo/basic:v1`, path.join(store2, 'docker', 'unpacked'), /which lies inside the source store/],
    ];
    for (const [src, dir, pattern] of cases) {
      expectRefused(await smart(['pull', src, `rootfs:${dir}`]), pattern);
      expectRefused(await smart(['pull', src, `bundle:${dir}`, '--force']), pattern);
    }
    const layerStore = path.join(work, 'layer-store');
    expectRefused(await smart(['pull', image(), `rootfs:${work}`, '--layer-store', layerStore, '--force']), /which holds the source store|which holds the layer store/);
    expectRefused(await smart(['pull', image(), `rootfs:${path.join(layerStore, 'x')}`, '--layer-store', layerStore]), /which lies inside the layer store/);
    expect(await listAll(work)).toEqual(before);
  });

  it('compares real paths: a symlinked parent leads neither to the source nor to the current directory', async () => {
    const fx = fixtures();
    const real = path.join(work, 'real');
    const layout = path.join(real, 'layout');
    await fs.mkdir(path.join(real, 'here', 'deeper'), { recursive: true });
    await fs.cp(fx.paths.ociBasic, layout, { recursive: true });
    const link = path.join(work, 'link');
    await fs.symlink(real, link);
    const before = await listAll(real);
    expectRefused(await smart(['pull', `oci:${layout}:latest`, `rootfs:${path.join(link, 'layout')}`]), /which holds the source layout/);
    // From real/here/deeper, link/here is the directory holding the current one.
    expectRefused(await smartIn(path.join(real, 'here', 'deeper'), ['pull', image(), `rootfs:${path.join(link, 'here')}`]), /holds the current directory/);
    expectRefused(await smartIn(path.join(real, 'here'), ['pull', image(), 'rootfs:../../link/here', '--force']), /holds the current directory/);
    expect(await listAll(real)).toEqual(before);
    // A destination under the current directory is what a user means by rootfs:./x.
    const r = await smartIn(path.join(real, 'here'), ['pull', image(), 'rootfs:./x']);
    expect(r.code, r.stderr).toBe(0);
    expect(await fs.readFile(path.join(real, 'here', 'x', 'etc/app.conf'), 'utf8')).toBe('greeting=hi\n');
  });
});

describe('the root of a pulled tree', () => {
  it('is 0755 whatever the umask, when the image does not set it (no ./ entry), as Docker\'s is; a bundle is 0700, as umoci makes it', async () => {
    const work = await tempDir();
    const image = path.join(work, 'image');
    await writeImage(image, { layers: [{ files: { 'etc/app.conf': 'x\n' }, createdBy: 'COPY app.conf /etc/' }] });
    for (const kind of ['rootfs', 'bundle']) {
      const dest = path.join(work, kind);
      const r = await run('sh', ['-c', `umask 027; exec "${process.execPath}" "${smartBin}" pull -q oci:${image}:latest ${kind}:${dest}`], { env: { ...process.env, XDG_CACHE_HOME: path.join(work, 'cache') } });
      expect(r.code, r.stderr).toBe(0);
      const root = kind === 'bundle' ? path.join(dest, 'rootfs') : dest;
      expect((await fs.stat(root)).mode & 0o7777, kind).toBe(0o755);
      if (kind === 'bundle') expect((await fs.stat(dest)).mode & 0o7777).toBe(0o700);
    }
  });
});

describe("an image's setuid-root program, pulled into a shared directory", () => {
  it('is out of other users\' reach in the layer store (an earlier version\'s 0755 one narrowed) and in a bundle; a root filesystem keeps the image\'s root mode', async (ctx) => {
    // Another user, and files owned by root: as root only.
    if (!isRoot) return ctx.skip();
    const work = await tempDir();
    await fs.chmod(work, 0o755); // a directory every user may look into, as /var/cache or /srv
    const image = path.join(work, 'image');
    const id = await fs.readFile('/usr/bin/id');
    await writeImageOfTars(image, [
      await tarOf([
        { name: './', type: 'directory', mode: 0o755 },
        { name: 'usr/', type: 'directory', mode: 0o755 },
        { name: 'usr/bin/', type: 'directory', mode: 0o755 },
        { name: 'usr/bin/id', body: id, mode: 0o4755 },
      ]),
    ]);
    // A store an earlier version made: every directory 0755.
    const store = path.join(work, 'layer-store');
    for (const dir of ['layers', 'tmp']) {
      await fs.mkdir(path.join(store, dir), { recursive: true });
      await fs.chmod(path.join(store, dir), 0o755);
    }
    const bundle = path.join(work, 'app');
    const rootfs = path.join(work, 'root');
    for (const dest of [`bundle:${bundle}`, `rootfs:${rootfs}`]) {
      const r = await smart(['pull', '--layer-store', store, '--keep-layers', `oci:${image}:latest`, dest], { cacheHome: path.join(work, 'cache') });
      expect(r.code, r.stderr).toBe(0);
    }
    const stored = (await listAll(path.join(store, 'layers'))).filter((p) => p.includes('/files/'));
    expect(stored).toHaveLength(1);
    const inStore = path.join(store, 'layers', stored[0]!);
    const inBundle = path.join(bundle, 'rootfs', 'usr/bin/id');
    // Root reaches them, setuid: they are the image's.
    for (const file of [inStore, inBundle, path.join(rootfs, 'usr/bin/id')]) expect((await fs.stat(file)).mode & 0o7777, file).toBe(0o4755);
    expect((await fs.stat(path.join(store, 'layers'))).mode & 0o777).toBe(0o700);
    expect((await fs.stat(path.join(store, 'tmp'))).mode & 0o777).toBe(0o700);
    expect((await fs.stat(bundle)).mode & 0o777).toBe(0o700);
    expect((await fs.stat(rootfs)).mode & 0o777).toBe(0o755);
    // nobody neither finds nor runs them (in a shell as nobody: setpriv resolves its own command with root's capabilities still held).
    const asNobody = (script: string) => run('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'sh', '-c', script]);
    for (const file of [inStore, inBundle]) {
      const r = await asNobody(`test -e '${file}' && echo reached; '${file}'`);
      expect(r.stdout.toString(), file).not.toMatch(/reached|euid=0/);
      expect(r.stderr, file).toMatch(/Permission denied/);
    }
    // The root filesystem is the image's tree where the user asked for it: reached as the image makes it.
    expect((await asNobody(`test -x '${path.join(rootfs, 'usr/bin/id')}' && echo reached`)).stdout.toString()).toBe('reached\n');
  });
});
