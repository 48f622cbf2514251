/** Generates the fixture images once per run into a temporary directory, removed at the end. */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import type { TestProject } from 'vitest/node';

declare module 'vitest' {
  export interface ProvidedContext {
    fixturesDir: string;
    /** XDG_CACHE_HOME for every smart the tests run: never the user's own cache. */
    cacheHome: string;
    /** An empty registries.conf: the machine's own must not change what the tests see. */
    registriesConf: string;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'smart-fixtures-'));
  const script = path.resolve(import.meta.dirname, '..', '..', 'fixtures', 'make-fixtures.mjs');
  const { makeFixtures } = (await import(pathToFileURL(script).href)) as { makeFixtures: (dir: string) => Promise<unknown> };
  await makeFixtures(path.join(dir, 'images'));
  project.provide('fixturesDir', dir);
  const cacheHome = path.join(dir, 'cache-home');
  await fs.mkdir(cacheHome);
  project.provide('cacheHome', cacheHome);
  // And for every program a test starts with its own environment built from process.env (a
  // command run by its #! line, a child killed mid-way): the forked workers inherit it, so nothing
  // a test runs writes into the user's own cache (metadata, the packages' compiled code).
  const userCacheHome = process.env.XDG_CACHE_HOME;
  process.env.XDG_CACHE_HOME = cacheHome;
  const registriesConf = path.join(dir, 'registries.conf');
  await fs.writeFile(registriesConf, '# empty: tests choose their mirrors themselves\n');
  project.provide('registriesConf', registriesConf);
  return async () => {
    if (userCacheHome === undefined) delete process.env.XDG_CACHE_HOME;
    else process.env.XDG_CACHE_HOME = userCacheHome;
    await fs.rm(dir, { recursive: true, force: true });
  };
}
