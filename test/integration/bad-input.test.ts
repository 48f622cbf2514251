/**
 * Bad input, each through the CLI as a user meets it: a clear one-line error naming the input, a
 * non-zero exit, and nothing half-written where a user would look (the tag is written last).
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { fixtures } from '../harness/fixtures.js';
import { smart, type RunResult } from '../harness/run.js';
import { tempDir } from '../harness/tmp.js';
import { listAll } from '../harness/tree.js';

function expectOneLineError(r: RunResult, code: number, pattern: RegExp): void {
  expect(r.code, r.stderr).toBe(code);
  // Progress lines of layers done before the failure may come first; the error is the last line.
  const lines = r.stderr.trim().split('\n');
  const errors = lines.filter((l) => l.startsWith('smart: error: '));
  expect(errors, r.stderr).toHaveLength(1);
  expect(lines.at(-1)).toBe(errors[0]);
  expect(errors[0]).toMatch(pattern);
  expect(r.stderr).not.toMatch(/\n\s+at /); // no stack trace without --debug
}

describe('bad input', () => {
  let work: string;
  let store: string;

  beforeAll(async () => {
    work = await tempDir();
    store = path.join(work, 'store');
    const r = await smart(['push', `oci:${fixtures().paths.ociBasic}:latest`, `file:${store}#demo/basic:v1`]);
    expect(r.code, r.stderr).toBe(0);
  });

  const tagsOf = async (repo: string, root = store) =>
    fs.readdir(path.join(root, 'docker/registry/v2/repositories', repo, '_manifests/tags')).catch(() => []);
  const uploadsLeft = async (root: string) => (await listAll(path.join(root, 'docker/registry/v2/repositories'))).filter((p) => /_uploads\/./.test(p));

  it('a missing path', async () => {
    const dest = path.join(work, 'missing-out');
    const r = await smart(['pull', `oci:${path.join(work, 'nope')}:latest`, `oci:${dest}:x`]);
    expectOneLineError(r, 1, /no such directory .*nope/);
    await expect(fs.stat(dest)).rejects.toThrow();
    const r2 = await smart(['push', `docker-archive:${path.join(work, 'nope.tar')}`, `file:${store}#demo/missing:v1`]);
    expectOneLineError(r2, 1, /nope\.tar: no such file/);
  });

  it('a malformed reference or image name is a usage error (exit 2)', async () => {
    const fx = fixtures();
    expectOneLineError(await smart(['push', `oci:${fx.paths.ociBasic}:latest`, `file:${store}#Demo/UPPER:v1`]), 2, /invalid image reference .*Demo\/UPPER/);
    expectOneLineError(await smart(['push', `oci:${fx.paths.ociBasic}:latest`, `file:${store}#demo/x:bad tag`]), 2, /invalid tag/);
    expectOneLineError(await smart(['pull', `file:${store}#demo/basic@sha256:1234`, `oci:${work}/o`]), 2, /invalid digest/);
    expectOneLineError(await smart(['pull', 'basic', `oci:${work}/o`]), 2, /no transport/);
    expectOneLineError(await smart(['pull', 'basic:latest', `oci:${work}/o`]), 2, /unknown transport "basic".*TRANSPORT:REFERENCE/);
    expectOneLineError(await smart(['pull', 'ftp:thing', `oci:${work}/o`]), 2, /unknown transport "ftp"/);
    expect(await tagsOf('Demo/UPPER')).toEqual([]);
  });

  it('a tar that is not an image', async () => {
    const fx = fixtures();
    const r = await smart(['push', `docker-archive:${fx.paths.bad.notAnImage}`, `file:${store}#demo/notimage:v1`]);
    expectOneLineError(r, 1, /not-an-image\.tar.*no manifest\.json/);
    const r2 = await smart(['push', 'docker-archive:-', `file:${store}#demo/notimage:v1`], { input: await fs.readFile(fx.paths.bad.notAnImage) });
    expectOneLineError(r2, 1, /docker-archive:-.*no manifest\.json/);
    const r3 = await smart(['push', 'docker-archive:-', `file:${store}#demo/notimage:v1`], { input: Buffer.from('this is not a tar at all\n'.repeat(100)) });
    expectOneLineError(r3, 1, /docker-archive:-/);
    expect(await tagsOf('demo/notimage')).toEqual([]);
  });

  // The damaged fixtures share their intact blobs with the basic image: push them into a store
  // that does not hold those already, or the push rightly skips every blob.
  it('a truncated layer: no tag, no root filesystem, no temporary files', async () => {
    const fx = fixtures();
    const store = path.join(work, 'store-truncated');
    const src = `oci:${fx.paths.bad.truncatedLayer}:latest`;
    const r = await smart(['push', src, `file:${store}#demo/truncated:v1`]);
    expectOneLineError(r, 1, /truncated/);
    expect(await tagsOf('demo/truncated', store)).toEqual([]);
    expect(await uploadsLeft(store)).toEqual([]);
    const parent = path.join(work, 'truncated-pull');
    await fs.mkdir(parent);
    // A fresh layer store: the intact layers of this image are already in the shared one.
    const r2 = await smart(['pull', src, `rootfs:${path.join(parent, 'root')}`], { cacheHome: await tempDir() });
    expectOneLineError(r2, 1, /truncated/);
    expect(await fs.readdir(parent)).toEqual([]);
  });

  it('a blob whose bytes do not match its digest', async () => {
    const fx = fixtures();
    const store = path.join(work, 'store-mismatch');
    const src = `oci:${fx.paths.bad.digestMismatch}:latest`;
    const r = await smart(['push', src, `file:${store}#demo/mismatch:v1`]);
    expectOneLineError(r, 1, /hashes to sha256:[0-9a-f]{64}, not sha256:|corrupt gzip/);
    expect(await tagsOf('demo/mismatch', store)).toEqual([]);
    expect(await uploadsLeft(store)).toEqual([]);
    const dest = path.join(work, 'mismatch.tar');
    const r2 = await smart(['pull', src, `docker-archive:${dest}`]);
    expect(r2.code).toBe(1);
    expect((await fs.readdir(work)).filter((n) => /^\.?mismatch/.test(n))).toEqual([]);
  });

  it('an unknown tag, and an unknown repository', async () => {
    const dest = path.join(work, 'unknown');
    expectOneLineError(await smart(['pull', `file:${store}#demo/basic:nope`, `rootfs:${dest}`]), 1, /tag "nope" not found .*#demo\/basic \(tags there: v1\)/);
    expectOneLineError(await smart(['pull', `file:${store}#demo/absent:v1`, `rootfs:${dest}`]), 1, /repository "demo\/absent" not found/);
    expectOneLineError(await smart(['pull', `oci:${fixtures().paths.ociBasic}:nope`, `rootfs:${dest}`]), 1, /no image tagged "nope" \(tags there: latest\)/);
    await expect(fs.stat(dest)).rejects.toThrow();
  });

  it('a manifest that is not a valid image manifest', async () => {
    const r = await smart(['pull', `oci:${fixtures().paths.bad.badManifest}:latest`, `rootfs:${path.join(work, 'badmanifest')}`]);
    expectOneLineError(r, 1, /invalid manifest .*config/);
  });

  it('tar entries that climb with ../ are resolved inside the root (as containerd), and nothing is written outside', async () => {
    const fx = fixtures();
    const parent = path.join(work, 'escape');
    await fs.mkdir(parent);
    const dotdot = await smart(['pull', `oci:${fx.paths.bad.escapeDotdot}:latest`, `rootfs:${path.join(parent, 'root')}`]);
    expect(dotdot.code, dotdot.stderr).toBe(0);
    expect(await fs.readFile(path.join(parent, 'root', 'escaped.txt'), 'utf8')).toBe('written outside the root\n');
    // "../../../../etc/hostname" is the image's own /etc/hostname, which it does not hold.
    const hardlink = await smart(['pull', `oci:${fx.paths.bad.escapeHardlink}:latest`, `rootfs:${path.join(parent, 'root2')}`]);
    expectOneLineError(hardlink, 1, /hardlink "evil" points to "\.\.\/\.\.\/\.\.\/\.\.\/etc\/hostname", which does not exist/);
    expect(await fs.readdir(parent)).toEqual(['root']);
    await expect(fs.stat(path.join(work, 'escaped.txt'))).rejects.toThrow();
  });

  it('a write through a symlink that points outside lands inside the root', async () => {
    const root = path.join(work, 'symlink-root');
    const r = await smart(['pull', `oci:${fixtures().paths.bad.escapeSymlink}:latest`, `rootfs:${root}`]);
    expect(r.code, r.stderr).toBe(0);
    expect(await fs.readFile(path.join(root, 'tmp', 'smartlayer-escaped.txt'), 'utf8')).toBeTruthy();
    await expect(fs.stat('/tmp/smartlayer-escaped.txt')).rejects.toThrow();
  });

  it('a failed pull leaves the previous destination untouched', async () => {
    const root = path.join(work, 'keep');
    expect((await smart(['pull', `file:${store}#demo/basic:v1`, `rootfs:${root}`])).code).toBe(0);
    const before = await listAll(root);
    const r = await smart(['pull', `oci:${fixtures().paths.bad.truncatedLayer}:latest`, `rootfs:${root}`], { cacheHome: await tempDir() });
    expect(r.code).toBe(1);
    expect(await listAll(root)).toEqual(before);
    expect((await fs.readdir(work)).filter((n) => n.startsWith('.keep'))).toEqual([]);
  });
});
