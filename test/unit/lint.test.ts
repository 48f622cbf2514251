/** Build advice: each rule triggered, and not triggered. */
import fs from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseDockerfile } from '../../src/dockerfile/parser.js';
import { lintBuild, type Advice } from '../../src/dockerfile/lint.js';
import { tempDir } from '../harness/tmp.js';

async function context(files: Record<string, string>): Promise<string> {
  const root = await tempDir('smart-lint-');
  for (const [name, content] of Object.entries(files)) {
    await fs.mkdir(path.dirname(path.join(root, name)), { recursive: true });
    await fs.writeFile(path.join(root, name), content);
  }
  return root;
}

async function lint(dockerfile: string, files: Record<string, string>) {
  const dir = await context({ Dockerfile: dockerfile, ...files });
  return lintBuild(parseDockerfile(dockerfile), dir);
}

const codes = (advice: Advice[], code: string) => advice.filter((a) => a.code === code);
const node = { 'package.json': '{"name":"app"}\n', 'package-lock.json': '{}\n', 'src/index.js': 'console.log(1)\n', '.dockerignore': '.git\nnode_modules\n' };

describe('COPY_BEFORE_INSTALL', () => {
  it('flags COPY . . before npm ci when package.json is in the context', async () => {
    const advice = await lint(['FROM node:20', 'WORKDIR /app', 'COPY . .', 'RUN npm ci', 'RUN npm run build'].join('\n'), node);
    const found = codes(advice, 'COPY_BEFORE_INSTALL');
    expect(found).toHaveLength(1);
    expect(found[0]!.line).toBe(3);
    expect(found[0]!.message).toMatch(/^COPY \. \. copies package\.json with \d+ other files before the dependency install at line 4/);
  });

  it('is quiet when the manifests are copied first', async () => {
    const advice = await lint(['FROM node:20', 'COPY package.json package-lock.json ./', 'RUN npm ci', 'COPY . .', 'RUN npm run build'].join('\n'), node);
    expect(codes(advice, 'COPY_BEFORE_INSTALL')).toEqual([]);
  });

  it('is quiet without a manifest in the context, or without an install', async () => {
    expect(codes(await lint('FROM node:20\nCOPY . .\nRUN npm ci\n', { 'index.js': 'x' }), 'COPY_BEFORE_INSTALL')).toEqual([]);
    expect(codes(await lint('FROM node:20\nCOPY . .\nRUN yarn build\n', node), 'COPY_BEFORE_INSTALL')).toEqual([]);
  });

  it.each([
    ['pip install -r', 'FROM python:3.12\nCOPY . /srv\nRUN pip install --no-cache-dir -r /srv/requirements.txt\n', { 'requirements.txt': 'flask\n', 'app.py': 'x' }],
    ['go mod download', 'FROM golang:1.22\nWORKDIR /src\nCOPY . .\nRUN go mod download && go build .\n', { 'go.mod': 'module x\n', 'go.sum': '', 'main.go': 'package main\n' }],
    ['bundle install', 'FROM ruby:3.3\nCOPY . .\nRUN bundle install\n', { Gemfile: "source 'https://rubygems.org'\n", 'app.rb': 'x' }],
    ['mvn', 'FROM maven:3-eclipse-temurin-21\nCOPY . .\nRUN mvn -B package\n', { 'pom.xml': '<project/>\n', 'src/Main.java': 'class Main {}' }],
    ['yarn install', 'FROM node:20\nCOPY . .\nRUN yarn install --frozen-lockfile\n', node],
  ])('flags %s', async (_name, dockerfile, files) => {
    expect(codes(await lint(dockerfile, files), 'COPY_BEFORE_INSTALL')).toHaveLength(1);
  });
});

describe('DOCKERIGNORE_MISSING / DOCKERIGNORE_WEAK', () => {
  const heavy = { '.git/HEAD': 'ref: refs/heads/main\n', '.git/objects/ab/cdef': 'x'.repeat(1000), 'node_modules/left-pad/index.js': 'y'.repeat(500), 'index.js': 'z' };

  it('without a .dockerignore: every heavy directory present, with its size', async () => {
    const advice = await lint('FROM node:20\nCOPY index.js .\n', heavy);
    const missing = codes(advice, 'DOCKERIGNORE_MISSING');
    expect(missing.map((a) => [a.path, a.bytes])).toEqual([
      ['.git', 21 + 1000],
      ['node_modules', 500],
    ]);
    expect(missing[1]!.message).toMatch(/node_modules \(500 bytes\) is sent .* there is no \.dockerignore/);
  });

  it('with a .dockerignore that misses one', async () => {
    const advice = await lint('FROM node:20\nCOPY index.js .\n', { ...heavy, '.dockerignore': '.git\n' });
    expect(codes(advice, 'DOCKERIGNORE_MISSING')).toEqual([]);
    expect(codes(advice, 'DOCKERIGNORE_WEAK').map((a) => [a.path, a.bytes])).toEqual([['node_modules', 500]]);
  });

  it('is quiet when they are excluded, absent, or copied on purpose; nested ones are found', async () => {
    expect(codes(await lint('FROM node:20\nCOPY index.js .\n', { ...heavy, '.dockerignore': '.git\nnode_modules\n' }), 'DOCKERIGNORE_WEAK')).toEqual([]);
    expect((await lint('FROM node:20\nCOPY index.js .\n', { 'index.js': 'z' })).filter((a) => a.code.startsWith('DOCKERIGNORE'))).toEqual([]);
    const dist = await lint('FROM nginx:1.27\nCOPY dist/ /usr/share/nginx/html/\n', { 'dist/index.html': '<html>', '.dockerignore': '.git\n' });
    expect(codes(dist, 'DOCKERIGNORE_WEAK')).toEqual([]);
    const nested = await lint('FROM python:3.12\nCOPY app/ /app/\n', { 'app/main.py': 'x', 'app/__pycache__/main.cpython-312.pyc': 'pyc', '.dockerignore': '.git\n' });
    expect(codes(nested, 'DOCKERIGNORE_WEAK').map((a) => [a.path, a.bytes])).toEqual([['app/__pycache__', 3]]);
    expect(codes(nested, 'DOCKERIGNORE_WEAK')[0]!.message).toMatch(/add \*\*\/__pycache__ to /);
  });
});

describe('APT_UPDATE_ALONE', () => {
  it('flags apt-get update without an install in the same RUN', async () => {
    const advice = await lint('FROM debian:12\nRUN apt-get update\nRUN apt-get install -y curl\n', {});
    expect(codes(advice, 'APT_UPDATE_ALONE').map((a) => a.line)).toEqual([2]);
  });

  it('is quiet when update and install share a RUN (also in a heredoc)', async () => {
    const df = 'FROM debian:12\nRUN apt-get update && \\\n    apt-get install -y --no-install-recommends curl\nRUN <<EOF\napt-get -qq update\napt-get -y install git\nEOF\n';
    expect(codes(await lint(df, {}), 'APT_UPDATE_ALONE')).toEqual([]);
  });
});

describe('ADD_REMOTE_URL', () => {
  it('flags ADD of an http(s) URL', async () => {
    const advice = await lint('FROM alpine:3.20\nADD https://example.com/tool.tar.gz /opt/\n', {});
    expect(codes(advice, 'ADD_REMOTE_URL').map((a) => a.line)).toEqual([2]);
  });

  it('is quiet for local sources and pinned downloads', async () => {
    const df = `FROM alpine:3.20\nADD rootfs.tar.gz /\nADD --checksum=sha256:${'a'.repeat(64)} https://example.com/tool.tar.gz /opt/\n`;
    expect(codes(await lint(df, { 'rootfs.tar.gz': 'x' }), 'ADD_REMOTE_URL')).toEqual([]);
  });
});

describe('UNPINNED_BASE', () => {
  it('flags no tag and latest', async () => {
    const df = ['ARG IMG=ubuntu', 'FROM node AS a', 'FROM node:latest AS b', 'FROM localhost:5000/team/app AS c', 'FROM $IMG'].join('\n');
    const advice = await lint(df, {});
    expect(codes(advice, 'UNPINNED_BASE').map((a) => [a.line, a.message.slice(0, a.message.indexOf(','))])).toEqual([
      [2, 'FROM node: no tag (it means :latest)'],
      [3, 'FROM node:latest: the latest tag'],
      [4, 'FROM localhost:5000/team/app: no tag (it means :latest)'],
      [5, 'FROM ubuntu: no tag (it means :latest)'],
    ]);
  });

  it('is quiet for tags, digests, scratch and stages', async () => {
    const df = ['FROM node:20.11-slim AS build', `FROM node@sha256:${'b'.repeat(64)} AS pinned`, 'FROM scratch AS empty', 'FROM build', 'FROM localhost:5000/team/app:1.2'].join('\n');
    expect(codes(await lint(df, {}), 'UNPINNED_BASE')).toEqual([]);
  });
});

describe('the whole report', () => {
  it('carries the context sizes before and after .dockerignore, advice sorted by line', async () => {
    const files = { 'node_modules/x/index.js': 'x'.repeat(300), 'index.js': 'y'.repeat(20), '.dockerignore': 'node_modules\n' };
    const dockerfile = 'FROM node\nRUN apt-get update\nCOPY index.js missing.js ./\n';
    const result = await lint(dockerfile, files);
    expect(result.contextSizes).toEqual({ before: 300 + 20 + 13 + dockerfile.length, after: 20 + 13 + dockerfile.length });
    expect(result.map((a) => [a.line, a.code])).toEqual([
      [1, 'UNPINNED_BASE'],
      [2, 'APT_UPDATE_ALONE'],
      [3, 'COPY_SOURCE_MISSING'],
    ]);
  });

  it('a clean build gets no advice', async () => {
    const dockerfile = ['FROM node:20-slim', 'WORKDIR /app', 'COPY package.json package-lock.json ./', 'RUN npm ci', 'COPY . .', 'CMD ["node", "src/index.js"]'].join('\n');
    expect([...(await lint(dockerfile, node))]).toEqual([]);
  });
});
