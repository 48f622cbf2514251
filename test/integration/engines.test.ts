/**
 * The compression engines as a user meets them, driving the built CLI: `smart version --verbose`
 * (and `--json`) says what a push will use and why; a package whose addon is missing (its build
 * failed, as on a machine without the -dev headers) compresses with zlib and warns once, with the
 * command that builds it, while SMART_NATIVE=0 (a choice) stays quiet; and the bytes of a pushed
 * image do not depend on the number of cores the process may use (taskset).
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import tar from 'tar-stream';
import { fixtures } from '../harness/fixtures.js';
import { layerTar } from '../harness/images.js';
import { repoRoot, run, smart, type RunResult } from '../harness/run.js';
import { haveTools, inCI } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';

type VersionDoc = {
  schemaVersion: number;
  command: string;
  version: string;
  node: { version: string; path: string };
  native: { loaded: boolean; disabled: boolean; libdeflate?: string; zstd?: string; isal?: string; reason?: string; fix?: string; path: string };
  gzip: { engine: string; implementation: string; level: number; blockSize: number; concurrency: number; why: string };
  gzipFast: { engine: string; implementation: string | null; level: number; why: string };
  zstd: { implementation: string | null; level: number; workers: number; why: string };
  gunzip: { engine: string; implementation: string; why: string };
  sha256: { where: string; why: string };
  smallFiles: { how: string; why: string };
  cores: number;
  coresWhy: string;
  malloc: { hugePages: boolean; why: string };
  compileCache: { on: boolean; by?: string; dir?: string; why: string };
};

const warnings = (r: RunResult) => r.stderr.split('\n').filter((l) => l.startsWith('warning: '));

/** The README with its line breaks as spaces, as a quote in it reads. */
const readmeText = async () => (await fs.readFile(path.join(repoRoot, 'README.md'), 'utf8')).replace(/\s*\n\s*/g, ' ');

/** A copy of the installed package (bin, dist, package.json, its node_modules) without the built addon. */
async function packageWithoutAddon(dir: string, { clone }: { clone: boolean }): Promise<string> {
  for (const d of ['bin', 'dist']) await fs.cp(path.join(repoRoot, d), path.join(dir, d), { recursive: true });
  await fs.copyFile(path.join(repoRoot, 'package.json'), path.join(dir, 'package.json'));
  await fs.symlink(path.join(repoRoot, 'node_modules'), path.join(dir, 'node_modules'));
  await fs.mkdir(path.join(dir, 'native'));
  // The build script without the C source: the compiler fails, as it does without the headers.
  await fs.copyFile(path.join(repoRoot, 'native', 'build.mjs'), path.join(dir, 'native', 'build.mjs'));
  if (clone) await fs.cp(path.join(repoRoot, 'scripts'), path.join(dir, 'scripts'), { recursive: true });
  const build = await run(process.execPath, [path.join(dir, 'native', 'build.mjs')], { cwd: dir });
  expect(build.code).toBe(0);
  expect(build.stderr).toMatch(/^smartlayer: native compressor not built \(the compiler failed: .*\); gzip will use Node's zlib \(slower\)/);
  return path.join(dir, 'bin', 'smart.js');
}

/** `docker save` output of one image whose one layer spans several compression blocks (zlib's 1 MiB, libdeflate's 4 MiB). */
async function bigDockerArchive(file: string): Promise<void> {
  let text = '';
  let x = 7;
  const words = ['layer', 'blob', 'digest', 'manifest', 'config', 'registry', 'gzip', 'zstd', 'core', 'block'];
  while (text.length < 13 * 1024 * 1024) {
    x = (x * 1103515245 + 12345) >>> 0;
    text += `${words[x % 10]}${x % 997} `;
  }
  const layer = await layerTar({ 'data/words.txt': text });
  const { createHash } = await import('node:crypto');
  const diffId = `sha256:${createHash('sha256').update(layer).digest('hex')}`;
  const config = JSON.stringify({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: [diffId] }, history: [{ created_by: 'words' }] });
  const pack = tar.pack();
  pack.entry({ name: 'layer/layer.tar' }, layer);
  pack.entry({ name: 'config.json' }, config);
  pack.entry({ name: 'manifest.json' }, JSON.stringify([{ Config: 'config.json', RepoTags: ['big:1'], Layers: ['layer/layer.tar'] }]));
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack as unknown as AsyncIterable<Buffer>) chunks.push(c);
  await fs.writeFile(file, Buffer.concat(chunks));
}

describe('smart version', () => {
  it('prints the version alone, as --version does', async () => {
    const plain = await smart(['version']);
    const flag = await smart(['--version']);
    expect(plain.code).toBe(0);
    expect(plain.stdout.toString()).toBe('0.1.0\n');
    expect(flag.stdout.toString()).toBe(plain.stdout.toString());
  });

  it('--verbose: Node, the addon, the gzip engine auto uses and why, the zstd engine, the cores; --json the same as a document', async () => {
    const text = await smart(['version', '--verbose']);
    expect(text.code).toBe(0);
    const lines = text.stdout.toString().trimEnd().split('\n');
    const doc = JSON.parse((await smart(['version', '--json'])).stdout.toString()) as VersionDoc;
    expect(doc).toMatchObject({ schemaVersion: 1, command: 'version', version: '0.1.0', node: { version: process.versions.node, path: process.execPath } });
    expect(lines[0]).toBe('smart 0.1.0');
    expect(lines[1]).toBe(`node: ${process.versions.node} (${process.execPath})`);
    if (inCI) expect(doc.native.loaded, 'CI builds the addon').toBe(true);
    if (doc.native.loaded && doc.native.libdeflate) {
      const isal = doc.native.isal ? `, isa-l ${doc.native.isal}` : '';
      expect(lines[2]).toBe(`native addon: loaded (libdeflate ${doc.native.libdeflate}, zstd ${doc.native.zstd}${isal}) from ${path.join(repoRoot, 'native', 'build', 'smartlayer.node')}`);
      expect(doc.gzip).toMatchObject({ engine: 'libdeflate', implementation: `in-process ${doc.native.libdeflate}`, level: 1, blockSize: 4 * 1024 * 1024, why: 'the native addon has libdeflate' });
      expect(lines[3]).toBe(`gzip engine (auto): libdeflate, in-process ${doc.native.libdeflate}, level 1, 4.00 MiB blocks, ${doc.gzip.concurrency} at once; because the native addon has libdeflate`);
      if (inCI) expect(doc.native.isal, 'CI builds the addon with ISA-L (libisal-dev)').toBeDefined();
      if (doc.native.isal) {
        expect(doc.gzipFast).toEqual({ engine: 'igzip', implementation: `in-process isa-l ${doc.native.isal}`, level: 1, why: 'the native addon has ISA-L' });
        expect(lines[4]).toBe(`gzip engine (--compression-level fast): igzip, in-process isa-l ${doc.native.isal}, level 1; because the native addon has ISA-L`);
      }
      expect(doc.zstd).toMatchObject({ implementation: `in-process ${doc.native.zstd}`, level: 3, workers: doc.cores });
      expect(lines[5]).toBe(`zstd engine: in-process ${doc.native.zstd}, level 3, ${doc.cores} worker${doc.cores === 1 ? '' : 's'}; because the native addon has libzstd`);
    }
    if (doc.native.isal) {
      // With ISA-L in the addon, pulls inflate in the process: no igzip process per layer.
      expect(doc.gunzip).toMatchObject({ engine: 'isal', implementation: `in-process isa-l ${doc.native.isal}, on the thread pool` });
      expect(lines[6]).toBe(`gunzip engine (pulls): isal, in-process isa-l ${doc.native.isal}, on the thread pool; because ${doc.gunzip.why}`);
    } else if (haveTools('igzip')) expect(lines[6]).toMatch(/^gunzip engine \(pulls\): igzip, \/.*igzip; because igzip is on PATH/);
    // Node's own OpenSSL is there in every Node this supports; CI's addon finds it.
    if (inCI) expect(doc.sha256.where, 'CI hashes on the thread pool').toBe('thread pool');
    expect(lines[7]).toBe(`sha256 checks (pulls): on the ${doc.sha256.where}; because ${doc.sha256.why}`);
    // The addon built from this source makes small files in runs and batches.
    if (inCI) expect(doc.smallFiles.how, 'CI builds the addon of this version').toBe('runs and batches');
    // And its runs keep a bundle's layers too.
    if (inCI) expect(doc.smallFiles.why).toContain("a kept layer's copies and index lines with them");
    if (inCI) expect(doc.smallFiles.why).toContain("a layer laid from the layer store has its runs made from the store's index lines");
    expect(lines[8]).toBe(`small files (rootfs:, bundle:): ${doc.smallFiles.how}; because ${doc.smallFiles.why}`);
    expect(doc.cores).toBeGreaterThanOrEqual(1);
    expect(lines[9]).toBe(`cores for compression: ${doc.cores}; because ${doc.coresWhy}`);
    // Started by `node bin/smart.js` (as the harness does), not by the command's sh line.
    expect(doc.malloc).toEqual({ hugePages: false, why: 'GLIBC_TUNABLES is not set (Node was started without bin/smart, e.g. by `node bin/smart.js`)' });
    expect(lines[10]).toBe(`malloc: on 4 KiB pages; because ${doc.malloc.why}`);
    // Where the packages' compiled code is kept (src/cli/compile-cache.ts): under the cache home.
    const nodeKeepsIt = typeof ((await import('node:module')).default as unknown as { enableCompileCache?: unknown }).enableCompileCache === 'function';
    expect(doc.compileCache).toMatchObject({ on: true, by: nodeKeepsIt ? 'node' : 'smartlayer' });
    expect(doc.compileCache.dir).toMatch(nodeKeepsIt ? /\/smartlayer\/compile-cache$/ : new RegExp(`/smartlayer/compile-cache/v8-${process.versions.v8.replace(/[.]/g, '\\.')}-${process.arch}$`));
    expect(lines[11]).toBe(`compile cache: on, in ${doc.compileCache.dir}; because ${doc.compileCache.why}`);
    expect(lines).toHaveLength(12);
    const off = JSON.parse((await smart(['version', '--json'], { env: { SMART_COMPILE_CACHE: '0' } })).stdout.toString()) as VersionDoc;
    expect(off.compileCache).toEqual({ on: false, why: 'SMART_COMPILE_CACHE=0' });
  });

  it('run as a command (its #! line, through a symlink as npm links it): Node starts with malloc on huge pages, unless the caller set GLIBC_TUNABLES', async () => {
    const dir = await tempDir();
    const link = path.join(dir, 'smart');
    await fs.symlink(path.join(repoRoot, 'bin', 'smart.js'), link);
    const env: NodeJS.ProcessEnv = { ...process.env, GLIBC_TUNABLES: undefined };
    const doc = JSON.parse((await run(link, ['version', '--json'], { env })).stdout.toString()) as VersionDoc;
    const thp = await fs.readFile('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8').catch(() => '[never]');
    if (/\[never\]/.test(thp)) expect(doc.malloc.hugePages).toBe(false);
    else expect(doc.malloc).toMatchObject({ hugePages: true, why: expect.stringMatching(/^GLIBC_TUNABLES=glibc\.malloc\.hugetlb=1 and the kernel's transparent huge pages are \[(always|madvise)\]/) });
    // The caller's tunables are theirs: kept as they are, and GLIBC_TUNABLES= turns huge pages off.
    for (const value of ['glibc.malloc.arena_max=2', '']) {
      const own = JSON.parse((await run(link, ['version', '--json'], { env: { ...env, GLIBC_TUNABLES: value } })).stdout.toString()) as VersionDoc;
      expect(own.malloc).toEqual({ hugePages: false, why: 'GLIBC_TUNABLES is set without glibc.malloc.hugetlb' });
    }
    // smart-push and friends start the same way and pass their arguments through.
    const push = await run(path.join(repoRoot, 'bin', 'smart-push.js'), ['--help'], { env });
    expect(push.code).toBe(0);
    expect(push.stdout.toString()).toMatch(/^Usage: smart-push /);
  });

  it('with SMART_NATIVE=0: the addon off, gzip on zlib (never the libdeflate-gzip program), zstd the program, no command to fix a choice', async () => {
    const env = { SMART_NATIVE: '0' };
    const lines = (await smart(['version', '--verbose'], { env })).stdout.toString().trimEnd().split('\n');
    const doc = JSON.parse((await smart(['version', '--verbose', '--json'], { env })).stdout.toString()) as VersionDoc;
    expect(doc.native).toMatchObject({ loaded: false, disabled: true, reason: 'turned off (SMART_NATIVE=0)' });
    expect(doc.native.fix).toBeUndefined();
    expect(lines[2]).toBe('native addon: turned off (SMART_NATIVE=0)');
    expect(doc.gzip).toMatchObject({ engine: 'zlib', implementation: 'node-zlib', level: 3, blockSize: 1024 * 1024 });
    expect(lines[3]).toBe(
      `gzip engine (auto): zlib, node-zlib, level 3, 1.00 MiB blocks, ${doc.gzip.concurrency} at once; because the native addon is turned off (SMART_NATIVE=0); a program per block (libdeflate-gzip) is slower than zlib in this process and is used only when named`,
    );
    expect(lines[4]).toBe('gzip engine (--compression-level fast): none; because the native addon is turned off (SMART_NATIVE=0)');
    if (haveTools('zstd')) expect(lines[5]).toMatch(/^zstd engine: \/.*zstd, level 3, \d+ workers; because the native addon is turned off \(SMART_NATIVE=0\): the zstd program$/);
    expect(lines[8]).toBe('small files (rootfs:, bundle:): one by one; because the native addon is turned off (SMART_NATIVE=0): each file made on the thread that reads the tar');
  });
});

/**
 * A cgroup with a CPU quota of `cpus`, made by the test (root): v1's cpu controller or v2's. `run`
 * starts a command inside it; `remove` removes it once nothing runs in it. Undefined when the
 * machine does not let it be made (not root, no cpu controller).
 */
async function cpuQuotaGroup(cpus: number): Promise<{ run(args: string[], env?: NodeJS.ProcessEnv): Promise<RunResult>; remove(): Promise<void> } | undefined> {
  const name = `smartlayer-test-${process.pid}`;
  const period = 100_000;
  let dir: string | undefined;
  for (const v1 of ['/sys/fs/cgroup/cpu,cpuacct', '/sys/fs/cgroup/cpu']) {
    if (!(await fs.access(path.join(v1, 'cpu.cfs_quota_us')).then(() => true, () => false))) continue;
    try {
      await fs.mkdir(path.join(v1, name));
      dir = path.join(v1, name);
      await fs.writeFile(path.join(dir, 'cpu.cfs_period_us'), String(period));
      await fs.writeFile(path.join(dir, 'cpu.cfs_quota_us'), String(cpus * period));
      break;
    } catch {
      if (dir) await fs.rmdir(dir).catch(() => undefined);
      dir = undefined;
    }
  }
  if (!dir && (await fs.readFile('/sys/fs/cgroup/cgroup.controllers', 'utf8').catch(() => '')).split(/\s+/).includes('cpu')) {
    try {
      await fs.writeFile('/sys/fs/cgroup/cgroup.subtree_control', '+cpu');
      await fs.mkdir(path.join('/sys/fs/cgroup', name));
      dir = path.join('/sys/fs/cgroup', name);
      await fs.writeFile(path.join(dir, 'cpu.max'), `${cpus * period} ${period}`);
    } catch {
      if (dir) await fs.rmdir(dir).catch(() => undefined);
      dir = undefined;
    }
  }
  if (!dir) return undefined;
  const group = dir;
  return {
    // The shell joins the group, then becomes the command: everything it starts is inside.
    run: (args, env = {}) => run('sh', ['-c', `echo $$ > ${group}/cgroup.procs && exec "$@"`, 'sh', process.execPath, path.join(repoRoot, 'bin', 'smart.js'), ...args], { env: { ...process.env, ...env } }),
    remove: () => fs.rmdir(group),
  };
}

describe('a cgroup CPU quota (`docker run --cpus`, a pod\'s limits.cpu)', () => {
  it('bounds the cores every pool is sized by, on every Node line; the bytes of a push stay the same', async (ctx) => {
    const group = await cpuQuotaGroup(1);
    if (!group) {
      if (inCI) throw new Error('CI=true but a cgroup with a CPU quota cannot be made (root, a cpu controller)');
      return ctx.skip();
    }
    const work = await tempDir();
    try {
      const env = { XDG_CACHE_HOME: path.join(work, 'cache') };
      const inside = JSON.parse((await group.run(['version', '--json'], env)).stdout.toString()) as VersionDoc;
      const affinity = os.availableParallelism();
      expect(inside.cores).toBe(1);
      expect(inside.coresWhy).toBe(`a cgroup CPU quota of 1 CPU, of the ${affinity} this process may run on`);
      if (inside.zstd.implementation) expect(inside.zstd.workers).toBe(1);
      const outside = JSON.parse((await smart(['version', '--json'], { cacheHome: path.join(work, 'cache') })).stdout.toString()) as VersionDoc;
      expect(outside.cores).toBe(affinity);
      expect(outside.coresWhy).toBe('the CPUs this process may run on, and no cgroup CPU quota');
      // The same image, pushed inside and outside the quota: the same manifest.
      const image = `docker-archive:${fixtures().paths.dockerArchiveBasic}`;
      const quota = await group.run(['push', image, `file:${path.join(work, 'in')}#a:1`, '--compression', 'zstd'], { XDG_CACHE_HOME: path.join(work, 'cache-in') });
      expect(quota.code, quota.stderr).toBe(0);
      const free = await smart(['push', image, `file:${path.join(work, 'out')}#a:1`, '--compression', 'zstd'], { cacheHome: path.join(work, 'cache-out') });
      expect(free.code, free.stderr).toBe(0);
      expect(quota.stdout.toString().split('@')[1]).toBe(free.stdout.toString().split('@')[1]);
    } finally {
      await group.remove();
    }
  });
});

describe('without the native addon', () => {
  let work: string;

  beforeAll(async () => {
    work = await tempDir();
  });

  it('says why and what builds it; a push that compresses warns once (zlib), a push that does not stays quiet, and so does SMART_NATIVE=0', async () => {
    const bin = await packageWithoutAddon(path.join(work, 'installed'), { clone: false });
    const cli = (args: string[], env: NodeJS.ProcessEnv = {}) => run(process.execPath, [bin, ...args], { env: { ...process.env, XDG_CACHE_HOME: path.join(work, 'cache'), ...env } });
    const root = path.dirname(path.dirname(bin));

    const doc = JSON.parse((await cli(['version', '--json'])).stdout.toString()) as VersionDoc;
    expect(doc.native).toMatchObject({ loaded: false, disabled: false, path: path.join(root, 'native', 'build', 'smartlayer.node') });
    expect(doc.native.reason).toMatch(/^not built \(the compiler failed: /);
    // An installed package has no setup script: the Debian packages and the build script itself.
    const sudo = process.getuid?.() === 0 ? '' : 'sudo ';
    // libisal-dev included: without it `--compression-level fast` still fails after the build.
    expect(doc.native.fix).toBe(`${sudo}apt-get install gcc libc6-dev libdeflate-dev libzstd-dev libisal-dev && cd ${root} && node native/build.mjs`);
    expect(doc.gzip.engine).toBe('zlib');
    const lines = (await cli(['version', '--verbose'])).stdout.toString().split('\n');
    expect(lines[2]).toBe(`native addon: ${doc.native.reason}; to build it: ${doc.native.fix}`);

    // Three layers compressed: one warning.
    const push = await cli(['push', `docker-archive:${fixtures().paths.dockerArchiveBasic}`, `file:${path.join(work, 'store')}#app:1`]);
    expect(push.code, push.stderr).toBe(0);
    expect(warnings(push)).toEqual([`warning: native compressor ${doc.native.reason}: gzip runs on Node's zlib, slower; to build it: ${doc.native.fix} (SMART_NATIVE=0 silences this)`]);
    expect(push.stderr).toMatch(/compressed [\d.]+:1 \(gzip, zlib level 3\)/);
    // The README quotes it as it is, the reason and the directory left out.
    const quoted = warnings(push)[0]!.replace(doc.native.reason!.slice('not built '.length), '(…)').replace(` ${root} `, ' DIR ').replace('to build it: sudo ', 'to build it: ');
    expect(await readmeText()).toContain(`\`${quoted}\``);

    // Nothing compressed (the layers are gzip already): nothing to say.
    const layout = await cli(['push', `oci:${fixtures().paths.ociBasic}:latest`, `file:${path.join(work, 'store')}#app:2`]);
    expect(layout.code, layout.stderr).toBe(0);
    expect(warnings(layout)).toEqual([]);

    // The user's choice: quiet, and the same bytes as zlib gives anyway.
    const off = await cli(['push', `docker-archive:${fixtures().paths.dockerArchiveBasic}`, `file:${path.join(work, 'store-off')}#app:1`], { SMART_NATIVE: '0' });
    expect(off.code, off.stderr).toBe(0);
    expect(warnings(off)).toEqual([]);
    expect(off.stdout.toString().split('@')[1]).toBe(push.stdout.toString().split('@')[1]);

    if (haveTools('zstd')) {
      const zstd = await cli(['push', `docker-archive:${fixtures().paths.dockerArchiveBasic}`, `file:${path.join(work, 'store-zstd')}#app:1`, '--compression', 'zstd']);
      expect(zstd.code, zstd.stderr).toBe(0);
      expect(warnings(zstd)).toEqual([`warning: native compressor ${doc.native.reason}: zstd runs in the zstd program; to build it: ${doc.native.fix} (SMART_NATIVE=0 silences this)`]);
    }
  });

  it('the build script suggests the same command; an addon absent with no failed build to tell of says why all the same', async () => {
    const bin = await packageWithoutAddon(path.join(work, 'unbuilt'), { clone: false });
    const root = path.dirname(path.dirname(bin));
    const build = await run(process.execPath, [path.join(root, 'native', 'build.mjs')], { cwd: root });
    expect(build.stderr).toContain(`; to build it: apt-get install gcc libc6-dev libdeflate-dev libzstd-dev libisal-dev && cd ${root} && node native/build.mjs\n`);
    const reason = async () => ((JSON.parse((await run(process.execPath, [bin, 'version', '--json'])).stdout.toString()) as VersionDoc).native.reason);
    const status = path.join(root, 'native', 'build', 'status.json');
    // Installed with SMART_NATIVE=0, run without it.
    await fs.rm(status);
    expect((await run(process.execPath, [path.join(root, 'native', 'build.mjs')], { env: { ...process.env, SMART_NATIVE: '0' } })).code).toBe(0);
    expect(await reason()).toBe('not built (SMART_NATIVE=0 when the package was installed)');
    // Installed without its install script (npm install --ignore-scripts).
    await fs.rm(status);
    expect(await reason()).toBe('not built (its build never ran here, as npm install --ignore-scripts leaves it: no native/build/status.json)');
    // Built, and the addon removed since.
    await fs.writeFile(status, '{"built":true,"without":[]}\n');
    expect(await reason()).toBe(`not built (it was built, and ${path.join(root, 'native', 'build', 'smartlayer.node')} was removed since)`);
  });

  it('from a clone, the command is the README\'s: the setup script and npm rebuild', async () => {
    const bin = await packageWithoutAddon(path.join(work, 'clone'), { clone: true });
    const root = path.dirname(path.dirname(bin));
    const inRoot = await run(process.execPath, [bin, 'version', '--json'], { cwd: root });
    expect((JSON.parse(inRoot.stdout.toString()) as VersionDoc).native.fix).toBe('scripts/setup-debian.sh && npm rebuild');
    const push = await run(process.execPath, [bin, 'push', `docker-archive:${fixtures().paths.dockerArchiveBasic}`, `file:${path.join(work, 'clone-store')}#app:1`], {
      cwd: root,
      env: { ...process.env, XDG_CACHE_HOME: path.join(work, 'clone-cache') },
    });
    expect(push.code, push.stderr).toBe(0);
    const reason = (JSON.parse(inRoot.stdout.toString()) as VersionDoc).native.reason!;
    expect(await readmeText()).toContain(`\`${warnings(push)[0]!.replace(reason.slice('not built '.length), '(…)')}\``);
    const elsewhere = await run(process.execPath, [bin, 'version', '--json'], { cwd: work });
    expect((JSON.parse(elsewhere.stdout.toString()) as VersionDoc).native.fix).toBe(`cd ${root} && scripts/setup-debian.sh && npm rebuild`);
  });
});

describe('the bytes of a push', () => {
  let work: string;
  let archive: string;

  beforeAll(async () => {
    work = await tempDir();
    archive = path.join(work, 'big.tar');
    await bigDockerArchive(archive);
  });

  // taskset limits the CPUs the process may use, which is what os.availableParallelism reports.
  it.runIf(haveTools('taskset'))('do not depend on the cores the process may use, for every engine auto may pick and for zstd', async () => {
    const isal = (JSON.parse((await smart(['version', '--json'])).stdout.toString()) as VersionDoc).native.isal;
    const cases: { name: string; args: string[]; env: NodeJS.ProcessEnv }[] = [
      { name: 'gzip, auto', args: [], env: {} },
      { name: 'gzip, zlib', args: [], env: { SMART_NATIVE: '0' } },
      ...(isal ? [{ name: 'gzip, fast (igzip)', args: ['--compression-level', 'fast'], env: {} }] : []),
      ...(haveTools('zstd') ? [{ name: 'zstd', args: ['--compression', 'zstd'], env: {} }, { name: 'zstd program', args: ['--compression', 'zstd'], env: { SMART_NATIVE: '0' } }] : []),
    ];
    for (const c of cases) {
      const digests = new Set<string>();
      for (const [i, cpus] of ['0', `0-${os.cpus().length - 1}`].entries()) {
        // A fresh cache each time: the diff id → digest memory would otherwise skip the compression.
        const args = ['-c', cpus, process.execPath, path.join(repoRoot, 'bin', 'smart.js'), 'push', `docker-archive:${archive}`, `file:${path.join(work, `${c.name}-${i}`)}#big:1`, ...c.args];
        const r = await run('taskset', args, { env: { ...process.env, XDG_CACHE_HOME: path.join(work, `cache-${c.name}-${i}`), ...c.env } });
        expect(r.code, r.stderr).toBe(0);
        digests.add(r.stdout.toString().trim().split('@')[1]!);
      }
      expect(digests.size, c.name).toBe(1);
    }
  });

  it('--compression-level fast: igzip in this process, read back whole by a pull; refused, naming the cause, without the addon', async () => {
    const doc = JSON.parse((await smart(['version', '--json'])).stdout.toString()) as VersionDoc;
    if (inCI) expect(doc.native.isal, 'CI builds the addon with ISA-L').toBeDefined();
    const store = `file:${path.join(work, 'fast')}#big:1`;
    if (doc.native.isal) {
      const push = await smart(['push', `docker-archive:${archive}`, store, '--compression-level', 'fast', '--json'], { cacheHome: path.join(work, 'cache-fast') });
      expect(push.code, push.stderr).toBe(0);
      const summary = JSON.parse(push.stdout.toString()) as { compression: Record<string, unknown>; layers: { bytesPushed: number } };
      expect(summary.compression).toEqual({ format: 'gzip', engine: 'igzip', implementation: `in-process isa-l ${doc.native.isal}`, level: 1 });
      // Every member and the content come back: a pull to docker-archive gunzips and checks the diff id.
      const pull = await smart(['pull', store, `docker-archive:${path.join(work, 'fast-back.tar')}`], { cacheHome: path.join(work, 'cache-fast-pull') });
      expect(pull.code, pull.stderr).toBe(0);
    }
    const off = await smart(['push', `docker-archive:${archive}`, `file:${path.join(work, 'fast-off')}#big:1`, '--compression-level', 'fast'], { env: { SMART_NATIVE: '0' }, cacheHome: path.join(work, 'cache-fast-off') });
    expect(off.code).toBe(1);
    expect(off.stderr).toContain('smart: error [UNSUPPORTED]: --compression-level fast needs the native addon built with ISA-L, and it is turned off (SMART_NATIVE=0) (unset SMART_NATIVE)');
  });
});
