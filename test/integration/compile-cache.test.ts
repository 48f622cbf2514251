/**
 * The code cache of the packages a command loads (src/cli/compile-cache.ts), in real Node
 * processes: written once, used after, never stale, never in the way.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import Module from 'node:module';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, inject, it } from 'vitest';
import { repoRoot, testCacheHome } from '../harness/run.js';
import { tempDir } from '../harness/tmp.js';

const run = promisify(execFile);
const compileCache = pathToFileURL(path.join(repoRoot, 'dist/cli/compile-cache.js')).href;

/** A process that turns the cache on, as the command does, then requires `entry` and prints what it exports. */
async function requireWithCache(cacheHome: string, entry: string, env: NodeJS.ProcessEnv = {}): Promise<string> {
  const script = [
    `import { createRequire } from 'node:module';`,
    `import { enableCompileCache } from ${JSON.stringify(compileCache)};`,
    `enableCompileCache();`,
    `console.log(JSON.stringify(createRequire(import.meta.url)(${JSON.stringify(entry)})));`,
  ].join('\n');
  const { stdout } = await run(process.execPath, ['--input-type=module', '-e', script], {
    env: { ...process.env, XDG_CACHE_HOME: cacheHome, NODE_OPTIONS: '', SMART_COMPILE_CACHE: '', ...env },
  });
  return stdout.trim();
}

/** The cache files, by name, with their modification times. */
async function cacheFiles(cacheHome: string): Promise<Map<string, number>> {
  const dir = path.join(cacheHome, 'smartlayer', 'compile-cache');
  const out = new Map<string, number>();
  for (const e of await fs.readdir(dir, { recursive: true, withFileTypes: true }).catch(() => [])) {
    if (e.isFile()) out.set(path.join(e.parentPath, e.name), (await fs.stat(path.join(e.parentPath, e.name))).mtimeMs);
  }
  return out;
}

/** A package `pkg` under `root/node_modules` whose main module requires a second one. */
async function writePackage(root: string, value: string): Promise<string> {
  const pkg = path.join(root, 'node_modules', 'pkg');
  await fs.mkdir(pkg, { recursive: true });
  await fs.writeFile(path.join(pkg, 'package.json'), JSON.stringify({ name: 'pkg', main: 'main.js' }));
  await fs.writeFile(
    path.join(pkg, 'main.js'),
    [
      `'use strict';`,
      `const part = require('./part.js');`,
      `function late() { return ${JSON.stringify(value)}; }`,
      `module.exports = { value: late(), part, file: path(__filename), dir: path(__dirname), resolved: path(require.resolve('./part.js')), main: require.main === undefined };`,
      `function path(p) { return require('node:path').relative(${JSON.stringify(root)}, p); }`,
    ].join('\n'),
  );
  await fs.writeFile(path.join(pkg, 'part.js'), `module.exports = 'part';\n`);
  return pkg;
}

/** Node 22.1+ keeps compiled code itself, and the command asks it to: the code below is then not what runs. */
const nodeKeepsIt = typeof (Module as unknown as { enableCompileCache?: unknown }).enableCompileCache === 'function';

describe('compile cache', () => {
  it("is never the user's own in the tests: every program a test starts inherits its file's cache home, under the run's", () => {
    expect(process.env.XDG_CACHE_HOME).toBe(testCacheHome());
    expect(path.dirname(testCacheHome())).toBe(inject('cacheHome'));
  });
});

describe('compile cache under Node 22.1+', () => {
  it("clears the caches of other versions left beside Node's own, never inside it", async () => {
    const { pruneStale } = (await import(compileCache)) as typeof import('../../src/cli/compile-cache.js');
    const dir = path.join(await tempDir(), 'compile-cache');
    const day = 24 * 3600 * 1000;
    const now = Date.now();
    // Node's directory of this version; one of an older Node; ours from before Node kept it.
    for (const [name, age] of [['4a1c2b3d', 40], ['9e8f7a6b', 31], ['v8-11.3.244.8-node.38-x64', 31]] as const) {
      await fs.mkdir(path.join(dir, name), { recursive: true });
      await fs.writeFile(path.join(dir, name, 'entry'), 'x');
      await fs.utimes(path.join(dir, name, 'entry'), new Date(now - age * day), new Date(now - age * day));
      await fs.utimes(path.join(dir, name), new Date(now - age * day), new Date(now - age * day));
    }
    pruneStale(dir, path.join(dir, '4a1c2b3d'), new Set(), now);
    expect(await fs.readdir(dir)).toEqual(['4a1c2b3d']);
    expect(await fs.readdir(path.join(dir, '4a1c2b3d'))).toEqual(['entry']);
    // No directory at all: nothing to do, nothing thrown.
    pruneStale(path.join(dir, 'none'), path.join(dir, 'none', 'x'), new Set(), now);
  });
});

describe.skipIf(nodeKeepsIt)('compile cache of its own (Node before 22.1)', () => {
  it('is written by the first run, read by the next ones, and a package changed in place is compiled afresh', async () => {
    const work = await tempDir();
    const cacheHome = path.join(work, 'cache');
    const pkg = await writePackage(work, 'one');
    const want = { value: 'one', part: 'part', file: 'node_modules/pkg/main.js', dir: 'node_modules/pkg', resolved: 'node_modules/pkg/part.js', main: true };
    expect(JSON.parse(await requireWithCache(cacheHome, pkg))).toEqual(want);
    const first = await cacheFiles(cacheHome);
    expect([...first.keys()].map((f) => path.basename(f))).toHaveLength(2);
    expect([...first.keys()].every((f) => /[/]v8-[^/]+[/][0-9a-f]{64}$/.test(f))).toBe(true);
    // Read, not written again.
    expect(JSON.parse(await requireWithCache(cacheHome, pkg))).toEqual(want);
    expect(await cacheFiles(cacheHome)).toEqual(first);
    // The same length, another value: V8 alone would take the old cache for it.
    await writePackage(work, 'two');
    expect(JSON.parse(await requireWithCache(cacheHome, pkg))).toEqual({ ...want, value: 'two' });
    expect((await cacheFiles(cacheHome)).size).toBe(3);
  });

  it("keeps the command's own chunks as well: the first command writes them, the next reads them; the entry and the chunk that turns the cache on are Node's", async () => {
    const cacheHome = path.join(await tempDir(), 'cache');
    const smart = () => run(path.join(repoRoot, 'bin', 'smart.js'), ['version'], { env: { ...process.env, XDG_CACHE_HOME: cacheHome, SMART_COMPILE_CACHE: '' } });
    await smart();
    const bundle = await fs.realpath(path.join(repoRoot, 'dist', 'bundle'));
    const names = await fs.readdir(bundle);
    const entryOf = async (name: string) => {
      const file = path.join(bundle, name);
      const key = createHash('sha256').update(file).update('\0').update(await fs.readFile(file, 'utf8')).digest('hex');
      return path.join(cacheHome, 'smartlayer', 'compile-cache', `v8-${process.versions.v8}-${process.arch}`, key);
    };
    const first = await cacheFiles(cacheHome);
    // `smart version` loads the cli chunk and the program's (and commander's modules).
    for (const chunk of ['cli-', 'program-']) {
      const name = names.find((n) => n.startsWith(chunk));
      expect(first.has(await entryOf(name!)), name).toBe(true);
    }
    for (const name of ['main.js', names.find((n) => n.startsWith('boot-'))!]) expect(first.has(await entryOf(name)), name).toBe(false);
    expect([...first.keys()].filter((f) => !f.endsWith('.tmp')).length).toBeGreaterThan(2);
    await smart();
    expect(await cacheFiles(cacheHome)).toEqual(first);
  });

  it('a run that writes prunes what has not been written for 30 days and it did not use: old entries, other versions, abandoned temporary files', async () => {
    const work = await tempDir();
    const cacheHome = path.join(work, 'cache');
    const pkg = await writePackage(work, 'one');
    await requireWithCache(cacheHome, pkg);
    const root = path.join(cacheHome, 'smartlayer', 'compile-cache');
    const [version] = await fs.readdir(root);
    const current = path.join(root, version!);
    const entries = await fs.readdir(current);
    expect(entries).toHaveLength(2);
    const daysAgo = (n: number) => new Date(Date.now() - n * 24 * 3600 * 1000);
    // Both entries old; an entry of a package since removed; a temporary file of a run killed two
    // hours ago; the caches of two other versions, one unused for 31 days, one for 29.
    for (const e of entries) await fs.utimes(path.join(current, e), daysAgo(31), daysAgo(31));
    const gone = path.join(current, 'f'.repeat(64));
    const abandoned = path.join(current, `${'e'.repeat(64)}.4242.tmp`);
    for (const f of [gone, abandoned]) await fs.writeFile(f, 'x');
    await fs.utimes(gone, daysAgo(31), daysAgo(31));
    await fs.utimes(abandoned, daysAgo(2 / 24), daysAgo(2 / 24));
    for (const [name, age] of [['v8-0.0.1-x64', 31], ['v8-0.0.2-x64', 29]] as const) {
      await fs.mkdir(path.join(root, name));
      await fs.writeFile(path.join(root, name, 'a'.repeat(64)), 'x');
      await fs.utimes(path.join(root, name), daysAgo(age), daysAgo(age));
    }
    const before = await cacheFiles(cacheHome);
    // A run that only reads prunes nothing.
    await requireWithCache(cacheHome, pkg);
    expect(await cacheFiles(cacheHome)).toEqual(before);
    // main.js changed, part.js not: this run writes main.js's entry, reads part.js's, and prunes.
    await writePackage(work, 'two');
    expect(JSON.parse(await requireWithCache(cacheHome, pkg))).toMatchObject({ value: 'two', part: 'part' });
    expect((await fs.readdir(root)).sort()).toEqual([version, 'v8-0.0.2-x64'].sort());
    const after = await fs.readdir(current);
    expect(after).toHaveLength(2);
    // part.js's entry, old but read by this run, stays; main.js's old one is gone, its new one there.
    expect(after.filter((e) => entries.includes(e))).toHaveLength(1);
    expect(after).not.toContain(path.basename(gone));
    expect(after).not.toContain(path.basename(abandoned));
    // And the module still loads from what is left.
    expect(JSON.parse(await requireWithCache(cacheHome, pkg))).toMatchObject({ value: 'two', part: 'part' });
  });

  it('a damaged cache file is refused and made again; a module outside node_modules is left to Node', async () => {
    const work = await tempDir();
    const cacheHome = path.join(work, 'cache');
    const pkg = await writePackage(work, 'one');
    await requireWithCache(cacheHome, pkg);
    const files = [...(await cacheFiles(cacheHome)).keys()];
    const good = new Map(await Promise.all(files.map(async (f) => [f, await fs.readFile(f)] as const)));
    // Garbage, which V8 refuses by itself; then one byte flipped in the middle of the compiled code,
    // which V8 would run (it checks no checksum in a release build): the file's own checksum catches it.
    for (const damage of [(b: Buffer) => Buffer.alloc(b.length, 0x5a), (b: Buffer) => Buffer.from(b).fill(b[b.length >> 1]! ^ 0xff, b.length >> 1, (b.length >> 1) + 1)]) {
      for (const [f, bytes] of good) await fs.writeFile(f, damage(bytes));
      expect(JSON.parse(await requireWithCache(cacheHome, pkg))).toMatchObject({ value: 'one', part: 'part' });
      for (const [f, bytes] of good) expect((await fs.readFile(f)).equals(damage(bytes)), f).toBe(false);
    }
    // Not under node_modules: nothing cached.
    const own = path.join(work, 'own.cjs');
    await fs.writeFile(own, `module.exports = 7;\n`);
    const other = path.join(work, 'other-cache');
    expect(await requireWithCache(other, own)).toBe('7');
    expect((await cacheFiles(other)).size).toBe(0);
  });

  it('SMART_COMPILE_CACHE=0 writes nothing; a cache that cannot be written fails nothing; an ES module package loads as Node loads it', async () => {
    const work = await tempDir();
    const pkg = await writePackage(work, 'one');
    const off = path.join(work, 'off');
    expect(JSON.parse(await requireWithCache(off, pkg, { SMART_COMPILE_CACHE: '0' }))).toMatchObject({ value: 'one' });
    await expect(fs.stat(path.join(off, 'smartlayer'))).rejects.toThrow();
    // A file where the directory would be.
    const blocked = path.join(work, 'blocked');
    await fs.mkdir(path.join(blocked, 'smartlayer'), { recursive: true });
    await fs.writeFile(path.join(blocked, 'smartlayer', 'compile-cache'), '');
    expect(JSON.parse(await requireWithCache(blocked, pkg))).toMatchObject({ value: 'one' });
    // A package of ES modules, required: whatever Node does with it (load it, or refuse it in its
    // own words), it does the same with the cache on.
    const esm = path.join(work, 'node_modules', 'esm');
    await fs.mkdir(esm, { recursive: true });
    await fs.writeFile(path.join(esm, 'package.json'), JSON.stringify({ name: 'esm', type: 'module', main: 'index.js' }));
    await fs.writeFile(path.join(esm, 'index.js'), `export const value = 'esm';\n`);
    const outcome = (env: NodeJS.ProcessEnv) =>
      requireWithCache(path.join(work, 'esm-cache'), esm, env).then(
        (out) => out,
        (e: { stderr?: string }) => String(e.stderr).match(/\b(ERR_[A-Z_]+)/)?.[1] ?? 'failed',
      );
    expect(await outcome({})).toBe(await outcome({ SMART_COMPILE_CACHE: '0' }));
  });
});
