/** zstd compression of a layer through the `zstd` program (Node 20 has no zstd of its own). */
import { spawn } from 'node:child_process';
import { Duplex, PassThrough, pipeline, type Readable } from 'node:stream';
import { SmartError } from '../errors.js';
import type { Digest } from '../oci/digest.js';
import { diffIdStage } from './digest-stream.js';
import type { CompressedLayerStream } from './layer-streams.js';
import { findProgram } from './programs.js';

export const DEFAULT_ZSTD_LEVEL = 3;

/** Fails early and clearly when zstd is asked for and not installed. */
export async function requireZstd(): Promise<string> {
  const zstd = await findProgram('zstd');
  if (!zstd) throw new SmartError('UNSUPPORTED', '--compression zstd needs the zstd program, which is not installed', { hint: 'apt-get install zstd' });
  return zstd;
}

/** tar → [diff id] → zstd (all cores, `-T0`), streamed both ways with back-pressure. */
export function zstdLayerStream(tar: Readable, program: string, level = DEFAULT_ZSTD_LEVEL, verifiedDiffId?: Digest): CompressedLayerStream {
  const diff = diffIdStage(verifiedDiffId);
  const child = spawn(program, [`-${level}`, '-T0', '-q', '-c', '--no-progress'], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  child.stdin.on('error', () => undefined); // reported through the exit status
  const out = new PassThrough({ highWaterMark: 256 * 1024 });
  child.stdout.pipe(out, { end: false });
  child.once('close', (code) => {
    if (code === 0) out.end();
    else out.destroy(new SmartError('INTERNAL', `zstd failed (${stderr.trim().split('\n').pop() || `exit ${code}`})`));
  });
  out.once('close', () => {
    if (child.exitCode === null) child.kill();
  });
  const engine = Duplex.from({ writable: child.stdin, readable: out });
  const stream = pipeline(tar, diff.stage, engine, () => undefined);
  return { stream, diffId: diff.diffId, uncompressedSize: diff.size };
}
