/**
 * The builders' own COPY references, reproduced from a context: against the values the real Docker
 * classic builder (docker.io 20.10.24) and buildah (1.28.2) wrote into their histories for this very
 * context (test/integration/builders.test.ts checks against the running programs); and the trie
 * walk that uses them: alternative keys, optional steps taken and skipped, a builder's own layers.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ClassicContextSums, buildahSourceRef, type OwnerNames } from '../../src/dockerfile/builder-hashes.js';
import { indexContext, loadDockerignore } from '../../src/dockerfile/context.js';
import { parseDockerfile } from '../../src/dockerfile/parser.js';
import { normalizeCreatedBy } from '../../src/dockerfile/history.js';
import { historyLayerSteps, summaryStepKey, trailingEmptyRuns } from '../../src/trie/image-steps.js';
import { chainIds, matchBuild, nodesOf, stepKeyString, type IndexedImage, type StepKey, type TrieNode, type TrieStore } from '../../src/trie/layer-trie.js';
import { dockerfileSteps } from '../../src/trie/steps.js';
import { edgesOf } from '../../src/cache/trie-store.js';
import { configAtStep, stepCuts } from '../../src/ops/build-cache/images.js';
import { ownBuilder } from '../../src/ops/build-cache/steps.js';
import type { Digest } from '../../src/oci/digest.js';
import { tempDir } from '../harness/tmp.js';

const dockerfile = (from: string) => `FROM ${from}\nWORKDIR /app\nCOPY package.json ./\nRUN sleep 2 && echo installed > deps\nCOPY . ./\nCOPY src/index.js package.json /app/multi/\nCOPY src /app/srcdir\nCMD ["sh"]\n`;
const DOCKERFILE = dockerfile('base:1');

/** The context both builders were run on (the Dockerfile naming the base each used), modes set as they were. */
async function context(from = 'base:1'): Promise<string> {
  const dir = await tempDir();
  await fs.mkdir(path.join(dir, 'src'));
  const files: [string, string][] = [
    ['package.json', '{"name":"app","version":"1.0.0"}\n'],
    ['src/index.js', 'console.log(1)\n'],
    ['.dockerignore', 'node_modules\n'],
    ['Dockerfile', dockerfile(from)],
  ];
  for (const [f, text] of files) {
    await fs.writeFile(path.join(dir, f), text);
    await fs.chmod(path.join(dir, f), 0o644);
  }
  await fs.chmod(path.join(dir, 'src'), 0o755);
  await fs.symlink('src/index.js', path.join(dir, 'link.js'));
  return dir;
}

const root: OwnerNames = { user: () => 'root', group: () => 'root' };

describe('builder content references', () => {
  it('reproduces the Docker classic builder: file:, dir: (the context and a directory) and multi:', async () => {
    const dir = await context();
    const sums = new ClassicContextSums(await indexContext(dir, await loadDockerignore(dir)));
    expect(await sums.sourceRef(['package.json'])).toBe('file:9dcba9cf2438c4fab39a3b8561aa4e267af229b183b9154d7795a514a6f1be76');
    expect(await sums.sourceRef(['./package.json'])).toBe('file:9dcba9cf2438c4fab39a3b8561aa4e267af229b183b9154d7795a514a6f1be76');
    expect(await sums.sourceRef(['.'])).toBe('dir:7b49dd527a5041b48e915728bb2bd6083b18e1c54e8aa06e1bb603129c795735');
    expect(await sums.sourceRef(['src/index.js', 'package.json'])).toBe('multi:ef2499de16bcda4f7fddb546761ffb2eb1c4911d89657e0073f56da474afb862');
    expect(await sums.sourceRef(['src'])).toBe('dir:b39e0b3ea1e28fdb577d572d816e23173bdd3b5eddab4691be2b72f4faaf8b59');
    // A wildcard is its matches, in walk order; times are not part of it.
    expect(await sums.sourceRef(['*.json'])).toBe('file:9dcba9cf2438c4fab39a3b8561aa4e267af229b183b9154d7795a514a6f1be76');
    await fs.utimes(path.join(dir, 'package.json'), new Date(0), new Date(0));
    const again = new ClassicContextSums(await indexContext(dir, await loadDockerignore(dir)));
    expect(await again.sourceRef(['package.json'])).toBe('file:9dcba9cf2438c4fab39a3b8561aa4e267af229b183b9154d7795a514a6f1be76');
    // Content and modes are.
    await fs.chmod(path.join(dir, 'package.json'), 0o600);
    const chmodded = new ClassicContextSums(await indexContext(dir, await loadDockerignore(dir)));
    expect(await chmodded.sourceRef(['package.json'])).not.toBe('file:9dcba9cf2438c4fab39a3b8561aa4e267af229b183b9154d7795a514a6f1be76');
  });

  it('reproduces buildah: file:, dir: and multi: (owners root:root, as it ran)', async () => {
    const dir = await context('oci:/tmp/exp/baseoci:latest');
    const index = await indexContext(dir, await loadDockerignore(dir));
    // --chown=0:0 stands for files owned by root whoever runs the test: names come from the files' owners.
    const o = { names: root, chown: '0:0' };
    expect(await buildahSourceRef(index, ['package.json'], o)).toBe('file:013139f5dc72b7cfa6f8dfe6fa1cd2ecedd31a5a8c74e70bc2088b56a50add20');
    expect(await buildahSourceRef(index, ['.'], o)).toBe('dir:3c29fc6cf46cc73a1229ea2482b71bdb7d2916da13f08b9025bf3ee381e456e3');
    expect(await buildahSourceRef(index, ['src/index.js', 'package.json'], o)).toBe('multi:acfbade3345b60e66837546c56f954c53a8a41f85e0b1f6380114d8146254c30');
    expect(await buildahSourceRef(index, ['src'], o)).toBe('dir:a8035e4061d155fe7a96bf2470b04b7447aca8c7e991bbab0be81dd45c889fe1');
    // What cannot be reproduced gives no reference: an owner by name.
    expect(await buildahSourceRef(index, ['package.json'], { names: root, chown: 'node' })).toBeUndefined();
  });

  it('reads the classic builder history with --chown', () => {
    const hex = '9dcba9cf2438c4fab39a3b8561aa4e267af229b183b9154d7795a514a6f1be76';
    expect(normalizeCreatedBy(`/bin/sh -c #(nop) COPY --chown=1000:1000file:${hex} in /app `)).toEqual({
      instruction: 'COPY --chown=1000:1000 /app',
      contentRef: `file:${hex}`,
      sourcesElided: true,
      destination: '/app',
      chown: '1000:1000',
    });
  });

  it('gives a plan the same keys as the histories of the images those builders made', async () => {
    const dir = await context();
    const build = await dockerfileSteps(parseDockerfile(DOCKERFILE, 'Dockerfile'), { contextDir: dir, builderKeys: true });
    const copy = build.steps.find((s) => s.instruction === 'COPY package.json ./')!;
    const keys = copy.alternatives!.map((a) => stepKeyString(a.key));
    const classic = normalizeCreatedBy('/bin/sh -c #(nop) COPY file:9dcba9cf2438c4fab39a3b8561aa4e267af229b183b9154d7795a514a6f1be76 in ./ ')!;
    expect(keys).toContain(stepKeyString({ instruction: classic.instruction, contentDigest: classic.contentRef! }));
    // A BuildKit layer's files give the step's own key (what push --dockerfile records).
    const [, h] = historyLayerSteps([{ created_by: 'WORKDIR /app' }, { created_by: 'COPY package.json ./ # buildkit' }], 2)!;
    const layer = [
      { path: 'app/', type: 'dir' as const, mode: 0o755 },
      { path: 'app/package.json', type: 'file' as const, mode: 0o644, sha256: createHash('sha256').update('{"name":"app","version":"1.0.0"}\n').digest('hex') },
    ];
    expect(summaryStepKey(h!, layer)).toEqual({ instruction: copy.instruction, contentDigest: copy.contentDigest });
  });

  it('keys a COPY also as a layer made by a differ holds it: without what a COPY before placed alike', async () => {
    const dir = await context();
    const build = await dockerfileSteps(parseDockerfile(DOCKERFILE, 'Dockerfile'), { contextDir: dir, builderKeys: true });
    const all = build.steps.find((s) => s.instruction === 'COPY . ./')!;
    const keys = all.alternatives!.map((a) => stepKeyString(a.key));
    // BuildKit's `COPY . ./` layer after `COPY package.json ./` (as Docker 20.10 exports it): no
    // package.json, since the file is the same as its parent's; src/ new, so kept with its file.
    const [, , , h] = historyLayerSteps([{ created_by: 'WORKDIR /app' }, { created_by: 'COPY package.json ./ # buildkit' }, { created_by: 'RUN x' }, { created_by: 'COPY . ./ # buildkit' }], 4)!;
    const sha = (t: string) => createHash('sha256').update(t).digest('hex');
    const layer = [
      { path: 'app/', type: 'dir' as const, mode: 0o755 },
      { path: 'app/.dockerignore', type: 'file' as const, mode: 0o644, sha256: sha('node_modules\n') },
      { path: 'app/Dockerfile', type: 'file' as const, mode: 0o644, sha256: sha(DOCKERFILE) },
      { path: 'app/link.js', type: 'symlink' as const, mode: 0o777, target: 'src/index.js' },
      { path: 'app/src/', type: 'dir' as const, mode: 0o755 },
      { path: 'app/src/index.js', type: 'file' as const, mode: 0o644, sha256: sha('console.log(1)\n') },
    ];
    const fromLayer = summaryStepKey(h!, layer)!;
    expect(fromLayer.contentDigest).not.toBe(all.contentDigest);
    expect(keys).toContain(stepKeyString(fromLayer));
    // The first COPY of the context has no such key: nothing was placed before it.
    const first = build.steps.find((s) => s.instruction === 'COPY package.json ./')!;
    expect(first.alternatives!.filter((a) => a.key.instruction === first.instruction)).toEqual([]);

    // A directory a COPY made and filled, copied again unchanged: neither it nor its files are in the layer.
    const bySrc = await dockerfileSteps(parseDockerfile('FROM base:1\nWORKDIR /app\nCOPY src/ ./src/\nCOPY . ./\n', 'Dockerfile'), { contextDir: dir, builderKeys: true });
    const again = bySrc.steps.find((s) => s.instruction === 'COPY . ./')!;
    const [, , h2] = historyLayerSteps([{ created_by: 'WORKDIR /app' }, { created_by: 'COPY src/ ./src/ # buildkit' }, { created_by: 'COPY . ./ # buildkit' }], 3)!;
    const withoutSrc = [...layer.filter((e) => !e.path.startsWith('app/src/')), { path: 'app/package.json', type: 'file' as const, mode: 0o644, sha256: sha('{"name":"app","version":"1.0.0"}\n') }];
    expect(again.alternatives!.map((a) => stepKeyString(a.key))).toContain(stepKeyString(summaryStepKey(h2!, withoutSrc)!));
    // The same with the destination written without its '/': a directory's contents go into it all the same.
    const noSlash = await dockerfileSteps(parseDockerfile('FROM base:1\nCOPY package.json /app/\nCOPY . /app\n', 'Dockerfile'), { contextDir: dir, builderKeys: true });
    const [, h3] = historyLayerSteps([{ created_by: 'COPY package.json /app/ # buildkit' }, { created_by: 'COPY . /app # buildkit' }], 2)!;
    const all3 = noSlash.steps.find((s) => s.instruction === 'COPY . /app')!;
    expect(all3.alternatives!.map((a) => stepKeyString(a.key))).toContain(stepKeyString(summaryStepKey(h3!, layer)!));
    // BuildKit writes `COPY --chown=1000:1000 . ./` as `COPY . ./`: that layer is the step's too,
    // its owner unchecked (the summary compares no owners).
    const chowned = await dockerfileSteps(parseDockerfile('FROM base:1\nWORKDIR /app\nCOPY --chown=1000:1000 . ./\n', 'Dockerfile'), { contextDir: dir, builderKeys: true });
    const [, h4] = historyLayerSteps([{ created_by: 'WORKDIR /app' }, { created_by: 'COPY . ./ # buildkit' }], 2)!;
    const owned = chowned.steps.find((s) => s.instruction.startsWith('COPY'))!;
    const whole = [...layer, { path: 'app/package.json', type: 'file' as const, mode: 0o644, sha256: sha('{"name":"app","version":"1.0.0"}\n') }];
    expect(owned.alternatives!.find((a) => stepKeyString(a.key) === stepKeyString(summaryStepKey(h4!, whole)!))?.unchecked).toBe("the owner --chown=1000:1000 sets, which BuildKit's history leaves out");
  });
});

/** The trie over a map: pure logic, as the metadata cache stores it. */
function memoryTrie(images: IndexedImage[]): TrieStore {
  const nodes = new Map<string, TrieNode>();
  for (const image of images) for (const n of nodesOf(image, nodes, true)) nodes.set(n.chainId, n);
  const edges = new Map<string, Digest[]>();
  for (const e of edgesOf([...nodes.values()])) {
    const k = `${e.parent ?? 'root'} ${e.step}`;
    edges.set(k, [...(edges.get(k) ?? []), e.child]);
  }
  return {
    getNodes: async (ids) => ids.map((id) => nodes.get(id)),
    putNodes: async () => undefined,
    getEdges: async (q) => q.map((p) => edges.get(`${p.chainId ?? 'root'} ${p.step}`) ?? []),
    addEdges: async () => undefined,
  };
}

const d = (n: number) => `sha256:${String(n).padStart(64, '0')}` as Digest;
const blob = (n: number) => ({ digest: d(100 + n), size: 10, mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip' });
const layer = (n: number, step?: StepKey, also?: StepKey[]) => ({ diffId: d(n), blob: blob(n), ...(step ? { step } : {}), ...(also ? { also } : {}) });

describe('matching a build in the trie', () => {
  const base = layer(1, { instruction: 'ADD busybox /' });
  const copyOurs = { instruction: 'COPY package.json ./', contentDigest: 'sha256:ours' };
  const copyClassic = { instruction: 'COPY ./', contentDigest: 'file:classic' };
  const copyBuildah = { instruction: 'COPY ./', contentDigest: 'file:buildah' };
  const run = { instruction: 'RUN npm ci' };
  const workdir = { instruction: 'WORKDIR /app' };
  // The classic builder makes a WORKDIR layer; buildah makes none.
  const classic: IndexedImage = { ref: { repository: 'c', tag: '1', manifest: d(900), builder: 'docker' }, layers: [base, layer(2, workdir), layer(3, copyClassic), layer(4, run)] };
  const buildah: IndexedImage = { ref: { repository: 'b', tag: '1', manifest: d(901), builder: 'buildah' }, layers: [base, layer(5, copyBuildah), layer(6, run)] };
  const steps = [
    { key: workdir, optional: true },
    { key: copyOurs, alternatives: [copyClassic, copyBuildah] },
    { key: run },
  ];

  it('follows a step under any of its keys, and an optional step both taken and skipped', async () => {
    const trie = memoryTrie([classic, buildah]);
    const baseChain = chainIds([d(1)]);
    const m = await matchBuild(trie, baseChain, steps);
    expect(m.path.map((n) => n.diffId)).toEqual([d(1), d(2), d(3), d(4)]); // the deepest: the classic image's
    expect(m).toMatchObject({ matchedSteps: [0, 1, 2], emptySteps: [] });
    const forBuildah = await matchBuild(trie, baseChain, steps, { accept: (n) => n.images.some((i) => i.builder === 'buildah') });
    expect(forBuildah.path.map((n) => n.diffId)).toEqual([d(1), d(5), d(6)]);
    // buildah's WORKDIR, skipped, is matched as a step that made no layer once the layer after it is
    // (buildah reuses it: its history entry is empty); not when nothing after it is.
    expect(forBuildah).toMatchObject({ matchedSteps: [0, 1, 2], emptySteps: [0] });
    const nothingAfter = await matchBuild(trie, baseChain, [steps[0]!, { key: { instruction: 'RUN other' } }], { accept: (n) => n.images.some((i) => i.builder === 'buildah') });
    expect(nothingAfter).toMatchObject({ matchedSteps: [], emptySteps: [] });
  });

  it('keeps every key a layer is known under (a push with --dockerfile and the history of another)', async () => {
    const annotated: IndexedImage = { ...classic, ref: { ...classic.ref, repository: 'c-df' }, layers: classic.layers.map((l, i) => (i === 2 ? layer(3, copyOurs) : l)) };
    const trie = memoryTrie([classic, annotated]);
    const node = (await trie.getNodes(chainIds([d(1), d(2), d(3)])))[2]!;
    expect([node.step, ...(node.also ?? [])].map((k) => stepKeyString(k!)).sort()).toEqual([stepKeyString(copyClassic), stepKeyString(copyOurs)].sort());
    const m = await matchBuild(trie, chainIds([d(1)]), [steps[0]!, { key: copyOurs }, steps[2]!]);
    expect(m.path).toHaveLength(4);
  });
});

describe("the classic builder's RUN that changed nothing (an empty history entry)", () => {
  // As the classic builder wrote it for: COPY a.txt /app/; RUN true; RUN echo hi > /app/hi; RUN ls /app; COPY b.txt /app/.
  const history = [
    { created_by: '/bin/sh -c #(nop) ADD file:0a in / ' },
    { created_by: '/bin/sh -c #(nop) CMD ["sh"]', empty_layer: true },
    { created_by: '/bin/sh -c #(nop) COPY file:aa in /app/ ' },
    { created_by: '/bin/sh -c true', empty_layer: true },
    { created_by: '/bin/sh -c echo hi > /app/hi' },
    { created_by: '/bin/sh -c ls /app', empty_layer: true },
    { created_by: '/bin/sh -c #(nop) COPY file:bb in /app/ ' },
  ];
  const copyA = { instruction: 'COPY /app/', contentDigest: 'file:aa' };
  const copyB = { instruction: 'COPY /app/', contentDigest: 'file:bb' };
  const [runTrue, runEcho, runLs] = [{ instruction: 'RUN true' }, { instruction: 'RUN echo hi > /app/hi' }, { instruction: 'RUN ls /app' }];
  const built = (repository: string, h: typeof history): IndexedImage => {
    const layers = historyLayerSteps(h, 4)!;
    const emptyAfter = trailingEmptyRuns(h);
    return {
      ref: { repository, tag: '1', manifest: d(800), builder: 'docker', ...(emptyAfter.length ? { emptyAfter } : {}) },
      layers: layers.map((l, i) => layer(i + 1, l.step?.contentRef ? { instruction: l.step.instruction, contentDigest: l.step.contentRef, ...(l.emptyBefore ? { emptyBefore: l.emptyBefore } : {}) } : { instruction: l.step!.instruction, ...(l.emptyBefore ? { emptyBefore: l.emptyBefore } : {}) })),
    };
  };

  it('records the empty RUNs before each layer, and after the last', () => {
    const steps = historyLayerSteps(history, 4)!;
    expect(steps.map((s) => s.emptyBefore)).toEqual([undefined, undefined, ['RUN true'], ['RUN ls /app']]);
    expect(trailingEmptyRuns(history)).toEqual([]);
    expect(trailingEmptyRuns([...history, { created_by: '/bin/sh -c npm test', empty_layer: true }, { created_by: '/bin/sh -c #(nop) CMD ["x"]', empty_layer: true }])).toEqual(['RUN npm test']);
  });

  it('matches the RUNs as made without a layer, only where the stored history has them so', async () => {
    const trie = memoryTrie([built('c', history)]);
    const all = [{ key: copyA }, { key: runTrue, mayBeEmpty: true }, { key: runEcho, mayBeEmpty: true }, { key: runLs, mayBeEmpty: true }, { key: copyB }];
    const m = await matchBuild(trie, chainIds([d(1)]), all);
    expect(m.path.map((n) => n.diffId)).toEqual([d(1), d(2), d(3), d(4)]);
    expect(m.matchedSteps).toEqual([0, 1, 2, 3, 4]);
    expect(m.emptySteps).toEqual([1, 3]);
    // Without `RUN true` the classic builder would not reuse `RUN echo`: its cache image's history has it.
    const without = await matchBuild(trie, chainIds([d(1)]), all.filter((s) => s.key !== runTrue));
    expect(without.matchedSteps).toEqual([0]);
    // A RUN after the last layer is matched only where an image's history ends with it.
    const trailing = await matchBuild(trie, chainIds([d(1)]), [...all, { key: { instruction: 'RUN npm test' }, mayBeEmpty: true }]);
    expect(trailing.matchedSteps).toEqual([0, 1, 2, 3, 4]);
    expect(trailing.image).toBeUndefined();
  });

  it('matches RUNs after the last layer in the image whose history ends with them', async () => {
    const tested = [...history, { created_by: '/bin/sh -c npm test', empty_layer: true }, { created_by: '/bin/sh -c #(nop) CMD ["x"]', empty_layer: true }];
    // Two images of the same layers; only the second ran the tests.
    const trie = memoryTrie([built('untested', history), built('tested', tested)]);
    const steps = [{ key: copyA }, { key: runTrue, mayBeEmpty: true }, { key: runEcho, mayBeEmpty: true }, { key: runLs, mayBeEmpty: true }, { key: copyB }];
    const m = await matchBuild(trie, chainIds([d(1)]), [...steps, { key: { instruction: 'RUN npm test' }, mayBeEmpty: true }]);
    expect(m.matchedSteps).toEqual([0, 1, 2, 3, 4, 5]);
    expect(m.emptySteps).toEqual([1, 3, 5]);
    expect(m.image?.repository).toBe('tested');
    // Only its last node keeps what follows the image's last layer.
    const nodes = await trie.getNodes(chainIds([d(1), d(2), d(3), d(4)]));
    expect(nodes.map((n) => n!.images.some((i) => i.emptyAfter))).toEqual([false, false, false, true]);
    expect((await matchBuild(trie, chainIds([d(1)]), [...steps, { key: { instruction: 'RUN npm run lint' }, mayBeEmpty: true }])).matchedSteps).toEqual([0, 1, 2, 3, 4]);
    expect((await matchBuild(trie, chainIds([d(1)]), [...steps, { key: { instruction: 'RUN npm test' }, mayBeEmpty: true }], { acceptImage: (i) => i.repository !== 'tested' })).image).toBeUndefined();
  });

  it("follows the base's own empty RUNs before the first step", async () => {
    const onBase = [history[0]!, { created_by: '/bin/sh -c ldconfig', empty_layer: true }, ...history.slice(2)];
    const trie = memoryTrie([built('c', onBase)]);
    const steps = [{ key: copyA }, { key: runTrue, mayBeEmpty: true }, { key: runEcho, mayBeEmpty: true }];
    expect((await matchBuild(trie, chainIds([d(1)]), steps)).matchedSteps).toEqual([]);
    const m = await matchBuild(trie, chainIds([d(1)]), steps, { baseEmptyRuns: trailingEmptyRuns(onBase.slice(0, 2)) });
    expect(m.matchedSteps).toEqual([0, 1, 2]);
  });
});

describe('per-step cache images', () => {
  const history = [
    { created_by: 'ADD busybox /' },
    { created_by: '/bin/sh -c #(nop) WORKDIR /app', empty_layer: true },
    { created_by: '/bin/sh -c #(nop) ENV A=1', empty_layer: true },
    { created_by: '/bin/sh -c #(nop) COPY file:aa in ./ ' },
    { created_by: '/bin/sh -c npm ci' },
    { created_by: '/bin/sh -c #(nop) ENV B=2', empty_layer: true },
    { created_by: '/bin/sh -c #(nop) COPY dir:bb in ./ ' },
    { created_by: '/bin/sh -c #(nop) CMD ["node","x"]', empty_layer: true },
  ];
  const config = {
    architecture: 'amd64',
    os: 'linux',
    config: { Env: ['PATH=/bin', 'A=1', 'B=2'], WorkingDir: '/app', Cmd: ['node', 'x'] },
    rootfs: { type: 'layers' as const, diff_ids: [d(1), d(2), d(3), d(4)] },
    history,
  };

  it('one image per step after the base, through the last matched layer and the empty steps after it', () => {
    expect(stepCuts(history, 1, 3)).toEqual([2, 3, 4, 5, 6]);
    expect(stepCuts(history, 1, 1)).toEqual([2, 3]); // the base alone: the empty steps after it
  });

  it('the settings as they were at the step: later ENV and CMD undone, earlier ones kept', () => {
    expect(configAtStep(config, 5, 1)).toEqual({ Env: ['PATH=/bin', 'A=1'], WorkingDir: '/app' });
    expect(configAtStep(config, 2, 1)).toEqual({ Env: ['PATH=/bin'], WorkingDir: '/app' });
    expect(configAtStep(config, 8, 1)).toEqual(config.config);
  });
});

describe("which builder made an image's own steps", () => {
  // Histories as the builders wrote them (docker.io 20.10.24, buildah 1.28.2), on a base BuildKit built.
  const buildkit = (createdBy: string, extra: { empty_layer?: boolean } = {}) => ({ created_by: `${createdBy} # buildkit`, comment: 'buildkit.dockerfile.v0', ...extra });
  const bkBase = [{ created_by: 'ADD busybox /' }, buildkit('RUN /bin/sh -c echo base > /base'), { created_by: 'CMD ["sh"]', comment: 'buildkit.dockerfile.v0', empty_layer: true }];
  const classicBase = [{ created_by: '/bin/sh -c #(nop) ADD file:aa in / ' }, { created_by: '/bin/sh -c #(nop)  CMD ["sh"]', empty_layer: true }];

  it("reads the entries after the base's: an app of one or two steps on a BuildKit base is its own builder's", () => {
    expect(ownBuilder([...bkBase, { created_by: '/bin/sh -c #(nop) COPY file:bb in /a ' }])).toBe('docker');
    expect(ownBuilder([...bkBase, { created_by: '/bin/sh -c #(nop) COPY file:bb in /a ' }, { created_by: '/bin/sh -c cat /a > /b' }])).toBe('docker');
    expect(ownBuilder([...bkBase, { created_by: '|1 LEVEL=2 /bin/sh -c echo $LEVEL > /l' }])).toBe('docker');
    // buildah, with --layers (a comment on every entry) and without (on the last one only).
    expect(ownBuilder([...bkBase, { created_by: '/bin/sh -c cat /a > /b', comment: 'FROM localhost/base:1' }])).toBe('buildah');
    expect(ownBuilder([...bkBase, { created_by: '/bin/sh -c echo a > /a', empty_layer: true }, { created_by: '/bin/sh -c #(nop) COPY file:bb in /f ', comment: 'FROM localhost/base:1' }])).toBe('buildah');
    expect(ownBuilder([...bkBase, buildkit('COPY a /a')])).toBe('buildkit');
  });

  it('an app on a base of another builder, and the base alone', () => {
    expect(ownBuilder([...classicBase, buildkit('RUN /bin/sh -c echo x > /x')])).toBe('buildkit');
    expect(ownBuilder([...classicBase, { created_by: '/bin/sh -c echo x > /x', comment: 'FROM b64c46a80f34' }])).toBe('buildah');
    const buildahBase = [{ created_by: 'ADD busybox /' }, { created_by: '/bin/sh -c echo a > /a', comment: 'FROM localhost/bb:latest' }];
    expect(ownBuilder([...buildahBase, { created_by: '/bin/sh -c echo b > /b' }])).toBe('docker');
    // A RUN under another SHELL, after the classic builder's own entries: theirs.
    expect(ownBuilder([...bkBase, { created_by: '/bin/bash -c #(nop)  SHELL [/bin/bash -c]', empty_layer: true }, { created_by: '/bin/bash -c echo b > /b' }])).toBe('docker');
    expect(ownBuilder(bkBase)).toBe('buildkit');
    expect(ownBuilder(classicBase)).toBe('docker');
  });

  it('unknown when no entry after the last comment is written as a builder writes it', () => {
    expect(ownBuilder([{ created_by: 'ADD busybox /' }])).toBeUndefined();
    expect(ownBuilder([...bkBase, { created_by: 'crafted' }])).toBeUndefined();
    expect(ownBuilder([])).toBeUndefined();
    expect(ownBuilder(undefined)).toBeUndefined();
  });
});
