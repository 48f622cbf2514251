/**
 * Which user and group ids this process can give a file. Root on the host can give any; root in a
 * user namespace (rootless podman or Docker, `unshare -r`, a CI runner's rootless container) only
 * those its /proc/self/uid_map and gid_map map, and chown(2) of another id fails with EINVAL. An
 * image's files may name ids past the map (a rootless container often maps 65,536 ids; some images
 * use ids in the millions), and a pull must not fail on them: their files keep this process's
 * owner, and the pull says so, as umoci's rootless unpacking does.
 */
import { readFileSync } from 'node:fs';

/** Ranges of ids, as a uid_map or gid_map lists them (the ids inside the namespace). */
type Ranges = readonly { first: number; count: number }[];

/** The ranges `file` maps; undefined when there is no such file (not Linux) or it says nothing: every id then counts as mapped. */
function readRanges(file: string): Ranges | undefined {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
  const ranges: { first: number; count: number }[] = [];
  for (const line of text.split('\n')) {
    const [inside, , count] = line.trim().split(/\s+/).map(Number);
    if (Number.isSafeInteger(inside) && Number.isSafeInteger(count)) ranges.push({ first: inside!, count: count! });
  }
  return ranges.length > 0 ? ranges : undefined;
}

/** The whole 32-bit id space, as the initial namespace maps it. */
const FULL = 4294967295;

export interface IdMap {
  /** Whether this process runs in a user namespace that does not map every id. */
  readonly partial: boolean;
  /** Whether a file may be given this owner and group. */
  maps(uid: number, gid: number): boolean;
}

let cached: IdMap | undefined;

/** This process's id map (read once). */
export function idMap(): IdMap {
  if (cached) return cached;
  const uids = readRanges('/proc/self/uid_map');
  const gids = readRanges('/proc/self/gid_map');
  const covers = (ranges: Ranges | undefined, id: number) => ranges === undefined || ranges.some((r) => id >= r.first && id - r.first < r.count);
  const whole = (ranges: Ranges | undefined) => ranges === undefined || ranges.some((r) => r.first === 0 && r.count >= FULL);
  const partial = !whole(uids) || !whole(gids);
  cached = { partial, maps: partial ? (uid, gid) => covers(uids, uid) && covers(gids, gid) : () => true };
  return cached;
}
