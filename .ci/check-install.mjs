#!/usr/bin/env node
/**
 * What a user gets from `npm pack` and `npm install -g`: packs the project, installs the tarball
 * globally under a private prefix (never the machine's own), and runs the installed commands: both
 * names' --version, a push of a fixture image into a registry store and a pull back out. Also checks
 * what the tarball holds (LICENSE; no source maps pointing at sources it does not ship; no test
 * fixtures). Not a vitest test: `npm install -g` of a tarball resolves the dependencies' version
 * ranges against the npm registry (a lock file does not travel in the tarball), which tests on
 * loopback cannot reach. .ci/run runs it after the tests.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { makeFixtures } from '../fixtures/make-fixtures.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { version } = JSON.parse(await fs.readFile(path.join(root, 'package.json'), 'utf8'));

function sh(cmd, args, options = {}) {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], ...options });
}

function check(ok, what) {
  if (!ok) throw new Error(`check-install: ${what}`);
}

const work = await fs.mkdtemp(path.join(os.tmpdir(), 'smartlayer-install-'));
try {
  // `npm pack` runs `prepare` (the build), as a publish would.
  const tarball = path.join(work, sh('npm', ['pack', '--silent', '--pack-destination', work], { cwd: root }).trim().split('\n').pop());
  const files = sh('tar', ['tzf', tarball]).split('\n').filter(Boolean);
  check(files.includes('package/LICENSE'), 'the tarball has no LICENSE');
  check(!files.some((f) => f.endsWith('.map')), `the tarball ships source maps of sources it does not ship: ${files.filter((f) => f.endsWith('.map')).slice(0, 3).join(', ')}`);
  check(!files.some((f) => f.startsWith('package/fixtures/') || f.startsWith('package/test/') || f.startsWith('package/src/')), 'the tarball ships sources, tests or fixtures');

  const prefix = path.join(work, 'prefix');
  sh('npm', ['install', '--global', '--prefix', prefix, '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error', tarball], { cwd: work });
  const bin = (name) => path.join(prefix, 'bin', name);
  // Every command with a cache home of its own, removed with the rest: nothing in the machine's ~/.cache.
  const env = { ...process.env, XDG_CACHE_HOME: path.join(work, 'cache') };
  for (const name of ['smart', 'smartlayer']) check(sh(bin(name), ['--version'], { env }).trim() === version, `${name} --version is not ${version}`);
  if (process.env.CI === 'true') {
    // CI has the compiler and headers (scripts/setup-debian.sh): the install script must have built the addon.
    await fs.access(path.join(prefix, 'lib', 'node_modules', 'smartlayer', 'native', 'build', 'smartlayer.node')).catch(() => {
      throw new Error('check-install: the install script did not build the native compressors');
    });
  }

  const fixtures = path.join(work, 'fixtures');
  await makeFixtures(fixtures);
  const store = path.join(work, 'store');
  const pushed = JSON.parse(sh(bin('smart'), ['push', '-q', '--json', `docker-archive:${path.join(fixtures, 'docker-archive', 'basic.tar')}`, `file:${store}#demo/app:1`], { env }));
  const tag = await fs.readFile(path.join(store, 'docker/registry/v2/repositories/demo/app/_manifests/tags/1/current/link'), 'utf8');
  check(tag === pushed.manifestDigest, `the pushed tag names ${tag}, the summary ${pushed.manifestDigest}`);
  sh(bin('smart-pull'), ['-q', `file:${store}#demo/app:1`, `oci:${path.join(work, 'layout')}:1`], { env });
  // The pull writes an OCI manifest for the store's Docker one: the same layers, other media types.
  const blob = async (dir, digest) => JSON.parse(await fs.readFile(dir === store ? path.join(store, 'docker/registry/v2/blobs/sha256', digest.slice(7, 9), digest.slice(7), 'data') : path.join(dir, 'blobs/sha256', digest.slice(7)), 'utf8'));
  const layout = path.join(work, 'layout');
  const index = JSON.parse(await fs.readFile(path.join(layout, 'index.json'), 'utf8'));
  const layers = async (dir, digest) => (await blob(dir, digest)).layers.map((l) => l.digest).join();
  check((await layers(layout, index.manifests[0].digest)) === (await layers(store, pushed.manifestDigest)), 'the image pulled back does not have the layers pushed');
  console.error(`check-install: ${path.basename(tarball)} installs with npm install -g; smart, smartlayer and smart-pull run from it`);
} finally {
  await fs.rm(work, { recursive: true, force: true });
}
