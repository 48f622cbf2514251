/**
 * A private Docker daemon (Debian `docker.io`, 20.10) for tests: `/usr/sbin/dockerd` as root with
 * its own data root, exec root, socket and containerd namespace under a temporary directory, no
 * networking set-up (no bridge, no iptables: builds run with `--network none`), the vfs storage
 * driver; the client is `/usr/bin/docker` (PATH may hold another `docker` first). The test stops
 * it: SIGTERM to the daemon, which takes its containerd with it, both waited for, then the
 * directory is removed. Their TMPDIR is in that directory too: a containerd slow to stop is sent
 * SIGUSR1 by dockerd before it is killed, and writes its goroutine stacks there (a loaded CI run
 * left a containerd.PID.stacks.log in the run's temp directory).
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { ownChild } from './children.js';
import { run, type RunResult } from './run.js';
import { haveTools, inCI, isRoot } from './tools.js';

export const DOCKERD = '/usr/sbin/dockerd';
export const DOCKER = '/usr/bin/docker';

/** Whether a daemon can be started here: root and the programs. Not root is a skip only outside CI. */
export function canStartDockerd(): boolean {
  if (!isRoot) {
    if (inCI) throw new Error('CI=true but the Docker daemon tests need root');
    return false;
  }
  return haveTools(DOCKERD, DOCKER, 'containerd', 'runc');
}

export interface RunningDockerd {
  /** `unix:///…/sock`, for `docker -H`. */
  host: string;
  pid: number;
  /** The daemon's log so far (its stderr, last 64 kB). */
  log(): string;
  /** `docker -H SOCK ARGS` with `env` added (e.g. `DOCKER_BUILDKIT`). */
  docker(args: string[], options?: { env?: NodeJS.ProcessEnv; input?: Buffer | NodeJS.ReadableStream }): Promise<RunResult>;
  /** The same, failing with its stderr when it exits non-zero. */
  dockerOk(args: string[], options?: { env?: NodeJS.ProcessEnv; input?: Buffer | NodeJS.ReadableStream }): Promise<RunResult>;
  /** Removes every image, container and build cache: the daemon as a fresh runner's. */
  wipe(): Promise<void>;
  stop(): Promise<void>;
}

async function pidAlive(pid: number): Promise<boolean> {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * Unmounts what is still mounted under `dir`, deepest first: dockerd bind-mounts its data root
 * over itself and BuildKit mounts its snapshots there; a daemon that had to be killed leaves them,
 * and the tree then cannot be removed (a run killed mid-build left one behind in the temp dir).
 */
async function unmountUnder(dir: string): Promise<void> {
  const mountinfo = await fs.readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
  const points = mountinfo
    .split('\n')
    .map((line) => line.split(' ')[4]?.replace(/\\(\d{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))))
    .filter((p): p is string => p !== undefined && (p === dir || p.startsWith(`${dir}/`)))
    .sort((a, b) => b.length - a.length);
  for (const p of points) await run('umount', ['-l', p]).catch(() => undefined);
}

export async function startDockerd(options: { insecureRegistries?: string[] } = {}): Promise<RunningDockerd> {
  // Short paths: the daemon's and containerd's sockets live under it (108-byte limit).
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'smart-dockerd-'));
  const sock = path.join(dir, 'sock');
  const args = [
    '--iptables=false',
    '--ip-masq=false',
    '--bridge=none',
    '--storage-driver=vfs',
    '--data-root',
    path.join(dir, 'root'),
    '--exec-root',
    path.join(dir, 'exec'),
    '--pidfile',
    path.join(dir, 'pid'),
    '-H',
    `unix://${sock}`,
    '--containerd-namespace',
    `smart-test-${path.basename(dir)}`,
    '--containerd-plugins-namespace',
    `smart-test-plugins-${path.basename(dir)}`,
    ...(options.insecureRegistries ?? []).flatMap((r) => ['--insecure-registry', r]),
  ];
  const tmp = path.join(dir, 'tmp');
  await fs.mkdir(tmp);
  const child = spawn(DOCKERD, args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, DOCKER_CONFIG: path.join(dir, 'client'), TMPDIR: tmp } });
  const exited = ownChild(child);
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-64_000);
  });
  const host = `unix://${sock}`;
  // The client's config (credentials, contexts) is the test's own, never the user's.
  const clientEnv = { ...process.env, DOCKER_CONFIG: path.join(dir, 'client'), DOCKER_HOST: host };
  const docker = (a: string[], o: { env?: NodeJS.ProcessEnv; input?: Buffer | NodeJS.ReadableStream } = {}) =>
    run(DOCKER, a, { env: { ...clientEnv, ...o.env }, ...(o.input ? { input: o.input } : {}) });
  const dockerOk = async (a: string[], o: { env?: NodeJS.ProcessEnv; input?: Buffer | NodeJS.ReadableStream } = {}) => {
    const r = await docker(a, o);
    if (r.code !== 0) throw new Error(`docker ${a.join(' ')} exited ${r.code}: ${r.stderr}${r.stdout.toString().slice(-4000)}`);
    return r;
  };

  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    const containerd = Number((await fs.readFile(path.join(dir, 'exec', 'containerd', 'containerd.pid'), 'utf8').catch(() => '')).trim());
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
      await exited;
      clearTimeout(timer);
    }
    // dockerd stops its containerd on the way out; wait for it, and make sure.
    if (containerd > 0) {
      const deadline = Date.now() + 10_000;
      while ((await pidAlive(containerd)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      if (await pidAlive(containerd)) process.kill(containerd, 'SIGKILL');
    }
    await unmountUnder(dir);
    await fs.rm(dir, { recursive: true, force: true, maxRetries: 3 });
  };

  try {
    const deadline = Date.now() + 60_000;
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`dockerd exited (${child.exitCode ?? child.signalCode}): ${stderr.slice(-4000)}`);
      const r = await docker(['version', '--format', '{{.Server.Version}}']).catch(() => undefined);
      if (r?.code === 0) break;
      if (Date.now() > deadline) throw new Error(`dockerd did not answer in 60 s: ${stderr.slice(-4000)}`);
      await new Promise((res) => setTimeout(res, 200));
    }
  } catch (e) {
    await stop();
    throw e;
  }

  const wipe = async () => {
    const ids = (await dockerOk(['ps', '-aq'])).stdout.toString().split('\n').filter(Boolean);
    if (ids.length) await dockerOk(['rm', '-f', ...ids]);
    // Every image (the classic builder's intermediate ones too) and BuildKit's cache.
    await dockerOk(['system', 'prune', '-af']);
    const left = (await dockerOk(['images', '-aq'])).stdout.toString().trim();
    if (left) throw new Error(`docker system prune left images: ${left}`);
  };

  return { host, pid: child.pid!, log: () => stderr, docker, dockerOk, wipe, stop };
}
