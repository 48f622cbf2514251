/** The build context: .dockerignore semantics, walking, COPY content digests, and the step keys of a Dockerfile. */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { SmartError } from '../../src/errors.js';
import {
  cleanPath,
  collectCopyEntries,
  contextSize,
  copySourcesDigest,
  createMatcher,
  digestCopyEntries,
  digestLayerEntries,
  listContext,
  loadDockerignore,
  parseDockerignore,
  type CopyEntry,
} from '../../src/dockerfile/context.js';
import { parseDockerfile } from '../../src/dockerfile/parser.js';
import { encodeName } from '../../src/tar/byte-names.js';
import { archiveCopyEntries } from '../../src/trie/archive-entries.js';
import { layerEntries } from '../../src/trie/image-steps.js';
import { normalizeCreatedBy } from '../../src/dockerfile/history.js';
import { dockerfileSteps, parseMount } from '../../src/trie/steps.js';
import { tempDir } from '../harness/tmp.js';
import { vendoredArchive } from '../harness/tree.js';

/** Writes files (`name: content`; a name ending in `/` is an empty directory). */
async function tree(files: Record<string, string>, dir?: string): Promise<string> {
  const root = dir ?? (await tempDir('smart-ctx-'));
  for (const [name, content] of Object.entries(files)) {
    const p = path.join(root, name);
    if (name.endsWith('/')) await fs.mkdir(p, { recursive: true });
    else {
      await fs.mkdir(path.dirname(p), { recursive: true });
      await fs.writeFile(p, content);
    }
  }
  return root;
}

async function rejection(p: Promise<unknown>): Promise<SmartError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof SmartError) return e;
    throw e;
  }
  throw new Error('expected a rejection');
}

async function touch(file: string, when: number): Promise<void> {
  await fs.utimes(file, when, when);
}

describe('.dockerignore reading', () => {
  it('skips comments and blanks, trims, cleans, drops a leading slash, keeps ! in front', () => {
    const lines = parseDockerignore('\uFEFF# comment\n\n  /node_modules/  \n!  /keep//me/./x\n  # not a comment\nfoo/../bar\r\n*.log\n');
    expect(lines).toEqual([
      { pattern: 'node_modules', line: 3 },
      { pattern: '!keep/me/x', line: 4 },
      { pattern: '# not a comment', line: 5 },
      { pattern: 'bar', line: 6 },
      { pattern: '*.log', line: 7 },
    ]);
    expect(cleanPath('a//b/./c/..')).toBe('a/b');
    expect(cleanPath('../a/../../b')).toBe('../../b');
    expect(cleanPath('/../x/')).toBe('/x');
  });

  it('refuses malformed patterns naming the line', () => {
    expect(() => createMatcher(parseDockerignore('ok\n[abc\n'), { source: '.dockerignore' })).toThrow(/\.dockerignore:2: syntax error in pattern "\[abc"/);
    expect(() => createMatcher(['!'])).toThrow(/illegal exclusion pattern/);
  });
});

describe('.dockerignore matching', () => {
  const m = (patterns: string[]) => createMatcher(parseDockerignore(patterns.join('\n')));

  it('matches * ? [] per segment and a directory with everything below it', () => {
    const x = m(['*.log', 'tmp?', 'build/[a-c]*', 'docs']);
    expect(x.excluded('app.log')).toBe(true);
    expect(x.excluded('sub/app.log')).toBe(false); // * does not cross /
    expect(x.excluded('tmp1')).toBe(true);
    expect(x.excluded('tmp12')).toBe(false);
    expect(x.excluded('build/alpha')).toBe(true);
    expect(x.excluded('build/delta')).toBe(false);
    expect(x.excluded('docs')).toBe(true);
    expect(x.excluded('docs/deep/file.md')).toBe(true); // parent matches
    expect(x.excluded('docsx')).toBe(false);
    expect(x.excluded('.')).toBe(false); // the root is never excluded
    // Strings are normalised as the ignore-file reader does.
    expect(createMatcher(['/node_modules/', '! /node_modules/keep']).rules.map((r) => [r.pattern, r.exclusion])).toEqual([
      ['node_modules', false],
      ['node_modules/keep', true],
    ]);
  });

  it('** matches any number of directories (including none)', () => {
    const x = m(['**/*.pyc', 'cache/**', '**/node_modules', 'a/**/z']);
    expect(x.excluded('x.pyc')).toBe(true);
    expect(x.excluded('pkg/sub/x.pyc')).toBe(true);
    expect(x.excluded('cache/one/two')).toBe(true);
    expect(x.excluded('cache')).toBe(false); // cache/** matches what is inside
    expect(x.excluded('node_modules/x/index.js')).toBe(true);
    expect(x.excluded('packages/app/node_modules/lodash/package.json')).toBe(true);
    expect(x.excluded('a/z')).toBe(true);
    expect(x.excluded('a/b/c/z')).toBe(true);
    expect(x.excluded('b/a/z')).toBe(false);
  });

  it('! re-includes, and the last matching pattern wins', () => {
    const x = m(['*.md', '!README.md', 'README.md.bak', 'docs', '!docs/keep.md', 'secret*', '!secret.example', 'secret.example']);
    expect(x.excluded('CHANGES.md')).toBe(true);
    expect(x.excluded('README.md')).toBe(false);
    expect(x.excluded('docs/other.md')).toBe(true);
    expect(x.excluded('docs/keep.md')).toBe(false);
    expect(x.excluded('secret.key')).toBe(true);
    expect(x.excluded('secret.example')).toBe(true); // excluded again by the last line
  });

  it('prunes an excluded directory only when no later ! pattern could reach inside', () => {
    const x = m(['node_modules', 'build', '!build/keep.txt', 'vendor', '!**/LICENSE', 'logs', '!other/x']);
    expect(x.mayIncludeInside('node_modules')).toBe(true); // !**/LICENSE could match below anything
    const y = m(['node_modules', 'build', '!build/keep.txt', 'logs', '!other/x', '!*.txt']);
    expect(y.mayIncludeInside('node_modules')).toBe(false);
    expect(y.mayIncludeInside('logs')).toBe(false);
    expect(y.mayIncludeInside('build')).toBe(true);
    // A ! before the excluding pattern cannot re-include: the later pattern wins.
    const z = m(['!dist/keep', 'dist']);
    expect(z.mayIncludeInside('dist')).toBe(false);
  });
});

describe('walking the context', () => {
  afterEach(() => vi.restoreAllMocks());

  it('lists what is sent, skipping excluded trees without reading them, keeping re-included files', async () => {
    const dir = await tree({
      'Dockerfile': 'FROM x\n',
      '.dockerignore': 'node_modules\n.git\nbuild\n!build/keep.txt\nDockerfile\n*.tmp\n',
      'src/index.js': 'console.log(1)\n',
      'src/a.tmp': 'x',
      'node_modules/lodash/index.js': 'module.exports = {}\n',
      '.git/HEAD': 'ref: refs/heads/main\n',
      'build/out.bin': '0123456789',
      'build/keep.txt': 'keep',
      'empty/': '',
    });
    const matcher = await loadDockerignore(dir);
    expect(matcher.source).toBe(path.join(dir, '.dockerignore'));
    const spy = vi.spyOn(fs, 'readdir');
    const sent = await listContext(dir, matcher);
    const read = spy.mock.calls.map((c) => path.relative(dir, String(c[0])));
    expect(read).not.toContain('node_modules');
    expect(read).not.toContain('.git');
    expect(read).toContain('build'); // a ! pattern reaches inside
    // `*.tmp` only matches at the root: src/a.tmp is sent.
    expect(sent.map((e) => `${e.type} ${e.path}`)).toEqual(['file .dockerignore', 'file Dockerfile', 'dir build', 'file build/keep.txt', 'dir empty', 'dir src', 'file src/a.tmp', 'file src/index.js']);
    // COPY does not see the excluded Dockerfile, though it is sent.
    const forCopy = await listContext(dir, matcher, { buildFiles: false });
    expect(forCopy.map((e) => e.path)).not.toContain('Dockerfile');
    const ignoreText = 'node_modules\n.git\nbuild\n!build/keep.txt\nDockerfile\n*.tmp\n';
    expect(await contextSize(dir, matcher)).toBe(ignoreText.length + 'FROM x\n'.length + 'keep'.length + 'x'.length + 'console.log(1)\n'.length);
    expect(await contextSize(dir, createMatcher([]))).toBeGreaterThan(await contextSize(dir, matcher));
  });

  it('prefers <Dockerfile>.dockerignore beside the Dockerfile', async () => {
    const dir = await tree({ '.dockerignore': 'a\n', 'docker/app.Dockerfile': 'FROM x\n', 'docker/app.Dockerfile.dockerignore': 'b\n' });
    const m = await loadDockerignore(dir, { dockerfile: 'docker/app.Dockerfile' });
    expect(m.rules.map((r) => r.pattern)).toEqual(['b']);
    expect(m.alwaysSent).toEqual(['.dockerignore', 'docker/app.Dockerfile']);
    expect((await loadDockerignore(dir)).rules.map((r) => r.pattern)).toEqual(['a']);
    const none = await loadDockerignore(await tree({ x: '' }));
    expect(none.source).toBeUndefined();
    expect(none.rules).toEqual([]);
  });
});

describe('COPY content digests', () => {
  const base = {
    'package.json': '{"name":"app"}\n',
    'package-lock.json': '{"lockfileVersion":3}\n',
    'src/index.js': 'console.log("hi")\n',
    'src/lib/util.js': 'export const x = 1\n',
    'README.md': '# app\n',
    '.env': 'SECRET=1\n',
    '.dockerignore': '.env\n*.md\n',
  };

  it('same content → same digest, whatever the mtimes; a changed included file changes it', async () => {
    const a = await tree(base);
    const b = await tree(base);
    await touch(path.join(b, 'src/index.js'), 1_000_000);
    await touch(path.join(b, 'src'), 2_000_000);
    const ma = await loadDockerignore(a);
    const mb = await loadDockerignore(b);
    const da = await copySourcesDigest(a, ['.'], ma);
    expect(da).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(await copySourcesDigest(b, ['.'], mb)).toBe(da);
    await fs.writeFile(path.join(b, 'src/index.js'), 'console.log("bye")\n');
    expect(await copySourcesDigest(b, ['.'], mb)).not.toBe(da);
  });

  it('a changed file that .dockerignore excludes, or that the sources do not name, changes nothing', async () => {
    const dir = await tree(base);
    const m = await loadDockerignore(dir);
    const all = await copySourcesDigest(dir, ['.'], m);
    const pkg = await copySourcesDigest(dir, ['package.json', 'package-lock.json'], m);
    await fs.writeFile(path.join(dir, '.env'), 'SECRET=2\n');
    await fs.writeFile(path.join(dir, 'README.md'), '# changed\n');
    expect(await copySourcesDigest(dir, ['.'], m)).toBe(all);
    await fs.writeFile(path.join(dir, 'src/index.js'), 'changed\n');
    expect(await copySourcesDigest(dir, ['package.json', 'package-lock.json'], m)).toBe(pkg);
    expect(await copySourcesDigest(dir, ['.'], m)).not.toBe(all);
  });

  it('a mode change changes the digest; --chown and --chmod are part of it', async () => {
    const dir = await tree(base);
    const m = await loadDockerignore(dir);
    const before = await copySourcesDigest(dir, ['src'], m);
    await fs.chmod(path.join(dir, 'src/index.js'), 0o755);
    const after = await copySourcesDigest(dir, ['src'], m);
    expect(after).not.toBe(before);
    expect(await copySourcesDigest(dir, ['src'], m, { chown: '1000' })).not.toBe(after);
    expect(await copySourcesDigest(dir, ['src'], m, { chmod: '644' })).not.toBe(after);
  });

  it('names entries where they land: a directory by its contents, a file by its name; globs per segment', async () => {
    const dir = await tree({ ...base, 'config/a.json': '{}', 'config/b.yaml': 'x: 1', 'config/nested/c.json': '[]' });
    const m = await loadDockerignore(dir);
    const names = async (srcs: string[], opts = {}) => (await collectCopyEntries(dir, srcs, m, { hash: false, ...opts })).map((e) => `${e.type} ${e.path}`);
    expect(await names(['src/'])).toEqual(['file index.js', 'dir lib', 'file lib/util.js']);
    expect(await names(['./src/lib/util.js', 'package.json'])).toEqual(['file package.json', 'file util.js']);
    expect(await names(['config/*.json'])).toEqual(['file a.json']);
    expect(await names(['*.json'])).toEqual(['file package-lock.json', 'file package.json']);
    expect(await names(['c?nfig'])).toEqual(['file a.json', 'file b.yaml', 'dir nested', 'file nested/c.json']);
    expect(await names(['config'], { exclude: ['*.yaml'] })).toEqual(['file a.json', 'dir nested', 'file nested/c.json']);
    expect(await names(['config/a.json'], { parents: true })).toEqual(['file config/a.json']);
    // Sources never climb out of the context.
    expect(await names(['../../package.json'])).toEqual(['file package.json']);
  });

  it('follows a symlink named as a source, keeps symlinks inside directories', async () => {
    const dir = await tree({ 'real/file.txt': 'content', 'real/inner.txt': 'x' });
    await fs.symlink('real/file.txt', path.join(dir, 'link.txt'));
    await fs.symlink('file.txt', path.join(dir, 'real/alias'));
    const m = createMatcher([]);
    const entries = await collectCopyEntries(dir, ['link.txt', 'real'], m);
    expect(entries.map((e) => [e.path, e.type, e.target ?? e.sha256?.slice(0, 8)])).toEqual([
      ['alias', 'symlink', 'file.txt'],
      ['file.txt', 'file', 'ed7002b4'],
      ['inner.txt', 'file', '2d711642'],
      ['link.txt', 'file', 'ed7002b4'],
    ]);
    const d1 = await copySourcesDigest(dir, ['real'], m);
    await fs.unlink(path.join(dir, 'real/alias'));
    await fs.symlink('inner.txt', path.join(dir, 'real/alias'));
    expect(await copySourcesDigest(dir, ['real'], m)).not.toBe(d1);
  });

  it('the same digest from the layer a COPY made (entries under the destination)', async () => {
    const dir = await tree(base);
    const m = await loadDockerignore(dir);
    await fs.chmod(path.join(dir, 'src/index.js'), 0o755);
    const fromContext = await copySourcesDigest(dir, ['src/'], m);
    // What `WORKDIR /app` + `COPY src/ ./src/` leaves in its layer: parents, the destination, the files.
    const sha = (t: string) => createHash('sha256').update(t).digest('hex');
    const layer = [
      { path: 'app/', type: 'dir' as const, mode: 0o755 },
      { path: 'app/src/', type: 'dir' as const, mode: 0o755 },
      { path: 'app/src/index.js', type: 'file' as const, mode: 0o755, sha256: sha(base['src/index.js']) },
      { path: './app/src/lib', type: 'dir' as const, mode: (await fs.stat(path.join(dir, 'src/lib'))).mode & 0o7777 },
      { path: '/app/src/lib/util.js', type: 'file' as const, mode: (await fs.stat(path.join(dir, 'src/lib/util.js'))).mode & 0o7777, sha256: sha(base['src/lib/util.js']) },
    ];
    expect(digestLayerEntries(layer, '/app/src/')).toBe(fromContext);
    expect(digestLayerEntries(layer.map((e) => (e.path.endsWith('index.js') ? { ...e, sha256: sha('other') } : e)), '/app/src/')).not.toBe(fromContext);
    // --chmod replaces the modes on both sides.
    const chmodded = layer.map((e) => (e.type === 'file' || e.path.endsWith('lib') ? { ...e, mode: 0o640 } : e));
    expect(digestLayerEntries(chmodded, '/app/src', { chmod: '640' })).toBe(await copySourcesDigest(dir, ['src/'], m, { chmod: '640' }));
  });

  it('a name that is not UTF-8 (latin-1 café.txt): in the context under its own bytes, and the same digest from the layer GNU tar makes of it', async () => {
    const dir = await tree({ 'src/ok.txt': 'ok\n' });
    const latin1 = (s: string) => Buffer.concat([Buffer.from(`${dir}/src/`), Buffer.from(s, 'latin1')]);
    await fs.writeFile(latin1('caf\xe9.txt'), 'latin-1 name\n');
    await fs.symlink(Buffer.from('caf\xe9.txt', 'latin1'), latin1('lnk'));
    const m = await loadDockerignore(dir);
    const listed = (await listContext(dir, m)).map((e) => encodeName(e.path).toString('latin1'));
    expect(listed).toEqual(expect.arrayContaining(['src/caf\xe9.txt', 'src/lnk']));
    const fromContext = await copySourcesDigest(dir, ['src/'], m);
    // Without the file (as a context whose walk lost it would be): another digest.
    await fs.rm(latin1('caf\xe9.txt'));
    expect(await copySourcesDigest(dir, ['src/'], m)).not.toBe(fromContext);
    await fs.writeFile(latin1('caf\xe9.txt'), 'latin-1 name\n');
    // The layer `COPY src/ /app/src/` makes, written by GNU tar from the same files.
    const layerRoot = await tempDir('smart-ctx-layer-');
    await fs.mkdir(path.join(layerRoot, 'app'));
    execFileSync('cp', ['-a', path.join(dir, 'src'), path.join(layerRoot, 'app', 'src')]);
    const tar = execFileSync('tar', ['--format=posix', '-C', layerRoot, '-cf', '-', 'app']);
    expect(digestLayerEntries(await layerEntries(Readable.from([tar])), '/app/src/')).toBe(fromContext);
  });

  it('ADD of a local archive (tar, gzip, bzip2, xz, zstd): its members, keyed on the archive\'s bytes, which the layer its extraction makes does not hold; anything else is the file', async () => {
    const dir = await tree({ 'data.json': '{}\n', 'nested/' : '' });
    const tar = await vendoredArchive();
    await fs.writeFile(path.join(dir, 'v.tar'), tar);
    for (const [ext, program] of [['gz', 'gzip'], ['bz2', 'bzip2'], ['xz', 'xz'], ['zst', 'zstd']] as const) {
      await fs.writeFile(path.join(dir, `v.tar.${ext}`), execFileSync(program, ['-c', '-q'], { input: tar }));
    }
    await fs.writeFile(path.join(dir, 'data.json.gz'), execFileSync('gzip', ['-c'], { input: '{}\n' }));
    await fs.writeFile(path.join(dir, 'empty.tar'), '');
    await fs.copyFile(path.join(dir, 'v.tar.gz'), path.join(dir, 'nested', 'inner.tar.gz'));
    const m = await loadDockerignore(dir);
    const add = (sources: string[]) => collectCopyEntries(dir, sources, m, { unpack: archiveCopyEntries });
    const members = await add(['v.tar.gz']);
    expect(members.map((e) => [e.path, e.type, e.mode.toString(8), e.target ?? e.sha256?.slice(0, 8) ?? ''])).toEqual([
      ['bin', 'dir', '755', ''],
      ['bin/tool', 'file', '755', createHash('sha256').update('#!/bin/sh\n').digest('hex').slice(0, 8)],
      ['lib', 'dir', '750', ''],
      ['lib/a.txt', 'file', '640', createHash('sha256').update('vendored\n').digest('hex').slice(0, 8)],
      ['lib/b', 'symlink', '777', 'a.txt'],
      ['lib/c.txt', 'file', '640', createHash('sha256').update('vendored\n').digest('hex').slice(0, 8)],
    ]);
    const digest = digestCopyEntries(members);
    const withoutArchive = (entries: CopyEntry[]) => entries.map(({ archiveSha256: _, ...e }) => e);
    const memberDigest = digestCopyEntries(withoutArchive(members));
    for (const ext of ['tar', 'tar.bz2', 'tar.xz', 'tar.zst']) {
      const other = await add([`v.${ext}`]);
      // The same members, but other bytes: every builder keys the step on the archive's bytes.
      expect(digestCopyEntries(withoutArchive(other)), ext).toBe(memberDigest);
      expect(digestCopyEntries(other), ext).not.toBe(digest);
    }
    // Re-compressed with the same members (`gunzip -c | gzip -9 -n`): not the same step either; a copy of the bytes is.
    await fs.writeFile(path.join(dir, 'v.tar.gz'), execFileSync('gzip', ['-9', '-n', '-c'], { input: execFileSync('gzip', ['-d', '-c', path.join(dir, 'v.tar.gz')]) }));
    expect(digestCopyEntries(await add(['v.tar.gz']))).not.toBe(digest);
    await fs.writeFile(path.join(dir, 'v.tar.gz'), execFileSync('gzip', ['-c', '-q'], { input: tar }));
    await fs.copyFile(path.join(dir, 'v.tar.gz'), path.join(dir, 'copy.tar.gz'));
    expect(digestCopyEntries(await add(['copy.tar.gz']))).toBe(digestCopyEntries(await add(['v.tar.gz'])));
    // The layer `ADD v.tar.gz /opt/vendor/` makes, the archive extracted there (written by GNU
    // tar), holds the members and not the archive: it cannot stand for the step.
    const layerRoot = await tempDir('smart-ctx-layer-');
    await fs.mkdir(path.join(layerRoot, 'opt', 'vendor'), { recursive: true });
    execFileSync('tar', ['-C', path.join(layerRoot, 'opt', 'vendor'), '-xf', path.join(dir, 'v.tar.gz')]);
    const layer = execFileSync('tar', ['--format=posix', '-C', layerRoot, '-cf', '-', 'opt']);
    const fromLayer = digestLayerEntries(await layerEntries(Readable.from([layer])), '/opt/vendor/');
    expect(fromLayer).toBe(memberDigest);
    expect(fromLayer).not.toBe(digestCopyEntries(await add(['v.tar.gz'])));
    // Not archives to the builders: a gzip that holds no tar, an empty file; nor an archive inside
    // a directory source, nor any source without `unpack` (COPY).
    expect((await add(['data.json.gz', 'empty.tar'])).map((e) => [e.path, e.type])).toEqual([
      ['data.json.gz', 'file'],
      ['empty.tar', 'file'],
    ]);
    expect((await add(['nested'])).map((e) => e.path)).toEqual(['inner.tar.gz']);
    expect((await collectCopyEntries(dir, ['v.tar.gz'], m)).map((e) => e.path)).toEqual(['v.tar.gz']);
    // Through the Dockerfile: ADD unpacks, `ADD --unpack=false` and COPY take the file.
    await fs.writeFile(path.join(dir, 'Dockerfile'), 'FROM busybox\nADD v.tar.gz /opt/\nADD --unpack=false v.tar.gz /opt/\nCOPY v.tar.gz /opt/\n');
    const steps = (await dockerfileSteps(parseDockerfile(await fs.readFile(path.join(dir, 'Dockerfile'), 'utf8')), { contextDir: dir })).steps;
    const [unpacked, kept, copied] = steps.filter((x) => x.contentDigest).map((x) => x.contentDigest);
    expect(unpacked).toBe(digestCopyEntries(await add(['v.tar.gz'])));
    expect(kept).toBe(copied);
    expect(kept).not.toBe(digest);
  });

  it('a COPY to a destination with a space, as BuildKit writes it (`COPY c.txt /h i/ # buildkit`), is summarised under that destination', async () => {
    const { historyLayerSteps, summaryStepKey } = await import('../../src/trie/image-steps.js');
    const dir = await tree({ 'c.txt': 'c\n' });
    const steps = (await dockerfileSteps(parseDockerfile('FROM base\nCOPY ["c.txt", "/h i/"]\n'), { contextDir: dir })).steps;
    const copy = steps.find((s) => s.keyword === 'COPY')!;
    // The layer BuildKit made of it (written here by GNU tar), and the history it wrote (docker 20.10).
    const layerRoot = await tempDir('smart-ctx-layer-');
    await fs.mkdir(path.join(layerRoot, 'h i'));
    await fs.copyFile(path.join(dir, 'c.txt'), path.join(layerRoot, 'h i', 'c.txt'));
    const layer = execFileSync('tar', ['--format=posix', '-C', layerRoot, '-cf', '-', 'h i']);
    const h = historyLayerSteps([{ created_by: 'ADD file:abc in /' }, { created_by: 'COPY c.txt /h i/ # buildkit' }], 2)![1]!;
    expect(summaryStepKey(h, await layerEntries(Readable.from([layer])))).toEqual({ instruction: copy.instruction, contentDigest: copy.contentDigest });
  });

  it('a directory source\'s own mode is in the step\'s key (BuildKit builds the step again after `chmod 700 src`); the layer, which does not hold it, matches with that said', async () => {
    const { historyLayerSteps, summaryStepKey } = await import('../../src/trie/image-steps.js');
    const dir = await tree({ 'src/a': 'a\n', 'src/sub/b': 'b\n' });
    await fs.chmod(path.join(dir, 'src'), 0o755);
    const text = 'FROM base\nCOPY src/ /src/\nCOPY . /all/\n';
    const stepsOf = async () => (await dockerfileSteps(parseDockerfile(text), { contextDir: dir, builderKeys: true })).steps.filter((x) => x.keyword === 'COPY');
    // The layer BuildKit made (docker 20.10): the destination directory 0755 whatever the source's mode.
    const layerRoot = await tempDir('smart-ctx-layer-');
    execFileSync('cp', ['-a', path.join(dir, 'src'), path.join(layerRoot, 'src')]);
    await fs.chmod(path.join(layerRoot, 'src'), 0o755);
    const layer = execFileSync('tar', ['--format=posix', '-C', layerRoot, '-cf', '-', 'src']);
    const h = historyLayerSteps([{ created_by: 'ADD file:abc in /' }, { created_by: 'COPY src/ /src/ # buildkit' }], 2)![1]!;
    const fromLayer = summaryStepKey(h, await layerEntries(Readable.from([layer])))!;
    const [before, root] = await stepsOf();
    expect(before!.contentDigest).not.toBe(fromLayer.contentDigest);
    expect(before!.alternatives).toContainEqual({ key: fromLayer, unchecked: 'the mode of src itself, which BuildKit keys the step on and no layer holds' });
    await fs.chmod(path.join(dir, 'src'), 0o700);
    const [after] = await stepsOf();
    expect(after!.contentDigest).not.toBe(before!.contentDigest);
    expect(after!.alternatives).toContainEqual({ key: fromLayer, unchecked: expect.stringContaining('the mode of src itself') });
    // The context root's own mode is no part of it (BuildKit reuses `COPY . /all/` after chmod of the context).
    expect(root!.alternatives?.some((a) => a.unchecked !== undefined)).toBe(false);
  });

  it('a missing or excluded source is NOT_FOUND naming the line', async () => {
    const dir = await tree(base);
    const m = await loadDockerignore(dir);
    const missing = await rejection(copySourcesDigest(dir, ['nope.txt'], m, { file: 'Dockerfile', line: 7 }));
    expect(missing.code).toBe('NOT_FOUND');
    expect(missing.message).toBe('Dockerfile:7: COPY source "nope.txt" not found in the build context');
    const excluded = await rejection(copySourcesDigest(dir, ['.env'], m, { file: 'Dockerfile', line: 3 }));
    expect(excluded.code).toBe('NOT_FOUND');
    expect(excluded.hint).toMatch(/excluded by .*\.dockerignore/);
    const glob = await rejection(copySourcesDigest(dir, ['*.md'], m, { file: 'Dockerfile', line: 4 }));
    expect(glob.message).toMatch(/^Dockerfile:4: COPY source "\*\.md": no file/);
  });
});

describe('dockerfileSteps', () => {
  const nodeApp = ['FROM node:20', 'WORKDIR /app', 'COPY package.json package-lock.json ./', 'RUN npm ci', 'COPY . .', 'RUN npm run build', ''].join('\n');
  const files = {
    'Dockerfile': nodeApp,
    '.dockerignore': 'node_modules\n.git\n',
    'package.json': '{"name":"app","version":"1.0.0"}\n',
    'package-lock.json': '{"lockfileVersion":3}\n',
    'src/index.js': 'console.log("v1")\n',
    'node_modules/left-pad/index.js': 'module.exports = 1\n',
  };

  it('the node app: steps, layers, content digests', async () => {
    const dir = await tree(files);
    const { base, steps, chain } = await dockerfileSteps(parseDockerfile(nodeApp), { contextDir: dir });
    expect(base).toBe('node:20');
    expect(chain).toEqual([0]);
    expect(steps.map((s) => [s.line, s.instruction, s.producesLayer, s.contentDigest !== undefined])).toEqual([
      [2, 'WORKDIR /app', true, false],
      [3, 'COPY package.json package-lock.json ./', true, true],
      [4, 'RUN npm ci', true, false],
      [5, 'COPY . .', true, true],
      [6, 'RUN npm run build', true, false],
    ]);
    expect(steps[0]!.layerOptional).toBe(true);
    expect([steps[1]!.destination, steps[3]!.destination]).toEqual(['/app/', '/app/']);
    for (const s of steps) expect(s.key).toMatch(/^sha256:[0-9a-f]{64}$/);
    // The history of an image built from it names the same steps.
    expect(normalizeCreatedBy('RUN /bin/sh -c npm ci # buildkit')?.instruction).toBe(steps[2]!.instruction);
  });

  it('changing src/index.js changes only the keys of the last two layer steps', async () => {
    const dir = await tree(files);
    const df = parseDockerfile(nodeApp);
    const before = (await dockerfileSteps(df, { contextDir: dir })).steps;
    await fs.writeFile(path.join(dir, 'src/index.js'), 'console.log("v2")\n');
    const after = (await dockerfileSteps(df, { contextDir: dir })).steps;
    expect(before.map((s, i) => s.key !== after[i]!.key)).toEqual([false, false, false, true, true]);
    // Alone (not chained), only the COPY . . step differs.
    expect(before.map((s, i) => s.stepKey !== after[i]!.stepKey)).toEqual([false, false, false, true, false]);
    // A change in an ignored file changes nothing.
    await fs.writeFile(path.join(dir, 'node_modules/left-pad/index.js'), 'module.exports = 2\n');
    expect((await dockerfileSteps(df, { contextDir: dir })).steps.map((s) => s.key)).toEqual(after.map((s) => s.key));
  });

  it('changing package.json changes the keys from the first COPY on', async () => {
    const dir = await tree(files);
    const df = parseDockerfile(nodeApp);
    const before = (await dockerfileSteps(df, { contextDir: dir })).steps;
    await fs.writeFile(path.join(dir, 'package.json'), '{"name":"app","version":"1.0.1"}\n');
    const after = (await dockerfileSteps(df, { contextDir: dir })).steps;
    expect(before.map((s, i) => s.key !== after[i]!.key)).toEqual([false, true, true, true, true]);
  });

  it('a changed base or build arg changes every key', async () => {
    const dir = await tree(files);
    const text = `ARG NODE=20\n${nodeApp.replace('FROM node:20', 'FROM node:${NODE}')}`;
    const df = parseDockerfile(text);
    const a = await dockerfileSteps(df, { contextDir: dir });
    const b = await dockerfileSteps(df, { contextDir: dir, buildArgs: { NODE: '22' } });
    expect(a.base).toBe('node:20');
    expect(b.base).toBe('node:22');
    expect(a.steps.every((s, i) => s.key !== b.steps[i]!.key)).toBe(true);
    expect(a.steps.map((s) => s.stepKey)).toEqual(b.steps.map((s) => s.stepKey));
  });

  it('follows stage chains to the external base; COPY --from is external; ARGs, ENV and WORKDIR apply', async () => {
    const dir = await tree({ 'go.mod': 'module x\n', 'go.sum': '', 'main.go': 'package main\n', 'conf/app.toml': 'a = 1\n' });
    const text = [
      'ARG GO=1.22',
      'FROM golang:${GO} AS base',
      'ARG GO',
      'ENV CGO_ENABLED=0 SRC=/src',
      'WORKDIR $SRC',
      'FROM base AS build',
      'ARG VERSION=dev',
      'COPY go.mod go.sum ./',
      'RUN --mount=type=cache,target=/root/go/pkg/mod go mod download',
      'COPY . .',
      'RUN go build -ldflags "-X main.version=$VERSION" -o /out/app .',
      'WORKDIR sub',
      'FROM gcr.io/distroless/static:nonroot',
      'COPY --from=build /out/app /app',
      'COPY conf/ /etc/app/',
      'LABEL org.opencontainers.image.title=app',
      'ENTRYPOINT ["/app"]',
    ].join('\n');
    const df = parseDockerfile(text);
    const build = await dockerfileSteps(df, { contextDir: dir, stage: 'build', buildArgs: { VERSION: '1.2.3' } });
    expect(build.base).toBe('golang:1.22');
    expect(build.chain).toEqual([0, 1]);
    expect(build.steps.map((s) => s.instruction)).toEqual([
      'ARG GO=1.22',
      'ENV CGO_ENABLED=0 SRC=/src',
      'WORKDIR /src',
      'ARG VERSION=1.2.3',
      'COPY go.mod go.sum ./',
      'RUN go mod download',
      'COPY . .',
      'RUN go build -ldflags "-X main.version=$VERSION" -o /out/app .',
      'WORKDIR /src/sub',
    ]);
    expect(build.steps[7]!.buildArgs).toEqual({ VERSION: '1.2.3' });
    const runtime = await dockerfileSteps(df, { contextDir: dir });
    expect(runtime.base).toBe('gcr.io/distroless/static:nonroot');
    const [copyFrom, copyConf] = runtime.steps;
    expect(copyFrom).toMatchObject({ instruction: 'COPY /out/app /app', external: true, from: 'build', producesLayer: true });
    expect(copyFrom!.contentDigest).toBeUndefined();
    expect(copyConf!.contentDigest).toMatch(/^sha256:/);
    // LABEL and ENTRYPOINT make no layer and do not enter the chain of later keys.
    expect(runtime.steps.slice(2).map((s) => [s.instruction, s.producesLayer])).toEqual([
      ['LABEL org.opencontainers.image.title=app', false],
      ['ENTRYPOINT ["/app"]', false],
    ]);
    const unlabelled = await dockerfileSteps(parseDockerfile(text.replace('LABEL org.opencontainers.image.title=app', 'LABEL org.opencontainers.image.title=other')), { contextDir: dir });
    expect(unlabelled.steps[3]!.key).toBe(runtime.steps[3]!.key);
    // The RUN --mount flags change the key, not the normal form.
    const plain = await dockerfileSteps(parseDockerfile(text.replace('--mount=type=cache,target=/root/go/pkg/mod ', '')), { contextDir: dir, stage: 'build', buildArgs: { VERSION: '1.2.3' } });
    expect(plain.steps[5]!.instruction).toBe(build.steps[5]!.instruction);
    expect(plain.steps[5]!.stepKey).not.toBe(build.steps[5]!.stepKey);
  });

  it('keys heredoc COPYs and RUN bind mounts of the context by content', async () => {
    const dir = await tree({ 'requirements.txt': 'flask==3.0.0\n' });
    const text = (req: string) => ['FROM python:3.12-slim', 'COPY <<EOF /etc/app.conf', `mode = ${req}`, 'EOF', 'RUN --mount=type=bind,source=requirements.txt,target=/tmp/r.txt pip install -r /tmp/r.txt'].join('\n');
    const a = await dockerfileSteps(parseDockerfile(text('a')), { contextDir: dir });
    const b = await dockerfileSteps(parseDockerfile(text('b')), { contextDir: dir });
    expect(a.steps[0]!.instruction).toBe('COPY <<EOF /etc/app.conf');
    expect(a.steps[0]!.contentDigest).not.toBe(b.steps[0]!.contentDigest);
    expect(a.steps[1]!.contentDigest).toBe(b.steps[1]!.contentDigest);
    await fs.writeFile(path.join(dir, 'requirements.txt'), 'flask==3.0.1\n');
    const c = await dockerfileSteps(parseDockerfile(text('a')), { contextDir: dir });
    expect(c.steps[1]!.contentDigest).not.toBe(a.steps[1]!.contentDigest);
    // Also known by its command alone, as BuildKit's history writes such a RUN (the mounts and
    // their content left out), the bound files then unchecked.
    expect(c.steps[1]!.alternatives).toEqual([{ key: { instruction: 'RUN pip install -r /tmp/r.txt' }, unchecked: 'the files it bind-mounts from the context' }]);
    expect(parseMount('target=/x')).toEqual({ type: 'bind', source: '.', target: '/x' });
  });

  it('a missing COPY source fails naming the Dockerfile line', async () => {
    const dir = await tree({ 'a.txt': 'a' });
    const e = await rejection(dockerfileSteps(parseDockerfile('FROM x\n\nCOPY a.txt b.txt /dst/\n', 'build/Dockerfile'), { contextDir: dir }));
    expect(e.code).toBe('NOT_FOUND');
    expect(e.message).toBe('build/Dockerfile:3: COPY source "b.txt" not found in the build context');
  });
});

describe('the config a step runs under (what plans compare with a stored image)', () => {
  it("a Dockerfile's own ENV, USER and WORKDIR before each layer, null where a variable of the base's names them", async () => {
    const dir = await tree({ 'a.txt': 'a\n' });
    const df = parseDockerfile(
      'FROM base\nENV A=1 B="two words"\nENV P=/x:$PATH\nRUN one\nUSER app\nWORKDIR /srv\nRUN two\nWORKDIR sub\nUSER $RUNNER\nCOPY a.txt .\n',
    );
    const steps = (await dockerfileSteps(df, { contextDir: dir })).steps.filter((s) => s.producesLayer);
    expect(steps.map((s) => [s.keyword, s.own])).toEqual([
      ['RUN', { env: { A: '1', B: 'two words', P: null } }],
      // A WORKDIR's own layer is made before the directory is the working one.
      ['WORKDIR', { env: { A: '1', B: 'two words', P: null }, user: 'app' }],
      ['RUN', { env: { A: '1', B: 'two words', P: null }, user: 'app', workdir: '/srv' }],
      ['WORKDIR', { env: { A: '1', B: 'two words', P: null }, user: 'app', workdir: '/srv' }],
      ['COPY', { env: { A: '1', B: 'two words', P: null }, user: null, workdir: '/srv/sub' }],
    ]);
  });

  it("a RUN under another SHELL is also keyed as buildah's history writes it (/bin/sh -c), for buildah's plans alone", async () => {
    const dir = await tree({});
    const df = parseDockerfile('FROM base\nSHELL ["/bin/sh", "-ec"]\nRUN echo sh1 > /sh1\nRUN ["echo", "exec"]\n');
    const steps = (await dockerfileSteps(df, { contextDir: dir, builderKeys: true })).steps;
    const run = steps.find((s) => s.line === 3)!;
    expect(run.instruction).toBe('RUN ["/bin/sh","-ec","echo","sh1",">","/sh1"]');
    expect(run.alternatives).toEqual([{ key: { instruction: 'RUN echo sh1 > /sh1' }, builder: 'buildah', onlyForBuilder: true }]);
    // An exec-form RUN takes no shell: nothing else to key it by.
    expect(steps.find((s) => s.line === 4)!.alternatives).toBeUndefined();
  });

  it('a WORKDIR relative to the FROM image\'s is kept below an unknown root, on both sides alike; climbing above it is not known', async () => {
    const dir = await tree({});
    const df = parseDockerfile('FROM base\nWORKDIR app\nWORKDIR sub\nRUN one\nWORKDIR ../other\nRUN two\nWORKDIR ../../..\nRUN three\nWORKDIR /abs\nRUN four\n');
    const steps = (await dockerfileSteps(df, { contextDir: dir })).steps.filter((s) => s.keyword === 'RUN');
    expect(steps.map((s) => s.own?.workdir)).toEqual(['/?base/app/sub', '/?base/app/other', null, '/abs']);
    const { ownConfigAtLayers } = await import('../../src/trie/image-steps.js');
    const history = [
      { created_by: '/bin/sh -c #(nop) ADD file:abc in / ' },
      { created_by: '/bin/sh -c #(nop) WORKDIR app', empty_layer: true },
      { created_by: '/bin/sh -c #(nop) WORKDIR sub', empty_layer: true },
      { created_by: '/bin/sh -c one' },
      { created_by: '/bin/sh -c #(nop) WORKDIR ../other', empty_layer: true },
      { created_by: '/bin/sh -c two' },
    ];
    expect(ownConfigAtLayers(history, 3, 1)?.map((c) => c.workdir)).toEqual([undefined, '/?base/app/sub', '/?base/app/other']);
  });

  it('an ENV pair naming a variable the same ENV sets reads its value from before the ENV, as the builders do', async () => {
    const dir = await tree({});
    const df = parseDockerfile('FROM base\nENV X=1\nENV X=5 Y=$X\nRUN echo "$X" > /v\n');
    const steps = (await dockerfileSteps(df, { contextDir: dir })).steps;
    expect(steps.map((s) => s.instruction)).toEqual(['ENV X=1', 'ENV X=5 Y=1', 'RUN echo "$X" > /v']);
    expect(steps.at(-1)!.own).toEqual({ env: { X: '5', Y: '1' } });
  });

  it('ENV values with spaces, `$`, quotes and `x=y` in them, and buildah\'s unexpanded ones, read alike from the Dockerfile and from each builder\'s history', async () => {
    const { ownConfigAtLayers } = await import('../../src/trie/image-steps.js');
    const dir = await tree({ 'f.txt': 'f\n' });
    const text = 'FROM base\nARG D=/q\nENV E=$D\nENV WEIRD="a b\\$c=d \\"q\\" \\\\back" PATH=/bin:/usr/bin UNI=ünï\nRUN echo $E > /e\n';
    const run = (await dockerfileSteps(parseDockerfile(text), { contextDir: dir })).steps.find((s) => s.keyword === 'RUN')!;
    const env = { E: '/q', WEIRD: 'a b$c=d "q" \\back', PATH: '/bin:/usr/bin', UNI: 'ünï' };
    expect(run.own?.env).toEqual(env);
    // The histories real builds of it wrote (docker 20.10's classic builder and BuildKit, buildah
    // 1.28), and the config's Env they all hold.
    const finalEnv = ['PATH=/bin:/usr/bin', 'E=/q', 'WEIRD=a b$c=d "q" \\back', 'UNI=ünï'];
    const histories = {
      classic: ['/bin/sh -c #(nop)  ARG D=/q', '/bin/sh -c #(nop)  ENV E=/q', '/bin/sh -c #(nop)  ENV WEIRD=a b$c=d "q" \\back PATH=/bin:/usr/bin UNI=ünï', '|1 D=/q /bin/sh -c echo $E > /e'],
      buildkit: ['ARG D=/q', 'ENV E=/q', 'ENV WEIRD=a b$c=d "q" \\back PATH=/bin:/usr/bin UNI=ünï', 'RUN |1 D=/q /bin/sh -c echo $E > /e # buildkit'],
      buildah: ['/bin/sh -c #(nop) ARG D', '/bin/sh -c #(nop) ENV E=$D', '/bin/sh -c #(nop) ENV WEIRD="a b\\$c=d \\"q\\" \\\\back" PATH=/bin:/usr/bin UNI=ünï', '|1 D=/q /bin/sh -c echo $E > /e'],
    };
    for (const [builder, lines] of Object.entries(histories)) {
      const history = [{ created_by: '/bin/sh -c #(nop) ADD file:abc in / ' }, ...lines.map((created_by, i) => ({ created_by, ...(i < 3 ? { empty_layer: true } : {}) }))];
      const own = ownConfigAtLayers(history, 2, 1, finalEnv)?.[1];
      expect(Object.fromEntries(own?.env ?? []), builder).toEqual(env);
    }
    // An image that set only some of them (PATH, UNI) is not the one that ran alike.
    const other = ownConfigAtLayers([{ created_by: 'ADD file:abc in /' }, { created_by: 'ENV PATH=/bin:/usr/bin UNI=ünï', empty_layer: true }, { created_by: 'RUN /bin/sh -c echo $E > /e # buildkit' }], 2, 1, ['PATH=/bin:/usr/bin', 'UNI=ünï']);
    expect(Object.fromEntries(other?.[1]?.env ?? [])).toEqual({ PATH: '/bin:/usr/bin', UNI: 'ünï' });
    // Set twice by buildah, the first unexpanded: not told by the history (null), never a wrong value.
    const twice = ownConfigAtLayers([{ created_by: 'ADD file:abc in /' }, { created_by: '/bin/sh -c #(nop) ENV E=$D', empty_layer: true }, { created_by: '/bin/sh -c x' }, { created_by: '/bin/sh -c #(nop) ENV E=2', empty_layer: true }, { created_by: '/bin/sh -c y' }], 3, 1, ['E=2']);
    expect(twice?.map((c) => c.env.get('E'))).toEqual([undefined, null, '2']);
  });

  it('a history: what the build set after its base, before each layer, as every builder writes it', async () => {
    const { ownConfigAtLayers } = await import('../../src/trie/image-steps.js');
    const history = [
      { created_by: '/bin/sh -c #(nop) ADD file:abc in / ' },
      { created_by: '/bin/sh -c #(nop)  ENV BASE=1', empty_layer: true },
      { created_by: '/bin/sh -c #(nop) WORKDIR /base', empty_layer: true },
      // The build's own, from here: the classic builder's, then BuildKit's forms.
      { created_by: '/bin/sh -c #(nop)  ENV A=1 B=two words', empty_layer: true },
      { created_by: '|1 LEVEL=2 /bin/sh -c echo $A', comment: '' },
      { created_by: 'USER app', comment: 'buildkit.dockerfile.v0', empty_layer: true },
      { created_by: 'WORKDIR /srv', comment: 'buildkit.dockerfile.v0' },
      { created_by: 'RUN |1 LEVEL=3 /bin/sh -c make # buildkit', comment: 'buildkit.dockerfile.v0' },
    ];
    expect(ownConfigAtLayers(history, 4, 3)?.map((c) => ({ ...c, env: Object.fromEntries(c.env) }))).toEqual([
      { env: {}, keyword: 'ADD' },
      { env: { A: '1', B: 'two words' }, args: { LEVEL: '2' }, keyword: 'RUN' },
      { env: { A: '1', B: 'two words' }, user: 'app', keyword: 'WORKDIR' },
      { env: { A: '1', B: 'two words' }, user: 'app', workdir: '/srv', args: { LEVEL: '3' }, keyword: 'RUN' },
    ]);
    // History and layers that do not line up: nothing said.
    expect(ownConfigAtLayers(history, 5, 3)).toBeUndefined();
  });
});
