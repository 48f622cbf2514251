/**
 * The OCI runtime config.json of a bundle, modelled on what `runc spec` writes (runc 1.1) and filled
 * from the image config as image-spec conversion.md describes: args, env, cwd, user, annotations.
 * For a runc that is not root (or root of a user namespace that lacks ids the spec names), the
 * rootless form `runc spec --rootless` and umoci's `unpack --rootless` write: see toRootless.
 */
import { constants as fsConstants } from 'node:fs';
import { open } from 'node:fs/promises';
import path from 'node:path';
import { SmartError, isErrno, isSmartError } from '../../errors.js';
import { idMap } from '../../id-map.js';
import type { ImageConfig } from '../../oci/config.js';
import { fsPath } from '../../tar/byte-names.js';
import { resolveInRoot } from './apply.js';

export const DEFAULT_PATH = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
export const DEFAULT_HOSTNAME = 'smartlayer';

/** Larger /etc/passwd or /etc/group files are refused (they are read whole). */
const MAX_ACCOUNT_FILE_BYTES = 16 * 1024 * 1024;
/** The group of /dev/pts terminals, as `runc spec` mounts devpts (`gid=5`). */
const TTY_GID = 5;
/** As runc's libcontainer/user: ids are 31-bit. */
const MAX_ID = 2 ** 31 - 1;

export interface RuntimeSpecOptions {
  /** `root.path` of the spec, relative to the bundle; default `rootfs`. */
  rootfsPath?: string;
  /** Who will run the bundle (thisProcessRunner() for the one pulling it); default root on the host. */
  runner?: Runner;
  /** Told when the spec cannot give the process the image's user (a rootless one). */
  onWarning?: (message: string) => void;
}

/** The user who runs `runc run`: its effective ids, and which ids its user namespace maps. */
export interface Runner {
  uid: number;
  gid: number;
  maps(uid: number, gid: number): boolean;
}

/** This process, as the runner of the bundle it writes: `smart pull … bundle:./app && runc run --bundle ./app app`. */
export function thisProcessRunner(): Runner {
  const ids = idMap();
  return { uid: process.geteuid?.() ?? 0, gid: process.getegid?.() ?? 0, maps: (uid, gid) => ids.maps(uid, gid) };
}

export interface ProcessUser {
  uid: number;
  gid: number;
  additionalGids?: number[];
}

interface PasswdEntry {
  name: string;
  uid: number;
  gid: number;
}

interface GroupEntry {
  name: string;
  gid: number;
  members: string[];
}

/**
 * Reads a file of the image, resolving its path inside `rootfsDir` only (symlinks scoped to the
 * rootfs, as the runtime will see it). Null when it is missing or not a regular file.
 */
export async function readFileInRoot(rootfsDir: string, relPath: string, maxBytes = MAX_ACCOUNT_FILE_BYTES): Promise<Buffer | null> {
  let full: string;
  try {
    full = await resolveInRoot(rootfsDir, relPath, { followLast: true });
  } catch (e) {
    // A symlink loop on the way (an image's /etc/passwd -> passwd), the one refusal of a walk that
    // makes nothing: no such file, as for a runtime that reads it (ELOOP), not a broken layer.
    if (isSmartError(e) && e.code === 'CORRUPT_ARCHIVE') return null;
    throw e;
  }
  let fh;
  try {
    // O_NOFOLLOW: the resolved path has no symlink left; O_NONBLOCK: a fifo planted there cannot hang us.
    fh = await open(fsPath(full), fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK);
  } catch (e) {
    if (isErrno(e, 'ENOENT') || isErrno(e, 'ENOTDIR') || isErrno(e, 'ELOOP')) return null;
    throw new SmartError('STORAGE', `reading /${relPath.replace(/^\/+/, '')} of ${rootfsDir}: ${(e as Error).message}`, {
      input: rootfsDir,
      cause: e,
    });
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) return null;
    if (st.size > maxBytes) {
      throw new SmartError('MANIFEST_INVALID', `/${relPath.replace(/^\/+/, '')} of the image is larger than ${maxBytes} bytes`, {
        input: rootfsDir,
      });
    }
    return await fh.readFile();
  } finally {
    await fh.close();
  }
}

function lines(text: string): string[][] {
  const out: string[][] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    out.push(line.split(':'));
  }
  return out;
}

function parseId(s: string | undefined): number | null {
  if (s === undefined || !/^\d+$/.test(s)) return null;
  const n = Number(s);
  return n <= MAX_ID ? n : null;
}

export function parsePasswd(text: string): PasswdEntry[] {
  const out: PasswdEntry[] = [];
  for (const f of lines(text)) {
    const uid = parseId(f[2]);
    const gid = parseId(f[3]);
    if (f[0] === undefined || uid === null || gid === null) continue;
    out.push({ name: f[0], uid, gid });
  }
  return out;
}

export function parseGroup(text: string): GroupEntry[] {
  const out: GroupEntry[] = [];
  for (const f of lines(text)) {
    const gid = parseId(f[2]);
    if (f[0] === undefined || gid === null) continue;
    out.push({ name: f[0], gid, members: (f[3] ?? '').split(',').map((m) => m.trim()).filter((m) => m !== '') });
  }
  return out;
}

/**
 * Resolves an image `User` (`name`, `uid`, `name:group`, `uid:gid`, `name:gid`, `uid:group`, or empty
 * for root) against the image's /etc/passwd and /etc/group, with runc's rules (libcontainer/user
 * GetExecUser): a numeric user is always a uid and may be absent from passwd (gid 0 then); a name
 * must be there; supplementary groups come from /etc/group only when no group is given.
 */
export async function resolveImageUser(userSpec: string | undefined, rootfsDir: string): Promise<ProcessUser> {
  const spec = (userSpec ?? '').trim();
  const colon = spec.indexOf(':');
  const userArg = colon < 0 ? spec : spec.slice(0, colon);
  const groupArg = colon < 0 ? '' : spec.slice(colon + 1);
  const isNumeric = (s: string) => /^\d+$/.test(s);

  const passwdBytes = await readFileInRoot(rootfsDir, 'etc/passwd');
  const passwd = passwdBytes ? parsePasswd(passwdBytes.toString('utf8')) : [];

  let uid = 0;
  let gid = 0;
  let matchedName: string | undefined;
  const match =
    userArg === ''
      ? passwd.find((u) => u.uid === 0)
      : isNumeric(userArg)
        ? passwd.find((u) => u.uid === Number(userArg))
        : passwd.find((u) => u.name === userArg);
  if (match) {
    matchedName = match.name;
    uid = match.uid;
    gid = match.gid;
  } else if (userArg !== '') {
    if (!isNumeric(userArg)) {
      throw new SmartError('MANIFEST_INVALID', `image user "${userArg}" is not in /etc/passwd of the image`, {
        input: spec,
        hint: 'the image config names a user its root filesystem does not define',
      });
    }
    const n = parseId(userArg);
    if (n === null) throw new SmartError('MANIFEST_INVALID', `image user "${userArg}" is out of range`, { input: spec });
    uid = n;
  }

  let additionalGids: number[] | undefined;
  if (groupArg !== '' || matchedName !== undefined) {
    const groupBytes = await readFileInRoot(rootfsDir, 'etc/group');
    const groups = groupBytes ? parseGroup(groupBytes.toString('utf8')) : [];
    if (groupArg !== '') {
      const g = isNumeric(groupArg)
        ? groups.find((x) => x.gid === Number(groupArg))
        : groups.find((x) => x.name === groupArg);
      if (g) {
        gid = g.gid;
      } else if (!isNumeric(groupArg)) {
        throw new SmartError('MANIFEST_INVALID', `image group "${groupArg}" is not in /etc/group of the image`, {
          input: spec,
          hint: 'the image config names a group its root filesystem does not define',
        });
      } else {
        const n = parseId(groupArg);
        if (n === null) throw new SmartError('MANIFEST_INVALID', `image group "${groupArg}" is out of range`, { input: spec });
        gid = n;
      }
    } else {
      const sgids: number[] = [];
      for (const g of groups) if (g.members.includes(matchedName as string) && !sgids.includes(g.gid)) sgids.push(g.gid);
      if (sgids.length > 0) additionalGids = sgids;
    }
  }
  return additionalGids ? { uid, gid, additionalGids } : { uid, gid };
}

/** Docker's env: PATH first, then the image's, a later value replacing an earlier one in place. */
export function imageEnv(env: readonly string[] | undefined): string[] {
  const out: string[] = [DEFAULT_PATH];
  const index = new Map<string, number>([['PATH', 0]]);
  for (const entry of env ?? []) {
    if (typeof entry !== 'string') continue;
    const eq = entry.indexOf('=');
    // runc refuses a variable without '='; docker reads a bare name as "unset it".
    const key = eq < 0 ? entry : entry.slice(0, eq);
    if (key === '') continue;
    const at = index.get(key);
    if (eq < 0) {
      if (at !== undefined) {
        out.splice(at, 1);
        index.clear();
        out.forEach((e, i) => index.set(e.slice(0, e.indexOf('=')), i));
      }
      continue;
    }
    if (at !== undefined) out[at] = entry;
    else {
      index.set(key, out.length);
      out.push(entry);
    }
  }
  return out;
}

/**
 * Docker's default capability set, not `runc spec`'s three: images are built and tested under
 * Docker, and common ones (package managers, anything that drops privileges) need CHOWN, SETUID...
 */
const CAPABILITIES = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_FSETID',
  'CAP_FOWNER',
  'CAP_MKNOD',
  'CAP_NET_RAW',
  'CAP_SETGID',
  'CAP_SETUID',
  'CAP_SETFCAP',
  'CAP_SETPCAP',
  'CAP_NET_BIND_SERVICE',
  'CAP_SYS_CHROOT',
  'CAP_KILL',
  'CAP_AUDIT_WRITE',
];

/**
 * Annotations of image-spec conversion.md: the implicit ones from the config, then the image's labels
 * in the `org.opencontainers.image.` namespace, which take precedence. Other labels are left out:
 * runtimes read some annotations as settings (runc's `org.systemd.property.*`, crun's `run.oci.*`),
 * and an image must not choose those.
 */
export function imageAnnotations(config: ImageConfig): Record<string, string> {
  const out: Record<string, string> = {};
  const set = (k: string, v: unknown) => {
    if (typeof v === 'string' && v !== '') out[k] = v;
  };
  set('org.opencontainers.image.os', config.os);
  set('org.opencontainers.image.architecture', config.architecture);
  set('org.opencontainers.image.variant', config.variant);
  set('org.opencontainers.image.os.version', config['os.version']);
  const features = config['os.features'];
  if (Array.isArray(features) && features.length > 0) set('org.opencontainers.image.os.features', features.join(','));
  set('org.opencontainers.image.author', config.author);
  set('org.opencontainers.image.created', config.created);
  set('org.opencontainers.image.stopSignal', config.config?.StopSignal);
  const ports = Object.keys(config.config?.ExposedPorts ?? {});
  if (ports.length > 0) set('org.opencontainers.image.exposedPorts', ports.join(','));
  for (const [k, v] of Object.entries(config.config?.Labels ?? {})) {
    if (k.startsWith('org.opencontainers.image.') && typeof v === 'string') out[k] = v;
  }
  return out;
}

/**
 * A runtime config.json for `runc run`: `runc spec`'s defaults (namespaces, mounts, masked and
 * read-only paths) with Docker's capabilities and the image's process. `rootfsDir` is the unpacked root
 * filesystem, read (safely) for the user's ids.
 */
export async function makeRuntimeSpec(
  config: ImageConfig,
  rootfsDir: string,
  options: RuntimeSpecOptions = {},
): Promise<Record<string, unknown>> {
  const c = config.config ?? {};
  const args = [...(c.Entrypoint ?? []), ...(c.Cmd ?? [])];
  const workingDir = c.WorkingDir ? path.posix.join('/', c.WorkingDir) : '/';
  const user = await resolveImageUser(c.User, rootfsDir);
  const spec: Record<string, unknown> = {
    ociVersion: '1.0.2-dev',
    process: {
      terminal: false,
      user,
      args: args.length > 0 ? args : ['sh'],
      env: imageEnv(c.Env),
      cwd: workingDir,
      capabilities: {
        bounding: [...CAPABILITIES],
        effective: [...CAPABILITIES],
        permitted: [...CAPABILITIES],
      },
      rlimits: [{ type: 'RLIMIT_NOFILE', hard: 1024, soft: 1024 }],
      // As Docker: setuid programs in the image (su, sudo) keep working.
      noNewPrivileges: false,
    },
    root: { path: options.rootfsPath ?? 'rootfs', readonly: false },
    hostname: DEFAULT_HOSTNAME,
    mounts: [
      { destination: '/proc', type: 'proc', source: 'proc' },
      { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
      {
        destination: '/dev/pts',
        type: 'devpts',
        source: 'devpts',
        options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', `gid=${TTY_GID}`],
      },
      { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'] },
      { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
      { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
      {
        destination: '/sys/fs/cgroup',
        type: 'cgroup',
        source: 'cgroup',
        options: ['nosuid', 'noexec', 'nodev', 'relatime', 'ro'],
      },
    ],
    linux: {
      resources: { devices: [{ allow: false, access: 'rwm' }] },
      namespaces: [{ type: 'pid' }, { type: 'network' }, { type: 'ipc' }, { type: 'uts' }, { type: 'mount' }, { type: 'cgroup' }],
      maskedPaths: [
        '/proc/acpi',
        '/proc/asound',
        '/proc/kcore',
        '/proc/keys',
        '/proc/latency_stats',
        '/proc/timer_list',
        '/proc/timer_stats',
        '/proc/sched_debug',
        '/sys/firmware',
        '/proc/scsi',
      ],
      readonlyPaths: ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'],
    },
  };
  const ann = imageAnnotations(config);
  if (Object.keys(ann).length > 0) spec.annotations = ann;
  const runner = options.runner;
  if (runner && !runsRootSpec(runner, user)) toRootless(spec, runner, user, options.onWarning);
  return spec;
}

/**
 * Whether runc run by `runner` takes root's spec: root with every id it names mapped. Measured with
 * runc 1.1: any other user is refused it ("rootless container requires user namespaces"); root of
 * `unshare -r`, which maps uid and gid 0 alone, fails mounting /dev/pts with `gid=5`; root of a
 * namespace mapping 65,536 ids (rootless podman or Docker) runs it, and keeps the image's owners.
 */
function runsRootSpec(runner: Runner, user: ProcessUser): boolean {
  return (
    runner.uid === 0 &&
    runner.maps(user.uid, user.gid) &&
    (user.additionalGids ?? []).every((g) => runner.maps(user.uid, g)) &&
    runner.maps(0, TTY_GID)
  );
}

/**
 * Makes `spec` one that runc runs as `runner`, as runc's specconv.ToRootless and umoci's rootless
 * unpacking make theirs: a user namespace whose root is the runner (one id is all an unprivileged
 * runc can map, and its tree is the runner's: a non-root pull gives every file the puller's owner).
 * Unlike theirs, the network namespace and sysfs stay (the container sees loopback alone, as root's
 * does): sysfs mounts in a network namespace the user namespace owns, and a bind of the host's /sys
 * instead failed under `unshare -r` (runc 1.1.5: "failed to setns to host mntns").
 */
function toRootless(spec: Record<string, unknown>, runner: Runner, user: ProcessUser, onWarning?: (message: string) => void): void {
  // Root of the container is the only id mapped: runc refuses another (unmapped) uid, and any
  // supplementary group ("cannot set any additional groups in a rootless container").
  (spec.process as Record<string, unknown>).user = { uid: 0, gid: 0 };
  if (user.uid !== 0 || user.gid !== 0) {
    onWarning?.(
      `config.json runs the image's process as root of its user namespace, not as the image's user ${user.uid}:${user.gid}, which rootless runc cannot map (it maps uid ${runner.uid} alone, to root); pull and run as root to keep the image's user`,
    );
  }
  const linux = spec.linux as Record<string, unknown>;
  linux.uidMappings = [{ containerID: 0, hostID: runner.uid, size: 1 }];
  linux.gidMappings = [{ containerID: 0, hostID: runner.gid, size: 1 }];
  linux.namespaces = [...(linux.namespaces as { type: string }[]), { type: 'user' }];
  // Cgroup settings are not the runner's to make (runc's ToRootless drops them too).
  delete linux.resources;
  // An owner a mount option names is an unmapped id there (devpts's tty group): runc refuses it.
  for (const mount of spec.mounts as { options?: string[] }[]) {
    if (mount.options) mount.options = mount.options.filter((o) => !o.startsWith('uid=') && !o.startsWith('gid='));
  }
}
