/**
 * The build steps that made an image's layers, read from the image alone (no Dockerfile): the
 * history's entries in the normal form shared by every builder, and the keys a layer can be found
 * under in the trie.
 *
 * - A COPY/ADD whose history names a content reference (Docker classic builder, buildah:
 *   `COPY file:<hex> in ./`) is keyed by that reference (builder-hashes.ts computes it from a
 *   context).
 * - Any COPY/ADD layer small enough can also be keyed by a summary of its files (BuildKit's
 *   history names no content; the classic builder and buildah have cases their reference cannot
 *   be reproduced in): the entries below the step's destination, named relative to it, with their
 *   type, permission bits, content sha256 and link target (`digestLayerEntries` in context.ts,
 *   the digest a plan computes from the context as the instruction would place the files). Not
 *   compared: times, owners (a `--chown` is compared as written in the history), the destination
 *   directory and its parents, whiteouts. A single file written at a destination that is not a
 *   directory (`COPY app.conf /etc/app/main.conf`) is that file, named as the destination names it.
 */
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import type { HistoryEntry } from '../oci/config.js';
import { cleanPath, contextRelative, digestCopyEntries, digestLayerEntries, type LayerEntry } from '../dockerfile/context.js';
import { normalizeCreatedBy, type HistoryStep } from '../dockerfile/history.js';
import { sparseSegments } from '../tar/sparse.js';
import { TarStreamReader } from '../tar/stream-reader.js';
import type { StepKey } from './layer-trie.js';

/** One layer's step as its image's history tells it. */
export interface HistoryLayerStep {
  /** The normal form, or undefined when the history entry is not a build step (`ADD rootfs`, a comment). */
  step?: HistoryStep;
  /** COPY/ADD: the destination, absolute, `/`-terminated when written so (relative ones resolved against the WORKDIRs before it). */
  destination?: string;
  /**
   * A history naming the sources (BuildKit, kaniko) writes them and the destination joined by
   * spaces (`COPY c.txt /h i/` from `COPY ["c.txt", "/h i/"]`): the destinations its last two words
   * and more would be, resolved alike, the last word's (`destination`) first. The layer tells
   * which it is (`summaryStepKey`).
   */
  destinationsWithSpaces?: string[];
  /** The RUNs recorded as empty entries since the previous layer's (the classic builder's RUN that changed nothing): normal forms, in order. */
  emptyBefore?: string[];
}

/**
 * The history entry of each layer, with the working directory followed through every entry
 * (empty ones too), or undefined when history and layers do not line up.
 */
export function historyLayerSteps(history: readonly HistoryEntry[] | undefined, layerCount: number): HistoryLayerStep[] | undefined {
  const entries = history ?? [];
  if (entries.filter((h) => !h.empty_layer).length !== layerCount) return undefined;
  const out: HistoryLayerStep[] = [];
  let workdir = '/';
  let emptyRuns: string[] = [];
  for (const h of entries) {
    const step = normalizeCreatedBy(h.created_by ?? '');
    if (step?.instruction.startsWith('WORKDIR ')) {
      const dir = step.instruction.slice('WORKDIR '.length);
      workdir = cleanPath(dir.startsWith('/') ? dir : `${workdir}/${dir}`);
    }
    if (h.empty_layer) {
      if (step?.instruction.startsWith('RUN ')) emptyRuns.push(step.instruction);
      continue;
    }
    const kw = step?.instruction.split(' ')[0];
    const copy = kw === 'COPY' || kw === 'ADD';
    const dest = copy ? (step!.sourcesElided ? step!.destination : lastWord(step!.instruction)) : undefined;
    const spaced = copy && !step!.sourcesElided ? suffixesWithSpaces(step!.instruction).map((d) => resolveCopyDestination(workdir, d)) : [];
    out.push({
      ...(step ? { step } : {}),
      ...(dest !== undefined ? { destination: resolveCopyDestination(workdir, dest) } : {}),
      ...(spaced.length ? { destinationsWithSpaces: spaced } : {}),
      ...(emptyRuns.length ? { emptyBefore: emptyRuns } : {}),
    });
    emptyRuns = [];
  }
  return out;
}

/** What a build set itself before one of its layers, as its history tells (see `ownConfigAtLayers`). */
export interface HistoryOwnConfig {
  /** null: a value the history does not tell (written with a variable, `ENV E=$D`, and set again later). */
  env: Map<string, string | null>;
  user?: string;
  /** null: set relative to the base's, not known here. */
  workdir?: string | null;
  /** The layer's RUN build args (`|N K=V`), when it is a RUN that records them. */
  args?: Record<string, string>;
  /** The keyword of the layer's own entry (`RUN`, `COPY`...), when its history names a build step. */
  keyword?: string;
}

/**
 * The root of a working directory below one neither side of a plan knows (the FROM image's, which
 * the build's own WORKDIRs are relative to): `WORKDIR app` then `WORKDIR ../other` is
 * `/?base/other`. Compared only with another such (buildah's history writes a WORKDIR as written,
 * relative; the classic builder and BuildKit write it resolved, which is not compared with it).
 */
export const UNKNOWN_WORKDIR_ROOT = '/?base';

/** Whether a working directory is one below the unknown root (UNKNOWN_WORKDIR_ROOT). */
export function belowUnknownWorkdir(dir: string): boolean {
  return dir === UNKNOWN_WORKDIR_ROOT || dir.startsWith(`${UNKNOWN_WORKDIR_ROOT}/`);
}

/**
 * The working directory after `WORKDIR dir` from `current` (undefined: the FROM image's, unknown;
 * null: not known at all). Climbing above the unknown root leads nowhere known (null).
 */
export function nextWorkdir(current: string | null | undefined, dir: string): string | null {
  if (dir.startsWith('/')) return cleanPath(dir);
  if (current === null) return null;
  const from = current ?? UNKNOWN_WORKDIR_ROOT;
  const next = cleanPath(`${from}/${dir}`);
  return belowUnknownWorkdir(from) && !belowUnknownWorkdir(next) ? null : next;
}

/**
 * For each layer (the history's non-empty entries in order), the ENV values, USER and WORKDIR the
 * entries from `ownFrom` on (the build's own, after its base's history) set before it, and its
 * RUN's build args: what the builders run a step under besides its own text, and check before
 * they reuse it (a RUN after a changed ENV is run again). Undefined when history and layers do not
 * line up.
 *
 * `finalEnv` (the image config's `Env`) reads what the history's ENV text cannot tell: the
 * classic builder and BuildKit write the values unquoted (`ENV W=a b$c=d P=/bin`: a pair ends
 * only before a name the image's environment holds), and buildah writes them unexpanded
 * (`ENV E=$D`): the last ENV of a name set the value the config holds.
 */
export function ownConfigAtLayers(history: readonly HistoryEntry[] | undefined, layerCount: number, ownFrom: number, finalEnv?: readonly string[]): HistoryOwnConfig[] | undefined {
  const entries = history ?? [];
  if (entries.filter((h) => !h.empty_layer).length !== layerCount) return undefined;
  const final = new Map((finalEnv ?? []).map((kv) => [kv.slice(0, kv.indexOf('=') < 0 ? kv.length : kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
  const envPairs = entries.map((h, i) => {
    const step = i < ownFrom ? undefined : normalizeCreatedBy(h.created_by ?? '');
    return step?.instruction.startsWith('ENV ') ? envPairsOf(step.instruction.slice('ENV '.length), final) : [];
  });
  const lastSetAt = new Map<string, number>();
  envPairs.forEach((pairs, i) => pairs.forEach(([key]) => lastSetAt.set(key, i)));
  const env = new Map<string, string | null>();
  let user: string | undefined;
  let workdir: string | null | undefined;
  const out: HistoryOwnConfig[] = [];
  for (const [i, h] of entries.entries()) {
    const step = normalizeCreatedBy(h.created_by ?? '');
    const kw = step?.instruction.split(' ')[0];
    if (!h.empty_layer) {
      out.push({
        env: new Map(env),
        ...(user !== undefined ? { user } : {}),
        ...(workdir !== undefined ? { workdir } : {}),
        ...(step?.buildArgs ? { args: step.buildArgs } : {}),
        ...(kw ? { keyword: kw } : {}),
      });
    }
    if (i < ownFrom || !step) continue;
    const rest = step.instruction.slice((kw?.length ?? 0) + 1);
    if (kw === 'ENV') {
      for (const [key, value] of envPairs[i]!) {
        if (lastSetAt.get(key) === i && final.has(key)) env.set(key, final.get(key)!);
        else env.set(key, value.includes('$') ? null : value);
      }
    } else if (kw === 'USER') user = rest;
    else if (kw === 'WORKDIR') workdir = nextWorkdir(workdir, rest);
  }
  return out;
}

/**
 * The pairs of an ENV's normal-form text (`A=1 B=two words`): a pair starts at a word `NAME=`,
 * where the image's environment holds NAME when it is known (a value may hold ` x=y`).
 */
function envPairsOf(text: string, known: ReadonlyMap<string, string>): [string, string][] {
  const out: [string, string][] = [];
  for (const word of text.split(' ')) {
    const eq = word.indexOf('=');
    const starts = eq > 0 && (known.size === 0 || known.has(word.slice(0, eq)));
    if (starts || out.length === 0) out.push(eq > 0 ? [word.slice(0, eq), word.slice(eq + 1)] : [word, '']);
    else out[out.length - 1]![1] += ` ${word}`;
  }
  return out.filter(([key]) => key !== '');
}

/**
 * The RUNs a history records as empty after its last layer's entry: what the first layer built on
 * the image comes after, and what a build that ends like the image reuses after its last layer.
 */
export function trailingEmptyRuns(history: readonly HistoryEntry[] | undefined): string[] {
  const entries = history ?? [];
  const tail = entries.slice(entries.findLastIndex((h) => !h.empty_layer) + 1);
  return tail.map((h) => normalizeCreatedBy(h.created_by ?? '')?.instruction).filter((i): i is string => i?.startsWith('RUN ') === true);
}

function lastWord(instruction: string): string | undefined {
  const words = instruction.split(' ');
  return words.length >= 3 ? words[words.length - 1] : undefined;
}

/** The last two words of a COPY's normal form and more, each leaving a source before it (flags are no sources). */
function suffixesWithSpaces(instruction: string): string[] {
  const words = instruction.split(' ');
  let firstSource = 1;
  while (firstSource < words.length && words[firstSource]!.startsWith('--')) firstSource++;
  const out: string[] = [];
  for (let k = words.length - 2; k > firstSource; k--) out.push(words.slice(k).join(' '));
  return out;
}

/** Whether a layer holds something at or below a destination: the destination the step wrote. */
function holdsAt(entries: readonly LayerEntry[], destination: string): boolean {
  const dest = contextRelative(destination);
  if (dest === '') return entries.length > 0;
  return entries.some((e) => {
    const p = contextRelative(e.path);
    return p === dest || p.startsWith(`${dest}/`);
  });
}

/** A COPY destination as the builder resolves it: against the working directory; a trailing `/` (or `.`) kept as `/`. */
export function resolveCopyDestination(workdir: string, dest: string): string {
  const dir = dest.endsWith('/') || dest === '.' || dest.endsWith('/.');
  const abs = dest.startsWith('/') ? dest : `${workdir.replace(/\/$/, '')}/${dest}`;
  const clean = cleanPath(abs);
  return dir && clean !== '/' ? `${clean}/` : clean;
}

/** Whether a layer's step is a COPY/ADD whose files a summary can stand for. */
export function summarizable(h: HistoryLayerStep): boolean {
  return h.destination !== undefined && h.step !== undefined && h.step.from === undefined;
}

/**
 * The key a layer's history gives it: the normal form, with the builder's content reference for
 * COPY/ADD that name one. A COPY/ADD naming neither sources nor a reference gets none.
 */
export function historyStepKey(h: HistoryLayerStep): StepKey | undefined {
  const step = h.step;
  if (!step) return undefined;
  if (step.sourcesElided) return step.contentRef ? { instruction: step.instruction, contentDigest: step.contentRef } : undefined;
  return { instruction: step.instruction };
}

/**
 * The key of a COPY/ADD layer by its files (see the module comment): for a history naming the
 * sources (BuildKit, kaniko) it is the key a plan computes for that instruction, `--chown` and
 * `--chmod` included; for a history eliding them, the keyword, owner and destination with a digest
 * that has no flags in it (the modes in the layer already carry a `--chmod`).
 */
export function summaryStepKey(h: HistoryLayerStep, entries: readonly LayerEntry[]): StepKey | undefined {
  const step = h.step;
  if (!step || h.destination === undefined) return undefined;
  if (step.sourcesElided) return { instruction: step.instruction, contentDigest: digestLayerEntries(entries, h.destination) };
  const flags = Object.fromEntries(
    step.instruction
      .split(' ')
      .map((w) => /^--(chown|chmod)=(.*)$/.exec(w))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => [m[1]!, m[2]!]),
  ) as { chown?: string; chmod?: string };
  const destination = [h.destination, ...(h.destinationsWithSpaces ?? [])].find((d) => holdsAt(entries, d)) ?? h.destination;
  return { instruction: step.instruction, contentDigest: digestLayerEntries(entries, destination, flags) };
}

/** The digest a plan gives the files of a COPY for a history that elides its sources: the modes as the layer holds them, no flags. */
export function elidedSummaryDigest(entries: Parameters<typeof digestCopyEntries>[0], chmod?: string): string {
  const forced = chmod !== undefined && /^[0-7]{3,4}$/.test(chmod) ? parseInt(chmod, 8) : undefined;
  return digestCopyEntries(forced === undefined ? entries : entries.map((e) => (e.type === 'file' || e.type === 'dir' ? { ...e, mode: forced } : e)));
}

/** A sparse file larger than this (a `lastlog` of a large uid: mostly holes) is not hashed. */
const LARGEST_HASHED_SPARSE = 1024 * 1024 * 1024;

/**
 * The entries of a layer tar (the stream is consumed): files with their content sha256 (a
 * hardlink as the file it links to), directories, symlinks; other types as `other`.
 */
export async function layerEntries(tarStream: Readable): Promise<LayerEntry[]> {
  // The appliers' reader: names that are not UTF-8 keep their bytes, as the build context's do.
  const reader = new TarStreamReader(tarStream);
  // Stays attached: the reader throws the stream's first error; a later one must not go unhandled.
  tarStream.on('error', () => undefined);
  const out: LayerEntry[] = [];
  const byName = new Map<string, LayerEntry>();
  let ok = false;
  try {
    for (let h = reader.nextSync() ?? (await reader.next()); h !== null; h = reader.nextSync() ?? (await reader.next())) {
      const name = h.name;
      const mode = (h.mode ?? 0) & 0o7777;
      let e: LayerEntry;
      if ((h.type === 'file' || h.type === 'contiguous-file') && sparseSegments(h) !== undefined && (h.size ?? 0) > LARGEST_HASHED_SPARSE) {
        // Not hashed: no build context holds such a file, and its holes would be hashed a byte at a time.
        e = { path: name, type: 'other', mode };
      } else if (h.type === 'file' || h.type === 'contiguous-file') {
        const hash = createHash('sha256');
        for await (const chunk of reader.contentChunks()) hash.update(chunk);
        e = { path: name, type: 'file', mode, sha256: hash.digest('hex') };
      } else if (h.type === 'directory') e = { path: name, type: 'dir', mode };
      else if (h.type === 'symlink') e = { path: name, type: 'symlink', mode, target: h.linkname ?? '' };
      else if (h.type === 'link') {
        const target = byName.get(cleanPath(`/${h.linkname ?? ''}`));
        e = target?.sha256 !== undefined ? { path: name, type: 'file', mode: target.mode, sha256: target.sha256 } : { path: name, type: 'other', mode };
      } else e = { path: name, type: 'other', mode };
      byName.set(cleanPath(`/${name}`), e);
      out.push(e);
    }
    ok = true;
  } finally {
    if (!ok) tarStream.destroy();
  }
  return out;
}
