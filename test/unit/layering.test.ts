/**
 * The import rules of the layout in README.md, over the import graph of src/ as the files spell
 * it (static, dynamic and type-only imports and re-exports alike): each area has a rank and imports
 * only areas of a lower one; there is no import cycle anywhere; a transport never imports another;
 * the CLI reaches the library only through ops/ (and errors, tls-trust, redact); the library never prints or
 * exits. A new file, folder or edge that breaks a rule fails here.
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot } from '../harness/run.js';

const SRC = path.join(repoRoot, 'src');

/** Lower rows never import higher ones (README "Develop"): the model first, the CLI and the public API last. */
const RANK: Record<string, number> = {
  'errors.ts': 0,
  // NODE_EXTRA_CA_CERTS deferred: the CLI opts in, the TLS clients of the library apply it.
  'tls-trust.ts': 0,
  'redact.ts': 0,
  // The user's home, when there is one: where the cache directory and the user's files are.
  'home.ts': 0,
  // The ids a user namespace lets this process give files: for the tree applier and the layer store.
  'id-map.ts': 0,
  // Bounds on untrusted input and the one transient-failure test: plain helpers over the error type.
  'limits.ts': 0.5,
  'transient.ts': 0.5,
  // Whether a host is this machine's loopback: for the proxy rules and the registry client.
  'loopback.ts': 0.5,
  // The proxies the environment names, for every client that connects (registries, S3).
  'proxy.ts': 0.75,
  oci: 1,
  tar: 1,
  pipeline: 2,
  dockerfile: 2,
  storage: 3,
  trie: 3,
  cache: 4,
  transports: 5,
  ops: 6,
  cli: 7,
  'index.ts': 7,
};

function files(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? files(path.join(dir, e.name)) : e.name.endsWith('.ts') ? [path.join(dir, e.name)] : []));
}

/** Every relative module a file names: `import … from`, `export … from`, `import(…)` (also in type positions). */
function imports(file: string): string[] {
  const text = fs.readFileSync(file, 'utf8');
  const specs = [...text.matchAll(/\bfrom\s*'(\.[^']+)'|\bimport\s*\(\s*'(\.[^']+)'\s*\)|^\s*import\s*'(\.[^']+)'/gm)].map((m) => m[1] ?? m[2] ?? m[3]!);
  return specs.map((s) => path.resolve(path.dirname(file), s.replace(/\.js$/, '.ts')));
}

const rel = (file: string) => path.relative(SRC, file);
const area = (file: string) => rel(file).split(path.sep)[0]!;
/** The transport folder a file belongs to; undefined outside one (transports/transport.ts and all.ts, the interface and the map, are no transport). */
const transportOf = (file: string) => {
  const parts = rel(file).split(path.sep);
  return parts[0] === 'transports' && parts.length > 2 ? parts[1] : undefined;
};

const all = files(SRC);
const graph = new Map(all.map((f) => [f, imports(f)]));

/** The strongly connected components of more than one file (or a file importing itself): Tarjan's algorithm. */
function cycles(): string[][] {
  let counter = 0;
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const found: string[][] = [];
  const visit = (v: string): void => {
    index.set(v, counter);
    low.set(v, counter++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!graph.has(w)) continue;
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) === index.get(v)) {
      const component: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        component.push(rel(w));
      } while (w !== v);
      if (component.length > 1 || graph.get(v)!.includes(v)) found.push(component.sort());
    }
  };
  for (const v of all) if (!index.has(v)) visit(v);
  return found;
}

describe('module layering', () => {
  it('reads the imports it checks (the graph is not empty, dynamic imports included)', () => {
    expect(all.length).toBeGreaterThan(50);
    const edges = [...graph.values()].flat();
    expect(edges.length).toBeGreaterThan(200);
    expect(imports(path.join(SRC, 'transports', 'oci-layout', 'transport.ts')).some((t) => t.endsWith(path.join('oci-layout', 'layout.ts')))).toBe(true);
  });

  it('gives every area of src/ a rank', () => {
    expect([...new Set(all.map(area))].filter((a) => RANK[a] === undefined)).toEqual([]);
  });

  it('has no import cycle', () => {
    expect(cycles()).toEqual([]);
  });

  it('lower rows never import higher ones, nor areas of their own rank', () => {
    const bad: string[] = [];
    for (const [f, targets] of graph) {
      for (const t of targets) {
        if (area(t) !== area(f) && RANK[area(t)]! >= RANK[area(f)]!) bad.push(`${rel(f)} → ${rel(t)}`);
      }
    }
    expect(bad).toEqual([]);
  });

  it('the model (oci/) imports no stream stage, nor anything but errors and bounds', () => {
    const bad = all.filter((f) => area(f) === 'oci').flatMap((f) => graph.get(f)!.filter((t) => !['oci', 'errors.ts', 'redact.ts', 'limits.ts'].includes(area(t))).map((t) => `${rel(f)} → ${rel(t)}`));
    expect(bad).toEqual([]);
  });

  it('a transport never imports another, nor the map of them all', () => {
    const bad: string[] = [];
    for (const f of all.filter((x) => transportOf(x))) {
      for (const t of graph.get(f)!) {
        const other = transportOf(t);
        if ((other && other !== transportOf(f)) || rel(t) === path.join('transports', 'all.ts')) bad.push(`${rel(f)} → ${rel(t)}`);
      }
    }
    expect(bad).toEqual([]);
  });

  it('the CLI reaches the library only through ops/', () => {
    // redact.ts: what packages print by themselves is redacted as the library's messages are (cli/foreign-output.ts).
    const bad = all
      .filter((f) => area(f) === 'cli')
      .flatMap((f) => graph.get(f)!.filter((t) => !['cli', 'ops', 'errors.ts', 'tls-trust.ts', 'redact.ts'].includes(area(t))).map((t) => `${rel(f)} → ${rel(t)}`));
    expect(bad).toEqual([]);
  });

  it('the library never prints and never exits', () => {
    const bad = all
      .filter((f) => area(f) !== 'cli')
      .filter((f) => /console\.(log|error|warn)|process\.exit\(|process\.std(out|err)\.write/.test(fs.readFileSync(f, 'utf8')))
      .map(rel);
    expect(bad).toEqual([]);
  });
});
