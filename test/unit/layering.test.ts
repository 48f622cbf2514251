/**
 * The import rules of the layout in README.md: lower rows never import higher ones, a transport
 * never imports another, the CLI reaches the library only through ops/ (and errors, runtime), and the
 * library never prints or exits.
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot } from '../harness/run.js';

const SRC = path.join(repoRoot, 'src');
const RANK: Record<string, number> = { 'errors.ts': 0, 'runtime.ts': 0, 'redact.ts': 0, oci: 1, pipeline: 1, tar: 1, storage: 2, cache: 2, trie: 2, transports: 3, ops: 4, cli: 5, 'index.ts': 5 };

function files(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? files(path.join(dir, e.name)) : e.name.endsWith('.ts') ? [path.join(dir, e.name)] : []));
}

function imports(file: string): string[] {
  const text = fs.readFileSync(file, 'utf8');
  return [...text.matchAll(/(?:from|import)\s*\(?\s*'(\.[^']+)'/g)].map((m) => path.resolve(path.dirname(file), m[1]!.replace(/\.js$/, '.ts')));
}

const area = (file: string) => path.relative(SRC, file).split(path.sep)[0]!;
/** The transport folder a file belongs to; undefined outside one (transports/transport.ts and all.ts, the interface and the map, are no transport). */
const transportOf = (file: string) => {
  const parts = path.relative(SRC, file).split(path.sep);
  return parts[0] === 'transports' && parts.length > 2 ? parts[1] : undefined;
};

describe('module layering', () => {
  const all = files(SRC);

  it('lower rows never import higher ones', () => {
    const bad: string[] = [];
    for (const f of all) {
      for (const target of imports(f)) {
        // oci/ may use the stream stages to verify what its helpers open (same row).
        if ((RANK[area(target)] ?? 9) > (RANK[area(f)] ?? 9)) bad.push(`${path.relative(SRC, f)} → ${path.relative(SRC, target)}`);
      }
    }
    expect(bad).toEqual([]);
  });

  it('a transport never imports another', () => {
    const bad: string[] = [];
    for (const f of all.filter((x) => transportOf(x))) {
      for (const target of imports(f)) {
        const t = transportOf(target);
        if (t && t !== transportOf(f)) {
          bad.push(`${path.relative(SRC, f)} → ${path.relative(SRC, target)}`);
        }
      }
    }
    expect(bad).toEqual([]);
  });

  it('the CLI reaches the library only through ops/', () => {
    const bad = all
      .filter((f) => area(f) === 'cli')
      .flatMap((f) => imports(f).filter((t) => !['cli', 'ops', 'errors.ts', 'runtime.ts'].includes(area(t))).map((t) => `${path.relative(SRC, f)} → ${path.relative(SRC, t)}`));
    expect(bad).toEqual([]);
  });

  it('the library never prints and never exits', () => {
    const bad = all
      .filter((f) => area(f) !== 'cli')
      .filter((f) => /console\.(log|error|warn)|process\.exit\(|process\.std(out|err)\.write/.test(fs.readFileSync(f, 'utf8')))
      .map((f) => path.relative(SRC, f));
    expect(bad).toEqual([]);
  });
});
