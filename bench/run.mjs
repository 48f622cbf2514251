#!/usr/bin/env node
/**
 * npm run bench: smart beside skopeo/umoci and the pigz/tar limits, in one run, on a generated
 * ~200 MB image made of files from this machine (shared libraries, docs, many small files, a tiny
 * patch layer with a whiteout), and a one-layer image of ~45,000 small files (a node_modules: the
 * cost per file of a rootfs pull, beside umoci and tar). Each case runs several times; the table
 * gives median wall time, CPU and peak RSS, and the ratio to the peer. Not a test: nothing here
 * passes or fails.
 * Beside the times: the compressed size of the pushed layers (read from the manifests in the
 * destination) against skopeo's and the pigz/zstd limits; how much of a push from stdin hides behind
 * a paced producer (bench/pace.mjs); peak RSS pushing a 1 GB layer as it is and one to compress.
 * The machine beside the rows: `node -e 0` and `skopeo -v` start-up (a warm push is mostly start-
 * up), and for each smart row the engine it ran with (from `smart version --json` in the row's
 * environment). The README's set-up without the native addon (SMART_NATIVE=0: Node's zlib, as on a
 * machine without the -dev headers) is a row of its own. The S3 rows are paired with skopeo's push
 * and with the limit: the same blobs uploaded by the AWS SDK alone (bench/s3-limit.mjs).
 *
 *   npm run bench [-- --runs N] [-- --keep] [-- --smoke]
 *
 * --smoke: every case once on a ~10 MB image, without the 1 GB memory rows and the trie: checks
 * that the script runs (a few minutes), measures nothing worth quoting; results.json is not written.
 *
 * Needs: docker-registry, skopeo, umoci, pigz, zstd, GNU tar and /usr/bin/time (Debian `time`).
 * Writes bench/out/ (generated image, results.json); removed unless --keep, except results.json.
 */
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { LIBRARY_ROOTS, isLibrary, pickFiles } from './pick-files.mjs';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const out = path.join(repo, 'bench', 'out');
// Run as the installed command is (its #! line: sh starts Node with glibc's malloc on huge pages), not by `node`.
const smartBin = path.join(repo, 'bin', 'smart.js');
const smoke = process.argv.includes('--smoke');
const runs = smoke ? 1 : Number(process.argv[process.argv.indexOf('--runs') + 1]) || 3;
const keep = process.argv.includes('--keep');
/** The image's size relative to the real one (--smoke: a twentieth). */
const scale = smoke ? 0.05 : 1;
const shm = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();

for (const tool of ['docker-registry', 'skopeo', 'umoci', 'pigz', 'zstd', 'tar', '/usr/bin/time']) {
  try {
    execFileSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' });
  } catch {
    console.error(`bench: ${tool} is missing (apt-get install docker-registry skopeo umoci pigz zstd time)`);
    process.exit(2);
  }
}

// ---------------------------------------------------------------------------------------------
// The image: four layers from files on this machine.
// ---------------------------------------------------------------------------------------------

function tarLayer(name, files) {
  const list = path.join(out, `${name}.list`);
  fs.writeFileSync(list, files.join('\n') + '\n');
  const file = path.join(out, `${name}.tar`);
  execFileSync('tar', ['-C', '/', '--sort=name', '--mtime=@1704067200', '--owner=0', '--group=0', '--numeric-owner', '-cf', file, '-T', list]);
  return file;
}

function sha256File(file) {
  return `sha256:${createHash('sha256').update(fs.readFileSync(file)).digest('hex')}`;
}

async function makeImage() {
  fs.mkdirSync(out, { recursive: true });
  const libs = pickFiles(LIBRARY_ROOTS, 150e6 * scale, Infinity, isLibrary);
  const docs = pickFiles(['/usr/share/doc', '/usr/share/man'], 30e6 * scale);
  const small = pickFiles([path.join(repo, 'node_modules'), '/usr/share/locale', '/usr/share/zoneinfo'], 14e6 * scale, Math.ceil(2500 * scale));
  // The patch layer: one file and a whiteout of a doc file.
  const patchDir = path.join(out, 'patch');
  fs.mkdirSync(path.join(patchDir, 'etc'), { recursive: true });
  fs.writeFileSync(path.join(patchDir, 'etc', 'bench.conf'), 'tuned=1\n'.repeat(500));
  const victim = docs.files[0];
  fs.mkdirSync(path.join(patchDir, path.dirname(victim)), { recursive: true });
  fs.writeFileSync(path.join(patchDir, path.dirname(victim), `.wh.${path.basename(victim)}`), '');
  const layers = [tarLayer('l1-libs', libs.files), tarLayer('l2-docs', docs.files), tarLayer('l3-small', small.files)];
  const patchTar = path.join(out, 'l4-patch.tar');
  execFileSync('tar', ['-C', patchDir, '--sort=name', '--mtime=@1704067200', '--owner=0', '--group=0', '--numeric-owner', '-cf', patchTar, '.']);
  layers.push(patchTar);
  const diffIds = layers.map(sha256File);
  const config = Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config: { Cmd: ['/bin/sh'] },
      rootfs: { type: 'layers', diff_ids: diffIds },
      history: layers.map((l) => ({ created_by: `ADD ${path.basename(l)} /` })),
    }),
  );
  const configName = `${createHash('sha256').update(config).digest('hex')}.json`;
  const archiveDir = path.join(out, 'archive');
  fs.mkdirSync(archiveDir, { recursive: true });
  fs.writeFileSync(path.join(archiveDir, configName), config);
  const layerNames = layers.map((l, i) => `${diffIds[i].slice(7)}.tar`);
  layers.forEach((l, i) => fs.renameSync(l, path.join(archiveDir, layerNames[i])));
  fs.writeFileSync(path.join(archiveDir, 'manifest.json'), JSON.stringify([{ Config: configName, RepoTags: ['bench/app:latest'], Layers: layerNames }]));
  const archive = path.join(out, 'image.tar');
  // Layers first, manifest.json last, as docker save writes it.
  execFileSync('tar', ['-C', archiveDir, '-cf', archive, ...layerNames, configName, 'manifest.json']);
  const layout = path.join(out, 'oci');
  execFileSync('skopeo', ['--insecure-policy', 'copy', '-q', `docker-archive:${archive}`, `oci:${layout}:latest`]);
  // The same layout as skopeo archives it (blobs first, index.json last): what a pipe may carry.
  const ociArchive = path.join(out, 'oci.tar');
  execFileSync('skopeo', ['--insecure-policy', 'copy', '-q', `oci:${layout}:latest`, `oci-archive:${ociArchive}:latest`]);
  const sizes = { libs: libs.bytes, docs: docs.bytes, small: small.bytes, smallFiles: small.files.length, tar: fs.statSync(archive).size };
  return { archive, archiveDir, layerNames, layout, ociArchive, sizes };
}

/**
 * An OCI layout of one layer of many small files, as a node_modules is: files of at most 16 KiB
 * from this repository's node_modules, /usr/share and /usr/include (about 45,000, ~80 MB), with
 * their directories' own entries, as a build writes them. Its uncompressed tar is kept beside it.
 */
function makeSmallFilesImage() {
  const small = (p) => fs.statSync(p).size <= 16 * 1024;
  const { files } = pickFiles([path.join(repo, 'node_modules'), '/usr/share', '/usr/include'], 200e6 * scale, Math.ceil(45000 * scale), small);
  const dirs = new Set();
  for (const f of files) for (let d = path.dirname(f); d !== '.' && d !== '/' && !dirs.has(d); d = path.dirname(d)) dirs.add(d);
  const list = path.join(out, 'many-small.list');
  fs.writeFileSync(list, [...dirs, ...files].sort().join('\n') + '\n');
  const layer = path.join(out, 'many-small.tar');
  execFileSync('tar', ['-C', '/', '--no-recursion', '--sort=name', '--mtime=@1704067200', '--owner=0', '--group=0', '--numeric-owner', '-cf', layer, '-T', list]);
  const archiveDir = path.join(out, 'many-small-archive');
  fs.mkdirSync(archiveDir, { recursive: true });
  const diffId = sha256File(layer);
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: [diffId] }, history: [{ created_by: 'COPY node_modules /' }] }));
  const configName = `${createHash('sha256').update(config).digest('hex')}.json`;
  fs.writeFileSync(path.join(archiveDir, configName), config);
  fs.copyFileSync(layer, path.join(archiveDir, 'layer.tar'));
  fs.writeFileSync(path.join(archiveDir, 'manifest.json'), JSON.stringify([{ Config: configName, RepoTags: ['bench/small:latest'], Layers: ['layer.tar'] }]));
  const archive = path.join(out, 'many-small-image.tar');
  execFileSync('tar', ['-C', archiveDir, '-cf', archive, 'layer.tar', configName, 'manifest.json']);
  rm(archiveDir);
  const layout = path.join(out, 'many-small-oci');
  execFileSync('skopeo', ['--insecure-policy', 'copy', '-q', `docker-archive:${archive}`, `oci:${layout}:latest`]);
  rm(archive);
  return { layer, layout, files: files.length, dirs: dirs.size, bytes: fs.statSync(layer).size };
}

/**
 * A docker-save tar of one layer of one ~`size`-byte file that compresses like real content (about
 * as well as the image's own layers): copies of the image's library and doc layer tars, each passed
 * through its own byte permutation from a seeded PRNG, so no copy repeats another and none is all
 * zeros, while each keeps the matches and byte statistics of the original. Written in one pass,
 * layer first and manifest.json last as docker save does; no intermediate 1 GB files.
 */
function writeCompressibleArchive(file, size, sources) {
  let seed = 0x2545f491;
  const rand = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) >>> 8) & 0xff;
  const header = (name, n) => {
    const h = Buffer.alloc(512);
    h.write(name, 0);
    h.write('0000644\0', 100);
    h.write('0000000\0', 108);
    h.write('0000000\0', 116);
    h.write(`${n.toString(8).padStart(11, '0')}\0`, 124);
    h.write(`${(1704067200).toString(8).padStart(11, '0')}\0`, 136);
    h.write('        ', 148);
    h.write('0', 156);
    h.write('ustar\x0000', 257);
    let sum = 0;
    for (const b of h) sum += b;
    h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148);
    return h;
  };
  const pad = (n) => Buffer.alloc((512 - (n % 512)) % 512);
  const fd = fs.openSync(file, 'w');
  const hash = createHash('sha256');
  const inner = (b) => {
    hash.update(b);
    fs.writeSync(fd, b);
  };
  const layerSize = 512 + size + pad(size).length + 1024;
  fs.writeSync(fd, header('layer.tar', layerSize));
  inner(header('big.bin', size));
  const chunk = Buffer.alloc(4 << 20);
  let written = 0;
  for (let copy = 0; written < size; copy++) {
    const table = Uint8Array.from({ length: 256 }, (_, i) => i);
    for (let i = 255; i > 0; i--) {
      const j = rand() % (i + 1);
      [table[i], table[j]] = [table[j], table[i]];
    }
    const src = fs.openSync(sources[copy % sources.length], 'r');
    for (let n; written < size && (n = fs.readSync(src, chunk, 0, Math.min(chunk.length, size - written))) > 0; written += n) {
      for (let i = 0; i < n; i++) chunk[i] = table[chunk[i]];
      inner(chunk.subarray(0, n));
    }
    fs.closeSync(src);
  }
  inner(pad(size));
  inner(Buffer.alloc(1024));
  const diffId = `sha256:${hash.digest('hex')}`;
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [diffId] }, history: [{ created_by: 'ADD big.bin /' }] }));
  const configName = `${createHash('sha256').update(config).digest('hex')}.json`;
  const manifest = Buffer.from(JSON.stringify([{ Config: configName, RepoTags: ['big/app:latest'], Layers: ['layer.tar'] }]));
  for (const [name, body] of [[configName, config], ['manifest.json', manifest]]) {
    fs.writeSync(fd, header(name, body.length));
    fs.writeSync(fd, body);
    fs.writeSync(fd, pad(body.length));
  }
  fs.writeSync(fd, Buffer.alloc(1024));
  fs.closeSync(fd);
  return { archive: file, layerBytes: layerSize };
}

// ---------------------------------------------------------------------------------------------
// Running and measuring
// ---------------------------------------------------------------------------------------------

/** Runs a shell command under /usr/bin/time: wall s, CPU s (user+sys, children included), peak RSS MB. */
function measure(command, env = {}) {
  return new Promise((resolve, reject) => {
    // Wall time from here, to the microsecond: time(1) gives it in hundredths, and a warm push's
    // ratio (0.05 s against skopeo's 0.03) turned on that rounding. It includes time's and sh's own
    // start (~2 ms), on both sides of every pair. CPU and peak RSS are time(1)'s.
    const started = process.hrtime.bigint();
    const child = spawn('/usr/bin/time', ['-f', '%e %U %S %M', 'sh', '-c', command], { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    child.on('close', (code) => {
      const wall = Number(process.hrtime.bigint() - started) / 1e9;
      const last = err.trim().split('\n').pop();
      if (code !== 0) return reject(new Error(`${command}\nexited ${code}: ${err.slice(-2000)}`));
      const [, user, sys, rssKb] = last.split(' ').map(Number);
      resolve({ wall, cpu: user + sys, rss: rssKb / 1024 });
    });
  });
}

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function startRegistry(root) {
  const port = await freePort();
  const config = path.join(out, `registry-${port}.yml`);
  fs.writeFileSync(
    config,
    `version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\nstorage:\n  filesystem: {rootdirectory: ${root}}\n  delete: {enabled: true}\n  maintenance: {uploadpurging: {enabled: false}}\nhttp: {addr: 127.0.0.1:${port}}\n`,
  );
  const env = { ...process.env };
  delete env.AWS_CA_BUNDLE;
  const child = spawn('docker-registry', ['serve', config], { env, stdio: 'ignore' });
  for (let i = 0; i < 300; i++) {
    try {
      if ((await fetch(`http://127.0.0.1:${port}/v2/`)).status === 200) break;
    } catch {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  return {
    host: `127.0.0.1:${port}`,
    stop: () =>
      new Promise((r) => {
        child.once('exit', r);
        child.kill('SIGTERM');
      }),
  };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
/** A case under this many seconds runs QUICK_RUNS times (see bench). */
const QUICK_S = 0.2;
const QUICK_RUNS = 11;
/** Wall seconds as the table shows them: to the millisecond under a second, where a row's ratio turns on a few ms (CPU seconds come from time(1), in hundredths). */
const seconds = (s) => s.toFixed(s < 1 ? 3 : 2);
const rm = (p) => fs.rmSync(p, { recursive: true, force: true });
const skopeoCache = '/var/lib/containers/cache/blob-info-cache-v1.boltdb';

/**
 * Runs one case `runs` times. `after(ctx)`, when given, runs after each measured command and before
 * the teardown, and returns the bytes the case wrote (its pushed layers): kept as `bytes`. `engine`
 * says what the case (de)compresses with, for the table.
 */
async function bench(name, spec) {
  return (await benchTogether([[name, spec]]))[0];
}

/**
 * Runs cases in turn, one run of each per round, rather than all runs of one case and then the
 * next: cases whose medium changes state as the bench goes (the disk, mounted with `discard`, gets
 * slower to create files on after each tree is written and removed) then all see that state alike,
 * in place of the first case to run seeing a fresh disk and the last a worn one.
 */
async function benchTogether(cases) {
  const state = cases.map(([name, spec]) => ({ name, spec, samples: [], bytes: undefined }));
  // A case over in a fraction of a second (a warm push, a mount) is mostly start-up, which wanders
  // by ±10 ms here from one run to the next: it runs QUICK_RUNS times, so that its median is not
  // one run's luck.
  const times = (c) => (runs > 1 && c.samples.length > 0 && c.samples[0].wall < QUICK_S ? Math.max(runs, QUICK_RUNS) : runs);
  while (state.some((c) => c.samples.length < times(c))) {
    for (const c of state) {
      if (c.samples.length >= times(c)) continue;
      const { setup, command, env, after } = c.spec;
      const ctx = setup ? await setup(c.samples.length) : {};
      try {
        c.samples.push(await measure(typeof command === 'function' ? command(ctx) : command, env));
        if (after) c.bytes = await after(ctx);
      } finally {
        await ctx.teardown?.();
      }
    }
  }
  return state.map(({ name, spec, samples, bytes }) => {
    const r = { name, wall: median(samples.map((s) => s.wall)), cpu: median(samples.map((s) => s.cpu)), rss: median(samples.map((s) => s.rss)), samples };
    if (bytes !== undefined) r.bytes = bytes;
    if (spec.engine) r.engine = spec.engine;
    process.stderr.write(`  ${name}: ${seconds(r.wall)} s${spec.engine ? ` (${spec.engine})` : ''}\n`);
    return r;
  });
}

/**
 * The total compressed size of the layers of REPO:TAG in a registry layout on disk: a `file:` store,
 * or the root directory of the docker-registry the peer pushed to (the same layout).
 */
function layerBytes(root, repoName, tag) {
  const v2 = path.join(root, 'docker', 'registry', 'v2');
  const link = fs.readFileSync(path.join(v2, 'repositories', repoName, '_manifests', 'tags', tag, 'current', 'link'), 'utf8').trim();
  const hex = link.replace(/^sha256:/, '');
  const manifest = JSON.parse(fs.readFileSync(path.join(v2, 'blobs', 'sha256', hex.slice(0, 2), hex, 'data'), 'utf8'));
  return manifest.layers.reduce((n, l) => n + l.size, 0);
}

// ---------------------------------------------------------------------------------------------

const started = Date.now();
process.stderr.write('bench: generating the image...\n');
const img = await makeImage();
const smart = `${smartBin} -q`;
// Every smart run without its own --cache-dir uses this one, never the user's.
process.env.XDG_CACHE_HOME = fs.mkdtempSync(path.join(os.tmpdir(), 'smart-bench-xdg-'));
const results = [];
const memoryRows = [];
const pairs = [];
const sizePairs = [];
const overlap = [];
const work = path.join(out, 'work');

async function freshStore() {
  const dir = fs.mkdtempSync(path.join(work + '-'));
  return { dir, teardown: () => rm(dir) };
}

async function freshRegistry() {
  const dir = fs.mkdtempSync(path.join(out, 'reg-'));
  rm(skopeoCache);
  const reg = await startRegistry(dir);
  return { dir, host: reg.host, teardown: async () => { await reg.stop(); rm(dir); } };
}

process.stderr.write(`bench: ${runs} runs per case (${Math.max(runs, QUICK_RUNS)} for a case under ${QUICK_S} s)${smoke ? ' (--smoke: a small image, nothing to quote)' : ''}\n`);

/** Median wall seconds of 11 runs of a command that does almost nothing, timed here (finer than /usr/bin/time's 10 ms). */
function startUp(cmd, args) {
  const walls = [];
  for (let i = 0; i < 11; i++) {
    const t = process.hrtime.bigint();
    execFileSync(cmd, args, { stdio: 'ignore' });
    walls.push(Number(process.hrtime.bigint() - t) / 1e9);
  }
  return median(walls);
}
// What a command costs here before it does anything: the floor of a warm push, beside skopeo's.
const startup = { node: startUp(process.execPath, ['-e', '0']), skopeo: startUp('skopeo', ['-v']) };
process.stderr.write(`bench: start-up: node -e 0 ${startup.node.toFixed(3)} s, skopeo -v ${startup.skopeo.toFixed(3)} s\n`);
// The engines each row runs with, as smart itself reports them in that environment.
const enginesIn = (env = {}) => JSON.parse(execFileSync(smartBin, ['version', '--json'], { env: { ...process.env, ...env }, encoding: 'utf8' }));
const README_PATH_ENV = { SMART_NATIVE: '0' };
const engines = enginesIn();
const readmeEngines = enginesIn(README_PATH_ENV);
const gzipOf = (e) => `gzip ${e.gzip.engine} (${e.gzip.implementation}) level ${e.gzip.level}`;
const ENGINE = {
  gzip: gzipOf(engines),
  gzipReadme: gzipOf(readmeEngines),
  zstd: `zstd ${engines.zstd.implementation ?? 'absent'} level ${engines.zstd.level}`,
  gzipFast: engines.gzipFast.implementation ? `gzip ${engines.gzipFast.engine} (${engines.gzipFast.implementation}) level ${engines.gzipFast.level}` : null,
  gunzip: `gunzip ${engines.gunzip.engine} (${engines.gunzip.implementation})`,
  none: 'none (layers copied as they are)',
};
process.stderr.write(`bench: native addon ${engines.native.loaded ? `loaded (libdeflate ${engines.native.libdeflate ?? '-'}, zstd ${engines.native.zstd ?? '-'}, isa-l ${engines.native.isal ?? '-'})` : engines.native.reason}; ${ENGINE.gzip}; README path without it: ${ENGINE.gzipReadme}\n`);
// 1. cold push from a docker-save tar: everything to compress.
const s1 = await bench('smart push docker-archive → file: (cold)', {
  setup: freshStore,
  command: (c) => `${smart.replace(' -q', '')} push -q --cache-dir ${c.dir}/cache docker-archive:${img.archive} file:${c.dir}/store#bench/app:1`,
  after: (c) => layerBytes(`${c.dir}/store`, 'bench/app', '1'),
  engine: ENGINE.gzip,
});
// The README's set-up on a machine without the addon's headers: what a push runs with then.
const s1r = await bench('smart push docker-archive → file: (cold, README path without the addon: SMART_NATIVE=0)', {
  setup: freshStore,
  env: README_PATH_ENV,
  command: (c) => `${smartBin} push -q --cache-dir ${c.dir}/cache docker-archive:${img.archive} file:${c.dir}/store#bench/app:1`,
  after: (c) => layerBytes(`${c.dir}/store`, 'bench/app', '1'),
  engine: ENGINE.gzipReadme,
});
const s1s = await bench('smart push docker-archive:- (stdin) → file: (cold)', {
  setup: freshStore,
  command: (c) => `cat ${img.archive} | ${smartBin} push -q --cache-dir ${c.dir}/cache docker-archive:- file:${c.dir}/store#bench/app:1`,
  engine: ENGINE.gzip,
});
const k1 = await bench('skopeo copy docker-archive → registry (cold)', {
  setup: freshRegistry,
  command: (c) => `skopeo --insecure-policy copy -q --dest-tls-verify=false docker-archive:${img.archive} docker://${c.host}/bench/app:1`,
  after: (c) => layerBytes(c.dir, 'bench/app', '1'),
});
pairs.push([s1, k1], [s1r, k1], [s1s, k1]);
// The same push with zstd layers, against skopeo's (gzip) push.
const s1z = await bench('smart push --compression zstd docker-archive → file: (cold)', {
  setup: freshStore,
  command: (c) => `${smartBin} push -q --compression zstd --cache-dir ${c.dir}/cache docker-archive:${img.archive} file:${c.dir}/store#bench/app:1`,
  after: (c) => layerBytes(`${c.dir}/store`, 'bench/app', '1'),
  engine: ENGINE.zstd,
});
pairs.push([s1z, k1]);
sizePairs.push([s1, k1], [s1r, k1], [s1z, k1]);
// --compression-level fast (ISA-L in the addon), where the addon has it.
if (ENGINE.gzipFast) {
  const s1f = await bench('smart push --compression-level fast docker-archive → file: (cold)', {
    setup: freshStore,
    command: (c) => `${smartBin} push -q --compression-level fast --cache-dir ${c.dir}/cache docker-archive:${img.archive} file:${c.dir}/store#bench/app:1`,
    after: (c) => layerBytes(`${c.dir}/store`, 'bench/app', '1'),
    engine: ENGINE.gzipFast,
  });
  pairs.push([s1f, k1]);
  sizePairs.push([s1f, k1]);
}

// Overlap with the producer: docker-archive:- on stdin from a producer paced like `docker save`.
// Hidden share = (T_producer + T_push_alone - T_pipeline) / T_push_alone, clamped to [0, 1].
const paceRate = 150;
const pace = `node ${path.join(repo, 'bench', 'pace.mjs')} ${img.archive} ${paceRate}`;
const prod = await bench(`producer: image.tar paced at ${paceRate} MB/s → /dev/null`, { command: `${pace} > /dev/null` });
const s1p = await bench(`smart push docker-archive:- from the ${paceRate} MB/s producer → file: (cold)`, {
  setup: freshStore,
  command: (c) => `${pace} | ${smartBin} push -q --cache-dir ${c.dir}/cache docker-archive:- file:${c.dir}/store#bench/app:1`,
  engine: ENGINE.gzip,
});
const hidden = (alone, pipe) => Math.min(1, Math.max(0, (prod.wall + alone.wall - pipe.wall) / alone.wall));
overlap.push({ tool: 'smart', producer: prod.wall, alone: s1.wall, pipeline: s1p.wall, hidden: hidden(s1, s1p) });
pairs.push([s1p, s1]);
// skopeo reads a docker-archive from a path it can seek in; try /dev/stdin anyway, and keep the
// answer if it ever works.
{
  const r = await freshRegistry();
  let error;
  try {
    await measure(`${pace} | skopeo --insecure-policy copy -q --dest-tls-verify=false docker-archive:/dev/stdin docker://${r.host}/bench/app:1`);
  } catch (e) {
    error = (e.message.match(/level=fatal msg="([^"]*)"/)?.[1] ?? e.message.split('\n').slice(-2).join(' ')).trim();
  } finally {
    await r.teardown();
  }
  if (error) overlap.push({ tool: 'skopeo', producer: prod.wall, alone: k1.wall, pipeline: prod.wall + k1.wall, hidden: 0, note: `docker-archive:/dev/stdin fails (${error}): the tar must be saved to a file first, so nothing overlaps` });
  else {
    const k1p = await bench(`skopeo copy docker-archive:/dev/stdin from the ${paceRate} MB/s producer → registry (cold)`, {
      setup: freshRegistry,
      command: (c) => `${pace} | skopeo --insecure-policy copy -q --dest-tls-verify=false docker-archive:/dev/stdin docker://${c.host}/bench/app:1`,
    });
    overlap.push({ tool: 'skopeo', producer: prod.wall, alone: k1.wall, pipeline: k1p.wall, hidden: hidden(k1, k1p) });
    pairs.push([s1p, k1p]);
  }
}

// 2. cold push from an OCI layout: nothing to compress.
const s2 = await bench('smart push oci → file: (cold)', {
  engine: ENGINE.none,
  setup: freshStore,
  command: (c) => `${smartBin} push -q --cache-dir ${c.dir}/cache oci:${img.layout}:latest file:${c.dir}/store#bench/app:1`,
});
const k2 = await bench('skopeo copy oci → registry (cold)', {
  setup: freshRegistry,
  command: (c) => `skopeo --insecure-policy copy -q --dest-tls-verify=false oci:${img.layout}:latest docker://${c.host}/bench/app:1`,
});
pairs.push([s2, k2]);
// An OCI archive on a pipe (BuildKit's --output type=oci,dest=-): its blobs stored as they pass.
// skopeo reads one from a file only, unpacked into a temporary directory first.
const s2a = await bench('smart push oci-archive:- (stdin) → file: (cold)', {
  engine: ENGINE.none,
  setup: freshStore,
  command: (c) => `cat ${img.ociArchive} | ${smartBin} push -q --cache-dir ${c.dir}/cache oci-archive:- file:${c.dir}/store#bench/app:1`,
});
const k2a = await bench('skopeo copy oci-archive → registry (cold)', {
  setup: freshRegistry,
  command: (c) => `skopeo --insecure-policy copy -q --dest-tls-verify=false oci-archive:${img.ociArchive}:latest docker://${c.host}/bench/app:1`,
});
pairs.push([s2a, k2a]);

// 3. warm push (everything present) and 4. pulls, against one store and one registry.
let k3b;
let k4;
const store = fs.mkdtempSync(path.join(out, 'store-'));
const cacheDir = path.join(store, 'cache');
execFileSync('node', [smartBin, 'push', '-q', '--cache-dir', cacheDir, `docker-archive:${img.archive}`, `file:${store}/data#bench/app:1`]);
rm(skopeoCache);
const reg = await startRegistry(path.join(store, 'registry'));
execFileSync('skopeo', ['--insecure-policy', 'copy', '-q', '--dest-tls-verify=false', `docker-archive:${img.archive}`, `docker://${reg.host}/bench/app:1`]);
try {
  const s3 = await bench('smart push docker-archive → file: (warm)', {
    engine: 'nothing to compress (every layer present)',
    command: `${smartBin} push -q --cache-dir ${cacheDir} docker-archive:${img.archive} file:${store}/data#bench/app:1`,
  });
  const k3 = await bench('skopeo copy docker-archive → registry (warm)', {
    command: `skopeo --insecure-policy copy -q --dest-tls-verify=false docker-archive:${img.archive} docker://${reg.host}/bench/app:1`,
  });
  // What CI runs (`docker save | smart push`): the layers are named by their digests in the stream,
  // found in the store, and only hashed as they pass.
  const s3s = await bench('smart push docker-archive:- (stdin) → file: (warm)', {
    engine: 'nothing to compress (every layer present: hashed as it streams)',
    command: `cat ${img.archive} | ${smartBin} push -q --cache-dir ${cacheDir} docker-archive:- file:${store}/data#bench/app:1`,
  });
  pairs.push([s3, k3], [s3s, k3]);
  const s3b = await bench('smart push oci → file: (warm)', { engine: ENGINE.none, command: `${smartBin} push -q oci:${img.layout}:latest file:${store}/data#bench/app:1` });
  k3b = await bench('skopeo copy oci → registry (warm)', {
    command: `skopeo --insecure-policy copy -q --dest-tls-verify=false oci:${img.layout}:latest docker://${reg.host}/bench/app:1`,
  });
  pairs.push([s3b, k3b]);

  const target = (c) => c.dir;
  const s4 = await bench('smart pull file: → oci', {
    engine: ENGINE.none,
    setup: freshStore,
    command: (c) => `${smartBin} pull -q file:${store}/data#bench/app:1 oci:${target(c)}/oci:x`,
  });
  k4 = await bench('skopeo copy registry → oci', {
    setup: freshStore,
    command: (c) => `skopeo --insecure-policy copy -q --src-tls-verify=false docker://${reg.host}/bench/app:1 oci:${target(c)}/oci:x`,
  });
  pairs.push([s4, k4]);
  const s4b = await bench('smart pull file: → docker-archive', {
    engine: ENGINE.gunzip,
    setup: freshStore,
    command: (c) => `${smartBin} pull -q file:${store}/data#bench/app:1 docker-archive:${target(c)}/img.tar`,
  });
  const k4b = await bench('skopeo copy registry → docker-archive', {
    setup: freshStore,
    command: (c) => `skopeo --insecure-policy copy -q --src-tls-verify=false docker://${reg.host}/bench/app:1 docker-archive:${target(c)}/img.tar`,
  });
  pairs.push([s4b, k4b]);
  // An OCI archive, written in one pass: to a file, and to a pipe (stdout).
  const s4c = await bench('smart pull file: → oci-archive', {
    engine: ENGINE.none,
    setup: freshStore,
    command: (c) => `${smartBin} pull -q file:${store}/data#bench/app:1 oci-archive:${target(c)}/img.tar:x`,
  });
  const s4d = await bench('smart pull file: → oci-archive:- (stdout)', {
    engine: ENGINE.none,
    setup: freshStore,
    command: () => `${smartBin} pull -q file:${store}/data#bench/app:1 oci-archive:- | cat > /dev/null`,
  });
  const k4c = await bench('skopeo copy registry → oci-archive', {
    setup: freshStore,
    command: (c) => `skopeo --insecure-policy copy -q --src-tls-verify=false docker://${reg.host}/bench/app:1 oci-archive:${target(c)}/img.tar:x`,
  });
  pairs.push([s4c, k4c], [s4d, k4c]);

  // 5. root filesystems on tmpfs (the code's own cost) and on disk (the disk's limit).
  for (const [where, base] of [['tmpfs', shm], ['disk', out]]) {
    const fresh = async () => {
      const dir = fs.mkdtempSync(path.join(base, 'smart-bench-'));
      return { dir, teardown: () => rm(dir) };
    };
    // Warm: every layer already in the layer store; the tree is built from it.
    const warmCache = fs.mkdtempSync(path.join(base, 'smart-bench-cache-'));
    execFileSync('node', [smartBin, 'pull', '-q', '--keep-layers', '--cache-dir', warmCache, `file:${store}/data#bench/app:1`, `rootfs:${warmCache}/first`]);
    // In turns (see benchTogether): on disk, the rows run last would otherwise read the wear the
    // rows before them left (measured, one row after another: `file:` → disk 0.6 s run first,
    // `docker://` → disk 2.1 s run sixth; by hand afterwards, both 1.7-2.0 s).
    const [s5, s5k, s5w, k5, t5, s5r, s5n] = await benchTogether([
      [`smart pull file: → rootfs (${where}, cold)`, {
        engine: ENGINE.gunzip,
        setup: fresh,
        command: (c) => `${smartBin} pull -q --cache-dir ${c.dir}/cache file:${store}/data#bench/app:1 rootfs:${c.dir}/rootfs`,
      }],
      // Cold, keeping the layers in the layer store as they are written (a bundle's default).
      [`smart pull --keep-layers file: → rootfs (${where}, cold)`, {
        engine: ENGINE.gunzip,
        setup: fresh,
        command: (c) => `${smartBin} pull -q --keep-layers --cache-dir ${c.dir}/cache file:${store}/data#bench/app:1 rootfs:${c.dir}/rootfs`,
      }],
      [`smart pull file: → rootfs (${where}, warm)`, {
        engine: 'nothing to decompress (layer store)',
        setup: fresh,
        command: (c) => `${smartBin} pull -q --cache-dir ${warmCache} file:${store}/data#bench/app:1 rootfs:${c.dir}/rootfs`,
      }],
      [`skopeo → oci + umoci unpack (${where})`, {
        setup: fresh,
        command: (c) =>
          `skopeo --insecure-policy copy -q --src-tls-verify=false docker://${reg.host}/bench/app:1 oci:${c.dir}/oci:x && umoci unpack --image ${c.dir}/oci:x ${c.dir}/bundle >/dev/null`,
      }],
      [`limit: tar -x of the uncompressed layers (${where})`, {
        setup: fresh,
        command: (c) => `mkdir ${c.dir}/r && for l in ${img.layerNames.map((n) => path.join(img.archiveDir, n)).join(' ')}; do tar -C ${c.dir}/r -xf $l; done`,
      }],
      // From the registry skopeo read: a rootfs keeps the compressed blobs it fetched, and the next
      // pull of the image reads them, fetching none.
      [`smart pull docker:// → rootfs (${where}, cold)`, {
        engine: ENGINE.gunzip,
        setup: fresh,
        command: (c) => `${smartBin} pull -q --cache-dir ${c.dir}/cache docker://${reg.host}/bench/app:1 rootfs:${c.dir}/rootfs`,
      }],
      [`smart pull docker:// → rootfs (${where}, the next pull: its blobs kept)`, {
        engine: ENGINE.gunzip,
        setup: async () => {
          const c = await fresh();
          execFileSync('node', [smartBin, 'pull', '-q', '--cache-dir', `${c.dir}/cache`, `docker://${reg.host}/bench/app:1`, `rootfs:${c.dir}/first`]);
          return c;
        },
        command: (c) => `${smartBin} pull -q --cache-dir ${c.dir}/cache docker://${reg.host}/bench/app:1 rootfs:${c.dir}/rootfs`,
      }],
    ]);
    rm(warmCache);
    pairs.push([s5k, s5], [s5w, s5], [s5, k5], [s5, t5]);
    pairs.push([s5r, k5], [s5n, s5r]);
  }

  // 5b. One layer of many small files (a node_modules) into tmpfs: the cost per file, beside umoci
  // and tar. From the local layout, so no transfer is in it.
  const many = makeSmallFilesImage();
  process.stderr.write(`many small files: ${many.files} files, ${many.dirs} directories, ${(many.bytes / 1e6).toFixed(1)} MB tar\n`);
  const freshShm = async () => {
    const dir = fs.mkdtempSync(path.join(shm, 'smart-bench-'));
    return { dir, teardown: () => rm(dir) };
  };
  const s5s = await bench(`smart pull oci: → rootfs, one layer of ${many.files} small files (tmpfs, cold)`, {
    engine: ENGINE.gunzip,
    setup: freshShm,
    command: (c) => `${smartBin} pull -q --cache-dir ${c.dir}/cache oci:${many.layout}:latest rootfs:${c.dir}/rootfs`,
  });
  const k5s = await bench(`umoci unpack, the same layer (tmpfs)`, {
    setup: freshShm,
    command: (c) => `umoci unpack --image ${many.layout}:latest ${c.dir}/bundle >/dev/null`,
  });
  const t5s = await bench(`limit: tar -x of the same layer uncompressed (tmpfs)`, {
    setup: freshShm,
    command: (c) => `mkdir ${c.dir}/r && tar -C ${c.dir}/r -xf ${many.layer}`,
  });
  pairs.push([s5s, k5s], [s5s, t5s]);
  // The same layer into a bundle, which keeps its layers (each small file's copy and index line
  // made with it), beside the rootfs pull; then a pull of it from the layer store (warm).
  const s5b = await bench(`smart pull oci: → bundle (keeps the layer), the same layer (tmpfs, cold)`, {
    engine: ENGINE.gunzip,
    setup: freshShm,
    command: (c) => `${smartBin} pull -q --cache-dir ${c.dir}/cache oci:${many.layout}:latest bundle:${c.dir}/bundle`,
  });
  const manyCache = fs.mkdtempSync(path.join(shm, 'smart-bench-cache-'));
  execFileSync('node', [smartBin, 'pull', '-q', '--cache-dir', manyCache, `oci:${many.layout}:latest`, `bundle:${manyCache}/first`]);
  const s5sw = await bench(`smart pull oci: → rootfs, the same layer from the layer store (tmpfs, warm)`, {
    engine: 'nothing to decompress (layer store)',
    setup: freshShm,
    command: (c) => `${smartBin} pull -q --cache-dir ${manyCache} oci:${many.layout}:latest rootfs:${c.dir}/rootfs`,
  });
  rm(manyCache);
  pairs.push([s5b, s5s], [s5sw, s5s]);
  rm(many.layout);
  rm(many.layer);
} finally {
  await reg.stop();
  rm(store);
}

// 6. Through the registry API, and straight into S3 (s3rver on loopback), beside skopeo.
const s6a = await bench('smart push docker-archive → docker:// (cold)', {
  engine: ENGINE.gzip,
  setup: async (i) => {
    const r = await freshRegistry();
    const dir = fs.mkdtempSync(path.join(out, 'cache-'));
    return { ...r, cache: dir, teardown: async () => { await r.teardown(); rm(dir); } };
  },
  command: (c) => `${smartBin} push -q --cache-dir ${c.cache} docker-archive:${img.archive} docker://${c.host}/bench/app:1`,
  after: (c) => layerBytes(c.dir, 'bench/app', '1'),
});
// `docker save | smart push docker://…`, CI's own step: the layers come one after another, each
// one's end at the registry (the PUT that checks and moves the blob) beside the next one's read.
const s6s = await bench('smart push docker-archive:- (stdin) → docker:// (cold)', {
  engine: ENGINE.gzip,
  setup: async () => {
    const r = await freshRegistry();
    const dir = fs.mkdtempSync(path.join(out, 'cache-'));
    return { ...r, cache: dir, teardown: async () => { await r.teardown(); rm(dir); } };
  },
  command: (c) => `cat ${img.archive} | ${smartBin} push -q --cache-dir ${c.cache} docker-archive:- docker://${c.host}/bench/app:1`,
});
// Straight into file: storage beside the same push through the API; from stdin beside from the file.
pairs.push([s6a, k1], [s1, s6a], [s6s, k1], [s6s, s6a]);
sizePairs.push([s6a, k1]);
// A second repository in the same registry: every layer is there already under bench/app, so a
// push to bench/other should mount them across repositories (each tool after its own first push,
// with its own cache of what it pushed where).
const s6m = await bench('smart push docker-archive → docker:// second repo (cross-repo mount)', {
  engine: 'nothing to compress (mounted)',
  setup: async () => {
    const r = await freshRegistry();
    const cache = fs.mkdtempSync(path.join(out, 'cache-'));
    execFileSync('node', [smartBin, 'push', '-q', '--cache-dir', cache, `docker-archive:${img.archive}`, `docker://${r.host}/bench/app:1`]);
    return { ...r, cache, teardown: async () => { await r.teardown(); rm(cache); } };
  },
  command: (c) => `${smartBin} push -q --cache-dir ${c.cache} docker-archive:${img.archive} docker://${c.host}/bench/other:1`,
  after: (c) => layerBytes(c.dir, 'bench/other', '1'),
});
const k6m = await bench('skopeo copy docker-archive → registry second repo (cross-repo mount)', {
  setup: async () => {
    const r = await freshRegistry();
    execFileSync('skopeo', ['--insecure-policy', 'copy', '-q', '--dest-tls-verify=false', `docker-archive:${img.archive}`, `docker://${r.host}/bench/app:1`]);
    return r;
  },
  command: (c) => `skopeo --insecure-policy copy -q --dest-tls-verify=false docker-archive:${img.archive} docker://${c.host}/bench/other:1`,
  after: (c) => layerBytes(c.dir, 'bench/other', '1'),
});
pairs.push([s6m, k6m]);
const s6b = await bench('smart push oci → docker:// (cold)', {
  engine: ENGINE.none,
  setup: freshRegistry,
  command: (c) => `${smartBin} push -q --cache-dir ${c.dir}/cache oci:${img.layout}:latest docker://${c.host}/bench/app:1`,
});
pairs.push([s6b, k2]);
{
  const regDir = fs.mkdtempSync(path.join(out, 'reg-api-'));
  const api = await startRegistry(regDir);
  execFileSync('skopeo', ['--insecure-policy', 'copy', '-q', '--dest-tls-verify=false', `oci:${img.layout}:latest`, `docker://${api.host}/bench/app:1`]);
  try {
    const s6c = await bench('smart push oci → docker:// (warm)', { engine: ENGINE.none, command: `${smartBin} push -q oci:${img.layout}:latest docker://${api.host}/bench/app:1` });
    const k6c = await bench('skopeo copy oci → registry (warm, again)', {
      command: `skopeo --insecure-policy copy -q --dest-tls-verify=false oci:${img.layout}:latest docker://${api.host}/bench/app:1`,
    });
    pairs.push([s6c, k6c]);
    // Cold: a cache of its own each run (a pull keeps the blobs it fetches, and the next reads them).
    const s6d = await bench('smart pull docker:// → oci', {
      engine: ENGINE.none,
      setup: freshStore,
      command: (c) => `${smartBin} pull -q --cache-dir ${c.dir}/cache docker://${api.host}/bench/app:1 oci:${c.dir}/oci:x`,
    });
    const s6n = await bench('smart pull docker:// → oci (the next pull, into another layout: its blobs kept)', {
      engine: ENGINE.none,
      setup: async () => {
        const c = await freshStore();
        execFileSync('node', [smartBin, 'pull', '-q', '--cache-dir', `${c.dir}/cache`, `docker://${api.host}/bench/app:1`, `oci:${c.dir}/first:x`]);
        return c;
      },
      command: (c) => `${smartBin} pull -q --cache-dir ${c.dir}/cache docker://${api.host}/bench/app:1 oci:${c.dir}/oci:x`,
    });
    const k6d = await bench('skopeo copy registry → oci (same registry)', {
      setup: freshStore,
      command: (c) => `skopeo --insecure-policy copy -q --src-tls-verify=false docker://${api.host}/bench/app:1 oci:${c.dir}/oci:x`,
    });
    pairs.push([s6d, k6d], [s6n, s6d]);
  } finally {
    await api.stop();
    rm(regDir);
  }
}
{
  const s3Dir = fs.mkdtempSync(path.join(out, 's3-'));
  const port = await freePort();
  const s3 = spawn(process.execPath, ['--openssl-legacy-provider', path.join(repo, 'test/harness/s3rver-main.mjs'), String(port), s3Dir, 'bench'], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  await new Promise((resolve) => s3.stdout.once('data', resolve));
  const env = { AWS_ENDPOINT_URL_S3: `http://127.0.0.1:${port}`, AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER', AWS_REGION: 'us-east-1', AWS_PROFILE: '' };
  try {
    let n = 0;
    const s6e = await bench('smart push docker-archive → s3:// (cold)', {
      engine: ENGINE.gzip,
      env,
      setup: async () => {
        const dir = fs.mkdtempSync(path.join(out, 'cache-'));
        return { dir, root: `run${n++}`, teardown: () => rm(dir) };
      },
      command: (c) => `${smartBin} push -q --cache-dir ${c.dir} docker-archive:${img.archive} s3://bench/${c.root}#bench/app:1`,
    });
    let ociRoot;
    const s6f = await bench('smart push oci → s3:// (cold)', {
      engine: ENGINE.none,
      env,
      setup: async () => ({ root: (ociRoot = `oci${n++}`) }),
      command: (c) => `${smartBin} push -q oci:${img.layout}:latest s3://bench/${c.root}#bench/app:1`,
    });
    // The limit of both: the same compressed blobs (the layout's) uploaded by the AWS SDK alone, as
    // smart's S3 writer sends them (lib-storage Upload, same part size, parts and objects in flight).
    const l6 = await bench('limit: AWS SDK Upload of the same blobs → s3:// (s3rver)', {
      env,
      setup: async () => ({ root: `sdk${n++}` }),
      command: (c) => `node ${path.join(repo, 'bench', 's3-limit.mjs')} bench ${c.root} ${path.join(img.layout, 'blobs', 'sha256')}/* 2>/dev/null`,
    });
    pairs.push([s6e, k1], [s6e, l6], [s6f, k2], [s6f, l6]);
    // Into a root the cold row pushed to (every run of it): warm from the first run on.
    const s6g = await bench('smart push oci → s3:// (warm)', { engine: ENGINE.none, env, command: `${smartBin} push -q oci:${img.layout}:latest s3://bench/${ociRoot}#bench/app:1` });
    pairs.push([s6g, k3b]);
    const s6h = await bench('smart pull s3:// → oci', {
      engine: ENGINE.none,
      env,
      setup: freshStore,
      command: (c) => `${smartBin} pull -q --cache-dir ${c.dir}/cache s3://bench/${ociRoot}#bench/app:1 oci:${c.dir}/oci:x`,
    });
    pairs.push([s6h, k4]);
  } finally {
    s3.kill('SIGTERM');
    rm(s3Dir);
  }
}

// 7. Memory with a 1 GB layer: pushed as it is (gzip) into a store, then pulled into a root filesystem.
// The layer is one sparse file, 222x smaller compressed: a pull refuses it as a decompression bomb
// unless told otherwise, so the pull row lifts the bound.
if (!smoke) {
  const bigDir = fs.mkdtempSync(path.join(out, 'big-'));
  execFileSync('sh', ['-c', `cd ${bigDir} && truncate -s 1G big.bin && tar -cf - big.bin | pigz -1 -p${os.availableParallelism()} > layer.gz && sha256sum big.bin > /dev/null`]);
  const tarSha = execFileSync('sh', ['-c', `cd ${bigDir} && tar -cf - big.bin | sha256sum | cut -d' ' -f1`], { encoding: 'utf8' }).trim();
  const gz = fs.readFileSync(path.join(bigDir, 'layer.gz'));
  const cfg = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [`sha256:${tarSha}`] } }));
  const hash = (b) => createHash('sha256').update(b).digest('hex');
  const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${hash(cfg)}`, size: cfg.length }, layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: `sha256:${hash(gz)}`, size: gz.length }] }));
  const layout = path.join(bigDir, 'oci');
  fs.mkdirSync(path.join(layout, 'blobs', 'sha256'), { recursive: true });
  for (const b of [gz, cfg, manifest]) fs.writeFileSync(path.join(layout, 'blobs', 'sha256', hash(b)), b);
  fs.writeFileSync(path.join(layout, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  fs.writeFileSync(path.join(layout, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: `sha256:${hash(manifest)}`, size: manifest.length, annotations: { 'org.opencontainers.image.ref.name': 'big' } }] }));
  const m1 = await bench('smart push of a 1 GB layer → file: (memory)', { engine: ENGINE.none, setup: freshStore, command: (c) => `${smartBin} push -q oci:${layout}:big file:${c.dir}/store#big/app:1` });
  const m2 = await bench('smart pull of a 1 GB layer → rootfs (memory)', { engine: ENGINE.gunzip, setup: freshStore, command: (c) => `SMART_MAX_DECOMPRESSION_RATIO=0 ${smartBin} pull -q --cache-dir ${c.dir}/cache oci:${layout}:big rootfs:${c.dir}/rootfs` });
  results.push(m1, m2);
  memoryRows.push(m1, m2);
  rm(bigDir);
}
// ... and a 1 GB layer that must be compressed: a docker-save tar of one ~1 GB file.
if (!smoke) {
  const bigDir = fs.mkdtempSync(path.join(out, 'big-'));
  const big = writeCompressibleArchive(path.join(bigDir, 'image.tar'), 2 ** 30, img.layerNames.slice(0, 2).map((n) => path.join(img.archiveDir, n)));
  const cases = [
    ['smart push of a 1 GB layer to compress (gzip) docker-archive → file: (memory)', ''],
    ['smart push of a 1 GB layer to compress (zstd) docker-archive → file: (memory)', '--compression zstd '],
  ];
  for (const [name, flags] of cases) {
    const m = await bench(name, {
      engine: flags ? ENGINE.zstd : ENGINE.gzip,
      setup: freshStore,
      command: (c) => `${smartBin} push -q ${flags}--cache-dir ${c.dir}/cache docker-archive:${big.archive} file:${c.dir}/store#big/app:1`,
      after: (c) => layerBytes(`${c.dir}/store`, 'big/app', '1'),
    });
    m.input = big.layerBytes;
    results.push(m);
    memoryRows.push(m);
  }
  rm(bigDir);
}

// ... and many small layers: what a pull holds per layer (it held a 2 MiB output region and ~100 KiB
// of decoder per layer until a GC: 400 layers of 43 KiB in all peaked at 355 MB with --keep-layers).
if (!smoke) {
  const manyDir = fs.mkdtempSync(path.join(out, 'many-'));
  const layout = path.join(manyDir, 'oci');
  const hash = (b) => createHash('sha256').update(b).digest('hex');
  fs.mkdirSync(path.join(layout, 'blobs', 'sha256'), { recursive: true });
  const put = (b) => (fs.writeFileSync(path.join(layout, 'blobs', 'sha256', hash(b)), b), `sha256:${hash(b)}`);
  const layers = [];
  const diffIds = [];
  for (let i = 0; i < 200; i++) {
    const dir = path.join(manyDir, `l${i}`);
    fs.mkdirSync(path.join(dir, `d${i}`), { recursive: true });
    fs.writeFileSync(path.join(dir, `d${i}`, 'f'), `layer ${i}\n`.repeat(100 + i));
    const t = execFileSync('tar', ['-C', dir, '--sort=name', '--mtime=@1704067200', '--owner=0', '--group=0', '--numeric-owner', '-cf', '-', `d${i}`]);
    const gz = gzipSync(t);
    diffIds.push(`sha256:${hash(t)}`);
    layers.push({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: put(gz), size: gz.length });
  }
  const cfg = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: diffIds } }));
  const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: put(cfg), size: cfg.length }, layers }));
  const top = put(manifest);
  fs.writeFileSync(path.join(layout, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  fs.writeFileSync(path.join(layout, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: top, size: manifest.length, annotations: { 'org.opencontainers.image.ref.name': 'many' } }] }));
  const m = await bench('smart pull of 200 small layers → rootfs, --keep-layers (memory)', {
    engine: ENGINE.gunzip,
    setup: freshStore,
    command: (c) => `${smartBin} pull -q --keep-layers --cache-dir ${c.dir}/cache oci:${layout}:many rootfs:${c.dir}/rootfs`,
  });
  results.push(m);
  memoryRows.push(m);
  rm(manyDir);
}

// 8. compression limits on the same bytes.
const all = img.layerNames.map((n) => path.join(img.archiveDir, n)).join(' ');
// Their output goes to a file (page cache) so its size is the limit's output size too.
const limitOut = path.join(out, 'limit.out');
const limitBytes = () => fs.statSync(limitOut).size;
const p6 = await bench(`limit: cat layers | pigz -6 -p${os.availableParallelism()}`, {
  command: `cat ${all} | pigz -6 -p${os.availableParallelism()} > ${limitOut}`,
  after: limitBytes,
});
const z6 = await bench('limit: cat layers | zstd -3 -T0', { command: `cat ${all} | zstd -3 -T0 -q > ${limitOut}`, after: limitBytes });
rm(limitOut);
pairs.push([s1, p6], [s1z, z6]);
sizePairs.push([s1, p6], [s1z, z6]);
results.push(...new Set([...pairs.flat(), prod]));

// ---------------------------------------------------------------------------------------------
const mb = (n) => (n / 1e6).toFixed(1);
const lines = [
  `image: ${mb(img.sizes.tar)} MB docker-save tar (libs ${mb(img.sizes.libs)} MB, docs ${mb(img.sizes.docs)} MB, ${img.sizes.smallFiles} small files ${mb(img.sizes.small)} MB, patch); ${os.availableParallelism()} cores; median of ${runs} (of ${runs > 1 ? Math.max(runs, QUICK_RUNS) : runs} for a case under ${QUICK_S} s)${smoke ? ' (--smoke: a small image, nothing to quote)' : ''}`,
  `start-up, the floor of every row (median of 11): node -e 0 ${startup.node.toFixed(3)} s (Node ${process.versions.node}), skopeo -v ${startup.skopeo.toFixed(3)} s`,
  `native addon: ${engines.native.loaded ? `loaded (libdeflate ${engines.native.libdeflate ?? 'absent'}, zstd ${engines.native.zstd ?? 'absent'}, isa-l ${engines.native.isal ?? 'absent'})` : engines.native.reason}; README path without it (SMART_NATIVE=0): ${ENGINE.gzipReadme}`,
  `malloc: ${engines.malloc?.hugePages ? 'on transparent huge pages' : 'on 4 KiB pages'} (${engines.malloc?.why ?? 'not reported'})`,
  '',
  '| case | engine | wall s | CPU s | peak RSS MB | vs | ratio (their wall / ours) |',
  '|---|---|---|---|---|---|---|',
];
const seen = new Set();
for (const [ours, theirs] of pairs) {
  const row = `| ${ours.name} | ${ours.engine ?? '-'} | ${seconds(ours.wall)} | ${ours.cpu.toFixed(2)} | ${ours.rss.toFixed(0)} | ${theirs.name} (${seconds(theirs.wall)} s, ${theirs.rss.toFixed(0)} MB) | ${(theirs.wall / ours.wall).toFixed(2)}x |`;
  if (!seen.has(row)) lines.push(row);
  seen.add(row);
}
for (const m of memoryRows) {
  const shrink = m.input ? `; ${mb(m.input)} MB layer → ${mb(m.bytes)} MB` : '';
  lines.push(`| ${m.name} | ${m.engine ?? '-'} | ${m.wall.toFixed(2)} | ${m.cpu.toFixed(2)} | ${m.rss.toFixed(0)} | target: peak RSS < 150 MB${shrink} | ${m.rss < 150 ? `${(150 / m.rss).toFixed(2)}x under` : `OVER by ${(m.rss - 150).toFixed(0)} MB`} |`);
}
const sizes = sizePairs.map(([ours, theirs]) => ({ ours: ours.name, theirs: theirs.name, oursBytes: ours.bytes, theirsBytes: theirs.bytes, ratio: ours.bytes / theirs.bytes }));
const extra = [
  '',
  `output size: the compressed layers written (manifest layer sizes in the destination); target: gzip within 3% of skopeo`,
  '',
  '| push | ours MB | vs | theirs MB | ratio (ours / theirs) |',
  '|---|---|---|---|---|',
  ...sizes.map((z) => `| ${z.ours} | ${mb(z.oursBytes)} | ${z.theirs} | ${mb(z.theirsBytes)} | ${z.ratio.toFixed(3)} |`),
  '',
  `overlap with the producer: docker-archive:- on stdin from a ${paceRate} MB/s paced producer; hidden = (T_producer + T_push_alone - T_pipeline) / T_push_alone`,
  '',
  '| tool | T_producer s | T_push_alone s | T_pipeline s | hidden |',
  '|---|---|---|---|---|',
  ...overlap.map((o) => `| ${o.tool} | ${o.producer.toFixed(2)} | ${o.alone.toFixed(2)} | ${o.pipeline.toFixed(2)}${o.note ? ' (producer + push, sequential)' : ''} | ${(o.hidden * 100).toFixed(0)}%${o.note ? ' (see below)' : ''} |`),
  ...overlap.filter((o) => o.note).map((o) => `\n${o.tool}: ${o.note}`),
];
console.log(lines.join('\n'));
if (!smoke) fs.writeFileSync(path.join(repo, 'bench', 'results.json'), JSON.stringify({ date: new Date().toISOString(), runs, image: img.sizes, startup, engines: { default: engines, readmePath: readmeEngines }, results, sizes, overlap }, null, 2));
process.stderr.write(`bench: done in ${((Date.now() - started) / 1000).toFixed(0)} s${smoke ? '' : '; results in bench/results.json'}\n`);
if (!keep) rm(out);
rm(process.env.XDG_CACHE_HOME);

// The layer trie at scale (10,000 and 100,000 images × 10 layers), against a real Redis.
if (!smoke) {
  try {
    execFileSync('sh', ['-c', 'command -v redis-server'], { stdio: 'ignore' });
    for (const images of [10_000, 100_000]) {
      console.log(execFileSync(process.execPath, [path.join(repo, 'bench', 'trie.mjs'), '--images', String(images)], { encoding: 'utf8' }).trim());
    }
  } catch (e) {
    console.error(`bench: trie skipped (${e.message.split('\n')[0]})`);
  }
}
console.log(extra.join('\n'));
