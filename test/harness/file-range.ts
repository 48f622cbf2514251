/** A docker-save member as the compressors see it: a range of a file, and a stream of it marked so. */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { markFileRange, type VerifyExpectation } from '../../src/pipeline/local-file.js';

/**
 * A file with `data` at `offset` between other bytes (`filler(n, seed)`), and a stream of that range
 * marked as such, with `checks`; `cleanup` removes the file.
 */
export function markedRange(data: Buffer, offset: number, filler: (n: number, seed: number) => Buffer, checks?: VerifyExpectation[]) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'smart-range-'));
  const cleanup = () => fs.rmSync(dir, { recursive: true, force: true });
  try {
    const file = path.join(dir, 'archive');
    fs.writeFileSync(file, Buffer.concat([filler(offset, 3), data, filler(777, 4)]));
    const raw = data.length ? fs.createReadStream(file, { start: offset, end: offset + data.length - 1 }) : Readable.from([]);
    const tar = markFileRange(raw, { path: file, offset, length: data.length, ...(checks ? { checks } : {}) });
    return { file, tar, cleanup };
  } catch (e) {
    cleanup();
    throw e;
  }
}
