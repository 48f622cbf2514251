#!/usr/bin/env node
/**
 * The layer trie at scale: 10,000 images × 10 layers from a few shared base chains, indexed into
 * Redis (a real redis-server on loopback, started here), then build plans walked against it.
 * Reports index time and peak RSS, and plan latency (median and p95). Not a test.
 *
 *   npm run build && node bench/trie.mjs [--images N]
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { createRedisMetadataCache } = await import(path.join(repo, 'dist/cache/redis-cache.js'));
const { CachedTrieStore } = await import(path.join(repo, 'dist/cache/trie-store.js'));
const { chainIds, matchBuild, nodesOf, stepKeyString } = await import(path.join(repo, 'dist/trie/layer-trie.js'));

const images = Number(process.argv[process.argv.indexOf('--images') + 1]) || 10_000;
const LAYERS = 10;
const d = (s) => `sha256:${createHash('sha256').update(s).digest('hex')}`;

const port = await new Promise((resolve) => {
  const s = net.createServer();
  s.listen(0, '127.0.0.1', () => {
    const p = s.address().port;
    s.close(() => resolve(p));
  });
});
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'smart-trie-bench-'));
const redis = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], { stdio: 'ignore' });
for (let i = 0; i < 100; i++) {
  const ok = await new Promise((r) => net.connect(port, '127.0.0.1').once('connect', function () { this.destroy(); r(true); }).once('error', () => r(false)));
  if (ok) break;
  await new Promise((r) => setTimeout(r, 50));
}
const cache = await createRedisMetadataCache({ url: `redis://127.0.0.1:${port}` });
const trie = new CachedTrieStore(cache, 'file:/bench');

// 20 base chains of 4 layers; on each, app images with 6 step layers where the first steps are
// shared by many (same dependencies) and the last ones unique.
function image(i) {
  const base = i % 20;
  const deps = i % 500;
  const layers = [];
  for (let l = 0; l < 4; l++) layers.push({ diffId: d(`base${base}-${l}`), blob: { digest: d(`gz-base${base}-${l}`), size: 30_000_000, mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip' }, step: { instruction: `RUN base ${l}` } });
  const steps = [
    { instruction: 'WORKDIR /app', key: 'w' },
    { instruction: 'COPY package.json ./', contentDigest: d(`pkg${deps}`), key: `pkg${deps}` },
    { instruction: 'RUN npm ci', key: `ci${deps}` },
    { instruction: 'COPY . .', contentDigest: d(`src${i}`), key: `src${i}` },
    { instruction: 'RUN npm run build', key: `build${i}` },
    { instruction: 'CMD', key: `cmd${i}` },
  ];
  let chain = `b${base}`;
  for (const s of steps.slice(0, LAYERS - 4)) {
    chain += `/${s.key}`;
    layers.push({ diffId: d(chain), blob: { digest: d(`gz${chain}`), size: 1_000_000, mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip' }, step: { instruction: s.instruction, ...(s.contentDigest ? { contentDigest: s.contentDigest } : {}) } });
  }
  return { ref: { repository: `team/app${i % 1000}`, tag: `v${i}`, manifest: d(`m${i}`) }, layers };
}

const t0 = performance.now();
const nodes = new Map();
let peak = 0;
for (let i = 0; i < images; i++) {
  for (const n of nodesOf(image(i), nodes, true)) nodes.set(n.chainId, n);
  if (i % 1000 === 0) {
    peak = Math.max(peak, process.memoryUsage().rss);
    // Let the Redis client's timers and socket run: a loop that holds the event loop for seconds
    // trips the client's own deadlines (at 100,000 images this took 8 s).
    await new Promise((r) => setImmediate(r));
  }
}
const all = [...nodes.values()];
for (let i = 0; i < all.length; i += 1000) await trie.putNodes(all.slice(i, i + 1000));
const edges = all.filter((n) => n.step).map((n) => ({ parent: n.parent, step: stepKeyString(n.step), child: n.chainId }));
for (let i = 0; i < edges.length; i += 1000) await trie.addEdges(edges.slice(i, i + 1000));
peak = Math.max(peak, process.memoryUsage().rss);
const indexSeconds = (performance.now() - t0) / 1000;

// Plans: a build on base 7 with the dependencies of image 1507, a changed source.
const times = [];
for (let q = 0; q < 200; q++) {
  const i = (q * 37) % images;
  const img = image(i);
  const base = chainIds(img.layers.slice(0, 4).map((l) => l.diffId));
  // As a plan asks: a COPY under its alternative keys too (the builders' references, the files), the WORKDIR optional.
  const alternatives = (k) => ['classic', 'buildah', 'files-classic', 'files-buildah'].map((b) => ({ instruction: 'COPY ./', contentDigest: d(`${b}${q}-${k}`) }));
  const steps = img.layers.slice(4).map((l, k) => ({
    key: k === 3 ? { instruction: 'COPY . .', contentDigest: d(`changed${q}`) } : l.step,
    ...(l.step.instruction.startsWith('COPY') ? { alternatives: alternatives(k) } : {}),
    ...(l.step.instruction.startsWith('WORKDIR') ? { optional: true } : {}),
  }));
  const t = performance.now();
  // A store of its own per plan, as each command opens one (what it read is kept for its steps only).
  const m = await matchBuild(new CachedTrieStore(cache, 'file:/bench'), base, steps);
  times.push(performance.now() - t);
  if (m.steps !== 3) throw new Error(`plan ${q}: matched ${m.steps} steps, expected 3`);
}
times.sort((a, b) => a - b);
console.log(`| trie | ${images} images × ${LAYERS} layers | ${all.length} nodes | index ${indexSeconds.toFixed(1)} s, peak RSS ${(peak / 1e6).toFixed(0)} MB | plan median ${times[100].toFixed(1)} ms, p95 ${times[190].toFixed(1)} ms (Redis on loopback) |`);
await cache.close();
redis.kill('SIGTERM');
fs.rmSync(dir, { recursive: true, force: true });
