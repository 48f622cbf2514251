/**
 * One contract for every MetadataCache, run against the disk cache, Redis (one real redis-server)
 * and a Redis Cluster (three real masters). Then the faults a shared cache meets in a fleet: Redis
 * killed mid-run, not running at all, frozen (SIGSTOP), flushed; through `forgivingCache` each is a
 * miss or a no-op within a bounded time and exactly one warning. Locally the Redis parts are skipped
 * without redis-server/redis-cli; under CI that is a failure (haveTools throws).
 */
import { createRequire } from 'node:module';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { isSmartError, type SmartError } from '../../src/errors.js';
import { DiskMetadataCache, forgivingCache, openMetadataCache, type MetadataCache } from '../../src/cache/metadata-cache.js';
import { freePort } from '../harness/ports.js';
import { startRedis, startRedisCluster, type RunningRedis, type RunningRedisCluster } from '../harness/redis.js';
import { makeTestCA } from '../harness/tls.js';
import { tempDir } from '../harness/tmp.js';
import { haveTools } from '../harness/tools.js';

const haveRedis = haveTools('redis-server', 'redis-cli');
const noRedis = 'redis-server or redis-cli is not installed';

/** Whether ioredis has been loaded into this process (it is CommonJS: Node's module cache says). */
const ioredisLoaded = () => Object.keys(createRequire(import.meta.url).cache).some((f) => /[\\/]node_modules[\\/]ioredis[\\/]/.test(f));
const ioredisLoadedAtStart = ioredisLoaded();

// ---- servers: one single node and one cluster for the contract, started once for the file -------

let single: RunningRedis | undefined;
let cluster: RunningRedisCluster | undefined;
// In beforeAll, not at load: a run whose -t filter skips every test here runs no afterAll either,
// and servers started at load were left running.
beforeAll(async () => {
  if (haveRedis) [single, cluster] = await Promise.all([startRedis(await tempDir('smart-redis-')), startRedisCluster(await tempDir('smart-redis-cluster-'))]);
}, 60_000);
afterAll(async () => {
  await Promise.all([single?.stop(), cluster?.stop()]);
});

/** Every cache a test opens is closed after it, and every server a test starts is stopped. */
const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  await Promise.all(cleanups.splice(0).map((c) => c()));
});
function closing<T extends { close(): Promise<void> }>(c: T): T {
  cleanups.push(() => c.close());
  return c;
}
async function owned<T extends { stop(): Promise<void> }>(p: Promise<T>): Promise<T> {
  const server = await p;
  cleanups.push(() => server.stop());
  return server;
}

async function redisCache(url: string, keyPrefix: string): Promise<MetadataCache> {
  const { createRedisMetadataCache } = await import('../../src/cache/redis-cache.js');
  return closing(await createRedisMetadataCache({ url, keyPrefix }));
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function timed<T>(fn: () => Promise<T>): Promise<{ value: T; ms: number }> {
  const t0 = performance.now();
  const value = await fn();
  return { value, ms: performance.now() - t0 };
}

async function timedFailure(fn: () => Promise<unknown>): Promise<{ error: unknown; ms: number }> {
  const t0 = performance.now();
  try {
    await fn();
  } catch (error) {
    return { error, ms: performance.now() - t0 };
  }
  throw new Error('expected a failure');
}

// ---- the contract -------------------------------------------------------------------------------

interface CacheCase {
  label: string;
  available: boolean;
  /** A cache over this backend; the same prefix over the same backend sees the same entries. */
  make(keyPrefix: string): Promise<MetadataCache>;
  /** The cluster under it, once started (beforeAll). */
  cluster?: () => RunningRedisCluster | undefined;
}

let diskDir: string | undefined;
const cases: CacheCase[] = [
  {
    label: 'DiskMetadataCache',
    available: true,
    make: async (prefix) => closing(new DiskMetadataCache((diskDir ??= await tempDir('smart-metadata-')), prefix)),
  },
  { label: 'RedisMetadataCache (single node)', available: haveRedis, make: (prefix) => redisCache(single!.url, prefix) },
  { label: 'RedisMetadataCache (cluster of 3)', available: haveRedis, make: (prefix) => redisCache(cluster!.url, prefix), cluster: () => cluster },
];

let prefixCounter = 0;
const freshPrefix = () => `test${++prefixCounter}-${process.pid}:`;
const latencies: string[] = [];

describe('ioredis loading', () => {
  it('is not loaded by the disk cache, and is by the Redis one', async () => {
    expect(ioredisLoadedAtStart).toBe(false);
    const warnings: string[] = [];
    const disk = closing(await openMetadataCache({ diskDir: await tempDir('smart-metadata-'), onWarning: (m) => warnings.push(m) }));
    await disk.set('k', 'v');
    expect(await disk.get('k')).toBe('v');
    expect(ioredisLoaded()).toBe(false);
    if (!haveRedis) return;
    closing(await openMetadataCache({ redisUrl: single!.url, diskDir: '/nonexistent', onWarning: (m) => warnings.push(m) }));
    expect(ioredisLoaded()).toBe(true); // the check above can see it
    expect(warnings).toEqual([]);
  });
});

for (const c of cases) {
  describe.skipIf(!c.available)(`MetadataCache contract: ${c.label}${c.available ? '' : ` (skipped: ${noRedis})`}`, () => {
    it('get, set, overwrite, delete', async () => {
      const cache = await c.make(freshPrefix());
      expect(await cache.get('missing')).toBeUndefined();
      await cache.set('a', 'one');
      expect(await cache.get('a')).toBe('one');
      await cache.set('a', 'two');
      expect(await cache.get('a')).toBe('two');
      await cache.set('empty', '');
      expect(await cache.get('empty')).toBe('');
      await cache.delete('a');
      expect(await cache.get('a')).toBeUndefined();
      await cache.delete('never-there'); // no error
    });

    it('getMany and setMany: one answer per key, in order, misses included', async () => {
      const cache = await c.make(freshPrefix());
      expect(await cache.getMany([])).toEqual([]);
      await cache.setMany([]);
      await cache.setMany([
        { key: 'x', value: '1' },
        { key: 'y', value: '2' },
        { key: 'z', value: '3' },
      ]);
      expect(await cache.getMany(['z', 'nope', 'x', 'x', 'y'])).toEqual(['3', undefined, '1', '1', '2']);
      await cache.setMany([
        { key: 'x', value: '10' },
        { key: 'w', value: '4' },
        { key: 'v', value: 'first' },
        { key: 'v', value: 'last' }, // the last of a key given twice wins
      ]);
      expect(await cache.getMany(['w', 'x', 'y', 'v'])).toEqual(['4', '10', '2', 'last']);
      expect(await cache.get('w')).toBe('4');
    });

    it('TTL: entries set with 1 s (set and setMany) are gone after 1.2 s, others stay', async () => {
      const cache = await c.make(freshPrefix());
      await cache.set('short', 'v', 1);
      await cache.setMany([
        { key: 'short2', value: 'v', ttlSeconds: 1 },
        { key: 'half', value: 'v', ttlSeconds: 0.5 },
        { key: 'long', value: 'v', ttlSeconds: 3600 },
        { key: 'forever', value: 'v' },
        { key: 'born-expired', value: 'v', ttlSeconds: 0 },
      ]);
      expect(await cache.getMany(['short', 'short2', 'half', 'long', 'forever', 'born-expired'])).toEqual(['v', 'v', 'v', 'v', 'v', undefined]);
      await sleep(1200);
      expect(await cache.getMany(['short', 'short2', 'half', 'long', 'forever'])).toEqual([undefined, undefined, undefined, 'v', 'v']);
      expect(await cache.get('short')).toBeUndefined();
    });

    it('key prefixes isolate caches over one backend', async () => {
      const base = freshPrefix();
      const a = await c.make(`${base}a:`);
      const b = await c.make(`${base}b:`);
      const a2 = await c.make(`${base}a:`);
      await a.set('k', 'from a');
      await b.set('k', 'from b');
      expect(await a.get('k')).toBe('from a');
      expect(await b.get('k')).toBe('from b');
      expect(await a2.get('k')).toBe('from a'); // same prefix, same entries
      await b.delete('k');
      expect(await a.get('k')).toBe('from a');
      expect(await b.get('k')).toBeUndefined();
      await a.setMany([{ key: 'm', value: 'a' }]);
      expect(await b.getMany(['m', 'k'])).toEqual([undefined, undefined]);
    });

    it('unicode keys and values, and 1 MiB values, come back byte for byte', async () => {
      const cache = await c.make(freshPrefix());
      const key = 'ключ/🔑/{tag}/é\u0301/日本';
      const value = 'значение ✓ 🐳🐳 \u0000 nul, \r\n crlf, "quotes", {json}: 日本語 \u{10FFFF}';
      await cache.set(key, value);
      expect(await cache.get(key)).toBe(value);
      const big = randomBytes(768 * 1024).toString('base64'); // 1 MiB of ASCII
      const bigUnicode = '🐳é'.repeat(100_000); // ~600 KB of 4- and 2-byte characters
      expect(big.length).toBe(1024 * 1024);
      await cache.set('big', big);
      await cache.setMany([{ key: 'big-u', value: bigUnicode }]);
      const [x, y, z] = await cache.getMany(['big', 'big-u', key]);
      expect(x === big).toBe(true);
      expect(y === bigUnicode).toBe(true);
      expect(z).toBe(value);
    });

    it('setManyIfUnchanged writes only over what each key held when read (nothing, or a value)', async () => {
      const cache = await c.make(freshPrefix());
      const keys = Array.from({ length: 300 }, (_, i) => `cas:${i}`);
      await cache.setMany(keys.map((key, i) => ({ key, value: `read ${i}` })));
      // What another process wrote after these were read: every third key.
      await cache.setMany(keys.filter((_, i) => i % 3 === 0).map((key, i) => ({ key, value: `newer ${i}` })));
      await cache.set('cas:ttl', 'read', 0.2);
      await sleep(400); // expired: holds nothing
      const written = await cache.setManyIfUnchanged([
        ...keys.map((key, i) => ({ key, value: `mine ${i}`, was: `read ${i}` })),
        { key: 'cas:absent', value: 'mine', was: undefined },
        { key: 'cas:ttl', value: 'mine', was: undefined },
        { key: 'cas:0', value: 'mine', was: undefined }, // it holds something
        { key: 'cas:nothing', value: 'mine', was: 'read' }, // it holds nothing
      ]);
      expect(written).toEqual([...keys.map((_, i) => i % 3 !== 0), true, true, false, false]);
      const got = await cache.getMany([...keys, 'cas:absent', 'cas:ttl', 'cas:nothing']);
      expect(got).toEqual([...keys.map((_, i) => (i % 3 === 0 ? `newer ${i / 3}` : `mine ${i}`)), 'mine', 'mine', undefined]);
      expect(await cache.setManyIfUnchanged([])).toEqual([]);
    });

    it('leases: setIfAbsent once, renewIfEqual and deleteIfEqual only for the holder, expiry frees it', async () => {
      const cache = await c.make(freshPrefix());
      expect(await cache.setIfAbsent('lock', 'mine', 1)).toBe(true);
      expect(await cache.setIfAbsent('lock', 'theirs', 1)).toBe(false);
      expect(await cache.renewIfEqual('lock', 'theirs', 1)).toBe(false);
      expect(await cache.deleteIfEqual('lock', 'theirs')).toBe(false);
      expect(await cache.get('lock')).toBe('mine');
      // Renewed by its holder: still there after its first second. (Renewed early, for 2 s: a
      // renewal at 0.6 s of a lease of 1 s left a loaded machine 0.4 s to send it.)
      await sleep(300);
      expect(await cache.renewIfEqual('lock', 'mine', 2)).toBe(true);
      await sleep(1000);
      expect(await cache.get('lock')).toBe('mine');
      expect(await cache.deleteIfEqual('lock', 'mine')).toBe(true);
      expect(await cache.get('lock')).toBeUndefined();
      expect(await cache.deleteIfEqual('lock', 'mine')).toBe(false);
      // Not renewed: gone after its lease, and then another can take it (but not renew the old one).
      expect(await cache.setIfAbsent('lock', 'mine', 0.5)).toBe(true);
      await sleep(700);
      expect(await cache.renewIfEqual('lock', 'mine', 1)).toBe(false);
      expect(await cache.setIfAbsent('lock', 'theirs', 1)).toBe(true);
      expect(await cache.deleteIfEqual('lock', 'mine')).toBe(false);
      expect(await cache.get('lock')).toBe('theirs');
    });

    it('leases: of 20 racing takers of an expired entry, exactly one wins', async () => {
      const prefix = freshPrefix();
      const caches = await Promise.all(Array.from({ length: 20 }, () => c.make(prefix)));
      expect(await caches[0]!.setIfAbsent('race', 'old', 0.2)).toBe(true);
      await sleep(400);
      const won = await Promise.all(caches.map((cache, i) => cache.setIfAbsent('race', `taker ${i}`, 10)));
      expect(won.filter(Boolean)).toHaveLength(1);
      expect(await caches[0]!.get('race')).toBe(`taker ${won.indexOf(true)}`);
    });

    it('1000 keys (on every cluster node) in one setMany and one getMany; latency of getMany(100)', async () => {
      const prefix = freshPrefix();
      const cache = await c.make(prefix);
      const keys = Array.from({ length: 1000 }, (_, i) => `many:${i}`);
      await cache.setMany(keys.map((key, i) => ({ key, value: `v${i}` })));
      const got = await cache.getMany([...keys, 'many:absent']);
      expect(got).toEqual([...keys.map((_, i) => `v${i}`), undefined]);
      const spread = c.cluster?.();
      if (spread) {
        // The keys really are spread: every master holds some of them.
        for (const node of spread.nodes) {
          const n = Number(await node.cli('EVAL', `return #redis.call('KEYS', ARGV[1])`, '0', `${prefix}many:*`));
          expect(n, `keys on node ${node.port}`).toBeGreaterThan(100);
        }
      }
      const hundred = keys.slice(0, 100);
      for (let i = 0; i < 20; i++) await cache.getMany(hundred); // warm up
      const samples: number[] = [];
      for (let i = 0; i < 200; i++) samples.push((await timed(() => cache.getMany(hundred))).ms);
      samples.sort((p, q) => p - q);
      const line = `${c.label}: getMany(100 keys) p50 ${samples[100]!.toFixed(3)} ms, p95 ${samples[190]!.toFixed(3)} ms, max ${samples[199]!.toFixed(3)} ms`;
      latencies.push(line);
      console.log(line);
    });
  });
}

// ---- Redis specifics ----------------------------------------------------------------------------

describe('DiskMetadataCache specifics', () => {
  it('leases: in 200 races of 20 takers of an expired entry, exactly one wins each, and holds it', async () => {
    // Moving the expired entry aside (the earlier takeover) let a slow taker move a winner's new
    // entry away: 144 of 300 such races had two winners or none.
    const dir = await tempDir('smart-metadata-race-');
    const races: number[] = [];
    for (let round = 0; round < 200; round++) {
      const caches = Array.from({ length: 20 }, () => new DiskMetadataCache(dir, `race${round}:`));
      expect(await caches[0]!.setIfAbsent('lock', 'old', 0.001)).toBe(true);
      await sleep(3);
      const won = await Promise.all(caches.map((cache, i) => cache.setIfAbsent('lock', `taker ${i}`, 10)));
      races.push(won.filter(Boolean).length);
      if (won.filter(Boolean).length === 1) expect(await caches[0]!.get('lock')).toBe(`taker ${won.indexOf(true)}`);
    }
    expect(races.filter((n) => n !== 1)).toEqual([]);
    // No claim is left behind.
    const left = (await fs.promises.readdir(dir, { recursive: true })).filter((f) => String(f).endsWith('.claim'));
    expect(left).toEqual([]);
  });

  it('leases: a takeover claim left by a taker that died is freed after 10 s, not before', async () => {
    const dir = await tempDir('smart-metadata-claim-');
    const cache = new DiskMetadataCache(dir, 'claim:');
    expect(await cache.setIfAbsent('lock', 'old', 0.001)).toBe(true);
    await sleep(3);
    // The claim a taker would make for that expired entry: named after its bytes, beside it.
    const [sub] = (await fs.promises.readdir(dir)).filter((d) => d.length === 2);
    const [entry] = await fs.promises.readdir(path.join(dir, sub!));
    const file = path.join(dir, sub!, entry!);
    const bytes = await fs.promises.readFile(file);
    const claim = `${file}.${createHash('sha256').update(bytes).digest('hex').slice(0, 16)}.claim`;
    await fs.promises.writeFile(claim, '');
    expect(await cache.setIfAbsent('lock', 'new', 10)).toBe(false); // another taker is replacing it
    const past = new Date(Date.now() - 11_000);
    await fs.promises.utimes(claim, past, past);
    expect(await cache.setIfAbsent('lock', 'new', 10)).toBe(true);
    expect(await cache.get('lock')).toBe('new');
    expect(fs.existsSync(claim)).toBe(false);
  });
});

describe.skipIf(!haveRedis)('RedisMetadataCache specifics', () => {
  it('stores under the key prefix (default smartlayer:), with SET EX for a TTL, in the database of the URL', async () => {
    const { createRedisMetadataCache } = await import('../../src/cache/redis-cache.js');
    const plain = closing(await createRedisMetadataCache({ url: single!.url }));
    const tag = `specifics-${process.pid}`;
    await plain.set(tag, 'v', 100);
    expect(await single!.cli('GET', `smartlayer:${tag}`)).toBe('v');
    const ttl = Number(await single!.cli('TTL', `smartlayer:${tag}`));
    expect(ttl).toBeGreaterThan(90);
    expect(ttl).toBeLessThanOrEqual(100);
    await plain.delete(tag);
    expect(await single!.cli('EXISTS', `smartlayer:${tag}`)).toBe('0');

    const db3 = closing(await createRedisMetadataCache({ url: `${single!.url}/3`, keyPrefix: 'p:' }));
    await db3.set(tag, 'in three');
    expect(await single!.cli('-n', '3', 'GET', `p:${tag}`)).toBe('in three');
    expect(await single!.cli('GET', `p:${tag}`)).toBe('');
  });

  it('computes cluster slots as Redis does (hash tags included)', async () => {
    const { clusterKeySlot } = await import('../../src/cache/redis-cache.js');
    const keys = ['', 'a', 'foo', 'smartlayer:compressed:v1:x', '{user1000}.following', 'x{}y', 'x{a}{b}', '{', 'ключ🔑', 'a{b'];
    for (const k of keys) expect(clusterKeySlot(k), k).toBe(Number(await cluster!.nodes[0]!.cli('CLUSTER', 'KEYSLOT', k)));
  });

  it('authenticates with a password or an ACL user, and never shows either in a warning', async () => {
    const server = await owned(startRedis(await tempDir('smart-redis-auth-'), { args: ['--requirepass', 'Pw-d3f@ult'], password: 'Pw-d3f@ult' }));
    expect(await server.cli('ACL', 'SETUSER', 'alice', 'on', '>al1ce-secret', '~*', '&*', '+@all')).toBe('OK');
    const diskDir = await tempDir('smart-metadata-');
    const warnings: string[] = [];
    const onWarning = (m: string) => warnings.push(m);
    const byPassword = closing(await openMetadataCache({ redisUrl: `redis://:Pw-d3f%40ult@127.0.0.1:${server.port}`, diskDir, onWarning }));
    await byPassword.set('k', 'by password');
    const byUser = closing(await openMetadataCache({ redisUrl: `redis://alice:al1ce-secret@127.0.0.1:${server.port}/0`, diskDir, onWarning }));
    expect(await byUser.get('k')).toBe('by password');
    expect(warnings).toEqual([]);

    const wrong = closing(await openMetadataCache({ redisUrl: `redis://alice:wr0ng-secret@127.0.0.1:${server.port}`, diskDir, onWarning }));
    expect(await wrong.get('k')).toBeUndefined();
    await wrong.set('k', 'x');
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain(`127.0.0.1:${server.port}`);
    expect(warnings[0]).not.toMatch(/wr0ng-secret|alice/);
    const none = closing(await openMetadataCache({ redisUrl: `redis://127.0.0.1:${server.port}`, diskDir, onWarning }));
    expect(await none.get('k')).toBeUndefined();
    expect(warnings).toHaveLength(2);
    expect(warnings[1]).toMatch(/NOAUTH/);
  });

  it('says what is wrong where the client misleads: a server that is no cluster, a password refused (not retryable, also with a database), a TLS-only server', async () => {
    const { createRedisMetadataCache } = await import('../../src/cache/redis-cache.js');
    const failure = async (url: string): Promise<SmartError> => {
      const cache = closing(await createRedisMetadataCache({ url }));
      return cache.get('k').then(
        () => {
          throw new Error(`${url} answered`);
        },
        (e: SmartError) => e,
      );
    };
    const notCluster = await failure(single!.url.replace(/^redis:/, 'redis+cluster:'));
    expect([notCluster.message, notCluster.hint, notCluster.retryable]).toEqual([
      `redis cluster 127.0.0.1:${single!.port}: connecting: the server is not a Redis Cluster (ERR This instance has cluster support disabled)`,
      'for a single server, use redis:// or rediss://',
      false,
    ]);

    const server = await owned(startRedis(await tempDir('smart-redis-auth-'), { args: ['--requirepass', 'Pw-d3f@ult'], password: 'Pw-d3f@ult' }));
    for (const url of [`redis://:wr0ng-secret@127.0.0.1:${server.port}`, `redis://:wr0ng-secret@127.0.0.1:${server.port}/1`]) {
      const e = await failure(url);
      expect(e.message, url).toMatch(new RegExp(`^redis 127\\.0\\.0\\.1:${server.port}: [A-Z a-z]+: the server refused the user name or password \\(WRONGPASS\\)$`));
      expect([e.hint, e.retryable]).toEqual(['check the user name and password in the Redis URL: redis://USER:PASSWORD@HOST', false]);
    }
    const none = await failure(`redis://127.0.0.1:${server.port}`);
    expect([none.message, none.retryable]).toEqual([expect.stringMatching(/NOAUTH/), false]);

    const dir = await tempDir('smart-redis-tls-only-');
    const ca = await makeTestCA(dir);
    const tlsOnly = await owned(startRedis(dir, { tls: { certFile: ca.certFile, keyFile: ca.keyFile } }));
    const plain = await failure(tlsOnly.url.replace(/^rediss:/, 'redis:'));
    expect(plain.hint).toBe('a server that takes TLS only is reached with rediss://');
    // The other way round: TLS to a plain server, which waits for the rest of a command.
    const tls = await failure(single!.url.replace(/^redis:/, 'rediss:'));
    expect([tls.message, tls.hint]).toEqual([expect.stringMatching(/: connecting: (connect ETIMEDOUT|no answer in \d+ ms)$/), 'a server without TLS is reached with redis://']);

    // Not a Redis server at all (an HTTP one): ioredis's "Please report this" said as what it is.
    const web = http.createServer((_, res) => res.end('hello'));
    await new Promise<void>((r) => web.listen(0, '127.0.0.1', r));
    try {
      const notRedis = await failure(`redis://127.0.0.1:${(web.address() as AddressInfo).port}`);
      expect([notRedis.message, notRedis.hint, notRedis.retryable]).toEqual([
        expect.stringMatching(/^redis 127\.0\.0\.1:\d+: [A-Za-z ()]+: the server does not answer as Redis does \(its first byte "H"\)$/),
        'check the host and port of the Redis URL: is a Redis server there?',
        false,
      ]);
    } finally {
      web.closeAllConnections();
      await new Promise((r) => web.close(r));
    }
  });

  it('a node of a Redis Cluster reached with redis://: says so, and that redis+cluster:// reaches a cluster (not MOVED or CROSSSLOT alone)', async () => {
    const { createRedisMetadataCache } = await import('../../src/cache/redis-cache.js');
    const node = cluster!.nodes[0]!;
    const asSingle = closing(await createRedisMetadataCache({ url: node.url }));
    // A key of another node's slot: the node answers MOVED; keys of several slots at once: CROSSSLOT.
    let other = 0;
    while (!(await node.cli('GET', `smartlayer:k${other}`)).startsWith('MOVED')) other++;
    const failures = [await asSingle.get(`k${other}`).catch((e: SmartError) => e), await asSingle.getMany(['a', 'b', 'c', 'd']).catch((e: SmartError) => e)];
    expect(failures.map((e) => [(e as SmartError).message, (e as SmartError).hint, (e as SmartError).retryable])).toEqual([
      [expect.stringMatching(new RegExp(`^redis 127\\.0\\.0\\.1:${node.port}: GET: the server is a node of a Redis Cluster \\(it answered MOVED \\d+ 127\\.0\\.0\\.1:\\d+\\)$`)), 'for a Redis Cluster, use redis+cluster:// or rediss+cluster://', false],
      [`redis 127.0.0.1:${node.port}: GET (pipelined): the server is a node of a Redis Cluster (it answered CROSSSLOT)`, 'for a Redis Cluster, use redis+cluster:// or rediss+cluster://', false],
    ]);
  });

  it('a server at its maxclients: says the server refused the connection, not ioredis\'s "please report it"', async () => {
    const { createRedisMetadataCache } = await import('../../src/cache/redis-cache.js');
    const server = await owned(startRedis(await tempDir('smart-redis-full-')));
    expect(await server.cli('CONFIG', 'SET', 'maxclients', '1')).toBe('OK');
    // The one client the server takes, held for the test.
    const holder = net.connect({ host: '127.0.0.1', port: server.port });
    cleanups.push(async () => void holder.destroy());
    await new Promise<void>((resolve, reject) => {
      holder.once('error', reject);
      holder.once('data', () => resolve());
      holder.write('PING\r\n');
    });
    const full = closing(await createRedisMetadataCache({ url: server.url }));
    // The refusal arrives before any command is sent: ioredis's "Command queue state error. If you
    // can reproduce this, please report it. Last error: ERR max number of clients reached".
    await sleep(200);
    const failures = [await full.get('k').catch((e: SmartError) => e), await full.setMany([{ key: 'k', value: 'v' }]).catch((e: SmartError) => e)];
    expect(failures.map((e) => [(e as SmartError).message, (e as SmartError).hint])).toEqual(
      ['GET', 'SET (pipelined)'].map((what) => [
        `redis 127.0.0.1:${server.port}: ${what}: the server refused the connection: max number of clients reached`,
        "raise the server's maxclients, or find what holds its connections (redis-cli CLIENT LIST)",
      ]),
    );
  });

  it('rediss:// (TLS) with an extra CA; without it, one warning about the certificate', async () => {
    const dir = await tempDir('smart-redis-tls-');
    const ca = await makeTestCA(dir);
    const server = await owned(startRedis(dir, { tls: { certFile: ca.certFile, keyFile: ca.keyFile } }));
    expect(server.url).toMatch(/^rediss:/);
    const warnings: string[] = [];
    const onWarning = (m: string) => warnings.push(m);
    const trusted = closing(await openMetadataCache({ redisUrl: server.url, diskDir: '/nonexistent', redisCa: [ca.caPem], onWarning }));
    await trusted.setMany([{ key: 'k', value: 'over tls' }]);
    expect(await trusted.getMany(['k'])).toEqual(['over tls']);
    expect(await server.cli('GET', 'smartlayer:k')).toBe('over tls');
    expect(warnings).toEqual([]);
    const untrusted = closing(await openMetadataCache({ redisUrl: server.url, diskDir: '/nonexistent', onWarning }));
    const { value, ms } = await timed(() => untrusted.get('k'));
    expect(value).toBeUndefined();
    expect(ms).toBeLessThan(3000);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/certificate/i);
  });

  it('parses URLs; malformed ones are USAGE errors that never echo credentials', async () => {
    const { parseRedisUrl, createRedisMetadataCache } = await import('../../src/cache/redis-cache.js');
    expect(parseRedisUrl('redis://localhost')).toMatchObject({ cluster: false, tls: false, nodes: [{ host: 'localhost', port: 6379 }], db: 0, where: 'localhost:6379' });
    expect(parseRedisUrl('rediss://u:p%2Fw%40x@cache.example:6380/2')).toMatchObject({ tls: true, username: 'u', password: 'p/w@x', db: 2, where: 'cache.example:6380' });
    expect(parseRedisUrl('redis://:only@[::1]:7000')).toMatchObject({ password: 'only', nodes: [{ host: '::1', port: 7000 }], where: '[::1]:7000' });
    expect(parseRedisUrl('redis://u:a@b@h:1')).toMatchObject({ username: 'u', password: 'a@b', where: 'h:1' });
    expect(parseRedisUrl('redis+cluster://u:pw@10.0.0.1:7000,10.0.0.2:7001,host3')).toMatchObject({
      cluster: true,
      tls: false,
      nodes: [
        { host: '10.0.0.1', port: 7000 },
        { host: '10.0.0.2', port: 7001 },
        { host: 'host3', port: 6379 },
      ],
      where: 'cluster 10.0.0.1:7000,10.0.0.2:7001,host3:6379',
    });
    expect(parseRedisUrl('rediss+cluster://h:1')).toMatchObject({ cluster: true, tls: true });
    for (const bad of [
      'http://user:hunter22@h:1',
      'redis://user:hunter22@h:99999',
      'redis://user:hunter22@h:1/x',
      'redis://user:hunter22@h1:1,h2:2',
      'redis+cluster://user:hunter22@h1:1/3',
      'redis://user:hunter22@h:1?tls=true',
      'redis://user:hunter22@',
      'redis://user:%zz@h',
    ]) {
      let error: unknown;
      try {
        parseRedisUrl(bad);
      } catch (e) {
        error = e;
      }
      expect(isSmartError(error) && error.code, bad).toBe('USAGE');
      const e = error as Error & { input?: string };
      expect(`${e.message} ${e.input ?? ''}`, bad).not.toContain('hunter22');
    }
    // An IPv6 address without whole brackets: one readable message, not the address cut at a colon.
    for (const [bad, host] of [
      ['redis://:hunter22@[::1/0', '[::1'],
      ['redis://:hunter22@::1:6379', '::1:6379'],
      ['redis://:hunter22@::1]:6379', '::1]:6379'],
    ] as const) {
      expect(() => parseRedisUrl(bad)).toThrow(`invalid Redis URL: bad host "${host}": an IPv6 address goes in brackets, as [::1]:6379`);
    }
    await expect(createRedisMetadataCache({ url: 'redis://a:hunter22@h:0' })).rejects.toMatchObject({ code: 'USAGE' });
    await expect(openMetadataCache({ redisUrl: 'redis:/nope', diskDir: '/x', onWarning: () => undefined })).rejects.toMatchObject({ code: 'USAGE' });
  });
});

// ---- faults: through forgivingCache each is a miss or a no-op, in bounded time, one warning ------

/** Every operation of a cache that must be failing: each answers a miss or a no-op within 3 s. */
async function expectAllForgiven(cache: MetadataCache, label: string): Promise<void> {
  const ops: [string, () => Promise<unknown>, unknown][] = [
    ['get', () => cache.get('k1'), undefined],
    ['getMany', () => cache.getMany(['k1', 'k2', 'k3']), [undefined, undefined, undefined]],
    ['set', () => cache.set('k1', 'v'), undefined],
    ['set with TTL', () => cache.set('k1', 'v', 5), undefined],
    ['setMany', () => cache.setMany([{ key: 'k1', value: 'v' }]), undefined],
    ['delete', () => cache.delete('k1'), undefined],
    ['get again', () => cache.get('k2'), undefined],
  ];
  for (const [name, op, expected] of ops) {
    const { value, ms } = await timed(op);
    expect(value, `${label}: ${name}`).toEqual(expected);
    expect(ms, `${label}: ${name} took ${ms} ms`).toBeLessThan(3000);
  }
}

/** Every operation of the raw Redis cache fails with a STORAGE error naming host:port, within 3 s. */
async function expectAllFail(cache: MetadataCache, where: string): Promise<void> {
  const ops: [string, () => Promise<unknown>][] = [
    ['get', () => cache.get('k1')],
    ['getMany', () => cache.getMany(['k1', 'k2'])],
    ['set', () => cache.set('k1', 'v')],
    ['setMany', () => cache.setMany([{ key: 'k1', value: 'v', ttlSeconds: 3 }])],
    ['delete', () => cache.delete('k1')],
  ];
  for (const [name, op] of ops) {
    const { error, ms } = await timedFailure(op);
    expect(ms, `raw ${name} took ${ms} ms`).toBeLessThan(3000);
    expect(isSmartError(error) && error.code, `raw ${name}: ${String(error)}`).toBe('STORAGE');
    expect((error as Error).message).toContain(where);
  }
}

describe.skipIf(!haveRedis)('Redis faults', () => {
  it('Redis killed (SIGKILL) mid-run, with a getMany in flight: misses and no-ops, one warning, prompt close', async () => {
    const server = await owned(startRedis(await tempDir('smart-redis-kill-')));
    const where = `127.0.0.1:${server.port}`;
    const warnings: string[] = [];
    const cache = closing(await openMetadataCache({ redisUrl: server.url, diskDir: '/nonexistent', onWarning: (m) => warnings.push(m) }));
    const keys = Array.from({ length: 2000 }, (_, i) => `k${i}`);
    await cache.setMany(keys.map((key) => ({ key, value: 'x'.repeat(1000) })));
    expect(await cache.get('k1')).toBe('x'.repeat(1000));

    // A raw cache next to it, to see the failures forgivingCache hides.
    const { createRedisMetadataCache } = await import('../../src/cache/redis-cache.js');
    const raw = closing(await createRedisMetadataCache({ url: server.url }));
    await raw.set('raw', 'v');

    const inFlight = timed(() => cache.getMany(keys));
    await server.kill9();
    const { value, ms } = await inFlight;
    expect(ms).toBeLessThan(3000);
    expect(value.length).toBe(keys.length); // answered before the kill, or all misses: either is right
    await expectAllForgiven(cache, 'after SIGKILL');
    await expectAllFail(raw, where);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/^metadata cache unavailable, going on without it: redis 127\.0\.0\.1:\d+/);
    const closed = await timed(() => cache.close());
    expect(closed.ms).toBeLessThan(1500);
  });

  it('Redis not running at start: misses and no-ops at once, one warning naming host:port', async () => {
    const port = await freePort(); // nothing listens there
    const warnings: string[] = [];
    const t0 = performance.now();
    const cache = closing(await openMetadataCache({ redisUrl: `redis://u:s3cret-pw@127.0.0.1:${port}`, diskDir: '/nonexistent', onWarning: (m) => warnings.push(m) }));
    await expectAllForgiven(cache, 'not running');
    expect(performance.now() - t0).toBeLessThan(3000);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain(`127.0.0.1:${port}`);
    expect(warnings[0]).toMatch(/ECONNREFUSED/);
    expect(warnings[0]).not.toContain('s3cret-pw');
    const { createRedisMetadataCache } = await import('../../src/cache/redis-cache.js');
    await expectAllFail(closing(await createRedisMetadataCache({ url: `redis://127.0.0.1:${port}` })), `127.0.0.1:${port}`);
    const cl = closing(await openMetadataCache({ redisUrl: `redis+cluster://127.0.0.1:${port}`, diskDir: '/nonexistent', onWarning: (m) => warnings.push(m) }));
    await expectAllForgiven(cl, 'cluster not running');
    expect(warnings).toHaveLength(2);
    expect(warnings[1]).toContain(`cluster 127.0.0.1:${port}`);
  });

  it('Redis frozen (SIGSTOP): each operation gives up within the deadline, then the run goes on without it', async () => {
    const server = await owned(startRedis(await tempDir('smart-redis-stop-')));
    const warnings: string[] = [];
    const cache = closing(await openMetadataCache({ redisUrl: server.url, diskDir: '/nonexistent', onWarning: (m) => warnings.push(m) }));
    await cache.set('k1', 'v');
    const { createRedisMetadataCache } = await import('../../src/cache/redis-cache.js');
    const raw = closing(await createRedisMetadataCache({ url: server.url }));
    await raw.set('k1', 'v');
    process.kill(server.pid, 'SIGSTOP');
    try {
      const [first, rawFail] = await Promise.all([timed(() => cache.getMany(['k1'])), timedFailure(() => raw.get('k1'))]);
      expect(first.value).toEqual([undefined]);
      expect(first.ms).toBeLessThan(3000);
      expect(rawFail.ms).toBeGreaterThan(1500); // it did wait for the command timeout...
      expect(rawFail.ms).toBeLessThan(3000); // ...and no longer
      expect(String(rawFail.error)).toMatch(/timed out/);
      await expectAllForgiven(cache, 'frozen');
      expect(warnings).toHaveLength(1);
      expect(warnings[0]).toMatch(/timed out|no answer/i);
      const closed = await timed(() => cache.close());
      expect(closed.ms).toBeLessThan(1500);
    } finally {
      process.kill(server.pid, 'SIGCONT');
    }
  });

  it('Redis FLUSHALL mid-run: just misses, no warning, and it fills again', async () => {
    const server = await owned(startRedis(await tempDir('smart-redis-flush-')));
    const warnings: string[] = [];
    const cache = closing(await openMetadataCache({ redisUrl: server.url, diskDir: '/nonexistent', onWarning: (m) => warnings.push(m) }));
    await cache.setMany([
      { key: 'a', value: '1' },
      { key: 'b', value: '2', ttlSeconds: 60 },
    ]);
    expect(await cache.getMany(['a', 'b'])).toEqual(['1', '2']);
    expect(await server.cli('FLUSHALL')).toBe('OK');
    expect(await cache.getMany(['a', 'b'])).toEqual([undefined, undefined]);
    expect(await cache.get('a')).toBeUndefined();
    await cache.set('a', '3');
    expect(await cache.get('a')).toBe('3');
    expect(warnings).toEqual([]);
  });

  it('a cluster node killed mid-run: misses and no-ops in bounded time, one warning', async () => {
    const own = await owned(startRedisCluster(await tempDir('smart-redis-cluster-kill-')));
    const warnings: string[] = [];
    const cache = closing(await openMetadataCache({ redisUrl: own.url, diskDir: '/nonexistent', onWarning: (m) => warnings.push(m) }));
    const keys = Array.from({ length: 300 }, (_, i) => `k${i}`);
    await cache.setMany(keys.map((key) => ({ key, value: 'v' })));
    expect((await cache.getMany(keys)).every((v) => v === 'v')).toBe(true);
    await own.nodes[1]!.kill9();
    const { value, ms } = await timed(() => cache.getMany(keys));
    expect(ms).toBeLessThan(3000);
    expect(value).toEqual(keys.map(() => undefined));
    await expectAllForgiven(cache, 'cluster node killed');
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/redis cluster 127\.0\.0\.1:/);
  });
});

describe('forgivingCache', () => {
  it('turns a failing cache into one warning and silence, and still closes it', async () => {
    let calls = 0;
    let closed = 0;
    const failing: MetadataCache = {
      get: async () => (calls++, Promise.reject(new Error('boom'))),
      set: async () => {
        calls++;
        throw new Error('boom');
      },
      getMany: () => {
        calls++;
        throw new Error('synchronous boom');
      },
      setMany: async () => void calls++,
      setManyIfUnchanged: async (entries) => (calls++, entries.map(() => true)),
      delete: async () => void calls++,
      setIfAbsent: async () => (calls++, true),
      renewIfEqual: async () => (calls++, true),
      deleteIfEqual: async () => (calls++, true),
      close: async () => {
        closed++;
        throw new Error('close boom');
      },
    };
    const warnings: string[] = [];
    const cache = forgivingCache(failing, (m) => warnings.push(m));
    expect(await cache.getMany(['a', 'b'])).toEqual([undefined, undefined]);
    expect(await cache.get('a')).toBeUndefined();
    await cache.set('a', 'b');
    await cache.setMany([{ key: 'a', value: 'b' }]);
    await cache.delete('a');
    expect(calls).toBe(1); // after the first failure the cache is left alone
    expect(warnings).toEqual(['metadata cache unavailable, going on without it: synchronous boom']);
    await cache.close();
    expect(closed).toBe(1);
  });

  it('answers misses for a getMany of the wrong length', async () => {
    const disk = new DiskMetadataCache(await tempDir('smart-metadata-'));
    const warnings: string[] = [];
    const cache = forgivingCache({ ...disk, get: (k) => disk.get(k), set: (k, v, t) => disk.set(k, v, t), getMany: async () => ['x'], setMany: (e) => disk.setMany(e), setManyIfUnchanged: (e) => disk.setManyIfUnchanged(e), delete: (k) => disk.delete(k), setIfAbsent: (k, v, t) => disk.setIfAbsent(k, v, t), renewIfEqual: (k, v, t) => disk.renewIfEqual(k, v, t), deleteIfEqual: (k, v) => disk.deleteIfEqual(k, v), close: () => disk.close() }, (m) => warnings.push(m));
    expect(await cache.getMany(['a', 'b'])).toEqual([undefined, undefined]);
    expect(warnings).toHaveLength(1);
  });
});

afterAll(() => {
  if (latencies.length) console.log(`getMany latency on loopback:\n  ${latencies.join('\n  ')}`);
});
