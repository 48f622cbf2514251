/**
 * `smart cache` as cron runs it, against a real redis-server, the stock registry and the fault
 * proxy: a cache that cannot be reached or written fails the command (exit 1, one line) within a
 * bounded time; the index lock is a short lease renewed while a run lives, released however the
 * run ends (--timeout, SIGINT), and outlived by nothing but one lease when a run is killed -9; a
 * skipped run says so, and exits 1 with --fail-if-locked; a store that is not there is an error.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inject } from 'vitest';
import { writeImage } from '../harness/images.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { startRedis, type RunningRedis } from '../harness/redis.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { smart, smartBin, type RunResult } from '../harness/run.js';
import { haveTools } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** `smart ARGS` as a child the test can signal, with its result when it ends. */
function smartChild(args: string[], cacheHome: string): { pid: number; signal(s: NodeJS.Signals): void; done: Promise<RunResult & { ms: number }> } {
  const started = performance.now();
  const child = spawn(process.execPath, [smartBin, ...args], {
    env: { ...process.env, XDG_CACHE_HOME: cacheHome, CONTAINERS_REGISTRIES_CONF: inject('registriesConf') },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const out: Buffer[] = [];
  let err = '';
  child.stdout.on('data', (d: Buffer) => out.push(d));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const done = new Promise<RunResult & { ms: number }>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, sig) => resolve({ code: code ?? (sig === 'SIGKILL' ? 137 : 1), stdout: Buffer.concat(out), stderr: err, ms: performance.now() - started }));
  });
  return { pid: child.pid!, signal: (s) => child.kill(s), done };
}

async function until(what: string, ms: number, probe: () => Promise<boolean>): Promise<void> {
  const end = Date.now() + ms;
  while (!(await probe())) {
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`);
    await sleep(50);
  }
}

describe.skipIf(!haveTools('docker-registry', 'redis-server', 'redis-cli'))('smart cache from cron', () => {
  let work: string;
  let store: string;
  let registry: RunningRegistry;
  let proxy: RunningProxy;
  let redis: RunningRedis;
  /** The lock key of the registry store behind the proxy, in Redis (default key prefix). */
  let lockKey: string;

  const cacheHome = async () => tempDir();
  const slowTags = () => proxy.setFaults((r) => (r.path.endsWith('/tags/list') ? { kind: 'delay', ms: 60_000 } : undefined));

  beforeAll(async () => {
    work = await tempDir();
    store = path.join(work, 'store');
    for (const [repo, content] of [
      ['team/a', 'a'],
      ['team/b', 'b'],
    ] as const) {
      const dir = path.join(work, 'images', repo.replace('/', '_'));
      await writeImage(dir, { layers: [{ files: { 'etc/base': 'base\n' }, createdBy: 'ADD base /' }, { files: { [`app/${content}`]: content }, createdBy: `COPY ${content} /app/` }] });
      const r = await smart(['push', `oci:${dir}:latest`, `file:${store}#${repo}:1`], { cacheHome: await cacheHome() });
      expect(r.code, r.stderr).toBe(0);
    }
    await fs.mkdir(path.join(work, 'reg'));
    registry = await startRegistry({ configDir: path.join(work, 'reg'), root: store });
    proxy = await startProxy({ target: registry.url });
    redis = await startRedis(await tempDir());
    lockKey = `smartlayer:trie:v1:docker://${proxy.host}:lock`;
  });

  afterAll(async () => {
    await redis?.stop();
    await proxy?.stop();
    await registry?.stop();
  });

  it('a file: store that is not there is an error naming it, not "0 tags"', async () => {
    const missing = path.join(work, 'no-such-store');
    const r = await smart(['cache', 'index', `file:${missing}`, '--json'], { cacheHome: await cacheHome() });
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n')).toEqual([expect.stringContaining(missing)]);
    // With --json the error is the one document on stdout.
    expect(JSON.parse(r.stdout.toString())).toMatchObject({ schemaVersion: 1, error: { code: 'NOT_FOUND', input: `file:${missing}` } });
  });

  it('a killed run (kill -9) holds the lock one lease at most: a run meanwhile is skipped (exit 1 with --fail-if-locked), the next proceeds', async () => {
    slowTags();
    try {
      const killed = smartChild(['cache', 'index', `docker://${proxy.host}`, '--redis', redis.url, '--lease', '8'], await cacheHome());
      await until('the index lock is taken', 10_000, async () => (await redis.cli('EXISTS', lockKey)) === '1');
      killed.signal('SIGKILL');
      await killed.done;
    } finally {
      proxy.setFaults(undefined);
    }
    const holder = JSON.parse(await redis.cli('GET', lockKey)) as { pid: number };
    expect(Number(await redis.cli('PTTL', lockKey))).toBeLessThanOrEqual(8000);

    const skipped = await smart(['cache', 'index', `docker://${proxy.host}`, '--redis', redis.url, '--json'], { cacheHome: await cacheHome() });
    expect(skipped.code, skipped.stderr).toBe(0);
    expect(JSON.parse(skipped.stdout.toString())).toMatchObject({ skipped: 'locked', lockedBy: { pid: holder.pid } });
    expect(skipped.stderr).toMatch(new RegExp(`another index run holds the lock \\(pid ${holder.pid} on .+\\); nothing done`));

    const failing = await smart(['cache', 'index', `docker://${proxy.host}`, '--redis', redis.url, '--fail-if-locked'], { cacheHome: await cacheHome() });
    expect(failing.code).toBe(1);
    expect(failing.stderr.trim().split('\n')).toEqual([expect.stringMatching(/error \[LOCKED\]: .*another index run holds the lock/)]);

    await until('the lease runs out', 10_000, async () => (await redis.cli('EXISTS', lockKey)) === '0');
    const next = await smart(['cache', 'index', `docker://${proxy.host}`, '--redis', redis.url, '--json', '--fail-if-locked'], { cacheHome: await cacheHome() });
    expect(next.code, next.stderr).toBe(0);
    expect(JSON.parse(next.stdout.toString())).toMatchObject({ tags: 2, failed: [] });
    expect(await redis.cli('EXISTS', lockKey)).toBe('0'); // released at the end
  });

  it('the lease is renewed while a run lives longer than it, and released by --timeout and by Ctrl-C', async () => {
    // A run of 2.5 s under a 1 s lease: the lock stays its own all along.
    proxy.setFaults((r) => (r.path.endsWith('/tags/list') ? { kind: 'delay', ms: 2500 } : undefined));
    try {
      const long = smartChild(['cache', 'index', `docker://${proxy.host}`, '--redis', redis.url, '--lease', '1', '--json'], await cacheHome());
      await until('the index lock is taken', 10_000, async () => (await redis.cli('EXISTS', lockKey)) === '1');
      const token = await redis.cli('GET', lockKey);
      await sleep(1800);
      expect(await redis.cli('GET', lockKey)).toBe(token);
      const r = await long.done;
      expect(r.code, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout.toString())).toMatchObject({ tags: 2 });
      expect(await redis.cli('EXISTS', lockKey)).toBe('0');
    } finally {
      proxy.setFaults(undefined);
    }

    slowTags();
    try {
      const timed = smartChild(['cache', 'index', `docker://${proxy.host}`, '--redis', redis.url, '--timeout', '2'], await cacheHome());
      const r = await timed.done;
      expect(r.code).toBe(1);
      expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(/error \[CANCELLED\]: timed out after 2 s \(--timeout\)/)]);
      expect(r.ms).toBeLessThan(6000);
      expect(await redis.cli('EXISTS', lockKey)).toBe('0');

      const interrupted = smartChild(['cache', 'index', `docker://${proxy.host}`, '--redis', redis.url], await cacheHome());
      await until('the index lock is taken', 10_000, async () => (await redis.cli('EXISTS', lockKey)) === '1');
      interrupted.signal('SIGINT');
      const i = await interrupted.done;
      expect(i.code).toBe(130);
      expect(i.ms).toBeLessThan(10_000);
      expect(await redis.cli('EXISTS', lockKey)).toBe('0');
    } finally {
      proxy.setFaults(undefined);
    }
  });

  it('the lock on the disk cache: the same lease; --timeout bounds warm too', async () => {
    const home = await cacheHome();
    const first = await smart(['cache', 'index', `docker://${proxy.host}`], { cacheHome: home });
    expect(first.code, first.stderr).toBe(0);
    proxy.stats.clear();
    slowTags();
    // Renewed every third of it, the lease outlives the kill by two thirds of it at least: the
    // skipped run must look within that, its Node start included (over a second on a loaded
    // machine, where a lease of 2 s left it 1.3 s).
    const leaseS = 6;
    let killedAt: number;
    try {
      const killed = smartChild(['cache', 'index', `docker://${proxy.host}`, '--lease', String(leaseS)], home);
      // The run is under way once it lists tags (the proxy holds that request).
      await until('the run lists tags', 10_000, async () => proxy.stats.requests.some((q) => q.path.endsWith('/tags/list')));
      killed.signal('SIGKILL');
      killedAt = Date.now();
      await killed.done;
      const skipped = await smart(['cache', 'index', `docker://${proxy.host}`, '--fail-if-locked'], { cacheHome: home });
      expect(skipped.code).toBe(1);
      expect(skipped.stderr).toMatch(/another index run holds the lock \(pid \d+ on /);
      // --timeout bounds warm as it bounds index (here the registry hangs on whatever it is asked).
      proxy.setFaults(() => ({ kind: 'delay', ms: 60_000 }));
      const warm = await smart(['cache', 'warm', `docker://${proxy.host}`, '--timeout', '1'], { cacheHome: home });
      expect(warm.code, warm.stderr).toBe(1);
      expect(warm.stderr).toMatch(/timed out after 1 s/);
    } finally {
      proxy.setFaults(undefined);
    }
    // Last renewed before the kill, the lease has run out one lease after it at the latest.
    await sleep(Math.max(0, killedAt + leaseS * 1000 + 200 - Date.now()));
    const next = await smart(['cache', 'index', `docker://${proxy.host}`, '--json', '--fail-if-locked'], { cacheHome: home });
    expect(next.code, next.stderr).toBe(0);
    expect(JSON.parse(next.stdout.toString())).toMatchObject({ tags: 2, failed: [] });
  });

  it('Redis stopped: index, plan and warm exit 1 with one line naming it (nothing computed and thrown away)', async () => {
    const down = await startRedis(await tempDir());
    await down.stop();
    const home = await cacheHome();
    const ctx = path.join(work, 'ctx');
    await fs.mkdir(ctx, { recursive: true });
    await fs.writeFile(path.join(ctx, 'Dockerfile'), 'FROM scratch\nCOPY a /app/\n');
    await fs.writeFile(path.join(ctx, 'a'), 'a');
    for (const args of [
      ['cache', 'index', `file:${store}`],
      ['cache', 'plan', `file:${store}`, ctx],
      ['cache', 'warm', `file:${store}`],
    ]) {
      const r = await smart([...args, '--redis', down.url], { cacheHome: home });
      expect(r.code, `${args[1]}: ${r.stderr}`).toBe(1);
      expect(r.stderr.trim().split('\n'), args[1]).toEqual([expect.stringMatching(new RegExp(`error \\[STORAGE\\]: redis 127\\.0\\.0\\.1:${down.port}: .*ECONNREFUSED`))]);
    }
  });

  it('Redis that answers but refuses writes (out of memory): index exits 1 with its error', async () => {
    const full = await startRedis(await tempDir());
    try {
      await full.cli('CONFIG', 'SET', 'maxmemory-policy', 'noeviction');
      await full.cli('CONFIG', 'SET', 'maxmemory', '1');
      const r = await smart(['cache', 'index', `file:${store}`, '--redis', full.url], { cacheHome: await cacheHome() });
      expect(r.code).toBe(1);
      expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(/error \[STORAGE\]: redis .*OOM/)]);
    } finally {
      await full.stop();
    }
  });

  it('Redis frozen (SIGSTOP): index gives up in bounded time with exit 1; a SET NX that ran late holds the lock one lease at most', async () => {
    const frozen = await startRedis(await tempDir());
    try {
      process.kill(frozen.pid, 'SIGSTOP');
      const r = await smartChild(['cache', 'index', `file:${store}`, '--redis', frozen.url, '--lease', '2'], await cacheHome()).done;
      expect(r.code).toBe(1);
      expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(/error \[STORAGE\]: redis .*no answer|error \[STORAGE\]: redis .*timed? ?out/i)]);
      expect(r.ms).toBeLessThan(8000);
      process.kill(frozen.pid, 'SIGCONT');
      // Whatever the frozen server did with the SET NX it got, the store can be indexed one lease later.
      await sleep(2200);
      const next = await smart(['cache', 'index', `file:${store}`, '--redis', frozen.url, '--json', '--fail-if-locked'], { cacheHome: await cacheHome() });
      expect(next.code, next.stderr).toBe(0);
      expect(JSON.parse(next.stdout.toString())).toMatchObject({ tags: 2 });
    } finally {
      await frozen.stop();
    }
  });
});
