/**
 * Parallel gzip: round trips with every engine present, bytes independent of concurrency and of
 * input chunking, acceptance by other gzip readers, bounded memory under a slow reader, diff ids,
 * errors, the window shared by every stream, the native libdeflate addon, and the igzip
 * decompressor. igzip and libdeflate-gzip are optional for users (an engine absent here is
 * skipped); the native addon is required under CI, which installs what it builds with.
 */
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import v8 from 'node:v8';
import vm from 'node:vm';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { createGunzip, gunzipSync, gzipSync } from 'node:zlib';
import { describe, expect, it, vi } from 'vitest';
import type { Digest } from '../../src/oci/digest.js';
import type { VerifyExpectation } from '../../src/pipeline/digest-stream.js';
import { verifiedStream } from '../../src/pipeline/digest-stream.js';
import { markLocalFile } from '../../src/pipeline/local-file.js';
import { decompress } from '../../src/pipeline/compression.js';
import { IN_PROCESS_GUNZIP_BELOW, gunzipEngineFor, layerFromDescriptor } from '../../src/pipeline/layers.js';
import { DecodeSlots } from '../../src/pipeline/native-gunzip.js';
import type { ImageSource } from '../../src/oci/image.js';
import {
  DEFAULT_PROCESS_BLOCK_SIZE,
  type GzipEngine,
  ParallelGzip,
  availableGzipEngines,
  chooseGunzip,
  chooseGzipEngine,
  findGzipEngine,
  gzipLayerStreamParallel,
  igzipDecompressor,
  liveChildProcessCount,
  parallelGzipStream,
  sharedWindowInUse,
  zlibEngine,
} from '../../src/pipeline/parallel-gzip.js';
import { nativeBinding, nativeLoadError } from '../../src/pipeline/native.js';
import { markedRange } from '../harness/file-range.js';
import { inCI, onPath } from '../harness/tools.js';

const igzipProgram = await findGzipEngine('igzip', 'program');
// The best of each engine, and the igzip program beside igzip in this process (ISA-L in the addon).
const engines: GzipEngine[] = await availableGzipEngines();
if (igzipProgram && engines.some((e) => e.name === 'igzip' && e.program === null)) engines.splice(-1, 0, igzipProgram);
const igzipGunzip = igzipProgram ? await chooseGunzip('igzip') : null;
// ISA-L's inflate in the addon, on the pool (CI builds the addon with it).
const isalGunzip = nativeBinding()?.gunzipCreate ? await chooseGunzip('isal') : null;
const gunzipEngines = [await chooseGunzip('zlib'), ...(igzipGunzip ? [igzipGunzip] : []), ...(isalGunzip ? [isalGunzip] : [])];
/** The engines that read a local blob file themselves. */
const fileGunzipEngines = gunzipEngines.filter((g) => g.name !== 'zlib');

const KiB = 1024;
const MiB = 1024 * KiB;
const BLOCK = 64 * KiB;

/** Half random, half repetitive text: compresses about 2:1, like a real layer. */
function mixed(n: number, seed = 1): Buffer {
  const out = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  const text = Buffer.from('the quick brown fox jumps over the lazy dog; lorem ipsum dolor sit amet. ');
  for (let i = 0; i < n; i += 4096) {
    const end = Math.min(n, i + 4096);
    if ((i / 4096) % 2 === 0) {
      for (let j = i; j < end; j++) {
        x ^= x << 13;
        x ^= x >>> 17;
        x ^= x << 5;
        out[j] = x & 0xff;
      }
    } else for (let j = i; j < end; j++) out[j] = text[j % text.length]!;
  }
  return out;
}

function chunksOf(data: Buffer, size: number): Buffer[] {
  const chunks: Buffer[] = [];
  for (let i = 0; i < data.length; i += size) chunks.push(data.subarray(i, i + size));
  return chunks;
}

async function collect(s: AsyncIterable<unknown>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of s) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

async function compress(data: Buffer, options: ConstructorParameters<typeof ParallelGzip>[0], chunkSize = 7777): Promise<Buffer> {
  const gz = parallelGzipStream(options);
  const chunks: Buffer[] = [];
  await pipeline(
    Readable.from(chunksOf(data, chunkSize)),
    gz,
    new Writable({
      write(c: Buffer, _e, cb) {
        chunks.push(c);
        cb();
      },
    }),
  );
  return Buffer.concat(chunks);
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** Compressor processes that are children of this process (Linux /proc), by command name. */
function compressorChildren(): string[] {
  if (!fs.existsSync('/proc/self/stat')) return [];
  const names: string[] = [];
  for (const pid of fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === process.pid && /igzip|libdeflate/.test(comm)) names.push(`${pid} ${comm}`);
    } catch {
      // gone
    }
  }
  return names;
}

async function noChildrenLeft(): Promise<void> {
  for (let i = 0; i < 100 && (liveChildProcessCount() > 0 || compressorChildren().length > 0); i++) await sleep(20);
  expect(liveChildProcessCount()).toBe(0);
  expect(compressorChildren()).toEqual([]);
}

describe('engines', () => {
  it('always has zlib; auto picks a present engine; a named absent one or a bad name is an error', async () => {
    expect(engines.map((e) => e.name)).toContain('zlib');
    const auto = await chooseGzipEngine();
    expect(engines.map((e) => e.name)).toContain(auto.name);
    expect((await chooseGzipEngine('zlib')).name).toBe('zlib');
    for (const name of ['igzip', 'libdeflate'] as const) {
      if (engines.some((e) => e.name === name)) expect((await chooseGzipEngine(name)).name).toBe(name);
      else await expect(chooseGzipEngine(name)).rejects.toMatchObject({ code: 'UNSUPPORTED' });
    }
    await expect(chooseGzipEngine('brotli' as never)).rejects.toMatchObject({ code: 'USAGE' });
    console.log(`gzip engines here: ${engines.map((e) => e.name).join(', ')}; gunzip: ${gunzipEngines.map((e) => e.name).join(', ')}`);
  });

  it('rejects levels, block sizes and concurrencies out of range', () => {
    expect(() => parallelGzipStream({ engine: zlibEngine, level: 10 })).toThrow(/level 10 is out of range/);
    expect(() => parallelGzipStream({ engine: zlibEngine, level: 1, blockSize: 1000 })).toThrow(/block size/);
    expect(() => parallelGzipStream({ engine: zlibEngine, level: 1, concurrency: 0 })).toThrow(/concurrency/);
  });
});

describe.each(engines.map((e) => [`${e.name} (${e.program ? 'program' : 'in-process'})`, e] as const))('parallel gzip with %s', (_name, engine) => {
  const level = engine.defaultLevel;
  // The igzip program was caught making other bytes for the same 1 MiB block (369,216 once,
  // 369,215 in every run by hand), the content right each time: its output is checked for
  // content, not bytes. It is never chosen by default. igzip in this process compresses each
  // block in one call, and must be reproducible.
  const reproducible = engine.name !== 'igzip' || engine.program === null;
  const sizes = [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK, Math.floor(3.5 * BLOCK)];

  it('round-trips random, compressible and empty inputs around block boundaries', async () => {
    for (const size of sizes) {
      for (const data of [randomBytes(size), mixed(size, size + 1), Buffer.alloc(size, 'a')]) {
        const gz = await compress(data, { engine, level, blockSize: BLOCK, concurrency: 2 });
        expect(gz.subarray(0, 2)).toEqual(Buffer.from([0x1f, 0x8b]));
        expect(gunzipSync(gz).equals(data), `size ${size}`).toBe(true);
      }
    }
  });

  it('gives the same bytes for concurrency 1, 2 and 8 and for any input chunking', async () => {
    const data = mixed(Math.floor(3.5 * BLOCK) + 123, 7);
    const outputs = [
      await compress(data, { engine, level, blockSize: BLOCK, concurrency: 1 }),
      await compress(data, { engine, level, blockSize: BLOCK, concurrency: 2 }),
      await compress(data, { engine, level, blockSize: BLOCK, concurrency: 8 }),
      await compress(data, { engine, level, blockSize: BLOCK, concurrency: 8 }, 13),
      await compress(data, { engine, level, blockSize: BLOCK, concurrency: 3 }, data.length),
      await compress(data, { engine, level, blockSize: BLOCK, concurrency: 2 }, BLOCK),
    ];
    for (const o of outputs) {
      expect(gunzipSync(o).equals(data)).toBe(true);
      if (reproducible) expect(sha(o)).toBe(sha(outputs[0]!));
    }
  });

  it('gives the same bytes for concurrency 1, 2 and 8 at the default block size', async () => {
    const data = mixed(Math.floor(2.5 * engine.defaultBlockSize), 11);
    const outputs = [];
    for (const concurrency of [1, 2, 8]) outputs.push(await compress(data, { engine, concurrency }, 256 * KiB));
    for (const o of outputs) expect(gunzipSync(o).equals(data)).toBe(true);
    if (reproducible) expect(new Set(outputs.map(sha)).size).toBe(1);
  });

  it('is accepted by gzip -t, gzip -d, pigz -d, busybox gunzip and the gunzip streams', async () => {
    const data = mixed(Math.floor(3.5 * BLOCK), 3);
    const gz = await compress(data, { engine, level, blockSize: BLOCK });
    const readers: [string, string[]][] = [
      ['gzip', ['-dc']],
      ['pigz', ['-dc']],
      ['busybox', ['gunzip', '-c']],
      ['igzip', ['-dc']],
    ];
    let tried = 0;
    if (onPath('gzip')) expect(spawnSync('gzip', ['-t'], { input: gz }).status).toBe(0);
    for (const [cmd, args] of readers) {
      if (!onPath(cmd)) continue;
      tried++;
      const r = spawnSync(cmd, args, { input: gz, maxBuffer: 64 * MiB });
      expect(r.status, `${cmd} ${args.join(' ')}: ${r.stderr}`).toBe(0);
      expect(sha(r.stdout), `${cmd} ${args.join(' ')}`).toBe(sha(data));
    }
    for (const g of gunzipEngines) expect(sha(await collect(decompress(Readable.from([gz]), 'gzip', 'layer x', { gunzip: g })))).toBe(sha(data));
    expect(tried).toBeGreaterThan(0);
  });

  it('holds at most the window while a 200 MB stream meets a slow reader', async () => {
    const total = 200 * MiB;
    const blockSize = engine.name === 'zlib' ? 1 * MiB : 4 * MiB;
    const concurrency = 2;
    const chunk = 64 * KiB;
    const pattern = mixed(4 * MiB + chunk, 5);
    const chunkAt = (offset: number) => {
      const at = (offset / chunk) % 64;
      const c = Buffer.from(pattern.subarray(at * chunk, at * chunk + chunk));
      c.writeUInt32LE(offset >>> 0, 0); // no two blocks alike
      return c;
    };
    const expected = createHash('sha256');
    let produced = 0;
    const source = new Readable({
      highWaterMark: chunk,
      read() {
        if (produced >= total) {
          this.push(null);
          return;
        }
        const c = chunkAt(produced);
        expected.update(c);
        produced += c.length;
        this.push(c);
      },
    });
    const gz = new ParallelGzip({ engine, level: Math.max(1, engine.minLevel), blockSize, concurrency });
    // The output is checked as it goes, without keeping 200 MB.
    const inflater = createGunzip();
    const got = createHash('sha256');
    inflater.on('data', (d: Buffer) => got.update(d));
    const inflated = new Promise((resolve, reject) => inflater.once('end', resolve).once('error', reject));
    let maxReadable = 0;
    let maxWritable = 0;
    let maxAhead = 0;
    let maxDuringPause = 0;
    let pauses = 0;
    let received = 0;
    const slowReader = new Writable({
      highWaterMark: 16 * KiB,
      write(c: Buffer, _e, cb) {
        inflater.write(c);
        received += c.length;
        maxReadable = Math.max(maxReadable, gz.readableLength);
        maxWritable = Math.max(maxWritable, gz.writableLength);
        maxAhead = Math.max(maxAhead, produced - gz.stats.bytesIn);
        // Every ~4 MB of output the reader stops for 100 ms: meanwhile the producer must stall.
        if (Math.floor(received / (4 * MiB)) > pauses) {
          pauses++;
          const before = produced;
          setTimeout(() => {
            maxDuringPause = Math.max(maxDuringPause, produced - before);
            cb();
          }, 100);
        } else cb();
      },
      final(cb) {
        inflater.end();
        cb();
      },
    });
    await pipeline(source, gz, slowReader);
    await inflated;
    expect(got.digest('hex')).toBe(expected.digest('hex'));
    expect(pauses).toBeGreaterThan(1);
    const st = gz.stats;
    expect(st.bytesIn).toBe(total);
    expect(st.maxBlocksInFlight).toBeLessThanOrEqual(concurrency);
    // concurrency blocks in flight + the block being filled + one incoming chunk.
    expect(st.maxHeldInput).toBeLessThanOrEqual((concurrency + 1) * blockSize + chunk);
    expect(st.maxBufferedInput).toBeLessThanOrEqual(blockSize + chunk);
    expect(maxReadable).toBeLessThanOrEqual(gz.readableHighWaterMark + blockSize + 64 * KiB);
    expect(maxWritable).toBeLessThanOrEqual(gz.writableHighWaterMark + chunk);
    expect(maxAhead).toBeLessThanOrEqual(gz.writableHighWaterMark + source.readableHighWaterMark + 2 * chunk);
    // While the reader sleeps, at most the free part of the window fills.
    expect(maxDuringPause).toBeLessThanOrEqual((concurrency + 1) * blockSize + gz.writableHighWaterMark + 3 * chunk);
    await noChildrenLeft();
  });

  it('reports the diff id and size of the input, and its engine and level', async () => {
    const data = mixed(Math.floor(3.5 * BLOCK) + 5, 9);
    const layer = gzipLayerStreamParallel(Readable.from(chunksOf(data, 10_000)), { engine, blockSize: BLOCK });
    const gz = await collect(layer.stream);
    expect(gunzipSync(gz).equals(data)).toBe(true);
    expect(layer.diffId()).toBe(`sha256:${sha(data)}`);
    expect(layer.uncompressedSize()).toBe(data.length);
    expect(layer.engine).toBe(engine.name);
    expect(layer.level).toBe(engine.defaultLevel);
    expect(layer.blockSize).toBe(BLOCK);
  });

  describe('a marked file range, read by the compressor itself', () => {
    const rangeOf = (data: Buffer, offset: number, checks?: VerifyExpectation[]) => markedRange(data, offset, mixed, checks);

    it('makes the bytes the stream would, reads in whole blocks, and reports the diff id and size', async () => {
      for (const size of [0, 5, BLOCK, 3 * BLOCK, Math.floor(3.5 * BLOCK) + 5]) {
        const data = mixed(size, 21 + size);
        const r = rangeOf(data, 1536);
        try {
          const fromStream = await compress(data, { engine, blockSize: BLOCK, concurrency: 2 });
          const layer = gzipLayerStreamParallel(r.tar, { engine, blockSize: BLOCK, concurrency: 2 });
          const gz = await collect(layer.stream);
          expect(sha(gz), `size ${size}`).toBe(sha(fromStream));
          expect(gunzipSync(gz).equals(data)).toBe(true);
          expect(layer.diffId()).toBe(`sha256:${sha(data)}`);
          expect(layer.uncompressedSize()).toBe(size);
          // The marked stream was never read through, and is closed with the compressor.
          expect(r.tar.readableDidRead).toBe(false);
          await vi.waitFor(() => expect(r.tar.destroyed).toBe(true));
        } finally {
          r.cleanup();
        }
      }
    });

    it('checks the range against every digest the mark carries before its last block, and fails as VerifyStream would', async () => {
      const data = mixed(3 * BLOCK + 9, 5);
      const good = { digest: `sha256:${sha(data)}` as Digest, size: data.length, what: 'layer x of docker-archive:a.tar' };
      const bad = { digest: `sha256:${'0'.repeat(64)}` as Digest, what: 'layer y of docker-archive:a.tar' };
      const r = rangeOf(data, 512, [good, bad]);
      try {
        const layer = gzipLayerStreamParallel(r.tar, { engine, blockSize: BLOCK });
        await expect(collect(layer.stream)).rejects.toMatchObject({ code: 'DIGEST_MISMATCH', message: expect.stringMatching(/^layer y of docker-archive:a\.tar: content hashes to sha256:/) });
      } finally {
        r.cleanup();
      }
      // Found bad before anyone reads it (a small layer, a consumer that attaches late): the error waits for the consumer.
      const r1 = rangeOf(data, 512, [bad]);
      try {
        const layer = gzipLayerStreamParallel(r1.tar, { engine, blockSize: BLOCK });
        await vi.waitFor(() => expect(layer.stream.destroyed).toBe(true));
        await expect(collect(layer.stream)).rejects.toMatchObject({ code: 'DIGEST_MISMATCH' });
      } finally {
        r1.cleanup();
      }
      // A diff id the caller says it verified is checked too.
      const r2 = rangeOf(data, 512);
      try {
        const layer = gzipLayerStreamParallel(r2.tar, { engine, blockSize: BLOCK, verifiedDiffId: bad.digest });
        await expect(collect(layer.stream)).rejects.toMatchObject({ code: 'DIGEST_MISMATCH' });
      } finally {
        r2.cleanup();
      }
    });

    it('fails a file cut short under it (truncated), and stops when the marked stream is destroyed', async () => {
      const data = mixed(4 * BLOCK, 6);
      const r = rangeOf(data, 0, [{ digest: `sha256:${sha(data)}` as Digest, size: data.length, what: 'layer z' }]);
      try {
        fs.truncateSync(r.file, 2 * BLOCK + 100);
        const layer = gzipLayerStreamParallel(r.tar, { engine, blockSize: BLOCK });
        await expect(collect(layer.stream)).rejects.toMatchObject({ code: 'SIZE_MISMATCH', message: expect.stringMatching(/^layer z: \d+ bytes, but its descriptor declares \d+ \(truncated\?\)/) });
      } finally {
        r.cleanup();
      }
      const big = mixed(16 * MiB, 8);
      const r2 = rangeOf(big, 0);
      try {
        const layer = gzipLayerStreamParallel(r2.tar, { engine, blockSize: 1 * MiB, concurrency: 2 });
        const reading = collect(layer.stream);
        r2.tar.destroy(new Error('aborted by the caller'));
        await expect(reading).rejects.toThrow(/aborted by the caller/);
        await noChildrenLeft();
      } finally {
        r2.cleanup();
      }
    });
  });

  it('errors (no hang) when its input errors mid-way, and leaves no process running', async () => {
    const blockSize = 1 * MiB;
    const data = mixed(6 * MiB, 13);
    const failing = (async function* () {
      for (const c of chunksOf(data, 256 * KiB)) yield c;
      await sleep(5);
      throw new Error('disk on fire');
    })();
    const layer = gzipLayerStreamParallel(Readable.from(failing), { engine, blockSize, concurrency: 4 });
    await expect(collect(layer.stream)).rejects.toThrow(/disk on fire/);
    await noChildrenLeft();

    // Destroyed by its reader while blocks are in flight.
    const gz = parallelGzipStream({ engine, blockSize, concurrency: 4 });
    const src = Readable.from(chunksOf(mixed(16 * MiB, 2), 256 * KiB));
    const done = pipeline(src, gz);
    let seen = 0;
    for await (const c of gz) {
      seen += (c as Buffer).length;
      break;
    }
    await expect(done).rejects.toThrow();
    expect(seen).toBeGreaterThan(0);
    await noChildrenLeft();
  });
});

describe('the native libdeflate engine', () => {
  const native = nativeBinding();

  it('is built wherever CI runs (native/build.mjs, at npm ci)', () => {
    if (inCI) expect(native, `native addon not loaded: ${nativeLoadError()}`).not.toBeNull();
  });

  it.skipIf(!native || !onPath('libdeflate-gzip'))('makes the same bytes as the libdeflate-gzip program, so either one dedupes with the other', async () => {
    const inProcess = (await findGzipEngine('libdeflate'))!;
    const program = (await findGzipEngine('libdeflate', 'program'))!;
    expect(inProcess.implementation).toMatch(/^in-process /);
    expect(program.implementation).toMatch(/libdeflate-gzip$/);
    const data = mixed(Math.floor(2.5 * inProcess.defaultBlockSize), 17);
    for (const level of [1, 6]) {
      const a = await compress(data, { engine: inProcess, level }, 256 * KiB);
      const b = await compress(data, { engine: program, level }, 256 * KiB);
      expect(sha(a), `level ${level}`).toBe(sha(b));
      expect(gunzipSync(a).equals(data)).toBe(true);
    }
    await noChildrenLeft();
  });

  it.skipIf(!native)('turns bad arguments into errors, not crashes', () => {
    expect(() => native!.gzipMember!(Buffer.alloc(10), 13)).toThrow(/level/);
    expect(() => native!.gzipMember!('text' as unknown as Buffer, 1)).toThrow(/Buffer/);
  });

  it.skipIf(!native?.igzipMember)('igzip (ISA-L) too: bad arguments are errors; a member of incompressible data fits its bound', async () => {
    expect(() => native!.igzipMember!(Buffer.alloc(10), 4)).toThrow(/level/);
    expect(() => native!.igzipMember!('text' as unknown as Buffer, 1)).toThrow(/Buffer/);
    // Stored blocks, the worst case the output bound is sized for.
    const noise = randomBytes(3 * MiB + 17);
    for (const level of [0, 1, 3]) expect(gunzipSync(await native!.igzipMember!(noise, level)).equals(noise), `level ${level}`).toBe(true);
  });
});

describe('the window shared by every stream', () => {
  const engine = zlibEngine;
  const blockSize = 1 * MiB;

  it('lets every stream hold one block even when others fill the shared window, and gives it all back', async () => {
    // Eight streams whose readers do not read yet: each must still take one block in (none
    // starves), the shared part stays within its capacity, and everything ends once read.
    const datas = Array.from({ length: 8 }, (_, i) => mixed(6 * MiB, 30 + i));
    const streams = datas.map(() => new ParallelGzip({ engine, level: 1, blockSize, concurrency: 8 }));
    const feeds = streams.map((gz, i) => pipeline(Readable.from(chunksOf(datas[i]!, 256 * KiB)), gz).catch(() => undefined));
    await sleep(300);
    for (const gz of streams) expect(gz.stats.blocks).toBeGreaterThanOrEqual(1);
    // The shared window: one more block than cores, of the member engines' block size.
    const capacity = (os.availableParallelism() + 1) * DEFAULT_PROCESS_BLOCK_SIZE;
    expect(sharedWindowInUse()).toBeLessThanOrEqual(capacity);
    const inFlight = streams.reduce((n, gz) => n + gz.stats.blocksInFlight, 0);
    expect(inFlight).toBeLessThanOrEqual(streams.length + capacity / blockSize);
    const outputs = await Promise.all(streams.map((gz) => collect(gz)));
    await Promise.all(feeds);
    outputs.forEach((gz, i) => expect(sha(gunzipSync(gz))).toBe(sha(datas[i]!)));
    expect(sharedWindowInUse()).toBe(0);
  });

  it('gives back what a destroyed stream held', async () => {
    const gz = new ParallelGzip({ engine, level: 1, blockSize, concurrency: 8 });
    const done = pipeline(Readable.from(chunksOf(mixed(12 * MiB, 3), 256 * KiB)), gz).catch(() => undefined);
    await sleep(200);
    gz.destroy();
    await done;
    for (let i = 0; i < 50 && sharedWindowInUse() > 0; i++) await sleep(10);
    expect(sharedWindowInUse()).toBe(0);
  });
});

describe('decompress with a gunzip engine', () => {
  const data = mixed(300 * KiB, 21);
  // Two members, as the member engines write: both halves must come back as one stream.
  const gz = Buffer.concat([gzipSync(data.subarray(0, 100 * KiB)), gzipSync(data.subarray(100 * KiB))]);

  it.each(gunzipEngines.map((g) => [g.name, g] as const))('%s: reads several members; names the blob when truncated, corrupt or empty', async (_n, g) => {
    expect((await collect(decompress(Readable.from(chunksOf(gz, 5000)), 'gzip', 'layer sha256:x', { gunzip: g }))).equals(data)).toBe(true);
    expect((await collect(decompress(Readable.from([gz]), 'gzip', 'layer sha256:x', { gunzip: g }))).equals(data)).toBe(true);

    await expect(collect(decompress(Readable.from([gz.subarray(0, gz.length - 100)]), 'gzip', 'layer sha256:t', { gunzip: g }))).rejects.toMatchObject({
      code: 'CORRUPT_ARCHIVE',
      message: 'layer sha256:t: truncated gzip stream',
    });
    await expect(collect(decompress(Readable.from([Buffer.alloc(0)]), 'gzip', 'layer sha256:e', { gunzip: g }))).rejects.toMatchObject({
      code: 'CORRUPT_ARCHIVE',
      message: 'layer sha256:e: truncated gzip stream',
    });
    const bad = Buffer.from(gz);
    for (let i = 40; i < 400; i++) bad[i] = bad[i]! ^ 0x5a;
    await expect(collect(decompress(Readable.from([bad]), 'gzip', 'layer sha256:c', { gunzip: g }))).rejects.toMatchObject({
      code: 'CORRUPT_ARCHIVE',
      message: expect.stringMatching(/^layer sha256:c: corrupt gzip stream/),
    });
    const badCrc = Buffer.from(gz);
    badCrc[badCrc.length - 6] = badCrc[badCrc.length - 6]! ^ 1;
    await expect(collect(decompress(Readable.from([badCrc]), 'gzip', 'layer sha256:k', { gunzip: g }))).rejects.toMatchObject({
      code: 'CORRUPT_ARCHIVE',
    });
    const junk = Buffer.concat([gz, Buffer.from('junk\n')]);
    // Trailing garbage after the last member: zlib calls it corrupt; igzip (like gzip -d) ignores
    // it. The data itself is whole either way, and the diff id check of a pull covers it.
    if (g.name === 'zlib') await expect(collect(decompress(Readable.from([junk]), 'gzip', 'layer sha256:j', { gunzip: g }))).rejects.toMatchObject({ code: 'CORRUPT_ARCHIVE' });
    else expect((await collect(decompress(Readable.from([junk]), 'gzip', 'layer sha256:j', { gunzip: g }))).equals(data)).toBe(true);
    await noChildrenLeft();
  });

  it.each(gunzipEngines.map((g) => [g.name, g] as const))('%s: a source error passes through unchanged and nothing is left running', async (_n, g) => {
    const failing = (async function* () {
      yield gz.subarray(0, 1000);
      await sleep(5);
      throw new Error('connection reset');
    })();
    await expect(collect(decompress(Readable.from(failing), 'gzip', 'layer', { gunzip: g }))).rejects.toThrow('connection reset');
    // A reader that stops early.
    const big = gzipSync(mixed(8 * MiB, 4));
    for await (const _c of decompress(Readable.from(chunksOf(big, 64 * KiB)), 'gzip', 'layer', { gunzip: g })) break;
    await noChildrenLeft();
  });

  it.skipIf(!isalGunzip)('isal: an output region given back is used again only once its Buffer is gone, never under a Buffer still held', async () => {
    // Outputs of 2 MiB regions, each given back to the addon when its Buffer is collected (or at
    // once when a short output is copied out), and kept there for the next output. The chunks of
    // the first stream are held while more streams run and the collector runs between them: they
    // must still hold their bytes.
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc') as () => void;
    const streams = [1, 2, 3, 4, 5, 6].map((seed) => mixed(5 * MiB + seed * 100 * KiB, seed));
    const held: Buffer[] = [];
    for await (const c of decompress(Readable.from(chunksOf(gzipSync(streams[0]!), 64 * KiB)), 'gzip', 'layer sha256:held', { gunzip: isalGunzip! })) held.push(c as Buffer);
    const heldCopy = Buffer.concat(held);
    expect(heldCopy.equals(streams[0]!)).toBe(true);
    for (const [i, data] of streams.slice(1).entries()) {
      gc();
      await sleep(1);
      // Small outputs too: each copied out, its region given back at once.
      for (let k = 0; k < 3; k++) expect((await collect(decompress(Readable.from([gzipSync(data.subarray(0, 100 * KiB))]), 'gzip', 'small', { gunzip: isalGunzip! }))).equals(data.subarray(0, 100 * KiB))).toBe(true);
      expect((await collect(decompress(Readable.from(chunksOf(gzipSync(data), 64 * KiB)), 'gzip', `layer ${i}`, { gunzip: isalGunzip! }))).equals(data), `stream ${i + 1}`).toBe(true);
    }
    expect(Buffer.concat(held).equals(heldCopy)).toBe(true);
  });

  it('an igzip process is started for a blob from 256 KiB compressed only; the engines in the process take every size', () => {
    if (igzipGunzip) {
      expect(gunzipEngineFor(igzipGunzip, IN_PROCESS_GUNZIP_BELOW - 1)).toBeUndefined(); // zlib
      expect(gunzipEngineFor(igzipGunzip, IN_PROCESS_GUNZIP_BELOW)).toBe(igzipGunzip);
    }
    for (const g of gunzipEngines.filter((e) => e.program === null)) expect(gunzipEngineFor(g, 1)).toBe(g);
  });

  it.skipIf(!igzipGunzip && !isalGunzip)('a layer under 256 KiB compressed is gunzipped in this process; a larger one by the engine chosen (no process with ISA-L in the addon)', async () => {
    const source = (blob: Buffer): ImageSource => ({
      name: 'test',
      getManifest: () => Promise.reject(new Error('unused')),
      getManifestByDigest: () => Promise.reject(new Error('unused')),
      getBlob: async () => Readable.from([blob]),
      repoTags: () => [],
      close: async () => undefined,
    });
    for (const [data, small] of [[mixed(200 * KiB, 5), true], [randomBytes(300 * KiB), false]] as const) {
      const blob = gzipSync(data);
      expect(blob.length < IN_PROCESS_GUNZIP_BELOW).toBe(small);
      const digest = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}` as Digest;
      const layer = layerFromDescriptor(source(blob), { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: digest(blob), size: blob.length }, digest(data));
      const stream = await layer.openUncompressed();
      // igzip, when it is used, is running from the moment the stream is opened.
      expect(liveChildProcessCount()).toBe(small || isalGunzip ? 0 : 1);
      expect((await collect(stream)).equals(data)).toBe(true);
    }
    await noChildrenLeft();
  });

  it.each(fileGunzipEngines.map((g) => [g.name, g] as const))('%s: a kept blob, checked as its cache handed it over, is not hashed a second time; the tar inside still is', async (_n, engine) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'smart-gunzip-kept-'));
    try {
      const file = path.join(dir, 'blob');
      fs.writeFileSync(file, gz);
      const kept = (digest: string) => {
        let told = 0;
        const stream = verifiedStream(markLocalFile(fs.createReadStream(file), { path: file, shared: true, onBytes: (n) => (told += n) }), { digest: digest as Digest, size: gz.length, what: 'blob sha256:b kept' });
        return { stream, told: () => told };
      };
      const good = kept(`sha256:${sha(gz)}`);
      expect((await collect(decompress(good.stream, 'gzip', 'layer sha256:f', { gunzip: engine }))).equals(data)).toBe(true);
      expect(good.told()).toBe(gz.length);
      // Not read again to hash it: a digest it does not have goes unseen here (BlobCache.find checked it)...
      expect((await collect(decompress(kept(`sha256:${'1'.repeat(64)}`).stream, 'gzip', 'layer sha256:f', { gunzip: engine }))).equals(data)).toBe(true);
      // ...but the tar it holds is checked against its diff id all the same.
      const verify = { digest: `sha256:${'0'.repeat(64)}` as Digest, what: 'layer sha256:f (uncompressed)' };
      await expect(collect(decompress(kept(`sha256:${sha(gz)}`).stream, 'gzip', 'layer sha256:f', { gunzip: engine, verify }))).rejects.toMatchObject({ code: 'DIGEST_MISMATCH' });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it.each(fileGunzipEngines.map((g) => [g.name, g] as const))('%s: a verified local file is read by the decompressor itself, checked alongside, and fails as the stream would', async (_n, engine) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'smart-gunzip-file-'));
    // The descriptors open on the blob's directory: a count of all of them also counted whatever
    // an earlier test was still closing (an igzip child's pipes) when this one began.
    const openHere = () =>
      fs.readdirSync('/proc/self/fd').filter((fd) => {
        try {
          return fs.readlinkSync(`/proc/self/fd/${fd}`).startsWith(`${dir}/`);
        } catch {
          return false; // closed meanwhile (the listing's own descriptor)
        }
      }).length;
    try {
      /** The blob as a store gives it: a file stream, marked as the whole file, verified against `digest` (and `size`). */
      const blob = (file: string, digest: string, size: number) =>
        verifiedStream(markLocalFile(fs.createReadStream(file), { path: file }), { digest: digest as Digest, size, what: 'blob sha256:b of file:s' });
      const file = path.join(dir, 'blob');
      fs.writeFileSync(file, gz);
      const digest = `sha256:${sha(gz)}`;
      const children = () => compressorChildren().length;
      const source = blob(file, digest, gz.length);
      expect((await collect(decompress(source, 'gzip', 'layer sha256:f', { gunzip: engine }))).equals(data)).toBe(true);
      // The decompressor read the file: nothing was read through the stream, which is closed with the output.
      expect(source.readableDidRead).toBe(false);
      await vi.waitFor(() => expect(source.destroyed).toBe(true));
      expect(children()).toBe(0);
      // The file differs from its digest, or is cut short: the output fails with the blob's own
      // error (the cause, though the gzip inside is bad too), never ends cleanly.
      for (const at of [20, 1000]) {
        const bad = Buffer.from(gz);
        bad[bad.length - at] = bad[bad.length - at]! ^ 1;
        fs.writeFileSync(file, bad);
        await expect(collect(decompress(blob(file, digest, gz.length), 'gzip', 'layer sha256:f', { gunzip: engine }))).rejects.toMatchObject({
          code: 'DIGEST_MISMATCH',
          message: expect.stringMatching(/^blob sha256:b of file:s: content hashes to /),
        });
      }
      fs.writeFileSync(file, gz.subarray(0, gz.length >> 1));
      await expect(collect(decompress(blob(file, digest, gz.length), 'gzip', 'layer sha256:f', { gunzip: engine }))).rejects.toMatchObject({
        code: 'SIZE_MISMATCH',
        message: expect.stringMatching(/truncated\?\)$/),
      });
      // Longer than its descriptor says (good gzip, then junk): the size check fails it.
      fs.writeFileSync(file, Buffer.concat([gz, Buffer.from('junk')]));
      await expect(collect(decompress(blob(file, digest, gz.length), 'gzip', 'layer sha256:f', { gunzip: engine }))).rejects.toMatchObject({
        code: 'SIZE_MISMATCH',
        message: expect.stringMatching(/^blob sha256:b of file:s: /),
      });
      // The tar inside checked against its diff id, when asked: a mismatch fails the output.
      const verify = { digest: `sha256:${'0'.repeat(64)}` as Digest, what: 'layer sha256:f (uncompressed)' };
      fs.writeFileSync(file, gz);
      await expect(collect(decompress(blob(file, digest, gz.length), 'gzip', 'layer sha256:f', { gunzip: engine, verify }))).rejects.toMatchObject({
        code: 'DIGEST_MISMATCH',
        message: `layer sha256:f (uncompressed): content hashes to sha256:${sha(data)}, not ${verify.digest}`,
      });
      expect((await collect(decompress(blob(file, digest, gz.length), 'gzip', 'layer sha256:f', { gunzip: engine, verify: { ...verify, digest: `sha256:${sha(data)}` as Digest } }))).equals(data)).toBe(true);
      // Destroyed by its reader mid-way: the decompressor is stopped, and the file closed.
      const big = gzipSync(mixed(16 * MiB, 3));
      fs.writeFileSync(file, big);
      const reading = decompress(blob(file, `sha256:${sha(big)}`, big.length), 'gzip', 'layer sha256:f', { gunzip: engine });
      for await (const _c of reading) break;
      await noChildrenLeft();
      await vi.waitFor(() => expect(openHere()).toBe(0));
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it.skipIf(!igzipProgram)('igzip: destroyed whole by its consumer, it leaves no process and no descriptor behind', async () => {
    const fds = () => fs.readdirSync('/proc/self/fd').length;
    // Its input all written at once (a few KiB), its output still coming when it is destroyed.
    const small = gzipSync(Buffer.alloc(3 * MiB, 7));
    // One run first: the first child makes descriptors the process keeps (its event loop's).
    await pipeline(Readable.from([small]), igzipDecompressor(igzipProgram!.program!, 'layer'), new Writable({ write: (_c, _e, cb) => cb() }));
    const before = fds();
    for (let i = 0; i < 5; i++) {
      const d = igzipDecompressor(igzipProgram!.program!, 'layer');
      const done = pipeline(Readable.from([small]), d, new Writable({ write: (_c, _e, cb) => cb() }));
      setTimeout(() => d.destroy(new Error('gave up')), 1);
      await expect(done).rejects.toThrow('gave up');
    }
    await noChildrenLeft();
    await vi.waitFor(() => expect(fds()).toBe(before));
  });

  it('chooseGunzip: ISA-L in the addon when it has it, else igzip when present; each on request', async () => {
    expect((await chooseGunzip('zlib')).name).toBe('zlib');
    expect((await chooseGunzip()).name).toBe(isalGunzip ? 'isal' : igzipGunzip ? 'igzip' : 'zlib');
    if (igzipGunzip) expect(await chooseGunzip('igzip')).toEqual({ name: 'igzip', program: igzipProgram!.program });
    if (inCI) expect(isalGunzip, 'CI builds the addon with ISA-L').not.toBeNull();
  });

  it.skipIf(!isalGunzip)('isal: bad arguments are errors, overlapping calls refused; the tar is checked against its digest', async () => {
    const b = nativeBinding()!;
    expect(() => b.gunzipCreate!(-2, 0)).toThrow(/gunzipCreate/);
    const context = b.gunzipCreate!(-1, 0);
    expect(() => b.gunzipRun!(context, 'x' as unknown as Buffer[], false, 1024)).toThrow(/gunzipRun/);
    expect(() => b.gunzipRun!(context, ['x' as unknown as Buffer], false, 1024)).toThrow(/Buffer/);
    expect(() => b.gunzipRun!({} as unknown, [], false, 1024)).toThrow(/gunzip context/);
    const running = b.gunzipRun!(context, [gz], true, 1024);
    expect(() => b.gunzipRun!(context, [], true, 1024)).toThrow(/already running/);
    await running;
    // Through a stream from chunks: a diff id that does not match fails it in place of its end.
    const verify = { digest: `sha256:${'0'.repeat(64)}` as Digest, what: 'layer sha256:x (uncompressed)' };
    await expect(collect(decompress(Readable.from(chunksOf(gz, 3000)), 'gzip', 'layer sha256:x', { gunzip: isalGunzip!, verify }))).rejects.toMatchObject({
      code: 'DIGEST_MISMATCH',
      message: `layer sha256:x (uncompressed): content hashes to sha256:${sha(data)}, not ${verify.digest}`,
    });
    const good = { ...verify, digest: `sha256:${sha(data)}` as Digest };
    expect((await collect(decompress(Readable.from(chunksOf(gz, 3000)), 'gzip', 'layer sha256:x', { gunzip: isalGunzip!, verify: good }))).equals(data)).toBe(true);
    // Output in pieces bigger than any one input chunk: a whole member from one small input and a large output.
    const zeros = gzipSync(Buffer.alloc(9 * MiB));
    expect((await collect(decompress(Readable.from([zeros]), 'gzip', 'layer sha256:z', { gunzip: isalGunzip! }))).equals(Buffer.alloc(9 * MiB))).toBe(true);
  });

  it('decoding jobs wait for a slot earliest stream first', async () => {
    const slots = new DecodeSlots(1);
    const order: number[] = [];
    let release!: () => void;
    const first = slots.run(slots.rank(), () => new Promise<void>((r) => (release = r)));
    const [a, b, c] = [slots.rank(), slots.rank(), slots.rank()];
    const runs = [c, a, b].map((rank) => slots.run(rank, async () => void order.push(rank)));
    release();
    await Promise.all([first, ...runs]);
    expect(order).toEqual([a, b, c]);
  });
});
