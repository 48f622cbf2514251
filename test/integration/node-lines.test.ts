/**
 * The CLI on the other LTS lines than the one CI runs on (Node 22, 24 and 26, fetched by .ci/run
 * with scripts/fetch-node-line.mjs): what differs there and broke it before. Node's own builds from 22
 * on carry zstd and export it (the addon's calls went to it: other bytes than on Node 20); Node's
 * recursive mkdir loops under /proc (the compile cache's directory: every command hung); libuv 1.52
 * keeps nanoseconds in utimes (small files made by the addon lost them, others kept them).
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { fixtures } from '../harness/fixtures.js';
import { repoRoot, run, smart, smartBin } from '../harness/run.js';
import { tempDir } from '../harness/tmp.js';
import { haveTools, inCI, isRoot } from '../harness/tools.js';
// @ts-expect-error: a script of the repository, plain JavaScript
import { NODE_LINES, nodeLineDir } from '../../scripts/fetch-node-line.mjs';

const lines = (NODE_LINES as string[]).map((version) => ({ version, node: path.join((nodeLineDir as (v: string) => string)(version), 'bin', 'node') }));
for (const { version, node } of lines) {
  if (!fs.existsSync(node) && inCI) throw new Error(`CI=true but Node ${version} is not in ${node} (.ci/run fetches it: node scripts/fetch-node-line.mjs)`);
}

describe.each(lines)('the CLI on Node $version', ({ node }) => {
  if (!fs.existsSync(node)) return void it.skip('needs the official build: node scripts/fetch-node-line.mjs');

  it('ends with a cache directory that cannot be made (under /proc), as on Node 20', async () => {
    // Bounded: a command that hangs there (as it did) fails the test, and is not left behind.
    const r = await run('timeout', ['-s', 'KILL', '30', node, smartBin, '--version'], { env: { ...process.env, XDG_CACHE_HOME: '/proc/smart-no-such-dir' } });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.toString().trim()).toMatch(/^\d+\.\d+\.\d+$/);
  }, 60_000);

  it('compresses a zstd layer to the same bytes as on Node 20, with the same zstd', async () => {
    const fx = fixtures();
    const zstdOf = (text: string) => /^zstd engine: (.*)$/m.exec(text)?.[1];
    const digests: string[] = [];
    const engines: (string | undefined)[] = [];
    for (const on of [process.execPath, node]) {
      const cacheHome = await tempDir();
      const version = await smart(['version', '--verbose'], { node: on, cacheHome });
      expect(version.code, version.stderr).toBe(0);
      engines.push(zstdOf(version.stdout.toString() + version.stderr));
      const r = await smart(['push', '--compression', 'zstd', `docker-archive:${fx.paths.dockerArchiveBasic}`, `file:${path.join(await tempDir(), 'store')}#z/app:1`, '--json'], { node: on, cacheHome });
      expect(r.code, r.stderr).toBe(0);
      digests.push((JSON.parse(r.stdout.toString()) as { manifestDigest: string }).manifestDigest);
    }
    expect(engines[0]).toBeDefined();
    expect(engines[1]).toBe(engines[0]);
    expect(digests[1]).toBe(digests[0]);
  }, 120_000);

  it.skipIf(!haveTools('runc') || !isRoot)("runs the README's demo through to the bundle under runc, and leaves nothing behind", async () => {
    const tmp = await tempDir('smart-demo-');
    const r = await run(node, [path.join(repoRoot, 'scripts', 'demo.mjs')], { env: { ...process.env, TMPDIR: tmp } });
    expect(r.code, r.stderr.toString()).toBe(0);
    expect(r.stderr.toString()).toContain('== run: the bundle under runc');
    expect(r.stderr.toString()).toContain('demo done.');
    expect(fs.readdirSync(tmp)).toEqual([]);
  }, 120_000);

  it("lays small files with the times this Node's fs.utimes gives, whichever path makes them (the unit test, run on it)", () => {
    const vitest = path.join(repoRoot, 'node_modules', 'vitest', 'vitest.mjs');
    const out = execFileSync(node, [vitest, 'run', 'test/unit/rootfs-apply.test.ts', '-t', 'nanosecond'], { cwd: repoRoot, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    expect(out).toMatch(/Tests\s+.*1 passed/);
  }, 180_000);
});
