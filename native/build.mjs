#!/usr/bin/env node
/**
 * Builds native/build/smartlayer.node (see smartlayer.c) at install time (`npm ci` runs it as the
 * package's install script). The addon is an optional speed-up, never a requirement: when there
 * is no C compiler, no Node headers or no libdeflate headers (Debian: gcc, libdeflate-dev), this
 * prints one line saying so and exits 0, and smartlayer uses the libdeflate-gzip program or Node's
 * zlib instead. SMART_NATIVE=0 skips the build.
 *
 * Plain `cc`, not node-gyp: one C file, Node-API only (no libnode symbols to link), and no Python.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const out = path.join(here, 'build', 'smartlayer.node');
const say = (msg) => console.error(`smartlayer: ${msg}`);

if (process.env.SMART_NATIVE === '0') {
  say('SMART_NATIVE=0: native compressor not built');
  process.exit(0);
}

function nodeHeaders() {
  const candidates = [
    process.env.npm_config_nodedir && path.join(process.env.npm_config_nodedir, 'include', 'node'),
    path.join(path.dirname(process.execPath), '..', 'include', 'node'),
    '/usr/include/node',
    '/usr/local/include/node',
  ].filter(Boolean);
  return candidates.find((d) => fs.existsSync(path.join(d, 'node_api.h'))) ?? null;
}

function compiler() {
  for (const cc of [process.env.CC, 'cc', 'gcc', 'clang'].filter(Boolean)) {
    try {
      execFileSync(cc, ['--version'], { stdio: 'ignore' });
      return cc;
    } catch {
      /* next */
    }
  }
  return null;
}

const headers = nodeHeaders();
const cc = compiler();
if (!headers || !cc) {
  say(`native compressor not built (${!cc ? 'no C compiler' : 'no Node headers (node_api.h)'}); using libdeflate-gzip or zlib`);
  process.exit(0);
}

fs.mkdirSync(path.dirname(out), { recursive: true });
const tmp = `${out}.${process.pid}.tmp`;
try {
  execFileSync(
    cc,
    ['-O2', '-shared', '-fPIC', '-fvisibility=hidden', '-DNODE_GYP_MODULE_NAME=smartlayer', `-I${headers}`, '-o', tmp, path.join(here, 'smartlayer.c'), '-ldeflate'],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  fs.renameSync(tmp, out);
  say(`native compressor built (${path.relative(process.cwd(), out) || out})`);
} catch (e) {
  fs.rmSync(tmp, { force: true });
  const stderr = String(e.stderr ?? e.message);
  const why = /libdeflate\.h|-ldeflate/.test(stderr) ? 'libdeflate headers missing: apt-get install libdeflate-dev' : stderr.trim().split('\n')[0];
  say(`native compressor not built (${why}); using libdeflate-gzip or zlib`);
}
