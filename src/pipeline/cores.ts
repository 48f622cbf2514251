/**
 * The cores this process may keep busy: what every pool of ours is sized by (layers in flight,
 * compression blocks, zstd workers, decode slots).
 *
 * os.availableParallelism() counts the CPUs of the affinity mask. A CI job in a container with a
 * CPU limit (`docker run --cpus 2`, a Kubernetes pod's `limits.cpu`) has the whole host in its mask
 * and a cgroup quota of a few CPUs: on Node 20 (libuv 1.46) it is told 64 cores on a 64-core host,
 * and would start 64 zstd workers, each with its buffers, to be throttled to 2 CPUs' worth of time
 * (zstd level 3 over 256 MiB, measured: 628 MB resident with 64 workers, 118 MB with 2).
 * libuv 1.49+ (Node 22.12+) reads the quota itself; it is read here the same way on every Node line:
 * the smallest `quota / period` of the process's cgroup and its ancestors, cgroup v2 (`cpu.max`) and
 * v1 (`cpu.cfs_quota_us`, `cpu.cfs_period_us`) alike, found through /proc/self/cgroup and
 * /proc/self/mountinfo (a container's mount of its own cgroup included), rounded down and at least
 * 1, as libuv and Rust round it (rounding up would use the last fraction of a quota, but would
 * make the count differ between Node lines, where newer ones have rounded down already). Never
 * more than the affinity mask; anything unreadable is no quota.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export interface Cores {
  /** The cores to size pools by (at least 1). */
  count: number;
  /** The CPUs of the affinity mask (os.availableParallelism()). */
  affinity: number;
  /** The CPU quota of the cgroup hierarchy in CPUs (fractional), when there is one. */
  quota?: number;
}

let cached: Cores | undefined;

/** The cores of this process, read once. */
export function usableCores(): Cores {
  return (cached ??= readCores('/proc/self', os.availableParallelism()));
}

/** The core count alone (what pools are sized by). */
export function coreCount(): number {
  return usableCores().count;
}

/** `proc`: the /proc/PID directory to read (tests give their own tree). */
export function readCores(proc: string, affinity: number, root = '/'): Cores {
  const quota = cgroupCpuQuota(proc, root);
  if (quota === undefined) return { count: affinity, affinity };
  return { count: Math.max(1, Math.min(affinity, Math.floor(quota))), affinity, quota };
}

/** The smallest CPU quota (in CPUs) over the cgroup v1 and v2 hierarchies, or undefined. */
export function cgroupCpuQuota(proc: string, root = '/'): number | undefined {
  const memberships = readText(path.join(proc, 'cgroup'));
  const mounts = readText(path.join(proc, 'mountinfo'));
  if (memberships === undefined || mounts === undefined) return undefined;
  let smallest: number | undefined;
  for (const line of memberships.split('\n')) {
    // "ID:CONTROLLERS:PATH"; v2 is "0::PATH".
    const first = line.indexOf(':');
    const second = line.indexOf(':', first + 1);
    if (first < 0 || second < 0) continue;
    const controllers = line.slice(first + 1, second);
    const cgroup = line.slice(second + 1);
    const v2 = controllers === '' && line.slice(0, first) === '0';
    if (!v2 && !controllers.split(',').includes('cpu')) continue;
    for (const mount of cgroupMounts(mounts, v2)) {
      // The mount shows the hierarchy from `mount.root` down (a container's mount of its own cgroup).
      const relative = path.posix.relative(mount.root, cgroup);
      if (relative === '..' || relative.startsWith('../')) continue;
      const quota = quotaUpFrom(path.join(root, mount.point), relative, v2);
      if (quota !== undefined && (smallest === undefined || quota < smallest)) smallest = quota;
    }
  }
  return smallest;
}

/** The cgroup2 mounts, or the v1 mounts carrying the cpu controller. */
function cgroupMounts(mountinfo: string, v2: boolean): { root: string; point: string }[] {
  const out: { root: string; point: string }[] = [];
  for (const line of mountinfo.split('\n')) {
    // "ID PARENT MAJ:MIN ROOT POINT OPTIONS [TAGS...] - FSTYPE SOURCE SUPEROPTIONS"
    const dash = line.indexOf(' - ');
    if (dash < 0) continue;
    const fields = line.slice(0, dash).split(' ');
    const [fstype, , superOptions = ''] = line.slice(dash + 3).split(' ');
    if (fields.length < 5) continue;
    if (v2 ? fstype !== 'cgroup2' : fstype !== 'cgroup' || !superOptions.split(',').includes('cpu')) continue;
    out.push({ root: unescapeMount(fields[3]!), point: unescapeMount(fields[4]!) });
  }
  return out;
}

/** mountinfo escapes space, tab, newline and backslash as octal. */
function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** The smallest quota from `point/relative` up to `point`. */
function quotaUpFrom(point: string, relative: string, v2: boolean): number | undefined {
  let smallest: number | undefined;
  for (let dir = path.join(point, relative); ; dir = path.dirname(dir)) {
    const quota = v2 ? quotaV2(dir) : quotaV1(dir);
    if (quota !== undefined && (smallest === undefined || quota < smallest)) smallest = quota;
    if (path.relative(point, dir) === '' || dir === path.dirname(dir)) break;
  }
  return smallest;
}

/** `cpu.max`: "max PERIOD" (none) or "QUOTA PERIOD", microseconds. */
function quotaV2(dir: string): number | undefined {
  const text = readText(path.join(dir, 'cpu.max'));
  if (text === undefined) return undefined;
  const [quota, period] = text.trim().split(/\s+/);
  return ratio(quota, period);
}

/** `cpu.cfs_quota_us` (-1: none) over `cpu.cfs_period_us`. */
function quotaV1(dir: string): number | undefined {
  const quota = readText(path.join(dir, 'cpu.cfs_quota_us'));
  if (quota === undefined) return undefined;
  return ratio(quota.trim(), readText(path.join(dir, 'cpu.cfs_period_us'))?.trim());
}

function ratio(quota: string | undefined, period: string | undefined): number | undefined {
  const q = Number(quota);
  const p = Number(period);
  return Number.isFinite(q) && q > 0 && Number.isFinite(p) && p > 0 ? q / p : undefined;
}

function readText(file: string): string | undefined {
  try {
    // Most files looked for are absent (no quota at this level, the other cgroup version): a stat
    // that returns undefined costs a tenth of the exception a failed read builds.
    return fs.statSync(file, { throwIfNoEntry: false }) ? fs.readFileSync(file, 'utf8') : undefined;
  } catch {
    return undefined;
  }
}
