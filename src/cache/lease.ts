/**
 * A lease in the metadata cache: one holder at a time for work that must not run twice at once
 * (`cache index` of a store). Redis's documented lock pattern, on every cache backend: the key is
 * set only if absent, to a value unique to this holder, with a short time to live; it is renewed
 * (compare-and-renew) while the holder lives and removed (compare-and-delete) when it ends. So a
 * holder killed with -9 blocks others for one lease at most; a `SET NX` that timed out in the
 * client and ran late in the server leaves an entry gone one lease later; and a holder stalled past
 * its lease learns that it lost it (its signal aborts) instead of removing the next holder's.
 */
import { randomUUID } from 'node:crypto';
import os from 'node:os';
import { SmartError } from '../errors.js';
import type { MetadataCache } from './metadata-cache.js';

export interface LeaseOptions {
  /** How long the lease lasts without renewal; renewed every third of it. */
  ttlSeconds: number;
  /** What is held, for messages (`the index lock of file:/srv/registry`). */
  what: string;
  /** Told when releasing failed (the lease then ends by itself, one lease later). */
  onWarning?: (message: string) => void;
}

export interface Lease {
  /** Aborted (with a SmartError LOCKED) when the lease is lost: the work it guards must stop. */
  readonly signal: AbortSignal;
  /** Stops renewing and removes the entry if it is still ours. Never throws. */
  release(): Promise<void>;
}

/** Who holds a lease, as its entry says (a hint for messages: `pid 123 on build-7`). */
export interface LeaseHolder {
  pid: number;
  host: string;
}

/** Takes the lease, or answers who holds it (`holder` undefined when its entry does not say). */
export async function acquireLease(cache: MetadataCache, key: string, options: LeaseOptions): Promise<{ lease: Lease } | { heldBy: LeaseHolder | undefined }> {
  const token = JSON.stringify({ pid: process.pid, host: os.hostname(), id: randomUUID() });
  const ttlMs = options.ttlSeconds * 1000;
  let expires = Date.now() + ttlMs;
  if (!(await cache.setIfAbsent(key, token, options.ttlSeconds))) {
    return { heldBy: holderOf(await cache.get(key).catch(() => undefined)) };
  }
  const controller = new AbortController();
  let released = false;
  let renewing = false;
  const lose = (why: string, cause?: unknown) => {
    if (controller.signal.aborted) return;
    controller.abort(new SmartError('LOCKED', `lost ${options.what}: ${why}`, { ...(cause ? { cause } : {}) }));
  };
  const renew = async (): Promise<void> => {
    if (renewing || released || controller.signal.aborted) return;
    renewing = true;
    const started = Date.now();
    try {
      // Past our own expiry another run may hold it already: renewing could take it back from them.
      if (started >= expires) return lose(`not renewed within its ${options.ttlSeconds} s lease`);
      if (await cache.renewIfEqual(key, token, options.ttlSeconds)) expires = started + ttlMs;
      else lose('another run holds it now');
    } catch (e) {
      // One failed renewal is tried again at the next tick, while the lease lasts.
      if (Date.now() + ttlMs / 3 >= expires) lose(e instanceof Error ? e.message : String(e), e);
    } finally {
      renewing = false;
    }
  };
  const timer = setInterval(() => void renew(), Math.max(100, Math.floor(ttlMs / 3)));
  timer.unref();
  return {
    lease: {
      signal: controller.signal,
      release: async () => {
        if (released) return;
        released = true;
        clearInterval(timer);
        if (controller.signal.aborted) return; // not ours any more
        try {
          await cache.deleteIfEqual(key, token);
        } catch (e) {
          options.onWarning?.(`could not release ${options.what} (it ends by itself within ${options.ttlSeconds} s): ${e instanceof Error ? e.message : String(e)}`);
        }
      },
    },
  };
}

/** The holder a lease entry names, if it names one sanely (the entry is shared: print nothing raw). */
function holderOf(raw: string | undefined): LeaseHolder | undefined {
  if (!raw) return undefined;
  try {
    const v = JSON.parse(raw) as { pid?: unknown; host?: unknown };
    if (!Number.isSafeInteger(v.pid) || typeof v.host !== 'string' || !/^[A-Za-z0-9._-]{1,253}$/.test(v.host)) return undefined;
    return { pid: v.pid as number, host: v.host };
  } catch {
    return undefined;
  }
}
