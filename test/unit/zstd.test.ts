/**
 * zstd layers: the in-process engine (libzstd through the native addon) and the zstd program make
 * the same frame, round trip, report the diff id, and fail cleanly. The zstd program is installed
 * wherever the tests run (.ci/run); the native engine is required under CI.
 */
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { Readable } from 'node:stream';
import { describe, expect, it, vi } from 'vitest';
import type { Digest } from '../../src/oci/digest.js';
import type { VerifyExpectation } from '../../src/pipeline/local-file.js';
import { nativeBinding } from '../../src/pipeline/native.js';
import { requireZstd } from '../../src/pipeline/zstd.js';
import { markedRange } from '../harness/file-range.js';
import { inCI } from '../harness/tools.js';

const native = nativeBinding();
const hasNativeZstd = Boolean(native?.zstdCreate);

/** Text and pseudo-random bytes in turn: compresses like a real layer, not like zeros. */
function layerLike(n: number, seed: number): Buffer {
  const out = Buffer.alloc(n);
  let x = seed || 1;
  const text = Buffer.from('usr/lib/x86_64-linux-gnu/libexample.so.1.2.3 GNU C17 12.2.0 -O2 -fPIC ');
  for (let i = 0; i < n; i++) {
    if ((i >> 12) % 3 === 0) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      out[i] = x & 0xff;
    } else out[i] = text[i % text.length]!;
  }
  return out;
}

function chunks(data: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < data.length; i += size) out.push(data.subarray(i, i + size));
  return out;
}

async function collect(s: AsyncIterable<unknown>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}` as Digest;

describe('zstd engines', () => {
  it('has the in-process engine wherever CI runs', () => {
    if (inCI) expect(hasNativeZstd).toBe(true);
  });

  it.skipIf(!hasNativeZstd)('in-process and program make the same frame, whatever the chunking', async () => {
    const data = layerLike(9 * 1024 * 1024 + 123, 7);
    const inProcess = await requireZstd();
    const program = await requireZstd('program');
    expect(inProcess.implementation).toMatch(/^in-process /);
    for (const level of [1, 3]) {
      const a = inProcess.layerStream(Readable.from(chunks(data, 256 * 1024)), level);
      const ga = await collect(a.stream);
      const b = inProcess.layerStream(Readable.from(chunks(data, 7777)), level);
      const gb = await collect(b.stream);
      // Small chunks gathered into calls, then one larger than a call while some are gathered.
      const mixed = [data.subarray(0, 1000), data.subarray(1000, 3 * 1024 * 1024), ...chunks(data.subarray(3 * 1024 * 1024), 300_000)];
      const gm = await collect(inProcess.layerStream(Readable.from(mixed), level).stream);
      expect(sha(gm), `level ${level}, mixed chunks`).toBe(sha(ga));
      const c = program.layerStream(Readable.from(chunks(data, 65536)), level);
      const gc = await collect(c.stream);
      expect(sha(ga), `level ${level}`).toBe(sha(gc));
      expect(sha(gb)).toBe(sha(gc));
      expect(a.diffId()).toBe(sha(data));
      expect(a.uncompressedSize()).toBe(data.length);
      expect(execFileSync('zstd', ['-dc'], { input: ga, maxBuffer: 64 << 20 }).equals(data)).toBe(true);
    }
    // A layer smaller than a call, gathered whole: the same frame as the program's (no content size in its header).
    const small = layerLike(5000, 11);
    const gs = await collect(inProcess.layerStream(Readable.from(chunks(small, 1000)), 3).stream);
    const ps = await collect(program.layerStream(Readable.from([small]), 3).stream);
    expect(sha(gs)).toBe(sha(ps));
  });

  it.skipIf(!hasNativeZstd)('takes a verified diff id instead of hashing again, and an empty input makes a valid frame', async () => {
    const zstd = await requireZstd();
    const data = layerLike(100_000, 3);
    const s = zstd.layerStream(Readable.from([data]), 3, sha(data));
    await collect(s.stream);
    expect(s.diffId()).toBe(sha(data));
    const empty = zstd.layerStream(Readable.from([]), 3);
    const frame = await collect(empty.stream);
    expect(execFileSync('zstd', ['-dc'], { input: frame }).length).toBe(0);
  });

  describe('a marked file range, read by the compressor itself', () => {
    const MiB = 1024 * 1024;
    const rangeOf = (data: Buffer, offset: number, checks?: VerifyExpectation[]) => markedRange(data, offset, layerLike, checks);

    it.skipIf(!hasNativeZstd)('makes the frame the stream would, and reports the diff id and size', async () => {
      const zstd = await requireZstd();
      // Past the blocks it reuses (more than READ_AHEAD + 2 of a MiB), and at and around a block's edge.
      for (const size of [0, 5, MiB, 3 * MiB, Math.floor(3.5 * MiB) + 5, 9 * MiB + 123]) {
        const data = layerLike(size, 21 + size);
        const r = rangeOf(data, 1536);
        try {
          const fromStream = await collect(zstd.layerStream(Readable.from(chunks(data, 65536)), 3).stream);
          const layer = zstd.layerStream(r.tar, 3);
          const frame = await collect(layer.stream);
          expect(sha(frame), `size ${size}`).toBe(sha(fromStream));
          expect(execFileSync('zstd', ['-dc'], { input: frame, maxBuffer: 64 << 20 }).equals(data)).toBe(true);
          expect(layer.diffId()).toBe(sha(data));
          expect(layer.uncompressedSize()).toBe(size);
          // The marked stream was never read through, and is closed with the compressor.
          expect(r.tar.readableDidRead).toBe(false);
          await vi.waitFor(() => expect(r.tar.destroyed).toBe(true));
        } finally {
          r.cleanup();
        }
      }
    });

    it.skipIf(!hasNativeZstd)('reads a range of any length into at most four 1 MiB blocks, reused (memory does not grow with the layer)', async () => {
      const zstd = await requireZstd();
      const data = layerLike(24 * MiB + 7, 12);
      const r = rangeOf(data, 0);
      const allocations = vi.spyOn(Buffer, 'allocUnsafe');
      try {
        const layer = zstd.layerStream(r.tar, 3);
        await collect(layer.stream);
        expect(layer.diffId()).toBe(sha(data));
        const blocks = allocations.mock.calls.filter(([size]) => size === MiB).length;
        expect(blocks).toBeGreaterThan(0);
        expect(blocks).toBeLessThanOrEqual(4);
      } finally {
        allocations.mockRestore();
        r.cleanup();
      }
    });

    it.skipIf(!hasNativeZstd)('checks the range against every digest the mark carries before the frame ends, and fails as VerifyStream would', async () => {
      const zstd = await requireZstd();
      const data = layerLike(3 * MiB + 9, 5);
      const good = { digest: sha(data), size: data.length, what: 'layer x of docker-archive:a.tar' };
      const bad = { digest: `sha256:${'0'.repeat(64)}` as Digest, what: 'layer y of docker-archive:a.tar' };
      const r = rangeOf(data, 512, [good, bad]);
      try {
        const layer = zstd.layerStream(r.tar, 3);
        await expect(collect(layer.stream)).rejects.toMatchObject({ code: 'DIGEST_MISMATCH', message: expect.stringMatching(/^layer y of docker-archive:a\.tar: content hashes to sha256:/) });
        expect(() => layer.diffId()).toThrow(/before the layer was read/);
      } finally {
        r.cleanup();
      }
      // Found bad before anyone reads it (a small layer, a consumer that attaches late): the error waits for the consumer.
      const r1 = rangeOf(data.subarray(0, 1000), 512, [bad]);
      try {
        const layer = zstd.layerStream(r1.tar, 3);
        await vi.waitFor(() => expect(layer.stream.destroyed).toBe(true));
        await expect(collect(layer.stream)).rejects.toMatchObject({ code: 'DIGEST_MISMATCH' });
      } finally {
        r1.cleanup();
      }
      // A diff id the caller says it verified is checked too.
      const r2 = rangeOf(data, 512);
      try {
        await expect(collect(zstd.layerStream(r2.tar, 3, bad.digest).stream)).rejects.toMatchObject({ code: 'DIGEST_MISMATCH' });
      } finally {
        r2.cleanup();
      }
    });

    it.skipIf(!hasNativeZstd)('fails a file cut short under it (truncated), and stops when the marked stream is destroyed', async () => {
      const zstd = await requireZstd();
      const data = layerLike(6 * MiB, 6);
      const r = rangeOf(data, 0, [{ digest: sha(data), size: data.length, what: 'layer z' }]);
      try {
        fs.truncateSync(r.file, 2 * MiB + 100);
        await expect(collect(zstd.layerStream(r.tar, 3).stream)).rejects.toMatchObject({
          code: 'SIZE_MISMATCH',
          message: expect.stringMatching(/^layer z: \d+ bytes, but its descriptor declares \d+ \(truncated\?\)/),
        });
      } finally {
        r.cleanup();
      }
      const r2 = rangeOf(layerLike(16 * MiB, 8), 0);
      try {
        const layer = zstd.layerStream(r2.tar, 3);
        const reading = collect(layer.stream);
        r2.tar.destroy(new Error('aborted by the caller'));
        await expect(reading).rejects.toThrow(/aborted by the caller/);
      } finally {
        r2.cleanup();
      }
    });
  });

  it.skipIf(!hasNativeZstd)('errors (no hang) when its input fails mid-way, and rejects bad arguments', async () => {
    const zstd = await requireZstd();
    const failing = (async function* () {
      yield layerLike(300_000, 5);
      throw new Error('disk on fire');
    })();
    await expect(collect(zstd.layerStream(Readable.from(failing), 3).stream)).rejects.toThrow(/disk on fire/);
    expect(() => native!.zstdCreate!(0, 1, 0)).toThrow(/range/);
    expect(() => native!.zstdCompress!({}, Buffer.alloc(1), false)).toThrow(/zstd context/);
  });
});
