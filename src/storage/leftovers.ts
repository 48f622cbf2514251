/**
 * Leftovers of killed runs: who owns a staging file or directory, and whether it is stale. What a
 * run stages (a tree beside a root filesystem, a layer being unpacked, a blob being written) carries
 * its owner's tag in its name or in a record beside it; the next run removes what is stale and
 * never what a live run still uses.
 *
 * An owner is one process: the machine (host name, PID namespace and machine id), the boot, the
 * PID and the process's start time, so that a PID reused by another process or after a reboot is
 * not taken for the owner. Where that cannot be checked (another machine on a shared store, a system
 * without /proc), a leftover is stale only once older than LEFTOVER_MAX_AGE_MS.
 *
 * Only a boot id tells machines apart for certain: cloned VMs share their host name (`localhost`,
 * a runner's), the first PID namespace has one inode on every Linux host, and a machine id is
 * cloned with a VM's disk and baked into a container image. So in a place other machines may write
 * too (a registry's storage, a layout: `shared`), an owner of another boot is 'unknown', never
 * 'gone': it may be a live run of a twin machine, not a run of this one before a reboot.
 */
import { createHash } from 'node:crypto';
import { readFileSync, readlinkSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { isErrno } from '../errors.js';

export interface Owner {
  /** 8 hex digits of a hash of the host name, the PID namespace and the machine id. */
  machine: string;
  /** 8 hex digits of the kernel's boot id ('00000000' where there is none). */
  boot: string;
  pid: number;
  /** Start time in clock ticks since boot, from /proc (0 where there is none). */
  start: number;
}

/** A leftover removed, for `--json` (`details.cleaned`). */
export interface Cleaned {
  path: string;
  bytes: number;
}

/** A leftover whose owner cannot be checked is stale after this long (no run lasts a day). */
export const LEFTOVER_MAX_AGE_MS = 24 * 3600 * 1000;

function readText(file: string): string | undefined {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
}

/** State and start time of a process, from /proc/PID/stat (fields 3 and 22; the name may hold spaces and parentheses). */
function procStat(pid: number): { state: string; start: number } | 'absent' | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch (e) {
    return isErrno(e, 'ENOENT') || isErrno(e, 'ESRCH') ? 'absent' : undefined;
  }
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const start = Number(fields[19]);
  return Number.isSafeInteger(start) ? { state: fields[0] ?? '', start } : undefined;
}

let me: Owner | undefined;

/** The boot of a system without a boot id. */
const NO_BOOT = '00000000';

/** This process as an owner. */
export function currentOwner(): Owner {
  if (me) return me;
  let pidNamespace = '';
  try {
    pidNamespace = readlinkSync('/proc/self/ns/pid');
  } catch {
    // no /proc: the host name and the machine id name the machine
  }
  const machine = createHash('sha256').update(`${os.hostname()}\0${pidNamespace}\0${machineId()}`).digest('hex').slice(0, 8);
  const bootId = readText('/proc/sys/kernel/random/boot_id')?.replace(/[^0-9a-f]/g, '') ?? '';
  const stat = procStat(process.pid);
  me = {
    machine,
    boot: /^[0-9a-f]{8}/.test(bootId) ? bootId.slice(0, 8) : NO_BOOT,
    pid: process.pid,
    start: stat && stat !== 'absent' ? stat.start : 0,
  };
  return me;
}

/** systemd's machine id (D-Bus's where systemd's is missing); '' where there is none (many containers). */
function machineId(): string {
  for (const file of ['/etc/machine-id', '/var/lib/dbus/machine-id']) {
    const id = readText(file)?.trim();
    if (id) return id;
  }
  return '';
}

/** The owner as a name part: `MACHINE-BOOT-PID-START`, letters, digits and dashes only. */
export function ownerTag(owner: Owner = currentOwner()): string {
  return `${owner.machine}-${owner.boot}-${owner.pid}-${owner.start}`;
}

const TAG = /^([0-9a-f]{8})-([0-9a-f]{8})-(\d{1,10})-(\d{1,20})(?=$|[^0-9])/;

/** The owner whose tag `text` starts with, and what follows the tag; undefined when it starts with none. */
export function parseOwnerTag(text: string): { owner: Owner; rest: string } | undefined {
  const m = TAG.exec(text);
  if (!m) return undefined;
  return { owner: { machine: m[1]!, boot: m[2]!, pid: Number(m[3]), start: Number(m[4]) }, rest: text.slice(m[0].length) };
}

function signalable(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return isErrno(e, 'EPERM');
  }
}

/** Where a leftover lies. `shared`: where other machines may write too (a registry's storage, a layout), not only this one (its cache, a pull's staging). */
export interface LeftoverPlace {
  shared?: boolean;
}

/**
 * 'running' when the owner still runs, 'gone' when it certainly does not (its PID is free, taken by
 * a later process, a zombie, or from an earlier boot of this machine), 'unknown' when this machine
 * cannot tell. In a `shared` place another boot, or none known, is 'unknown' (see the top of this file).
 */
export function ownerState(owner: Owner, place: LeftoverPlace = {}): 'running' | 'gone' | 'unknown' {
  const self = currentOwner();
  if (owner.machine !== self.machine) return 'unknown';
  if (place.shared && (owner.boot !== self.boot || self.boot === NO_BOOT)) return 'unknown';
  if (owner.boot !== self.boot) return 'gone';
  if (owner.pid === self.pid) return owner.start === self.start ? 'running' : 'gone';
  const stat = procStat(owner.pid);
  if (stat === 'absent') return 'gone';
  if (stat === undefined) return signalable(owner.pid) ? 'running' : 'gone';
  return stat.state === 'Z' || (owner.start !== 0 && stat.start !== owner.start) ? 'gone' : 'running';
}

/**
 * Whether a leftover may be removed: its owner is gone, or its owner cannot be checked (unknown, or
 * none recorded) and it is older than `maxAgeMs` (LEFTOVER_MAX_AGE_MS by default).
 */
export function isStale(owner: Owner | undefined, ageMs: number, options: LeftoverPlace & { maxAgeMs?: number } = {}): boolean {
  const state = owner ? ownerState(owner, options) : 'unknown';
  return state === 'gone' || (state === 'unknown' && ageMs > (options.maxAgeMs ?? LEFTOVER_MAX_AGE_MS));
}

/** Bytes under a local path (a file's size, or the sum over a tree); symlinks are not followed. */
export async function localSize(p: string): Promise<number> {
  const st = await fs.lstat(p).catch(() => undefined);
  if (!st) return 0;
  if (!st.isDirectory()) return st.size;
  let n = 0;
  for (const e of await fs.readdir(p).catch(() => [] as string[])) n += await localSize(path.join(p, e));
  return n;
}

/**
 * Removes the stale ones among the entries of the local directory `dir` that `ownerOf` recognises
 * (it returns undefined for an entry that is not a leftover, null for one of ours made before owners
 * were recorded: that one goes by its age). Returns what was removed (with `dryRun`: what would be).
 * One this process may not remove (another user's killed run, a read-only mount) is left, and
 * the work that swept goes on: removing leftovers is never what a command is for.
 */
export async function sweepLocal(
  dir: string,
  ownerOf: (name: string) => Owner | null | undefined,
  options: LeftoverPlace & { maxAgeMs?: number; dryRun?: boolean } = {},
): Promise<Cleaned[]> {
  const cleaned: Cleaned[] = [];
  for (const name of await fs.readdir(dir).catch(() => [] as string[])) {
    const owner = ownerOf(name);
    if (owner === undefined) continue;
    const full = path.join(dir, name);
    const st = await fs.lstat(full).catch(() => undefined);
    if (!st || !isStale(owner ?? undefined, Date.now() - st.mtimeMs, options)) continue;
    const bytes = await localSize(full);
    if (!options.dryRun) {
      try {
        await fs.rm(full, { recursive: true, force: true });
      } catch (e) {
        if (isErrno(e, 'EACCES') || isErrno(e, 'EPERM') || isErrno(e, 'EROFS')) continue;
        throw e;
      }
    }
    cleaned.push({ path: full, bytes });
  }
  return cleaned;
}
