#!/usr/bin/env node
/**
 * Compression engines side by side, in one run, on the shared-library layer of bench/run.mjs
 * (~150 MB of .so files from this machine as one tar, in page cache): MB/s of uncompressed input
 * and output size for Node's zlib (one stream), the parallel gzip of src/pipeline/parallel-gzip.ts
 * with each engine present, pigz, and skopeo (`skopeo copy docker-archive: oci:` of a one-layer
 * image made by hand) as the reference. The DEFAULT_* constants of parallel-gzip.ts quote it.
 * Not a test: nothing here passes or fails, except a wrong round trip.
 *
 *   node bench/compression.mjs [--runs N] [--keep] [--json FILE] [--no-build]
 *
 * It builds dist/ first (tsc), unless --no-build, and imports the repository's dist/ (which finds
 * node_modules/ and the native addon in native/build/).
 * Each case runs N times (default 3), rounds interleaved; the table gives the median, range and
 * best MB/s and the CPU seconds (children included). Other work on a shared machine only ever
 * slows a run down, so the best of N is the fairer figure there; the choice of defaults uses it.
 * Rows marked "+hash" include the sha256 of the input (diff id) and of the output (blob digest),
 * as a push does; skopeo's time includes reading the archive and writing the blob to disk.
 */
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { LIBRARY_ROOTS, isLibrary, pickFiles } from './pick-files.mjs';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const arg = (name) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
};
const runs = Number(arg('--runs')) || 3;
const keep = process.argv.includes('--keep');
const jsonOut = arg('--json');
const work = path.join(os.tmpdir(), 'smartlayer-bench-compression');
fs.mkdirSync(work, { recursive: true });

const onPath = (name) => {
  try {
    execFileSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
};

// ---------------------------------------------------------------------------------------------
// The code under test

// The repository's own build (dist/ resolves its packages from node_modules/ and the native addon
// from native/build/), rebuilt first unless --no-build.
const distDir = path.join(repo, 'dist');
if (!process.argv.includes('--no-build')) {
  process.stderr.write('building dist/\n');
  execFileSync(path.join(repo, 'node_modules', '.bin', 'tsc'), ['-p', path.join(repo, 'tsconfig.build.json')], { stdio: 'inherit' });
}
const pg = await import(pathToFileURL(path.join(distDir, 'pipeline', 'parallel-gzip.js')).href);
const { decompress } = await import(pathToFileURL(path.join(distDir, 'pipeline', 'compression.js')).href);
const { DigestStream } = await import(pathToFileURL(path.join(distDir, 'pipeline', 'digest-stream.js')).href);
const zlib = await import('node:zlib');
/** Node's zlib as one gzip stream (the reference a single-threaded push would be), hashed on both sides like a push. */
function gzipLayerStream(src, level) {
  const diff = new DigestStream();
  const stream = src.pipe(diff).pipe(zlib.createGzip({ level }));
  diff.on('error', (e) => stream.destroy(e));
  return { stream, diffId: () => diff.digest };
}

// ---------------------------------------------------------------------------------------------
// The layer: the same selection as bench/run.mjs's first layer.

const layer = path.join(work, 'layer.tar');
{
  const { files } = pickFiles(LIBRARY_ROOTS, 150e6, Infinity, isLibrary);
  const list = path.join(work, 'layer.list');
  const listText = files.join('\n') + '\n';
  if (!fs.existsSync(layer) || !fs.existsSync(list) || fs.readFileSync(list, 'utf8') !== listText) {
    fs.writeFileSync(list, listText);
    execFileSync('tar', ['-C', '/', '--sort=name', '--mtime=@1704067200', '--owner=0', '--group=0', '--numeric-owner', '-cf', layer, '-T', list]);
  }
}
const layerBytes = fs.statSync(layer).size;
// Hashed as a stream (this also puts it in page cache): the layer is never held in memory, since
// a big heap makes every fork of a child-process engine slower, and a push holds no layer either.
const sha256File = async (file) => {
  const h = createHash('sha256');
  for await (const c of fs.createReadStream(file, { highWaterMark: 1024 * 1024 })) h.update(c);
  return h.digest('hex');
};
const layerDigest = await sha256File(layer);
const MB = 1e6;
process.stderr.write(`layer: ${(layerBytes / MB).toFixed(1)} MB tar of shared libraries, ${runs} runs per case\n`);

// ---------------------------------------------------------------------------------------------
// Cases. Each returns { bytes, digest?, window? } after compressing `layer` once.

/** Reads the layer file and compresses it with a stream made by `make(readable)`. */
async function throughStream(make) {
  const src = fs.createReadStream(layer, { highWaterMark: 1024 * 1024 });
  const made = make(src);
  const hash = createHash('sha256');
  let bytes = 0;
  const sink = new Writable({
    highWaterMark: 1024 * 1024,
    write(chunk, _e, cb) {
      hash.update(chunk);
      bytes += chunk.length;
      cb();
    },
  });
  await pipeline(made.stream, sink);
  if (made.diffId && made.diffId() !== `sha256:${layerDigest}`) throw new Error('diff id mismatch');
  return { bytes, digest: hash.digest('hex'), window: made.window?.() };
}

function programOutputSize(cmd, args) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    let bytes = 0;
    child.stdout.on('data', (d) => (bytes += d.length));
    child.once('error', reject);
    child.once('close', (code) => (code === 0 ? resolve({ bytes }) : reject(new Error(`${cmd} exited ${code}`))));
  });
}

// A docker-archive of the one layer for skopeo, made by hand.
const archive = path.join(work, 'image.tar');
function makeArchive() {
  const dir = path.join(work, 'archive');
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir);
  const layerName = `${layerDigest}.tar`;
  try {
    fs.linkSync(layer, path.join(dir, layerName));
  } catch {
    fs.copyFileSync(layer, path.join(dir, layerName));
  }
  const config = {
    architecture: 'amd64',
    os: 'linux',
    config: {},
    rootfs: { type: 'layers', diff_ids: [`sha256:${layerDigest}`] },
    history: [{ created_by: 'bench/compression.mjs' }],
  };
  const configText = JSON.stringify(config);
  const configName = `${createHash('sha256').update(configText).digest('hex')}.json`;
  fs.writeFileSync(path.join(dir, configName), configText);
  fs.writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify([{ Config: configName, RepoTags: ['bench:latest'], Layers: [layerName] }]));
  execFileSync('tar', ['-C', dir, '-cf', archive, 'manifest.json', configName, layerName]);
  fs.rmSync(dir, { recursive: true, force: true });
}

async function skopeoOnce() {
  const dest = path.join(work, 'oci');
  fs.rmSync(dest, { recursive: true, force: true });
  await new Promise((resolve, reject) => {
    const child = spawn('skopeo', ['copy', '-q', `docker-archive:${archive}`, `oci:${dest}:bench`], { stdio: ['ignore', 'inherit', 'inherit'] });
    child.once('error', reject);
    child.once('close', (code) => (code === 0 ? resolve() : reject(new Error(`skopeo exited ${code}`))));
  });
  const index = JSON.parse(fs.readFileSync(path.join(dest, 'index.json'), 'utf8'));
  const blob = (d) => path.join(dest, 'blobs', ...d.split(':'));
  const manifest = JSON.parse(fs.readFileSync(blob(index.manifests[0].digest), 'utf8'));
  const layerDesc = manifest.layers[0];
  return { bytes: layerDesc.size, mediaType: layerDesc.mediaType };
}

const engines = Object.fromEntries((await pg.availableGzipEngines()).map((e) => [e.name, e]));
// libdeflate is the in-process addon when it is built; its program form makes the same bytes.
const libdeflateProgram = await pg.findGzipEngine('libdeflate', 'program');
if (libdeflateProgram && engines.libdeflate?.program === null) engines['libdeflate-program'] = libdeflateProgram;
const cases = [];
const add = (group, name, fn, extra = {}) => cases.push({ group, name, fn, ...extra });

const parallel = (engineName, level, blockSize, concurrency) => () =>
  throughStream((src) => {
    const s = pg.gzipLayerStreamParallel(src, { engine: engines[engineName], level, blockSize, concurrency });
    const gz = s.stream;
    return { stream: gz, diffId: s.diffId, window: () => gz.stats?.maxHeldInput };
  });

const MiB = 1024 * 1024;
if (onPath('skopeo')) {
  makeArchive();
  add('main', 'skopeo copy docker-archive: → oci: (reference)', skopeoOnce, { reference: true });
}
add('main', 'Node zlib gzip level 6, one stream (+hash)', () => throughStream((src) => gzipLayerStream(src, 6)));
add('main', 'Node zlib gzip level 1, one stream (+hash)', () => throughStream((src) => gzipLayerStream(src, 1)));
const key = (engine, level, blockSize) => `${engine}-${level}-${blockSize ?? engines[engine].defaultBlockSize}`;
for (const level of [1, 3, 6]) add('main', `parallel zlib level ${level}, 1 MiB blocks (+hash)`, parallel('zlib', level, MiB), { engine: 'zlib', level, determinism: key('zlib', level, MiB) });
if (engines.igzip) for (const level of [1, 2, 3]) add('main', `parallel igzip level ${level}, ${pg.DEFAULT_PROCESS_BLOCK_SIZE / MiB} MiB members (+hash)`, parallel('igzip', level), { engine: 'igzip', level, determinism: key('igzip', level) });
if (engines.libdeflate)
  for (const level of [1, 4, 6])
    add('main', `parallel libdeflate (${engines.libdeflate.implementation}) level ${level}, ${pg.DEFAULT_PROCESS_BLOCK_SIZE / MiB} MiB members (+hash)`, parallel('libdeflate', level), { engine: 'libdeflate', level, determinism: key('libdeflate', level) });
if (engines['libdeflate-program'])
  add('main', `parallel libdeflate-gzip program level 1, ${pg.DEFAULT_PROCESS_BLOCK_SIZE / MiB} MiB members (+hash)`, parallel('libdeflate-program', 1), { determinism: key('libdeflate', 1) });
if (onPath('pigz')) add('main', 'pigz -6 -p 2 (file → counted pipe)', () => programOutputSize('pigz', ['-6', '-p', '2', '-c', layer]));

// Block size and window, for the settings that can be defaults.
const cores = os.availableParallelism();
const sweepEngines = ['libdeflate', 'igzip'].filter((e) => engines[e]);
for (const e of sweepEngines) {
  const level = 1;
  for (const bs of [1, 2, 4, 8]) add('blocks', `${e} level ${level}, ${bs} MiB blocks, concurrency ${cores + 1}`, parallel(e, level, bs * MiB, cores + 1), { determinism: key(e, level, bs * MiB) });
  for (const c of [1, cores, 2 * cores]) add('blocks', `${e} level ${level}, 4 MiB blocks, concurrency ${c}`, parallel(e, level, 4 * MiB, c), { determinism: key(e, level, 4 * MiB) });
}
for (const c of [1, cores, 2 * cores, 4 * cores]) add('blocks', `zlib level 3, 1 MiB blocks, concurrency ${c}`, parallel('zlib', 3, MiB, c), { determinism: key('zlib', 3, MiB) });
add('blocks', 'zlib level 3, 256 KiB blocks', parallel('zlib', 3, 256 * 1024), {});
add('blocks', 'zlib level 3, 4 MiB blocks', parallel('zlib', 3, 4 * MiB), {});

// Decompression: Node's zlib against igzip -d as a child process, on the parallel zlib level 3 output.
const gzFile = path.join(work, 'layer.tar.gz');
await pipeline(fs.createReadStream(layer), pg.parallelGzipStream({ engine: pg.zlibEngine, level: 3 }), fs.createWriteStream(gzFile));
const gunzipCase = (engine) => async () => {
  const hash = createHash('sha256');
  let bytes = 0;
  const out = decompress(fs.createReadStream(gzFile, { highWaterMark: 1024 * 1024 }), 'gzip', 'bench layer', { gunzip: engine });
  for await (const c of out) {
    hash.update(c);
    bytes += c.length;
  }
  if (hash.digest('hex') !== layerDigest) throw new Error('gunzip round trip failed');
  return { bytes: fs.statSync(gzFile).size };
};
add('gunzip', 'gunzip: Node zlib (+sha256 of output)', gunzipCase({ name: 'zlib', program: null }));
if (engines.igzip) add('gunzip', 'gunzip: igzip -d child process (+sha256 of output)', gunzipCase(await pg.chooseGunzip('igzip')));
if (onPath('igzip')) add('gunzip', 'igzip -d alone (file → counted pipe)', async () => (await programOutputSize('igzip', ['-d', '-c', gzFile]), { bytes: fs.statSync(gzFile).size }));

// ---------------------------------------------------------------------------------------------
// Run: rounds interleaved, so drift on this noisy machine hits every case alike.

/** CPU seconds of this process and its reaped children (so skopeo, pigz and the compressors count). */
function cpuSeconds() {
  try {
    const stat = fs.readFileSync('/proc/self/stat', 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // utime stime cutime cstime are fields 14-17 (1-based), i.e. 11-14 after the command name.
    return (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) / 100;
  } catch {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1e6;
  }
}

for (const c of cases) (c.times = []), (c.cpu = []);
for (let round = 0; round < runs; round++) {
  for (const c of cases) {
    if (global.gc) global.gc();
    const cpu0 = cpuSeconds();
    const t0 = performance.now();
    const r = await c.fn();
    const s = (performance.now() - t0) / 1000;
    c.times.push(s);
    c.cpu.push(cpuSeconds() - cpu0);
    c.bytes = r.bytes;
    if (r.window !== undefined) c.window = Math.max(c.window ?? 0, r.window);
    if (r.digest) {
      if (c.digest && c.digest !== r.digest) {
        // igzip (the program) has been seen, rarely, to make other bytes for the same input, the
        // content always right: reported, not fatal. Any other engine doing so is a bug.
        if (!/igzip/.test(c.name)) throw new Error(`${c.name}: output differs between runs`);
        process.stderr.write(`  warning: ${c.name}: output differs between runs (content checked by the round trip below)\n`);
        c.nondeterministic = true;
      }
      c.digest = r.digest;
    }
    process.stderr.write(`  ${round + 1}/${runs} ${c.name}: ${s.toFixed(2)} s\n`);
  }
}

// Round trips (once, outside the timings) and the determinism check.
const checked = new Set();
for (const c of cases.filter((x) => x.engine)) {
  const key = `${c.engine}-${c.level}`;
  if (checked.has(key)) continue;
  checked.add(key);
  const back = createHash('sha256');
  const gz = pg.parallelGzipStream({ engine: engines[c.engine], level: c.level });
  const roundTrip = pipeline(fs.createReadStream(layer), gz);
  for await (const b of decompress(gz, 'gzip', 'round trip')) back.update(b);
  await roundTrip;
  if (back.digest('hex') !== layerDigest) throw new Error(`${c.name}: round trip failed`);
}
const groups = new Map();
for (const c of cases.filter((x) => x.determinism)) {
  const seen = groups.get(c.determinism);
  if (seen && seen !== c.digest) throw new Error(`${c.name}: output depends on concurrency`);
  groups.set(c.determinism, c.digest);
}

// ---------------------------------------------------------------------------------------------
// Report

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const ref = cases.find((c) => c.reference);
const rows = cases.map((c) => {
  const t = median(c.times);
  const isGunzip = c.group === 'gunzip';
  const mbps = layerBytes / MB / t;
  return {
    group: c.group,
    name: c.name,
    seconds: Number(t.toFixed(3)),
    mbps: Number(mbps.toFixed(1)),
    bestMbps: Number((layerBytes / MB / Math.min(...c.times)).toFixed(1)),
    cpuSeconds: Number(median(c.cpu).toFixed(2)),
    mbpsRange: [layerBytes / MB / Math.max(...c.times), layerBytes / MB / Math.min(...c.times)].map((x) => Number(x.toFixed(1))),
    outputMB: Number((c.bytes / MB).toFixed(2)),
    vsSkopeoSize: ref && !isGunzip ? Number(((c.bytes / ref.bytes - 1) * 100).toFixed(1)) : null,
    vsSkopeoSpeed: ref && !isGunzip ? Number((median(ref.times) / t).toFixed(2)) : null,
    vsSkopeoBest: ref && !isGunzip ? Number((Math.min(...ref.times) / Math.min(...c.times)).toFixed(2)) : null,
    windowMiB: c.window !== undefined ? Number((c.window / MiB).toFixed(1)) : null,
  };
});

console.log(
  `\nlayer ${(layerBytes / MB).toFixed(1)} MB, ${cores} cores, Node ${process.version}, ${runs} runs: median, range and best MB/s of uncompressed data; CPU s = median CPU seconds, children included; load average at the end ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`,
);
for (const group of ['main', 'blocks', 'gunzip']) {
  console.log(
    `\n| ${group === 'gunzip' ? 'decompression' : group === 'blocks' ? 'block size and concurrency' : 'compression'} | MB/s median | range | best | CPU s | ${group === 'gunzip' ? 'input' : 'output'} MB | size vs skopeo | speed vs skopeo (median / best) | held input MiB |`,
  );
  console.log('|---|---|---|---|---|---|---|---|---|');
  for (const r of rows.filter((x) => x.group === group)) {
    const fmt = (v, suffix = '') => (v === null ? '' : `${v > 0 && suffix === '%' ? '+' : ''}${v}${suffix}`);
    const speed = r.vsSkopeoSpeed === null ? '' : `${r.vsSkopeoSpeed}× / ${r.vsSkopeoBest}×`;
    console.log(`| ${r.name} | ${r.mbps} | ${r.mbpsRange[0]}-${r.mbpsRange[1]} | ${r.bestMbps} | ${r.cpuSeconds} | ${r.outputMB} | ${fmt(r.vsSkopeoSize, '%')} | ${speed} | ${r.windowMiB ?? ''} |`);
  }
}
const unstable = cases.filter((c) => c.nondeterministic).map((c) => c.name);
console.log(`\nround trips checked (Node gunzip = input); outputs identical across concurrency and runs${unstable.length ? `, except (bytes, not content): ${unstable.join('; ')}` : ''}.`);
if (ref) {
  const eligible = rows.filter((r) => r.group === 'main' && r.vsSkopeoSize !== null && r.vsSkopeoSize <= 3 && r.vsSkopeoBest > 1 && /^parallel/.test(r.name));
  eligible.sort((a, b) => b.bestMbps - a.bestMbps);
  console.log(
    `eligible defaults (≤ 3% larger than skopeo, faster at best of ${runs}), fastest first: ${eligible.map((r) => `${r.name} ${r.bestMbps} MB/s`).join('; ') || 'none'}`,
  );
}
if (jsonOut) fs.writeFileSync(jsonOut, JSON.stringify({ layerBytes, cores, node: process.version, runs, rows }, null, 2) + '\n');
if (!keep) {
  for (const f of ['oci', 'archive', 'image.tar', 'layer.tar.gz', 'layer.tar', 'layer.list', 'dist']) fs.rmSync(path.join(work, f), { recursive: true, force: true });
}
