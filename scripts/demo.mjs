#!/usr/bin/env node
/**
 * npm run demo: the main job on the embedded default, no server needed. Makes the bundled fixture
 * image, pushes it (as `docker save` output on stdin) into a registry store on the local
 * filesystem, pushes it again (nothing to send), indexes the store's layer trie and plans what a
 * build of the image could reuse, pulls it back as a runtime bundle, and runs it
 * with runc when runc is there and we are root. Everything happens in a temporary directory,
 * removed at the end (pass --keep to look around).
 */
import { spawn, spawnSync } from 'node:child_process';
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { makeFixtures } from '../fixtures/make-fixtures.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const smartBin = path.join(root, 'bin', 'smart.js');
const keep = process.argv.includes('--keep');

function step(title) {
  process.stderr.write(`\n\x1b[1m== ${title}\x1b[0m\n`);
}

function smart(args, stdinFile) {
  process.stderr.write(`$ smart ${args.join(' ')}${stdinFile ? ` < ${path.basename(stdinFile)}` : ''}\n`);
  return new Promise((resolve, reject) => {
    // The demo keeps its local state (metadata cache, layer store) in its own directory.
    const env = { ...process.env, XDG_CACHE_HOME: path.join(work, 'cache') };
    const child = spawn(process.execPath, [smartBin, ...args], { stdio: [stdinFile ? 'pipe' : 'ignore', 'inherit', 'inherit'], env });
    if (stdinFile) createReadStream(stdinFile).pipe(child.stdin);
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`smart ${args[0]} exited ${code}`))));
  });
}

const work = await fs.mkdtemp(path.join(os.tmpdir(), 'smartlayer-demo-'));
try {
  const fixtures = path.join(work, 'fixtures');
  await makeFixtures(fixtures);
  const archive = path.join(fixtures, 'docker-archive', 'basic.tar');
  const store = path.join(work, 'registry');
  const bundle = path.join(work, 'bundle');

  step('push: a docker-save archive on stdin, straight into registry storage on disk');
  await smart(['push', 'docker-archive:-', `file:${store}#demo/hello:latest`], archive);

  step('push again: every blob is already there, nothing is sent');
  await smart(['push', `docker-archive:${archive}`, `file:${store}#demo/hello:latest`]);

  step('cache: the layer trie of the store, and what it would reuse for this image');
  await smart(['cache', 'index', `file:${store}`]);
  await smart(['cache', 'plan', `file:${store}`, '--image', `docker-archive:${archive}`]);

  step('pull: back out of the store as an OCI runtime bundle');
  await smart(['pull', `file:${store}#demo/hello:latest`, `bundle:${bundle}`]);
  const spec = JSON.parse(await fs.readFile(path.join(bundle, 'config.json'), 'utf8'));
  process.stderr.write(`bundle: ${bundle}\n  process.args = ${JSON.stringify(spec.process.args)}, user ${spec.process.user.uid}:${spec.process.user.gid}, cwd ${spec.process.cwd}\n`);
  process.stderr.write(`  rootfs: ${(await fs.readdir(path.join(bundle, 'rootfs'))).join(' ')}\n`);

  step('run: the bundle under runc');
  const runc = spawnSync('sh', ['-c', 'command -v runc'], { encoding: 'utf8' }).stdout.trim();
  if (runc && process.getuid?.() === 0) {
    const name = `smartlayer-demo-${process.pid}`;
    const r = spawnSync(runc, ['--root', path.join(work, 'runc'), 'run', '--bundle', bundle, name], { stdio: ['ignore', 'inherit', 'inherit'] });
    spawnSync(runc, ['--root', path.join(work, 'runc'), 'delete', '--force', name], { stdio: 'ignore' });
    if (r.status !== 0) throw new Error(`runc exited ${r.status}`);
  } else {
    process.stderr.write(`(skipped: ${runc ? 'runc needs root' : 'runc is not installed'}; try: runc run --bundle ${bundle} demo)\n`);
  }
  process.stderr.write('\ndemo done.\n');
} finally {
  if (keep) process.stderr.write(`kept ${work}\n`);
  else await fs.rm(work, { recursive: true, force: true });
}
