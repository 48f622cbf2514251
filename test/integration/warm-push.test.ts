/**
 * A push of what the destination already holds writes nothing, and still notices what went
 * missing behind its back: a blob or a link deleted from the store, a blob deleted from a layout.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { fixtures } from '../harness/fixtures.js';
import { repoRoot, smart } from '../harness/run.js';
import { tempDir } from '../harness/tmp.js';

interface Summary {
  manifestDigest: string;
  layers: { total: number; pushed: number; skipped: number; mounted: number; bytesPushed: number };
}

async function push(args: string[], cacheHome: string): Promise<Summary> {
  const r = await smart(['push', ...args, '--json'], { cacheHome });
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout.toString()) as Summary;
}

/** Every file under `dir` with its content and modification time. */
async function snapshot(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const e of await fs.readdir(dir, { recursive: true, withFileTypes: true })) {
    if (!e.isFile()) continue;
    const p = path.join(e.parentPath, e.name);
    const st = await fs.stat(p);
    out.set(path.relative(dir, p), `${st.mtimeMs} ${(await fs.readFile(p)).toString('base64')}`);
  }
  return out;
}

describe('pushing again', () => {
  it('changes nothing in the store or the metadata cache but the tag cache entry', async () => {
    const fx = fixtures();
    const work = await tempDir();
    const store = path.join(work, 'store');
    const cacheHome = path.join(work, 'cache');
    const args = [`docker-archive:${fx.paths.dockerArchiveBasic}`, `file:${store}#w/app:1`];
    const first = await push(args, cacheHome);
    const before = { store: await snapshot(store), cache: await snapshot(path.join(cacheHome, 'smartlayer')) };
    const again = await push(args, cacheHome);
    expect(again.manifestDigest).toBe(first.manifestDigest);
    expect(again.layers).toMatchObject({ pushed: 0, skipped: first.layers.total });
    expect(await snapshot(store)).toEqual(before.store);
    const cache = await snapshot(path.join(cacheHome, 'smartlayer'));
    // Only the tag's entry is written again (its lifetime starts over).
    expect([...cache.keys()].filter((k) => cache.get(k) !== before.cache.get(k))).toHaveLength(1);
    expect([...cache.keys()].sort()).toEqual([...before.cache.keys()].sort());
  });

  it('loads the command as a few CommonJS chunks, not module by module, and no ES module (scripts/bundle-cli.mjs)', async () => {
    const fx = fixtures();
    const work = await tempDir();
    const store = path.join(work, 'store');
    const cacheHome = path.join(work, 'cache');
    const args = [`docker-archive:${fx.paths.dockerArchiveBasic}`, `file:${store}#w/app:1`];
    await push(args, cacheHome);
    // What Node loads, written down from inside the command: CommonJS modules from require's cache
    // as it exits, ES modules by a loader hook registered before the command starts.
    const cjsLoaded = path.join(work, 'cjs.txt');
    const esmLoaded = path.join(work, 'esm.txt');
    const preload = path.join(work, 'preload.cjs');
    const hooks = path.join(work, 'hooks.mjs');
    const register = path.join(work, 'register.mjs');
    await fs.writeFile(preload, `process.on('exit', () => require('node:fs').writeFileSync(${JSON.stringify(cjsLoaded)}, Object.keys(require.cache).join('\\n')));\n`);
    await fs.writeFile(
      hooks,
      `import fs from 'node:fs';\nexport async function load(url, context, next) {\n  const r = await next(url, context);\n  fs.appendFileSync(${JSON.stringify(esmLoaded)}, url + ' ' + r.format + '\\n');\n  return r;\n}\n`,
    );
    await fs.writeFile(register, `import { register } from 'node:module';\nregister(${JSON.stringify(pathToFileURL(hooks).href)});\n`);
    const r = await smart(['push', ...args, '--json'], {
      cacheHome,
      env: { NODE_OPTIONS: `--require=${preload} --import=${pathToFileURL(register).href}` },
    });
    expect(r.code, r.stderr).toBe(0);
    expect((JSON.parse(r.stdout.toString()) as Summary).layers).toMatchObject({ pushed: 0 });
    const ours = (await fs.readFile(cjsLoaded, 'utf8')).split('\n').filter((f) => f.startsWith(`${repoRoot}/`));
    // bin/smart.js, the entry, its cli chunk, the runtime, the core chunk; was 49 modules, each resolved, read and compiled on its own.
    expect(ours.length, ours.join('\n')).toBeLessThanOrEqual(5);
    expect(ours.filter((f) => f.includes('/node_modules/'))).toEqual([]);
    // Starting Node's ES module loader costs every command ~8 ms: none of ours is an ES module. (With
    // --import, Node 20 hands the entry to that loader, which sees it is CommonJS.)
    const esm = (await fs.readFile(esmLoaded, 'utf8').catch(() => '')).split('\n').filter((l) => l.startsWith(`${pathToFileURL(repoRoot).href}/`));
    expect(esm.filter((l) => !l.endsWith(' commonjs'))).toEqual([]);
  });

  it('puts back a blob or a link deleted from the store since', async () => {
    const fx = fixtures();
    const work = await tempDir();
    const store = path.join(work, 'store');
    const cacheHome = path.join(work, 'cache');
    const args = [`oci:${fx.paths.ociBasic}:latest`, `file:${store}#w/app:1`];
    await push(args, cacheHome);
    const layer = fx.basic.layers[0]!.digest.slice(7);
    await fs.rm(path.join(store, 'docker/registry/v2/blobs/sha256', layer.slice(0, 2), layer), { recursive: true });
    expect((await push(args, cacheHome)).layers).toMatchObject({ pushed: 1 });
    await fs.stat(path.join(store, 'docker/registry/v2/blobs/sha256', layer.slice(0, 2), layer, 'data'));
    await fs.rm(path.join(store, 'docker/registry/v2/repositories/w/app/_layers/sha256', layer), { recursive: true });
    expect((await push(args, cacheHome)).layers).toMatchObject({ pushed: 0, mounted: 1 });
    expect((await push(args, cacheHome)).layers).toMatchObject({ pushed: 0, mounted: 0 });
  });

  it('puts back a blob deleted from an OCI layout since', async () => {
    const fx = fixtures();
    const work = await tempDir();
    const layout = path.join(work, 'layout');
    const cacheHome = path.join(work, 'cache');
    const args = [`oci:${fx.paths.ociBasic}:latest`, `oci:${layout}:v1`];
    await push(args, cacheHome);
    const layer = fx.basic.layers[1]!.digest.slice(7);
    await fs.rm(path.join(layout, 'blobs/sha256', layer));
    expect((await push(args, cacheHome)).layers).toMatchObject({ pushed: 1 });
    await fs.stat(path.join(layout, 'blobs/sha256', layer));
  });
});
