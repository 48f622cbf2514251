/**
 * The lease behind `cache index`'s lock (src/cache/lease.ts), over the disk cache: one holder,
 * renewed past its time to live while it lives, lost (its signal aborts) when another takes the
 * entry, released only if still its own; the holder shown to others is sanitised (the entry is shared).
 */
import os from 'node:os';
import { describe, expect, it } from 'vitest';
import { isSmartError } from '../../src/errors.js';
import { acquireLease } from '../../src/cache/lease.js';
import { DiskMetadataCache } from '../../src/cache/metadata-cache.js';
import { tempDir } from '../harness/tmp.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('acquireLease', () => {
  it('one holder at a time, renewed while it lives, released at the end', async () => {
    const cache = new DiskMetadataCache(await tempDir('smart-lease-'));
    // A lease of 2 s, renewed every 0.67 s: a loaded machine may hold this process back by more
    // than the 0.67 s a lease of 1 s leaves, and the lease is then lost, rightly.
    const first = await acquireLease(cache, 'lock', { ttlSeconds: 2, what: 'the lock' });
    if (!('lease' in first)) throw new Error('not taken');
    expect(await acquireLease(cache, 'lock', { ttlSeconds: 2, what: 'the lock' })).toEqual({ heldBy: { pid: process.pid, host: os.hostname() } });
    await sleep(4500); // more than two leases: renewed all along
    expect('heldBy' in (await acquireLease(cache, 'lock', { ttlSeconds: 2, what: 'the lock' }))).toBe(true);
    expect(first.lease.signal.aborted).toBe(false);
    await first.lease.release();
    const next = await acquireLease(cache, 'lock', { ttlSeconds: 0.6, what: 'the lock' });
    expect('lease' in next).toBe(true);
    if ('lease' in next) await next.lease.release();
  });

  it('taken over: the holder learns it (LOCKED) and its release leaves the new holder alone', async () => {
    const cache = new DiskMetadataCache(await tempDir('smart-lease-'));
    // Its first renewal (at a third of the lease) must come before the lease ends, or it is lost for
    // that reason instead: 2 s of room, where a lease of 0.6 s left a loaded machine 0.4 s.
    const got = await acquireLease(cache, 'lock', { ttlSeconds: 3, what: 'the index lock of x' });
    if (!('lease' in got)) throw new Error('not taken');
    await cache.delete('lock');
    expect(await cache.setIfAbsent('lock', 'another run', 60)).toBe(true);
    await sleep(1500);
    expect(got.lease.signal.aborted).toBe(true);
    const reason: unknown = got.lease.signal.reason;
    expect(isSmartError(reason) && reason.code).toBe('LOCKED');
    expect((reason as Error).message).toBe('lost the index lock of x: another run holds it now');
    await got.lease.release();
    expect(await cache.get('lock')).toBe('another run');
  });

  it('shows others only a sane holder', async () => {
    const cache = new DiskMetadataCache(await tempDir('smart-lease-'));
    await cache.set('a', JSON.stringify({ pid: 12, host: 'evil\nerror: forged line' }), 60);
    await cache.set('b', 'not json', 60);
    await cache.set('c', JSON.stringify({ pid: 7, host: 'build-7.example' }), 60);
    expect(await acquireLease(cache, 'a', { ttlSeconds: 1, what: 'a' })).toEqual({ heldBy: undefined });
    expect(await acquireLease(cache, 'b', { ttlSeconds: 1, what: 'b' })).toEqual({ heldBy: undefined });
    expect(await acquireLease(cache, 'c', { ttlSeconds: 1, what: 'c' })).toEqual({ heldBy: { pid: 7, host: 'build-7.example' } });
  });
});
