/**
 * Real Redis servers for tests: `redis-server` (Debian's, 7.x) as child processes the test owns,
 * on 127.0.0.1 only and free ports, without persistence, in a directory the test chooses. A single
 * server (`startRedis`) or a cluster of masters without replicas (`startRedisCluster`). The test
 * stops every server it started; a server left running when the test process exits is killed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import net from 'node:net';
import tls from 'node:tls';
import path from 'node:path';
import { ownChild } from './children.js';
import { freePort } from './ports.js';
import { runOk } from './run.js';

export interface RunningRedis {
  /** `redis://127.0.0.1:PORT` */
  url: string;
  port: number;
  pid: number;
  /** Stops the server (SIGTERM: no save, since persistence is off) and waits for it to exit. */
  stop(): Promise<void>;
  /** SIGKILL, as a crash: the server vanishes mid-run. Waits for it to exit. */
  kill9(): Promise<void>;
  /** Runs one command with redis-cli and answers its output (trimmed). */
  cli(...args: string[]): Promise<string>;
}

export interface RunningRedisCluster {
  /** `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...` */
  url: string;
  nodes: RunningRedis[];
  stop(): Promise<void>;
}

export interface RedisOptions {
  /** Extra redis-server arguments, e.g. `['--requirepass', 'pw']`. */
  args?: string[];
  /** The password redis-cli uses (with `--requirepass`). */
  password?: string;
  /** Serve TLS only (`--tls-port`, no plain port): the URL is then `rediss://`. */
  tls?: { certFile: string; keyFile: string };
  /** Listen on this port (a server started again where clients expect it), not a free one. */
  port?: number;
}

/** One RESP command over a fresh socket; resolves with the raw reply, rejects on error or after `ms`. */
function rawCommand(port: number, args: string[], ms = 1000, overTls = false): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = overTls ? tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false }) : net.connect({ host: '127.0.0.1', port });
    let data = '';
    const done = (e?: Error) => {
      clearTimeout(timer);
      socket.destroy();
      if (e) reject(e);
      else resolve(data);
    };
    const timer = setTimeout(() => done(new Error('no answer')), ms);
    socket.once('error', (e) => done(e));
    socket.on('data', (d: Buffer) => {
      data += d.toString('utf8');
      // Enough for the replies the harness reads: a simple status, an error, or one bulk string.
      if (/^[+-].*\r\n$/s.test(data)) return done();
      const bulk = /^\$(-?\d+)\r\n/.exec(data);
      if (bulk && (Number(bulk[1]) < 0 || Buffer.byteLength(data) >= bulk[0].length + Number(bulk[1]) + 2)) done();
    });
    socket.write(args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).reduce((s, a) => s + a, `*${args.length}\r\n`));
  });
}

async function waitFor(what: string, ms: number, probe: () => Promise<boolean>, child?: ChildProcess, log?: () => string): Promise<void> {
  const until = Date.now() + ms;
  for (;;) {
    if (child && child.exitCode !== null) throw new Error(`${what}: redis-server exited ${child.exitCode}: ${log?.() ?? ''}`);
    if (await probe().catch(() => false)) return;
    if (Date.now() > until) throw new Error(`${what}: not ready in ${ms} ms: ${log?.() ?? ''}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

async function spawnRedis(dir: string, port: number, options: RedisOptions): Promise<RunningRedis> {
  await fs.mkdir(dir, { recursive: true });
  const { password } = options;
  const overTls = options.tls !== undefined;
  const listen = options.tls
    ? ['--port', '0', '--tls-port', String(port), '--tls-cert-file', options.tls.certFile, '--tls-key-file', options.tls.keyFile, '--tls-auth-clients', 'no']
    : ['--port', String(port)];
  const child = spawn(
    'redis-server',
    [...listen, '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--daemonize', 'no', '--dir', dir, '--logfile', '', ...(options.args ?? [])],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  void ownChild(child);
  let log = '';
  // Said by this server once it listens: a PING alone may be answered by another process's server,
  // which took the port before this one could (this one then exits: address in use).
  let listening = false;
  const keep = (d: Buffer) => {
    log = (log + d.toString()).slice(-4000);
    if (/Ready to accept connections/.test(log)) listening = true;
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  const spawnError = new Promise<never>((_, reject) => child.once('error', reject));
  spawnError.catch(() => undefined);
  try {
    await Promise.race([
      spawnError,
      waitFor(
        `redis-server on ${port}`,
        10_000,
        async () => {
          if (!listening) return false;
          // With requirepass, PING answers NOAUTH, which still says "up".
          const r = await rawCommand(port, ['PING'], 1000, overTls);
          return r.startsWith('+PONG') || r.startsWith('-NOAUTH');
        },
        child,
        () => log,
      ),
    ]);
  } catch (e) {
    child.kill('SIGKILL');
    await exited(child);
    throw e;
  }
  let stopping: Promise<void> | undefined;
  const end = (signal: NodeJS.Signals) =>
    (stopping ??= (async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGCONT'); // a test may have paused it
      child.kill(signal);
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited(child);
      clearTimeout(timer);
    })());
  return {
    url: `${overTls ? 'rediss' : 'redis'}://127.0.0.1:${port}`,
    port,
    pid: child.pid!,
    stop: () => end('SIGTERM'),
    kill9: () => end('SIGKILL'),
    cli: async (...cmd: string[]) => {
      const r = await runOk('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...(overTls ? ['--tls', '--insecure'] : []), ...(password ? ['--no-auth-warning', '-a', password] : []), ...cmd]);
      return r.stdout.toString('utf8').trim();
    },
  };
}

/** Starts redis-server on 127.0.0.1 and a free port; resolves once it answers PING. */
export async function startRedis(dir: string, options: RedisOptions = {}): Promise<RunningRedis> {
  if (options.port !== undefined) return spawnRedis(dir, options.port, options);
  let lastError: unknown;
  // freePort() closes its probe before redis binds: another process may take the port between.
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await spawnRedis(dir, await freePort(), options);
    } catch (e) {
      lastError = e;
      if (!/in use|EADDRINUSE/i.test(String((e as Error).message))) break;
    }
  }
  throw lastError;
}

/**
 * Starts `masters` cluster-enabled servers (bus ports chosen free too, with `--cluster-port`), joins
 * them with `redis-cli --cluster create --cluster-replicas 0`, and waits until every node says
 * `cluster_state:ok` with all 16384 slots assigned and every node known.
 */
export async function startRedisCluster(dir: string, masters = 3): Promise<RunningRedisCluster> {
  const nodes: RunningRedis[] = [];
  try {
    for (let i = 0; i < masters; i++) {
      const nodeDir = path.join(dir, `node${i}`);
      nodes.push(
        await startRedis(nodeDir, {
          args: ['--cluster-enabled', 'yes', '--cluster-config-file', path.join(nodeDir, 'nodes.conf'), '--cluster-port', String(await freePort()), '--cluster-node-timeout', '5000'],
        }),
      );
    }
    await runOk('redis-cli', ['--cluster', 'create', ...nodes.map((n) => `127.0.0.1:${n.port}`), '--cluster-replicas', '0', '--cluster-yes']);
    for (const n of nodes) {
      await waitFor(`cluster node ${n.port}`, 20_000, async () => {
        const info = await rawCommand(n.port, ['CLUSTER', 'INFO']);
        return info.includes('cluster_state:ok') && info.includes('cluster_slots_assigned:16384') && info.includes(`cluster_known_nodes:${masters}`);
      });
    }
  } catch (e) {
    await Promise.all(nodes.map((n) => n.kill9()));
    throw e;
  }
  return {
    url: `redis+cluster://${nodes.map((n) => `127.0.0.1:${n.port}`).join(',')}`,
    nodes,
    stop: async () => {
      await Promise.all(nodes.map((n) => n.stop()));
    },
  };
}
