/**
 * zstd layers: the in-process engine (libzstd through the native addon) and the zstd program make
 * the same frame, round trip, report the diff id, and fail cleanly. The zstd program is installed
 * wherever the tests run (.ci/run); the native engine is required under CI.
 */
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import type { Digest } from '../../src/oci/digest.js';
import { nativeBinding } from '../../src/pipeline/native.js';
import { requireZstd } from '../../src/pipeline/zstd.js';
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
      const c = program.layerStream(Readable.from(chunks(data, 65536)), level);
      const gc = await collect(c.stream);
      expect(sha(ga), `level ${level}`).toBe(sha(gc));
      expect(sha(gb)).toBe(sha(gc));
      expect(a.diffId()).toBe(sha(data));
      expect(a.uncompressedSize()).toBe(data.length);
      expect(execFileSync('zstd', ['-dc'], { input: ga, maxBuffer: 64 << 20 }).equals(data)).toBe(true);
    }
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
