/**
 * Which build step made which layer: of an image as the trie records it (annotations of ours,
 * else its history in the builders' shared normal form, and COPY/ADD layers summarised by their
 * files), and of an image being pushed with the Dockerfile that built it (`push --dockerfile`).
 */
import fs from 'node:fs/promises';
import { SmartError } from '../../errors.js';
import type { Image } from '../../oci/image.js';
import { indexedImageOf } from '../../cache/trie-store.js';
import { TaskGroup } from '../../pipeline/concurrency.js';
import { CONTENT_ANNOTATION, STEP_ANNOTATION, type ImageRef, type IndexedImage, type StepKey } from '../../trie/layer-trie.js';

/** What made one layer: its key in the trie, and the other keys it is known under. */
export interface LayerKeys {
  step?: StepKey;
  also?: StepKey[];
}

/** COPY/ADD layers up to this size (stored bytes) are read at index time for the summary of their files. */
export const LAYER_SUMMARY_MAX_BYTES = 32 * 1024 * 1024;

/**
 * What the layers of an image were made by: layer descriptor annotations (ours) first, else the
 * image history's non-empty entries in order, in the normal form shared by every builder (a
 * COPY/ADD keyed by the content reference its builder wrote, when it wrote one). With
 * `summaries`, COPY/ADD layers up to `maxBytes` are read, and the summary of their files is a
 * key too (the step's own when the history gives no other): see trie/image-steps.ts.
 */
export async function layerKeysOfImage(image: Image, options: { summaries?: { maxBytes: number; jobs?: number } } = {}): Promise<LayerKeys[]> {
  const { historyLayerSteps, historyStepKey, layerEntries, summarizable, summaryStepKey } = await import('../../trie/image-steps.js');
  const history = historyLayerSteps(image.config.history, image.layers.length);
  const summaries = options.summaries;
  // Independent reads: one that fails costs its layer its summary, not the others theirs.
  const reads = new TaskGroup({ jobs: summaries?.jobs ?? 2, failFast: false });
  return Promise.all(
    image.layers.map(async (layer, i): Promise<LayerKeys> => {
      const keys: StepKey[] = [];
      const a = layer.descriptor.annotations;
      if (a?.[STEP_ANNOTATION]) keys.push({ instruction: a[STEP_ANNOTATION], ...(a[CONTENT_ANNOTATION] ? { contentDigest: a[CONTENT_ANNOTATION] } : {}) });
      const h = history?.[i];
      if (h) {
        const fromHistory = historyStepKey(h);
        // Not a base image's root file system (`ADD rootfs.tar /` as the first layer): no build copies it.
        if (summaries && i > 0 && summarizable(h) && layer.descriptor.size <= summaries.maxBytes) {
          // A layer that cannot be read is no reason to fail the index: it simply gets no summary.
          const entries = await reads.run(async () => layerEntries(await layer.openUncompressed())).catch(() => undefined);
          const summary = entries && summaryStepKey(h, entries);
          if (summary) keys.push(summary);
        }
        if (fromHistory) keys.push(fromHistory);
      }
      // Every key of the layer is the same step of this image's history: after the same empty RUNs.
      if (h?.emptyBefore) keys.forEach((k, j) => (keys[j] = { ...k, emptyBefore: h.emptyBefore! }));
      const [step, ...also] = keys;
      return { ...(step ? { step } : {}), ...(also.length ? { also } : {}) };
    }),
  );
}

/** The primary key of each layer (what a push records). */
export async function stepsOfImage(image: Image): Promise<(StepKey | undefined)[]> {
  return (await layerKeysOfImage(image)).map((k) => k.step);
}

/** A history entry as the trie reads it. */
type HistoryEntry = NonNullable<Image['config']['history']>[number];

/**
 * Which builder wrote an image's own steps, from its history. Only the entries after its base's
 * tell: a base's entries are copied first, and many bases are BuildKit's (the official images),
 * so an app built on one by the classic builder or buildah in a step or two was taken for
 * BuildKit's, and a plan for its builder then matched none of its steps. The base is not known
 * when a store is indexed, so the entries are read from the last: BuildKit writes its comment
 * (`buildkit.dockerfile.v0`, with `… # buildkit`) on every entry, buildah a `FROM …` comment on
 * every entry with `--layers` and on the last one without; the classic builder writes none, its
 * entries `SHELL -c #(nop) …` and its RUNs `/bin/sh -c …` (`|N ARG=… /bin/sh -c …` with build
 * args). So a last entry with BuildKit's or buildah's mark is theirs, and the entries after the
 * last one carrying a comment (none is BuildKit's or buildah's) are the classic builder's when
 * one is written its way. Unknown (any builder may use the image): none is.
 */
export function ownBuilder(history: readonly HistoryEntry[] | undefined): ImageRef['builder'] {
  const entries = (history ?? []).filter((h) => h.created_by);
  const last = entries.at(-1);
  if (!last) return undefined;
  if (last.created_by!.endsWith(' # buildkit') || last.comment === 'buildkit.dockerfile.v0') return 'buildkit';
  if (last.comment?.startsWith('FROM ')) return 'buildah';
  const uncommented = entries.slice(entries.findLastIndex((h) => h.comment) + 1);
  if (uncommented.some((h) => h.created_by!.includes('#(nop)') || CLASSIC_RUN.test(h.created_by!))) return 'docker';
  return undefined;
}

/** The classic builder's RUN in its default shell, with the build args it used before it (`|2 A=1 B=2 /bin/sh -c …`). */
const CLASSIC_RUN = /^(?:\|\d+ .*?)?\/bin\/sh -c /;

/**
 * What the trie records of an image besides its layers: whether it carries BuildKit's inline cache
 * (its config holds the metadata), which builder made its own steps (`ownBuilder`), and the RUNs
 * it records as empty after its last layer.
 */
export async function imageFacts(image: Pick<Image, 'config'>): Promise<Pick<ImageRef, 'inlineCache' | 'builder' | 'emptyAfter'>> {
  const history = image.config.history ?? [];
  const builder = ownBuilder(history);
  // The RUNs after the last layer: only the classic builder writes one as an empty entry, its
  // created_by the command without `#(nop)`; the history's normal form is loaded only when an
  // entry there has none (BuildKit's ENV and CMD have none either).
  const tail = history.slice(history.findLastIndex((h) => !h.empty_layer) + 1);
  const emptyAfter = tail.some((h) => h.created_by && !h.created_by.includes('#(nop)')) ? (await import('../../trie/image-steps.js')).trailingEmptyRuns(history) : [];
  return {
    ...(Object.hasOwn(image.config, 'moby.buildkit.cache.v0') ? { inlineCache: true as const } : {}),
    ...(builder ? { builder } : {}),
    ...(emptyAfter.length ? { emptyAfter } : {}),
  };
}

export async function indexedImage(image: Image, ref: { repository: string; tag?: string }, options: Parameters<typeof layerKeysOfImage>[1] = {}): Promise<IndexedImage> {
  const keys = await layerKeysOfImage(image, options);
  return indexedImageOf(
    ref,
    image.manifest.digest,
    image.layers,
    keys.map((k) => k.step),
    keys.map((k) => k.also),
    await imageFacts(image),
  );
}

/** A Dockerfile's text; a file that is not there is NOT_FOUND naming it. */
export async function readDockerfile(file: string): Promise<string> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (e) {
    throw new SmartError('NOT_FOUND', `${file}: no such file`, { input: file, cause: e });
  }
}

/**
 * The Dockerfile and build context of a push, checked before it writes anything: they are read
 * only once the layers are stored (a Dockerfile that was not there failed the push after its blobs).
 */
export async function checkPushDockerfile(options: { path: string; contextDir: string }): Promise<void> {
  await readDockerfile(options.path);
  const context = await fs.stat(options.contextDir).catch(() => undefined);
  if (!context?.isDirectory()) {
    throw new SmartError('NOT_FOUND', `${options.contextDir}: ${context ? 'not a directory' : 'no such directory'} (the build context of ${options.path})`, { input: options.contextDir });
  }
}

/**
 * `smart push --dockerfile F --context DIR`: which Dockerfile step made which layer of the image.
 * The layer-producing steps of the target stage and of the stages it is built on (`FROM build AS
 * final`: build's steps, then final's) are the image's last layers; a WORKDIR may have made a
 * layer or not, which the history tells (a non-empty WORKDIR entry), and so may a RUN (an empty
 * RUN entry: the classic builder's RUN that changed nothing). Aligned from the end; the layers
 * before them are the base's and get no step.
 */
export async function stepsForPush(image: Image, options: { dockerfile: string; contextDir: string; stage?: string; buildArgs?: Record<string, string> }): Promise<(StepKey | undefined)[]> {
  const { parseDockerfile } = await import('../../dockerfile/parser.js');
  const { dockerfileSteps } = await import('../../trie/steps.js');
  const { normalizeCreatedBy } = await import('../../dockerfile/history.js');
  const text = await readDockerfile(options.dockerfile);
  const build = await dockerfileSteps(parseDockerfile(text, options.dockerfile), {
    contextDir: options.contextDir,
    dockerfilePath: options.dockerfile,
    ...(options.stage ? { stage: options.stage } : {}),
    ...(options.buildArgs ? { buildArgs: options.buildArgs } : {}),
  });
  const steps = build.steps.filter((s) => s.producesLayer && build.chain.includes(s.stage));
  const history = (image.config.history ?? []).filter((h) => !h.empty_layer);
  const aligned = history.length === image.layers.length;
  // How many RUNs the history records as empty after each layer (the classic builder's RUN that
  // changed nothing): that many RUN steps there made no layer.
  const { historyLayerSteps, trailingEmptyRuns } = await import('../../trie/image-steps.js');
  const layerSteps = aligned ? historyLayerSteps(image.config.history, image.layers.length) : undefined;
  const emptyRunsAfter = image.layers.map((_, i) =>
    !layerSteps ? 0 : i === image.layers.length - 1 ? trailingEmptyRuns(image.config.history).length : (layerSteps[i + 1]?.emptyBefore?.length ?? 0),
  );
  const out: (StepKey | undefined)[] = image.layers.map(() => undefined);
  let layer = image.layers.length - 1;
  let emptyRuns = emptyRunsAfter[layer] ?? 0;
  for (let s = steps.length - 1; s >= 0 && layer >= 0; s--) {
    const step = steps[s]!;
    if (step.keyword === 'RUN' && emptyRuns > 0) {
      emptyRuns--;
      continue;
    }
    if (step.layerOptional) {
      const h = aligned ? normalizeCreatedBy(history[layer]?.created_by ?? '') : undefined;
      if (!h || !h.instruction.startsWith('WORKDIR')) continue; // this WORKDIR made no layer
    }
    out[layer--] = { instruction: step.instruction, ...(step.contentDigest ? { contentDigest: step.contentDigest } : {}) };
    emptyRuns = emptyRunsAfter[layer] ?? 0;
  }
  return out;
}
