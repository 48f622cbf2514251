/**
 * A mutation corpus through the built CLI, end to end: the fixture images (an OCI layout, a
 * docker-save archive in both layouts, an OCI archive) are damaged at random — cut short, bytes
 * flipped (tar headers first), members or files dropped, JSON files rewritten — and pushed or
 * pulled with `node bin/smart.js`. Each run either fails cleanly (exit 1 or 2, one line
 * `smart: error [CODE]: ...` last on stderr, no stack trace, nothing at the destination) or succeeds
 * with a correct result: the root filesystem of the intact image, or a store / layout whose every
 * blob hashes to its name and every layer to its diff id. A run that takes longer than
 * RUN_TIMEOUT_MS is a hang.
 *
 * Seeded and reproducible: the seed is printed, and SMART_FUZZ_SEED=N replays a run;
 * SMART_FUZZ_CLI_RUNS sets the number of runs (CI: CLI_RUNS).
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import tarStream from 'tar-stream';
import { beforeAll, describe, expect, inject, it } from 'vitest';
import { parseImageConfig } from '../../src/oci/config.js';
import { parseManifest, type ParsedManifest } from '../../src/oci/manifest.js';
import { fixtures } from '../harness/fixtures.js';
import { FUZZ_SEED } from '../harness/fuzz.js';
import { smartBin } from '../harness/run.js';
import { tempDir } from '../harness/tmp.js';
import { describeTree, listAll } from '../harness/tree.js';

const CLI_RUNS = Number(process.env.SMART_FUZZ_CLI_RUNS ?? 24);
const RUN_TIMEOUT_MS = 60_000;

/** Raw library messages that must never reach a user: each corrupt input has an error of its own. */
const RAW_LIBRARY_MESSAGES = [/Invalid tar header/i, /uid.*out of range/i, /time argument/i, /must be an instance of/i];

/** mulberry32: a small seeded PRNG, so a run is reproduced by its seed alone. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Run {
  code: number;
  stderr: string;
  stdout: string;
  timedOut: boolean;
}

function runSmart(args: string[], env: NodeJS.ProcessEnv, input?: Uint8Array): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [smartBin, ...args], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stderr = '';
    let stdout = '';
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, RUN_TIMEOUT_MS);
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stdin.on('error', () => undefined);
    child.stdin.end(input);
    child.once('error', reject);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, stderr, stdout, timedOut });
    });
  });
}

const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/**
 * Our own digest checks of an image in a store or layout: the manifest hashes to its digest,
 * every blob it names is there and hashes to its name and size, every layer's tar to the config's
 * diff id; an index's children likewise.
 */
async function verifyImage(blob: (digest: string) => Promise<Buffer>, digest: string, mediaType?: string): Promise<void> {
  const bytes = await blob(digest);
  expect(sha256(bytes)).toBe(digest);
  const m: ParsedManifest = parseManifest(bytes, mediaType, digest);
  if (m.kind === 'index') {
    for (const d of m.index.manifests) await verifyImage(blob, d.digest, d.mediaType);
    return;
  }
  const get = async (d: { digest: string; size: number }) => {
    const b = await blob(d.digest);
    expect(sha256(b)).toBe(d.digest);
    expect(b.length).toBe(d.size);
    return b;
  };
  const config = parseImageConfig(await get(m.manifest.config));
  expect(m.manifest.layers.length).toBe(config.rootfs.diff_ids.length);
  for (const [i, l] of m.manifest.layers.entries()) {
    const b = await get(l);
    const tar = l.mediaType.endsWith('gzip') ? gunzipSync(b) : b;
    expect(sha256(tar)).toBe(config.rootfs.diff_ids[i]);
  }
}

const storeBlob = (store: string) => (d: string) => fs.readFile(path.join(store, 'docker/registry/v2/blobs/sha256', d.slice(7, 9), d.slice(7), 'data'));
const layoutBlob = (dir: string) => (d: string) => fs.readFile(path.join(dir, 'blobs/sha256', d.slice(7)));

/** Re-packs a tar without the member at `drop` (by position). */
async function withoutMember(tar: Buffer, drop: number): Promise<Buffer> {
  const extract = tarStream.extract();
  const pack = tarStream.pack();
  const out: Buffer[] = [];
  pack.on('data', (c) => out.push(c as Buffer));
  const packed = new Promise<void>((resolve) => pack.on('end', () => resolve()));
  let i = 0;
  extract.on('entry', (header, stream, next) => {
    const chunks: Buffer[] = [];
    stream.on('data', (c) => chunks.push(c as Buffer));
    stream.on('end', () => {
      if (i++ !== drop) pack.entry(header, Buffer.concat(chunks));
      next();
    });
  });
  const done = new Promise<void>((resolve, reject) => {
    extract.on('finish', () => resolve());
    extract.on('error', reject);
  });
  extract.end(tar);
  await done;
  pack.finalize();
  await packed;
  return Buffer.concat(out);
}

type Source = { kind: 'layout' | 'docker-archive' | 'oci-archive'; path: string };
type Destination = 'rootfs' | 'store' | 'oci' | 'stdin-store';

describe('CLI mutation corpus', () => {
  let work: string;
  let env: NodeJS.ProcessEnv;
  let baselineTree: unknown;
  const outcomes: string[] = [];

  beforeAll(async () => {
    work = await tempDir('smart-fuzz-cli-');
    env = { ...process.env, XDG_CACHE_HOME: path.join(work, 'cache'), CONTAINERS_REGISTRIES_CONF: inject('registriesConf') };
    const r = await runSmart(['pull', `oci:${fixtures().paths.ociBasic}:latest`, `rootfs:${path.join(work, 'baseline')}`], env);
    expect(r.code, r.stderr).toBe(0);
    baselineTree = await describeTree(path.join(work, 'baseline'));
  });

  it(`fails cleanly or succeeds correctly on ${CLI_RUNS} damaged images (seed ${FUZZ_SEED})`, async () => {
    const rand = prng(FUZZ_SEED);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
    const fx = fixtures();
    const sources: Source[] = [
      { kind: 'layout', path: fx.paths.ociBasic },
      { kind: 'docker-archive', path: fx.paths.dockerArchiveBasic },
      { kind: 'docker-archive', path: fx.paths.dockerArchiveBasicOci },
      { kind: 'oci-archive', path: fx.paths.ociArchiveBasic },
    ];

    /** Damages a copy of `src` at `dir`; returns the damaged path and what was done. */
    const damage = async (src: Source, dir: string): Promise<{ path: string; what: string }> => {
      if (src.kind === 'layout') {
        const copy = path.join(dir, 'layout');
        await fs.cp(src.path, copy, { recursive: true });
        const files = (await listAll(copy)).filter((p) => !p.endsWith('sha256') && p !== 'blobs');
        const file = pick(files);
        const full = path.join(copy, file);
        const bytes = await fs.readFile(full);
        const how = pick(['drop', 'cut', 'flip', 'flip', 'json'] as const);
        if (how === 'drop') await fs.rm(full);
        else if (how === 'cut') await fs.writeFile(full, bytes.subarray(0, Math.floor(rand() * bytes.length)));
        else if (how === 'json' && bytes[0] === 0x7b) {
          // A field's value rewritten: a size, a digest, a media type.
          const text = bytes.toString().replace(pick([/"size":\d+/, /"digest":"[^"]+"/, /"mediaType":"[^"]+"/, /"schemaVersion":2/]), pick(['"size":-1', '"digest":"sha256:../../x"', '"mediaType":"x"', '"size":1e400', '"schemaVersion":"2"', '"digest":"sha512:00"']));
          await fs.writeFile(full, text);
        } else {
          for (let k = 0; k < 1 + Math.floor(rand() * 3); k++) bytes[Math.floor(rand() * bytes.length)] = Math.floor(rand() * 256);
          await fs.writeFile(full, bytes);
        }
        return { path: copy, what: `${how} ${file}` };
      }
      let bytes: Buffer = await fs.readFile(src.path);
      const how = pick(['cut', 'flip-header', 'flip', 'drop'] as const);
      if (how === 'cut') bytes = bytes.subarray(0, Math.floor(rand() * bytes.length));
      else if (how === 'drop') bytes = await withoutMember(bytes, Math.floor(rand() * 8));
      else {
        const blocks = Math.floor(bytes.length / 512);
        for (let k = 0; k < 1 + Math.floor(rand() * 3); k++) {
          const at = how === 'flip-header' ? Math.floor(rand() * blocks) * 512 + Math.floor(rand() * 300) : Math.floor(rand() * bytes.length);
          bytes[at] = Math.floor(rand() * 256);
        }
      }
      const file = path.join(dir, path.basename(src.path));
      await fs.writeFile(file, bytes);
      return { path: file, what: how };
    };

    for (let run = 0; run < CLI_RUNS; run++) {
      const dir = path.join(work, `run-${run}`);
      await fs.mkdir(dir);
      const src = pick(sources);
      const damaged = await damage(src, dir);
      const dest: Destination =
        src.kind === 'docker-archive' ? pick(['rootfs', 'store', 'stdin-store'] as const) : src.kind === 'oci-archive' ? pick(['rootfs', 'store', 'oci', 'stdin-store'] as const) : pick(['rootfs', 'store', 'oci'] as const);
      const from =
        src.kind === 'layout'
          ? `oci:${damaged.path}:latest`
          : dest === 'stdin-store'
            ? `${src.kind}:-`
            : src.kind === 'oci-archive'
              ? `oci-archive:${damaged.path}:latest`
              : `docker-archive:${damaged.path}`;
      const out = path.join(dir, 'out');
      const to = dest === 'rootfs' ? `rootfs:${out}` : dest === 'oci' ? `oci:${out}:x` : `file:${out}#fuzz/image:1`;
      const label = `run ${run} (seed ${FUZZ_SEED}): ${src.kind} ${path.basename(src.path)} ${damaged.what} → ${dest}`;
      // A fresh layer store each time: a damaged layer must not be found intact from an earlier run.
      const r = await runSmart([dest === 'rootfs' ? 'pull' : 'push', from, to, '--json'], { ...env, XDG_CACHE_HOME: path.join(dir, 'cache') }, dest === 'stdin-store' ? await fs.readFile(damaged.path) : undefined);
      expect(r.timedOut, `${label}: hung`).toBe(false);
      if (r.code === 0) {
        if (dest === 'rootfs') expect(await describeTree(out), label).toEqual(baselineTree);
        else if (dest === 'oci') {
          const index = JSON.parse(await fs.readFile(path.join(out, 'index.json'), 'utf8')) as { manifests: { digest: string; mediaType: string }[] };
          for (const d of index.manifests) await verifyImage(layoutBlob(out), d.digest, d.mediaType);
        } else {
          const tag = (await fs.readFile(path.join(out, 'docker/registry/v2/repositories/fuzz/image/_manifests/tags/1/current/link'), 'utf8')).trim();
          await verifyImage(storeBlob(out), tag);
        }
        outcomes.push(`${label}: ok`);
      } else {
        expect([1, 2], `${label}: exit ${r.code}\n${r.stderr}`).toContain(r.code);
        expect(r.stderr, `${label}: a stack trace`).not.toMatch(/\n\s+at /);
        const lines = r.stderr.trimEnd().split('\n');
        const errorAt = lines.findIndex((l) => /^smart: error \[[A-Z_]+\]: /.test(l));
        expect(errorAt, `${label}: no error line\n${r.stderr}`).toBeGreaterThanOrEqual(0);
        expect(lines.filter((l) => /^smart: error \[[A-Z_]+\]: /.test(l)), label).toHaveLength(1);
        // The error is the one last line, in the project's own words.
        expect(errorAt, `${label}: the error is not the last line\n${r.stderr}`).toBe(lines.length - 1);
        const message = lines[errorAt]!;
        for (const raw of RAW_LIBRARY_MESSAGES) expect(message, label).not.toMatch(raw);
        // Nothing at the destination: no root filesystem, no tag, no upload left, no image in the layout.
        if (dest === 'rootfs') await expect(fs.stat(out), label).rejects.toThrow();
        else if (dest === 'oci') expect(await fs.readdir(out).catch(() => [] as string[]), label).toEqual([]);
        else {
          const left = (await listAll(path.join(out, 'docker/registry/v2/repositories'))).filter((p) => /\/_manifests\/tags\/.|\/_uploads\/./.test(p));
          expect(left, label).toEqual([]);
        }
        outcomes.push(`${label}: exit ${r.code}: ${message}`);
      }
      await fs.rm(dir, { recursive: true, force: true });
    }
    console.log(`CLI mutation corpus, seed ${FUZZ_SEED} (replay: SMART_FUZZ_SEED=${FUZZ_SEED}):\n  ${outcomes.join('\n  ')}`);
  });
});
