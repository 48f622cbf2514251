/** Stream stages: verification, compression with diff ids, tar index and writer. */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Readable, Writable } from 'node:stream';
import { gunzipSync, gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { describe, expect, it, vi } from 'vitest';
import { sha256Digest, type Digest } from '../../src/oci/digest.js';
import { decompress } from '../../src/pipeline/compression.js';
import { verifiedStream } from '../../src/pipeline/digest-stream.js';
import { verifyFile } from '../../src/pipeline/local-file.js';
import { nativeBinding } from '../../src/pipeline/native.js';
import { chunkHasher, sha256FileOffThread } from '../../src/pipeline/sha256.js';
import { DiffIdTap } from '../../src/pipeline/compression.js';
import { gzipLayerStreamParallel, zlibEngine } from '../../src/pipeline/parallel-gzip.js';
import { tarParseError } from '../../src/tar/errors.js';
import { TarIndex } from '../../src/tar/tar-index.js';
import { TarWriter, fileSink, streamSink } from '../../src/tar/tar-writer.js';
import { tempDir } from '../harness/tmp.js';

async function collect(s: AsyncIterable<unknown>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of s) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

async function tarOf(files: Record<string, string>): Promise<Buffer> {
  const pack = tar.pack();
  for (const [name, content] of Object.entries(files)) pack.entry({ name, mtime: new Date(0) }, content);
  pack.finalize();
  return collect(pack as unknown as AsyncIterable<Buffer>);
}

describe('verifiedStream', () => {
  const data = Buffer.from('hello world');

  it('passes matching bytes and errors in place of the end on a mismatch, even before a consumer attaches', async () => {
    expect(await collect(verifiedStream(Readable.from([data]), { digest: sha256Digest(data), size: data.length, what: 'blob' }))).toEqual(data);
    const wrong = verifiedStream(Readable.from([data]), { digest: sha256Digest('other'), what: 'blob x' });
    await new Promise((r) => setTimeout(r, 20)); // the error has happened; nothing crashed
    await expect(collect(wrong)).rejects.toThrow(/blob x: content hashes to/);
    await expect(collect(verifiedStream(Readable.from([data]), { digest: sha256Digest(data), size: 5, what: 'b' }))).rejects.toThrow(/more bytes/);
    await expect(collect(verifiedStream(Readable.from([data]), { digest: sha256Digest(data), size: 50, what: 'b' }))).rejects.toThrow(/truncated/);
  });
});

describe('sha256 off the main thread', () => {
  // The addon is built wherever CI runs (scripts/setup-debian.sh installs what it needs); where it
  // is not, the same interfaces hash in this thread and these tests check that path instead.
  const native = Boolean(nativeBinding()?.sha256Create);

  it('hashes chunks in order, however they are batched, as crypto does', async () => {
    const seed = createHash('sha256').update('seed').digest();
    const data = Buffer.concat(Array.from({ length: 2000 }, (_, i) => createHash('sha256').update(seed).update(String(i)).digest()));
    for (const sizes of [[data.length], [1], [7, 0, 4096], [65536]]) {
      const hasher = chunkHasher();
      for (let off = 0, i = 0; off < data.length; i++) {
        const n = sizes[i % sizes.length]!;
        if (!hasher.update(data.subarray(off, off + n))) await hasher.drained();
        off += n;
        // Now and then, let a batch finish between two chunks.
        if (i % 97 === 0) await new Promise((r) => setImmediate(r));
      }
      expect(await hasher.digest()).toBe(createHash('sha256').update(data).digest('hex'));
    }
    expect(await chunkHasher().digest()).toBe(createHash('sha256').digest('hex'));
  });

  it('asks the writer to wait once 8 MiB are queued, and lets it go on once they are hashed', async () => {
    const hasher = chunkHasher();
    const chunk = Buffer.alloc(1024 * 1024, 7);
    let accepted = 0;
    while (hasher.update(chunk) && accepted < 64) accepted++;
    // In this thread nothing queues; on the pool, 8 MiB wait behind the first chunk's batch.
    expect(accepted).toBe(native ? 8 : 64);
    await hasher.drained();
    expect(await hasher.digest()).toMatch(/^[0-9a-f]{64}$/);
  });

  it('verifies a file as the stream does: the same errors for a short, a long and an altered file', async () => {
    const dir = await tempDir('smartlayer-sha256-');
    const file = path.join(dir, 'blob');
    const data = Buffer.alloc(3 * 1024 * 1024 + 5, 'x');
    await fs.writeFile(file, data);
    const digest = sha256Digest(data);
    let told = 0;
    await verifyFile(file, { digest, size: data.length, what: 'blob b' }, (n) => (told += n));
    expect(told).toBe(data.length);
    await expect(verifyFile(file, { digest, size: data.length - 1, what: 'blob b' })).rejects.toThrow('blob b: more bytes than the 3145732 its descriptor declares');
    await expect(verifyFile(file, { digest, size: data.length + 1, what: 'blob b' })).rejects.toThrow(`blob b: ${data.length} bytes, but its descriptor declares ${data.length + 1} (truncated?)`);
    await expect(verifyFile(file, { digest: sha256Digest('other'), size: data.length, what: 'blob b' })).rejects.toThrow(`blob b: content hashes to ${digest}, not`);
    await expect(verifyFile(path.join(dir, 'missing'), { digest, size: 1, what: 'blob b' })).rejects.toMatchObject({ code: 'ENOENT' });
    if (native) {
      expect(await sha256FileOffThread(file, data.length)).toEqual({ hex: digest.slice(7), bytes: data.length });
      await expect(sha256FileOffThread(dir, 10)).rejects.toMatchObject({ code: 'EISDIR' });
    } else {
      expect(await sha256FileOffThread(file, data.length)).toBeUndefined();
    }
  });

  it('an off-thread verified stream passes matching bytes and fails a mismatch in place of its end', async () => {
    const data = Buffer.alloc(5 * 1024 * 1024, 'y');
    const chunks = Array.from({ length: 80 }, (_, i) => data.subarray(i * 65536, (i + 1) * 65536));
    // Compared with equals(): toEqual walks a 5 MB Buffer byte by byte, for half a minute.
    expect((await collect(verifiedStream(Readable.from(chunks), { digest: sha256Digest(data), size: data.length, what: 'tar' }, { offThread: true }))).equals(data)).toBe(true);
    await expect(collect(verifiedStream(Readable.from(chunks), { digest: sha256Digest('x'), what: 'tar t' }, { offThread: true }))).rejects.toThrow(/tar t: content hashes to/);
  });
});

describe('layer compression', () => {
  it('computes the diff id while compressing, and the output is standard gzip', async () => {
    const layer = await tarOf({ 'a.txt': 'a'.repeat(100_000), 'b.txt': 'b' });
    const gz = gzipLayerStreamParallel(Readable.from([layer]), { engine: zlibEngine });
    const out = await collect(gz.stream);
    expect(gunzipSync(out).equals(layer)).toBe(true);
    expect(gz.diffId()).toBe(sha256Digest(layer));
    expect(gz.uncompressedSize()).toBe(layer.length);
  });

  it('learns the diff id of a compressed stream without changing its bytes', async () => {
    const layer = await tarOf({ 'x': 'x'.repeat(300_000) });
    const compressed = gzipSync(layer);
    const tap = new DiffIdTap('gzip', 'layer');
    const out = await collect(Readable.from([compressed.subarray(0, 1000), compressed.subarray(1000)]).pipe(tap));
    expect(out.equals(compressed)).toBe(true);
    expect(tap.diffId()).toBe(sha256Digest(layer));
  });

  it('names the blob when a gzip stream is truncated or corrupt', async () => {
    const compressed = gzipSync(Buffer.alloc(100_000, 7));
    await expect(collect(decompress(Readable.from([compressed.subarray(0, 100)]), 'gzip', 'layer L'))).rejects.toThrow(/layer L: truncated gzip/);
    const bad = Buffer.from(compressed);
    bad[20] = bad[20]! ^ 0xff;
    await expect(collect(decompress(Readable.from([bad]), 'gzip', 'layer L'))).rejects.toThrow(/layer L: (corrupt|truncated) gzip/);
  });
});

describe('tar index and writer', () => {
  const errno = (code: string, message: string) => Object.assign(new Error(`${code}: ${message}, write`), { code, errno: -1, syscall: 'write' });
  /** A stream that fails its first write as stdout on a full disk (or a closed pipe) does. */
  const failing = (e: Error, sync: boolean) => {
    const w = new Writable({ write: (_c, _e, cb) => (sync ? cb(e) : setImmediate(() => cb(e))) });
    w.on('error', () => undefined); // what guardedStdout does
    return w;
  };

  it('a sink over a stream fails with its first error: STORAGE naming it, with advice; a closed pipe as it is', async () => {
    for (const sync of [true, false]) {
      const enospc = errno('ENOSPC', 'no space left on device');
      const sink = streamSink(failing(enospc, sync));
      const writes = (async () => {
        for (let i = 0; i < 3; i++) await sink.write(Buffer.alloc(512));
        await sink.close();
      })();
      await expect(writes).rejects.toMatchObject({
        code: 'STORAGE',
        message: 'cannot write to stdout: ENOSPC: no space left on device, write',
        hint: 'free space on that filesystem, or write somewhere else',
        cause: enospc,
      });
      // The reader went away: the CLI says so by the exit status alone (141).
      const epipe = errno('EPIPE', 'broken pipe');
      const closed = streamSink(failing(epipe, sync));
      await expect(closed.write(Buffer.alloc(512)).then(() => closed.close())).rejects.toBe(epipe);
    }
  });

  it("a full disk where a tar's content goes is a STORAGE error, never blamed on the tar", () => {
    const e = tarParseError(errno('ENOSPC', 'no space left on device'), { what: 'docker-archive:-' });
    expect(e).toMatchObject({ code: 'STORAGE', hint: 'free space on that filesystem, or write somewhere else' });
    expect(tarParseError(new Error('Unexpected end of data'), { what: 'docker-archive:-' }).code).toBe('CORRUPT_ARCHIVE');
  });

  it('a sink over a file says which archive a refused write was for', async () => {
    const handle = { write: async () => Promise.reject(errno('ENOSPC', 'no space left on device')), close: async () => undefined } as unknown as fs.FileHandle;
    await expect(fileSink(handle, 'docker-archive:out.tar').write(Buffer.alloc(512))).rejects.toMatchObject({
      code: 'STORAGE',
      message: 'cannot write docker-archive:out.tar: ENOSPC: no space left on device, write',
    });
  });

  it('write members of unknown size by patching headers, and read them back in place', async () => {
    const dir = await tempDir();
    const file = path.join(dir, 'a.tar');
    const writer = new TarWriter(fileSink(await fs.open(file, 'w'), file));
    await writer.addBuffer('small.json', Buffer.from('{"a":1}'));
    await writer.addDirectory('d');
    const big = Buffer.alloc(1_000_003, 3);
    expect(await writer.addStream('d/big.bin', Readable.from([big.subarray(0, 5), big.subarray(5)]))).toBe(big.length);
    await writer.finish();

    // GNU-compatible: tar-stream (an independent reader) sees the same members.
    const names: string[] = [];
    const extract = tar.extract();
    extract.on('entry', (h, s, next) => {
      names.push(`${h.name}:${h.size}`);
      s.resume();
      s.on('end', next);
    });
    await new Promise((resolve, reject) => {
      extract.on('finish', () => resolve(undefined));
      extract.on('error', reject);
      extract.end(readFileSync(file));
    });
    expect(names).toEqual(['small.json:7', 'd/:0', `d/big.bin:${big.length}`]);

    const index = await TarIndex.open(file);
    const member = index.get('./d/big.bin')!;
    expect(member.size).toBe(big.length);
    expect(createHash('sha256').update(await collect(index.open(member))).digest('hex')).toBe(createHash('sha256').update(big).digest('hex'));
    expect((await index.read(index.get('small.json')!)).toString()).toBe('{"a":1}');
  });

  it('says what is wrong with a file that is not a tar, or is cut short', async () => {
    const dir = await tempDir();
    const notTar = path.join(dir, 'n.tar');
    await fs.writeFile(notTar, 'just text\n'.repeat(100));
    await expect(TarIndex.open(notTar)).rejects.toThrow(/not a tar archive/);
    const cut = path.join(dir, 'c.tar');
    await fs.writeFile(cut, (await tarOf({ f: 'x'.repeat(5000) })).subarray(0, 2048));
    await expect(TarIndex.open(cut)).rejects.toThrow(/truncated/);
  });
});

describe('rangedStream', () => {
  it('delivers ranges in order, with at most `concurrency` in flight, whatever order they finish in', async () => {
    const { rangedStream } = await import('../../src/pipeline/ranged.js');
    const blob = Buffer.from(Array.from({ length: 1000 }, (_, i) => i % 251));
    let inFlight = 0;
    let most = 0;
    const fetch = async (start: number, end: number) => {
      inFlight++;
      most = Math.max(most, inFlight);
      await new Promise((r) => setTimeout(r, Math.max(1, (10 - start / 100) * 3 + 1))); // later ranges finish first (never a negative delay: Node 24 warns of one)
      inFlight--;
      // Each range as the chunks it came in (two here): delivered as they are, in order.
      const mid = Math.floor((start + end + 1) / 2);
      return [blob.subarray(start, mid), blob.subarray(mid, end + 1)];
    };
    const out = await collect(rangedStream(blob.length, fetch, { chunkSize: 100, concurrency: 3 }));
    expect(out.equals(blob)).toBe(true);
    expect(most).toBe(3);
  });

  it('fails with the first failing range', async () => {
    const { rangedStream } = await import('../../src/pipeline/ranged.js');
    const fetch = async (start: number) => {
      if (start === 200) throw new Error('range 200 broke');
      return [Buffer.alloc(100)];
    };
    await expect(collect(rangedStream(500, fetch, { chunkSize: 100, concurrency: 2 }))).rejects.toThrow(/range 200 broke/);
  });
});

describe('wholeThenRanged', () => {
  const blob = Buffer.from(Array.from({ length: 64 * 1024 }, (_, i) => (i * 7) % 251));
  const digest = `sha256:${createHash('sha256').update(blob).digest('hex')}` as Digest;
  const expect_ = { digest, size: blob.length, what: 'blob sha256:b of registry r' };
  /** The blob as one stream of 1 KiB chunks, each after `everyMs`; `state.stream` is it. */
  const whole = (everyMs: number, state: { stream?: Readable } = {}) => async () => {
    const s = Readable.from(
      (async function* () {
        for (let i = 0; i < blob.length; i += 1024) {
          if (everyMs) await new Promise((r) => setTimeout(r, everyMs));
          yield blob.subarray(i, i + 1024);
        }
      })(),
    );
    state.stream = s;
    return s;
  };

  it('reads a blob whose first bytes come fast as the one stream it is: no range asked', async () => {
    const { wholeThenRanged } = await import('../../src/pipeline/ranged.js');
    const ranges: number[] = [];
    const fetch = async (start: number, end: number) => (ranges.push(start), [blob.subarray(start, end + 1)]);
    const out = await collect(wholeThenRanged(whole(0), fetch, { chunkSize: 8192, concurrency: 3, expect: expect_, probeBytes: 4096, fastEnough: 1 }));
    expect(out.equals(blob)).toBe(true);
    expect(ranges).toEqual([]);
  });

  it('reads the rest of a blob whose first bytes come slowly in ranges at once, from where the stream was left, and checks the whole', async () => {
    const { wholeThenRanged } = await import('../../src/pipeline/ranged.js');
    const ranges: number[] = [];
    const state: { stream?: Readable } = {};
    const fetch = async (start: number, end: number) => (ranges.push(start), [blob.subarray(start, end + 1)]);
    const out = await collect(wholeThenRanged(whole(2, state), fetch, { chunkSize: 8192, concurrency: 3, expect: expect_, probeBytes: 4096, fastEnough: 1e12 }));
    expect(out.equals(blob)).toBe(true);
    expect(ranges).toEqual([4096, 12288, 20480, 28672, 36864, 45056, 53248, 61440]);
    // The stream was left where the ranges took over, closed.
    expect(state.stream!.destroyed).toBe(true);
    expect(state.stream!.readableEnded).toBe(false);
    // A range whose bytes are not the blob's: the whole fails its digest, never ends cleanly.
    const lying = async (start: number, end: number) => [start === 20480 ? Buffer.alloc(end - start + 1) : blob.subarray(start, end + 1)];
    await expect(collect(wholeThenRanged(whole(2), lying, { chunkSize: 8192, concurrency: 3, expect: expect_, probeBytes: 4096, fastEnough: 1e12 }))).rejects.toMatchObject({
      code: 'DIGEST_MISMATCH',
      message: expect.stringMatching(/^blob sha256:b of registry r: content hashes to sha256:[0-9a-f]{64}, not sha256:/),
    });
    // Short, or too long: its size.
    const short = async (start: number, end: number) => [blob.subarray(start, Math.min(end, 50_000) + 1)];
    await expect(collect(wholeThenRanged(whole(2), short, { chunkSize: 8192, concurrency: 3, expect: expect_, probeBytes: 4096, fastEnough: 1e12 }))).rejects.toMatchObject({ code: 'SIZE_MISMATCH' });
    const long = async (start: number, end: number) => [blob.subarray(start, end + 1), Buffer.alloc(start === 61440 ? 1 : 0)];
    await expect(collect(wholeThenRanged(whole(2), long, { chunkSize: 8192, concurrency: 3, expect: expect_, probeBytes: 4096, fastEnough: 1e12 }))).rejects.toMatchObject({ code: 'SIZE_MISMATCH' });
    // A range that fails: the stream fails with it.
    const broken = async (start: number) => {
      if (start === 28672) throw new Error('range broke');
      return [Buffer.alloc(8192)];
    };
    await expect(collect(wholeThenRanged(whole(2), broken, { chunkSize: 8192, concurrency: 3, expect: expect_, probeBytes: 4096, fastEnough: 1e12 }))).rejects.toThrow(/range broke/);
  });

  it('fails with the whole stream\'s own error, before any range is asked', async () => {
    const { wholeThenRanged } = await import('../../src/pipeline/ranged.js');
    const failing = async () =>
      Readable.from(
        (async function* () {
          yield blob.subarray(0, 1024);
          throw new Error('blob sha256:b of registry r: content hashes to sha256:x');
        })(),
      );
    const fetch = vi.fn(async () => [Buffer.alloc(0)]);
    await expect(collect(wholeThenRanged(failing, fetch, { chunkSize: 8192, concurrency: 3, expect: expect_, probeBytes: 4096, fastEnough: 1 }))).rejects.toThrow(/content hashes to/);
    expect(fetch).not.toHaveBeenCalled();
  });
});
