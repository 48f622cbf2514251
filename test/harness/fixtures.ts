/** The fixture images of this run (made by fixtures/make-fixtures.mjs in the global setup). */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { inject } from 'vitest';

export interface FixtureDescriptor {
  mediaType: string;
  digest: string;
  size: number;
}

export interface FixtureImage {
  manifest: FixtureDescriptor;
  config: FixtureDescriptor;
  layers: (FixtureDescriptor & { diffId: string; uncompressedSize: number })[];
  diffIds: string[];
}

export interface Fixtures {
  dir: string;
  /** Absolute path of an output named in fixtures.json `paths`. */
  path(rel: string): string;
  paths: {
    ociBasic: string;
    ociMulti: string;
    ociArchiveBasic: string;
    dockerArchiveBasic: string;
    dockerArchiveBasicOci: string;
    bad: Record<'notAnImage' | 'truncatedLayer' | 'digestMismatch' | 'badManifest' | 'escapeDotdot' | 'escapeHardlink' | 'escapeSymlink', string>;
  };
  basic: FixtureImage & { expectedStdout: string; dockerArchive: { repoTag: string } };
  multi: { manifest: FixtureDescriptor; platforms: Record<string, FixtureImage> };
}

let cached: Fixtures | undefined;

export function fixtures(): Fixtures {
  if (cached) return cached;
  const dir = path.join(inject('fixturesDir'), 'images');
  const facts = JSON.parse(readFileSync(path.join(dir, 'fixtures.json'), 'utf8')) as Omit<Fixtures, 'dir' | 'path'>;
  const abs = (rel: string) => path.join(dir, rel);
  const bad = Object.fromEntries(Object.entries(facts.paths.bad).map(([k, v]) => [k, abs(v)])) as Fixtures['paths']['bad'];
  cached = {
    ...facts,
    dir,
    path: abs,
    paths: {
      ociBasic: abs(facts.paths.ociBasic),
      ociMulti: abs(facts.paths.ociMulti),
      ociArchiveBasic: abs(facts.paths.ociArchiveBasic),
      dockerArchiveBasic: abs(facts.paths.dockerArchiveBasic),
      dockerArchiveBasicOci: abs(facts.paths.dockerArchiveBasicOci),
      bad,
    },
  };
  return cached;
}
