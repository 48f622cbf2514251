/**
 * Archives and trees named by paths that are not plain files: `docker-archive:/dev/stdout` piped
 * on (`| docker load`), a process substitution `<(…)` or `/dev/stdin` as the source, a named pipe,
 * and symlinks the user made to a file or a directory elsewhere. A pipe or a device is written
 * straight, as skopeo writes one (renamed onto, `/dev/stdout` itself would become a regular file
 * in /dev and the pipe get nothing); a docker-archive on a pipe is read as stdin is; an OCI
 * archive, read and written in place, is refused on one in one line; a symlink keeps being one.
 * skopeo reads what was written; the archive on a pipe is the bytes of the archive in a file, and
 * its layers are fetched from the registry once each (spooled for the size their header gives).
 * rootfs: and bundle: through a symlink to a directory fill that directory. A docker save
 * compressed with gzip or zstd is read as docker load reads it, decompressed as it streams.
 */
import { mkdirSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { beforeAll, describe, expect, it, inject } from 'vitest';
import { fixtures } from '../harness/fixtures.js';
import { run, runOk, smart, smartBin, testCacheHome, type RunResult } from '../harness/run.js';
import { haveTools, inCI } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';
import { listAll } from '../harness/tree.js';
import { startProxy } from '../harness/proxy.js';
import { startRegistry } from '../harness/registry.js';

const env = () => ({ ...process.env, XDG_CACHE_HOME: testCacheHome(), CONTAINERS_REGISTRIES_CONF: inject('registriesConf') });

/** `script` run by bash with `smart` as a function, and `args` as $1…: for pipes and process substitution. */
function bash(script: string, ...args: string[]): Promise<RunResult> {
  return run('bash', ['-c', `smart() { "${process.execPath}" "${smartBin}" "$@"; }\n${script}`, 'bash', ...args], { env: env() });
}

function expectOneLine(r: RunResult, code: number, pattern: RegExp): void {
  expect(r.code, r.stderr).toBe(code);
  const lines = r.stderr.trim().split('\n');
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(pattern);
}

describe('archives and trees named by a pipe, a device or a symlink', () => {
  let work: string;
  const source = () => `oci:${fixtures().paths.ociBasic}:latest`;
  /** The archive a pull into a plain file writes, and the manifest digest a push of it gives. */
  let archive: Buffer;
  let pushedDigest: string;
  const ready = haveTools('bash', 'skopeo', 'mkfifo', 'gzip', 'zstd', 'bzip2', 'xz');

  const skipUnlessReady = (ctx: { skip: () => void }) => {
    if (ready) return false;
    if (inCI) throw new Error('CI=true but bash, skopeo, mkfifo, gzip or zstd is missing');
    ctx.skip();
    return true;
  };

  /** The manifest digest of a push of `archiveName` into a fresh layout (what the file gives, when it reads the same image). */
  const pushDigest = async (r: RunResult) => {
    expect(r.code, r.stderr).toBe(0);
    return /manifest (sha256:[0-9a-f]{64})/.exec(r.stderr)?.[1];
  };

  beforeAll(async () => {
    work = await tempDir('smart-special-');
    const file = path.join(work, 'plain.tar');
    const r = await smart(['pull', source(), `docker-archive:${file}`]);
    expect(r.code, r.stderr).toBe(0);
    archive = await fs.readFile(file);
    pushedDigest = (await pushDigest(await smart(['push', `docker-archive:${file}`, `oci:${path.join(work, 'from-file')}:t`])))!;
    expect(pushedDigest).toBeDefined();
  });

  it('docker-archive:/dev/stdout, /dev/fd/1 and a symlink to /proc/self/fd/1 reach the pipe, and stay what they were', async (ctx) => {
    if (skipUnlessReady(ctx)) return;
    const link = path.join(work, 'stdout');
    await fs.symlink('/proc/self/fd/1', link);
    const before = await fs.readlink('/dev/stdout').catch(() => undefined);
    try {
      for (const [i, spelling] of ['/dev/stdout', '/dev/fd/1', link].entries()) {
        const out = path.join(work, `piped-${i}.tar`);
        const r = await bash('smart pull "$1" "docker-archive:$2" | cat > "$3"; exit "${PIPESTATUS[0]}"', source(), spelling, out);
        expect(r.code, `${spelling}: ${r.stderr}`).toBe(0);
        expect((await fs.readFile(out)).equals(archive), spelling).toBe(true);
        await runOk('skopeo', ['inspect', `docker-archive:${out}`]);
      }
      expect(await fs.readlink('/dev/stdout').catch(() => undefined)).toBe(before);
    } finally {
      // Had it been replaced by a file, every later program writing /dev/stdout would write into that file.
      if (before !== undefined && !(await fs.lstat('/dev/stdout')).isSymbolicLink()) {
        await fs.rm('/dev/stdout');
        await fs.symlink(before, '/dev/stdout');
      }
    }
    expect(await fs.readlink(link)).toBe('/proc/self/fd/1');
    // Only what the tests made is in the directory: nothing was staged beside the link.
    expect((await fs.readdir(work)).filter((n) => n.includes('smart'))).toEqual([]);
  });

  it('a process substitution and /dev/stdin are read as stdin is, a docker-archive or an OCI archive', async (ctx) => {
    if (skipUnlessReady(ctx)) return;
    const plain = path.join(work, 'plain.tar');
    expect(await pushDigest(await bash('smart push "docker-archive:"<(cat "$1") "oci:$2:t"', plain, path.join(work, 'from-subst')))).toBe(pushedDigest);
    expect(await pushDigest(await bash('cat "$1" | smart push docker-archive:/dev/stdin "oci:$2:t"', plain, path.join(work, 'from-stdin')))).toBe(pushedDigest);
    // A stream goes into a store only, as docker-archive:- does.
    expectOneLine(await bash('smart pull "docker-archive:"<(cat "$1") "rootfs:$2"', plain, path.join(work, 'tree-from-pipe')), 2, /a stream\) can only be copied into a store/);
    const fx = fixtures();
    for (const [i, command] of ['smart push "oci-archive:"<(cat "$1") "file:$2#app:1"', 'cat "$1" | smart push oci-archive:/dev/stdin "file:$2#app:1"'].entries()) {
      const store = path.join(work, `oci-from-pipe-${i}`);
      const r = await bash(command, fx.paths.ociArchiveBasic, store);
      expect(r.code, r.stderr).toBe(0);
      expect(await fs.readFile(path.join(store, 'docker/registry/v2/repositories/app/_manifests/tags/1/current/link'), 'utf8')).toBe(fx.basic.manifest.digest);
    }
    expectOneLine(await bash('smart pull "oci-archive:"<(cat "$1") "rootfs:$2"', fx.paths.ociArchiveBasic, path.join(work, 'never')), 2, /a stream\) can only be copied into a store/);
    await expect(fs.stat(path.join(work, 'never'))).rejects.toThrow();
  });

  it('a compressed docker save (gzip, zstd, bzip2, xz: what docker load takes), as a file or on stdin, is the image the tar is, as skopeo reads it', async (ctx) => {
    if (skipUnlessReady(ctx)) return;
    const plain = path.join(work, 'plain.tar');
    for (const [ext, compress, format, unpack] of [
      ['gz', 'gzip -c', 'gzip', 'gunzip -k'],
      ['zst', 'zstd -q -c', 'zstd', 'zstd -d'],
      ['bz2', 'bzip2 -c', 'bzip2', 'bunzip2 -k'],
      ['xz', 'xz -c', 'xz', 'unxz -k'],
    ] as const) {
      const packed = path.join(work, `plain.tar.${ext}`);
      await runOk('bash', ['-c', `${compress} "$1" > "$2"`, 'bash', plain, packed]);
      // It was "not a tar archive" as a file, a corrupt tar on stdin.
      expect(await pushDigest(await smart(['push', `docker-archive:${packed}`, `oci:${path.join(work, `from-${ext}`)}:t`])), ext).toBe(pushedDigest);
      expect(await pushDigest(await bash('smart push docker-archive:- "oci:$2:t" < "$1"', packed, path.join(work, `from-${ext}-stdin`))), ext).toBe(pushedDigest);
      // Read once as it is decompressed: into a store only, and the way round said.
      expectOneLine(await smart(['pull', `docker-archive:${packed}`, `rootfs:${path.join(work, `tree-${ext}`)}`]), 2, new RegExp(`\\(a ${format}-compressed archive, read as a stream\\) can only be copied into a store .*; decompress it to a file first \\(${unpack} `));
    }
    await runOk('skopeo', ['inspect', `docker-archive:${path.join(work, 'plain.tar.zst')}`]);
    await runOk('skopeo', ['inspect', `docker-archive:${path.join(work, 'plain.tar.xz')}`]);
    // Cut in half: the decompressor's own first line (bzip2's, not its exit status), and no layout.
    for (const [ext, said] of [
      ['xz', /\(xz\): corrupt or truncated xz stream \(.*Unexpected end of input\)$/],
      ['bz2', /\(bzip2\): corrupt or truncated bzip2 stream \(bzip2: Compressed file ends unexpectedly\)$/],
    ] as const) {
      const cut = path.join(work, `cut.tar.${ext}`);
      await runOk('bash', ['-c', 'head -c $(( $(stat -c %s "$1") / 2 )) "$1" > "$2"', 'bash', path.join(work, `plain.tar.${ext}`), cut]);
      expectOneLine(await smart(['push', `docker-archive:${cut}`, `oci:${path.join(work, `from-cut-${ext}`)}:t`]), 1, new RegExp(`^smart: error \\[CORRUPT_ARCHIVE\\]: docker-archive:.*cut\\.tar\\.${ext} ${said.source}`));
      await expect(fs.stat(path.join(work, `from-cut-${ext}`))).rejects.toThrow();
    }
  });

  it('a named pipe: pushed from while it is written, pulled into while it is read', async (ctx) => {
    if (skipUnlessReady(ctx)) return;
    const fifo = path.join(work, 'fifo');
    await runOk('mkfifo', [fifo]);
    const pushed = await bash('cat "$1" > "$2" & smart push "docker-archive:$2" "oci:$3:t"; s=$?; wait; exit $s', path.join(work, 'plain.tar'), fifo, path.join(work, 'from-fifo'));
    expect(await pushDigest(pushed)).toBe(pushedDigest);
    const out = path.join(work, 'fifo-out.tar');
    const pulled = await bash('cat "$2" > "$3" & smart pull "$1" "docker-archive:$2"; s=$?; wait; exit $s', source(), fifo, out);
    expect(pulled.code, pulled.stderr).toBe(0);
    expect((await fs.readFile(out)).equals(archive)).toBe(true);
    expect((await fs.lstat(fifo)).isFIFO()).toBe(true);
    // An OCI archive too, written as its blobs come, index.json last: what skopeo reads.
    const ociOut = path.join(work, 'fifo-out-oci.tar');
    const ociPulled = await bash('cat "$2" > "$3" & smart pull "$1" "oci-archive:$2:v1"; s=$?; wait; exit $s', source(), fifo, ociOut);
    expect(ociPulled.code, ociPulled.stderr).toBe(0);
    expect(await pushDigest(await bash('smart push "oci-archive:$1:v1" "oci:$2:t"', ociOut, path.join(work, 'from-oci-fifo')))).toBe(fixtures().basic.manifest.digest);
    await runOk('skopeo', ['inspect', `oci-archive:${ociOut}:v1`]);
    expect((await fs.lstat(fifo)).isFIFO()).toBe(true);
    expect((await fs.readdir(work)).filter((n) => n.startsWith('.fifo'))).toEqual([]);
  });

  it('a reader that goes away: 141 and no error line, as for docker-archive:- (and tar cf /dev/stdout, killed by SIGPIPE)', async (ctx) => {
    if (skipUnlessReady(ctx)) return;
    // The reader closes its end at once, long before smart writes: every write finds no reader.
    for (const dest of ['docker-archive:/dev/fd/1', 'oci-archive:/dev/fd/1']) {
      const r = await bash(`smart pull "$1" ${dest} | (exec 0<&-; sleep 1); exit "\${PIPESTATUS[0]}"`, source());
      expect(r.code, `${dest}: ${r.stderr}`).toBe(141);
      expect(r.stderr.split('\n').filter((l) => l.startsWith('smart: error')), dest).toEqual([]);
    }
  });

  it('a terminal is refused, as docker-archive:- is on one', async (ctx) => {
    if (skipUnlessReady(ctx)) return;
    if (!haveTools('script')) return ctx.skip();
    // script(1) runs the command on a pseudo-terminal: /dev/stdout is that terminal.
    const command = `"${process.execPath}" "${smartBin}" pull "${source()}" docker-archive:/dev/stdout; echo "exit $?"`;
    const r = await run('script', ['-qec', command, '/dev/null'], { env: env() });
    const text = r.stdout.toString();
    expect(text).toMatch(/smart: error \[USAGE\]: docker-archive:\/dev\/stdout: \/dev\/stdout is a terminal \(redirect it to a file, > image\.tar, or pipe it: \| docker load\)/);
    expect(text).toMatch(/exit 2/);
    expect(text).not.toMatch(/manifest\.json/); // no archive bytes on the terminal
  });

  it('stdout on a socket (a service, a parent process): /dev/stdout is refused in one line, docker-archive:- suggested', async (ctx) => {
    if (skipUnlessReady(ctx)) return;
    // Node gives a child's stdout as a socket pair: /proc/self/fd/1 then names a socket, which no open reaches.
    const r = await smart(['pull', source(), 'docker-archive:/dev/stdout']);
    expectOneLine(r, 2, /^smart: error \[USAGE\]: docker-archive:\/dev\/stdout: \/dev\/stdout is a socket, which cannot be opened by its path \(use docker-archive:- for stdin or stdout\)$/);
    expect((await fs.lstat('/dev/stdout')).isSymbolicLink()).toBe(true);
    const viaStdin = await smart(['push', 'docker-archive:/dev/stdin', `oci:${path.join(work, 'never-socket')}:t`], { input: archive });
    expectOneLine(viaStdin, 2, /is a socket, which cannot be opened by its path/);
  });

  it('a docker-archive written to a pipe fetches each layer from the registry once', async (ctx) => {
    if (skipUnlessReady(ctx)) return;
    if (!haveTools('docker-registry')) {
      if (inCI) throw new Error('CI=true but docker-registry is missing');
      return ctx.skip();
    }
    await fs.mkdir(path.join(work, 'reg'));
    const registry = await startRegistry({ configDir: path.join(work, 'reg'), root: path.join(work, 'reg-store') });
    const proxy = await startProxy({ target: registry.url });
    try {
      const pushed = await smart(['push', source(), `docker://${proxy.host}/special/basic:1`]);
      expect(pushed.code, pushed.stderr).toBe(0);
      const layers = fixtures().basic.diffIds.length;
      const inFile = path.join(work, 'from-registry.tar');
      // Each pull with a cache of its own: a pull keeps the blobs it fetched, and the next would read them.
      const reference = await smart(['pull', `docker://${proxy.host}/special/basic:1`, `docker-archive:${inFile}`, '--cache-dir', await tempDir()]);
      expect(reference.code, reference.stderr).toBe(0);
      // Its tar header gives each layer's size before its bytes: each is taken whole once (spooled), not read twice.
      for (const how of ['stdout', 'path'] as const) {
        proxy.stats.clear();
        const out = path.join(work, `from-registry-${how}.tar`);
        const r =
          how === 'stdout'
            ? await bash('smart pull "$1" docker-archive:- --cache-dir "$3" | cat > "$2"; exit "${PIPESTATUS[0]}"', `docker://${proxy.host}/special/basic:1`, out, await tempDir())
            : await bash('smart pull "$1" docker-archive:/dev/stdout --cache-dir "$3" | cat > "$2"; exit "${PIPESTATUS[0]}"', `docker://${proxy.host}/special/basic:1`, out, await tempDir());
        expect(r.code, r.stderr).toBe(0);
        expect((await fs.readFile(out)).equals(await fs.readFile(inFile)), how).toBe(true);
        const blobGets = proxy.stats.requests.filter((q) => q.method === 'GET' && q.path.includes('/blobs/'));
        // Every layer (the config may come from the metadata cache), none twice.
        expect(blobGets.length, how).toBeGreaterThanOrEqual(layers);
        expect(new Set(blobGets.map((q) => q.path)).size, how).toBe(blobGets.length);
      }
    } finally {
      await proxy.stop();
      await registry.stop();
    }
  });

  it('with no place for a spool file (TMPDIR missing or read-only), the archive is the same, each layer read twice, said once', async (ctx) => {
    if (skipUnlessReady(ctx)) return;
    for (const tmp of [path.join(work, 'no-such-dir'), '/proc']) {
      const out = path.join(work, 'no-spool.tar');
      const r = await bash('TMPDIR="$2" smart pull "$1" docker-archive:- | cat > "$3"; exit "${PIPESTATUS[0]}"', source(), tmp, out);
      expect(r.code, r.stderr).toBe(0);
      expect((await fs.readFile(out)).equals(archive), tmp).toBe(true);
      expect(r.stderr.split('\n').filter((l) => l.startsWith('warning: '))).toEqual([
        expect.stringMatching(new RegExp(`^warning: no file for a spool in ${tmp} \\(E[A-Z]+\\): each layer is read twice, for its size first \\(set TMPDIR to a directory with room\\)$`)),
      ]);
    }
  });

  it('a symlink to an archive has the file it names replaced, and stays a symlink; one to nothing is refused', async (ctx) => {
    if (skipUnlessReady(ctx)) return;
    mkdirSync(path.join(work, 'artifacts'));
    for (const transport of ['docker-archive', 'oci-archive']) {
      const real = path.join(work, 'artifacts', `${transport}.tar`);
      await fs.writeFile(real, 'an older archive');
      const link = path.join(work, `${transport}-link.tar`);
      await fs.symlink(path.join('artifacts', `${transport}.tar`), link);
      const r = await smart(['pull', source(), `${transport}:${link}`]);
      expect(r.code, r.stderr).toBe(0);
      expect((await fs.lstat(link)).isSymbolicLink()).toBe(true);
      await runOk('skopeo', ['inspect', `${transport}:${real}`]);
      expect((await fs.readdir(path.join(work, 'artifacts'))).filter((n) => n.startsWith(`.${transport}`))).toEqual([]);
    }
    const dangling = path.join(work, 'dangling.tar');
    await fs.symlink('missing/image.tar', dangling);
    expectOneLine(await smart(['pull', source(), `docker-archive:${dangling}`]), 2, /^smart: error \[USAGE\]: docker-archive:.*dangling\.tar is a symlink to nothing \(missing\/image\.tar\)/);
    expect(await fs.readlink(dangling)).toBe('missing/image.tar');
  });

  it('rootfs: and bundle: through a symlink to a directory: the tree in the directory, the link kept, and pulled into again', async () => {
    for (const transport of ['rootfs', 'bundle']) {
      const plain = path.join(work, `${transport}-plain`);
      const r0 = await smart(['pull', source(), `${transport}:${plain}`]);
      expect(r0.code, r0.stderr).toBe(0);
      const real = path.join(work, `${transport}-real`);
      await fs.mkdir(real);
      const link = path.join(work, `${transport}-link`);
      await fs.symlink(path.basename(real), link);
      for (let i = 0; i < 2; i++) {
        const r = await smart(['pull', source(), `${transport}:${link}`]);
        expect(r.code, r.stderr).toBe(0);
        expect((await fs.lstat(link)).isSymbolicLink()).toBe(true);
        expect(await listAll(real)).toEqual(await listAll(plain));
      }
    }
  });
});
