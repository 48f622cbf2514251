/**
 * Concurrency at scale: many `smart push` processes at once of overlapping images (shared base and
 * library layers, the same tags pushed by several) into one `file:` store and into one `s3:` store,
 * a third of them killed with SIGKILL at random moments and run again; then many pulls at once into
 * one layer store. Afterwards `smart store check` finds each store consistent, the stock registry
 * serves every tag and skopeo reads each one whole, every pushed digest is the one expected, every
 * root filesystem holds the image's files, and the layer store verifies.
 *
 * On 2 cores a hundred node processes at once measure the scheduler, not us: processes run from a
 * pool with a bound (a new one starts as one ends), so that many overlap at every moment. CI runs a
 * smaller scale; `npm run soak` (SMART_SOAK=full) the full one: 100 pushes per store, 20 at a time,
 * 50 pulls. The seed (SMART_SOAK_SEED to replay) decides the order, who is killed and when.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LayerStore } from '../../src/cache/layer-store.js';
import type { StoreCheckReport } from '../../src/ops/store-check.js';
import { writeImage, type ImageSpec } from '../harness/images.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { runOk, smart } from '../harness/run.js';
import { registryS3Config, startS3, type RunningS3 } from '../harness/s3.js';
import { FULL_SCALE, pool, runSmart, seeded, soakSeed, startSmart, type SmartRun } from '../harness/soak.js';
import { haveTools } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';

const SCALE = FULL_SCALE ? { pushes: 100, s3Pushes: 100, pulls: 50, parallel: 20 } : { pushes: 24, s3Pushes: 9, pulls: 12, parallel: 8 };
const IMAGES = 6;
const REPOSITORIES = 3;
/** No single run of these small images takes this long, even on a loaded machine: past it, it hangs. */
const BOUND_MS = 120_000;
/** A test's own limit: the full scale runs for minutes on 2 cores. */
const TEST_TIMEOUT_MS = FULL_SCALE ? 1_800_000 : 300_000;

const seed = soakSeed();
const rng = seeded(seed);
const tagged = (what: string) => `${what} (seed ${seed}; replay with SMART_SOAK_SEED=${seed})`;

interface Job {
  image: number;
  repository: string;
  tag: string;
  /** Killed this long after its start (when still running), then run again. */
  killAfterMs?: number;
}

interface Outcome {
  job: Job;
  first: SmartRun;
  killed: boolean;
  rerun?: SmartRun;
}

/** Image i: a base layer (of 2), a library layer (of 3), a layer of its own. Random content: compression does not make the layers small. */
function imageSpecs(): ImageSpec[] {
  const noise = (n: number) => randomBytes(n).toString('latin1');
  const bases = [0, 1].map((b) => ({ files: { [`usr/lib/base${b}.bin`]: noise(400 * 1024) }, createdBy: `ADD base${b} /` }));
  const libs = [0, 1, 2].map((l) => ({ files: { [`usr/lib/lib${l}.so`]: noise(120 * 1024) }, createdBy: `COPY lib${l}.so /usr/lib/` }));
  return Array.from({ length: IMAGES }, (_, i) => ({ layers: [bases[i % 2]!, libs[i % 3]!, { files: { [`app/${i}.txt`]: `app ${i}\n` }, createdBy: `COPY ${i}.txt /app/` }] }));
}

/** The jobs of one store: each image under each repository, several times, in a shuffled order; a third killed. */
function jobs(count: number): Job[] {
  const list = Array.from({ length: count }, (_, j): Job => ({ image: j % IMAGES, repository: `proj${Math.floor(j / IMAGES) % REPOSITORIES}/app`, tag: `img${j % IMAGES}` }));
  const shuffled = rng.shuffle(list);
  for (const j of rng.shuffle(shuffled).slice(0, Math.floor(count / 3))) j.killAfterMs = rng.between(100, 3000);
  return shuffled;
}

describe.skipIf(!haveTools('docker-registry', 'skopeo'))(`concurrency at scale (${FULL_SCALE ? 'full' : 'CI'} scale)`, () => {
  let work: string;
  let specs: ImageSpec[];
  /** Per image: the source name a push reads (even images an OCI layout, odd ones a docker-archive: compressed on the way). */
  let sources: string[];
  const log: string[] = [];

  beforeAll(async () => {
    work = await tempDir('smart-concurrency-');
    specs = imageSpecs();
    sources = [];
    for (let i = 0; i < IMAGES; i++) {
      const layout = path.join(work, `image${i}`);
      await writeImage(layout, specs[i]!);
      if (i % 2 === 0) sources.push(`oci:${layout}:latest`);
      else {
        const archive = path.join(work, `image${i}.tar`);
        const r = await smart(['pull', `oci:${layout}:latest`, `docker-archive:${archive}:soak/image${i}:latest`]);
        expect(r.code, r.stderr).toBe(0);
        sources.push(`docker-archive:${archive}`);
      }
    }
  });

  afterAll(() => {
    // The record of the run, for whoever reads the log: the seed, what was run and killed, and how it ended.
    console.log(`concurrency (seed ${seed}, ${FULL_SCALE ? 'full' : 'CI'} scale, ${SCALE.parallel} at a time):\n  ${log.join('\n  ')}`);
  });

  /**
   * Runs the jobs into `store` (`file:ROOT` or `s3://BUCKET/ROOT`), `parallel` at a time, killing
   * the chosen ones, then runs the killed ones again. Every run not killed must succeed.
   */
  async function pushAll(store: string, list: Job[], env: NodeJS.ProcessEnv, cacheHome: string): Promise<{ outcomes: Outcome[]; digests: Map<number, Set<string>> }> {
    const args = (j: Job) => ['push', sources[j.image]!, `${store}#${j.repository}:${j.tag}`, '--json', '--progress', 'none'];
    const outcomes = await pool(list, SCALE.parallel, async (job): Promise<Outcome> => {
      const run = startSmart(args(job), { env, cacheHome, boundMs: BOUND_MS });
      let killed = false;
      const timer = job.killAfterMs !== undefined ? setTimeout(() => ((killed = true), run.kill('SIGKILL')), job.killAfterMs) : undefined;
      const first = await run.done;
      clearTimeout(timer);
      return { job, first, killed: killed && first.signal === 'SIGKILL' };
    });
    // The killed ones again, as CI would retry them, all at once with the same bound.
    await pool(
      outcomes.filter((o) => o.killed),
      SCALE.parallel,
      async (o) => {
        o.rerun = await runSmart(args(o.job), { env, cacheHome, boundMs: BOUND_MS });
      },
    );
    const failed = outcomes.flatMap((o) => {
      const last = o.rerun ?? o.first;
      if (o.killed && !o.rerun) return [];
      return last.code === 0 ? [] : [`${o.job.repository}:${o.job.tag} ${o.killed ? '(re-run) ' : ''}exit ${last.code}${last.hung ? ' (hung)' : ''}: ${last.stderr.trim().split('\n').slice(-3).join(' | ')}`];
    });
    expect(failed, tagged('every push not killed, and every re-run, succeeds')).toEqual([]);
    const digests = new Map<number, Set<string>>();
    for (const o of outcomes) {
      const last = o.rerun ?? o.first;
      const d = (JSON.parse(last.stdout) as { manifestDigest: string }).manifestDigest;
      digests.set(o.job.image, (digests.get(o.job.image) ?? new Set()).add(d));
    }
    // Each image has one manifest digest, whoever pushed it and whichever compressed its layers.
    expect([...digests.values()].map((s) => s.size), tagged('one digest per image')).toEqual([...digests.keys()].map(() => 1));
    const killed = outcomes.filter((o) => o.killed).length;
    const survived = outcomes.filter((o) => o.job.killAfterMs !== undefined && !o.killed).length;
    log.push(
      `${store}: ${list.length} pushes, ${killed} killed with SIGKILL (${survived} more chosen finished first) and run again: ` +
        `all succeeded; slowest ${(Math.max(...outcomes.map((o) => Math.max(o.first.ms, o.rerun?.ms ?? 0))) / 1000).toFixed(1)} s`,
    );
    return { outcomes, digests };
  }

  /** `smart store check` finds it consistent; the counts go to the record. */
  async function storeCheck(store: string, env: NodeJS.ProcessEnv): Promise<StoreCheckReport> {
    const r = await runSmart(['store', 'check', store, '--json', '--jobs', '8'], { env, boundMs: BOUND_MS });
    const report = JSON.parse(r.stdout) as StoreCheckReport;
    expect(report.problems, tagged(`store check of ${store}: ${r.stderr}`)).toEqual([]);
    expect(r.code).toBe(0);
    log.push(`store check ${store}: ${r.stderr.trim()}`);
    return report;
  }

  /** The stock registry serves every tag as the digest pushed, and skopeo copies each one whole (verifying every blob). */
  async function skopeoReadsEveryTag(registry: RunningRegistry, list: Job[], digests: Map<number, Set<string>>): Promise<void> {
    const refs = [...new Map(list.map((j) => [`${j.repository}:${j.tag}`, { ref: `${j.repository}:${j.tag}`, image: j.image }])).values()];
    const out = await tempDir('smart-concurrency-out-');
    await pool(refs, 4, async ({ ref, image }, k) => {
      const raw = await runOk('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${registry.host}/${ref}`]);
      const { createHash } = await import('node:crypto');
      expect(`sha256:${createHash('sha256').update(raw.stdout).digest('hex')}`, tagged(ref)).toBe([...digests.get(image)!][0]);
      await runOk('skopeo', ['--insecure-policy', 'copy', '--src-tls-verify=false', `docker://${registry.host}/${ref}`, `dir:${path.join(out, String(k))}`]);
    });
    log.push(`registry on ${registry.root || 'S3'}: skopeo read ${refs.length} tags whole, each the digest pushed`);
  }

  it(`${SCALE.pushes} pushes into one file: store, a third killed and run again: consistent, and the registry serves every tag`, { timeout: TEST_TIMEOUT_MS }, async () => {
    const root = path.join(work, 'store');
    const store = `file:${root}`;
    const list = jobs(SCALE.pushes);
    const { digests } = await pushAll(store, list, {}, await tempDir());
    await storeCheck(store, {});
    const registry = await startRegistry({ configDir: await tempDir(), root });
    try {
      await skopeoReadsEveryTag(registry, list, digests);
    } finally {
      await registry.stop();
    }
  });

  describe('into S3', () => {
    let s3: RunningS3;
    beforeAll(async () => {
      s3 = await startS3(path.join(await tempDir(), 's3'));
    });
    afterAll(async () => {
      await s3?.stop();
    });

    it(`${SCALE.s3Pushes} pushes into one s3: store, a third killed and run again: consistent, and the registry on S3 serves every tag`, { timeout: TEST_TIMEOUT_MS }, async () => {
      const store = `s3://${s3.bucket}/conc`;
      const list = jobs(SCALE.s3Pushes);
      const { digests } = await pushAll(store, list, s3.env, await tempDir());
      await storeCheck(store, s3.env);
      const storageYaml = registryS3Config(s3, '/conc').slice(1).map((l) => l.replace(/^ {2}/, ''));
      const registry = await startRegistry({ configDir: await tempDir(), storageYaml });
      try {
        await skopeoReadsEveryTag(registry, list, digests);
      } finally {
        await registry.stop();
      }
    });
  });

  it(`${SCALE.pulls} pulls at once into one layer store: every root filesystem whole, the layer store verifies`, { timeout: TEST_TIMEOUT_MS }, async () => {
    const root = path.join(work, 'store');
    // The file: store of the first test, when it ran; else one push per image.
    if (!(await fs.stat(root).catch(() => undefined))) {
      for (let i = 0; i < IMAGES; i++) {
        const r = await smart(['push', sources[i]!, `file:${root}#proj0/app:img${i}`]);
        expect(r.code, r.stderr).toBe(0);
      }
    }
    const cacheHome = await tempDir();
    const layerStore = path.join(work, 'layer-store');
    const pulls = rng.shuffle(Array.from({ length: SCALE.pulls }, (_, j) => ({ j, image: j % IMAGES })));
    const runs = await pool(pulls, SCALE.parallel, async ({ j, image }) => ({
      j,
      image,
      run: await runSmart(['pull', `file:${root}#proj0/app:img${image}`, `rootfs:${path.join(work, 'pulls', `p${j}`)}`, '--layer-store', layerStore, '--progress', 'none'], { cacheHome, boundMs: BOUND_MS }),
    }));
    const failed = runs.filter((r) => r.run.code !== 0).map((r) => `p${r.j}: exit ${r.run.code}${r.run.hung ? ' (hung)' : ''}: ${r.run.stderr.trim()}`);
    expect(failed, tagged('every pull succeeds')).toEqual([]);
    for (const { j, image } of runs) {
      const dir = path.join(work, 'pulls', `p${j}`);
      for (const layer of specs[image]!.layers) {
        for (const [file, content] of Object.entries(layer.files)) {
          expect((await fs.readFile(path.join(dir, file))).equals(Buffer.from(content)), tagged(`p${j}/${file}`)).toBe(true);
        }
      }
    }
    expect(await new LayerStore(layerStore).verify(), tagged('the layer store verifies')).toEqual([]);
    log.push(`${SCALE.pulls} pulls into one layer store, ${SCALE.parallel} at a time: all succeeded, every tree whole, the layer store verifies`);
  });
});
