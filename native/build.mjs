#!/usr/bin/env node
/**
 * Builds native/build/smartlayer.node (see smartlayer.c) at install time (`npm ci` runs it as the
 * package's install script). The addon is an optional speed-up, never a requirement: each library
 * it wraps is compiled in when its headers are there (Debian: libdeflate-dev, libzstd-dev); with
 * neither, or no C compiler or Node headers, this prints one line saying so and exits 0, and
 * smartlayer uses the libdeflate-gzip and zstd programs or Node's zlib instead. SMART_NATIVE=0
 * skips the build.
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

/** Whether `#include <header>` compiles here (the library's -dev package is installed). */
function hasHeader(header) {
  try {
    execFileSync(cc, ['-E', '-x', 'c', '-', '-o', '/dev/null'], { input: `#include <${header}>\n`, stdio: ['pipe', 'ignore', 'ignore'] });
    return true;
  } catch {
    return false;
  }
}

const libraries = [
  { header: 'libdeflate.h', define: 'SMART_HAVE_LIBDEFLATE', link: '-ldeflate', pkg: 'libdeflate-dev' },
  { header: 'zstd.h', define: 'SMART_HAVE_ZSTD', link: '-lzstd', pkg: 'libzstd-dev' },
];
const present = libraries.filter((l) => hasHeader(l.header));
const absent = libraries.filter((l) => !present.includes(l));
const missingNote = absent.length ? `; without ${absent.map((l) => l.header).join(', ')} (apt-get install ${absent.map((l) => l.pkg).join(' ')})` : '';
if (present.length === 0) {
  fs.rmSync(out, { force: true });
  say(`native compressor not built${missingNote}; using the libdeflate-gzip and zstd programs or zlib`);
  process.exit(0);
}

fs.mkdirSync(path.dirname(out), { recursive: true });
const tmp = `${out}.${process.pid}.tmp`;
try {
  execFileSync(
    cc,
    [
      '-O2',
      '-shared',
      '-fPIC',
      '-fvisibility=hidden',
      '-DNODE_GYP_MODULE_NAME=smartlayer',
      ...present.map((l) => `-D${l.define}`),
      `-I${headers}`,
      '-o',
      tmp,
      path.join(here, 'smartlayer.c'),
      ...present.map((l) => l.link),
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  fs.renameSync(tmp, out);
  say(`native compressor built with ${present.map((l) => l.header.replace(/\.h$/, '')).join(' and ')}${missingNote}`);
} catch (e) {
  fs.rmSync(tmp, { force: true });
  fs.rmSync(out, { force: true });
  say(`native compressor not built (${String(e.stderr ?? e.message).trim().split('\n')[0]}); using the libdeflate-gzip and zstd programs or zlib`);
}
