/**
 * smart cache end to end with the real builders: the Docker classic builder and BuildKit of a
 * private dockerd (Debian docker.io 20.10), and buildah. Each builds an app (`WORKDIR`, `COPY
 * package.json`, `ADD` of a local tar.gz, which they extract, a slow `RUN`, `COPY . ./`) on a
 * busybox base served by the stock registry from our store; v1 is pushed as any user would
 * (`docker save | smart push`, `buildah push`), without `--dockerfile` (and once with it); the
 * plan for v2, which changes only a source file, reaches past the slow RUN; and on a fresh runner
 * (the daemon wiped, an empty buildah storage) the cache `smart cache pull` writes, given to the
 * builder with the flags it prints, makes the builder reuse every matched step: the RUN is not run
 * again. BuildKit also builds a multi-stage image (a COPY --from whose stage changed) and a RUN
 * with cache and bind mounts, as `docker init` writes it.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { canStartDockerd, startDockerd, type RunningDockerd } from '../harness/dockerd.js';
import { busyboxLayout } from '../harness/images.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { runOk, smart } from '../harness/run.js';
import { haveTools } from '../harness/tools.js';
import { vendoredArchive } from '../harness/tree.js';

interface Plan {
  base?: { ref: string; layers: number; inStore: number; resolvedVia?: string };
  steps: { line: number; instruction: string; matched: boolean; noLayer?: boolean; unchecked?: string }[];
  best?: { image: string; layers: unknown[]; baseLayers: number; steps: number; inlineCache?: boolean };
}

const SLOW = 'sleep 3 && echo installed > deps';
/** A RUN that changes nothing: the classic builder makes no layer for it, BuildKit and buildah an empty one. */
const CHECK = 'test -d /opt/vendor';
/** One after the last layer too (as a last `RUN npm test`): the classic builder's history ends with it. */
const TAIL = 'test -d /app/src';
const dockerfile = (from: string) => `FROM ${from}\nWORKDIR /app\nCOPY package.json ./\nADD vendor.tar.gz /opt/vendor/\nRUN ${CHECK}\nRUN ${SLOW}\nCOPY . ./\nRUN ${TAIL}\nCMD ["sh"]\n`;
/** Dockerfile line of the archive's ADD, of the RUN that changes nothing, of the slow RUN, of the sources' COPY, and of the last RUN. */
const ADD_LINE = 4;
const CHECK_LINE = 5;
const RUN_LINE = 6;
const SOURCES_LINE = 7;
const TAIL_LINE = 8;

async function writeContext(dir: string, from: string, version: string): Promise<void> {
  await fs.mkdir(path.join(dir, 'src'), { recursive: true });
  await fs.writeFile(path.join(dir, 'Dockerfile'), dockerfile(from));
  await fs.writeFile(path.join(dir, 'package.json'), '{"name":"app","version":"1.0.0"}\n');
  await fs.writeFile(path.join(dir, 'src', 'index.js'), `console.log(${JSON.stringify(version)});\n`);
  // A name that is not UTF-8 (latin-1 "café.txt", as an old checkout can hold): every builder's
  // reference or file summary of the COPY must still be reproduced from the context.
  await fs.writeFile(Buffer.concat([Buffer.from(path.join(dir, 'src', 'caf')), Buffer.from([0xe9]), Buffer.from('.txt')]), 'latin-1 name\n');
  // And one too long for a ustar name field that no '/' can split (Go's tar writes both as PAX).
  await fs.writeFile(path.join(dir, 'src', `${'n'.repeat(120)}.txt`), 'long name\n');
  await fs.writeFile(path.join(dir, 'debug.log'), 'not sent\n');
  // A vendored archive, the same bytes in every context: its members are what each builder's
  // layer holds, but the builders key the step on the archive's bytes, and so must the plan.
  await fs.writeFile(path.join(dir, 'vendor.tar.gz'), gzipSync(await vendoredArchive()));
  await fs.writeFile(path.join(dir, '.dockerignore'), '*.log\n');
}

/** Dockerfile lines whose step the builder took from its cache, from its output. */
function cachedLines(builder: 'classic' | 'buildkit' | 'buildah', output: string): number[] {
  const out: number[] = [];
  if (builder === 'classic') {
    for (const m of output.matchAll(/^Step (\d+)\/\d+ : .*\n ---> Using cache$/gm)) out.push(Number(m[1]));
  } else if (builder === 'buildah') {
    for (const m of output.matchAll(/^STEP (\d+)\/\d+: .*\n--> Using cache/gm)) out.push(Number(m[1]));
  } else {
    const steps = new Map<string, number>();
    // `[2/5]`, or `[stage-0 2/5]` (as BuildKit names the stage of some builds).
    for (const m of output.matchAll(/^(#\d+) \[(?:[^\s\]]+ )?(\d+)\/\d+\] /gm)) steps.set(m[1]!, Number(m[2]));
    for (const m of output.matchAll(/^(#\d+) CACHED$/gm)) if (steps.has(m[1]!)) out.push(steps.get(m[1]!)!);
  }
  return [...new Set(out)].sort((a, b) => a - b);
}

const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`;

describe.skipIf(!canStartDockerd() || !haveTools('docker-registry', 'buildah', 'busybox') || process.arch !== 'x64')('smart cache with the real builders', () => {
  let work: string;
  let store: string;
  let registry: RunningRegistry;
  let dockerd: RunningDockerd;
  let baseRef: string;
  let baseLayout: string;
  const times: Record<string, Record<string, string>> = {};
  const reused: Record<string, string> = {};
  const cacheHome = () => path.join(work, 'cache-home');
  const run = (args: string[], input?: Buffer) => smart(args, { cacheHome: cacheHome(), ...(input ? { input } : {}) });
  const runOkSmart = async (args: string[], input?: Buffer) => {
    const r = await run(args, input);
    expect(r.code, `smart ${args.join(' ')}: ${r.stderr}`).toBe(0);
    return r;
  };
  const plan = async (storeName: string, ctx: string, ...extra: string[]): Promise<Plan> =>
    JSON.parse((await runOkSmart(['cache', 'plan', storeName, ctx, '--json', ...extra])).stdout.toString()) as Plan;
  const timed = async <T>(f: () => Promise<T>): Promise<[T, number]> => {
    const t0 = Date.now();
    const r = await f();
    return [r, Date.now() - t0];
  };
  const ctxDir = (builder: string, version: string) => path.join(work, `ctx-${builder}-${version}`);
  const contexts = async (builder: string, from: string) => {
    await writeContext(ctxDir(builder, 'v1'), from, 'v1');
    await writeContext(ctxDir(builder, 'v2'), from, 'v2');
  };

  beforeAll(async () => {
    // buildah names an `oci:` base after its path, which must then be lower case (mkdtemp's is not).
    work = path.join(os.tmpdir(), `smart-builders-${randomBytes(6).toString('hex')}`);
    await fs.mkdir(work);
    store = path.join(work, 'store');
    await fs.mkdir(path.join(work, 'reg'));
    registry = await startRegistry({ configDir: path.join(work, 'reg'), root: store });
    dockerd = await startDockerd({ insecureRegistries: [registry.host] });
    baseLayout = path.join(work, 'base');
    await busyboxLayout(baseLayout, ['sh', 'sleep', 'echo', 'cat', 'ls', 'mkdir']);
    baseRef = `${registry.host}/base/busybox:1`;
    await runOkSmart(['push', `oci:${baseLayout}:latest`, `file:${store}#base/busybox:1`]);
  });

  afterAll(async () => {
    await dockerd?.stop();
    await registry?.stop();
    if (work) await fs.rm(work, { recursive: true, force: true });
    // The run's figures, for the record: per builder, steps reused on a fresh runner and build times.
    if (Object.keys(times).length) {
      const lines = Object.entries(times).map(([b, t]) => `  ${b}: ${Object.entries(t).map(([k, v]) => `${k} ${v}`).join(', ')}; reused on a fresh runner: ${reused[b] ?? '-'}`);
      console.log(`build times (no cache: v1 on a fresh runner; the others: v2, sources changed):\n${lines.join('\n')}`);
    }
  });

  it('Docker classic builder: v1 pushed with and without --dockerfile; a fresh daemon reuses every matched step', async () => {
    await contexts('classic', baseRef);
    const env = { DOCKER_BUILDKIT: '0' };
    const build = (ctx: string, tag: string, extra: string[] = []) => dockerd.dockerOk(['build', '--network', 'none', ...extra, '-t', tag, ctx], { env });
    // v1 on a fresh daemon: the time of a build with no cache (the base pulled, every step run).
    const [, noCache] = await timed(() => build(ctxDir('classic', 'v1'), 'app:v1'));
    const saved = (await dockerd.dockerOk(['save', 'app:v1'])).stdout;
    await runOkSmart(['push', 'docker-archive:-', `file:${store}#apps/classic:v1`], saved);
    // The same image pushed with --dockerfile, into a store of its own (same layers, other keys).
    const storeDf = path.join(work, 'store-df');
    await runOkSmart(['push', `oci:${baseLayout}:latest`, `file:${storeDf}#base/busybox:1`]);
    await runOkSmart(['push', 'docker-archive:-', `file:${storeDf}#apps/classic:v1`, '--dockerfile', path.join(ctxDir('classic', 'v1'), 'Dockerfile'), '--context', ctxDir('classic', 'v1')], saved);

    // The history names the classic builder's own references (`COPY file:<hex> in ./`, `COPY dir:<hex>
    // in ./`): the plan of the unchanged build reproduces both from the context.
    const unchanged = await plan(`file:${store}`, ctxDir('classic', 'v1'), '--builder', 'docker');
    expect(unchanged.steps.filter((s) => !s.noLayer && !s.matched)).toEqual([]); // COPY file: and COPY dir: both reproduced
    for (const s of [store, storeDf]) {
      const p = await plan(`file:${s}`, ctxDir('classic', 'v2'), '--builder', 'docker');
      expect(p.base).toMatchObject({ layers: 1, inStore: 1, resolvedVia: 'store' });
      expect(p.steps.filter((x) => x.matched).map((x) => x.line)).toEqual([2, 3, ADD_LINE, CHECK_LINE, RUN_LINE]);
      expect(p.steps.find((x) => x.line === SOURCES_LINE)?.matched).toBe(false);
      // The RUN that changed nothing has no layer of its own: matched as the layer after it was made after it.
      expect(p.steps.find((x) => x.line === CHECK_LINE)).toMatchObject({ matched: true, noLayer: true });
    }
    const human = (await runOkSmart(['cache', 'plan', `file:${store}`, ctxDir('classic', 'v2'), '--builder', 'docker'])).stderr.toString();
    expect(human).toContain(`line   ${CHECK_LINE}  ✓  RUN ${CHECK}   (made no layer)`);

    // The runner that built v1.
    const [warmOut, warm] = await timed(() => build(ctxDir('classic', 'v2'), 'app:v2'));
    expect(cachedLines('classic', warmOut.stdout.toString())).toEqual([2, 3, ADD_LINE, CHECK_LINE, RUN_LINE]);

    for (const [label, s] of [
      ['without --dockerfile', store],
      ['with --dockerfile', storeDf],
    ] as const) {
      await dockerd.wipe();
      const flagsFile = path.join(work, `classic-flags-${label.length}`);
      const [fresh, total] = await timed(async () => {
        const pulled = await runOkSmart(['cache', 'pull', `file:${s}`, ctxDir('classic', 'v2'), 'docker-archive:-', '--print-cache-from', 'docker', '--print-cache-from-file', flagsFile]);
        const loaded = await dockerd.dockerOk(['load'], { input: pulled.stdout });
        const flags = (await fs.readFile(flagsFile, 'utf8')).trim();
        expect(flags).toMatch(/^--cache-from smartcache\/apps\/classic:[0-9a-f]{12}$/);
        // The name `docker load` gave the image is the one the flags name.
        expect(loaded.stdout.toString()).toContain(`Loaded image: ${flags.split(' ')[1]}`);
        return build(ctxDir('classic', 'v2'), 'app:v2', flags.split(' '));
      });
      const cached = cachedLines('classic', fresh.stdout.toString());
      expect(cached, `${label}: ${fresh.stdout.toString()}`).toEqual([2, 3, ADD_LINE, CHECK_LINE, RUN_LINE]);
      if (label === 'without --dockerfile') {
        times.classic = { 'no cache': seconds(noCache), 'fresh runner + smart cache (pull, load, build)': seconds(total), 'runner that built v1': seconds(warm) };
        reused.classic = `${cached.length} of 6 steps (WORKDIR, COPY package.json, ADD, both RUNs)`;
      }
    }
    // CI's push of v2 as `docker save` streams it: the layers v1 has (all but the sources') are
    // named in the archive as v1's were, so they are hashed, not compressed and stored again.
    const v2 = await runOkSmart(['push', 'docker-archive:-', `file:${store}#apps/classic:v2`, '--json'], (await dockerd.dockerOk(['save', 'app:v2'])).stdout);
    expect((JSON.parse(v2.stdout.toString()) as { layers: unknown }).layers).toMatchObject({ pushed: 1, skipped: 5 });

    // v1 again on a wiped daemon (a CI job run again): every step is reused, the RUN after the last
    // layer and the CMD too, the cache image keeping the history entries after its last layer.
    await dockerd.wipe();
    const flagsFile = path.join(work, 'classic-flags-unchanged');
    const pulled = await runOkSmart(['cache', 'pull', `file:${store}`, ctxDir('classic', 'v1'), 'docker-archive:-', '--print-cache-from', 'docker', '--print-cache-from-file', flagsFile]);
    await dockerd.dockerOk(['load'], { input: pulled.stdout });
    const again = await build(ctxDir('classic', 'v1'), 'app:v1', (await fs.readFile(flagsFile, 'utf8')).trim().split(' '));
    expect(cachedLines('classic', again.stdout.toString()), again.stdout.toString()).toEqual([2, 3, ADD_LINE, CHECK_LINE, RUN_LINE, SOURCES_LINE, TAIL_LINE, 9]);
    expect(unchanged.steps.find((x) => x.line === TAIL_LINE)).toMatchObject({ matched: true, noLayer: true });

    // A store with nothing for the build: an archive of no image, which `docker load` takes, and
    // empty flags, so that CI's `cache pull … | docker load` step lets the build run uncached.
    const emptyStore = path.join(work, 'empty-store');
    await fs.mkdir(emptyStore);
    const emptyFlags = path.join(work, 'classic-flags-none');
    const none = await runOkSmart(['cache', 'pull', `file:${emptyStore}`, ctxDir('classic', 'v1'), 'docker-archive:-', '--print-cache-from', 'docker', '--print-cache-from-file', emptyFlags]);
    expect(none.stderr.toString()).toMatch(/warning: docker: nothing in the store to use as cache/);
    await dockerd.dockerOk(['load'], { input: none.stdout });
    expect(await fs.readFile(emptyFlags, 'utf8')).toBe('');
  });

  it('BuildKit: the plan matches its COPY layers by their files, and prefers images with inline cache, which a fresh daemon reuses', async () => {
    await contexts('buildkit', baseRef);
    const env = { DOCKER_BUILDKIT: '1' };
    const build = (ctx: string, tag: string, extra: string[] = []) =>
      dockerd.dockerOk(['build', '--network', 'none', '--progress', 'plain', ...extra, '-t', tag, ctx], { env });
    await dockerd.wipe();
    const [, noCache] = await timed(() => build(ctxDir('buildkit', 'v1'), 'bk:v1', ['--build-arg', 'BUILDKIT_INLINE_CACHE=1']));
    const savedBk = (await dockerd.dockerOk(['save', 'bk:v1'])).stdout;
    await runOkSmart(['push', 'docker-archive:-', `file:${store}#apps/buildkit:v1`], savedBk);
    // BuildKit's history names no content: the layers' files are summarised at index time; but
    // the archive's ADD is keyed on the archive's bytes, which its layer does not hold.
    await runOkSmart(['cache', 'index', `file:${store}`]);
    const byFiles = await plan(`file:${store}`, ctxDir('buildkit', 'v1'), '--builder', 'buildkit');
    expect(byFiles.steps.filter((x) => x.matched).map((x) => x.line)).toEqual([2, 3]);
    // Pushed with --dockerfile, the ADD is recorded with the archive's bytes.
    await runOkSmart(['push', 'docker-archive:-', `file:${store}#apps/buildkit:v1`, '--dockerfile', path.join(ctxDir('buildkit', 'v1'), 'Dockerfile'), '--context', ctxDir('buildkit', 'v1')], savedBk);
    // The unchanged context: its sources' COPY is summarised as the layer holds it, without the
    // package.json the COPY before it placed alike (the export's differ leaves that out), with the
    // latin-1 and the long name.
    const unchanged = await plan(`file:${store}`, ctxDir('buildkit', 'v1'), '--builder', 'buildkit');
    expect(unchanged.steps.filter((x) => x.matched).map((x) => x.line)).toEqual([2, 3, ADD_LINE, CHECK_LINE, RUN_LINE, SOURCES_LINE, TAIL_LINE]);
    const p = await plan(`file:${store}`, ctxDir('buildkit', 'v2'), '--builder', 'buildkit');
    expect(p.steps.filter((x) => x.matched).map((x) => x.line)).toEqual([2, 3, ADD_LINE, CHECK_LINE, RUN_LINE]);
    expect(p.best).toMatchObject({ image: 'apps/buildkit:v1', inlineCache: true });

    const [warmOut, warm] = await timed(() => build(ctxDir('buildkit', 'v2'), 'bk:v2'));
    expect(cachedLines('buildkit', warmOut.stderr)).toEqual(expect.arrayContaining([2, 3, ADD_LINE, CHECK_LINE, RUN_LINE]));
    await dockerd.wipe();
    const [fresh, total] = await timed(async () => {
      const r = await runOkSmart(['cache', 'pull', `file:${store}`, ctxDir('buildkit', 'v2'), '--print-cache-from', 'buildkit', '--registry', registry.host, '-q']);
      const flags = r.stdout.toString().trim();
      expect(flags).toBe(`--cache-from ${registry.host}/apps/buildkit:v1`);
      return build(ctxDir('buildkit', 'v2'), 'bk:v2', flags.split(' '));
    });
    const cached = cachedLines('buildkit', fresh.stderr);
    expect(cached, fresh.stderr).toEqual(expect.arrayContaining([2, 3, ADD_LINE, CHECK_LINE, RUN_LINE]));
    expect(cached).not.toContain(SOURCES_LINE);
    times.buildkit = { 'no cache': seconds(noCache), 'fresh runner + smart cache (plan, build from the registry cache)': seconds(total), 'runner that built v1': seconds(warm) };
    reused.buildkit = `${cached.filter((l) => l > 1).length} of 6 steps`;
  });

  it('buildah: the plan matches its COPY references, FROM oci: is read through the transport, and an empty storage reuses every matched step', async () => {
    const from = `oci:${baseLayout}:latest`;
    await contexts('buildah', from);
    const storage = (name: string) => ['--root', path.join(work, name, 'root'), '--runroot', path.join(work, name, 'run'), '--storage-driver', 'vfs'];
    const bud = (s: string, ctx: string, extra: string[] = []) => runOk('buildah', [...storage(s), 'bud', '--isolation', 'chroot', ...extra, '-t', 'app:v', ctx]);
    try {
      const [, noCache] = await timed(() => bud('built-v1', ctxDir('buildah', 'v1'), ['--layers']));
      const layout = path.join(work, 'buildah-v1');
      await runOk('buildah', [...storage('built-v1'), 'push', 'app:v', `oci:${layout}:latest`]);
      await runOkSmart(['push', `oci:${layout}:latest`, `file:${store}#apps/buildah:v1`]);
      // buildah's reference of COPY package.json is reproduced; its reference of the extracted
      // archive is not, and the layer's files cannot stand for the archive's bytes, which the
      // builders key the step on: without --dockerfile the plan stops there, index or not.
      const unindexed = await plan(`file:${store}`, ctxDir('buildah', 'v1'), '--builder', 'buildah');
      expect(unindexed.steps.filter((x) => x.matched).map((x) => x.line)).toEqual([2, 3]);
      await runOkSmart(['cache', 'index', `file:${store}`]);
      const indexed = await plan(`file:${store}`, ctxDir('buildah', 'v1'), '--builder', 'buildah');
      expect(indexed.steps.filter((x) => x.matched).map((x) => x.line)).toEqual([2, 3]);
      // Under a tag of its own: a push of the image a tag already holds records nothing new.
      await runOkSmart(['push', `oci:${layout}:latest`, `file:${store}#apps/buildah:v1-df`, '--dockerfile', path.join(ctxDir('buildah', 'v1'), 'Dockerfile'), '--context', ctxDir('buildah', 'v1')]);
      // The unchanged context: the ADD matched by what the push recorded, and buildah's reference of
      // its sources' COPY reproduced, the latin-1 and the long name included (Go's tar writer gives
      // both a PAX header).
      const unchanged = await plan(`file:${store}`, ctxDir('buildah', 'v1'), '--builder', 'buildah');
      expect(unchanged.steps.filter((x) => x.matched).map((x) => x.line)).toEqual([2, 3, ADD_LINE, CHECK_LINE, RUN_LINE, SOURCES_LINE, TAIL_LINE]);
      const p = await plan(`file:${store}`, ctxDir('buildah', 'v2'), '--builder', 'buildah');
      expect(p.base).toMatchObject({ layers: 1, inStore: 1, resolvedVia: 'transport' });
      // The steps buildah reuses: its WORKDIR among them, an empty history entry (it made no layer).
      expect(p.steps.filter((x) => x.matched).map((x) => x.line)).toEqual([2, 3, ADD_LINE, CHECK_LINE, RUN_LINE]);
      expect(p.steps.find((x) => x.line === 2)).toMatchObject({ instruction: 'WORKDIR /app', matched: true, noLayer: true });

      const [warmOut, warm] = await timed(() => bud('built-v1', ctxDir('buildah', 'v2'), ['--layers']));
      expect(cachedLines('buildah', warmOut.stdout.toString())).toEqual([2, 3, ADD_LINE, CHECK_LINE, RUN_LINE]);
      const [fresh, total] = await timed(async () => {
        const flagsFile = path.join(work, 'buildah-flags');
        await runOkSmart(['cache', 'pull', `file:${store}`, ctxDir('buildah', 'v2'), `oci:${path.join(work, 'buildah-cache')}`, '--print-cache-from', 'buildah', '--print-cache-from-file', flagsFile]);
        const lines = (await fs.readFile(flagsFile, 'utf8')).trim().split('\n');
        const flags = lines.pop()!;
        expect(flags).toBe('--layers');
        expect(lines.length).toBe(5); // WORKDIR, COPY package.json, ADD, both RUNs: one image each
        for (const line of lines) {
          const [cmd, verb, ...rest] = line.split(' ');
          expect([cmd, verb]).toEqual(['buildah', 'pull']);
          await runOk('buildah', [...storage('fresh'), 'pull', '-q', ...rest]);
        }
        return bud('fresh', ctxDir('buildah', 'v2'), flags.split(' '));
      });
      const cached = cachedLines('buildah', fresh.stdout.toString());
      expect(cached, fresh.stdout.toString()).toEqual([2, 3, ADD_LINE, CHECK_LINE, RUN_LINE]);
      times.buildah = { 'no cache': seconds(noCache), 'fresh storage + smart cache (pull, buildah pull, build)': seconds(total), 'storage that built v1': seconds(warm) };
      reused.buildah = `${cached.length} of 6 steps (WORKDIR, COPY package.json, ADD, both RUNs)`;
    } finally {
      for (const s of ['built-v1', 'fresh']) await runOk('buildah', [...storage(s), 'rmi', '--all', '--force']).catch(() => undefined);
    }
  });

  it('an app of two steps on a base BuildKit built, by the classic builder and by buildah: its own builder, every step matched, reused by a fresh daemon', async () => {
    // The base as many official images are: BuildKit's, its entries marked `# buildkit`. The app's
    // history holds them before its own two; it was taken for BuildKit's, and a plan for the
    // classic builder or buildah matched none of its steps.
    const baseCtx = path.join(work, 'ctx-bk-base');
    await fs.mkdir(baseCtx);
    await fs.writeFile(path.join(baseCtx, 'Dockerfile'), `FROM ${baseRef}\nRUN echo base > /base\n`);
    await dockerd.wipe();
    await dockerd.dockerOk(['build', '--network', 'none', '-t', 'bkbase:1', baseCtx], { env: { DOCKER_BUILDKIT: '1' } });
    await runOkSmart(['push', 'docker-archive:-', `file:${store}#base/bk:1`], (await dockerd.dockerOk(['save', 'bkbase:1'])).stdout);
    const app = (from: string) => `FROM ${from}\nCOPY a.txt /a.txt\nRUN cat /a.txt > /b.txt\n`;
    const classicCtx = path.join(work, 'ctx-on-bk-classic');
    const buildahCtx = path.join(work, 'ctx-on-bk-buildah');
    const bkLayout = path.join(work, 'bk-base');
    await runOkSmart(['pull', `file:${store}#base/bk:1`, `oci:${bkLayout}:latest`]);
    for (const [dir, from] of [
      [classicCtx, `${registry.host}/base/bk:1`],
      [buildahCtx, `oci:${bkLayout}:latest`],
    ] as const) {
      await fs.mkdir(dir);
      await fs.writeFile(path.join(dir, 'a.txt'), 'a\n');
      await fs.writeFile(path.join(dir, 'Dockerfile'), app(from));
    }
    const classic = { DOCKER_BUILDKIT: '0' };
    await dockerd.wipe();
    await dockerd.dockerOk(['build', '--network', 'none', '-t', 'onbk:classic', classicCtx], { env: classic });
    await runOkSmart(['push', 'docker-archive:-', `file:${store}#apps/onbk:classic`], (await dockerd.dockerOk(['save', 'onbk:classic'])).stdout);
    const storage = ['--root', path.join(work, 'onbk', 'root'), '--runroot', path.join(work, 'onbk', 'run'), '--storage-driver', 'vfs'];
    try {
      await runOk('buildah', [...storage, 'bud', '--isolation', 'chroot', '--layers', '-t', 'onbk:buildah', buildahCtx]);
      await runOk('buildah', [...storage, 'push', 'onbk:buildah', `oci:${path.join(work, 'onbk-buildah')}:latest`]);
    } finally {
      await runOk('buildah', [...storage, 'rmi', '--all', '--force']).catch(() => undefined);
    }
    await runOkSmart(['push', `oci:${path.join(work, 'onbk-buildah')}:latest`, `file:${store}#apps/onbk:buildah`]);
    await runOkSmart(['cache', 'index', `file:${store}`]);
    for (const [builder, dir, image] of [
      ['docker', classicCtx, 'apps/onbk:classic'],
      ['buildah', buildahCtx, 'apps/onbk:buildah'],
    ] as const) {
      const p = await plan(`file:${store}`, dir, '--builder', builder);
      expect(p.steps.map((x) => x.matched), builder).toEqual([true, true]);
      expect(p.best?.image, builder).toBe(image);
    }
    // A fresh daemon, the cache as the README's recipe makes it: both steps reused.
    await dockerd.wipe();
    const flagsFile = path.join(work, 'onbk-flags');
    const pulled = await runOkSmart(['cache', 'pull', `file:${store}`, classicCtx, 'docker-archive:-', '--print-cache-from', 'docker', '--print-cache-from-file', flagsFile]);
    await dockerd.dockerOk(['load'], { input: pulled.stdout });
    const flags = (await fs.readFile(flagsFile, 'utf8')).trim().split(' ').filter(Boolean);
    const out = (await dockerd.dockerOk(['build', '--network', 'none', ...flags, '-t', 'onbk:again', classicCtx], { env: classic })).stdout.toString();
    expect(cachedLines('classic', out), out).toEqual([2, 3]);
  });

  it('BuildKit, multi-stage: a COPY --from is matched by its instruction alone, and the plan says so; BuildKit rebuilds it when the stage changed', async () => {
    const env = { DOCKER_BUILDKIT: '1' };
    const ms = (version: string) => path.join(work, `ctx-multistage-${version}`);
    for (const v of ['v1', 'v2']) {
      await fs.mkdir(path.join(ms(v), 'src'), { recursive: true });
      await fs.writeFile(path.join(ms(v), 'src', 'main.txt'), `${v}\n`);
      await fs.writeFile(path.join(ms(v), 'Dockerfile'), `FROM ${baseRef} AS build\nCOPY src/ /src/\nRUN mkdir /out && cat /src/main.txt > /out/app\nFROM ${baseRef}\nRUN echo setup > /setup\nCOPY --from=build /out/app /app\nRUN cat /app > /copied\n`);
    }
    const build = (ctx: string, tag: string) => dockerd.dockerOk(['build', '--network', 'none', '--progress', 'plain', '-t', tag, ctx], { env });
    await build(ms('v1'), 'ms:v1');
    await runOkSmart(['push', 'docker-archive:-', `file:${store}#apps/multistage:v1`], (await dockerd.dockerOk(['save', 'ms:v1'])).stdout);
    await runOkSmart(['cache', 'index', `file:${store}`]);
    // v2 changes what the build stage makes: BuildKit's history names no content of the COPY, so
    // its instruction is all there is to match, and the plan says what it could not check.
    const p = await plan(`file:${store}`, ms('v2'), '--builder', 'buildkit');
    expect(p.steps.filter((x) => x.matched).map((x) => x.line)).toEqual([5, 6, 7]);
    expect(p.steps.map((x) => x.unchecked)).toEqual([undefined, 'what it copies --from=build', undefined]);
    const human = (await runOkSmart(['cache', 'plan', `file:${store}`, ms('v2'), '--builder', 'buildkit'])).stderr.toString();
    expect(human).toContain('line   6  ✓  COPY --from=build /out/app /app   (not checked: what it copies --from=build; the builder checks it)');
    // BuildKit, v1's cache at hand, reuses the step before and rebuilds the COPY and the step after.
    const out = (await build(ms('v2'), 'ms:v2')).stderr;
    const steps = new Map([...out.matchAll(/^(#\d+) \[stage-1 \d+\/\d+\] (.*)$/gm)].map((m) => [m[1]!, m[2]!]));
    const cached = [...out.matchAll(/^(#\d+) CACHED$/gm)].map((m) => steps.get(m[1]!)).filter((x) => x !== undefined);
    expect(cached, out).toContain('RUN echo setup > /setup');
    expect(cached).not.toContain('COPY --from=build /out/app /app');
    expect(cached).not.toContain('RUN cat /app > /copied');
  });

  it('BuildKit, COPY --chown and RUN --mount as docker init writes them: found as its history writes them, said so, and reused by a fresh daemon', async () => {
    const env = { DOCKER_BUILDKIT: '1' };
    const mounts = (version: string) => path.join(work, `ctx-mounts-${version}`);
    for (const v of ['v1', 'v2']) {
      await fs.mkdir(path.join(mounts(v), 'src'), { recursive: true });
      await fs.writeFile(path.join(mounts(v), 'package.json'), '{"name":"app"}\n');
      await fs.writeFile(path.join(mounts(v), 'src', 'index.js'), `console.log("${v}");\n`);
      await fs.writeFile(
        path.join(mounts(v), 'Dockerfile'),
        `FROM ${baseRef}\nWORKDIR /app\nCOPY --chown=1000:1000 package.json ./\nRUN --mount=type=cache,target=/root/.cache --mount=type=bind,source=package.json,target=/tmp/package.json cat /tmp/package.json > deps && sleep 2\nCOPY . ./\n`,
      );
    }
    const build = (ctx: string, tag: string, extra: string[] = []) => dockerd.dockerOk(['build', '--network', 'none', '--progress', 'plain', ...extra, '-t', tag, ctx], { env });
    await dockerd.wipe();
    await build(mounts('v1'), 'mounts:v1', ['--build-arg', 'BUILDKIT_INLINE_CACHE=1']);
    await runOkSmart(['push', 'docker-archive:-', `file:${store}#apps/mounts:v1`], (await dockerd.dockerOk(['save', 'mounts:v1'])).stdout);
    await runOkSmart(['cache', 'index', `file:${store}`]);
    // BuildKit's history writes the COPY without its --chown, and the RUN as its command alone:
    // each layer is found so (neither was: the flag, the bound package.json were part of the
    // keys), and each line says what was not checked.
    const p = await plan(`file:${store}`, mounts('v2'), '--builder', 'buildkit');
    expect(p.steps.filter((x) => x.matched).map((x) => x.line)).toEqual([2, 3, 4]);
    expect(p.steps.map((x) => x.unchecked)).toEqual([undefined, "the owner --chown=1000:1000 sets, which BuildKit's history leaves out", 'the files it bind-mounts from the context', undefined]);
    expect(p.best).toMatchObject({ image: 'apps/mounts:v1', inlineCache: true });
    await dockerd.wipe();
    const out = (await build(mounts('v2'), 'mounts:v2', ['--cache-from', `${registry.host}/apps/mounts:v1`])).stderr;
    expect(cachedLines('buildkit', out), out).toEqual(expect.arrayContaining([2, 3, 4]));
  });

  it('resolves FROM through the registry API when the store does not hold the base', async () => {
    // A store with the app only: the base is found where the Dockerfile names it, the registry.
    const appsOnly = path.join(work, 'store-apps');
    await runOkSmart(['push', `file:${store}#apps/classic:v1`, `file:${appsOnly}#apps/classic:v1`]);
    const p = await plan(`file:${appsOnly}`, ctxDir('classic', 'v2'));
    expect(p.base).toMatchObject({ layers: 1, inStore: 1, resolvedVia: 'registry' });
    expect(p.steps.filter((x) => x.matched).map((x) => x.line)).toEqual([2, 3, ADD_LINE, CHECK_LINE, RUN_LINE]);
  });

  it('one file copied to a file path, under its own name and under another: matched by its files, and reused by BuildKit', async () => {
    const dir = path.join(work, 'ctx-filedest');
    await fs.mkdir(dir, { recursive: true });
    await fs.writeFile(path.join(dir, 'app.conf'), 'key=value\n');
    await fs.writeFile(path.join(dir, 'Dockerfile'), `FROM ${baseRef}\nCOPY app.conf /etc/app.conf\nCOPY app.conf /etc/main.conf\nRUN cat /etc/main.conf > /tmp/seen\n`);
    const buildkit = { DOCKER_BUILDKIT: '1' };
    await dockerd.wipe();
    await dockerd.dockerOk(['build', '--network', 'none', '--build-arg', 'BUILDKIT_INLINE_CACHE=1', '-t', 'filedest:bk', dir], { env: buildkit });
    await runOkSmart(['push', 'docker-archive:-', `file:${store}#apps/filedest:bk`], (await dockerd.dockerOk(['save', 'filedest:bk'])).stdout);
    await dockerd.dockerOk(['build', '--network', 'none', '-t', 'filedest:classic', dir], { env: { DOCKER_BUILDKIT: '0' } });
    await runOkSmart(['push', 'docker-archive:-', `file:${store}#apps/filedest:classic`], (await dockerd.dockerOk(['save', 'filedest:classic'])).stdout);
    await runOkSmart(['cache', 'index', `file:${store}`]);
    for (const builder of ['buildkit', 'docker']) {
      const p = await plan(`file:${store}`, dir, '--builder', builder);
      expect(p.steps.map((x) => x.matched), builder).toEqual([true, true, true]);
    }
    // The content changed: neither COPY is the stored one.
    await fs.writeFile(path.join(dir, 'app.conf'), 'key=other\n');
    expect((await plan(`file:${store}`, dir, '--builder', 'buildkit')).steps.map((x) => x.matched)).toEqual([false, false, false]);
    await fs.writeFile(path.join(dir, 'app.conf'), 'key=value\n');
    // A fresh daemon, BuildKit's cache from the registry serving the store: every step reused.
    await dockerd.wipe();
    const flags = (await runOkSmart(['cache', 'pull', `file:${store}`, dir, '--print-cache-from', 'buildkit', '--registry', registry.host, '-q'])).stdout.toString().trim();
    expect(flags).toBe(`--cache-from ${registry.host}/apps/filedest:bk`);
    const fresh = await dockerd.dockerOk(['build', '--network', 'none', '--progress', 'plain', ...flags.split(' '), '-t', 'filedest:again', dir], { env: buildkit });
    expect(cachedLines('buildkit', fresh.stderr.toString()), fresh.stderr.toString()).toEqual(expect.arrayContaining([2, 3, 4]));
  });

  it('images Docker builds of a layer held twice, and of no layer: pushed from docker save on a pipe, pulled back into Docker as the same image', async () => {
    const dir = path.join(work, 'ctx-odd-layers');
    await fs.mkdir(dir, { recursive: true });
    await fs.writeFile(path.join(dir, 'a'), 'a\n');
    await dockerd.wipe();
    const idOf = async (ref: string) => (await dockerd.dockerOk(['image', 'inspect', '--format', '{{.Id}}', ref])).stdout.toString().trim();
    // The same COPY thrice: BuildKit makes the same layer twice (the last two), and `docker save` (up to Docker
    // 24) writes the second as a symlink `../<id>/layer.tar`. A stream of it was refused as corrupt.
    await fs.writeFile(path.join(dir, 'Dockerfile'), 'FROM scratch\nCOPY a /a\nCOPY a /a\nCOPY a /a\n');
    await dockerd.dockerOk(['build', '--network', 'none', '-t', 'twice:1', dir], { env: { DOCKER_BUILDKIT: '1' } });
    const twice = await idOf('twice:1');
    const saved = (await dockerd.dockerOk(['save', 'twice:1'])).stdout;
    expect((await runOk('tar', ['-tv'], { input: saved })).stdout.toString()).toMatch(/^l.* -> \.\.\/[0-9a-f]{64}\/layer\.tar$/m);
    await runOkSmart(['push', 'docker-archive:-', `file:${store}#apps/twice:1`], saved);
    // No layer at all (`FROM scratch` and a LABEL): the classic builder leaves the config's
    // diff_ids out, BuildKit writes null. Docker cannot save such an image: it reaches smart
    // through a registry.
    await fs.writeFile(path.join(dir, 'Dockerfile'), 'FROM scratch\nLABEL only=label\n');
    const empty: Record<string, string> = {};
    for (const [builder, env] of [['classic', '0'], ['buildkit', '1']] as const) {
      await dockerd.dockerOk(['build', '--network', 'none', '-t', `${registry.host}/apps/nolayer:${builder}`, dir], { env: { DOCKER_BUILDKIT: env } });
      empty[builder] = await idOf(`${registry.host}/apps/nolayer:${builder}`);
      await dockerd.dockerOk(['push', `${registry.host}/apps/nolayer:${builder}`]);
    }
    const archives = Object.fromEntries(
      await Promise.all(Object.keys(empty).map(async (b) => [b, (await runOkSmart(['pull', `docker://${registry.host}/apps/nolayer:${b}`, 'docker-archive:-', '-q'])).stdout] as const)),
    );
    await dockerd.wipe();
    await dockerd.dockerOk(['pull', `${registry.host}/apps/twice:1`]);
    expect(await idOf(`${registry.host}/apps/twice:1`)).toBe(twice);
    for (const [builder, archive] of Object.entries(archives)) {
      await dockerd.dockerOk(['load'], { input: archive });
      expect(await idOf(`${registry.host}/apps/nolayer:${builder}`), builder).toBe(empty[builder]);
    }
  });

  it('a changed ENV, USER or build arg before a RUN: the plan stops at that RUN, as the classic builder and BuildKit do', async () => {
    const configDockerfile = (mode: string, user: string) =>
      `FROM ${baseRef}\nENV MODE=${mode}\nARG LEVEL=1\nUSER ${user}\nRUN echo "$MODE $LEVEL" > /tmp/mode\nRUN echo tail > /tmp/tail\n`;
    const ctx = (name: string, mode: string, user = '0:0') => {
      const dir = path.join(work, `ctx-config-${name}`);
      return fs.mkdir(dir, { recursive: true }).then(() => fs.writeFile(path.join(dir, 'Dockerfile'), configDockerfile(mode, user))).then(() => dir);
    };
    const v1 = await ctx('v1', 'a');
    const classic = { DOCKER_BUILDKIT: '0' };
    await dockerd.wipe();
    await dockerd.dockerOk(['build', '--network', 'none', '-t', 'config:v1', v1], { env: classic });
    await runOkSmart(['push', 'docker-archive:-', `file:${store}#apps/config:v1`], (await dockerd.dockerOk(['save', 'config:v1'])).stdout);
    await dockerd.dockerOk(['build', '--network', 'none', '--build-arg', 'BUILDKIT_INLINE_CACHE=1', '-t', 'config:bk', v1], { env: { DOCKER_BUILDKIT: '1' } });
    await runOkSmart(['push', 'docker-archive:-', `file:${store}#apps/config:bk`], (await dockerd.dockerOk(['save', 'config:bk'])).stdout);
    await runOkSmart(['cache', 'index', `file:${store}`]);
    const runs = (p: Plan) => p.steps.filter((x) => x.instruction.startsWith('RUN ')).map((x) => x.matched);
    for (const builder of ['docker', 'buildkit'] as const) {
      expect(runs(await plan(`file:${store}`, v1, '--builder', builder)), builder).toEqual([true, true]);
      expect(runs(await plan(`file:${store}`, await ctx('mode-b', 'b'), '--builder', builder)), `${builder}: ENV`).toEqual([false, false]);
      expect(runs(await plan(`file:${store}`, v1, '--builder', builder, '--build-arg', 'LEVEL=2')), `${builder}: ARG`).toEqual([false, false]);
      expect(runs(await plan(`file:${store}`, await ctx('user', 'a', '1000:1000'), '--builder', builder)), `${builder}: USER`).toEqual([false, false]);
    }
    // The classic builder on a fresh daemon, from the plan's cache image: the unchanged build
    // reuses both RUNs; with MODE=b it reuses neither, as the plan said.
    const flagsFile = path.join(work, 'config-flags');
    const fromCache = async (dir: string) => {
      await dockerd.wipe();
      const pulled = await runOkSmart(['cache', 'pull', `file:${store}`, v1, 'docker-archive:-', '--print-cache-from', 'docker', '--print-cache-from-file', flagsFile]);
      await dockerd.dockerOk(['load'], { input: pulled.stdout });
      const flags = (await fs.readFile(flagsFile, 'utf8')).trim().split(' ').filter(Boolean);
      return cachedLines('classic', (await dockerd.dockerOk(['build', '--network', 'none', ...flags, '-t', 'config:x', dir], { env: classic })).stdout.toString());
    };
    expect(await fromCache(v1)).toEqual([2, 3, 4, 5, 6]);
    expect((await fromCache(await ctx('mode-b', 'b'))).filter((l) => l >= 5)).toEqual([]);
  });

  it("buildah's OCI archive on a pipe: pushed as it streams, its manifest kept, pulled and run by Docker from the stock registry", async () => {
    const ctx = path.join(work, 'ctx-oci-stream');
    await fs.mkdir(ctx);
    await fs.writeFile(path.join(ctx, 'Dockerfile'), `FROM oci:${baseLayout}:latest\nRUN echo streamed > /hello\nCMD ["cat", "/hello"]\n`);
    const storage = ['--root', path.join(work, 'oci-stream', 'root'), '--runroot', path.join(work, 'oci-stream', 'run'), '--storage-driver', 'vfs'];
    const archive = path.join(work, 'oci-stream.tar');
    try {
      await runOk('buildah', [...storage, 'bud', '--isolation', 'chroot', '-t', 'streamed:1', ctx]);
      await runOk('buildah', [...storage, 'push', 'streamed:1', `oci-archive:${archive}:streamed`]);
    } finally {
      await runOk('buildah', [...storage, 'rmi', '--all', '--force']).catch(() => undefined);
    }
    const pushed = JSON.parse((await runOkSmart(['push', 'oci-archive:-', `file:${store}#apps/oci-stream:1`, '--json'], await fs.readFile(archive))).stdout.toString()) as { manifestDigest: string; converted: boolean };
    expect(pushed.converted).toBe(false);
    const inArchive = (await runOk('skopeo', ['inspect', '--format', '{{.Digest}}', `oci-archive:${archive}:streamed`])).stdout.toString().trim();
    expect(pushed.manifestDigest).toBe(inArchive);
    await dockerd.wipe();
    const ref = `${registry.host}/apps/oci-stream:1`;
    await dockerd.dockerOk(['pull', '-q', ref]);
    const digests = (await dockerd.dockerOk(['image', 'inspect', '--format', '{{join .RepoDigests " "}}', ref])).stdout.toString().trim();
    expect(digests).toBe(`${registry.host}/apps/oci-stream@${inArchive}`);
    expect((await dockerd.dockerOk(['run', '--rm', '--network', 'none', ref])).stdout.toString()).toBe('streamed\n');
  });
});
