/**
 * One contract for every StorageDriver, run against the filesystem driver (a temp dir) and the S3
 * driver (a real s3rver child process). Locally the S3 half is skipped when s3rver cannot start;
 * under CI that is a failure. S3-only behaviour (key layout, multipart parts, s3rver's quirks,
 * error mapping, the client's checksum settings) follows in its own block.
 */
import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';
import { Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import path from 'node:path';
import v8 from 'node:v8';
import vm from 'node:vm';
import { GetObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { SmartError, isSmartError } from '../../src/errors.js';
import type { StorageDriver } from '../../src/storage/driver.js';
import { FsDriver } from '../../src/storage/fs-driver.js';
import { S3Driver, s3ClientFromEnvironment, type S3DriverOptions } from '../../src/storage/s3-driver.js';
import { freePort } from '../harness/ports.js';
import { startS3, type RunningS3 } from '../harness/s3.js';
import { tempDir } from '../harness/tmp.js';
import { inCI } from '../harness/tools.js';

const MiB = 1024 * 1024;

// ---- the S3 server: started once for the file ------------------------------------------------

let s3: RunningS3 | undefined;
let s3Problem = '';
try {
  s3 = await startS3(await tempDir('smart-s3rver-'));
} catch (e) {
  if (inCI) throw new Error(`CI=true but s3rver does not start: ${(e as Error).message}`);
  s3Problem = (e as Error).message.split('\n')[0] ?? 'unknown';
}
afterAll(async () => {
  await s3?.stop();
});

let s3Client: S3Client | undefined;
let rootCounter = 0;

function s3Driver(options: Partial<S3DriverOptions> = {}): S3Driver {
  if (!s3) throw new Error('s3rver is not running');
  s3Client ??= s3.client();
  return new S3Driver({ bucket: s3.bucket, rootDirectory: `t${++rootCounter}/registry`, client: s3Client, ...options });
}

interface DriverCase {
  label: string;
  available: boolean;
  skipReason: string;
  make(): Promise<StorageDriver>;
  /** For the memory test: the most a streamed write may hold at once (it writes twice that). */
  memoryBound: number;
  /**
   * Whether a reader racing a replacing putContent is checked. s3rver writes an object in place
   * (truncate, then write), so a GetObject racing a PutObject can get a torn response (ECONNRESET
   * mid-body); AWS S3 replaces objects atomically, which s3rver cannot show.
   */
  racingReaders: boolean;
  makeForMemory(): Promise<StorageDriver>;
}

const cases: DriverCase[] = [
  {
    label: 'FsDriver',
    available: true,
    skipReason: '',
    make: async () => new FsDriver(await tempDir('smart-fsdriver-')),
    makeForMemory: async () => new FsDriver(await tempDir('smart-fsdriver-')),
    memoryBound: 64 * MiB,
    racingReaders: true,
  },
  {
    label: 'S3Driver',
    available: s3 !== undefined,
    skipReason: s3Problem,
    make: async () => s3Driver(),
    // 5 MiB parts, 2 in flight: measured 20-35 MiB live at the peak (the parts in flight, the
    // next part being gathered and its concatenation, the SDK holding the last request body).
    makeForMemory: async () => s3Driver({ partSize: 5 * MiB, queueSize: 2 }),
    memoryBound: 64 * MiB,
    racingReaders: false,
  },
];

// ---- helpers ---------------------------------------------------------------------------------

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function readAll(r: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of r) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

async function streamSha(r: Readable): Promise<{ sha: string; size: number }> {
  const h = createHash('sha256');
  let size = 0;
  for await (const c of r) {
    h.update(c as Buffer);
    size += (c as Buffer).length;
  }
  return { sha: h.digest('hex'), size };
}

/**
 * `size` random bytes made chunk by chunk as the consumer pulls them (nothing buffered here), with
 * their sha256 once the generator has run to its end.
 */
function generated(size: number, chunk = 64 * 1024): { source: () => Readable; sha: () => string } {
  const h = createHash('sha256');
  let done = false;
  async function* gen() {
    let left = size;
    while (left > 0) {
      const b = randomBytes(Math.min(chunk, left));
      h.update(b);
      left -= b.length;
      yield b;
    }
    done = true;
  }
  return {
    source: () => Readable.from(gen(), { objectMode: false }),
    sha: () => {
      if (!done) throw new Error('generator not finished');
      return h.digest('hex');
    },
  };
}

/** The SmartError a promise rejects with (fails the test when it resolves or throws something else). */
async function errorOf(p: Promise<unknown>): Promise<SmartError> {
  try {
    await p;
  } catch (e) {
    if (isSmartError(e)) return e;
    throw new Error(`not a SmartError: ${String(e)}`, { cause: e });
  }
  throw new Error('expected an error, got none');
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    if (isSmartError(e)) return e.code;
    return `not a SmartError: ${String(e)}`;
  }
  return 'no error';
}

/** Writes `chunks` into a writer's stream, respecting back-pressure, without ending it. */
async function writeChunks(stream: Writable, chunks: Buffer[]): Promise<void> {
  for (const c of chunks) {
    if (!stream.write(c)) await new Promise<void>((resolve) => stream.once('drain', resolve));
  }
}

function endStream(stream: Writable): Promise<void> {
  return new Promise((resolve, reject) => {
    stream.once('error', reject);
    stream.end(() => resolve());
  });
}

/** A full garbage collection on demand, to measure live memory rather than garbage. */
function gcFunction(): () => void {
  v8.setFlagsFromString('--expose-gc');
  return vm.runInNewContext('gc') as () => void;
}

// ---- the contract ----------------------------------------------------------------------------

describe.each(cases)('$label storage contract', (c) => {
  describe.skipIf(!c.available)(c.available ? 'on a fresh root' : `skipped: s3rver does not start (${c.skipReason})`, () => {
    it('round-trips whole objects with putContent/getContent, empty ones too', async () => {
      const d = await c.make();
      const bytes = randomBytes(3000);
      await d.putContent('/docker/registry/v2/blobs/sha256/ab/abcdef/data', bytes);
      expect(sha256(await d.getContent('/docker/registry/v2/blobs/sha256/ab/abcdef/data'))).toBe(sha256(bytes));
      await d.putContent('/empty', Buffer.alloc(0));
      expect((await d.getContent('/empty')).length).toBe(0);
      expect(await d.stat('/empty')).toEqual({ size: 0, isDirectory: false });
      expect(await readAll(await d.reader('/empty'))).toHaveLength(0);
      // the same path with and without a leading slash or doubled slashes is one object
      expect((await d.getContent('docker//registry/v2/blobs/sha256/ab/abcdef/data')).length).toBe(3000);
    });

    it('replaces an object whole: never a mix of the old and the new bytes', async () => {
      const d = await c.make();
      const long = Buffer.alloc(5000, 'a');
      const short = Buffer.alloc(71, 'b');
      await d.putContent('/r/link', long);
      await d.putContent('/r/link', short);
      expect((await d.getContent('/r/link')).equals(short)).toBe(true);
      expect((await d.stat('/r/link'))?.size).toBe(71);
      if (!c.racingReaders) return;
      // readers racing a writer see one version or the other
      const v1 = Buffer.alloc(64 * 1024, 'x');
      const v2 = Buffer.alloc(32 * 1024, 'y');
      await d.putContent('/r/race', v1);
      for (let round = 0; round < 10; round++) {
        const next = round % 2 === 0 ? v2 : v1;
        const [, ...seen] = await Promise.all([
          d.putContent('/r/race', next),
          d.getContent('/r/race').catch((e: unknown) => e),
          d.getContent('/r/race').catch((e: unknown) => e),
        ]);
        for (const s of seen) {
          if (!Buffer.isBuffer(s)) throw s;
          expect(s.equals(v1) || s.equals(v2)).toBe(true);
        }
      }
    });

    it('answers NOT_FOUND (or nothing) for what is not there', async () => {
      const d = await c.make();
      await d.putContent('/x/present', Buffer.from('1'));
      expect(await codeOf(d.getContent('/x/missing'))).toBe('NOT_FOUND');
      expect(await codeOf(d.reader('/x/missing'))).toBe('NOT_FOUND');
      expect(await codeOf(d.reader('/x/missing', 10))).toBe('NOT_FOUND');
      expect(await codeOf(d.move('/x/missing', '/x/elsewhere'))).toBe('NOT_FOUND');
      const e = await errorOf(d.getContent('/x/missing'));
      expect(e.message).toContain('x/missing');
      expect(e.message).toContain(d.name);
      expect(await d.stat('/x/missing')).toBeUndefined();
      expect(await d.stat('/nowhere/at/all')).toBeUndefined();
      expect(await d.list('/x/missing')).toEqual([]);
      expect(await d.list('/nowhere')).toEqual([]);
      await d.delete('/x/missing');
      await d.delete('/nowhere/at/all');
      expect(await d.stat('/x/elsewhere')).toBeUndefined();
    });

    it('reads from offsets: 0, the middle, the end and past it', async () => {
      const d = await c.make();
      const bytes = randomBytes(3 * MiB + 123);
      await d.putContent('/o/blob', bytes);
      expect((await readAll(await d.reader('/o/blob'))).equals(bytes)).toBe(true);
      expect((await readAll(await d.reader('/o/blob', 0))).equals(bytes)).toBe(true);
      const mid = 1 * MiB + 7;
      expect((await readAll(await d.reader('/o/blob', mid))).equals(bytes.subarray(mid))).toBe(true);
      expect((await readAll(await d.reader('/o/blob', bytes.length - 1))).equals(bytes.subarray(-1))).toBe(true);
      expect(await readAll(await d.reader('/o/blob', bytes.length))).toHaveLength(0);
      expect(await readAll(await d.reader('/o/blob', bytes.length + 100))).toHaveLength(0);
    });

    it('lets a reader be abandoned half-way', async () => {
      const d = await c.make();
      await d.putContent('/o/big', randomBytes(4 * MiB));
      const r = await d.reader('/o/big');
      for await (const chunk of r) {
        expect((chunk as Buffer).length).toBeGreaterThan(0);
        break; // destroys the stream
      }
      expect(r.destroyed).toBe(true);
      // the driver still works afterwards
      expect((await d.getContent('/o/big')).length).toBe(4 * MiB);
    });

    it('writer: nothing is visible before commit, the whole object after it', async () => {
      const d = await c.make();
      const w = await d.writer('/w/blob');
      const chunks = Array.from({ length: 12 }, () => randomBytes(MiB));
      await writeChunks(w.stream, chunks.slice(0, 6));
      expect(await d.stat('/w/blob')).toBeUndefined(); // mid-stream
      await writeChunks(w.stream, chunks.slice(6));
      await endStream(w.stream);
      expect(await d.stat('/w/blob')).toBeUndefined(); // stream finished, not committed
      expect(await codeOf(d.getContent('/w/blob'))).toBe('NOT_FOUND');
      await w.commit();
      const whole = Buffer.concat(chunks);
      expect(await d.stat('/w/blob')).toEqual({ size: whole.length, isDirectory: false });
      expect(sha256(await d.getContent('/w/blob'))).toBe(sha256(whole));
      expect(await d.list('/w')).toEqual(['blob']);
    });

    it('writer: a small object and an empty one commit too', async () => {
      const d = await c.make();
      const w = await d.writer('/w/small');
      await pipeline(Readable.from([Buffer.from('hello '), Buffer.from('world')]), w.stream);
      expect(await d.stat('/w/small')).toBeUndefined();
      await w.commit();
      expect((await d.getContent('/w/small')).toString()).toBe('hello world');
      const e = await d.writer('/w/empty');
      await endStream(e.stream);
      await e.commit();
      expect(await d.stat('/w/empty')).toEqual({ size: 0, isDirectory: false });
    });

    it('writer: commit replaces an existing object', async () => {
      const d = await c.make();
      await d.putContent('/w/obj', Buffer.alloc(10_000, 'o'));
      const w = await d.writer('/w/obj');
      await pipeline(Readable.from([Buffer.from('new')]), w.stream);
      expect((await d.getContent('/w/obj')).length).toBe(10_000); // the old one until commit
      await w.commit();
      expect((await d.getContent('/w/obj')).toString()).toBe('new');
    });

    it('writer: cancel leaves nothing, and an existing object untouched', async () => {
      const d = await c.make();
      // cancelled after the stream finished (more than one S3 part written)
      const w = await d.writer('/c/blob');
      await writeChunks(
        w.stream,
        Array.from({ length: 12 }, () => randomBytes(MiB)),
      );
      await endStream(w.stream);
      await w.cancel();
      expect(await d.stat('/c/blob')).toBeUndefined();
      expect(await d.list('/c')).toEqual([]);

      // cancelled after the stream failed
      await d.putContent('/c/kept', Buffer.from('old'));
      const w2 = await d.writer('/c/kept');
      async function* failing() {
        yield randomBytes(MiB);
        yield randomBytes(MiB);
        throw new Error('source broke');
      }
      await expect(pipeline(Readable.from(failing()), w2.stream)).rejects.toThrow('source broke');
      await w2.cancel();
      expect((await d.getContent('/c/kept')).toString()).toBe('old');
      expect(await d.list('/c')).toEqual(['kept']);

      // cancelled before anything was written
      const w3 = await d.writer('/c/never');
      w3.stream.destroy();
      await w3.cancel();
      expect(await d.stat('/c/never')).toBeUndefined();
    });

    it('writer: a 20 MiB streamed object round-trips byte-identical', async () => {
      const d = await c.make();
      const size = 20 * MiB + 12_345; // several S3 parts, the last one short
      const g = generated(size);
      const w = await d.writer('/big/blob');
      await pipeline(g.source(), w.stream);
      await w.commit();
      expect(await d.stat('/big/blob')).toEqual({ size, isDirectory: false });
      expect(await streamSha(await d.reader('/big/blob'))).toEqual({ sha: g.sha(), size });
      const tail = await streamSha(await d.reader('/big/blob', 8 * MiB));
      expect(tail.size).toBe(size - 8 * MiB);
    });

    it('writer: memory stays bounded while streaming twice the bound', async () => {
      const d = await c.makeForMemory();
      const gc = gcFunction();
      const size = 2 * c.memoryBound;
      const g = generated(size);
      gc();
      const base = process.memoryUsage().arrayBuffers;
      let peak = 0;
      const sample = () => {
        gc();
        peak = Math.max(peak, process.memoryUsage().arrayBuffers - base);
      };
      const timer = setInterval(sample, 50);
      try {
        const w = await d.writer('/mem/blob');
        await pipeline(g.source(), w.stream);
        sample();
        await w.commit();
      } finally {
        clearInterval(timer);
      }
      expect(peak).toBeLessThan(c.memoryBound);
      expect(await streamSha(await d.reader('/mem/blob'))).toEqual({ sha: g.sha(), size });
    });

    it('stats objects and directory prefixes', async () => {
      const d = await c.make();
      await d.putContent('/s/a/b/c', Buffer.from('12345'));
      await d.putContent('/s/xy/z', Buffer.from('1'));
      expect(await d.stat('/s/a/b/c')).toEqual({ size: 5, isDirectory: false });
      expect((await d.stat('/s/a/b'))?.isDirectory).toBe(true);
      expect((await d.stat('/s/a'))?.isDirectory).toBe(true);
      expect((await d.stat('/s'))?.isDirectory).toBe(true);
      expect((await d.stat('/s/a/'))?.isDirectory).toBe(true);
      expect(await d.stat('/s/a/b/c/d')).toBeUndefined();
      expect(await d.stat('/s/x')).toBeUndefined(); // a prefix of a name is not a directory
      expect(await d.stat('/s/a/b/')).toMatchObject({ isDirectory: true });
    });

    it('lists the direct children at every depth', async () => {
      const d = await c.make();
      const keys = [
        '/l/a/1',
        '/l/a/2',
        '/l/b/c/d/e', // every object of b lies three levels deeper (s3rver's delimiter bug)
        '/l/f',
        '/l/g/h/i', // two levels deeper
        '/l/xy/1',
        '/l/a/sub/deep/x',
      ];
      await Promise.all(keys.map((k) => d.putContent(k, Buffer.from(k))));
      expect(await d.list('/l')).toEqual(['a', 'b', 'f', 'g', 'xy']);
      expect(await d.list('/l/')).toEqual(['a', 'b', 'f', 'g', 'xy']);
      expect(await d.list('/l/a')).toEqual(['1', '2', 'sub']);
      expect(await d.list('/l/b')).toEqual(['c']);
      expect(await d.list('/l/b/c')).toEqual(['d']);
      expect(await d.list('/l/b/c/d')).toEqual(['e']);
      expect(await d.list('/l/g')).toEqual(['h']);
      expect(await d.list('/l/f')).toEqual([]); // an object has no children
      expect(await d.list('/l/x')).toEqual([]); // a prefix of a name is not a directory
      expect(await d.list('/')).toEqual(['l']);
    });

    it('walks every object under a path at any depth, with its size, in one pass', async () => {
      const d = await c.make();
      const keys = ['/w/a/1', '/w/a/sub/deep/x', '/w/b/c/d/e', '/w/f', '/wx/not-under'];
      await Promise.all(keys.map((k, i) => d.putContent(k, Buffer.alloc(i))));
      const walked = async (p: string) => {
        const out: string[] = [];
        for await (const e of d.walk!(p)) out.push(`${e.path} ${e.size}`);
        return out.sort();
      };
      expect(await walked('/w')).toEqual(['/w/a/1 0', '/w/a/sub/deep/x 1', '/w/b/c/d/e 2', '/w/f 3']);
      expect(await walked('/w/')).toEqual(await walked('/w'));
      expect(await walked('/w/b/c')).toEqual(['/w/b/c/d/e 2']);
      expect(await walked('/nothing')).toEqual([]);
      expect(await walked('/w/f')).toEqual([]); // an object is not a directory
      expect((await walked('/')).length).toBe(5);
    });

    it('lists and deletes more than 1000 children (paginated listings)', async () => {
      const d = await c.make();
      const names = Array.from({ length: 1100 }, (_, i) => `k${String(i).padStart(4, '0')}`);
      for (let i = 0; i < names.length; i += 100) {
        await Promise.all(names.slice(i, i + 100).map((n) => d.putContent(`/p/${n}`, Buffer.from(n))));
      }
      await Promise.all([0, 1, 2].map((i) => d.putContent(`/p/sub${i}/deep/x`, Buffer.from('x'))));
      await d.putContent('/pq/other', Buffer.from('kept'));
      const listed = await d.list('/p');
      expect(listed).toHaveLength(1103);
      expect(listed).toEqual([...names, 'sub0', 'sub1', 'sub2']);
      await d.delete('/p');
      expect(await d.list('/p')).toEqual([]);
      expect(await d.stat('/p')).toBeUndefined();
      expect((await d.getContent('/pq/other')).toString()).toBe('kept');
    });

    it('moves objects, replacing the target', async () => {
      const d = await c.make();
      await d.putContent('/m/a', Buffer.from('A'));
      await d.putContent('/m/c', Buffer.from('old C'));
      await d.move('/m/a', '/m/b');
      expect(await d.stat('/m/a')).toBeUndefined();
      expect((await d.getContent('/m/b')).toString()).toBe('A');
      await d.move('/m/b', '/m/c');
      expect((await d.getContent('/m/c')).toString()).toBe('A');
      expect(await d.list('/m')).toEqual(['c']);
      // into a new nested path, a streamed object, a name with a space
      const g = generated(6 * MiB);
      const w = await d.writer('/m/_uploads/id-1/data');
      await pipeline(g.source(), w.stream);
      await w.commit();
      await d.move('/m/_uploads/id-1/data', '/m/blobs/sha256/ab/abc def/data');
      expect(await streamSha(await d.reader('/m/blobs/sha256/ab/abc def/data'))).toEqual({ sha: g.sha(), size: 6 * MiB });
      expect(await d.stat('/m/_uploads/id-1/data')).toBeUndefined();
    });

    it('deletes one object, or a whole prefix, and nothing beside it', async () => {
      const d = await c.make();
      const keys = ['/del/a', '/del/ab', '/del/dir/x', '/del/dir/y/z', '/del/dir/y/w/v', '/del/dirx/1'];
      await Promise.all(keys.map((k) => d.putContent(k, Buffer.from(k))));
      await d.delete('/del/a');
      expect(await d.stat('/del/a')).toBeUndefined();
      expect((await d.getContent('/del/ab')).toString()).toBe('/del/ab');
      await d.delete('/del/dir');
      expect(await d.stat('/del/dir')).toBeUndefined();
      expect(await d.stat('/del/dir/y/z')).toBeUndefined();
      expect(await d.list('/del')).toEqual(['ab', 'dirx']);
      await d.delete('/del/dir'); // again: no error when absent
      await d.delete('/');
      expect(await d.list('/')).toEqual([]);
      expect(await d.stat('/del/ab')).toBeUndefined();
    });
  });
});

// ---- S3 only ---------------------------------------------------------------------------------

/** Counts the commands a client sends; optionally replaces what one of them answers. */
function countingClient(
  s: RunningS3,
  intercept?: (command: string, call: () => Promise<unknown>) => Promise<unknown>,
): { client: S3Client; counts: Map<string, number> } {
  const client = s.client();
  const counts = new Map<string, number>();
  client.middlewareStack.add(
    (next, context) => async (args) => {
      const name = context.commandName ?? '?';
      counts.set(name, (counts.get(name) ?? 0) + 1);
      if (intercept) return (await intercept(name, () => next(args))) as Awaited<ReturnType<typeof next>>;
      return next(args);
    },
    { step: 'initialize', name: 'countCommands' },
  );
  return { client, counts };
}

function serverError(): Error {
  return Object.assign(new Error('We encountered an internal error. Please try again.'), {
    name: 'InternalError',
    $fault: 'server',
    $metadata: { httpStatusCode: 500 },
  });
}

describe.skipIf(!s3)('S3Driver against s3rver', () => {
  it('uses the registry S3 driver key names under its root', async () => {
    const raw = s3!.client();
    const d = new S3Driver({ bucket: s3!.bucket, rootDirectory: '/layout-root/', client: raw });
    expect(d.name).toBe(`s3://${s3!.bucket}/layout-root`);
    await d.putContent('/docker/registry/v2/repositories/app/_manifests/tags/v1/current/link', Buffer.from('sha256:x'));
    const got = await raw.send(
      new GetObjectCommand({ Bucket: s3!.bucket, Key: 'layout-root/docker/registry/v2/repositories/app/_manifests/tags/v1/current/link' }),
    );
    expect(await got.Body!.transformToString()).toBe('sha256:x');

    const bare = new S3Driver({ bucket: s3!.bucket, client: raw });
    expect(bare.name).toBe(`s3://${s3!.bucket}`);
    expect(bare.key('/docker/registry/v2/blobs/sha256/ab/abc/data')).toBe('docker/registry/v2/blobs/sha256/ab/abc/data');
    expect(new S3Driver({ bucket: 'b', rootDirectory: 'a/b', client: raw }).key('/x')).toBe('a/b/x');
    expect(() => bare.key('/a/../../etc')).toThrow(SmartError);
  });

  it('streams in multipart parts of the configured size, and a small object in one PutObject', async () => {
    const { client, counts } = countingClient(s3!);
    const d = new S3Driver({ bucket: s3!.bucket, rootDirectory: 'multipart', client });
    const w = await d.writer('/blob');
    await pipeline(generated(20 * MiB).source(), w.stream);
    await w.commit();
    expect(counts.get('CreateMultipartUploadCommand')).toBe(1);
    expect(counts.get('UploadPartCommand')).toBe(3); // 8 + 8 + 4 MiB
    expect(counts.get('CompleteMultipartUploadCommand')).toBe(1);
    expect(counts.get('PutObjectCommand')).toBeUndefined();
    const small = await d.writer('/small');
    await pipeline(Readable.from([Buffer.from('tiny')]), small.stream);
    expect(counts.get('PutObjectCommand')).toBeUndefined(); // not before commit
    await small.commit();
    expect(counts.get('PutObjectCommand')).toBe(1);
  });

  it('cancels a multipart upload although s3rver refuses AbortMultipartUpload (405)', async () => {
    const { client, counts } = countingClient(s3!);
    const d = new S3Driver({ bucket: s3!.bucket, rootDirectory: 'abort', client, partSize: 5 * MiB });
    const w = await d.writer('/blob');
    await writeChunks(
      w.stream,
      Array.from({ length: 16 }, () => randomBytes(MiB)),
    );
    await w.cancel();
    expect(counts.get('UploadPartCommand')).toBeGreaterThanOrEqual(1);
    expect(counts.get('AbortMultipartUploadCommand')).toBe(1);
    expect(counts.get('CompleteMultipartUploadCommand')).toBeUndefined();
    expect(await d.stat('/blob')).toBeUndefined();
    expect(await d.list('/')).toEqual([]);
  });

  it('fails a streamed write at once when the upload fails (no hang, nothing written)', async () => {
    const d = s3Driver({ bucket: 'no-such-bucket', partSize: 5 * MiB });
    const w = await d.writer('/blob');
    const err = await pipeline(generated(40 * MiB).source(), w.stream).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SmartError);
    expect((err as SmartError).code).toBe('STORAGE');
    expect((err as SmartError).hint).toBe('create the bucket or check --s3-endpoint');
    await w.cancel();
    // a small write fails at commit, where its one PutObject goes out
    const w2 = await d.writer('/small');
    await pipeline(Readable.from([Buffer.from('x')]), w2.stream);
    await expect(w2.commit()).rejects.toMatchObject({ code: 'STORAGE' });
  });

  it('stops a streamed write when one part fails, without waiting for the others', async () => {
    let parts = 0;
    const { client, counts } = countingClient(s3!, async (name, call) => {
      if (name === 'UploadPartCommand' && ++parts === 2) throw serverError();
      return call();
    });
    const d = new S3Driver({ bucket: s3!.bucket, rootDirectory: 'partfail', client, partSize: 5 * MiB, queueSize: 2 });
    const w = await d.writer('/blob');
    const err = await errorOf(pipeline(generated(60 * MiB).source(), w.stream));
    expect(err.code).toBe('STORAGE');
    expect(err.retryable).toBe(true);
    expect(err.message).toContain(`s3://${s3!.bucket}/partfail/blob`);
    expect(err.message).toContain('HTTP 500');
    await w.cancel();
    expect(counts.get('UploadPartCommand')).toBeLessThan(12); // 60 MiB would be 12 parts
    expect(counts.get('CompleteMultipartUploadCommand')).toBeUndefined();
    expect(await d.stat('/blob')).toBeUndefined();
  });

  it('verifies and retries when DeleteObjects answers 500 although it deleted', async () => {
    let failed = 0;
    const { client, counts } = countingClient(s3!, async (name, call) => {
      const out = await call();
      if (name === 'DeleteObjectsCommand' && failed++ === 0) throw serverError(); // s3rver's race
      return out;
    });
    const d = new S3Driver({ bucket: s3!.bucket, rootDirectory: 'del500', client });
    await Promise.all(Array.from({ length: 30 }, (_, i) => d.putContent(`/dir/${i}/data`, Buffer.from(String(i)))));
    await d.delete('/dir');
    expect(await d.list('/')).toEqual([]);
    expect(counts.get('DeleteObjectsCommand')).toBe(1); // the listing showed everything gone: no retry
    expect(counts.get('DeleteObjectCommand')).toBeUndefined();
  });

  it('falls back to single DeleteObject calls when DeleteObjects keeps failing', async () => {
    const { client, counts } = countingClient(s3!, async (name, call) => {
      if (name === 'DeleteObjectsCommand') throw serverError();
      return call();
    });
    const d = new S3Driver({ bucket: s3!.bucket, rootDirectory: 'delfallback', client });
    await Promise.all(Array.from({ length: 7 }, (_, i) => d.putContent(`/dir/${i}/data`, Buffer.from(String(i)))));
    await d.delete('/dir');
    expect(await d.list('/')).toEqual([]);
    expect(counts.get('DeleteObjectsCommand')).toBe(2); // the first try and one retry
    expect(counts.get('DeleteObjectCommand')).toBe(7);
  });

  it('refuses to move an object over 5 GiB (s3rver has no UploadPartCopy)', async () => {
    const { client } = countingClient(s3!, async (name, call) => {
      const out = (await call()) as { output: { ContentLength?: number } };
      if (name === 'HeadObjectCommand') return { ...out, output: { ...out.output, ContentLength: 6 * 1024 * MiB } };
      return out;
    });
    const d = new S3Driver({ bucket: s3!.bucket, rootDirectory: 'bigmove', client });
    await d.putContent('/a', Buffer.from('pretend this is 6 GiB'));
    const err = await errorOf(d.move('/a', '/b'));
    expect(err.code).toBe('STORAGE');
    expect(err.message).toMatch(/5 GiB.*UploadPartCopy/);
    expect(await d.stat('/a')).toMatchObject({ isDirectory: false });
  });

  it('maps S3 errors: missing bucket, unreachable endpoint; never prints credentials', async () => {
    const noBucket = s3Driver({ bucket: 'no-such-bucket' });
    const calls = [() => noBucket.getContent('/x'), () => noBucket.list('/'), () => noBucket.stat('/x'), () => noBucket.putContent('/x', Buffer.from('1'))];
    for (const call of calls) {
      const e = await errorOf(call());
      expect(e.code).toBe('STORAGE');
      expect(e.message).toContain('s3://no-such-bucket/');
      expect(e.message).toContain('NoSuchBucket');
      expect(e.hint).toBe('create the bucket or check --s3-endpoint');
    }

    const port = await freePort(); // nothing listens there
    const secret = 'do-not-print-this-secret';
    const unreachable = new S3Driver({
      bucket: 'b',
      rootDirectory: 'r',
      endpoint: `http://127.0.0.1:${port}`,
      credentials: { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: secret },
    });
    try {
      const e = await errorOf(unreachable.getContent('/k'));
      expect(e.code).toBe('STORAGE');
      expect(e.message).toContain(`cannot reach the S3 endpoint http://127.0.0.1:${port}`);
      expect(e.message).toContain('s3://b/r/k');
      expect(e.retryable).toBe(true);
      expect(Object.getOwnPropertyDescriptor(e, 'retryable')?.value).toBe(true);
      expect(`${e.message} ${e.hint ?? ''} ${e.stack ?? ''}`).not.toContain(secret);
    } finally {
      unreachable.destroy();
    }
  });

  it('an https:// endpoint that answers in plain HTTP is said to, with http:// as the fix, not in OpenSSL\'s words', async () => {
    const tls = new S3Driver({
      bucket: s3!.bucket,
      rootDirectory: 'r',
      endpoint: `https://127.0.0.1:${s3!.port}`,
      credentials: { accessKeyId: s3!.accessKeyId, secretAccessKey: s3!.secretAccessKey },
    });
    try {
      const e = await errorOf(tls.getContent('/k'));
      expect(e.message).toBe(`cannot reach the S3 endpoint https://127.0.0.1:${s3!.port}: the server answered in plain HTTP, not TLS (EPROTO) to read s3://${s3!.bucket}/r/k`);
      expect(e.hint).toBe('name an endpoint without TLS with http://, in --s3-endpoint or AWS_ENDPOINT_URL_S3');
    } finally {
      tls.destroy();
    }
  });

  it('s3ClientFromEnvironment: endpoint and path style from the environment; a stream PutObject reads back identical', async () => {
    for (const [k, v] of Object.entries(s3!.env)) vi.stubEnv(k, v);
    vi.stubEnv('AWS_ENDPOINT_URL', '');
    try {
      const client = s3ClientFromEnvironment({});
      try {
        expect(client.config.forcePathStyle).toBe(true);
        expect(await client.config.requestChecksumCalculation()).toBe('WHEN_REQUIRED');
        expect(await client.config.responseChecksumValidation()).toBe('WHEN_REQUIRED');
        expect(await client.config.region()).toBe('us-east-1');
        const bytes = randomBytes(3 * MiB + 17);
        const chunks = Array.from({ length: 4 }, (_, i) => bytes.subarray(i * (bytes.length / 4 | 0), i === 3 ? bytes.length : (i + 1) * (bytes.length / 4 | 0)));
        await client.send(
          new PutObjectCommand({ Bucket: s3!.bucket, Key: 'checksums/stream-body', Body: Readable.from(chunks), ContentLength: bytes.length }),
        );
        const got = await client.send(new GetObjectCommand({ Bucket: s3!.bucket, Key: 'checksums/stream-body' }));
        const back = Buffer.from(await got.Body!.transformToByteArray());
        expect(back.length).toBe(bytes.length);
        expect(sha256(back)).toBe(sha256(bytes));
        const listed = await client.send(new ListObjectsV2Command({ Bucket: s3!.bucket, Prefix: 'checksums/' }));
        expect(listed.Contents?.map((o) => [o.Key, o.Size])).toEqual([['checksums/stream-body', bytes.length]]);

        // The same PutObject through a client with the SDK's default checksum settings: it goes
        // out aws-chunked and s3rver stores the chunk framing inside the object. This is what the
        // two settings prevent; if it ever reads back identical, the note in components.md is stale.
        const plain = new S3Client({
          endpoint: s3!.endpoint,
          region: 'us-east-1',
          forcePathStyle: true,
          credentials: { accessKeyId: s3!.accessKeyId, secretAccessKey: s3!.secretAccessKey },
        });
        try {
          await plain.send(
            new PutObjectCommand({ Bucket: s3!.bucket, Key: 'checksums/default-settings', Body: Readable.from(chunks), ContentLength: bytes.length }),
          );
          const bad = await client.send(new GetObjectCommand({ Bucket: s3!.bucket, Key: 'checksums/default-settings' }));
          const badBytes = Buffer.from(await bad.Body!.transformToByteArray());
          expect(sha256(badBytes)).not.toBe(sha256(bytes));
        } finally {
          plain.destroy();
        }
      } finally {
        client.destroy();
      }
    } finally {
      vi.unstubAllEnvs();
    }
  });

  it('s3ClientFromEnvironment: overrides win; no endpoint means virtual-host style', async () => {
    vi.stubEnv('AWS_ENDPOINT_URL_S3', '');
    vi.stubEnv('AWS_ENDPOINT_URL', '');
    vi.stubEnv('AWS_REGION', '');
    vi.stubEnv('AWS_DEFAULT_REGION', 'eu-west-3');
    try {
      const aws = s3ClientFromEnvironment({});
      expect(aws.config.forcePathStyle).toBe(false);
      expect(await aws.config.region()).toBe('eu-west-3');
      aws.destroy();
      const custom = s3ClientFromEnvironment({ endpoint: s3!.endpoint, region: 'us-east-1' });
      expect(custom.config.forcePathStyle).toBe(true);
      expect(await custom.config.region()).toBe('us-east-1');
      custom.destroy();
    } finally {
      vi.unstubAllEnvs();
    }
  });
});

describe('the S3 endpoint', () => {
  const refusal = (endpoint: string): SmartError => {
    try {
      s3ClientFromEnvironment({ endpoint });
    } catch (e) {
      if (isSmartError(e)) return e;
      throw e;
    }
    throw new Error(`${endpoint} was taken`);
  };

  it('is refused as a usage error (exit 2) in one line when it is no http(s) URL, and its credentials are never shown', () => {
    const hint = 'name the endpoint as http://HOST:PORT or https://HOST';
    expect([refusal('not a url')].map((e) => [e.code, e.exitCode, e.message, e.hint])).toEqual([['USAGE', 2, '--s3-endpoint "not a url" is not a URL', hint]]);
    expect(refusal('ftp://127.0.0.1:9000').message).toBe('--s3-endpoint "ftp://127.0.0.1:9000" is not http:// or https://');
    for (const endpoint of ['http://AKIAIOSFODNN7EXAMPLE:hunter2secret@127.0.0.1:9000', 'https://hunter2secret@s3.example.com', 'AKIAIOSFODNN7EXAMPLE:hunter2secret@host']) {
      const e = refusal(endpoint);
      expect(e.code).toBe('USAGE');
      expect(`${e.message} ${e.hint} ${e.input}`).not.toMatch(/hunter2|AKIA/);
    }
    expect(refusal('http://AKIA:secret@127.0.0.1:9000').message).toBe('--s3-endpoint holds credentials (USER:PASSWORD@ before the host), which are not sent from there');
    vi.stubEnv('AWS_ENDPOINT_URL_S3', 'ftp://x');
    try {
      expect(() => s3ClientFromEnvironment()).toThrow('AWS_ENDPOINT_URL_S3 "ftp://x" is not http:// or https://');
    } finally {
      vi.unstubAllEnvs();
    }
    expect(() => s3ClientFromEnvironment({ endpoint: 'http://127.0.0.1:9000/root' }).destroy()).not.toThrow();
  });

  it('AWS_MAX_ATTEMPTS that is no count is refused as a usage error, not taken for the default', () => {
    for (const bad of ['abc', '0', '-1', '2.5']) {
      vi.stubEnv('AWS_MAX_ATTEMPTS', bad);
      try {
        expect(() => s3ClientFromEnvironment({ endpoint: 'http://127.0.0.1:9000' }), bad).toThrow(`AWS_MAX_ATTEMPTS must be a whole number of attempts, 1 or more, not "${bad}"`);
      } finally {
        vi.unstubAllEnvs();
      }
    }
    vi.stubEnv('AWS_MAX_ATTEMPTS', '3');
    try {
      expect(() => s3ClientFromEnvironment({ endpoint: 'http://127.0.0.1:9000' }).destroy()).not.toThrow();
    } finally {
      vi.unstubAllEnvs();
    }
  });
});

describe('S3 failures that are not the endpoint', () => {
  it('a proxy that cannot be reached is named, not the endpoint behind it; a profile with no credentials is named', async () => {
    const port = await freePort(); // nothing listens there
    vi.stubEnv('HTTP_PROXY', `http://user:proxy-s3cret@127.0.0.1:${port}`);
    vi.stubEnv('NO_PROXY', '');
    vi.stubEnv('AWS_MAX_ATTEMPTS', '1');
    try {
      const behind = new S3Driver({ bucket: 'b', rootDirectory: 'r', endpoint: 'http://s3.example.com:9000', credentials: { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'x' } });
      try {
        const e = await errorOf(behind.getContent('/k'));
        expect(e.message).toBe(`cannot reach the S3 endpoint http://s3.example.com:9000 to read s3://b/r/k: ECONNREFUSED through the proxy http://127.0.0.1:${port}: connection refused`);
        expect(e.hint).toBe('check HTTPS_PROXY / HTTP_PROXY and that the proxy runs, or name the endpoint in NO_PROXY');
        expect(e.message).not.toContain('proxy-s3cret');
      } finally {
        behind.destroy();
      }
    } finally {
      vi.unstubAllEnvs();
    }

    const none = path.join(await tempDir(), 'none');
    for (const [k, v] of Object.entries({ AWS_PROFILE: 'nosuchprofile', AWS_CONFIG_FILE: none, AWS_SHARED_CREDENTIALS_FILE: none, AWS_ACCESS_KEY_ID: '', AWS_SECRET_ACCESS_KEY: '', AWS_MAX_ATTEMPTS: '1' })) vi.stubEnv(k, v);
    try {
      const noKeys = new S3Driver({ bucket: 'b', rootDirectory: 'r', endpoint: `http://127.0.0.1:${port}` });
      try {
        const e = await errorOf(noKeys.getContent('/k'));
        expect(e.message).toBe('cannot read s3://b/r/k: no AWS credentials found for the profile "nosuchprofile" (AWS_PROFILE)');
        expect(e.hint).toMatch(/the profile "nosuchprofile" is in ~\/\.aws\/config or ~\/\.aws\/credentials/);
      } finally {
        noKeys.destroy();
      }
    } finally {
      vi.unstubAllEnvs();
    }
  });
});

describe('S3 requests that stall', () => {
  // A stalled request was sent again by the SDK, silently, inside each attempt of the loop above
  // it that sent the step again: a frozen endpoint cost the product of both, each warning naming
  // one stall timeout (s3-store.test.ts freezes a real s3rver).
  it('is sent again by the client, AWS_MAX_ATTEMPTS times in all, each time told; its failure is then final for the loops above (still retryable for a later run)', async () => {
    const requests: string[] = [];
    const sockets = new Set<net.Socket>();
    // Takes every connection and request, and answers nothing.
    const server = net.createServer((socket) => {
      sockets.add(socket);
      socket.on('error', () => undefined);
      socket.on('data', (d: Buffer) => {
        const line = d.toString('latin1').split('\r\n')[0]!;
        if (/^[A-Z]+ \S+ HTTP\/1\.1$/.test(line)) requests.push(line);
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as net.AddressInfo;
    vi.stubEnv('AWS_MAX_ATTEMPTS', '3');
    const told: string[] = [];
    const d = new S3Driver({
      bucket: 'b',
      rootDirectory: 'r',
      endpoint: `http://127.0.0.1:${port}`,
      credentials: { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'x' },
      stallTimeoutMs: 200,
      onRetry: (m) => told.push(m),
    });
    try {
      const e = await errorOf(d.stat('/k'));
      expect(requests).toEqual(['HEAD /b/r/k HTTP/1.1', 'HEAD /b/r/k HTTP/1.1', 'HEAD /b/r/k HTTP/1.1']);
      expect(told).toEqual([
        'cannot stat s3://b/r/k: no data for 0.2 s (stalled); sending it again in 0.3 s (attempt 2 of 3)',
        'cannot stat s3://b/r/k: no data for 0.2 s (stalled); sending it again in 0.6 s (attempt 3 of 3)',
      ]);
      expect([e.code, e.message, e.retryable, e.attemptsSpent]).toEqual(['STORAGE', 'cannot stat s3://b/r/k: no data for 0.2 s on each of 3 attempts (stalled)', true, true]);
    } finally {
      vi.unstubAllEnvs();
      d.destroy();
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    }
  });
});
