/**
 * Locks between processes of this machine: a file made with O_EXCL that holds its owner's tag. A
 * holder that died (kill -9) leaves it; the next taker sees that its owner is gone and takes it over.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { SmartError, isErrno } from '../errors.js';
import { isStale, ownerTag, parseOwnerTag, type Owner } from './leftovers.js';
import { mkdirp } from './made-directories.js';

/** A lock still empty after this long was left by a holder that died before writing its tag. */
const LOCK_WRITE_MS = 10_000;

/** The owner a lock's text names (an owner tag and nothing else). */
function tagOwner(text: string): Owner | undefined {
  const parsed = parseOwnerTag(text);
  return parsed && parsed.rest === '' ? parsed.owner : undefined;
}

/**
 * Takes the lock `lock` (its directory must exist): true when taken. False when another holds it;
 * and when that holder is dead, its lock is removed first, so that the next try may take it (a
 * racing process may do the same; O_EXCL then decides). `ownerOf` reads the holder from the text.
 */
export async function tryLockFile(lock: string, ownerOf: (text: string) => Owner | undefined = tagOwner): Promise<boolean> {
  try {
    await fs.writeFile(lock, ownerTag(), { flag: 'wx' });
    return true;
  } catch (e) {
    if (!isErrno(e, 'EEXIST')) throw e;
  }
  const [text, st] = await Promise.all([fs.readFile(lock, 'utf8').catch(() => undefined), fs.stat(lock).catch(() => undefined)]);
  if (text === undefined || !st) return false; // released meanwhile: try again
  const age = Date.now() - st.mtimeMs;
  // Empty: being written this very moment, or its holder died between creating and writing it.
  if (text === '' ? age < LOCK_WRITE_MS : !isStale(ownerOf(text), age)) return false;
  await fs.rm(lock, { force: true });
  return false;
}

export interface FileLockOptions {
  /** How long to wait for a live holder before giving up (LOCKED). */
  patienceMs?: number;
}

/**
 * Runs `fn` holding the lock `lock`, for a short read-modify-write: waits while another live
 * process holds it (polling; such a hold lasts milliseconds), takes over a dead holder's.
 */
export async function withFileLock<T>(lock: string, what: string, fn: () => Promise<T>, options: FileLockOptions = {}): Promise<T> {
  const patience = options.patienceMs ?? 60_000;
  const started = Date.now();
  await mkdirp(path.dirname(lock));
  for (let wait = 2; !(await tryLockFile(lock)); wait = Math.min(wait * 2, 50)) {
    if (Date.now() - started > patience) {
      const holder = await fs.readFile(lock, 'utf8').catch(() => '');
      throw new SmartError('LOCKED', `${what}: another run has held ${lock} for over ${Math.round(patience / 1000)} s${holder ? ` (${holder})` : ''}`, {
        input: lock,
        hint: 'remove the lock file if no smart command is running',
      });
    }
    await new Promise((r) => setTimeout(r, wait));
  }
  try {
    return await fn();
  } finally {
    await fs.rm(lock, { force: true });
  }
}
