/**
 * The Dockerfile builds, offline: buildah (daemonless, chroot isolation, vfs storage) builds the
 * project's own image on a Node base this test makes from the machine's Node (its binary and
 * shared libraries, npm, busybox for /bin/sh), and the image's `smart` runs and pushes an image.
 * Nothing is pulled from a registry: the base comes in through the Dockerfile's NODE_IMAGE build
 * argument, INSTALL_PACKAGES=0 skips apt-get, and the build's `npm ci` reads this machine's npm
 * cache (filled by the `npm ci` that installed the project) through a throwaway overlay.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { fixtures } from '../harness/fixtures.js';
import { repoRoot, run, runOk } from '../harness/run.js';
import { haveTools, isRoot } from '../harness/tools.js';

const version = (JSON.parse(await fs.readFile(path.join(repoRoot, 'package.json'), 'utf8')) as { version: string }).version;

/** The shared libraries a binary loads, as `ldd` resolves them (none for a static binary). */
function sharedLibraries(binary: string): string[] {
  let out: string;
  try {
    out = execFileSync('ldd', [binary], { encoding: 'utf8' });
  } catch {
    return [];
  }
  return [...out.matchAll(/(?:=>\s*)?(\/\S+)\s+\(0x/g)].map((m) => m[1]!);
}

/** npm's own package directory: the one running this test, else the one beside node. */
async function npmDir(node: string): Promise<string> {
  const cli = process.env.npm_execpath;
  if (cli && path.basename(cli) === 'npm-cli.js') return path.dirname(path.dirname(await fs.realpath(cli)));
  return path.join(path.dirname(node), '..', 'lib', 'node_modules', 'npm');
}

/** The tree of a minimal Node base: node and its libraries, npm, busybox as /bin/sh and the few tools the Dockerfile's RUN steps call. */
async function stageNodeBase(root: string): Promise<void> {
  const node = await fs.realpath(process.execPath);
  const put = async (from: string, to: string) => {
    await fs.mkdir(path.dirname(path.join(root, to)), { recursive: true });
    // A library is often a symlink to a versioned file: copy the file under the name that is loaded.
    await fs.cp(await fs.realpath(from), path.join(root, to), { recursive: true, verbatimSymlinks: true });
  };
  await put(node, '/usr/local/bin/node');
  for (const lib of sharedLibraries(node)) await put(lib, lib);
  await put(await npmDir(node), '/usr/local/lib/node_modules/npm');
  await fs.symlink('../lib/node_modules/npm/bin/npm-cli.js', path.join(root, 'usr/local/bin/npm'));
  await put('/bin/busybox', '/bin/busybox');
  for (const applet of ['sh', 'env', 'rm', 'mkdir', 'ln', 'ls', 'cat', 'cp', 'mv', 'chmod']) await fs.symlink('busybox', path.join(root, 'bin', applet));
  await fs.mkdir(path.join(root, 'usr/bin'), { recursive: true });
  await fs.symlink('/bin/busybox', path.join(root, 'usr/bin/env'));
  await fs.mkdir(path.join(root, 'etc'));
  await fs.writeFile(path.join(root, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  await fs.writeFile(path.join(root, 'etc/group'), 'root:x:0:\n');
  await fs.mkdir(path.join(root, 'root'));
  await fs.mkdir(path.join(root, 'tmp'), { mode: 0o1777 });
  await fs.chmod(path.join(root, 'tmp'), 0o1777);
}

describe.skipIf(!haveTools('buildah', 'busybox') || !isRoot)('the container image (Dockerfile)', () => {
  it('builds offline on a given Node base, and its smart runs and pushes', { timeout: 600_000 }, async () => {
    // buildah names a base image after its whole path, which must then be lowercase (mkdtemp's is not).
    const work = path.join(os.tmpdir(), `smart-image-${randomBytes(6).toString('hex')}`);
    await fs.mkdir(work);
    const storage = ['--root', path.join(work, 'root'), '--runroot', path.join(work, 'runroot'), '--storage-driver', 'vfs'];
    try {
      const staged = path.join(work, 'base-tree');
      await stageNodeBase(staged);
      const base = path.join(work, 'base');
      const scratch = (await runOk('buildah', [...storage, 'from', 'scratch'])).stdout.toString().trim();
      await runOk('buildah', [...storage, 'copy', scratch, `${staged}/`, '/']);
      await runOk('buildah', [
        ...storage,
        'config',
        ...['--env', 'PATH=/usr/local/bin:/usr/bin:/bin'],
        // npm never reaches a registry: the cache mounted at /npm-cache has every package of the lock file.
        ...['--env', 'npm_config_cache=/npm-cache', '--env', 'npm_config_offline=true', '--env', 'npm_config_update_notifier=false'],
        ...['--cmd', 'node'],
        scratch,
      ]);
      await runOk('buildah', [...storage, 'commit', '--quiet', scratch, `oci:${base}:node`]);
      await runOk('buildah', [...storage, 'rm', scratch]);
      await fs.rm(staged, { recursive: true });

      const npmCache = process.env.npm_config_cache ?? execFileSync('npm', ['config', 'get', 'cache'], { encoding: 'utf8' }).trim();
      const built = await run('buildah', [
        ...storage,
        'bud',
        '--isolation',
        'chroot',
        ...['--build-arg', `NODE_IMAGE=oci:${base}:node`, '--build-arg', 'INSTALL_PACKAGES=0'],
        // :O, an overlay: npm writes to its cache as it reads; the machine's cache stays as it was.
        ...['--volume', `${npmCache}:/npm-cache:O`],
        ...['-t', 'localhost/smartlayer-image-test:1', repoRoot],
      ]);
      expect(built.code, `buildah bud failed (its npm ci reads ${npmCache}, which the project's own npm ci fills):\n${built.stdout.toString().slice(-4000)}\n${built.stderr}`).toBe(0);

      const ctr = (await runOk('buildah', [...storage, 'from', 'localhost/smartlayer-image-test:1'])).stdout.toString().trim();
      const inImage = (args: string[], volumes: string[] = []) => run('buildah', [...storage, 'run', '--isolation', 'chroot', ...volumes.flatMap((v) => ['--volume', v]), ctr, '--', ...args]);
      for (const bin of ['smart', 'smartlayer']) {
        const r = await inImage([bin, '--version']);
        expect(r.code, r.stderr).toBe(0);
        expect(r.stdout.toString()).toBe(`${version}\n`);
      }

      // A push loads what --version does not (the copy engine, the archive reader, the store): the pruned node_modules must hold it.
      const store = path.join(work, 'store');
      await fs.mkdir(store);
      const archive = fixtures().paths.dockerArchiveBasic;
      const pushed = await inImage(
        ['smart', 'push', '--json', `docker-archive:/in/${path.basename(archive)}`, 'file:/store#team/app:1'],
        [`${path.dirname(archive)}:/in:ro`, `${store}:/store`],
      );
      expect(pushed.code, pushed.stderr).toBe(0);
      const summary = JSON.parse(pushed.stdout.toString()) as { manifestDigest: string };
      const tag = await fs.readFile(path.join(store, 'docker/registry/v2/repositories/team/app/_manifests/tags/1/current/link'), 'utf8');
      expect(tag).toBe(summary.manifestDigest);
    } finally {
      await run('buildah', [...storage, 'rm', '--all']).catch(() => undefined);
      await run('buildah', [...storage, 'rmi', '--all', '--force']).catch(() => undefined);
      await fs.rm(work, { recursive: true, force: true });
    }
  });
});
