/**
 * The metadata cache on Redis: how a fleet of build machines shares what each learned. Chosen with
 * `--redis URL` / `SMART_REDIS_URL` (see `openMetadataCache`). URL forms:
 *
 *   redis://[user:pass@]host[:port][/db]        one server (port 6379 and db 0 by default)
 *   rediss://[user:pass@]host[:port][/db]       the same over TLS
 *   redis+cluster://[user:pass@]host1:port1,host2:port2,...
 *   rediss+cluster://...                        a Redis Cluster (TLS): any reachable nodes of it,
 *                                               the others are learned from CLUSTER SLOTS; db 0 only
 *
 * A user name or password holding `@ : / %` or `,` is written percent-encoded (`p%40ss`). IPv6
 * hosts go in brackets (`[::1]:6379`). Query parameters are not accepted.
 *
 * A hint, never the truth, so it is built never to hang a run: connecting and every command give up
 * after `timeoutMs` (2 s), every operation has a hard deadline a little later whatever the client
 * does, a command is retried at most once, and a connection that was lost is re-established at most
 * twice, quickly, then left closed. The client (ioredis) is imported only by
 * `createRedisMetadataCache`, so a run without Redis never loads it.
 *
 * Errors are SmartErrors (STORAGE) that name the server by host:port only: never the user name or
 * password (the client's own error, which can carry the AUTH arguments, is not kept as the cause).
 * Known limit: ioredis itself writes a console warning when a password is given to a server that
 * needs none; nothing else of the client prints (its error events are consumed here).
 */
import tls from 'node:tls';
import { contextTrusting, trustDeferredCaCerts } from '../tls-trust.js';
import type { ChainableCommander, Cluster, ClusterOptions, Redis, RedisOptions } from 'ioredis';
import { SmartError } from '../errors.js';
import type { MetadataCache, MetadataCacheEntry, MetadataCacheReplacement } from './metadata.js';

export const DEFAULT_REDIS_KEY_PREFIX = 'smartlayer:';
const DEFAULT_TIMEOUT_MS = 2000;

export interface RedisNodeAddress {
  host: string;
  port: number;
}

export interface RedisTarget {
  cluster: boolean;
  tls: boolean;
  /** One node, or the cluster's startup nodes. */
  nodes: RedisNodeAddress[];
  username?: string;
  password?: string;
  db: number;
  /** The server(s) as host:port, for messages: never the credentials. */
  where: string;
}

/** The URL with any user name and password replaced by `***`: what messages may show. */
export function redactRedisUrl(url: string): string {
  return url.replace(/^([A-Za-z][A-Za-z0-9+.-]*:\/\/).*@/s, '$1***@');
}

function usage(url: string, message: string): SmartError {
  return new SmartError('USAGE', `invalid Redis URL: ${message}`, {
    input: redactRedisUrl(url),
    hint: 'use redis://[user:pass@]host:port[/db], rediss://... (TLS) or redis+cluster://host1:port1,host2:port2',
  });
}

function decode(url: string, s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    throw usage(url, 'malformed percent-encoding in the user name or password');
  }
}

function parseHost(url: string, s: string): RedisNodeAddress {
  let host: string;
  let portText: string | undefined;
  const v6 = /^\[([0-9A-Fa-f:.]+)\](?::(.*))?$/.exec(s);
  if (v6) {
    host = v6[1]!;
    portText = v6[2];
  } else {
    // Without whole brackets there is no telling an IPv6 address's last group from a port.
    if (/[[\]]/.test(s) || (s.match(/:/g)?.length ?? 0) > 1) throw usage(url, `bad host "${s}": an IPv6 address goes in brackets, as [::1]:6379`);
    const i = s.lastIndexOf(':');
    host = i < 0 ? s : s.slice(0, i);
    portText = i < 0 ? undefined : s.slice(i + 1);
  }
  if (!host || !/^[A-Za-z0-9._:-]+$/.test(host)) throw usage(url, `bad host "${host}"`);
  let port = 6379;
  if (portText !== undefined) {
    if (!/^\d{1,5}$/.test(portText) || Number(portText) < 1 || Number(portText) > 65535) throw usage(url, `bad port "${portText}"`);
    port = Number(portText);
  }
  return { host, port };
}

/** Parses a Redis URL (forms in the module comment); throws SmartError USAGE. Never echoes credentials. */
export function parseRedisUrl(url: string): RedisTarget {
  const m = /^(redis|rediss|redis\+cluster|rediss\+cluster):\/\/(.*)$/is.exec(url.trim());
  if (!m) throw usage(url, 'the scheme must be redis://, rediss://, redis+cluster:// or rediss+cluster://');
  const scheme = m[1]!.toLowerCase();
  let rest = m[2]!;
  // The user info ends at the last '@': a password with an unencoded '/' or '@' still parses.
  let username: string | undefined;
  let password: string | undefined;
  const at = rest.lastIndexOf('@');
  if (at >= 0) {
    const info = rest.slice(0, at);
    rest = rest.slice(at + 1);
    const colon = info.indexOf(':');
    if (colon < 0) {
      if (info) username = decode(url, info);
    } else {
      const u = info.slice(0, colon);
      const p = info.slice(colon + 1);
      if (u) username = decode(url, u);
      if (p) password = decode(url, p);
    }
  }
  if (/[?#]/.test(rest)) throw usage(url, 'query parameters and fragments are not supported');
  const slash = rest.indexOf('/');
  const hostPart = slash < 0 ? rest : rest.slice(0, slash);
  const pathPart = slash < 0 ? '' : rest.slice(slash + 1);
  let db = 0;
  if (pathPart !== '') {
    if (!/^\d{1,5}$/.test(pathPart)) throw usage(url, `the path must be a database number, not "/${pathPart}"`);
    db = Number(pathPart);
  }
  const cluster = scheme.endsWith('+cluster');
  const hosts = hostPart.split(',');
  if (hosts.some((h) => h === '')) throw usage(url, 'a host is missing');
  if (!cluster && hosts.length > 1) throw usage(url, 'several hosts: for a cluster, use redis+cluster://');
  if (cluster && db !== 0) throw usage(url, 'a Redis Cluster has database 0 only');
  const nodes = hosts.map((h) => parseHost(url, h));
  const list = nodes.map((n) => (n.host.includes(':') ? `[${n.host}]:${n.port}` : `${n.host}:${n.port}`)).join(',');
  return {
    cluster,
    tls: scheme.startsWith('rediss'),
    nodes,
    ...(username !== undefined ? { username } : {}),
    ...(password !== undefined ? { password } : {}),
    db,
    where: cluster ? `cluster ${list}` : list,
  };
}

// ---- cluster slots: CRC16/XMODEM of the key (or of its {hash tag}) mod 16384 --------------------

const CRC16_TABLE = (() => {
  const t = new Uint16Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i << 8;
    for (let b = 0; b < 8; b++) c = c & 0x8000 ? ((c << 1) ^ 0x1021) & 0xffff : (c << 1) & 0xffff;
    t[i] = c;
  }
  return t;
})();

/** The cluster hash slot of a key, as Redis computes it (hash tags included). */
export function clusterKeySlot(key: string): number {
  let bytes = Buffer.from(key, 'utf8');
  const open = bytes.indexOf(0x7b); // {
  if (open >= 0) {
    const close = bytes.indexOf(0x7d, open + 1); // }
    if (close > open + 1) bytes = bytes.subarray(open + 1, close);
  }
  let crc = 0;
  for (const byte of bytes) crc = ((crc << 8) & 0xffff) ^ CRC16_TABLE[((crc >> 8) ^ byte) & 0xff]!;
  return crc & 16383;
}

// ---- the cache ----------------------------------------------------------------------------------

export interface RedisCacheOptions {
  url: string;
  /** Prepended to every key. Default `smartlayer:`. */
  keyPrefix?: string;
  /** Extra CA certificates (PEM) trusted for rediss://, besides the system's. */
  ca?: string[];
  /** Connect and command timeout. Default 2000 ms; every operation ends by this plus 500 ms. */
  timeoutMs?: number;
}

type Client = Redis | Cluster;
type PipelineResult = [error: Error | null, result: unknown][] | null;

const RENEW_IF_EQUAL = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
const DELETE_IF_EQUAL = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";
/** ARGV: '1' when the key held ARGV[2] ('0': held nothing), then the value to write. */
const SET_IF_UNCHANGED =
  "local v = redis.call('GET', KEYS[1]) if (ARGV[1] == '1' and v == ARGV[2]) or (ARGV[1] == '0' and not v) then redis.call('SET', KEYS[1], ARGV[3]) return 1 else return 0 end";
/** A cluster node's answer for a key it does not serve now: the command did not run. */
const REDIRECTED = /^(MOVED|ASK) /;
const GENERIC_MESSAGES = ['Connection is closed', 'None of startup nodes is available', 'Failed to refresh slots cache', 'Cluster is disconnected'];

/**
 * Connects lazily in the background; the first operation waits for it (within its deadline).
 * Throws only for a URL that does not parse (SmartError USAGE).
 */
export async function createRedisMetadataCache(options: RedisCacheOptions): Promise<RedisMetadataCache> {
  const target = parseRedisUrl(options.url);
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const { Redis: RedisClass, Cluster: ClusterClass } = await import('ioredis');
  const state = { everReady: false };
  // Before the first command that worked: no retry (the run goes on without the cache at once).
  // After a loss: two quick attempts (a server that closed an idle connection), then it stays closed.
  const retry = (times: number): number | null => (state.everReady && times <= 2 ? 100 * times : null);
  if (target.tls) trustDeferredCaCerts(tls);
  const common: RedisOptions = {
    connectTimeout: timeoutMs,
    commandTimeout: timeoutMs,
    maxRetriesPerRequest: 1,
    lazyConnect: true,
    // The INFO ready check would make ioredis print a warning for a user without +info; a server
    // still loading its data answers LOADING instead, which is one miss-and-warning for a hint.
    enableReadyCheck: false,
    // CLIENT SETINFO would cost a round trip (and a file read) before the first command.
    disableClientInfo: true,
    autoResubscribe: false,
    // A closing socket that does not close is destroyed after this (ioredis waits 2 s by default,
    // even for a socket that never connected, which kept a CLI process alive for 2 s).
    disconnectTimeout: 200,
    ...(target.username !== undefined ? { username: target.username } : {}),
    ...(target.password !== undefined ? { password: target.password } : {}),
    ...(target.tls ? { tls: { ...(options.ca?.length ? { secureContext: contextTrusting(tls, options.ca) } : {}) } } : {}),
  };
  let client: Client;
  if (target.cluster) {
    const clusterOptions: ClusterOptions = {
      lazyConnect: true,
      enableOfflineQueue: true,
      enableReadyCheck: true, // CLUSTER INFO: cluster_state:ok
      clusterRetryStrategy: retry,
      maxRedirections: 4,
      retryDelayOnClusterDown: 100,
      retryDelayOnFailover: 100,
      retryDelayOnTryAgain: 100,
      slotsRefreshTimeout: timeoutMs,
      redisOptions: common,
    };
    client = new ClusterClass(target.nodes, clusterOptions);
  } else {
    client = new RedisClass({ ...common, host: target.nodes[0]!.host, port: target.nodes[0]!.port, db: target.db, retryStrategy: retry, enableOfflineQueue: true });
  }
  return new RedisMetadataCache(client, target, options.keyPrefix ?? DEFAULT_REDIS_KEY_PREFIX, timeoutMs, state);
}

export class RedisMetadataCache implements MetadataCache {
  private readonly ready: Promise<void>;
  private lastError: Error | undefined;
  private lastNodeError: Error | undefined;
  private closed = false;
  private readonly deadlineMs: number;

  /** Use `createRedisMetadataCache`, which loads the client. */
  constructor(
    private readonly client: Client,
    readonly target: RedisTarget,
    readonly keyPrefix: string,
    readonly timeoutMs: number,
    private readonly state: { everReady: boolean },
  ) {
    this.deadlineMs = timeoutMs + 500;
    // Without a listener ioredis prints error events; keep the last one for the message instead.
    client.on('error', (e: Error) => {
      this.lastError = e;
    });
    client.on('node error', (e: Error) => {
      this.lastError = e;
      // Kept apart: the cluster's own error that follows ("Failed to refresh slots cache.") says
      // less than the node's (ERR This instance has cluster support disabled).
      this.lastNodeError = e;
    });
    // ioredis selects the database itself on connect, but a SELECT refused there (a number past
    // the server's `databases`) only reaches an error event, and the connection stays on
    // database 0: entries then went where no other machine looks for them. Selected again here,
    // a refusal fails the connection as a wrong password does.
    const db = target.cluster ? 0 : target.db;
    this.ready = this.deadline('connecting', client.connect().then(() => (db !== 0 ? (client as Redis).select(db).then(() => undefined) : undefined)), false);
    this.ready.catch(() => undefined); // awaited by the first operation
  }

  /** The server(s), as host:port. */
  get where(): string {
    return this.target.where;
  }

  private get isCluster(): boolean {
    return this.target.cluster;
  }

  private error(what: string, e: unknown): SmartError {
    if (e instanceof SmartError) return e;
    let message = e instanceof Error ? e.message : String(e);
    // "Connection is closed." and "None of startup nodes is available" say less than the error
    // that caused them, when one is known: down the cluster's lastNodeError chain, or the last
    // error event (e.g. connect ECONNREFUSED host:port).
    const generic = (m: string) => GENERIC_MESSAGES.some((g) => m.startsWith(g));
    type Chained = { lastNodeError?: Chained; message?: string };
    const candidates: (string | undefined)[] = [];
    for (let c = e as Chained | undefined; c?.lastNodeError; c = c.lastNodeError) candidates.push(c.lastNodeError.message);
    candidates.push(this.lastError?.message, this.lastNodeError?.message);
    const detail = candidates.find((m): m is string => !!m && !generic(m) && !message.includes(m));
    if (detail) message = generic(message) ? detail : `${message} (${detail})`;
    const known = this.knownFailure([message, ...candidates].join(' '));
    if (known?.message) message = known.message;
    for (const secret of [this.target.password, this.target.username]) {
      if (secret && secret.length >= 3) message = message.split(secret).join('***');
    }
    return new SmartError('STORAGE', `redis ${this.where}: ${what}: ${message}`, { retryable: known?.retryable ?? true, ...(known?.hint ? { hint: known.hint } : {}) });
  }

  /**
   * What the client's words (`said`: the error and the errors before it) mean, where they are
   * known to mislead or to say too little: a server that is no cluster (ioredis only says none of
   * the startup nodes is available), a cluster node reached as a single server (it serves only its
   * own slots' keys), credentials refused (the command after a refused AUTH is answered NOAUTH,
   * which no retry changes), a server at its maxclients, and a plain connection a TLS-only server
   * reset.
   */
  private knownFailure(said: string): { message?: string; hint?: string; retryable?: boolean } | undefined {
    if (this.isCluster && /cluster support disabled/i.test(said)) {
      return { message: 'the server is not a Redis Cluster (ERR This instance has cluster support disabled)', hint: 'for a single server, use redis:// or rediss://', retryable: false };
    }
    const clusterNode = !this.isCluster && /\b(?:MOVED|ASK) \d+ \S+|\b(?:CROSSSLOT|CLUSTERDOWN)\b/.exec(said);
    if (clusterNode) {
      return { message: `the server is a node of a Redis Cluster (it answered ${clusterNode[0]})`, hint: 'for a Redis Cluster, use redis+cluster:// or rediss+cluster://', retryable: false };
    }
    // A server at its maxclients answers a new connection with an error and closes it; one that
    // arrives before any command is sent, ioredis reports as "Command queue state error. If you
    // can reproduce this, please report it. Last error: ERR max number of clients reached".
    if (/max number of clients reached/i.test(said)) {
      return { message: 'the server refused the connection: max number of clients reached', hint: "raise the server's maxclients, or find what holds its connections (redis-cli CLIENT LIST)" };
    }
    const credentials = this.target.password !== undefined || this.target.username !== undefined;
    if (/WRONGPASS|invalid password|invalid username-password/i.test(said) || (credentials && /NOAUTH/.test(said))) {
      return { message: 'the server refused the user name or password (WRONGPASS)', hint: 'check the user name and password in the Redis URL: redis://USER:PASSWORD@HOST', retryable: false };
    }
    if (/NOAUTH/.test(said)) return { hint: 'the server asks for a password: redis://:PASSWORD@HOST', retryable: false };
    if (!this.target.tls && !this.state.everReady && /ECONNRESET/.test(said)) {
      return { hint: 'a server that takes TLS only is reached with rediss://' };
    }
    // TLS to a plain server: it takes the hello for a command and waits for the rest, the TLS
    // handshake never ends (ioredis: connect ETIMEDOUT).
    if (this.target.tls && !this.state.everReady && /ETIMEDOUT/.test(said)) {
      return { hint: 'a server without TLS is reached with redis://' };
    }
    // ioredis's words for bytes that are not RESP (an HTTP server answering "HTTP/1.1 400"), which ask for a bug report.
    const notResp = /Protocol error, got "(.{1,4})" as reply type byte/.exec(said);
    if (notResp) {
      return { message: `the server does not answer as Redis does (its first byte ${JSON.stringify(notResp[1])})`, hint: 'check the host and port of the Redis URL: is a Redis server there?', retryable: false };
    }
    return undefined;
  }

  /**
   * `p`, or a STORAGE error once `deadlineMs` has passed: nothing waits longer, whatever the client
   * does. `awaited`: a caller waits for the answer, so the timer holds the process alive: a client
   * that holds no socket open while it never answers (a Redis Cluster whose state is fail) would
   * otherwise let Node drain its event loop and end the command, half done, with status 0. The
   * background connect's own deadline does not hold it (an operation's does when one waits).
   */
  private deadline<T>(what: string, p: Promise<T>, awaited = true): Promise<T> {
    p.catch(() => undefined); // its late failure after the deadline is not unhandled
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      // A cluster that serves not every slot (state fail: a master lost, or nodes never joined) answers nothing.
      const hint = this.isCluster
        ? { hint: 'redis-cli cluster info on a node should say cluster_state:ok' }
        : this.target.tls && !this.state.everReady
          ? // A plain server takes the TLS hello for a command and waits for the rest of it.
            { hint: 'a server without TLS is reached with redis://' }
          : {};
      timer = setTimeout(() => reject(new SmartError('STORAGE', `redis ${this.where}: ${what}: no answer in ${this.deadlineMs} ms`, { retryable: true, ...hint })), this.deadlineMs);
      if (!awaited) timer.unref();
    });
    return Promise.race([p, late])
      .catch((e: unknown) => {
        throw this.error(what, e);
      })
      .finally(() => clearTimeout(timer));
  }

  /** Runs one operation after the connection is up, both within one deadline. */
  private op<T>(what: string, fn: () => Promise<T>): Promise<T> {
    if (this.closed) return Promise.reject(new SmartError('STORAGE', `redis ${this.where}: ${what}: the cache is closed`));
    return this.deadline(
      what,
      (async () => {
        await this.ready;
        const result = await fn();
        this.state.everReady = true;
        return result;
      })(),
    );
  }

  private k(key: string): string {
    return this.keyPrefix + key;
  }

  async get(key: string): Promise<string | undefined> {
    const v = await this.op('GET', () => this.client.get(this.k(key)));
    return v ?? undefined;
  }

  async set(key: string, value: string, ttlSeconds?: number): Promise<void> {
    await this.op('SET', async () => {
      const k = this.k(key);
      if (ttlSeconds === undefined || ttlSeconds === Infinity) await this.client.set(k, value);
      else if (!(ttlSeconds > 0)) await this.client.del(k); // born expired
      else if (Number.isInteger(ttlSeconds)) await this.client.set(k, value, 'EX', ttlSeconds);
      else await this.client.set(k, value, 'PX', Math.ceil(ttlSeconds * 1000));
    });
  }

  async delete(key: string): Promise<void> {
    await this.op('DEL', () => this.client.del(this.k(key)));
  }

  async setIfAbsent(key: string, value: string, ttlSeconds: number): Promise<boolean> {
    const r = await this.op('SET NX', () => this.client.set(this.k(key), value, 'PX', Math.max(1, Math.ceil(ttlSeconds * 1000)), 'NX'));
    return r === 'OK';
  }

  /** Redis's documented lock pattern: the compare and the change in one script, so atomic. */
  async renewIfEqual(key: string, value: string, ttlSeconds: number): Promise<boolean> {
    const ms = Math.max(1, Math.ceil(ttlSeconds * 1000));
    const r = await this.op('EVAL (renew if equal)', () => this.client.eval(RENEW_IF_EQUAL, 1, this.k(key), value, String(ms)));
    return r === 1;
  }

  async deleteIfEqual(key: string, value: string): Promise<boolean> {
    const r = await this.op('EVAL (delete if equal)', () => this.client.eval(DELETE_IF_EQUAL, 1, this.k(key), value));
    return r === 1;
  }

  async getMany(keys: string[]): Promise<(string | undefined)[]> {
    if (keys.length === 0) return [];
    return this.op('GET (pipelined)', async () => {
      const full = keys.map((k) => this.k(k));
      if (!this.isCluster) {
        const values = await this.client.mget(full);
        return values.map((v) => v ?? undefined);
      }
      const out = new Array<string | undefined>(keys.length);
      await this.pipelinedByNode(full.length, (i) => full[i]!, (p, i) => p.get(full[i]!), (i, v) => {
        out[i] = typeof v === 'string' ? v : undefined;
      });
      return out;
    });
  }

  async setMany(entries: MetadataCacheEntry[]): Promise<void> {
    if (entries.length === 0) return;
    await this.op('SET (pipelined)', async () => {
      const full = entries.map((e) => this.k(e.key));
      const add = (p: ChainableCommander, i: number) => {
        const { value, ttlSeconds: ttl } = entries[i]!;
        const k = full[i]!;
        if (ttl === undefined || ttl === Infinity) p.set(k, value);
        else if (!(ttl > 0)) p.del(k);
        else if (Number.isInteger(ttl)) p.set(k, value, 'EX', ttl);
        else p.set(k, value, 'PX', Math.ceil(ttl * 1000));
      };
      if (!this.isCluster) {
        const p = this.client.pipeline();
        for (let i = 0; i < entries.length; i++) add(p, i);
        check(await p.exec());
        return;
      }
      await this.pipelinedByNode(full.length, (i) => full[i]!, add, () => undefined);
    });
  }

  /** One script per key, the compare and the write in it: atomic per key. Pipelined as `setMany` is. */
  async setManyIfUnchanged(entries: MetadataCacheReplacement[]): Promise<boolean[]> {
    if (entries.length === 0) return [];
    return this.op('EVAL (set if unchanged, pipelined)', async () => {
      const full = entries.map((e) => this.k(e.key));
      const add = (p: ChainableCommander, i: number) => {
        const { value, was } = entries[i]!;
        p.eval(SET_IF_UNCHANGED, 1, full[i]!, was === undefined ? '0' : '1', was ?? '', value);
      };
      const written = new Array<boolean>(entries.length).fill(false);
      if (!this.isCluster) {
        const p = this.client.pipeline();
        for (let i = 0; i < entries.length; i++) add(p, i);
        check(await p.exec()).forEach((v, i) => (written[i] = v === 1));
        return written;
      }
      await this.pipelinedByNode(full.length, (i) => full[i]!, add, (i, v) => {
        written[i] = v === 1;
      });
      return written;
    });
  }

  /**
   * On a cluster: one pipeline per master, on that node's own connection, all sent at once. A
   * command the node redirects (MOVED: the slot is served elsewhere now; ASK: the slot is being
   * moved, and the key is not here) is sent again alone through the cluster client, which follows
   * the redirection as for any single command. Not through a cluster pipeline: ioredis sends a
   * whole pipeline again only when every command that failed failed alike and every other one
   * only read, and then sends all of it to the node the first error named, where the keys of other
   * slots are MOVED back and a key the migrating node still holds reads as missing: a cache that
   * failed on every run while a slot moved (a resharding cluster is a healthy one). A redirected
   * command did not run, so sending it again is safe, a SET NX too.
   */
  private async pipelinedByNode(
    n: number,
    keyOf: (i: number) => string,
    add: (p: ChainableCommander, i: number) => void,
    take: (i: number, value: unknown) => void,
  ): Promise<void> {
    const cluster = this.client as Cluster;
    const connections = new Map(cluster.nodes('all').map((node) => [`${node.options.host}:${node.options.port}`, node]));
    const groups = new Map<Redis | undefined, number[]>();
    for (let i = 0; i < n; i++) {
      const master = cluster.slots[clusterKeySlot(keyOf(i))]?.[0];
      const connection = master === undefined ? undefined : connections.get(master);
      let list = groups.get(connection);
      if (!list) groups.set(connection, (list = []));
      list.push(i);
    }
    const alone = async (i: number): Promise<void> => {
      const p = cluster.pipeline();
      add(p, i);
      take(i, check(await p.exec())[0]);
    };
    await Promise.all(
      [...groups].map(async ([connection, list]) => {
        // A slot no known node serves (a node lost, the slots not read again yet): the cluster client finds it.
        if (!connection) return Promise.all(list.map(alone));
        const p = connection.pipeline();
        for (const i of list) add(p, i);
        const results = await p.exec();
        if (!results) throw new Error('pipeline answered nothing');
        const redirected: number[] = [];
        results.forEach(([err, value], j) => {
          if (err && REDIRECTED.test(err.message)) redirected.push(list[j]!);
          else if (err) throw err;
          else take(list[j]!, value);
        });
        await Promise.all(redirected.map(alone));
      }),
    );
  }

  /**
   * Quits (so that writes sent before are done), then disconnects; waits at most ~0.5 s, and
   * leaves no timer or socket behind that would keep the process alive.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const c = this.client;
    if (c.status === 'ready') {
      const quit = c.quit().then(
        () => undefined,
        () => undefined,
      );
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([quit, new Promise<void>((resolve) => (timer = setTimeout(resolve, 500)))]);
      clearTimeout(timer);
    }
    if (c.status !== 'end') c.disconnect();
  }
}

function check(results: PipelineResult): unknown[] {
  if (!results) throw new Error('pipeline answered nothing');
  return results.map(([err, value]) => {
    if (err) throw err;
    return value;
  });
}
