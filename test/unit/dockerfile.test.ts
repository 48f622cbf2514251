/** The Dockerfile parser and the normal form of build steps (from a Dockerfile and from image histories). */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { SmartError } from '../../src/errors.js';
import { expandWord, findStage, parseDockerfile, type Instruction } from '../../src/dockerfile/parser.js';
import { instructionsMatch, normalizeCreatedBy, normalizeInstruction } from '../../src/dockerfile/history.js';
import { dockerfileSteps } from '../../src/trie/steps.js';

function error(fn: () => unknown): SmartError {
  try {
    fn();
  } catch (e) {
    if (e instanceof SmartError) return e;
    throw e;
  }
  throw new Error('expected an error');
}

const HEX = 'f1d4bc1bb4ae1c8d3e8b8a6f0c8c5a5b2e3d4c5b6a798081726354453627181a';

describe('parseDockerfile: lines', () => {
  it('joins continuations, skips comments and empty continuation lines, keeps line numbers', () => {
    const df = parseDockerfile(
      [
        '# syntax=docker/dockerfile:1',
        '# a comment',
        'FROM alpine:3.20',
        '',
        'RUN apk add --no-cache \\',
        '    curl \\',
        '# comment inside the continuation',
        '',
        '    git',
        'run echo done',
      ].join('\n'),
    );
    expect(df.directives).toEqual({ syntax: 'docker/dockerfile:1' });
    const [from, run, run2] = df.instructions;
    expect(from).toMatchObject({ keyword: 'FROM', startLine: 3, endLine: 3, words: ['alpine:3.20'] });
    expect(run).toMatchObject({ keyword: 'RUN', startLine: 5, endLine: 9, json: false });
    expect(run!.args).toBe('apk add --no-cache     curl     git');
    expect(run2).toMatchObject({ keyword: 'RUN', startLine: 10, args: 'echo done' });
    expect(df.warnings).toHaveLength(1);
    expect(df.warnings[0]).toMatch(/^Dockerfile:9: empty continuation line/);
  });

  it('honours the escape directive (backtick) and CRLF line endings', () => {
    const df = parseDockerfile('# escape=`\r\nFROM mcr.microsoft.com/windows/servercore:ltsc2022\r\nRUN dir c:\\ `\r\n    && echo hi\r\nCOPY a.txt c:\\app\\\r\n');
    expect(df.escape).toBe('`');
    expect(df.instructions[1]).toMatchObject({ keyword: 'RUN', args: 'dir c:\\     && echo hi', startLine: 3, endLine: 4 });
    // With the backtick escape, a trailing backslash is an ordinary character.
    expect(df.instructions[2]).toMatchObject({ keyword: 'COPY', words: ['a.txt', 'c:\\app\\'], startLine: 5, endLine: 5 });
  });

  it('an escaped escape at the end of a line does not continue it', () => {
    const df = parseDockerfile('FROM a\nRUN echo foo\\\\\nRUN echo bar\n');
    expect(df.instructions.map((i) => i.args)).toEqual(['a', 'echo foo\\\\', 'echo bar']);
  });

  it('a directive after the first instruction or comment is an ordinary comment', () => {
    const df = parseDockerfile('# hello\n# escape=`\nFROM a\n');
    expect(df.escape).toBe('\\');
    expect(df.directives).toEqual({});
  });

  it('tells JSON (exec) form from shell form', () => {
    const df = parseDockerfile(
      ['FROM node:20', 'RUN ["npm", "ci"]', 'RUN [ -f x ] && echo yes', 'CMD ["node", "server.js"]', 'ENTRYPOINT node server.js', 'SHELL ["/bin/bash", "-o", "pipefail", "-c"]', 'COPY ["a b.txt", "/app/"]', 'VOLUME /data /logs'].join('\n'),
    );
    const [, exec, shell, cmd, entry, sh, copy, vol] = df.instructions as Instruction[];
    expect(exec).toMatchObject({ json: true, words: ['npm', 'ci'] });
    expect(shell).toMatchObject({ json: false, words: ['[ -f x ] && echo yes'] });
    expect(cmd).toMatchObject({ json: true, words: ['node', 'server.js'] });
    expect(entry).toMatchObject({ json: false, words: ['node server.js'] });
    expect(sh).toMatchObject({ json: true, words: ['/bin/bash', '-o', 'pipefail', '-c'] });
    expect(copy).toMatchObject({ json: true, words: ['a b.txt', '/app/'] });
    expect(vol).toMatchObject({ json: false, words: ['/data', '/logs'] });
  });

  it('extracts flags: COPY --from/--chown/--chmod/--link, RUN --mount (repeatable), FROM --platform', () => {
    const df = parseDockerfile(
      [
        'FROM --platform=$BUILDPLATFORM golang:1.22 AS build',
        'RUN --mount=type=cache,target=/root/.cache/go-build --mount=type=bind,source=go.sum,target=go.sum go build ./...',
        'FROM alpine:3.20',
        'COPY --from=build --chown=1000:1000 --chmod=755 --link /out/app /usr/local/bin/app',
        'COPY --link=false "--not-a-flag" /x',
      ].join('\n'),
    );
    const run = df.instructions[1]!;
    expect(run.flags.map((f) => [f.name, f.value])).toEqual([
      ['mount', 'type=cache,target=/root/.cache/go-build'],
      ['mount', 'type=bind,source=go.sum,target=go.sum'],
    ]);
    expect(run.args).toBe('go build ./...');
    const copy = df.instructions[3]!;
    expect(copy.flags.map((f) => [f.name, f.value])).toEqual([
      ['from', 'build'],
      ['chown', '1000:1000'],
      ['chmod', '755'],
      ['link', undefined],
    ]);
    expect(copy.words).toEqual(['/out/app', '/usr/local/bin/app']);
    // Only words starting with `--` are flags: a quoted one is an argument.
    expect(df.instructions[4]!.flags.map((f) => f.raw)).toEqual(['--link=false']);
    expect(df.instructions[4]!.words).toEqual(['"--not-a-flag"', '/x']);
    expect(df.stages[0]).toMatchObject({ name: 'build', baseRaw: 'golang:1.22', base: 'golang:1.22' });
    expect(df.stages[0]!.platform).toMatch(/^linux\//);
  });

  it('keeps heredocs as text (RUN, COPY, several, <<- chomp, quoted terminators)', () => {
    const df = parseDockerfile(
      [
        'FROM debian:12',
        'RUN <<EOF',
        'apt-get update',
        'apt-get install -y curl',
        'EOF',
        'COPY <<-"CONF" /etc/app.conf',
        '\tkey = $VALUE',
        '\tCONF',
        'RUN <<A cat > /a && <<B cat > /b',
        'first',
        'A',
        'second',
        'B',
        'RUN echo after',
      ].join('\n'),
    );
    const [, run, copy, two, after] = df.instructions;
    expect(run).toMatchObject({ keyword: 'RUN', startLine: 2, endLine: 5, words: ['<<EOF'] });
    expect(run!.heredocs).toEqual([{ name: 'EOF', content: 'apt-get update\napt-get install -y curl\n', expand: true, chomp: false, fd: undefined }]);
    expect(copy).toMatchObject({ keyword: 'COPY', startLine: 6, endLine: 8, words: ['<<-"CONF"', '/etc/app.conf'] });
    expect(copy!.heredocs).toEqual([{ name: 'CONF', content: '\tkey = $VALUE\n', expand: false, chomp: true, fd: undefined }]);
    expect(two!.heredocs.map((h) => [h.name, h.content])).toEqual([
      ['A', 'first\n'],
      ['B', 'second\n'],
    ]);
    expect(after).toMatchObject({ startLine: 14, args: 'echo after' });
  });

  it('parses ENV, LABEL, ARG pairs (legacy form too) and ONBUILD triggers', () => {
    const df = parseDockerfile(['ARG A', 'ARG B=1 C="two words"', 'FROM x', 'ENV PATH=/app/bin:$PATH NODE_ENV="production"', 'ENV LEGACY value with spaces', 'LABEL org.opencontainers.image.title="My app"', 'ONBUILD COPY . /src'].join('\n'));
    expect(df.globalArgs.flatMap((a) => a.pairs)).toEqual([
      { key: 'A', value: undefined },
      { key: 'B', value: '1' },
      { key: 'C', value: '"two words"' },
    ]);
    expect(df.instructions[3]!.pairs).toEqual([
      { key: 'PATH', value: '/app/bin:$PATH' },
      { key: 'NODE_ENV', value: '"production"' },
    ]);
    expect(df.instructions[4]!.pairs).toEqual([{ key: 'LEGACY', value: 'value with spaces' }]);
    expect(df.instructions[6]!.trigger).toMatchObject({ keyword: 'COPY', words: ['.', '/src'] });
  });
});

describe('parseDockerfile: stages and ARG substitution in FROM', () => {
  const text = [
    'ARG REGISTRY=docker.io',
    'ARG NODE_VERSION=20',
    'ARG BASE=${REGISTRY}/library/node:${NODE_VERSION}-slim',
    'ARG VARIANT',
    'FROM $BASE AS deps',
    'RUN npm ci',
    'FROM deps AS build',
    'RUN npm run build',
    'FROM node:${NODE_VERSION:-18}-${VARIANT:-alpine} AS runtime',
    'FROM ${MISSING:-busybox}:${NODE_VERSION}',
  ].join('\n');

  it('substitutes global ARG defaults ($VAR, ${VAR}, ${VAR:-default}) and names stages', () => {
    const df = parseDockerfile(text);
    expect(df.stages.map((s) => [s.index, s.name, s.base])).toEqual([
      [0, 'deps', 'docker.io/library/node:20-slim'],
      [1, 'build', 'deps'],
      [2, 'runtime', 'node:20-alpine'],
      [3, undefined, 'busybox:20'],
    ]);
    expect(df.stages[0]!.instructions.map((i) => i.args)).toEqual(['npm ci']);
    expect(findStage(df).index).toBe(3);
    expect(findStage(df, 'BUILD').index).toBe(1);
    expect(findStage(df, 2).name).toBe('runtime');
    expect(error(() => findStage(df, 'nope')).code).toBe('USAGE');
  });

  it('lets build args override the defaults', () => {
    const df = parseDockerfile(text, 'Dockerfile', { buildArgs: { NODE_VERSION: '22', VARIANT: 'bookworm' } });
    expect(df.stages.map((s) => s.base)).toEqual(['docker.io/library/node:22-slim', 'deps', 'node:22-bookworm', 'busybox:22']);
    // An ARG not declared before FROM is not visible to FROM, even when given.
    const other = parseDockerfile('FROM alpine:${TAG:-3.20}\n', 'Dockerfile', { buildArgs: { TAG: 'edge' } });
    expect(other.stages[0]!.base).toBe('alpine:3.20');
  });
});

describe('parseDockerfile: malformed input', () => {
  const cases: [string, RegExp][] = [
    ['', /^Dockerfile:1: file with no instructions/],
    ['FROM a\nFROBNICATE x\n', /^Dockerfile:2: unknown instruction: FROBNICATE/],
    ['RUN echo before FROM\n', /^Dockerfile:1: no build stage/],
    ['FROM a b\n', /^Dockerfile:1: FROM requires either one or three arguments/],
    ['FROM a AS 1bad\n', /^Dockerfile:1: invalid name for build stage/],
    ['FROM a AS x\nFROM b AS X\n', /^Dockerfile:2: duplicate stage name "x"/],
    ['FROM a\n\nCOPY onlyone\n', /^Dockerfile:3: COPY requires at least two arguments/],
    ['FROM a\nRUN ["npm", 1]\n', /^Dockerfile:2: when using JSON array syntax/],
    ['FROM a\nENV A=1 B\n', /^Dockerfile:2: Syntax error - can't find =/],
    ['FROM a\nENV ONLYKEY\n', /^Dockerfile:2: ENV must have two arguments/],
    ['FROM a\nCOPY --frm=x a b\n', /^Dockerfile:2: unknown flag: --frm/],
    ['FROM a\nCOPY --from a b\n', /^Dockerfile:2: missing a value on flag: --from/],
    ['FROM a\nRUN <<EOF\necho\n', /^Dockerfile:2: unterminated heredoc <<EOF/],
    ['FROM a\nSHELL /bin/bash -c\n', /^Dockerfile:2: SHELL requires the arguments to be in JSON form/],
    ['# escape=x\nFROM a\n', /^Dockerfile:1: invalid escape token/],
    ['ARG V=${X\nFROM a:$V\n', /^Dockerfile:1: syntax error: missing '}'/],
    ['FROM ${NOTHING}\n', /^Dockerfile:1: base name \(\$\{NOTHING\}\) should not be blank/],
    ['FROM a\nONBUILD FROM b\n', /^Dockerfile:2: FROM isn't allowed as an ONBUILD trigger/],
  ];
  it.each(cases)('%j', (text, message) => {
    const e = error(() => parseDockerfile(text));
    expect(e.code).toBe('USAGE');
    expect(e.message).toMatch(message);
  });

  it('names the file given', () => {
    expect(error(() => parseDockerfile('FROM a\nBAD x', 'ci/Dockerfile.prod')).message).toMatch(/^ci\/Dockerfile\.prod:2: /);
  });
});

describe('expandWord', () => {
  const env: Record<string, string> = { A: 'alpha', EMPTY: '', FILE: 'archive.tar.gz' };
  const x = (w: string, skipUnset = false) => expandWord(w, { lookup: (n) => env[n], skipUnset });
  it('substitutes like the builder', () => {
    expect(x('$A/${A}')).toBe('alpha/alpha');
    expect(x('${UNSET:-def} ${EMPTY:-def} ${EMPTY-def}')).toBe('def def ');
    expect(x('${A:+set} ${UNSET:+set}')).toBe('set ');
    expect(x("'$A' \"$A\" \\$A")).toBe('$A alpha $A');
    expect(x('${FILE%.*} ${FILE%%.*} ${FILE#*.} ${FILE##*.}')).toBe('archive.tar archive tar.gz gz');
    expect(x('${FILE/tar/zip}')).toBe('archive.zip.gz');
    expect(x('$UNSET-$A')).toBe('-alpha');
    expect(x('$UNSET ${UNSET:-x}', true)).toBe('$UNSET ${UNSET:-x}');
    expect(() => x('${UNSET:?must be set}')).toThrow(/UNSET: must be set/);
  });
});

describe('history normal form', () => {
  it('reads the classic builder', () => {
    expect(normalizeCreatedBy('/bin/sh -c #(nop)  CMD ["node" "server.js"]')).toEqual({ instruction: 'CMD ["node","server.js"]' });
    expect(normalizeCreatedBy('/bin/sh -c #(nop)  CMD ["/bin/sh" "-c" "node server.js"]')).toEqual({ instruction: 'CMD node server.js' });
    expect(normalizeCreatedBy(`/bin/sh -c #(nop) COPY file:${HEX} in /app `)).toEqual({
      instruction: 'COPY /app',
      contentRef: `file:${HEX}`,
      sourcesElided: true,
      destination: '/app',
    });
    expect(normalizeCreatedBy(`/bin/sh -c #(nop) ADD dir:${HEX} in / `)).toMatchObject({ instruction: 'ADD /', contentRef: `dir:${HEX}` });
    expect(normalizeCreatedBy('/bin/sh -c apt-get update &&     apt-get install -y   curl')).toEqual({ instruction: 'RUN apt-get update && apt-get install -y curl' });
    expect(normalizeCreatedBy('|1 VERSION=1.2.3 /bin/sh -c make VERSION=$VERSION')).toEqual({ instruction: 'RUN make VERSION=$VERSION', buildArgs: { VERSION: '1.2.3' } });
    expect(normalizeCreatedBy('/bin/sh -c #(nop) WORKDIR /app')).toEqual({ instruction: 'WORKDIR /app' });
    expect(normalizeCreatedBy('/bin/sh -c #(nop)  ENV NODE_VERSION=20.11.1')).toEqual({ instruction: 'ENV NODE_VERSION=20.11.1' });
    expect(normalizeCreatedBy('/bin/sh -c #(nop)  EXPOSE 8080')).toEqual({ instruction: 'EXPOSE 8080/tcp' });
    // An exec-form RUN is its bare argv.
    expect(normalizeCreatedBy('npm ci')).toEqual({ instruction: 'RUN ["npm","ci"]' });
  });

  it('reads BuildKit', () => {
    expect(normalizeCreatedBy('RUN /bin/sh -c npm ci # buildkit')).toEqual({ instruction: 'RUN npm ci' });
    expect(normalizeCreatedBy('RUN npm ci # buildkit')).toEqual({ instruction: 'RUN ["npm","ci"]' });
    expect(normalizeCreatedBy('RUN |2 NODE_ENV=production HTTP_PROXY=http://proxy:3128 /bin/sh -c npm ci --omit=dev # buildkit')).toEqual({
      instruction: 'RUN npm ci --omit=dev',
      buildArgs: { NODE_ENV: 'production', HTTP_PROXY: 'http://proxy:3128' },
    });
    expect(normalizeCreatedBy('RUN /bin/bash -o pipefail -c curl -fsSL x | sh # buildkit')).toEqual({ instruction: 'RUN ["/bin/bash","-o","pipefail","-c","curl","-fsSL","x","|","sh"]' });
    expect(normalizeCreatedBy('COPY package.json . # buildkit')).toEqual({ instruction: 'COPY package.json .' });
    expect(normalizeCreatedBy('COPY --chown=1000 --chmod=644 src/ /app/ # buildkit')).toEqual({ instruction: 'COPY --chmod=644 --chown=1000 src/ /app/' });
    expect(normalizeCreatedBy('COPY --from=build /out /app # buildkit')).toEqual({ instruction: 'COPY /out /app', from: 'build' });
    expect(normalizeCreatedBy('WORKDIR /app')).toEqual({ instruction: 'WORKDIR /app' });
    expect(normalizeCreatedBy('ENV A=b')).toEqual({ instruction: 'ENV A=b' });
    expect(normalizeCreatedBy('ENV GREETING=hello world')).toEqual({ instruction: 'ENV GREETING=hello world' });
    expect(normalizeCreatedBy('CMD ["node" "x"]')).toEqual({ instruction: 'CMD ["node","x"]' });
    expect(normalizeCreatedBy('EXPOSE map[3000/tcp:{}]')).toEqual({ instruction: 'EXPOSE 3000/tcp' });
    expect(normalizeCreatedBy('VOLUME [/data]')).toEqual({ instruction: 'VOLUME ["/data"]' });
    expect(normalizeCreatedBy('ARG TARGETARCH=amd64')).toEqual({ instruction: 'ARG TARGETARCH=amd64' });
  });

  it('reads buildah', () => {
    expect(normalizeCreatedBy(`/bin/sh -c #(nop) COPY file:${HEX} in ./ `)).toEqual({
      instruction: 'COPY ./',
      contentRef: `file:${HEX}`,
      sourcesElided: true,
      destination: './',
    });
    expect(normalizeCreatedBy('/bin/sh -c npm ci')).toEqual({ instruction: 'RUN npm ci' });
    expect(normalizeCreatedBy('/bin/sh -c --mount=type=cache,target=/root/.npm npm ci')).toEqual({ instruction: 'RUN npm ci' });
    expect(normalizeCreatedBy(`/bin/sh -c --mount=type=bind,source=pkg,target=/pkg make:sha256:${HEX}`)).toEqual({ instruction: 'RUN make' });
    expect(normalizeCreatedBy('/bin/sh -c ["npm", "ci"]')).toEqual({ instruction: 'RUN ["npm","ci"]' });
    expect(normalizeCreatedBy('/bin/sh -c #(nop) CMD ["node", "x"]')).toEqual({ instruction: 'CMD ["node","x"]' });
    expect(normalizeCreatedBy('/bin/sh -c #(nop) ENV NODE_ENV="production"')).toEqual({ instruction: 'ENV NODE_ENV=production' });
  });

  it('reads kaniko', () => {
    expect(normalizeCreatedBy('RUN npm ci')).toEqual({ instruction: 'RUN npm ci' });
    expect(normalizeCreatedBy('RUN ["npm", "ci"]')).toEqual({ instruction: 'RUN ["npm","ci"]' });
    expect(normalizeCreatedBy('COPY package.json .')).toEqual({ instruction: 'COPY package.json .' });
    expect(normalizeCreatedBy('COPY --from=build --link /out /app')).toEqual({ instruction: 'COPY /out /app', from: 'build' });
    expect(normalizeCreatedBy('RUN --mount=type=cache,target=/root/.npm npm ci')).toEqual({ instruction: 'RUN npm ci' });
  });

  it('gives up on what is not a step', () => {
    expect(normalizeCreatedBy('')).toBeUndefined();
    expect(normalizeCreatedBy("# debian.sh --arch 'amd64' out/ 'bookworm' '@1717977600'")).toBeUndefined();
  });

  it('collapses whitespace outside quotes only', () => {
    expect(normalizeCreatedBy('/bin/sh -c echo   "a   b"    \'c   d\'')?.instruction).toBe('RUN echo "a   b" \'c   d\'');
  });
});

describe('the same normal form from the Dockerfile and from every builder', () => {
  const dockerfile = [
    'FROM node:20',
    'WORKDIR /app',
    'ENV NODE_ENV=production',
    'COPY package.json package-lock.json ./',
    'RUN npm ci',
    'COPY --chown=1000 src/ /app/src/',
    'RUN npm run build && \\',
    '    rm -rf /tmp/*',
    'RUN ["node", "--version"]',
    'CMD ["node", "dist/index.js"]',
  ].join('\n');
  const df = parseDockerfile(dockerfile);
  const forms = df.stages[0]!.instructions.map((i) => normalizeInstruction(i));

  it('from the Dockerfile', () => {
    expect(forms).toEqual([
      'WORKDIR /app',
      'ENV NODE_ENV=production',
      'COPY package.json package-lock.json ./',
      'RUN npm ci',
      'COPY --chown=1000 src/ /app/src/',
      'RUN npm run build && rm -rf /tmp/*',
      'RUN ["node","--version"]',
      'CMD ["node","dist/index.js"]',
    ]);
  });

  const histories: Record<string, string[]> = {
    buildkit: [
      'WORKDIR /app',
      'ENV NODE_ENV=production',
      'COPY package.json package-lock.json ./ # buildkit',
      'RUN /bin/sh -c npm ci # buildkit',
      'COPY --chown=1000 src/ /app/src/ # buildkit',
      'RUN /bin/sh -c npm run build &&     rm -rf /tmp/* # buildkit',
      'RUN node --version # buildkit',
      'CMD ["node" "dist/index.js"]',
    ],
    classic: [
      '/bin/sh -c #(nop) WORKDIR /app',
      '/bin/sh -c #(nop)  ENV NODE_ENV=production',
      `/bin/sh -c #(nop) COPY multi:${HEX} in ./ `,
      '/bin/sh -c npm ci',
      `/bin/sh -c #(nop) COPY dir:${HEX} in /app/src/ `,
      '/bin/sh -c npm run build &&     rm -rf /tmp/*',
      'node --version',
      '/bin/sh -c #(nop)  CMD ["node" "dist/index.js"]',
    ],
    buildah: [
      '/bin/sh -c #(nop) WORKDIR /app',
      '/bin/sh -c #(nop) ENV NODE_ENV=production',
      `/bin/sh -c #(nop) COPY file:${HEX} in ./ `,
      '/bin/sh -c npm ci',
      `/bin/sh -c #(nop) COPY dir:${HEX} in /app/src/ `,
      '/bin/sh -c npm run build &&     rm -rf /tmp/*',
      '/bin/sh -c ["node", "--version"]',
      '/bin/sh -c #(nop) CMD ["node", "dist/index.js"]',
    ],
    kaniko: [
      'WORKDIR /app',
      'ENV NODE_ENV=production',
      'COPY package.json package-lock.json ./',
      'RUN npm ci',
      'COPY --chown=1000 src/ /app/src/',
      'RUN npm run build &&     rm -rf /tmp/*',
      'RUN ["node", "--version"]',
      'CMD ["node", "dist/index.js"]',
    ],
  };

  it.each(Object.entries(histories))('from %s history', (builder, createdBy) => {
    const steps = createdBy.map((c) => normalizeCreatedBy(c)!);
    steps.forEach((h, i) => {
      expect(instructionsMatch(h, forms[i]!), `${builder}: ${createdBy[i]}`).toBe(true);
      if (!h.sourcesElided) expect(h.instruction).toBe(forms[i]);
      else expect(h.contentRef).toMatch(/^(file|dir|multi):[0-9a-f]{64}$/);
    });
    // A different step does not match.
    expect(instructionsMatch(steps[3]!, 'RUN npm install')).toBe(false);
    expect(instructionsMatch(steps[2]!, 'COPY package.json /srv/')).toBe(false);
  });

  it('an exec-form RUN, as the real builders wrote it (docker 20.10 classic and BuildKit, buildah 1.28)', async () => {
    const d = parseDockerfile('FROM a\nRUN ["/bin/sh", "-c", "echo exec > /x"]\nRUN ["/bin/touch", "/y"]\nRUN ["/bin/sh", "-c", "echo \'a  b\' > /z"]\nRUN ["a b"]\n');
    const runs = d.stages[0]!.instructions.map((i) => normalizeInstruction(i));
    // `["/bin/sh", "-c", X]` runs what `RUN X` runs; any other argv is itself, element by element.
    expect(runs).toEqual(['RUN echo exec > /x', 'RUN ["/bin/touch","/y"]', "RUN echo 'a  b' > /z", 'RUN ["a b"]']);
    const written = {
      classic: ['/bin/sh -c echo exec > /x', '/bin/touch /y', "/bin/sh -c echo 'a  b' > /z"],
      buildkit: ['RUN /bin/sh -c echo exec > /x # buildkit', 'RUN /bin/touch /y # buildkit', "RUN /bin/sh -c echo 'a  b' > /z # buildkit"],
    };
    for (const [builder, lines] of Object.entries(written)) {
      expect(lines.map((l) => normalizeCreatedBy(l)?.instruction), builder).toEqual(runs.slice(0, 3));
    }
    // The histories join the argv by spaces: `["a", "b"]`'s is not `["a b"]`.
    expect(normalizeCreatedBy('a b')?.instruction).not.toBe(runs[3]);
    expect(normalizeCreatedBy('RUN a b # buildkit')?.instruction).not.toBe(runs[3]);
    // buildah writes the JSON as written: its key is that argv, which the plan also tries.
    const buildah = ['|1 D=/q /bin/sh -c ["/bin/sh", "-c", "echo exec > /x"]', '|1 D=/q /bin/sh -c ["/bin/touch", "/y"]', '/bin/sh -c ["a b"]'].map((l) => normalizeCreatedBy(l)?.instruction);
    expect(buildah).toEqual(['RUN ["/bin/sh","-c","echo exec > /x"]', 'RUN ["/bin/touch","/y"]', 'RUN ["a b"]']);
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'smart-exec-'));
    try {
      const steps = (await dockerfileSteps(d, { contextDir: dir })).steps;
      expect(steps[0]!.alternatives).toEqual([{ key: { instruction: buildah[0] }, builder: 'buildah' }]);
      expect(steps[1]!.alternatives).toBeUndefined();
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it('resolves relative WORKDIRs and variables with the stage context', () => {
    const d = parseDockerfile('FROM a\nWORKDIR src/../lib\nCOPY ${APP}/ $DEST\nUSER $UID');
    const [wd, copy, user] = d.stages[0]!.instructions;
    expect(normalizeInstruction(wd!, { workdir: '/app' })).toBe('WORKDIR /app/lib');
    const vars: Record<string, string> = { APP: 'server', DEST: '/srv', UID: '1000' };
    expect(normalizeInstruction(copy!, { lookup: (n) => vars[n] })).toBe('COPY server/ /srv');
    expect(normalizeInstruction(copy!)).toBe('COPY ${APP}/ $DEST');
    expect(normalizeInstruction(user!, { lookup: (n) => vars[n] })).toBe('USER 1000');
  });

  it('a RUN heredoc reads as BuildKit records it', () => {
    const d = parseDockerfile('FROM a\nRUN <<EOF\napt-get update\napt-get install -y curl\nEOF\n');
    const form = normalizeInstruction(d.stages[0]!.instructions[0]!);
    expect(form).toBe('RUN apt-get update\napt-get install -y curl');
    expect(normalizeCreatedBy('RUN /bin/sh -c apt-get update\napt-get install -y curl\n # buildkit')?.instruction).toBe(form);
  });
});
