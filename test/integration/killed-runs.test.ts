/**
 * What runs killed with kill -9 leave, and who removes it: the next push into the same repository
 * removes the upload left in its `_uploads` (on disk and in S3), says so in --json
 * (`details.cleaned`), and never removes what a live run uses.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import { describe, expect, it } from 'vitest';
import { fixtures } from '../harness/fixtures.js';
import { smart, smartBin } from '../harness/run.js';
import { startS3 } from '../harness/s3.js';
import { tempDir } from '../harness/tmp.js';
import { listAll } from '../harness/tree.js';

interface Cleaned {
  path: string;
  bytes: number;
}

/** A `smart` run in the background, to kill or to feed. */
function background(args: string[], env: NodeJS.ProcessEnv): { child: ChildProcess; exit: Promise<number | null> } {
  const child = spawn(process.execPath, [smartBin, ...args], { stdio: ['pipe', 'ignore', 'ignore'], env: { ...process.env, ...env } });
  child.stdin!.on('error', () => undefined);
  return { child, exit: new Promise((resolve) => child.once('close', (code) => resolve(code))) };
}

async function until(what: string, test: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 400; i++) {
    // What is looked at changes meanwhile (files come and go): a look that fails is a "not yet".
    if (await test().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting until ${what}`);
}

const cleanedOf = (stdout: Buffer): Cleaned[] => (JSON.parse(stdout.toString()) as { details?: { cleaned?: Cleaned[] } }).details?.cleaned ?? [];

describe('pushes killed mid-way', () => {
  const archive = async () => fs.readFile(fixtures().paths.dockerArchiveBasic);
  /** The docker-save archive up to 1000 bytes into its first layer: a push fed this is uploading that layer, waiting for more. */
  const midLayer = (bytes: Buffer) => bytes.subarray(0, Math.floor(bytes.indexOf('/layer.tar') / 512) * 512 + 512 + 1000);
  const uploadsOf = (store: string, repo: string) => path.join(store, 'docker/registry/v2/repositories', repo, '_uploads');

  it('kill -9 mid-push into file:, then the next push into the repository removes the upload it left, and says so', async () => {
    const work = await tempDir();
    const store = path.join(work, 'store');
    const killed = background(['push', '-q', 'docker-archive:-', `file:${store}#k/app:1`], { XDG_CACHE_HOME: await tempDir() });
    killed.child.stdin!.write(midLayer(await archive()));
    const uploads = uploadsOf(store, 'k/app');
    await until('the push is writing its first layer', async () => (await listAll(uploads)).some((p) => /^[0-9a-f-]{36}\/data\.tmp-/.test(p)));
    killed.child.kill('SIGKILL');
    await killed.exit;
    const [left] = await fs.readdir(uploads);

    const again = await smart(['push', `docker-archive:${fixtures().paths.dockerArchiveBasic}`, `file:${store}#k/app:1`, '--json'], { cacheHome: await tempDir() });
    expect(again.code, again.stderr).toBe(0);
    expect(cleanedOf(again.stdout)).toEqual([{ path: path.join(uploads, left!), bytes: expect.any(Number) }]);
    expect(await fs.readdir(uploads)).toEqual([]);
  });

  it('a push beside a live one into the same repository leaves the live one its upload; both complete', async () => {
    const work = await tempDir();
    const store = path.join(work, 'store');
    const bytes = await archive();
    const live = background(['push', '-q', 'docker-archive:-', `file:${store}#c/app:1`], { XDG_CACHE_HOME: await tempDir() });
    const first = midLayer(bytes);
    live.child.stdin!.write(first);
    const uploads = uploadsOf(store, 'c/app');
    await until('the push is writing its first layer', async () => (await listAll(uploads)).some((p) => /\/data\.tmp-/.test(p)));
    const during = await listAll(uploads);

    const beside = await smart(['push', `oci:${fixtures().paths.ociBasic}:latest`, `file:${store}#c/app:2`, '--json']);
    expect(beside.code, beside.stderr).toBe(0);
    expect(cleanedOf(beside.stdout)).toEqual([]);
    expect(await listAll(uploads)).toEqual(during);

    live.child.stdin!.end(bytes.subarray(first.length));
    expect(await live.exit).toBe(0);
    expect(await fs.readdir(uploads)).toEqual([]);
    expect(await fs.readdir(path.join(store, 'docker/registry/v2/repositories/c/app/_manifests/tags'))).toEqual(['1', '2']);
  });

  it('kill -9 mid-push into s3://, then the next push into the repository removes the upload keys it left', async () => {
    const work = await tempDir();
    const s3 = await startS3(path.join(work, 's3'));
    try {
      const keys = async (prefix: string) => ((await s3.client().send(new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: prefix }))).Contents ?? []).map((o) => o.Key!);
      const dest = `s3://${s3.bucket}/root#k/app:1`;
      const uploads = 'root/docker/registry/v2/repositories/k/app/_uploads/';
      const killed = background(['push', '-q', 'docker-archive:-', dest], { ...s3.env, XDG_CACHE_HOME: await tempDir() });
      killed.child.stdin!.write(midLayer(await archive()));
      await until('the push has opened its first upload', async () => (await keys(uploads)).some((k) => k.endsWith('/smartlayer-owner')) && (await keys(uploads)).some((k) => k.endsWith('/startedat')));
      killed.child.kill('SIGKILL');
      await killed.exit;
      const left = await keys(uploads);
      expect(left.length).toBeGreaterThanOrEqual(2);

      const again = await smart(['push', `docker-archive:${fixtures().paths.dockerArchiveBasic}`, dest, '--json'], { cacheHome: await tempDir(), env: s3.env });
      expect(again.code, again.stderr).toBe(0);
      const id = left[0]!.slice(uploads.length).split('/')[0]!;
      expect(cleanedOf(again.stdout)).toEqual([{ path: `s3://${s3.bucket}/${uploads}${id}`, bytes: expect.any(Number) }]);
      expect(await keys(uploads)).toEqual([]);
    } finally {
      await s3.stop();
    }
  });
});
