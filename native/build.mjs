#!/usr/bin/env node
/**
 * Builds native/build/smartlayer.node (see smartlayer.c) at install time (`npm ci` runs it as the
 * package's install script). The addon is an optional speed-up, never a requirement: each library
 * it wraps is compiled in when its headers are there (Debian: libdeflate-dev, libzstd-dev,
 * libisal-dev); with
 * neither, or no C compiler or Node headers, this prints one line saying so and exits 0, and
 * smartlayer uses Node's zlib and the zstd program instead. SMART_NATIVE=0 skips the build.
 * What happened is also written to native/build/status.json ({ built, reason, without }), so that
 * `smart version --verbose` and the warning of a push can say later why the addon is not there.
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

/** Records the outcome for the runtime (src/pipeline/native.ts reads it when the addon is absent). */
function record(status) {
  try {
    fs.mkdirSync(path.dirname(out), { recursive: true });
    fs.writeFileSync(path.join(here, 'build', 'status.json'), `${JSON.stringify(status)}\n`);
  } catch {
    /* a read-only package directory: the runtime then says only that the addon is missing */
  }
}

/** The command that builds it, as src/pipeline/native.ts words it for a clone and for an installed package. */
const fix = fs.existsSync(path.join(here, '..', 'scripts', 'setup-debian.sh'))
  ? 'scripts/setup-debian.sh && npm rebuild'
  : `apt-get install gcc libc6-dev libdeflate-dev libzstd-dev libisal-dev && cd ${path.dirname(here)} && node native/build.mjs`;

/** Says the addon was not built, and why, on stderr and in status.json. */
function notBuilt(reason, without = []) {
  record({ built: false, reason, without });
  say(`native compressor not built (${reason}); gzip will use Node's zlib (slower) and zstd the zstd program; to build it: ${fix}`);
}

if (process.env.SMART_NATIVE === '0') {
  say('SMART_NATIVE=0: native compressor not built');
  // An addon built before stays, and so does its record; else the runtime can say why there is none.
  if (!fs.existsSync(out)) record({ built: false, reason: 'SMART_NATIVE=0 when the package was installed', without: [] });
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
  notBuilt(!cc ? 'no C compiler' : 'no Node headers (node_api.h)');
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
  // ISA-L's igzip: `--compression-level fast` (opt-in; the default stays libdeflate's size).
  { header: 'isa-l.h', define: 'SMART_HAVE_ISAL', link: '-lisal', pkg: 'libisal-dev' },
];
const present = libraries.filter((l) => hasHeader(l.header));
const absent = libraries.filter((l) => !present.includes(l));
const missingNote = absent.length ? `; without ${absent.map((l) => l.header).join(', ')} (apt-get install ${absent.map((l) => l.pkg).join(' ')})` : '';
const without = absent.map((l) => ({ header: l.header, package: l.pkg }));
if (present.length === 0) {
  fs.rmSync(out, { force: true });
  notBuilt(`no ${absent.map((l) => l.header).join(' nor ')}`, without);
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
      // dlsym (sha256 with the process's OpenSSL): in libc since glibc 2.34, in libdl before.
      ...(process.platform === 'linux' ? ['-ldl'] : []),
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  fs.renameSync(tmp, out);
  record({ built: true, without });
  say(`native compressor built with ${present.map((l) => l.header.replace(/\.h$/, '')).join(' and ')}${missingNote}`);
} catch (e) {
  fs.rmSync(tmp, { force: true });
  fs.rmSync(out, { force: true });
  notBuilt(`the compiler failed: ${String(e.stderr ?? e.message).trim().split('\n')[0]}`);
}
