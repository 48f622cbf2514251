/**
 * smart cache over a store seeded with a forest of images from shared base chains (the article's
 * node:wheezy / node:0-wheezy / node:5 / python), and an app image built from a Dockerfile with
 * `COPY package.json` + `RUN npm ci` steps: plans pick the expected image and layer count, cache
 * pulls move exactly the planned layers, and Redis serves as the shared metadata cache.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixtures } from '../harness/fixtures.js';
import { writeImage, type LayerSpec } from '../harness/images.js';
import { parseDockerfile } from '../../src/dockerfile/parser.js';
import { dockerfileSteps } from '../../src/trie/steps.js';
import { indexStore, openCacheSession } from '../../src/index.js';
import type { MetadataCache } from '../../src/cache/metadata-cache.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { clusterKeySlot, DEFAULT_REDIS_KEY_PREFIX } from '../../src/cache/redis-cache.js';
import { trieKeys } from '../../src/cache/keys.js';
import { parseImageName, storeScope } from '../../src/transports/all.js';
import { startRedis, startRedisCluster, type RunningRedis, type RunningRedisCluster } from '../harness/redis.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { runOk, smart } from '../harness/run.js';
import { haveTools } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';

interface Plan {
  best?: { image: string; layers: { digest: string; size: number }[]; baseLayers: number; steps: number; bytes: number };
  steps: { line: number; instruction: string; matched: boolean }[];
  naive?: { image: string; bytes: number };
  alternatives?: string[];
}

const DEB: LayerSpec[] = [
  { files: { 'etc/debian_version': '7.11\n' }, createdBy: '/bin/sh -c #(nop) ADD file:deb1 in / ' },
  { files: { 'usr/lib/libc.so': 'libc '.repeat(2000) }, createdBy: '/bin/sh -c apt-get update && apt-get install -y libc' },
];
const NODE_COMMON: LayerSpec[] = [
  { files: { 'usr/bin/node': 'node 0.12 '.repeat(3000) }, createdBy: '/bin/sh -c curl node | tar -x' },
  { files: { 'usr/lib/node_modules/npm/cli.js': 'npm 2 '.repeat(2000) }, createdBy: '/bin/sh -c npm install -g npm@2' },
];
const BASES: Record<string, LayerSpec[]> = {
  'library/node:wheezy': [...DEB, ...NODE_COMMON, { files: { 'etc/node-flavour': 'wheezy\n' }, createdBy: '/bin/sh -c echo wheezy > /etc/node-flavour' }],
  'library/node:0-wheezy': [...DEB, ...NODE_COMMON, { files: { 'etc/node-flavour': '0-wheezy\n' }, createdBy: '/bin/sh -c echo 0-wheezy > /etc/node-flavour' }],
  'library/node:5': [
    ...DEB,
    { files: { 'usr/bin/node': 'node 5 '.repeat(4000) }, createdBy: '/bin/sh -c curl node5 | tar -x' },
    { files: { 'usr/lib/node_modules/npm/cli.js': 'npm 3 '.repeat(2500) }, createdBy: '/bin/sh -c npm install -g npm@3' },
  ],
  'library/python:latest': [...DEB, { files: { 'usr/bin/python': 'python '.repeat(5000) }, createdBy: '/bin/sh -c apt-get install -y python' }],
};

const DOCKERFILE = (base: string) => `FROM ${base}\nWORKDIR /app\nCOPY package.json package-lock.json ./\nRUN npm ci\nCOPY . .\nRUN npm run build\n`;

/** The app image as BuildKit would make it from DOCKERFILE('node:5') over `ctx`. */
async function appLayers(ctx: string): Promise<LayerSpec[]> {
  const read = (f: string) => fs.readFile(path.join(ctx, f), 'utf8');
  const sources: Record<string, string> = {};
  for (const f of ['package.json', 'package-lock.json', 'src/index.js', 'Dockerfile', '.dockerignore']) sources[`app/${f}`] = await read(f);
  return [
    ...BASES['library/node:5']!,
    { files: { 'app/': '' }, createdBy: 'WORKDIR /app' },
    { files: { 'app/package.json': await read('package.json'), 'app/package-lock.json': await read('package-lock.json') }, createdBy: 'COPY package.json package-lock.json ./ # buildkit' },
    { files: { 'app/node_modules/left-pad/index.js': 'module.exports = pad;\n'.repeat(500) }, createdBy: 'RUN /bin/sh -c npm ci # buildkit' },
    { files: sources, createdBy: 'COPY . . # buildkit' },
    { files: { 'app/dist/index.js': `built(${sources['app/src/index.js']})` }, createdBy: 'RUN /bin/sh -c npm run build # buildkit' },
  ];
}

async function writeContext(dir: string, index = 'console.log("v1");\n', pkg = '{"name":"app","version":"1.0.0"}\n'): Promise<void> {
  await fs.mkdir(path.join(dir, 'src'), { recursive: true });
  await fs.writeFile(path.join(dir, 'package.json'), pkg);
  await fs.writeFile(path.join(dir, 'package-lock.json'), '{"lockfileVersion":3}\n');
  await fs.writeFile(path.join(dir, 'src', 'index.js'), index);
  await fs.writeFile(path.join(dir, '.dockerignore'), 'node_modules\n.git\n');
  await fs.writeFile(path.join(dir, 'Dockerfile'), DOCKERFILE('node:5'));
}

describe.skipIf(!haveTools('docker-registry', 'skopeo', 'redis-server'))('smart cache', () => {
  let work: string;
  let store: string;
  let ctx: string;
  let cacheHome: string;
  let registry: RunningRegistry;
  let proxy: RunningProxy;

  const run = (args: string[], extra: { cacheHome?: string } = {}) => smart(args, { cacheHome: extra.cacheHome ?? cacheHome });
  const plan = async (args: string[], extra: { cacheHome?: string } = {}): Promise<Plan> => {
    const r = await run(['cache', 'plan', ...args, '--json'], extra);
    expect(r.code, r.stderr).toBe(0);
    return JSON.parse(r.stdout.toString()) as Plan;
  };

  beforeAll(async () => {
    work = await tempDir();
    store = path.join(work, 'store');
    cacheHome = path.join(work, 'cache');
    for (const [ref, layers] of Object.entries(BASES)) {
      const dir = path.join(work, 'images', ref.replace(/[/:]/g, '_'));
      await writeImage(dir, { layers });
      const r = await run(['push', `oci:${dir}:latest`, `file:${store}#${ref}`]);
      expect(r.code, r.stderr).toBe(0);
    }
    ctx = path.join(work, 'ctx');
    await writeContext(ctx);
    const appDir = path.join(work, 'images', 'app');
    await writeImage(appDir, { layers: await appLayers(ctx), workdir: '/app' });
    for (const tag of ['v1', 'latest']) {
      const r = await run(['push', `oci:${appDir}:latest`, `file:${store}#team/app:${tag}`, '--dockerfile', path.join(ctx, 'Dockerfile'), '--context', ctx, '--json']);
      expect(r.code, r.stderr).toBe(0);
    }
    const index = await run(['cache', 'index', `file:${store}`, '--json']);
    expect(index.code, index.stderr).toBe(0);
    expect(JSON.parse(index.stdout.toString())).toMatchObject({ tags: 6, failed: [] });
    await fs.mkdir(path.join(work, 'reg'));
    registry = await startRegistry({ configDir: path.join(work, 'reg'), root: store });
    proxy = await startProxy({ target: registry.url });
  });

  afterAll(async () => {
    await proxy?.stop();
    await registry?.stop();
  });

  it('cache index of one tag says it in the singular', async () => {
    const own = path.join(work, 'store-one');
    const push = await run(['push', `oci:${fixtures().paths.ociBasic}:latest`, `file:${own}#team/one:1`]);
    expect(push.code, push.stderr).toBe(0);
    const index = await run(['cache', 'index', `file:${own}`], { cacheHome: await tempDir() });
    expect(index.code, index.stderr).toBe(0);
    expect(index.stderr).toBe(`file:${own}: 1 tag in 1 repository; 1 refreshed, 0 unchanged, 0 failed; 3 layer chains\n`);
  });

  it('push --dockerfile of an image its tag holds already, pushed without: written again with its steps', async () => {
    const appDir = path.join(work, 'images', 'app');
    // A store of its own: the plans below count the images of the shared one.
    const own = path.join(work, 'store-again');
    const plain = await run(['push', `oci:${appDir}:latest`, `file:${own}#team/again:1`, '--json']);
    expect(plain.code, plain.stderr).toBe(0);
    const withSteps = await run(['push', `oci:${appDir}:latest`, `file:${own}#team/again:1`, '--dockerfile', path.join(ctx, 'Dockerfile'), '--context', ctx, '--json']);
    expect(withSteps.code, withSteps.stderr).toBe(0);
    const [before, after] = [plain, withSteps].map((r) => JSON.parse(r.stdout.toString()) as { manifestDigest: string; layers: { pushed: number } });
    // The layers are there: only the manifest, now naming each layer's step, is new.
    expect(after!.manifestDigest).not.toBe(before!.manifestDigest);
    expect(after!.layers.pushed).toBe(0);
    const tagged = await run(['push', `file:${own}#team/again:1`, `oci:${path.join(work, 'again-out')}:x`, '--json']);
    expect(JSON.parse(tagged.stdout.toString())).toMatchObject({ manifestDigest: after!.manifestDigest });
  });

  it('matches every step of an unchanged build', async () => {
    const p = await plan([`file:${store}`, ctx]);
    expect(p.best).toMatchObject({ baseLayers: 4, steps: 5 });
    expect(p.best!.image).toMatch(/^team\/app:/);
    expect(p.steps.filter((s) => s.matched).map((s) => s.instruction)).toEqual([
      'WORKDIR /app',
      'COPY package-lock.json package.json ./',
      'RUN npm ci',
      'COPY . .',
      'RUN npm run build',
    ].map((x) => expect.stringContaining(x.split(' ')[0]!)));
    expect(p.naive).toMatchObject({ image: 'team/app:latest' });
    // The other tag of the same image is the one other image holding the chain; never the best
    // again (for the classic builder, which made none of the app's layers, the base is the best).
    expect(p.alternatives).toEqual([p.best!.image === 'team/app:v1' ? 'team/app:latest' : 'team/app:v1']);
    for (const builder of ['docker', 'buildkit']) {
      const q = await plan([`file:${store}`, ctx, '--builder', builder]);
      expect(q.alternatives, builder).not.toContain(q.best!.image);
      expect(new Set(q.alternatives).size, builder).toBe(q.alternatives!.length);
    }
    // Both tags hold the base the classic builder's plan stops at, and neither is its best: both are listed.
    const classic = await plan([`file:${store}`, ctx, '--builder', 'docker']);
    expect(classic.best!.image).toBe('library/node:5');
    expect(classic.alternatives).toEqual(expect.arrayContaining(['team/app:v1', 'team/app:latest']));
  });

  it('reaches past the dependency install when only a source file changed', async () => {
    const changed = path.join(work, 'ctx-src');
    await writeContext(changed, 'console.log("v2");\n');
    const p = await plan([`file:${store}`, changed]);
    expect(p.best).toMatchObject({ baseLayers: 4, steps: 3 });
    expect(p.steps.find((s) => s.instruction.startsWith('RUN npm ci'))?.matched).toBe(true);
    expect(p.steps.find((s) => s.instruction === 'COPY . .')?.matched).toBe(false);
  });

  it('stops before the COPY of a changed package.json', async () => {
    const changed = path.join(work, 'ctx-pkg');
    await writeContext(changed, undefined, '{"name":"app","version":"2.0.0"}\n');
    const p = await plan([`file:${store}`, changed]);
    expect(p.best).toMatchObject({ baseLayers: 4, steps: 1 }); // the WORKDIR layer only
  });

  it('picks the base image itself for a build on another base, and the closest relative for a built image', async () => {
    const other = path.join(work, 'ctx-wheezy');
    await writeContext(other);
    await fs.writeFile(path.join(other, 'Dockerfile'), DOCKERFILE('node:wheezy'));
    const p = await plan([`file:${store}`, other]);
    expect(p.best).toMatchObject({ image: 'library/node:wheezy', baseLayers: 5, steps: 0 });

    // A node:0-wheezy rebuilt with one new top layer: it shares four layers with both node images.
    const rebuilt = path.join(work, 'images', 'rebuilt');
    await writeImage(rebuilt, { layers: [...DEB, ...NODE_COMMON, { files: { 'etc/node-flavour': 'rebuilt\n' }, createdBy: '/bin/sh -c echo rebuilt' }] });
    const q = await plan([`file:${store}`, '--image', `oci:${rebuilt}:latest`]);
    expect(q.best!.layers).toHaveLength(4);
    expect(q.best!.image).toMatch(/^library\/node:(0-)?wheezy$/);
  });

  it('cache pull moves exactly the planned layers, and the truncated image loads in skopeo', async () => {
    const changed = path.join(work, 'ctx-pull');
    await writeContext(changed, 'console.log("v3");\n');
    const fresh = await tempDir();
    await run(['cache', 'index', `docker://${proxy.host}`], { cacheHome: fresh });
    const p = await plan([`docker://${proxy.host}`, changed], { cacheHome: fresh });
    expect(p.best!.layers).toHaveLength(7);
    // file:STORE and docker://HOST are the same bytes: the same plan.
    expect((await plan([`file:${store}`, changed])).best!.bytes).toBe(p.best!.bytes);
    proxy.stats.clear();
    const out = path.join(work, 'cache.tar');
    const r = await run(['cache', 'pull', `docker://${proxy.host}`, changed, `docker-archive:${out}`, '--json'], { cacheHome: fresh });
    expect(r.code, r.stderr).toBe(0);
    const layerBytes = proxy.stats.requests
      .filter((q) => q.method === 'GET' && p.best!.layers.some((l) => q.path.endsWith(l.digest)))
      .reduce((n, q) => n + q.responseBytes, 0);
    expect(layerBytes).toBe(p.best!.bytes);
    // Not one layer more: the two the changed build cannot reuse are never fetched (configs are).
    const full = await plan([`docker://${proxy.host}`, ctx], { cacheHome: fresh });
    const unplanned = full.best!.layers.filter((l) => !p.best!.layers.some((x) => x.digest === l.digest));
    expect(unplanned).toHaveLength(2);
    expect(proxy.stats.requests.filter((q) => unplanned.some((l) => q.path.endsWith(l.digest)))).toEqual([]);
    const config = JSON.parse((await runOk('skopeo', ['--insecure-policy', 'inspect', '--config', `docker-archive:${out}`])).stdout.toString()) as {
      rootfs: { diff_ids: string[] };
    };
    expect(config.rootfs.diff_ids).toHaveLength(7);
    await runOk('skopeo', ['--insecure-policy', 'copy', `docker-archive:${out}`, `oci:${path.join(work, 'loaded')}:x`]);

    // Into the local layer store: the same layers, counted.
    const intoStore = await run(['cache', 'pull', `file:${store}`, changed, '--json', '--layer-store', path.join(await tempDir(), 'layers')]);
    expect(intoStore.code, intoStore.stderr).toBe(0);
    expect(JSON.parse(intoStore.stdout.toString())).toMatchObject({ fetched: 7, bytes: p.best!.bytes });
    // BuildKit reads its cache from the registry, from images with inline cache only: this one has none.
    const buildx = await run(['cache', 'pull', `docker://${proxy.host}`, changed, '--print-cache-from', 'buildx', '-q'], { cacheHome: fresh });
    expect(buildx.code, buildx.stderr).toBe(0);
    expect(buildx.stdout.toString()).toBe('');
    expect(buildx.stderr).toMatch(/buildx: BuildKit reads its cache from the registry, and team\/app:\S+ carries no inline cache/);
    // The classic builder cannot reuse BuildKit's layers (their history differs): it is offered the
    // base, by its registry reference when there is no archive to load.
    const docker = await run(['cache', 'pull', `docker://${proxy.host}`, changed, '--print-cache-from', 'docker', '-q'], { cacheHome: fresh });
    expect(docker.stdout.toString()).toMatch(/^--cache-from 127\.0\.0\.1:\d+\/library\/node@sha256:[0-9a-f]{64}\n$/);
  });

  it('prints the builder flags where they do not mix with the image or the JSON', async () => {
    const changed = path.join(work, 'ctx-flags');
    await writeContext(changed, 'console.log("v4");\n');
    // The archive on stdout stays an archive; the flags go to stderr and name what docker load tags.
    const piped = await run(['cache', 'pull', `file:${store}`, changed, 'docker-archive:-', '--print-cache-from', 'docker']);
    expect(piped.code, piped.stderr).toBe(0);
    const name = /^--cache-from (smartcache\/library\/node:[0-9a-f]{12})$/m.exec(piped.stderr)?.[1];
    expect(name, piped.stderr).toBeDefined();
    const archive = path.join(work, 'flags.tar');
    await fs.writeFile(archive, piped.stdout);
    const manifest = JSON.parse((await runOk('tar', ['-xOf', archive, 'manifest.json'])).stdout.toString()) as { RepoTags: string[] }[];
    expect(manifest[0]!.RepoTags).toEqual([name]);
    // --json: a field of the summary; --tag names the archive.
    const json = await run(['cache', 'pull', `file:${store}`, changed, `docker-archive:${path.join(work, 'flags2.tar')}`, '--print-cache-from', 'docker', '--tag', 'ci/cache:app', '--json']);
    expect(json.code, json.stderr).toBe(0);
    expect(JSON.parse(json.stdout.toString())).toMatchObject({ images: ['ci/cache:app'], cacheFrom: { builder: 'docker', flags: '--cache-from ci/cache:app', commands: [] } });
    expect(json.stderr).toContain('--cache-from ci/cache:app\n');
    // A name without a tag is written as docker save writes it, NAME:latest (docker load refuses a bare name).
    const bare = path.join(work, 'flags3.tar');
    const untagged = await run(['cache', 'pull', `file:${store}`, changed, `docker-archive:${bare}`, '--tag', 'ci/cache', '-q']);
    expect(untagged.code, untagged.stderr).toBe(0);
    const written = JSON.parse((await runOk('tar', ['-xOf', bare, 'manifest.json'])).stdout.toString()) as { RepoTags: string[] }[];
    expect(written[0]!.RepoTags).toEqual(['ci/cache:latest']);
  });

  it('warms what the next build of a Dockerfile will reuse', async () => {
    const changed = path.join(work, 'ctx-warm');
    await writeContext(changed, 'console.log("v5");\n');
    const layers = path.join(await tempDir(), 'layers');
    const first = await run(['cache', 'warm', `file:${store}`, '--for', path.join(changed, 'Dockerfile'), '--layer-store', layers, '--json']);
    expect(first.code, first.stderr).toBe(0);
    // The plan's layers (base and the steps before the changed sources), fetched once.
    expect(JSON.parse(first.stdout.toString())).toMatchObject({ fetched: 7, plan: { best: { baseLayers: 4, steps: 3 } } });
    const again = await run(['cache', 'warm', `file:${store}`, '--for', path.join(changed, 'Dockerfile'), '--layer-store', layers, '--json']);
    expect(JSON.parse(again.stdout.toString())).toMatchObject({ fetched: 0 });
    // A pull of another image that prunes the store (what a CI job or a cron runs) keeps what was
    // warmed for the builds to come: the warm counts as a use, as a pull does.
    const pruned = await run(['pull', `file:${store}#library/python:latest`, `rootfs:${path.join(await tempDir(), 'python')}`, '--layer-store', layers, '--prune', '--json']);
    expect(pruned.code, pruned.stderr).toBe(0);
    expect(JSON.parse(pruned.stdout.toString())).toMatchObject({ details: { prune: { removedLayers: 0 } } });
    const afterPrune = await run(['cache', 'warm', `file:${store}`, '--for', path.join(changed, 'Dockerfile'), '--layer-store', layers, '--prune', '--json']);
    expect(JSON.parse(afterPrune.stdout.toString())).toMatchObject({ fetched: 0, prune: { removedLayers: 0 } });
    // Once no use is recent, they go.
    const all = await run(['pull', `file:${store}#library/python:latest`, `rootfs:${path.join(await tempDir(), 'python')}`, '--layer-store', layers, '--prune', '0', '--json']);
    // The 5 python does not use; its own, which this pull used, stay (--prune 0 once removed them too).
    expect((JSON.parse(all.stdout.toString()) as { details: { prune: { removedLayers: number } } }).details.prune.removedLayers).toBe(5);
  });

  it('warms the layer store with the most shared chains', async () => {
    const r = await run(['cache', 'warm', `file:${store}`, '--top', '1', '--json'], { cacheHome });
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout.toString())).toMatchObject({ chains: 1 });
    const { layers } = JSON.parse(r.stdout.toString()) as { layers: number };
    expect(layers).toBeGreaterThanOrEqual(2);
    // The chains warmed count as used: a pull's --prune keeps them.
    const pruned = await run(['pull', `file:${store}#library/python:latest`, `rootfs:${path.join(await tempDir(), 'python')}`, '--prune', '--keep-layers', '--json'], { cacheHome });
    expect(pruned.code, pruned.stderr).toBe(0);
    expect(JSON.parse(pruned.stdout.toString())).toMatchObject({ details: { prune: { removedLayers: 0 } } });
    // The cron that warms prunes too: python's pull, eight days old, goes with its own layer; the chain warmed now stays.
    const records = path.join(cacheHome, 'smartlayer', 'layer-store', 'images');
    for (const name of await fs.readdir(records)) {
      if (name.startsWith('chain-')) continue;
      const record = JSON.parse(await fs.readFile(path.join(records, name), 'utf8')) as { usedAt: string };
      await fs.writeFile(path.join(records, name), JSON.stringify({ ...record, usedAt: new Date(Date.now() - 8 * 86_400_000).toISOString() }));
    }
    const cron = await run(['cache', 'warm', `file:${store}`, '--top', '1', '--prune', '--json'], { cacheHome });
    expect(cron.code, cron.stderr).toBe(0);
    expect(JSON.parse(cron.stdout.toString())).toMatchObject({ chains: 1, fetched: 0, prune: { removedImages: 1, removedLayers: 1 } });
    expect(cron.stderr.toString()).toMatch(/^pruned 1 layer and 0 kept blobs that nothing used within 7 days \(.+\)$/m);
    expect(JSON.parse((await run(['cache', 'warm', `file:${store}`, '--top', '1', '--json'], { cacheHome })).stdout.toString())).toMatchObject({ chains: 1, fetched: 0 });
    // --prune 0: what the warm made present is in use, whatever the age asked.
    expect(JSON.parse((await run(['cache', 'warm', `file:${store}`, '--top', '1', '--prune', '0', '--json'], { cacheHome })).stdout.toString())).toMatchObject({ chains: 1, prune: { removedLayers: 0 } });
    expect(JSON.parse((await run(['cache', 'warm', `file:${store}`, '--top', '1', '--json'], { cacheHome })).stdout.toString())).toMatchObject({ chains: 1, fetched: 0 });
  });

  it('lints a build that copies sources before installing dependencies', async () => {
    const bad = path.join(work, 'ctx-lint');
    await writeContext(bad);
    await fs.writeFile(path.join(bad, 'Dockerfile'), 'FROM node\nCOPY . .\nRUN npm ci\n');
    const r = await run(['cache', 'lint', bad, '--strict']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/line 2: .*\[COPY_BEFORE_INSTALL\]/);
    expect(r.stderr).toMatch(/\[UNPINNED_BASE\]/);
  });

  it('shares the metadata cache in Redis: a warm pull reads no manifest or config from the registry, only one HEAD for the tag; Redis gone is one warning', async () => {
    const redis = await startRedis(await tempDir());
    try {
      const args = ['pull', `docker://${proxy.host}/team/app:v1`, `rootfs:${path.join(work, 'r1')}`, '--redis', redis.url];
      const first = await run(args, { cacheHome: await tempDir() });
      expect(first.code, first.stderr).toBe(0);
      // Another machine (its own disk cache and layer store), the same Redis.
      proxy.stats.clear();
      const second = await run(['pull', `docker://${proxy.host}/team/app:v1`, `rootfs:${path.join(work, 'r2')}`, '--redis', redis.url], { cacheHome: await tempDir() });
      expect(second.code, second.stderr).toBe(0);
      // Only layer blobs went over the wire: no manifest, and no config (the app's config digest).
      // The tag itself is asked of the registry (it may have moved): one HEAD.
      expect(proxy.stats.requests.filter((q) => q.path.includes('/manifests/')).map((q) => `${q.method} ${q.path}`)).toEqual(['HEAD /v2/team/app/manifests/v1']);
      const blobGets = proxy.stats.requests.filter((q) => q.method === 'GET' && q.path.includes('/blobs/'));
      expect(blobGets.length).toBe(9); // the nine layers, nothing else

      // Two index runs at once on one store: both end well, the trie answers after.
      const [a, b] = await Promise.all([
        run(['cache', 'index', `file:${store}`, '--redis', redis.url, '--json'], { cacheHome: await tempDir() }),
        run(['cache', 'index', `file:${store}`, '--redis', redis.url, '--json'], { cacheHome: await tempDir() }),
      ]);
      expect(a.code, a.stderr).toBe(0);
      expect(b.code, b.stderr).toBe(0);
      const p = await plan([`file:${store}`, ctx, '--redis', redis.url], { cacheHome: await tempDir() });
      expect(p.best).toMatchObject({ steps: 5 });

      // A database the server does not have: refused as a wrong password is, never database 0.
      const keysBefore = await redis.cli('DBSIZE');
      const noDb = await run(['cache', 'index', `file:${store}`, '--redis', `${redis.url}/99`], { cacheHome: await tempDir() });
      expect(noDb.code).toBe(1);
      expect(noDb.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^smart: error \[STORAGE\]: redis .*: connecting: ERR DB index is out of range/)]);
      expect(await redis.cli('DBSIZE')).toBe(keysBefore);

      await redis.kill9();
      const down = await run(['pull', `docker://${proxy.host}/team/app:v1`, `rootfs:${path.join(work, 'r3')}`, '--redis', redis.url], { cacheHome: await tempDir() });
      expect(down.code, down.stderr).toBe(0);
      expect(down.stderr.match(/warning: metadata cache unavailable/g)).toHaveLength(1);
    } finally {
      await redis.stop();
    }
  });
});

describe('a Redis Cluster whose state is fail (a master lost, or nodes never joined)', () => {
  it('costs a push one warning and fails a cache command in one line, never a silent exit 0 with the work undone', async () => {
    // One cluster-enabled node never joined to others serves no slot: ioredis waits on it holding
    // no socket open, and Node once ended the command there, status 0, nothing pushed or printed.
    const dir = await tempDir();
    const node = await startRedis(dir, { args: ['--cluster-enabled', 'yes', '--cluster-config-file', path.join(dir, 'nodes.conf')] });
    try {
      const url = `redis+cluster://127.0.0.1:${node.port}`;
      const store = path.join(dir, 'store');
      const image = path.join(dir, 'image');
      await writeImage(image, { layers: [{ files: { 'a.txt': 'a\n' }, createdBy: 'COPY a.txt /' }] });
      const cacheHome = path.join(dir, 'cache');
      const pushed = await smart(['push', `oci:${image}:latest`, `file:${store}#team/app:1`, '--redis', url], { cacheHome });
      expect(pushed.code, pushed.stderr).toBe(0);
      expect(pushed.stdout.toString()).toMatch(/^file:.*#team\/app@sha256:[0-9a-f]{64}\n$/);
      expect(pushed.stderr.match(/^warning: metadata cache unavailable, going on without it: redis cluster 127\.0\.0\.1:\d+: .*no answer/gm)).toHaveLength(1);
      const indexed = await smart(['cache', 'index', `file:${store}`, '--redis', url], { cacheHome });
      expect(indexed.code).toBe(1);
      expect(indexed.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^smart: error \[STORAGE\]: redis cluster 127\.0\.0\.1:\d+: .*no answer in \d+ ms \(redis-cli cluster info on a node should say cluster_state:ok\)$/)]);
    } finally {
      await node.stop();
    }
  });
});

/** The node serving each slot, as CLUSTER NODES says before any slot moves. */
async function slotOwner(cluster: RunningRedisCluster): Promise<(slot: number) => RunningRedis> {
  const served = (await cluster.nodes[0]!.cli('CLUSTER', 'NODES')).split('\n').map((line) => {
    const fields = line.split(' ');
    const port = Number(/:(\d+)@/.exec(fields[1]!)![1]);
    return { node: cluster.nodes.find((n) => n.port === port)!, ranges: fields.slice(8).map((r) => r.split('-').map(Number)) };
  });
  return (slot) => served.find((s) => s.ranges.some(([lo = -1, hi = lo]) => slot >= lo && slot <= hi))!.node;
}

describe('a Redis Cluster moving a slot (a reshard)', () => {
  it('serves a push and an index whose keys are in the slot: ASK and MOVED followed, never a warning or a failed index', async () => {
    const dir = await tempDir();
    const cluster = await startRedisCluster(path.join(dir, 'redis'));
    try {
      const store = path.join(dir, 'store');
      const image = path.join(dir, 'image');
      await writeImage(image, { layers: [{ files: { 'a.txt': 'a\n' }, createdBy: 'COPY a.txt /' }] });
      const cacheHome = path.join(dir, 'cache');
      const url = cluster.url;
      const push = (tag: string, redis = true) => smart(['push', `oci:${image}:latest`, `file:${store}#team/ask:${tag}`, ...(redis ? ['--redis', url] : [])], { cacheHome });

      // The keys whose slot moves, chosen so that one pipeline holds a key of the moving slot
      // that the node does not hold (ASK) and a key of another slot that node serves: the store's
      // never-written "indexed since" read with a tag's record by every push, and two tags'
      // records read together by the index, one of them never written to Redis.
      const keys = trieKeys(storeScope(parseImageName(`file:${store}#team/ask:x`))!.scope);
      const slotOf = (key: string) => clusterKeySlot(DEFAULT_REDIS_KEY_PREFIX + key);
      const ownerOf = await slotOwner(cluster);
      const since = slotOf(keys.indexedSince);
      const source = ownerOf(since);
      const target = cluster.nodes.find((n) => n !== source)!;
      const tags = Array.from({ length: 1000 }, (_, i) => `t${i}`).filter((t) => ownerOf(slotOf(keys.image('team/ask', t))) === source && slotOf(keys.image('team/ask', t)) !== since);
      const [recorded, unrecorded] = [tags[0]!, tags.find((t) => slotOf(keys.image('team/ask', t)) !== slotOf(keys.image('team/ask', tags[0]!)))!];
      expect((await push(recorded)).code).toBe(0);
      expect((await push(unrecorded, false)).code).toBe(0);

      const [sourceId, targetId] = await Promise.all([source.cli('CLUSTER', 'MYID'), target.cli('CLUSTER', 'MYID')]);
      for (const slot of [since, slotOf(keys.image('team/ask', unrecorded))]) {
        expect(await target.cli('CLUSTER', 'SETSLOT', String(slot), 'IMPORTING', sourceId)).toBe('OK');
        expect(await source.cli('CLUSTER', 'SETSLOT', String(slot), 'MIGRATING', targetId)).toBe('OK');
      }
      // Once ioredis's replay of a pipeline sent all of it to the node of the first ASK, which
      // MOVED the other keys back: "metadata cache unavailable ... ASK" / "MOVED".
      const pushed = await push('during');
      expect(pushed.code, pushed.stderr).toBe(0);
      expect(pushed.stderr).not.toMatch(/warning/);
      const indexed = await smart(['cache', 'index', `file:${store}`, '--redis', url], { cacheHome });
      expect(indexed.code, indexed.stderr).toBe(0);
      expect(indexed.stderr).toBe(`file:${store}: 3 tags in 1 repository; 3 refreshed, 0 unchanged, 0 failed; 1 layer chain\n`);
    } finally {
      await cluster.stop();
    }
  });
});

/** A store of its own holding a one-layer base image `REPO/base:1`: for plans over images crafted on it. */
async function storeWithBase(repo: string): Promise<{ work: string; store: string; cacheHome: string; base: LayerSpec }> {
  const work = await tempDir();
  const store = path.join(work, 'store');
  const cacheHome = path.join(work, 'cache');
  const base: LayerSpec = { files: { 'etc/os-release': `ID=${repo}\n` }, createdBy: '/bin/sh -c #(nop) ADD file:base in / ' };
  const baseDir = path.join(work, 'base');
  await writeImage(baseDir, { layers: [base] });
  expect((await smart(['push', `oci:${baseDir}:latest`, `file:${store}#${repo}/base:1`], { cacheHome })).code).toBe(0);
  return { work, store, cacheHome, base };
}

/** storeWithBase, indexed, and a build context `ctx` holding `dockerfile`. */
async function indexedWithContext(repo: string, dockerfile: string): Promise<Awaited<ReturnType<typeof storeWithBase>> & { ctx: string }> {
  const s = await storeWithBase(repo);
  expect((await smart(['cache', 'index', `file:${s.store}`], { cacheHome: s.cacheHome })).code).toBe(0);
  const ctx = path.join(s.work, 'ctx');
  await fs.mkdir(ctx);
  await fs.writeFile(path.join(ctx, 'Dockerfile'), dockerfile);
  return { ...s, ctx };
}

describe('smart cache plan over a build matrix', () => {
  it('finds the image the build args ran alike among many that share the step text (10 flavors)', async () => {
    const { work, store, cacheHome, base } = await storeWithBase('matrix');
    // The classic builder's history of `ARG FLAVOR` / `RUN echo "$FLAVOR" > /flavor` built with --build-arg FLAVOR=fN.
    for (let n = 1; n <= 10; n++) {
      const dir = path.join(work, `f${n}`);
      await writeImage(dir, { layers: [base, { files: { flavor: `f${n}\n` }, createdBy: `|1 FLAVOR=f${n} /bin/sh -c echo "$FLAVOR" > /flavor` }] });
      const r = await smart(['push', `oci:${dir}:latest`, `file:${store}#matrix/app:f${n}`], { cacheHome });
      expect(r.code, r.stderr).toBe(0);
    }
    expect((await smart(['cache', 'index', `file:${store}`], { cacheHome })).code).toBe(0);
    const ctx = path.join(work, 'ctx');
    await fs.mkdir(ctx);
    await fs.writeFile(path.join(ctx, 'Dockerfile'), 'FROM matrix/base:1\nARG FLAVOR\nRUN echo "$FLAVOR" > /flavor\n');
    // Whichever flavor: its own image, its RUN matched (the check stopped after 6 candidates, leaving the later flavors the base alone).
    for (const flavor of ['f1', 'f7', 'f10']) {
      const r = await smart(['cache', 'plan', `file:${store}`, ctx, '--build-arg', `FLAVOR=${flavor}`, '--builder', 'docker', '--json'], { cacheHome });
      expect(r.code, r.stderr).toBe(0);
      const p = JSON.parse(r.stdout.toString()) as Plan;
      expect(p.best, flavor).toMatchObject({ image: `matrix/app:${flavor}`, steps: 1 });
    }
  });
});

describe.skipIf(!haveTools('docker-registry', 'skopeo'))('a stored image that lost a layer blob', () => {
  it('is passed over for the next image holding the layers by cache pull (before a byte of a docker-archive:- goes out), warm --for and warm --top, in a file: store and through the registry', async () => {
    const { work, store, cacheHome, base } = await storeWithBase('lost');
    const dir = path.join(work, 'app');
    const x: LayerSpec = { files: { x: 'x\n' }, createdBy: '/bin/sh -c echo x > /x' };
    await writeImage(dir, { layers: [base, x] });
    const repos = ['lost/a', 'lost/b', 'lost/c'];
    for (const repo of repos) expect((await smart(['push', `oci:${dir}:latest`, `file:${store}#${repo}:1`], { cacheHome })).code).toBe(0);
    expect((await smart(['cache', 'index', `file:${store}`], { cacheHome })).code).toBe(0);
    const ctx = path.join(work, 'ctx');
    await fs.mkdir(ctx);
    await fs.writeFile(path.join(ctx, 'Dockerfile'), 'FROM lost/base:1\nRUN echo x > /x\nRUN echo y > /y\n');
    const best = (JSON.parse((await smart(['cache', 'plan', `file:${store}`, ctx, '--json'], { cacheHome })).stdout.toString()) as Plan).best!;
    expect(best).toMatchObject({ steps: 1 });
    const [baseLayer, xLayer] = best.layers;
    // One link lost in the image the plan names: the manifest is served, the blob is BLOB_UNKNOWN.
    const unlink = (repo: string) => fs.rm(path.join(store, 'docker/registry/v2/repositories', repo, '_layers', 'sha256', xLayer!.digest.slice(7)), { recursive: true });
    const broken = best.image.replace(/:1$/, '');
    await unlink(broken);
    const warning = new RegExp(
      `^warning: ${broken}:1@sha256:[0-9a-f]{64}, the plan's best cache, lacks its layer ${xLayer!.digest.slice(0, 19)} \\(the store would answer BLOB_UNKNOWN\\); planned again without it \\(pushing that image to the store again repairs it\\)$`,
    );
    const warnings = (stderr: string) => stderr.trim().split('\n').filter((l) => /^(warning|smart):/.test(l));

    const pulled = await smart(['cache', 'pull', `file:${store}`, ctx, '--layer-store', path.join(work, 'layers1'), '--json'], { cacheHome });
    expect(pulled.code, pulled.stderr).toBe(0);
    expect(warnings(pulled.stderr)).toEqual([expect.stringMatching(warning)]);
    const r = JSON.parse(pulled.stdout.toString()) as { plan: Plan; fetched: number };
    expect(r.plan.best).toMatchObject({ steps: 1, layers: [baseLayer, xLayer] });
    expect(r.plan.best!.image).not.toBe(best.image);
    expect(r.fetched).toBe(2);

    const warmFor = await smart(['cache', 'warm', `file:${store}`, '--for', path.join(ctx, 'Dockerfile'), '--layer-store', path.join(work, 'layers2'), '--json'], { cacheHome });
    expect(warmFor.code, warmFor.stderr).toBe(0);
    expect(warnings(warmFor.stderr)).toEqual([expect.stringMatching(warning)]);
    expect(JSON.parse(warmFor.stdout.toString())).toMatchObject({ fetched: 2 });

    // `cache pull … docker-archive:- | docker load`: the image passed over before the archive's
    // first byte, so stdout is one whole archive of the other image, and the flags file is written.
    const flags = path.join(work, 'flags');
    const archived = await smart(['cache', 'pull', `file:${store}`, ctx, 'docker-archive:-', '--print-cache-from', 'docker', '--print-cache-from-file', flags], { cacheHome });
    expect(archived.code, archived.stderr).toBe(0);
    expect(warnings(archived.stderr)).toEqual([expect.stringMatching(warning)]);
    const tar = path.join(work, 'cache.tar');
    await fs.writeFile(tar, archived.stdout);
    const inspected = JSON.parse((await runOk('skopeo', ['--insecure-policy', 'inspect', '--config', `docker-archive:${tar}`])).stdout.toString()) as { rootfs: { diff_ids: string[] } };
    expect(inspected.rootfs.diff_ids).toHaveLength(2);
    expect(await fs.readFile(flags, 'utf8')).toMatch(/^--cache-from smartcache\/lost\/[abc]:[0-9a-f]{12}\n?$/);
    expect(await fs.readFile(flags, 'utf8')).not.toContain(broken);

    // The stock registry serving the store answers 404 BLOB_UNKNOWN for that blob: the same, through it.
    await fs.mkdir(path.join(work, 'reg'));
    const registry = await startRegistry({ configDir: path.join(work, 'reg'), root: store });
    try {
      const remote = `docker://${registry.host}`;
      expect((await smart(['cache', 'index', remote], { cacheHome })).code).toBe(0);
      const viaRegistry = await smart(['cache', 'pull', remote, ctx, '--layer-store', path.join(work, 'layers3'), '--json'], { cacheHome });
      expect(viaRegistry.code, viaRegistry.stderr).toBe(0);
      expect(warnings(viaRegistry.stderr)).toEqual([expect.stringMatching(new RegExp(`^warning: ${broken}:1@sha256:[0-9a-f]{64}, the plan's best cache, lacks its layer`))]);
      expect(JSON.parse(viaRegistry.stdout.toString())).toMatchObject({ fetched: 2, plan: { best: { steps: 1, layers: [baseLayer, xLayer] } } });
    } finally {
      await registry.stop();
    }

    // Every image holding the layer lost it: warm --top says so once for that chain and warms the
    // others; cache pull falls back to the base, as with a cache that has no such step.
    for (const repo of repos.filter((r) => r !== broken)) await unlink(repo);
    const warmed = await smart(['cache', 'warm', `file:${store}`, '--top', '10', '--layer-store', path.join(work, 'layers4'), '--json'], { cacheHome });
    expect(warmed.code, warmed.stderr).toBe(0);
    expect(warnings(warmed.stderr)).toEqual([
      expect.stringMatching(new RegExp(`^warning: no image the index names as holding the chain sha256:[0-9a-f]{64} can serve it now \\(lost/[abc]@sha256:[0-9a-f]{64} lacks its layer ${xLayer!.digest.slice(0, 19)} .*\\); skipped: pushing that image to the store again repairs it$`)),
    ]);
    expect(JSON.parse(warmed.stdout.toString())).toMatchObject({ chains: 1, layers: 1, fetched: 1 });
    const baseOnly = await smart(['cache', 'pull', `file:${store}`, ctx, '--layer-store', path.join(work, 'layers5'), '--json'], { cacheHome });
    expect(baseOnly.code, baseOnly.stderr).toBe(0);
    expect(warnings(baseOnly.stderr)).toHaveLength(3);
    expect(JSON.parse(baseOnly.stdout.toString())).toMatchObject({ plan: { best: { image: 'lost/base:1', steps: 0, layers: [baseLayer] } }, fetched: 1 });
  });
});

describe('an index older than the store', () => {
  it('warms a chain from the next image that holds it when the one the index names first was deleted; a cache pull past a deleted best takes the next candidate, or nothing', async () => {
    const { work, store, cacheHome, base } = await storeWithBase('gone');
    const dir = path.join(work, 'app');
    await writeImage(dir, { layers: [base, { files: { x: 'x\n' }, createdBy: '/bin/sh -c echo x > /x' }] });
    for (const repo of ['gone/a', 'gone/b']) expect((await smart(['push', `oci:${dir}:latest`, `file:${store}#${repo}:1`], { cacheHome })).code).toBe(0);
    expect((await smart(['cache', 'index', `file:${store}`], { cacheHome })).code).toBe(0);
    const ctx = path.join(work, 'ctx');
    await fs.mkdir(ctx);
    // The base read through its transport: the store's images of it can all go.
    await fs.writeFile(path.join(ctx, 'Dockerfile'), `FROM oci:${path.join(work, 'base')}:latest\nRUN echo x > /x\n`);
    const planned = await smart(['cache', 'plan', `file:${store}`, ctx, '--json'], { cacheHome });
    const best = (JSON.parse(planned.stdout.toString()) as Plan).best!;
    expect(best).toMatchObject({ steps: 1 });
    const layerOf = async (image: string) => (JSON.parse((await smart(['cache', 'plan', `file:${store}`, '--image', `file:${store}#${image}`, '--json'], { cacheHome })).stdout.toString()) as Plan).best!.layers;
    const [baseLayer, xLayer] = await layerOf('gone/a:1');
    // A registry's cleanup between the index and the next cron: the image the index names first goes.
    const gone = best.image.replace(/:1$/, '');
    const other = gone === 'gone/a' ? 'gone/b' : 'gone/a';
    await fs.rm(path.join(store, 'docker/registry/v2/repositories', gone), { recursive: true });

    const warmed = await smart(['cache', 'warm', `file:${store}`, '--top', '10', '--json', '--layer-store', path.join(work, 'layers')], { cacheHome });
    expect(warmed.code, warmed.stderr).toBe(0);
    expect(JSON.parse(warmed.stdout.toString())).toMatchObject({ chains: 2, layers: 2, fetched: 2 });
    expect(warmed.stderr).not.toMatch(/warning/);

    // A CI step's pull: one warning naming the image gone and what refreshes the index, then the
    // plan again without it: the other image holding the same layers, which it fetches.
    const warning = (image: string) =>
      new RegExp(`^warning: ${image}:1@sha256:[0-9a-f]{64}, the plan's best cache, is no longer in the store; planned again without it \\(smart cache index file:${store} refreshes the index\\)$`);
    const pulled = await smart(['cache', 'pull', `file:${store}`, ctx, '--layer-store', path.join(work, 'layers2'), '--json'], { cacheHome });
    expect(pulled.code, pulled.stderr).toBe(0);
    expect(pulled.stderr.trim().split('\n').filter((l) => /^(warning|smart):/.test(l))).toEqual([expect.stringMatching(warning(gone))]);
    const r = JSON.parse(pulled.stdout.toString()) as { plan: Plan; fetched: number };
    expect(r.plan.best).toMatchObject({ image: `${other}:1`, steps: 1, layers: [baseLayer, xLayer] });
    expect(r.fetched).toBe(2);
    // warm --for alike, into a layout: the other image's two layers.
    const layout = path.join(work, 'warm-for');
    const warmFor = await smart(['cache', 'warm', `file:${store}`, ctx, `oci:${layout}:cache`, '--for', path.join(ctx, 'Dockerfile'), '--json'], { cacheHome });
    expect(warmFor.code, warmFor.stderr).toBe(0);
    expect(warmFor.stderr.trim().split('\n').filter((l) => /^(warning|smart):/.test(l))).toEqual([expect.stringMatching(warning(gone))]);
    expect((JSON.parse(warmFor.stdout.toString()) as { plan: Plan }).plan.best).toMatchObject({ image: `${other}:1`, layers: [baseLayer, xLayer] });
    const manifest = (await runOk('skopeo', ['inspect', '--raw', `oci:${layout}:cache`])).stdout.toString();
    expect((JSON.parse(manifest) as { layers: { digest: string }[] }).layers.map((l) => l.digest)).toEqual([baseLayer!.digest, xLayer!.digest]);

    // Both images gone: the base alone, then, its image gone too, nothing: exit 0, as an empty cache.
    await fs.rm(path.join(store, 'docker/registry/v2/repositories', other), { recursive: true });
    const baseOnly = await smart(['cache', 'pull', `file:${store}`, ctx, '--layer-store', path.join(work, 'layers3'), '--json'], { cacheHome });
    expect(baseOnly.code, baseOnly.stderr).toBe(0);
    expect(baseOnly.stderr.trim().split('\n').filter((l) => /^(warning|smart):/.test(l))).toEqual([expect.stringMatching(warning(gone)), expect.stringMatching(warning(other))]);
    expect(JSON.parse(baseOnly.stdout.toString())).toMatchObject({ plan: { best: { image: 'gone/base:1', steps: 0, layers: [baseLayer] } }, fetched: 1 });
    await fs.rm(path.join(store, 'docker/registry/v2/repositories', 'gone/base'), { recursive: true });
    const none = await smart(['cache', 'pull', `file:${store}`, ctx, 'docker-archive:-'], { cacheHome });
    expect(none.code, none.stderr).toBe(0);
    expect(none.stderr.trim().split('\n').filter((l) => l.startsWith('warning:'))).toHaveLength(3);
    expect(none.stderr).toContain('no stored image shares a layer with this build');
    // The next index drops the deleted images: nothing to warn of.
    expect((await smart(['cache', 'index', `file:${store}`], { cacheHome })).code).toBe(0);
    const again = await smart(['cache', 'pull', `file:${store}`, ctx, '--layer-store', path.join(work, 'layers4')], { cacheHome });
    expect(again.code, again.stderr).toBe(0);
    expect(again.stderr).not.toMatch(/warning/);
  });

  it('a tag whose link the registry cannot read is one failure of the index, not a tag skipped without a word', async () => {
    const { store, cacheHome } = await storeWithBase('malformed');
    const link = path.join(store, 'docker/registry/v2/repositories/malformed/base/_manifests/tags/1/current/link');
    // A trailing newline: the registry answers 500 for it, garbage-collect aborts.
    await fs.writeFile(link, `${await fs.readFile(link, 'utf8')}\n`);
    const r = await smart(['cache', 'index', `file:${store}`, '--json'], { cacheHome });
    expect(r.code, r.stderr).toBe(0);
    const summary = JSON.parse(r.stdout.toString()) as { tags: number; refreshed: number; unchanged: number; failed: { image: string; error: string }[] };
    expect(summary.failed).toEqual([{ image: 'malformed/base:1', error: expect.stringMatching(/link/) }]);
    expect(summary.refreshed + summary.unchanged + summary.failed.length).toBe(summary.tags);
  });

  it('a tag listed that names no image (its current link missing) is one failure of the index, by file: and by the registry; a tag deleted once listed is no tag', async () => {
    const { work, store, cacheHome } = await storeWithBase('unset');
    const base = path.join(store, 'docker/registry/v2/repositories/unset/base/_manifests/tags');
    await fs.cp(path.join(base, '1'), path.join(base, 'gone'), { recursive: true });
    // What a push killed between the tag's two links leaves; `store check` calls it tag-unset.
    await fs.mkdir(path.join(base, '2', 'index'), { recursive: true });
    type Summary = { tags: number; refreshed: number; unchanged: number; failed: { image: string; error: string }[] };
    const failure = { image: 'unset/base:2', error: expect.stringMatching(/^listed, but names no image/) };
    const adds = (r: Summary) => r.refreshed + r.unchanged + r.failed.length;
    const indexed = await smart(['cache', 'index', `file:${store}`, '--json'], { cacheHome });
    expect(indexed.code, indexed.stderr).toBe(0);
    expect(indexed.stderr.trim().split('\n').filter((l) => l.startsWith('warning:'))).toEqual([expect.stringMatching(/^warning: unset\/base:2: listed, but names no image/)]);
    const summary = JSON.parse(indexed.stdout.toString()) as Summary;
    expect(summary).toMatchObject({ tags: 3, failed: [failure] });
    expect(adds(summary)).toBe(summary.tags);

    // A tag deleted between the listing and its read (as the registry's DELETE leaves it: its
    // directory gone): no failure, and no tag. The run is the CLI's, through the library, and the
    // deletion comes with its first read of the records, once the tags are listed.
    const session = await openCacheSession({ cacheDir: path.join(cacheHome, 'smartlayer') });
    try {
      const cache = session.ctx.cache;
      let deleted: Promise<void> | undefined;
      const getMany: MetadataCache['getMany'] = async (keys) => {
        await (deleted ??= fs.rm(path.join(base, 'gone'), { recursive: true }));
        return cache.getMany(keys);
      };
      const hooked = new Proxy(cache, { get: (target, name, receiver) => (name === 'getMany' ? getMany : Reflect.get(target, name, receiver)) });
      const r = await indexStore(`file:${store}`, { ...session.ctx, cache: hooked });
      expect(deleted).toBeDefined();
      expect(r).toMatchObject({ tags: 2, failed: [failure] });
      expect(adds(r)).toBe(r.tags);
    } finally {
      await session.close();
    }

    // The registry lists it too (and answers 404 for it): the same failure through docker://.
    if (!haveTools('docker-registry')) return;
    await fs.mkdir(path.join(work, 'reg'));
    const registry = await startRegistry({ configDir: path.join(work, 'reg'), root: store });
    try {
      const host = new URL(registry.url).host;
      const viaRegistry = await smart(['cache', 'index', `docker://${host}`, '--json'], { cacheHome });
      expect(viaRegistry.code, viaRegistry.stderr).toBe(0);
      const r = JSON.parse(viaRegistry.stdout.toString()) as Summary;
      expect(r).toMatchObject({ tags: 2, failed: [failure] });
      expect(adds(r)).toBe(r.tags);
    } finally {
      await registry.stop();
    }
  });

  it('a tag moved to another image no longer offers the image it named, at once after the push that moved it; a tag deleted, after the next index', async () => {
    const { work, store, cacheHome, base } = await storeWithBase('moved');
    const [x, y] = [path.join(work, 'x'), path.join(work, 'y')];
    await writeImage(x, { layers: [base, { files: { x: 'x\n' }, createdBy: '/bin/sh -c echo x > /x' }] });
    await writeImage(y, { layers: [base, { files: { y: 'y\n' }, createdBy: '/bin/sh -c echo y > /y' }] });
    expect((await smart(['push', `oci:${x}:latest`, `file:${store}#moved/app:1`], { cacheHome })).code).toBe(0);
    expect((await smart(['cache', 'index', `file:${store}`], { cacheHome })).code).toBe(0);
    const ctx = path.join(work, 'ctx');
    await fs.mkdir(ctx);
    await fs.writeFile(path.join(ctx, 'Dockerfile'), 'FROM moved/base:1\nRUN echo x > /x\n');
    const plan = async () => JSON.parse((await smart(['cache', 'plan', `file:${store}`, ctx, '--json'], { cacheHome })).stdout.toString()) as Plan;
    expect((await plan()).best).toMatchObject({ image: 'moved/app:1', steps: 1 });
    // The tag moves; the registry's garbage collection then takes the old image (its revision goes).
    expect((await smart(['push', `oci:${y}:latest`, `file:${store}#moved/app:1`], { cacheHome })).code).toBe(0);
    const xManifest = JSON.parse(await fs.readFile(path.join(x, 'index.json'), 'utf8')).manifests[0].digest as string;
    await fs.rm(path.join(store, 'docker/registry/v2/repositories/moved/app/_manifests/revisions/sha256', xManifest.slice(7)), { recursive: true });
    const after = await plan();
    expect(after.best?.image ?? '').not.toMatch(/^moved\/app:1@/);
    expect(after.best?.steps ?? 0).toBe(0);
    const pulled = await smart(['cache', 'pull', `file:${store}`, ctx, '--layer-store', path.join(work, 'layers')], { cacheHome });
    expect(pulled.code, pulled.stderr).toBe(0);
    // A tag deleted (its repository gone), whose image alone held the chain: the next index drops it.
    expect((await smart(['push', `oci:${x}:latest`, `file:${store}#moved/solo:1`], { cacheHome })).code).toBe(0);
    expect((await plan()).best).toMatchObject({ image: 'moved/solo:1', steps: 1 });
    await fs.rm(path.join(store, 'docker/registry/v2/repositories/moved/solo'), { recursive: true });
    expect((await smart(['cache', 'index', `file:${store}`], { cacheHome })).code).toBe(0);
    expect((await plan()).best?.steps ?? 0).toBe(0);
    const again = await smart(['cache', 'pull', `file:${store}`, ctx, '--layer-store', path.join(work, 'layers2')], { cacheHome });
    expect(again.code, again.stderr).toBe(0);
  });

  it('says when the store holds the base but the index has not seen its layers (its tag moved since, by another machine): what refreshes it', async () => {
    const { work, store, cacheHome, ctx } = await indexedWithContext('rebased', 'FROM rebased/base:1\nRUN echo y > /y\n');
    const line = async () => (await smart(['cache', 'plan', `file:${store}`, ctx], { cacheHome })).stderr.split('\n').find((l) => l.startsWith('base '));
    expect(await line()).toBe('base rebased/base:1: 1 of 1 layers in the store (as rebased/base:1)');
    const next = path.join(work, 'next-base');
    await writeImage(next, { layers: [{ files: { 'etc/os-release': 'ID=next\n' }, createdBy: '/bin/sh -c #(nop) ADD file:next in / ' }] });
    expect((await smart(['push', `oci:${next}:latest`, `file:${store}#rebased/base:1`], { cacheHome: path.join(work, 'another-machine') })).code).toBe(0);
    expect(await line()).toBe(`base rebased/base:1: 0 of 1 layers in the store (as rebased/base:1); the index has not seen them yet (smart cache index file:${store} adds them)`);
    expect((await smart(['cache', 'index', `file:${store}`], { cacheHome })).code).toBe(0);
    expect(await line()).toBe('base rebased/base:1: 1 of 1 layers in the store (as rebased/base:1)');
  });

  it('says a store has no index when nothing matched for want of one, and a store indexed with nothing shared has nothing to warm, without a warning', async () => {
    const { work, store, base } = await storeWithBase('unindexed');
    const dir = path.join(work, 'app');
    await writeImage(dir, { layers: [base, { files: { y: 'y\n' }, createdBy: '/bin/sh -c echo y > /y' }] });
    const ctx = path.join(work, 'ctx');
    await fs.mkdir(ctx);
    await fs.writeFile(path.join(ctx, 'Dockerfile'), 'FROM unindexed/base:1\nRUN echo y > /y\n');
    // Another machine's cache (or a Redis restarted empty): the store was never indexed there.
    const elsewhere = path.join(work, 'elsewhere');
    const planned = await smart(['cache', 'plan', `file:${store}`, ctx], { cacheHome: elsewhere });
    expect(planned.code, planned.stderr).toBe(0);
    expect(planned.stderr).toContain(`warning: the metadata cache holds no index of file:${store}, only what pushes through it recorded: run smart cache index file:${store}`);
    expect((await smart(['cache', 'index', `file:${store}`], { cacheHome: elsewhere })).code).toBe(0);
    const warmed = await smart(['cache', 'warm', `file:${store}`, '--json', '--layer-store', path.join(work, 'layers')], { cacheHome: elsewhere });
    expect(warmed.code, warmed.stderr).toBe(0);
    expect(JSON.parse(warmed.stdout.toString())).toMatchObject({ chains: 0 });
    expect(warmed.stderr).not.toMatch(/warning/);
  });
});

describe('a push while an index runs', () => {
  const backends: { label: string; available: boolean; start(): Promise<{ url?: string; stop(): Promise<void> }> }[] = [
    { label: 'the disk cache', available: true, start: async () => ({ stop: async () => undefined }) },
    { label: 'Redis', available: haveTools('redis-server', 'redis-cli'), start: async () => startRedis(await tempDir()) },
    { label: 'a Redis Cluster', available: haveTools('redis-server', 'redis-cli'), start: async () => startRedisCluster(await tempDir()) },
  ];
  for (const [n, backend] of backends.entries()) {
    it.skipIf(!backend.available)(`keeps the record of the tag it moved, and offers its layers, shared ones included, at once (${backend.label})`, async () => {
      const server = await backend.start();
      try {
        const redis = server.url ? ['--redis', server.url] : [];
        const repo = `during${n}`;
        const { work, store, cacheHome, base } = await storeWithBase(repo);
        const deps: LayerSpec = { files: { 'deps/lib': 'lib\n' }, createdBy: '/bin/sh -c echo lib > /deps/lib' };
        const [x, y] = [path.join(work, 'x'), path.join(work, 'y')];
        await writeImage(x, { layers: [base, deps, { files: { x: 'x\n' }, createdBy: '/bin/sh -c echo x > /x' }] });
        await writeImage(y, { layers: [base, deps, { files: { y: 'y\n' }, createdBy: '/bin/sh -c echo y > /y' }] });
        expect((await smart(['push', `oci:${x}:latest`, `file:${store}#${repo}/app:1`, ...redis], { cacheHome })).code).toBe(0);
        expect((await smart(['cache', 'index', `file:${store}`, ...redis], { cacheHome })).code).toBe(0);

        // An index run as the CLI runs it, whose first write (the nodes, once it has read the tags
        // and their records) waits for a push that moves the tag to y.
        const session = await openCacheSession({ cacheDir: path.join(cacheHome, 'smartlayer'), ...(server.url ? { redisUrl: server.url } : {}) });
        try {
          const cache = session.ctx.cache;
          let pushed: ReturnType<typeof smart> | undefined;
          const setMany: MetadataCache['setMany'] = async (entries) => {
            pushed ??= smart(['push', `oci:${y}:latest`, `file:${store}#${repo}/app:1`, ...redis], { cacheHome });
            const r = await pushed;
            expect(r.code, r.stderr).toBe(0);
            return cache.setMany(entries);
          };
          const hooked = new Proxy(cache, { get: (target, name, receiver) => (name === 'setMany' ? setMany : Reflect.get(target, name, receiver)) });
          expect(await indexStore(`file:${store}`, { ...session.ctx, cache: hooked })).toMatchObject({ tags: 2, failed: [] });
          expect(pushed).toBeDefined();
        } finally {
          await session.close();
        }

        const ctx = path.join(work, 'ctx');
        await fs.mkdir(ctx);
        await fs.writeFile(path.join(ctx, 'Dockerfile'), `FROM ${repo}/base:1\nRUN echo lib > /deps/lib\nRUN echo y > /y\n`);
        const planned = await smart(['cache', 'plan', `file:${store}`, ctx, '--json', ...redis], { cacheHome });
        expect(planned.code, planned.stderr).toBe(0);
        const plan = JSON.parse(planned.stdout.toString()) as Plan;
        expect(plan.steps.map((s) => s.matched)).toEqual([true, true]);
        expect(plan.best).toMatchObject({ image: `${repo}/app:1`, steps: 2 });
      } finally {
        await server.stop();
      }
    });
  }
});

describe('cache pull --print-cache-from buildah into a layout', () => {
  it('says no build step matched when only the base did, not that a layout is wanted', async () => {
    const { work, store, cacheHome } = await storeWithBase('nostep');
    const ctx = path.join(work, 'ctx');
    await fs.mkdir(ctx);
    await fs.writeFile(path.join(ctx, 'Dockerfile'), 'FROM nostep/base:1\nRUN echo never built\n');
    const r = await smart(['cache', 'pull', `file:${store}`, ctx, `oci:${path.join(work, 'steps')}`, '--print-cache-from', 'buildah'], { cacheHome });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain('warning: buildah: no build step matched: buildah has no step image to use (the base alone it pulls itself)');
    expect(r.stderr).not.toContain('write them with an oci:DIR destination');
  });
});

describe('smart cache plan of a stage built on another stage', () => {
  it('matches the parent stage\'s steps before the target\'s (FROM build AS final), as the image holds them', async () => {
    const { work, store, cacheHome, base } = await storeWithBase('stages');
    // What BuildKit writes for `--target final`: the base's history, build's RUN, then final's.
    const dir = path.join(work, 'final');
    await writeImage(dir, {
      layers: [base, { files: { b: 'b\n' }, createdBy: 'RUN /bin/sh -c echo b > /b # buildkit' }, { files: { f: 'f\n' }, createdBy: 'RUN /bin/sh -c echo f > /f # buildkit' }],
    });
    expect((await smart(['push', `oci:${dir}:latest`, `file:${store}#stages/app:final`], { cacheHome })).code).toBe(0);
    expect((await smart(['cache', 'index', `file:${store}`], { cacheHome })).code).toBe(0);
    const ctx = path.join(work, 'ctx');
    await fs.mkdir(ctx);
    await fs.writeFile(path.join(ctx, 'Dockerfile'), 'FROM stages/base:1 AS build\nRUN echo b > /b\nFROM build AS final\nRUN echo f > /f\n');
    for (const extra of [[], ['--target', 'final']]) {
      const r = await smart(['cache', 'plan', `file:${store}`, ctx, '--builder', 'buildkit', '--json', ...extra], { cacheHome });
      expect(r.code, r.stderr).toBe(0);
      const p = JSON.parse(r.stdout.toString()) as Plan;
      expect(p.best, extra.join(' ')).toMatchObject({ image: 'stages/app:final', steps: 2 });
      expect(p.steps.map((s) => [s.line, s.matched])).toEqual([
        [2, true],
        [4, true],
      ]);
    }
  });
});

describe('smart cache plan of relative WORKDIRs as buildah records them', () => {
  it('tells a changed relative WORKDIR from the one a stored image ran under (buildah writes it as written, and makes no layer for it)', async () => {
    const { work, store, cacheHome, base } = await storeWithBase('rel');
    const dir = path.join(work, 'a');
    await writeImage(dir, {
      layers: [base, { files: { 'app/here': '/app\n' }, createdBy: '/bin/sh -c pwd > here' }, { files: { 'other/here2': '/other\n' }, createdBy: '/bin/sh -c pwd > here2' }],
      emptySteps: [
        { after: 0, createdBy: '/bin/sh -c #(nop) WORKDIR app' },
        { after: 1, createdBy: '/bin/sh -c #(nop) WORKDIR ../other' },
      ],
    });
    expect((await smart(['push', `oci:${dir}:latest`, `file:${store}#rel/app:a`], { cacheHome })).code).toBe(0);
    expect((await smart(['cache', 'index', `file:${store}`], { cacheHome })).code).toBe(0);
    const ctx = path.join(work, 'ctx');
    await fs.mkdir(ctx);
    const planOf = async (other: string) => {
      await fs.writeFile(path.join(ctx, 'Dockerfile'), `FROM rel/base:1\nWORKDIR app\nRUN pwd > here\nWORKDIR ../${other}\nRUN pwd > here2\n`);
      const r = await smart(['cache', 'plan', `file:${store}`, ctx, '--json'], { cacheHome });
      expect(r.code, r.stderr).toBe(0);
      return JSON.parse(r.stdout.toString()) as Plan;
    };
    expect((await planOf('other')).best).toMatchObject({ image: 'rel/app:a', steps: 2 });
    // The second RUN ran in another directory: not matched (it was, the directory below the base's never compared).
    const changed = await planOf('other2');
    expect(changed.best).toMatchObject({ image: 'rel/app:a', steps: 1 });
    expect(changed.steps.find((s) => s.line === 5)!.matched).toBe(false);
  });
});

describe('smart cache plan of a WORKDIR that made no layer (buildah records it as an empty entry)', () => {
  it('matches it, as made no layer, when the layer after it matches and ran in its directory, as buildah reuses it', async () => {
    const { work, store, cacheHome, base } = await storeWithBase('wd');
    const dir = path.join(work, 'a');
    await writeImage(dir, {
      layers: [base, { files: { 'app/out': 'built\n' }, createdBy: '/bin/sh -c echo built > out' }],
      emptySteps: [{ after: 0, createdBy: '/bin/sh -c #(nop) WORKDIR /app' }],
    });
    expect((await smart(['push', `oci:${dir}:latest`, `file:${store}#wd/app:a`], { cacheHome })).code).toBe(0);
    expect((await smart(['cache', 'index', `file:${store}`], { cacheHome })).code).toBe(0);
    const ctx = path.join(work, 'ctx');
    await fs.mkdir(ctx);
    const planOf = async (workdir: string) => {
      await fs.writeFile(path.join(ctx, 'Dockerfile'), `FROM wd/base:1\nWORKDIR ${workdir}\nRUN echo built > out\n`);
      const r = await smart(['cache', 'plan', `file:${store}`, ctx, '--json'], { cacheHome });
      expect(r.code, r.stderr).toBe(0);
      return JSON.parse(r.stdout.toString()) as Plan;
    };
    const same = await planOf('/app');
    expect(same.steps).toEqual([
      { line: 2, instruction: 'WORKDIR /app', matched: true, noLayer: true },
      { line: 3, instruction: 'RUN echo built > out', matched: true },
    ]);
    expect(same.best).toMatchObject({ image: 'wd/app:a', steps: 1 });
    const human = await smart(['cache', 'plan', `file:${store}`, ctx], { cacheHome });
    expect(human.stderr).toContain('line   2  ✓  WORKDIR /app   (made no layer)');
    // Another directory: the RUN ran elsewhere, and neither is matched.
    const other = await planOf('/other');
    expect(other.steps.map((s) => s.matched)).toEqual([false, false]);
    expect(other.best?.steps ?? 0).toBe(0);
  });
});

describe('smart cache plan: what its lines say', () => {
  it('names a COPY --from\'s stage, and the Dockerfile line of a COPY source that is no pattern (an unclosed JSON form)', async () => {
    const { work, store, cacheHome } = await storeWithBase('lines');
    const ctx = path.join(work, 'ctx');
    await fs.mkdir(ctx);
    await fs.writeFile(path.join(ctx, 'a.txt'), 'a\n');
    await fs.writeFile(path.join(ctx, 'Dockerfile'), 'FROM lines/base:1 AS build\nRUN echo hi > /b\nFROM lines/base:1\nCOPY --from=build /b/out.txt ./\n');
    const r = await smart(['cache', 'plan', `file:${store}`, ctx], { cacheHome });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain('line   4  ✗  COPY --from=build /b/out.txt ./');
    await fs.writeFile(path.join(ctx, 'Dockerfile'), 'FROM lines/base:1\nCOPY ["a.txt", "/"\n');
    const bad = await smart(['cache', 'plan', `file:${store}`, ctx], { cacheHome });
    expect(bad.code).toBe(2);
    expect(bad.stderr.trim()).toBe(`smart: error [USAGE]: ${path.join(ctx, 'Dockerfile')}:2: COPY source "[a.txt,": syntax error in pattern "[a.txt,"`);
  });
});

describe('smart cache plan of a FROM naming no image', () => {
  it('is an invalid reference naming its line when an ARG left empty makes it one, as the builders refuse the build; the ARG given, a plan', async () => {
    const { store, cacheHome, ctx } = await indexedWithContext('noref', 'ARG V\nFROM noref/base:${V}\nRUN echo x > /x\n');
    for (const command of ['plan', 'pull']) {
      const r = await smart(['cache', command, `file:${store}`, ctx, ...(command === 'pull' ? ['docker-archive:-'] : [])], { cacheHome });
      expect(r.code, r.stderr).toBe(2);
      expect(r.stdout.length).toBe(0);
      expect(r.stderr.trim().split('\n')).toEqual([
        `smart: error [INVALID_REFERENCE]: ${path.join(ctx, 'Dockerfile')}:2: FROM noref/base:\${V}: invalid image reference "noref/base:": invalid tag "" (letters, digits, _ . -, at most 128, not starting with . or -) (the build fails alike: invalid reference format)`,
      ]);
    }
    const given = await smart(['cache', 'plan', `file:${store}`, ctx, '--build-arg', 'V=1', '--json'], { cacheHome });
    expect(given.code, given.stderr).toBe(0);
    expect((JSON.parse(given.stdout.toString()) as Plan).best).toMatchObject({ image: 'noref/base:1', steps: 0 });
  });
});

describe('smart cache plan: what its best cache line says', () => {
  it('counts the build steps in the singular and the plural', async () => {
    const { work, store, cacheHome, base } = await storeWithBase('count');
    const steps = [1, 2].map((n): LayerSpec => ({ files: { [`s${n}`]: `${n}\n` }, createdBy: `/bin/sh -c echo ${n} > /s${n}` }));
    const app = path.join(work, 'app');
    await writeImage(app, { layers: [base, ...steps] });
    expect((await smart(['push', `oci:${app}:latest`, `file:${store}#count/app:1`], { cacheHome })).code).toBe(0);
    expect((await smart(['cache', 'index', `file:${store}`], { cacheHome })).code).toBe(0);
    const ctx = path.join(work, 'ctx');
    await fs.mkdir(ctx);
    const best = async (dockerfile: string) => {
      await fs.writeFile(path.join(ctx, 'Dockerfile'), dockerfile);
      const r = await smart(['cache', 'plan', `file:${store}`, ctx], { cacheHome });
      expect(r.code, r.stderr).toBe(0);
      return r.stderr.split('\n').find((l) => l.startsWith('best cache: '))?.replace(/@sha256:[0-9a-f]{64}/, '').replace(/, [^,]* to fetch$/, '');
    };
    expect(await best('FROM count/base:1\nRUN echo 0 > /s0\n')).toBe('best cache: count/base:1: 1 layer (1 of the base, 0 build steps)');
    expect(await best('FROM count/base:1\nRUN echo 1 > /s1\n')).toBe('best cache: count/app:1: 2 layers (1 of the base, 1 build step)');
    expect(await best('FROM count/base:1\nRUN echo 1 > /s1\nRUN echo 2 > /s2\n')).toBe('best cache: count/app:1: 3 layers (1 of the base, 2 build steps)');
  });
});

describe('smart cache plan of a FROM --platform', () => {
  it('plans on the platform the FROM names, whose layers cache pull then fetches; one the image does not hold fails as the build does', async () => {
    const fx = fixtures();
    const work = await tempDir();
    const store = path.join(work, 'store');
    const cacheHome = path.join(work, 'cache');
    expect((await smart(['push', `oci:${fx.paths.ociMulti}:latest`, `file:${store}#multi/base:1`], { cacheHome })).code).toBe(0);
    const host = `linux/${process.arch === 'arm64' ? 'arm64' : 'amd64'}`;
    const other = Object.keys(fx.multi.platforms).find((p) => p !== host)!;
    const image = fx.multi.platforms[other]!;
    // The index of that platform's images (`cache index` reads one platform, as pulls do).
    expect((await smart(['cache', 'index', `file:${store}`, '--platform', other], { cacheHome })).code).toBe(0);
    const ctx = path.join(work, 'ctx');
    await fs.mkdir(ctx);
    await fs.writeFile(path.join(ctx, 'Dockerfile'), `FROM --platform=${other} multi/base:1\nRUN echo hi\n`);
    const r = await smart(['cache', 'plan', `file:${store}`, ctx, '--json'], { cacheHome });
    expect(r.code, r.stderr).toBe(0);
    const p = JSON.parse(r.stdout.toString()) as Plan & { platform: string };
    expect(p.platform).toBe(other.replace(/^linux\/arm64\/v8$/, 'linux/arm64')); // arm64's v8 is its default variant
    expect(p.best?.layers.map((l) => l.digest)).toEqual(image.layers.map((l) => l.digest));
    const pulled = await smart(['cache', 'pull', `file:${store}`, ctx, `oci:${path.join(work, 'pulled')}:x`, '--json'], { cacheHome });
    expect(pulled.code, pulled.stderr).toBe(0);
    const layout = JSON.parse(await fs.readFile(path.join(work, 'pulled', 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
    const manifest = JSON.parse(await fs.readFile(path.join(work, 'pulled', 'blobs', 'sha256', layout.manifests[0]!.digest.slice(7)), 'utf8')) as { layers: { digest: string }[] };
    expect(manifest.layers.map((l) => l.digest)).toEqual(image.layers.map((l) => l.digest));
    await fs.writeFile(path.join(ctx, 'Dockerfile'), 'FROM --platform=linux/s390x multi/base:1\nRUN echo hi\n');
    const missing = await smart(['cache', 'plan', `file:${store}`, ctx], { cacheHome });
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain('FROM --platform=linux/s390x multi/base:1: no manifest for platform linux/s390x');
  });

  it('a single-platform base of another platform fails the plan and the pull for the platform asked, as the build does; cache index --platform does not record it as of that platform', async () => {
    // writeImage's images are linux/amd64 only (no index): s390x is a platform they do not hold, on any machine.
    const { work, store, cacheHome, base } = await storeWithBase('single');
    const dir = path.join(work, 'rt');
    await writeImage(dir, { layers: [base, { files: { rt: 'rt\n' }, createdBy: '/bin/sh -c echo rt > /rt' }] });
    expect((await smart(['push', `oci:${dir}:latest`, `file:${store}#single/rt:1`], { cacheHome })).code).toBe(0);
    expect((await smart(['cache', 'index', `file:${store}`], { cacheHome })).code).toBe(0);
    const ctx = path.join(work, 'ctx');
    await fs.mkdir(ctx);
    const refused = (stderr: string, from: string) =>
      expect(stderr.trim().split('\n')).toEqual([
        expect.stringMatching(new RegExp(`^smart: error \\[PLATFORM_NOT_FOUND\\]: ${from}: file:.*#single/base@sha256:[0-9a-f]{64} is a linux/amd64 image, not linux/s390x \\(the build fails alike: .*\\)$`)),
      ]);
    const pulled = path.join(work, 'pulled');

    await fs.writeFile(path.join(ctx, 'Dockerfile'), 'FROM --platform=linux/s390x single/base:1\nRUN echo rt > /rt\n');
    const fromPlatform = await smart(['cache', 'plan', `file:${store}`, ctx], { cacheHome });
    expect(fromPlatform.code, fromPlatform.stderr).toBe(1);
    refused(fromPlatform.stderr, 'FROM --platform=linux/s390x single/base:1');
    const fromPull = await smart(['cache', 'pull', `file:${store}`, ctx, `oci:${pulled}:x`], { cacheHome });
    expect(fromPull.code, fromPull.stderr).toBe(1);
    refused(fromPull.stderr, 'FROM --platform=linux/s390x single/base:1');
    await expect(fs.stat(pulled)).rejects.toThrow();

    await fs.writeFile(path.join(ctx, 'Dockerfile'), 'FROM single/base:1\nRUN echo rt > /rt\n');
    const flag = await smart(['cache', 'plan', `file:${store}`, ctx, '--platform', 'linux/s390x'], { cacheHome });
    expect(flag.code, flag.stderr).toBe(1);
    refused(flag.stderr, 'FROM single/base:1');
    const flagPull = await smart(['cache', 'pull', `file:${store}`, ctx, `oci:${pulled}:x`, '--platform', 'linux/s390x'], { cacheHome });
    expect(flagPull.code, flagPull.stderr).toBe(1);
    await expect(fs.stat(pulled)).rejects.toThrow();
    // Its own platform asked, or none (the builders build on another platform's image then): the step's cache.
    for (const args of [['--platform', 'linux/amd64'], []]) {
      const r = await smart(['cache', 'plan', `file:${store}`, ctx, '--json', ...args], { cacheHome });
      expect(r.code, r.stderr).toBe(0);
      expect((JSON.parse(r.stdout.toString()) as Plan).best).toMatchObject({ image: 'single/rt:1', steps: 1 });
    }

    const indexed = await smart(['cache', 'index', `file:${store}`, '--platform', 'linux/s390x', '--json'], { cacheHome });
    expect(indexed.code, indexed.stderr).toBe(0);
    const summary = JSON.parse(indexed.stdout.toString()) as { failed: { image: string; error: string }[]; nodes: number };
    expect(summary.failed.map((f) => f.image).sort()).toEqual(['single/base:1', 'single/rt:1']);
    for (const f of summary.failed) expect(f.error).toMatch(/ is a linux\/amd64 image, not linux\/s390x$/);
    expect(summary.nodes).toBe(0);
  });
});

describe('smart cache plan of a COPY whose source directory\'s own mode changed', () => {
  it('does not match a classic builder\'s layer whose dir: reference the context no longer gives, though its files summarise alike', async () => {
    const { work, store, cacheHome, base } = await storeWithBase('dirmode');
    const ctx = path.join(work, 'ctx');
    await fs.mkdir(path.join(ctx, 'src', 'sub'), { recursive: true });
    await fs.writeFile(path.join(ctx, 'src', 'a'), 'a\n', { mode: 0o644 });
    await fs.writeFile(path.join(ctx, 'src', 'sub', 'b'), 'b\n', { mode: 0o644 });
    for (const d of ['src', 'src/sub']) await fs.chmod(path.join(ctx, d), 0o755);
    const text = 'FROM dirmode/base:1\nCOPY src/ /src/\n';
    await fs.writeFile(path.join(ctx, 'Dockerfile'), text);
    // The classic builder's reference of the step in this context (builder-hashes.ts, checked against real builds).
    const copy = (await dockerfileSteps(parseDockerfile(text), { contextDir: ctx, builderKeys: true })).steps.find((x) => x.keyword === 'COPY')!;
    const classic = copy.alternatives!.find((a) => a.builder === 'docker')!.key.contentDigest!;
    expect(classic).toMatch(/^dir:[0-9a-f]{64}$/);
    const dir = path.join(work, 'img');
    await writeImage(dir, { layers: [base, { files: { 'src/a': 'a\n', 'src/sub/b': 'b\n' }, createdBy: `/bin/sh -c #(nop) COPY ${classic} in /src/ ` }] });
    expect((await smart(['push', `oci:${dir}:latest`, `file:${store}#dirmode/app:1`], { cacheHome })).code).toBe(0);
    expect((await smart(['cache', 'index', `file:${store}`], { cacheHome })).code).toBe(0);
    const matched = async (...extra: string[]) => {
      const r = await smart(['cache', 'plan', `file:${store}`, ctx, '--json', ...extra], { cacheHome });
      expect(r.code, r.stderr).toBe(0);
      return (JSON.parse(r.stdout.toString()) as Plan).steps.find((x) => x.line === 2)!.matched;
    };
    expect(await matched('--builder', 'docker')).toBe(true);
    // `chmod 700 src`: the classic builder's dir: reference changes (no layer holds the mode), and it builds the step again.
    await fs.chmod(path.join(ctx, 'src'), 0o700);
    expect(await matched('--builder', 'docker')).toBe(false);
    expect(await matched()).toBe(false);
  });
});
