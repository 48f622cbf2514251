/**
 * Bad input, each through the CLI as a user meets it: a clear one-line error naming the input, a
 * non-zero exit, and nothing half-written where a user would look (the tag is written last).
 */
import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { fixtures } from '../harness/fixtures.js';
import tar, { type Header } from 'tar-stream';
import { writeImage, writeImageOfTars } from '../harness/images.js';
import { run, runOk, smart, type RunResult } from '../harness/run.js';
import { haveTools } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';
import { listAll } from '../harness/tree.js';

function expectOneLineError(r: RunResult, code: number, pattern: RegExp): void {
  expect(r.code, r.stderr).toBe(code);
  // Progress lines of layers done before the failure may come first; the error is the last line.
  const lines = r.stderr.trim().split('\n');
  const errors = lines.filter((l) => /^smart: error \[[A-Z_]+\]: /.test(l));
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
    expectOneLineError(r2, 1, /nope\.tar: no such file$/);
    // A path with a colon: what follows it names the image in the archive, and the error says which file was tried.
    const colon = await smart(['push', `docker-archive:${path.join(work, 'c')}:olon.tar`, `file:${store}#demo/missing:v1`]);
    expectOneLineError(colon, 1, new RegExp(`c:olon\\.tar: no such file ${path.join(work, 'c').replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`));
    // A directory where an archive is named: said so, not an internal error of the read.
    for (const transport of ['docker-archive', 'oci-archive']) {
      const r3 = await smart(['push', `${transport}:${work}`, `file:${store}#demo/missing:v1`]);
      expectOneLineError(r3, 1, /^smart: error \[NOT_AN_IMAGE\]: .*: is a directory, not a tar archive$/);
    }
    expect(await tagsOf('demo/missing')).toEqual([]);
  });

  it('a destination that is a file, or under one: one line naming it, the file untouched', async () => {
    const fx = fixtures();
    const file = path.join(work, 'a-file');
    await fs.writeFile(file, 'mine\n');
    // The file itself where a directory is written: a usage error, before anything is written.
    expectOneLineError(await smart(['pull', `oci:${fx.paths.ociBasic}:latest`, `oci:${file}:x`]), 2, /^smart: error \[USAGE\]: oci:.*a-file:x: .*a-file exists and is not a directory \(an OCI layout is a directory\) \(a tar of one is oci-archive:FILE\)$/);
    expectOneLineError(await smart(['push', `oci:${fx.paths.ociBasic}:latest`, `file:${file}#demo/x:1`]), 2, /a-file exists and is not a directory \(the registry storage root\)$/);
    // Under it: the machine's refusal, said as one (never INTERNAL).
    for (const dest of [`oci:${file}/sub:x`, `rootfs:${file}/sub`, `bundle:${file}/sub`, `oci-archive:${file}/sub.tar`, `docker-archive:${file}/sub.tar`]) {
      expectOneLineError(await smart(['pull', `oci:${fx.paths.ociBasic}:latest`, dest]), 1, /^smart: error \[STORAGE\]: .*(not a directory).*\(a part of that path is a file, not a directory: name another path\)$/);
    }
    expect(await fs.readFile(file, 'utf8')).toBe('mine\n');
  });

  it('a layout of another major version is not written into, as umoci refuses it; 1.x is', async () => {
    const fx = fixtures();
    const dir = path.join(work, 'layout-v9');
    await fs.mkdir(dir);
    await fs.writeFile(path.join(dir, 'oci-layout'), '{"imageLayoutVersion":"9.0.0"}');
    expectOneLineError(await smart(['pull', `oci:${fx.paths.ociBasic}:latest`, `oci:${dir}:x`]), 1, /^smart: error \[UNSUPPORTED\]: oci:.*layout-v9:x: its oci-layout file says imageLayoutVersion "9\.0\.0"; only 1\.x layouts are written into$/);
    expect(await fs.readdir(dir)).toEqual(['oci-layout']);
    await fs.writeFile(path.join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.1.0"}');
    const r = await smart(['pull', `oci:${fx.paths.ociBasic}:latest`, `oci:${dir}:x`]);
    expect(r.code, r.stderr).toBe(0);
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

  it('a truncated layer is the one named, with its cause, while a larger layer is still in flight', async () => {
    // Layer 1 is large (still being fetched when layer 2 fails at once), layer 2 is cut short.
    const layout = path.join(work, 'short-second');
    const noise = crypto.randomBytes(12 << 20).toString('base64');
    const img = await writeImage(layout, { layers: [{ files: { 'big/noise': noise }, createdBy: 'big' }, { files: { 'etc/small': 'small\n'.repeat(2000) }, createdBy: 'small' }] });
    const [big, short] = img.layers as [{ digest: string }, { digest: string; size: number }];
    const blob = path.join(layout, 'blobs/sha256', short.digest.slice(7));
    await fs.truncate(blob, Math.floor(short.size / 2));
    const named = new RegExp(`^smart: error \\[[A-Z_]+\\]: (layer|blob) ${short.digest.slice(0, 19)} of oci:.*: ${Math.floor(short.size / 2)} bytes, but its descriptor declares ${short.size} \\(truncated\\?\\)`);
    for (let i = 0; i < 3; i++) {
      const pulled = await smart(['pull', `oci:${layout}:latest`, `rootfs:${path.join(work, 'short-second-root')}`], { cacheHome: await tempDir() });
      expectOneLineError(pulled, 1, named);
      expect(pulled.stderr).not.toContain(big.digest.slice(7, 19));
      expect(pulled.stderr).not.toMatch(/aborted/i);
      const pushed = await smart(['push', `oci:${layout}:latest`, `file:${path.join(work, 'short-second-store')}#x/y:z`], { cacheHome: await tempDir() });
      expectOneLineError(pushed, 1, named);
      expect(pushed.stderr).not.toMatch(/aborted/i);
    }
  });

  describe('crafted or damaged layer tars: one line naming the layer, the entry and what is wrong', () => {
    /** A tar of `entries` (tar-stream headers; a string body for files). */
    const tarOf = async (entries: { header: Partial<Header> & { name: string }; body?: string }[]): Promise<Buffer> => {
      const pack = tar.pack();
      for (const e of entries) {
        if (e.body === undefined) pack.entry(e.header);
        else pack.entry(e.header, e.body);
      }
      pack.finalize();
      const chunks: Buffer[] = [];
      for await (const c of pack as unknown as AsyncIterable<Buffer>) chunks.push(c);
      return Buffer.concat(chunks);
    };
    /** Rewrites the header block at `offset` with `edit`, then fixes its checksum (the header stays valid). */
    const patchHeader = (t: Buffer, offset: number, edit: (block: Buffer) => void): Buffer => {
      const out = Buffer.from(t);
      const block = out.subarray(offset, offset + 512);
      edit(block);
      block.fill(0x20, 148, 156);
      const sum = block.reduce((a, b) => a + b, 0);
      block.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8, 'latin1');
      return out;
    };
    const file = (name: string, extra: Partial<Partial<Header> & { name: string }> = {}) => ({ header: { name, mode: 0o644, mtime: new Date(1704067200000), ...extra }, body: `${name}\n` });
    /** Pulls an image of `tars` into a root filesystem; its first layer's short digest is what the error must name. */
    const pull = async (label: string, tars: Buffer[]) => {
      const img = await writeImageOfTars(path.join(work, `crafted-${label}`), tars);
      const r = await smart(['pull', `oci:${path.join(work, `crafted-${label}`)}:latest`, `rootfs:${path.join(work, `crafted-${label}-root`)}`], { cacheHome: await tempDir() });
      return { r, layer: img.layers[0]!.digest.slice(0, 19) };
    };

    it('a damaged header: corrupt tar, after which entry', async () => {
      const good = await tarOf([file('etc/a'), file('etc/b')]);
      // The second header starts after the first's 512-byte header and one block of content.
      const damaged = Buffer.from(good);
      damaged[1024 + 3]! ^= 0xff;
      const { r, layer } = await pull('checksum', [damaged]);
      expectOneLineError(r, 1, new RegExp(`^smart: error \\[[A-Z_]+\\]: layer ${layer} of oci:.*: corrupt tar: wrong header checksum in the entry after "etc/a" \\(the tar is damaged`));
      const notTar = await pull('not-tar', [Buffer.alloc(4096, 'x')]);
      expectOneLineError(notTar.r, 1, /corrupt tar: wrong header checksum in its first entry \(is it a tar at all/);
    });

    it('a uid past 32 bits, a gid that is not a number, a time that is not one', async () => {
      const bigUid = await pull('uid', [await tarOf([file('etc/a'), file('etc/owned', { pax: { uid: '99999999999' } })])]);
      expectOneLineError(bigUid.r, 1, new RegExp(`^smart: error \\[[A-Z_]+\\]: layer ${bigUid.layer} of oci:.*: entry "etc/owned": uid 99999999999 is out of range`));
      // '8' is no octal digit: the header's gid field, starting with one, reads as no number at all.
      const nanGid = await pull('gid', [patchHeader(await tarOf([file('etc/b')]), 0, (b) => b.write('8000000\0', 116, 8, 'latin1'))]);
      expectOneLineError(nanGid.r, 1, /entry "etc\/b": gid is not a number/);
      const paxTime = await pull('pax-mtime', [await tarOf([file('etc/c', { pax: { mtime: 'yesterday' } })])]);
      expectOneLineError(paxTime.r, 1, /entry "etc\/c": its pax mtime record "yesterday" is not a number/);
      const badTime = await pull('mtime', [patchHeader(await tarOf([{ header: { name: 'etc/', type: 'directory', mode: 0o755 } }]), 0, (b) => b.write('99999999999\0', 136, 12, 'latin1'))]);
      expectOneLineError(badTime.r, 1, /entry "etc\/": its modification time is not a valid time/);
    });

    it('entry names holding a newline or escape sequences are escaped in the one line', async () => {
      const { r } = await pull('names', [await tarOf([file('\u001b[2Jevil\nsmart: error: fake', { pax: { uid: '99999999999' } })])]);
      expectOneLineError(r, 1, /entry "\\x1b\[2Jevil\\nsmart: error: fake": uid 99999999999 is out of range/);
    });

    it('a docker save stream with a damaged header', async () => {
      const archive = Buffer.from(await fs.readFile(fixtures().paths.dockerArchiveBasic));
      // The second member's header: after the first header and its content blocks.
      const firstSize = parseInt(archive.subarray(124, 136).toString('latin1').replace(/\0.*$/, '').trim(), 8);
      const first = archive.subarray(0, 100).toString('utf8').replace(/\0.*$/s, '');
      archive[512 + Math.ceil(firstSize / 512) * 512 + 3]! ^= 0xff;
      const r = await smart(['push', 'docker-archive:-', `file:${path.join(work, 'store-damaged-stream')}#demo/damaged:v1`], { input: archive });
      expectOneLineError(r, 1, new RegExp(`^smart: error \\[[A-Z_]+\\]: docker-archive:-: corrupt tar: wrong header checksum in the entry after "${first.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}"`));
    });
  });

  it('a digest typed with a newline stays on one line, escaped', async () => {
    const r = await smart(['pull', `file:${store}#demo/basic@sha256:${'a'.repeat(32)}\n${'b'.repeat(32)}`, `oci:${path.join(work, 'newline-out')}:x`]);
    expectOneLineError(r, 2, /sha256:a{32}\\nb{32}/);
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
    // A tag whose directory a killed push made without its current link is no tag there.
    await fs.mkdir(path.join(store, 'docker/registry/v2/repositories/demo/basic/_manifests/tags/half/index'), { recursive: true });
    expectOneLineError(await smart(['pull', `file:${store}#demo/basic:half`, `rootfs:${dest}`]), 1, /tag "half" not found .*#demo\/basic \(tags there: v1\)$/);
    await fs.rm(path.join(store, 'docker/registry/v2/repositories/demo/basic/_manifests/tags/half'), { recursive: true });
    expectOneLineError(await smart(['pull', `file:${store}#demo/absent:v1`, `rootfs:${dest}`]), 1, /repository "demo\/absent" not found/);
    expectOneLineError(await smart(['pull', `oci:${fixtures().paths.ociBasic}:nope`, `rootfs:${dest}`]), 1, /no image tagged "nope" \(tags there: latest\)/);
    await expect(fs.stat(dest)).rejects.toThrow();
  });

  it('a push to REPO@DIGEST of another image: refused before a blob is written when the image keeps its manifest; the same image is pushed', async () => {
    const fx = fixtures();
    const other = `sha256:${'a'.repeat(64)}`;
    const named = path.join(work, 'named-store');
    for (const [source, image] of [
      [`oci:${fx.paths.ociBasic}:latest`, fx.basic.manifest.digest],
      [`oci:${fx.paths.ociMulti}`, fx.multi.manifest.digest],
    ] as const) {
      const r = await smart(['push', source, `file:${named}#demo/pinned@${other}`, '--all-platforms']);
      expectOneLineError(r, 1, new RegExp(`^smart: error \\[DIGEST_MISMATCH\\]: file:.*#demo/pinned@${other}: the image is ${image}, not the digest the destination names \\(nothing written\\)$`));
      expect(r.stderr).not.toMatch(/pushed|written \d/);
      await expect(fs.stat(path.join(named, 'docker'))).rejects.toThrow();
    }
    const same = await smart(['push', `oci:${fx.paths.ociBasic}:latest`, `file:${named}#demo/pinned@${fx.basic.manifest.digest}`]);
    expect(same.code, same.stderr).toBe(0);
  });

  it('a tag on two different images in an OCI layout is refused (umoci refuses it too), the same image twice is read, and a push of the tag leaves one', async () => {
    const layout = path.join(work, 'two-under-one-tag');
    await fs.cp(fixtures().paths.ociBasic, layout, { recursive: true });
    // A second image in the layout (a docker-archive is converted: another manifest), then tagged as the first.
    const other = await smart(['push', `docker-archive:${fixtures().paths.dockerArchiveBasic}`, `oci:${layout}:other`]);
    expect(other.code, other.stderr).toBe(0);
    const indexFile = path.join(layout, 'index.json');
    const index = JSON.parse(await fs.readFile(indexFile, 'utf8')) as { manifests: { digest: string; annotations?: Record<string, string> }[] };
    const [first, second] = index.manifests;
    expect(first!.digest).not.toBe(second!.digest);
    second!.annotations = { 'org.opencontainers.image.ref.name': 'latest' };
    await fs.writeFile(indexFile, JSON.stringify(index));
    const dest = path.join(work, 'ambiguous-tree');
    expectOneLineError(await smart(['pull', `oci:${layout}:latest`, `rootfs:${dest}`]), 1, /^smart: error \[MANIFEST_INVALID\]: oci:.*:latest: index\.json tags 2 different images "latest" \(sha256:[0-9a-f]{12}, sha256:[0-9a-f]{12}\)/);
    await expect(fs.stat(dest)).rejects.toThrow();
    if (haveTools('umoci')) expect((await run('umoci', ['unpack', '--image', `${layout}:latest`, path.join(work, 'ambiguous-umoci')])).stderr).toMatch(/tag is ambiguous/);
    const check = await smart(['store', 'check', `oci:${layout}`]);
    expect(check.code).toBe(1);
    expect(check.stderr).toMatch(/layout-invalid: tag "latest" names 2 different images/);
    // The same image listed twice under the tag is no question.
    await fs.writeFile(indexFile, JSON.stringify({ ...index, manifests: [first, { ...first, annotations: { ...first!.annotations } }, { ...second, annotations: {} }] }));
    const twice = await smart(['pull', `oci:${layout}:latest`, `oci:${path.join(work, 'twice')}:t`]);
    expect(twice.code, twice.stderr).toBe(0);
    // A push of the tag into the layout leaves one entry of it.
    await fs.writeFile(indexFile, JSON.stringify(index));
    const push = await smart(['push', `oci:${fixtures().paths.ociBasic}:latest`, `oci:${layout}:latest`]);
    expect(push.code, push.stderr).toBe(0);
    const after = JSON.parse(await fs.readFile(indexFile, 'utf8')) as typeof index;
    expect(after.manifests.filter((m) => m.annotations?.['org.opencontainers.image.ref.name'] === 'latest').map((m) => m.digest)).toEqual([first!.digest]);
    expect((await smart(['store', 'check', `oci:${layout}`])).code).toBe(0);
  });

  it('a docker-archive naming two different images alike is refused, file or stream, and :@N selects one', async () => {
    const dir = path.join(work, 'two-named-alike');
    await fs.mkdir(dir);
    await runOk('tar', ['-xf', fixtures().paths.dockerArchiveBasic, '-C', dir]);
    const entries = JSON.parse(await fs.readFile(path.join(dir, 'manifest.json'), 'utf8')) as { Config: string; RepoTags: string[]; Layers: string[] }[];
    // The same name on the image without its last layer: another image, with a config of its own.
    const config = JSON.parse(await fs.readFile(path.join(dir, entries[0]!.Config), 'utf8')) as { rootfs: { diff_ids: string[] }; history?: unknown };
    config.rootfs.diff_ids = config.rootfs.diff_ids.slice(0, -1);
    delete config.history;
    const configBytes = Buffer.from(JSON.stringify(config));
    const configName = `${crypto.createHash('sha256').update(configBytes).digest('hex')}.json`;
    await fs.writeFile(path.join(dir, configName), configBytes);
    entries.push({ ...entries[0]!, Config: configName, Layers: entries[0]!.Layers.slice(0, -1) });
    await fs.writeFile(path.join(dir, 'manifest.json'), JSON.stringify(entries));
    const archive = path.join(work, 'two-named-alike.tar');
    await runOk('tar', ['-cf', archive, '-C', dir, '.']);
    const name = entries[0]!.RepoTags[0]!;
    const refused = /^smart: error \[MANIFEST_INVALID\]: docker-archive:.*: manifest\.json names 2 different images .* \(@0, @1\) \(select one with :@N\)$/;
    expectOneLineError(await smart(['push', `docker-archive:${archive}:${name}`, `oci:${path.join(work, 'never-alike')}:t`]), 1, refused);
    expectOneLineError(await smart(['push', `docker-archive:-:${name}`, `oci:${path.join(work, 'never-alike')}:t`], { input: await fs.readFile(archive) }), 1, refused);
    await expect(fs.stat(path.join(work, 'never-alike'))).rejects.toThrow();
    const chosen = await smart(['push', `docker-archive:${archive}:@1`, `oci:${path.join(work, 'alike-1')}:t`]);
    expect(chosen.code, chosen.stderr).toBe(0);
  });

  it('an archive named as a layout, a layout as an archive, one kind of archive as the other: one line that names the right transport', async () => {
    const fx = fixtures().paths;
    const dest = `oci:${path.join(work, 'mixed-up')}:t`;
    const cases: [string, RegExp][] = [
      [`oci:${fx.ociArchiveBasic}`, /is not a directory \(an OCI layout is a directory\) \(a tar of one is oci-archive:FILE, a docker save tar docker-archive:FILE\)$/],
      [`oci-archive:${fx.ociBasic}`, /is a directory, not a tar archive \(an OCI layout directory is named oci:DIR\)$/],
      [`docker-archive:${fx.ociBasic}`, /is a directory, not a tar archive \(an OCI layout directory is named oci:DIR\)$/],
      [`oci-archive:${fx.dockerArchiveBasic}`, /not an OCI image layout \(no oci-layout or index\.json\) \(this holds the manifest\.json of a docker save: docker-archive:FILE reads its tar\)$/],
      [`docker-archive:${fx.ociArchiveBasic}`, /not a docker-archive \(no manifest\.json\) \(this looks like an OCI archive: use oci-archive:\)$/],
    ];
    for (const [source, message] of cases) expectOneLineError(await smart(['push', source, dest]), 1, message);
    const piped = await smart(['push', 'docker-archive:-', dest], { input: await fs.readFile(fx.ociArchiveBasic) });
    expectOneLineError(piped, 1, /not a docker-archive \(no manifest\.json\) \(this looks like an OCI archive: use oci-archive:\)$/);
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
    // Beside the pulled root filesystem, only the mark of the pull that made it.
    expect((await fs.readdir(parent)).sort()).toEqual(['.root.smart-pull.json', 'root']);
    await expect(fs.stat(path.join(work, 'escaped.txt'))).rejects.toThrow();
  });

  it('a write through a symlink that points outside lands inside the root', async () => {
    const root = path.join(work, 'symlink-root');
    const r = await smart(['pull', `oci:${fixtures().paths.bad.escapeSymlink}:latest`, `rootfs:${root}`]);
    expect(r.code, r.stderr).toBe(0);
    expect(await fs.readFile(path.join(root, 'tmp', 'smartlayer-escaped.txt'), 'utf8')).toBeTruthy();
    await expect(fs.stat('/tmp/smartlayer-escaped.txt')).rejects.toThrow();
  });

  it('a file of a layout or a store that is a named pipe or a device is refused at once, neither waited on nor read without end', async () => {
    const fx = fixtures();
    const hex = (d: string) => d.slice('sha256:'.length);
    const v2 = 'docker/registry/v2';
    const storeBlob = (d: string) => `${v2}/blobs/sha256/${hex(d).slice(0, 2)}/${hex(d)}/data`;
    const cases: { name: string; source: (dir: string) => string; base: string; file: string; make: 'fifo' | string }[] = [
      { name: 'layer-fifo', base: fx.paths.ociBasic, source: (d) => `oci:${d}:latest`, file: `blobs/sha256/${hex(fx.basic.layers[0]!.digest)}`, make: 'fifo' },
      { name: 'index-fifo', base: fx.paths.ociBasic, source: (d) => `oci:${d}:latest`, file: 'index.json', make: 'fifo' },
      { name: 'index-zero', base: fx.paths.ociBasic, source: (d) => `oci:${d}:latest`, file: 'index.json', make: '/dev/zero' },
      { name: 'marker-urandom', base: fx.paths.ociBasic, source: (d) => `oci:${d}:latest`, file: 'oci-layout', make: '/dev/urandom' },
      { name: 'manifest-zero', base: fx.paths.ociBasic, source: (d) => `oci:${d}:latest`, file: `blobs/sha256/${hex(fx.basic.manifest.digest)}`, make: '/dev/zero' },
      { name: 'tag-fifo', base: store, source: (d) => `file:${d}#demo/basic:v1`, file: `${v2}/repositories/demo/basic/_manifests/tags/v1/current/link`, make: 'fifo' },
      { name: 'tag-urandom', base: store, source: (d) => `file:${d}#demo/basic:v1`, file: `${v2}/repositories/demo/basic/_manifests/tags/v1/current/link`, make: '/dev/urandom' },
      { name: 'blob-fifo', base: store, source: (d) => `file:${d}#demo/basic:v1`, file: storeBlob(fx.basic.layers[0]!.digest), make: 'fifo' },
      { name: 'manifest-data-zero', base: store, source: (d) => `file:${d}#demo/basic:v1`, file: storeBlob(fx.basic.manifest.digest), make: '/dev/zero' },
    ];
    for (const c of cases) {
      const dir = path.join(work, 'not-files', c.name);
      await fs.cp(c.base, dir, { recursive: true });
      const file = path.join(dir, c.file);
      await fs.rm(file);
      if (c.make === 'fifo') await runOk('mkfifo', [file]);
      else await fs.symlink(c.make, file);
      // A fresh cache: the blob is read from the source, not found kept from an earlier pull.
      const dest = path.join(work, 'not-files', `${c.name}-rootfs`);
      const r = await smart(['pull', c.source(dir), `rootfs:${dest}`, '--timeout', '20'], { cacheHome: await tempDir(), killAfterS: 40 });
      const kind = c.make === 'fifo' ? 'a pipe' : 'a character device';
      expectOneLineError(r, 1, new RegExp(`^smart: error \\[NOT_AN_IMAGE\\]: .*${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is ${kind}, not a regular file \\(`));
      await expect(fs.stat(dest), c.name).rejects.toThrow();
    }
    // A layout reached through a symlink, and blobs that are symlinks to regular files, are read as ever.
    const linkedBlobs = path.join(work, 'not-files', 'linked-blobs');
    await fs.cp(fx.paths.ociBasic, linkedBlobs, { recursive: true });
    for (const d of [fx.basic.manifest.digest, fx.basic.layers[0]!.digest]) {
      const blob = path.join(linkedBlobs, 'blobs', 'sha256', hex(d));
      await fs.rename(blob, `${blob}.kept`);
      await fs.symlink(`${blob}.kept`, blob);
    }
    await fs.symlink(linkedBlobs, path.join(work, 'not-files', 'layout-link'));
    const ok = await smart(['pull', `oci:${path.join(work, 'not-files', 'layout-link')}:latest`, `rootfs:${path.join(work, 'not-files', 'linked-rootfs')}`], { cacheHome: await tempDir(), killAfterS: 40 });
    expect(ok.code, ok.stderr).toBe(0);
  }, 120_000);

  it('an archive named by a named pipe waits for its writer, and --timeout ends the wait', async () => {
    const fx = fixtures();
    const fifo = path.join(work, 'archive.fifo');
    await runOk('mkfifo', [fifo]);
    for (const transport of ['docker-archive', 'oci-archive']) {
      const started = Date.now();
      const r = await smart(['push', `${transport}:${fifo}`, `file:${store}#demo/fifo:never`, '--timeout', '2'], { killAfterS: 30 });
      expectOneLineError(r, 1, /^smart: error \[CANCELLED\]: timed out after 2 s \(--timeout\)$/);
      expect(Date.now() - started).toBeLessThan(10_000);
    }
    expect(await tagsOf('demo/fifo')).toEqual([]);
    // With a writer, read as ever.
    const writer = run('sh', ['-c', 'sleep 0.5; cat "$1" > "$2"', 'sh', fx.paths.dockerArchiveBasic, fifo]);
    const pushed = await smart(['push', `docker-archive:${fifo}`, `file:${store}#demo/fifo:read`], { killAfterS: 30 });
    expect(pushed.code, pushed.stderr).toBe(0);
    expect((await writer).code).toBe(0);
    expect(await tagsOf('demo/fifo')).toEqual(['read']);
  }, 60_000);

  it('a failed pull leaves the previous destination untouched', async () => {
    const root = path.join(work, 'keep');
    expect((await smart(['pull', `file:${store}#demo/basic:v1`, `rootfs:${root}`])).code).toBe(0);
    const before = await listAll(root);
    const r = await smart(['pull', `oci:${fixtures().paths.bad.truncatedLayer}:latest`, `rootfs:${root}`], { cacheHome: await tempDir() });
    expect(r.code).toBe(1);
    expect(await listAll(root)).toEqual(before);
    // Beside it, only the mark of the pull that made it: no staging tree.
    expect((await fs.readdir(work)).filter((n) => n.startsWith('.keep'))).toEqual(['.keep.smart-pull.json']);
  });
});
