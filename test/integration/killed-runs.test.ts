/**
 * What runs killed with kill -9 leave, and who removes it: the next pull into the same place
 * removes the tree being built beside the destination and the layer being unpacked in the layer
 * store; the next push into the same repository removes the upload left in its `_uploads` (on disk
 * and in S3), and the next push of a blob the temporary file left beside it. Each says so in
 * --json (`details.cleaned`), and none removes what a live run uses: nor one of a twin machine
 * sharing the store (another boot id, all else the same), which cannot be told from this one rebooted.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixtures } from '../harness/fixtures.js';
import { writeImage } from '../harness/images.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { run, smart, smartBin, type RunResult } from '../harness/run.js';
import { currentOwner, ownerTag } from '../../src/storage/leftovers.js';
import { startS3 } from '../harness/s3.js';
import { haveTools, inCI } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';
import { listAll } from '../harness/tree.js';

interface Cleaned {
  path: string;
  bytes: number;
}

/** A `smart` run in the background, to kill or to feed. */
function background(args: string[], env: NodeJS.ProcessEnv): { child: ChildProcess; exit: Promise<number | null> } {
  const child = spawn(process.execPath, [smartBin, ...args], { stdio: ['pipe', 'ignore', 'ignore'], env: { ...process.env, ...env } });
  child.stdin!.on('error', () => undefined);
  return { child, exit: new Promise((resolve) => child.once('close', (code) => resolve(code))) };
}

async function until(what: string, test: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 400; i++) {
    // What is looked at changes meanwhile (files come and go): a look that fails is a "not yet".
    if (await test().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting until ${what}`);
}

const cleanedOf = (stdout: Buffer): Cleaned[] => (JSON.parse(stdout.toString()) as { details?: { cleaned?: Cleaned[] } }).details?.cleaned ?? [];

describe.skipIf(!haveTools('docker-registry'))('runs killed mid-way, from a registry', () => {
  let work: string;
  let registry: RunningRegistry;
  let proxy: RunningProxy;
  const running: ChildProcess[] = [];

  beforeAll(async () => {
    work = await tempDir();
    registry = await startRegistry({ configDir: work });
    proxy = await startProxy({ target: registry.url });
    const r = await smart(['push', `oci:${fixtures().paths.ociBasic}:latest`, `docker://${registry.host}/basic/app:v1`]);
    expect(r.code, r.stderr).toBe(0);
  });

  afterAll(async () => {
    for (const c of running) c.kill('SIGKILL');
    await proxy?.stop();
    await registry?.stop();
  });

  /** Starts a pull into `dest` that stalls on the image's last layer, and waits until it has built part of the tree and begun unpacking that layer. */
  const stalledPull = async (dest: string, cacheHome: string, extra: string[] = []) => {
    const victim = fixtures().basic.layers[2]!.digest;
    proxy.stats.clear();
    proxy.setFaults((req) => (req.method === 'GET' && req.path.endsWith(victim) ? { kind: 'stall-mid-body', afterBytes: 50, times: 1 } : undefined));
    // Kept in the layer store: the stalled layer is being written there (under tmp/) as well.
    const run = background(['pull', '-q', `docker://${proxy.host}/basic/app:v1`, `rootfs:${dest}`, '--keep-layers', ...extra], { XDG_CACHE_HOME: cacheHome });
    running.push(run.child);
    const parent = path.dirname(dest);
    const store = path.join(cacheHome, 'smartlayer', 'layer-store');
    const tmp = path.join(store, 'tmp');
    const staging = async () => (await fs.readdir(parent)).filter((n) => n.startsWith(`.${path.basename(dest)}.smart-`) && !n.endsWith('.smart-pull.json'));
    // The one layer being unpacked is the stalled one only once the other two are in the store:
    // the first layer makes etc/ as soon as its own unpacking begins (on a loaded machine a poll
    // could see that, and name its tmp/ entry, gone by the kill).
    await until('the pull has built part of the tree and stalls on its last layer', async () => {
      const [s] = await staging();
      return (
        s !== undefined &&
        // The tree is built in rootfs/ of the 0700 staging directory, which no other user enters.
        (await listAll(path.join(parent, s))).some((p) => p.startsWith('rootfs/etc/')) &&
        (await fs.readdir(path.join(store, 'layers'))).length === fixtures().basic.layers.length - 1 &&
        (await fs.readdir(tmp)).length === 1
      );
    });
    return { ...run, staging: path.join(parent, (await staging())[0]!), unpacking: path.join(tmp, (await fs.readdir(tmp))[0]!) };
  };

  it('kill -9 mid-pull: the next pull into the same place removes the half-built tree and the half-unpacked layer, and says so', async () => {
    const cacheHome = await tempDir();
    const parent = path.join(work, 'killed');
    await fs.mkdir(parent);
    const dest = path.join(parent, 'root');
    const victim = await stalledPull(dest, cacheHome);
    // The tree being built (the image's setuid programs too) is out of other users' reach.
    expect((await fs.stat(victim.staging)).mode & 0o777).toBe(0o700);
    victim.child.kill('SIGKILL');
    await victim.exit;
    await expect(fs.stat(dest)).rejects.toThrow(); // no partial destination
    proxy.setFaults(undefined);

    const again = await smart(['pull', `docker://${proxy.host}/basic/app:v1`, `rootfs:${dest}`, '--json'], { cacheHome });
    expect(again.code, again.stderr).toBe(0);
    const cleaned = cleanedOf(again.stdout);
    expect(cleaned.map((c) => c.path).sort()).toEqual([victim.staging, victim.unpacking].sort());
    expect(cleaned.find((c) => c.path === victim.staging)!.bytes).toBeGreaterThan(0);
    expect((await fs.readdir(parent)).sort()).toEqual(['.root.smart-pull.json', 'root']);
    expect(await fs.readdir(path.join(cacheHome, 'smartlayer', 'layer-store', 'tmp'))).toEqual([]);
    expect(await fs.readFile(path.join(dest, 'etc/app.conf'), 'utf8')).toBe('greeting=hi\n');
  });

  it('kill -9 mid-pull into an archive: the next pull of any kind removes the blob half fetched into the layer store', async () => {
    const cacheHome = await tempDir();
    const tmp = path.join(cacheHome, 'smartlayer', 'layer-store', 'tmp');
    const victim = fixtures().basic.layers[2]!.digest;
    proxy.setFaults((req) => (req.method === 'GET' && req.path.endsWith(victim) ? { kind: 'stall-mid-body', afterBytes: 50, times: 1 } : undefined));
    const archive = path.join(work, 'killed.tar');
    const run = background(['pull', '-q', `docker://${proxy.host}/basic/app:v1`, `docker-archive:${archive}`], { XDG_CACHE_HOME: cacheHome });
    running.push(run.child);
    // The one blob being kept is the stalled one only once the other two are kept: on a loaded
    // machine a poll could see the first one mid-write, gone by the kill.
    const kept = path.join(cacheHome, 'smartlayer', 'layer-store', 'blobs', 'sha256');
    await until('the pull stalls on its last blob, being kept', async () => (await fs.readdir(kept)).length === fixtures().basic.layers.length - 1 && (await fs.readdir(tmp)).length === 1);
    const [half] = await fs.readdir(tmp);
    run.child.kill('SIGKILL');
    await run.exit;
    proxy.setFaults(undefined);
    // Into an OCI layout now: a pull that is no root filesystem's sweeps the layer store too (before, only those did).
    const again = await smart(['pull', `docker://${proxy.host}/basic/app:v1`, `oci:${path.join(work, 'killed-layout')}:x`, '--json'], { cacheHome });
    expect(again.code, again.stderr).toBe(0);
    expect(cleanedOf(again.stdout).map((c) => c.path)).toContain(path.join(tmp, half!));
    expect(await fs.readdir(tmp)).toEqual([]);
  });

  it('a pull beside a live one, into the same place and layer store, leaves the live one its tree and its layer; both complete', async () => {
    const cacheHome = await tempDir();
    const dest = path.join(work, 'shared');
    const live = await stalledPull(dest, cacheHome, ['--stall-timeout', '5']);
    // Frozen, its stall timer cannot fire: it stays mid-pull, alive, for as long as the other runs.
    live.child.kill('SIGSTOP');
    expect(proxy.stats.requests.filter((q) => q.fault === 'stall-mid-body')).toHaveLength(1);
    const other = path.join(work, 'other-image');
    await writeImage(other, { layers: [{ files: { 'other.txt': 'other\n' }, createdBy: 'COPY other.txt /' }] });
    const beside = await smart(['pull', `oci:${other}:latest`, `rootfs:${dest}`, '--json'], { cacheHome });
    expect(beside.code, beside.stderr).toBe(0);
    expect(cleanedOf(beside.stdout)).toEqual([]);
    expect(await fs.readFile(path.join(dest, 'other.txt'), 'utf8')).toBe('other\n');
    await fs.stat(live.staging);
    await fs.stat(live.unpacking);

    live.child.kill('SIGCONT'); // its stall timer fires, the download resumes, the pull completes
    expect(await live.exit).toBe(0);
    expect(await fs.readFile(path.join(dest, 'etc/app.conf'), 'utf8')).toBe('greeting=hi\n');
    expect((await fs.readdir(work)).filter((n) => n.startsWith('.shared.'))).toEqual(['.shared.smart-pull.json']);
  });

  it('kill -9 mid-push of a blob whose digest is known: the next push of that blob removes the temporary file beside it', async () => {
    const victim = fixtures().basic.layers[2]!.digest;
    const store = path.join(work, 'blob-store');
    const blobDir = path.join(store, 'docker/registry/v2/blobs/sha256', victim.slice(7, 9), victim.slice(7));
    proxy.setFaults((req) => (req.method === 'GET' && req.path.endsWith(victim) ? { kind: 'stall-mid-body', afterBytes: 50, times: 1 } : undefined));
    const killed = background(['push', '-q', `docker://${proxy.host}/basic/app:v1`, `file:${store}#b/app:1`], { XDG_CACHE_HOME: await tempDir() });
    running.push(killed.child);
    await until('the push is writing the stalled blob', async () => (await fs.readdir(blobDir)).some((n) => n.startsWith('data.tmp-')));
    killed.child.kill('SIGKILL');
    await killed.exit;
    const [left] = await fs.readdir(blobDir);
    proxy.setFaults(undefined);

    const again = await smart(['push', `docker://${proxy.host}/basic/app:v1`, `file:${store}#b/app:1`, '--json'], { cacheHome: await tempDir() });
    expect(again.code, again.stderr).toBe(0);
    // The other blobs, and the repository's links to those done, may have been mid-write too when
    // the push was killed: theirs go as well.
    const cleaned = cleanedOf(again.stdout);
    expect(cleaned).toContainEqual({ path: path.join(blobDir, left!), bytes: expect.any(Number) });
    for (const c of cleaned) expect(path.basename(c.path)).toMatch(/^(data|link)\.tmp-/);
    expect(await fs.readdir(blobDir)).toEqual(['data']);
    expect((await listAll(path.join(store, 'docker/registry/v2'))).filter((p) => p.includes('.tmp-'))).toEqual([]);
  });
});

describe('pushes killed mid-way', () => {
  const archive = async () => fs.readFile(fixtures().paths.dockerArchiveBasic);
  /** The docker-save archive up to 1000 bytes into its first layer: a push fed this is uploading that layer, waiting for more. */
  const midLayer = (bytes: Buffer) => bytes.subarray(0, Math.floor(bytes.indexOf('/layer.tar') / 512) * 512 + 512 + 1000);
  const uploadsOf = (store: string, repo: string) => path.join(store, 'docker/registry/v2/repositories', repo, '_uploads');

  it('kill -9 mid-push into file:, then the next push into the repository removes the upload it left, and says so', async () => {
    const work = await tempDir();
    const store = path.join(work, 'store');
    const killed = background(['push', '-q', 'docker-archive:-', `file:${store}#k/app:1`], { XDG_CACHE_HOME: await tempDir() });
    killed.child.stdin!.write(midLayer(await archive()));
    const uploads = uploadsOf(store, 'k/app');
    await until('the push is writing its first layer', async () => (await listAll(uploads)).some((p) => /^[0-9a-f-]{36}\/data\.tmp-/.test(p)));
    killed.child.kill('SIGKILL');
    await killed.exit;
    const [left] = await fs.readdir(uploads);

    const again = await smart(['push', `docker-archive:${fixtures().paths.dockerArchiveBasic}`, `file:${store}#k/app:1`, '--json'], { cacheHome: await tempDir() });
    expect(again.code, again.stderr).toBe(0);
    expect(cleanedOf(again.stdout)).toEqual([{ path: path.join(uploads, left!), bytes: expect.any(Number) }]);
    expect(await fs.readdir(uploads)).toEqual([]);
  });

  it('an upload a push was killed in while it wrote its owner record (temporary files only): removed by the next push, as its owner is gone', async () => {
    const work = await tempDir();
    const store = path.join(work, 'store');
    expect((await smart(['push', `docker-archive:${fixtures().paths.dockerArchiveBasic}`, `file:${store}#k/tmp:1`], { cacheHome: await tempDir() })).code).toBe(0);
    // What a push killed between the writes and the renames of its first two files leaves: their
    // temporary names, which carry its owner (a process that has ended).
    const ended = spawn(process.execPath, ['-e', '0']);
    await new Promise((resolve) => ended.on('exit', resolve));
    const dead = `${ownerTag({ ...currentOwner(), pid: ended.pid!, start: 1 })}-0a1b2c3d`;
    const left = path.join(uploadsOf(store, 'k/tmp'), '0b1e2f6c-1d2a-4c55-9f0e-3a6b7c8d9e0f');
    await fs.mkdir(left, { recursive: true });
    await fs.writeFile(path.join(left, `smartlayer-owner.tmp-${dead}`), '');
    await fs.writeFile(path.join(left, `startedat.tmp-${dead}`), '');
    const again = await smart(['push', `docker-archive:${fixtures().paths.dockerArchiveBasic}`, `file:${store}#k/tmp:1`, '--json'], { cacheHome: await tempDir() });
    expect(again.code, again.stderr).toBe(0);
    expect(cleanedOf(again.stdout)).toEqual([{ path: left, bytes: 0 }]);
    expect(await fs.readdir(uploadsOf(store, 'k/tmp'))).toEqual([]);
  });

  it('kill -9 mid-stream from oci-archive:- into an oci-archive: file: the file is as it was, and the next run removes the archive it began', async () => {
    const work = await tempDir();
    const file = path.join(work, 'image.tar');
    await fs.writeFile(file, 'an older archive');
    const bytes = await fs.readFile(fixtures().paths.ociArchiveBasic);
    // Up to 100 bytes into the first layer blob: the copy is writing it into the archive, waiting for more.
    const first = fixtures().basic.layers[0]!.digest.slice(7);
    const killed = background(['pull', '-q', 'oci-archive:-', `oci-archive:${file}:v1`], { XDG_CACHE_HOME: await tempDir() });
    killed.child.stdin!.write(bytes.subarray(0, Math.floor(bytes.indexOf(first) / 512) * 512 + 512 + 100));
    const aside = async () => (await fs.readdir(work)).filter((n) => n.startsWith('.image.tar.'));
    await until('the archive is being written beside its file', async () => (await aside()).length > 0);
    killed.child.kill('SIGKILL');
    await killed.exit;
    expect(await fs.readFile(file, 'utf8')).toBe('an older archive');
    const [left] = await aside();

    const again = await smart(['pull', `oci:${fixtures().paths.ociBasic}:latest`, `oci-archive:${file}:v1`, '--json'], { cacheHome: await tempDir() });
    expect(again.code, again.stderr).toBe(0);
    expect(cleanedOf(again.stdout)).toEqual([{ path: path.join(work, left!), bytes: expect.any(Number) }]);
    expect(await aside()).toEqual([]);
  });

  /**
   * A push into `file:STORE#REPO:1` left writing its first layer while `beside` pushes into the same
   * repository (tag 2): that removes nothing of the live push's upload, and both complete.
   */
  const besideLivePush = async (repo: string, beside: (dest: string) => Promise<RunResult>): Promise<void> => {
    const store = path.join(await tempDir(), 'store');
    const bytes = await archive();
    const live = background(['push', '-q', 'docker-archive:-', `file:${store}#${repo}:1`], { XDG_CACHE_HOME: await tempDir() });
    const first = midLayer(bytes);
    live.child.stdin!.write(first);
    const uploads = uploadsOf(store, repo);
    await until('the push is writing its first layer', async () => (await listAll(uploads)).some((p) => /\/data\.tmp-/.test(p)));
    const during = await listAll(uploads);

    const r = await beside(`file:${store}#${repo}:2`);
    expect(r.code, r.stderr.toString()).toBe(0);
    expect(cleanedOf(r.stdout)).toEqual([]);
    expect(await listAll(uploads)).toEqual(during);

    live.child.stdin!.end(bytes.subarray(first.length));
    expect(await live.exit).toBe(0);
    expect(await fs.readdir(uploads)).toEqual([]);
    expect(await fs.readdir(path.join(store, `docker/registry/v2/repositories/${repo}/_manifests/tags`))).toEqual(['1', '2']);
  };

  it('a push beside a live one into the same repository leaves the live one its upload; both complete', async () => {
    await besideLivePush('c/app', (dest) => smart(['push', `oci:${fixtures().paths.ociBasic}:latest`, dest, '--json']));
  });

  describe('beside a live push from a twin machine', () => {
    /**
     * Whether a run can be given another boot id (a bind mount over /proc's, in a mount namespace of
     * its own): root only; under CI it must.
     */
    let twins = false;
    beforeAll(async () => {
      const probe = await run('unshare', ['-m', 'sh', '-c', 'mount --bind /proc/self/stat /proc/sys/kernel/random/boot_id && echo bound']).catch((e: unknown) => ({ code: 1, stdout: Buffer.from(''), stderr: String(e) }));
      twins = probe.code === 0 && probe.stdout.toString().trim() === 'bound';
      if (!twins && inCI) throw new Error(`CI=true but a boot id cannot be bound over /proc's (root, unshare -m): ${probe.stderr.toString()}`);
    });

    /**
     * `smart ARGS` as a twin of this machine runs it (a cloned VM, hosts all called `localhost`):
     * the same host name, PID namespace and machine id, another boot id.
     */
    const onTwin = async (args: string[], env: NodeJS.ProcessEnv) => {
      const mine = (await fs.readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim();
      let other = randomUUID();
      while (other.slice(0, 8) === mine.slice(0, 8)) other = randomUUID();
      const boot = path.join(await tempDir(), 'boot_id');
      await fs.writeFile(boot, `${other}\n`);
      return run('unshare', ['-m', 'sh', '-c', 'mount --bind "$0" /proc/sys/kernel/random/boot_id && exec "$@"', boot, process.execPath, smartBin, ...args], { env: { ...process.env, ...env } });
    };

    it('into file:, it leaves the live one its upload (another boot proves no run dead there); both complete', async (ctx) => {
      if (!twins) return ctx.skip();
      const cacheHome = await tempDir();
      await besideLivePush('t/app', (dest) => onTwin(['push', `oci:${fixtures().paths.ociBasic}:latest`, dest, '--json'], { XDG_CACHE_HOME: cacheHome }));
    });

    it('into s3://, it leaves the live one its owner and start records; both complete', async (ctx) => {
      if (!twins) return ctx.skip();
      const work = await tempDir();
      const s3 = await startS3(path.join(work, 's3'));
      try {
        const keys = async (prefix: string) => ((await s3.client().send(new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: prefix }))).Contents ?? []).map((o) => o.Key!);
        const uploads = 'root/docker/registry/v2/repositories/t/app/_uploads/';
        const bytes = await archive();
        const live = background(['push', '-q', 'docker-archive:-', `s3://${s3.bucket}/root#t/app:1`], { ...s3.env, XDG_CACHE_HOME: await tempDir() });
        const first = midLayer(bytes);
        live.child.stdin!.write(first);
        const opened = async () => (await keys(uploads)).filter((k) => /\/(smartlayer-owner|startedat)$/.test(k));
        await until('the push has opened its first upload', async () => (await opened()).length === 2);
        const during = await opened();

        const twin = await onTwin(['push', `oci:${fixtures().paths.ociBasic}:latest`, `s3://${s3.bucket}/root#t/app:2`, '--json'], { ...s3.env, XDG_CACHE_HOME: await tempDir() });
        expect(twin.code, twin.stderr.toString()).toBe(0);
        expect(cleanedOf(twin.stdout)).toEqual([]);
        expect(await opened()).toEqual(during);

        live.child.stdin!.end(bytes.subarray(first.length));
        expect(await live.exit).toBe(0);
        expect(await keys(uploads)).toEqual([]);
      } finally {
        await s3.stop();
      }
    });
  });

  it('kill -9 mid-push into s3://, then the next push into the repository removes the upload keys it left', async () => {
    const work = await tempDir();
    const s3 = await startS3(path.join(work, 's3'));
    try {
      const keys = async (prefix: string) => ((await s3.client().send(new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: prefix }))).Contents ?? []).map((o) => o.Key!);
      const dest = `s3://${s3.bucket}/root#k/app:1`;
      const uploads = 'root/docker/registry/v2/repositories/k/app/_uploads/';
      const killed = background(['push', '-q', 'docker-archive:-', dest], { ...s3.env, XDG_CACHE_HOME: await tempDir() });
      killed.child.stdin!.write(midLayer(await archive()));
      await until('the push has opened its first upload', async () => (await keys(uploads)).some((k) => k.endsWith('/smartlayer-owner')) && (await keys(uploads)).some((k) => k.endsWith('/startedat')));
      killed.child.kill('SIGKILL');
      await killed.exit;
      const left = await keys(uploads);
      expect(left.length).toBeGreaterThanOrEqual(2);

      const again = await smart(['push', `docker-archive:${fixtures().paths.dockerArchiveBasic}`, dest, '--json'], { cacheHome: await tempDir(), env: s3.env });
      expect(again.code, again.stderr).toBe(0);
      const id = left[0]!.slice(uploads.length).split('/')[0]!;
      expect(cleanedOf(again.stdout)).toEqual([{ path: `s3://${s3.bucket}/${uploads}${id}`, bytes: expect.any(Number) }]);
      expect(await keys(uploads)).toEqual([]);
    } finally {
      await s3.stop();
    }
  });
});

describe.skipIf(!haveTools('strace'))('a pull killed as it replaces a tree', () => {
  it('leaves a tree at the destination, never none: the new one takes the old one\'s name in one step (renameat2 RENAME_EXCHANGE)', async () => {
    const work = await tempDir();
    const cacheHome = path.join(work, 'cache');
    const fx = fixtures();
    for (const kind of ['rootfs', 'bundle']) {
      const dest = path.join(work, kind);
      const first = await smart(['pull', '-q', `oci:${fx.paths.ociBasic}:latest`, `${kind}:${dest}`], { cacheHome });
      expect(first.code, first.stderr).toBe(0);
      // Killed at the first rename that names the destination: there was one, moving the old tree
      // aside before the new one came, and a kill there left no directory at all.
      const again = await run('strace', ['-f', '-qq', '-o', '/dev/null', '-P', dest, '-e', 'trace=rename', '-e', 'inject=rename:signal=KILL', process.execPath, smartBin, 'pull', '-q', `oci:${fx.paths.ociBasic}:latest`, `${kind}:${dest}`], {
        env: { ...process.env, XDG_CACHE_HOME: cacheHome },
      });
      expect(again.code, again.stderr).toBe(0);
      const rootfs = kind === 'bundle' ? path.join(dest, 'rootfs') : dest;
      expect(await fs.readFile(path.join(rootfs, 'etc/app.conf'), 'utf8'), kind).toBe('greeting=hi\n');
      // The old tree, moved aside after the exchange, is gone.
      expect((await fs.readdir(work)).filter((n) => n.startsWith(`.${kind}.smart-`) && !n.endsWith('.smart-pull.json'))).toEqual([]);
    }
  });
});
