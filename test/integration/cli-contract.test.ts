/**
 * The command line as scripts and CI logs see it, driving the built CLI: errors as one line with
 * their code (and a document on stdout with --json), a schemaVersion in every JSON document, pull
 * words for pulls, progress events with a time, a start, an end and one key per layer, progress
 * of a `docker save` stream, the pushed reference on stdout, --digestfile, `copy`, shell
 * completion, closed pipes and terminals.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { fixtures } from '../harness/fixtures.js';
import { layerTar, writeImageOfTars } from '../harness/images.js';
import { run, smart, smartBin, type RunResult } from '../harness/run.js';
import { startRedis } from '../harness/redis.js';
import { haveTools } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';

/** Exactly one line on stderr, `smart: error [CODE]: …`, no stack trace. */
function oneErrorLine(r: RunResult, code: string): string {
  const lines = r.stderr.split('\n').filter((l) => l.trim());
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(new RegExp(`^smart: error \\[${code}\\]: `));
  return lines[0]!;
}

type Doc = Record<string, unknown> & { schemaVersion: number };
const jsonLines = (text: string): Doc[] =>
  text
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as Doc);

/** `sh -c SCRIPT` with SMART standing for the built CLI. */
function sh(script: string, env: NodeJS.ProcessEnv = {}): Promise<RunResult> {
  return run('sh', ['-c', script], { env: { ...process.env, SMART: `${process.execPath} ${smartBin}`, ...env } });
}

describe('the command line contract', () => {
  let work: string;
  let store: string;

  beforeAll(async () => {
    work = await tempDir();
    store = path.join(work, 'store');
  });

  describe('errors', () => {
    it('are one line naming their code; with --json also a document on stdout, the exit status unchanged', async () => {
      const missing = await smart(['pull', `oci:${path.join(work, 'nowhere')}:x`, `oci:${path.join(work, 'out')}:x`, '--json']);
      expect(missing.code).toBe(1);
      const line = oneErrorLine(missing, 'NOT_FOUND');
      const doc = JSON.parse(missing.stdout.toString()) as Doc & { error: Record<string, unknown> };
      expect(doc.schemaVersion).toBe(1);
      expect(Object.keys(doc.error).sort()).toEqual(['code', 'hint', 'input', 'message', 'retryable']);
      expect(doc.error).toMatchObject({ code: 'NOT_FOUND', retryable: false });
      expect(line).toContain(doc.error.message as string);

      // commander's refusals too: one line, our prefix, exit 2.
      const usage = await smart(['push', 'a', 'b', '--jobs', '0', '--json']);
      expect(usage.code).toBe(2);
      expect(oneErrorLine(usage, 'USAGE')).toBe("smart: error [USAGE]: option '--jobs <n>' argument '0' is invalid. --jobs must be an integer from 1 to 256 (run smart push --help for usage)");
      expect((JSON.parse(usage.stdout.toString()) as { error: { code: string } }).error.code).toBe('USAGE');
    });

    it.each([
      [['push', 'a', 'b', '--bogus'], "unknown option '--bogus' (run smart push --help for usage)"],
      [['push', 'a', 'b', '--jsn'], "unknown option '--jsn' (did you mean --json?) (run smart push --help for usage)"],
      [['frob'], "unknown command 'frob' (run smart --help for usage)"],
      [['pull', 'a'], "missing required argument 'destination' (run smart pull --help for usage)"],
      [['cache', 'index'], "missing required argument 'store' (run smart cache index --help for usage)"],
      // `--` ends the options (a name may begin with -): an option after it is one argument too many.
      [['push', '--', 'a', 'b', '-q'], "too many arguments for 'push'. Expected 2 arguments but got 3. (-q comes after --, which ends the options: give it before --; run smart push --help for usage)"],
      // The image part of a store's name was dropped: the whole store was indexed, planned or warmed.
      [['cache', 'index', 'file:/nonexistent/store#team/app:1.0'], 'file:/nonexistent/store#team/app:1.0 names an image, and a whole store is wanted here (file:DIR, s3://BUCKET/ROOT): give file:/nonexistent/store'],
      [['cache', 'plan', 's3://bucket/root#team/app:1.0', '--s3-endpoint', 'http://127.0.0.1:1'], 's3://bucket/root#team/app:1.0 names an image, and a whole store is wanted here (file:DIR, s3://BUCKET/ROOT): give s3://bucket/root'],
      [['cache', 'warm', 'file:/nonexistent/store#team/app'], 'give file:/nonexistent/store'],
      [['cache', 'pull', 'file:/nonexistent/store#team/app', '.'], 'give file:/nonexistent/store'],
      // A port no connection can use: refused by name (it was an internal "Invalid URL", exit 1).
      [['pull', 'docker://127.0.0.1:99999/team/app', 'oci:/tmp/x'], 'invalid image reference "127.0.0.1:99999/team/app": invalid registry host "127.0.0.1:99999": port 99999 is not 1-65535'],
      [['push', 'docker://', 'file:/tmp/x#a:b'], 'invalid image name "docker://": it names no image (write docker://HOST[:PORT]/REPO[:TAG|@DIGEST], e.g. docker://registry.example.com/team/app:1.0;'],
    ])('a usage error is one line: %j', async (args, message) => {
      const r = await smart(args);
      expect(r.code).toBe(2);
      expect(oneErrorLine(r, r.stderr.includes('[INVALID_REFERENCE]') ? 'INVALID_REFERENCE' : 'USAGE')).toContain(message);
      expect(r.stdout.length).toBe(0);
    });
  });

  describe('options that would be ignored', () => {
    const image = 'file:/nonexistent/store#team/app:1';
    const layout = 'oci:/nonexistent/layout:1';
    it.each([
      [['pull', image, layout, '--link'], '--link applies to pulls into rootfs: or bundle:, and smart pull writes oci:/nonexistent/layout:1'],
      [['pull', image, 'docker-archive:/nonexistent/a.tar', '--force'], '--force applies to pulls into rootfs: or bundle:, and smart pull writes docker-archive:'],
      [['pull', image, layout, '--keep-layers'], '--keep-layers applies to pulls into rootfs: or bundle:'],
      [['push', layout, image, '--target', 'build'], '--target applies to pushes with --dockerfile, and no --dockerfile was given'],
      // A layout or an archive keeps each layer as it is: the format asked for would not be had.
      [['push', 'docker-archive:/nonexistent/a.tar', 'oci:/nonexistent/out:1', '--compression', 'zstd'], '--compression applies to pushes into a registry, file: or s3://'],
      [['push', layout, 'oci-archive:/nonexistent/o.tar', '--compression-level', 'fast'], '--compression-level applies to pushes into a registry, file: or s3://'],
      [['push', layout, image, '--context', '.'], '--context applies to pushes with --dockerfile'],
      [['push', layout, image, '--build-arg', 'A=1'], '--build-arg applies to pushes with --dockerfile'],
      [['copy', layout, image, '--no-keep-layers'], '--no-keep-layers applies to pulls, and smart copy pushes into file:/nonexistent/store#team/app:1'],
      // An option of other commands names them, not "unknown option".
      [['push', layout, image, '--link'], '--link applies to smart pull and smart copy (pulls into rootfs: or bundle:), and this is smart push'],
      [['pull', image, layout, '--context', '.'], '--context applies to smart push and smart copy (pushes with --dockerfile), and this is smart pull'],
      [['pull', image, layout, '--compression', 'zstd'], '--compression applies to smart push and smart copy (pushes into a registry, file: or s3://), and this is smart pull'],
      [['push', layout, image, '--no-keep-layers'], '--no-keep-layers applies to smart pull and smart copy, and this is smart push'],
      [['store', 'check', 'file:/nonexistent/store', '--top', '3'], '--top applies to smart cache warm, and this is smart store check'],
      [['push', layout, image, '--platform', ''], '--platform takes a value, not an empty string'],
      [['pull', image, layout, '--digestfile', ''], '--digestfile takes a value, not an empty string'],
      // Every option with a value, on every command: an unset CI variable never means the option is absent.
      [['push', layout, 's3://bucket#team/app:1', '--s3-endpoint', ''], '--s3-endpoint takes a value, not an empty string'],
      [['pull', image, layout, '--redis', ''], '--redis takes a value, not an empty string'],
      [['pull', image, layout, '--creds', ''], '--creds takes a value, not an empty string'],
      [['pull', image, layout, '--insecure-registry', ''], '--insecure-registry takes a value, not an empty string'],
      [['cache', 'index', 'file:/nonexistent/store', '--redis', ''], '--redis takes a value, not an empty string'],
      [['cache', 'pull', 'file:/nonexistent/store', '.', '--registry', ''], '--registry takes a value, not an empty string'],
      [['cache', 'warm', 'file:/nonexistent/store', '--prune', ''], '--prune takes a value, not an empty string'],
      [['cache', 'index', 'file:/nonexistent/store', '--digestfile', '/tmp/d'], '--digestfile applies to push, pull and copy, and this is smart cache index'],
      [['cache', 'plan', 'file:/nonexistent/store', '--all-platforms'], '--all-platforms applies to push, pull and copy'],
      [['cache', 'warm', 'file:/nonexistent/store', '--platform-mismatch', 'warn'], '--platform-mismatch applies to push, pull and copy'],
      [['cache', 'index', 'file:/nonexistent/store', '--dest-creds', 'u:p'], '--dest-creds applies to a cache pull or warm --for that writes an image'],
      // A credential that would reach no registry: --creds on an s3:// push looked as if it signed S3's requests.
      [['push', layout, 's3://bucket#team/app:1', '--creds', 'u:p'], '--creds is for a registry (docker://), and this command talks to none'],
      [['cache', 'plan', 'file:/nonexistent/store', '--src-creds', 'u:p'], '--src-creds is for a registry (docker://), and what this command reads is none (file:/nonexistent/store)'],
      [['cache', 'warm', 'file:/nonexistent/store', '--for', 'Dockerfile', '--top', '3'], '--top applies to cache warm without --for'],
      [['cache', 'warm', 'file:/nonexistent/store', '--target', 'build'], '--target applies to a plan (cache plan, cache pull, cache warm --for), and cache warm has no --for'],
      [['cache', 'pull', 'file:/nonexistent/store', '.', '--tag', 'app:1'], '--tag applies to a cache pull into a docker-archive:'],
      [['cache', 'pull', 'file:/nonexistent/store', '.', 'docker-archive:/nonexistent/a.tar', '--tag', 'Bad Tag'], '--tag takes NAME:TAG'],
      [['cache', 'pull', 'file:/nonexistent/store', '.', 'docker-archive:/nonexistent/a.tar:app:1', '--tag', 'app:2'], '--tag names the image of a docker-archive written, and docker-archive:/nonexistent/a.tar:app:1 names it already (app:1)'],
      [['cache', 'pull', 'file:/nonexistent/store', '.', '--registry', 'registry.example.com'], '--registry applies to cache pull --print-cache-from, and no --print-cache-from was given'],
    ])('are refused in one usage line: %j', async (args, message) => {
      const r = await smart(args);
      expect(r.code, r.stderr).toBe(2);
      expect(oneErrorLine(r, 'USAGE')).toContain(message);
    });

    it('--progress json of a cache command: events alone on stderr, its lines dropped, its warnings warning events', async () => {
      const own = path.join(work, 'progress-store');
      expect((await smart(['push', `oci:${fixtures().paths.ociBasic}:latest`, `file:${own}#team/app:1`])).code).toBe(0);
      const indexed = await smart(['cache', 'index', `file:${own}`, '--progress', 'json']);
      expect(indexed.code, indexed.stderr).toBe(0);
      expect(indexed.stderr).toBe('');
      // A store never indexed: a warning, and the line of what was warmed.
      const empty = path.join(work, 'never-indexed');
      await fs.mkdir(empty, { recursive: true });
      const warmed = await smart(['cache', 'warm', `file:${empty}`, '--progress', 'json']);
      expect(warmed.code, warmed.stderr).toBe(0);
      const events = jsonLines(warmed.stderr) as (Doc & { event: string; message: string })[];
      expect(events.map((e) => e.event)).toEqual(['warning']);
      expect(events[0]!.message).toMatch(/holds no index of file:.*never-indexed: run smart cache index/);
    });

    it('-- ends the options: what follows is taken as names, also one that begins with -', async () => {
      const fx = fixtures();
      const dir = path.join(work, 'dashes');
      await fs.mkdir(path.join(dir, '-x'), { recursive: true });
      await fs.writeFile(path.join(dir, '-x', 'Dockerfile'), 'FROM scratch\nCOPY . /\n');
      const env = { ...process.env, XDG_CACHE_HOME: path.join(work, 'cache') };
      const linted = await run(process.execPath, [smartBin, 'cache', 'lint', '--json', '--', '-x'], { cwd: dir, env });
      expect(linted.code, linted.stderr).toBe(0);
      expect(JSON.parse(linted.stdout.toString())).toHaveProperty('advice');
      const pushed = await smart(['push', '-q', '--', `oci:${fx.paths.ociBasic}:latest`, `file:${path.join(dir, 'store')}#team/app:1`]);
      expect(pushed.code, pushed.stderr).toBe(0);
    });

    it('a --dockerfile or a --digestfile directory that is not there, or a --digestfile that is a directory, fails the run before it writes anything', async () => {
      const fx = fixtures();
      const out = path.join(work, 'not-written');
      const pushed = await smart(['push', `oci:${fx.paths.ociBasic}:latest`, `file:${out}#team/app:1`, '--dockerfile', path.join(work, 'no-Dockerfile')]);
      expect(pushed.code).toBe(1);
      expect(oneErrorLine(pushed, 'NOT_FOUND')).toContain('no-Dockerfile: no such file');
      const pulled = await smart(['pull', `oci:${fx.paths.ociBasic}:latest`, `oci:${out}:x`, '--digestfile', path.join(work, 'no-dir', 'digest')]);
      expect(pulled.code).toBe(2);
      expect(oneErrorLine(pulled, 'USAGE')).toContain(`--digestfile ${path.join(work, 'no-dir', 'digest')}: no such directory`);
      // A directory named as the file: refused before the tag is written, not after.
      const intoDir = await smart(['push', `oci:${fx.paths.ociBasic}:latest`, `file:${out}#team/app:1`, '--digestfile', work]);
      expect(intoDir.code).toBe(2);
      expect(oneErrorLine(intoDir, 'USAGE')).toContain(`--digestfile ${work}: is a directory, not a file to write the digest to`);
      await expect(fs.stat(out)).rejects.toThrow(/ENOENT/);
    });
  });

  describe('a current directory that was removed', () => {
    it('absolute names work; a relative one fails in one line saying so', async () => {
      const fx = fixtures();
      const gone = path.join(work, 'gone');
      const from = (args: string) => sh(`mkdir ${gone} && cd ${gone} && rmdir ${gone} && $SMART ${args}`);
      for (const kind of ['rootfs', 'bundle']) {
        const r = await from(`pull -q oci:${fx.paths.ociBasic}:latest ${kind}:${path.join(work, `from-gone-${kind}`)}`);
        expect(r.code, r.stderr).toBe(0);
      }
      const relative = await from(`pull -q oci:${fx.paths.ociBasic}:latest rootfs:relative`);
      expect(relative.code).toBe(1);
      expect(oneErrorLine(relative, 'STORAGE')).toBe('smart: error [STORAGE]: the current directory no longer exists (it was removed) (cd to a directory that exists, or give absolute paths)');
    });
  });

  describe('help', () => {
    it.each([[[]], [['cache']], [['store']], [['help', 'bogus']]])('that nobody asked for (%j) goes to stderr, exit 2', async (args) => {
      const r = await smart(args);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(/^Usage: smart /);
      expect(r.stdout.length).toBe(0);
    });

    it.each([
      ['smart-cache', ['--bogus'], 'smart-cache: error [USAGE]: unknown option \'--bogus\' (run smart-cache --help for usage)'],
      ['smart-cache', ['index', '--bogus'], 'smart-cache: error [USAGE]: unknown option \'--bogus\' (run smart-cache index --help for usage)'],
      ['smart-push', ['a'], "smart-push: error [USAGE]: missing required argument 'destination' (run smart-push --help for usage)"],
      ['smart-pull', ['--help'], 'Usage: smart-pull [options] <source> <destination>'],
      ['smart-cache', ['index', '--help'], 'Usage: smart-cache index [options] <store>'],
      ['smart', ['cache', 'index', '--help'], 'Usage: smart cache index [options] <store>'],
      ['smart', ['help', 'cache', 'index'], 'Usage: smart cache index [options] <store>'],
      ['smart', ['help', 'store', 'check'], 'Usage: smart store check [options] <store>'],
      ['smart', ['help', 'cache', 'bogus'], "smart: error [USAGE]: unknown command 'bogus' (run smart cache --help for usage)"],
    ])('under %s, hints and the usage line name the command as it was run (%j)', async (bin, args, line) => {
      const r = await run(process.execPath, [path.join(path.dirname(smartBin), `${bin}.js`), ...args], { env: { ...process.env, XDG_CACHE_HOME: path.join(work, 'cache') } });
      expect(`${r.stdout.toString()}${r.stderr}`.split('\n')[0]).toBe(line);
    });

    it('--version with the cache under /proc (where no directory can be made) ends, its compiled code not kept', async () => {
      // The compile cache's directory, made as the process exits: Node's recursive mkdir spun there for ever.
      const r = await smart(['--version'], { cacheHome: '/proc/smart-nope' });
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout.toString()).toMatch(/^\d+\.\d+\.\d+\n$/);
    });

    it("a cache command's help and completion leave out what it always refuses (--digestfile, --all-platforms, --platform-mismatch)", async () => {
      for (const command of ['index', 'plan', 'pull', 'warm']) {
        const help = (await smart(['cache', command, '--help'])).stdout.toString();
        expect(help, command).toContain('--stall-timeout');
        expect(help, command).not.toMatch(/--digestfile|--all-platforms|--platform-mismatch/);
      }
      const bash = (await smart(['completion', 'bash'])).stdout.toString();
      expect(bash).toContain("'push|--digestfile'");
      expect(bash).not.toMatch(/'cache (index|plan|pull|warm)\|--(digestfile|platform-mismatch)'/);
    });

    it.each([[['--help']], [['help']], [['cache', '--help']], [['--version']]])('asked for (%j) goes to stdout, exit 0; exit 1 in one line when it cannot be written', async (args) => {
      const r = await smart(args);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout.length).toBeGreaterThan(0);
      expect(r.stderr).toBe('');
      const full = await sh(`$SMART ${args.join(' ')} > /dev/full`);
      expect(full.code).toBe(1);
      expect(oneErrorLine(full, 'STORAGE')).toMatch(/cannot write to stdout: ENOSPC/);
    });
  });

  describe('JSON documents and progress events', () => {
    it('a run cancelled by --timeout mid-stream: its end event carries CANCELLED, as its error line and --json do', async () => {
      // An archive on stdin that stops coming: the run waits in its stream until --timeout ends it
      // (its streams then fail with an AbortError, which the end event once carried as INTERNAL).
      const archive = fixtures().paths.dockerArchiveBasic;
      const r = await sh(`(head -c 2000 ${archive}; sleep 3) | $SMART push docker-archive:- file:${path.join(work, 'never')}#team/app:1 --timeout 1 --progress json --json`);
      expect(r.code, `${r.stdout.toString()}${r.stderr}`).toBe(1);
      // Events, then the error line a failure ends with.
      const lines = r.stderr.trim().split('\n');
      expect(lines.at(-1)).toBe('smart: error [CANCELLED]: timed out after 1 s (--timeout)');
      const end = (jsonLines(lines.slice(0, -1).join('\n')) as (Doc & { event: string; error?: { code: string; message: string } })[]).find((e) => e.event === 'end');
      expect(end?.error).toMatchObject({ code: 'CANCELLED', message: 'timed out after 1 s (--timeout)' });
      expect(JSON.parse(r.stdout.toString())).toMatchObject({ error: { code: 'CANCELLED', message: 'timed out after 1 s (--timeout)' } });
    });

    it('a push prints its reference and its summary with a schemaVersion; a pull says written, not pushed', async () => {
      const fx = fixtures();
      const pushed = await smart(['push', `docker-archive:${fx.paths.dockerArchiveBasic}`, `file:${store}#team/app:1.0`, '--json', '--progress', 'json']);
      expect(pushed.code, pushed.stderr).toBe(0);
      const summary = JSON.parse(pushed.stdout.toString()) as Doc & { reference: string; manifestDigest: string; layers: Record<string, number>; config: string };
      expect(summary).toMatchObject({ schemaVersion: 1, command: 'push', reference: `file:${store}#team/app@${summary.manifestDigest}`, config: 'pushed' });
      expect(Object.keys(summary.layers)).toEqual(['total', 'pushed', 'skipped', 'mounted', 'foreign', 'bytesPushed']);

      // Events: a start, an end, a time each, and one key per layer though the layer is read as
      // a tar (its diff id) and stored compressed (another digest).
      const events = jsonLines(pushed.stderr) as (Doc & { event: string; time: string; layer?: string; digest?: string; status?: string })[];
      expect(events.every((e) => e.schemaVersion === 1 && !Number.isNaN(Date.parse(e.time)))).toBe(true);
      expect(events[0]).toMatchObject({ event: 'start', command: 'push', source: `docker-archive:${fx.paths.dockerArchiveBasic}` });
      expect(events.at(-1)).toMatchObject({ event: 'end', ok: true, manifestDigest: summary.manifestDigest });
      const layerEvents = events.filter((e) => e.event === 'layer');
      const keys = new Set(layerEvents.map((e) => e.layer));
      expect(keys.size).toBe(3);
      expect(events.filter((e) => e.event === 'progress').every((e) => keys.has(e.layer))).toBe(true);
      expect(layerEvents.every((e) => e.layer !== e.digest && e.status === 'pushed')).toBe(true);

      const out = path.join(work, 'pulled');
      const pulled = await smart(['pull', `file:${store}#team/app:1.0`, `oci:${out}:x`, '--json', '--progress', 'json']);
      expect(pulled.code, pulled.stderr).toBe(0);
      const pull = JSON.parse(pulled.stdout.toString()) as Doc & { layers: Record<string, number>; config: string };
      expect(pull).toMatchObject({ schemaVersion: 1, command: 'pull', config: 'written' });
      expect(pull.layers).toEqual({ total: 3, written: 3, skipped: 0, mounted: 0, foreign: 0, bytesWritten: summary.layers.bytesPushed });
      expect(pull).not.toHaveProperty('reference');
      const statuses = jsonLines(pulled.stderr).filter((e) => e.event === 'layer').map((e) => e.status);
      expect(statuses).toEqual(['written', 'written', 'written']);
    });

    it('the cache commands print their results with a schemaVersion', async () => {
      const index = await smart(['cache', 'index', `file:${store}`, '--json']);
      expect(index.code, index.stderr).toBe(0);
      expect((JSON.parse(index.stdout.toString()) as Doc).schemaVersion).toBe(1);
      const context = path.join(work, 'context');
      await fs.mkdir(context, { recursive: true });
      await fs.writeFile(path.join(context, 'Dockerfile'), 'FROM scratch\nCOPY . /\n');
      const lint = await smart(['cache', 'lint', context, '--json']);
      expect(lint.code, lint.stderr).toBe(0);
      expect((JSON.parse(lint.stdout.toString()) as Doc).schemaVersion).toBe(1);
    });
  });

  describe('a docker save stream', () => {
    it('shows the bytes read per layer, never 0 B / 0 B, and ends with throughput and compression ratio', async () => {
      const fx = fixtures();
      const archive = await fs.readFile(fx.paths.dockerArchiveBasic);
      // Stores of their own: layers a store holds already are only hashed, and none would be compressed.
      const tty = await smart(['push', 'docker-archive:-', `file:${path.join(work, 'stream-tty')}#stream/tty:1`, '--progress', 'tty'], { input: archive });
      expect(tty.code, tty.stderr).toBe(0);
      expect(tty.stderr).not.toMatch(/0 B \/ 0 B/);
      expect(tty.stderr).toMatch(/^total {2}[\d.]+ (B|KiB) (read|\/ [\d.]+ KiB) /m);
      expect(tty.stderr).toMatch(/^[0-9a-f]{12} {2}pushed [\d.]+ (B|KiB) \([\d.]+ KiB read\)$/m);
      expect(tty.stderr).toMatch(/^read [\d.]+ KiB in [\d.]+ s \([\d.]+ (B|KiB|MiB)\/s\); stored [\d.]+ KiB, compressed [\d.]+:1 \((gzip), \S+ level \d+\)$/m);

      const json = await smart(['push', 'docker-archive:-', `file:${path.join(work, 'stream-json')}#stream/json:1`, '--progress', 'json'], { input: archive });
      expect(json.code, json.stderr).toBe(0);
      const events = jsonLines(json.stderr.split('\n').filter((l) => l.startsWith('{')).join('\n')) as (Doc & { event: string; layer?: string; bytes?: number; read?: number })[];
      const progress = events.filter((e) => e.event === 'progress');
      expect(progress.length).toBeGreaterThanOrEqual(3);
      expect(progress.every((e) => /[0-9a-f]{64}/.test(e.layer!) && e.bytes! > 0)).toBe(true);
      const layers = events.filter((e) => e.event === 'layer');
      expect(layers.map((e) => e.layer).sort()).toEqual([...new Set(progress.map((e) => e.layer))].sort());
      expect(layers.reduce((n, e) => n + e.read!, 0)).toBe(events.at(-1)!.bytesRead);
    });
  });

  describe('the bytes a pull says it read', () => {
    // A layer read from a local file by the writer itself was counted twice in part: what the
    // stream had read ahead before the writer took the file (a few hundred KiB per layer).
    it('are each blob of a file: store once, for a rootfs: pull of a layer of a few MiB', async () => {
      const noise = (n: number, seed: number) => Array.from({ length: n }, (_, i) => String.fromCharCode(33 + ((i * 7919 + seed * 104729 + ((i * i) >>> 7)) % 90))).join('');
      const layout = path.join(work, 'several-mib');
      const { layers } = await writeImageOfTars(layout, [await layerTar({ 'a.txt': noise(3_000_000, 1) }), await layerTar({ 'b.txt': noise(1_500_000, 2) })]);
      const image = `file:${store}#read/once:1`;
      const pushed = await smart(['push', `oci:${layout}:latest`, image]);
      expect(pushed.code, pushed.stderr).toBe(0);
      const sizes = await Promise.all(layers.map(async (l) => (await fs.stat(path.join(layout, 'blobs', 'sha256', l.digest.slice(7)))).size));
      expect(Math.min(...sizes)).toBeGreaterThan(512 * 1024);

      const pulled = await smart(['pull', image, `rootfs:${path.join(work, 'read-once')}`, '--progress', 'json', '--no-keep-layers']);
      expect(pulled.code, pulled.stderr).toBe(0);
      const events = jsonLines(pulled.stderr.split('\n').filter((l) => l.startsWith('{')).join('\n')) as (Doc & { event: string; digest?: string; read?: number; bytesRead?: number })[];
      const read = new Map(events.filter((e) => e.event === 'layer').map((e) => [e.digest, e.read]));
      expect(layers.map((l) => read.get(l.digest))).toEqual(sizes);
      expect(events.at(-1)!.bytesRead).toBe(sizes[0]! + sizes[1]!);
    });
  });

  describe('the reference pushed, --digestfile, copy', () => {
    it('prints the reference on stdout (with -q too), writes --digestfile, and copy pushes or pulls by the destination', async () => {
      const fx = fixtures();
      const digestfile = path.join(work, 'digest');
      const pushed = await smart(['copy', `oci:${fx.paths.ociBasic}:latest`, `file:${store}#copy/app:1`, '-q', '--digestfile', digestfile]);
      expect(pushed.code, pushed.stderr).toBe(0);
      expect(pushed.stderr).toBe('');
      expect(pushed.stdout.toString()).toBe(`file:${store}#copy/app@${fx.basic.manifest.digest}\n`);
      expect(await fs.readFile(digestfile, 'utf8')).toBe(fx.basic.manifest.digest);

      const pulled = await smart(['copy', `file:${store}#copy/app:1`, `oci:${path.join(work, 'copied')}:x`, '--json']);
      expect(pulled.code, pulled.stderr).toBe(0);
      expect(JSON.parse(pulled.stdout.toString())).toMatchObject({ command: 'pull', manifestDigest: fx.basic.manifest.digest });

      const wrongMode = await smart(['copy', `file:${store}#copy/app:1`, `oci:${path.join(work, 'copied')}:y`, '--compression', 'zstd']);
      expect(wrongMode.code).toBe(2);
      expect(oneErrorLine(wrongMode, 'USAGE')).toMatch(/--compression applies to pushes, and smart copy pulls into oci:/);
    });
  });

  describe.skipIf(!haveTools('bash', 'zsh', 'fish'))('shell completion', () => {
    it('bash completes commands, options, their choices and image names', async () => {
      const script = path.join(work, 'smart.bash');
      const r = await smart(['completion', 'bash']);
      expect(r.code, r.stderr).toBe(0);
      await fs.writeFile(script, r.stdout);
      const probe = (line: string) => `COMP_LINE=${JSON.stringify(line)}; COMP_POINT=\${#COMP_LINE}; COMPREPLY=(); _smart; echo "\${COMPREPLY[*]}"`;
      const lines = ['smart ', 'smart push --prog', 'smart push --progress ', 'smart cache ', 'smart cache pull --builder b', 'smart-push --json d', 'smart completion ', 'smart version '];
      const out = await run('bash', ['-c', [`source ${script}`, ...lines.map(probe)].join('\n')]);
      expect(out.code, out.stderr).toBe(0);
      expect(out.stdout.toString().split('\n').slice(0, lines.length)).toEqual([
        'push pull copy cache store completion version',
        '--progress',
        'auto tty plain json none',
        'index plan pull warm lint',
        'buildkit buildx buildah',
        'docker-archive: docker://',
        'bash zsh fish',
        '', // version takes no argument: no image names
      ]);
    });

    it('zsh and fish load their scripts and complete from the same program', async () => {
      const zsh = await smart(['completion', 'zsh']);
      const fish = await smart(['completion', 'fish']);
      expect(zsh.code + fish.code).toBe(0);
      const zshFile = path.join(work, '_smart');
      const fishFile = path.join(work, 'smart.fish');
      await fs.writeFile(zshFile, zsh.stdout);
      await fs.writeFile(fishFile, fish.stdout);
      expect((await run('zsh', ['-n', zshFile])).code).toBe(0);
      // zsh: the completion function with the completion system's builtins recording what they were given.
      const zshProbe = await run('zsh', [
        '-fc',
        [
          'compdef() { }',
          `source ${zshFile}`,
          'compadd() { print -r -- "${@[-1]}" }',
          '_describe() { print -r -- "${(P)argv[-1]}" }',
          "words=(smart push --progress ''); CURRENT=4; PREFIX=; _smart",
          "words=(smart cache ''); CURRENT=3; PREFIX=; _smart",
        ].join('\n'),
      ]);
      expect(zshProbe.code, zshProbe.stderr).toBe(0);
      expect(zshProbe.stdout.toString()).toMatch(/^none\nindex:build or refresh the layer trie.* plan:.* pull:.* warm:.* lint:/);
      const fishProbe = await run('fish', ['-c', `source ${fishFile}; complete -C 'smart push --progress '; complete -C 'smart-cache pull --print-cache-from '; complete -C 'smart version '`]);
      expect(fishProbe.code, fishProbe.stderr).toBe(0);
      const words = fishProbe.stdout.toString().split('\n').map((l) => l.split('\t')[0]).filter(Boolean);
      expect(words).toEqual(['auto', 'json', 'none', 'plain', 'tty', 'buildah', 'buildkit', 'buildx', 'docker']);
    });
  });

  describe('what packages print by themselves', () => {
    /** Runs `args` as they are, with -q, and with --progress json: one warning line, nothing, one warning event. */
    async function asWarnings(args: string[], env: NodeJS.ProcessEnv, pattern: RegExp, code: number): Promise<void> {
      const plain = await smart([...args, '--progress', 'plain'], { env });
      expect(plain.code, plain.stderr).toBe(code);
      const said = plain.stderr.split('\n').filter((l) => pattern.test(l));
      expect(said, plain.stderr).toHaveLength(1);
      expect(said[0]).toMatch(/^warning: /);
      expect(plain.stderr).not.toMatch(/^\s|\[WARN\]/m);

      const quiet = await smart([...args, '-q'], { env });
      expect(quiet.code, quiet.stderr).toBe(code);
      expect(quiet.stderr).not.toMatch(pattern);
      expect(quiet.stderr.split('\n').filter((l) => l.trim() && !l.startsWith('smart: error'))).toEqual([]);

      const json = await smart([...args, '--progress', 'json'], { env });
      expect(json.code, json.stderr).toBe(code);
      const lines = json.stderr.split('\n').filter((l) => l.trim() && !l.startsWith('smart: error'));
      const events = jsonLines(lines.join('\n')) as (Doc & { event: string; message?: string })[];
      expect(events.filter((e) => e.event === 'warning' && pattern.test(e.message!))).toHaveLength(1);
    }

    it.skipIf(!haveTools('redis-server'))("ioredis's warning of a password the server does not need", async () => {
      const redis = await startRedis(await tempDir());
      try {
        const url = redis.url.replace('redis://', 'redis://:not-needed@');
        await asWarnings(['push', `oci:${fixtures().paths.ociBasic}:latest`, `file:${path.join(work, 'foreign-redis')}#team/app:1`, '--redis', url], {}, /does not require a password/, 0);
      } finally {
        await redis.stop();
      }
    });

    it("the S3 SDK's nine lines on AWS_PROFILE beside static keys, the secret not shown", async () => {
      const config = path.join(work, 'aws-config');
      await fs.writeFile(config, '[profile smarttest]\naws_access_key_id = AKIAPROFILE0000TEST0\naws_secret_access_key = profile-secret-1234\n');
      const env = {
        AWS_CONFIG_FILE: config,
        AWS_SHARED_CREDENTIALS_FILE: path.join(work, 'no-aws-credentials'),
        AWS_PROFILE: 'smarttest',
        AWS_ACCESS_KEY_ID: 'AKIAENV00000TEST0000',
        AWS_SECRET_ACCESS_KEY: 'env-secret-5678',
        AWS_MAX_ATTEMPTS: '1',
      };
      // Nothing listens on port 1: the push fails (--timeout ends its retries), after the credentials were chosen.
      const args = ['push', `oci:${fixtures().paths.ociBasic}:latest`, 's3://bucket/root#team/app:1', '--s3-endpoint', 'http://127.0.0.1:1', '--timeout', '1'];
      await asWarnings(args, env, /Multiple credential sources detected/, 1);
      const r = await smart([...args, '--progress', 'plain'], { env });
      expect(r.stderr).not.toMatch(/env-secret-5678|profile-secret-1234/);
    });
  });

  describe('pipes and terminals', () => {
    it('help read in part by head ends quietly, exit 0', async () => {
      const r = await sh('$SMART push --help | head -1; echo "status=${PIPESTATUS:-}"', {});
      expect(r.stdout.toString().split('\n')[0]).toBe('Usage: smart push [options] <source> <destination>');
      expect(r.stderr).toBe('');
      const status = await run('bash', ['-c', `"${process.execPath}" "${smartBin}" push --help | head -1 >/dev/null; echo "\${PIPESTATUS[0]}"`]);
      expect(status.stdout.toString().trim()).toBe('0');
      expect(status.stderr).toBe('');
    });

    // The pipe named as a file (README: another way to write to the same pipe) ends as `-` does, as `tar cf /dev/stdout` would.
    it.each(['docker-archive:-', 'docker-archive:/dev/stdout', 'docker-archive:/dev/fd/1', 'oci-archive:-', 'oci-archive:/dev/stdout'])('an image stream whose reader goes away ends quietly with 141, as a program SIGPIPE killed: %s', async (dest) => {
      const fx = fixtures();
      const r = await run('bash', ['-c', `"${process.execPath}" "${smartBin}" pull oci:${fx.paths.ociBasic}:latest ${dest} | head -c 100 >/dev/null; echo "\${PIPESTATUS[0]}"`], {
        env: { ...process.env, XDG_CACHE_HOME: path.join(work, 'cache') },
      });
      expect(r.stdout.toString().trim()).toBe('141');
      expect(r.stderr).toBe('');
    });

    it('a reader of stderr that goes away stops nothing: the pull completes, whole, and exits 0', async () => {
      const fx = fixtures();
      const dir = await tempDir();
      const dest = path.join(dir, 'rootfs');
      const r = await run('bash', ['-c', `"${process.execPath}" "${smartBin}" pull oci:${fx.paths.ociBasic}:latest rootfs:${dest} 2>&1 | head -c 5 >/dev/null; echo "\${PIPESTATUS[0]}"`], {
        env: { ...process.env, XDG_CACHE_HOME: path.join(work, 'cache') },
      });
      expect(r.stdout.toString().trim()).toBe('0');
      expect((await fs.readdir(dir)).sort()).toEqual(['.rootfs.smart-pull.json', 'rootfs']);
      expect(await fs.readdir(dest)).toContain('etc');
    });

    it.each([
      ['SIGTERM', 143, 'terminated'],
      ['SIGHUP', 129, 'hung up'], // a closed terminal, a dropped ssh session: handled as the others are
    ] as const)('a signal that comes once the work is done (%s): %i all the same, one error line that says what was written is whole', async (signal, status, word) => {
      const fx = fixtures();
      const dir = await tempDir();
      // The digest file is the last thing a pull writes, after its destination: a fifo holds the
      // run there, the work done, until the test reads it.
      const fifo = path.join(dir, 'digest');
      await run('mkfifo', [fifo]);
      const child = spawn(process.execPath, [smartBin, 'pull', '-q', `oci:${fx.paths.ociBasic}:latest`, `oci:${dir}/out:x`, '--digestfile', fifo], {
        stdio: ['ignore', 'ignore', 'pipe'],
        env: { ...process.env, XDG_CACHE_HOME: path.join(work, 'cache') },
      });
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const code = new Promise<number | null>((resolve) => child.once('close', resolve));
      const tagged = async () => (await fs.readFile(path.join(dir, 'out', 'index.json'), 'utf8').catch(() => '')).includes('"x"');
      for (let i = 0; i < 400 && !(await tagged()); i++) await new Promise((r) => setTimeout(r, 25));
      expect(await tagged()).toBe(true);
      child.kill(signal);
      await new Promise((r) => setTimeout(r, 200));
      const digest = await fs.readFile(fifo, 'utf8');
      expect(await code).toBe(status);
      expect(stderr.trim().split('\n')).toEqual([`smart: error [CANCELLED]: ${word} once the work was done: nothing was undone, what it wrote is whole`]);
      expect(digest).toMatch(/^sha256:[0-9a-f]{64}$/);
      const index = JSON.parse(await fs.readFile(path.join(dir, 'out', 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
      expect(index.manifests.map((m) => m.digest)).toEqual([digest]);
    });

    describe('a run held by an operation of the system that never returns (a named pipe nobody opens, on a thread of the pool)', () => {
      /** A pull into a named pipe nobody reads: the open of it waits for ever. Ends with its exit code or signal, and when. */
      const heldPull = async (extra: string[], signals: { after: number; signal: NodeJS.Signals }[] = []) => {
        const dir = await tempDir();
        const fifo = path.join(dir, 'image.tar');
        await run('mkfifo', [fifo]);
        const started = Date.now();
        // Signalled itself (timeout(1) would pass on only the first signal): killed by the test after 40 s, its failure.
        const child = spawn(process.execPath, [smartBin, 'pull', `oci:${fixtures().paths.ociBasic}:latest`, `docker-archive:${fifo}`, ...extra], {
          stdio: ['ignore', 'ignore', 'pipe'],
          env: { ...process.env, XDG_CACHE_HOME: path.join(work, 'cache') },
        });
        let stderr = '';
        child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
        const ended = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('close', (code, signal) => resolve({ code, signal })));
        const watchdog = setTimeout(() => child.kill('SIGKILL'), 40_000);
        // The signals come once a thread of the pull waits in the open of the pipe (Linux says so in wchan).
        if (signals.length) {
          const waiting = async () => {
            const tasks = await fs.readdir(`/proc/${child.pid}/task`).catch(() => []);
            const chans = await Promise.all(tasks.map((t) => fs.readFile(`/proc/${child.pid}/task/${t}/wchan`, 'utf8').catch(() => '')));
            return chans.includes('wait_for_partner');
          };
          for (let i = 0; i < 200 && !(await waiting()); i++) await new Promise((r) => setTimeout(r, 50));
          expect(await waiting()).toBe(true);
        }
        // From the first signal: the time the pull takes to reach the open (a loaded machine) is not the point.
        let signalled: number | undefined;
        for (const { after, signal } of signals) {
          await new Promise((r) => setTimeout(r, after));
          signalled ??= Date.now();
          child.kill(signal);
        }
        const end = await ended;
        clearTimeout(watchdog);
        return { ...end, stderr, seconds: (Date.now() - started) / 1000, afterSignal: signalled === undefined ? undefined : (Date.now() - signalled) / 1000 };
      };

      it('a second signal ends it at once, by that signal (process.exit would wait for the pool for ever)', async () => {
        const r = await heldPull([], [
          { after: 0, signal: 'SIGINT' },
          { after: 500, signal: 'SIGINT' },
        ]);
        expect(r.signal, r.stderr).toBe('SIGINT');
        expect(r.afterSignal).toBeLessThan(10);
      }, 60_000);

      it('--timeout ends it 10 s after, without its clean-up, in one line that says so (SIGKILL: exit 1 would wait for the pool)', async () => {
        const r = await heldPull(['--timeout', '1']);
        expect(r.signal, r.stderr).toBe('SIGKILL');
        expect(r.seconds).toBeGreaterThan(10);
        expect(r.seconds).toBeLessThan(35);
        expect(r.stderr.trim().split('\n')).toEqual([
          'smart: error [CANCELLED]: timed out after 1 s (--timeout), and did not stop within 10 s: an operation of the system never returned (the open of a named pipe nobody opens the other end of, for one); ended without its clean-up',
        ]);
      }, 60_000);
    });

    it.skipIf(!haveTools('script'))('a terminal that cannot move its cursor (TERM=dumb) gets plain lines, no escape sequences', async () => {
      const fx = fixtures();
      const r = await run('script', ['-qec', `TERM=dumb "${process.execPath}" "${smartBin}" push oci:${fx.paths.ociBasic}:latest file:${store}#tty/dumb:1`, '/dev/null'], {
        env: { ...process.env, XDG_CACHE_HOME: path.join(work, 'cache') },
      });
      expect(r.code, r.stdout.toString()).toBe(0);
      expect(r.stdout.toString()).not.toContain('\x1b[');
      expect(r.stdout.toString()).toMatch(/^layer [0-9a-f]{12}: (pushed|skipped|mounted)/m);
    });

    it('--progress none prints nothing on stderr, as -q: not the summary either', async () => {
      const fx = fixtures();
      const r = await smart(['push', `oci:${fx.paths.ociBasic}:latest`, `file:${store}#quiet/none:1`, '--progress', 'none']);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stderr).toBe('');
      expect(r.stdout.toString()).toMatch(/#quiet\/none@sha256:[0-9a-f]{64}\n$/);
    });

    it('--json with the image on stdout is refused in one line on stderr, and nothing goes down the pipe (a JSON document would reach docker load)', async () => {
      const fx = fixtures();
      const r = await smart(['pull', '--json', `oci:${fx.paths.ociBasic}:latest`, 'docker-archive:-']);
      expect(r.code).toBe(2);
      expect(r.stdout.length).toBe(0);
      expect(r.stderr).toBe('smart: error [USAGE]: --json cannot be used when the image itself goes to stdout (docker-archive:-)\n');
    });

    it('refuses to write an archive to a closed stdout (>&-), as docker save fails: the image would go nowhere, and the run succeed', async () => {
      const fx = fixtures();
      const env = { ...process.env, XDG_CACHE_HOME: path.join(work, 'cache') };
      for (const dest of ['docker-archive:-', 'oci-archive:-']) {
        const r = await run('bash', ['-c', `"${process.execPath}" "${smartBin}" pull oci:${fx.paths.ociBasic}:latest ${dest} >&-`], { env });
        expect(r.code, r.stderr).toBe(2);
        expect(r.stderr).toMatch(new RegExp(`^smart: error \\[USAGE\\]: ${dest} writes the image archive to stdout, which was closed \\(>&-\\) \\(redirect it to a file, > image\\.tar, or pipe it[^\\n]*\\)\\n$`));
      }
      // A user's > /dev/null is a choice: the image is read, checked and dropped.
      const dropped = await run('bash', ['-c', `"${process.execPath}" "${smartBin}" pull -q oci:${fx.paths.ociBasic}:latest docker-archive:- > /dev/null`], { env });
      expect(dropped.code, dropped.stderr).toBe(0);
    });

    it.skipIf(!haveTools('script'))('refuses to write an archive to a terminal, or to wait on one for an archive', async () => {
      const fx = fixtures();
      // `script` runs the command with a terminal on stdin, stdout and stderr.
      const tty = (args: string) => run('script', ['-qec', `"${process.execPath}" "${smartBin}" ${args}`, '/dev/null'], { env: { ...process.env, XDG_CACHE_HOME: path.join(work, 'cache') } });
      const out = await tty(`pull oci:${fx.paths.ociBasic}:latest docker-archive:-`);
      expect(out.code).toBe(2);
      expect(out.stdout.toString()).toMatch(/^smart: error \[USAGE\]: docker-archive:- writes the image archive to stdout, which is a terminal \(redirect it to a file, > image\.tar, or pipe it: \| docker load\)\r?\n$/);
      // docker load of an oci-archive fails before Docker 25: not offered.
      const oci = await tty(`pull oci:${fx.paths.ociBasic}:latest oci-archive:-`);
      expect(oci.code).toBe(2);
      expect(oci.stdout.toString()).toMatch(/^smart: error \[USAGE\]: oci-archive:- writes the image archive to stdout, which is a terminal \(redirect it to a file, > image\.tar, or pipe it\)\r?\n$/);
      const inp = await tty(`push docker-archive:- file:${store}#tty/in:1`);
      expect(inp.code).toBe(2);
      expect(inp.stdout.toString()).toMatch(/^smart: error \[USAGE\]: docker-archive:- reads the image archive from stdin, which is a terminal/);
      // Named by a path that is the terminal (/dev/stdin, /dev/fd/0): refused alike, not waited on.
      for (const name of ['docker-archive:/dev/stdin', 'oci-archive:/dev/fd/0']) {
        const named = await tty(`push ${name} file:${store}#tty/in:2`);
        expect(named.code, name).toBe(2);
        expect(named.stdout.toString()).toMatch(/smart: error \[USAGE\]: .*: \/dev\/(stdin|fd\/0) is a terminal \(pipe the archive in/);
      }
    });
  });
});
