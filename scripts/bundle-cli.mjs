#!/usr/bin/env node
/**
 * The command line as a few chunks instead of ~50 modules: `npm run build` runs this after tsc.
 * Reads dist/cli/entry.js (tsc's output) and writes dist/bundle/, which bin/*.js load. The library
 * (dist/index.js and the modules under it) stays as tsc wrote it.
 *
 * Why: a warm push spends more time in Node's ESM loader (resolve, read, compile: per module) than
 * in its own work. Measured on 2 cores, warm push docker-archive → file:, medians of 21 interleaved
 * runs: 50 ms less CPU and 30-50 ms less wall with the `core` chunk below; one chunk of everything
 * (600 kB, every module evaluated by every command) was slower than no bundle at all, and esbuild's
 * splitting (a chunk per dynamic import, 44 loaded by that push) saved 3 ms.
 *
 * The chunks are CommonJS (dist/bundle/package.json says so, as bin/package.json does for bin/),
 * loaded with `require`: Node 20 starts its ES module loader only for an ES module, and that start
 * alone costs ~8 ms here (an empty .mjs file ran in 79 ms, an empty .cjs one in 71, `node -e 0` in
 * 72; medians of 40 alternated runs), of which a command gets back about half (CommonJS compiles no
 * faster): a warm push to file: 121.6 -> 117.8 ms from an OCI layout, 136.7 -> 132.8 ms from a
 * docker save tar (medians of 50 alternated). The packages are loaded with `require` too, the
 * dynamic imports of them included (below): each has a CommonJS entry.
 *
 * The chunks:
 * - `boot`: what turns the compile cache on (src/cli/boot.ts), required first by main.js, so that
 *   the chunks below load with it;
 * - `cli`: the entry's static imports (argument parsing, output, errors), all that `--version`,
 *   `--help` and the commander commands load of ours before their own modules;
 * - `core`: what a push or pull loads on its common path (CORE_ROOTS and what they import
 *   statically);
 * - `registry`: the registry client and registries.conf's reader, loaded together by the first
 *   command that talks to a registry;
 * - `steps`: what a push to a tag new to the layer trie reads its layers' build steps with;
 * - everything else as the dynamic imports cut it, so the lazy stays lazy: commander, the S3 SDK,
 *   tar-stream, the TOML parser, the root filesystem writer load only when used.
 * A module that statically imports a package (or such a module) never joins core: a chunk's
 * static imports run when it loads (the registry chunk takes the packages its modules need). Packages stay external (resolved from node_modules as
 * before), so are `import.meta.url` users: the chunks sit in dist/bundle/, at the depth of every
 * dist/<folder>/ module, so native.js still finds the package root two levels up.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dist = path.join(root, 'dist');
const out = path.join(dist, 'bundle');

// rolldown is native code: on a system it cannot load on (a minimal container base without librt),
// bin/ gets an entry that loads tsc's modules one by one, as before: slower to start, the same
// command. Said once, on stderr, by the build.
let rolldown;
try {
  ({ rolldown } = await import('rolldown'));
} catch (e) {
  fs.rmSync(out, { recursive: true, force: true });
  fs.mkdirSync(out, { recursive: true });
  fs.writeFileSync(path.join(out, 'package.json'), '{ "type": "commonjs" }\n');
  fs.writeFileSync(
    path.join(out, 'main.js'),
    "// rolldown could not load where this was built: the command's modules as tsc wrote them.\nexports.main = (...args) => import('../cli/entry.js').then((m) => m.main(...args));\n",
  );
  process.stderr.write(`bundle-cli: rolldown cannot load here (${String(e?.cause?.cause?.message ?? e?.message).split('\n')[0]}); dist/bundle/main.js loads dist/cli/ module by module\n`);
  process.exit(0);
}

/** The modules a push or pull loads on its common path (stores on disk, layouts, archives); with their static imports. */
const CORE_ROOTS = [
  'cli/main.js',
  'cli/transfer.js',
  'cli/output.js',
  'cli/progress.js',
  'ops/transfer.js',
  'ops/copy.js',
  'cache/metadata-cache.js',
  'cache/blob-info.js',
  'cache/cached-source.js',
  'cache/trie-store.js',
  'ops/build-cache/steps.js',
  'transports/all.js',
  'transports/docker-archive/source.js',
  'transports/oci-layout/layout.js',
  'transports/distribution/store.js',
  'transports/distribution/adapters.js',
  'storage/fs-driver.js',
  'pipeline/layers.js',
];
/** The registry client and registries.conf's reader (without the TOML parser, which a file present needs). */
const REGISTRY_ROOTS = ['transports/registry/adapters.js', 'transports/registry/client.js', 'transports/registry/registries-conf/load.js', 'transports/registry/registries-conf/endpoints.js'];

/** What a push reads the build steps of its layers with, when the tag is new to the trie (the history's normal form, the Dockerfile parser it uses). */
const STEPS_ROOTS = ['trie/image-steps.js'];

/** Every dist module with the relative modules and packages it imports statically. */
function staticImports() {
  const graph = new Map();
  for (const rel of fs.readdirSync(dist, { recursive: true })) {
    if (!rel.endsWith('.js') || rel.startsWith('bundle')) continue;
    const file = path.join(dist, rel);
    const text = fs.readFileSync(file, 'utf8');
    const specs = [...text.matchAll(/^(?:import|export)\s[^'";]*?from\s*'([^']+)'|^import\s*'([^']+)'/gm)].map((m) => m[1] ?? m[2]);
    graph.set(file, {
      modules: specs.filter((s) => s.startsWith('.')).map((s) => path.resolve(path.dirname(file), s)),
      // A package imported at the top.
      package: specs.some((s) => !s.startsWith('.') && !s.startsWith('node:')),
    });
  }
  return graph;
}

const graph = staticImports();
/** Modules whose loading runs a package's code. */
const heavy = new Set();
for (let changed = true; changed; ) {
  changed = false;
  for (const [file, m] of graph) {
    if (heavy.has(file) || !(m.package || m.modules.some((d) => heavy.has(d)))) continue;
    heavy.add(file);
    changed = true;
  }
}
/** `roots` and what they import statically, less `except`; less heavy modules unless `packagesToo`. */
function closure(roots, except, packagesToo = false) {
  const seen = new Set();
  const visit = (file) => {
    if (seen.has(file) || (heavy.has(file) && !packagesToo) || except.has(file) || !graph.has(file)) return;
    seen.add(file);
    for (const d of graph.get(file).modules) visit(d);
  };
  for (const r of roots) {
    const file = path.join(dist, r);
    if (!graph.has(file)) throw new Error(`bundle-cli: ${r} is not in dist/ (a root of a chunk was renamed?)`);
    if (heavy.has(file) && !packagesToo) throw new Error(`bundle-cli: ${r} loads a package at its start: it cannot be in the core chunk`);
    visit(file);
  }
  return seen;
}
// What turns the compile cache on, in a chunk of its own that the entry loads before the others
// (src/cli/boot.ts): every chunk after it is compiled with the cache.
const boot = closure(['cli/boot.js'], new Set());
// The entry's own static imports apart: `--version`, `--help` and the cache commands do not evaluate core.
const cli = closure(['cli/main.js'], boot);
const core = closure(CORE_ROOTS, new Set([...boot, ...cli]));
// The registry chunk's packages come with the client whenever it is used: their loading may come with the chunk.
const registry = closure(REGISTRY_ROOTS, new Set([...boot, ...cli, ...core]), true);
const steps = closure(STEPS_ROOTS, new Set([...boot, ...cli, ...core, ...registry]));

fs.rmSync(out, { recursive: true, force: true });
const bundle = await rolldown({
  input: { main: path.join(dist, 'cli', 'entry.js') },
  platform: 'node',
  external: (id) => !id.startsWith('.') && !path.isAbsolute(id),
  // tsc's output is already the module graph we want; the warnings say a dynamic import of a core
  // module stays a plain import of the chunk, which is the point.
  logLevel: 'silent',
});
await bundle.write({
  dir: out,
  format: 'cjs',
  // The chunks are read by Node, not by people (tsc's modules keep the comments): without comments
  // and with the few non-ASCII characters of string literals escaped (below), each chunk is
  // one-byte text, decoded and scanned on V8's fast paths. A warm push to file: 120.4 -> 118.4 ms
  // (medians of 50 runs alternated), to a registry 152.1 -> 149.6 ms.
  comments: false,
  entryFileNames: '[name].js',
  chunkFileNames: '[name]-[hash].js',
  codeSplitting: {
    groups: [
      { name: 'boot', test: (id) => boot.has(id) },
      { name: 'cli', test: (id) => cli.has(id) },
      { name: 'core', test: (id) => core.has(id) },
      { name: 'registry', test: (id) => registry.has(id) },
      { name: 'steps', test: (id) => steps.has(id) },
    ],
  },
});
await bundle.close();

fs.writeFileSync(path.join(out, 'package.json'), '{ "type": "commonjs" }\n');

// Every chunk is made ASCII: a character past it can only stand in a string, template or regular
// expression literal now (comments are gone), where \uXXXX means the same UTF-16 unit.
//
// rolldown keeps a dynamic import of a package or a builtin as `import()`, which would start the
// ES module loader for it (see the top): it becomes a `require` on a later tick, whose result has
// what `import()` of a CommonJS module gives, the exports by name and as `default`.
const DYNAMIC_IMPORT = /\bimport\("((?:node:)?[@\w][\w./@-]*)"\)/g;
for (const name of fs.readdirSync(out)) {
  if (!name.endsWith('.js')) continue;
  const file = path.join(out, name);
  const text = fs.readFileSync(file, 'utf8');
  const ascii = text.replace(/[^\x00-\x7f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  const rewritten = ascii.replace(DYNAMIC_IMPORT, (_, id) => `Promise.resolve().then(() => { const m = require(${JSON.stringify(id)}); return { ...m, default: m }; })`);
  if (/\bimport\(/.test(rewritten.replace(/"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|`(?:[^`\\]|\\.)*`/g, '""'))) {
    throw new Error(`bundle-cli: ${name} still has an import() the rewrite above does not know`);
  }
  if (rewritten !== text) fs.writeFileSync(file, rewritten);
}
